"""fastproxy's ADS client (src/fastproxy/xds/ads_client.py) against the test control plane:
the request sequence Envoy sends (tests/xds/test_ads_reference_envoy.py): the first request
per type, ACK, NACK keeping the version, re-request after a stream failure, delta's
initial_resource_versions. The resources reach an `apply` callback; here it records them and
refuses a cluster named "bad", as a real apply refuses an invalid resource."""
from __future__ import annotations

import pytest

from conftest import static_cluster, wait_for

xcp = pytest.importorskip("xds_control_plane", reason="grpcio and xds-protos (the xds extra) are not installed")
from fastproxy.xds.ads_client import AdsClient  # noqa: E402


class Recorder:
    def __init__(self):
        self.applied = []               # (type, names, version, removed)

    def __call__(self, type_url, resources, version, removed):
        names = [r.get("name") for r in resources]
        if "bad" in names:
            return "resources[%d].name: a cluster named 'bad' is refused" % names.index("bad")
        self.applied.append((type_url, names, version, removed))
        return None


def web(cluster):
    return {"name": "web", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "t", "cluster": cluster}}]}]}


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_ack_nack_and_resume_like_envoy(delta):
    rec = Recorder()
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("a", [1]), static_cluster("b", [2])], "c1")
        cp.set(xcp.LISTENER, [web("a")], "l1")
        client = AdsClient(f"127.0.0.1:{cp.port}", {"id": "node-1", "cluster": "test-cluster"},
                           [xcp.CLUSTER, xcp.LISTENER], rec, delta=delta, backoff_base=0.05).start()
        try:
            assert client.wait_initial(10)
            # The first request of each type: no version, no nonce; the node on the first only.
            firsts = [r for r in cp.requests if not r.response_nonce]
            assert [r.type_url for r in firsts] == [xcp.CLUSTER, xcp.LISTENER]
            assert firsts[0].node_id == "node-1" and firsts[1].node_id == ""
            assert all(r.version_info == "" for r in firsts)
            # Each response ACKed: its nonce (and, state of the world, its version).
            for t, v in ((xcp.CLUSTER, "c1"), (xcp.LISTENER, "l1")):
                nonce = next(n for _, tt, vv, n in cp.responses if tt == t and vv == v)
                cp.wait_for(lambda rs, t=t, v=v, n=nonce: any(
                    r.type_url == t and r.response_nonce == n and not r.nack
                    and (delta or r.version_info == v) for r in rs))
            assert (xcp.CLUSTER, ["a", "b"], "c1", []) in rec.applied

            # A refused update: NACK with the reason, the version kept; nothing applied.
            cp.set(xcp.CLUSTER, [static_cluster("bad", [3])], "c2")
            rs = cp.wait_for(lambda rs: any(r.type_url == xcp.CLUSTER and r.nack for r in rs))
            nack = [r for r in rs if r.type_url == xcp.CLUSTER and r.nack][0]
            assert "resources[0].name" in nack.error_detail
            assert delta or nack.version_info == "c1"
            assert all(v != "c2" for _, _, v, _ in rec.applied)
            assert client.types[xcp.CLUSTER].rejections == 1

            # A later good update; delta sends only what changed, and what left as removed.
            cp.set(xcp.CLUSTER, [static_cluster("b", [2])], "c3")
            wait_for(lambda: any(v == "c3" for _, _, v, _ in rec.applied), timeout=10, msg="c3 applied")
            last = [x for x in rec.applied if x[2] == "c3"][0]
            assert last == ((xcp.CLUSTER, ["b"], "c3", ["a"]) if delta else (xcp.CLUSTER, ["b"], "c3", []))

            # The stream fails: the client reconnects and asks again with what it holds.
            before = len(cp.requests)
            opened = client.streams
            cp.drop_streams()
            wait_for(lambda: client.streams > opened, timeout=10, msg="reconnected")
            again = cp.wait_for(lambda rs: {r.type_url for r in rs[before:] if not r.response_nonce}
                                >= {xcp.CLUSTER, xcp.LISTENER}, timeout=10)
            resumed = {r.type_url: r for r in again[before:] if not r.response_nonce}
            if delta:
                assert resumed[xcp.CLUSTER].initial_versions == {"b": "c3"}
                assert resumed[xcp.LISTENER].initial_versions == {"web": "l1"}
            else:
                assert resumed[xcp.CLUSTER].version_info == "c3"
                assert resumed[xcp.LISTENER].version_info == "l1"
            assert resumed[xcp.CLUSTER].node_id == "node-1"
        finally:
            client.stop()


def test_control_plane_down_at_start_then_up():
    """No control plane yet: the client keeps retrying (jittered back-off) and gets its
    resources once one listens on the address."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rec = Recorder()
    client = AdsClient(f"127.0.0.1:{port}", {"id": "n"}, [xcp.CLUSTER], rec, backoff_base=0.05,
                       backoff_max=0.2).start()
    try:
        assert not client.wait_initial(0.5)
        cp = xcp.ControlPlane()
        import grpc
        from concurrent import futures
        from envoy.service.discovery.v3 import ads_pb2_grpc
        cp._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(cp, cp._server)
        cp.port = cp._server.add_insecure_port(f"127.0.0.1:{port}")
        cp.set(xcp.CLUSTER, [static_cluster("a", [1])], "v1")
        cp._server.start()
        try:
            assert client.wait_initial(20)
            assert rec.applied[-1][2] == "v1"
        finally:
            cp.stop()
    finally:
        client.stop()
