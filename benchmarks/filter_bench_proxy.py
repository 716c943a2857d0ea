#!/usr/bin/env python3
"""The proxy process of filter_bench.py: registers the benchmark's filters (Python ones
below, the cffi example from examples/c_filter/), then serves an Envoy config that names
them, with one worker.

    python benchmarks/filter_bench_proxy.py CONFIG.yaml [--c-module-dir DIR]

DIR holds the built example (examples/c_filter/build.py --out DIR); without it the C filter
is not registered (a config that names it is then refused).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from fastproxy import log as fplog
from fastproxy import FilterStatus, HttpFilter, Proxy

CONTINUE = FilterStatus.CONTINUE


class AddRequestHeader(HttpFilter):
    """(b), (c): one header added on the request, nothing else overridden."""

    def __init__(self, config=None):
        super().__init__(config)
        self.name = self.config.get("header", "x-py-filter")

    def decode_headers(self, headers, end_stream):
        headers[self.name] = "1"
        return CONTINUE


class AsyncAddRequestHeader(HttpFilter):
    """(d): the same as an ``async def`` hook (no await: the header is added at once)."""

    async def decode_headers(self, headers, end_stream):
        headers["x-async-filter"] = "1"
        return CONTINUE


class AsyncSleep0AddRequestHeader(HttpFilter):
    """(d'): awaits asyncio.sleep(0) first (one trip round the loop), then adds it."""

    async def decode_headers(self, headers, end_stream):
        import asyncio
        await asyncio.sleep(0)
        headers["x-async-filter"] = "1"
        return CONTINUE


class ReqRespHeaders(HttpFilter):
    """(f): one request header and one response header, plain ``def`` hooks."""

    def decode_headers(self, headers, end_stream):
        headers["x-py-filter"] = "1"
        return CONTINUE

    def encode_headers(self, headers, end_stream):
        headers["x-py-response"] = "1"
        return CONTINUE


class AsyncReqRespHeaders(HttpFilter):
    """(g): (f) with ``async def`` hooks that do not await: each hook still goes to the
    asyncio loop and back, so this row is the cost of that handoff."""

    async def decode_headers(self, headers, end_stream):
        headers["x-async-filter"] = "1"
        return CONTINUE

    async def encode_headers(self, headers, end_stream):
        headers["x-async-response"] = "1"
        return CONTINUE


def load_c_filter(directory: str):
    so = next(Path(directory).glob("_c_header_filter*.so"))
    spec = importlib.util.spec_from_file_location("_c_header_filter", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--c-module-dir")
    ap.add_argument("-l", "--log-level", default="warning")
    args = ap.parse_args(argv)
    fplog.setup(args.log_level, None)
    Proxy.register_http_filter("bench_add_header", AddRequestHeader)
    Proxy.register_http_filter("bench_async_add_header", AsyncAddRequestHeader)
    Proxy.register_http_filter("bench_async_sleep0_add_header", AsyncSleep0AddRequestHeader)
    Proxy.register_http_filter("bench_req_resp_header", ReqRespHeaders)
    Proxy.register_http_filter("bench_async_req_resp_header", AsyncReqRespHeaders)
    if args.c_module_dir:
        ffi, lib = load_c_filter(args.c_module_dir)
        Proxy.register_c_filter("bench_c_header", ffi.addressof(lib, "header_filter_table"), lib)
    Proxy.from_envoy(Path(args.config).read_text(), concurrency=1).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
