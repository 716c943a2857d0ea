"""A cluster's load-balancer options in Envoy's v3 YAML: ring_hash_lb_config,
maglev_lb_config, least_request_lb_config, common_lb_config (model: fastproxy.upstream.lb),
with Envoy's ranges; an error names the field's path.
Owner: issue 16's LB work."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..upstream.lb import (MAX_MAGLEV_TABLE_SIZE, MAX_RING_SIZE, CommonLbConfig, LeastRequestLbConfig,
                           MaglevLbConfig, RingHashLbConfig)
from .proto import Message, integer, unsupported_field

CLUSTER_LB_FIELDS = ("ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config",
                     "common_lb_config")

_HASH_FUNCTIONS = {"XX_HASH": 0, "MURMUR_HASH_2": 1}


def _wrapped_uint(msg: Message, name: str, high: int, default: int, low: int = 0) -> int:
    """A UInt32Value / UInt64Value (a plain number in YAML) within Envoy's range."""
    value = msg.raw(name)
    if value is None:
        return default
    if isinstance(value, dict) and value.keys() == {"value"}:
        value = value["value"]
    number = integer(value, msg.at(name), 0, 2 ** 64 - 1, "an unsigned integer")
    if not low <= number <= high:
        raise ConfigError(msg.at(name), f"must be {low}..{high}, got {number}")
    return number


def _double(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(path, f"expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(path, f"expected a number, got {value!r}") from None


def _ring_hash(msg: Message) -> RingHashLbConfig:
    m = msg.message("ring_hash_lb_config", ("minimum_ring_size", "maximum_ring_size", "hash_function"))
    out = RingHashLbConfig(
        minimum_ring_size=_wrapped_uint(m, "minimum_ring_size", MAX_RING_SIZE, 1024),
        maximum_ring_size=_wrapped_uint(m, "maximum_ring_size", MAX_RING_SIZE, MAX_RING_SIZE),
        hash_function=m.enum("hash_function", _HASH_FUNCTIONS, default="XX_HASH"))
    out.validate(msg.at("ring_hash_lb_config"))
    return out


def _maglev(msg: Message) -> MaglevLbConfig:
    m = msg.message("maglev_lb_config", ("table_size",))
    out = MaglevLbConfig(table_size=_wrapped_uint(m, "table_size", MAX_MAGLEV_TABLE_SIZE, 65537))
    out.validate(msg.at("maglev_lb_config"))
    return out


def _least_request(msg: Message) -> LeastRequestLbConfig:
    m = msg.message("least_request_lb_config", ("choice_count", "active_request_bias", "slow_start_config"))
    if m.raw("slow_start_config") is not None:
        raise unsupported_field(m.at("slow_start_config"), "slow_start_config")
    bias = 1.0
    rd = m.message("active_request_bias", ("default_value", "runtime_key"))
    if rd is not None:
        rd.string("runtime_key", required=True)
        v = rd.raw("default_value")
        if v is None:
            raise ConfigError(rd.at("default_value"), "required field is missing")
        bias = _double(v, rd.at("default_value"))
    out = LeastRequestLbConfig(choice_count=_wrapped_uint(m, "choice_count", 0xFFFFFFFF, 2, low=2),
                               active_request_bias=bias)
    out.validate(msg.at("least_request_lb_config"))
    return out


def _common(msg: Message) -> CommonLbConfig:
    m = msg.message("common_lb_config", ("healthy_panic_threshold", "locality_weighted_lb_config",
                                         "zone_aware_lb_config", "update_merge_window",
                                         "ignore_new_hosts_until_first_hc", "close_connections_on_host_set_change",
                                         "consistent_hashing_lb_config", "override_host_status"))
    for f in ("zone_aware_lb_config", "consistent_hashing_lb_config", "override_host_status"):
        if m.raw(f) is not None:
            raise ConfigError(m.at(f), f"{f} is unsupported in fastproxy (not planned); remove {f!r}")
    for f in ("ignore_new_hosts_until_first_hc", "close_connections_on_host_set_change"):
        if m.raw(f):
            raise ConfigError(m.at(f), f"{f} is unsupported in fastproxy (not planned); remove {f!r}")
    merge = m.duration("update_merge_window")
    if merge:
        # Host health and membership changes reach the workers at once (a merge window of
        # 0s); a window that delays them is not built.
        raise ConfigError(m.at("update_merge_window"), "only 0s is supported in fastproxy (host set "
                                                       "updates are applied at once); remove it or set 0s")
    threshold = 50.0
    pct = m.message("healthy_panic_threshold", ("value",))
    if pct is not None:
        v = pct.raw("value", 0.0)
        threshold = _double(v, pct.at("value"))
        if not 0 <= threshold <= 100:
            raise ConfigError(pct.at("value"), f"must be 0..100, got {v!r}")
    lw = m.message("locality_weighted_lb_config", ())
    out = CommonLbConfig(healthy_panic_threshold=threshold, locality_weighted_lb_config=lw is not None)
    out.validate(msg.at("common_lb_config"))
    return out


def cluster_lb_options(msg: Message, lb_policy: str) -> dict:
    """model.Cluster's keyword arguments for the load balancer's options in ``msg``. As in
    Envoy, an options block of another policy than the cluster's is checked and kept, and
    does nothing."""
    out = {}
    given = [f for f in CLUSTER_LB_FIELDS[:3] if msg.raw(f) is not None]
    if len(given) > 1:
        # (Envoy's Cluster.lb_config oneof)
        raise ConfigError(msg.at(given[1]), f"only one of {', '.join(CLUSTER_LB_FIELDS[:3])} may be set "
                                            f"({given[0]} is)")
    if msg.raw("ring_hash_lb_config") is not None:
        out["ring_hash_lb_config"] = _ring_hash(msg)
    if msg.raw("maglev_lb_config") is not None:
        out["maglev_lb_config"] = _maglev(msg)
    if msg.raw("least_request_lb_config") is not None:
        out["least_request_lb_config"] = _least_request(msg)
    if msg.raw("common_lb_config") is not None:
        out["common_lb_config"] = _common(msg)
    return out


def dump_cluster_lb(c) -> dict:
    """The Envoy YAML fields of model.Cluster ``c``'s load-balancer options (config dump)."""
    out: dict = {}
    r = c.ring_hash_lb_config
    if r is not None:
        out["ring_hash_lb_config"] = {"minimum_ring_size": str(r.minimum_ring_size),
                                      "maximum_ring_size": str(r.maximum_ring_size),
                                      **({"hash_function": r.hash_function} if r.hash_function != "XX_HASH" else {})}
    if c.maglev_lb_config is not None:
        out["maglev_lb_config"] = {"table_size": str(c.maglev_lb_config.table_size)}
    lr = c.least_request_lb_config
    if lr is not None:
        out["least_request_lb_config"] = {"choice_count": lr.choice_count,
                                          "active_request_bias": {"default_value": lr.active_request_bias,
                                                                  "runtime_key": "upstream.active_request_bias"}}
    cm = c.common_lb_config
    if cm is not None:
        common: dict = {"healthy_panic_threshold": {"value": cm.healthy_panic_threshold}}
        if cm.locality_weighted_lb_config:
            common["locality_weighted_lb_config"] = {}
        out["common_lb_config"] = common
    return out
