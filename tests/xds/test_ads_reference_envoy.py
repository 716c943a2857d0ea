"""Real Envoy 1.40 driven by the test control plane (tests/xds_control_plane.py) over ADS,
state of the world: the reference fastproxy's xDS client is held to. These tests pin down
Envoy's side of the protocol on this machine (the first request of each type, the ACK that
names the version and nonce it accepts, the NACK that keeps the last good version, the
re-request after a stream failure) and that the pushed resources route traffic."""
from __future__ import annotations

import pytest

from conftest import envoy_yaml, find_envoy, http_listener, start_envoy, static_cluster, wait_for
from http_upstreams import RawHttpUpstream, http_request

xcp = pytest.importorskip("xds_control_plane", reason="grpcio and xds-protos (the xds extra) are not installed")

ENVOY = find_envoy()
pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")

H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def ads_bootstrap(cp_port: int, api_type: str = "GRPC") -> str:
    """A bootstrap with only the control plane's cluster static; CDS and LDS over ADS
    (api_type GRPC: state of the world; DELTA_GRPC: incremental)."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return envoy_yaml(
        clusters=[static_cluster("xds", [cp_port], typed_extension_protocol_options=H2)],
        node={"id": "node-1", "cluster": "test-cluster"},
        dynamic_resources={"ads_config": {"api_type": api_type, "transport_api_version": "V3",
                                          "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
                           "cds_config": ads, "lds_config": ads})


def web(cluster: str, stat_prefix: str = "web") -> dict:
    return http_listener([{"match": {"prefix": "/"}, "route": {"cluster": cluster}}], stat_prefix=stat_prefix)


@pytest.fixture
def upstreams():
    ups = [RawHttpUpstream(lambda m, p, h, b, tag=tag: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + tag)
           for tag in (b"a", b"b")]
    yield ups
    for u in ups:
        u.close()


def test_envoy_acks_nacks_and_rerequests_as_the_reference(upstreams, tmp_path):
    a, b = upstreams
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port]), static_cluster("up-b", [b.port])], "c1")
        cp.set(xcp.LISTENER, [web("up-a")], "l1")
        proc, admin, addr = start_envoy(ads_bootstrap(cp.port), tmp_path)
        try:
            assert http_request(addr, path="/x")[1] == b"a"
            # The first request of each type names no version and no nonce, and carries the
            # node; the next one ACKs the response: its version and its nonce.
            for t, v in ((xcp.CLUSTER, "c1"), (xcp.LISTENER, "l1")):
                reqs = [r for r in cp.requests if r.type_url == t]
                assert (reqs[0].version_info, reqs[0].response_nonce) == ("", "")
                nonce = next(n for sid, tt, vv, n in cp.responses if tt == t and vv == v)
                cp.wait_for(lambda rs, t=t, v=v, nonce=nonce: any(
                    r.type_url == t and r.version_info == v and r.response_nonce == nonce and not r.nack for r in rs))
            assert cp.requests[0].node_id == "node-1"

            # A listener Envoy refuses (an HTTP connection manager needs a stat_prefix): a NACK
            # that keeps the version it has, with the reason; traffic keeps the old routes.
            bad = web("up-b", stat_prefix="")
            cp.set(xcp.LISTENER, [bad], "l2")
            nack = cp.wait_for(lambda rs: any(r.type_url == xcp.LISTENER and r.nack for r in rs))
            nack = [r for r in nack if r.type_url == xcp.LISTENER and r.nack][0]
            # Envoy's error_detail names the listener and the failed constraint.
            assert nack.version_info == "l1"
            assert "listener(s) web" in nack.error_detail and "StatPrefix" in nack.error_detail
            assert http_request(addr, path="/x")[1] == b"a"

            # A good update is taken: new connections route to the new cluster.
            cp.set(xcp.LISTENER, [web("up-b")], "l3")
            cp.wait_for(lambda rs: any(r.type_url == xcp.LISTENER and r.version_info == "l3" for r in rs))
            wait_for(lambda: http_request(addr, path="/x")[1] == b"b", timeout=10, msg="new routes")

            # The stream fails: Envoy reconnects and asks again, naming the versions it has.
            before = len(cp.requests)
            cp.drop_streams()
            again = cp.wait_for(lambda rs: {r.type_url for r in rs[before:] if not r.response_nonce}
                                >= {xcp.CLUSTER, xcp.LISTENER}, timeout=30)
            first = {r.type_url: r for r in again[before:] if not r.response_nonce}
            assert first[xcp.CLUSTER].version_info == "c1" and first[xcp.LISTENER].version_info == "l3"
            assert http_request(addr, path="/x")[1] == b"b"     # served throughout
        finally:
            proc.kill()
            proc.wait()


def test_envoy_delta_removes_resources_and_resumes_with_its_versions(upstreams, tmp_path):
    import json
    from conftest import admin_get
    a, b = upstreams
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port]), static_cluster("up-b", [b.port])], "c1")
        cp.set(xcp.LISTENER, [web("up-a")], "l1")
        proc, admin, addr = start_envoy(ads_bootstrap(cp.port, "DELTA_GRPC"), tmp_path)
        try:
            assert http_request(addr, path="/x")[1] == b"a"
            assert all(r.delta for r in cp.requests)
            # A wildcard subscription: the first delta request of a type names no resources.
            first = {r.type_url: r for r in reversed(cp.requests) if not r.response_nonce}
            assert first[xcp.CLUSTER].resource_names == [] and first[xcp.LISTENER].resource_names == []
            cp.wait_for(lambda rs: sum(1 for r in rs if r.response_nonce and not r.nack) >= 2)

            def clusters():
                return {c["name"] for c in json.loads(admin_get(admin, "/clusters?format=json"))["cluster_statuses"]}
            # A cluster left out of the set goes out as removed_resources, and Envoy drops it.
            cp.set(xcp.LISTENER, [web("up-b")], "l2")
            cp.set(xcp.CLUSTER, [static_cluster("up-b", [b.port])], "c2")
            wait_for(lambda: "up-a" not in clusters(), timeout=10, msg="up-a removed")
            assert http_request(addr, path="/x")[1] == b"b"

            # On a new stream Envoy tells the versions it holds (initial_resource_versions).
            before = len(cp.requests)
            cp.drop_streams()
            again = cp.wait_for(lambda rs: {r.type_url for r in rs[before:] if not r.response_nonce}
                                >= {xcp.CLUSTER, xcp.LISTENER}, timeout=30)
            resumed = {r.type_url: r for r in again[before:] if not r.response_nonce}
            assert resumed[xcp.CLUSTER].initial_versions == {"up-b": "c2"}
            assert resumed[xcp.LISTENER].initial_versions == {"web": "l2"}
        finally:
            proc.kill()
            proc.wait()
