"""Outlier detection (a cluster's outlier_detection): hosts that fail are ejected and get
no traffic until un-ejected, as Envoy 1.40 does it.

Each scenario runs the same bootstrap through the real Envoy and through fastproxy, each
with fresh scripted upstreams on loopback (one answers 503, one 502/503/504, one resets,
one refuses connections, ...), and compares what the client saw, how many requests each
host got, the cluster.<name>.outlier_detection.* stats and the hosts' /clusters health
flags. Waits are on conditions (stats, flags), never fixed sleeps.
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import (admin_get, envoy_yaml, find_envoy, fragment, http_listener, start_envoy, static_cluster,
                      wait_for)
from failing_upstreams import scripted_host
from http_upstreams import http_request

import fastproxy
from fastproxy.config import load_envoy
from fastproxy.errors import ConfigError

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")

C0 = "static_resources.clusters[0]"
OD = "cluster.backend.outlier_detection."
ROUTES = """
- match: {prefix: /}
  route: {cluster: backend, timeout: 2s}
"""


def hosts(*specs):
    """A maker of fresh hosts (failing_upstreams.scripted_host) for run_both: specs are
    (behaviour, {options})."""
    return lambda: [scripted_host(f"h{i}", b, **(o[0] if o else {})) for i, (b, *o) in enumerate(specs)]


ALWAYS_503 = ("fail_n", {"n": 10 ** 6})
ALWAYS_500 = ("fail_n", {"n": 10 ** 6, "status": 500})
HALF_503 = ("flaky", {"fail_rate": 0.5, "seed": 7})


def read_stats(admin):
    out = {}
    for line in admin_get(admin, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if re.fullmatch(r"-?\d+", value):
            out[name] = int(value)
    return out


def od_stats(admin):
    return {k[len(OD):]: v for k, v in read_stats(admin).items() if k.startswith(OD)}


def health_flags(admin, hosts):
    """Each host's /clusters health_flags, in the order of ``hosts``."""
    text = admin_get(admin, "/clusters")
    out = []
    for h in hosts:
        m = re.search(rf"^backend::127\.0\.0\.1:{h.port}::health_flags::(.*)$", text, re.M)
        out.append(m.group(1) if m else None)
    return out


def _run(kind, text, tmp_path, drive):
    """drive(addr, admin) in Envoy (kind 'envoy') or fastproxy; returns what it returns."""
    if kind == "envoy":
        tmp_path.mkdir(exist_ok=True)
        proc, admin, addr = start_envoy(text, tmp_path)
        try:
            return drive(addr, admin)
        finally:
            proc.terminate()
            proc.wait(10)
    p = fastproxy.Proxy.from_envoy(text, concurrency=1)
    p.start()
    try:
        return drive(p.listener_address("web"), p.admin_address)
    finally:
        p.stop(drain_timeout=0.5)


def run_both(tmp_path, make_hosts, od, drive, kinds=("envoy", "fastproxy")):
    """drive(addr, admin, hosts) against Envoy and fastproxy, each with fresh hosts from
    make_hosts() in one cluster "backend" (round robin) with ``od`` (YAML) as its
    outlier_detection; {kind: what drive returned}."""
    out = {}
    for kind in kinds:
        hosts = make_hosts()
        text = envoy_yaml([http_listener(ROUTES)],
                          [static_cluster("backend", [h.port for h in hosts], connect_timeout="1s",
                                          outlier_detection=fragment(od))])
        try:
            out[kind] = _run(kind, text, tmp_path / kind, lambda addr, admin: drive(addr, admin, hosts))
        finally:
            for h in hosts:
                h.close()
    return out


def get(addr):
    r, _ = http_request(addr, "GET", "/")
    return r.status


def statuses(addr, n):
    """n sequential requests: {status: count}."""
    out = {}
    for _ in range(n):
        s = get(addr)
        out[s] = out.get(s, 0) + 1
    return out


def same(results):
    """Envoy's and fastproxy's results, asserted equal (shown side by side if not)."""
    envoy, ours = results["envoy"], results["fastproxy"]
    assert ours == envoy, f"\nenvoy:     {envoy}\nfastproxy: {ours}"
    return ours


# --------------------------------------------------------------------------- consecutive failures

@needs_envoy
def test_consecutive_5xx_ejects_at_once_and_unejects_after_base_time(tmp_path):
    """A host that answers 503 is ejected by its third 503 in a row, gets nothing while
    ejected, comes back after base_ejection_time (at an interval tick) and, still failing,
    is ejected again."""
    od = "{consecutive_5xx: 3, interval: 0.2s, base_ejection_time: 0.5s, max_ejection_percent: 100}"

    def drive(addr, admin, hosts):
        bad = hosts[0]
        seen = {"statuses": statuses(addr, 12), "bad": bad.requests, "others": sorted(h.requests for h in hosts[1:])}
        seen["stats"] = od_stats(admin)
        seen["flags"] = health_flags(admin, hosts)
        # Un-ejected after base_ejection_time, at an interval tick.
        wait_for(lambda: od_stats(admin).get("ejections_active") == 0, timeout=5, msg="un-ejection")
        seen["flags_after"] = health_flags(admin, hosts)
        # Still failing: three more 503s eject it again. (Envoy delivers a health change
        # that comes within common_lb_config.update_merge_window, 1 s by default, of the
        # previous one at the window's end: the host gets traffic again up to 1 s after its
        # flag is cleared. Hence the wait on the host, not a count of requests.)
        wait_for(lambda: bad.requests >= 6 or get(addr) and False, timeout=10, msg="traffic again")
        seen["bad_again"] = bad.requests
        seen["stats_again"] = wait_for(lambda: (lambda s: s.get("ejections_active") == 1 and s)(od_stats(admin)),
                                       timeout=5, msg="second ejection")
        return seen

    r = same(run_both(tmp_path, hosts(ALWAYS_503, ("ok",), ("ok",)), od, drive))
    assert r["statuses"] == {503: 3, 200: 9} and r["bad"] == 3
    assert r["stats"]["ejections_enforced_consecutive_5xx"] == 1 and r["stats"]["ejections_active"] == 1
    assert r["flags"] == ["/failed_outlier_check", "healthy", "healthy"]
    assert r["flags_after"] == ["healthy", "healthy", "healthy"]
    assert r["bad_again"] == 6 and r["stats_again"]["ejections_enforced_consecutive_5xx"] == 2


@needs_envoy
@pytest.mark.parametrize("enforcing", [100, None])
def test_consecutive_gateway_failure(tmp_path, enforcing):
    """502, 503 and 504 are gateway failures; a 500 is not (it ends the run).
    enforcing_consecutive_gateway_failure defaults to 0: detected, not ejected."""
    od = {"consecutive_5xx": 1000, "consecutive_gateway_failure": 3, "max_ejection_percent": 100,
          "interval": "10s"}
    if enforcing is not None:
        od["enforcing_consecutive_gateway_failure"] = enforcing

    def drive(addr, admin, hosts):
        # (Envoy's round robin starts at a random host: what is compared does not depend
        # on where it starts.)
        st = statuses(addr, 16)
        return {"gateway": [st.get(502), st.get(504), hosts[0].requests, hosts[1].requests],
                "others": hosts[2].requests + hosts[3].requests, "stats": od_stats(admin),
                "flags": health_flags(admin, hosts)}

    r = same(run_both(tmp_path, hosts(("gateway", {"status": 502}), ("gateway", {"status": 504}), ALWAYS_500,
                                      ("ok",)), od, drive))
    assert r["stats"]["ejections_enforced_consecutive_gateway_failure"] == (2 if enforcing else 0)
    assert r["flags"] == (["/failed_outlier_check"] * 2 if enforcing else ["healthy"] * 2) + ["healthy"] * 2


@needs_envoy
@pytest.mark.parametrize("split", [False, True])
def test_resets_and_refused_connections(tmp_path, split):
    """A host that resets every request and one that refuses connections: without
    split_external_local_origin_errors both count as 503s (consecutive_5xx); with it they
    are local-origin failures, and a connection that succeeds ends the run (so the host
    that accepts, then resets, is never ejected, as in Envoy)."""
    od = {"consecutive_5xx": 3, "consecutive_local_origin_failure": 3, "max_ejection_percent": 100,
          "interval": "10s", "split_external_local_origin_errors": split}

    def drive(addr, admin, hosts):
        st = statuses(addr, 15)
        return {"refused": st.get(503, 0) - hosts[0].requests, "reached": hosts[0].requests + hosts[2].requests,
                "stats": od_stats(admin), "flags": health_flags(admin, hosts)}

    both = run_both(tmp_path, hosts(("reset",), ("refuse",), ("ok",)), od, drive)
    # The refusing host is ejected by its third failure. (Envoy posts the ejection to its
    # main thread and the new host set back to the worker: now and then a request or two
    # more reach the host before it lands. Seen: 5 instead of 3, once in ten runs.)
    assert both["fastproxy"].pop("refused") == 3 and both["envoy"].pop("refused") >= 3
    both["fastproxy"].pop("reached"), both["envoy"].pop("reached")
    r = same(both)
    if split:
        assert r["stats"]["ejections_enforced_consecutive_local_origin_failure"] == 1
        assert r["flags"] == ["healthy", "/failed_outlier_check", "healthy"]
    else:
        assert r["stats"]["ejections_enforced_consecutive_5xx"] == 2
        assert r["flags"] == ["/failed_outlier_check", "/failed_outlier_check", "healthy"]


@needs_envoy
@pytest.mark.parametrize("percent", [50, None])
def test_max_ejection_percent(tmp_path, percent):
    """Two failing hosts of three: with max_ejection_percent 50 the second ejection would
    pass 50% and overflows; the default (10%) is Envoy's rule for a small cluster."""
    od = {"consecutive_5xx": 2, "interval": "10s"}
    if percent is not None:
        od["max_ejection_percent"] = percent

    def drive(addr, admin, hosts):
        st = statuses(addr, 12)
        stats = od_stats(admin)
        if percent is not None:
            # Which failing host is ejected first, and so how often the other one's runs
            # overflow, depends on where round robin starts (at random in Envoy).
            stats = {k: stats[k] for k in ("ejections_active", "ejections_enforced_total",
                                           "ejections_enforced_consecutive_5xx")}
            st = min(h.requests for h in hosts[:2])     # the ejected one's
        return {"statuses": st, "stats": stats, "flags": sorted(health_flags(admin, hosts))}

    r = same(run_both(tmp_path, hosts(ALWAYS_503, ALWAYS_503, ("ok",)), od, drive))
    if percent is None:         # 1 of 3 hosts is 33% > 10%: never ejected, each detection overflows
        assert r["stats"]["ejections_active"] == 0 and r["stats"]["ejections_overflow"] == 4
    else:
        assert r["stats"]["ejections_active"] == 1 and r["flags"].count("/failed_outlier_check") == 1
        assert r["statuses"] == 2


# --------------------------------------------------------------------------- interval ejections

def _until_ejected(addr, admin, stat, limit=3000):
    """Send requests until ``stat`` counts an ejection (or ``limit`` requests)."""
    for _ in range(limit):
        if od_stats(admin).get(stat, 0) >= 1:
            return True
        for _ in range(10):
            get(addr)
    return False


@needs_envoy
def test_success_rate_ejection(tmp_path):
    """A host with half its requests failing, among hosts that all succeed, is below mean -
    1.0 x stdev at the interval: ejected by success rate."""
    od = {"consecutive_5xx": 1000, "interval": "0.5s", "base_ejection_time": "30s", "max_ejection_percent": 100,
          "success_rate_minimum_hosts": 3, "success_rate_request_volume": 10, "success_rate_stdev_factor": 1000}

    def drive(addr, admin, hosts):
        assert _until_ejected(addr, admin, "ejections_enforced_success_rate")
        st = od_stats(admin)
        return {"flags": health_flags(admin, hosts),
                "stats": {k: st[k] for k in ("ejections_enforced_success_rate", "ejections_active",
                                             "ejections_enforced_total")}}

    r = same(run_both(tmp_path, hosts(HALF_503, ("ok",), ("ok",)), od, drive))
    assert r["flags"] == ["/failed_outlier_check", "healthy", "healthy"]


@needs_envoy
def test_failure_percentage_ejection(tmp_path):
    """failure_percentage_threshold 40: the host failing half its requests is ejected at
    the interval (success-rate ejection is off: enforcing_success_rate 0)."""
    od = {"consecutive_5xx": 1000, "interval": "0.5s", "base_ejection_time": "30s", "max_ejection_percent": 100,
          "enforcing_success_rate": 0, "enforcing_failure_percentage": 100, "failure_percentage_threshold": 40,
          "failure_percentage_minimum_hosts": 3, "failure_percentage_request_volume": 10}

    def drive(addr, admin, hosts):
        assert _until_ejected(addr, admin, "ejections_enforced_failure_percentage")
        st = od_stats(admin)
        return {"flags": health_flags(admin, hosts),
                "stats": {k: st[k] for k in ("ejections_enforced_failure_percentage", "ejections_active",
                                             "ejections_enforced_total", "ejections_enforced_success_rate")}}

    r = same(run_both(tmp_path, hosts(HALF_503, ("ok",), ("ok",)), od, drive))
    assert r["flags"] == ["/failed_outlier_check", "healthy", "healthy"]


@needs_envoy
def test_stat_names_match_envoy(tmp_path):
    """cluster.<name>.outlier_detection.*: the same names as Envoy's, only for a cluster
    with outlier detection."""
    def drive(addr, admin, hosts):
        get(addr)
        names = {k for k in read_stats(admin) if ".outlier_detection." in k}
        prometheus = {line.split(" ")[0] for line in admin_get(admin, "/stats/prometheus").splitlines()
                      if "outlier_detection" in line and not line.startswith("#")}
        return sorted(names), sorted(prometheus)

    names, prometheus = same(run_both(tmp_path, hosts(("ok",)), "{}", drive))
    assert names and all(n.startswith(OD) for n in names)
    assert 'envoy_cluster_outlier_detection_ejections_active{envoy_cluster_name="backend"}' in prometheus


# --------------------------------------------------------------------------- config

def _yaml(od):
    return envoy_yaml([http_listener(ROUTES)],
                      [static_cluster("backend", [8080], outlier_detection=fragment(od))])


BAD = [
    ("{max_ejection_percent: 101}", "max_ejection_percent"),
    ("{enforcing_consecutive_5xx: 200}", "enforcing_consecutive_5xx"),
    ("{failure_percentage_threshold: 101}", "failure_percentage_threshold"),
    ("{interval: 0s}", "interval"),
    ("{base_ejection_time: 0s}", "base_ejection_time"),
    ("{base_ejection_time: 10s, max_ejection_time: 5s}", "max_ejection_time"),
    ("{consecutive_5xx: -1}", "consecutive_5xx"),
    ("{consecutive_5xx: many}", "consecutive_5xx"),
    ("{max_ejection_time_jitter: -1s}", "max_ejection_time_jitter"),
    ("{bogus: 1}", "bogus"),
]
GOOD = [
    "{}",
    "{always_eject_one_host: true, base_ejection_time: 400s}",
    "{consecutive_5xx: 0, interval: 1s, base_ejection_time: 2s, max_ejection_time: 2s, max_ejection_time_jitter: 1s}",
    "{split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, successful_active_health_check_uneject_host: false}",
    "{enforcing_failure_percentage_local_origin: 100, enforcing_local_origin_success_rate: 0, success_rate_stdev_factor: 1}",
]


@pytest.mark.parametrize("od,field", BAD)
def test_bad_config_names_its_path(od, field):
    with pytest.raises(ConfigError) as e:
        load_envoy(_yaml(od))
    assert e.value.path == f"{C0}.outlier_detection.{field}", str(e.value)


@pytest.mark.parametrize("od", GOOD)
def test_good_config_round_trips_through_the_dump(od):
    from fastproxy.config.dump import cluster_json
    c = load_envoy(_yaml(od)).clusters[0]
    assert c.outlier_detection is not None
    again = load_envoy(envoy_yaml([http_listener(ROUTES)], [cluster_json(c)])).clusters[0]
    assert again.outlier_detection == c.outlier_detection


def _envoy_validates(text, tmp_path):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(text)
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    return r.returncode == 0


@needs_envoy
@pytest.mark.parametrize("od", [b for b, _ in BAD] + GOOD)
def test_envoy_agrees_on_validity(od, tmp_path):
    """What fastproxy refuses, `envoy --mode validate` refuses; what it takes, Envoy takes,
    and so does Envoy the config dump fastproxy writes back."""
    ok = od in GOOD
    assert _envoy_validates(_yaml(od), tmp_path) == ok
    if ok:
        from fastproxy.config.dump import cluster_json
        c = load_envoy(_yaml(od)).clusters[0]
        assert _envoy_validates(envoy_yaml([http_listener(ROUTES)], [cluster_json(c)]), tmp_path)


def test_no_outlier_block_without_outlier_detection():
    """A cluster without outlier_detection has no outlier_detection.* stats."""
    up = scripted_host("a")
    p = fastproxy.Proxy.from_envoy(envoy_yaml([http_listener(ROUTES)], [static_cluster("backend", [up.port])]),
                                   concurrency=1)
    p.start()
    try:
        assert get(p.listener_address("web")) == 200
        assert not [k for k in p.stats() if ".outlier_detection." in k]
    finally:
        p.stop(drain_timeout=0.5)
        up.close()
