"""Retries in Envoy's v3 YAML: RouteAction and VirtualHost retry_policy / hedge_policy and the
virtual host's attempt-count and buffer-limit fields (model: fastproxy.http.retry). Owner:
issue 16's RETRY work."""
from __future__ import annotations

from typing import Optional

from ..errors import ConfigError
from ..http.retry import RETRY_ON, HedgePolicy, ResetHeader, RetryBudget, RetryPolicy
from .http_common import _bool, _header_matcher
from .proto import Message, integer, unsupported_field

ROUTE_RETRY_FIELDS = ("retry_policy", "hedge_policy")
VHOST_RETRY_FIELDS = ("retry_policy", "hedge_policy", "include_request_attempt_count",
                      "include_attempt_count_in_response", "per_request_buffer_limit_bytes")

_RETRY_POLICY_FIELDS = ("retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
                        "retry_priority", "retry_host_predicate", "retry_options_predicates",
                        "host_selection_retry_max_attempts", "retriable_status_codes",
                        "retry_back_off", "rate_limited_retry_back_off", "retriable_headers",
                        "retriable_request_headers")
_HEDGE_FIELDS = ("initial_requests", "additional_request_chance", "hedge_on_per_try_timeout")
_RESET_FORMATS = {"SECONDS": 0, "UNIX_TIMESTAMP": 1}
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_HOSTS_TYPE = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


def retry_policy(m: Optional[Message]) -> Optional[RetryPolicy]:
    """route.v3.RetryPolicy (a route's or a virtual host's)."""
    if m is None:
        return None
    for f in ("retry_priority", "retry_options_predicates"):
        if m.raw(f) is not None:
            raise unsupported_field(m.at(f), f)
    retry_on = m.string("retry_on", default="")
    for c in (c.strip() for c in retry_on.split(",")):
        if c and c not in RETRY_ON:
            # Envoy 1.40 ignores an unknown condition; fastproxy refuses it with its path,
            # since a misspelt condition would silently turn that retry off.
            raise ConfigError(m.at("retry_on"), f"invalid retry policy: {c!r} is not a retry condition")
    p = RetryPolicy(retry_on=retry_on)
    p.num_retries = m.uint32("num_retries", default=1)
    p.per_try_timeout = m.duration("per_try_timeout")
    p.per_try_idle_timeout = m.duration("per_try_idle_timeout")
    hs = m.raw("host_selection_retry_max_attempts")
    if hs is not None:
        p.host_selection_retry_max_attempts = integer(hs, m.at("host_selection_retry_max_attempts"),
                                                      -(1 << 63), (1 << 63) - 1, "a signed 64-bit integer")
    for item, ipath in m.repeated("retry_host_predicate"):
        pm = Message(item, ipath, ("name", "typed_config"))
        name = pm.string("name", default="")
        tc = pm.mapping("typed_config") or {}
        # Envoy 1.40 finds the extension by its typed_config's type (none: refused).
        if tc.get("@type") != PREVIOUS_HOSTS_TYPE:
            raise ConfigError(pm.at("typed_config"), f"retry host predicate {name or tc.get('@type')!r}: only "
                                                     f"{PREVIOUS_HOSTS} ({PREVIOUS_HOSTS_TYPE}) is built")
        p.previous_hosts = True
    for item, ipath in m.repeated("retriable_status_codes"):
        p.retriable_status_codes.append(integer(item, ipath, 0, (1 << 32) - 1, "an unsigned 32-bit integer"))
    bo = m.message("retry_back_off", ("base_interval", "max_interval"))
    if bo is not None:
        p.base_interval = bo.duration("base_interval", required=True)
        p.max_interval = bo.duration("max_interval")
        if p.base_interval <= 0:
            raise ConfigError(bo.at("base_interval"), "must be greater than 0")
        if p.max_interval is not None and p.max_interval <= 0:
            raise ConfigError(bo.at("max_interval"), "must be greater than 0")
        if p.max_interval is not None and p.max_interval < p.base_interval:
            raise ConfigError(bo.at("max_interval"), "max_interval must be greater than or equal to "
                                                     "the base_interval")
    rl = m.message("rate_limited_retry_back_off", ("reset_headers", "max_interval"))
    if rl is not None:
        for item, ipath in rl.repeated("reset_headers"):
            hm = Message(item, ipath, ("name", "format"))
            name = hm.string("name", default="")
            if not name:
                raise ConfigError(hm.at("name"), "must be a non-empty header name")
            p.reset_headers.append(ResetHeader(name=name, format=hm.enum("format", _RESET_FORMATS,
                                                                          default="SECONDS")))
        if not p.reset_headers:
            raise ConfigError(rl.at("reset_headers"), "must have at least one item")
        p.reset_max_interval = rl.duration("max_interval")
        if p.reset_max_interval is not None and p.reset_max_interval <= 0.001:
            raise ConfigError(rl.at("max_interval"), "must be greater than 1ms")
    p.retriable_headers = [_header_matcher(item, ipath) for item, ipath in m.repeated("retriable_headers")]
    p.retriable_request_headers = [_header_matcher(item, ipath)
                                   for item, ipath in m.repeated("retriable_request_headers")]
    return p


def hedge_policy(m: Optional[Message]) -> Optional[HedgePolicy]:
    if m is None:
        return None
    for f in ("initial_requests", "additional_request_chance"):
        if m.raw(f) is not None:
            raise unsupported_field(m.at(f), f)
    return HedgePolicy(hedge_on_per_try_timeout=_bool(m, "hedge_on_per_try_timeout"))


def route_retry(a: Message) -> dict:
    """mh.RouteAction's keyword arguments for the retry fields of route action ``a``."""
    return dict(retry_policy=retry_policy(a.message("retry_policy", _RETRY_POLICY_FIELDS)),
                hedge_policy=hedge_policy(a.message("hedge_policy", _HEDGE_FIELDS)))


def vhost_retry(vh: Message) -> dict:
    """mh.VirtualHost's keyword arguments for the retry fields of virtual host ``vh``."""
    out = dict(retry_policy=retry_policy(vh.message("retry_policy", _RETRY_POLICY_FIELDS)),
               hedge_policy=hedge_policy(vh.message("hedge_policy", _HEDGE_FIELDS)),
               include_request_attempt_count=_bool(vh, "include_request_attempt_count"),
               include_attempt_count_in_response=_bool(vh, "include_attempt_count_in_response"))
    limit = vh.raw("per_request_buffer_limit_bytes")
    if limit is not None:
        out["per_request_buffer_limit_bytes"] = vh.uint32("per_request_buffer_limit_bytes")
    return out


def retry_budget(m: Optional[Message]) -> Optional[RetryBudget]:
    """circuit_breakers.thresholds[].retry_budget (budget_percent is a type.v3.Percent)."""
    if m is None:
        return None
    b = RetryBudget()
    pct = m.message("budget_percent", ("value",))
    if pct is not None:
        v = pct.raw("value", 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 100.0:
            raise ConfigError(pct.at("value"), "must be a number in [0, 100]")
        b.budget_percent = float(v)
    b.min_retry_concurrency = m.uint32("min_retry_concurrency", default=3)
    return b


RETRY_BUDGET_FIELDS = ("budget_percent", "min_retry_concurrency")
