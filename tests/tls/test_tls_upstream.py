"""TLS origination (issue 14, ENGINE): the HTTP pool's and the TCP proxy's upstream
connections with a client context: verification against trusted_ca, SNI and auto_sni,
auto_san_validation, client certificates (mutual TLS), session reuse across pooled
connections; a handshake or verification failure is a connect failure (503 UF)."""
from __future__ import annotations

import socket
import ssl
import time

import pytest

from tls_harness import (core, pki, upstream,  # noqa: F401 (fixtures)
                         HttpUpstream, client_ctx, https_get, raw_get, server_spec, tls_connect,
                         tls_server_ctx, wait_for)


def http_get(addr, host="localhost", path="/"):
    with socket.create_connection(addr, timeout=5) as s:
        return raw_get(s, host, path)


@pytest.fixture
def tls_upstream(pki, tmp_path):
    u = HttpUpstream(tls_server_ctx(pki.leaf("upstream.test"), tmp_path), label="tls-upstream")
    yield u
    u.close()


def test_upstream_tls_verified_with_sni(core, pki, tls_upstream, tmp_path):
    ctx = core.tls({"trusted_ca": pki.ca_pem, "sni": "upstream.test",
                    "san_matchers": [{"type": "DNS", "match": {"exact": "upstream.test"}}]},
                   False, "cluster.up.ssl")
    core.cluster("up", [tls_upstream.addr], tls=ctx)
    addr = core.http_listener("up")
    core.start()
    for _ in range(3):
        status, body = http_get(addr)
        assert status == 200 and body == b"hello tls-upstream host=localhost"
    assert tls_upstream.snis == ["upstream.test"]           # one pooled connection
    st = core.stats("cluster.up.ssl")
    assert st["handshake"] == 1 and st["versions.TLSv1.3"] == 1
    assert core.stats("cluster.up")["upstream_cx_total"] == 1


def test_upstream_verify_failure_is_503_uf(core, pki, tls_upstream, tmp_path):
    other = type(pki)()                                     # another CA: untrusted
    ctx = core.tls({"trusted_ca": other.ca_pem, "sni": "upstream.test"}, False, "cluster.up.ssl")
    core.cluster("up", [tls_upstream.addr], tls=ctx)
    log = tmp_path / "access.log"
    addr = core.http_listener("up", access_log=str(log))
    core.start()
    status, body = http_get(addr)
    assert status == 503
    assert b"connection failure" in body
    st = core.stats("cluster.up.ssl")
    assert st["fail_verify_error"] == 1 and st["connection_error"] == 1 and st["handshake"] == 0
    assert core.stats("cluster.up")["upstream_cx_connect_fail"] == 1
    wait_for(lambda: log.exists() and log.read_text(), what="access log")
    assert log.read_text().split() == ["503", "UF"]


def test_upstream_wrong_san_is_503(core, pki, tls_upstream):
    ctx = core.tls({"trusted_ca": pki.ca_pem,
                    "san_matchers": [{"type": "DNS", "match": {"suffix": ".elsewhere"}}]},
                   False, "cluster.up.ssl")
    core.cluster("up", [tls_upstream.addr], tls=ctx)
    addr = core.http_listener("up")
    core.start()
    assert http_get(addr)[0] == 503
    assert core.stats("cluster.up.ssl")["fail_verify_san"] == 1


def test_upstream_cert_hash_pin(core, pki, tmp_path):
    import hashlib
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    leaf = pki.leaf("upstream.test")
    der = x509.load_pem_x509_certificate(leaf["chain"]).public_bytes(Encoding.DER)
    up = HttpUpstream(tls_server_ctx(leaf, tmp_path), label="pinned")
    try:
        good = core.tls({"cert_hashes": [hashlib.sha256(der).digest()]}, False, "cluster.good.ssl")
        bad = core.tls({"cert_hashes": [b"\0" * 32]}, False, "cluster.bad.ssl")
        core.cluster("good", [up.addr], tls=good)
        core.cluster("bad", [up.addr], tls=bad)
        a = core.http_listener("good", name="a")
        b = core.http_listener("bad", name="b")
        core.start()
        assert http_get(a)[0] == 200
        assert http_get(b)[0] == 503
        assert core.stats("cluster.bad.ssl")["fail_verify_cert_hash"] == 1
    finally:
        up.close()


def test_auto_sni_and_auto_san_validation(core, pki, tmp_path):
    up = HttpUpstream(tls_server_ctx(pki.leaf("a.test", "b.test"), tmp_path), label="multi")
    try:
        ctx = core.tls({"trusted_ca": pki.ca_pem, "auto_sni": True, "auto_san_validation": True},
                       False, "cluster.up.ssl")
        core.cluster("up", [up.addr], tls=ctx)
        addr = core.http_listener("up")
        core.start()
        assert http_get(addr, host="a.test:8443")[0] == 200
        assert http_get(addr, host="b.test")[0] == 200
        assert http_get(addr, host="a.test")[0] == 200       # pooled: the a.test connection
        assert up.snis == ["a.test", "b.test"]
        assert http_get(addr, host="c.test")[0] == 503      # not in the certificate
        assert core.stats("cluster.up.ssl")["fail_verify_san"] == 1
    finally:
        up.close()


def test_upstream_client_certificate(core, pki, tmp_path):
    up = HttpUpstream(tls_server_ctx(pki.leaf("upstream.test"), tmp_path, ca_pem=pki.ca_pem), label="mtls")
    try:
        with_cert = core.tls({"trusted_ca": pki.ca_pem, "sni": "upstream.test",
                              "certificates": [pki.leaf("client.test")]}, False, "cluster.m.ssl")
        without = core.tls({"trusted_ca": pki.ca_pem, "sni": "upstream.test"}, False, "cluster.n.ssl")
        core.cluster("m", [up.addr], tls=with_cert)
        core.cluster("n", [up.addr], tls=without)
        a = core.http_listener("m", name="a")
        b = core.http_listener("n", name="b")
        core.start()
        assert http_get(a)[0] == 200
        # TLS 1.3: the server refuses the missing certificate after the client's handshake
        # completed: the request fails then (no response), not at connect.
        assert http_get(b)[0] in (502, 503)
    finally:
        up.close()


def test_session_reuse_across_pooled_connections(core, pki, tls_upstream):
    ctx = core.tls({"trusted_ca": pki.ca_pem, "sni": "upstream.test", "max_session_keys": 1},
                   False, "cluster.up.ssl")
    # No pooling: each request its own connection, so the second resumes the first's session.
    core.cluster("up", [tls_upstream.addr], tls=ctx, max_requests_per_connection=1)
    addr = core.http_listener("up")
    core.start()
    for _ in range(3):
        assert http_get(addr)[0] == 200
    st = core.stats("cluster.up.ssl")
    assert st["handshake"] == 3
    assert st["session_reused"] >= 2


def test_tcp_proxy_originates_tls(core, pki, tls_upstream):
    ctx = core.tls({"trusted_ca": pki.ca_pem, "sni": "upstream.test"}, False, "cluster.up.ssl")
    core.cluster("up", [tls_upstream.addr], tls=ctx)
    addr = core.tcp_listener("up")
    core.start()
    with socket.create_connection(addr, timeout=5) as s:
        assert raw_get(s) == (200, b"hello tls-upstream host=localhost")
    assert core.stats("cluster.up.ssl")["handshake"] == 1


def test_tcp_proxy_tls_both_ways(core, pki, tls_upstream):
    down = core.tls(server_spec(pki.leaf("localhost")), True, "listener.t.ssl")
    up = core.tls({"trusted_ca": pki.ca_pem, "sni": "upstream.test"}, False, "cluster.up.ssl")
    core.cluster("up", [tls_upstream.addr], tls=up)
    addr = core.tcp_listener("up", tls=down)
    core.start()
    with tls_connect(addr, client_ctx(pki)) as s:
        assert raw_get(s, path="/?size=1000000") == (200, b"x" * 1000000)
    assert core.stats("listener.t.ssl")["handshake"] == 1
    assert core.stats("cluster.up.ssl")["handshake"] == 1


def test_tcp_proxy_upstream_verify_failure_tries_next_then_closes(core, pki, tls_upstream):
    other = type(pki)()
    ctx = core.tls({"trusted_ca": other.ca_pem}, False, "cluster.up.ssl")
    core.cluster("up", [tls_upstream.addr], tls=ctx)
    addr = core.tcp_listener("up")
    core.start()
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert s.recv(100) == b""
    assert core.stats("cluster.up.ssl")["fail_verify_error"] == 1
    assert core.stats("cluster.up")["upstream_cx_connect_fail"] == 1


def test_set_params_turns_a_cluster_to_tls(core, pki, tls_upstream, upstream):
    """ClusterHandle.set_params(tls=...): the cluster's new connections use TLS from then on
    (a config update), and tls=None turns it back to plaintext."""
    h = core.cluster("up", [upstream.addr])
    addr = core.http_listener("up")
    core.start()
    assert http_get(addr) == (200, b"hello upstream host=localhost")
    ctx = core.tls({"trusted_ca": pki.ca_pem, "sni": "upstream.test"}, False, "cluster.up.ssl")
    h.set_hosts(__import__("fastproxy")._core.make_hostset([(*tls_upstream.addr, "")], [0]))
    h.set_params("ROUND_ROBIN", 5.0, max_requests_per_connection=1, tls=ctx)
    wait_for(lambda: http_get(addr)[1] == b"hello tls-upstream host=localhost", what="TLS upstream")
    assert core.stats("cluster.up.ssl")["handshake"] >= 1
    with pytest.raises(ValueError, match="is a server context"):
        h.set_params("ROUND_ROBIN", 5.0, tls=core.tls(
            {"certificates": [pki.leaf("x")]}, True, "listener.y.ssl"))


class SniffingUpstream(HttpUpstream):
    """One address that speaks both: TLS when the client's first byte is a handshake record
    (0x16), plaintext HTTP otherwise."""

    def finish_request(self, request, client_address):
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first == b"\x16":
            HttpUpstream.finish_request(self, request, client_address)
        else:
            super(HttpUpstream, self).finish_request(request, client_address)


def test_tls_change_retires_pooled_plaintext_connections(core, pki, tmp_path):
    """A cluster turned from plaintext to TLS on the same endpoint: its keep-alive connection
    in the pool is plaintext, so the next request must not take it, but go over a new TLS
    connection (the upstream sees a handshake)."""
    up = SniffingUpstream(tls_server_ctx(pki.leaf("upstream.test"), tmp_path), label="sniff")
    try:
        h = core.cluster("up", [up.addr])
        addr = core.http_listener("up")
        core.start()
        assert http_get(addr)[0] == 200
        assert http_get(addr)[0] == 200
        assert up.handshakes == 0
        assert core.stats("cluster.up")["upstream_cx_total"] == 1      # (pooled, reused)
        ctx = core.tls({"trusted_ca": pki.ca_pem, "sni": "upstream.test"}, False, "cluster.up.ssl")
        h.set_params("ROUND_ROBIN", 5.0, tls=ctx)
        # (the workers take the new params from a message: the first requests may precede it)
        wait_for(lambda: http_get(addr)[0] == 200 and up.handshakes >= 1, timeout=3,
                 what="a request over TLS")
        n = up.handshakes
        assert http_get(addr)[0] == 200
        assert up.handshakes == n                   # the TLS connection is pooled in turn
        assert core.stats("cluster.up.ssl")["handshake"] == n
    finally:
        up.close()
