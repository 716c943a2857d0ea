"""Active health checks of a cluster (Envoy's config.core.v3.HealthCheck): the models, their
validation (errors name the field path) and what the core's checkers are built from
(``HealthCheck.to_spec()``, read by ``_core.HealthCheckerHandle``).

Built: HTTP/1.1 checks (``HttpHealthCheck``: path, host, method, expected and retriable
statuses, request headers to add and remove, a receive payload), TCP checks
(``TcpHealthCheck``: send and receive payloads) and gRPC checks (``GrpcHealthCheck``:
grpc.health.v1.Health/Check over h2c, service_name, authority), with every timing field of Envoy's
HealthCheck, ``reuse_connection``, ``always_log_health_check_failures`` and the event log
(a file of Envoy's JSON event lines). The checks run on one loop thread of their own, in
C, without the GIL (see core/upstream/health_checker.pxi for why there).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import ConfigError
from ..validation import APPEND_ACTIONS

# Envoy's RequestMethod names an HTTP check may use (CONNECT is refused by Envoy's proto).
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
USER_AGENT = "Envoy/HC"         # what Envoy's HTTP checks send


def _duration(path: str, value, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(path, f"expected a duration in seconds, got {value!r}")
    if value < 0 or (positive and value <= 0) or value > 315576000000:
        raise ConfigError(path, f"must be {'>' if positive else '>='} 0 seconds, got {value!r}")


@dataclass(frozen=True)
class HttpHealthCheck:
    """Envoy's HealthCheck.HttpHealthCheck over HTTP/1.1 (codec_client_type HTTP1)."""

    path: str
    host: str = ""                                  # "" : the cluster's name (as Envoy)
    method: str = "GET"
    # [start, end) ranges; () means Envoy's default, 200 only
    expected_statuses: Sequence[tuple[int, int]] = ()
    retriable_statuses: Sequence[tuple[int, int]] = ()
    # (name, value) or (name, value, append_action), applied in order; an action is one of
    # Envoy's HeaderValueOption.HeaderAppendAction names, APPEND_IF_EXISTS_OR_ADD when left out.
    request_headers_to_add: Sequence[tuple] = ()
    request_headers_to_remove: Sequence[str] = ()
    receive: Sequence[bytes] = ()                   # payloads the body must contain, in order

    def validate(self, path: str) -> None:
        if not isinstance(self.path, str) or not self.path or _VALUE_BAD.search(self.path) or " " in self.path:
            raise ConfigError(path + ".path", f"must be a non-empty request path without spaces or "
                                              f"control characters, got {self.path!r}")
        if not isinstance(self.host, str) or _VALUE_BAD.search(self.host) or " " in self.host:
            raise ConfigError(path + ".host", f"not a valid host value: {self.host!r}")
        if self.method not in HTTP_METHODS:
            raise ConfigError(path + ".method", f"must be one of {', '.join(HTTP_METHODS)}, got {self.method!r}")
        for name in ("expected_statuses", "retriable_statuses"):
            for i, r in enumerate(getattr(self, name)):
                p = f"{path}.{name}[{i}]"
                if not (isinstance(r, tuple) and len(r) == 2 and all(isinstance(x, int) for x in r)):
                    raise ConfigError(p, f"expected a (start, end) pair of integers, got {r!r}")
                start, end = r
                # Envoy's checks (HttpStatusChecker::validateRange), in its words.
                kind = "expected" if name == "expected_statuses" else "retriable"
                if start >= end:
                    raise ConfigError(p, f"Invalid http {kind} status range: expecting start < end, "
                                         f"but found start={start} and end={end}")
                if start < 100:
                    raise ConfigError(p, f"Invalid http {kind} status range: expecting start >= 100, "
                                         f"but found start={start}")
                if end > 600:
                    raise ConfigError(p, f"Invalid http {kind} status range: expecting end <= 600, "
                                         f"but found end={end}")
        for i, pair in enumerate(self.request_headers_to_add):
            p = f"{path}.request_headers_to_add[{i}]"
            if not (isinstance(pair, tuple) and len(pair) in (2, 3) and all(isinstance(x, str) for x in pair)):
                raise ConfigError(p, f"expected a (name, value) or (name, value, append_action) tuple of "
                                     f"strings, got {pair!r}")
            if len(pair) == 3 and pair[2] not in APPEND_ACTIONS:
                raise ConfigError(p + ".append_action", f"must be one of {', '.join(APPEND_ACTIONS)}, "
                                                        f"got {pair[2]!r}")
            if not _TOKEN.match(pair[0]) or pair[0].lower() in ("host", "connection", "content-length",
                                                                 "transfer-encoding"):
                raise ConfigError(p + ".header.key", f"not a header this check can add: {pair[0]!r}")
            if _VALUE_BAD.search(pair[1]):
                raise ConfigError(p + ".header.value", f"control characters in {pair[1]!r}")
            if "%" in pair[1]:
                raise ConfigError(p + ".header.value", "header value formatters (%...%) are not supported "
                                                       "in health check requests; use a literal value")
        for i, name in enumerate(self.request_headers_to_remove):
            if not isinstance(name, str) or not _TOKEN.match(name):
                raise ConfigError(f"{path}.request_headers_to_remove[{i}]", f"not a header name: {name!r}")
        for i, seg in enumerate(self.receive):
            if not isinstance(seg, bytes) or not seg:
                raise ConfigError(f"{path}.receive[{i}]", "expected non-empty bytes")
        if sum(len(s) for s in self.receive) > 1024:
            raise ConfigError(path + ".receive", "The expected response length is over the http health "
                                                 "response buffer size (1024)")

    def request(self, cluster_name: str) -> bytes:
        """The request's bytes, as Envoy's HTTP/1.1 codec writes them: the method, host,
        path and user-agent, then the headers added, less the headers removed."""
        fields = [("host", self.host or cluster_name), ("user-agent", USER_AGENT)]
        removed = {n.lower() for n in self.request_headers_to_remove}
        fields = [(k, v) for k, v in fields if k not in removed or k == "host"]
        fields = _add_headers(fields, self.request_headers_to_add)
        head = f"{self.method} {self.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n"
        return head.encode("latin-1")


def _add_headers(fields: list, options) -> list:
    """``fields`` with the header options applied as Envoy's HeaderParser does: each
    action is decided on the headers before any is added, the overwrites are applied
    first (each moves the header to the end), then the additions, in order."""
    present = {k for k, _ in fields}
    add, overwrite = [], []
    for k, v, *action in options:
        k, action = k.lower(), action[0] if action else "APPEND_IF_EXISTS_OR_ADD"
        if action == "APPEND_IF_EXISTS_OR_ADD" or (action == "ADD_IF_ABSENT" and k not in present):
            add.append((k, v))
        elif action == "OVERWRITE_IF_EXISTS_OR_ADD" or (action == "OVERWRITE_IF_EXISTS" and k in present):
            overwrite.append((k, v))
    for k, v in overwrite:
        fields = [f for f in fields if f[0] != k] + [(k, v)]
    return fields + add


@dataclass(frozen=True)
class TcpHealthCheck:
    """Envoy's HealthCheck.TcpHealthCheck: connect, write ``send``, expect every ``receive``
    payload in order (none: a connect test)."""

    send: bytes = b""
    receive: Sequence[bytes] = ()

    def validate(self, path: str) -> None:
        if not isinstance(self.send, bytes):
            raise ConfigError(path + ".send", f"expected bytes, got {type(self.send).__name__}")
        for i, seg in enumerate(self.receive):
            if not isinstance(seg, bytes) or not seg:
                raise ConfigError(f"{path}.receive[{i}]", "expected non-empty bytes")


@dataclass(frozen=True)
class GrpcHealthCheck:
    """Envoy's HealthCheck.GrpcHealthCheck: grpc.health.v1.Health/Check over HTTP/2
    (h2c), passing when the host answers SERVING for ``service_name``."""

    service_name: str = ""
    authority: str = ""                             # "": the cluster's name (as Envoy)

    def validate(self, path: str) -> None:
        for name in ("service_name", "authority"):
            value = getattr(self, name)
            if not isinstance(value, str) or _VALUE_BAD.search(value):
                raise ConfigError(f"{path}.{name}", f"must be a string without control characters, got {value!r}")

    def request(self) -> bytes:
        """The HealthCheckRequest message in its gRPC frame (uncompressed)."""
        raw = self.service_name.encode()
        msg = b""
        if raw:
            n, size = len(raw), bytearray()
            while True:
                size.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
                n >>= 7
                if not n:
                    break
            msg = b"\x0a" + bytes(size) + raw
        return b"\x00" + len(msg).to_bytes(4, "big") + msg

    def headers(self, cluster_name: str, timeout: float) -> list:
        """The request's header fields, as Envoy's gRPC checker sends them."""
        return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
                (b":authority", (self.authority or cluster_name).encode()),
                (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                (b"grpc-timeout", b"%dm" % max(1, int(round(timeout * 1000)))),
                (b"user-agent", USER_AGENT.encode())]


@dataclass(frozen=True)
class HealthCheck:
    """One active health check of a cluster (Envoy's HealthCheck). Durations in seconds;
    None where Envoy derives the value from another field."""

    timeout: float
    interval: float
    unhealthy_threshold: int
    healthy_threshold: int
    http_health_check: Optional[HttpHealthCheck] = None
    tcp_health_check: Optional[TcpHealthCheck] = None
    grpc_health_check: Optional[GrpcHealthCheck] = None
    interval_jitter: float = 0.0
    interval_jitter_percent: int = 0
    initial_jitter: float = 0.0
    no_traffic_interval: float = 60.0
    no_traffic_healthy_interval: Optional[float] = None     # None: no_traffic_interval
    unhealthy_interval: Optional[float] = None              # None: interval
    unhealthy_edge_interval: Optional[float] = None         # None: unhealthy_interval
    healthy_edge_interval: Optional[float] = None           # None: interval
    reuse_connection: bool = True
    always_log_health_check_failures: bool = False
    event_log_path: Optional[str] = None        # Envoy's JSON event lines appended there
    # How the event log was configured, so a dump writes it back the same way:
    # "event_log_path" (deprecated in Envoy, still taken) or "event_logger" (the file sink).
    event_log_field: str = field(default="event_logger", compare=False)
    name: str = ""          # Envoy's HealthCheck.name: a label kept for the dump, no behaviour

    def validate(self, path: str) -> None:
        if sum(c is not None for c in (self.http_health_check, self.tcp_health_check, self.grpc_health_check)) != 1:
            raise ConfigError(path, "exactly one of http_health_check, tcp_health_check and grpc_health_check "
                                    "is required")
        _duration(path + ".timeout", self.timeout, positive=True)
        _duration(path + ".interval", self.interval, positive=True)
        for name in ("interval_jitter", "initial_jitter", "no_traffic_interval", "no_traffic_healthy_interval",
                     "unhealthy_interval", "unhealthy_edge_interval", "healthy_edge_interval"):
            value = getattr(self, name)
            if value is not None:
                _duration(f"{path}.{name}", value, positive=name not in ("interval_jitter", "initial_jitter"))
        for name in ("unhealthy_threshold", "healthy_threshold", "interval_jitter_percent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
                raise ConfigError(f"{path}.{name}", f"must be an integer 0..4294967295, got {value!r}")
        for name in ("reuse_connection", "always_log_health_check_failures"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{path}.{name}", f"must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.name, str):
            raise ConfigError(path + ".name", f"must be a string, got {self.name!r}")
        if self.event_log_path is not None and (not isinstance(self.event_log_path, str) or not self.event_log_path):
            raise ConfigError(path + ".event_log_path", "must be a non-empty path")
        if self.http_health_check is not None:
            self.http_health_check.validate(path + ".http_health_check")
        elif self.tcp_health_check is not None:
            self.tcp_health_check.validate(path + ".tcp_health_check")
        else:
            self.grpc_health_check.validate(path + ".grpc_health_check")

    def to_spec(self, cluster_name: str) -> dict:
        """What _core.HealthCheckerHandle is built from (every interval resolved)."""
        unhealthy = self.interval if self.unhealthy_interval is None else self.unhealthy_interval
        spec = {
            "timeout": self.timeout, "interval": self.interval,
            "interval_jitter": self.interval_jitter, "interval_jitter_percent": self.interval_jitter_percent,
            "initial_jitter": self.initial_jitter, "no_traffic_interval": self.no_traffic_interval,
            "no_traffic_healthy_interval": (self.no_traffic_interval if self.no_traffic_healthy_interval is None
                                            else self.no_traffic_healthy_interval),
            "unhealthy_interval": unhealthy,
            "unhealthy_edge_interval": unhealthy if self.unhealthy_edge_interval is None else self.unhealthy_edge_interval,
            "healthy_edge_interval": self.interval if self.healthy_edge_interval is None else self.healthy_edge_interval,
            "unhealthy_threshold": self.unhealthy_threshold, "healthy_threshold": self.healthy_threshold,
            "reuse_connection": self.reuse_connection,
            "always_log_health_check_failures": self.always_log_health_check_failures,
        }
        h = self.http_health_check
        if h is not None:
            spec.update(kind="http", method=h.method, request=h.request(cluster_name), receive=list(h.receive),
                        expected_statuses=list(h.expected_statuses) or [(200, 201)],
                        retriable_statuses=list(h.retriable_statuses))
        elif self.tcp_health_check is not None:
            t = self.tcp_health_check
            spec.update(kind="tcp", request=t.send, receive=list(t.receive))
        else:
            g = self.grpc_health_check
            spec.update(kind="grpc", request=g.request(), headers=g.headers(cluster_name, self.timeout))
        return spec


def validate_health_checks(checks, path: str, upstream_protocol: str = "http1") -> None:
    """model.Cluster.health_checks: HealthCheck models, at most one (as Envoy 1.40's
    clusters take); a gRPC check needs an HTTP/2 cluster, as in Envoy."""
    if isinstance(checks, (str, bytes)) or not hasattr(checks, "__len__"):
        raise ConfigError(path, f"expected a sequence of HealthCheck, got {type(checks).__name__}")
    if len(checks) > 1:
        raise ConfigError(f"{path}[1]", "one health check per cluster is supported")
    for i, hc in enumerate(checks):
        if not isinstance(hc, HealthCheck):
            raise ConfigError(f"{path}[{i}]", f"expected HealthCheck, got {type(hc).__name__}")
        hc.validate(f"{path}[{i}]")
        if hc.grpc_health_check is not None and upstream_protocol != "http2":
            raise ConfigError(f"{path}[{i}].grpc_health_check", "gRPC health checks need an HTTP/2 cluster "
                                                               "(http2_protocol_options), as in Envoy")
