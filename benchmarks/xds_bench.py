"""xDS push benchmark: fastproxy and Envoy 1.40 on the same ADS bootstrap, driven by the
tests' control plane (tests/xds_control_plane.py, a grpcio ADS server), one after the other
on the same machine.

    python benchmarks/xds_bench.py [--clusters 1000] [--endpoints 10] [--vhosts 1000]
                                   [--rounds 3] [--only fastproxy,envoy] [--eds] [--json FILE]

Per proxy and round, from a small configuration in force:
  * CDS push: `--clusters` clusters with `--endpoints` endpoints each (inline load
    assignments; 1000 x 10 = the issue's 10,000 endpoints), timed from the response leaving
    the control plane (handed to grpc) to the ACK; with `--eds` the clusters are of type
    EDS (but c0) and their endpoints come in one EDS response (ClusterLoadAssignments, over
    the same ADS stream), timed from that response to its ACK (eds_ack_ms);
  * LDS push: one listener whose route configuration has `--vhosts` virtual hosts, each
    routing to one of the pushed clusters, timed to the ACK and to the first request served
    on the new configuration (the last virtual host answers 201 itself; a request for its
    domain is sent every millisecond until one gets the 201);
  * RSS of the proxy process after both (VmRSS; fastproxy's includes its Python runtime).
Medians over the rounds; the proxy restarts for each round.
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

from benchlib import fastproxy_env, find_envoy  # noqa: E402
from conftest import static_cluster  # noqa: E402
from http_upstreams import RawHttpUpstream  # noqa: E402
import xds_control_plane as xcp  # noqa: E402
from test_ads_reference_envoy import ads_bootstrap, web  # noqa: E402


def clusters(n: int, endpoints: int, port: int) -> list:
    # Every endpoint is the one test upstream (the addresses must answer for routing checks);
    # the proxy still builds n x endpoints hosts.
    return [static_cluster(f"c{i}", [port] * endpoints) for i in range(n)]


def eds_clusters(n: int) -> list:
    return [{"name": f"c{i}", "type": "EDS", "connect_timeout": "1s",
             "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}} for i in range(n)]


def assignments(n: int, endpoints: int, port: int) -> list:
    return [static_cluster(f"c{i}", [port] * endpoints)["load_assignment"] for i in range(n)]


def big_listener(n: int) -> dict:
    vhosts = [{"name": f"v{i}", "domains": [f"h{i}.example"],
               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"c{i}"}}]} for i in range(n)]
    # The last one answers 201 itself: the mark that the new routes are in force.
    vhosts[-1]["routes"] = [{"match": {"prefix": "/"}, "direct_response": {"status": 201}}]
    listener = web("c0")
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"] = {"virtual_hosts": vhosts}
    return listener


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


def start(kind: str, text: str, tmp: Path):
    cfg = tmp / "bootstrap.yaml"
    cfg.write_text(text)
    admin_file = tmp / "admin.txt"
    if kind == "envoy":
        argv = [find_envoy(), "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                "--log-level", "critical", "--admin-address-path", str(admin_file)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc, listener_port_from_admin(admin_file)
    # fastproxy prints "admin listening on http://host:port/"; its /listeners?format=json is
    # Envoy's shape, so the discovered listener is found the same way.
    argv = [sys.executable, "-m", "fastproxy", "-c", str(cfg), "--concurrency", "1", "-l", "warning"]
    proc = subprocess.Popen(argv, env=fastproxy_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        m = re.search(r"admin listening on http://([\d.]+):(\d+)/", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()   # drain
            admin_file.write_text(f"{m.group(1)}:{m.group(2)}")
            return proc, listener_port_from_admin(admin_file)
    raise RuntimeError("fastproxy exited before its admin was up")


def status(addr, host: str) -> int:
    c = http.client.HTTPConnection(*addr, timeout=2)
    try:
        c.request("GET", "/", headers={"Host": host})
        r = c.getresponse()
        r.read()
        return r.status
    except OSError:
        return 0
    finally:
        c.close()


def one_round(kind: str, n_clusters: int, n_endpoints: int, n_vhosts: int, up_port: int, eds: bool = False) -> dict:
    with xcp.ControlPlane() as cp, tempfile.TemporaryDirectory() as d:
        cp.set(xcp.CLUSTER, [static_cluster("c0", [up_port])], "c1")
        cp.set(xcp.LISTENER, [web("c0")], "l1")
        proc, addr = start(kind, ads_bootstrap(cp.port), Path(d))
        try:
            cp.wait_for(lambda rs: sum(1 for r in rs if r.response_nonce) >= 2, timeout=30)

            def acked(version):
                rs = cp.wait_for(lambda rs: any(r.version_info == version and r.response_nonce for r in rs), timeout=120)
                ack = next(r for r in rs if r.version_info == version and r.response_nonce)
                assert not ack.nack, ack.error_detail
                return ack.at - cp.sent_at[ack.response_nonce]

            out: dict = {}
            if not eds:
                cp.set(xcp.CLUSTER, clusters(n_clusters, n_endpoints, up_port), "c2")
                out["cds_ack_ms"] = acked("c2") * 1e3
            else:
                # The assignments wait at the control plane; the EDS request the CDS push
                # makes gets them (SotW: every subscribed one in one response).
                cp.set(xcp.ENDPOINT, assignments(n_clusters, n_endpoints, up_port), "e2")
                cp.set(xcp.CLUSTER, [static_cluster("c0", [up_port])] + eds_clusters(n_clusters)[1:], "c2")
                out["cds_ack_ms"] = acked("c2") * 1e3

                def full(rs):           # the ACK of the EDS response naming every cluster
                    return [r for r in rs if r.type_url == xcp.ENDPOINT and r.version_info == "e2"
                            and r.response_nonce and len(r.resource_names) == n_clusters - 1]
                ack = cp.wait_for(full, timeout=120)
                ack = full(ack)[0]
                assert not ack.nack, ack.error_detail
                out["eds_ack_ms"] = (ack.at - cp.sent_at[ack.response_nonce]) * 1e3
            last = f"h{n_vhosts - 1}.example"
            assert status(addr, last) == 200         # the first listener's "*" virtual host
            cp.set(xcp.LISTENER, [big_listener(n_vhosts)], "l2")
            lds_ack = acked("l2")
            sent = cp.sent_at[next(n for _, t, v, n in cp.responses if v == "l2")]
            while status(addr, last) != 201:
                time.sleep(0.001)
            first = time.monotonic() - sent
            return {**out, "lds_ack_ms": lds_ack * 1e3,
                    "lds_first_request_ms": first * 1e3, "rss_mb": rss_kb(proc.pid) / 1024}
        finally:
            proc.kill()
            proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--vhosts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="fastproxy,envoy")
    ap.add_argument("--eds", action="store_true", help="the clusters' endpoints over EDS")
    ap.add_argument("--json", default=str(HERE / "results" / "xds_bench.json"))
    args = ap.parse_args(argv)
    kinds = [k for k in args.only.split(",") if k]
    if "envoy" in kinds and find_envoy() is None:
        print("envoy not found: measuring fastproxy only")
        kinds.remove("envoy")
    up = RawHttpUpstream(lambda m, p, h, b: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    results: dict = {k: [] for k in kinds}
    try:
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else list(reversed(kinds))):     # alternate the order
                res = one_round(kind, args.clusters, args.endpoints, args.vhosts, up.port, args.eds)
                results[kind].append(res)
                print(f"round {r + 1} {kind:9s} " + "  ".join(f"{k} {v:8.1f}" for k, v in res.items()), flush=True)
    finally:
        up.close()
    summary = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items() if v}
    print()
    for k, s in summary.items():
        print(f"{k:10s} " + "  ".join(f"{m} {v:.1f}" for m, v in s.items()))
    if "envoy" in summary and "fastproxy" in summary:
        f, e = summary["fastproxy"], summary["envoy"]
        print("fastproxy / envoy: " + "  ".join(f"{m} {f[m] / e[m]:.2f}x" for m in f))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": results, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
