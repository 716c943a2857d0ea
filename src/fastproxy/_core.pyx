# cython: language_level=3
"""fastproxy's compiled core: the data plane.

One extension module; each included file has one job (see docs/architecture.md, "Source
layout"). Declaration files (decls.pxi) come before the implementation files of their unit.
  core/buffer.pxi      slices and chains
  core/dispatcher.pxi  per-worker epoll loop, timers, cross-thread messages, the hooks
                       (endpoint callbacks, end-of-turn/teardown) subsystems plug in by
  core/debug_log.pxi   rate-limited debug lines from the workers (write(2), no GIL)
  core/stats_table.pxi the stat blocks' indexes and names (generated from stats_table.py)
  core/stats.pxi       per-worker counters
  core/tls/decls.pxi   structs of TLS contexts, their per-worker providers, TLS connections
  core/tls/info.pxi    a TLS connection's facts (version, cipher, SNI, peer certificate)
  core/upstream/decls.pxi     structs of clusters, host sets, load balancer and HTTP pool
  core/upstream/load_balancer.pxi which host a new upstream connection goes to
  core/upstream/cluster.pxi   clusters, host sets, circuit breakers (and their Python handles)
  core/upstream/lb_tables.pxi the consistent-hash tables (RING_HASH's ring, MAGLEV's table)
  core/upstream/outlier.pxi   outlier detection: per-host results, ejections
  core/snapshot.pxi    listener config snapshots and their propagation
  core/listener.pxi    binding and accepting
  core/listener_filters.pxi several filter chains per listener: the tls_inspector's
                       ClientHello peek, the filter_chain_match table and its matcher
  core/tcp_proxy.pxi   the L4 session: splice and buffered paths, half-close, resets
  core/pybridge.pxi    Python network filters (with core/filters/python*.pxi, the only code
                       on a worker that takes the GIL)
  core/engine.pxi      the Python-facing control surface
  core/http/message_decls.pxi the codec-neutral message: heads, request/response facts, framing
  core/http/codec_h1_decls.pxi the HTTP/1.1 codec's contract, enums and structs
  core/http/message.pxi       operations on a head any codec produced
  core/http/codec_h1.pxi      HTTP/1.1 parser (strict, incremental)
  core/http/codec_h1_writer.pxi HTTP/1.1 serializer (heads, chunk lines)
  core/http/codec_h1_testing.pxi the codec's test and benchmark hooks (Python, GIL)
  core/http/codec_h2_decls.pxi the HTTP/2 codec's compiled options (H2Options), both sides'
  core/router/decls.pxi       the route table's structs and contract
  core/router/match.pxi       route matching, rewrites, redirects (workers, no GIL)
  core/router/matchers.pxi    string/header/query matchers: the routes' and the native filters'
  core/router/build.pxi       building route tables (main thread, GIL)
  core/http/decls.pxi         structs and enums of the connection manager, router filter,
                              upstream connection (UpConn); the codec seam (ServerCodecApi,
                              ClientCodecApi)
  core/http/hcm_worker.pxi    the connection manager's per-worker state and its worker hooks
  core/http/head_writer.pxi   heads being assembled, header operations, body framing announced
  core/http/codec_h1_framing.pxi HTTP/1.1 on the way out: heads into chains, the body writer
  core/http/codec_h1_server.pxi the HTTP/1.1 server codec: downstream bytes <-> stream events
  core/http/codec_h2.pxi      HTTP/2 (nghttp2) plumbing both sides share: options, SETTINGS,
                              field lists <-> nghttp2_nv, flood accounting
  core/http/codec_h2_server.pxi the HTTP/2 server codec, and the codec choice (codec_type,
                              ALPN, the client preface)
  core/http/codec_h1_client.pxi the HTTP/1.1 client codec: upstream bytes <-> response events
  core/http/codec_h2_client.pxi the HTTP/2 client codec: a multiplexed upstream connection, its
                              streams' handles, and the HTTP/2 half of the pool
  core/http/local_reply.pxi   responses the proxy writes itself; status counters
  core/http/grpc.pxi          gRPC answers for local replies to gRPC requests
  core/upstream/http_pool.pxi the upstream HTTP pool: its interface (acquire, release,
                              cancel, fail), connections, per-host idle lists, queues
  core/http/active_stream.pxi one request/response exchange (HStream)
  core/http/router_filter.pxi routing, the upstream request, the upstream response
  core/http/retry.pxi         retry and hedge policies, the router's retry state
  core/http/hash_policy.pxi   route hash policies: the request's hash for the pick
  core/http/shadow.pxi        request mirroring (shadow requests)
  core/upstream/health_checker.pxi active health checks (HTTP, TCP, gRPC), no GIL
  core/http/hcm_config.pxi    the connection manager's config (main thread, GIL)
  core/http/conn_manager.pxi  the downstream HTTP connection (HConn) and its loop
  core/http/filter_manager.pxi HTTP filter chains (the fp_http_filter C ABI, header maps, iteration)
  core/http/filter_abi.pxi    the fp_api callback table C and native filters call
  core/filters/python.pxi     Python HTTP filters (takes the GIL, as python_async and pybridge)
  core/filters/python_async.pxi their `async def` hooks: the proxy's asyncio loop, batched handoffs
  core/http/stream_extras.pxi stream timeouts, the trusted client address, x-envoy-*, CONNECT
  core/http/hcm_headers.pxi   Date/Server/Via/x-request-id, path normalization, Host ports
  core/access_log.pxi  access logs and the stream facts they print
  core/bench.pxi       nogil loops for the micro-benchmarks (benchmarks/test_micro.py)
  core/filters/native_decls.pxi  native HTTP filters' config and stream structs, atomics
  core/filters/native_common.pxi what they share on the workers (no GIL)
  core/filters/native_build.pxi  building their configs (main thread, GIL)
  core/filters/fault.pxi, header_mutation.pxi, local_ratelimit.pxi, health_check.pxi,
    buffer.pxi, cors.pxi        one native HTTP filter each: hooks (no GIL), make_config
  core/tls/context.pxi  TLS contexts: SSL_CTX from a spec (main thread), their handshake
                        callbacks (workers), rotation (TlsContextHandle.update), kTLS probe
  core/tls/transport.pxi one connection's TLS on its worker: the I/O seam (endp_read,
                        endp_write), handshake, close_notify (no GIL)
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memmove, memset, memchr, memcmp
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES

from fastproxy.core.includes.system cimport *
from fastproxy.core.includes.openssl cimport *
from fastproxy.core.includes.nghttp2 cimport *

from fastproxy.filters import NetworkFilter

include "core/buffer.pxi"
include "core/dispatcher.pxi"
include "core/debug_log.pxi"
include "core/stats_table.pxi"
include "core/stats.pxi"
include "core/tls/decls.pxi"
include "core/http/codec_h2_decls.pxi"     # (before upstream/decls.pxi: ClusterParams.h2)
include "core/upstream/decls.pxi"
include "core/upstream/load_balancer.pxi"
include "core/upstream/cluster.pxi"
include "core/upstream/lb_tables.pxi"
include "core/upstream/outlier.pxi"
include "core/snapshot.pxi"
include "core/listener.pxi"
include "core/listener_filters.pxi"
include "core/tcp_proxy.pxi"
include "core/pybridge.pxi"
include "core/engine.pxi"
include "core/tls/info.pxi"
include "core/http/message_decls.pxi"
include "core/http/codec_h1_decls.pxi"
include "core/http/message.pxi"
include "core/http/codec_h1.pxi"
include "core/http/codec_h1_writer.pxi"
include "core/http/codec_h1_testing.pxi"
include "core/router/decls.pxi"
include "core/router/match.pxi"
include "core/router/matchers.pxi"
include "core/router/build.pxi"
include "core/http/decls.pxi"
include "core/http/hcm_worker.pxi"
include "core/http/head_writer.pxi"
include "core/http/codec_h1_framing.pxi"
include "core/http/codec_h1_server.pxi"
include "core/http/codec_h2.pxi"
include "core/http/codec_h2_server.pxi"
include "core/http/codec_h1_client.pxi"
include "core/http/codec_h2_client.pxi"
include "core/http/local_reply.pxi"
include "core/http/grpc.pxi"
include "core/upstream/http_pool.pxi"
include "core/http/active_stream.pxi"
include "core/http/router_filter.pxi"
include "core/http/retry.pxi"
include "core/http/hash_policy.pxi"
include "core/http/shadow.pxi"
include "core/upstream/health_checker.pxi"
include "core/http/hcm_config.pxi"
include "core/http/conn_manager.pxi"
include "core/http/filter_manager.pxi"
include "core/http/filter_abi.pxi"
include "core/filters/python.pxi"
include "core/filters/python_async.pxi"
include "core/http/stream_extras.pxi"
include "core/http/hcm_headers.pxi"
include "core/access_log.pxi"
include "core/bench.pxi"
include "core/filters/native_decls.pxi"
include "core/filters/native_common.pxi"
include "core/filters/native_build.pxi"
include "core/filters/fault.pxi"
include "core/filters/header_mutation.pxi"
include "core/filters/local_ratelimit.pxi"
include "core/filters/health_check.pxi"
include "core/filters/buffer.pxi"
include "core/filters/cors.pxi"
include "core/tls/context.pxi"
include "core/tls/transport.pxi"
