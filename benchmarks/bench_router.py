"""Micro-benchmark of the compiled router: route_select over 1,000 routes.

    PYTHONPATH=src python -m pytest benchmarks/bench_router.py -q

Each benchmark round calls fastproxy._testing.route_select_bench(), which runs route_select()
SELECTS_PER_ROUND times in C without the GIL, so the Python call overhead is spread over
thousands of selections; "ns per match" (extra_info, and printed at the end) is the C loop's
own measurement of one route_select call: virtual host lookup plus route match.

Cases:
  vhosts_100x10      100 virtual hosts x 10 prefix routes, host with a port, a route in
                     the middle of its vhost (the common shape of a real config)
  one_vhost_last     1,000 prefix routes in one vhost, the matching route the last one: the
                     router's run index answers it in (key length) hash steps
  linear_last        the same 1,000 routes, each with a header matcher, so none can be
                     indexed: the one-by-one scan Envoy does, matching route last
  regex_last         100 safe_regex routes, the matching one last (glibc regexec per route)
  no_match           1,000 indexed prefix routes, nothing matches (the 404 path)
"""
from __future__ import annotations

import pathlib
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from fastproxy._core import compile_route_table  # noqa: E402
from fastproxy._testing import route_select_bench  # noqa: E402
from fastproxy.http import (  # noqa: E402
    HeaderMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    StringMatch,
    VirtualHost,
)

SELECTS_PER_ROUND = 20000
CLUSTERS = {f"c{i}": i for i in range(10)}
RESULTS: dict[str, float] = {}


def _route(i, **match):
    return Route(RouteMatch(**match), RouteAction(cluster=f"c{i % 10}"), name=f"r{i}")


def _table(vhosts):
    return compile_route_table(RouteConfiguration(name="bench", virtual_hosts=vhosts), CLUSTERS)


def _vhosts_100x10():
    return _table([VirtualHost(f"vh{v}", [f"svc{v}.example.com", f"*.svc{v}.example.com"],
                               routes=[_route(r, prefix=f"/api/v{r}/") for r in range(10)])
                   for v in range(100)])


def _one_vhost(with_header):
    headers = [HeaderMatcher("x-tenant", StringMatch("exact", "t1"))] if with_header else []
    routes = [_route(i, prefix=f"/service{i:04d}/", headers=list(headers)) for i in range(1000)]
    return _table([VirtualHost("all", ["*"], routes=routes)])


def _regex_last():
    routes = [_route(i, safe_regex=f"/item{i:03d}/[0-9]+") for i in range(100)]
    return _table([VirtualHost("all", ["*"], routes=routes)])


CASES = {
    "vhosts_100x10": (_vhosts_100x10, ("GET", "/api/v5/users/42?page=2", "svc57.example.com:8080",
                                       [("accept", "*/*"), ("user-agent", "bench")])),
    "one_vhost_last": (lambda: _one_vhost(False), ("GET", "/service0999/x", "h", [])),
    "linear_last": (lambda: _one_vhost(True),
                    ("GET", "/service0999/x", "h", [("accept", "*/*"), ("x-tenant", "t1")])),
    "regex_last": (_regex_last, ("GET", "/item099/12345", "h", [])),
    "no_match": (lambda: _one_vhost(False), ("GET", "/nothing/here", "h", [])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_route_select(benchmark, case):
    build, (method, path, host, headers) = CASES[case]
    table = build()
    expect_match = case != "no_match"
    ns, matched = route_select_bench(table, method, path, host, headers, rounds=1000)    # warm up
    assert matched == expect_match
    samples = []

    def run():
        ns, matched = route_select_bench(table, method, path, host, headers, rounds=SELECTS_PER_ROUND)
        samples.append(ns)
        return matched

    assert benchmark.pedantic(run, rounds=30, iterations=1, warmup_rounds=2) == expect_match
    best = min(samples)
    samples.sort()
    median = samples[len(samples) // 2]
    benchmark.extra_info["ns_per_match_median"] = round(median, 1)
    benchmark.extra_info["ns_per_match_best"] = round(best, 1)
    benchmark.extra_info["selects_per_round"] = SELECTS_PER_ROUND
    RESULTS[case] = median


def teardown_module():
    if RESULTS:
        print("\nroute_select, ns per match (median of 30 rounds x %d):" % SELECTS_PER_ROUND)
        for case, ns in RESULTS.items():
            print(f"  {case:16s} {ns:9.1f} ns")
