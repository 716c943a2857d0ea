# The per-worker event loop: epoll, a timer heap, a cross-thread message queue woken by an
# eventfd, and the hooks through which the subsystems plug in (each endpoint's event
# callback; per-worker end-of-turn and teardown hooks; per-subsystem worker state). The
# loop knows no protocol: the TCP proxy and the HTTP connection manager register
# themselves. A worker's loop runs with the GIL released; nothing in this file touches a
# Python object.

DEF MAX_EVENTS = 256
DEF TIMER_NONE = -1
DEF PIPE_POOL_MAX = 32          # drained splice pipes a worker keeps for reuse (2 fds each)

DEF WORKER_HOOKS_MAX = 8        # end-of-turn / teardown hooks a worker can hold (one per subsystem)
DEF WORKER_SUBSYS_MAX = 8       # subsystems with per-worker state (worker_subsystem_add)

ctypedef void (*timer_cb_t)(Worker* w, void* arg) noexcept nogil
ctypedef void (*msg_fn_t)(Worker* w, void* arg) noexcept nogil
# What the dispatcher calls for an epoll event on an endpoint. Whoever makes the Endp sets
# it (the TCP proxy, the HTTP connection manager, the listener, the worker's own eventfd),
# so the loop knows no kind of endpoint.
ctypedef void (*EndpFn)(Worker* w, Endp* ep, uint32_t events) noexcept nogil
# A worker hook: run at the end of every loop turn, or once at teardown.
ctypedef void (*worker_hook_t)(Worker* w, void* arg) noexcept nogil
# A subsystem's per-worker life: init makes its state (in Worker.state[its slot]) and adds its
# hooks, and returns -1 when out of memory; fini frees the state (NULL-safe: it also runs
# for a worker whose init failed).
ctypedef int (*subsys_init_t)(Worker* w) noexcept nogil
ctypedef void (*subsys_fini_t)(Worker* w) noexcept nogil
# A listening socket leaves the worker's listener set: the subsystem drains its connections.
ctypedef void (*subsys_listener_gone_t)(Worker* w, ListenSock* sock) noexcept nogil

cdef struct Timer:
    uint64_t deadline           # CLOCK_MONOTONIC milliseconds
    int index                   # position in the heap, TIMER_NONE when not armed
    timer_cb_t cb
    void* arg

cdef struct Endp:
    EndpFn on_event             # called with the epoll events; endp_ignore once the owner is gone
    int fd
    void* owner                 # the object on_event works on (its creator's type: only it reads this)
    uint8_t readable            # edge-triggered readiness we have not consumed yet
    uint8_t writable
    uint8_t hup                 # an event said the peer closed (RDHUP/HUP/ERR): read to the end
    uint32_t events             # epoll interest registered for fd (kept by tcp_proxy sessions)
    void* tls                   # its TLS transport (TlsConn*, core/tls/transport.pxi); NULL: plaintext

cdef struct PooledPipe:         # a splice pipe, in use or kept in Worker.pipes
    int r
    int w
    size_t want                 # the capacity asked of F_SETPIPE_SZ (pipes are reused per size)
    size_t cap                  # the capacity the kernel gave (F_GETPIPE_SZ)

cdef struct WorkerHook:
    worker_hook_t fn
    void* arg

cdef struct WorkerSubsystem:    # one per subsystem, registered at import (worker_subsystem_add)
    subsys_init_t init
    subsys_fini_t fini
    subsys_listener_gone_t listener_gone    # or NULL

cdef struct Msg:
    msg_fn_t fn
    void* arg
    Msg* next

cdef struct Worker:
    int index
    int epfd
    Endp wake
    pthread_t thread
    pthread_mutex_t qlock
    Msg* qhead
    Msg* qtail
    Timer** heap
    int heap_len
    int heap_cap
    uint64_t now
    int running                 # cleared to leave the loop
    # downstream connections open on this worker, every protocol (Engine.active_connections)
    int nsessions
    uint64_t next_session_id    # per-worker sequence of connection ids
    uint64_t rng                # xorshift state for RANDOM load balancing
    uint64_t id_rng             # xorshift state for x-request-id, seeded from getrandom(2)
    # listeners in the worker's current snapshot (snapshot.pxi)
    WListener** listeners
    int nlisteners
    WListener* dead_listeners   # removed listener slots, freed at the end of the loop turn
    ListenerDrain* draining     # retired listener configs with connections here (snapshot.pxi)
    # Subsystems' per-worker state, indexed by their registration slot. void* because the
    # dispatcher comes first and knows no subsystem: each one reads its slot through its own
    # typed accessor, and no one else's.
    void* state[WORKER_SUBSYS_MAX]
    WorkerHook end_of_turn[WORKER_HOOKS_MAX]    # after each epoll batch and its timers
    int n_end_of_turn
    WorkerHook teardown[WORKER_HOOKS_MAX]       # once, after the loop: close what you own
    int n_teardown
    # splice pipes (see "pipe pool" below)
    PooledPipe pipes[PIPE_POOL_MAX]
    int npipes
    uint64_t pipes_created      # pipe2 calls (read by Engine.pipe_stats)
    uint64_t pipes_reused       # pipes taken from the pool


cdef inline uint64_t clock_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>ts.tv_nsec // 1000000


# ---- timers: a binary min-heap of Timer* ordered by deadline ----

cdef inline void _heap_swap(Worker* w, int i, int j) noexcept nogil:
    cdef Timer* t = w.heap[i]
    w.heap[i] = w.heap[j]
    w.heap[j] = t
    w.heap[i].index = i
    w.heap[j].index = j


cdef void _heap_up(Worker* w, int i) noexcept nogil:
    cdef int p
    while i > 0:
        p = (i - 1) // 2
        if w.heap[p].deadline <= w.heap[i].deadline:
            break
        _heap_swap(w, i, p)
        i = p


cdef void _heap_down(Worker* w, int i) noexcept nogil:
    cdef int l, r, m
    while True:
        l = 2 * i + 1
        r = l + 1
        m = i
        if l < w.heap_len and w.heap[l].deadline < w.heap[m].deadline:
            m = l
        if r < w.heap_len and w.heap[r].deadline < w.heap[m].deadline:
            m = r
        if m == i:
            break
        _heap_swap(w, i, m)
        i = m


cdef inline bint timer_armed(const Timer* t) noexcept nogil:
    return t.index != TIMER_NONE


cdef inline void timer_init(Timer* t, timer_cb_t cb, void* arg) noexcept nogil:
    t.index = TIMER_NONE
    t.cb = cb
    t.arg = arg
    t.deadline = 0


cdef void timer_cancel(Worker* w, Timer* t) noexcept nogil:
    cdef int i = t.index
    if i == TIMER_NONE:
        return
    w.heap_len -= 1
    if i != w.heap_len:
        w.heap[i] = w.heap[w.heap_len]
        w.heap[i].index = i
        _heap_down(w, i)
        _heap_up(w, i)
    t.index = TIMER_NONE


cdef int timer_arm(Worker* w, Timer* t, uint64_t delay_ms) noexcept nogil:
    """(Re)arm t to fire delay_ms from now. Returns -1 only when out of memory."""
    cdef Timer** nh
    timer_cancel(w, t)
    if w.heap_len == w.heap_cap:
        nh = <Timer**>realloc(w.heap, (w.heap_cap * 2 + 16) * sizeof(Timer*))
        if nh == NULL:
            return -1
        w.heap = nh
        w.heap_cap = w.heap_cap * 2 + 16
    t.deadline = w.now + delay_ms
    t.index = w.heap_len
    w.heap[w.heap_len] = t
    w.heap_len += 1
    _heap_up(w, t.index)
    return 0


cdef int timers_timeout(Worker* w) noexcept nogil:
    """Milliseconds epoll_wait may sleep: until the earliest timer, or forever (-1)."""
    if w.heap_len == 0:
        return -1
    cdef uint64_t d = w.heap[0].deadline
    if d <= w.now:
        return 0
    d -= w.now
    return <int>d if d < 3600000 else 3600000


cdef void timers_run(Worker* w) noexcept nogil:
    cdef Timer* t
    while w.heap_len and w.heap[0].deadline <= w.now:
        t = w.heap[0]
        timer_cancel(w, t)
        t.cb(w, t.arg)


# ---- pipe pool ----
#
# A splice pipe costs five system calls to make and two to free (pipe2, F_SETPIPE_SZ,
# F_GETPIPE_SZ, close x2), plus an inode and two files in the kernel: as much as the rest
# of a short proxied connection's set-up. A worker keeps up to PIPE_POOL_MAX drained pipes
# and hands them out again (HAProxy pools its pipes the same way). Only a pipe its user
# has emptied goes back: a pipe holding bytes of one connection must never carry them into
# another, so a pipe given back with bytes in it is closed instead.

cdef bint pipe_take(Worker* w, size_t want, PooledPipe* out) noexcept nogil:
    """A drained pipe with `want` bytes of capacity asked for: from the pool, else a new one.
    False when none can be made (EMFILE, ENFILE, ENOMEM): the caller copies instead."""
    cdef int i = w.npipes - 1
    cdef int p[2]
    cdef int got
    while i >= 0:
        if w.pipes[i].want == want:
            out[0] = w.pipes[i]
            w.npipes -= 1
            w.pipes[i] = w.pipes[w.npipes]
            w.pipes_reused += 1
            return True
        i -= 1
    if pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0:
        return False
    fcntl(p[1], F_SETPIPE_SZ, <int>want)        # best effort: capped by fs.pipe-max-size
    got = fcntl(p[1], F_GETPIPE_SZ)
    out.r = p[0]
    out.w = p[1]
    out.want = want
    out.cap = <size_t>got if got > 0 else 65536
    w.pipes_created += 1
    return True


cdef void pipe_give_back(Worker* w, PooledPipe* p, size_t bytes_left) noexcept nogil:
    """Done with p (p.r < 0: no pipe). bytes_left is what its user counts still in it: only
    an empty pipe is kept, and only while the pool has room; any other is closed."""
    if p.r < 0:
        return
    if bytes_left == 0 and w.npipes < PIPE_POOL_MAX:
        fp_debug_assert_pipe_empty(p.r)         # debug builds: the kernel agrees (FIONREAD)
        w.pipes[w.npipes] = p[0]
        w.npipes += 1
    else:
        close(p.r)
        close(p.w)
    p.r = -1
    p.w = -1


cdef void pipe_pool_drain(Worker* w) noexcept nogil:
    """Close every pooled pipe: at worker teardown, and when the process runs out of fds."""
    while w.npipes:
        w.npipes -= 1
        close(w.pipes[w.npipes].r)
        close(w.pipes[w.npipes].w)


# ---- cross-thread messages ----

cdef int worker_post(Worker* w, msg_fn_t fn, void* arg) noexcept nogil:
    """Run fn(w, arg) on w's thread soon. Callable from any thread."""
    cdef Msg* m = <Msg*>malloc(sizeof(Msg))
    cdef uint64_t one = 1
    if m == NULL:
        return -1
    m.fn = fn
    m.arg = arg
    m.next = NULL
    pthread_mutex_lock(&w.qlock)
    if w.qtail == NULL:
        w.qhead = m
    else:
        w.qtail.next = m
    w.qtail = m
    pthread_mutex_unlock(&w.qlock)
    write(w.wake.fd, &one, 8)
    return 0


cdef void worker_wake(Worker* w) noexcept nogil:
    """Wake w's loop with no message (it then re-reads its running flag). Unlike
    worker_post it allocates nothing, so it cannot fail for want of memory."""
    cdef uint64_t one = 1
    write(w.wake.fd, &one, 8)


cdef void worker_drain_messages(Worker* w) noexcept nogil:
    cdef uint64_t count
    cdef Msg* m
    cdef Msg* nxt
    read(w.wake.fd, &count, 8)
    pthread_mutex_lock(&w.qlock)
    m = w.qhead
    w.qhead = NULL
    w.qtail = NULL
    pthread_mutex_unlock(&w.qlock)
    while m != NULL:
        nxt = m.next
        m.fn(w, m.arg)
        free(m)
        m = nxt


cdef inline bint on_worker_thread(Worker* w) noexcept nogil:
    return pthread_equal(pthread_self(), w.thread) != 0


cdef inline uint64_t xorshift64s(uint64_t* state) noexcept nogil:
    """The core's one random generator, xorshift64*: cheap and good enough to spread load
    and to make request ids; each caller keeps its own state."""
    cdef uint64_t x = state[0]
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    state[0] = x
    return x * <uint64_t>2685821657736338717ULL


cdef inline uint64_t worker_random(Worker* w) noexcept nogil:
    """Load balancing and sampling (a fixed seed per worker)."""
    return xorshift64s(&w.rng)


cdef inline uint64_t worker_id_random(Worker* w) noexcept nogil:
    """Request ids (a seed from the kernel, so they differ between processes)."""
    return xorshift64s(&w.id_rng)


# ---- endpoints, hooks, subsystems ----

cdef inline void endp_forget(Worker* w, Endp* ep) noexcept nogil:
    """Take ep's socket out of the epoll set before it is closed. close() alone removes it
    only when no other descriptor refers to the same open file, and a fork (a subprocess
    started by the process that runs the proxy) holds copies until its exec: events would
    then still come for an endpoint whose owner has been freed."""
    if ep.fd >= 0:
        epoll_ctl(w.epfd, EPOLL_CTL_DEL, ep.fd, NULL)


cdef void endp_ignore(Worker* w, Endp* ep, uint32_t events) noexcept nogil:
    """on_event of an endpoint whose owner is gone: an event already fetched in this loop
    turn finds nothing to do."""
    pass


cdef void _wake_on_event(Worker* w, Endp* ep, uint32_t events) noexcept nogil:
    worker_drain_messages(w)


cdef WorkerSubsystem _subsystems[WORKER_SUBSYS_MAX]
cdef int _nsubsystems = 0


cdef int worker_subsystem_add(subsys_init_t init, subsys_fini_t fini,
                              subsys_listener_gone_t listener_gone) except -1:
    """Register a subsystem (at import, before any worker exists); every worker made from
    then on runs its init. Returns its slot in Worker.state."""
    global _nsubsystems
    if _nsubsystems == WORKER_SUBSYS_MAX:
        raise RuntimeError("too many worker subsystems: raise WORKER_SUBSYS_MAX")
    _subsystems[_nsubsystems].init = init
    _subsystems[_nsubsystems].fini = fini
    _subsystems[_nsubsystems].listener_gone = listener_gone
    _nsubsystems += 1
    return _nsubsystems - 1


cdef int worker_add_end_of_turn(Worker* w, worker_hook_t fn, void* arg) noexcept nogil:
    """Run fn(w, arg) after every batch of events (and the timers), in the order added:
    deferred frees, work kept for outside any handler. -1 when the list is full."""
    if w.n_end_of_turn == WORKER_HOOKS_MAX:
        return -1
    w.end_of_turn[w.n_end_of_turn].fn = fn
    w.end_of_turn[w.n_end_of_turn].arg = arg
    w.n_end_of_turn += 1
    return 0


cdef int worker_add_teardown(Worker* w, worker_hook_t fn, void* arg) noexcept nogil:
    """Run fn(w, arg) once when the worker stops: close everything it owns (what it frees
    at the end of a turn is freed by its end-of-turn hook, which runs after). -1 when full."""
    if w.n_teardown == WORKER_HOOKS_MAX:
        return -1
    w.teardown[w.n_teardown].fn = fn
    w.teardown[w.n_teardown].arg = arg
    w.n_teardown += 1
    return 0


cdef inline void worker_end_of_turn(Worker* w) noexcept nogil:
    cdef int i
    for i in range(w.n_end_of_turn):
        w.end_of_turn[i].fn(w, w.end_of_turn[i].arg)


cdef void worker_listener_gone(Worker* w, ListenSock* sock) noexcept nogil:
    """sock leaves w's listener set: each subsystem drains the connections it accepted."""
    cdef int i
    for i in range(_nsubsystems):
        if _subsystems[i].listener_gone != NULL:
            _subsystems[i].listener_gone(w, sock)


cdef void worker_teardown(Worker* w) noexcept nogil:
    """Close everything the worker owns. Runs on the worker thread after its loop ends (or
    on the main thread for a worker never started)."""
    cdef int i
    worker_drain_messages(w)
    for i in range(w.n_teardown):
        w.teardown[i].fn(w, w.teardown[i].arg)
    worker_drain_messages(w)
    worker_end_of_turn(w)
    pipe_pool_drain(w)                  # after the connections: they give their pipes back


cdef void worker_destroy(Worker* w) noexcept nogil:
    """Free what worker_init made, once no thread runs w and its last messages have run."""
    cdef int i
    for i in range(_nsubsystems):
        _subsystems[i].fini(w)
    free(w.heap)
    w.heap = NULL
    close(w.epfd)
    close(w.wake.fd)
    pthread_mutex_destroy(&w.qlock)


cdef int worker_init(Worker* w, int index) noexcept nogil:
    """Make w's epoll set, eventfd and subsystem states; -1 (errno set) when it cannot."""
    cdef int i
    memset(w, 0, sizeof(Worker))
    w.index = index
    w.rng = <uint64_t>11400714819323198485ULL ^ (<uint64_t>(index + 1) * <uint64_t>13787848793156543929ULL)
    # Request ids must differ between processes and restarts (the LB's seed above is fixed):
    # the kernel's entropy, else the clock, mixed with the worker index.
    if getrandom(&w.id_rng, sizeof(uint64_t), 0) != <ssize_t>sizeof(uint64_t):
        w.id_rng = <uint64_t>clock_ms() * <uint64_t>6364136223846793005ULL
    w.id_rng ^= <uint64_t>(index + 1) * <uint64_t>13787848793156543929ULL
    if w.id_rng == 0:
        w.id_rng = 1
    w.next_session_id = 1
    w.epfd = epoll_create1(EPOLL_CLOEXEC)
    if w.epfd < 0:
        return -1
    w.wake.on_event = _wake_on_event
    w.wake.owner = w
    w.wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if w.wake.fd < 0:
        close(w.epfd)
        return -1
    pthread_mutex_init(&w.qlock, NULL)
    cdef epoll_event ev
    ev.events = EPOLLIN
    ev.data.ptr = &w.wake
    epoll_ctl(w.epfd, EPOLL_CTL_ADD, w.wake.fd, &ev)
    w.now = clock_ms()
    for i in range(_nsubsystems):
        if _subsystems[i].init(w) < 0:
            worker_destroy(w)           # each fini frees what its init made, if anything
            errno = ENOMEM
            return -1
    return 0


cdef void worker_loop(Worker* w) noexcept nogil:
    """The worker's whole life: wait, dispatch, run timers, then the end-of-turn hooks."""
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, i
    cdef Endp* ep
    w.thread = pthread_self()
    w.now = clock_ms()
    while fp_load_int(&w.running):
        n = epoll_wait(w.epfd, events, MAX_EVENTS, timers_timeout(w))
        w.now = clock_ms()
        for i in range(n):
            ep = <Endp*>events[i].data.ptr
            ep.on_event(w, ep, events[i].events)
        timers_run(w)
        worker_end_of_turn(w)
    worker_teardown(w)
