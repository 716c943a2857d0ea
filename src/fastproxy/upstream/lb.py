"""A cluster's load-balancer options (Envoy's ring_hash_lb_config, maglev_lb_config,
least_request_lb_config, common_lb_config) as models with Envoy's defaults and ranges, and
the spec the core builds its host sets with (core/upstream/cluster.pxi ``_lb_build``).

How a pick works (Envoy's LoadBalancerBase, built in core/upstream/load_balancer.pxi): a
priority from the priority loads (each priority's health = overprovisioning_factor x its
healthy share, capped at 100%, spilling what is missing to the next priority), then, in
that priority, its healthy hosts (degraded ones when the healthy ones lack; every host when
the healthy and degraded share is under healthy_panic_threshold: panic), then the policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError

RING_HASH_FUNCTIONS = ("XX_HASH", "MURMUR_HASH_2")
MAX_RING_SIZE = 8388608             # Envoy: minimum/maximum_ring_size lte 8M (also the default max)
MAX_MAGLEV_TABLE_SIZE = 5000011     # Envoy: table_size lte 5000011
DEFAULT_OVERPROVISIONING_FACTOR = 140


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _uint(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(path, f"must be an integer {low}..{high}, got {value!r}")
    return value


@dataclass(frozen=True)
class RingHashLbConfig:
    """RING_HASH: the ring has at least minimum_ring_size points (the lightest host a whole
    number of them) and at most maximum_ring_size; each point is hash_function of
    "<host address>_<n>"."""

    minimum_ring_size: int = 1024
    maximum_ring_size: int = MAX_RING_SIZE
    hash_function: str = "XX_HASH"

    def validate(self, path: str) -> None:
        _uint(self.minimum_ring_size, path + ".minimum_ring_size", 0, MAX_RING_SIZE)
        _uint(self.maximum_ring_size, path + ".maximum_ring_size", 0, MAX_RING_SIZE)
        if self.hash_function not in RING_HASH_FUNCTIONS:
            raise ConfigError(path + ".hash_function", f"must be one of {', '.join(RING_HASH_FUNCTIONS)}, "
                                                       f"got {self.hash_function!r}")
        if self.minimum_ring_size > self.maximum_ring_size:
            # (Envoy's words, from its ring hash load balancer)
            raise ConfigError(path, f"ring hash: minimum_ring_size ({self.minimum_ring_size}) > "
                                    f"maximum_ring_size ({self.maximum_ring_size})")


@dataclass(frozen=True)
class MaglevLbConfig:
    """MAGLEV: the lookup table's size, a prime (Envoy's default 65537)."""

    table_size: int = 65537

    def validate(self, path: str) -> None:
        _uint(self.table_size, path + ".table_size", 0, MAX_MAGLEV_TABLE_SIZE)
        if not is_prime(self.table_size):
            raise ConfigError(path + ".table_size", "The table size of maglev must be prime number")


@dataclass(frozen=True)
class LeastRequestLbConfig:
    """LEAST_REQUEST: with equal weights, the least loaded of choice_count random hosts;
    with unequal ones, weighted round robin by weight / (active requests + 1) ^
    active_request_bias."""

    choice_count: int = 2
    active_request_bias: float = 1.0

    def validate(self, path: str) -> None:
        _uint(self.choice_count, path + ".choice_count", 2, 0xFFFFFFFF)
        bias = self.active_request_bias
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not bias >= 0 or bias == float("inf"):
            raise ConfigError(path + ".active_request_bias", f"must be a finite number >= 0, got {bias!r}")


@dataclass(frozen=True)
class CommonLbConfig:
    """healthy_panic_threshold: percent (0 disables panic); locality_weighted_lb_config:
    localities take load by their load_balancing_weight."""

    healthy_panic_threshold: float = 50.0
    locality_weighted_lb_config: bool = False

    def validate(self, path: str) -> None:
        t = self.healthy_panic_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 100:
            raise ConfigError(path + ".healthy_panic_threshold", f"must be a percentage 0..100, got {t!r}")


def validate_cluster_lb(c, path: str) -> None:
    """The load-balancer fields of model.Cluster ``c`` (path: the cluster's)."""
    given = [n for n in ("ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config")
             if getattr(c, n) is not None]
    if len(given) > 1:
        raise ConfigError(f"{path}.{given[1]}", f"only one of ring_hash_lb_config, maglev_lb_config and "
                                                f"least_request_lb_config may be set ({given[0]} is)")
    for name, cls in (("ring_hash_lb_config", RingHashLbConfig), ("maglev_lb_config", MaglevLbConfig),
                      ("least_request_lb_config", LeastRequestLbConfig), ("common_lb_config", CommonLbConfig)):
        v = getattr(c, name)
        if v is None:
            continue
        if not isinstance(v, cls):
            raise ConfigError(f"{path}.{name}", f"Cluster({name}=...) must be a fastproxy.upstream.lb.{cls.__name__}, "
                                                f"got {type(v).__name__}")
        v.validate(f"{path}.{name}")
    f = c.overprovisioning_factor
    if isinstance(f, bool) or not isinstance(f, int) or not 1 <= f <= 0xFFFFFFFF:
        raise ConfigError(path + ".overprovisioning_factor", f"must be an integer >= 1, got {f!r}")


def lb_spec(c) -> Optional[dict]:
    """What the core builds cluster ``c``'s host sets with (ClusterHandle.set_params lb=);
    None: every default."""
    out: dict = {}
    if c.overprovisioning_factor != DEFAULT_OVERPROVISIONING_FACTOR:
        out["overprovisioning_factor"] = c.overprovisioning_factor
    common = c.common_lb_config
    if common is not None:
        # Envoy rounds the percent to an integer (PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT).
        out["healthy_panic_threshold"] = int(round(common.healthy_panic_threshold))
        out["locality_weighted"] = common.locality_weighted_lb_config
    ring = c.ring_hash_lb_config
    if ring is not None:
        out.update(minimum_ring_size=ring.minimum_ring_size, maximum_ring_size=ring.maximum_ring_size,
                   hash_function=ring.hash_function)
    if c.maglev_lb_config is not None:
        out["table_size"] = c.maglev_lb_config.table_size
    lr = c.least_request_lb_config
    if lr is not None:
        out.update(choice_count=lr.choice_count, active_request_bias=float(lr.active_request_bias))
    return out or None


__all__ = ["RingHashLbConfig", "MaglevLbConfig", "LeastRequestLbConfig", "CommonLbConfig", "lb_spec",
           "validate_cluster_lb", "is_prime"]
