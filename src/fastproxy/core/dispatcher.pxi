# The per-worker event loop: epoll, a timer heap, a cross-thread message queue woken by an
# eventfd, and deferred deletion. A worker's loop runs with the GIL released; nothing in
# this file touches a Python object.

DEF MAX_EVENTS = 256
DEF TIMER_NONE = -1
DEF PIPE_POOL_MAX = 32          # drained splice pipes a worker keeps for reuse (2 fds each)

# What an epoll registration points at (epoll_event.data.ptr is always an Endp*): every
# kind of endpoint, in one place.
cdef enum:
    EP_WAKE = 1                 # the worker's eventfd
    EP_LISTEN = 2               # a listening socket
    EP_DOWN = 3                 # a TCP proxy session's downstream socket
    EP_UP = 4                   # a TCP proxy session's upstream socket
    EP_HTTP_DOWN = 5            # an HTTP connection's downstream socket (core/http/conn_manager.pxi)
    EP_HTTP_UP = 6              # an HTTP upstream connection's socket

ctypedef void (*timer_cb_t)(Worker* w, void* arg) noexcept nogil
ctypedef void (*msg_fn_t)(Worker* w, void* arg) noexcept nogil

cdef struct Timer:
    uint64_t deadline           # CLOCK_MONOTONIC milliseconds
    int index                   # position in the heap, TIMER_NONE when not armed
    timer_cb_t cb
    void* arg

cdef struct Endp:
    int kind
    int fd
    void* owner                 # Session*, WListener* or Worker*
    uint8_t readable            # edge-triggered readiness we have not consumed yet
    uint8_t writable
    uint8_t hup                 # an event said the peer closed (RDHUP/HUP/ERR): read to the end
    uint32_t events             # epoll interest registered for fd (kept by tcp_proxy sessions)

cdef struct PooledPipe:         # a splice pipe, in use or kept in Worker.pipes
    int r
    int w
    size_t want                 # the capacity asked of F_SETPIPE_SZ (pipes are reused per size)
    size_t cap                  # the capacity the kernel gave (F_GETPIPE_SZ)

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
    # sessions
    Session* sessions           # intrusive list of live sessions
    Session* deferred           # closed sessions freed at the end of the loop turn
    int nsessions
    uint64_t next_session_id
    uint64_t rng                # xorshift state for RANDOM load balancing
    uint64_t id_rng             # xorshift state for x-request-id, seeded from getrandom(2)
    # listeners in the worker's current snapshot
    WListener** listeners
    int nlisteners
    WListener* dead_listeners   # removed listener slots, freed at the end of the loop turn
    # HTTP (core/http/conn_manager.pxi, core/upstream/http_pool.pxi)
    HConn* hconns               # live downstream HTTP connections
    HConn* hconn_deferred
    UpConn* upconns             # every upstream HTTP connection (busy, idle, connecting)
    UpConn* upconn_deferred
    void* kicked                # HttpPool*: pools whose waiting requests to serve this turn
    # the Date header value, formatted once per second (core/http/hcm_headers.pxi)
    char date[32]
    size_t date_len
    uint64_t date_until_ms      # w.now at which date goes stale (the next wall-clock second)
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


cdef int worker_init(Worker* w, int index) noexcept nogil:
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
    w.wake.kind = EP_WAKE
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
    return 0


cdef void worker_loop(Worker* w) noexcept nogil:
    """The worker's whole life: wait, dispatch, run timers, free what closed."""
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
            if ep.kind == EP_DOWN or ep.kind == EP_UP:
                session_on_event(w, ep, events[i].events)
            elif ep.kind == EP_LISTEN:
                listener_on_accept(w, <WListener*>ep.owner)
            elif ep.kind == EP_HTTP_DOWN:
                hconn_on_event(w, <HConn*>ep.owner, events[i].events)
            elif ep.kind == EP_HTTP_UP:
                upconn_on_event(w, <UpConn*>ep.owner, events[i].events)
            elif ep.kind == EP_WAKE:
                worker_drain_messages(w)
        timers_run(w)
        sessions_free_deferred(w)
    worker_teardown(w)
