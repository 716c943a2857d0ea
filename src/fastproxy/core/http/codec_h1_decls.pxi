# HTTP/1.1 codec: a strict, incremental parser for requests and responses (RFC 9110, RFC
# 9112) and a serializer for heads and chunk framing. C state only: every function outside
# codec_h1_testing.pxi is `noexcept nogil`; a parser allocates nothing per byte
# and holds at most one head block (bounded by max_head) and one field array (bounded by
# max_fields) for the head, and the same again for trailers.
# Where we are deliberately stricter or looser than llhttp, docs/http1-policy.md says so;
# src/fastproxy/_testing/http1_reference.py is a pure-Python twin that must give the same
# results. Files: codec_h1_decls.pxi (this contract, enums, structs), codec_h1.pxi (the
# parser), codec_h1_writer.pxi (the serializer), codec_h1_testing.pxi (test/bench hooks).
#
# Parsing one message
# -------------------
#   H1Parser p
#   h1_init(&p, H1_REQUEST, max_head, max_start_line, max_fields)    # 0 = the default
#   n = h1_feed_head(&p, data, len)      # bytes taken (all of them until the head ends),
#                                        # or -1: p.err (H1E_*), p.err_status (400, 431, ...)
#   p.state == H1_HEAD_DONE: p.head holds the head, p.flags the connection facts,
#   p.framing how the body is delimited:
#     H1_BODY_NONE     no body (also HEAD responses, 1xx/204/304, CONNECT, Content-Length: 0)
#     H1_BODY_LENGTH   p.body_remaining bytes. The caller may move them itself (splice) and
#                      report them with h1_body_skipped(&p, k); the parser never needs them.
#     H1_BODY_CHUNKED  h1_feed_body() decodes the framing
#     H1_BODY_EOF      (responses) everything until the connection closes: h1_feed_eof()
#   n = h1_feed_body(&p, data, len, &off, &seg)   # -1 on error; otherwise bytes taken, and
#                                        # if seg > 0, data[off:off+seg] is body (zero copy)
#   ...until p.state == H1_MESSAGE_DONE; chunked trailers are then in p.trailers.
#   h1_reset(&p) and feed the bytes after the message to parse the next (pipelining).
#   h1_feed_eof(&p) when the peer closes: 0 = clean (EOF-delimited body done, or between
#   messages), -1 = H1E_INCOMPLETE.
# A response parser must be told which request it answers: h1_response_for(&p, METHOD_HEAD)
# (no body) or METHOD_CONNECT (2xx is a tunnel); it stays set across h1_reset. A response
# with H1F_INTERIM (1xx but 101) is complete at its head: h1_reset and read the next one.
# After a message with H1F_CONNECT or H1F_UPGRADE the caller decides whether the connection
# becomes a tunnel (CONNECT request + 2xx, Upgrade + 101); the parser stops at the message.
#
# The head block
# --------------
# The head's bytes are copied, as received, into p.head.buf (malloc'd, grows by doubling up
# to max_head). Start-line pieces and fields are (offset, length) pairs into that block
# (HttpField), with optional whitespace trimmed from values. h1_head_take() moves the block
# and field array out (to keep per stream and show to Python filters without a copy); the
# parser allocates a fresh one for its next head. Trailers use their own HttpHead the same way.
#
# Limits (bytes counted as received, CRLFs included)
# --------------------------------------------------
#   max_head        start line + fields (+ empty lines skipped before a request) -> 431
#                   (the trailer section has its own budget of the same size)
#   max_start_line  the request line alone -> 431, as Envoy (responses: 502). Defaults to max_head,
#                   i.e. like Envoy there is no separate limit unless configured.
#   max_fields      field lines in the head (and, separately, in the trailers) -> 431
#   H1_MAX_CHUNK_LINE bytes of one chunk-size line with its extensions -> 400
# Errors of a response parser always carry status 502 (the proxy's answer to a bad upstream).
#
# Serializing
# -----------
#   n = h1_request_head_size(method, target, minor, fields, nfields)   # -1: invalid input
#   h1_write_request_head(out, method, target, minor, fields, nfields) # writes exactly n
#   h1_response_head_size / h1_write_response_head (status, reason, minor, fields, nfields)
#   h1_write_chunk_header(out, size)     # "<hex>\r\n", at most H1_CHUNK_HEADER_MAX bytes;
#                                        # the chunk's data follows, then "\r\n"
#   h1_last_chunk_size / h1_write_last_chunk (trailers)   # "0\r\n" trailers "\r\n"
# Sizes validate everything (token methods and names, no CR/LF/NUL/CTL in targets, values
# or reasons), so a Python filter can never inject a line into the stream.

from libc.string cimport memchr, memcmp

cdef extern from "<stdint.h>" nogil:
    const int64_t INT64_MAX

# ---------------------------------------------------------------- constants

cdef enum:
    H1_REQUEST = 0
    H1_RESPONSE = 1

cdef enum:                          # H1Parser.state
    H1_HEAD = 0                     # reading the start line and the field lines
    H1_HEAD_DONE = 1                # the head is complete; p.framing says what follows
    H1_BODY = 2
    H1_TRAILERS = 3                 # reading the trailer section of a chunked body
    H1_MESSAGE_DONE = 4
    H1_ERROR = 5

cdef enum:                          # H1Parser.framing
    H1_BODY_NONE = 0
    H1_BODY_LENGTH = 1
    H1_BODY_CHUNKED = 2
    H1_BODY_EOF = 3

cdef enum:                          # H1Parser.flags, valid from H1_HEAD_DONE on
    H1F_KEEP_ALIVE = 0x1            # the connection may carry another message after this
    H1F_UPGRADE = 0x2               # request: HTTP/1.1 Upgrade + Connection: upgrade;
                                    # response: 101 Switching Protocols
    H1F_CONNECT = 0x4               # request: CONNECT; response: 2xx to a CONNECT
    H1F_EXPECT_CONTINUE = 0x8       # HTTP/1.1 request with Expect: 100-continue
    H1F_INTERIM = 0x10              # response: 1xx other than 101; the final one follows
    H1F_TE_CODINGS = 0x20           # Transfer-Encoding names a coding besides chunked (the
                                    # framing is still RFC 9112's; the proxy refuses these)
    # bookkeeping while the head is read
    H1X_START_DONE = 0x100
    H1X_HOST = 0x200
    H1X_CL = 0x400
    H1X_TE = 0x800
    H1X_TE_UNKNOWN = 0x1000
    H1X_TE_LAST_CHUNKED = 0x2000
    H1X_CONN_CLOSE = 0x4000
    H1X_CONN_KEEP_ALIVE = 0x8000
    H1X_CONN_UPGRADE = 0x10000
    H1X_UPGRADE_HDR = 0x20000
    H1X_EXPECT_100 = 0x40000
    H1X_ENVOY_HDR = 0x80000         # request: a field name starts with "x-envoy-" (kept after
                                    # the head: the connection manager sanitizes only then)

cdef enum:                          # H1Parser.err; statuses and reasons in _H1_ERRORS
    H1E_OK = 0
    H1E_BARE_LF
    H1E_BARE_CR
    H1E_BAD_METHOD
    H1E_BAD_REQUEST_LINE
    H1E_BAD_TARGET
    H1E_BAD_TARGET_FORM
    H1E_BAD_VERSION
    H1E_VERSION_NOT_SUPPORTED
    H1E_BAD_STATUS_LINE
    H1E_BAD_STATUS
    H1E_BAD_REASON
    H1E_LINE_TOO_LONG
    H1E_HEAD_TOO_LARGE
    H1E_TOO_MANY_FIELDS
    H1E_OBS_FOLD
    H1E_NO_COLON
    H1E_WS_BEFORE_COLON
    H1E_BAD_FIELD_NAME
    H1E_BAD_FIELD_VALUE
    H1E_BAD_CONTENT_LENGTH
    H1E_DUP_CONTENT_LENGTH
    H1E_CL_AND_TE
    H1E_BAD_TRANSFER_ENCODING
    H1E_TE_NOT_CHUNKED
    H1E_UNKNOWN_CODING
    H1E_TE_HTTP10
    H1E_MISSING_HOST
    H1E_DUP_HOST
    H1E_BAD_HOST
    H1E_CONNECT_BODY
    H1E_BAD_CHUNK_SIZE
    H1E_CHUNK_SIZE_OVERFLOW
    H1E_BAD_CHUNK_EXT
    H1E_CHUNK_LINE_TOO_LONG
    H1E_BAD_CHUNK_END
    H1E_INCOMPLETE
    H1E_NO_MEMORY
    H1E_COUNT

# (name, status for a request parser, reason). Responses answer 502 whatever the error.
# http1_reference.py carries the same table; a test keeps them equal.
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

cdef enum:
    H1_DEFAULT_MAX_HEAD = 60 * 1024     # Envoy's max_request_headers_kb default
    H1_DEFAULT_MAX_FIELDS = 100         # Envoy's max_headers_count default
    H1_MAX_HEAD_CAP = 64 * 1024 * 1024  # keeps every offset in a uint32_t with room to spare
    H1_MAX_CHUNK_LINE = 4096            # chunk-size line incl. extensions (they are ignored)
    H1_CHUNK_HEADER_MAX = 18            # 16 hex digits + CRLF, plus one spare

cdef enum:
    _HT = 9
    _LF = 10
    _CR = 13
    _SP = 32
    _DQUOTE = 34

# Chunked framing sub-states (H1Parser.cstate). The chunk-size line is read byte by byte
# because it can be split anywhere; chunk data is handed out in one piece per call.
cdef enum:
    _C_SIZE_FIRST = 0               # expecting the first hex digit
    _C_SIZE = 1
    _C_EXT_BWS = 2                  # whitespace that must lead to ';'
    _C_EXT_NAME_BWS = 3             # after ';'
    _C_EXT_NAME = 4
    _C_EXT_AFTER_NAME = 5           # whitespace after a name: '=' or ';' must follow
    _C_EXT_VAL_BWS = 6              # after '='
    _C_EXT_VAL = 7                  # token value
    _C_EXT_QUOTED = 8
    _C_EXT_QUOTED_ESC = 9
    _C_EXT_AFTER_QUOTED = 10
    _C_LINE_LF = 11                 # chunk-size line ended with CR
    _C_DATA = 12
    _C_DATA_CR = 13
    _C_DATA_LF = 14

# Character classes, one table lookup per byte.
cdef enum:
    _K_TCHAR = 0x01                 # token (method, field name, coding)
    _K_FVAL = 0x02                  # field-value byte: HTAB, SP, VCHAR, obs-text
    _K_TARGET = 0x04                # request-target byte: VCHAR except '#'
    _K_HEX = 0x08
    _K_REGNAME = 0x10               # reg-name / IPv4address byte (unreserved, %, sub-delims)
    _K_SCHEME = 0x20                # ALPHA DIGIT + - .
    _K_QDTEXT = 0x40                # quoted-string text
    _K_OWS = 0x80                   # SP, HTAB

cdef uint8_t _h1_cls[256]
cdef uint8_t _h1_lower[256]
cdef uint16_t _h1_err_status[<int>H1E_COUNT]
cdef const char* _h1_err_reasons[<int>H1E_COUNT]
_h1_reason_bytes = tuple(e[2].encode() for e in HTTP1_ERRORS)   # keeps those char*s alive


cdef _h1_init_tables():
    cdef int c
    tchar = b"!#$%&'*+-.^_`|~"
    regname = b"-._~%!$&'()*+,;="
    for c in range(256):
        k = 0
        if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122):
            k |= _K_TCHAR | _K_REGNAME | _K_SCHEME
        if c in tchar:
            k |= _K_TCHAR
        if c in regname:
            k |= _K_REGNAME
        if c in b"+-.":
            k |= _K_SCHEME
        if c == _HT or c == _SP or 0x21 <= c <= 0x7E or c >= 0x80:
            k |= _K_FVAL
        if 0x21 <= c <= 0x7E and c != 35:
            k |= _K_TARGET
        if (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102):
            k |= _K_HEX
        if c == _HT or c == _SP or c == 0x21 or 0x23 <= c <= 0x5B or 0x5D <= c <= 0x7E or c >= 0x80:
            k |= _K_QDTEXT
        if c == _HT or c == _SP:
            k |= _K_OWS
        _h1_cls[c] = k
        _h1_lower[c] = c + 32 if 65 <= c <= 90 else c
    assert len(HTTP1_ERRORS) == <int>H1E_COUNT
    for c in range(<int>H1E_COUNT):
        _h1_err_status[c] = HTTP1_ERRORS[c][1]
        _h1_err_reasons[c] = <const char*>_h1_reason_bytes[c]

_h1_init_tables()


# ---------------------------------------------------------------- structs

cdef struct H1Parser:
    uint8_t kind                    # H1_REQUEST / H1_RESPONSE
    uint8_t state                   # H1_HEAD ... H1_ERROR
    uint8_t framing                 # H1_BODY_*
    uint8_t err                     # H1E_*
    uint16_t err_status             # the status to answer with
    uint8_t req_method              # response parser: the method of the request answered
    uint8_t cstate                  # chunked sub-state
    uint8_t te_chunked              # "chunked" codings seen (saturates at 2)
    uint32_t flags                  # H1F_* (public) | H1X_* (bookkeeping)
    int64_t content_length          # -1 when absent
    uint64_t body_remaining         # LENGTH: bytes left; CHUNKED: bytes left in this chunk
    uint32_t line_start             # offset of the incomplete line in the section's block
    uint32_t section_bytes          # bytes taken by the head (or trailer section) so far
    uint32_t chunk_line             # bytes of the chunk-size line so far
    uint32_t max_head
    uint32_t max_start_line
    uint32_t max_fields
    HttpHead head
    HttpHead trailers


# ---------------------------------------------------------------- the codec's connection state
# Kept in the connection structs (HConn.h1, UpConn.h1) and read only by codec_h1_server.pxi
# and codec_h1_client.pxi: the connection manager and the router see a codec through its
# ServerCodecApi / ClientCodecApi (core/http/decls.pxi).

cdef struct H1BodyWriter:           # how the body of the head we sent last is framed
    uint8_t chunked                 # chunked: each piece becomes a chunk, the end a last-chunk
    uint8_t counted                 # a length a filter set: the body must come to exactly it
    uint8_t head_only               # an answer to HEAD: the head announces a body never sent
    uint64_t left                   # counted: bytes still owed

cdef struct H1ServerConn:           # a downstream HTTP/1.1 connection
    H1Parser req                    # the request being read
    H1BodyWriter resp               # the response being written

cdef struct H1ClientConn:           # an upstream HTTP/1.1 connection
    H1Parser resp                   # the response being read
    H1BodyWriter req                # the request being written
    uint8_t end_delivered           # the response's end went to the stream


cdef struct H1ResponseReader:
    # One HTTP/1.1 response read on its own, outside the pool (active health checks,
    # core/upstream/health_checker.pxi): the codec's parser behind the h1rr_* calls of
    # codec_h1_client.pxi, so no other file reads parser state.
    H1Parser p
