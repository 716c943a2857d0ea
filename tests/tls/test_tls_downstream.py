"""TLS termination in the HTTP connection manager and the TCP proxy (issue 14, ENGINE):
real clients (curl, openssl s_client, Python's ssl) against listeners with a server
context; the listener's ssl stats as Envoy names them."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tls_harness import (core, pki, upstream,  # noqa: F401 (fixtures)
                         HttpUpstream, client_ctx, https_get, raw_get, server_spec, tls_connect,
                         wait_for)

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")


def ssl_stats(core, addr):
    return core.stats(f"listener.{addr[0]}_{addr[1]}.ssl")


def test_https_termination_python_client(core, pki, upstream):
    ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    # keep-alive: three requests over one TLS connection, one handshake
    out, facts = https_get(addr, client_ctx(pki), n=3)
    assert [s for s, _ in out] == [200, 200, 200]
    assert out[0][1] == b"hello upstream host=localhost"
    assert facts["version"] == "TLSv1.3"
    st = core.stats("listener.x.ssl")
    assert st["handshake"] == 1
    assert st["versions.TLSv1.3"] == 1
    assert st[f"ciphers.{facts['cipher']}"] == 1
    assert st["curves.X25519"] == 1
    assert st["no_certificate"] == 1            # (the client sent none, as Envoy counts it)
    assert st["connection_error"] == 0


def test_large_response_and_upload_through_tls(core, pki, upstream):
    ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    with tls_connect(addr, client_ctx(pki)) as s:
        status, body = raw_get(s, path="/?size=3000000")
        assert status == 200 and body == b"x" * 3000000
        payload = bytes(range(256)) * 4000
        s.sendall(b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: %d\r\n\r\n" % len(payload)
                  + payload)
        data = b""
        while len(data) < len(payload) or b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
            if b"\r\n\r\n" in data and len(data.partition(b"\r\n\r\n")[2]) >= len(payload):
                break
        assert data.partition(b"\r\n\r\n")[2] == payload


@pytest.mark.skipif(CURL is None, reason="curl not installed")
@pytest.mark.parametrize("args,version", [(["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.2"),
                                          (["--tlsv1.3"], "TLSv1.3")])
def test_curl_versions(core, pki, upstream, tmp_path, args, version):
    ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    _, _, ca = pki.files(tmp_path, pki.leaf("localhost"))
    r = subprocess.run([CURL, "-sS", *args, "--cacert", ca, "--resolve", f"localhost:{addr[1]}:127.0.0.1",
                        f"https://localhost:{addr[1]}/", "-w", "\n%{http_code}"],
                       capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"\n200")
    st = core.stats("listener.x.ssl")
    assert st[f"versions.{version}"] == 1 and st["handshake"] == 1


def test_tls_params_refuse_older_client(core, pki, upstream):
    ctx = core.tls(server_spec(pki.leaf("localhost"), min_version=0x0304), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    cctx = client_ctx(pki)
    cctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(addr, cctx)
    wait_for(lambda: core.stats("listener.x.ssl")["connection_error"] == 1, what="connection_error")


def _key_kind(der):
    key = x509.load_der_x509_certificate(der).public_key()
    return "RSA" if isinstance(key, rsa.RSAPublicKey) else "ECDSA" if isinstance(key, ec.EllipticCurvePublicKey) else "?"


def test_rsa_and_ecdsa_certificates_chosen_by_client(core, pki, upstream):
    rsa_leaf = pki.leaf("localhost", key_type=trustme.KeyType.RSA)
    ec_leaf = pki.leaf("localhost", key_type=trustme.KeyType.ECDSA)
    ctx = core.tls(server_spec(rsa_leaf, ec_leaf), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    c = client_ctx(pki)
    c.maximum_version = ssl.TLSVersion.TLSv1_2
    c.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    _, facts = https_get(addr, c)
    assert _key_kind(facts["cert"]) == "RSA"
    c = client_ctx(pki)
    c.maximum_version = ssl.TLSVersion.TLSv1_2
    c.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    _, facts = https_get(addr, c)
    assert _key_kind(facts["cert"]) == "ECDSA"
    st = core.stats("listener.x.ssl")
    assert st["ciphers.ECDHE-RSA-AES128-GCM-SHA256"] == 1
    assert st["ciphers.ECDHE-ECDSA-AES128-GCM-SHA256"] == 1


def test_several_certificates_of_one_type_chosen_by_sni(core, pki, upstream):
    a = pki.leaf("a.example.com")
    b = pki.leaf("*.b.example.com")
    ctx = core.tls(server_spec(a, b), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    for name in ("a.example.com", "www.b.example.com"):
        out, facts = https_get(addr, client_ctx(pki), server_hostname=name, host=name)
        assert out[0][0] == 200
        sans = x509.load_der_x509_certificate(facts["cert"]).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        assert sans == [name if name.startswith("a.") else "*.b.example.com"]
    # no SNI match: the first one
    c = client_ctx(pki)
    c.check_hostname = False
    _, facts = https_get(addr, c, server_hostname="other.example.org")
    sans = x509.load_der_x509_certificate(facts["cert"]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == ["a.example.com"]


def test_alpn_server_preference_and_no_overlap(core, pki, upstream):
    ctx = core.tls(server_spec(pki.leaf("localhost"), alpn=[b"h2", b"http/1.1"]), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    with tls_connect(addr, client_ctx(pki, alpn=["http/1.1", "h2"])) as s:
        # the server's preference (and the connection speaks HTTP/2 then: codec_type AUTO)
        assert s.selected_alpn_protocol() == "h2"
    out, facts = https_get(addr, client_ctx(pki, alpn=["spdy/3"]))
    assert facts["alpn"] is None and out[0][0] == 200      # no overlap: on without ALPN


def test_tcp_proxy_terminates_tls(core, pki, tmp_path):
    from upstreams import EchoServer
    echo = EchoServer()
    try:
        ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.t.ssl")
        core.cluster("echo", [echo.address[:2]])
        addr = core.tcp_listener("echo", tls=ctx)
        core.start()
        with tls_connect(addr, client_ctx(pki)) as s:
            payload = b"0123456789abcdef" * 20000
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                assert chunk
                got += chunk
            assert got == payload
        assert core.stats("listener.t.ssl")["handshake"] == 1
    finally:
        echo.close()


# ---------------------------------------------------------------- bad input

def _closed(sock, timeout=5):
    """The peer ends the connection (EOF or reset), whatever it sent before."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.fixture
def tls_http(core, pki, upstream):
    ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    # (2 s: long enough for a subprocess client, e.g. openssl s_client, to start and
    # finish its handshake on a loaded machine; the stalled-handshake test waits 5 s)
    addr = core.http_listener("up", tls=ctx, handshake_timeout=2.0)
    core.start()
    return addr


def test_plaintext_http_to_tls_port(core, tls_http):
    with socket.create_connection(tls_http) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        assert _closed(s)
    wait_for(lambda: core.stats("listener.x.ssl")["connection_error"] == 1, what="connection_error")
    assert core.stats("listener.x.ssl")["handshake"] == 0


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x00\x40" + b"\xff" * 64,       # garbage in a record
                                  b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])   # truncated ClientHello
def test_garbage_and_truncated_client_hello(core, tls_http, data):
    with socket.create_connection(tls_http) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        assert _closed(s)
    wait_for(lambda: core.stats("listener.x.ssl")["connection_error"] == 1, what="connection_error")
    wait_for(lambda: core.engine.active_connections() == 0, what="connection closed")


def test_stalled_handshake_times_out(core, tls_http):
    with socket.create_connection(tls_http) as s:
        s.sendall(b"\x16\x03\x01")              # a record header, and nothing more
        assert _closed(s, timeout=5)
    assert core.stats("listener.x.ssl")["connection_error"] == 1     # counted before the close
    wait_for(lambda: core.engine.active_connections() == 0, what="connection gone")


def test_renegotiation_refused(core, tls_http, pki):
    if OPENSSL is None:
        pytest.skip("openssl not installed")
    # TLS 1.2 (1.3 has no renegotiation): s_client's "R" command asks for one; the proxy
    # refuses it (no_renegotiation alert) and the connection ends cleanly, the first
    # handshake counted, no crash.
    p = subprocess.Popen([OPENSSL, "s_client", "-connect", f"127.0.0.1:{tls_http[1]}", "-tls1_2",
                          "-servername", "localhost"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: core.stats("listener.x.ssl")["handshake"] == 1, what="handshake")
        p.stdin.write(b"R\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=10)
    finally:
        p.kill()
    assert b"RENEGOTIATING" in out
    # The refusal itself (a no_renegotiation alert, which s_client reports as an error):
    # a renegotiation that succeeded would end quietly when stdin closes.
    assert b"no renegotiation" in out, out[-2000:]
    wait_for(lambda: core.engine.active_connections() == 0, what="connection closed")
    st = core.stats("listener.x.ssl")
    assert st["handshake"] == 1


def test_slow_tls_reader_pauses_the_upstream(core, pki):
    """A TLS client that does not read a large response: the proxy's buffers stay bounded
    and the upstream is paused (its sends block), as for a slow plaintext client; then the
    client reads everything, intact."""
    import threading
    import time
    total = 256 << 20
    sent = [0]
    lst = socket.create_server(("127.0.0.1", 0))

    def serve():
        c, _ = lst.accept()
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
            chunk = b"z" * 65536
            while sent[0] < total:
                c.sendall(chunk)
                sent[0] += len(chunk)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.x.ssl")
    core.cluster("up", [lst.getsockname()])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    s = tls_connect(addr, client_ctx(pki), timeout=30)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        # The upstream's sends stop: what it sent stays put, far below the response.
        # At least the socket buffers' worth must go before the upstream can block (a
        # plateau below that would be a slow start, not backpressure).
        wait_for(lambda: sent[0] >= 256 << 10, what="upstream sending")
        # A plateau: there is no event to await, so the count must stay the same over
        # several samples in a row (one stall of the loaded machine is not enough).
        last, stable = -1, 0
        for _ in range(200):
            stable = stable + 1 if sent[0] == last else 0
            if stable >= 5:
                break
            last = sent[0]
            time.sleep(0.1)
        assert stable >= 5 and sent[0] < 32 << 20, sent[0]
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        got = len(data.partition(b"\r\n\r\n")[2])
        while got < total:
            chunk = s.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == total
        assert sent[0] == total
    finally:
        s.close()
        lst.close()


def test_tcp_proxy_stalled_and_bad_handshakes(core, pki):
    from upstreams import EchoServer
    echo = EchoServer()
    try:
        ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.t.ssl")
        core.cluster("echo", [echo.address[:2]])
        addr = core.tcp_listener("echo", tls=ctx, handshake_timeout=0.5)
        core.start()
        with socket.create_connection(addr) as s:
            s.sendall(b"\x16\x03\x01")           # stalls: closed at the timeout
            assert _closed(s)
        with socket.create_connection(addr) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")   # not TLS
            assert _closed(s)
        wait_for(lambda: core.stats("listener.t.ssl")["connection_error"] == 2, what="connection_error")
        wait_for(lambda: core.engine.active_connections() == 0, what="closed")
        with tls_connect(addr, client_ctx(pki)) as s:           # and a good one still works
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
    finally:
        echo.close()


def test_response_head_and_small_body_leave_in_one_record(core, pki):
    """The writes coalesce small slices: a response's head and its small body (two slices in
    the connection's chain) go out as one TLS record, not one per slice. Counted on the
    wire: the client runs TLS over memory BIOs and reads the raw records itself."""
    import threading
    lst = socket.create_server(("127.0.0.1", 0))

    def serve():
        c, _ = lst.accept()
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")    # one segment
            c.recv(1)
    threading.Thread(target=serve, daemon=True).start()
    # TLS 1.2 without tickets: after the handshake only application records flow.
    ctx = core.tls(server_spec(pki.leaf("localhost"), max_version=0x0303,
                               disable_stateless_session_resumption=True), True, "listener.x.ssl")
    core.cluster("up", [lst.getsockname()])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    sock = socket.create_connection(addr, timeout=5)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(pki).wrap_bio(inc, out, server_hostname="localhost")

    def flush():
        data = out.read()
        if data:
            sock.sendall(data)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            inc.write(sock.recv(65536))
    flush()
    obj.write(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
    flush()
    raw = b""
    records = []
    plain = b""
    while not plain.endswith(b"hello"):
        raw += sock.recv(65536)
        while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[3:5], "big"):
            n = 5 + int.from_bytes(raw[3:5], "big")
            records.append(raw[0])
            inc.write(raw[:n])
            raw = raw[n:]
        try:
            while True:
                plain += obj.read(65536)
        except ssl.SSLWantReadError:
            pass
    sock.close()
    lst.close()
    assert plain.startswith(b"HTTP/1.1 200 OK") and plain.endswith(b"\r\n\r\nhello")
    assert records == [23], records             # one application-data record


def test_envoy_default_ciphers_and_curves_on_a_proxy_listener(pki):
    """A listener whose context sets no tls_params gets Envoy's cipher suites, not
    OpenSSL's: a TLS 1.2 client offering only suites outside Envoy's list (CBC ones) is
    refused; Envoy's AEAD ECDHE suites are taken."""
    from fastproxy import Proxy
    from fastproxy import model_tls as t
    from fastproxy.model import Cluster, Endpoint, Listener, TcpProxy
    from upstreams import EchoServer
    leaf = pki.leaf("localhost")
    tls = t.DownstreamTlsContext(common_tls_context=t.CommonTlsContext(tls_certificates=(t.TlsCertificate(
        t.DataSource(inline_bytes=leaf["chain"]), t.DataSource(inline_bytes=leaf["key"])),)))
    echo = EchoServer()
    proxy = Proxy([Listener("l", TcpProxy("c"), stat_prefix="t", tls=tls)],
                  [Cluster("c", [Endpoint("127.0.0.1", echo.port)])], concurrency=1)
    proxy.start()
    try:
        addr = proxy.listener_address("l")

        def tls12(ciphers=None):
            ctx = client_ctx(pki)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            if ciphers:
                ctx.set_ciphers(ciphers)
            with tls_connect(addr, ctx) as s:
                return s.cipher()[0]
        assert tls12() in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
                           "ECDHE-ECDSA-AES256-GCM-SHA384")
        assert tls12("ECDHE-ECDSA-AES256-GCM-SHA384") == "ECDHE-ECDSA-AES256-GCM-SHA384"
        for ciphers in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA"):
            with pytest.raises(ssl.SSLError):
                tls12(ciphers)
    finally:
        proxy.stop(0.5)
        echo.close()


def test_server_order_of_cipher_suites_decides(core, pki, upstream):
    """As in Envoy (unless prefer_client_ciphers): a TLS 1.2 client that prefers AES-256
    gets the listener's first suite, AES-128, both being on both lists."""
    spec = server_spec(pki.leaf("localhost"))
    spec["cipher_suites"] = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"]
    ctx = core.tls(spec, True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    c = client_ctx(pki)
    c.maximum_version = ssl.TLSVersion.TLSv1_2
    c.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
    with tls_connect(addr, c) as s:
        assert s.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
