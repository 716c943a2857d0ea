# The HTTP connection manager (Envoy's http_connection_manager): the downstream connection
# (HConn): its start, socket events, the loop that has the codec decode pipelined requests
# into streams, idle/headers timeouts, close and lingering close, draining, and the
# per-worker hooks (waiting requests, deferred frees, teardown). It knows the protocol only
# through c.codec (ServerCodecApi, core/http/decls.pxi) and the events the codec calls
# (cm_on_*, below and in active_stream.pxi); docs/architecture.md, "The codec seam".
# The rest of the HTTP data path:
#   core/http/codec_h1_server.pxi  the HTTP/1.1 server codec (bytes <-> stream events)
#   core/http/active_stream.pxi    one request/response exchange (HStream)
#   core/http/router_filter.pxi    routing, the upstream request, the response events
#   core/upstream/http_pool.pxi    the upstream connections (UpConn) and their pool
#
#   downstream HConn --(one HStream at a time; pipelined requests wait in in_buf)--
#        request:  codec: head event -> route -> upstream request head -> body events
#                  (moved slice by slice, no copy; or spliced) -> the upstream's codec
#        response: the upstream's codec: head event -> downstream head -> body events
#                  -> this connection's codec -> HConn.out_buf
#
# Nothing is ever forwarded for a request the codec rejects: the head is complete and valid
# before routing begins, and a body framing error resets the stream. Bodies are re-framed
# by the codec of the side they leave on.
#
# Re-entrancy: work that finishes a stream may want to parse the next pipelined request;
# hconn_pump() is the only loop that does so, and a nested call only marks `repump`.


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
           _pick(s.req_received, "true", "false"),
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


# ---------------------------------------------------------------- downstream connections

cdef void _hconn_idle(Worker* w, void* arg) noexcept nogil:
    cdef HConn* c = <HConn*>arg
    if c.nstreams == 0:
        if c.codec.drain != NULL and c.codec_seen:
            c.codec.drain(c)            # HTTP/2: GOAWAY, then the close (codec_h2_server.pxi)
            hconn_pump(c)
            return
        hconn_close(c, False)


cdef void _hconn_headers_timeout(Worker* w, void* arg) noexcept nogil:
    cdef HConn* c = <HConn*>arg
    if c.nstreams == 0 and not c.codec.multiplexed:
        stat_add((<HttpCfg*>c.cfg.http).stats, w, H_RQ_HEADER_TIMEOUT, 1)    # Envoy's name
        hconn_local_reply(c, NULL, 408, "request header timeout", 22, NULL, 0, True)
        hconn_pump(c)


# ---------------------------------------------------------------- the connection's streams

cdef inline void hconn_link_stream(HConn* c, HStream* s) noexcept nogil:
    s.conn_prev = NULL
    s.conn_next = c.streams
    if c.streams != NULL:
        c.streams.conn_prev = s
    c.streams = s
    c.nstreams += 1


cdef inline void hconn_unlink_stream(HConn* c, HStream* s) noexcept nogil:
    if s.conn_prev != NULL:
        s.conn_prev.conn_next = s.conn_next
    elif c.streams == s:
        c.streams = s.conn_next
    else:
        return                          # not linked (never started, or already unlinked)
    if s.conn_next != NULL:
        s.conn_next.conn_prev = s.conn_prev
    s.conn_next = s.conn_prev = NULL
    c.nstreams -= 1


cdef void _stream_abort(HStream* s, uint32_t flag) noexcept nogil:
    """s ends before its response completed (a reset either way, or its connection's
    close): logged with `flag` (DC, DR) unless it has a response flag already, its upstream
    request abandoned, freed. The codec has forgotten it already."""
    cdef HConn* c = s.c
    if not s.logged and not s.tunnel and s.response_flags == 0:
        s.response_flags |= flag
    stream_log(s)                       # while s.upstream.conn still holds the response head
    if s.upstream.conn != NULL:
        s.upstream.conn.stream = NULL
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
    stat_sub((<HttpCfg*>c.cfg.http).stats, c.w, H_RQ_ACTIVE, 1)
    stream_free(s)


cdef void stream_reset(HStream* s) noexcept nogil:
    """The proxy abandons s (its response cannot be completed: an upstream reset after the
    head, a filter's failure, no memory). HTTP/1: the connection closes, the only signal
    left; a multiplexed codec resets the stream alone (HTTP/2: RST_STREAM) and the
    connection's other streams go on."""
    cdef HConn* c = s.c
    if not c.codec.multiplexed:
        hconn_close(c, True)
        return
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "http", c.id, c.nrequests, "stream reset by the proxy")
    c.codec.stream_reset(c, s, False)
    _stream_abort(s, RF_DC if not s.resp_started else 0)
    hconn_stream_gone(c)


cdef void cm_on_stream_reset(HStream* s, bint remote) noexcept nogil:
    """The codec's event: the peer reset s (HTTP/2 RST_STREAM; remote), or the codec did
    (a protocol error on that stream). Its upstream request is cancelled and it is logged
    (DR: downstream remote reset). The connection may close (hconn_premature_resets)."""
    cdef HConn* c = s.c
    cdef bint premature = remote and c.w.now - s.start_ms < PREMATURE_RESET_MS
    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_RQ_RX_RESET, 1)
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "http", c.id, c.nrequests, "stream reset by the %s",
               _pick(remote, "client", "codec"))
    _stream_abort(s, RF_DR if remote else RF_DPE)
    if not hconn_premature_resets(c, premature):
        hconn_stream_gone(c)


cdef void cm_on_early_reset(HConn* c) noexcept nogil:
    """The codec's event: the client reset a request before its head was handed over (in
    the same read): no stream was made, but it is a request reset, and a premature one."""
    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_RQ_RX_RESET, 1)
    hconn_premature_resets(c, True)


cdef bint hconn_premature_resets(HConn* c, bint premature) noexcept nogil:
    """A stream ended (premature: the client reset it within PREMATURE_RESET_MS of its
    start). Envoy's defence against the rapid reset attack: once half of the streams (of at
    least 500, or of 500 to come) were reset prematurely, the connection is aborted
    (downstream_rq_too_many_premature_resets). True when it was."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    c.streams_closed += 1
    if not premature:
        return False                    # (only a premature reset can newly pass the bar)
    c.premature_resets += 1
    if c.streams_closed < PREMATURE_RESET_STREAMS:
        if <uint64_t>c.premature_resets * 2 < PREMATURE_RESET_STREAMS:
            return False
    elif <uint64_t>c.premature_resets * 2 < c.streams_closed:
        return False
    stat_add(h.stats, c.w, H_RQ_TOO_MANY_PREMATURE_RESETS, 1)
    stat_add(h.stats, c.w, H_CX_PROTOCOL_ERROR, 1)
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "http", c.id, 0, "too many premature resets: closing")
    hconn_close(c, True)
    return True


cdef void hconn_stream_gone(HConn* c) noexcept nogil:
    """A stream ended: with none left, the connection's idle timeout runs."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    if c.nstreams == 0 and not c.closed and h.idle_timeout_ms:
        timer_arm(c.w, &c.idle_timer, h.idle_timeout_ms)


cdef void _hconn_drain_end(void* owner) noexcept nogil:
    """Its listener version's drain time is over (snapshot.pxi): closed, idle or busy, so
    that no client stays on a retired configuration past the drain time."""
    hconn_close(<HConn*>owner, False)


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
    c.down.on_event = _hconn_endp_event
    c.down.fd = fd
    c.down.owner = c
    c.codec = hconn_pick_codec(c, h)    # codec_type; AUTO settles on the first bytes (codec_h2_server.pxi)
    c.codec.start(c)
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
    c.next = http_worker(w).hconns
    if http_worker(w).hconns != NULL:
        http_worker(w).hconns.prev = c
    http_worker(w).hconns = c
    listener_conn_add(w, cfg, &c.cfg_link, c, _hconn_drain_end)
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
    if cfg.tls != NULL:
        # TLS: the handshake runs through the first reads and writes (the client speaks
        # first); transport_socket_connect_timeout bounds it.
        c.down.tls = tls_conn_new(w, cfg.tls, fd)
        if c.down.tls == NULL:
            hconn_close(c, True)
            return
        if cfg.tls_timeout_ms:
            if tls_conn_arm_timeout(<TlsConn*>c.down.tls, cfg.tls_timeout_ms, _hconn_tls_timeout, c) < 0:
                hconn_close(c, True)
                return
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.ptr = &c.down
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        hconn_close(c, False)
        return
    if h.idle_timeout_ms:
        timer_arm(w, &c.idle_timer, h.idle_timeout_ms)
    if h.request_headers_timeout_ms:
        timer_arm(w, &c.headers_timer, h.request_headers_timeout_ms)


cdef void _hconn_tls_timeout(void* owner) noexcept nogil:
    hconn_close(<HConn*>owner, False)


cdef void hconn_close(HConn* c, bint rst) noexcept nogil:
    cdef Worker* w = c.w
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef int remote
    if c.closed:
        return
    c.closed = 1
    # Envoy's connection manager: remote when the client ended it (EOF, reset, an I/O
    # error); "active rq" when a stream was open, and then every open stream was reset too.
    remote = c.down_eof or c.peer_gone
    if fp_log_level <= LOG_DEBUG:
        fp_log(w.index, "connection", c.id, 0, "closing connection: %s%s",
               _pick(remote, "remote close", _pick(rst, "reset", "local close")),
               _pick(c.nstreams != 0, ", resetting its open streams", ""))
    stat_add(h.stats, w, H_CX_DESTROY, 1)
    stat_add(h.stats, w, H_CX_DESTROY_LOCAL + remote, 1)
    if c.nstreams != 0 or c.partial_rq:
        stat_add(h.stats, w, H_CX_DESTROY_ACTIVE_RQ, 1)
        stat_add(h.stats, w, H_CX_DESTROY_LOCAL_ACTIVE_RQ + remote, 1)
    if c.codec_seen:
        stat_sub(h.stats, w, c.codec.stat_cx_active, 1)
    timer_cancel(w, &c.idle_timer)
    timer_cancel(w, &c.headers_timer)
    while c.streams != NULL:            # each ended before its response was complete
        stat_add(h.stats, w, H_RQ_RX_RESET, 1)
        _stream_abort(c.streams, RF_DC)
    endp_tls_close(&c.down, not rst and not c.peer_gone)
    # After a read that drained the socket (and no event since), nothing is left to drop.
    endp_forget(w, &c.down)
    _close_fd(c.down.fd, rst, c.down_eof or (c.codec_seen and not c.down.readable))
    c.down.fd = -1
    chain_free(&c.in_buf)
    chain_free(&c.out_buf)
    splice_pipe_close(w, &c.req_pipe)
    splice_pipe_close(w, &c.rsp_pipe)
    c.codec.release(c)
    stat_sub(c.cfg.lstats, w, L_CX_ACTIVE, 1)
    stat_add(c.cfg.lstats, w, L_CX_DESTROY, 1)
    stat_sub(h.stats, w, H_CX_ACTIVE, 1)
    listener_cx_release(c.cfg)
    listener_conn_remove(w, c.cfg, &c.cfg_link)
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        http_worker(w).hconns = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    w.nsessions -= 1
    c.next_deferred = http_worker(w).hconn_deferred
    http_worker(w).hconn_deferred = c


cdef void _hconn_linger_end(Worker* w, void* arg) noexcept nogil:
    hconn_close(<HConn*>arg, False)


cdef void _hconn_linger_read(HConn* c) noexcept nogil:
    """Read and drop what the client still sends; close at its EOF or on an error."""
    cdef ssize_t n
    while True:
        n = endp_discard(&c.down)       # (through TLS on a TLS connection)
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
    cdef bint clean = not c.unread_request and c.in_buf.length == 0 and not c.codec.mid_message(c)
    if clean or c.down_eof or c.peer_gone:
        hconn_close(c, False)
        return
    c.lingering = 1
    chain_clear(&c.in_buf)
    endp_shutdown_wr(&c.down)
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
    endp_tls_event(&c.down, events)
    hconn_pump(c)


cdef int _hconn_process(HConn* c) noexcept nogil:
    """Decode what the downstream sent (the codec turns it into the events below) and move
    the active stream along. -1 when the connection closed."""
    cdef HStream* s
    cdef int rc
    if not c.codec_seen and c.in_buf.length and not c.down_eof:
        return 0                        # the first bytes do not say which protocol yet
    if c.codec.multiplexed:
        return _hconn_process_mux(c)
    while True:
        if c.streams != NULL:
            s = c.streams
            if s.tunnel:
                if _tunnel_pump(s) < 0:
                    return -1
                if s.upstream.conn.out_buf.length and s.upstream.conn.ep.writable:
                    upconn_pump(s.upstream.conn)
                    if c.closed:
                        return -1
                return 0
            rc = 0
            if _dec_body_filtered(s):
                if not s.req_received:
                    rc = c.codec.decode(c)
            elif s.upstream.conn != NULL and not s.upstream.req_done:
                rc = stream_forward_request_body(s)
            if rc < 0:
                if c.closed:
                    return -1
                continue                    # the stream ended (a local reply, say)
            if c.down_eof and not s.ended and not (s.connect or s.upgrade):
                # The client ended its side with its request in flight. As in Envoy (an HTTP
                # connection is not half-closed), it is gone: the stream is reset (DC) and
                # its upstream connection closed now, not held until an answer nobody reads
                # (a client could otherwise pin upstream connections, closing as it goes).
                # hconn_close counts the reset (downstream_rq_rx_reset).
                hconn_close(c, False)
                return -1
            if not s.ended and s.upstream.conn != NULL and s.upstream.conn.state == UC_BUSY and s.upstream.conn.out_buf.length \
                    and s.upstream.conn.ep.writable:
                # A pooled connection has no event coming to start it. Not while the upstream
                # is unwritable: its EPOLLOUT will come, and upconn_pump's own hconn_pump(c)
                # would set c.repump, so the hconn_pump that called us would go round forever
                # without returning to epoll (an upload to an upstream that reads slowly spun
                # the worker and stalled it for good).
                upconn_pump(s.upstream.conn)
                if c.closed:
                    return -1
            return 0
        if c.close_after or (c.in_buf.length == 0 and not c.down_eof):
            return 0
        c.codec.decode(c)                   # a head: cm_on_request_headers starts its stream
        if c.closed:
            return -1


cdef int _hconn_process_mux(HConn* c) noexcept nogil:
    """_hconn_process for a multiplexed codec: it decodes what came and delivers every
    stream's request body itself (as far as each stream's receiver wants it); then the
    streams whose upstream connection has request bytes to write get a start, as above.
    -1 when the connection closed."""
    cdef HStream* s
    cdef HStream* nxt
    cdef UpConn* u
    if c.close_after and c.in_buf.length == 0 and not c.down_eof and c.nstreams == 0:
        return 0
    c.codec.decode(c)
    if c.closed:
        return -1
    s = c.streams
    while s != NULL:
        nxt = s.conn_next               # (streams end only through the deferred free)
        u = s.upstream.conn
        if not s.ended and u != NULL and u.state == UC_BUSY and u.out_buf.length and u.ep.writable:
            upconn_pump(u)
            if c.closed:
                return -1
        s = nxt
    return 0


# ---------------------------------------------------------------- the server codec's events
# (core/http/codec_h1_server.pxi says when each comes)

cdef void cm_on_request_begin(HConn* c) noexcept nogil:
    """The first byte of a request: Envoy's stream begins here (downstream_rq_time)."""
    c.req_start_ms = c.w.now
    c.req_start_us = wall_clock_us()


cdef void cm_on_codec_error(HConn* c, int status, bint empty_body) noexcept nogil:
    """The codec refused what the client sent: a request head (no stream yet: answered with
    `status` and the connection closed) or the active stream's body (HTTP/1 only: a
    multiplexed codec resets the stream, cm_on_stream_reset)."""
    if c.streams != NULL:
        _request_body_framing_error(c.streams, status)
        return
    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_CX_PROTOCOL_ERROR, 1)
    hconn_unparsed_request(c, status, RF_DPE, empty_body)
    chain_clear(&c.in_buf)


cdef void cm_on_peer_closed(HConn* c, bint inside_request) noexcept nogil:
    """The client closed with no stream active; inside_request: inside a request head."""
    if inside_request:
        # Envoy's stream for it ends "downstream connection termination" (DC), unanswered.
        hconn_unparsed_request(c, 0, RF_DC, False)
        c.partial_rq = 1                # Envoy's stream was active when the connection closed
    hconn_close(c, False)


cdef HStream* cm_on_request_headers(HConn* c, HttpHead* head, const RequestFacts* f,
                                   void* codec_stream) noexcept nogil:
    """A complete, valid request head (ours now) and what the codec knows of it; codec_stream:
    the codec's state for the stream (HStream.codec_stream; HTTP/1: NULL). Returns the
    stream (it may have ended already: s.ended), or NULL when the connection closed."""
    return stream_start(c, head, f, codec_stream)


cdef void hconn_unparsed_request(HConn* c, int status, uint32_t flags, bint empty_body) noexcept nogil:
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
    s.protocol = HTTP_PROTO_11
    s.response_flags = flags
    memcpy(s.client_ip, c.remote_ip, c.remote_ip_len + 1)
    s.client_ip_len = c.remote_ip_len
    s.client_port = c.remote_port
    stat_add(h.stats, c.w, H_RQ_TOTAL, 1)
    stat_add(h.stats, c.w, c.codec.stat_rq_total, 1)
    stat_add(h.stats, c.w, H_RQ_RX_RESET, 1)
    if status:
        if empty_body:
            hconn_local_reply(c, &s, status, "", 0, NULL, 0, True)     # Envoy's, for a missing Host
        else:
            hconn_local_reply(c, &s, status, _status_reason(status), strlen(_status_reason(status)),
                              NULL, 0, True)
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
    cdef HStream* nxt
    cdef UpConn* u
    if c.closed or c.lingering:         # a lingering connection only drops input (_hconn_finish)
        return
    if c.in_pump:
        c.repump = 1
        return
    c.in_pump = 1
    while True:
        c.repump = 0
        progress = False
        if c.codec.flush != NULL:
            c.codec.flush(c)            # frames queued since (HTTP/2), into out_buf
            if c.closed:
                c.in_pump = 0
                return
        if c.out_buf.length and c.down.writable:
            # A connection to close closes as soon as out_buf is out (below): with MSG_MORE
            # its FIN leaves in the same segment as the last bytes.
            n = endp_write(&c.down, &c.out_buf, NULL, c.close_after and c.nstreams == 0)
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
        s = NULL if c.codec.multiplexed else c.streams
        if c.down.readable and not c.down_eof and c.in_buf.length < HTTP_IO_LIMIT \
                and (s == NULL or s.upstream.conn == NULL or s.upstream.conn.out_buf.length < HTTP_IO_LIMIT) \
                and not (s != NULL and s.upstream.conn != NULL and not s.upstream.req_done and not _dec_body_filtered(s)
                         and (c.req_pipe.bytes or _request_splice_ready(c, s))):
            n = endp_read(&c.down, &c.in_buf, HTTP_IO_LIMIT - c.in_buf.length, &asked)
            if n > 0:
                if not c.codec_seen and hconn_settle_codec(c):
                    # Envoy creates its codec with the first bytes read (a client that
                    # closes without sending any is no HTTP/1 connection), and AUTO
                    # chooses it then (codec_h2_server.pxi).
                    c.codec_seen = 1
                    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, c.codec.stat_cx_total, 1)
                    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, c.codec.stat_cx_active, 1)
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
                # (A TLS error has sent its alert: a FIN lets the client read it.)
                hconn_close(c, errno != EPROTO)
                return
        if _hconn_process(c) < 0:
            c.in_pump = 0
            return
        s = c.streams
        while s != NULL:
            nxt = s.conn_next           # (streams end only through the deferred free)
            u = s.upstream.conn
            if not s.ended and u != NULL and u.state == UC_BUSY \
                    and (u.in_buf.length or c.rsp_pipe.bytes or u.ep.readable) \
                    and c.codec.send_ok(c, s) \
                    and not (s.fc != NULL and s.fc.enc.stopped == FS_HELD):
                # (While an encoder filter holds the response, its continue restarts this.)
                # The upstream paused on our full out_buf (HTTP/2: the stream's send
                # buffer); let it continue now. in_pump stays set, so upconn_pump's own
                # hconn_pump(c) does not nest (one nested pump per splice round overflowed
                # the stack on a 1 GiB download whose client kept up); this loop goes round
                # again only if that moved something.
                sent = s.bytes_sent
                out_len = c.out_buf.length
                pipe_bytes = c.rsp_pipe.bytes
                repump = c.repump
                upconn_pump(u)
                if c.closed:
                    c.in_pump = 0
                    return
                c.repump = repump
                if s.ended or s.bytes_sent != sent or c.out_buf.length != out_len \
                        or c.rsp_pipe.bytes != pipe_bytes:
                    progress = True
            s = nxt
        s = c.streams
        if s != NULL and s.tunnel and s.tunnel_up_eof and c.out_buf.length == 0:
            c.in_pump = 0
            hconn_close(c, False)
            return
        if c.close_after and c.nstreams == 0 and c.out_buf.length == 0 \
                and not (c.codec.multiplexed and c.codec.mid_message(c)):
            c.in_pump = 0
            _hconn_finish(c)
            return
        if not progress and not c.repump:
            break
    c.in_pump = 0


cdef void http_drain_listener(Worker* w, ListenSock* sock) noexcept nogil:
    """The listener is going away: idle keep-alive connections close now (or, when another
    process took its sockets over, answer their next request with Connection: close), busy
    ones finish their current response with Connection: close."""
    cdef HConn* c = http_worker(w).hconns
    cdef HConn* nxt
    while c != NULL:
        nxt = c.next
        if c.cfg.sock == sock:
            if c.codec.drain != NULL and c.codec_seen:
                # HTTP/2: GOAWAY (in two steps); the open streams finish, then it closes.
                c.codec.drain(c)
                hconn_pump(c)
            elif c.nstreams == 0 and c.out_buf.length == 0 and sock.handed_over:
                c.drain_next = 1        # its next response says Connection: close
            elif c.nstreams == 0 and c.out_buf.length == 0:
                hconn_close(c, False)
            else:
                c.close_after = 1
                if c.streams != NULL and not c.streams.resp_started:
                    c.streams.keepalive = 0
        c = nxt


cdef void hconn_pump_later(HConn* c) noexcept nogil:
    """hconn_pump(c) at the end of the loop turn (http_free_deferred), for an HTTP/2
    connection whose streams got response bytes from upstream connections: the responses
    of one epoll batch for its streams then leave in one write, not one write (and one
    round of segments on loopback) per upstream response. Inside c's pump it only asks
    that pump to go round again."""
    if c.in_pump:
        c.repump = 1
        return
    if c.pump_queued or c.closed:
        return
    c.pump_queued = 1
    c.pump_next = http_worker(c.w).pump_later
    http_worker(c.w).pump_later = c


cdef void _hconn_pump_queued(Worker* w) noexcept nogil:
    cdef HConn* c
    while http_worker(w).pump_later != NULL:
        c = http_worker(w).pump_later
        http_worker(w).pump_later = c.pump_next
        c.pump_queued = 0
        hconn_pump(c)                   # (returns at once if c closed meanwhile: freed below)


cdef void http_free_deferred(Worker* w) noexcept nogil:
    cdef HConn* c
    cdef HStream* s
    while True:
        _hconn_pump_queued(w)
        http_serve_waiting(w)
        if http_worker(w).pump_later == NULL:
            break
    while http_worker(w).stream_deferred != NULL:
        s = http_worker(w).stream_deferred
        http_worker(w).stream_deferred = s.next_deferred
        free(s)
    while http_worker(w).hconn_deferred != NULL:
        c = http_worker(w).hconn_deferred
        http_worker(w).hconn_deferred = c.next_deferred
        listener_cfg_decref(c.cfg)
        free(c)
    http_pool_free_deferred(w)


cdef void http_worker_teardown(Worker* w) noexcept nogil:
    while http_worker(w).hconns != NULL:
        hconn_close(http_worker(w).hconns, False)
    http_pool_close_all(w)
    http_free_deferred(w)
