# Listening sockets: binding (main thread) and accepting (worker).

DEF ACCEPT_BATCH = 64           # accepts per readiness event, so one busy listener can't starve the rest
DEF EMFILE_BACKOFF_MS = 100     # how long accept stays paused when the process is out of fds


cdef void listener_on_event(Worker* w, Endp* ep, uint32_t events) noexcept nogil:
    listener_on_accept(w, <WListener*>ep.owner)


cdef void listener_on_accept(Worker* w, WListener* wl) noexcept nogil:
    cdef int i, fd, err
    cdef ListenerCfg* cfg = wl.cfg
    cdef sockaddr_storage peer          # accept4 returns the peer's address: no getpeername
    cdef socklen_t plen
    for i in range(ACCEPT_BATCH):
        plen = sizeof(peer)
        fd = accept4(wl.ep.fd, <sockaddr*>&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            err = errno
            if err == EAGAIN or err == EINTR:
                return
            if err == ECONNABORTED:
                continue
            stat_add(cfg.lstats, w, L_ACCEPT_FAIL, 1)
            if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                # Out of descriptors or memory. The connection stays in the kernel's
                # backlog; stop watching the socket (level-triggered, it would spin) and
                # look again shortly, when closing connections may have freed fds. The
                # pooled splice pipes hold fds too: they go first.
                pipe_pool_drain(w)
                if not wl.paused:
                    epoll_ctl(w.epfd, EPOLL_CTL_DEL, wl.ep.fd, NULL)
                    wl.paused = 1
                    timer_arm(w, &wl.resume_timer, EMFILE_BACKOFF_MS)
            return
        if cfg.max_connections and fp_atomic_add_i64(&cfg.sock.active, 1) > cfg.max_connections:
            fp_atomic_add_i64(&cfg.sock.active, -1)
            stat_add(cfg.lstats, w, L_CX_OVERFLOW, 1)
            close(fd)
            continue
        elif not cfg.max_connections:
            fp_atomic_add_i64(&cfg.sock.active, 1)
        if cfg.global_active != NULL and fp_atomic_add_i64(cfg.global_active, 1) > cfg.global_max:
            fp_atomic_add_i64(cfg.global_active, -1)
            fp_atomic_add_i64(&cfg.sock.active, -1)
            stat_add(cfg.lstats, w, L_GLOBAL_CX_OVERFLOW, 1)
            close(fd)
            continue
        cfg.start(w, cfg, fd, <sockaddr*>&peer)


cdef inline void listener_cx_release(ListenerCfg* cfg) noexcept nogil:
    """A downstream connection of cfg's listener is gone: it no longer counts against the
    listener's limit nor the engine's global one."""
    fp_atomic_add_i64(&cfg.sock.active, -1)
    if cfg.global_active != NULL:
        fp_atomic_add_i64(cfg.global_active, -1)


cdef int _bind_one(Host* h, str ip, int port, int backlog) except -1:
    """One non-blocking SO_REUSEPORT listening socket on h's address (ip:port, the same
    as text for the error); returns the fd.

    Options set here are inherited by every socket it accepts, which saves each new
    connection the system calls: TCP_NODELAY always, and the loopback tuning
    (_loopback_tune) when the address is a loopback one, so every peer is too."""
    cdef int one = 1
    cdef int fd, err
    fd = socket(h.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        raise OSError(errno, strerror(errno).decode())
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(int))
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(int))
    _set_nodelay(fd)
    _loopback_tune(fd, <sockaddr*>&h.addr)
    if bind(fd, <sockaddr*>&h.addr, h.addrlen) < 0 or listen(fd, backlog) < 0:
        err = errno
        close(fd)
        raise OSError(err, f"cannot listen on {ip}:{port}: {strerror(err).decode()}")
    return fd


cdef void _set_host_port(Host* h, int port) noexcept:
    if h.addr.ss_family == AF_INET6:
        (<sockaddr_in6*>&h.addr).sin6_port = htons(port)
    else:
        (<sockaddr_in*>&h.addr).sin_port = htons(port)


cdef int _bound_port(int fd):
    cdef sockaddr_storage ss
    cdef socklen_t n = sizeof(sockaddr_storage)
    getsockname(fd, <sockaddr*>&ss, &n)
    if ss.ss_family == AF_INET6:
        return ntohs((<sockaddr_in6*>&ss).sin6_port)
    return ntohs((<sockaddr_in*>&ss).sin_port)


def bind_listener(int nworkers, str ip, int port, int backlog, list fds=None):
    """Bind one listening socket per worker on ip:port (port 0: pick one, then bind the
    rest to the same port). Raises OSError when the address is unusable.

    fds: listening sockets on that address to take over instead of binding (a hot
    restart's, passed by the previous process; non-blocking, close-on-exec), worker i
    getting fds[i]; workers beyond them bind their own (SO_REUSEPORT). Owned from the call
    on, closed on error too. Taking the very sockets keeps the connections waiting in
    their accept queues, which closing them would reset."""
    cdef ListenSockHandle h = ListenSockHandle.__new__(ListenSockHandle)
    cdef ListenSock* s = <ListenSock*>calloc(1, sizeof(ListenSock))
    cdef Host addr
    cdef int i
    if s == NULL:
        raise MemoryError()
    s.refcnt = 1
    s.nworkers = nworkers
    s.fds = <int*>malloc(nworkers * sizeof(int))
    s.adopted = <uint8_t*>calloc(nworkers, 1)
    if s.fds == NULL or s.adopted == NULL:
        free(s.fds)
        free(s.adopted)
        free(s)
        raise MemoryError()
    cdef int nadopt = 0 if fds is None else len(fds)
    for i in range(nworkers):
        s.fds[i] = -1
    h.s = s
    for i in range(nadopt):
        if i < nworkers:
            s.fds[i] = fds[i]
        else:
            close(fds[i])               # more than workers: a socket no one would accept on
    # The address is parsed once: every worker's socket binds it, and whether it is a
    # loopback one (accepted sockets inherit the tuning) is read from it.
    _fill_sockaddr(&addr, ip, port)
    s.loopback = _is_loopback(<sockaddr*>&addr.addr)
    if nadopt and port == 0:
        port = _bound_port(s.fds[0])
        _set_host_port(&addr, port)
    for i in range(nadopt, nworkers):
        s.fds[i] = _bind_one(&addr, ip, port, backlog)
        if port == 0:
            port = _bound_port(s.fds[i])
            _set_host_port(&addr, port)     # the other workers' sockets share the port
    h.address = (ip, port)
    return h
