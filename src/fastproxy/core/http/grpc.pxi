# gRPC in the connection manager, as Envoy 1.40 does it (checked against the real Envoy in
# tests/grpc/test_grpc_proxy.py):
#   * local replies to gRPC requests are gRPC responses: HTTP 200, content-type
#     application/grpc, grpc-status mapped from the HTTP status the proxy meant
#     (Grpc::Utility::httpToGrpcStatus), grpc-message the reply's text percent-encoded, no
#     body: a trailers-only response (END_STREAM on the HEADERS frame; over HTTP/1.1,
#     content-length: 0). The access log and the downstream_rq_<class> counters see the 200.
#   * the grpc-timeout request header as the route's timeout: RouteAction.max_grpc_timeout /
#     grpc_timeout_offset (the router's timeout, FilterUtility::finalTimeout) and
#     RouteAction.max_stream_duration (the stream's whole life, HCM refreshDurationTimeout:
#     grpc_timeout_header_max / grpc_timeout_header_offset), the header rewritten for the
#     upstream as Envoy rewrites it.
# A gRPC request: content-type exactly "application/grpc" or "application/grpc+<subtype>"
# (Grpc::Common::hasGrpcContentType: case-sensitive; application/grpc-web and
# "application/grpc;..." are not gRPC), with a :path.

cdef enum:
    GRPC_TIMEOUT_MAX_VALUE = 99999999   # grpc-timeout: at most 8 digits
    GRPC_STATUS_UNKNOWN = 2
    GRPC_STATUS_DEADLINE_EXCEEDED = 4
    GRPC_STATUS_PERMISSION_DENIED = 7
    GRPC_STATUS_UNIMPLEMENTED = 12
    GRPC_STATUS_INTERNAL = 13
    GRPC_STATUS_UNAVAILABLE = 14
    GRPC_STATUS_UNAUTHENTICATED = 16

cdef const char* GRPC_DURATION_TIMEOUT = "downstream duration timeout"


cdef bint grpc_content_type(const char* v, size_t n) noexcept nogil:
    """The request's content-type makes it a gRPC request (the connection manager sets
    HStream.grpc from this when the head arrives)."""
    return n >= 16 and memcmp(v, b"application/grpc", 16) == 0 and (n == 16 or v[16] == b'+')


cdef int grpc_status_from_http(int status) noexcept nogil:
    """Envoy's Grpc::Utility::httpToGrpcStatus."""
    if status == 400:
        return GRPC_STATUS_INTERNAL
    if status == 401:
        return GRPC_STATUS_UNAUTHENTICATED
    if status == 403:
        return GRPC_STATUS_PERMISSION_DENIED
    if status == 404:
        return GRPC_STATUS_UNIMPLEMENTED
    if status == 429 or status == 502 or status == 503 or status == 504:
        return GRPC_STATUS_UNAVAILABLE
    return GRPC_STATUS_UNKNOWN


cdef size_t grpc_percent_encode(const char* p, size_t n, char* out) noexcept nogil:
    """grpc-message's percent-encoding (gRPC's PROTOCOL-HTTP2, as Envoy's
    PercentEncoding::encode): bytes below ' ', from '~' up (so every non-ASCII byte) and '%'
    become %XX (uppercase hex); out has room for 3 * n bytes. Returns the length."""
    cdef size_t i, k = 0
    cdef uint8_t ch
    cdef const char* hexd = "0123456789ABCDEF"
    for i in range(n):
        ch = <uint8_t>p[i]
        if ch < 0x20 or ch >= 0x7E or ch == 0x25:
            out[k] = b'%'
            out[k + 1] = hexd[ch >> 4]
            out[k + 2] = hexd[ch & 15]
            k += 3
        else:
            out[k] = <char>ch
            k += 1
    return k


cdef int64_t grpc_timeout_parse(const char* v, size_t n) noexcept nogil:
    """A grpc-timeout value in milliseconds (Grpc::Common::getGrpcTimeout): 1 to 8 digits
    and a unit H, M, S, m, u or n; u and n round up to the next millisecond. -1: absent or
    not valid (the header is then ignored, and passed on as it is)."""
    cdef uint64_t t
    cdef char unit
    if v == NULL or n < 2 or n > 9 or not _all_digits(v, n - 1):
        return -1
    t = _parse_u64(v, n - 1)
    unit = v[n - 1]
    if unit == b'H':
        return <int64_t>(t * 3600000)
    if unit == b'M':
        return <int64_t>(t * 60000)
    if unit == b'S':
        return <int64_t>(t * 1000)
    if unit == b'm':
        return <int64_t>t
    if unit == b'u':
        return <int64_t>((t + 999) // 1000)
    if unit == b'n':
        return <int64_t>((t + 999999) // 1000000)
    return -1


cdef size_t grpc_timeout_text(uint64_t ms, char* out) noexcept nogil:
    """A grpc-timeout value for ms (Grpc::Common::toGrpcTimeout): milliseconds while they fit
    8 digits, else seconds, minutes, hours (each truncated), at most 99999999H. out: 24 bytes."""
    cdef const char* units = "mSMH"
    cdef int u = 0
    cdef size_t k
    if ms > GRPC_TIMEOUT_MAX_VALUE:
        ms //= 1000
        u = 1
    while ms > GRPC_TIMEOUT_MAX_VALUE:
        if u == 3:
            ms = GRPC_TIMEOUT_MAX_VALUE
            break
        ms //= 60
        u += 1
    k = _u64_text(ms, out)
    out[k] = units[u]
    return k + 1


# ---------------------------------------------------------------- local replies

cdef inline int _grpc_reply_status(HStream* s, int status) noexcept nogil:
    """The grpc-status of a local reply: the one its sender chose (HStream.local_grpc_status,
    stored + 1), else mapped from the HTTP status."""
    if s.local_grpc_status:
        return s.local_grpc_status - 1
    return grpc_status_from_http(status)


cdef inline void grpc_local_framing(HConn* c, BodyFraming* bf) noexcept nogil:
    """A gRPC local reply without a body is trailers-only: HTTP/2 ends the stream on its
    HEADERS frame, without content-length (as Envoy's H2 codec sends it); HTTP/1.1 says
    content-length: 0."""
    if bf.kind == BODY_LENGTH and bf.length == 0 and bf.length_text.p == NULL and c.codec.multiplexed:
        bf.kind = BODY_NONE


cdef void grpc_local_reply(HConn* c, HStream* s, int status, const char* body, size_t n,
                           bint close_conn, const HMap* extra) noexcept nogil:
    """Answer the gRPC request s from the proxy (hconn_local_reply_ex's gRPC form, called from
    it for a stream whose HStream.grpc is set): status is what the proxy meant; what goes out
    is a trailers-only 200 with grpc-status and grpc-message (Envoy's prepareLocalReply with
    is_grpc). The fields of `extra` (a filter's) come first, and a grpc-status among them is
    kept, as Envoy keeps one its modify_headers set."""
    cdef PairList l
    cdef BodyFraming bf
    cdef char* owned = NULL
    cdef char* msg = NULL
    cdef char code[24]
    cdef size_t k, mn
    cdef bint close = close_conn
    cdef int rc
    memset(&l, 0, sizeof(PairList))
    memset(&bf, 0, sizeof(BodyFraming))
    bf.kind = BODY_LENGTH
    grpc_local_framing(c, &bf)
    rc = 0
    if extra != NULL:
        rc = hm_to_pairs(extra, &l, True)
        _pl_remove(&l, "content-type", 12)
        _pl_remove(&l, "content-length", 14)
    rc = rc or _pl_add(&l, _cs("content-type"), _cs("application/grpc"))
    if not _pl_has(&l, "grpc-status", 11):
        k = _u64_text(<uint64_t>_grpc_reply_status(s, status), code)
        rc = rc or _pl_add(&l, _cs("grpc-status"), _s(code, k))
    if n and s.method != METHOD_HEAD:
        msg = <char*>malloc(3 * n)
        if msg == NULL:
            rc = -1
        else:
            mn = grpc_percent_encode(body, n, msg)
            rc = rc or _pl_overwrite(&l, _cs("grpc-message"), _s(msg, mn))
    if s.response_flags & RF_UO:
        rc = rc or _pl_add(&l, _cs("x-envoy-overloaded"), _cs("true"))
    if s.route != NULL:
        rc = rc or _pl_apply_ops(&l, &s.route.response_headers)
    rc = rc or pl_finish_response(&l, s, c, &owned)
    if close_conn and not c.codec.multiplexed:
        c.close_after = 1
    elif not s.keepalive or not s.req_received or s.protocol == HTTP_PROTO_10:
        # As local_reply_write: the connection ends after the reply when the client asked for
        # it or its request was not read whole; an HTTP/1.0 one after an empty reply. (HTTP/2:
        # the stream alone ends.)
        s.keepalive = 0
        close = True
    if rc == 0:
        rc = c.codec.encode_headers(c, s, 200, _s(NULL, 0), &l, &bf, close)
    free(l.v)
    free(owned)
    free(msg)
    if rc == 0:
        c.codec.encode_end(c, s, NULL)
    s.status = 200
    s.resp_started = 1
    _count_downstream(c, 200)


cdef int grpc_local_reply_map(HStream* s, HMap* m, size_t n, const char* body) noexcept nogil:
    """The head of a local reply entering the encoder filters (hf_local_reply_start), turned
    into its gRPC form in place: :status 200, content-type application/grpc, grpc-status
    (unless a field already gives one), grpc-message; no content-length. The caller sends no
    body. -1: out of memory."""
    cdef char code[24]
    cdef char* msg
    cdef size_t k, mn, vn
    cdef const char* v = hm_get(m, ":status", 7, &vn)
    cdef int status = 0, rc = 0
    if v != NULL and vn == 3:
        status = (v[0] - 48) * 100 + (v[1] - 48) * 10 + (v[2] - 48)
    hm_remove(m, "content-length", 14)
    if hm_set(m, ":status", 7, "200", 3) < 0 or hm_set(m, "content-type", 12, "application/grpc", 16) < 0:
        return -1
    if hm_get(m, "grpc-status", 11, &vn) == NULL:
        k = _u64_text(<uint64_t>_grpc_reply_status(s, status), code)
        if hm_add(m, "grpc-status", 11, code, k) < 0:
            return -1
    if n and s.method != METHOD_HEAD:
        msg = <char*>malloc(3 * n)
        if msg == NULL:
            return -1
        mn = grpc_percent_encode(body, n, msg)
        rc = hm_set(m, "grpc-message", 12, msg, mn)     # the map copies it
        free(msg)
    return rc


# ---------------------------------------------------------------- grpc-timeout

cdef void grpc_route_timeouts(HStream* s) noexcept nogil:
    """The route's gRPC timeouts for a stream that got its route (stream_route_timeout calls
    this first; it then applies x-envoy-upstream-rq-timeout-ms as for any request).
    RG_LEGACY (max_grpc_timeout, Envoy's FilterUtility::finalTimeout): a gRPC request's
    grpc-timeout (none: 0, infinite), minus the offset when that leaves something, capped by
    max_grpc_timeout (0: no cap) replaces the route timeout; the upstream is told it in
    grpc-timeout. RG_STREAM (the route has max_stream_duration): the route timeout is not
    used; the stream's whole life is bounded by max_stream_duration, or by the gRPC request's
    grpc-timeout capped by grpc_timeout_header_max (0: no cap) minus
    grpc_timeout_header_offset, when grpc_timeout_header_max is set (_stream_duration_fired)."""
    cdef const RouteEntry* e = s.route
    cdef const char* v
    cdef size_t n = 0
    cdef int64_t hdr = -1
    cdef uint64_t t
    s.timeout_ms = s.expected_timeout_ms = e.timeout_ms
    s.grpc_timeout_set = 0
    timer_cancel(s.c.w, &s.duration_timer)     # a route chosen again decides afresh (Envoy too)
    if e.grpc_timeouts == RG_NONE:
        return
    if e.grpc_timeouts == RG_LEGACY and not s.grpc:
        return
    # (RG_STREAM reads the header on any request, as Envoy's refreshDurationTimeout does;
    # only a gRPC request is told the result.)
    v = _req_field(s, "grpc-timeout", 12, &n)
    hdr = grpc_timeout_parse(v, n)
    if e.grpc_timeouts == RG_LEGACY:
        t = <uint64_t>hdr if hdr >= 0 else 0
        if e.grpc_timeout_offset_ms < t:
            t -= e.grpc_timeout_offset_ms
        if e.max_grpc_timeout_ms and (t == 0 or t > e.max_grpc_timeout_ms):
            t = e.max_grpc_timeout_ms
        s.timeout_ms = s.expected_timeout_ms = t
        return
    # RG_STREAM
    s.timeout_ms = s.expected_timeout_ms = 0
    if hdr < 0 or not e.grpc_header_max_set:
        if e.max_stream_duration_ms == 0:
            return                      # 0 or unset: no limit (fastproxy has no HCM-wide one)
        t = e.max_stream_duration_ms
    else:
        t = <uint64_t>hdr
        if e.grpc_header_max_ms and t > e.grpc_header_max_ms:
            t = e.grpc_header_max_ms
        if t and e.grpc_header_offset_ms:
            t = t - e.grpc_header_offset_ms if e.grpc_header_offset_ms < t else 0
    if s.grpc:
        s.grpc_timeout_ms = t           # before the time already spent, as Envoy
        s.grpc_timeout_set = 1
    t = t - (s.c.w.now - s.start_ms) if t > s.c.w.now - s.start_ms else 0
    timer_arm(s.c.w, &s.duration_timer, t)


cdef void grpc_route_timeouts_sent(HStream* s) noexcept nogil:
    """stream_route_timeout's last step: with max_grpc_timeout (RG_LEGACY), a gRPC request's
    upstream grpc-timeout becomes the timeout in force (Envoy's setTimeoutHeaders: the
    per-try one when shorter), when there is one."""
    if s.route.grpc_timeouts == RG_LEGACY and s.grpc and s.expected_timeout_ms:
        s.grpc_timeout_ms = s.expected_timeout_ms
        s.grpc_timeout_set = 1


cdef int grpc_timeout_header(HStream* s, PairList* l, char* buf) noexcept nogil:
    """The upstream request head's grpc-timeout (router_filter's _upstream_request_head):
    replaced by the one the route's gRPC timeouts decided, if any. buf: 24 bytes that live as
    long as l."""
    cdef size_t k
    if not s.grpc_timeout_set:
        return 0
    k = grpc_timeout_text(s.grpc_timeout_ms, buf)
    return _pl_overwrite(l, _cs("grpc-timeout"), _s(buf, k))


cdef void _stream_duration_fired(Worker* w, void* arg) noexcept nogil:
    """max_stream_duration (or the grpc-timeout that set it) reached: Envoy's
    onStreamMaxDurationReached: downstream_rq_max_duration_reached, 408 while the request is
    still arriving, else 504, "downstream duration timeout", grpc-status DEADLINE_EXCEEDED;
    a reset once the response has started."""
    cdef HStream* s = <HStream*>arg
    stat_add((<HttpCfg*>s.c.cfg.http).stats, w, H_RQ_MAX_DURATION, 1)
    s.local_grpc_status = GRPC_STATUS_DEADLINE_EXCEEDED + 1
    _stream_end_locally(s, 504 if s.upstream.req_done else 408, GRPC_DURATION_TIMEOUT)
