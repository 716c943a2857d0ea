"""A pure-Python twin of the compiled HTTP/1.1 codec (``core/http1.pxi``).

It exists to check the compiled codec: the tests run every case through both, and the fuzz
target demands that they produce the same events for every input. It is written to be read
next to RFC 9112, not to be fast, and shares no code with the compiled one. The policy it
implements, including where it is stricter than llhttp, is in docs/http1-policy.md.

The API is the same as the compiled hooks' in ``fastproxy._testing``: :class:`H1TestParser` (``feed``/``feed_eof``
returning events), ``HTTP1_ERRORS``, and the serializers ``http1_request_head``,
``http1_response_head``, ``http1_chunk`` and ``http1_last_chunk``.
"""
from __future__ import annotations

__all__ = [
    "HTTP1_ERRORS",
    "H1TestParser",
    "http1_request_head",
    "http1_response_head",
    "http1_chunk",
    "http1_last_chunk",
]

# (name, status a request parser answers with, reason). A response parser answers 502.
HTTP1_ERRORS = (
    ("OK", 0, ""),
    ("BARE_LF", 400, "line ending without CR"),
    ("BARE_CR", 400, "CR not followed by LF"),
    ("BAD_METHOD", 400, "invalid method"),
    ("BAD_REQUEST_LINE", 400, "malformed request line"),
    ("BAD_TARGET", 400, "invalid request target"),
    ("BAD_TARGET_FORM", 400, "request target form not allowed for this method"),
    ("BAD_VERSION", 400, "malformed HTTP version"),
    ("VERSION_NOT_SUPPORTED", 505, "HTTP version not supported"),
    ("BAD_STATUS_LINE", 400, "malformed status line"),
    ("BAD_STATUS", 400, "invalid status code"),
    ("BAD_REASON", 400, "invalid reason phrase"),
    ("LINE_TOO_LONG", 431, "start line too long"),
    ("HEAD_TOO_LARGE", 431, "header section too large"),
    ("TOO_MANY_FIELDS", 431, "too many header fields"),
    ("OBS_FOLD", 400, "obsolete line folding"),
    ("NO_COLON", 400, "field line without a colon"),
    ("WS_BEFORE_COLON", 400, "whitespace before the colon"),
    ("BAD_FIELD_NAME", 400, "invalid field name"),
    ("BAD_FIELD_VALUE", 400, "invalid character in field value"),
    ("BAD_CONTENT_LENGTH", 400, "invalid Content-Length"),
    ("DUP_CONTENT_LENGTH", 400, "more than one Content-Length"),
    ("CL_AND_TE", 400, "both Content-Length and Transfer-Encoding"),
    ("BAD_TRANSFER_ENCODING", 400, "invalid Transfer-Encoding"),
    ("TE_NOT_CHUNKED", 400, "chunked is not the final transfer coding"),
    ("UNKNOWN_CODING", 501, "unknown transfer coding"),
    ("TE_HTTP10", 400, "Transfer-Encoding in an HTTP/1.0 message"),
    ("MISSING_HOST", 400, "missing Host"),
    ("DUP_HOST", 400, "more than one Host"),
    ("BAD_HOST", 400, "invalid Host"),
    ("CONNECT_BODY", 400, "CONNECT request with content"),
    ("BAD_CHUNK_SIZE", 400, "invalid chunk size"),
    ("CHUNK_SIZE_OVERFLOW", 400, "chunk size too large"),
    ("BAD_CHUNK_EXT", 400, "invalid chunk extension"),
    ("CHUNK_LINE_TOO_LONG", 400, "chunk line too long"),
    ("BAD_CHUNK_END", 400, "chunk data not followed by CRLF"),
    ("INCOMPLETE", 400, "connection closed inside a message"),
    ("NO_MEMORY", 503, "out of memory"),
)
_ERRORS = {name: (status, reason) for name, status, reason in HTTP1_ERRORS}

DEFAULT_MAX_HEAD = 60 * 1024
DEFAULT_MAX_FIELDS = 100
MAX_HEAD_CAP = 64 * 1024 * 1024
MAX_CHUNK_LINE = 4096
INT64_MAX = (1 << 63) - 1

_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
TCHAR = _ALNUM | frozenset(b"!#$%&'*+-.^_`|~")                         # RFC 9110 5.6.2
FIELD_VCHAR = frozenset([0x09, 0x20]) | frozenset(range(0x21, 0x7F)) | frozenset(range(0x80, 0x100))
TARGET_CHAR = frozenset(range(0x21, 0x7F)) - {ord("#")}               # no fragment on the wire
HEXDIG = frozenset(b"0123456789abcdefABCDEF")
REG_NAME = _ALNUM | frozenset(b"-._~%!$&'()*+,;=")                     # RFC 3986 reg-name
SCHEME = _ALNUM | frozenset(b"+-.")
QDTEXT = (frozenset([0x09, 0x20, 0x21]) | frozenset(range(0x23, 0x5C))
          | frozenset(range(0x5D, 0x7F)) | frozenset(range(0x80, 0x100)))
OWS = frozenset(b" \t")
KNOWN_CODINGS = (b"gzip", b"deflate", b"compress", b"x-gzip", b"x-compress")

# Parser states and chunked sub-states, as in the compiled codec.
HEAD, HEAD_DONE, BODY, TRAILERS, MESSAGE_DONE, ERROR = range(6)
(C_SIZE_FIRST, C_SIZE, C_EXT_BWS, C_EXT_NAME_BWS, C_EXT_NAME, C_EXT_AFTER_NAME, C_EXT_VAL_BWS,
 C_EXT_VAL, C_EXT_QUOTED, C_EXT_QUOTED_ESC, C_EXT_AFTER_QUOTED, C_LINE_LF, C_DATA, C_DATA_CR,
 C_DATA_LF) = range(15)
# chunk-size line states in which a CR may end the line
_C_CAN_END = (C_SIZE, C_EXT_NAME, C_EXT_VAL, C_EXT_AFTER_QUOTED)


class _Fail(Exception):
    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def _span(s: bytes, allowed: frozenset, start: int = 0) -> int:
    """Index of the first byte at or after start that is not in `allowed` (or len(s))."""
    i = start
    while i < len(s) and s[i] in allowed:
        i += 1
    return i


def _is_version(s: bytes) -> bool:
    return (len(s) == 8 and s[:5] == b"HTTP/" and 0x30 <= s[5] <= 0x39 and s[6] == 0x2E
            and 0x30 <= s[7] <= 0x39)


def _pct_encoded_ok(s: bytes) -> bool:
    """Every '%' in s starts a pct-encoded triplet ('%' HEXDIG HEXDIG, RFC 3986 2.1)."""
    i = s.find(b"%")
    while i >= 0:
        if i + 2 >= len(s) or s[i + 1] not in HEXDIG or s[i + 2] not in HEXDIG:
            return False
        i = s.find(b"%", i + 3)
    return True


def _valid_host(s: bytes, need_port: bool, allow_empty: bool) -> bool:
    """uri-host [":" port]: IP-literal in brackets or reg-name, port at most 65535."""
    if not s:
        return allow_empty
    if s[0] == 0x5B:                                            # "[" IPv6 "]"
        i = _span(s, HEXDIG | frozenset(b":."), 1)
        if i == 1 or i == len(s) or s[i] != 0x5D:
            return False
        i += 1
    else:
        i = _span(s, REG_NAME)
        if i == 0 or not _pct_encoded_ok(s[:i]):
            return False
    if i == len(s):
        return not need_port
    if s[i] != 0x3A:
        return False
    port = s[i + 1:]
    if not port:
        return not need_port
    return len(port) <= 5 and all(0x30 <= c <= 0x39 for c in port) and int(port) <= 65535


def _list_elements(value: bytes):
    """Comma-separated list elements with OWS trimmed (empty ones included)."""
    return [e.strip(b" \t") for e in value.split(b",")]


class H1TestParser:
    """See ``fastproxy._testing.H1TestParser``: the same constructor, properties and events."""

    def __init__(self, kind="request", *, max_head=0, max_start_line=0, max_fields=0,
                 request_method=b"GET", take_heads=False):
        if kind not in ("request", "response"):
            raise ValueError("kind must be 'request' or 'response'")
        self._request = kind == "request"
        max_head = max_head or DEFAULT_MAX_HEAD
        max_head = min(max_head, MAX_HEAD_CAP)
        if not max_start_line or max_start_line > max_head:
            max_start_line = max_head
        self._max_head = max_head
        self._max_start_line = max_start_line
        self._max_fields = max_fields or DEFAULT_MAX_FIELDS
        self.request_method = request_method
        self._stopped = False
        self._tunnel = False
        self._reset()

    @property
    def limits(self):
        return {"max_head": self._max_head, "max_start_line": self._max_start_line,
                "max_fields": self._max_fields}

    @property
    def request_method(self):
        return self._request_method

    @request_method.setter
    def request_method(self, value):
        self._request_method = bytes(value)

    @property
    def body_remaining(self):
        """Bytes of a Content-Length body not yet seen (what a caller would splice)."""
        if self._framing == "length" and self._state in (HEAD_DONE, BODY):
            return self._remaining
        return 0

    def skip_body(self, n) -> list:
        """Account for n body bytes the caller moved itself (splice)."""
        events: list = []
        if self._stopped or self.body_remaining == 0 or not 0 < n <= self.body_remaining:
            raise ValueError("no Content-Length body with that many bytes left")
        self._state = BODY
        self._remaining -= n
        if self._remaining == 0:
            self._state = MESSAGE_DONE
            self._message_done(events, b"", 0)
        return events

    # ------------------------------------------------------------ per-message state

    def _reset(self):
        self._state = HEAD
        self._line = bytearray()            # the incomplete line of the current section
        self._section_bytes = 0
        self._start_done = False
        self._head_fields = []
        self._trailer_fields = []
        self._method = b""
        self._target = b""
        self._status = 0
        self._reason = b""
        self._minor = 1
        self._host = False
        self._content_length = None
        self._te = False
        self._te_chunked = 0
        self._te_last_chunked = False
        self._te_unknown = False
        self._conn_close = self._conn_keep_alive = self._conn_upgrade = False
        self._upgrade_header = False
        self._expect_100 = False
        self._framing = "none"
        self._keep_alive = False
        self._upgrade = self._connect = self._expect_continue = self._interim = False
        self._remaining = 0
        self._cstate = C_SIZE_FIRST
        self._chunk_line = 0

    # ------------------------------------------------------------ lines

    def _take_lines(self, data: bytes, pos: int) -> int:
        """Take bytes of the current section (head or trailers) until it ends or the input
        runs out; returns the new position."""
        section = self._state
        while pos < len(data) and self._state == section:
            lf = data.find(b"\n", pos)
            end = len(data) if lf < 0 else lf + 1
            piece = data[pos:end]
            if (self._state == HEAD and not self._start_done
                    and len(self._line) + len(piece) > self._max_start_line):
                raise _Fail("LINE_TOO_LONG")
            if self._section_bytes + len(piece) > self._max_head:
                raise _Fail("HEAD_TOO_LARGE")
            self._section_bytes += len(piece)
            self._line += piece
            pos = end
            if lf >= 0:
                line = bytes(self._line)
                self._line = bytearray()
                self._complete_line(line)
        return pos

    def _complete_line(self, line: bytes):
        if not line.endswith(b"\r\n"):
            raise _Fail("BARE_LF")
        line = line[:-2]
        if b"\r" in line:
            raise _Fail("BARE_CR")
        if self._state == TRAILERS:
            if not line:
                self._state = MESSAGE_DONE
            else:
                self._trailer_fields.append(self._field_line(line, self._trailer_fields))
            return
        if not self._start_done:
            if not line:
                if not self._request:
                    raise _Fail("BAD_STATUS_LINE")
                return                      # empty lines before a request line are ignored
            self._start_done = True
            if self._request:
                self._request_line(line)
            else:
                self._status_line(line)
            return
        if not line:
            self._head_end()
            return
        name, value = self._field_line(line, self._head_fields)
        self._head_fields.append((name, value))
        self._known_field(name, value)

    def _request_line(self, line: bytes):
        m = _span(line, TCHAR)
        if m == 0:
            raise _Fail("BAD_METHOD")
        if m == len(line):
            raise _Fail("BAD_REQUEST_LINE")
        if line[m] != 0x20:
            raise _Fail("BAD_METHOD")
        t0 = m + 1
        t1 = _span(line, TARGET_CHAR, t0)
        if t1 == t0 or t1 == len(line):
            raise _Fail("BAD_REQUEST_LINE")
        if line[t1] != 0x20:
            raise _Fail("BAD_TARGET")
        version = line[t1 + 1:]
        if not _is_version(version):
            raise _Fail("BAD_VERSION")
        if version not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise _Fail("VERSION_NOT_SUPPORTED")
        self._minor = version[7] - 0x30
        self._method = line[:m]
        self._target = line[t0:t1]
        self._check_target_form(self._method, self._target)

    @staticmethod
    def _check_target_form(method: bytes, target: bytes):
        if method == b"CONNECT":
            if not _valid_host(target, True, False):
                raise _Fail("BAD_TARGET_FORM")
            return
        if target[0] == 0x2F:               # origin-form
            return
        if target == b"*":
            if method != b"OPTIONS":
                raise _Fail("BAD_TARGET_FORM")
            return
        # absolute-form: scheme "://" authority, then path or query
        if not (0x41 <= target[0] <= 0x5A or 0x61 <= target[0] <= 0x7A):
            raise _Fail("BAD_TARGET")
        i = _span(target, SCHEME)
        if target[i:i + 3] != b"://":
            raise _Fail("BAD_TARGET")
        a = i + 3
        e = a
        while e < len(target) and target[e] not in b"/?":
            e += 1
        if not _valid_host(target[a:e], False, False):
            raise _Fail("BAD_TARGET")

    def _status_line(self, line: bytes):
        if len(line) < 8 or not _is_version(line[:8]):
            raise _Fail("BAD_STATUS_LINE")
        if line[:8] not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise _Fail("VERSION_NOT_SUPPORTED")
        if len(line) < 12 or line[8] != 0x20:
            raise _Fail("BAD_STATUS_LINE")
        digits = line[9:12]
        if not all(0x30 <= c <= 0x39 for c in digits) or not 100 <= int(digits) <= 599:
            raise _Fail("BAD_STATUS")
        self._minor = line[7] - 0x30
        self._status = int(digits)
        self._reason = b""
        if len(line) > 12:
            if line[12] != 0x20:
                raise _Fail("BAD_STATUS")
            reason = line[13:]
            if _span(reason, FIELD_VCHAR) != len(reason):
                raise _Fail("BAD_REASON")
            self._reason = reason

    def _field_line(self, line: bytes, fields: list):
        if line[0] in OWS:
            raise _Fail("OBS_FOLD")
        if len(fields) >= self._max_fields:
            raise _Fail("TOO_MANY_FIELDS")
        i = _span(line, TCHAR)
        if i == len(line):
            raise _Fail("NO_COLON")
        if line[i] != 0x3A:
            if i > 0 and line[i] in OWS:
                raise _Fail("WS_BEFORE_COLON")
            raise _Fail("BAD_FIELD_NAME")
        if i == 0:
            raise _Fail("BAD_FIELD_NAME")
        value = line[i + 1:].lstrip(b" \t")
        if _span(value, FIELD_VCHAR) != len(value):
            raise _Fail("BAD_FIELD_VALUE")
        return line[:i], value.rstrip(b" \t")

    # ------------------------------------------------------------ field semantics

    def _known_field(self, name: bytes, value: bytes):
        lname = name.lower()
        if lname == b"host" and self._request:
            if self._host:
                raise _Fail("DUP_HOST")
            if not _valid_host(value, False, True):
                raise _Fail("BAD_HOST")
            self._host = True
        elif lname == b"content-length":
            # No repeats, not even "5, 5": see docs/http1-policy.md.
            if self._content_length is not None:
                raise _Fail("DUP_CONTENT_LENGTH")
            if not value or not all(0x30 <= c <= 0x39 for c in value) or int(value) > INT64_MAX:
                raise _Fail("BAD_CONTENT_LENGTH")
            self._content_length = int(value)
        elif lname == b"transfer-encoding":
            self._te = True
            for coding in _list_elements(value):
                if not coding or _span(coding, TCHAR) != len(coding):
                    raise _Fail("BAD_TRANSFER_ENCODING")
                coding = coding.lower()
                if coding == b"chunked":
                    self._te_chunked = min(self._te_chunked + 1, 2)
                    self._te_last_chunked = True
                else:
                    self._te_last_chunked = False
                    if coding not in KNOWN_CODINGS:
                        self._te_unknown = True
        elif lname == b"connection":
            for token in _list_elements(value):
                token = token.lower()
                if token == b"close":
                    self._conn_close = True
                elif token == b"keep-alive":
                    self._conn_keep_alive = True
                elif token == b"upgrade":
                    self._conn_upgrade = True
        elif lname == b"upgrade":
            if value:
                self._upgrade_header = True
        elif lname == b"expect" and self._request:
            if any(e.lower() == b"100-continue" for e in _list_elements(value)):
                self._expect_100 = True

    def _head_end(self):
        """The whole-message checks and the framing decision (RFC 9112 6.3)."""
        if self._request:
            if self._minor == 1 and not self._host:
                raise _Fail("MISSING_HOST")
            if self._te:
                if self._minor == 0:
                    raise _Fail("TE_HTTP10")
                if self._content_length is not None:
                    raise _Fail("CL_AND_TE")
                if self._te_unknown:
                    raise _Fail("UNKNOWN_CODING")
                if self._te_chunked > 1:
                    raise _Fail("BAD_TRANSFER_ENCODING")
                if not self._te_last_chunked:
                    raise _Fail("TE_NOT_CHUNKED")
            cl = self._content_length or 0
            if self._method == b"CONNECT":
                if self._te or cl > 0:
                    raise _Fail("CONNECT_BODY")
                self._framing = "none"
                self._connect = True
            elif self._te:
                self._framing = "chunked"
            else:
                self._framing = "length" if cl > 0 else "none"
            if self._minor == 1:
                self._upgrade = self._upgrade_header and self._conn_upgrade
                self._expect_continue = self._expect_100
        else:
            if self._te:
                if self._minor == 0:
                    raise _Fail("TE_HTTP10")
                if self._content_length is not None:
                    raise _Fail("CL_AND_TE")
                if self._te_chunked > 1:
                    raise _Fail("BAD_TRANSFER_ENCODING")
            status, method = self._status, self._request_method
            if status < 200:
                self._framing = "none"
                if status == 101:
                    self._upgrade = True
                else:
                    self._interim = True
            elif status in (204, 304) or method == b"HEAD":
                self._framing = "none"
            elif method == b"CONNECT" and status < 300:
                self._framing = "none"
                self._connect = True
            elif self._te:
                self._framing = "chunked" if self._te_last_chunked else "eof"
            elif self._content_length is not None:
                self._framing = "length" if self._content_length > 0 else "none"
            else:
                self._framing = "eof"
        if self._minor == 1:
            self._keep_alive = not self._conn_close
        else:
            self._keep_alive = self._conn_keep_alive and not self._conn_close
        if self._framing == "eof":
            self._keep_alive = False
        elif self._framing == "length":
            self._remaining = self._content_length
        self._state = HEAD_DONE

    def _head_event(self):
        d = {}
        if self._request:
            d["method"] = self._method
            d["target"] = self._target
        else:
            d["status"] = self._status
            d["reason"] = self._reason
        d["version"] = (1, self._minor)
        d["headers"] = tuple(self._head_fields)
        d["keep_alive"] = self._keep_alive
        d["upgrade"] = self._upgrade
        d["connect"] = self._connect
        d["expect_continue"] = self._expect_continue
        d["interim"] = self._interim
        d["body"] = self._framing
        d["content_length"] = self._content_length
        return ("head", d)

    # ------------------------------------------------------------ bodies

    def _body(self, data: bytes, pos: int, events: list) -> int:
        if self._state == HEAD_DONE:
            self._state = MESSAGE_DONE if self._framing == "none" else BODY
        if self._state == TRAILERS:
            return self._take_lines(data, pos)
        if self._state != BODY:
            return pos
        if self._framing == "length":
            k = min(len(data) - pos, self._remaining)
            if k:
                events.append(("data", data[pos:pos + k]))
            self._remaining -= k
            if self._remaining == 0:
                self._state = MESSAGE_DONE
            return pos + k
        if self._framing == "eof":
            if pos < len(data):
                events.append(("data", data[pos:]))
            return len(data)
        return self._chunked(data, pos, events)

    def _chunked(self, data: bytes, pos: int, events: list) -> int:
        """chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF (RFC 9112 7.1)."""
        while pos < len(data):
            cs = self._cstate
            if cs == C_DATA:
                k = min(len(data) - pos, self._remaining)
                events.append(("data", data[pos:pos + k]))
                self._remaining -= k
                if self._remaining == 0:
                    self._cstate = C_DATA_CR
                pos += k
                continue
            c = data[pos]
            pos += 1
            if cs == C_DATA_CR:
                if c != 0x0D:
                    raise _Fail("BAD_CHUNK_END")
                self._cstate = C_DATA_LF
                continue
            if cs == C_DATA_LF:
                if c != 0x0A:
                    raise _Fail("BAD_CHUNK_END")
                self._cstate = C_SIZE_FIRST
                self._chunk_line = 0
                continue
            if cs == C_LINE_LF:
                if c != 0x0A:
                    raise _Fail("BARE_CR")
                self._chunk_line = 0
                if self._remaining:
                    self._cstate = C_DATA
                    continue
                self._state = TRAILERS          # last-chunk: the trailer section follows
                self._section_bytes = 0
                return self._take_lines(data, pos)
            self._chunk_line += 1
            if self._chunk_line > MAX_CHUNK_LINE:
                raise _Fail("CHUNK_LINE_TOO_LONG")
            if c == 0x0A:
                raise _Fail("BARE_LF")
            if c == 0x0D:
                if cs in _C_CAN_END:
                    self._cstate = C_LINE_LF
                    continue
                raise _Fail("BAD_CHUNK_SIZE" if cs == C_SIZE_FIRST else "BAD_CHUNK_EXT")
            self._cstate = self._chunk_line_byte(cs, c)
        return pos

    def _chunk_line_byte(self, cs: int, c: int) -> int:
        """The next state of the chunk-size line after byte c (not CR or LF)."""
        if cs in (C_SIZE_FIRST, C_SIZE):
            if c in HEXDIG:
                if self._remaining > INT64_MAX >> 4:
                    raise _Fail("CHUNK_SIZE_OVERFLOW")
                self._remaining = self._remaining * 16 + int(chr(c), 16)
                return C_SIZE
            if cs == C_SIZE and c == 0x3B:
                return C_EXT_NAME_BWS
            if cs == C_SIZE and c in OWS:
                return C_EXT_BWS
            raise _Fail("BAD_CHUNK_SIZE")
        if cs == C_EXT_BWS:                 # BWS, then ";" must follow
            if c == 0x3B:
                return C_EXT_NAME_BWS
            if c in OWS:
                return cs
        elif cs == C_EXT_NAME_BWS:
            if c in TCHAR:
                return C_EXT_NAME
            if c in OWS:
                return cs
        elif cs in (C_EXT_NAME, C_EXT_AFTER_NAME):
            if c == 0x3D:
                return C_EXT_VAL_BWS
            if c == 0x3B:
                return C_EXT_NAME_BWS
            if c in OWS:
                return C_EXT_AFTER_NAME
            if cs == C_EXT_NAME and c in TCHAR:
                return cs
        elif cs == C_EXT_VAL_BWS:
            if c == 0x22:
                return C_EXT_QUOTED
            if c in TCHAR:
                return C_EXT_VAL
            if c in OWS:
                return cs
        elif cs in (C_EXT_VAL, C_EXT_AFTER_QUOTED):
            if c == 0x3B:
                return C_EXT_NAME_BWS
            if c in OWS:
                return C_EXT_BWS
            if cs == C_EXT_VAL and c in TCHAR:
                return cs
        elif cs == C_EXT_QUOTED:
            if c == 0x22:
                return C_EXT_AFTER_QUOTED
            if c == 0x5C:
                return C_EXT_QUOTED_ESC
            if c in QDTEXT:
                return cs
        elif cs == C_EXT_QUOTED_ESC:
            if c in FIELD_VCHAR:
                return C_EXT_QUOTED
        raise _Fail("BAD_CHUNK_EXT")

    # ------------------------------------------------------------ the event loop

    def _fail(self, code: str, events: list):
        status, reason = _ERRORS[code]
        events.append(("error", status if self._request else 502, reason))
        self._state = ERROR
        self._stopped = True

    def _message_done(self, events: list, data: bytes, pos: int) -> bool:
        if self._trailer_fields:
            events.append(("trailers", tuple(self._trailer_fields)))
        events.append(("done",))
        if self._connect or self._upgrade:
            self._stopped = self._tunnel = True
            if pos < len(data):
                events.append(("tunnel", data[pos:]))
            return False
        if not (self._keep_alive or self._interim):
            self._stopped = True
            return False
        self._reset()
        return True

    def feed(self, data) -> list:
        data = bytes(data)
        events: list = []
        if self._stopped:
            if self._tunnel and data:
                events.append(("tunnel", data))
            return events
        pos = 0
        try:
            while True:
                state = self._state
                if state == HEAD:
                    if pos == len(data):
                        break
                    pos = self._take_lines(data, pos)
                    if self._state != HEAD_DONE:
                        break
                    events.append(self._head_event())
                elif state == MESSAGE_DONE:
                    if not self._message_done(events, data, pos):
                        break
                else:
                    new = self._body(data, pos, events)
                    if new == pos and self._state == state:
                        break
                    pos = new
        except _Fail as f:
            self._fail(f.code, events)
        return events

    def feed_eof(self) -> list:
        events: list = []
        if self._stopped:
            return events
        self._stopped = True
        state = self._state
        if state == MESSAGE_DONE:
            events.append(("done",))
        elif state == HEAD and not self._start_done and not self._line:
            pass                                # between messages: a clean close
        elif state in (HEAD_DONE, BODY) and self._framing in ("eof", "none"):
            events.append(("done",))
        else:
            self._fail("INCOMPLETE", events)
        return events


# ---------------------------------------------------------------- serializer

def _fields(headers) -> bytes:
    out = []
    for name, value in headers:
        name, value = bytes(name), bytes(value)
        if not name or _span(name, TCHAR) != len(name) or _span(value, FIELD_VCHAR) != len(value):
            raise ValueError("invalid field")
        out.append(name + b": " + value + b"\r\n")
    return b"".join(out)


def _minor(version) -> int:
    version = tuple(version)
    if version not in ((1, 0), (1, 1)):
        raise ValueError("only HTTP/1.0 and HTTP/1.1")
    return version[1]


def http1_request_head(method, target, headers=(), version=(1, 1)) -> bytes:
    method, target = bytes(method), bytes(target)
    if not method or _span(method, TCHAR) != len(method):
        raise ValueError("invalid request head")
    if not target or _span(target, TARGET_CHAR) != len(target):
        raise ValueError("invalid request head")
    try:
        minor = _minor(version)
        fields = _fields(headers)
    except ValueError:
        raise ValueError("invalid request head") from None
    return b"%s %s HTTP/1.%d\r\n%s\r\n" % (method, target, minor, fields)


def http1_response_head(status, reason=b"", headers=(), version=(1, 1)) -> bytes:
    reason = bytes(reason)
    if not 100 <= status <= 599 or _span(reason, FIELD_VCHAR) != len(reason):
        raise ValueError("invalid response head")
    try:
        minor = _minor(version)
        fields = _fields(headers)
    except ValueError:
        raise ValueError("invalid response head") from None
    return b"HTTP/1.%d %03d %s\r\n%s\r\n" % (minor, status, reason, fields)


def http1_chunk(data) -> bytes:
    data = bytes(data)
    if not data:
        raise ValueError("an empty chunk is the last-chunk: use http1_last_chunk")
    return b"%x\r\n%s\r\n" % (len(data), data)


def http1_last_chunk(trailers=()) -> bytes:
    try:
        fields = _fields(trailers)
    except ValueError:
        raise ValueError("invalid trailer field") from None
    return b"0\r\n" + fields + b"\r\n"
