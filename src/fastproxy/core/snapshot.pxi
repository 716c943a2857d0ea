# Config snapshots and their propagation to workers.
#
# The main thread compiles the Python config into immutable C structs:
#   ListenSock   the listening sockets of one address, one SO_REUSEPORT fd per worker;
#                kept across snapshots while the address stays, so no connection is
#                refused during an update.
#   ListenerCfg  everything a new connection on that listener needs (cluster, timeouts,
#                filters, stats) and the function that starts it: the listener decides
#                which subsystem serves its connections (the TCP proxy's session_start, or
#                a ConnHandler's, e.g. the HTTP connection manager's); reference-counted.
# A snapshot is the list of ListenerCfgs; applying it is a message to each worker. A
# connection holds a reference to the ListenerCfg it was accepted under, so old config
# lives exactly as long as its last connection.
#
# Drain of a retired version (Envoy's listener drain, DrainManagerImpl): when an update
# changes or removes a listener, the main thread stamps the old ListenerCfg's drain window
# (drain_start_ms .. drain_end_ms) before it posts the snapshot that retires it. From then
# on its connections are asked to close (listener_drain_close: an HTTP response says
# Connection: close with a probability rising from 0 to 1 over the window, or always with
# the immediate strategy), and each worker that still has connections of it arms one
# timer (ListenerDrain) that closes whatever is left at drain_end_ms. Each ListenerCfg
# keeps, per worker, the list of the connections accepted under it (CfgConn), so that
# end costs O(its connections), and the timer goes (with its reference) as soon as the
# last of them closes.

# Takes an accepted connection (fd, peer as accept4 gave it, counted in cfg.sock.active):
# owns fd from then on, and calls listener_cx_release(cfg) when the connection ends.
ctypedef void (*conn_start_t)(Worker* w, ListenerCfg* cfg, int fd, const sockaddr* peer) noexcept nogil
# Closes a connection now (its owner's close: it unlinks its CfgConn on the way).
ctypedef void (*cfgconn_close_t)(void* owner) noexcept nogil

cdef struct CfgConn:            # a connection's link in its ListenerCfg's list on its worker
    CfgConn* prev
    CfgConn* next
    void* owner                 # the HConn or Session
    cfgconn_close_t force_close

cdef struct ListenerDrain:      # a worker's drain-end timer for one retired ListenerCfg
    Timer timer
    ListenerCfg* cfg            # one reference while armed
    ListenerDrain* prev         # in Worker.draining
    ListenerDrain* next
    uint8_t armed

cdef struct ListenSock:
    int refcnt                  # atomic: main thread's handle + each worker's slot
    int nworkers
    int* fds                    # fds[w] is owned (and closed) by worker w once applied
    int64_t active              # atomic: connections open on this listener, all workers
    uint8_t* adopted            # adopted[w]: worker w took ownership of fds[w]
    uint8_t loopback            # bound to a loopback address: accepted sockets inherit its tuning
    uint8_t handed_over         # its fds went to a new process (hot restart): when it leaves a
                                # worker's set, idle HTTP connections are not closed at once (a
                                # client may be sending on one); their next response says close

cdef struct ListenerCfg:
    int refcnt                  # atomic
    ListenSock* sock
    conn_start_t start          # who serves an accepted connection
    ClusterCfg* cluster
    StatBlock* lstats
    StatBlock* tstats
    uint64_t idle_timeout_ms    # 0: none
    int max_connect_attempts
    int64_t max_connections     # 0: unlimited
    int64_t* global_active      # the engine's count of downstream connections, when it has a
    int64_t global_max          # global limit (Envoy's overload.global_downstream_max_connections); else NULL
    size_t buffer_limit
    PyObject* filter_factories  # tuple of callables, or NULL: touched only with the GIL
    int nfilters
    uint8_t splice_read         # no filter reads downstream bytes: splice that direction
    uint8_t splice_write        # no filter reads upstream bytes
    HttpCfg* http               # an HTTP listener's connection manager, else NULL
    StatBlock* lhstats          # listener.<address>.http.<prefix>.* (HTTP listeners), else NULL
    TlsProvider* tls            # its connections are TLS with this server context (one reference), else NULL
    uint64_t tls_timeout_ms     # transport_socket_connect_timeout: the handshake's limit; 0: none
    int nworkers
    CfgConn** conns             # conns[w]: worker w's open connections accepted under this config
    ListenerDrain* drains       # drains[w]: worker w's drain-end timer (ListenerCfgHandle.start_drain)
    int64_t nconns              # atomic: its open connections, all workers
    # The drain window, set once by the main thread before the snapshot that retires this
    # version is posted; drain_end_ms is published last (0: not draining).
    uint64_t drain_start_ms     # CLOCK_MONOTONIC milliseconds
    uint64_t drain_end_ms       # every connection still open then is closed
    uint8_t drain_immediate     # every next response closes (else the gradual ramp)
    # A listener with filter chains (listener_filters.pxi): start picks one of these per
    # connection, each a ListenerCfg of its own that owns the connection from then on;
    # this one's conns are the connections still in its listener filter. Else NULL.
    ChainSet* chains
    # A chain of a listener with the tls_inspector: its connections' SNI is their requested
    # server name (Envoy's %REQUESTED_SERVER_NAME%, set by that listener filter only).
    uint8_t sni_inspected

cdef struct WListener:          # a worker's slot for one listener of its snapshot
    Endp ep
    ListenSock* sock
    ListenerCfg* cfg
    Timer resume_timer          # re-enables accept after EMFILE
    uint8_t paused
    WListener* next_deferred

cdef struct Snapshot:
    int nlisteners
    ListenerCfg** listeners
    int pending                 # workers that have not applied it yet
    int failed                  # workers that could not (no memory): they kept their set
    pthread_mutex_t lock
    pthread_cond_t done


cdef void listensock_decref(ListenSock* s) noexcept nogil:
    cdef int i
    if s != NULL and fp_atomic_add_int(&s.refcnt, -1) == 0:
        for i in range(s.nworkers):
            if not s.adopted[i] and s.fds[i] >= 0:
                close(s.fds[i])
        free(s.fds)
        free(s.adopted)
        free(s)


cdef void listener_cfg_decref(ListenerCfg* c) noexcept nogil:
    if c == NULL or fp_atomic_add_int(&c.refcnt, -1) != 0:
        return
    if c.filter_factories != NULL:
        _py_decref_with_gil(c.filter_factories)
    cluster_decref(c.cluster)
    http_cfg_decref(c.http)
    chain_set_free(c.chains)
    tls_provider_decref(c.tls)
    listensock_decref(c.sock)
    free(c.conns)
    free(c.drains)
    free(c)


# ---- the drain of a retired listener version (see the top of this file)

cdef void listener_conn_add(Worker* w, ListenerCfg* cfg, CfgConn* l, void* owner,
                            cfgconn_close_t force_close) noexcept nogil:
    """A connection accepted under cfg on w: linked so that cfg's drain can end it."""
    l.owner = owner
    l.force_close = force_close
    l.prev = NULL
    l.next = cfg.conns[w.index]
    if l.next != NULL:
        l.next.prev = l
    cfg.conns[w.index] = l
    fp_atomic_add_i64(&cfg.nconns, 1)


cdef void _listener_drain_disarm(Worker* w, ListenerDrain* d) noexcept nogil:
    cdef ListenerCfg* cfg = d.cfg
    timer_cancel(w, &d.timer)
    d.armed = 0
    if d.prev != NULL:
        d.prev.next = d.next
    else:
        w.draining = d.next
    if d.next != NULL:
        d.next.prev = d.prev
    d.prev = d.next = NULL
    d.cfg = NULL
    listener_cfg_decref(cfg)            # the connections hold their own references


cdef void listener_conn_remove(Worker* w, ListenerCfg* cfg, CfgConn* l) noexcept nogil:
    """The connection closed (on w, where it was added)."""
    if l.prev != NULL:
        l.prev.next = l.next
    else:
        cfg.conns[w.index] = l.next
    if l.next != NULL:
        l.next.prev = l.prev
    l.prev = l.next = NULL
    fp_atomic_add_i64(&cfg.nconns, -1)
    if cfg.conns[w.index] == NULL and cfg.drains[w.index].armed:
        # Its last connection here is gone: the retired config need not live to the drain end.
        _listener_drain_disarm(w, &cfg.drains[w.index])


cdef void _listener_drain_end(Worker* w, void* arg) noexcept nogil:
    """The drain time is over: close every connection w still has under the retired config."""
    cdef ListenerDrain* d = <ListenerDrain*>arg
    cdef ListenerCfg* cfg = d.cfg
    cdef CfgConn* l
    fp_atomic_add_int(&cfg.refcnt, 1)   # the timer's reference goes first; this one holds cfg
    _listener_drain_disarm(w, d)
    while cfg.conns[w.index] != NULL:
        l = cfg.conns[w.index]
        l.force_close(l.owner)
        if cfg.conns[w.index] == l:     # its close did not unlink it: never spin on it
            break
    listener_cfg_decref(cfg)


cdef bint listener_drain_start(Worker* w, ListenerCfg* cfg) noexcept nogil:
    """cfg leaves w's listener set (its listener changed or was removed). False when no
    drain was set on it (a stop or a hand-over: the caller drains the old way); else w's
    connections under it, if any, are closed at its drain end."""
    cdef uint64_t end = fp_load_acquire_u64(&cfg.drain_end_ms)
    cdef ListenerDrain* d = &cfg.drains[w.index]
    if end == 0:
        return False
    if cfg.chains != NULL:              # its chains hold its connections (stamped alike)
        chain_set_drain_start(w, cfg.chains)
    if cfg.conns[w.index] == NULL or d.armed:
        return True
    fp_atomic_add_int(&cfg.refcnt, 1)
    d.cfg = cfg
    d.armed = 1
    d.prev = NULL
    d.next = w.draining
    if d.next != NULL:
        d.next.prev = d
    w.draining = d
    timer_init(&d.timer, _listener_drain_end, d)
    if timer_arm(w, &d.timer, end - w.now if end > w.now else 0) < 0:
        _listener_drain_end(w, d)       # no memory for the timer: end the drain now, not never
    return True


cdef bint listener_drain_close(Worker* w, ListenerCfg* cfg) noexcept nogil:
    """Should the connection of cfg answering now end after this response (Envoy's
    DrainManagerImpl::drainClose)? Not unless cfg is draining; then always with the
    immediate strategy or past the drain end, else with probability elapsed / drain time."""
    cdef uint64_t end = fp_load_acquire_u64(&cfg.drain_end_ms)
    cdef uint64_t start, span
    if end == 0:
        return False
    if cfg.drain_immediate or w.now >= end:
        return True
    start = cfg.drain_start_ms
    span = end - start
    if span == 0 or w.now <= start:
        return span == 0
    return worker_random(w) % span < w.now - start


cdef void _listener_resume(Worker* w, void* arg) noexcept nogil:
    cdef WListener* wl = <WListener*>arg
    cdef epoll_event ev
    if wl.paused:
        wl.paused = 0
        ev.events = EPOLLIN
        ev.data.ptr = &wl.ep
        epoll_ctl(w.epfd, EPOLL_CTL_ADD, wl.ep.fd, &ev)


cdef void _wlistener_remove(Worker* w, WListener* wl) noexcept nogil:
    timer_cancel(w, &wl.resume_timer)
    if not wl.paused:
        epoll_ctl(w.epfd, EPOLL_CTL_DEL, wl.ep.fd, NULL)
    close(wl.ep.fd)             # pending, not yet accepted connections are refused
    wl.sock.fds[w.index] = -1
    listensock_decref(wl.sock)
    listener_cfg_decref(wl.cfg)
    wl.cfg = NULL
    wl.ep.on_event = endp_ignore    # an event already fetched this turn now finds nothing
    wl.next_deferred = w.dead_listeners
    w.dead_listeners = wl


cdef void _listeners_free_dead(Worker* w, void* arg) noexcept nogil:
    """End of turn: free the removed listener slots (an event fetched in the turn that
    removed one may still point at it)."""
    cdef WListener* wl
    while w.dead_listeners != NULL:
        wl = w.dead_listeners
        w.dead_listeners = wl.next_deferred
        free(wl)


cdef void _listeners_teardown(Worker* w, void* arg) noexcept nogil:
    cdef int i
    while w.draining != NULL:           # the connections close in their own subsystems' teardown
        _listener_drain_disarm(w, w.draining)
    for i in range(w.nlisteners):
        if w.listeners[i] != NULL:
            _wlistener_remove(w, w.listeners[i])
    free(w.listeners)
    w.listeners = NULL
    w.nlisteners = 0


cdef int _listeners_worker_init(Worker* w) noexcept nogil:
    if worker_add_end_of_turn(w, _listeners_free_dead, NULL) < 0:
        return -1
    return worker_add_teardown(w, _listeners_teardown, NULL)


cdef void _listeners_worker_fini(Worker* w) noexcept nogil:
    pass                        # the listener slots live in Worker; teardown closed them


worker_subsystem_add(_listeners_worker_init, _listeners_worker_fini, NULL)


cdef int _wl_index(Worker* w, ListenSock* sock) noexcept nogil:
    """The index of the worker's slot for sock in w.listeners, -1 if it has none."""
    cdef int j
    for j in range(w.nlisteners):
        if w.listeners[j] != NULL and w.listeners[j].sock == sock:
            return j
    return -1


cdef void _msg_apply_snapshot(Worker* w, void* arg) noexcept nogil:
    cdef Snapshot* snap = <Snapshot*>arg
    cdef WListener** nl = <WListener**>calloc(max(1, snap.nlisteners), sizeof(WListener*))
    cdef int i, j
    cdef bint ok = nl != NULL
    cdef ListenerCfg* cfg
    cdef WListener* wl
    cdef epoll_event ev
    # The memory first (a slot for each listener this worker does not serve yet), so that
    # when some cannot be had the worker keeps its listener set as it was.
    for i in range(snap.nlisteners):
        if ok and _wl_index(w, snap.listeners[i].sock) < 0:
            nl[i] = <WListener*>calloc(1, sizeof(WListener))
            ok = nl[i] != NULL
    if not ok:
        if nl != NULL:
            for i in range(snap.nlisteners):
                free(nl[i])
            free(nl)
        pthread_mutex_lock(&snap.lock)
        snap.failed += 1
        pthread_mutex_unlock(&snap.lock)
        snapshot_release(snap)
        return
    for i in range(snap.nlisteners):
        cfg = snap.listeners[i]
        fp_atomic_add_int(&cfg.refcnt, 1)
        wl = nl[i]
        if wl == NULL:
            # A listener the worker serves already: its slot moves to the new list.
            j = _wl_index(w, cfg.sock)
            wl = w.listeners[j]
            w.listeners[j] = NULL
            if wl.cfg != cfg:           # a new version on the same socket: the old one drains
                listener_drain_start(w, wl.cfg)
            listener_cfg_decref(wl.cfg)
            wl.cfg = cfg
        else:
            wl.ep.on_event = listener_on_event
            wl.ep.fd = cfg.sock.fds[w.index]
            wl.ep.owner = wl
            wl.sock = cfg.sock
            fp_atomic_add_int(&cfg.sock.refcnt, 1)
            cfg.sock.adopted[w.index] = 1
            wl.cfg = cfg
            timer_init(&wl.resume_timer, _listener_resume, wl)
            ev.events = EPOLLIN
            ev.data.ptr = &wl.ep
            epoll_ctl(w.epfd, EPOLL_CTL_ADD, wl.ep.fd, &ev)
        nl[i] = wl
    for j in range(w.nlisteners):
        if w.listeners[j] != NULL:
            if not listener_drain_start(w, w.listeners[j].cfg):
                worker_listener_gone(w, w.listeners[j].sock)
            _wlistener_remove(w, w.listeners[j])
    free(w.listeners)
    w.listeners = nl
    w.nlisteners = snap.nlisteners
    snapshot_release(snap)


cdef void snapshot_release(Snapshot* snap) noexcept nogil:
    """A worker is done with the snapshot message; the last one wakes the main thread."""
    pthread_mutex_lock(&snap.lock)
    snap.pending -= 1
    pthread_cond_broadcast(&snap.done)
    pthread_mutex_unlock(&snap.lock)


cdef void snapshot_free(Snapshot* snap) noexcept nogil:
    cdef int i
    for i in range(snap.nlisteners):
        listener_cfg_decref(snap.listeners[i])
    free(snap.listeners)
    pthread_mutex_destroy(&snap.lock)
    pthread_cond_destroy(&snap.done)
    free(snap)


cdef class ListenSockHandle:
    """The main thread's reference to a bound listening address."""
    cdef ListenSock* s
    cdef readonly tuple address     # (ip, port) actually bound

    def __dealloc__(self):
        listensock_decref(self.s)

    def fds(self):
        """The listening fds, one per worker (-1 where a worker has closed its own). Call
        on the thread that applies snapshots, between applies: a worker closes its fd only
        while it applies one (or stops). Dup them before use; they stay the workers'."""
        return [self.s.fds[i] for i in range(self.s.nworkers)]

    def hand_over(self):
        """Another process now accepts on these sockets (hot restart): when this address
        leaves the listener set, its idle HTTP connections stay open until their next
        request, which is answered with Connection: close (closing an idle connection
        would reset a request the client is sending on it at that moment)."""
        self.s.handed_over = 1


cdef class ConnHandler:
    """What a listener hands its connections to when it is not the TCP proxy (the HTTP
    connection manager's HttpCfgHandle): Engine.make_listener calls attach, which sets
    cfg.start and takes the references the handler's connections need."""

    cdef int attach(self, ListenerCfg* cfg, StatBlockHandle stats) except -1:
        raise NotImplementedError


cdef class ListenerCfgHandle:
    cdef ListenerCfg* c
    cdef readonly str name

    def __dealloc__(self):
        listener_cfg_decref(self.c)

    def start_drain(self, double drain_time_s, bint immediate):
        """This version is retired by the next apply(): from now its connections are asked
        to close (immediately, or gradually over drain_time_s) and those still open
        drain_time_s from now are closed. Call before that apply(); once."""
        cdef uint64_t now = clock_ms()
        if self.c.drain_end_ms:
            raise RuntimeError(f"listener {self.name!r}: this version is draining already")
        if not drain_time_s >= 0:
            raise ValueError("drain_time_s must be >= 0")
        _listener_cfg_stamp_drain(self.c, now, now + <uint64_t>(drain_time_s * 1000), immediate)

    @property
    def draining(self):
        """start_drain was called and its drain time has not run out."""
        cdef uint64_t end = fp_load_acquire_u64(&self.c.drain_end_ms)
        return end != 0 and clock_ms() < end

    def connections(self):
        """Connections open under this version, all workers (racy, untorn); a listener
        with filter chains: those of its chains and those still in its listener filter."""
        cdef int i
        cdef int64_t n = fp_atomic_load_i64(&self.c.nconns)
        cdef ChainSet* cs = self.c.chains
        if cs != NULL:
            for i in range(cs.nchains):
                n += fp_atomic_load_i64(&cs.chains[i].nconns)
            if cs.dflt != NULL:
                n += fp_atomic_load_i64(&cs.dflt.nconns)
        return n


cdef void _listener_cfg_stamp_drain(ListenerCfg* c, uint64_t start, uint64_t end, bint immediate) noexcept:
    """The drain window of a retired version, and of its filter chains (their connections
    ask listener_drain_close of their own ListenerCfg)."""
    cdef int i
    cdef ChainSet* cs = c.chains
    if cs != NULL:
        for i in range(cs.nchains):
            _listener_cfg_stamp_drain(cs.chains[i], start, end, immediate)
        if cs.dflt != NULL:
            _listener_cfg_stamp_drain(cs.dflt, start, end, immediate)
    c.drain_start_ms = start
    c.drain_immediate = immediate
    fp_store_u64(&c.drain_end_ms, end)      # published last
