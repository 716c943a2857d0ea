# The upstream HTTP/1.1 connection pool: one UpConn per upstream connection; idle ones wait
# in a per-worker, per-host list and are reused for the next stream to that host. Acquire,
# release, connect, idle and max-duration timers, circuit-breaker queues, and the I/O of
# an upstream connection (its bytes go to the stream bound to it: stream_on_upstream).

# ---------------------------------------------------------------- upstream connections

cdef void upconn_close(UpConn* u) noexcept nogil:
    cdef Worker* w = u.w
    cdef UpConn** pp
    cdef int remote
    cdef ClusterCfg* cl = u.cluster
    cdef WorkerLb* lb = &cl.per_worker[w.index]
    if u.state == UC_CLOSED:
        return
    if u.idle_head != NULL:
        pp = u.idle_head
        while pp[0] != NULL and pp[0] != u:
            pp = &pp[0].idle_next
        if pp[0] == u:
            pp[0] = u.idle_next
        u.idle_head = NULL
    _wait_unlink(u)
    u.state = UC_CLOSED
    timer_cancel(w, &u.timer)
    timer_cancel(w, &u.duration_timer)
    if u.ep.fd >= 0:
        close(u.ep.fd)
        u.ep.fd = -1
    # Envoy's pool: every close is a destroy, remote when the upstream ended it (EOF, reset,
    # refused connect), and "with active rq" when a stream's response was still incomplete.
    # A request that waited for a connection and never got one had no connection to destroy.
    remote = u.remote_close or u.eof
    if fp_log_level <= LOG_DEBUG and u.cx_counted:
        fp_log(w.index, "connection", u.id, 0, "closing upstream connection: %s",
               _pick(remote, "remote close", "local close"))
    if u.cx_counted:
        u.cx_counted = 0
        stat_sub(cl.stats, w, C_CX_ACTIVE, 1)
        host_stat_add(u.hstats, w, HS_CX_ACTIVE, -1)
        stat_add(cl.stats, w, C_CX_DESTROY, 1)
        stat_add(cl.stats, w, C_DESTROY_LOCAL + remote, 1)
        fp_atomic_add_i64(&cl.n_cx, -1)
        if u.host_counted and u.hosts == lb.pool_hosts and lb.pool_conns != NULL \
                and u.host_index < lb.pool_n:
            lb.pool_conns[u.host_index] -= 1
        if lb.wait_head != NULL:
            _cluster_kick(cl, w)        # room for a request that waits (served this turn)
    if u.rq_attached:
        u.rq_attached = 0
        stat_sub(cl.stats, w, C_RQ_ACTIVE, 1)
        host_stat_add(u.hstats, w, HS_RQ_ACTIVE, -1)
        fp_atomic_add_i64(&cl.n_rq, -1)
        stat_add(cl.stats, w, C_DESTROY_WITH_ACTIVE_RQ, 1)
        stat_add(cl.stats, w, C_DESTROY_LOCAL_WITH_ACTIVE_RQ + remote, 1)
    if u.pending:
        u.pending = 0
        stat_sub(cl.stats, w, C_RQ_PENDING_ACTIVE, 1)
        host_stat_add(u.hstats, w, HS_RQ_PENDING_ACTIVE, -1)
        fp_atomic_add_i64(&cl.n_pending, -1)
    if u.stream != NULL:
        u.stream.up = NULL
        u.stream = NULL
    chain_free(&u.in_buf)
    chain_free(&u.out_buf)
    h1_free(&u.resp)
    if u.prev != NULL:
        u.prev.next = u.next
    else:
        http_worker(w).upconns = u.next
    if u.next != NULL:
        u.next.prev = u.prev
    u.next_deferred = http_worker(w).upconn_deferred
    http_worker(w).upconn_deferred = u


cdef void _upconn_idle_timeout(Worker* w, void* arg) noexcept nogil:
    cdef UpConn* u = <UpConn*>arg
    if u.state == UC_CONNECTING:
        stat_add(u.cluster.stats, w, C_CONNECT_TIMEOUT, 1)
        stat_add(u.cluster.stats, w, C_CONNECT_FAIL, 1)
        host_stat_add(u.hstats, w, HS_CX_CONNECT_FAIL, 1)
        _upconn_failed(u, 503, UPSTREAM_CONNECT_TIMEOUT)
    else:
        stat_add(u.cluster.stats, w, C_CX_IDLE_TIMEOUT, 1)
        upconn_close(u)


cdef void _upconn_max_duration(Worker* w, void* arg) noexcept nogil:
    """max_connection_duration: an idle connection closes now, a busy one after its
    response (Envoy drains it)."""
    cdef UpConn* u = <UpConn*>arg
    stat_add(u.cluster.stats, w, C_CX_MAX_DURATION, 1)
    if u.state == UC_IDLE:
        upconn_close(u)
    else:
        u.last_request = 1


# -- circuit breakers: requests that wait for a connection (UC_WAITING UpConns, holding
# their stream's request bytes in out_buf) are queued per cluster and worker, oldest first.
# A connection of that worker going idle or closing kicks the cluster: at the end of the
# loop turn (http_serve_waiting, outside any pump) the waiting requests take idle
# connections to their host, or connect once the limit allows it.

cdef inline void _wait_unlink(UpConn* u) noexcept nogil:
    cdef WorkerLb* lb = &u.cluster.per_worker[u.w.index]
    if not u.queued:
        return
    u.queued = 0
    if u.wait_prev != NULL:
        u.wait_prev.wait_next = u.wait_next
    else:
        lb.wait_head = u.wait_next
    if u.wait_next != NULL:
        u.wait_next.wait_prev = u.wait_prev
    else:
        lb.wait_tail = u.wait_prev
    u.wait_next = NULL
    u.wait_prev = NULL


cdef void _cluster_kick(ClusterCfg* cl, Worker* w) noexcept nogil:
    cdef WorkerLb* lb = &cl.per_worker[w.index]
    if lb.kicked:
        return
    lb.kicked = 1
    fp_atomic_add_int(&cl.refcnt, 1)    # the kick list's reference
    lb.kick_next = http_worker(w).kicked
    http_worker(w).kicked = lb


cdef UpConn** _pool_list(ClusterCfg* cl, Worker* w, int host_index) noexcept nogil:
    """The idle list of host_index in this worker's pool, for the current host set."""
    cdef WorkerLb* lb = &cl.per_worker[w.index]
    cdef UpConn** lists
    cdef int i
    if lb.pool_hosts != lb.hosts:
        # The host set changed (DNS): connections to the old hosts are not reused.
        if lb.pool != NULL:
            lists = <UpConn**>lb.pool
            for i in range(lb.pool_n):
                while lists[i] != NULL:
                    upconn_close(lists[i])
            free(lb.pool)
        free(lb.pool_conns)
        lb.pool_n = lb.hosts.nhosts if lb.hosts != NULL else 0
        lb.pool = calloc(max(1, lb.pool_n), sizeof(UpConn*))
        lb.pool_conns = <int*>calloc(max(1, lb.pool_n), sizeof(int))
        lb.pool_hosts = lb.hosts
        if lb.pool == NULL or lb.pool_conns == NULL:
            free(lb.pool)
            free(lb.pool_conns)
            lb.pool = NULL
            lb.pool_conns = NULL
            lb.pool_hosts = NULL        # try again next time
            return NULL
    if lb.pool == NULL or host_index >= lb.pool_n:
        return NULL
    return &(<UpConn**>lb.pool)[host_index]


cdef inline bint _upconn_attach(UpConn* u) noexcept nogil:
    """u.stream now uses u (a pooled connection, or one that just connected): Envoy's
    upstream_rq_total/_active count requests bound to a connection. False (nothing
    counted but upstream_rq_active_overflow) when the cluster's max_requests is reached:
    Envoy checks that limit here, when a request is bound to a connection."""
    cdef ClusterCfg* cl = u.cluster
    if cb_full(&cl.n_rq, cl.max_rq):
        stat_add(cl.stats, u.w, C_RQ_ACTIVE_OVERFLOW, 1)
        if u.stream != NULL:
            u.stream.response_flags |= RF_UO
        return False
    u.rq_attached = 1
    fp_atomic_add_i64(&cl.n_rq, 1)
    stat_add(cl.stats, u.w, C_RQ_TOTAL, 1)
    stat_add(cl.stats, u.w, C_RQ_ACTIVE, 1)
    host_stat_add(u.hstats, u.w, HS_RQ_TOTAL, 1)
    host_stat_add(u.hstats, u.w, HS_RQ_ACTIVE, 1)
    u.nrequests += 1
    if cl.max_rq_per_cx and u.nrequests >= cl.max_rq_per_cx:
        # Counted when the last request the connection may carry is bound to it, as
        # Envoy; the connection closes after that response.
        stat_add(cl.stats, u.w, C_CX_MAX_REQUESTS, 1)
        u.last_request = 1
    return True


cdef inline void _upconn_bind(UpConn* u, HStream* s) noexcept nogil:
    """An idle pooled connection takes s's request."""
    u.idle_head = NULL
    u.idle_next = NULL
    timer_cancel(u.w, &u.timer)
    u.state = UC_BUSY
    u.stream = s
    h1_reset(&u.resp)
    h1_response_for(&u.resp, s.method)


cdef inline UpConn* _pool_pop(UpConn** head) noexcept nogil:
    cdef UpConn* u = head[0]
    head[0] = u.idle_next
    return u


cdef UpConn* _upconn_new(HStream* s, ClusterCfg* cl, int host_index) noexcept nogil:
    """A connection object for s, without a socket yet; its stream is pending."""
    cdef Worker* w = s.c.w
    cdef UpConn* u = <UpConn*>calloc(1, sizeof(UpConn))
    if u == NULL:
        return NULL
    u.ep.on_event = _upconn_endp_event
    u.ep.fd = -1
    u.ep.owner = u
    u.w = w
    u.cluster = cl
    fp_atomic_add_int(&cl.refcnt, 1)
    u.host_index = host_index
    u.id = _next_conn_id(w)
    u.hosts = cl.per_worker[w.index].hosts
    u.hstats = u.hosts.hosts[host_index].stats
    u.state = UC_WAITING
    u.stream = s
    h1_init(&u.resp, H1_RESPONSE, 0, 0, 0)
    h1_response_for(&u.resp, s.method)     # HEAD and CONNECT change how the response ends
    timer_init(&u.timer, _upconn_idle_timeout, u)
    timer_init(&u.duration_timer, _upconn_max_duration, u)
    u.next = http_worker(w).upconns
    if http_worker(w).upconns != NULL:
        http_worker(w).upconns.prev = u
    http_worker(w).upconns = u
    # The stream waits for the connection: Envoy's pending request.
    u.pending = 1
    fp_atomic_add_i64(&cl.n_pending, 1)
    stat_add(cl.stats, w, C_RQ_PENDING_TOTAL, 1)
    stat_add(cl.stats, w, C_RQ_PENDING_ACTIVE, 1)
    host_stat_add(u.hstats, w, HS_RQ_PENDING_ACTIVE, 1)
    return u


cdef int _upconn_connect(UpConn* u, Host* host) noexcept nogil:
    """Open u's socket to host and start connecting. -1: it failed at once (counted as
    Envoy counts a refused connection; the caller closes u)."""
    cdef Worker* w = u.w
    cdef ClusterCfg* cl = u.cluster
    cdef WorkerLb* lb = &cl.per_worker[w.index]
    cdef epoll_event ev
    cdef int fd = socket(host.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        stat_add(cl.stats, w, C_CONNECT_FAIL, 1)
        host_stat_add(u.hstats, w, HS_CX_CONNECT_FAIL, 1)
        return -1
    _set_nodelay(fd)
    _loopback_tune(fd, <sockaddr*>&host.addr)     # see tcp_proxy.pxi
    u.ep.fd = fd
    u.state = UC_CONNECTING
    u.cx_counted = 1
    fp_atomic_add_i64(&cl.n_cx, 1)
    # A tunnel never returns to the pool, so it could not serve a request that waits.
    if (u.stream == NULL or not u.stream.connect) and u.hosts == lb.pool_hosts \
            and lb.pool_conns != NULL and u.host_index < lb.pool_n:
        lb.pool_conns[u.host_index] += 1
        u.host_counted = 1
    stat_add(cl.stats, w, C_CX_TOTAL, 1)
    stat_add(cl.stats, w, C_CX_ACTIVE, 1)
    host_stat_add(u.hstats, w, HS_CX_TOTAL, 1)
    host_stat_add(u.hstats, w, HS_CX_ACTIVE, 1)
    if u.stream == NULL or not u.stream.connect:   # (a CONNECT's upstream is TCP in Envoy)
        stat_add(cl.stats, w, C_CX_HTTP1_TOTAL, 1)
    if fp_log_level <= LOG_DEBUG:
        _log_connecting(u, host)
    if connect(fd, <sockaddr*>&host.addr, host.addrlen) < 0 and errno != EINPROGRESS:
        # What Envoy counts for a connection that fails at once (refused: a remote close).
        stat_add(cl.stats, w, C_CONNECT_FAIL, 1)
        host_stat_add(u.hstats, w, HS_CX_CONNECT_FAIL, 1)
        u.remote_close = 1
        return -1
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.ptr = &u.ep
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        return -1
    timer_arm(w, &u.timer, cl.connect_timeout_ms)
    return 0


cdef UpConn* upconn_acquire(HStream* s, ClusterCfg* cl) noexcept nogil:
    """A pooled idle connection to the chosen host, or a new one (connecting, or waiting
    for the cluster's max_connections to allow it). NULL: s gets a local reply, which
    s.response_flags tells (RF_UO: a circuit breaker overflowed; else no host or the
    connection failed at once)."""
    cdef Worker* w = s.c.w
    cdef WorkerLb* lb = &cl.per_worker[w.index]
    cdef Host* host = cluster_pick(cl, w, 0)
    cdef int idx
    cdef UpConn** head
    cdef UpConn* u
    if host == NULL:
        stat_add(cl.stats, w, C_NONE_HEALTHY, 1)
        s.response_flags |= RF_UH
        return NULL
    memcpy(&s.upstream_addr, &host.addr, host.addrlen)
    s.upstream_addrlen = host.addrlen
    s.hstats = host.stats
    s.upstream_start_ms = w.now
    idx = <int>(host - lb.hosts.hosts)
    head = _pool_list(cl, w, idx)
    if head != NULL and head[0] != NULL and not s.connect:     # a tunnel gets its own
        if cb_full(&cl.n_rq, cl.max_rq):
            # Envoy binds the request to the idle connection, which refuses it and stays idle.
            stat_add(cl.stats, w, C_RQ_ACTIVE_OVERFLOW, 1)
            s.response_flags |= RF_UO
            return NULL
        u = _pool_pop(head)
        _upconn_bind(u, s)
        _upconn_attach(u)
        if fp_log_level <= LOG_DEBUG:
            fp_log(w.index, "pool", u.id, 0, "using an idle connection for stream %u of connection %llu",
                   s.c.nrequests, <unsigned long long>s.c.id)
        return u
    # A new connection: Envoy first refuses a request beyond max_pending_requests...
    if cb_full(&cl.n_pending, cl.max_pending):
        stat_add(cl.stats, w, C_RQ_PENDING_OVERFLOW, 1)
        s.response_flags |= RF_UO
        return NULL
    u = _upconn_new(s, cl, idx)
    if u == NULL:
        return NULL
    if cb_full(&cl.n_cx, cl.max_cx):
        # ...then, at max_connections, counts upstream_cx_overflow and lets the request wait
        # for one of this worker's connections to the host; with none (they are all on other
        # workers or hosts) it connects anyway, or the request could wait forever.
        stat_add(cl.stats, w, C_CX_OVERFLOW, 1)
        if lb.pool_conns != NULL and idx < lb.pool_n and lb.pool_conns[idx] > 0:
            u.queued = 1
            u.wait_prev = <UpConn*>lb.wait_tail
            if lb.wait_tail != NULL:
                (<UpConn*>lb.wait_tail).wait_next = u
            else:
                lb.wait_head = u
            lb.wait_tail = u
            return u
    if _upconn_connect(u, host) < 0:
        stat_add(cl.stats, w, C_RQ_PENDING_FAILURE_EJECT, 1)
        u.stream = NULL
        upconn_close(u)
        s.response_flags |= RF_UF
        return NULL
    return u


cdef void _upconn_overflowed(UpConn* u) noexcept nogil:
    """u's stream was refused by max_requests when it was bound to u (u just connected,
    or is an idle one a waiting request took): the stream gets Envoy's overflow reply and
    u, which has sent nothing of it, goes (back) to the pool."""
    cdef HStream* s = u.stream
    u.stream = NULL
    chain_clear(&u.out_buf)
    if s != NULL:
        s.up = NULL
    upconn_release(u, s == NULL or not s.connect)
    if s != NULL:
        stream_upstream_failed(s, 503, UPSTREAM_OVERFLOW)


cdef void upconn_release(UpConn* u, bint reusable) noexcept nogil:
    """The stream is done with u: keep it in the pool or close it."""
    cdef UpConn** head
    cdef UpConn* x
    cdef int n = 0
    u.stream = NULL
    if u.rq_attached and u.resp.state == H1_MESSAGE_DONE:
        u.rq_attached = 0               # (an incomplete response stays: a destroy with active rq)
        stat_sub(u.cluster.stats, u.w, C_RQ_ACTIVE, 1)
        host_stat_add(u.hstats, u.w, HS_RQ_ACTIVE, -1)
        fp_atomic_add_i64(&u.cluster.n_rq, -1)
    # ep.hup: the upstream's FIN came with (or right behind) the response it answered; a
    # short read never reads on to see it, so the event flag is all there is.
    if not reusable or u.eof or u.ep.hup or u.in_buf.length or u.out_buf.length \
            or u.last_request or u.cluster.per_worker[u.w.index].hosts != u.hosts:
        upconn_close(u)
        return
    head = _pool_list(u.cluster, u.w, u.host_index)
    if head == NULL:
        upconn_close(u)
        return
    x = head[0]
    while x != NULL:
        n += 1
        x = x.idle_next
    if n >= MAX_IDLE_PER_HOST:
        upconn_close(u)
        return
    u.state = UC_IDLE
    u.idle_next = head[0]
    head[0] = u
    u.idle_head = head
    h1_reset(&u.resp)
    if u.cluster.pool_idle_ms:
        timer_arm(u.w, &u.timer, u.cluster.pool_idle_ms)
    if u.cluster.per_worker[u.w.index].wait_head != NULL:
        _cluster_kick(u.cluster, u.w)   # a request waits for a connection: this one


cdef void _upconn_failed(UpConn* u, int status, const char* reason) noexcept nogil:
    """u broke before its stream got a complete response."""
    cdef HStream* s = u.stream
    if fp_log_level <= LOG_DEBUG:
        fp_log(u.w.index, "pool", u.id, 0, "upstream connection failed: %s", reason)
    if s != NULL:
        s.response_flags |= RF_UF if u.state == UC_CONNECTING else (RF_UPE if status == 502 else RF_UC)
    if u.pending:
        stat_add(u.cluster.stats, u.w, C_RQ_PENDING_FAILURE_EJECT, 1)
    upconn_close(u)
    if s != NULL:
        stream_upstream_failed(s, status, reason)


cdef void upconn_on_event(Worker* w, UpConn* u, uint32_t events) noexcept nogil:
    cdef int err = 0
    cdef socklen_t n = sizeof(int)
    if u.state == UC_CLOSED:
        return
    if u.state == UC_CONNECTING:
        if not events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            return
        if getsockopt(u.ep.fd, SOL_SOCKET, SO_ERROR, &err, &n) < 0 or err != 0:
            stat_add(u.cluster.stats, w, C_CONNECT_FAIL, 1)
            host_stat_add(u.hstats, w, HS_CX_CONNECT_FAIL, 1)
            u.remote_close = 1          # refused or reset: Envoy's RemoteClose
            # Envoy 1.40 names the side that failed: "remote connection failure".
            _upconn_failed(u, 503, UPSTREAM_REMOTE_FAILURE)
            return
        timer_cancel(w, &u.timer)
        if fp_log_level <= LOG_DEBUG:
            fp_log(w.index, "connection", u.id, 0, "connected")
        u.state = UC_BUSY
        u.pending = 0
        stat_sub(u.cluster.stats, w, C_RQ_PENDING_ACTIVE, 1)
        host_stat_add(u.hstats, w, HS_RQ_PENDING_ACTIVE, -1)
        fp_atomic_add_i64(&u.cluster.n_pending, -1)
        if u.cluster.max_duration_ms:
            timer_arm(w, &u.duration_timer, u.cluster.max_duration_ms)
        if u.stream != NULL and not _upconn_attach(u):
            _upconn_overflowed(u)
            return
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        u.ep.readable = 1
    if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        u.ep.hup = 1
    if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
        u.ep.writable = 1
    if u.state == UC_IDLE:
        # An idle pooled connection has nothing to say; data or EOF means it is done.
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            u.remote_close = (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0
            upconn_close(u)
        return
    upconn_pump(u)


cdef void upconn_pump(UpConn* u) noexcept nogil:
    cdef ssize_t n
    cdef bint progress
    cdef HStream* s
    cdef HConn* c = NULL
    cdef size_t asked = 0
    while u.state == UC_BUSY:
        progress = False
        if u.out_buf.length and u.ep.writable:
            n = chain_write_fd(&u.out_buf, u.ep.fd)
            if n > 0:
                stat_add(u.cluster.stats, u.w, C_TX_BYTES, <uint64_t>n)
                progress = True
                if u.stream != NULL:
                    u.stream.last_active_ms = u.w.now
            elif n < 0 and errno == EAGAIN:
                u.ep.writable = 0
            elif n < 0 and errno != EINTR:
                u.remote_close = 1
                _upconn_failed(u, 503, UPSTREAM_TERMINATION)
                return
        s = u.stream
        c = s.c if s != NULL else NULL
        if s != NULL and not s.req_done and c.req_pipe.bytes:
            if stream_forward_request_body(s) < 0:
                break
        if u.ep.readable and not u.eof and u.in_buf.length < HTTP_IO_LIMIT \
                and (c == NULL or c.out_buf.length < HTTP_IO_LIMIT) \
                and not (c != NULL and (c.rsp_pipe.bytes or (s.resp_started and not _enc_body_filtered(s)
                         and u.resp.framing == H1_BODY_LENGTH and u.in_buf.length == 0
                         and u.resp.state != H1_MESSAGE_DONE))):
            n = chain_read_fd(&u.in_buf, u.ep.fd, HTTP_IO_LIMIT - u.in_buf.length, &asked)
            if n > 0:
                stat_add(u.cluster.stats, u.w, C_RX_BYTES, <uint64_t>n)
                progress = True
                if u.stream != NULL:
                    u.stream.last_active_ms = u.w.now
                if <size_t>n < asked and not u.ep.hup:
                    # A short read drained the socket; the next bytes bring a new edge.
                    # (Not after RDHUP: the FIN may still be queued behind the data.)
                    u.ep.readable = 0
            elif n == 0:
                u.eof = 1
                progress = True
            elif errno == EAGAIN:
                u.ep.readable = 0
            elif errno != EINTR:
                u.eof = 1
                progress = True
        if s == NULL:
            break
        if stream_on_upstream(s) < 0:
            break                       # the stream ended; u may be pooled or closed now
        if not progress:
            break
    if c != NULL:
        hconn_pump(c)
