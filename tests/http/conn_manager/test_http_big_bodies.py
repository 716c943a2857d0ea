"""1 GiB through the HTTP proxy each way with bounded proxy memory: watermark flow control
and the splice path must keep the proxy's footprint independent of the body size. The proxy
runs in this process; the client and the upstream stream from and to one reused buffer, so
the process's RSS growth is the proxy's."""
from __future__ import annotations

import socket
import threading

import pytest

from fastproxy import Cluster, Endpoint, Listener, Proxy
from fastproxy.model_http import HttpConnectionManager, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost

from conftest import recv_head, rss_bytes, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

GIB = 1 << 30
MB = 1 << 20
CHUNK = bytes(range(256)) * 4096            # 1 MiB, reused


class RssPeak:
    """Samples this process's RSS in a thread; .growth is the peak over the start."""

    def __init__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def stop(self):
        self._stop.set()
        self._t.join()
        return self.peak - self.start


class StreamingUpstream:
    """One-request-per-connection raw HTTP server: counts a request body without keeping it
    (answers with the count), or sends a GiB response body from CHUNK."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            got_head = recv_head(c)
            if got_head is None:
                return
            head, body = got_head
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
            if head.startswith(b"POST"):
                left = int(fields[b"content-length"]) - len(body)
                got = len(body)
                scratch = bytearray(1 << 20)
                while left > 0:
                    n = c.recv_into(scratch, min(left, len(scratch)))
                    if not n:
                        return
                    left -= n
                    got += n
                self.received = got
                answer = str(got).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIB)
                for _ in range(GIB // len(CHUNK)):
                    c.sendall(CHUNK)


@pytest.fixture
def setup():
    up = StreamingUpstream()
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c", timeout=None))])])
    p = Proxy([Listener("http", port=0, http=HttpConnectionManager("big", rc))],
              [Cluster("c", [Endpoint("127.0.0.1", up.port)])], concurrency=1)
    with p:
        yield p, up
    up.close()


def test_one_gib_upload_with_bounded_memory(setup):
    p, up = setup
    s = socket.create_connection(p.listener_address("http"), timeout=30)
    peak = RssPeak()
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB)
    for _ in range(GIB // len(CHUNK)):
        s.sendall(CHUNK)
    resp = b""
    while not resp.endswith(str(GIB).encode()):
        d = s.recv(4096)
        assert d, resp
        resp += d
    growth = peak.stop()
    s.close()
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n")
    assert up.received == GIB
    # the peer can hold the last bytes before the worker has counted them
    wait_for(lambda: (lambda st: st["http.big.bytes_spliced"] + st["http.big.bytes_copied"] >= GIB)(p.stats()),
             msg="the body's bytes counted")
    assert growth < 64 * MB, f"RSS grew {growth / MB:.1f} MB for a 1 GiB upload"


def test_one_gib_download_with_bounded_memory(setup):
    p, _ = setup
    s = socket.create_connection(p.listener_address("http"), timeout=30)
    peak = RssPeak()
    s.sendall(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    head, rest = head.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: %d" % GIB in head.lower()
    got = len(rest)
    scratch = bytearray(1 << 20)
    while got < GIB:
        n = s.recv_into(scratch)
        assert n, f"closed after {got} bytes"
        got += n
    growth = peak.stop()
    s.close()
    assert got == GIB
    # the peer can hold the last bytes before the worker has counted them
    wait_for(lambda: (lambda st: st["http.big.bytes_spliced"] + st["http.big.bytes_copied"] >= GIB)(p.stats()),
             msg="the body's bytes counted")
    assert growth < 64 * MB, f"RSS grew {growth / MB:.1f} MB for a 1 GiB download"
