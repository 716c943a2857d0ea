# Request mirroring (Envoy's RouteAction.request_mirror_policies): a shadow copy of the
# request to another cluster, its response dropped and its failures invisible to the
# client. Owner: issue 16's MIRROR work.
#
# Design
# ------
# A shadow is an HStream of its own (the first member of a Shadow), so the pool, the
# circuit breakers, the client codecs (HTTP/1.1 and HTTP/2) and the per-host counters serve it
# unchanged: http_pool_acquire(shadow, cluster) and the codec's events. What differs is
# where those events end: the router's callbacks (ur_on_response_*, stream_on_upstream,
# stream_upstream_failed) hand a shadow's to shadow_on_* below at their top, which count the
# upstream stats as the router does, drop the response and free the shadow. Its connection
# is a per-worker null downstream (ShadowWorker.conn: closed, so every "pump the downstream"
# the pool does returns at once, and its codec says "send what you like").
#
# Life (Envoy 1.40's streaming shadows, router.cc decodeHeaders / decodeData / onDestroy):
#   start   when the primary's request head is serialized for its upstream (so a primary
#           without an upstream connection, 503 no healthy upstream or overflow, shadows
#           nothing), once per request (never again for a retry), unless the request is a
#           CONNECT or an upgrade. Each policy is sampled (runtime_fraction's default value;
#           fastproxy's runtime has no such keys, so the key is never set: Envoy then uses the
#           default too); a cluster that is not configured (removed by an update, or not yet
#           added by RDS) is skipped, as Envoy's ShadowWriterImpl. The shadow gets the same
#           method, path (after the route's rewrites), fields (after the route's mutations,
#           x-envoy-expected-rq-timeout-ms, x-forwarded-*, x-request-id: the primary's list)
#           and body framing, with Host (:authority) + "-shadow" unless
#           disable_shadow_host_suffix_append.
#   body    each body chunk the primary sends upstream goes to every shadow still fed
#           (shadows_feed: slice references, no copy), trailers too. A shadow whose unsent
#           request bytes would pass SHADOW_BUFFER_LIMIT (8 MiB) is abandoned (reset; counted in the
#           primary cluster's retry_or_shadow_abandoned). Envoy 1.40 instead pushes back on
#           the downstream (its shadow streams share the router's watermarks); we never let a
#           shadow slow the primary down.
#   end     once its request is whole, a shadow no longer depends on the primary: it
#           outlives it, bounded by the route's timeout in force (Envoy's global timeout,
#           armed at the end of the shadow's request). A primary that ends before its
#           request was whole cancels the shadows it still feeds (Envoy's onDestroy).
#           The response (head, body, trailers) is read and dropped; connect failures,
#           resets, timeouts and 5xx count in the mirror cluster's stats only.

cdef enum:                              # HStream.shadow_role
    SHR_NONE = 0                        # a stream that has started no shadows (yet)
    SHR_PRIMARY = 1                     # shadows were considered for it (never again)
    SHR_SHADOW = 2                      # the stream is a shadow (a Shadow's first member)

cdef enum:
    # Unsent request bytes a shadow may hold. They are references to the primary's slices
    # (shared by all its shadows), so this bounds the memory a request's shadows keep, not
    # a copy each; it is room for a mirror that lags a fast client on loopback. More: the
    # mirror does not keep up, and is abandoned.
    SHADOW_BUFFER_LIMIT = 8 * HTTP_IO_LIMIT

cdef struct MirrorPolicy:
    int cluster                         # index into the route table's clusters
    uint32_t numerator                  # runtime_fraction.default_value (100/100 if unset)
    uint32_t denominator
    uint8_t no_host_suffix              # disable_shadow_host_suffix_append

cdef struct Shadow:
    HStream s                           # first: the pool and the codecs see this stream
    HStream* primary                    # the stream that feeds its body; NULL once it is whole
    Shadow* sibling                     # the next shadow the primary feeds (HStream.shadows)
    Shadow* wnext                       # the worker's live shadows (ShadowWorker.live)
    Shadow* wprev

cdef struct ShadowWorker:
    HConn conn                          # every shadow's (null) downstream connection
    Shadow* live                        # the worker's shadows not yet ended (teardown)


cdef int _SHADOW_SLOT

cdef ServerCodecApi SHADOW_DOWN_CODEC   # the null downstream's codec (below)


cdef inline ShadowWorker* shadow_worker(Worker* w) noexcept nogil:
    return <ShadowWorker*>w.state[_SHADOW_SLOT]


# ---------------------------------------------------------------- building (main thread)

cdef int route_mirrors_build(_RouteBuilder b, RouteEntry* e, a, str apath) except -1:
    """e.mirrors / e.nmirrors from the route action `a` (its request_mirror_policies, checked by
    fastproxy.http.mirror); the clusters they name join the table's, as the route's own."""
    from fastproxy.http.mirror import MirrorPolicy as PyMirrorPolicy, DENOMINATORS
    cdef MirrorPolicy* m
    cdef int i
    policies = list(getattr(a, "request_mirror_policies", None) or ())
    e.nmirrors = 0
    e.mirrors = NULL
    if not policies:
        return 0
    m = <MirrorPolicy*>b.alloc(sizeof(MirrorPolicy) * len(policies))
    for i, p in enumerate(policies):
        ppath = f"{apath}.request_mirror_policies[{i}]"
        if not isinstance(p, PyMirrorPolicy):
            raise ConfigError(ppath, f"expected a fastproxy.http.MirrorPolicy, got {type(p).__name__}")
        p.validate(ppath)
        m[i].cluster = b.cluster(p.cluster, ppath + ".cluster")
        if p.runtime_fraction is None:
            m[i].numerator = 100
            m[i].denominator = 100
        else:
            m[i].numerator = p.runtime_fraction.numerator
            m[i].denominator = DENOMINATORS[p.runtime_fraction.denominator]
        m[i].no_host_suffix = bool(p.disable_shadow_host_suffix_append)
    e.mirrors = m
    e.nmirrors = len(policies)
    return 0


# ---------------------------------------------------------------- the null downstream

cdef bint _shadow_send_ok(HConn* c, HStream* s) noexcept nogil:
    return True                         # the response is dropped as it comes: never full


cdef bint _shadow_raw_data_ok(HConn* c, HStream* s) noexcept nogil:
    return False                        # no splice: the bytes are read to be dropped


cdef uint64_t _shadow_raw_body_left(HConn* c, HStream* s) noexcept nogil:
    return 0


SHADOW_DOWN_CODEC.name = "shadow"
SHADOW_DOWN_CODEC.send_ok = _shadow_send_ok
SHADOW_DOWN_CODEC.raw_data_ok = _shadow_raw_data_ok
SHADOW_DOWN_CODEC.raw_body_left = _shadow_raw_body_left


cdef int _shadow_worker_init(Worker* w) noexcept nogil:
    cdef ShadowWorker* sw = <ShadowWorker*>calloc(1, sizeof(ShadowWorker))
    if sw == NULL:
        return -1
    w.state[_SHADOW_SLOT] = sw
    sw.conn.w = w
    sw.conn.closed = 1                  # never pumped, never closed: hconn_pump returns at once
    sw.conn.codec = &SHADOW_DOWN_CODEC
    sw.conn.down.fd = -1
    sw.conn.req_pipe.r = sw.conn.req_pipe.w = -1
    sw.conn.rsp_pipe.r = sw.conn.rsp_pipe.w = -1
    return worker_add_teardown(w, _shadow_teardown, sw)


cdef void _shadow_worker_fini(Worker* w) noexcept nogil:
    free(w.state[_SHADOW_SLOT])
    w.state[_SHADOW_SLOT] = NULL


cdef void _shadow_teardown(Worker* w, void* arg) noexcept nogil:
    """The worker stops: its shadows end (their memory goes with the HTTP streams freed at
    the end of the turn that follows)."""
    cdef ShadowWorker* sw = <ShadowWorker*>arg
    while sw.live != NULL:
        _shadow_end(sw.live, False)


_SHADOW_SLOT = worker_subsystem_add(_shadow_worker_init, _shadow_worker_fini, NULL)


# ---------------------------------------------------------------- starting

cdef size_t _shadow_host(const char* host, size_t n, char* out) noexcept nogil:
    """Envoy 1.40's shadow authority: "-shadow" after the host name, before the port if there
    is one ("[::1]:80" -> "[::1]-shadow:80", "a:8080" -> "a-shadow:8080", "a" -> "a-shadow").
    out has room for n + 7 bytes."""
    cdef size_t name_end = n
    cdef size_t i
    if n and host[0] == b'[':
        i = 0
        while i < n and host[i] != b']':
            i += 1
        if i < n and (i + 1 == n or host[i + 1] == b':'):
            name_end = i + 1
    else:
        i = n
        while i > 0 and host[i - 1] != b':':
            i -= 1
        if i > 0 and i < n and _all_digits(host + i, n - i):
            name_end = i - 1
    memcpy(out, host, name_end)
    memcpy(out + name_end, b"-shadow", 7)
    memcpy(out + name_end + 7, host + name_end, n - name_end)
    return n + 7


cdef inline bint _mirror_sampled(Worker* w, const MirrorPolicy* p) noexcept nogil:
    """runtime_fraction (Envoy's featureEnabled on the stream's random id)."""
    if p.numerator == 0:
        return False
    if p.numerator >= p.denominator:
        return True
    return worker_random(w) % p.denominator < p.numerator


cdef inline bint _framing_has_body(const BodyFraming* bf) noexcept nogil:
    return bf.kind == BODY_STREAM or (bf.kind == BODY_LENGTH and bf.length > 0)


cdef void shadows_start(HStream* s, StrRef method, StrRef target, const PairList* l,
                        const BodyFraming* bf) noexcept nogil:
    """The primary s sends its request head (method, target, fields l, framing bf, as its
    upstream gets them): start the route's shadows, once per request. Nothing that happens
    to a shadow reaches s."""
    cdef const RouteEntry* e = s.route
    cdef Worker* w = s.c.w
    cdef ClusterCfg* cl
    cdef int i
    if s.shadow_role != SHR_NONE or e == NULL or e.nmirrors == 0:
        return
    s.shadow_role = SHR_PRIMARY
    if s.connect or s.upgrade:
        return                          # (Envoy: no shadow for CONNECT; upgrades are tunnels)
    for i in range(e.nmirrors):
        if not _mirror_sampled(w, &e.mirrors[i]):
            continue
        cl = s.routes.clusters[e.mirrors[i].cluster]
        if cl == NULL or cluster_params(cl, w).removed:
            if fp_log_level <= LOG_DEBUG:
                fp_log(w.index, "router", s.c.id, s.c.nrequests, "shadow cluster '%s' does not exist",
                       s.routes.cluster_names[e.mirrors[i].cluster])
            continue
        _shadow_start(s, &e.mirrors[i], cl, method, target, l, bf)


cdef void _shadow_start(HStream* s, const MirrorPolicy* p, ClusterCfg* cl, StrRef method,
                        StrRef target, const PairList* l, const BodyFraming* bf) noexcept nogil:
    cdef Worker* w = s.c.w
    cdef ShadowWorker* sw = shadow_worker(w)
    cdef Shadow* sh
    cdef HStream* ss
    cdef UpConn* u
    cdef PairList l2
    cdef char* scratch = NULL          # the new Host and x-forwarded-for values
    cdef int rc
    sh = <Shadow*>calloc(1, sizeof(Shadow))
    if sh == NULL:
        return
    memset(&l2, 0, sizeof(PairList))
    ss = &sh.s
    ss.c = &sw.conn
    ss.shadow_role = SHR_SHADOW
    ss.method = s.method
    ss.protocol = s.protocol
    ss.routes = s.routes                # keeps the route, its policy and cl alive
    route_table_incref(ss.routes)
    ss.route = s.route
    ss.cluster = cl
    ss.cluster_index = p.cluster
    ss.cluster_override = -1
    ss.start_ms = w.now
    ss.start_time_us = s.start_time_us
    ss.timeout_ms = s.timeout_ms        # the route's timeout in force (Envoy's global timeout)
    ss.status = 0
    timer_init(&ss.timeout, _shadow_timeout, sh)
    sh.wnext = sw.live
    if sw.live != NULL:
        sw.live.wprev = sh
    sw.live = sh
    # The primary's fields, with the shadow's Host, and what Envoy's async client adds to
    # every request it sends (x-envoy-internal, and its local address appended to
    # x-forwarded-for). A copy of the list: codecs edit the list they are given (HTTP/2
    # takes Host out for :authority).
    l2.v = <FieldPair*>malloc((l.n + 2) * sizeof(FieldPair))
    if l2.v == NULL:
        _shadow_end(sh, False)
        return
    memcpy(l2.v, l.v, l.n * sizeof(FieldPair))
    l2.n = l.n
    l2.cap = l.n + 2
    if _shadow_fields(&l2, p, <HttpCfg*>s.c.cfg.http, &scratch) < 0 \
            or (_shadow_host_field(&l2, &ss.head) < 0):
        free(scratch)
        free(l2.v)
        _shadow_end(sh, False)
        return
    if fp_log_level <= LOG_DEBUG:
        fp_log(w.index, "router", s.c.id, s.c.nrequests, "starting a shadow request to cluster '%s'",
               s.routes.cluster_names[p.cluster])
    u = http_pool_acquire(ss, cl)
    if u == NULL:
        # No host, a circuit breaker, a connect that failed at once: the router's 503, charged
        # to the mirror cluster as Envoy's async client router charges it.
        _count_upstream(cl.stats, w, 503)
        free(scratch)
        free(l2.v)
        _shadow_end(sh, False)
        return
    ss.upstream.conn = u
    rc = u.codec.encode_headers(u, method, target, &l2, bf)
    free(scratch)
    free(l2.v)
    if rc < 0:
        _shadow_end(sh, False)
        return
    if u.state == UC_BUSY:
        u.ep.writable = 1               # a pooled connection: try to write at once
    if _framing_has_body(bf):
        sh.primary = s                  # fed by shadows_feed until its request is whole
        sh.sibling = s.shadows
        s.shadows = sh
    else:
        _shadow_request_end(sh)
    _shadow_kick(u)                     # (may end the shadow: not touched after)


cdef int _shadow_fields(PairList* l, const MirrorPolicy* p, const HttpCfg* h, char** scratch) noexcept nogil:
    """Turn the primary's field list l (room for two more) into the shadow's; the values
    made live in *scratch (the caller frees it). -1: no memory."""
    cdef size_t i, k
    cdef ssize_t hi = -1, xi = -1
    cdef size_t need = h.local_ip_len + 1
    cdef char* out
    for i in range(l.n):
        if hi < 0 and _rt_ieq2(l.v[i].name.p, l.v[i].name.n, "host", 4):
            hi = <ssize_t>i
        elif xi < 0 and _rt_ieq2(l.v[i].name.p, l.v[i].name.n, "x-forwarded-for", 15):
            xi = <ssize_t>i
    if hi >= 0:
        need += l.v[hi].value.n + 7
    if xi >= 0:
        need += l.v[xi].value.n + 1
    out = <char*>malloc(need)
    if out == NULL:
        return -1
    scratch[0] = out
    if hi >= 0 and not p.no_host_suffix:
        k = _shadow_host(l.v[hi].value.p, l.v[hi].value.n, out)
        l.v[hi].value = _s(out, k)
        out += k
    if xi >= 0:
        memcpy(out, l.v[xi].value.p, l.v[xi].value.n)
        k = l.v[xi].value.n
        out[k] = b','
        memcpy(out + k + 1, h.local_ip, h.local_ip_len)
        l.v[xi].value = _s(out, k + 1 + h.local_ip_len)
    else:
        memcpy(out, h.local_ip, h.local_ip_len)
        _pl_add(l, _cs("x-forwarded-for"), _s(out, h.local_ip_len))
    _pl_remove(l, "x-envoy-internal", 16)
    _pl_add(l, _cs("x-envoy-internal"), _cs("true"))
    return 0


cdef int _shadow_host_field(const PairList* l, HttpHead* head) noexcept nogil:
    """The shadow's Host in its own head too (a TLS mirror's auto_sni names it). -1: no memory."""
    cdef size_t i
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, "host", 4):
            return http_head_add_field(head, "host", 4, l.v[i].value.p, l.v[i].value.n)
    return 0


cdef inline void _shadow_kick(UpConn* u) noexcept nogil:
    """A pooled connection has no event coming to send what was queued (as _hconn_process
    starts a primary's)."""
    if u.state == UC_BUSY and u.out_buf.length and u.ep.writable:
        upconn_pump(u)


cdef void _shadow_request_end(Shadow* sh) noexcept nogil:
    """The shadow's request is whole: it lives on its own, for the route's timeout."""
    cdef HStream* ss = &sh.s
    _shadow_unfeed(sh)
    ss.upstream.req_done = 1
    ss.req_received = 1
    ss.request_end_ms = ss.c.w.now
    if ss.timeout_ms:
        timer_arm(ss.c.w, &ss.timeout, ss.timeout_ms)


cdef void _shadow_unfeed(Shadow* sh) noexcept nogil:
    """Take sh off its primary's list (the primary feeds it no more)."""
    cdef Shadow** pp
    if sh.primary == NULL:
        return
    pp = <Shadow**>&sh.primary.shadows
    while pp[0] != NULL and pp[0] != sh:
        pp = &pp[0].sibling
    if pp[0] == sh:
        pp[0] = sh.sibling
    sh.primary = NULL
    sh.sibling = NULL


# ---------------------------------------------------------------- the primary's body

cdef void shadows_feed(HStream* s, const Chain* src, size_t n, bint end, const HttpHead* trailers,
                       const HMap* map_trailers) noexcept nogil:
    """The primary s sends n request body bytes (the first n of src, which it keeps), `end`
    with its last; trailers as a received head or as the filters' map (or neither). Each
    shadow still fed gets them too."""
    cdef Shadow* sh = s.shadows
    cdef Shadow* nxt
    while sh != NULL:
        nxt = sh.sibling
        _shadow_data(s, sh, src, n, end, trailers, map_trailers)
        sh = nxt


cdef void _shadow_data(HStream* s, Shadow* sh, const Chain* src, size_t n, bint end,
                       const HttpHead* trailers, const HMap* map_trailers) noexcept nogil:
    cdef HStream* ss = &sh.s
    cdef UpConn* u = ss.upstream.conn
    cdef Chain tmp
    cdef PairList tl
    cdef int rc = 0
    if u == NULL:
        _shadow_end(sh, False)
        return
    if u.out_buf.length + n > SHADOW_BUFFER_LIMIT:
        # The mirror does not keep up: abandoned rather than buffered without bound or
        # allowed to hold the primary back.
        if s.cluster != NULL:
            stat_add(s.cluster.stats, s.c.w, C_RETRY_OR_SHADOW_ABANDONED, 1)
        if fp_log_level <= LOG_DEBUG:
            fp_log(s.c.w.index, "router", s.c.id, s.c.nrequests,
                   "shadow request abandoned: %llu request bytes unsent",
                   <unsigned long long>u.out_buf.length)
        _shadow_end(sh, False)
        return
    if n:
        chain_init(&tmp)
        rc = chain_ref_bytes(&tmp, src, n)
        if rc == 0:
            rc = u.codec.encode_data(u, &tmp, n)
        chain_free(&tmp)
        if rc < 0:
            _shadow_end(sh, False)
            return
    if end:
        memset(&tl, 0, sizeof(PairList))
        if trailers != NULL:
            rc = _pl_from_head(&tl, trailers)
        elif map_trailers != NULL and map_trailers.used:
            rc = hm_to_pairs(map_trailers, &tl, True)
        if rc == 0:
            rc = u.codec.encode_end(u, &tl)
        free(tl.v)
        if rc < 0:
            _shadow_end(sh, False)
            return
        _shadow_request_end(sh)
    _shadow_kick(u)


cdef void shadows_primary_gone(HStream* s) noexcept nogil:
    """The primary s ends: the shadows whose request it had not finished are cancelled
    (Envoy's onDestroy); the others live on."""
    while s.shadows != NULL:
        _shadow_end(s.shadows, False)


# ---------------------------------------------------------------- the shadow's upstream

cdef void _shadow_end(Shadow* sh, bint complete) noexcept nogil:
    """The shadow ends: complete (its response came whole: the connection may be pooled) or
    abandoned (the connection is cancelled). Its memory goes at the end of the turn."""
    cdef HStream* ss = &sh.s
    cdef Worker* w = ss.c.w
    cdef ShadowWorker* sw = shadow_worker(w)
    cdef UpConn* u = ss.upstream.conn
    if ss.ended:
        return
    _shadow_unfeed(sh)
    timer_cancel(w, &ss.timeout)
    ss.upstream.conn = NULL
    if u != NULL:
        if complete:
            http_pool_release(u, ss.upstream.req_done and u.codec.reusable(u))
        else:
            u.stream = NULL
            http_pool_cancel(u)
    if sh.wprev != NULL:
        sh.wprev.wnext = sh.wnext
    else:
        sw.live = sh.wnext
    if sh.wnext != NULL:
        sh.wnext.wprev = sh.wprev
    sh.wnext = sh.wprev = NULL
    http_head_free(&ss.head)
    host_stats_release(&ss.upstream.hstats)
    route_table_decref(ss.routes)
    ss.routes = NULL
    ss.ended = 1
    ss.next_deferred = http_worker(w).stream_deferred      # freed with the ended streams
    http_worker(w).stream_deferred = ss


cdef void _shadow_timeout(Worker* w, void* arg) noexcept nogil:
    """The route's timeout for the shadow: counted as the router counts a primary's."""
    cdef Shadow* sh = <Shadow*>arg
    cdef HStream* ss = &sh.s
    stat_add(ss.cluster.stats, w, C_RQ_TIMEOUT, 1)
    host_stat_add(ss.upstream.hstats, w, HS_RQ_TIMEOUT, 1)
    if ss.status == 0:
        _count_upstream(ss.cluster.stats, w, 504)
        _count_host(ss, 504)
    _shadow_end(sh, False)


cdef int shadow_on_upstream(HStream* s) noexcept nogil:
    """stream_on_upstream for a shadow: decode (the events below). -1: it ended."""
    cdef UpConn* u = s.upstream.conn
    if u == NULL:
        return -1
    return -1 if u.codec.decode(u) < 0 else 0


cdef int shadow_on_response_headers(HStream* s, const HttpHead* head) noexcept nogil:
    """ur_on_response_headers for a shadow: counted, dropped."""
    cdef UpConn* u = s.upstream.conn
    if head.status == 101:
        http_pool_fail(u, 502, UPSTREAM_PROTOCOL_ERROR)     # (no upgrade was asked for)
        return -1
    s.upstream.resp_head = head
    s.status = head.status
    outlier_report_http(s.upstream.hstats, s.c.w, head.status)     # (as the primary's, ur_on_response_headers)
    _count_upstream(s.cluster.stats, s.c.w, s.status)
    _count_host(s, s.status)
    return 0


cdef int shadow_on_response_data(HStream* s, Chain* src, size_t n, bint end) noexcept nogil:
    """ur_on_response_data for a shadow: the bytes are dropped; at the end the shadow ends
    (its connection back to the pool if it may be). -1: it ended."""
    chain_drain(src, n)
    if not end:
        return 0
    s.upstream.resp_received = 1
    _shadow_end(<Shadow*>s, True)
    return -1


cdef void shadow_on_response_error(HStream* s, int kind) noexcept nogil:
    """ur_on_response_error for a shadow: its connection fails (shadow_upstream_failed ends
    it, counting the router's status if no response head had come)."""
    cdef UpConn* u = s.upstream.conn
    if u == NULL:
        _shadow_end(<Shadow*>s, False)
        return
    if kind == UE_PROTOCOL:
        http_pool_fail(u, 502, UPSTREAM_PROTOCOL_ERROR)
    elif kind == UE_RESET:
        if s.status:
            stat_add(s.cluster.stats, s.c.w, C_RQ_RX_RESET, 1)
        http_pool_fail(u, 503, UPSTREAM_REMOTE_RESET)
    elif kind == UE_CLOSED_IN_HEAD or kind == UE_BODY_FRAMING:
        http_pool_fail(u, 502, UPSTREAM_PROTOCOL_ERROR)
    else:
        http_pool_fail(u, 503, UPSTREAM_TERMINATION)


cdef void shadow_upstream_failed(HStream* s, int status, const char* reason) noexcept nogil:
    """stream_upstream_failed for a shadow: the router's reply in the response's place is
    charged to the mirror cluster (unless a response head was counted already), the failure
    to the host's outlier detection as the primary's is; it ends."""
    outlier_report_local(s.upstream.hstats, s.c.w, outlier_failure_kind(reason, s.status != 0))
    s.upstream.conn = NULL
    if s.status == 0 and s.cluster != NULL:
        _count_upstream(s.cluster.stats, s.c.w, status)
        _count_host(s, status)
    _shadow_end(<Shadow*>s, False)
