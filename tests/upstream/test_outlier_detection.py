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
import time

import pytest

from conftest import (run_on, admin_get, envoy_yaml, find_envoy, fragment, http_listener, static_cluster,
                      wait_for, wait_stalled)
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


def settled_od_stats(admin, quiet=0.25):
    """od_stats once they stop changing: Envoy's workers post a consecutive-failure
    detection to its main thread, which counts it a moment after the response went out."""
    return wait_stalled(lambda: od_stats(admin), quiet=quiet)


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
    return run_on(kind, text, tmp_path, drive)


# Envoy delivers a health change that comes within common_lb_config.update_merge_window (1 s
# by default) of the previous one at the window's end, so a host ejected soon after another
# one goes on getting traffic for up to a second; fastproxy applies every change at once.
# The scenarios set the window to 0 so that both do the same.
MERGE_NOW = {"update_merge_window": "0s"}


def run_both(tmp_path, make_hosts, od, drive, kinds=("envoy", "fastproxy"), routes=ROUTES):
    """drive(addr, admin, hosts) against Envoy and fastproxy, each with fresh hosts from
    make_hosts() in one cluster "backend" (round robin) with ``od`` (YAML) as its
    outlier_detection; {kind: what drive returned}."""
    out = {}
    for kind in kinds:
        hosts = make_hosts()
        text = envoy_yaml([http_listener(routes)],
                          [static_cluster("backend", [h.port for h in hosts], connect_timeout="1s",
                                          outlier_detection=fragment(od), common_lb_config=MERGE_NOW)])
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


def racy(results, *keys):
    """Take ``keys`` out of both results (compared by the caller): request counts that
    Envoy's cross-thread ejection can make larger (it posts an ejection to its main thread,
    which posts the new host set back to the worker; a request or two can reach the host
    meanwhile, now and then), while fastproxy's worker ejects before its next pick.
    Returns (fastproxy's, Envoy's)."""
    ours = {k: results["fastproxy"].pop(k) for k in keys}
    envoy = {k: results["envoy"].pop(k) for k in keys}
    return ours, envoy


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
        seen["stats"] = settled_od_stats(admin, quiet=0.1)
        seen["flags"] = health_flags(admin, hosts)
        # Un-ejected after base_ejection_time (0.5 s from the ejection, which was a moment
        # ago), at an interval tick (every 0.2 s).
        t0 = time.monotonic()
        wait_for(lambda: od_stats(admin).get("ejections_active") == 0, timeout=5, msg="un-ejection")
        seen["unejected_after_base_time"] = 0.3 <= time.monotonic() - t0 <= 1.5
        seen["flags_after"] = health_flags(admin, hosts)
        b0 = bad.requests
        # Still failing: three more 503s eject it again.
        wait_for(lambda: bad.requests >= b0 + 3 or get(addr) and False, timeout=10, msg="traffic again")
        seen["bad_again"] = bad.requests - b0
        seen["stats_again"] = wait_for(lambda: (lambda s: s.get("ejections_active") == 1 and s)(od_stats(admin)),
                                       timeout=5, msg="second ejection")
        return seen

    both = run_both(tmp_path, hosts(ALWAYS_503, ("ok",), ("ok",)), od, drive)
    ours, envoy = racy(both, "statuses", "bad", "others")
    assert ours["statuses"] == {503: 3, 200: 9} and ours["bad"] == 3
    assert envoy["bad"] >= 3 and envoy["statuses"][503] == envoy["bad"]
    r = same(both)
    assert r["stats"]["ejections_enforced_consecutive_5xx"] == 1 and r["stats"]["ejections_active"] == 1
    assert r["flags"] == ["/failed_outlier_check", "healthy", "healthy"]
    assert r["flags_after"] == ["healthy", "healthy", "healthy"]
    assert r["unejected_after_base_time"]
    assert r["bad_again"] == 3 and r["stats_again"]["ejections_enforced_consecutive_5xx"] == 2


def _ejection_times(addr, admin, n):
    """Eject the (only, always failing) host n times in a row, each time as soon as it is
    back: how long each ejection lasted, from ejections_active on the admin stats."""
    out = []
    for _ in range(n):
        # three 503s eject it (the third may already be refused while Envoy's main thread
        # posts the ejection: requests stop once it is in)
        wait_for(lambda: get(addr) and od_stats(admin).get("ejections_active") == 1, timeout=5, msg="ejected")
        t0 = time.monotonic()
        wait_for(lambda: od_stats(admin).get("ejections_active") == 0, timeout=5, msg="un-ejected")
        out.append(time.monotonic() - t0)
    return out


@needs_envoy
def test_max_ejection_time_caps_the_growing_ejection_time(tmp_path):
    """A host ejected again as soon as it is back stays out longer each time (base
    ejection time x the number of ejections: 0.2 s, 0.4 s, 0.6 s) until
    max_ejection_time (0.3 s) caps it: 0.2 s, 0.3 s, 0.3 s, 0.3 s."""
    od = ("{consecutive_5xx: 3, interval: 0.05s, base_ejection_time: 0.2s, max_ejection_time: 0.3s, "
          "max_ejection_percent: 100}")
    both = run_both(tmp_path, hosts(ALWAYS_503), od, lambda addr, admin, hosts: _ejection_times(addr, admin, 4))
    for kind, (d1, d2, d3, d4) in both.items():
        # un-ejection comes at an interval tick (every 0.05 s) and the stats are polled:
        # generous upper bounds; without the cap the third would be 0.6 s, the fourth 0.8 s
        assert 0.15 <= d1 <= 0.29, (kind, d1)
        assert 0.25 <= d2 <= 0.45 and d2 > d1, (kind, d2)
        assert 0.25 <= d3 <= 0.45 and 0.25 <= d4 <= 0.45, (kind, d3, d4)


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
                "others": hosts[2].requests + hosts[3].requests, "stats": settled_od_stats(admin),
                "flags": health_flags(admin, hosts)}

    both = run_both(tmp_path, hosts(("gateway", {"status": 502}), ("gateway", {"status": 504}), ALWAYS_500,
                                    ("ok",)), od, drive)
    if enforcing:
        # Each gateway host is ejected by its third failure: exactly here; in Envoy the
        # ejection goes through its main thread and back, and a fourth request now and then
        # reaches the host first.
        assert both["fastproxy"].pop("gateway") == [3, 3, 3, 3]
        assert all(n >= 3 for n in both["envoy"].pop("gateway"))
        both["fastproxy"].pop("others"), both["envoy"].pop("others")
    r = same(both)
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
        st = statuses(addr, 16)
        return {"refused": st.get(503, 0) - hosts[0].requests, "reached": sum(h.requests for h in hosts),
                "stats": settled_od_stats(admin), "flags": health_flags(admin, hosts)}

    # (Four hosts: with two ejected the healthy ones are still above the panic threshold.)
    both = run_both(tmp_path, hosts(("reset",), ("refuse",), ("ok",), ("ok",)), od, drive)
    # The refusing host is ejected by its third failure (Envoy: now and then later).
    ours, envoy = racy(both, "refused", "reached")
    assert ours["refused"] == 3 and envoy["refused"] >= 3
    r = same(both)
    if split:
        assert r["stats"]["ejections_enforced_consecutive_local_origin_failure"] == 1
        assert r["flags"] == ["healthy", "/failed_outlier_check", "healthy", "healthy"]
    else:
        assert r["stats"]["ejections_enforced_consecutive_5xx"] == 2
        assert r["flags"] == ["/failed_outlier_check", "/failed_outlier_check", "healthy", "healthy"]


@needs_envoy
def test_mixed_failures(tmp_path):
    """A host that mixes answers (seeded: 200, 503, a reset, 503, ...): a reset counts as
    a 503 here (no split), so its first run of three failures of either kind (its 4th to
    6th requests: 503, reset, 503) ejects it."""
    od = "{consecutive_5xx: 3, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100}"

    def drive(addr, admin, hosts):
        st = statuses(addr, 30)
        return {"mixed": hosts[0].requests, "statuses": st, "resets": hosts[0].resets, "stats": settled_od_stats(admin),
                "flags": health_flags(admin, hosts)}

    both = run_both(tmp_path, hosts(("flaky", {"fail_rate": 0.5, "reset_rate": 0.2, "seed": 17}), ("ok",), ("ok",)),
                    od, drive)
    ours, envoy = racy(both, "mixed", "statuses", "resets")
    assert ours == {"mixed": 6, "statuses": {200: 26, 503: 4}, "resets": 1}
    assert envoy["mixed"] >= 6 and envoy["resets"] >= 1
    r = same(both)
    assert r["flags"] == ["/failed_outlier_check", "healthy", "healthy"]


@needs_envoy
def test_retries_and_ejection_keep_requests_succeeding(tmp_path):
    """With a retry policy, every attempt reports: the failing host's 503s are retried on
    the others (the client sees only 200s) and its third 503 ejects it."""
    routes = """
    - match: {prefix: /}
      route: {cluster: backend, timeout: 2s, retry_policy: {retry_on: 5xx, num_retries: 2}}
    """
    od = "{consecutive_5xx: 3, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100}"

    def drive(addr, admin, hosts):
        return {"statuses": statuses(addr, 30), "bad": hosts[0].requests, "stats": settled_od_stats(admin),
                "flags": health_flags(admin, hosts)}

    both = run_both(tmp_path, hosts(ALWAYS_503, ("ok",), ("ok",)), od, drive, routes=routes)
    ours, envoy = racy(both, "bad")
    assert ours["bad"] == 3 and envoy["bad"] >= 3
    r = same(both)
    assert r["statuses"] == {200: 30} and r["flags"] == ["/failed_outlier_check", "healthy", "healthy"]


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
        stats = settled_od_stats(admin)
        if percent is not None:
            # Which failing host is ejected first, and so how often the other one's runs
            # overflow, depends on where round robin starts (at random in Envoy).
            stats = {k: stats[k] for k in ("ejections_active", "ejections_enforced_total",
                                           "ejections_enforced_consecutive_5xx")}
            st = min(h.requests for h in hosts[:2])     # the ejected one's
        return {"statuses": st, "stats": stats, "flags": sorted(health_flags(admin, hosts))}

    both = run_both(tmp_path, hosts(ALWAYS_503, ALWAYS_503, ("ok",)), od, drive)
    if percent is not None:
        ours, envoy = racy(both, "statuses")
        assert ours["statuses"] == 2 and envoy["statuses"] >= 2
    r = same(both)
    if percent is None:         # 1 of 3 hosts is 33% > 10%: never ejected, each detection overflows
        assert r["stats"]["ejections_active"] == 0 and r["stats"]["ejections_overflow"] == 4
    else:
        assert r["stats"]["ejections_active"] == 1 and r["flags"].count("/failed_outlier_check") == 1


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


def test_model_validation_names_the_path():
    """The Python model checks itself with the field's path (as the YAML does)."""
    from fastproxy.model import Cluster
    from fastproxy.upstream.outlier import OutlierDetection
    for od, field in ((OutlierDetection(max_ejection_percent=101), "max_ejection_percent"),
                      (OutlierDetection(interval=0), "interval"),
                      (OutlierDetection(base_ejection_time=60, max_ejection_time=30), "max_ejection_time"),
                      (OutlierDetection(split_external_local_origin_errors="yes"), "split_external_local_origin_errors")):
        with pytest.raises(ConfigError) as e:
            Cluster(name="c", outlier_detection=od).validate("clusters[0]")
        assert e.value.path == f"clusters[0].outlier_detection.{field}"
    with pytest.raises(ConfigError) as e:
        Cluster(name="c", outlier_detection={"consecutive_5xx": 3}).validate("clusters[0]")
    assert e.value.path == "clusters[0].outlier_detection"


def test_update_adds_and_removes_outlier_detection():
    """A running proxy's cluster gets outlier detection by an update (its failing host is
    then ejected, the interval ticks start), and loses it by another: the host's ejection
    ends with it."""
    import dataclasses
    from fastproxy.upstream.outlier import OutlierDetection
    bad, good = scripted_host("bad", "fail_n", n=10 ** 6), scripted_host("good")
    text = envoy_yaml([http_listener(ROUTES)], [static_cluster("backend", [bad.port, good.port])])
    p = fastproxy.Proxy.from_envoy(text, concurrency=1)
    p.start()
    try:
        addr = p.listener_address("web")
        plain = p.config.clusters[0]
        assert statuses(addr, 4) == {503: 2, 200: 2}
        p.update(clusters=[dataclasses.replace(plain, outlier_detection=OutlierDetection(
            consecutive_5xx=2, max_ejection_percent=100, interval=0.05, base_ejection_time=60))])
        statuses(addr, 4)
        assert p.stats()[OD + "ejections_enforced_consecutive_5xx"] == 1
        assert statuses(addr, 6) == {200: 6}           # the failing host gets nothing
        assert wait_for(lambda: p._outlier_ticker._due, msg="interval ticks")
        p.update(clusters=[plain])
        assert statuses(addr, 4) == {503: 2, 200: 2}   # back in the rotation
    finally:
        p.stop(drain_timeout=0.5)
        bad.close()
        good.close()
