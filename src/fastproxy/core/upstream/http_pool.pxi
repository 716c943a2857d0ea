# The upstream HTTP connection pool: where the router's upstream request gets a stream to
# a host of a cluster, and the only way it reaches upstream connections. One pool
# (HttpPool, decls.pxi) per cluster per worker, touched only by that worker. For HTTP/1.1
# a stream is a whole connection (UpConn); idle ones wait in a per-host list and are reused
# for the next stream to that host. Here too: connect, idle and max-duration timers, the
# circuit breakers' waiting queue, and the I/O of an upstream connection (its bytes go to
# the stream bound to it: stream_on_upstream).
#
# The interface
# -------------
# What an HTTP/2 pool (many streams per connection) implements too. The owner is an
# HStream s; its handle is s.upstream.conn (UpConn*: for HTTP/1.1 the connection itself).
#
#   u = http_pool_acquire(s, cluster)
#       The cluster's load balancer picks the host (cluster_pick); s gets its upstream
#       facts (address, host stats, upstream start time). Three outcomes:
#       ready    u.state == UC_BUSY: an idle connection to the host, bound to s and counted
#                as an active request (upstream_rq_active). The owner writes its request
#                into u.out_buf and sets u.ep.writable to send it at once.
#       pending  u.state == UC_CONNECTING (a new connection), or UC_WAITING (no socket yet:
#                the cluster is at max_connections and this worker has a connection to the
#                host that may free up). The owner writes its request into u.out_buf all
#                the same; it goes out once a connection carries it. Then the pool either
#                binds s to u when u connects, or moves the request to an idle connection
#                that freed up (s.upstream.conn becomes that one; u ends), or fails s (below). Binding
#                can still be refused by max_requests: s fails with 503 overflow (RF_UO) and
#                the connection, which sent nothing, stays in the pool.
#       failure  NULL: nothing to release. s.response_flags says why: RF_UH no host,
#                RF_UO a circuit breaker refused it (max_pending_requests, max_requests),
#                RF_UF the connect failed at once (or no memory). The owner answers
#                locally.
#   http_pool_release(u, reusable)
#       The owner is done with u. reusable: the request went out whole and the response
#       came back whole and allows keep-alive; the pool keeps the connection idle unless
#       something forbids it (bytes left over, EOF, max_requests_per_connection,
#       max_connection_duration, its host left the host set, the cluster was removed, a
#       transport the cluster no longer uses), else closes it. There is no idle cap: the
#       circuit breakers' max_connections bounds connections, as Envoy's pool.
#   http_pool_cancel(u)
#       The owner goes away before or while u carries its exchange (reset, timeout, a local
#       reply, the downstream closed). HTTP/1.1 cannot abandon a request half-way, so the
#       connection closes (a destroy "with active rq" when the response was incomplete).
#       s.upstream.conn is cleared; nothing is called back.
#   http_pool_fail(u, status, reason)
#       u broke before s got a complete response: an invalid response, an upstream that
#       ended early. The connection closes, s gets the response flag (UF, UC or UPE) and
#       stream_upstream_failed(s, status, reason) with s.upstream.conn already NULL. The pool calls
#       it itself for connect failures and timeouts and write errors.
#
# Towards the owner the pool calls stream_on_upstream(s) whenever u moved bytes (response
# bytes in u.in_buf, room in u.out_buf) and stream_upstream_failed as above. Requests that
# wait (UC_WAITING) are served at the end of the loop turn by http_serve_waiting, outside
# any pump; freed UpConns are released by http_pool_free_deferred after it.

# ---------------------------------------------------------------- the pools

cdef int http_pools_new(ClusterCfg* cl) noexcept nogil:
    """cl's pools, one per worker (empty: each sizes itself to its worker's host set on
    first use). -1: no memory."""
    cdef int i
    cl.http_pools = <HttpPool*>calloc(max(1, cl.nworkers), sizeof(HttpPool))
    if cl.http_pools == NULL:
        return -1
    for i in range(cl.nworkers):
        cl.http_pools[i].cluster = cl
    return 0


cdef void http_pools_free(ClusterCfg* cl) noexcept nogil:
    """With the cluster's last reference: every UpConn held one, so the pools are empty."""
    cdef int i
    if cl.http_pools == NULL:
        return
    for i in range(cl.nworkers):
        free(cl.http_pools[i].idle)
        free(cl.http_pools[i].nconns)
        hostset_decref(cl.http_pools[i].hosts)
    free(cl.http_pools)
    cl.http_pools = NULL


cdef inline HttpPool* _pool_of(ClusterCfg* cl, Worker* w) noexcept nogil:
    return &cl.http_pools[w.index]


# A host-set swap (DNS, a config update, EDS) keeps the connections to the hosts that stay:
# the pool follows the worker's new set on its next use (_pool_sync), moving the idle lists
# and counts of the hosts that stay to their index in the new set (found by their stat
# block, hostset_find: O(hosts), no address compares) and closing the idle connections to
# hosts that left. A busy or waiting connection still points into an older set; it is
# moved to the pool's set when it comes back (_upconn_rehome), or closed if its host left.

cdef inline int* _pool_host_conns(HttpPool* p, HostSet* hosts, int host_index) noexcept nogil:
    """This worker's count of connections to hosts[host_index]; NULL when hosts is not the
    set the pool is sized for (the host left in a swap: it is no longer counted)."""
    if hosts != p.hosts or p.nconns == NULL or host_index >= p.nhosts:
        return NULL
    return &p.nconns[host_index]


cdef inline bint _pool_has_conn_to(HttpPool* p, HostSet* hosts, int host_index) noexcept nogil:
    """This worker has a connection to the host that may free up for a waiting request."""
    cdef int* nconns = _pool_host_conns(p, hosts, host_index)
    return nconns != NULL and nconns[0] > 0


# ---------------------------------------------------------------- upstream connections

cdef void upconn_close(UpConn* u) noexcept nogil:
    cdef Worker* w = u.w
    cdef UpConn** pp
    cdef int remote
    cdef ClusterCfg* cl = u.cluster
    cdef HttpPool* p = _pool_of(cl, w)
    cdef int* nconns
    if u.state == UC_CLOSED:
        return
    if u.h2_role == H2R_STREAM:
        _h2_handle_end(u)
        return
    if u.h2_role == H2R_CONN and not u.h2.closing:
        _h2_conn_close_streams(u, 503, UPSTREAM_TERMINATION)     # (which closes u)
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
        endp_tls_close(&u.ep, not u.remote_close)
        endp_forget(w, &u.ep)
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
        host_stat_sub(u.hstats, w, HS_CX_ACTIVE, 1)
        stat_add(cl.stats, w, C_CX_DESTROY, 1)
        stat_add(cl.stats, w, C_DESTROY_LOCAL + remote, 1)
        fp_atomic_add_i64(&cl.n_cx, -1)
        _upconn_rehome(p, u)
        nconns = _pool_host_conns(p, u.hosts, u.host_index)
        # (> 0: a host that left and came back again starts its count afresh.)
        if u.host_counted and nconns != NULL and nconns[0] > 0:
            nconns[0] -= 1
        if p.wait_head != NULL:
            _pool_kick(p, w)            # room for a request that waits (served this turn)
    if u.rq_attached:
        u.rq_attached = 0
        stat_sub(cl.stats, w, C_RQ_ACTIVE, 1)
        host_rq_active_add(u.hstats, w, -1)
        fp_atomic_add_i64(&cl.n_rq, -1)
        stat_add(cl.stats, w, C_DESTROY_WITH_ACTIVE_RQ, 1)
        stat_add(cl.stats, w, C_DESTROY_LOCAL_WITH_ACTIVE_RQ + remote, 1)
    if u.pending:
        u.pending = 0
        stat_sub(cl.stats, w, C_RQ_PENDING_ACTIVE, 1)
        host_stat_sub(u.hstats, w, HS_RQ_PENDING_ACTIVE, 1)
        fp_atomic_add_i64(&cl.n_pending, -1)
    if u.stream != NULL:
        retry_upstream_focus(u.stream, u)       # (hedging: u's attempt is s.upstream)
        u.stream.upstream.conn = NULL
        u.stream = NULL
    chain_free(&u.in_buf)
    chain_free(&u.out_buf)
    if u.codec != NULL:
        u.codec.release(u)
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
        http_pool_fail(u, 503, UPSTREAM_CONNECT_TIMEOUT)
    else:
        stat_add(u.cluster.stats, w, C_CX_IDLE_TIMEOUT, 1)
        upconn_close(u)


cdef void _upconn_max_duration(Worker* w, void* arg) noexcept nogil:
    """max_connection_duration: an idle connection closes now, a busy one after its
    response (Envoy drains it)."""
    cdef UpConn* u = <UpConn*>arg
    stat_add(u.cluster.stats, w, C_CX_MAX_DURATION, 1)
    if u.h2_role == H2R_CONN:
        _h2_conn_drain(u)               # no new stream; it closes after its last one
        if u.h2.nstreams == 0 and u.h2.nwaiting == 0:
            upconn_close(u)
        return
    if u.state == UC_IDLE:
        upconn_close(u)
    else:
        u.last_request = 1


# -- circuit breakers: requests that wait for a connection (UC_WAITING UpConns, holding
# their stream's request bytes in out_buf) are queued in their pool, oldest first. A
# connection of that pool going idle or closing kicks the pool: at the end of the loop
# turn (http_serve_waiting, outside any pump) the waiting requests take idle connections
# to their host, or connect once the limit allows it.

cdef inline void _wait_unlink(UpConn* u) noexcept nogil:
    cdef HttpPool* p = _pool_of(u.cluster, u.w)
    if not u.queued:
        return
    u.queued = 0
    if u.wait_prev != NULL:
        u.wait_prev.wait_next = u.wait_next
    else:
        p.wait_head = u.wait_next
    if u.wait_next != NULL:
        u.wait_next.wait_prev = u.wait_prev
    else:
        p.wait_tail = u.wait_prev
    u.wait_next = NULL
    u.wait_prev = NULL


cdef void _pool_kick(HttpPool* p, Worker* w) noexcept nogil:
    if p.kicked:
        return
    p.kicked = 1
    fp_atomic_add_int(&p.cluster.refcnt, 1)     # the kick list's reference
    p.kick_next = http_worker(w).kicked
    http_worker(w).kicked = p


cdef bint _upconn_rehome(HttpPool* p, UpConn* u) noexcept nogil:
    """u points into the pool's host set (moved there from an older one if its host
    stayed). False: its host is not in the pool's set."""
    cdef int j
    if u.hosts == p.hosts:
        return True
    j = hostset_find(p.hosts, u.hstats)
    if j < 0:
        return False
    fp_atomic_add_int(&p.hosts.refcnt, 1)
    hostset_decref(u.hosts)
    u.hosts = p.hosts
    u.host_index = j
    return True


cdef int _pool_sync(HttpPool* p, Worker* w) noexcept nogil:
    """Size the pool for the worker's current host set, keeping what it has for the hosts
    that stay (see above). -1: no memory (the pool stays as it was)."""
    cdef HostSet* current = lb_hosts(p.cluster, w)
    cdef UpConn** idle
    cdef int* nconns
    cdef UpConn* u
    cdef UpConn* tail
    cdef int i, j, n
    if p.hosts == current and p.idle != NULL:
        return 0
    n = current.nhosts if current != NULL else 0
    idle = <UpConn**>calloc(max(1, n), sizeof(UpConn*))
    nconns = <int*>calloc(max(1, n), sizeof(int))
    if idle == NULL or nconns == NULL:
        free(idle)
        free(nconns)
        return -1
    if p.idle != NULL:
        # The hosts that left: their idle connections close (before the lists move, while
        # they are still linked where upconn_close looks for them).
        for i in range(p.nhosts):
            if p.idle[i] != NULL and hostset_find(current, p.hosts.hosts[i].stats) < 0:
                while p.idle[i] != NULL:
                    _pool_drop(p.idle[i])
        for i in range(p.nhosts):
            j = hostset_find(current, p.hosts.hosts[i].stats)
            if j < 0:
                continue
            nconns[j] += p.nconns[i]
            if p.idle[i] == NULL:
                continue
            u = p.idle[i]
            tail = NULL
            while u != NULL:
                u.idle_head = &idle[j]
                fp_atomic_add_int(&current.refcnt, 1)
                hostset_decref(u.hosts)
                u.hosts = current
                u.host_index = j
                tail = u
                u = u.idle_next
            tail.idle_next = idle[j]        # (an address listed twice: one list)
            idle[j] = p.idle[i]
            p.idle[i] = NULL
    free(p.idle)
    free(p.nconns)
    hostset_decref(p.hosts)
    p.idle = idle
    p.nconns = nconns
    p.nhosts = n
    p.hosts = current
    if current != NULL:
        fp_atomic_add_int(&current.refcnt, 1)
    return 0


cdef UpConn** _pool_list(HttpPool* p, Worker* w, int host_index) noexcept nogil:
    """The idle list of host_index in the pool, for the worker's current host set."""
    if _pool_sync(p, w) < 0 or host_index >= p.nhosts:
        return NULL
    return &p.idle[host_index]


cdef void _pool_drop(UpConn* u) noexcept nogil:
    """u leaves its pool's list for good: an idle connection closes; an HTTP/2 one that
    carries streams (or requests waiting for its connect) drains (it closes after them),
    so no stream fails here, where the caller may be acquiring for another one."""
    if u.h2_role == H2R_CONN and (u.h2.nstreams or u.h2.nwaiting):
        _h2_conn_drain(u)
    else:
        upconn_close(u)


cdef void http_pool_close_idle(HttpPool* p) noexcept nogil:
    """Close the pool's idle connections (its cluster was removed)."""
    cdef int i
    if p.idle == NULL:
        return
    for i in range(p.nhosts):
        while p.idle[i] != NULL:
            _pool_drop(p.idle[i])


cdef inline bint _upconn_attach(UpConn* u) noexcept nogil:
    """u.stream now uses u (a pooled connection, or one that just connected): Envoy's
    upstream_rq_total/_active count requests bound to a connection. False (nothing
    counted but upstream_rq_active_overflow) when the cluster's max_requests is reached:
    Envoy checks that limit here, when a request is bound to a connection."""
    cdef ClusterCfg* cl = u.cluster
    cdef ClusterParams* prm = cluster_params(cl, u.w)
    if cb_full(&cl.n_rq, prm.max_rq):
        stat_add(cl.stats, u.w, C_RQ_ACTIVE_OVERFLOW, 1)
        if u.stream != NULL:
            u.stream.response_flags |= RF_UO
        return False
    u.rq_attached = 1
    fp_atomic_add_i64(&cl.n_rq, 1)
    stat_add(cl.stats, u.w, C_RQ_TOTAL, 1)
    stat_add(cl.stats, u.w, C_RQ_ACTIVE, 1)
    host_stat_add(u.hstats, u.w, HS_RQ_TOTAL, 1)
    host_rq_active_add(u.hstats, u.w, 1)
    outlier_report_local(u.hstats, u.w, OUT_CONNECT_SUCCESS)     # Envoy's pool ready
    u.nrequests += 1
    if prm.max_rq_per_cx and u.nrequests >= prm.max_rq_per_cx:
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
    u.codec.start(u, s.method)


cdef inline uint64_t _tls_gen(TlsProvider* tls) noexcept nogil:
    return tls.gen if tls != NULL else 0


cdef inline bint _upconn_tls_stale(UpConn* u) noexcept nogil:
    """u's transport is not what its cluster now asks for (plaintext made before the cluster
    took TLS, TLS made before it dropped it, or another TLS provider): a request must not go
    over it."""
    cdef TlsProvider* want = cluster_params(u.cluster, u.w).tls
    if u.ep.tls == NULL:
        return want != NULL and u.state != UC_CONNECTING     # (TLS starts once TCP is up)
    return (<TlsConn*>u.ep.tls).provider != want


cdef void _pool_sweep_tls(HttpPool* p, Worker* w) noexcept nogil:
    """Once per change of the cluster's TLS provider (its generation, not its address,
    which a later provider may reuse): close the idle connections, to every host, of a
    transport the cluster no longer uses. Between changes none can be in the lists: a
    released connection is checked on its way in (http_pool_release) and a new one starts
    TLS with the provider of its connect time."""
    cdef uint64_t gen = _tls_gen(cluster_params(p.cluster, w).tls)
    cdef UpConn** pp
    cdef UpConn* x
    cdef int i
    if p.tls_gen == gen:
        return
    p.tls_gen = gen
    for i in range(p.nhosts):
        pp = &p.idle[i]
        while pp[0] != NULL:
            x = pp[0]
            if _upconn_tls_stale(x):
                _pool_drop(x)           # (unlinks x)
            else:
                pp = &x.idle_next


cdef UpConn** _pool_find_for(HttpPool* p, UpConn** head, HStream* s) noexcept nogil:
    """Where in an idle list (of p's current host set: _pool_list) the connection for s's
    request is linked (_pool_pop takes it from there): the first one, but under auto_sni
    the first made for the request's server name, as a TLS connection's SNI is fixed at
    its handshake (NULL link: none fits). Connections of a transport the cluster no longer
    uses are closed first (_pool_sweep_tls: only after a change, not per request)."""
    cdef TlsConn* t
    cdef char name[256]
    cdef size_t hn = 0
    cdef const char* host
    _pool_sweep_tls(p, s.c.w)
    # (the sweep's rule, checked once more where a request is about to go)
    while head[0] != NULL and _upconn_tls_stale(head[0]):
        _pool_drop(head[0])
    if head[0] == NULL or head[0].ep.tls == NULL:
        return head
    t = <TlsConn*>head[0].ep.tls
    if t.ctx.sni != NULL or not t.ctx.auto_sni:
        return head
    host = _head_field(&s.head, "host", &hn)
    tls_server_name(t.ctx, host, hn if host != NULL else 0, name)
    while head[0] != NULL:
        t = <TlsConn*>head[0].ep.tls
        if t != NULL and strcmp(t.host, name) == 0:
            return head
        head = &head[0].idle_next
    return head


cdef inline UpConn** _pool_skip_h2(UpConn** head) noexcept nogil:
    """The link of the first HTTP/1.1 connection of an idle list (HTTP/2 connections share
    the list: codec_h2_client.pxi)."""
    while head != NULL and head[0] != NULL and head[0].h2_role != H2R_NONE:
        head = &head[0].idle_next
    return head


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
    u.hosts = lb_hosts(cl, w)
    fp_atomic_add_int(&u.hosts.refcnt, 1)      # so pointers into it outlive a DNS change
    host_stats_hold(&u.hstats, u.hosts.hosts[host_index].stats)
    u.state = UC_WAITING
    u.stream = s
    u.codec = &H1_CLIENT_CODEC          # (an HTTP/2 pool will hand out its own streams)
    u.codec.start(u, s.method)          # HEAD and CONNECT change how the response ends
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
    cdef int* nconns = _pool_host_conns(_pool_of(cl, w), u.hosts, u.host_index)
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
    if (u.stream == NULL or not u.stream.connect) and nconns != NULL:
        nconns[0] += 1
        u.host_counted = 1
    stat_add(cl.stats, w, C_CX_TOTAL, 1)
    stat_add(cl.stats, w, C_CX_ACTIVE, 1)
    host_stat_add(u.hstats, w, HS_CX_TOTAL, 1)
    host_stat_add(u.hstats, w, HS_CX_ACTIVE, 1)
    if u.h2_role == H2R_CONN:
        if not u.h2.auto:               # (auto_config: counted once ALPN has chosen)
            stat_add(cl.stats, w, C_CX_HTTP2_TOTAL, 1)
    elif u.stream == NULL or not u.stream.connect:   # (a CONNECT's upstream is TCP in Envoy)
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
    timer_arm(w, &u.timer, cluster_params(cl, w).connect_timeout_ms)
    return 0


cdef UpConn* http_pool_acquire(HStream* s, ClusterCfg* cl) noexcept nogil:
    """A pooled idle connection to the chosen host (ready), or a new one (pending:
    connecting, or waiting for the cluster's max_connections to allow it). NULL: s gets a
    local reply, which s.response_flags tells (RF_UO: a circuit breaker overflowed; else
    no host or the connection failed at once). See the contract at the top."""
    cdef Worker* w = s.c.w
    cdef HttpPool* p = _pool_of(cl, w)
    cdef ClusterParams* prm = cluster_params(cl, w)
    cdef Host* host = cluster_pick(cl, w, &s.lb)
    cdef int idx
    cdef UpConn** head
    cdef UpConn* u
    if host == NULL:
        stat_add(cl.stats, w, C_NONE_HEALTHY, 1)
        s.response_flags |= RF_UH
        return NULL
    memcpy(&s.upstream.addr, &host.addr, host.addrlen)
    s.upstream.addrlen = host.addrlen
    host_stats_hold(&s.upstream.hstats, host.stats)
    s.upstream.start_ms = w.now
    idx = <int>(host - lb_hosts(cl, w).hosts)
    head = _pool_list(p, w, idx)
    if head != NULL and not s.connect:                     # a tunnel gets its own
        head = _pool_skip_h2(_pool_find_for(p, head, s))
    if not s.connect and (prm.protocol == UP_HTTP2 or (prm.protocol == UP_AUTO and prm.tls != NULL
                                                       and (head == NULL or head[0] == NULL))):
        # Streams on shared connections (codec_h2_client.pxi); under auto_config an idle
        # HTTP/1.1 connection (the server chose it) is used first.
        return h2_pool_acquire(s, cl, idx)
    if head != NULL and head[0] != NULL and not s.connect:
        if cb_full(&cl.n_rq, prm.max_rq):
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
    if cb_full(&cl.n_pending, prm.max_pending):
        stat_add(cl.stats, w, C_RQ_PENDING_OVERFLOW, 1)
        s.response_flags |= RF_UO
        return NULL
    u = _upconn_new(s, cl, idx)
    if u == NULL:
        return NULL
    if cb_full(&cl.n_cx, prm.max_cx):
        # ...then, at max_connections, counts upstream_cx_overflow and lets the request wait
        # for one of this worker's connections to the host; with none (they are all on other
        # workers or hosts) it connects anyway, or the request could wait forever.
        stat_add(cl.stats, w, C_CX_OVERFLOW, 1)
        if _pool_has_conn_to(p, u.hosts, idx):
            u.queued = 1
            u.wait_prev = p.wait_tail
            if p.wait_tail != NULL:
                p.wait_tail.wait_next = u
            else:
                p.wait_head = u
            p.wait_tail = u
            return u
    if _upconn_connect(u, host) < 0:
        stat_add(cl.stats, w, C_RQ_PENDING_FAILURE_EJECT, 1)
        outlier_report_local(s.upstream.hstats, w, OUT_CONNECT_FAILED)     # (as a later connect failure)
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
    if s != NULL:
        retry_upstream_focus(s, u)
    u.stream = NULL
    chain_clear(&u.out_buf)
    if s != NULL:
        s.upstream.conn = NULL
    http_pool_release(u, s == NULL or not s.connect)
    if s != NULL:
        stream_upstream_failed(s, 503, UPSTREAM_OVERFLOW)


cdef void http_pool_release(UpConn* u, bint reusable) noexcept nogil:
    """The stream is done with u: keep it in the pool or close it."""
    cdef HttpPool* p = _pool_of(u.cluster, u.w)
    cdef UpConn** head
    if u.h2_role == H2R_STREAM:
        h2_pool_release(u)
        return
    u.stream = NULL
    if u.rq_attached and u.codec.response_complete(u):
        u.rq_attached = 0               # (an incomplete response stays: a destroy with active rq)
        stat_sub(u.cluster.stats, u.w, C_RQ_ACTIVE, 1)
        host_rq_active_add(u.hstats, u.w, -1)
        fp_atomic_add_i64(&u.cluster.n_rq, -1)
    # ep.hup: the upstream's FIN came with (or right behind) the response it answered; a
    # short read never reads on to see it, so the event flag is all there is.
    if not reusable or u.eof or u.ep.hup or u.in_buf.length or u.out_buf.length \
            or u.last_request or cluster_params(u.cluster, u.w).removed or _upconn_tls_stale(u):
        upconn_close(u)
        return
    # After a host-set swap: kept if its host stayed, else closed.
    if _pool_sync(p, u.w) < 0 or not _upconn_rehome(p, u):
        upconn_close(u)
        return
    head = &p.idle[u.host_index]
    u.state = UC_IDLE
    u.idle_next = head[0]
    head[0] = u
    u.idle_head = head
    if cluster_params(u.cluster, u.w).pool_idle_ms:
        timer_arm(u.w, &u.timer, cluster_params(u.cluster, u.w).pool_idle_ms)
    if p.wait_head != NULL:
        _pool_kick(p, u.w)              # a request waits for a connection: this one


cdef inline void http_pool_cancel(UpConn* u) noexcept nogil:
    """The stream that owns u goes away before or while u carries its exchange: an HTTP/1.1
    connection cannot drop a request half-way, so it closes (u.stream.upstream.conn is cleared).
    An HTTP/2 stream is reset (CANCEL); its connection stays."""
    if u.h2_role == H2R_STREAM:
        h2_pool_release(u)
        return
    upconn_close(u)


cdef void http_pool_fail(UpConn* u, int status, const char* reason) noexcept nogil:
    """u broke before its stream got a complete response."""
    cdef HStream* s = u.stream
    if s != NULL:
        retry_upstream_focus(s, u)
    if fp_log_level <= LOG_DEBUG:
        fp_log(u.w.index, "pool", u.id, 0, "upstream connection failed: %s", reason)
    if u.h2_role == H2R_STREAM:
        h2_pool_fail(u, status, reason)     # the stream fails; its connection stays
        return
    if u.h2_role == H2R_CONN:
        _h2_conn_close_streams(u, status, reason)   # every stream on it, then it closes
        return
    if s != NULL:
        s.response_flags |= RF_UF if u.state == UC_CONNECTING else (RF_UPE if status == 502 else RF_UC)
    if u.pending:
        stat_add(u.cluster.stats, u.w, C_RQ_PENDING_FAILURE_EJECT, 1)
    upconn_close(u)
    if s != NULL:
        stream_upstream_failed(s, status, reason)


cdef int _upconn_tls_start(UpConn* u, TlsProvider* tls) noexcept nogil:
    """The TCP connection is up: start its TLS handshake, with the server name of the
    request it was opened for (auto_sni). -1: no memory."""
    cdef size_t hn = 0
    cdef const char* host = NULL
    u.ep.tls = tls_conn_new(u.w, tls, u.ep.fd)
    if u.ep.tls == NULL:
        return -1
    if u.stream != NULL:
        host = _head_field(&u.stream.head, "host", &hn)
    elif u.h2_role == H2R_CONN and u.h2.waiting != NULL and u.h2.waiting.stream != NULL:
        host = _head_field(&u.h2.waiting.stream.head, "host", &hn)    # (the first request's)
    tls_client_prepare(<TlsConn*>u.ep.tls, host, hn if host != NULL else 0)
    if u.h2_role == H2R_CONN:
        h2_offer_alpn(u)
    return 0


cdef void upconn_on_event(Worker* w, UpConn* u, uint32_t events) noexcept nogil:
    cdef int err = 0
    cdef socklen_t n = sizeof(int)
    cdef TlsProvider* tls
    cdef int r
    if u.state == UC_CLOSED:
        return
    if u.state == UC_CONNECTING:
        if u.ep.tls == NULL:
            if not events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                return
            if getsockopt(u.ep.fd, SOL_SOCKET, SO_ERROR, &err, &n) < 0 or err != 0:
                stat_add(u.cluster.stats, w, C_CONNECT_FAIL, 1)
                host_stat_add(u.hstats, w, HS_CX_CONNECT_FAIL, 1)
                u.remote_close = 1          # refused or reset: Envoy's RemoteClose
                # Envoy 1.40 names the side that failed: "remote connection failure".
                http_pool_fail(u, 503, UPSTREAM_REMOTE_FAILURE)
                return
            tls = cluster_params(u.cluster, w).tls
            if tls != NULL and _upconn_tls_start(u, tls) < 0:
                stat_add(u.cluster.stats, w, C_CONNECT_FAIL, 1)
                host_stat_add(u.hstats, w, HS_CX_CONNECT_FAIL, 1)
                http_pool_fail(u, 503, UPSTREAM_CONNECT_FAILURE)
                return
        if u.ep.tls != NULL:
            # Upstream TLS: the connection is connected once the handshake completes (the
            # connect timer covers both); a handshake or verification failure is a connect
            # failure (503 UF), as Envoy's.
            r = tls_handshake(&u.ep)
            if r == 0:
                return
            if r < 0:
                stat_add(u.cluster.stats, w, C_CONNECT_FAIL, 1)
                host_stat_add(u.hstats, w, HS_CX_CONNECT_FAIL, 1)
                http_pool_fail(u, 503, UPSTREAM_CONNECT_FAILURE)
                return
            # Records may have come with the handshake's last flight, and the request waits
            # to go: whichever event ended the handshake, try both (an EAGAIN at worst).
            events |= EPOLLIN | EPOLLOUT
        timer_cancel(w, &u.timer)
        if fp_log_level <= LOG_DEBUG:
            fp_log(w.index, "connection", u.id, 0, "connected")
        u.state = UC_BUSY
        if u.pending:
            u.pending = 0
            stat_sub(u.cluster.stats, w, C_RQ_PENDING_ACTIVE, 1)
            host_stat_sub(u.hstats, w, HS_RQ_PENDING_ACTIVE, 1)
            fp_atomic_add_i64(&u.cluster.n_pending, -1)
        if cluster_params(u.cluster, w).max_duration_ms:
            timer_arm(w, &u.duration_timer, cluster_params(u.cluster, w).max_duration_ms)
        if u.h2_role == H2R_CONN and u.h2.auto and not h2_alpn_selected(u):
            h2_conn_fallback_h1(u)      # auto_config: the server speaks HTTP/1.1
            if u.state != UC_BUSY or u.stream == NULL:
                return
        elif u.h2_role == H2R_CONN:
            _h2_conn_connected(u)       # the session starts; the requests waiting on it go
            if u.state != UC_BUSY:
                return
        elif u.stream != NULL and not _upconn_attach(u):
            _upconn_overflowed(u)
            return
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        u.ep.readable = 1
    if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        u.ep.hup = 1
    if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
        u.ep.writable = 1
    endp_tls_event(&u.ep, events)
    if u.state == UC_IDLE:
        # An idle pooled connection has nothing to say; data or EOF means it is done.
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            # (Under TLS a record that carries no data, a TLS 1.3 session ticket, may
            # come after the response: read through TLS, only data or EOF ends it.)
            if u.ep.tls != NULL and not events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR) \
                    and endp_discard(&u.ep) < 0 and errno == EAGAIN:
                u.ep.readable = 0
                return
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
    if u.h2_role == H2R_CONN:
        h2_conn_pump(u)
        return
    if u.h2_role == H2R_STREAM:
        h2_handle_pump(u)
        return
    while u.state == UC_BUSY:
        progress = False
        if u.out_buf.length and u.ep.writable:
            n = endp_write(&u.ep, &u.out_buf, NULL, False)
            if n > 0:
                stat_add(u.cluster.stats, u.w, C_TX_BYTES, <uint64_t>n)
                progress = True
                if u.stream != NULL:
                    u.stream.last_active_ms = u.w.now
            elif n < 0 and errno == EAGAIN:
                u.ep.writable = 0
            elif n < 0 and errno != EINTR:
                u.remote_close = 1
                http_pool_fail(u, 503, UPSTREAM_TERMINATION)
                return
        s = u.stream
        c = s.c if s != NULL else NULL
        if s != NULL:
            retry_upstream_focus(s, u)
        if s != NULL and not s.upstream.req_done and c.req_pipe.bytes:
            if stream_forward_request_body(s) < 0:
                break
        if u.ep.readable and not u.eof and u.in_buf.length < HTTP_IO_LIMIT \
                and (c == NULL or c.codec.send_ok(c, s)) \
                and not (c != NULL and (c.rsp_pipe.bytes or (s.resp_started and not _enc_body_filtered(s)
                         and u.in_buf.length == 0 and u.codec.raw_body_left(u) != 0
                         and c.codec.raw_data_ok(c, s) and endp_splice_ok(&u.ep, &c.down)))):
            n = endp_read(&u.ep, &u.in_buf, HTTP_IO_LIMIT - u.in_buf.length, &asked)
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
        if c.codec.multiplexed:
            hconn_pump_later(c)
        else:
            hconn_pump(c)


# ---------------------------------------------------------------- the end of a loop turn

cdef void http_serve_waiting(Worker* w) noexcept nogil:
    """Requests waiting for a connection (max_connections) in the pools kicked this
    turn: each takes an idle connection to its host, or connects once the cluster is under
    max_connections again (or this worker has no connection to the host left). Runs at the
    end of the loop turn, outside any pump."""
    cdef HttpPool* pool
    cdef ClusterCfg* cl
    cdef HostSet* hosts
    cdef UpConn* u
    cdef UpConn* nxt
    cdef UpConn* p
    cdef UpConn** head
    cdef HStream* s
    cdef Host* host
    while http_worker(w).kicked != NULL:
        pool = http_worker(w).kicked
        http_worker(w).kicked = pool.kick_next
        pool.kick_next = NULL
        pool.kicked = 0
        cl = pool.cluster
        u = pool.wait_head
        while u != NULL:
            if not u.queued:
                break       # serving the one before ended it (memory is freed after this)
            nxt = u.wait_next
            s = u.stream
            if s == NULL:
                upconn_close(u)
                u = nxt
                continue
            retry_upstream_focus(s, u)
            hosts = lb_hosts(cl, w)
            if u.hosts != hosts and not (_pool_sync(pool, w) == 0 and _upconn_rehome(pool, u)):
                # Its host left the host set while it waited: pick again from the new one.
                host = cluster_pick(cl, w, &s.lb)
                if host == NULL:
                    _wait_unlink(u)
                    stat_add(cl.stats, w, C_NONE_HEALTHY, 1)
                    http_pool_fail(u, 503, NO_HEALTHY_UPSTREAM)
                    u = nxt
                    continue
                fp_atomic_add_int(&hosts.refcnt, 1)
                hostset_decref(u.hosts)
                u.hosts = hosts
                u.host_index = <int>(host - hosts.hosts)
                # The new host's counters from now on (its pending request moves with it).
                if u.pending:
                    host_stat_sub(u.hstats, w, HS_RQ_PENDING_ACTIVE, 1)
                host_stats_hold(&u.hstats, host.stats)
                if u.pending:
                    host_stat_add(u.hstats, w, HS_RQ_PENDING_ACTIVE, 1)
                host_stats_hold(&s.upstream.hstats, host.stats)
                memcpy(&s.upstream.addr, &host.addr, host.addrlen)
                s.upstream.addrlen = host.addrlen
            host = &u.hosts.hosts[u.host_index]
            if u.h2_role == H2R_STREAM:
                h2_serve_waiting(pool, u)       # a connection with room, or a new one
                u = nxt
                continue
            head = _pool_list(pool, w, u.host_index)
            if head != NULL and not s.connect:
                head = _pool_skip_h2(_pool_find_for(pool, head, s))
            if head != NULL and head[0] != NULL and not s.connect:     # (a tunnel gets its own)
                # An idle connection to its host: the request (already serialized into u's
                # out_buf, never sent) moves to it; u, which never had a socket, ends.
                _wait_unlink(u)
                p = _pool_pop(head)
                _upconn_bind(p, s)
                if chain_move(&p.out_buf, &u.out_buf) < 0:
                    p.stream = NULL
                    upconn_close(p)
                    http_pool_fail(u, 503, UPSTREAM_OVERFLOW)
                    u = nxt
                    continue
                u.stream = NULL
                s.upstream.conn = p
                upconn_close(u)
                if not _upconn_attach(p):
                    _upconn_overflowed(p)       # max_requests: p goes back to the pool
                else:
                    p.ep.writable = 1
                    upconn_pump(p)
            elif not cb_full(&cl.n_cx, cluster_params(cl, w).max_cx) \
                    or not _pool_has_conn_to(pool, u.hosts, u.host_index):
                _wait_unlink(u)
                if _upconn_connect(u, host) < 0:
                    http_pool_fail(u, 503, UPSTREAM_CONNECT_FAILURE)
            u = nxt
        h2_flush_pool(pool)
        cluster_decref(cl)


cdef void http_pool_free_deferred(Worker* w) noexcept nogil:
    """Free the UpConns closed this turn (a pump up the stack may still have held them)."""
    cdef UpConn* u
    while http_worker(w).upconn_deferred != NULL:
        u = http_worker(w).upconn_deferred
        http_worker(w).upconn_deferred = u.next_deferred
        if u.h2_role == H2R_STREAM:
            u.codec.release(u)          # (its response head: a log may read it until now)
        free(u.h2)
        free(u.h2s)
        hostset_decref(u.hosts)
        cluster_decref(u.cluster)
        host_stats_release(&u.hstats)
        free(u)


cdef void http_pool_close_all(Worker* w) noexcept nogil:
    """The worker stops: close every upstream connection it has (idle, busy, connecting,
    waiting). Their streams have gone first."""
    while http_worker(w).upconns != NULL:
        upconn_close(http_worker(w).upconns)
