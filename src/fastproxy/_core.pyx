# cython: language_level=3
"""fastproxy's compiled core: the data plane.

One extension module; each included file has one job (see docs/architecture.md):
  core/buffer.pxi      slices and chains
  core/dispatcher.pxi  per-worker epoll loop, timers, cross-thread messages
  core/debug_log.pxi   rate-limited debug lines from the workers (write(2), no GIL)
  core/stats_table.pxi the stat blocks' indexes and names (generated from stats_table.py)
  core/stats.pxi       per-worker counters
  core/upstream.pxi    clusters, host sets, load balancing
  core/snapshot.pxi    listener config snapshots and their propagation
  core/listener.pxi    binding and accepting
  core/tcp_proxy.pxi   the L4 session: splice and buffered paths, half-close, resets
  core/pybridge.pxi    the only code on a worker that takes the GIL (Python filters)
  core/engine.pxi      the Python-facing control surface
  core/http1.pxi       HTTP/1.1 codec (strict, incremental) and serializer
  core/router.pxi      the route table: virtual hosts, matching, rewrites, redirects
  core/http_conn.pxi   the HTTP connection manager and the upstream connection pool
  core/http_filter.pxi HTTP filter chains (the fp_http_filter C ABI, header maps, iteration)
  core/http_pyfilter.pxi Python HTTP filters (the GIL is taken here and in pybridge only)
  core/http_pyfilter_async.pxi their `async def` hooks: the proxy's asyncio loop, batched handoffs
  core/http_stream.pxi stream timeouts, the trusted client address, CONNECT tunnels
  core/access_log.pxi  access logs and the stream facts they print
  core/bench.pxi       nogil loops for the micro-benchmarks (benchmarks/test_micro.py)
  core/filters_native.pxi native HTTP filters (fault, cors, local_ratelimit, ...; no GIL)
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memmove, memset, memchr, memcmp
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES

from fastproxy.core.includes.system cimport *

from fastproxy.filters import NetworkFilter

include "core/buffer.pxi"
include "core/dispatcher.pxi"
include "core/debug_log.pxi"
include "core/stats_table.pxi"
include "core/stats.pxi"
include "core/upstream.pxi"
include "core/snapshot.pxi"
include "core/listener.pxi"
include "core/tcp_proxy.pxi"
include "core/pybridge.pxi"
include "core/engine.pxi"
include "core/http1.pxi"
include "core/router.pxi"
include "core/http_conn.pxi"
include "core/http_filter.pxi"
include "core/http_pyfilter.pxi"
include "core/http_pyfilter_async.pxi"
include "core/http_stream.pxi"
include "core/http_hcm.pxi"
include "core/access_log.pxi"
include "core/bench.pxi"
include "core/filters_native.pxi"
