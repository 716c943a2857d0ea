# Retries and hedging (Envoy's RetryPolicy, HedgePolicy and the router's retry state): the
# route's policy (built from RouteAction.retry_policy / VirtualHost.retry_policy), whether an
# upstream attempt's outcome is retried, the back-off, the per-try timeouts, retry budgets
# and the circuit breakers' max_retries. Owner: issue 16's RETRY work.
#
# The design
# ----------
# A route without a retry policy (and a request without x-envoy-retry-on) has no RetryState:
# s.retry is NULL and the router runs as it always did (body spliced, nothing kept). With
# one, retry_stream_start gives the stream a RetryState (malloc'd) holding what the attempt
# needs again: the head's framing, the request body as slice references (no copy; a slice
# is shared, never written, while referenced) up to the buffer limit, the hosts tried. The
# router reports each attempt's outcome here: retry_on_headers (a final response head,
# before anything goes downstream), retry_on_reset (the pool failed the attempt before its
# response: connect failure, reset, refused stream) and the per-try timer. A retried attempt
# is dropped (its connection closed, or its HTTP/2 stream reset) and the back-off timer
# starts the next one (_retry_do: a new pick, avoiding the previous hosts if configured,
# the head and the kept body sent again). As Envoy: an outstanding retry counts in the
# cluster's retries (ClusterCfg.n_retries: max_retries or the retry budget) from its
# decision to the next decision on the same request (or the request's end).

cdef enum:                          # RetryPolicy.retry_on (Envoy's RetryPolicy::RETRY_ON_*)
    RO_5XX = 0x1
    RO_GATEWAY_ERROR = 0x2
    RO_CONNECT_FAILURE = 0x4
    RO_RETRIABLE_4XX = 0x8
    RO_REFUSED_STREAM = 0x10
    RO_RETRIABLE_STATUS_CODES = 0x20
    RO_RETRIABLE_HEADERS = 0x40
    RO_RESET = 0x80
    RO_RESET_BEFORE_REQUEST = 0x100
    RO_ENVOY_RATE_LIMITED = 0x200
    RO_GRPC_CANCELLED = 0x400
    RO_GRPC_DEADLINE_EXCEEDED = 0x800
    RO_GRPC_RESOURCE_EXHAUSTED = 0x1000
    RO_GRPC_UNAVAILABLE = 0x2000
    RO_GRPC_INTERNAL = 0x4000

cdef enum:
    RO_GRPC = (RO_GRPC_CANCELLED | RO_GRPC_DEADLINE_EXCEEDED | RO_GRPC_RESOURCE_EXHAUSTED
               | RO_GRPC_UNAVAILABLE | RO_GRPC_INTERNAL)

_RETRY_ON_BITS = {"5xx": RO_5XX, "gateway-error": RO_GATEWAY_ERROR, "connect-failure": RO_CONNECT_FAILURE,
                  "retriable-4xx": RO_RETRIABLE_4XX, "refused-stream": RO_REFUSED_STREAM,
                  "retriable-status-codes": RO_RETRIABLE_STATUS_CODES,
                  "retriable-headers": RO_RETRIABLE_HEADERS, "reset": RO_RESET,
                  "reset-before-request": RO_RESET_BEFORE_REQUEST,
                  "envoy-ratelimited": RO_ENVOY_RATE_LIMITED, "cancelled": RO_GRPC_CANCELLED,
                  "deadline-exceeded": RO_GRPC_DEADLINE_EXCEEDED,
                  "resource-exhausted": RO_GRPC_RESOURCE_EXHAUSTED,
                  "unavailable": RO_GRPC_UNAVAILABLE, "internal": RO_GRPC_INTERNAL}

DEF RETRY_HDR_CODES = 8             # x-envoy-retriable-status-codes kept per request

cdef struct RetryResetHeader:       # rate_limited_retry_back_off.reset_headers[i]
    RouteStr name                       # lowercase
    uint8_t unix_timestamp              # format UNIX_TIMESTAMP (else SECONDS)

cdef struct RetryPolicy:
    uint32_t retry_on                   # RO_* (0: none: only the fields below apply)
    uint32_t num_retries
    uint64_t per_try_timeout_ms         # 0: none
    uint64_t per_try_idle_timeout_ms    # 0: none
    uint64_t base_ms                    # retry_back_off (25 ms and 10 x base by default)
    uint64_t max_ms
    uint8_t previous_hosts              # retry_host_predicate previous_hosts
    int host_selection_max_attempts
    int ncodes                          # retriable_status_codes
    const uint32_t* codes
    int nheaders                        # retriable_headers (on the response)
    const RouteHeaderMatcher* headers
    int nrequest_headers                # retriable_request_headers
    const RouteHeaderMatcher* request_headers
    int nreset                          # rate_limited_retry_back_off (0: none)
    const RetryResetHeader* reset
    uint64_t reset_max_ms               # ... its max_interval (default 300 s)
    uint8_t hedge_on_per_try_timeout
    uint8_t attempt_count_request       # the virtual host's include_request_attempt_count
    uint8_t attempt_count_response      # ... include_attempt_count_in_response
    uint32_t buffer_limit               # per_request_buffer_limit_bytes; 0: the listener's

cdef struct RetryState:             # one per stream that may retry (HStream.retry)
    const RetryPolicy* p                # the route's (NULL: a header alone asked for retries)
    uint32_t retry_on
    uint32_t remaining                  # retries left
    uint32_t attempts                   # attempts started (x-envoy-attempt-count)
    uint32_t backoff_n                  # the back-off's exponent
    uint64_t base_ms
    uint64_t max_ms
    uint64_t per_try_ms                 # 0: no per-try timeout
    uint64_t per_try_idle_ms            # 0: no per-try idle timeout
    uint64_t ratelimited_ms             # the next back-off from a reset header (0: exponential)
    uint64_t idle_at                    # the attempt's last upstream activity (w.now)
    int ncodes                          # x-envoy-retriable-status-codes
    uint32_t codes[RETRY_HDR_CODES]
    uint8_t armed                       # an outstanding retry: counted in cluster.n_retries
    uint8_t keep_body                   # the request body is kept for the next attempt
    uint8_t body_end                    # ... and its end
    uint8_t head_sent                   # head_framing/head_length hold the first head's
    int head_framing
    uint64_t head_length
    Chain body                          # the request body sent so far (slice references)
    ClusterCfg* cluster                 # n_retries is charged to it (one reference while armed)
    Timer backoff
    Timer per_try
    Timer per_try_idle                  # re-armed lazily: activity only moves idle_at
    StatBlock** tried                   # the hosts tried (one reference each): previous_hosts
    int ntried
    int tried_cap
    # Hedging (hedge_on_per_try_timeout): the attempt that hit its per-try timeout stays in
    # flight here while the next one (s.upstream) starts; the pool's events for it swap it
    # into s.upstream first (retry_upstream_focus), so the router's code always works on
    # s.upstream. conn NULL: no second attempt (every route without hedging).
    UpstreamRequest hedged
    uint8_t hedge                       # hedge_on_per_try_timeout (or x-envoy-hedge-on-per-try-timeout)
    uint8_t cur_hedged                  # s.upstream's attempt was hedged (Envoy's retried())
    uint8_t other_hedged                # ... hedged's

cdef enum:                          # _retry_decide's outcomes (Envoy's RetryStatus)
    RS_NO = 0
    RS_YES = 1
    RS_LIMIT = 2                        # no retries left (URX)
    RS_OVERFLOW = 3                     # the circuit breakers refused it (UO)


# ---------------------------------------------------------------- building the policy

cdef uint64_t _retry_ms(value, default):
    return default if value is None else max(1, <uint64_t>(value * 1000 + 0.5))


cdef int route_retry_build(_RouteBuilder b, RouteEntry* e, a, str apath, vhm=None) except -1:
    """e.retry from the route action `a` (its retry_policy replaces the virtual host's, as
    hedge_policy does) and the virtual host `vhm`'s attempt-count and buffer-limit fields;
    NULL when none of them is set (the router's fast path)."""
    cdef RetryPolicy* p
    cdef int i
    rp = a.retry_policy
    hp = a.hedge_policy
    if rp is None and vhm is not None:
        rp = vhm.retry_policy
    if hp is None and vhm is not None:
        hp = vhm.hedge_policy
    vflags = vhm is not None and (vhm.include_request_attempt_count or vhm.include_attempt_count_in_response
                                  or vhm.per_request_buffer_limit_bytes is not None)
    e.retry = NULL
    if rp is None and hp is None and not vflags:
        return 0
    p = <RetryPolicy*>b.alloc(sizeof(RetryPolicy))
    memset(p, 0, sizeof(RetryPolicy))
    p.num_retries = 1
    p.base_ms = 25
    p.max_ms = 250
    p.host_selection_max_attempts = 1
    if rp is not None:
        for c in rp.conditions():
            p.retry_on |= _RETRY_ON_BITS[c]
        p.num_retries = rp.num_retries
        p.per_try_timeout_ms = 0 if not rp.per_try_timeout else _retry_ms(rp.per_try_timeout, 0)
        p.per_try_idle_timeout_ms = 0 if not rp.per_try_idle_timeout else _retry_ms(rp.per_try_idle_timeout, 0)
        p.base_ms = _retry_ms(rp.base_interval, 25)
        p.max_ms = _retry_ms(rp.max_interval, p.base_ms * 10)
        p.previous_hosts = rp.previous_hosts
        # LbContext counts picks in all: Envoy's host_selection_retry_max_attempts re-picks
        # plus the first (its chooseHost loops hostSelectionRetryCount() + 1 times).
        p.host_selection_max_attempts = <int>min(rp.host_selection_retry_max_attempts, 1 << 30) + 1
        p.ncodes = len(rp.retriable_status_codes)
        if p.ncodes:
            p.codes = <uint32_t*>b.alloc(sizeof(uint32_t) * p.ncodes)
            for i, code in enumerate(rp.retriable_status_codes):
                (<uint32_t*>p.codes)[i] = code
        p.nheaders = len(rp.retriable_headers)
        if p.nheaders:
            p.headers = <RouteHeaderMatcher*>b.alloc(sizeof(RouteHeaderMatcher) * p.nheaders)
            for i, hm in enumerate(rp.retriable_headers):
                b.header_matcher(<RouteHeaderMatcher*>&p.headers[i], hm, f"{apath}.retry_policy.retriable_headers[{i}]")
        p.nreset = len(rp.reset_headers)
        if p.nreset:
            p.reset = <RetryResetHeader*>b.alloc(sizeof(RetryResetHeader) * p.nreset)
            for i, rh in enumerate(rp.reset_headers):
                b.put(&(<RetryResetHeader*>p.reset)[i].name, rh.name.lower())
                (<RetryResetHeader*>p.reset)[i].unix_timestamp = rh.format == "UNIX_TIMESTAMP"
        p.reset_max_ms = _retry_ms(rp.reset_max_interval, 300000)
        p.nrequest_headers = len(rp.retriable_request_headers)
        if p.nrequest_headers:
            p.request_headers = <RouteHeaderMatcher*>b.alloc(sizeof(RouteHeaderMatcher) * p.nrequest_headers)
            for i, hm in enumerate(rp.retriable_request_headers):
                b.header_matcher(<RouteHeaderMatcher*>&p.request_headers[i], hm,
                                 f"{apath}.retry_policy.retriable_request_headers[{i}]")
    if hp is not None:
        p.hedge_on_per_try_timeout = bool(hp.hedge_on_per_try_timeout)
    if vhm is not None:
        p.attempt_count_request = bool(vhm.include_request_attempt_count)
        p.attempt_count_response = bool(vhm.include_attempt_count_in_response)
        if vhm.per_request_buffer_limit_bytes is not None:
            # (0 keeps nothing: Envoy's limit of 0 abandons retries at the first byte)
            p.buffer_limit = vhm.per_request_buffer_limit_bytes if vhm.per_request_buffer_limit_bytes else 1
    e.retry = p
    return 0


# ---------------------------------------------------------------- the request headers

cdef uint32_t _retry_on_parse(const char* v, size_t n, bint grpc_only) noexcept nogil:
    """The RO_* bits of an x-envoy-retry-on (or x-envoy-retry-grpc-on) value; unknown
    names are ignored, as Envoy does with the header."""
    cdef uint32_t bits = 0
    cdef size_t i = 0, j, a, b
    while i <= n:
        j = i
        while j < n and v[j] != 44:
            j += 1
        a = i
        b = j
        while a < b and (v[a] == 32 or v[a] == 9):
            a += 1
        while b > a and (v[b - 1] == 32 or v[b - 1] == 9):
            b -= 1
        bits |= _retry_on_word(v + a, b - a, grpc_only)
        i = j + 1
    return bits


cdef uint32_t _retry_on_word(const char* w, size_t k, bint grpc_only) noexcept nogil:
    if k == 9 and memcmp(w, "cancelled", 9) == 0:
        return RO_GRPC_CANCELLED
    if k == 17 and memcmp(w, "deadline-exceeded", 17) == 0:
        return RO_GRPC_DEADLINE_EXCEEDED
    if k == 18 and memcmp(w, "resource-exhausted", 18) == 0:
        return RO_GRPC_RESOURCE_EXHAUSTED
    if k == 11 and memcmp(w, "unavailable", 11) == 0:
        return RO_GRPC_UNAVAILABLE
    if k == 8 and memcmp(w, "internal", 8) == 0:
        return RO_GRPC_INTERNAL
    if grpc_only:
        return 0
    if k == 3 and memcmp(w, "5xx", 3) == 0:
        return RO_5XX
    if k == 13 and memcmp(w, "gateway-error", 13) == 0:
        return RO_GATEWAY_ERROR
    if k == 15 and memcmp(w, "connect-failure", 15) == 0:
        return RO_CONNECT_FAILURE
    if k == 13 and memcmp(w, "retriable-4xx", 13) == 0:
        return RO_RETRIABLE_4XX
    if k == 14 and memcmp(w, "refused-stream", 14) == 0:
        return RO_REFUSED_STREAM
    if k == 22 and memcmp(w, "retriable-status-codes", 22) == 0:
        return RO_RETRIABLE_STATUS_CODES
    if k == 17 and memcmp(w, "retriable-headers", 17) == 0:
        return RO_RETRIABLE_HEADERS
    if k == 5 and memcmp(w, "reset", 5) == 0:
        return RO_RESET
    if k == 20 and memcmp(w, "reset-before-request", 20) == 0:
        return RO_RESET_BEFORE_REQUEST
    if k == 17 and memcmp(w, "envoy-ratelimited", 17) == 0:
        return RO_ENVOY_RATE_LIMITED
    return 0


cdef bint _retry_request_matches(HStream* s, const RetryPolicy* p) noexcept nogil:
    """retriable_request_headers: does one of them match the request (none configured:
    yes)? No memory counts as no match (no retries, never a wrong one)."""
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs
    cdef bint ok = False
    cdef int i
    if p == NULL or p.nrequest_headers == 0:
        return True
    hdrs = _route_input(s, &r, stack)
    if hdrs == NULL:
        return False
    for i in range(p.nrequest_headers):
        if _rt_header_matches(&p.request_headers[i], &r):
            ok = True
            break
    _route_input_free(hdrs, stack)
    return ok


cdef int retry_stream_start(HStream* s, uint64_t per_try_ms, bint hedge, bint headers_ok) noexcept nogil:
    """The route is chosen: give s its RetryState if it may retry (the route's policy or,
    on a request whose x-envoy-* headers are honoured, x-envoy-retry-on) or has a per-try
    timeout. -1: no memory."""
    cdef const RetryPolicy* p = s.route.retry
    cdef RetryState* st
    cdef uint32_t retry_on = p.retry_on if p != NULL else 0
    cdef uint32_t remaining = p.num_retries if p != NULL else 1
    cdef uint64_t idle_ms = p.per_try_idle_timeout_ms if p != NULL else 0
    cdef const char* v
    cdef size_t n = 0, i, j
    cdef int ncodes = 0
    cdef uint32_t codes[RETRY_HDR_CODES]
    if s.connect or s.upgrade:
        return 0                        # a tunnel is never retried
    if headers_ok:
        v = _req_field(s, "x-envoy-retry-on", 16, &n)
        if v != NULL:
            retry_on |= _retry_on_parse(v, n, False)
        v = _req_field(s, "x-envoy-retry-grpc-on", 21, &n)
        if v != NULL:
            retry_on |= _retry_on_parse(v, n, True)
    if retry_on and not _retry_request_matches(s, p):
        retry_on = 0
    if headers_ok:
        v = _req_field(s, "x-envoy-max-retries", 19, &n)
        if retry_on and v != NULL and 0 < n <= 9 and _all_digits(v, n):
            remaining = <uint32_t>_parse_u64(v, n)
        v = _req_field(s, "x-envoy-retriable-status-codes", 30, &n)
        if v != NULL:
            i = 0
            while i < n and ncodes < RETRY_HDR_CODES:
                j = i
                while j < n and v[j] != 44:
                    j += 1
                if 0 < j - i <= 9 and _all_digits(v + i, j - i):
                    codes[ncodes] = <uint32_t>_parse_u64(v + i, j - i)
                    ncodes += 1
                i = j + 1
    if retry_on == 0 and per_try_ms == 0 and idle_ms == 0:
        return 0
    st = <RetryState*>calloc(1, sizeof(RetryState))
    if st == NULL:
        return -1
    st.p = p
    st.retry_on = retry_on
    st.remaining = remaining
    st.base_ms = p.base_ms if p != NULL else 25
    st.max_ms = p.max_ms if p != NULL else 250
    st.per_try_ms = per_try_ms
    st.per_try_idle_ms = idle_ms
    st.hedge = hedge                    # (the route's, or the header's: stream_route_timeout)
    st.ncodes = ncodes
    if ncodes:
        memcpy(st.codes, codes, ncodes * sizeof(uint32_t))
    st.keep_body = retry_on != 0
    timer_init(&st.backoff, _retry_backoff_fired, s)
    timer_init(&st.per_try, _retry_per_try_fired, s)
    timer_init(&st.per_try_idle, _retry_per_try_idle_fired, s)
    s.retry = st
    if p != NULL and p.previous_hosts:
        s.lb.host_selection_max_attempts = p.host_selection_max_attempts
    return 0


cdef void retry_stop(HStream* s) noexcept nogil:
    """The stream turns to a local reply: no attempt follows (the back-off and the per-try
    timers go, the outstanding retry leaves the circuit breaker, the other attempt is
    reset), though a filter may hold the reply for a while."""
    cdef RetryState* st = s.retry
    if st == NULL:
        return
    retry_hedge_drop(s)
    st.cur_hedged = 0
    timer_cancel(s.c.w, &st.backoff)
    timer_cancel(s.c.w, &st.per_try)
    timer_cancel(s.c.w, &st.per_try_idle)
    _retry_disarm(st)
    st.retry_on = 0


cdef void retry_free(HStream* s) noexcept nogil:
    """The stream ends: its retry state goes (timers, the outstanding retry's count, the
    kept body, the hosts tried)."""
    cdef RetryState* st = s.retry
    cdef int i
    if st == NULL:
        return
    retry_hedge_drop(s)
    timer_cancel(s.c.w, &st.backoff)
    timer_cancel(s.c.w, &st.per_try)
    timer_cancel(s.c.w, &st.per_try_idle)
    _retry_disarm(st)
    chain_free(&st.body)
    for i in range(st.ntried):
        statblock_decref(st.tried[i])
    free(st.tried)
    s.lb.avoid = NULL
    s.lb.navoid = 0
    free(st)
    s.retry = NULL


# ---------------------------------------------------------------- hedging

cdef inline void retry_upstream_focus(HStream* s, UpConn* u) noexcept nogil:
    """The pool has news of u for s: if u carries the hedged attempt, make it s.upstream
    (the other attempt goes to the hedged slot). One compare for every other stream."""
    if s.upstream.conn != u and u != NULL and s.retry != NULL and s.retry.hedged.conn == u:
        _retry_swap(s)


cdef void _retry_swap(HStream* s) noexcept nogil:
    cdef RetryState* st = s.retry
    cdef UpstreamRequest tmp
    cdef uint8_t f
    memcpy(&tmp, &s.upstream, sizeof(UpstreamRequest))
    memcpy(&s.upstream, &st.hedged, sizeof(UpstreamRequest))
    memcpy(&st.hedged, &tmp, sizeof(UpstreamRequest))
    f = st.cur_hedged
    st.cur_hedged = st.other_hedged
    st.other_hedged = f


cdef inline bint _retry_other_pending(HStream* s) noexcept nogil:
    """Another attempt may still answer: one in flight in the hedged slot, or one waiting
    for its back-off (Envoy: numRequestsAwaitingHeaders() or pending_retries_)."""
    return s.retry.hedged.conn != NULL or timer_armed(&s.retry.backoff)


cdef void retry_hedge_drop(HStream* s) noexcept nogil:
    """The other attempt is no longer wanted (a response won, or the stream ends): reset
    it (Envoy's resetOtherUpstreams)."""
    cdef RetryState* st = s.retry
    if st == NULL or (st.hedged.conn == NULL and st.hedged.hstats == NULL):
        return
    _retry_swap(s)
    if s.upstream.conn != NULL:
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
    host_stats_release(&s.upstream.hstats)
    _retry_swap(s)
    memset(&st.hedged, 0, sizeof(UpstreamRequest))
    st.other_hedged = 0


cdef bint _retry_soft_timeout(HStream* s) noexcept nogil:
    """hedge_on_per_try_timeout (Envoy's onSoftPerTryTimeout): the attempt is not reset; it
    reports the timeout to outlier detection and, while retries are left, moves to the
    hedged slot and the next attempt starts after the back-off (whatever retry_on says).
    False: not hedged here (an HTTP/2 upstream, or two attempts in flight already): the
    caller resets it as a per-try timeout."""
    cdef RetryState* st = s.retry
    cdef int rc
    if s.upstream.conn == NULL or s.upstream.conn.h2_role != H2R_NONE \
            or cluster_params(s.cluster, s.c.w).protocol != UP_HTTP1:
        return False
    outlier_report_local(s.upstream.hstats, s.c.w, OUT_TIMEOUT)
    if st.retry_on == 0:
        return True                     # (Envoy has no retry state then: it just waits)
    if st.hedged.conn != NULL or st.cur_hedged:
        # Two attempts in flight already: fastproxy starts no third (Envoy does while
        # retries are left). With none left it counts what Envoy's shouldRetry counts;
        # the outstanding retry stays (its success is counted if the newer one wins).
        if st.remaining == 0:
            stat_add(s.cluster.stats, s.c.w, C_RQ_RETRY_LIMIT_EXCEEDED, 1)
            s.response_flags |= RF_URX
        return True
    rc = _retry_decide(s, True)
    if rc != RS_YES:
        _retry_outcome_flags(s, rc)
        return True
    memcpy(&st.hedged, &s.upstream, sizeof(UpstreamRequest))
    st.other_hedged = 1
    memset(&s.upstream, 0, sizeof(UpstreamRequest))
    s.upstream.req_done = st.hedged.req_done    # (the request's, not the attempt's: the next one replays it)
    st.cur_hedged = 0
    return True


# ---------------------------------------------------------------- attempts

cdef void retry_attempt_started(HStream* s) noexcept nogil:
    """An attempt got its host (s.upstream.hstats): remember it for previous_hosts."""
    cdef RetryState* st = s.retry
    cdef StatBlock** t
    st.attempts += 1
    if st.p == NULL or not st.p.previous_hosts or s.upstream.hstats == NULL:
        return
    if st.ntried == st.tried_cap:
        t = <StatBlock**>realloc(st.tried, (st.tried_cap * 2 + 4) * sizeof(StatBlock*))
        if t == NULL:
            return                      # (no memory: this host is not avoided)
        st.tried = t
        st.tried_cap = st.tried_cap * 2 + 4
    fp_atomic_add_int(&s.upstream.hstats.refcnt, 1)
    st.tried[st.ntried] = s.upstream.hstats
    st.ntried += 1
    if s.lb.avoid != NULL:
        s.lb.avoid = st.tried           # (the array moved; a later re-pick reads it)


cdef void retry_head_sent(HStream* s, int framing, uint64_t length) noexcept nogil:
    """The first attempt's head went with this framing: the next attempts send the same."""
    if not s.retry.head_sent:
        s.retry.head_sent = 1
        s.retry.head_framing = framing
        s.retry.head_length = length


cdef inline uint32_t _retry_limit(HStream* s) noexcept nogil:
    cdef const RetryPolicy* p = s.retry.p
    if p != NULL and p.buffer_limit:
        return p.buffer_limit
    return <uint32_t>s.c.cfg.buffer_limit


cdef bint retry_keep_body(HStream* s, Chain* src, size_t n, bint end) noexcept nogil:
    """The first n bytes of src are about to go upstream: keep references to them for the
    next attempt while the whole body fits the buffer limit. Over it (or out of memory)
    retries are abandoned for this request (Envoy's retry_or_shadow_abandoned); the
    caller then answers 507 if no attempt is in flight: False."""
    cdef RetryState* st = s.retry
    if not st.keep_body:
        return True
    if st.body.length + n > _retry_limit(s) or chain_ref_bytes(&st.body, src, n) < 0:
        return _retry_abandon(s)
    if end:
        st.body_end = 1
    return True


cdef bint retry_give_up(HStream* s) noexcept nogil:
    """Stop keeping the body (trailers, which are not kept): no retry from now on."""
    if not s.retry.keep_body:
        return True
    return _retry_abandon(s)


cdef bint _retry_abandon(HStream* s) noexcept nogil:
    cdef RetryState* st = s.retry
    stat_add(s.cluster.stats, s.c.w, C_RETRY_OR_SHADOW_ABANDONED, 1)
    st.keep_body = 0
    st.retry_on = 0
    chain_clear(&st.body)
    if timer_armed(&st.backoff):
        timer_cancel(s.c.w, &st.backoff)
        _retry_disarm(st)
        return False                    # waiting to retry: nothing is in flight any more
    return True


cdef void retry_request_complete(HStream* s) noexcept nogil:
    """The whole request is on its way upstream: the per-try timeouts start (Envoy starts
    them with the request's end)."""
    cdef RetryState* st = s.retry
    if s.upstream.conn == NULL:
        return
    if st.per_try_ms:
        timer_arm(s.c.w, &st.per_try, st.per_try_ms)
    if st.per_try_idle_ms:
        st.idle_at = s.c.w.now
        timer_arm(s.c.w, &st.per_try_idle, st.per_try_idle_ms)


cdef inline void retry_upstream_active(HStream* s) noexcept nogil:
    """Bytes of the attempt's response arrived: the per-try idle timeout starts over (a
    store; the timer, when it fires, re-arms itself for what is left)."""
    if s.retry != NULL:
        s.retry.idle_at = s.c.w.now


cdef inline void _retry_disarm(RetryState* st) noexcept nogil:
    if st.armed:
        st.armed = 0
        fp_atomic_add_i64(&st.cluster.n_retries, -1)
        cluster_decref(st.cluster)
        st.cluster = NULL


cdef bint _retries_can_create(ClusterCfg* cl, Worker* w) noexcept nogil:
    """The circuit breakers' retries: the retry budget when the cluster has one (a share of
    its active and pending requests, at least min_retry_concurrency), else max_retries."""
    return fp_atomic_load_i64(&cl.n_retries) < cluster_retry_limit(cl, cluster_params(cl, w).max_retries)


cdef uint64_t _retry_backoff_ms(HStream* s) noexcept nogil:
    """Envoy's fully jittered exponential back-off: uniform in [0, (2^n - 1) x base), the
    bound capped at max_interval; n grows while the bound is under the cap."""
    cdef RetryState* st = s.retry
    cdef uint64_t mult, bound
    cdef uint32_t k = st.backoff_n + 1
    if k > 62:
        k = 62
    mult = (<uint64_t>1 << k) - 1
    if mult > st.max_ms // st.base_ms + 1:
        bound = st.max_ms
    else:
        bound = mult * st.base_ms
        if bound <= st.max_ms:
            st.backoff_n += 1
        else:
            bound = st.max_ms
    if bound == 0:
        return 0
    return worker_random(s.c.w) % bound


cdef int _retry_decide(HStream* s, bint would) noexcept nogil:
    """Envoy's RetryStateImpl::shouldRetry: counts the outcome and, for RS_YES, takes a retry
    from the circuit breakers and starts the back-off."""
    cdef RetryState* st = s.retry
    cdef ClusterCfg* cl = s.cluster
    cdef Worker* w = s.c.w
    cdef uint64_t delay
    if st.armed and not would:
        stat_add(cl.stats, w, C_RQ_RETRY_SUCCESS, 1)    # a retry happened and this one is final
    _retry_disarm(st)
    if not would:
        return RS_NO
    if st.remaining == 0:
        stat_add(cl.stats, w, C_RQ_RETRY_LIMIT_EXCEEDED, 1)
        return RS_LIMIT
    st.remaining -= 1
    if not _retries_can_create(cl, w):
        stat_add(cl.stats, w, C_RQ_RETRY_OVERFLOW, 1)
        return RS_OVERFLOW
    st.armed = 1
    st.cluster = cl
    fp_atomic_add_int(&cl.refcnt, 1)
    fp_atomic_add_i64(&cl.n_retries, 1)
    stat_add(cl.stats, w, C_RQ_RETRY, 1)
    if st.ratelimited_ms:
        # The upstream said when (Envoy's JitteredLowerBoundBackOffStrategy): uniform in
        # [t, 1.5 t); the exponential back-off's state does not move.
        delay = st.ratelimited_ms + worker_random(w) % (st.ratelimited_ms >> 1)
        stat_add(cl.stats, w, C_RQ_RETRY_BACKOFF_RATELIMITED, 1)
    else:
        delay = _retry_backoff_ms(s)
        stat_add(cl.stats, w, C_RQ_RETRY_BACKOFF_EXPONENTIAL, 1)
    if timer_arm(w, &st.backoff, delay) < 0:
        _retry_disarm(st)
        return RS_NO
    return RS_YES


cdef inline void _retry_outcome_flags(HStream* s, int rc) noexcept nogil:
    if rc == RS_LIMIT:
        s.response_flags |= RF_URX
    elif rc == RS_OVERFLOW:
        s.response_flags |= RF_UO


cdef int _grpc_status_of(const HttpHead* head) noexcept nogil:
    cdef size_t n = 0
    cdef const char* v = _head_field(head, "grpc-status", &n)
    if v == NULL or n == 0 or n > 9 or not _all_digits(v, n):
        return -1
    return <int>_parse_u64(v, n)


cdef bint _retry_would_headers(HStream* s, const HttpHead* head) noexcept nogil:
    """Envoy's RetryStateImpl::wouldRetryFromHeaders."""
    cdef RetryState* st = s.retry
    cdef uint32_t ro = st.retry_on
    cdef int status = head.status
    cdef size_t n = 0
    cdef const char* v
    cdef int i, g
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs
    cdef bint ok
    v = _head_field(head, "x-envoy-ratelimited", &n)
    if v != NULL and n == 4 and memcmp(v, "true", 4) == 0:
        # An upstream Envoy's rate limit: retried only under envoy-ratelimited (checked
        # against Envoy 1.40: 5xx does not retry it, envoy-ratelimited does not stop 5xx).
        return (ro & RO_ENVOY_RATE_LIMITED) != 0
    if (ro & RO_5XX) and 500 <= status < 600:
        return True
    if (ro & RO_GATEWAY_ERROR) and 502 <= status <= 504:
        return True
    if (ro & RO_RETRIABLE_4XX) and status == 409:
        return True
    if ro & RO_RETRIABLE_STATUS_CODES:
        if st.p != NULL:
            for i in range(st.p.ncodes):
                if <uint32_t>status == st.p.codes[i]:
                    return True
        for i in range(st.ncodes):
            if <uint32_t>status == st.codes[i]:
                return True
    if (ro & RO_RETRIABLE_HEADERS) and st.p != NULL and st.p.nheaders:
        hdrs = <RouteHeader*>stack
        if head.nfields > ROUTE_HEADERS_ON_STACK:
            hdrs = <RouteHeader*>malloc(head.nfields * sizeof(RouteHeader))
            if hdrs == NULL:
                return False
        memset(&r, 0, sizeof(RouteInput))
        r.worker = <unsigned int>s.c.w.index
        r.headers = hdrs
        r.nheaders = <int>head.nfields
        for i in range(<int>head.nfields):
            hdrs[i].name = head.buf + head.fields[i].name_off
            hdrs[i].name_len = head.fields[i].name_len
            hdrs[i].value = head.buf + head.fields[i].value_off
            hdrs[i].value_len = head.fields[i].value_len
        ok = False
        for i in range(st.p.nheaders):
            if _rt_header_matches(&st.p.headers[i], &r):
                ok = True
                break
        if hdrs != stack:
            free(hdrs)
        if ok:
            return True
    if ro & RO_GRPC:
        g = _grpc_status_of(head)
        if ((g == 1 and ro & RO_GRPC_CANCELLED) or (g == 4 and ro & RO_GRPC_DEADLINE_EXCEEDED)
                or (g == 8 and ro & RO_GRPC_RESOURCE_EXHAUSTED) or (g == 14 and ro & RO_GRPC_UNAVAILABLE)
                or (g == 13 and ro & RO_GRPC_INTERNAL)):
            return True
    return False


cdef uint64_t _retry_reset_interval(const RetryPolicy* p, const HttpHead* head) noexcept nogil:
    """rate_limited_retry_back_off: the back-off (ms) the first reset header present with a
    usable value asks for, if within max_interval (Envoy's parseResetInterval: a value over
    it is skipped, not capped); 0: none (or one of at most 1 ms: the exponential back-off)."""
    cdef const char* v
    cdef size_t n = 0
    cdef uint64_t secs, now
    cdef int i
    for i in range(p.nreset):
        v = _head_field(head, p.reset[i].name.p, &n)
        if v == NULL:
            continue
        while n and (v[0] == 32 or v[0] == 9):          # (absl::SimpleAtoi's tolerance)
            v += 1
            n -= 1
        while n and (v[n - 1] == 32 or v[n - 1] == 9):
            n -= 1
        if n and v[0] == 43:                              # '+'
            v += 1
            n -= 1
        if n == 0 or n > 19 or not _all_digits(v, n):
            continue                    # (20 digits and more: beyond any max_interval)
        secs = _parse_u64(v, n)
        if p.reset[i].unix_timestamp:
            now = wall_clock_us() // 1000000
            if secs < now:
                continue
            secs -= now
        if secs > p.reset_max_ms // 1000:
            continue
        return secs * 1000
    return 0


cdef int retry_on_headers(HStream* s, const HttpHead* head) noexcept nogil:
    """A final response head from the attempt, before anything of it goes downstream. 1:
    the attempt is retried (its upstream is dropped; the back-off runs), the caller stops;
    0: the response goes on to the client."""
    cdef RetryState* st = s.retry
    cdef int rc
    cdef bint would
    st.idle_at = s.c.w.now
    if st.cur_hedged or st.other_hedged or st.hedged.conn != NULL:
        return _retry_hedged_headers(s, head)
    timer_cancel(s.c.w, &st.per_try)
    if st.retry_on == 0 and not st.armed:
        return 0
    would = st.retry_on != 0 and _retry_would_headers(s, head)
    if would and st.p != NULL and st.p.nreset:
        st.ratelimited_ms = _retry_reset_interval(st.p, head)
    rc = _retry_decide(s, would)
    st.ratelimited_ms = 0
    if rc != RS_YES:
        _retry_outcome_flags(s, rc)
        return 0
    # The response is dropped: counted as Envoy counts a retried attempt (the host's
    # rq_error; no upstream_rq_<code>: that is the final response's).
    host_stat_add(s.upstream.hstats, s.c.w, HS_RQ_ERROR, 1)
    timer_cancel(s.c.w, &st.per_try_idle)
    if s.upstream.conn != NULL:
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
    s.upstream.resp_head = NULL
    return 1


cdef int _retry_hedged_headers(HStream* s, const HttpHead* head) noexcept nogil:
    """retry_on_headers while hedging (Envoy's onUpstreamHeaders with several upstream
    requests): a hedged attempt is never retried again; a response that would be retried
    but cannot be is dropped while the other attempt may still answer; the response that
    goes on to the client resets the other attempt."""
    cdef RetryState* st = s.retry
    cdef Worker* w = s.c.w
    cdef bint would = st.retry_on != 0 and _retry_would_headers(s, head)
    cdef bint could_not = False
    cdef int rc
    if st.cur_hedged:
        could_not = would
    else:
        timer_cancel(w, &st.per_try)
        if would and st.p != NULL and st.p.nreset:
            st.ratelimited_ms = _retry_reset_interval(st.p, head)
        rc = _retry_decide(s, would)
        st.ratelimited_ms = 0
        if rc == RS_YES:
            host_stat_add(s.upstream.hstats, w, HS_RQ_ERROR, 1)
            timer_cancel(w, &st.per_try_idle)
            if s.upstream.conn != NULL:
                http_pool_cancel(s.upstream.conn)
                s.upstream.conn = NULL
            s.upstream.resp_head = NULL
            return 1
        _retry_outcome_flags(s, rc)
        could_not = rc != RS_NO
    if could_not and _retry_other_pending(s):
        host_stat_add(s.upstream.hstats, w, HS_RQ_ERROR, 1)
        if s.upstream.conn != NULL:
            http_pool_cancel(s.upstream.conn)
            s.upstream.conn = NULL
        s.upstream.resp_head = NULL
        host_stats_release(&s.upstream.hstats)
        st.cur_hedged = 0
        return 1                        # (the other attempt, or the retry, answers)
    # This response is the client's: no retry from now on, the other attempt goes.
    timer_cancel(w, &st.backoff)
    timer_cancel(w, &st.per_try)
    _retry_disarm(st)
    st.retry_on = 0
    st.keep_body = 0
    retry_hedge_drop(s)
    return 0


cdef bint retry_on_reset(HStream* s, const char* reason) noexcept nogil:
    """The pool failed the attempt before its response (s.upstream.conn is NULL now): is it
    retried (or, hedging, is another attempt still to answer)? True: the caller stops."""
    cdef RetryState* st = s.retry
    if s.resp_started or s.upstream.resp_head != NULL:
        return False                    # (a head went to the encoder filters: the response is the client's)
    if st.cur_hedged or st.hedged.conn != NULL:
        return _retry_hedged_reset(s, reason)
    timer_cancel(s.c.w, &st.per_try)
    timer_cancel(s.c.w, &st.per_try_idle)
    return _retry_reset_decision(s, reason)


cdef bint _retry_reset_decision(HStream* s, const char* reason) noexcept nogil:
    """Envoy's wouldRetryFromReset with the reset reason the failure stands for, and
    shouldRetry."""
    cdef RetryState* st = s.retry
    cdef uint32_t ro = st.retry_on
    cdef bint connect_failure = (reason == UPSTREAM_CONNECT_FAILURE or reason == UPSTREAM_REMOTE_FAILURE
                                 or reason == UPSTREAM_CONNECT_TIMEOUT)
    cdef bint would
    cdef int rc
    if reason == NO_HEALTHY_UPSTREAM or reason == UPSTREAM_TIMEOUT:
        return False                    # the request's end, not an attempt's outcome
    if reason == UPSTREAM_OVERFLOW:
        would = False                   # never retried
    elif connect_failure and (ro & RO_CONNECT_FAILURE):
        would = True
    elif ro & (RO_RESET_BEFORE_REQUEST | RO_RESET | RO_5XX | RO_GATEWAY_ERROR):
        # (reset-before-request: nothing of the request was written before a connect failure)
        would = (ro & (RO_RESET | RO_5XX | RO_GATEWAY_ERROR)) != 0 or connect_failure
    else:
        would = (ro & RO_REFUSED_STREAM) != 0 and reason == UPSTREAM_REFUSED
    if st.retry_on == 0 and not st.armed:
        return False
    rc = _retry_decide(s, would)
    if rc != RS_YES:
        _retry_outcome_flags(s, rc)
        return False
    host_stat_add(s.upstream.hstats, s.c.w, HS_RQ_ERROR, 1)
    s.response_flags &= ~(RF_UF | RF_UC | RF_UPE | RF_UR)   # (the final attempt's say)
    return True


cdef bint _retry_hedged_reset(HStream* s, const char* reason) noexcept nogil:
    """retry_on_reset while two attempts may answer (Envoy's onUpstreamReset): a hedged
    attempt's failure is never retried; a failure not retried while the other attempt may
    still answer is charged (its 503 or 502) and the client waits for the other."""
    cdef RetryState* st = s.retry
    cdef Worker* w = s.c.w
    cdef int status
    if reason == NO_HEALTHY_UPSTREAM or reason == UPSTREAM_TIMEOUT:
        retry_hedge_drop(s)             # (the route's timeout: every attempt ends)
        st.cur_hedged = 0
        return False
    if not st.cur_hedged:
        timer_cancel(w, &st.per_try)
        timer_cancel(w, &st.per_try_idle)
        if _retry_reset_decision(s, reason):
            return True
    st.cur_hedged = 0
    if not _retry_other_pending(s):
        return False                    # (the caller answers the client)
    status = 502 if reason == UPSTREAM_PROTOCOL_ERROR else 503
    _count_upstream(s.cluster.stats, w, status)
    _count_host(s, status)
    host_stats_release(&s.upstream.hstats)
    s.upstream.resp_head = NULL
    return True


cdef void _retry_per_try_fired(Worker* w, void* arg) noexcept nogil:
    """per_try_timeout: the attempt took too long (ignored once the response has started)."""
    cdef HStream* s = <HStream*>arg
    if s.resp_started:
        return
    if s.retry.cur_hedged and s.retry.hedged.conn != NULL and not s.retry.other_hedged:
        _retry_swap(s)                  # (the timer is the newest attempt's)
    if s.retry.hedge and _retry_soft_timeout(s):
        return
    _retry_try_timed_out(s, C_RQ_PER_TRY_TIMEOUT)


cdef void _retry_per_try_idle_fired(Worker* w, void* arg) noexcept nogil:
    """per_try_idle_timeout: nothing came from the attempt's upstream for that long (since
    the request's end, or its last response bytes). Unlike per_try_timeout it also ends a
    response that has started (Envoy resets it)."""
    cdef HStream* s = <HStream*>arg
    cdef RetryState* st = s.retry
    cdef uint64_t quiet = w.now - st.idle_at if w.now > st.idle_at else 0
    if s.upstream.resp_received or s.upstream.conn == NULL:
        return                          # (the response is whole, or no attempt is in flight)
    if quiet < st.per_try_idle_ms:
        timer_arm(w, &st.per_try_idle, st.per_try_idle_ms - quiet)
        return
    if st.hedge and not s.resp_started \
            and s.upstream.resp_head == NULL and _retry_soft_timeout(s):
        return
    _retry_try_timed_out(s, C_RQ_PER_TRY_IDLE_TIMEOUT)


cdef void _retry_try_timed_out(HStream* s, int counter) noexcept nogil:
    """Envoy's onPerTryTimeoutCommon: the attempt is reset and retried as a local reset
    (under reset, 5xx or gateway-error), else 504 `upstream request timeout` (UT); after
    the response has started, the downstream stream is reset."""
    cdef RetryState* st = s.retry
    cdef HConn* c = s.c
    cdef Worker* w = c.w
    cdef int rc
    timer_cancel(w, &st.per_try)
    timer_cancel(w, &st.per_try_idle)
    stat_add(s.cluster.stats, w, counter, 1)
    host_stat_add(s.upstream.hstats, w, HS_RQ_TIMEOUT, 1)
    if s.upstream.conn != NULL:
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
    if s.resp_started or s.upstream.resp_head != NULL:
        s.response_flags |= RF_UT       # (never retried: the response is the client's)
        stream_upstream_failed(s, 504, UPSTREAM_TIMEOUT)
        hconn_pump(c)
        return
    rc = _retry_decide(s, (st.retry_on & (RO_RESET | RO_5XX | RO_GATEWAY_ERROR)) != 0)
    if rc == RS_YES:
        host_stat_add(s.upstream.hstats, w, HS_RQ_ERROR, 1)
        outlier_report_local(s.upstream.hstats, w, OUT_TIMEOUT)    # (else the 504 reports it)
        return
    _retry_outcome_flags(s, rc)
    s.response_flags |= RF_UT
    stream_upstream_failed(s, 504, UPSTREAM_TIMEOUT)
    hconn_pump(c)


cdef void _retry_backoff_fired(Worker* w, void* arg) noexcept nogil:
    _retry_do(<HStream*>arg)


cdef void _retry_do(HStream* s) noexcept nogil:
    """The back-off is over: the next attempt (Envoy's doRetry): a new pick (avoiding the
    hosts tried with previous_hosts), the head and the kept body sent again."""
    cdef RetryState* st = s.retry
    cdef HConn* c = s.c
    cdef UpConn* u
    cdef Chain copy
    cdef PairList tl
    cdef int i, rc = 0
    if s.ended or s.resp_started or (s.fc != NULL and s.fc.resp.used):
        return                          # (the stream is answered, locally or by the upstream)
    if s.upstream.conn != NULL and st.hedged.conn == NULL:
        _retry_swap(s)                  # (the hedged attempt had the slot: the new one takes the other)
    s.lb.attempt += 1
    if st.p != NULL and st.p.previous_hosts:
        s.lb.avoid = st.tried
        s.lb.navoid = st.ntried
    s.upstream.resp_head = NULL
    s.upstream.resp_received = 0
    s.upstream.resp_end_fed = 0
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "router", c.id, c.nrequests, "performing retry")
    u = http_pool_acquire(s, s.cluster)
    s.upstream.conn = u
    if u == NULL:
        if s.retry.hedged.conn != NULL:
            # The hedged attempt may still answer: its outcome, not this pick's, flags the stream.
            s.response_flags &= ~(RF_UH | RF_UO)
            return
        _count_upstream(s.cluster.stats, c.w, 503)
        if s.response_flags & RF_UO:
            stream_local_reply(s, 503, UPSTREAM_OVERFLOW, strlen(UPSTREAM_OVERFLOW), NULL, 0, not s.req_received)
        else:
            stream_local_reply(s, 503, NO_HEALTHY_UPSTREAM, strlen(NO_HEALTHY_UPSTREAM), NULL, 0,
                               not s.req_received)
        hconn_pump(c)
        return
    retry_attempt_started(s)
    if stream_send_request_head(s, st.head_framing, st.head_length) < 0:
        hconn_pump(c)
        return
    if st.body.length:
        chain_init(&copy)
        rc = chain_ref_bytes(&copy, &st.body, st.body.length)
        if rc == 0:
            rc = u.codec.encode_data(u, &copy, copy.length)
        chain_free(&copy)
    if rc == 0 and st.body_end:
        if s.fc != NULL:
            rc = _encode_end_client(u, &s.fc.req_trailers)
        else:
            memset(&tl, 0, sizeof(PairList))
            rc = u.codec.encode_end(u, &tl)
    if rc < 0:
        stream_reset(s)
        hconn_pump(c)
        return
    if s.upstream.req_done:
        retry_request_complete(s)
    if u.state == UC_BUSY:
        u.ep.writable = 1
        if u.h2_role == H2R_NONE:
            upconn_pump(u)              # (its hconn_pump moves the downstream on)
            return
    hconn_pump(c)


# ---------------------------------------------------------------- response headers

cdef inline uint32_t retry_attempt_count(HStream* s) noexcept nogil:
    return s.retry.attempts if s.retry != NULL and s.retry.attempts else 1


cdef int retry_count_header(HStream* s, PairList* l, char* buf, bint response) noexcept nogil:
    """x-envoy-attempt-count on the upstream request (include_request_attempt_count) or on
    the response, upstream or local (include_attempt_count_in_response). buf: 24 bytes
    that must outlive l's use."""
    cdef const RetryPolicy* p = s.route.retry if s.route != NULL else NULL
    if p == NULL or not (p.attempt_count_response if response else p.attempt_count_request):
        return 0
    return _pl_overwrite(l, _cs("x-envoy-attempt-count"), _s(buf, _u64_text(retry_attempt_count(s), buf)))


cdef int retry_count_header_map(HStream* s, HMap* m) noexcept nogil:
    """retry_count_header's response case on the encoder filters' map."""
    cdef const RetryPolicy* p = s.route.retry if s.route != NULL else NULL
    cdef char buf[24]
    if p == NULL or not p.attempt_count_response:
        return 0
    return hm_set(m, "x-envoy-attempt-count", 21, buf, _u64_text(retry_attempt_count(s), buf))
