"""The connection manager's header and path options, as Envoy 1.40 does them: Date on every
response, via, skip_xff_append, preserve_external_request_id,
always_set_request_id_in_response, normalize_path, merge_slashes,
path_with_escaped_slashes_action, strip_matching_host_port / strip_any_host_port and
common_http_protocol_options.headers_with_underscores_action.

Every case runs one Envoy YAML through fastproxy and checks what the upstream received and
what the client got against what the real envoy binary did (the expectations below were
recorded from it); when envoy is on PATH, test_same_as_envoy runs the same table through it
too and compares. Real sockets; a raw upstream records every request."""
from __future__ import annotations

import contextlib
import email.utils
import re
import time

import pytest

import fastproxy
from fastproxy import FilterStatus, HttpFilter, PythonHttpFilter

from conftest import envoy_yaml, find_envoy, fragment, http_listener, static_cluster
from http_upstreams import RawHttpUpstream, envoy_local_address, exchange

ENVOY = find_envoy()
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
IMF_DATE = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT"

ROUTES = """
- match: {path: /exact}
  direct_response: {status: 200, body: {inline_string: "exact"}}
- match: {prefix: /missing}
  route: {cluster: nowhere}
- match: {prefix: /}
  route: {cluster: backend}
"""

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# A filter whose encoder adds x-hm: 1 to every response it sees.
HEADER_MUTATION = """\
          - name: hm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                response_mutations:
                - append: {header: {key: x-hm, value: "1"}}"""


def yaml_text(extra: str, port: int, filters: str = "") -> str:
    """The bootstrap with ``extra`` HCM fields and ``filters`` before the router (YAML fragments)."""
    return envoy_yaml([http_listener(ROUTES, stat_prefix="hcm", http_filters=filters, **(fragment(extra) or {}))],
                      [static_cluster("backend", [port], type="STATIC"), static_cluster("nowhere", type="STATIC")])


@contextlib.contextmanager
def fastproxy_serving(text):
    with fastproxy.Proxy.from_envoy(text, concurrency=1) as p:
        yield p.listener_address("web"), p.stats


@contextlib.contextmanager
def envoy_serving(text, tmp_path):
    from test_http_stats_parity import read_stats
    from conftest import start_envoy
    proc, admin, addr = start_envoy(text, tmp_path)
    try:
        yield addr, lambda: read_stats(admin)
    finally:
        proc.kill()
        proc.wait()


class Exchange:
    """One request: what the upstream got (None: nothing) and what the client got."""

    def __init__(self, upstream_request, raw):
        self.up = upstream_request
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1]) if lines[0] else 0
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers.setdefault(k.strip().lower(), []).append(v.strip())

    @property
    def up_path(self):
        return self.up[1] if self.up else None

    def up_header(self, name):
        return self.up[2].get(name) if self.up else None


def run(kind, extra, requests, response=OK, tmp_path=None, filters=""):
    """Serve the YAML with `extra` HCM fields (kind "fastproxy" or "envoy"), send each raw
    request on its own connection ("{PORT}" becomes the listener's port) and return
    ([Exchange], stats)."""
    up = RawHttpUpstream(lambda m, p, h, b: response)
    try:
        text = yaml_text(extra, up.port, filters)
        serving = fastproxy_serving(text) if kind == "fastproxy" else envoy_serving(text, tmp_path)
        with serving as (addr, stats):
            out = []
            for raw in requests:
                other = addr[1] + 1 if addr[1] < 65535 else addr[1] - 1
                raw = raw.replace(b"{PORT}", str(addr[1]).encode()).replace(b"{OTHER}", str(other).encode())
                before = len(up.requests)
                got = exchange(addr, raw, timeout=5)
                out.append(Exchange(up.requests[before] if len(up.requests) > before else None, got))
            return out, stats()
    finally:
        up.close()


def get(path, host="h", extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


# ---------------------------------------------------------------- Date

def test_date_added_to_responses_without_one_and_kept_otherwise():
    """Envoy adds date to a response that has none, proxied or local, and keeps an
    upstream's own, even an empty one."""
    (plain,), _ = run("fastproxy", "", [get("/a")])
    (own,), _ = run("fastproxy", "", [get("/a")],
                    response=b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok")
    (empty,), _ = run("fastproxy", "", [get("/a")], response=b"HTTP/1.1 200 OK\r\ndate: \r\nContent-Length: 2\r\n\r\nok")
    (direct, missing, codec_error), _ = run("fastproxy", "", [get("/exact"), get("/missing"), b"BAD\r\n\r\n"])
    now = time.time()
    for ex in (plain, direct, missing, codec_error):
        (value,) = ex.headers["date"]
        assert re.fullmatch(IMF_DATE, value), value
        assert abs(email.utils.parsedate_to_datetime(value).timestamp() - now) < 5
    assert own.headers["date"] == ["Mon, 01 Jan 2001 00:00:00 GMT"]
    assert empty.headers["date"] == [""]
    assert (direct.status, missing.status, codec_error.status) == (200, 503, 400)


# ---------------------------------------------------------------- path normalization

# (HCM fields, request path, what the upstream gets or (status, location)), from Envoy 1.40.
NORMALIZE = "normalize_path: true"
MERGE = "merge_slashes: true"
ALL_FORWARD = "normalize_path: true\nmerge_slashes: true\npath_with_escaped_slashes_action: UNESCAPE_AND_FORWARD"
ALL_REDIRECT = "normalize_path: true\nmerge_slashes: true\npath_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT"
PATHS = [
    ("", "/a/./b/../c//d%2F%41", "/a/./b/../c//d%2F%41"),
    ("path_with_escaped_slashes_action: IMPLEMENTATION_SPECIFIC_DEFAULT", "/a%2Fb%5c", "/a%2Fb%5c"),
    ("path_with_escaped_slashes_action: KEEP_UNCHANGED", "/a%2Fb%5c", "/a%2Fb%5c"),
    (NORMALIZE, "/a/./b/../c", "/a/c"),
    (NORMALIZE, "/a//b///c", "/a//b///c"),
    (NORMALIZE, "/%41%62%2d%2e%5f%7e%7A", "/Ab-._~z"),
    (NORMALIZE, "/a/%2e%2E/b", "/b"),
    (NORMALIZE, "/.%2e/a", "/a"),
    (NORMALIZE, "/a%2Fb%5cc", "/a%2Fb%5cc"),
    (NORMALIZE, "/x\\y", "/x/y"),
    (NORMALIZE, '/q"<>^`{|}\'', "/q%22%3C%3E%5E%60%7B%7C%7D'"),
    (NORMALIZE, "/%zz/%4", "/%zz/%4"),
    (NORMALIZE, "/%7b%7B%25%c3%A9", "/%7b%7B%25%c3%A9"),
    (NORMALIZE, "/x/../../..", "/"),
    (NORMALIZE, "/a/..", "/"),
    (NORMALIZE, "/a/.", "/a/"),
    (NORMALIZE, "/a/%2e", "/a/"),
    (NORMALIZE, "/a/b/..", "/a/"),
    (NORMALIZE, "//..//a", "//a"),
    (NORMALIZE, "/.hidden/..x/...", "/.hidden/..x/..."),
    (NORMALIZE, "/a/%2e%2e%2fb", "/a/..%2fb"),
    (NORMALIZE, "/a?b/../c//d%41", "/a?b/../c//d%41"),
    (NORMALIZE, "/a;b/../exact", (200, None)),
    (NORMALIZE, "/a%00b", (400, None)),
    (MERGE, "/a//b///c/", "/a/b/c/"),
    (MERGE, "/a//b/./../c?x//y", "/a/b/./../c?x//y"),
    (MERGE, "///", "//"),
    ("path_with_escaped_slashes_action: REJECT_REQUEST", "/a%2fb", (400, None)),
    ("path_with_escaped_slashes_action: REJECT_REQUEST", "/a%5Cb", (400, None)),
    ("path_with_escaped_slashes_action: REJECT_REQUEST", "/a/b?c=%2F", "/a/b?c=%2F"),
    ("path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD", "/a%2Fb%5cc%2e", "/a/b\\c%2e"),
    ("path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD", "/%2F%2F", "///"),
    ("path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT", "/a%2fb?x=%2F", (307, "/a/b?x=%2F")),
    ("path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT", "/a//b%2F%2Fc/../d", (307, "/a//b//c/../d")),
    ("path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT", "/a/b", "/a/b"),
    (ALL_FORWARD, "/a%5Cb%5cc", "/a/b/c"),
    (ALL_FORWARD, "/a/%2e%2e%2fb", "/b"),
    (ALL_FORWARD, "/%2F%2F", "//"),
    (ALL_FORWARD, "/a//b%2F%2Fc/../d", "/a/b/d"),
    (ALL_REDIRECT, "/a%2F%2Fb/../c?q=%2F/../x", (307, "/a/c?q=%2F/../x")),
    (ALL_REDIRECT, "/x%2f..%2fexact", (307, "/exact")),
    (ALL_REDIRECT, "/x/..//exact", (200, None)),
]


def _path_outcome(ex):
    if ex.up is not None:
        return ex.up_path
    return ex.status, (ex.headers.get("location") or [None])[0]


def _by_config(table):
    groups = {}
    for extra, path, want in table:
        groups.setdefault(extra, []).append((path, want))
    return groups


@pytest.mark.parametrize("extra", list(_by_config(PATHS)), ids=lambda e: e.replace("\n", ";") or "defaults")
def test_path_normalization(extra):
    cases = _by_config(PATHS)[extra]
    got, stats = run("fastproxy", extra, [get(path) for path, _ in cases])
    assert [_path_outcome(ex) for ex in got] == [want for _, want in cases]
    rejected = sum(1 for _, want in cases if isinstance(want, tuple) and want[0] == 400)
    redirected = sum(1 for _, want in cases if isinstance(want, tuple) and want[0] == 307)
    assert stats["http.hcm.downstream_rq_failed_path_normalization"] == rejected
    assert stats["http.hcm.downstream_rq_redirected_with_normalized_path"] == redirected


def test_path_rejection_and_redirect_replies():
    """400 with no body and Connection: close; 307 with the path (and query) as Location,
    the connection kept; neither reaches the upstream."""
    (rej, red), _ = run("fastproxy", "path_with_escaped_slashes_action: REJECT_REQUEST",
                        [get("/a%2Fb"), b"POST /x%5c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"])
    for ex in (rej, red):
        assert (ex.status, ex.body, ex.headers["content-length"], ex.headers["connection"]) == \
            (400, b"", ["0"], ["close"])
        assert ex.up is None
    up = RawHttpUpstream(lambda m, p, h, b: OK)
    try:
        text = yaml_text("path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT", up.port)
        with fastproxy_serving(text) as (addr, _):
            import socket
            from conftest import recv_head
            with socket.create_connection(addr, timeout=5) as s:
                s.sendall(b"GET /a%2fb?q HTTP/1.1\r\nHost: h\r\n\r\n")
                head, rest = recv_head(s)
                assert head.startswith(b"HTTP/1.1 307 ") and b"\r\nlocation: /a/b?q\r\n" in head.lower()
                assert b"connection: close" not in head.lower()
                s.sendall(b"GET /a/b?q HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")   # same connection
                head, rest = recv_head(s)
                assert head.startswith(b"HTTP/1.1 200 ")
        assert [r[1] for r in up.requests] == ["/a/b?q"]
    finally:
        up.close()


def test_normalized_paths_longer_than_the_stack_scratch_and_growing():
    """Paths past the 1 KiB stack scratch (malloc'd) and paths the escaping makes longer
    than received (written after the head's bytes)."""
    long_dots = "/" + "seg/" * 400 + "../" * 399 + "end"
    grows = "/" + "{}" * 300 + "?q={}"
    (a, b), _ = run("fastproxy", ALL_FORWARD, [get(long_dots), get(grows)])
    assert a.up_path == "/seg/end"
    assert b.up_path == "/" + "%7B%7D" * 300 + "?q={}"
    assert b.up_header("host") == ["h"]         # the fields after the target are intact


def test_path_replies_pass_the_encoder_filters():
    """Envoy's filter chain exists when the path is refused or redirected: its encoders
    see those replies (the decoders never see the request)."""
    for extra, path, status in (("path_with_escaped_slashes_action: REJECT_REQUEST", "/a%2fb", 400),
                                ("path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT", "/a%2fb", 307),
                                ("normalize_path: true", "/a%00", 400)):
        (ex,), _ = run("fastproxy", extra, [get(path)], filters=HEADER_MUTATION)
        assert (ex.status, ex.headers.get("x-hm"), ex.up) == (status, ["1"], None), extra


class SeePath(HttpFilter):
    seen = []

    def decode_headers(self, headers, end_stream):
        type(self).seen.append((headers[":path"], headers[":authority"]))
        return FilterStatus.CONTINUE


def test_filters_and_routes_see_the_normalized_path_and_host():
    """Envoy normalizes before the filter chain and the route table."""
    from fastproxy import Cluster, Endpoint, Listener, Proxy
    from fastproxy.http.model import (DirectResponse, HttpConnectionManager, Route, RouteAction,
                                      RouteConfiguration, RouteMatch, VirtualHost)
    up = RawHttpUpstream(lambda m, p, h, b: OK)
    SeePath.seen = []
    try:
        rc = RouteConfiguration(virtual_hosts=[
            VirtualHost("h", ["h"], routes=[Route(RouteMatch(path="/b"), direct_response=DirectResponse(201, b"b"))]),
            VirtualHost("any", ["*"], routes=[Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))])])
        hcm = HttpConnectionManager("hcm", rc, normalize_path=True, merge_slashes=True, strip_host_port="ANY",
                                    http_filters=[PythonHttpFilter("see", SeePath)])
        with Proxy([Listener("web", hcm, port=0)], [Cluster("c", [Endpoint("127.0.0.1", up.port)])],
                   concurrency=1) as p:
            out = exchange(p.listener_address("web"), get("/a/..//b", host="h:81"), timeout=5)
            assert out.startswith(b"HTTP/1.1 201 "), out
            out = exchange(p.listener_address("web"), get("//x/./y", host="o:82"), timeout=5)
            assert out.startswith(b"HTTP/1.1 200 "), out
        assert SeePath.seen == [("/b", "h"), ("/x/y", "o")]
        assert up.requests[-1][1] == "/x/y" and up.requests[-1][2]["host"] == ["o"]
    finally:
        up.close()


# ---------------------------------------------------------------- Host port

def test_strip_any_host_port():
    hosts = ["h:80", "h:8080", "h:", "[::1]:80", "[::1]", "h"]
    got, _ = run("fastproxy", "strip_any_host_port: true",
                 [get("/", host=h) for h in hosts] + [get("http://a:9/x")])
    assert [ex.up_header("host") for ex in got] == [["h"], ["h"], ["h:"], ["[::1]"], ["[::1]"], ["h"], ["a"]]


def test_strip_matching_host_port_strips_only_the_listeners_port():
    got, _ = run("fastproxy", "strip_matching_host_port: true",
                 [get("/", host="h:{PORT}"), get("/", host="[::1]:{PORT}"), get("http://a:{PORT}/x"),
                  get("/", host="h:80"), get("/", host="h:{OTHER}")])
    assert [ex.up_header("host")[0] for ex in got[:3]] == ["h", "[::1]", "a"]
    assert got[3].up_header("host") == ["h:80"]
    assert re.fullmatch(r"h:\d+", got[4].up_header("host")[0])      # another port


# ---------------------------------------------------------------- via, XFF, x-request-id

def test_via_is_appended_to_requests_and_responses():
    (with_via, without), _ = run("fastproxy", "via: 1.1 edge", [get("/", extra="Via: 1.0 a\r\nVia: 1.0 b\r\n"), get("/")],
                                 response=b"HTTP/1.1 200 OK\r\nVia: 1.1 up\r\nContent-Length: 2\r\n\r\nok")
    assert with_via.up_header("via") == ["1.0 a,1.0 b, 1.1 edge"]
    assert without.up_header("via") == ["1.1 edge"]
    assert with_via.headers["via"] == ["1.1 up, 1.1 edge"]
    (local,), _ = run("fastproxy", "via: 1.1 edge", [get("/exact")])
    assert local.headers["via"] == ["1.1 edge"]


WS = "upgrade_configs: [{upgrade_type: websocket}]\nvia: vv\nalways_set_request_id_in_response: true"
WS_REQUEST = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
WS_RESPONSE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def test_switching_protocols_gets_the_response_headers_too():
    """Envoy encodes a 101 like any response: Date, Server, Via, x-request-id."""
    up = RawHttpUpstream(lambda m, p, h, b: (lambda c: c.sendall(WS_RESPONSE)))
    try:
        with fastproxy_serving(yaml_text(WS, up.port)) as (addr, _):
            import socket
            from conftest import recv_head
            with socket.create_connection(addr, timeout=5) as s:
                s.sendall(WS_REQUEST)
                head, _ = recv_head(s)
        ex = Exchange(up.requests[-1], head + b"\r\n\r\n")
        assert ex.status == 101
        assert re.fullmatch(IMF_DATE, ex.headers["date"][0]) and ex.headers["server"] == ["fastproxy"]
        assert ex.headers["via"] == ["vv"] and ex.headers["x-request-id"] == ex.up_header("x-request-id")
    finally:
        up.close()


def test_skip_xff_append():
    (xff, none), _ = run("fastproxy", "use_remote_address: true\nskip_xff_append: true",
                         [get("/", extra="X-Forwarded-For: 1.2.3.4\r\n"), get("/")])
    assert xff.up_header("x-forwarded-for") == ["1.2.3.4"]
    assert none.up_header("x-forwarded-for") is None
    assert xff.up_header("x-envoy-external-address") == ["127.0.0.1"]     # still an edge request
    (appended,), _ = run("fastproxy", "use_remote_address: true", [get("/", extra="X-Forwarded-For: 1.2.3.4\r\n")])
    assert appended.up_header("x-forwarded-for") == [f"1.2.3.4,{envoy_local_address()}"]


def test_preserve_external_request_id():
    (mine, none), _ = run("fastproxy", "use_remote_address: true\npreserve_external_request_id: true",
                          [get("/", extra="X-Request-Id: mine\r\n"), get("/")])
    assert mine.up_header("x-request-id") == ["mine"]
    assert re.fullmatch(UUID, none.up_header("x-request-id")[0])
    (replaced,), _ = run("fastproxy", "use_remote_address: true", [get("/", extra="X-Request-Id: mine\r\n")])
    assert re.fullmatch(UUID, replaced.up_header("x-request-id")[0])


def test_always_set_request_id_in_response():
    resp = b"HTTP/1.1 200 OK\r\nX-Request-Id: upstreams\r\nContent-Length: 2\r\n\r\nok"
    (mine, generated, local_mine, local_gen), _ = run(
        "fastproxy", "always_set_request_id_in_response: true",
        [get("/", extra="X-Request-Id: mine\r\n"), get("/"), get("/exact", extra="X-Request-Id: mine\r\n"),
         get("/missing")], response=resp)
    assert mine.headers["x-request-id"] == ["mine"]
    assert generated.headers["x-request-id"] == generated.up_header("x-request-id")
    assert re.fullmatch(UUID, generated.headers["x-request-id"][0])
    assert local_mine.headers["x-request-id"] == ["mine"]
    assert re.fullmatch(UUID, local_gen.headers["x-request-id"][0])
    (edge,), _ = run("fastproxy", "always_set_request_id_in_response: true\nuse_remote_address: true",
                     [get("/", extra="X-Request-Id: mine\r\n")])
    assert edge.headers["x-request-id"] == edge.up_header("x-request-id") != ["mine"]
    (off, client), _ = run("fastproxy", "always_set_request_id_in_response: true\ngenerate_request_id: false",
                           [get("/"), get("/", extra="X-Request-Id: mine\r\n")])
    assert "x-request-id" not in off.headers and off.up_header("x-request-id") is None
    assert client.headers["x-request-id"] == ["mine"]
    (plain,), _ = run("fastproxy", "", [get("/", extra="X-Request-Id: mine\r\n")], response=resp)
    assert plain.headers["x-request-id"] == ["upstreams"]


def test_generated_request_ids_differ_between_proxies():
    """The first id of each new proxy must not repeat (they were once seeded alike)."""
    ids = [run("fastproxy", "always_set_request_id_in_response: true", [get("/exact")])[0][0].headers["x-request-id"][0]
           for _ in range(3)]
    assert all(re.fullmatch(UUID, i) for i in ids) and len(set(ids)) == 3, ids


class SetId(HttpFilter):
    def decode_headers(self, headers, end_stream):
        headers["x-request-id"] = "from-filter"
        return FilterStatus.CONTINUE


def test_filtered_stream_via_and_request_id():
    from fastproxy import Cluster, Endpoint, Listener, Proxy
    from fastproxy.http.model import HttpConnectionManager, Route, RouteAction, RouteConfiguration, RouteMatch, \
        VirtualHost
    up = RawHttpUpstream(lambda m, p, h, b: OK)
    try:
        rc = RouteConfiguration(virtual_hosts=[VirtualHost("any", ["*"], routes=[
            Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))])])
        hcm = HttpConnectionManager("hcm", rc, via="v1", always_set_request_id_in_response=True,
                                    http_filters=[PythonHttpFilter("id", SetId)])
        with Proxy([Listener("web", hcm, port=0)], [Cluster("c", [Endpoint("127.0.0.1", up.port)])],
                   concurrency=1) as p:
            out = Exchange(None, exchange(p.listener_address("web"), get("/", extra="Via: a\r\n"), timeout=5))
        assert out.headers["x-request-id"] == ["from-filter"] and out.headers["via"] == ["v1"]
        assert up.requests[-1][2]["via"] == ["a, v1"] and up.requests[-1][2]["x-request-id"] == ["from-filter"]
    finally:
        up.close()


# ---------------------------------------------------------------- underscores

def test_headers_with_underscores_rejected():
    got, stats = run("fastproxy", "common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}",
                     [get("/", extra="X_Foo: 1\r\n"), get("/", extra="x-ok: 1\r\n")])
    rej, ok = got
    assert (rej.status, rej.body, rej.headers["connection"], rej.up) == (400, b"Bad Request", ["close"], None)
    assert ok.status == 200
    assert stats["http1.requests_rejected_with_underscores_in_headers"] == 1
    assert stats["http.hcm.downstream_cx_protocol_error"] == 1
    assert stats["http.hcm.downstream_rq_rx_reset"] == 1


def test_headers_with_underscores_dropped():
    (ex,), stats = run("fastproxy", "common_http_protocol_options: {headers_with_underscores_action: DROP_HEADER}",
                       [get("/", extra="X_Foo: 1\r\nx-bar_baz: 2\r\nx-ok: 3\r\n")],
                       response=b"HTTP/1.1 200 OK\r\nx_resp: 1\r\nContent-Length: 2\r\n\r\nok")
    assert ex.status == 200
    assert {k for k in ex.up[2] if "_" in k} == set() and ex.up_header("x-ok") == ["3"]
    assert ex.headers["x_resp"] == ["1"]                    # responses are left alone
    assert stats["http1.dropped_headers_with_underscores"] == 2
    (allowed,), _ = run("fastproxy", "", [get("/", extra="X_Foo: 1\r\n")])
    assert allowed.up_header("x_foo") == ["1"]


# ---------------------------------------------------------------- the same as Envoy

def _comparable(ex):
    """What must be equal between Envoy and fastproxy (header order and name case aside):
    the upstream's path and option-dependent headers, the client's status, Location, Via,
    whether it got a Date and an x-request-id, and the body."""
    def pick(headers):
        return {k: v for k, v in (headers or {}).items() if k in ("host", "via", "x-forwarded-for", "location",
                                                                  "x-hm")}
    def request_id(values, sent):
        if values is None or not re.fullmatch(UUID, values[0]):
            return values
        return "generated" if sent in (None, values) else "generated, not what was sent"
    up_rid = ex.up_header("x-request-id")
    return (ex.up_path, pick(ex.up[2] if ex.up else None), request_id(up_rid, None), ex.status,
            pick(ex.headers), ex.body, "date" in ex.headers,
            request_id(ex.headers.get("x-request-id"), up_rid))


ENVOY_TABLE = [(extra, [get(path) for path, _ in cases]) for extra, cases in _by_config(PATHS).items()] + [
    ("strip_any_host_port: true", [get("/", host=h) for h in ("h:80", "h:", "[::1]:80", "[::1]")]
     + [get("http://a:9/x")]),
    ("strip_matching_host_port: true", [get("/", host="h:{PORT}"), get("/", host="h:80"), get("http://a:{PORT}/x")]),
    ("via: 1.1 edge", [get("/", extra="Via: 1.0 a\r\n"), get("/"), get("/exact"), get("/missing")]),
    ("use_remote_address: true\nskip_xff_append: true", [get("/", extra="X-Forwarded-For: 1.2.3.4\r\n"), get("/")]),
    ("use_remote_address: true\npreserve_external_request_id: true", [get("/", extra="X-Request-Id: mine\r\n")]),
    ("always_set_request_id_in_response: true", [get("/", extra="X-Request-Id: mine\r\n"), get("/"),
                                                 get("/exact", extra="X-Request-Id: mine\r\n"), get("/missing")]),
    ("common_http_protocol_options: {headers_with_underscores_action: DROP_HEADER}",
     [get("/", extra="X_Foo: 1\r\nx-ok: 3\r\n")]),
    ("common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}",
     [get("/", extra="X_Foo: 1\r\n")]),
    (WS, [WS_REQUEST]),
]
FILTERED_TABLE = [
    ("path_with_escaped_slashes_action: REJECT_REQUEST", [get("/a%2fb"), get("/ok")]),
    ("path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT", [get("/a%2fb")]),
    ("normalize_path: true", [get("/a%00"), get("/a/../ok")]),
]
ALL_ENVOY = [(e, r, "") for e, r in ENVOY_TABLE] + [(e, r, HEADER_MUTATION) for e, r in FILTERED_TABLE]
COMPARED_STATS = ("http.hcm.downstream_rq_failed_path_normalization",
                  "http.hcm.downstream_rq_redirected_with_normalized_path", "http.hcm.downstream_rq_2xx",
                  "http.hcm.downstream_rq_3xx", "http.hcm.downstream_rq_4xx", "http.hcm.downstream_rq_5xx",
                  "http.hcm.downstream_cx_protocol_error", "http1.dropped_headers_with_underscores",
                  "http1.requests_rejected_with_underscores_in_headers")


@pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")
@pytest.mark.parametrize("extra, requests, filters", ALL_ENVOY,
                         ids=[(e.replace("\n", ";") or "defaults") + (" filtered" if f else "") for e, _, f in ALL_ENVOY])
def test_same_as_envoy(tmp_path, extra, requests, filters):
    response = (lambda c: c.sendall(WS_RESPONSE)) if extra == WS else OK
    ours, ours_stats = run("fastproxy", extra, requests, response=response, filters=filters)
    theirs, theirs_stats = run("envoy", extra, requests, response=response, tmp_path=tmp_path, filters=filters)
    for req, a, b in zip(requests, theirs, ours):
        assert _comparable(a) == _comparable(b), req
    for name in COMPARED_STATS:
        assert theirs_stats.get(name, 0) == ours_stats.get(name, 0), name


# ---------------------------------------------------------------- bodiless response framing

# (request, upstream response): answers without a body keep the length their head gave,
# as Envoy's codec does (a 200 with Content-Length: 0 once lost it, and an HTTP/1.1 client
# then read until the close).
BODILESS = [
    (get("/a"), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (get("/a"), b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
    (get("/a"), b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
    (b"HEAD /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
    (b"HEAD /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
]


def _framing(ex):
    return (ex.status, ex.headers.get("content-length"), ex.headers.get("transfer-encoding"), ex.body)


@pytest.mark.parametrize("request_, response", BODILESS, ids=lambda v: v.split(b"\r\n")[0].decode())
def test_bodiless_responses_keep_their_length(request_, response, tmp_path):
    (ours,), _ = run("fastproxy", "", [request_], response=response)
    if ENVOY is None:
        pytest.skip("envoy binary not on PATH nor next to sys.executable")
    (envoys,), _ = run("envoy", "", [request_], response=response, tmp_path=tmp_path)
    assert _framing(ours) == _framing(envoys)
