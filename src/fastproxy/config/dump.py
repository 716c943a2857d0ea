"""The model -> Envoy v3 JSON: the inverse of the loader (config/envoy.py, config/http.py) for
the fields the loader reads, and the admin's ``/config_dump`` built from it.

One source of truth: what ``/config_dump`` and ``Proxy.config_dump()`` show is written from the
model the proxy runs (never from the text it was loaded from), so a proxy built in Python
dumps the same Envoy-shaped resources as one loaded from YAML. Fields are written as proto3
JSON writes them (Envoy's ``/config_dump`` is proto3 JSON): a field at its default is left
out, durations are ``"1.500s"``, enums by name. ``load_envoy(bootstrap_json(b))`` gives back
``b`` for every bootstrap the loader can read (the sample configs are checked), except:

- a Python network filter factory other than the loader's (a class with its config) has no
  Envoy form and is written by name only;
- a C filter whose table is no longer registered under a name is written by name only.

Python and C filters are written as the loader's TypedStruct; Python and C HTTP filters are
marked ``is_optional`` (as the samples do) so that Envoy, which has neither, accepts the
dump. Fields Envoy takes and fastproxy accepts without using (a RuntimeFractionalPercent's
runtime_key, a filter chain's name, ...) are not in the model, so not written.

Dump shape (envoy.admin.v3.ConfigDump): ``{"configs": [BootstrapConfigDump,
ClustersConfigDump, ListenersConfigDump, ScopedRoutesConfigDump, RoutesConfigDump,
SecretsConfigDump]}`` in Envoy's order; ``?resource=`` and ``?mask=`` as
:func:`apply_query` documents.
"""
from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional

from .. import model
from .. import model_tls as tls
from ..http import model as mh
from ..http import native_filters as nf

# Type URLs: each has one home, in the loader that reads it.
from .envoy import (CLUSTER_TYPE, ENDPOINT_TYPE, HTTP_PROTOCOL_OPTIONS, LISTENER_TYPE, ROUTE_CONFIG_TYPE,
                    TCP_PROXY_TYPE, TLS_INSPECTOR_TYPE)
from .tls import DOWNSTREAM_TLS_TYPE, SECRET_TYPE, TLS_SOCKET, UPSTREAM_TLS_TYPE
from .http import FILE_ACCESS_LOG_TYPE, FILTER_CONFIG_TYPE, HCM_TYPE, ROUTER_TYPE

TYPE = "type.googleapis.com/"
ADMIN = TYPE + "envoy.admin.v3."


# --- proto3 JSON scalars ------------------------------------------------------------------

def duration(seconds: Optional[float]) -> str:
    """A google.protobuf.Duration as proto3 JSON writes it: 0, 3, 6 or 9 decimals ("2s",
    "0.250s"); None (the model's "disabled") is Envoy's 0s."""
    if seconds is None:
        return "0s"
    nanos = round(seconds * 1e9)
    whole, frac = divmod(nanos, 10 ** 9)
    if not frac:
        return f"{whole}s"
    for digits in (3, 6, 9):
        if frac % 10 ** (9 - digits) == 0:
            return f"{whole}.{frac // 10 ** (9 - digits):0{digits}d}s"
    return f"{seconds}s"


def timestamp(epoch: float) -> str:
    """A google.protobuf.Timestamp as Envoy's dump writes it (RFC 3339, UTC, milliseconds)."""
    t = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _socket_address(host: str, port: int) -> dict:
    # port_value is in a oneof, so proto3 JSON writes it even when 0 (as Envoy's dump does).
    return {"socket_address": {"address": host, "port_value": port}}


def _put(out: dict, key: str, value: Any, default: Any) -> None:
    if value != default:
        out[key] = value


# --- HTTP/2 options (a connection manager's, a cluster's) ---------------------------------

_H2_DEFAULTS = mh.Http2ProtocolOptions()


def http2_options_json(o: mh.Http2ProtocolOptions) -> dict:
    """A config.core.v3.Http2ProtocolOptions: the fields away from Envoy's defaults."""
    out: Dict[str, Any] = {}
    for name in ("hpack_table_size", "max_concurrent_streams", "initial_stream_window_size",
                 "initial_connection_window_size", "max_outbound_frames", "max_outbound_control_frames",
                 "max_consecutive_inbound_frames_with_empty_payload", "max_inbound_priority_frames_per_stream",
                 "max_inbound_window_update_frames_per_data_frame_sent"):
        _put(out, name, getattr(o, name), getattr(_H2_DEFAULTS, name))
    for name in ("allow_connect", "stream_error_on_invalid_http_messaging"):
        _put(out, name, getattr(o, name), False)
    if o.override_stream_error_on_invalid_http_message is not None:     # a BoolValue: set is set
        out["override_stream_error_on_invalid_http_message"] = o.override_stream_error_on_invalid_http_message
    ka = o.connection_keepalive
    if ka is not None:
        keepalive: Dict[str, Any] = {"timeout": duration(ka.timeout)}
        for name in ("interval", "connection_idle_interval"):
            if getattr(ka, name) is not None:
                keepalive[name] = duration(getattr(ka, name))
        if ka.interval_jitter != mh.H2_DEFAULT_KEEPALIVE_JITTER:
            keepalive["interval_jitter"] = {"value": ka.interval_jitter}
        out["connection_keepalive"] = keepalive
    return out


# --- clusters -----------------------------------------------------------------------------

def cluster_json(c: model.Cluster, redact: bool = False) -> dict:
    """An envoy.config.cluster.v3.Cluster (without "@type"); ``redact``: inline private
    keys as "[redacted]" (what /config_dump shows, as Envoy's)."""
    out: Dict[str, Any] = {"name": c.name}
    _put(out, "type", c.type, "STATIC")
    if c.connect_timeout != 5.0:
        out["connect_timeout"] = duration(c.connect_timeout)
    _put(out, "lb_policy", c.lb_policy, "ROUND_ROBIN")
    if c.dns_refresh_rate != model.Cluster.dns_refresh_rate:
        out["dns_refresh_rate"] = duration(c.dns_refresh_rate)
    _put(out, "dns_lookup_family", c.dns_lookup_family, "AUTO")
    limits = {"max_connections": c.max_connections, "max_pending_requests": c.max_pending_requests,
              "max_requests": c.max_requests, "max_retries": c.max_retries}
    defaults = {k: getattr(model.Cluster, k) for k in limits}
    if limits != defaults or c.track_remaining:
        threshold: Dict[str, Any] = dict(limits)
        if c.track_remaining:
            threshold["track_remaining"] = True
        out["circuit_breakers"] = {"thresholds": [threshold]}
    if c.retry_budget is not None:
        threshold = out.setdefault("circuit_breakers", {"thresholds": [{}]})["thresholds"][0]
        threshold["retry_budget"] = {"budget_percent": {"value": c.retry_budget.budget_percent},
                                     "min_retry_concurrency": c.retry_budget.min_retry_concurrency}
    common: Dict[str, Any] = {}
    if c.idle_timeout != model.Cluster.idle_timeout:
        common["idle_timeout"] = duration(c.idle_timeout)
    if c.max_requests_per_connection:
        common["max_requests_per_connection"] = c.max_requests_per_connection
    if c.max_connection_duration is not None:
        common["max_connection_duration"] = duration(c.max_connection_duration)
    auto = {k: True for k, v in (("auto_sni", c.tls is not None and c.tls.auto_sni),
                                 ("auto_san_validation", c.tls is not None and c.tls.auto_san_validation)) if v}
    if common or c.upstream_protocol != "http1" or auto:
        options: Dict[str, Any] = {"@type": TYPE + HTTP_PROTOCOL_OPTIONS}
        if common:
            options["common_http_protocol_options"] = common
        if auto:        # (Envoy's home of these two; the model keeps them in the TLS context)
            options["upstream_http_protocol_options"] = auto
        h2 = c.h2_options
        if c.upstream_protocol == "auto":
            # (auto_config's http_protocol_options has no field the model keeps)
            options["auto_config"] = {"http_protocol_options": {}, "http2_protocol_options": http2_options_json(h2)}
        elif h2 is not None:
            options["explicit_http_config"] = {"http2_protocol_options": http2_options_json(h2)}
        else:
            options["explicit_http_config"] = {"http_protocol_options": {}}
        out["typed_extension_protocol_options"] = {HTTP_PROTOCOL_OPTIONS: options}
    if c.tls is not None:
        out["transport_socket"] = transport_socket_json(c.tls, redact)
    out.update(dump_cluster_lb(c))
    if c.health_checks:
        out["health_checks"] = [health_check_json(hc) for hc in c.health_checks]
    if c.outlier_detection is not None:
        out["outlier_detection"] = outlier_detection_json(c.outlier_detection)
    if c.type == "EDS":
        # Its endpoints are EDS's (EndpointsConfigDump, ?include_eds), not the cluster's.
        eds: Dict[str, Any] = {"eds_config": config_source_json(c.eds_config)}
        _put(eds, "service_name", c.eds_service_name, "")
        out["eds_cluster_config"] = eds
        return out
    out["load_assignment"] = load_assignment_json(c.name, c.endpoints, c.overprovisioning_factor)
    return out


_HC_FILE_SINK = "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink"


def _hc_header(key: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD") -> dict:
    out: Dict[str, Any] = {"header": {"key": key, "value": value}}
    _put(out, "append_action", action, "APPEND_IF_EXISTS_OR_ADD")
    if not value:
        out["keep_empty_value"] = True  # an empty value was only kept because this was set
    return out


def health_check_json(hc) -> dict:
    """A config.core.v3.HealthCheck (fastproxy.upstream.health_check.HealthCheck)."""
    out: Dict[str, Any] = {"timeout": duration(hc.timeout), "interval": duration(hc.interval),
                           "unhealthy_threshold": hc.unhealthy_threshold,
                           "healthy_threshold": hc.healthy_threshold}
    _put(out, "name", hc.name, "")
    for name in ("interval_jitter", "initial_jitter"):
        if getattr(hc, name):
            out[name] = duration(getattr(hc, name))
    _put(out, "interval_jitter_percent", hc.interval_jitter_percent, 0)
    if hc.no_traffic_interval != 60.0:
        out["no_traffic_interval"] = duration(hc.no_traffic_interval)
    for name in ("no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
                 "healthy_edge_interval"):
        if getattr(hc, name) is not None:
            out[name] = duration(getattr(hc, name))
    if not hc.reuse_connection:
        out["reuse_connection"] = False
    _put(out, "always_log_health_check_failures", hc.always_log_health_check_failures, False)
    if hc.event_log_path is not None:
        if hc.event_log_field == "event_log_path":
            out["event_log_path"] = hc.event_log_path
        else:
            out["event_logger"] = [{"name": "envoy.health_check.event_sinks.file",
                                    "typed_config": {"@type": _HC_FILE_SINK, "event_log_path": hc.event_log_path}}]
    h = hc.http_health_check
    if h is not None:
        http: Dict[str, Any] = {"path": h.path}
        _put(http, "host", h.host, "")
        _put(http, "method", h.method, "GET")
        if h.receive:
            http["receive"] = [{"text": seg.hex()} for seg in h.receive]
        if h.expected_statuses:
            http["expected_statuses"] = [{"start": a, "end": b} for a, b in h.expected_statuses]
        if h.retriable_statuses:
            http["retriable_statuses"] = [{"start": a, "end": b} for a, b in h.retriable_statuses]
        if h.request_headers_to_add:
            http["request_headers_to_add"] = [_hc_header(*opt) for opt in h.request_headers_to_add]
        if h.request_headers_to_remove:
            http["request_headers_to_remove"] = list(h.request_headers_to_remove)
        out["http_health_check"] = http
    elif hc.grpc_health_check is not None:
        g = hc.grpc_health_check
        grpc: Dict[str, Any] = {}
        _put(grpc, "service_name", g.service_name, "")
        _put(grpc, "authority", g.authority, "")
        out["grpc_health_check"] = grpc
    else:
        t = hc.tcp_health_check
        tcp: Dict[str, Any] = {}
        if t.send:
            tcp["send"] = {"text": t.send.hex()}
        if t.receive:
            tcp["receive"] = [{"text": seg.hex()} for seg in t.receive]
        out["tcp_health_check"] = tcp
    return out


def outlier_detection_json(od: Any) -> dict:
    """An envoy.config.cluster.v3.OutlierDetection: the fields that differ from Envoy's
    defaults (an empty one is outlier detection with every default)."""
    from ..upstream.outlier import OutlierDetection
    out: Dict[str, Any] = {}
    for name, default in vars(OutlierDetection()).items():
        value = getattr(od, name)
        if value == default:
            continue
        out[name] = duration(value) if name in ("interval", "base_ejection_time", "max_ejection_time",
                                                "max_ejection_time_jitter") else value
    return out


# --- TLS --------------------------------------------------------------------------------

_REDACTED = "[redacted]"


def data_source_json(d: tls.DataSource, redact: str = "") -> dict:
    """A DataSource; ``redact``: "inline" replaces inline data by "[redacted]" (Envoy's
    dump of a listener or cluster), "all" every field (its SecretsConfigDump)."""
    for field in ("filename", "inline_string", "environment_variable"):
        value = getattr(d, field)
        if value is not None:
            secret = redact == "all" or (redact == "inline" and field == "inline_string")
            return {field: _REDACTED if secret else value}
    data = _REDACTED.encode() if redact else d.inline_bytes
    return {"inline_bytes": base64.b64encode(data).decode()}


def _tls_certificate_json(c: tls.TlsCertificate, redact: str) -> dict:
    out = {"certificate_chain": data_source_json(c.certificate_chain),
           "private_key": data_source_json(c.private_key, redact)}
    if c.password is not None:
        out["password"] = data_source_json(c.password, redact)
    if c.watched_directory is not None:
        out["watched_directory"] = {"path": c.watched_directory}
    return out


def _validation_json(v: tls.CertificateValidationContext) -> dict:
    out: Dict[str, Any] = {}
    if v.trusted_ca is not None:
        out["trusted_ca"] = data_source_json(v.trusted_ca)
    if v.match_typed_subject_alt_names:
        out["match_typed_subject_alt_names"] = [{"san_type": m.san_type, "matcher": _string_match(m.matcher)}
                                                for m in v.match_typed_subject_alt_names]
    _put(out, "verify_certificate_hash", list(v.verify_certificate_hash), [])
    _put(out, "verify_certificate_spki", list(v.verify_certificate_spki), [])
    if v.crl is not None:
        out["crl"] = data_source_json(v.crl)
    _put(out, "trust_chain_verification", v.trust_chain_verification, "VERIFY_TRUST_CHAIN")
    _put(out, "allow_expired_certificate", v.allow_expired_certificate, False)
    if v.watched_directory is not None:
        out["watched_directory"] = {"path": v.watched_directory}
    return out


def _sds_json(s: tls.SdsSecretConfig) -> dict:
    out: Dict[str, Any] = {"name": s.name}
    if s.sds_config is not None:
        out["sds_config"] = config_source_json(s.sds_config)
    return out


def _common_tls_json(c: tls.CommonTlsContext, redact: str) -> dict:
    out: Dict[str, Any] = {}
    p = c.tls_params
    params: Dict[str, Any] = {}
    _put(params, "tls_minimum_protocol_version", p.minimum_protocol_version, "TLS_AUTO")
    _put(params, "tls_maximum_protocol_version", p.maximum_protocol_version, "TLS_AUTO")
    for f in ("cipher_suites", "ecdh_curves", "signature_algorithms"):
        _put(params, f, list(getattr(p, f)), [])
    if params:
        out["tls_params"] = params
    if c.tls_certificates:
        out["tls_certificates"] = [_tls_certificate_json(x, redact) for x in c.tls_certificates]
    if c.tls_certificate_sds_secret_configs:
        out["tls_certificate_sds_secret_configs"] = [_sds_json(x) for x in c.tls_certificate_sds_secret_configs]
    v, vs = c.validation_context, c.validation_context_sds_secret_config
    if v is not None and vs is not None:
        out["combined_validation_context"] = {"default_validation_context": _validation_json(v),
                                              "validation_context_sds_secret_config": _sds_json(vs)}
    elif v is not None:
        out["validation_context"] = _validation_json(v)
    elif vs is not None:
        out["validation_context_sds_secret_config"] = _sds_json(vs)
    _put(out, "alpn_protocols", list(c.alpn_protocols), [])
    return out


def transport_socket_json(ctx: Any, redact: bool = False) -> dict:
    """A listener's filter chain's or a cluster's transport_socket for a
    DownstreamTlsContext or UpstreamTlsContext (auto_sni and auto_san_validation are the
    cluster's protocol options: cluster_json writes them)."""
    mode = "inline" if redact else ""
    body: Dict[str, Any] = {}
    common = _common_tls_json(ctx.common_tls_context, mode)
    if common:
        body["common_tls_context"] = common
    if isinstance(ctx, tls.DownstreamTlsContext):
        type_url = DOWNSTREAM_TLS_TYPE
        _put(body, "require_client_certificate", ctx.require_client_certificate, False)
        if ctx.session_ticket_keys:
            body["session_ticket_keys"] = {"keys": [data_source_json(k, mode) for k in ctx.session_ticket_keys]}
        if ctx.session_ticket_keys_sds_secret_config is not None:
            body["session_ticket_keys_sds_secret_config"] = _sds_json(ctx.session_ticket_keys_sds_secret_config)
        _put(body, "disable_stateless_session_resumption", ctx.disable_stateless_session_resumption, False)
        _put(body, "disable_stateful_session_resumption", ctx.disable_stateful_session_resumption, False)
        if ctx.session_timeout is not None:
            body["session_timeout"] = duration(ctx.session_timeout)
    else:
        type_url = UPSTREAM_TLS_TYPE
        _put(body, "sni", ctx.sni, "")
        _put(body, "max_session_keys", ctx.max_session_keys, 1)
    return {"name": TLS_SOCKET, "typed_config": {"@type": type_url, **body}}


def secret_json(s: tls.Secret, redact: str = "") -> dict:
    """An envoy.extensions.transport_sockets.tls.v3.Secret (without "@type")."""
    out: Dict[str, Any] = {"name": s.name}
    if s.tls_certificate is not None:
        out["tls_certificate"] = _tls_certificate_json(s.tls_certificate, redact)
    elif s.validation_context is not None:
        out["validation_context"] = _validation_json(s.validation_context)
    else:
        out["session_ticket_keys"] = {"keys": [data_source_json(k, redact) for k in s.session_ticket_keys]}
    return out


def load_assignment_json(name: str, endpoints: Iterable[model.Endpoint], overprovisioning_factor: int = 140) -> dict:
    """An envoy.config.endpoint.v3.ClusterLoadAssignment: one LocalityLbEndpoints per
    (priority, locality) in the endpoints' order of first appearance."""
    assignment: Dict[str, Any] = {"cluster_name": name}
    groups: Dict[tuple, Dict[str, Any]] = {}
    for e in endpoints:
        endpoint: Dict[str, Any] = {"address": _socket_address(e.address, e.port)}
        if e.hostname:
            endpoint["hostname"] = e.hostname
        entry: Dict[str, Any] = {"endpoint": endpoint}
        if e.health_status != "UNKNOWN":
            entry["health_status"] = e.health_status
        if e.weight != 1:
            entry["load_balancing_weight"] = e.weight
        key = (e.priority, tuple(e.locality), e.locality_weight)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {}
            if e.locality:
                group["locality"] = {k: v for k, v in zip(("region", "zone", "sub_zone"), e.locality) if v}
            group["lb_endpoints"] = []
            if e.locality_weight:
                group["load_balancing_weight"] = e.locality_weight
            if e.priority:
                group["priority"] = e.priority
        group["lb_endpoints"].append(entry)
    if groups:
        assignment["endpoints"] = list(groups.values())
    if overprovisioning_factor != 140:
        assignment["policy"] = {"overprovisioning_factor": overprovisioning_factor}
    return assignment


# --- listeners ----------------------------------------------------------------------------

from .cluster_lb import dump_cluster_lb
from .c_filter import C_HTTP_FILTER_TYPE_URL as C_HTTP_FILTER_TYPE
from .python_filter import PYTHON_FILTER_TYPE_URL as PYTHON_NETWORK_FILTER_TYPE
from .python_filter import PYTHON_HTTP_FILTER_TYPE_URL as PYTHON_HTTP_FILTER_TYPE
from .python_filter import TYPED_STRUCT_TYPES

TYPED_STRUCT_TYPE = TYPED_STRUCT_TYPES[0]       # the current spelling, which a dump writes


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _network_filter(factory: Any) -> dict:
    """A Python network filter: the loader's TypedStruct for what the loader builds (a
    partial of the class with its config), else its name only (see the module's note)."""
    import functools
    if isinstance(factory, functools.partial) and isinstance(factory.func, type) \
            and len(factory.args) == 1 and not factory.keywords:
        return {"name": factory.func.__qualname__, "typed_config": {
            "@type": TYPED_STRUCT_TYPE, "type_url": PYTHON_NETWORK_FILTER_TYPE,
            "value": {"class": _class_path(factory.func), "config": factory.args[0]}}}
    f = getattr(factory, "func", factory)
    return {"name": getattr(f, "__qualname__", None) or type(f).__name__}


def _http_filter(spec: Any) -> dict:
    """An http_filters entry: the TypedStruct of a Python or C filter, a native filter's
    Envoy config."""
    from ..http_filter import CHttpFilter, NativeHttpFilter, PythonHttpFilter, c_filter_name
    if isinstance(spec, PythonHttpFilter):
        value: Dict[str, Any] = {"class": _class_path(spec.cls)}
        if spec.config:
            value["config"] = spec.config
        return {"name": spec.name, "is_optional": True, "typed_config": {
            "@type": TYPED_STRUCT_TYPE, "type_url": PYTHON_HTTP_FILTER_TYPE, "value": value}}
    if isinstance(spec, CHttpFilter):
        registered = c_filter_name(spec.table)     # the name the loader looks up
        if registered is None:
            return {"name": spec.name}
        value = {"filter": registered}
        if spec.config is not None:
            value["config"] = spec.config
        return {"name": spec.name, "is_optional": True, "typed_config": {
            "@type": TYPED_STRUCT_TYPE, "type_url": C_HTTP_FILTER_TYPE, "value": value}}
    if isinstance(spec, NativeHttpFilter):
        type_url, write, _, _ = _native(spec.kind)
        return {"name": spec.name, "typed_config": {"@type": type_url, **write(spec.config)}}
    return {"name": getattr(spec, "name", type(spec).__name__)}


def _level_fields(out: Dict[str, Any], level: Any, by_name: Dict[str, Any]) -> None:
    """What a route, a virtual host and a route configuration each carry: their header
    mutations and their typed_per_filter_config."""
    _header_mutations(out, level.headers)
    per_filter = _per_filter(level, by_name)
    if per_filter:
        out["typed_per_filter_config"] = per_filter


def _per_filter(obj: Any, http_filters: dict) -> dict:
    """typed_per_filter_config of a route, virtual host or route table, by the kind of the
    filter each names."""
    from ..http_filter import CHttpFilter, NativeHttpFilter, PythonHttpFilter
    out: Dict[str, Any] = {}
    for name, value in obj.typed_per_filter_config.items():
        spec = http_filters.get(name)
        if isinstance(spec, NativeHttpFilter):
            _, _, type_url, write = _native(spec.kind)
            out[name] = {"@type": type_url, **write(value)}
        elif isinstance(spec, (PythonHttpFilter, CHttpFilter)):
            type_url = PYTHON_HTTP_FILTER_TYPE if isinstance(spec, PythonHttpFilter) else C_HTTP_FILTER_TYPE
            out[name] = {"@type": FILTER_CONFIG_TYPE, "is_optional": True, "config": {
                "@type": TYPED_STRUCT_TYPE, "type_url": type_url,
                **({} if value is None else {"value": value})}}
    return out


# --- the native HTTP filters (what config/http_filters_native.py reads) ---------------------

def _fraction(f: nf.FractionalPercent) -> dict:
    out: Dict[str, Any] = {}
    _put(out, "numerator", f.numerator, 0)
    _put(out, "denominator", f.denominator, "HUNDRED")
    return out


def _runtime_fraction(out: dict, name: str, f: Optional[nf.FractionalPercent]) -> None:
    if f is not None:
        out[name] = {"default_value": _fraction(f)}


def _local_rate_limit(c: nf.LocalRateLimit) -> dict:
    from .http_filters_native import STATUS_CODES
    out: Dict[str, Any] = {"stat_prefix": c.stat_prefix}
    if c.status != 429:
        out["status"] = {"code": next(n for n, code in STATUS_CODES.items() if code == c.status)}
    if c.token_bucket is not None:
        tb: Dict[str, Any] = {"max_tokens": c.token_bucket.max_tokens}
        _put(tb, "tokens_per_fill", c.token_bucket.tokens_per_fill, 1)
        tb["fill_interval"] = duration(c.token_bucket.fill_interval)
        out["token_bucket"] = tb
    _runtime_fraction(out, "filter_enabled", c.filter_enabled)
    _runtime_fraction(out, "filter_enforced", c.filter_enforced)
    if c.response_headers_to_add:
        out["response_headers_to_add"] = [_header_value_option(o) for o in c.response_headers_to_add]
    return out


def _fault(c: nf.HTTPFault) -> dict:
    out: Dict[str, Any] = {}
    if c.delay is not None:
        out["delay"] = {"fixed_delay": duration(c.delay.fixed_delay)}
    if c.abort is not None:
        out["abort"] = {"http_status": c.abort.http_status}
    for name, part in (("delay", c.delay), ("abort", c.abort)):
        if part is not None and part.percentage != nf.FractionalPercent():
            out[name]["percentage"] = _fraction(part.percentage)
    if c.max_active_faults is not None:
        out["max_active_faults"] = c.max_active_faults
    return out


def _buffer(c: nf.Buffer) -> dict:
    return {"max_request_bytes": c.max_request_bytes}


def _buffer_per_route(c: nf.BufferPerRoute) -> dict:
    return {"disabled": True} if c.disabled else {"buffer": _buffer(c.buffer)}


def _health_check(c: nf.HealthCheck) -> dict:
    out: Dict[str, Any] = {"pass_through_mode": c.pass_through_mode}    # a BoolValue: always written
    if c.headers:
        out["headers"] = [_header_matcher(h) for h in c.headers]
    return out


def _cors(c: nf.Cors) -> dict:
    return {}


def _cors_policy(c: nf.CorsPolicy) -> dict:
    out: Dict[str, Any] = {}
    if c.allow_origin_string_match:
        out["allow_origin_string_match"] = [_string_match(m) for m in c.allow_origin_string_match]
    for name in ("allow_methods", "allow_headers", "expose_headers", "max_age"):
        _put(out, name, getattr(c, name), "")
    if c.allow_credentials:
        out["allow_credentials"] = True
    return out


def _header_mutation(c: nf.HeaderMutation) -> dict:
    mutations: Dict[str, Any] = {}
    for name in ("request_mutations", "response_mutations"):
        ops = [{"remove": op.remove} if op.remove is not None else {"append": _header_value_option(op.append)}
               for op in getattr(c.mutations, name)]
        if ops:
            mutations[name] = ops
    return {"mutations": mutations} if mutations else {}


def _native(kind: str) -> tuple:
    """(filter @type, its writer, per-route @type, its writer) of a native filter kind.
    config/http_filters_native.py is imported here, not at the top: it imports
    config/http.py, which the writer needs only when there are HTTP filters to write."""
    from . import http_filters_native as n
    return {
        nf.LOCAL_RATELIMIT: (n.LOCAL_RATELIMIT_TYPE, _local_rate_limit, n.LOCAL_RATELIMIT_TYPE, _local_rate_limit),
        nf.FAULT: (n.FAULT_TYPE, _fault, n.FAULT_TYPE, _fault),
        nf.BUFFER: (n.BUFFER_TYPE, _buffer, n.BUFFER_PER_ROUTE_TYPE, _buffer_per_route),
        nf.HEALTH_CHECK: (n.HEALTH_CHECK_TYPE, _health_check, None, None),
        nf.CORS: (n.CORS_TYPE, _cors, n.CORS_POLICY_TYPE, _cors_policy),
        nf.HEADER_MUTATION: (n.HEADER_MUTATION_TYPE, _header_mutation,
                             n.HEADER_MUTATION_PER_ROUTE_TYPE, _header_mutation),
    }[kind]


def listener_json(l: model.Listener, redact: bool = False) -> dict:
    """An envoy.config.listener.v3.Listener (without "@type"); ``redact``: its TLS keys
    as the admin shows them (transport_socket_json)."""
    out: Dict[str, Any] = {"name": l.name, "address": _socket_address(l.address, l.port)}
    # (A listener given one handler is its one chain: Listener.chains makes it.)
    out["filter_chains"] = [_filter_chain_json(c, redact) for c in l.chains]
    if l.default_filter_chain is not None:
        out["default_filter_chain"] = _filter_chain_json(l.default_filter_chain, redact)
    if l.tls_inspector:
        out["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector",
                                    "typed_config": {"@type": TLS_INSPECTOR_TYPE}}]
        _put(out, "listener_filters_timeout",
             duration(l.listener_filters_timeout or 0), duration(15.0))
        _put(out, "continue_on_listener_filters_timeout", l.continue_on_listener_filters_timeout, False)
    _put(out, "per_connection_buffer_limit_bytes", l.buffer_limit, 1 << 20)
    _put(out, "tcp_backlog_size", l.backlog, 1024)
    _put(out, "drain_type", l.drain_type, "DEFAULT")
    return out


def _tcp_filters(factories, stat_prefix: str, cluster: str, idle_timeout, max_connect_attempts: int) -> list:
    tcp: Dict[str, Any] = {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix, "cluster": cluster}
    if idle_timeout != 3600.0:
        tcp["idle_timeout"] = duration(idle_timeout)
    _put(tcp, "max_connect_attempts", max_connect_attempts, 1)
    filters = [_network_filter(f) for f in factories]
    filters.append({"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp})
    return filters


def _filter_chain_json(c: model.FilterChain, redact: bool) -> dict:
    """An envoy.config.listener.v3.FilterChain."""
    hcm = c.http_connection_manager
    if hcm is not None:
        filters = [{"name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {"@type": HCM_TYPE, **hcm_json(hcm)}}]
    else:
        filters = _tcp_filters(c.filters, c.stat_prefix, c.handler.cluster, c.idle_timeout,
                               c.max_connect_attempts)
    out: Dict[str, Any] = {"filters": filters}
    m = c.match
    match: Dict[str, Any] = {}
    if m.destination_port:
        match["destination_port"] = m.destination_port
    for name in ("prefix_ranges", "source_prefix_ranges"):
        ranges = []
        for r in getattr(m, name):
            prefix, _, plen = r.partition("/")
            ranges.append({"address_prefix": prefix, "prefix_len": int(plen or 0)})
        if ranges:
            match[name] = ranges
    for name in ("server_names", "application_protocols", "source_ports"):
        if getattr(m, name):
            match[name] = list(getattr(m, name))
    _put(match, "transport_protocol", m.transport_protocol, "")
    _put(match, "source_type", m.source_type, "ANY")
    if match:
        out["filter_chain_match"] = match
    if c.name:
        out["name"] = c.name
    if c.tls is not None:
        out["transport_socket"] = transport_socket_json(c.tls, redact)
    if c.transport_socket_connect_timeout:
        out["transport_socket_connect_timeout"] = duration(c.transport_socket_connect_timeout)
    return out


def config_source_json(src: model.ConfigSource) -> dict:
    """An envoy.config.core.v3.ConfigSource."""
    out: Dict[str, Any] = {"resource_api_version": "V3"}
    if src.ads:
        out["ads"] = {}
    elif src.api is not None:
        out["api_config_source"] = api_config_source_json(src.api)
    else:
        pcs: Dict[str, Any] = {"path": src.path}
        if src.watched_directory is not None:
            pcs["watched_directory"] = {"path": src.watched_directory}
        out["path_config_source"] = pcs
    if src.initial_fetch_timeout != 15.0:
        out["initial_fetch_timeout"] = f"{src.initial_fetch_timeout:g}s"
    return out


def api_config_source_json(api: model.AdsConfig) -> dict:
    """An envoy.config.core.v3.ApiConfigSource (ads_config, api_config_source)."""
    grpc: Dict[str, Any] = {"cluster_name": api.cluster_name}
    if api.max_receive_message_length:
        grpc["max_receive_message_length"] = api.max_receive_message_length
    return {"api_type": "DELTA_GRPC" if api.delta else "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": grpc}]}


def _access_log(entry: mh.AccessLog) -> dict:
    config: Dict[str, Any] = {"@type": FILE_ACCESS_LOG_TYPE, "path": entry.path}
    if entry.format is not None:
        config["log_format"] = {"text_format_source": {"inline_string": entry.format}}
    return {"name": "envoy.access_loggers.file", "typed_config": config}


def hcm_json(h: mh.HttpConnectionManager) -> dict:
    """An HttpConnectionManager's fields (without "@type")."""
    d = mh.HttpConnectionManager
    out: Dict[str, Any] = {"stat_prefix": h.stat_prefix}
    _put(out, "codec_type", h.codec_type, "AUTO")
    h2 = http2_options_json(h.http2_protocol_options)
    if h2:
        out["http2_protocol_options"] = h2
    if h.rds is not None:
        out["rds"] = {"route_config_name": h.rds.route_config_name,
                      "config_source": config_source_json(h.rds.config_source)}
    else:
        out["route_config"] = route_config_json(h.route_config, h.http_filters)
    filters = [_http_filter(f) for f in h.http_filters]
    router: Dict[str, Any] = {"@type": ROUTER_TYPE}
    if h.suppress_envoy_headers:
        router["suppress_envoy_headers"] = True
    out["http_filters"] = filters + [{"name": "envoy.filters.http.router", "typed_config": router}]
    if h.server_name != d.server_name:
        out["server_name"] = h.server_name
    _put(out, "server_header_transformation", h.server_header_transformation, "OVERWRITE")
    _put(out, "forward_client_cert_details", h.forward_client_cert_details, "SANITIZE")
    details = h.set_current_client_cert_details
    if details is not None:
        out["set_current_client_cert_details"] = {name: True for name in ("subject", "cert", "chain", "dns", "uri")
                                                  if getattr(details, name)}
    for name in ("use_remote_address", "skip_xff_append", "preserve_external_request_id",
                 "always_set_request_id_in_response", "normalize_path", "merge_slashes"):
        if getattr(h, name):
            out[name] = True
    _put(out, "xff_num_trusted_hops", h.xff_num_trusted_hops, 0)
    if not h.generate_request_id:
        out["generate_request_id"] = False
    _put(out, "via", h.via, "")
    _put(out, "path_with_escaped_slashes_action", h.path_with_escaped_slashes_action, "KEEP_UNCHANGED")
    if h.strip_host_port == "MATCHING":
        out["strip_matching_host_port"] = True
    elif h.strip_host_port == "ANY":
        out["strip_any_host_port"] = True
    if h.internal_address_config is not None:
        iac: Dict[str, Any] = {}
        if h.internal_address_config.unix_sockets:
            iac["unix_sockets"] = True
        ranges = []
        for r in h.internal_address_config.cidr_ranges:
            prefix, _, length = str(r).partition("/")
            ranges.append({"address_prefix": prefix, "prefix_len": int(length or 0)})
        if ranges:
            iac["cidr_ranges"] = ranges
        out["internal_address_config"] = iac
    if h.request_headers_timeout is not None:
        out["request_headers_timeout"] = duration(h.request_headers_timeout)
    if h.stream_idle_timeout != d.stream_idle_timeout:
        out["stream_idle_timeout"] = duration(h.stream_idle_timeout)
    if h.request_timeout is not None:
        out["request_timeout"] = duration(h.request_timeout)
    _put(out, "max_request_headers_kb", h.max_request_headers_kb, d.max_request_headers_kb)
    if h.drain_timeout != d.drain_timeout:
        out["drain_timeout"] = duration(h.drain_timeout)
    common: Dict[str, Any] = {}
    if h.idle_timeout != d.idle_timeout:
        common["idle_timeout"] = duration(h.idle_timeout)
    if h.max_requests_per_connection:
        common["max_requests_per_connection"] = h.max_requests_per_connection
    _put(common, "max_headers_count", h.max_headers_count, d.max_headers_count)
    _put(common, "headers_with_underscores_action", h.headers_with_underscores_action, "ALLOW")
    if common:
        out["common_http_protocol_options"] = common
    http1: Dict[str, Any] = {}
    if getattr(h, "accept_http_10", False):
        http1["accept_http_10"] = True
    if getattr(h, "default_host_for_http_10", ""):
        http1["default_host_for_http_10"] = h.default_host_for_http_10
    if http1:
        out["http_protocol_options"] = http1
    if h.access_log:
        out["access_log"] = [_access_log(a) for a in h.access_log]
    if h.upgrade_configs:
        out["upgrade_configs"] = [{"upgrade_type": u.upgrade_type, **({} if u.enabled else {"enabled": False})}
                                  for u in h.upgrade_configs]
    return out


# --- routes -------------------------------------------------------------------------------

def _regex(text: str) -> dict:
    return {"regex": text}


def _string_match(m: mh.StringMatch) -> dict:
    out: Dict[str, Any] = {m.kind: _regex(m.value) if m.kind == "safe_regex" else m.value}
    if m.ignore_case:
        out["ignore_case"] = True
    return out


def _header_matcher(h: mh.HeaderMatcher) -> dict:
    out: Dict[str, Any] = {"name": h.name}
    if h.string_match is not None:
        out["string_match"] = _string_match(h.string_match)
    elif h.present_match is not None:
        out["present_match"] = h.present_match
    elif h.range_match is not None:
        out["range_match"] = {"start": str(h.range_match.start), "end": str(h.range_match.end)}
    if h.invert_match:
        out["invert_match"] = True
    if h.treat_missing_header_as_empty:
        out["treat_missing_header_as_empty"] = True
    return out


def _query_matcher(q: mh.QueryParameterMatcher) -> dict:
    out: Dict[str, Any] = {"name": q.name}
    if q.string_match is not None:
        out["string_match"] = _string_match(q.string_match)
    elif q.present_match is not None:
        out["present_match"] = q.present_match
    return out


def _route_match(m: mh.RouteMatch) -> dict:
    out: Dict[str, Any] = {}
    if m.connect_matcher:
        out["connect_matcher"] = {}
    for kind in ("prefix", "path", "path_separated_prefix"):
        if getattr(m, kind) is not None:
            out[kind] = getattr(m, kind)
    if m.safe_regex is not None:
        out["safe_regex"] = _regex(m.safe_regex)
    if not m.case_sensitive:
        out["case_sensitive"] = False
    if m.headers:
        out["headers"] = [_header_matcher(h) for h in m.headers]
    if m.query_parameters:
        out["query_parameters"] = [_query_matcher(q) for q in m.query_parameters]
    return out


def _route_action(a: mh.RouteAction) -> dict:
    out: Dict[str, Any] = {}
    if a.cluster is not None:
        out["cluster"] = a.cluster
    else:
        out["weighted_clusters"] = {"clusters": [{"name": w.name, "weight": w.weight}
                                                 for w in a.weighted_clusters]}
    if a.prefix_rewrite is not None:
        out["prefix_rewrite"] = a.prefix_rewrite
    if a.regex_rewrite is not None:
        out["regex_rewrite"] = {"pattern": _regex(a.regex_rewrite.pattern),
                                "substitution": a.regex_rewrite.substitution}
    if a.host_rewrite_literal is not None:
        out["host_rewrite_literal"] = a.host_rewrite_literal
    if a.auto_host_rewrite:
        out["auto_host_rewrite"] = True
    if a.timeout != mh.RouteAction.timeout:
        out["timeout"] = duration(a.timeout)
    for name in ("max_grpc_timeout", "grpc_timeout_offset"):
        if getattr(a, name) is not None:
            out[name] = duration(getattr(a, name))
    msd = a.max_stream_duration
    if msd is not None:
        out["max_stream_duration"] = {name: duration(getattr(msd, name)) for name in
                                      ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")
                                      if getattr(msd, name) is not None}
    if a.hash_policy:
        out["hash_policy"] = [_hash_policy(p) for p in a.hash_policy]
    _mirror_policies(out, a.request_mirror_policies)
    _retry_fields(out, a)
    return out


def _hash_policy(p: Any) -> dict:
    """A route's fastproxy.http.hash_policy.HashPolicy as Envoy's RouteAction.HashPolicy."""
    out: Dict[str, Any] = {}
    if p.header is not None:
        h: Dict[str, Any] = {"header_name": p.header.header_name}
        if p.header.regex_rewrite is not None:
            h["regex_rewrite"] = {"pattern": _regex(p.header.regex_rewrite.pattern),
                                  "substitution": p.header.regex_rewrite.substitution}
        out["header"] = h
    elif p.cookie is not None:
        c: Dict[str, Any] = {"name": p.cookie.name}
        if p.cookie.ttl is not None:
            c["ttl"] = duration(p.cookie.ttl)
        if p.cookie.path:
            c["path"] = p.cookie.path
        if p.cookie.attributes:
            c["attributes"] = [{"name": a.name, "value": a.value} if a.value else {"name": a.name}
                               for a in p.cookie.attributes]
        out["cookie"] = c
    elif p.connection_properties is not None:
        out["connection_properties"] = {"source_ip": p.connection_properties.source_ip}
    elif p.query_parameter is not None:
        out["query_parameter"] = {"name": p.query_parameter.name}
    elif p.filter_state is not None:
        out["filter_state"] = {"key": p.filter_state.key}
    if p.terminal:
        out["terminal"] = True
    return out


def _mirror_policies(out: dict, policies: list) -> None:
    """RouteAction.request_mirror_policies (fastproxy.http.mirror.MirrorPolicy)."""
    items = []
    for p in policies:
        item: Dict[str, Any] = {"cluster": p.cluster}
        if p.runtime_fraction is not None:
            _runtime_fraction(item, "runtime_fraction", p.runtime_fraction)
            if p.runtime_key:
                item["runtime_fraction"]["runtime_key"] = p.runtime_key
        if p.trace_sampled is not None:
            item["trace_sampled"] = p.trace_sampled
        _put(item, "disable_shadow_host_suffix_append", p.disable_shadow_host_suffix_append, False)
        items.append(item)
    if items:
        out["request_mirror_policies"] = items


def _retry_policy(p) -> dict:
    """A fastproxy.http.retry.RetryPolicy as route.v3.RetryPolicy."""
    out: Dict[str, Any] = {}
    if p.retry_on:
        out["retry_on"] = p.retry_on
    if p.num_retries != 1:
        out["num_retries"] = p.num_retries
    if p.per_try_timeout is not None:
        out["per_try_timeout"] = duration(p.per_try_timeout)
    if p.per_try_idle_timeout:
        out["per_try_idle_timeout"] = duration(p.per_try_idle_timeout)
    if p.base_interval is not None:
        out["retry_back_off"] = {"base_interval": duration(p.base_interval)}
        if p.max_interval is not None:
            out["retry_back_off"]["max_interval"] = duration(p.max_interval)
    if p.reset_headers:
        out["rate_limited_retry_back_off"] = {"reset_headers": [{"name": h.name, "format": h.format}
                                                                for h in p.reset_headers]}
        if p.reset_max_interval is not None:
            out["rate_limited_retry_back_off"]["max_interval"] = duration(p.reset_max_interval)
    if p.previous_hosts:
        out["retry_host_predicate"] = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]
    if p.host_selection_retry_max_attempts != 1:
        out["host_selection_retry_max_attempts"] = str(p.host_selection_retry_max_attempts)
    if p.retriable_status_codes:
        out["retriable_status_codes"] = list(p.retriable_status_codes)
    if p.retriable_headers:
        out["retriable_headers"] = [_header_matcher(h) for h in p.retriable_headers]
    if p.retriable_request_headers:
        out["retriable_request_headers"] = [_header_matcher(h) for h in p.retriable_request_headers]
    return out


def _retry_fields(out: Dict[str, Any], owner) -> None:
    """retry_policy / hedge_policy of a route action or virtual host, and a virtual host's
    attempt-count and buffer-limit fields (fastproxy.config.retry reads them)."""
    if owner.retry_policy is not None:
        out["retry_policy"] = _retry_policy(owner.retry_policy)
    if owner.hedge_policy is not None:
        out["hedge_policy"] = {}
        if owner.hedge_policy.hedge_on_per_try_timeout:
            out["hedge_policy"]["hedge_on_per_try_timeout"] = True
    for name in ("include_request_attempt_count", "include_attempt_count_in_response"):
        if getattr(owner, name, False):
            out[name] = True
    if getattr(owner, "per_request_buffer_limit_bytes", None) is not None:
        out["per_request_buffer_limit_bytes"] = owner.per_request_buffer_limit_bytes


_REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
                   308: "PERMANENT_REDIRECT"}


def _redirect(r: mh.RedirectAction) -> dict:
    out: Dict[str, Any] = {}
    if r.https_redirect:
        out["https_redirect"] = True
    for name in ("scheme_redirect", "host_redirect", "port_redirect", "path_redirect", "prefix_rewrite"):
        if getattr(r, name) is not None:
            out[name] = getattr(r, name)
    if r.regex_rewrite is not None:
        out["regex_rewrite"] = {"pattern": _regex(r.regex_rewrite.pattern),
                                "substitution": r.regex_rewrite.substitution}
    if r.response_code != 301:
        out["response_code"] = _REDIRECT_CODES[r.response_code]
    if r.strip_query:
        out["strip_query"] = True
    return out


def _header_value_option(o: mh.HeaderValueOption) -> dict:
    # Envoy reads a header value as a substitution format: "%%" is one "%".
    entry: Dict[str, Any] = {"header": {"key": o.key, "value": o.value.replace("%", "%%")}}
    _put(entry, "append_action", o.append_action, "APPEND_IF_EXISTS_OR_ADD")
    if o.keep_empty_value:
        entry["keep_empty_value"] = True
    return entry


def _header_mutations(out: dict, m: mh.HeaderMutations) -> None:
    for name in ("request_headers_to_add", "response_headers_to_add"):
        options = [_header_value_option(o) for o in getattr(m, name)]
        if options:
            out[name] = options
    for name in ("request_headers_to_remove", "response_headers_to_remove"):
        if getattr(m, name):
            out[name] = list(getattr(m, name))


def route_config_json(rc: mh.RouteConfiguration, http_filters: Iterable = ()) -> dict:
    """An envoy.config.route.v3.RouteConfiguration (without "@type"); ``http_filters``: its
    connection manager's, whose per-route configs it may hold."""
    by_name = {getattr(f, "name", None): f for f in http_filters}
    out: Dict[str, Any] = {}
    if rc.name:
        out["name"] = rc.name
    hosts = []
    for vh in rc.virtual_hosts:
        host: Dict[str, Any] = {"name": vh.name, "domains": list(vh.domains)}
        routes = []
        for r in vh.routes:
            route: Dict[str, Any] = {}
            if r.name:
                route["name"] = r.name
            route["match"] = _route_match(r.match)
            if r.route is not None:
                route["route"] = _route_action(r.route)
            elif r.redirect is not None:
                route["redirect"] = _redirect(r.redirect)
            elif r.direct_response is not None:
                direct: Dict[str, Any] = {"status": r.direct_response.status}
                if r.direct_response.body:
                    try:
                        direct["body"] = {"inline_string": r.direct_response.body.decode()}
                    except UnicodeDecodeError:
                        import base64
                        direct["body"] = {"inline_bytes": base64.b64encode(r.direct_response.body).decode()}
                route["direct_response"] = direct
            _level_fields(route, r, by_name)
            routes.append(route)
        if routes:
            host["routes"] = routes
        _retry_fields(host, vh)
        _level_fields(host, vh, by_name)
        hosts.append(host)
    if hosts:
        out["virtual_hosts"] = hosts
    _level_fields(out, rc, by_name)
    if rc.ignore_port_in_host_matching:
        out["ignore_port_in_host_matching"] = True
    return out


# --- the bootstrap ------------------------------------------------------------------------

def node_json(node: model.Node) -> dict:
    """An envoy.config.core.v3.Node (what the bootstrap's node says; an xDS client adds its
    user agent)."""
    out: Dict[str, Any] = {}
    _put(out, "id", node.id, "")
    _put(out, "cluster", node.cluster, "")
    locality = {k: v for k, v in (("region", node.region), ("zone", node.zone), ("sub_zone", node.sub_zone)) if v}
    if locality:
        out["locality"] = locality
    if node.metadata:
        out["metadata"] = node.metadata
    return out


def bootstrap_json(b: model.Bootstrap, redact: bool = False) -> dict:
    """An envoy.config.bootstrap.v3.Bootstrap the loader reads back as ``b`` (``redact``:
    inline private keys and ticket keys as "[redacted]", as /config_dump shows them)."""
    out: Dict[str, Any] = {}
    n = node_json(b.node)
    if n:
        out["node"] = n
    static: Dict[str, Any] = {}
    if b.listeners:
        static["listeners"] = [listener_json(l, redact) for l in b.listeners]
    if b.clusters:
        static["clusters"] = [cluster_json(c, redact) for c in b.clusters]
    if b.secrets:
        static["secrets"] = [secret_json(s, "inline" if redact else "") for s in b.secrets]
    out["static_resources"] = static
    if b.admin is not None:
        admin: Dict[str, Any] = {"address": _socket_address(b.admin.address, b.admin.port)}
        if b.admin.access_log:
            admin["access_log"] = [_access_log(a) for a in b.admin.access_log]
        out["admin"] = admin
    runtime: Dict[str, Any] = {}
    if b.max_downstream_connections is not None:
        runtime["overload.global_downstream_max_connections"] = b.max_downstream_connections
    for l in b.listeners:
        if l.max_connections is not None:
            runtime[f"envoy.resource_limits.listener.{l.name}.connection_limit"] = l.max_connections
    if runtime:
        out["layered_runtime"] = {"layers": [{"name": "static", "static_layer": runtime}]}
    dyn = b.dynamic_resources
    if dyn is not None:
        dynamic: Dict[str, Any] = {}
        for key, src in (("lds_config", dyn.lds), ("cds_config", dyn.cds)):
            if src is not None:
                dynamic[key] = config_source_json(src)
        if dyn.ads is not None:
            dynamic["ads_config"] = api_config_source_json(dyn.ads)
        out["dynamic_resources"] = dynamic
    return out


# --- the config dump ----------------------------------------------------------------------

@dataclass
class ResourceState:
    """What the dump says about one listener, cluster or route configuration besides its
    config: when it last changed (epoch seconds), and, for a resource that came from a
    discovery service, the version it came with (``dynamic``; ``state`` says which of a
    listener's active/warming/draining lists it is in, a cluster's active or warming)."""

    last_updated: float
    dynamic: bool = False
    version_info: str = ""
    state: str = "active"


def _entry(kind: str, resource: dict, type_url: str, st: ResourceState) -> dict:
    out: Dict[str, Any] = {}
    if st.dynamic and st.version_info:
        out["version_info"] = st.version_info
    out[kind] = {"@type": type_url, **resource}
    out["last_updated"] = timestamp(st.last_updated)
    return out


def route_configs(listeners: Iterable[model.Listener]) -> list:
    """(listener, route configuration) for every HTTP listener with its routes inline, in
    listener order."""
    return [(l, l.http_connection_manager.route_config) for l in listeners
            if l.http_connection_manager is not None and l.http_connection_manager.route_config is not None]


def build(bootstrap: model.Bootstrap, started: float, node: dict, listeners: list, clusters: list,
          listener_states: dict, cluster_states: dict, route_states: dict,
          versions: Optional[dict] = None, routes: Optional[dict] = None,
          endpoints: Optional[list] = None, draining: Iterable = (),
          secrets: Iterable = (), dynamic_secrets: Iterable = ()) -> dict:
    """The full ConfigDump. ``bootstrap``: what the proxy started with; ``listeners`` /
    ``clusters``: those in force; ``*_states``: name -> ResourceState (route configurations
    inline in a listener by that listener's name, those of ``routes`` (RDS: name ->
    RouteConfiguration) by their own); ``versions``: the last accepted version per discovery
    type ("clusters", "listeners"), the ClustersConfigDump / ListenersConfigDump version_info;
    ``endpoints`` (``?include_eds``): [(assignment name, [model.Endpoint], version_info,
    last_updated)] of EDS, the EndpointsConfigDump's dynamic_endpoint_configs; ``draining``:
    (listener, ResourceState) of the old versions of discovered listeners still draining (a
    DynamicListener's draining_state); ``secrets``: the static TLS secrets in force;
    ``dynamic_secrets``: (Secret, version_info, last_updated) of SDS. Private keys, key
    passwords and session ticket keys are "[redacted]", as in Envoy's dump."""
    versions = versions or {}
    boot = bootstrap_json(bootstrap, redact=True)
    boot["node"] = {**boot.get("node", {}), **node}
    configs: list = [{"@type": ADMIN + "BootstrapConfigDump", "bootstrap": boot,
                      "last_updated": timestamp(started)}]

    cdump: Dict[str, Any] = {"@type": ADMIN + "ClustersConfigDump"}
    if versions.get("clusters"):
        cdump["version_info"] = versions["clusters"]
    for c in clusters:
        st = cluster_states[c.name]
        key = "static_clusters" if not st.dynamic else \
            ("dynamic_warming_clusters" if st.state == "warming" else "dynamic_active_clusters")
        cdump.setdefault(key, []).append(_entry("cluster", cluster_json(c, redact=True), CLUSTER_TYPE, st))
    configs.append(cdump)

    ldump: Dict[str, Any] = {"@type": ADMIN + "ListenersConfigDump"}
    if versions.get("listeners"):
        ldump["version_info"] = versions["listeners"]
    for l in listeners:
        st = listener_states[l.name]
        entry = _entry("listener", listener_json(l, redact=True), LISTENER_TYPE, st)
        if not st.dynamic:
            ldump.setdefault("static_listeners", []).append(entry)
        else:
            ldump.setdefault("dynamic_listeners", []).append({"name": l.name, f"{st.state}_state": entry})
    for l, st in draining:
        entry = _entry("listener", listener_json(l, redact=True), LISTENER_TYPE, st)
        dynamic = ldump.setdefault("dynamic_listeners", [])
        same = next((d for d in dynamic if d["name"] == l.name and "draining_state" not in d), None)
        if same is None:
            dynamic.append({"name": l.name, "draining_state": entry})
        else:
            same["draining_state"] = entry
    configs.append(ldump)
    configs.append({"@type": ADMIN + "ScopedRoutesConfigDump"})

    rdump: Dict[str, Any] = {"@type": ADMIN + "RoutesConfigDump"}
    for l, rc in route_configs(listeners):
        st = route_states[l.name]
        key = "dynamic_route_configs" if st.dynamic else "static_route_configs"
        rdump.setdefault(key, []).append(_entry("route_config", route_config_json(rc, l.http_connection_manager.http_filters),
                                                      ROUTE_CONFIG_TYPE, st))
    for name, rc in (routes or {}).items():
        st = route_states[name]
        # Per-route filter configs are written with the filters of a listener naming it.
        filters = next((l.http_connection_manager.http_filters for l in listeners
                        if l.http_connection_manager is not None and l.http_connection_manager.rds is not None
                        and l.http_connection_manager.rds.route_config_name == name), ())
        key = "dynamic_route_configs" if st.dynamic else "static_route_configs"
        rdump.setdefault(key, []).append(_entry("route_config", route_config_json(rc, filters),
                                                ROUTE_CONFIG_TYPE, st))
    configs.append(rdump)
    sdump: Dict[str, Any] = {"@type": ADMIN + "SecretsConfigDump"}
    for s in secrets:
        sdump.setdefault("static_secrets", []).append(
            {"name": s.name, "secret": {"@type": SECRET_TYPE, **secret_json(s, "all")}})
    for s, version, updated in dynamic_secrets:
        entry: Dict[str, Any] = {"name": s.name}
        if version:
            entry["version_info"] = version
        entry["last_updated"] = timestamp(updated)
        entry["secret"] = {"@type": SECRET_TYPE, **secret_json(s, "all")}
        sdump.setdefault("dynamic_active_secrets", []).append(entry)
    configs.append(sdump)
    if endpoints is not None:
        # As Envoy 1.40's: every cluster's endpoints, a static (or DNS) cluster's as static
        # entries without a time; an EDS one's as dynamic entries, here also with the
        # version and time of the response that gave them (Envoy leaves those out).
        edump: Dict[str, Any] = {"@type": ADMIN + "EndpointsConfigDump"}
        for c in clusters:
            if c.type != "EDS":
                edump.setdefault("static_endpoint_configs", []).append(
                    {"endpoint_config": {"@type": ENDPOINT_TYPE, **load_assignment_json(c.name, c.endpoints)}})
        for name, eps, version, updated in endpoints:
            entry = _entry("endpoint_config", load_assignment_json(name, eps), ENDPOINT_TYPE,
                           ResourceState(updated, True, version))
            edump.setdefault("dynamic_endpoint_configs", []).append(entry)
        configs.append(edump)
    return {"configs": configs}


# --- ?resource= and ?mask= ----------------------------------------------------------------

class DumpQueryError(ValueError):
    """A ?resource= or ?mask= Envoy refuses: ``status`` (400 or 404) and Envoy's message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# The admin dump's own messages: field -> ("repeated" | "message" | "any" | "scalar", the
# entry type of a repeated field). A mask path is checked against these; inside a resource
# (an Any: a cluster, a listener, a route configuration, the bootstrap) any name is taken.
_ENTRY = {"StaticCluster": {"cluster": "any", "last_updated": "scalar"},
          "DynamicCluster": {"version_info": "scalar", "cluster": "any", "last_updated": "scalar",
                             "error_state": "message", "client_status": "scalar"},
          "StaticListener": {"listener": "any", "last_updated": "scalar"},
          "DynamicListener": {"name": "scalar", "active_state": "message", "warming_state": "message",
                              "draining_state": "message", "error_state": "message",
                              "client_status": "scalar"},
          "StaticRouteConfig": {"route_config": "any", "last_updated": "scalar"},
          "DynamicRouteConfig": {"version_info": "scalar", "route_config": "any", "last_updated": "scalar",
                                 "error_state": "message", "client_status": "scalar"},
          "InlineScopedRouteConfigs": {"name": "scalar", "scoped_route_configs": "repeated",
                                       "last_updated": "scalar"},
          "DynamicScopedRouteConfigs": {"name": "scalar", "version_info": "scalar",
                                        "scoped_route_configs": "repeated", "last_updated": "scalar"},
          "DynamicEndpointConfig": {"version_info": "scalar", "endpoint_config": "any", "last_updated": "scalar",
                                    "error_state": "message", "client_status": "scalar"},
          "StaticEndpointConfig": {"endpoint_config": "any", "last_updated": "scalar"},
          "StaticSecret": {"name": "scalar", "last_updated": "scalar", "secret": "any"},
          "DynamicSecret": {"name": "scalar", "version_info": "scalar", "last_updated": "scalar",
                            "secret": "any", "error_state": "message", "client_status": "scalar"}}
_DUMPS = {
    "BootstrapConfigDump": {"bootstrap": ("message", None), "last_updated": ("scalar", None)},
    "ClustersConfigDump": {"version_info": ("scalar", None),
                           "static_clusters": ("repeated", "StaticCluster"),
                           "dynamic_active_clusters": ("repeated", "DynamicCluster"),
                           "dynamic_warming_clusters": ("repeated", "DynamicCluster")},
    "ListenersConfigDump": {"version_info": ("scalar", None),
                            "static_listeners": ("repeated", "StaticListener"),
                            "dynamic_listeners": ("repeated", "DynamicListener")},
    "ScopedRoutesConfigDump": {"inline_scoped_route_configs": ("repeated", "InlineScopedRouteConfigs"),
                               "dynamic_scoped_route_configs": ("repeated", "DynamicScopedRouteConfigs")},
    "RoutesConfigDump": {"static_route_configs": ("repeated", "StaticRouteConfig"),
                         "dynamic_route_configs": ("repeated", "DynamicRouteConfig")},
    "EndpointsConfigDump": {"static_endpoint_configs": ("repeated", "StaticEndpointConfig"),
                            "dynamic_endpoint_configs": ("repeated", "DynamicEndpointConfig")},
    "SecretsConfigDump": {"static_secrets": ("repeated", "StaticSecret"),
                          "dynamic_active_secrets": ("repeated", "DynamicSecret"),
                          "dynamic_warming_secrets": ("repeated", "DynamicSecret")},
}


def _valid_path(fields: dict, parts: list) -> bool:
    """Whether a FieldMask path is valid for a message with ``fields`` (name -> kind): as
    protobuf's FieldMaskUtil, a path may end at a repeated field but not go through one."""
    kind = fields.get(parts[0])
    if kind is None:
        return False
    if isinstance(kind, tuple):
        kind = kind[0]
    if len(parts) == 1:
        return True
    if kind in ("scalar", "repeated"):
        return False
    if kind == "message" and parts[0] in ("active_state", "warming_state", "draining_state"):
        return _valid_path({"version_info": "scalar", "listener": "any", "last_updated": "scalar"}, parts[1:])
    return kind in ("any", "message")


def _trim(value: Any, paths: list) -> Any:
    """The fields of ``value`` the paths name (a path's last field whole); "@type" of an Any
    stays, as Envoy keeps it."""
    if not isinstance(value, dict):
        return value
    out: Dict[str, Any] = {}
    if "@type" in value:
        out["@type"] = value["@type"]
    whole = {p[0] for p in paths if len(p) == 1}
    deeper: Dict[str, list] = {}
    for p in paths:
        if len(p) > 1 and p[0] not in whole:
            deeper.setdefault(p[0], []).append(p[1:])
    for key, item in value.items():
        if key in whole:
            out[key] = item
        elif key in deeper and isinstance(item, dict):
            out[key] = _trim(item, deeper[key])     # a message that is set stays, maybe empty
    return out


def _through_a_list(value: Any, parts: list) -> bool:
    """Whether the path goes through a repeated field of ``value`` (protobuf refuses it)."""
    for part in parts[:-1]:
        if not isinstance(value, dict):
            return False
        value = value.get(part)
        if isinstance(value, list):
            return True
    return False


def _mask_paths(mask: str) -> list:
    return [p.split(".") for p in mask.split(",") if p]


def apply_query(dump: dict, resource: Optional[str] = None, mask: Optional[str] = None) -> dict:
    """Envoy's /config_dump query: ``resource`` names one repeated field of the dump
    messages (static_clusters, dynamic_listeners, ...): only its entries, each with its
    entry type as "@type"; ``mask`` is a comma-separated FieldMask applied to each entry
    (with ``resource``) or to each dump message it is valid for (without; the others are
    left out). Raises DumpQueryError with Envoy's status and message for what Envoy
    refuses (an unknown resource, a field that is not repeated, a mask that fits nothing)."""
    paths = _mask_paths(mask or "")
    if resource:
        entry_type = None
        for dump_type, fields in _DUMPS.items():
            if resource in fields:
                kind, entry_type = fields[resource]
                if kind != "repeated":
                    raise DumpQueryError(400, f"{resource} is not a repeated field. Use ?mask={resource} "
                                              "to get only this field")
                break
        if entry_type is None:
            raise DumpQueryError(404, f"{resource} not found in config dump")
        owner = ADMIN + dump_type
        entries = [{"@type": f"{owner}.{entry_type}", **item} for config in dump["configs"]
                   if config["@type"] == owner for item in config.get(resource, ())]
        # Envoy refuses a path its entry type lacks, one through a repeated field, and one
        # that another path extends. Inside a resource the names are not checked against
        # Envoy's schema (fastproxy has none): a path through a list is found where the
        # entries have one.
        joined = [".".join(p) for p in paths]
        if paths and (not all(_valid_path(_ENTRY[entry_type], p) for p in paths)
                      or any(_through_a_list(e, p) for e in entries for p in paths)
                      or any(b.startswith(a + ".") for a in joined for b in joined)):
            listed = "".join(f'paths: "{j}"\n' for j in joined)
            raise DumpQueryError(400, f"FieldMask {listed} could not be successfully used.")
        out = [_trim(e, paths) if paths else e for e in entries]
        return {"configs": out} if out else {}
    if not paths:
        return dump
    out = []
    for config in dump["configs"]:
        fields = _DUMPS[config["@type"][len(ADMIN):]]
        if all(_valid_path(fields, p) for p in paths):
            out.append(_trim(config, paths))
    if not out:
        raise DumpQueryError(400, f"FieldMask {mask} could not be successfully applied to any configs.")
    return {"configs": out}


__all__ = ["bootstrap_json", "cluster_json", "load_assignment_json", "api_config_source_json", "listener_json", "route_config_json", "hcm_json", "config_source_json",
           "build", "apply_query", "ResourceState", "DumpQueryError", "duration", "timestamp"]
