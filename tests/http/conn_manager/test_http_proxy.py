"""The HTTP/1.1 data plane end to end: real clients (http.client, raw sockets, curl) through
fastproxy to raw upstream servers that record every byte they receive."""
from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import threading
import time

import pytest

from fastproxy import Cluster, Endpoint, Listener, Proxy
from fastproxy.http.model import (DirectResponse, HeaderMutations, HeaderValueOption,
                                  HttpConnectionManager, RedirectAction, RegexRewrite, Route, RouteAction,
                                  RouteConfiguration, RouteMatch, UpgradeConfig, VirtualHost)

from conftest import recv_head, recv_until_eof, wait_for
from http_upstreams import RawHttpUpstream, exchange, http_request
from http_upstreams import envoy_local_address


def make_proxy(routes, clusters, **hcm_kw):
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=routes)])
    hcm = HttpConnectionManager("ingress", rc, **hcm_kw)
    return Proxy([Listener("http", hcm, port=0)], clusters, concurrency=2)


def proxy_to(up, **hcm_kw):
    """A proxy whose one route sends everything to the upstream server `up`."""
    return make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                      [Cluster("c", [Endpoint("127.0.0.1", up.port)])], **hcm_kw)


@pytest.fixture
def proxy(upstream):
    p = make_proxy([
        Route(RouteMatch(prefix="/direct"), direct_response=DirectResponse(200, b"direct!")),
        Route(RouteMatch(prefix="/old"), redirect=RedirectAction(prefix_rewrite="/new")),
        Route(RouteMatch(prefix="/api/"), route=RouteAction(cluster="c", prefix_rewrite="/v2/")),
        Route(RouteMatch(prefix="/hdr"), route=RouteAction(cluster="c"),
              headers=HeaderMutations(request_headers_to_add=[HeaderValueOption("x-added", "1")],
                                      response_headers_to_add=[HeaderValueOption("x-resp", "2")])),
        Route(RouteMatch(path="/only"), route=RouteAction(cluster="c")),
        Route(RouteMatch(prefix="/autohost"), route=RouteAction(cluster="c", auto_host_rewrite=True)),
        Route(RouteMatch(prefix="/lithost"), route=RouteAction(cluster="c", host_rewrite_literal="lit.example")),
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c")),
    ], [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])], use_remote_address=True)
    with p:
        yield p


def test_keepalive_requests_reuse_one_upstream_connection(proxy, upstream):
    conn = http.client.HTTPConnection(*proxy.listener_address("http"), timeout=5)
    for i in range(20):
        conn.request("GET", f"/k{i}")
        r = conn.getresponse()
        assert r.status == 200
        assert r.read() == f"GET /k{i} 0".encode()
    assert upstream.connections == 1, "the pool should reuse the upstream connection"
    st = proxy.stats()
    assert st["http.ingress.downstream_rq_2xx"] == 20
    assert st["cluster.c.upstream_cx_total"] == 1


def test_a_burst_of_concurrent_requests_keeps_every_upstream_connection():
    """N requests in flight at once to one host need N upstream connections; when they come
    back idle the pool keeps them all (no idle cap: Envoy bounds connections with
    max_connections only), so the next rounds reuse them instead of paying a connect and
    a close each. The upstream answers a round only once all N requests of it arrived,
    which forces N connections in use at the same time, and the next round starts once
    every answer is in (every connection back in the pool)."""
    n, rounds = 100, 3
    barrier = threading.Barrier(n, timeout=20)
    round_done = threading.Barrier(n, timeout=20)     # clients: every answer of a round is in

    def all_at_once(method, path, headers, body):
        barrier.wait()
        return RawHttpUpstream.default(method, path, headers, body)

    up = RawHttpUpstream(all_at_once)
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))])])
    failures = []
    try:
        # One worker: the pool is per worker, so all N connections are in one pool.
        with Proxy([Listener("http", HttpConnectionManager("ingress", rc), port=0)],
                   [Cluster("c", [Endpoint("127.0.0.1", up.port)])], concurrency=1) as p:
            addr = p.listener_address("http")

            def client(i):
                try:
                    conn = http.client.HTTPConnection(*addr, timeout=30)
                    for r in range(rounds):
                        conn.request("GET", f"/c{i}r{r}")
                        resp = conn.getresponse()
                        assert (resp.status, resp.read()) == (200, f"GET /c{i}r{r} 0".encode())
                        round_done.wait()
                    conn.close()
                except Exception as e:          # reported below, with the counters
                    failures.append((i, repr(e)))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
            st = p.stats()
            assert not failures, failures[:3]
            assert st["cluster.c.upstream_rq_total"] == n * rounds
            assert (st["cluster.c.upstream_cx_total"], st["cluster.c.upstream_cx_destroy"]) == (n, 0)
            assert up.connections == n
    finally:
        up.close()


def test_connection_per_request_reuses_the_pool_and_sends_fin_with_the_answer(proxy, upstream):
    """A client that opens a connection per request (`Connection: close`): the requests
    share the pooled upstream connections (one per worker at most), and each answer's last
    bytes leave with the FIN in one segment (MSG_MORE before the close), so the client is
    woken and ACKs once instead of twice. Proxied and local (direct_response) answers."""
    import struct

    def segments_received(sock):
        return struct.unpack_from("<I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 140)[0]

    addr = proxy.listener_address("http")
    for path, body in (("/p", b"GET /p 0"), ("/direct", b"direct!")):
        counts = []
        for _ in range(10):
            with socket.create_connection(addr, timeout=5) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
                data = recv_until_eof(s)
                assert data.startswith(b"HTTP/1.1 200") and data.endswith(body), data
                counts.append(segments_received(s))
        # The SYN-ACK, the ACK of the request, then the answer with the FIN.
        assert min(counts) == 3, (path, counts)
    assert upstream.connections <= 2, "each request opened an upstream connection"


def test_loopback_sockets_are_not_paced(proxy, upstream):
    """As for TCP proxying (test_tcp_proxy): with BBR as the host default, the proxy's own
    loopback sockets, the accepted downstream one and the pooled upstream one, use CUBIC."""
    from test_tcp_proxy import _cc_of, _sndbuf_of, skip_unless_bbr_default
    skip_unless_bbr_default()
    port = proxy.listener_address("http")[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/cc")
    assert conn.getresponse().read() == b"GET /cc 0"
    try:
        assert _cc_of(f"( dport = :{upstream.port} )") == ["cubic"]    # proxy -> upstream
        assert _cc_of(f"( sport = :{port} )") == ["cubic"]             # proxy's accepted socket
        assert _cc_of(f"( dport = :{port} )") == ["bbr"]               # the client's: untouched
        assert _sndbuf_of(f"( dport = :{upstream.port} )") == [2 * 1048576]     # fixed SO_SNDBUF
        assert _sndbuf_of(f"( sport = :{port} )") == [2 * 1048576]
    finally:
        conn.close()


def test_upstream_closing_after_a_keep_alive_response_is_not_reused():
    """An upstream that answers without `Connection: close` and then closes at once: its FIN
    arrives with the response, so the connection must not go back to the pool (the next
    request would get a 503 on a dead connection)."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            accepted.append(c)
            recv_head(c)
            # Corked, the response and the FIN leave as one segment: the proxy always sees
            # both in the same event (uncorked, a loaded host may split them).
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                        [Cluster("c", [Endpoint("127.0.0.1", srv.getsockname()[1])])]) as p:
            conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
            for i in range(8):
                conn.request("GET", f"/{i}")
                r = conn.getresponse()
                assert (r.status, r.read()) == (200, b"ok"), i
            assert len(accepted) == 8
            assert p.stats()["cluster.c.upstream_rq_5xx"] == 0
    finally:
        srv.close()


def test_post_bodies_content_length_and_chunked(proxy, upstream):
    conn = http.client.HTTPConnection(*proxy.listener_address("http"), timeout=10)
    conn.request("GET", "/warm")                        # a pooled upstream connection
    conn.getresponse().read()
    body = bytes(range(256)) * 4096 * 8                 # 8 MiB
    conn.request("POST", "/up", body=body)
    r = conn.getresponse()
    assert r.read() == b"POST /up %d" % len(body)
    assert upstream.requests[-1][3] == body
    st = proxy.stats()
    assert st["http.ingress.bytes_spliced"] > 0, "a Content-Length body should be spliced"
    assert st["http.ingress.bytes_spliced"] + st["http.ingress.bytes_copied"] >= len(body)
    conn.request("POST", "/chunks", body=iter([b"ab", b"cde", b"f" * 70000]), encode_chunked=True)
    r = conn.getresponse()
    assert r.read() == b"POST /chunks %d" % (5 + 70000)
    method, path, headers, got = upstream.requests[-1]
    assert got == b"abcde" + b"f" * 70000
    assert headers["transfer-encoding"] == ["chunked"]


def test_pipelined_requests_answered_in_order(proxy):
    out = exchange(proxy.listener_address("http"),
                   b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.index(b"GET /a") < out.index(b"GET /b") < out.index(b"GET /c")
    assert out.rstrip().endswith(b"GET /c 0")


def test_rewrite_direct_response_redirect_and_404(proxy):
    addr = proxy.listener_address("http")
    conn = http.client.HTTPConnection(*addr, timeout=5)
    conn.request("GET", "/api/users?x=1")
    assert conn.getresponse().read() == b"GET /v2/users?x=1 0"
    conn.request("GET", "/direct")
    r = conn.getresponse()
    assert (r.status, r.read()) == (200, b"direct!")
    conn.request("GET", "/old/page?q=1")
    r = conn.getresponse()
    r.read()
    assert r.status == 301
    assert r.getheader("location") == f"http://{addr[0]}:{addr[1]}/new/page?q=1"
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("only", ["example.com"], routes=[
        Route(RouteMatch(prefix="/"), direct_response=DirectResponse(200, b"x"))])])
    proxy.update(listeners=[Listener("http", HttpConnectionManager("ingress", rc), address=addr[0], port=addr[1])])
    out = exchange(addr, b"GET / HTTP/1.1\r\nHost: other.org\r\n\r\n", timeout=0.5)
    assert out.startswith(b"HTTP/1.1 404 ")


def test_headers_forwarded_hop_by_hop_removed_xff_added(proxy, upstream):
    exchange(proxy.listener_address("http"),
             b"GET /hdr HTTP/1.1\r\nHost: h.example\r\nConnection: close, x-secret\r\n"
             b"X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n"
             b"X-Keep: yes\r\n\r\n", timeout=1)
    _, _, headers, _ = upstream.requests[-1]
    for gone in ("x-secret", "keep-alive", "connection"):
        assert gone not in headers, gone
    assert headers["te"] == ["trailers"]            # the one TE Envoy 1.40 forwards
    assert headers["x-keep"] == ["yes"]
    assert headers["host"] == ["h.example"]
    # Envoy appends with "," and, for a loopback peer, its own local address.
    assert headers["x-forwarded-for"] == ["10.0.0.1," + envoy_local_address()]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-added"] == ["1"]
    assert len(headers["x-request-id"][0]) == 36


@pytest.mark.parametrize("size", [1000, 1024, 5000, 50000])
def test_a_long_x_forwarded_for_is_appended_to_not_replaced(proxy, upstream, size):
    """Whatever its length, the received list is kept and the peer appended (Envoy's
    appendXff); it was replaced by the peer alone past 1 KiB."""
    received = ",".join(f"10.0.{i // 256 % 256}.{i % 256}" for i in range(size // 10))[:size].rstrip(",.")
    exchange(proxy.listener_address("http"),
             b"GET /hdr HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Forwarded-For: "
             + received.encode() + b"\r\n\r\n", timeout=2)
    assert upstream.requests[-1][2]["x-forwarded-for"] == [received + "," + envoy_local_address()]


def test_response_headers_and_server_name(proxy):
    conn = http.client.HTTPConnection(*proxy.listener_address("http"), timeout=5)
    conn.request("GET", "/hdr")
    r = conn.getresponse()
    r.read()
    assert r.getheader("x-resp") == "2"
    assert r.getheader("server") == "fastproxy"


@pytest.mark.parametrize("raw, status", [
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    # a '%' in a Host's reg-name that does not start "%XX" (docs/http1-policy.md, H1-HOST)
    (b"GET / HTTP/1.1\r\nHost: a%\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: exa%mple.test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
])
def test_malformed_requests_rejected_and_nothing_forwarded(proxy, upstream, raw, status):
    out = exchange(proxy.listener_address("http"), raw, timeout=2)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:80]
    assert b"connection: close" in out.lower()
    if status != 400 or b"0x5" not in raw:
        assert upstream.raw == b"", "a rejected request must not reach the upstream"


def test_upstream_failures_map_to_envoy_codes():
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()

    def handler(method, path, headers, body):
        if path == "/slow":
            time.sleep(1.5)
        if path == "/bad":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
        if path == "/reset":
            return None
        return RawHttpUpstream.default(method, path, headers, body)

    up = RawHttpUpstream(handler)
    p = make_proxy([
        Route(RouteMatch(prefix="/dead"), route=RouteAction(cluster="dead")),
        Route(RouteMatch(prefix="/slow"), route=RouteAction(cluster="c", timeout=0.3)),
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c")),
    ], [Cluster("c", [Endpoint("127.0.0.1", up.port)]),
        Cluster("dead", [Endpoint("127.0.0.1", dead_port)])])
    with p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        for path, status in [("/dead", 503), ("/slow", 504), ("/bad", 502), ("/reset", 503), ("/ok", 200)]:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == status, path
        st = p.stats()
        assert st["cluster.dead.upstream_cx_connect_fail"] == 1
        assert st["cluster.c.upstream_rq_timeout"] == 1
        assert st["http.ingress.downstream_rq_5xx"] == 4
    up.close()


def _until_eof(c):
    """An upstream handler's tail: hold the connection until the proxy closes it."""
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass


@pytest.mark.parametrize("answer", [
    # a switch nobody asked for: the bytes after it are not HTTP (the proxy used to drop the
    # 101 as if interim and wait for a final response forever)
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw",
    # a 1xx or 204 cannot carry a body, so these frame one the proxy would not read (Envoy: 502)
    b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    # closed inside the head: a malformed response, not a connection failure (Envoy: 502)
    b"HTTP/1.1 200 OK\r\nContent-Le",
])
def test_upstream_responses_that_cannot_be_framed_are_502_and_the_connection_dropped(answer):
    closed = threading.Event()

    def handler(method, path, headers, body):
        if path == "/bad":
            def send(c):
                c.sendall(answer)
                if not answer.endswith(b"Content-Le"):
                    _until_eof(c)       # the proxy must close it, not wait on it
                closed.set()
            return send
        return RawHttpUpstream.default(method, path, headers, body)

    up = RawHttpUpstream(handler)
    try:
        with proxy_to(up) as p:
            s = socket.create_connection(p.listener_address("http"), timeout=5)
            s.sendall(b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\n")
            head, rest = recv_head(s)
            assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), head
            assert rest == b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"
            assert closed.wait(5), "the proxy kept the upstream connection"
            s.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")   # the client's connection lives on
            head, rest = recv_head(s)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            while not rest.endswith(b"GET /next 0"):
                rest += s.recv(100)
            s.close()
            assert up.connections == 2
    finally:
        up.close()


def test_204_with_content_length_zero_is_forwarded(proxy, upstream):
    upstream.handler = lambda m, path, h, b: b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    r, data = http_request(proxy.listener_address("http"), path="/nc")
    assert (r.status, data) == (204, b"")


def test_close_delimited_response_is_rechunked_for_http11(upstream):
    def handler(method, path, headers, body):
        def send(c):
            c.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        return send
    up = RawHttpUpstream(handler)
    p = proxy_to(up)
    with p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.getheader("transfer-encoding") == "chunked"
        assert r.read() == b"until the end"
        conn.request("GET", "/again")           # the downstream connection survived
        assert conn.getresponse().read() == b"until the end"
    up.close()


def test_route_response_headers_apply_to_local_replies(upstream):
    """As in Envoy 1.40 (checked with the same YAML): once a route is chosen, its
    response_headers_to_add/remove at every level apply to direct responses, redirects and
    the router's own errors too; a 404 for no route has no route to take them from; and
    Server is set after them."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))                     # bound, never listening: refused
    add = lambda k, v: HeaderMutations(response_headers_to_add=[HeaderValueOption(k, v)])
    rc = RouteConfiguration(
        virtual_hosts=[VirtualHost("vh", ["*"], headers=add("x-vh", "vh"), routes=[
            Route(RouteMatch(prefix="/direct"), direct_response=DirectResponse(200, b"hi"),
                  headers=HeaderMutations(response_headers_to_add=[HeaderValueOption("x-route", "r")],
                                          response_headers_to_remove=["server"])),
            Route(RouteMatch(prefix="/redir"), redirect=RedirectAction(path_redirect="/x"),
                  headers=add("x-route", "r")),
            Route(RouteMatch(prefix="/dead"), route=RouteAction(cluster="dead"), headers=add("x-route", "r")),
        ])],
        headers=add("x-rc", "rc"))
    hcm = HttpConnectionManager("ingress", rc)
    try:
        with Proxy([Listener("http", hcm, port=0)],
                   [Cluster("dead", [Endpoint("127.0.0.1", dead.getsockname()[1])])], concurrency=1) as p:
            addr = p.listener_address("http")
            for path, status in (("/direct", 200), ("/redir", 301), ("/dead", 503)):
                out = exchange(addr, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                head = out.split(b"\r\n\r\n")[0].lower()
                assert head.startswith(b"http/1.1 %d" % status), out
                for line in (b"x-route: r", b"x-vh: vh", b"x-rc: rc"):
                    assert line in head, (path, out)
                # The connection manager sets Server after the route's mutations: removing
                # it on a route does nothing (Envoy 1.40 answers /direct with server: envoy).
                assert head.count(b"\r\nserver: fastproxy") == 1, out
            out = exchange(addr, b"GET /none HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 404") and b"x-vh" not in out and b"x-rc" not in out
    finally:
        dead.close()


@pytest.mark.parametrize("mode, from_upstream, on_direct", [
    ("OVERWRITE", "fastproxy", "fastproxy"),
    ("APPEND_IF_ABSENT", "origin", "fastproxy"),
    ("PASS_THROUGH", "origin", None),
])
def test_server_header_transformation(mode, from_upstream, on_direct):
    """Envoy's server_header_transformation, as Envoy 1.40 does it with the same YAML:
    OVERWRITE replaces the upstream's Server, APPEND_IF_ABSENT keeps it (a local reply,
    which has none, gets server_name), PASS_THROUGH never sets one."""
    up = RawHttpUpstream(lambda *a: b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 2\r\n\r\nup")
    routes = [Route(RouteMatch(prefix="/direct"), direct_response=DirectResponse(200, b"hi")),
              Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    try:
        with make_proxy(routes, [Cluster("c", [Endpoint("127.0.0.1", up.port)])],
                        server_header_transformation=mode) as p:
            addr = p.listener_address("http")
            for path, want in (("/app", from_upstream), ("/direct", on_direct)):
                out = exchange(addr, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                head = out.split(b"\r\n\r\n")[0].lower().split(b"\r\n")
                assert [h for h in head if h.startswith(b"server:")] == \
                    ([b"server: " + want.encode()] if want else []), (mode, path, out)
    finally:
        up.close()


def test_server_header_transformation_is_checked():
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[])])
    with pytest.raises(ValueError, match=r"server_header_transformation"):
        Proxy([Listener("http", HttpConnectionManager("x", rc, server_header_transformation="HIDE"), port=0)],
              [], concurrency=1)


def test_head(proxy):
    addr = proxy.listener_address("http")
    out = exchange(addr, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\n")


def test_local_replies_carry_a_date(proxy):
    """The proxy answering by itself acts as an origin server, which must send Date (RFC 9110
    6.6.1); Envoy's local replies carry one too."""
    import email.utils
    out = exchange(proxy.listener_address("http"), b"GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = dict(line.split(b": ", 1) for line in out.split(b"\r\n\r\n")[0].split(b"\r\n")[1:])
    sent = email.utils.parsedate_to_datetime(head[b"date"].decode())
    assert head[b"date"].endswith(b" GMT") and len(head[b"date"]) == 29
    assert abs(sent.timestamp() - time.time()) < 120


def test_http10_refused_with_426_by_default(proxy, upstream):
    """Envoy answers HTTP/1.0 with 426 unless http_protocol_options.accept_http_10."""
    addr = proxy.listener_address("http")
    out = exchange(addr, b"GET /ten HTTP/1.0\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"connection: close" in out
    assert upstream.requests == []


def test_http10_accepted_keep_alive_rules_and_default_host(upstream):
    c = Cluster("c", [Endpoint("127.0.0.1", upstream.port)])
    with make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))], [c],
                    accept_http_10=True, default_host_for_http_10="ten.example") as p:
        addr = p.listener_address("http")
        out = exchange(addr, b"GET /ten HTTP/1.0\r\n\r\n")
        assert out.endswith(b"GET /ten 0") and b"connection: close" in out
        assert upstream.requests[-1][2]["host"] == ["ten.example"]
        out = exchange(addr, b"GET /ten HTTP/1.0\r\nHost: given\r\nConnection: keep-alive\r\n\r\n",
                       timeout=0.5)
        assert b"connection: keep-alive" in out
        assert upstream.requests[-1][2]["host"] == ["given"]
    with make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))], [c],
                    accept_http_10=True) as p:
        n = len(upstream.requests)
        out = exchange(p.listener_address("http"), b"GET /ten HTTP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.0 400 ")         # no Host and no default: Envoy's 400
        assert out.endswith(b"\r\n\r\n")                 # ... with an empty body
        assert len(upstream.requests) == n


@pytest.mark.parametrize("target, host, path", [
    (b"http://abs.example/p?q=1", b"abs.example", "/p?q=1"),
    (b"HTTPS://abs.example:8443/a/b", b"abs.example:8443", "/a/b"),
    (b"http://abs.example", b"abs.example", "/"),
    (b"http://abs.example?x=y", b"abs.example", "/?x=y"),
    (b"http://[::1]:80/v6", b"[::1]:80", "/v6"),
])
def test_absolute_form_target_routes_on_its_path_and_authority(upstream, target, host, path):
    """RFC 9112 3.2.2: absolute-form is routed by its path, forwarded in origin-form, and its
    authority replaces Host (a proxy that routed on Host while the origin used the URL
    would be fooled by a mismatch)."""
    c = Cluster("c", [Endpoint("127.0.0.1", upstream.port)])
    rc = RouteConfiguration(virtual_hosts=[
        VirtualHost("abs", [host.decode()], routes=[Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]),
        VirtualHost("other", ["*"], routes=[Route(RouteMatch(prefix="/"),
                                                  direct_response=DirectResponse(421, b"wrong vhost"))])])
    hcm = HttpConnectionManager("ingress", rc)
    with Proxy([Listener("http", hcm, port=0)], [c], concurrency=1) as p:
        out = exchange(p.listener_address("http"),
                       b"GET " + target + b" HTTP/1.1\r\nHost: decoy.example\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200"), out
        method, got_path, headers, _ = upstream.requests[-1]
        assert got_path == path
        assert headers["host"] == [host.decode()]


@pytest.mark.parametrize("target", [b"ftp://abs.example/p", b"http:///p", b"http://u@abs.example/p"])
def test_absolute_form_other_schemes_and_userinfo_refused(proxy, upstream, target):
    out = exchange(proxy.listener_address("http"),
                   b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert upstream.requests == []


@pytest.mark.parametrize("te", [b"gzip, chunked", b"deflate,chunked", b"x-gzip, chunked"])
def test_request_transfer_codings_besides_chunked_get_501(proxy, upstream, te):
    """Re-framing would drop the coding and hand the upstream a body it cannot decode; like
    Envoy, such requests are refused with 501 and nothing is forwarded."""
    out = exchange(proxy.listener_address("http"),
                   b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 501 Not Implemented\r\n"), out
    assert b"connection: close" in out
    assert upstream.requests == []


@pytest.mark.parametrize("te", [b"gzip, chunked", b"chunked, gzip", b"gzip"])
def test_response_transfer_codings_besides_chunked_get_502(te):
    up = RawHttpUpstream(lambda *a: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te
                         + b"\r\n\r\n5\r\nabcde\r\n0\r\n\r\n")
    try:
        with proxy_to(up) as p:
            out = exchange(p.listener_address("http"), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), out
            assert b"abcde" not in out
            assert p.stats()["cluster.c.upstream_rq_5xx"] == 1
    finally:
        up.close()


def test_expect_100_continue(proxy, upstream):
    s = socket.create_connection(proxy.listener_address("http"), timeout=5)
    s.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(b"abc")
    data = b""
    while b"POST /e 3" not in data:
        data += s.recv(1000)
    s.close()
    assert "expect" not in upstream.requests[-1][2]


def test_expectations_other_than_100_continue_are_forwarded(proxy, upstream):
    """Only 100-continue is the proxy's to answer (Envoy forwards any other Expect)."""
    out = exchange(proxy.listener_address("http"),
                   b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: something\r\n\r\nabc")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"POST /e 3")
    assert upstream.requests[-1][2]["expect"] == ["something"]


@pytest.mark.parametrize("nominated", [
    "host",                     # removing it would forward an HTTP/1.1 request without Host
    "X-Forwarded-For", "x-forwarded-host", "x-forwarded-proto",   # would hide the client
    ":authority",
    "a, b, c, d, e, f, g, h, i, j",                               # 10 elements (Envoy's limit)
])
def test_connection_nominating_protected_fields_is_400_and_nothing_forwarded(proxy, upstream, nominated):
    """Envoy's Utility::sanitizeConnectionHeader: these nominations refuse the request."""
    out = exchange(proxy.listener_address("http"),
                   b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: %s\r\n\r\n"
                   % nominated.encode())
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), out[:80]
    assert b"connection: close" in out.lower()
    assert upstream.raw == b""


def test_connection_nominations_below_the_limit_are_removed(proxy, upstream):
    out = exchange(proxy.listener_address("http"),
                   b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-a, b, c, d, e, f, g, close\r\n"
                   b"X-A: 1\r\nX-B: 2\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    headers = upstream.requests[-1][2]
    assert "x-a" not in headers and headers["x-b"] == ["2"] and headers["host"] == ["x"]


@pytest.mark.parametrize("how", ["shutdown", "close"])
def test_client_leaving_with_its_request_in_flight_releases_the_upstream(how):
    """Envoy does not half-close HTTP connections: a client that ends its side while its
    request waits for an answer is gone, and its upstream connection is closed at once
    (it used to be held until the upstream answered or the route timed out)."""
    got, closed = threading.Event(), threading.Event()

    def handler(method, path, headers, body):
        def hold(c):
            got.set()
            _until_eof(c)
            closed.set()
        return hold

    up = RawHttpUpstream(handler)
    try:
        with proxy_to(up) as p:
            s = socket.create_connection(p.listener_address("http"), timeout=5)
            s.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            assert got.wait(5)
            if how == "shutdown":
                s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == b"", "closed without an answer"
            s.close()
            assert closed.wait(5), "the upstream connection outlived its client"
            assert wait_for(lambda: p.stats()["http.ingress.downstream_cx_active"] == 0)
            st = p.stats()
            assert st["http.ingress.downstream_rq_rx_reset"] == 1
            assert st["http.ingress.downstream_rq_active"] == 0
    finally:
        up.close()


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_through_proxy(proxy):
    host, port = proxy.listener_address("http")
    out = subprocess.run(["curl", "-sS", "-i", f"http://{host}:{port}/curl?x=1"],
                         capture_output=True, timeout=10, check=True).stdout
    assert out.startswith(b"HTTP/1.1 200")
    assert out.endswith(b"GET /curl?x=1 0")


def test_large_download_spliced_and_intact():
    import hashlib
    payload = hashlib.sha256(b"seed").digest() * (32 * 1024 * 4)      # 16 MiB
    def handler(method, path, headers, body):
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
    up = RawHttpUpstream(handler)
    p = proxy_to(up)
    with p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=10)
        for _ in range(2):
            conn.request("GET", "/big")
            r = conn.getresponse()
            assert hashlib.sha256(r.read()).digest() == hashlib.sha256(payload).digest()
        st = p.stats()
        assert st["http.ingress.bytes_spliced"] > len(payload), st
        assert up.connections == 1
    up.close()


def test_websocket_upgrade_becomes_a_tunnel():
    def handler(method, path, headers, body):
        assert headers["upgrade"] == ["websocket"]
        assert headers["connection"] == ["upgrade"]

        def tunnel(c):
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d.upper())
        return tunnel
    up = RawHttpUpstream(handler)
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c", timeout=0.5))],
                   [Cluster("c", [Endpoint("127.0.0.1", up.port)])],
                   upgrade_configs=[UpgradeConfig("websocket")])
    with p:
        s = socket.create_connection(p.listener_address("http"), timeout=5)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1000)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower()
        time.sleep(0.7)             # longer than the route timeout: a tunnel is not timed out
        for msg in (b"hello", b"frames go both ways" * 1000):
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            assert got == msg.upper()
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""    # the tunnel closes when the client ends it
        s.close()
    up.close()


def test_host_rewrites(proxy, upstream):
    conn = http.client.HTTPConnection(*proxy.listener_address("http"), timeout=5)
    conn.request("GET", "/autohost")
    conn.getresponse().read()
    # Envoy 1.40: a STATIC endpoint without a hostname has no name to send, so the Host
    # stays (the conformance sweep checks endpoint.hostname and STRICT_DNS names)
    assert upstream.requests[-1][2]["host"] == [f"{conn.host}:{conn.port}"]
    assert "x-envoy-original-host" not in upstream.requests[-1][2]
    conn.request("GET", "/lithost")
    conn.getresponse().read()
    assert upstream.requests[-1][2]["host"] == ["lit.example"]
    assert upstream.requests[-1][2]["x-envoy-original-host"] == [f"{conn.host}:{conn.port}"]


def test_stop_closes_idle_keepalive_connections_at_once(upstream):
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])])
    p.start()
    conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
    conn.request("GET", "/")
    conn.getresponse().read()                   # the connection is now idle, kept alive
    t0 = time.monotonic()
    p.stop(drain_timeout=10)
    assert time.monotonic() - t0 < 5, "an idle keep-alive connection must not hold up the drain"
    assert conn.sock.recv(10) == b""            # closed by the proxy, cleanly


def test_upgrades_not_configured_are_refused_and_h2c_is_dropped():
    """Envoy's rule: only upgrade types in upgrade_configs are forwarded (403 otherwise);
    an h2c upgrade is ignored and the request proxied as plain HTTP/1.1."""
    up = RawHttpUpstream()
    p = proxy_to(up)
    with p:
        out = exchange(p.listener_address("http"),
                       b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 403 ")
        assert up.raw == b""
        out = exchange(p.listener_address("http"),
                       b"GET /h HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                       b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"GET /h 0")
        method, path, headers, _ = up.requests[-1]
        assert "upgrade" not in headers and "http2-settings" not in headers
    up.close()


def test_request_headers_timeout_is_408_and_counted():
    up = RawHttpUpstream()
    p = make_proxy([Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))],
                   [Cluster("c", [Endpoint("127.0.0.1", up.port)])], request_headers_timeout=0.3)
    with p:
        s = socket.create_connection(p.listener_address("http"), timeout=5)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")          # the head never ends
        t0 = time.monotonic()
        out = recv_until_eof(s)
        s.close()
        assert out.startswith(b"HTTP/1.1 408 ")
        assert out.endswith(b"\r\n\r\nrequest header timeout")      # Envoy's words
        assert 0.25 <= time.monotonic() - t0 < 4
        st = p.stats()
        assert st["http.ingress.downstream_rq_header_timeout"] == 1
        assert st["http.ingress.downstream_rq_timeout"] == 0
        assert up.raw == b""
    up.close()


# ---------------------------------------------------------------- long paths and rewrites
#
# A rewritten path or a Location up to ROUTE_TEXT_ON_STACK bytes is built on the worker's
# stack (core/http/router_filter.pxi); a longer one in a buffer sized to it. Either way the upstream
# gets the rewritten path and the client the Location: never the path as received (a
# rewrite may confine paths). Checked around that size and at the request head limit
# (max_request_headers_kb, 60 KiB by default, Envoy's).

ON_STACK = 8192
HEAD_LIMIT = 60 * 1024
LONG_HOST = "h"
# kind: (route, request path for a filler of n bytes, the result for that filler)
LONG_CASES = {
    "prefix_rewrite": (Route(RouteMatch(prefix="/api/"), route=RouteAction(cluster="c", prefix_rewrite="/internal/")),
                       lambda n: "/api/" + "a" * n, lambda n: "/internal/" + "a" * n),
    "regex_rewrite": (Route(RouteMatch(prefix="/rx/"), route=RouteAction(
                          cluster="c", regex_rewrite=RegexRewrite(r"^/rx/([a-z]+)", r"/in/\1"))),
                      lambda n: "/rx/" + "a" * n + "?q=1", lambda n: "/in/" + "a" * n + "?q=1"),
    "redirect prefix_rewrite": (Route(RouteMatch(prefix="/pr/"), redirect=RedirectAction(prefix_rewrite="/moved/")),
                                lambda n: "/pr/" + "a" * n, lambda n: f"http://{LONG_HOST}/moved/" + "a" * n),
    "redirect path_redirect": (Route(RouteMatch(prefix="/pp/"), redirect=RedirectAction(path_redirect="/fixed")),
                               lambda n: "/pp/?" + "q" * n, lambda n: f"http://{LONG_HOST}/fixed?" + "q" * n),
    "redirect regex_rewrite": (Route(RouteMatch(prefix="/rr/"), redirect=RedirectAction(
                                   regex_rewrite=RegexRewrite(r"^/rr/([a-z]+)", r"/r/\1"))),
                               lambda n: "/rr/" + "a" * n, lambda n: f"http://{LONG_HOST}/r/" + "a" * n),
}


@pytest.fixture(scope="module")
def long_path_proxy():
    up = RawHttpUpstream()
    p = make_proxy([case[0] for case in LONG_CASES.values()], [Cluster("c", [Endpoint("127.0.0.1", up.port)])])
    with p:
        yield p, up
    up.close()


def _long_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {LONG_HOST}\r\nConnection: close\r\n\r\n".encode()


def _filler_for(kind: str, size) -> int:
    """The filler length giving a result of `size` bytes, or ("limit", k): a request head of
    HEAD_LIMIT + k bytes."""
    _, path_of, result_of = LONG_CASES[kind]
    if isinstance(size, tuple):
        return HEAD_LIMIT + size[1] - len(_long_request(path_of(0)))
    return size - len(result_of(0))


@pytest.mark.parametrize("size", [ON_STACK - 1, ON_STACK, ON_STACK + 1, ("limit", 0)],
                         ids=["8KiB-1", "8KiB", "8KiB+1", "head-limit"])
@pytest.mark.parametrize("kind", list(LONG_CASES))
def test_long_paths_are_rewritten_and_redirected_whole(long_path_proxy, kind, size):
    p, up = long_path_proxy
    _, path_of, result_of = LONG_CASES[kind]
    n = _filler_for(kind, size)
    raw = _long_request(path_of(n))
    if size == ("limit", 0):
        assert len(raw) == HEAD_LIMIT
    else:
        assert len(result_of(n)) == size
    before = len(up.requests)
    out = exchange(p.listener_address("http"), raw, timeout=5)
    head, _, body = out.partition(b"\r\n\r\n")
    if kind.startswith("redirect"):
        assert head.startswith(b"HTTP/1.1 301 "), head[:80]
        location = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
                    if line.lower().startswith(b"location:")]
        assert location == [result_of(n).encode()]
        assert len(up.requests) == before
    else:
        assert head.startswith(b"HTTP/1.1 200 "), head[:80]
        assert body == b"GET " + result_of(n).encode() + b" 0"
        assert up.requests[-1][1] == result_of(n)
        assert up.requests[-1][2]["x-envoy-original-path"] == [path_of(n)]


def test_a_head_over_the_limit_is_431_whatever_the_route(long_path_proxy):
    p, up = long_path_proxy
    path_of = LONG_CASES["prefix_rewrite"][1]
    before = len(up.requests)
    out = exchange(p.listener_address("http"), _long_request(path_of(_filler_for("prefix_rewrite", ("limit", 1)))))
    assert out.startswith(b"HTTP/1.1 431 "), out[:80]
    assert len(up.requests) == before


_OOM_CHILD = r'''
import resource, sys, time
from fastproxy import Cluster, Endpoint, Listener, Proxy
from fastproxy.http import *
rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
    Route(RouteMatch(prefix="/blow/"), route=RouteAction(cluster="c", regex_rewrite=RegexRewrite("[a-z]", "x" * 8000))),
    Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))])])
p = Proxy([Listener("http", HttpConnectionManager("ingress", rc), port=0)],
          [Cluster("c", [Endpoint("127.0.0.1", int(sys.argv[1]))])], concurrency=1)
p.start()
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize:")][0].split()[1]) * 1024
# Room for ordinary work, far too little for the 400 MB the /blow/ rewrite asks for.
resource.setrlimit(resource.RLIMIT_AS, (vm + (160 << 20), resource.RLIM_INFINITY))
print(p.listener_address("http")[1], flush=True)
sys.stdin.read()
p.stop()
'''


def test_a_rewrite_that_cannot_get_its_memory_is_refused_not_forwarded(upstream):
    """The allocation of a long rewritten path fails (an address-space limit and a
    regex_rewrite that makes 50,000 path bytes 400 MB): 503, nothing reaches the upstream,
    and the proxy goes on serving."""
    import os
    import sys
    if os.environ.get("LD_PRELOAD", "").find("asan") >= 0:
        pytest.skip("AddressSanitizer reserves more address space than any limit leaves")
    child = subprocess.Popen([sys.executable, "-c", _OOM_CHILD, str(upstream.port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        out = exchange(("127.0.0.1", port), _long_request("/blow/" + "a" * 50000), timeout=10)
        assert out.startswith(b"HTTP/1.1 503 "), out[:80]
        assert out.endswith(b"out of memory"), out[-80:]
        assert upstream.requests == []
        r, body = http_request(("127.0.0.1", port), path="/after")
        assert (r.status, body) == (200, b"GET /after 0")
    finally:
        child.stdin.close()
        child.wait(timeout=10)
