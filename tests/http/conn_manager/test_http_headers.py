"""The request header mutations of the HTTP connection manager and the router, as Envoy 1.40
does them (checked against the real envoy binary; see docs/architecture.md): x-envoy-*
sanitizing of external requests, internal requests (internal_address_config),
x-envoy-internal / x-envoy-external-address, x-forwarded-for from a loopback peer,
x-request-id on edge requests, x-envoy-expected-rq-timeout-ms and the timeout headers the
router honours, x-envoy-original-path on rewrites, and x-envoy-upstream-service-time on
responses. Real sockets; a raw upstream records what it received."""
from __future__ import annotations

import http.client
import re
import socket
import threading

import pytest

from fastproxy import Cluster, Endpoint, FilterStatus, HttpFilter, Listener, Proxy, PythonHttpFilter
from fastproxy.errors import ConfigError
from fastproxy.model_http import (AccessLog, HeaderMatcher, HttpConnectionManager, InternalAddressConfig,
                                  Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost)

from conftest import wait_for
from http_upstreams import RawHttpUpstream, envoy_local_address, exchange

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"

# Every x-envoy-* request header Envoy acts on, plus one it does not (x-envoy-custom).
SENT = {
    "x-envoy-retry-on": "5xx", "x-envoy-retry-grpc-on": "cancelled", "x-envoy-max-retries": "3",
    "x-envoy-retriable-status-codes": "503", "x-envoy-retriable-header-names": "x-foo",
    "x-envoy-upstream-alt-stat-name": "alt", "x-envoy-upstream-rq-timeout-ms": "1234",
    "x-envoy-upstream-rq-per-try-timeout-ms": "100", "x-envoy-upstream-rq-timeout-alt-response": "204",
    "x-envoy-upstream-stream-duration-ms": "77", "x-envoy-hedge-on-per-try-timeout": "true",
    "x-envoy-expected-rq-timeout-ms": "999", "x-envoy-force-trace": "true", "x-envoy-ip-tags": "t",
    "x-envoy-original-url": "http://o/", "x-envoy-decorator-operation": "op",
    "x-envoy-downstream-service-cluster": "dsc", "x-envoy-downstream-service-node": "dsn",
    "x-envoy-original-path": "/orig", "x-envoy-original-host": "oh", "x-envoy-internal": "true",
    "x-envoy-external-address": "6.6.6.6", "x-envoy-custom": "keep", "x-request-id": "my-id",
}
# The router consumes these whatever the request is.
ROUTER = {"x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-retriable-status-codes",
          "x-envoy-retriable-header-names", "x-envoy-upstream-alt-stat-name", "x-envoy-upstream-rq-timeout-ms",
          "x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-upstream-rq-timeout-alt-response",
          "x-envoy-upstream-stream-duration-ms", "x-envoy-hedge-on-per-try-timeout"}
# cleanInternalHeaders removes these from requests that are not internal ...
EXTERNAL = ROUTER | {"x-envoy-expected-rq-timeout-ms", "x-envoy-force-trace", "x-envoy-ip-tags",
                     "x-envoy-original-url"}
# ... and these too from edge requests (use_remote_address).
EDGE = {"x-envoy-decorator-operation", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node",
        "x-envoy-original-path", "x-envoy-original-host"}


def make_proxy(upstream, routes=None, filters=(), clusters=None, **hcm_kw):
    routes = routes or [Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=routes)])
    hcm = HttpConnectionManager("ingress", rc, http_filters=list(filters), **hcm_kw)
    clusters = clusters or [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])]
    return Proxy([Listener("http", port=0, http=hcm)], clusters, concurrency=1)


def send(p, headers, path="/p", xff=None):
    """One GET with exactly these header lines (raw, so repeated names stay repeated)."""
    lines = [f"{k}: {v}" for k, v in headers.items()]
    lines.append("X-Envoy-Retry-On: again")               # another case of a name
    if xff is not None:
        lines.append(f"X-Forwarded-For: {xff}")
    req = f"GET {path} HTTP/1.1\r\nHost: h\r\n" + "\r\n".join(lines) + "\r\nConnection: close\r\n\r\n"
    out = exchange(p.listener_address("http"), req.encode(), timeout=5)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    return out


def received(upstream):
    """The x-envoy-*, x-request-id and x-forwarded-* headers of the last request upstream."""
    _, _, headers, _ = upstream.requests[-1]
    return {k: v for k, v in headers.items() if k.startswith(("x-envoy-", "x-request-id", "x-forwarded-"))}


def expect(drop, **changed):
    """SENT less `drop`, with `changed` (underscores for dashes) set; None removes."""
    out = {k: [v] for k, v in SENT.items() if k not in drop}
    for k, v in changed.items():
        k = k.replace("_", "-")
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v if isinstance(v, list) else [v]
    return out


# ---------------------------------------------------------------- external requests

def test_external_request_loses_envoy_control_headers(upstream):
    """use_remote_address false, no internal_address_config: nothing is internal (Envoy's
    default since 1.33), so cleanInternalHeaders runs; the request is not an edge one."""
    with make_proxy(upstream) as p:
        send(p, SENT)
    assert received(upstream) == expect(EXTERNAL | {"x-envoy-internal"}, x_forwarded_proto="http",
                                        x_envoy_expected_rq_timeout_ms="15000")


def test_edge_request_from_loopback_is_external_in_envoy_1_40(upstream):
    """use_remote_address from 127.0.0.1: still external (no internal_address_config), so
    also an edge request: the edge headers go, x-envoy-external-address is the client,
    x-request-id is replaced, and x-forwarded-for gets Envoy's local address (not the
    loopback peer)."""
    with make_proxy(upstream, use_remote_address=True) as p:
        send(p, SENT)
    got = received(upstream)
    rid = got.pop("x-request-id")
    assert re.fullmatch(UUID, rid[0]) and rid != ["my-id"]
    assert got == expect(EXTERNAL | EDGE | {"x-envoy-internal", "x-request-id"},
                         x_envoy_external_address="127.0.0.1", x_envoy_expected_rq_timeout_ms="15000",
                         x_forwarded_for=envoy_local_address(), x_forwarded_proto="http")


def test_no_x_envoy_header_costs_nothing_and_changes_nothing(upstream):
    with make_proxy(upstream) as p:
        r = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        r.request("GET", "/plain", headers={"X-Envoyish": "1", "X-Envoy": "2"})
        assert r.getresponse().read() == b"GET /plain 0"
    got = upstream.requests[-1][2]
    assert got.pop("x-request-id")
    assert got == {"host": got["host"], "accept-encoding": ["identity"], "x-envoyish": ["1"], "x-envoy": ["2"], "x-forwarded-proto": ["http"],
                   "x-envoy-expected-rq-timeout-ms": ["15000"]}


# ---------------------------------------------------------------- internal requests

def test_internal_request_keeps_its_envoy_headers(upstream):
    """internal_address_config without cidr_ranges: Envoy's RFC 1918 set, which has
    127.0.0.1. The request keeps its x-envoy-* headers (only the router consumes its own),
    gets x-envoy-internal: true, and its x-envoy-upstream-rq-timeout-ms (1234) is the
    timeout in force; hedging asked for, so the per-try timeout is not the expected one."""
    with make_proxy(upstream, use_remote_address=True, internal_address_config=InternalAddressConfig()) as p:
        send(p, SENT)
    assert received(upstream) == expect(ROUTER, x_envoy_internal="true", x_envoy_expected_rq_timeout_ms="1234",
                                        x_forwarded_for=envoy_local_address(), x_forwarded_proto="http")


def test_internal_request_per_try_timeout_is_the_expected_one(upstream):
    sent = {"x-envoy-upstream-rq-timeout-ms": "5000", "x-envoy-upstream-rq-per-try-timeout-ms": "700"}
    with make_proxy(upstream, use_remote_address=True, internal_address_config=InternalAddressConfig()) as p:
        send(p, sent)
    assert received(upstream)["x-envoy-expected-rq-timeout-ms"] == ["700"]
    assert "x-envoy-upstream-rq-per-try-timeout-ms" not in received(upstream)


@pytest.mark.parametrize("cfg, xff, internal", [
    (InternalAddressConfig(), "10.0.0.1", True),                 # one internal address
    (InternalAddressConfig(), "10.0.0.2, 10.0.0.1", False),      # more than one: never internal
    (InternalAddressConfig(), "203.0.113.9", False),
    (InternalAddressConfig(), "127.0.0.2", False),               # only 127.0.0.1 is in Envoy's set
    (None, "10.0.0.1", False),                                   # no config: nothing is internal
    (InternalAddressConfig(["203.0.113.0/24"]), "203.0.113.7", True),
    (InternalAddressConfig(["203.0.113.0/24"]), "10.0.0.1", False),   # the ranges replace the default
    (InternalAddressConfig(["2001:db8::/32"]), "2001:db8::5", True),
    (InternalAddressConfig(["203.0.113.7/99"]), "203.0.113.7", True),       # Envoy clamps the length
    (InternalAddressConfig(["203.0.113.7/99"]), "203.0.113.8", False),
    (InternalAddressConfig(["203.0.113.255/23"]), "203.0.112.1", True),     # host bits dropped
])
def test_internal_from_x_forwarded_for_without_use_remote_address(upstream, cfg, xff, internal):
    with make_proxy(upstream, internal_address_config=cfg) as p:
        send(p, {"x-envoy-force-trace": "true", "x-envoy-internal": "yes", "x-envoy-decorator-operation": "op"},
             xff=xff)
    got = received(upstream)
    assert got["x-forwarded-for"] == [xff], "XFF is not appended without use_remote_address"
    assert got.get("x-envoy-internal") == (["true"] if internal else None)
    assert got.get("x-envoy-force-trace") == (["true"] if internal else None)
    assert got["x-envoy-decorator-operation"] == ["op"], "not an edge request either way"
    assert "x-envoy-external-address" not in got


def test_use_remote_address_with_x_forwarded_for_is_never_internal(upstream):
    with make_proxy(upstream, use_remote_address=True, internal_address_config=InternalAddressConfig()) as p:
        send(p, {"x-envoy-force-trace": "true"}, xff="10.0.0.1")
    got = received(upstream)
    assert "x-envoy-internal" not in got and "x-envoy-force-trace" not in got
    assert got["x-envoy-external-address"] == ["127.0.0.1"]
    assert got["x-forwarded-for"] == ["10.0.0.1," + envoy_local_address()], "appended with ',' as Envoy"


def test_trusted_hop_keeps_x_forwarded_proto(upstream):
    with make_proxy(upstream, use_remote_address=True, xff_num_trusted_hops=1) as p:
        send(p, {"x-forwarded-proto": "https"}, xff="203.0.113.1")
    got = received(upstream)
    assert got["x-forwarded-proto"] == ["https"]
    assert got["x-envoy-external-address"] == ["203.0.113.1"]
    with make_proxy(upstream, use_remote_address=True) as p:
        send(p, {"x-forwarded-proto": "https"})
    assert received(upstream)["x-forwarded-proto"] == ["http"], "an untrusted peer's value is replaced"


def test_internal_address_config_validation(upstream):
    for bad in (["10.0.0.0/x"], ["nope/8"], ["10.0.0.0"], [""]):
        with pytest.raises(ConfigError) as err:
            make_proxy(upstream, internal_address_config=InternalAddressConfig(bad))
        assert "internal_address_config.cidr_ranges[0]" in err.value.path


# ---------------------------------------------------------------- what the router does with them

def test_upstream_rq_timeout_header_honoured_from_internal_requests_only(tmp_path):
    release = threading.Event()

    def slow(method, path, headers, body):
        release.wait(10)
        return RawHttpUpstream.default(method, path, headers, body)

    up = RawHttpUpstream(slow)
    log = tmp_path / "a.log"
    try:
        with make_proxy(up, use_remote_address=True, internal_address_config=InternalAddressConfig(["127.0.0.1/32"]),
                        access_log=[AccessLog(str(log), "%RESPONSE_CODE% %RESPONSE_FLAGS%\n")]) as p:
            conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
            conn.request("GET", "/t", headers={"x-envoy-upstream-rq-timeout-ms": "150"})
            r = conn.getresponse()
            assert (r.status, r.read()) == (504, b"upstream request timeout")
            wait_for(lambda: log.exists() and log.read_text() == "504 UT\n")
            assert up.requests[-1][2]["x-envoy-expected-rq-timeout-ms"] == ["150"]
        release.set()
        # From an external client the header is removed and the route's 15 s stay in force.
        with make_proxy(up) as p:
            conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
            conn.request("GET", "/t", headers={"x-envoy-upstream-rq-timeout-ms": "1"})
            assert conn.getresponse().read() == b"GET /t 0"
        assert up.requests[-1][2]["x-envoy-expected-rq-timeout-ms"] == ["15000"]
        assert "x-envoy-upstream-rq-timeout-ms" not in up.requests[-1][2]
    finally:
        release.set()
        up.close()


def test_route_without_timeout_sends_no_expected_timeout(upstream):
    with make_proxy(upstream, [Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c", timeout=None))]) as p:
        send(p, {})
    assert "x-envoy-expected-rq-timeout-ms" not in received(upstream)


def test_rewrite_sets_x_envoy_original_path(tmp_path, upstream):
    log = tmp_path / "a.log"
    with make_proxy(upstream, [Route(RouteMatch(prefix="/api/"), route=RouteAction(cluster="c", prefix_rewrite="/v2/"))],
                    access_log=[AccessLog(str(log), "%REQ(:PATH)% %REQ(X-ENVOY-ORIGINAL-PATH)%\n")]) as p:
        send(p, {"x-envoy-original-path": "/spoof"}, path="/api/x?y=1")
        wait_for(lambda: log.exists() and log.read_text())
    method, path, headers, _ = upstream.requests[-1]
    assert path == "/v2/x?y=1"
    assert headers["x-envoy-original-path"] == ["/api/x?y=1"]
    assert log.read_text() == "/v2/x?y=1 /api/x?y=1\n", "Envoy logs the path it sent and the original"


def test_route_header_matcher_sees_sanitized_headers():
    """A route that matches x-envoy-internal (Envoy's way to keep a route internal) is not
    reached by an external client that sends the header itself."""
    inner, outer = RawHttpUpstream(), RawHttpUpstream()
    routes = [Route(RouteMatch(prefix="/", headers=[HeaderMatcher("x-envoy-internal")]), route=RouteAction(cluster="in")),
              Route(RouteMatch(prefix="/"), route=RouteAction(cluster="out"))]
    clusters = [Cluster("in", [Endpoint("127.0.0.1", inner.port)]), Cluster("out", [Endpoint("127.0.0.1", outer.port)])]
    try:
        with make_proxy(None, routes, clusters=clusters, use_remote_address=True) as p:
            send(p, {"x-envoy-internal": "true"})
        assert (len(inner.requests), len(outer.requests)) == (0, 1)
        with make_proxy(None, routes, clusters=clusters, use_remote_address=True,
                        internal_address_config=InternalAddressConfig()) as p:
            send(p, {})
        assert (len(inner.requests), len(outer.requests)) == (1, 1)
    finally:
        inner.close()
        outer.close()


# ---------------------------------------------------------------- with HTTP filters

class Record(HttpFilter):
    seen = []

    def decode_headers(self, headers, end_stream):
        type(self).seen.append({k.lower(): headers.get_all(k) for k in headers.keys()})
        headers["x-envoy-max-retries"] = "9"               # added after the HCM: the router eats it
        headers["x-envoy-force-trace"] = "yes"             # ... but not this one
        return FilterStatus.CONTINUE


def test_filters_see_the_sanitized_request(upstream):
    Record.seen = []
    with make_proxy(upstream, filters=[PythonHttpFilter("rec", Record)], use_remote_address=True) as p:
        send(p, SENT)
    seen = Record.seen[-1]
    assert not {"x-envoy-retry-on", "x-envoy-internal", "x-envoy-decorator-operation"} & set(seen)
    assert seen["x-envoy-external-address"] == ["127.0.0.1"]
    assert seen["x-envoy-custom"] == ["keep"]
    assert re.fullmatch(UUID, seen["x-request-id"][0]), "an edge request's new id, before the filters"
    got = received(upstream)
    assert got["x-request-id"] == seen["x-request-id"]
    assert "x-envoy-max-retries" not in got
    assert got["x-envoy-force-trace"] == ["yes"]
    assert got["x-envoy-expected-rq-timeout-ms"] == ["15000"]


# ---------------------------------------------------------------- responses and the access log

def test_response_gets_upstream_service_time(tmp_path):
    def handler(method, path, headers, body):
        return b"HTTP/1.1 200 OK\r\nX-Envoy-Upstream-Service-Time: 99999\r\nContent-Length: 2\r\n\r\nok"

    up = RawHttpUpstream(handler)
    log = tmp_path / "a.log"
    try:
        with make_proxy(up, access_log=[AccessLog(str(log), "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%\n")]) as p:
            conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
            conn.request("GET", "/")
            r = conn.getresponse()
            assert r.read() == b"ok"
            values = r.headers.get_all("x-envoy-upstream-service-time")
            assert len(values) == 1 and values[0].isdigit() and int(values[0]) < 5000, values
            wait_for(lambda: log.exists() and log.read_text() == values[0] + "\n")
    finally:
        up.close()


def test_access_log_prints_the_mutated_request(tmp_path, upstream):
    log = tmp_path / "a.log"
    fmt = ("%REQ(X-FORWARDED-FOR)%|%REQ(X-REQUEST-ID)%|%REQ(X-ENVOY-INTERNAL)%|%REQ(X-ENVOY-RETRY-ON)%|"
           "%REQ(X-ENVOY-EXTERNAL-ADDRESS)%|%REQ(X-ENVOY-EXPECTED-RQ-TIMEOUT-MS)%|%REQ(X-ENVOY-CUSTOM)%\n")
    with make_proxy(upstream, use_remote_address=True, access_log=[AccessLog(str(log), fmt)]) as p:
        send(p, {"x-request-id": "mine", "x-envoy-internal": "true", "x-envoy-custom": "c"}, xff="1.2.3.4")
        line = wait_for(lambda: log.exists() and log.read_text())
    rid = received(upstream)["x-request-id"][0]
    assert line == f"1.2.3.4,{envoy_local_address()}|{rid}|-|-|127.0.0.1|15000|c\n"
