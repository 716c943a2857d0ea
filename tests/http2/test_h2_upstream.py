"""Upstream HTTP/2 (core/http/codec_h2_client.pxi): HTTP/1.1 clients through fastproxy to
real HTTP/2 servers: a Python `h2` server started by the test (it records every stream and
connection it sees, and can reset, refuse, GOAWAY or drop) and the real Envoy 1.40 as an
h2c upstream. Streams of many downstream requests share one connection per host and worker;
the peer's SETTINGS_MAX_CONCURRENT_STREAMS, max_requests_per_connection and the circuit
breakers bound it; resets and GOAWAY map to Envoy's answers (503 UR)."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

h2 = pytest.importorskip("h2")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.errors  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402
import hyperframe.frame  # noqa: E402

from fastproxy import Cluster, Endpoint, Listener, Proxy  # noqa: E402
from fastproxy.http.model import (AccessLog, Http2ProtocolOptions, HttpConnectionManager,  # noqa: E402
                                  KeepaliveSettings, Route, RouteAction, RouteConfiguration, RouteMatch,
                                  VirtualHost)

from conftest import (admin_get, envoy_yaml, find_envoy, http_listener, recv_head, start_envoy,  # noqa: E402
                      start_fastproxy_process, static_cluster, wait_for, wait_stalled)

class H2Upstream:
    """An HTTP/2 (h2c prior knowledge) server on loopback, one thread per connection. Per
    path: /big/<n> answers n bytes; /echo answers the request body; /trailers answers with
    trailers; /reset and /refuse reset the stream (INTERNAL_ERROR, REFUSED_STREAM) at its
    head; /reset-mid resets it after the head and some body; /hold waits for `gate`;
    /goaway sends GOAWAY naming the streams before it; /drop closes the connection;
    anything else answers a JSON description of the request."""

    def __init__(self, max_concurrent_streams=None, tls=None):
        self.max_concurrent_streams = max_concurrent_streams
        self.tls = tls                  # an ssl.SSLContext (ALPN set by the caller), or None
        self.alpn = []                  # what each TLS handshake selected
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.connections = []           # per connection: the number of streams it carried
        self.requests = []              # (connection index, stream id, headers, body, trailers)
        self.resets = []                # stream ids the client reset
        self.max_open = 0               # the most streams open at once on one connection
        self.unsent = {}                # (connection index, stream id) -> response bytes not sent yet
        self.errors = []                # why a connection's thread ended early
        self.pings = 0                  # PINGs received (not ACKs)
        self.closing = False
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def close(self):
        self.closing = True
        self.gate.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for t in self.threads:
            t.join(5)               # (their sockets, TLS ones included, closed with them)

    def _accept(self):
        while not self.closing:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    s = self.tls.wrap_socket(s, server_side=True)
                except (OSError, ssl.SSLError):
                    continue
                self.alpn.append(s.selected_alpn_protocol())
            with self.lock:
                index = len(self.connections)
                self.connections.append(0)
            t = threading.Thread(target=self._serve, args=(s, index), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, sock, index):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        if self.max_concurrent_streams is not None:
            conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams})
        sock.sendall(conn.data_to_send())
        sock.settimeout(10)             # (sends block: a peer that reads slowly is waited for)
        streams = {}        # id -> {"headers", "body", "trailers"}
        held = []           # ids waiting for the gate
        sending = {}        # id -> [remaining bytes, trailers]
        try:
            while not self.closing:
                pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
                if pending or select.select([sock], [], [], 0.01)[0]:
                    data = sock.recv(65536)
                    if not data:
                        return
                else:
                    data = b""
                events = conn.receive_data(data) if data else []
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = {"headers": ev.headers, "body": bytearray(), "trailers": None}
                        with self.lock:
                            self.connections[index] += 1
                            self.max_open = max(self.max_open, conn.open_inbound_streams)
                        path = dict(ev.headers).get(":path", "")
                        if path == "/reset" or path == "/refuse":
                            code = h2.errors.ErrorCodes.REFUSED_STREAM if path == "/refuse" \
                                else h2.errors.ErrorCodes.INTERNAL_ERROR
                            conn.reset_stream(ev.stream_id, code)
                            streams.pop(ev.stream_id)
                        elif path == "/drop":
                            sock.close()
                            return
                        elif path == "/mute":
                            sock.sendall(conn.data_to_send())
                            self.gate.wait()            # deaf and dumb: PINGs go unanswered
                            return
                        elif path == "/goaway":
                            # A GOAWAY naming the stream before this one, written beside h2's
                            # state machine so the streams before it can still complete.
                            sock.sendall(conn.data_to_send())
                            sock.sendall(hyperframe.frame.GoAwayFrame(
                                0, last_stream_id=ev.stream_id - 2, error_code=0).serialize())
                            streams.pop(ev.stream_id)
                    elif isinstance(ev, h2.events.DataReceived):
                        if ev.stream_id in streams:
                            streams[ev.stream_id]["body"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        if ev.stream_id in streams:
                            streams[ev.stream_id]["trailers"] = ev.headers
                    elif isinstance(ev, h2.events.StreamEnded):
                        st = streams.get(ev.stream_id)
                        if st is None:
                            continue
                        with self.lock:
                            self.requests.append((index, ev.stream_id, st["headers"], bytes(st["body"]),
                                                  st["trailers"]))
                        if dict(st["headers"]).get(":path") == "/hold":
                            held.append(ev.stream_id)
                        else:
                            self._answer(conn, ev.stream_id, st, sending)
                    elif isinstance(ev, h2.events.StreamReset):
                        with self.lock:
                            self.resets.append(ev.stream_id)
                        streams.pop(ev.stream_id, None)
                        sending.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.PingReceived):
                        self.pings += 1                 # (h2 answers it)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        sock.sendall(conn.data_to_send())
                        return
                if held and self.gate.is_set():
                    for sid in held:
                        if sid in streams:
                            self._answer(conn, sid, streams[sid], sending)
                    held = []
                for sid in list(sending):
                    rest, trailers = sending[sid]
                    while rest:
                        room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(rest))
                        if room <= 0:
                            break
                        conn.send_data(sid, bytes(rest[:room]))
                        rest = rest[room:]
                    sending[sid][0] = rest
                    self.unsent[(index, sid)] = len(rest)
                    if not rest:
                        if trailers == "reset":
                            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                        elif trailers:
                            conn.send_headers(sid, trailers, end_stream=True)
                        else:
                            conn.end_stream(sid)
                        del sending[sid]
                        streams.pop(sid, None)
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
        except (OSError, h2.exceptions.ProtocolError) as e:
            self.errors.append(repr(e))
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _answer(self, conn, sid, st, sending):
        hdrs = dict(st["headers"])
        path = hdrs.get(":path", "")
        trailers = None
        if path.startswith("/big/"):
            body = bytes(i % 251 for i in range(256)) * (int(path[5:]) // 256 + 1)
            body = body[:int(path[5:])]
        elif path == "/echo":
            body = bytes(st["body"])
        elif path == "/reset-mid":
            body = b"x" * 1000
            trailers = "reset"
        else:
            body = json.dumps({"headers": st["headers"], "body_len": len(st["body"]),
                               "body_sha": hashlib.sha256(st["body"]).hexdigest(),
                               "trailers": st["trailers"]}).encode()
        if path == "/trailers":
            trailers = [("grpc-status", "0"), ("x-t", "done")]
        if path == "/204":
            conn.send_headers(sid, [(":status", "204")], end_stream=True)
            return
        if hdrs.get(":method") == "HEAD":
            conn.send_headers(sid, [(":status", "200"), ("content-length", "1234")], end_stream=True)
            return
        head = [(":status", "200"), ("content-type", "application/octet-stream")]
        if path != "/trailers" and trailers != "reset":
            head.append(("content-length", str(len(body))))
        conn.send_headers(sid, head)
        sending[sid] = [memoryview(body), trailers]


@pytest.fixture
def h2_upstream():
    made = []

    def make(**kw):
        s = H2Upstream(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def h2_proxy(port, concurrency=1, cluster_kw=None, h2=None, log=None, protocol="http2", timeout=15.0):
    """A proxy whose route sends everything to cluster "c", which speaks HTTP/2 to port
    (protocol "http2": prior knowledge, or ALPN h2 over TLS; "auto": auto_config)."""
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c", timeout=timeout))])])
    hcm_kw = {}
    if log is not None:
        hcm_kw["access_log"] = [AccessLog(path=str(log))]
    hcm = HttpConnectionManager("ingress", rc, **hcm_kw)
    cluster = Cluster("c", [Endpoint("127.0.0.1", port)], upstream_protocol=protocol,
                      http2_protocol_options=Http2ProtocolOptions(**(h2 or {})), **(cluster_kw or {}))
    p = Proxy([Listener("http", hcm, port=0)], [cluster], concurrency=concurrency)
    p.start()
    return p


def get(p, path, method="GET", body=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def cstat(p, name):
    return p.stats().get(f"cluster.c.{name}", 0)


# ------------------------------------------------------------------ translation


def test_get_translates_to_headers_with_pseudo_headers(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        status, hdrs, body = get(p, "/hello?x=1", headers={"Host": "svc.example", "X-Mixed-Case": "v",
                                                            "Connection": "keep-alive, x-hop", "X-Hop": "1",
                                                            "Keep-Alive": "timeout=5", "TE": "trailers, deflate"})
        assert status == 200
        seen = json.loads(body)["headers"]
        names = [k for k, _ in seen]
        d = dict(seen)
        assert (d[":method"], d[":scheme"], d[":authority"], d[":path"]) == ("GET", "http", "svc.example", "/hello?x=1")
        assert names[:4] == [":method", ":scheme", ":path", ":authority"]     # pseudo-headers first
        assert d["x-mixed-case"] == "v"                                        # lowercased
        assert d["te"] == "trailers"                                           # only TE: trailers passes
        for hop in ("connection", "keep-alive", "x-hop", "host", "transfer-encoding", "upgrade"):
            assert hop not in d
        assert "x-forwarded-proto" in d and "x-request-id" in d
        assert cstat(p, "upstream_cx_http2_total") == 1
        assert cstat(p, "upstream_cx_http1_total") == 0


def test_post_with_content_length_and_chunked_bodies(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        payload = os.urandom(300_000)
        status, _, body = get(p, "/post", "POST", body=payload)
        info = json.loads(body)
        assert status == 200 and info["body_len"] == len(payload)
        assert info["body_sha"] == hashlib.sha256(payload).hexdigest()
        assert dict(info["headers"])["content-length"] == str(len(payload))
        # chunked: streamed as DATA frames, no content-length, the chunks' bytes only
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=10)
        conn.request("POST", "/post", body=iter([b"abc", b"defgh", b"x" * 70000]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        info = json.loads(r.read())
        conn.close()
        assert r.status == 200 and info["body_len"] == 3 + 5 + 70000
        assert "content-length" not in dict(info["headers"])
        assert "transfer-encoding" not in dict(info["headers"])


def test_request_trailers_become_a_trailing_headers_frame(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        s = socket.create_connection(p.listener_address("http"), timeout=10)
        s.sendall(b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
                  b"5\r\nhello\r\n0\r\nX-Checksum: 42\r\nGrpc-Thing: y\r\n\r\n")
        head, rest = recv_head(s)
        assert head.startswith(b"HTTP/1.1 200")
        wait_for(lambda: up.requests)
        _, _, headers, body, trailers = up.requests[0]
        assert body == b"hello"
        assert dict(trailers) == {"x-checksum": "42", "grpc-thing": "y"}
        s.close()


def test_response_trailers_and_large_bodies_both_ways(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        s = socket.create_connection(p.listener_address("http"), timeout=10)
        s.sendall(b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"0\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert b"transfer-encoding: chunked" in head         # no length: re-framed chunked
        assert b"grpc-status: 0\r\n" in data and b"x-t: done\r\n" in data
        s.close()
        # 8 MiB down (the stream and connection windows are 1 MiB: WINDOW_UPDATEs flow)
        status, hdrs, body = get(p, f"/big/{8 << 20}", timeout=30)
        assert status == 200 and len(body) == 8 << 20
        assert hdrs["content-length"] == str(8 << 20)
        assert body == (bytes(i % 251 for i in range(256)) * ((8 << 20) // 256))
        # 5 MiB up, echoed back
        payload = os.urandom(5 << 20)
        status, _, body = get(p, "/echo", "POST", body=payload, timeout=30)
        assert status == 200 and body == payload


def test_head_and_204_responses_have_no_body(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=10)
        conn.request("HEAD", "/h")
        r = conn.getresponse()
        assert (r.status, r.getheader("content-length"), r.read()) == (200, "1234", b"")
        conn.request("GET", "/204")             # the same client connection: framing held
        r = conn.getresponse()
        assert (r.status, r.read()) == (204, b"")
        conn.request("GET", "/after")
        assert conn.getresponse().status == 200
        conn.close()


def test_slow_reader_stalls_only_its_own_stream(h2_upstream):
    """A client that does not read: its stream's window stays shut (the upstream stops
    sending on it), while another stream on the same connection completes."""
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        assert get(p, "/warm")[0] == 200
        size = 32 << 20
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.connect(p.listener_address("http"))
        slow.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        wait_for(lambda: (0, 3) in up.unsent)
        left = wait_stalled(lambda: up.unsent[(0, 3)])
        assert left > 0                         # stalled: the stream's window is not reopened
        status, _, body = get(p, "/other")       # ... but the connection's is
        assert status == 200
        assert up.connections == [3]
        got = 0
        head, rest = recv_head(slow)
        got = len(rest)
        slow.settimeout(20)
        while got < size:
            chunk = slow.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == size and up.unsent[(0, 3)] == 0
        slow.close()


# ------------------------------------------------------------------ multiplexing


def _concurrent(p, paths, timeout=20):
    results = [None] * len(paths)

    def one(i, path):
        results[i] = get(p, path, timeout=timeout)

    ts = [threading.Thread(target=one, args=(i, path)) for i, path in enumerate(paths)]
    for t in ts:
        t.start()
    return ts, results


def test_concurrent_requests_share_one_connection(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        assert get(p, "/warm")[0] == 200
        ts, results = _concurrent(p, ["/hold"] * 20)
        wait_for(lambda: len(up.requests) == 21, timeout=10)
        assert cstat(p, "upstream_rq_active") == 20
        up.gate.set()
        for t in ts:
            t.join(20)
        assert all(r is not None and r[0] == 200 for r in results)
        assert up.connections == [21]            # 21 streams, one connection
        assert cstat(p, "upstream_cx_total") == 1 and cstat(p, "upstream_rq_total") == 21
        assert cstat(p, "http2.streams_active") == 0


def test_one_connection_per_worker(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port, concurrency=2) as p:
        ts, results = _concurrent(p, ["/hold"] * 16)
        wait_for(lambda: len(up.requests) == 16, timeout=10)
        up.gate.set()
        for t in ts:
            t.join(20)
        assert all(r[0] == 200 for r in results)
        assert len(up.connections) <= 2 and sum(up.connections) == 16      # (each worker its own pool)


def test_peer_max_concurrent_streams_opens_a_second_connection(h2_upstream):
    up = h2_upstream(max_concurrent_streams=3)
    with h2_proxy(up.port) as p:
        assert get(p, "/warm")[0] == 200         # its SETTINGS are known from here on
        ts, results = _concurrent(p, ["/hold"] * 5)
        wait_for(lambda: len(up.requests) == 6, timeout=10)
        assert sorted(up.connections) == [2, 4]  # 3 at once on the first, 2 on a new one
        up.gate.set()
        for t in ts:
            t.join(20)
        assert all(r[0] == 200 for r in results)
        assert cstat(p, "upstream_cx_http2_total") == 2


def test_max_requests_per_connection_moves_to_a_new_connection(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port, cluster_kw={"max_requests_per_connection": 3}) as p:
        for i in range(7):
            assert get(p, f"/r{i}")[0] == 200
        assert up.connections == [3, 3, 1]
        assert cstat(p, "upstream_cx_max_requests") == 2
        wait_for(lambda: cstat(p, "upstream_cx_active") == 1)   # the full ones drained and closed


def test_circuit_breaker_max_requests_bounds_streams(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port, cluster_kw={"max_requests": 2}) as p:
        assert get(p, "/warm")[0] == 200
        ts, results = _concurrent(p, ["/hold"] * 2)
        wait_for(lambda: len(up.requests) == 3)
        status, hdrs, body = get(p, "/third")
        assert status == 503 and hdrs.get("x-envoy-overloaded") == "true"
        assert body == b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
        assert cstat(p, "upstream_rq_active_overflow") == 1
        up.gate.set()
        for t in ts:
            t.join(20)
        assert [r[0] for r in results] == [200, 200]


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")
def test_http2_clients_to_an_http2_upstream(h2_upstream, tmp_path):
    """HTTP/2 on both sides: h2load's streams (2 connections x 20) and curl's upload all
    share one upstream connection."""
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        host, port = p.listener_address("http")
        out = subprocess.run(["h2load", "-n", "400", "-c", "2", "-m", "20", f"http://{host}:{port}/load"],
                             capture_output=True, text=True, timeout=60).stdout
        assert "400 succeeded" in out and "400 2xx" in out, out
        payload = tmp_path / "up.bin"
        payload.write_bytes(os.urandom(3 << 20))
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "--data-binary", f"@{payload}",
                              f"http://{host}:{port}/echo"], capture_output=True, timeout=30).stdout
        assert out == payload.read_bytes()
        assert up.connections == [401]
        assert p.stats()["http.ingress.downstream_rq_http2_total"] == 401


# ------------------------------------------------------------------ resets, GOAWAY, loss


def test_upstream_reset_is_503_ur(h2_upstream, tmp_path):
    up = h2_upstream()
    log = tmp_path / "access.log"
    with h2_proxy(up.port, log=log) as p:
        status, _, body = get(p, "/reset")
        assert status == 503
        assert body == b"upstream connect error or disconnect/reset before headers. reset reason: remote reset"
        status, _, body = get(p, "/refuse")
        assert status == 503
        assert body.endswith(b"reset reason: remote refused stream reset")
        assert cstat(p, "upstream_rq_rx_reset") == 1      # (a refusal is not a reset, as Envoy counts)
        assert cstat(p, "http2.rx_reset") == 2
        # the connection stays: the next request uses it
        assert get(p, "/after")[0] == 200
        assert up.connections == [3]
        wait_for(lambda: len(log.read_text().splitlines()) == 3)
        flags = [line.split('"')[2].split()[1] for line in log.read_text().splitlines()]
        assert flags[:2] == ["UR", "UR"]


def test_upstream_reset_after_the_head_resets_the_client(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        s = socket.create_connection(p.listener_address("http"), timeout=10)
        s.sendall(b"GET /reset-mid HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass                                            # (the close may be abortive)
        assert data == b"" or data.startswith(b"HTTP/1.1 200")
        assert not data.endswith(b"0\r\n\r\n")               # never completed: the close says so
        assert cstat(p, "upstream_rq_rx_reset") == 1


def test_cancel_resets_the_stream_and_keeps_the_connection(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        assert get(p, "/warm")[0] == 200
        s = socket.create_connection(p.listener_address("http"), timeout=10)
        s.sendall(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: len(up.requests) == 2)
        s.close()                                   # the client goes: RST_STREAM CANCEL
        wait_for(lambda: up.resets, timeout=5)
        assert cstat(p, "upstream_rq_tx_reset") == 1
        assert get(p, "/next")[0] == 200
        assert up.connections == [3]


def test_route_timeout_resets_the_stream(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port, timeout=0.3) as p:
        status, _, body = get(p, "/hold")
        assert (status, body) == (504, b"upstream request timeout")
        wait_for(lambda: up.resets == [1])          # RST_STREAM CANCEL; the connection stays
        up.gate.set()
        assert get(p, "/next")[0] == 200
        assert up.connections == [2]
        assert cstat(p, "upstream_rq_timeout") == 1 and cstat(p, "upstream_rq_tx_reset") == 1


def test_connect_failure_fails_the_waiting_requests(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                       # nothing listens there
    log = tmp_path / "access.log"
    with h2_proxy(port, log=log) as p:
        status, _, body = get(p, "/x")
        assert status == 503
        assert body == b"upstream connect error or disconnect/reset before headers. reset reason: " \
                       b"remote connection failure"
        assert cstat(p, "upstream_cx_connect_fail") == 1
        wait_for(lambda: cstat(p, "upstream_cx_active") == 0)     # (it closes right after the reply)
        assert cstat(p, "upstream_rq_pending_active") == 0
        wait_for(lambda: log.exists() and log.read_text())
        assert " UF " in log.read_text()


def test_keepalive_pings_and_their_timeout(h2_upstream):
    """connection_keepalive: PINGs every interval; an upstream that stops answering them is
    gone after the timeout (its streams fail, http2.keepalive_timeout)."""
    up = h2_upstream()
    ka = KeepaliveSettings(timeout=0.3, interval=0.1, interval_jitter=0)
    with h2_proxy(up.port, h2={"connection_keepalive": ka}) as p:
        assert get(p, "/warm")[0] == 200
        wait_for(lambda: up.pings >= 3)             # PINGs, answered: the connection stays
        assert get(p, "/again")[0] == 200 and up.connections == [2]
        status, _, body = get(p, "/mute")
        assert status == 503 and body.endswith(b"reset reason: connection termination")
        assert cstat(p, "http2.keepalive_timeout") == 1
        up.gate.set()


def test_goaway_refuses_later_streams_and_the_connection_drains(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        assert get(p, "/warm")[0] == 200            # stream 1
        ts, results = _concurrent(p, ["/hold"])     # stream 3, below the GOAWAY's last id
        wait_for(lambda: len(up.requests) == 2)
        status, _, body = get(p, "/goaway")         # stream 5: GOAWAY(last_stream_id=3)
        assert status == 503 and body.endswith(b"reset reason: remote refused stream reset")
        up.gate.set()
        ts[0].join(10)
        assert results[0][0] == 200                 # the stream before it completes
        assert get(p, "/fresh")[0] == 200           # a new connection
        assert len(up.connections) == 2


def test_connection_loss_fails_every_stream_on_it(h2_upstream):
    up = h2_upstream()
    with h2_proxy(up.port) as p:
        assert get(p, "/warm")[0] == 200
        ts, results = _concurrent(p, ["/hold"] * 3)
        wait_for(lambda: len(up.requests) == 4)
        status, _, body = get(p, "/drop")
        assert status == 503
        for t in ts:
            t.join(10)
        assert [r[0] for r in results] == [503, 503, 503]
        assert all(r[2].endswith(b"reset reason: connection termination") for r in results)
        assert get(p, "/again")[0] == 200
        assert len(up.connections) == 2


# ------------------------------------------------------------------ TLS: ALPN h2, auto_config


def _tls_cluster_kw(tmp_path):
    from fastproxy import model_tls as t
    from tls_certs import default_ca
    ca = default_ca()
    ca_file = ca.write(tmp_path).cert
    return {"tls": t.UpstreamTlsContext(sni="localhost", common_tls_context=t.CommonTlsContext(
        validation_context=t.CertificateValidationContext(trusted_ca=t.DataSource(filename=str(ca_file)))))}


def _server_tls(tmp_path, alpn):
    from tls_certs import server_cert
    files = server_cert().write(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.mark.parametrize("protocol", ["http2", "auto"])
def test_http2_over_tls_with_alpn_h2(h2_upstream, tmp_path, protocol):
    up = h2_upstream(tls=_server_tls(tmp_path, ["h2"]))
    with h2_proxy(up.port, cluster_kw=_tls_cluster_kw(tmp_path), protocol=protocol) as p:
        ts, results = _concurrent(p, [f"/s{i}" for i in range(5)])
        for t in ts:
            t.join(20)
        assert all(r[0] == 200 for r in results)
        assert dict(json.loads(results[0][2])["headers"])[":scheme"] == "https"
        assert up.alpn == ["h2"] and up.connections == [5]
        assert cstat(p, "upstream_cx_http2_total") == 1 and cstat(p, "upstream_cx_http1_total") == 0


def test_auto_config_falls_back_to_http1_when_the_server_chooses_it(tmp_path):
    """auto_config over TLS: the server selects http/1.1, so the request goes as HTTP/1.1
    on that connection, and idle HTTP/1.1 connections are reused after it."""
    import http.server
    import socketserver

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            out = f"{self.command} {self.path} {self.request_version} {len(body)}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST

        def log_message(self, *a):
            pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    srv.block_on_close = True                       # server_close joins the handlers
    srv.socket = _server_tls(tmp_path, ["http/1.1"]).wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with h2_proxy(srv.server_address[1], cluster_kw=_tls_cluster_kw(tmp_path), protocol="auto") as p:
            status, _, body = get(p, "/a", "POST", body=b"hello")
            assert (status, body) == (200, b"POST /a HTTP/1.1 5")
            status, _, body = get(p, "/b")
            assert (status, body) == (200, b"GET /b HTTP/1.1 0")
            assert cstat(p, "upstream_cx_http2_total") == 0
            assert cstat(p, "upstream_cx_http1_total") == cstat(p, "upstream_cx_total") == 1     # reused
            # Requests that waited on a connection the server made HTTP/1.1 get their own.
            ts, results = _concurrent(p, [f"/c{i}" for i in range(6)])
            for t in ts:
                t.join(20)
            assert sorted(r[2] for r in results) == [f"GET /c{i} HTTP/1.1 0".encode() for i in range(6)]
            assert cstat(p, "upstream_cx_http2_total") == 0
            assert cstat(p, "upstream_rq_total") == 8
    finally:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ real Envoy as the upstream


@pytest.mark.skipif(find_envoy() is None, reason="envoy not installed")
def test_envoy_as_http2_upstream(tmp_path):
    """Envoy 1.40 serving h2c (codec_type HTTP2) with a direct response: many requests,
    one connection, and Envoy's own counters say it saw HTTP/2 streams."""
    listener = {
        "name": "h2", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": {
                                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                                     "http_connection_manager.v3.HttpConnectionManager",
                                            "stat_prefix": "h2", "codec_type": "HTTP2",
                                            "route_config": {"virtual_hosts": [{
                                                "name": "vh", "domains": ["*"],
                                                "routes": [{"match": {"prefix": "/"},
                                                            "direct_response": {"status": 200,
                                                                                "body": {"inline_string": "from envoy"}}}]}]},
                                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}],
    }
    proc, admin, addr = start_envoy(envoy_yaml([listener]), tmp_path)
    try:
        with h2_proxy(addr[1]) as p:
            ts, results = _concurrent(p, [f"/e{i}" for i in range(10)])
            for t in ts:
                t.join(20)
            assert all(r[0] == 200 and r[2] == b"from envoy" for r in results)
            stats = dict(line.split(": ", 1) for line in
                         __import__("conftest").admin_get(admin, "/stats?filter=http.h2.downstream_").splitlines())
            assert int(stats["http.h2.downstream_rq_http2_total"]) == 10
            assert int(stats["http.h2.downstream_cx_http2_total"]) == cstat(p, "upstream_cx_total")
    finally:
        proc.terminate()
        proc.wait(10)


PARITY_COUNTERS = ["cluster.up." + n for n in (
    "upstream_cx_total", "upstream_cx_http1_total", "upstream_cx_http2_total", "upstream_rq_total",
    "upstream_rq_completed", "upstream_rq_2xx", "upstream_rq_5xx", "upstream_rq_200", "upstream_rq_503",
    "upstream_rq_504", "upstream_rq_timeout", "upstream_rq_rx_reset", "upstream_rq_tx_reset",
    "upstream_rq_pending_total", "upstream_cx_destroy", "upstream_cx_max_requests",
    "upstream_cx_destroy_local", "upstream_cx_destroy_remote", "upstream_cx_destroy_with_active_rq",
    "upstream_cx_destroy_local_with_active_rq", "upstream_cx_destroy_remote_with_active_rq",
    "upstream_rq_pending_failure_eject", "upstream_cx_close_notify",
    "http2.rx_reset", "http2.tx_reset", "http2.trailers")]
PARITY_GAUGES = ["cluster.up." + n for n in (
    "upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active", "http2.streams_active")]


@pytest.mark.skipif(find_envoy() is None, reason="envoy not installed")
def test_stats_and_answers_match_envoy(h2_upstream, tmp_path):
    """The same Envoy v3 YAML (an HTTP/2 cluster: explicit_http_config) in Envoy 1.40 and in
    fastproxy, the same traffic to an HTTP/2 server each: requests, trailers, an upstream
    reset and a refusal, a route timeout, a connection the server drops with a stream on it,
    a GOAWAY that refuses the stream after it, max_requests_per_connection. The answers and the cluster's counters agree
    (upstream_cx_protocol_error is not compared: Envoy counts one for each connection it
    closes after max_requests_per_connection here; fastproxy does not keep that counter)."""
    routes = """
- match: {prefix: /hold}
  route: {cluster: up, timeout: 0.3s}
- match: {prefix: /}
  route: {cluster: up}
"""
    results = {}
    for name, start in (("envoy", start_envoy), ("fastproxy", start_fastproxy_process)):
        up = h2_upstream()
        cluster = static_cluster("up", [up.port], connect_timeout="2s", typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"max_requests_per_connection": 4},
                "explicit_http_config": {"http2_protocol_options": {}}}})
        d = tmp_path / name
        d.mkdir()
        proc, admin, addr = start(envoy_yaml([http_listener(routes, stat_prefix="p")], [cluster]), d)
        try:
            answers = []
            conn = http.client.HTTPConnection(*addr, timeout=10)
            for path in ("/a", "/trailers", "/reset", "/refuse", "/hold", "/b", "/drop", "/c", "/goaway", "/d"):
                conn.request("GET", path, headers={"TE": "trailers"})
                r = conn.getresponse()
                body = r.read()
                answers.append((path, r.status, body if r.status >= 500 else len(body)))
                if r.getheader("connection") == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(*addr, timeout=10)
            conn.close()

            def stats():
                text = admin_get(admin, "/stats?filter=cluster.up.")
                return {k: int(v) for k, v in (line.split(": ", 1) for line in text.splitlines())
                        if v.strip().lstrip("-").isdigit()}
            # settled: the held stream's reset went out, the full connections closed
            wait_for(lambda: stats().get("cluster.up.upstream_rq_active", 1) == 0 and up.resets, timeout=10,
                     msg=f"{name}: the held stream reset")
            up.gate.set()
            wait_for(lambda: stats().get("cluster.up.upstream_cx_active") == 1, timeout=10,
                     msg=f"{name}: the full connection closed")
            results[name] = (answers, stats(), list(up.connections))
        finally:
            proc.terminate()
            proc.wait(10)
    e_answers, e_stats, e_conns = results["envoy"]
    f_answers, f_stats, f_conns = results["fastproxy"]
    assert f_answers == e_answers
    assert f_conns == e_conns == [4, 3, 2, 1]   # max_requests_per_connection; /drop, /goaway end theirs
    assert {k: f_stats.get(k) for k in PARITY_COUNTERS + PARITY_GAUGES} == \
        {k: e_stats.get(k) for k in PARITY_COUNTERS + PARITY_GAUGES}
