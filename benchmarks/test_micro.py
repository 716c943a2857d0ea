"""pytest-benchmark micro-benchmarks of the data plane's building blocks (`make bench-micro`;
not part of `make test`):

  codec       the compiled HTTP/1.1 parser vs httptools (llhttp) on the same pipelined
              messages, in MB/s (extra_info) - fastproxy's loop runs in C without the GIL,
              httptools is driven from Python with no-op callbacks, as a Python user would
  router      route_select over 1,000 routes (one virtual host, matching route last;
              indexed prefixes, and the same routes with header matchers: the linear scan)
  buffers     chain append / move / drain, and readv/writev of a chain over a socketpair

Each benchmark calls a C loop that runs the operation many times and reports its own time,
so the figures are per operation, not per Python call; pytest-benchmark's table shows the
time of one loop call, extra_info the derived rate.
"""
from __future__ import annotations

import pathlib
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from fastproxy import _core, _testing  # noqa: E402
from fastproxy.http import (HeaderMatcher, Route, RouteAction, RouteConfiguration,  # noqa: E402
                            RouteMatch, VirtualHost)

httptools = pytest.importorskip("httptools")

# ---------------------------------------------------------------- codec

SMALL_GET = (b"GET /api/v1/users/12345?fields=name,email HTTP/1.1\r\nHost: api.example.com\r\n"
             b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n"
             b"Accept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\n"
             b"Accept-Language: en-US,en;q=0.9\r\nCookie: session=abcdef0123456789; theme=dark\r\n"
             b"X-Request-Id: 4bf92f35-77b3-4da6-a3ce-929d0e0e4736\r\n\r\n")
POST_4K = (b"POST /upload HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Length: 4096\r\n\r\n" + b"x" * 4096)
CHUNKED = (b"POST /stream HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"400\r\n" + b"y" * 1024 + b"\r\n") * 1 + b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n"
CASES = {"small_get": SMALL_GET * 100, "post_4k": POST_4K * 50, "chunked_2k": CHUNKED * 50}
ROUNDS = 200


class _Quiet:
    """httptools callbacks that do nothing (the parser still tokenizes everything)."""

    def on_header(self, name, value):
        pass

    def on_body(self, body):
        pass


def _llhttp_parse(data: bytes, rounds: int) -> None:
    for _ in range(rounds):
        p = httptools.HttpRequestParser(_Quiet())
        p.feed_data(data)


@pytest.mark.parametrize("case", list(CASES))
def test_codec_fastproxy(benchmark, case):
    data = CASES[case]
    seconds = []

    def run():
        t, _ = _testing.http1_bench(data, ROUNDS)
        seconds.append(t)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    best = min(seconds)
    benchmark.extra_info["MB/s"] = round(len(data) * ROUNDS / best / 1e6, 1)


@pytest.mark.parametrize("case", list(CASES))
def test_codec_httptools(benchmark, case):
    data = CASES[case]
    benchmark.pedantic(_llhttp_parse, args=(data, ROUNDS), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["MB/s"] = round(len(data) * ROUNDS / benchmark.stats.stats.min / 1e6, 1)


# ---------------------------------------------------------------- router

def _table(header_matchers: bool):
    routes = []
    for i in range(1000):
        m = RouteMatch(prefix=f"/service{i}/api")
        if header_matchers:
            m.headers = [HeaderMatcher("x-tenant")]
        routes.append(Route(m, route=RouteAction(cluster="c")))
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=routes)])
    return _core.compile_route_table(rc, {"c": 0}, 1)


@pytest.mark.parametrize("shape", ["indexed_1000", "linear_1000"])
def test_router_match_1000_routes(benchmark, shape):
    table = _table(shape == "linear_1000")
    headers = [(b"x-tenant", b"t1")]
    result = {}

    def run():
        result["ns"], result["ok"] = _testing.route_select_bench(table, b"GET", b"/service999/api/items?x=1", b"api.example.com",
                                                        headers, rounds=20000)

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    assert result["ok"], "the request must match (the last route)"
    benchmark.extra_info["ns per match"] = round(result["ns"], 1)


# ---------------------------------------------------------------- buffers

@pytest.mark.parametrize("op, chunk, rounds", [
    ("append", 512, 200_000),
    ("move", 16384, 200_000),
    ("drain", 4096, 200_000),
    ("readv_writev", 65536, 20_000),
])
def test_buffer_ops(benchmark, op, chunk, rounds):
    result = {}

    def run():
        result["t"], result["bytes"] = _testing.buffer_bench(op, chunk, rounds)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ns per op"] = round(result["t"] / rounds * 1e9, 1)
    benchmark.extra_info["MB/s"] = round(result["bytes"] / result["t"] / 1e6, 1)


# ---------------------------------------------------------------- load balancer

LB_HOSTS = 10_000


@pytest.fixture(scope="module")
def lb_proxies():
    """One started proxy per policy, each with a cluster of 10,000 endpoints (10.x.y.z:80,
    weights 1..4; nothing connects to them: the picks and rebuilds only read the host set)."""
    from fastproxy import Cluster, Endpoint, Proxy
    from fastproxy.upstream.lb import LeastRequestLbConfig
    eps = [Endpoint(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 80, weight=1 + i % 4) for i in range(LB_HOSTS)]
    flat = [Endpoint(e.address, 80) for e in eps]
    made = {}
    for policy in ("RING_HASH", "MAGLEV", "LEAST_REQUEST"):
        c = Cluster("c", endpoints=flat if policy == "LEAST_REQUEST" else eps, lb_policy=policy,
                    least_request_lb_config=LeastRequestLbConfig() if policy == "LEAST_REQUEST" else None)
        p = Proxy(listeners=[], clusters=[c], concurrency=1)
        p.start()
        made[policy] = p
    yield made
    for p in made.values():
        p.stop(drain_timeout=0.1)


@pytest.mark.parametrize("kind, policy, rounds", [
    ("ring", "RING_HASH", 1_000_000),
    ("maglev", "MAGLEV", 1_000_000),
    ("least_request", "LEAST_REQUEST", 1_000_000),
    ("rebuild", "RING_HASH", 3),
    ("rebuild", "MAGLEV", 3),
    ("rebuild", "LEAST_REQUEST", 3),
])
def test_lb(benchmark, lb_proxies, kind, policy, rounds):
    """Host picks (a random hash each for the ring and the Maglev table; the power of two
    choices for least request) over 10,000 hosts, and a rebuild of the 10,000-host set the
    workers pick from (what a health change costs: lists, schedules and the ring (1024+
    points scaled to the weights) or the 65537-slot table)."""
    result = {}

    def run():
        result["t"], _ = _testing.lb_bench(lb_proxies[policy], "c", kind, rounds)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    unit = "ms per rebuild" if kind == "rebuild" else "ns per pick"
    benchmark.extra_info[unit] = round(result["t"] * (1e3 if kind == "rebuild" else 1e9), 3 if kind == "rebuild" else 1)
