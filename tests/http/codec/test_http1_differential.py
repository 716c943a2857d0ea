"""Differential test: our HTTP/1.1 codec against llhttp (PyPI's httptools, strict mode).

Generated messages, and mutations of them, go through both. Where both accept a message,
method, target, version, headers, body, trailers and keep-alive must be equal. Where one
accepts and the other rejects, the case must match a row of the policy table in
docs/http1-policy.md (the POLICY list below names each row's id and how to recognise it);
a disagreement no row explains fails the test, as does a row missing from the document.
"""
from __future__ import annotations

import pathlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import pytest

from test_http1_codec import IMPLS

httptools = pytest.importorskip("httptools")

from conftest import ROOT  # noqa: E402
POLICY_DOC = ROOT / "docs" / "http1-policy.md"


# ---------------------------------------------------------------------------- outcomes

@dataclass
class Msg:
    head: tuple | None = None       # (method or status, target or b"", version, headers, keep_alive)
    body: bytes = b""
    trailers: tuple = ()
    complete: bool = False


@dataclass
class Outcome:
    msgs: list = field(default_factory=list)
    end: str = "more"               # more (wants input) | error | tunnel | closed
    error: str = ""                 # our reason / llhttp's message


def _strip(value: bytes) -> bytes:
    return value.strip(b" \t")


def run_ours(impl, data: bytes, kind: str, eof=False) -> Outcome:
    p = impl.H1TestParser(kind)
    out = Outcome()
    last = None
    events = p.feed(data)
    if eof:
        events += p.feed_eof()
    for ev in events:
        if ev[0] == "head":
            last = h = ev[1]
            first = h["method"] if kind == "request" else h["status"]
            target = h["target"] if kind == "request" else b""
            out.msgs.append(Msg(head=(first, target, h["version"], h["headers"], h["keep_alive"])))
        elif ev[0] == "data":
            out.msgs[-1].body += ev[1]
        elif ev[0] == "trailers":
            out.msgs[-1].trailers = ev[1]
        elif ev[0] == "done":
            out.msgs[-1].complete = True
            if last["upgrade"] or last["connect"]:
                out.end = "tunnel"
            elif not (last["keep_alive"] or last["interim"]):
                out.end = "closed"
        elif ev[0] == "error":
            out.end = "error"
            out.error = ev[2]
    return out


class _Recorder:
    def __init__(self, parser_box, kind):
        self.box = parser_box
        self.kind = kind
        self.out = Outcome()
        self.url = b""
        self.headers = []
        self.in_body = False

    def on_message_begin(self):
        self.url = b""
        self.headers = []
        self.in_body = False
        self.out.msgs.append(Msg())

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        if self.in_body:
            self.out.msgs[-1].trailers += ((name, _strip(value)),)
        else:
            self.headers.append((name, _strip(value)))

    def on_headers_complete(self):
        p = self.box[0]
        version = tuple(int(x) for x in p.get_http_version().split("."))
        first = p.get_method() if self.kind == "request" else p.get_status_code()
        self.out.msgs[-1].head = (first, self.url, version, tuple(self.headers), p.should_keep_alive())
        self.in_body = True

    def on_body(self, body):
        self.out.msgs[-1].body += body

    def on_message_complete(self):
        self.out.msgs[-1].complete = True


def run_llhttp(data: bytes, kind: str) -> Outcome:
    box = []
    rec = _Recorder(box, kind)
    parser = (httptools.HttpRequestParser if kind == "request" else httptools.HttpResponseParser)(rec)
    box.append(parser)
    out = rec.out
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        out.end = "tunnel"
    except httptools.HttpParserError as e:
        msg = str(e)
        if "Data after `Connection: close`" in msg:
            out.end = "closed"
        elif "Pause on CONNECT/Upgrade" in msg:
            out.end = "tunnel"
        else:
            out.end = "error"
            out.error = msg or type(e).__name__
    if out.end == "more" and out.msgs and out.msgs[-1].complete and out.msgs[-1].head:
        # llhttp keeps parsing after a non-keep-alive message only to complain about more data
        if not out.msgs[-1].head[4] and not (kind == "response" and out.msgs[-1].head[0] < 200):
            out.end = "closed"
    return out


# ---------------------------------------------------------------------------- generator

KNOWN_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE"]
ODD_METHODS = [b"PROPFIND", b"PURGE", b"QUERY", b"get", b"FOO", b"M-SEARCH", b"X_Y"]
TARGETS = [b"/", b"/index.html", b"/a/b?c=d&e=%20f", b"/~u/_x-y.z;p=1", b"//x", b"/a|b{c}",
           b"/\"q\"", b"/<x>", b"/^`\\", b"*", b"http://example.com/x?y", b"http://example.com",
           b"https://[::1]:8443/", b"http://u@h.example/", b"http://h.example:99999/",
           b"/a#frag", b"h.example:80", b"svn+ssh://h.example/r", b"http:/x", b"http://a%zz/",
           b"http://ex%41mple.test/"]
VERSIONS = [b"HTTP/1.1"] * 10 + [b"HTTP/1.0"] * 3 + [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0"]
HOSTS = [b"example.com", b"example.com:8080", b"127.0.0.1", b"[::1]:80", b"", b"a b", b"a/b",
         b"u@h", b"h:http", b"a%", b"exa%mple.test", b"a%zz", b"a%41:80"]
NAMES = [b"Accept", b"User-Agent", b"X-Request-Id", b"Cookie", b"Cache-Control", b"X-Empty",
         b"content-type", b"X-Forwarded-For", b"Authorization", b"If-None-Match"]
VALUE_PARTS = [b"text/html", b"*/*", b"q=0.9", b"abc", b"123", b"a b", b"\t", b" ", b"\"quoted\"",
               b",", b";", b"=", b"\xc3\xa9", b"\x80", b"x" * 40, b"(c)", b"<>", b"{}", b"\\"]
CONNECTION = [b"close", b"keep-alive", b"Keep-Alive", b"upgrade", b"Upgrade", b"close, keep-alive",
              b"keep-alive, upgrade", b"foo", b"CLOSE"]
TE = [b"chunked", b"Chunked", b"gzip, chunked", b"chunked, gzip", b"gzip", b"identity",
      b"foo, chunked", b"chunked, chunked", b"chunked,", b"gzip;q=1, chunked", b"deflate,chunked"]
CL_ODD = [b"5, 5", b"+5", b"-1", b"0x5", b"", b"1 2", b"99999999999999999999"]
SPECIAL = [b" ", b"\t", b"\r", b"\n", b"\x00", b"\x01", b"\x7f", b"\x80", b":", b",", b";", b"=",
           b"\"", b"#", b"x", b"0", b"/", b"@", b"\r\n", b"\r\n\r\n"]


def _value(rng) -> bytes:
    v = b"".join(rng.choice(VALUE_PARTS) for _ in range(rng.randint(0, 4)))
    return v.strip(b" \t") if rng.random() < 0.7 else v


def _chunked_body(rng) -> tuple[bytes, bytes]:
    out, data = [], b""
    for _ in range(rng.randint(0, 3)):
        piece = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        size = b"%x" % len(piece)
        if rng.random() < 0.2:
            size = size.upper().rjust(4, b"0")
        ext = rng.choice([b"", b"", b";a=b", b";a", b";a=\"b c\"", b" ;a=b", b";a=b;c"])
        out.append(size + ext + b"\r\n" + piece + b"\r\n")
        data += piece
    out.append(b"0" + rng.choice([b"", b"", b";x=y"]) + b"\r\n")
    if rng.random() < 0.3:
        out.append(b"X-Trailer: " + _value(rng) + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out), data


def gen_request(rng) -> bytes:
    method = rng.choice(KNOWN_METHODS) if rng.random() < 0.85 else rng.choice(ODD_METHODS)
    target = rng.choice(TARGETS[:5]) if rng.random() < 0.6 else rng.choice(TARGETS)
    version = rng.choice(VERSIONS)
    if rng.random() < 0.05:
        method, target = b"CONNECT", rng.choice([b"h.example:443", b"h.example", b"/"])
    headers = []
    n_host = rng.choices([0, 1, 2], [0.1, 0.85, 0.05])[0]
    for _ in range(n_host):
        host = rng.choice(HOSTS[:4]) if rng.random() < 0.85 else rng.choice(HOSTS)
        headers.append((rng.choice([b"Host", b"host", b"HOST"]), host))
    for _ in range(rng.randint(0, 4)):
        headers.append((rng.choice(NAMES), _value(rng)))
    if rng.random() < 0.3:
        headers.append((b"Connection", rng.choice(CONNECTION)))
    if rng.random() < 0.1:
        headers.append((b"Upgrade", b"websocket"))
    if rng.random() < 0.1:
        headers.append((b"Expect", b"100-continue"))
    body = b""
    framing = rng.choices(["none", "cl", "chunked", "both", "odd-cl", "odd-te"],
                          [0.4, 0.25, 0.2, 0.03, 0.06, 0.06])[0]
    if framing in ("cl", "both"):
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 30)))
        headers.append((b"Content-Length", b"%d" % len(body)))
    if framing == "odd-cl":
        headers.append((b"Content-Length", rng.choice(CL_ODD)))
        body = b"hello"
    if framing in ("chunked", "both", "odd-te"):
        te = b"chunked" if framing != "odd-te" else rng.choice(TE)
        headers.append((b"Transfer-Encoding", te))
        body, _ = _chunked_body(rng)
    rng.shuffle(headers)
    head = b"%s %s %s\r\n" % (method, target, version)
    head += b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    return head + b"\r\n" + body


STATUS_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content",
                b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 100 Continue", b"HTTP/1.1 500", b"HTTP/1.1 200 ",
                b"HTTP/1.1 099 Low", b"HTTP/1.1 600 High", b"HTTP/2.0 200 OK", b"HTTP/1.1 301 Moved \x80",
                b"HTTP/1.1 200 O\x01K", b"HTTP/1.1 2000 OK"]


def gen_response(rng) -> bytes:
    line = rng.choice(STATUS_LINES[:8]) if rng.random() < 0.85 else rng.choice(STATUS_LINES)
    headers = [(rng.choice(NAMES), _value(rng)) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.2:
        headers.append((b"Connection", rng.choice(CONNECTION)))
    framing = rng.choices(["cl", "chunked", "eof", "odd-te", "odd-cl"], [0.45, 0.3, 0.1, 0.1, 0.05])[0]
    body = b""
    if framing == "cl":
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 30)))
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "odd-cl":
        headers.append((b"Content-Length", rng.choice(CL_ODD)))
        body = b"hello"
    elif framing in ("chunked", "odd-te"):
        te = b"chunked" if framing == "chunked" else rng.choice(TE)
        headers.append((b"Transfer-Encoding", te))
        body, _ = _chunked_body(rng)
    else:
        body = b"until the end"
    rng.shuffle(headers)
    return line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body


def mutate(rng, data: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        op = rng.randrange(7)
        i = rng.randrange(len(data))
        if op == 0:
            data = data[:i] + rng.choice(SPECIAL) + data[i + 1:]
        elif op == 1:
            data = data[:i] + rng.choice(SPECIAL) + data[i:]
        elif op == 2:
            data = data[:i] + data[i + 1:]
        elif op == 3:
            crlfs = [m.start() for m in re.finditer(b"\r\n", data)]
            if crlfs:
                j = rng.choice(crlfs)
                data = data[:j] + b"\n" + data[j + 2:]
        elif op == 4:
            lines = data.split(b"\r\n")
            j = rng.randrange(len(lines))
            lines.insert(j, lines[j])
            data = b"\r\n".join(lines)
        elif op == 5:
            j = data.find(b":", i)
            if j > 0:
                data = data[:j] + rng.choice([b" ", b"\t"]) + data[j:]
        else:
            lines = data.split(b"\r\n")
            j = rng.randrange(len(lines))
            lines[j] = lines[j].lower() if rng.random() < 0.5 else lines[j].upper()
            data = b"\r\n".join(lines)
    return data


def gen_cases(seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        kind = "request" if rng.random() < 0.75 else "response"
        gen = gen_request if kind == "request" else gen_response
        data = gen(rng)
        if rng.random() < 0.15:
            data += gen(rng)
        if rng.random() < 0.5:
            data = mutate(rng, data)
        yield kind, data


# ---------------------------------------------------------------------------- comparison

def compare(ours: Outcome, theirs: Outcome):
    """None when they agree; else (direction, index, reason): 'stricter' (we reject what
    llhttp takes; reason: our error), 'looser' (the other way; llhttp's error), 'content'
    (both took message `index`, differently) or 'stop' (one ends the HTTP stream there,
    as a tunnel or a closing connection, and the other does not)."""
    for i in range(min(len(ours.msgs), len(theirs.msgs))):
        a, b = ours.msgs[i], theirs.msgs[i]
        if a.head is None or b.head is None:
            break
        if a.head[:4] != b.head[:4]:
            return "content", i, "head"
        if a.head[4] != b.head[4]:
            return "content", i, "keep-alive"
        if a.complete and b.complete:
            if (a.body, a.trailers) != (b.body, b.trailers):
                return "content", i, "body"
            continue
        if not (a.body.startswith(b.body) or b.body.startswith(a.body)):
            return "content", i, "body"
        break
    done_o = sum(m.complete for m in ours.msgs)
    done_t = sum(m.complete for m in theirs.msgs)
    # A "stop" names the message after which one side stopped, or inside which one side
    # still waits while the other has finished it and stopped.
    if done_o == done_t:
        if ours.end == theirs.end:
            return None
        if ours.end == "error":
            return "stricter", done_o, ours.error
        if theirs.end == "error":
            return "looser", done_t, theirs.error
        return "stop", max(done_o - 1, 0), f"{ours.end}/{theirs.end}"
    if done_o < done_t:
        if ours.end == "error":
            return "stricter", done_o, ours.error
        return "stop", done_o if ours.end == "more" else max(done_o - 1, 0), f"{ours.end}/{theirs.end}"
    if theirs.end == "error":
        return "looser", done_t, theirs.error
    return "stop", done_t if theirs.end == "more" else max(done_t - 1, 0), f"{ours.end}/{theirs.end}"


def differ(impl, kind: str, data: bytes):
    """compare() for one input, with the one allowance that is about timing only: llhttp
    judges a line byte by byte, we when the line ends. If we are still waiting where
    llhttp has refused, end the line and the input (CRLF CRLF, EOF) and look again; we
    must then refuse the same message, and not merely because the input was cut short."""
    ours = run_ours(impl, data, kind)
    theirs = run_llhttp(data, kind)
    diff = compare(ours, theirs)
    if diff and diff[0] == "looser" and ours.end == "more":
        ended = run_ours(impl, data + b"\r\n\r\n", kind, eof=True)
        if ended.error not in ("connection closed inside a message", "chunk data not followed by CRLF"):
            diff = compare(ended, theirs)
            ours = ended
    return diff, ours, theirs


# ---------------------------------------------------------------------------- the policy
# Each row of docs/http1-policy.md has a classifier here: the direction of the disagreement,
# a pattern for our error reason ("stricter"), llhttp's ("looser") or the kind of difference
# ("content", "stop"), and a predicate that recognises the case in the raw bytes of the
# message where the two parted (`msg`; `before` is everything ahead of it). The predicates
# read bytes on purpose: they depend on neither parser.

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
KNOWN_CODINGS = (b"chunked", b"gzip", b"deflate", b"compress", b"x-gzip", b"x-compress")


def _first_line(msg: bytes) -> bytes:
    return msg.lstrip(b"\r\n").split(b"\n", 1)[0]


def _request_line(msg: bytes):
    """(method, target, rest) of the message's first line, split at the first two SPs."""
    parts = _first_line(msg).split(b" ", 2)
    return tuple(parts + [b""] * (3 - len(parts)))


def _head(msg: bytes) -> bytes:
    return msg.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0]


def _field_values(msg, name):
    fields = re.findall(rb"\n([^:\r\n ]+):[ \t]*([^\r\n]*)", _head(msg))
    return [v for n, v in fields if n.lower() == name]


def _has_field(msg, name, pred=lambda v: True):
    return any(pred(v) for v in _field_values(msg, name))


_AUTHORITY = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)(:(\d{0,5}))?")


def _bad_authority(a: bytes) -> bool:
    m = _AUTHORITY.fullmatch(a)
    return not m or bool(m.group(3) and int(m.group(3)) > 65535)


def _tokens(v: bytes):
    return [t.strip(b" \t").lower() for t in v.split(b",")]


POLICY = []


def policy(pid: str, direction: str, reason: str = ".*"):
    """Register a classifier for the row `pid` of docs/http1-policy.md."""
    def deco(fn):
        POLICY.append((pid, direction, reason, fn))
        return fn
    return deco


@policy("H1-HOST", "stricter", "missing Host|more than one Host|invalid Host")
def _host(kind, msg, before):
    return kind == "request"


@policy("H1-VERSION", "stricter", "HTTP version not supported")
def _version(kind, msg, before):
    return re.search(rb"HTTP/\d\.\d", _first_line(msg)) is not None


@policy("H1-HTTP09", "stricter", "malformed request line|malformed HTTP version|invalid request target"
                                 "|line ending without CR")
def _http09(kind, msg, before):
    return kind == "request" and re.match(_TOKEN + rb" [^ \r\n]*\r?\n", msg.lstrip(b"\r\n")) is not None


@policy("H1-LEADING-LF", "stricter", "line ending without CR|CR not followed by LF")
def _leading_lf(kind, msg, before):
    lead = re.match(rb"[\r\n]*", msg).group()
    return kind == "request" and re.fullmatch(rb"(\r\n)*", lead) is None


@policy("H1-REQUEST-LINE-SPACES", "stricter", "malformed request line|malformed HTTP version")
def _spaces(kind, msg, before):
    line = _first_line(msg).rstrip(b"\r")
    return kind == "request" and (b"  " in line or line.count(b" ") > 2 or line.endswith(b" "))


@policy("H1-TARGET", "stricter", "invalid request target")
def _target(kind, msg, before):
    _, target, rest = _request_line(msg)
    authority = re.match(rb"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)", target)
    return b"#" in target + rest or bool(authority and _bad_authority(authority.group(1)))


@policy("H1-TARGET-FORM", "stricter", "request target form not allowed for this method")
def _target_form(kind, msg, before):
    method, target, _ = _request_line(msg)
    return target == b"*" or method == b"CONNECT"


@policy("H1-TE-HTTP10", "stricter", "Transfer-Encoding in an HTTP/1.0 message")
def _te10(kind, msg, before):
    return b"HTTP/1.0" in _first_line(msg)


@policy("H1-TE-CODINGS", "stricter", "unknown transfer coding|invalid Transfer-Encoding")
def _te_codings(kind, msg, before):
    return _has_field(msg, b"transfer-encoding", lambda v: b";" in v or any(
        t not in KNOWN_CODINGS for t in _tokens(v)))


@policy("H1-TE-REPEATED", "stricter", "invalid Transfer-Encoding")
def _te_repeated(kind, msg, before):
    codings = [t for v in _field_values(msg, b"transfer-encoding") for t in _tokens(v)]
    return kind == "response" and codings.count(b"chunked") > 1


@policy("H1-CL-RANGE", "stricter", "invalid Content-Length")
def _cl_range(kind, msg, before):
    return _has_field(msg, b"content-length", lambda v: v.isdigit() and 2**63 <= int(v) < 2**64)


@policy("H1-CONNECT-BODY", "stricter", "CONNECT request with content|Transfer-Encoding|transfer coding"
                                        "|Content-Length")
def _connect_body(kind, msg, before):
    return _request_line(msg)[0] == b"CONNECT"


@policy("H1-STATUS", "stricter", "invalid status code|invalid reason phrase")
def _status(kind, msg, before):
    return kind == "response" and re.match(
        rb"HTTP/\d\.\d ((0\d\d|[6-9]\d\d)( |\r)|\d\d\d [^\r\n]*[\x00-\x08\x0a-\x1f\x7f])", msg) is not None


@policy("H1-RESPONSE-LEADING-CRLF", "stricter", "malformed status line|line ending without CR|CR not followed by LF")
def _resp_crlf(kind, msg, before):
    return kind == "response" and msg.startswith((b"\r", b"\n"))


def _interim_close(response: bytes) -> bool:
    """A 1xx response with Connection: close."""
    return re.match(rb"HTTP/1\.[01] 1\d\d", response) is not None and _has_field(
        response, b"connection", lambda v: b"close" in _tokens(v))


@policy("H1-INTERIM-CLOSE", "stricter")
def _after_interim_close(kind, msg, before):
    return kind == "response" and _interim_close(b"HTTP/1." + before.rsplit(b"HTTP/1.", 1)[-1])


@policy("H1-INTERIM-CLOSE", "stop", "more/closed")
def _interim_close_stop(kind, msg, before):
    return kind == "response" and _interim_close(msg)


@policy("H1-METHODS", "looser", "Invalid method encountered|Expected HTTP/|Expected space after method")
def _methods(kind, msg, before):
    return kind == "request" and _request_line(msg)[0] not in KNOWN_METHODS + [b"CONNECT"]


@policy("H1-TARGET-SCHEME", "looser", "Unexpected char in url schema")
def _scheme(kind, msg, before):
    return re.match(rb"[A-Za-z][A-Za-z0-9+.-]*[+.0-9-][A-Za-z0-9+.-]*://", _request_line(msg)[1]) is not None


_CHUNK_EXT = re.compile(rb'(?:[ \t]*;[ \t]*' + _TOKEN + rb'(?:[ \t]*=[ \t]*(?:' + _TOKEN
                        + rb'|"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"))?)*')


@policy("H1-CHUNK-EXT", "stricter", "invalid chunk extension")
def _chunk_ext(kind, msg, before):
    return any(not _CHUNK_EXT.fullmatch(ext)
               for ext in re.findall(rb"\r\n[0-9a-fA-F]+([ \t;][^\r\n]*)\r\n", msg))


@policy("H1-CHUNK-BWS", "looser", "Invalid character in chunk")
def _chunk_bws(kind, msg, before):
    exts = re.findall(rb"\r\n[0-9a-fA-F]+([ \t;][^\r\n]*)\r\n", msg)
    return any(re.search(rb"[ \t]", re.sub(rb'"(?:[^"\\]|\\.)*"', b"", e)) for e in exts)


@policy("H1-CLOSE-WINS", "content", "keep-alive")
def _close_wins(kind, msg, before):
    return b"HTTP/1.0" in _first_line(msg) and _has_field(msg, b"connection", lambda v: b"close" in _tokens(v))


def _upgrade_request(msg: bytes) -> bool:
    return _has_field(msg, b"upgrade") and _has_field(msg, b"connection", lambda v: b"upgrade" in _tokens(v))


@policy("H1-UPGRADE-BODY", "content", "body")
@policy("H1-UPGRADE-BODY", "stop", "more/tunnel")
@policy("H1-UPGRADE-BODY", "stricter", "^(?!.*(target|method|request line|version|Host))")
def _upgrade_body(kind, msg, before):
    return (kind == "request" and _upgrade_request(msg)
            and (_has_field(msg, b"content-length") or _has_field(msg, b"transfer-encoding")))


def _last_request(before: bytes) -> bytes:
    starts = [m.start(1) for m in re.finditer(rb"(?:^|\n)(" + _TOKEN + rb" [^ \r\n]+ HTTP/1\.[01]\r\n)", before)]
    return before[starts[-1]:] if starts else b""


@policy("H1-UPGRADE-HTTP10", "stop", "more/tunnel|closed/tunnel")
def _upgrade10(kind, msg, before):
    return kind == "request" and b"HTTP/1.0" in _first_line(msg) and _upgrade_request(msg)


@policy("H1-UPGRADE-HTTP10", "stricter")
def _after_upgrade10(kind, msg, before):
    last = _last_request(before)
    return kind == "request" and b"HTTP/1.0" in _first_line(last) and _upgrade_request(last)


POLICY_IDS = sorted({p[0] for p in POLICY})


def message_start(impl, kind: str, data: bytes, index: int) -> int:
    """Offset of message `index` in data: the shortest prefix in which we complete
    `index` messages (found by bisection)."""
    def done(n):
        return sum(ev == ("done",) for ev in impl.H1TestParser(kind).feed(data[:n]))
    if index == 0:
        return 0
    lo, hi = 0, len(data)
    while lo < hi:
        mid = (lo + hi) // 2
        if done(mid) >= index:
            hi = mid
        else:
            lo = mid + 1
    return lo


def classify(impl, kind, data, diff):
    """The ids of the policy rows that explain this disagreement."""
    direction, index, reason = diff
    start = message_start(impl, kind, data, index)
    msg, before = data[start:], data[:start]
    return [pid for pid, d, pattern, fn in POLICY
            if d == direction and re.search(pattern, reason) and fn(kind, msg, before)]


# ---------------------------------------------------------------------------- tests

def test_policy_rows_are_documented():
    text = POLICY_DOC.read_text()
    documented = set(re.findall(r"^\|\s*`?(H1-[A-Z0-9-]+)`?\s*\|", text, re.M))
    assert set(POLICY_IDS) <= documented, f"not in {POLICY_DOC.name}: {set(POLICY_IDS) - documented}"


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_differential_against_llhttp(impl_name, seed):
    impl = IMPLS[impl_name]
    n = 10000 if impl_name == "compiled" else 4000
    unexplained = []
    stats = Counter()
    for kind, data in gen_cases(seed, n):
        diff, ours, theirs = differ(impl, kind, data)
        if diff is None:
            stats["agree"] += 1
            continue
        hits = classify(impl, kind, data, diff)
        if hits:
            stats.update(hits)
        else:
            unexplained.append((kind, data, diff, ours.error, theirs.error))
    assert not unexplained, "\n".join(f"{d!r}: {k} {diff} ours={oe!r} llhttp={te!r}"
                                      for k, d, diff, oe, te in unexplained[:20])
    assert stats["agree"] > n // 2, stats


# ---------------------------------------------------------------------------- fuzz target

def test_fuzz_target_on_random_mutations():
    """The fuzz target's checks (compiled == reference, cuts do not matter) on seeded random
    mutations: runs everywhere, atheris or not."""
    import fuzz_http1
    fuzz_http1.run_random(4000, seed=1)


def test_fuzz_short_atheris_run(tmp_path):
    """A short coverage-guided run of tests/http/codec/fuzz_http1.py (`make fuzz` runs it long)."""
    import importlib.util
    import os
    import subprocess
    import sys
    # find_spec, not an import: importing atheris here would leave its objects to LSan at
    # the test process's exit under `make test-asan`.
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed")
    env = dict(os.environ)
    flags = []
    if os.environ.get("FASTPROXY_ASAN"):
        # Under ASan the run still catches memory errors in the codec; leak checks are off
        # because libFuzzer's per-input check and LSan at exit report CPython's and
        # atheris' own long-lived allocations (not the core's: the rest of the suite checks
        # those with LSan).
        flags.append("-detect_leaks=0")
        env["ASAN_OPTIONS"] = "detect_leaks=0"
    script = pathlib.Path(__file__).with_name("fuzz_http1.py")
    r = subprocess.run([sys.executable, str(script), "-max_total_time=20", "-timeout=10",
                        "-print_final_stats=1", *flags, str(tmp_path / "corpus")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done" in r.stderr, r.stderr[-2000:]
