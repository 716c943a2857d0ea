"""The HTTP configuration model: Envoy's http_connection_manager, route_config and router,
as plain Python objects. The Envoy YAML loader produces these; the core compiles them into
its route table (core/router/) and connection manager config.

Field names follow Envoy's v3 protos so a reader of Envoy docs finds them. Durations are
float seconds; None means "disabled" where Envoy uses 0s for that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Optional

from ..validation import (APPEND_ACTIONS, HEADERS_WITH_UNDERSCORES_ACTIONS, MAX_PORT, PATH_WITH_ESCAPED_SLASHES_ACTIONS,
                          REDIRECT_STATUSES, boolean, check_domain, check_header_name, check_header_value,
                          check_host_value, check_modifiable, check_path_separated_prefix,
                          check_redirect_host, check_scheme, each, fail, integer, one_of, parse_cidr,
                          seconds, string, typed)
from ..validation import SERVER_HEADER_TRANSFORMATIONS as _SERVER_HEADER_TRANSFORMATIONS

__all__ = [
    "StringMatch", "Int64Range", "HeaderMatcher", "QueryParameterMatcher", "RouteMatch", "HeaderValueOption",
    "HeaderMutations", "WeightedCluster", "RegexRewrite", "RouteAction", "RedirectAction", "DirectResponse",
    "Route", "VirtualHost", "RouteConfiguration", "AccessLog", "UpgradeConfig", "InternalAddressConfig",
    "Rds", "HttpConnectionManager", "ANY_CLUSTER", "STRING_MATCH_KINDS", "SERVER_HEADER_TRANSFORMATIONS", "ESCAPED_SLASHES_ACTIONS",
    "STRIP_HOST_PORT_MODES", "UNDERSCORES_ACTIONS", "validate_http", "parse_cidr",
    "Http2ProtocolOptions", "KeepaliveSettings", "CODEC_TYPES", "MaxStreamDuration",
]

# A RouteMatch's path specifiers (exactly one is set, or connect_matcher).
PATH_SPECIFIERS = ("prefix", "path", "safe_regex", "path_separated_prefix")
# The StringMatcher kinds a header/query matcher may use (exactly one is set).
STRING_MATCH_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")


@dataclass
class StringMatch:
    """Envoy's type.matcher.v3.StringMatcher: exactly one of the kinds, optional ignore_case."""

    kind: str                   # one of STRING_MATCH_KINDS
    value: str
    ignore_case: bool = False

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this matcher in errors."""
        from ..config.regex import re2_to_posix
        one_of(self.kind, path + ".kind", STRING_MATCH_KINDS)
        string(self.value, path + ".value", non_empty=self.kind in ("prefix", "suffix", "contains"))
        boolean(self.ignore_case, path + ".ignore_case")
        if self.kind == "safe_regex":
            if self.ignore_case:
                fail(path + ".ignore_case", "ignore_case has no effect for safe_regex")
            re2_to_posix(self.value, path + ".value")


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

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this matcher in errors."""
        check_header_name(string(self.name, path + ".name", non_empty=True), path + ".name", pseudo=True)
        if sum(x is not None for x in (self.string_match, self.present_match, self.range_match)) > 1:
            fail(path, "only one of string_match, range_match and present_match may be set")
        if self.string_match is not None:
            typed(self.string_match, StringMatch, path + ".string_match").validate(path + ".string_match")
        if self.range_match is not None:
            typed(self.range_match, Int64Range, path + ".range_match")
            integer(self.range_match.start, path + ".range_match.start", -(1 << 63), (1 << 63) - 1)
            integer(self.range_match.end, path + ".range_match.end", -(1 << 63), (1 << 63) - 1)
        if self.present_match is not None:
            boolean(self.present_match, path + ".present_match")
        boolean(self.invert_match, path + ".invert_match")
        boolean(self.treat_missing_header_as_empty, path + ".treat_missing_header_as_empty")


@dataclass
class QueryParameterMatcher:
    """route.v3.QueryParameterMatcher: string_match, or present_match (True)."""

    name: str
    string_match: Optional[StringMatch] = None
    present_match: Optional[bool] = None

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this matcher in errors."""
        string(self.name, path + ".name", non_empty=True)
        if self.string_match is not None:
            if self.present_match is not None:
                fail(path, "only one of string_match and present_match may be set")
            typed(self.string_match, StringMatch, path + ".string_match").validate(path + ".string_match")
        if self.present_match is not None:
            boolean(self.present_match, path + ".present_match")


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

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this match in errors."""
        from ..config.regex import re2_to_posix
        given = [k for k in PATH_SPECIFIERS if getattr(self, k) is not None]
        boolean(self.connect_matcher, path + ".connect_matcher")
        if self.connect_matcher:
            given.append("connect_matcher")
        if len(given) != 1:
            fail(path, "exactly one of prefix, path, safe_regex, path_separated_prefix, connect_matcher must be set"
                       + (f" (got {', '.join(given)})" if given else ""))
        kind = given[0]
        value = "" if kind == "connect_matcher" else string(getattr(self, kind), f"{path}.{kind}")
        if kind == "safe_regex":
            re2_to_posix(value, f"{path}.safe_regex")
        elif kind == "path_separated_prefix":
            check_path_separated_prefix(value, f"{path}.path_separated_prefix")
        boolean(self.case_sensitive, path + ".case_sensitive")
        if kind == "safe_regex" and not self.case_sensitive:
            fail(path + ".case_sensitive", "case_sensitive has no effect for safe_regex (Envoy ignores it)")
        for h, hp in each(self.headers, path + ".headers", HeaderMatcher):
            h.validate(hp)
        for q, qp in each(self.query_parameters, path + ".query_parameters", QueryParameterMatcher):
            q.validate(qp)


@dataclass
class HeaderValueOption:
    """config.core.v3.HeaderValueOption. append_action: APPEND_IF_EXISTS_OR_ADD (default),
    ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS."""

    key: str
    value: str
    append_action: str = "APPEND_IF_EXISTS_OR_ADD"
    keep_empty_value: bool = False          # else an empty value adds nothing (Envoy)

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this option in errors."""
        check_modifiable(string(self.key, path + ".key", non_empty=True), path + ".key", "modified")
        check_header_name(self.key, path + ".key")
        check_header_value(string(self.value, path + ".value"), path + ".value")
        boolean(self.keep_empty_value, path + ".keep_empty_value")
        if self.append_action not in APPEND_ACTIONS:
            fail(path + ".append_action", f"unknown append_action {self.append_action!r}")


@dataclass
class HeaderMutations:
    """The *_headers_to_add/remove lists shared by route, virtual host and route config."""

    request_headers_to_add: list = field(default_factory=list)     # [HeaderValueOption]
    request_headers_to_remove: list = field(default_factory=list)  # [str]
    response_headers_to_add: list = field(default_factory=list)
    response_headers_to_remove: list = field(default_factory=list)

    def validate(self, path: str) -> None:
        """Check the lists; ``path`` names the object that holds them in errors."""
        for field_name in ("request_headers_to_add", "response_headers_to_add"):
            for opt, op in each(getattr(self, field_name), f"{path}.{field_name}", HeaderValueOption):
                opt.validate(op)
        for field_name in ("request_headers_to_remove", "response_headers_to_remove"):
            for name, np in each(getattr(self, field_name), f"{path}.{field_name}"):
                check_modifiable(string(name, np, non_empty=True), np, "removed")
                check_header_name(name, np)


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

    def validate(self, path: str) -> None:
        """Check that the pattern and substitution translate to POSIX."""
        from ..config.regex import rewrite_to_posix
        string(self.substitution, path + ".substitution")
        rewrite_to_posix(self.pattern, self.substitution, path + ".pattern", path + ".substitution")


@dataclass
class MaxStreamDuration:
    """route.v3.RouteAction.MaxStreamDuration (seconds; None: unset). ``max_stream_duration``:
    the stream's whole life on this route. ``grpc_timeout_header_max``: the request's
    grpc-timeout header sets the route's timeout, capped by it (0: no cap); unset: the
    header is not used. ``grpc_timeout_header_offset``: subtracted from that timeout."""

    max_stream_duration: Optional[float] = None
    grpc_timeout_header_max: Optional[float] = None
    grpc_timeout_header_offset: Optional[float] = None

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this message in errors."""
        for name in ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"):
            seconds(getattr(self, name), f"{path}.{name}")


@dataclass
class RouteAction:
    """route.v3.RouteAction: exactly one of cluster / weighted_clusters. The gRPC fields
    (seconds; None: unset): ``max_grpc_timeout`` (the deprecated spelling of
    max_stream_duration.grpc_timeout_header_max: 0 is "no cap"), ``grpc_timeout_offset``
    (of grpc_timeout_header_offset)."""

    cluster: Optional[str] = None
    weighted_clusters: list = field(default_factory=list)   # [WeightedCluster]
    prefix_rewrite: Optional[str] = None
    regex_rewrite: Optional[RegexRewrite] = None
    host_rewrite_literal: Optional[str] = None
    auto_host_rewrite: bool = False
    timeout: Optional[float] = 15.0                         # Envoy's default; None = 0s = off
    max_grpc_timeout: Optional[float] = None
    grpc_timeout_offset: Optional[float] = None
    max_stream_duration: Optional[MaxStreamDuration] = None
    # The cluster manager's route policies (each model and its checks in its own module):
    # retry_policy / hedge_policy: fastproxy.http.retry; hash_policy: [fastproxy.http.hash_policy
    # .HashPolicy]; request_mirror_policies: [fastproxy.http.mirror.MirrorPolicy]. None / []: none.
    retry_policy: Optional[Any] = None
    hedge_policy: Optional[Any] = None
    hash_policy: list = field(default_factory=list)
    request_mirror_policies: list = field(default_factory=list)

    def validate(self, path: str, cluster_names: Collection[str]) -> None:
        """Check the fields and that the clusters named are in ``cluster_names``."""
        if (self.cluster is None) == (not self.weighted_clusters):
            fail(path, "exactly one of cluster and weighted_clusters must be set")
        if self.cluster is not None:
            if string(self.cluster, path + ".cluster", non_empty=True) not in cluster_names:
                fail(path + ".cluster", f"unknown cluster {self.cluster!r}")
        total = 0
        for wc, wp in each(self.weighted_clusters, path + ".weighted_clusters", WeightedCluster):
            if string(wc.name, wp + ".name", non_empty=True) not in cluster_names:
                fail(wp + ".name", f"unknown cluster {wc.name!r}")
            integer(wc.weight, wp + ".weight", 1)
            total += wc.weight
            if total > 0xFFFFFFFF:
                fail(wp + ".weight", "the sum of the weights exceeds 4294967295")
        _validate_retry(self, path)
        if self.prefix_rewrite is not None:
            check_header_value(string(self.prefix_rewrite, path + ".prefix_rewrite"), path + ".prefix_rewrite")
        if self.regex_rewrite is not None:
            if self.prefix_rewrite is not None:
                fail(path + ".regex_rewrite", "only one of prefix_rewrite and regex_rewrite may be set")
            typed(self.regex_rewrite, RegexRewrite, path + ".regex_rewrite").validate(path + ".regex_rewrite")
        if self.host_rewrite_literal is not None:
            hp = path + ".host_rewrite_literal"
            check_header_value(string(self.host_rewrite_literal, hp, non_empty=True), hp)
        boolean(self.auto_host_rewrite, path + ".auto_host_rewrite")
        if self.auto_host_rewrite and self.host_rewrite_literal is not None:
            fail(path + ".auto_host_rewrite", "only one of host_rewrite_literal and auto_host_rewrite may be set")
        seconds(self.timeout, path + ".timeout")
        seconds(self.max_grpc_timeout, path + ".max_grpc_timeout")
        seconds(self.grpc_timeout_offset, path + ".grpc_timeout_offset")
        if self.max_stream_duration is not None:
            mp = path + ".max_stream_duration"
            typed(self.max_stream_duration, MaxStreamDuration, mp).validate(mp)
        if self.hash_policy:
            from .hash_policy import validate_hash_policies
            validate_hash_policies(self.hash_policy, path + ".hash_policy")
        # (fastproxy.http.mirror.MirrorPolicy, which imports this module's neighbours: its own check)
        for mp, mpath in each(self.request_mirror_policies, path + ".request_mirror_policies"):
            if not callable(getattr(mp, "validate", None)):
                fail(mpath, f"expected a fastproxy.http.mirror.MirrorPolicy, got {type(mp).__name__}")
            mp.validate(mpath, cluster_names)


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

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this redirect in errors."""
        boolean(self.https_redirect, path + ".https_redirect")
        if string(self.scheme_redirect, path + ".scheme_redirect", non_empty=True, optional=True) is not None:
            if self.https_redirect:
                fail(path + ".scheme_redirect", "only one of https_redirect and scheme_redirect may be set")
            check_scheme(self.scheme_redirect, path + ".scheme_redirect")
        host = string(self.host_redirect, path + ".host_redirect", non_empty=True, optional=True)
        if host is not None:
            check_redirect_host(host, path + ".host_redirect")
        integer(self.port_redirect, path + ".port_redirect", 1, MAX_PORT, optional=True)
        if string(self.path_redirect, path + ".path_redirect", optional=True) is not None:
            if not self.path_redirect.startswith("/"):
                fail(path + ".path_redirect", f"path_redirect must start with '/', got {self.path_redirect!r}")
            check_header_value(self.path_redirect, path + ".path_redirect")
        if string(self.prefix_rewrite, path + ".prefix_rewrite", optional=True) is not None:
            if self.path_redirect is not None:
                fail(path + ".prefix_rewrite", "only one of path_redirect and prefix_rewrite may be set")
            check_header_value(self.prefix_rewrite, path + ".prefix_rewrite")
        if self.regex_rewrite is not None:
            rp = path + ".regex_rewrite"
            if self.path_redirect is not None or self.prefix_rewrite is not None:
                fail(rp, "only one of path_redirect, prefix_rewrite and regex_rewrite may be set")
            typed(self.regex_rewrite, RegexRewrite, rp).validate(rp)
        if self.response_code not in REDIRECT_STATUSES or isinstance(self.response_code, bool):
            fail(path + ".response_code", f"expected 301, 302, 303, 307 or 308, got {self.response_code!r}")
        boolean(self.strip_query, path + ".strip_query")


@dataclass
class DirectResponse:
    """route.v3.DirectResponseAction: the proxy answers with ``status`` and ``body``."""

    status: int
    body: bytes = b""

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this response in errors."""
        integer(self.status, path + ".status", 100, 599)
        typed(self.body, bytes, path + ".body")


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

    def validate(self, path: str, cluster_names: Collection[str]) -> None:
        """Check the match, the one action and the header mutations."""
        string(self.name, path + ".name")
        typed(self.match, RouteMatch, path + ".match").validate(path + ".match")
        actions = [k for k in ("route", "redirect", "direct_response") if getattr(self, k) is not None]
        if len(actions) != 1:
            fail(path, "exactly one of route, redirect, direct_response must be set"
                       + (f" (got {', '.join(actions)})" if actions else ""))
        if self.route is not None:
            typed(self.route, RouteAction, path + ".route").validate(path + ".route", cluster_names)
        elif self.redirect is not None:
            typed(self.redirect, RedirectAction, path + ".redirect").validate(path + ".redirect")
        else:
            typed(self.direct_response, DirectResponse, path + ".direct_response").validate(path + ".direct_response")
        typed(self.headers, HeaderMutations, path + ".headers").validate(path + ".headers")


@dataclass
class VirtualHost:
    """route.v3.VirtualHost: the routes for the requests whose Host is one of ``domains``
    (exact, ``*.suffix``, ``prefix.*`` or ``*``), tried in order."""

    name: str
    domains: list                                           # [str]: exact, *.suffix, prefix.*, *
    routes: list = field(default_factory=list)              # [Route]
    headers: HeaderMutations = field(default_factory=HeaderMutations)
    typed_per_filter_config: dict = field(default_factory=dict)
    # Retries for the routes without their own (fastproxy.http.retry), and the attempt count
    # headers and the request buffer limit retries are bounded by.
    retry_policy: Optional[Any] = None
    hedge_policy: Optional[Any] = None
    include_request_attempt_count: bool = False
    include_attempt_count_in_response: bool = False
    per_request_buffer_limit_bytes: Optional[int] = None

    def validate(self, path: str, cluster_names: Collection[str], domains: Optional[dict] = None) -> None:
        """Check the fields and routes. ``domains`` (lower-cased domain -> path where it was
        first seen) is shared by the virtual hosts of one route configuration."""
        domains = {} if domains is None else domains
        string(self.name, path + ".name", non_empty=True)
        if not isinstance(self.domains, (list, tuple)) or not self.domains:
            fail(path + ".domains", "at least one domain is required")
        for domain, dp in each(self.domains, path + ".domains"):
            check_domain(string(domain, dp), dp)
            key = domain.lower()
            if key in domains:
                fail(dp, f"duplicate domain {domain!r} (already in {domains[key]})" if key != "*" else
                     f"only one virtual host may use the wildcard domain '*' (already in {domains[key]})")
            domains[key] = dp
        typed(self.headers, HeaderMutations, path + ".headers").validate(path + ".headers")
        for r, rp in each(self.routes, path + ".routes", Route):
            r.validate(rp, cluster_names)
        _validate_retry(self, path)
        if self.per_request_buffer_limit_bytes is not None:
            integer(self.per_request_buffer_limit_bytes, path + ".per_request_buffer_limit_bytes", 0)


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

    def validate(self, path: str, cluster_names: Collection[str]) -> None:
        """Check the fields and virtual hosts (no domain twice); every cluster a route names
        must be in ``cluster_names``."""
        string(self.name, path + ".name")
        boolean(self.ignore_port_in_host_matching, path + ".ignore_port_in_host_matching")
        typed(self.headers, HeaderMutations, path + ".headers").validate(path + ".headers")
        domains: dict = {}
        for vh, vp in each(self.virtual_hosts, path + ".virtual_hosts", VirtualHost):
            vh.validate(vp, cluster_names, domains)


class _AnyCluster:
    """A cluster_names that holds every name: a route configuration from RDS may name
    clusters that do not exist (yet); their requests are answered 503 (NC), as Envoy's
    (RDS's validate_clusters defaults to false)."""

    def __contains__(self, name: object) -> bool:
        return True


ANY_CLUSTER: Collection[str] = _AnyCluster()     # type: ignore[assignment]


@dataclass
class Rds:
    """HttpConnectionManager.rds: the route configuration named ``route_config_name`` comes
    from a discovery service (``config_source``, a fastproxy.model.ConfigSource) or from
    Proxy.update(routes=...). Until it is there the listener is warming (not serving)."""

    route_config_name: str
    config_source: Any              # a fastproxy.model.ConfigSource (which imports this module)

    def validate(self, path: str) -> None:
        """Check the name; ``path`` names this rds in errors. (The config_source's type is
        checked with the bootstrap, fastproxy.model, where ConfigSource is.)"""
        string(self.route_config_name, path + ".route_config_name", non_empty=True)


@dataclass
class AccessLog:
    """An access log sink: path ("/dev/stdout" for stdout) and an Envoy format string
    (None: Envoy's default format)."""

    path: str
    format: Optional[str] = None

    def validate(self, path: str) -> None:
        """Check the path and that fastproxy can compile the format."""
        from ..access_log import compile_format
        string(self.path, path + ".path", non_empty=True)
        string(self.format, path + ".format", optional=True)
        compile_format(self.format, path + ".format")


@dataclass
class UpgradeConfig:
    """HttpConnectionManager.UpgradeConfig: "CONNECT" (tunnels to a connect_matcher route's
    cluster) or "websocket" (Upgrade requests are forwarded in any case)."""

    upgrade_type: str
    enabled: bool = True

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this entry in errors."""
        string(self.upgrade_type, path + ".upgrade_type", non_empty=True)
        if self.upgrade_type.lower() not in ("connect", "websocket"):
            fail(path + ".upgrade_type", f"upgrade type {self.upgrade_type!r} is not supported "
                                         "(fastproxy supports CONNECT and websocket)")
        boolean(self.enabled, path + ".enabled")


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

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this config in errors."""
        boolean(self.unix_sockets, path + ".unix_sockets")
        for cidr, cp in each(self.cidr_ranges, path + ".cidr_ranges"):
            parse_cidr(string(cidr, cp, non_empty=True), cp)


@dataclass
class SetCurrentClientCertDetails:
    """HttpConnectionManager.SetCurrentClientCertDetails: what this hop's element of
    x-forwarded-client-cert carries besides By= and Hash= (with forward_client_cert_details
    APPEND_FORWARD or SANITIZE_SET). Envoy writes them in the order cert, chain, subject,
    uri, dns whatever the order here."""

    subject: bool = False           # Subject="<RFC 2253>"
    cert: bool = False              # Cert="<url-encoded PEM of the client certificate>"
    chain: bool = False             # Chain="<url-encoded PEMs, the client certificate first>"
    dns: bool = False               # DNS=<name> for each DNS SAN
    uri: bool = False               # URI=<uri> for each URI SAN (one empty URI= if none)

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this config in errors."""
        for name in ("subject", "cert", "chain", "dns", "uri"):
            boolean(getattr(self, name), f"{path}.{name}")


# Envoy's ForwardClientCertDetails (x-forwarded-client-cert), SANITIZE the default.
FORWARD_CLIENT_CERT_DETAILS = ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET",
                               "ALWAYS_FORWARD_ONLY")


# --- HTTP/2 ---------------------------------------------------------------------------------

# Envoy 1.40's Http2ProtocolOptions defaults and the ranges its proto allows. The windows
# are what the real Envoy 1.40 announces, downstream and upstream alike (SETTINGS_INITIAL_
# WINDOW_SIZE 16 MiB; a connection WINDOW_UPDATE to 24 MiB), not the 1 MiB of its source's
# http_option_limits.h: tests/config/test_envoy_http_config.py reads them off the wire.
H2_DEFAULT_HPACK_TABLE_SIZE = 4096
H2_DEFAULT_MAX_CONCURRENT_STREAMS = 1024
H2_DEFAULT_STREAM_WINDOW_SIZE = 16 << 20
H2_DEFAULT_CONNECTION_WINDOW_SIZE = 24 << 20
H2_MIN_WINDOW_SIZE = 65535                             # RFC 9113's initial window: only larger ones
H2_MAX_31 = (1 << 31) - 1                              # the largest window; the most streams
H2_MAX_32 = (1 << 32) - 1
H2_MIN_KEEPALIVE = 0.001                               # Envoy's gte 1ms on each keepalive duration
H2_DEFAULT_KEEPALIVE_JITTER = 15.0                     # percent of the interval


def _ms(value: Optional[float]) -> int:
    """Seconds -> whole milliseconds for the core (None: 0, which the core reads as unset);
    a duration that is set never becomes 0."""
    if value is None:
        return 0
    return max(1, int(round(value * 1000)))


@dataclass
class KeepaliveSettings:
    """config.core.v3.KeepaliveSettings: HTTP/2 PINGs that check a connection is alive.
    ``interval``: a PING every interval (plus up to ``interval_jitter`` percent of it, at
    random); None: no periodic PINGs. ``timeout``: a PING unanswered this long closes the
    connection (required, as in Envoy). ``connection_idle_interval``: a connection idle this
    long is PINGed before it carries a new stream; None: never. Durations in seconds, each
    at least 1 ms (Envoy's range)."""

    timeout: float
    interval: Optional[float] = None
    interval_jitter: float = H2_DEFAULT_KEEPALIVE_JITTER
    connection_idle_interval: Optional[float] = None

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names these settings in errors."""
        for name, optional in (("timeout", False), ("interval", True), ("connection_idle_interval", True)):
            value = getattr(self, name)
            seconds(value, f"{path}.{name}", optional=optional)
            if value is not None and value < H2_MIN_KEEPALIVE:
                fail(f"{path}.{name}", f"must be at least 1ms, got {value!r}s")
        jitter = self.interval_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 100:
            fail(path + ".interval_jitter", f"expected a percentage 0..100, got {jitter!r}")


@dataclass
class Http2ProtocolOptions:
    """config.core.v3.Http2ProtocolOptions: the HTTP/2 codec's settings, for a connection
    manager's downstream connections (HttpConnectionManager.http2_protocol_options) or a
    cluster's upstream ones (Cluster.http2_protocol_options). Field names and defaults are
    Envoy 1.40's. ``override_stream_error_on_invalid_http_message`` (None: unset) wins over
    the deprecated ``stream_error_on_invalid_http_messaging``; True resets only the
    offending stream of an invalid message, False (the default) ends the connection."""

    hpack_table_size: int = H2_DEFAULT_HPACK_TABLE_SIZE
    max_concurrent_streams: int = H2_DEFAULT_MAX_CONCURRENT_STREAMS
    initial_stream_window_size: int = H2_DEFAULT_STREAM_WINDOW_SIZE
    initial_connection_window_size: int = H2_DEFAULT_CONNECTION_WINDOW_SIZE
    allow_connect: bool = False                             # extended CONNECT (RFC 8441)
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10
    override_stream_error_on_invalid_http_message: Optional[bool] = None
    stream_error_on_invalid_http_messaging: bool = False    # deprecated in Envoy's API
    connection_keepalive: Optional[KeepaliveSettings] = None

    @property
    def stream_error_on_invalid_http_message(self) -> bool:
        """What an invalid message resets: True the stream, False the connection."""
        if self.override_stream_error_on_invalid_http_message is not None:
            return self.override_stream_error_on_invalid_http_message
        return self.stream_error_on_invalid_http_messaging

    def validate(self, path: str) -> None:
        """Check types and Envoy's ranges; ``path`` names these options in errors."""
        for name, low, high in (
                ("hpack_table_size", 0, H2_MAX_32),
                ("max_concurrent_streams", 1, H2_MAX_31),
                ("initial_stream_window_size", H2_MIN_WINDOW_SIZE, H2_MAX_31),
                ("initial_connection_window_size", H2_MIN_WINDOW_SIZE, H2_MAX_31),
                ("max_outbound_frames", 1, H2_MAX_32),
                ("max_outbound_control_frames", 1, H2_MAX_32),
                ("max_consecutive_inbound_frames_with_empty_payload", 0, H2_MAX_32),
                ("max_inbound_priority_frames_per_stream", 0, H2_MAX_32),
                ("max_inbound_window_update_frames_per_data_frame_sent", 1, H2_MAX_32)):
            integer(getattr(self, name), f"{path}.{name}", low, high)
        boolean(self.allow_connect, path + ".allow_connect")
        if self.allow_connect:
            fail(path + ".allow_connect", "true is not supported (extended CONNECT, RFC 8441, is not built); "
                                          "remove it")
        boolean(self.stream_error_on_invalid_http_messaging, path + ".stream_error_on_invalid_http_messaging")
        if self.override_stream_error_on_invalid_http_message is not None:
            boolean(self.override_stream_error_on_invalid_http_message,
                    path + ".override_stream_error_on_invalid_http_message")
        if self.connection_keepalive is not None:
            kp = path + ".connection_keepalive"
            typed(self.connection_keepalive, KeepaliveSettings, kp).validate(kp)

    def to_spec(self) -> dict:
        """The dict core/http/codec_h2_decls.pxi's h2_options_compile reads: integers,
        durations in milliseconds (0: unset)."""
        ka = self.connection_keepalive
        return {
            "hpack_table_size": self.hpack_table_size,
            "max_concurrent_streams": self.max_concurrent_streams,
            "initial_stream_window_size": self.initial_stream_window_size,
            "initial_connection_window_size": self.initial_connection_window_size,
            "max_outbound_frames": self.max_outbound_frames,
            "max_outbound_control_frames": self.max_outbound_control_frames,
            "max_consecutive_inbound_frames_with_empty_payload":
                self.max_consecutive_inbound_frames_with_empty_payload,
            "max_inbound_priority_frames_per_stream": self.max_inbound_priority_frames_per_stream,
            "max_inbound_window_update_frames_per_data_frame_sent":
                self.max_inbound_window_update_frames_per_data_frame_sent,
            "override_stream_error_on_invalid_http_message": int(self.stream_error_on_invalid_http_message),
            "allow_connect": int(self.allow_connect),
            "keepalive_interval_ms": _ms(ka.interval) if ka is not None else 0,
            "keepalive_timeout_ms": _ms(ka.timeout) if ka is not None else 0,
            # (the core keeps whole percents: Envoy's Percent is a double)
            "keepalive_interval_jitter_pct": int(round(ka.interval_jitter)) if ka is not None else 0,
            "keepalive_idle_interval_ms": _ms(ka.connection_idle_interval) if ka is not None else 0,
        }


# A connection manager's codec_type (Envoy's, but HTTP3): AUTO picks HTTP/2 for a client
# that starts with the HTTP/2 preface (or ALPN h2 over TLS), else HTTP/1.1.
CODEC_TYPES = ("AUTO", "HTTP1", "HTTP2")


# The names the model takes (Envoy's enums are in fastproxy.validation; the loader maps
# IMPLEMENTATION_SPECIFIC_DEFAULT to KEEP_UNCHANGED, as Envoy does).
SERVER_HEADER_TRANSFORMATIONS = tuple(_SERVER_HEADER_TRANSFORMATIONS)
ESCAPED_SLASHES_ACTIONS = tuple(a for a in PATH_WITH_ESCAPED_SLASHES_ACTIONS if a != "IMPLEMENTATION_SPECIFIC_DEFAULT")
STRIP_HOST_PORT_MODES = ("NONE", "MATCHING", "ANY")
UNDERSCORES_ACTIONS = tuple(HEADERS_WITH_UNDERSCORES_ACTIONS)


@dataclass
class HttpConnectionManager:
    """network.http_connection_manager.v3.HttpConnectionManager."""

    stat_prefix: str
    route_config: Optional[RouteConfiguration] = None       # exactly one of route_config and rds
    # The codec (CODEC_TYPES): AUTO serves HTTP/1.1 and HTTP/2 (by the client's preface, or
    # ALPN over TLS), HTTP1 or HTTP2 only that one; and HTTP/2's settings.
    codec_type: str = "AUTO"
    http2_protocol_options: Http2ProtocolOptions = field(default_factory=Http2ProtocolOptions)
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
    # x-forwarded-client-cert (Envoy's forward_client_cert_details, FORWARD_CLIENT_CERT_DETAILS;
    # core/http/hcm_headers.pxi says what each does) and what this hop's element carries.
    forward_client_cert_details: str = "SANITIZE"
    set_current_client_cert_details: Optional[SetCurrentClientCertDetails] = None
    rds: Optional[Rds] = None                               # the route configuration comes from RDS

    def validate(self, path: str, cluster_names: Collection[str]) -> None:
        """Check the connection manager, typically one built with the Python API (what the
        Envoy loader produces always passes): types and ranges, the exactly-one-of rules (a
        match's path specifier, a route's action, a RouteAction's target), regexes that POSIX
        can run (see fastproxy.config.regex), header names that may be modified, domains
        (wildcards, duplicates) and that every cluster a route names is in ``cluster_names``.
        Errors are ConfigError naming the field, e.g.
        ``<path>.route_config.virtual_hosts[0].routes[1].match.prefix``."""
        string(self.stat_prefix, path + ".stat_prefix", non_empty=True)
        if self.codec_type == "HTTP3":
            fail(path + ".codec_type", "HTTP/3 is not supported (fastproxy speaks HTTP/1.1 and HTTP/2)")
        one_of(self.codec_type, path + ".codec_type", CODEC_TYPES)
        h2p = path + ".http2_protocol_options"
        typed(self.http2_protocol_options, Http2ProtocolOptions, h2p).validate(h2p)
        string(self.server_name, path + ".server_name", non_empty=True)
        one_of(self.server_header_transformation, path + ".server_header_transformation", SERVER_HEADER_TRANSFORMATIONS)
        boolean(self.use_remote_address, path + ".use_remote_address")
        boolean(self.accept_http_10, path + ".accept_http_10")
        string(self.default_host_for_http_10, path + ".default_host_for_http_10")
        if self.default_host_for_http_10:
            check_host_value(self.default_host_for_http_10, path + ".default_host_for_http_10")
        integer(self.xff_num_trusted_hops, path + ".xff_num_trusted_hops", 0)
        if self.internal_address_config is not None:
            iap = path + ".internal_address_config"
            typed(self.internal_address_config, InternalAddressConfig, iap).validate(iap)
        boolean(self.generate_request_id, path + ".generate_request_id")
        boolean(self.suppress_envoy_headers, path + ".suppress_envoy_headers")
        string(self.via, path + ".via")
        check_header_value(self.via, path + ".via")
        for name in ("skip_xff_append", "preserve_external_request_id", "always_set_request_id_in_response",
                     "normalize_path", "merge_slashes"):
            boolean(getattr(self, name), f"{path}.{name}")
        for name, allowed in (("path_with_escaped_slashes_action", ESCAPED_SLASHES_ACTIONS),
                              ("strip_host_port", STRIP_HOST_PORT_MODES),
                              ("headers_with_underscores_action", UNDERSCORES_ACTIONS)):
            one_of(getattr(self, name), f"{path}.{name}", allowed)
        one_of(self.forward_client_cert_details, path + ".forward_client_cert_details",
               FORWARD_CLIENT_CERT_DETAILS)
        if self.set_current_client_cert_details is not None:
            sp = path + ".set_current_client_cert_details"
            typed(self.set_current_client_cert_details, SetCurrentClientCertDetails, sp).validate(sp)
        for name in ("request_headers_timeout", "stream_idle_timeout", "request_timeout", "idle_timeout"):
            seconds(getattr(self, name), f"{path}.{name}")
        seconds(self.drain_timeout, path + ".drain_timeout", optional=False)
        integer(self.max_requests_per_connection, path + ".max_requests_per_connection", 1, optional=True)
        integer(self.max_headers_count, path + ".max_headers_count", 1)
        integer(self.max_request_headers_kb, path + ".max_request_headers_kb", 1, 8192)
        integer(self.max_request_bytes, path + ".max_request_bytes", 1, optional=True)
        for log, lp in each(self.access_log, path + ".access_log", AccessLog):
            log.validate(lp)
        for up, upp in each(self.upgrade_configs, path + ".upgrade_configs", UpgradeConfig):
            up.validate(upp)
        if self.rds is not None:
            if self.route_config is not None:
                fail(path + ".rds", "only one of route_config and rds may be set")
            typed(self.rds, Rds, path + ".rds").validate(path + ".rds")
        else:
            rcp = path + ".route_config"
            typed(self.route_config, RouteConfiguration, rcp).validate(rcp, cluster_names)
        _validate_http_filters(self, path)


def validate_http(hcm: "HttpConnectionManager", path: str, cluster_names: Collection[str]) -> None:
    """Check ``hcm``, which must be an HttpConnectionManager (see its validate())."""
    typed(hcm, HttpConnectionManager, path).validate(path, cluster_names)


def _validate_http_filters(hcm: "HttpConnectionManager", path: str) -> None:
    """The filter list, and the per-filter configs naming its filters (the route
    configuration is checked already)."""
    from ..http_filter import HTTP_FILTER_SPECS, HttpFilter, PythonHttpFilter
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
    if rc is None:      # rds: a route configuration is checked when it comes (Proxy.update)
        return

    def check_tpfc(obj, p):
        tp = obj.typed_per_filter_config or {}
        if not isinstance(tp, dict):
            fail(p + ".typed_per_filter_config", "must be a mapping of HTTP filter name to config")
        for name in tp:
            if name not in names:
                fail(f"{p}.typed_per_filter_config.{name}",
                     f"no HTTP filter named {name!r} in http_filters")

    check_tpfc(rc, path + ".route_config")
    for vi, vh in enumerate(rc.virtual_hosts):
        vp = f"{path}.route_config.virtual_hosts[{vi}]"
        check_tpfc(vh, vp)
        for ri, r in enumerate(vh.routes):
            check_tpfc(r, f"{vp}.routes[{ri}]")



def _validate_retry(owner: Any, path: str) -> None:
    """A route action's or virtual host's retry_policy and hedge_policy (fastproxy.http.retry)."""
    from .retry import HedgePolicy, RetryPolicy
    if owner.retry_policy is not None:
        typed(owner.retry_policy, RetryPolicy, path + ".retry_policy").validate(path + ".retry_policy")
    if owner.hedge_policy is not None:
        typed(owner.hedge_policy, HedgePolicy, path + ".hedge_policy").validate(path + ".hedge_policy")
