# The HTTP/1.1 parser: set-up and teardown, start lines, field lines, sections and bodies
# (the contract is in codec_h1_decls.pxi; noexcept nogil throughout).

# ---------------------------------------------------------------- set-up and teardown

cdef inline void _h1_head_clear(HttpHead* h) noexcept nogil:
    """Forget the contents, keep the memory for the next message."""
    cdef char* buf = h.buf
    cdef uint32_t cap = h.cap
    cdef HttpField* fields = h.fields
    cdef uint32_t fields_cap = h.fields_cap
    memset(h, 0, sizeof(HttpHead))
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
    http_head_free(&p.head)
    http_head_free(&p.trailers)


cdef inline void h1_response_for(H1Parser* p, int req_method) noexcept nogil:
    p.req_method = <uint8_t>req_method


cdef void h1_head_take(H1Parser* p, HttpHead* out) noexcept nogil:
    """Move the head block and its fields to `out` (the caller frees it with http_head_free).
    The parser starts a new block for its next head."""
    out[0] = p.head
    memset(&p.head, 0, sizeof(HttpHead))


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
            return METHOD_GET
        if memcmp(m, b"PUT", 3) == 0:
            return METHOD_PUT
    elif n == 4:
        if memcmp(m, b"HEAD", 4) == 0:
            return METHOD_HEAD
        if memcmp(m, b"POST", 4) == 0:
            return METHOD_POST
    elif n == 5:
        if memcmp(m, b"TRACE", 5) == 0:
            return METHOD_TRACE
        if memcmp(m, b"PATCH", 5) == 0:
            return METHOD_PATCH
    elif n == 6:
        if memcmp(m, b"DELETE", 6) == 0:
            return METHOD_DELETE
    elif n == 7:
        if memcmp(m, b"CONNECT", 7) == 0:
            return METHOD_CONNECT
        if memcmp(m, b"OPTIONS", 7) == 0:
            return METHOD_OPTIONS
    return METHOD_OTHER


# ---------------------------------------------------------------- start lines

cdef int _h1_target_form(HttpHead* h, const uint8_t* t, size_t n) noexcept nogil:
    """RFC 9112 3.2: which target forms each method may use. Returns an H1E_* (0: ok)."""
    cdef size_t i, a
    if h.method == METHOD_CONNECT:                         # authority-form, port required
        return H1E_OK if _h1_host(t, n, True, False) == 0 else H1E_BAD_TARGET_FORM
    if t[0] == 47:                                      # origin-form
        return H1E_OK
    if n == 1 and t[0] == 42:                           # asterisk-form
        return H1E_OK if h.method == METHOD_OPTIONS else H1E_BAD_TARGET_FORM
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


cdef int _h1_request_line(H1Parser* p, HttpHead* h, uint32_t off, uint32_t n) noexcept nogil:
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


cdef int _h1_status_line(H1Parser* p, HttpHead* h, uint32_t off, uint32_t n) noexcept nogil:
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


cdef int _h1_add_field(H1Parser* p, HttpHead* h, uint32_t off, uint32_t name_len,
                       uint32_t v, uint32_t e, bint in_head) noexcept nogil:
    """Record a checked field line at h.buf[off:]: its name is [0, name_len) and its value
    [v, e) relative to off."""
    cdef HttpField* f
    cdef HttpField* nf
    cdef uint32_t ncap
    cdef const uint8_t* s
    if h.nfields == h.fields_cap:
        ncap = h.fields_cap * 2 if h.fields_cap else HEAD_FIELDS_MIN
        nf = <HttpField*>realloc(h.fields, ncap * sizeof(HttpField))
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


cdef int _h1_field_line(H1Parser* p, HttpHead* h, uint32_t off, uint32_t n, bint in_head) noexcept nogil:
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


cdef ssize_t _h1_quick_line(H1Parser* p, HttpHead* h, const char* data, size_t len) noexcept nogil:
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
    cdef HttpHead* h = &p.head
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
        if h.method == METHOD_CONNECT:
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
        elif st == 204 or st == 304 or p.req_method == METHOD_HEAD:
            p.framing = H1_BODY_NONE
        elif p.req_method == METHOD_CONNECT and st < 300:
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

cdef inline int _h1_take(H1Parser* p, HttpHead* h, const char* src, size_t n) noexcept nogil:
    """Copy n received bytes of the current section into its block, within the limits."""
    cdef size_t need
    if (p.state == H1_HEAD and not (p.flags & H1X_START_DONE)
            and <size_t>(h.len - p.line_start) + n > p.max_start_line):
        return _h1_fail(p, H1E_LINE_TOO_LONG)
    if <size_t>p.section_bytes + n > p.max_head:
        return _h1_fail(p, H1E_HEAD_TOO_LARGE)
    need = <size_t>h.len + n
    if _head_reserve(h, need) < 0:
        return _h1_fail(p, H1E_NO_MEMORY)
    memcpy(h.buf + h.len, src, n)
    h.len += <uint32_t>n
    h.buf[h.len] = 0                                    # see _head_reserve
    p.section_bytes += <uint32_t>n
    return 0


cdef int _h1_line(H1Parser* p, HttpHead* h) noexcept nogil:
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


cdef ssize_t _h1_lines(H1Parser* p, HttpHead* h, const char* data, size_t len) noexcept nogil:
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
