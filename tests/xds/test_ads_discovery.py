"""ads_config end to end: fastproxy and real Envoy 1.40 on the same bootstrap, driven by the
same scripted control plane (tests/xds_control_plane.py): the same ACK/NACK sequence and the
same routing outcome after each push. State of the world and delta."""
from __future__ import annotations

import pytest

import fastproxy
from conftest import find_envoy, start_envoy, static_cluster, wait_for
from http_upstreams import http_request

xcp = pytest.importorskip("xds_control_plane", reason="grpcio and xds-protos (the xds extra) are not installed")
from test_ads_reference_envoy import ads_bootstrap, upstreams, web  # noqa: E402,F401  (upstreams: a fixture)

ENVOY = find_envoy()


class Fastproxy:
    def __init__(self, text):
        self.proxy = fastproxy.Proxy.from_envoy(text, concurrency=1).start()

    def address(self):
        return self.proxy.listener_address("web")

    def stop(self):
        self.proxy.stop()


class Envoy:
    def __init__(self, text, tmp_path):
        self.proc, self.admin, self.addr = start_envoy(text, tmp_path)

    def address(self):
        return self.addr

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def body(addr):
    try:
        return http_request(addr, path="/x", timeout=2)[1]
    except OSError:
        return None


def script(cp, start, a, b):
    """The scripted sequence: initial set, a refused listener, a good change, a stream
    failure. Returns (what each request answered, the ACK/NACK sequence)."""
    cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port]), static_cluster("up-b", [b.port])], "c1")
    cp.set(xcp.LISTENER, [web("up-a")], "l1")
    server = start()
    try:
        addr = server.address()
        seen = [body(addr)]
        cp.wait_for(lambda rs: sum(1 for r in rs if r.response_nonce) >= 2)
        cp.set(xcp.LISTENER, [web("up-b", stat_prefix="")], "l2")        # refused
        cp.wait_for(lambda rs: any(r.nack for r in rs))
        seen.append(body(addr))
        cp.set(xcp.LISTENER, [web("up-b")], "l3")
        cp.wait_for(lambda rs: any(r.type_url == xcp.LISTENER and r.response_nonce and not r.nack
                                   and (r.delta or r.version_info == "l3") for r in rs[-3:]))
        wait_for(lambda: body(addr) == b"b", timeout=10, msg="l3 in force")
        seen.append(body(addr))
        before = len(cp.requests)
        cp.drop_streams()
        cp.wait_for(lambda rs: {r.type_url for r in rs[before:] if not r.response_nonce}
                    >= {xcp.CLUSTER, xcp.LISTENER}, timeout=30)
        # ... and answers what the new stream sends it.
        cp.wait_for(lambda rs: {r.type_url for r in rs[before:] if r.response_nonce}
                    >= {xcp.CLUSTER, xcp.LISTENER}, timeout=30)
        seen.append(body(addr))
    finally:
        server.stop()
    # The sequence as the protocol sees it: per request, its type, whether it answers a
    # response (ACK/NACK) and the version it says it holds (SotW), and what it asks on a
    # new stream; nonces and stream ids differ between runs and are left out.
    seq = [(r.type_url.rsplit(".", 1)[1], "nack" if r.nack else "ack" if r.response_nonce else "request",
            r.version_info, tuple(sorted(r.initial_versions.items()))) for r in cp.requests]
    nacks = [r.error_detail for r in cp.requests if r.nack]
    return seen, seq, nacks


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_fastproxy_and_envoy_give_the_same_acks_and_routes(api_type, upstreams, tmp_path):
    a, b = upstreams
    text = None
    with xcp.ControlPlane() as cp:
        text = ads_bootstrap(cp.port, api_type)
        ours, our_seq, our_nacks = script(cp, lambda: Fastproxy(text), a, b)
    assert ours == [b"a", b"a", b"b", b"b"]
    # Our NACK names the refused field by its path in the response.
    assert len(our_nacks) == 1 and "resources[0]" in our_nacks[0] and "stat_prefix" in our_nacks[0]
    if ENVOY is None:
        pytest.skip("envoy binary not on PATH nor next to sys.executable")
    with xcp.ControlPlane() as cp:
        text = ads_bootstrap(cp.port, api_type)
        theirs, their_seq, _ = script(cp, lambda: Envoy(text, tmp_path), a, b)
    assert ours == theirs
    assert our_seq == their_seq, (our_seq, their_seq)


def test_ads_stats_and_the_initial_fetch(upstreams):
    a, _ = upstreams
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])], "c1")
        cp.set(xcp.LISTENER, [web("up-a")], "l1")
        with fastproxy.Proxy.from_envoy(ads_bootstrap(cp.port), concurrency=1) as p:
            # start() returned after the initial fetch: the discovered listener serves now.
            assert body(p.listener_address("web")) == b"a"
            st = p.stats()
            assert st["control_plane.connected_state"] == 1
            assert st["cluster_manager.cds.update_success"] == 1 and st["listener_manager.lds.update_success"] == 1
            cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port]), {"name": "bad", "connect_timeout": "-1s"}], "c2")
            wait_for(lambda: p.stats()["cluster_manager.cds.update_rejected"] == 1, msg="rejected")
            # Envoy counts the subscription's start and each response: 1 + 2.
            assert p.stats()["cluster_manager.cds.update_attempt"] == 3
            cp.drop_streams()
            cp.stop()
            wait_for(lambda: p.stats()["control_plane.connected_state"] == 0, msg="disconnected")
            assert body(p.listener_address("web")) == b"a"         # the last good config serves


def test_ads_config_errors_name_their_field():
    from fastproxy.config import load_envoy
    from fastproxy.errors import ConfigError
    import yaml
    boot = yaml.safe_load(ads_bootstrap(1))
    boot["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] = "nope"
    with pytest.raises(ConfigError, match=r"dynamic_resources\.ads_config\.grpc_services\[0\]\.envoy_grpc\.cluster_name"):
        load_envoy(yaml.safe_dump(boot))
    boot = yaml.safe_load(ads_bootstrap(1))
    boot["dynamic_resources"]["ads_config"]["api_type"] = "REST"
    with pytest.raises(ConfigError, match=r"dynamic_resources\.ads_config\.api_type"):
        load_envoy(yaml.safe_dump(boot))
    boot = yaml.safe_load(ads_bootstrap(1))
    del boot["dynamic_resources"]["ads_config"]
    with pytest.raises(ConfigError, match=r"dynamic_resources\.lds_config\.ads"):
        load_envoy(yaml.safe_dump(boot))


def test_discovered_resources_in_the_config_dump(upstreams):
    a, _ = upstreams
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])], "c7")
        cp.set(xcp.LISTENER, [web("up-a")], "l7")
        with fastproxy.Proxy.from_envoy(ads_bootstrap(cp.port), concurrency=1) as p:
            dump = p.config_dump()
            by_type = {c["@type"].rsplit(".", 1)[1]: c for c in dump["configs"]}
            clusters = by_type["ClustersConfigDump"]
            assert [c["cluster"]["name"] for c in clusters["static_clusters"]] == ["xds"]
            active = clusters["dynamic_active_clusters"]
            assert [(c["cluster"]["name"], c["version_info"]) for c in active] == [("up-a", "c7")]
            assert clusters["version_info"] == "c7"
            listeners = by_type["ListenersConfigDump"]
            dyn = listeners["dynamic_listeners"]
            assert [(l["name"], l["active_state"]["version_info"]) for l in dyn] == [("web", "l7")]


def test_a_type_nobody_asked_for_is_ignored_as_envoy_does(upstreams, tmp_path):
    """A response of a type the client did not subscribe to (routes, here): Envoy 1.40
    answers nothing and keeps serving; fastproxy the same."""
    a, _ = upstreams
    route = {"name": "r", "virtual_hosts": []}
    outcomes = {}
    for kind in ("fastproxy", "envoy"):
        if kind == "envoy" and ENVOY is None:
            continue
        with xcp.ControlPlane() as cp:
            cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])], "c1")
            cp.set(xcp.LISTENER, [web("up-a")], "l1")
            text = ads_bootstrap(cp.port)
            server = Fastproxy(text) if kind == "fastproxy" else Envoy(text, tmp_path)
            try:
                cp.wait_for(lambda rs: sum(1 for r in rs if r.response_nonce) >= 2)
                cp.send_unrequested(xcp.ROUTE, [route], "r1")
                # A marker after it on the same stream: once its ACK is in, anything the
                # client said about the route response would be too.
                cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])], "c2")
                cp.wait_for(lambda rs: any(r.type_url == xcp.CLUSTER and r.version_info == "c2" for r in rs))
                outcomes[kind] = ([r for r in cp.requests if r.type_url == xcp.ROUTE], body(server.address()))
            finally:
                server.stop()
    assert outcomes["fastproxy"] == ([], b"a")
    if "envoy" in outcomes:
        assert outcomes["envoy"] == outcomes["fastproxy"]


def test_ready_says_initializing_until_the_initial_fetch(upstreams):
    """The control plane has nothing yet: start() waits (initial_fetch_timeout) and /ready
    answers 503 INITIALIZING, as Envoy's; the first responses make it LIVE and start() return."""
    import threading
    import urllib.error
    import urllib.request
    a, _ = upstreams
    with xcp.ControlPlane() as cp:
        p = fastproxy.Proxy.from_envoy(ads_bootstrap(cp.port), concurrency=1)
        started = threading.Thread(target=p.start, daemon=True)
        started.start()
        try:
            admin = wait_for(lambda: p.admin_address if p.admin_address and p.admin_address[1] else None,
                             msg="admin up")

            def ready():
                try:
                    with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/ready", timeout=2) as r:
                        return r.status, r.read().decode().strip()
                except urllib.error.HTTPError as e:
                    return e.code, e.read().decode().strip()
                except urllib.error.URLError:
                    return None                                 # the admin is not listening yet
            cp.wait_for(lambda rs: len(rs) >= 2)               # it asked, and waits
            assert wait_for(ready, msg="admin answers") == (503, "INITIALIZING")
            assert started.is_alive()
            cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])], "c1")
            cp.set(xcp.LISTENER, [web("up-a")], "l1")
            started.join(timeout=10)
            assert not started.is_alive()
            assert ready() == (200, "LIVE")
            assert body(p.listener_address("web")) == b"a"
        finally:
            started.join(timeout=20)
            p.stop()


def test_the_command_line_serves_what_ads_sends(upstreams, tmp_path):
    """`fastproxy -c` in its own process (whose protobuf knows only what fastproxy imports
    itself, unlike this test's, which the control plane fills): the listener and cluster
    the control plane sends are unpacked, installed and serve."""
    import json
    import re
    import subprocess
    import sys
    import urllib.request
    a, _ = upstreams
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])], "c1")
        cp.set(xcp.LISTENER, [web("up-a")], "l1")
        cfg = tmp_path / "ads.yaml"
        cfg.write_text(ads_bootstrap(cp.port))
        proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "-c", str(cfg), "--concurrency", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            admin = None
            for line in proc.stdout:
                m = re.search(r"admin listening on http://([\d.]+):(\d+)/", line)
                if m:
                    admin = (m.group(1), int(m.group(2)))
                    break
            assert admin, "no admin line"
            with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/listeners?format=json", timeout=5) as r:
                (st,) = json.loads(r.read())["listener_statuses"]
            sa = st["local_address"]["socket_address"]
            assert body((sa["address"], sa["port_value"])) == b"a"
            assert not any(r.nack for r in cp.requests)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def big_push(port: int) -> list:
    """Clusters whose CDS response is over grpcio's default 4 MiB receive limit: 150
    clusters of 100 endpoints, each with a 255-byte hostname."""
    name = "h" * 243 + ".example.com"
    return [static_cluster(f"big{i}", [{"endpoint": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": port}}, "hostname": name}}] * 100) for i in range(150)]


@pytest.mark.parametrize("server", ["fastproxy", "envoy"])
def test_a_push_over_4_mib_is_taken_as_by_envoy(server, upstreams, tmp_path):
    """envoy_grpc.max_receive_message_length: unset, a response of any size is taken (Envoy's
    default; grpcio's own would end the stream at 4 MiB)."""
    if server == "envoy" and ENVOY is None:
        pytest.skip("envoy not installed")
    a, _ = upstreams
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])], "c1")
        cp.set(xcp.LISTENER, [web("up-a")], "l1")
        s = Fastproxy(ads_bootstrap(cp.port)) if server == "fastproxy" else Envoy(ads_bootstrap(cp.port), tmp_path)
        try:
            cp.wait_for(lambda rs: sum(1 for r in rs if r.response_nonce) >= 2)
            clusters = [static_cluster("up-a", [a.port])] + big_push(a.port)
            assert sum(len(xcp.pack(xcp.CLUSTER, c).SerializeToString()) for c in clusters) > 4 << 20
            cp.set(xcp.CLUSTER, clusters, "c2")
            acks = cp.wait_for(lambda rs: any(r.version_info == "c2" and r.response_nonce for r in rs), timeout=60)
            assert not any(r.nack for r in acks)
            assert body(s.address()) == b"a"
        finally:
            s.stop()


def test_max_receive_message_length_ends_a_stream_with_a_bigger_response(upstreams):
    """Set, a bigger response ends the stream (as Envoy's RESOURCE_EXHAUSTED): it is not
    applied, and the last good configuration serves meanwhile."""
    import yaml
    a, _ = upstreams
    with xcp.ControlPlane() as cp:
        cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])], "c1")
        cp.set(xcp.LISTENER, [web("up-a")], "l1")
        boot = yaml.safe_load(ads_bootstrap(cp.port))
        grpc = boot["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
        grpc["max_receive_message_length"] = 1 << 20
        with fastproxy.Proxy.from_envoy(yaml.safe_dump(boot), concurrency=1) as p:
            assert p.config_dump()["configs"][0]["bootstrap"]["dynamic_resources"]["ads_config"][
                "grpc_services"][0]["envoy_grpc"]["max_receive_message_length"] == 1 << 20
            streams = {r.stream for r in cp.requests}
            cp.set(xcp.CLUSTER, [static_cluster("up-a", [a.port])] + big_push(a.port), "c2")
            # The stream ends and the client opens a new one (which gets the same response).
            cp.wait_for(lambda rs: {r.stream for r in rs} - streams, timeout=30)
            assert not any(r.version_info == "c2" and r.response_nonce for r in cp.requests)
            assert p.stats()["cluster_manager.cds.update_success"] == 1
            assert body(p.listener_address("web")) == b"a"
