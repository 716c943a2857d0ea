"""The configuration model: plain, validated Python objects that describe what the proxy
should do. Both the Python API and the Envoy YAML loader produce these; the core compiles
them into an immutable snapshot (see docs/architecture.md).
"""
from __future__ import annotations

import copy
import ipaddress
import re
import socket
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Sequence, Union

from . import validation as rules
from .errors import ConfigError
from .http.model import AccessLog, Http2ProtocolOptions, HttpConnectionManager, validate_http
from .model_tls import UpstreamTlsContext, check_static_secrets

LB_POLICIES = ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH", "MAGLEV")
# Endpoint.health_status: Envoy's HealthStatus names.
HEALTH_STATUSES = ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED")
MAX_PRIORITY = 127      # an endpoint's highest priority (the core's LB_MAX_PRIORITY)
# What a cluster speaks to its upstreams (Envoy's HttpProtocolOptions): explicit HTTP/1.1,
# explicit HTTP/2, or auto_config (h2 or http/1.1 by ALPN, so over TLS only).
UPSTREAM_PROTOCOLS = ("http1", "http2", "auto")
CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "EDS")


_LEADING_ZERO = re.compile(r"(?:^|\.)0\d")


def is_ip_literal(address: str) -> bool:
    """An IPv4 or IPv6 address literal, as ipaddress.ip_address accepts it. inet_pton does
    the work (validating 10,000 endpoints of an xDS push spent most of its time in
    ipaddress); its answers are ipaddress's but for the forms ipaddress refuses and
    inet_pton takes (IPv4 with fewer than four parts), which are checked here."""
    if ":" in address:
        family = socket.AF_INET6
        if "%" in address:              # a scope id: ipaddress's business
            try:
                ipaddress.ip_address(address)
                return True
            except ValueError:
                return False
    else:
        family = socket.AF_INET
        if address.count(".") != 3:
            return False
    try:
        socket.inet_pton(family, address)
    except (OSError, ValueError):
        return False
    if family == socket.AF_INET and _LEADING_ZERO.search(address):
        return False                    # leading zeros: ipaddress refuses them (ambiguous octal)
    return True


MAX_ENDPOINT_HOSTNAME = 255     # bytes the core keeps per host (core/upstream/cluster.pxi Host.hostname)


def check_endpoint_hostname(value, path: str) -> None:
    """An endpoint's hostname: it becomes a Host value (auto_host_rewrite), so visible ASCII
    only, and at most what the core keeps per host."""
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_ENDPOINT_HOSTNAME or any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise ConfigError(path, f"must be at most {MAX_ENDPOINT_HOSTNAME} visible ASCII characters "
                                f"(it becomes a Host value), got {value!r}")


@dataclass
class Endpoint:
    """One upstream host: an IP address (STATIC) or a hostname (STRICT_DNS) and a port."""

    address: str
    port: int
    weight: int = 1
    # Envoy's endpoint.hostname: what auto_host_rewrite sends as Host for this endpoint (a
    # STRICT_DNS endpoint without one sends its DNS name; a STATIC one keeps the Host).
    hostname: str = ""
    # The load balancer (fastproxy.upstream.lb): the endpoint's priority (0 the highest;
    # lower ones take load as the higher ones' health drops), what EDS says of its health
    # (health_status: HEALTH_STATUSES; UNHEALTHY, DRAINING and TIMEOUT hosts are kept but
    # not picked, DEGRADED ones only when healthy ones lack), and its locality ((region,
    # zone, sub_zone)) with that locality's load_balancing_weight (0: none given).
    priority: int = 0
    health_status: str = "UNKNOWN"
    locality: tuple = ()
    locality_weight: int = 0

    def validate(self, path: str, cluster_type: str) -> None:
        """Check the fields for a cluster of ``cluster_type``; ``path`` names it in errors."""
        # Errors name the Python argument (Endpoint(port=...)): this is the Python API's check.
        if not isinstance(self.address, str) or not self.address:
            raise ConfigError(path + ".address", f"Endpoint(address=...) must be a non-empty string, "
                                                 f"got {self.address!r}")
        check_endpoint_hostname(self.hostname, path + ".hostname")
        if cluster_type in ("STATIC", "EDS") and not is_ip_literal(self.address):
            raise ConfigError(path + ".address",
                              f"Endpoint(address={self.address!r}): a STATIC cluster's endpoints must be IP "
                              "addresses (Cluster(type='STRICT_DNS') resolves host names)")
        try:
            rules.port(path + ".port", self.port, allow_zero=False)
        except ConfigError as e:
            raise ConfigError(e.path, f"Endpoint(port={self.port!r}): {e.message}") from None
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or not 1 <= self.weight <= 128:
            raise ConfigError(path + ".weight", f"Endpoint(weight={self.weight!r}): must be an integer 1..128")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not 0 <= self.priority <= MAX_PRIORITY:
            raise ConfigError(path + ".priority", f"Endpoint(priority={self.priority!r}): must be an integer "
                                                  f"0..{MAX_PRIORITY}")
        if self.health_status not in HEALTH_STATUSES:
            raise ConfigError(path + ".health_status", f"Endpoint(health_status={self.health_status!r}): must be "
                                                       f"one of {', '.join(HEALTH_STATUSES)}")
        if isinstance(self.locality_weight, bool) or not isinstance(self.locality_weight, int) \
                or not 0 <= self.locality_weight <= 0xFFFFFFFF:
            raise ConfigError(path + ".locality_weight", f"Endpoint(locality_weight={self.locality_weight!r}): "
                                                         "must be an integer 0..4294967295")


@dataclass
class Cluster:
    """A named group of upstream endpoints and how to pick one."""

    name: str
    endpoints: Sequence[Endpoint] = ()
    type: str = "STATIC"
    lb_policy: str = "ROUND_ROBIN"
    connect_timeout: float = 5.0
    dns_refresh_rate: float = 5.0
    dns_lookup_family: str = "V4_ONLY"  # V4_ONLY, V6_ONLY, AUTO, V4_PREFERRED, ALL
    # The HTTP connection pool (Envoy's HttpProtocolOptions.common_http_protocol_options):
    # a pooled connection idle this long is closed (None: never); a connection is closed
    # after carrying max_requests_per_connection requests (0: no limit) or once it is
    # max_connection_duration old (None: no limit; a busy one after its response).
    idle_timeout: Optional[float] = 3600.0
    max_requests_per_connection: int = 0
    max_connection_duration: Optional[float] = None
    # Circuit breakers (Envoy's circuit_breakers.thresholds, priority DEFAULT): limits over
    # all workers together on open upstream connections, requests waiting for a connection,
    # and requests on connections; max_retries: retries outstanding (retry_budget, when
    # set, replaces it).
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    # Emit circuit_breakers.default.remaining_* gauges (Envoy's track_remaining).
    track_remaining: bool = False
    # The upstreams speak HTTP/2 (explicit_http_config.http2_protocol_options): shorthand
    # for upstream_protocol "http2", kept equal to it (see __post_init__).
    http2: bool = False
    # type EDS: the endpoints come from a discovery service (Envoy's eds_cluster_config):
    # the ClusterLoadAssignment named eds_service_name (""; the cluster's name) from
    # eds_config. Until it arrives the cluster has no endpoints (fastproxy.xds fills them).
    eds_service_name: str = ""
    eds_config: Optional["ConfigSource"] = None
    # TLS to the upstreams (Envoy's transport_socket envoy.transport_sockets.tls with an
    # UpstreamTlsContext; fastproxy.model_tls). None: plain TCP.
    tls: Optional[Any] = None
    # The protocol to the upstreams: UPSTREAM_PROTOCOLS. "auto" picks h2 or http/1.1 by ALPN,
    # so it needs tls (Envoy's auto_config, refused without TLS by Envoy too). Given
    # http2=True or http2_protocol_options, the default "http1" becomes "http2".
    upstream_protocol: str = "http1"
    # HTTP/2's settings for "http2" and "auto" (given None: Envoy's defaults); None for "http1".
    http2_protocol_options: Optional[Http2ProtocolOptions] = None
    # The cluster manager (each model and its checks in its own module of fastproxy.upstream):
    # the load balancers' options (lb.py: ring_hash_lb_config, maglev_lb_config,
    # least_request_lb_config, common_lb_config), active health checks (health_check.py),
    # outlier detection (outlier.py) and the retry budget of the circuit breakers.
    ring_hash_lb_config: Optional[Any] = None
    maglev_lb_config: Optional[Any] = None
    least_request_lb_config: Optional[Any] = None
    common_lb_config: Optional[Any] = None
    # The load assignment's policy.overprovisioning_factor (percent): a priority whose
    # healthy share times this is under 100% spills the rest of its load to the next one.
    overprovisioning_factor: int = 140
    health_checks: Sequence[Any] = ()
    outlier_detection: Optional[Any] = None
    retry_budget: Optional[Any] = None

    def __post_init__(self):
        if self.upstream_protocol == "http1" and (self.http2 is True or self.http2_protocol_options is not None):
            self.upstream_protocol = "http2"
        if self.upstream_protocol == "http2":
            self.http2 = True
        if self.upstream_protocol in ("http2", "auto") and self.http2_protocol_options is None:
            self.http2_protocol_options = Http2ProtocolOptions()

    @property
    def h2_options(self) -> Optional[Http2ProtocolOptions]:
        """The HTTP/2 settings the core gets: None for an HTTP/1.1 cluster."""
        if self.upstream_protocol == "http1":
            return None
        return self.http2_protocol_options or Http2ProtocolOptions()    # (None if set so after __init__)

    @property
    def eds_name(self) -> str:
        """The name of the ClusterLoadAssignment an EDS cluster takes its endpoints from."""
        return self.eds_service_name or self.name

    def with_endpoints(self, endpoints: list, overprovisioning_factor: Optional[int] = None) -> "Cluster":
        """This cluster with ``endpoints`` (an EDS assignment's, and its policy's
        overprovisioning_factor when given): a shallow copy, without the __init__ and checks
        dataclasses.replace runs (most of an EDS push of 1,000)."""
        out = copy.copy(self)
        out.endpoints = endpoints
        if overprovisioning_factor is not None:
            out.overprovisioning_factor = overprovisioning_factor
        return out

    def validate(self, path: str = "cluster") -> None:
        """Check the fields and the endpoints; ``path`` names this cluster in errors."""
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(path + ".name", "cluster name must be a non-empty string")
        if self.type not in CLUSTER_TYPES:
            raise ConfigError(path + ".type", f"unsupported cluster type {self.type!r} (supported: {', '.join(CLUSTER_TYPES)})")
        if self.lb_policy not in LB_POLICIES:
            raise ConfigError(path + ".lb_policy", f"unsupported lb_policy {self.lb_policy!r} (supported: {', '.join(LB_POLICIES)})")
        from .upstream.lb import validate_cluster_lb
        validate_cluster_lb(self, path)
        if (self.type == "EDS") != isinstance(self.eds_config, ConfigSource):
            raise ConfigError(path + ".eds_config", "a cluster of type EDS needs eds_config (a ConfigSource), "
                                                    "and only such a cluster takes one")
        rules.timeout(path + ".connect_timeout", self.connect_timeout, allow_none=False)
        rules.timeout(path + ".dns_refresh_rate", self.dns_refresh_rate, allow_none=False)
        if self.dns_lookup_family not in rules.DNS_LOOKUP_FAMILIES:
            raise ConfigError(path + ".dns_lookup_family", f"unsupported dns_lookup_family {self.dns_lookup_family!r}")
        rules.timeout(path + ".idle_timeout", self.idle_timeout)
        rules.timeout(path + ".max_connection_duration", self.max_connection_duration)
        for name in ("max_requests_per_connection", "max_connections", "max_pending_requests",
                     "max_requests", "max_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
                raise ConfigError(f"{path}.{name}", f"must be an integer 0..4294967295, got {value!r}")
        if self.retry_budget is not None:
            from .http.retry import RetryBudget
            if not isinstance(self.retry_budget, RetryBudget):
                raise ConfigError(path + ".retry_budget", "must be a fastproxy.http.retry.RetryBudget")
            self.retry_budget.validate(path + ".retry_budget")
        if not isinstance(self.track_remaining, bool):
            raise ConfigError(path + ".track_remaining", f"must be a bool, got {self.track_remaining!r}")
        if self.upstream_protocol not in UPSTREAM_PROTOCOLS:
            raise ConfigError(path + ".upstream_protocol", f"must be one of {', '.join(UPSTREAM_PROTOCOLS)}, "
                                                           f"got {self.upstream_protocol!r}")
        if self.upstream_protocol == "auto" and self.tls is None:
            raise ConfigError(path + ".upstream_protocol", "'auto' chooses the protocol by ALPN, so it needs tls "
                                                           "(an UpstreamTlsContext); use 'http1' or 'http2'")
        if not isinstance(self.http2, bool) or self.http2 != (self.upstream_protocol == "http2"):
            raise ConfigError(path + ".http2", f"http2={self.http2!r} disagrees with upstream_protocol="
                                               f"{self.upstream_protocol!r} (http2=True is upstream_protocol 'http2')")
        if self.http2_protocol_options is not None:
            hp = path + ".http2_protocol_options"
            if self.upstream_protocol == "http1":
                raise ConfigError(hp, "HTTP/2 options on an HTTP/1.1 cluster: set upstream_protocol "
                                      "'http2' or 'auto'")
            rules.typed(self.http2_protocol_options, Http2ProtocolOptions, hp).validate(hp)
        if self.tls is not None:
            if not isinstance(self.tls, UpstreamTlsContext):
                raise ConfigError(path + ".tls", f"expected fastproxy.model_tls.UpstreamTlsContext or None, "
                                                 f"got {type(self.tls).__name__}")
        if self.outlier_detection is not None:
            from .upstream.outlier import OutlierDetection
            rules.typed(self.outlier_detection, OutlierDetection, path + ".outlier_detection") \
                .validate(path + ".outlier_detection")
        for i, ep in enumerate(self.endpoints):
            if not isinstance(ep, Endpoint):
                raise ConfigError(f"{path}.endpoints[{i}]", f"expected Endpoint, got {type(ep).__name__}")
            ep.validate(f"{path}.endpoints[{i}]", self.type)
        from .upstream.health_check import validate_health_checks
        validate_health_checks(self.health_checks, path + ".health_checks", self.upstream_protocol)


# A network filter factory: called once per connection, returns a NetworkFilter instance.
FilterFactory = Callable[[], Any]


@dataclass
class TcpProxy:
    """A listener's handler that proxies each connection's bytes to one endpoint of
    ``cluster`` (Envoy's ``envoy.filters.network.tcp_proxy``)."""

    cluster: str

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this handler in errors."""
        if not isinstance(self.cluster, str) or not self.cluster:
            raise ConfigError(path + ".cluster", "a cluster name is required")


# What a listener does with its connections: proxy their bytes, or speak HTTP.
Handler = Union[TcpProxy, HttpConnectionManager]


def _deprecated(what: str, instead: str) -> None:
    # stacklevel 3: the caller of the method that calls this.
    warnings.warn(f"{what} is deprecated; use {instead}", DeprecationWarning, stacklevel=3)


#: FilterChainMatch.source_type values (Envoy's ConnectionSourceType).
SOURCE_TYPES = ("ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL")
#: What a listener filter detects as FilterChainMatch.transport_protocol (tls_inspector:
#: "tls"; a connection it did not find TLS in, or with no such filter: "raw_buffer").
TRANSPORT_PROTOCOLS = ("", "raw_buffer", "tls")


def _cidr(value, path: str) -> str:
    """A CIDR range as Envoy's CidrRange takes it ("10.0.0.0/8", or an address alone: all
    its bits); returned as ip_network's text with the host bits cleared."""
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a CIDR range string like '10.0.0.0/8', got {value!r}")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ConfigError(path, f"malformed CIDR range {value!r}") from None


def _string_tuple(value, path: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(path, f"expected a list of strings, got {value!r}")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{path}[{i}]", f"expected a non-empty string, got {v!r}")
    return tuple(value)


@dataclass(frozen=True)
class FilterChainMatch:
    """Which connections a filter chain takes (Envoy's FilterChainMatch). Empty criteria
    match anything; among the chains a connection meets, the most specific wins, level by
    level in Envoy's order: destination_port, prefix_ranges (destination IP, the longest
    prefix), server_names (exact, then the longest "*.suffix" wildcard), transport_protocol
    ("raw_buffer" or "tls", what the tls_inspector found), application_protocols (ALPN),
    source_type ("ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL"), source_prefix_ranges,
    source_ports. server_names, transport_protocol "tls" and application_protocols need
    the listener's tls_inspector."""

    destination_port: Optional[int] = None
    prefix_ranges: Sequence[str] = ()
    server_names: Sequence[str] = ()
    transport_protocol: str = ""
    application_protocols: Sequence[str] = ()
    source_type: str = "ANY"
    source_prefix_ranges: Sequence[str] = ()
    source_ports: Sequence[int] = ()

    def __post_init__(self):
        # Lists are kept as tuples: the match is hashable and compares by value.
        for name in ("prefix_ranges", "server_names", "application_protocols",
                     "source_prefix_ranges", "source_ports"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def validate(self, path: str) -> None:
        """Check the fields; ``path`` names this match in errors."""
        if self.destination_port is not None:
            rules.port(path + ".destination_port", self.destination_port, allow_zero=False)
        for name in ("prefix_ranges", "source_prefix_ranges"):
            for i, r in enumerate(_string_tuple(getattr(self, name), f"{path}.{name}")):
                _cidr(r, f"{path}.{name}[{i}]")
        for i, n in enumerate(_string_tuple(self.server_names, path + ".server_names")):
            # Envoy: "partial wildcards are not supported in \"server_names\""
            if "*" in n and not (n.startswith("*.") and "*" not in n[1:]):
                raise ConfigError(f"{path}.server_names[{i}]",
                                  f"partial wildcards are not supported in server_names: {n!r} "
                                  "(a wildcard is '*.' followed by a domain)")
        if self.transport_protocol not in TRANSPORT_PROTOCOLS:
            raise ConfigError(path + ".transport_protocol",
                              f"must be 'raw_buffer' or 'tls' (what the tls_inspector detects), "
                              f"got {self.transport_protocol!r}")
        for i, p in enumerate(_string_tuple(self.application_protocols, path + ".application_protocols")):
            if len(p.encode()) > 255:
                raise ConfigError(f"{path}.application_protocols[{i}]", "an ALPN name is at most 255 bytes")
        if self.source_type not in SOURCE_TYPES:
            raise ConfigError(path + ".source_type", f"must be one of {', '.join(SOURCE_TYPES)}, "
                                                     f"got {self.source_type!r}")
        if isinstance(self.source_ports, (str, bytes)) or not isinstance(self.source_ports, (list, tuple)):
            raise ConfigError(path + ".source_ports", f"expected a list of ports, got {self.source_ports!r}")
        for i, p in enumerate(self.source_ports):
            rules.port(f"{path}.source_ports[{i}]", p, allow_zero=False)

    def leaves(self) -> list:
        """Every combination of one value per criterion (None: any) this match claims:
        two chains of a listener must not share one (Envoy's "multiple filter chains with
        the same matching rules are defined")."""
        import itertools
        # No ranges is Envoy's catch-all: 0.0.0.0/0 and ::/0, the same as given explicitly.
        anywhere = ("0.0.0.0/0", "::/0")
        return list(itertools.product(
            (self.destination_port or 0,),
            tuple(_cidr(r, "") for r in self.prefix_ranges) or anywhere,
            tuple(n.lower() for n in self.server_names) or (None,),
            (self.transport_protocol,),
            tuple(self.application_protocols) or (None,),
            (self.source_type,),
            tuple(_cidr(r, "") for r in self.source_prefix_ranges) or anywhere,
            tuple(self.source_ports) or (None,)))

    def needs_inspector(self) -> bool:
        """Whether only a tls_inspector gives what this match asks of a connection."""
        return bool(self.server_names or self.application_protocols or self.transport_protocol == "tls")


@dataclass(frozen=True)
class FilterChain:
    """One of a listener's filter chains (Envoy's FilterChain): the handler its
    connections get (a TcpProxy or an HttpConnectionManager), the network filter
    factories before it (TCP proxy only), the connections it takes (``match``), and a
    DownstreamTlsContext (``tls``: fastproxy.model_tls) when its connections are TLS.
    ``stat_prefix``, ``idle_timeout`` and ``max_connect_attempts`` are its tcp_proxy's
    (for a connection manager: its stat prefix and idle timeout)."""

    handler: Handler
    filters: Sequence[FilterFactory] = field(default=(), kw_only=True)
    match: FilterChainMatch = field(default_factory=FilterChainMatch, kw_only=True)
    tls: Any = field(default=None, kw_only=True)
    name: str = field(default="", kw_only=True)
    transport_socket_connect_timeout: Optional[float] = field(default=None, kw_only=True)
    stat_prefix: str = field(default="", kw_only=True)
    idle_timeout: Optional[float] = field(default=3600.0, kw_only=True)
    max_connect_attempts: int = field(default=1, kw_only=True)

    def __post_init__(self):
        if isinstance(self.filters, list):
            object.__setattr__(self, "filters", tuple(self.filters))

    @property
    def http_connection_manager(self) -> Optional[HttpConnectionManager]:
        """The handler if this chain speaks HTTP, else None."""
        return self.handler if isinstance(self.handler, HttpConnectionManager) else None

    @property
    def effective_stat_prefix(self) -> str:
        """The stat prefix of its tcp_proxy (or connection manager)."""
        if isinstance(self.handler, HttpConnectionManager):
            return self.handler.stat_prefix
        return self.stat_prefix

    def validate(self, path: str) -> None:
        """Check the fields (not the handler's cluster references: Bootstrap.validate)."""
        if not isinstance(self.handler, (TcpProxy, HttpConnectionManager)):
            raise ConfigError(path + ".handler", f"must be a TcpProxy or an HttpConnectionManager, "
                                                 f"got {type(self.handler).__name__}")
        if isinstance(self.handler, TcpProxy):
            self.handler.validate(path + ".handler")
        elif self.filters:
            raise ConfigError(path + ".filters", "network filters before http_connection_manager are "
                                                 "not supported yet")
        if not isinstance(self.match, FilterChainMatch):
            raise ConfigError(path + ".match", f"expected FilterChainMatch, got {type(self.match).__name__}")
        self.match.validate(path + ".match")
        if self.tls is not None and type(self.tls).__name__ != "DownstreamTlsContext":
            raise ConfigError(path + ".tls", f"expected a model_tls.DownstreamTlsContext, "
                                             f"got {type(self.tls).__name__}")
        if not isinstance(self.name, str):
            raise ConfigError(path + ".name", f"must be a string, got {self.name!r}")
        rules.timeout(path + ".transport_socket_connect_timeout", self.transport_socket_connect_timeout)
        rules.timeout(path + ".idle_timeout", self.idle_timeout)
        if isinstance(self.max_connect_attempts, bool) or not isinstance(self.max_connect_attempts, int) \
                or self.max_connect_attempts < 1:
            raise ConfigError(path + ".max_connect_attempts", "must be an integer >= 1")
        for i, f in enumerate(self.filters):
            if not callable(f):
                raise ConfigError(f"{path}.filters[{i}]", f"a filter must be a NetworkFilter class or factory, got {f!r}")


#: Envoy's Listener.DrainType values.
LISTENER_DRAIN_TYPES = ("DEFAULT", "MODIFY_ONLY")


@dataclass(init=False)
class Listener:
    """A listening socket and the handler its connections get: a :class:`TcpProxy`
    (``Listener("db", TcpProxy("pg"), port=5432)``) or a
    :class:`fastproxy.http.HttpConnectionManager` (``Listener("web", hcm, port=8080)``).

    ``filters`` are network filter factories (a NetworkFilter subclass is one): each new
    connection gets a fresh instance of each, run in order on reads and in reverse on writes
    (TCP proxy listeners only). ``idle_timeout`` and ``max_connect_attempts`` are Envoy's
    tcp_proxy fields; ``buffer_limit`` bounds the bytes buffered per direction before reading
    pauses (and sizes the splice pipes). ``drain_type`` is Envoy's: "DEFAULT" or
    "MODIFY_ONLY"; both drain when an update changes or removes the listener (and on a hot
    restart); they differ only for Envoy's /healthcheck/fail, which DEFAULT listeners also
    drain on and which fastproxy does not have. ``cluster=`` and ``http=`` are the
    deprecated spellings of ``handler``. ``tls`` (a model_tls.DownstreamTlsContext) makes
    its connections TLS.

    Several filter chains instead of one handler: ``filter_chains`` (FilterChain, each
    with its FilterChainMatch) and/or ``default_filter_chain`` (for the connections no
    chain matches; without one they are closed, counted in no_filter_chain_match).
    ``tls_inspector`` (Envoy's listener filter envoy.filters.listener.tls_inspector)
    peeks at each connection's first bytes for a TLS ClientHello, its SNI and ALPN,
    waiting at most ``listener_filters_timeout`` seconds (None: no limit), after which
    the connection is closed, or with ``continue_on_listener_filters_timeout`` matched
    as not TLS.
    """

    name: str
    handler: Handler
    address: str = "127.0.0.1"
    port: int = 0
    stat_prefix: str = ""
    idle_timeout: Optional[float] = 3600.0
    max_connect_attempts: int = 1
    filters: Sequence[FilterFactory] = ()
    backlog: int = 1024
    max_connections: Optional[int] = None
    buffer_limit: int = 1 << 20
    drain_type: str = "DEFAULT"
    filter_chains: Sequence[FilterChain] = ()
    default_filter_chain: Optional[FilterChain] = None
    tls_inspector: bool = False
    listener_filters_timeout: Optional[float] = 15.0
    continue_on_listener_filters_timeout: bool = False
    tls: Any = None

    def __init__(self, name: str, handler: Optional[Handler] = None, *, address: str = "127.0.0.1",
                 port: int = 0, stat_prefix: str = "", idle_timeout: Optional[float] = 3600.0,
                 max_connect_attempts: int = 1, filters: Sequence[FilterFactory] = (), backlog: int = 1024,
                 max_connections: Optional[int] = None, buffer_limit: int = 1 << 20,
                 drain_type: str = "DEFAULT",
                 filter_chains: Sequence[FilterChain] = (), default_filter_chain: Optional[FilterChain] = None,
                 tls_inspector: bool = False, listener_filters_timeout: Optional[float] = 15.0,
                 continue_on_listener_filters_timeout: bool = False, tls: Any = None,
                 cluster: Optional[str] = None, http: Optional[HttpConnectionManager] = None) -> None:
        # Which argument named the handler: errors name it as the caller wrote it.
        self._handler_arg = "handler"
        self.filter_chains = tuple(filter_chains) if isinstance(filter_chains, list) else filter_chains
        self.default_filter_chain = default_filter_chain
        self.tls_inspector = tls_inspector
        self.listener_filters_timeout = listener_filters_timeout
        self.continue_on_listener_filters_timeout = continue_on_listener_filters_timeout
        self.tls = tls
        if filter_chains or default_filter_chain is not None:
            if handler is not None or cluster is not None or http is not None or tls is not None or filters:
                raise TypeError(f"Listener({name!r}): with filter_chains or default_filter_chain, the "
                                "handler, network filters and tls go in each FilterChain")
        elif handler is not None:
            if cluster is not None or http is not None:
                old = "cluster=" if cluster is not None else "http="
                raise TypeError(f"Listener({name!r}): give the handler once: handler= and {old} "
                                f"({old} is the deprecated spelling of handler=)")
            if not isinstance(handler, (TcpProxy, HttpConnectionManager)):
                hint = f" (TcpProxy({handler!r}) proxies to that cluster)" if isinstance(handler, str) else ""
                raise TypeError(f"Listener({name!r}): handler= must be a TcpProxy or an HttpConnectionManager, "
                                f"got {type(handler).__name__}{hint}")
        elif http is not None:
            # The old spelling allowed http= with cluster="" (the field's default).
            if cluster:
                raise TypeError(f"Listener({name!r}): cluster= and http= both given; a listener has one "
                                "handler: handler=TcpProxy(cluster) or handler=HttpConnectionManager(...)")
            _deprecated("Listener(http=...)", "Listener(name, handler=HttpConnectionManager(...))")
            handler, self._handler_arg = http, "http"
        elif cluster is not None:
            _deprecated("Listener(cluster=...)", "Listener(name, handler=TcpProxy(cluster))")
            handler, self._handler_arg = TcpProxy(cluster), "cluster"
        else:
            raise TypeError(f"Listener({name!r}) needs a handler: handler=TcpProxy(cluster) or "
                            "handler=HttpConnectionManager(...), or filter_chains")
        self.name = name
        self.handler = handler
        self.address = address
        self.port = port
        self.stat_prefix = stat_prefix
        self.idle_timeout = idle_timeout
        self.max_connect_attempts = max_connect_attempts
        self.filters = filters
        self.backlog = backlog
        self.max_connections = max_connections
        self.buffer_limit = buffer_limit
        self.drain_type = drain_type

    @property
    def cluster(self) -> str:
        """Deprecated: ``handler.cluster`` of a TCP proxy listener ("" for HTTP)."""
        _deprecated("Listener.cluster", "Listener.handler (a TcpProxy's .cluster)")
        return self.handler.cluster if isinstance(self.handler, TcpProxy) else ""

    @property
    def http(self) -> Optional[HttpConnectionManager]:
        """Deprecated: the handler of an HTTP listener (None for a TCP proxy)."""
        _deprecated("Listener.http", "Listener.handler")
        return self.handler if isinstance(self.handler, HttpConnectionManager) else None

    @property
    def tcp_proxy(self) -> Optional[TcpProxy]:
        """The handler if this listener proxies TCP, else None."""
        return self.handler if isinstance(self.handler, TcpProxy) else None

    @property
    def http_connection_manager(self) -> Optional[HttpConnectionManager]:
        """The handler if this listener speaks HTTP, else None."""
        return self.handler if isinstance(self.handler, HttpConnectionManager) else None

    @property
    def chains(self) -> tuple:
        """Its filter chains: ``filter_chains``, or the one chain its handler, filters and
        tls make (not the default_filter_chain)."""
        if self.filter_chains or self.default_filter_chain is not None:
            return tuple(self.filter_chains)
        return (FilterChain(self.handler, filters=tuple(self.filters), tls=self.tls,
                            stat_prefix=self.stat_prefix or self.name, idle_timeout=self.idle_timeout,
                            max_connect_attempts=self.max_connect_attempts),)

    @property
    def selects_chain(self) -> bool:
        """Whether a connection's chain is chosen per connection (several chains, a
        match, a default chain or a listener filter), not one handler for all."""
        return bool(self.filter_chains) or self.default_filter_chain is not None or bool(self.tls_inspector)

    def chain_path(self, path: str, j: int) -> str:
        """The error path of chain j of chains (the default chain: j == -1)."""
        if j < 0:
            return path + ".default_filter_chain"
        if self.filter_chains:
            return f"{path}.filter_chains[{j}]"
        return path

    def handler_path(self, path: str) -> str:
        """The error path of the handler, named as the caller spelled it: ``<path>.handler``,
        or ``<path>.cluster`` / ``<path>.http`` for the deprecated arguments."""
        return path if self._handler_arg == "cluster" else f"{path}.{self._handler_arg}"

    def validate(self, path: str = "listener") -> None:
        """Check the fields (not the handler's references to clusters: Bootstrap.validate
        does that); ``path`` names this listener in errors."""
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(path + ".name", "listener name must be a non-empty string")
        try:
            ipaddress.ip_address(self.address)
        except (ValueError, TypeError):
            raise ConfigError(path + ".address", f"listener address must be an IP address, got {self.address!r}") from None
        rules.port(path + ".port", self.port, allow_zero=True)
        if isinstance(self.handler, TcpProxy):
            self.handler.validate(self.handler_path(path))
        self._validate_chains(path)
        rules.timeout(path + ".idle_timeout", self.idle_timeout)
        if isinstance(self.max_connect_attempts, bool) or not isinstance(self.max_connect_attempts, int) or self.max_connect_attempts < 1:
            raise ConfigError(path + ".max_connect_attempts", "must be an integer >= 1")
        if not isinstance(self.backlog, int) or self.backlog < 1:
            raise ConfigError(path + ".backlog", "must be an integer >= 1")
        if self.max_connections is not None and (not isinstance(self.max_connections, int) or self.max_connections < 1):
            raise ConfigError(path + ".max_connections", "must be an integer >= 1 or None")
        if not isinstance(self.buffer_limit, int) or self.buffer_limit < 4096:
            raise ConfigError(path + ".buffer_limit", "must be an integer >= 4096")
        if self.drain_type not in LISTENER_DRAIN_TYPES:
            raise ConfigError(path + ".drain_type", f"must be one of {', '.join(LISTENER_DRAIN_TYPES)}, "
                                                    f"got {self.drain_type!r}")
        for i, f in enumerate(self.filters):
            if not callable(f):
                raise ConfigError(f"{path}.filters[{i}]", f"a filter must be a NetworkFilter class or factory, got {f!r}")

    @property
    def effective_stat_prefix(self) -> str:
        """The TCP proxy's stat prefix: ``stat_prefix``, or the listener's name."""
        return self.stat_prefix or self.name

    def _validate_chains(self, path: str) -> None:
        if self.tls is not None and type(self.tls).__name__ != "DownstreamTlsContext":
            raise ConfigError(path + ".tls", f"expected a model_tls.DownstreamTlsContext, "
                                             f"got {type(self.tls).__name__}")
        if not isinstance(self.tls_inspector, bool):
            raise ConfigError(path + ".tls_inspector", f"must be a bool, got {self.tls_inspector!r}")
        if not isinstance(self.continue_on_listener_filters_timeout, bool):
            raise ConfigError(path + ".continue_on_listener_filters_timeout",
                              f"must be a bool, got {self.continue_on_listener_filters_timeout!r}")
        rules.timeout(path + ".listener_filters_timeout", self.listener_filters_timeout)
        if not isinstance(self.filter_chains, (list, tuple)):
            raise ConfigError(path + ".filter_chains", f"expected a list of FilterChain, "
                                                       f"got {type(self.filter_chains).__name__}")
        claimed: dict = {}
        for j, chain in enumerate(self.filter_chains):
            cpath = f"{path}.filter_chains[{j}]"
            if not isinstance(chain, FilterChain):
                raise ConfigError(cpath, f"expected FilterChain, got {type(chain).__name__}")
            chain.validate(cpath)
            for leaf in chain.match.leaves():
                if leaf in claimed:
                    # Envoy's words (and its check: any combination two chains both claim)
                    other = self.filter_chains[claimed[leaf]]
                    if other.match == chain.match:
                        raise ConfigError(cpath + ".filter_chain_match",
                                          f"filter chain {chain.name!r} has the same matching rules defined "
                                          f"as {other.name!r} (filter_chains[{claimed[leaf]}])")
                    raise ConfigError(cpath + ".filter_chain_match",
                                      f"multiple filter chains with overlapping matching rules are defined "
                                      f"(filter_chains[{claimed[leaf]}] matches some of the same connections)")
                claimed[leaf] = j
        if self.default_filter_chain is not None:
            if not isinstance(self.default_filter_chain, FilterChain):
                raise ConfigError(path + ".default_filter_chain",
                                  f"expected FilterChain, got {type(self.default_filter_chain).__name__}")
            self.default_filter_chain.validate(path + ".default_filter_chain")
        if self.selects_chain:
            for chain, j in self.all_chains():
                hcm = chain.http_connection_manager
                if hcm is not None and hcm.rds is not None:
                    raise ConfigError(self.chain_path(path, j) + ".handler.rds",
                                      "rds in a listener with filter chains chosen per connection is not "
                                      "supported yet: give the route_config inline")

    def all_chains(self) -> list:
        """(chain, index) for each chain and the default one (index -1)."""
        out = list(zip(self.chains, range(len(self.chains))))
        if self.default_filter_chain is not None:
            out.append((self.default_filter_chain, -1))
        return out


@dataclass
class Admin:
    """The admin interface (Envoy's ``admin``): serves /stats, /ready, /server_info.
    ``access_log``: fastproxy.http.AccessLog sinks for the admin's own requests."""

    address: str = "127.0.0.1"
    port: int = 0
    access_log: list = field(default_factory=list)

    def validate(self, path: str = "admin") -> None:
        """Address, port and access-log sinks, checked before anything starts (the admin
        server opens its sinks only after the workers run)."""
        if not is_ip_literal(self.address):
            raise ConfigError(path + ".address", f"admin address must be an IP address, got {self.address!r}")
        rules.port(path + ".port", self.port, allow_zero=True)
        for entry, entry_path in rules.each(self.access_log, path + ".access_log", AccessLog):
            entry.validate(entry_path)


@dataclass
class Node:
    """The proxy's identity (Envoy's bootstrap ``node``; the command line's --service-node,
    --service-cluster and --service-zone override it). Shown on the admin's /server_info."""

    id: str = ""
    cluster: str = ""
    zone: str = ""
    # The rest of what an xDS client sends a management server about itself.
    region: str = ""
    sub_zone: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class ConfigSource:
    """Where a dynamic resource type comes from (Envoy's core.v3.ConfigSource): a file
    (``path_config_source``: ``path`` holds a DiscoveryResponse, reloaded when a file is
    moved onto it, or, with ``watched_directory``, when anything is moved into that
    directory, the Kubernetes ConfigMap ``..data`` symlink swap), or the bootstrap's ADS
    stream (``ads``: DynamicResources.ads says where the management server is)."""

    path: Optional[str] = None
    watched_directory: Optional[str] = None
    ads: bool = False
    initial_fetch_timeout: float = 15.0     # seconds; 0: do not wait (Envoy's default: 15 s)
    # api_config_source: a stream of this type's own (not aggregated) to a management server.
    api: Optional["AdsConfig"] = None


@dataclass
class AdsConfig:
    """dynamic_resources.ads_config: one gRPC stream to a management server for every type
    whose ConfigSource is ``ads`` (Envoy's aggregated discovery service); also, as a
    ConfigSource's ``api``, one type's own stream (api_config_source). ``cluster_name``
    names the static cluster whose endpoint is the server; ``delta``: DELTA_GRPC
    (incremental) instead of GRPC (state of the world)."""

    cluster_name: str
    delta: bool = False
    # envoy_grpc.max_receive_message_length: the largest response taken (a bigger one ends
    # the stream, RESOURCE_EXHAUSTED); 0, Envoy's default, is no limit (grpcio's own
    # default, 4 MiB, would refuse a push Envoy takes).
    max_receive_message_length: int = 0


@dataclass
class DynamicResources:
    """The bootstrap's dynamic_resources: a ConfigSource for listeners (LDS) and clusters
    (CDS), None: that type is static only; and the ADS stream they may share."""

    lds: Optional[ConfigSource] = None
    cds: Optional[ConfigSource] = None
    ads: Optional[AdsConfig] = None


@dataclass
class Bootstrap:
    """A whole configuration: what an Envoy bootstrap file describes."""

    listeners: list = field(default_factory=list)
    clusters: list = field(default_factory=list)
    admin: Optional[Admin] = None
    node: Node = field(default_factory=Node)
    # Downstream connections allowed over all listeners together (Envoy's runtime key
    # overload.global_downstream_max_connections); None: no limit.
    max_downstream_connections: Optional[int] = None
    # Listeners and clusters discovered at run time, beside the static ones (fastproxy.xds).
    dynamic_resources: Optional[DynamicResources] = None
    # TLS secrets (fastproxy.model_tls.Secret) that contexts name by SdsSecretConfig
    # without an sds_config (Envoy's static_resources.secrets).
    secrets: list = field(default_factory=list)
    # The repr of the last configuration the loader validated (see mark_valid, validate_once).
    _last_valid: ClassVar[str] = ""

    def validate(self, prefix: str = "", trusted: frozenset = frozenset()) -> None:
        """Check the whole configuration. Paths name the Python arguments (``clusters[0].
        endpoints[1].port``); the Envoy loader passes ``static_resources.`` as prefix.
        ``trusted``: ids of listeners and clusters that passed their own validation before
        and have not changed since, or that the Envoy loader read (it checks each field as
        it reads it, and a listener's cluster references against the clusters it knows):
        only names and addresses are checked across them (an xDS update does not check
        again every resource it leaves alone)."""
        for what, items, cls in (("listeners", self.listeners, Listener), ("clusters", self.clusters, Cluster)):
            if not isinstance(items, (list, tuple)):
                raise TypeError(f"{what} must be a list of {cls.__name__}, got {type(items).__name__}")
            for i, item in enumerate(items):
                if not isinstance(item, cls):
                    raise TypeError(f"{what}[{i}] must be a {cls.__name__}, got {type(item).__name__}")
        limit = self.max_downstream_connections
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError("max_downstream_connections", f"must be an integer >= 1 or None, got {limit!r}")
        if self.admin is not None:
            if not isinstance(self.admin, Admin):
                raise TypeError(f"admin must be an Admin, got {type(self.admin).__name__}")
            self.admin.validate("admin")          # top level in Envoy's bootstrap and in Python
        names = set()
        for i, c in enumerate(self.clusters):
            if id(c) not in trusted:
                c.validate(f"{prefix}clusters[{i}]")
            if c.name in names:
                raise ConfigError(f"{prefix}clusters[{i}].name", f"duplicate cluster name {c.name!r}")
            names.add(c.name)
        if self.secrets or any(c.tls is not None for c in self.clusters) or \
                any(getattr(l, "tls", None) is not None or getattr(l, "filter_chains", None) for l in self.listeners):
            check_static_secrets(self.secrets, self.listeners, self.clusters, prefix)
        lnames = set()
        addrs = set()
        for i, l in enumerate(self.listeners):
            if id(l) not in trusted:
                l.validate(f"{prefix}listeners[{i}]")
            if l.name in lnames:
                raise ConfigError(f"{prefix}listeners[{i}].name", f"duplicate listener name {l.name!r}")
            lnames.add(l.name)
            if l.port and (l.address, l.port) in addrs:
                raise ConfigError(f"{prefix}listeners[{i}].address", f"address {l.address}:{l.port} used by two listeners")
            addrs.add((l.address, l.port))
            if id(l) in trusted:
                # Checked when it came, its routes' clusters too. A cluster removed since
                # (CDS) is no reason to refuse the update, as in Envoy: its requests get 503
                # (flag NC), its TCP connections are closed (no_route).
                continue
            for chain, j in l.all_chains():
                handler = chain.handler
                hpath = (l.handler_path(f"{prefix}listeners[{i}]") if l.handler is not None
                         else l.chain_path(f"{prefix}listeners[{i}]", j) + ".handler")
                if not isinstance(handler, TcpProxy):      # validate_http names any other type
                    validate_http(handler, hpath, names)
                    if handler.rds is not None and not isinstance(handler.rds.config_source, ConfigSource):
                        raise ConfigError(hpath + ".rds.config_source",
                                          f"expected ConfigSource, got {type(handler.rds.config_source).__name__}")
                elif handler.cluster not in names:
                    raise ConfigError(hpath + ".cluster", f"unknown cluster {handler.cluster!r}")

    def mark_valid(self) -> None:
        """Remember this configuration, field by field, as validated (the loader calls it,
        so that Proxy does not validate it again). Not done by validate() itself: the repr
        of a 10,000-endpoint configuration costs as much as checking it."""
        Bootstrap._last_valid = repr(self)

    def validate_once(self) -> None:
        """validate(), unless the configuration that last passed it is this one, field by
        field: Proxy.from_bootstrap(load_envoy(...)) validates once, in the loader (whose
        errors name the Envoy fields), while a configuration built or changed by hand since
        is validated by Proxy."""
        if repr(self) != Bootstrap._last_valid:
            self.validate()
