"""Configs of the native HTTP filters (compiled in the core, they never take the GIL).

Each is the model of one Envoy v3 filter config; use it as the ``config`` of a
fastproxy.NativeHttpFilter with the filter's Envoy name as ``kind``, and (for filters with a
per-route config) as a value of ``typed_per_filter_config`` on a Route, VirtualHost or
RouteConfiguration::

    NativeHttpFilter("fault", FAULT, HTTPFault(abort=FaultAbort(503, FractionalPercent(100))))

The Envoy YAML loader (config/http_filters_native.py) builds the same objects. Defaults are
Envoy's: a FractionalPercent that is not given is 0% (so e.g. a LocalRateLimit without
filter_enabled limits nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from .model import HeaderMatcher, HeaderValueOption, StringMatch

LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
CORS = "envoy.filters.http.cors"
FAULT = "envoy.filters.http.fault"
BUFFER = "envoy.filters.http.buffer"
HEALTH_CHECK = "envoy.filters.http.health_check"
HEADER_MUTATION = "envoy.filters.http.header_mutation"

NATIVE_FILTER_KINDS = (LOCAL_RATELIMIT, CORS, FAULT, BUFFER, HEALTH_CHECK, HEADER_MUTATION)

DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


@dataclass
class FractionalPercent:
    """type.v3.FractionalPercent: numerator / denominator (HUNDRED, TEN_THOUSAND, MILLION).
    A numerator at or above the denominator means always."""

    numerator: int = 0
    denominator: str = "HUNDRED"


# --- envoy.filters.http.local_ratelimit ---------------------------------------------------

@dataclass
class TokenBucket:
    """type.v3.TokenBucket. The bucket starts full; ``tokens_per_fill`` come back every
    ``fill_interval`` seconds, up to ``max_tokens``."""

    max_tokens: int
    tokens_per_fill: int = 1
    fill_interval: float = 1.0


@dataclass
class LocalRateLimit:
    """extensions.filters.http.local_ratelimit.v3.LocalRateLimit (filter level and per
    route). One token bucket per config object, shared by every worker. Without a
    token_bucket a request passes. Requests limited get ``status`` (default 429) with body
    "local_rate_limited" and ``response_headers_to_add``. Stats:
    ``http_local_rate_limit.<stat_prefix>.{enabled,ok,rate_limited,enforced}``."""

    stat_prefix: str
    token_bucket: Optional[TokenBucket] = None
    filter_enabled: Optional[FractionalPercent] = None     # None: 0%
    filter_enforced: Optional[FractionalPercent] = None    # None: 0%
    status: int = 429
    response_headers_to_add: List[HeaderValueOption] = field(default_factory=list)


# --- envoy.filters.http.cors ---------------------------------------------------------------

@dataclass
class Cors:
    """extensions.filters.http.cors.v3.Cors: the filter itself has no settings; the policy
    is a CorsPolicy in typed_per_filter_config (route, virtual host or route config)."""


@dataclass
class CorsPolicy:
    """extensions.filters.http.cors.v3.CorsPolicy (per route). The most specific policy is
    used whole (fields are not merged across levels)."""

    allow_origin_string_match: List[StringMatch] = field(default_factory=list)
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool = False
    forward_not_matching_preflights: bool = True


# --- envoy.filters.http.fault ----------------------------------------------------------------

@dataclass
class FaultDelay:
    """extensions.filters.common.fault.v3.FaultDelay (fixed_delay only), seconds."""

    fixed_delay: float
    percentage: FractionalPercent = field(default_factory=FractionalPercent)


@dataclass
class FaultAbort:
    """extensions.filters.http.fault.v3.FaultAbort (http_status only)."""

    http_status: int
    percentage: FractionalPercent = field(default_factory=FractionalPercent)


@dataclass
class HTTPFault:
    """extensions.filters.http.fault.v3.HTTPFault (filter level and per route: a route's
    config replaces the filter's). A delay comes first; an abort (decided when the request
    arrives) is sent when the delay ends. ``max_active_faults``: at most this many streams
    in a fault at once, over all workers (None: no limit)."""

    delay: Optional[FaultDelay] = None
    abort: Optional[FaultAbort] = None
    max_active_faults: Optional[int] = None


# --- envoy.filters.http.buffer -----------------------------------------------------------------

@dataclass
class Buffer:
    """extensions.filters.http.buffer.v3.Buffer: the whole request body is collected before
    it goes upstream (with an exact Content-Length); 413 beyond max_request_bytes."""

    max_request_bytes: int


@dataclass
class BufferPerRoute:
    """extensions.filters.http.buffer.v3.BufferPerRoute: ``disabled`` or another ``buffer``."""

    disabled: bool = False
    buffer: Optional[Buffer] = None


# --- envoy.filters.http.health_check -------------------------------------------------------------

@dataclass
class HealthCheck:
    """extensions.filters.http.health_check.v3.HealthCheck. Not pass_through_mode: requests
    matching every one of ``headers`` (all requests if it is empty) get 200 from the proxy.
    pass_through_mode: they go upstream like any other."""

    pass_through_mode: bool
    headers: List[HeaderMatcher] = field(default_factory=list)


# --- envoy.filters.http.header_mutation ----------------------------------------------------------

@dataclass
class HeaderMutationOp:
    """config.common.mutation_rules.v3.HeaderMutation: exactly one of ``append`` (a
    HeaderValueOption) or ``remove`` (a header name)."""

    append: Optional[HeaderValueOption] = None
    remove: Optional[str] = None


@dataclass
class Mutations:
    """extensions.filters.http.header_mutation.v3.Mutations."""

    request_mutations: List[HeaderMutationOp] = field(default_factory=list)
    response_mutations: List[HeaderMutationOp] = field(default_factory=list)


@dataclass
class HeaderMutation:
    """extensions.filters.http.header_mutation.v3.HeaderMutation (filter level) and
    HeaderMutationPerRoute (the same shape here). A route's mutations run first, then the
    filter's (Envoy's default order)."""

    mutations: Mutations = field(default_factory=Mutations)


HeaderMutationPerRoute = HeaderMutation

def native_filter_stat_blocks(hcm, route_config=None) -> set:
    """The stat block names ("http_local_rate_limit.<stat_prefix>") the native filters of an
    HttpConnectionManager use, filter level and per route (``route_config``: the one its
    rds names, if any)."""
    names = set()
    # Only a NativeHttpFilter has a kind; the config is validated, so the fields are there.
    kinds = {f.name: getattr(f, "kind", None) for f in hcm.http_filters}
    configs = [f.config for f in hcm.http_filters if kinds[f.name] == LOCAL_RATELIMIT]
    rc = hcm.route_config if route_config is None else route_config
    levels = [rc] if rc is not None else []
    for vh in rc.virtual_hosts if rc is not None else ():
        levels.append(vh)
        levels.extend(vh.routes)
    for level in levels:
        for name, value in (level.typed_per_filter_config or {}).items():
            if kinds.get(name) == LOCAL_RATELIMIT:
                configs.append(value)
    for c in configs:
        if isinstance(c, LocalRateLimit):
            names.add("http_local_rate_limit." + c.stat_prefix)
    return names


NativeFilterConfig = Union[LocalRateLimit, Cors, CorsPolicy, HTTPFault, Buffer, BufferPerRoute, HealthCheck,
                           HeaderMutation]

__all__ = ["LOCAL_RATELIMIT", "CORS", "FAULT", "BUFFER", "HEALTH_CHECK", "HEADER_MUTATION", "NATIVE_FILTER_KINDS",
           "FractionalPercent", "TokenBucket", "LocalRateLimit", "Cors", "CorsPolicy", "FaultDelay", "FaultAbort",
           "HTTPFault", "Buffer", "BufferPerRoute", "HealthCheck", "HeaderMutationOp", "Mutations",
           "HeaderMutation", "HeaderMutationPerRoute", "DENOMINATORS", "native_filter_stat_blocks"]
