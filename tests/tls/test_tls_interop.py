"""TLS interop with the real Envoy 1.40 (issue 14, ENGINE): Envoy as the TLS upstream of
fastproxy (fastproxy verifies Envoy's certificate, sends SNI), and Envoy as a TLS client
of a fastproxy listener (Envoy's UpstreamTlsContext verifying fastproxy's certificate)."""
from __future__ import annotations

import socket

import pytest

from conftest import admin_get, envoy_yaml, find_envoy, http_listener, start_envoy, static_cluster
from tls_harness import (core, pki, upstream,  # noqa: F401 (fixtures)
                         raw_get, server_spec, wait_for)

pytestmark = pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found")

TLS_SOCKET = "envoy.transport_sockets.tls"
DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _files(tmp_path, pki, leaf):
    cert, key, ca = pki.files(tmp_path, leaf, "envoy")
    return cert, key, ca


def test_envoy_as_tls_upstream(core, pki, tmp_path):
    cert, key, _ = _files(tmp_path, pki, pki.leaf("envoy.test"))
    listener = http_listener([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "from envoy"}}}])
    listener["filter_chains"][0]["transport_socket"] = {"name": TLS_SOCKET, "typed_config": {
        "@type": DOWNSTREAM, "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]}}}
    proc, admin, envoy_addr = start_envoy(envoy_yaml([listener]), tmp_path)
    try:
        ctx = core.tls({"trusted_ca": pki.ca_pem, "sni": "envoy.test",
                        "san_matchers": [{"type": "DNS", "match": {"exact": "envoy.test"}}]},
                       False, "cluster.envoy.ssl")
        core.cluster("envoy", [tuple(envoy_addr)], tls=ctx)
        addr = core.http_listener("envoy")
        core.start()
        for _ in range(2):
            with socket.create_connection(addr, timeout=5) as s:
                assert raw_get(s) == (200, b"from envoy")
        st = core.stats("cluster.envoy.ssl")
        assert st["handshake"] >= 1 and st["versions.TLSv1.3"] >= 1
        stats = admin_get(admin, "/stats")
        assert "ssl.handshake: " in stats and "ssl.handshake: 0\n" not in stats
    finally:
        proc.terminate()
        proc.wait(10)


def test_envoy_as_tls_client(core, pki, upstream, tmp_path):
    _, _, ca = pki.files(tmp_path, pki.leaf("unused"))
    ctx = core.tls(server_spec(pki.leaf("fastproxy.test")), True, "listener.x.ssl")
    core.cluster("up", [upstream.addr])
    fp_addr = core.http_listener("up", tls=ctx)
    core.start()
    cluster = static_cluster("fp", [fp_addr[1]])
    cluster["transport_socket"] = {"name": TLS_SOCKET, "typed_config": {
        "@type": UPSTREAM, "sni": "fastproxy.test", "common_tls_context": {
            "validation_context": {"trusted_ca": {"filename": ca},
                                   "match_typed_subject_alt_names": [
                                       {"san_type": "DNS", "matcher": {"exact": "fastproxy.test"}}]}}}}
    listener = http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "fp"}}])
    proc, admin, envoy_addr = start_envoy(envoy_yaml([listener], [cluster]), tmp_path)
    try:
        with socket.create_connection(tuple(envoy_addr), timeout=5) as s:
            status, body = raw_get(s, host="localhost")
        assert status == 200 and body.startswith(b"hello upstream")
        assert core.stats("listener.x.ssl")["handshake"] == 1
        assert "cluster.fp.ssl.handshake: 1" in admin_get(admin, "/stats")
    finally:
        proc.terminate()
        proc.wait(10)
