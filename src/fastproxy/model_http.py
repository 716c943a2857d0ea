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
class Int64Range:
    """type.v3.Int64Range: start inclusive, end exclusive."""

    start: int
    end: int


@dataclass
class HeaderMatcher:
    """route.v3.HeaderMatcher. With no string_match, range_match and present_match None: the
    header must be present (Envoy's behaviour for a bare name). range_match: the value is a
    decimal integer (optional sign) in [start, end). Pseudo-headers (:method, :path,
    :authority, :scheme) can be matched too."""

    name: str
    string_match: Optional[StringMatch] = None
    present_match: Optional[bool] = None
    range_match: Optional[Int64Range] = None
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
    connect_matcher: bool = False                           # matches CONNECT requests only
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
    keep_empty_value: bool = False          # else an empty value adds nothing (Envoy)


@dataclass
class HeaderMutations:
    """The *_headers_to_add/remove lists shared by route, virtual host and route config."""

    request_headers_to_add: list = field(default_factory=list)     # [HeaderValueOption]
    request_headers_to_remove: list = field(default_factory=list)  # [str]
    response_headers_to_add: list = field(default_factory=list)
    response_headers_to_remove: list = field(default_factory=list)


@dataclass
class WeightedCluster:
    """route.v3.WeightedCluster.ClusterWeight: a cluster and its share of the requests."""

    name: str
    weight: int


@dataclass
class RegexRewrite:
    """type.matcher.v3.RegexMatchAndSubstitute: the path's matches of ``pattern`` (RE2
    syntax) replaced by ``substitution`` (``\\1``.. name the groups)."""

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
    regex_rewrite: Optional[RegexRewrite] = None            # the path (query kept)
    response_code: int = 301                                # MOVED_PERMANENTLY
    strip_query: bool = False


@dataclass
class DirectResponse:
    """route.v3.DirectResponseAction: the proxy answers with ``status`` and ``body``."""

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
    typed_per_filter_config: dict = field(default_factory=dict)     # HTTP filter name -> config


@dataclass
class VirtualHost:
    """route.v3.VirtualHost: the routes for the requests whose Host is one of ``domains``
    (exact, ``*.suffix``, ``prefix.*`` or ``*``), tried in order."""

    name: str
    domains: list                                           # [str]: exact, *.suffix, prefix.*, *
    routes: list = field(default_factory=list)              # [Route]
    headers: HeaderMutations = field(default_factory=HeaderMutations)
    typed_per_filter_config: dict = field(default_factory=dict)


@dataclass
class RouteConfiguration:
    """route.v3.RouteConfiguration: the virtual hosts of a connection manager, and the
    header mutations and per-filter configs that apply to all of them."""

    name: str = ""
    virtual_hosts: list = field(default_factory=list)       # [VirtualHost]
    headers: HeaderMutations = field(default_factory=HeaderMutations)
    typed_per_filter_config: dict = field(default_factory=dict)
    # Envoy's default False: a Host's port takes part in picking the virtual host
    # ("a.com" does not take "a.com:8080"); True cuts it off first.
    ignore_port_in_host_matching: bool = False


@dataclass
class AccessLog:
    """An access log sink: path ("/dev/stdout" for stdout) and an Envoy format string
    (None: Envoy's default format)."""

    path: str
    format: Optional[str] = None


@dataclass
class UpgradeConfig:
    """HttpConnectionManager.UpgradeConfig: "CONNECT" (tunnels to a connect_matcher route's
    cluster) or "websocket" (Upgrade requests are forwarded in any case)."""

    upgrade_type: str
    enabled: bool = True


@dataclass
class InternalAddressConfig:
    """HttpConnectionManager.InternalAddressConfig: the client addresses whose requests are
    "internal" (they keep their x-envoy-* headers and get ``x-envoy-internal: true``).
    ``cidr_ranges``: "prefix/len" strings ("10.0.0.0/8", "fd00::/8"); empty: Envoy's
    RFC 1918 set (10/8, 172.16/12, 192.168/16, 127.0.0.1, fd00::/8, ::1). ``unix_sockets``
    is accepted for Envoy configs; fastproxy listeners are TCP, so it changes nothing.
    Without this config no address is internal (Envoy's default since 1.33)."""

    cidr_ranges: list = field(default_factory=list)
    unix_sockets: bool = False


SERVER_HEADER_TRANSFORMATIONS = ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH")
ESCAPED_SLASHES_ACTIONS = ("KEEP_UNCHANGED", "REJECT_REQUEST", "UNESCAPE_AND_REDIRECT", "UNESCAPE_AND_FORWARD")
STRIP_HOST_PORT_MODES = ("NONE", "MATCHING", "ANY")
UNDERSCORES_ACTIONS = ("ALLOW", "REJECT_REQUEST", "DROP_HEADER")


@dataclass
class HttpConnectionManager:
    """network.http_connection_manager.v3.HttpConnectionManager (HTTP/1.1 codec)."""

    stat_prefix: str
    route_config: RouteConfiguration
    server_name: str = "fastproxy"
    # Envoy's server_header_transformation: OVERWRITE (Server is always server_name),
    # APPEND_IF_ABSENT (only when the response has none) or PASS_THROUGH (never set).
    server_header_transformation: str = "OVERWRITE"
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    internal_address_config: Optional[InternalAddressConfig] = None     # None: nothing is internal
    generate_request_id: bool = True
    # The router filter's suppress_envoy_headers: no x-envoy-expected-rq-timeout-ms,
    # x-envoy-original-path, x-envoy-original-host nor x-envoy-upstream-service-time.
    suppress_envoy_headers: bool = False
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
    http_filters: list = field(default_factory=list)        # before the router: PythonHttpFilter,
                                                            # NativeHttpFilter, CHttpFilter
    upgrade_configs: list = field(default_factory=list)     # [UpgradeConfig]
    accept_http_10: bool = False                            # http_protocol_options: else 426
    default_host_for_http_10: str = ""                      # Host for HTTP/1.0 without one
    # Envoy's request/response header options (checked against Envoy 1.40):
    via: str = ""                                           # appended to request and response Via
    skip_xff_append: bool = False                           # use_remote_address leaves XFF as received
    preserve_external_request_id: bool = False              # an edge request keeps its x-request-id
    always_set_request_id_in_response: bool = False         # responses get the request's x-request-id
    normalize_path: bool = False                            # RFC 3986 dot segments, unreserved %XX
    merge_slashes: bool = False                             # "//" -> "/" in the path
    path_with_escaped_slashes_action: str = "KEEP_UNCHANGED"   # %2F / %5C: ESCAPED_SLASHES_ACTIONS
    strip_host_port: str = "NONE"                           # NONE, MATCHING (the listener's), ANY
    headers_with_underscores_action: str = "ALLOW"          # ALLOW, REJECT_REQUEST, DROP_HEADER


def validate_http(hcm: "HttpConnectionManager", path: str, cluster_names) -> None:
    """Check an HttpConnectionManager, typically one built with the Python API (what the Envoy
    loader produces always passes): types and ranges, the exactly-one-of rules (a match's
    path specifier, a route's action, a RouteAction's target), regexes that POSIX can run
    (see fastproxy.config.regex), header names that may be modified, domains (wildcards,
    duplicates) and that every cluster a route names exists. Errors are ConfigError naming
    the field, e.g. ``<path>.route_config.virtual_hosts[0].routes[1].match.prefix``."""
    from .config.http import (check_domain, check_header_name, check_header_value, check_host_value,
                              check_modifiable, check_path_separated_prefix, check_scheme)
    from .config.regex import re2_to_posix, rewrite_to_posix
    from .access_log import compile_format
    from .errors import ConfigError

    def fail(p, message):
        raise ConfigError(p, message)

    def typed(value, cls, p):
        if not isinstance(value, cls):
            fail(p, f"expected {cls.__name__}, got {type(value).__name__}")
        return value

    def string(value, p, non_empty=False, optional=False):
        if value is None and optional:
            return None
        if not isinstance(value, str):
            fail(p, f"expected a string, got {value!r}")
        if non_empty and not value:
            fail(p, "must not be empty")
        return value

    def boolean(value, p):
        if not isinstance(value, bool):
            fail(p, f"expected True or False, got {value!r}")

    def integer(value, p, low, high=None, optional=False):
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            fail(p, f"expected an integer {f'{low}..{high}' if high is not None else f'>= {low}'}"
                    f"{' or None' if optional else ''}, got {value!r}")

    def seconds(value, p, optional=True):
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            fail(p, f"expected a non-negative number of seconds{' or None' if optional else ''}, got {value!r}")

    def each(value, p, cls=None):
        if not isinstance(value, (list, tuple)):
            fail(p, f"expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            if cls is not None:
                typed(item, cls, f"{p}[{i}]")
            yield item, f"{p}[{i}]"

    def string_match(sm, p):
        typed(sm, StringMatch, p)
        if sm.kind not in STRING_MATCH_KINDS:
            fail(p + ".kind", f"expected one of {', '.join(STRING_MATCH_KINDS)}, got {sm.kind!r}")
        string(sm.value, p + ".value", non_empty=sm.kind in ("prefix", "suffix", "contains"))
        boolean(sm.ignore_case, p + ".ignore_case")
        if sm.kind == "safe_regex":
            if sm.ignore_case:
                fail(p + ".ignore_case", "ignore_case has no effect for safe_regex")
            re2_to_posix(sm.value, p + ".value")

    def mutations(h, p):
        typed(h, HeaderMutations, p)
        for field_name in ("request_headers_to_add", "response_headers_to_add"):
            for opt, op in each(getattr(h, field_name), f"{p}.{field_name}", HeaderValueOption):
                check_modifiable(string(opt.key, op + ".key", non_empty=True), op + ".key", "modified")
                check_header_name(opt.key, op + ".key")
                check_header_value(string(opt.value, op + ".value"), op + ".value")
                boolean(opt.keep_empty_value, op + ".keep_empty_value")
                if opt.append_action not in ("APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT",
                                             "OVERWRITE_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS"):
                    fail(op + ".append_action", f"unknown append_action {opt.append_action!r}")
        for field_name in ("request_headers_to_remove", "response_headers_to_remove"):
            for name, np in each(getattr(h, field_name), f"{p}.{field_name}"):
                check_modifiable(string(name, np, non_empty=True), np, "removed")
                check_header_name(name, np)

    def route_match(m, p):
        typed(m, RouteMatch, p)
        given = [k for k in ("prefix", "path", "safe_regex", "path_separated_prefix") if getattr(m, k) is not None]
        boolean(m.connect_matcher, p + ".connect_matcher")
        if m.connect_matcher:
            given.append("connect_matcher")
        if len(given) != 1:
            fail(p, "exactly one of prefix, path, safe_regex, path_separated_prefix, connect_matcher must be set"
                    + (f" (got {', '.join(given)})" if given else ""))
        kind = given[0]
        value = "" if kind == "connect_matcher" else string(getattr(m, kind), f"{p}.{kind}")
        if kind == "safe_regex":
            re2_to_posix(value, f"{p}.safe_regex")
        elif kind == "path_separated_prefix":
            check_path_separated_prefix(value, f"{p}.path_separated_prefix")
        boolean(m.case_sensitive, p + ".case_sensitive")
        if kind == "safe_regex" and not m.case_sensitive:
            fail(p + ".case_sensitive", "case_sensitive has no effect for safe_regex (Envoy ignores it)")
        for h, hp in each(m.headers, p + ".headers", HeaderMatcher):
            check_header_name(string(h.name, hp + ".name", non_empty=True), hp + ".name", pseudo=True)
            if sum(x is not None for x in (h.string_match, h.present_match, h.range_match)) > 1:
                fail(hp, "only one of string_match, range_match and present_match may be set")
            if h.string_match is not None:
                string_match(h.string_match, hp + ".string_match")
            if h.range_match is not None:
                typed(h.range_match, Int64Range, hp + ".range_match")
                integer(h.range_match.start, hp + ".range_match.start", -(1 << 63), (1 << 63) - 1)
                integer(h.range_match.end, hp + ".range_match.end", -(1 << 63), (1 << 63) - 1)
            if h.present_match is not None:
                boolean(h.present_match, hp + ".present_match")
            boolean(h.invert_match, hp + ".invert_match")
            boolean(h.treat_missing_header_as_empty, hp + ".treat_missing_header_as_empty")
        for q, qp in each(m.query_parameters, p + ".query_parameters", QueryParameterMatcher):
            string(q.name, qp + ".name", non_empty=True)
            if q.string_match is not None:
                if q.present_match is not None:
                    fail(qp, "only one of string_match and present_match may be set")
                string_match(q.string_match, qp + ".string_match")
            if q.present_match is not None:
                boolean(q.present_match, qp + ".present_match")

    def route_action(a, p):
        typed(a, RouteAction, p)
        if (a.cluster is None) == (not a.weighted_clusters):
            fail(p, "exactly one of cluster and weighted_clusters must be set")
        if a.cluster is not None:
            if string(a.cluster, p + ".cluster", non_empty=True) not in cluster_names:
                fail(p + ".cluster", f"unknown cluster {a.cluster!r}")
        total = 0
        for wc, wp in each(a.weighted_clusters, p + ".weighted_clusters", WeightedCluster):
            if string(wc.name, wp + ".name", non_empty=True) not in cluster_names:
                fail(wp + ".name", f"unknown cluster {wc.name!r}")
            integer(wc.weight, wp + ".weight", 1)
            total += wc.weight
            if total > 0xFFFFFFFF:
                fail(wp + ".weight", "the sum of the weights exceeds 4294967295")
        if a.prefix_rewrite is not None:
            check_header_value(string(a.prefix_rewrite, p + ".prefix_rewrite"), p + ".prefix_rewrite")
        if a.regex_rewrite is not None:
            rp = p + ".regex_rewrite"
            if a.prefix_rewrite is not None:
                fail(rp, "only one of prefix_rewrite and regex_rewrite may be set")
            typed(a.regex_rewrite, RegexRewrite, rp)
            string(a.regex_rewrite.substitution, rp + ".substitution")
            rewrite_to_posix(a.regex_rewrite.pattern, a.regex_rewrite.substitution, rp + ".pattern",
                             rp + ".substitution")
        if a.host_rewrite_literal is not None:
            hp = p + ".host_rewrite_literal"
            check_header_value(string(a.host_rewrite_literal, hp, non_empty=True), hp)
        boolean(a.auto_host_rewrite, p + ".auto_host_rewrite")
        if a.auto_host_rewrite and a.host_rewrite_literal is not None:
            fail(p + ".auto_host_rewrite", "only one of host_rewrite_literal and auto_host_rewrite may be set")
        seconds(a.timeout, p + ".timeout")

    def redirect(r, p):
        typed(r, RedirectAction, p)
        boolean(r.https_redirect, p + ".https_redirect")
        if string(r.scheme_redirect, p + ".scheme_redirect", non_empty=True, optional=True) is not None:
            if r.https_redirect:
                fail(p + ".scheme_redirect", "only one of https_redirect and scheme_redirect may be set")
            check_scheme(r.scheme_redirect, p + ".scheme_redirect")
        host = string(r.host_redirect, p + ".host_redirect", non_empty=True, optional=True)
        if host is not None and (any(c.isspace() or c == "/" for c in host)):
            fail(p + ".host_redirect", f"{host!r} is not a valid host")
        if host is not None:
            check_header_value(host, p + ".host_redirect")
        integer(r.port_redirect, p + ".port_redirect", 1, 65535, optional=True)
        if string(r.path_redirect, p + ".path_redirect", optional=True) is not None:
            if not r.path_redirect.startswith("/"):
                fail(p + ".path_redirect", f"path_redirect must start with '/', got {r.path_redirect!r}")
            check_header_value(r.path_redirect, p + ".path_redirect")
        if string(r.prefix_rewrite, p + ".prefix_rewrite", optional=True) is not None:
            if r.path_redirect is not None:
                fail(p + ".prefix_rewrite", "only one of path_redirect and prefix_rewrite may be set")
            check_header_value(r.prefix_rewrite, p + ".prefix_rewrite")
        if r.regex_rewrite is not None:
            rp = p + ".regex_rewrite"
            if r.path_redirect is not None or r.prefix_rewrite is not None:
                fail(rp, "only one of path_redirect, prefix_rewrite and regex_rewrite may be set")
            typed(r.regex_rewrite, RegexRewrite, rp)
            string(r.regex_rewrite.substitution, rp + ".substitution")
            rewrite_to_posix(r.regex_rewrite.pattern, r.regex_rewrite.substitution, rp + ".pattern",
                             rp + ".substitution")
        if r.response_code not in (301, 302, 303, 307, 308) or isinstance(r.response_code, bool):
            fail(p + ".response_code", f"expected 301, 302, 303, 307 or 308, got {r.response_code!r}")
        boolean(r.strip_query, p + ".strip_query")

    typed(hcm, HttpConnectionManager, path)
    string(hcm.stat_prefix, path + ".stat_prefix", non_empty=True)
    string(hcm.server_name, path + ".server_name", non_empty=True)
    if hcm.server_header_transformation not in SERVER_HEADER_TRANSFORMATIONS:
        fail(path + ".server_header_transformation",
             f"expected one of {', '.join(SERVER_HEADER_TRANSFORMATIONS)}, got {hcm.server_header_transformation!r}")
    boolean(hcm.use_remote_address, path + ".use_remote_address")
    boolean(hcm.accept_http_10, path + ".accept_http_10")
    string(hcm.default_host_for_http_10, path + ".default_host_for_http_10")
    if hcm.default_host_for_http_10:
        check_host_value(hcm.default_host_for_http_10, path + ".default_host_for_http_10")
    integer(hcm.xff_num_trusted_hops, path + ".xff_num_trusted_hops", 0)
    if hcm.internal_address_config is not None:
        iap = path + ".internal_address_config"
        iac = typed(hcm.internal_address_config, InternalAddressConfig, iap)
        boolean(iac.unix_sockets, iap + ".unix_sockets")
        for cidr, cp in each(iac.cidr_ranges, iap + ".cidr_ranges"):
            parse_cidr(string(cidr, cp, non_empty=True), cp)
    boolean(hcm.generate_request_id, path + ".generate_request_id")
    boolean(hcm.suppress_envoy_headers, path + ".suppress_envoy_headers")
    string(hcm.via, path + ".via")
    check_header_value(hcm.via, path + ".via")
    for name in ("skip_xff_append", "preserve_external_request_id", "always_set_request_id_in_response",
                 "normalize_path", "merge_slashes"):
        boolean(getattr(hcm, name), f"{path}.{name}")
    for name, allowed in (("path_with_escaped_slashes_action", ESCAPED_SLASHES_ACTIONS),
                          ("strip_host_port", STRIP_HOST_PORT_MODES),
                          ("headers_with_underscores_action", UNDERSCORES_ACTIONS)):
        if getattr(hcm, name) not in allowed:
            fail(f"{path}.{name}", f"expected one of {', '.join(allowed)}, got {getattr(hcm, name)!r}")
    for name in ("request_headers_timeout", "stream_idle_timeout", "request_timeout", "idle_timeout"):
        seconds(getattr(hcm, name), f"{path}.{name}")
    seconds(hcm.drain_timeout, path + ".drain_timeout", optional=False)
    integer(hcm.max_requests_per_connection, path + ".max_requests_per_connection", 1, optional=True)
    integer(hcm.max_headers_count, path + ".max_headers_count", 1)
    integer(hcm.max_request_headers_kb, path + ".max_request_headers_kb", 1, 8192)
    integer(hcm.max_request_bytes, path + ".max_request_bytes", 1, optional=True)
    for log, lp in each(hcm.access_log, path + ".access_log", AccessLog):
        string(log.path, lp + ".path", non_empty=True)
        string(log.format, lp + ".format", optional=True)
        compile_format(log.format, lp + ".format")
    for up, upp in each(hcm.upgrade_configs, path + ".upgrade_configs", UpgradeConfig):
        string(up.upgrade_type, upp + ".upgrade_type", non_empty=True)
        if up.upgrade_type.lower() not in ("connect", "websocket"):
            fail(upp + ".upgrade_type", f"upgrade type {up.upgrade_type!r} is not supported "
                                        "(fastproxy supports CONNECT and websocket)")
        boolean(up.enabled, upp + ".enabled")
    _validate_http_filters(hcm, path, fail)

    rc = typed(hcm.route_config, RouteConfiguration, path + ".route_config")
    rcp = path + ".route_config"
    string(rc.name, rcp + ".name")
    boolean(rc.ignore_port_in_host_matching, rcp + ".ignore_port_in_host_matching")
    mutations(rc.headers, rcp + ".headers")
    domains = {}  # lower-cased domain -> where it was first seen
    for vh, vp in each(rc.virtual_hosts, rcp + ".virtual_hosts", VirtualHost):
        string(vh.name, vp + ".name", non_empty=True)
        if not isinstance(vh.domains, (list, tuple)) or not vh.domains:
            fail(vp + ".domains", "at least one domain is required")
        for domain, dp in each(vh.domains, vp + ".domains"):
            check_domain(string(domain, dp), dp)
            key = domain.lower()
            if key in domains:
                fail(dp, f"duplicate domain {domain!r} (already in {domains[key]})" if key != "*" else
                     f"only one virtual host may use the wildcard domain '*' (already in {domains[key]})")
            domains[key] = dp
        mutations(vh.headers, vp + ".headers")
        for r, rp in each(vh.routes, vp + ".routes", Route):
            string(r.name, rp + ".name")
            route_match(r.match, rp + ".match")
            actions = [k for k in ("route", "redirect", "direct_response") if getattr(r, k) is not None]
            if len(actions) != 1:
                fail(rp, "exactly one of route, redirect, direct_response must be set"
                         + (f" (got {', '.join(actions)})" if actions else ""))
            if r.route is not None:
                route_action(r.route, rp + ".route")
            elif r.redirect is not None:
                redirect(r.redirect, rp + ".redirect")
            else:
                d = typed(r.direct_response, DirectResponse, rp + ".direct_response")
                integer(d.status, rp + ".direct_response.status", 100, 599)
                typed(d.body, bytes, rp + ".direct_response.body")
            mutations(r.headers, rp + ".headers")


def _validate_http_filters(hcm: "HttpConnectionManager", path: str, fail) -> None:
    from .http_filter import HTTP_FILTER_SPECS, HttpFilter, PythonHttpFilter
    names = set()
    if not isinstance(hcm.http_filters, list):
        fail(path + ".http_filters", "must be a list")
    for i, spec in enumerate(hcm.http_filters):
        fp = f"{path}.http_filters[{i}]"
        if not isinstance(spec, HTTP_FILTER_SPECS):
            fail(fp, f"must be a PythonHttpFilter, NativeHttpFilter or CHttpFilter, not {spec!r}")
        if not isinstance(spec.name, str) or not spec.name:
            fail(fp + ".name", "must be a non-empty string")
        if spec.name in names:
            fail(fp + ".name", f"duplicate HTTP filter name {spec.name!r}")
        names.add(spec.name)
        if isinstance(spec, PythonHttpFilter) and not (isinstance(spec.cls, type) and issubclass(spec.cls, HttpFilter)):
            fail(fp + ".cls", f"{spec.cls!r} is not a fastproxy.HttpFilter subclass")
    rc = hcm.route_config

    def check_tpfc(obj, p):
        tp = getattr(obj, "typed_per_filter_config", None) or {}
        if not isinstance(tp, dict):
            fail(p + ".typed_per_filter_config", "must be a mapping of HTTP filter name to config")
        for name in tp:
            if name not in names:
                fail(f"{p}.typed_per_filter_config.{name}",
                     f"no HTTP filter named {name!r} in http_filters")

    check_tpfc(rc, path + ".route_config")
    for vi, vh in enumerate(getattr(rc, "virtual_hosts", []) or []):
        vp = f"{path}.route_config.virtual_hosts[{vi}]"
        check_tpfc(vh, vp)
        for ri, r in enumerate(getattr(vh, "routes", []) or []):
            check_tpfc(r, f"{vp}.routes[{ri}]")


def parse_cidr(text: str, path: str):
    """"prefix/len" -> an ipaddress network, as Envoy's CidrRange makes it: host bits
    dropped, a length past the address's bits taken as all of them. ConfigError naming
    ``path`` if it is not one."""
    import ipaddress
    from .errors import ConfigError
    prefix, sep, length = text.partition("/")
    try:
        if not sep or not length.isdigit():
            raise ValueError("expected prefix/length")
        address = ipaddress.ip_address(prefix)
        return ipaddress.ip_network(f"{address}/{min(int(length), address.max_prefixlen)}", strict=False)
    except ValueError as e:
        raise ConfigError(path, f"{text!r} is not a CIDR range ({e})") from None
