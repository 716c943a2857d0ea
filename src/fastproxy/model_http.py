"""The HTTP configuration model: Envoy's http_connection_manager, route_config and router,
as plain Python objects. The Envoy YAML loader produces these; the core compiles them into
its route table (core/router.pxi) and connection manager config.

Field names follow Envoy's v3 protos so a reader of Envoy docs finds them. Durations are
float seconds; None means "disabled" where Envoy uses 0s for that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# The StringMatcher kinds a header/query matcher may use (exactly one is set).
STRING_MATCH_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")


@dataclass
class StringMatch:
    """Envoy's type.matcher.v3.StringMatcher: exactly one of the kinds, optional ignore_case."""

    kind: str                   # one of STRING_MATCH_KINDS
    value: str
    ignore_case: bool = False


@dataclass
class HeaderMatcher:
    """route.v3.HeaderMatcher. With no string_match and present_match None: the header must
    be present (Envoy's behaviour for a bare name). Pseudo-headers (:method, :path,
    :authority, :scheme) can be matched too."""

    name: str
    string_match: Optional[StringMatch] = None
    present_match: Optional[bool] = None
    invert_match: bool = False
    treat_missing_header_as_empty: bool = False


@dataclass
class QueryParameterMatcher:
    """route.v3.QueryParameterMatcher: string_match, or present_match (True)."""

    name: str
    string_match: Optional[StringMatch] = None
    present_match: Optional[bool] = None


@dataclass
class RouteMatch:
    """Exactly one of prefix, path, safe_regex, path_separated_prefix."""

    prefix: Optional[str] = None
    path: Optional[str] = None
    safe_regex: Optional[str] = None
    path_separated_prefix: Optional[str] = None
    case_sensitive: bool = True
    headers: list = field(default_factory=list)             # [HeaderMatcher]
    query_parameters: list = field(default_factory=list)    # [QueryParameterMatcher]


@dataclass
class HeaderValueOption:
    """config.core.v3.HeaderValueOption. append_action: APPEND_IF_EXISTS_OR_ADD (default),
    ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS."""

    key: str
    value: str
    append_action: str = "APPEND_IF_EXISTS_OR_ADD"


@dataclass
class HeaderMutations:
    """The *_headers_to_add/remove lists shared by route, virtual host and route config."""

    request_headers_to_add: list = field(default_factory=list)     # [HeaderValueOption]
    request_headers_to_remove: list = field(default_factory=list)  # [str]
    response_headers_to_add: list = field(default_factory=list)
    response_headers_to_remove: list = field(default_factory=list)


@dataclass
class WeightedCluster:
    name: str
    weight: int


@dataclass
class RegexRewrite:
    pattern: str
    substitution: str


@dataclass
class RouteAction:
    """route.v3.RouteAction: exactly one of cluster / weighted_clusters."""

    cluster: Optional[str] = None
    weighted_clusters: list = field(default_factory=list)   # [WeightedCluster]
    prefix_rewrite: Optional[str] = None
    regex_rewrite: Optional[RegexRewrite] = None
    host_rewrite_literal: Optional[str] = None
    auto_host_rewrite: bool = False
    timeout: Optional[float] = 15.0                         # Envoy's default; None = 0s = off


@dataclass
class RedirectAction:
    """route.v3.RedirectAction."""

    scheme_redirect: Optional[str] = None
    https_redirect: bool = False
    host_redirect: Optional[str] = None
    port_redirect: Optional[int] = None
    path_redirect: Optional[str] = None
    prefix_rewrite: Optional[str] = None
    response_code: int = 301                                # MOVED_PERMANENTLY
    strip_query: bool = False


@dataclass
class DirectResponse:
    status: int
    body: bytes = b""


@dataclass
class Route:
    """Exactly one of route, redirect, direct_response."""

    match: RouteMatch
    route: Optional[RouteAction] = None
    redirect: Optional[RedirectAction] = None
    direct_response: Optional[DirectResponse] = None
    name: str = ""
    headers: HeaderMutations = field(default_factory=HeaderMutations)


@dataclass
class VirtualHost:
    name: str
    domains: list                                           # [str]: exact, *.suffix, prefix.*, *
    routes: list = field(default_factory=list)              # [Route]
    headers: HeaderMutations = field(default_factory=HeaderMutations)


@dataclass
class RouteConfiguration:
    name: str = ""
    virtual_hosts: list = field(default_factory=list)       # [VirtualHost]
    headers: HeaderMutations = field(default_factory=HeaderMutations)


@dataclass
class AccessLog:
    """An access log sink: path ("/dev/stdout" for stdout) and an Envoy format string
    (None: Envoy's default format)."""

    path: str
    format: Optional[str] = None


@dataclass
class HttpConnectionManager:
    """network.http_connection_manager.v3.HttpConnectionManager (HTTP/1.1 codec)."""

    stat_prefix: str
    route_config: RouteConfiguration
    server_name: str = "fastproxy"
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    generate_request_id: bool = True
    request_headers_timeout: Optional[float] = None         # Envoy default 0s: off
    stream_idle_timeout: Optional[float] = 300.0            # 5 min
    request_timeout: Optional[float] = None
    idle_timeout: Optional[float] = 3600.0                  # common_http_protocol_options
    max_requests_per_connection: Optional[int] = None
    max_headers_count: int = 100
    max_request_headers_kb: int = 60
    max_request_bytes: Optional[int] = None                 # body limit (413); None: unlimited
    drain_timeout: float = 5.0
    access_log: list = field(default_factory=list)          # [AccessLog]


def validate_http(hcm: "HttpConnectionManager", path: str, cluster_names) -> None:
    """Check an HttpConnectionManager; errors name the field path. Filled in by the HTTP
    config work (see config/http.py); here only the cross-reference to clusters."""
    from .errors import ConfigError
    rc = hcm.route_config
    for vi, vh in enumerate(rc.virtual_hosts):
        for ri, r in enumerate(vh.routes):
            a = r.route
            if a is None:
                continue
            rpath = f"{path}.route_config.virtual_hosts[{vi}].routes[{ri}].route"
            if a.cluster is not None and a.cluster not in cluster_names:
                raise ConfigError(rpath + ".cluster", f"unknown cluster {a.cluster!r}")
            for wi, wc in enumerate(a.weighted_clusters):
                if wc.name not in cluster_names:
                    raise ConfigError(f"{rpath}.weighted_clusters.clusters[{wi}].name", f"unknown cluster {wc.name!r}")
