"""C HTTP filters through cffi: the example in examples/c_filter/ is compiled with cffi
(API mode, against fastproxy.get_include()) into a temp dir, registered, and run through
the proxy with real clients and a raw upstream that records every byte."""
from __future__ import annotations

import contextlib
import ctypes
import http.client
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastproxy import CHttpFilter, Cluster, ConfigError, Endpoint, FilterStatus, HttpFilter, Listener, Proxy
from fastproxy import PythonHttpFilter
from fastproxy.http.model import (HttpConnectionManager, Route, RouteAction, RouteConfiguration,
                                  RouteMatch, VirtualHost)

from conftest import envoy_bootstrap, free_port, http_listener, static_cluster
from http_upstreams import http_request as request

cffi = pytest.importorskip("cffi")

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "c_filter"
TYPED_STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"
C_TYPE_URL = "type.googleapis.com/fastproxy.c.HttpFilter"


@contextlib.contextmanager
def compiler_env():
    """The C compiler runs without an ASan run's LD_PRELOAD (make test-asan): under it,
    gcc's own leaks fail the compile."""
    saved = os.environ.pop("LD_PRELOAD", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["LD_PRELOAD"] = saved


@pytest.fixture(scope="module")
def c_filter(tmp_path_factory):
    """(ffi, lib) of the example filter, freshly built with cffi."""
    spec = importlib.util.spec_from_file_location("c_filter_build", EXAMPLE / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    with compiler_env():
        so = build.build(str(tmp_path_factory.mktemp("cffi")))
    mspec = importlib.util.spec_from_file_location(build.MODULE, so)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def table_address(ffi, lib) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, "header_filter_table")))


def c_spec(c_filter, config=None, name="c_header"):
    ffi, lib = c_filter
    return CHttpFilter(name, table=table_address(ffi, lib), config=config, keepalive=lib)


def make_proxy(filters, upstream_port, routes=None, concurrency=2):
    routes = routes or [Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=routes)])
    hcm = HttpConnectionManager("ingress", rc, http_filters=filters)
    return Proxy([Listener("http", hcm, port=0)], [Cluster("c", [Endpoint("127.0.0.1", upstream_port)])],
                 concurrency=concurrency)


def test_headers_both_ways_with_json_config(c_filter, upstream):
    config = {"header": "x-from-config", "value": "abc", "response_header": "x-resp"}
    with make_proxy([c_spec(c_filter, config)], upstream.port) as p:
        r, body = request(p.listener_address("http"), path="/h", headers={"X-From-Config": "client"})
        assert (r.status, body) == (200, b"GET /h 0")
        assert r.getheader("x-resp") == "abc"
        assert r.getheader("x-c-filter-response") is None
        headers = upstream.requests[-1][2]
        assert headers["x-from-config"] == ["abc"], "set() replaces the client's value"
        assert "x-c-filter" not in headers


def test_defaults_without_config_and_local_403(c_filter, upstream):
    with make_proxy([c_spec(c_filter)], upstream.port) as p:
        addr = p.listener_address("http")
        r, body = request(addr, "POST", "/blocked", body=b"x" * 5000, headers={"X-Block": "yes"})
        assert (r.status, body) == (403, b"blocked by the C filter\n")
        assert upstream.raw == b"", "a blocked request must not reach the upstream"
        # A keep-alive connection: a blocked request, then a normal one on the same socket.
        conn = http.client.HTTPConnection(*addr, timeout=5)
        conn.request("GET", "/a", headers={"x-block": ""})
        r = conn.getresponse()
        assert r.status == 403
        r.read()
        if not r.will_close:
            conn.request("GET", "/b")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"GET /b 0"
        conn.close()
        r, body = request(addr, path="/ok")
        assert (r.status, body) == (200, b"GET /ok 0")
        assert r.getheader("x-c-filter-response") == "1"
        assert all(path != "/blocked" and path != "/a" for _, path, _, _ in upstream.requests)
        assert upstream.requests[-1][2]["x-c-filter"] == ["1"]
        assert p.stats()["http.ingress.downstream_rq_4xx"] == 2


def test_block_status_from_config(c_filter, upstream):
    with make_proxy([c_spec(c_filter, {"block_header": "x-deny", "block_status": 451})], upstream.port) as p:
        addr = p.listener_address("http")
        r, _ = request(addr, headers={"x-block": "1"})
        assert r.status == 200, "block_header replaced x-block"
        r, _ = request(addr, headers={"x-deny": "1"})
        assert r.status == 451
        assert len(upstream.requests) == 1


@pytest.mark.parametrize("config, message", [
    ({"header": 5}, "expected a string for: header"),
    ({"nope": "x"}, "unknown key: nope"),
    ({"block_status": 99}, "expected an HTTP status"),
    ([1, 2], "config must be a JSON object"),
])
def test_bad_config_is_rejected_by_the_c_side(c_filter, config, message):
    with pytest.raises(ConfigError) as err:
        make_proxy([c_spec(c_filter, config)], 9).start()
    assert message in str(err.value)


def test_wrong_table_is_rejected(c_filter):
    ffi, lib = c_filter
    buf = ffi.new("char[256]")                 # zeros: abi_version 0
    with pytest.raises(ConfigError) as err:
        make_proxy([CHttpFilter("x", table=int(ffi.cast("uintptr_t", buf)), keepalive=buf)], 9).start()
    assert "ABI version" in str(err.value)


def test_per_route_config(c_filter, upstream):
    routes = [Route(RouteMatch(prefix="/special"), route=RouteAction(cluster="c"),
                    typed_per_filter_config={"c_header": {"value": "route", "block_header": "x-never"}}),
              Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    with make_proxy([c_spec(c_filter, {"value": "listener"})], upstream.port, routes) as p:
        addr = p.listener_address("http")
        r, _ = request(addr, path="/special", headers={"x-block": "1"})
        assert r.status == 200 and r.getheader("x-c-filter-response") == "route"
        assert upstream.requests[-1][2]["x-c-filter"] == ["route"]
        r, _ = request(addr, path="/plain")
        assert r.getheader("x-c-filter-response") == "listener"
        assert upstream.requests[-1][2]["x-c-filter"] == ["listener"]
        r, _ = request(addr, path="/plain", headers={"x-block": "1"})
        assert r.status == 403


class Tag(HttpFilter):
    def decode_headers(self, headers, end_stream):
        headers.add("x-order", "py:" + headers.get("x-c-filter", "-"))
        return FilterStatus.CONTINUE


def test_c_and_python_filters_in_one_chain(c_filter, upstream):
    with make_proxy([c_spec(c_filter), PythonHttpFilter("tag", Tag)], upstream.port) as p:
        request(p.listener_address("http"))
        assert upstream.requests[-1][2]["x-order"] == ["py:1"], "decoders run in configured order"


class DenyAdmin(HttpFilter):
    def decode_headers(self, headers, end_stream):
        if headers[":path"].startswith("/admin"):
            self.callbacks.send_local_reply(401, b"no admin")
            return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE


def test_local_replies_pass_through_the_c_encoder(c_filter, upstream):
    """As in Envoy, a local reply is encoded by every filter: the C filter's encode_headers
    tags its own 403, a later Python filter's 401 and the router's 404."""
    routes = [Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["app.test"], routes=routes)])
    hcm = HttpConnectionManager("ingress", rc, http_filters=[c_spec(c_filter), PythonHttpFilter("deny", DenyAdmin)])
    with Proxy([Listener("http", hcm, port=0)], [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])],
               concurrency=1) as p:
        addr = p.listener_address("http")
        r, body = request(addr, path="/x", headers={"x-block": "1", "Host": "app.test"})
        assert (r.status, body, r.getheader("x-c-filter-response")) == (403, b"blocked by the C filter\n", "1")
        r, body = request(addr, path="/admin", headers={"Host": "app.test"})
        assert (r.status, body, r.getheader("x-c-filter-response")) == (401, b"no admin", "1")
        r, body = request(addr, path="/x", headers={"Host": "elsewhere.test"})
        assert (r.status, r.getheader("x-c-filter-response")) == (404, "1")
        r, body = request(addr, path="/ok", headers={"Host": "app.test"})
        assert (r.status, body, r.getheader("x-c-filter-response")) == (200, b"GET /ok 0", "1")
        assert [req[1] for req in upstream.requests] == ["/ok"]


def envoy_config(proxy_port, upstream_port, filter_value, per_route=None):
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"}}
    special = {"match": {"prefix": "/special"}, "route": {"cluster": "c"}}
    if per_route is not None:
        special["typed_per_filter_config"] = {"cf": per_route}
    c_filter = {"name": "cf", "typed_config": {"@type": TYPED_STRUCT, "type_url": C_TYPE_URL, "value": filter_value}}
    return envoy_bootstrap([http_listener([special, route], name="http", stat_prefix="ingress", port=proxy_port,
                                          http_filters=[c_filter])],
                           [static_cluster("c", [upstream_port], type="STATIC")], admin=False)


def test_envoy_typed_struct_with_per_route_config(c_filter, upstream):
    ffi, lib = c_filter
    Proxy.register_c_filter("example_c_header", ffi.addressof(lib, "header_filter_table"), lib)
    per_route = {"@type": TYPED_STRUCT, "type_url": C_TYPE_URL, "value": {"value": "special"}}
    cfg = envoy_config(free_port(), upstream.port,
                       {"filter": "example_c_header", "config": {"header": "x-yaml", "value": "yes"}}, per_route)
    with Proxy.from_envoy(cfg, concurrency=1) as p:
        addr = p.listener_address("http")
        r, _ = request(addr, path="/x")
        assert r.getheader("x-c-filter-response") == "yes"
        assert upstream.requests[-1][2]["x-yaml"] == ["yes"]
        r, _ = request(addr, path="/special/1")
        assert upstream.requests[-1][2]["x-c-filter"] == ["special"], "the route's config replaces the filter's"
        r, _ = request(addr, headers={"x-block": "1"})
        assert r.status == 403
        assert len(upstream.requests) == 2


def test_envoy_typed_struct_comes_back_from_the_config_dump(c_filter):
    """The writer of admin /config_dump gives a C filter, and its per-route config, as the
    TypedStruct the loader reads back as the same model."""
    import json
    from fastproxy.config import load_envoy
    from fastproxy.config.dump import bootstrap_json
    ffi, lib = c_filter
    Proxy.register_c_filter("example_c_header", ffi.addressof(lib, "header_filter_table"), lib)
    per_route = {"@type": TYPED_STRUCT, "type_url": C_TYPE_URL, "value": {"value": "special"}}
    boot = load_envoy(envoy_config(0, 9999, {"filter": "example_c_header", "config": {"header": "x-yaml"}},
                                   per_route))
    written = json.loads(json.dumps(bootstrap_json(boot)))
    [entry, _router] = written["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"]
    assert entry["typed_config"]["value"] == {"filter": "example_c_header", "config": {"header": "x-yaml"}}
    assert load_envoy(written) == boot


def test_envoy_config_errors(c_filter):
    ffi, lib = c_filter
    Proxy.register_c_filter("example_c_header", ffi.addressof(lib, "header_filter_table"), lib)
    with pytest.raises(ConfigError) as err:
        Proxy.from_envoy(envoy_config(free_port(), 9, {"filter": "not_registered"}))
    assert "no C filter registered as 'not_registered'" in str(err.value)
    python_route = {"@type": TYPED_STRUCT, "type_url": "type.googleapis.com/fastproxy.python.HttpFilter",
                    "value": {}}
    with pytest.raises(ConfigError) as err:
        Proxy.from_envoy(envoy_config(free_port(), 9, {"filter": "example_c_header"}, python_route))
    assert "fastproxy.c.HttpFilter" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Proxy.from_envoy(envoy_config(free_port(), 9, {"filter": "example_c_header", "bogus": 1}))
    assert "bogus" in str(err.value)


# ---------------------------------------------------------------- no GIL on the data path

# Upstream and client are separate processes, so nothing on the data path but the proxy
# lives in this interpreter.
UPSTREAM_SCRIPT = r"""
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
def serve(c):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        head, buf = buf.split(b"\r\n\r\n", 1)
        body = b"filtered" if b"\r\nx-c-filter: 1" in head.lower() else b"plain"
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Requests on one keep-alive connection until stdin closes; then prints the completion
# times (CLOCK_MONOTONIC, the same clock in every process) of the good responses.
CLIENT_SCRIPT = r"""
import json, select, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
done, bad, buf, ready = [], 0, b"", False
while not select.select([sys.stdin], [], [], 0)[0]:
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    while True:
        if b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= n:
                break
        d = s.recv(65536)
        if not d:
            raise SystemExit("connection closed")
        buf += d
    body, buf = rest[:n], rest[n:]
    if b"x-c-filter-response: 1" in head.lower() and body == b"filtered":
        done.append(time.monotonic())
    else:
        bad += 1
    if not ready:
        print("ready", flush=True)
        ready = True
print(json.dumps({"done": done, "bad": bad}), flush=True)
"""


class PyPassThrough(HttpFilter):
    """Needs the GIL on every request (the control)."""
    def decode_headers(self, headers, end_stream):
        return FilterStatus.CONTINUE

    def encode_headers(self, headers, end_stream):
        return FilterStatus.CONTINUE


def completions_while_gil_held(proxy_addr, hold_us=600_000):
    """How many requests finished while this thread held the GIL for hold_us, and how
    many finished in total."""
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(proxy_addr[1])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "ready"
        usleep = ctypes.PyDLL(None).usleep         # a PyDLL call keeps the GIL while it runs
        usleep.argtypes = [ctypes.c_uint]
        t0 = time.monotonic()
        usleep(hold_us)
        t1 = time.monotonic()
        out, _ = client.communicate("stop\n", timeout=20)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    res = json.loads(out)
    assert res["bad"] == 0
    return sum(1 for t in res["done"] if t0 < t < t1), len(res["done"])


def test_c_filter_runs_without_the_gil(c_filter):
    up = subprocess.Popen([sys.executable, "-c", UPSTREAM_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        port = int(up.stdout.readline())
        with make_proxy([c_spec(c_filter)], port, concurrency=1) as p:
            during, total = completions_while_gil_held(p.listener_address("http"))
            # Hundreds complete in 0.6 s on any machine; one is enough to prove the point,
            # a few dozen rule out a request that merely finished around t0.
            assert during >= 20, (during, total)
        # The control: with a Python filter in the chain the same harness sees (almost) none.
        with make_proxy([c_spec(c_filter), PythonHttpFilter("py", PyPassThrough)], port, concurrency=1) as p:
            during, total = completions_while_gil_held(p.listener_address("http"))
            assert during <= 1 and total > 0, (during, total)
    finally:
        up.kill()
        up.wait()


# A C filter whose create fails (returns NULL) for every stream: a deny-all filter that
# cannot be built must fail the stream closed (500), not let it through.
NULL_CREATE_SRC = r"""
#include <stddef.h>
#include "fastproxy_filter.h"

static void *create(void *config, fp_stream *s, const fp_api *api)
{
    (void)config; (void)s; (void)api;
    return NULL;                            /* e.g. out of memory */
}

static int decode_headers(void *self, fp_headers *h, int end_stream)
{
    (void)self; (void)h; (void)end_stream;
    return FP_STOP_ITERATION;               /* never called: no instance */
}

fp_http_filter null_create_table = {
    .abi_version = FP_FILTER_ABI_VERSION,
    .create = create,
    .decode_headers = decode_headers,
};

/* No create at all (no per-stream state): its hooks still run, with the config as self. */
int no_create_calls;

static int count_headers(void *self, fp_headers *h, int end_stream)
{
    (void)self; (void)h; (void)end_stream;
    no_create_calls++;
    return FP_CONTINUE;
}

fp_http_filter no_create_table = {
    .abi_version = FP_FILTER_ABI_VERSION,
    .decode_headers = count_headers,
};
"""


@pytest.fixture(scope="module")
def null_create_filter(tmp_path_factory):
    import fastproxy
    ffi = cffi.FFI()
    ffi.cdef("typedef struct fp_http_filter { uint32_t abi_version; ...; } fp_http_filter;\n"
             "extern fp_http_filter null_create_table;\n"
             "extern fp_http_filter no_create_table;\n"
             "extern int no_create_calls;")
    ffi.set_source("_c_null_create", NULL_CREATE_SRC, include_dirs=[fastproxy.get_include()])
    with compiler_env():
        so = ffi.compile(tmpdir=str(tmp_path_factory.mktemp("cffi_null")))
    mspec = importlib.util.spec_from_file_location("_c_null_create", so)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def test_a_c_filter_whose_create_fails_fails_the_stream_closed(c_filter, null_create_filter, upstream, caplog):
    ffi, lib = null_create_filter
    broken = CHttpFilter("deny", table=int(ffi.cast("uintptr_t", ffi.addressof(lib, "null_create_table"))),
                         keepalive=lib)
    # the example filter after it: its encoder tags the 500
    with make_proxy([broken, c_spec(c_filter)], upstream.port) as p:
        for _ in range(2):
            r, body = request(p.listener_address("http"), path="/x")
            assert r.status == 500
            assert r.getheader("x-c-filter-response") == "1"
        assert p.stats()["http.ingress.python_filter_error"] == 2
        assert p.stats()["cluster.c.upstream_cx_total"] == 0
    assert upstream.raw == b""
    assert any("deny could not be created" in rec.getMessage() for rec in caplog.records)


def test_a_c_filter_without_create_still_runs(null_create_filter, upstream):
    """A table without create has no per-stream state; its hooks run all the same (they
    used to be skipped, as for a stream the filter declined)."""
    ffi, lib = null_create_filter
    spec = CHttpFilter("count", table=int(ffi.cast("uintptr_t", ffi.addressof(lib, "no_create_table"))),
                       keepalive=lib)
    before = lib.no_create_calls
    with make_proxy([spec], upstream.port) as p:
        for _ in range(3):
            r, body = request(p.listener_address("http"), path="/n")
            assert r.status == 200
    assert lib.no_create_calls - before == 3


def test_a_c_filter_after_a_delaying_filter_encodes_the_routers_reply(c_filter, upstream):
    """The fault filter delays the request; its continuation runs the C filter's decoder,
    then the router answers (no route, a direct response): the reply passes the C
    filter's encoder and is written (it hung before)."""
    from fastproxy import NativeHttpFilter
    from fastproxy.http.native_filters import FAULT, FaultDelay, FractionalPercent, HTTPFault
    from fastproxy.http.model import DirectResponse
    fault = NativeHttpFilter("fault", FAULT, HTTPFault(delay=FaultDelay(0.02, FractionalPercent(100))))
    routes = [Route(RouteMatch(path="/direct"), direct_response=DirectResponse(200, b"d")),
              Route(RouteMatch(path="/up"), route=RouteAction(cluster="c"))]
    with make_proxy([fault, c_spec(c_filter)], upstream.port, routes=routes) as p:
        addr = p.listener_address("http")
        for path, status, body in (("/nothing", 404, b""), ("/direct", 200, b"d"), ("/up", 200, b"GET /up 0")):
            r, data = request(addr, path=path, timeout=5)
            assert (r.status, data) == (status, body), path
            assert r.getheader("x-c-filter-response") == "1", path
    assert [r[1] for r in upstream.requests] == ["/up"]
    assert upstream.requests[0][2]["x-c-filter"] == ["1"]
