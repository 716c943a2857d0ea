"""RDS and EDS: route configurations and cluster load assignments subscribed by name over
ADS (state of the world and delta) and over per-type streams (api_config_source), with
fastproxy and real Envoy 1.40 driven by the same scripted control plane
(tests/xds_control_plane.py): the same requests in the same order (initialization: CDS,
EDS, LDS, RDS), the same ACK/NACK sequence, and the same routing after each push."""
from __future__ import annotations

import http.client

import pytest

import fastproxy
from conftest import admin_get, envoy_yaml, find_envoy, http_listener, static_cluster, wait_for
from http_upstreams import RawHttpUpstream, http_request

xcp = pytest.importorskip("xds_control_plane", reason="grpcio and xds-protos (the xds extra) are not installed")
XDS_TYPES = {xcp.CLUSTER, xcp.ENDPOINT, xcp.LISTENER, xcp.ROUTE}     # what these bootstraps subscribe
from test_ads_reference_envoy import H2  # noqa: E402
from test_ads_discovery import Envoy, Fastproxy  # noqa: E402  (the two servers under one script)

ENVOY = find_envoy()
ADS = {"ads": {}, "resource_api_version": "V3"}


def api_source(api_type: str) -> dict:
    return {"api_config_source": {"api_type": api_type, "transport_api_version": "V3",
                                  "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "resource_api_version": "V3"}


def bootstrap(cp_port: int, api_type: str = "GRPC", aggregated: bool = True) -> str:
    """CDS and LDS over ADS (or each on its own stream: aggregated=False)."""
    dynamic: dict = {"cds_config": ADS if aggregated else api_source(api_type),
                     "lds_config": ADS if aggregated else api_source(api_type)}
    if aggregated:
        dynamic["ads_config"] = {"api_type": api_type, "transport_api_version": "V3",
                                 "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}
    return envoy_yaml(clusters=[static_cluster("xds", [cp_port], typed_extension_protocol_options=H2)],
                      node={"id": "node-1", "cluster": "test-cluster"}, dynamic_resources=dynamic)


def source(api_type: str, aggregated: bool) -> dict:
    return ADS if aggregated else api_source(api_type)


def eds_cluster(name: str, src: dict) -> dict:
    return {"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"service_name": name, "eds_config": src}}


def assignment(name: str, *ports: int) -> dict:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}} for p in ports]}]}


def rds_listener(route_name: str, src: dict) -> dict:
    listener = http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}])
    tc = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del tc["route_config"]
    tc["rds"] = {"route_config_name": route_name, "config_source": src}
    return listener


def route_config(name: str, cluster: str, domains=("*",)) -> dict:
    return {"name": name, "virtual_hosts": [{"name": f"v{i}", "domains": [d], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]} for i, d in enumerate(domains)]}


@pytest.fixture
def upstreams():
    ups = [RawHttpUpstream(lambda m, p, h, b, tag=tag: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + tag)
           for tag in (b"a", b"b", b"c")]
    yield ups
    for u in ups:
        u.close()


def get(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/x")
    return conn.getresponse().read()


def body(addr):
    try:
        return http_request(addr, path="/x", timeout=2)[1]
    except OSError:
        return None


def rt_unsubscribed(cut):
    """The requests show rt no longer subscribed (after the listener's change)."""
    def pred(rs):
        rds = [r for r in rs[cut:] if r.type_url == xcp.ROUTE]
        if rds and rds[0].service == "rds":         # (per-type: rt2 on a stream of its own)
            return any(r.response_nonce for r in rds)
        return any("rt" in r.unsubscribe for r in rds) or (rds and not rds[-1].delta and rds[-1].resource_names == ["rt2"])
    return pred


def script(cp, start, ports, api_type, aggregated, settle=None):
    """The scripted sequence; returns (what the requests answered, the request sequence)."""
    a, b, c = ports
    src = source(api_type, aggregated)
    cp.set(xcp.CLUSTER, [eds_cluster("svc", src), static_cluster("fixed", [c])], "c1")
    cp.set(xcp.ENDPOINT, [assignment("svc", a)], "e1")
    cp.set(xcp.LISTENER, [rds_listener("rt", src)], "l1")
    cp.set(xcp.ROUTE, [route_config("rt", "svc"), route_config("rt2", "fixed")], "r1")
    server = start()
    seen = []
    try:
        addr = server.address()
        # (Envoy names a listener's address while it still warms: until its routes came.)
        wait_for(lambda: body(addr) is not None, timeout=20, msg="the listener serves")
        conn = http.client.HTTPConnection(*addr, timeout=5)
        seen.append(get(conn))                                          # a: EDS svc -> a
        cp.wait_for(lambda rs: {r.type_url for r in rs if r.response_nonce} >= XDS_TYPES)
        # EDS push: traffic moves to the new endpoint.
        cp.set(xcp.ENDPOINT, [assignment("svc", b)], "e2")
        wait_for(lambda: body(addr) == b"b", timeout=10, msg="e2 in force")
        seen.append(body(addr))
        # RDS push: the next request on the already open connection takes the new routes.
        cp.set(xcp.ROUTE, [route_config("rt", "fixed"), route_config("rt2", "fixed")], "r2")
        cp.wait_for(lambda rs: any(r.type_url == xcp.ROUTE and r.response_nonce and not r.nack
                                   and (r.delta or r.version_info == "r2") for r in rs[-2:]))
        wait_for(lambda: body(addr) == b"c", timeout=10, msg="r2 in force")
        seen.append(body(addr))
        seen.append(get(conn))      # the connection opened before the push: the new routes too
        conn.close()
        # A bad route configuration (a domain twice): NACKed, nothing changes.
        cp.set(xcp.ROUTE, [route_config("rt", "svc", domains=("*", "*")), route_config("rt2", "fixed")], "r3")
        cp.wait_for(lambda rs: any(r.type_url == xcp.ROUTE and r.nack for r in rs))
        seen.append(body(addr))
        # The stream(s) fail: every type is asked for again, with the names and versions held,
        # and the last good configuration serves meanwhile.
        before = len(cp.requests)
        cp.drop_streams()
        cp.wait_for(lambda rs: {r.type_url for r in rs[before:] if r.response_nonce} >= XDS_TYPES, timeout=30)
        seen.append(body(addr))
        # The listener now names rt2: rt2 is subscribed (and rt, once nothing uses it, not).
        cp.wait_answered()
        cut = len(cp.requests)
        cp.set(xcp.LISTENER, [rds_listener("rt2", src)], "l2")
        cp.wait_for(lambda rs: any(r.type_url == xcp.ROUTE and "rt2" in r.resource_names for r in rs[cut:]))
        cp.wait_for(lambda rs: any(r.type_url == xcp.LISTENER and r.response_nonce and not r.nack
                                   and (r.delta or r.version_info == "l2") for r in rs[cut:]))
        if settle is not None:
            cp.wait_for(settle(cut))
        cp.wait_answered()
    finally:
        server.stop()
    short = {xcp.CLUSTER: "CDS", xcp.ENDPOINT: "EDS", xcp.LISTENER: "LDS", xcp.ROUTE: "RDS"}
    seq = [(short[r.type_url], "nack" if r.nack else "ack" if r.response_nonce else "request",
            r.version_info, tuple(r.resource_names), tuple(r.unsubscribe), r.service) for r in cp.requests]
    # (The NACKs before the listener change: after it, delta may send the refused rt again
    # with rt2, which Envoy NACKs again.)
    nacks = [r.error_detail for r in cp.requests[:cut] if r.nack]
    return seen, seq[:cut], seq[cut:], nacks


CASES = [("GRPC", True), ("DELTA_GRPC", True), ("GRPC", False), ("DELTA_GRPC", False)]
IDS = ["ads-sotw", "ads-delta", "per-type-sotw", "per-type-delta"]


@pytest.mark.parametrize("api_type, aggregated", CASES, ids=IDS)
def test_rds_and_eds_as_envoy(api_type, aggregated, upstreams, tmp_path):
    ports = [u.port for u in upstreams]
    with xcp.ControlPlane() as cp:
        text = bootstrap(cp.port, api_type, aggregated)
        ours, our_seq, our_after, our_nacks = script(cp, lambda: Fastproxy(text), ports, api_type, aggregated,
                                                     settle=rt_unsubscribed)
    assert ours == [b"a", b"b", b"c", b"c", b"c", b"c"]
    # The NACK names the refused field by its path in the response (on the new stream the
    # control plane sends the refused rt again, SotW and delta: NACKed again).
    assert len(our_nacks) == 2, our_nacks
    assert all("resources[0].virtual_hosts[1].domains" in n for n in our_nacks), our_nacks
    if not aggregated:
        assert {s[5] for s in our_seq} == {"cds", "eds", "lds", "rds"}
    # The listener's route configuration changed: rt2 is subscribed beside rt (the listener's
    # previous version serves with rt while the new one warms), then rt, used by nothing, is
    # unsubscribed.
    rds = [s for s in our_after if s[0] == "RDS"]
    if not aggregated:
        # One stream per route configuration, as Envoy (rt's ends with its subscription).
        assert rds and all(s[3] in (("rt2",), ()) for s in rds), rds
    elif api_type == "GRPC":
        names = [set(s[3]) for s in rds]
        assert names[0] == {"rt", "rt2"} and names[-1] == {"rt2"}, rds
    else:
        assert [s[3:5] for s in rds if s[1] == "request"] == [(("rt2",), ()), ((), ("rt",))], rds
    if ENVOY is None:
        pytest.skip("envoy binary not on PATH nor next to sys.executable")
    with xcp.ControlPlane() as cp:
        text = bootstrap(cp.port, api_type, aggregated)
        theirs, their_seq, their_after, their_nacks = script(cp, lambda: Envoy(text, tmp_path), ports,
                                                             api_type, aggregated)
    assert ours == theirs
    assert len(their_nacks) == len(our_nacks)
    if aggregated:
        # One stream: the order of every request is Envoy's (the initialization's CDS, EDS,
        # LDS, RDS and where each ACK falls).
        assert our_seq == their_seq, (our_seq, their_seq)
    else:
        # One stream per type: each type's own sequence is Envoy's.
        for t in ("CDS", "EDS", "LDS", "RDS"):
            assert [s for s in our_seq if s[0] == t] == [s for s in their_seq if s[0] == t], t
    # Envoy too asks for rt2 beside rt first. A difference: it keeps rt subscribed while the
    # listener's previous version drains (--drain-time-s); fastproxy drops rt when no listener
    # version takes its routes from it any more.
    first = next(s for s in their_after if s[0] == "RDS")
    assert set(first[3]) == ({"rt", "rt2"} if api_type == "GRPC" and aggregated else {"rt2"})
    if not aggregated:
        assert [s for s in our_after if s[0] == "RDS"] == [s for s in their_after if s[0] == "RDS"]


@pytest.mark.parametrize("server", ["fastproxy", "envoy"])
def test_an_rds_push_reaches_an_open_connection(server, upstreams, tmp_path):
    """As in Envoy, the next request on a keep-alive connection opened before an RDS push
    uses the new routes."""
    if server == "envoy" and ENVOY is None:
        pytest.skip("envoy binary not on PATH nor next to sys.executable")
    a, _, c = (u.port for u in upstreams)
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("svc", [a]), static_cluster("fixed", [c])], "c1")
        cp.set(xcp.LISTENER, [rds_listener("rt", ADS)], "l1")
        cp.set(xcp.ROUTE, [route_config("rt", "svc")], "r1")
        text = bootstrap(cp.port)
        proc = Fastproxy(text) if server == "fastproxy" else Envoy(text, tmp_path)
        try:
            wait_for(lambda: body(proc.address()) is not None, timeout=20, msg="the listener serves")
            conn = http.client.HTTPConnection(*proc.address(), timeout=5)
            assert get(conn) == b"a"
            cp.set(xcp.ROUTE, [route_config("rt", "fixed")], "r2")
            cp.wait_for(lambda rs: any(r.type_url == xcp.ROUTE and r.version_info == "r2" for r in rs))
            wait_for(lambda: body(proc.address()) == b"c", timeout=10, msg="r2 in force")
            assert get(conn) == b"c"
            conn.close()
        finally:
            proc.stop()


# --------------------------------------------------------------------------- failure paths

def test_a_bad_assignment_is_nacked_by_path_and_changes_nothing(upstreams):
    a, b, _ = (u.port for u in upstreams)
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [eds_cluster("svc", ADS)], "c1")
        cp.set(xcp.ENDPOINT, [assignment("svc", a)], "e1")
        cp.set(xcp.LISTENER, [http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}])], "l1")
        with fastproxy.Proxy.from_envoy(bootstrap(cp.port), concurrency=1) as p:
            addr = p.listener_address("web")
            assert body(addr) == b"a"
            st = p.stats()
            assert st["cluster.svc.update_success"] == 1 and st["cluster.svc.update_rejected"] == 0
            assert st["cluster_manager.warming_clusters"] == 0
            bad = assignment("svc", b)
            bad["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = 0     # Envoy's minimum is 1
            cp.set(xcp.ENDPOINT, [bad], "e2")
            nack = cp.wait_for(lambda rs: any(r.type_url == xcp.ENDPOINT and r.nack for r in rs))
            nack = next(r for r in nack if r.type_url == xcp.ENDPOINT and r.nack)
            assert "resources[0].endpoints[0].lb_endpoints[0].load_balancing_weight" in nack.error_detail \
                and nack.version_info == "e1"
            assert p.stats()["cluster.svc.update_rejected"] == 1
            assert body(addr) == b"a"


def test_an_eds_cluster_warms_until_its_assignment_or_the_timeout(upstreams):
    """No assignment for the cluster: it warms, /ready says INITIALIZING, until the EDS
    initial_fetch_timeout; then the listener is fetched and the proxy is LIVE."""
    a = upstreams[0].port
    src = dict(ADS, initial_fetch_timeout="0.5s")
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [eds_cluster("svc", src)], "c1")
        cp.set(xcp.LISTENER, [http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}])], "l1")
        p = fastproxy.Proxy.from_envoy(bootstrap(cp.port), concurrency=1)
        try:
            p.start()
            # start() returned after the timeout: the cluster is warm (empty), LDS was fetched.
            order = [(r.type_url, bool(r.response_nonce)) for r in cp.requests]
            assert order.index((xcp.LISTENER, False)) > order.index((xcp.ENDPOINT, False))
            assert p.stats()["cluster_manager.warming_clusters"] == 0
            assert admin_get(p.admin_address, "/ready").strip() == "LIVE"
            assert http_request(p.listener_address("web"), path="/x")[0].status == 503
            # The assignment comes later: traffic flows.
            cp.set(xcp.ENDPOINT, [assignment("svc", a)], "e1")
            wait_for(lambda: body(p.listener_address("web")) == b"a", timeout=10, msg="e1 in force")
        finally:
            p.stop()


@pytest.mark.parametrize("server", ["fastproxy", "envoy"])
def test_a_delta_removal_of_a_route_configuration_is_ignored_as_envoy_does(server, upstreams, tmp_path):
    if server == "envoy" and ENVOY is None:
        pytest.skip("envoy binary not on PATH nor next to sys.executable")
    a = upstreams[0].port
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("svc", [a])], "c1")
        cp.set(xcp.LISTENER, [rds_listener("ns:rt", ADS)], "l1")
        cp.set(xcp.ROUTE, [route_config("ns:rt", "svc")], "r1")
        text = bootstrap(cp.port, "DELTA_GRPC")
        proc = Fastproxy(text) if server == "fastproxy" else Envoy(text, tmp_path)
        try:
            addr = proc.address()
            wait_for(lambda: body(addr) == b"a", timeout=20, msg="serves")
            stats = (lambda: proc.proxy.stats()) if server == "fastproxy" else (lambda: envoy_stats(proc.admin))
            # (Envoy's stat name: ':' in the route configuration's name is '_'.)
            wait_for(lambda: stats().get("http.web.rds.ns_rt.update_success") == 1, msg="rds stats")
            cp.wait_answered()
            cp.set(xcp.ROUTE, [], "r2")             # removed_resources: ["ns:rt"]
            cp.wait_answered()
            assert [r for r in cp.requests if r.nack] == []
            assert body(addr) == b"a"
            assert stats()["listener_manager.total_listeners_warming"] == 0
        finally:
            proc.stop()


def test_eds_and_api_config_source_loader_errors_name_the_field():
    from fastproxy.config import load_envoy
    from fastproxy.errors import ConfigError
    from conftest import envoy_bootstrap
    cases = [
        ({"name": "e", "type": "EDS"}, "static_resources.clusters[0].eds_cluster_config", "needs eds_cluster_config"),
        (dict(static_cluster("e", [1]), eds_cluster_config={"eds_config": ADS}),
         "static_resources.clusters[0].eds_cluster_config", "only a cluster of type EDS"),
        (eds_cluster("e", {"path_config_source": {"path": "/nonexistent"}}),
         "static_resources.clusters[0].eds_cluster_config.eds_config.path_config_source.path", "does not exist"),
        (eds_cluster("e", api_source("REST")),
         "static_resources.clusters[0].eds_cluster_config.eds_config.api_config_source.api_type", "REST"),
        (eds_cluster("e", api_source("GRPC")),
         "static_resources.clusters[0].eds_cluster_config.eds_config.api_config_source.grpc_services[0]"
         ".envoy_grpc.cluster_name", "unknown static cluster 'xds'"),
    ]
    for cluster, path, words in cases:
        with pytest.raises(ConfigError) as e:
            load_envoy(envoy_bootstrap(clusters=[cluster]))
        assert e.value.path == path and words in str(e.value), (path, e.value)
    bad = static_cluster("s", [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}},
                                "health_status": "SICK"}])
    with pytest.raises(ConfigError) as e:
        load_envoy(envoy_bootstrap(clusters=[bad]))
    assert e.value.path.endswith("lb_endpoints[0].health_status")


def test_config_dump_shows_discovered_route_configurations(upstreams):
    a = upstreams[0].port
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("svc", [a])], "c1")
        cp.set(xcp.LISTENER, [rds_listener("rt", ADS)], "l1")
        cp.set(xcp.ROUTE, [route_config("rt", "svc")], "r1")
        with fastproxy.Proxy.from_envoy(bootstrap(cp.port), concurrency=1) as p:
            dump = p.config_dump(resource="dynamic_route_configs")
            [entry] = [c for c in dump["configs"] if c["route_config"]["name"] == "rt"]
            assert entry["version_info"] == "r1" and "last_updated" in entry


STAT_NAMES = [f"cluster.svc.{s}" for s in ("update_attempt", "update_success", "update_rejected", "update_empty",
                                          "update_failure", "update_no_rebuild", "version")] + \
    [f"http.web.rds.rt.{s}" for s in ("update_attempt", "update_success", "update_rejected", "update_empty",
                                       "update_failure", "config_reload", "version")] + \
    [f"{p}.{s}" for p in ("cluster_manager.cds", "listener_manager.lds")
     for s in ("update_attempt", "update_success", "update_rejected", "version")] + \
    ["cluster_manager.warming_clusters", "listener_manager.total_listeners_warming",
     "control_plane.connected_state", "control_plane.pending_requests", "cluster_manager.active_clusters"]


def envoy_stats(admin) -> dict:
    out = {}
    for line in admin_get(admin, "/stats").splitlines():
        k, _, v = line.partition(": ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


@pytest.mark.parametrize("server", ["fastproxy", "envoy"])
def test_eds_and_rds_stats_as_envoy(server, upstreams, tmp_path, request):
    """The same pushes (a refused assignment, new endpoints, the same routes again, the
    same endpoints again) give the same per-cluster EDS and per-route RDS counters."""
    if server == "envoy" and ENVOY is None:
        pytest.skip("envoy binary not on PATH nor next to sys.executable")
    a, b, _ = (u.port for u in upstreams)
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [eds_cluster("svc", ADS)], "c1")
        cp.set(xcp.ENDPOINT, [assignment("svc", a)], "e1")
        cp.set(xcp.LISTENER, [rds_listener("rt", ADS)], "l1")
        cp.set(xcp.ROUTE, [route_config("rt", "svc")], "r1")
        proc = Fastproxy(bootstrap(cp.port)) if server == "fastproxy" else Envoy(bootstrap(cp.port), tmp_path)
        try:
            wait_for(lambda: body(proc.address()) == b"a", timeout=20, msg="serves")
            bad = assignment("svc", b)
            bad["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = 0
            cp.set(xcp.ENDPOINT, [bad], "e2")
            cp.set(xcp.ENDPOINT, [assignment("svc", b)], "e3")
            cp.set(xcp.ROUTE, [route_config("rt", "svc")], "r2")
            cp.set(xcp.ENDPOINT, [assignment("svc", b)], "e4")
            cp.wait_for(lambda rs: [(r.version_info, r.nack) for r in rs if r.type_url == xcp.ENDPOINT][-1] == ("e4", False)
                        and any(r.type_url == xcp.ROUTE and r.version_info == "r2" for r in rs))
            st = proc.proxy.stats() if server == "fastproxy" else envoy_stats(proc.admin)
            got = {k: st.get(k) for k in STAT_NAMES}
        finally:
            proc.stop()
    # Recorded from Envoy 1.40 on this sequence (the envoy case checks it still says so).
    from fastproxy.xds.xxhash64 import xxh64
    assert got == {
        "cluster.svc.update_attempt": 5, "cluster.svc.update_success": 3, "cluster.svc.update_rejected": 1,
        "cluster.svc.update_empty": 0, "cluster.svc.update_failure": 0, "cluster.svc.update_no_rebuild": 1,
        "cluster.svc.version": xxh64(b"e4"),
        "http.web.rds.rt.update_attempt": 3, "http.web.rds.rt.update_success": 2,
        "http.web.rds.rt.update_rejected": 0, "http.web.rds.rt.update_empty": 0,
        "http.web.rds.rt.update_failure": 0, "http.web.rds.rt.config_reload": 1,
        "http.web.rds.rt.version": xxh64(b"r2"),
        "cluster_manager.cds.update_attempt": 2, "cluster_manager.cds.update_success": 1,
        "cluster_manager.cds.update_rejected": 0, "cluster_manager.cds.version": xxh64(b"c1"),
        "listener_manager.lds.update_attempt": 2, "listener_manager.lds.update_success": 1,
        "listener_manager.lds.update_rejected": 0, "listener_manager.lds.version": xxh64(b"l1"),
        "cluster_manager.warming_clusters": 0, "listener_manager.total_listeners_warming": 0,
        "control_plane.connected_state": 1, "control_plane.pending_requests": 0,
        "cluster_manager.active_clusters": 2}, got


@pytest.mark.parametrize("server", ["fastproxy", "envoy"])
def test_config_dump_of_eds_as_envoy(server, upstreams, tmp_path):
    """?include_eds: the assignments EDS gave (dynamic_endpoint_configs, with their version);
    an EDS cluster is dumped with its eds_cluster_config."""
    import json
    if server == "envoy" and ENVOY is None:
        pytest.skip("envoy binary not on PATH nor next to sys.executable")
    a = upstreams[0].port
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [eds_cluster("svc", ADS)], "c1")
        cp.set(xcp.ENDPOINT, [assignment("svc", a)], "e1")
        cp.set(xcp.LISTENER, [http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}])], "l1")
        proc = Fastproxy(bootstrap(cp.port)) if server == "fastproxy" else Envoy(bootstrap(cp.port), tmp_path)
        try:
            wait_for(lambda: body(proc.address()) == b"a", timeout=20, msg="serves")
            admin = proc.proxy.admin_address if server == "fastproxy" else proc.admin
            eds = json.loads(admin_get(admin, "/config_dump?include_eds&resource=dynamic_endpoint_configs"))
            clusters = json.loads(admin_get(admin, "/config_dump?resource=dynamic_active_clusters"))
        finally:
            proc.stop()
    [entry] = eds["configs"]
    assert entry["@type"] == "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump.DynamicEndpointConfig"
    # (Envoy 1.40 leaves an assignment's version out; fastproxy says it.)
    assert entry.get("version_info") == ("e1" if server == "fastproxy" else None)
    config = entry["endpoint_config"]
    assert config["cluster_name"] == "svc"
    [lb] = config["endpoints"][0]["lb_endpoints"]
    assert lb["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": a}
    [svc] = [c["cluster"] for c in clusters["configs"] if c["cluster"]["name"] == "svc"]
    assert svc["type"] == "EDS" and svc["eds_cluster_config"]["service_name"] == "svc"
    assert "ads" in svc["eds_cluster_config"]["eds_config"] and "load_assignment" not in svc


def test_a_listener_warms_until_its_routes_come(upstreams):
    """Its route configuration does not come: the listener is warming (not accepting,
    listed as warming in the stats and the config dump) until the RDS initial_fetch_timeout
    has passed (/ready LIVE); it accepts once the routes come."""
    import json
    a = upstreams[0].port
    src = dict(ADS, initial_fetch_timeout="0.5s")
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("svc", [a])], "c1")
        cp.set(xcp.LISTENER, [rds_listener("rt", src)], "l1")
        with fastproxy.Proxy.from_envoy(bootstrap(cp.port), concurrency=1) as p:
            assert p.warming_listeners() == ["web"]
            assert p.stats()["listener_manager.total_listeners_warming"] == 1
            assert admin_get(p.admin_address, "/ready").strip() == "LIVE"
            dump = json.loads(admin_get(p.admin_address, "/config_dump?resource=dynamic_listeners"))
            [entry] = dump["configs"]
            assert entry["name"] == "web" and "warming_state" in entry and "active_state" not in entry
            cp.set(xcp.ROUTE, [route_config("rt", "svc")], "r1")
            wait_for(lambda: p.warming_listeners() == [], timeout=10, msg="routes came")
            assert body(p.listener_address("web")) == b"a"
            assert p.stats()["listener_manager.total_listeners_warming"] == 0
            dump = json.loads(admin_get(p.admin_address, "/config_dump?resource=dynamic_listeners"))
            assert "active_state" in dump["configs"][0]


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_a_removed_cluster_unsubscribes_its_assignment_as_envoy(api_type, upstreams, tmp_path):
    a, _, c = (u.port for u in upstreams)

    def run(start):
        with xcp.ControlPlane() as cp:
            cp.set(xcp.CLUSTER, [eds_cluster("svc", ADS), eds_cluster("other", ADS)], "c1")
            cp.set(xcp.ENDPOINT, [assignment("svc", a), assignment("other", c)], "e1")
            cp.set(xcp.LISTENER, [http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}])], "l1")
            server = start(bootstrap(cp.port, api_type))
            try:
                wait_for(lambda: body(server.address()) == b"a", timeout=20, msg="serves")
                cp.wait_answered()
                cut = len(cp.requests)
                cp.set(xcp.CLUSTER, [eds_cluster("svc", ADS)], "c2")
                cp.wait_for(lambda rs: any(r.type_url == xcp.CLUSTER and r.response_nonce
                                           and (r.delta or r.version_info == "c2") for r in rs[cut:]))
                cp.wait_for(lambda rs: any(r.type_url == xcp.ENDPOINT for r in rs[cut:]))
                cp.wait_answered()
                assert body(server.address()) == b"a"
            finally:
                server.stop()
            return [(r.type_url.rsplit(".", 1)[1], r.version_info, r.resource_names, r.unsubscribe,
                     bool(r.response_nonce)) for r in cp.requests[cut:]]
    ours = run(lambda t: Fastproxy(t))
    eds = [r for r in ours if r[0] == "ClusterLoadAssignment"]
    assert eds[0][2:4] == ((["svc"], []) if api_type == "GRPC" else ([], ["other"]))
    if ENVOY is None:
        pytest.skip("envoy binary not on PATH nor next to sys.executable")
    theirs = run(lambda t: Envoy(t, tmp_path))
    assert ours == theirs, (ours, theirs)


def test_rds_and_eds_from_files(tmp_path, upstreams):
    """path_config_source for a static listener's RDS and a static EDS cluster: read at
    start, reloaded when a file is moved into place; a file that does not parse keeps what
    is in force and counts a failure."""
    from test_file_discovery import publish, source as file_source
    a, b, _ = (u.port for u in upstreams)
    rds, eds = tmp_path / "rds.yaml", tmp_path / "eds.yaml"
    route_type, endpoint_type = xcp.ROUTE, xcp.ENDPOINT
    publish(rds, "r1", [{"@type": route_type, **route_config("rt", "svc")}])
    publish(eds, "e1", [{"@type": endpoint_type, **assignment("svc", a)}])
    listeners, clusters = [rds_listener("rt", file_source(rds))], [eds_cluster("svc", file_source(eds))]
    # As Envoy, a subscription (files too) needs the node's identity.
    with pytest.raises(fastproxy.ConfigError) as e:
        fastproxy.Proxy.from_envoy(envoy_yaml(listeners=listeners, clusters=clusters))
    assert str(e.value) == ("node: type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment: node 'id' "
                            "and 'cluster' are required. Set it either in 'node' config or via --service-node "
                            "and --service-cluster options.")
    text = envoy_yaml(listeners=listeners, clusters=clusters, node={"id": "node-1", "cluster": "c"})
    with fastproxy.Proxy.from_envoy(text, concurrency=1) as p:
        addr = p.listener_address("web")
        assert body(addr) == b"a"
        publish(eds, "e2", [{"@type": endpoint_type, **assignment("svc", b)}])
        wait_for(lambda: body(addr) == b"b", timeout=10, msg="e2 in force")
        publish(rds, "r2", [{"@type": route_type, **route_config("rt", "nope")}])
        wait_for(lambda: http_request(addr, path="/x")[0].status == 503, timeout=10, msg="r2: no cluster")
        st = p.stats()
        assert st["cluster.svc.update_success"] == 2 and st["http.web.rds.rt.update_success"] == 2
        tmp = f"{eds}.tmp"
        with open(tmp, "w") as f:
            f.write("{not yaml: [")
        import os
        os.replace(tmp, eds)
        wait_for(lambda: p.stats()["cluster.svc.update_failure"] == 1, timeout=10, msg="failure counted")
        publish(rds, "r3", [{"@type": route_type, **route_config("rt", "svc")}])
        wait_for(lambda: body(addr) == b"b", timeout=10, msg="r3, with e2's endpoints")


def ready(admin) -> tuple:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/ready", timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


def test_a_warming_cluster_in_the_config_dump(upstreams):
    """initial_fetch_timeout 0: start() does not wait; the EDS cluster is listed among the
    warming clusters until its assignment comes, and LDS is asked for only then (Envoy's
    order: the listeners after the clusters are warm)."""
    import json
    a = upstreams[0].port
    src = dict(ADS, initial_fetch_timeout="0s")
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [eds_cluster("svc", src)], "c1")
        cp.set(xcp.LISTENER, [http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}])], "l1")
        with fastproxy.Proxy.from_envoy(bootstrap(cp.port), concurrency=1) as p:
            cp.wait_for(lambda rs: any(r.type_url == xcp.ENDPOINT for r in rs))
            wait_for(lambda: p.stats()["cluster_manager.warming_clusters"] == 1, msg="warming")
            dump = json.loads(admin_get(p.admin_address, "/config_dump?resource=dynamic_warming_clusters"))
            assert [c["cluster"]["name"] for c in dump["configs"]] == ["svc"]
            assert ready(p.admin_address) == (503, "INITIALIZING")
            assert not any(r.type_url == xcp.LISTENER for r in cp.requests)
            cp.set(xcp.ENDPOINT, [assignment("svc", a)], "e1")
            wait_for(lambda: "web" in p.config_dump()["configs"][2].get("dynamic_listeners", [{}])[0].get("name", ""),
                     timeout=10, msg="LDS after the cluster warmed")
            wait_for(lambda: body(p.listener_address("web")) == b"a", timeout=10, msg="serves")
            dump = json.loads(admin_get(p.admin_address, "/config_dump?resource=dynamic_active_clusters"))
            assert [c["cluster"]["name"] for c in dump["configs"]] == ["svc"]
            wait_for(lambda: ready(p.admin_address) == (200, "LIVE"), msg="LIVE")
            order = [r.type_url for r in cp.requests if not r.response_nonce]
            assert order == [xcp.CLUSTER, xcp.ENDPOINT, xcp.LISTENER]


def test_a_refused_route_configuration_does_not_hold_back_a_good_one(upstreams):
    """One RDS response with a refused table and a good one: the good one is applied (as
    Envoy's per-resource watches take them), the response NACKed naming the refused one."""
    a, b, _ = (u.port for u in upstreams)
    two = [rds_listener("rt", ADS), dict(rds_listener("rt2", ADS), name="web2")]
    two[1]["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "web2"
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("svc", [a]), static_cluster("fixed", [b])], "c1")
        cp.set(xcp.LISTENER, two, "l1")
        cp.set(xcp.ROUTE, [route_config("rt", "svc"), route_config("rt2", "svc")], "r1")
        with fastproxy.Proxy.from_envoy(bootstrap(cp.port), concurrency=1) as p:
            web, web2 = p.listener_address("web"), p.listener_address("web2")
            assert body(web) == body(web2) == b"a"
            cp.set(xcp.ROUTE, [route_config("rt", "fixed", domains=("*", "*")), route_config("rt2", "fixed")], "r2")
            rs = cp.wait_for(lambda rs: any(r.type_url == xcp.ROUTE and r.nack for r in rs))
            nack = next(r for r in rs if r.type_url == xcp.ROUTE and r.nack)
            assert nack.error_detail.startswith("resources[0].virtual_hosts[1].domains") and nack.version_info == "r1"
            wait_for(lambda: body(web2) == b"b", timeout=10, msg="rt2 applied")
            assert body(web) == b"a"
            st = p.stats()
            assert (st["http.web.rds.rt.update_rejected"], st["http.web2.rds.rt2.update_success"]) == (1, 2)


def test_the_plain_endpoint_reading_is_the_general_one():
    """config/envoy.py reads the usual lb_endpoint with plain lookups; anything else, valid
    or not, takes the general reading: both give the same endpoints."""
    from fastproxy.config.envoy import _endpoint_read, _plain_endpoint

    def lb(address="127.0.0.1", port=80, **extra):
        return {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}, **extra}
    cases = [("STATIC", lb()), ("EDS", lb("::1", 8080)), ("EDS", lb(load_balancing_weight=7)),
             ("STRICT_DNS", lb("backend.local", 443)), ("STATIC", lb(port=65535)),
             ("EDS", lb(load_balancing_weight=128))]
    for ctype, item in cases:
        plain = _plain_endpoint(item, ctype)
        assert plain is not None and plain == _endpoint_read(item, "e", ctype), item
    # Not the plain shape (or not valid): left to the general reading.
    for ctype, item in [("STATIC", lb("backend.local")), ("EDS", lb(port=0)), ("EDS", lb(port="80")),
                        ("EDS", lb(load_balancing_weight=0)), ("EDS", lb(load_balancing_weight=129)),
                        ("EDS", lb(health_status="HEALTHY")), ("EDS", {"endpoint": {"address": {
                            "socket_address": {"address": "127.0.0.1", "portValue": 80}}}}),
                        ("STRICT_DNS", lb(""))]:
        assert _plain_endpoint(item, ctype) is None, item


def test_a_listener_that_cannot_bind_when_its_routes_come_is_a_refused_update(tmp_path, upstreams):
    """A warming listener binds when its routes arrive; if its port is taken then, the RDS
    update is refused (counted, the listener still warming) and the file watcher goes on:
    the next route file, once the port is free, is taken."""
    import socket
    from test_file_discovery import publish, source as file_source
    a = upstreams[0].port
    rds = tmp_path / "rds.yaml"
    publish(rds, "r0", [])
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    listener = rds_listener("rt", {**file_source(rds), "initial_fetch_timeout": "0s"})   # (start() waits not)
    listener["address"]["socket_address"]["port_value"] = port
    text = envoy_yaml(listeners=[listener], clusters=[static_cluster("svc", [a])], node={"id": "n", "cluster": "c"})
    with fastproxy.Proxy.from_envoy(text, concurrency=1) as p:
        assert p.warming_listeners() == ["web"]
        publish(rds, "r1", [{"@type": xcp.ROUTE, **route_config("rt", "svc")}])
        wait_for(lambda: p.stats()["http.web.rds.rt.update_rejected"] == 1, timeout=10, msg="bind refused")
        assert p.warming_listeners() == ["web"]
        holder.close()
        publish(rds, "r2", [{"@type": xcp.ROUTE, **route_config("rt", "svc", domains=("*", "x"))}])
        wait_for(lambda: body(("127.0.0.1", port)) == b"a", timeout=10, msg="bound once the port is free")
        assert p.warming_listeners() == []


def test_an_eds_assignments_overprovisioning_factor_reaches_its_cluster():
    # The factor rides on the decoded assignment (config.envoy.Endpoints); the EDS cluster
    # that takes the assignment's endpoints must take its factor too (it spills load to
    # the next priority by it), not keep the default 140.
    from fastproxy.config.envoy import load_assignment
    from fastproxy.model import Cluster
    from fastproxy.xds.resources import XdsResources
    la = {"cluster_name": "svc", "policy": {"overprovisioning_factor": 200},
          "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
              "address": "127.0.0.1", "port_value": 8080}}}}]}]}
    assignment = load_assignment(la, "resources[0]", "EDS")
    eds = Cluster(name="svc", type="EDS")
    other = Cluster(name="static")
    out = XdsResources._with_endpoints(None, [eds, other], {"svc": assignment})
    assert out[0].overprovisioning_factor == 200 and [e.port for e in out[0].endpoints] == [8080]
    assert out[1] is other and eds.overprovisioning_factor == 140      # (copies; the original is kept)
