# The router filter: the terminal decoder filter. It builds the router's input from the
# request, picks a route (direct responses, redirects, rewrites), acquires an upstream
# connection from the pool, writes the upstream request head and forwards the request body
# (the decoder side's sinks), and reads the upstream response (stream_on_upstream).

# ---------------------------------------------------------------- moving body bytes

cdef int chain_move_bytes(Chain* dst, Chain* src, size_t n) noexcept nogil:
    """Move the first n bytes of src to the end of dst without copying them."""
    cdef SliceRef* r
    while n and src.count:
        r = &src.refs[src.head]
        if r.len <= n:
            if chain_room(dst, 1) < 0:
                return -1
            dst.refs[dst.head + dst.count] = r[0]
            dst.count += 1
            dst.length += r.len
            src.length -= r.len
            n -= r.len
            src.head += 1
            src.count -= 1
        else:
            slice_incref(r.s)
            if chain_append_slice(dst, r.s, r.off, n) < 0:
                return -1
            r.off += n
            r.len -= n
            src.length -= n
            n = 0
    if src.count == 0:
        src.head = 0
    return 0


cdef bint splice_pipe_open(Worker* w, SplicePipe* sp) noexcept nogil:
    """Give sp a pipe (from the worker's pool, dispatcher.pxi) if it has none."""
    cdef PooledPipe pp
    if sp.r >= 0:
        return True
    if not pipe_take(w, HTTP_IO_LIMIT, &pp):
        return False                    # e.g. EMFILE: the copy path still works
    sp.r = pp.r
    sp.w = pp.w
    sp.cap = pp.cap
    sp.bytes = 0
    return True


cdef void splice_pipe_close(Worker* w, SplicePipe* sp) noexcept nogil:
    """Give sp's pipe back to the pool (kept only if drained)."""
    cdef PooledPipe pp
    pp.r = sp.r
    pp.w = sp.w
    pp.want = HTTP_IO_LIMIT
    pp.cap = sp.cap
    pipe_give_back(w, &pp, sp.bytes)
    sp.r = -1
    sp.w = -1
    sp.bytes = 0


cdef int splice_move(SplicePipe* sp, Endp* src, Endp* dst, uint64_t* src_left,
                     uint64_t* moved) noexcept nogil:
    """Move up to *src_left body bytes src -> pipe -> dst with splice(2). *src_left goes
    down by what was read, *moved up by what was written. 0, or -1 (src failed or ended
    early), -2 (dst failed)."""
    cdef ssize_t n
    cdef size_t k
    cdef bint progress = True
    while progress:
        progress = False
        if sp.bytes and dst.writable:
            n = splice(sp.r, NULL, dst.fd, NULL, sp.bytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                sp.bytes -= <size_t>n
                moved[0] += <uint64_t>n
                progress = True
            elif n < 0 and errno == EAGAIN:
                dst.writable = 0
            elif n < 0 and errno != EINTR:
                return -2
        if src_left[0] and src.readable and sp.bytes < sp.cap:
            k = sp.cap - sp.bytes
            if k > src_left[0]:
                k = <size_t>src_left[0]
            n = splice(src.fd, NULL, sp.w, NULL, k, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                sp.bytes += <size_t>n
                src_left[0] -= <uint64_t>n
                progress = True
            elif n == 0:
                return -1
            elif errno == EAGAIN:
                if sp.bytes == 0:
                    src.readable = 0
            elif errno != EINTR:
                return -1
    return 0


cdef int _upstream_request_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Encode the request head for the upstream (s.upstream.conn's codec)."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const RouteEntry* e = s.route
    cdef PairList l
    cdef char xff[1024]
    cdef Host* uhost
    cdef char tobuf[24]
    cdef char grpc_to[24]
    cdef char attempts[24]
    cdef size_t n, k
    cdef const char* v
    cdef StrRef target = _s(s.head.buf + s.head.target_off, s.head.target_len)
    cdef StrRef method = _s(s.head.buf + s.head.method_off, s.head.method_len)
    cdef StrRef orig_target
    cdef StrRef orig_host = _s(NULL, 0)     # the Host a host rewrite replaced
    cdef BodyFraming bf
    cdef char* owned = NULL
    cdef char* xff_owned = NULL             # the x-forwarded-for when xff[] is too small
    cdef char* xffp = xff
    cdef size_t xff_cap = sizeof(xff)
    cdef char* xfcc_owned = NULL
    memset(&l, 0, sizeof(PairList))
    try:
        if s.fc != NULL:
            v = hm_get(&s.fc.req, ":method", 7, &n)
            if v == NULL:
                return -1
            method = _s(v, n)
            v = hm_get(&s.fc.req, ":path", 5, &n)
            if v == NULL:
                return -1
            target = _s(v, n)
            v = hm_get(&s.fc.req, ":authority", 10, &n)
            if v != NULL:
                _pl_add(&l, _cs("host"), _s(v, n))
            if hm_to_pairs(&s.fc.req, &l, True) < 0:
                return -1
        elif _pl_from_head(&l, &s.head) < 0:
            return -1
        orig_target = target
        if s.rewritten_path != NULL:
            target = _s(s.rewritten_path, s.rewritten_path_len)
        if _body_framing(s, False, framing, length, &s.fc.req if s.fc != NULL else NULL, &bf) < 0:
            return -1
        if s.expect_continue:
            _pl_remove(&l, "expect", 6)     # we answered 100-continue ourselves (Envoy too);
                                            # other expectations go on, as in Envoy
        if s.upgrade:
            v = _head_field(&s.head, "upgrade", &n)
            if v != NULL:
                _pl_add(&l, _cs("upgrade"), _s(v, n))
                bf.upgrade = 1                  # the codec adds its Connection: upgrade
        if e.host_rewrite_literal.p != NULL:
            orig_host = _pl_take(&l, "host", 4)
            _pl_add(&l, _cs("host"), _s(e.host_rewrite_literal.p, e.host_rewrite_literal.n))
        elif e.auto_host_rewrite:
            # Envoy 1.40: the host's name (endpoint.hostname, else a STRICT_DNS endpoint's
            # DNS name), without a port; a STATIC endpoint without a hostname keeps the Host.
            uhost = &s.upstream.conn.hosts.hosts[s.upstream.conn.host_index]
            if uhost.hostname_len:
                orig_host = _pl_take(&l, "host", 4)
                _pl_add(&l, _cs("host"), _s(uhost.hostname, uhost.hostname_len))
        # Envoy's x-envoy-* rules (core/http/stream_extras.pxi): the connection manager's pass already
        # ran on a filtered stream's map; the router's runs on every filtered stream, since a
        # filter may have added such a field.
        if s.fc != NULL:
            xe_sanitize(s, &l, XE_AT_ROUTER)
        elif s.envoy_hdrs:
            xe_sanitize(s, &l, XE_AT_HCM | XE_AT_ROUTER)
        if h.use_remote_address and not h.skip_xff_append:
            # Room for the received list, ',' and an address: a long list is appended to
            # too, as Envoy does, never replaced by the peer alone.
            v = _req_field(s, "x-forwarded-for", 15, &n)
            if v != NULL and n + 1 + sizeof(h.local_ip) + sizeof(c.remote_ip) > xff_cap:
                xff_cap = n + 1 + sizeof(h.local_ip) + sizeof(c.remote_ip)
                xff_owned = <char*>malloc(xff_cap)
                if xff_owned == NULL:
                    return -1
                xffp = xff_owned
            k = stream_forwarded_xff(s, xffp, xff_cap)
            _pl_remove(&l, "x-forwarded-for", 15)
            _pl_add(&l, _cs("x-forwarded-for"), _s(xffp, k))
        if h.use_remote_address:
            # A trusted hop's x-forwarded-proto is kept (Envoy: only with xff_num_trusted_hops);
            # otherwise it says how the client reached us (https on TLS).
            if h.xff_num_trusted_hops == 0 or not _pl_has(&l, "x-forwarded-proto", 17):
                _pl_remove(&l, "x-forwarded-proto", 17)
                _pl_add(&l, _cs("x-forwarded-proto"), hconn_scheme(c))
        elif not _pl_has(&l, "x-forwarded-proto", 17):
            _pl_add(&l, _cs("x-forwarded-proto"), hconn_scheme(c))
        if s.fc == NULL:
            if pl_apply_xfcc(s, &l, &xfcc_owned) < 0:
                return -1
            if s.client_internal:
                _pl_add(&l, _cs("x-envoy-internal"), _cs("true"))
            elif s.edge:
                _pl_add(&l, _cs("x-envoy-external-address"), _s(s.client_ip, s.client_ip_len))
            if h.via_len and _pl_append_list(&l, "via", 3, h.via, h.via_len, &owned) < 0:
                return -1
            if h.generate_request_id and ((s.edge and not h.preserve_external_request_id)
                                          or not _pl_has(&l, "x-request-id", 12)):
                # An edge request's own x-request-id is replaced, unless
                # preserve_external_request_id. (A retry sends the id its first attempt had.)
                if s.request_id_len == 0 or s.retry == NULL:
                    stream_new_request_id(s)
                if s.edge:
                    _pl_overwrite(&l, _cs("x-request-id"), _s(s.request_id, 36))
                else:
                    _pl_add(&l, _cs("x-request-id"), _s(s.request_id, 36))
        elif h.generate_request_id and not _pl_has(&l, "x-request-id", 12):
            if s.request_id_len == 0 or s.retry == NULL:
                stream_new_request_id(s)
            _pl_add(&l, _cs("x-request-id"), _s(s.request_id, 36))
        if s.expected_timeout_ms and not h.suppress_envoy_headers:
            k = _u64_text(s.expected_timeout_ms, tobuf)
            _pl_add(&l, _cs("x-envoy-expected-rq-timeout-ms"), _s(tobuf, k))
        if grpc_timeout_header(s, &l, grpc_to) < 0:        # core/http/grpc.pxi
            return -1
        if e.retry != NULL and retry_count_header(s, &l, attempts, False) < 0:
            return -1
        if s.rewritten_path != NULL and not h.suppress_envoy_headers:   # finalizePathHeader
            _pl_add(&l, _cs("x-envoy-original-path"), orig_target)
        if orig_host.p != NULL and not h.suppress_envoy_headers:
            _pl_add(&l, _cs("x-envoy-original-host"), orig_host)    # the Host it replaced
        if _pl_apply_ops(&l, &e.request_headers) < 0:
            return -1
        shadows_start(s, method, target, &l, &bf)          # the route's mirrors (core/http/shadow.pxi)
        return s.upstream.conn.codec.encode_headers(s.upstream.conn, method, target, &l, &bf)
    finally:
        free(l.v)
        free(owned)
        free(xff_owned)
        free(xfcc_owned)


cdef bint _response_splice_ready(HStream* s) noexcept nogil:
    """Can the rest of the response body go upstream -> pipe -> downstream unread? Only a
    body both codecs pass as it is (a Content-Length one), no encoder filter reads, and
    nothing buffered on either side."""
    cdef UpConn* u = s.upstream.conn
    cdef HConn* c = s.c
    return (s.resp_started and not _enc_body_filtered(s) and u.in_buf.length == 0
            and c.out_buf.length == 0 and u.codec.raw_body_left(u) != 0
            and c.codec.raw_data_ok(c, s) and endp_splice_ok(&u.ep, &c.down)
            and splice_pipe_open(c.w, &c.rsp_pipe))


cdef int _response_splice(HStream* s) noexcept nogil:
    """Move response body bytes with splice(2). -1: the stream or connection ended; 0: wait
    for the sockets; 1: the body is complete (the codec delivers its end)."""
    cdef UpConn* u = s.upstream.conn
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef uint64_t before = u.codec.raw_body_left(u)
    cdef uint64_t left = before
    cdef uint64_t moved = 0
    cdef bint done
    cdef int rc = splice_move(&c.rsp_pipe, &u.ep, &c.down, &left, &moved)
    stat_add(h.stats, c.w, H_BYTES_SPLICED, moved)
    stat_add(h.stats, c.w, H_CX_TX_BYTES, moved)
    stat_add(s.cluster.stats, c.w, C_RX_BYTES, before - left)
    s.bytes_sent += moved
    if moved or left != before:
        s.last_active_ms = c.w.now
        if s.retry != NULL:
            retry_upstream_active(s)
    done = u.codec.raw_body_moved(u, before - left)
    if rc < 0:
        if rc == -1:
            u.remote_close = 1          # the upstream ended or failed
        else:
            c.peer_gone = 1
        hconn_close(c, True)
        return -1
    if c.rsp_pipe.bytes or not done:
        return 0
    return 1


cdef int stream_on_upstream(HStream* s) noexcept nogil:
    """The upstream connection has news for s: its codec decodes the response into the
    events below (or, for a tunnel, bytes flow). -1: the stream or connection ended."""
    cdef UpConn* u = s.upstream.conn
    cdef HConn* c = s.c
    if s.shadow_role == SHR_SHADOW:
        return shadow_on_upstream(s)
    if s.connect and not s.tunnel and stream_connect_established(s) < 0:
        stream_reset(s)
        return -1
    while True:
        if s.tunnel:
            return _tunnel_pump(s)
        if c.rsp_pipe.bytes or _response_splice_ready(s):
            if _response_splice(s) <= 0:
                return -1 if c.closed or s.ended else 0
        if u.codec.decode(u) < 0:
            return -1
        if not s.tunnel and not _response_splice_ready(s):
            return 0


# -- the client codec's events (core/http/codec_h1_client.pxi says when each comes)

cdef int ur_on_response_headers(HStream* s, const HttpHead* head, const ResponseFacts* f) noexcept nogil:
    """A final response head (the codec keeps it; s.upstream.resp_head borrows it). -1: the stream
    ended."""
    cdef UpConn* u = s.upstream.conn
    cdef HConn* c = s.c
    if s.shadow_role == SHR_SHADOW:
        return shadow_on_response_headers(s, head)
    s.upstream.resp_head = head
    s.upstream.resp_facts = f[0]
    if head.status == 101:
        if not s.upgrade:
            # A switch the request did not ask for (RFC 9110 section 15.2.2: a server
            # switches only to a protocol the client offered). The parser stops at a 101,
            # so whatever follows is not HTTP: the connection is unusable.
            http_pool_fail(u, 502, UPSTREAM_PROTOCOL_ERROR)
            return -1
        if _tunnel_response_head(s) < 0:
            http_pool_fail(u, 502, UPSTREAM_PROTOCOL_ERROR)
            return -1
        s.status = 101
        s.resp_started = 1
        s.tunnel = 1
        timer_cancel(c.w, &s.timeout)
        _count_downstream(c, 101)
        chain_move(&u.out_buf, &c.in_buf)       # bytes the client sent early
        return 0
    outlier_report_http(s.upstream.hstats, c.w, head.status)    # (every attempt's, as Envoy)
    if s.retry != NULL and retry_on_headers(s, head):
        return -1                       # retried: the attempt is dropped (core/http/retry.pxi)
    s.status = head.status
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "router", c.id, c.nrequests,
               "upstream headers complete: status %d from connection %llu", s.status,
               <unsigned long long>u.id)
    _count_upstream(s.cluster.stats, c.w, s.status)
    _count_host(s, s.status)
    _count_downstream(c, s.status)
    if _enc_filtered(s):
        return _response_to_filters(s)
    if _downstream_response_head(s, UF_PARSER, 0) < 0:
        http_pool_fail(u, 502, UPSTREAM_PROTOCOL_ERROR)
        return -1
    s.resp_started = 1
    s.resp_from_upstream = 1
    s.response_start_ms = c.w.now
    return 0


cdef bint ur_response_data_wanted(HStream* s, bint at_end) noexcept nogil:
    """May the codec deliver response body (at_end: the response's end) now? Not while an
    encoder filter holds the head (its continue restarts this), nor body beyond what the
    encoder filters will buffer (their end always)."""
    if s.shadow_role == SHR_SHADOW:
        return True
    if _enc_body_filtered(s):
        return at_end or hf_wants_more(s, True)
    return s.resp_started != 0


cdef int ur_on_response_data(HStream* s, Chain* src, size_t n, bint end,
                             const HttpHead* trailers) noexcept nogil:
    """n response body bytes at the front of src (the receiver takes them), `end` with the
    last, trailers (or NULL) with the end. -1: the stream ended."""
    cdef HConn* c = s.c
    cdef HttpCfg* h
    cdef PairList tl
    cdef int rc
    if s.shadow_role == SHR_SHADOW:
        return shadow_on_response_data(s, src, n, end)
    h = <HttpCfg*>c.cfg.http
    stat_add(h.stats, c.w, H_BYTES_COPIED, n)
    if s.retry != NULL:
        retry_upstream_active(s)        # (per_try_idle_timeout)
    if end:
        s.upstream.resp_received = 1
    if _enc_body_filtered(s):
        # The body goes through the encoder filters; their sink frames it.
        if end:
            s.upstream.resp_end_fed = 1
            if trailers != NULL and hm_from_head(&s.fc.resp_trailers, trailers, True, False) < 0:
                stream_reset(s)
                return -1
        return hf_body_in(s, True, src, n, end, trailers != NULL)
    if n:
        s.bytes_sent += n
        if c.codec.encode_data(c, s, src, n) < 0:
            stream_reset(s)
            return -1
    if not end:
        return 0
    memset(&tl, 0, sizeof(PairList))
    rc = 0
    if trailers != NULL:
        rc = _pl_from_head(&tl, trailers)
    if rc == 0:
        rc = c.codec.encode_end(c, s, &tl)
    free(tl.v)
    if rc < 0:
        stream_reset(s)
        return -1
    stream_finish(s)
    return -1


cdef void ur_on_response_error(HStream* s, int kind) noexcept nogil:
    """The upstream's response cannot be completed (UE_*): Envoy's answers, a 502 or 503
    while nothing went downstream yet, else a reset with its response flag."""
    cdef UpConn* u = s.upstream.conn
    cdef HConn* c = s.c
    cdef bint filtered = _enc_body_filtered(s)
    if s.shadow_role == SHR_SHADOW:
        shadow_on_response_error(s, kind)
        return
    if kind == UE_PROTOCOL:
        http_pool_fail(u, 502, UPSTREAM_PROTOCOL_ERROR)     # counts the 5xx
    elif kind == UE_RESET:
        # The upstream reset the stream (HTTP/2): Envoy's 503 "remote reset" (flag UR)
        # before the response head, a reset of the downstream stream after it.
        if s.resp_started:
            s.response_flags |= RF_UR
            stat_add(s.cluster.stats, c.w, C_RQ_RX_RESET, 1)
            outlier_report_local(s.upstream.hstats, c.w, OUT_RESET)
            stream_reset(s)
        else:
            http_pool_fail(u, 503, UPSTREAM_REMOTE_RESET)
    elif s.resp_started:
        if kind == UE_BODY_FRAMING and not filtered:
            s.response_flags |= RF_UPE              # bad body framing from the upstream
        elif not filtered or kind == UE_CLOSED_IN_HEAD or kind == UE_CLOSED_BEFORE_HEAD:
            s.response_flags |= RF_UC               # the upstream ended inside the response
        outlier_report_local(s.upstream.hstats, c.w, OUT_RESET)
        stream_reset(s)
    elif kind == UE_CLOSED_BEFORE_HEAD or (kind == UE_CLOSED_IN_BODY and not filtered):
        http_pool_fail(u, 503, UPSTREAM_TERMINATION)
    else:
        # Closed inside a response head, or a filtered body that broke before its head
        # went out: a malformed message (Envoy: protocol error).
        http_pool_fail(u, 502, UPSTREAM_PROTOCOL_ERROR)


cdef RouteHeader* _route_input(HStream* s, RouteInput* r, RouteHeader* stack) noexcept nogil:
    """The router's input for s, its header array in `stack` (ROUTE_HEADERS_ON_STACK
    entries) when it fits, else malloc'd; release it with _route_input_free. NULL: no
    memory."""
    cdef size_t nf = (s.head.nfields if s.fc == NULL else s.fc.req.l.n) + 2    # + Envoy's two
    cdef RouteHeader* hdrs = stack
    if nf > ROUTE_HEADERS_ON_STACK:
        hdrs = <RouteHeader*>malloc(nf * sizeof(RouteHeader))
        if hdrs == NULL:
            return NULL
    _fill_route_input(s, r, hdrs)
    return hdrs


cdef inline void _route_input_free(RouteHeader* hdrs, RouteHeader* stack) noexcept nogil:
    if hdrs != stack:
        free(hdrs)


cdef void _fill_route_input(HStream* s, RouteInput* r, RouteHeader* hdrs) noexcept nogil:
    cdef HttpHead* hd = &s.head
    cdef uint32_t i
    cdef size_t n, k
    cdef HMap* m
    r.scheme = "http"
    r.scheme_len = 4
    r.worker = <unsigned int>s.c.w.index
    r.headers = hdrs
    r.connect = s.connect
    if s.fc != NULL:
        # Route on the headers as the filters left them.
        m = &s.fc.req
        r.method = hm_get(m, ":method", 7, &n)
        r.method_len = n if r.method != NULL else 0
        r.path = hm_get(m, ":path", 5, &n)
        r.path_len = n if r.path != NULL else 0
        r.host = hm_get(m, ":authority", 10, &n)
        r.host_len = n if r.host != NULL else 0
        k = 0
        for i in range(m.l.n):
            if m.l.v[i].name.n and m.l.v[i].name.p[0] == b':':
                continue
            hdrs[k].name = m.l.v[i].name.p
            hdrs[k].name_len = m.l.v[i].name.n
            hdrs[k].value = m.l.v[i].value.p
            hdrs[k].value_len = m.l.v[i].value.n
            k += 1
        r.nheaders = <int>k
        return
    r.method = hd.buf + hd.method_off
    r.method_len = hd.method_len
    r.path = hd.buf + hd.target_off
    r.path_len = hd.target_len
    r.host = _head_field(hd, "host", &n)
    r.host_len = n if r.host != NULL else 0
    k = 0
    for i in range(hd.nfields):
        hdrs[k].name = hd.buf + hd.fields[i].name_off
        hdrs[k].name_len = hd.fields[i].name_len
        if s.envoy_hdrs and xe_drops(s, hdrs[k].name, hdrs[k].name_len, XE_AT_HCM):
            continue                    # routes see the headers as Envoy's HCM left them
        hdrs[k].value = hd.buf + hd.fields[i].value_off
        hdrs[k].value_len = hd.fields[i].value_len
        k += 1
    if s.client_internal:               # (hdrs has room for two more)
        hdrs[k].name = "x-envoy-internal"
        hdrs[k].name_len = 16
        hdrs[k].value = "true"
        hdrs[k].value_len = 4
        k += 1
    elif s.edge:
        hdrs[k].name = "x-envoy-external-address"
        hdrs[k].name_len = 24
        hdrs[k].value = s.client_ip
        hdrs[k].value_len = s.client_ip_len
        k += 1
    r.nheaders = <int>k


cdef int stream_route(HStream* s) noexcept nogil:
    """The router: pick the route and the upstream, send the request head (unless a filter
    may still change the body: then the first body bytes send it). -1: the stream ended."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs = _route_input(s, &r, stack)     # no malloc for most requests
    cdef const RouteEntry* e
    cdef char loc[ROUTE_TEXT_ON_STACK]
    cdef char* text
    cdef char* path = NULL          # the rewritten :path (malloc'd), NULL: no rewrite
    cdef size_t path_len = 0
    cdef ssize_t n
    cdef int ci
    cdef uint64_t per_try
    cdef bint hedge = False
    cdef bint headers_ok = False
    if hdrs == NULL:
        stream_reset(s)
        return -1
    if s.route == NULL or s.route_cleared or s.fc == NULL:
        s.route = route_select(s.routes, &r)
        s.route_cleared = 0
    e = s.route
    if e == NULL:
        if fp_log_level <= LOG_DEBUG:
            fp_log(c.w.index, "router", c.id, c.nrequests, "no route match for URL '%.*s'", <int>r.path_len, r.path)
        _route_input_free(hdrs, stack)
        stat_add(h.stats, c.w, H_NO_ROUTE, 1)
        s.response_flags |= RF_NR
        stream_local_reply(s, 404, "", 0, NULL, 0, not s.req_received)
        return -1
    if e.action == ROUTE_DIRECT_RESPONSE or e.action == ROUTE_REDIRECT:
        n = route_text(route_redirect_location, e, &r, loc, sizeof(loc), &text)
        _route_input_free(hdrs, stack)
        if n == ROUTE_NO_ROOM:
            stream_local_reply(s, 503, NO_MEMORY_BODY, strlen(NO_MEMORY_BODY), NULL, 0, True)
            return -1
        stream_local_reply(s, e.status, e.body.p, e.body.n, text if n >= 0 else NULL,
                           <size_t>n if n >= 0 else 0, not s.req_received)
        if text != loc:
            free(text)                  # the reply holds its own copy
        return -1
    if not s.connect:
        # The rewritten path, while the route input is at hand; before any upstream is
        # taken, so a request that cannot have it is refused with nothing to undo.
        n = route_text(route_rewrite_path, e, &r, loc, sizeof(loc), &text)
        if n >= 0:
            path = text
            path_len = <size_t>n
            if text == loc:
                path = <char*>malloc(path_len + 1)
                if path != NULL:
                    memcpy(path, loc, path_len)
        if n == ROUTE_NO_ROOM or (n >= 0 and path == NULL):
            _route_input_free(hdrs, stack)
            stream_local_reply(s, 503, NO_MEMORY_BODY, strlen(NO_MEMORY_BODY), NULL, 0, True)
            return -1
    if s.cluster_override >= 0:
        ci = s.cluster_override
    else:
        ci = e.cluster if e.action == ROUTE_CLUSTER else route_pick_weighted(e, worker_random(c.w))
    s.cluster = s.routes.clusters[ci]
    s.cluster_index = ci
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "router", c.id, c.nrequests, "cluster '%s' match for URL '%.*s'%s%.*s",
               s.routes.cluster_names[ci], <int>r.path_len, r.path,
               _pick(path != NULL, ", rewritten to ", ""), <int>path_len,
               _pick(path != NULL, path, ""))
    if s.cluster == NULL or cluster_params(s.cluster, c.w).removed:
        # The route names a cluster that is not configured (removed, or not added yet; an
        # RDS table may): Envoy's 503 with an empty body, flag NC, http.<prefix>.no_cluster.
        if fp_log_level <= LOG_DEBUG:
            fp_log(c.w.index, "router", c.id, c.nrequests, "unknown cluster '%s'", s.routes.cluster_names[ci])
        s.cluster = NULL                # (not this stream's cluster: nothing is charged to it)
        s.cluster_index = -1            # no upstream cluster: %UPSTREAM_CLUSTER% is "-"
        free(path)
        _route_input_free(hdrs, stack)
        stat_add(h.stats, c.w, H_NO_CLUSTER, 1)
        s.response_flags |= RF_NC
        stream_local_reply(s, 503, "", 0, NULL, 0, not s.req_received)
        return -1
    if e.hash_policy != NULL and stream_hash_policy(s, &r) < 0:     # the pick's hash (core/http/hash_policy.pxi)
        free(path)
        _route_input_free(hdrs, stack)
        stream_local_reply(s, 503, NO_MEMORY_BODY, strlen(NO_MEMORY_BODY), NULL, 0, True)
        return -1
    per_try = stream_route_timeout(s, &hedge, &headers_ok)
    if (e.retry != NULL or per_try or (headers_ok and s.envoy_hdrs)) \
            and retry_stream_start(s, per_try, hedge, headers_ok) < 0:
        free(path)
        _route_input_free(hdrs, stack)
        stream_reset(s)
        return -1
    s.upstream.conn = http_pool_acquire(s, s.cluster)
    if s.upstream.conn == NULL:
        free(path)
        _route_input_free(hdrs, stack)
        _count_upstream(s.cluster.stats, c.w, 503)
        if s.response_flags & RF_UO:
            stream_local_reply(s, 503, UPSTREAM_OVERFLOW, strlen(UPSTREAM_OVERFLOW), NULL, 0,
                               not s.req_received)
        else:
            stream_local_reply(s, 503, NO_HEALTHY_UPSTREAM, strlen(NO_HEALTHY_UPSTREAM), NULL, 0,
                               not s.req_received)
        return -1
    if s.retry != NULL:
        retry_attempt_started(s)
    if s.connect:
        _route_input_free(hdrs, stack)                      # the 200 and the tunnel follow the TCP connect
        return 0
    if s.fc == NULL and s.expect_continue:
        c.codec.encode_continue(c, s)
    if path != NULL:
        free(s.rewritten_path)
        s.rewritten_path = path
        s.rewritten_path_len = path_len
    _route_input_free(hdrs, stack)
    if not _dec_body_filtered(s):
        if stream_send_request_head(s, UF_PARSER, 0) < 0:
            return -1
    elif s.fc.dec.phase == FP_PH_DONE:
        if stream_send_request_head(s, UF_LENGTH if s.req_has_body else UF_NONE, 0) < 0:
            return -1
    if s.upstream.req_done and s.timeout_ms:
        timer_arm(c.w, &s.timeout, s.timeout_ms)
    if s.upstream.req_done and s.retry != NULL and s.upstream.conn != NULL:
        retry_request_complete(s)
    if s.upstream.conn == NULL:
        return 0                        # (an attempt failed at once and is being retried)
    if s.upstream.conn.state == UC_BUSY:
        s.upstream.conn.ep.writable = 1            # a pooled connection: try to write at once
    return 0


cdef int stream_send_request_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Serialize the request head into the upstream's out_buf. -1: the stream ended."""
    cdef HConn* c = s.c
    if _upstream_request_head(s, framing, length) < 0:
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
        stream_local_reply(s, 400, "invalid request after header mutation", 37, NULL, 0, True)
        return -1
    if s.retry != NULL:
        retry_head_sent(s, framing, length)
    if s.fc != NULL:
        s.fc.dec.sink_started = 1
    return 0


# -- the filter chain's sinks (core/http/filter_manager.pxi calls these)

cdef int hf_sink_headers_decode(HStream* s) noexcept nogil:
    """The request headers passed every decoder filter: route."""
    if s.fc.dec.phase == FP_PH_DONE:
        stream_request_end(s, False)
    return stream_route(s)


cdef int hf_sink_data_decode(HStream* s) noexcept nogil:
    """Filtered request body (and the end) to the upstream, framed."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.dec
    cdef UpConn* u = s.upstream.conn
    cdef HConn* c = s.c
    if u == NULL:
        if s.retry == NULL or not timer_armed(&s.retry.backoff):
            return -1
        # Between two attempts: kept for the next one (core/http/retry.pxi).
        if s.shadows != NULL:
            shadows_feed(s, &d.held, d.held.length, d.phase == FP_PH_DONE, NULL, &fc.req_trailers)
        if not retry_keep_body(s, &d.held, d.held.length, d.phase == FP_PH_DONE):
            stream_local_reply(s, 507, RETRY_BUFFER_EXCEEDED, strlen(RETRY_BUFFER_EXCEEDED), NULL, 0, True)
            return -1
        chain_drain(&d.held, d.held.length)
        if d.phase == FP_PH_DONE:
            stream_request_end(s, True)
        return 0
    if s.upstream.req_done:
        return 0
    if not d.sink_started and stream_send_request_head(s, _sink_framing(d, &fc.req), d.held.length) < 0:
        return -1
    if s.shadows != NULL:
        shadows_feed(s, &d.held, d.held.length, d.phase == FP_PH_DONE, NULL, &fc.req_trailers)
    if s.retry != NULL and not retry_keep_body(s, &d.held, d.held.length, d.phase == FP_PH_DONE):
        return -1                       # (cannot happen with an attempt in flight)
    if u.codec.encode_data(u, &d.held, d.held.length) < 0 \
            or (d.phase == FP_PH_DONE and _encode_end_client(u, &fc.req_trailers) < 0):
        hf_fail(s, False)
        return -1
    if d.phase == FP_PH_DONE:
        stream_request_end(s, True)
    if u.state == UC_BUSY and u.out_buf.length:
        u.ep.writable = 1
    return 0


cdef inline bint _request_splice_ready(HConn* c, HStream* s) noexcept nogil:
    """Could the rest of the request body go downstream -> pipe -> upstream unread (a body
    both codecs pass as it is, nothing buffered downstream, the upstream connected)? Not
    while shadows take copies of it."""
    return (s.shadows == NULL and c.in_buf.length == 0 and s.upstream.conn.state == UC_BUSY and c.codec.raw_body_left(c, s) != 0
            and (s.retry == NULL or not s.retry.keep_body)     # (kept bytes must be read)
            and s.upstream.conn.codec.raw_data_ok(s.upstream.conn)
            and endp_splice_ok(&c.down, &s.upstream.conn.ep))


cdef int stream_forward_request_body(HStream* s) noexcept nogil:
    """Move the request body on to the upstream: through a pipe when it can go unread,
    else through the codec's data events (cm_on_request_data -> upstream_request_data).
    -1 when the stream ended."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef UpConn* u = s.upstream.conn
    cdef uint64_t before, left, moved
    cdef bint done
    cdef int rc
    if c.req_pipe.bytes or (_request_splice_ready(c, s) and u.out_buf.length == 0
                            and splice_pipe_open(c.w, &c.req_pipe)):
        before = c.codec.raw_body_left(c, s)
        left = before
        moved = 0
        rc = splice_move(&c.req_pipe, &c.down, &u.ep, &left, &moved)
        stat_add(h.stats, c.w, H_BYTES_SPLICED, moved)
        stat_add(h.stats, c.w, H_CX_RX_BYTES, before - left)
        stat_add(s.cluster.stats, c.w, C_TX_BYTES, moved)
        if moved or left != before:
            s.last_active_ms = c.w.now
        s.req_body_bytes += before - left
        done = c.codec.raw_body_moved(c, s, before - left)
        if rc == -1:
            c.peer_gone = 1                 # the client ended or failed (hconn_close counts the reset)
            hconn_close(c, False)
            return -1
        if rc == -2:
            u.remote_close = 1
            http_pool_fail(u, 503, UPSTREAM_TERMINATION)
            return -1
        if done:
            s.req_received = 1
            if c.req_pipe.bytes == 0:
                stream_request_end(s, True)
        return 0
    return c.codec.decode(c)


cdef int upstream_request_data(HStream* s, Chain* src, size_t n, bint end,
                               HttpHead* trailers) noexcept nogil:
    """Unfiltered request body (cm_on_request_data) to the upstream's codec. -1: the stream
    ended."""
    cdef HConn* c = s.c
    cdef UpConn* u = s.upstream.conn
    cdef PairList tl
    cdef int rc = 0
    if s.shadows != NULL:
        shadows_feed(s, src, n, end, trailers, NULL)
    if s.retry != NULL and s.retry.keep_body and (n or end):
        # Kept for the next attempt (trailers are not: a request with them is not retried).
        if not (retry_keep_body(s, src, n, end) if trailers == NULL else retry_give_up(s)):
            chain_drain(src, n)
            stream_local_reply(s, 507, RETRY_BUFFER_EXCEEDED, strlen(RETRY_BUFFER_EXCEEDED), NULL, 0, True)
            return -1
    if u == NULL:
        chain_drain(src, n)
        if end and s.retry != NULL and s.retry.keep_body:
            stream_request_end(s, True)     # (the retry sends it whole)
        return 0
    if n and u.codec.encode_data(u, src, n) < 0:
        stream_reset(s)
        return -1
    if end:
        memset(&tl, 0, sizeof(PairList))
        if trailers != NULL:
            rc = _pl_from_head(&tl, trailers)
        if rc == 0:
            rc = u.codec.encode_end(u, &tl)
        free(tl.v)
        if rc < 0:
            stream_reset(s)
            return -1
        stream_request_end(s, True)
    return 0


cdef int _encode_end_client(UpConn* u, const HMap* trailers) noexcept nogil:
    """The end of a request body the decoder filters passed, with their trailers."""
    cdef PairList tl
    cdef int rc
    memset(&tl, 0, sizeof(PairList))
    if trailers.used and hm_to_pairs(trailers, &tl, True) < 0:
        free(tl.v)
        return -1
    rc = u.codec.encode_end(u, &tl)
    free(tl.v)
    return rc
