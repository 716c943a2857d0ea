"""The HTTP/1.1 codec (core/http/codec_h1*.pxi) and its pure-Python twin (fastproxy._testing.http1_reference).

Every test runs against both implementations. Events are compared after joining adjacent
("data", ...) events, because how a body is cut into segments depends on how the input was
cut, and nothing else may.
"""
from __future__ import annotations

import random

import pytest

from fastproxy import _testing as compiled
from fastproxy._testing import http1_reference as reference

IMPLS = {"compiled": compiled, "reference": reference}


@pytest.fixture(params=list(IMPLS), ids=list(IMPLS))
def impl(request):
    return IMPLS[request.param]


from fuzz_http1 import coalesce  # noqa: E402  (join adjacent data/tunnel events; one home)


def parse(impl, data: bytes, kind="request", *, splits=None, eof=False, **kw):
    """Feed `data` (cut at the `splits` offsets) into a new parser; coalesced events."""
    p = impl.H1TestParser(kind, **kw)
    events = []
    cuts = [0, *sorted(splits or ()), len(data)]
    for a, b in zip(cuts, cuts[1:]):
        events += p.feed(data[a:b])
    if eof:
        events += p.feed_eof()
    return coalesce(events)


def error_of(name: str, kind="request"):
    """The error event for the HTTP1_ERRORS entry `name`."""
    for n, status, reason in reference.HTTP1_ERRORS:
        if n == name:
            return ("error", status if kind == "request" else 502, reason)
    raise KeyError(name)


def heads(events):
    return [ev[1] for ev in events if ev[0] == "head"]


def body(events):
    return b"".join(ev[1] for ev in events if ev[0] == "data")


H = b"Host: example.com\r\n"


# ---------------------------------------------------------------------------- basics

def test_error_tables_are_the_same():
    assert compiled.HTTP1_ERRORS == reference.HTTP1_ERRORS


def test_default_limits_are_envoys(impl):
    assert impl.H1TestParser().limits == {"max_head": 60 * 1024, "max_start_line": 60 * 1024,
                                          "max_fields": 100}
    assert impl.H1TestParser(max_head=1000, max_start_line=5000).limits["max_start_line"] == 1000


def test_simple_get(impl):
    ev = parse(impl, b"GET /index.html?q=1 HTTP/1.1\r\n" + H + b"Accept: */*\r\n\r\n")
    assert ev == [("head", {
        "method": b"GET", "target": b"/index.html?q=1", "version": (1, 1),
        "headers": ((b"Host", b"example.com"), (b"Accept", b"*/*")),
        "keep_alive": True, "upgrade": False, "connect": False, "expect_continue": False,
        "interim": False, "body": "none", "content_length": None}), ("done",)]


def test_field_values_lose_surrounding_whitespace_only(impl):
    ev = parse(impl, b"GET / HTTP/1.1\r\n" + H + b"X-A:\t  a \t b  \t\r\nX-B:\r\nX-C: \xff\x80\r\n\r\n")
    assert heads(ev)[0]["headers"][1:] == ((b"X-A", b"a \t b"), (b"X-B", b""), (b"X-C", b"\xff\x80"))


def test_names_keep_their_case_and_order(impl):
    ev = parse(impl, b"GET / HTTP/1.1\r\nhOsT: a\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n")
    assert heads(ev)[0]["headers"] == ((b"hOsT", b"a"), (b"X-Dup", b"1"), (b"x-dup", b"2"))


def test_content_length_body(impl):
    ev = parse(impl, b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello")
    h = heads(ev)[0]
    assert (h["body"], h["content_length"]) == ("length", 5)
    assert ev[1:] == [("data", b"hello"), ("done",)]


def test_content_length_zero_is_no_body(impl):
    ev = parse(impl, b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n")
    assert heads(ev)[0]["body"] == "none" and heads(ev)[0]["content_length"] == 0
    assert ev[-1] == ("done",)


def test_content_length_leading_zeros_and_max(impl):
    ev = parse(impl, b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0005\r\n\r\nhello")
    assert heads(ev)[0]["content_length"] == 5 and body(ev) == b"hello"
    ev = parse(impl, b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 9223372036854775807\r\n\r\n")
    assert heads(ev)[0]["content_length"] == 2**63 - 1 and ev[-1] == ("head", heads(ev)[0])


def test_chunked_body_with_extensions_and_trailers(impl):
    msg = (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, CHUNKED\r\n\r\n"
           b"5;name=value;flag\r\nhello\r\n"
           b"6 ; q=\"a \\\"quoted\\\" ;x\" ;y = 1\r\n world\r\n"
           b"A\r\n0123456789\r\n"
           b"0;last\r\nExpires: never\r\nX-Checksum:  abc \r\n\r\n")
    ev = parse(impl, msg)
    assert heads(ev)[0]["body"] == "chunked"
    assert ev[1:] == [("data", b"hello world0123456789"),
                      ("trailers", ((b"Expires", b"never"), (b"X-Checksum", b"abc"))), ("done",)]


def test_chunked_without_trailers_reports_none(impl):
    ev = parse(impl, b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
               b"1\r\nx\r\n0\r\n\r\n")
    assert [e[0] for e in ev] == ["head", "data", "done"]


def test_chunk_size_hex_upper_lower_and_leading_zeros(impl):
    data = bytes(range(256)) * 2
    msg = (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
           b"0000fF\r\n" + data[:255] + b"\r\n101\r\n" + data[255:] + b"\r\n000\r\n\r\n")
    assert body(parse(impl, msg)) == data


def test_leading_empty_lines_before_a_request_are_ignored(impl):
    ev = parse(impl, b"\r\n\r\nGET / HTTP/1.1\r\n" + H + b"\r\n")
    assert heads(ev)[0]["target"] == b"/"


@pytest.mark.parametrize("target", [
    b"/", b"/a/b;c=d?x=1&y=%20#".rstrip(b"#"), b"//double", b"/a|b{c}^`\\\"<>",
    b"http://example.com", b"http://example.com:8080/p?q", b"https://[::1]:443/",
    b"HTTP://EXAMPLE.COM/", b"svn+ssh://host.example/", b"http://a.b?x",
])
def test_accepted_targets(impl, target):
    ev = parse(impl, b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n")
    assert heads(ev)[0]["target"] == target


def test_asterisk_form_for_options(impl):
    ev = parse(impl, b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n")
    assert heads(ev)[0]["target"] == b"*"


@pytest.mark.parametrize("method", [b"GET", b"PROPFIND", b"M-SEARCH", b"get", b"X!#$%&'*+-.^_`|~9"])
def test_any_token_is_a_method(impl, method):
    ev = parse(impl, method + b" / HTTP/1.1\r\n" + H + b"\r\n")
    assert heads(ev)[0]["method"] == method


@pytest.mark.parametrize("host", [b"", b"a", b"example.com:80", b"[::1]", b"[::1]:8080",
                                  b"127.0.0.1:1", b"xn--bcher-kva.example", b"a:", b"a%41!$&'()*+,;=:65535",
                                  b"%41%42", b"ex%2Dample.test:80", b"a%fF"])
def test_accepted_host_values(impl, host):
    ev = parse(impl, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert heads(ev)[0]["headers"] == ((b"Host", host),)


def test_http10_needs_no_host(impl):
    ev = parse(impl, b"GET / HTTP/1.0\r\n\r\n")
    assert heads(ev)[0]["version"] == (1, 0)


# ---------------------------------------------------------------------------- connection

@pytest.mark.parametrize("version, connection, keep_alive", [
    (b"1.1", None, True),
    (b"1.1", b"close", False),
    (b"1.1", b"Close", False),
    (b"1.1", b"keep-alive, CLOSE", False),
    (b"1.1", b"foo,,  close  ", False),
    (b"1.1", b"closed", True),
    (b"1.1", b"keep-alive", True),
    (b"1.0", None, False),
    (b"1.0", b"keep-alive", True),
    (b"1.0", b"Keep-Alive", True),
    (b"1.0", b"foo, keep-alive", True),
    (b"1.0", b"keep-alive, close", False),
    (b"1.0", b"keep-alives", False),
])
def test_keep_alive_rules(impl, version, connection, keep_alive):
    msg = b"GET / HTTP/" + version + b"\r\n" + H
    if connection is not None:
        msg += b"Connection: " + connection + b"\r\n"
    assert heads(parse(impl, msg + b"\r\n"))[0]["keep_alive"] is keep_alive


def test_connection_lists_across_several_lines(impl):
    ev = parse(impl, b"GET / HTTP/1.0\r\nConnection: foo\r\nConnection: keep-alive\r\n\r\n")
    assert heads(ev)[0]["keep_alive"] is True


def test_pipelined_requests(impl):
    msgs = [b"GET /1 HTTP/1.1\r\n" + H + b"\r\n",
            b"POST /2 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
            b"PUT /3 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            b"GET /4 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"]
    ev = parse(impl, b"".join(msgs) + b"GET /ignored HTTP/1.1\r\n\r\n")
    assert [h["target"] for h in heads(ev)] == [b"/1", b"/2", b"/3", b"/4"]
    assert [h["expect_continue"] for h in heads(ev)] == [False, True, False, False]
    assert [e[0] for e in ev] == ["head", "done", "head", "data", "done", "head", "data", "done",
                                  "head", "done"]


def test_nothing_is_parsed_after_a_closing_message(impl):
    p = impl.H1TestParser()
    assert p.feed(b"GET / HTTP/1.0\r\n\r\n")[-1] == ("done",)
    assert p.feed(b"garbage that would be an error") == []
    assert p.feed_eof() == []


def test_expect_100_continue(impl):
    def expect(value, version=b"1.1"):
        msg = b"POST / HTTP/" + version + b"\r\n" + H + b"Expect: " + value + b"\r\nContent-Length: 1\r\n\r\n"
        return heads(parse(impl, msg))[0]["expect_continue"]
    assert expect(b"100-continue") and expect(b"100-Continue") and expect(b"foo, 100-continue")
    assert not expect(b"100-continued") and not expect(b"200-ok")
    assert not expect(b"100-continue", b"1.0")      # RFC 9110 10.1.1: ignored in HTTP/1.0


def test_upgrade_request(impl):
    msg = (b"GET /chat HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n")
    ev = parse(impl, msg + b"\x81\x05hello")
    assert heads(ev)[0]["upgrade"] is True
    assert ev[1:] == [("done",), ("tunnel", b"\x81\x05hello")]


def test_upgrade_needs_both_headers_and_http11(impl):
    for msg in (b"GET / HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + H + b"Upgrade:\r\nConnection: upgrade\r\n\r\n",
                b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"):
        assert heads(parse(impl, msg))[0]["upgrade"] is False, msg


def test_upgrade_request_with_a_body(impl):
    msg = (b"POST / HTTP/1.1\r\n" + H + b"Upgrade: h2c\r\nConnection: upgrade\r\n"
           b"Content-Length: 3\r\n\r\nabcPRI")
    assert parse(impl, msg)[1:] == [("data", b"abc"), ("done",), ("tunnel", b"PRI")]


def test_connect(impl):
    p = impl.H1TestParser()
    ev = p.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03")
    h = heads(ev)[0]
    assert (h["connect"], h["body"], h["target"]) == (True, "none", b"example.com:443")
    assert ev[1:] == [("done",), ("tunnel", b"\x16\x03")]
    assert p.feed(b"more") == [("tunnel", b"more")]


def test_connect_may_say_content_length_zero(impl):
    ev = parse(impl, b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 0\r\n\r\n")
    assert heads(ev)[0]["connect"]


# ---------------------------------------------------------------------------- responses

def response(impl, data, method=b"GET", eof=False, **kw):
    return parse(impl, data, "response", eof=eof, request_method=method, **kw)


def test_response_with_content_length(impl):
    ev = response(impl, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    h = heads(ev)[0]
    assert (h["status"], h["reason"], h["body"], h["keep_alive"]) == (200, b"OK", "length", True)
    assert ev[1:] == [("data", b"hi"), ("done",)]


def test_close_delimited_response(impl):
    ev = response(impl, b"HTTP/1.1 200 OK\r\n\r\nall of this", eof=True)
    assert heads(ev)[0]["body"] == "eof" and heads(ev)[0]["keep_alive"] is False
    assert ev[1:] == [("data", b"all of this"), ("done",)]


def test_response_whose_last_coding_is_not_chunked_runs_to_eof(impl):
    ev = response(impl, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nxx", eof=True)
    assert heads(ev)[0]["body"] == "eof" and body(ev) == b"5\r\nxx"


def test_response_with_unknown_coding_is_forwarded(impl):
    ev = response(impl, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
    assert heads(ev)[0]["body"] == "chunked" and body(ev) == b"x"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(impl, status):
    ev = response(impl, b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
                  + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert [h["body"] for h in heads(ev)] == ["none", "length"]
    assert body(ev) == b"x"


def test_head_response_has_no_body(impl):
    ev = response(impl, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nTransfer-Encoding: chunked\r\n\r\n",
                  method=b"HEAD")
    assert ev[0][0] == "error"                      # CL with TE is refused even here
    ev = response(impl, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 404 NF\r\n"
                  b"Content-Length: 0\r\n\r\n", method=b"HEAD")
    assert [(h["status"], h["body"]) for h in heads(ev)] == [(200, "none"), (404, "none")]


def test_interim_responses_then_final(impl):
    ev = response(impl, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert [(h["status"], h["interim"]) for h in heads(ev)] == [(100, True), (103, True), (200, False)]
    assert ev[-2:] == [("data", b"x"), ("done",)]


def test_switching_protocols(impl):
    ev = response(impl, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n\x81\x00")
    assert heads(ev)[0]["upgrade"] is True
    assert ev[1:] == [("done",), ("tunnel", b"\x81\x00")]


def test_connect_response(impl):
    ev = response(impl, b"HTTP/1.1 200 Connection established\r\n\r\nTLS", method=b"CONNECT")
    assert heads(ev)[0]["connect"] is True and ev[1:] == [("done",), ("tunnel", b"TLS")]
    ev = response(impl, b"HTTP/1.1 407 Auth\r\nContent-Length: 2\r\n\r\nno", method=b"CONNECT")
    assert heads(ev)[0]["connect"] is False and body(ev) == b"no"


def test_request_method_can_change_between_responses(impl):
    p = impl.H1TestParser("response", request_method=b"HEAD")
    ev = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert ev[-1] == ("done",)
    p.request_method = b"GET"
    assert coalesce(p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))[1:] == [
        ("data", b"hello"), ("done",)]


@pytest.mark.parametrize("line, status, reason", [
    (b"HTTP/1.1 200", 200, b""), (b"HTTP/1.1 200 ", 200, b""), (b"HTTP/1.0 599 x\ty \x80", 599, b"x\ty \x80"),
    (b"HTTP/1.1 100 Continue", 100, b"Continue"),
])
def test_status_lines(impl, line, status, reason):
    h = heads(response(impl, line + b"\r\nContent-Length: 0\r\n\r\n"))[0]
    assert (h["status"], h["reason"]) == (status, reason)


def test_response_keep_alive(impl):
    assert heads(response(impl, b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"))[0]["keep_alive"] is False
    assert heads(response(impl, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                 )[0]["keep_alive"] is True
    assert heads(response(impl, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                 )[0]["keep_alive"] is False


# ---------------------------------------------------------------------------- EOF

def test_eof_between_messages_is_clean(impl):
    assert parse(impl, b"", eof=True) == []
    assert parse(impl, b"\r\n", eof=True) == []
    assert parse(impl, b"GET / HTTP/1.1\r\n" + H + b"\r\n", eof=True)[-1] == ("done",)


@pytest.mark.parametrize("data", [
    b"G", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n",
])
def test_eof_inside_a_message(impl, data):
    ev = parse(impl, data, eof=True)
    assert ev[-1] == error_of("INCOMPLETE")
    ev = parse(impl, data.replace(b"GET / HTTP/1.1", b"HTTP/1.1 200 OK").replace(
        b"POST / HTTP/1.1", b"HTTP/1.1 200 OK"), "response", eof=True)
    assert ev[-1] == error_of("INCOMPLETE", "response")


# ---------------------------------------------------------------------------- rejections

REQUEST_REJECTIONS = [
    # line endings
    ("bare LF after the request line", b"GET / HTTP/1.1\n" + H + b"\r\n", "BARE_LF"),
    ("bare LF after a field", b"GET / HTTP/1.1\r\nHost: a\n\r\n", "BARE_LF"),
    ("bare LF ends the head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", "BARE_LF"),
    ("bare LF as the leading empty line", b"\nGET / HTTP/1.1\r\n" + H + b"\r\n", "BARE_LF"),
    ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", "BARE_CR"),
    ("bare CR in the target", b"GET /\r HTTP/1.1\r\n" + H + b"\r\n", "BARE_CR"),
    ("CR CR LF", b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", "BARE_CR"),
    ("bare CR before the empty line", b"GET / HTTP/1.1\r\nHost: a\r\n\rX: 1\r\n\r\n", "BARE_CR"),
    # methods and request lines
    ("empty method", b" / HTTP/1.1\r\n" + H + b"\r\n", "BAD_METHOD"),
    ("method with a bad char", b"GE(T / HTTP/1.1\r\n" + H + b"\r\n", "BAD_METHOD"),
    ("method with NUL", b"GE\x00T / HTTP/1.1\r\n" + H + b"\r\n", "BAD_METHOD"),
    ("method with obs-text", b"G\xc9T / HTTP/1.1\r\n" + H + b"\r\n", "BAD_METHOD"),
    ("tab after the method", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", "BAD_METHOD"),
    ("only a method", b"GET\r\n" + H + b"\r\n", "BAD_REQUEST_LINE"),
    ("two spaces after the method", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", "BAD_REQUEST_LINE"),
    ("no version", b"GET /\r\n" + H + b"\r\n", "BAD_REQUEST_LINE"),
    ("HTTP/0.9 style", b"GET / \r\n" + H + b"\r\n", "BAD_VERSION"),
    # targets
    ("space in the target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", "BAD_VERSION"),
    ("tab in the target", b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("NUL in the target", b"GET /a\x00 HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("DEL in the target", b"GET /a\x7f HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("non-ASCII in the target", b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("fragment in the target", b"GET /a#frag HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("relative target", b"GET index.html HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("scheme without //", b"GET http:/x HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("scheme without authority", b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("userinfo in absolute-form", b"GET http://u:p@a.com/ HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("bad port in absolute-form", b"GET http://a.com:99999/ HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("authority-form for GET", b"GET example.com:80 HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("asterisk-form for GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET_FORM"),
    ("origin-form for CONNECT", b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET_FORM"),
    ("CONNECT without a port", b"CONNECT example.com HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET_FORM"),
    ("CONNECT with an empty port", b"CONNECT example.com: HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET_FORM"),
    ("CONNECT with absolute-form", b"CONNECT http://a:1/ HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET_FORM"),
    # versions
    ("lowercase version", b"GET / http/1.1\r\n" + H + b"\r\n", "BAD_VERSION"),
    ("two-digit minor", b"GET / HTTP/1.10\r\n" + H + b"\r\n", "BAD_VERSION"),
    ("no minor", b"GET / HTTP/1\r\n" + H + b"\r\n", "BAD_VERSION"),
    ("space after the version", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", "BAD_VERSION"),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", "VERSION_NOT_SUPPORTED"),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", "VERSION_NOT_SUPPORTED"),
    ("HTTP/0.9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", "VERSION_NOT_SUPPORTED"),
    # field lines
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n  b\r\n\r\n", "OBS_FOLD"),
    ("tab fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n", "OBS_FOLD"),
    ("whitespace before the first field", b"GET / HTTP/1.1\r\n " + H + b"\r\n", "OBS_FOLD"),
    ("no colon", b"GET / HTTP/1.1\r\n" + H + b"X-Nothing\r\n\r\n", "NO_COLON"),
    ("space before the colon", b"GET / HTTP/1.1\r\n" + H + b"X : a\r\n\r\n", "WS_BEFORE_COLON"),
    ("tab before the colon", b"GET / HTTP/1.1\r\n" + H + b"X\t: a\r\n\r\n", "WS_BEFORE_COLON"),
    ("Host with space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "WS_BEFORE_COLON"),
    ("empty name", b"GET / HTTP/1.1\r\n" + H + b": a\r\n\r\n", "BAD_FIELD_NAME"),
    ("bad name char", b"GET / HTTP/1.1\r\n" + H + b"X(y): a\r\n\r\n", "BAD_FIELD_NAME"),
    ("name with NUL", b"GET / HTTP/1.1\r\n" + H + b"X\x00: a\r\n\r\n", "BAD_FIELD_NAME"),
    ("name with obs-text", b"GET / HTTP/1.1\r\n" + H + b"X\xe9: a\r\n\r\n", "BAD_FIELD_NAME"),
    ("space inside a name", b"GET / HTTP/1.1\r\n" + H + b"X Y: a\r\n\r\n", "WS_BEFORE_COLON"),
    ("NUL in a value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", "BAD_FIELD_VALUE"),
    ("control byte in a value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", "BAD_FIELD_VALUE"),
    ("ESC in a value", b"GET / HTTP/1.1\r\n" + H + b"X: \x1b[31m\r\n\r\n", "BAD_FIELD_VALUE"),
    ("DEL in a value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", "BAD_FIELD_VALUE"),
    ("vertical tab in a value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x0bb\r\n\r\n", "BAD_FIELD_VALUE"),
    ("control byte at the end of a long value",
     b"GET / HTTP/1.1\r\n" + H + b"X: " + b"v" * 100 + b"\x1f\r\n\r\n", "BAD_FIELD_VALUE"),
    # Host
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\nX: a\r\n\r\n", "MISSING_HOST"),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", "DUP_HOST"),
    ("two Hosts in HTTP/1.0", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "DUP_HOST"),
    ("Host with a path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "BAD_HOST"),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "BAD_HOST"),
    ("Host list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", "BAD_HOST"),
    ("Host with a bad port", b"GET / HTTP/1.1\r\nHost: a:http\r\n\r\n", "BAD_HOST"),
    ("Host with a big port", b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", "BAD_HOST"),
    ("Host with an open bracket", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "BAD_HOST"),
    # reg-name: a '%' must start a pct-encoded triplet (RFC 3986 2.1, 3.2.2)
    ("Host ending in %", b"GET / HTTP/1.1\r\nHost: a%\r\n\r\n", "BAD_HOST"),
    ("Host with a % inside", b"GET / HTTP/1.1\r\nHost: exa%mple.test\r\n\r\n", "BAD_HOST"),
    ("Host with %zz", b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", "BAD_HOST"),
    ("Host with one hex digit after %", b"GET / HTTP/1.1\r\nHost: a%4\r\n\r\n", "BAD_HOST"),
    ("Host with one hex digit after % and a port", b"GET / HTTP/1.1\r\nHost: a%4:80\r\n\r\n", "BAD_HOST"),
    ("Host with %% ", b"GET / HTTP/1.1\r\nHost: %%41\r\n\r\n", "BAD_HOST"),
    ("absolute-form authority with a lone %", b"GET http://a%/ HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET"),
    ("CONNECT authority with %zz", b"CONNECT a%zz:443 HTTP/1.1\r\n" + H + b"\r\n", "BAD_TARGET_FORM"),
    # Content-Length
    ("Content-Length list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", "BAD_CONTENT_LENGTH"),
    ("two equal Content-Lengths", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
     "DUP_CONTENT_LENGTH"),
    ("two different Content-Lengths", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\ncontent-length: 6\r\n\r\n",
     "DUP_CONTENT_LENGTH"),
    ("signed Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", "BAD_CONTENT_LENGTH"),
    ("negative Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", "BAD_CONTENT_LENGTH"),
    ("hex Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\n", "BAD_CONTENT_LENGTH"),
    ("empty Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", "BAD_CONTENT_LENGTH"),
    ("Content-Length with inner space", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 2\r\n\r\n", "BAD_CONTENT_LENGTH"),
    ("Content-Length overflow", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 9223372036854775808\r\n\r\n",
     "BAD_CONTENT_LENGTH"),
    ("Content-Length huge", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: " + b"9" * 40 + b"\r\n\r\n",
     "BAD_CONTENT_LENGTH"),
    # Transfer-Encoding
    ("CL and TE", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "CL_AND_TE"),
    ("TE and CL", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "CL_AND_TE"),
    ("TE not ending in chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
     "TE_NOT_CHUNKED"),
    ("TE gzip only", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", "TE_NOT_CHUNKED"),
    ("TE over two lines, chunked first", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n", "TE_NOT_CHUNKED"),
    ("TE chunked twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
     "BAD_TRANSFER_ENCODING"),
    ("TE unknown coding", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: foo, chunked\r\n\r\n", "UNKNOWN_CODING"),
    ("TE identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", "UNKNOWN_CODING"),
    ("TE chunked-ish", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunkedx\r\n\r\n", "UNKNOWN_CODING"),
    ("TE with parameters", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip;q=1, chunked\r\n\r\n",
     "BAD_TRANSFER_ENCODING"),
    ("TE with an empty element", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked,\r\n\r\n",
     "BAD_TRANSFER_ENCODING"),
    ("TE empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n\r\n", "BAD_TRANSFER_ENCODING"),
    ("TE quoted", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \"chunked\"\r\n\r\n", "BAD_TRANSFER_ENCODING"),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "TE_HTTP10"),
    ("CONNECT with a body", b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 2\r\n\r\nhi", "CONNECT_BODY"),
    ("CONNECT chunked", b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\n\r\n", "CONNECT_BODY"),
]

CHUNKED = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
CHUNK_REJECTIONS = [
    ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_SIZE"),
    ("plus sign", b"+5\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_SIZE"),
    ("minus sign", b"-5\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_SIZE"),
    ("leading space", b" 5\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_SIZE"),
    ("empty size", b"\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_SIZE"),
    ("not hex", b"g\r\n", "BAD_CHUNK_SIZE"),
    ("size with NUL", b"5\x00\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_SIZE"),
    ("overflow", b"10000000000000000\r\n", "CHUNK_SIZE_OVERFLOW"),
    ("just past 2^63-1", b"8000000000000000\r\n", "CHUNK_SIZE_OVERFLOW"),
    ("trailing space", b"5 \r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext without a name", b"5;\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext with an empty value", b"5;a=\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext with a bad char", b"5;a=b@c\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext with an open quote", b"5;a=\"b\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext with a control char in quotes", b"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext with trailing whitespace", b"5;a=b \r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext with two names", b"5;a b\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext after a quoted value", b"5;a=\"b\"c\r\nhello\r\n0\r\n\r\n", "BAD_CHUNK_EXT"),
    ("ext too long", b"5;a=" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n", "CHUNK_LINE_TOO_LONG"),
    ("zeros too long", b"0" * 4097 + b"5\r\nhello\r\n0\r\n\r\n", "CHUNK_LINE_TOO_LONG"),
    ("bare LF after the size", b"5\nhello\r\n0\r\n\r\n", "BARE_LF"),
    ("bare LF in an ext", b"5;a\nhello\r\n0\r\n\r\n", "BARE_LF"),
    ("CR without LF after the size", b"5\rhello\r\n0\r\n\r\n", "BARE_CR"),
    ("bare LF after the data", b"5\r\nhello\n0\r\n\r\n", "BAD_CHUNK_END"),
    ("data longer than the size", b"5\r\nhelloX\r\n0\r\n\r\n", "BAD_CHUNK_END"),
    ("CR then junk after the data", b"5\r\nhello\rX0\r\n\r\n", "BAD_CHUNK_END"),
    ("bare LF after the last chunk", b"5\r\nhello\r\n0\n\r\n", "BARE_LF"),
    ("bare LF ending the trailers", b"0\r\nX: y\r\n\n", "BARE_LF"),
    ("obs-fold in trailers", b"0\r\nX: y\r\n z\r\n\r\n", "OBS_FOLD"),
    ("bad trailer name", b"0\r\nX y: z\r\n\r\n", "WS_BEFORE_COLON"),
    ("bad trailer value", b"0\r\nX: \x00\r\n\r\n", "BAD_FIELD_VALUE"),
]

RESPONSE_REJECTIONS = [
    ("no version", b"200 OK\r\n\r\n", "BAD_STATUS_LINE"),
    ("lowercase version", b"http/1.1 200 OK\r\n\r\n", "BAD_STATUS_LINE"),
    ("HTTP/2.0", b"HTTP/2.0 200 OK\r\n\r\n", "VERSION_NOT_SUPPORTED"),
    ("HTTP/1.2", b"HTTP/1.2 200 OK\r\n\r\n", "VERSION_NOT_SUPPORTED"),
    ("no status", b"HTTP/1.1\r\n\r\n", "BAD_STATUS_LINE"),
    ("two spaces", b"HTTP/1.1  200 OK\r\n\r\n", "BAD_STATUS"),
    ("short status", b"HTTP/1.1 20 OK\r\n\r\n", "BAD_STATUS"),
    ("status line too short", b"HTTP/1.1 20\r\n\r\n", "BAD_STATUS_LINE"),
    ("long status", b"HTTP/1.1 2000 OK\r\n\r\n", "BAD_STATUS"),
    ("status below 100", b"HTTP/1.1 099 OK\r\n\r\n", "BAD_STATUS"),
    ("status 600", b"HTTP/1.1 600 OK\r\n\r\n", "BAD_STATUS"),
    ("control byte in the reason", b"HTTP/1.1 200 O\x01K\r\n\r\n", "BAD_REASON"),
    ("empty line first", b"\r\nHTTP/1.1 200 OK\r\n\r\n", "BAD_STATUS_LINE"),
    ("bare LF", b"HTTP/1.1 200 OK\n\n", "BARE_LF"),
    ("CL and TE", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "CL_AND_TE"),
    ("two Content-Lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
     "DUP_CONTENT_LENGTH"),
    ("bad Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", "BAD_CONTENT_LENGTH"),
    ("TE in HTTP/1.0", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "TE_HTTP10"),
    ("chunked twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "BAD_TRANSFER_ENCODING"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "OBS_FOLD"),
    ("bad chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n", "BAD_CHUNK_SIZE"),
]


@pytest.mark.parametrize("name, data, error", REQUEST_REJECTIONS, ids=[c[0] for c in REQUEST_REJECTIONS])
def test_request_rejections(impl, name, data, error):
    ev = parse(impl, data)
    assert ev[-1] == error_of(error), ev
    assert not any(e[0] in ("done", "data") for e in ev)


@pytest.mark.parametrize("name, data, error", CHUNK_REJECTIONS, ids=[c[0] for c in CHUNK_REJECTIONS])
def test_chunked_rejections(impl, name, data, error):
    ev = parse(impl, CHUNKED + data)
    assert ev[-1] == error_of(error), ev
    assert ("done",) not in ev


@pytest.mark.parametrize("name, data, error", RESPONSE_REJECTIONS, ids=[c[0] for c in RESPONSE_REJECTIONS])
def test_response_rejections(impl, name, data, error):
    ev = response(impl, data)
    assert ev[-1] == error_of(error, "response"), ev
    assert ev[-1][1] == 502


def test_statuses_of_the_error_classes(impl):
    assert parse(impl, b"GET / HTTP/2.0\r\n\r\n")[-1][1] == 505
    assert parse(impl, b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: br, chunked\r\n\r\n")[-1][1] == 501
    assert parse(impl, b"GET / HTTP/1.1\r\n" + H + b"X" * 70000)[-1][1] == 431


def test_nothing_after_an_error(impl):
    p = impl.H1TestParser()
    assert p.feed(b"GET / HTTP/1.1\r\nBad Name: x\r\n")[-1][0] == "error"
    assert p.feed(b"GET / HTTP/1.1\r\n" + H + b"\r\n") == []
    assert p.feed_eof() == []


# ---------------------------------------------------------------------------- limits

def request_with_head_size(size: int, line=b"GET / HTTP/1.1\r\n") -> bytes:
    """A request whose head (start line through the empty line) is exactly `size` bytes."""
    fixed = line + H + b"X-Pad: \r\n\r\n"
    return line + H + b"X-Pad: " + b"p" * (size - len(fixed)) + b"\r\n\r\n"


def test_head_size_limit(impl):
    ok = request_with_head_size(60 * 1024)
    assert parse(impl, ok)[-1] == ("done",)
    assert parse(impl, request_with_head_size(60 * 1024 + 1))[-1] == error_of("HEAD_TOO_LARGE")
    small = request_with_head_size(300)
    assert parse(impl, small, max_head=300)[-1] == ("done",)
    assert parse(impl, small, max_head=299)[-1] == error_of("HEAD_TOO_LARGE")


def test_head_limit_counts_skipped_empty_lines(impl):
    msg = request_with_head_size(300)
    assert parse(impl, b"\r\n" + msg, max_head=302)[-1] == ("done",)
    assert parse(impl, b"\r\n" + msg, max_head=301)[-1] == error_of("HEAD_TOO_LARGE")


def test_head_limit_is_found_before_the_end_of_the_line(impl):
    # A huge line is refused as soon as the limit is passed, not when its LF comes.
    p = impl.H1TestParser(max_head=1000)
    assert p.feed(b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 900) == []
    assert p.feed(b"a" * 100)[-1] == ("error", 431, "header section too large")


def test_field_count_limit(impl):
    def msg(n):
        return b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(n - 1)) + b"\r\n"
    assert parse(impl, msg(100))[-1] == ("done",)
    assert parse(impl, msg(101))[-1] == error_of("TOO_MANY_FIELDS")
    assert parse(impl, msg(10), max_fields=10)[-1] == ("done",)
    assert parse(impl, msg(11), max_fields=10)[-1] == error_of("TOO_MANY_FIELDS")


def test_trailers_have_their_own_limits(impl):
    trailers = b"".join(b"T-%d: v\r\n" % i for i in range(10))
    msg = CHUNKED + b"0\r\n" + trailers + b"\r\n"
    ev = parse(impl, msg, max_fields=10)
    assert len(ev[-2][1]) == 10
    assert parse(impl, CHUNKED + b"0\r\n" + trailers + b"T: 1\r\n\r\n", max_fields=10)[-1] == error_of("TOO_MANY_FIELDS")
    assert parse(impl, CHUNKED + b"0\r\nT: " + b"v" * 200 + b"\r\n\r\n", max_head=150)[-1] == error_of("HEAD_TOO_LARGE")


def test_request_line_limit(impl):
    line = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n"
    assert parse(impl, line + H + b"\r\n", max_start_line=len(line))[-1] == ("done",)
    assert parse(impl, line + H + b"\r\n", max_start_line=len(line) - 1)[-1] == error_of("LINE_TOO_LONG")
    # without a separate limit, a request line over max_head is refused the same way (431)
    assert parse(impl, line + H + b"\r\n", max_head=50)[-1] == error_of("LINE_TOO_LONG")
    assert parse(impl, b"HTTP/1.1 200 " + b"x" * 100 + b"\r\n\r\n", "response", max_start_line=50)[-1] == (
        "error", 502, "start line too long")


# ---------------------------------------------------------------------------- splice path

def test_skip_body_stands_for_splice(impl):
    p = impl.H1TestParser()
    ev = p.feed(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\n")
    assert ev[-1][0] == "head" and p.body_remaining == 10
    assert p.skip_body(4) == [] and p.body_remaining == 6
    assert p.feed(b"ab") == [("data", b"ab")] and p.body_remaining == 4
    assert p.skip_body(4) == [("done",)] and p.body_remaining == 0
    assert heads(p.feed(b"GET /next HTTP/1.1\r\n" + H + b"\r\n"))[0]["target"] == b"/next"
    with pytest.raises(ValueError):
        p.skip_body(1)


def test_take_heads_gives_the_same_events():
    data = b"".join(MESSAGES_REQUEST)
    for impl in IMPLS.values():
        assert parse(impl, data, take_heads=True) == parse(compiled, data)


# ---------------------------------------------------------------------------- split invariance

MESSAGES_REQUEST = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET /x?y=z HTTP/1.1\r\nHost: a.example:8080\r\nUser-Agent: test/1.0\r\nAccept: */*\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world",
    b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=\"q\\\"x\"\r\nWiki\r\n5 ; a = b\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT1: a\r\nT2: b\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET http://example.com/p HTTP/1.1\r\nHost: example.com\r\nX-Long: " + b"L" * 300 + b"\r\n\r\n",
    b"DELETE /r HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
]
MESSAGES_FINAL_REQUEST = [
    b"GET / HTTP/1.0\r\nX: \t y \t\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\ntunnel bytes",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframes",
]
BAD_REQUESTS = [c[1] for c in REQUEST_REJECTIONS[::3]] + [CHUNKED + c[1] for c in CHUNK_REJECTIONS[::2]]
RESPONSES = [
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: 1\r\n\r\n"
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
    b"HTTP/1.1 200 OK\r\n\r\nto the end",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: upgrade\r\n\r\n\x00\x01",
] + [c[1] for c in RESPONSE_REJECTIONS[::2]]

SPLIT_CORPUS = (
    [("request", b"".join(MESSAGES_REQUEST) + m) for m in MESSAGES_FINAL_REQUEST]
    + [("request", m) for m in BAD_REQUESTS]
    + [("response", m) for m in RESPONSES]
)


def split_points(data: bytes, rng: random.Random):
    yield list(range(1, len(data)))                 # byte by byte
    for k in (1, 2, 3):
        yield rng.sample(range(1, len(data)), min(k, len(data) - 1))


@pytest.mark.parametrize("kind, data", SPLIT_CORPUS, ids=[f"{k}{i}" for i, (k, _) in enumerate(SPLIT_CORPUS)])
def test_any_split_gives_the_same_events(impl, kind, data):
    whole = parse(impl, data, kind, eof=True)
    rng = random.Random(data)
    for splits in split_points(data, rng):
        assert parse(impl, data, kind, splits=splits, eof=True) == whole, splits


@pytest.mark.parametrize("kind, data", SPLIT_CORPUS, ids=[f"{k}{i}" for i, (k, _) in enumerate(SPLIT_CORPUS)])
def test_both_implementations_agree(kind, data):
    assert parse(compiled, data, kind, eof=True) == parse(reference, data, kind, eof=True)


def test_every_split_point_of_a_pipeline(impl):
    """All two-piece splits of a longer pipeline (each split point once)."""
    data = b"".join(MESSAGES_REQUEST)
    whole = parse(impl, data)
    assert len(heads(whole)) == len(MESSAGES_REQUEST)
    for i in range(1, len(data)):
        assert parse(impl, data, splits=[i]) == whole, i


# ---------------------------------------------------------------------------- serializer

def test_serialize_request_head_round_trip(impl):
    fields = [(b"Host", b"example.com"), (b"X-Empty", b""), (b"X-Obs", b"caf\xc3\xa9")]
    head = impl.http1_request_head(b"POST", b"/p?q", fields)
    assert head == b"POST /p?q HTTP/1.1\r\nHost: example.com\r\nX-Empty: \r\nX-Obs: caf\xc3\xa9\r\n\r\n"
    h = heads(parse(impl, head))[0]
    assert (h["method"], h["target"], list(h["headers"])) == (b"POST", b"/p?q", fields)
    assert impl.http1_request_head(b"GET", b"/", version=(1, 0)) == b"GET / HTTP/1.0\r\n\r\n"


def test_serialize_response_head(impl):
    assert impl.http1_response_head(404, b"Not Found", [(b"Content-Length", b"0")]) == (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert impl.http1_response_head(200, version=(1, 0)) == b"HTTP/1.0 200 \r\n\r\n"
    assert heads(response(impl, impl.http1_response_head(204)))[0]["status"] == 204


def test_serialize_chunks_round_trip(impl):
    body_ = impl.http1_chunk(b"hello") + impl.http1_chunk(b"x" * 4096) + impl.http1_last_chunk([(b"T", b"v")])
    assert body_.startswith(b"5\r\nhello\r\n1000\r\n")
    assert body_.endswith(b"\r\n0\r\nT: v\r\n\r\n")
    ev = parse(impl, CHUNKED + body_)
    assert body(ev) == b"hello" + b"x" * 4096 and ev[-2] == ("trailers", ((b"T", b"v"),))
    assert impl.http1_last_chunk() == b"0\r\n\r\n"


@pytest.mark.parametrize("call", [
    lambda m: m.http1_request_head(b"GET", b"/", [(b"X", b"a\r\nInjected: 1")]),
    lambda m: m.http1_request_head(b"GET", b"/", [(b"X", b"a\nb")]),
    lambda m: m.http1_request_head(b"GET", b"/", [(b"X", b"a\x00")]),
    lambda m: m.http1_request_head(b"GET", b"/", [(b"X: y", b"a")]),
    lambda m: m.http1_request_head(b"GET", b"/", [(b"", b"a")]),
    lambda m: m.http1_request_head(b"GET", b"/ HTTP/1.1\r\nX:", []),
    lambda m: m.http1_request_head(b"GET", b"", []),
    lambda m: m.http1_request_head(b"GE T", b"/", []),
    lambda m: m.http1_request_head(b"GET", b"/", [], version=(2, 0)),
    lambda m: m.http1_response_head(200, b"OK\r\nX: y"),
    lambda m: m.http1_response_head(99),
    lambda m: m.http1_response_head(600),
    lambda m: m.http1_chunk(b""),
    lambda m: m.http1_last_chunk([(b"T", b"\r\n")]),
])
def test_serializer_refuses_what_cannot_be_sent(impl, call):
    with pytest.raises(ValueError):
        call(impl)


# ---------------------------------------------------------------------------- benchmark helper

def test_bench_helper_parses_a_pipeline():
    """compiled.http1_bench (the nogil loop used to measure MB/s) parses every message."""
    seconds, messages = compiled.http1_bench(b"".join(MESSAGES_REQUEST), 3)
    assert messages == 3 * len(MESSAGES_REQUEST) and seconds >= 0
    with pytest.raises(ValueError):
        compiled.http1_bench(b"GET / HTTP/1.1\r\n\r\n", 1)
