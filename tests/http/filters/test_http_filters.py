"""Python HTTP filters end to end: real clients through fastproxy to a raw upstream that
records every byte, with filters that change headers and bodies, hold and continue the
stream (from the worker, another thread and asyncio), answer locally and fail."""
from __future__ import annotations

import asyncio
import http.client
import re
import socket
import threading
import time

import pytest

from fastproxy import Cluster, Endpoint, FilterStatus, HttpFilter, Listener, Proxy, PythonHttpFilter
from fastproxy.http.model import (HttpConnectionManager, Route, RouteAction, RouteConfiguration,
                                  RouteMatch, VirtualHost)

from conftest import recv_head, wait_for, wait_stalled
from http_upstreams import RawHttpUpstream, http_request

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP_ITERATION


def make_proxy(filters, upstream, routes=None, clusters=None, **hcm_kw):
    routes = routes or [Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=routes)])
    hcm = HttpConnectionManager("ingress", rc, http_filters=filters, **hcm_kw)
    clusters = clusters or [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])]
    return Proxy([Listener("http", hcm, port=0)], clusters, concurrency=2)


def spec(cls, name=None, config=None):
    return PythonHttpFilter(name or cls.__name__, cls, config)


def request(p, method="GET", path="/", body=None, headers=None, timeout=5):
    return http_request(p.listener_address("http"), method, path, body, headers, timeout)


# ---------------------------------------------------------------- headers

class AddHeaders(HttpFilter):
    def decode_headers(self, headers, end_stream):
        headers["x-user"] = self.config.get("user", "alice")
        headers.add("x-multi", "1")
        headers.add(b"x-multi", b"2")
        if "x-remove-me" in headers:
            del headers["x-remove-me"]
        return CONTINUE

    def encode_headers(self, headers, end_stream):
        headers["x-filtered"] = headers[":status"]
        return CONTINUE


def test_headers_changed_both_ways(upstream):
    with make_proxy([spec(AddHeaders, config={"user": "bob"})], upstream) as p:
        r, body = request(p, path="/h?q=1", headers={"X-Remove-Me": "secret", "X-Keep": "k"})
        assert r.status == 200 and body == b"GET /h?q=1 0"
        assert r.getheader("x-filtered") == "200"
        method, path, headers, _ = upstream.requests[-1]
        assert headers["x-user"] == ["bob"]
        assert headers["x-multi"] == ["1", "2"]
        assert "x-remove-me" not in headers
        assert headers["x-keep"] == ["k"]
        assert headers["host"]


class RewritePath(HttpFilter):
    def decode_headers(self, headers, end_stream):
        assert headers[":method"] == "GET"
        assert headers[":authority"].startswith("127.0.0.1")
        assert headers[":scheme"] == "http"
        headers[":path"] = "/rewritten" + headers[":path"]
        headers[":authority"] = "example.test"
        return CONTINUE


def test_pseudo_headers_visible_and_writable(upstream):
    with make_proxy([spec(RewritePath)], upstream) as p:
        r, body = request(p, path="/x")
        assert body == b"GET /rewritten/x 0"
        assert upstream.requests[-1][2]["host"] == ["example.test"]


def test_decoders_in_order_encoders_in_reverse(upstream):
    calls = []

    def make(tag):
        class F(HttpFilter):
            def decode_headers(self, headers, end_stream):
                calls.append(("decode", tag))
                headers.add("x-order", tag)
                return CONTINUE

            def encode_headers(self, headers, end_stream):
                calls.append(("encode", tag))
                headers.add("x-order", tag)
                return CONTINUE

            def on_log(self, info):
                calls.append(("log", tag))

            def on_destroy(self):
                calls.append(("destroy", tag))
        return F

    with make_proxy([spec(make("a"), "a"), spec(make("b"), "b"), spec(make("c"), "c")], upstream) as p:
        r, _ = request(p)
        assert upstream.requests[-1][2]["x-order"] == ["a", "b", "c"]
        assert r.headers.get_all("x-order") == ["c", "b", "a"]
        wait_for(lambda: len(calls) == 12)
        assert calls == [("decode", "a"), ("decode", "b"), ("decode", "c"),
                         ("encode", "c"), ("encode", "b"), ("encode", "a"),
                         ("log", "a"), ("log", "b"), ("log", "c"),
                         ("destroy", "a"), ("destroy", "b"), ("destroy", "c")]


# ---------------------------------------------------------------- holding and continuing

class ContinueFromThread(HttpFilter):
    def decode_headers(self, headers, end_stream):
        def later():
            time.sleep(0.05)
            headers["x-approved"] = "yes"       # a kept (detached) map: written back on continue
            self.callbacks.continue_decoding()
        threading.Thread(target=later).start()
        return STOP


def test_stop_iteration_then_continue_from_another_thread(upstream):
    with make_proxy([spec(ContinueFromThread)], upstream) as p:
        r, body = request(p, "POST", "/t", body=b"payload")
        assert r.status == 200 and body == b"POST /t 7"
        assert upstream.requests[-1][2]["x-approved"] == ["yes"]
        assert upstream.requests[-1][3] == b"payload"


class AsyncAuth(HttpFilter):
    timeout = 2.0

    async def decode_headers(self, headers, end_stream):
        await asyncio.sleep(0.01)
        if headers.get("authorization") != "Bearer good":
            self.callbacks.send_local_reply(401, b"no entry", {"www-authenticate": "Bearer"})
            return STOP
        headers["x-auth-user"] = "alice"
        return CONTINUE


def test_async_filter_allows_and_denies(upstream):
    with make_proxy([spec(AsyncAuth)], upstream) as p:
        r, body = request(p, headers={"Authorization": "Bearer good"})
        assert r.status == 200
        assert upstream.requests[-1][2]["x-auth-user"] == ["alice"]
        n = len(upstream.requests)
        r, body = request(p, headers={"Authorization": "Bearer bad"})
        assert (r.status, body) == (401, b"no entry")
        assert r.getheader("www-authenticate") == "Bearer"
        assert len(upstream.requests) == n, "a denied request must not reach the upstream"


class SlowAsync(HttpFilter):
    timeout = 0.2

    async def decode_headers(self, headers, end_stream):
        await asyncio.sleep(10)
        return CONTINUE


def test_async_filter_timeout_is_504(upstream):
    with make_proxy([spec(SlowAsync)], upstream) as p:
        t0 = time.monotonic()
        r, body = request(p)
        assert r.status == 504
        assert time.monotonic() - t0 < 5
        assert upstream.requests == []


class LocalReply(HttpFilter):
    def decode_headers(self, headers, end_stream):
        if headers[":path"].startswith("/blocked"):
            self.callbacks.send_local_reply(403, "blocked by policy", [("x-why", "policy")])
            return STOP
        return CONTINUE


def test_local_reply_from_decode_sends_nothing_upstream(upstream):
    with make_proxy([spec(LocalReply)], upstream) as p:
        r, body = request(p, "POST", "/blocked", body=b"x" * 1000)
        assert (r.status, body) == (403, b"blocked by policy")
        assert r.getheader("x-why") == "policy"
        assert upstream.raw == b""
        r, body = request(p, path="/fine")
        assert r.status == 200
        assert p.stats()["http.ingress.downstream_rq_4xx"] == 1


class Boom(HttpFilter):
    def decode_headers(self, headers, end_stream):
        if headers[":path"] == "/boom":
            raise RuntimeError("filter bug")
        return CONTINUE


def test_exception_is_500_and_the_proxy_keeps_going(upstream, caplog):
    with make_proxy([spec(Boom)], upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/boom")
        r = conn.getresponse()
        assert r.status == 500
        r.read()
        for _ in range(3):
            r, body = request(p, path="/ok")
            assert r.status == 200
        assert p.stats()["http.ingress.python_filter_error"] == 1
        assert upstream.raw.count(b"/boom") == 0
    assert any("filter bug" in (rec.exc_text or "") or "filter bug" in str(rec.exc_info)
               for rec in caplog.records)


# ---------------------------------------------------------------- bodies

class UpperRequest(HttpFilter):
    def decode_data(self, data, end_stream):
        if not end_stream:
            return FilterStatus.STOP_AND_BUFFER
        data.replace(bytes(data).upper() + b"!")
        return CONTINUE


def test_buffered_request_body_rewritten_with_exact_length(upstream):
    with make_proxy([spec(UpperRequest)], upstream) as p:
        body = b"hello world " * 20000
        r, got = request(p, "POST", "/b", body=body)
        assert got == b"POST /b %d" % (len(body) + 1)
        method, path, headers, ubody = upstream.requests[-1]
        assert ubody == body.upper() + b"!"
        assert headers["content-length"] == [str(len(body) + 1)]
        # chunked from the client: the same result
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("POST", "/c", body=iter([b"ab", b"cd"]), encode_chunked=True)
        assert conn.getresponse().read() == b"POST /c 5"
        assert upstream.requests[-1][3] == b"ABCD!"


def test_buffer_limit_gives_413(upstream):
    with make_proxy([spec(UpperRequest)], upstream) as p:
        r, got = request(p, "POST", "/big", body=b"x" * (3 << 20))
        assert r.status == 413
        assert upstream.raw == b""


def test_413_reaches_a_client_that_sends_its_whole_body_before_reading(upstream):
    """The proxy answers 413 while the body is still coming and then closes. Closing with
    unread bytes would make the kernel reset the connection, and a client that writes its
    whole body before it reads (http.client, most scripts) would get ECONNRESET instead of
    the answer; the proxy shuts its side and drops the rest of the body first."""
    with make_proxy([spec(UpperRequest)], upstream) as p:
        total = 8 << 20
        s = socket.create_connection(p.listener_address("http"), timeout=10)
        s.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"x" * 65536
        for _ in range(total // len(chunk)):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
        s.close()
        assert got.startswith(b"HTTP/1.1 413 ")
        assert b"connection: close" in got.lower()
        assert upstream.raw == b""
        h = "http." + p.config.listeners[0].handler.stat_prefix + "."
        wait_for(lambda: p.stats()[h + "downstream_cx_active"] == 0)
        assert p.stats()[h + "downstream_cx_destroy_local"] == 1   # the proxy's close


class StreamingTag(HttpFilter):
    """Passes the body through chunk by chunk, counting it."""
    seen = []

    def decode_headers(self, headers, end_stream):
        headers.remove("content-length")        # we change the size: say so, Envoy style
        return CONTINUE

    def decode_data(self, data, end_stream):
        data.append(b"|")
        StreamingTag.seen.append(end_stream)
        return CONTINUE


def test_streaming_body_filter_reframes_as_chunked(upstream):
    with make_proxy([spec(StreamingTag)], upstream) as p:
        body = b"y" * 300000
        r, got = request(p, "POST", "/s", body=body)
        assert r.status == 200
        method, path, headers, ubody = upstream.requests[-1]
        assert headers["transfer-encoding"] == ["chunked"]
        assert ubody.replace(b"|", b"") == body
        assert ubody.endswith(b"|")
        assert StreamingTag.seen[-1] is True


class GrowWithoutFixingLength(HttpFilter):
    def decode_data(self, data, end_stream):
        data.append(b"extra")                   # Content-Length left as it was: a filter bug
        return CONTINUE


def test_body_longer_than_content_length_never_reaches_upstream(upstream):
    with make_proxy([spec(GrowWithoutFixingLength)], upstream) as p:
        # The whole body in one piece: the proxy knows its final size and says so.
        r, got = request(p, "POST", "/x", body=b"abc")
        assert (r.status, got) == (200, b"POST /x 8")
        assert upstream.requests[-1][3] == b"abcextra"
        # Streamed (the end is not known when the head goes out): the declared length rules;
        # the request fails rather than let the upstream read extra bytes as another request.
        body = b"z" * (4 << 20)
        try:
            r, got = request(p, "POST", "/y", body=body)
            assert r.status >= 500
        except (ConnectionError, http.client.HTTPException):
            pass
        wait_for(lambda: p.stats()["http.ingress.downstream_rq_active"] == 0)
        for method, path, headers, ubody in upstream.requests:
            assert method == "POST" and path in ("/x", "/y")
            if path == "/y":
                assert len(ubody) == int(headers["content-length"][0]) == len(body)


class UpperResponse(HttpFilter):
    def encode_data(self, data, end_stream):
        if not end_stream:
            return FilterStatus.STOP_AND_BUFFER
        data.replace(bytes(data).upper())
        self.callbacks.add_encoded_data(b"<end>")
        return CONTINUE


def test_response_body_rewritten(upstream):
    with make_proxy([spec(UpperResponse)], upstream) as p:
        r, got = request(p, path="/resp")
        assert got == b"GET /RESP 0<end>"
        assert r.getheader("content-length") == str(len(got))
        r, got = request(p, "HEAD", path="/resp")
        assert r.status == 200 and got == b""


class Trailers(HttpFilter):
    def decode_trailers(self, trailers):
        trailers["x-checked"] = "1"
        return CONTINUE


def test_request_trailers_hook(upstream):
    with make_proxy([spec(Trailers)], upstream) as p:
        s = socket.create_connection(p.listener_address("http"), timeout=5)
        s.sendall(b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n0\r\nx-sum: 9\r\n\r\n")
        data = b""
        while b"POST /t 3" not in data:
            d = s.recv(65536)
            assert d
            data += d
        s.close()
        raw = bytes(upstream.raw)
        assert b"x-sum: 9\r\n" in raw and b"x-checked: 1\r\n" in raw


# ---------------------------------------------------------------- route, cluster, per-route config

class PickCluster(HttpFilter):
    def decode_headers(self, headers, end_stream):
        assert self.callbacks.cluster == "c"
        if "x-canary" in headers:
            self.callbacks.cluster = "canary"
        headers["x-route-config"] = repr(self.callbacks.route_config)
        return CONTINUE


def test_filter_picks_cluster_and_reads_per_route_config(upstream):
    canary = RawHttpUpstream(lambda m, p, h, b: b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary")
    try:
        routes = [Route(RouteMatch(prefix="/special"), route=RouteAction(cluster="c"),
                        typed_per_filter_config={"pick": {"mode": "special"}}),
                  Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c")),
                  Route(RouteMatch(prefix="/never"), route=RouteAction(cluster="canary"))]
        clusters = [Cluster("c", [Endpoint("127.0.0.1", upstream.port)]),
                    Cluster("canary", [Endpoint("127.0.0.1", canary.port)])]
        with make_proxy([spec(PickCluster, "pick")], upstream, routes, clusters) as p:
            r, got = request(p, path="/special")
            assert upstream.requests[-1][2]["x-route-config"] == ["{'mode': 'special'}"]
            r, got = request(p, path="/plain")
            assert upstream.requests[-1][2]["x-route-config"] == ["None"]
            r, got = request(p, path="/x", headers={"x-canary": "1"})
            assert got == b"canary"
    finally:
        canary.close()


class Info(HttpFilter):
    infos = []

    def decode_headers(self, headers, end_stream):
        self.callbacks.filter_state["seen"] = headers[":path"]
        return CONTINUE

    def on_log(self, info):
        Info.infos.append((info, self.callbacks.filter_state.get("seen")))


def test_on_log_gets_stream_info(upstream):
    Info.infos.clear()
    with make_proxy([spec(Info)], upstream) as p:
        request(p, "POST", "/i", body=b"12345")
        wait_for(lambda: Info.infos)
        info, seen = Info.infos[0]
        assert seen == "/i"
        assert info.response_code == 200
        assert info.downstream_remote_address == "127.0.0.1"
        assert info.upstream_host == f"127.0.0.1:{upstream.port}"
        assert info.upstream_cluster == "c"
        assert info.bytes_received == 5
        assert 0 <= info.duration < 5


# ---------------------------------------------------------------- more hooks

class EncodeHold(HttpFilter):
    """Holds the response head, continues it from another thread."""

    def encode_headers(self, headers, end_stream):
        def later():
            time.sleep(0.02)
            self.callbacks.continue_encoding()
        headers["x-held"] = "1"
        threading.Thread(target=later).start()
        return STOP


def test_encode_stop_and_continue(upstream):
    with make_proxy([spec(EncodeHold)], upstream) as p:
        for _ in range(3):
            r, got = request(p, path="/e")
            assert (r.status, got) == (200, b"GET /e 0")
            assert r.getheader("x-held") == "1"


class AsyncBody(HttpFilter):
    async def decode_data(self, data, end_stream):
        await asyncio.sleep(0)
        data.append(b"+async")
        return CONTINUE

    async def encode_headers(self, headers, end_stream):
        await asyncio.sleep(0)
        headers["x-async"] = "yes"
        return CONTINUE

    def decode_headers(self, headers, end_stream):
        headers.remove("content-length")
        return CONTINUE


def test_async_data_and_encode_hooks(upstream):
    with make_proxy([spec(AsyncBody)], upstream) as p:
        r, got = request(p, "POST", "/a", body=b"body")
        assert r.getheader("x-async") == "yes"
        assert upstream.requests[-1][3] == b"body+async"


class NoBuffer(HttpFilter):
    """Swallows the body as it comes and sends a digest of it at the end."""

    def __init__(self, config=None):
        super().__init__(config)
        self.total = 0

    def decode_headers(self, headers, end_stream):
        headers.remove("content-length")
        return CONTINUE

    def decode_data(self, data, end_stream):
        self.total += len(data)
        data.drain(len(data))
        if end_stream:
            self.callbacks.add_decoded_data(b"total=%d" % self.total)
            return CONTINUE
        return FilterStatus.STOP_NO_BUFFER


def test_stop_no_buffer_and_add_decoded_data(upstream):
    with make_proxy([spec(NoBuffer)], upstream) as p:
        body = b"q" * 500000
        r, got = request(p, "POST", "/n", body=body)
        assert upstream.requests[-1][3] == b"total=%d" % len(body)


class EncodeBoom(HttpFilter):
    def encode_headers(self, headers, end_stream):
        raise ValueError("encode bug")


def test_exception_in_encode_is_500(upstream):
    with make_proxy([spec(EncodeBoom)], upstream) as p:
        r, got = request(p, path="/x")
        assert r.status == 500
        r, got = request(p, path="/y")
        assert r.status == 500
        assert p.stats()["http.ingress.python_filter_error"] == 2


class ResponseTrailers(HttpFilter):
    def encode_trailers(self, trailers):
        trailers["x-added-trailer"] = "t"
        return CONTINUE


def test_response_trailers_hook(upstream):
    def handler(method, path, headers, body):
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n"
                b"5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n")
    upstream.handler = handler
    with make_proxy([spec(ResponseTrailers)], upstream) as p:
        s = socket.create_connection(p.listener_address("http"), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"0\r\n" not in data:
            d = s.recv(65536)
            assert d
            data += d
        s.close()
        assert b"hello" in data and b"x-sum: 5\r\n" in data and b"x-added-trailer: t\r\n" in data


class RouteByHeader(HttpFilter):
    def decode_headers(self, headers, end_stream):
        if "x-to-b" in headers:
            headers[":path"] = "/b" + headers[":path"]
            self.callbacks.clear_route_cache()
        return CONTINUE


def test_clear_route_cache_reroutes(upstream):
    other = RawHttpUpstream(lambda m, p, h, b: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB")
    try:
        routes = [Route(RouteMatch(prefix="/b/"), route=RouteAction(cluster="b")),
                  Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))]
        clusters = [Cluster("c", [Endpoint("127.0.0.1", upstream.port)]),
                    Cluster("b", [Endpoint("127.0.0.1", other.port)])]
        with make_proxy([spec(RouteByHeader)], upstream, routes, clusters) as p:
            assert request(p, path="/x")[1] == b"GET /x 0"
            assert request(p, path="/x", headers={"x-to-b": "1"})[1] == b"B"
            assert other.requests[-1][1] == "/b/x"
    finally:
        other.close()


def test_many_requests_on_one_connection_with_filters(upstream):
    """Keep-alive and pipelining with a filter chain: every stream gets fresh instances."""
    with make_proxy([spec(AddHeaders, config={}), spec(UpperResponse)], upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        for i in range(50):
            conn.request("POST", f"/k{i}", body=b"x" * i)
            r = conn.getresponse()
            assert r.read() == f"POST /K{i} {i}<end>".encode()
        assert upstream.connections == 1


# ---------------------------------------------------------------- config: YAML, names, entry points

from conftest import CONFIGS  # noqa: E402
SAMPLE = CONFIGS / "http_python_filter.yaml"


def _sample_with_ports(upstream_port):
    import yaml
    config = yaml.safe_load(SAMPLE.read_text())
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 0
    ep = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    ep["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    return config


def test_yaml_python_filter_with_per_route_config(upstream):
    from fastproxy.config import load_envoy
    p = Proxy.from_bootstrap(load_envoy(_sample_with_ports(upstream.port)), concurrency=1)
    with p:
        conn = http.client.HTTPConnection(*p.listener_address("web"), timeout=5)
        conn.request("GET", "/plain")
        conn.getresponse().read()
        assert upstream.requests[-1][2]["x-tag"] == ["from-yaml"]
        conn.request("GET", "/special")
        conn.getresponse().read()
        assert upstream.requests[-1][2]["x-tag"] == ["per-route"]


class Registered(HttpFilter):
    def decode_headers(self, headers, end_stream):
        headers["x-registered"] = self.config["v"]
        return CONTINUE


def _typed_struct(value):
    return {"@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": "type.googleapis.com/fastproxy.python.HttpFilter", "value": value}


def test_registered_name_and_entry_point(upstream, tmp_path, monkeypatch):
    from fastproxy.config import load_envoy
    from fastproxy.errors import ConfigError
    Proxy.register_http_filter("registered_for_test", Registered)
    # a package that provides a filter through the fastproxy.filters entry point group
    pkg = tmp_path / "ep_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import fastproxy\n"
        "class FromEntryPoint(fastproxy.HttpFilter):\n"
        "    def decode_headers(self, headers, end_stream):\n"
        "        headers['x-ep'] = 'loaded'\n"
        "        return fastproxy.FilterStatus.CONTINUE\n")
    dist = tmp_path / "ep_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fastproxy.filters]\nfrom_ep = ep_pkg:FromEntryPoint\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = _sample_with_ports(upstream.port)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][:1] = [
        {"name": "a", "typed_config": _typed_struct({"filter": "registered_for_test", "config": {"v": "yes"}})},
        {"name": "b", "typed_config": _typed_struct({"filter": "from_ep"})}]
    for vh in hcm["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            r.pop("typed_per_filter_config", None)
    with Proxy.from_bootstrap(load_envoy(config), concurrency=1) as p:
        conn = http.client.HTTPConnection(*p.listener_address("web"), timeout=5)
        conn.request("GET", "/")
        conn.getresponse().read()
        assert upstream.requests[-1][2]["x-registered"] == ["yes"]
        assert upstream.requests[-1][2]["x-ep"] == ["loaded"]
    hcm["http_filters"][0]["typed_config"] = _typed_struct({"filter": "nope"})
    with pytest.raises(ConfigError) as err:
        load_envoy(config)
    assert err.value.path.endswith("http_filters[0].typed_config.value.filter")
    hcm["http_filters"][0]["typed_config"] = _typed_struct({"class": "filters_for_tests:Tagger"})
    with pytest.raises(ConfigError) as err:
        load_envoy(config)
    assert "not a fastproxy.HttpFilter" in err.value.message


def test_per_route_config_for_unknown_filter_is_an_error(upstream):
    from fastproxy.config import load_envoy
    from fastproxy.errors import ConfigError
    config = _sample_with_ports(upstream.port)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    route["typed_per_filter_config"] = {"missing": _typed_struct({})}
    with pytest.raises(ConfigError) as err:
        load_envoy(config)
    assert err.value.path.endswith("routes[0].typed_per_filter_config.missing")


def test_model_validation_names_the_field(upstream):
    from fastproxy.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        make_proxy([PythonHttpFilter("x", object)], upstream)
    assert err.value.path.endswith("http_filters[0].cls")
    with pytest.raises(ConfigError) as err:
        make_proxy([spec(AddHeaders, "same"), spec(Boom, "same")], upstream)
    assert err.value.path.endswith("http_filters[1].name")


class ReplaceResponse(HttpFilter):
    def encode_headers(self, headers, end_stream):
        if headers[":status"] == "200" and "x-replace" in headers:
            self.callbacks.send_local_reply(502, b"replaced by filter")
            return STOP
        return CONTINUE


def test_local_reply_from_encode_replaces_the_response(upstream):
    def handler(method, path, headers, body):
        extra = b"X-Replace: 1\r\n" if path == "/replace" else b""
        return b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: 6\r\n\r\norigin"
    upstream.handler = handler
    with make_proxy([spec(ReplaceResponse)], upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/replace")
        r = conn.getresponse()
        assert (r.status, r.read()) == (502, b"replaced by filter")
        conn.close()
        r, got = request(p, path="/keep")
        assert (r.status, got) == (200, b"origin")


class FailedUpstreamInfo(HttpFilter):
    infos = []

    def on_log(self, info):
        FailedUpstreamInfo.infos.append(info)


def test_stream_info_response_flags_on_connect_failure():
    FailedUpstreamInfo.infos.clear()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                                # nothing listens there now
    u = type("U", (), {"port": port})()
    with make_proxy([spec(FailedUpstreamInfo)], u) as p:
        r, got = request(p, path="/x")
        assert r.status == 503
        wait_for(lambda: FailedUpstreamInfo.infos)
        info = FailedUpstreamInfo.infos[0]
        assert info.response_code == 503
        assert "UF" in info.response_flags


# ---------------------------------------------------------------- local replies through the encoders
# Envoy's FilterManager::sendLocalReply: before any response entered the encoder filters, a
# local reply (a filter's, or the router's) is encoded from the first encoder filter, so every
# filter's encode hooks see it (the one that sent it, and those the request never reached);
# asked for while the encoders hold a response it goes straight to the client; after the
# response head went out the stream is reset.

def tracer(tag, calls, reply_on=None, status=403):
    """A filter that records its hooks and tags the response; `reply_on`: the path on which
    its decode_headers answers locally."""
    class T(HttpFilter):
        def decode_headers(self, headers, end_stream):
            calls.append(("decode", tag))
            if reply_on is not None and headers[":path"] == reply_on:
                self.callbacks.send_local_reply(status, b"denied by " + tag.encode(), {"x-reason": tag})
                return STOP
            return CONTINUE

        def encode_headers(self, headers, end_stream):
            calls.append(("encode", tag, headers[":status"], end_stream))
            headers.add("x-enc", tag)
            return CONTINUE

        def on_log(self, info):
            calls.append(("log", tag, info.response_code))
    return T


def test_local_reply_runs_every_filters_encoders(upstream):
    calls = []
    chain = [spec(tracer("a", calls), "a"), spec(tracer("b", calls, reply_on="/deny"), "b"),
             spec(tracer("c", calls), "c")]
    with make_proxy(chain, upstream) as p:
        r, body = request(p, "POST", "/deny", body=b"x" * 3000)
        assert (r.status, body) == (403, b"denied by b")
        assert r.getheader("x-reason") == "b"
        assert r.getheader("content-type") == "text/plain"
        assert r.headers.get_all("x-enc") == ["c", "b", "a"]
        assert upstream.raw == b""
        wait_for(lambda: len(calls) == 8)
        # c never saw the request; its encoder (and b's own) run on b's reply, in reverse order
        assert calls == [("decode", "a"), ("decode", "b"),
                         ("encode", "c", "403", False), ("encode", "b", "403", False),
                         ("encode", "a", "403", False),
                         ("log", "a", 403), ("log", "b", 403), ("log", "c", 403)]
        r, body = request(p, path="/fine")
        assert (r.status, body) == (200, b"GET /fine 0")
        assert r.headers.get_all("x-enc") == ["c", "b", "a"]
        assert p.stats()["http.ingress.downstream_rq_4xx"] == 1


class TagStatus(HttpFilter):
    logged = []

    def encode_headers(self, headers, end_stream):
        headers["x-seen-status"] = headers[":status"]
        return CONTINUE

    def on_log(self, info):
        TagStatus.logged.append((info.response_code, info.response_flags))


def test_router_local_replies_pass_through_encode_headers(upstream):
    TagStatus.logged.clear()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()                                # nothing listens there: connection refused
    hang = threading.Event()

    def handler(method, path, headers, body):
        if path == "/slow":
            hang.wait(10)
            return None
        return RawHttpUpstream.default(method, path, headers, body)
    upstream.handler = handler
    routes = [Route(RouteMatch(prefix="/app"), route=RouteAction(cluster="c")),
              Route(RouteMatch(prefix="/slow"), route=RouteAction(cluster="c", timeout=0.2)),
              Route(RouteMatch(prefix="/dead"), route=RouteAction(cluster="dead"))]
    clusters = [Cluster("c", [Endpoint("127.0.0.1", upstream.port)]),
                Cluster("dead", [Endpoint("127.0.0.1", dead_port)])]
    try:
        with make_proxy([spec(TagStatus)], upstream, routes, clusters, max_request_bytes=100) as p:
            r, body = request(p, path="/nowhere")
            assert (r.status, r.getheader("x-seen-status")) == (404, "404")
            r, body = request(p, path="/dead/x")
            assert (r.status, r.getheader("x-seen-status")) == (503, "503")
            assert body.startswith(b"upstream connect error")
            assert r.getheader("content-length") == str(len(body))
            r, body = request(p, path="/slow")
            assert (r.status, r.getheader("x-seen-status"), body) == (504, "504", b"upstream request timeout")
            r, body = request(p, "POST", "/app", body=b"y" * 500)
            assert (r.status, r.getheader("x-seen-status")) == (413, "413")
            r, body = request(p, path="/app/ok")
            assert (r.status, r.getheader("x-seen-status"), body) == (200, "200", b"GET /app/ok 0")
            wait_for(lambda: len(TagStatus.logged) == 5)
            assert [code for code, _ in TagStatus.logged] == [404, 503, 504, 413, 200]
            flags = [f for _, f in TagStatus.logged]
            assert "NR" in flags[0] and "UF" in flags[1] and "UT" in flags[2], flags
    finally:
        hang.set()


class UpperLocalBody(HttpFilter):
    """Rewrites every response body (buffered), adds a tail: the length changes."""
    def encode_data(self, data, end_stream):
        if not end_stream:
            return FilterStatus.STOP_AND_BUFFER
        data.replace(b"<" + bytes(data).upper() + b">")
        self.callbacks.add_encoded_data(b"+tail")
        return CONTINUE


def test_encode_data_rewrites_a_local_reply_body(upstream):
    with make_proxy([spec(UpperLocalBody), spec(LocalReply)], upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/blocked/1")
        r = conn.getresponse()
        body = r.read()
        assert (r.status, body) == (403, b"<BLOCKED BY POLICY>+tail")
        assert r.getheader("content-length") == str(len(body))
        assert r.getheader("x-why") == "policy"
        # HEAD: the headers only (with the reply's own length, as Envoy), and the connection
        # stays in step: the next request on it gets its own response
        conn.request("HEAD", "/blocked/2")
        r = conn.getresponse()
        assert (r.status, r.read()) == (403, b"")
        assert r.getheader("content-length") == str(len(b"blocked by policy"))
        conn.request("GET", "/fine")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"<GET /FINE 0>+tail")
        conn.close()
        assert [req[1] for req in upstream.requests] == ["/fine"]


class AsyncEncodeTag(HttpFilter):
    async def encode_headers(self, headers, end_stream):
        await asyncio.sleep(0.01)
        headers["x-async-enc"] = headers[":status"]
        return CONTINUE


def test_async_encoder_holds_a_local_reply_then_continues(upstream):
    # UpperRequest reads request bodies: one still arriving while the reply waits for the
    # coroutine is dropped (the request side is over), never buffered or sent upstream.
    with make_proxy([spec(AsyncEncodeTag), spec(LocalReply), spec(UpperRequest)], upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        for i in range(3):
            conn.request("GET", f"/blocked/{i}")
            r = conn.getresponse()
            assert (r.status, r.read(), r.getheader("x-async-enc")) == (403, b"blocked by policy", "403")
        conn.request("POST", "/blocked/post", body=b"z" * 20000)
        r = conn.getresponse()
        assert (r.status, r.read(), r.getheader("x-async-enc")) == (403, b"blocked by policy", "403")
        conn.request("POST", "/fine", body=b"ok")
        r = conn.getresponse()
        assert (r.status, r.read(), r.getheader("x-async-enc")) == (200, b"POST /fine 3", "200")
        assert [req[1] for req in upstream.requests] == ["/fine"]
        assert upstream.requests[0][3] == b"OK!"


class ReplyAgainWhileEncoding(HttpFilter):
    """Answers locally from encode_headers, whatever the response (a local reply included)."""
    calls = []

    def encode_headers(self, headers, end_stream):
        ReplyAgainWhileEncoding.calls.append(headers[":status"])
        self.callbacks.send_local_reply(418, b"second reply", {"x-second": "1"})
        return STOP


def test_local_reply_while_encoding_a_local_reply_goes_straight_to_the_client(upstream):
    calls = []
    ReplyAgainWhileEncoding.calls.clear()
    chain = [spec(tracer("outer", calls), "outer"), spec(ReplyAgainWhileEncoding),
             spec(tracer("inner", calls, reply_on="/deny"), "inner")]
    with make_proxy(chain, upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.request("GET", "/deny")
        r = conn.getresponse()
        assert (r.status, r.read()) == (418, b"second reply")
        assert r.getheader("x-second") == "1"
        # the second reply bypasses the encoders: "outer" never sees it, nothing runs twice
        assert r.getheader("x-enc") is None
        assert ReplyAgainWhileEncoding.calls == ["403"]
        assert [c for c in calls if c[0] == "encode"] == [("encode", "inner", "403", False)]
        conn.close()
        # an upstream response replaced the same way
        r, body = request(p, path="/up")
        assert (r.status, body) == (418, b"second reply")
        assert ReplyAgainWhileEncoding.calls == ["403", "200"]
        wait_for(lambda: len([c for c in calls if c[0] == "log"]) == 4)
        assert [c[2] for c in calls if c[0] == "log"] == [418, 418, 418, 418]


def test_exception_while_encoding_a_local_reply_is_a_plain_500(upstream):
    with make_proxy([spec(EncodeBoom), spec(LocalReply)], upstream) as p:
        r, body = request(p, path="/blocked")
        assert r.status == 500
        assert p.stats()["http.ingress.python_filter_error"] == 1, "the failing encoder ran once"
        assert upstream.raw == b""


class ChangeLocalStatus(HttpFilter):
    def encode_headers(self, headers, end_stream):
        if headers[":status"] == "403":
            headers[":status"] = "401"
            headers["www-authenticate"] = "Bearer"
        return CONTINUE


def test_access_log_and_on_log_see_the_status_the_encoders_left(upstream, tmp_path):
    from fastproxy.http.model import AccessLog
    Info.infos.clear()
    log = tmp_path / "access.log"
    with make_proxy([spec(Info), spec(ChangeLocalStatus), spec(LocalReply)], upstream,
                    access_log=[AccessLog(str(log), "%RESPONSE_CODE% %BYTES_SENT% %REQ(:PATH)%\n")]) as p:
        r, body = request(p, path="/blocked/x")
        assert (r.status, r.getheader("www-authenticate"), body) == (401, "Bearer", b"blocked by policy")
        wait_for(lambda: Info.infos)
        assert Info.infos[0][0].response_code == 401
        assert Info.infos[0][0].bytes_sent == len(body)
        wait_for(lambda: log.exists() and log.read_text().endswith("\n"))
        assert log.read_text() == f"401 {len(body)} /blocked/x\n"
        assert p.stats()["http.ingress.downstream_rq_4xx"] == 1


class ReplyOnSecondChunk(HttpFilter):
    """Streams the response body; answers locally on its second piece (after the head went out)."""
    def __init__(self, config=None):
        super().__init__(config)
        self.pieces = 0

    def encode_data(self, data, end_stream):
        self.pieces += 1
        if self.pieces == 2:
            self.callbacks.send_local_reply(500, b"too late")
            return STOP
        return CONTINUE


def test_local_reply_after_the_response_started_resets_the_stream(upstream):
    first_seen = threading.Event()

    def handler(method, path, headers, body):
        def send(c):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
            first_seen.wait(5)
            c.sendall(b"-more")
        return send
    upstream.handler = handler
    with make_proxy([spec(ReplyOnSecondChunk)], upstream) as p:
        s = socket.create_connection(p.listener_address("http"), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"first"):
            d = s.recv(65536)
            assert d, data
            data += d
        assert data.startswith(b"HTTP/1.1 200 ")
        first_seen.set()
        try:
            rest = s.recv(65536)
            assert rest == b"", rest           # closed early (the RST may come as EOF)
        except ConnectionResetError:
            pass
        s.close()


# ---------------------------------------------------------------- an upstream that stops reading

class PassBody(HttpFilter):
    def decode_data(self, data, end_stream):
        return CONTINUE


@pytest.mark.timeout(60, method="thread")   # a worker that never returns to epoll cannot be stopped
def test_upload_through_a_body_filter_to_an_upstream_that_stops_reading():
    """The upstream reads the head, then nothing until `go`: the proxy's bytes for it wait
    (the upstream socket unwritable) and the worker must go back to epoll, or it never sees
    the upstream become writable again."""
    go = threading.Event()
    received = {}
    size = 32 << 20
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def accept():
        c, _ = srv.accept()
        with c:
            got_head = recv_head(c)
            if got_head is None:
                return
            head, body = got_head
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            go.wait(30)
            got = len(body)
            while got < length:
                d = c.recv(1 << 20)
                if not d:
                    break
                got += len(d)
            received["n"] = got
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    threading.Thread(target=accept, daemon=True).start()
    result = {}
    try:
        with make_proxy([spec(PassBody)], type("U", (), {"port": srv.getsockname()[1]})()) as p:
            def client():
                try:
                    result["r"] = request(p, "POST", "/up", body=b"u" * size, timeout=30)
                except Exception as e:          # noqa: BLE001 (reported below)
                    result["e"] = e
            t = threading.Thread(target=client)
            t.start()
            tx = lambda: p.stats()["cluster.c.upstream_cx_tx_bytes_total"]
            wait_for(lambda: tx() > 0)
            assert wait_stalled(tx, quiet=0.3) < size, "the upstream stopped reading: the proxy waits"
            go.set()
            t.join(20)
            assert "r" in result, result
            r, body = result["r"]
            assert (r.status, body) == (200, b"ok")
            assert received["n"] == size
    finally:
        go.set()
        srv.close()


class SeeRouteHeaders(HttpFilter):
    """Records what the route's response header mutations left for the encoders to see."""
    seen = []

    def encode_headers(self, headers, end_stream):
        SeeRouteHeaders.seen.append((headers[":status"], headers.get("x-route"), "x-gone" in headers))
        headers["x-route"] = headers.get("x-route", "-") + "+filter"
        return CONTINUE


def test_route_response_headers_are_set_before_the_encoder_filters(upstream):
    """Envoy's router finalizes the response headers (the route's response_headers_to_add /
    _remove) before they go down the encoder chain, for upstream responses and for local
    replies alike; so an encoder filter sees them and can change them, and Server is set by
    the connection manager after all of it (a route cannot replace it)."""
    from fastproxy.http.model import DirectResponse, HeaderMutations, HeaderValueOption
    SeeRouteHeaders.seen.clear()

    def handler(method, path, headers, body):
        return b"HTTP/1.1 200 OK\r\nX-Gone: upstream\r\nServer: origin\r\nContent-Length: 2\r\n\r\nup"
    upstream.handler = handler
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))                     # bound, never listening: refused
    mut = HeaderMutations(response_headers_to_add=[HeaderValueOption("x-route", "r"),
                                                   HeaderValueOption("server", "route")],
                          response_headers_to_remove=["x-gone"])
    routes = [Route(RouteMatch(prefix="/direct"), direct_response=DirectResponse(200, b"hi"), headers=mut),
              Route(RouteMatch(prefix="/dead"), route=RouteAction(cluster="dead"), headers=mut),
              Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"), headers=mut)]
    clusters = [Cluster("c", [Endpoint("127.0.0.1", upstream.port)]),
                Cluster("dead", [Endpoint("127.0.0.1", dead.getsockname()[1])])]
    try:
        with make_proxy([spec(SeeRouteHeaders)], upstream, routes, clusters) as p:
            for path, status in (("/app", 200), ("/direct", 200), ("/dead", 503)):
                r, _ = request(p, path=path)
                assert r.status == status
                assert r.headers.get_all("x-route") == ["r+filter"], path
                assert r.getheader("x-gone") is None
                assert r.headers.get_all("server") == ["fastproxy"], path
            assert SeeRouteHeaders.seen == [("200", "r", False), ("200", "r", False), ("503", "r", False)]
    finally:
        dead.close()


# ---------------------------------------------------------------- continuing into a local reply
# A filter that holds a request and continues it later (from a timer, another thread, an
# async hook) resumes the iteration outside the connection's own I/O loop. Whatever the
# router answers then (no route, a direct response, a redirect, no healthy upstream, a
# circuit breaker's overflow) must still be written: the client used to wait forever.

class AsyncPass(HttpFilter):
    async def decode_headers(self, headers, end_stream):
        await asyncio.sleep(0.01)
        return CONTINUE


class ContinueFromTimer(HttpFilter):
    def decode_headers(self, headers, end_stream):
        threading.Timer(0.02, self.callbacks.continue_decoding).start()
        return STOP


class EncodeTag(HttpFilter):
    def encode_headers(self, headers, end_stream):
        headers["x-encoded"] = headers[":status"]
        return CONTINUE


def holding_filter(kind):
    """A decoder filter that pauses every request and continues it later."""
    if kind == "native_fault":
        from fastproxy import NativeHttpFilter
        from fastproxy.http.native_filters import FAULT, FaultDelay, FractionalPercent, HTTPFault
        return NativeHttpFilter("fault", FAULT, HTTPFault(delay=FaultDelay(0.02, FractionalPercent(100))))
    return spec({"python_async": AsyncPass, "python_thread": ContinueFromTimer}[kind])


CONTINUED_REPLIES = [          # path, status, body, a header that must be there (or None)
    ("/nothing", 404, b"", None),
    ("/direct", 200, b"direct\n", None),
    ("/redirect", 301, b"", "location"),
    ("/empty", 503, b"no healthy upstream", None),
    ("/full", 503, b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
     "x-envoy-overloaded"),
]


@pytest.mark.parametrize("encoders", [False, True], ids=["no_encoder", "with_encoder"])
@pytest.mark.parametrize("kind", ["native_fault", "python_async", "python_thread"])
def test_a_local_reply_after_a_continued_request_is_sent(upstream, kind, encoders):
    from fastproxy.http.model import DirectResponse, RedirectAction
    routes = [Route(RouteMatch(path="/direct"), direct_response=DirectResponse(200, b"direct\n")),
              Route(RouteMatch(path="/redirect"), redirect=RedirectAction(path_redirect="/elsewhere")),
              Route(RouteMatch(path="/empty"), route=RouteAction(cluster="empty")),
              Route(RouteMatch(path="/full"), route=RouteAction(cluster="full")),
              Route(RouteMatch(path="/up"), route=RouteAction(cluster="c"))]        # no catch-all
    clusters = [Cluster("c", [Endpoint("127.0.0.1", upstream.port)]), Cluster("empty", []),
                Cluster("full", [Endpoint("127.0.0.1", upstream.port)], max_connections=0,
                        max_pending_requests=0)]
    chain = [holding_filter(kind)] + ([spec(EncodeTag)] if encoders else [])
    with make_proxy(chain, upstream, routes, clusters) as p:
        for path, status, body, header in CONTINUED_REPLIES:
            r, data = request(p, path=path, timeout=5)
            assert (r.status, data) == (status, body), path
            if header is not None:
                assert r.getheader(header), (path, header)
            assert r.getheader("x-encoded") == (str(status) if encoders else None), path
        r, data = request(p, path="/up")
        assert (r.status, data) == (200, b"GET /up 0")
        # keep-alive: several continued local replies on one connection, each answered
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        for path, status in (("/nothing", 404), ("/direct", 200), ("/nothing", 404)):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == status, path
        conn.close()
    assert [r[1] for r in upstream.requests] == ["/up"]


@pytest.mark.parametrize("kind", ["native_fault", "python_thread"])
def test_pipelined_requests_after_a_continued_local_reply(upstream, kind):
    """The continuation that writes a local reply also starts the next pipelined request
    (waiting in the connection's input): three requests in one write, three answers."""
    from fastproxy.http.model import DirectResponse
    routes = [Route(RouteMatch(path="/direct"), direct_response=DirectResponse(200, b"d")),
              Route(RouteMatch(path="/up"), route=RouteAction(cluster="c"))]
    with make_proxy([holding_filter(kind)], upstream, routes) as p:
        s = socket.create_connection(p.listener_address("http"), timeout=5)
        s.sendall(b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /direct HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"404", b"200", b"200"], data
    assert data.endswith(b"GET /up 0")


class HoldBodyThenBreakHead(HttpFilter):
    """Keeps the request headers, holds the body, then (from a timer) removes :method from
    the kept headers and continues: the request head can no longer be sent, and the proxy's
    400 comes from the continuation of the data phase."""
    def decode_headers(self, headers, end_stream):
        self.headers = headers                  # kept: written back on continue
        return CONTINUE

    def decode_data(self, data, end_stream):
        def later():
            del self.headers[":method"]
            self.callbacks.continue_decoding()
        threading.Timer(0.02, later).start()
        return STOP


class HoldTrailers(HttpFilter):
    def decode_trailers(self, trailers):
        threading.Timer(0.02, self.callbacks.continue_decoding).start()
        return STOP


@pytest.mark.parametrize("encoders", [False, True], ids=["no_encoder", "with_encoder"])
def test_continued_body_and_trailers_reach_their_end(upstream, encoders):
    tail = [spec(EncodeTag)] if encoders else []
    with make_proxy([spec(HoldBodyThenBreakHead)] + tail, upstream) as p:
        r, data = request(p, "POST", "/b", body=b"hello", timeout=5)
        assert r.status == 400 and data == b"invalid request after header mutation"
        assert r.getheader("x-encoded") == ("400" if encoders else None)
    assert upstream.requests == []
    with make_proxy([spec(HoldTrailers)] + tail, upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.putrequest("POST", "/t")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        conn.send(b"5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"POST /t 5")
        conn.close()
    assert upstream.requests[-1][3] == b"hello"


class EncodeHoldThenBreak(HttpFilter):
    """Holds the response head, then (from a timer) removes :status and continues: the
    proxy's 502 is written by the continuation (the encode side's counterpart)."""
    def encode_headers(self, headers, end_stream):
        del headers[":status"]
        threading.Timer(0.02, self.callbacks.continue_encoding).start()
        return STOP


def test_a_502_after_a_continued_response_is_sent(upstream):
    with make_proxy([spec(EncodeHoldThenBreak)], upstream) as p:
        r, data = request(p, path="/x", timeout=5)
        assert r.status == 502


class ReplyFromTimer(HttpFilter):
    """Holds the request and answers it later from another thread."""
    def decode_headers(self, headers, end_stream):
        threading.Timer(0.02, self.callbacks.send_local_reply, (403, b"later")).start()
        return STOP


@pytest.mark.parametrize("encoders", [False, True], ids=["no_encoder", "with_encoder"])
def test_a_local_reply_sent_from_another_thread_is_sent(upstream, encoders):
    chain = [spec(ReplyFromTimer)] + ([spec(EncodeTag)] if encoders else [])
    with make_proxy(chain, upstream) as p:
        r, data = request(p, path="/x", timeout=5)
        assert (r.status, data) == (403, b"later")
        assert r.getheader("x-encoded") == ("403" if encoders else None)
    assert upstream.raw == b""


# ---------------------------------------------------------------- a filter that cannot be built

class DenyAllBadConfig(HttpFilter):
    """A deny-all filter whose constructor fails on its config (a KeyError)."""
    def __init__(self, config=None):
        super().__init__(config)
        self.reason = config["reason"]

    def decode_headers(self, headers, end_stream):
        self.callbacks.send_local_reply(403, self.reason)
        return STOP


class AsyncDenyAllBadConfig(DenyAllBadConfig):
    async def decode_headers(self, headers, end_stream):
        self.callbacks.send_local_reply(403, self.reason)
        return STOP


@pytest.mark.parametrize("cls", [DenyAllBadConfig, AsyncDenyAllBadConfig], ids=["sync", "async"])
@pytest.mark.parametrize("encoders", [False, True], ids=["alone", "with_encoder"])
def test_a_filter_whose_constructor_raises_fails_the_stream_closed(upstream, caplog, cls, encoders):
    """Fail closed: the filter that could not be built may be the one that denies the
    request. 500 (as for a hook that raises), nothing upstream, counted, logged; the other
    filters' encoders see the 500; the connection serves the next request the same way."""
    chain = [spec(cls, "deny", config={})] + ([spec(EncodeTag)] if encoders else [])
    with make_proxy(chain, upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        for path, body in (("/a", None), ("/b", b"x" * 3000)):
            conn.request("POST" if body else "GET", path, body=body)
            r = conn.getresponse()
            r.read()
            assert r.status == 500, path
            assert r.getheader("x-encoded") == ("500" if encoders else None)
        conn.close()
        assert p.stats()["http.ingress.python_filter_error"] == 2
        assert p.stats()["cluster.c.upstream_cx_total"] == 0
    assert upstream.raw == b"" and upstream.requests == []
    assert any("KeyError" in (rec.exc_text or "") for rec in caplog.records)


class DenyOnPath(HttpFilter):
    """Answers /deny itself without ever asking for the route."""
    def decode_headers(self, headers, end_stream):
        if headers[":path"] == "/deny":
            self.callbacks.send_local_reply(403, b"nope")
            return STOP
        return CONTINUE


@pytest.mark.parametrize("encoders", [False, True], ids=["no_encoder", "with_encoder"])
def test_a_filters_local_reply_gets_the_route_response_headers(upstream, encoders):
    """Envoy picks the route before the filters run: a filter's local reply carries the
    route's response_headers_to_add (checked with Envoy 1.40: a Lua filter's respond()),
    and the encoder filters see them."""
    from fastproxy.http.model import HeaderMutations, HeaderValueOption
    SeeRouteHeaders.seen.clear()
    mut = HeaderMutations(response_headers_to_add=[HeaderValueOption("x-route", "r")])
    routes = [Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"), headers=mut)]
    chain = ([spec(SeeRouteHeaders)] if encoders else []) + [spec(DenyOnPath)]
    with make_proxy(chain, upstream, routes) as p:
        r, body = request(p, path="/deny")
        assert (r.status, body) == (403, b"nope")
        assert r.headers.get_all("x-route") == (["r+filter"] if encoders else ["r"])
    if encoders:
        assert SeeRouteHeaders.seen == [("403", "r", False)]
    assert upstream.raw == b""


class ReplyFrom(HttpFilter):
    """Answers 418 from the hook named by its config."""
    def decode_headers(self, headers, end_stream):
        return self._maybe("decode_headers")

    def decode_data(self, data, end_stream):
        return self._maybe("decode_data")

    def decode_trailers(self, trailers):
        return self._maybe("decode_trailers")

    def _maybe(self, hook):
        if self.config == hook:
            self.callbacks.send_local_reply(418, b"from " + hook.encode())
            return STOP
        if self.config == "async_" + hook:
            async def later():
                await asyncio.sleep(0.01)
                self.callbacks.send_local_reply(418, b"from " + hook.encode())
                return STOP
            return later()
        return CONTINUE


@pytest.mark.parametrize("where", ["decode_headers", "decode_data", "decode_trailers",
                                   "async_decode_headers", "async_decode_data", "async_decode_trailers"])
def test_a_filters_local_reply_from_any_hook_passes_the_encoders(upstream, where):
    """Envoy's sendLocalReplyViaFilterChain: whichever decode hook answers (sync or async),
    every encoder filter sees the reply, the replying filter's own included."""
    hook = where.removeprefix("async_")
    chain = [spec(EncodeTag, "tag_a"), spec(ReplyFrom, config=where), spec(EncodeTag, "tag_c")]
    with make_proxy(chain, upstream) as p:
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=5)
        conn.putrequest("POST", "/r")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Trailer", "x-t")
        conn.endheaders()
        conn.send(b"5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n")
        r = conn.getresponse()
        assert (r.status, r.read()) == (418, b"from " + hook.encode())
        assert r.getheader("x-encoded") == "418"
        conn.close()
    assert upstream.requests == []
