"""Active health checks (a cluster's health_checks): HTTP/1.1 and TCP checkers against
upstreams the tests control, the transitions they make (thresholds, the event log, the
health_check.* stats, /clusters health flags, the hosts the load balancer picks), and the
same scenario run through a real Envoy 1.40 with the same YAML (only the event log's path
differs), compared.

Every wait is for a condition (a flag on /clusters, an event in the log, a counter); the
intervals are short (0.1 s) and no_traffic_interval is set to the same value, as Envoy
checks an idle cluster only every 60 s by default.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import (run_on, admin_get, envoy_yaml, find_envoy, fragment, http_listener, static_cluster,
                      wait_for)
from http_upstreams import RawHttpUpstream, http_request
from upstreams import refused_port

import fastproxy
from fastproxy.config import load_envoy
from fastproxy.errors import ConfigError

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")

HC = "cluster.backend.health_check."
ROUTES = "- match: {prefix: /}\n  route: {cluster: backend}"
C0 = "static_resources.clusters[0]"
HTTP_CHECK = "http_health_check: {path: /health}\n"


class HealthUpstream(RawHttpUpstream):
    """An HTTP/1.1 host: /health answers ``status`` (the test changes it; ``degraded`` adds
    x-envoy-degraded), every other path 200 with the host's name."""

    def __init__(self, name, status=200):
        self.name, self.status, self.degraded = name, status, False
        super().__init__(self._answer)

    def _answer(self, method, path, headers, body):
        if path == "/health":
            extra = b"x-envoy-degraded: 1\r\n" if self.degraded else b""
            return b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n%s\r\n" % (self.status, extra)
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(self.name), self.name.encode())

    def traffic(self):
        with self._lock:
            return sum(1 for r in self.requests if r[1] != "/health")

    def checks(self):
        with self._lock:
            return [r for r in self.requests if r[1] == "/health"]


class PingPeer:
    """A TCP host answering b"pong" to each b"ping" on a connection, until ``silent``: then
    it reads and answers nothing (the connection stays open)."""

    def __init__(self):
        self.silent = False
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        with c:
            while True:
                try:
                    d = c.recv(4096)
                except OSError:
                    return
                if not d:
                    return
                buf += d
                while b"ping" in buf:
                    buf = buf.split(b"ping", 1)[1]
                    if not self.silent:
                        c.sendall(b"pong")

    def close(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def check_yaml(extra="", log=None, **fields):
    """A HealthCheck (dict) with short intervals; ``extra``: more YAML fields."""
    text = """
timeout: 1s
interval: 0.1s
no_traffic_interval: 0.1s
unhealthy_threshold: 2
healthy_threshold: 2
"""
    hc = fragment(text + extra)
    if log is not None:
        hc["event_log_path"] = str(log)
    hc.update(fields)
    return hc


def bootstrap(ports, check, **cluster):
    return envoy_yaml([http_listener(ROUTES)],
                      [static_cluster("backend", ports, connect_timeout="1s", health_checks=[check], **cluster)])


def host_flags(admin):
    """{port: health_flags} of cluster backend on /clusters (Envoy's and ours)."""
    out = {}
    for line in admin_get(admin, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "backend" and parts[2] == "health_flags":
            out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return out


def stats(admin):
    out = {}
    for line in admin_get(admin, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(HC):
            out[name[len(HC):]] = int(value)
    return out


def events(path):
    """The event log as (port, event, details) without timestamps, in order."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        e = json.loads(line)
        assert e["cluster_name"] == "backend" and e["health_checker_type"] in ("HTTP", "TCP", "GRPC")
        sa = e["host"]["socket_address"]
        assert sa["address"] == "127.0.0.1" and sa["protocol"] == "TCP"
        kind = next(k for k in e if k.endswith("_event") or k.endswith("_host"))
        out.append((sa["port_value"], kind, json.dumps(e[kind], sort_keys=True)))
        # the whole line as Envoy writes it: the same keys in the same order
        keys = list(e)
        assert keys[:3] == ["health_checker_type", "host", "cluster_name"] and keys[-1] == "locality", keys
    return out


def of(evs, port):
    return [(k, d) for p, k, d in evs if p == port]


def run(kind, text, tmp_path, drive):
    """drive(addr, admin) through Envoy (kind "envoy") or fastproxy on the bootstrap text.
    (Envoy writes its event log on a flush timer, 10 s by default: 20 ms here.)"""
    return run_on(kind, text, tmp_path, drive, envoy_args=("--file-flush-interval-msec", "20"))


def get(addr, n):
    """n requests through the proxy: the bodies (the hosts' names)."""
    out = []
    for _ in range(n):
        r, body = http_request(addr, path="/x")
        assert r.status == 200
        out.append(body.decode())
    return out


# --------------------------------------------------------------------------- HTTP

def http_scenario(kind, tmp_path):
    a, b = HealthUpstream("a"), HealthUpstream("b", status=503)
    log = tmp_path / f"{kind}-events.log"
    text = bootstrap([a.port, b.port], check_yaml(HTTP_CHECK, log=log))

    def drive(addr, admin):
        # The first round: a passes (healthy at once), b answers 503 (failed).
        flags = wait_for(lambda: (f := host_flags(admin)) and f.get(a.port) == "healthy"
                         and f.get(b.port) == "/failed_active_hc" and f, msg="first round")
        # /clusters is the main thread's view. Envoy's workers get a health change only at
        # the end of its update_merge_window (common_lb_config, 1 s by default: health
        # updates are merged), fastproxy's at once: the requests are sent once the workers
        # have it, here when 4 in a row go to the expected host (a documented timing
        # difference, not a different outcome).
        wait_for(lambda: set(get(addr, 4)) == {"a"})
        first = get(addr, 8)
        # b recovers: healthy after healthy_threshold (2) passes; a fails: at once (503).
        b.status = 200
        wait_for(lambda: host_flags(admin).get(b.port) == "healthy", msg="b healthy")
        a.status = 503
        wait_for(lambda: host_flags(admin).get(a.port) == "/failed_active_hc", msg="a failed")
        wait_for(lambda: set(get(addr, 4)) == {"b"})
        second = get(addr, 8)
        wait_for(lambda: len(events(log)) >= 4, msg="4 events")
        prom = sorted(line.split(" ")[0] for line in admin_get(admin, "/stats/prometheus").splitlines()
                      if line.startswith("envoy_cluster_health_check_"))
        return flags, first, second, stats(admin), events(log), prom

    try:
        return run(kind, text, tmp_path, drive), a, b
    finally:
        a.close()
        b.close()


def normalize(evs, a, b):
    names = {a.port: "a", b.port: "b"}
    return [(names[p], k, d) for p, k, d in evs]


def test_http_check_moves_traffic_between_hosts(tmp_path):
    (flags, first, second, st, evs, prom), a, b = http_scenario("fastproxy", tmp_path)
    assert 'envoy_cluster_health_check_attempt{envoy_cluster_name="backend"}' in prom
    assert set(first) == {"a"} and set(second) == {"b"}         # no traffic to a failed host
    assert st["healthy"] == 1 and st["degraded"] == 0
    assert st["attempt"] >= st["success"] + st["failure"] - 2 and st["failure"] >= 2 and st["network_failure"] == 0
    assert normalize(evs, a, b)[:2] in (
        [("a", "add_healthy_event", '{"first_check": true}'),
         ("b", "health_check_failure_event", '{"failure_type": "ACTIVE", "first_check": true, "http_status_code": 503}')],
        [("b", "health_check_failure_event", '{"failure_type": "ACTIVE", "first_check": true, "http_status_code": 503}'),
         ("a", "add_healthy_event", '{"first_check": true}')])
    assert normalize(evs, a, b)[2:] == [
        ("b", "add_healthy_event", '{"first_check": false}'),
        ("a", "eject_unhealthy_event", '{"failure_type": "ACTIVE", "http_status_code": 503}')]
    # The request Envoy's checker sends: GET, host = the cluster's name, user-agent Envoy/HC.
    method, path, headers, body = a.checks()[0]
    assert (method, path, headers["host"], headers["user-agent"], body) == ("GET", "/health", ["backend"],
                                                                            ["Envoy/HC"], b"")


@needs_envoy
def test_http_check_matches_envoy(tmp_path):
    (ef, efirst, esecond, est, eevs, eprom), ea, eb = http_scenario("envoy", tmp_path)
    (ff, ffirst, fsecond, fst, fevs, fprom), fa, fb = http_scenario("fastproxy", tmp_path)
    assert eprom == fprom
    assert (set(efirst), set(esecond)) == (set(ffirst), set(fsecond)) == ({"a"}, {"b"})
    assert sorted(ef.values()) == sorted(ff.values())
    for name in ("healthy", "degraded", "network_failure", "passive_failure", "verify_cluster"):
        assert est[name] == fst[name], name
    assert set(est) == set(fst)
    # Per host, the same events in the same order (the two hosts' first checks race).
    e, f = normalize(eevs, ea, eb), normalize(fevs, fa, fb)
    for host in ("a", "b"):
        assert [x for x in e if x[0] == host] == [x for x in f if x[0] == host]
    # The check request is byte for byte Envoy's.
    assert ea.checks()[0] == fa.checks()[0]


def test_degraded_and_thresholds(tmp_path):
    """x-envoy-degraded marks a passing host degraded (and back); retriable statuses and
    network failures fail a healthy host only after unhealthy_threshold in a row."""
    a = HealthUpstream("a")
    log = tmp_path / "events.log"
    check = check_yaml("http_health_check: {path: /health, retriable_statuses: [{start: 500, end: 501}]}\n",
                       log=log, unhealthy_threshold=3)
    p = fastproxy.Proxy.from_envoy(bootstrap([a.port], check), concurrency=1)
    p.start()
    try:
        admin = p.admin_address
        wait_for(lambda: host_flags(admin).get(a.port) == "healthy")
        a.degraded = True
        wait_for(lambda: stats(admin)["degraded"] == 1)
        assert host_flags(admin)[a.port] == "/degraded_active_hc"
        a.degraded = False
        wait_for(lambda: stats(admin)["degraded"] == 0)
        # 500 is retriable: three in a row before the host fails.
        n = len(a.checks())
        a.status = 500
        wait_for(lambda: host_flags(admin).get(a.port) == "/failed_active_hc", msg="failed")
        assert len(a.checks()) - n >= 3
        kinds = [k for _, k, _ in events(log)]
        assert kinds == ["add_healthy_event", "degraded_healthy_host", "no_longer_degraded_host",
                         "eject_unhealthy_event"]
        assert json.loads(log.read_text().splitlines()[-1])["eject_unhealthy_event"] == {
            "failure_type": "ACTIVE", "http_status_code": 500}
    finally:
        p.stop(drain_timeout=0.5)
        a.close()


@pytest.mark.parametrize("reuse", [True, False])
def test_reuse_connection(reuse):
    """reuse_connection (default true): the checks of a host share one connection; false:
    a connection per check."""
    a = HealthUpstream("a")
    p = fastproxy.Proxy.from_envoy(bootstrap([a.port], check_yaml(HTTP_CHECK, reuse_connection=reuse)),
                                   concurrency=1)
    p.start()
    try:
        wait_for(lambda: len(a.checks()) >= 5)
        with a._lock:
            conns = a.connections
        assert conns == 1 if reuse else conns >= 4
    finally:
        p.stop(drain_timeout=0.5)
        a.close()


# --------------------------------------------------------------------------- TCP

def tcp_scenario(kind, tmp_path):
    peer = PingPeer()
    hold, dead = refused_port()
    log = tmp_path / f"{kind}-tcp.log"
    check = check_yaml("tcp_health_check: {send: {text: '70696e67'}, receive: [{text: '706f6e67'}]}\n",
                       log=log, timeout="0.3s", always_log_health_check_failures=True)
    text = bootstrap([peer.port, dead], check)

    def drive(addr, admin):
        wait_for(lambda: host_flags(admin).get(peer.port) == "healthy"
                 and host_flags(admin).get(dead) == "/failed_active_hc", msg="first round")
        peer.silent = True              # answers nothing: timeouts
        flags = wait_for(lambda: (f := host_flags(admin)).get(peer.port, "").startswith("/failed") and f,
                         timeout=10, msg="peer failed")
        wait_for(lambda: len(of(events(log), peer.port)) >= 3, msg="peer's events")
        return flags, stats(admin), events(log)

    try:
        return run(kind, text, tmp_path, drive), peer.port, dead
    finally:
        peer.close()
        hold.close()


def tcp_summary(result, port, dead):
    flags, st, evs = result
    timeouts = [d for k, d in of(evs, port) if k == "health_check_failure_event"]
    return (flags[port], flags[dead], st["healthy"], st["network_failure"] > 0,
            [k for k, _ in of(evs, port)][:2], of(evs, port)[2] if len(of(evs, port)) > 2 else None,
            of(evs, dead)[0], bool(timeouts))


def test_tcp_check_send_receive_and_timeouts(tmp_path):
    result, port, dead = tcp_scenario("fastproxy", tmp_path)
    summary = tcp_summary(result, port, dead)
    assert summary[:5] == ("/failed_active_hc/active_hc_timeout", "/failed_active_hc", 0, True,
                           ["add_healthy_event", "health_check_failure_event"])
    assert summary[6] == ("health_check_failure_event",
                          '{"failure_type": "NETWORK", "first_check": true, "http_status_code": 0}')


@needs_envoy
def test_tcp_check_matches_envoy(tmp_path):
    envoy = tcp_summary(*tcp_scenario("envoy", tmp_path))
    ours = tcp_summary(*tcp_scenario("fastproxy", tmp_path))
    assert envoy == ours


# --------------------------------------------------------------------------- host set changes

def test_host_set_changes_add_and_remove_checkers(tmp_path):
    """An update adding a host: the new host starts failed and is checked; the host that
    stays keeps its state (no new event); a host removed is no longer checked."""
    a, b = HealthUpstream("a"), HealthUpstream("b")
    log = tmp_path / "events.log"
    check = check_yaml(HTTP_CHECK, log=log)
    p = fastproxy.Proxy.from_envoy(bootstrap([a.port], check), concurrency=1)
    p.start()
    try:
        admin = p.admin_address
        wait_for(lambda: host_flags(admin).get(a.port) == "healthy")
        p.update(clusters=load_envoy(bootstrap([a.port, b.port], check)).clusters)
        wait_for(lambda: host_flags(admin).get(b.port) == "healthy", msg="b checked")
        assert [(p_, k) for p_, k, _ in events(log)] == [(a.port, "add_healthy_event"), (b.port, "add_healthy_event")]
        assert set(get(p.listener_address("web"), 6)) == {"a", "b"}
        p.update(clusters=load_envoy(bootstrap([b.port], check)).clusters)
        wait_for(lambda: a.port not in host_flags(admin))
        n = len(a.checks())
        wait_for(lambda: len(b.checks()) >= 5 + len(b.checks()) - 5 and stats(admin)["attempt"] > 0)
        seen = len(b.checks())
        wait_for(lambda: len(b.checks()) >= seen + 3, msg="b still checked")
        assert len(a.checks()) <= n + 1          # (one check may have been in flight)
        assert stats(admin)["healthy"] == 1
        # The cluster loses its health checks: its hosts are plain hosts again.
        p.update(clusters=load_envoy(envoy_yaml([http_listener(ROUTES)], [static_cluster("backend", [b.port])])).clusters)
        seen = len(b.checks())
        assert host_flags(admin)[b.port] == "healthy"
        assert set(get(p.listener_address("web"), 2)) == {"b"}
        assert len(b.checks()) <= seen + 1
    finally:
        p.stop(drain_timeout=0.5)
        a.close()
        b.close()


def test_checks_run_without_the_gil(tmp_path):
    """The checker thread never takes the GIL: connect checks go on while this thread
    holds it (a busy loop with a 10 s switch interval keeps every other Python thread out,
    the upstream's accept thread included: the kernel completes the connects)."""
    hold = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = hold.getsockname()[1]
    p = fastproxy.Proxy.from_envoy(bootstrap([port], check_yaml("tcp_health_check: {}\n", interval="0.02s",
                                                                no_traffic_interval="0.02s")), concurrency=1)
    p.start()
    old = sys.getswitchinterval()
    try:
        wait_for(lambda: p.stats()[HC + "success"] > 0)
        before = p.stats()[HC + "success"]
        sys.setswitchinterval(10)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pass
        sys.setswitchinterval(old)
        assert p.stats()[HC + "success"] - before >= 10
    finally:
        sys.setswitchinterval(old)
        p.stop(drain_timeout=0.5)
        hold.close()


# --------------------------------------------------------------------------- config

BAD = [
    ("grpc_health_check: {initial_metadata: [{key: a, value: b}]}",
     ".health_checks[0].grpc_health_check.initial_metadata"),
    ("http_health_check: {path: /h, codec_client_type: HTTP2}", ".health_checks[0].http_health_check.codec_client_type"),
    ("http_health_check: {path: /h, expected_statuses: [{start: 200, end: 200}]}",
     ".health_checks[0].http_health_check.expected_statuses[0]"),
    ("http_health_check: {path: /h, expected_statuses: [{start: 99, end: 200}]}",
     ".health_checks[0].http_health_check.expected_statuses[0]"),
    ("tcp_health_check: {send: {text: 'zz'}}", ".health_checks[0].tcp_health_check.send.text"),
    ("http_health_check: {path: /h, request_headers_to_remove: [host]}",
     ".health_checks[0].http_health_check.request_headers_to_remove[0]"),
    ("custom_health_check: {name: x}", ".health_checks[0].custom_health_check"),
    ("http_health_check: {path: /h, request_headers_to_add: [{header: {key: a, value: b}, append_action: NOPE}]}",
     ".health_checks[0].http_health_check.request_headers_to_add[0].append_action"),
    ("http_health_check: {path: /h, request_headers_to_add: [{header: {key: a, value: b}, append: true, "
     "append_action: ADD_IF_ABSENT}]}", ".health_checks[0].http_health_check.request_headers_to_add[0].append"),
    ("http_health_check: {path: /h, request_headers_to_add: [{header: {key: a, raw_value: Yg==}}]}",
     ".health_checks[0].http_health_check.request_headers_to_add[0].header.raw_value"),
    ("name: 7\ntcp_health_check: {}", ".health_checks[0].name"),
    ("{}", ".health_checks[0]"),
]


@pytest.mark.parametrize("extra, path", BAD)
def test_bad_health_checks_name_the_field(extra, path):
    with pytest.raises(ConfigError) as e:
        load_envoy(bootstrap([1], check_yaml(extra + "\n" if extra != "{}" else "")))
    assert e.value.path == C0 + path, str(e.value)


def test_required_fields_and_one_check_per_cluster():
    hc = check_yaml("http_health_check: {path: /h}\n")
    del hc["interval"]
    with pytest.raises(ConfigError) as e:
        load_envoy(bootstrap([1], hc))
    assert e.value.path == C0 + ".health_checks[0].interval"
    two = envoy_yaml([], [static_cluster("backend", [1], health_checks=[check_yaml("tcp_health_check: {}\n")] * 2)])
    with pytest.raises(ConfigError) as e:
        load_envoy(two)
    assert e.value.path == C0 + ".health_checks[1]"


def test_event_log_that_cannot_be_opened_is_refused(tmp_path):
    text = bootstrap([1], check_yaml("tcp_health_check: {}\n", log=tmp_path / "no" / "such" / "dir.log"))
    p = fastproxy.Proxy.from_envoy(text, concurrency=1)
    with pytest.raises(ConfigError) as e:
        p.start()
    assert e.value.path == C0 + ".health_checks[0].event_log_path"
    p.stop()


HEADER_CHECKS = {
    # every append_action, an append duplicate, an empty value kept, and user-agent overwritten
    "actions": HTTP_CHECK.rstrip("}\n") + """, request_headers_to_add: [
    {header: {key: x-a, value: one}}, {header: {key: x-a, value: two}},
    {header: {key: user-agent, value: probe}, append_action: OVERWRITE_IF_EXISTS_OR_ADD},
    {header: {key: x-b, value: b}, append_action: ADD_IF_ABSENT},
    {header: {key: x-b, value: again}, append_action: ADD_IF_ABSENT},
    {header: {key: x-c, value: c}, append_action: OVERWRITE_IF_EXISTS},
    {header: {key: x-a, value: three}, append: false},
    {header: {key: x-e, value: ''}, keep_empty_value: true},
    {header: {key: x-f, value: ''}}]}
""",
    "remove": HTTP_CHECK.rstrip("}\n") + ", request_headers_to_add: [{header: {key: x-a, value: one}}], "
                                          "request_headers_to_remove: [user-agent]}\n",
}


def header_scenario(kind, which, tmp_path):
    """The headers of the first check request the host receives."""
    a = HealthUpstream("a")
    text = bootstrap([a.port], check_yaml(HEADER_CHECKS[which]))

    def drive(addr, admin):
        return wait_for(lambda: a.checks() and a.checks()[0][2], msg="a check")

    try:
        return run(kind, text, tmp_path, drive)
    finally:
        a.close()


@pytest.mark.parametrize("which", sorted(HEADER_CHECKS))
def test_check_request_headers(which, tmp_path):
    """request_headers_to_add (each append_action, append, keep_empty_value) and
    request_headers_to_remove reach the health endpoint as Envoy sends them."""
    ours = header_scenario("fastproxy", which, tmp_path)
    if which == "actions":
        # (Envoy decides every action on the headers before any is added, then overwrites,
        # then adds: the overwrite of x-a comes before the two appends, both ADD_IF_ABSENT add)
        assert ours["x-a"] == ["three", "one", "two"] and ours["user-agent"] == ["probe"]
        assert ours["x-b"] == ["b", "again"]
        assert "x-c" not in ours and ours["x-e"] == [""] and "x-f" not in ours
    else:
        assert ours["x-a"] == ["one"] and "user-agent" not in ours
    if ENVOY is not None:
        assert header_scenario("envoy", which, tmp_path) == ours


class TimedHealthUpstream(HealthUpstream):
    """A HealthUpstream that notes (monotonic time, status answered) of every check."""

    def __init__(self, name, status=200):
        self.seen = []
        super().__init__(name, status)

    def _answer(self, method, path, headers, body):
        if path == "/health":
            self.seen.append((time.monotonic(), self.status))
        return super()._answer(method, path, headers, body)


# Distinct spacings: interval 0.05 s, healthy_edge 0.15 s, unhealthy_edge 0.3 s, unhealthy 0.5 s.
SPACING = dict(interval="0.05s", healthy_edge_interval="0.15s", unhealthy_edge_interval="0.3s",
               unhealthy_interval="0.5s", no_traffic_interval="0.05s", unhealthy_threshold=3, healthy_threshold=3)


def spacing_scenario(kind, tmp_path):
    """A host checked with SPACING (503 retriable, so failures count to the threshold):
    healthy, then failing (3 checks to unhealthy, 3 more), then passing (3 to healthy, 3
    more). Returns each gap between checks labelled by what Envoy's interval choice is
    for the check before it: (label, seconds)."""
    a = TimedHealthUpstream("a")
    check = check_yaml("http_health_check: {path: /health, retriable_statuses: [{start: 503, end: 504}]}\n",
                       **SPACING)
    text = bootstrap([a.port], check)

    def drive(addr, admin):
        wait_for(lambda: host_flags(admin).get(a.port) == "healthy", msg="healthy")
        get(addr, 1)  # the cluster has had traffic: no_traffic_interval no longer applies
        n = start = len(a.seen)
        wait_for(lambda: len(a.seen) >= n + 3, msg="healthy checks")
        a.status = 503
        wait_for(lambda: sum(st == 503 for _, st in a.seen) >= 6, timeout=10, msg="failing checks")
        a.status = 200
        n = len(a.seen)
        wait_for(lambda: len(a.seen) >= n + 6, timeout=10, msg="passing checks")
        return list(a.seen[start:])

    try:
        seen = run(kind, text, tmp_path, drive)
    finally:
        a.close()
    gaps, run_len, prev = [], 0, None
    for (t0, st), (t1, _) in zip(seen, seen[1:]):
        run_len = run_len + 1 if st == prev else 1
        prev = st
        if st == 503:
            label = "unhealthy_edge" if run_len < 3 else "unhealthy"
        else:
            label = "healthy_edge" if run_len < 3 and any(s == 503 for _, s in seen[:seen.index((t0, st))]) \
                else "interval"
        gaps.append((label, t1 - t0))
    return gaps


SPACING_EXPECTED = {"interval": 0.05, "healthy_edge": 0.15, "unhealthy_edge": 0.3, "unhealthy": 0.5}


def check_spacing(kind, gaps):
    labels = {label for label, _ in gaps}
    assert labels == set(SPACING_EXPECTED), (kind, gaps)
    for label, gap in gaps:
        want = SPACING_EXPECTED[label]
        # a timer fires no earlier than asked; the upper bound is loose for a loaded machine
        assert want - 0.02 <= gap <= want + 0.12, (kind, label, gap, gaps)


@pytest.mark.parametrize("kind", ["fastproxy", pytest.param("envoy", marks=needs_envoy)])
def test_unhealthy_and_edge_intervals_space_the_checks(kind, tmp_path):
    """unhealthy_interval spaces the checks of an unhealthy host, unhealthy_edge_interval
    and healthy_edge_interval those while a change is pending (below the threshold), as
    Envoy does (the same scenario runs through Envoy)."""
    check_spacing(kind, spacing_scenario(kind, tmp_path))


@pytest.mark.parametrize("kind", ["fastproxy", pytest.param("envoy", marks=needs_envoy)])
def test_interval_jitter_stays_in_bounds(kind, tmp_path):
    """interval_jitter adds 0..jitter to each interval: the gaps lie in
    [interval, interval + jitter] (plus scheduling slack) and are not all the same."""
    a = TimedHealthUpstream("a")
    text = bootstrap([a.port], check_yaml(HTTP_CHECK, interval="0.05s", interval_jitter="0.1s",
                                          no_traffic_interval="0.05s"))

    def drive(addr, admin):
        wait_for(lambda: host_flags(admin).get(a.port) == "healthy", msg="healthy")
        get(addr, 1)
        n = len(a.seen)
        wait_for(lambda: len(a.seen) >= n + 21, timeout=10, msg="checks")
        return [t1 - t0 for (t0, _), (t1, _) in zip(a.seen[n:], a.seen[n + 1:])]

    try:
        gaps = run(kind, text, tmp_path, drive)
    finally:
        a.close()
    assert all(0.03 <= g <= 0.15 + 0.1 for g in gaps), (kind, gaps)
    assert max(gaps) - min(gaps) >= 0.03, (kind, gaps)


DUMPED = [
    check_yaml("http_health_check: {path: /h, host: svc, expected_statuses: [{start: 200, end: 300}], "
               "request_headers_to_add: [{header: {key: x-a, value: b}}], request_headers_to_remove: [user-agent], "
               "receive: [{text: '6f6b'}]}\n", interval_jitter="0.05s", interval_jitter_percent=10,
               initial_jitter="0.1s", unhealthy_interval="2s", unhealthy_edge_interval="3s",
               healthy_edge_interval="4s", no_traffic_healthy_interval="5s", reuse_connection=False,
               always_log_health_check_failures=True, event_log_path="/tmp/hc.log", name="primary"),
    check_yaml(HEADER_CHECKS["actions"], name="with-actions"),
    check_yaml("tcp_health_check: {send: {text: '00ff'}, receive: [{binary: 'AQI='}]}\n", event_logger=[
        {"name": "envoy.health_check.event_sinks.file",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3."
                                   "HealthCheckEventFileSink", "event_log_path": "/tmp/hc2.log"}}]),
]


@pytest.mark.parametrize("check", DUMPED)
def test_dump_writes_health_checks_back(check, tmp_path):
    """The config dump writes the check back: it loads as the same cluster, and Envoy
    accepts it."""
    from fastproxy.config.dump import bootstrap_json
    boot = load_envoy(bootstrap([8080], check))
    dumped = bootstrap_json(boot)
    assert load_envoy(dumped).clusters[0] == boot.clusters[0]
    if ENVOY is not None:
        cfg = tmp_path / "dump.json"
        cfg.write_text(json.dumps(dumped) if not isinstance(dumped, str) else dumped)
        r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
                           capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in __import__("os").environ.items() if k != "LD_PRELOAD"})
        assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- gRPC

H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


class GrpcHealthServer:
    """grpc.health.v1.Health/Check served by grpcio (raw messages: no generated code):
    answers HealthCheckResponse{status: ``status``} (1 SERVING, 2 NOT_SERVING) and records
    each request's bytes and metadata."""

    def __init__(self, status=1):
        import grpc
        from concurrent import futures
        self.status = status
        self.requests = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))

        def check(request, context):
            self.requests.append((request, dict(context.invocation_metadata())))
            return bytes([0x08, self.status])
        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(0)


def grpc_scenario(kind, tmp_path):
    g = GrpcHealthServer()
    log = tmp_path / f"{kind}-grpc.log"
    check = check_yaml("grpc_health_check: {service_name: svc}\n", log=log)
    text = envoy_yaml([http_listener(ROUTES)], [static_cluster(
        "backend", [g.port], connect_timeout="1s", health_checks=[check],
        typed_extension_protocol_options=H2_OPTIONS)])

    def drive(addr, admin):
        wait_for(lambda: host_flags(admin).get(g.port) == "healthy", msg="serving")
        g.status = 2                    # NOT_SERVING: failed at once
        wait_for(lambda: host_flags(admin).get(g.port) == "/failed_active_hc", msg="not serving")
        g.status = 1
        wait_for(lambda: host_flags(admin).get(g.port) == "healthy", msg="serving again")
        st = stats(admin)
        wait_for(lambda: len(events(log)) >= 3, msg="3 events")
        return [(k, d) for _, k, d in events(log)], st["healthy"], st["network_failure"]

    try:
        return run(kind, text, tmp_path, drive), g.requests[0]
    finally:
        g.close()


def test_grpc_check_follows_the_serving_status(tmp_path):
    (evs, healthy, network), (request, metadata) = grpc_scenario("fastproxy", tmp_path)
    assert evs == [("add_healthy_event", '{"first_check": true}'),
                   ("eject_unhealthy_event", '{"failure_type": "ACTIVE", "http_status_code": 0}'),
                   ("add_healthy_event", '{"first_check": false}')]
    assert (healthy, network) == (1, 0)
    assert request == b"\x0a\x03svc"            # HealthCheckRequest{service: "svc"}
    assert metadata["user-agent"].startswith("Envoy/HC")


@needs_envoy
def test_grpc_check_matches_envoy(tmp_path):
    (eevs, eh, en), (ereq, emeta) = grpc_scenario("envoy", tmp_path)
    (fevs, fh, fn), (freq, fmeta) = grpc_scenario("fastproxy", tmp_path)
    assert (eevs, eh, en, ereq) == (fevs, fh, fn, freq)
    assert {k: v for k, v in emeta.items() if k != "user-agent"} == \
        {k: v for k, v in fmeta.items() if k != "user-agent"}


def test_grpc_check_needs_an_http2_cluster():
    with pytest.raises(ConfigError) as e:
        load_envoy(bootstrap([1], check_yaml("grpc_health_check: {}\n")))
    assert e.value.path == C0 + ".health_checks[0].grpc_health_check"
