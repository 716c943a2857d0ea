# The TCP proxy session (Envoy's tcp_proxy): one downstream connection, one upstream
# connection, two directions of flow.
#
# Each direction moves bytes src -> dst in one of two ways:
#   splice    socket -> pipe -> socket with splice(2); the bytes never enter user space.
#             Used when no filter on that direction reads the bytes, once the direction
#             has carried SPLICE_AFTER bytes. The pipe is the direction's bounded buffer, so
#             flow control is free: a full pipe stops reads.
#   buffered  readv into `rbuf`, the filter chain runs over it, what passes moves (no copy)
#             to `buf`, writev from `buf`. Reading pauses while rbuf+buf >= buffer_limit.
# Every direction starts buffered: a short connection (a request and its answer) costs the
# same reads and writes either way, and a pipe would only add its own set-up. A direction
# that keeps streaming switches to splice with a pipe from the worker's pool (dispatcher.pxi)
# as soon as what it copied has gone out; the pipe goes back to the pool, drained, at close.
# Sockets are edge-triggered; Endp.readable/writable remember readiness we haven't used up.
# FIN travels one way at a time (half-close): when a direction's source reaches EOF and
# everything is flushed, the destination gets shutdown(SHUT_WR). The session ends when both
# directions are shut, on a reset (passed on as a reset), an idle timeout or a filter error.

DEF HUP_FIN = 1                 # Endp.hup: RDHUP or HUP, the peer's FIN is in
DEF HUP_ERROR = 2               # Endp.hup: EPOLLERR, a reset or an error


cdef enum SessionState:
    S_FILTERS = 0               # on_new_connection filters have not all continued
    S_CONNECTING = 1
    S_ESTABLISHED = 2
    S_CLOSED = 3

cdef struct Dir:
    Endp* src
    Endp* dst
    uint8_t upward              # 1: downstream -> upstream (read filters, in order)
    uint8_t may_splice          # no filter reads this direction: splice after SPLICE_AFTER bytes
    uint8_t splice              # moving bytes through `pipe` now
    uint8_t src_eof             # src read returned 0
    uint8_t eof_passed          # filters passed end_stream: the FIN may go out
    uint8_t shut                # FIN sent to dst
    uint8_t paused              # reading paused by the buffer limit
    uint8_t stopped             # a filter returned STOP_ITERATION
    int stop_at                 # ... this one
    PooledPipe pipe             # pipe.r < 0: none
    size_t pipe_bytes           # in the pipe now
    uint64_t copied             # bytes read by the buffered path
    Chain rbuf                  # read, not yet through the filters
    Chain buf                   # ready for dst
    Chain inj                   # bytes a filter injected on a splice direction

cdef struct Session:
    Worker* w
    Session* prev
    Session* next
    Session* next_deferred
    uint64_t id
    int state
    int attempts
    uint8_t up_counted          # upstream socket counted in upstream_cx_active
    StatBlock* hstats           # the upstream host's counters (HS_*, admin /clusters)
    Endp down
    Endp up
    Dir d2u
    Dir u2d
    ListenerCfg* cfg
    CfgConn cfg_link            # in cfg's list of its connections (its drain closes them)
    Timer connect_timer
    Timer idle_timer
    uint64_t last_active
    PyObject* pyconn            # the Python Connection (owns the filter instances) or NULL


cdef struct TcpWorker:          # the TCP proxy's per-worker state, in Worker.state[_TCP_SLOT]
    Session* sessions           # intrusive list of live sessions
    Session* deferred           # closed sessions freed at the end of the loop turn


cdef int _TCP_SLOT              # set at import (worker_subsystem_add, at the end of this file)


cdef inline TcpWorker* tcp_worker(Worker* w) noexcept nogil:
    return <TcpWorker*>w.state[_TCP_SLOT]


cdef inline void _dir_init(Dir* d, Endp* src, Endp* dst, uint8_t upward) noexcept nogil:
    d.src = src
    d.dst = dst
    d.upward = upward
    d.pipe.r = -1
    d.pipe.w = -1
    chain_init(&d.rbuf)
    chain_init(&d.buf)
    chain_init(&d.inj)


cdef inline void _count_rx(Session* s, Dir* d, size_t n) noexcept nogil:
    if d.upward:
        stat_add(s.cfg.tstats, s.w, T_RX_BYTES, n)
    else:
        stat_add(s.cfg.cluster.stats, s.w, C_RX_BYTES, n)


cdef inline void _count_tx(Session* s, Dir* d, size_t n, bint spliced) noexcept nogil:
    if d.upward:
        stat_add(s.cfg.cluster.stats, s.w, C_TX_BYTES, n)
    else:
        stat_add(s.cfg.tstats, s.w, T_TX_BYTES, n)
    stat_add(s.cfg.tstats, s.w, T_SPLICED if spliced else T_COPIED, n)


DEF SPLICE_AFTER = 65536        # bytes a direction copies before it switches to splice


cdef bint _dir_open_pipe(Session* s, Dir* d) noexcept nogil:
    """Switch a direction whose buffers are empty to splice, with a pipe from the worker's
    pool. False when no pipe can be had (e.g. EMFILE): the direction then copies for good."""
    if not pipe_take(s.w, s.cfg.buffer_limit, &d.pipe):
        d.may_splice = 0
        return False
    d.pipe_bytes = 0
    d.splice = 1
    return True


cdef int _dir_pump_splice(Session* s, Dir* d) noexcept nogil:
    """Returns 0, -1 when src failed (reset), -2 when dst failed."""
    cdef ssize_t n
    cdef bint progress
    while True:
        progress = False
        if d.pipe_bytes and d.dst.writable:
            n = splice(d.pipe.r, NULL, d.dst.fd, NULL, d.pipe_bytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                d.pipe_bytes -= <size_t>n
                _count_tx(s, d, <size_t>n, True)
                progress = True
            elif n < 0:
                if errno == EAGAIN:
                    d.dst.writable = 0
                elif errno != EINTR:
                    return -2
        if d.inj.length and d.pipe_bytes < d.pipe.cap:
            # Bytes a filter wrote go through the pipe too, so they keep their place.
            n = chain_write_fd(&d.inj, d.pipe.w)
            if n > 0:
                d.pipe_bytes += <size_t>n
                progress = True
        if not d.src_eof and d.src.readable and d.inj.length == 0 and d.pipe_bytes < d.pipe.cap:
            n = splice(d.src.fd, NULL, d.pipe.w, NULL, d.pipe.cap - d.pipe_bytes,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                d.pipe_bytes += <size_t>n
                _count_rx(s, d, <size_t>n)
                progress = True
            elif n == 0:
                d.src_eof = 1
                d.eof_passed = 1
            elif errno == EAGAIN:
                # With bytes in the pipe, EAGAIN may mean "pipe full" rather than "socket
                # drained"; keep the readiness so the next turn tries again.
                if d.pipe_bytes == 0:
                    d.src.readable = 0
            elif errno != EINTR:
                return -1
        if not progress:
            break
    return 0


cdef int _dir_pump_buffered(Session* s, Dir* d) noexcept nogil:
    """Returns 0, 1 when the direction has just switched to splice (pump it with
    _dir_pump_splice), -1 when src failed, -2 when dst failed, -3 on a filter error."""
    cdef ssize_t n
    cdef bint progress, streaming, eof_next
    cdef size_t held, limit = s.cfg.buffer_limit
    cdef size_t asked = 0, offered = 0
    while True:
        progress = False
        streaming = d.may_splice and d.copied >= SPLICE_AFTER and not d.src_eof
        if streaming and d.buf.length == 0 and d.rbuf.length == 0 and d.inj.length == 0:
            # A streaming direction whose copied bytes have all gone out: the rest moves
            # through a pipe. (Until then it reads no more into buffers.)
            if _dir_open_pipe(s, d):
                return 1
            streaming = False                   # no pipe to be had: copy on
        if not streaming and not d.src_eof and d.src.readable:
            held = d.rbuf.length + d.buf.length
            if held >= limit:
                if not d.paused:
                    d.paused = 1
                    stat_add(s.cfg.tstats, s.w, T_PAUSED, 1)
            else:
                if d.paused:
                    d.paused = 0
                    stat_add(s.cfg.tstats, s.w, T_RESUMED, 1)
                eof_next = False
                n = endp_read(d.src, &d.rbuf, limit - held, &asked)
                if n > 0:
                    _count_rx(s, d, <size_t>n)
                    d.copied += <uint64_t>n
                    progress = True
                    if <size_t>n < asked:
                        # A short read drained the socket. Without RDHUP the next bytes
                        # bring a new edge. After RDHUP every byte before the FIN was in
                        # the queue, so this is the end of the stream: no read for the 0.
                        # After an error, read on to it.
                        if d.src.hup == HUP_FIN:
                            d.src_eof = 1
                        elif d.src.hup:
                            eof_next = True
                        else:
                            d.src.readable = 0
                elif n == 0:
                    d.src_eof = 1
                    progress = True
                elif errno == EAGAIN:
                    d.src.readable = 0
                elif errno != EINTR:
                    return -1
                if n >= 0 and dir_run_filters(s, d, -1) < 0:
                    return -3
                if eof_next:
                    continue                    # read that EOF before writing (below)
        if d.buf.length and d.dst.writable:
            # Once the source's EOF has passed, buf holds the last bytes and _dir_pump
            # sends the FIN as soon as they are out: MSG_MORE lets it leave with them,
            # in one segment.
            n = endp_write(d.dst, &d.buf, &offered, d.src_eof and d.eof_passed)
            if n > 0:
                _count_tx(s, d, <size_t>n, False)
                progress = True
                if <size_t>n < offered:
                    d.dst.writable = 0  # its send buffer is full; EPOLLOUT says when it has room
            elif n < 0:
                if errno == EAGAIN:
                    d.dst.writable = 0
                elif errno != EINTR:
                    return -2
        if not progress:
            break
    return 0


cdef int dir_run_filters(Session* s, Dir* d, int resume_after) noexcept nogil:
    """Pass rbuf through the direction's filters into buf. resume_after < 0: new data,
    iterate from the first filter; otherwise continue after that filter. -1 on error."""
    if d.splice:
        return 0
    if s.pyconn == NULL or (s.cfg.splice_read if d.upward else s.cfg.splice_write):
        # No filter reads this direction: hand the bytes straight over.
        chain_move(&d.buf, &d.rbuf)
        if d.src_eof:
            d.eof_passed = 1
        return 0
    if d.eof_passed and d.rbuf.length == 0:
        return 0
    return _py_run_filters(s, d, resume_after)


cdef inline int _dir_pump(Session* s, Dir* d) noexcept nogil:
    cdef int r
    if d.splice:
        r = _dir_pump_splice(s, d)
    else:
        r = _dir_pump_buffered(s, d)
        if r == 1:
            r = _dir_pump_splice(s, d)
    if r == 0 and d.src_eof and d.eof_passed and not d.shut and d.pipe_bytes == 0 \
            and d.buf.length == 0 and d.inj.length == 0:
        d.shut = 1
        # When the other direction is shut already, the session closes in this pump and
        # close() sends the FIN: no shutdown() call needed.
        if not (s.u2d.shut if d.upward else s.d2u.shut):
            endp_shutdown_wr(d.dst)
    return r


cdef void _endp_watch_in(Session* s, Endp* ep, bint src_eof) noexcept nogil:
    """Keep EPOLLIN in ep's interest set only while it is needed.

    Edge-triggered, a notification is needed only once the readiness has been used up
    (ep.readable == 0, i.e. a read said EAGAIN). While the pump still holds unused readiness
    it stopped reading because the direction's buffer (pipe or chain) is full, and only the
    destination becoming writable can move things on. An armed EPOLLIN would then wake the
    worker once per segment the peer sends, for nothing; on loopback each of those wake-ups
    (an IPI to an idle core) is paid on the *sender's* core, in its softirq. So EPOLLIN is
    dropped then, and put back as soon as a read drains the socket. EPOLL_CTL_MOD re-polls
    the socket, so data that arrived in between is reported at once; EPOLLRDHUP, EPOLLERR
    and EPOLLHUP stay armed, so a FIN or reset is still seen while reading is blocked."""
    cdef epoll_event ev
    cdef bint want
    if src_eof or ep.fd < 0:
        return
    # (A TLS write that waits for the peer's bytes needs EPOLLIN whatever the readiness.)
    want = not ep.readable or (ep.tls != NULL and (<TlsConn*>ep.tls).write_wants_read)
    if want == ((ep.events & EPOLLIN) != 0):
        return
    ev.events = (ep.events | EPOLLIN) if want else (ep.events & ~(<uint32_t>EPOLLIN))
    ev.data.ptr = ep
    if epoll_ctl(s.w.epfd, EPOLL_CTL_MOD, ep.fd, &ev) == 0:
        ep.events = ev.events


cdef void session_pump(Session* s) noexcept nogil:
    cdef int r
    if s.state != S_ESTABLISHED:
        return
    s.last_active = s.w.now
    r = _dir_pump(s, &s.d2u)
    if r == 0:
        r = _dir_pump(s, &s.u2d)
        if r == 0:
            if s.d2u.shut and s.u2d.shut:
                session_close(s, False, False)
                return
            _endp_watch_in(s, &s.down, s.d2u.src_eof)
            _endp_watch_in(s, &s.up, s.u2d.src_eof)
            return
        # u2d: src is upstream, dst is downstream
        if r == -1:
            session_close(s, True, False)       # upstream reset: reset the downstream
        elif r == -2:
            session_close(s, False, True)       # downstream gone: reset the upstream
        else:
            session_close(s, False, False)
        return
    if r == -1:
        session_close(s, False, True)           # downstream reset: reset the upstream
    elif r == -2:
        session_close(s, True, False)
    else:
        session_close(s, False, False)


cdef void session_on_event(Worker* w, Endp* ep, uint32_t events) noexcept nogil:
    cdef Session* s = <Session*>ep.owner
    if s.state == S_CLOSED:
        return
    # The peer has closed: no edge will follow, so reads go on to the end (see
    # _dir_pump_buffered).
    if events & EPOLLERR:
        ep.hup = HUP_ERROR
    elif events & (EPOLLRDHUP | EPOLLHUP) and not ep.hup:
        ep.hup = HUP_FIN
    if ep == &s.up and s.state == S_CONNECTING:
        if s.up.tls != NULL:
            _session_tls_step(s)                # the upstream handshake
        elif events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            _session_connect_done(s, events)
        return
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        ep.readable = 1
    if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
        ep.writable = 1
    endp_tls_event(ep, events)
    if s.state != S_ESTABLISHED:
        if ep == &s.down and events & EPOLLERR:
            session_close(s, False, False)      # the client went away before we connected
        elif ep == &s.down and s.down.tls != NULL and tls_handshake(&s.down) < 0:
            # The downstream handshake runs while the upstream connects (as Envoy's
            # transport socket does); its failure ends the session.
            session_close(s, False, False)
        return
    session_pump(s)


# ---- lifecycle ----

cdef void _set_nodelay(int fd) noexcept nogil:
    cdef int one = 1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))


cdef bint _is_loopback(const sockaddr* sa) noexcept nogil:
    cdef const uint8_t* a
    cdef int i
    if sa.sa_family == AF_INET:
        return (<const uint8_t*>&(<const sockaddr_in*>sa).sin_addr)[0] == 127
    if sa.sa_family == AF_INET6:
        a = (<const sockaddr_in6*>sa).sin6_addr.s6_addr
        for i in range(10):
            if a[i] != 0:
                return False
        if a[10] == 0xff and a[11] == 0xff:
            return a[12] == 127                 # v4-mapped 127.0.0.0/8
        if a[10] != 0 or a[11] != 0 or a[12] != 0 or a[13] != 0 or a[14] != 0:
            return False
        return a[15] == 1                       # ::1
    return False


DEF LOOPBACK_SNDBUF = 1048576      # SO_SNDBUF for loopback sockets (the kernel doubles it)

# Whether a new socket's congestion control (the host default) paces: -1 not known yet,
# 0 no, 1 yes (BBR). Learnt from the first socket tuned, so later sockets need no
# getsockopt; a worker race only writes the same value twice. A change of the host default
# takes effect at the next start.
cdef int _default_cc_paced = -1


cdef void _loopback_tune(int fd, const sockaddr* peer) noexcept nogil:
    """Tune the proxy's own socket to a loopback peer for where its kernel work runs.

    On loopback the core that transmits a segment also does its receive processing, and
    everything queued in a send buffer that the peer's window does not admit yet goes out
    later from the peer's ACK softirq, i.e. on the *peer's* core. Two settings keep the
    proxy's sends on the proxy's core:

    * BBR (pacing) is replaced by CUBIC: pacing sends queued segments from a per-socket
      hrtimer or the peer's ACK instead of from send() itself; on loopback it protects no
      bottleneck (no link, no queue). Only the host default BBR is overridden.
    * The send buffer is fixed at LOOPBACK_SNDBUF instead of autotuned (up to tcp_wmem's
      4 MiB here): with a slow reader the proxy then waits for EPOLLOUT and transmits from
      its own splice/writev, rather than leaving megabytes for the reader's core to send.
      Loopback has no bandwidth-delay product for a bigger buffer to cover.

    Measured with iperf3 through the L4 proxy, pinned (benchmarks/README.md): CUBIC
    1.3-1.6x; the fixed send buffer lifts server-to-client from ~9 to ~12 Gbit/s, about
    the direct path, and costs the iperf3 core ~15 % less CPU per GB. Non-loopback
    connections keep every host setting.

    A listening socket bound to a loopback address is tuned once (_bind_one): the sockets
    it accepts inherit both settings (and TCP_NODELAY), so they need no call here."""
    global _default_cc_paced
    cdef char name[16]
    cdef socklen_t n = sizeof(name)
    cdef int sndbuf = LOOPBACK_SNDBUF
    if not _is_loopback(peer):
        return
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(int))
    if _default_cc_paced < 0:
        memset(name, 0, sizeof(name))
        if getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &n) < 0:
            return
        _default_cc_paced = 1 if name[0] == b'b' and name[1] == b'b' and name[2] == b'r' else 0
    if not _default_cc_paced:
        return
    if setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, b"cubic", 5) < 0:
        setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, b"reno", 4)


cdef void _session_idle(Worker* w, void* arg) noexcept nogil:
    cdef Session* s = <Session*>arg
    cdef uint64_t idle = s.cfg.idle_timeout_ms
    if w.now - s.last_active >= idle:
        stat_add(s.cfg.tstats, w, T_IDLE_TIMEOUT, 1)
        session_close(s, False, False)
    else:
        timer_arm(w, &s.idle_timer, idle - (w.now - s.last_active))


cdef void _session_connect_timeout(Worker* w, void* arg) noexcept nogil:
    cdef Session* s = <Session*>arg
    stat_add(s.cfg.cluster.stats, w, C_CONNECT_TIMEOUT, 1)
    _session_connect_failed(s)


cdef void _session_drain_end(void* owner) noexcept nogil:
    """Its listener version's drain time is over (snapshot.pxi): the session ends (a TCP
    proxy has no way to ask its client to leave earlier)."""
    session_close(<Session*>owner, False, False)


cdef void session_start(Worker* w, ListenerCfg* cfg, int fd, const sockaddr* peer) noexcept nogil:
    """A new downstream connection; peer is its address as accept4 returned it (the
    ListenerCfg.start of a TCP proxy listener)."""
    cdef Session* s = <Session*>calloc(1, sizeof(Session))
    if s == NULL:
        close(fd)
        listener_cx_release(cfg)
        return
    fp_atomic_add_int(&cfg.refcnt, 1)
    s.w = w
    s.cfg = cfg
    s.id = (w.next_session_id << 8) | <uint64_t>w.index
    w.next_session_id += 1
    s.down.on_event = session_on_event
    s.down.fd = fd
    s.down.owner = s
    s.up.on_event = session_on_event
    s.up.fd = -1
    s.up.owner = s
    _dir_init(&s.d2u, &s.down, &s.up, 1)
    _dir_init(&s.u2d, &s.up, &s.down, 0)
    timer_init(&s.connect_timer, _session_connect_timeout, s)
    timer_init(&s.idle_timer, _session_idle, s)
    s.last_active = w.now
    cdef TcpWorker* tw = tcp_worker(w)
    s.next = tw.sessions
    if tw.sessions != NULL:
        tw.sessions.prev = s
    tw.sessions = s
    listener_conn_add(w, cfg, &s.cfg_link, s, _session_drain_end)
    w.nsessions += 1
    stat_add(cfg.lstats, w, L_CX_TOTAL, 1)
    stat_add(cfg.lstats, w, L_CX_ACTIVE, 1)
    stat_add(cfg.tstats, w, T_CX_TOTAL, 1)
    stat_add(cfg.tstats, w, T_CX_ACTIVE, 1)
    if not cfg.sock.loopback:   # else inherited from the listening socket, as TCP_NODELAY is
        _loopback_tune(fd, peer)
    if cfg.tls != NULL:
        s.down.tls = tls_conn_new(w, cfg.tls, fd)
        if s.down.tls == NULL:
            session_close(s, True, False)
            return
        if cfg.tls_timeout_ms:
            if tls_conn_arm_timeout(<TlsConn*>s.down.tls, cfg.tls_timeout_ms, _session_tls_timeout, s) < 0:
                session_close(s, True, False)
                return
    cdef epoll_event ev
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.ptr = &s.down
    s.down.events = ev.events
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        session_close(s, False, False)
        return
    s.state = S_FILTERS
    if cfg.nfilters:
        if _py_session_open(s) != 0:
            return                              # held by a filter, or closed on error
    session_connect(s)


cdef void session_connect(Session* s) noexcept nogil:
    """Open the upstream connection, trying up to max_connect_attempts hosts."""
    cdef Worker* w = s.w
    cdef ClusterCfg* c = s.cfg.cluster
    cdef Host* h
    cdef int fd, r
    cdef epoll_event ev
    cdef ClusterParams* prm = cluster_params(c, w)
    cdef LbContext lbc
    if prm.removed:
        # No cluster of that name (removed, or never added): Envoy's tcp_proxy counts
        # downstream_cx_no_route and closes the connection.
        stat_add(s.cfg.tstats, w, T_NO_ROUTE, 1)
        session_close(s, False, False)
        return
    memset(&lbc, 0, sizeof(LbContext))
    while s.attempts < s.cfg.max_connect_attempts:
        lbc.attempt = s.attempts
        h = cluster_pick(c, w, &lbc)
        if h == NULL:
            stat_add(c.stats, w, C_NONE_HEALTHY, 1)
            session_close(s, False, False)
            return
        if cb_full(&c.n_cx, prm.max_cx):
            # The cluster's max_connections (over every worker): Envoy's tcp_proxy counts
            # the overflow and closes the client's connection; nothing waits.
            stat_add(c.stats, w, C_CX_OVERFLOW, 1)
            session_close(s, False, False)
            return
        s.attempts += 1
        host_stats_hold(&s.hstats, h.stats)
        fd = socket(h.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            stat_add(c.stats, w, C_CONNECT_FAIL, 1)
            host_stat_add(s.hstats, w, HS_CX_CONNECT_FAIL, 1)
            continue
        stat_add(c.stats, w, C_CX_TOTAL, 1)
        host_stat_add(s.hstats, w, HS_CX_TOTAL, 1)
        _set_nodelay(fd)
        _loopback_tune(fd, <sockaddr*>&h.addr)
        r = connect(fd, <sockaddr*>&h.addr, h.addrlen)
        if r < 0 and errno != EINPROGRESS:
            close(fd)
            stat_add(c.stats, w, C_CONNECT_FAIL, 1)
            host_stat_add(s.hstats, w, HS_CX_CONNECT_FAIL, 1)
            continue
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        ev.data.ptr = &s.up
        if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            close(fd)
            stat_add(c.stats, w, C_CONNECT_FAIL, 1)
            continue
        s.up.fd = fd
        s.up.events = ev.events
        s.up_counted = 1
        fp_atomic_add_i64(&c.n_cx, 1)
        stat_add(c.stats, w, C_CX_ACTIVE, 1)
        host_stat_add(s.hstats, w, HS_CX_ACTIVE, 1)
        s.state = S_CONNECTING
        timer_arm(w, &s.connect_timer, prm.connect_timeout_ms)
        return
    stat_add(c.stats, w, C_ATTEMPTS_EXCEEDED, 1)
    session_close(s, False, False)


cdef void _session_tls_timeout(void* owner) noexcept nogil:
    session_close(<Session*>owner, False, False)


cdef void _session_connect_failed(Session* s) noexcept nogil:
    cdef Worker* w = s.w
    timer_cancel(w, &s.connect_timer)
    endp_tls_close(&s.up, False)
    endp_forget(w, &s.up)
    close(s.up.fd)
    s.up.fd = -1
    s.up.hup = 0                                # the next attempt's socket starts afresh
    s.up_counted = 0
    fp_atomic_add_i64(&s.cfg.cluster.n_cx, -1)
    stat_sub(s.cfg.cluster.stats, w, C_CX_ACTIVE, 1)
    stat_add(s.cfg.cluster.stats, w, C_CONNECT_FAIL, 1)
    host_stat_sub(s.hstats, w, HS_CX_ACTIVE, 1)
    host_stat_add(s.hstats, w, HS_CX_CONNECT_FAIL, 1)
    s.state = S_FILTERS
    session_connect(s)


cdef void _session_connect_done(Session* s, uint32_t events) noexcept nogil:
    cdef int err = 0
    cdef socklen_t n = sizeof(int)
    # A failed connect reports EPOLLERR (the error is in SO_ERROR); EPOLLOUT alone means it
    # succeeded, and needs no getsockopt.
    if events & (EPOLLERR | EPOLLHUP) and (
            getsockopt(s.up.fd, SOL_SOCKET, SO_ERROR, &err, &n) < 0 or err != 0):
        _session_connect_failed(s)
        return
    cdef TlsProvider* tls = cluster_params(s.cfg.cluster, s.w).tls
    if tls != NULL:
        # Upstream TLS: connected once its handshake completes, within the connect timeout.
        s.up.tls = tls_conn_new(s.w, tls, s.up.fd)
        if s.up.tls == NULL:
            _session_connect_failed(s)
            return
        tls_client_prepare(<TlsConn*>s.up.tls, NULL, 0)
        _session_tls_step(s)
        return
    _session_established(s, (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0)


cdef void _session_tls_step(Session* s) noexcept nogil:
    """Drive the upstream handshake; a failure is a connect failure (the next attempt)."""
    cdef int r = tls_handshake(&s.up)
    if r == 0:
        return
    if r < 0:
        _session_connect_failed(s)
        return
    _session_established(s, True)           # (records may have come with the handshake)


cdef void _session_established(Session* s, bint up_readable) noexcept nogil:
    timer_cancel(s.w, &s.connect_timer)
    s.state = S_ESTABLISHED
    # Only what came with the connect's completion: later bytes bring their own edge.
    s.up.readable = up_readable
    s.up.writable = 1
    s.down.readable = 1                         # its edge may have come while we connected
    s.down.writable = 1
    # Never through a pipe where user-space TLS has to see the bytes.
    s.d2u.may_splice = s.cfg.splice_read and endp_splice_ok(&s.down, &s.up)
    s.u2d.may_splice = s.cfg.splice_write and endp_splice_ok(&s.up, &s.down)
    if s.cfg.idle_timeout_ms:
        timer_arm(s.w, &s.idle_timer, s.cfg.idle_timeout_ms)
    session_pump(s)


cdef void _discard_input(int fd) noexcept nogil:
    """Read and drop what the peer sent, so close() sends FIN rather than RST."""
    cdef char scratch[4096]
    cdef int i
    for i in range(16):
        if read(fd, scratch, sizeof(scratch)) <= 0:
            return


cdef void _close_fd(int fd, bint rst, bint drained=False) noexcept nogil:
    """Close a socket: with an RST when rst, else with a FIN, after dropping unread input
    (unless drained: the caller has read its EOF, so nothing can be left)."""
    cdef linger lg
    if fd < 0:
        return
    if rst:
        lg.l_onoff = 1
        lg.l_linger = 0
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(linger))
    elif not drained:
        _discard_input(fd)
    close(fd)


cdef void _dir_release(Worker* w, Dir* d) noexcept nogil:
    pipe_give_back(w, &d.pipe, d.pipe_bytes)   # kept for reuse only if drained
    d.pipe_bytes = 0
    d.splice = 0
    chain_free(&d.rbuf)
    chain_free(&d.buf)
    chain_free(&d.inj)


cdef void session_close(Session* s, bint rst_down, bint rst_up) noexcept nogil:
    """End the session now. Frees nothing that an event of this loop turn may still point
    at: the struct itself goes on the deferred list."""
    cdef Worker* w = s.w
    if s.state == S_CLOSED:
        return
    s.state = S_CLOSED
    timer_cancel(w, &s.connect_timer)
    timer_cancel(w, &s.idle_timer)
    if s.pyconn != NULL:
        _py_session_closed(s)
    if rst_down or rst_up:
        stat_add(s.cfg.tstats, w, T_RESET_SENT, 1)
    endp_tls_close(&s.down, not rst_down)
    endp_tls_close(&s.up, not rst_up)
    endp_forget(w, &s.down)
    endp_forget(w, &s.up)
    _close_fd(s.down.fd, rst_down, s.d2u.src_eof)
    _close_fd(s.up.fd, rst_up, s.u2d.src_eof)
    _dir_release(w, &s.d2u)
    _dir_release(w, &s.u2d)
    stat_sub(s.cfg.lstats, w, L_CX_ACTIVE, 1)
    stat_add(s.cfg.lstats, w, L_CX_DESTROY, 1)
    stat_sub(s.cfg.tstats, w, T_CX_ACTIVE, 1)
    if s.up_counted:
        s.up_counted = 0
        fp_atomic_add_i64(&s.cfg.cluster.n_cx, -1)
        stat_sub(s.cfg.cluster.stats, w, C_CX_ACTIVE, 1)
        host_stat_sub(s.hstats, w, HS_CX_ACTIVE, 1)
        stat_add(s.cfg.cluster.stats, w, C_DESTROY_REMOTE if rst_down else C_DESTROY_LOCAL, 1)
        stat_add(s.cfg.cluster.stats, w, C_CX_DESTROY, 1)
    listener_cx_release(s.cfg)
    listener_conn_remove(w, s.cfg, &s.cfg_link)
    # unlink from the live list, link into the deferred list
    if s.prev != NULL:
        s.prev.next = s.next
    else:
        tcp_worker(w).sessions = s.next
    if s.next != NULL:
        s.next.prev = s.prev
    w.nsessions -= 1
    s.next_deferred = tcp_worker(w).deferred
    tcp_worker(w).deferred = s


cdef void sessions_free_deferred(Worker* w, void* arg) noexcept nogil:
    """End of turn: free the sessions closed during it (an event fetched in the same turn
    may still point at one)."""
    cdef TcpWorker* tw = <TcpWorker*>arg
    cdef Session* s = tw.deferred
    cdef Session* nxt
    tw.deferred = NULL
    while s != NULL:
        nxt = s.next_deferred
        listener_cfg_decref(s.cfg)
        host_stats_release(&s.hstats)
        free(s)
        s = nxt


cdef void _sessions_teardown(Worker* w, void* arg) noexcept nogil:
    cdef TcpWorker* tw = <TcpWorker*>arg
    while tw.sessions != NULL:
        session_close(tw.sessions, False, False)


cdef int _tcp_worker_init(Worker* w) noexcept nogil:
    cdef TcpWorker* tw = <TcpWorker*>calloc(1, sizeof(TcpWorker))
    if tw == NULL:
        return -1
    w.state[_TCP_SLOT] = tw
    if worker_add_end_of_turn(w, sessions_free_deferred, tw) < 0:
        return -1
    return worker_add_teardown(w, _sessions_teardown, tw)


cdef void _tcp_worker_fini(Worker* w) noexcept nogil:
    free(w.state[_TCP_SLOT])
    w.state[_TCP_SLOT] = NULL


_TCP_SLOT = worker_subsystem_add(_tcp_worker_init, _tcp_worker_fini, NULL)
