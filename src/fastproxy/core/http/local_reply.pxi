# Local replies (responses the proxy writes itself: errors, redirects, direct responses) and
# the status counters every response updates.

# ---------------------------------------------------------------- local replies

cdef void hconn_local_reply(HConn* c, HStream* st, int status, const char* body, size_t body_len,
                            const char* location, size_t location_len, bint close_conn) noexcept nogil:
    """Write a reply of the proxy's own for st (a stream, or a request that never became
    one: the stack stream of hconn_unparsed_request; NULL: none, a connection-level answer
    such as the 408 of request_headers_timeout)."""
    hconn_local_reply_ex(c, st, status, body, body_len, location, location_len, close_conn, NULL)


cdef void hconn_local_reply_ex(HConn* c, HStream* st, int status, const char* body, size_t body_len,
                               const char* location, size_t location_len, bint close_conn,
                               const HMap* extra) noexcept nogil:
    """The one place a local reply's head is built (unfiltered replies; a filtered one is
    built by _local_response_head from what the encoder filters left)."""
    # GRPC's hook: a gRPC request gets a gRPC answer (core/http/grpc.pxi).
    if st != NULL and st.grpc:
        grpc_local_reply(c, st, status, body, body_len, close_conn, extra)
        return
    local_reply_write(c, st, status, body, body_len, location, location_len, close_conn, extra)


cdef void local_reply_write(HConn* c, HStream* st, int status, const char* body, size_t body_len,
                            const char* location, size_t location_len, bint close_conn,
                            const HMap* extra) noexcept nogil:
    """A plain local reply: status, text body, Envoy's fields, through st's codec."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef PairList l
    cdef BodyFraming bf
    cdef char* owned = NULL
    cdef size_t k
    cdef bint close = close_conn
    cdef int rc
    cdef char attempts[24]
    memset(&l, 0, sizeof(PairList))
    memset(&bf, 0, sizeof(BodyFraming))
    if status == 204:
        bf.kind = BODY_NONE             # a 204 has no body and no Content-Length (Envoy)
    elif st != NULL and st.method == METHOD_HEAD and body_len == 0:
        bf.kind = BODY_NONE             # the codec announces it as Envoy's does (chunked)
    else:
        bf.kind = BODY_LENGTH
        bf.length = body_len
    if extra != NULL:
        hm_to_pairs(extra, &l, True)
    if body_len and (extra == NULL or hm_get(extra, "content-type", 12, &k) == NULL):
        _pl_add(&l, _cs("content-type"), _cs("text/plain"))
    if location != NULL:
        _pl_add(&l, _cs("location"), _s(location, location_len))
    if st != NULL and st.response_flags & RF_UO:
        _pl_add(&l, _cs("x-envoy-overloaded"), _cs("true"))     # Envoy's circuit-breaker reply
    if st != NULL and st.route != NULL:
        # Envoy applies the chosen route's response_headers_to_add/remove (route, virtual
        # host, route configuration) to its direct responses, redirects and router errors.
        _pl_apply_ops(&l, &st.route.response_headers)
        if st.route.retry != NULL:
            retry_count_header(st, &l, attempts, True)
    pl_finish_response(&l, st, c, &owned)                   # Date, Server, Via, x-request-id
    if close_conn and not c.codec.multiplexed:
        c.close_after = 1
    elif st != NULL and (not st.keepalive or not st.req_received
                         or (st.protocol == HTTP_PROTO_10 and status != 426 and body_len == 0
                             and status != 204)):
        # The connection ends after this reply (stream_finish): the client asked for it,
        # or its request is HTTP/1.0 without keep-alive, or its body was not read. Envoy
        # says so in the reply. Envoy 1.40 also ends an HTTP/1.0 keep-alive connection
        # after an empty local reply (a redirect), so the proxy does too. (HTTP/2: the
        # stream alone ends; its codec resets it if the request was not read to its end.)
        st.keepalive = 0
        close = True
    rc = c.codec.encode_headers(c, st, status, _s(NULL, 0), &l, &bf, close)
    free(l.v)
    free(owned)
    if rc == 0 and body_len and c.codec.encode_bytes(c, st, body, body_len) == 0 \
            and st != NULL and st.method != METHOD_HEAD:
        st.bytes_sent += body_len
    if rc == 0:
        c.codec.encode_end(c, st, NULL)
    if st != NULL:
        st.status = status
        st.resp_started = 1
    _count_downstream(c, status)


cdef void stream_local_reply(HStream* s, int status, const char* body, size_t n,
                             const char* location, size_t location_len, bint close_conn) noexcept nogil:
    """The proxy answers the stream itself (no route, direct responses and redirects,
    upstream failures, timeouts, limits). When the stream has encoder filters and no
    response has entered them yet, the reply goes through them as Envoy's local replies do
    (hf_local_reply_start); otherwise (no filters: the fast path, which allocates nothing)
    it is written as it is. The stream ends, or waits for a filter that holds its reply:
    the caller must not touch s afterwards. The caller has dealt with s.upstream.conn."""
    cdef HConn* c = s.c
    cdef FChain* fc = s.fc
    if s.retry != NULL:
        retry_stop(s)                   # (a filter may hold the reply: no attempt may start meanwhile)
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "http", c.id, c.nrequests, "sending local reply: status %d%s%.*s", status,
               _pick(n != 0 and n < 200, ", ", ""), <int>(n if n < 200 else 0), _pick(body != NULL, body, ""))
    if fc != NULL and not fc.resp.used and not fc.dead and _enc_filtered(s):
        hf_local_reply_start(s, status, body, n, location, location_len, close_conn)
        return
    hconn_local_reply(c, s, status, body, n, location, location_len, close_conn)
    stream_finish(s)


cdef inline void _count_status(StatBlock* b, Worker* w, int first, int status) noexcept nogil:
    """The status class (first: the 1xx slot; 2xx..5xx follow) and, right after 5xx,
    *_rq_completed: Envoy charges both together when a response (or local reply) starts."""
    if 100 <= status < 600:
        stat_add(b, w, first + status // 100 - 1, 1)
        stat_add(b, w, first + 5, 1)


cdef inline void _count_upstream(StatBlock* b, Worker* w, int status) noexcept nogil:
    """A cluster's response (or the router's reply in its place): upstream_rq_<class>,
    upstream_rq_completed and upstream_rq_<code>, which Envoy charges together."""
    _count_status(b, w, C_RQ_1XX, status)
    if CODE_FIRST <= status < CODE_FIRST + CODE_SLOTS:
        stat_add(b, w, C_CODES + status - CODE_FIRST, 1)


cdef inline void _count_host(HStream* s, int status) noexcept nogil:
    """The chosen host's answer (or the router's in its place): rq_error for a 5xx, else
    rq_success, as Envoy's router charges the host."""
    host_stat_add(s.upstream.hstats, s.c.w, HS_RQ_ERROR if status >= 500 else HS_RQ_SUCCESS, 1)


cdef inline void _count_downstream(HConn* c, int status) noexcept nogil:
    """A response to the downstream: http.<prefix>.downstream_rq_<class>/_completed and
    the same per listener (listener.<address>.http.<prefix>.*)."""
    _count_status((<HttpCfg*>c.cfg.http).stats, c.w, H_RQ_1XX, status)
    if c.cfg.lhstats != NULL:
        _count_status(c.cfg.lhstats, c.w, LH_RQ_1XX, status)


cdef int _local_response_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Encode a local reply that passed the encoder filters: :status and the fields as the
    filters left them, framing from the body that passed them (UF_PARSER: a HEAD reply,
    whose Content-Length the map carries). -1: no valid :status."""
    cdef HConn* c = s.c
    cdef FChain* fc = s.fc
    cdef PairList l
    cdef BodyFraming bf
    cdef const char* v
    cdef size_t n
    cdef char* owned = NULL
    cdef int status
    cdef StrRef clv
    memset(&l, 0, sizeof(PairList))
    memset(&bf, 0, sizeof(BodyFraming))
    try:
        v = hm_get(&fc.resp, ":status", 7, &n)
        if v == NULL or n != 3 or not _all_digits(v, 3):
            return -1
        status = (v[0] - 48) * 100 + (v[1] - 48) * 10 + (v[2] - 48)
        if status < 200:
            return -1
        if hm_to_pairs(&fc.resp, &l, framing != UF_PARSER) < 0:
            return -1
        if framing != UF_PARSER and _body_framing(s, True, framing, length, &fc.resp, &bf) < 0:
            return -1
        if s.grpc:
            grpc_local_framing(c, &bf)      # trailers-only (core/http/grpc.pxi)
        # Envoy's framing of local replies, as on the unfiltered path (hconn_local_reply_ex):
        # a 204 has no Content-Length; an empty reply to HEAD gives none (the codec then
        # announces it chunked).
        if status == 204:
            _pl_remove(&l, "content-length", 14)
            _pl_remove(&l, "transfer-encoding", 17)
            memset(&bf, 0, sizeof(BodyFraming))
        elif framing == UF_PARSER:
            clv = _pl_take(&l, "content-length", 14)
            _pl_remove(&l, "transfer-encoding", 17)
            if clv.p == NULL or (clv.n == 1 and clv.p[0] == b'0'):
                bf.kind = BODY_NONE
            else:
                bf.kind = BODY_NONE
                bf.length_text = clv
        if fc.local_close or not s.req_received:
            s.keepalive = 0             # the rest of the request was never read
        elif s.protocol == HTTP_PROTO_10 and framing == UF_LENGTH and length == 0 and status != 204:
            s.keepalive = 0             # Envoy ends HTTP/1.0 keep-alive after an empty reply
        if pl_finish_response(&l, s, c, &owned) < 0:
            return -1
        if c.codec.encode_headers(c, s, status, _s(NULL, 0), &l, &bf, not s.keepalive) < 0:
            return -1
        s.status = status
        _count_downstream(c, status)
        return 0
    finally:
        free(l.v)
        free(owned)
