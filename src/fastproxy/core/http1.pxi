# HTTP/1.1 codec: a strict, incremental parser for requests and responses (RFC 9110, RFC
# 9112) and a serializer for heads and chunk framing. C state only: every function above
# the Python section at the end is `noexcept nogil`; a parser allocates nothing per byte
# and holds at most one head block (bounded by max_head) and one field array (bounded by
# max_fields) for the head, and the same again for trailers.
# Where we are deliberately stricter or looser than llhttp, docs/http1-policy.md says so;
# src/fastproxy/http1_reference.py is a pure-Python twin that must give the same results.
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
# A response parser must be told which request it answers: h1_response_for(&p, H1M_HEAD)
# (no body) or H1M_CONNECT (2xx is a tunnel); it stays set across h1_reset. A response
# with H1F_INTERIM (1xx but 101) is complete at its head: h1_reset and read the next one.
# After a message with H1F_CONNECT or H1F_UPGRADE the caller decides whether the connection
# becomes a tunnel (CONNECT request + 2xx, Upgrade + 101); the parser stops at the message.
#
# The head block
# --------------
# The head's bytes are copied, as received, into p.head.buf (malloc'd, grows by doubling up
# to max_head). Start-line pieces and fields are (offset, length) pairs into that block
# (H1Field), with optional whitespace trimmed from values. h1_head_take() moves the block
# and field array out (to keep per stream and show to Python filters without a copy); the
# parser allocates a fresh one for its next head. Trailers use their own H1Head the same way.
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

cdef enum:                          # H1Head.method: the methods whose semantics we act on
    H1M_OTHER = 0
    H1M_GET = 1
    H1M_HEAD = 2
    H1M_POST = 3
    H1M_PUT = 4
    H1M_DELETE = 5
    H1M_CONNECT = 6
    H1M_OPTIONS = 7
    H1M_TRACE = 8
    H1M_PATCH = 9

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
    H1_BLOCK_MIN = 1024                 # first head block: most heads fit
    H1_FIELDS_MIN = 16

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

cdef struct H1Field:
    uint32_t name_off               # offsets into the H1Head's buf
    uint32_t name_len
    uint32_t value_off              # the value without leading/trailing SP and HTAB
    uint32_t value_len

cdef struct H1Head:
    char* buf                       # the head's bytes as received (malloc'd, owned)
    uint32_t len
    uint32_t cap
    H1Field* fields                 # malloc'd, owned
    uint32_t nfields
    uint32_t fields_cap
    uint32_t method_off             # request line pieces (offsets into buf)
    uint32_t method_len
    uint32_t target_off
    uint32_t target_len
    uint32_t reason_off             # status line pieces
    uint32_t reason_len
    uint16_t status
    uint8_t method                  # H1M_*
    uint8_t minor                   # HTTP/1.<minor>: 0 or 1

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
    H1Head head
    H1Head trailers

cdef struct H1Str:                  # serializer input: a byte string the caller owns
    const char* p
    size_t n

cdef struct H1Pair:                 # serializer input: one field line
    H1Str name
    H1Str value


# ---------------------------------------------------------------- set-up and teardown

cdef void h1_head_free(H1Head* h) noexcept nogil:
    free(h.buf)
    free(h.fields)
    memset(h, 0, sizeof(H1Head))


cdef inline int _h1_head_reserve(H1Head* h, size_t need) noexcept nogil:
    """Room for need bytes plus a NUL after them. The head's bytes are always followed by a
    NUL (h.buf[h.len] == 0), so a C function that reads a field up to a terminator it was
    not given stops inside the block: regexec is called with REG_STARTEND, which glibc
    honours, but ASan's regexec interceptor (and other libcs) read to the NUL. -1: no memory."""
    cdef size_t cap
    cdef char* nb
    if need + 1 <= h.cap:
        return 0
    cap = <size_t>h.cap * 2 if h.cap else H1_BLOCK_MIN
    while cap < need + 1:
        cap *= 2
    nb = <char*>realloc(h.buf, cap)
    if nb == NULL:
        return -1
    h.buf = nb
    h.cap = <uint32_t>cap
    return 0


cdef int h1_head_add_field(H1Head* h, const char* name, size_t nn, const char* value,
                          size_t vn) noexcept nogil:
    """Append a field the proxy supplies (e.g. a default Host) to a taken head: its bytes go
    after the received ones, so offsets already handed out stay valid. -1: out of memory."""
    cdef size_t need = <size_t>h.len + nn + vn
    cdef H1Field* nf
    cdef uint32_t ncap
    if need > 0xFFFFFFF0u or _h1_head_reserve(h, need) < 0:
        return -1
    if h.nfields == h.fields_cap:
        ncap = h.fields_cap * 2 if h.fields_cap else H1_FIELDS_MIN
        nf = <H1Field*>realloc(h.fields, ncap * sizeof(H1Field))
        if nf == NULL:
            return -1
        h.fields = nf
        h.fields_cap = ncap
    memcpy(h.buf + h.len, name, nn)
    memcpy(h.buf + h.len + nn, value, vn)
    h.fields[h.nfields].name_off = h.len
    h.fields[h.nfields].name_len = <uint32_t>nn
    h.fields[h.nfields].value_off = h.len + <uint32_t>nn
    h.fields[h.nfields].value_len = <uint32_t>vn
    h.nfields += 1
    h.len = <uint32_t>need
    h.buf[h.len] = 0
    return 0


cdef int h1_head_set_target(H1Head* h, const char* t, size_t n) noexcept nogil:
    """Replace a taken request head's target (a normalized path): in place when it is not
    longer, else its bytes go after the received ones (offsets stay valid). -1: no memory."""
    cdef size_t need = <size_t>h.len + n
    if n <= h.target_len:
        memmove(h.buf + h.target_off, t, n)
        h.target_len = <uint32_t>n
        return 0
    if need > 0xFFFFFFF0u or _h1_head_reserve(h, need) < 0:
        return -1
    memcpy(h.buf + h.len, t, n)
    h.target_off = h.len
    h.target_len = <uint32_t>n
    h.len = <uint32_t>need
    h.buf[h.len] = 0
    return 0


cdef inline void _h1_head_clear(H1Head* h) noexcept nogil:
    """Forget the contents, keep the memory for the next message."""
    cdef char* buf = h.buf
    cdef uint32_t cap = h.cap
    cdef H1Field* fields = h.fields
    cdef uint32_t fields_cap = h.fields_cap
    memset(h, 0, sizeof(H1Head))
    h.buf = buf
    h.cap = cap
    h.fields = fields
    h.fields_cap = fields_cap


cdef void h1_init(H1Parser* p, int kind, uint32_t max_head, uint32_t max_start_line,
                  uint32_t max_fields) noexcept nogil:
    """A parser for one connection direction. Limits of 0 take the defaults; nothing is
    allocated until the first byte arrives."""
    memset(p, 0, sizeof(H1Parser))
    p.kind = <uint8_t>kind
    if max_head == 0:
        max_head = H1_DEFAULT_MAX_HEAD
    if max_head > H1_MAX_HEAD_CAP:
        max_head = H1_MAX_HEAD_CAP
    if max_start_line == 0 or max_start_line > max_head:
        max_start_line = max_head
    if max_fields == 0:
        max_fields = H1_DEFAULT_MAX_FIELDS
    p.max_head = max_head
    p.max_start_line = max_start_line
    p.max_fields = max_fields
    p.content_length = -1


cdef void h1_reset(H1Parser* p) noexcept nogil:
    """Prepare for the next message on the same connection (keeps blocks, limits and
    req_method)."""
    p.state = H1_HEAD
    p.framing = H1_BODY_NONE
    p.err = H1E_OK
    p.err_status = 0
    p.cstate = _C_SIZE_FIRST
    p.te_chunked = 0
    p.flags = 0
    p.content_length = -1
    p.body_remaining = 0
    p.line_start = 0
    p.section_bytes = 0
    p.chunk_line = 0
    _h1_head_clear(&p.head)
    _h1_head_clear(&p.trailers)


cdef void h1_free(H1Parser* p) noexcept nogil:
    h1_head_free(&p.head)
    h1_head_free(&p.trailers)


cdef inline void h1_response_for(H1Parser* p, int req_method) noexcept nogil:
    p.req_method = <uint8_t>req_method


cdef void h1_head_take(H1Parser* p, H1Head* out) noexcept nogil:
    """Move the head block and its fields to `out` (the caller frees it with h1_head_free).
    The parser starts a new block for its next head."""
    out[0] = p.head
    memset(&p.head, 0, sizeof(H1Head))


cdef inline const char* h1_err_reason(int err) noexcept nogil:
    """A short English reason for an H1E_* (for logs and error responses)."""
    if 0 <= err < <int>H1E_COUNT:
        return _h1_err_reasons[err]
    return "unknown error"


cdef inline int _h1_fail(H1Parser* p, int err) noexcept nogil:
    p.err = <uint8_t>err
    p.err_status = 502 if p.kind == H1_RESPONSE else _h1_err_status[err]
    p.state = H1_ERROR
    return -1


# ---------------------------------------------------------------- small scanners

cdef inline size_t _h1_span(const uint8_t* s, size_t n, uint8_t k) noexcept nogil:
    """Length of the prefix of s[:n] whose bytes are all in class k."""
    cdef size_t i = 0
    while i < n and (_h1_cls[s[i]] & k):
        i += 1
    return i


# The field-value scan is where a head's bytes go (cookies, user agents, tokens), so it
# looks at 16 bytes per step with SSE2 (baseline on x86-64) and 8 per step elsewhere. Plain
# C because Cython has no vector types; it answers exactly what a per-byte _K_FVAL test
# would: the length of the prefix without controls (HTAB aside) and DEL.
cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static inline size_t fp_h1_value_span(const unsigned char *s, size_t n) {
        size_t i = 0;
    #if defined(__SSE2__)
        const __m128i ctl_max = _mm_set1_epi8(0x1F), del = _mm_set1_epi8(0x7F),
                      tab = _mm_set1_epi8(0x09);
        while (i + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(x, ctl_max), x);   /* x <= 0x1F */
            ctl = _mm_andnot_si128(_mm_cmpeq_epi8(x, tab), ctl);
            int bad = _mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(x, del)));
            if (bad)
                return i + (size_t)__builtin_ctz((unsigned)bad);
            i += 16;
        }
    #else
        while (i + 8 <= n) {
            uint64_t w, y;
            memcpy(&w, s + i, 8);
            y = w ^ 0x7F7F7F7F7F7F7F7FULL;
            /* a byte below 0x20 or equal to 0x7F sets its high bit (bytes >= 0x80 never) */
            if ((((w - 0x2020202020202020ULL) & ~w) | ((y - 0x0101010101010101ULL) & ~y))
                    & 0x8080808080808080ULL)
                break;
            i += 8;
        }
    #endif
        while (i < n && ((s[i] >= 0x20 && s[i] != 0x7F) || s[i] == 0x09))
            i++;
        return i;
    }
    """
    size_t fp_h1_value_span(const uint8_t* s, size_t n) nogil


cdef inline size_t _h1_value_span(const uint8_t* s, size_t n) noexcept nogil:
    return fp_h1_value_span(s, n)


cdef inline size_t _h1_token_span(const uint8_t* s, size_t n) noexcept nogil:
    """_h1_span(s, n, _K_TCHAR), four lookups per branch (names are short but many)."""
    cdef size_t i = 0
    while i + 4 <= n and (_h1_cls[s[i]] & _h1_cls[s[i + 1]] & _h1_cls[s[i + 2]]
                          & _h1_cls[s[i + 3]] & _K_TCHAR):
        i += 4
    while i < n and (_h1_cls[s[i]] & _K_TCHAR):
        i += 1
    return i


cdef inline bint _h1_version(const uint8_t* s) noexcept nogil:
    """s[:8] is "HTTP/" DIGIT "." DIGIT."""
    return (s[0] == 72 and s[1] == 84 and s[2] == 84 and s[3] == 80 and s[4] == 47
            and 48 <= s[5] <= 57 and s[6] == 46 and 48 <= s[7] <= 57)


cdef inline bint _h1_pct_encoded_ok(const uint8_t* s, size_t n) noexcept nogil:
    """Every '%' in s[:n] starts a pct-encoded triplet ('%' HEXDIG HEXDIG, RFC 3986 2.1)."""
    cdef const uint8_t* p = <const uint8_t*>memchr(s, 37, n)
    while p != NULL:
        if <size_t>(p - s) + 2 >= n or not (_h1_cls[p[1]] & _K_HEX) or not (_h1_cls[p[2]] & _K_HEX):
            return False
        p = <const uint8_t*>memchr(p + 3, 37, n - <size_t>(p - s) - 3)
    return True


cdef int _h1_host(const uint8_t* s, size_t n, bint need_port, bint allow_empty) noexcept nogil:
    """uri-host [":" port] (RFC 3986), the form of Host values and authorities.
    Returns 0 when valid. Userinfo ('@') is never valid here."""
    cdef size_t i = 0
    cdef uint32_t port = 0
    if n == 0:
        return 0 if allow_empty else -1
    if s[0] == 91:                                      # '[' IP-literal ']'
        i = 1
        while i < n and ((_h1_cls[s[i]] & _K_HEX) or s[i] == 58 or s[i] == 46):
            i += 1
        if i == 1 or i == n or s[i] != 93:
            return -1
        i += 1
    else:
        i = _h1_span(s, n, _K_REGNAME)
        if i == 0 or not _h1_pct_encoded_ok(s, i):
            return -1
    if i == n:
        return -1 if need_port else 0
    if s[i] != 58:                                      # ':'
        return -1
    i += 1
    if i == n:
        return -1 if need_port else 0
    if n - i > 5:
        return -1
    while i < n:
        if not (48 <= s[i] <= 57):
            return -1
        port = port * 10 + (s[i] - 48)
        i += 1
    return 0 if port <= 65535 else -1


cdef int _h1_method_id(const uint8_t* m, size_t n) noexcept nogil:
    # Methods are case-sensitive (RFC 9110 9.1): "get" is some other method.
    if n == 3:
        if memcmp(m, b"GET", 3) == 0:
            return H1M_GET
        if memcmp(m, b"PUT", 3) == 0:
            return H1M_PUT
    elif n == 4:
        if memcmp(m, b"HEAD", 4) == 0:
            return H1M_HEAD
        if memcmp(m, b"POST", 4) == 0:
            return H1M_POST
    elif n == 5:
        if memcmp(m, b"TRACE", 5) == 0:
            return H1M_TRACE
        if memcmp(m, b"PATCH", 5) == 0:
            return H1M_PATCH
    elif n == 6:
        if memcmp(m, b"DELETE", 6) == 0:
            return H1M_DELETE
    elif n == 7:
        if memcmp(m, b"CONNECT", 7) == 0:
            return H1M_CONNECT
        if memcmp(m, b"OPTIONS", 7) == 0:
            return H1M_OPTIONS
    return H1M_OTHER


# ---------------------------------------------------------------- start lines

cdef int _h1_target_form(H1Head* h, const uint8_t* t, size_t n) noexcept nogil:
    """RFC 9112 3.2: which target forms each method may use. Returns an H1E_* (0: ok)."""
    cdef size_t i, a
    if h.method == H1M_CONNECT:                         # authority-form, port required
        return H1E_OK if _h1_host(t, n, True, False) == 0 else H1E_BAD_TARGET_FORM
    if t[0] == 47:                                      # origin-form
        return H1E_OK
    if n == 1 and t[0] == 42:                           # asterisk-form
        return H1E_OK if h.method == H1M_OPTIONS else H1E_BAD_TARGET_FORM
    # absolute-form: scheme "://" authority [path-abempty] ["?" query]
    if not (65 <= t[0] <= 90 or 97 <= t[0] <= 122):
        return H1E_BAD_TARGET
    i = _h1_span(t, n, _K_SCHEME)
    if i + 3 > n or t[i] != 58 or t[i + 1] != 47 or t[i + 2] != 47:
        return H1E_BAD_TARGET
    a = i + 3
    i = a
    while i < n and t[i] != 47 and t[i] != 63:
        i += 1
    if _h1_host(t + a, i - a, False, False) != 0:
        return H1E_BAD_TARGET
    return H1E_OK


cdef int _h1_request_line(H1Parser* p, H1Head* h, uint32_t off, uint32_t n) noexcept nogil:
    """method SP request-target SP HTTP-version, exactly one SP each (RFC 9112 3)."""
    cdef const uint8_t* s = <const uint8_t*>h.buf + off
    cdef uint32_t m = <uint32_t>_h1_span(s, n, _K_TCHAR)
    cdef uint32_t t0, t1, v
    cdef int e
    if m == 0:
        return _h1_fail(p, H1E_BAD_METHOD)
    if m == n:
        return _h1_fail(p, H1E_BAD_REQUEST_LINE)
    if s[m] != _SP:
        return _h1_fail(p, H1E_BAD_METHOD)
    t0 = m + 1
    t1 = t0 + <uint32_t>_h1_span(s + t0, n - t0, _K_TARGET)
    if t1 == t0 or t1 == n:
        return _h1_fail(p, H1E_BAD_REQUEST_LINE)
    if s[t1] != _SP:
        return _h1_fail(p, H1E_BAD_TARGET)
    v = t1 + 1
    if n - v != 8 or not _h1_version(s + v):
        return _h1_fail(p, H1E_BAD_VERSION)
    if s[v + 5] != 49 or s[v + 7] > 49:                 # only 1.0 and 1.1
        return _h1_fail(p, H1E_VERSION_NOT_SUPPORTED)
    h.minor = s[v + 7] - 48
    h.method_off = off
    h.method_len = m
    h.target_off = off + t0
    h.target_len = t1 - t0
    h.method = <uint8_t>_h1_method_id(s, m)
    e = _h1_target_form(h, s + t0, t1 - t0)
    if e != H1E_OK:
        return _h1_fail(p, e)
    return 0


cdef int _h1_status_line(H1Parser* p, H1Head* h, uint32_t off, uint32_t n) noexcept nogil:
    """HTTP-version SP 3DIGIT [SP reason-phrase]. A missing reason (with or without its SP)
    is accepted: the reason means nothing (RFC 9112 4) and servers do omit it."""
    cdef const uint8_t* s = <const uint8_t*>h.buf + off
    cdef uint32_t status
    if n < 8 or not _h1_version(s):
        return _h1_fail(p, H1E_BAD_STATUS_LINE)
    if s[5] != 49 or s[7] > 49:
        return _h1_fail(p, H1E_VERSION_NOT_SUPPORTED)
    if n < 12 or s[8] != _SP:
        return _h1_fail(p, H1E_BAD_STATUS_LINE)
    if not (48 <= s[9] <= 57 and 48 <= s[10] <= 57 and 48 <= s[11] <= 57):
        return _h1_fail(p, H1E_BAD_STATUS)
    status = (s[9] - 48) * 100 + (s[10] - 48) * 10 + (s[11] - 48)
    if status < 100 or status > 599:                    # RFC 9110 15: outside is invalid
        return _h1_fail(p, H1E_BAD_STATUS)
    h.minor = s[7] - 48
    h.status = <uint16_t>status
    h.reason_off = off + n
    h.reason_len = 0
    if n > 12:
        if s[12] != _SP:
            return _h1_fail(p, H1E_BAD_STATUS)
        if _h1_span(s + 13, n - 13, _K_FVAL) != n - 13:
            return _h1_fail(p, H1E_BAD_REASON)
        h.reason_off = off + 13
        h.reason_len = n - 13
    return 0


# ---------------------------------------------------------------- field lines

cdef bint _h1_list_next(const uint8_t* v, size_t n, size_t* pos, size_t* a, size_t* b) noexcept nogil:
    """The next element of a comma-separated list, OWS trimmed (may be empty): v[a:b].
    Returns False when the list is exhausted."""
    cdef size_t i = pos[0]
    cdef size_t e
    if i > n:
        return False
    e = i
    while e < n and v[e] != 44:
        e += 1
    pos[0] = e + 1
    while i < e and (_h1_cls[v[i]] & _K_OWS):
        i += 1
    while e > i and (_h1_cls[v[e - 1]] & _K_OWS):
        e -= 1
    a[0] = i
    b[0] = e
    return True


cdef int _h1_content_length(H1Parser* p, const uint8_t* v, size_t n) noexcept nogil:
    cdef int64_t x = 0
    cdef size_t i
    cdef int d
    if p.flags & H1X_CL:
        # Repeats, even of the same number, are refused (a list "5, 5" too): a proxy that
        # picks one value while its upstream picks another is how bodies get smuggled.
        return _h1_fail(p, H1E_DUP_CONTENT_LENGTH)
    if n == 0:
        return _h1_fail(p, H1E_BAD_CONTENT_LENGTH)
    for i in range(n):
        d = <int>v[i] - 48
        if d < 0 or d > 9:
            return _h1_fail(p, H1E_BAD_CONTENT_LENGTH)
        if x > (INT64_MAX - d) // 10:
            return _h1_fail(p, H1E_BAD_CONTENT_LENGTH)
        x = x * 10 + d
    p.flags |= H1X_CL
    p.content_length = x
    return 0


cdef int _h1_transfer_encoding(H1Parser* p, const uint8_t* v, size_t n) noexcept nogil:
    """Each element must be a bare coding token: no parameters and no empty elements
    (stricter than RFC 9112's list rule, on purpose, for the header that frames bodies)."""
    cdef size_t pos = 0, a, b, k
    p.flags |= H1X_TE
    while _h1_list_next(v, n, &pos, &a, &b):
        k = b - a
        if k == 0 or _h1_span(v + a, k, _K_TCHAR) != k:
            return _h1_fail(p, H1E_BAD_TRANSFER_ENCODING)
        if k == 7 and _rt_ieq(<const char*>(v + a), b"chunked", 7):
            if p.te_chunked < 2:
                p.te_chunked += 1
            p.flags |= H1X_TE_LAST_CHUNKED
            continue
        p.flags &= ~H1X_TE_LAST_CHUNKED
        p.flags |= H1F_TE_CODINGS
        if not ((k == 4 and _rt_ieq(<const char*>(v + a), b"gzip", 4))
                or (k == 7 and _rt_ieq(<const char*>(v + a), b"deflate", 7))
                or (k == 8 and _rt_ieq(<const char*>(v + a), b"compress", 8))
                or (k == 6 and _rt_ieq(<const char*>(v + a), b"x-gzip", 6))
                or (k == 10 and _rt_ieq(<const char*>(v + a), b"x-compress", 10))):
            p.flags |= H1X_TE_UNKNOWN
    return 0


cdef void _h1_connection(H1Parser* p, const uint8_t* v, size_t n) noexcept nogil:
    cdef size_t pos = 0, a, b, k
    while _h1_list_next(v, n, &pos, &a, &b):
        k = b - a
        if k == 5 and _rt_ieq(<const char*>(v + a), b"close", 5):
            p.flags |= H1X_CONN_CLOSE
        elif k == 10 and _rt_ieq(<const char*>(v + a), b"keep-alive", 10):
            p.flags |= H1X_CONN_KEEP_ALIVE
        elif k == 7 and _rt_ieq(<const char*>(v + a), b"upgrade", 7):
            p.flags |= H1X_CONN_UPGRADE


cdef int _h1_known_field(H1Parser* p, const uint8_t* name, size_t nl, const uint8_t* v,
                         size_t n) noexcept nogil:
    """Act on the fields that frame the message or the connection."""
    cdef size_t pos = 0, a, b
    if nl > 8 and (name[0] | 0x20) == 120 and p.kind == H1_REQUEST and _rt_ieq(<const char*>(name), b"x-envoy-", 8):
        p.flags |= H1X_ENVOY_HDR        # one byte compared for almost every other field
        return 0
    if nl == 4:
        if p.kind == H1_REQUEST and _rt_ieq(<const char*>(name), b"host", 4):
            if p.flags & H1X_HOST:
                return _h1_fail(p, H1E_DUP_HOST)
            if _h1_host(v, n, False, True) != 0:
                return _h1_fail(p, H1E_BAD_HOST)
            p.flags |= H1X_HOST
    elif nl == 14:
        if _rt_ieq(<const char*>(name), b"content-length", 14):
            return _h1_content_length(p, v, n)
    elif nl == 17:
        if _rt_ieq(<const char*>(name), b"transfer-encoding", 17):
            return _h1_transfer_encoding(p, v, n)
    elif nl == 10:
        if _rt_ieq(<const char*>(name), b"connection", 10):
            _h1_connection(p, v, n)
    elif nl == 7:
        if n and _rt_ieq(<const char*>(name), b"upgrade", 7):
            p.flags |= H1X_UPGRADE_HDR
    elif nl == 6:
        if p.kind == H1_REQUEST and _rt_ieq(<const char*>(name), b"expect", 6):
            while _h1_list_next(v, n, &pos, &a, &b):
                if b - a == 12 and _rt_ieq(<const char*>(v + a), b"100-continue", 12):
                    p.flags |= H1X_EXPECT_100
    return 0


cdef int _h1_add_field(H1Parser* p, H1Head* h, uint32_t off, uint32_t name_len,
                       uint32_t v, uint32_t e, bint in_head) noexcept nogil:
    """Record a checked field line at h.buf[off:]: its name is [0, name_len) and its value
    [v, e) relative to off."""
    cdef H1Field* f
    cdef H1Field* nf
    cdef uint32_t ncap
    cdef const uint8_t* s
    if h.nfields == h.fields_cap:
        ncap = h.fields_cap * 2 if h.fields_cap else H1_FIELDS_MIN
        nf = <H1Field*>realloc(h.fields, ncap * sizeof(H1Field))
        if nf == NULL:
            return _h1_fail(p, H1E_NO_MEMORY)
        h.fields = nf
        h.fields_cap = ncap
    f = &h.fields[h.nfields]
    f.name_off = off
    f.name_len = name_len
    f.value_off = off + v
    f.value_len = e - v
    h.nfields += 1
    if in_head:
        s = <const uint8_t*>h.buf + off
        return _h1_known_field(p, s, name_len, s + v, e - v)
    return 0


cdef int _h1_field_line(H1Parser* p, H1Head* h, uint32_t off, uint32_t n, bint in_head) noexcept nogil:
    """field-name ":" OWS field-value OWS (RFC 9112 5). The checks run in a fixed order so
    that every implementation names the same error for the same line."""
    cdef const uint8_t* s = <const uint8_t*>h.buf + off
    cdef uint32_t i, v, e
    if s[0] == _SP or s[0] == _HT:
        return _h1_fail(p, H1E_OBS_FOLD)
    if h.nfields >= p.max_fields:
        return _h1_fail(p, H1E_TOO_MANY_FIELDS)
    i = <uint32_t>_h1_span(s, n, _K_TCHAR)
    if i == n:
        return _h1_fail(p, H1E_NO_COLON)
    if s[i] != 58:
        if i > 0 and (s[i] == _SP or s[i] == _HT):
            return _h1_fail(p, H1E_WS_BEFORE_COLON)
        return _h1_fail(p, H1E_BAD_FIELD_NAME)
    if i == 0:
        return _h1_fail(p, H1E_BAD_FIELD_NAME)
    v = i + 1
    while v < n and (s[v] == _SP or s[v] == _HT):
        v += 1
    if v + <uint32_t>_h1_value_span(s + v, n - v) != n:
        return _h1_fail(p, H1E_BAD_FIELD_VALUE)
    e = n
    while e > v and (s[e - 1] == _SP or s[e - 1] == _HT):
        e -= 1
    return _h1_add_field(p, h, off, i, v, e, in_head)


cdef ssize_t _h1_quick_line(H1Parser* p, H1Head* h, const char* data, size_t len) noexcept nogil:
    """The common case in one pass over the input: a whole, valid field line or the empty
    line, with no partial line pending. Returns the line's length once taken, -1 on an
    error, or 0 to let the careful path (_h1_line) judge the line, so both always agree:
    anything unusual, including every malformed line, goes the careful way."""
    cdef const uint8_t* s = <const uint8_t*>data
    cdef size_t i, v, j, e
    cdef uint32_t off
    if len >= 2 and s[0] == _CR and s[1] == _LF:
        if _h1_take(p, h, data, 2) < 0:
            return -1
        p.line_start = h.len
        if p.state == H1_TRAILERS:
            p.state = H1_MESSAGE_DONE
        elif _h1_head_end(p) < 0:
            return -1
        return 2
    if h.nfields >= p.max_fields:
        return 0
    i = _h1_token_span(s, len)
    if i == 0 or i >= len or s[i] != 58:
        return 0
    v = i + 1
    while v < len and (s[v] == _SP or s[v] == _HT):
        v += 1
    j = v + _h1_value_span(s + v, len - v)
    if j + 1 >= len or s[j] != _CR or s[j + 1] != _LF:
        return 0
    e = j
    while e > v and (s[e - 1] == _SP or s[e - 1] == _HT):
        e -= 1
    off = h.len
    if _h1_take(p, h, data, j + 2) < 0:
        return -1
    p.line_start = h.len
    if _h1_add_field(p, h, off, <uint32_t>i, <uint32_t>v, <uint32_t>e, p.state == H1_HEAD) < 0:
        return -1
    return <ssize_t>(j + 2)


cdef int _h1_head_end(H1Parser* p) noexcept nogil:
    """The empty line: check the message as a whole and decide the framing (RFC 9112 6.3)."""
    cdef uint32_t fl = p.flags
    cdef H1Head* h = &p.head
    cdef uint16_t st
    if p.kind == H1_REQUEST:
        if h.minor == 1 and not (fl & H1X_HOST):
            return _h1_fail(p, H1E_MISSING_HOST)
        if fl & H1X_TE:
            if h.minor == 0:
                return _h1_fail(p, H1E_TE_HTTP10)
            if fl & H1X_CL:
                return _h1_fail(p, H1E_CL_AND_TE)
            if fl & H1X_TE_UNKNOWN:
                return _h1_fail(p, H1E_UNKNOWN_CODING)
            if p.te_chunked > 1:
                return _h1_fail(p, H1E_BAD_TRANSFER_ENCODING)
            if not (fl & H1X_TE_LAST_CHUNKED):
                return _h1_fail(p, H1E_TE_NOT_CHUNKED)
        if h.method == H1M_CONNECT:
            if (fl & H1X_TE) or p.content_length > 0:
                return _h1_fail(p, H1E_CONNECT_BODY)
            p.framing = H1_BODY_NONE
            p.flags |= H1F_CONNECT
        elif fl & H1X_TE:
            p.framing = H1_BODY_CHUNKED
        elif p.content_length > 0:
            p.framing = H1_BODY_LENGTH
        else:
            p.framing = H1_BODY_NONE
        if h.minor == 1:
            if (fl & H1X_UPGRADE_HDR) and (fl & H1X_CONN_UPGRADE):
                p.flags |= H1F_UPGRADE
            if fl & H1X_EXPECT_100:
                p.flags |= H1F_EXPECT_CONTINUE
    else:
        if fl & H1X_TE:
            if h.minor == 0:
                return _h1_fail(p, H1E_TE_HTTP10)
            if fl & H1X_CL:
                return _h1_fail(p, H1E_CL_AND_TE)
            if p.te_chunked > 1:
                return _h1_fail(p, H1E_BAD_TRANSFER_ENCODING)
        st = h.status
        if st < 200:
            p.framing = H1_BODY_NONE
            p.flags |= H1F_UPGRADE if st == 101 else H1F_INTERIM
        elif st == 204 or st == 304 or p.req_method == H1M_HEAD:
            p.framing = H1_BODY_NONE
        elif p.req_method == H1M_CONNECT and st < 300:
            p.framing = H1_BODY_NONE
            p.flags |= H1F_CONNECT
        elif fl & H1X_TE:
            # chunked not last: the body runs to EOF (RFC 9112 6.3 rule 4)
            p.framing = H1_BODY_CHUNKED if (fl & H1X_TE_LAST_CHUNKED) else H1_BODY_EOF
        elif fl & H1X_CL:
            p.framing = H1_BODY_LENGTH if p.content_length > 0 else H1_BODY_NONE
        else:
            p.framing = H1_BODY_EOF
    if h.minor == 1:
        if not (fl & H1X_CONN_CLOSE):
            p.flags |= H1F_KEEP_ALIVE
    elif (fl & H1X_CONN_KEEP_ALIVE) and not (fl & H1X_CONN_CLOSE):
        p.flags |= H1F_KEEP_ALIVE
    if p.framing == H1_BODY_EOF:
        p.flags &= ~H1F_KEEP_ALIVE
    elif p.framing == H1_BODY_LENGTH:
        p.body_remaining = <uint64_t>p.content_length
    p.cstate = _C_SIZE_FIRST
    p.state = H1_HEAD_DONE
    return 0


# ---------------------------------------------------------------- lines of a section

cdef inline int _h1_take(H1Parser* p, H1Head* h, const char* src, size_t n) noexcept nogil:
    """Copy n received bytes of the current section into its block, within the limits."""
    cdef size_t need
    if (p.state == H1_HEAD and not (p.flags & H1X_START_DONE)
            and <size_t>(h.len - p.line_start) + n > p.max_start_line):
        return _h1_fail(p, H1E_LINE_TOO_LONG)
    if <size_t>p.section_bytes + n > p.max_head:
        return _h1_fail(p, H1E_HEAD_TOO_LARGE)
    need = <size_t>h.len + n
    if _h1_head_reserve(h, need) < 0:
        return _h1_fail(p, H1E_NO_MEMORY)
    memcpy(h.buf + h.len, src, n)
    h.len += <uint32_t>n
    h.buf[h.len] = 0                                    # see _h1_head_reserve
    p.section_bytes += <uint32_t>n
    return 0


cdef int _h1_line(H1Parser* p, H1Head* h) noexcept nogil:
    """A complete line (ending in LF) sits at h.buf[p.line_start:h.len]."""
    cdef uint32_t off = p.line_start
    cdef uint32_t n = h.len - off                       # >= 1, LF included
    cdef const char* s = h.buf + off
    if n < 2 or s[n - 2] != _CR:
        return _h1_fail(p, H1E_BARE_LF)
    n -= 2
    if n and memchr(s, _CR, n) != NULL:
        return _h1_fail(p, H1E_BARE_CR)
    p.line_start = h.len
    if p.state == H1_TRAILERS:
        if n == 0:
            p.state = H1_MESSAGE_DONE
            return 0
        return _h1_field_line(p, h, off, n, False)
    if not (p.flags & H1X_START_DONE):
        if n == 0:
            if p.kind == H1_RESPONSE:
                return _h1_fail(p, H1E_BAD_STATUS_LINE)
            # RFC 9112 2.2: a server SHOULD ignore empty lines before the request line.
            # They still count against max_head (section_bytes), so they are bounded.
            h.len = off
            p.line_start = off
            return 0
        p.flags |= H1X_START_DONE
        if p.kind == H1_REQUEST:
            return _h1_request_line(p, h, off, n)
        return _h1_status_line(p, h, off, n)
    if n == 0:
        return _h1_head_end(p)
    return _h1_field_line(p, h, off, n, True)


cdef ssize_t _h1_lines(H1Parser* p, H1Head* h, const char* data, size_t len) noexcept nogil:
    """Take lines into h until the section's empty line (the state changes) or the input
    ends. Returns bytes taken, or -1."""
    cdef size_t pos = 0, n
    cdef const char* lf
    cdef ssize_t r
    cdef int section = p.state
    while pos < len:
        if p.line_start == h.len and (section == H1_TRAILERS or (p.flags & H1X_START_DONE)):
            r = _h1_quick_line(p, h, data + pos, len - pos)
            if r < 0:
                return -1
            if r > 0:
                pos += <size_t>r
                if p.state != section:
                    break
                continue
        lf = <const char*>memchr(data + pos, _LF, len - pos)
        n = <size_t>(lf - (data + pos)) + 1 if lf != NULL else len - pos
        if _h1_take(p, h, data + pos, n) < 0:
            return -1
        pos += n
        if lf == NULL:
            break
        if _h1_line(p, h) < 0:
            return -1
        if p.state != section:
            break
    return <ssize_t>pos


cdef ssize_t h1_feed_head(H1Parser* p, const char* data, size_t len) noexcept nogil:
    """Take head bytes. Returns how many (the rest of `data` follows the head), -1 on error.
    The head is complete when p.state == H1_HEAD_DONE."""
    if p.state == H1_ERROR:
        return -1
    if p.state != H1_HEAD:
        return 0
    return _h1_lines(p, &p.head, data, len)


# ---------------------------------------------------------------- bodies

cdef ssize_t _h1_chunked(H1Parser* p, const char* data, size_t len, size_t* seg_off,
                         size_t* seg_len) noexcept nogil:
    cdef size_t i = 0, k
    cdef uint8_t c, cs, kc
    cdef int hx
    cdef ssize_t r
    while i < len:
        cs = p.cstate
        if cs == _C_DATA:
            k = len - i
            if k > p.body_remaining:
                k = <size_t>p.body_remaining
            p.body_remaining -= k
            if p.body_remaining == 0:
                p.cstate = _C_DATA_CR
            seg_off[0] = i
            seg_len[0] = k
            return <ssize_t>(i + k)
        c = <uint8_t>data[i]
        i += 1
        if cs == _C_DATA_CR:
            if c != _CR:
                return _h1_fail(p, H1E_BAD_CHUNK_END)
            p.cstate = _C_DATA_LF
            continue
        if cs == _C_DATA_LF:
            if c != _LF:
                return _h1_fail(p, H1E_BAD_CHUNK_END)
            p.cstate = _C_SIZE_FIRST
            p.chunk_line = 0
            continue
        if cs == _C_LINE_LF:
            if c != _LF:
                return _h1_fail(p, H1E_BARE_CR)
            p.chunk_line = 0
            if p.body_remaining:
                p.cstate = _C_DATA
                continue
            # last-chunk: the trailer section follows, read like a head into p.trailers
            p.state = H1_TRAILERS
            p.line_start = 0
            p.section_bytes = 0
            r = _h1_lines(p, &p.trailers, data + i, len - i)
            return -1 if r < 0 else <ssize_t>i + r
        # the chunk-size line: chunk-size [ chunk-ext ] CRLF (RFC 9112 7.1)
        p.chunk_line += 1
        if p.chunk_line > H1_MAX_CHUNK_LINE:
            return _h1_fail(p, H1E_CHUNK_LINE_TOO_LONG)
        if c == _LF:
            return _h1_fail(p, H1E_BARE_LF)
        if c == _CR:
            if cs == _C_SIZE or cs == _C_EXT_NAME or cs == _C_EXT_VAL or cs == _C_EXT_AFTER_QUOTED:
                p.cstate = _C_LINE_LF
                continue
            return _h1_fail(p, H1E_BAD_CHUNK_SIZE if cs == _C_SIZE_FIRST else H1E_BAD_CHUNK_EXT)
        kc = _h1_cls[c]
        if cs == _C_SIZE_FIRST or cs == _C_SIZE:
            if kc & _K_HEX:
                hx = (c - 48) if c <= 57 else (_h1_lower[c] - 87)
                if p.body_remaining > <uint64_t>0x07FFFFFFFFFFFFFF:     # would pass 2^63-1
                    return _h1_fail(p, H1E_CHUNK_SIZE_OVERFLOW)
                p.body_remaining = (p.body_remaining << 4) | <uint64_t>hx
                p.cstate = _C_SIZE
            elif cs == _C_SIZE and c == 59:
                p.cstate = _C_EXT_NAME_BWS
            elif cs == _C_SIZE and (kc & _K_OWS):
                p.cstate = _C_EXT_BWS
            else:
                return _h1_fail(p, H1E_BAD_CHUNK_SIZE)
        elif cs == _C_EXT_BWS:
            if c == 59:
                p.cstate = _C_EXT_NAME_BWS
            elif not (kc & _K_OWS):
                return _h1_fail(p, H1E_BAD_CHUNK_EXT)
        elif cs == _C_EXT_NAME_BWS:
            if kc & _K_TCHAR:
                p.cstate = _C_EXT_NAME
            elif not (kc & _K_OWS):
                return _h1_fail(p, H1E_BAD_CHUNK_EXT)
        elif cs == _C_EXT_NAME or cs == _C_EXT_AFTER_NAME:
            if c == 61:
                p.cstate = _C_EXT_VAL_BWS
            elif c == 59:
                p.cstate = _C_EXT_NAME_BWS
            elif kc & _K_OWS:
                p.cstate = _C_EXT_AFTER_NAME
            elif not (cs == _C_EXT_NAME and (kc & _K_TCHAR)):
                return _h1_fail(p, H1E_BAD_CHUNK_EXT)
        elif cs == _C_EXT_VAL_BWS:
            if c == _DQUOTE:
                p.cstate = _C_EXT_QUOTED
            elif kc & _K_TCHAR:
                p.cstate = _C_EXT_VAL
            elif not (kc & _K_OWS):
                return _h1_fail(p, H1E_BAD_CHUNK_EXT)
        elif cs == _C_EXT_VAL or cs == _C_EXT_AFTER_QUOTED:
            if c == 59:
                p.cstate = _C_EXT_NAME_BWS
            elif kc & _K_OWS:
                p.cstate = _C_EXT_BWS
            elif not (cs == _C_EXT_VAL and (kc & _K_TCHAR)):
                return _h1_fail(p, H1E_BAD_CHUNK_EXT)
        elif cs == _C_EXT_QUOTED:
            if c == _DQUOTE:
                p.cstate = _C_EXT_AFTER_QUOTED
            elif c == 92:
                p.cstate = _C_EXT_QUOTED_ESC
            elif not (kc & _K_QDTEXT):
                return _h1_fail(p, H1E_BAD_CHUNK_EXT)
        else:                                           # _C_EXT_QUOTED_ESC
            if not (kc & _K_FVAL):
                return _h1_fail(p, H1E_BAD_CHUNK_EXT)
            p.cstate = _C_EXT_QUOTED
    return <ssize_t>i


cdef ssize_t h1_feed_body(H1Parser* p, const char* data, size_t len, size_t* seg_off,
                          size_t* seg_len) noexcept nogil:
    """Advance through the body. Returns bytes taken (-1 on error) and at most one body
    segment, data[*seg_off : *seg_off + *seg_len], inside the bytes taken. Call again with
    the rest of the input while it lasts and p.state is not H1_MESSAGE_DONE."""
    cdef size_t k
    seg_off[0] = 0
    seg_len[0] = 0
    if p.state == H1_ERROR:
        return -1
    if p.state == H1_HEAD_DONE:
        p.state = H1_MESSAGE_DONE if p.framing == H1_BODY_NONE else H1_BODY
    if p.state == H1_BODY:
        if p.framing == H1_BODY_LENGTH:
            k = len if len < p.body_remaining else <size_t>p.body_remaining
            p.body_remaining -= k
            if p.body_remaining == 0:
                p.state = H1_MESSAGE_DONE
            seg_len[0] = k
            return <ssize_t>k
        if p.framing == H1_BODY_EOF:
            seg_len[0] = len
            return <ssize_t>len
        return _h1_chunked(p, data, len, seg_off, seg_len)
    if p.state == H1_TRAILERS:
        return _h1_lines(p, &p.trailers, data, len)
    return 0


cdef void h1_body_skipped(H1Parser* p, uint64_t n) noexcept nogil:
    """The caller moved n bytes of a Content-Length body itself (e.g. with splice)."""
    if p.framing != H1_BODY_LENGTH or (p.state != H1_HEAD_DONE and p.state != H1_BODY):
        return
    p.state = H1_BODY
    if n > p.body_remaining:
        n = p.body_remaining
    p.body_remaining -= n
    if p.body_remaining == 0:
        p.state = H1_MESSAGE_DONE


cdef int h1_feed_eof(H1Parser* p) noexcept nogil:
    """The peer closed. 0: nothing is lost (an EOF-delimited body ends, or no message had
    begun); -1: the message was cut short (H1E_INCOMPLETE)."""
    if p.state == H1_ERROR:
        return -1
    if p.state == H1_MESSAGE_DONE:
        return 0
    if p.state == H1_HEAD and p.head.len == 0:
        return 0
    if (p.state == H1_HEAD_DONE or p.state == H1_BODY) and (
            p.framing == H1_BODY_EOF or p.framing == H1_BODY_NONE):
        p.state = H1_MESSAGE_DONE
        return 0
    return _h1_fail(p, H1E_INCOMPLETE)


# ---------------------------------------------------------------- serializer

cdef inline bint _h1_all(const char* s, size_t n, uint8_t k) noexcept nogil:
    return _h1_span(<const uint8_t*>s, n, k) == n


cdef ssize_t _h1_fields_size(const H1Pair* f, size_t nf) noexcept nogil:
    cdef size_t i
    cdef size_t total = 0
    for i in range(nf):
        if f[i].name.n == 0 or not _h1_all(f[i].name.p, f[i].name.n, _K_TCHAR):
            return -1
        if not _h1_all(f[i].value.p, f[i].value.n, _K_FVAL):
            return -1
        total += f[i].name.n + 2 + f[i].value.n + 2
    return <ssize_t>total


cdef char* _h1_put_fields(char* o, const H1Pair* f, size_t nf) noexcept nogil:
    cdef size_t i
    for i in range(nf):
        memcpy(o, f[i].name.p, f[i].name.n)
        o += f[i].name.n
        o[0] = 58
        o[1] = _SP
        o += 2
        memcpy(o, f[i].value.p, f[i].value.n)
        o += f[i].value.n
        o[0] = _CR
        o[1] = _LF
        o += 2
    return o


cdef ssize_t h1_request_head_size(H1Str method, H1Str target, int minor, const H1Pair* f,
                                  size_t nf) noexcept nogil:
    """Bytes h1_write_request_head will write, or -1 if any piece is invalid."""
    cdef ssize_t fs
    if method.n == 0 or not _h1_all(method.p, method.n, _K_TCHAR):
        return -1
    if target.n == 0 or not _h1_all(target.p, target.n, _K_TARGET):
        return -1
    if minor != 0 and minor != 1:
        return -1
    fs = _h1_fields_size(f, nf)
    if fs < 0:
        return -1
    return <ssize_t>(method.n + 1 + target.n + 1 + 8 + 2) + fs + 2


cdef size_t h1_write_request_head(char* out, H1Str method, H1Str target, int minor,
                                  const H1Pair* f, size_t nf) noexcept nogil:
    cdef char* o = out
    memcpy(o, method.p, method.n)
    o += method.n
    o[0] = _SP
    o += 1
    memcpy(o, target.p, target.n)
    o += target.n
    memcpy(o, b" HTTP/1.", 8)
    o[8] = <char>(48 + minor)
    o[9] = _CR
    o[10] = _LF
    o = _h1_put_fields(o + 11, f, nf)
    o[0] = _CR
    o[1] = _LF
    return <size_t>(o + 2 - out)


cdef ssize_t h1_response_head_size(int status, H1Str reason, int minor, const H1Pair* f,
                                   size_t nf) noexcept nogil:
    cdef ssize_t fs
    if status < 100 or status > 599 or (minor != 0 and minor != 1):
        return -1
    if not _h1_all(reason.p, reason.n, _K_FVAL):
        return -1
    fs = _h1_fields_size(f, nf)
    if fs < 0:
        return -1
    return <ssize_t>(13 + reason.n + 2) + fs + 2


cdef size_t h1_write_response_head(char* out, int status, H1Str reason, int minor,
                                   const H1Pair* f, size_t nf) noexcept nogil:
    cdef char* o = out
    memcpy(o, b"HTTP/1.", 7)
    o[7] = <char>(48 + minor)
    o[8] = _SP
    o[9] = <char>(48 + status // 100)
    o[10] = <char>(48 + status // 10 % 10)
    o[11] = <char>(48 + status % 10)
    o[12] = _SP
    o += 13
    memcpy(o, reason.p, reason.n)
    o += reason.n
    o[0] = _CR
    o[1] = _LF
    o = _h1_put_fields(o + 2, f, nf)
    o[0] = _CR
    o[1] = _LF
    return <size_t>(o + 2 - out)


cdef size_t h1_write_chunk_header(char* out, uint64_t size) noexcept nogil:
    """"<hex size>\\r\\n" into out (at least H1_CHUNK_HEADER_MAX bytes). The chunk data
    follows, then "\\r\\n". Size 0 is the last-chunk: use h1_write_last_chunk instead."""
    cdef const char* digits = b"0123456789abcdef"
    cdef char tmp[16]
    cdef int n = 0
    cdef int i
    while True:
        tmp[n] = digits[size & 15]
        n += 1
        size >>= 4
        if size == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    out[n] = _CR
    out[n + 1] = _LF
    return <size_t>(n + 2)


cdef ssize_t h1_last_chunk_size(const H1Pair* trailers, size_t nt) noexcept nogil:
    cdef ssize_t fs = _h1_fields_size(trailers, nt)
    return -1 if fs < 0 else 3 + fs + 2


cdef size_t h1_write_last_chunk(char* out, const H1Pair* trailers, size_t nt) noexcept nogil:
    cdef char* o
    out[0] = 48
    out[1] = _CR
    out[2] = _LF
    o = _h1_put_fields(out + 3, trailers, nt)
    o[0] = _CR
    o[1] = _LF
    return <size_t>(o + 2 - out)


# ---------------------------------------------------------------- Python surface (tests)
# Everything below holds the GIL: it exists for tests, the differential test against
# llhttp and the fuzz target. The proxy's data path calls the C functions above.

cdef tuple _H1_FRAMING = ("none", "length", "chunked", "eof")


cdef tuple _h1_fields_tuple(H1Head* h):
    cdef uint32_t i
    cdef H1Field* f
    out = []
    for i in range(h.nfields):
        f = &h.fields[i]
        out.append((h.buf[f.name_off:f.name_off + f.name_len],
                    h.buf[f.value_off:f.value_off + f.value_len]))
    return tuple(out)


# Test and benchmark hooks (everything below with a leading underscore): they drive the
# codec's C functions directly, so they are compiled in; nothing in the package calls them.
# Tests and benchmarks reach them through fastproxy._testing, which the wheel leaves out.
cdef class _H1TestParser:
    """Feeds bytes through the compiled codec and reports events:

    ("head", dict)  the head: method/target or status/reason, version, headers, flags,
                    body framing ("none", "length", "chunked", "eof"), content_length
    ("data", bytes) body bytes (split however the input was split)
    ("trailers", ((name, value), ...))   a chunked body's trailer fields, if any
    ("done",)       the message is complete
    ("tunnel", bytes)  bytes after a CONNECT or Upgrade message (the parser stops there)
    ("error", status, reason)

    Pipelined messages are parsed one after another. After a message that does not keep
    the connection alive, or after an error, further input is ignored. A response parser
    answers requests made with ``request_method`` (settable between responses).
    ``skip_body(n)`` stands for a caller that moves n bytes of a Content-Length body
    itself (splice). ``take_heads=True`` moves each head block out of the parser before
    reading it (h1_head_take), as the connection manager does.
    """
    cdef H1Parser p
    cdef bint stopped
    cdef bint tunnel
    cdef bint take_heads
    cdef bytes _request_method

    def __cinit__(self, kind="request", *, max_head=0, max_start_line=0, max_fields=0,
                  request_method=b"GET", take_heads=False):
        if kind not in ("request", "response"):
            raise ValueError("kind must be 'request' or 'response'")
        h1_init(&self.p, H1_REQUEST if kind == "request" else H1_RESPONSE,
                max_head, max_start_line, max_fields)
        self.request_method = request_method
        self.take_heads = take_heads

    def __dealloc__(self):
        h1_free(&self.p)

    @property
    def request_method(self):
        return self._request_method

    @request_method.setter
    def request_method(self, value):
        cdef bytes m = bytes(value)
        self._request_method = m
        h1_response_for(&self.p, _h1_method_id(<const uint8_t*><const char*>m, len(m)))

    @property
    def limits(self):
        return {"max_head": self.p.max_head, "max_start_line": self.p.max_start_line,
                "max_fields": self.p.max_fields}

    @property
    def body_remaining(self):
        """Bytes of a Content-Length body not yet seen (what a caller would splice)."""
        if self.p.framing == H1_BODY_LENGTH and (self.p.state == H1_HEAD_DONE or self.p.state == H1_BODY):
            return self.p.body_remaining
        return 0

    def skip_body(self, n):
        """Account for n body bytes the caller moved itself; returns the events that
        follow (("done",) when the body is complete)."""
        cdef list events = []
        if self.stopped or self.body_remaining == 0 or not 0 < n <= self.body_remaining:
            raise ValueError("no Content-Length body with that many bytes left")
        h1_body_skipped(&self.p, n)
        if self.p.state == H1_MESSAGE_DONE:
            self._message_done(events, NULL, 0, 0)
        return events

    cdef dict _head(self):
        cdef H1Head taken
        cdef dict d
        if not self.take_heads:
            return self._head_dict(&self.p.head)
        h1_head_take(&self.p, &taken)
        try:
            return self._head_dict(&taken)
        finally:
            h1_head_free(&taken)

    cdef dict _head_dict(self, H1Head* h):
        cdef uint32_t fl = self.p.flags
        d = {}
        if self.p.kind == H1_REQUEST:
            d["method"] = h.buf[h.method_off:h.method_off + h.method_len]
            d["target"] = h.buf[h.target_off:h.target_off + h.target_len]
        else:
            d["status"] = h.status
            d["reason"] = h.buf[h.reason_off:h.reason_off + h.reason_len]
        d["version"] = (1, h.minor)
        d["headers"] = _h1_fields_tuple(h)
        d["keep_alive"] = bool(fl & H1F_KEEP_ALIVE)
        d["upgrade"] = bool(fl & H1F_UPGRADE)
        d["connect"] = bool(fl & H1F_CONNECT)
        d["expect_continue"] = bool(fl & H1F_EXPECT_CONTINUE)
        d["interim"] = bool(fl & H1F_INTERIM)
        d["body"] = _H1_FRAMING[self.p.framing]
        d["content_length"] = None if self.p.content_length < 0 else self.p.content_length
        return d

    cdef _error(self, list events):
        events.append(("error", self.p.err_status, _h1_reason_bytes[self.p.err].decode()))
        self.stopped = True

    cdef bint _message_done(self, list events, const char* s, size_t pos, size_t n):
        """Report the end of a message; False when parsing stops here."""
        cdef uint32_t fl = self.p.flags
        if self.p.trailers.nfields:
            events.append(("trailers", _h1_fields_tuple(&self.p.trailers)))
        events.append(("done",))
        if fl & (H1F_CONNECT | H1F_UPGRADE):
            self.stopped = True
            self.tunnel = True
            if pos < n:
                events.append(("tunnel", s[pos:n]))
            return False
        if not (fl & (H1F_KEEP_ALIVE | H1F_INTERIM)):
            self.stopped = True
            return False
        h1_reset(&self.p)
        return True

    def feed(self, data):
        cdef bytes b = bytes(data)
        cdef const char* s = b
        cdef size_t n = len(b)
        cdef size_t pos = 0
        cdef size_t off = 0, seg = 0
        cdef ssize_t r
        cdef int st
        cdef list events = []
        if self.stopped:
            if self.tunnel and n:
                events.append(("tunnel", b))
            return events
        while True:
            st = self.p.state
            if st == H1_HEAD:
                if pos == n:
                    break
                r = h1_feed_head(&self.p, s + pos, n - pos)
                if r < 0:
                    self._error(events)
                    break
                pos += <size_t>r
                if self.p.state != H1_HEAD_DONE:
                    break
                events.append(("head", self._head()))
            elif st == H1_MESSAGE_DONE:
                if not self._message_done(events, s, pos, n):
                    break
            else:
                r = h1_feed_body(&self.p, s + pos, n - pos, &off, &seg)
                if r < 0:
                    self._error(events)
                    break
                if seg:
                    events.append(("data", s[pos + off:pos + off + seg]))
                pos += <size_t>r
                if r == 0 and self.p.state == st:
                    break
        return events

    def feed_eof(self):
        cdef list events = []
        if self.stopped:
            return events
        if h1_feed_eof(&self.p) < 0:
            self._error(events)
        elif self.p.state == H1_MESSAGE_DONE:
            events.append(("done",))
        self.stopped = True
        return events


cdef H1Pair* _h1_pairs(list keep, headers, size_t* count) except NULL:
    """Borrow (name, value) byte strings as H1Pairs; `keep` holds the bytes alive."""
    cdef H1Pair* f
    cdef Py_ssize_t i
    items = [(bytes(k), bytes(v)) for k, v in headers]
    count[0] = len(items)
    f = <H1Pair*>calloc(len(items) + 1, sizeof(H1Pair))
    if f == NULL:
        raise MemoryError()
    for i in range(len(items)):
        k, v = items[i]
        keep.append(k)
        keep.append(v)
        f[i].name.p = <const char*>k
        f[i].name.n = len(k)
        f[i].value.p = <const char*>v
        f[i].value.n = len(v)
    return f


def _http1_request_head(method, target, headers=(), version=(1, 1)):
    """Serialize a request head; ValueError if any piece could not be sent as is."""
    cdef list keep = []
    cdef bytes m = bytes(method)
    cdef bytes t = bytes(target)
    cdef size_t nf = 0
    cdef H1Str ms, ts
    cdef ssize_t size
    cdef int minor = version[1] if tuple(version[:1]) == (1,) else -1
    cdef H1Pair* f = _h1_pairs(keep, headers, &nf)
    try:
        ms.p = m
        ms.n = len(m)
        ts.p = t
        ts.n = len(t)
        size = h1_request_head_size(ms, ts, minor, f, nf)
        if size < 0:
            raise ValueError("invalid request head")
        out = bytearray(size)
        h1_write_request_head(<char*>out, ms, ts, minor, f, nf)
        return bytes(out)
    finally:
        free(f)


def _http1_response_head(int status, reason=b"", headers=(), version=(1, 1)):
    """Serialize a response head; ValueError if any piece could not be sent as is."""
    cdef list keep = []
    cdef bytes r = bytes(reason)
    cdef size_t nf = 0
    cdef H1Str rs
    cdef ssize_t size
    cdef int minor = version[1] if tuple(version[:1]) == (1,) else -1
    cdef H1Pair* f = _h1_pairs(keep, headers, &nf)
    try:
        rs.p = r
        rs.n = len(r)
        size = h1_response_head_size(status, rs, minor, f, nf)
        if size < 0:
            raise ValueError("invalid response head")
        out = bytearray(size)
        h1_write_response_head(<char*>out, status, rs, minor, f, nf)
        return bytes(out)
    finally:
        free(f)


def _http1_chunk(data):
    """One chunk: size line, data, CRLF. Empty data is refused (that is the last-chunk)."""
    cdef bytes d = bytes(data)
    cdef char hdr[H1_CHUNK_HEADER_MAX]
    cdef size_t k
    if not d:
        raise ValueError("an empty chunk is the last-chunk: use _http1_last_chunk")
    k = h1_write_chunk_header(hdr, len(d))
    return hdr[:k] + d + b"\r\n"


def _http1_last_chunk(trailers=()):
    """The last-chunk, the trailer fields and the final CRLF."""
    cdef list keep = []
    cdef size_t nt = 0
    cdef ssize_t size
    cdef H1Pair* f = _h1_pairs(keep, trailers, &nt)
    try:
        size = h1_last_chunk_size(f, nt)
        if size < 0:
            raise ValueError("invalid trailer field")
        out = bytearray(size)
        h1_write_last_chunk(<char*>out, f, nt)
        return bytes(out)
    finally:
        free(f)


def _http1_bench(data, long rounds, kind="request"):
    """Parse every message in `data` (pipelined, each fully valid) `rounds` times without
    the GIL, body bytes included. Returns (seconds, messages parsed); a parse error raises."""
    cdef bytes b = bytes(data)
    cdef const char* s = b
    cdef size_t n = len(b)
    cdef H1Parser p
    cdef long i, messages = 0
    cdef size_t pos, off, seg
    cdef ssize_t r
    cdef timespec t0, t1
    cdef int bad = 0
    h1_init(&p, H1_REQUEST if kind == "request" else H1_RESPONSE, 0, 0, 0)
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        for i in range(rounds):
            pos = 0
            while pos < n:
                h1_reset(&p)
                r = h1_feed_head(&p, s + pos, n - pos)
                if r < 0 or p.state != H1_HEAD_DONE:
                    bad = 1
                    break
                pos += <size_t>r
                while p.state != H1_MESSAGE_DONE:
                    r = h1_feed_body(&p, s + pos, n - pos, &off, &seg)
                    if r < 0 or (r == 0 and p.state != H1_MESSAGE_DONE and pos == n):
                        bad = 1
                        break
                    pos += <size_t>r
                if bad:
                    break
                messages += 1
            if bad:
                break
        clock_gettime(CLOCK_MONOTONIC, &t1)
    err = p.err
    h1_free(&p)
    if bad:
        raise ValueError(f"bench input does not parse: {HTTP1_ERRORS[err]}")
    return (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9, messages
