"""How long Proxy.update() takes to swap a big host set (issue 13: EDS-sized clusters).

    PYTHONPATH=src python benchmarks/cluster_swap_bench.py [--endpoints N] [--rounds R]

One cluster of N endpoints behind an HTTP listener; each round replaces all of them but
one (the real upstream, which stays) and times update(). Then one request checks that the
host that stayed is served on the upstream connection it had before the swaps.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import fastproxy  # noqa: E402
from fastproxy.http import (HttpConnectionManager, Route, RouteAction, RouteConfiguration,  # noqa: E402
                            RouteMatch, VirtualHost)
from http_upstreams import RawHttpUpstream  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    up = RawHttpUpstream()

    def cluster(net: int, real_at: int) -> fastproxy.Cluster:
        # N - 1 addresses nothing listens on; one worker's round robin never reaches them
        # below (the real upstream is where its cursor is).
        fake = [fastproxy.Endpoint(f"127.{net}.{i // 250}.{i % 250 + 1}", 80) for i in range(args.endpoints - 1)]
        return fastproxy.Cluster("big", fake[:real_at] + [fastproxy.Endpoint("127.0.0.1", up.port)] + fake[real_at:])

    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="big", timeout=0))])])
    p = fastproxy.Proxy([fastproxy.Listener("web", HttpConnectionManager("web", rc), port=0)],
                        [cluster(1, 0)], concurrency=1)
    p.start()
    try:
        import http.client
        conn = http.client.HTTPConnection(*p.listener_address("web"))
        conn.request("GET", "/")
        conn.getresponse().read()           # round robin: host 0 now, host 1 next
        times = []
        for r in range(args.rounds):
            start = time.perf_counter()
            p.update(clusters=[cluster(2 + r % 2, 1)])
            times.append(time.perf_counter() - start)
        conn.request("GET", "/")
        status = conn.getresponse().status
        print(f"update() swapping {args.endpoints - 1} of {args.endpoints} endpoints: "
              f"median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
              f"over {args.rounds} rounds")
        print(f"the host that stayed: status {status}, upstream connections {up.connections} (1: kept)")
    finally:
        p.stop(drain_timeout=0.2)
        up.close()


if __name__ == "__main__":
    main()
