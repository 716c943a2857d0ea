"""File-based discovery (path_config_source): LDS and CDS from DiscoveryResponse files,
reloaded on a move into place, with Envoy's stats, against a real proxy serving real HTTP.

Every file is replaced the way Envoy expects (a rename onto the path, or the Kubernetes
ConfigMap ``..data`` symlink swap in a watched directory); every change is awaited as a
condition (the routing outcome, a stat), never slept for.
"""
from __future__ import annotations

import json
import logging
import os
import socket

import pytest
import yaml

import fastproxy
from fastproxy.config import load_envoy
from fastproxy.errors import ConfigError
from fastproxy.xds import CLUSTER_TYPE, LISTENER_TYPE
from fastproxy.xds.xxhash64 import xxh64

from conftest import (admin_get, envoy_bootstrap, find_envoy, free_port, http_listener, start_envoy,
                      static_cluster, wait_for)
from http_upstreams import RawHttpUpstream, http_request


# --------------------------------------------------------------------------- helpers

NODE = {"id": "fp-test", "cluster": "tests"}


def with_node(**kw):
    """A bootstrap with the node identity Envoy requires of any dynamic_resources."""
    return envoy_bootstrap(node=NODE, **kw)


boot = with_node

def named_upstream(name: str) -> RawHttpUpstream:
    """An HTTP upstream whose every response body is its name."""
    body = name.encode()
    return RawHttpUpstream(lambda m, p, h, b: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def upstreams():
    made = {}

    def get(name):
        if name not in made:
            made[name] = named_upstream(name)
        return made[name]

    yield get
    for u in made.values():
        u.close()


def lds_listener(name, cluster, port=0, prefix="/"):
    """An LDS resource: an HTTP listener sending ``prefix`` to ``cluster``."""
    return {"@type": LISTENER_TYPE,
            **http_listener([{"match": {"prefix": prefix}, "route": {"cluster": cluster}}],
                            name=name, stat_prefix=name, port=port)}


def cds_cluster(name, port):
    return {"@type": CLUSTER_TYPE, **static_cluster(name, [port])}


def response_text(version, resources, path):
    data = {"version_info": version, "resources": resources}
    return json.dumps(data) if str(path).endswith(".json") else yaml.safe_dump(data, sort_keys=False)


def publish(path, version, resources):
    """Replace ``path`` atomically (write beside it, rename onto it): what Envoy watches."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(response_text(version, resources, path))
    os.replace(tmp, path)


class ConfigMapDir:
    """A directory laid out as Kubernetes mounts a ConfigMap: ``<key> -> ..data/<key>``,
    ``..data -> ..<timestamp>``; publish() writes a new timestamped directory and swaps the
    ``..data`` symlink with a rename (kubelet's atomic writer)."""

    def __init__(self, root, files):
        self.root = root
        self.n = 0
        self.publish(files)
        for key in files:
            os.symlink(os.path.join("..data", key), root / key)

    def publish(self, files):
        self.n += 1
        version_dir = self.root / f"..2026_12_05_{self.n}"
        version_dir.mkdir()
        for key, text in files.items():
            (version_dir / key).write_text(text)
        tmp = self.root / "..data_tmp"
        os.symlink(version_dir.name, tmp)
        os.replace(tmp, self.root / "..data")


def source(path, watched=None):
    pcs = {"path": str(path)}
    if watched is not None:
        pcs["watched_directory"] = {"path": str(watched)}
    return {"path_config_source": pcs, "resource_api_version": "V3"}


def get(addr, path="/"):
    """(status, body) of one request, None when the connection is refused, "reset" when
    it was reset (queued on a listener that was being removed: the engine refuses what it
    had not accepted)."""
    try:
        r, body = http_request(addr, path=path, timeout=3)
    except ConnectionRefusedError:
        return None
    except ConnectionResetError:
        return "reset"
    return r.status, body


@pytest.fixture
def run_proxy():
    made = []

    def start(boot):
        p = fastproxy.Proxy.from_bootstrap(load_envoy(boot), concurrency=2)
        p.start()
        made.append(p)
        return p

    yield start
    for p in made:
        p.stop(drain_timeout=0.2)


# --------------------------------------------------------------------------- LDS

def test_lds_file_adds_changes_and_removes_a_listener(tmp_path, upstreams, run_proxy):
    a, b = upstreams("A"), upstreams("B")
    lds = tmp_path / "lds.yaml"
    publish(lds, "1", [lds_listener("dyn", "a")])
    p = run_proxy(boot(clusters=[static_cluster("a", [a.port]), static_cluster("b", [b.port])],
                                  dynamic_resources={"lds_config": source(lds)}))
    # The initial fetch is done when start() returns.
    addr = p.listener_address("dyn")
    assert get(addr) == (200, b"A")
    s = p.stats()
    assert s["listener_manager.lds.update_attempt"] == 1 and s["listener_manager.lds.update_success"] == 1
    assert s["listener_manager.lds.version"] == xxh64(b"1")
    assert s["listener_manager.total_listeners_active"] == 1

    # Changed: the same listener now routes to b, on the same socket.
    publish(lds, "2", [lds_listener("dyn", "b")])
    wait_for(lambda: get(addr) == (200, b"B"), msg="listener routes to b")
    assert p.listener_address("dyn") == addr
    # Added beside it.
    publish(lds, "3", [lds_listener("dyn", "b"), lds_listener("dyn2", "a")])
    wait_for(lambda: p.stats()["listener_manager.lds.update_success"] == 3)
    assert get(p.listener_address("dyn2")) == (200, b"A")
    assert p.stats()["listener_manager.total_listeners_active"] == 2
    # Removed (state of the world: absent from the file): its port refuses connections.
    publish(lds, "4", [lds_listener("dyn2", "a")])
    wait_for(lambda: p.stats()["listener_manager.lds.update_success"] == 4)
    assert get(addr) is None
    with pytest.raises(KeyError):
        p.listener_address("dyn")
    [(listener, version, _)] = p.xds.discovered("listeners")
    assert (listener.name, version) == ("dyn2", "3")          # unchanged since version 3
    assert p.xds.version_info(LISTENER_TYPE) == "4" and p.xds.discovered("clusters") == []
    s = p.stats()
    assert s["listener_manager.lds.update_success"] == 4 and s["listener_manager.lds.update_rejected"] == 0
    assert s["listener_manager.lds.version"] == xxh64(b"4")
    assert s["listener_manager.total_listeners_active"] == 1


def test_static_and_dynamic_listeners_mixed(tmp_path, upstreams, run_proxy):
    a, b = upstreams("A"), upstreams("B")
    lds = tmp_path / "lds.json"         # JSON by its extension, as Envoy reads it
    publish(lds, "v1", [lds_listener("dyn", "b")])
    p = run_proxy(boot(listeners=[http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "a"}}],
                                                           name="static")],
                                  clusters=[static_cluster("a", [a.port]), static_cluster("b", [b.port])],
                                  dynamic_resources={"lds_config": source(lds)}))
    static = p.listener_address("static")
    assert get(static) == (200, b"A") and get(p.listener_address("dyn")) == (200, b"B")
    # An empty response removes every discovered listener; the static one stays.
    publish(lds, "v2", [])
    wait_for(lambda: "dyn" not in {l.name for l in p.config.listeners})
    assert get(static) == (200, b"A")
    # A discovered listener may not replace a static one.
    publish(lds, "v3", [lds_listener("static", "b")])
    wait_for(lambda: p.stats()["listener_manager.lds.update_rejected"] == 1)
    assert get(static) == (200, b"A")


# --------------------------------------------------------------------------- CDS

def test_cds_file_adds_and_changes_a_cluster_a_listener_routes_to(tmp_path, upstreams, run_proxy):
    a, b = upstreams("A"), upstreams("B")
    cds, lds = tmp_path / "cds.yaml", tmp_path / "lds.yaml"
    publish(cds, "c1", [cds_cluster("svc", a.port)])
    publish(lds, "l1", [lds_listener("dyn", "svc")])
    p = run_proxy(boot(dynamic_resources={"cds_config": source(cds), "lds_config": source(lds)}))
    addr = p.listener_address("dyn")
    assert get(addr) == (200, b"A")            # CDS was read before LDS
    s = p.stats()
    assert s["cluster_manager.cds.update_success"] == 1 and s["cluster_manager.active_clusters"] == 1
    # The cluster's endpoint changes: the unchanged listener now reaches b.
    publish(cds, "c2", [cds_cluster("svc", b.port)])
    wait_for(lambda: get(addr) == (200, b"B"), msg="cluster svc now at b")
    assert p.stats()["cluster_manager.cds.version"] == xxh64(b"c2")
    # Removing a cluster a listener still routes to is accepted, as by Envoy: its requests
    # get 503 (flag NC) until a cluster of that name comes back.
    publish(cds, "c3", [])
    wait_for(lambda: p.stats()["cluster_manager.cds.update_success"] == 3)
    assert get(addr)[0] == 503
    assert p.stats()["http.dyn.no_cluster"] >= 1
    publish(cds, "c4", [cds_cluster("svc", a.port)])
    wait_for(lambda: get(addr) == (200, b"A"), msg="cluster svc back, at a")
    assert p.stats()["cluster_manager.cds.update_rejected"] == 0


def test_unknown_cluster_in_lds_names_its_path(tmp_path, upstreams, run_proxy, caplog):
    a = upstreams("A")
    lds = tmp_path / "lds.yaml"
    publish(lds, "1", [lds_listener("ok", "a"), {"@type": LISTENER_TYPE, **http_listener(
        [{"match": {"prefix": "/"}, "route": {"cluster": "nope"}}], name="bad")}])
    with caplog.at_level(logging.WARNING, logger="fastproxy.config"):
        p = run_proxy(boot(clusters=[static_cluster("a", [a.port])],
                                      dynamic_resources={"lds_config": source(lds)}))
    # The whole response is refused: not even the good listener is added.
    assert [l.name for l in p.config.listeners] == []
    assert p.stats()["listener_manager.lds.update_rejected"] == 1
    assert "resources[1].filter_chains[0].filters[0].typed_config.route_config" in caplog.text
    assert "unknown cluster 'nope'" in caplog.text


def test_listener_that_cannot_bind_is_rejected(tmp_path, upstreams, run_proxy, caplog):
    a = upstreams("A")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    lds = tmp_path / "lds.yaml"
    publish(lds, "1", [lds_listener("dyn", "a")])
    p = run_proxy(boot(clusters=[static_cluster("a", [a.port])], dynamic_resources={"lds_config": source(lds)}))
    addr = p.listener_address("dyn")
    with caplog.at_level(logging.WARNING, logger="fastproxy.config"):
        publish(lds, "2", [lds_listener("dyn", "a"), lds_listener("clash", "a", port=taken)])
        wait_for(lambda: p.stats()["listener_manager.lds.update_rejected"] == 1)
    holder.close()
    assert "resources[1].address: cannot bind" in caplog.text
    assert [l.name for l in p.config.listeners] == ["dyn"] and get(addr) == (200, b"A")


# --------------------------------------------------------------------------- watched directory

def test_configmap_symlink_swap_in_watched_directory_reloads(tmp_path, upstreams, run_proxy):
    a, b = upstreams("A"), upstreams("B")
    root = tmp_path / "cm"
    root.mkdir()
    lds = root / "lds.yaml"
    cm = ConfigMapDir(root, {"lds.yaml": response_text("1", [lds_listener("dyn", "a")], lds)})
    p = run_proxy(boot(clusters=[static_cluster("a", [a.port]), static_cluster("b", [b.port])],
                                  dynamic_resources={"lds_config": source(lds, watched=root)}))
    addr = p.listener_address("dyn")
    assert get(addr) == (200, b"A")
    cm.publish({"lds.yaml": response_text("2", [lds_listener("dyn", "b")], lds)})
    wait_for(lambda: get(addr) == (200, b"B"), msg="..data swap reloads")
    assert p.stats()["listener_manager.lds.version"] == xxh64(b"2")


def test_one_swap_of_cds_and_lds_applies_clusters_first(tmp_path, upstreams, run_proxy):
    """One ConfigMap holding both files: a swap that adds a cluster and a listener routing
    to it is taken whole, because CDS is applied before LDS (Envoy's order)."""
    a, b = upstreams("A"), upstreams("B")
    root = tmp_path / "cm"
    root.mkdir()
    cds, lds = root / "cds.yaml", root / "lds.yaml"
    cm = ConfigMapDir(root, {"cds.yaml": response_text("c1", [cds_cluster("ca", a.port)], cds),
                             "lds.yaml": response_text("l1", [lds_listener("one", "ca")], lds)})
    p = run_proxy(boot(dynamic_resources={"cds_config": source(cds, watched=root),
                                          "lds_config": source(lds, watched=root)}))
    cm.publish({"cds.yaml": response_text("c2", [cds_cluster("ca", a.port), cds_cluster("cb", b.port)], cds),
                "lds.yaml": response_text("l2", [lds_listener("one", "ca"), lds_listener("two", "cb")], lds)})
    wait_for(lambda: p.stats()["listener_manager.lds.update_success"] == 2)
    s = p.stats()
    assert s["cluster_manager.cds.update_success"] == 2 and s["listener_manager.lds.update_rejected"] == 0
    assert get(p.listener_address("two")) == (200, b"B") and get(p.listener_address("one")) == (200, b"A")
    assert s["cluster_manager.active_clusters"] == 2 and s["listener_manager.total_listeners_active"] == 2


def test_a_write_in_place_is_not_a_reload(tmp_path, upstreams, run_proxy):
    """Only moves are watched (Envoy's rule: only a rename is atomic); the next move picks
    up the latest content."""
    a, b = upstreams("A"), upstreams("B")
    lds = tmp_path / "lds.yaml"
    publish(lds, "1", [lds_listener("dyn", "a")])
    p = run_proxy(boot(clusters=[static_cluster("a", [a.port]), static_cluster("b", [b.port])],
                                  dynamic_resources={"lds_config": source(lds)}))
    addr = p.listener_address("dyn")
    lds.write_text(response_text("2", [lds_listener("dyn", "b")], lds))
    # A move of another file in the same directory is no reload of this one either.
    other = tmp_path / "other.yaml"
    publish(other, "x", [])
    publish(lds, "3", [lds_listener("dyn", "b"), lds_listener("dyn2", "a")])
    wait_for(lambda: p.stats()["listener_manager.lds.update_success"] == 2)
    assert p.stats()["listener_manager.lds.update_attempt"] == 2
    assert get(addr) == (200, b"B")


# --------------------------------------------------------------------------- bad files

@pytest.mark.parametrize("text, counter, reason", [
    ("version_info: '2'\nresources: [\n", "update_failure", "YAML syntax error"),
    ("version_info: '2'\nresources:\n- '@type': " + LISTENER_TYPE + "\n  name: dyn\n  colour: red\n",
     "update_rejected", "resources[0].colour: unsupported field 'colour'"),
    ("version_info: '2'\nresources:\n- '@type': " + LISTENER_TYPE + "\n  name: dyn\n"
     "  address: {socket_address: {address: 127.0.0.1, port_value: 70000}}\n",
     "update_rejected", "resources[0].address.socket_address.port_value: port must be"),
    ("version_info: '2'\ntype_url: " + CLUSTER_TYPE + "\nresources: []\n",
     "update_rejected", "type_url: expected '" + LISTENER_TYPE + "'"),
    ("version_info: '2'\nresources:\n- '@type': " + CLUSTER_TYPE + "\n  name: dyn\n",
     "update_rejected", "resources[0].@type: expected '" + LISTENER_TYPE + "'"),
])
def test_invalid_file_keeps_the_old_config(tmp_path, upstreams, run_proxy, caplog, text, counter, reason):
    a = upstreams("A")
    lds = tmp_path / "lds.yaml"
    publish(lds, "1", [lds_listener("dyn", "a")])
    p = run_proxy(boot(clusters=[static_cluster("a", [a.port])],
                                  dynamic_resources={"lds_config": source(lds)}))
    addr = p.listener_address("dyn")
    with caplog.at_level(logging.WARNING, logger="fastproxy.config"):
        tmp = tmp_path / "next"
        tmp.write_text(text)
        os.replace(tmp, lds)
        wait_for(lambda: p.stats()[f"listener_manager.lds.{counter}"] == 1)
    s = p.stats()
    assert s["listener_manager.lds.update_attempt"] == 2 and s["listener_manager.lds.update_success"] == 1
    assert s["listener_manager.lds.version"] == xxh64(b"1")
    assert get(addr) == (200, b"A") and p.listener_address("dyn") == addr
    assert "lds update" in caplog.text and reason in caplog.text
    # A good file afterwards is taken.
    publish(lds, "3", [])
    wait_for(lambda: p.stats()["listener_manager.lds.update_success"] == 2)
    assert get(addr) is None


# --------------------------------------------------------------------------- stats pages

def test_xds_stats_on_the_admin_pages(tmp_path, upstreams, run_proxy):
    a = upstreams("A")
    lds = tmp_path / "lds.yaml"
    publish(lds, "1", [lds_listener("dyn", "a")])
    p = run_proxy(boot(clusters=[static_cluster("a", [a.port])],
                                  dynamic_resources={"lds_config": source(lds)}))
    text = admin_get(p.admin_address, "/stats")
    assert "listener_manager.lds.update_success: 1" in text
    assert f"listener_manager.lds.version: {xxh64(b'1')}" in text
    assert "cluster_manager.cds." not in text          # no cds_config, no cds stats (Envoy)
    prom = admin_get(p.admin_address, "/stats/prometheus")
    assert "# TYPE envoy_listener_manager_lds_version gauge" in prom
    assert f"envoy_listener_manager_lds_version{{}} {xxh64(b'1')}" in prom
    assert "envoy_listener_manager_lds_update_rejected{} 0" in prom


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_dynamic_resources_fields(tmp_path):
    f = tmp_path / "lds.yaml"
    publish(f, "1", [])
    b = load_envoy(envoy_bootstrap(dynamic_resources={"lds_config": {"path": str(f)},
                                                      "cds_config": source(f, watched=tmp_path)},
                                   node={"id": "n1", "cluster": "c1", "metadata": {"k": ["v"]},
                                         "locality": {"region": "r", "zone": "z", "sub_zone": "s"}}))
    assert b.dynamic_resources.lds.path == str(f) and b.dynamic_resources.lds.watched_directory is None
    assert b.dynamic_resources.cds.watched_directory == str(tmp_path)
    n = b.node
    assert (n.id, n.cluster, n.region, n.zone, n.sub_zone, n.metadata) == ("n1", "c1", "r", "z", "s", {"k": ["v"]})


@pytest.mark.parametrize("dynamic, path, words", [
    ({"ads_config": {"api_type": "GRPC"}}, "dynamic_resources.ads_config.grpc_services", "exactly one"),
    ({"ads_config": {"api_type": "REST"}}, "dynamic_resources.ads_config.api_type", "GRPC"),
    ({"lds_config": {"ads": {}}}, "dynamic_resources.lds_config.ads", "requires dynamic_resources.ads_config"),
    ({"cds_config": {"api_config_source": {"api_type": "DELTA_GRPC"}}},
     "dynamic_resources.cds_config.api_config_source.grpc_services", "exactly one"),
    ({"cds_config": {"api_config_source": {"api_type": "REST"}}},
     "dynamic_resources.cds_config.api_config_source.api_type", "REST is not supported"),
    ({"lds_config": {"api_config_source": {"api_type": "GRPC", "grpc_services": [
        {"envoy_grpc": {"cluster_name": "nope"}}]}}},
     "dynamic_resources.lds_config.api_config_source.grpc_services[0].envoy_grpc.cluster_name",
     "unknown static cluster 'nope'"),
    ({"lds_config": {"path": "/nonexistent/lds.yaml"}}, "dynamic_resources.lds_config.path", "does not exist"),
    ({"lds_config": {"resource_api_version": "V2", "path": "."}},
     "dynamic_resources.lds_config.resource_api_version", "V3"),
    ({"lds_config": {}}, "dynamic_resources.lds_config", "config source is required"),
])
def test_unsupported_dynamic_resources_are_refused_by_path(dynamic, path, words):
    with pytest.raises(ConfigError) as e:
        load_envoy(envoy_bootstrap(dynamic_resources=dynamic))
    assert e.value.path == path and words in str(e.value)




def test_dynamic_resources_need_the_node_identity(tmp_path):
    f = tmp_path / "lds.yaml"
    publish(f, "1", [])
    b = load_envoy(envoy_bootstrap(dynamic_resources={"lds_config": source(f)}))
    with pytest.raises(ConfigError) as e:
        fastproxy.Proxy.from_bootstrap(b)
    assert e.value.path == "node" and "node 'id' and 'cluster' are required" in str(e.value)
    b.node.id, b.node.cluster = "n", "c"        # what --service-node/--service-cluster do
    fastproxy.Proxy.from_bootstrap(b, concurrency=1).stop()


def test_xxh64_matches_the_published_vectors():
    assert xxh64(b"") == 0xEF46DB3751D8E999
    assert xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert xxh64(b"Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1
    assert xxh64(bytes(range(100))) == xxh64(bytes(range(100)))


# --------------------------------------------------------------------------- beside Envoy

@pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found")
def test_same_swap_sequence_same_outcome_as_envoy(tmp_path, upstreams, run_proxy):
    """One bootstrap and one sequence of ConfigMap swaps (a listener added, changed, a bad
    file, removed), fed to fastproxy and to Envoy 1.40: the same responses and the same
    lds stats after each step."""
    a, b = upstreams("A"), upstreams("B")
    ports = {"fp": free_port(), "envoy": free_port()}
    stats = ("update_attempt", "update_success", "update_rejected", "update_failure", "version")

    def steps(port):
        good = lambda version, cluster: response_text(version, [lds_listener("dyn", cluster, port=port)], "x.yaml")
        return [("1", good("1", "a"), (200, b"A")),
                ("2", good("2", "b"), (200, b"B")),
                ("bad", "version_info: '3'\nresources:\n- '@type': " + LISTENER_TYPE + "\n  name: dyn\n  colour: red\n",
                 (200, b"B")),
                ("4", response_text("4", [], "x.yaml"), None)]

    outcomes = {}
    for who in ("fp", "envoy"):
        root = tmp_path / who
        root.mkdir()
        lds = root / "lds.yaml"
        sequence = steps(ports[who])
        cm = ConfigMapDir(root, {"lds.yaml": sequence[0][1]})
        boot = with_node(clusters=[static_cluster("a", [a.port]), static_cluster("b", [b.port])],
                               dynamic_resources={"lds_config": source(lds, watched=root)})
        addr = ("127.0.0.1", ports[who])
        if who == "fp":
            p = run_proxy(boot)
            read = lambda: {k: v for k, v in p.stats().items() if k.startswith("listener_manager.lds.")}
            proc = None
        else:
            text = yaml.safe_dump(boot, sort_keys=False)
            run = tmp_path / "envoy_run"
            run.mkdir()
            proc, admin, _ = start_envoy(text, run)

            def read():
                out = {}
                for line in admin_get(admin, "/stats?filter=^listener_manager.lds.").splitlines():
                    k, _, v = line.partition(": ")
                    if v.strip().isdigit():
                        out[k] = int(v)
                return out
        try:
            seen = []
            for i, (_, text, expect) in enumerate(sequence):
                if i:
                    cm.publish({"lds.yaml": text})
                # The attempt is over once it has counted its outcome (a removed listener's
                # port refuses before the success is counted).
                wait_for(lambda: (lambda st: st.get("listener_manager.lds.update_attempt") == i + 1 == sum(
                    st.get(f"listener_manager.lds.{k}", 0) for k in ("update_success", "update_rejected",
                                                                      "update_failure")))(read()), timeout=10)
                wait_for(lambda: get(addr) == expect, timeout=10, msg=f"{who} step {i}")
                snapshot = read()
                seen.append((get(addr), tuple(snapshot.get(f"listener_manager.lds.{s}") for s in stats)))
            outcomes[who] = seen
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait()
    assert outcomes["fp"] == outcomes["envoy"]


# --------------------------------------------------------------------------- the command line

def test_command_line_serves_discovered_listeners(tmp_path, upstreams):
    """``fastproxy -c`` with dynamic_resources: the node identity may come from the command
    line (--service-node/--service-cluster, as in Envoy), and a reload is logged under
    [config]."""
    import subprocess
    import sys
    from conftest import SRC
    a, b = upstreams("A"), upstreams("B")
    port = free_port()
    lds = tmp_path / "lds.yaml"
    publish(lds, "1", [lds_listener("dyn", "a", port=port)])
    cfg = tmp_path / "boot.yaml"
    cfg.write_text(yaml.safe_dump(envoy_bootstrap(
        clusters=[static_cluster("a", [a.port]), static_cluster("b", [b.port])],
        dynamic_resources={"lds_config": source(lds)}), sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "fastproxy", "-c", str(cfg), "--concurrency", "1", "-l", "info"]

    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "node: type.googleapis.com/envoy.config.listener.v3.Listener: " \
                                       "node 'id' and 'cluster' are required" in refused.stderr

    proc = subprocess.Popen(cmd + ["--service-node", "n1", "--service-cluster", "c1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        addr = ("127.0.0.1", port)
        wait_for(lambda: get(addr) == (200, b"A"), timeout=30, msg="discovered listener serves")
        publish(lds, "2", [lds_listener("dyn", "b", port=port)])
        wait_for(lambda: get(addr) == (200, b"B"), timeout=10, msg="reloaded")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "[info][config] lds update accepted: version '2', 1 resource(s)" in err
