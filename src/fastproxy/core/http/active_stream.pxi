# One request/response exchange on a downstream connection (Envoy's ActiveStream): its start
# from a parsed request head (checks, path normalization, the filter chain), the request body
# to the filters, the response head and body to the downstream (the encoder side's sinks),
# CONNECT tunnels, and its finish and free.

# ---------------------------------------------------------------- streams

cdef void stream_free(HStream* s) noexcept nogil:
    """Release what s holds and take it off its connection; its memory is freed at the end
    of the loop turn (http_free_deferred), so code that may have ended it tests s.ended."""
    cdef Worker* w = s.c.w
    if s.shadows != NULL:
        shadows_primary_gone(s)         # (the ones it was still feeding: core/http/shadow.pxi)
    timer_cancel(w, &s.timeout)
    stream_timers_stop(s)
    retry_free(s)
    if s.fc != NULL:
        hf_stream_end(s)
    free(s.rewritten_path)
    s.rewritten_path = NULL
    http_head_free(&s.head)
    host_stats_release(&s.upstream.hstats)
    route_table_decref(s.routes)
    s.routes = NULL
    hconn_unlink_stream(s.c, s)
    s.ended = 1
    s.next_deferred = http_worker(w).stream_deferred
    http_worker(w).stream_deferred = s


cdef void stream_finish(HStream* s) noexcept nogil:
    """The response is complete (or answered locally): end the stream, keep the
    connection for the next request if allowed."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "http", c.id, c.nrequests, "stream complete: status %d, %llu ms", s.status,
               <unsigned long long>(c.w.now - s.start_ms))
    if s.fc != NULL and s.upstream.conn != NULL and s.upstream.conn.hosts != NULL and (h.filter_hooks & HK_LOG):
        s.fc.upstream_host_len = _host_text(&s.upstream.conn.hosts.hosts[s.upstream.conn.host_index], s.fc.upstream_host,
                                            sizeof(s.fc.upstream_host))
    stream_log(s)
    if s.upstream.conn != NULL:
        http_pool_release(s.upstream.conn, s.upstream.req_done and s.upstream.conn.codec.reusable(s.upstream.conn))
        s.upstream.conn = NULL
    stat_sub(h.stats, c.w, H_RQ_ACTIVE, 1)
    stat_add(h.stats, c.w, H_RQ_TIME_MS, c.w.now - s.start_ms)
    c.codec.stream_done(c, s)           # (HTTP/1: whether the connection may carry another)
    stream_free(s)
    c.streams_closed += 1
    hconn_stream_gone(c)


cdef void stream_upstream_failed(HStream* s, int status, const char* reason) noexcept nogil:
    cdef HConn* c = s.c
    cdef HttpCfg* h
    if s.shadow_role == SHR_SHADOW:
        shadow_upstream_failed(s, status, reason)
        return
    h = <HttpCfg*>c.cfg.http
    outlier_report_local(s.upstream.hstats, c.w, outlier_failure_kind(reason, s.resp_started))
    s.upstream.conn = NULL
    # Envoy stops retrying once the response has started upstream-side: a head handed to
    # the encoder filters counts even while a filter holds it (resp_started is not yet set).
    if s.retry != NULL and not s.resp_started and s.upstream.resp_head == NULL \
            and retry_on_reset(s, reason):
        return                          # the next attempt follows its back-off (retry.pxi)
    if s.resp_started:
        # Part of the response is out: the only honest signal left is a reset (HTTP/1: an
        # abrupt close).
        stream_reset(s)
        hconn_pump(c)
        return
    if s.cluster != NULL:
        _count_upstream(s.cluster.stats, c.w, status)     # Envoy charges the router's reply
        _count_host(s, status)
    stream_local_reply(s, status, reason, strlen(reason), NULL, 0, not s.upstream.req_done)
    hconn_pump(c)


cdef void _stream_timeout(Worker* w, void* arg) noexcept nogil:
    cdef HStream* s = <HStream*>arg
    cdef HConn* c = s.c
    # The route's timeout: Envoy counts it on the cluster (upstream_rq_timeout) only;
    # downstream_rq_timeout is request_timeout's.
    s.response_flags |= RF_UT
    if s.cluster != NULL:
        stat_add(s.cluster.stats, w, C_RQ_TIMEOUT, 1)
        host_stat_add(s.upstream.hstats, w, HS_RQ_TIMEOUT, 1)
    if s.upstream.conn != NULL:
        http_pool_cancel(s.upstream.conn)
    stream_upstream_failed(s, 504, UPSTREAM_TIMEOUT)


cdef int _downstream_response_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Encode the upstream's response head (as the encoder filters left it, if they saw it)
    for the downstream."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const HttpHead* rh = s.upstream.resp_head
    cdef PairList l
    cdef BodyFraming bf
    cdef const char* v
    cdef size_t n
    cdef char svc[24]
    cdef char attempts[24]
    cdef char* owned = NULL
    cdef char* cookies = NULL               # the hash policy's Set-Cookie text
    cdef int status = rh.status
    cdef StrRef reason = _s(NULL, 0)
    memset(&l, 0, sizeof(PairList))
    try:
        if s.fc != NULL and s.fc.resp.used:
            v = hm_get(&s.fc.resp, ":status", 7, &n)
            if v == NULL or n != 3 or not _all_digits(v, 3):
                return -1
            status = (v[0] - 48) * 100 + (v[1] - 48) * 10 + (v[2] - 48)
            if status < 200:
                return -1
            s.status = status
            if hm_to_pairs(&s.fc.resp, &l, True) < 0:
                return -1
        else:
            if _pl_from_head(&l, rh) < 0:
                return -1
            if s.request_end_ms and not h.suppress_envoy_headers:
                # The router's x-envoy-upstream-service-time: from the end of the request to
                # the response head (a filtered response got it in _response_to_filters).
                s.service_time_ms = c.w.now - s.request_end_ms
                s.service_time_set = 1
                _pl_overwrite(&l, _cs("x-envoy-upstream-service-time"),
                              _s(svc, _u64_text(s.service_time_ms, svc)))
            # The cookies the route's hash policy generated, then the route's mutations (a
            # filtered response got them before its filters).
            if s.hash_cookies and hash_cookies_add(s, &l, NULL, &cookies) < 0:
                return -1
            if _pl_apply_ops(&l, &s.route.response_headers) < 0:
                return -1
            if s.route.retry != NULL and retry_count_header(s, &l, attempts, True) < 0:
                return -1
        if status == rh.status and rh.reason_len:
            reason = _s(rh.buf + rh.reason_off, rh.reason_len)
        if _body_framing(s, True, framing, length, &s.fc.resp if s.fc != NULL else NULL, &bf) < 0:
            return -1
        if pl_finish_response(&l, s, c, &owned) < 0:   # last, after the filters and the route
            return -1
        return c.codec.encode_headers(c, s, status, reason, &l, &bf, not s.keepalive)
    finally:
        free(l.v)
        free(owned)
        free(cookies)


cdef int _tunnel_response_head(HStream* s) noexcept nogil:
    """The 101 head for the downstream: the upstream's fields plus its Upgrade."""
    cdef const HttpHead* rh = s.upstream.resp_head
    cdef PairList l
    cdef BodyFraming bf
    cdef const char* v
    cdef size_t n
    cdef char* owned = NULL
    memset(&l, 0, sizeof(PairList))
    memset(&bf, 0, sizeof(BodyFraming))
    bf.kind = BODY_TUNNEL
    bf.upgrade = 1
    try:
        if _pl_from_head(&l, rh) < 0:
            return -1
        v = _head_field(rh, "upgrade", &n)
        if v != NULL:
            _pl_add(&l, _cs("upgrade"), _s(v, n))
        if pl_finish_response(&l, s, s.c, &owned) < 0:     # Envoy encodes a 101 like any response
            return -1
        return s.c.codec.encode_headers(s.c, s, 101, _cs("Switching Protocols"), &l, &bf, False)
    finally:
        free(l.v)
        free(owned)


cdef int _tunnel_pump(HStream* s) noexcept nogil:
    """After a 101: bytes flow both ways untouched. When one side ends, what it sent is
    flushed to the other and the whole tunnel closes. -1 when it closed."""
    cdef HConn* c = s.c
    cdef UpConn* u = s.upstream.conn
    if u == NULL:
        hconn_close(c, False)
        return -1
    if u.in_buf.length:
        s.bytes_sent += u.in_buf.length
        chain_move(&c.out_buf, &u.in_buf)
    if c.in_buf.length:
        s.req_body_bytes += c.in_buf.length
        chain_move(&u.out_buf, &c.in_buf)
    if u.eof:
        s.tunnel_up_eof = 1
    if c.down_eof:
        s.tunnel_down_eof = 1
    if (s.tunnel_up_eof and c.out_buf.length == 0) or (s.tunnel_down_eof and u.out_buf.length == 0):
        hconn_close(c, False)
        return -1
    return 0


cdef int _response_to_filters(HStream* s) noexcept nogil:
    """A response head (not 1xx) for the encoder filters. -1: the stream ended."""
    cdef FChain* fc = s.fc
    cdef const HttpHead* rh = s.upstream.resp_head
    cdef char* st = fc.status_text
    cdef char svc[24]
    cdef size_t n
    st[0] = <char>(48 + (rh.status // 100) % 10)     # the codec guarantees 100..999
    st[1] = <char>(48 + (rh.status // 10) % 10)
    st[2] = <char>(48 + rh.status % 10)
    if hm_append_raw(&fc.resp, _cs(":status"), _s(st, 3)) < 0 \
            or hm_from_head(&fc.resp, rh, True, False) < 0:
        stream_reset(s)
        return -1
    if s.request_end_ms and not (<HttpCfg*>s.c.cfg.http).suppress_envoy_headers:
        s.service_time_ms = s.c.w.now - s.request_end_ms
        s.service_time_set = 1
        n = _u64_text(s.service_time_ms, svc)
        if hm_set(&fc.resp, "x-envoy-upstream-service-time", 29, svc, n) < 0:
            stream_reset(s)
            return -1
    # The router's part of the response head, so the encoder filters see it (Envoy's
    # router finalizes the response headers before they go down the encoder chain): the
    # hash policy's generated cookies, the route's mutations.
    if s.hash_cookies and hash_cookies_add(s, NULL, &fc.resp, NULL) < 0:
        stream_reset(s)
        return -1
    if s.route != NULL and _hm_apply_ops(&fc.resp, &s.route.response_headers) < 0:
        stream_reset(s)
        return -1
    if s.route != NULL and s.route.retry != NULL and retry_count_header_map(s, &fc.resp) < 0:
        stream_reset(s)
        return -1
    fc.enc.end_seen = s.upstream.resp_facts.end_stream
    return hf_iterate(s, True)


cdef void stream_request_end(HStream* s, bint start_timeout) noexcept nogil:
    """The whole request is in (and on its way upstream when start_timeout): req_done,
    the start of the upstream service time (once), and the route timeout, which Envoy
    starts at the end of the request."""
    s.upstream.req_done = 1
    if not s.request_end_ms:
        s.request_end_ms = s.c.w.now
    if start_timeout and s.timeout_ms:
        timer_arm(s.c.w, &s.timeout, s.timeout_ms)
    if start_timeout and s.retry != NULL:
        retry_request_complete(s)


cdef inline bint _request_too_large(HStream* s, uint64_t n) noexcept nogil:
    """n request bytes are over the connection manager's max_request_bytes (0: no limit);
    counts downstream_rq_too_large. The caller answers 413 or resets."""
    cdef HttpCfg* h = <HttpCfg*>s.c.cfg.http
    if h.max_request_bytes and n > h.max_request_bytes:
        stat_add(h.stats, s.c.w, H_RQ_TOO_LARGE, 1)
        return True
    return False


cdef void _request_body_framing_error(HStream* s, int status) noexcept nogil:
    """Bad framing in a request body (the codec's error event); the stream ends. Bodies are
    re-framed, so the upstream has only seen a well-formed, unfinished message: reset it,
    then answer the client (or reset it too when the response has begun)."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    stat_add(h.stats, c.w, H_CX_PROTOCOL_ERROR, 1)
    s.response_flags |= RF_DPE
    if s.upstream.conn != NULL:
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
    if s.resp_started:
        hconn_close(c, True)            # counts downstream_rq_rx_reset (the stream is active)
        return
    stat_add(h.stats, c.w, H_RQ_RX_RESET, 1)
    chain_clear(&c.in_buf)
    hconn_local_reply(c, s, status, _status_reason(status), strlen(_status_reason(status)), NULL, 0, True)
    stream_finish(s)


cdef bint cm_request_data_wanted(HStream* s) noexcept nogil:
    """May the codec deliver more request body now? The decoder filters' buffer, or the
    upstream connection's, is the stream's flow control (HTTP_IO_LIMIT)."""
    if s.ended or s.c.closed:
        return False
    if _dec_body_filtered(s):
        return hf_wants_more(s, False)
    return s.upstream.conn != NULL and not s.upstream.req_done and s.upstream.conn.out_buf.length < HTTP_IO_LIMIT


cdef int cm_on_request_data(HStream* s, Chain* src, size_t n, bint end,
                            HttpHead* trailers) noexcept nogil:
    """The codec's data event: n request body bytes at the front of src (the receiver takes
    them), `end` with the last; trailers (or NULL) come with the end. To the decoder
    filters, or straight to the upstream request. -1: the stream ended."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    s.req_body_bytes += n
    stat_add(h.stats, c.w, H_BYTES_COPIED, n)
    if _request_too_large(s, s.req_body_bytes):
        stream_reset(s)
        return -1
    if end:
        s.req_received = 1
    if not _dec_body_filtered(s):
        return upstream_request_data(s, src, n, end, trailers)
    if trailers != NULL and hm_from_head(&s.fc.req_trailers, trailers, True, False) < 0:
        stream_reset(s)
        return -1
    if hf_body_in(s, False, src, n, end, trailers != NULL) < 0:
        return -1
    if c.closed or s.ended:
        return -1
    return 0


cdef inline bint _dec_body_filtered(HStream* s) noexcept nogil:
    return s.fc != NULL and ((<HttpCfg*>s.c.cfg.http).filter_hooks & (HK_DECODE_DATA | HK_DECODE_TRAILERS)) != 0


cdef inline bint _enc_filtered(HStream* s) noexcept nogil:
    return s.fc != NULL and ((<HttpCfg*>s.c.cfg.http).filter_hooks & (HK_ENCODE_HEADERS | HK_ENCODE_DATA | HK_ENCODE_TRAILERS)) != 0


cdef inline bint _enc_body_filtered(HStream* s) noexcept nogil:
    return s.fc != NULL and ((<HttpCfg*>s.c.cfg.http).filter_hooks & (HK_ENCODE_DATA | HK_ENCODE_TRAILERS)) != 0


cdef bint _is_upgrade_token(const char* v, size_t n, const char* token) noexcept nogil:
    """Is the Upgrade field's first protocol `token` (case-insensitive, version ignored)?"""
    cdef size_t k = 0
    while k < n and v[k] != b',' and v[k] != b'/' and v[k] != b' ' and v[k] != b'\t':
        k += 1
    return _ieq(v, k, token)


cdef bint _head_has_route(HStream* s) noexcept nogil:
    """Does a route match the request head as received (before any filter)?"""
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs = _route_input(s, &r, stack)
    cdef bint found
    if hdrs == NULL:
        return False
    found = route_select(s.routes, &r) != NULL
    _route_input_free(hdrs, stack)
    return found


cdef int _stream_path(HStream* s, HttpCfg* h) noexcept nogil:
    """Normalize the request path (core/http/hcm_headers.pxi); -1 when the stream was answered: 400
    for a path refused, 307 to the path with its escaped slashes decoded (Envoy's
    UNESCAPE_AND_REDIRECT), before any decoder filter runs, as in Envoy; Envoy's filter chain
    exists by then, so its encoder filters see those replies (checked)."""
    cdef HConn* c = s.c
    cdef int rc = stream_normalize_path(s, h)
    if rc == PN_OK:
        return 0
    # (A filter that could not be created does not matter here: the request is answered
    # without reaching the upstream either way.)
    if rc != PN_NOMEM and h.nfilters and hf_stream_create(s) < 0:
        rc = PN_NOMEM
    if rc == PN_REJECT:
        stat_add(h.stats, c.w, H_RQ_FAILED_PATH_NORMALIZATION, 1)
        s.keepalive = 0
        stream_local_reply(s, 400, "", 0, NULL, 0, True)
    elif rc == PN_REDIRECT:
        stat_add(h.stats, c.w, H_RQ_REDIRECTED_NORMALIZED_PATH, 1)
        stream_local_reply(s, 307, "", 0, s.head.buf + s.head.target_off, s.head.target_len,
                           not s.req_received)
    else:
        stream_reset(s)
    return -1


cdef inline void _stream_refuse(HStream* s, int status, const char* body) noexcept nogil:
    s.keepalive = 0
    s.response_flags |= RF_DPE
    stream_local_reply(s, status, body, strlen(body), NULL, 0, True)


cdef HStream* stream_start(HConn* c, HttpHead* head, const RequestFacts* f, void* codec_stream) noexcept nogil:
    """A complete, valid request head (the stream takes it) and the codec's facts about the
    request: run the decoder filters (if any), then route it. codec_stream: the codec's own
    state for it (HStream.codec_stream). Returns the stream, which may have ended already
    (s.ended: answered at once; its memory lasts until the end of the loop turn), or NULL
    when the connection closed."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const char* v
    cdef size_t un = 0
    cdef int k, k2
    cdef HStream* s = <HStream*>calloc(1, sizeof(HStream))
    if s == NULL:
        http_head_free(head)
        hconn_close(c, True)
        return NULL
    timer_cancel(c.w, &c.idle_timer)
    timer_cancel(c.w, &c.headers_timer)
    s.c = c
    s.routes = route_provider_take(h.routes, c.w.index)     # its routes until it ends
    s.start_ms = c.req_start_ms         # Envoy's stream begins with the request's first byte
    s.cluster_override = -1
    s.start_time_us = c.req_start_us
    s.cluster_index = -1
    timer_init(&s.timeout, _stream_timeout, s)
    s.head = head[0]
    s.envoy_hdrs = f.envoy_hdrs
    s.method = s.head.method
    s.protocol = f.protocol
    s.keepalive = f.keepalive
    s.req_has_body = not f.end_stream
    s.req_content_length = f.content_length
    s.expect_continue = f.expect_continue
    s.codec_stream = codec_stream
    s.grpc = _is_grpc_request(&s.head)
    if f.end_stream:
        s.req_received = 1
        stream_request_end(s, False)
    hconn_link_stream(c, s)
    stream_timers_start(s)
    stream_client_address(s)
    c.nrequests += 1
    if fp_log_level <= LOG_DEBUG:
        _log_request_headers(s)
    if c.drain_next or (h.max_requests_per_connection and c.nrequests >= h.max_requests_per_connection):
        s.keepalive = 0
    stat_add(h.stats, c.w, H_RQ_TOTAL, 1)
    stat_add(h.stats, c.w, c.codec.stat_rq_total, 1)
    stat_add(h.stats, c.w, H_RQ_ACTIVE, 1)
    # Requests the codec takes but the proxy refuses, as protocol errors (Envoy's codec
    # reports them so): no filter chain exists yet, so the replies go out directly.
    if s.protocol == HTTP_PROTO_10 and not h.accept_http_10:
        # Envoy: HTTP/1.0 only with http_protocol_options.accept_http_10.
        _stream_refuse(s, 426, "Upgrade Required")
        return s
    if f.unsupported_coding:
        # A coding besides chunked (gzip, chunked) would have to be kept when the body is
        # re-framed; like Envoy, the proxy does not take such bodies.
        _stream_refuse(s, 501, "unsupported transfer coding")
        return s
    k = f.target
    if k == -1:
        _stream_refuse(s, 400, "invalid request target or host")
        return s
    if not _connection_nominations_ok(&s.head, f.upgrade):
        _stream_refuse(s, 400, "Bad Request")
        return s
    if (h.normalize_path or h.merge_slashes or h.escaped_slashes != ES_KEEP) and not f.connect:
        if _stream_path(s, h) < 0:
            return s
    if h.strip_port != STRIP_PORT_NONE:
        stream_strip_host_port(s, h)
    # The filter chain first (Envoy creates it before it refuses an upgrade): the proxy's
    # own answers below go through its encoder filters.
    k2 = hf_stream_create(s) if h.nfilters else 0
    if k2 < 0:
        stream_reset(s)
        return s
    if k2 > 0:
        # A filter could not be created: fail closed (a missing filter could be the one
        # that denies the request), through the encoder filters that were, as a hook's
        # failure (hf_fail) is answered.
        stream_local_reply(s, 500, "", 0, NULL, 0, not s.req_received)
        return s
    if k == -2:
        # HTTP/1.0 without Host nor default_host_for_http_10: Envoy's connection manager
        # refuses it after creating the filter chain, with an empty body.
        _stream_refuse(s, 400, "")
        return s
    if f.connect:
        s.keepalive = 0
        s.connect = 1
        if not h.allow_connect:
            # Envoy, without a CONNECT upgrade config: 403 when a route (connect_matcher)
            # takes the request, 404 when none does.
            stream_local_reply(s, 403 if _head_has_route(s) else 404, "", 0, NULL, 0, True)
            return s
    if f.upgrade:
        v = _head_field(&s.head, "upgrade", &un)
        if v != NULL and _is_upgrade_token(v, un, "h2c"):
            pass                        # Envoy drops h2c upgrades: plain HTTP/1.1 from here
        elif v != NULL and h.allow_websocket and _is_upgrade_token(v, un, "websocket"):
            s.upgrade = 1               # forwarded; a 101 answer turns into a tunnel
            s.keepalive = 0
        else:
            # Envoy: an upgrade type not in upgrade_configs is refused.
            s.keepalive = 0
            stream_local_reply(s, 403, "", 0, NULL, 0, True)
            return s
    if f.content_length > 0 and _request_too_large(s, <uint64_t>f.content_length):
        stream_local_reply(s, 413, "Payload Too Large", 17, NULL, 0, True)
        return s
    if h.nfilters:
        if f.expect_continue:
            # Answered before the filters run: a filter that waits for the body must get it.
            c.codec.encode_continue(c, s)
        s.fc.dec.end_seen = f.end_stream
        hf_iterate(s, False)
        return s
    stream_route(s)
    return s


cdef int hf_sink_headers_encode(HStream* s) noexcept nogil:
    """The response headers passed every encoder filter: send them (unless a filter may
    still change the body: then the first body bytes send them)."""
    if s.fc.local_encoding:
        # A local reply: its body (complete) follows through the data phase, whose sink
        # sends the head with the body's exact length. Without one, the head goes now.
        if s.fc.enc.phase != FP_PH_DONE:
            return 0
        if stream_send_response_head(s, UF_PARSER if s.method == METHOD_HEAD else UF_LENGTH, 0) < 0:
            return -1
        return _stream_response_done(s)
    if not _enc_body_filtered(s):
        return stream_send_response_head(s, UF_PARSER, 0)
    if s.fc.enc.phase == FP_PH_DONE:         # no body: nothing else will come
        if stream_send_response_head(s, UF_PARSER, 0) < 0:
            return -1
        return _stream_response_done(s)
    return 0


cdef int stream_send_response_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    cdef bint local = s.fc != NULL and s.fc.local_encoding
    if (_local_response_head(s, framing, length) if local else _downstream_response_head(s, framing, length)) < 0:
        if s.upstream.conn != NULL:
            http_pool_fail(s.upstream.conn, 502, UPSTREAM_PROTOCOL_ERROR)
        elif local and not s.resp_started:
            # A filter left the local reply without a valid :status: as Envoy, 502 straight
            # to the client (the encoder chain holds a response now, so it is not re-run).
            stream_local_reply(s, 502, "filter removed required response headers", 40, NULL, 0, True)
        else:
            stream_reset(s)
        return -1
    s.resp_started = 1
    if s.fc != NULL:
        s.fc.enc.sink_started = 1
    return 0


cdef int _stream_response_done(HStream* s) noexcept nogil:
    """The filtered response is complete downstream: end the stream."""
    cdef HConn* c = s.c
    if s.upstream.conn != NULL and not s.upstream.resp_received:
        return 0                        # the upstream still owes bytes; it finishes then
    stream_finish(s)
    hconn_pump(c)
    return -1


cdef int hf_sink_data_encode(HStream* s) noexcept nogil:
    """Filtered response body (and the end) to the downstream, framed."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.enc
    cdef bint local_head = fc.local_encoding and s.method == METHOD_HEAD
    if local_head:
        chain_clear(&d.held)            # a filter added body to a HEAD reply: not sent
    if not d.sink_started:
        if stream_send_response_head(s, UF_PARSER if local_head else _sink_framing(d, &fc.resp),
                                     d.held.length) < 0 or s.fc != fc:
            return -1
    s.bytes_sent += d.held.length
    if s.c.codec.encode_data(s.c, s, &d.held, d.held.length) < 0 \
            or (d.phase == FP_PH_DONE and _encode_end_server(s, &fc.resp_trailers) < 0):
        stream_reset(s)                 # the response has started: a reset is all that is left
        return -1
    if d.phase == FP_PH_DONE:
        return _stream_response_done(s)
    return 0


cdef int _encode_end_server(HStream* s, const HMap* trailers) noexcept nogil:
    """The end of a response body the encoder filters passed, with their trailers."""
    cdef HConn* c = s.c
    cdef PairList tl
    cdef int rc
    memset(&tl, 0, sizeof(PairList))
    if trailers.used and hm_to_pairs(trailers, &tl, True) < 0:
        free(tl.v)
        return -1
    rc = c.codec.encode_end(c, s, &tl)
    free(tl.v)
    return rc


cdef bint _is_grpc_request(const HttpHead* head) noexcept nogil:
    """Is the request's content-type application/grpc (core/http/grpc.pxi's rule)?"""
    cdef size_t n = 0
    cdef const char* v = _head_field(head, "content-type", &n)
    return v != NULL and grpc_content_type(v, n)
