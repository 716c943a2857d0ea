"""Native HTTP filters (compiled in the core, no GIL) end to end: real clients (http.client,
curl) through fastproxy to a raw upstream that records every byte. Each filter's behaviour,
per-route config, the Envoy YAML of each (checked by `envoy --mode validate` when envoy is
installed, and loaded by fastproxy), and that a chain of only native filters serves
requests while another thread holds the GIL."""
from __future__ import annotations

import ctypes
import http.client
import os
import socket
import struct
import subprocess
import textwrap
import threading
import time

import pytest

from fastproxy import ConfigError, NativeHttpFilter, Proxy, PythonHttpFilter, HttpFilter, FilterStatus
from fastproxy.config import load_envoy
from fastproxy.http.native_filters import (BUFFER, CORS, FAULT, HEADER_MUTATION, HEALTH_CHECK, LOCAL_RATELIMIT, Buffer,
                                     BufferPerRoute, Cors, CorsPolicy, FaultAbort, FaultDelay, FractionalPercent,
                                     HTTPFault, HealthCheck, HeaderMutation, HeaderMutationOp, LocalRateLimit,
                                     Mutations, TokenBucket)
from fastproxy.http.model import (HeaderMatcher, HeaderValueOption, Int64Range, Route, RouteAction, RouteMatch,
                                  StringMatch)

from conftest import envoy_yaml, fragment, http_listener, start_envoy, static_cluster
from test_envoy_config import ENVOY, envoy_validate, needs_envoy
from test_http_filters import make_proxy, request

ALWAYS = FractionalPercent(100)


def nf(kind, config, name=None):
    return NativeHttpFilter(name or kind.rsplit(".", 1)[-1], kind, config)


def route(prefix, **per_filter):
    return Route(RouteMatch(prefix=prefix), route=RouteAction(cluster="c"), typed_per_filter_config=per_filter)


def get(p, path="/", method="GET", headers=None, body=None):
    r, data = request(p, method=method, path=path, headers=headers, body=body)
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


# ---------------------------------------------------------------- fault

def test_fault_abort_every_request(upstream):
    f = HTTPFault(abort=FaultAbort(503, ALWAYS))
    with make_proxy([nf(FAULT, f)], upstream) as p:
        for _ in range(30):
            status, headers, body = get(p, "/x")
            assert status == 503 and body == b"fault filter abort"
            assert headers["content-type"] == "text/plain"
        assert upstream.requests == []


def test_fault_abort_fractions(upstream):
    never = HTTPFault(abort=FaultAbort(500, FractionalPercent(0)))
    with make_proxy([nf(FAULT, never)], upstream) as p:
        assert {get(p)[0] for _ in range(20)} == {200}
    half = HTTPFault(abort=FaultAbort(418, FractionalPercent(5000, "TEN_THOUSAND")))
    with make_proxy([nf(FAULT, half)], upstream) as p:
        statuses = [get(p)[0] for _ in range(200)]
    assert set(statuses) == {200, 418}
    assert 40 < statuses.count(418) < 160
    million = HTTPFault(abort=FaultAbort(429, FractionalPercent(1_000_000, "MILLION")))
    with make_proxy([nf(FAULT, million)], upstream) as p:
        assert {get(p)[0] for _ in range(20)} == {429}


def test_fault_delay_then_continue(upstream):
    f = HTTPFault(delay=FaultDelay(0.3, ALWAYS))
    with make_proxy([nf(FAULT, f)], upstream) as p:
        t0 = time.monotonic()
        status, _, body = get(p, "/slow", method="POST", body=b"x" * 1000)
        took = time.monotonic() - t0
    assert status == 200 and body == b"POST /slow 1000"
    assert 0.28 <= took < 2.0
    assert len(upstream.requests) == 1


def test_fault_delay_then_abort(upstream):
    f = HTTPFault(delay=FaultDelay(0.2, ALWAYS), abort=FaultAbort(504, ALWAYS))
    with make_proxy([nf(FAULT, f)], upstream) as p:
        t0 = time.monotonic()
        status, _, body = get(p)
        assert time.monotonic() - t0 >= 0.18
    assert status == 504 and body == b"fault filter abort"
    assert upstream.requests == []


def test_fault_delay_cancelled_when_the_client_leaves(upstream):
    f = HTTPFault(delay=FaultDelay(0.4, ALWAYS))
    with make_proxy([nf(FAULT, f)], upstream) as p:
        for _ in range(5):
            s = socket.create_connection(p.listener_address("http"))
            s.sendall(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.05)
            # a reset, not a FIN (a FIN is a half-close: the response would still be wanted)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        time.sleep(0.6)                 # the timers would have fired by now
        assert upstream.requests == []
        assert get(p, "/after")[0] == 200   # the workers are fine


def test_proxy_stops_while_requests_are_delayed(upstream):
    f = HTTPFault(delay=FaultDelay(5.0, ALWAYS))
    p = make_proxy([nf(FAULT, f)], upstream).start()
    socks = []
    for _ in range(4):
        s = socket.create_connection(p.listener_address("http"))
        s.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    time.sleep(0.2)
    t0 = time.monotonic()
    p.stop(drain_timeout=0.3)           # then the held streams are closed, timers and all
    assert time.monotonic() - t0 < 3.0
    for s in socks:
        s.close()
    assert upstream.requests == []


def test_fault_per_route_replaces_the_filter_config(upstream):
    routes = [route("/abort", fault=HTTPFault(abort=FaultAbort(502, ALWAYS))),
              route("/")]
    with make_proxy([nf(FAULT, HTTPFault(), name="fault")], upstream, routes=routes) as p:
        assert get(p, "/abort/x")[0] == 502
        assert get(p, "/other")[0] == 200
    filter_level = HTTPFault(abort=FaultAbort(503, ALWAYS))
    routes = [route("/calm", fault=HTTPFault()), route("/")]
    with make_proxy([nf(FAULT, filter_level, name="fault")], upstream, routes=routes) as p:
        assert get(p, "/calm")[0] == 200
        assert get(p, "/x")[0] == 503


def test_fault_max_active_faults(upstream):
    f = HTTPFault(delay=FaultDelay(0.5, ALWAYS), max_active_faults=1)
    with make_proxy([nf(FAULT, f)], upstream) as p:
        times = {}

        def one(i):
            t0 = time.monotonic()
            assert get(p, f"/{i}")[0] == 200
            times[i] = time.monotonic() - t0

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.03)
        for t in threads:
            t.join()
        slow = [i for i, t in times.items() if t >= 0.45]
        assert len(times) == 4 and len(slow) == 1, times
        # the fault ended: the next request is delayed again
        t0 = time.monotonic()
        get(p)
        assert time.monotonic() - t0 >= 0.45


# ---------------------------------------------------------------- header_mutation

def test_header_mutation_both_ways(upstream):
    hm = HeaderMutation(Mutations(
        request_mutations=[HeaderMutationOp(append=HeaderValueOption("x-added", "1")),
                           HeaderMutationOp(append=HeaderValueOption("x-multi", "b")),
                           HeaderMutationOp(append=HeaderValueOption("x-set", "new", "OVERWRITE_IF_EXISTS_OR_ADD")),
                           HeaderMutationOp(append=HeaderValueOption("x-absent", "no", "ADD_IF_ABSENT")),
                           HeaderMutationOp(append=HeaderValueOption("x-only-if", "v", "OVERWRITE_IF_EXISTS")),
                           HeaderMutationOp(remove="x-secret")],
        response_mutations=[HeaderMutationOp(append=HeaderValueOption("x-resp", "yes")),
                            HeaderMutationOp(remove="x-upstream-only")]))

    def handler(method, path, headers, body):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream-Only: 1\r\nX-Kept: 1\r\n\r\nok"

    upstream.handler = handler
    with make_proxy([nf(HEADER_MUTATION, hm)], upstream) as p:
        status, headers, body = get(p, headers={"X-Secret": "s", "X-Multi": "a", "X-Set": "old", "X-Absent": "here"})
    assert status == 200 and body == b"ok"
    assert headers["x-resp"] == "yes" and headers["x-kept"] == "1" and "x-upstream-only" not in headers
    _, _, h, _ = upstream.requests[-1]
    assert h["x-added"] == ["1"] and h["x-multi"] == ["a", "b"] and h["x-set"] == ["new"]
    assert h["x-absent"] == ["here"] and "x-only-if" not in h and "x-secret" not in h


def test_header_mutation_per_route(upstream):
    filter_level = HeaderMutation(Mutations(request_mutations=[
        HeaderMutationOp(append=HeaderValueOption("x-who", "filter", "OVERWRITE_IF_EXISTS_OR_ADD"))]))
    per_route = HeaderMutation(Mutations(
        request_mutations=[HeaderMutationOp(append=HeaderValueOption("x-who", "route")),
                           HeaderMutationOp(append=HeaderValueOption("x-route", "1"))],
        response_mutations=[HeaderMutationOp(append=HeaderValueOption("x-route-resp", "1"))]))
    routes = [route("/r", hm=per_route), route("/")]
    with make_proxy([nf(HEADER_MUTATION, filter_level, name="hm")], upstream, routes=routes) as p:
        _, headers, _ = get(p, "/r")
        assert headers["x-route-resp"] == "1"
        h = upstream.requests[-1][2]
        # the route's mutations first, then the filter's (which overwrites)
        assert h["x-who"] == ["filter"] and h["x-route"] == ["1"]
        _, headers, _ = get(p, "/plain")
        assert "x-route-resp" not in headers
        h = upstream.requests[-1][2]
        assert h["x-who"] == ["filter"] and "x-route" not in h


# ---------------------------------------------------------------- local_ratelimit

def rl(prefix, tokens, interval=3600.0, per_fill=1, enforced=ALWAYS, **kw):
    return LocalRateLimit(prefix, TokenBucket(tokens, per_fill, interval), filter_enabled=ALWAYS,
                          filter_enforced=enforced, **kw)


def test_local_ratelimit_limits_and_counts(upstream):
    cfg = rl("rl_basic", 3, response_headers_to_add=[HeaderValueOption("x-limited", "yes")])
    with make_proxy([nf(LOCAL_RATELIMIT, cfg)], upstream) as p:
        results = [get(p) for _ in range(5)]
        stats = p.stats()
    assert [r[0] for r in results] == [200, 200, 200, 429, 429]
    assert results[3][2] == b"local_rate_limited" and results[3][1]["x-limited"] == "yes"
    assert "x-limited" not in results[0][1]
    assert len(upstream.requests) == 3
    s = {k: v for k, v in stats.items() if k.startswith("http_local_rate_limit.rl_basic.")}
    assert s == {"http_local_rate_limit.rl_basic.enabled": 5, "http_local_rate_limit.rl_basic.ok": 3,
                 "http_local_rate_limit.rl_basic.rate_limited": 2, "http_local_rate_limit.rl_basic.enforced": 2}


def test_local_ratelimit_refills(upstream):
    cfg = rl("rl_refill", 2, interval=0.3, per_fill=1, status=503)
    with make_proxy([nf(LOCAL_RATELIMIT, cfg)], upstream) as p:
        assert [get(p)[0] for _ in range(3)] == [200, 200, 503]
        time.sleep(0.35)
        assert [get(p)[0] for _ in range(2)] == [200, 503]
        time.sleep(0.7)                 # two fills, but never above max_tokens
        assert [get(p)[0] for _ in range(3)] == [200, 200, 503]


def test_local_ratelimit_bucket_is_shared_by_the_workers(upstream):
    cfg = rl("rl_shared", 10)
    with make_proxy([nf(LOCAL_RATELIMIT, cfg)], upstream) as p:
        statuses = []
        lock = threading.Lock()

        def worker():
            for _ in range(10):
                s = get(p)[0]
                with lock:
                    statuses.append(s)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses.count(200) == 10 and statuses.count(429) == 30


def test_local_ratelimit_not_enforced_or_not_enabled(upstream):
    shadow = rl("rl_shadow", 1, enforced=FractionalPercent(0))
    with make_proxy([nf(LOCAL_RATELIMIT, shadow)], upstream) as p:
        assert [get(p)[0] for _ in range(3)] == [200, 200, 200]
        stats = p.stats()
    assert stats["http_local_rate_limit.rl_shadow.rate_limited"] == 2
    assert stats["http_local_rate_limit.rl_shadow.enforced"] == 0
    disabled = LocalRateLimit("rl_off", TokenBucket(1, 1, 3600.0))      # filter_enabled: 0%
    with make_proxy([nf(LOCAL_RATELIMIT, disabled)], upstream) as p:
        assert [get(p)[0] for _ in range(3)] == [200, 200, 200]
        assert p.stats()["http_local_rate_limit.rl_off.enabled"] == 0


def test_local_ratelimit_per_route(upstream):
    routes = [route("/limited", rl=rl("rl_route", 1)), route("/")]
    with make_proxy([nf(LOCAL_RATELIMIT, LocalRateLimit("rl_filter"), name="rl")], upstream, routes=routes) as p:
        assert [get(p, "/limited")[0] for _ in range(3)] == [200, 429, 429]
        assert [get(p, "/free")[0] for _ in range(5)] == [200] * 5
        stats = p.stats()
    assert stats["http_local_rate_limit.rl_route.rate_limited"] == 2
    assert stats["http_local_rate_limit.rl_filter.enabled"] == 0


# ---------------------------------------------------------------- health_check

def test_health_check_answers_locally(upstream):
    hc = HealthCheck(False, [HeaderMatcher(":path", StringMatch("exact", "/healthz"))])
    with make_proxy([nf(HEALTH_CHECK, hc)], upstream) as p:
        status, _, body = get(p, "/healthz")
        assert status == 200 and body == b""
        assert upstream.requests == []
        assert get(p, "/healthz/more")[2] == b"GET /healthz/more 0"
        assert len(upstream.requests) == 1


def test_health_check_header_matchers_all_must_match(upstream):
    hc = HealthCheck(False, [HeaderMatcher(":path", StringMatch("prefix", "/hc")),
                             HeaderMatcher("x-probe", StringMatch("safe_regex", "kube-[a-z]+"))])
    with make_proxy([nf(HEALTH_CHECK, hc)], upstream) as p:
        assert get(p, "/hc", headers={"x-probe": "kube-probe"})[2] == b""
        assert get(p, "/hc", headers={"x-probe": "kube-1"})[2] == b"GET /hc 0"
        assert get(p, "/hc")[2] == b"GET /hc 0"


def test_regex_matchers_read_header_values_where_they_lie(upstream):
    """A safe_regex header matcher matches a value in place (no copy) whatever its length,
    whether the value is in the received head or in the header map a filter wrote (`make
    test-asan` checks that regexec reads nothing outside either)."""
    class SetProbe(HttpFilter):
        def decode_headers(self, headers, end_stream):
            if "x-set" in headers:
                headers["x-probe"] = headers["x-set"]
            return FilterStatus.CONTINUE

    hc = HealthCheck(False, [HeaderMatcher("x-probe", StringMatch("safe_regex", "kube-[a-z]+"))])
    long_hit, long_miss = "kube-" + "a" * 5000, "kube-" + "a" * 5000 + "1"
    with make_proxy([PythonHttpFilter("set", SetProbe), nf(HEALTH_CHECK, hc)], upstream) as p:
        for value, hit in (("kube-probe", True), ("kube-", False), (long_hit, True), (long_miss, False)):
            for name in ("x-probe", "x-set"):
                assert (get(p, "/x", headers={name: value})[2] == b"") == hit, (name, len(value))


def test_health_check_range_match_and_host(upstream):
    # the routes' matcher: range_match compares the value as an integer (it was taken for a
    # presence test), and "host" is the request's authority, as in a route
    hc = HealthCheck(False, [HeaderMatcher("x-n", range_match=Int64Range(1, 10)),
                             HeaderMatcher("host", StringMatch("prefix", "probe."))])
    with make_proxy([nf(HEALTH_CHECK, hc)], upstream) as p:
        assert get(p, "/hc", headers={"x-n": "5", "host": "probe.local"})[2] == b""
        assert get(p, "/hc", headers={"x-n": "50", "host": "probe.local"})[2] == b"GET /hc 0"
        assert get(p, "/hc", headers={"x-n": "5", "host": "other"})[2] == b"GET /hc 0"


def test_health_check_pass_through(upstream):
    hc = HealthCheck(True, [HeaderMatcher(":path", StringMatch("exact", "/healthz"))])
    with make_proxy([nf(HEALTH_CHECK, hc)], upstream) as p:
        assert get(p, "/healthz")[2] == b"GET /healthz 0"
    assert len(upstream.requests) == 1


def repeated_header_yaml(matcher):
    """health_check and a route both match the header x-m with ``matcher``."""
    return envoy_yaml([http_listener(name="http", http_filters=f"""
        - name: envoy.filters.http.health_check
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
            pass_through_mode: false
            headers:
            - {{name: ":path", string_match: {{prefix: /hc}}}}
            - {{name: x-m, string_match: {matcher}}}
        """, routes=f"""
        - match: {{prefix: /rt, headers: [{{name: x-m, string_match: {matcher}}}]}}
          direct_response: {{status: 200, body: {{inline_string: route}}}}
        - match: {{prefix: /}}
          direct_response: {{status: 404, body: {{inline_string: other}}}}
        """)])

# (matcher, the x-m field lines of one request)
REPEATED_HEADER_CASES = [
    ('{exact: "v1"}', ["v1", "v2"]),
    ('{exact: "v1"}', ["v2", "v1"]),
    ('{exact: "v1,v2"}', ["v1", "v2"]),
    ('{exact: "v1,v2"}', ["v1,v2"]),
    ('{safe_regex: {regex: "v1,.*"}}', ["v1", "v2"]),
    ('{suffix: "2"}', ["v2", "v1"]),
]


def _repeated_header_answers(addr, values):
    """(status, body) of the health check path and of the route path, for a request with
    one x-m field line per value."""
    out = []
    for path in ("/hc", "/rt"):
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"x-m: {v}\r\n" for v in values)
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall((head + "Connection: close\r\n\r\n").encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        status = int(data.split(b" ", 2)[1])
        out.append((status, data.split(b"\r\n\r\n", 1)[1]))
    return out


def test_a_repeated_header_is_matched_the_same_by_routes_and_filters(tmp_path):
    """One header matcher for the routes and the native filters, with Envoy 1.40's rule:
    each field line of a repeated header is matched on its own (never the values joined
    with ','), in a route and in health_check alike; the same answers as Envoy gives."""
    ours, theirs = [], []
    for i, (matcher, values) in enumerate(REPEATED_HEADER_CASES):
        text = repeated_header_yaml(matcher)
        with Proxy.from_envoy(text, concurrency=1) as p:
            ours.append(_repeated_header_answers(p.listener_address("http"), values))
        if ENVOY is not None:
            (tmp_path / str(i)).mkdir()
            proc, _, addr = start_envoy(text, tmp_path / str(i))
            try:
                theirs.append(_repeated_header_answers(addr, values))
            finally:
                proc.terminate()
                proc.wait()
    hc, route_ok = (200, b""), (200, b"route")
    missed = [(404, b"other"), (404, b"other")]
    assert ours == [[hc, route_ok], [hc, route_ok], missed, [hc, route_ok], missed, [hc, route_ok]]
    if ENVOY is not None:
        assert theirs == ours


FAULT_DELAY_YAML = envoy_yaml([http_listener(name="http", http_filters="""
    - name: fault
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        delay:
          fixed_delay: 0.05s
          percentage: {numerator: 100, denominator: HUNDRED}
    """, routes="""
    - match: {path: /direct}
      direct_response: {status: 200, body: {inline_string: "direct\\n"}}
    - match: {path: /moved}
      redirect: {path_redirect: /elsewhere}
    """)])


def _answers(addr):
    out = []
    for path in ("/direct", "/nothing", "/moved"):
        conn = http.client.HTTPConnection(*addr, timeout=5)
        conn.request("GET", path)
        r = conn.getresponse()
        out.append((path, r.status, r.read(), r.getheader("location")))
        conn.close()
    return out


def test_local_replies_after_a_fault_delay_are_sent(tmp_path):
    """The fault filter delays every request, then the router answers it itself (a direct
    response, no route, a redirect): the continued request's reply must be written (it
    hung before); the same answers as Envoy 1.40 gives for the same file."""
    with Proxy.from_envoy(FAULT_DELAY_YAML, concurrency=1) as p:
        t0 = time.monotonic()
        got = _answers(p.listener_address("http"))
        assert time.monotonic() - t0 >= 0.15, "each request is delayed 50 ms"
    assert [(path, status, body) for path, status, body, _ in got] == [
        ("/direct", 200, b"direct\n"), ("/nothing", 404, b""), ("/moved", 301, b"")]
    assert got[2][3].endswith("/elsewhere")
    if ENVOY is None:
        return
    proc, _, addr = start_envoy(FAULT_DELAY_YAML, tmp_path)
    try:
        assert _normalized(_answers(addr)) == _normalized(got)
    finally:
        proc.terminate()
        proc.wait()


def _normalized(answers):
    """Compare without the listener's port in a redirect's Location."""
    return [(path, status, body, loc.rsplit("/", 1)[-1] if loc else None) for path, status, body, loc in answers]


# ---------------------------------------------------------------- buffer

def chunked_post(p, path, chunks):
    conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
    conn.request("POST", path, body=iter(chunks), encode_chunked=True)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_buffer_sends_an_exact_content_length(upstream):
    with make_proxy([nf(BUFFER, Buffer(1000))], upstream) as p:
        status, data = chunked_post(p, "/up", [b"a" * 100, b"b" * 200, b"c" * 50])
        assert status == 200 and data == b"POST /up 350"
    raw = bytes(upstream.raw)
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert b"content-length: 350" in head and b"transfer-encoding" not in head
    assert upstream.requests[-1][3] == b"a" * 100 + b"b" * 200 + b"c" * 50


def test_buffer_rejects_bodies_over_the_limit(upstream):
    with make_proxy([nf(BUFFER, Buffer(100))], upstream) as p:
        status, headers, _ = get(p, "/big", method="POST", body=b"x" * 101)
        assert status == 413
        status, _ = chunked_post(p, "/big", [b"x" * 60, b"y" * 60])
        assert status == 413
        status, _, body = get(p, "/ok", method="POST", body=b"x" * 100)
        assert status == 200 and body == b"POST /ok 100"
    assert len(upstream.requests) == 1


def test_buffer_413_opens_no_upstream_connection(upstream):
    """Envoy's buffer filter holds the headers until the body is complete, so the router
    never sees a request whose chunked body goes over the limit: 413 with no upstream
    connection at all (Envoy 1.40: cluster upstream_cx_total 0, the same reply)."""
    with make_proxy([nf(BUFFER, Buffer(100))], upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("POST", "/big", body=iter([b"x" * 60, b"y" * 60]), encode_chunked=True)
        r = conn.getresponse()
        assert (r.status, r.read()) == (413, b"Payload Too Large")
        assert r.getheader("content-type") == "text/plain"
        assert r.getheader("connection") == "close"
        conn.close()
        st = p.stats()
        assert st["cluster.c.upstream_cx_total"] == 0 and st["http.ingress.downstream_rq_too_large"] == 1
        assert upstream.connections == 0
        # within the limit: the request goes on, whole, after its body
        assert chunked_post(p, "/ok", [b"a" * 50, b"b" * 50]) == (200, b"POST /ok 100")
        assert p.stats()["cluster.c.upstream_cx_total"] == 1
    assert upstream.requests[-1][3] == b"a" * 50 + b"b" * 50


def buffer_yaml(port):
    return envoy_yaml([http_listener(name="http", http_filters="""
        - name: buffer
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
            max_request_bytes: 100
        """, routes="[{match: {prefix: /}, route: {cluster: c}}]")], [static_cluster("c", [port])])


def _over_limit_chunked(addr):
    conn = http.client.HTTPConnection(*addr, timeout=5)
    conn.request("POST", "/big", body=iter([b"x" * 60, b"y" * 60]), encode_chunked=True)
    r = conn.getresponse()
    out = (r.status, r.read(), r.getheader("content-type"), r.getheader("connection"))
    conn.close()
    return out


@needs_envoy
def test_buffer_413_same_as_envoy(upstream, tmp_path):
    """The same YAML in both: the same 413 to an over-limit chunked body, and neither
    opens a connection to the upstream."""
    from conftest import admin_get
    text = buffer_yaml(upstream.port)
    with Proxy.from_envoy(text, concurrency=1) as p:
        ours = _over_limit_chunked(p.listener_address("http"))
        assert p.stats()["cluster.c.upstream_cx_total"] == 0
    proc, admin, addr = start_envoy(text, tmp_path)
    try:
        theirs = _over_limit_chunked(addr)
        stats = dict(line.split(": ", 1) for line in admin_get(admin, "/stats").splitlines() if ": " in line)
        assert stats["cluster.c.upstream_cx_total"] == "0"
    finally:
        proc.terminate()
        proc.wait()
    assert ours == theirs == (413, b"Payload Too Large", "text/plain", "close")
    assert upstream.connections == 0


def test_buffer_413_after_a_fault_delay(upstream):
    """The body arrives while the fault filter delays the request; when it continues, the
    buffer filter finds it over the limit: 413 is written (by the continuation) and no
    upstream connection is opened. Within the limit the request goes on."""
    chain = [nf(FAULT, HTTPFault(delay=FaultDelay(0.05, ALWAYS))), nf(BUFFER, Buffer(100))]
    with make_proxy(chain, upstream) as p:
        status, data = chunked_post(p, "/big", [b"x" * 60, b"y" * 60])
        assert (status, data) == (413, b"Payload Too Large")
        assert p.stats()["cluster.c.upstream_cx_total"] == 0
        assert chunked_post(p, "/ok", [b"a" * 50, b"b" * 50]) == (200, b"POST /ok 100")
    assert upstream.requests[-1][3] == b"a" * 50 + b"b" * 50


def test_buffer_per_route(upstream):
    routes = [route("/stream", buf=BufferPerRoute(disabled=True)),
              route("/small", buf=BufferPerRoute(buffer=Buffer(10))), route("/")]
    with make_proxy([nf(BUFFER, Buffer(1000), name="buf")], upstream, routes=routes) as p:
        assert chunked_post(p, "/stream", [b"a" * 10, b"b" * 10]) == (200, b"POST /stream 20")
        assert b"transfer-encoding: chunked" in bytes(upstream.raw).lower()
        assert chunked_post(p, "/small", [b"a" * 20])[0] == 413
        assert chunked_post(p, "/other", [b"a" * 20]) == (200, b"POST /other 20")


# ---------------------------------------------------------------- cors

POLICY = CorsPolicy(allow_origin_string_match=[StringMatch("exact", "https://app.example"),
                                               StringMatch("safe_regex", r"https://[a-z]+\.trusted\.example")],
                    allow_methods="GET, POST", allow_headers="content-type, x-token", expose_headers="x-trace",
                    max_age="600", allow_credentials=True)


def test_cors_preflight_answered_locally(upstream):
    routes = [route("/", cors=POLICY)]
    with make_proxy([nf(CORS, Cors(), name="cors")], upstream, routes=routes) as p:
        status, h, body = get(p, "/api", method="OPTIONS",
                              headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert status == 200 and body == b""
        assert h["access-control-allow-origin"] == "https://app.example"
        assert h["access-control-allow-methods"] == "GET, POST"
        assert h["access-control-allow-headers"] == "content-type, x-token"
        assert h["access-control-max-age"] == "600"
        assert h["access-control-allow-credentials"] == "true"
        # as in Envoy, the preflight answer passes the filter's own encodeHeaders too
        assert h["access-control-expose-headers"] == "x-trace"
        assert upstream.requests == []
        # an origin the policy does not allow: the preflight goes upstream, untouched
        status, h, body = get(p, "/api", method="OPTIONS",
                              headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert body == b"OPTIONS /api 0" and "access-control-allow-origin" not in h
        # regex origin
        status, h, body = get(p, "/api", method="OPTIONS",
                              headers={"Origin": "https://eu.trusted.example", "Access-Control-Request-Method": "GET"})
        assert body == b"" and h["access-control-allow-origin"] == "https://eu.trusted.example"


def test_cors_simple_request_gets_headers(upstream):
    routes = [route("/open", cors=POLICY), route("/")]
    with make_proxy([nf(CORS, None, name="cors")], upstream, routes=routes) as p:
        status, h, body = get(p, "/open/x", headers={"Origin": "https://app.example"})
        assert status == 200 and body == b"GET /open/x 0"
        assert h["access-control-allow-origin"] == "https://app.example"
        assert h["access-control-allow-credentials"] == "true"
        assert h["access-control-expose-headers"] == "x-trace"
        assert "access-control-allow-methods" not in h
        _, h, _ = get(p, "/open/x", headers={"Origin": "https://nope.example"})
        assert "access-control-allow-origin" not in h
        _, h, _ = get(p, "/open/x")
        assert "access-control-allow-origin" not in h
        # a route without a policy
        _, h, body = get(p, "/elsewhere", headers={"Origin": "https://app.example"})
        assert body == b"GET /elsewhere 0" and "access-control-allow-origin" not in h


def test_cors_wildcard_origin(upstream):
    pol = CorsPolicy(allow_origin_string_match=[StringMatch("exact", "*")], allow_methods="GET")
    with make_proxy([nf(CORS, Cors(), name="cors")], upstream, routes=[route("/", cors=pol)]) as p:
        _, h, _ = get(p, headers={"Origin": "https://any.example"})
        assert h["access-control-allow-origin"] == "https://any.example"
        assert "access-control-allow-credentials" not in h


# ---------------------------------------------------------------- a chain, and errors

def test_a_chain_of_native_filters(upstream):
    chain = [nf(HEALTH_CHECK, HealthCheck(False, [HeaderMatcher(":path", StringMatch("exact", "/healthz"))])),
             nf(CORS, Cors()),
             nf(LOCAL_RATELIMIT, rl("rl_chain", 1000)),
             nf(FAULT, HTTPFault(delay=FaultDelay(0.05, ALWAYS))),
             nf(HEADER_MUTATION, HeaderMutation(Mutations([HeaderMutationOp(append=HeaderValueOption("x-c", "1"))]))),
             nf(BUFFER, Buffer(1 << 16))]
    with make_proxy(chain, upstream) as p:
        assert get(p, "/healthz")[0] == 200 and upstream.requests == []
        for i in range(10):
            status, _, body = get(p, f"/p{i}", method="POST", body=b"z" * i)
            assert status == 200 and body == f"POST /p{i} {i}".encode()
        assert all(r[2]["x-c"] == ["1"] for r in upstream.requests)


class SeenStatus(HttpFilter):
    def encode_headers(self, headers, end_stream):
        headers["x-seen-status"] = headers[":status"]
        return FilterStatus.CONTINUE


def test_native_local_replies_pass_through_the_encoders(upstream):
    """local_ratelimit's 429, fault's abort and health_check's answer go through the encoder
    filters (Envoy's sendLocalReply), Python and native alike, the replying filter's too."""
    hm = HeaderMutation(Mutations(response_mutations=[HeaderMutationOp(append=HeaderValueOption("x-hm", "1"))]))
    limited = rl("rl_enc", 1, response_headers_to_add=[HeaderValueOption("x-limited", "yes")])
    chain = [PythonHttpFilter("seen", SeenStatus), nf(HEADER_MUTATION, hm),
             nf(HEALTH_CHECK, HealthCheck(False, [HeaderMatcher(":path", StringMatch("exact", "/healthz"))])),
             nf(LOCAL_RATELIMIT, limited)]
    with make_proxy(chain, upstream) as p:
        status, h, body = get(p, "/a")
        assert (status, h["x-seen-status"], h["x-hm"]) == (200, "200", "1")
        status, h, body = get(p, "/b")
        assert (status, body) == (429, b"local_rate_limited")
        assert (h["x-seen-status"], h["x-hm"], h["x-limited"]) == ("429", "1", "yes")
        status, h, body = get(p, "/healthz")
        assert (status, h["x-seen-status"], h["x-hm"]) == (200, "200", "1")
        assert [r[1] for r in upstream.requests] == ["/a"]
    abort = HTTPFault(abort=FaultAbort(503, ALWAYS))
    with make_proxy([PythonHttpFilter("seen", SeenStatus), nf(FAULT, abort), nf(HEADER_MUTATION, hm)], upstream) as p:
        status, h, body = get(p, "/x")
        assert (status, body) == (503, b"fault filter abort")
        assert h["x-seen-status"] == "503"
        assert h["x-hm"] == "1", "a filter after the aborting one encodes its reply too"


@pytest.mark.parametrize("kind,config,path", [
    (FAULT, HTTPFault(abort=FaultAbort(700, ALWAYS)), "abort.http_status"),
    (FAULT, HTTPFault(delay=FaultDelay(0, ALWAYS)), "delay.fixed_delay"),
    (FAULT, HTTPFault(abort=FaultAbort(503, FractionalPercent(1, "THOUSAND"))), "abort.percentage.denominator"),
    (BUFFER, Buffer(0), "max_request_bytes"),
    (LOCAL_RATELIMIT, LocalRateLimit(""), "stat_prefix"),
    (LOCAL_RATELIMIT, LocalRateLimit("x", TokenBucket(1, 0)), "token_bucket.tokens_per_fill"),
    (HEADER_MUTATION, HeaderMutation(Mutations([HeaderMutationOp()])), "mutations.request_mutations[0]"),
    (HEALTH_CHECK, LocalRateLimit("x"), "envoy.filters.http.health_check"),
])
def test_bad_python_configs_are_config_errors(upstream, kind, config, path):
    with pytest.raises(ConfigError) as e:
        make_proxy([nf(kind, config)], upstream).start()
    assert path in str(e.value)


# ---------------------------------------------------------------- Envoy YAML

def native_filters_yaml(port):
    """Every native filter in one chain, with per-route and per-virtual-host configs."""
    filters = """
        - name: health
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
            pass_through_mode: false
            headers:
            - name: ":path"
              string_match: {exact: /healthz}
        - name: cors
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
        - name: ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: yaml_rl
        - name: fault
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
            max_active_faults: 100
        - name: mutate
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations:
              request_mutations:
              - append:
                  header: {key: x-via-native, value: "1"}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
              - remove: x-secret
              response_mutations:
              - append:
                  header: {key: x-served-by, value: fastproxy}
        - name: buffer
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
            max_request_bytes: 1024
        """
    route_config = """
        name: web
        virtual_hosts:
        - name: web
          domains: ["*"]
          typed_per_filter_config:
            cors:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
              allow_origin_string_match:
              - prefix: https://app.
              allow_methods: GET, PUT
              max_age: "60"
          routes:
          - match: {prefix: /abort}
            route: {cluster: backend}
            typed_per_filter_config:
              fault:
                "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                abort:
                  http_status: 503
                  percentage: {numerator: 100, denominator: HUNDRED}
          - match: {prefix: /delay}
            route: {cluster: backend}
            typed_per_filter_config:
              fault:
                "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                delay:
                  fixed_delay: 0.2s
                  percentage: {numerator: 1000000, denominator: MILLION}
          - match: {prefix: /limited}
            route: {cluster: backend}
            typed_per_filter_config:
              ratelimit:
                "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                stat_prefix: yaml_rl_route
                token_bucket: {max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s}
                filter_enabled:
                  runtime_key: rl_enabled
                  default_value: {numerator: 100, denominator: HUNDRED}
                filter_enforced:
                  runtime_key: rl_enforced
                  default_value: {numerator: 100, denominator: HUNDRED}
                status: {code: ServiceUnavailable}
                response_headers_to_add:
                - header: {key: x-local-rate-limit, value: "true"}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
          - match: {prefix: /stream}
            route: {cluster: backend}
            typed_per_filter_config:
              buffer:
                "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                disabled: true
              mutate:
                "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute
                mutations:
                  request_mutations:
                  - append:
                      header: {key: x-stream, value: "1"}
          - match: {prefix: /}
            route: {cluster: backend}
        """
    return envoy_yaml([http_listener(name="http", http_filters=filters, route_config=route_config)],
                      [static_cluster("backend", [port], connect_timeout="1s")], admin=False)


def envoy_env():
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def validate(tmp_path, text, name="native.yaml"):
    if ENVOY is None:
        return
    path = tmp_path / name
    path.write_text(text)
    rc, output = envoy_validate(path)
    assert rc == 0, output


@needs_envoy
def test_envoy_accepts_the_native_filter_yaml(tmp_path):
    validate(tmp_path, native_filters_yaml(9999))


def test_native_filter_yaml_comes_back_from_the_config_dump(tmp_path):
    """The writer of admin /config_dump gives every native filter's config, filter level and
    per route, in the Envoy form the loader reads back as the same model; Envoy accepts it."""
    import json
    from fastproxy.config.dump import bootstrap_json
    boot = load_envoy(native_filters_yaml(9999))
    written = json.loads(json.dumps(bootstrap_json(boot)))
    assert load_envoy(written) == boot
    validate(tmp_path, json.dumps(written), "dumped.json")


def test_native_filter_yaml_loads_and_runs(upstream, tmp_path):
    text = native_filters_yaml(upstream.port)
    boot = load_envoy(text)
    kinds = [f.kind for f in boot.listeners[0].handler.http_filters]
    assert kinds == [HEALTH_CHECK, CORS, LOCAL_RATELIMIT, FAULT, HEADER_MUTATION, BUFFER]
    with Proxy.from_envoy(text, concurrency=2) as p:
        assert get(p, "/healthz")[0] == 200 and upstream.requests == []
        status, h, body = get(p, "/x", headers={"X-Secret": "1", "Origin": "https://app.example"})
        assert status == 200 and h["x-served-by"] == "fastproxy"
        assert h["access-control-allow-origin"] == "https://app.example"
        req = upstream.requests[-1][2]
        assert req["x-via-native"] == ["1"] and "x-secret" not in req
        status, h, _ = get(p, "/x", method="OPTIONS",
                           headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"})
        assert status == 200 and h["access-control-allow-methods"] == "GET, PUT" and h["access-control-max-age"] == "60"
        assert [get(p, "/abort")[0] for _ in range(5)] == [503] * 5
        t0 = time.monotonic()
        assert get(p, "/delay")[0] == 200 and time.monotonic() - t0 >= 0.18
        res = [get(p, "/limited") for _ in range(3)]
        assert [r[0] for r in res] == [200, 200, 503] and res[2][1]["x-local-rate-limit"] == "true"
        assert p.stats()["http_local_rate_limit.yaml_rl_route.enforced"] == 1
        assert get(p, "/big", method="POST", body=b"x" * 2000)[0] == 413
        assert chunked_post(p, "/stream", [b"y" * 2000]) == (200, b"POST /stream 2000")
        assert upstream.requests[-1][2]["x-stream"] == ["1"]


def _filter_yaml(typed_config: str) -> str:
    """A bootstrap whose only HTTP filter (before the router) has this typed_config."""
    return envoy_yaml([http_listener(name="http", stat_prefix="t", http_filters=[
                          {"name": "under_test", "typed_config": fragment(typed_config)}],
                                     routes="[{match: {prefix: /}, route: {cluster: backend}}]")],
                      [static_cluster("backend", [9999])], admin=False)


@pytest.mark.parametrize("typed_config,path", [
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
     pass_through_mode: false
     cluster_min_healthy_percentages:
       backend: {value: 50}
     """, "typed_config.cluster_min_healthy_percentages"),
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
     delay:
       header_delay: {}
       percentage: {numerator: 100}
     """, "typed_config.delay.header_delay"),
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
     abort:
       grpc_status: 14
     """, "typed_config.abort.grpc_status"),
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
     stat_prefix: x
     descriptors: []
     """, "typed_config.descriptors"),
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
     mutations:
       query_parameter_mutations: []
     """, "typed_config.mutations.query_parameter_mutations"),
])
def test_envoy_valid_but_unsupported_fields_are_config_errors(tmp_path, typed_config, path):
    text = _filter_yaml(typed_config)
    validate(tmp_path, text)        # Envoy accepts it ...
    with pytest.raises(ConfigError) as e:
        load_envoy(text)            # ... fastproxy says what it does not support
    assert path in str(e.value)


@pytest.mark.parametrize("typed_config,path", [
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
     """, "max_request_bytes"),
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
     """, "pass_through_mode"),
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
     abort: {http_status: 700, percentage: {numerator: 100}}
     """, "abort.http_status"),
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
     stat_prefix: x
     token_bucket: {max_tokens: 1, tokens_per_fill: 0, fill_interval: 1s}
     """, "token_bucket.tokens_per_fill"),
    ("""\
     "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
     stat_prefix: x
     token_bucket: {max_tokens: 1, fill_interval: 0.01s}
     """, "token_bucket.fill_interval"),
])
def test_configs_envoy_rejects_are_rejected(tmp_path, typed_config, path):
    text = _filter_yaml(typed_config)
    if ENVOY is not None:
        p = tmp_path / "bad.yaml"
        p.write_text(text)
        assert envoy_validate(p)[0] != 0
    with pytest.raises(ConfigError) as e:
        load_envoy(text)
    assert path in str(e.value)


# ---------------------------------------------------------------- the GIL

def _curl_while_gil_held(p, paths, hold=2.5):
    """Start curl (a separate process), then hold this process's GIL for `hold` seconds in
    one C call. Returns each request's (status, seconds)."""
    host, port = p.listener_address("http")
    urls = " ".join(f"-o /dev/null http://{host}:{port}{path}" for path in paths)
    cmd = f"sleep 0.4; curl -s --max-time 10 -w '%{{http_code}} %{{time_total}}\\n' {urls}"
    proc = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.PIPE, text=True, env=envoy_env())
    # PyDLL calls keep the GIL: nothing else in this process that needs it can run.
    ctypes.PyDLL(None).usleep(int(hold * 1e6))
    out, _ = proc.communicate(timeout=20)
    return [(int(a), float(b)) for a, b in (line.split() for line in out.split("\n") if line)]


def test_native_filter_chain_does_not_take_the_gil(upstream):
    chain = [nf(HEADER_MUTATION, HeaderMutation(Mutations([HeaderMutationOp(append=HeaderValueOption("x-n", "1"))]))),
             nf(LOCAL_RATELIMIT, rl("rl_gil", 1000)),
             nf(FAULT, HTTPFault(delay=FaultDelay(0.02, ALWAYS))),
             nf(CORS, Cors()),
             nf(BUFFER, Buffer(4096))]
    routes = [route("/", cors=POLICY)]

    # The upstream is a thread of this process (it needs the GIL), so answer from another
    # process: a tiny static server.
    srv = subprocess.Popen(
        ["python3", "-c", "import http.server, sys\n"
         "class H(http.server.BaseHTTPRequestHandler):\n"
         "    protocol_version = 'HTTP/1.1'\n"
         "    def do_GET(self):\n"
         "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers();"
         " self.wfile.write(b'ok')\n"
         "    def log_message(self, *a): pass\n"
         "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
         "print(s.server_address[1], flush=True)\n"
         "s.serve_forever()\n"], stdout=subprocess.PIPE, text=True, env=envoy_env())
    try:
        port = int(srv.stdout.readline())
        from fastproxy import Cluster, Endpoint
        clusters = [Cluster("c", [Endpoint("127.0.0.1", port)])]
        with make_proxy(chain, upstream, routes=routes, clusters=clusters) as p:
            assert get(p)[0] == 200     # warm: connections, routes
            results = _curl_while_gil_held(p, ["/a", "/b", "/c", "/d"])
            assert [s for s, _ in results] == [200] * 4, results
            # served while the GIL was held (it was held for 2.5 s from before the first)
            assert max(t for _, t in results) < 1.0, results

        # Control: the same with a Python filter in the chain waits for the GIL.
        class Touch(HttpFilter):
            def decode_headers(self, headers, end_stream):
                return FilterStatus.CONTINUE

        with make_proxy(chain + [PythonHttpFilter("touch", Touch)], upstream, routes=routes,
                        clusters=clusters) as p:
            assert get(p)[0] == 200
            results = _curl_while_gil_held(p, ["/a"])
            assert results[0][0] == 200 and results[0][1] > 1.0, results
    finally:
        srv.terminate()
        srv.wait(5)
