"""HTTP/2 from the clients' side (issue 15, downstream): real clients (curl, nghttp, the `h2`
package for exact frames) speak HTTP/2 to fastproxy, which forwards to real HTTP/1.1
upstreams (tests/http_upstreams.py). Many streams on one connection, flow control per
stream, trailers, resets both ways, GOAWAY on drain, max_concurrent_streams, the codec
choice (prior knowledge, the client preface, ALPN h2 over TLS) and the http2 / http1 stats.
"""
from __future__ import annotations

import collections
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from fastproxy import Cluster, Endpoint, Listener, Proxy
from fastproxy.http.model import (AccessLog, Http2ProtocolOptions, HttpConnectionManager, Route,
                                  RouteAction, RouteConfiguration, RouteMatch, VirtualHost)
from fastproxy.http_filter import HttpFilter, PythonHttpFilter
from fastproxy.filters import FilterStatus

from conftest import envoy_yaml, http_listener, start_fastproxy_process, static_cluster, wait_for
from http_upstreams import RawHttpUpstream

CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")


# ---------------------------------------------------------------- helpers

def make_proxy(clusters, routes=None, listener_kw=None, **hcm_kw):
    routes = routes or [Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=routes)])
    hcm = HttpConnectionManager("ingress", rc, **hcm_kw)
    return Proxy([Listener("http", hcm, port=0, **(listener_kw or {}))], clusters, concurrency=1)


def cluster(up, name="c"):
    return Cluster(name, [Endpoint("127.0.0.1", up.port)])


class H2Client:
    """An HTTP/2 client on a plain socket, frame by frame (the `h2` package): the test says
    when to read, what to acknowledge, what to reset."""

    def __init__(self, addr, window=None, auto_ack=True):
        self.sock = socket.create_connection(addr, timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                          header_encoding="utf-8"))
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.auto_ack = auto_ack
        self.events = []
        self.responses = {}             # stream id -> {"headers", "data", "trailers", "ended", "reset"}
        self.goaways = []
        self.closed = False
        self.flush()

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def request(self, path, method="GET", body=None, headers=(), end=True, authority="example.test"):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority),
                *headers]
        self.conn.send_headers(sid, hdrs, end_stream=end and body is None)
        self.responses[sid] = {"headers": None, "data": bytearray(), "trailers": None, "ended": False,
                               "reset": None}
        if body is not None:
            self.send_body(sid, body, end=end)
        self.flush()
        return sid

    def send_body(self, sid, body, end=True):
        """Send as much of body as the windows allow now; the rest goes as they open."""
        self._pending = getattr(self, "_pending", {})
        self._pending[sid] = [memoryview(body), end]
        self._push()

    def _push(self):
        for sid, item in list(getattr(self, "_pending", {}).items()):
            data, end = item
            while len(data):
                room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if room <= 0:
                    break
                self.conn.send_data(sid, bytes(data[:room]))
                data = data[room:]
            item[0] = data
            if not len(data):
                if end:
                    self.conn.end_stream(sid)
                del self._pending[sid]
        self.flush()

    def pending_upload(self, sid):
        item = getattr(self, "_pending", {}).get(sid)
        return len(item[0]) if item else 0

    def pump(self, timeout=0.05):
        """Read once (up to timeout) and handle the events."""
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except OSError:
            d = b""
        if not d:
            self.closed = True
            return
        for e in self.conn.receive_data(d):
            self.events.append(e)
            r = self.responses.get(getattr(e, "stream_id", None))
            if isinstance(e, h2.events.ResponseReceived):
                r["headers"] = dict(e.headers)
            elif isinstance(e, h2.events.DataReceived):
                r["data"] += e.data
                if self.auto_ack is True or (callable(self.auto_ack) and self.auto_ack(e.stream_id)):
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                elif e.flow_controlled_length:
                    # the connection window only: the stream's stays closed
                    self.conn.increment_flow_control_window(e.flow_controlled_length)
            elif isinstance(e, h2.events.TrailersReceived):
                r["trailers"] = dict(e.headers)
            elif isinstance(e, h2.events.StreamEnded):
                r["ended"] = True
            elif isinstance(e, h2.events.StreamReset):
                if r is not None:
                    r["reset"] = e.error_code
            elif isinstance(e, h2.events.ConnectionTerminated):
                self.goaways.append((e.last_stream_id, e.error_code))
        try:
            self._push()
        except Exception:
            pass

    def until(self, pred, timeout=10.0, what="condition"):
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}")
            if self.closed:
                if pred():
                    return
                raise AssertionError(f"connection closed while waiting for {what}")
            self.pump()

    def done(self, sid):
        r = self.responses[sid]
        return r["ended"] or r["reset"] is not None

    def close(self):
        self.sock.close()


def body_upstream():
    """An HTTP/1.1 upstream: /big/<n> answers n bytes (a pattern), /echo answers the request
    body's length and a digest-like sample, anything else `METHOD path length`."""
    def handler(method, path, headers, body):
        if path.startswith("/big/"):
            n = int(path.split("/")[2])
            payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (n, payload)
        if path.startswith("/echo"):
            out = b"%d:%s" % (len(body), body[-16:])
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out)
        return RawHttpUpstream.default(method, path, headers, body)
    return RawHttpUpstream(handler)


class HoldUpstream:
    """An upstream that accepts, reads each request head, and answers only when told:
    `release(i)` answers the i-th connection's request (`METHOD path`), with `body` bytes;
    it never reads a request body (a stalled upstream for uploads)."""

    def __init__(self, read_body=False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.heads = []
        self.gates = []
        self.closed_conns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            gate = threading.Event()
            self.conns.append(c)
            self.gates.append(gate)
            threading.Thread(target=self._serve, args=(c, gate), daemon=True).start()

    def _serve(self, c, gate):
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            self.heads.append(head)
            poller = select.poll()      # (notice the proxy closing it, without reading)
            poller.register(c, select.POLLRDHUP)
            while not gate.is_set():
                if poller.poll(20):
                    return
            line = " ".join(head.split("\r\n", 1)[0].split(" ")[:2]).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line))
            # then report the connection's end
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self.closed_conns += 1
            c.close()

    def release_all(self):
        for g in self.gates:
            g.set()

    def close(self):
        self.release_all()
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def up():
    u = body_upstream()
    yield u
    u.close()


@pytest.fixture
def hold():
    u = HoldUpstream()
    yield u
    u.close()


# ---------------------------------------------------------------- real clients, codec choice

@pytest.mark.skipif(not CURL, reason="curl not installed")
@pytest.mark.parametrize("codec_type", ["AUTO", "HTTP2"])
def test_curl_prior_knowledge_through_to_an_http1_upstream(up, codec_type, tmp_path):
    """curl --http2-prior-knowledge (h2c): GET and POST become HTTP/1.1 requests upstream
    (pseudo-headers -> request line and Host), the answers come back as HTTP/2; counted as
    HTTP/2 requests and connections, logged with %PROTOCOL% HTTP/2."""
    log = tmp_path / "access.log"
    with make_proxy([cluster(up)], codec_type=codec_type,
                    access_log=[AccessLog(str(log), "%PROTOCOL% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%\n")]) as p:
        h, port = p.listener_address("http")
        r = subprocess.run([CURL, "-s", "--http2-prior-knowledge", f"http://{h}:{port}/get?x=1"],
                           capture_output=True, timeout=10)
        assert r.returncode == 0 and r.stdout == b"GET /get?x=1 0"
        r = subprocess.run([CURL, "-s", "--http2-prior-knowledge", "-d", "hello", "-w", "%{http_version}",
                            f"http://{h}:{port}/post"], capture_output=True, timeout=10)
        assert r.returncode == 0 and r.stdout == b"POST /post 52"
        st = p.stats()
        assert st["http.ingress.downstream_cx_http2_total"] == 2
        assert st["http.ingress.downstream_rq_http2_total"] == 2
        assert st.get("http.ingress.downstream_rq_http1_total", 0) == 0
        assert st.get("http.ingress.downstream_cx_http1_total", 0) == 0
        wait_for(lambda: st and p.stats()["http.ingress.downstream_cx_http2_active"] == 0)
    method, path, headers, body = up.requests[1]
    assert (method, path, body) == ("POST", "/post", b"hello")
    assert headers["host"] == [f"{h}:{port}"]
    assert not any(k.startswith(":") for k in headers)
    wait_for(lambda: log.exists() and log.read_text().count("\n") == 2)
    assert log.read_text().splitlines() == ["HTTP/2 GET /get?x=1 200", "HTTP/2 POST /post 200"]


@pytest.mark.skipif(not CURL, reason="curl not installed")
def test_codec_type_http1_and_auto_keep_serving_http1(up):
    """AUTO serves HTTP/1.1 to a client that does not start with the preface; HTTP1 never
    speaks HTTP/2 (a preface is a bad HTTP/1.1 request there)."""
    with make_proxy([cluster(up)]) as p:
        h, port = p.listener_address("http")
        r = subprocess.run([CURL, "-s", f"http://{h}:{port}/one"], capture_output=True, timeout=10)
        assert r.stdout == b"GET /one 0"
        st = p.stats()
        assert st["http.ingress.downstream_rq_http1_total"] == 1
        assert st.get("http.ingress.downstream_rq_http2_total", 0) == 0
    with make_proxy([cluster(up)], codec_type="HTTP1") as p:
        h, port = p.listener_address("http")
        r = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--http2-prior-knowledge",
                            f"http://{h}:{port}/two"], capture_output=True, timeout=10)
        assert r.stdout != b"200"
        assert p.stats().get("http.ingress.downstream_rq_http2_total", 0) == 0


def test_preface_in_pieces_still_selects_http2(up):
    """AUTO on plaintext: a client preface that arrives a few bytes at a time is still
    recognized (the choice waits until the bytes so far could not be the preface)."""
    with make_proxy([cluster(up)]) as p:
        addr = p.listener_address("http")
        sock = socket.create_connection(addr, timeout=5)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", "/slow-preface"), (":scheme", "http"),
                              (":authority", "x")], end_stream=True)
        data = conn.data_to_send()
        for i in range(0, 24, 5):
            sock.sendall(data[i:min(i + 5, 24)])
            time.sleep(0.02)
        sock.sendall(data[24:])
        got = b""
        sock.settimeout(5)
        events = []
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            d = sock.recv(65536)
            assert d, "closed"
            events += conn.receive_data(d)
        body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert body == b"GET /slow-preface 0"
        sock.close()


# ---------------------------------------------------------------- many streams, flow control

def test_many_concurrent_streams_on_one_connection(up):
    """200 requests at once on one HTTP/2 connection: every one answered on its own
    stream, over one downstream connection."""
    with make_proxy([cluster(up)]) as p:
        c = H2Client(p.listener_address("http"))
        sids = [c.request(f"/s/{i}") for i in range(200)]
        c.until(lambda: all(c.done(s) for s in sids), what="200 responses")
        for i, s in enumerate(sids):
            r = c.responses[s]
            assert r["headers"][":status"] == "200" and bytes(r["data"]) == f"GET /s/{i} 0".encode()
        st = p.stats()
        assert st["http.ingress.downstream_cx_total"] == 1
        assert st["http.ingress.downstream_rq_http2_total"] == 200
        assert st["http.ingress.downstream_rq_2xx"] == 200
        c.close()


def _write_syscalls(pid):
    """The write system calls (write, writev: /proc's `syscw`) the threads of process
    ``pid`` have made so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/io") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("syscw:"))
        except FileNotFoundError:       # (a thread that ended meanwhile)
            pass
    return total


def test_responses_arriving_together_leave_in_few_writes(tmp_path):
    """64 streams on one connection whose upstream responses are all in the proxy's upstream
    sockets when it next wakes (the proxy process is stopped, SIGSTOP, while the upstream
    sends them, then continued): its worker writes what that loop turn brought for the
    connection's streams together (hconn_pump_later), not one write per upstream response.
    Counted as the proxy's write system calls from then until the client has every response:
    one write per response gives 64; a batch per loop turn 1 (with a margin for a turn that
    wakes before every socket is readable)."""
    n = 64
    lock = threading.Lock()
    held = []
    go = threading.Event()
    all_sent = threading.Event()

    def together(method, path, headers, body):
        payload = path.encode()
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)

        def send(sock):
            with lock:
                held.append((sock, resp))
                last = len(held) == n
            if last and go.wait(10):
                for s, r in held:
                    s.sendall(r)
                all_sent.set()
            all_sent.wait(10)           # (each connection closes after its answer)
        return send

    up = RawHttpUpstream(together)
    proc = None
    try:
        proc, _, addr = start_fastproxy_process(envoy_yaml(
            [http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}])],
            [static_cluster("c", [up.port])]), tmp_path)
        c = H2Client(addr)
        sids = [c.request(f"/t/{i}") for i in range(n)]
        wait_for(lambda: len(held) == n, timeout=10, msg="every request at the upstream")
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T",
                 timeout=10, msg="the proxy stopped")
        before = _write_syscalls(proc.pid)
        go.set()
        assert all_sent.wait(10)
        proc.send_signal(signal.SIGCONT)
        c.until(lambda: all(c.done(s) for s in sids), what="64 responses")
        writes = _write_syscalls(proc.pid) - before
        for i, s in enumerate(sids):
            assert bytes(c.responses[s]["data"]) == f"/t/{i}".encode()
        assert writes <= 4, f"{writes} writes for {n} responses"
        c.close()
    finally:
        go.set()
        if proc is not None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        up.close()


@pytest.mark.skipif(not NGHTTP, reason="nghttp not installed")
def test_nghttp_many_streams(up):
    """nghttp (nghttp2's client) with several URIs multiplexed on one connection."""
    with make_proxy([cluster(up)]) as p:
        h, port = p.listener_address("http")
        urls = [f"http://{h}:{port}/n/{i}" for i in range(20)]
        r = subprocess.run([NGHTTP, "-n", "-s", *urls], capture_output=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert p.stats()["http.ingress.downstream_rq_2xx"] == 20
        assert p.stats()["http.ingress.downstream_cx_total"] == 1


def test_large_bodies_both_ways(up):
    """A 6 MiB upload and a 6 MiB download on the same connection, through windows far
    smaller than the bodies (the client's 64 KiB stream window; the proxy's own)."""
    n = 6 << 20
    upload = os.urandom(n)
    with make_proxy([cluster(up)],
                    http2_protocol_options=Http2ProtocolOptions(initial_stream_window_size=65535,
                                                                initial_connection_window_size=65535)) as p:
        c = H2Client(p.listener_address("http"), window=65535)
        s_up = c.request("/echo", method="POST", body=upload)
        s_down = c.request(f"/big/{n}")
        c.until(lambda: c.done(s_up) and c.done(s_down), timeout=30, what="both transfers")
        assert bytes(c.responses[s_up]["data"]) == b"%d:%s" % (n, upload[-16:])
        down = bytes(c.responses[s_down]["data"])
        assert len(down) == n and down[:512] == bytes(range(256)) * 2
        c.close()
    assert [r[3] for r in up.requests if r[1] == "/echo"] == [upload]


def test_a_slow_reader_stalls_only_its_own_stream(up):
    """Two downloads on one connection; the client never opens stream A's window again
    (it acknowledges A's bytes on the connection only). B completes; A stops at its
    window and is not finished, and nothing of B waited for A."""
    n = 4 << 20
    with make_proxy([cluster(up)]) as p:
        slow = set()
        c = H2Client(p.listener_address("http"), window=65535,
                     auto_ack=lambda sid: sid not in slow)
        a = c.request(f"/big/{n}")
        slow.add(a)
        b = c.request(f"/big/{n}")
        c.until(lambda: c.done(b), timeout=20, what="stream B")
        assert len(c.responses[b]["data"]) == n
        for _ in range(20):
            c.pump()
        assert not c.done(a)
        assert len(c.responses[a]["data"]) == 65535       # its window, nothing more
        assert p.stats()["http2.pending_send_bytes"] > 0    # A's response waits in the proxy
        # A's window opens: A completes too
        c.conn.acknowledge_received_data(65535, a)
        slow.clear()
        c.flush()
        c.until(lambda: c.done(a), timeout=20, what="stream A")
        assert len(c.responses[a]["data"]) == n
        c.close()


def test_an_upload_to_a_stalled_upstream_stalls_only_its_stream(up, hold):
    """Stream A uploads to an upstream that never reads: the proxy stops opening A's
    window (its request waits in bounded buffers); stream B on the same connection, to
    another upstream, uploads and completes meanwhile."""
    routes = [Route(RouteMatch(prefix="/stall"), route=RouteAction(cluster="stall")),
              Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    big = os.urandom(64 << 20)
    with make_proxy([cluster(up), cluster(hold, "stall")], routes=routes,
                    http2_protocol_options=Http2ProtocolOptions(initial_stream_window_size=1 << 20)) as p:
        c = H2Client(p.listener_address("http"))
        a = c.request("/stall", method="POST", body=big)
        wait_for(lambda: hold.heads, msg="the stalled upstream got A's head")
        small = os.urandom(3 << 20)
        b = c.request("/echo", method="POST", body=small)
        c.until(lambda: c.done(b), timeout=20, what="stream B")
        assert bytes(c.responses[b]["data"]) == b"%d:%s" % (len(small), small[-16:])
        for _ in range(20):
            c.pump()
        # A is held back by flow control: most of its body is still with the client
        assert c.pending_upload(a) > len(big) - (16 << 20)
        assert not c.done(a)
        c.close()


# ---------------------------------------------------------------- trailers, filters

def test_response_trailers_and_request_trailers(tmp_path):
    """An HTTP/1.1 upstream's chunked trailers become an HTTP/2 trailer block; the
    client's HTTP/2 request trailers reach the upstream as chunked trailers."""
    def handler(method, path, headers, body):
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
                b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx-trailer: yes\r\n\r\n")
    up = RawHttpUpstream(handler)
    raw_seen = []
    try:
        with make_proxy([cluster(up)]) as p:
            c = H2Client(p.listener_address("http"))
            sid = c.request("/t", method="POST", body=b"abc", end=False, headers=[("te", "trailers")])
            c.conn.send_headers(sid, [("x-req-trailer", "42")], end_stream=True)
            c.flush()
            c.until(lambda: c.done(sid), what="the response")
            r = c.responses[sid]
            assert bytes(r["data"]) == b"hello"
            assert r["trailers"] == {"grpc-status": "0", "x-trailer": "yes"}
            assert p.stats()["http2.trailers"] == 1
            c.close()
        raw = bytes(up.raw)
        assert b"x-req-trailer: 42" in raw.lower()
        assert up.requests[0][2]["te"] == ["trailers"]          # forwarded, as Envoy does
        assert up.requests[0][3] == b"abc"
    finally:
        up.close()


class _SeeRequest(HttpFilter):
    seen = []

    def decode_headers(self, headers, end_stream):
        _SeeRequest.seen.append((headers[":method"], headers[":path"], headers[":authority"],
                                 headers.get("cookie"), end_stream,
                                 self.callbacks.stream_info.protocol))
        headers["x-filter"] = "saw-it"
        return FilterStatus.CONTINUE

    def encode_headers(self, headers, end_stream):
        headers["x-filtered-response"] = "1"
        return FilterStatus.CONTINUE


def test_python_filter_sees_the_http2_request_as_an_http1_one(up):
    """A Python filter sees :method/:path/:authority, the cookies joined as one field (as
    an HTTP/1.1 client sends them), and its header changes go both ways."""
    _SeeRequest.seen = []
    with make_proxy([cluster(up)], http_filters=[PythonHttpFilter("see", _SeeRequest)]) as p:
        c = H2Client(p.listener_address("http"))
        sid = c.request("/f?q=1", headers=[("cookie", "a=1"), ("cookie", "b=2")])
        c.until(lambda: c.done(sid))
        assert c.responses[sid]["headers"]["x-filtered-response"] == "1"
        c.close()
        conn = __import__("http.client").client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/f?q=1", headers={"Host": "example.test", "Cookie": "a=1; b=2"})
        assert conn.getresponse().read() == b"GET /f?q=1 0"
        conn.close()
    assert _SeeRequest.seen[0] == ("GET", "/f?q=1", "example.test", "a=1; b=2", True, "HTTP/2")
    assert _SeeRequest.seen[1] == ("GET", "/f?q=1", "example.test", "a=1; b=2", True, "HTTP/1.1")
    h2_req, h1_req = up.requests[0][2], up.requests[1][2]
    assert h2_req["x-filter"] == ["saw-it"] and h2_req["cookie"] == ["a=1; b=2"]
    assert h2_req["cookie"] == h1_req["cookie"] and h2_req["host"] == h1_req["host"]


# ---------------------------------------------------------------- resets

def test_client_reset_cancels_the_upstream_request_and_logs_dr(hold, tmp_path):
    """RST_STREAM from the client: the stream's upstream request is abandoned (its
    connection closed), access-logged with DR; another stream on the connection goes on."""
    log = tmp_path / "access.log"
    with make_proxy([cluster(hold)], access_log=[AccessLog(str(log), "%REQ(:PATH)% %RESPONSE_FLAGS% %PROTOCOL%\n")]) as p:
        c = H2Client(p.listener_address("http"))
        a = c.request("/a")
        b = c.request("/b")
        wait_for(lambda: len(hold.heads) == 2)
        c.conn.reset_stream(a, error_code=8)        # CANCEL
        c.flush()
        wait_for(lambda: hold.closed_conns >= 1, msg="the upstream connection of A closed")
        hold.release_all()
        c.until(lambda: c.done(b))
        assert bytes(c.responses[b]["data"]) == b"GET /b"
        st = p.stats()
        assert st["http2.rx_reset"] == 1
        assert st["http.ingress.downstream_rq_rx_reset"] == 1
        c.close()
    wait_for(lambda: log.exists() and log.read_text().count("\n") == 2)
    assert sorted(log.read_text().splitlines()) == ["/a DR HTTP/2", "/b - HTTP/2"]


def test_upstream_reset_mid_response_resets_only_that_stream(tmp_path):
    """The upstream closes inside a response body: the client gets RST_STREAM for that
    stream (the response had started: nothing else says it is incomplete), logged UC; the
    connection and its other streams go on."""
    def handler(method, path, headers, body):
        if path == "/cut":
            def cut(c):
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                time.sleep(0.1)
                c.close()
            return cut
        return RawHttpUpstream.default(method, path, headers, body)
    up = RawHttpUpstream(handler)
    log = tmp_path / "access.log"
    try:
        with make_proxy([cluster(up)], access_log=[AccessLog(str(log), "%REQ(:PATH)% %RESPONSE_FLAGS%\n")]) as p:
            c = H2Client(p.listener_address("http"))
            a = c.request("/cut")
            c.until(lambda: c.done(a))
            assert c.responses[a]["reset"] == 2 and not c.responses[a]["ended"]   # INTERNAL_ERROR, as Envoy
            assert bytes(c.responses[a]["data"]) == b"partial"
            b = c.request("/after")
            c.until(lambda: c.done(b))
            assert bytes(c.responses[b]["data"]) == b"GET /after 0"
            assert p.stats()["http2.tx_reset"] == 1
            assert p.stats()["http.ingress.downstream_cx_total"] == 1
            c.close()
        wait_for(lambda: log.exists() and log.read_text().count("\n") == 2)
        assert log.read_text().splitlines()[0] == "/cut UC"
    finally:
        up.close()


def test_max_concurrent_streams_refuses_the_extra_stream(hold):
    """max_concurrent_streams 2. A client that opens a third stream before it has our
    SETTINGS gets it refused (RST_STREAM REFUSED_STREAM, http2.stream_refused_errors) and
    the two others answered; one that does so after acknowledging them commits a
    connection error (GOAWAY PROTOCOL_ERROR; Envoy 1.40 closes such a connection too)."""
    with make_proxy([cluster(hold)], http2_protocol_options=Http2ProtocolOptions(max_concurrent_streams=2)) as p:
        c = H2Client(p.listener_address("http"))
        a, b, x = c.request("/a"), c.request("/b"), c.request("/x")   # before any SETTINGS came
        c.until(lambda: c.responses[x]["reset"] is not None, what="the refusal")
        assert c.responses[x]["reset"] == 7                     # REFUSED_STREAM
        wait_for(lambda: len(hold.heads) == 2)
        hold.release_all()
        c.until(lambda: c.done(a) and c.done(b))
        assert bytes(c.responses[a]["data"]) == b"GET /a"
        assert p.stats()["http2.stream_refused_errors"] == 1
        assert sorted(h.split("\r\n")[0] for h in hold.heads) == ["GET /a HTTP/1.1", "GET /b HTTP/1.1"]
        c.close()
    hold.heads.clear()
    with make_proxy([cluster(hold)], http2_protocol_options=Http2ProtocolOptions(max_concurrent_streams=2)) as p:
        c = H2Client(p.listener_address("http"))
        c.until(lambda: c.conn.remote_settings.max_concurrent_streams == 2, what="the SETTINGS")
        for _ in range(5):
            c.pump()                    # (our ACK is out)
        a, b = c.request("/a"), c.request("/b")
        wait_for(lambda: len(hold.heads) == 2)
        # (the h2 package would refuse to open it: make it believe the limit is higher)
        c.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = \
            collections.deque([10])
        c.request("/x")
        c.until(lambda: c.goaways, what="the GOAWAY")
        assert c.goaways[0][1] == 1                             # PROTOCOL_ERROR
        assert len(hold.heads) == 2
        c.close()


def test_oversized_header_list_resets_the_stream(up):
    """A request head over max_request_headers_kb, or with more fields than
    max_headers_count (pseudo-headers not counted): that stream is reset (RST_STREAM
    INTERNAL_ERROR, Envoy's http2.header_list_size_too_large / header_overflow), the
    connection serves the next one; exactly max_headers_count fields are served."""
    with make_proxy([cluster(up)], max_request_headers_kb=2, max_headers_count=20) as p:
        c = H2Client(p.listener_address("http"))
        a = c.request("/big-head", headers=[("x-big", "v" * 4000)])
        c.until(lambda: c.done(a))
        assert c.responses[a]["reset"] == 2 and c.responses[a]["headers"] is None   # as Envoy
        n = c.request("/many", headers=[(f"x-h{k}", "v") for k in range(21)])
        c.until(lambda: c.done(n))
        assert c.responses[n]["reset"] == 2
        b = c.request("/fine", headers=[(f"x-h{k}", "v") for k in range(20)])
        c.until(lambda: c.done(b))
        assert bytes(c.responses[b]["data"]) == b"GET /fine 0"
        st = p.stats()
        assert (st["http2.header_list_size_too_large"], st["http2.header_overflow"]) == (1, 1)
        c.close()
    assert [r[1] for r in up.requests] == ["/fine"]


# ---------------------------------------------------------------- drain, stats

class RawFrames:
    """The frames a socket receives, parsed one by one (hyperframe): for what the `h2`
    package will not take (it ends a connection at the first GOAWAY)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.frames = []
        self.eof = False

    def read(self, timeout=0.05):
        from hyperframe.frame import Frame
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(1 << 16)
            if not d:
                self.eof = True
            self.buf += d
        except socket.timeout:
            pass
        except ConnectionResetError:
            self.eof = True
        while len(self.buf) >= 9:
            f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                break
            f.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            self.frames.append(f)

    def until(self, pred, timeout=10.0, what="condition"):
        end = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            assert not self.eof or pred(), f"closed while waiting for {what}"
            self.read()

    def of(self, name):
        return [f for f in self.frames if type(f).__name__ == name]


def test_goaway_in_two_steps_on_drain(hold):
    """Stopping the proxy drains HTTP/2 as Envoy does: GOAWAY with last-stream-id 2^31-1
    first, then after drain_timeout the final GOAWAY with the last stream processed; the
    stream in flight completes, then the connection closes."""
    p = make_proxy([cluster(hold)], drain_timeout=0.3)
    p.start()
    try:
        c = H2Client(p.listener_address("http"))
        a = c.request("/inflight")
        wait_for(lambda: hold.heads)
        raw = RawFrames(c.sock)
        t0 = time.monotonic()
        stopper = threading.Thread(target=p.stop, kwargs={"drain_timeout": 10})
        stopper.start()
        raw.until(lambda: len(raw.of("GoAwayFrame")) >= 1, what="the first GOAWAY")
        g = raw.of("GoAwayFrame")[0]
        assert (g.last_stream_id, g.error_code) == (2 ** 31 - 1, 0)
        raw.until(lambda: len(raw.of("GoAwayFrame")) >= 2, what="the final GOAWAY")
        g = raw.of("GoAwayFrame")[1]
        assert (g.last_stream_id, g.error_code) == (a, 0)
        assert time.monotonic() - t0 >= 0.25             # drain_timeout between the two
        assert not raw.eof
        hold.release_all()
        raw.until(lambda: raw.eof, what="the close after the stream")
        data = b"".join(f.data for f in raw.of("DataFrame") if f.stream_id == a)
        assert data == b"GET /inflight"
        assert "END_STREAM" in raw.of("DataFrame")[-1].flags
        stopper.join(10)
        assert not stopper.is_alive()
        assert p.stats()["http2.goaway_sent"] == 2
        c.close()
    finally:
        p.stop(0.5)


def test_http2_stats_block_and_protocol_counters(up):
    """http2.* is the server-wide block (Envoy's names); HTTP/1.1 and HTTP/2 clients of the
    same connection manager are told apart in downstream_cx/rq_http1/http2_*."""
    with make_proxy([cluster(up)]) as p:
        c = H2Client(p.listener_address("http"))
        sids = [c.request(f"/x{i}") for i in range(3)]
        c.until(lambda: all(c.done(s) for s in sids))
        st = p.stats()
        assert st["http2.streams_active"] == 0
        assert st["http2.pending_send_bytes"] == 0
        assert st["http.ingress.downstream_cx_http2_active"] == 1
        conn = __import__("http.client").client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/h1")
        assert conn.getresponse().read() == b"GET /h1 0"
        st = p.stats()
        assert st["http.ingress.downstream_rq_http2_total"] == 3
        assert st["http.ingress.downstream_rq_http1_total"] == 1
        assert st["http.ingress.downstream_cx_http1_active"] == 1
        for name in ("goaway_sent", "header_overflow", "rx_reset", "tx_reset", "trailers",
                     "inbound_empty_frames_flood", "outbound_flood", "keepalive_timeout"):
            assert f"http2.{name}" in st
        conn.close()
        c.close()
        wait_for(lambda: p.stats()["http.ingress.downstream_cx_http2_active"] == 0)


# ---------------------------------------------------------------- TLS: ALPN

@pytest.mark.skipif(not CURL, reason="curl not installed")
def test_alpn_h2_over_tls_and_http11_on_the_same_listener(up, tmp_path):
    """AUTO on a TLS listener offering h2 and http/1.1: curl --http2 negotiates h2 (ALPN)
    and speaks HTTP/2; curl --http1.1 gets HTTP/1.1 on the same listener."""
    import trustme
    from fastproxy import model_tls as t
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    cert, key, ca_file = tmp_path / "c.pem", tmp_path / "c.key", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    tls = t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(
        tls_certificates=(t.TlsCertificate(t.DataSource(filename=str(cert)), t.DataSource(filename=str(key))),),
        alpn_protocols=("h2", "http/1.1")))
    with make_proxy([cluster(up)], listener_kw={"tls": tls}) as p:
        _, port = p.listener_address("http")
        url = f"https://localhost:{port}/tls"
        common = [CURL, "-s", "--cacert", str(ca_file), "--resolve", f"localhost:{port}:127.0.0.1",
                  "-w", " %{http_version}"]
        r = subprocess.run([*common, "--http2", url], capture_output=True, timeout=10)
        assert r.stdout == b"GET /tls 0 2", r.stderr
        r = subprocess.run([*common, "--http1.1", url], capture_output=True, timeout=10)
        assert r.stdout == b"GET /tls 0 1.1", r.stderr
        st = p.stats()
        assert st["http.ingress.downstream_rq_http2_total"] == 1
        assert st["http.ingress.downstream_rq_http1_total"] == 1
    assert up.requests[0][2]["x-forwarded-proto"] == ["https"]


# ---------------------------------------------------------------- limits (ABUSE's suite has the rest)

def _raw_h2(addr):
    """A socket after the client preface and an empty SETTINGS, and an hpack encoder."""
    import hpack
    from hyperframe.frame import SettingsFrame
    s = socket.create_connection(addr, timeout=5)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
    return s, hpack.Encoder()


def _req_headers(enc, sid, path="/", extra=(), end=True):
    from hyperframe.frame import HeadersFrame
    f = HeadersFrame(sid)
    f.data = enc.encode([(":method", "GET"), (":path", path), (":scheme", "http"),
                         (":authority", "x"), *extra])
    f.flags.add("END_HEADERS")
    if end:
        f.flags.add("END_STREAM")
    return f.serialize()


def test_empty_data_frame_flood_ends_the_connection(up):
    """DATA frames without payload nor END_STREAM, more in a row than
    max_consecutive_inbound_frames_with_empty_payload: GOAWAY ENHANCE_YOUR_CALM, counted."""
    from hyperframe.frame import DataFrame
    with make_proxy([cluster(up)]) as p:
        s, enc = _raw_h2(p.listener_address("http"))
        frames = _req_headers(enc, 1, "/up", end=False) + b"".join(DataFrame(1).serialize() for _ in range(5))
        s.sendall(frames)
        raw = RawFrames(s)
        raw.until(lambda: raw.of("GoAwayFrame"), what="the GOAWAY")
        assert raw.of("GoAwayFrame")[0].error_code == 11            # ENHANCE_YOUR_CALM
        raw.until(lambda: raw.eof, what="the close")
        assert p.stats()["http2.inbound_empty_frames_flood"] == 1
        s.close()


def test_ping_flood_from_a_client_that_does_not_read_is_bounded(up):
    """PINGs from a client that reads nothing: the ACKs nghttp2 queues are bounded by
    max_outbound_control_frames; past it the connection ends (outbound_control_flood)."""
    from hyperframe.frame import PingFrame
    with make_proxy([cluster(up)], http2_protocol_options=Http2ProtocolOptions(max_outbound_control_frames=100)) as p:
        s, _ = _raw_h2(p.listener_address("http"))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        blob = ping.serialize() * 2000
        try:
            for _ in range(50):
                s.sendall(blob)
        except OSError:
            pass                        # (the proxy closed on us)
        wait_for(lambda: p.stats()["http2.outbound_control_flood"] + p.stats()["http2.outbound_flood"] >= 1,
                 msg="the flood counted")
        wait_for(lambda: p.stats()["http.ingress.downstream_cx_active"] == 0, timeout=5,
                 msg="the connection closed")
        s.close()


@pytest.mark.parametrize("override", [False, True])
def test_invalid_http_message_ends_the_connection_unless_overridden(up, override):
    """A request with an uppercase field name (malformed in HTTP/2): Envoy's default ends
    the connection (GOAWAY PROTOCOL_ERROR); override_stream_error_on_invalid_http_message
    resets only that stream and the next one is served. http2.rx_messaging_error both ways."""
    with make_proxy([cluster(up)], http2_protocol_options=Http2ProtocolOptions(
            override_stream_error_on_invalid_http_message=override)) as p:
        s, enc = _raw_h2(p.listener_address("http"))
        s.sendall(_req_headers(enc, 1, "/bad", extra=[("X-Upper", "1")]))
        raw = RawFrames(s)
        if override:
            raw.until(lambda: raw.of("RstStreamFrame"), what="the reset")
            assert raw.of("RstStreamFrame")[0].stream_id == 1
            s.sendall(_req_headers(enc, 3, "/good"))
            raw.until(lambda: any("END_STREAM" in f.flags for f in raw.of("DataFrame")), what="the answer")
            assert b"".join(f.data for f in raw.of("DataFrame")) == b"GET /good 0"
            assert not raw.of("GoAwayFrame")
        else:
            raw.until(lambda: raw.of("GoAwayFrame"), what="the GOAWAY")
            assert raw.of("GoAwayFrame")[0].error_code == 1         # PROTOCOL_ERROR
            raw.until(lambda: raw.eof, what="the close")
        assert p.stats()["http2.rx_messaging_error"] == 1
        s.close()
    assert [r[1] for r in up.requests] == (["/good"] if override else [])


def test_keepalive_ping_timeout_closes_a_silent_connection(up):
    """connection_keepalive: a PING every interval; no ACK within the timeout closes the
    connection (http2.keepalive_timeout)."""
    from fastproxy.http.model import KeepaliveSettings
    with make_proxy([cluster(up)], http2_protocol_options=Http2ProtocolOptions(
            connection_keepalive=KeepaliveSettings(interval=0.1, timeout=0.2))) as p:
        s, _ = _raw_h2(p.listener_address("http"))      # never answers a PING
        raw = RawFrames(s)
        raw.until(lambda: raw.of("PingFrame"), what="a PING")
        raw.until(lambda: raw.eof, timeout=5, what="the close")
        assert p.stats()["http2.keepalive_timeout"] == 1
        s.close()
        # a client that answers stays
        c = H2Client(p.listener_address("http"))
        for _ in range(12):
            c.pump()
        assert not c.closed
        sid = c.request("/alive")
        c.until(lambda: c.done(sid))
        assert bytes(c.responses[sid]["data"]) == b"GET /alive 0"
        c.close()


class _UpperBoth(HttpFilter):
    """Buffers and rewrites both bodies; an async hook in between."""

    def decode_data(self, data, end_stream):
        if not end_stream:
            return FilterStatus.STOP_AND_BUFFER
        data.replace(bytes(data).upper() + b"!")
        return FilterStatus.CONTINUE

    async def encode_headers(self, headers, end_stream):
        import asyncio
        await asyncio.sleep(0.01)
        headers["x-async"] = "yes"
        return FilterStatus.CONTINUE

    def encode_data(self, data, end_stream):
        if not end_stream:
            return FilterStatus.STOP_AND_BUFFER
        data.replace(bytes(data).upper())
        self.callbacks.add_encoded_data(b"<end>")
        return FilterStatus.CONTINUE


class _Deny(HttpFilter):
    def decode_headers(self, headers, end_stream):
        if headers[":path"].startswith("/deny"):
            self.callbacks.send_local_reply(403, b"denied by filter")
            return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE


def test_body_filters_async_hooks_and_local_replies_on_concurrent_streams(up):
    """Filters that buffer and rewrite both bodies, an async hook, and a filter's local
    reply, on 20 streams at once on one connection: each stream gets what an HTTP/1.1
    request gets through the same chain (checked against one)."""
    with make_proxy([cluster(up)], http_filters=[PythonHttpFilter("deny", _Deny),
                                                 PythonHttpFilter("upper", _UpperBoth)]) as p:
        c = H2Client(p.listener_address("http"))
        bodies = {}
        for i in range(10):
            b = os.urandom(50_000 + i).hex().encode()
            bodies[c.request(f"/echo/{i}", method="POST", body=b)] = b
        denied = [c.request(f"/deny/{i}") for i in range(10)]
        c.until(lambda: all(c.done(s) for s in [*bodies, *denied]), timeout=20)
        for sid, b in bodies.items():
            r = c.responses[sid]
            assert r["headers"][":status"] == "200" and r["headers"]["x-async"] == "yes"
            assert bytes(r["data"]) == (b"%d:%s" % (len(b) + 1, (b.upper() + b"!")[-16:])).upper() + b"<end>"
            assert r["headers"]["content-length"] == str(len(r["data"]))
        for sid in denied:
            r = c.responses[sid]
            assert r["headers"][":status"] == "403" and bytes(r["data"]).upper() == b"DENIED BY FILTER<END>"
        c.close()
        conn = __import__("http.client").client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/deny/h1")
        r = conn.getresponse()
        assert (r.status, r.read().upper()) == (403, b"DENIED BY FILTER<END>")
        conn.close()
    assert sorted(len(r[3]) for r in up.requests) == sorted(len(b) + 1 for b in bodies.values())


def test_idle_timeout_drains_with_goaway(up):
    """idle_timeout on an HTTP/2 connection without streams: the two GOAWAYs (drain_timeout
    apart), then the close."""
    with make_proxy([cluster(up)], idle_timeout=0.2, drain_timeout=0.1) as p:
        c = H2Client(p.listener_address("http"))
        sid = c.request("/before-idle")
        c.until(lambda: c.done(sid))
        raw = RawFrames(c.sock)
        raw.until(lambda: raw.eof, timeout=5, what="the close")
        assert [(g.last_stream_id, g.error_code) for g in raw.of("GoAwayFrame")] == [(2 ** 31 - 1, 0), (sid, 0)]
        c.close()


def test_an_empty_local_reply_ends_the_stream_on_its_headers(up):
    """A reply known to be empty (a direct_response without body) is one HEADERS frame
    with END_STREAM and content-length: 0, as Envoy sends it; no DATA frame."""
    from fastproxy.http.model import DirectResponse
    routes = [Route(RouteMatch(prefix="/empty"), direct_response=DirectResponse(200, b"")),
              Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    with make_proxy([cluster(up)], routes=routes) as p:
        s, enc = _raw_h2(p.listener_address("http"))
        s.sendall(_req_headers(enc, 1, "/empty"))
        raw = RawFrames(s)
        raw.until(lambda: any(f.stream_id == 1 for f in raw.of("HeadersFrame")), what="the reply")
        for _ in range(5):
            raw.read()
        h = [f for f in raw.of("HeadersFrame") if f.stream_id == 1]
        assert len(h) == 1 and "END_STREAM" in h[0].flags
        import hpack
        fields = dict(hpack.Decoder().decode(h[0].data))
        assert fields[":status"] == "200" and fields["content-length"] == "0"
        assert not [f for f in raw.of("DataFrame") if f.stream_id == 1]
        s.close()


def test_a_reset_while_the_client_is_not_reading_keeps_the_framing():
    """A client that stops reading (out_buf full, DATA of two streams waiting) while one
    stream's upstream breaks mid-body: that stream is reset, and every frame the client
    reads afterwards is well formed (a reset never drops bytes a DATA frame announced);
    the other stream's 16 MiB arrive whole."""
    n = 16 << 20

    def handler(method, path, headers, body):
        if path == "/cut":
            def cut(c):
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 << 20))
                c.sendall(b"x" * (1 << 20))
                time.sleep(0.3)
                c.close()
            return cut
        payload = bytes(range(256)) * (n // 256)
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (n, payload)
    up = RawHttpUpstream(handler)
    try:
        with make_proxy([cluster(up)]) as p:
            c = H2Client(p.listener_address("http"), window=(1 << 24))
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.conn.increment_flow_control_window(1 << 26)
            c.flush()
            b = c.request("/big")
            a = c.request("/cut")
            time.sleep(0.8)                 # not reading: the proxy's buffers fill, A breaks
            c.until(lambda: c.done(a) and c.done(b), timeout=30, what="both streams")
            assert c.responses[a]["reset"] == 2
            got = bytes(c.responses[b]["data"])
            assert len(got) == n and got == bytes(range(256)) * (n // 256)
            assert p.stats()["http2.tx_reset"] == 1
            c.close()
    finally:
        up.close()
