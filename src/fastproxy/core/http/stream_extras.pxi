# Per-stream mechanisms of the HTTP connection manager that sit beside the request/response
# path of core/http/active_stream.pxi and core/http/router_filter.pxi: the stream idle and
# request timeouts, the trusted client address (use_remote_address / xff_num_trusted_hops),
# Envoy's handling of x-envoy-* request headers (sanitizing, the router's timeout headers),
# and the 200 that turns a CONNECT stream into a tunnel.

cdef inline uint64_t wall_clock_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>ts.tv_nsec // 1000


# ---------------------------------------------------------------- timeouts

cdef void stream_timers_start(HStream* s) noexcept nogil:
    """Arm stream_idle_timeout and request_timeout for a new stream."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    s.last_active_ms = c.w.now
    timer_init(&s.idle_timer, _stream_idle_fired, s)
    timer_init(&s.request_timer, _stream_request_timeout_fired, s)
    timer_init(&s.duration_timer, _stream_duration_fired, s)       # armed by the route (grpc.pxi)
    if h.stream_idle_timeout_ms:
        timer_arm(c.w, &s.idle_timer, h.stream_idle_timeout_ms)
    if h.request_timeout_ms and not s.upstream.req_done:
        timer_arm(c.w, &s.request_timer, h.request_timeout_ms)


cdef void stream_timers_stop(HStream* s) noexcept nogil:
    timer_cancel(s.c.w, &s.idle_timer)
    timer_cancel(s.c.w, &s.request_timer)
    timer_cancel(s.c.w, &s.duration_timer)


cdef inline void stream_touch(HConn* c) noexcept nogil:
    """Bytes moved for the connection's stream (either direction): it is not idle."""
    if c.nstreams == 1:                 # (a multiplexed codec touches its streams itself)
        c.streams.last_active_ms = c.w.now


cdef void _stream_end_locally(HStream* s, int status, const char* body) noexcept nogil:
    """Answer the stream from the proxy (the response has not started), dropping its
    upstream connection, or reset the downstream if the response is under way."""
    cdef HConn* c = s.c
    if s.upstream.conn != NULL:
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
    if s.resp_started:
        stream_reset(s)
        hconn_pump(c)
        return
    stream_local_reply(s, status, body, strlen(body), NULL, 0, not s.upstream.req_done)
    hconn_pump(c)


cdef void _stream_idle_fired(Worker* w, void* arg) noexcept nogil:
    """stream_idle_timeout: nothing moved either way for that long. As Envoy: 408 while the
    request is still arriving, 504 once it is complete (both "stream timeout"), a reset once
    the response has started."""
    cdef HStream* s = <HStream*>arg
    cdef HttpCfg* h = <HttpCfg*>s.c.cfg.http
    cdef uint64_t idle = w.now - s.last_active_ms
    if idle < h.stream_idle_timeout_ms:
        timer_arm(w, &s.idle_timer, h.stream_idle_timeout_ms - idle)     # lazy re-arm
        return
    stat_add(h.stats, w, H_RQ_IDLE_TIMEOUT, 1)
    s.response_flags |= RF_SI
    _stream_end_locally(s, 504 if s.upstream.req_done else 408, "stream timeout")


cdef void _stream_request_timeout_fired(Worker* w, void* arg) noexcept nogil:
    """request_timeout: the whole request was not received in time: 408."""
    cdef HStream* s = <HStream*>arg
    if s.upstream.req_done:
        return
    stat_add((<HttpCfg*>s.c.cfg.http).stats, w, H_RQ_TIMEOUT, 1)
    _stream_end_locally(s, 408, "request timeout")


# ---------------------------------------------------------------- trusted client address

cdef enum:                          # HttpCfg.internal_mode
    IA_NONE = 0                     # no internal_address_config: nothing is internal (Envoy >= 1.33)
    IA_DEFAULT = 1                  # internal_address_config without cidr_ranges: RFC 1918 & co
    IA_CIDRS = 2                    # its cidr_ranges

cdef struct InternalCidr:
    uint8_t v6
    uint8_t plen
    uint8_t addr[16]


cdef bint _cidr_contains(const InternalCidr* r, const uint8_t* a, bint v6) noexcept nogil:
    cdef int bits = r.plen, i = 0
    if r.v6 != v6:
        return False
    while bits >= 8:
        if a[i] != r.addr[i]:
            return False
        bits -= 8
        i += 1
    return bits == 0 or ((a[i] ^ r.addr[i]) >> (8 - bits)) == 0


cdef bint _ip_is_internal(HttpCfg* h, const char* ip) noexcept nogil:
    """Is the address internal under the connection manager's internal_address_config?
    Envoy's default set (Network::Utility::isInternalAddress): 10/8, 172.16/12, 192.168/16,
    127.0.0.1 (that address only), fd00::/8 and ::1."""
    cdef uint8_t a[16]
    cdef bint v6
    cdef int i
    if h.internal_mode == IA_NONE:
        return False
    if inet_pton(AF_INET, ip, a) == 1:
        v6 = False
    elif inet_pton(AF_INET6, ip, a) == 1:
        v6 = True
    else:
        return False
    if h.internal_mode == IA_CIDRS:
        for i in range(h.ninternal):
            if _cidr_contains(&h.internal_cidrs[i], a, v6):
                return True
        return False
    if not v6:
        return (a[0] == 10 or (a[0] == 172 and (a[1] & 0xf0) == 16) or (a[0] == 192 and a[1] == 168)
                or (a[0] == 127 and a[1] == 0 and a[2] == 0 and a[3] == 1))
    if a[0] == 0xfd:
        return True
    for i in range(15):
        if a[i]:
            return False
    return a[15] == 1


cdef bint _xff_from_right(const char* v, size_t n, uint32_t k, char* out, size_t cap) noexcept nogil:
    """The k-th (1 = rightmost) element of an x-forwarded-for list, if it is an IP address."""
    cdef size_t end = n, start
    cdef uint32_t seen = 0
    cdef uint8_t a[16]
    while True:
        start = end
        while start > 0 and v[start - 1] != 44:         # ','
            start -= 1
        seen += 1
        if seen == k:
            while start < end and (v[start] == 32 or v[start] == 9):
                start += 1
            while end > start and (v[end - 1] == 32 or v[end - 1] == 9):
                end -= 1
            if end - start == 0 or end - start >= cap:
                return False
            memcpy(out, v + start, end - start)
            out[end - start] = 0
            return inet_pton(AF_INET, out, a) == 1 or inet_pton(AF_INET6, out, a) == 1
        if start == 0:
            return False
        end = start - 1


cdef void stream_client_address(HStream* s) noexcept nogil:
    """Envoy's trusted client address (what %DOWNSTREAM_REMOTE_ADDRESS% prints and
    x-envoy-external-address carries) and whether the request is internal
    (ConnectionManagerUtility::mutateRequestHeaders). With use_remote_address: the
    connection's peer, or, with xff_num_trusted_hops = N > 0, the N-th address from the
    right of the received x-forwarded-for; internal when the request has no
    x-forwarded-for and the peer is an internal address. Without it: the (N+1)-th from the
    right of x-forwarded-for; internal when x-forwarded-for is one internal address (and
    N = 0). Either way the peer when x-forwarded-for has too few (valid) entries. An
    external request under use_remote_address is an edge request."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const char* v = NULL
    cdef size_t n = 0
    cdef uint32_t k = h.xff_num_trusted_hops if h.use_remote_address else h.xff_num_trusted_hops + 1
    cdef bint from_xff = False
    memcpy(s.client_ip, c.remote_ip, c.remote_ip_len + 1)
    s.client_ip_len = c.remote_ip_len
    s.client_port = c.remote_port
    if k or h.internal_mode != IA_NONE:
        v = _head_field(&s.head, "x-forwarded-for", &n)
    if k and v != NULL:
        if _xff_from_right(v, n, k, s.client_ip, sizeof(s.client_ip)):
            s.client_ip_len = strlen(s.client_ip)
            s.client_port = 0
            from_xff = True
        else:
            memcpy(s.client_ip, c.remote_ip, c.remote_ip_len + 1)
    s.client_internal = 0
    if h.internal_mode != IA_NONE:
        if h.use_remote_address:
            s.client_internal = v == NULL and _ip_is_internal(h, s.client_ip)
        else:
            s.client_internal = (from_xff and k == 1 and memchr(v, 44, n) == NULL
                                 and _ip_is_internal(h, s.client_ip))
    s.edge = h.use_remote_address and not s.client_internal


cdef size_t stream_forwarded_xff_size(HStream* s) noexcept nogil:
    """The bytes stream_forwarded_xff needs to write the whole value."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef size_t n = 0
    cdef const char* v = _req_field(s, "x-forwarded-for", 15, &n)
    cdef size_t an = h.local_ip_len if c.remote_loopback else c.remote_ip_len
    return n + 1 + an if v != NULL and n else an


cdef size_t stream_forwarded_xff(HStream* s, char* out, size_t cap) noexcept nogil:
    """The x-forwarded-for the upstream gets under use_remote_address (Utility::appendXff):
    the received value, if any, then "," and the peer (Envoy's local address instead of a
    loopback peer). The peer alone if the result does not fit in cap."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const char* a = c.remote_ip
    cdef size_t an = c.remote_ip_len
    cdef size_t n = 0
    cdef const char* v = _req_field(s, "x-forwarded-for", 15, &n)
    if c.remote_loopback:
        a = h.local_ip
        an = h.local_ip_len
    if v != NULL and n and n + an + 1 <= cap:
        memcpy(out, v, n)
        out[n] = 44                                 # ','
        memcpy(out + n + 1, a, an)
        return n + 1 + an
    memcpy(out, a, an)
    return an


# ---------------------------------------------------------------- x-envoy-* request headers
#
# Envoy trusts the x-envoy-* request headers only from internal requests (see above):
# ConnectionManagerUtility::mutateRequestHeaders removes x-envoy-internal from every request
# (and sets it to "true" on internal ones), and cleanInternalHeaders removes the control
# headers (retry, timeout, tracing, ...) from every other request, plus the decorator and
# downstream-service ones from edge requests; x-envoy-external-address is set on edge
# requests. Later the router consumes the retry and timeout headers of whatever request
# reaches it and sets x-envoy-expected-rq-timeout-ms to the route timeout in force.
#
# The codec flags a request that has any field named x-envoy-* (RequestFacts.envoy_hdrs), so a request
# without one costs a single flag test here.

cdef enum:                          # what Envoy does with a received x-envoy-* request field
    XE_INTERNAL = 1                 # x-envoy-internal: removed (set again if internal)
    XE_EXTERNAL = 2                 # removed unless the request is internal
    XE_EDGE = 4                     # removed from edge requests
    XE_EXT_ADDR = 8                 # x-envoy-external-address: replaced on edge requests
    XE_ROUTER = 16                  # consumed by the router from any request
    XE_EXPECTED = 32                # replaced by the router when a route timeout is in force
    XE_ORIG_PATH = 64               # x-envoy-original-path: replaced when the route rewrites the path

cdef enum:                          # where a pass runs (xe_sanitize)
    XE_AT_HCM = 1                   # the connection manager: before the filters and routing
    XE_AT_ROUTER = 2                # the router: the head sent upstream


cdef int _xe_class(const char* name, size_t n) noexcept nogil:
    """The XE_* bits of a request field name; 0 for a field Envoy forwards as it is."""
    cdef const char* t = name + 8
    cdef size_t k = n - 8
    if n <= 8 or not _ieq(name, 8, "x-envoy-"):
        return 0
    if k == 8:
        if _ieq(t, k, "internal"):
            return XE_INTERNAL
        if _ieq(t, k, "retry-on"):
            return XE_EXTERNAL | XE_ROUTER
    elif k == 7:
        if _ieq(t, k, "ip-tags"):
            return XE_EXTERNAL
    elif k == 11:
        if _ieq(t, k, "max-retries"):
            return XE_EXTERNAL | XE_ROUTER
        if _ieq(t, k, "force-trace"):
            return XE_EXTERNAL
    elif k == 12:
        if _ieq(t, k, "original-url"):
            return XE_EXTERNAL
    elif k == 13:
        if _ieq(t, k, "retry-grpc-on"):
            return XE_EXTERNAL | XE_ROUTER
        if _ieq(t, k, "original-path"):
            return XE_EDGE | XE_ORIG_PATH
        if _ieq(t, k, "original-host"):
            return XE_EDGE
    elif k == 16:
        if _ieq(t, k, "external-address"):
            return XE_EXT_ADDR
    elif k == 19:
        if _ieq(t, k, "decorator-operation"):
            return XE_EDGE
    elif k == 22:
        if _ieq(t, k, "expected-rq-timeout-ms"):
            return XE_EXTERNAL | XE_EXPECTED
        if (_ieq(t, k, "upstream-rq-timeout-ms") or _ieq(t, k, "retriable-status-codes")
                or _ieq(t, k, "retriable-header-names") or _ieq(t, k, "upstream-alt-stat-name")):
            return XE_EXTERNAL | XE_ROUTER
    elif k == 23:
        if _ieq(t, k, "downstream-service-node"):
            return XE_EDGE
    elif k == 24:
        if _ieq(t, k, "hedge-on-per-try-timeout"):
            return XE_EXTERNAL | XE_ROUTER
    elif k == 26:
        if _ieq(t, k, "downstream-service-cluster"):
            return XE_EDGE
    elif k == 27:
        if _ieq(t, k, "upstream-stream-duration-ms"):
            return XE_EXTERNAL | XE_ROUTER
    elif k == 30:
        if _ieq(t, k, "upstream-rq-per-try-timeout-ms"):
            return XE_EXTERNAL | XE_ROUTER
    elif k == 32:
        if _ieq(t, k, "upstream-rq-timeout-alt-response"):
            return XE_EXTERNAL | XE_ROUTER
    return 0


cdef bint xe_drops(HStream* s, const char* name, size_t n, int at) noexcept nogil:
    """Does Envoy remove the request field `name` at `at` (XE_AT_* bits) for this stream?"""
    cdef int cls
    if n <= 8 or (name[0] | 0x20) != 120:          # 'x'
        return False
    cls = _xe_class(name, n)
    if cls == 0:
        return False
    if at & XE_AT_HCM:
        if cls & XE_INTERNAL:
            return True
        if (cls & XE_EXTERNAL) and not s.client_internal:
            return True
        if (cls & (XE_EDGE | XE_EXT_ADDR)) and s.edge:
            return True
    if at & XE_AT_ROUTER:
        if cls & XE_ROUTER:
            return True
        if (cls & XE_EXPECTED) and s.expected_timeout_ms:
            return True
        if (cls & XE_ORIG_PATH) and s.rewritten_path != NULL:
            return True
    return False


cdef void xe_sanitize(HStream* s, PairList* l, int at) noexcept nogil:
    """Remove, in place, the fields of `l` that Envoy removes at `at`."""
    cdef size_t i, k = 0
    for i in range(l.n):
        if xe_drops(s, l.v[i].name.p, l.v[i].name.n, at):
            continue
        l.v[k] = l.v[i]
        k += 1
    l.n = k


cdef inline uint64_t _xe_ms(HStream* s, const char* name, size_t nn, uint64_t dflt) noexcept nogil:
    cdef size_t n = 0
    cdef const char* v = _req_field(s, name, nn, &n)
    if v != NULL and 0 < n <= 19 and _all_digits(v, n):
        return _parse_u64(v, n)
    return dflt


cdef uint64_t stream_route_timeout(HStream* s, bint* hedge, bint* headers_ok) noexcept nogil:
    """The router's timeouts (FilterUtility::finalTimeout): the route's timeout, unless the
    request carries x-envoy-upstream-rq-timeout-ms; the per-try timeout is the route's
    retry_policy.per_try_timeout unless the request carries
    x-envoy-upstream-rq-per-try-timeout-ms, and none when not shorter than the whole one.
    The x-envoy-* ones count only on an internal request (the connection manager removed
    them from others) or as the filters left them. s.timeout_ms: when the request times
    out, over every attempt; s.expected_timeout_ms: what x-envoy-expected-rq-timeout-ms
    tells the upstream (the per-try timeout, or the whole one when hedging). Returns the
    per-try timeout (0: none); *hedge: hedge_on_per_try_timeout (the route's policy or
    x-envoy-hedge-on-per-try-timeout); *headers_ok: the request's x-envoy-* retry headers
    are honoured. The route's gRPC timeouts (grpc-timeout, max_stream_duration) decide the
    route's part first (core/http/grpc.pxi)."""
    cdef uint64_t whole, per_try
    cdef const char* v
    cdef size_t n = 0
    cdef const RetryPolicy* p = s.route.retry
    grpc_route_timeouts(s)
    whole = s.timeout_ms
    per_try = p.per_try_timeout_ms if p != NULL else 0
    hedge[0] = p != NULL and p.hedge_on_per_try_timeout
    headers_ok[0] = (s.envoy_hdrs and s.client_internal) or s.fc != NULL
    if headers_ok[0]:
        whole = _xe_ms(s, "x-envoy-upstream-rq-timeout-ms", 30, whole)
        per_try = _xe_ms(s, "x-envoy-upstream-rq-per-try-timeout-ms", 38, per_try)
        v = _req_field(s, "x-envoy-hedge-on-per-try-timeout", 32, &n)
        if v != NULL and n == 4 and memcmp(v, "true", 4) == 0:
            hedge[0] = True
        elif v != NULL and n == 5 and memcmp(v, "false", 5) == 0:
            hedge[0] = False
    if per_try >= whole and whole:
        per_try = 0
    s.timeout_ms = whole
    if whole or per_try:
        s.expected_timeout_ms = whole if (per_try == 0 or hedge[0]) else per_try
    grpc_route_timeouts_sent(s)
    return per_try


cdef size_t _envoy_local_address(char* out, size_t cap) noexcept nogil:
    """Envoy's local address (Network::Utility::getLocalAddress for IPv4, taken once at
    startup): the first non-loopback IPv4 interface address, else 127.0.0.1. A request from
    a loopback peer gets it appended to x-forwarded-for instead of the peer."""
    cdef ifaddrs* all = NULL
    cdef ifaddrs* ifa
    cdef char ip[48]
    cdef size_t n
    memcpy(out, b"127.0.0.1", 10)                   # cap >= 48
    if getifaddrs(&all) < 0:
        return 9
    ifa = all
    while ifa != NULL:
        if ifa.ifa_addr != NULL and ifa.ifa_addr.sa_family == AF_INET:
            if inet_ntop(AF_INET, &(<sockaddr_in*>ifa.ifa_addr).sin_addr, ip, sizeof(ip)) != NULL:
                n = strlen(ip)
                if n < cap:
                    memcpy(out, ip, n + 1)
                if (<uint8_t*>&(<sockaddr_in*>ifa.ifa_addr).sin_addr)[0] != 127:
                    break
        ifa = ifa.ifa_next
    freeifaddrs(all)
    return strlen(out)


# ---------------------------------------------------------------- CONNECT

cdef int stream_connect_established(HStream* s) noexcept nogil:
    """The upstream TCP connection of a CONNECT stream is up: answer 200 and turn both
    connections into a byte tunnel (the WebSocket tunnel machinery). -1 on failure."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef UpConn* u = s.upstream.conn
    cdef PairList l
    cdef BodyFraming bf
    cdef char* owned = NULL
    cdef int rc
    memset(&l, 0, sizeof(PairList))
    memset(&bf, 0, sizeof(BodyFraming))
    bf.kind = BODY_TUNNEL
    rc = pl_finish_response(&l, s, c, &owned)
    if rc == 0:
        rc = c.codec.encode_headers(c, s, 200, _cs("OK"), &l, &bf, False)
    free(l.v)
    free(owned)
    if rc < 0:
        return -1
    s.status = 200
    s.resp_started = 1
    s.resp_from_upstream = 0
    s.response_start_ms = c.w.now
    s.tunnel = 1
    _count_upstream(s.cluster.stats, c.w, 200)
    _count_host(s, 200)
    _count_downstream(c, 200)
    if c.in_buf.length:
        s.req_body_bytes += c.in_buf.length
        chain_move(&u.out_buf, &c.in_buf)       # bytes the client sent before our 200
    return 0
