# The HTTP connection manager (Envoy's http_connection_manager with the router as its only
# filter) for HTTP/1.1, and the upstream connection pool it draws from.
#
#   downstream HConn --(one HStream at a time; pipelined requests wait in in_buf)--
#        request:  parse head -> route -> upstream head -> body (Content-Length: moved
#                  slice by slice, no copy; chunked: re-framed) -> UpConn.out_buf
#        response: UpConn.in_buf -> parse head -> downstream head -> body -> HConn.out_buf
#   UpConn: one upstream HTTP/1.1 connection; idle ones wait in a per-worker, per-host list
#           (the pool) and are reused for the next stream to that host.
#
# Nothing is ever forwarded for a request the codec rejects: the head is complete and valid
# before routing begins, and a body framing error resets the stream. Responses are re-framed
# for the downstream: Content-Length kept, chunked re-chunked, close-delimited bodies sent
# chunked to HTTP/1.1 clients (so the downstream connection survives) and close-delimited
# to HTTP/1.0 ones.
#
# Re-entrancy: work that finishes a stream may want to parse the next pipelined request;
# hconn_pump() is the only loop that does so, and a nested call only marks `repump`.

cdef enum:                          # UpConn.state
    UC_CONNECTING = 0
    UC_BUSY = 1
    UC_IDLE = 2
    UC_CLOSED = 3
    UC_WAITING = 4                  # no socket yet: the cluster's max_connections is reached

cdef enum:                          # how a head we send frames its body
    UF_PARSER = 0                   # as the received message was framed (re-chunked if chunked)
    UF_NONE = 1                     # no body
    UF_LENGTH = 2                   # Content-Length: the given length
    UF_MAP_LENGTH = 3               # the Content-Length a filter left in the header map (counted)
    UF_CHUNKED = 4                  # chunked (close-delimited to an HTTP/1.0 client)

cdef enum:
    HTTP_IO_LIMIT = 1 << 20         # bytes buffered per direction before reading pauses
    MAX_IDLE_PER_HOST = 64

cdef enum:                          # HttpCfg.escaped_slashes: path_with_escaped_slashes_action
    ES_KEEP = 0
    ES_REJECT = 1
    ES_REDIRECT = 2
    ES_FORWARD = 3

cdef enum:                          # HttpCfg.strip_port: strip_port_mode
    STRIP_PORT_NONE = 0
    STRIP_PORT_MATCHING = 1
    STRIP_PORT_ANY = 2

cdef enum:                          # HttpCfg.underscores: headers_with_underscores_action
    US_ALLOW = 0
    US_REJECT = 1
    US_DROP = 2

cdef enum:                          # stream_normalize_path (core/http_hcm.pxi)
    PN_NOMEM = -2
    PN_REJECT = -1                  # 400, downstream_rq_failed_path_normalization
    PN_OK = 0
    PN_REDIRECT = 1                 # 307 to the new path, downstream_rq_redirected_with_normalized_path

cdef struct HttpCfg:
    int refcnt                      # atomic
    RouteTable* routes
    int nclusters
    ClusterCfg** clusters           # route cluster index -> cluster (one reference each)
    StatBlock* stats                # http.<stat_prefix>.*
    uint64_t idle_timeout_ms        # downstream connection without a stream; 0: none
    uint64_t request_headers_timeout_ms
    uint64_t stream_idle_timeout_ms
    uint64_t request_timeout_ms     # the whole request must arrive within it; 0: none
    uint8_t allow_connect           # upgrade_configs has CONNECT: tunnel it (else 403)
    uint8_t allow_websocket         # upgrade_configs has websocket: forward it (else 403)
    uint8_t accept_http_10          # http_protocol_options.accept_http_10 (else 426)
    char* default_host_10           # default_host_for_http_10, or NULL
    size_t default_host_10_len
    int nlogs
    AlogSink* logs                  # access logs (core/access_log.pxi)
    char** cluster_names            # by route cluster index (%UPSTREAM_CLUSTER%)
    uint32_t max_requests_per_connection
    uint32_t max_head
    uint32_t max_fields
    uint64_t max_request_bytes      # 0: unlimited
    uint8_t use_remote_address
    uint8_t generate_request_id
    uint8_t suppress_envoy_headers  # the router's: no x-envoy-expected-rq-timeout-ms,
                                    # -original-path, -original-host, -upstream-service-time
    uint32_t xff_num_trusted_hops
    uint8_t internal_mode           # IA_*: which client addresses are internal (http_stream.pxi)
    int ninternal
    InternalCidr* internal_cidrs    # IA_CIDRS: internal_address_config.cidr_ranges
    char local_ip[48]               # Envoy's local address: what XFF gets for a loopback peer
    size_t local_ip_len
    char* server_name
    size_t server_name_len
    uint8_t server_mode             # SERVER_*: server_header_transformation
    char* via                       # via: appended to request and response Via; NULL: none
    size_t via_len
    uint8_t skip_xff_append         # use_remote_address without touching x-forwarded-for
    uint8_t preserve_external_request_id
    uint8_t always_set_request_id   # always_set_request_id_in_response
    uint8_t normalize_path          # path normalization (core/http_hcm.pxi)
    uint8_t merge_slashes
    uint8_t escaped_slashes         # ES_*: path_with_escaped_slashes_action
    uint8_t strip_port              # STRIP_PORT_*: strip_matching_host_port / strip_any_host_port
    uint8_t underscores             # US_*: headers_with_underscores_action
    StatBlock* http1_stats          # the server-wide http1.* counters (HTTP1_STATS)
    int nfilters                    # http_filters before the router (core/http_filter.pxi)
    HttpFilterCfg* filters
    uint32_t filter_hooks           # union of the filters' HK_* bits
    uint32_t filter_buffer_limit
    OwnedCfg* owned_cfgs            # filter configs freed with this HttpCfg
    int nowned
    PyObject* py_keep               # a list of the Python objects filters point at, or NULL

cdef struct SplicePipe:             # a pipe that Content-Length bodies go through
    int r
    int w
    size_t bytes                    # in the pipe now
    size_t cap

cdef struct UpConn:
    Endp ep
    Worker* w
    UpConn* prev                    # the worker's list of upstream connections
    UpConn* next
    UpConn* idle_next               # the pool's idle list for its host
    UpConn** idle_head              # the list it is on, NULL when not idle
    UpConn* next_deferred
    ClusterCfg* cluster             # one reference
    int host_index
    HostSet* hosts                  # the host set host_index is into (pool key)
    int state
    uint8_t eof
    HStream* stream
    H1Parser resp
    Chain in_buf
    Chain out_buf
    Timer timer                     # connect timeout, then pooled-idle timeout
    Timer duration_timer            # the cluster's max_connection_duration
    uint8_t pending                 # its stream waits for it (upstream_rq_pending_active):
                                    #   connecting, or UC_WAITING
    uint8_t rq_attached             # a stream is attached and its response is not complete
    uint8_t remote_close            # the upstream ended the connection (destroy_remote)
    uint8_t cx_counted              # has a socket: counted in upstream_cx_active, n_cx, pool_conns
    uint8_t last_request            # close after this response (max requests or duration reached)
    uint32_t nrequests              # requests it has carried
    UpConn* wait_next               # the cluster's per-worker queue of UC_WAITING ones
    UpConn* wait_prev
    uint8_t queued                  # on that queue
    uint8_t host_counted            # counted in its worker's pool_conns (not a CONNECT tunnel's)
    uint64_t id                     # the debug lines' ConnectionId (shared with HConn's)
    StatBlock* hstats               # its host's counters (HS_*), NULL: none

cdef struct HStream:
    HConn* c
    H1Head head                     # the request head, owned
    int method
    int minor
    const RouteEntry* route
    ClusterCfg* cluster
    UpConn* up
    StatBlock* hstats               # the chosen upstream host's counters (HS_*), NULL: none
    uint8_t req_chunked             # request body re-framed as chunked upstream
    uint8_t req_done                # the whole request is in the upstream's out_buf
    uint8_t resp_started            # the response head went to the downstream
    uint8_t resp_chunked            # ... with a body we frame as chunked
    uint8_t keepalive               # the downstream connection may carry another request
    uint8_t upgrade                 # the request asks to switch protocols (WebSocket)
    uint8_t tunnel                  # 101 received: both connections are now a byte tunnel
    uint8_t tunnel_up_eof
    uint8_t tunnel_down_eof
    int status
    uint64_t start_ms
    uint64_t req_body_bytes         # request body bytes received (tunnels: bytes from the client)
    Timer timeout                   # the route's timeout (upstream request)
    char* rewritten_path            # the route's path rewrite, or NULL
    size_t rewritten_path_len
    FChain* fc                      # filter instances and state; NULL without http_filters
    int cluster_override            # a filter chose the cluster (index), or -1
    uint8_t route_cleared           # a filter asked for the route to be recomputed
    uint8_t resp_end_fed            # the response end went to the encoder filters
    uint8_t connect                 # a CONNECT request (tunnelled once the upstream connects)
    uint8_t expect_continue         # Expect: 100-continue, which we answer (and do not forward)
    # stream_info: what access logs print (core/access_log.pxi) and later filters read
    uint8_t resp_from_upstream      # the response head came from s.up (RESP() can read it)
    uint8_t logged
    uint32_t response_flags         # RF_* (Envoy's UH, UF, UC, NR, UT, DC, SI, ...)
    uint64_t start_time_us          # wall clock at the start (CLOCK_REALTIME, microseconds)
    uint64_t request_end_ms         # monotonic: the whole request was received; 0: not yet
    uint64_t upstream_start_ms      # an upstream connection was assigned; 0: never
    uint64_t response_start_ms      # the response head went downstream; 0: not yet
    uint64_t end_ms
    uint64_t bytes_sent             # response body bytes sent downstream (tunnels: to the client)
    int cluster_index               # into HttpCfg.clusters; -1: none
    sockaddr_storage upstream_addr  # the upstream host chosen (upstream_addrlen 0: none)
    socklen_t upstream_addrlen
    char client_ip[48]              # the trusted client address (use_remote_address/XFF)
    size_t client_ip_len
    uint16_t client_port            # 0 when the address came from x-forwarded-for
    uint8_t client_internal         # Envoy's "internal request" (http_stream.pxi)
    uint8_t edge                    # use_remote_address and not internal: an edge request
    uint8_t envoy_hdrs              # the request has x-envoy-* fields (the codec's H1X_ENVOY_HDR)
    uint64_t timeout_ms             # the route timeout in force (x-envoy-upstream-rq-timeout-ms)
    uint64_t expected_timeout_ms    # what x-envoy-expected-rq-timeout-ms says; 0: not sent
    uint64_t service_time_ms        # the x-envoy-upstream-service-time we sent ...
    uint8_t service_time_set        # ... if we did
    char request_id[40]             # the x-request-id we generated, if any
    size_t request_id_len
    Timer idle_timer                # stream_idle_timeout (lazy: checks last_active_ms)
    Timer request_timer             # request_timeout
    uint64_t last_active_ms

cdef struct HConn:
    Endp down
    Worker* w
    HConn* prev
    HConn* next
    HConn* next_deferred
    ListenerCfg* cfg                # one reference; cfg.http is this connection's config
    H1Parser req
    Chain in_buf
    Chain out_buf
    HStream* stream
    uint32_t nrequests
    uint8_t closed
    uint8_t down_eof
    uint8_t close_after             # close once out_buf is flushed and no stream is active
    uint8_t lingering               # answered and shut for writing: discarding what still comes
    uint8_t unread_request          # a request ended before all of it was read (_hconn_finish)
    uint8_t in_pump
    uint8_t repump
    Timer idle_timer
    Timer headers_timer
    char remote_ip[48]
    size_t remote_ip_len
    uint16_t remote_port
    uint8_t remote_loopback         # the peer is 127/8 or ::1
    uint64_t req_start_ms           # the first byte of the request being parsed arrived
    uint64_t req_start_us           # ... (wall clock, START_TIME)
    SplicePipe req_pipe             # request bodies: downstream -> upstream
    SplicePipe rsp_pipe             # response bodies: upstream -> downstream
    uint8_t codec_seen              # bytes arrived: counted in downstream_cx_http1_*
    uint8_t peer_gone               # a read or write failed: the peer reset (a remote close)
    uint8_t partial_rq              # the client closed inside a request head (an active stream)
    uint16_t local_port             # the listener's port (strip_matching_host_port only)
    uint64_t id                     # the debug lines' ConnectionId (core/debug_log.pxi)


# The http.<stat_prefix>.* block (H_*, HTTP_STATS, HTTP_GAUGES): fastproxy/stats_table.py.


# ---------------------------------------------------------------- small helpers

cdef int chain_move_bytes(Chain* dst, Chain* src, size_t n) noexcept nogil:
    """Move the first n bytes of src to the end of dst without copying them."""
    cdef SliceRef* r
    while n and src.count:
        r = &src.refs[src.head]
        if r.len <= n:
            if chain_room(dst, 1) < 0:
                return -1
            dst.refs[dst.head + dst.count] = r[0]
            dst.count += 1
            dst.length += r.len
            src.length -= r.len
            n -= r.len
            src.head += 1
            src.count -= 1
        else:
            slice_incref(r.s)
            if chain_append_slice(dst, r.s, r.off, n) < 0:
                return -1
            r.off += n
            r.len -= n
            src.length -= n
            n = 0
    if src.count == 0:
        src.head = 0
    return 0


cdef bint splice_pipe_open(Worker* w, SplicePipe* sp) noexcept nogil:
    """Give sp a pipe (from the worker's pool, dispatcher.pxi) if it has none."""
    cdef PooledPipe pp
    if sp.r >= 0:
        return True
    if not pipe_take(w, HTTP_IO_LIMIT, &pp):
        return False                    # e.g. EMFILE: the copy path still works
    sp.r = pp.r
    sp.w = pp.w
    sp.cap = pp.cap
    sp.bytes = 0
    return True


cdef void splice_pipe_close(Worker* w, SplicePipe* sp) noexcept nogil:
    """Give sp's pipe back to the pool (kept only if drained)."""
    cdef PooledPipe pp
    pp.r = sp.r
    pp.w = sp.w
    pp.want = HTTP_IO_LIMIT
    pp.cap = sp.cap
    pipe_give_back(w, &pp, sp.bytes)
    sp.r = -1
    sp.w = -1
    sp.bytes = 0


cdef int splice_move(SplicePipe* sp, Endp* src, Endp* dst, uint64_t* src_left,
                     uint64_t* moved) noexcept nogil:
    """Move up to *src_left body bytes src -> pipe -> dst with splice(2). *src_left goes
    down by what was read, *moved up by what was written. 0, or -1 (src failed or ended
    early), -2 (dst failed)."""
    cdef ssize_t n
    cdef size_t k
    cdef bint progress = True
    while progress:
        progress = False
        if sp.bytes and dst.writable:
            n = splice(sp.r, NULL, dst.fd, NULL, sp.bytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                sp.bytes -= <size_t>n
                moved[0] += <uint64_t>n
                progress = True
            elif n < 0 and errno == EAGAIN:
                dst.writable = 0
            elif n < 0 and errno != EINTR:
                return -2
        if src_left[0] and src.readable and sp.bytes < sp.cap:
            k = sp.cap - sp.bytes
            if k > src_left[0]:
                k = <size_t>src_left[0]
            n = splice(src.fd, NULL, sp.w, NULL, k, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                sp.bytes += <size_t>n
                src_left[0] -= <uint64_t>n
                progress = True
            elif n == 0:
                return -1
            elif errno == EAGAIN:
                if sp.bytes == 0:
                    src.readable = 0
            elif errno != EINTR:
                return -1
    return 0


cdef inline bint _ieq(const char* a, size_t an, const char* lower) noexcept nogil:
    """a (any case) equals the lowercase NUL-terminated `lower` (_rt_ieq's compare)."""
    return strlen(lower) == an and _rt_ieq(a, lower, an)


cdef const char* _status_reason(int status) noexcept nogil:
    """The reason phrase of the IANA HTTP status code registry (RFC 9110 15), for the status
    lines fastproxy writes itself: local replies, and responses a filter changed."""
    if status < 300:
        if status == 100: return "Continue"
        if status == 101: return "Switching Protocols"
        if status == 102: return "Processing"
        if status == 103: return "Early Hints"
        if status == 200: return "OK"
        if status == 201: return "Created"
        if status == 202: return "Accepted"
        if status == 203: return "Non-Authoritative Information"
        if status == 204: return "No Content"
        if status == 205: return "Reset Content"
        if status == 206: return "Partial Content"
        if status == 207: return "Multi-Status"
        if status == 208: return "Already Reported"
        if status == 226: return "IM Used"
    elif status < 400:
        if status == 300: return "Multiple Choices"
        if status == 301: return "Moved Permanently"
        if status == 302: return "Found"
        if status == 303: return "See Other"
        if status == 304: return "Not Modified"
        if status == 305: return "Use Proxy"
        if status == 307: return "Temporary Redirect"
        if status == 308: return "Permanent Redirect"
    elif status < 500:
        if status == 400: return "Bad Request"
        if status == 401: return "Unauthorized"
        if status == 402: return "Payment Required"
        if status == 403: return "Forbidden"
        if status == 404: return "Not Found"
        if status == 405: return "Method Not Allowed"
        if status == 406: return "Not Acceptable"
        if status == 407: return "Proxy Authentication Required"
        if status == 408: return "Request Timeout"
        if status == 409: return "Conflict"
        if status == 410: return "Gone"
        if status == 411: return "Length Required"
        if status == 412: return "Precondition Failed"
        if status == 413: return "Payload Too Large"
        if status == 414: return "URI Too Long"
        if status == 415: return "Unsupported Media Type"
        if status == 416: return "Range Not Satisfiable"
        if status == 417: return "Expectation Failed"
        if status == 418: return "I'm a teapot"
        if status == 421: return "Misdirected Request"
        if status == 422: return "Unprocessable Content"
        if status == 423: return "Locked"
        if status == 424: return "Failed Dependency"
        if status == 425: return "Too Early"
        if status == 426: return "Upgrade Required"
        if status == 428: return "Precondition Required"
        if status == 429: return "Too Many Requests"
        if status == 431: return "Request Header Fields Too Large"
        if status == 451: return "Unavailable For Legal Reasons"
    else:
        if status == 500: return "Internal Server Error"
        if status == 501: return "Not Implemented"
        if status == 502: return "Bad Gateway"
        if status == 503: return "Service Unavailable"
        if status == 504: return "Gateway Timeout"
        if status == 505: return "HTTP Version Not Supported"
        if status == 506: return "Variant Also Negotiates"
        if status == 507: return "Insufficient Storage"
        if status == 508: return "Loop Detected"
        if status == 511: return "Network Authentication Required"
    return "Unknown"


cdef inline H1Str _s(const char* p, size_t n) noexcept nogil:
    cdef H1Str s
    s.p = p
    s.n = n
    return s


cdef inline H1Str _cs(const char* p) noexcept nogil:
    return _s(p, strlen(p))


cdef struct PairList:               # field lines being assembled for a head we send
    H1Pair* v
    size_t n
    size_t cap


cdef int _pl_add(PairList* l, H1Str name, H1Str value) noexcept nogil:
    cdef H1Pair* nv
    if l.n == l.cap:
        nv = <H1Pair*>realloc(l.v, (l.cap * 2 + 16) * sizeof(H1Pair))
        if nv == NULL:
            return -1
        l.v = nv
        l.cap = l.cap * 2 + 16
    l.v[l.n].name = name
    l.v[l.n].value = value
    l.n += 1
    return 0


cdef void _pl_remove(PairList* l, const char* name, size_t n) noexcept nogil:
    cdef size_t i, k = 0
    for i in range(l.n):
        if not _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name, n):
            l.v[k] = l.v[i]
            k += 1
    l.n = k


cdef H1Str _pl_take(PairList* l, const char* name, size_t n) noexcept nogil:
    """Remove every field `name`; return the first one's value (p NULL: there was none)."""
    cdef H1Str first = _s(NULL, 0)
    cdef size_t i
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name, n):
            first = l.v[i].value
            break
    _pl_remove(l, name, n)
    return first


cdef bint _pl_has(PairList* l, const char* name, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name, n):
            return True
    return False


cdef int _pl_overwrite(PairList* l, H1Str name, H1Str value) noexcept nogil:
    """Replace every field `name` by one `name: value` where the first one stood (or add it)."""
    cdef size_t i, k = 0
    cdef bint placed = False
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name.p, name.n):
            if placed:
                continue
            l.v[i].value = value
            placed = True
        l.v[k] = l.v[i]
        k += 1
    l.n = k
    if not placed:
        return _pl_add(l, name, value)
    return 0


DEF SERVER_OVERWRITE = 0
DEF SERVER_APPEND_IF_ABSENT = 1
DEF SERVER_PASS_THROUGH = 2


cdef int _pl_set_server(PairList* l, const HttpCfg* h) noexcept nogil:
    """Server on a response head, as the connection manager sets it after the filters and
    the route's mutations (server_header_transformation)."""
    if h.server_mode == SERVER_PASS_THROUGH or h.server_name_len == 0:
        return 0
    if h.server_mode == SERVER_APPEND_IF_ABSENT:
        if _pl_has(l, "server", 6):
            return 0
    else:
        _pl_remove(l, "server", 6)
    return _pl_add(l, _cs("server"), _s(h.server_name, h.server_name_len))


cdef int _pl_apply_ops(PairList* l, const RouteHeaderOps* ops) noexcept nogil:
    """A route's header mutations on a head being serialized (see _apply_route_ops)."""
    return _apply_route_ops(l, NULL, ops)


cdef int _hm_apply_ops(HMap* m, const RouteHeaderOps* ops) noexcept nogil:
    """A route's header mutations on a filter chain's header map (copied into its arena)."""
    return _apply_route_ops(NULL, m, ops)


cdef int _apply_route_ops(PairList* l, HMap* m, const RouteHeaderOps* ops) noexcept nogil:
    """Envoy's header mutations, on the pair list l or (when l is NULL) the map m, one level
    (route, virtual host, route configuration) at a time: the level's removes; then every
    add is decided against the headers as they are before any add of the level; then
    overwrites in order, then appends in order."""
    cdef int i = 0, j, k
    cdef const RouteHeaderOp* op
    cdef uint8_t* verdict
    cdef PairList* fields = l if l != NULL else &m.l
    cdef int rc
    if ops.n == 0:
        return 0
    verdict = <uint8_t*>malloc(ops.n)
    if verdict == NULL:
        return -1
    while i < ops.n:
        j = i
        while j < ops.n and ops.ops[j].level == ops.ops[i].level:
            j += 1
        for k in range(i, j):
            op = &ops.ops[k]
            if op.action == RHO_REMOVE:
                _pl_remove(fields, op.name.p, op.name.n)
        for k in range(i, j):
            op = &ops.ops[k]
            verdict[k] = 0                                  # skip
            if op.action == RHO_APPEND_IF_EXISTS_OR_ADD:
                verdict[k] = 2                              # append
            elif op.action == RHO_ADD_IF_ABSENT and not _pl_has(fields, op.name.p, op.name.n):
                verdict[k] = 2
            elif op.action == RHO_OVERWRITE_IF_EXISTS_OR_ADD:
                verdict[k] = 1                              # overwrite
            elif op.action == RHO_OVERWRITE_IF_EXISTS and _pl_has(fields, op.name.p, op.name.n):
                verdict[k] = 1
        for k in range(i, j):
            op = &ops.ops[k]
            if verdict[k] != 1:
                continue
            if l != NULL:
                rc = _pl_overwrite(l, _s(op.name.p, op.name.n), _s(op.value.p, op.value.n))
            else:
                rc = hm_set(m, op.name.p, op.name.n, op.value.p, op.value.n)
            if rc < 0:
                free(verdict)
                return -1
        for k in range(i, j):
            op = &ops.ops[k]
            if verdict[k] != 2:
                continue
            if l != NULL:
                rc = _pl_add(l, _s(op.name.p, op.name.n), _s(op.value.p, op.value.n))
            else:
                rc = hm_add(m, op.name.p, op.name.n, op.value.p, op.value.n)
            if rc < 0:
                free(verdict)
                return -1
        i = j
    free(verdict)
    return 0


cdef bint _is_hop_by_hop(const char* name, size_t n) noexcept nogil:
    # Dispatch on the length first: most fields are none of these, and their lengths say so.
    if n == 2:
        return _ieq(name, n, "te")
    if n == 7:
        return _ieq(name, n, "trailer") or _ieq(name, n, "upgrade")
    if n == 10:
        return _ieq(name, n, "connection") or _ieq(name, n, "keep-alive")
    if n == 14:
        return _ieq(name, n, "content-length")
    if n == 16:
        return _ieq(name, n, "proxy-connection")
    if n == 17:
        return _ieq(name, n, "transfer-encoding")
    return False


cdef char* _HEX = "0123456789abcdef"

cdef void _uuid4(char* out, uint64_t a, uint64_t b) noexcept nogil:
    """A version-4 UUID (8-4-4-4-12 hex digits) from 128 random bits."""
    cdef int i, k = 0
    cdef uint64_t hi = (a & 0xffffffffffff0fffULL) | 0x4000ULL             # version 4
    cdef uint64_t lo = (b & 0x3fffffffffffffffULL) | 0x8000000000000000ULL  # variant 10
    for i in range(16):
        if i == 8 or i == 12:
            out[k] = b'-'
            k += 1
        out[k] = _HEX[(hi >> (60 - 4 * i)) & 15]
        k += 1
    for i in range(16):
        if i == 0 or i == 4:
            out[k] = b'-'
            k += 1
        out[k] = _HEX[(lo >> (60 - 4 * i)) & 15]
        k += 1
    out[36] = 0


cdef void stream_new_request_id(HStream* s) noexcept nogil:
    """Generate the stream's x-request-id (s.request_id, 36 characters)."""
    cdef uint64_t a = worker_id_random(s.c.w)
    cdef uint64_t b = worker_id_random(s.c.w)
    _uuid4(s.request_id, a, b)
    s.request_id_len = 36


cdef size_t _u64_text(uint64_t v, char* out) noexcept nogil:
    """v in decimal at out (room for 20 digits); returns the length."""
    cdef char tmp[20]
    cdef size_t n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef bint _named_by_connection(H1Head* h, const char* name, size_t n) noexcept nogil:
    """Is `name` one of the tokens of the message's Connection header(s)?"""
    cdef uint32_t i
    cdef size_t pos, a, b
    cdef H1Field* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if not _ieq(h.buf + f.name_off, f.name_len, "connection"):
            continue
        pos = 0
        while _h1_list_next(<const uint8_t*>h.buf + f.value_off, f.value_len, &pos, &a, &b):
            if _rt_ieq2(h.buf + f.value_off + a, b - a, name, n):
                return True
    return False


cdef bint _connection_nominations_ok(H1Head* h, bint upgrade) noexcept nogil:
    """Envoy's check of the fields a request's Connection header nominates for removal
    (Utility::sanitizeConnectionHeader), before any is removed: refused when it names Host
    (its removal would leave an HTTP/1.1 request without one), an X-Forwarded-For, -Host or
    -Proto (removing one hides where the request came from), a pseudo-header, or when it has
    10 or more elements. Upgrade requests skip all but the Host check, as in Envoy."""
    cdef uint32_t i
    cdef size_t pos, a, b, n
    cdef size_t count = 0
    cdef const char* t
    cdef H1Field* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if not _ieq(h.buf + f.name_off, f.name_len, "connection"):
            continue
        pos = 0
        while _h1_list_next(<const uint8_t*>h.buf + f.value_off, f.value_len, &pos, &a, &b):
            if b == a:
                continue
            t = h.buf + f.value_off + a
            n = b - a
            count += 1
            if _ieq(t, n, "host"):
                return False
            if upgrade:
                continue
            if (t[0] == b':' or _ieq(t, n, "x-forwarded-for") or _ieq(t, n, "x-forwarded-host")
                    or _ieq(t, n, "x-forwarded-proto")):
                return False
    return upgrade or count < 10


cdef bint _has_connection_field(H1Head* h) noexcept nogil:
    cdef uint32_t i
    for i in range(h.nfields):
        if h.fields[i].name_len == 10 and _ieq(h.buf + h.fields[i].name_off, 10, "connection"):
            return True
    return False


cdef int _pl_reserve(PairList* l, size_t n) noexcept nogil:
    cdef H1Pair* nv
    if l.cap >= n:
        return 0
    nv = <H1Pair*>realloc(l.v, n * sizeof(H1Pair))
    if nv == NULL:
        return -1
    l.v = nv
    l.cap = n
    return 0


cdef int _pl_from_head(PairList* l, H1Head* h) noexcept nogil:
    """The end-to-end fields of a received head (hop-by-hop ones dropped)."""
    cdef uint32_t i
    cdef H1Field* f
    cdef const char* name
    cdef bint conn = _has_connection_field(h)
    if _pl_reserve(l, l.n + h.nfields + 8) < 0:
        return -1
    for i in range(h.nfields):
        f = &h.fields[i]
        name = h.buf + f.name_off
        if _is_hop_by_hop(name, f.name_len) or (conn and _named_by_connection(h, name, f.name_len)):
            continue
        if _pl_add(l, _s(name, f.name_len), _s(h.buf + f.value_off, f.value_len)) < 0:
            return -1
    return 0


cdef const char* _head_field(H1Head* h, const char* lower, size_t* n) noexcept nogil:
    cdef uint32_t i
    cdef H1Field* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if _ieq(h.buf + f.name_off, f.name_len, lower):
            n[0] = f.value_len
            return h.buf + f.value_off
    return NULL


cdef int _append_head(Chain* out, PairList* l, bint request, H1Str method, H1Str target,
                      int status, H1Str reason, int minor=1) noexcept nogil:
    """Serialize a head straight into a fresh slice at the end of `out`. `minor`: the
    response's HTTP/1.x version, the request's own (Envoy answers an HTTP/1.0 request with
    an HTTP/1.0 status line); requests upstream are always HTTP/1.1."""
    cdef ssize_t n
    cdef Slice* s
    if request:
        n = h1_request_head_size(method, target, 1, l.v, l.n)
    else:
        n = h1_response_head_size(status, reason, minor, l.v, l.n)
    if n < 0:
        return -1
    s = slice_new(<size_t>n)
    if s == NULL:
        return -1
    if request:
        h1_write_request_head(s.data, method, target, 1, l.v, l.n)
    else:
        h1_write_response_head(s.data, status, reason, minor, l.v, l.n)
    s.fill = <size_t>n
    return chain_append_slice(out, s, 0, <size_t>n)


cdef int _append_chunk(Chain* out, const char* p, size_t n) noexcept nogil:
    cdef char hdr[H1_CHUNK_HEADER_MAX]
    cdef size_t k = h1_write_chunk_header(hdr, n)
    if chain_append(out, hdr, k) < 0 or chain_append(out, p, n) < 0:
        return -1
    return chain_append(out, "\r\n", 2)


cdef int _append_chunk_header(Chain* out, size_t n) noexcept nogil:
    cdef char hdr[H1_CHUNK_HEADER_MAX]
    cdef size_t k = h1_write_chunk_header(hdr, n)
    return chain_append(out, hdr, k)


cdef int _append_last_chunk(Chain* out, H1Head* trailers) noexcept nogil:
    """0 CRLF, the trailer fields (minus hop-by-hop ones), CRLF."""
    cdef PairList l
    cdef int rc
    memset(&l, 0, sizeof(PairList))
    if trailers != NULL and _pl_from_head(&l, trailers) < 0:
        free(l.v)
        return -1
    rc = _append_last_chunk_pairs(out, &l)
    free(l.v)
    return rc


cdef int _append_last_chunk_pairs(Chain* out, PairList* l) noexcept nogil:
    cdef ssize_t n = h1_last_chunk_size(l.v, l.n)
    cdef Slice* s
    if n < 0:
        return -1
    s = slice_new(<size_t>n)
    if s == NULL:
        return -1
    h1_write_last_chunk(s.data, l.v, l.n)
    s.fill = <size_t>n
    return chain_append_slice(out, s, 0, <size_t>n)


# ---------------------------------------------------------------- local replies

cdef void hconn_local_reply(HConn* c, int status, const char* body, size_t body_len,
                            const char* location, size_t location_len, bint close_conn) noexcept nogil:
    """Answer the current request (if any) from the proxy itself."""
    hconn_local_reply_ex(c, status, body, body_len, location, location_len, close_conn, NULL)


cdef void hconn_local_reply_ex(HConn* c, int status, const char* body, size_t body_len,
                               const char* location, size_t location_len, bint close_conn,
                               const HMap* extra) noexcept nogil:
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef HStream* st = c.stream
    cdef PairList l
    cdef char clen[24]
    cdef char* owned = NULL
    cdef int k
    # The client's HTTP/1.x version, as Envoy answers; but the 426 that refuses HTTP/1.0
    # comes from Envoy's codec, which never took the request as HTTP/1.0: HTTP/1.1.
    cdef int minor = st.minor if st != NULL and status != 426 else 1
    memset(&l, 0, sizeof(PairList))
    if status == 204:
        pass                            # a 204 has no body and no Content-Length (Envoy)
    elif st != NULL and st.method == H1M_HEAD and body_len == 0:
        # Envoy's codec frames a HEAD answer without Content-Length as chunked (no body
        # follows either way); checked against Envoy 1.40 on redirects and empty replies.
        _pl_add(&l, _cs("transfer-encoding"), _cs("chunked"))
    else:
        k = snprintf(clen, sizeof(clen), "%zu", body_len)
        _pl_add(&l, _cs("content-length"), _s(clen, <size_t>k))
    if extra != NULL:
        hm_to_pairs(extra, &l, True)
    if body_len and (extra == NULL or hm_get(extra, "content-type", 12, <size_t*>&k) == NULL):
        _pl_add(&l, _cs("content-type"), _cs("text/plain"))
    if location != NULL:
        _pl_add(&l, _cs("location"), _s(location, location_len))
    if c.stream != NULL and c.stream.response_flags & RF_UO:
        _pl_add(&l, _cs("x-envoy-overloaded"), _cs("true"))     # Envoy's circuit-breaker reply
    if c.stream != NULL and c.stream.route != NULL:
        # Envoy applies the chosen route's response_headers_to_add/remove (route, virtual
        # host, route configuration) to its direct responses, redirects and router errors.
        _pl_apply_ops(&l, &c.stream.route.response_headers)
    pl_finish_response(&l, c.stream, c, &owned)             # Date, Server, Via, x-request-id
    if close_conn:
        _pl_add(&l, _cs("connection"), _cs("close"))
        c.close_after = 1
    elif st != NULL and (not st.keepalive or c.req.state != H1_MESSAGE_DONE
                         or (minor == 0 and body_len == 0 and status != 204)):
        # The connection ends after this reply (stream_finish): the client asked for it,
        # or its request is HTTP/1.0 without keep-alive, or its body was not read. Envoy
        # says so in the reply. Envoy 1.40 also ends an HTTP/1.0 keep-alive connection
        # after an empty local reply (a redirect), so the proxy does too.
        st.keepalive = 0
        _pl_add(&l, _cs("connection"), _cs("close"))
    elif minor == 0:
        _pl_add(&l, _cs("connection"), _cs("keep-alive"))
    _append_head(&c.out_buf, &l, False, _s(NULL, 0), _s(NULL, 0), status, _cs(_status_reason(status)),
                 minor)
    free(l.v)
    free(owned)
    if body_len and (c.stream == NULL or c.stream.method != H1M_HEAD):
        chain_append(&c.out_buf, body, body_len)
        if c.stream != NULL:
            c.stream.bytes_sent += body_len
    if c.stream != NULL:
        c.stream.status = status
        c.stream.resp_started = 1
    _count_downstream(c, status)


cdef void stream_local_reply(HStream* s, int status, const char* body, size_t n,
                             const char* location, size_t location_len, bint close_conn) noexcept nogil:
    """The proxy answers the stream itself (no route, direct responses and redirects,
    upstream failures, timeouts, limits). When the stream has encoder filters and no
    response has entered them yet, the reply goes through them as Envoy's local replies do
    (hf_local_reply_start); otherwise (no filters: the fast path, which allocates nothing)
    it is written as it is. The stream ends, or waits for a filter that holds its reply:
    the caller must not touch s afterwards. The caller has dealt with s.up."""
    cdef HConn* c = s.c
    cdef FChain* fc = s.fc
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "http", c.id, c.nrequests, "sending local reply: status %d%s%.*s", status,
               _pick(n != 0 and n < 200, ", ", ""), <int>(n if n < 200 else 0), _pick(body != NULL, body, ""))
    if fc != NULL and not fc.resp.used and not fc.dead and _enc_filtered(s):
        hf_local_reply_start(s, status, body, n, location, location_len, close_conn)
        return
    hconn_local_reply(c, status, body, n, location, location_len, close_conn)
    stream_finish(s)


cdef inline void _count_status(StatBlock* b, Worker* w, int first, int status) noexcept nogil:
    """The status class (first: the 1xx slot; 2xx..5xx follow) and, right after 5xx,
    *_rq_completed: Envoy charges both together when a response (or local reply) starts."""
    if 100 <= status < 600:
        stat_add(b, w, first + status // 100 - 1, 1)
        stat_add(b, w, first + 5, 1)


cdef inline void _count_upstream(StatBlock* b, Worker* w, int status) noexcept nogil:
    """A cluster's response (or the router's reply in its place): upstream_rq_<class>,
    upstream_rq_completed and upstream_rq_<code>, which Envoy charges together."""
    _count_status(b, w, C_RQ_1XX, status)
    if CODE_FIRST <= status < CODE_FIRST + CODE_SLOTS:
        stat_add(b, w, C_CODES + status - CODE_FIRST, 1)


cdef inline void _count_host(HStream* s, int status) noexcept nogil:
    """The chosen host's answer (or the router's in its place): rq_error for a 5xx, else
    rq_success, as Envoy's router charges the host."""
    host_stat_add(s.hstats, s.c.w, HS_RQ_ERROR if status >= 500 else HS_RQ_SUCCESS, 1)


cdef inline void _count_downstream(HConn* c, int status) noexcept nogil:
    """A response to the downstream: http.<prefix>.downstream_rq_<class>/_completed and
    the same per listener (listener.<address>.http.<prefix>.*)."""
    _count_status((<HttpCfg*>c.cfg.http).stats, c.w, H_RQ_1XX, status)
    if c.cfg.lhstats != NULL:
        _count_status(c.cfg.lhstats, c.w, LH_RQ_1XX, status)


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
           _pick(c.req.state == H1_MESSAGE_DONE, "true", "false"),
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
        w.upconns = u.next
    if u.next != NULL:
        u.next.prev = u.prev
    u.next_deferred = w.upconn_deferred
    w.upconn_deferred = u


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
    lb.kick_next = <WorkerLb*>w.kicked
    w.kicked = lb


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
    u.ep.kind = EP_HTTP_UP
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
    u.next = w.upconns
    if w.upconns != NULL:
        w.upconns.prev = u
    w.upconns = u
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


# Envoy's wording of the local replies for an upstream that failed before the response
# headers (the text clients and logs know): one prefix, then the reset reason. OVERFLOW is
# a request a circuit breaker refused (sent with x-envoy-overloaded: true).
cdef extern from *:
    """
    #define FP_UPSTREAM_RESET(reason) \
        "upstream connect error or disconnect/reset before headers. reset reason: " reason
    static const char FP_UPSTREAM_PROTOCOL_ERROR[] = FP_UPSTREAM_RESET("protocol error");
    static const char FP_UPSTREAM_OVERFLOW[] = FP_UPSTREAM_RESET("overflow");
    static const char FP_UPSTREAM_CONNECT_TIMEOUT[] = FP_UPSTREAM_RESET("connection timeout");
    static const char FP_UPSTREAM_CONNECT_FAILURE[] = FP_UPSTREAM_RESET("connection failure");
    static const char FP_UPSTREAM_REMOTE_FAILURE[] = FP_UPSTREAM_RESET("remote connection failure");
    static const char FP_UPSTREAM_TERMINATION[] = FP_UPSTREAM_RESET("connection termination");
    static const char FP_NO_HEALTHY_UPSTREAM[] = "no healthy upstream";
    static const char FP_UPSTREAM_TIMEOUT[] = "upstream request timeout";
    """
    const char* UPSTREAM_PROTOCOL_ERROR "FP_UPSTREAM_PROTOCOL_ERROR"
    const char* UPSTREAM_OVERFLOW "FP_UPSTREAM_OVERFLOW"
    const char* UPSTREAM_CONNECT_TIMEOUT "FP_UPSTREAM_CONNECT_TIMEOUT"
    const char* UPSTREAM_CONNECT_FAILURE "FP_UPSTREAM_CONNECT_FAILURE"
    const char* UPSTREAM_REMOTE_FAILURE "FP_UPSTREAM_REMOTE_FAILURE"
    const char* UPSTREAM_TERMINATION "FP_UPSTREAM_TERMINATION"
    const char* NO_HEALTHY_UPSTREAM "FP_NO_HEALTHY_UPSTREAM"
    const char* UPSTREAM_TIMEOUT "FP_UPSTREAM_TIMEOUT"


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


# ---------------------------------------------------------------- streams

cdef void stream_free(HStream* s) noexcept nogil:
    timer_cancel(s.c.w, &s.timeout)
    stream_timers_stop(s)
    if s.fc != NULL:
        hf_stream_end(s)
    free(s.rewritten_path)
    h1_head_free(&s.head)
    free(s)


cdef void stream_finish(HStream* s) noexcept nogil:
    """The response is complete (or answered locally): end the stream, keep the
    connection for the next request if allowed."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "http", c.id, c.nrequests, "stream complete: status %d, %llu ms", s.status,
               <unsigned long long>(c.w.now - s.start_ms))
    if s.fc != NULL and s.up != NULL and s.up.hosts != NULL and (h.filter_hooks & HK_LOG):
        s.fc.upstream_host_len = _host_text(&s.up.hosts.hosts[s.up.host_index], s.fc.upstream_host,
                                            sizeof(s.fc.upstream_host))
    stream_log(s)
    if s.up != NULL:
        upconn_release(s.up, s.req_done and s.up.resp.state == H1_MESSAGE_DONE
                       and (s.up.resp.flags & H1F_KEEP_ALIVE))
        s.up = NULL
    stat_sub(h.stats, c.w, H_RQ_ACTIVE, 1)
    stat_add(h.stats, c.w, H_RQ_TIME_MS, c.w.now - s.start_ms)
    if not s.keepalive or c.req.state != H1_MESSAGE_DONE:
        # Either we said Connection: close, or the request body was never read (a local
        # reply came first): the bytes that follow can't be trusted as a next request.
        c.close_after = 1
        if c.req.state != H1_MESSAGE_DONE:
            c.unread_request = 1        # the parser is reset below; _hconn_finish must know
    c.stream = NULL
    stream_free(s)
    h1_reset(&c.req)
    if h.idle_timeout_ms:
        timer_arm(c.w, &c.idle_timer, h.idle_timeout_ms)


cdef void stream_upstream_failed(HStream* s, int status, const char* reason) noexcept nogil:
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    s.up = NULL
    if s.resp_started:
        # Part of the response is out: the only honest signal left is an abrupt close.
        hconn_close(c, True)
        return
    if s.cluster != NULL:
        _count_upstream(s.cluster.stats, c.w, status)     # Envoy charges the router's reply
        _count_host(s, status)
    stream_local_reply(s, status, reason, strlen(reason), NULL, 0, not s.req_done)
    hconn_pump(c)


cdef void _stream_timeout(Worker* w, void* arg) noexcept nogil:
    cdef HStream* s = <HStream*>arg
    cdef HConn* c = s.c
    # The route's timeout: Envoy counts it on the cluster (upstream_rq_timeout) only;
    # downstream_rq_timeout is request_timeout's.
    s.response_flags |= RF_UT
    if s.cluster != NULL:
        stat_add(s.cluster.stats, w, C_RQ_TIMEOUT, 1)
        host_stat_add(s.hstats, w, HS_RQ_TIMEOUT, 1)
    if s.up != NULL:
        upconn_close(s.up)
    stream_upstream_failed(s, 504, UPSTREAM_TIMEOUT)


cdef size_t _host_text(Host* h, char* out, size_t cap) noexcept nogil:
    """The upstream host as "ip:port" ("[ip6]:port")."""
    cdef char ip[48]
    cdef int k
    if h.addr.ss_family == AF_INET6:
        inet_ntop(AF_INET6, &(<sockaddr_in6*>&h.addr).sin6_addr, ip, sizeof(ip))
        k = snprintf(out, cap, "[%s]:%u", ip, <unsigned int>ntohs((<sockaddr_in6*>&h.addr).sin6_port))
    else:
        inet_ntop(AF_INET, &(<sockaddr_in*>&h.addr).sin_addr, ip, sizeof(ip))
        k = snprintf(out, cap, "%s:%u", ip, <unsigned int>ntohs((<sockaddr_in*>&h.addr).sin_port))
    return <size_t>k if 0 < k < <int>cap else 0


cdef const char* _req_field(HStream* s, const char* lower, size_t n, size_t* vn) noexcept nogil:
    """A request field as the upstream will see it: from the filters' map if there is one."""
    if s.fc != NULL:
        return hm_get(&s.fc.req, lower, n, vn)
    return _head_field(&s.head, lower, vn)


cdef uint64_t _parse_u64(const char* p, size_t n) noexcept nogil:
    cdef uint64_t x = 0
    cdef size_t i
    for i in range(n):
        x = x * 10 + <uint64_t>(p[i] - 48)
    return x


cdef int _framing_fields(HStream* s, PairList* l, const HMap* m, int framing, uint64_t length,
                         char* buf, size_t cap, uint8_t* chunked, FDir* d) noexcept nogil:
    """The Content-Length/Transfer-Encoding a head we send gets (UF_* other than PARSER)."""
    cdef size_t n
    cdef const char* v
    cdef int k
    chunked[0] = 0
    if framing == UF_LENGTH:
        k = snprintf(buf, cap, "%llu", <unsigned long long>length)
        if d != NULL:
            d.sink_counted = 1
            d.sink_left = length
        return _pl_add(l, _cs("content-length"), _s(buf, <size_t>k))
    if framing == UF_MAP_LENGTH:
        v = hm_get(m, "content-length", 14, &n)
        if v == NULL or n == 0 or n > 19 or not _all_digits(v, n):
            return -1
        if d != NULL:
            d.sink_counted = 1
            d.sink_left = _parse_u64(v, n)
        return _pl_add(l, _cs("content-length"), _s(v, n))
    if framing == UF_CHUNKED:
        chunked[0] = 1
        if d != NULL:
            d.sink_chunked = 1
        return _pl_add(l, _cs("transfer-encoding"), _cs("chunked"))
    return 0


cdef int _upstream_request_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Serialize the request head for the upstream into s.up.out_buf."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const RouteEntry* e = s.route
    cdef PairList l
    cdef char xff[1024]
    cdef Host* uhost
    cdef char lenbuf[24]
    cdef char tobuf[24]
    cdef size_t n, k
    cdef const char* v
    cdef H1Str target = _s(s.head.buf + s.head.target_off, s.head.target_len)
    cdef H1Str method = _s(s.head.buf + s.head.method_off, s.head.method_len)
    cdef H1Str orig_target
    cdef H1Str orig_host = _s(NULL, 0)     # the Host a host rewrite replaced
    cdef uint8_t chunked = 0
    cdef char* owned = NULL
    cdef char* xff_owned = NULL             # the x-forwarded-for when xff[] is too small
    cdef char* xffp = xff
    cdef size_t xff_cap = sizeof(xff)
    memset(&l, 0, sizeof(PairList))
    try:
        if s.fc != NULL:
            v = hm_get(&s.fc.req, ":method", 7, &n)
            if v == NULL:
                return -1
            method = _s(v, n)
            v = hm_get(&s.fc.req, ":path", 5, &n)
            if v == NULL:
                return -1
            target = _s(v, n)
            v = hm_get(&s.fc.req, ":authority", 10, &n)
            if v != NULL:
                _pl_add(&l, _cs("host"), _s(v, n))
            if hm_to_pairs(&s.fc.req, &l, True) < 0:
                return -1
        elif _pl_from_head(&l, &s.head) < 0:
            return -1
        orig_target = target
        if s.rewritten_path != NULL:
            target = _s(s.rewritten_path, s.rewritten_path_len)
        if framing == UF_PARSER:
            if s.req_chunked:
                _pl_add(&l, _cs("transfer-encoding"), _cs("chunked"))
            else:
                v = _head_field(&s.head, "content-length", &n)
                if v != NULL:
                    _pl_add(&l, _cs("content-length"), _s(v, n))
        else:
            if _framing_fields(s, &l, &s.fc.req, framing, length, lenbuf, sizeof(lenbuf), &chunked,
                               &s.fc.dec) < 0:
                return -1
            s.req_chunked = chunked
        if s.expect_continue:
            _pl_remove(&l, "expect", 6)     # we answered 100-continue ourselves (Envoy too);
                                            # other expectations go on, as in Envoy
        if s.upgrade:
            v = _head_field(&s.head, "upgrade", &n)
            if v != NULL:
                _pl_add(&l, _cs("upgrade"), _s(v, n))
                _pl_add(&l, _cs("connection"), _cs("upgrade"))
        if e.host_rewrite_literal.p != NULL:
            orig_host = _pl_take(&l, "host", 4)
            _pl_add(&l, _cs("host"), _s(e.host_rewrite_literal.p, e.host_rewrite_literal.n))
        elif e.auto_host_rewrite:
            # Envoy 1.40: the host's name (endpoint.hostname, else a STRICT_DNS endpoint's
            # DNS name), without a port; a STATIC endpoint without a hostname keeps the Host.
            uhost = &s.up.hosts.hosts[s.up.host_index]
            if uhost.hostname_len:
                orig_host = _pl_take(&l, "host", 4)
                _pl_add(&l, _cs("host"), _s(uhost.hostname, uhost.hostname_len))
        # Envoy's x-envoy-* rules (http_stream.pxi): the connection manager's pass already
        # ran on a filtered stream's map; the router's runs on every filtered stream, since a
        # filter may have added such a field.
        if s.fc != NULL:
            xe_sanitize(s, &l, XE_AT_ROUTER)
        elif s.envoy_hdrs:
            xe_sanitize(s, &l, XE_AT_HCM | XE_AT_ROUTER)
        if h.use_remote_address and not h.skip_xff_append:
            # Room for the received list, ',' and an address: a long list is appended to
            # too, as Envoy does, never replaced by the peer alone.
            v = _req_field(s, "x-forwarded-for", 15, &n)
            if v != NULL and n + 1 + sizeof(h.local_ip) + sizeof(c.remote_ip) > xff_cap:
                xff_cap = n + 1 + sizeof(h.local_ip) + sizeof(c.remote_ip)
                xff_owned = <char*>malloc(xff_cap)
                if xff_owned == NULL:
                    return -1
                xffp = xff_owned
            k = stream_forwarded_xff(s, xffp, xff_cap)
            _pl_remove(&l, "x-forwarded-for", 15)
            _pl_add(&l, _cs("x-forwarded-for"), _s(xffp, k))
        if h.use_remote_address:
            # A trusted hop's x-forwarded-proto is kept (Envoy: only with xff_num_trusted_hops).
            if h.xff_num_trusted_hops == 0 or not _pl_has(&l, "x-forwarded-proto", 17):
                _pl_remove(&l, "x-forwarded-proto", 17)
                _pl_add(&l, _cs("x-forwarded-proto"), _cs("http"))
        elif not _pl_has(&l, "x-forwarded-proto", 17):
            _pl_add(&l, _cs("x-forwarded-proto"), _cs("http"))
        if s.fc == NULL:
            if s.client_internal:
                _pl_add(&l, _cs("x-envoy-internal"), _cs("true"))
            elif s.edge:
                _pl_add(&l, _cs("x-envoy-external-address"), _s(s.client_ip, s.client_ip_len))
            if h.via_len and _pl_append_list(&l, "via", 3, h.via, h.via_len, &owned) < 0:
                return -1
            if h.generate_request_id and ((s.edge and not h.preserve_external_request_id)
                                          or not _pl_has(&l, "x-request-id", 12)):
                # An edge request's own x-request-id is replaced, unless
                # preserve_external_request_id.
                stream_new_request_id(s)
                if s.edge:
                    _pl_overwrite(&l, _cs("x-request-id"), _s(s.request_id, 36))
                else:
                    _pl_add(&l, _cs("x-request-id"), _s(s.request_id, 36))
        elif h.generate_request_id and not _pl_has(&l, "x-request-id", 12):
            stream_new_request_id(s)
            _pl_add(&l, _cs("x-request-id"), _s(s.request_id, 36))
        if s.expected_timeout_ms and not h.suppress_envoy_headers:
            k = _u64_text(s.expected_timeout_ms, tobuf)
            _pl_add(&l, _cs("x-envoy-expected-rq-timeout-ms"), _s(tobuf, k))
        if s.rewritten_path != NULL and not h.suppress_envoy_headers:   # finalizePathHeader
            _pl_add(&l, _cs("x-envoy-original-path"), orig_target)
        if orig_host.p != NULL and not h.suppress_envoy_headers:
            _pl_add(&l, _cs("x-envoy-original-host"), orig_host)    # the Host it replaced
        if _pl_apply_ops(&l, &e.request_headers) < 0:
            return -1
        if _append_head(&s.up.out_buf, &l, True, method, target, 0, _s(NULL, 0)) < 0:
            return -1
        return 0
    finally:
        free(l.v)
        free(owned)
        free(xff_owned)


cdef int _downstream_response_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Serialize the upstream's response head for the downstream into c.out_buf."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef H1Parser* p = &s.up.resp
    cdef H1Head* rh = &p.head
    cdef PairList l
    cdef const char* v
    cdef size_t n
    cdef char lenbuf[24]
    cdef char svc[24]
    cdef char* owned = NULL
    cdef uint8_t chunked = 0
    cdef int status = rh.status
    cdef H1Str reason
    memset(&l, 0, sizeof(PairList))
    try:
        if s.fc != NULL and s.fc.resp.used:
            v = hm_get(&s.fc.resp, ":status", 7, &n)
            if v == NULL or n != 3 or not _all_digits(v, 3):
                return -1
            status = (v[0] - 48) * 100 + (v[1] - 48) * 10 + (v[2] - 48)
            if status < 200:
                return -1
            s.status = status
            if hm_to_pairs(&s.fc.resp, &l, True) < 0:
                return -1
        else:
            if _pl_from_head(&l, rh) < 0:
                return -1
            if s.request_end_ms and not h.suppress_envoy_headers:
                # The router's x-envoy-upstream-service-time: from the end of the request to
                # the response head (a filtered response got it in _response_to_filters).
                s.service_time_ms = c.w.now - s.request_end_ms
                s.service_time_set = 1
                _pl_overwrite(&l, _cs("x-envoy-upstream-service-time"),
                              _s(svc, _u64_text(s.service_time_ms, svc)))
            # The route's mutations (a filtered response got them before its filters).
            if _pl_apply_ops(&l, &s.route.response_headers) < 0:
                return -1
        if status == rh.status and rh.reason_len:
            reason = _s(rh.buf + rh.reason_off, rh.reason_len)
        else:
            reason = _cs(_status_reason(status))
        if framing == UF_PARSER:
            v = _head_field(rh, "content-length", &n)
            if p.framing == H1_BODY_LENGTH or (v != NULL and (s.method == H1M_HEAD or rh.status == 304)):
                _pl_add(&l, _cs("content-length"), _s(v, n))
            elif s.minor == 1 and (p.framing == H1_BODY_CHUNKED or p.framing == H1_BODY_EOF):
                _pl_add(&l, _cs("transfer-encoding"), _cs("chunked"))
                s.resp_chunked = 1
            elif p.framing == H1_BODY_CHUNKED or p.framing == H1_BODY_EOF:
                # An HTTP/1.0 client knows no chunked coding: the body goes as it is and the
                # close ends it (Envoy 1.40 does the same, even to a keep-alive request).
                s.keepalive = 0
        else:
            if framing == UF_CHUNKED and s.minor == 0:
                framing = UF_NONE               # HTTP/1.0: the close delimits the body
                s.keepalive = 0
            if _framing_fields(s, &l, &s.fc.resp, framing, length, lenbuf, sizeof(lenbuf),
                               &chunked, &s.fc.enc) < 0:
                return -1
        if pl_finish_response(&l, s, c, &owned) < 0:   # last, after the filters and the route
            return -1
        if not s.keepalive:
            _pl_add(&l, _cs("connection"), _cs("close"))
        elif s.minor == 0:
            _pl_add(&l, _cs("connection"), _cs("keep-alive"))
        if _append_head(&c.out_buf, &l, False, _s(NULL, 0), _s(NULL, 0), status, reason, s.minor) < 0:
            return -1
        return 0
    finally:
        free(l.v)
        free(owned)


cdef int _local_response_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Serialize a local reply that passed the encoder filters into c.out_buf: :status and
    the fields as the filters left them, framing from the body that passed them (UF_PARSER:
    a HEAD reply, whose Content-Length the map carries). -1: no valid :status."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef FChain* fc = s.fc
    cdef PairList l
    cdef const char* v
    cdef size_t n
    cdef char lenbuf[24]
    cdef char* owned = NULL
    cdef uint8_t chunked = 0
    cdef int status
    cdef H1Str clv
    memset(&l, 0, sizeof(PairList))
    try:
        v = hm_get(&fc.resp, ":status", 7, &n)
        if v == NULL or n != 3 or not _all_digits(v, 3):
            return -1
        status = (v[0] - 48) * 100 + (v[1] - 48) * 10 + (v[2] - 48)
        if status < 200:
            return -1
        if hm_to_pairs(&fc.resp, &l, framing != UF_PARSER) < 0:
            return -1
        if framing != UF_PARSER and _framing_fields(s, &l, &fc.resp, framing, length, lenbuf,
                                                    sizeof(lenbuf), &chunked, &fc.enc) < 0:
            return -1
        # Envoy's framing of local replies, as on the unfiltered path (hconn_local_reply_ex):
        # a 204 has no Content-Length; an empty reply to HEAD is announced chunked.
        if status == 204:
            _pl_remove(&l, "content-length", 14)
            _pl_remove(&l, "transfer-encoding", 17)
        elif framing == UF_PARSER:
            clv = _pl_take(&l, "content-length", 14)
            if clv.p == NULL or (clv.n == 1 and clv.p[0] == b'0'):
                _pl_add(&l, _cs("transfer-encoding"), _cs("chunked"))
            else:
                _pl_add(&l, _cs("content-length"), clv)
        if fc.local_close or c.req.state != H1_MESSAGE_DONE:
            s.keepalive = 0             # the rest of the request was never read
        elif s.minor == 0 and framing == UF_LENGTH and length == 0 and status != 204:
            s.keepalive = 0             # Envoy ends HTTP/1.0 keep-alive after an empty reply
        if pl_finish_response(&l, s, c, &owned) < 0:
            return -1
        if not s.keepalive:
            _pl_add(&l, _cs("connection"), _cs("close"))
        elif s.minor == 0:
            _pl_add(&l, _cs("connection"), _cs("keep-alive"))
        if _append_head(&c.out_buf, &l, False, _s(NULL, 0), _s(NULL, 0), status,
                        _cs(_status_reason(status)), s.minor) < 0:
            return -1
        s.status = status
        _count_downstream(c, status)
        return 0
    finally:
        free(l.v)
        free(owned)


cdef int _tunnel_response_head(HStream* s) noexcept nogil:
    """The 101 head for the downstream: the upstream's fields plus Upgrade/Connection."""
    cdef H1Head* rh = &s.up.resp.head
    cdef PairList l
    cdef const char* v
    cdef size_t n
    cdef char* owned = NULL
    memset(&l, 0, sizeof(PairList))
    try:
        if _pl_from_head(&l, rh) < 0:
            return -1
        v = _head_field(rh, "upgrade", &n)
        if v != NULL:
            _pl_add(&l, _cs("upgrade"), _s(v, n))
        _pl_add(&l, _cs("connection"), _cs("upgrade"))
        if pl_finish_response(&l, s, s.c, &owned) < 0:     # Envoy encodes a 101 like any response
            return -1
        return _append_head(&s.c.out_buf, &l, False, _s(NULL, 0), _s(NULL, 0), 101,
                            _cs("Switching Protocols"))
    finally:
        free(l.v)
        free(owned)


cdef int _tunnel_pump(HStream* s) noexcept nogil:
    """After a 101: bytes flow both ways untouched. When one side ends, what it sent is
    flushed to the other and the whole tunnel closes. -1 when it closed."""
    cdef HConn* c = s.c
    cdef UpConn* u = s.up
    if u == NULL:
        hconn_close(c, False)
        return -1
    if u.in_buf.length:
        s.bytes_sent += u.in_buf.length
        chain_move(&c.out_buf, &u.in_buf)
    if c.in_buf.length:
        s.req_body_bytes += c.in_buf.length
        chain_move(&u.out_buf, &c.in_buf)
    if u.eof:
        s.tunnel_up_eof = 1
    if c.down_eof:
        s.tunnel_down_eof = 1
    if (s.tunnel_up_eof and c.out_buf.length == 0) or (s.tunnel_down_eof and u.out_buf.length == 0):
        hconn_close(c, False)
        return -1
    return 0


cdef int stream_on_upstream(HStream* s) noexcept nogil:
    """Parse what the upstream sent and forward it. -1: the stream or connection ended."""
    cdef UpConn* u = s.up
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef H1Parser* p = &u.resp
    cdef SliceRef* r
    cdef ssize_t n
    cdef size_t off, seg
    cdef uint64_t left, moved
    cdef int rc
    if s.connect and not s.tunnel and stream_connect_established(s) < 0:
        hconn_close(c, True)
        return -1
    while True:
        if s.tunnel:
            return _tunnel_pump(s)
        if p.state == H1_HEAD:
            if u.in_buf.length == 0:
                break
            r = &u.in_buf.refs[u.in_buf.head]
            n = h1_feed_head(p, r.s.data + r.off, r.len)
            if n < 0:
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)     # counts the 5xx
                return -1
            chain_drain(&u.in_buf, <size_t>n)
            if p.state != H1_HEAD_DONE:
                continue
            if p.flags & H1F_TE_CODINGS:
                # gzip, chunked etc.: the coding would be lost when re-framing (Envoy: 502).
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            if p.head.status == 101 and s.upgrade:
                if _tunnel_response_head(s) < 0:
                    _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                    return -1
                s.status = 101
                s.resp_started = 1
                s.tunnel = 1
                timer_cancel(c.w, &s.timeout)
                _count_downstream(c, 101)
                chain_move(&u.out_buf, &c.in_buf)       # bytes the client sent early
                continue
            if p.head.status == 101:
                # A switch the request did not ask for (RFC 9110 section 15.2.2: a server
                # switches only to a protocol the client offered). The parser stops at a
                # 101, so whatever follows is not HTTP: the connection is unusable.
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            if (p.head.status < 200 or p.head.status == 204) and (
                    (p.flags & H1X_TE) or p.content_length > 0):
                # Envoy's codec: a 1xx or 204 cannot frame a body, so Transfer-Encoding or a
                # non-zero Content-Length there means the upstream and we disagree on where
                # the message ends; the connection cannot be trusted for the next response.
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            if p.flags & H1F_INTERIM:
                # 1xx: we already answered any Expect ourselves; drop it.
                h1_reset(p)
                continue
            s.status = p.head.status
            if fp_log_level <= LOG_DEBUG:
                fp_log(c.w.index, "router", c.id, c.nrequests,
                       "upstream headers complete: status %d from connection %llu", s.status,
                       <unsigned long long>u.id)
            _count_upstream(s.cluster.stats, c.w, s.status)
            _count_host(s, s.status)
            _count_downstream(c, s.status)
            if _enc_filtered(s):
                if p.framing == H1_BODY_NONE:
                    p.state = H1_MESSAGE_DONE
                if _response_to_filters(s) < 0:
                    return -1
                continue
            if _downstream_response_head(s, UF_PARSER, 0) < 0:
                _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            s.resp_started = 1
            s.resp_from_upstream = 1
            s.response_start_ms = c.w.now
            if p.framing == H1_BODY_NONE:
                p.state = H1_MESSAGE_DONE
            continue
        if _enc_body_filtered(s):
            # The body goes through the encoder filters; their sink frames it.
            if p.state == H1_MESSAGE_DONE:
                if not s.resp_end_fed:
                    s.resp_end_fed = 1
                    if p.trailers.nfields and hm_from_head(&s.fc.resp_trailers, &p.trailers, True, False) < 0:
                        hconn_close(c, True)
                        return -1
                    if hf_body_in(s, True, &u.in_buf, 0, True, p.trailers.nfields > 0) < 0:
                        return -1
                    continue
                break
            if not hf_wants_more(s, True):
                break
            if u.in_buf.length == 0:
                if u.eof:
                    if h1_feed_eof(p) == 0:
                        continue
                    if s.resp_started:
                        hconn_close(c, True)
                    else:
                        _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                    return -1
                break
            r = &u.in_buf.refs[u.in_buf.head]
            n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
            if n < 0:
                if s.resp_started:
                    hconn_close(c, True)
                else:
                    _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
                return -1
            stat_add(h.stats, c.w, H_BYTES_COPIED, seg)
            chain_drain(&u.in_buf, off)
            if seg or p.state == H1_MESSAGE_DONE:
                if p.state == H1_MESSAGE_DONE:
                    s.resp_end_fed = 1
                    if p.trailers.nfields and hm_from_head(&s.fc.resp_trailers, &p.trailers, True, False) < 0:
                        hconn_close(c, True)
                        return -1
                if hf_body_in(s, True, &u.in_buf, seg, p.state == H1_MESSAGE_DONE,
                              p.state == H1_MESSAGE_DONE and p.trailers.nfields > 0) < 0:
                    return -1
            chain_drain(&u.in_buf, <size_t>n - off - seg)
            continue
        if not s.resp_started:
            break                       # an encoder filter holds the response head
        if c.rsp_pipe.bytes or (p.framing == H1_BODY_LENGTH and s.resp_started
                                and p.state != H1_MESSAGE_DONE and u.in_buf.length == 0
                                and c.out_buf.length == 0 and splice_pipe_open(c.w, &c.rsp_pipe)):
            # The rest of a Content-Length body: upstream -> pipe -> downstream.
            left = p.body_remaining if p.state != H1_MESSAGE_DONE else 0
            moved = 0
            rc = splice_move(&c.rsp_pipe, &u.ep, &c.down, &left, &moved)
            stat_add(h.stats, c.w, H_BYTES_SPLICED, moved)
            stat_add(h.stats, c.w, H_CX_TX_BYTES, moved)
            stat_add(s.cluster.stats, c.w, C_RX_BYTES, p.body_remaining - left)
            s.bytes_sent += moved
            if moved or left != p.body_remaining:
                s.last_active_ms = c.w.now
            h1_body_skipped(p, p.body_remaining - left)
            if rc < 0:
                if rc == -1:
                    u.remote_close = 1      # the upstream ended or failed
                else:
                    c.peer_gone = 1
                hconn_close(c, True)
                return -1
            if c.rsp_pipe.bytes or p.state != H1_MESSAGE_DONE:
                break
            continue
        if p.state == H1_MESSAGE_DONE:
            if s.resp_chunked and _append_last_chunk(&c.out_buf, &p.trailers) < 0:
                hconn_close(c, True)
                return -1
            stream_finish(s)
            return -1
        # body
        if u.in_buf.length == 0:
            if u.eof:
                if h1_feed_eof(p) == 0:
                    continue
                if s.resp_started:
                    s.response_flags |= RF_UC       # the upstream ended inside the body
                    hconn_close(c, True)
                else:
                    _upconn_failed(u, 503, UPSTREAM_TERMINATION)
                return -1
            break
        r = &u.in_buf.refs[u.in_buf.head]
        n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
        if n < 0:
            s.response_flags |= RF_UPE              # bad body framing from the upstream
            hconn_close(c, True)
            return -1
        if seg:
            stat_add(h.stats, c.w, H_BYTES_COPIED, seg)
            s.bytes_sent += seg
            if p.framing == H1_BODY_LENGTH or (p.framing == H1_BODY_EOF and not s.resp_chunked):
                chain_move_bytes(&c.out_buf, &u.in_buf, <size_t>n)    # off == 0, seg == n
                continue
            if s.resp_chunked:
                if _append_chunk(&c.out_buf, r.s.data + r.off + off, seg) < 0:
                    hconn_close(c, True)
                    return -1
            elif chain_append(&c.out_buf, r.s.data + r.off + off, seg) < 0:
                hconn_close(c, True)            # chunked to an HTTP/1.0 client: data only
                return -1
        chain_drain(&u.in_buf, <size_t>n)
    if u.eof and p.state == H1_HEAD:
        if s.resp_started:
            s.response_flags |= RF_UC
            hconn_close(c, True)
        elif p.head.len:
            # Closed inside a response head: a malformed message (Envoy: protocol error).
            _upconn_failed(u, 502, UPSTREAM_PROTOCOL_ERROR)
        else:
            _upconn_failed(u, 503, UPSTREAM_TERMINATION)
        return -1
    return 0


cdef int _response_to_filters(HStream* s) noexcept nogil:
    """A response head (not 1xx) for the encoder filters. -1: the stream ended."""
    cdef FChain* fc = s.fc
    cdef H1Parser* p = &s.up.resp
    cdef char* st = fc.status_text
    cdef char svc[24]
    cdef size_t n
    st[0] = <char>(48 + (p.head.status // 100) % 10)     # the codec guarantees 100..999
    st[1] = <char>(48 + (p.head.status // 10) % 10)
    st[2] = <char>(48 + p.head.status % 10)
    if hm_append_raw(&fc.resp, _cs(":status"), _s(st, 3)) < 0 \
            or hm_from_head(&fc.resp, &p.head, True, False) < 0:
        hconn_close(s.c, True)
        return -1
    if s.request_end_ms and not (<HttpCfg*>s.c.cfg.http).suppress_envoy_headers:
        s.service_time_ms = s.c.w.now - s.request_end_ms
        s.service_time_set = 1
        n = _u64_text(s.service_time_ms, svc)
        if hm_set(&fc.resp, "x-envoy-upstream-service-time", 29, svc, n) < 0:
            hconn_close(s.c, True)
            return -1
    # The router's part of the response head, so the encoder filters see it (Envoy's
    # router finalizes the response headers before they go down the encoder chain).
    if s.route != NULL and _hm_apply_ops(&fc.resp, &s.route.response_headers) < 0:
        hconn_close(s.c, True)
        return -1
    fc.enc.end_seen = p.framing == H1_BODY_NONE
    return hf_iterate(s, True)


cdef void stream_request_end(HStream* s, bint start_timeout) noexcept nogil:
    """The whole request is in (and on its way upstream when start_timeout): req_done,
    the start of the upstream service time (once), and the route timeout, which Envoy
    starts at the end of the request."""
    s.req_done = 1
    if not s.request_end_ms:
        s.request_end_ms = s.c.w.now
    if start_timeout and s.timeout_ms:
        timer_arm(s.c.w, &s.timeout, s.timeout_ms)


cdef inline bint _request_too_large(HStream* s, uint64_t n) noexcept nogil:
    """n request bytes are over the connection manager's max_request_bytes (0: no limit);
    counts downstream_rq_too_large. The caller answers 413 or resets."""
    cdef HttpCfg* h = <HttpCfg*>s.c.cfg.http
    if h.max_request_bytes and n > h.max_request_bytes:
        stat_add(h.stats, s.c.w, H_RQ_TOO_LARGE, 1)
        return True
    return False


cdef void _request_body_framing_error(HStream* s) noexcept nogil:
    """Bad chunk framing in a request body; the stream ends. Bodies are re-framed, so the
    upstream has only seen a well-formed, unfinished message: reset it, then answer the
    client (or reset it too when the response has begun)."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef int status = c.req.err_status
    stat_add(h.stats, c.w, H_CX_PROTOCOL_ERROR, 1)
    s.response_flags |= RF_DPE
    if s.up != NULL:
        upconn_close(s.up)
        s.up = NULL
    if s.resp_started:
        hconn_close(c, True)            # counts downstream_rq_rx_reset (the stream is active)
        return
    stat_add(h.stats, c.w, H_RQ_RX_RESET, 1)
    chain_clear(&c.in_buf)
    hconn_local_reply(c, status, _status_reason(status), strlen(_status_reason(status)), NULL, 0, True)
    stream_finish(s)


cdef int stream_filter_request_body(HStream* s) noexcept nogil:
    """Request body bytes from the downstream's in_buf to the decoder filters.
    -1 when the stream ended."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef H1Parser* p = &c.req
    cdef SliceRef* r
    cdef ssize_t n
    cdef size_t off, seg
    cdef bint end
    while c.in_buf.length and p.state != H1_MESSAGE_DONE and hf_wants_more(s, False):
        r = &c.in_buf.refs[c.in_buf.head]
        n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
        if n < 0:
            _request_body_framing_error(s)
            return -1
        s.req_body_bytes += seg
        stat_add(h.stats, c.w, H_BYTES_COPIED, seg)
        if _request_too_large(s, s.req_body_bytes):
            hconn_close(c, True)
            return -1
        chain_drain(&c.in_buf, off)
        end = p.state == H1_MESSAGE_DONE
        if end and p.trailers.nfields and hm_from_head(&s.fc.req_trailers, &p.trailers, True, False) < 0:
            hconn_close(c, True)
            return -1
        if seg or end:
            if hf_body_in(s, False, &c.in_buf, seg, end, end and p.trailers.nfields > 0) < 0:
                return -1
            if c.closed or c.stream != s:
                return -1
        chain_drain(&c.in_buf, <size_t>n - off - seg)
    if p.state != H1_MESSAGE_DONE and c.down_eof and c.in_buf.length == 0:
        hconn_close(c, False)           # counts downstream_rq_rx_reset (the stream is active)
        return -1
    return 0


DEF ROUTE_HEADERS_ON_STACK = 48     # router input entries kept on the stack (most requests)


cdef RouteHeader* _route_input(HStream* s, RouteInput* r, RouteHeader* stack) noexcept nogil:
    """The router's input for s, its header array in `stack` (ROUTE_HEADERS_ON_STACK
    entries) when it fits, else malloc'd; release it with _route_input_free. NULL: no
    memory."""
    cdef size_t nf = (s.head.nfields if s.fc == NULL else s.fc.req.l.n) + 2    # + Envoy's two
    cdef RouteHeader* hdrs = stack
    if nf > ROUTE_HEADERS_ON_STACK:
        hdrs = <RouteHeader*>malloc(nf * sizeof(RouteHeader))
        if hdrs == NULL:
            return NULL
    _fill_route_input(s, r, hdrs)
    return hdrs


cdef inline void _route_input_free(RouteHeader* hdrs, RouteHeader* stack) noexcept nogil:
    if hdrs != stack:
        free(hdrs)


cdef void _fill_route_input(HStream* s, RouteInput* r, RouteHeader* hdrs) noexcept nogil:
    cdef H1Head* hd = &s.head
    cdef uint32_t i
    cdef size_t n, k
    cdef HMap* m
    r.scheme = "http"
    r.scheme_len = 4
    r.worker = <unsigned int>s.c.w.index
    r.headers = hdrs
    r.connect = s.connect
    if s.fc != NULL:
        # Route on the headers as the filters left them.
        m = &s.fc.req
        r.method = hm_get(m, ":method", 7, &n)
        r.method_len = n if r.method != NULL else 0
        r.path = hm_get(m, ":path", 5, &n)
        r.path_len = n if r.path != NULL else 0
        r.host = hm_get(m, ":authority", 10, &n)
        r.host_len = n if r.host != NULL else 0
        k = 0
        for i in range(m.l.n):
            if m.l.v[i].name.n and m.l.v[i].name.p[0] == b':':
                continue
            hdrs[k].name = m.l.v[i].name.p
            hdrs[k].name_len = m.l.v[i].name.n
            hdrs[k].value = m.l.v[i].value.p
            hdrs[k].value_len = m.l.v[i].value.n
            k += 1
        r.nheaders = <int>k
        return
    r.method = hd.buf + hd.method_off
    r.method_len = hd.method_len
    r.path = hd.buf + hd.target_off
    r.path_len = hd.target_len
    r.host = _head_field(hd, "host", &n)
    r.host_len = n if r.host != NULL else 0
    k = 0
    for i in range(hd.nfields):
        hdrs[k].name = hd.buf + hd.fields[i].name_off
        hdrs[k].name_len = hd.fields[i].name_len
        if s.envoy_hdrs and xe_drops(s, hdrs[k].name, hdrs[k].name_len, XE_AT_HCM):
            continue                    # routes see the headers as Envoy's HCM left them
        hdrs[k].value = hd.buf + hd.fields[i].value_off
        hdrs[k].value_len = hd.fields[i].value_len
        k += 1
    if s.client_internal:               # (hdrs has room for two more)
        hdrs[k].name = "x-envoy-internal"
        hdrs[k].name_len = 16
        hdrs[k].value = "true"
        hdrs[k].value_len = 4
        k += 1
    elif s.edge:
        hdrs[k].name = "x-envoy-external-address"
        hdrs[k].name_len = 24
        hdrs[k].value = s.client_ip
        hdrs[k].value_len = s.client_ip_len
        k += 1
    r.nheaders = <int>k


cdef inline bint _dec_body_filtered(HStream* s) noexcept nogil:
    return s.fc != NULL and ((<HttpCfg*>s.c.cfg.http).filter_hooks & (HK_DECODE_DATA | HK_DECODE_TRAILERS)) != 0


cdef inline bint _enc_filtered(HStream* s) noexcept nogil:
    return s.fc != NULL and ((<HttpCfg*>s.c.cfg.http).filter_hooks & (HK_ENCODE_HEADERS | HK_ENCODE_DATA | HK_ENCODE_TRAILERS)) != 0


cdef inline bint _enc_body_filtered(HStream* s) noexcept nogil:
    return s.fc != NULL and ((<HttpCfg*>s.c.cfg.http).filter_hooks & (HK_ENCODE_DATA | HK_ENCODE_TRAILERS)) != 0


cdef bint _is_upgrade_token(const char* v, size_t n, const char* token) noexcept nogil:
    """Is the Upgrade field's first protocol `token` (case-insensitive, version ignored)?"""
    cdef size_t k = 0
    while k < n and v[k] != b',' and v[k] != b'/' and v[k] != b' ' and v[k] != b'\t':
        k += 1
    return _ieq(v, k, token)


cdef bint _head_has_route(HStream* s) noexcept nogil:
    """Does a route match the request head as received (before any filter)?"""
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs = _route_input(s, &r, stack)
    cdef bint found
    if hdrs == NULL:
        return False
    found = route_select((<HttpCfg*>s.c.cfg.http).routes, &r) != NULL
    _route_input_free(hdrs, stack)
    return found


cdef int _request_target_normalize(HStream* s, HttpCfg* h) noexcept nogil:
    """Bring the taken request head to origin-form with a Host, before anything reads it.

    * absolute-form (RFC 9112 3.2.2, "GET http://a.example/p HTTP/1.1"): routed and sent
      upstream as its path ("/p"), and its authority replaces the Host field's value, as
      RFC 9112 3.2.2 and Envoy do. Only http and https; an empty path becomes "/".
    * HTTP/1.0 without Host: default_host_for_http_10 if configured, else refused (Envoy).
    Returns -1 for a request to refuse with 400, -2 for an HTTP/1.0 request without Host
    nor default_host_for_http_10 (400 too, with Envoy's empty body)."""
    cdef H1Head* hd = &s.head
    cdef char* t = hd.buf + hd.target_off
    cdef size_t n = hd.target_len
    cdef size_t a, e
    cdef uint32_t i
    cdef int host = -1
    for i in range(hd.nfields):
        if hd.fields[i].name_len == 4 and _ieq(hd.buf + hd.fields[i].name_off, 4, "host"):
            host = <int>i
            break
    if s.method != H1M_CONNECT and n and t[0] != b"/" and not (n == 1 and t[0] == b"*"):
        if n > 7 and _ieq(t, 7, "http://"):
            a = 7
        elif n > 8 and _ieq(t, 8, "https://"):
            a = 8
        else:
            return -1
        e = a
        while e < n and t[e] != b'/' and t[e] != b'?':
            e += 1
        if e == a:
            return -1
        if e == n or t[e] != b'/':
            # No path: slide the authority one byte left over the second '/' of "://"
            # and put the path's "/" after it, so both stay inside the received bytes.
            memmove(t + a - 1, t + a, e - a)
            a -= 1
            e -= 1
            t[e] = b'/'
        if host < 0:                    # HTTP/1.0: no Host; the field's value is set below
            if h1_head_add_field(hd, "host", 4, "", 0) < 0:
                return -1
            host = <int>hd.nfields - 1
        hd.fields[host].value_off = hd.target_off + <uint32_t>a
        hd.fields[host].value_len = <uint32_t>(e - a)
        hd.target_off += <uint32_t>e
        hd.target_len -= <uint32_t>e
        return 0
    if host < 0 and s.minor == 0:
        if h.default_host_10 == NULL:
            return -2                   # no Host and no default_host_for_http_10
        if h1_head_add_field(hd, "host", 4, h.default_host_10, h.default_host_10_len) < 0:
            return -1
    return 0


cdef int _stream_path(HStream* s, HttpCfg* h) noexcept nogil:
    """Normalize the request path (core/http_hcm.pxi); -1 when the stream was answered: 400
    for a path refused, 307 to the path with its escaped slashes decoded (Envoy's
    UNESCAPE_AND_REDIRECT), before any decoder filter runs, as in Envoy; Envoy's filter chain
    exists by then, so its encoder filters see those replies (checked)."""
    cdef HConn* c = s.c
    cdef int rc = stream_normalize_path(s, h)
    if rc == PN_OK:
        return 0
    # (A filter that could not be created does not matter here: the request is answered
    # without reaching the upstream either way.)
    if rc != PN_NOMEM and h.nfilters and hf_stream_create(s) < 0:
        rc = PN_NOMEM
    if rc == PN_REJECT:
        stat_add(h.stats, c.w, H_RQ_FAILED_PATH_NORMALIZATION, 1)
        s.keepalive = 0
        stream_local_reply(s, 400, "", 0, NULL, 0, True)
    elif rc == PN_REDIRECT:
        stat_add(h.stats, c.w, H_RQ_REDIRECTED_NORMALIZED_PATH, 1)
        stream_local_reply(s, 307, "", 0, s.head.buf + s.head.target_off, s.head.target_len,
                           c.req.state != H1_MESSAGE_DONE)
    else:
        hconn_close(c, True)
    return -1


cdef inline void _stream_refuse(HStream* s, int status, const char* body) noexcept nogil:
    s.keepalive = 0
    s.response_flags |= RF_DPE
    stream_local_reply(s, status, body, strlen(body), NULL, 0, True)


cdef void stream_start(HConn* c) noexcept nogil:
    """A complete, valid request head is in c.req: run the decoder filters (if any), then
    route it."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const char* v
    cdef size_t un = 0
    cdef int k, k2
    cdef HStream* s = <HStream*>calloc(1, sizeof(HStream))
    if s == NULL:
        hconn_close(c, True)
        return
    timer_cancel(c.w, &c.idle_timer)
    timer_cancel(c.w, &c.headers_timer)
    s.c = c
    s.start_ms = c.req_start_ms         # Envoy's stream begins with the request's first byte
    s.cluster_override = -1
    s.start_time_us = c.req_start_us
    s.cluster_index = -1
    timer_init(&s.timeout, _stream_timeout, s)
    h1_head_take(&c.req, &s.head)
    s.envoy_hdrs = (c.req.flags & H1X_ENVOY_HDR) != 0
    s.method = s.head.method
    s.minor = s.head.minor
    s.keepalive = (c.req.flags & H1F_KEEP_ALIVE) != 0
    s.req_chunked = c.req.framing == H1_BODY_CHUNKED
    s.expect_continue = (c.req.flags & H1F_EXPECT_CONTINUE) != 0
    if c.req.framing == H1_BODY_NONE:
        c.req.state = H1_MESSAGE_DONE
        stream_request_end(s, False)
    c.stream = s
    stream_timers_start(s)
    stream_client_address(s)
    c.nrequests += 1
    if fp_log_level <= LOG_DEBUG:
        _log_request_headers(s)
    if h.max_requests_per_connection and c.nrequests >= h.max_requests_per_connection:
        s.keepalive = 0
    stat_add(h.stats, c.w, H_RQ_TOTAL, 1)
    stat_add(h.stats, c.w, H_RQ_HTTP1_TOTAL, 1)
    stat_add(h.stats, c.w, H_RQ_ACTIVE, 1)
    # Requests the codec takes but the proxy refuses, as protocol errors (Envoy's codec
    # reports them so): no filter chain exists yet, so the replies go out directly.
    if s.minor == 0 and not h.accept_http_10:
        # Envoy: HTTP/1.0 only with http_protocol_options.accept_http_10.
        _stream_refuse(s, 426, "Upgrade Required")
        return
    if c.req.flags & H1F_TE_CODINGS:
        # A coding besides chunked (gzip, chunked) would have to be kept when the body is
        # re-framed; like Envoy, the proxy does not take such bodies.
        _stream_refuse(s, 501, "unsupported transfer coding")
        return
    k = _request_target_normalize(s, h)
    if k == -1:
        _stream_refuse(s, 400, "invalid request target or host")
        return
    if not _connection_nominations_ok(&s.head, (c.req.flags & H1F_UPGRADE) != 0):
        _stream_refuse(s, 400, "Bad Request")
        return
    if (h.normalize_path or h.merge_slashes or h.escaped_slashes != ES_KEEP) and not (c.req.flags & H1F_CONNECT):
        if _stream_path(s, h) < 0:
            return
    if h.strip_port != STRIP_PORT_NONE:
        stream_strip_host_port(s, h)
    # The filter chain first (Envoy creates it before it refuses an upgrade): the proxy's
    # own answers below go through its encoder filters.
    k2 = hf_stream_create(s) if h.nfilters else 0
    if k2 < 0:
        hconn_close(c, True)
        return
    if k2 > 0:
        # A filter could not be created: fail closed (a missing filter could be the one
        # that denies the request), through the encoder filters that were, as a hook's
        # failure (hf_fail) is answered.
        stream_local_reply(s, 500, "", 0, NULL, 0, c.req.state != H1_MESSAGE_DONE)
        return
    if k == -2:
        # HTTP/1.0 without Host nor default_host_for_http_10: Envoy's connection manager
        # refuses it after creating the filter chain, with an empty body.
        _stream_refuse(s, 400, "")
        return
    if c.req.flags & H1F_CONNECT:
        s.keepalive = 0
        s.connect = 1
        if not h.allow_connect:
            # Envoy, without a CONNECT upgrade config: 403 when a route (connect_matcher)
            # takes the request, 404 when none does.
            stream_local_reply(s, 403 if _head_has_route(s) else 404, "", 0, NULL, 0, True)
            return
    if c.req.flags & H1F_UPGRADE:
        v = _head_field(&s.head, "upgrade", &un)
        if v != NULL and _is_upgrade_token(v, un, "h2c"):
            pass                        # Envoy drops h2c upgrades: plain HTTP/1.1 from here
        elif v != NULL and h.allow_websocket and _is_upgrade_token(v, un, "websocket"):
            s.upgrade = 1               # forwarded; a 101 answer turns into a tunnel
            s.keepalive = 0
        else:
            # Envoy: an upgrade type not in upgrade_configs is refused.
            s.keepalive = 0
            stream_local_reply(s, 403, "", 0, NULL, 0, True)
            return
    if c.req.content_length > 0 and _request_too_large(s, <uint64_t>c.req.content_length):
        stream_local_reply(s, 413, "Payload Too Large", 17, NULL, 0, True)
        return
    if h.nfilters:
        if c.req.flags & H1F_EXPECT_CONTINUE:
            # Answered before the filters run: a filter that waits for the body must get it.
            chain_append(&c.out_buf, "HTTP/1.1 100 Continue\r\n\r\n", 25)
        s.fc.dec.end_seen = c.req.framing == H1_BODY_NONE
        hf_iterate(s, False)
        return
    stream_route(s)


ctypedef ssize_t (*RouteTextFn)(const RouteEntry* e, const RouteInput* r, char* out, size_t cap,
                                size_t* need) noexcept nogil

DEF ROUTE_TEXT_ON_STACK = 8192      # a rewritten path or a Location this long costs no malloc
cdef const char* NO_MEMORY_BODY = "out of memory"    # the codec's 503 body too (http1.pxi)


cdef ssize_t route_text(RouteTextFn fn, const RouteEntry* e, const RouteInput* r, char* stack,
                        size_t cap, char** text) noexcept nogil:
    """The text fn writes (route_rewrite_path, route_redirect_location), whatever its
    length: in `stack` (cap bytes) when it fits, else in a buffer malloc'd to its size.
    *text is where it is (the caller frees it when it is not `stack`). Returns its length,
    ROUTE_NONE, or ROUTE_NO_ROOM when no buffer could be had: the caller must then refuse
    the request, never go on without the text (a rewrite may confine the path)."""
    cdef size_t need = 0
    cdef ssize_t n = fn(e, r, stack, cap, &need)
    text[0] = stack
    if n != ROUTE_NO_ROOM:
        return n
    text[0] = <char*>malloc(need + 1)
    if text[0] == NULL:
        text[0] = stack
        return ROUTE_NO_ROOM
    n = fn(e, r, text[0], need, NULL)
    if n == ROUTE_NO_ROOM:          # (need is an upper bound: not reached)
        free(text[0])
        text[0] = stack
    return n


cdef int stream_route(HStream* s) noexcept nogil:
    """The router: pick the route and the upstream, send the request head (unless a filter
    may still change the body: then the first body bytes send it). -1: the stream ended."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs = _route_input(s, &r, stack)     # no malloc for most requests
    cdef const RouteEntry* e
    cdef char loc[ROUTE_TEXT_ON_STACK]
    cdef char* text
    cdef char* path = NULL          # the rewritten :path (malloc'd), NULL: no rewrite
    cdef size_t path_len = 0
    cdef ssize_t n
    cdef int ci
    if hdrs == NULL:
        hconn_close(c, True)
        return -1
    if s.route == NULL or s.route_cleared or s.fc == NULL:
        s.route = route_select(h.routes, &r)
        s.route_cleared = 0
    e = s.route
    if e == NULL:
        if fp_log_level <= LOG_DEBUG:
            fp_log(c.w.index, "router", c.id, c.nrequests, "no route match for URL '%.*s'", <int>r.path_len, r.path)
        _route_input_free(hdrs, stack)
        stat_add(h.stats, c.w, H_NO_ROUTE, 1)
        s.response_flags |= RF_NR
        stream_local_reply(s, 404, "", 0, NULL, 0, c.req.state != H1_MESSAGE_DONE)
        return -1
    if e.action == ROUTE_DIRECT_RESPONSE or e.action == ROUTE_REDIRECT:
        n = route_text(route_redirect_location, e, &r, loc, sizeof(loc), &text)
        _route_input_free(hdrs, stack)
        if n == ROUTE_NO_ROOM:
            stream_local_reply(s, 503, NO_MEMORY_BODY, strlen(NO_MEMORY_BODY), NULL, 0, True)
            return -1
        stream_local_reply(s, e.status, e.body.p, e.body.n, text if n >= 0 else NULL,
                           <size_t>n if n >= 0 else 0, c.req.state != H1_MESSAGE_DONE)
        if text != loc:
            free(text)                  # the reply holds its own copy
        return -1
    if not s.connect:
        # The rewritten path, while the route input is at hand; before any upstream is
        # taken, so a request that cannot have it is refused with nothing to undo.
        n = route_text(route_rewrite_path, e, &r, loc, sizeof(loc), &text)
        if n >= 0:
            path = text
            path_len = <size_t>n
            if text == loc:
                path = <char*>malloc(path_len + 1)
                if path != NULL:
                    memcpy(path, loc, path_len)
        if n == ROUTE_NO_ROOM or (n >= 0 and path == NULL):
            _route_input_free(hdrs, stack)
            stream_local_reply(s, 503, NO_MEMORY_BODY, strlen(NO_MEMORY_BODY), NULL, 0, True)
            return -1
    if s.cluster_override >= 0:
        ci = s.cluster_override
    else:
        ci = e.cluster if e.action == ROUTE_CLUSTER else route_pick_weighted(e, worker_random(c.w))
    s.cluster = h.clusters[ci]
    s.cluster_index = ci
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "router", c.id, c.nrequests, "cluster '%s' match for URL '%.*s'%s%.*s",
               h.cluster_names[ci], <int>r.path_len, r.path,
               _pick(path != NULL, ", rewritten to ", ""), <int>path_len,
               _pick(path != NULL, path, ""))
    stream_route_timeout(s)
    s.up = upconn_acquire(s, s.cluster)
    if s.up == NULL:
        free(path)
        _route_input_free(hdrs, stack)
        _count_upstream(s.cluster.stats, c.w, 503)
        if s.response_flags & RF_UO:
            stream_local_reply(s, 503, UPSTREAM_OVERFLOW, strlen(UPSTREAM_OVERFLOW), NULL, 0,
                               c.req.state != H1_MESSAGE_DONE)
        else:
            stream_local_reply(s, 503, NO_HEALTHY_UPSTREAM, strlen(NO_HEALTHY_UPSTREAM), NULL, 0, c.req.state != H1_MESSAGE_DONE)
        return -1
    if s.connect:
        _route_input_free(hdrs, stack)                      # the 200 and the tunnel follow the TCP connect
        return 0
    if s.fc == NULL and c.req.flags & H1F_EXPECT_CONTINUE:
        chain_append(&c.out_buf, "HTTP/1.1 100 Continue\r\n\r\n", 25)
    if path != NULL:
        free(s.rewritten_path)
        s.rewritten_path = path
        s.rewritten_path_len = path_len
    _route_input_free(hdrs, stack)
    if not _dec_body_filtered(s):
        if stream_send_request_head(s, UF_PARSER, 0) < 0:
            return -1
    elif s.fc.dec.phase == FP_PH_DONE:
        if stream_send_request_head(s, UF_LENGTH if c.req.framing != H1_BODY_NONE else UF_NONE, 0) < 0:
            return -1
    if s.req_done and s.timeout_ms:
        timer_arm(c.w, &s.timeout, s.timeout_ms)
    if s.up.state == UC_BUSY:
        s.up.ep.writable = 1            # a pooled connection: try to write at once
    return 0


cdef int stream_send_request_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    """Serialize the request head into the upstream's out_buf. -1: the stream ended."""
    cdef HConn* c = s.c
    if _upstream_request_head(s, framing, length) < 0:
        upconn_close(s.up)
        s.up = NULL
        stream_local_reply(s, 400, "invalid request after header mutation", 37, NULL, 0, True)
        return -1
    if s.fc != NULL:
        s.fc.dec.sink_started = 1
    return 0


# -- the filter chain's sinks (core/http_filter.pxi calls these)

cdef int hf_sink_headers_decode(HStream* s) noexcept nogil:
    """The request headers passed every decoder filter: route."""
    if s.fc.dec.phase == FP_PH_DONE:
        stream_request_end(s, False)
    return stream_route(s)


cdef inline int _sink_framing(FDir* d, const HMap* m) noexcept nogil:
    """How a filtered body is framed, decided when its first bytes leave the chain: the
    exact length if the whole body is here, else the Content-Length a filter left in the
    headers (counted), else chunked."""
    cdef size_t n
    if d.phase == FP_PH_DONE:
        return UF_LENGTH
    if hm_get(m, "content-length", 14, &n) != NULL:
        return UF_MAP_LENGTH
    return UF_CHUNKED


cdef int _sink_frame(FDir* d, Chain* out, const HMap* trailers) noexcept nogil:
    """Move the body the filters passed (and, at the end, the last chunk) to `out` in the
    framing the head announced. -1: the body disagrees with a declared Content-Length (the
    peer must never read extra or missing bytes as the next message), or no memory."""
    cdef size_t n = d.held.length
    cdef PairList tl
    cdef int rc
    if n:
        if d.sink_counted:
            if n > d.sink_left:
                return -1
            d.sink_left -= n
        if d.sink_chunked:
            if _append_chunk_header(out, n) < 0:
                return -1
            chain_move(out, &d.held)
            if chain_append(out, "\r\n", 2) < 0:
                return -1
        else:
            chain_move(out, &d.held)
    if d.phase == FP_PH_DONE:
        if d.sink_counted and d.sink_left:
            return -1
        if d.sink_chunked:
            memset(&tl, 0, sizeof(PairList))
            if trailers.used and hm_to_pairs(trailers, &tl, True) < 0:
                free(tl.v)
                return -1
            rc = _append_last_chunk_pairs(out, &tl)
            free(tl.v)
            return rc
    return 0


cdef int hf_sink_data_decode(HStream* s) noexcept nogil:
    """Filtered request body (and the end) to the upstream, framed."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.dec
    cdef UpConn* u = s.up
    cdef HConn* c = s.c
    if u == NULL:
        return -1
    if s.req_done:
        return 0
    if not d.sink_started and stream_send_request_head(s, _sink_framing(d, &fc.req), d.held.length) < 0:
        return -1
    if _sink_frame(d, &u.out_buf, &fc.req_trailers) < 0:
        hf_fail(s, False)
        return -1
    if d.phase == FP_PH_DONE:
        stream_request_end(s, True)
    if u.state == UC_BUSY and u.out_buf.length:
        u.ep.writable = 1
    return 0


cdef int hf_sink_headers_encode(HStream* s) noexcept nogil:
    """The response headers passed every encoder filter: send them (unless a filter may
    still change the body: then the first body bytes send them)."""
    if s.fc.local_encoding:
        # A local reply: its body (complete) follows through the data phase, whose sink
        # sends the head with the body's exact length. Without one, the head goes now.
        if s.fc.enc.phase != FP_PH_DONE:
            return 0
        if stream_send_response_head(s, UF_PARSER if s.method == H1M_HEAD else UF_LENGTH, 0) < 0:
            return -1
        return _stream_response_done(s)
    if not _enc_body_filtered(s):
        return stream_send_response_head(s, UF_PARSER, 0)
    if s.fc.enc.phase == FP_PH_DONE:         # no body: nothing else will come
        if stream_send_response_head(s, UF_PARSER, 0) < 0:
            return -1
        return _stream_response_done(s)
    return 0


cdef int stream_send_response_head(HStream* s, int framing, uint64_t length) noexcept nogil:
    cdef bint local = s.fc != NULL and s.fc.local_encoding
    if (_local_response_head(s, framing, length) if local else _downstream_response_head(s, framing, length)) < 0:
        if s.up != NULL:
            _upconn_failed(s.up, 502, UPSTREAM_PROTOCOL_ERROR)
        elif local and not s.resp_started:
            # A filter left the local reply without a valid :status: as Envoy, 502 straight
            # to the client (the encoder chain holds a response now, so it is not re-run).
            stream_local_reply(s, 502, "filter removed required response headers", 40, NULL, 0, True)
        else:
            hconn_close(s.c, True)
        return -1
    s.resp_started = 1
    if s.fc != NULL:
        s.fc.enc.sink_started = 1
    return 0


cdef int _stream_response_done(HStream* s) noexcept nogil:
    """The filtered response is complete downstream: end the stream."""
    cdef HConn* c = s.c
    if s.up != NULL and s.up.resp.state != H1_MESSAGE_DONE:
        return 0                        # the upstream still owes bytes; it finishes then
    stream_finish(s)
    hconn_pump(c)
    return -1


cdef int hf_sink_data_encode(HStream* s) noexcept nogil:
    """Filtered response body (and the end) to the downstream, framed."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.enc
    cdef bint local_head = fc.local_encoding and s.method == H1M_HEAD
    if local_head:
        chain_clear(&d.held)            # a filter added body to a HEAD reply: not sent
    if not d.sink_started:
        if stream_send_response_head(s, UF_PARSER if local_head else _sink_framing(d, &fc.resp),
                                     d.held.length) < 0 or s.fc != fc:
            return -1
    s.bytes_sent += d.held.length
    if _sink_frame(d, &s.c.out_buf, &fc.resp_trailers) < 0:
        hconn_close(s.c, True)          # the response has started: a reset is all that is left
        return -1
    if d.phase == FP_PH_DONE:
        return _stream_response_done(s)
    return 0


cdef int stream_forward_request_body(HStream* s) noexcept nogil:
    """Move request body bytes from the downstream's in_buf to the upstream's out_buf.
    -1 when the stream ended."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef H1Parser* p = &c.req
    cdef SliceRef* r
    cdef ssize_t n
    cdef size_t off, seg
    cdef UpConn* u = s.up
    cdef uint64_t left, moved
    cdef int rc
    if c.req_pipe.bytes or (p.framing == H1_BODY_LENGTH and c.in_buf.length == 0
                            and u.state == UC_BUSY and u.out_buf.length == 0
                            and p.state != H1_MESSAGE_DONE and splice_pipe_open(c.w, &c.req_pipe)):
        # The rest of a Content-Length body: downstream -> pipe -> upstream.
        left = p.body_remaining if p.state != H1_MESSAGE_DONE else 0
        moved = 0
        rc = splice_move(&c.req_pipe, &c.down, &u.ep, &left, &moved)
        stat_add(h.stats, c.w, H_BYTES_SPLICED, moved)
        stat_add(h.stats, c.w, H_CX_RX_BYTES, p.body_remaining - left)
        stat_add(s.cluster.stats, c.w, C_TX_BYTES, moved)
        if moved or left != p.body_remaining:
            s.last_active_ms = c.w.now
        s.req_body_bytes += p.body_remaining - left
        h1_body_skipped(p, p.body_remaining - left)
        if rc == -1:
            c.peer_gone = 1                 # the client ended or failed (hconn_close counts the reset)
            hconn_close(c, False)
            return -1
        if rc == -2:
            u.remote_close = 1
            _upconn_failed(u, 503, UPSTREAM_TERMINATION)
            return -1
        if p.state == H1_MESSAGE_DONE and c.req_pipe.bytes == 0:
            stream_request_end(s, True)
        return 0
    while not s.req_done and c.in_buf.length and u.out_buf.length < HTTP_IO_LIMIT:
        r = &c.in_buf.refs[c.in_buf.head]
        n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
        if n < 0:
            _request_body_framing_error(s)
            return -1
        s.req_body_bytes += seg
        stat_add(h.stats, c.w, H_BYTES_COPIED, seg)
        if _request_too_large(s, s.req_body_bytes):
            hconn_close(c, True)
            return -1
        if seg:
            if p.framing == H1_BODY_LENGTH:
                chain_move_bytes(&u.out_buf, &c.in_buf, <size_t>n)
            else:
                if _append_chunk(&u.out_buf, r.s.data + r.off + off, seg) < 0:
                    hconn_close(c, True)
                    return -1
                chain_drain(&c.in_buf, <size_t>n)
        else:
            chain_drain(&c.in_buf, <size_t>n)
        if p.state == H1_MESSAGE_DONE:
            if s.req_chunked and _append_last_chunk(&u.out_buf, &p.trailers) < 0:
                hconn_close(c, True)
                return -1
            stream_request_end(s, True)
    if not s.req_done and c.down_eof and c.in_buf.length == 0:
        hconn_close(c, False)           # counts downstream_rq_rx_reset (the stream is active)
        return -1
    return 0


# ---------------------------------------------------------------- downstream connections

cdef void _hconn_idle(Worker* w, void* arg) noexcept nogil:
    cdef HConn* c = <HConn*>arg
    if c.stream == NULL:
        hconn_close(c, False)


cdef void _hconn_headers_timeout(Worker* w, void* arg) noexcept nogil:
    cdef HConn* c = <HConn*>arg
    if c.stream == NULL:
        stat_add((<HttpCfg*>c.cfg.http).stats, w, H_RQ_HEADER_TIMEOUT, 1)    # Envoy's name
        hconn_local_reply(c, 408, "request header timeout", 22, NULL, 0, True)
        hconn_pump(c)


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
    c.down.kind = EP_HTTP_DOWN
    c.down.fd = fd
    c.down.owner = c
    h1_init(&c.req, H1_REQUEST, h.max_head, 0, h.max_fields)
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
    c.next = w.hconns
    if w.hconns != NULL:
        w.hconns.prev = c
    w.hconns = c
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
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.ptr = &c.down
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        hconn_close(c, False)
        return
    if h.idle_timeout_ms:
        timer_arm(w, &c.idle_timer, h.idle_timeout_ms)
    if h.request_headers_timeout_ms:
        timer_arm(w, &c.headers_timer, h.request_headers_timeout_ms)


cdef void hconn_close(HConn* c, bint rst) noexcept nogil:
    cdef Worker* w = c.w
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef HStream* s = c.stream
    cdef int remote
    if c.closed:
        return
    c.closed = 1
    # Envoy's connection manager: remote when the client ended it (EOF, reset, an I/O
    # error); "active rq" when a stream was open, and then that stream was reset too.
    remote = c.down_eof or c.peer_gone
    if fp_log_level <= LOG_DEBUG:
        fp_log(w.index, "connection", c.id, 0, "closing connection: %s%s",
               _pick(remote, "remote close", _pick(rst, "reset", "local close")),
               _pick(s != NULL, ", resetting its open stream", ""))
    stat_add(h.stats, w, H_CX_DESTROY, 1)
    stat_add(h.stats, w, H_CX_DESTROY_LOCAL + remote, 1)
    if s != NULL or c.partial_rq:
        stat_add(h.stats, w, H_CX_DESTROY_ACTIVE_RQ, 1)
        stat_add(h.stats, w, H_CX_DESTROY_LOCAL_ACTIVE_RQ + remote, 1)
        if s != NULL:
            stat_add(h.stats, w, H_RQ_RX_RESET, 1)
    if c.codec_seen:
        stat_sub(h.stats, w, H_CX_HTTP1_ACTIVE, 1)
    timer_cancel(w, &c.idle_timer)
    timer_cancel(w, &c.headers_timer)
    if s != NULL:
        if not s.logged and not s.tunnel and s.response_flags == 0:
            s.response_flags |= RF_DC    # ended before its response was complete
        stream_log(s)                   # while s.up still holds the response head
        c.stream = NULL
        if s.up != NULL:
            s.up.stream = NULL
            upconn_close(s.up)
        stat_sub(h.stats, w, H_RQ_ACTIVE, 1)
        stream_free(s)
    # After a read that drained the socket (and no event since), nothing is left to drop.
    _close_fd(c.down.fd, rst, c.down_eof or (c.codec_seen and not c.down.readable))
    c.down.fd = -1
    chain_free(&c.in_buf)
    chain_free(&c.out_buf)
    splice_pipe_close(w, &c.req_pipe)
    splice_pipe_close(w, &c.rsp_pipe)
    h1_free(&c.req)
    stat_sub(c.cfg.lstats, w, L_CX_ACTIVE, 1)
    stat_add(c.cfg.lstats, w, L_CX_DESTROY, 1)
    stat_sub(h.stats, w, H_CX_ACTIVE, 1)
    listener_cx_release(c.cfg)
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        w.hconns = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    w.nsessions -= 1
    c.next_deferred = w.hconn_deferred
    w.hconn_deferred = c


DEF LINGER_MS = 1000                # how long a lingering close reads (Envoy's delayed_close_timeout)


cdef void _hconn_linger_end(Worker* w, void* arg) noexcept nogil:
    hconn_close(<HConn*>arg, False)


cdef void _hconn_linger_read(HConn* c) noexcept nogil:
    """Read and drop what the client still sends; close at its EOF or on an error."""
    cdef char scratch[16384]
    cdef ssize_t n
    while True:
        n = read(c.down.fd, scratch, sizeof(scratch))
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
    cdef bint clean = not c.unread_request and c.in_buf.length == 0 and (
        c.req.state == H1_MESSAGE_DONE or (c.req.state == H1_HEAD and c.req.head.len == 0))
    if clean or c.down_eof or c.peer_gone:
        hconn_close(c, False)
        return
    c.lingering = 1
    chain_clear(&c.in_buf)
    shutdown(c.down.fd, SHUT_WR)
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
    hconn_pump(c)


cdef int _hconn_process(HConn* c) noexcept nogil:
    """Parse and route what the downstream sent. -1 when the connection closed."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef SliceRef* r
    cdef ssize_t n
    cdef HStream* s
    while True:
        if c.stream != NULL:
            s = c.stream
            if s.tunnel:
                if _tunnel_pump(s) < 0:
                    return -1
                if s.up.out_buf.length and s.up.ep.writable:
                    upconn_pump(s.up)
                    if c.closed:
                        return -1
                return 0
            if _dec_body_filtered(s):
                if c.req.state != H1_MESSAGE_DONE or (c.down_eof and not s.req_done):
                    if stream_filter_request_body(s) < 0:
                        if c.closed:
                            return -1
                        continue
            elif s.up != NULL and not s.req_done:
                if stream_forward_request_body(s) < 0:
                    if c.closed:
                        return -1
                    continue                # the stream ended with a local reply
            if c.down_eof and c.stream == s and not (s.connect or s.upgrade):
                # The client ended its side with its request in flight. As in Envoy (an HTTP
                # connection is not half-closed), it is gone: the stream is reset (DC) and
                # its upstream connection closed now, not held until an answer nobody reads
                # (a client could otherwise pin upstream connections, closing as it goes).
                # hconn_close counts the reset (downstream_rq_rx_reset).
                hconn_close(c, False)
                return -1
            if c.stream == s and s.up != NULL and s.up.state == UC_BUSY and s.up.out_buf.length \
                    and s.up.ep.writable:
                # A pooled connection has no event coming to start it. Not while the upstream
                # is unwritable: its EPOLLOUT will come, and upconn_pump's own hconn_pump(c)
                # would set c.repump, so the hconn_pump that called us would go round forever
                # without returning to epoll (an upload to an upstream that reads slowly spun
                # the worker and stalled it for good).
                upconn_pump(s.up)
                if c.closed:
                    return -1
            return 0
        if c.close_after:
            return 0
        if c.in_buf.length == 0:
            if c.down_eof:
                if h1_feed_eof(&c.req) < 0:
                    # The client closed inside a request head: Envoy's stream for it ends
                    # "downstream connection termination" (DC), unanswered.
                    hconn_unparsed_request(c, 0, RF_DC)
                    c.partial_rq = 1        # Envoy's stream was active when the connection closed
                hconn_close(c, False)
                return -1
            return 0
        if c.req.state == H1_HEAD and c.req.head.len == 0:
            c.req_start_ms = c.w.now            # a new request begins
            c.req_start_us = wall_clock_us()
        r = &c.in_buf.refs[c.in_buf.head]
        n = h1_feed_head(&c.req, r.s.data + r.off, r.len)
        if n < 0:
            stat_add(h.stats, c.w, H_CX_PROTOCOL_ERROR, 1)
            hconn_unparsed_request(c, c.req.err_status, RF_DPE)
            chain_clear(&c.in_buf)
            return 0
        chain_drain(&c.in_buf, <size_t>n)
        if c.req.state == H1_HEAD_DONE:
            if h.underscores != US_ALLOW and hconn_underscores(c, h) < 0:
                # Envoy's codec refuses the request (a protocol error, like the codec's own)
                stat_add(h.stats, c.w, H_CX_PROTOCOL_ERROR, 1)
                hconn_unparsed_request(c, 400, RF_DPE)
                chain_clear(&c.in_buf)
                return 0
            stream_start(c)
            if c.closed:
                return -1


cdef void hconn_unparsed_request(HConn* c, int status, uint32_t flags) noexcept nogil:
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
    s.minor = 1
    s.response_flags = flags
    memcpy(s.client_ip, c.remote_ip, c.remote_ip_len + 1)
    s.client_ip_len = c.remote_ip_len
    s.client_port = c.remote_port
    stat_add(h.stats, c.w, H_RQ_TOTAL, 1)
    stat_add(h.stats, c.w, H_RQ_HTTP1_TOTAL, 1)
    stat_add(h.stats, c.w, H_RQ_RX_RESET, 1)
    if status:
        c.stream = &s                   # the reply's status and bytes go to this stream
        if c.req.err == H1E_MISSING_HOST:
            hconn_local_reply(c, status, "", 0, NULL, 0, True)     # Envoy: an empty body
        else:
            hconn_local_reply(c, status, _status_reason(status), strlen(_status_reason(status)),
                              NULL, 0, True)
        c.stream = NULL
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
    if c.closed or c.lingering:         # a lingering connection only drops input (_hconn_finish)
        return
    if c.in_pump:
        c.repump = 1
        return
    c.in_pump = 1
    while True:
        c.repump = 0
        progress = False
        if c.out_buf.length and c.down.writable:
            # A connection to close closes as soon as out_buf is out (below): with MSG_MORE
            # its FIN leaves in the same segment as the last bytes.
            n = chain_write_fd(&c.out_buf, c.down.fd, NULL, c.close_after and c.stream == NULL)
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
        s = c.stream
        if c.down.readable and not c.down_eof and c.in_buf.length < HTTP_IO_LIMIT \
                and (s == NULL or s.up == NULL or s.up.out_buf.length < HTTP_IO_LIMIT) \
                and not (s != NULL and s.up != NULL and not s.req_done and not _dec_body_filtered(s) and (c.req_pipe.bytes
                         or (c.req.framing == H1_BODY_LENGTH and c.in_buf.length == 0
                             and s.up.state == UC_BUSY and c.req.state != H1_MESSAGE_DONE))):
            n = chain_read_fd(&c.in_buf, c.down.fd, HTTP_IO_LIMIT - c.in_buf.length, &asked)
            if n > 0:
                if not c.codec_seen:
                    # Envoy creates the HTTP/1 codec with the first bytes read (a client
                    # that closes without sending any is not an HTTP/1 connection).
                    c.codec_seen = 1
                    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_CX_HTTP1_TOTAL, 1)
                    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_CX_HTTP1_ACTIVE, 1)
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
                hconn_close(c, True)
                return
        if _hconn_process(c) < 0:
            c.in_pump = 0
            return
        if c.stream != NULL and c.stream.up != NULL and c.stream.up.state == UC_BUSY \
                and (c.stream.up.in_buf.length or c.rsp_pipe.bytes or c.stream.up.ep.readable) \
                and c.out_buf.length < HTTP_IO_LIMIT \
                and not (c.stream.fc != NULL and c.stream.fc.enc.stopped == FS_HELD):
            # (While an encoder filter holds the response, its continue restarts this.)
            # The upstream paused on our full out_buf; let it continue now. in_pump stays
            # set, so upconn_pump's own hconn_pump(c) does not nest (one nested pump per
            # splice round overflowed the stack on a 1 GiB download whose client kept
            # up); this loop goes round again only if that moved something.
            s = c.stream
            sent = s.bytes_sent
            out_len = c.out_buf.length
            pipe_bytes = c.rsp_pipe.bytes
            repump = c.repump
            upconn_pump(s.up)
            if c.closed:
                c.in_pump = 0
                return
            c.repump = repump
            if c.stream != s or s.bytes_sent != sent or c.out_buf.length != out_len \
                    or c.rsp_pipe.bytes != pipe_bytes:
                progress = True
        if c.stream != NULL and c.stream.tunnel and c.stream.tunnel_up_eof and c.out_buf.length == 0:
            c.in_pump = 0
            hconn_close(c, False)
            return
        if c.close_after and c.stream == NULL and c.out_buf.length == 0:
            c.in_pump = 0
            _hconn_finish(c)
            return
        if not progress and not c.repump:
            break
    c.in_pump = 0


cdef void http_drain_listener(Worker* w, ListenSock* sock) noexcept nogil:
    """The listener is going away: idle keep-alive connections close now, busy ones
    finish their current response with Connection: close."""
    cdef HConn* c = w.hconns
    cdef HConn* nxt
    while c != NULL:
        nxt = c.next
        if c.cfg.sock == sock:
            if c.stream == NULL and c.out_buf.length == 0:
                hconn_close(c, False)
            else:
                c.close_after = 1
                if c.stream != NULL and not c.stream.resp_started:
                    c.stream.keepalive = 0
        c = nxt


cdef void http_serve_waiting(Worker* w) noexcept nogil:
    """Requests waiting for a connection (max_connections) of the clusters kicked this
    turn: each takes an idle connection to its host, or connects once the cluster is under
    max_connections again (or this worker has no connection to the host left). Runs at the
    end of the loop turn, outside any pump."""
    cdef WorkerLb* lb
    cdef ClusterCfg* cl
    cdef UpConn* u
    cdef UpConn* nxt
    cdef UpConn* p
    cdef UpConn** head
    cdef HStream* s
    cdef Host* host
    while w.kicked != NULL:
        lb = <WorkerLb*>w.kicked
        w.kicked = lb.kick_next
        lb.kick_next = NULL
        lb.kicked = 0
        cl = lb.cluster
        u = <UpConn*>lb.wait_head
        while u != NULL:
            if not u.queued:
                break       # serving the one before ended it (memory is freed after this)
            nxt = u.wait_next
            s = u.stream
            if s == NULL:
                upconn_close(u)
                u = nxt
                continue
            if u.hosts != lb.hosts:
                # The host set changed (DNS) while it waited: pick again from the new one.
                host = cluster_pick(cl, w, 0)
                if host == NULL:
                    _wait_unlink(u)
                    stat_add(cl.stats, w, C_NONE_HEALTHY, 1)
                    _upconn_failed(u, 503, NO_HEALTHY_UPSTREAM)
                    u = nxt
                    continue
                u.hosts = lb.hosts
                u.host_index = <int>(host - lb.hosts.hosts)
                memcpy(&s.upstream_addr, &host.addr, host.addrlen)
                s.upstream_addrlen = host.addrlen
            host = &lb.hosts.hosts[u.host_index]
            head = _pool_list(cl, w, u.host_index)
            if head != NULL and head[0] != NULL and not s.connect:     # (a tunnel gets its own)
                # An idle connection to its host: the request (already serialized into u's
                # out_buf, never sent) moves to it; u, which never had a socket, ends.
                _wait_unlink(u)
                p = _pool_pop(head)
                _upconn_bind(p, s)
                if chain_move(&p.out_buf, &u.out_buf) < 0:
                    p.stream = NULL
                    upconn_close(p)
                    _upconn_failed(u, 503, UPSTREAM_OVERFLOW)
                    u = nxt
                    continue
                u.stream = NULL
                s.up = p
                upconn_close(u)
                if not _upconn_attach(p):
                    _upconn_overflowed(p)       # max_requests: p goes back to the pool
                else:
                    p.ep.writable = 1
                    upconn_pump(p)
            elif not cb_full(&cl.n_cx, cl.max_cx) or lb.pool_conns == NULL \
                    or u.host_index >= lb.pool_n or lb.pool_conns[u.host_index] == 0:
                _wait_unlink(u)
                if _upconn_connect(u, host) < 0:
                    _upconn_failed(u, 503, UPSTREAM_CONNECT_FAILURE)
            u = nxt
        cluster_decref(cl)


cdef void http_free_deferred(Worker* w) noexcept nogil:
    cdef HConn* c
    cdef UpConn* u
    http_serve_waiting(w)
    while w.hconn_deferred != NULL:
        c = w.hconn_deferred
        w.hconn_deferred = c.next_deferred
        listener_cfg_decref(c.cfg)
        free(c)
    while w.upconn_deferred != NULL:
        u = w.upconn_deferred
        w.upconn_deferred = u.next_deferred
        cluster_decref(u.cluster)
        free(u)


cdef void http_worker_teardown(Worker* w) noexcept nogil:
    while w.hconns != NULL:
        hconn_close(w.hconns, False)
    while w.upconns != NULL:
        upconn_close(w.upconns)
    http_free_deferred(w)


cdef void http_cfg_decref(HttpCfg* h) noexcept nogil:
    cdef int i
    if h == NULL or fp_atomic_add_int(&h.refcnt, -1) != 0:
        return
    route_table_decref(h.routes)
    http_cfg_free_filters(h)
    for i in range(h.nclusters):
        cluster_decref(h.clusters[i])
        if h.cluster_names != NULL:
            free(h.cluster_names[i])
    free(h.clusters)
    free(h.cluster_names)
    alog_sinks_free(h.logs, h.nlogs)
    free(h.server_name)
    free(h.via)
    free(h.default_host_10)
    free(h.internal_cidrs)
    free(h)


cdef class HttpCfgHandle:
    """The main thread's reference to an HTTP connection manager config."""
    cdef HttpCfg* h
    cdef object routes_handle

    def __dealloc__(self):
        http_cfg_decref(self.h)


cdef int _compile_internal_addresses(HttpCfg* h, iac) except -1:
    """internal_address_config -> h.internal_mode (and h.internal_cidrs)."""
    import ipaddress
    from fastproxy.model_http import parse_cidr
    cdef InternalCidr* r
    cdef int i
    if iac is None:
        h.internal_mode = IA_NONE
        return 0
    if not iac.cidr_ranges:
        h.internal_mode = IA_DEFAULT
        return 0
    h.internal_cidrs = <InternalCidr*>calloc(len(iac.cidr_ranges), sizeof(InternalCidr))
    if h.internal_cidrs == NULL:
        raise MemoryError()
    h.internal_mode = IA_CIDRS
    for i, text in enumerate(iac.cidr_ranges):
        net = parse_cidr(text, f"internal_address_config.cidr_ranges[{i}]")
        r = &h.internal_cidrs[i]
        r.v6 = net.version == 6
        r.plen = net.prefixlen
        packed = net.network_address.packed
        memcpy(r.addr, <char*>packed, len(packed))
        h.ninternal = i + 1
    return 0


def make_http_cfg(hcm, StatBlockHandle stats, dict clusters, int nworkers, StatBlockHandle http1_stats=None,
                  AsyncBridge async_bridge=None):
    """Compile a model_http.HttpConnectionManager; clusters: {name: ClusterHandle};
    async_bridge: the proxy's, where its Python filters' async hooks run."""
    cdef HttpCfgHandle hh = HttpCfgHandle.__new__(HttpCfgHandle)
    cdef _FilterCompiler fcomp
    cdef HttpCfg* h = <HttpCfg*>calloc(1, sizeof(HttpCfg))
    cdef RouteTableHandle rt
    cdef ClusterHandle ch
    cdef bytes server
    cdef int i
    if h == NULL:
        raise MemoryError()
    h.refcnt = 1
    hh.h = h
    names = sorted(clusters)
    index = {name: i for i, name in enumerate(names)}
    h.filter_buffer_limit = FILTER_BUFFER_LIMIT_DEFAULT
    fcomp = _FilterCompiler.__new__(_FilterCompiler)
    fcomp.h = h
    fcomp.specs = list(getattr(hcm, "http_filters", None) or [])
    fcomp.keep = []
    fcomp.bridge = async_bridge
    fcomp.regex_copies = nworkers
    fcomp.compile("http_connection_manager")
    rt = compile_route_table(hcm.route_config, index, nworkers,
                             per_filter=fcomp.route_configs if fcomp.specs else None)
    if fcomp.keep:
        Py_INCREF(fcomp.keep)
        h.py_keep = <PyObject*>fcomp.keep
    hh.routes_handle = rt
    h.routes = rt.t
    route_table_incref(rt.t)
    h.nclusters = len(names)
    h.clusters = <ClusterCfg**>calloc(max(1, h.nclusters), sizeof(ClusterCfg*))
    h.cluster_names = <char**>calloc(max(1, h.nclusters), sizeof(char*))
    if h.clusters == NULL or h.cluster_names == NULL:
        raise MemoryError()
    for i, name in enumerate(names):
        ch = clusters[name]
        h.clusters[i] = ch.c
        fp_atomic_add_int(&ch.c.refcnt, 1)
        h.cluster_names[i] = _al_dup(name.encode())
        if h.cluster_names[i] == NULL:
            raise MemoryError()
    h.stats = stats.b
    ms = lambda v: 0 if not v else max(1, int(v * 1000))
    h.idle_timeout_ms = ms(hcm.idle_timeout)
    h.request_headers_timeout_ms = ms(hcm.request_headers_timeout)
    h.stream_idle_timeout_ms = ms(hcm.stream_idle_timeout)
    h.request_timeout_ms = ms(hcm.request_timeout)
    h.allow_websocket = any(u.enabled and u.upgrade_type.lower() == "websocket"
                            for u in getattr(hcm, "upgrade_configs", ()))
    h.allow_connect = any(u.enabled and u.upgrade_type.lower() == "connect"
                          for u in getattr(hcm, "upgrade_configs", ()))
    alog_compile(h, hcm)
    h.max_requests_per_connection = hcm.max_requests_per_connection or 0
    h.max_head = hcm.max_request_headers_kb * 1024
    h.max_fields = hcm.max_headers_count
    h.max_request_bytes = hcm.max_request_bytes or 0
    h.use_remote_address = hcm.use_remote_address
    h.generate_request_id = hcm.generate_request_id
    h.suppress_envoy_headers = bool(getattr(hcm, "suppress_envoy_headers", False))
    h.xff_num_trusted_hops = hcm.xff_num_trusted_hops
    _compile_internal_addresses(h, getattr(hcm, "internal_address_config", None))
    h.local_ip_len = _envoy_local_address(h.local_ip, sizeof(h.local_ip))
    server = (hcm.server_name or "").encode()
    h.server_name = <char*>malloc(len(server) + 1)
    if h.server_name == NULL:
        raise MemoryError()
    memcpy(h.server_name, <char*>server, len(server) + 1)
    h.server_name_len = len(server)
    h.server_mode = {"OVERWRITE": SERVER_OVERWRITE, "APPEND_IF_ABSENT": SERVER_APPEND_IF_ABSENT,
                     "PASS_THROUGH": SERVER_PASS_THROUGH}[getattr(hcm, "server_header_transformation", "OVERWRITE")]
    h.accept_http_10 = hcm.accept_http_10
    via = (getattr(hcm, "via", "") or "").encode()
    if via:
        h.via = <char*>malloc(len(via))
        if h.via == NULL:
            raise MemoryError()
        memcpy(h.via, <char*>via, len(via))
        h.via_len = len(via)
    h.skip_xff_append = getattr(hcm, "skip_xff_append", False)
    h.preserve_external_request_id = getattr(hcm, "preserve_external_request_id", False)
    h.always_set_request_id = getattr(hcm, "always_set_request_id_in_response", False)
    h.normalize_path = getattr(hcm, "normalize_path", False)
    h.merge_slashes = getattr(hcm, "merge_slashes", False)
    h.escaped_slashes = {"KEEP_UNCHANGED": ES_KEEP, "REJECT_REQUEST": ES_REJECT,
                         "UNESCAPE_AND_REDIRECT": ES_REDIRECT, "UNESCAPE_AND_FORWARD": ES_FORWARD}[
        getattr(hcm, "path_with_escaped_slashes_action", "KEEP_UNCHANGED")]
    h.strip_port = {"NONE": STRIP_PORT_NONE, "MATCHING": STRIP_PORT_MATCHING, "ANY": STRIP_PORT_ANY}[
        getattr(hcm, "strip_host_port", "NONE")]
    h.underscores = {"ALLOW": US_ALLOW, "REJECT_REQUEST": US_REJECT, "DROP_HEADER": US_DROP}[
        getattr(hcm, "headers_with_underscores_action", "ALLOW")]
    if http1_stats is not None:
        h.http1_stats = http1_stats.b
    elif h.underscores != US_ALLOW:
        raise ValueError("headers_with_underscores_action needs the http1.* stat block")
    host10 = (hcm.default_host_for_http_10 or "").encode()
    if host10:
        h.default_host_10 = <char*>malloc(len(host10))
        if h.default_host_10 == NULL:
            raise MemoryError()
        memcpy(h.default_host_10, <char*>host10, len(host10))
        h.default_host_10_len = len(host10)
    return hh
