# The HTTP connection manager's per-worker state (HttpWorker) and how it plugs into the
# worker loop, which knows no HTTP: its endpoints' event callbacks, its end-of-turn and
# teardown hooks, its listener drain, all registered here (worker_subsystem_add).

cdef struct HttpWorker:
    HConn* hconns               # live downstream HTTP connections (conn_manager.pxi)
    HConn* hconn_deferred       # closed ones, freed at the end of the loop turn
    HStream* stream_deferred    # ended streams, freed at the end of the loop turn (HStream.ended)
    UpConn* upconns             # every upstream HTTP connection: busy, idle, connecting (http_pool.pxi)
    UpConn* upconn_deferred
    HttpPool* kicked            # pools whose waiting requests to serve this turn (http_serve_waiting)
    HConn* pump_later           # multiplexed connections to pump at the end of the turn (hconn_pump_later)
    # the Date header value, formatted once per second (worker_date in hcm_headers.pxi)
    char date[32]
    size_t date_len
    uint64_t date_until_ms      # w.now at which date goes stale (the next wall-clock second)


cdef int _HTTP_SLOT             # this subsystem's slot in Worker.state (set at import, below)


cdef inline HttpWorker* http_worker(Worker* w) noexcept nogil:
    return <HttpWorker*>w.state[_HTTP_SLOT]


cdef void _hconn_endp_event(Worker* w, Endp* ep, uint32_t events) noexcept nogil:
    hconn_on_event(w, <HConn*>ep.owner, events)


cdef void _upconn_endp_event(Worker* w, Endp* ep, uint32_t events) noexcept nogil:
    upconn_on_event(w, <UpConn*>ep.owner, events)


cdef void _http_end_of_turn(Worker* w, void* arg) noexcept nogil:
    http_free_deferred(w)       # serves the waiting requests first, then frees


cdef void _http_teardown(Worker* w, void* arg) noexcept nogil:
    http_worker_teardown(w)


cdef int _http_worker_init(Worker* w) noexcept nogil:
    cdef HttpWorker* hw = <HttpWorker*>calloc(1, sizeof(HttpWorker))
    if hw == NULL:
        return -1
    w.state[_HTTP_SLOT] = hw
    if worker_add_end_of_turn(w, _http_end_of_turn, hw) < 0:
        return -1
    return worker_add_teardown(w, _http_teardown, hw)


cdef void _http_worker_fini(Worker* w) noexcept nogil:
    free(w.state[_HTTP_SLOT])
    w.state[_HTTP_SLOT] = NULL


_HTTP_SLOT = worker_subsystem_add(_http_worker_init, _http_worker_fini, http_drain_listener)
