"""Test and benchmark hooks. Not API, and not in the wheel (pyproject.toml excludes this package).

The compiled hooks drive the core's C functions directly (the HTTP/1.1 codec, the route
selection, the buffer chain), so they are compiled into ``fastproxy._core``; there they carry
underscore names and nothing in the package calls them. This module gives them their names
for the tests and benchmarks, next to the pure-Python twin of the codec
(:mod:`fastproxy._testing.http1_reference`), which offers the same API so that a test can run
over both implementations.
"""
from __future__ import annotations

from .. import _core

# The compiled HTTP/1.1 codec, the same API as http1_reference.
H1TestParser = _core._H1TestParser
HTTP1_ERRORS = _core.HTTP1_ERRORS
http1_request_head = _core._http1_request_head
http1_response_head = _core._http1_response_head
http1_chunk = _core._http1_chunk
http1_last_chunk = _core._http1_last_chunk

# Micro-benchmark loops, each timed in C without the GIL.
http1_bench = _core._http1_bench        # (data, rounds, kind="request") -> (seconds, messages)
buffer_bench = _core._buffer_bench      # (op, chunk, rounds) -> (seconds, bytes)


def host_stat_blocks(proxy) -> int:
    """How many per-host stat blocks the proxy's engine keeps (one per upstream address
    still referred to)."""
    return _core._host_stat_blocks(proxy._engine)


def stat_blocks_alive() -> int:
    """How many stat blocks exist in the process (every engine, every kind)."""
    return _core._statblocks_alive()


def route_select_bench(table, method, path, host, headers=(), scheme="http", rounds=100000):
    """route_select `rounds` times without the GIL over a compiled RouteTableHandle.
    Returns (ns per call, matched)."""
    return table._bench_select(method, path, host, headers, scheme, rounds)


# The load balancer (core/upstream): xxHash64 as the rings are keyed with it, a host's
# health driven by hand, the host a hash picks.
xxhash64 = _core._xxhash64      # (data: bytes, seed=0) -> int
HOST_HEALTH_FLAGS = _core.HOST_HEALTH_FLAGS


def set_host_health(proxy, cluster: str, address: str, port: int, set=(), clear=()) -> int:
    """Set and clear health flags (names of HOST_HEALTH_FLAGS, e.g. "FAILED_ACTIVE_HC") of
    a cluster's host, then rebuild the cluster's host set (cluster_health_changed), as a
    health checker or outlier detection does. Returns the host's flags after."""
    bits = lambda names: sum(HOST_HEALTH_FLAGS[n] for n in names)
    return proxy._clusters[cluster].handle._set_health(address, port, bits(set), bits(clear))


def pick_hashed(proxy, cluster: str, h: int, attempt: int = 0):
    """(address, port) of the host a RING_HASH or MAGLEV cluster gives a request hashed to
    h now (None: no host)."""
    return proxy._clusters[cluster].handle._pick_hashed(h, attempt)


def pick(engine_cluster, n: int, avoid=(), max_attempts: int = 0, hash=None, attempt: int = 0, worker: int = 0):
    """n picks by the core's cluster_pick on a ClusterHandle of an engine that is not
    started: [(address, port) or None]. avoid: [(address, port)] (previous_hosts),
    max_attempts: host_selection_max_attempts, hash: the request's hash."""
    return engine_cluster._pick(n, list(avoid), max_attempts, hash, attempt, worker)


def lb_bench(proxy, cluster: str, kind: str, rounds: int):
    """(seconds per operation, checksum): `rounds` ring / maglev / least_request picks
    or host set rebuilds of a cluster, timed in C without the GIL."""
    return proxy._clusters[cluster].handle._bench(kind, rounds)


__all__ = ["H1TestParser", "HTTP1_ERRORS", "http1_request_head", "http1_response_head", "http1_chunk",
           "http1_last_chunk", "http1_bench", "buffer_bench", "route_select_bench", "host_stat_blocks", "stat_blocks_alive",
           "xxhash64", "HOST_HEALTH_FLAGS", "set_host_health", "pick_hashed", "pick", "lb_bench"]
