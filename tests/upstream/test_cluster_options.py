"""Cluster options: the upstream HTTP protocol options (pool idle timeout, requests and
lifetime per connection) and the circuit breakers (max_connections, max_pending_requests,
max_requests), in fastproxy and, where a real Envoy 1.40 is found, side by side with it.

Upstreams are real sockets on loopback. Requests are held open by an upstream that answers
`/hold...` only when the test releases it, so every limit is reached deterministically;
everything in between is awaited by polling the stats, never by sleeping.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import threading

import pytest

from conftest import (run_on, admin_get, connect, echo_roundtrip, envoy_yaml, find_envoy, fragment, http_listener,
                      recv_exact, recv_head, recv_until_eof, static_cluster, tcp_listener, wait_closed,
                      wait_for)
from http_upstreams import RawHttpUpstream
from upstreams import EchoServer

import fastproxy
from fastproxy._testing import host_stat_blocks
from fastproxy.config import load_envoy
from fastproxy.errors import ConfigError

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
C0 = "static_resources.clusters[0]"
HPO0 = f"{C0}.typed_extension_protocol_options.{HPO}"
OVERFLOW_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
B = "cluster.backend."
CB = B + "circuit_breakers.default."

ROUTES = """
- match: {prefix: /wait}
  route: {cluster: backend, timeout: 0.3s}
- match: {prefix: /other}
  route: {cluster: other}
- match: {prefix: /}
  route: {cluster: backend, timeout: 0s}
"""


def backend(extra, up):
    """The cluster "backend" whose options are under test: ``extra`` are YAML fragments of
    its fields (protocol options, circuit breakers)."""
    fields = {}
    for e in extra:
        fields.update(fragment(e) or {})
    return static_cluster("backend", [up], connect_timeout="2s", **fields)


def protocol_options(common="", explicit="explicit_http_config: {http_protocol_options: {}}"):
    lines = ["    typed_extension_protocol_options:",
             f"      {HPO}:",
             f"        '@type': type.googleapis.com/{HPO}"]
    if common:
        lines.append(f"        common_http_protocol_options: {{{common}}}")
    if explicit:
        lines.append(f"        {explicit}")
    return "\n".join(lines)


def breakers(**limits):
    fields = ", ".join(f"{k}: {v}" for k, v in limits.items())
    return f"    circuit_breakers: {{thresholds: [{{{fields}}}]}}"


def http_yaml(*extra, up=9):
    return envoy_yaml([http_listener(ROUTES)],
                      [backend(extra, up), static_cluster("other", [up], connect_timeout="2s")])


def tcp_yaml(*extra, up=9):
    return envoy_yaml([tcp_listener("backend")], [backend(extra, up)])


# --------------------------------------------------------------------------- config

def cluster_of(*extra):
    return load_envoy(http_yaml(*extra)).clusters[0]


def test_defaults_are_envoys():
    c = cluster_of()
    assert c.idle_timeout == 3600.0           # Envoy's upstream idle_timeout default: 1 h
    assert c.max_requests_per_connection == 0 and c.max_connection_duration is None
    assert (c.max_connections, c.max_pending_requests, c.max_requests, c.max_retries) == (1024, 1024, 1024, 3)
    assert c.track_remaining is False


def test_http_protocol_options_are_read():
    c = cluster_of(protocol_options("idle_timeout: 2.5s, max_requests_per_connection: 7, "
                                    "max_connection_duration: 30s"))
    assert (c.idle_timeout, c.max_requests_per_connection, c.max_connection_duration) == (2.5, 7, 30.0)
    c = cluster_of(protocol_options("idle_timeout: 0s, max_connection_duration: 0s"))
    assert c.idle_timeout is None and c.max_connection_duration is None     # 0s: none
    c = cluster_of(protocol_options(""))
    assert c.idle_timeout == 3600.0
    assert (c.upstream_protocol, c.http2, c.http2_protocol_options, c.h2_options) == ("http1", False, None, None)


H2_EXPLICIT = "explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 8, hpack_table_size: 0}}"
TLS = ("    transport_socket: {name: envoy.transport_sockets.tls, typed_config: "
       "{'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext}}")


def test_http2_upstream_options_are_read():
    c = cluster_of(protocol_options("idle_timeout: 2s", H2_EXPLICIT))
    assert (c.upstream_protocol, c.http2, c.idle_timeout) == ("http2", True, 2.0)
    assert c.http2_protocol_options == fastproxy.http.Http2ProtocolOptions(max_concurrent_streams=8,
                                                                            hpack_table_size=0)
    assert c.h2_options.to_spec()["max_concurrent_streams"] == 8
    # Envoy's defaults for an empty one; the deprecated Cluster-level field is the same cluster.
    explicit = cluster_of(protocol_options("", "explicit_http_config: {http2_protocol_options: {}}"))
    assert explicit.h2_options == fastproxy.http.Http2ProtocolOptions()
    assert cluster_of("    http2_protocol_options: {}") == explicit
    assert cluster_of("    http2_protocol_options: {max_concurrent_streams: 8, hpack_table_size: 0}") == \
        cluster_of(protocol_options("", H2_EXPLICIT))


def test_auto_config_over_tls_is_read():
    c = cluster_of(protocol_options("", "auto_config: {http_protocol_options: {}, "
                                        "http2_protocol_options: {max_concurrent_streams: 3}}"), TLS)
    assert (c.upstream_protocol, c.http2) == ("auto", False)
    assert c.h2_options.max_concurrent_streams == 3 and c.tls is not None
    c = cluster_of(protocol_options("", "auto_config: {}"), TLS)
    assert c.upstream_protocol == "auto" and c.h2_options == fastproxy.http.Http2ProtocolOptions()


def test_upstream_protocol_in_the_python_api():
    ep = [fastproxy.Endpoint("127.0.0.1", 1)]
    assert fastproxy.Cluster("c", ep, http2=True).upstream_protocol == "http2"
    c = fastproxy.Cluster("c", ep, http2_protocol_options=fastproxy.http.Http2ProtocolOptions(max_concurrent_streams=2))
    assert (c.upstream_protocol, c.http2, c.h2_options.max_concurrent_streams) == ("http2", True, 2)
    assert fastproxy.Cluster("c", ep, upstream_protocol="http2").http2 is True
    assert fastproxy.Cluster("c", ep).h2_options is None
    for c in (fastproxy.Cluster("c", ep, http2=True), fastproxy.Cluster("c", ep, upstream_protocol="http2")):
        c.validate("cluster")


def test_deprecated_cluster_max_requests_per_connection():
    assert cluster_of("    max_requests_per_connection: 3").max_requests_per_connection == 3
    with pytest.raises(ConfigError) as e:
        cluster_of("    max_requests_per_connection: 3",
                   protocol_options("max_requests_per_connection: 2"))
    assert e.value.path == f"{C0}.max_requests_per_connection"
    assert "only one of max_requests_per_connection" in e.value.message


def test_circuit_breakers_first_default_threshold_wins():
    # What Envoy 1.40 does with two DEFAULT thresholds (checked: the first one's limit holds).
    c = cluster_of("    circuit_breakers:\n      thresholds:\n"
                   "      - {priority: HIGH, max_connections: 1}\n"
                   "      - {max_connections: 5, max_pending_requests: 6, max_requests: 7, max_retries: 0,"
                   " track_remaining: true}\n"
                   "      - {priority: DEFAULT, max_connections: 9}")
    assert (c.max_connections, c.max_pending_requests, c.max_requests, c.max_retries) == (5, 6, 7, 0)
    assert c.track_remaining is True


# The first ENVOY_REFUSES of BAD, Envoy 1.40 refuses too; ENVOY_TAKES it takes.
ENVOY_REFUSES = 10
BAD = [
    (protocol_options("", "explicit_http_config: {http3_protocol_options: {}}"),
     f"{HPO0}.explicit_http_config.http3_protocol_options", "HTTP/3"),
    # Envoy's words: "ALPN configured for cluster backend which has a non-ALPN transport socket"
    (protocol_options("", "auto_config: {http_protocol_options: {}}"), f"{HPO0}.auto_config",
     "ALPN configured for cluster backend"),
    (protocol_options("idle_timeout: 1s", ""), f"{HPO0}.upstream_protocol_options", "required"),
    (protocol_options("", "explicit_http_config: {}"), f"{HPO0}.explicit_http_config.protocol_config",
     "required"),
    (protocol_options("", "explicit_http_config: {http_protocol_options: {}, http2_protocol_options: {}}"),
     f"{HPO0}.explicit_http_config.http2_protocol_options", "only one of"),
    (protocol_options("", "explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 0}}"),
     f"{HPO0}.explicit_http_config.http2_protocol_options.max_concurrent_streams", "1..2147483647"),
    (protocol_options("", "explicit_http_config: {http2_protocol_options: {initial_stream_window_size: 100}}"),
     f"{HPO0}.explicit_http_config.http2_protocol_options.initial_stream_window_size", "65535..2147483647"),
    (protocol_options("", "explicit_http_config: {http2_protocol_options: {connection_keepalive: {interval: 1s}}}"),
     f"{HPO0}.explicit_http_config.http2_protocol_options.connection_keepalive.timeout", "required"),
    ("    http2_protocol_options: {max_outbound_frames: 0}", f"{C0}.http2_protocol_options.max_outbound_frames",
     "1..4294967295"),
    (protocol_options("", "auto_config: {http2_protocol_options: {max_concurrent_streams: 0}}") + "\n" + TLS,
     f"{HPO0}.auto_config.http2_protocol_options.max_concurrent_streams", "1..2147483647"),
    # Envoy takes these (ENVOY_TAKES); fastproxy does not build them.
    (protocol_options("", "use_downstream_protocol_config: {http_protocol_options: {}}"),
     f"{HPO0}.use_downstream_protocol_config", "per request) is not supported"),
    (protocol_options("", "explicit_http_config: {http2_protocol_options: {allow_metadata: true}}"),
     f"{HPO0}.explicit_http_config.http2_protocol_options.allow_metadata", "METADATA"),
    ("    http2_protocol_options: {custom_settings_parameters: [{identifier: 10, value: 1}]}",
     f"{C0}.http2_protocol_options.custom_settings_parameters[0]", "custom SETTINGS"),
    (protocol_options("max_headers_count: 10"),
     f"{HPO0}.common_http_protocol_options.max_headers_count", "unsupported field"),
    (protocol_options("idle_timeout: -1s"), f"{HPO0}.common_http_protocol_options.idle_timeout", "negative"),
    (protocol_options("max_requests_per_connection: -1"),
     f"{HPO0}.common_http_protocol_options.max_requests_per_connection", "range"),
    (protocol_options("", "explicit_http_config: {http_protocol_options: {accept_http_10: true}}"),
     f"{HPO0}.explicit_http_config.http_protocol_options.accept_http_10", "unsupported field"),
    ("    typed_extension_protocol_options:\n      envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions:\n"
     "        '@type': type.googleapis.com/envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions",
     f"{C0}.typed_extension_protocol_options.envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions",
     "unsupported"),
    (f"    typed_extension_protocol_options:\n      {HPO}:\n        '@type': type.googleapis.com/x.Y",
     f"{HPO0}.@type", HPO),
    (breakers(max_connections=-1), f"{C0}.circuit_breakers.thresholds[0].max_connections", "range"),
    (breakers(max_requests="lots"), f"{C0}.circuit_breakers.thresholds[0].max_requests", "integer"),
    (breakers(priority="URGENT"), f"{C0}.circuit_breakers.thresholds[0].priority", "URGENT"),
    (breakers(max_connection_pools=1), f"{C0}.circuit_breakers.thresholds[0].max_connection_pools",
     "unknown"),
    (breakers(track_remaining="'yes'"), f"{C0}.circuit_breakers.thresholds[0].track_remaining", "bool"),
    ("    circuit_breakers: {per_host_thresholds: [{max_connections: 1}]}",
     f"{C0}.circuit_breakers.per_host_thresholds", "per-host circuit breakers is unsupported"),
]


@pytest.mark.parametrize("extra, path, fragment", BAD)
def test_bad_cluster_options_name_the_field(extra, path, fragment):
    with pytest.raises(ConfigError) as e:
        cluster_of(extra)
    assert e.value.path == path
    assert fragment in e.value.message


def test_model_validation_names_the_field():
    for field, value in (("max_connections", -1), ("max_requests", 1 << 32), ("max_pending_requests", True),
                         ("max_requests_per_connection", 1.5), ("idle_timeout", -1),
                         ("max_connection_duration", "1s")):
        c = fastproxy.Cluster("c", [fastproxy.Endpoint("127.0.0.1", 1)], **{field: value})
        with pytest.raises(ConfigError) as e:
            c.validate("cluster")
        assert e.value.path == f"cluster.{field}"


def test_model_validation_names_the_protocol_fields():
    ep = [fastproxy.Endpoint("127.0.0.1", 1)]
    H2 = fastproxy.http.Http2ProtocolOptions
    cases = [
        (dict(upstream_protocol="h2"), "cluster.upstream_protocol", "http1, http2, auto"),
        (dict(upstream_protocol="auto"), "cluster.upstream_protocol", "needs tls"),
        (dict(http2=True, upstream_protocol="auto"), "cluster.upstream_protocol", "needs tls"),
        (dict(http2_protocol_options=H2(max_concurrent_streams=0)),
         "cluster.http2_protocol_options.max_concurrent_streams", "1..2147483647"),
        (dict(http2_protocol_options="fast"), "cluster.http2_protocol_options", "expected Http2ProtocolOptions"),
    ]
    for kwargs, path, fragment_ in cases:
        with pytest.raises(ConfigError) as e:
            fastproxy.Cluster("c", ep, **kwargs).validate("cluster")
        assert (e.value.path, fragment_ in e.value.message) == (path, True), e.value
    c = fastproxy.Cluster("c", ep, http2=True)
    c.http2 = False                 # changed after construction: the two fields disagree
    with pytest.raises(ConfigError) as e:
        c.validate("cluster")
    assert e.value.path == "cluster.http2" and "disagrees" in e.value.message
    c = fastproxy.Cluster("c", ep)
    c.http2_protocol_options = H2()
    with pytest.raises(ConfigError) as e:
        c.validate("cluster")
    assert e.value.path == "cluster.http2_protocol_options" and "HTTP/1.1 cluster" in e.value.message


def test_dump_writes_the_upstream_protocol_back():
    """/config_dump's cluster: explicit_http_config with http2_protocol_options (the fields
    away from Envoy's defaults) or auto_config, and it loads back as the same cluster."""
    from fastproxy.config.dump import cluster_json
    explicit = cluster_of(protocol_options("", H2_EXPLICIT))
    options = cluster_json(explicit)["typed_extension_protocol_options"][HPO]
    assert options["explicit_http_config"] == {"http2_protocol_options": {"max_concurrent_streams": 8,
                                                                          "hpack_table_size": 0}}
    auto = cluster_of(protocol_options("", "auto_config: {}"), TLS)
    assert cluster_json(auto)["typed_extension_protocol_options"][HPO]["auto_config"] == {
        "http_protocol_options": {}, "http2_protocol_options": {}}
    for c in (explicit, auto, cluster_of("    http2_protocol_options: {}"), cluster_of()):
        boot = load_envoy(http_yaml())
        boot.clusters[0] = c
        from fastproxy.config.dump import bootstrap_json
        assert load_envoy(bootstrap_json(boot)).clusters[0] == c


ENVOY_TAKES = [extra for extra, _, _ in BAD[ENVOY_REFUSES:ENVOY_REFUSES + 3]]

GOOD = [
    protocol_options("idle_timeout: 2.5s, max_requests_per_connection: 7, max_connection_duration: 30s"),
    protocol_options("idle_timeout: 0s", "explicit_http_config: {http_protocol_options: {}}"),
    protocol_options("idle_timeout: 1s", H2_EXPLICIT),
    "    http2_protocol_options: {initial_connection_window_size: 65535, connection_keepalive: {timeout: 1s}}",
    protocol_options("", "auto_config: {http2_protocol_options: {max_concurrent_streams: 50}}") + "\n" + TLS,
    "    max_requests_per_connection: 3",
    breakers(max_connections=1, max_pending_requests=1, max_requests=1, max_retries=0, track_remaining="true"),
    "    circuit_breakers:\n      thresholds:\n      - {priority: HIGH, max_connections: 1}\n"
    "      - {max_connections: 5}\n      - {max_connections: 9}",
]


@needs_envoy
@pytest.mark.parametrize("extra", GOOD + [e for e, _, _ in BAD][:ENVOY_REFUSES] + ENVOY_TAKES)
def test_envoy_agrees_on_validity(extra, tmp_path):
    """The good configs above are Envoy's too, Envoy refuses the first bad ones, and takes
    those fastproxy does not build (ENVOY_TAKES)."""
    cfg = tmp_path / "e.yaml"
    cfg.write_text(http_yaml(extra))
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    ok = extra in GOOD or extra in ENVOY_TAKES
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    if extra in GOOD:
        cluster_of(extra)


# --------------------------------------------------------------------------- helpers

class HoldUpstream:
    """An HTTP upstream that answers `/hold...` only after release(); anything else at once.
    The body says what it got: "<method> <path> <body length>"."""

    def __init__(self):
        self.gate = threading.Event()
        self.server = RawHttpUpstream(self.handle)
        self.port = self.server.port

    def handle(self, method, path, headers, body):
        if path.startswith("/hold"):
            self.gate.wait(30)
        payload = f"{method} {path} {len(body)}".encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)

    def seen(self, prefix="/"):
        return sum(1 for r in list(self.server.requests) if r[1].startswith(prefix))

    def release(self):
        self.gate.set()

    def close(self):
        self.gate.set()
        self.server.close()


def read_response(s):
    """(status, {lower-case name: value}, body) of one response with a Content-Length."""
    got = recv_head(s)
    assert got is not None, "the connection closed before a response"
    head, rest = got
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = rest + (recv_exact(s, n - len(rest)) if len(rest) < n else b"")
    return int(lines[0].split(" ")[1]), headers, body


def send(addr, path, method="GET", body=b""):
    s = connect(addr)
    s.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
              % (method.encode(), path.encode(), len(body), body))
    return s


def request(addr, path):
    s = send(addr, path)
    try:
        return read_response(s)
    finally:
        s.close()


@contextlib.contextmanager
def fastproxy_running(text, concurrency=1):
    p = fastproxy.Proxy.from_envoy(text, concurrency=concurrency)
    p.start()
    try:
        yield p, p.listener_address("web")
    finally:
        p.stop(drain_timeout=0.5)


def until(p, **want):
    """Wait until every cluster.backend.<name> stat has the wanted value (name with '__'
    for '.'); returns the stats."""
    def check():
        st = p.stats()
        return all(st.get(B + k.replace("__", "."), None) == v for k, v in want.items()) and st
    return wait_for(check, timeout=10, msg=f"stats {want}")


# --------------------------------------------------------------------------- behaviour

def test_max_connections_queues_requests_then_pending_overflows():
    up = HoldUpstream()
    try:
        text = http_yaml(breakers(max_connections=1, max_pending_requests=1), up=up.port)
        with fastproxy_running(text) as (p, addr):
            a = send(addr, "/hold/a")
            until(p, upstream_rq_active=1, upstream_cx_active=1)
            wait_for(lambda: up.seen("/hold/a") == 1)
            # b needs a second connection: it waits (a pending request), with its body.
            b = send(addr, "/hold/b", "POST", b"hello")
            st = until(p, upstream_rq_pending_active=1, upstream_cx_overflow=1)
            assert st[CB + "cx_open"] == 1 and st[CB + "rq_pending_open"] == 1 and st[CB + "rq_open"] == 0
            assert st[B + "upstream_cx_total"] == 1 and up.server.connections == 1
            # c is one pending request too many: Envoy's overflow reply.
            status, headers, body = request(addr, "/c")
            assert (status, headers.get("x-envoy-overloaded"), body) == (503, "true", OVERFLOW_BODY)
            st = until(p, upstream_rq_pending_overflow=1)
            assert st[B + "upstream_rq_5xx"] == 1 and st[B + "upstream_rq_pending_total"] == 2
            assert st["http.web.downstream_rq_5xx"] == 1
            up.release()
            assert read_response(a)[2] == b"GET /hold/a 0"
            # b went over a's connection once it was free: still one upstream connection.
            assert read_response(b)[2] == b"POST /hold/b 5"
            st = until(p, upstream_rq_active=0, upstream_rq_pending_active=0, upstream_rq_total=2)
            assert st[B + "upstream_cx_total"] == 1 and up.server.connections == 1
            assert st[B + "upstream_rq_2xx"] == 2 and st[CB + "rq_pending_open"] == 0
            a.close()
            b.close()
    finally:
        up.close()


def test_max_requests_overflows_on_an_idle_connection_too():
    up = HoldUpstream()
    try:
        text = http_yaml(breakers(max_requests=1), up=up.port)
        with fastproxy_running(text) as (p, addr):
            assert request(addr, "/warm")[0] == 200        # leaves an idle pooled connection
            a = send(addr, "/hold/a")
            until(p, upstream_rq_active=1)
            st = p.stats()
            assert st[CB + "rq_open"] == 1
            # b on a new connection (Envoy: connects, then the request is refused)...
            status, headers, body = request(addr, "/b")
            assert (status, headers.get("x-envoy-overloaded"), body) == (503, "true", OVERFLOW_BODY)
            until(p, upstream_rq_active_overflow=1)
            # ... and c on the idle connection b's connect left behind.
            assert request(addr, "/c")[0] == 503
            st = until(p, upstream_rq_active_overflow=2)
            assert st[B + "upstream_rq_total"] == 2 and up.seen("/b") == up.seen("/c") == 0
            up.release()
            assert read_response(a)[0] == 200
            a.close()
            until(p, upstream_rq_active=0)
            assert request(addr, "/d")[0] == 200           # the limit is free again
            assert p.stats()[CB + "rq_open"] == 0
    finally:
        up.close()


def test_limits_of_one_carry_many_requests_without_leaking():
    """Every admitted connection, pending and active request is given back: with every limit
    at 1, sequential requests (keep-alive and fresh connections) all pass."""
    up = HoldUpstream()
    try:
        text = http_yaml(breakers(max_connections=1, max_pending_requests=1, max_requests=1,
                                  track_remaining="true"), up=up.port)
        with fastproxy_running(text, concurrency=2) as (p, addr):
            s = connect(addr)
            for i in range(30):
                s.sendall(b"GET /k/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                assert read_response(s)[0] == 200
            s.close()
            for i in range(10):
                assert request(addr, f"/n/{i}")[0] == 200
            st = until(p, upstream_rq_active=0, upstream_rq_pending_active=0)
            assert st[CB + "remaining_rq"] == 1 and st[CB + "remaining_pending"] == 1
            assert st[B + "upstream_rq_total"] == 40
    finally:
        up.close()


def test_a_waiting_request_can_leave_or_time_out():
    up = HoldUpstream()
    try:
        text = http_yaml(breakers(max_connections=1), up=up.port)
        with fastproxy_running(text) as (p, addr):
            a = send(addr, "/hold/a")
            until(p, upstream_rq_active=1)
            b = send(addr, "/hold/b")
            until(p, upstream_rq_pending_active=1)
            b.close()                                   # the client gives up while it waits
            until(p, upstream_rq_pending_active=0)
            # /wait has a 0.3 s route timeout: it ends waiting with Envoy's 504.
            w = send(addr, "/wait")
            until(p, upstream_rq_pending_active=1)
            status, _, body = read_response(w)
            assert (status, body) == (504, b"upstream request timeout")
            st = until(p, upstream_rq_pending_active=0, upstream_rq_timeout=1)
            assert st[B + "upstream_cx_total"] == 1
            up.release()
            assert read_response(a)[0] == 200
            a.close()
            assert request(addr, "/c")[2] == b"GET /c 0"
            st = until(p, upstream_rq_active=0)
            assert st[B + "upstream_cx_total"] == 1 and up.seen("/hold/b") == up.seen("/wait") == 0
    finally:
        up.close()


def test_max_requests_holds_across_workers():
    """The limits are the cluster's, not a worker's: whichever worker a client lands on,
    the second request is refused while the first is active."""
    up = HoldUpstream()
    try:
        text = http_yaml(breakers(max_requests=1), up=up.port)
        with fastproxy_running(text, concurrency=4) as (p, addr):
            a = send(addr, "/hold/a")
            until(p, upstream_rq_active=1)
            for i in range(8):
                assert request(addr, f"/x/{i}")[0] == 503
            until(p, upstream_rq_active_overflow=8)
            up.release()
            assert read_response(a)[0] == 200
            a.close()
    finally:
        up.close()


def test_tcp_proxy_max_connections_across_workers():
    echo = EchoServer()
    try:
        text = tcp_yaml(breakers(max_connections=2), up=echo.port)
        with fastproxy_running(text, concurrency=4) as (p, addr):
            held = [connect(addr) for _ in range(2)]
            for s in held:
                s.sendall(b"ping")
                assert recv_exact(s, 4) == b"ping"
            extra = connect(addr)
            assert recv_until_eof(extra) == b""           # closed: the cluster is full
            extra.close()
            st = until(p, upstream_cx_overflow=1)
            assert st[B + "upstream_cx_total"] == 2 and echo.accepted == 2 and st[CB + "cx_open"] == 1
            held.pop().close()
            until(p, upstream_cx_active=1)
            assert echo_roundtrip(addr, b"again") == b"again"
            held[0].close()
    finally:
        echo.close()


@pytest.mark.parametrize("where", ["protocol_options", "cluster"])
def test_max_requests_per_connection(where):
    up = HoldUpstream()
    try:
        extra = (protocol_options("max_requests_per_connection: 2") if where == "protocol_options"
                 else "    max_requests_per_connection: 2")
        with fastproxy_running(http_yaml(extra, up=up.port)) as (p, addr):
            s = connect(addr)
            for i in range(5):
                s.sendall(b"GET /r/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                assert read_response(s)[2] == f"GET /r/{i} 0".encode()
            s.close()
            st = until(p, upstream_cx_destroy_local=2, upstream_cx_active=1)
            assert st[B + "upstream_cx_max_requests"] == 2 and st[B + "upstream_cx_total"] == 3
            assert up.server.connections == 3
    finally:
        up.close()


def test_pool_idle_timeout_is_the_clusters():
    up = HoldUpstream()
    try:
        text = http_yaml(protocol_options("idle_timeout: 0.3s"), up=up.port)
        with fastproxy_running(text) as (p, addr):
            assert request(addr, "/a")[0] == 200
            assert request(addr, "/other")[0] == 200     # cluster "other": Envoy's 1 h default
            st = until(p, upstream_cx_idle_timeout=1, upstream_cx_active=0, upstream_cx_destroy_local=1)
            assert st["cluster.other.upstream_cx_active"] == 1
            assert st["cluster.other.upstream_cx_idle_timeout"] == 0
    finally:
        up.close()


def test_max_connection_duration():
    up = HoldUpstream()
    try:
        text = http_yaml(protocol_options("max_connection_duration: 0.4s"), up=up.port)
        with fastproxy_running(text) as (p, addr):
            # An idle connection closes when its time is up.
            assert request(addr, "/a")[0] == 200
            until(p, upstream_cx_max_duration_reached=1, upstream_cx_active=0)
            # A busy one finishes its response first, then closes.
            a = send(addr, "/hold/a")
            until(p, upstream_cx_max_duration_reached=2, upstream_rq_active=1)
            up.release()
            assert read_response(a)[2] == b"GET /hold/a 0"
            a.close()
            st = until(p, upstream_cx_active=0, upstream_cx_destroy_local=2)
            assert st[B + "upstream_cx_destroy_with_active_rq"] == 0
    finally:
        up.close()


class UpstreamHostLog(fastproxy.HttpFilter):
    """Records (path, upstream host) of every stream from its on_log."""
    seen = []

    def decode_headers(self, headers, end_stream):
        self.callbacks.filter_state["path"] = headers[":path"]
        return fastproxy.FilterStatus.CONTINUE

    def on_log(self, info):
        UpstreamHostLog.seen.append((self.callbacks.filter_state.get("path"), info.upstream_host))


def test_dns_changes_hosts_under_a_request_in_flight(monkeypatch):
    """DNS replaces the cluster's hosts while a request is in flight to the old host: that
    connection keeps the host set it was made for (its filters and log still name the host
    it went to; the set used to be freed under it), it is not pooled for the new set, and
    the new host takes the next requests."""
    from fastproxy.http import (HttpConnectionManager, Route, RouteAction, RouteConfiguration,
                                RouteMatch, VirtualHost)
    old, new = HoldUpstream(), HoldUpstream()
    resolved = [old]
    monkeypatch.setattr(fastproxy.proxy, "resolve_endpoints",
                        lambda cluster: [("127.0.0.1", resolved[0].port, 1, "localhost")])
    UpstreamHostLog.seen.clear()
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="backend", timeout=0))])])
    hcm = HttpConnectionManager("web", rc, http_filters=[fastproxy.PythonHttpFilter("log", UpstreamHostLog)])
    cluster = fastproxy.Cluster("backend", [fastproxy.Endpoint("localhost", old.port)], type="STRICT_DNS",
                                dns_refresh_rate=0.05)
    p = fastproxy.Proxy([fastproxy.Listener("web", hcm, port=0)], [cluster], concurrency=1)
    p.start()
    try:
        addr = p.listener_address("web")
        held = send(addr, "/hold/a")
        wait_for(lambda: old.seen("/hold/a") == 1)
        resolved[0] = new
        # The worker has the new host set once a request reaches the new host.
        wait_for(lambda: request(addr, "/b")[0] == 200 and new.seen("/b"), timeout=10,
                 msg="requests go to the new host")
        old.release()
        assert read_response(held)[2] == b"GET /hold/a 0"
        held.close()
        logged = wait_for(lambda: dict(UpstreamHostLog.seen).get("/hold/a", "") != "" and dict(UpstreamHostLog.seen))
        assert logged["/hold/a"] == f"127.0.0.1:{old.port}"
        assert logged["/b"] == f"127.0.0.1:{new.port}"
        # The old host's connection closed after its response; the new host's stays idle.
        st = until(p, upstream_cx_active=1)
        assert st[B + "upstream_cx_destroy_with_active_rq"] == 0
        # A membership update, as Envoy counts a DNS cluster's new addresses.
        assert (st["cluster_manager.cluster_updated"], st["cluster_manager.cluster_modified"]) == (1, 0)
    finally:
        p.stop(drain_timeout=0.5)
        old.close()
        new.close()


# --------------------------------------------------------------------------- parity with Envoy

def _envoy_parity():
    import test_http_stats_parity as parity
    return parity


def _run(kind, text, tmp_path, drive):
    """drive(addr, admin) in Envoy (kind 'envoy') or fastproxy; returns what it returns."""
    return run_on(kind, text, tmp_path, drive)


def _poll(admin, **want):
    def check():
        st = _envoy_parity().read_stats(admin)
        return all(st.get(B + k.replace("__", "."), 0) == v for k, v in want.items()) and st
    return wait_for(check, timeout=10, msg=f"stats {want}")


PARITY_STATS = [B + n for n in (
    "upstream_cx_total", "upstream_cx_active", "upstream_cx_http1_total", "upstream_cx_overflow",
    "upstream_cx_pool_overflow", "upstream_rq_pending_overflow", "upstream_rq_active_overflow",
    "upstream_rq_retry_overflow", "upstream_rq_pending_total", "upstream_rq_pending_active",
    "upstream_rq_total", "upstream_rq_active", "upstream_rq_2xx", "upstream_rq_5xx",
    "upstream_rq_completed", "upstream_cx_max_requests", "upstream_cx_destroy",
    "upstream_cx_destroy_local", "upstream_cx_idle_timeout", "upstream_cx_max_duration_reached")] + \
    [B + f"circuit_breakers.{prio}.{g}" for prio in ("default", "high")
     for g in ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open")] + \
    [CB + g for g in ("remaining_cx", "remaining_pending", "remaining_rq", "remaining_retries")]


def _compare(envoy, ours):
    missing = [n for n in PARITY_STATS if n in envoy and n not in ours]
    assert not missing, f"fastproxy lacks {missing}"
    return {n: (envoy.get(n), ours.get(n)) for n in PARITY_STATS if n in envoy and envoy[n] != ours[n]}


@needs_envoy
def test_circuit_breakers_match_envoy(tmp_path):
    def scenario(kind):
        up = HoldUpstream()
        text = http_yaml(breakers(max_connections=1, max_pending_requests=1, max_requests=2,
                                  track_remaining="true"), up=up.port)

        def drive(addr, admin):
            snaps, replies = [], []
            a = send(addr, "/hold/a")
            wait_for(lambda: up.seen("/hold/a") == 1)
            snaps.append(_poll(admin, upstream_rq_active=1))
            b = send(addr, "/hold/b", "POST", b"hello")
            snaps.append(_poll(admin, upstream_rq_pending_active=1))
            replies.append(request(addr, "/c"))                 # pending overflow
            snaps.append(_poll(admin, upstream_rq_pending_overflow=1))
            up.release()
            replies.append(read_response(a))
            replies.append(read_response(b))
            a.close()
            b.close()
            snaps.append(_poll(admin, upstream_rq_active=0, upstream_rq_total=2))
            page = admin_get(admin, "/stats/prometheus")
            return snaps, replies, page
        try:
            return _run(kind, text, tmp_path, drive)
        finally:
            up.close()

    envoy_snaps, envoy_replies, envoy_page = scenario("envoy")
    snaps, replies, page = scenario("fastproxy")
    assert envoy_snaps[2][B + "upstream_cx_overflow"] == 1          # the traffic did its job
    for i, (e, o) in enumerate(zip(envoy_snaps, snaps)):
        assert _compare(e, o) == {}, f"step {i}: {{name: (envoy, fastproxy)}}"
    for (es, eh, eb), (s, h, b) in zip(envoy_replies, replies):
        assert (s, eh.get("x-envoy-overloaded"), eb) == (es, h.get("x-envoy-overloaded"), b)
    assert replies[0][0] == 503 and replies[0][2] == OVERFLOW_BODY
    # /stats/prometheus: the same metrics, labels, types and values on both pages.
    from fastproxy.prometheus import tag
    parity = _envoy_parity()
    envoy_series, envoy_types = parity.parse_prometheus(envoy_page)
    series, types = parity.parse_prometheus(page)
    for name in PARITY_STATS:
        metric, labels = tag(name)
        key = (metric, frozenset(labels))
        assert key in envoy_series, f"{name}: not on Envoy's page as {key}"
        assert (types.get(metric), series.get(key)) == (envoy_types[metric], envoy_series[key]), name


@needs_envoy
def test_max_requests_and_per_connection_limits_match_envoy(tmp_path):
    def scenario(kind):
        up = HoldUpstream()
        text = http_yaml(breakers(max_requests=1),
                         protocol_options("max_requests_per_connection: 2"), up=up.port)

        def drive(addr, admin):
            snaps, replies = [], []
            s = connect(addr)
            for i in range(3):                                  # 2 connections, one limit hit
                s.sendall(b"GET /r/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                replies.append(read_response(s))
            s.close()
            snaps.append(_poll(admin, upstream_rq_total=3, upstream_cx_destroy=1))
            a = send(addr, "/hold/a")
            snaps.append(_poll(admin, upstream_rq_active=1))
            replies.append(request(addr, "/b"))                 # active overflow (a new connection)
            snaps.append(_poll(admin, upstream_rq_active_overflow=1))
            replies.append(request(addr, "/c"))                 # ... and on the idle one
            snaps.append(_poll(admin, upstream_rq_active_overflow=2))
            up.release()
            replies.append(read_response(a))
            a.close()
            snaps.append(_poll(admin, upstream_rq_active=0, upstream_rq_total=4))
            return snaps, replies
        try:
            return _run(kind, text, tmp_path, drive)
        finally:
            up.close()

    envoy_snaps, envoy_replies = scenario("envoy")
    snaps, replies = scenario("fastproxy")
    assert envoy_snaps[0][B + "upstream_cx_max_requests"] == 1
    for i, (e, o) in enumerate(zip(envoy_snaps, snaps)):
        assert _compare(e, o) == {}, f"step {i}: {{name: (envoy, fastproxy)}}"
    assert [r[0] for r in envoy_replies] == [r[0] for r in replies] == [200, 200, 200, 503, 503, 200]
    for (es, eh, eb), (s, h, b) in zip(envoy_replies, replies):
        assert (eh.get("x-envoy-overloaded"), eb) == (h.get("x-envoy-overloaded"), b)


@needs_envoy
def test_tcp_proxy_max_connections_matches_envoy(tmp_path):
    def scenario(kind):
        echo = EchoServer()
        text = tcp_yaml(breakers(max_connections=1), up=echo.port)

        def drive(addr, admin):
            a = connect(addr)
            a.sendall(b"ping")
            assert recv_exact(a, 4) == b"ping"
            b = connect(addr)
            assert recv_until_eof(b) == b""
            st = _poll(admin, upstream_cx_overflow=1)
            a.close()
            b.close()
            return st, echo.accepted
        try:
            return _run(kind, text, tmp_path, drive)
        finally:
            echo.close()

    envoy, envoy_accepted = scenario("envoy")
    ours, accepted = scenario("fastproxy")
    assert envoy_accepted == accepted == 1
    names = [B + n for n in ("upstream_cx_total", "upstream_cx_active", "upstream_cx_overflow")] + \
        [CB + "cx_open", CB + "rq_open", CB + "rq_pending_open"]
    assert {n: envoy.get(n) for n in names} == {n: ours.get(n) for n in names}


# --------------------------------------------------------------------------- a cluster changed at run time

def _backend(*ups, **options):
    return fastproxy.Cluster("backend", [fastproxy.Endpoint("127.0.0.1", u.port) for u in ups], **options)


def _http_proxy(cluster, access_log=None):
    """One worker (so round robin and pools are deterministic), listener "web" routing
    everything to cluster "backend"."""
    from fastproxy.http import (AccessLog, HttpConnectionManager, Route, RouteAction, RouteConfiguration,
                                RouteMatch, VirtualHost)
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="backend", timeout=0))])])
    logs = [AccessLog(str(access_log), "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER%\n")] if access_log else []
    hcm = HttpConnectionManager("web", rc, access_log=logs)
    p = fastproxy.Proxy([fastproxy.Listener("web", hcm, port=0)], clusters=[cluster], concurrency=1)
    p.start()
    return p


def ask(s, path):
    """One request on an open keep-alive connection."""
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return read_response(s)


def test_cluster_change_keeps_the_connections_to_hosts_that_stay():
    """A changed cluster keeps its pool: after a change of its params (connect timeout,
    circuit breakers) and of its endpoints (one host stays, one comes, then one goes), the
    host that stayed is still served on the upstream connection it had."""
    a, b = HoldUpstream(), HoldUpstream()
    p = _http_proxy(_backend(a))
    try:
        addr = p.listener_address("web")
        assert request(addr, "/1")[0] == 200
        until(p, upstream_cx_active=1)
        p.update(clusters=[_backend(a, connect_timeout=2.0, max_requests=100)])     # params only
        assert request(addr, "/2")[0] == 200
        assert a.server.connections == 1
        p.update(clusters=[_backend(a, b, connect_timeout=2.0, max_requests=100)])  # b added
        assert [request(addr, f"/3-{i}")[0] for i in range(4)] == [200] * 4
        assert (a.seen("/3-"), b.seen("/3-")) == (2, 2)
        assert (a.server.connections, b.server.connections) == (1, 1)
        p.update(clusters=[_backend(b, connect_timeout=2.0, max_requests=100)])     # a removed
        assert [request(addr, f"/4-{i}")[0] for i in range(2)] == [200] * 2
        assert (a.seen("/4-"), b.seen("/4-"), b.server.connections) == (0, 2, 1)
        # a's idle connection closed with its host's removal; b's stays pooled.
        st = until(p, upstream_cx_active=1, upstream_cx_total=2)
        assert st[B + "upstream_cx_destroy_with_active_rq"] == 0
        assert (st["cluster_manager.cluster_added"], st["cluster_manager.cluster_modified"],
                st["cluster_manager.cluster_removed"], st["cluster_manager.active_clusters"]) == (1, 3, 0, 1)
    finally:
        p.stop(drain_timeout=0.5)
        a.close()
        b.close()


def test_a_10000_endpoint_host_set_swaps_cheaply_and_keeps_the_host_that_stays():
    """EDS-sized host sets: replacing 9,999 of 10,000 endpoints is an update of well under a
    second (the weighted schedule and the pool's remapping are linear in the hosts), and the
    host that stays, now at another index, is served on the connection it had."""
    import time
    up = HoldUpstream()

    def endpoints(net, real_at):
        # 9,999 addresses nothing listens on (round robin never reaches them below)
        fake = [fastproxy.Endpoint(f"127.{net}.{i // 250}.{i % 250 + 1}", 80) for i in range(9999)]
        return fake[:real_at] + [fastproxy.Endpoint("127.0.0.1", up.port)] + fake[real_at:]

    p = _http_proxy(fastproxy.Cluster("backend", endpoints(1, 0)))
    try:
        addr = p.listener_address("web")
        assert request(addr, "/1")[0] == 200            # round robin: host 0, then 1 next
        start = time.monotonic()
        p.update(clusters=[fastproxy.Cluster("backend", endpoints(2, 1))])
        took = time.monotonic() - start
        assert took < 2.0, f"update took {took:.2f}s"
        assert request(addr, "/2")[0] == 200
        assert (up.seen("/"), up.server.connections) == (2, 1)
        assert p.stats()[B + "membership_total"] == 10000
    finally:
        p.stop(drain_timeout=0.5)
        up.close()


def test_request_in_flight_to_a_host_the_update_removes_completes():
    """The endpoints change under a request in flight to a host that leaves: it completes
    (200), its connection closes afterwards instead of staying pooled, and the new host's
    connection is pooled and reused."""
    old, new = HoldUpstream(), HoldUpstream()
    p = _http_proxy(_backend(old))
    try:
        addr = p.listener_address("web")
        held = send(addr, "/hold/a")
        wait_for(lambda: old.seen("/hold/a") == 1)
        p.update(clusters=[_backend(new)])
        status, _, body = request(addr, "/b")
        assert (status, body, new.seen("/b")) == (200, b"GET /b 0", 1)
        old.release()
        status, _, body = read_response(held)
        held.close()
        assert (status, body) == (200, b"GET /hold/a 0")
        st = until(p, upstream_cx_active=1)
        assert st[B + "upstream_cx_destroy_with_active_rq"] == 0
        assert request(addr, "/c")[0] == 200
        assert new.server.connections == 1
    finally:
        p.stop(drain_timeout=0.5)
        old.close()
        new.close()


def test_open_connection_sees_the_changed_circuit_breaker():
    """An open downstream connection (its listener config not rebuilt) uses the cluster's
    new limits from the update on: max_requests lowered to 1 under a request in flight
    refuses the next request with Envoy's overflow reply."""
    up = HoldUpstream()
    p = _http_proxy(_backend(up))
    keep = connect(p.listener_address("web"))
    try:
        addr = p.listener_address("web")
        assert ask(keep, "/x")[0] == 200
        held = send(addr, "/hold/1")
        wait_for(lambda: up.seen("/hold/1") == 1)
        p.update(clusters=[_backend(up, max_requests=1)])
        status, _, body = ask(keep, "/y")
        assert (status, body) == (503, OVERFLOW_BODY)
        assert p.stats()[CB + "rq_open"] == 1
        up.release()
        assert read_response(held)[0] == 200
        held.close()
        until(p, upstream_rq_active=0)
        assert ask(keep, "/z")[0] == 200
    finally:
        keep.close()
        p.stop(drain_timeout=0.5)
        up.close()


def test_removed_cluster_answers_503_nc_and_comes_back(tmp_path):
    """A route whose cluster is removed gets what Envoy gives for a cluster not found: 503,
    an empty body, flag NC, http.<prefix>.no_cluster; the cluster's idle connections close.
    Adding a cluster of that name again serves the route again."""
    up = HoldUpstream()
    log = tmp_path / "access.log"
    p = _http_proxy(_backend(up), access_log=log)
    try:
        addr = p.listener_address("web")
        assert request(addr, "/a")[0] == 200
        until(p, upstream_cx_active=1)
        # What a CDS update removing a cluster that routes still name leaves (Envoy accepts
        # it; the route then finds no cluster). Proxy.update's own validation refuses a
        # route to an unknown cluster, so it is given as validated.
        p.update(clusters=[], _validated=True)
        status, headers, body = request(addr, "/b")
        assert (status, headers.get("content-length"), body) == (503, "0", b"")
        assert up.seen("/b") == 0
        st = until(p, upstream_cx_active=0)
        assert st["http.web.no_cluster"] == 1
        assert (st["cluster_manager.active_clusters"], st["cluster_manager.cluster_removed"]) == (0, 1)
        assert "cluster.backend.membership_total" not in st
        p.update(clusters=[_backend(up)])
        status, _, body = request(addr, "/c")
        assert (status, body) == (200, b"GET /c 0")
        st = p.stats()
        assert (st["cluster_manager.active_clusters"], st["cluster_manager.cluster_added"]) == (1, 2)
        assert st["http.web.no_cluster"] == 1
        wait_for(lambda: len(log.read_text().splitlines()) == 3)
        assert log.read_text().splitlines() == ["200 - backend", "503 NC -", "200 - backend"]
    finally:
        p.stop(drain_timeout=0.5)
        up.close()


def test_tcp_proxy_to_a_removed_or_missing_cluster_closes_the_connection():
    """Envoy's tcp_proxy with no cluster of its name: downstream_cx_no_route, the client's
    connection closed. Connections already open keep their upstream; a cluster added under
    the name (back, or for the first time) serves new connections, with the same handle."""
    a = EchoServer(banner=b"A")
    c = fastproxy.Cluster("c", [fastproxy.Endpoint("127.0.0.1", a.port)])
    t = fastproxy.Listener("t", fastproxy.TcpProxy("c"), stat_prefix="t", port=0)
    p = fastproxy.Proxy([t], [c], concurrency=1)
    p.start()
    try:
        addr = p.listener_address("t")
        open_one = connect(addr)
        assert recv_exact(open_one, 1) == b"A"
        p.update(clusters=[], _validated=True)          # (see the HTTP test above)
        with connect(addr) as s:
            assert wait_closed(s) == "eof"
        assert p.stats()["tcp.t.downstream_cx_no_route"] == 1
        open_one.sendall(b"still")
        assert recv_exact(open_one, 5) == b"still"
        open_one.close()
        # A listener naming a cluster that was never configured.
        later = fastproxy.Listener("later", fastproxy.TcpProxy("later"), stat_prefix="later", port=0)
        p.update(listeners=[t, later], _validated=True)
        handle = p._cluster_ref("later")
        assert handle.removed
        with connect(p.listener_address("later")) as s:
            assert wait_closed(s) == "eof"
        assert p.stats()["tcp.later.downstream_cx_no_route"] == 1
        p.update(clusters=[c, fastproxy.Cluster("later", [fastproxy.Endpoint("127.0.0.1", a.port)])])
        assert p._cluster_ref("later") is handle and not handle.removed
        for name in ("t", "later"):
            with connect(p.listener_address(name)) as s:
                assert recv_exact(s, 1) == b"A"
                s.sendall(b"back")
                assert recv_exact(s, 4) == b"back"
        st = p.stats()
        assert (st["cluster_manager.cluster_added"], st["cluster_manager.cluster_removed"],
                st["cluster_manager.active_clusters"]) == (3, 1, 2)
        # Nothing refers to a cluster removed with its listeners: it is forgotten, and its
        # hosts' counters with it.
        assert host_stat_blocks(p) == 2          # (per cluster: the same address in both)
        del handle
        p.update(listeners=[], clusters=[])
        wait_for(lambda: p.update(listeners=[], clusters=[]) or host_stat_blocks(p) == 0,
                 msg="the removed clusters' host blocks freed")
        assert p._absent_clusters == {}
    finally:
        p.stop(drain_timeout=0.5)
        a.close()


def test_cluster_removed_under_an_rds_table_answers_nc_on_an_open_connection():
    """A CDS removal of a cluster an RDS route table names (no listener or table rebuilt):
    the next request on an open keep-alive connection gets 503 NC; the cluster added back
    serves it again, on the same connection."""
    from fastproxy.http import Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost
    from fastproxy.http.model import Rds
    from fastproxy.model import ConfigSource
    up = HoldUpstream()
    rc = RouteConfiguration(name="r", virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="backend", timeout=0))])])
    hcm = fastproxy.http.HttpConnectionManager("web", rds=Rds("r", ConfigSource(ads=True)))
    p = fastproxy.Proxy([fastproxy.Listener("web", hcm, port=0)], [_backend(up)], concurrency=1)
    p.start()
    try:
        p.update(routes=[rc])
        keep = connect(p.listener_address("web"))
        assert ask(keep, "/a")[0] == 200
        p.update(clusters=[])
        status, headers, body = ask(keep, "/b")
        assert (status, headers.get("content-length"), body) == (503, "0", b"")
        assert p.stats()["http.web.no_cluster"] == 1
        p.update(clusters=[_backend(up)])
        assert ask(keep, "/c")[:3:2] == (200, b"GET /c 0")
        keep.close()
    finally:
        p.stop(drain_timeout=0.5)
        up.close()


def test_http2_cluster_stat_block_has_envoys_names():
    """An HTTP/2 cluster gets its cluster.<name>.http2.* block (Envoy's names), an HTTP/1.1
    one none; a cluster turned HTTP/1.1 and back by updates goes on serving."""
    boot = load_envoy(envoy_yaml([http_listener(ROUTES)], [backend([protocol_options("", H2_EXPLICIT)], 9),
                                                            static_cluster("other", [9])]))
    with fastproxy.Proxy.from_bootstrap(boot, concurrency=1) as p:
        stats = p.stats()
        assert "cluster.backend.http2.rx_reset" in stats and "cluster.other.http2.rx_reset" not in stats
        assert "cluster.backend.http2.streams_active" in p.gauge_names()
        http1 = [dataclasses.replace(c, upstream_protocol="http1", http2=False, http2_protocol_options=None)
                 if c.name == "backend" else c for c in boot.clusters]
        p.update(clusters=http1)
        assert p.config.clusters[0].upstream_protocol == "http1"
        p.update(clusters=boot.clusters)
        assert p.config.clusters[0].h2_options.max_concurrent_streams == 8


def test_http2_server_stat_block_has_envoys_names():
    """The connection managers' codec counters are the server-wide http2.* block, as Envoy's."""
    boot = load_envoy(envoy_yaml([http_listener(ROUTES)], [backend([], 9), static_cluster("other", [9])]))
    with fastproxy.Proxy.from_bootstrap(boot, concurrency=1) as p:
        assert "http2.rx_reset" in p.stats() and "http2.streams_active" in p.gauge_names()
