"""Upstream HTTP servers for the HTTP proxy tests: raw sockets, so every byte the proxy
sends is recorded and every byte we answer is exactly what the test wants."""
from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import socket
import threading
import time


class ThreadedUpstream:
    """A server on 127.0.0.1:<ephemeral>: a thread accepts, each connection is served by
    `_serve(sock)` (the subclass's protocol) on a thread of its own; `connections` counts
    them (under `_lock`: `lock`, or a new one)."""

    def __init__(self, lock=None):
        self.connections = 0
        self._lock = lock or threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self._closed = True
        # shutdown first: close() alone leaves the socket listening for as long as the accept
        # thread stays blocked in accept(2), and such a closed server was seen answering a
        # later test's request (a flaky test_http_headers after many servers had come and gone).
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _accept(self):
        while not self._closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, sock):
        raise NotImplementedError


class RawHttpUpstream(ThreadedUpstream):
    """A keep-alive HTTP/1.1 server. `handler(method, path, headers, body) -> bytes|None`
    returns the raw response bytes (None: close the connection without answering).
    Every request received is recorded in `requests`, every raw byte in `raw`, unless
    `record` is false (an upstream under a benchmark's load would only grow). `lock`: as
    ThreadedUpstream's."""

    def __init__(self, handler=None, lock=None, record=True):
        self.handler = handler or self.default
        self.record = record
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.raw = bytearray()
        super().__init__(lock)

    @staticmethod
    def default(method, path, headers, body):
        payload = f"{method} {path} {len(body)}".encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)

    def _recv(self, c, buf):
        d = c.recv(1 << 16)
        if d and self.record:
            with self._lock:
                self.raw += d
        return d

    def _serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = self._recv(c, buf)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, v = line.split(":", 1)
                    headers.setdefault(k.strip().lower(), []).append(v.strip())
                body = b""
                if "content-length" in headers:
                    n = int(headers["content-length"][0])
                    while len(buf) < n:
                        d = self._recv(c, buf)
                        if not d:
                            return
                        buf += d
                    body, buf = buf[:n], buf[n:]
                elif headers.get("transfer-encoding", [""])[0].lower() == "chunked":
                    def more():
                        # the proxy may abandon a request mid-body: its EOF ends the
                        # connection (recv would return b"" forever: a spinning thread)
                        d = self._recv(c, buf)
                        if not d:
                            raise EOFError
                        return d
                    try:
                        while True:
                            while b"\r\n" not in buf:
                                buf += more()
                            line, buf = buf.split(b"\r\n", 1)
                            size = int(line.split(b";")[0], 16)
                            if size == 0:
                                while b"\r\n\r\n" not in b"\r\n" + buf:
                                    buf += more()
                                _, buf = (b"\r\n" + buf).split(b"\r\n\r\n", 1)
                                break
                            while len(buf) < size + 2:
                                buf += more()
                            body += buf[:size]
                            buf = buf[size + 2:]
                    except EOFError:
                        return
                if self.record:
                    with self._lock:
                        self.requests.append((method, path, headers, body))
                out = self.handler(method, path, headers, body)
                if out is None:
                    return
                if callable(out):
                    out(c)
                    return
                c.sendall(out)
        except OSError:
            return
        finally:
            c.close()


def http_request(addr, method="GET", path="/", body=None, headers=None, timeout=5):
    """One request on a fresh http.client connection: (response, body bytes)."""
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r, data


def exchange(addr, data: bytes, timeout=2.0) -> bytes:
    """Send raw bytes, read until the proxy closes or goes quiet for `timeout`."""
    s = socket.create_connection(addr, timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except socket.timeout:
        pass
    finally:
        s.close()
    return out


def envoy_local_address() -> str:
    """Envoy's local address (Network::Utility::getLocalAddress): the first non-loopback IPv4
    interface address from getifaddrs(3), else 127.0.0.1. Read here through ctypes."""
    class sockaddr(ctypes.Structure):
        _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_ubyte * 14)]

    class ifaddrs(ctypes.Structure):
        pass
    ifaddrs._fields_ = [("ifa_next", ctypes.POINTER(ifaddrs)), ("ifa_name", ctypes.c_char_p),
                        ("ifa_flags", ctypes.c_uint), ("ifa_addr", ctypes.POINTER(sockaddr)),
                        ("ifa_netmask", ctypes.POINTER(sockaddr)), ("ifa_ifu", ctypes.POINTER(sockaddr)),
                        ("ifa_data", ctypes.c_void_p)]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    head = ctypes.POINTER(ifaddrs)()
    assert libc.getifaddrs(ctypes.byref(head)) == 0
    found = "127.0.0.1"
    try:
        p = head
        while p:
            a = p.contents.ifa_addr
            if a and a.contents.sa_family == socket.AF_INET:
                found = socket.inet_ntoa(bytes(a.contents.sa_data[2:6]))
                if not found.startswith("127."):
                    break
            p = p.contents.ifa_next
    finally:
        libc.freeifaddrs(head)
    return found
