"""The admin interface of a running Proxy, over real HTTP on loopback.

The proxy runs in this process (Proxy(..., admin=Admin(port=0))) with an echo upstream;
traffic goes through it on real sockets, then the admin pages are fetched with urllib.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

import fastproxy
from fastproxy import Admin, Cluster, Endpoint, Listener, TcpProxy

from conftest import (admin_get, echo_roundtrip, envoy_yaml, find_envoy, fragment, http_listener, start_envoy,
                      static_cluster, tcp_listener, wait_for)


def http(method: str, addr, path: str, timeout=10.0):
    """(status, content type, body text) of one request to the admin server."""
    req = urllib.request.Request(f"http://{addr[0]}:{addr[1]}{path}", method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def get(addr, path):
    return http("GET", addr, path)


def parse_text_stats(body: str) -> dict:
    out = {}
    for line in body.splitlines():
        m = re.fullmatch(r"(\S+): (-?\d+)", line)
        assert m, f"not a 'name: value' line: {line!r}"
        out[m.group(1)] = int(m.group(2))
    return out


@pytest.fixture
def admin_proxy(proxy_factory, servers):
    """(proxy, listener address, admin address, echo server): listener "l" (stat prefix
    "adm") -> cluster "c" -> one echo upstream; admin on an ephemeral port."""
    echo = servers.echo()
    p = proxy_factory([Listener("l", TcpProxy("c"), port=0, stat_prefix="adm")],
                      [Cluster("c", [Endpoint("127.0.0.1", echo.port)])],
                      concurrency=1, admin=Admin("127.0.0.1", 0))
    assert p.admin_address is not None
    return p, p.listener_address("l"), p.admin_address, echo


def test_stats_text_counts_the_traffic(admin_proxy):
    p, addr, admin, _ = admin_proxy
    payloads = [b"a" * 10, b"b" * 1000, b"c" * 70000]
    for data in payloads:
        assert echo_roundtrip(addr, data) == data
    total = sum(map(len, payloads))

    def tcp_stats():
        st = parse_text_stats(get(admin, "/stats")[2])
        done = st.get("tcp.adm.downstream_cx_active") == 0 and st.get("tcp.adm.downstream_cx_total") == 3
        return st if done else None

    st = wait_for(tcp_stats, timeout=10, msg="3 connections closed in /stats")
    assert st["tcp.adm.downstream_cx_rx_bytes_total"] == total
    assert st["tcp.adm.downstream_cx_tx_bytes_total"] == total
    assert st["cluster.c.upstream_cx_total"] == 3
    assert st[f"listener.127.0.0.1_{addr[1]}.downstream_cx_total"] == 3
    assert st["server.concurrency"] == 1
    assert st["server.live"] == 1

    status, ctype, body = get(admin, "/stats")
    assert status == 200 and ctype.startswith("text/plain")
    names = [line.split(":")[0] for line in body.splitlines()]
    assert names == sorted(names) and len(names) == len(set(names))
    # Same values as the Python API (bar the uptime, which ticks).
    api = p.stats()
    text = parse_text_stats(body)
    for k, v in api.items():
        if k.startswith(("tcp.", "cluster.", "listener.")):
            assert text[k] == v, k


def test_stats_json_and_filter(admin_proxy):
    p, addr, admin, _ = admin_proxy
    assert echo_roundtrip(addr, b"ping") == b"ping"
    wait_for(lambda: p.stats()["tcp.adm.downstream_cx_active"] == 0 and p.stats()["tcp.adm.downstream_cx_total"] == 1)

    status, ctype, body = get(admin, "/stats?format=json")
    assert status == 200 and ctype.startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"stats"}
    stats = {s["name"]: s["value"] for s in doc["stats"]}
    assert [s["name"] for s in doc["stats"]] == sorted(stats)
    assert stats["tcp.adm.downstream_cx_total"] == 1
    assert stats["tcp.adm.downstream_cx_rx_bytes_total"] == 4

    status, _, body = get(admin, "/stats?filter=%5Etcp%5C.adm%5C.downstream_cx_")  # ^tcp\.adm\.downstream_cx_
    assert status == 200
    filtered = parse_text_stats(body)
    assert filtered and all(k.startswith("tcp.adm.downstream_cx_") for k in filtered)
    assert filtered["tcp.adm.downstream_cx_total"] == 1

    status, _, body = get(admin, "/stats?filter=%5Bunclosed")
    assert status == 400 and "regex" in body


def test_stats_prometheus(admin_proxy):
    """/stats/prometheus: Envoy's metric names and labels, counters and gauges typed, the
    values of /stats; ?filter= and ?usedonly narrow it; /stats?format=prometheus is the same."""
    p, addr, admin, _ = admin_proxy
    assert echo_roundtrip(addr, b"ping") == b"ping"
    wait_for(lambda: p.stats()["tcp.adm.downstream_cx_active"] == 0 and p.stats()["tcp.adm.downstream_cx_total"] == 1)
    port = addr[1]

    status, ctype, body = get(admin, "/stats/prometheus")
    assert status == 200 and ctype.startswith("text/plain")
    lines = body.splitlines()
    types = dict(line.split(" ")[2:] for line in lines if line.startswith("# TYPE "))
    samples = dict(line.rsplit(" ", 1) for line in lines if not line.startswith("#"))
    assert samples['envoy_tcp_downstream_cx_total{envoy_tcp_prefix="adm"}'] == "1"
    assert samples['envoy_tcp_downstream_cx_rx_bytes_total{envoy_tcp_prefix="adm"}'] == "4"
    assert samples['envoy_cluster_upstream_cx_total{envoy_cluster_name="c"}'] == "1"
    assert samples[f'envoy_listener_downstream_cx_total{{envoy_listener_address="127.0.0.1_{port}"}}'] == "1"
    assert samples[f'envoy_listener_worker_downstream_cx_total{{envoy_worker_id="0",'
                   f'envoy_listener_address="127.0.0.1_{port}"}}'] == "1"
    assert samples["envoy_server_live{}"] == "1"
    assert types["envoy_tcp_downstream_cx_total"] == "counter"
    assert types["envoy_tcp_downstream_cx_active"] == "gauge"
    assert types["envoy_cluster_upstream_cx_active"] == "gauge"
    assert types["envoy_listener_worker_downstream_cx_active"] == "gauge"
    assert types["envoy_server_live"] == types["envoy_cluster_membership_total"] == "gauge"
    # One series per stat of /stats (a TCP-only proxy has no histograms).
    assert len(samples) == len(parse_text_stats(get(admin, "/stats")[2]))
    # counters first, then gauges, each block sorted
    kinds = [types[line.split(" ")[2]] for line in lines if line.startswith("# TYPE ")]
    assert kinds == sorted(kinds, key=["counter", "gauge"].index)

    assert get(admin, "/stats?format=prometheus")[2].count("\n") == len(lines)
    status, _, body = get(admin, "/stats/prometheus?filter=%5Etcp%5C.adm%5C.downstream_cx_total")
    assert status == 200 and body == ('# TYPE envoy_tcp_downstream_cx_total counter\n'
                                      'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="adm"} 1\n')
    used = get(admin, "/stats/prometheus?usedonly")[2]
    assert 'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="adm"} 1' in used
    assert "envoy_tcp_idle_timeout" not in used and "envoy_tcp_idle_timeout" in types
    assert get(admin, "/stats/prometheus?filter=%5Bunclosed")[0] == 400


def test_ready_server_info_listeners_clusters(admin_proxy):
    p, addr, admin, echo = admin_proxy
    assert get(admin, "/ready")[:3:2] == (200, "LIVE\n")

    status, ctype, body = get(admin, "/server_info")
    assert status == 200 and ctype.startswith("application/json")
    info = json.loads(body)
    assert info["version"] == fastproxy.__version__
    assert info["state"] == "LIVE"
    assert info["concurrency"] == p.concurrency == 1
    assert re.fullmatch(r"\d+s", info["uptime_current_epoch"])

    status, _, body = get(admin, "/listeners")
    assert status == 200
    assert body == f"l::127.0.0.1:{addr[1]}\n"
    doc = json.loads(get(admin, "/listeners?format=json")[2])
    assert doc["listener_statuses"] == [
        {"name": "l", "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": addr[1]}}}]

    status, _, body = get(admin, "/clusters")
    assert status == 200
    lines = body.splitlines()
    assert f"c::127.0.0.1:{echo.port}::weight::1" in lines
    assert f"c::127.0.0.1:{echo.port}::health_flags::healthy" in lines
    assert all(line.startswith("c::") for line in lines)
    doc = json.loads(get(admin, "/clusters?format=json")[2])
    [c] = doc["cluster_statuses"]
    assert c["name"] == "c"
    assert [h["address"]["socket_address"]["port_value"] for h in c["host_statuses"]] == [echo.port]


def test_clusters_and_listeners_follow_update(admin_proxy, servers):
    """The admin shows the proxy's current config, not the one it started with."""
    p, addr, admin, echo = admin_proxy
    other = servers.echo()
    p.update(clusters=[Cluster("c", [Endpoint("127.0.0.1", echo.port, weight=2),
                                     Endpoint("127.0.0.1", other.port, weight=3)])],
             listeners=[Listener("l", TcpProxy("c"), port=addr[1], stat_prefix="adm"),
                        Listener("extra", TcpProxy("c"), port=0)])
    lines = get(admin, "/clusters")[2].splitlines()
    assert f"c::127.0.0.1:{echo.port}::weight::2" in lines
    assert f"c::127.0.0.1:{other.port}::weight::3" in lines
    body = get(admin, "/listeners")[2]
    extra = p.listener_address("extra")
    assert body.splitlines() == [f"l::127.0.0.1:{addr[1]}", f"extra::127.0.0.1:{extra[1]}"]


def test_memory_follows_the_configuration(admin_proxy, servers):
    """/memory (Envoy's admin.v3.Memory) and the server.memory_* gauges: what a big host
    set takes is allocated while it is configured and given back when it goes."""
    p, addr, admin, echo = admin_proxy
    status, ctype, body = get(admin, "/memory")
    assert status == 200 and ctype.startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"allocated", "heap_size", "pageheap_unmapped", "pageheap_free", "total_thread_cache",
                        "total_physical_bytes"}
    assert all(isinstance(v, str) and v.isdigit() for v in doc.values())     # uint64 in proto JSON
    st = p.stats()
    assert {"server.memory_allocated", "server.memory_heap_size", "server.memory_physical_size"} <= p.gauge_names()
    assert st["server.memory_physical_size"] > 0

    def allocated():
        return int(json.loads(get(admin, "/memory")[2])["allocated"])
    small = p.config.clusters
    before = allocated()
    if before == 0:
        pytest.skip("this allocator gives no mallinfo2 figures (an ASan build's)")
    # 10,000 hosts (each Host keeps its address and a 256-byte name): megabytes of C heap.
    big = [Cluster(f"b{i}", [Endpoint("127.0.0.1", 10000 + j) for j in range(100)]) for i in range(100)]
    p.update(clusters=list(small) + big)
    grown = allocated()
    assert grown - before > 2_000_000
    p.update(clusters=list(small))
    wait_for(lambda: allocated() - before < (grown - before) // 2, timeout=10,
             msg="the removed clusters' memory given back")


def test_memory_has_envoys_shape(tmp_path):
    if find_envoy() is None:
        pytest.skip("envoy not installed")
    text = envoy_yaml(listeners=[tcp_listener("c")], clusters=[static_cluster("c", [1])])
    proc, admin, _ = start_envoy(text, tmp_path)
    try:
        envoy_doc = json.loads(get(admin, "/memory")[2])
    finally:
        proc.kill()
        proc.wait()
    proxy = fastproxy.Proxy.from_envoy(text, concurrency=1).start()
    try:
        doc = json.loads(get(proxy.admin_address, "/memory")[2])
    finally:
        proxy.stop()
    assert set(doc) == set(envoy_doc)
    assert all(isinstance(v, str) for v in envoy_doc.values()) and all(isinstance(v, str) for v in doc.values())


def test_unknown_path_and_wrong_method(admin_proxy):
    p, addr, admin, _ = admin_proxy
    status, _, body = get(admin, "/no/such/page")
    assert status == 404 and "/stats" in body
    status, _, body = get(admin, "/")
    assert status == 200 and "/quitquitquit" in body
    # quitquitquit must be a POST: a GET (a crawler, a browser prefetch) changes nothing.
    status, _, _ = get(admin, "/quitquitquit")
    assert status == 405
    assert get(admin, "/ready")[0] == 200
    assert echo_roundtrip(addr, b"still up") == b"still up"


def test_quitquitquit_marks_draining(admin_proxy):
    """Without run() waiting, POST /quitquitquit still flips /ready to 503 DRAINING."""
    p, addr, admin, _ = admin_proxy
    status, _, body = http("POST", admin, "/quitquitquit")
    assert (status, body) == (200, "OK\n")
    status, _, body = get(admin, "/ready")
    assert (status, body) == (503, "DRAINING\n")
    assert json.loads(get(admin, "/server_info")[2])["state"] == "DRAINING"
    assert parse_text_stats(get(admin, "/stats")[2])["server.live"] == 0


def test_quitquitquit_makes_run_return(servers):
    echo = servers.echo()
    p = fastproxy.Proxy([Listener("l", TcpProxy("c"), port=0, stat_prefix="q")],
                        [Cluster("c", [Endpoint("127.0.0.1", echo.port)])],
                        concurrency=1, admin=Admin("127.0.0.1", 0))
    p.start()
    addr, admin = p.listener_address("l"), p.admin_address
    results = {}
    watchdog_fired = threading.Event()

    def client():
        try:
            results["echo"] = echo_roundtrip(addr, b"before quit")
            results["quit"] = http("POST", admin, "/quitquitquit")
        except Exception as e:  # reported by the asserts below
            results["error"] = e

    def watchdog():
        watchdog_fired.set()
        p.request_shutdown()

    timer = threading.Timer(30.0, watchdog)
    timer.start()
    t = threading.Thread(target=client)
    t.start()
    started = time.monotonic()
    try:
        p.run(drain_timeout=1.0)   # returns once /quitquitquit is posted
    finally:
        timer.cancel()
        t.join(10)
    assert not watchdog_fired.is_set(), "run() did not return after POST /quitquitquit"
    assert "error" not in results, results
    assert results["echo"] == b"before quit"
    assert results["quit"][0] == 200
    assert time.monotonic() - started < 30
    # Everything is closed: the listener and the admin port refuse connections.
    for a in (addr, admin):
        with pytest.raises(OSError):
            socket.create_connection(a, timeout=2).close()


def test_quitquitquit_exits_the_cli_process(tmp_path, servers):
    from test_cli import ADMIN_RE, LISTENER_RE, CliProcess, tcp_proxy_yaml

    echo = servers.echo()
    cfg = tmp_path / "admin.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=echo.port, admin=True))
    p = CliProcess("-c", cfg, "--concurrency", "1")
    try:
        addr = p.address(LISTENER_RE.format(name="front"))
        admin = p.address(ADMIN_RE)
        assert echo_roundtrip(addr, b"x" * 5000) == b"x" * 5000
        st = parse_text_stats(get(admin, "/stats")[2])
        assert st["tcp.front_tcp.downstream_cx_total"] >= 1
        assert http("POST", admin, "/quitquitquit")[0] == 200
        assert p.proc.wait(timeout=30) == 0, p.stderr
        assert "shutdown requested through /quitquitquit" in p.stderr
    finally:
        p.kill()


# ------------------------------------------------------------------ /clusters per host

def _hosts_yaml(live, dead):
    """Cluster "up": a live host (with a hostname, weight 3) and a dead one (weight 1)."""
    return envoy_yaml([http_listener('[{match: {prefix: "/"}, route: {cluster: up}}]', name="l", stat_prefix="ing")],
                      [static_cluster("up", [fragment(f"""
                          endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {live}}}}},
                                     hostname: "live.example"}}
                          load_balancing_weight: 3
                          """), dead], type="STATIC", connect_timeout="1s")])


def _host_lines(body: str, cluster: str, port: int) -> dict:
    """{field: value} of one host's ``cluster::127.0.0.1:port::field::value`` lines."""
    prefix = f"{cluster}::127.0.0.1:{port}::"
    return {line[len(prefix):].split("::", 1)[0]: line[len(prefix):].split("::", 1)[1]
            for line in body.splitlines() if line.startswith(prefix)}


def _drive(addr, n):
    """n requests on fresh connections (round robin over the two hosts): statuses."""
    import http.client
    out = []
    for _ in range(n):
        conn = http.client.HTTPConnection(*addr, timeout=5)
        conn.request("GET", "/x")
        r = conn.getresponse()
        r.read()
        out.append(r.status)
        conn.close()
    return out


@pytest.fixture
def hosts_setup(servers, tmp_path):
    from http_upstreams import RawHttpUpstream
    from conftest import free_port
    live = RawHttpUpstream()
    dead = free_port()                  # nothing listens: every connect is refused
    yield _hosts_yaml(live.port, dead), live.port, dead
    live.close()


def _fastproxy_clusters(yaml_text, n):
    p = fastproxy.Proxy.from_envoy(yaml_text, concurrency=1)
    with p:
        statuses = _drive(p.listener_address("l"), n)
        admin = p.admin_address
        return statuses, get(admin, "/clusters")[2], json.loads(get(admin, "/clusters?format=json")[2])


def test_clusters_shows_each_hosts_counters_and_flags(hosts_setup):
    """Per host: Envoy's counters and gauges (summed over the workers), hostname, health
    flags and weight, in text and in JSON."""
    text, live, dead = hosts_setup
    statuses, body, doc = _fastproxy_clusters(text, 4)
    assert sorted(statuses) == [200, 200, 200, 503]         # weights 3 and 1
    ok = _host_lines(body, "up", live)
    assert (ok["rq_total"], ok["rq_success"], ok["rq_error"], ok["cx_total"], ok["cx_connect_fail"]) == \
        ("3", "3", "0", "1", "0")                           # one pooled connection
    assert (ok["hostname"], ok["health_flags"], ok["weight"]) == ("live.example", "healthy", "3")
    bad = _host_lines(body, "up", dead)
    assert (bad["cx_connect_fail"], bad["rq_error"], bad["rq_success"], bad["cx_active"]) == ("1", "1", "0", "0")
    assert (bad["hostname"], bad["weight"]) == ("", "1")
    assert "up::default_priority::max_connections::1024" in body.splitlines()
    # text lists a host's stats sorted by name, as Envoy does
    names = [k for k in ok if k not in ("hostname", "health_flags", "weight", "region", "zone", "sub_zone",
                                        "canary", "priority", "success_rate", "local_origin_success_rate")]
    assert names == sorted(names) and len(names) == 9
    [c] = doc["cluster_statuses"]
    h = {x["address"]["socket_address"]["port_value"]: x for x in c["host_statuses"]}
    stats = {s["name"]: s for s in h[live]["stats"]}
    assert stats["rq_total"] == {"value": "3", "name": "rq_total"}
    assert stats["rq_error"] == {"name": "rq_error"}        # proto3 JSON leaves zeros out
    assert stats["cx_active"]["type"] == "GAUGE"
    assert (h[live]["weight"], h[live]["hostname"]) == (3, "live.example")
    assert "hostname" not in h[dead]


@pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found")
def test_clusters_has_envoys_shape(hosts_setup, tmp_path):
    """The same config and traffic through real Envoy 1.40: the same per-host fields in the
    text page, the same keys in the JSON one, the same counts."""
    text, live, dead = hosts_setup
    proc, admin, addr = start_envoy(text, tmp_path)
    try:
        envoy_statuses = _drive(addr, 4)
        envoy_body = admin_get(admin, "/clusters")
        envoy_doc = json.loads(admin_get(admin, "/clusters?format=json"))
    finally:
        proc.terminate()
        proc.wait()
    statuses, body, doc = _fastproxy_clusters(text, 4)
    assert sorted(statuses) == sorted(envoy_statuses)
    for port in (live, dead):
        ours, theirs = _host_lines(body, "up", port), _host_lines(envoy_body, "up", port)
        assert list(ours) == list(theirs)
        for k in ("rq_total", "rq_success", "rq_error", "cx_total", "cx_connect_fail", "hostname",
                  "health_flags", "weight"):
            assert ours[k] == theirs[k], (port, k)
    [ours], [theirs] = doc["cluster_statuses"], envoy_doc["cluster_statuses"]
    assert set(ours) == set(theirs)
    for mine, envoys in zip(ours["host_statuses"], theirs["host_statuses"]):
        assert list(mine) == list(envoys)
        assert mine["stats"] == envoys["stats"]


def test_stats_usedonly_lists_only_stats_ever_written(admin_proxy):
    """Envoy's ?usedonly: counters that counted, gauges that were ever set (one back at 0
    stays listed); never-written stats are left out, in text and JSON."""
    from conftest import connect
    p, addr, admin, echo = admin_proxy
    sock = connect(addr)
    sock.sendall(b"hi")
    assert sock.recv(2) == b"hi"
    used = parse_text_stats(get(admin, "/stats?usedonly")[2])
    assert used["tcp.adm.downstream_cx_active"] == 1
    sock.close()
    wait_for(lambda: parse_text_stats(get(admin, "/stats")[2])["tcp.adm.downstream_cx_active"] == 0)
    all_stats = parse_text_stats(get(admin, "/stats")[2])
    used = parse_text_stats(get(admin, "/stats?usedonly")[2])
    assert used["tcp.adm.downstream_cx_total"] == 1
    assert used["tcp.adm.downstream_cx_active"] == 0        # written, back to 0: still used
    assert "tcp.adm.idle_timeout" in all_stats and "tcp.adm.idle_timeout" not in used
    assert all(v for k, v in used.items() if k != "tcp.adm.downstream_cx_active" and not k.endswith("_active")
               and k != "server.uptime"), used
    assert set(used) < set(all_stats)
    doc = json.loads(get(admin, "/stats?usedonly&format=json")[2])
    names = {s["name"] for s in doc["stats"] if "name" in s}
    assert names - {"server.uptime"} == set(used) - {"server.uptime"}


# --------------------------------------------------------------------------- /config_dump

def _config_dump_yaml(upstream_port: int) -> str:
    """An HTTP listener (its route table inline), a TCP listener and one cluster, every
    field written as Envoy's dump writes it (proto3 JSON: defaults left out, durations
    "2.500s"), so the dump must give back exactly these resources."""
    return envoy_yaml(
        [http_listener("""
            - match: {prefix: /}
              route: {cluster: c, timeout: 2.500s}
            """, route_config=None),
         tcp_listener("c", name="tcp", stat_prefix="t", idle_timeout="30s", max_connect_attempts=2)],
        [static_cluster("c", [upstream_port], connect_timeout="0.250s")],
        node={"id": "edge-1", "cluster": "edge"})


def _dump_of(source: str) -> dict:
    import yaml
    return yaml.safe_load(source)


def _without_type(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "@type"}


@pytest.fixture
def dump_proxy(servers):
    """(proxy, admin address, YAML text as a dict, echo upstream): a proxy started from an
    Envoy YAML bootstrap, its admin on an ephemeral port."""
    echo = servers.echo()
    text = _config_dump_yaml(echo.port)
    p = fastproxy.Proxy.from_envoy(text, concurrency=1)
    p.start()
    try:
        yield p, p.admin_address, _dump_of(text), echo
    finally:
        p.stop(drain_timeout=0.5)


DUMP_TYPES = ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump", "ScopedRoutesConfigDump",
              "RoutesConfigDump", "SecretsConfigDump"]
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_config_dump_shows_the_configured_resources(dump_proxy):
    """GET /config_dump: Envoy's ConfigDump, its clusters, listeners and route table exactly
    the YAML's, and the same document as proxy.config_dump()."""
    p, admin, given, echo = dump_proxy
    assert echo_roundtrip(p.listener_address("tcp"), b"live") == b"live"
    status, ctype, body = get(admin, "/config_dump")
    assert status == 200 and ctype.startswith("application/json")
    doc = json.loads(body)
    assert [c["@type"] for c in doc["configs"]] == [f"type.googleapis.com/envoy.admin.v3.{t}" for t in DUMP_TYPES]
    boot, clusters, listeners, scoped, routes, secrets = doc["configs"]
    static = given["static_resources"]

    assert boot["bootstrap"]["static_resources"] == static
    assert boot["bootstrap"]["admin"] == given["admin"]
    assert {k: boot["bootstrap"]["node"][k] for k in ("id", "cluster")} == given["node"]
    assert boot["bootstrap"]["node"]["user_agent_name"] == "fastproxy"
    assert RFC3339_MS.fullmatch(boot["last_updated"])

    assert set(clusters) == {"@type", "static_clusters"}
    [c] = clusters["static_clusters"]
    assert c["cluster"]["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert _without_type(c["cluster"]) == static["clusters"][0]
    assert RFC3339_MS.fullmatch(c["last_updated"])

    assert set(listeners) == {"@type", "static_listeners"}
    assert [_without_type(entry["listener"]) for entry in listeners["static_listeners"]] == static["listeners"]
    assert all(entry["listener"]["@type"] == "type.googleapis.com/envoy.config.listener.v3.Listener"
               for entry in listeners["static_listeners"])

    [rc] = routes["static_route_configs"]
    hcm = static["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert _without_type(rc["route_config"]) == hcm["route_config"]
    assert set(scoped) == {"@type"} and set(secrets) == {"@type"}
    assert p.config_dump() == doc
    # The dump's bootstrap is one fastproxy reads back as the configuration it runs.
    reread = dict(boot["bootstrap"], node=given["node"])
    assert fastproxy.load_envoy(reread) == p.config


def test_config_dump_of_a_proxy_built_in_python(admin_proxy):
    """A proxy built from Python objects dumps the Envoy resources those objects mean."""
    p, addr, admin, echo = admin_proxy
    doc = json.loads(get(admin, "/config_dump")[2])
    [entry] = doc["configs"][2]["static_listeners"]
    [chain] = entry["listener"]["filter_chains"]
    assert entry["listener"]["name"] == "l"
    assert chain["filters"][-1]["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "adm", "cluster": "c"}
    [cluster] = doc["configs"][1]["static_clusters"]
    [[lb]] = [e["lb_endpoints"] for e in cluster["cluster"]["load_assignment"]["endpoints"]]
    assert lb == {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": echo.port}}}}
    assert fastproxy.load_envoy(doc["configs"][0]["bootstrap"] | {"node": {}}).clusters == p.config.clusters


def _next_millisecond(stamp: str) -> None:
    """Wait until the clock reads a later millisecond than the dump's ``stamp``."""
    from fastproxy.config.dump import timestamp
    wait_for(lambda: timestamp(time.time()) > stamp, timeout=1, interval=0.0005)


def test_config_dump_last_updated_follows_update(dump_proxy):
    """update(): a changed cluster, and a listener added, get a newer last_updated; what did
    not change keeps its own; a removed listener leaves the dump."""
    import dataclasses
    p, admin, given, echo = dump_proxy

    def entries():
        doc = json.loads(get(admin, "/config_dump")[2])
        clusters = {e["cluster"]["name"]: e for e in doc["configs"][1].get("static_clusters", [])}
        listeners = {e["listener"]["name"]: e for e in doc["configs"][2].get("static_listeners", [])}
        return doc, clusters, listeners

    before, clusters, listeners = entries()
    _next_millisecond(max(e["last_updated"] for e in [*clusters.values(), *listeners.values()]))
    [c] = p.config.clusters
    web, tcp = p.config.listeners
    p.update(clusters=[dataclasses.replace(c, connect_timeout=1.5)],
             listeners=[tcp, Listener("more", TcpProxy("c"), port=0)])
    after, clusters2, listeners2 = entries()
    assert clusters2["c"]["cluster"]["connect_timeout"] == "1.500s"
    assert clusters2["c"]["last_updated"] > clusters["c"]["last_updated"]
    assert listeners2["tcp"] == listeners["tcp"]
    assert set(listeners2) == {"tcp", "more"}
    assert listeners2["more"]["last_updated"] > listeners["tcp"]["last_updated"]
    # The route table went with its listener; the bootstrap is still the one started with.
    assert "static_route_configs" not in after["configs"][4]
    assert after["configs"][0] == before["configs"][0]


def test_config_dump_resource_and_mask(dump_proxy):
    """?resource= lists one field's entries with their entry type; ?mask= trims each as a
    FieldMask; what Envoy refuses gets Envoy's status and words."""
    p, admin, given, _ = dump_proxy
    status, _, body = get(admin, "/config_dump?resource=static_clusters&mask=cluster.name,last_updated")
    assert status == 200
    [entry] = json.loads(body)["configs"]
    assert entry["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"
    assert set(entry) == {"@type", "cluster", "last_updated"}
    assert entry["cluster"] == {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c"}

    doc = json.loads(get(admin, "/config_dump?resource=static_listeners")[2])
    assert [e["listener"]["name"] for e in doc["configs"]] == ["web", "tcp"]
    assert json.loads(get(admin, "/config_dump?resource=dynamic_active_clusters")[2]) == {}
    doc = json.loads(get(admin, "/config_dump?mask=bootstrap.node.id")[2])
    assert doc == {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                                "bootstrap": {"node": {"id": "edge-1"}}}]}
    assert p.config_dump("static_route_configs") == json.loads(get(admin, "/config_dump?resource=static_route_configs")[2])

    assert get(admin, "/config_dump?resource=nonsense")[0::2] == (404, "nonsense not found in config dump")
    assert get(admin, "/config_dump?resource=bootstrap")[0::2] == (
        400, "bootstrap is not a repeated field. Use ?mask=bootstrap to get only this field")
    assert get(admin, "/config_dump?mask=name")[0::2] == (
        400, "FieldMask name could not be successfully applied to any configs.")
    # A path may end at a repeated field but not go through one (protobuf's FieldMask rule).
    assert get(admin, "/config_dump?mask=static_clusters.cluster.name")[0] == 400
    status, _, body = get(admin, "/config_dump?resource=static_listeners&mask=listener.name,bogus")
    assert status == 400 and body.endswith("could not be successfully used.") and '"bogus"' in body
    with pytest.raises(ValueError, match="nonsense not found"):
        p.config_dump("nonsense")


# The queries compared with Envoy's answers: the same status, and for a 200 the same
# document bar the times and the bootstrap's node (Envoy lists its build and extensions).
DUMP_QUERIES = ["", "?resource=static_clusters", "?resource=static_listeners", "?resource=static_route_configs",
                "?resource=dynamic_active_clusters", "?resource=dynamic_listeners",
                "?resource=static_clusters&mask=cluster.name,last_updated",
                "?resource=static_listeners&mask=listener.name",
                "?resource=static_clusters&mask=cluster.load_assignment.endpoints",
                "?resource=static_route_configs&mask=route_config.virtual_hosts",
                "?mask=static_clusters", "?mask=bootstrap.static_resources", "?mask=name",
                "?mask=static_clusters,static_listeners", "?mask=static_clusters.cluster.name",
                "?resource=nonsense", "?resource=bootstrap", "?resource=static_listeners&mask=bogus",
                "?resource=static_clusters&include_eds", "?resource=static_clusters&mask=cluster.lb_policy",
                "?resource=static_clusters&mask=cluster.load_assignment.endpoints.lb_endpoints",
                "?resource=static_listeners&mask=listener.filter_chains.filters",
                "?resource=static_clusters&mask=cluster,cluster.name", "?mask=version_info"]


def _comparable(doc):
    """The document without what differs by nature: times, and the node's build facts."""
    if isinstance(doc, dict):
        out = {k: _comparable(v) for k, v in doc.items() if k != "last_updated"}
        if "node" in out and isinstance(out["node"], dict):
            out["node"] = {k: v for k, v in out["node"].items() if k in ("id", "cluster")}
        return out
    if isinstance(doc, list):
        return [_comparable(v) for v in doc]
    return doc


@pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found")
def test_config_dump_matches_envoys(servers, tmp_path):
    """The same YAML through real Envoy 1.40: each query's status, and its document key for
    key (times and the node's build facts aside), equal Envoy's."""
    echo = servers.echo()
    text = _config_dump_yaml(echo.port)
    proc, envoy_admin, _ = start_envoy(text, tmp_path)
    try:
        theirs = {q: get(envoy_admin, "/config_dump" + q) for q in DUMP_QUERIES}
    finally:
        proc.terminate()
        proc.wait()
    p = fastproxy.Proxy.from_envoy(text, concurrency=1)
    with p:
        ours = {q: get(p.admin_address, "/config_dump" + q) for q in DUMP_QUERIES}
    for q in DUMP_QUERIES:
        (status, _, body), (envoy_status, _, envoy_body) = ours[q], theirs[q]
        assert status == envoy_status, q
        if status == 200:
            assert _comparable(json.loads(body)) == _comparable(json.loads(envoy_body)), q
        elif "FieldMask" not in envoy_body or "applied" in envoy_body:
            assert body.strip() == envoy_body.strip(), q


def test_config_dump_lists_discovered_resources_as_dynamic(dump_proxy):
    """The hook a discovery service uses: a resource noted as discovered moves to Envoy's
    dynamic lists with its version_info (a listener in its active/warming/draining state),
    the dump messages carry the last accepted version, and ?resource= finds them there."""
    p, admin, given, _ = dump_proxy
    p.note_discovered("cluster", "c", "v7")
    p.note_discovered("listener", "tcp", "v3", state="warming")
    p.note_discovery_version("clusters", "v7")
    p.note_discovery_version("listeners", "v3")
    doc = json.loads(get(admin, "/config_dump")[2])
    clusters, listeners = doc["configs"][1], doc["configs"][2]
    assert set(clusters) == {"@type", "version_info", "dynamic_active_clusters"}
    assert clusters["version_info"] == "v7"
    [c] = clusters["dynamic_active_clusters"]
    assert list(c) == ["version_info", "cluster", "last_updated"] and c["version_info"] == "v7"
    assert listeners["version_info"] == "v3"
    assert [e["listener"]["name"] for e in listeners["static_listeners"]] == ["web"]
    [dynamic] = listeners["dynamic_listeners"]
    assert set(dynamic) == {"name", "warming_state"} and dynamic["name"] == "tcp"
    assert dynamic["warming_state"]["version_info"] == "v3"
    assert dynamic["warming_state"]["listener"]["name"] == "tcp"
    found = json.loads(get(admin, "/config_dump?resource=dynamic_active_clusters&mask=version_info")[2])
    assert found == {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster",
                                  "version_info": "v7"}]}
    doc = json.loads(get(admin, "/config_dump?resource=dynamic_listeners&mask=warming_state.version_info")[2])
    assert doc["configs"][0]["warming_state"] == {"version_info": "v3"}
    with pytest.raises(KeyError, match="no cluster named 'nope'"):
        p.note_discovered("cluster", "nope", "v1")
    with pytest.raises(ValueError, match="state is one of active, warming"):
        p.note_discovered("cluster", "c", "v1", state="draining")
