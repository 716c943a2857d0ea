"""xDS push benchmark: fastproxy and Envoy 1.40 on the same ADS bootstrap, driven by the
tests' control plane (tests/xds_control_plane.py, a grpcio ADS server), one after the other
on the same machine.

    python benchmarks/xds_bench.py [--clusters 1000] [--endpoints 10] [--vhosts 1000]
                                   [--rounds 3] [--only fastproxy,envoy] [--json FILE]
    python benchmarks/xds_bench.py --churn [--churn-seconds 20] [--churn-interval 0.1]

Push times (see one_round): a CDS push of `--clusters` EDS clusters whose
`--endpoints`-endpoint assignments come by EDS (1000 x 10: the issue's 10,000 endpoints),
and an RDS push of `--vhosts` virtual hosts, each timed from the response leaving the
control plane (handed to grpc) to the ACK and to the first request served on the new
configuration; then the proxy's RSS (VmRSS; fastproxy's includes its Python runtime).
Medians over the rounds; the proxy restarts for each round, the order alternates.

--churn: requests/s (wrk, pinned apart from the proxy) for `--churn-seconds` without pushes,
then with one push every `--churn-interval` (EDS, RDS, CDS, LDS changes in turn:
tests/xds/push_mix.py); the ratio and the errors of each.
"""
from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "xds"), str(HERE)]

from benchlib import fastproxy_env, find_envoy, taskset  # noqa: E402
from conftest import static_cluster  # noqa: E402
from http_upstreams import RawHttpUpstream  # noqa: E402
import xds_control_plane as xcp  # noqa: E402
import push_mix  # noqa: E402
from test_ads_reference_envoy import ads_bootstrap, web  # noqa: E402


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def listener_port_from_admin(admin_file: Path, timeout=20.0) -> tuple:
    import urllib.request
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = admin_file.read_text().strip() if admin_file.exists() else ""
        if text:
            host, port = text.rsplit(":", 1)
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/listeners?format=json", timeout=2) as r:
                    st = json.loads(r.read()).get("listener_statuses", [])
                if st:
                    sa = st[0]["local_address"]["socket_address"]
                    if sa.get("port_value"):
                        return sa["address"], sa["port_value"]
            except OSError:
                pass
        time.sleep(0.01)
    raise RuntimeError("no listener address from the admin")


def start(kind: str, text: str, tmp: Path, pin=None):
    cfg = tmp / "bootstrap.yaml"
    cfg.write_text(text)
    admin_file = tmp / "admin.txt"
    if kind == "envoy":
        argv = taskset(pin) + [find_envoy(), "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                "--log-level", "critical", "--admin-address-path", str(admin_file)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc, listener_port_from_admin(admin_file)
    # fastproxy prints "admin listening on http://host:port/"; its /listeners?format=json is
    # Envoy's shape, so the discovered listener is found the same way.
    argv = taskset(pin) + [sys.executable, "-m", "fastproxy", "-c", str(cfg), "--concurrency", "1", "-l", "warning"]
    proc = subprocess.Popen(argv, env=fastproxy_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        m = re.search(r"admin listening on http://([\d.]+):(\d+)/", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()   # drain
            admin_file.write_text(f"{m.group(1)}:{m.group(2)}")
            return proc, listener_port_from_admin(admin_file)
    raise RuntimeError("fastproxy exited before its admin was up")


def status(addr, host: str, path: str = "/") -> int:
    c = http.client.HTTPConnection(*addr, timeout=2)
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        r.read()
        return r.status
    except OSError:
        return 0
    finally:
        c.close()


def eds_clusters(n: int) -> list:
    return [{"name": f"e{i}", "type": "EDS", "connect_timeout": "1s",
             "eds_cluster_config": {"eds_config": push_mix.ADS_SOURCE}} for i in range(n)]


def assignments(n: int, endpoints: int, port: int) -> list:
    # Every endpoint is the one test upstream (the addresses must answer for routing checks);
    # the proxy still builds n x endpoints hosts.
    return [{**static_cluster(f"e{i}", [port] * endpoints)["load_assignment"]} for i in range(n)]


def route_table(vhosts: list) -> dict:
    return {"name": "r", "virtual_hosts": vhosts}


def rds_listener() -> dict:
    listener = web("c0")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": "r", "config_source": push_mix.ADS_SOURCE}
    return listener


def big_routes(n: int) -> dict:
    vhosts = [{"name": f"v{i}", "domains": [f"h{i}.example"],
               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"e{i}"}}]} for i in range(n)]
    # The last one answers 201 itself: the mark that the new routes are in force.
    vhosts[-1]["routes"] = [{"match": {"prefix": "/"}, "direct_response": {"status": 201}}]
    return route_table(vhosts)


def one_round(kind: str, n_clusters: int, n_endpoints: int, n_vhosts: int, up_port: int) -> dict:
    """From a small configuration (static cluster c0, listener "web" whose routes come from
    RDS "r": everything to c0, and host "last.example" to cluster e<n-1>, not there yet):
      1. CDS push of n EDS clusters; their ClusterLoadAssignments (n x endpoints) are held
         ready, so the EDS response goes out as soon as the proxy subscribes: times to the
         CDS ACK, to the EDS ACK (from the EDS response), and to the first request that
         reaches e<n-1> (from the CDS response: the new clusters warm until their endpoints
         arrive);
      2. RDS push of ``n_vhosts`` virtual hosts: time to its ACK, and to the first request
         answered by its last virtual host;
      3. RSS of the proxy process."""
    with xcp.ControlPlane() as cp, tempfile.TemporaryDirectory() as d:
        first = {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c0"}}]}
        last = {"name": "last", "domains": ["last.example"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"e{n_clusters - 1}"}}]}
        cp.set(xcp.CLUSTER, [static_cluster("c0", [up_port])], "c1")
        cp.set(xcp.ENDPOINT, assignments(n_clusters, n_endpoints, up_port), "e1")
        cp.set(xcp.LISTENER, [rds_listener()], "l1")
        cp.set(xcp.ROUTE, [route_table([last, first])], "r1")
        proc, addr = start(kind, ads_bootstrap(cp.port), Path(d))
        try:
            cp.wait_for(lambda rs: {r.type_url for r in rs if r.response_nonce} >= {xcp.CLUSTER, xcp.LISTENER, xcp.ROUTE},
                        timeout=30)
            while status(addr, "x.example") != 200:
                time.sleep(0.001)

            def sent(type_url, version):
                nonce = next(n for _, t, v, n in cp.responses if t == type_url and v == version)
                return cp.sent_at[nonce]

            def acked(type_url, version):
                rs = cp.wait_for(lambda rs: any(r.type_url == type_url and r.version_info == version
                                                and r.response_nonce for r in rs), timeout=120)
                ack = next(r for r in rs if r.type_url == type_url and r.version_info == version and r.response_nonce)
                assert not ack.nack, ack.error_detail
                return ack.at - cp.sent_at[ack.response_nonce]

            cp.set(xcp.CLUSTER, [static_cluster("c0", [up_port])] + eds_clusters(n_clusters), "c2")
            while status(addr, "last.example") != 200:
                time.sleep(0.001)
            cds_first = time.monotonic() - sent(xcp.CLUSTER, "c2")
            cds_ack = acked(xcp.CLUSTER, "c2")
            eds_ack = acked(xcp.ENDPOINT, "e1")
            cp.set(xcp.ROUTE, [big_routes(n_vhosts)], "r2")
            rds_ack = acked(xcp.ROUTE, "r2")
            while status(addr, f"h{n_vhosts - 1}.example") != 201:
                time.sleep(0.001)
            rds_first = time.monotonic() - sent(xcp.ROUTE, "r2")
            return {"cds_ack_ms": cds_ack * 1e3, "eds_ack_ms": eds_ack * 1e3, "cds_first_request_ms": cds_first * 1e3,
                    "rds_ack_ms": rds_ack * 1e3, "rds_first_request_ms": rds_first * 1e3,
                    "rss_mb": rss_kb(proc.pid) / 1024}
        finally:
            proc.kill()
            proc.wait()


# --- requests/s while the control plane pushes -------------------------------------------

def wrk(addr, seconds: float, connections: int, cpu) -> dict:
    out = subprocess.run(taskset(cpu) + ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
                                         f"http://{addr[0]}:{addr[1]}/small"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"rps": rps, "errors": errors, "raw": out}


def churn_round(kind: str, up_port: int, alt_port: int, seconds: float, interval: float, connections: int) -> dict:
    """wrk for ``seconds`` without pushes, then for ``seconds`` with one push every
    ``interval``: requests/s of each and the errors (non-2xx and socket errors) of each."""
    with xcp.ControlPlane() as cp, tempfile.TemporaryDirectory() as d:
        versions = iter(range(1, 1 << 30))

        def push(step: int) -> None:
            for type_url, res in push_mix.resources(step, up_port, alt_port).items():
                cp.set(type_url, res, f"v{next(versions)}")

        push(0)
        proc, addr = start(kind, ads_bootstrap(cp.port), Path(d), pin=0)
        try:
            while status(addr, "x", "/small") != 200:
                time.sleep(0.01)
            quiet = wrk(addr, seconds, connections, 1)
            stop = threading.Event()
            pushes = [0]

            def pusher():
                step = 0
                while not stop.wait(interval):
                    step += 1
                    for type_url, res in push_mix.changed(step, up_port, alt_port).items():
                        cp.set(type_url, res, f"v{next(versions)}")
                    pushes[0] = step
            t = threading.Thread(target=pusher, daemon=True)
            t.start()
            try:
                busy = wrk(addr, seconds, connections, 1)
            finally:
                stop.set()
                t.join()
            return {"rps_quiet": quiet["rps"], "rps_pushing": busy["rps"], "ratio": busy["rps"] / quiet["rps"],
                    "errors_quiet": quiet["errors"], "errors_pushing": busy["errors"], "pushes": pushes[0]}
        finally:
            proc.kill()
            proc.wait()


def nginx_upstreams(tmp: Path, n: int) -> tuple:
    """n nginx origins (http_bench.py's: /small is 13 bytes), pinned beside wrk on CPU 1, so
    that the origin is never what limits the rate; returns (Procs, ports)."""
    from benchlib import Proc, find_binary, reserve_ports
    from http_bench import upstream_conf
    nginx = find_binary("nginx")
    if nginx is None:
        raise SystemExit("nginx not found (benchmarks/install.sh installs it)")
    procs, ports = [], reserve_ports(n)
    for i, port in enumerate(ports):
        d = tmp / f"up{i}"
        (d / "www").mkdir(parents=True)
        (d / "nginx.conf").write_text(upstream_conf(d, d / "www", port))
        p = Proc(f"upstream{i}", taskset(1) + [nginx, "-p", str(d), "-e", str(d / "error.log"),
                                               "-c", str(d / "nginx.conf")], port, d / "log")
        p.start()
        p.wait_ready(10)
        procs.append(p)
    return procs, ports


def churn_main(args, kinds) -> int:
    results: dict = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as d:
        procs, (up, alt) = nginx_upstreams(Path(d), 2)
        try:
            for r in range(args.rounds):
                for kind in (kinds if r % 2 == 0 else list(reversed(kinds))):
                    res = churn_round(kind, up, alt, args.churn_seconds, args.churn_interval, args.connections)
                    results[kind].append(res)
                    print(f"round {r + 1} {kind:9s} " + "  ".join(
                        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()), flush=True)
        finally:
            for p in procs:
                p.stop()
    summary = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items() if v}
    print()
    print(f"{'proxy':10s} {'rq/s quiet':>11s} {'rq/s pushing':>13s} {'ratio':>6s} {'errors':>7s} {'pushes':>7s}")
    for k, s in summary.items():
        print(f"{k:10s} {s['rps_quiet']:11.0f} {s['rps_pushing']:13.0f} {s['ratio']:6.2f} "
              f"{s['errors_quiet'] + s['errors_pushing']:7.0f} {s['pushes']:7.0f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": results, "summary": summary}, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--vhosts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="fastproxy,envoy")
    ap.add_argument("--json", default=None)
    ap.add_argument("--churn", action="store_true",
                    help="measure requests/s during a push every --churn-interval instead of push times")
    ap.add_argument("--churn-seconds", type=float, default=20.0)
    ap.add_argument("--churn-interval", type=float, default=0.1)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args(argv)
    kinds = [k for k in args.only.split(",") if k]
    if "envoy" in kinds and find_envoy() is None:
        print("envoy not found: measuring fastproxy only")
        kinds.remove("envoy")
    if args.json is None:
        args.json = str(HERE / "results" / ("xds_churn.json" if args.churn else "xds_bench.json"))
    if args.churn:
        return churn_main(args, kinds)
    up = RawHttpUpstream(lambda m, p, h, b: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    results: dict = {k: [] for k in kinds}
    try:
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else list(reversed(kinds))):     # alternate the order
                res = one_round(kind, args.clusters, args.endpoints, args.vhosts, up.port)
                results[kind].append(res)
                print(f"round {r + 1} {kind:9s} " + "  ".join(f"{k} {v:8.1f}" for k, v in res.items()), flush=True)
    finally:
        up.close()
    summary = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items() if v}
    print()
    cols = ("cds_ack_ms", "eds_ack_ms", "cds_first_request_ms", "rds_ack_ms", "rds_first_request_ms", "rss_mb")
    print(f"{'proxy':10s} " + " ".join(f"{c:>20s}" for c in cols))
    for k, s in summary.items():
        print(f"{k:10s} " + " ".join(f"{s[c]:20.1f}" for c in cols))
    if "envoy" in summary and "fastproxy" in summary:
        f, e = summary["fastproxy"], summary["envoy"]
        print("fastproxy / envoy: " + "  ".join(f"{m} {f[m] / e[m]:.2f}x" for m in f))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": results, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
