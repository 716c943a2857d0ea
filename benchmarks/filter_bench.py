#!/usr/bin/env python3
"""HTTP filter overhead: requests/s through fastproxy (one worker) with

    router    (a) the router alone
    py1       (b) one Python filter that adds a request header
    py10      (c) ten such filters
    async     (d) one ``async def`` filter that adds a request header (no await)
    cffi      (e) the cffi example filter (examples/c_filter/: adds a request and a
                  response header, checks for x-block)
    py-rr     (f) one Python filter whose plain ``def`` hooks set one request and one
                  response header
    async-rr  (g) the same filter with ``async def`` hooks (no await): the cost of
                  handing each hook to the asyncio loop and back (issue 12: >= 0.5x (a))

and, with --only, async-sleep0 (d') the async filter awaiting asyncio.sleep(0) first.

    python benchmarks/filter_bench.py [--rounds 3] [--seconds 5] [--only router,cffi]
                                      [--no-pin] [--json results.json]

The upstream, the workload and wrk are those of http_bench.py: one nginx (one worker)
answering GET /small with a 13-byte keep-alive response; wrk with one thread and 64
connections. Every variant is its own fastproxy process (benchmarks/filter_bench_proxy.py:
the same Envoy config as http_bench.py plus the filters, in TypedStructs) pinned to CPU 1,
wrk and nginx to CPU 0. The variants run alternately (the order reverses every round); the
summary is the median per variant, its ratio to the router alone, and the proxy's CPU
seconds (all threads) per 100k requests. The goals: (b) >= 0.7x (a), (e) >= 0.95x (a)
(issue 4); (g) >= 0.5x (a) (issue 12).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchlib import (add_quiet_host_args, stop_all, run_main, write_json,
                      HERE, REPO, BenchError, Proc, fastproxy_env, find_binary,
                      foreign_cpu_seconds, install_signal_handlers, proc_snapshot,
                      reserve_ports, taskset, wait_for_quiet)
from http_bench import (SMALL_BODY, WRK_DONE_LUA, Workload, envoy_yaml, nginx_common,
                        nginx_http_common, probe_http, run_wrk)

VARIANTS = ["router", "py1", "py10", "async", "cffi", "py-rr", "async-rr"]
EXTRA_VARIANTS = ["async-sleep0"]
LABELS = {"router": "(a) router alone", "py1": "(b) 1 Python filter", "py10": "(c) 10 Python filters",
          "async": "(d) 1 async filter", "async-sleep0": "(d') async, sleep(0)",
          "cffi": "(e) cffi filter", "py-rr": "(f) 1 filter, req+resp", "async-rr": "(g) (f) async def"}
TYPED_STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"
PY_URL = "type.googleapis.com/fastproxy.python.HttpFilter"
C_URL = "type.googleapis.com/fastproxy.c.HttpFilter"
# The headers each variant's filters add on the request, as the upstream's /check shows them.
CHECKED = ["x-py-filter"] + [f"x-f-{i}" for i in range(10)] + ["x-async-filter", "x-c-filter"]
# The header each variant's filters add on the response (the smoke test looks for it).
RESPONSE_HEADER = {"py-rr": "x-py-response", "async-rr": "x-async-response"}


def filter_entries(variant: str) -> list[tuple[str, str, dict]]:
    """(name, type_url, TypedStruct value) of each filter of the variant, in order."""
    if variant == "router":
        return []
    if variant == "py1":
        return [("add", PY_URL, {"filter": "bench_add_header"})]
    if variant == "py10":
        return [(f"add{i}", PY_URL, {"filter": "bench_add_header", "config": {"header": f"x-f-{i}"}})
                for i in range(10)]
    if variant == "async":
        return [("async", PY_URL, {"filter": "bench_async_add_header"})]
    if variant == "async-sleep0":
        return [("async", PY_URL, {"filter": "bench_async_sleep0_add_header"})]
    if variant == "cffi":
        return [("cffi", C_URL, {"filter": "bench_c_header", "config": {"header": "x-c-filter"}})]
    if variant == "py-rr":
        return [("rr", PY_URL, {"filter": "bench_req_resp_header"})]
    if variant == "async-rr":
        return [("rr", PY_URL, {"filter": "bench_async_req_resp_header"})]
    raise BenchError(f"unknown variant {variant!r}")


def expected_headers(variant: str) -> set[str]:
    return {"router": set(), "py1": {"x-py-filter"}, "py10": {f"x-f-{i}" for i in range(10)},
            "async": {"x-async-filter"}, "async-sleep0": {"x-async-filter"},
            "cffi": {"x-c-filter"}, "py-rr": {"x-py-filter"},
            "async-rr": {"x-async-filter"}}[variant]


def proxy_yaml(variant: str, port: int, upstream_port: int, admin_port: int) -> str:
    """http_bench.py's Envoy config with the variant's filters before the router."""
    base = envoy_yaml(port, upstream_port, admin_port)
    anchor = "          http_filters:\n"
    if anchor not in base:
        raise BenchError("http_bench.envoy_yaml changed: no http_filters list found")
    items = "".join(
        f"          - name: {name}\n"
        f"            typed_config:\n"
        f"              \"@type\": {TYPED_STRUCT}\n"
        f"              type_url: {url}\n"
        f"              value: {json.dumps(value)}\n"
        for name, url, value in filter_entries(variant))
    return base.replace(anchor, anchor + items)


def upstream_conf(prefix: Path, port: int) -> str:
    """http_bench.py's origin (/small: the same 13-byte `return`), plus /check, which
    answers with the values of the headers the filters add (the smoke test's proof that
    each variant's filters run)."""
    body = SMALL_BODY.decode().replace("\n", "\\n")
    check = "|".join(f"{h}=$http_{h.replace('-', '_')}" for h in CHECKED)
    return nginx_common(prefix) + f"""\
http {{
{nginx_http_common(prefix)}    tcp_nodelay on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /small {{
            default_type text/plain;
            return 200 "{body}";
        }}
        location = /check {{
            default_type text/plain;
            return 200 "{check}";
        }}
    }}
}}
"""


def smoke(variant: str, port: int) -> None:
    """/small answers the same bytes; /check shows exactly the variant's request headers;
    the cffi variant also answers 403 itself for x-block."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/small", headers={"Host": "bench.local"})
        r = conn.getresponse()
        if r.status != 200 or r.read() != SMALL_BODY:
            raise BenchError(f"{variant}: GET /small: status {r.status}")
        want = RESPONSE_HEADER.get(variant)
        if want and r.getheader(want) != "1":
            raise BenchError(f"{variant}: the response lacks {want}: 1")
        conn.request("GET", "/check", headers={"Host": "bench.local"})
        r = conn.getresponse()
        seen = dict(kv.split("=", 1) for kv in r.read().decode().split("|"))
        got = {h for h, v in seen.items() if v}
        if got != expected_headers(variant):
            raise BenchError(f"{variant}: the upstream saw headers {sorted(got)}, "
                             f"want {sorted(expected_headers(variant))}")
        if variant == "cffi":
            conn.request("GET", "/small", headers={"Host": "bench.local", "x-block": "1"})
            r = conn.getresponse()
            r.read()
            if r.status != 403:
                raise BenchError(f"cffi: x-block answered {r.status}, want 403")
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"{variant}: smoke request failed: {e!r}")
    finally:
        conn.close()


def build_c_filter(out: Path, env: dict) -> None:
    r = subprocess.run([sys.executable, str(REPO / "examples" / "c_filter" / "build.py"), "--out", str(out)],
                       capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    if r.returncode != 0:
        raise BenchError("building examples/c_filter failed:\n" + (r.stderr or r.stdout)[-2000:])


def summarize(runs: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        rs = [r for r in runs if r["variant"] == name]
        if not rs:
            continue
        rps = [r["rps"] for r in rs]
        cpu = [r["cpu_s_per_100k"] for r in rs if r["cpu_s_per_100k"] is not None]
        out[name] = {"rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                     "cpu_s_per_100k_median": statistics.median(cpu) if cpu else None,
                     "p50_ms_median": statistics.median(r["p50_ms"] for r in rs),
                     "p99_ms_median": statistics.median(r["p99_ms"] for r in rs),
                     "errors": sum(r["error_count"] for r in rs), "runs": len(rs),
                     "noisy_runs": sum(1 for r in rs if r["noisy"])}
    base = out.get("router")
    for s in out.values():
        s["rps_vs_router"] = s["rps_median"] / base["rps_median"] if base else None
        s["cpu_vs_router"] = (s["cpu_s_per_100k_median"] / base["cpu_s_per_100k_median"]
                              if base and base["cpu_s_per_100k_median"] and s["cpu_s_per_100k_median"]
                              else None)
    return out


def format_table(summary: dict, failed: dict) -> str:
    lines = [f"{'variant':<24}{'req/s':>9}{'min':>9}{'max':>9}{'vs (a)':>8}"
             f"{'cpu s/100k':>12}{'cpu vs (a)':>11}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}"]
    for name, s in summary.items():
        lines.append(f"{LABELS[name]:<24}{s['rps_median']:>9.0f}{s['rps_min']:>9.0f}{s['rps_max']:>9.0f}"
                     f"{s['rps_vs_router'] or 0:>8.2f}{s['cpu_s_per_100k_median'] or 0:>12.3f}"
                     f"{s['cpu_vs_router'] or 0:>11.2f}{s['p50_ms_median']:>8.2f}{s['p99_ms_median']:>8.2f}"
                     f"{s['errors']:>8}" + (f"  ({s['noisy_runs']} noisy)" if s["noisy_runs"] else ""))
    for name, why in failed.items():
        lines.append(f"{LABELS.get(name, name):<24} FAILED: {why.splitlines()[0] if why else ''}")
    return "\n".join(lines)


def goals(summary: dict) -> list[dict]:
    out = []
    for variant, goal in (("py1", 0.7), ("cffi", 0.95), ("async-rr", 0.5)):
        v = summary.get(variant, {}).get("rps_vs_router")
        out.append({"goal": f"{LABELS[variant]} >= {goal}x (a) requests/s", "value": v,
                    "met": None if v is None else v >= goal})
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="HTTP filter overhead in fastproxy (router alone, "
                                             "Python, async and cffi filters)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the variant order alternates (default 3)")
    ap.add_argument("--seconds", type=int, default=5, help="wrk -d per run (default 5)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(VARIANTS)} "
                                               f"(default: all of these); also {','.join(EXTRA_VARIANTS)}")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    ap.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load per variant (default 1)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="taskset: proxy on CPU 1, wrk + upstream nginx on CPU 0 (default on)")
    add_quiet_host_args(ap, idle_wait=10.0, retries=False)     # a NOISY run is repeated once
    ap.add_argument("--json", default=str(HERE / "results" / "filter_bench.json"))
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(VARIANTS)
    bad = [n for n in names if n not in VARIANTS + EXTRA_VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {VARIANTS + EXTRA_VARIANTS}")
    if args.rounds < 1 or args.seconds < 1:
        ap.error("--rounds and --seconds must be >= 1")
    args.names = list(dict.fromkeys(names))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    wrk, nginx = find_binary("wrk"), find_binary("nginx")
    if not wrk or not nginx:
        print("wrk and nginx are required (apt-get install wrk nginx)", file=sys.stderr)
        return 2
    pin = args.pin and (os.cpu_count() or 1) >= 2 and bool(shutil.which("taskset"))
    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-filter-bench-"))
    env = fastproxy_env()
    procs: list[Proc] = []
    upstream: Optional[Proc] = None
    failed: dict[str, str] = {}
    runs: list[dict] = []
    wl = Workload("small", "/small", args.connections, len(SMALL_BODY))
    try:
        up_dir = tmp / "upstream"
        up_dir.mkdir()
        ports = iter(reserve_ports(2 * len(args.names) + 1))
        upstream_port = next(ports)
        (up_dir / "nginx.conf").write_text(upstream_conf(up_dir, upstream_port))
        upstream = Proc("upstream", taskset(0 if pin else None) + [
            nginx, "-p", str(up_dir), "-e", str(up_dir / "error.log"), "-c", str(up_dir / "nginx.conf")],
            upstream_port, up_dir / "output.log", probe=probe_http(upstream_port))
        upstream.start()
        upstream.wait_ready()
        lua = tmp / "done.lua"
        lua.write_text(WRK_DONE_LUA)
        cdir = None
        if "cffi" in args.names:
            cdir = tmp / "cffi-module"
            build_c_filter(cdir, env)

        for name in args.names:
            d = tmp / name
            d.mkdir()
            port, admin = next(ports), next(ports)
            cfg = d / "fastproxy.yaml"
            cfg.write_text(proxy_yaml(name, port, upstream_port, admin))
            argv = taskset(1 if pin else None) + [sys.executable, str(HERE / "filter_bench_proxy.py"), str(cfg)]
            if cdir is not None:
                argv += ["--c-module-dir", str(cdir)]
            procs.append(Proc(name, argv, port, d / "output.log", env=env, probe=probe_http(port)))
        for p in procs:
            p.start()
        targets = []
        for p in procs:
            try:
                p.wait_ready()
                smoke(p.name, p.port)
                targets.append(p)
            except BenchError as e:
                failed[p.name] = f"{e}\n{p.log_tail()}"
                print(f"!! {p.name}: {failed[p.name]}", file=sys.stderr)
                p.stop()
        for p in targets:
            if args.warmup:
                run_wrk(wrk, lua, p.port, wl, args.warmup, args.threads, pin)

        def one_run(p: Proc) -> dict:
            if args.idle_wait > 0:
                wait_for_quiet(args.idle_wait, args.idle_threshold)
            snap0 = proc_snapshot()
            us0 = p.user_sys_seconds()
            res = run_wrk(wrk, lua, p.port, wl, args.seconds, args.threads, pin)
            us1 = p.user_sys_seconds()
            foreign = foreign_cpu_seconds(snap0, proc_snapshot())
            cpu = (us1[0] + us1[1]) - (us0[0] + us0[1])
            res.pop("wrk_output", None) if not res["error_count"] else None
            res.update(variant=p.name, cpu_s=cpu, cpu_user_s=us1[0] - us0[0],
                       cpu_s_per_100k=cpu * 1e5 / res["requests"] if res["requests"] else None,
                       foreign_cpu_s=foreign, noisy=foreign > args.noise_limit * res["seconds"])
            return res

        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for p in order:
                if p.name in failed:
                    continue
                if p.popen.poll() is not None:
                    failed[p.name] = f"exited (code {p.popen.returncode}):\n{p.log_tail()}"
                    continue
                res = one_run(p)
                if res["noisy"]:
                    again = one_run(p)
                    res = again if again["foreign_cpu_s"] < res["foreign_cpu_s"] else res
                res["round"] = rnd + 1
                runs.append(res)
                print(f"round {rnd + 1} {LABELS[p.name]:<24}{res['rps']:>9.0f} req/s"
                      f"  p99 {res['p99_ms']:.2f} ms  proxy cpu {res['cpu_s']:.2f}s"
                      f" ({res['cpu_s_per_100k']:.3f}s/100k)  other procs {res['foreign_cpu_s']:.2f}s"
                      + (f"  ERRORS {res['errors'] or res['non_2xx']}" if res["error_count"] else "")
                      + ("  NOISY" if res["noisy"] else ""), file=sys.stderr)
    finally:
        stop_all(procs + [upstream], tmp, args.keep_tmp, "configs and logs")

    summary = summarize(runs, [n for n in args.names if n not in failed])
    gs = goals(summary)
    print()
    print(format_table(summary, failed))
    print()
    for g in gs:
        v = "n/a" if g["value"] is None else f"{g['value']:.2f}"
        print(f"{g['goal']:<44} {v:>6}  {'' if g['met'] is None else ('MET' if g['met'] else 'MISSED')}")
    result = {"meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                       "kernel": platform.release(), "cpus": os.cpu_count(), "pinned": pin,
                       "rounds": args.rounds, "seconds": args.seconds, "connections": args.connections,
                       "threads": args.threads, "python": sys.version.split()[0]},
              "summary": summary, "goals": gs, "failed": failed, "runs": runs}
    write_json(args.json, result)
    return 0 if summary else 1


if __name__ == "__main__":
    run_main(main)
