"""Envoy v3 bootstrap -> fastproxy.model.Bootstrap.

fastproxy reads a strict subset of Envoy's bootstrap: static listeners that end in tcp_proxy
(optionally preceded by Python network filters) or in http_connection_manager (see
config/http.py), STATIC / STRICT_DNS clusters, an admin address, the node's identity, dynamic_resources
whose lds_config / cds_config are files (path_config_source; fastproxy.xds reads them) and
the runtime keys of config/runtime.py (connection limits). A cluster takes name, type, connect_timeout, lb_policy,
load_assignment, dns_refresh_rate, dns_lookup_family, per_connection_buffer_limit_bytes,
circuit_breakers.thresholds (priority, max_connections, max_pending_requests, max_requests,
max_retries, track_remaining), the deprecated max_requests_per_connection, and
typed_extension_protocol_options with Envoy's upstream HttpProtocolOptions
(common_http_protocol_options.idle_timeout / max_requests_per_connection /
max_connection_duration; explicit_http_config with http_protocol_options (HTTP/1.1) or
http2_protocol_options (HTTP/2, also as the deprecated Cluster.http2_protocol_options), or
auto_config (ALPN, so only with a TLS transport_socket, as in Envoy);
use_downstream_protocol_config is refused); an endpoint takes address,
load_balancing_weight and hostname (the Host auto_host_rewrite sends). Every field outside that subset is an error naming its path,
because silently ignoring a field would run a proxy that behaves differently from the config
its author wrote; a known Envoy feature is named as such (config/proto.py UNSUPPORTED_FIELDS),
and every error of a file is reported in one run. Defaults are Envoy's.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

from .. import model
from ..errors import ConfigError
from ..validation import DNS_LOOKUP_FAMILIES, MAX_PORT
from .http import _H2_FIELDS, HCM_TYPE, access_log, http2_protocol_options, http_connection_manager
from .proto import Message, checked, collecting, raise_collected, report, unsupported_field
from .http_common import _bool
from .runtime import layered_runtime
from .tls import secret, transport_socket, use_config_source_reader
from .python_filter import TYPED_STRUCT_TYPES, python_filter_factory
from .source import Source, load_source, parse_json, parse_yaml, read_file
from .cluster_lb import CLUSTER_LB_FIELDS, cluster_lb_options
from .health_check import HEALTH_CHECK_FIELDS, cluster_health_checks
from .outlier import OUTLIER_FIELDS, cluster_outlier_detection
from .retry import RETRY_BUDGET_FIELDS, retry_budget

TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
# The resource types a bootstrap holds and a discovery service sends (their type URLs).
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


# Envoy's enums (name -> number) so that every spelling Envoy accepts is understood and a
# known-but-unsupported value gets a clearer error than an unknown one.
DISCOVERY_TYPES = {"STATIC": 0, "STRICT_DNS": 1, "LOGICAL_DNS": 2, "EDS": 3, "ORIGINAL_DST": 4}
LB_POLICIES = {"ROUND_ROBIN": 0, "LEAST_REQUEST": 1, "RING_HASH": 2, "RANDOM": 3, "MAGLEV": 5,
               "CLUSTER_PROVIDED": 6, "LOAD_BALANCING_POLICY_CONFIG": 7}
SOCKET_PROTOCOLS = {"TCP": 0, "UDP": 1}
ROUTING_PRIORITIES = {"DEFAULT": 0, "HIGH": 1}

# The one typed_extension_protocol_options entry clusters accept: key and @type.
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/" + HTTP_PROTOCOL_OPTIONS

# Envoy defaults for fields fastproxy maps onto its model.
DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_DNS_LOOKUP_FAMILY = "AUTO"

# fastproxy's own limits, stricter than Envoy's (see model.Endpoint / model.Listener).
MAX_ENDPOINT_WEIGHT = 128
MIN_BUFFER_LIMIT = 4096


def load_envoy(source: Source) -> model.Bootstrap:
    """Load an Envoy v3 bootstrap into a validated :class:`fastproxy.model.Bootstrap`.

    ``source`` is a path (str or os.PathLike; ``.json`` files are parsed as JSON, others as
    YAML), YAML or JSON text, or an already parsed dict. Raises ConfigError whose ``path``
    names the offending field Envoy-style, e.g. ``static_resources.clusters[0].lb_policy``.
    """
    return bootstrap_from_data(load_source(source))


def load_envoy_yaml(path: Union[str, "os.PathLike[str]"]) -> model.Bootstrap:
    """Load a YAML bootstrap file, whatever its name ends with."""
    return bootstrap_from_data(parse_yaml(read_file(path), os.fspath(path)))


def load_envoy_json(path: Union[str, "os.PathLike[str]"]) -> model.Bootstrap:
    """Load a JSON bootstrap file, whatever its name ends with."""
    return bootstrap_from_data(parse_json(read_file(path), os.fspath(path)))


def bootstrap_from_data(data: Any) -> model.Bootstrap:
    """Every error of the configuration is found in one pass: unknown fields and each
    listener, cluster, route, ... that fails are reported (proto.report) and the rest is
    still checked; one error is raised as itself, several as a ConfigErrors."""
    with collecting() as errors:
        bootstrap = _bootstrap(data)
    raise_collected(errors)
    assert bootstrap is not None
    bootstrap.validate("static_resources.")
    bootstrap.mark_valid()
    return bootstrap


def _bootstrap(data: Any) -> Optional[model.Bootstrap]:
    if data is None:  # an empty file is an empty bootstrap, as in Envoy
        data = {}
    top = Message(data, "", ("static_resources", "dynamic_resources", "admin", "node", "layered_runtime"))
    node = checked(_node, top)
    dynamic = checked(_dynamic_resources, top)
    admin = checked(_admin, top)

    listeners, clusters, secrets = [], [], []
    static = checked(top.message, "static_resources", ("listeners", "clusters", "secrets"))
    if static is not None:
        parsed = [checked(_listener, item, path, i) for i, (item, path) in
                  enumerate(checked(lambda: list(static.repeated("listeners"))) or ())]
        items = checked(lambda: list(static.repeated("clusters"))) or ()
        clusters = [checked(_cluster, item, path) for item, path in items]
        secrets = [checked(secret, item, path) for item, path in
                   checked(lambda: list(static.repeated("secrets"))) or ()]
        secrets = [s for s in secrets if s is not None]
        # Checked here, not only in Bootstrap.validate, to point at the tcp_proxy or route field.
        # A cluster with errors of its own still counts as defined.
        names = {item.get("name") for item, _ in items if isinstance(item, dict)}
        for item in parsed:
            if item is None:
                continue
            listener, listener_refs = item
            listeners.append(listener)
            for cluster, cluster_path in listener_refs:
                if cluster not in names:
                    report(ConfigError(cluster_path, f"unknown cluster {cluster!r}"))
        clusters = [c for c in clusters if c is not None]
        _check_static_secrets(secrets, _tls_contexts(listeners, clusters))
        if dynamic is not None and dynamic.ads is not None and dynamic.ads.cluster_name not in names:
            # Envoy: the ADS server's cluster must be static (it is needed before discovery).
            report(ConfigError("dynamic_resources.ads_config." + GRPC_CLUSTER_PATH,
                               f"unknown static cluster {dynamic.ads.cluster_name!r}"))
    names = {c.name for c in clusters}
    ads = dynamic.ads if dynamic is not None else None
    sources = [(f"dynamic_resources.{f}_config", getattr(dynamic, f)) for f in ("lds", "cds")] if dynamic else []
    sources += [(f"static_resources.clusters[{i}].eds_cluster_config.eds_config", c.eds_config)
                for i, c in enumerate(clusters)]
    sources += [(f"static_resources.listeners[{i}].filter_chains[0].filters[0].typed_config.rds.config_source",
                 l.http_connection_manager.rds.config_source) for i, l in enumerate(listeners)
                if l.http_connection_manager is not None and l.http_connection_manager.rds is not None]
    # A secret's sds_config (SDS over ADS needs ads_config, as Envoy's LDS/CDS do).
    from ..model_tls import sds_refs
    sds_sources = [(spath + ".sds_config", sds.sds_config) for ctx, cpath in _tls_contexts(listeners, clusters)
                   for sds, spath in sds_refs(ctx, cpath) if sds.sds_config is not None]
    for path, src in sources + sds_sources:
        for e in grpc_source_errors(src, path, names, ads,
                                    require_ads=path.startswith("dynamic_resources") or path.endswith(".sds_config")):
            report(e)
    runtime = checked(layered_runtime, top)
    if runtime is not None and listeners:
        checked(runtime.apply_listener_limits, listeners)
    return model.Bootstrap(listeners=listeners, clusters=clusters, admin=admin, node=node or model.Node(),
                           max_downstream_connections=runtime.global_max_connections if runtime else None,
                           dynamic_resources=dynamic, secrets=secrets)


def _tls_contexts(listeners: list, clusters: list) -> list:
    """[(TLS context, the path of its typed_config)] of the clusters and listeners read."""
    from ..model_tls import listener_contexts
    out = [(c.tls, f"static_resources.clusters[{i}].transport_socket.typed_config")
           for i, c in enumerate(clusters) if c.tls is not None]
    for i, l in enumerate(listeners):
        for ctx, path in listener_contexts(l, f"static_resources.listeners[{i}]"):
            # (the model's chain.tls is the chain's transport_socket)
            out.append((ctx, path[:-len(".tls")] + ".transport_socket.typed_config"))
    return out


def _check_static_secrets(secrets: list, contexts: list) -> None:
    """Duplicate secret names, and static secret names (an SdsSecretConfig without
    sds_config) that no secret has (Envoy refuses both when the configuration loads).
    ``contexts``: [(the model with .tls, the path of its TLS context)]."""
    names: set = set()
    for i, s in enumerate(secrets):
        if s.name in names:
            report(ConfigError(f"static_resources.secrets[{i}].name", f"duplicate static secret name {s.name!r}"))
        names.add(s.name)
    from ..model_tls import sds_refs
    for ctx, path in contexts:
        for sds, spath in sds_refs(ctx, path):
            if sds.sds_config is None and sds.name not in names:
                report(ConfigError(spath + ".name", f"unknown static secret {sds.name!r} (not in "
                                                    "static_resources.secrets)"))


# --- node, admin -------------------------------------------------------------------------

def _node(top: Message) -> model.Node:
    # The identity a management server would see; shown on /server_info. The command line's
    # --service-node/--service-cluster/--service-zone override it (Envoy's rule).
    node = top.message("node", ("id", "cluster", "locality", "metadata"))
    if node is None:
        return model.Node()
    locality = node.message("locality", ("region", "zone", "sub_zone"))
    where = {f: locality.string(f, default="") if locality is not None else ""
             for f in ("region", "zone", "sub_zone")}
    # A google.protobuf.Struct: free-form, sent to the management server as it is.
    metadata = node.mapping("metadata")
    return model.Node(id=node.string("id", default=""), cluster=node.string("cluster", default=""),
                      metadata=dict(metadata or {}), **where)


# --- dynamic_resources ---------------------------------------------------------------------

# envoy.config.core.v3.ApiVersion: V2 is gone from Envoy; AUTO (the default) means V3.
API_VERSIONS = {"AUTO": 0, "V2": 1, "V3": 2}


def _dynamic_resources(top: Message) -> Optional[model.DynamicResources]:
    """lds_config / cds_config: files (path_config_source), the ADS stream of ads_config, or
    a stream of their own (api_config_source, gRPC; REST is refused by its path); see
    config_source."""
    dyn = top.message("dynamic_resources", ("lds_config", "cds_config", "ads_config"))
    if dyn is None:
        return None
    return model.DynamicResources(lds=checked(config_source, dyn, "lds_config"),
                                  cds=checked(config_source, dyn, "cds_config"),
                                  ads=checked(_ads_config, dyn))


# envoy.config.core.v3.ApiConfigSource.ApiType: how an xDS server is reached.
API_TYPES = {"DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE": 0, "REST": 1, "GRPC": 2, "DELTA_GRPC": 3,
             "AGGREGATED_GRPC": 5, "AGGREGATED_DELTA_GRPC": 6}


def _ads_config(dyn: Message) -> Optional[model.AdsConfig]:
    """ads_config: GRPC (state of the world) or DELTA_GRPC, V3, one grpc_services entry whose
    envoy_grpc names the cluster of the management server (static: Envoy needs it before
    any discovery; checked with the clusters, by Bootstrap.validate)."""
    ads = dyn.message("ads_config", _API_CONFIG_SOURCE_FIELDS)
    return None if ads is None else _grpc_api_source(ads, "ads_config")


_API_CONFIG_SOURCE_FIELDS = ("api_type", "transport_api_version", "grpc_services",
                             "set_node_on_first_message_only", "request_timeout", "refresh_delay",
                             "rate_limit_settings")


def _grpc_api_source(api: Message, what: str) -> model.AdsConfig:
    """An envoy.config.core.v3.ApiConfigSource (ads_config, or a ConfigSource's
    api_config_source): a gRPC stream, GRPC or DELTA_GRPC, to the first endpoint of the
    static cluster envoy_grpc names."""
    api_type = api.enum("api_type", API_TYPES, default="DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE")
    if api_type not in ("GRPC", "DELTA_GRPC"):
        raise ConfigError(api.at("api_type"), f"{api_type} is not supported for {what}: use GRPC "
                                              "(state of the world) or DELTA_GRPC (incremental)")
    if api.enum("transport_api_version", API_VERSIONS, default="AUTO") == "V2":
        raise ConfigError(api.at("transport_api_version"), "the V2 xDS API is not supported (as in "
                                                           "Envoy 1.40): use V3")
    api.raw("set_node_on_first_message_only")       # the node goes on a stream's first message only
    api.duration("request_timeout")
    api.duration("refresh_delay")                   # REST polling only
    if api.raw("rate_limit_settings") is not None:
        raise unsupported_field(api.at("rate_limit_settings"), "rate_limit_settings")
    services = list(api.repeated("grpc_services"))
    if len(services) != 1:
        raise ConfigError(api.at("grpc_services"), f"exactly one grpc service is needed, got {len(services)}")
    item, path = services[0]
    service = Message(item, path, ("envoy_grpc", "timeout", "initial_metadata", "retry_policy"))
    service.duration("timeout")
    grpc = service.message("envoy_grpc", ("cluster_name", "authority", "retry_policy", "max_receive_message_length"),
                           required=True)
    cluster = grpc.string("cluster_name", required=True, non_empty=True)
    return model.AdsConfig(cluster_name=cluster, delta=api_type == "DELTA_GRPC",
                           max_receive_message_length=grpc.uint32("max_receive_message_length", default=0))


GRPC_CLUSTER_PATH = "grpc_services[0].envoy_grpc.cluster_name"


def config_source(parent: Message, name: str) -> Optional[model.ConfigSource]:
    """An envoy.config.core.v3.ConfigSource (lds_config, cds_config, an EDS cluster's
    eds_config, an HTTP connection manager's rds.config_source): ads, api_config_source
    (GRPC / DELTA_GRPC) or a file (path_config_source)."""
    src = parent.message(name, ("path", "path_config_source", "resource_api_version",
                                "initial_fetch_timeout", "ads", "api_config_source"))
    if src is None:
        return None
    version = src.enum("resource_api_version", API_VERSIONS, default="AUTO")
    if version == "V2":
        raise ConfigError(src.at("resource_api_version"), "the V2 xDS API is not supported (as in "
                                                          "Envoy 1.40): use V3")
    # A file is read when the proxy starts, before it serves: the initial fetch never waits.
    fetch_timeout = src.duration("initial_fetch_timeout", default=15.0)
    given = [f for f in ("ads", "api_config_source", "path", "path_config_source") if src.raw(f) is not None]
    if len(given) > 1:
        raise ConfigError(src.path, f"only one of {', '.join(given)} may be set")
    if src.raw("ads") is not None:
        Message(src.mapping("ads"), src.at("ads"), ())         # AggregatedConfigSource: no fields
        return model.ConfigSource(ads=True, initial_fetch_timeout=fetch_timeout)
    api = src.message("api_config_source", _API_CONFIG_SOURCE_FIELDS)
    if api is not None:
        return model.ConfigSource(api=_grpc_api_source(api, "api_config_source"),
                                  initial_fetch_timeout=fetch_timeout)
    legacy = src.string("path")      # deprecated in Envoy's v3 API, still accepted by 1.40
    pcs = src.message("path_config_source", ("path", "watched_directory"))
    if pcs is None and legacy is None:
        raise ConfigError(src.path, "a config source is required: ads, api_config_source or path_config_source")
    if pcs is not None:
        path, path_at = pcs.string("path", required=True, non_empty=True), pcs.at("path")
        watched = pcs.message("watched_directory", ("path",))
        directory = watched.string("path", required=True, non_empty=True) if watched is not None else None
    else:
        if not legacy:
            raise ConfigError(src.at("path"), "must not be empty")
        path, path_at, directory = legacy, src.at("path"), None
    # Envoy: "paths must refer to an existing path in the system" when the config loads.
    if not os.path.exists(path):
        raise ConfigError(path_at, f"paths must refer to an existing path in the system: {path!r} does not exist")
    if directory is not None and not os.path.isdir(directory):
        raise ConfigError(pcs.at("watched_directory.path"), f"{directory!r} is not a directory")
    return model.ConfigSource(path=path, watched_directory=directory)




use_config_source_reader(config_source)


def grpc_source_errors(source: Optional[model.ConfigSource], path: str, static_clusters: set,
                       ads: Optional[model.AdsConfig], require_ads: bool = True) -> list:
    """What is wrong with where ``source`` (at ``path``) says its server is: ads without
    ads_config (for LDS/CDS: ``require_ads``; an RDS connection manager's or an EDS
    cluster's ads source without one is taken, as Envoy 1.40 validates it, and then
    subscribes nothing: its routes or endpoints come from Proxy.update), or an
    api_config_source whose cluster is not a static one (Envoy needs it before any discovery)."""
    if source is None:
        return []
    if source.ads and ads is None and require_ads:
        return [ConfigError(path + ".ads", "ads requires dynamic_resources.ads_config")]
    if source.api is not None and source.api.cluster_name not in static_clusters:
        return [ConfigError(f"{path}.api_config_source.{GRPC_CLUSTER_PATH}",
                            f"unknown static cluster {source.api.cluster_name!r}")]
    return []


def _admin(top: Message) -> Optional[model.Admin]:
    admin = top.message("admin", ("address", "access_log", "profile_path"))
    if admin is None:
        return None
    admin.string("profile_path")  # CPU profiler output: no profiler here, accepted as Envoy's
    # The admin's own requests, logged like the HTTP connection manager's (file, stdout, stderr).
    logs = [checked(access_log, item, path) for item, path in admin.repeated("access_log")]
    address = admin.message("address", ("socket_address",))
    if address is None:
        return None  # Envoy starts no admin server when no address is given
    host, port = _socket_address(address, require_ip=True, min_port=0)
    return model.Admin(host, port, access_log=[log for log in logs if log is not None])


def _typed_config(parent: Message) -> tuple:
    """A google.protobuf.Any: returns (type_url, mapping with the message's fields)."""
    value = parent.mapping("typed_config")
    if value is None:
        raise ConfigError(parent.at("typed_config"), "required field is missing")
    type_url = value.get("@type")
    if not isinstance(type_url, str) or not type_url:
        raise ConfigError(parent.at("typed_config") + ".@type", "an '@type' string is required")
    return type_url, value


# --- addresses ---------------------------------------------------------------------------

def _socket_address(address: Message, require_ip: bool, min_port: int, ip_hint: str = "") -> tuple:
    """An envoy.config.core.v3.Address holding a TCP socket_address: (host, port)."""
    sock = address.message("socket_address", ("address", "port_value", "protocol"), required=True)
    protocol = sock.enum("protocol", SOCKET_PROTOCOLS, default="TCP")
    if protocol != "TCP":
        raise ConfigError(sock.at("protocol"), f"only TCP is supported, got {protocol}")
    host = sock.string("address", required=True, non_empty=True)
    if require_ip and not model.is_ip_literal(host):
        raise ConfigError(sock.at("address"), f"malformed IP address: {host!r}{ip_hint}")
    port = sock.uint32("port_value", required=True)
    if not min_port <= port <= MAX_PORT:
        raise ConfigError(sock.at("port_value"), f"port must be {min_port}..{MAX_PORT}, got {port}")
    return host, port


# --- listeners ---------------------------------------------------------------------------

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
# envoy.config.listener.v3.FilterChainMatch.ConnectionSourceType
SOURCE_TYPES = {"ANY": 0, "SAME_IP_OR_LOOPBACK": 1, "EXTERNAL": 2}
_CHAIN_FIELDS = ("filters", "name", "filter_chain_match", "transport_socket",
                 "transport_socket_connect_timeout")


def _listener(item: Any, path: str, index: int) -> tuple:
    """Returns (model.Listener, [(cluster name, path of the field naming it)...])."""
    msg = Message(item, path, ("name", "address", "filter_chains", "default_filter_chain",
                               "listener_filters", "listener_filters_timeout",
                               "continue_on_listener_filters_timeout",
                               "per_connection_buffer_limit_bytes", "tcp_backlog_size", "drain_type"))
    # Envoy generates a name for an unnamed (or empty-named) listener; a stable one is
    # easier to find in stats and logs.
    name = msg.string("name") or f"listener_{index}"
    host, port = _socket_address(msg.message("address", ("socket_address",), required=True),
                                 require_ip=True, min_port=0)
    common = dict(
        name=name, address=host, port=port,
        buffer_limit=msg.uint32("per_connection_buffer_limit_bytes", default=model.Listener.buffer_limit,
                                minimum=MIN_BUFFER_LIMIT),
        backlog=msg.uint32("tcp_backlog_size", default=model.Listener.backlog, minimum=1),
        drain_type=msg.enum("drain_type", {t: i for i, t in enumerate(model.LISTENER_DRAIN_TYPES)},
                            default="DEFAULT"))
    inspector = _listener_filters(msg)
    timeout = msg.duration("listener_filters_timeout", default=15.0)
    cont = msg.raw("continue_on_listener_filters_timeout", False)
    if not isinstance(cont, bool):
        raise ConfigError(msg.at("continue_on_listener_filters_timeout"), f"expected a bool, got {cont!r}")

    items = list(msg.repeated("filter_chains"))
    default_item = msg.raw("default_filter_chain")
    plain = (len(items) == 1 and default_item is None and not inspector and isinstance(items[0][0], dict)
             and not {"filter_chain_match", "filterChainMatch", "transport_socket", "transportSocket",
                      "transport_socket_connect_timeout", "transportSocketConnectTimeout"} & items[0][0].keys())
    if plain:
        # One chain for every connection: the listener's own handler, as it always was.
        chain, refs = _filter_chain(*items[0])
        terminal = dict(handler=chain.handler, filters=list(chain.filters))
        if chain.http_connection_manager is not None:
            # The HTTP connection manager's own stat prefix and connection idle timeout are the
            # listener's too, so that nothing reads a TCP default for an HTTP listener.
            terminal.update(stat_prefix=chain.handler.stat_prefix, idle_timeout=chain.handler.idle_timeout)
        else:
            terminal.update(stat_prefix=chain.stat_prefix, idle_timeout=chain.idle_timeout,
                            max_connect_attempts=chain.max_connect_attempts)
        return model.Listener(**common, **terminal), refs
    if not items and default_item is None:
        # Envoy: "error adding listener ...: no filter chains specified"
        raise ConfigError(msg.at("filter_chains"), "no filter chains specified")
    chains, refs = [], []
    for chain_item, chain_path in items:
        chain, chain_refs = _filter_chain(chain_item, chain_path)
        chains.append(chain)
        refs += chain_refs
    default = None
    if default_item is not None:
        default, chain_refs = _filter_chain(default_item, msg.at("default_filter_chain"))
        if default.match != model.FilterChainMatch():
            raise ConfigError(msg.at("default_filter_chain.filter_chain_match"),
                              "the default filter chain takes the connections no chain matches: it "
                              "has no filter_chain_match")
        refs += chain_refs
    listener = model.Listener(**common, filter_chains=chains, default_filter_chain=default,
                              tls_inspector=inspector, listener_filters_timeout=timeout or None,
                              continue_on_listener_filters_timeout=cont)
    # Envoy's checks of the chains together (duplicate matches), with the listener's path.
    listener._validate_chains(path)
    return listener, refs


def _listener_filters(msg: Message) -> bool:
    """listener_filters: only envoy.filters.listener.tls_inspector (its TlsInspector
    without options). Returns whether it is there."""
    found = False
    for item, fpath in msg.repeated("listener_filters"):
        entry = Message(item, fpath, ("name", "typed_config"))
        fname = entry.string("name", default="")
        value = entry.mapping("typed_config")
        type_url = value.get("@type") if value is not None else None
        if type_url == TLS_INSPECTOR_TYPE or (type_url is None and fname == TLS_INSPECTOR):
            if value is not None:
                Message(value, entry.at("typed_config"), (), ignore=("@type",))
            if found:
                raise ConfigError(fpath, "the tls_inspector is given twice")
            found = True
            continue
        what = type_url or fname or "a listener filter without a name or typed_config"
        raise ConfigError(entry.at("typed_config") if type_url else fpath,
                          f"unsupported listener filter {what!r} (fastproxy supports "
                          f"{TLS_INSPECTOR}, typed_config {TLS_INSPECTOR_TYPE})")
    return found


def _cidr_ranges(match: Message, name: str) -> list:
    """Repeated envoy.config.core.v3.CidrRange: ["10.0.0.0/8", ...] (prefix_len absent: 0)."""
    out = []
    for item, rpath in match.repeated(name):
        r = Message(item, rpath, ("address_prefix", "prefix_len"))
        prefix = r.string("address_prefix", required=True, non_empty=True)
        if not model.is_ip_literal(prefix):
            raise ConfigError(r.at("address_prefix"), f"malformed IP address: {prefix!r}")
        plen = r.uint32("prefix_len", default=0)
        if plen > (128 if ":" in prefix else 32):
            raise ConfigError(r.at("prefix_len"), f"prefix_len {plen} is too long for {prefix!r}")
        out.append(f"{prefix}/{plen}")
    return out


def _strings(msg: Message, name: str) -> list:
    out = []
    for item, ipath in msg.repeated(name):
        if not isinstance(item, str):
            raise ConfigError(ipath, f"expected a string, got {item!r}")
        out.append(item)
    return out


def _filter_chain_match(chain: Message) -> model.FilterChainMatch:
    match = chain.message("filter_chain_match", (
        "destination_port", "prefix_ranges", "server_names", "transport_protocol",
        "application_protocols", "source_type", "source_prefix_ranges", "source_ports",
        "direct_source_prefix_ranges", "address_suffix", "suffix_len"))
    if match is None:
        return model.FilterChainMatch()
    for f in ("direct_source_prefix_ranges", "address_suffix", "suffix_len"):
        if match.raw(f):
            raise ConfigError(match.at(f), f"{f} is unsupported in fastproxy (not planned); remove it")
    ports = []
    for item, ppath in match.repeated("source_ports"):
        port = Message({"p": item}, ppath, ("p",)).uint32("p")
        if not 1 <= port <= MAX_PORT:
            raise ConfigError(ppath, f"port must be 1..{MAX_PORT}, got {port}")
        ports.append(port)
    dport = match.uint32("destination_port")
    if dport is not None and not 1 <= dport <= MAX_PORT:
        raise ConfigError(match.at("destination_port"), f"port must be 1..{MAX_PORT}, got {dport}")
    server_names = _strings(match, "server_names")
    for i, n in enumerate(server_names):
        if "*" in n and not (n.startswith("*.") and "*" not in n[1:]):
            raise ConfigError(f"{match.at('server_names')}[{i}]",
                              'partial wildcards are not supported in "server_names"')
    transport = match.string("transport_protocol", default="")
    if transport not in model.TRANSPORT_PROTOCOLS:
        raise ConfigError(match.at("transport_protocol"), f"fastproxy detects 'raw_buffer' and 'tls' "
                                                          f"(tls_inspector), got {transport!r}")
    return model.FilterChainMatch(
        destination_port=dport, prefix_ranges=tuple(_cidr_ranges(match, "prefix_ranges")),
        server_names=tuple(n.lower() for n in server_names), transport_protocol=transport,
        application_protocols=tuple(_strings(match, "application_protocols")),
        source_type=match.enum("source_type", SOURCE_TYPES, default="ANY"),
        source_prefix_ranges=tuple(_cidr_ranges(match, "source_prefix_ranges")),
        source_ports=tuple(ports))


def _chain_tls(chain: Message) -> Any:
    """A chain's transport_socket through config/tls.py (its DownstreamTlsContext), None
    for none or raw_buffer; refused as before while TLS is not in this build."""
    value = chain.mapping("transport_socket")
    if value is None:
        return None
    try:
        from . import tls as tls_config
    except ImportError:
        raise unsupported_field(chain.at("transport_socket"), "transport_socket") from None
    return tls_config.transport_socket(value, chain.at("transport_socket"), downstream=True)


def _filter_chain(item: Any, path: str) -> tuple:
    """A FilterChain: returns (model.FilterChain, [(cluster, path naming it)...])."""
    chain = Message(item, path, _CHAIN_FIELDS)
    chain_name = chain.string("name", default="")
    filters = list(chain.repeated("filters"))
    if not filters:
        raise ConfigError(chain.at("filters"), "the filter chain must end with envoy.filters.network.tcp_proxy "
                                               "or envoy.filters.network.http_connection_manager")

    type_url, value, tpath = _filter_typed_config(*filters[-1])
    if type_url == HCM_TYPE:
        if len(filters) > 1:
            raise ConfigError(filters[0][1], "network filters before http_connection_manager are not "
                                             "supported yet")
        hcm, refs = http_connection_manager(value, tpath, config_source)
        terminal = dict(handler=hcm, stat_prefix=hcm.stat_prefix, idle_timeout=hcm.idle_timeout)
        factories = []
    elif type_url == TCP_PROXY_TYPE:
        factories = [_python_filter(item, fpath) for item, fpath in filters[:-1]]
        terminal, cluster_path = _tcp_proxy(value, tpath)
        refs = [(terminal["handler"].cluster, cluster_path)]
    else:
        raise ConfigError(tpath + ".@type",
                          f"the last filter must be envoy.filters.network.tcp_proxy ({TCP_PROXY_TYPE}) or "
                          f"envoy.filters.network.http_connection_manager ({HCM_TYPE}), got {type_url!r}")
    connect_timeout = chain.duration("transport_socket_connect_timeout")
    tls = _chain_tls(chain)
    handler = terminal.pop("handler")
    return model.FilterChain(handler, filters=tuple(factories), match=_filter_chain_match(chain), tls=tls,
                             name=chain_name, transport_socket_connect_timeout=connect_timeout or None,
                             **terminal), refs


def _filter_typed_config(item: Any, path: str) -> tuple:
    """A network filter entry: returns (type_url, typed_config mapping, typed_config path)."""
    entry = Message(item, path, ("name", "typed_config"))
    entry.string("name", required=True, non_empty=True)
    type_url, value = _typed_config(entry)
    return type_url, value, entry.at("typed_config")


def _python_filter(item: Any, path: str) -> Any:
    type_url, value, tpath = _filter_typed_config(item, path)
    if type_url in (TCP_PROXY_TYPE, HCM_TYPE):
        kind = "tcp_proxy" if type_url == TCP_PROXY_TYPE else "http_connection_manager"
        raise ConfigError(tpath, f"{kind} is a terminal filter and must be the last filter in the chain")
    if type_url not in TYPED_STRUCT_TYPES:
        raise ConfigError(tpath + ".@type",
                          f"unsupported network filter {type_url!r} (fastproxy supports tcp_proxy and "
                          "Python filters given as an xds.type.v3.TypedStruct)")
    return python_filter_factory(Message(value, tpath, ("type_url", "value"), ignore=("@type",)))


def _tcp_proxy(value: Any, tpath: str) -> tuple:
    """The tcp_proxy terminal filter's typed_config: returns (model.Listener keyword
    arguments, cluster field path)."""
    tcp = Message(value, tpath, ("stat_prefix", "cluster", "idle_timeout", "max_connect_attempts"),
                  ignore=("@type",))
    idle = tcp.duration("idle_timeout", default=DEFAULT_IDLE_TIMEOUT)
    kwargs = dict(
        stat_prefix=tcp.string("stat_prefix", required=True, non_empty=True),
        handler=model.TcpProxy(tcp.string("cluster", required=True, non_empty=True)),
        idle_timeout=None if idle == 0 else idle,  # Envoy: 0s disables the idle timeout
        max_connect_attempts=tcp.uint32("max_connect_attempts", default=1, minimum=1),
    )
    return kwargs, tcp.at("cluster")


# --- clusters ----------------------------------------------------------------------------

def _cluster(item: Any, path: str) -> model.Cluster:
    msg = Message(item, path, ("name", "type", "connect_timeout", "lb_policy", "load_assignment",
                               "dns_refresh_rate", "dns_lookup_family",
                               "per_connection_buffer_limit_bytes", "typed_extension_protocol_options",
                               "max_requests_per_connection", "circuit_breakers", "http2_protocol_options",
                               "eds_cluster_config", "transport_socket")
                  + CLUSTER_LB_FIELDS + HEALTH_CHECK_FIELDS + OUTLIER_FIELDS)
    name = msg.string("name", required=True, non_empty=True)
    ctype = _supported(msg, "type", DISCOVERY_TYPES, model.CLUSTER_TYPES, "STATIC")
    lb_policy = _supported(msg, "lb_policy", LB_POLICIES, model.LB_POLICIES, "ROUND_ROBIN")
    connect_timeout = msg.duration("connect_timeout", default=DEFAULT_CONNECT_TIMEOUT)
    if connect_timeout <= 0:
        raise ConfigError(msg.at("connect_timeout"), "must be greater than 0s")
    dns_refresh_rate = msg.duration("dns_refresh_rate", default=model.Cluster.dns_refresh_rate)
    if dns_refresh_rate <= 0.001:
        raise ConfigError(msg.at("dns_refresh_rate"), "must be greater than 1ms")
    family = msg.enum("dns_lookup_family", DNS_LOOKUP_FAMILIES, default=DEFAULT_DNS_LOOKUP_FAMILY)
    # Upstream buffering is bounded by the listener's limit in fastproxy; accepted as Envoy's.
    msg.uint32("per_connection_buffer_limit_bytes")

    eds: dict = {}
    eds_msg = msg.message("eds_cluster_config", ("service_name", "eds_config"))
    if ctype == "EDS":
        if eds_msg is None:
            raise ConfigError(msg.at("eds_cluster_config"), "a cluster of type EDS needs eds_cluster_config "
                                                            "(its eds_config says where endpoints come from)")
        eds["eds_service_name"] = eds_msg.string("service_name", default="")
        eds["eds_config"] = config_source(eds_msg, "eds_config")
        if eds["eds_config"] is None:
            raise ConfigError(eds_msg.at("eds_config"), "required field is missing")
    elif eds_msg is not None:
        raise ConfigError(msg.at("eds_cluster_config"), f"only a cluster of type EDS takes it (type is {ctype})")

    endpoints: list = []
    if msg.raw("load_assignment") is not None and ctype != "EDS":
        # (An EDS cluster's load_assignment is not used, as in Envoy: EDS gives its endpoints.)
        endpoints = load_assignment(msg.raw("load_assignment"), msg.at("load_assignment"), ctype)

    pool = _http_protocol_options(msg)
    if msg.raw("http2_protocol_options") is not None:
        # The deprecated cluster-level spelling of explicit_http_config.http2_protocol_options
        # (Envoy 1.40 still takes it, but not beside the protocol options' own choice).
        if msg.raw("typed_extension_protocol_options"):
            raise ConfigError(msg.at("http2_protocol_options"), "only one of http2_protocol_options and "
                                                               "typed_extension_protocol_options may be set")
        pool["upstream_protocol"] = "http2"
        pool["http2_protocol_options"] = http2_protocol_options(msg.message("http2_protocol_options",
                                                                            _H2_FIELDS))
    # The deprecated cluster-level field (Envoy 1.40 still takes it, but not together with
    # the protocol options' own).
    legacy = msg.uint32("max_requests_per_connection")
    if legacy is not None:
        if pool.get("max_requests_per_connection") is not None:
            raise ConfigError(msg.at("max_requests_per_connection"),
                              "only one of max_requests_per_connection from Cluster or "
                              "HttpProtocolOptions can be specified")
        pool["max_requests_per_connection"] = legacy
    if pool.get("max_requests_per_connection") is None:
        pool.pop("max_requests_per_connection", None)
    # TLS to the upstreams; auto_sni / auto_san_validation are HttpProtocolOptions' fields
    # in Envoy, and mean something only with TLS: the model keeps them in the TLS context.
    upstream_options = pool.pop("upstream_tls_options", {})
    tls = None
    if msg.raw("transport_socket") is not None:
        tls = transport_socket(msg.raw("transport_socket"), msg.at("transport_socket"), downstream=False,
                               **upstream_options)
    if pool.get("upstream_protocol") == "auto" and tls is None:
        # Envoy 1.40's words: auto_config needs ALPN, so a TLS transport socket.
        raise ConfigError(pool.pop("auto_path"), f"ALPN configured for cluster {name} which has a "
                                                 "non-ALPN transport socket (auto_config needs TLS)")
    pool.pop("auto_path", None)

    return model.Cluster(name=name, endpoints=endpoints, type=ctype, lb_policy=lb_policy,
                         overprovisioning_factor=getattr(endpoints, "overprovisioning_factor", 140),
                         connect_timeout=connect_timeout, dns_refresh_rate=dns_refresh_rate,
                         dns_lookup_family=family, tls=tls, **eds, **pool, **_circuit_breakers(msg),
                         **cluster_lb_options(msg, lb_policy), **cluster_health_checks(msg),
                         **cluster_outlier_detection(msg))


def _http_protocol_options(cluster: Message) -> dict:
    """typed_extension_protocol_options: only Envoy's upstream HttpProtocolOptions, with
    explicit_http_config (HTTP/1.1 or HTTP/2) or auto_config (by ALPN). Returns
    model.Cluster keyword arguments (and "auto_path", auto_config's path, for _cluster)."""
    options = cluster.mapping("typed_extension_protocol_options")
    if not options:
        return {}
    out: dict = {}
    for key, value in options.items():
        kpath = f"{cluster.at('typed_extension_protocol_options')}.{key}"
        if key != HTTP_PROTOCOL_OPTIONS:
            raise ConfigError(kpath, f"unsupported protocol options {key!r} (fastproxy supports "
                                     f"{HTTP_PROTOCOL_OPTIONS})")
        if not isinstance(value, dict) or value.get("@type") != HTTP_PROTOCOL_OPTIONS_TYPE:
            raise ConfigError(kpath + ".@type", f"expected '@type: {HTTP_PROTOCOL_OPTIONS_TYPE}'")
        hpo = Message(value, kpath, ("common_http_protocol_options", "explicit_http_config",
                                     "use_downstream_protocol_config", "auto_config",
                                     "upstream_http_protocol_options"),
                      ignore=("@type",))
        upstream = hpo.message("upstream_http_protocol_options",
                               ("auto_sni", "auto_san_validation", "override_auto_sni_header"))
        if upstream is not None:
            if upstream.raw("override_auto_sni_header") is not None:
                raise ConfigError(upstream.at("override_auto_sni_header"),
                                  "override_auto_sni_header is unsupported in fastproxy (auto_sni takes "
                                  "the request's Host); remove it")
            out["upstream_tls_options"] = {f: _bool(upstream, f) for f in ("auto_sni", "auto_san_validation")}
        chosen = [f for f in ("explicit_http_config", "use_downstream_protocol_config", "auto_config")
                  if hpo.raw(f) is not None]
        if not chosen:
            # Envoy: "Proto constraint validation failed (field: upstream_protocol_options,
            # reason: is required)".
            raise ConfigError(kpath + ".upstream_protocol_options",
                              "one of explicit_http_config, use_downstream_protocol_config or "
                              "auto_config is required")
        if len(chosen) > 1:
            raise ConfigError(hpo.at(chosen[1]), f"only one of {', '.join(chosen)} may be set")
        if chosen[0] == "use_downstream_protocol_config":
            # Envoy's: each request goes up in its downstream's protocol. The upstream
            # protocol is a cluster's, not a request's, in fastproxy.
            raise ConfigError(hpo.at(chosen[0]), "use_downstream_protocol_config (the upstream protocol "
                                                 "chosen per request) is not supported; use "
                                                 "explicit_http_config or auto_config")
        auto = chosen[0] == "auto_config"
        proto = hpo.message(chosen[0], ("http_protocol_options", "http2_protocol_options",
                                        "http3_protocol_options") +
                            (("alternate_protocols_cache_options",) if auto else ()))
        given = [f for f in ("http_protocol_options", "http2_protocol_options", "http3_protocol_options")
                 if proto.raw(f) is not None]
        if not auto and len(given) > 1:
            raise ConfigError(proto.at(given[1]), f"only one of {', '.join(given)} may be set")
        if not auto and not given:
            raise ConfigError(proto.at("protocol_config"), "one of http_protocol_options, "
                                                           "http2_protocol_options or "
                                                           "http3_protocol_options is required")
        for f in ("http3_protocol_options", "alternate_protocols_cache_options"):
            if proto.raw(f) is not None:
                # (http3: the same words as for the HCM's codec_type HTTP3)
                raise (unsupported_field(proto.at(f), f) if f.startswith("http3") else
                       ConfigError(proto.at(f), "alternate protocols (HTTP/3 discovery) are not supported; "
                                                "remove it"))
        # HTTP/1.1 as it is: none of Http1ProtocolOptions' knobs is implemented upstream.
        proto.message("http_protocol_options", ())
        if auto:
            out["upstream_protocol"] = "auto"
            out["auto_path"] = hpo.at("auto_config")
        elif given == ["http2_protocol_options"]:
            out["upstream_protocol"] = "http2"
        if "http2_protocol_options" in given:
            out["http2_protocol_options"] = http2_protocol_options(proto.message("http2_protocol_options",
                                                                                 _H2_FIELDS))
        common = hpo.message("common_http_protocol_options",
                             ("idle_timeout", "max_requests_per_connection", "max_connection_duration"))
        if common is not None:
            idle = common.duration("idle_timeout")
            if idle is not None:
                out["idle_timeout"] = None if idle == 0 else idle      # Envoy: 0s disables it
            duration = common.duration("max_connection_duration")
            if duration is not None:
                out["max_connection_duration"] = None if duration == 0 else duration
            out["max_requests_per_connection"] = common.uint32("max_requests_per_connection")
    return out


def _circuit_breakers(cluster: Message) -> dict:
    """circuit_breakers.thresholds: the first DEFAULT one is enforced (what Envoy 1.40 does
    with several); HIGH ones are checked and accepted, but every request here is DEFAULT."""
    breakers = cluster.message("circuit_breakers", ("thresholds",))
    if breakers is None:
        return {}
    out: dict = {}
    for item, tpath in breakers.repeated("thresholds"):
        th = Message(item, tpath, ("priority", "max_connections", "max_pending_requests",
                                   "max_requests", "max_retries", "track_remaining", "retry_budget"))
        priority = th.enum("priority", ROUTING_PRIORITIES, default="DEFAULT")
        values = {name: th.uint32(name) for name in ("max_connections", "max_pending_requests",
                                                     "max_requests", "max_retries")}
        remaining = th.raw("track_remaining")
        if remaining is not None and not isinstance(remaining, bool):
            raise ConfigError(th.at("track_remaining"), f"expected a bool, got {remaining!r}")
        budget = retry_budget(th.message("retry_budget", RETRY_BUDGET_FIELDS))    # (checked at every priority)
        if priority == "DEFAULT" and not out:
            out = {k: v for k, v in values.items() if v is not None}
            out["track_remaining"] = bool(remaining)
            if budget is not None:
                out["retry_budget"] = budget
    return out


def _supported(msg: Message, name: str, values: dict, supported: tuple, default: str) -> str:
    value = msg.enum(name, values, default=default)
    if value not in supported:
        raise ConfigError(msg.at(name), f"{name} {value} is not supported by fastproxy "
                                        f"(supported: {', '.join(supported)})")
    return value


# envoy.config.core.v3.HealthStatus (model.Endpoint.health_status): UNHEALTHY, DRAINING and
# TIMEOUT hosts are kept but not routed to, DEGRADED ones only when healthy ones lack (Envoy's EDS
# health; fastproxy.installer maps them to the core's health flags).
HEALTH_STATUSES = {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2, "DRAINING": 3, "TIMEOUT": 4, "DEGRADED": 5}


class Endpoints(list):
    """load_assignment's endpoints, with the assignment's policy.overprovisioning_factor."""
    overprovisioning_factor = 140


def load_assignment(item: Any, path: str, cluster_type: str) -> list:
    """An envoy.config.endpoint.v3.ClusterLoadAssignment (a cluster's load_assignment, or an
    EDS resource): its endpoints as model.Endpoint, each with its priority, locality (and
    that locality's load_balancing_weight) and EDS health_status; the policy's
    overprovisioning_factor on the list (Endpoints). What the model cannot represent
    (drop_overloads, named endpoints) is refused with its path."""
    msg = Message(item, path, ("cluster_name", "endpoints", "policy", "named_endpoints"))
    msg.string("cluster_name", required=True, non_empty=True)
    if msg.raw("named_endpoints"):
        raise unsupported_field(msg.at("named_endpoints"), "named_endpoints")
    endpoints = Endpoints()
    policy = msg.message("policy", ("drop_overloads", "overprovisioning_factor", "endpoint_stale_after",
                                    "weighted_priority_health"))
    if policy is not None:
        for f in ("drop_overloads", "endpoint_stale_after"):
            if policy.raw(f):
                raise unsupported_field(policy.at(f), f)
        endpoints.overprovisioning_factor = policy.uint32("overprovisioning_factor", default=140, minimum=1)
        if policy.raw("weighted_priority_health"):
            raise ConfigError(policy.at("weighted_priority_health"), "weighted_priority_health is unsupported "
                                                                     "in fastproxy (not planned); remove it")
    for locality, lpath in msg.repeated("endpoints"):
        group = Message(locality, lpath, ("locality", "lb_endpoints", "load_balancing_weight", "priority",
                                          "metadata"))
        where = group.message("locality", ("region", "zone", "sub_zone"))
        key = () if where is None else tuple(where.string(f, default="") for f in ("region", "zone", "sub_zone"))
        group.mapping("metadata")
        # (Used only with common_lb_config.locality_weighted_lb_config, as in Envoy.)
        lweight = group.uint32("load_balancing_weight", default=0, minimum=1)
        priority = group.uint32("priority", default=0)
        if priority > model.MAX_PRIORITY:
            raise ConfigError(group.at("priority"), f"fastproxy supports priorities up to {model.MAX_PRIORITY}, "
                                                    f"got {priority}")
        for ep, epath in group.repeated("lb_endpoints"):
            endpoint = _endpoint(ep, epath, cluster_type)
            if priority or key or lweight:
                endpoint.priority, endpoint.locality, endpoint.locality_weight = priority, key, lweight
            endpoints.append(endpoint)
    return endpoints


def _endpoint(item: Any, path: str, cluster_type: str) -> model.Endpoint:
    plain = _plain_endpoint(item, cluster_type)
    return plain if plain is not None else _endpoint_read(item, path, cluster_type)


def _plain_endpoint(item: Any, cluster_type: str) -> Optional[model.Endpoint]:
    """The usual lb_endpoint ({endpoint: {address: {socket_address: {address, port_value}}}},
    maybe a load_balancing_weight), valid, read with plain lookups: an EDS push of 10,000
    endpoints spent most of its time in the general reading. None for anything else, which
    the general reading (_endpoint_read) takes and, if wrong, names by its path. The same
    result as the general reading (tested side by side)."""
    if type(item) is not dict or not item.keys() <= {"endpoint", "load_balancing_weight"}:
        return None
    endpoint = item.get("endpoint")
    if type(endpoint) is not dict or endpoint.keys() != {"address"}:
        return None
    address = endpoint["address"]
    if type(address) is not dict or address.keys() != {"socket_address"}:
        return None
    sock = address["socket_address"]
    if type(sock) is not dict or sock.keys() != {"address", "port_value"}:
        return None
    host, port = sock["address"], sock["port_value"]
    if type(host) is not str or not host or type(port) is not int or not 1 <= port <= MAX_PORT:
        return None
    if cluster_type != "STRICT_DNS" and not model.is_ip_literal(host):
        return None
    weight = item.get("load_balancing_weight", 1)
    if type(weight) is not int or not 1 <= weight <= MAX_ENDPOINT_WEIGHT:
        return None
    return model.Endpoint(address=host, port=port, weight=weight)


def _endpoint_read(item: Any, path: str, cluster_type: str) -> model.Endpoint:
    lb = Message(item, path, ("endpoint", "load_balancing_weight", "health_status", "metadata"))
    lb.mapping("metadata")
    health = lb.enum("health_status", HEALTH_STATUSES, default="UNKNOWN")
    endpoint = lb.message("endpoint", ("address", "hostname", "health_check_config"), required=True)
    if endpoint.raw("health_check_config") is not None:
        raise unsupported_field(endpoint.at("health_check_config"), "health_check_config")
    address = endpoint.message("address", ("socket_address",), required=True)
    # A STATIC (or EDS) cluster's endpoints are used as given; only STRICT_DNS resolves names.
    host, port = _socket_address(address, require_ip=cluster_type != "STRICT_DNS", min_port=1,
                                 ip_hint=" (STATIC clusters need IP addresses; use type STRICT_DNS for host names)")
    weight = lb.uint32("load_balancing_weight", default=1, minimum=1)
    if weight > MAX_ENDPOINT_WEIGHT:
        raise ConfigError(lb.at("load_balancing_weight"),
                          f"fastproxy supports weights up to {MAX_ENDPOINT_WEIGHT}, got {weight}")
    hostname = endpoint.string("hostname", default="")
    model.check_endpoint_hostname(hostname, endpoint.at("hostname"))
    return model.Endpoint(address=host, port=port, weight=weight, hostname=hostname, health_status=health)


__all__ = ["load_envoy", "load_envoy_yaml", "load_envoy_json", "bootstrap_from_data", "config_source",
           "load_assignment"]
