# Per-stream mechanisms of the HTTP connection manager that sit beside the request/response
# path of core/http_conn.pxi: the stream idle and request timeouts, the trusted client
# address (use_remote_address / xff_num_trusted_hops), and CONNECT tunnels.

cdef inline uint64_t wall_clock_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>ts.tv_nsec // 1000


# ---------------------------------------------------------------- timeouts

cdef void stream_timers_start(HStream* s) noexcept nogil:
    """Arm stream_idle_timeout and request_timeout for a new stream."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    s.last_active_ms = c.w.now
    timer_init(&s.idle_timer, _stream_idle_fired, s)
    timer_init(&s.request_timer, _stream_request_timeout_fired, s)
    if h.stream_idle_timeout_ms:
        timer_arm(c.w, &s.idle_timer, h.stream_idle_timeout_ms)
    if h.request_timeout_ms and not s.req_done:
        timer_arm(c.w, &s.request_timer, h.request_timeout_ms)


cdef void stream_timers_stop(HStream* s) noexcept nogil:
    timer_cancel(s.c.w, &s.idle_timer)
    timer_cancel(s.c.w, &s.request_timer)


cdef inline void stream_touch(HConn* c) noexcept nogil:
    """Bytes moved for the connection's stream (either direction): it is not idle."""
    if c.stream != NULL:
        c.stream.last_active_ms = c.w.now


cdef void _stream_end_locally(HStream* s, int status, const char* body) noexcept nogil:
    """Answer the stream from the proxy (the response has not started), dropping its
    upstream connection, or reset the downstream if the response is under way."""
    cdef HConn* c = s.c
    if s.up != NULL:
        upconn_close(s.up)
        s.up = NULL
    if s.resp_started:
        hconn_close(c, True)
        return
    stream_local_reply(s, status, body, strlen(body), NULL, 0, not s.req_done)
    hconn_pump(c)


cdef void _stream_idle_fired(Worker* w, void* arg) noexcept nogil:
    """stream_idle_timeout: nothing moved either way for that long. As Envoy: 408 while the
    request is still arriving, 504 once it is complete (both "stream timeout"), a reset once
    the response has started."""
    cdef HStream* s = <HStream*>arg
    cdef HttpCfg* h = <HttpCfg*>s.c.cfg.http
    cdef uint64_t idle = w.now - s.last_active_ms
    if idle < h.stream_idle_timeout_ms:
        timer_arm(w, &s.idle_timer, h.stream_idle_timeout_ms - idle)     # lazy re-arm
        return
    stat_add(h.stats, w, H_RQ_IDLE_TIMEOUT, 1)
    s.response_flags |= RF_SI
    _stream_end_locally(s, 504 if s.req_done else 408, "stream timeout")


cdef void _stream_request_timeout_fired(Worker* w, void* arg) noexcept nogil:
    """request_timeout: the whole request was not received in time: 408."""
    cdef HStream* s = <HStream*>arg
    if s.req_done:
        return
    stat_add((<HttpCfg*>s.c.cfg.http).stats, w, H_RQ_TIMEOUT, 1)
    _stream_end_locally(s, 408, "request timeout")


# ---------------------------------------------------------------- trusted client address

cdef bint _ip_is_internal(const char* ip) noexcept nogil:
    """Envoy's default internal addresses: RFC 1918, loopback, IPv6 ULA (fd00::/8), ::1."""
    cdef uint8_t a[16]
    if inet_pton(AF_INET, ip, a) == 1:
        return (a[0] == 10 or a[0] == 127 or (a[0] == 172 and (a[1] & 0xf0) == 16)
                or (a[0] == 192 and a[1] == 168))
    if inet_pton(AF_INET6, ip, a) == 1:
        if a[0] == 0xfd:
            return True
        for i in range(15):
            if a[i]:
                return False
        return a[15] == 1
    return False


cdef bint _xff_from_right(const char* v, size_t n, uint32_t k, char* out, size_t cap) noexcept nogil:
    """The k-th (1 = rightmost) element of an x-forwarded-for list, if it is an IP address."""
    cdef size_t end = n, start
    cdef uint32_t seen = 0
    cdef uint8_t a[16]
    while True:
        start = end
        while start > 0 and v[start - 1] != 44:         # ','
            start -= 1
        seen += 1
        if seen == k:
            while start < end and (v[start] == 32 or v[start] == 9):
                start += 1
            while end > start and (v[end - 1] == 32 or v[end - 1] == 9):
                end -= 1
            if end - start == 0 or end - start >= cap:
                return False
            memcpy(out, v + start, end - start)
            out[end - start] = 0
            return inet_pton(AF_INET, out, a) == 1 or inet_pton(AF_INET6, out, a) == 1
        if start == 0:
            return False
        end = start - 1


cdef void stream_client_address(HStream* s) noexcept nogil:
    """Envoy's trusted client address (what %DOWNSTREAM_REMOTE_ADDRESS% prints and
    x-envoy-external-address carries). With use_remote_address: the connection's peer, or,
    with xff_num_trusted_hops = N > 0, the N-th address from the right of the received
    x-forwarded-for. Without it: the (N+1)-th from the right of x-forwarded-for. Either way
    the peer when x-forwarded-for has too few (valid) entries."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const char* v
    cdef size_t n = 0
    cdef uint32_t k = h.xff_num_trusted_hops if h.use_remote_address else h.xff_num_trusted_hops + 1
    memcpy(s.client_ip, c.remote_ip, c.remote_ip_len + 1)
    s.client_ip_len = c.remote_ip_len
    s.client_port = c.remote_port
    if k:
        v = _head_field(&s.head, "x-forwarded-for", &n)
        if v != NULL and _xff_from_right(v, n, k, s.client_ip, sizeof(s.client_ip)):
            s.client_ip_len = strlen(s.client_ip)
            s.client_port = 0
        else:
            memcpy(s.client_ip, c.remote_ip, c.remote_ip_len + 1)
    s.client_internal = _ip_is_internal(s.client_ip)


# ---------------------------------------------------------------- CONNECT

cdef int stream_connect_established(HStream* s) noexcept nogil:
    """The upstream TCP connection of a CONNECT stream is up: answer 200 and turn both
    connections into a byte tunnel (the WebSocket tunnel machinery). -1 on failure."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef UpConn* u = s.up
    cdef PairList l
    memset(&l, 0, sizeof(PairList))
    if h.server_name_len:
        _pl_add(&l, _cs("server"), _s(h.server_name, h.server_name_len))
    if _append_head(&c.out_buf, &l, False, _s(NULL, 0), _s(NULL, 0), 200, _cs("OK")) < 0:
        free(l.v)
        return -1
    free(l.v)
    s.status = 200
    s.resp_started = 1
    s.resp_from_upstream = 0
    s.response_start_ms = c.w.now
    s.tunnel = 1
    stat_add(s.cluster.stats, c.w, C_RQ_TOTAL, 1)
    _count_status(s.cluster.stats, c.w, C_RQ_1XX, 200)
    _count_status(h.stats, c.w, H_RQ_1XX, 200)
    if c.in_buf.length:
        s.req_body_bytes += c.in_buf.length
        chain_move(&u.out_buf, &c.in_buf)       # bytes the client sent before our 200
    return 0
