"""A cluster's active health checks in Envoy's v3 YAML: health_checks (model:
fastproxy.upstream.health_check). Owner: issue 16's HC work.

What fastproxy does not build is refused with its field path: custom checks, gRPC
initial_metadata,
HTTP/2 and HTTP/3 check codecs, request payloads, service name matching, TLS options,
alt_port, the event service and success logging."""
from __future__ import annotations

import base64
import binascii

from ..errors import ConfigError
from ..upstream.health_check import HTTP_METHODS, GrpcHealthCheck, HealthCheck, HttpHealthCheck, TcpHealthCheck
from .proto import Message

HEALTH_CHECK_FIELDS = ("health_checks",)

_HEALTH_CHECK = ("timeout", "interval", "initial_jitter", "interval_jitter", "interval_jitter_percent",
                 "unhealthy_threshold", "healthy_threshold", "alt_port", "reuse_connection",
                 "http_health_check", "tcp_health_check", "grpc_health_check", "custom_health_check",
                 "no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval",
                 "unhealthy_edge_interval", "healthy_edge_interval", "event_log_path", "event_logger",
                 "event_service", "always_log_health_check_failures", "always_log_health_check_success",
                 "tls_options", "transport_socket_match_criteria", "name")
_NOT_BUILT = {
    "custom_health_check": "custom health checkers",
    "alt_port": "alt_port (checks go to the endpoint's own port)",
    "event_service": "the health check event service",
    "always_log_health_check_success": "always_log_health_check_success",
    "tls_options": "tls_options (health checks are plaintext)",
    "transport_socket_match_criteria": "transport_socket_match_criteria (health checks are plaintext)",
}
_HTTP = ("host", "path", "send", "receive", "response_buffer_size", "request_headers_to_add",
         "request_headers_to_remove", "expected_statuses", "retriable_statuses", "codec_client_type",
         "service_name_matcher", "method")
_FILE_SINK = "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink"


def _not_built(msg: Message, name: str, what: str) -> ConfigError:
    return ConfigError(msg.at(name), f"{what}: not supported by fastproxy's health checks; remove {name!r}")


def _payload(item, path: str) -> bytes:
    """An envoy.config.core.v3.HealthCheck.Payload: hex ``text`` or base64 ``binary``."""
    p = Message(item, path, ("text", "binary"))
    text, binary = p.raw("text"), p.raw("binary")
    if (text is None) == (binary is None):
        raise ConfigError(path, "exactly one of text and binary is required")
    if text is not None:
        if not isinstance(text, str) or not text:
            raise ConfigError(p.at("text"), "expected a non-empty hex string")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ConfigError(p.at("text"), f"not hex: {text!r}") from None
    if not isinstance(binary, str) or not binary:
        raise ConfigError(p.at("binary"), "expected non-empty base64 bytes")
    try:
        return base64.b64decode(binary, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(p.at("binary"), f"not base64: {binary!r}") from None


def _ranges(msg: Message, name: str) -> tuple:
    out = []
    for item, path in msg.repeated(name):
        r = Message(item, path, ("start", "end"))
        start = r.raw("start", 0)
        end = r.raw("end", 0)
        try:
            out.append((int(start), int(end)))
        except (TypeError, ValueError):
            raise ConfigError(path, f"expected integer start and end, got {item!r}") from None
    return tuple(out)


def _http(h: Message) -> HttpHealthCheck:
    for name, what in (("send", "a request payload (send)"), ("service_name_matcher", "service_name_matcher")):
        if h.raw(name) is not None:
            raise _not_built(h, name, what)
    codec = h.enum("codec_client_type", {"HTTP1": 0, "HTTP2": 1, "HTTP3": 2}, default="HTTP1")
    if codec != "HTTP1":
        raise ConfigError(h.at("codec_client_type"), f"{codec} health checks are not supported by fastproxy "
                                                     "(HTTP1 only); remove 'codec_client_type'")
    size = h.raw("response_buffer_size")
    if size is not None and h.uint32("response_buffer_size") != 1024:
        raise ConfigError(h.at("response_buffer_size"), "only Envoy's default (1024) is supported")
    method = h.enum("method", {"METHOD_UNSPECIFIED": 0, **{m: i for i, m in enumerate(HTTP_METHODS, 1)},
                                "CONNECT": 6}, default="METHOD_UNSPECIFIED")
    if method == "METHOD_UNSPECIFIED":
        method = "GET"
    if method == "CONNECT":
        raise ConfigError(h.at("method"), "CONNECT is not a health check method (Envoy refuses it)")
    from .http import _headers_to_add  # the one parser of HeaderValueOption (append, append_action, keep_empty_value)
    add = [(o.key, o.value, o.append_action) for o in _headers_to_add(h, "request_headers_to_add")]
    remove = []
    for item, path in h.repeated("request_headers_to_remove"):
        if not isinstance(item, str):
            raise ConfigError(path, f"expected a header name, got {item!r}")
        if item.startswith(":") or item.lower() == "host":
            raise ConfigError(path, f"{item!r} cannot be removed (Envoy refuses it)")
        remove.append(item)
    return HttpHealthCheck(path=h.string("path", required=True, non_empty=True), host=h.string("host", default=""),
                           method=method, expected_statuses=_ranges(h, "expected_statuses"),
                           retriable_statuses=_ranges(h, "retriable_statuses"),
                           request_headers_to_add=tuple(add), request_headers_to_remove=tuple(remove),
                           receive=tuple(_payload(item, path) for item, path in h.repeated("receive")))


def _tcp(t: Message) -> TcpHealthCheck:
    if t.raw("proxy_protocol_config") is not None:
        raise _not_built(t, "proxy_protocol_config", "a PROXY protocol header on checks")
    send = t.raw("send")
    return TcpHealthCheck(send=b"" if send is None else _payload(send, t.at("send")),
                          receive=tuple(_payload(item, path) for item, path in t.repeated("receive")))


def _event_log(hc: Message) -> tuple:
    """(path, field) of the event log: event_log_path (deprecated in Envoy, still taken) or
    one event_logger of the file sink."""
    path = hc.string("event_log_path")
    loggers = list(hc.repeated("event_logger"))
    if path is not None and loggers:
        raise ConfigError(hc.at("event_logger"), "give event_log_path or event_logger, not both")
    if path is not None:
        if not path:
            raise ConfigError(hc.at("event_log_path"), "must not be empty")
        return path, "event_log_path"
    if len(loggers) > 1:
        raise ConfigError(hc.at("event_logger"), "one event logger is supported")
    for item, lpath in loggers:
        ext = Message(item, lpath, ("name", "typed_config"))
        typed = ext.mapping("typed_config")
        if typed is None or typed.get("@type") != _FILE_SINK:
            raise ConfigError(ext.at("typed_config"), f"only the file sink ({_FILE_SINK}) is supported")
        sink = Message(typed, ext.at("typed_config"), ("event_log_path",), ignore=("@type",))
        return sink.string("event_log_path", required=True, non_empty=True), "event_logger"
    return None, "event_logger"


def _health_check(item, path: str) -> HealthCheck:
    hc = Message(item, path, _HEALTH_CHECK)
    for name, what in _NOT_BUILT.items():
        if hc.raw(name) is not None:
            raise _not_built(hc, name, what)
    http = hc.message("http_health_check", _HTTP)
    tcp = hc.message("tcp_health_check", ("send", "receive", "proxy_protocol_config"))
    grpc = hc.message("grpc_health_check", ("service_name", "authority", "initial_metadata"))
    given = [m for m in (http, tcp, grpc) if m is not None]
    if not given:
        raise ConfigError(path, "a health checker is required (http_health_check, tcp_health_check or "
                                "grpc_health_check; custom checkers are not supported)")
    if len(given) > 1:
        raise ConfigError(path, "only one of http_health_check, tcp_health_check and grpc_health_check may be given")
    if grpc is not None and grpc.raw("initial_metadata") is not None:
        raise _not_built(grpc, "initial_metadata", "initial_metadata on gRPC checks")
    for name in ("timeout", "interval"):
        if hc.duration(name, required=True) <= 0:
            raise ConfigError(hc.at(name), "must be greater than 0s")
    for name in ("unhealthy_threshold", "healthy_threshold"):
        hc.uint32(name, required=True)
    reuse = hc.raw("reuse_connection", True)
    if not isinstance(reuse, bool):
        raise ConfigError(hc.at("reuse_connection"), f"expected a bool, got {reuse!r}")
    always = hc.raw("always_log_health_check_failures", False)
    if not isinstance(always, bool):
        raise ConfigError(hc.at("always_log_health_check_failures"), f"expected a bool, got {always!r}")
    log_path, log_field = _event_log(hc)
    optional = {}
    for name in ("no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
                 "healthy_edge_interval"):
        value = hc.duration(name)
        if value is not None:
            if value <= 0:
                raise ConfigError(hc.at(name), "must be greater than 0s")
            optional[name] = value
    no_traffic = hc.duration("no_traffic_interval", 60.0)
    if no_traffic <= 0:
        raise ConfigError(hc.at("no_traffic_interval"), "must be greater than 0s")
    out = HealthCheck(timeout=hc.duration("timeout"), interval=hc.duration("interval"),
                      unhealthy_threshold=hc.uint32("unhealthy_threshold"),
                      healthy_threshold=hc.uint32("healthy_threshold"),
                      http_health_check=None if http is None else _http(http),
                      tcp_health_check=None if tcp is None else _tcp(tcp),
                      grpc_health_check=None if grpc is None else GrpcHealthCheck(
                          service_name=grpc.string("service_name", default=""),
                          authority=grpc.string("authority", default="")),
                      interval_jitter=hc.duration("interval_jitter", 0.0),
                      interval_jitter_percent=hc.uint32("interval_jitter_percent", 0),
                      initial_jitter=hc.duration("initial_jitter", 0.0),
                      no_traffic_interval=no_traffic, reuse_connection=reuse,
                      always_log_health_check_failures=always, event_log_path=log_path,
                      event_log_field=log_field, name=hc.string("name", default=""), **optional)
    out.validate(path)
    return out


def cluster_health_checks(msg: Message) -> dict:
    """model.Cluster's keyword arguments for the health checks in ``msg``."""
    checks = [_health_check(item, path) for item, path in msg.repeated("health_checks")]
    if len(checks) > 1:
        raise ConfigError(msg.at("health_checks") + "[1]", "one health check per cluster is supported")
    return {"health_checks": tuple(checks)} if checks else {}
