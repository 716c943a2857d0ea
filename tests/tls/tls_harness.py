"""The TLS tests' harness (imported by the test modules, fixtures included: a conftest.py
here would take the name `conftest` from tests/conftest.py, which other folders import): the compiled core driven through its control surface
(Engine.make_tls_context, make_listener(tls=...), make_cluster(tls=...)) with the real
HTTP connection manager and TCP proxy, real sockets, real clients (curl, openssl, Python's
ssl) and real TLS upstreams. Until the model has Listener(tls=)/Cluster(tls=) (CONFIG's
part of issue 14) the listeners are built here the way the installer builds them.

Certificates come from trustme (a CA, leaves RSA or ECDSA, client certificates), made per
test session. (tests/tls_certs.py, USERS' shared helpers, replaces `Pki` when it lands.)
"""
from __future__ import annotations

import datetime
import http.server
import os
import socket
import ssl
import sys
import threading
import time

import pytest
import trustme

from fastproxy import _core
from fastproxy.http import (AccessLog, HttpConnectionManager, Route, RouteAction,
                            RouteConfiguration, RouteMatch, VirtualHost)


def wait_for(cond, timeout=5.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Pki:
    """A CA and the leaves the tests need, as PEM bytes."""

    def __init__(self, key_type=trustme.KeyType.ECDSA):
        self.ca = trustme.CA(key_type=key_type)
        self.ca_pem = self.ca.cert_pem.bytes()

    def leaf(self, *names, key_type=trustme.KeyType.ECDSA, expired=False, cn=None):
        kw = {}
        if expired:
            now = datetime.datetime.now(datetime.timezone.utc)
            kw = {"not_before": now - datetime.timedelta(days=10), "not_after": now - datetime.timedelta(days=1)}
        c = self.ca.issue_cert(*names, key_type=key_type, common_name=cn, **kw)
        chain = b"".join(b.bytes() for b in c.cert_chain_pems)
        return {"chain": chain, "key": c.private_key_pem.bytes(), "password": None}

    def files(self, tmp_path, leaf, stem="leaf"):
        """(cert file, key file, CA file) for command-line clients."""
        cert = tmp_path / f"{stem}.pem"
        key = tmp_path / f"{stem}.key"
        ca = tmp_path / "ca.pem"
        cert.write_bytes(leaf["chain"])
        key.write_bytes(leaf["key"])
        ca.write_bytes(self.ca_pem)
        return str(cert), str(key), str(ca)


@pytest.fixture(scope="session")
def pki():
    return Pki()


def server_spec(*certs, **kw):
    spec = {"certificates": list(certs)}
    spec.update(kw)
    return spec


class Core:
    """An Engine with listeners and clusters built directly (the installer's calls)."""

    def __init__(self, nworkers=1):
        self.engine = _core.Engine(nworkers)
        self.nworkers = nworkers
        self.blocks = {}
        self.clusters = {}
        self.listeners = []
        self.keep = []

    def block(self, kind, name):
        b = self.blocks.get(name)
        if b is None:
            b = self.blocks[name] = self.engine.new_stats(kind)
        return b

    def stats(self, name):
        return self.blocks[name].read()

    def tls(self, spec, server, name):
        return self.engine.make_tls_context(spec, server, self.block("ssl", name), name)

    def cluster(self, name, addrs, tls=None, connect_timeout=5.0, **kw):
        hosts = _core.make_hostset([(ip, port, "") for ip, port in addrs], list(range(len(addrs))))
        h = self.engine.make_cluster(self.block("cluster", f"cluster.{name}"), "ROUND_ROBIN",
                                     connect_timeout, hosts, tls=tls, **kw)
        self.clusters[name] = h
        return h

    def http_listener(self, cluster, tls=None, handshake_timeout=None, access_log=None, name="https"):
        rc = RouteConfiguration(virtual_hosts=[VirtualHost(
            name="all", domains=["*"], routes=[Route(match=RouteMatch(prefix="/"),
                                                     route=RouteAction(cluster=cluster))])])
        hcm = HttpConnectionManager(stat_prefix="ingress", route_config=rc,
                                    access_log=[AccessLog(path=access_log, format=(
                                        "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"))] if access_log else [])
        table = _core.make_route_table(rc, [], self.clusters.get, self.nworkers)
        provider = _core.make_route_provider(self.engine, table)
        http = _core.make_http_cfg(hcm, self.block("http", "http.ingress"), provider, self.nworkers,
                                   self.block("http1", "http1"), None)
        sock = self.engine.bind("127.0.0.1", 0, 128)
        ip, port = sock.address
        h = self.engine.make_listener(
            name, sock, None, self.block("listener", f"listener.{ip}_{port}"),
            self.block("tcp", f"tcp.{name}"), None, 1, 0, 1 << 20, (), True, True, http,
            self.block("listener_http", f"listener.{ip}_{port}.http.ingress"),
            tls=tls, transport_socket_connect_timeout=handshake_timeout)
        self.listeners.append(h)
        self.keep += [sock, http, provider, table]
        return sock.address

    def tcp_listener(self, cluster, tls=None, handshake_timeout=None, name="tcp", buffer_limit=1 << 20):
        sock = self.engine.bind("127.0.0.1", 0, 128)
        ip, port = sock.address
        h = self.engine.make_listener(
            name, sock, self.clusters[cluster], self.block("listener", f"listener.{ip}_{port}"),
            self.block("tcp", f"tcp.{name}"), None, 1, 0, buffer_limit, (), True, True,
            tls=tls, transport_socket_connect_timeout=handshake_timeout)
        self.listeners.append(h)
        self.keep.append(sock)
        return sock.address

    def start(self):
        self.engine.apply(self.listeners)
        self.engine.start()
        return self

    def stop(self):
        self.engine.stop()


@pytest.fixture
def core():
    c = Core()
    yield c
    c.stop()


# ---------------------------------------------------------------- upstreams

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        size = int(self.path.split("size=")[1]) if "size=" in self.path else 0
        body = (b"x" * size) if size else f"hello {self.server.label} host={self.headers.get('host')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        data = self.rfile.read(n)
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class HttpUpstream(http.server.ThreadingHTTPServer):
    """An HTTP/1.1 upstream, TLS when given an SSLContext (handshake in the request's
    thread; the server names clients sent are kept in .snis)."""
    daemon_threads = True

    def __init__(self, ctx=None, label="upstream"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ctx = ctx
        self.label = label
        self.snis = []
        self.handshakes = 0
        if ctx is not None:
            ctx.sni_callback = lambda sslobj, name, c: self.snis.append(name)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def addr(self):
        return self.server_address[:2]

    def finish_request(self, request, client_address):
        if self.ctx is not None:
            try:
                request = self.ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
            self.handshakes += 1
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass

    def close(self):
        self.shutdown()
        self.server_close()


def tls_server_ctx(leaf, tmp_path, ca_pem=None, stem="up"):
    cert = tmp_path / f"{stem}.pem"
    key = tmp_path / f"{stem}.key"
    cert.write_bytes(leaf["chain"])
    key.write_bytes(leaf["key"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    if ca_pem is not None:
        ctx.load_verify_locations(cadata=ca_pem.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def upstream():
    u = HttpUpstream()
    yield u
    u.close()


def client_ctx(pki, cert=None, tmp_path=None, alpn=None):
    ctx = ssl.create_default_context(cadata=pki.ca_pem.decode())
    if cert is not None:
        c, k, _ = pki.files(tmp_path, cert, "client")
        ctx.load_cert_chain(c, k)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def https_get(addr, ctx, path="/", host="localhost", server_hostname="localhost", n=1, timeout=5):
    """n GETs on one TLS connection: [(status, body)], and the connection's TLS facts."""
    out = []
    with tls_connect(addr, ctx, server_hostname, timeout=timeout) as s:
        for _ in range(n):
            out.append(raw_get(s, host, path))
        facts = {"version": s.version(), "cipher": s.cipher()[0],
                 "alpn": s.selected_alpn_protocol(), "cert": s.getpeercert(binary_form=True)}
    return out, facts


def tls_connect(addr, ctx, server_hostname="localhost", session=None, timeout=5):
    raw = socket.create_connection(addr, timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)


def openssl_get(addr, ca_pem, tmp_path, version="1.3", sess_out=None, sess_in=None):
    """One GET (then close) through `openssl s_client` (a real client of its own process);
    returns whether its handshake resumed the session read from sess_in. sess_out: where
    the session (TLS 1.3: the ticket, which comes after the handshake) is saved.

    Resumption tests use this rather than Python's ssl: CPython 3.11's SSLSocket.session
    getter leaks the SSL_SESSION it duplicates (_ssl.c _ssl_session_dup), which
    LeakSanitizer reports at exit under `make test-asan`."""
    import subprocess
    ca = tmp_path / "openssl-ca.pem"
    ca.write_bytes(ca_pem)
    cmd = ["openssl", "s_client", "-connect", f"{addr[0]}:{addr[1]}", "-servername", "localhost",
           "-CAfile", str(ca), "-verify_return_error", "-ign_eof",
           "-tls1_3" if version == "1.3" else "-tls1_2"]
    if sess_out is not None:
        cmd += ["-sess_out", str(sess_out)]
    if sess_in is not None:
        cmd += ["-sess_in", str(sess_in)]
    out = subprocess.run(cmd, input=b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
                         capture_output=True, timeout=20).stdout.decode(errors="replace")
    assert "HTTP/1.1 200" in out, out[-2000:]
    assert ("Reused, " in out) != ("New, " in out), out[-2000:]
    return "Reused, " in out


def raw_get(sock, host="localhost", path="/"):
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ")[1]), body
