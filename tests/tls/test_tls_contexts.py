"""TLS contexts (issue 14, ENGINE): mutual TLS on a listener (and each way a client
certificate fails, counted as Envoy counts it), session resumption (stateful cache,
tickets with given keys, disabled), rotation without a restart (TlsContextHandle.update),
bad specs, the kTLS probe."""
from __future__ import annotations

import os
import socket
import ssl

import pytest

from fastproxy import _core
from tls_harness import (core, pki, upstream,  # noqa: F401 (fixtures)
                         Pki, client_ctx, https_get, openssl_get, raw_get, server_spec, tls_connect,
                         wait_for)


@pytest.fixture
def mtls(core, pki, upstream):
    def make(**kw):
        spec = server_spec(pki.leaf("localhost"), trusted_ca=pki.ca_pem,
                           require_client_certificate=True, **kw)
        ctx = core.tls(spec, True, "listener.m.ssl")
        core.cluster("up", [upstream.addr])
        addr = core.http_listener("up", tls=ctx)
        core.start()
        return addr
    return make


def _request_fails(addr, ctx):
    """TLS 1.3: the server refuses the client's certificate after the client finished its
    handshake, so the failure shows on the first read."""
    try:
        with tls_connect(addr, ctx) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            return s.recv(100) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_mtls_accepts_a_trusted_client(core, pki, mtls, tmp_path):
    addr = mtls()
    out, _ = https_get(addr, client_ctx(pki, pki.leaf("client.test"), tmp_path))
    assert out[0][0] == 200
    st = core.stats("listener.m.ssl")
    assert st["handshake"] == 1 and st["no_certificate"] == 0


def test_mtls_no_client_certificate(core, pki, mtls):
    addr = mtls()
    assert _request_fails(addr, client_ctx(pki))
    wait_for(lambda: core.stats("listener.m.ssl")["fail_verify_no_cert"] == 1, what="fail_verify_no_cert")
    assert core.stats("listener.m.ssl")["connection_error"] == 1


def test_mtls_untrusted_client(core, pki, mtls, tmp_path):
    addr = mtls()
    other = Pki()
    assert _request_fails(addr, client_ctx(pki, other.leaf("client.test"), tmp_path))
    wait_for(lambda: core.stats("listener.m.ssl")["fail_verify_error"] == 1, what="fail_verify_error")


def test_mtls_expired_client(core, pki, mtls, tmp_path):
    addr = mtls()
    assert _request_fails(addr, client_ctx(pki, pki.leaf("client.test", expired=True), tmp_path))
    wait_for(lambda: core.stats("listener.m.ssl")["fail_verify_error"] == 1, what="fail_verify_error")


def test_mtls_allow_expired(core, pki, mtls, tmp_path):
    addr = mtls(allow_expired_certificate=True)
    out, _ = https_get(addr, client_ctx(pki, pki.leaf("client.test", expired=True), tmp_path))
    assert out[0][0] == 200


def test_mtls_wrong_san(core, pki, mtls, tmp_path):
    addr = mtls(san_matchers=[{"type": "DNS", "match": {"exact": "good.client"}},
                              {"type": "EMAIL", "match": {"suffix": "@trusted.test"}}])
    assert _request_fails(addr, client_ctx(pki, pki.leaf("bad.client"), tmp_path))
    wait_for(lambda: core.stats("listener.m.ssl")["fail_verify_san"] == 1, what="fail_verify_san")
    out, _ = https_get(addr, client_ctx(pki, pki.leaf("good.client"), tmp_path))
    assert out[0][0] == 200
    out, _ = https_get(addr, client_ctx(pki, pki.leaf("svc@trusted.test"), tmp_path))
    assert out[0][0] == 200


def test_mtls_accept_untrusted(core, pki, mtls, tmp_path):
    """Envoy's DefaultCertValidator: the untrusted chain is counted (fail_verify_error) and
    the certificate accepted."""
    addr = mtls(trust_chain_verification="ACCEPT_UNTRUSTED")
    out, _ = https_get(addr, client_ctx(pki, Pki().leaf("client.test"), tmp_path))
    assert out[0][0] == 200
    st = core.stats("listener.m.ssl")
    assert st["fail_verify_error"] == 1 and st["handshake"] == 1


def test_mtls_intermediate_in_trusted_ca_is_an_anchor(core, upstream, tmp_path):
    """As Envoy (X509_V_FLAG_PARTIAL_CHAIN): trusted_ca holding only an intermediate trusts
    the clients it issued, without their root."""
    from tls_certs import CA, cert_pem, key_pem
    root = CA("partial-chain root")
    inter = root.intermediate("partial-chain intermediate")
    server = Pki()
    spec = server_spec(server.leaf("localhost"), trusted_ca=inter.cert_pem,
                       require_client_certificate=True)
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=core.tls(spec, True, "listener.m.ssl"))
    core.start()
    leaf = inter.issue("client.test", dns=["client.test"], client=True)
    (tmp_path / "c.pem").write_bytes(cert_pem(leaf.cert) + inter.cert_pem)
    (tmp_path / "c.key").write_bytes(key_pem(leaf.key))
    ctx = client_ctx(server)
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    out, _ = https_get(addr, ctx)
    assert out[0][0] == 200
    assert core.stats("listener.m.ssl")["fail_verify_error"] == 0


# ---------------------------------------------------------------- resumption

@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_session_resumption_default(core, pki, upstream, version, tmp_path):
    ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    sess = tmp_path / "session.pem"
    assert not openssl_get(addr, pki.ca_pem, tmp_path, version, sess_out=sess)
    assert openssl_get(addr, pki.ca_pem, tmp_path, version, sess_in=sess)
    assert core.stats("listener.x.ssl")["session_reused"] == 1


def test_session_ticket_keys_shared_by_two_listeners(core, pki, upstream, tmp_path):
    """Two listeners of the same certificate and validation resume each other's sessions."""
    keys = [os.urandom(80)]
    leaf = pki.leaf("localhost")
    a = core.tls(server_spec(leaf, session_ticket_keys=keys,
                             disable_stateful_session_resumption=True), True, "listener.a.ssl")
    b = core.tls(server_spec(leaf, session_ticket_keys=keys,
                             disable_stateful_session_resumption=True), True, "listener.b.ssl")
    core.cluster("up", [upstream.addr])
    addr_a = core.http_listener("up", tls=a, name="a")
    addr_b = core.http_listener("up", tls=b, name="b")
    core.start()
    sess = tmp_path / "session.pem"
    assert not openssl_get(addr_a, pki.ca_pem, tmp_path, sess_out=sess)
    assert openssl_get(addr_b, pki.ca_pem, tmp_path, sess_in=sess)     # b decrypts a's ticket
    assert core.stats("listener.b.ssl")["session_reused"] == 1


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_session_ticket_keys_do_not_carry_a_session_to_other_validation(core, pki, upstream, version, tmp_path):
    """The same certificate and ticket keys, but B trusts another CA: a session made on A
    (whose client certificate was checked against A's CA, or not asked for) must not
    resume on B, which would skip B's verification (the session ID context differs)."""
    keys = [os.urandom(80)]
    leaf = pki.leaf("localhost")
    a = core.tls(server_spec(leaf, session_ticket_keys=keys, trusted_ca=pki.ca_pem,
                             disable_stateful_session_resumption=True), True, "listener.a.ssl")
    b = core.tls(server_spec(leaf, session_ticket_keys=keys, trusted_ca=Pki().ca_pem,
                             disable_stateful_session_resumption=True), True, "listener.b.ssl")
    core.cluster("up", [upstream.addr])
    addr_a = core.http_listener("up", tls=a, name="a")
    addr_b = core.http_listener("up", tls=b, name="b")
    core.start()
    sess = tmp_path / "session.pem"
    assert not openssl_get(addr_a, pki.ca_pem, tmp_path, version, sess_out=sess)
    assert openssl_get(addr_a, pki.ca_pem, tmp_path, version, sess_in=sess)   # good on A
    assert not openssl_get(addr_b, pki.ca_pem, tmp_path, version, sess_in=sess)
    assert core.stats("listener.b.ssl")["session_reused"] == 0


def test_san_checks_need_a_trusted_ca(core, pki):
    """Without trusted_ca nobody verified the chain, so a SAN proves nothing: refused (as
    Envoy refuses it); hash pins alone stay allowed."""
    with pytest.raises(ValueError, match="san_matchers/auto_san_validation: .*without trusted_ca"):
        core.tls(server_spec(pki.leaf("localhost"),
                             san_matchers=[{"type": "DNS", "match": {"exact": "client.test"}}]),
                 True, "listener.x.ssl")
    with pytest.raises(ValueError, match="without trusted_ca"):
        core.tls({"auto_san_validation": True, "sni": "localhost"}, False, "cluster.x.ssl")
    core.tls(server_spec(pki.leaf("localhost"), cert_hashes=[b"\0" * 32]), True, "listener.y.ssl")
    core.tls({"auto_san_validation": True, "trusted_ca": pki.ca_pem}, False, "cluster.y.ssl")


def test_resumption_disabled(core, pki, upstream, tmp_path):
    ctx = core.tls(server_spec(pki.leaf("localhost"), disable_stateless_session_resumption=True,
                               disable_stateful_session_resumption=True), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    sess = tmp_path / "session.pem"
    for version in ("1.2", "1.3"):
        assert not openssl_get(addr, pki.ca_pem, tmp_path, version, sess_out=sess)
        if sess.exists():               # (nothing resumable given: s_client may save nothing)
            assert not openssl_get(addr, pki.ca_pem, tmp_path, version, sess_in=sess)
            sess.unlink()
    assert core.stats("listener.x.ssl")["session_reused"] == 0


# ---------------------------------------------------------------- rotation

def test_rotation_new_handshakes_use_the_new_certificate(core, pki, upstream):
    from cryptography import x509
    ctx = core.tls(server_spec(pki.leaf("localhost", cn="first")), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()

    def cn(der):
        return x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            x509.oid.NameOID.COMMON_NAME)[0].value

    old = tls_connect(addr, client_ctx(pki))
    assert raw_get(old)[0] == 200
    assert cn(old.getpeercert(binary_form=True)) == "first"
    ctx.update(server_spec(pki.leaf("localhost", cn="second")))
    wait_for(lambda: cn(https_get(addr, client_ctx(pki))[1]["cert"]) == "second", what="new certificate")
    assert raw_get(old)[0] == 200                           # the existing connection goes on
    old.close()
    # A bad spec leaves the context in force.
    with pytest.raises(ValueError, match=r"certificates\[0\]: key does not match certificate"):
        ctx.update(server_spec({"chain": pki.leaf("localhost")["chain"], "key": pki.leaf("x")["key"]}))
    assert cn(https_get(addr, client_ctx(pki))[1]["cert"]) == "second"


def test_rotation_of_a_client_context(core, pki, tmp_path):
    from tls_harness import HttpUpstream, tls_server_ctx
    up = HttpUpstream(tls_server_ctx(pki.leaf("upstream.test"), tmp_path), label="u")
    try:
        other = Pki()
        ctx = core.tls({"trusted_ca": other.ca_pem, "sni": "upstream.test"}, False, "cluster.up.ssl")
        core.cluster("up", [up.addr], tls=ctx)
        addr = core.http_listener("up")
        core.start()
        with socket.create_connection(addr) as s:
            assert raw_get(s)[0] == 503
        ctx.update({"trusted_ca": pki.ca_pem, "sni": "upstream.test"})      # the right CA now
        def ok():
            with socket.create_connection(addr) as s:
                return raw_get(s)[0] == 200
        wait_for(ok, what="the rotated CA in use")
    finally:
        up.close()


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("spec,message", [
    ({}, "certificates: a server context needs at least one"),
    ({"certificates": [{"chain": b"junk", "key": b"junk"}]}, r"certificates\[0\].chain: no PEM certificate"),
    ({"certificates": "x"}, "certificates: expected a list"),
    ({"bogus": 1}, "bogus: unknown key"),
    ({"min_version": 0x0305}, "min_version: expected one of"),
    ({"cipher_suites": ["NOPE"]}, "cipher_suites: none of"),
    ({"ecdh_curves": ["P-999"]}, "ecdh_curves"),
    ({"san_matchers": [{"type": "DNS", "match": {"regex": "x"}}]}, r"san_matchers\[0\].match: exactly one"),
    ({"san_matchers": [{"type": "FOO", "match": {"exact": "x"}}]}, r"san_matchers\[0\].type"),
    ({"cert_hashes": [b"short"]}, r"cert_hashes\[0\]: expected 32 bytes"),
    ({"session_ticket_keys": [b"x" * 10]}, r"session_ticket_keys\[0\]: expected 80 bytes"),
    ({"trusted_ca": b"not pem"}, "trusted_ca: no PEM certificate"),
])
def test_bad_server_specs(core, pki, spec, message):
    full = dict(spec)
    if "certificates" not in spec and spec != {}:
        full["certificates"] = [pki.leaf("localhost")]
    with pytest.raises(ValueError, match=message):
        core.tls(full, True, "listener.x.ssl")


def test_encrypted_private_key(core, pki, upstream):
    from cryptography.hazmat.primitives import serialization
    leaf = pki.leaf("localhost")
    key = serialization.load_pem_private_key(leaf["key"], None)
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(ValueError, match=r"certificates\[0\].key: cannot read"):
        core.tls(server_spec({"chain": leaf["chain"], "key": enc}), True, "listener.x.ssl")
    ctx = core.tls(server_spec({"chain": leaf["chain"], "key": enc, "password": b"secret"}), True,
                   "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    assert https_get(addr, client_ctx(pki))[0][0][0] == 200


def test_ktls(core, pki, upstream):
    """kTLS: where the kernel has the tls module, the keys go to the kernel after the
    handshake and bodies may splice. Not verifiable on a kernel without it."""
    if not _core.ktls_available():
        pytest.skip("the kernel has no tls module (TCP_ULP \"tls\" refused): kTLS not available")
    ctx = core.tls(server_spec(pki.leaf("localhost")), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    addr = core.http_listener("up", tls=ctx)
    core.start()
    out, _ = https_get(addr, client_ctx(pki), path="/?size=4000000")
    assert out[0] == (200, b"x" * 4000000)
    assert core.stats("http.ingress")["bytes_spliced"] > 0


def test_mtls_with_curl_client_certificate(core, pki, mtls, tmp_path):
    import shutil
    import subprocess
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    addr = mtls()
    cert, key, ca = pki.files(tmp_path, pki.leaf("client.test"), "client")
    url = f"https://localhost:{addr[1]}/"
    base = [curl, "-sS", "--cacert", ca, "--resolve", f"localhost:{addr[1]}:127.0.0.1", "-o", "/dev/null",
            "-w", "%{http_code}"]
    r = subprocess.run([*base, "--cert", cert, "--key", key, url], capture_output=True, timeout=10)
    assert r.stdout == b"200", r.stderr
    r = subprocess.run([*base, url], capture_output=True, timeout=10)       # no certificate
    assert r.stdout != b"200"
    wait_for(lambda: core.stats("listener.m.ssl")["fail_verify_no_cert"] == 1, what="fail_verify_no_cert")


def test_rotation_reaches_every_worker(pki, upstream):
    """Two workers: update() posts the new context to each; every new handshake, whichever
    worker accepts it, uses the new certificate."""
    from cryptography import x509
    from tls_harness import Core
    c = Core(nworkers=2)
    try:
        ctx = c.tls(server_spec(pki.leaf("localhost", cn="old")), True, "listener.x.ssl")
        c.cluster("up", [upstream.addr])
        addr = c.http_listener("up", tls=ctx)
        c.start()
        ctx.update(server_spec(pki.leaf("localhost", cn="new")))

        def cn():
            der = https_get(addr, client_ctx(pki))[1]["cert"]
            return x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
                x509.oid.NameOID.COMMON_NAME)[0].value
        wait_for(lambda: cn() == "new", what="the new certificate")
        assert all(cn() == "new" for _ in range(20))       # (the kernel spreads them over both)
    finally:
        c.stop()
