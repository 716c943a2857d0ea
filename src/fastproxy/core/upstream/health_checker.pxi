# Active health checks (Envoy's HealthCheck: HTTP/1.1, TCP and gRPC): checkers that run without
# the GIL, set HF_FAILED_ACTIVE_HC / HF_DEGRADED_ACTIVE_HC on a host's HostShared and ask
# for a host-set rebuild (cluster_health_changed) on a transition. Owner: issue 16's HC work.
#
# Where checks run: one dedicated loop thread per engine (HealthCheckLoop), the
# dispatcher's own Worker loop (epoll, timer heap, message queue) driven by a thread of its
# own, not one of the request workers. Why: a check is a connection of its own with its
# own timers, and its results are shared state (atomics in HostShared) that every worker
# reads anyway, so the only reason to put checks on a worker would be to save one thread;
# on a worker, 1,000 hosts' connects and timers would sit in the request loop's epoll set
# and heap and add their latency to requests, and a checker's state (sessions, counters)
# would have to be split or locked across workers. On its own loop each checker's state
# has one owner (the loop thread, no locks), and the main thread talks to it only by loop
# messages (host list changes, stop). No Python object, no GIL: a transition writes the
# event log line from C too.
#
# Behaviour as Envoy 1.40's HealthCheckerImplBase (source/extensions/health_checkers):
# a host starts failed (HF_FAILED_ACTIVE_HC) until its first check passes (one pass on the
# first check, healthy_threshold passes after); an unexpected HTTP status fails it at
# once, network failures and timeouts (and retriable_statuses) after unhealthy_threshold
# in a row; intervals follow interval / unhealthy_interval / *_edge_interval while the
# cluster has had traffic (upstream_cx_total), else no_traffic(_healthy)_interval, plus
# the jitters; x-envoy-degraded marks a passing host degraded.

cdef enum:
    HCK_HTTP = 1
    HCK_TCP = 2
    HCK_GRPC = 3                    # grpc.health.v1.Health/Check over h2c (nghttp2)

cdef enum:                          # Envoy's HealthCheckFailureType
    HCF_ACTIVE = 0
    HCF_PASSIVE = 1
    HCF_NETWORK = 2
    HCF_NETWORK_TIMEOUT = 3

cdef enum:                          # a session's state
    HSS_IDLE = 0                    # between checks (a kept connection may be open)
    HSS_CONNECTING = 1
    HSS_CHECKING = 2                # connected, the check's bytes sent or being sent

cdef enum:                          # Envoy's HealthTransition
    HT_UNCHANGED = 0
    HT_CHANGED = 1
    HT_PENDING = 2

cdef enum:                          # event log lines (Envoy's HealthCheckEvent)
    HEV_EJECT = 1
    HEV_ADD_HEALTHY = 2
    HEV_FAILURE = 3
    HEV_DEGRADED = 4
    HEV_NO_LONGER_DEGRADED = 5

DEF HC_RX_MAX = 65536               # bytes a TCP check keeps while it waits for its payload
DEF HC_HTTP_BODY_MAX = 1024         # Envoy's response_buffer_size default: body bytes matched

cdef struct HcRange:                # [start, end) of HTTP statuses
    int64_t start
    int64_t end

cdef struct HcConfig:               # one HealthCheck, as compiled (read only once built)
    uint8_t kind
    uint8_t reuse_connection
    uint8_t always_log_failures
    uint8_t head_method             # HTTP: the request is HEAD (its response has no body)
    uint64_t timeout_ms
    uint64_t interval_ms
    uint64_t interval_jitter_ms
    uint32_t interval_jitter_percent
    uint64_t initial_jitter_ms
    uint64_t no_traffic_ms
    uint64_t no_traffic_healthy_ms
    uint64_t unhealthy_ms
    uint64_t unhealthy_edge_ms
    uint64_t healthy_edge_ms
    uint32_t unhealthy_threshold
    uint32_t healthy_threshold
    char* request                   # HTTP: the whole request; TCP: the send payload (or NULL)
    size_t request_len
    char* receive                   # the receive payload's segments, concatenated
    size_t* seg_len
    int nseg
    HcRange* expected
    int nexpected
    HcRange* retriable
    int nretriable
    nghttp2_nv* nv                  # gRPC: the request's header fields (names and values in nv_buf)
    size_t nnv
    char* nv_buf

cdef struct HcSession
cdef struct HcLoopState:            # a HealthCheckLoop's own state (its worker's end-of-turn hook)
    HcSession* dead                 # sessions gone this loop turn, freed at its end: an event
                                    #   already fetched in the same turn may still name them

cdef struct HcChecker:
    Worker* loop                    # the HealthCheckLoop's worker (no reference: it outlives us)
    HcLoopState* ls
    ClusterCfg* cluster             # one reference
    StatBlock* stats                # cluster.<name>.health_check.* (one reference); row 0
    HcConfig cfg
    HcSession* sessions             # the checked hosts (loop thread only)
    int pending_first               # atomic: hosts not checked once yet (the first round)
    int hosts_known                 # atomic: the host list reached the loop once
    int log_fd                      # the event log (O_APPEND), or -1
    char* cluster_name              # for the event log (malloc'd, NUL-terminated)
    char* type_name                 # "HTTP" / "TCP"
    uint64_t rng

cdef struct HcSession:
    HcChecker* ck
    HcSession* next
    StatBlock* hstats               # the host's stat block (one reference): its HostShared
    sockaddr_storage addr
    socklen_t addrlen
    char addr_text[48]
    uint16_t port
    Endp ep                         # ep.fd < 0: no connection
    Timer interval_timer
    Timer timeout_timer
    uint8_t state
    uint8_t first_check
    uint8_t expect_close            # a close we asked for (TCP): not a failure
    uint32_t num_healthy
    uint32_t num_unhealthy
    size_t sent                     # bytes of the request written
    H1ResponseReader resp           # HTTP: the response being read
    char* rx                        # TCP receive / HTTP body / gRPC message bytes (malloc'd)
    size_t rx_len
    size_t rx_cap
    # gRPC: the HTTP/2 session on the connection, the check's stream and what came back
    nghttp2_session* h2
    char* tx                        # frames nghttp2 gave us not written yet
    size_t tx_len
    size_t tx_cap
    size_t body_sent                # request message bytes given to nghttp2
    int32_t stream_id
    int status                      # :status (0: none yet)
    int grpc_status                 # grpc-status (-1: none yet)
    uint8_t stream_done             # the stream closed (judge it after nghttp2 returns)
    uint8_t stream_reset            # ... by a reset, not an end of stream
    uint8_t goaway

cdef struct HcHostsMsg:             # main thread -> loop: the cluster's hosts now
    HcChecker* ck
    int n
    StatBlock** blocks              # one reference each
    sockaddr_storage* addrs
    socklen_t* addrlens


# ---- stats (row 0 of the block: the loop thread is its only writer) ----

cdef inline void _hc_stat(HcChecker* ck, int i, int64_t n) noexcept nogil:
    fp_store_u64(&ck.stats.v[i], fp_load_u64(&ck.stats.v[i]) + <uint64_t>n)


cdef inline HostShared* _hc_host(HcSession* s) noexcept nogil:
    return <HostShared*>s.hstats.ext


cdef inline bint _hc_flag(HcSession* s, uint32_t f) noexcept nogil:
    return (fp_load_u32(&_hc_host(s).health_flags) & f) != 0


# ---- the event log (Envoy's HealthCheckEvent JSON lines) ----

cdef void _hc_log(HcSession* s, int kind, int failure, bint first, int status) noexcept nogil:
    cdef HcChecker* ck = s.ck
    cdef char line[1024]
    cdef char ts[40]
    cdef char tail[256]
    cdef timespec now
    cdef tm t
    cdef time_t secs
    cdef int n
    cdef const char* ftype
    if ck.log_fd < 0:
        return
    clock_gettime(CLOCK_REALTIME, &now)
    secs = now.tv_sec
    gmtime_r(&secs, &t)
    n = <int>strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &t)
    snprintf(ts + n, sizeof(ts) - n, ".%03dZ", <int>(now.tv_nsec // 1000000))
    ftype = "ACTIVE" if failure == HCF_ACTIVE else ("PASSIVE" if failure == HCF_PASSIVE else (
        "NETWORK" if failure == HCF_NETWORK else "NETWORK_TIMEOUT"))
    # Envoy prints the event's fields in their proto order: the eject and add events come
    # before the timestamp, the failure and degraded ones after it.
    tail[0] = 0
    if kind == HEV_EJECT:
        snprintf(tail, sizeof(tail), "\"eject_unhealthy_event\":{\"failure_type\":\"%s\",\"http_status_code\":%d},"
                 "\"timestamp\":\"%s\"", ftype, status, ts)
    elif kind == HEV_ADD_HEALTHY:
        snprintf(tail, sizeof(tail), "\"add_healthy_event\":{\"first_check\":%s},\"timestamp\":\"%s\"",
                 "true" if first else "false", ts)
    elif kind == HEV_FAILURE:
        snprintf(tail, sizeof(tail), "\"timestamp\":\"%s\",\"health_check_failure_event\":{\"failure_type\":"
                 "\"%s\",\"first_check\":%s,\"http_status_code\":%d}", ts, ftype,
                 "true" if first else "false", status)
    elif kind == HEV_DEGRADED:
        snprintf(tail, sizeof(tail), "\"timestamp\":\"%s\",\"degraded_healthy_host\":{}", ts)
    else:
        snprintf(tail, sizeof(tail), "\"timestamp\":\"%s\",\"no_longer_degraded_host\":{}", ts)
    n = snprintf(line, sizeof(line),
                 "{\"health_checker_type\":\"%s\",\"host\":{\"socket_address\":{\"protocol\":\"TCP\","
                 "\"address\":\"%s\",\"port_value\":%d,\"resolver_name\":\"\",\"ipv4_compat\":false,"
                 "\"network_namespace_filepath\":\"\"}},\"cluster_name\":\"%s\",%s,"
                 "\"locality\":{\"region\":\"\",\"zone\":\"\",\"sub_zone\":\"\"}}\n",
                 ck.type_name, s.addr_text, <int>s.port, ck.cluster_name, tail)
    if 0 < n < <int>sizeof(line):
        write(ck.log_fd, line, <size_t>n)      # best effort, as Envoy's file sink


# ---- intervals ----

cdef uint64_t _hc_jitter(HcChecker* ck, uint64_t base, uint64_t jitter) noexcept nogil:
    cdef uint64_t pct = <uint64_t>ck.cfg.interval_jitter_percent * base // 100
    if pct > 0:
        base += xorshift64s(&ck.rng) % pct
    if jitter > 0:
        base += xorshift64s(&ck.rng) % jitter
    return base if base > 0 else 1     # never 0: no live lock


cdef bint _hc_cluster_had_traffic(HcChecker* ck) noexcept nogil:
    """Envoy's test for the no-traffic intervals: the cluster ever made an upstream
    connection (upstream_cx_total, summed over the workers)."""
    cdef StatBlock* b = ck.cluster.stats
    cdef int k
    for k in range(b.nworkers):
        if fp_load_u64(&b.v[k * b.stride + C_CX_TOTAL]):
            return True
    return False


cdef uint64_t _hc_interval(HcChecker* ck, bint healthy, int changed) noexcept nogil:
    cdef uint64_t base
    if _hc_cluster_had_traffic(ck):
        if not healthy:
            base = ck.cfg.unhealthy_edge_ms if changed == HT_PENDING else ck.cfg.unhealthy_ms
        else:
            base = ck.cfg.healthy_edge_ms if changed == HT_PENDING else ck.cfg.interval_ms
    else:
        base = ck.cfg.no_traffic_healthy_ms if (healthy and changed != HT_PENDING) else ck.cfg.no_traffic_ms
    return _hc_jitter(ck, base, ck.cfg.interval_jitter_ms)


# ---- connections ----

cdef void _hc_close(HcSession* s) noexcept nogil:
    if s.ep.fd >= 0:
        endp_forget(s.ck.loop, &s.ep)
        close(s.ep.fd)
        s.ep.fd = -1
    if s.h2 != NULL:
        nghttp2_session_del(s.h2)
        s.h2 = NULL
    s.tx_len = 0
    s.goaway = 0
    s.state = HSS_IDLE
    s.rx_len = 0
    s.sent = 0
    h1rr_reset(&s.resp)


cdef void _hc_first_done(HcSession* s) noexcept nogil:
    if s.first_check:
        s.first_check = 0
        fp_atomic_add_int(&s.ck.pending_first, -1)


cdef int _hc_clear_pending(HcSession* s, int changed) noexcept nogil:
    if _hc_flag(s, HF_PENDING_ACTIVE_HC):
        fp_atomic_and_u32(&_hc_host(s).health_flags, ~(<uint32_t>HF_PENDING_ACTIVE_HC))
        return HT_CHANGED
    return changed


cdef void _hc_success(HcSession* s, bint degraded) noexcept nogil:
    cdef HcChecker* ck = s.ck
    cdef HostShared* h = _hc_host(s)
    cdef int changed = HT_UNCHANGED
    s.num_unhealthy = 0
    if _hc_flag(s, HF_FAILED_ACTIVE_HC):
        s.num_healthy += 1
        if s.first_check or s.num_healthy == ck.cfg.healthy_threshold:
            fp_atomic_and_u32(&h.health_flags, ~(<uint32_t>(HF_FAILED_ACTIVE_HC | HF_ACTIVE_HC_TIMEOUT
                                                            | HF_EXCLUDED_VIA_IMMEDIATE_HC_FAIL)))
            _hc_stat(ck, HC_HEALTHY, 1)
            changed = HT_CHANGED
            _hc_log(s, HEV_ADD_HEALTHY, 0, s.first_check, 0)
        else:
            changed = HT_PENDING
    changed = _hc_clear_pending(s, changed)
    if degraded != _hc_flag(s, HF_DEGRADED_ACTIVE_HC):
        if degraded:
            fp_atomic_or_u32(&h.health_flags, HF_DEGRADED_ACTIVE_HC)
            _hc_stat(ck, HC_DEGRADED, 1)
            _hc_log(s, HEV_DEGRADED, 0, 0, 0)
        else:
            fp_atomic_and_u32(&h.health_flags, ~(<uint32_t>HF_DEGRADED_ACTIVE_HC))
            _hc_stat(ck, HC_DEGRADED, -1)
            _hc_log(s, HEV_NO_LONGER_DEGRADED, 0, 0, 0)
        if changed == HT_UNCHANGED:
            changed = HT_CHANGED
    _hc_stat(ck, HC_SUCCESS, 1)
    _hc_first_done(s)
    if changed == HT_CHANGED:
        cluster_health_changed(ck.cluster)
    if not _hc_flag(s, HF_FAILED_ACTIVE_HC):
        # A passing check un-ejects a host outlier detection ejected (Envoy's
        # successful_active_health_check_uneject_host, on by default; outlier.pxi decides).
        outlier_host_healthy_check(s.hstats)
    timer_cancel(ck.loop, &s.timeout_timer)
    timer_arm(ck.loop, &s.interval_timer, _hc_interval(ck, True, changed))


cdef void _hc_failure(HcSession* s, int failure, bint retriable, int status) noexcept nogil:
    cdef HcChecker* ck = s.ck
    cdef HostShared* h = _hc_host(s)
    cdef int changed = HT_UNCHANGED
    cdef bint network = failure == HCF_NETWORK or failure == HCF_NETWORK_TIMEOUT
    s.num_healthy = 0
    if not _hc_flag(s, HF_FAILED_ACTIVE_HC):
        s.num_unhealthy += 1
        if (not network and not retriable) or s.num_unhealthy == ck.cfg.unhealthy_threshold:
            fp_atomic_or_u32(&h.health_flags, HF_FAILED_ACTIVE_HC)
            _hc_stat(ck, HC_HEALTHY, -1)
            changed = HT_CHANGED
            _hc_log(s, HEV_EJECT, failure, 0, status)
        else:
            changed = HT_PENDING
    if failure == HCF_NETWORK_TIMEOUT and _hc_flag(s, HF_FAILED_ACTIVE_HC):
        fp_atomic_or_u32(&h.health_flags, HF_ACTIVE_HC_TIMEOUT)
    else:
        fp_atomic_and_u32(&h.health_flags, ~(<uint32_t>HF_ACTIVE_HC_TIMEOUT))
    changed = _hc_clear_pending(s, changed)
    if s.first_check or ck.cfg.always_log_failures:
        _hc_log(s, HEV_FAILURE, failure, s.first_check, status)
    _hc_stat(ck, HC_FAILURE, 1)
    if network:
        _hc_stat(ck, HC_NETWORK_FAILURE, 1)
    elif failure == HCF_PASSIVE:
        _hc_stat(ck, HC_PASSIVE_FAILURE, 1)
    _hc_first_done(s)
    if changed == HT_CHANGED:
        cluster_health_changed(ck.cluster)
    timer_cancel(ck.loop, &s.timeout_timer)
    timer_arm(ck.loop, &s.interval_timer, _hc_interval(ck, False, changed))


# ---- payload matching (Envoy's PayloadMatcher: each segment, in order, after the last) ----

cdef bint _hc_payload_match(HcConfig* cfg, const char* buf, size_t n) noexcept nogil:
    cdef size_t start = 0, off = 0, seg, i
    cdef int k
    for k in range(cfg.nseg):
        seg = cfg.seg_len[k]
        i = start
        while i + seg <= n:
            if memcmp(buf + i, cfg.receive + off, seg) == 0:
                break
            i += 1
        if i + seg > n:
            return False
        start = i + seg
        off += seg
    return True


cdef int _hc_rx_append(HcSession* s, const char* p, size_t n, size_t cap) noexcept nogil:
    """Keep up to `cap` received bytes for matching; -1: no memory."""
    cdef char* nb
    cdef size_t want
    if s.rx_len + n > cap:
        n = cap - s.rx_len
    if n == 0:
        return 0
    if s.rx_len + n > s.rx_cap:
        want = s.rx_cap * 2 if s.rx_cap else 512
        while want < s.rx_len + n:
            want *= 2
        if want > cap:
            want = cap
        nb = <char*>realloc(s.rx, want)
        if nb == NULL:
            return -1
        s.rx = nb
        s.rx_cap = want
    memcpy(s.rx + s.rx_len, p, n)
    s.rx_len += n
    return 0


# ---- HTTP/1.1 responses ----

cdef bint _hc_in_ranges(HcRange* r, int n, int64_t status) noexcept nogil:
    cdef int i
    for i in range(n):
        if r[i].start <= status < r[i].end:
            return True
    return False


cdef bint _hc_has_field(HttpHead* h, const char* lower) noexcept nogil:
    cdef uint32_t i
    for i in range(h.nfields):
        if _ieq(h.buf + h.fields[i].name_off, h.fields[i].name_len, lower):
            return True
    return False


cdef void _hc_http_done(HcSession* s) noexcept nogil:
    """The whole response is in: judge it (Envoy's healthCheckResult)."""
    cdef HcChecker* ck = s.ck
    cdef HttpHead* h = h1rr_head(&s.resp)
    cdef int status = h.status
    cdef bint keep = ck.cfg.reuse_connection and h1rr_keep_alive(&s.resp)
    cdef bint immediate = _hc_has_field(h, "x-envoy-immediate-health-check-fail")
    cdef bint degraded = _hc_has_field(h, "x-envoy-degraded")
    cdef bint ok = True
    if ck.cfg.nseg and not _hc_payload_match(&ck.cfg, s.rx, s.rx_len):
        ok = False
    elif not _hc_in_ranges(ck.cfg.expected, ck.cfg.nexpected, status):
        ok = False
    if not keep:
        _hc_close(s)
    else:
        s.state = HSS_IDLE
        s.rx_len = 0
        s.sent = 0
        h1rr_reset(&s.resp)
    if ok:
        _hc_success(s, degraded)
        return
    if immediate:
        fp_atomic_or_u32(&_hc_host(s).health_flags, HF_EXCLUDED_VIA_IMMEDIATE_HC_FAIL)
    _hc_failure(s, HCF_ACTIVE, _hc_in_ranges(ck.cfg.retriable, ck.cfg.nretriable, status), status)


cdef int _hc_body_in(void* arg, const char* data, size_t n) noexcept nogil:
    """Body bytes of a check response, kept when the check matches a payload."""
    cdef HcSession* s = <HcSession*>arg
    if s.ck.cfg.nseg:
        return _hc_rx_append(s, data, n, HC_HTTP_BODY_MAX)
    return 0


cdef int _hc_http_feed(HcSession* s, const char* data, size_t n) noexcept nogil:
    """Response bytes. 1: the response is complete (judged), 0: more to come, -1: bad."""
    cdef int rc = h1rr_feed(&s.resp, data, n, _hc_body_in, s)
    if rc == 1:
        _hc_http_done(s)
    return rc


cdef void _hc_network_failure(HcSession* s) noexcept nogil:
    _hc_close(s)
    _hc_failure(s, HCF_NETWORK, False, 0)


# ---- gRPC (grpc.health.v1.Health/Check over h2c) ----

cdef nghttp2_session_callbacks* _hc_h2_callbacks = NULL


cdef int _hc_tx_append(HcSession* s, const uint8_t* p, size_t n) noexcept nogil:
    cdef char* nb
    cdef size_t want
    if s.tx_len + n > s.tx_cap:
        want = s.tx_cap * 2 if s.tx_cap else 1024
        while want < s.tx_len + n:
            want *= 2
        nb = <char*>realloc(s.tx, want)
        if nb == NULL:
            return -1
        s.tx = nb
        s.tx_cap = want
    memcpy(s.tx + s.tx_len, p, n)
    s.tx_len += n
    return 0


cdef int _hc_grpc_flush(HcSession* s) noexcept nogil:
    """What nghttp2 has to send, then as much as the socket takes. -1: the connection failed."""
    cdef const uint8_t* data
    cdef ssize_t n, k
    while True:
        n = nghttp2_session_mem_send(s.h2, &data)
        if n < 0:
            return -1
        if n == 0:
            break
        if _hc_tx_append(s, data, <size_t>n) < 0:
            return -1
    while s.tx_len:
        k = send(s.ep.fd, s.tx, s.tx_len, MSG_NOSIGNAL)
        if k < 0:
            if errno == EAGAIN:
                return 0
            if errno == EINTR:
                continue
            return -1
        memmove(s.tx, s.tx + k, s.tx_len - <size_t>k)
        s.tx_len -= <size_t>k
    return 0


cdef ssize_t _hc_grpc_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                           uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept nogil:
    cdef HcSession* s = <HcSession*>user_data
    cdef HcConfig* cfg = &s.ck.cfg
    cdef size_t n = cfg.request_len - s.body_sent
    if n > length:
        n = length
    memcpy(buf, cfg.request + s.body_sent, n)
    s.body_sent += n
    if s.body_sent == cfg.request_len:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
    return <ssize_t>n


cdef int _hc_grpc_on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                            size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                            void* user_data) noexcept nogil:
    cdef HcSession* s = <HcSession*>user_data
    cdef int v = 0
    cdef size_t i
    if frame.hd.stream_id != s.stream_id:
        return 0
    if (namelen == 7 and memcmp(name, b":status", 7) == 0) or (namelen == 11 and memcmp(name, b"grpc-status", 11) == 0):
        for i in range(valuelen):
            if value[i] < 48 or value[i] > 57 or v > 100000:
                v = 999999
                break
            v = v * 10 + (value[i] - 48)
        if name[0] == 58:       # ':'
            s.status = v
        else:
            s.grpc_status = v
    return 0


cdef int _hc_grpc_on_data(nghttp2_session* session, uint8_t flags, int32_t stream_id, const uint8_t* data,
                          size_t length, void* user_data) noexcept nogil:
    cdef HcSession* s = <HcSession*>user_data
    if stream_id == s.stream_id and _hc_rx_append(s, <const char*>data, length, HC_RX_MAX) < 0:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _hc_grpc_on_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                           void* user_data) noexcept nogil:
    cdef HcSession* s = <HcSession*>user_data
    if stream_id == s.stream_id:
        s.stream_done = 1
        s.stream_reset = error_code != 0
    return 0


cdef int _hc_grpc_on_frame(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept nogil:
    cdef HcSession* s = <HcSession*>user_data
    if frame.hd.type == NGHTTP2_GOAWAY:
        s.goaway = 1
    return 0


cdef int _hc_grpc_callbacks() noexcept nogil:
    """The callbacks every checker's sessions share (made once, on the loop thread)."""
    global _hc_h2_callbacks
    if _hc_h2_callbacks != NULL:
        return 0
    if nghttp2_session_callbacks_new(&_hc_h2_callbacks) != 0:
        _hc_h2_callbacks = NULL
        return -1
    nghttp2_session_callbacks_set_on_header_callback(_hc_h2_callbacks, _hc_grpc_on_header)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_hc_h2_callbacks, _hc_grpc_on_data)
    nghttp2_session_callbacks_set_on_stream_close_callback(_hc_h2_callbacks, _hc_grpc_on_close)
    nghttp2_session_callbacks_set_on_frame_recv_callback(_hc_h2_callbacks, _hc_grpc_on_frame)
    return 0


cdef int _hc_grpc_request(HcSession* s) noexcept nogil:
    """Open the check's stream (the session too, on a new connection). -1: failed."""
    cdef nghttp2_data_provider body
    if s.h2 == NULL:
        if _hc_grpc_callbacks() < 0 or nghttp2_session_client_new2(&s.h2, _hc_h2_callbacks, s, NULL) != 0:
            s.h2 = NULL
            return -1
        if nghttp2_submit_settings(s.h2, NGHTTP2_FLAG_NONE, NULL, 0) != 0:
            return -1
    s.status = 0
    s.grpc_status = -1
    s.stream_done = 0
    s.stream_reset = 0
    s.body_sent = 0
    s.rx_len = 0
    body.source.ptr = NULL
    body.read_callback = _hc_grpc_body
    s.stream_id = nghttp2_submit_request(s.h2, NULL, s.ck.cfg.nv, s.ck.cfg.nnv, &body, NULL)
    if s.stream_id < 0:
        return -1
    return _hc_grpc_flush(s)


cdef bint _hc_grpc_serving(HcSession* s) noexcept nogil:
    """The response message (one gRPC frame) is a HealthCheckResponse whose status (field
    1, a varint) is SERVING (1)."""
    cdef const uint8_t* m = <const uint8_t*>s.rx
    cdef size_t n, i = 5, end
    cdef uint64_t key, v
    cdef int shift
    cdef bint serving = False
    if s.rx_len < 5 or m[0] != 0:
        return False                    # (a compressed message: Envoy fails it too)
    n = (<size_t>m[1] << 24) | (<size_t>m[2] << 16) | (<size_t>m[3] << 8) | m[4]
    if s.rx_len != 5 + n:
        return False
    end = 5 + n
    while i < end:
        key = 0
        shift = 0
        while i < end and shift < 64:
            key |= <uint64_t>(m[i] & 0x7f) << shift
            shift += 7
            i += 1
            if not (m[i - 1] & 0x80):
                break
        if key & 7 == 0:                # varint
            v = 0
            shift = 0
            while i < end and shift < 64:
                v |= <uint64_t>(m[i] & 0x7f) << shift
                shift += 7
                i += 1
                if not (m[i - 1] & 0x80):
                    break
            if key >> 3 == 1:
                serving = v == 1
        elif key & 7 == 2:              # length-delimited: skipped
            v = 0
            shift = 0
            while i < end and shift < 64:
                v |= <uint64_t>(m[i] & 0x7f) << shift
                shift += 7
                i += 1
                if not (m[i - 1] & 0x80):
                    break
            if v > end - i:
                return False
            i += <size_t>v
        elif key & 7 == 5:
            i += 4
        elif key & 7 == 1:
            i += 8
        else:
            return False
    return serving and i == end


cdef void _hc_grpc_done(HcSession* s) noexcept nogil:
    """The check's stream closed: judge it (Envoy's onRpcComplete / onResetStream)."""
    cdef bint ok
    cdef bint reset = s.stream_reset
    s.stream_done = 0
    if reset:
        _hc_network_failure(s)
        return
    ok = s.status == 200 and s.grpc_status == 0 and _hc_grpc_serving(s)
    s.state = HSS_IDLE
    s.rx_len = 0
    if not s.ck.cfg.reuse_connection or s.goaway:
        _hc_close(s)
    if ok:
        _hc_success(s, False)
    else:
        _hc_failure(s, HCF_ACTIVE, False, 0)


cdef int _hc_grpc_feed(HcSession* s, const char* data, size_t n) noexcept nogil:
    """Bytes from the host. -1: the connection failed (judged here)."""
    if nghttp2_session_mem_recv(s.h2, <const uint8_t*>data, n) < 0 or _hc_grpc_flush(s) < 0:
        _hc_network_failure(s)
        return -1
    if s.stream_done and s.state == HSS_CHECKING:
        _hc_grpc_done(s)
        return 1
    if s.goaway and s.state == HSS_CHECKING:
        _hc_network_failure(s)
        return -1
    return 0


# ---- one check ----

cdef int _hc_send(HcSession* s) noexcept nogil:
    """Write what is left of the request. -1: the connection failed."""
    cdef HcConfig* cfg = &s.ck.cfg
    cdef ssize_t k
    if cfg.kind == HCK_GRPC:
        return _hc_grpc_flush(s) if s.h2 != NULL else 0
    while s.sent < cfg.request_len:
        k = send(s.ep.fd, cfg.request + s.sent, cfg.request_len - s.sent, MSG_NOSIGNAL)
        if k < 0:
            if errno == EAGAIN:
                return 0
            if errno == EINTR:
                continue
            return -1
        s.sent += <size_t>k
    return 0


cdef void _hc_connected(HcSession* s) noexcept nogil:
    s.state = HSS_CHECKING
    if s.ck.cfg.kind == HCK_TCP and s.ck.cfg.nseg == 0:
        # A connect test: it passed (Envoy writes no send payload then, and closes).
        _hc_close(s)
        _hc_success(s, False)
        return
    if s.ck.cfg.kind == HCK_GRPC:
        if _hc_grpc_request(s) < 0:
            _hc_network_failure(s)
        return
    if _hc_send(s) < 0:
        _hc_network_failure(s)


cdef void _hc_start(Worker* w, void* arg) noexcept nogil:
    """The interval timer: run one check."""
    cdef HcSession* s = <HcSession*>arg
    cdef HcChecker* ck = s.ck
    cdef epoll_event ev
    cdef int fd
    _hc_stat(ck, HC_ATTEMPT, 1)
    timer_arm(w, &s.timeout_timer, ck.cfg.timeout_ms)
    if s.ep.fd >= 0:                    # a kept connection: the next request on it
        s.state = HSS_CHECKING
        s.sent = 0
        s.rx_len = 0
        s.expect_close = 0
        if (_hc_grpc_request(s) if ck.cfg.kind == HCK_GRPC else _hc_send(s)) < 0:
            _hc_network_failure(s)
        return
    fd = socket(s.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        _hc_failure(s, HCF_NETWORK, False, 0)
        return
    _set_nodelay(fd)
    s.ep.fd = fd
    s.state = HSS_CONNECTING
    s.sent = 0
    s.rx_len = 0
    s.expect_close = 0
    h1rr_reset(&s.resp)
    if connect(fd, <sockaddr*>&s.addr, s.addrlen) < 0 and errno != EINPROGRESS:
        _hc_network_failure(s)
        return
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.ptr = &s.ep
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        _hc_network_failure(s)


cdef void _hc_timeout(Worker* w, void* arg) noexcept nogil:
    cdef HcSession* s = <HcSession*>arg
    _hc_close(s)
    _hc_failure(s, HCF_NETWORK_TIMEOUT, False, 0)


cdef void _hc_on_event(Worker* w, Endp* ep, uint32_t events) noexcept nogil:
    cdef HcSession* s = <HcSession*>ep.owner
    cdef HcChecker* ck = s.ck
    cdef char buf[16384]
    cdef ssize_t k
    cdef int err = 0, r
    cdef socklen_t elen = sizeof(int)
    if s.ep.fd < 0:
        return
    if s.state == HSS_CONNECTING:
        if events & (EPOLLERR | EPOLLHUP):
            _hc_network_failure(s)
            return
        if not (events & EPOLLOUT):
            return
        getsockopt(s.ep.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
        if err != 0:
            _hc_network_failure(s)
            return
        _hc_connected(s)
        if s.ep.fd < 0 or s.state != HSS_CHECKING:
            return
    elif s.state == HSS_CHECKING and (events & EPOLLOUT) and (s.sent < ck.cfg.request_len or s.tx_len):
        if _hc_send(s) < 0:
            _hc_network_failure(s)
            return
    if not (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)):
        return
    while s.ep.fd >= 0:
        k = read(s.ep.fd, buf, sizeof(buf))
        if k < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return
            k = 0                       # a reset: as a close
            if ck.cfg.kind != HCK_TCP and s.state == HSS_CHECKING:
                _hc_network_failure(s)
                return
        if k == 0:
            # The peer closed. Between checks: the kept connection goes (HTTP); a TCP
            # check counts an unexpected close as a failure, as Envoy's does.
            if s.state == HSS_CHECKING and ck.cfg.kind == HCK_GRPC:
                _hc_network_failure(s)
            elif s.state == HSS_CHECKING and ck.cfg.kind == HCK_HTTP:
                if h1rr_feed_eof(&s.resp):
                    _hc_http_done(s)
                    return
                _hc_network_failure(s)
            elif ck.cfg.kind == HCK_TCP and not s.expect_close:
                _hc_network_failure(s)
            else:
                _hc_close(s)
            return
        if ck.cfg.kind == HCK_GRPC and s.h2 != NULL:
            # (between checks too: settings, pings and window updates are answered)
            if _hc_grpc_feed(s, buf, <size_t>k) < 0:
                return
            continue
        if s.state != HSS_CHECKING:
            continue                    # bytes nobody asked for: dropped
        if ck.cfg.kind == HCK_HTTP:
            r = _hc_http_feed(s, buf, <size_t>k)
            if r < 0:
                _hc_network_failure(s)
                return
        else:
            if _hc_rx_append(s, buf, <size_t>k, HC_RX_MAX) < 0:
                _hc_network_failure(s)
                return
            if _hc_payload_match(&ck.cfg, s.rx, s.rx_len):
                s.rx_len = 0
                if not ck.cfg.reuse_connection:
                    s.expect_close = 1
                    _hc_close(s)
                else:
                    s.state = HSS_IDLE
                _hc_success(s, False)


# ---- sessions ----

cdef HcSession* _hc_session_new(HcChecker* ck, StatBlock* b, sockaddr_storage* addr,
                                socklen_t addrlen) noexcept nogil:
    """A session for the host of block b (whose reference moves in); NULL: no memory."""
    cdef HcSession* s = <HcSession*>calloc(1, sizeof(HcSession))
    cdef const void* ip
    if s == NULL:
        return NULL
    s.ck = ck
    s.hstats = b
    memcpy(&s.addr, addr, sizeof(sockaddr_storage))
    s.addrlen = addrlen
    if addr.ss_family == AF_INET6:
        ip = &(<sockaddr_in6*>addr).sin6_addr
        s.port = ntohs((<sockaddr_in6*>addr).sin6_port)
    else:
        ip = &(<sockaddr_in*>addr).sin_addr
        s.port = ntohs((<sockaddr_in*>addr).sin_port)
    inet_ntop(addr.ss_family, ip, s.addr_text, sizeof(s.addr_text))
    s.ep.fd = -1
    s.ep.owner = s
    s.ep.on_event = _hc_on_event
    timer_init(&s.interval_timer, _hc_start, s)
    timer_init(&s.timeout_timer, _hc_timeout, s)
    h1rr_init(&s.resp, ck.cfg.head_method)
    s.first_check = 1
    return s


cdef void _hc_reap(Worker* w, void* arg) noexcept nogil:
    """End of a loop turn: free the sessions that went during it."""
    cdef HcLoopState* ls = <HcLoopState*>arg
    cdef HcSession* s
    while ls.dead != NULL:
        s = ls.dead
        ls.dead = s.next
        free(s)


cdef void _hc_session_free(HcSession* s) noexcept nogil:
    """The host left (or the checker stops): Envoy's onDeferredDeleteBase. Everything but
    the session's own memory goes now; that at the end of the loop turn (_hc_reap)."""
    cdef HcChecker* ck = s.ck
    _hc_close(s)
    timer_cancel(ck.loop, &s.interval_timer)
    timer_cancel(ck.loop, &s.timeout_timer)
    if not _hc_flag(s, HF_FAILED_ACTIVE_HC):
        _hc_stat(ck, HC_HEALTHY, -1)
    if _hc_flag(s, HF_DEGRADED_ACTIVE_HC):
        _hc_stat(ck, HC_DEGRADED, -1)
    _hc_first_done(s)
    h1rr_free(&s.resp)
    free(s.rx)
    free(s.tx)
    s.rx = NULL
    s.tx = NULL
    statblock_decref(s.hstats)
    s.hstats = NULL
    s.ep.on_event = endp_ignore
    s.next = ck.ls.dead
    ck.ls.dead = s


cdef void _hc_session_start(HcSession* s) noexcept nogil:
    cdef HcChecker* ck = s.ck
    if not _hc_flag(s, HF_FAILED_ACTIVE_HC):
        _hc_stat(ck, HC_HEALTHY, 1)
    if _hc_flag(s, HF_DEGRADED_ACTIVE_HC):
        _hc_stat(ck, HC_DEGRADED, 1)
    timer_arm(ck.loop, &s.interval_timer,
              0 if ck.cfg.initial_jitter_ms == 0 else _hc_jitter(ck, 0, ck.cfg.initial_jitter_ms))


cdef void _hc_msg_hosts(Worker* w, void* arg) noexcept nogil:
    """The cluster's hosts now: sessions of hosts that left go, hosts that came get one
    (a host that stays keeps its session, its counts and its connection)."""
    cdef HcHostsMsg* m = <HcHostsMsg*>arg
    cdef HcChecker* ck = m.ck
    cdef HcSession** link = &ck.sessions
    cdef HcSession* s
    cdef HcSession* fresh = NULL
    cdef int i
    cdef bint found
    while link[0] != NULL:
        s = link[0]
        found = False
        for i in range(m.n):
            if m.blocks[i] == s.hstats:
                found = True
                break
        if found:
            link = &s.next
        else:
            link[0] = s.next
            _hc_session_free(s)
    for i in range(m.n):
        if m.blocks[i] == NULL:
            continue
        found = False
        s = ck.sessions
        while s != NULL:
            if s.hstats == m.blocks[i]:
                found = True
                break
            s = s.next
        if found:
            statblock_decref(m.blocks[i])
            continue
        s = _hc_session_new(ck, m.blocks[i], &m.addrs[i], m.addrlens[i])
        if s == NULL:
            statblock_decref(m.blocks[i])   # not checked: it keeps the flags it has
            continue
        fp_atomic_add_int(&ck.pending_first, 1)
        s.next = fresh
        fresh = s
    while fresh != NULL:
        s = fresh
        fresh = s.next
        s.next = ck.sessions
        ck.sessions = s
        _hc_session_start(s)
    fp_store_int(&ck.hosts_known, 1)
    free(m.blocks)
    free(m.addrs)
    free(m.addrlens)
    free(m)


cdef void _hc_config_free(HcConfig* cfg) noexcept nogil:
    free(cfg.request)
    free(cfg.receive)
    free(cfg.seg_len)
    free(cfg.expected)
    free(cfg.retriable)
    free(cfg.nv)
    free(cfg.nv_buf)


cdef void _hc_msg_stop(Worker* w, void* arg) noexcept nogil:
    """The checker goes (its cluster lost its health checks, or went, or the proxy stops):
    every session, connection and reference with it."""
    cdef HcChecker* ck = <HcChecker*>arg
    cdef HcSession* s
    while ck.sessions != NULL:
        s = ck.sessions
        ck.sessions = s.next
        _hc_session_free(s)
    if ck.log_fd >= 0:
        close(ck.log_fd)
    cluster_decref(ck.cluster)
    statblock_decref(ck.stats)
    _hc_config_free(&ck.cfg)
    free(ck.cluster_name)
    free(ck)


# ---- the Python surface ----

cdef class HealthCheckLoop:
    """The thread all of an engine's health checks run on (a dispatcher Worker loop of its
    own, without the GIL). start() runs it; stop() ends it once its checkers are stopped."""
    cdef Worker* w
    cdef HcLoopState* ls
    cdef object _thread
    cdef bint _running
    cdef bint _stopped

    def __cinit__(self):
        self.w = <Worker*>calloc(1, sizeof(Worker))
        if self.w == NULL:
            raise MemoryError()
        if worker_init(self.w, 0) < 0:
            free(self.w)
            self.w = NULL
            raise OSError(errno, "cannot create the health check loop (epoll or eventfd)")
        self.ls = <HcLoopState*>calloc(1, sizeof(HcLoopState))
        if self.ls == NULL or worker_add_end_of_turn(self.w, _hc_reap, self.ls) < 0:
            worker_destroy(self.w)
            free(self.w)
            free(self.ls)
            self.w = NULL
            self.ls = NULL
            raise MemoryError()

    def start(self):
        if self._running or self._stopped:
            return
        fp_store_int(&self.w.running, 1)
        self._thread = _threading.Thread(target=self._run, name="fastproxy-health-check", daemon=True)
        self._running = True
        self._thread.start()

    def _run(self):
        with nogil:
            worker_loop(self.w)

    def stop(self):
        """End the loop (its pending messages run: stopped checkers are freed)."""
        if self._stopped:
            return
        self._stopped = True
        if self._running:
            fp_store_int(&self.w.running, 0)
            worker_wake(self.w)
            self._thread.join()         # (the loop tore itself down when it ended)
            self._running = False
            worker_drain_messages(self.w)
            _hc_reap(self.w, self.ls)
        else:
            worker_teardown(self.w)

    def __dealloc__(self):
        if self.w != NULL and not self._running:
            _hc_reap(self.w, self.ls)
            worker_destroy(self.w)
            free(self.w)
            free(self.ls)

    cdef int post(self, msg_fn_t fn, void* arg):
        if not self._running:
            fn(self.w, arg)             # no thread (yet, or any more): run it here
            return 0
        return worker_post(self.w, fn, arg)


cdef int _hc_ranges(list ranges, HcRange** out) except -1:
    out[0] = <HcRange*>calloc(max(1, len(ranges)), sizeof(HcRange))
    if out[0] == NULL:
        raise MemoryError()
    for i, (a, b) in enumerate(ranges):
        out[0][i].start = a
        out[0][i].end = b
    return len(ranges)


cdef int _hc_grpc_headers(HcConfig* cfg, list headers) except -1:
    """cfg.nv: the gRPC request's header fields [(name, value) bytes], in one buffer."""
    cdef size_t total = sum(len(k) + len(v) for k, v in headers), off = 0
    cdef bytes k, v
    cfg.nv = <nghttp2_nv*>calloc(max(1, len(headers)), sizeof(nghttp2_nv))
    cfg.nv_buf = <char*>malloc(max(1, total))
    if cfg.nv == NULL or cfg.nv_buf == NULL:
        raise MemoryError()
    for i, (k, v) in enumerate(headers):
        memcpy(cfg.nv_buf + off, <char*>k, len(k))
        cfg.nv[i].name = <uint8_t*>(cfg.nv_buf + off)
        cfg.nv[i].namelen = len(k)
        off += len(k)
        memcpy(cfg.nv_buf + off, <char*>v, len(v))
        cfg.nv[i].value = <uint8_t*>(cfg.nv_buf + off)
        cfg.nv[i].valuelen = len(v)
        off += len(v)
        cfg.nv[i].flags = NGHTTP2_NV_FLAG_NONE
    cfg.nnv = len(headers)
    return 0


cdef char* _hc_bytes(bytes data) except? NULL:
    cdef char* p
    if not data:
        return NULL
    p = <char*>malloc(len(data))
    if p == NULL:
        raise MemoryError()
    memcpy(p, <char*>data, len(data))
    return p


cdef class HealthCheckerHandle:
    """One HealthCheck of a cluster, checking its hosts on a HealthCheckLoop. spec: the
    compiled check (fastproxy.upstream.health_check.HealthCheck.to_spec()). The hosts come
    from the cluster handle: set_hosts() after each ClusterHandle.set_hosts."""
    cdef HcChecker* ck
    cdef HealthCheckLoop loop
    cdef readonly StatBlockHandle stats

    def __init__(self, HealthCheckLoop loop, ClusterHandle cluster, StatBlockHandle stats,
                 dict spec, str cluster_name, int log_fd=-1):
        if stats.names != HEALTH_CHECK_STATS:
            raise ValueError("stats: a block of kind 'health_check' is required")
        cdef HcChecker* ck = <HcChecker*>calloc(1, sizeof(HcChecker))
        if ck == NULL:
            raise MemoryError()
        ck.log_fd = -1
        try:
            kind = spec["kind"]
            if kind not in ("http", "tcp", "grpc"):
                raise ValueError(f"kind must be http, tcp or grpc, got {kind!r}")
            ck.cfg.kind = HCK_HTTP if kind == "http" else (HCK_TCP if kind == "tcp" else HCK_GRPC)
            ck.type_name = "HTTP" if kind == "http" else ("TCP" if kind == "tcp" else "GRPC")
            if kind == "grpc":
                _hc_grpc_headers(&ck.cfg, list(spec["headers"]))
            ck.cfg.reuse_connection = spec["reuse_connection"]
            ck.cfg.always_log_failures = spec["always_log_health_check_failures"]
            ck.cfg.head_method = spec.get("method") == "HEAD"
            for name in ("timeout", "interval", "interval_jitter", "initial_jitter", "no_traffic_interval",
                         "no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
                         "healthy_edge_interval"):
                if not 0 <= spec[name] < 1e9:
                    raise ValueError(f"{name} out of range: {spec[name]!r}")
            ck.cfg.timeout_ms = max(1, <uint64_t>(spec["timeout"] * 1000))
            ck.cfg.interval_ms = max(1, <uint64_t>(spec["interval"] * 1000))
            ck.cfg.interval_jitter_ms = <uint64_t>(spec["interval_jitter"] * 1000)
            ck.cfg.interval_jitter_percent = spec["interval_jitter_percent"]
            ck.cfg.initial_jitter_ms = <uint64_t>(spec["initial_jitter"] * 1000)
            ck.cfg.no_traffic_ms = max(1, <uint64_t>(spec["no_traffic_interval"] * 1000))
            ck.cfg.no_traffic_healthy_ms = max(1, <uint64_t>(spec["no_traffic_healthy_interval"] * 1000))
            ck.cfg.unhealthy_ms = max(1, <uint64_t>(spec["unhealthy_interval"] * 1000))
            ck.cfg.unhealthy_edge_ms = max(1, <uint64_t>(spec["unhealthy_edge_interval"] * 1000))
            ck.cfg.healthy_edge_ms = max(1, <uint64_t>(spec["healthy_edge_interval"] * 1000))
            ck.cfg.unhealthy_threshold = spec["unhealthy_threshold"]
            ck.cfg.healthy_threshold = spec["healthy_threshold"]
            request = spec.get("request") or b""
            ck.cfg.request = _hc_bytes(request)
            ck.cfg.request_len = len(request)
            segments = list(spec.get("receive") or ())
            joined = b"".join(segments)
            ck.cfg.receive = _hc_bytes(joined)
            ck.cfg.seg_len = <size_t*>calloc(max(1, len(segments)), sizeof(size_t))
            if ck.cfg.seg_len == NULL:
                raise MemoryError()
            for i, seg in enumerate(segments):
                ck.cfg.seg_len[i] = len(seg)
            ck.cfg.nseg = len(segments)
            ck.cfg.nexpected = _hc_ranges(list(spec.get("expected_statuses") or [(200, 201)]), &ck.cfg.expected)
            ck.cfg.nretriable = _hc_ranges(list(spec.get("retriable_statuses") or []), &ck.cfg.retriable)
            name = cluster_name.encode()
            if any(c in name for c in b'"\\') or any(c < 0x20 for c in name):
                raise ValueError(f"cluster name {cluster_name!r} cannot go into the event log as it is")
            ck.cluster_name = _hc_bytes(name + b"\0")
        except BaseException:
            _hc_config_free(&ck.cfg)
            free(ck.cluster_name)
            free(ck)
            raise
        ck.rng = <uint64_t>clock_ms() * <uint64_t>6364136223846793005ULL + 1
        ck.loop = loop.w
        ck.ls = loop.ls
        ck.cluster = cluster.c
        fp_atomic_add_int(&cluster.c.refcnt, 1)
        ck.stats = stats.b
        fp_atomic_add_int(&stats.b.refcnt, 1)
        ck.log_fd = log_fd              # ours from here on (closed with the checker)
        cluster.new_host_health_flags = HF_FAILED_ACTIVE_HC
        self.ck = ck
        self.loop = loop
        self.stats = stats

    def mark_unchecked(self, ClusterHandle cluster):
        """Every host of the cluster's current set starts failed, as Envoy's hosts of a
        cluster made with active health checks: call when the checker is made, before the
        workers may use the cluster (then hc_health_changed)."""
        cdef HostSet* hs
        cdef int i
        cdef HostShared* h
        if cluster.current is None:
            return
        hs = cluster.current.hs
        for i in range(hs.nhosts):
            h = host_shared(hs.hosts[i].stats)
            if h != NULL:
                fp_atomic_or_u32(&h.health_flags, HF_FAILED_ACTIVE_HC)

    def set_hosts(self, ClusterHandle cluster):
        """Check the cluster's current hosts from now on (a loop message)."""
        cdef HcHostsMsg* m
        cdef HostSet* hs
        cdef int i, n
        if self.ck == NULL:
            raise RuntimeError("health checker stopped")
        if cluster.c != self.ck.cluster:
            raise ValueError("cluster: not the cluster this checker was made for")
        n = 0 if cluster.current is None else cluster.current.hs.nhosts
        m = <HcHostsMsg*>calloc(1, sizeof(HcHostsMsg))
        if m == NULL:
            raise MemoryError()
        m.ck = self.ck
        m.n = n
        m.blocks = <StatBlock**>calloc(max(1, n), sizeof(StatBlock*))
        m.addrs = <sockaddr_storage*>calloc(max(1, n), sizeof(sockaddr_storage))
        m.addrlens = <socklen_t*>calloc(max(1, n), sizeof(socklen_t))
        if m.blocks == NULL or m.addrs == NULL or m.addrlens == NULL:
            free(m.blocks)
            free(m.addrs)
            free(m.addrlens)
            free(m)
            raise MemoryError()
        if n:
            hs = cluster.current.hs
            for i in range(n):
                if hs.hosts[i].stats == NULL or hs.hosts[i].stats.ext == NULL:
                    continue
                m.blocks[i] = hs.hosts[i].stats
                fp_atomic_add_int(&hs.hosts[i].stats.refcnt, 1)
                memcpy(&m.addrs[i], &hs.hosts[i].addr, sizeof(sockaddr_storage))
                m.addrlens[i] = hs.hosts[i].addrlen
        if self.loop.post(_hc_msg_hosts, m) < 0:
            for i in range(n):
                statblock_decref(m.blocks[i])
            free(m.blocks)
            free(m.addrs)
            free(m.addrlens)
            free(m)
            raise MemoryError()

    @property
    def first_round_done(self):
        """Every host known to the checker has had its first check (Envoy's cluster
        initialization waits for this)."""
        if self.ck == NULL:
            return True
        return fp_load_int(&self.ck.hosts_known) and fp_load_int(&self.ck.pending_first) == 0

    def stop(self):
        """Stop checking (the hosts keep the flags they have; the caller clears them if the
        cluster stays without health checks: clear_flags)."""
        cdef HcChecker* ck = self.ck
        if ck == NULL:
            return
        self.ck = NULL
        if self.loop.post(_hc_msg_stop, ck) < 0:
            raise MemoryError()         # (the checker leaks rather than race its loop)

    def __dealloc__(self):
        if self.ck != NULL and self.loop is not None:
            self.loop.post(_hc_msg_stop, self.ck)
            self.ck = NULL


def hc_clear_flags(ClusterHandle cluster):
    """The cluster has no active health checks any more: its hosts lose the bits checks set
    (what they would have as hosts of a cluster without checks) and the host set is rebuilt."""
    cdef HostSet* hs
    cdef int i
    cdef HostShared* h
    cluster.new_host_health_flags = 0
    if cluster.current is None:
        return
    hs = cluster.current.hs
    for i in range(hs.nhosts):
        h = host_shared(hs.hosts[i].stats)
        if h != NULL:
            fp_atomic_and_u32(&h.health_flags, ~(<uint32_t>(HF_FAILED_ACTIVE_HC | HF_DEGRADED_ACTIVE_HC
                                                          | HF_PENDING_ACTIVE_HC | HF_ACTIVE_HC_TIMEOUT
                                                          | HF_EXCLUDED_VIA_IMMEDIATE_HC_FAIL)))
    cluster_health_changed(cluster.c)


def hc_health_changed(ClusterHandle cluster):
    """Rebuild the cluster's host set from its hosts' flags (after mark_new_hosts)."""
    cluster_health_changed(cluster.c)


stat_kind_add("health_check", HEALTH_CHECK_STATS, HEALTH_CHECK_GAUGES)
