# The HTTP connection manager (Envoy's http_connection_manager with the router as its only
# filter) for HTTP/1.1, and the upstream connection pool it draws from.
#
#   downstream HConn --(one HStream at a time; pipelined requests wait in in_buf)--
#        request:  parse head -> route -> upstream head -> body (Content-Length: moved
#                  slice by slice, no copy; chunked: re-framed) -> UpConn.out_buf
#        response: UpConn.in_buf -> parse head -> downstream head -> body -> HConn.out_buf
#   UpConn: one upstream HTTP/1.1 connection; idle ones wait in a per-worker, per-host list
#           (the pool) and are reused for the next stream to that host.
#
# Nothing is ever forwarded for a request the codec rejects: the head is complete and valid
# before routing begins, and a body framing error resets the stream. Responses are re-framed
# for the downstream: Content-Length kept, chunked re-chunked, close-delimited bodies sent
# chunked to HTTP/1.1 clients (so the downstream connection survives) and close-delimited
# to HTTP/1.0 ones.
#
# Re-entrancy: work that finishes a stream may want to parse the next pipelined request;
# hconn_pump() is the only loop that does so, and a nested call only marks `repump`.

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


# ---------------------------------------------------------------- debug lines
# (core/debug_log.pxi; every call site tests fp_log_level first, so these cost nothing at
# info)

cdef inline const char* _pick(bint cond, const char* a, const char* b) noexcept nogil:
    return a if cond else b


cdef inline uint64_t _next_conn_id(Worker* w) noexcept nogil:
    """A connection id unique in the process: a per-worker sequence and the worker."""
    w.next_session_id += 1
    return w.next_session_id * 1024 + <uint64_t>w.index


cdef void _log_request_headers(HStream* s) noexcept nogil:
    cdef HConn* c = s.c
    cdef size_t hn = 0
    cdef const char* host = _head_field(&s.head, "host", &hn)
    fp_log(c.w.index, "http", c.id, c.nrequests,
           "request headers complete (end_stream=%s): %.*s %.*s, host '%.*s'",
           _pick(c.req.state == H1_MESSAGE_DONE, "true", "false"),
           <int>s.head.method_len, s.head.buf + s.head.method_off,
           <int>s.head.target_len, s.head.buf + s.head.target_off,
           <int>(hn if host != NULL else 0), _pick(host != NULL, host, ""))


cdef void _log_connecting(UpConn* u, Host* host) noexcept nogil:
    cdef char text[300]
    cdef size_t n = _host_text(host, text, sizeof(text))
    fp_log(u.w.index, "pool", u.id, 0, "connecting to %.*s for stream %u of connection %llu",
           <int>n, text,
           u.stream.c.nrequests if u.stream != NULL else 0,
           <unsigned long long>(u.stream.c.id if u.stream != NULL else 0))


cdef int _upstream_request_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Serialize the request head for the upstream into s.up.out_buf."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const RouteEntry* e = s.route
    cdef PairList l
    cdef char xff[1024]
    cdef Host* uhost
    cdef char lenbuf[24]
    cdef char tobuf[24]
    cdef size_t n, k
    cdef const char* v
    cdef H1Str target = _s(s.head.buf + s.head.target_off, s.head.target_len)
    cdef H1Str method = _s(s.head.buf + s.head.method_off, s.head.method_len)
    cdef H1Str orig_target
    cdef H1Str orig_host = _s(NULL, 0)     # the Host a host rewrite replaced
    cdef uint8_t chunked = 0
    cdef char* owned = NULL
    cdef char* xff_owned = NULL             # the x-forwarded-for when xff[] is too small
    cdef char* xffp = xff
    cdef size_t xff_cap = sizeof(xff)
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
        if framing == UF_PARSER:
            if s.req_chunked:
                _pl_add(&l, _cs("transfer-encoding"), _cs("chunked"))
            else:
                v = _head_field(&s.head, "content-length", &n)
                if v != NULL:
                    _pl_add(&l, _cs("content-length"), _s(v, n))
        else:
            if _framing_fields(s, &l, &s.fc.req, framing, length, lenbuf, sizeof(lenbuf), &chunked,
                               &s.fc.dec) < 0:
                return -1
            s.req_chunked = chunked
        if s.expect_continue:
            _pl_remove(&l, "expect", 6)     # we answered 100-continue ourselves (Envoy too);
                                            # other expectations go on, as in Envoy
        if s.upgrade:
            v = _head_field(&s.head, "upgrade", &n)
            if v != NULL:
                _pl_add(&l, _cs("upgrade"), _s(v, n))
                _pl_add(&l, _cs("connection"), _cs("upgrade"))
        if e.host_rewrite_literal.p != NULL:
            orig_host = _pl_take(&l, "host", 4)
            _pl_add(&l, _cs("host"), _s(e.host_rewrite_literal.p, e.host_rewrite_literal.n))
        elif e.auto_host_rewrite:
            # Envoy 1.40: the host's name (endpoint.hostname, else a STRICT_DNS endpoint's
            # DNS name), without a port; a STATIC endpoint without a hostname keeps the Host.
            uhost = &s.up.hosts.hosts[s.up.host_index]
            if uhost.hostname_len:
                orig_host = _pl_take(&l, "host", 4)
                _pl_add(&l, _cs("host"), _s(uhost.hostname, uhost.hostname_len))
        # Envoy's x-envoy-* rules (http_stream.pxi): the connection manager's pass already
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
            # A trusted hop's x-forwarded-proto is kept (Envoy: only with xff_num_trusted_hops).
            if h.xff_num_trusted_hops == 0 or not _pl_has(&l, "x-forwarded-proto", 17):
                _pl_remove(&l, "x-forwarded-proto", 17)
                _pl_add(&l, _cs("x-forwarded-proto"), _cs("http"))
        elif not _pl_has(&l, "x-forwarded-proto", 17):
            _pl_add(&l, _cs("x-forwarded-proto"), _cs("http"))
        if s.fc == NULL:
            if s.client_internal:
                _pl_add(&l, _cs("x-envoy-internal"), _cs("true"))
            elif s.edge:
                _pl_add(&l, _cs("x-envoy-external-address"), _s(s.client_ip, s.client_ip_len))
            if h.via_len and _pl_append_list(&l, "via", 3, h.via, h.via_len, &owned) < 0:
                return -1
            if h.generate_request_id and ((s.edge and not h.preserve_external_request_id)
                                          or not _pl_has(&l, "x-request-id", 12)):
                # An edge request's own x-request-id is replaced, unless
                # preserve_external_request_id.
                stream_new_request_id(s)
                if s.edge:
                    _pl_overwrite(&l, _cs("x-request-id"), _s(s.request_id, 36))
                else:
                    _pl_add(&l, _cs("x-request-id"), _s(s.request_id, 36))
        elif h.generate_request_id and not _pl_has(&l, "x-request-id", 12):
            stream_new_request_id(s)
            _pl_add(&l, _cs("x-request-id"), _s(s.request_id, 36))
        if s.expected_timeout_ms and not h.suppress_envoy_headers:
            k = _u64_text(s.expected_timeout_ms, tobuf)
            _pl_add(&l, _cs("x-envoy-expected-rq-timeout-ms"), _s(tobuf, k))
        if s.rewritten_path != NULL and not h.suppress_envoy_headers:   # finalizePathHeader
            _pl_add(&l, _cs("x-envoy-original-path"), orig_target)
        if orig_host.p != NULL and not h.suppress_envoy_headers:
            _pl_add(&l, _cs("x-envoy-original-host"), orig_host)    # the Host it replaced
        if _pl_apply_ops(&l, &e.request_headers) < 0:
            return -1
        if _append_head(&s.up.out_buf, &l, True, method, target, 0, _s(NULL, 0)) < 0:
            return -1
        return 0
    finally:
        free(l.v)
        free(owned)
        free(xff_owned)


cdef int stream_on_upstream(HStream* s) noexcept nogil:
    """Parse what the upstream sent and forward it. -1: the stream or connection ended."""
    cdef UpConn* u = s.up
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef H1Parser* p = &u.resp
    cdef SliceRef* r
    cdef ssize_t n
    cdef size_t off, seg
    cdef uint64_t left, moved
    cdef int rc
    if s.connect and not s.tunnel and stream_connect_established(s) < 0:
        hconn_close(c, True)
        return -1
    while True:
        if s.tunnel:
            return _tunnel_pump(s)
        if p.state == H1_HEAD:
            if u.in_buf.length == 0:
                break
            r = &u.in_buf.refs[u.in_buf.head]
            n = h1_feed_head(p, r.s.data + r.off, r.len)
            if n < 0:
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)     # counts the 5xx
                return -1
            chain_drain(&u.in_buf, <size_t>n)
            if p.state != H1_HEAD_DONE:
                continue
            if p.flags & H1F_TE_CODINGS:
                # gzip, chunked etc.: the coding would be lost when re-framing (Envoy: 502).
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            if p.head.status == 101 and s.upgrade:
                if _tunnel_response_head(s) < 0:
                    _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                    return -1
                s.status = 101
                s.resp_started = 1
                s.tunnel = 1
                timer_cancel(c.w, &s.timeout)
                _count_downstream(c, 101)
                chain_move(&u.out_buf, &c.in_buf)       # bytes the client sent early
                continue
            if p.head.status == 101:
                # A switch the request did not ask for (RFC 9110 section 15.2.2: a server
                # switches only to a protocol the client offered). The parser stops at a
                # 101, so whatever follows is not HTTP: the connection is unusable.
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            if (p.head.status < 200 or p.head.status == 204) and (
                    (p.flags & H1X_TE) or p.content_length > 0):
                # Envoy's codec: a 1xx or 204 cannot frame a body, so Transfer-Encoding or a
                # non-zero Content-Length there means the upstream and we disagree on where
                # the message ends; the connection cannot be trusted for the next response.
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            if p.flags & H1F_INTERIM:
                # 1xx: we already answered any Expect ourselves; drop it.
                h1_reset(p)
                continue
            s.status = p.head.status
            if fp_log_level <= LOG_DEBUG:
                fp_log(c.w.index, "router", c.id, c.nrequests,
                       "upstream headers complete: status %d from connection %llu", s.status,
                       <unsigned long long>u.id)
            _count_upstream(s.cluster.stats, c.w, s.status)
            _count_host(s, s.status)
            _count_downstream(c, s.status)
            if _enc_filtered(s):
                if p.framing == H1_BODY_NONE:
                    p.state = H1_MESSAGE_DONE
                if _response_to_filters(s) < 0:
                    return -1
                continue
            if _downstream_response_head(s, UF_PARSER, 0) < 0:
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            s.resp_started = 1
            s.resp_from_upstream = 1
            s.response_start_ms = c.w.now
            if p.framing == H1_BODY_NONE:
                p.state = H1_MESSAGE_DONE
            continue
        if _enc_body_filtered(s):
            # The body goes through the encoder filters; their sink frames it.
            if p.state == H1_MESSAGE_DONE:
                if not s.resp_end_fed:
                    s.resp_end_fed = 1
                    if p.trailers.nfields and hm_from_head(&s.fc.resp_trailers, &p.trailers, True, False) < 0:
                        hconn_close(c, True)
                        return -1
                    if hf_body_in(s, True, &u.in_buf, 0, True, p.trailers.nfields > 0) < 0:
                        return -1
                    continue
                break
            if not hf_wants_more(s, True):
                break
            if u.in_buf.length == 0:
                if u.eof:
                    if h1_feed_eof(p) == 0:
                        continue
                    if s.resp_started:
                        hconn_close(c, True)
                    else:
                        _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                    return -1
                break
            r = &u.in_buf.refs[u.in_buf.head]
            n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
            if n < 0:
                if s.resp_started:
                    hconn_close(c, True)
                else:
                    _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            stat_add(h.stats, c.w, H_BYTES_COPIED, seg)
            chain_drain(&u.in_buf, off)
            if seg or p.state == H1_MESSAGE_DONE:
                if p.state == H1_MESSAGE_DONE:
                    s.resp_end_fed = 1
                    if p.trailers.nfields and hm_from_head(&s.fc.resp_trailers, &p.trailers, True, False) < 0:
                        hconn_close(c, True)
                        return -1
                if hf_body_in(s, True, &u.in_buf, seg, p.state == H1_MESSAGE_DONE,
                              p.state == H1_MESSAGE_DONE and p.trailers.nfields > 0) < 0:
                    return -1
            chain_drain(&u.in_buf, <size_t>n - off - seg)
            continue
        if not s.resp_started:
            break                       # an encoder filter holds the response head
        if c.rsp_pipe.bytes or (p.framing == H1_BODY_LENGTH and s.resp_started
                                and p.state != H1_MESSAGE_DONE and u.in_buf.length == 0
                                and c.out_buf.length == 0 and splice_pipe_open(c.w, &c.rsp_pipe)):
            # The rest of a Content-Length body: upstream -> pipe -> downstream.
            left = p.body_remaining if p.state != H1_MESSAGE_DONE else 0
            moved = 0
            rc = splice_move(&c.rsp_pipe, &u.ep, &c.down, &left, &moved)
            stat_add(h.stats, c.w, H_BYTES_SPLICED, moved)
            stat_add(h.stats, c.w, H_CX_TX_BYTES, moved)
            stat_add(s.cluster.stats, c.w, C_RX_BYTES, p.body_remaining - left)
            s.bytes_sent += moved
            if moved or left != p.body_remaining:
                s.last_active_ms = c.w.now
            h1_body_skipped(p, p.body_remaining - left)
            if rc < 0:
                if rc == -1:
                    u.remote_close = 1      # the upstream ended or failed
                else:
                    c.peer_gone = 1
                hconn_close(c, True)
                return -1
            if c.rsp_pipe.bytes or p.state != H1_MESSAGE_DONE:
                break
            continue
        if p.state == H1_MESSAGE_DONE:
            if s.resp_chunked and _append_last_chunk(&c.out_buf, &p.trailers) < 0:
                hconn_close(c, True)
                return -1
            stream_finish(s)
            return -1
        # body
        if u.in_buf.length == 0:
            if u.eof:
                if h1_feed_eof(p) == 0:
                    continue
                if s.resp_started:
                    s.response_flags |= RF_UC       # the upstream ended inside the body
                    hconn_close(c, True)
                else:
                    _upconn_failed(u, 503, UPSTREAM_TERMINATION)
                return -1
            break
        r = &u.in_buf.refs[u.in_buf.head]
        n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
        if n < 0:
            s.response_flags |= RF_UPE              # bad body framing from the upstream
            hconn_close(c, True)
            return -1
        if seg:
            stat_add(h.stats, c.w, H_BYTES_COPIED, seg)
            s.bytes_sent += seg
            if p.framing == H1_BODY_LENGTH or (p.framing == H1_BODY_EOF and not s.resp_chunked):
                chain_move_bytes(&c.out_buf, &u.in_buf, <size_t>n)    # off == 0, seg == n
                continue
            if s.resp_chunked:
                if _append_chunk(&c.out_buf, r.s.data + r.off + off, seg) < 0:
                    hconn_close(c, True)
                    return -1
            elif chain_append(&c.out_buf, r.s.data + r.off + off, seg) < 0:
                hconn_close(c, True)            # chunked to an HTTP/1.0 client: data only
                return -1
        chain_drain(&u.in_buf, <size_t>n)
    if u.eof and p.state == H1_HEAD:
        if s.resp_started:
            s.response_flags |= RF_UC
            hconn_close(c, True)
        elif p.head.len:
            # Closed inside a response head: a malformed message (Envoy: protocol error).
            _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
        else:
            _upconn_failed(u, 503, UPSTREAM_TERMINATION)
        return -1
    return 0


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
    cdef H1Head* hd = &s.head
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


cdef ssize_t route_text(RouteTextFn fn, const RouteEntry* e, const RouteInput* r, char* stack,
                        size_t cap, char** text) noexcept nogil:
    """The text fn writes (route_rewrite_path, route_redirect_location), whatever its
    length: in `stack` (cap bytes) when it fits, else in a buffer malloc'd to its size.
    *text is where it is (the caller frees it when it is not `stack`). Returns its length,
    ROUTE_NONE, or ROUTE_NO_ROOM when no buffer could be had: the caller must then refuse
    the request, never go on without the text (a rewrite may confine the path)."""
    cdef size_t need = 0
    cdef ssize_t n = fn(e, r, stack, cap, &need)
    text[0] = stack
    if n != ROUTE_NO_ROOM:
        return n
    text[0] = <char*>malloc(need + 1)
    if text[0] == NULL:
        text[0] = stack
        return ROUTE_NO_ROOM
    n = fn(e, r, text[0], need, NULL)
    if n == ROUTE_NO_ROOM:          # (need is an upper bound: not reached)
        free(text[0])
        text[0] = stack
    return n


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
    if hdrs == NULL:
        hconn_close(c, True)
        return -1
    if s.route == NULL or s.route_cleared or s.fc == NULL:
        s.route = route_select(h.routes, &r)
        s.route_cleared = 0
    e = s.route
    if e == NULL:
        if fp_log_level <= LOG_DEBUG:
            fp_log(c.w.index, "router", c.id, c.nrequests, "no route match for URL '%.*s'", <int>r.path_len, r.path)
        _route_input_free(hdrs, stack)
        stat_add(h.stats, c.w, H_NO_ROUTE, 1)
        s.response_flags |= RF_NR
        stream_local_reply(s, 404, "", 0, NULL, 0, c.req.state != H1_MESSAGE_DONE)
        return -1
    if e.action == ROUTE_DIRECT_RESPONSE or e.action == ROUTE_REDIRECT:
        n = route_text(route_redirect_location, e, &r, loc, sizeof(loc), &text)
        _route_input_free(hdrs, stack)
        if n == ROUTE_NO_ROOM:
            stream_local_reply(s, 503, NO_MEMORY_BODY, strlen(NO_MEMORY_BODY), NULL, 0, True)
            return -1
        stream_local_reply(s, e.status, e.body.p, e.body.n, text if n >= 0 else NULL,
                           <size_t>n if n >= 0 else 0, c.req.state != H1_MESSAGE_DONE)
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
    s.cluster = h.clusters[ci]
    s.cluster_index = ci
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "router", c.id, c.nrequests, "cluster '%s' match for URL '%.*s'%s%.*s",
               h.cluster_names[ci], <int>r.path_len, r.path,
               _pick(path != NULL, ", rewritten to ", ""), <int>path_len,
               _pick(path != NULL, path, ""))
    stream_route_timeout(s)
    s.up = upconn_acquire(s, s.cluster)
    if s.up == NULL:
        free(path)
        _route_input_free(hdrs, stack)
        _count_upstream(s.cluster.stats, c.w, 503)
        if s.response_flags & RF_UO:
            stream_local_reply(s, 503, UPSTREAM_OVERFLOW, strlen(UPSTREAM_OVERFLOW), NULL, 0,
                               c.req.state != H1_MESSAGE_DONE)
        else:
            stream_local_reply(s, 503, NO_HEALTHY_UPSTREAM, strlen(NO_HEALTHY_UPSTREAM), NULL, 0, c.req.state != H1_MESSAGE_DONE)
        return -1
    if s.connect:
        _route_input_free(hdrs, stack)                      # the 200 and the tunnel follow the TCP connect
        return 0
    if s.fc == NULL and c.req.flags & H1F_EXPECT_CONTINUE:
        chain_append(&c.out_buf, "HTTP/1.1 100 Continue\r\n\r\n", 25)
    if path != NULL:
        free(s.rewritten_path)
        s.rewritten_path = path
        s.rewritten_path_len = path_len
    _route_input_free(hdrs, stack)
    if not _dec_body_filtered(s):
        if stream_send_request_head(s, UF_PARSER, 0) < 0:
            return -1
    elif s.fc.dec.phase == FP_PH_DONE:
        if stream_send_request_head(s, UF_LENGTH if c.req.framing != H1_BODY_NONE else UF_NONE, 0) < 0:
            return -1
    if s.req_done and s.timeout_ms:
        timer_arm(c.w, &s.timeout, s.timeout_ms)
    if s.up.state == UC_BUSY:
        s.up.ep.writable = 1            # a pooled connection: try to write at once
    return 0


cdef int stream_send_request_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Serialize the request head into the upstream's out_buf. -1: the stream ended."""
    cdef HConn* c = s.c
    if _upstream_request_head(s, framing, length) < 0:
        upconn_close(s.up)
        s.up = NULL
        stream_local_reply(s, 400, "invalid request after header mutation", 37, NULL, 0, True)
        return -1
    if s.fc != NULL:
        s.fc.dec.sink_started = 1
    return 0


# -- the filter chain's sinks (core/http_filter.pxi calls these)

cdef int hf_sink_headers_decode(HStream* s) noexcept nogil:
    """The request headers passed every decoder filter: route."""
    if s.fc.dec.phase == FP_PH_DONE:
        stream_request_end(s, False)
    return stream_route(s)


cdef int hf_sink_data_decode(HStream* s) noexcept nogil:
    """Filtered request body (and the end) to the upstream, framed."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.dec
    cdef UpConn* u = s.up
    cdef HConn* c = s.c
    if u == NULL:
        return -1
    if s.req_done:
        return 0
    if not d.sink_started and stream_send_request_head(s, _sink_framing(d, &fc.req), d.held.length) < 0:
        return -1
    if _sink_frame(d, &u.out_buf, &fc.req_trailers) < 0:
        hf_fail(s, False)
        return -1
    if d.phase == FP_PH_DONE:
        stream_request_end(s, True)
    if u.state == UC_BUSY and u.out_buf.length:
        u.ep.writable = 1
    return 0


cdef int stream_forward_request_body(HStream* s) noexcept nogil:
    """Move request body bytes from the downstream's in_buf to the upstream's out_buf.
    -1 when the stream ended."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef H1Parser* p = &c.req
    cdef SliceRef* r
    cdef ssize_t n
    cdef size_t off, seg
    cdef UpConn* u = s.up
    cdef uint64_t left, moved
    cdef int rc
    if c.req_pipe.bytes or (p.framing == H1_BODY_LENGTH and c.in_buf.length == 0
                            and u.state == UC_BUSY and u.out_buf.length == 0
                            and p.state != H1_MESSAGE_DONE and splice_pipe_open(c.w, &c.req_pipe)):
        # The rest of a Content-Length body: downstream -> pipe -> upstream.
        left = p.body_remaining if p.state != H1_MESSAGE_DONE else 0
        moved = 0
        rc = splice_move(&c.req_pipe, &c.down, &u.ep, &left, &moved)
        stat_add(h.stats, c.w, H_BYTES_SPLICED, moved)
        stat_add(h.stats, c.w, H_CX_RX_BYTES, p.body_remaining - left)
        stat_add(s.cluster.stats, c.w, C_TX_BYTES, moved)
        if moved or left != p.body_remaining:
            s.last_active_ms = c.w.now
        s.req_body_bytes += p.body_remaining - left
        h1_body_skipped(p, p.body_remaining - left)
        if rc == -1:
            c.peer_gone = 1                 # the client ended or failed (hconn_close counts the reset)
            hconn_close(c, False)
            return -1
        if rc == -2:
            u.remote_close = 1
            _upconn_failed(u, 503, UPSTREAM_TERMINATION)
            return -1
        if p.state == H1_MESSAGE_DONE and c.req_pipe.bytes == 0:
            stream_request_end(s, True)
        return 0
    while not s.req_done and c.in_buf.length and u.out_buf.length < HTTP_IO_LIMIT:
        r = &c.in_buf.refs[c.in_buf.head]
        n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
        if n < 0:
            _request_body_framing_error(s)
            return -1
        s.req_body_bytes += seg
        stat_add(h.stats, c.w, H_BYTES_COPIED, seg)
        if _request_too_large(s, s.req_body_bytes):
            hconn_close(c, True)
            return -1
        if seg:
            if p.framing == H1_BODY_LENGTH:
                chain_move_bytes(&u.out_buf, &c.in_buf, <size_t>n)
            else:
                if _append_chunk(&u.out_buf, r.s.data + r.off + off, seg) < 0:
                    hconn_close(c, True)
                    return -1
                chain_drain(&c.in_buf, <size_t>n)
        else:
            chain_drain(&c.in_buf, <size_t>n)
        if p.state == H1_MESSAGE_DONE:
            if s.req_chunked and _append_last_chunk(&u.out_buf, &p.trailers) < 0:
                hconn_close(c, True)
                return -1
            stream_request_end(s, True)
    if not s.req_done and c.down_eof and c.in_buf.length == 0:
        hconn_close(c, False)           # counts downstream_rq_rx_reset (the stream is active)
        return -1
    return 0


# ---------------------------------------------------------------- downstream connections

cdef void _hconn_idle(Worker* w, void* arg) noexcept nogil:
    cdef HConn* c = <HConn*>arg
    if c.stream == NULL:
        hconn_close(c, False)


cdef void _hconn_headers_timeout(Worker* w, void* arg) noexcept nogil:
    cdef HConn* c = <HConn*>arg
    if c.stream == NULL:
        stat_add((<HttpCfg*>c.cfg.http).stats, w, H_RQ_HEADER_TIMEOUT, 1)    # Envoy's name
        hconn_local_reply(c, 408, "request header timeout", 22, NULL, 0, True)
        hconn_pump(c)


cdef void hconn_start(Worker* w, ListenerCfg* cfg, int fd, const sockaddr* peer) noexcept nogil:
    """A new downstream connection; peer is its address as accept4 returned it."""
    cdef HConn* c = <HConn*>calloc(1, sizeof(HConn))
    cdef HttpCfg* h = <HttpCfg*>cfg.http
    cdef epoll_event ev
    cdef sockaddr_storage ss
    cdef socklen_t sl = sizeof(sockaddr_storage)
    if c == NULL:
        close(fd)
        listener_cx_release(cfg)
        return
    fp_atomic_add_int(&cfg.refcnt, 1)
    c.w = w
    c.cfg = cfg
    c.down.kind = EP_HTTP_DOWN
    c.down.fd = fd
    c.down.owner = c
    h1_init(&c.req, H1_REQUEST, h.max_head, 0, h.max_fields)
    c.req_pipe.r = c.req_pipe.w = -1
    c.rsp_pipe.r = c.rsp_pipe.w = -1
    timer_init(&c.idle_timer, _hconn_idle, c)
    timer_init(&c.headers_timer, _hconn_headers_timeout, c)
    if peer.sa_family == AF_INET6:
        inet_ntop(AF_INET6, &(<const sockaddr_in6*>peer).sin6_addr, c.remote_ip, sizeof(c.remote_ip))
        c.remote_port = ntohs((<const sockaddr_in6*>peer).sin6_port)
        c.remote_loopback = memcmp(&(<const sockaddr_in6*>peer).sin6_addr, b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0
    elif peer.sa_family == AF_INET:
        inet_ntop(AF_INET, &(<const sockaddr_in*>peer).sin_addr, c.remote_ip, sizeof(c.remote_ip))
        c.remote_port = ntohs((<const sockaddr_in*>peer).sin_port)
        c.remote_loopback = (<const uint8_t*>&(<const sockaddr_in*>peer).sin_addr)[0] == 127
    c.remote_ip_len = strlen(c.remote_ip)
    c.id = _next_conn_id(w)
    if fp_log_level <= LOG_DEBUG:
        fp_log(w.index, "conn_handler", c.id, 0, "new connection from %s:%u", c.remote_ip,
               <unsigned int>c.remote_port)
    c.next = w.hconns
    if w.hconns != NULL:
        w.hconns.prev = c
    w.hconns = c
    w.nsessions += 1
    stat_add(cfg.lstats, w, L_CX_TOTAL, 1)
    stat_add(cfg.lstats, w, L_CX_ACTIVE, 1)
    stat_add(h.stats, w, H_CX_TOTAL, 1)
    stat_add(h.stats, w, H_CX_ACTIVE, 1)
    if not cfg.sock.loopback:   # else inherited from the listening socket, as TCP_NODELAY is
        _loopback_tune(fd, peer)
    if h.strip_port == STRIP_PORT_MATCHING:    # the listener's port: one more syscall, only then
        sl = sizeof(sockaddr_storage)
        if getsockname(fd, <sockaddr*>&ss, &sl) == 0:
            c.local_port = ntohs((<sockaddr_in6*>&ss).sin6_port if ss.ss_family == AF_INET6
                                 else (<sockaddr_in*>&ss).sin_port)
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.ptr = &c.down
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        hconn_close(c, False)
        return
    if h.idle_timeout_ms:
        timer_arm(w, &c.idle_timer, h.idle_timeout_ms)
    if h.request_headers_timeout_ms:
        timer_arm(w, &c.headers_timer, h.request_headers_timeout_ms)


cdef void hconn_close(HConn* c, bint rst) noexcept nogil:
    cdef Worker* w = c.w
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef HStream* s = c.stream
    cdef int remote
    if c.closed:
        return
    c.closed = 1
    # Envoy's connection manager: remote when the client ended it (EOF, reset, an I/O
    # error); "active rq" when a stream was open, and then that stream was reset too.
    remote = c.down_eof or c.peer_gone
    if fp_log_level <= LOG_DEBUG:
        fp_log(w.index, "connection", c.id, 0, "closing connection: %s%s",
               _pick(remote, "remote close", _pick(rst, "reset", "local close")),
               _pick(s != NULL, ", resetting its open stream", ""))
    stat_add(h.stats, w, H_CX_DESTROY, 1)
    stat_add(h.stats, w, H_CX_DESTROY_LOCAL + remote, 1)
    if s != NULL or c.partial_rq:
        stat_add(h.stats, w, H_CX_DESTROY_ACTIVE_RQ, 1)
        stat_add(h.stats, w, H_CX_DESTROY_LOCAL_ACTIVE_RQ + remote, 1)
        if s != NULL:
            stat_add(h.stats, w, H_RQ_RX_RESET, 1)
    if c.codec_seen:
        stat_sub(h.stats, w, H_CX_HTTP1_ACTIVE, 1)
    timer_cancel(w, &c.idle_timer)
    timer_cancel(w, &c.headers_timer)
    if s != NULL:
        if not s.logged and not s.tunnel and s.response_flags == 0:
            s.response_flags |= RF_DC    # ended before its response was complete
        stream_log(s)                   # while s.up still holds the response head
        c.stream = NULL
        if s.up != NULL:
            s.up.stream = NULL
            upconn_close(s.up)
        stat_sub(h.stats, w, H_RQ_ACTIVE, 1)
        stream_free(s)
    # After a read that drained the socket (and no event since), nothing is left to drop.
    _close_fd(c.down.fd, rst, c.down_eof or (c.codec_seen and not c.down.readable))
    c.down.fd = -1
    chain_free(&c.in_buf)
    chain_free(&c.out_buf)
    splice_pipe_close(w, &c.req_pipe)
    splice_pipe_close(w, &c.rsp_pipe)
    h1_free(&c.req)
    stat_sub(c.cfg.lstats, w, L_CX_ACTIVE, 1)
    stat_add(c.cfg.lstats, w, L_CX_DESTROY, 1)
    stat_sub(h.stats, w, H_CX_ACTIVE, 1)
    listener_cx_release(c.cfg)
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        w.hconns = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    w.nsessions -= 1
    c.next_deferred = w.hconn_deferred
    w.hconn_deferred = c


cdef void _hconn_linger_end(Worker* w, void* arg) noexcept nogil:
    hconn_close(<HConn*>arg, False)


cdef void _hconn_linger_read(HConn* c) noexcept nogil:
    """Read and drop what the client still sends; close at its EOF or on an error."""
    cdef char scratch[16384]
    cdef ssize_t n
    while True:
        n = read(c.down.fd, scratch, sizeof(scratch))
        if n > 0:
            continue
        if n < 0 and errno == EINTR:
            continue
        if n < 0 and errno == EAGAIN:
            return
        hconn_close(c, False)           # EOF or an error: the client is done either way
        return


cdef void _hconn_finish(HConn* c) noexcept nogil:
    """The connection is to close and everything is flushed. When the client may still be
    sending (its request was not read to the end: a 413 or 400 answered early, say), the
    proxy first shuts its side and reads and drops what comes, until the client's EOF or
    LINGER_MS: closing with unread bytes makes the kernel send an RST, which can reach the
    client before it has read the answer (nginx's lingering close; Envoy's delayed close
    also waits 1 s). The close still counts as the proxy's (local)."""
    cdef bint clean = not c.unread_request and c.in_buf.length == 0 and (
        c.req.state == H1_MESSAGE_DONE or (c.req.state == H1_HEAD and c.req.head.len == 0))
    if clean or c.down_eof or c.peer_gone:
        hconn_close(c, False)
        return
    c.lingering = 1
    chain_clear(&c.in_buf)
    shutdown(c.down.fd, SHUT_WR)
    timer_cancel(c.w, &c.headers_timer)
    timer_cancel(c.w, &c.idle_timer)
    timer_init(&c.idle_timer, _hconn_linger_end, c)
    timer_arm(c.w, &c.idle_timer, LINGER_MS)
    _hconn_linger_read(c)               # edge-triggered: what is already there brings no event


cdef void hconn_on_event(Worker* w, HConn* c, uint32_t events) noexcept nogil:
    if c.closed:
        return
    if c.lingering:
        _hconn_linger_read(c)
        return
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        c.down.readable = 1
    if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        c.down.hup = 1
    if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
        c.down.writable = 1
    hconn_pump(c)


cdef int _hconn_process(HConn* c) noexcept nogil:
    """Parse and route what the downstream sent. -1 when the connection closed."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef SliceRef* r
    cdef ssize_t n
    cdef HStream* s
    while True:
        if c.stream != NULL:
            s = c.stream
            if s.tunnel:
                if _tunnel_pump(s) < 0:
                    return -1
                if s.up.out_buf.length and s.up.ep.writable:
                    upconn_pump(s.up)
                    if c.closed:
                        return -1
                return 0
            if _dec_body_filtered(s):
                if c.req.state != H1_MESSAGE_DONE or (c.down_eof and not s.req_done):
                    if stream_filter_request_body(s) < 0:
                        if c.closed:
                            return -1
                        continue
            elif s.up != NULL and not s.req_done:
                if stream_forward_request_body(s) < 0:
                    if c.closed:
                        return -1
                    continue                # the stream ended with a local reply
            if c.down_eof and c.stream == s and not (s.connect or s.upgrade):
                # The client ended its side with its request in flight. As in Envoy (an HTTP
                # connection is not half-closed), it is gone: the stream is reset (DC) and
                # its upstream connection closed now, not held until an answer nobody reads
                # (a client could otherwise pin upstream connections, closing as it goes).
                # hconn_close counts the reset (downstream_rq_rx_reset).
                hconn_close(c, False)
                return -1
            if c.stream == s and s.up != NULL and s.up.state == UC_BUSY and s.up.out_buf.length \
                    and s.up.ep.writable:
                # A pooled connection has no event coming to start it. Not while the upstream
                # is unwritable: its EPOLLOUT will come, and upconn_pump's own hconn_pump(c)
                # would set c.repump, so the hconn_pump that called us would go round forever
                # without returning to epoll (an upload to an upstream that reads slowly spun
                # the worker and stalled it for good).
                upconn_pump(s.up)
                if c.closed:
                    return -1
            return 0
        if c.close_after:
            return 0
        if c.in_buf.length == 0:
            if c.down_eof:
                if h1_feed_eof(&c.req) < 0:
                    # The client closed inside a request head: Envoy's stream for it ends
                    # "downstream connection termination" (DC), unanswered.
                    hconn_unparsed_request(c, 0, RF_DC)
                    c.partial_rq = 1        # Envoy's stream was active when the connection closed
                hconn_close(c, False)
                return -1
            return 0
        if c.req.state == H1_HEAD and c.req.head.len == 0:
            c.req_start_ms = c.w.now            # a new request begins
            c.req_start_us = wall_clock_us()
        r = &c.in_buf.refs[c.in_buf.head]
        n = h1_feed_head(&c.req, r.s.data + r.off, r.len)
        if n < 0:
            stat_add(h.stats, c.w, H_CX_PROTOCOL_ERROR, 1)
            hconn_unparsed_request(c, c.req.err_status, RF_DPE)
            chain_clear(&c.in_buf)
            return 0
        chain_drain(&c.in_buf, <size_t>n)
        if c.req.state == H1_HEAD_DONE:
            if h.underscores != US_ALLOW and hconn_underscores(c, h) < 0:
                # Envoy's codec refuses the request (a protocol error, like the codec's own)
                stat_add(h.stats, c.w, H_CX_PROTOCOL_ERROR, 1)
                hconn_unparsed_request(c, 400, RF_DPE)
                chain_clear(&c.in_buf)
                return 0
            stream_start(c)
            if c.closed:
                return -1


cdef void hconn_unparsed_request(HConn* c, int status, uint32_t flags) noexcept nogil:
    """A request that never became a stream: the codec rejected its head (status: the
    answer), or the client closed inside it (status 0: no answer). As in Envoy, it is a
    request all the same: counted (downstream_rq_total, downstream_rq_rx_reset, the status
    class), timed (downstream_rq_time) and access-logged with the response flag, and
    without request headers (%REQ(...)% prints "-"; the protocol is HTTP/1.1). The stream
    lives on the stack for that long; nothing is allocated."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef HStream s
    memset(&s, 0, sizeof(HStream))
    s.c = c
    s.start_ms = c.req_start_ms if c.req_start_ms else c.w.now
    s.start_time_us = c.req_start_us if c.req_start_us else wall_clock_us()
    s.cluster_index = -1
    s.minor = 1
    s.response_flags = flags
    memcpy(s.client_ip, c.remote_ip, c.remote_ip_len + 1)
    s.client_ip_len = c.remote_ip_len
    s.client_port = c.remote_port
    stat_add(h.stats, c.w, H_RQ_TOTAL, 1)
    stat_add(h.stats, c.w, H_RQ_HTTP1_TOTAL, 1)
    stat_add(h.stats, c.w, H_RQ_RX_RESET, 1)
    if status:
        c.stream = &s                   # the reply's status and bytes go to this stream
        if c.req.err == H1E_MISSING_HOST:
            hconn_local_reply(c, status, "", 0, NULL, 0, True)     # Envoy: an empty body
        else:
            hconn_local_reply(c, status, _status_reason(status), strlen(_status_reason(status)),
                              NULL, 0, True)
        c.stream = NULL
    stream_log(&s)
    c.req_start_ms = 0
    c.req_start_us = 0


cdef void hconn_pump(HConn* c) noexcept nogil:
    cdef ssize_t n
    cdef bint progress
    cdef HStream* s
    cdef size_t asked = 0
    cdef uint64_t sent
    cdef size_t out_len, pipe_bytes
    cdef uint8_t repump
    if c.closed or c.lingering:         # a lingering connection only drops input (_hconn_finish)
        return
    if c.in_pump:
        c.repump = 1
        return
    c.in_pump = 1
    while True:
        c.repump = 0
        progress = False
        if c.out_buf.length and c.down.writable:
            # A connection to close closes as soon as out_buf is out (below): with MSG_MORE
            # its FIN leaves in the same segment as the last bytes.
            n = chain_write_fd(&c.out_buf, c.down.fd, NULL, c.close_after and c.stream == NULL)
            if n > 0:
                progress = True
                stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_CX_TX_BYTES, <uint64_t>n)
                stream_touch(c)
            elif n < 0 and errno == EAGAIN:
                c.down.writable = 0
            elif n < 0 and errno != EINTR:
                c.in_pump = 0
                c.peer_gone = 1
                hconn_close(c, True)
                return
        s = c.stream
        if c.down.readable and not c.down_eof and c.in_buf.length < HTTP_IO_LIMIT \
                and (s == NULL or s.up == NULL or s.up.out_buf.length < HTTP_IO_LIMIT) \
                and not (s != NULL and s.up != NULL and not s.req_done and not _dec_body_filtered(s) and (c.req_pipe.bytes
                         or (c.req.framing == H1_BODY_LENGTH and c.in_buf.length == 0
                             and s.up.state == UC_BUSY and c.req.state != H1_MESSAGE_DONE))):
            n = chain_read_fd(&c.in_buf, c.down.fd, HTTP_IO_LIMIT - c.in_buf.length, &asked)
            if n > 0:
                if not c.codec_seen:
                    # Envoy creates the HTTP/1 codec with the first bytes read (a client
                    # that closes without sending any is not an HTTP/1 connection).
                    c.codec_seen = 1
                    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_CX_HTTP1_TOTAL, 1)
                    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_CX_HTTP1_ACTIVE, 1)
                progress = True
                stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_CX_RX_BYTES, <uint64_t>n)
                stream_touch(c)
                if <size_t>n < asked and not c.down.hup:
                    c.down.readable = 0     # drained (see upconn_pump)
            elif n == 0:
                c.down_eof = 1
                progress = True
            elif errno == EAGAIN:
                c.down.readable = 0
            elif errno != EINTR:
                c.in_pump = 0
                c.peer_gone = 1
                hconn_close(c, True)
                return
        if _hconn_process(c) < 0:
            c.in_pump = 0
            return
        if c.stream != NULL and c.stream.up != NULL and c.stream.up.state == UC_BUSY \
                and (c.stream.up.in_buf.length or c.rsp_pipe.bytes or c.stream.up.ep.readable) \
                and c.out_buf.length < HTTP_IO_LIMIT \
                and not (c.stream.fc != NULL and c.stream.fc.enc.stopped == FS_HELD):
            # (While an encoder filter holds the response, its continue restarts this.)
            # The upstream paused on our full out_buf; let it continue now. in_pump stays
            # set, so upconn_pump's own hconn_pump(c) does not nest (one nested pump per
            # splice round overflowed the stack on a 1 GiB download whose client kept
            # up); this loop goes round again only if that moved something.
            s = c.stream
            sent = s.bytes_sent
            out_len = c.out_buf.length
            pipe_bytes = c.rsp_pipe.bytes
            repump = c.repump
            upconn_pump(s.up)
            if c.closed:
                c.in_pump = 0
                return
            c.repump = repump
            if c.stream != s or s.bytes_sent != sent or c.out_buf.length != out_len \
                    or c.rsp_pipe.bytes != pipe_bytes:
                progress = True
        if c.stream != NULL and c.stream.tunnel and c.stream.tunnel_up_eof and c.out_buf.length == 0:
            c.in_pump = 0
            hconn_close(c, False)
            return
        if c.close_after and c.stream == NULL and c.out_buf.length == 0:
            c.in_pump = 0
            _hconn_finish(c)
            return
        if not progress and not c.repump:
            break
    c.in_pump = 0


cdef void http_drain_listener(Worker* w, ListenSock* sock) noexcept nogil:
    """The listener is going away: idle keep-alive connections close now, busy ones
    finish their current response with Connection: close."""
    cdef HConn* c = w.hconns
    cdef HConn* nxt
    while c != NULL:
        nxt = c.next
        if c.cfg.sock == sock:
            if c.stream == NULL and c.out_buf.length == 0:
                hconn_close(c, False)
            else:
                c.close_after = 1
                if c.stream != NULL and not c.stream.resp_started:
                    c.stream.keepalive = 0
        c = nxt


cdef void http_serve_waiting(Worker* w) noexcept nogil:
    """Requests waiting for a connection (max_connections) of the clusters kicked this
    turn: each takes an idle connection to its host, or connects once the cluster is under
    max_connections again (or this worker has no connection to the host left). Runs at the
    end of the loop turn, outside any pump."""
    cdef WorkerLb* lb
    cdef ClusterCfg* cl
    cdef UpConn* u
    cdef UpConn* nxt
    cdef UpConn* p
    cdef UpConn** head
    cdef HStream* s
    cdef Host* host
    while w.kicked != NULL:
        lb = <WorkerLb*>w.kicked
        w.kicked = lb.kick_next
        lb.kick_next = NULL
        lb.kicked = 0
        cl = lb.cluster
        u = <UpConn*>lb.wait_head
        while u != NULL:
            if not u.queued:
                break       # serving the one before ended it (memory is freed after this)
            nxt = u.wait_next
            s = u.stream
            if s == NULL:
                upconn_close(u)
                u = nxt
                continue
            if u.hosts != lb.hosts:
                # The host set changed (DNS) while it waited: pick again from the new one.
                host = cluster_pick(cl, w, 0)
                if host == NULL:
                    _wait_unlink(u)
                    stat_add(cl.stats, w, C_NONE_HEALTHY, 1)
                    _upconn_failed(u, 503, NO_HEALTHY_UPSTREAM)
                    u = nxt
                    continue
                u.hosts = lb.hosts
                u.host_index = <int>(host - lb.hosts.hosts)
                memcpy(&s.upstream_addr, &host.addr, host.addrlen)
                s.upstream_addrlen = host.addrlen
            host = &lb.hosts.hosts[u.host_index]
            head = _pool_list(cl, w, u.host_index)
            if head != NULL and head[0] != NULL and not s.connect:     # (a tunnel gets its own)
                # An idle connection to its host: the request (already serialized into u's
                # out_buf, never sent) moves to it; u, which never had a socket, ends.
                _wait_unlink(u)
                p = _pool_pop(head)
                _upconn_bind(p, s)
                if chain_move(&p.out_buf, &u.out_buf) < 0:
                    p.stream = NULL
                    upconn_close(p)
                    _upconn_failed(u, 503, UPSTREAM_OVERFLOW)
                    u = nxt
                    continue
                u.stream = NULL
                s.up = p
                upconn_close(u)
                if not _upconn_attach(p):
                    _upconn_overflowed(p)       # max_requests: p goes back to the pool
                else:
                    p.ep.writable = 1
                    upconn_pump(p)
            elif not cb_full(&cl.n_cx, cl.max_cx) or lb.pool_conns == NULL \
                    or u.host_index >= lb.pool_n or lb.pool_conns[u.host_index] == 0:
                _wait_unlink(u)
                if _upconn_connect(u, host) < 0:
                    _upconn_failed(u, 503, UPSTREAM_CONNECT_FAILURE)
            u = nxt
        cluster_decref(cl)


cdef void http_free_deferred(Worker* w) noexcept nogil:
    cdef HConn* c
    cdef UpConn* u
    http_serve_waiting(w)
    while w.hconn_deferred != NULL:
        c = w.hconn_deferred
        w.hconn_deferred = c.next_deferred
        listener_cfg_decref(c.cfg)
        free(c)
    while w.upconn_deferred != NULL:
        u = w.upconn_deferred
        w.upconn_deferred = u.next_deferred
        cluster_decref(u.cluster)
        free(u)


cdef void http_worker_teardown(Worker* w) noexcept nogil:
    while w.hconns != NULL:
        hconn_close(w.hconns, False)
    while w.upconns != NULL:
        upconn_close(w.upconns)
    http_free_deferred(w)


cdef void http_cfg_decref(HttpCfg* h) noexcept nogil:
    cdef int i
    if h == NULL or fp_atomic_add_int(&h.refcnt, -1) != 0:
        return
    route_table_decref(h.routes)
    http_cfg_free_filters(h)
    for i in range(h.nclusters):
        cluster_decref(h.clusters[i])
        if h.cluster_names != NULL:
            free(h.cluster_names[i])
    free(h.clusters)
    free(h.cluster_names)
    alog_sinks_free(h.logs, h.nlogs)
    free(h.server_name)
    free(h.via)
    free(h.default_host_10)
    free(h.internal_cidrs)
    free(h)


cdef class HttpCfgHandle:
    """The main thread's reference to an HTTP connection manager config."""
    cdef HttpCfg* h
    cdef object routes_handle

    def __dealloc__(self):
        http_cfg_decref(self.h)


cdef int _compile_internal_addresses(HttpCfg* h, iac) except -1:
    """internal_address_config -> h.internal_mode (and h.internal_cidrs)."""
    import ipaddress
    from fastproxy.model_http import parse_cidr
    cdef InternalCidr* r
    cdef int i
    if iac is None:
        h.internal_mode = IA_NONE
        return 0
    if not iac.cidr_ranges:
        h.internal_mode = IA_DEFAULT
        return 0
    h.internal_cidrs = <InternalCidr*>calloc(len(iac.cidr_ranges), sizeof(InternalCidr))
    if h.internal_cidrs == NULL:
        raise MemoryError()
    h.internal_mode = IA_CIDRS
    for i, text in enumerate(iac.cidr_ranges):
        net = parse_cidr(text, f"internal_address_config.cidr_ranges[{i}]")
        r = &h.internal_cidrs[i]
        r.v6 = net.version == 6
        r.plen = net.prefixlen
        packed = net.network_address.packed
        memcpy(r.addr, <char*>packed, len(packed))
        h.ninternal = i + 1
    return 0


def make_http_cfg(hcm, StatBlockHandle stats, dict clusters, int nworkers, StatBlockHandle http1_stats=None):
    """Compile a model_http.HttpConnectionManager; clusters: {name: ClusterHandle}."""
    cdef HttpCfgHandle hh = HttpCfgHandle.__new__(HttpCfgHandle)
    cdef _FilterCompiler fcomp
    cdef HttpCfg* h = <HttpCfg*>calloc(1, sizeof(HttpCfg))
    cdef RouteTableHandle rt
    cdef ClusterHandle ch
    cdef bytes server
    cdef int i
    if h == NULL:
        raise MemoryError()
    h.refcnt = 1
    hh.h = h
    names = sorted(clusters)
    index = {name: i for i, name in enumerate(names)}
    h.filter_buffer_limit = FILTER_BUFFER_LIMIT_DEFAULT
    fcomp = _FilterCompiler.__new__(_FilterCompiler)
    fcomp.h = h
    fcomp.specs = list(getattr(hcm, "http_filters", None) or [])
    fcomp.keep = []
    fcomp.regex_copies = nworkers
    fcomp.compile("http_connection_manager")
    rt = compile_route_table(hcm.route_config, index, nworkers,
                             per_filter=fcomp.route_configs if fcomp.specs else None)
    if fcomp.keep:
        Py_INCREF(fcomp.keep)
        h.py_keep = <PyObject*>fcomp.keep
    hh.routes_handle = rt
    h.routes = rt.t
    route_table_incref(rt.t)
    h.nclusters = len(names)
    h.clusters = <ClusterCfg**>calloc(max(1, h.nclusters), sizeof(ClusterCfg*))
    h.cluster_names = <char**>calloc(max(1, h.nclusters), sizeof(char*))
    if h.clusters == NULL or h.cluster_names == NULL:
        raise MemoryError()
    for i, name in enumerate(names):
        ch = clusters[name]
        h.clusters[i] = ch.c
        fp_atomic_add_int(&ch.c.refcnt, 1)
        h.cluster_names[i] = _al_dup(name.encode())
        if h.cluster_names[i] == NULL:
            raise MemoryError()
    h.stats = stats.b
    ms = lambda v: 0 if not v else max(1, int(v * 1000))
    h.idle_timeout_ms = ms(hcm.idle_timeout)
    h.request_headers_timeout_ms = ms(hcm.request_headers_timeout)
    h.stream_idle_timeout_ms = ms(hcm.stream_idle_timeout)
    h.request_timeout_ms = ms(hcm.request_timeout)
    h.allow_websocket = any(u.enabled and u.upgrade_type.lower() == "websocket"
                            for u in getattr(hcm, "upgrade_configs", ()))
    h.allow_connect = any(u.enabled and u.upgrade_type.lower() == "connect"
                          for u in getattr(hcm, "upgrade_configs", ()))
    alog_compile(h, hcm)
    h.max_requests_per_connection = hcm.max_requests_per_connection or 0
    h.max_head = hcm.max_request_headers_kb * 1024
    h.max_fields = hcm.max_headers_count
    h.max_request_bytes = hcm.max_request_bytes or 0
    h.use_remote_address = hcm.use_remote_address
    h.generate_request_id = hcm.generate_request_id
    h.suppress_envoy_headers = bool(getattr(hcm, "suppress_envoy_headers", False))
    h.xff_num_trusted_hops = hcm.xff_num_trusted_hops
    _compile_internal_addresses(h, getattr(hcm, "internal_address_config", None))
    h.local_ip_len = _envoy_local_address(h.local_ip, sizeof(h.local_ip))
    server = (hcm.server_name or "").encode()
    h.server_name = <char*>malloc(len(server) + 1)
    if h.server_name == NULL:
        raise MemoryError()
    memcpy(h.server_name, <char*>server, len(server) + 1)
    h.server_name_len = len(server)
    h.server_mode = {"OVERWRITE": SERVER_OVERWRITE, "APPEND_IF_ABSENT": SERVER_APPEND_IF_ABSENT,
                     "PASS_THROUGH": SERVER_PASS_THROUGH}[getattr(hcm, "server_header_transformation", "OVERWRITE")]
    h.accept_http_10 = hcm.accept_http_10
    via = (getattr(hcm, "via", "") or "").encode()
    if via:
        h.via = <char*>malloc(len(via))
        if h.via == NULL:
            raise MemoryError()
        memcpy(h.via, <char*>via, len(via))
        h.via_len = len(via)
    h.skip_xff_append = getattr(hcm, "skip_xff_append", False)
    h.preserve_external_request_id = getattr(hcm, "preserve_external_request_id", False)
    h.always_set_request_id = getattr(hcm, "always_set_request_id_in_response", False)
    h.normalize_path = getattr(hcm, "normalize_path", False)
    h.merge_slashes = getattr(hcm, "merge_slashes", False)
    h.escaped_slashes = {"KEEP_UNCHANGED": ES_KEEP, "REJECT_REQUEST": ES_REJECT,
                         "UNESCAPE_AND_REDIRECT": ES_REDIRECT, "UNESCAPE_AND_FORWARD": ES_FORWARD}[
        getattr(hcm, "path_with_escaped_slashes_action", "KEEP_UNCHANGED")]
    h.strip_port = {"NONE": STRIP_PORT_NONE, "MATCHING": STRIP_PORT_MATCHING, "ANY": STRIP_PORT_ANY}[
        getattr(hcm, "strip_host_port", "NONE")]
    h.underscores = {"ALLOW": US_ALLOW, "REJECT_REQUEST": US_REJECT, "DROP_HEADER": US_DROP}[
        getattr(hcm, "headers_with_underscores_action", "ALLOW")]
    if http1_stats is not None:
        h.http1_stats = http1_stats.b
    elif h.underscores != US_ALLOW:
        raise ValueError("headers_with_underscores_action needs the http1.* stat block")
    host10 = (hcm.default_host_for_http_10 or "").encode()
    if host10:
        h.default_host_10 = <char*>malloc(len(host10))
        if h.default_host_10 == NULL:
            raise MemoryError()
        memcpy(h.default_host_10, <char*>host10, len(host10))
        h.default_host_10_len = len(host10)
    return hh
