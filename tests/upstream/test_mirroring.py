"""Request mirroring (route request_mirror_policies): the mirror cluster gets a shadow copy of
each request (method, path after the route's rewrites, fields with the "-shadow" authority,
body), its answer is dropped, and nothing that happens to it (500, reset, hang, refused
connections, no host, a removed cluster) reaches the client. Each scenario runs the same
YAML through the real Envoy 1.40 and fastproxy in the same test, and compares what the
client saw, what the mirror received and the mirror cluster's stats.

Everything is awaited (the mirror's receipt, the stats), never slept for.
"""
from __future__ import annotations

import http.client
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import (run_on, admin_get, envoy_yaml, find_envoy, http_listener, static_cluster, wait_for)
from http_upstreams import RawHttpUpstream, envoy_local_address, http_request

import fastproxy
from fastproxy.config import load_envoy
from fastproxy.errors import ConfigError
from fastproxy.http.mirror import MirrorPolicy

ENVOY = find_envoy()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="envoy binary not on PATH nor next to sys.executable")
KINDS = ["envoy", "fastproxy"]
M = "cluster.mirror."
ROUTE0 = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config" \
         ".virtual_hosts[0].routes[0].route"


def ok(method, path, headers, body):
    payload = b"primary " + method.encode() + b" " + str(len(body)).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)


def yaml_for(routes, primary, mirror_endpoints, *extra_clusters, **mirror_fields):
    return envoy_yaml([http_listener(routes)],
                      [static_cluster("primary", [primary.port], connect_timeout="1s"),
                       static_cluster("mirror", mirror_endpoints, connect_timeout="1s", **mirror_fields),
                       *extra_clusters])


def run(kind, text, tmp_path, drive):
    """drive(addr, admin) through Envoy or fastproxy on the same YAML; its result."""
    return run_on(kind, text, tmp_path, drive)


def stats(admin, prefix=M):
    out = {}
    for line in admin_get(admin, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix) and value.lstrip("-").isdigit():
            out[name[len(prefix):]] = int(value)
    return out


def host_counters(admin, cluster="mirror"):
    """The per-host request counters of /clusters: {name: value} for the cluster's host."""
    out = {}
    for line in admin_get(admin, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] in ("rq_total", "rq_success", "rq_error",
                                                                     "rq_timeout", "rq_active", "cx_connect_fail"):
            out[parts[2]] = int(parts[3])
    return out


def await_stats(admin, **want):
    """Wait until the mirror cluster's stats have the values wanted (a__b is a.b)."""
    def check():
        st = stats(admin)
        return all(st.get(k.replace("__", "."), 0) == v for k, v in want.items()) and st
    return wait_for(check, timeout=15, msg=f"mirror stats {want}")


# --------------------------------------------------------------------------- what the mirror gets

ROUTES = """
- match: {prefix: /a}
  route:
    cluster: primary
    prefix_rewrite: /rewritten
    request_mirror_policies:
    - cluster: mirror
    - cluster: mirror
      disable_shadow_host_suffix_append: true
      trace_sampled: false
"""

BIG = 6 << 20


def _chunks(data, size=65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("kind", KINDS)
def test_the_mirror_gets_the_request(kind, tmp_path):
    """Method, path after the prefix_rewrite, the fields (Host/:authority + "-shadow" unless
    disable_shadow_host_suffix_append; x-envoy-internal and x-forwarded-for as Envoy's async
    client adds them), bodies of several sizes, a large one streamed (chunked); two policies
    on one route each send their copy; the client sees the primary's answers only."""
    primary, mirror = RawHttpUpstream(ok), RawHttpUpstream()
    big = os.urandom(BIG)
    sent = [("GET", "/a/x?q=1", None), ("POST", "/a/small", b"hello"), ("PUT", "/a/mid", os.urandom(200_000))]

    def drive(addr, admin):
        answers = []
        for method, path, body in sent:
            r, data = http_request(addr, method, path, body=body,
                                   headers={"Host": "example.com:8080", "x-custom": "yes"})
            answers.append((r.status, data))
        conn = http.client.HTTPConnection(*addr, timeout=30)
        conn.request("POST", "/a/big", body=_chunks(big), headers={"Host": "[::1]:80"}, encode_chunked=True)
        r = conn.getresponse()
        answers.append((r.status, r.read()))
        conn.close()
        wait_for(lambda: len(mirror.requests) == 8, timeout=20, msg="8 shadow requests")
        return answers, await_stats(admin, upstream_rq_total=8, upstream_rq_2xx=8, upstream_rq_completed=8)

    try:
        answers, st = run(kind, yaml_for(ROUTES, primary, [mirror.port]), tmp_path, drive)
    finally:
        primary.close()
        mirror.close()
    assert answers == [(200, b"primary GET 0"), (200, b"primary POST 5"), (200, b"primary PUT 200000"),
                       (200, b"primary POST %d" % BIG)]
    got = sorted(mirror.requests, key=lambda m: (m[1], m[2]["host"][0]))
    assert [(m[0], m[1], m[2]["host"][0]) for m in got] == [
        ("POST", "/rewritten/big", "[::1]-shadow:80"), ("POST", "/rewritten/big", "[::1]:80"),
        ("PUT", "/rewritten/mid", "example.com-shadow:8080"), ("PUT", "/rewritten/mid", "example.com:8080"),
        ("POST", "/rewritten/small", "example.com-shadow:8080"), ("POST", "/rewritten/small", "example.com:8080"),
        ("GET", "/rewritten/x?q=1", "example.com-shadow:8080"), ("GET", "/rewritten/x?q=1", "example.com:8080")]
    bodies = {m[1]: m[3] for m in got}
    assert bodies == {"/rewritten/big": big, "/rewritten/mid": sent[2][2], "/rewritten/small": b"hello",
                      "/rewritten/x?q=1": b""}
    for m in got:
        h = m[2]
        assert h["x-envoy-original-path"][0].startswith("/a/")
        assert h["x-envoy-internal"] == ["true"] and h["x-forwarded-for"] == [envoy_local_address()]
        assert h["x-envoy-expected-rq-timeout-ms"] == ["15000"]
        if not m[1].endswith("big"):
            assert h["x-custom"] == ["yes"]
    # The primary got the same request, without the shadow's additions.
    p = {m[1]: m[2] for m in primary.requests}
    assert p["/rewritten/small"]["host"] == ["example.com:8080"] and "x-envoy-internal" not in p["/rewritten/small"]
    # The request ids are the primary's.
    ids = {m[1]: m[2]["x-request-id"] for m in primary.requests}
    assert all(m[2]["x-request-id"] == ids[m[1]] for m in got)
    assert st["upstream_rq_200"] == 8


BUFFER_FILTER = {"name": "envoy.filters.http.buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1 << 20}}


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_through_decoder_filters_is_mirrored(kind, tmp_path):
    """With a decoder filter that holds the body (the buffer filter), the shadow gets the
    body the filters pass, as the primary does."""
    primary, mirror = RawHttpUpstream(ok), RawHttpUpstream()
    body = os.urandom(300_000)

    def drive(addr, admin):
        out = [http_request(addr, "POST", "/a/f", body=body)[1], http_request(addr, "GET", "/a/g")[1]]
        wait_for(lambda: len(mirror.requests) == 4, timeout=10, msg="4 shadow requests")
        return out, await_stats(admin, upstream_rq_2xx=4)

    text = envoy_yaml([http_listener(ROUTES, http_filters=[BUFFER_FILTER])],
                      [static_cluster("primary", [primary.port]), static_cluster("mirror", [mirror.port])])
    try:
        out, _ = run(kind, text, tmp_path, drive)
    finally:
        primary.close()
        mirror.close()
    assert out == [b"primary POST 300000", b"primary GET 0"]
    assert sorted((m[1], m[3] == body, len(m[3])) for m in mirror.requests) == [
        ("/rewritten/f", True, 300_000), ("/rewritten/f", True, 300_000),
        ("/rewritten/g", False, 0), ("/rewritten/g", False, 0)]


@pytest.mark.parametrize("kind", KINDS)
def test_an_http2_client_is_mirrored(kind, tmp_path):
    """An HTTP/2 client (curl, prior knowledge) to an HTTP/1.1 primary and mirror: the shadow
    gets the request with the "-shadow" authority and its body."""
    import shutil
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    primary, mirror = RawHttpUpstream(ok), RawHttpUpstream()
    body = os.urandom(200_000)
    (tmp_path / "body").write_bytes(body)

    def drive(addr, admin):
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "--data-binary", f"@{tmp_path / 'body'}",
                              "-H", "Host: h2.example", f"http://{addr[0]}:{addr[1]}/a/h2"],
                             capture_output=True, timeout=20).stdout
        wait_for(lambda: len(mirror.requests) == 2, timeout=10, msg="2 shadow requests")
        return out, await_stats(admin, upstream_rq_2xx=2)

    text = envoy_yaml([http_listener(ROUTES, codec_type="HTTP2")],
                      [static_cluster("primary", [primary.port]), static_cluster("mirror", [mirror.port])])
    try:
        out, _ = run(kind, text, tmp_path, drive)
    finally:
        primary.close()
        mirror.close()
    assert out == b"primary POST 200000"
    assert sorted((m[0], m[1], m[2]["host"][0], m[3] == body) for m in mirror.requests) == [
        ("POST", "/rewritten/h2", "h2.example", True), ("POST", "/rewritten/h2", "h2.example-shadow", True)]


def _h2_upstream():
    """tests/http2's HTTP/2 test upstream (h2c)."""
    import pathlib
    import sys
    here = str(pathlib.Path(__file__).resolve().parents[1] / "http2")
    if here not in sys.path:
        sys.path.insert(0, here)
    from test_h2_upstream import H2Upstream
    return H2Upstream()


H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


@pytest.mark.parametrize("kind", KINDS)
def test_an_http2_mirror_gets_the_request(kind, tmp_path):
    """An HTTP/2 mirror cluster behind an HTTP/1.1 primary: the shadow is a stream with the
    "-shadow" :authority, the body (Content-Length and chunked) and the trailers' absence
    as sent; the client sees the primary's answers."""
    primary, mirror = RawHttpUpstream(ok), _h2_upstream()
    body = os.urandom(300_000)

    def drive(addr, admin):
        out = [http_request(addr, "POST", "/a/one", body=body, headers={"Host": "svc.example"})[1]]
        conn = http.client.HTTPConnection(*addr, timeout=10)
        conn.request("POST", "/a/two", body=iter([b"abc", b"x" * 70000]), encode_chunked=True,
                     headers={"Host": "svc.example:81"})
        out.append(conn.getresponse().read())
        conn.close()
        wait_for(lambda: len(mirror.requests) == 4, timeout=10, msg="4 HTTP/2 shadow streams")
        return out, await_stats(admin, upstream_rq_total=4, upstream_rq_2xx=4, upstream_cx_http2_total=1)

    text = envoy_yaml([http_listener(ROUTES)],
                      [static_cluster("primary", [primary.port]),
                       static_cluster("mirror", [mirror.port], typed_extension_protocol_options=H2_OPTIONS)])
    try:
        out, st = run(kind, text, tmp_path, drive)
    finally:
        primary.close()
        mirror.close()
    assert out == [b"primary POST 300000", b"primary POST 70003"]
    seen = sorted((dict(h)[":path"], dict(h)[":authority"], b) for _, _, h, b, _ in mirror.requests)
    assert seen == [("/rewritten/one", "svc.example", body), ("/rewritten/one", "svc.example-shadow", body),
                    ("/rewritten/two", "svc.example-shadow:81", b"abc" + b"x" * 70000),
                    ("/rewritten/two", "svc.example:81", b"abc" + b"x" * 70000)]


# --------------------------------------------------------------------------- failures are invisible

ONE = """
- match: {prefix: /}
  route:
    cluster: primary
    timeout: 3s
    request_mirror_policies:
    - cluster: mirror
"""


def _reset(c):
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _scenario(name, hang):
    """The mirror's endpoints (a running upstream, or none) and the stats it ends with."""
    if name == "500":
        up = RawHttpUpstream(lambda *a: b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nnope")
        return up, [up.port], dict(upstream_rq_total=3, upstream_rq_5xx=3, upstream_rq_500=3)
    if name == "reset":
        up = RawHttpUpstream(lambda *a: _reset)
        return up, [up.port], dict(upstream_rq_total=3, upstream_rq_503=3, upstream_cx_destroy_remote_with_active_rq=3)
    if name == "hang":
        up = RawHttpUpstream(lambda *a: (lambda c: hang.wait(30)))
        return up, [up.port], dict(upstream_rq_total=3, upstream_rq_timeout=3, upstream_rq_504=3)
    if name == "refused":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))        # bound, never listening: connections are refused
        up = s
        return up, [s.getsockname()[1]], dict(upstream_cx_connect_fail=3, upstream_rq_503=3)
    assert name == "no-host"
    return None, [], dict(upstream_cx_none_healthy=3, upstream_rq_503=3)


def _host(total, error, timeout=0, connect_fail=0):
    return dict(rq_total=total, rq_error=error, rq_success=0, rq_timeout=timeout, rq_active=0,
                cx_connect_fail=connect_fail)


HOSTS = {"500": _host(3, 3), "reset": _host(3, 3), "hang": _host(3, 3, timeout=3),
         "refused": _host(0, 3, connect_fail=3), "no-host": {}}


@pytest.mark.parametrize("scenario", ["500", "reset", "hang", "refused", "no-host"])
@pytest.mark.parametrize("kind", KINDS)
def test_mirror_failures_never_reach_the_client(kind, scenario, tmp_path):
    """Whatever the mirror does, the client gets the primary's answer, at once (a hanging
    mirror delays nothing: its shadow times out after the route's 3 s on its own); the
    mirror cluster's stats and its host's counters say what happened, as Envoy's do."""
    hang = threading.Event()
    primary = RawHttpUpstream(ok)
    up, endpoints, want = _scenario(scenario, hang)

    def drive(addr, admin):
        out = []
        for body in (None, b"x" * 1000, b"y" * 100_000):
            t0 = time.monotonic()
            r, data = http_request(addr, "POST" if body else "GET", "/p", body=body)
            out.append((r.status, data, time.monotonic() - t0))
        return out, await_stats(admin, **want), host_counters(admin)

    try:
        out, st, hosts = run(kind, yaml_for(ONE, primary, endpoints), tmp_path, drive)
    finally:
        hang.set()
        primary.close()
        if up is not None:
            up.close()
    assert [(s, d) for s, d, _ in out] == [(200, b"primary GET 0"), (200, b"primary POST 1000"),
                                           (200, b"primary POST 100000")]
    assert max(t for _, _, t in out) < 2.5      # the hanging shadow's 3 s timeout is not waited for
    assert st.get("upstream_rq_2xx", 0) == 0
    # The mirror host's own counters (/clusters), as Envoy keeps them.
    assert hosts == HOSTS[scenario]


@pytest.mark.parametrize("kind", KINDS)
def test_the_shadow_outlives_the_primary(kind, tmp_path):
    """A mirror slower than the primary still gets its whole request and answers it after
    the client has its response: the shadow completes on its own (counted 2xx)."""
    release = threading.Event()

    def slow(method, path, headers, body):
        def answer(c):
            release.wait(10)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return answer
    primary, mirror = RawHttpUpstream(ok), RawHttpUpstream(slow)

    def drive(addr, admin):
        r, data = http_request(addr, "POST", "/p", body=b"z" * 50_000)
        wait_for(lambda: len(mirror.requests) == 1, timeout=10, msg="the mirror got the request")
        assert stats(admin).get("upstream_rq_completed", 0) == 0      # still waiting for the mirror
        release.set()
        return (r.status, data), await_stats(admin, upstream_rq_2xx=1, upstream_rq_active=0)

    try:
        answer, st = run(kind, yaml_for(ONE, primary, [mirror.port]), tmp_path, drive)
    finally:
        release.set()
        primary.close()
        mirror.close()
    assert answer == (200, b"primary POST 50000")
    assert mirror.requests[0][3] == b"z" * 50_000


def test_stopping_with_shadows_in_flight():
    """fastproxy: a proxy stopped while shadows wait on a hanging mirror (one whole, one still
    fed by an upload the client has not finished) ends them with its workers: nothing leaks or
    is touched after its free (the ASan run checks)."""
    hang = threading.Event()
    primary = RawHttpUpstream(ok)
    mirror = RawHttpUpstream(lambda *a: (lambda c: hang.wait(30)))
    p = fastproxy.Proxy.from_envoy(yaml_for(ONE, primary, [mirror.port]), concurrency=1)
    p.start()
    partial = None
    try:
        addr = p.listener_address("web")
        assert http_request(addr, "POST", "/p", body=b"whole")[1] == b"primary POST 5"
        wait_for(lambda: len(mirror.requests) == 1, msg="the mirror holds the shadow")
        partial = socket.create_connection(addr)
        partial.sendall(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nhalf")
        wait_for(lambda: mirror.connections == 2 and p.stats()["cluster.mirror.upstream_rq_total"] == 2,
                 msg="the second shadow started")
    finally:
        p.stop(drain_timeout=0.2)
        hang.set()
        if partial is not None:
            partial.close()
        primary.close()
        mirror.close()


def test_a_removed_mirror_cluster_is_skipped():
    """fastproxy: a mirror cluster taken out by an update while an RDS route table still names
    it is skipped, as Envoy's shadow writer skips a cluster CDS removed; the client is
    unaffected, and the shadows resume when the cluster comes back. (A static Envoy config
    cannot remove a cluster a route names.)"""
    from fastproxy.http import Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost
    from fastproxy.http.model import Rds
    from fastproxy.model import ConfigSource
    primary, mirror = RawHttpUpstream(ok), RawHttpUpstream()
    clusters = [fastproxy.Cluster(name, [fastproxy.Endpoint("127.0.0.1", up.port)])
                for name, up in (("primary", primary), ("mirror", mirror))]
    rc = RouteConfiguration(name="r", virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="primary",
                                                        request_mirror_policies=[MirrorPolicy("mirror")]))])])
    hcm = fastproxy.http.HttpConnectionManager("web", rds=Rds("r", ConfigSource(ads=True)))
    p = fastproxy.Proxy([fastproxy.Listener("web", hcm, port=0)], clusters, concurrency=1)
    p.start()
    try:
        p.update(routes=[rc])
        addr = p.listener_address("web")
        assert http_request(addr, "GET", "/p")[1] == b"primary GET 0"
        wait_for(lambda: len(mirror.requests) == 1, msg="mirrored")
        p.update(clusters=clusters[:1])
        for _ in range(3):
            assert http_request(addr, "GET", "/p")[1] == b"primary GET 0"
        assert len(primary.requests) == 4 and len(mirror.requests) == 1
        p.update(clusters=clusters)
        assert http_request(addr, "GET", "/p")[1] == b"primary GET 0"
        wait_for(lambda: len(mirror.requests) == 2, msg="mirrored again")
    finally:
        p.stop(drain_timeout=0.5)
        primary.close()
        mirror.close()


def test_a_mirror_that_cannot_keep_up_is_abandoned(tmp_path):
    """fastproxy: a mirror that stops reading is abandoned once its unsent bytes pass the
    bound (8 MiB), counted in the primary cluster's retry_or_shadow_abandoned; the primary's
    upload goes on at its own pace. (Envoy 1.40 pushes back on the downstream instead: its
    shadow shares the router's watermarks, so a stuck mirror stalls the upload; we do not
    run that here.)"""
    stop = threading.Event()
    primary = RawHttpUpstream(ok)
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(8)                      # accepted by the kernel, never read
    text = yaml_for(ONE, primary, [stuck.getsockname()[1]])
    p = fastproxy.Proxy.from_envoy(text, concurrency=1)
    p.start()
    try:
        big = b"b" * (40 << 20)
        r, data = http_request(p.listener_address("web"), "POST", "/p", body=big, timeout=30)
        assert (r.status, data) == (200, b"primary POST %d" % len(big))
        wait_for(lambda: p.stats()["cluster.primary.retry_or_shadow_abandoned"] == 1, msg="abandoned")
    finally:
        stop.set()
        p.stop(drain_timeout=0.5)
        primary.close()
        stuck.close()


# --------------------------------------------------------------------------- runtime_fraction

FRACTION = """
- match: {prefix: /}
  route:
    cluster: primary
    request_mirror_policies:
    - cluster: mirror
      runtime_fraction:
        default_value: %s
        runtime_key: mirror.share
"""


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fraction, n, low, high", [
    ("{numerator: 0}", 60, 0, 0),
    ("{numerator: 100}", 60, 60, 60),
    ("{numerator: 5000, denominator: TEN_THOUSAND}", 400, 140, 260),   # 50% +- 6 sigma
])
def test_runtime_fraction(kind, fraction, n, low, high, tmp_path):
    """runtime_fraction's default value is the share mirrored (the runtime key is never set:
    fastproxy's runtime has no such key, and an unset key in Envoy means the default). A shadow
    is started with its primary's upstream request, so once every primary answered, the
    mirror cluster's request count is final."""
    primary, mirror = RawHttpUpstream(ok), RawHttpUpstream()

    def drive(addr, admin):
        conn = http.client.HTTPConnection(*addr, timeout=10)
        for _ in range(n):
            conn.request("GET", "/x")
            assert conn.getresponse().read() == b"primary GET 0"
        conn.close()

        def settled():
            st = stats(admin)
            busy = st.get("upstream_rq_active", 0) + st.get("upstream_rq_pending_active", 0)
            return busy == 0 and st.get("upstream_rq_completed", 0) == st.get("upstream_rq_total", 0) and st
        return wait_for(settled, timeout=15, msg="shadows settled")

    try:
        st = run(kind, yaml_for(FRACTION % fraction, primary, [mirror.port]), tmp_path, drive)
    finally:
        primary.close()
        mirror.close()
    total = st.get("upstream_rq_total", 0)
    assert low <= total <= high
    assert len(mirror.requests) == total
    if high == 0:
        assert st.get("upstream_cx_total", 0) == 0 and st.get("upstream_rq_pending_total", 0) == 0


# --------------------------------------------------------------------------- config

def _route_yaml(policies):
    return envoy_yaml([http_listener(f"""
- match: {{prefix: /}}
  route:
    cluster: primary
    request_mirror_policies: {policies}
""")], [static_cluster("primary", [1]), static_cluster("mirror", [2])])


BAD = [
    ("[{cluster: nope}]", ".request_mirror_policies[0].cluster", "unknown cluster 'nope'"),
    ("[{cluster: mirror}, {cluster: mirror, cluster_header: x-c}]", ".request_mirror_policies[1].cluster_header",
     "only one of"),
    ("[{runtime_fraction: {default_value: {numerator: 1}}}]", ".request_mirror_policies[0].cluster",
     "exactly one of"),
    ("[{cluster: mirror, runtime_fraction: {default_value: {numerator: 1, denominator: THOUSAND}}}]",
     ".request_mirror_policies[0].runtime_fraction.default_value.denominator", "THOUSAND"),
    ("[{cluster: mirror, trace_sampled: maybe}]", ".request_mirror_policies[0].trace_sampled", "true or false"),
    ("[{cluster: mirror, shadow: true}]", ".request_mirror_policies[0].shadow", "shadow"),
]


@pytest.mark.parametrize("policies, path, message", BAD)
def test_bad_mirror_policies_are_refused_with_their_path(policies, path, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_envoy(_route_yaml(policies))
    assert e.value.path == ROUTE0 + path and message in str(e.value), str(e.value)
    if ENVOY is not None:
        cfg = tmp_path / "e.yaml"
        cfg.write_text(_route_yaml(policies))
        r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
                           capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
        assert r.returncode != 0, "Envoy refuses it too"


def test_cluster_header_is_refused_as_not_built(tmp_path):
    """cluster_header (the mirror cluster named by a request header) is Envoy's, not built here."""
    with pytest.raises(ConfigError) as e:
        load_envoy(_route_yaml("[{cluster_header: x-mirror}]"))
    assert e.value.path == ROUTE0 + ".request_mirror_policies[0].cluster_header"
    assert "unsupported" in str(e.value)


def test_the_python_api_checks_policies():
    ep = [fastproxy.Endpoint("127.0.0.1", 1)]
    route = fastproxy.http.Route(fastproxy.http.RouteMatch(prefix="/"), route=fastproxy.http.RouteAction(
        cluster="a", request_mirror_policies=[MirrorPolicy(cluster="b")]))
    hcm = fastproxy.http.HttpConnectionManager("h", route_config=fastproxy.http.RouteConfiguration(
        virtual_hosts=[fastproxy.http.VirtualHost("v", ["*"], [route])]))
    with pytest.raises(ConfigError) as e:
        fastproxy.Proxy([fastproxy.Listener("web", hcm, port=0)], [fastproxy.Cluster("a", ep)])
    assert e.value.path.endswith(".request_mirror_policies[0].cluster") and "unknown cluster 'b'" in str(e.value)
    p = fastproxy.Proxy([fastproxy.Listener("web", hcm, port=0)], [fastproxy.Cluster("a", ep), fastproxy.Cluster("b", ep)])
    del p
    with pytest.raises(ConfigError) as e:
        MirrorPolicy(cluster="b", runtime_fraction=fastproxy.http.FractionalPercent(5, "TEN")).validate("m")
    assert e.value.path == "m.runtime_fraction.default_value.denominator"


DUMPED = """
- match: {prefix: /}
  route:
    cluster: primary
    request_mirror_policies:
    - cluster: mirror
      runtime_fraction: {default_value: {numerator: 25, denominator: TEN_THOUSAND}, runtime_key: k}
      trace_sampled: true
    - cluster: mirror
      disable_shadow_host_suffix_append: true
"""


def test_the_config_dump_writes_mirror_policies_back(tmp_path):
    """The dump has every policy field; Envoy accepts it, and loading it gives the same config."""
    from fastproxy.config.dump import bootstrap_json
    import json
    text = envoy_yaml([http_listener(DUMPED)], [static_cluster("primary", [1]), static_cluster("mirror", [2])])
    boot = load_envoy(text)
    dumped = bootstrap_json(boot)
    again = load_envoy(dumped)
    assert again.listeners == boot.listeners
    action = boot.listeners[0].handler.route_config.virtual_hosts[0].routes[0].route
    assert action.request_mirror_policies == [
        MirrorPolicy("mirror", fastproxy.http.FractionalPercent(25, "TEN_THOUSAND"), "k", True, False),
        MirrorPolicy("mirror", disable_shadow_host_suffix_append=True)]
    if ENVOY is not None:
        cfg = tmp_path / "dump.json"
        cfg.write_text(json.dumps(dumped) if not isinstance(dumped, str) else dumped)
        r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
                           capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_shadow_responses_feed_the_mirror_hosts_outlier_detection(kind, tmp_path):
    """A shadow's 503s count toward the mirror host's consecutive_5xx as the primary's
    would (Envoy's shadow goes through a router): the second ejects it."""
    primary = RawHttpUpstream(ok)
    mirror = RawHttpUpstream(lambda m, p, h, b: b"HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n")
    routes = "- match: {prefix: /}\n  route: {cluster: primary, request_mirror_policies: [{cluster: mirror}]}\n"
    od = {"consecutive_5xx": 2, "interval": "30s", "base_ejection_time": "30s", "max_ejection_percent": 100}

    def drive(addr, admin):
        for i in range(2):
            assert http_request(addr, "GET", "/x")[0].status == 200
            wait_for(lambda: len(mirror.requests) == i + 1, timeout=10, msg="shadow request")
        return await_stats(admin, outlier_detection__ejections_enforced_consecutive_5xx=1)

    try:
        run(kind, yaml_for(routes, primary, [mirror.port], outlier_detection=od), tmp_path, drive)
    finally:
        primary.close()
        mirror.close()
