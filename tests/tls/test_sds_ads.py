"""TLS secrets over xDS (SDS): an SdsSecretConfig whose sds_config is ``ads`` (the
bootstrap's ADS stream) or an api_config_source (the SecretDiscoveryService's own stream),
subscribed by name from the test control plane (tests/xds_control_plane.py), state of the
world and delta.

End to end, with real TLS clients and servers (Python's ssl) and the proxy's core TLS:
a listener whose certificate comes over xDS warms (is not bound) until the secret comes,
then serves it; a pushed certificate is what a new handshake gets while a connection
opened before goes on; a secret whose key does not match its certificate is NACKed with
the reason and the old one stays; a secret the server removes stays, and is asked for
again on a new stream; a cluster's client certificate and trusted CA over ADS reach a real
mutual-TLS upstream; session ticket keys over ADS; a listener (LDS) or cluster (CDS) whose
new version names a secret not there yet warms while its previous version serves. Real
Envoy 1.40 on the same bootstrap and control plane serves the same pushed certificates,
NACKs the same bad secret and keeps a removed one, state of the world and delta."""
from __future__ import annotations

import base64
import os
import socket
import ssl

import pytest
import yaml

from conftest import find_envoy, socket_address, start_envoy, static_cluster, wait_for
from fastproxy import Proxy
from upstreams import EchoServer

xcp = pytest.importorskip("xds_control_plane", reason="grpcio and xds-protos (the xds extra) are not installed")
trustme = pytest.importorskip("trustme")
from test_sds import read_line, server_name_seen, tls_upstream, write_pem  # noqa: E402

ENVOY = find_envoy()
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def cert_secret(name, cert, key_of=None):
    """A Secret resource holding ``cert`` inline (its key, or ``key_of``'s: a mismatch)."""
    chain, key = cert.cert_chain_pems[0].bytes().decode(), (key_of or cert).private_key_pem.bytes().decode()
    return {"name": name, "tls_certificate": {"certificate_chain": {"inline_string": chain},
                                              "private_key": {"inline_string": key}}}


def ca_secret(name, ca):
    return {"name": name, "validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.bytes().decode()}}}


def sds_source(kind, api_type, fetch_timeout):
    if kind == "ads":
        return {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": fetch_timeout}
    return {"api_config_source": {"api_type": api_type, "transport_api_version": "V3",
                                  "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "resource_api_version": "V3", "initial_fetch_timeout": fetch_timeout}


def bootstrap(cp_port, *, listeners, clusters, api_type="GRPC", kind="ads"):
    boot = {"node": {"id": "node-1", "cluster": "test-cluster"},
            "static_resources": {"listeners": listeners,
                                 "clusters": clusters + [static_cluster("xds", [cp_port],
                                                                        typed_extension_protocol_options=H2)]},
            "admin": {"address": socket_address(0)}}
    if kind == "ads":
        boot["dynamic_resources"] = {"ads_config": {"api_type": api_type, "transport_api_version": "V3",
                                                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}}
    return yaml.safe_dump(boot, sort_keys=False)


def tls_listener(echo_port_cluster, source):
    """A TCP listener to ``echo_port_cluster`` terminating TLS with the secret "server"."""
    return {"name": "tls", "address": socket_address(0), "filter_chains": [{
        "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "t", "cluster": echo_port_cluster}}],
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": TLS + "DownstreamTlsContext",
            "common_tls_context": {"tls_certificate_sds_secret_configs": [
                {"name": "server", "sds_config": source}]}}}}]}


@pytest.mark.parametrize("api_type,kind", [("GRPC", "ads"), ("DELTA_GRPC", "ads"), ("GRPC", "api")])
def test_listener_certificate_over_xds(api_type, kind, ca):
    echo = EchoServer()
    one, two, other = ca.issue_cert("one.test"), ca.issue_cert("two.test"), ca.issue_cert("other.test")
    with xcp.ControlPlane() as cp:
        text = bootstrap(cp.port, listeners=[tls_listener("echo", sds_source(kind, api_type, "0.3s"))],
                         clusters=[static_cluster("echo", [echo.port])], api_type=api_type, kind=kind)
        proxy = Proxy.from_envoy(text, concurrency=1).start()
        try:
            # Warming: subscribed by name, not bound until the secret comes (start() went on
            # after the initial_fetch_timeout).
            cp.wait_for(lambda rs: any(r.type_url == xcp.SECRET and r.resource_names == ["server"] for r in rs))
            service = "ads" if kind == "ads" else "sds"     # (api: the SecretDiscoveryService's own stream)
            assert all(r.service == service for r in cp.requests if r.type_url == xcp.SECRET)
            assert proxy.warming_listeners() == ["tls"]
            with pytest.raises(KeyError):
                proxy.listener_address("tls")
            assert proxy.stats()["listener_manager.total_listeners_warming"] == 1

            cp.set(xcp.SECRET, [cert_secret("server", one)], "s1")
            wait_for(lambda: proxy.warming_listeners() == [], msg="listener warm")
            addr = proxy.listener_address("tls")
            before, name = server_name_seen(addr, ca)
            assert name == "one.test"
            before.sendall(b"ping")
            assert before.recv(64) == b"ping"
            cp.wait_answered()
            assert not any(r.nack for r in cp.acks(xcp.SECRET))

            # Rotation: a new handshake gets the new certificate, the old connection goes on.
            cp.set(xcp.SECRET, [cert_secret("server", two)], "s2")
            wait_for(lambda: proxy.stats().get("sds.server.update_success") == 2, msg="s2 applied")
            after, name = server_name_seen(addr, ca)
            assert name == "two.test"
            after.sendall(b"new")
            assert after.recv(64) == b"new"
            before.sendall(b"old")
            assert before.recv(64) == b"old"
            after.close()

            # A key that is not the certificate's: NACKed with the reason, the old one stays.
            cp.set(xcp.SECRET, [cert_secret("server", other, key_of=one)], "s3")
            cp.wait_for(lambda rs: any(r.type_url == xcp.SECRET and r.nack for r in rs))
            nack = [r for r in cp.requests if r.type_url == xcp.SECRET and r.nack][0]
            assert "resources[0]" in nack.error_detail and "key" in nack.error_detail, nack.error_detail
            if not nack.delta:
                assert nack.version_info == "s2"
            assert proxy.stats()["sds.server.update_rejected"] == 1
            again, name = server_name_seen(addr, ca)
            assert name == "two.test"
            again.close()

            # Removed by the server (delta: removed_resources; SotW: left out): the last good
            # secret stays, as in Envoy.
            cp.set(xcp.SECRET, [], "s4")
            cp.wait_answered()
            again, name = server_name_seen(addr, ca)
            assert name == "two.test"
            again.close()

            # The stream fails: the secret is asked for again on the next one, and kept meanwhile.
            n = len(cp.requests)
            cp.drop_streams()
            cp.wait_for(lambda rs: any(r.type_url == xcp.SECRET and not r.response_nonce
                                       and r.resource_names == ["server"] for r in rs[n:]), timeout=30)
            again, name = server_name_seen(addr, ca)
            assert name == "two.test"
            again.close()

            before.sendall(b"still")
            assert before.recv(64) == b"still"
            before.close()
            stats = proxy.stats()
            assert proxy.draining_listeners() == [] and stats["listener_manager.listener_modified"] == 0
            assert stats["sds.server.update_success"] >= 2 and stats["control_plane.connected_state"] == 1

            # The dump: the secret at its version, its key redacted.
            secrets = proxy.config_dump()["configs"][-1]
            (entry,) = secrets["dynamic_active_secrets"]
            assert (entry["name"], entry["version_info"]) == ("server", "s2")
            assert entry["secret"]["tls_certificate"]["private_key"] == {"inline_string": "[redacted]"}
        finally:
            proxy.stop(0.5)
            echo.close()


def test_secret_over_ads_naming_files_rotates_when_they_change(ca, tmp_path):
    """A secret from the management server that names certificate files: its files are
    watched as Envoy watches them (a move onto their paths rotates, no new response), and
    the same secret sent again at a new version after the files changed rotates too."""
    echo = EchoServer()
    chain, key = write_pem(tmp_path, "server", ca.issue_cert("one.test"))
    by_files = {"name": "server", "tls_certificate": {"certificate_chain": {"filename": str(chain)},
                                                      "private_key": {"filename": str(key)}}}
    with xcp.ControlPlane() as cp:
        cp.set(xcp.SECRET, [by_files], "s1")
        text = bootstrap(cp.port, listeners=[tls_listener("echo", sds_source("ads", "GRPC", "5s"))],
                         clusters=[static_cluster("echo", [echo.port])])
        proxy = Proxy.from_envoy(text, concurrency=1).start()
        try:
            wait_for(lambda: proxy.warming_listeners() == [], msg="listener warm")
            addr = proxy.listener_address("tls")

            def seen(expected):
                s, name = server_name_seen(addr, ca)
                s.close()
                return name == expected
            assert seen("one.test")
            new_chain, new_key = write_pem(tmp_path, "new", ca.issue_cert("two.test"))
            os.rename(new_chain, chain)
            os.rename(new_key, key)
            wait_for(lambda: seen("two.test"), msg="rotated by the file watch")
            # In place (no move: not watched), then the same secret at a new version.
            write_pem(tmp_path, "server", ca.issue_cert("three.test"))
            cp.set(xcp.SECRET, [by_files], "s2")
            wait_for(lambda: seen("three.test"), msg="rotated by the response")
        finally:
            proxy.stop(0.5)
            echo.close()


def ticket_keys_secret(name, *keys):
    return {"name": name, "session_ticket_keys": {"keys": [{"inline_bytes": base64.b64encode(k).decode()}
                                                           for k in keys]}}


def test_session_ticket_keys_over_ads(ca):
    """session_ticket_keys_sds_secret_config over ADS: the listener warms until both its
    certificate and its ticket keys come; a ticket of those keys resumes; once new keys
    are pushed an old ticket no longer does (a full handshake), and nothing drains."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        # Its client reads SSLSocket.session, which CPython 3.11 leaks (_ssl.c
        # _ssl_session_dup): LeakSanitizer would fail the run at exit. The core's
        # ticket paths run under ASan in tests/tls/test_tls_contexts.py (openssl s_client).
        pytest.skip("CPython 3.11 leaks the SSL_SESSION its SSLSocket.session returns")
    echo = EchoServer()
    source = sds_source("ads", "GRPC", "0.3s")
    listener = tls_listener("echo", source)
    ctx = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    ctx["session_ticket_keys_sds_secret_config"] = {"name": "tickets", "sds_config": source}
    ctx["disable_stateful_session_resumption"] = True       # tickets only
    with xcp.ControlPlane() as cp:
        text = bootstrap(cp.port, listeners=[listener], clusters=[static_cluster("echo", [echo.port])])
        proxy = Proxy.from_envoy(text, concurrency=1).start()
        try:
            cp.wait_for(lambda rs: any(r.type_url == xcp.SECRET and sorted(r.resource_names) == ["server", "tickets"]
                                       for r in rs))
            cp.set(xcp.SECRET, [cert_secret("server", ca.issue_cert("one.test"))], "s1")
            cp.wait_answered()
            assert proxy.warming_listeners() == ["tls"]          # the ticket keys have not come
            cp.set(xcp.SECRET, [cert_secret("server", ca.issue_cert("one.test")),
                                ticket_keys_secret("tickets", os.urandom(80))], "s2")
            wait_for(lambda: proxy.warming_listeners() == [], msg="listener warm")
            addr = proxy.listener_address("tls")
            client = ssl.create_default_context()
            ca.configure_trust(client)

            def connect(session=None):
                s = client.wrap_socket(socket.create_connection(addr, timeout=5), server_hostname="one.test",
                                       session=session)
                s.sendall(b"x")
                assert s.recv(8) == b"x"        # (TLS 1.3: the ticket comes after the handshake)
                return s

            first = connect()
            session = first.session
            resumed = connect(session)
            assert resumed.session_reused
            resumed.close()
            cp.set(xcp.SECRET, [cert_secret("server", ca.issue_cert("one.test")),
                                ticket_keys_secret("tickets", os.urandom(80))], "s3")
            wait_for(lambda: proxy.stats().get("sds.tickets.update_success") == 2, msg="s3 applied")
            full = connect(session)
            assert not full.session_reused
            full.close()
            first.sendall(b"y")
            assert first.recv(8) == b"y"
            first.close()
            assert proxy.draining_listeners() == []
        finally:
            proxy.stop(0.5)
            echo.close()


def named_tls_listener(secret, source):
    listener = tls_listener("echo", source)
    sds = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    sds["tls_certificate_sds_secret_configs"][0]["name"] = secret
    return listener


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_discovered_listener_warms_for_its_new_secret(api_type, ca):
    """A listener from LDS whose certificate is a secret over ADS: a new version naming a
    secret that has not come warms while the previous version serves (its secret still
    subscribed); when the secret comes the new version serves it."""
    echo = EchoServer()
    source = sds_source("ads", api_type, "2s")
    with xcp.ControlPlane() as cp:
        text = bootstrap(cp.port, listeners=[], clusters=[static_cluster("echo", [echo.port])], api_type=api_type)
        boot = yaml.safe_load(text)
        boot["dynamic_resources"]["lds_config"] = {"ads": {}, "resource_api_version": "V3"}
        cp.set(xcp.SECRET, [cert_secret("server", ca.issue_cert("one.test"))], "s1")
        cp.set(xcp.LISTENER, [named_tls_listener("server", source)], "l1")
        proxy = Proxy.from_envoy(yaml.safe_dump(boot), concurrency=1).start()
        try:
            addr = proxy.listener_address("tls")
            s, name = server_name_seen(addr, ca)
            assert name == "one.test"
            s.close()

            cp.set(xcp.LISTENER, [named_tls_listener("next", source)], "l2")
            cp.wait_for(lambda rs: any(r.type_url == xcp.SECRET and "next" in r.resource_names for r in rs))
            assert proxy.warming_listeners() == ["tls"]
            s, name = server_name_seen(addr, ca)          # the previous version serves meanwhile
            assert name == "one.test"
            s.close()
            if api_type == "GRPC":                       # (SotW: every name subscribed, in each request)
                last = [r for r in cp.requests if r.type_url == xcp.SECRET][-1]
                assert sorted(last.resource_names) == ["next", "server"]
            states = {e["name"]: e for e in proxy.config_dump()["configs"][2]["dynamic_listeners"]}
            assert "warming_state" in states["tls"], states

            cp.set(xcp.SECRET, [cert_secret("server", ca.issue_cert("one.test")),
                                cert_secret("next", ca.issue_cert("two.test"))], "s2")
            wait_for(lambda: proxy.warming_listeners() == [], msg="l2 warm")
            s, name = server_name_seen(proxy.listener_address("tls"), ca)
            assert name == "two.test"
            s.sendall(b"ping")
            assert s.recv(64) == b"ping"
            s.close()
        finally:
            proxy.stop(0.5)
            echo.close()


def test_cluster_client_certificate_and_ca_over_ads(ca, tmp_path):
    """A cluster's client certificate and trusted CA over ADS, to a real mutual-TLS
    upstream: the cluster warms (no hosts) until both come, then the upstream sees the
    client certificate; a pushed one is what the next connection presents."""
    upstream = tls_upstream(ca, tmp_path)
    source = sds_source("ads", "GRPC", "0.3s")
    cluster = static_cluster("up", [upstream.port], transport_socket={
        "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": TLS + "UpstreamTlsContext", "sni": "localhost",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "client", "sds_config": source}],
                "validation_context_sds_secret_config": {"name": "ca", "sds_config": source}}}})
    listener = {"name": "plain", "address": socket_address(0), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "t", "cluster": "up"}}]}]}
    with xcp.ControlPlane() as cp:
        proxy = Proxy.from_envoy(bootstrap(cp.port, listeners=[listener], clusters=[cluster]), concurrency=1).start()
        try:
            cp.wait_for(lambda rs: any(r.type_url == xcp.SECRET and sorted(r.resource_names) == ["ca", "client"]
                                       for r in rs))
            addr = proxy.listener_address("plain")
            # Warming: no hosts, so no connection (plaintext or not) to the upstream.
            s = socket.create_connection(addr, timeout=5)
            assert s.recv(64) == b""
            s.close()
            assert upstream.accepted == 0
            # (past its initial_fetch_timeout the cluster no longer counts as warming, as in
            # Envoy, but it has no hosts until its secrets come)
            assert proxy.stats()["cluster_manager.warming_clusters"] == 0

            cp.set(xcp.SECRET, [cert_secret("client", ca.issue_cert("one.test")), ca_secret("ca", ca)], "s1")
            wait_for(lambda: proxy.stats().get("sds.ca.update_success") == 1
                     and proxy.stats().get("sds.client.update_success") == 1, msg="secrets applied")
            before = socket.create_connection(addr, timeout=5)
            assert read_line(before) == "one.test"

            cp.set(xcp.SECRET, [cert_secret("client", ca.issue_cert("two.test")), ca_secret("ca", ca)], "s2")
            wait_for(lambda: proxy.stats().get("sds.client.update_success") == 2, msg="s2 applied")
            after = socket.create_connection(addr, timeout=5)
            assert read_line(after) == "two.test"
            before.sendall(b"old")
            assert before.recv(64) == b"old"
            after.close()
            before.close()
            assert proxy.stats()["cluster.up.ssl.handshake"] >= 2
        finally:
            proxy.stop(0.5)
            upstream.close()


def test_discovered_cluster_warms_for_its_new_client_certificate(ca, tmp_path):
    """A cluster from CDS whose client certificate is a secret over ADS: a new version
    naming a secret that has not come warms while the previous version serves (its
    connections present the old certificate); when the secret comes the new one is used."""
    upstream = tls_upstream(ca, tmp_path)
    source = sds_source("ads", "GRPC", "2s")

    def cluster(secret):
        return static_cluster("up", [upstream.port], transport_socket={
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": TLS + "UpstreamTlsContext", "sni": "localhost",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": secret, "sds_config": source}],
                    "validation_context_sds_secret_config": {"name": "ca", "sds_config": source}}}})
    listener = {"name": "plain", "address": socket_address(0), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "t", "cluster": "up"}}]}]}
    with xcp.ControlPlane() as cp:
        boot = yaml.safe_load(bootstrap(cp.port, listeners=[], clusters=[]))
        for t in ("cds_config", "lds_config"):
            boot["dynamic_resources"][t] = {"ads": {}, "resource_api_version": "V3"}
        cp.set(xcp.SECRET, [cert_secret("one", ca.issue_cert("one.test")), ca_secret("ca", ca)], "s1")
        cp.set(xcp.CLUSTER, [cluster("one")], "c1")
        cp.set(xcp.LISTENER, [listener], "l1")
        proxy = Proxy.from_envoy(yaml.safe_dump(boot), concurrency=1).start()
        try:
            addr = proxy.listener_address("plain")
            s = socket.create_connection(addr, timeout=5)
            assert read_line(s) == "one.test"
            s.close()

            cp.set(xcp.CLUSTER, [cluster("two")], "c2")
            cp.wait_for(lambda rs: any(r.type_url == xcp.SECRET and "two" in r.resource_names for r in rs))
            wait_for(lambda: proxy.stats()["cluster_manager.warming_clusters"] == 1, msg="c2 warming")
            s = socket.create_connection(addr, timeout=5)
            assert read_line(s) == "one.test"           # the previous version serves meanwhile
            s.close()

            cp.set(xcp.SECRET, [cert_secret("one", ca.issue_cert("one.test")), ca_secret("ca", ca),
                                cert_secret("two", ca.issue_cert("two.test"))], "s2")
            wait_for(lambda: proxy.stats()["cluster_manager.warming_clusters"] == 0, msg="c2 warm")
            s = socket.create_connection(addr, timeout=5)
            assert read_line(s) == "two.test"
            s.close()
        finally:
            proxy.stop(0.5)
            upstream.close()


def serves(addr, ca, expected):
    """Whether a TLS handshake with ``addr`` now gets the certificate of ``expected``."""
    try:
        s, name = server_name_seen(addr, ca)
    except OSError:
        return False
    s.close()
    return name == expected


@pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_envoy_and_fastproxy_serve_the_pushed_certificate(api_type, ca, tmp_path):
    """The same bootstrap on real Envoy 1.40 and on fastproxy, one control plane: both
    serve the certificate pushed over ADS, then the one pushed after it; both NACK a
    secret whose key is not its certificate's and keep the one they have, and both keep
    it when the server removes it (delta) or leaves it out (state of the world)."""
    echo = EchoServer()
    with xcp.ControlPlane() as cp:
        text = bootstrap(cp.port, listeners=[tls_listener("echo", sds_source("ads", api_type, "5s"))],
                         clusters=[static_cluster("echo", [echo.port])], api_type=api_type)
        cp.set(xcp.SECRET, [cert_secret("server", ca.issue_cert("one.test"))], "s1")
        proc, _, envoy_addr = start_envoy(text, tmp_path)
        proxy = Proxy.from_envoy(text, concurrency=1).start()
        try:
            both = (envoy_addr, proxy.listener_address("tls"))
            for addr in both:       # (Envoy lists its listener before it accepts)
                wait_for(lambda addr=addr: serves(addr, ca, "one.test"), timeout=10, msg=f"{addr} serves one.test")
            cp.set(xcp.SECRET, [cert_secret("server", ca.issue_cert("two.test"))], "s2")
            for addr in both:
                wait_for(lambda addr=addr: serves(addr, ca, "two.test"), timeout=10, msg=f"{addr} serves two.test")
            streams = {r.stream for r in cp.requests if r.type_url == xcp.SECRET}
            assert len(streams) == 2

            cp.set(xcp.SECRET, [cert_secret("server", ca.issue_cert("x.test"), key_of=ca.issue_cert("y.test"))],
                   "bad")
            nacks = cp.wait_for(lambda rs: {r.stream for r in rs if r.type_url == xcp.SECRET and r.nack} == streams)
            if api_type == "GRPC":
                assert {r.version_info for r in nacks if r.type_url == xcp.SECRET and r.nack} == {"s2"}
            cp.set(xcp.SECRET, [], "empty")
            cp.wait_answered()
            answers = cp.acks(xcp.SECRET)[-2:]
            assert not any(r.nack for r in answers)
            assert all(serves(addr, ca, "two.test") for addr in both)
        finally:
            proxy.stop(0.5)
            proc.kill()
            proc.wait()
            echo.close()
