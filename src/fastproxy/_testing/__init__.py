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


__all__ = ["H1TestParser", "HTTP1_ERRORS", "http1_request_head", "http1_response_head", "http1_chunk",
           "http1_last_chunk", "http1_bench", "buffer_bench", "route_select_bench", "host_stat_blocks", "stat_blocks_alive"]
