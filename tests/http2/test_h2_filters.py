"""Every kind of HTTP filter sees an HTTP/2 stream as it sees an HTTP/1.1 request (issue 15):
the same requests through the same filter chain, once over HTTP/1.1 (http.client) and once
over HTTP/2 (curl --http2-prior-knowledge, a real client), on two proxies started alike, give
the same statuses, bodies and filter-made response headers, and the upstream receives the
same requests. Native filters (health_check, cors, local_ratelimit, fault, header_mutation,
buffer: tests/http/filters/test_native_filters.py's chain) and the C filter example
(examples/c_filter); Python and async filters: tests/http2/test_h2_downstream.py."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from fastproxy import Proxy

from test_c_filter import c_filter, c_spec, make_proxy as c_proxy  # noqa: F401 (c_filter: a fixture)
from test_native_filters import get as h1_get, native_filters_yaml
from test_h2_downstream import H2Client

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")

# What differs by protocol and not by filter: hop-by-hop and per-request fields.
UNCOMPARED = {"date", "connection", "content-length", "transfer-encoding", "x-request-id",
              "x-forwarded-proto", "x-envoy-expected-rq-timeout-ms", "keep-alive",
              "x-envoy-upstream-service-time"}


def h2_get(p, path="/", method="GET", headers=None, body=None, tmp_path=None):
    """curl over HTTP/2 with prior knowledge: (status, lower-cased headers, body)."""
    host, port = p.listener_address("http")
    cmd = [CURL, "-sS", "--http2-prior-knowledge", "-X", method, "-D", "-", "--max-time", "10",
           f"http://{host}:{port}{path}"]
    if method == "HEAD":
        cmd[cmd.index("-X"):cmd.index("-X") + 2] = ["-I"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    if body is not None:
        cmd += ["--data-binary", "@-"]
    out = subprocess.run(cmd, input=body or b"", capture_output=True, timeout=20, check=True).stdout
    head, _, data = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/2 "), lines[0]
    fields = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        fields[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), fields, data


# The same fields from both clients (curl and http.client add different ones by default;
# curl sends Host as :authority).
SAME_FIELDS = {"Host": "example.test", "User-Agent": "t/1", "Accept": "*/*", "Accept-Encoding": "identity",
               "Content-Type": "application/octet-stream"}


def send_all(send, p, requests):
    return [comparable(send(p, path, method, dict(SAME_FIELDS, **(headers or {})), body))
            for path, method, headers, body in requests]


def comparable(answer):
    status, fields, body = answer
    return status, {k: v for k, v in fields.items() if k not in UNCOMPARED}, body


def upstream_view(upstream):
    """What the upstream received, minus the fields that say which protocol the client spoke."""
    return [(m, path, {k: v for k, v in h.items() if k not in UNCOMPARED and k != "te"}, body)
            for m, path, h, body in upstream.requests]


NATIVE_REQUESTS = [
    ("/healthz", "GET", None, None),
    ("/x", "GET", {"X-Secret": "1", "Origin": "https://app.example"}, None),
    ("/x", "OPTIONS", {"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"}, None),
    ("/abort", "GET", None, None),
    ("/limited", "GET", None, None),
    ("/limited", "GET", None, None),
    ("/limited", "GET", None, None),
    ("/small", "POST", None, b"y" * 500),
]
# (No 413 from the buffer filter here: a reply that comes before the whole request body is
# followed by RST_STREAM NO_ERROR (RFC 9113 8.1, as Envoy 1.40 sends it), which curl 7.88
# reports as error 92 while it is still uploading, whoever the proxy is. The 413 over HTTP/2
# is checked below with a frame-level client.)


def test_native_filters_answer_http2_as_http1(upstream):
    """health_check, cors, local_ratelimit (per route, 503 on the third), fault abort,
    header_mutation both ways and buffer: each answer and each request
    the upstream gets is the same whichever protocol the client spoke."""
    text = native_filters_yaml(upstream.port)
    answers = {}
    seen = {}
    for proto, send in (("h1", h1_get), ("h2", h2_get)):
        upstream.requests.clear()
        with Proxy.from_envoy(text, concurrency=1) as p:
            # (the native filters' stat blocks are process-wide: the second proxy starts
            # from the first one's counts)
            enforced = p.stats().get("http_local_rate_limit.yaml_rl_route.enforced", 0)
            answers[proto] = send_all(send, p, NATIVE_REQUESTS)
            if proto == "h2":
                answers["413"] = _too_large_over_h2(p)
            stats = p.stats()
            seen[proto] = (upstream_view(upstream), stats["http_local_rate_limit.yaml_rl_route.enforced"] - enforced)
    assert [a[0] for a in answers["h2"]] == [200, 200, 200, 503, 200, 200, 503, 200]
    assert answers["h2"][1][1]["x-served-by"] == "fastproxy"
    assert answers["h2"][2][1]["access-control-allow-methods"] == "GET, PUT"
    assert answers["h2"] == answers["h1"]
    assert seen["h2"] == seen["h1"]
    assert seen["h2"][0][0][2]["x-via-native"] == ["1"] and "x-secret" not in seen["h2"][0][0][2]
    assert answers["413"] == ("413", b"Payload Too Large", 0)


def _too_large_over_h2(p):
    """The buffer filter's 413 for a request whose Content-Length is past its limit, sent
    before the body: the answer ends the stream, then RST_STREAM NO_ERROR refuses the rest
    of the body (as Envoy 1.40 does)."""
    c = H2Client(p.listener_address("http"))
    sid = c.request("/big", method="POST", headers=[("content-length", "2000")], end=False)
    c.until(lambda: c.done(sid) and c.responses[sid]["reset"] is not None, what="413 then a reset")
    r = c.responses[sid]
    c.close()
    return r["headers"][":status"], bytes(r["data"]), r["reset"]


def test_the_c_filter_sees_http2_as_http1(c_filter, upstream):  # noqa: F811 (the fixture)
    """The C filter example: its request and response headers, its configured value
    replacing the client's, and its local 403 (no upstream request) over HTTP/2 as over
    HTTP/1.1."""
    config = {"header": "x-from-config", "value": "abc", "response_header": "x-resp"}
    requests = [("/h", "GET", {"X-From-Config": "client"}, None),
                ("/blocked", "GET", {"X-Block": "yes"}, None),     # (no body: see NATIVE_REQUESTS)
                ("/after", "GET", None, None)]
    answers, seen = {}, {}
    for proto, send in (("h1", h1_get), ("h2", h2_get)):
        upstream.requests.clear()
        with c_proxy([c_spec(c_filter, dict(config, block_header="x-block"))], upstream.port,
                     concurrency=1) as p:
            answers[proto] = send_all(send, p, requests)
        seen[proto] = upstream_view(upstream)
    assert [a[0] for a in answers["h2"]] == [200, 403, 200]
    assert answers["h2"][0][1]["x-resp"] == "abc"
    assert answers["h2"] == answers["h1"]
    assert seen["h2"] == seen["h1"] and [r[1] for r in seen["h2"]] == ["/h", "/after"]
    assert seen["h2"][0][2]["x-from-config"] == ["abc"]
