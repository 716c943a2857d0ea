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
