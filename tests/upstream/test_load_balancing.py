"""The load balancer (core/upstream/load_balancer.pxi, lb_tables.pxi, cluster.pxi): hosts'
health taken out of (and back into) the host set the workers pick from, panic, priorities,
LEAST_REQUEST, RING_HASH and MAGLEV, and their config; in fastproxy and, where a real
Envoy 1.40 is found, side by side with it on the same YAML.

Upstreams are real HTTP servers on loopback that count the requests they get; health is
driven by fastproxy._testing.set_host_health (what a health checker or outlier detection
does: set a host's bits, then cluster_health_changed) or by EDS health_status.
"""
from __future__ import annotations

import collections
import random
import threading

import pytest

from conftest import (admin_get, envoy_yaml, find_envoy, http_listener, start_envoy, static_cluster,
                      wait_for)
from http_upstreams import RawHttpUpstream, http_request

from fastproxy import Proxy
from fastproxy._testing import pick_hashed, set_host_health, xxhash64
from fastproxy.config import load_envoy
from fastproxy.errors import ConfigError
from fastproxy.xds.xxhash64 import xxh64

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")
C0 = "static_resources.clusters[0]"


# ---------------------------------------------------------------- xxHash64

def test_xxhash64_matches_the_python_reference_on_many_inputs():
    rng = random.Random(16)
    cases = [(b"", 0), (b"", 1), (b"a", 0), (b"127.0.0.1:80_0", 0), (b"127.0.0.1:80", 1)]
    for n in list(range(0, 130)) + [255, 256, 1000, 4097]:
        for seed in (0, 1, 0xc70f6907, rng.getrandbits(64)):
            cases.append((bytes(rng.getrandbits(8) for _ in range(n)), seed))
    for data, seed in cases:
        assert xxhash64(data, seed) == xxh64(data, seed), (data, seed)


# ---------------------------------------------------------------- helpers

class Counting(RawHttpUpstream):
    """An HTTP upstream answering 200 with its own name; `hold` paths wait for `release`."""

    def __init__(self, name):
        self.name = name
        self.release = threading.Event()
        super().__init__(self.answer)

    def answer(self, method, path, headers, body):
        if path.startswith("/hold"):
            self.release.wait(10)
        payload = self.name.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)

    def count(self):
        with self._lock:
            return len(self.requests)


@pytest.fixture
def upstreams():
    made = []

    def make(n):
        for i in range(n):
            made.append(Counting(f"u{len(made)}"))
        return made[-n:]

    yield make
    for u in made:
        u.release.set()
        u.close()


def _yaml(ups, lb_policy="ROUND_ROBIN", cluster_fields=None, endpoints=None, routes=None):
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    eps = endpoints if endpoints is not None else [u.port for u in ups]
    return envoy_yaml([http_listener(routes)],
                      [static_cluster("backend", eps, connect_timeout="1s", lb_policy=lb_policy,
                                      **(cluster_fields or {}))])


def _send(addr, n, path="/"):
    """n requests; {upstream name: count} of the answers."""
    out = collections.Counter()
    for _ in range(n):
        status, body = _get(addr, path)
        out[body.decode() if status == 200 else status] += 1
    return out


def _get(addr, path="/"):
    r, body = http_request(addr, "GET", path)
    return r.status, body


@pytest.fixture
def running():
    made = []

    def start(text, concurrency=2):
        p = Proxy.from_envoy(text, concurrency=concurrency)
        p.start()
        made.append(p)
        return p, p.listener_address("web")

    yield start
    for p in made:
        p.stop(drain_timeout=0.2)


# ---------------------------------------------------------------- health -> host set

def test_unhealthy_host_gets_no_traffic_and_comes_back(upstreams, running):
    a, b, c = upstreams(3)
    p, addr = running(_yaml([a, b, c]))
    assert set(_send(addr, 30)) == {"u0", "u1", "u2"}
    flags = set_host_health(p, "backend", "127.0.0.1", b.port, set=["FAILED_ACTIVE_HC"])
    assert flags == 1
    before = b.count()
    got = _send(addr, 60)
    assert set(got) == {"u0", "u2"} and b.count() == before
    st = p.stats()
    assert (st["cluster.backend.membership_healthy"], st["cluster.backend.membership_total"]) == (2, 3)
    assert st["cluster.backend.membership_degraded"] == 0 and st["cluster.backend.membership_excluded"] == 0
    assert st.get("cluster.backend.lb_healthy_panic", 0) == 0
    set_host_health(p, "backend", "127.0.0.1", b.port, clear=["FAILED_ACTIVE_HC"])
    assert set(_send(addr, 30)) == {"u0", "u1", "u2"}
    assert p.stats()["cluster.backend.membership_healthy"] == 3


def test_clusters_prints_envoys_health_flags(upstreams, running):
    a, b = upstreams(2)
    p, addr = running(_yaml([a, b]))
    set_host_health(p, "backend", "127.0.0.1", b.port, set=["FAILED_OUTLIER_CHECK", "FAILED_ACTIVE_HC"])
    from fastproxy.admin import health_flags_text
    rows = {port: (flags, prio) for _, port, _, _, _, flags, prio in p.cluster_hosts()["backend"]}
    assert health_flags_text(rows[a.port][0]) == "healthy"
    assert health_flags_text(rows[b.port][0]) == "/failed_active_hc/failed_outlier_check"


def test_panic_sends_to_every_host_and_counts(upstreams, running):
    # 1 healthy host of 3: 33% < the 50% panic threshold, so every host takes traffic.
    a, b, c = upstreams(3)
    p, addr = running(_yaml([a, b, c]))
    set_host_health(p, "backend", "127.0.0.1", a.port, set=["FAILED_ACTIVE_HC"])
    set_host_health(p, "backend", "127.0.0.1", b.port, set=["FAILED_OUTLIER_CHECK"])
    got = _send(addr, 30)
    assert set(got) == {"u0", "u1", "u2"}
    assert p.stats()["cluster.backend.lb_healthy_panic"] >= 30


def test_no_panic_with_threshold_zero_gives_503(upstreams, running):
    a, = upstreams(1)
    p, addr = running(_yaml([a], cluster_fields={"common_lb_config": {"healthy_panic_threshold": {"value": 0}}}))
    set_host_health(p, "backend", "127.0.0.1", a.port, set=["FAILED_ACTIVE_HC"])
    status, _ = _get(addr)
    assert status == 503
    assert p.stats()["cluster.backend.upstream_cx_none_healthy"] >= 1


# ---------------------------------------------------------------- RING_HASH and MAGLEV

def _hash_cluster_yaml(ports, policy, extra=None, host="127.0.0.1", weights=None):
    eps = []
    for i, port in enumerate(ports):
        e = {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        if weights:
            e["load_balancing_weight"] = weights[i]
        eps.append(e)
    return _yaml([], lb_policy=policy, endpoints=eps, cluster_fields=extra or {})


def _envoy_trace(text, tmp_path):
    """Envoy's upstream trace log on `text` (its ring / table as it built them)."""
    log = tmp_path / "envoy.log"
    proc, admin, _ = start_envoy(text, tmp_path, args=("--component-log-level", "upstream:trace",
                                                       "--log-path", str(log)))
    try:
        wait_for(lambda: log.exists() and ("ring hash: host=" in log.read_text() or "maglev: i=" in log.read_text()),
                 timeout=20, msg="envoy's table in its log")
        return log.read_text()
    finally:
        proc.terminate()
        proc.wait()


@needs_envoy
@pytest.mark.parametrize("hash_function", ["XX_HASH", "MURMUR_HASH_2"])
def test_ring_is_envoys_ring(tmp_path, running, hash_function):
    # Ten hosts, unequal weights, a small ring: every point Envoy logs (hash -> host) is
    # a point of fastproxy's ring, the ring has as many points, and any hash picks the host
    # of the first point at or after it.
    import re
    ports = list(range(18080, 18090))
    text = _hash_cluster_yaml(ports, "RING_HASH", {"ring_hash_lb_config": {
        "minimum_ring_size": 64, "maximum_ring_size": 4096, "hash_function": hash_function}},
        weights=[1, 2, 3, 1, 1, 5, 1, 2, 1, 1])
    trace = _envoy_trace(text, tmp_path)
    points = [(int(h), host) for host, h in re.findall(r"ring hash: host=(\S+) hash=(\d+)", trace)]
    # (Envoy logs the ring each time it builds it: take the last build's points.)
    keys = re.findall(r"ring hash: hash_key=(\S+) hash=(\d+)", trace)
    n = len(keys) // max(1, trace.count("ring hash: building ring"))
    points = points[-n:]
    assert n > 64
    p, _ = running(text)
    for h, host in points:
        assert "%s:%d" % pick_hashed(p, "backend", h) == host, h
    ring = sorted(points)
    rng = random.Random(7)
    for _ in range(2000):
        h = rng.getrandbits(64)
        want = next((host for ph, host in ring if ph >= h), ring[0][1])
        assert "%s:%d" % pick_hashed(p, "backend", h) == want


@needs_envoy
def test_maglev_is_envoys_table(tmp_path, running):
    import re
    ports = list(range(18180, 18187))
    text = _hash_cluster_yaml(ports, "MAGLEV", {"maglev_lb_config": {"table_size": 251}},
                              weights=[1, 2, 1, 3, 1, 1, 2])
    trace = _envoy_trace(text, tmp_path)
    table = {}
    for i, host in re.findall(r"maglev: i=(\d+) address=\S+ host=(\S+)", trace):
        table[int(i)] = host
    assert len(table) == 251
    p, _ = running(text)
    for i, host in table.items():
        assert "%s:%d" % pick_hashed(p, "backend", i) == host, i


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_consistent_hash_moves_about_one_nth_of_keys(running, policy, capsys):
    # N hosts, 20,000 hashes; one host leaves: the keys that move are about 1/N, and a hash
    # picks the same host as long as the set is unchanged.
    n = 10
    ports = [19000 + i for i in range(n)]
    p, _ = running(_hash_cluster_yaml(ports, policy))
    rng = random.Random(3)
    hashes = [rng.getrandbits(64) for _ in range(20000)]
    before = [pick_hashed(p, "backend", h) for h in hashes]
    assert before == [pick_hashed(p, "backend", h) for h in hashes]
    gone = ("127.0.0.1", ports[4])
    p.update(clusters=[c.with_endpoints([e for e in c.endpoints if e.port != gone[1]])
                       for c in p.config.clusters])
    after = [pick_hashed(p, "backend", h) for h in hashes]
    moved = sum(1 for a, b in zip(before, after) if a != b)
    lost = sum(1 for a in before if a == gone)
    frac = moved / len(hashes)
    with capsys.disabled():
        print(f"\n{policy}: {n} hosts, one leaves: {frac:.4f} of keys moved (1/N = {1 / n:.4f}; "
              f"the leaving host had {lost / len(hashes):.4f})")
    # (Not only the leaving host's keys move: the ring gives each remaining host more
    # points (minimum_ring_size spread over fewer hosts), Maglev refills the table; Envoy's
    # do the same.)
    assert lost <= moved and 0.5 / n < frac < (2.0 if policy == "RING_HASH" else 1.3) / n


def test_hashing_policies_without_a_hash_pick_at_random(upstreams, running):
    a, b, c = upstreams(3)
    for policy in ("RING_HASH", "MAGLEV"):
        p, addr = running(_yaml([a, b, c], lb_policy=policy))
        assert set(_send(addr, 60)) == {"u0", "u1", "u2"}


def test_ring_excludes_unhealthy_hosts(running):
    ports = [19100 + i for i in range(4)]
    p, _ = running(_hash_cluster_yaml(ports, "RING_HASH"))
    rng = random.Random(5)
    hashes = [rng.getrandbits(64) for _ in range(3000)]
    set_host_health(p, "backend", "127.0.0.1", ports[1], set=["FAILED_ACTIVE_HC"])
    picked = {pick_hashed(p, "backend", h) for h in hashes}
    assert ("127.0.0.1", ports[1]) not in picked and len(picked) == 3


# ---------------------------------------------------------------- LEAST_REQUEST

def test_least_request_prefers_the_idle_host(upstreams, running):
    # Host u0 holds every /hold request; u1 answers at once. Round robin parks 8 of 16 holds
    # on u0; then the cluster turns LEAST_REQUEST (an update: the held requests stay in
    # flight) and plain requests go to u1 (with 10 choices, u0 only if all 10 samples are
    # u0), where round robin sent half of them to u0.
    import dataclasses
    from fastproxy.upstream.lb import LeastRequestLbConfig
    a, b = upstreams(2)
    b.handler = lambda *args: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nu1"
    p, addr = running(_yaml([a, b]), concurrency=1)
    threads = [threading.Thread(target=lambda: http_request(addr, "GET", "/hold", timeout=20), daemon=True)
               for _ in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: p.cluster_hosts()["backend"][0][4]["rq_active"] >= 8, timeout=10)
    c = p.config.clusters[0]
    p.update(clusters=[dataclasses.replace(c, lb_policy="LEAST_REQUEST",
                                           least_request_lb_config=LeastRequestLbConfig(choice_count=10))])
    before = a.count()
    got = _send(addr, 60)
    assert got["u1"] >= 58 and a.count() - before <= 2, got
    a.release.set()
    for t in threads:
        t.join(20)
    wait_for(lambda: p.cluster_hosts()["backend"][0][4]["rq_active"] == 0, timeout=10)


def test_weighted_least_request_follows_weights(upstreams, running):
    a, b = upstreams(2)
    eps = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": a.port}}},
            "load_balancing_weight": 1},
           {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": b.port}}},
            "load_balancing_weight": 3}]
    p, addr = running(_yaml([], lb_policy="LEAST_REQUEST", endpoints=eps), concurrency=1)
    got = _send(addr, 80)
    assert got == {"u0": 20, "u1": 60}


# ---------------------------------------------------------------- priorities, EDS health, panic

def _ep(port, health=None, weight=None):
    e = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    if health:
        e["health_status"] = health
    if weight:
        e["load_balancing_weight"] = weight
    return e


def _prio_yaml(groups, lb_policy="ROUND_ROBIN", extra=None, policy=None):
    """groups: [(priority, [lb_endpoint])]."""
    assignment = {"cluster_name": "backend",
                  "endpoints": [{"priority": prio, "lb_endpoints": eps} if prio else {"lb_endpoints": eps}
                                for prio, eps in groups]}
    if policy:
        assignment["policy"] = policy
    cluster = {"name": "backend", "connect_timeout": "1s", "lb_policy": lb_policy, **(extra or {}),
               "load_assignment": assignment}
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    return envoy_yaml([http_listener(routes)], [cluster])


def _envoy_counts(text, tmp_path, n, ups):
    """Send n requests through Envoy on `text`; per-upstream counts and Envoy's stats."""
    proc, admin, addr = start_envoy(text, tmp_path)
    try:
        got = _send(addr, n)
        stats = dict(line.split(": ", 1) for line in admin_get(admin, "/stats").splitlines() if ": " in line)
        clusters = admin_get(admin, "/clusters")
        return got, stats, clusters
    finally:
        proc.terminate()
        proc.wait()


def _health_rows(clusters_text):
    out = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "backend" and parts[2] == "health_flags":
            out[parts[1]] = parts[3]
    return out


EDS_CASES = [
    # (name, groups, expected share per upstream index)
    ("spill", [(0, [0, (1, "UNHEALTHY")]), (1, [2])], {0: 0.7, 2: 0.3}),
    ("degraded", [(0, [(0, "DEGRADED"), (1, "DRAINING")]), (1, [(2, "TIMEOUT")])], {0: 1.0}),
    ("panic", [(0, [0, (1, "UNHEALTHY"), (2, "UNHEALTHY")])], {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}),
    ("all_down", [(0, [(0, "UNHEALTHY")]), (1, [(1, "UNHEALTHY"), (2, "UNHEALTHY")])],
     {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}),
]


@pytest.mark.parametrize("name,groups,share", EDS_CASES, ids=[c[0] for c in EDS_CASES])
def test_priorities_and_eds_health_as_envoy(upstreams, running, tmp_path, name, groups, share):
    ups = upstreams(3)
    spec = [(prio, [_ep(ups[e].port) if isinstance(e, int) else _ep(ups[e[0]].port, e[1]) for e in eps])
            for prio, eps in groups]
    text = _prio_yaml(spec)
    n = 300
    p, addr = running(text, concurrency=1)
    got = _send(addr, n)
    for i, u in enumerate(ups):
        assert abs(got.get(u.name, 0) / n - share.get(i, 0)) < 0.1, (name, got)
    st = p.stats()
    mine = {k: st[f"cluster.backend.membership_{k}"] for k in ("healthy", "degraded", "excluded", "total")}
    flags = {f"127.0.0.1:{port}": __import__("fastproxy.admin", fromlist=["x"]).health_flags_text(f)
             for _, port, _, _, _, f, _ in p.cluster_hosts()["backend"]}
    if ENVOY is None:
        return
    theirs, stats, clusters = _envoy_counts(text, tmp_path, n, ups)
    for i, u in enumerate(ups):
        assert abs(theirs.get(u.name, 0) / n - share.get(i, 0)) < 0.1, (name, theirs)
    assert mine == {k: int(stats[f"cluster.backend.membership_{k}"]) for k in mine}
    assert flags == _health_rows(clusters)
    assert (st.get("cluster.backend.lb_healthy_panic", 0) > 0) == (int(stats.get("cluster.backend.lb_healthy_panic", 0)) > 0)


def test_overprovisioning_factor_moves_the_spill(upstreams, running):
    # P0: 1 of 2 healthy. Factor 200: P0's health is min(100, 200 x 1/2) = 100, no spill.
    ups = upstreams(3)
    text = _prio_yaml([(0, [_ep(ups[0].port), _ep(ups[1].port, "UNHEALTHY")]), (1, [_ep(ups[2].port)])],
                      policy={"overprovisioning_factor": 200})
    p, addr = running(text)
    assert set(_send(addr, 60)) == {"u0"}
    assert p.config.clusters[0].overprovisioning_factor == 200


# ---------------------------------------------------------------- config

BAD = [
    ("ring_hash_lb_config", {"minimum_ring_size": 2048, "maximum_ring_size": 1024}, "RING_HASH",
     f"{C0}.ring_hash_lb_config"),
    ("ring_hash_lb_config", {"maximum_ring_size": 8388609}, "RING_HASH", f"{C0}.ring_hash_lb_config.maximum_ring_size"),
    ("ring_hash_lb_config", {"minimum_ring_size": 8388609}, "RING_HASH", f"{C0}.ring_hash_lb_config.minimum_ring_size"),
    ("ring_hash_lb_config", {"hash_function": "SHA1"}, "RING_HASH", f"{C0}.ring_hash_lb_config.hash_function"),
    ("maglev_lb_config", {"table_size": 65536}, "MAGLEV", f"{C0}.maglev_lb_config.table_size"),
    ("maglev_lb_config", {"table_size": 5000012}, "MAGLEV", f"{C0}.maglev_lb_config.table_size"),
    ("least_request_lb_config", {"choice_count": 1}, "LEAST_REQUEST", f"{C0}.least_request_lb_config.choice_count"),
    ("common_lb_config", {"healthy_panic_threshold": {"value": 101}}, "ROUND_ROBIN",
     f"{C0}.common_lb_config.healthy_panic_threshold.value"),
    ("maglev_lb_config", {}, "MAGLEV", f"{C0}.maglev_lb_config"),     # beside ring_hash_lb_config below
]


@pytest.mark.parametrize("field,value,policy,path", BAD, ids=[f"{b[0]}-{(list(b[1]) or ['oneof'])[0]}" for b in BAD])
def test_bad_lb_config_is_refused_with_its_path(tmp_path, field, value, policy, path):
    fields = {field: value}
    if field == "maglev_lb_config" and not value:
        fields = {"ring_hash_lb_config": {}, "maglev_lb_config": {}}   # (Envoy's lb_config oneof)
    text = _yaml([], lb_policy=policy, endpoints=[9], cluster_fields=fields)
    with pytest.raises(ConfigError) as e:
        load_envoy(text)
    assert e.value.path == path, str(e.value)
    if ENVOY is not None:
        import subprocess
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(text)
        r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0, f"Envoy accepts {field}={value}"


def test_lb_config_round_trips_through_the_dump(tmp_path):
    from fastproxy.config.dump import bootstrap_json
    import json
    text = _prio_yaml([(0, [_ep(9, "DEGRADED", 2)]), (1, [_ep(10)])], lb_policy="RING_HASH",
                      extra={"ring_hash_lb_config": {"minimum_ring_size": 100, "maximum_ring_size": 5000,
                                                     "hash_function": "MURMUR_HASH_2"},
                             "common_lb_config": {"healthy_panic_threshold": {"value": 30},
                                                  "locality_weighted_lb_config": {}}},
                      policy={"overprovisioning_factor": 120})
    b = load_envoy(text)
    again = load_envoy(json.dumps(bootstrap_json(b)))
    assert again.clusters[0] == b.clusters[0]
    assert again.clusters[0].endpoints[1].priority == 1 and again.clusters[0].endpoints[0].health_status == "DEGRADED"
    assert again.clusters[0].overprovisioning_factor == 120
    if ENVOY is not None:
        import subprocess
        cfg = tmp_path / "dump.yaml"
        cfg.write_text(json.dumps(bootstrap_json(b)))
        r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_locality_weights_as_envoy(upstreams, running, tmp_path):
    # Zone a (weight 1): u0; zone b (weight 3): u1 (UNHEALTHY) and u2. Locality b's
    # effective weight is 3 x min(1, 1.4 x 1/2) = 2.1, so u0 takes 1/3.1 and u2 the rest.
    ups = upstreams(3)
    assignment = {"cluster_name": "backend", "endpoints": [
        {"locality": {"zone": "a"}, "load_balancing_weight": 1, "lb_endpoints": [_ep(ups[0].port)]},
        {"locality": {"zone": "b"}, "load_balancing_weight": 3,
         "lb_endpoints": [_ep(ups[1].port, "UNHEALTHY"), _ep(ups[2].port)]}]}
    cluster = {"name": "backend", "connect_timeout": "1s",
               "common_lb_config": {"locality_weighted_lb_config": {}}, "load_assignment": assignment}
    text = envoy_yaml([http_listener([{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}])], [cluster])
    n = 400
    want = {"u0": 1 / 3.1, "u1": 0.0, "u2": 2.1 / 3.1}
    p, addr = running(text, concurrency=1)
    got = _send(addr, n)
    assert all(abs(got.get(k, 0) / n - v) < 0.08 for k, v in want.items()), got
    if ENVOY is not None:
        theirs, _, _ = _envoy_counts(text, tmp_path, n, ups)
        assert all(abs(theirs.get(k, 0) / n - v) < 0.08 for k, v in want.items()), theirs


# ---------------------------------------------------------------- previous_hosts

def _engine_cluster(policy, hosts, lb=None):
    """A cluster on an engine whose workers do not run (the picks below move worker 0's
    cursors themselves)."""
    from fastproxy import _core
    engine = _core.Engine(1)
    handle = engine.make_cluster(engine.new_stats("cluster"), policy, 1.0,
                                 _core.make_hostset([(ip, port, "") for ip, port in hosts]), lb=lb)
    return engine, handle


def test_previous_hosts_are_re_picked_up_to_max_attempts():
    from fastproxy._testing import pick
    hosts = [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    engine, c = _engine_cluster("ROUND_ROBIN", hosts)
    # One pick per request (max_attempts 1): the host to avoid is still taken in its turn.
    assert pick(c, 6, avoid=[hosts[1]], max_attempts=1) == hosts * 2
    # Two picks: round robin moves past it.
    got = pick(c, 6, avoid=[hosts[1]], max_attempts=2)
    assert hosts[1] not in got and len(got) == 6
    # Every host to avoid: the last pick is taken anyway (Envoy's rule).
    assert None not in pick(c, 3, avoid=hosts, max_attempts=3)


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_previous_hosts_with_a_hash_move_to_another_host(policy):
    from fastproxy._testing import pick
    hosts = [("127.0.0.1", 7100 + i) for i in range(5)]
    engine, c = _engine_cluster(policy, hosts)
    rng = random.Random(11)
    for _ in range(200):
        h = rng.getrandbits(64)
        first = pick(c, 1, hash=h)[0]
        assert pick(c, 1, hash=h, attempt=1) == [first]       # a retry hashes to the same host first
        other = pick(c, 1, avoid=[first], max_attempts=10, hash=h)[0]
        assert other != first


# ---------------------------------------------------------------- distributions vs Envoy

@pytest.mark.parametrize("policy,want", [
    ("ROUND_ROBIN", {"u0": 1 / 6, "u1": 2 / 6, "u2": 3 / 6}),      # weighted
    ("LEAST_REQUEST", {"u0": 1 / 6, "u1": 2 / 6, "u2": 3 / 6}),    # idle hosts: by weight (EDF)
    ("RANDOM", {"u0": 1 / 3, "u1": 1 / 3, "u2": 1 / 3}),           # Envoy's RANDOM ignores weights
])
def test_weighted_distributions_as_envoy(upstreams, running, tmp_path, policy, want):
    ups = upstreams(3)
    text = _yaml([], lb_policy=policy, endpoints=[_ep(u.port, weight=i + 1) for i, u in enumerate(ups)])
    n = 600
    p, addr = running(text, concurrency=1)
    got = _send(addr, n)
    tolerance = 0.07 if policy == "RANDOM" else 0.01
    assert all(abs(got.get(k, 0) / n - v) <= tolerance for k, v in want.items()), got
    if ENVOY is not None:
        theirs, _, _ = _envoy_counts(text, tmp_path, n, ups)
        assert all(abs(theirs.get(k, 0) / n - v) <= max(tolerance, 0.02) for k, v in want.items()), theirs


def test_eds_health_updates_keep_the_checkers_bits(upstreams, running):
    # An update that marks u1 UNHEALTHY (EDS health) takes it out; a health checker's bit
    # on u0 survives that update (set_hosts rewrites only the EDS bits), and u0 comes back
    # only when the checker clears it. (2 healthy of 4: no panic.)
    import dataclasses
    a, b, c, d = upstreams(4)
    p, addr = running(_yaml([a, b, c, d]), concurrency=1)
    set_host_health(p, "backend", "127.0.0.1", a.port, set=["FAILED_ACTIVE_HC"])
    cl = p.config.clusters[0]
    eps = [dataclasses.replace(e, health_status="UNHEALTHY") if e.port == b.port else e for e in cl.endpoints]
    p.update(clusters=[cl.with_endpoints(eps)])
    assert set(_send(addr, 20)) == {"u2", "u3"}
    from fastproxy.admin import health_flags_text
    flags = {port: health_flags_text(f) for _, port, _, _, _, f, _ in p.cluster_hosts()["backend"]}
    assert flags == {a.port: "/failed_active_hc", b.port: "/failed_eds_health", c.port: "healthy", d.port: "healthy"}
    assert p.stats()["cluster.backend.membership_healthy"] == 2
    set_host_health(p, "backend", "127.0.0.1", a.port, clear=["FAILED_ACTIVE_HC"])
    assert set(_send(addr, 30)) == {"u0", "u2", "u3"}
