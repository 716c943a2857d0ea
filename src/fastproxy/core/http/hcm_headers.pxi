# The connection manager's own header work that is configured per HttpConnectionManager
# (checked against Envoy 1.40, see docs/http1-policy.md): the Date every response gets
# (cached per worker per second), Server/Via/x-request-id on responses, Via on requests,
# request path normalization (escaped slashes, dot segments, merged slashes) and Host port
# stripping. (Header names with underscores are the HTTP/1 codec's: codec_h1_server.pxi.)

# The server-wide http1.* block (H1S_*, HTTP1_STATS): fastproxy/stats_table.py.

DEF PATH_STACK = 1024               # normalization scratch on the stack up to this size


# ---------------------------------------------------------------- Date

cdef size_t _http_date_at(int64_t secs, char* out) noexcept nogil:
    """secs (Unix time) as an IMF-fixdate (RFC 9110 5.6.7), "Sun, 06 Nov 1994 08:49:37 GMT":
    29 bytes into out (at least 30), without the locale strftime would consult."""
    cdef const char* days = "SunMonTueWedThuFriSat"
    cdef const char* months = "JanFebMarAprMayJunJulAugSepOctNovDec"
    cdef time_t t0 = <time_t>secs
    cdef tm t
    gmtime_r(&t0, &t)
    memcpy(out, days + 3 * t.tm_wday, 3)
    out[3] = b','
    out[4] = b' '
    out[5] = <char>(48 + t.tm_mday // 10)
    out[6] = <char>(48 + t.tm_mday % 10)
    out[7] = b' '
    memcpy(out + 8, months + 3 * t.tm_mon, 3)
    return 11 + <size_t>snprintf(out + 11, 19, " %04d %02d:%02d:%02d GMT", t.tm_year + 1900,
                                 t.tm_hour, t.tm_min, t.tm_sec)


cdef StrRef worker_date(Worker* w) noexcept nogil:
    """The current Date value, formatted once per second per worker (the worker's own
    cache, so no lock). Most responses read no clock either: the cache is good until the
    loop-turn time w.now passes the end of the second it was formatted in."""
    cdef uint64_t us
    cdef HttpWorker* hw = http_worker(w)
    if hw.date_len == 0 or w.now >= hw.date_until_ms:
        us = wall_clock_us()
        hw.date_len = _http_date_at(<int64_t>(us // 1000000), hw.date)
        hw.date_until_ms = w.now + 1000 - (us // 1000) % 1000
    return _s(hw.date, hw.date_len)


# ---------------------------------------------------------------- appended list values

cdef int _pl_append_list(PairList* l, const char* name, size_t nn, const char* value, size_t vn,
                         char** owned) noexcept nogil:
    """Envoy's appendVia: every `name` field becomes one, "<their values joined by ','>,
    <value>" (just value when there was none). The joined string is malloc'd into *owned,
    which the caller frees after serializing l."""
    cdef size_t i, total = 0, k = 0
    cdef int count = 0
    cdef char* b
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name, nn):
            total += l.v[i].value.n + 1
            count += 1
    if count == 0:
        return _pl_add(l, _s(name, nn), _s(value, vn))
    b = <char*>malloc(total + 1 + vn)
    if b == NULL:
        return -1
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name, nn):
            if k:
                b[k] = b','
                k += 1
            memcpy(b + k, l.v[i].value.p, l.v[i].value.n)
            k += l.v[i].value.n
    memcpy(b + k, ", ", 2)
    memcpy(b + k + 2, value, vn)
    k += 2 + vn
    owned[0] = b
    return _pl_overwrite(l, _s(name, nn), _s(b, k))


# ---------------------------------------------------------------- x-request-id

cdef const char* stream_request_id(HStream* s, size_t* n) noexcept nogil:
    """The x-request-id the request carries (or will carry once its head is sent), for
    always_set_request_id_in_response: the one we generated, else the client's unless it
    is to be replaced (an edge request without preserve_external_request_id), else a new
    one when generate_request_id. NULL: none (also for a request the codec refused)."""
    cdef HttpCfg* h = <HttpCfg*>s.c.cfg.http
    cdef const char* v
    if s.request_id_len:
        n[0] = s.request_id_len
        return s.request_id
    if s.head.buf == NULL:
        return NULL
    v = _req_field(s, "x-request-id", 12, n)
    if v != NULL and not (s.fc == NULL and s.edge and h.generate_request_id
                          and not h.preserve_external_request_id):
        return v
    if not h.generate_request_id:
        return NULL
    stream_new_request_id(s)
    n[0] = s.request_id_len
    return s.request_id


# ---------------------------------------------------------------- response finishing

cdef int pl_finish_response(PairList* l, HStream* s, HConn* c, char** owned) noexcept nogil:
    """What the connection manager sets on every response head it sends, after the filters
    and the route's mutations (Envoy's ActiveStream::encodeHeaders): a Date when there is
    none (an upstream's own is kept, even an empty one), Server, Via, and the request's
    x-request-id with always_set_request_id_in_response. s may be NULL. *owned: a buffer
    to free after l is serialized (or NULL)."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const char* v
    cdef size_t n
    owned[0] = NULL
    if not _pl_has(l, "date", 4):
        if _pl_add(l, _cs("date"), worker_date(c.w)) < 0:
            return -1
    if _pl_set_server(l, h) < 0:
        return -1
    if h.via_len and _pl_append_list(l, "via", 3, h.via, h.via_len, owned) < 0:
        return -1
    if h.always_set_request_id and s != NULL:
        v = stream_request_id(s, &n)
        if v != NULL and _pl_overwrite(l, _cs("x-request-id"), _s(v, n)) < 0:
            return -1
    if s != NULL and s.keepalive and not (s.upgrade or s.connect) and listener_drain_close(c.w, c.cfg):
        # The listener version this connection was accepted under is draining (changed or
        # removed): as Envoy's connection manager, this response ends the connection
        # (HTTP/1.1: Connection: close, said by the codec when keepalive is off).
        s.keepalive = 0
        stat_add(h.stats, c.w, H_CX_DRAIN_CLOSE, 1)
    return 0


# ---------------------------------------------------------------- path normalization
#
# Envoy 1.40's order (ConnectionManagerUtility::maybeNormalizePath), before routing and for
# the path sent upstream; only the path, never the query:
#   1. path_with_escaped_slashes_action, if the path has %2F or %5C (any case): REJECT_REQUEST
#      answers 400; UNESCAPE_AND_REDIRECT and UNESCAPE_AND_FORWARD decode them ('/', '\').
#   2. normalize_path: %XX of an unreserved character decoded, '\' read as '/', the bytes a
#      URL path may not hold raw ("<>^`{|} and '"') escaped, then RFC 3986 5.2.4 dot-segment
#      removal ("%2e" counts as '.'). %00 is refused (400); other escapes are kept as sent.
#   3. merge_slashes: runs of '/' become one.
#   4. UNESCAPE_AND_REDIRECT: 307 to the result when step 1 changed anything.

cdef inline int _hexval(char ch) noexcept nogil:
    if 48 <= ch <= 57:
        return ch - 48
    ch = ch | 0x20
    if 97 <= ch <= 102:
        return ch - 87
    return -1


cdef inline bint _unreserved(int ch) noexcept nogil:
    """RFC 3986 2.3: ALPHA / DIGIT / "-" / "." / "_" / "~"."""
    return (48 <= ch <= 57 or 65 <= ch <= 90 or 97 <= ch <= 122 or ch == 45 or ch == 46
            or ch == 95 or ch == 126)


cdef inline bint _path_escapes(char ch) noexcept nogil:
    """Visible bytes Envoy's path canonicalizer percent-encodes."""
    return (ch == b'"' or ch == b'<' or ch == b'>' or ch == b'^' or ch == b'`' or ch == b'{'
            or ch == b'|' or ch == b'}')


cdef inline int _escaped_slash_at(const char* p, size_t n, size_t i) noexcept nogil:
    """'/' or '\\' when p[i:i+3] is %2F or %5C (either case), else 0."""
    if i + 2 < n and p[i] == b'%':
        if p[i + 1] == b'2' and (p[i + 2] | 0x20) == b'f':
            return b'/'
        if p[i + 1] == b'5' and (p[i + 2] | 0x20) == b'c':
            return b'\\'
    return 0


cdef size_t _unescape_slashes(const char* p, size_t n, char* out) noexcept nogil:
    cdef size_t i = 0, o = 0
    cdef int ch
    while i < n:
        ch = _escaped_slash_at(p, n, i)
        if ch:
            out[o] = <char>ch
            i += 3
        else:
            out[o] = p[i]
            i += 1
        o += 1
    return o


cdef ssize_t _canonical_chars(const char* p, size_t n, char* out) noexcept nogil:
    """Step 2's byte pass into out (room for 3n). -1: the path holds %00."""
    cdef const char* hexd = "0123456789ABCDEF"
    cdef size_t i = 0, o = 0
    cdef int hi, lo, v
    cdef char ch
    while i < n:
        ch = p[i]
        if ch == b"%" and i + 2 < n and _hexval(p[i + 1]) >= 0 and _hexval(p[i + 2]) >= 0:
            hi = _hexval(p[i + 1])
            lo = _hexval(p[i + 2])
            v = hi * 16 + lo
            if v == 0:
                return -1
            if _unreserved(v):
                out[o] = <char>v
                o += 1
            else:
                memcpy(out + o, p + i, 3)       # kept as sent, hex case included
                o += 3
            i += 3
            continue
        if ch == b'\\':
            out[o] = b'/'
            o += 1
        elif _path_escapes(ch):
            out[o] = b'%'
            out[o + 1] = hexd[(<uint8_t>ch) >> 4]
            out[o + 2] = hexd[(<uint8_t>ch) & 15]
            o += 3
        else:
            out[o] = ch
            o += 1
        i += 1
    return <ssize_t>o


cdef size_t _remove_dot_segments(char* b, size_t n) noexcept nogil:
    """RFC 3986 5.2.4 in place on a path that starts with '/': "." segments go, ".." takes
    the segment before it (none above the root); a path ending in one ends with '/'."""
    cdef size_t i = 0, j, o = 0, seg
    while i < n:
        j = i + 1
        while j < n and b[j] != b'/':
            j += 1
        seg = j - i - 1
        if seg == 1 and b[i + 1] == b'.':
            if j == n:
                b[o] = b'/'
                o += 1
        elif seg == 2 and b[i + 1] == b'.' and b[i + 2] == b'.':
            while o > 0:
                o -= 1
                if b[o] == b'/':
                    break
            if j == n:
                b[o] = b'/'
                o += 1
        else:
            memmove(b + o, b + i, j - i)
            o += j - i
        i = j
    return o


cdef size_t _merge_slashes(char* b, size_t n) noexcept nogil:
    """Envoy's merge_slashes in place: when the path has "//", it becomes its non-empty
    segments joined by '/', with a leading and a trailing '/' kept if it had them (so a
    path of only slashes, "///", becomes "//", as in Envoy)."""
    cdef size_t i = 0, o = 0, start
    cdef bint found = False, first = True, trailing
    for i in range(1, n):
        if b[i] == b'/' and b[i - 1] == b'/':
            found = True
            break
    if not found:
        return n
    trailing = b[n - 1] == b'/'
    if b[0] == b'/':
        o = 1
    i = 0
    while i < n:
        while i < n and b[i] == b'/':
            i += 1
        start = i
        while i < n and b[i] != b'/':
            i += 1
        if i > start:
            if not first:
                b[o] = b'/'
                o += 1
            memmove(b + o, b + start, i - start)
            o += i - start
            first = False
    if trailing:
        b[o] = b'/'
        o += 1
    return o


cdef int stream_normalize_path(HStream* s, HttpCfg* h) noexcept nogil:
    """Steps 1-3 above on the stream's request target (origin-form by now), which is
    replaced in the head when it changes. Returns PN_*."""
    cdef HttpHead* hd = &s.head
    cdef const char* t = hd.buf + hd.target_off
    cdef size_t n = hd.target_len
    cdef size_t plen = 0, qlen, m, i
    cdef bint escaped = False
    cdef char stack[PATH_STACK]
    cdef char* a
    cdef char* b
    cdef ssize_t k
    cdef int rc = PN_OK
    if n == 0 or t[0] != b'/':
        return PN_OK                    # "*" (OPTIONS) and authority-form are not paths
    while plen < n and t[plen] != b'?':
        plen += 1
    qlen = n - plen
    if h.escaped_slashes != ES_KEEP:
        for i in range(plen):
            if _escaped_slash_at(t, plen, i):
                escaped = True
                break
        if escaped and h.escaped_slashes == ES_REJECT:
            return PN_REJECT
    if not escaped and not h.normalize_path and not h.merge_slashes:
        return PN_OK
    # Two scratch areas of 3 * plen each (the canonical pass may triple the path), then
    # room for the query.
    m = 6 * plen + qlen
    a = &stack[0] if m <= PATH_STACK else <char*>malloc(m)
    if a == NULL:
        return PN_NOMEM
    b = a + 3 * plen
    try:
        if escaped:
            plen = _unescape_slashes(t, plen, a)
        else:
            memcpy(a, t, plen)
        if h.normalize_path:
            k = _canonical_chars(a, plen, b)
            if k < 0:
                return PN_REJECT
            plen = _remove_dot_segments(b, <size_t>k)
            memcpy(a, b, plen)
        if h.merge_slashes:
            plen = _merge_slashes(a, plen)
        memcpy(a + plen, t + (n - qlen), qlen)
        if plen + qlen != n or memcmp(a, t, n) != 0:
            if http_head_set_target(hd, a, plen + qlen) < 0:
                return PN_NOMEM
        if escaped and h.escaped_slashes == ES_REDIRECT:
            rc = PN_REDIRECT
        return rc
    finally:
        if a != &stack[0]:
            free(a)


# ---------------------------------------------------------------- Host port

cdef void stream_strip_host_port(HStream* s, HttpCfg* h) noexcept nogil:
    """strip_any_host_port / strip_matching_host_port (the listener's port): "host:port"
    loses ":port" before routing and forwarding. An empty port ("h:") and a bracketed IPv6
    literal without one stay as they are."""
    cdef HttpHead* hd = &s.head
    cdef HttpField* f = NULL
    cdef const char* v
    cdef size_t n, i, colon
    cdef uint32_t port = 0
    for i in range(hd.nfields):
        if hd.fields[i].name_len == 4 and _ieq(hd.buf + hd.fields[i].name_off, 4, "host"):
            f = &hd.fields[i]
            break
    if f == NULL or f.value_len == 0:
        return
    v = hd.buf + f.value_off
    n = f.value_len
    colon = n
    i = n
    while i > 0 and 48 <= v[i - 1] <= 57:
        i -= 1
    if i == n or i == 0 or v[i - 1] != b':':
        return                          # no port digits after a ':'
    colon = i - 1
    if v[0] == b'[' and (colon == 0 or v[colon - 1] != b']'):
        return                          # a ':' inside an IPv6 literal
    if h.strip_port == STRIP_PORT_MATCHING:
        if n - i > 5:
            return
        for i in range(colon + 1, n):
            port = port * 10 + <uint32_t>(v[i] - 48)
        if port != s.c.local_port:
            return
    f.value_len = <uint32_t>colon


# ---------------------------------------------------------------- TLS facts of the request
#
# x-forwarded-proto and :scheme say "https" on a TLS connection (Envoy's mutateRequestHeaders:
# connection.ssl()), and x-forwarded-client-cert follows forward_client_cert_details
# (mutateXfccRequestHeader, Envoy 1.40):
#   ALWAYS_FORWARD_ONLY  the client's XFCC goes on as received
#   SANITIZE (default)   removed; also in every other mode when the connection did not
#                        present a client certificate (plaintext, or TLS without one)
#   FORWARD_ONLY         a mutual-TLS request's XFCC goes on as received
#   APPEND_FORWARD       ",<this hop's element>" appended to it (or the element alone)
#   SANITIZE_SET         replaced by this hop's element
# This hop's element: By=<each URI SAN of our certificate>;Hash=<SHA-256 hex of the peer's>,
# then what set_current_client_cert_details selects, in Envoy's order: Cert="<url-encoded
# PEM>", Chain="<url-encoded PEMs, leaf first>", Subject="<RFC 2253>", URI=<each URI SAN, or
# one empty "URI=">, DNS=<each DNS SAN>; all joined by ';'.

cdef enum:                          # HttpCfg.xfcc_mode
    XFCC_SANITIZE = 0
    XFCC_FORWARD_ONLY = 1
    XFCC_APPEND_FORWARD = 2
    XFCC_SANITIZE_SET = 3
    XFCC_ALWAYS_FORWARD_ONLY = 4

cdef enum:                          # HttpCfg.xfcc_details
    XD_CERT = 1
    XD_CHAIN = 2
    XD_SUBJECT = 4
    XD_URI = 8
    XD_DNS = 16

XFCC_MODES = {"SANITIZE": XFCC_SANITIZE, "FORWARD_ONLY": XFCC_FORWARD_ONLY,
              "APPEND_FORWARD": XFCC_APPEND_FORWARD, "SANITIZE_SET": XFCC_SANITIZE_SET,
              "ALWAYS_FORWARD_ONLY": XFCC_ALWAYS_FORWARD_ONLY}
XFCC_DETAILS = {"cert": XD_CERT, "chain": XD_CHAIN, "subject": XD_SUBJECT, "uri": XD_URI,
                "dns": XD_DNS}

cdef enum:                          # xfcc_decide
    XFCC_KEEP = 0                   # leave the request's XFCC as it is
    XFCC_REMOVE = 1
    XFCC_SET = 2                    # replace every XFCC field by the built value


cdef inline SSL* hconn_ssl(HConn* c) noexcept nogil:
    """The downstream connection's SSL, NULL on plaintext."""
    return <SSL*>endp_ssl(&c.down)


cdef inline const char* hconn_requested_server_name(HConn* c) noexcept nogil:
    """%REQUESTED_SERVER_NAME%: the SNI when the listener's tls_inspector read it (Envoy
    sets it there only: a TLS listener without the inspector logs "-"), else NULL."""
    if not c.cfg.sni_inspected:
        return NULL
    return tls_sni(<SSL*>endp_ssl(&c.down))


cdef inline StrRef hconn_scheme(HConn* c) noexcept nogil:
    """"https" on a TLS connection, else "http" (x-forwarded-proto, :scheme)."""
    if endp_ssl(&c.down) != NULL:
        return _cs("https")
    return _cs("http")


cdef void _xfcc_element(SSL* ssl, uint8_t details, TlsText* t) noexcept nogil:
    """This hop's XFCC element (see above) appended to t."""
    cdef X509* peer = tls_peer_cert(ssl)
    cdef size_t mark = t.n
    tls_sans(tls_local_cert(ssl), GEN_URI, t, "By=", ";")
    if t.n > mark:
        tt_put(t, ";", 1)
    tt_put(t, "Hash=", 5)
    tls_sha256_hex(peer, t)
    if details & XD_CERT:
        tt_put(t, ";Cert=\"", 7)
        tls_pem_urlencoded(peer, t)
        tt_put(t, "\"", 1)
    if details & XD_CHAIN:
        tt_put(t, ";Chain=\"", 8)
        tls_peer_chain_urlencoded(ssl, t)
        tt_put(t, "\"", 1)
    if details & XD_SUBJECT:
        tt_put(t, ";Subject=\"", 10)
        tls_subject(peer, t)
        tt_put(t, "\"", 1)
    if details & XD_URI:
        tt_put(t, ";", 1)
        if tls_sans(peer, GEN_URI, t, "URI=", ";") == 0:
            tt_put(t, "URI=", 4)
    if details & XD_DNS:
        mark = t.n
        tt_put(t, ";", 1)
        if tls_sans(peer, GEN_DNS, t, "DNS=", ";") == 0:
            t.n = mark                  # no DNS SAN: no DNS key at all


cdef int xfcc_decide(HStream* s, PairList* l, TlsText* out) noexcept nogil:
    """What forward_client_cert_details does to the request's XFCC fields in l. XFCC_SET:
    out holds the new value (the caller frees it); -1: no memory."""
    cdef HttpCfg* h = <HttpCfg*>s.c.cfg.http
    cdef SSL* ssl
    cdef size_t i
    cdef bint first = True
    if h.xfcc_mode == XFCC_ALWAYS_FORWARD_ONLY:
        return XFCC_KEEP
    ssl = hconn_ssl(s.c)
    if h.xfcc_mode == XFCC_SANITIZE or tls_peer_cert(ssl) == NULL:
        return XFCC_REMOVE if _pl_has(l, "x-forwarded-client-cert", 23) else XFCC_KEEP
    if h.xfcc_mode == XFCC_FORWARD_ONLY:
        return XFCC_KEEP
    if h.xfcc_mode == XFCC_APPEND_FORWARD:
        # Envoy appends to the one header it keeps (repeated fields joined by ',').
        for i in range(l.n):
            if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, "x-forwarded-client-cert", 23):
                if l.v[i].value.n == 0:
                    continue
                if not first:
                    tt_put(out, ",", 1)
                tt_put(out, l.v[i].value.p, l.v[i].value.n)
                first = False
        if not first:
            tt_put(out, ",", 1)
    _xfcc_element(ssl, h.xfcc_details, out)
    if out.failed:
        return -1
    return XFCC_SET


cdef int pl_apply_xfcc(HStream* s, PairList* l, char** owned) noexcept nogil:
    """forward_client_cert_details on a request's field list; owned[0]: the new value's
    memory, for the caller to free once l is serialized. -1: no memory."""
    cdef TlsText t
    cdef int rc
    memset(&t, 0, sizeof(TlsText))
    rc = xfcc_decide(s, l, &t)
    if rc == XFCC_KEEP:
        return 0
    _pl_remove(l, "x-forwarded-client-cert", 23)
    if rc == XFCC_REMOVE:
        return 0
    if rc < 0:
        tt_free(&t)
        return -1
    owned[0] = t.p
    return _pl_add(l, _cs("x-forwarded-client-cert"), _s(t.p, t.n))


cdef int hm_apply_xfcc(HStream* s, HMap* m) noexcept nogil:
    """forward_client_cert_details on a filtered stream's request map, before its filters
    run (as Envoy's connection manager does): they see what the upstream will get. -1: no
    memory."""
    cdef TlsText t
    cdef int rc
    memset(&t, 0, sizeof(TlsText))
    rc = xfcc_decide(s, &m.l, &t)
    if rc == XFCC_REMOVE:
        hm_remove(m, "x-forwarded-client-cert", 23)
    elif rc == XFCC_SET:
        rc = hm_set(m, "x-forwarded-client-cert", 23, t.p, t.n)     # copies into the map's arena
    tt_free(&t)
    return -1 if rc < 0 else 0
