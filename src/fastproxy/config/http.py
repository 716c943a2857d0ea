"""Envoy's http_connection_manager network filter -> fastproxy.http.model.

Reads the typed_config of ``envoy.filters.network.http_connection_manager`` (HCM) with its
inline ``route_config``, the same strict way as the rest of the loader: every field outside
the supported subset is an error naming its path, defaults are Envoy's, and what Envoy
itself rejects at load time (duplicate domains, headers that may not be modified, a
direct response body over the limit, ...) is rejected here too, with the field's path.

Choices where Envoy and fastproxy differ, or where Envoy leaves room:

* codec_type: AUTO (HTTP/2 for a client that opens with the HTTP/2 preface or picks h2 by
  ALPN, HTTP/1.1 otherwise), HTTP1 and HTTP2; HTTP3 is refused. http2_protocol_options:
  every field of Envoy 1.40 with its defaults (fastproxy.http.Http2ProtocolOptions), but
  allow_metadata, custom_settings_parameters, use_oghttp2_codec true and
  enable_huffman_encoding false, which are refused (nghttp2 is the codec).
* http_filters must end with envoy.filters.http.router. An empty list is an error: Envoy
  1.40 accepts it but then answers no request at all. Other filters are "not supported yet";
  ``HTTP_FILTERS`` below is where they plug in.
* common_http_protocol_options.headers_with_underscores_action: ALLOW, DROP_HEADER and
  REJECT_REQUEST, as Envoy 1.40 (see docs/http1-policy.md, "Connection manager options").
* normalize_path, merge_slashes, path_with_escaped_slashes_action (IMPLEMENTATION_SPECIFIC_
  DEFAULT is Envoy 1.40's KEEP_UNCHANGED), strip_matching_host_port / strip_any_host_port
  (one of them), via, skip_xff_append, preserve_external_request_id and
  always_set_request_id_in_response behave as in Envoy 1.40 (docs/http1-policy.md).
  add_user_agent: true is refused: it needs the node's service cluster, which fastproxy's
  bootstrap does not carry (false is accepted).
* Every response without a Date gets one, as in Envoy (no option).
* Header values (``*_headers_to_add``) are literal: ``%%`` is a percent sign, Envoy's
  ``%COMMAND%`` substitutions are not supported yet. An entry whose value is empty is
  dropped unless keep_empty_value is set (Envoy adds nothing for it either).
* Header names are lower-cased, as Envoy does; they must be RFC 9110 tokens (Envoy only
  forbids control characters; a name with a space could never be sent or matched).
* Domains: "*", "*<suffix>", "<prefix>*" and exact names. A '*' anywhere else (which Envoy
  takes literally) and an empty domain are errors. Duplicates are found ignoring case, in
  one virtual host or across them, like Envoy.
* Weighted clusters: a cluster of weight 0 never receives traffic, so it is checked (it must
  exist) and then left out of the model; the model's weights are all >= 1. The deprecated
  total_weight is accepted only when it equals the sum of the weights.
* Regexes are RE2 in the model; they must translate to POSIX (see config/regex.py).
  case_sensitive is ignored by Envoy for a safe_regex path match, so the model gets True.
* redirect.port_redirect must be a port (<= 65535), path_redirect must start with '/',
  scheme_redirect must be a URI scheme.
* Router.suppress_envoy_headers (HttpConnectionManager.suppress_envoy_headers in the
  model): the x-envoy-* headers the router adds (expected-rq-timeout-ms, original-path,
  original-host on requests, upstream-service-time on responses) are left out.
* http_protocol_options: accept_http_10 (HTTP/1.0 requests get 426 without it, as in Envoy)
  and default_host_for_http_10 (the Host of an HTTP/1.0 request that has none).
* Access log formats are compiled at load time (fastproxy/access_log.py): an operator
  fastproxy does not support is an error naming the field that holds the format.
* upgrade_configs: CONNECT (with routes matching by connect_matcher) and websocket; other
  upgrade types and per-upgrade filters are errors. An upgrade (or CONNECT) that no
  upgrade_configs entry enables is answered 403, as in Envoy.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from ..access_log import compile_format
from ..errors import ConfigError
from ..http import model as mh
from ..validation import (APPEND_ACTIONS, HEADERS_WITH_UNDERSCORES_ACTIONS, MAX_PORT, PATH_WITH_ESCAPED_SLASHES_ACTIONS,
                          SERVER_HEADER_TRANSFORMATIONS, check_domain, check_header_name, check_header_value,
                          check_host_value, check_modifiable, check_path_separated_prefix, check_redirect_host,
                          check_scheme, literal_header_value)
from .http_common import (_REGEX_FIELDS, HttpFilterKind, _any, _bool, _header_matcher, _oneof, _present,
                          _query_matcher, _regex, _timeout)
from .proto import UINT32_MAX, Message, checked, describe, unsupported_field
from .regex import rewrite_to_posix
from .retry import ROUTE_RETRY_FIELDS, VHOST_RETRY_FIELDS, route_retry, vhost_retry
from .route_hash import ROUTE_HASH_FIELDS, route_hash_policy
from .mirror import ROUTE_MIRROR_FIELDS, route_mirrors

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"

# Envoy's enums, name -> number.
CODEC_TYPES = {"AUTO": 0, "HTTP1": 1, "HTTP2": 2, "HTTP3": 3}
REDIRECT_RESPONSE_CODES = {"MOVED_PERMANENTLY": 0, "FOUND": 1, "SEE_OTHER": 2, "TEMPORARY_REDIRECT": 3,
                           "PERMANENT_REDIRECT": 4}
REDIRECT_STATUS = {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307,
                   "PERMANENT_REDIRECT": 308}

# Envoy's defaults and limits.
DEFAULT_STREAM_IDLE_TIMEOUT = 300.0
DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_DRAIN_TIMEOUT = 5.0
DEFAULT_ROUTE_TIMEOUT = 15.0
DEFAULT_MAX_HEADERS_COUNT = 100
DEFAULT_MAX_REQUEST_HEADERS_KB = 60
MAX_REQUEST_HEADERS_KB = 8192
DEFAULT_MAX_DIRECT_RESPONSE_BODY = 4096

PATH_SPECIFIERS = mh.PATH_SPECIFIERS
HEADER_MUTATION_FIELDS = ("request_headers_to_add", "request_headers_to_remove",
                          "response_headers_to_add", "response_headers_to_remove")

# (cluster name, path of the field naming it): checked against the bootstrap's clusters.
ClusterRefs = List[Tuple[str, str]]


# --- the connection manager ---------------------------------------------------------------

_HCM_FIELDS = ("stat_prefix", "codec_type", "http2_protocol_options", "route_config", "rds", "scoped_routes", "http_filters",
               "server_name", "server_header_transformation", "use_remote_address", "xff_num_trusted_hops", "internal_address_config",
               "generate_request_id", "via", "skip_xff_append", "preserve_external_request_id",
               "always_set_request_id_in_response", "normalize_path", "merge_slashes",
               "path_with_escaped_slashes_action", "strip_matching_host_port", "strip_any_host_port",
               "add_user_agent",
               "request_headers_timeout", "stream_idle_timeout", "request_timeout", "drain_timeout",
               "common_http_protocol_options", "max_request_headers_kb", "http_protocol_options", "access_log",
               "upgrade_configs", "forward_client_cert_details", "set_current_client_cert_details")


def http_connection_manager(config: Mapping, path: str, config_source: Optional[Callable] = None
                            ) -> Tuple[mh.HttpConnectionManager, ClusterRefs]:
    """``config`` is the HCM typed_config (with its "@type"), ``path`` its path. Returns the
    model and the clusters its routes name (the caller checks they exist). ``config_source``
    (message, field name) -> fastproxy.model.ConfigSource reads rds.config_source (the Envoy
    loader's, which reads lds_config and cds_config: config/envoy.py)."""
    hcm = Message(config, path, _HCM_FIELDS, ignore=("@type",))
    stat_prefix = hcm.string("stat_prefix", required=True, non_empty=True)
    codec = hcm.enum("codec_type", CODEC_TYPES, default="AUTO")
    if codec == "HTTP3":
        # The words of http3_protocol_options: the same feature.
        raise unsupported_field(hcm.at("codec_type"), "http3_protocol_options",
                                fix="codec_type HTTP3: use AUTO, HTTP1 or HTTP2")
    h2_options = http2_protocol_options(hcm.message("http2_protocol_options", _H2_FIELDS))
    if _present(hcm, "scoped_routes"):
        raise unsupported_field(hcm.at("scoped_routes"), "scoped_routes",
                                fix="give the route table inline as route_config, or by rds")
    refs: ClusterRefs = []
    route_config, rds = None, None
    if _oneof(hcm, ("route_config", "rds")) == "rds":
        rds = _rds(hcm, config_source)
    else:
        rc = hcm.message("route_config", _ROUTE_CONFIG_FIELDS)
        if rc is None:
            raise ConfigError(hcm.at("route_config"), "required field is missing (one of route_config and "
                                                      "rds is required)")
        route_config = _route_config(rc, refs)
    router = [None]
    http_filters = _http_filters(hcm, router)
    if route_config is not None:
        _per_filter_configs(route_config, http_filters)

    server_name = hcm.string("server_name", default="")
    kb = hcm.uint32("max_request_headers_kb", default=DEFAULT_MAX_REQUEST_HEADERS_KB, minimum=1)
    if kb > MAX_REQUEST_HEADERS_KB:
        raise ConfigError(hcm.at("max_request_headers_kb"), f"must be 1..{MAX_REQUEST_HEADERS_KB}, got {kb}")

    options = dict(idle_timeout=DEFAULT_IDLE_TIMEOUT, max_requests_per_connection=None,
                   max_headers_count=DEFAULT_MAX_HEADERS_COUNT)
    common = hcm.message("common_http_protocol_options",
                         ("idle_timeout", "max_requests_per_connection", "max_headers_count",
                          "headers_with_underscores_action"))
    if common is not None:
        options["idle_timeout"] = _timeout(common, "idle_timeout", DEFAULT_IDLE_TIMEOUT)
        options["max_requests_per_connection"] = common.uint32("max_requests_per_connection", default=0) or None
        options["max_headers_count"] = common.uint32("max_headers_count", default=DEFAULT_MAX_HEADERS_COUNT,
                                                     minimum=1)
        options["headers_with_underscores_action"] = common.enum(
            "headers_with_underscores_action", HEADERS_WITH_UNDERSCORES_ACTIONS, default="ALLOW")
    http1 = hcm.message("http_protocol_options", ("accept_http_10", "default_host_for_http_10"))
    if http1 is not None:
        options["accept_http_10"] = _bool(http1, "accept_http_10")
        host10 = http1.string("default_host_for_http_10", default="")
        if host10:
            check_host_value(host10, http1.at("default_host_for_http_10"))
            options["default_host_for_http_10"] = host10

    if _bool(hcm, "add_user_agent"):
        raise ConfigError(hcm.at("add_user_agent"), "add_user_agent is not supported (Envoy sets user-agent and "
                                                    "x-envoy-downstream-service-cluster from node.cluster, which "
                                                    "fastproxy does not carry); leave it unset or false")
    via = hcm.string("via", default="")
    check_header_value(via, hcm.at("via"))
    strip = _oneof(hcm, ("strip_matching_host_port", "strip_any_host_port"))
    if strip is not None and _bool(hcm, strip):
        options["strip_host_port"] = "MATCHING" if strip == "strip_matching_host_port" else "ANY"
    escaped = hcm.enum("path_with_escaped_slashes_action", PATH_WITH_ESCAPED_SLASHES_ACTIONS,
                       default="IMPLEMENTATION_SPECIFIC_DEFAULT")
    manager = mh.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=codec,
        http2_protocol_options=h2_options,
        via=via,
        skip_xff_append=_bool(hcm, "skip_xff_append"),
        preserve_external_request_id=_bool(hcm, "preserve_external_request_id"),
        always_set_request_id_in_response=_bool(hcm, "always_set_request_id_in_response"),
        normalize_path=_bool(hcm, "normalize_path"),
        merge_slashes=_bool(hcm, "merge_slashes"),
        # Envoy 1.40's IMPLEMENTATION_SPECIFIC_DEFAULT is KEEP_UNCHANGED (checked).
        path_with_escaped_slashes_action="KEEP_UNCHANGED" if escaped == "IMPLEMENTATION_SPECIFIC_DEFAULT"
        else escaped,
        route_config=route_config,
        rds=rds,
        server_name=server_name or mh.HttpConnectionManager.server_name,
        server_header_transformation=hcm.enum("server_header_transformation", SERVER_HEADER_TRANSFORMATIONS,
                                              default="OVERWRITE"),
        use_remote_address=_bool(hcm, "use_remote_address"),
        xff_num_trusted_hops=hcm.uint32("xff_num_trusted_hops", default=0),
        internal_address_config=_internal_address_config(hcm),
        generate_request_id=_bool(hcm, "generate_request_id", default=True),
        suppress_envoy_headers=bool(router[0] and router[0].suppress_envoy_headers),
        request_headers_timeout=_timeout(hcm, "request_headers_timeout", None),
        stream_idle_timeout=_timeout(hcm, "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT),
        request_timeout=_timeout(hcm, "request_timeout", None),
        max_request_headers_kb=kb,
        drain_timeout=hcm.duration("drain_timeout", default=DEFAULT_DRAIN_TIMEOUT),
        access_log=[access_log(item, ipath) for item, ipath in hcm.repeated("access_log")],
        http_filters=http_filters,
        upgrade_configs=[_upgrade_config(item, upath) for item, upath in hcm.repeated("upgrade_configs")],
        forward_client_cert_details=hcm.enum("forward_client_cert_details",
                                             {n: i for i, n in enumerate(mh.FORWARD_CLIENT_CERT_DETAILS)},
                                             default="SANITIZE"),
        set_current_client_cert_details=_client_cert_details(hcm),
        **options,
    )
    return manager, refs


# --- HTTP/2 options (a connection manager's, a cluster's) ---------------------------------

_H2_FIELDS = ("hpack_table_size", "max_concurrent_streams", "initial_stream_window_size",
              "initial_connection_window_size", "allow_connect", "allow_metadata", "max_outbound_frames",
              "max_outbound_control_frames", "max_consecutive_inbound_frames_with_empty_payload",
              "max_inbound_priority_frames_per_stream", "max_inbound_window_update_frames_per_data_frame_sent",
              "stream_error_on_invalid_http_messaging", "override_stream_error_on_invalid_http_message",
              "custom_settings_parameters", "connection_keepalive", "use_oghttp2_codec", "max_metadata_size",
              "enable_huffman_encoding")
# (field, lowest, highest): Envoy's proto ranges (UInt32Values otherwise unbounded).
_H2_UINT32 = (("hpack_table_size", 0, UINT32_MAX),
              ("max_concurrent_streams", 1, mh.H2_MAX_31),
              ("initial_stream_window_size", mh.H2_MIN_WINDOW_SIZE, mh.H2_MAX_31),
              ("initial_connection_window_size", mh.H2_MIN_WINDOW_SIZE, mh.H2_MAX_31),
              ("max_outbound_frames", 1, UINT32_MAX),
              ("max_outbound_control_frames", 1, UINT32_MAX),
              ("max_consecutive_inbound_frames_with_empty_payload", 0, UINT32_MAX),
              ("max_inbound_priority_frames_per_stream", 0, UINT32_MAX),
              ("max_inbound_window_update_frames_per_data_frame_sent", 1, UINT32_MAX))


def http2_protocol_options(msg: Optional[Message]) -> mh.Http2ProtocolOptions:
    """config.core.v3.Http2ProtocolOptions (``msg`` of _H2_FIELDS; None: all defaults, as
    Envoy's). What fastproxy does not build is refused with its path: allow_metadata,
    custom_settings_parameters, use_oghttp2_codec (nghttp2 is the codec) and
    enable_huffman_encoding false."""
    if msg is None:
        return mh.Http2ProtocolOptions()
    kwargs: dict = {}
    for name, low, high in _H2_UINT32:
        value = msg.uint32(name)
        if value is None:
            continue
        if not low <= value <= high:
            raise ConfigError(msg.at(name), f"must be {low}..{high}, got {value}")
        kwargs[name] = value
    kwargs["stream_error_on_invalid_http_messaging"] = _bool(msg, "stream_error_on_invalid_http_messaging")
    if _present(msg, "override_stream_error_on_invalid_http_message"):
        kwargs["override_stream_error_on_invalid_http_message"] = _bool(
            msg, "override_stream_error_on_invalid_http_message")
    for name, refused, why in (("allow_connect", True, "extended CONNECT (RFC 8441) is not built"),
                               ("allow_metadata", True, "METADATA frames are not supported"),
                               ("use_oghttp2_codec", True, "fastproxy's HTTP/2 codec is nghttp2"),
                               ("enable_huffman_encoding", False,
                                "nghttp2 always Huffman-encodes where that is shorter")):
        if _present(msg, name) and _bool(msg, name) is refused:
            raise ConfigError(msg.at(name), f"{name}: {str(refused).lower()} is not supported ({why}); "
                                            f"remove it")
    # Envoy takes the limit on METADATA frames; with none accepted it holds trivially.
    msg.uint32("max_metadata_size")
    for _item, ipath in msg.repeated("custom_settings_parameters"):
        raise ConfigError(ipath, "custom SETTINGS parameters are not supported; remove "
                                 "custom_settings_parameters (the named fields set the standard ones)")
    kwargs["connection_keepalive"] = _keepalive(msg.message(
        "connection_keepalive", ("interval", "timeout", "interval_jitter", "connection_idle_interval")))
    return mh.Http2ProtocolOptions(**kwargs)


def _keepalive(msg: Optional[Message]) -> Optional[mh.KeepaliveSettings]:
    """config.core.v3.KeepaliveSettings: timeout required; each duration >= 1ms (Envoy's
    rules); interval_jitter a type.v3.Percent (default 15)."""
    if msg is None:
        return None
    out: dict = {}
    for name in ("timeout", "interval", "connection_idle_interval"):
        value = msg.duration(name, required=name == "timeout")
        if value is not None and value < mh.H2_MIN_KEEPALIVE:
            raise ConfigError(msg.at(name), f"must be at least 1ms, got {value}s")
        out[name] = value
    jitter = msg.message("interval_jitter", ("value",))
    if jitter is not None:
        value = jitter.raw("value", 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ConfigError(jitter.at("value"), f"expected a percentage 0..100, got {describe(value)}")
        out["interval_jitter"] = float(value)
    return mh.KeepaliveSettings(**out)


def _client_cert_details(hcm: Message) -> Optional[mh.SetCurrentClientCertDetails]:
    """set_current_client_cert_details (subject is a BoolValue in Envoy's proto, the rest bools)."""
    msg = hcm.message("set_current_client_cert_details", ("subject", "cert", "chain", "dns", "uri"))
    if msg is None:
        return None
    return mh.SetCurrentClientCertDetails(**{name: _bool(msg, name) for name in
                                             ("subject", "cert", "chain", "dns", "uri")})


def _internal_address_config(hcm: Message) -> Optional[mh.InternalAddressConfig]:
    """HttpConnectionManager.internal_address_config: cidr_ranges as "prefix/len" strings."""
    msg = hcm.message("internal_address_config", ("unix_sockets", "cidr_ranges"))
    if msg is None:
        return None
    cidrs = []
    for item, ipath in msg.repeated("cidr_ranges"):
        r = Message(item, ipath, ("address_prefix", "prefix_len"))
        prefix = r.string("address_prefix", required=True, non_empty=True)
        length = r.uint32("prefix_len", default=0)
        text = f"{prefix}/{length}"
        mh.parse_cidr(text, ipath)
        cidrs.append(text)
    return mh.InternalAddressConfig(cidr_ranges=cidrs, unix_sockets=_bool(msg, "unix_sockets"))


# --- HTTP filters -------------------------------------------------------------------------

@dataclass
class _RouterConfig:
    suppress_envoy_headers: bool


def _router(config: Message) -> _RouterConfig:
    # Only suppress_envoy_headers is accepted (the model keeps it on the connection manager).
    return _RouterConfig(_bool(config, "suppress_envoy_headers"))


HTTP_FILTERS = {
    ROUTER_TYPE: HttpFilterKind(terminal=True, fields=("suppress_envoy_headers",), parse=_router),
}


# Extensions without a compiled-in schema (Python and C filters) come as a TypedStruct
# whose type_url says which. Each has its own HttpFilterKind (so its per-route config is
# read by the same extension); the TypedStruct entry in HTTP_FILTERS dispatches to them.
_TYPED_STRUCTS = ("type.googleapis.com/xds.type.v3.TypedStruct", "type.googleapis.com/udpa.type.v1.TypedStruct")


def _typed_struct_kinds() -> dict:
    from .c_filter import C_HTTP_FILTER_TYPE_URL, c_http_filter, c_http_filter_route_config
    from .python_filter import (PYTHON_HTTP_FILTER_TYPE_URL, python_http_filter,
                                python_http_filter_route_config)

    def kind(parse, per_route):
        return HttpFilterKind(terminal=False, fields=("type_url", "value"), parse=parse, per_route=per_route,
                              per_route_fields=("type_url", "value"), per_route_types=_TYPED_STRUCTS)
    return {PYTHON_HTTP_FILTER_TYPE_URL: kind(python_http_filter, python_http_filter_route_config),
            C_HTTP_FILTER_TYPE_URL: kind(c_http_filter, c_http_filter_route_config)}


def _typed_struct_filter(config: Message):
    kinds = _typed_struct_kinds()
    type_url = config.string("type_url", required=True)
    kind = kinds.get(type_url)
    if kind is None:
        raise ConfigError(config.at("type_url"),
                          f"unsupported HTTP filter {type_url!r} in a TypedStruct (fastproxy supports "
                          f"{', '.join(repr(k) for k in kinds)})")
    result = kind.parse(config)
    result._kind = kind
    return result


for _t in _TYPED_STRUCTS:
    HTTP_FILTERS[_t] = HttpFilterKind(terminal=False, fields=("type_url", "value"), parse=_typed_struct_filter)
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def _http_filters(hcm: Message, router: Optional[list] = None) -> list:
    """Reads http_filters; returns the (non-terminal) filters for the model, in order.
    ``router[0]`` gets the router's _RouterConfig."""
    if router is None:
        router = [None]
    entries = list(hcm.repeated("http_filters"))
    if not entries:
        raise ConfigError(hcm.at("http_filters"), "the HTTP filter chain must end with envoy.filters.http.router "
                                                  f"({ROUTER_TYPE}); Envoy does not add it by itself")
    filters = []
    names = {}
    for index, (item, path) in enumerate(entries):
        entry = Message(item, path, ("name", "typed_config", "is_optional", "disabled"))
        name = entry.string("name", required=True, non_empty=True)
        if name in names:
            raise ConfigError(entry.at("name"), f"duplicate HTTP filter name {name!r} (also {names[name]})")
        names[name] = entry.at("name")
        _bool(entry, "is_optional")     # Envoy skips an optional filter it lacks (e.g. a Python one)
        if _bool(entry, "disabled"):
            raise ConfigError(entry.at("disabled"), "disabled HTTP filters are not supported")
        type_url, value, tpath = _any(entry, "typed_config")
        kind = HTTP_FILTERS.get(type_url)
        if kind is None:
            supported = ", ".join(sorted(t.rsplit("/", 1)[-1] for t in HTTP_FILTERS))
            raise ConfigError(tpath + ".@type", f"HTTP filter {type_url!r} is not supported (fastproxy "
                                                f"supports {supported})")
        last = index == len(entries) - 1
        if kind.terminal and not last:
            raise ConfigError(tpath, f"{type_url} is a terminal filter and must be the last HTTP filter")
        if last and not kind.terminal:
            raise ConfigError(tpath + ".@type", "the last HTTP filter must be envoy.filters.http.router "
                                                f"({ROUTER_TYPE}), got {type_url!r}")
        result = kind.parse(Message(value, tpath, kind.fields, ignore=("@type",)))
        if isinstance(result, _RouterConfig):
            router[0] = result
        if not kind.terminal:
            result.name = name
            if getattr(result, "_kind", None) is None:      # a TypedStruct kind sets its own
                result._kind = kind
            filters.append(result)
    return filters


def _per_filter_configs(rc: mh.RouteConfiguration, filters: list) -> None:
    """Parse the typed_per_filter_config the route walk kept raw, now that the filters
    (and so the kinds of their configs) are known."""
    by_name = {f.name: f for f in filters}

    def parse(obj):
        raw = obj.typed_per_filter_config
        out = {}
        for name, (value, path) in raw.items():
            optional = False
            type_url = value.get("@type") if isinstance(value, Mapping) else None
            if type_url == FILTER_CONFIG_TYPE:
                wrapper = Message(value, path, ("config", "is_optional", "disabled"), ignore=("@type",))
                optional = _bool(wrapper, "is_optional")
                if _bool(wrapper, "disabled"):
                    raise ConfigError(wrapper.at("disabled"), "disabling a filter per route is not supported")
                type_url, value, path = _any(wrapper, "config")
            spec = by_name.get(name)
            if spec is None:
                if optional:
                    continue
                raise ConfigError(path, f"no HTTP filter named {name!r} in http_filters")
            kind = spec._kind
            if kind.per_route is None:
                raise ConfigError(path, f"HTTP filter {name!r} takes no per-route config")
            if kind.per_route_types and type_url not in kind.per_route_types:
                raise ConfigError(path + ".@type", f"expected one of {', '.join(kind.per_route_types)}, "
                                                   f"got {type_url!r}")
            out[name] = kind.per_route(Message(value, path, kind.per_route_fields, ignore=("@type",)))
        obj.typed_per_filter_config = out

    parse(rc)
    for vh in rc.virtual_hosts:
        parse(vh)
        for r in vh.routes:
            parse(r)
def _rds(hcm: Message, config_source: Optional[Callable]) -> mh.Rds:
    """rds: the route configuration's name and where it comes from (a ConfigSource read as
    the bootstrap's lds_config / cds_config are)."""
    rds = hcm.message("rds", ("route_config_name", "config_source"), required=True)
    name = rds.string("route_config_name", required=True, non_empty=True)
    if config_source is None:
        raise ConfigError(rds.at("config_source"), "rds is read only within a bootstrap or a listener")
    source = config_source(rds, "config_source")
    if source is None:
        raise ConfigError(rds.at("config_source"), "required field is missing")
    return mh.Rds(route_config_name=name, config_source=source)


def route_configuration(config: Mapping, path: str, http_filters: Optional[list] = None) -> mh.RouteConfiguration:
    """A RouteConfiguration resource (RDS): ``config`` without "@type" checks, ``path`` its
    path. Its clusters need not exist (RDS's validate_clusters defaults to false: a route
    to a missing cluster is answered 503). ``http_filters``: the filters of a connection
    manager whose per-route configs it may hold (the model's HTTP filter specs); without
    them a typed_per_filter_config is refused."""
    rc = Message(config, path, _ROUTE_CONFIG_FIELDS, ignore=("@type",))
    route_config = _route_config(rc, [])
    _per_filter_configs(route_config, list(http_filters or []))
    return route_config


def _upgrade_config(item: Any, path: str) -> mh.UpgradeConfig:
    msg = Message(item, path, ("upgrade_type", "filters", "enabled"))
    upgrade_type = msg.string("upgrade_type", required=True, non_empty=True)
    if upgrade_type.lower() not in ("connect", "websocket"):
        raise ConfigError(msg.at("upgrade_type"), f"upgrade type {upgrade_type!r} is not supported "
                                                  "(fastproxy supports CONNECT and websocket)")
    if list(msg.repeated("filters")):
        raise ConfigError(msg.at("filters"), "per-upgrade filter chains are not supported")
    return mh.UpgradeConfig(upgrade_type, _bool(msg, "enabled", default=True))


# --- access logs --------------------------------------------------------------------------

_ACCESS_LOG_PATHS = {STDOUT_ACCESS_LOG_TYPE: "/dev/stdout", STDERR_ACCESS_LOG_TYPE: "/dev/stderr"}


def access_log(item: Any, path: str) -> mh.AccessLog:
    """An access_log entry (of the HTTP connection manager or the admin)."""
    entry = Message(item, path, ("name", "typed_config"))
    entry.string("name")
    type_url, value, tpath = _any(entry, "typed_config")
    if type_url == FILE_ACCESS_LOG_TYPE:
        config = Message(value, tpath, ("path", "log_format", "format"), ignore=("@type",))
        log_path = config.string("path", required=True, non_empty=True)
    elif type_url in _ACCESS_LOG_PATHS:
        config = Message(value, tpath, ("log_format",), ignore=("@type",))
        log_path = _ACCESS_LOG_PATHS[type_url]
    else:
        raise ConfigError(tpath + ".@type", f"unsupported access logger {type_url!r} (fastproxy supports the "
                                            "file, stdout and stderr access loggers)")
    form = _oneof(config, ("log_format", "format"))
    if form == "format":  # the deprecated plain string; empty means Envoy's default format
        fmt, fpath = config.string("format") or None, config.at("format")
    elif form is None:
        fmt, fpath = None, tpath
    else:
        log_format = config.message("log_format", ("text_format_source", "text_format"))
        source = _oneof(log_format, ("text_format_source", "text_format"), required=True)
        if source == "text_format":
            fmt, fpath = log_format.string("text_format"), log_format.at("text_format")
        else:
            data = log_format.message("text_format_source", ("inline_string",))
            fmt, fpath = data.string("inline_string", required=True), data.at("inline_string")
    compile_format(fmt, fpath)  # unknown operators are errors naming this field
    return mh.AccessLog(log_path, fmt)


# --- route configuration ------------------------------------------------------------------

_ROUTE_CONFIG_FIELDS = ("name", "virtual_hosts", "max_direct_response_body_size_bytes",
                        "typed_per_filter_config", "ignore_port_in_host_matching") + HEADER_MUTATION_FIELDS


class _Context:
    """What the route table walk carries along: cluster references, the body size limit."""

    def __init__(self, refs: ClusterRefs, max_body: int):
        self.refs = refs
        self.max_body = max_body


def _route_config(rc: Message, refs: ClusterRefs) -> mh.RouteConfiguration:
    ctx = _Context(refs, rc.uint32("max_direct_response_body_size_bytes", default=DEFAULT_MAX_DIRECT_RESPONSE_BODY))
    virtual_hosts = []
    domains: dict = {}  # lower-cased domain -> path of its first use
    for item, path in rc.repeated("virtual_hosts"):
        vhost = checked(_virtual_host, item, path, ctx, domains)   # the next ones are still checked
        if vhost is not None:
            virtual_hosts.append(vhost)
    return mh.RouteConfiguration(name=rc.string("name", default=""), virtual_hosts=virtual_hosts,
                                 headers=_header_mutations(rc), typed_per_filter_config=_raw_per_filter(rc),
                                 ignore_port_in_host_matching=_bool(rc, "ignore_port_in_host_matching"))


def _virtual_host(item: Any, path: str, ctx: _Context, seen: dict) -> mh.VirtualHost:
    if type(item) is dict and item.keys() <= _PLAIN_VHOST_FIELDS and type(item.get("name")) is str \
            and item["name"] and type(item.get("domains")) is list and type(item.get("routes", [])) is list:
        # The usual virtual host (a name, domains, routes): the same checks in the same
        # order, without the generic Message walk (an RDS push of 1,000 of them).
        domains = []
        for i, domain in enumerate(item["domains"]):
            _domain(domain, f"{path}.domains[{i}]", seen)
            domains.append(domain)
        if not domains:
            raise ConfigError(f"{path}.domains", "at least one domain is required")
        routes = [r for r in (checked(_route, ritem, f"{path}.routes[{i}]", ctx)
                              for i, ritem in enumerate(item.get("routes", []))) if r is not None]
        return mh.VirtualHost(name=item["name"], domains=domains, routes=routes)
    vh = Message(item, path, ("name", "domains", "routes", "typed_per_filter_config") + HEADER_MUTATION_FIELDS
                 + VHOST_RETRY_FIELDS)
    name = vh.string("name", required=True, non_empty=True)
    domains = []
    for domain, dpath in vh.repeated("domains"):
        _domain(domain, dpath, seen)
        domains.append(domain)
    if not domains:
        raise ConfigError(vh.at("domains"), "at least one domain is required")
    routes = [r for r in (checked(_route, ritem, rpath, ctx) for ritem, rpath in vh.repeated("routes"))
              if r is not None]
    return mh.VirtualHost(name=name, domains=domains, routes=routes, headers=_header_mutations(vh),
                          typed_per_filter_config=_raw_per_filter(vh), **vhost_retry(vh))


_PLAIN_VHOST_FIELDS = frozenset(("name", "domains", "routes"))


def _domain(domain: Any, dpath: str, seen: dict) -> None:
    """One of a virtual host's domains: valid, and in no other virtual host of the table
    (``seen``: lower-cased domain -> the path of its first use, updated)."""
    if not isinstance(domain, str):
        raise ConfigError(dpath, f"expected a string, got {describe(domain)}")
    check_domain(domain, dpath)
    key = domain.lower()
    if key in seen:
        if key == "*":
            raise ConfigError(dpath, f"only one virtual host may use the wildcard domain '*' "
                                     f"(already in {seen[key]})")
        raise ConfigError(dpath, f"duplicate domain {domain!r} (already in {seen[key]}): domains must be "
                                 "unique across virtual hosts")
    seen[key] = dpath


def _route(item: Any, path: str, ctx: _Context) -> mh.Route:
    plain = _plain_route(item, path, ctx)
    if plain is not None:
        return plain
    msg = Message(item, path, ("name", "match", "route", "redirect", "direct_response", "typed_per_filter_config")
                  + HEADER_MUTATION_FIELDS)
    name = msg.string("name", default="")
    match = _route_match(msg.message("match", _MATCH_FIELDS, required=True))
    action = _oneof(msg, ("route", "redirect", "direct_response"), required=True)
    route = redirect = direct = None
    if action == "route":
        route = _route_action(msg.message("route", _ROUTE_ACTION_FIELDS), ctx)
    elif action == "redirect":
        redirect = _redirect(msg.message("redirect", _REDIRECT_FIELDS))
    else:
        direct = _direct_response(msg.message("direct_response", ("status", "body")), ctx)
    return mh.Route(match=match, route=route, redirect=redirect, direct_response=direct, name=name,
                    headers=_header_mutations(msg), typed_per_filter_config=_raw_per_filter(msg))


def _plain_route(item: Any, path: str, ctx: _Context) -> Optional[mh.Route]:
    """The route most route tables are made of ({match: {prefix or path}, route: {cluster}},
    a name perhaps), valid, read with plain dict lookups: an RDS push of 1,000 virtual
    hosts spent most of its time in the generic Message walk. None for anything else,
    valid or not: the generic reading decides, naming the field. The result is the one
    the generic reading gives (tests/config/test_route_config.py compares them)."""
    if type(item) is not dict or not item.keys() <= _PLAIN_ROUTE_FIELDS:
        return None
    match, action, name = item.get("match"), item.get("route"), item.get("name", "")
    if type(match) is not dict or len(match) != 1 or type(action) is not dict or len(action) != 1 \
            or type(name) is not str:
        return None
    kind, value = next(iter(match.items()))
    cluster = action.get("cluster")
    if kind not in ("prefix", "path") or type(value) is not str or type(cluster) is not str or not cluster:
        return None
    ctx.refs.append((cluster, f"{path}.route.cluster"))
    return mh.Route(match=mh.RouteMatch(**{kind: value}), route=mh.RouteAction(cluster=cluster, timeout=DEFAULT_ROUTE_TIMEOUT),
                    name=name)


_PLAIN_ROUTE_FIELDS = frozenset(("name", "match", "route"))


def _raw_per_filter(msg: Message) -> dict:
    """typed_per_filter_config as {filter name: (Any mapping, path)}, parsed later."""
    raw = msg.mapping("typed_per_filter_config")
    out = {}
    for name, value in (raw or {}).items():
        path = f"{msg.at('typed_per_filter_config')}.{name}"
        if not isinstance(value, Mapping) or not isinstance(value.get("@type"), str):
            raise ConfigError(path, "expected an Any with an '@type'")
        out[name] = (value, path)
    return out


# --- matching -----------------------------------------------------------------------------

_MATCH_FIELDS = PATH_SPECIFIERS + ("connect_matcher", "case_sensitive", "headers", "query_parameters")


def _route_match(m: Message) -> mh.RouteMatch:
    kind = _oneof(m, PATH_SPECIFIERS + ("connect_matcher",), required=True)
    values = dict.fromkeys(PATH_SPECIFIERS)
    if kind == "connect_matcher":
        m.message("connect_matcher", ())
        values = {"connect_matcher": True}
    elif kind == "safe_regex":
        values[kind] = _regex(m.message("safe_regex", _REGEX_FIELDS))
    else:
        values[kind] = m.string(kind)
        if kind == "path_separated_prefix":
            check_path_separated_prefix(values[kind], m.at(kind))
    case_sensitive = _bool(m, "case_sensitive", default=True)
    if kind == "safe_regex":
        case_sensitive = True  # Envoy ignores case_sensitive for safe_regex
    return mh.RouteMatch(
        case_sensitive=case_sensitive,
        headers=[_header_matcher(item, path) for item, path in m.repeated("headers")],
        query_parameters=[_query_matcher(item, path) for item, path in m.repeated("query_parameters")],
        **values)


# --- actions ------------------------------------------------------------------------------

_ROUTE_ACTION_FIELDS = ("cluster", "weighted_clusters", "prefix_rewrite", "regex_rewrite",
                        "host_rewrite_literal", "auto_host_rewrite", "timeout", "max_grpc_timeout",
                        "grpc_timeout_offset", "max_stream_duration") + ROUTE_RETRY_FIELDS \
    + ROUTE_HASH_FIELDS + ROUTE_MIRROR_FIELDS
_MAX_STREAM_DURATION_FIELDS = ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")
_REDIRECT_FIELDS = ("https_redirect", "scheme_redirect", "host_redirect", "port_redirect", "path_redirect",
                    "prefix_rewrite", "regex_rewrite", "response_code", "strip_query")


def _route_action(a: Message, ctx: _Context) -> mh.RouteAction:
    target = _oneof(a, ("cluster", "weighted_clusters"), required=True)
    cluster, weighted = None, []
    if target == "cluster":
        cluster = a.string("cluster", non_empty=True)
        ctx.refs.append((cluster, a.at("cluster")))
    else:
        weighted = _weighted_clusters(a.message("weighted_clusters", ("clusters", "total_weight")), ctx)

    prefix_rewrite = a.string("prefix_rewrite", default="") or None
    if prefix_rewrite is not None:
        check_header_value(prefix_rewrite, a.at("prefix_rewrite"))
    regex_rewrite = None
    rr = a.message("regex_rewrite", ("pattern", "substitution"))
    if rr is not None:
        if prefix_rewrite is not None:
            raise ConfigError(a.at("regex_rewrite"), "only one of prefix_rewrite and regex_rewrite may be set")
        pattern = _regex(rr.message("pattern", _REGEX_FIELDS, required=True))
        substitution = rr.string("substitution", default="")
        rewrite_to_posix(pattern, substitution, rr.at("pattern.regex"), rr.at("substitution"))
        regex_rewrite = mh.RegexRewrite(pattern, substitution)

    host = _oneof(a, ("host_rewrite_literal", "auto_host_rewrite"))
    host_literal = (a.string("host_rewrite_literal", default="") or None) if host == "host_rewrite_literal" else None
    if host_literal is not None:
        check_header_value(host_literal, a.at("host_rewrite_literal"))
    return mh.RouteAction(cluster=cluster, weighted_clusters=weighted, prefix_rewrite=prefix_rewrite,
                          regex_rewrite=regex_rewrite, host_rewrite_literal=host_literal,
                          auto_host_rewrite=_bool(a, "auto_host_rewrite"),
                          timeout=_timeout(a, "timeout", DEFAULT_ROUTE_TIMEOUT),
                          # gRPC: 0s is kept (a grpc-timeout cap of 0 is "no cap", unset is
                          # "grpc-timeout is not read"), so no _timeout here.
                          max_grpc_timeout=a.duration("max_grpc_timeout"),
                          grpc_timeout_offset=a.duration("grpc_timeout_offset"),
                          max_stream_duration=_max_stream_duration(
                              a.message("max_stream_duration", _MAX_STREAM_DURATION_FIELDS)),
                          **route_retry(a), **route_hash_policy(a), **route_mirrors(a, ctx.refs))


def _max_stream_duration(m: Optional[Message]) -> Optional[mh.MaxStreamDuration]:
    """RouteAction.max_stream_duration: the grpc_timeout_* Durations as given (0s
    included), max_stream_duration's 0s is none (Envoy: "0 ... is not set")."""
    if m is None:
        return None
    out = mh.MaxStreamDuration(**{name: m.duration(name) for name in _MAX_STREAM_DURATION_FIELDS})
    if out.max_stream_duration == 0:
        out.max_stream_duration = None
    return out


def _weighted_clusters(w: Message, ctx: _Context) -> list:
    if not w.raw("clusters"):
        raise ConfigError(w.at("clusters"), "at least one cluster is required")
    clusters, total = [], 0
    for item, path in w.repeated("clusters"):
        c = Message(item, path, ("name", "weight"))
        name = c.string("name", required=True, non_empty=True)
        ctx.refs.append((name, c.at("name")))
        weight = c.uint32("weight", required=True)
        total += weight
        if total > UINT32_MAX:
            raise ConfigError(c.at("weight"), f"the sum of the weights exceeds {UINT32_MAX}")
        if weight:  # weight 0: never picked, so not in the model
            clusters.append(mh.WeightedCluster(name, weight))
    if total == 0:
        raise ConfigError(w.at("clusters"), "the sum of the weights must be greater than 0")
    declared = w.uint32("total_weight")
    if declared is not None and declared != total:
        raise ConfigError(w.at("total_weight"), f"total_weight ({declared}) is deprecated and, when given, "
                                                f"must equal the sum of the weights ({total})")
    return clusters


def _redirect(r: Message) -> mh.RedirectAction:
    _oneof(r, ("https_redirect", "scheme_redirect"))
    _oneof(r, ("path_redirect", "prefix_rewrite", "regex_rewrite"))
    scheme = r.string("scheme_redirect", default="") or None
    if scheme is not None:
        check_scheme(scheme, r.at("scheme_redirect"))
    host = r.string("host_redirect", default="") or None
    if host is not None:
        check_redirect_host(host, r.at("host_redirect"))
    port = r.uint32("port_redirect", default=0) or None
    if port is not None and port > MAX_PORT:
        raise ConfigError(r.at("port_redirect"), f"port must be 1..{MAX_PORT}, got {port}")
    path_redirect = r.string("path_redirect", default="") or None
    if path_redirect is not None:
        if not path_redirect.startswith("/"):
            raise ConfigError(r.at("path_redirect"), f"path_redirect must start with '/', got {path_redirect!r}")
        check_header_value(path_redirect, r.at("path_redirect"))
    prefix_rewrite = r.string("prefix_rewrite", default="") or None
    if prefix_rewrite is not None:
        check_header_value(prefix_rewrite, r.at("prefix_rewrite"))
    regex_rewrite = None
    rr = r.message("regex_rewrite", ("pattern", "substitution"))
    if rr is not None:
        pattern = _regex(rr.message("pattern", _REGEX_FIELDS, required=True))
        substitution = rr.string("substitution", default="")
        rewrite_to_posix(pattern, substitution, rr.at("pattern.regex"), rr.at("substitution"))
        regex_rewrite = mh.RegexRewrite(pattern, substitution)
    code = r.enum("response_code", REDIRECT_RESPONSE_CODES, default="MOVED_PERMANENTLY")
    return mh.RedirectAction(scheme_redirect=scheme, https_redirect=_bool(r, "https_redirect"),
                             host_redirect=host, port_redirect=port, path_redirect=path_redirect,
                             prefix_rewrite=prefix_rewrite, regex_rewrite=regex_rewrite,
                             response_code=REDIRECT_STATUS[code],
                             strip_query=_bool(r, "strip_query"))


def _direct_response(d: Message, ctx: _Context) -> mh.DirectResponse:
    status = d.uint32("status", required=True)
    if not 100 <= status <= 599:
        raise ConfigError(d.at("status"), f"status must be 100..599, got {status}")
    body = b""
    source = d.message("body", ("inline_string", "inline_bytes"))
    if source is not None:
        kind = _oneof(source, ("inline_string", "inline_bytes"), required=True)
        if kind == "inline_string":
            body = source.string("inline_string").encode()
        else:
            body = _base64(source.string("inline_bytes"), source.at("inline_bytes"))
        if len(body) > ctx.max_body:
            raise ConfigError(d.at("body"), f"response body size is {len(body)} bytes; maximum is {ctx.max_body} "
                                            "(raise route_config.max_direct_response_body_size_bytes)")
    return mh.DirectResponse(status=status, body=body)


def _base64(text: str, path: str) -> bytes:
    """protobuf JSON bytes: standard or URL-safe base64, padding optional."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(path, f"invalid base64: {describe(text)}") from None


# --- header mutations ---------------------------------------------------------------------

def _header_mutations(msg: Message) -> mh.HeaderMutations:
    """The four *_headers_to_add/remove fields of a route, virtual host or route config."""
    return mh.HeaderMutations(
        request_headers_to_add=_headers_to_add(msg, "request_headers_to_add"),
        request_headers_to_remove=_headers_to_remove(msg, "request_headers_to_remove"),
        response_headers_to_add=_headers_to_add(msg, "response_headers_to_add"),
        response_headers_to_remove=_headers_to_remove(msg, "response_headers_to_remove"),
    )


def _headers_to_add(msg: Message, name: str) -> list:
    options = []
    for item, path in msg.repeated(name):
        opt = Message(item, path, ("header", "append", "append_action", "keep_empty_value"))
        header = opt.message("header", ("key", "value"), required=True)
        key = header.string("key", required=True, non_empty=True)
        check_modifiable(key, header.at("key"), "modified")
        key = check_header_name(key, header.at("key"))
        value = header.string("value", default="")
        check_header_value(value, header.at("value"))
        value = literal_header_value(value, header.at("value"))
        if _present(opt, "append") and _present(opt, "append_action"):
            raise ConfigError(opt.at("append"), "both append and append_action are set (append is deprecated: "
                                                "use append_action alone)")
        if _present(opt, "append"):
            action = "APPEND_IF_EXISTS_OR_ADD" if _bool(opt, "append") else "OVERWRITE_IF_EXISTS_OR_ADD"
        else:
            action = opt.enum("append_action", APPEND_ACTIONS, default="APPEND_IF_EXISTS_OR_ADD")
        keep = _bool(opt, "keep_empty_value")
        if value or keep:  # Envoy adds nothing for an empty value otherwise
            options.append(mh.HeaderValueOption(key, value, action, keep_empty_value=keep))
    return options


def _headers_to_remove(msg: Message, name: str) -> list:
    names = []
    for item, path in msg.repeated(name):
        if not isinstance(item, str):
            raise ConfigError(path, f"expected a string, got {describe(item)}")
        if not item:
            raise ConfigError(path, "must not be empty")
        check_modifiable(item, path, "removed")
        names.append(check_header_name(item, path))
    return names


# The native HTTP filters (fault, cors, local_ratelimit, ...): config/http_filters_native.py.
from .http_filters_native import register_native_filters  # noqa: E402

register_native_filters(HTTP_FILTERS)

__all__ = ["HCM_TYPE", "ROUTER_TYPE", "HTTP_FILTERS", "HttpFilterKind", "http_connection_manager"]
