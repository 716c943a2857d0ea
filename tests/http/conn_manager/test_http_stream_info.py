"""The HTTP connection manager's per-stream facts and the features built on them: access
logs (Envoy's default and custom formats, response flags), stream_idle_timeout and
request_timeout, the trusted client address (use_remote_address / xff_num_trusted_hops),
the downstream_rq_time / upstream_rq_time histograms, and CONNECT tunnels. Real sockets,
real upstreams started here; the proxy runs in this process."""
from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from fastproxy import Admin, Cluster, Endpoint, Listener, Proxy
from fastproxy.errors import ConfigError
from fastproxy.http.model import (AccessLog, HttpConnectionManager, Route, RouteAction,
                                  RouteConfiguration, RouteMatch, UpgradeConfig, VirtualHost)

from conftest import free_port, wait_for
from http_upstreams import RawHttpUpstream, exchange as _exchange
from http_upstreams import envoy_local_address
from upstreams import EchoServer

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def make_proxy(routes, clusters, admin=None, **hcm_kw):
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=routes)])
    hcm = HttpConnectionManager("ingress", rc, **hcm_kw)
    return Proxy([Listener("http", hcm, port=0)], clusters, concurrency=2, admin=admin)


def exchange(addr, data: bytes, timeout=5.0) -> bytes:
    return _exchange(addr, data, timeout)


def log_lines(path, n):
    """The access log's lines once there are n of them."""
    def ready():
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        lines = text.splitlines()
        return lines if len(lines) >= n else None
    return wait_for(ready, msg=f"{n} access log lines in {path}")


# ---------------------------------------------------------------- access log

def test_access_log_default_format_matches_envoy(tmp_path, upstream):
    log = tmp_path / "access.log"
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c", prefix_rewrite="/v2/"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])],
                   use_remote_address=True, access_log=[AccessLog(str(log))])
    with p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("POST", "/api/x?y=1", body=b"hello", headers={
            "Host": "example.com", "User-Agent": "test-agent/1", "X-Forwarded-For": "1.2.3.4"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200
        line, = log_lines(log, 1)
    rid = upstream.requests[-1][2]["x-request-id"][0]
    service_time = r.getheader("x-envoy-upstream-service-time")
    # As Envoy: the original path (x-envoy-original-path after the rewrite), the upstream
    # service time, and x-forwarded-for as sent upstream (Envoy's local address appended for
    # a loopback client).
    m = re.fullmatch(r'\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "POST /api/x\?y=1 HTTP/1.1" 200 - 5 (\d+) (\d+) '
                     + service_time + r' "1\.2\.3\.4,' + re.escape(envoy_local_address())
                     + r'" "test-agent/1" "(' + UUID + r')" "example.com" "127\.0\.0\.1:(\d+)"', line)
    assert m, line
    assert int(m.group(2)) == len(body)
    assert m.group(4) == rid, "the logged request id is the one sent upstream"
    assert int(m.group(5)) == upstream.port
    logged = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(logged - time.time()) < 60, "START_TIME is the current UTC time"


def test_access_log_long_x_forwarded_for_is_logged_whole(tmp_path, upstream):
    """%REQ(X-FORWARDED-FOR)% is the value sent upstream (the received list, then the
    address appended): a 4 KiB list is logged whole, as the upstream got it, neither cut
    nor replaced by the address alone."""
    log = tmp_path / "xff.log"
    received = ",".join(f"10.{i // 250}.{i % 250}.1" for i in range(400))
    assert len(received) > 4096
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])],
                   use_remote_address=True,
                   access_log=[AccessLog(str(log), "[%REQ(X-FORWARDED-FOR)%]\n")])
    with p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/", headers={"X-Forwarded-For": received})
        assert conn.getresponse().status == 200
        line, = log_lines(log, 1)
    sent = upstream.requests[-1][2]["x-forwarded-for"][-1]
    assert sent == received + "," + envoy_local_address()
    assert line == f"[{sent}]"


FORMAT = ("%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:METHOD)% %REQ(:PATH):6% %REQ(X-MISSING?:AUTHORITY)% "
          "%RESP(X-UP)% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %ROUTE_NAME% "
          "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% %START_TIME(%Y|%E3S|%s)% %PROTOCOL%\n")


def test_access_log_custom_format_and_response_flags(tmp_path):
    log = tmp_path / "custom.log"
    slow = threading.Event()

    def handler(method, path, headers, body):
        if path == "/slow":
            slow.wait(10)
            return None
        if path == "/reset":
            return None                       # close without answering: UC
        return b"HTTP/1.1 200 OK\r\nX-Up: yes\r\nContent-Length: 3\r\n\r\nabc"

    up = RawHttpUpstream(handler)
    dead = free_port()
    p = make_proxy([
        Route(RouteMatch(prefix="/dead"), route=RouteAction(cluster="dead"), name="to-dead"),
        Route(RouteMatch(prefix="/slow"), route=RouteAction(cluster="c", timeout=0.3), name="slow"),
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"), name="main"),
    ], [Cluster("c", [Endpoint("127.0.0.1", up.port)]), Cluster("dead", [Endpoint("127.0.0.1", dead)])],
        access_log=[AccessLog(str(log), FORMAT)])
    try:
        with p:
            addr = p.listener_address("http")
            conn = http.client.HTTPConnection(*addr, timeout=5)
            conn.request("POST", "/upload/abcdef", body=b"x" * 1000, headers={"Host": "h.example"})
            assert conn.getresponse().read() == b"abc"
            conn.request("GET", "/dead", headers={"Host": "h.example"})
            assert conn.getresponse().status == 503
            conn = http.client.HTTPConnection(*addr, timeout=5)
            conn.request("GET", "/slow", headers={"Host": "h.example"})
            assert conn.getresponse().status == 504
            conn = http.client.HTTPConnection(*addr, timeout=5)
            conn.request("GET", "/reset", headers={"Host": "h.example"})
            assert conn.getresponse().status == 503
            lines = log_lines(log, 4)
    finally:
        slow.set()
        up.close()
    year = time.strftime("%Y", time.gmtime())
    assert re.fullmatch(r"200 - POST /uploa h\.example yes 1000 3 c main 127\.0\.0\.1 " + year
                        + r"\|\d\d\.\d{3}\|\d{10} HTTP/1\.1", lines[0]), lines[0]
    assert lines[1].startswith("503 UF GET /dead h.example - 0 "), lines[1]
    assert " dead to-dead " in lines[1]
    assert lines[2].startswith("504 UT GET /slow h.example - 0 24 c slow "), lines[2]
    assert lines[3].startswith("503 UC GET /reset "), lines[3]


def test_access_log_no_route_and_stdout(capfd):
    p = make_proxy([Route(RouteMatch(path="/only"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", free_port())])],
                   access_log=[AccessLog("/dev/stdout", "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n")])
    with p:
        out = exchange(p.listener_address("http"), b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 404 ")
        wait_for(lambda: "404 NR /nope\n" in capfd.readouterr().out or None, msg="NR line on stdout")


def test_access_log_bad_format_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        make_proxy([], [], access_log=[AccessLog(str(tmp_path / "x"), "%NOPE%")])
    assert "access_log[0].format" in err.value.path
    assert "%NOPE%" in err.value.message


# ---------------------------------------------------------------- codec errors

# Envoy's default format up to the response code, for a request whose head never parsed.
START = r'\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] '
NO_HEADERS = r'"- - HTTP/1\.1" '          # method, path: "-"; the protocol: always HTTP/1.1
REST = r' \d+ - "-" "-" "-" "-" "-"'      # duration, then no service time, XFF, UA, id, host, upstream


def codec_stats(p):
    st = p.stats()
    return {k: st["http.ingress." + k] for k in ("downstream_cx_protocol_error", "downstream_rq_total",
                                                 "downstream_rq_rx_reset", "downstream_rq_active",
                                                 "downstream_rq_4xx", "downstream_rq_5xx")}


@pytest.mark.parametrize("data, status, body", [
    (b"GET /x HTTP/1.1 junk\r\nHost: h\r\n\r\n", 400, b"Bad Request"),
    # The request line parsed, but the head did not: Envoy still prints "-" for them.
    (b"GET /x HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n", 400, b"Bad Request"),
    (b"GET /big HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n", 431, b"Request Header Fields Too Large"),
    (b"GET /m HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n", 431,
     b"Request Header Fields Too Large"),
    (b"POST /te HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: foo\r\n\r\n", 501, b"Not Implemented"),
    # HTTP/1.0 and HEAD make no difference: the request is unknown.
    (b"HEAD /x HTTP/1.0\r\nBad Name: v\r\n\r\n", 400, b"Bad Request"),
])
def test_codec_error_is_logged_and_counted_as_envoy_does(tmp_path, upstream, data, status, body):
    """What Envoy 1.40 does with a request its codec rejects: it is a request (counted,
    with its status class, and downstream_rq_rx_reset), a protocol error of the connection,
    and an access log line with DPE and no request headers; the reply's body is the
    status text."""
    log = tmp_path / "a.log"
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])], access_log=[AccessLog(str(log))])
    with p:
        out = exchange(p.listener_address("http"), data)
        head, _, got = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status), out[:200]
        assert b"connection: close" in head.lower()
        assert got == body
        line, = log_lines(log, 1)
        assert re.fullmatch(START + NO_HEADERS + r"%d DPE 0 %d" % (status, len(body)) + REST, line), line
        assert codec_stats(p) == {"downstream_cx_protocol_error": 1, "downstream_rq_total": 1,
                                  "downstream_rq_rx_reset": 1, "downstream_rq_active": 0,
                                  "downstream_rq_4xx": int(status < 500), "downstream_rq_5xx": int(status >= 500)}
        assert p.histograms()["http.ingress.downstream_rq_time"].count == 1
    assert upstream.requests == []


def test_codec_error_counted_without_access_log(upstream):
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])])
    with p:
        out = exchange(p.listener_address("http"), b"GET /x HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ")
        assert codec_stats(p)["downstream_rq_rx_reset"] == 1
        assert codec_stats(p)["downstream_cx_protocol_error"] == 1


def test_codec_error_in_the_body_keeps_the_request_line(tmp_path):
    """A chunked body that goes bad after the stream was routed: the line has the request's
    method, path and upstream, and DPE."""
    up = RawHttpUpstream()
    log = tmp_path / "a.log"
    fmt = "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT% %UPSTREAM_HOST% %REQ(USER-AGENT)%\n"
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", up.port)])], access_log=[AccessLog(str(log), fmt)])
    try:
        with p:
            out = exchange(p.listener_address("http"),
                           b"POST /chunk HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\nabc\r\nzz\r\n")
            assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and out.endswith(b"\r\n\r\nBad Request"), out
            assert log_lines(log, 1) == [f"POST /chunk 400 DPE 11 127.0.0.1:{up.port} ua"]
            st = codec_stats(p)
            assert (st["downstream_cx_protocol_error"], st["downstream_rq_total"], st["downstream_rq_rx_reset"]) == (1, 1, 1)
    finally:
        up.close()


def test_client_closing_inside_a_head_is_logged_dc(tmp_path, upstream):
    """Envoy's stream starts with the request's first byte: a client that closes inside the
    head leaves a line with DC and no response (status 0), and is no protocol error."""
    log = tmp_path / "a.log"
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])], access_log=[AccessLog(str(log))])
    with p:
        s = socket.create_connection(p.listener_address("http"), timeout=5)
        s.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\nX-Partial: y")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b"", "closed without an answer"
        s.close()
        line, = log_lines(log, 1)
        assert re.fullmatch(START + NO_HEADERS + "0 DC 0 0" + REST, line), line
        assert codec_stats(p) == {"downstream_cx_protocol_error": 0, "downstream_rq_total": 1,
                                  "downstream_rq_rx_reset": 1, "downstream_rq_active": 0,
                                  "downstream_rq_4xx": 0, "downstream_rq_5xx": 0}


def test_pipelined_bad_request_after_a_good_one(tmp_path, upstream):
    log = tmp_path / "a.log"
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])],
                   access_log=[AccessLog(str(log), "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n")])
    with p:
        out = exchange(p.listener_address("http"), b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n"
                                                    b"GET /two HTTP/1.1\r\nBad Name: v\r\n\r\n")
        assert out.count(b"HTTP/1.1 ") == 2 and b"\r\n\r\nGET /one 0HTTP/1.1 400 Bad Request\r\n" in out, out
        assert log_lines(log, 2) == ["GET /one 200 -", "- - 400 DPE"]


# ---------------------------------------------------------------- timeouts

def test_stream_idle_timeout_slow_client_gets_408(tmp_path, upstream):
    log = tmp_path / "a.log"
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])], stream_idle_timeout=0.3,
                   access_log=[AccessLog(str(log), "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED%\n")])
    with p:
        t0 = time.monotonic()
        out = exchange(p.listener_address("http"),
                       b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        assert time.monotonic() - t0 >= 0.25
        assert out.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), out
        assert out.endswith(b"stream timeout")
        assert b"connection: close" in out.lower()
        assert p.stats()["http.ingress.downstream_rq_idle_timeout"] == 1
        assert log_lines(log, 1) == ["408 SI 2"]


def test_stream_idle_timeout_slow_upstream_gets_504_and_reset_after_headers(upstream):
    release = threading.Event()

    def handler(method, path, headers, body):
        if path == "/silent":
            release.wait(10)
            return None

        def partial(c):                       # the head and half the body, then nothing
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            release.wait(10)
        return partial

    up = RawHttpUpstream(handler)
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c", timeout=None))],
                   [Cluster("c", [Endpoint("127.0.0.1", up.port)])], stream_idle_timeout=0.3)
    try:
        with p:
            addr = p.listener_address("http")
            conn = http.client.HTTPConnection(*addr, timeout=5)
            conn.request("GET", "/silent")
            r = conn.getresponse()
            assert (r.status, r.read()) == (504, b"stream timeout")
            # Envoy keeps the downstream connection after a 504 for a complete request.
            s = socket.create_connection(addr, timeout=5)
            s.sendall(b"GET /partial HTTP/1.1\r\nHost: x\r\n\r\n")
            out, ended = b"", None
            while ended is None:
                try:
                    d = s.recv(65536)
                except ConnectionResetError:
                    ended = "reset"
                    continue
                out += d
                if not d:
                    ended = "fin"
            s.close()
            assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"hello"), out
            assert ended == "reset", "a started response is ended by resetting the connection"
            assert p.stats()["http.ingress.downstream_rq_idle_timeout"] == 2
    finally:
        release.set()
        up.close()


def test_stream_idle_timeout_does_not_fire_while_bytes_flow():
    def trickle(method, path, headers, body):
        def send(c):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
            for _ in range(8):                # 8 x 0.1 s: longer than the idle timeout
                time.sleep(0.1)
                c.sendall(b"x")
        return send

    up = RawHttpUpstream(trickle)
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", up.port)])], stream_idle_timeout=0.35)
    try:
        with p:
            conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
            conn.request("GET", "/t")
            assert conn.getresponse().read() == b"x" * 8
            assert p.stats()["http.ingress.downstream_rq_idle_timeout"] == 0
    finally:
        up.close()


def test_request_timeout_for_a_request_trickling_in(upstream):
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])], request_timeout=0.4,
                   stream_idle_timeout=5.0)
    with p:
        s = socket.create_connection(p.listener_address("http"), timeout=5)
        s.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        t0 = time.monotonic()
        got = b""
        s.setblocking(False)
        while not got and time.monotonic() - t0 < 3:
            try:                               # active, but never finishing the body
                s.send(b"a")
            except OSError:
                break
            time.sleep(0.05)
            try:
                got = s.recv(65536)
            except BlockingIOError:
                pass
        s.setblocking(True)
        while True:
            try:
                d = s.recv(65536)
            except OSError:
                break
            if not d:
                break
            got += d
        s.close()
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert got.endswith(b"request timeout")
        assert 0.35 <= time.monotonic() - t0 < 3
        assert p.stats()["http.ingress.downstream_rq_timeout"] == 1
        assert p.stats()["http.ingress.downstream_rq_idle_timeout"] == 0
        assert upstream.requests == [], "the upstream never saw a complete request"


# ---------------------------------------------------------------- trusted client address

XFF = "203.0.113.128, 203.0.113.10, 203.0.113.1"


LOCAL = envoy_local_address()     # what Envoy appends to XFF for a loopback peer


@pytest.mark.parametrize("use_remote, hops, xff, client, forwarded", [
    (True, 0, XFF, "127.0.0.1", XFF + "," + LOCAL),
    (True, 1, XFF, "203.0.113.1", XFF + "," + LOCAL),
    (True, 2, XFF, "203.0.113.10", XFF + "," + LOCAL),
    (True, 4, XFF, "127.0.0.1", XFF + "," + LOCAL),            # too few entries: the peer
    (False, 0, XFF, "203.0.113.1", XFF),
    (False, 1, XFF, "203.0.113.10", XFF),
    (False, 1, "bogus, 203.0.113.1", "127.0.0.1", "bogus, 203.0.113.1"),   # not an IP: the peer
    (False, 0, None, "127.0.0.1", None),
])
def test_xff_num_trusted_hops(tmp_path, upstream, use_remote, hops, xff, client, forwarded):
    log = tmp_path / "a.log"
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])],
                   use_remote_address=use_remote, xff_num_trusted_hops=hops,
                   access_log=[AccessLog(str(log), "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                                                   "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%\n")])
    with p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/", headers={"X-Forwarded-For": xff} if xff else {})
        conn.getresponse().read()
        assert log_lines(log, 1) == [f"{client} 127.0.0.1"]
    headers = upstream.requests[-1][2]
    assert headers.get("x-forwarded-for", [None])[-1] == forwarded
    # No internal_address_config: every request is external (Envoy >= 1.33), so every
    # use_remote_address request is an edge request and carries the trusted client address.
    assert headers.get("x-envoy-external-address") == ([client] if use_remote else None)


# ---------------------------------------------------------------- histograms

def test_request_time_histograms_in_stats_and_admin(upstream):
    def handler(method, path, headers, body):
        if path.startswith("/slow"):
            time.sleep(0.2)                   # the upstream's own latency, measured below
        return RawHttpUpstream.default(method, path, headers, body)

    up = RawHttpUpstream(handler)
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", up.port)])], admin=Admin("127.0.0.1", 0))
    try:
        with p:
            conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
            for i in range(10):
                conn.request("GET", f"/fast{i}")
                conn.getresponse().read()
            for i in range(10):
                conn.request("GET", f"/slow{i}")
                conn.getresponse().read()
            h = p.histograms()
            rq = h["http.ingress.downstream_rq_time"]
            assert rq.count == 20
            assert rq.quantile(0.25) < 100 <= 150 <= rq.quantile(0.75) <= 260
            assert rq.sum >= 10 * 190
            assert h["cluster.c.upstream_rq_time"].count == 20
            admin = "http://%s:%d" % p.admin_address
            text = urllib.request.urlopen(admin + "/stats?filter=rq_time").read().decode()
            line = [x for x in text.splitlines() if x.startswith("http.ingress.downstream_rq_time: ")]
            assert line and re.fullmatch(r"http\.ingress\.downstream_rq_time: P0\(nan,[\d.]+\) P25\(nan,[\d.]+\) "
                                         r"P50\(nan,[\d.]+\) .* P100\(nan,[\d.]+\)", line[0]), text
            data = json.loads(urllib.request.urlopen(admin + "/stats?format=json").read())
            hist = [e["histograms"] for e in data["stats"] if "histograms" in e][0]
            assert hist["supported_quantiles"][0] == 0 and hist["supported_quantiles"][-1] == 100
            names = {q["name"]: q["values"] for q in hist["computed_quantiles"]}
            assert names["http.ingress.downstream_rq_time"][-1]["cumulative"] >= 190
    finally:
        up.close()


def test_histogram_buckets_are_log_linear():
    from fastproxy import _core
    for v in (0, 1, 15, 16, 17, 100, 1000, 12345, 10 ** 6, 2 ** 35, 2 ** 40):
        i = _core.histogram_bucket_of(v)
        low, high = _core.histogram_bucket_bounds(i)
        assert low <= v and (high is None or v < high), (v, i, low, high)
        if high is not None and v >= 16:
            assert (high - low) / low <= 0.125


# ---------------------------------------------------------------- CONNECT

def connect_proxy(cluster_port, log=None, upgrade=True, connect_route=True):
    routes = [Route(RouteMatch(prefix="/"), route=RouteAction(cluster="web"))]
    if connect_route:
        routes.insert(0, Route(RouteMatch(connect_matcher=True), route=RouteAction(cluster="tunnel")))
    return make_proxy(routes, [Cluster("tunnel", [Endpoint("127.0.0.1", cluster_port)]),
                               Cluster("web", [Endpoint("127.0.0.1", cluster_port)])],
                      upgrade_configs=[UpgradeConfig("CONNECT")] if upgrade else [],
                      access_log=[AccessLog(str(log))] if log else [])


def test_connect_tunnels_bytes_to_the_cluster(tmp_path):
    echo = EchoServer()
    log = tmp_path / "a.log"
    p = connect_proxy(echo.port, log)
    try:
        with p:
            s = socket.create_connection(p.listener_address("http"), timeout=5)
            s.sendall(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\nearly-")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            head, rest = head.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            payload = bytes(range(256)) * 4096        # 1 MiB both ways
            threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
            got = rest
            while len(got) < len(b"early-") + len(payload):
                d = s.recv(1 << 16)
                assert d, "tunnel closed early"
                got += d
            assert got == b"early-" + payload
            s.shutdown(socket.SHUT_WR)
            assert s.recv(10) == b""
            s.close()
            line, = log_lines(log, 1)
            assert re.search(r'"CONNECT - HTTP/1.1" 200 - %d %d ' % (len(payload) + 6, len(payload) + 6), line), line
            assert line.endswith(f'"db.internal:5432" "127.0.0.1:{echo.port}"')
            st = p.stats()
            assert st["cluster.tunnel.upstream_cx_total"] == 1
            assert st["http.ingress.downstream_rq_2xx"] == 1
    finally:
        echo.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_connect_with_curl_proxytunnel(upstream):
    p = connect_proxy(upstream.port)
    with p:
        host, port = p.listener_address("http")
        out = subprocess.run(["curl", "-sS", "--max-time", "5", "-p", "-x", f"http://{host}:{port}",
                              "http://app.example:8080/through/tunnel"], capture_output=True, timeout=10)
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"GET /through/tunnel 0"
    method, path, headers, _ = upstream.requests[-1]
    assert (method, path, headers["host"]) == ("GET", "/through/tunnel", ["app.example:8080"])
    assert b"CONNECT" not in upstream.raw, "the upstream sees only the tunnelled bytes"


def test_connect_without_upgrade_config_is_403_and_without_route_404(upstream):
    req = b"CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n"
    with connect_proxy(upstream.port, upgrade=False) as p:
        out = exchange(p.listener_address("http"), req)
        assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n"), out
        assert b"connection: close" in out.lower()
    with connect_proxy(upstream.port, upgrade=False, connect_route=False) as p:
        out = exchange(p.listener_address("http"), req)        # Envoy: no route comes first
        assert out.startswith(b"HTTP/1.1 404 Not Found\r\n"), out
    with connect_proxy(upstream.port, connect_route=False) as p:
        out = exchange(p.listener_address("http"), req)
        assert out.startswith(b"HTTP/1.1 404 Not Found\r\n"), out
        # A connect_matcher route never matches an ordinary request, and path routes still work.
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/plain")
        assert conn.getresponse().read() == b"GET /plain 0"
    assert upstream.connections == 1, "nothing reached the upstream for the rejected CONNECTs"


def test_connect_to_a_dead_cluster_is_503_uf(tmp_path):
    log = tmp_path / "a.log"
    p = make_proxy([Route(RouteMatch(connect_matcher=True), route=RouteAction(cluster="t"))],
                   [Cluster("t", [Endpoint("127.0.0.1", free_port())])],
                   upgrade_configs=[UpgradeConfig("CONNECT")],
                   access_log=[AccessLog(str(log), "%RESPONSE_CODE% %RESPONSE_FLAGS%\n")])
    with p:
        out = exchange(p.listener_address("http"), b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503 "), out
        assert log_lines(log, 1) == ["503 UF"]
