# Native HTTP filters: Envoy's local_ratelimit, cors, fault, buffer, health_check and
# header_mutation, compiled here. Each is an fp_http_filter table whose hooks are
# `noexcept nogil` and never touch a Python object; a chain of only these never takes the
# GIL. Their configs are C structs built once on the main thread (make_config, from the
# models in fastproxy/http/native_filters.py) and read-only afterwards, except the atomics of a
# token bucket and of a fault's active count, which every worker shares.
#
# Per-stream state: most of these filters need none, so their `create` returns the stream
# itself (a non-NULL "self" that costs no allocation); the hooks find their filter-level
# config through fc.cfgs[fc.current] and the per-route one through hf_route_config. The
# fault filter allocates a small state with its delay timer (cancelled in destroy, so a
# stream that ends while delayed never leaves a timer behind).

cdef extern from *:
    """
    static inline int nf_cas_i64(int64_t *p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline int64_t nf_load_i64(int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline int64_t nf_add_i64(int64_t *p, int64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    """
    bint nf_cas_i64(int64_t* p, int64_t expected, int64_t desired) nogil
    int64_t nf_load_i64(int64_t* p) nogil
    int64_t nf_add_i64(int64_t* p, int64_t v) nogil


# ---------------------------------------------------------------- shared pieces

cdef struct NOwned:                 # what a config struct allocated (its first member)
    void** p
    int n
    int cap
    RouteRegex* regexes             # compiled copies to regfree (their memory is in p)


cdef struct NHdrOp:                 # action: RHO_* (core/router/decls.pxi)
    int action
    const char* name
    size_t nn
    const char* value
    size_t vn


cdef struct NPercent:
    uint32_t numerator
    uint32_t denominator


cdef void _nf_destroy_config(void* p) noexcept nogil:
    cdef NOwned* o = <NOwned*>p
    cdef int i
    if o == NULL:
        return
    regex_list_free(o.regexes)
    for i in range(o.n):
        free(o.p[i])
    free(o.p)
    free(p)


cdef inline HStream* _nf_stream(void* self) noexcept nogil:
    return <HStream*>self


cdef inline void* _nf_filter_cfg(HStream* s) noexcept nogil:
    return s.fc.cfgs[s.fc.current].config


cdef void* _nf_route_cfg(HStream* s) noexcept nogil:
    """This filter's per-route config; picks the route now if no one has yet (Envoy caches
    the route the first time a filter asks for it, too)."""
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs
    if s.fc == NULL:
        return NULL
    if s.route == NULL:
        hdrs = _route_input(s, &r, stack)
        if hdrs == NULL:
            return NULL
        s.route = route_select((<HttpCfg*>s.c.cfg.http).routes, &r)
        s.route_cleared = 0
        _route_input_free(hdrs, stack)
    return hf_route_config(s)


cdef inline bint _nf_percent_hit(Worker* w, const NPercent* p) noexcept nogil:
    if p.numerator == 0:
        return False
    if p.numerator >= p.denominator:
        return True
    return (worker_random(w) % p.denominator) < p.numerator


cdef void _nf_apply_ops(HMap* m, const NHdrOp* ops, int n) noexcept nogil:
    cdef int i
    cdef size_t vn
    cdef const NHdrOp* op
    for i in range(n):
        op = &ops[i]
        if op.action == RHO_REMOVE:
            hm_remove(m, op.name, op.nn)
        elif op.action == RHO_APPEND_IF_EXISTS_OR_ADD:
            hm_add(m, op.name, op.nn, op.value, op.vn)
        elif op.action == RHO_ADD_IF_ABSENT:
            if hm_get(m, op.name, op.nn, &vn) == NULL:
                hm_add(m, op.name, op.nn, op.value, op.vn)
        elif op.action == RHO_OVERWRITE_IF_EXISTS_OR_ADD:
            hm_set(m, op.name, op.nn, op.value, op.vn)
        elif op.action == RHO_OVERWRITE_IF_EXISTS:
            if hm_get(m, op.name, op.nn, &vn) != NULL:
                hm_set(m, op.name, op.nn, op.value, op.vn)


cdef void* _nf_create_stream(void* config, fp_stream* s, const fp_api* api) noexcept nogil:
    return <void*>s                     # no per-stream state: "self" is the stream


# ---------------------------------------------------------------- building configs (main thread)

_NF_APPEND_ACTIONS = {"APPEND_IF_EXISTS_OR_ADD": RHO_APPEND_IF_EXISTS_OR_ADD,
                      "ADD_IF_ABSENT": RHO_ADD_IF_ABSENT,
                      "OVERWRITE_IF_EXISTS_OR_ADD": RHO_OVERWRITE_IF_EXISTS_OR_ADD,
                      "OVERWRITE_IF_EXISTS": RHO_OVERWRITE_IF_EXISTS}


cdef class _NfBuild(_MatchBuilder):
    """Allocates into one config struct's NOwned; on an error the caller frees it all.
    Matchers are built by _MatchBuilder (core/router/build.pxi), the same as the routes'."""
    cdef NOwned* o
    cdef str path

    cdef void* alloc(self, size_t n) except NULL:
        cdef void** nv
        cdef void* p
        if self.o.n == self.o.cap:
            nv = <void**>realloc(self.o.p, (self.o.cap * 2 + 8) * sizeof(void*))
            if nv == NULL:
                raise MemoryError()
            self.o.p = nv
            self.o.cap = self.o.cap * 2 + 8
        p = calloc(1, max(1, n))
        if p == NULL:
            raise MemoryError()
        self.o.p[self.o.n] = p
        self.o.n += 1
        return p

    cdef const char* bytes_(self, object value, size_t* n, bint lower=False) except NULL:
        cdef bytes b
        cdef char* p
        if isinstance(value, str):
            try:
                b = (<str>value).encode("latin-1")
            except UnicodeEncodeError:
                raise ConfigError(self.path, f"{value!r} is not latin-1") from None
        elif isinstance(value, bytes):
            b = <bytes>value
        else:
            raise ConfigError(self.path, f"expected a string, got {type(value).__name__}")
        if lower:
            b = b.lower()
        p = <char*>self.alloc(len(b) + 1)
        memcpy(p, <char*>b, len(b))
        p[len(b)] = 0
        n[0] = len(b)
        return p

    cdef NHdrOp* ops(self, list items, int* n, str path) except? NULL:
        """HeaderMutationOp / HeaderValueOption list -> NHdrOp array."""
        from fastproxy.http.model import HeaderValueOption
        from fastproxy.http.native_filters import HeaderMutationOp
        cdef NHdrOp* out
        cdef int i
        n[0] = len(items)
        if not items:
            return NULL
        out = <NHdrOp*>self.alloc(len(items) * sizeof(NHdrOp))
        for i, item in enumerate(items):
            ipath = f"{path}[{i}]"
            if isinstance(item, HeaderMutationOp):
                if (item.append is None) == (item.remove is None):
                    raise ConfigError(ipath, "exactly one of append or remove must be set")
                if item.remove is not None:
                    self.path = ipath + ".remove"
                    out[i].action = RHO_REMOVE
                    out[i].name = self.bytes_(item.remove, &out[i].nn, True)
                    continue
                item = item.append
                ipath += ".append"
            if not isinstance(item, HeaderValueOption):
                raise ConfigError(ipath, f"expected a HeaderValueOption, got {type(item).__name__}")
            action = _NF_APPEND_ACTIONS.get(item.append_action)
            if action is None:
                raise ConfigError(ipath + ".append_action", f"unknown append_action {item.append_action!r}")
            out[i].action = action
            self.path = ipath + ".header.key"
            out[i].name = self.bytes_(item.key, &out[i].nn, True)
            self.path = ipath + ".header.value"
            out[i].value = self.bytes_(item.value, &out[i].vn)
        return out


cdef int _nf_percent(NPercent* p, object fp, str path) except -1:
    from fastproxy.http.native_filters import FractionalPercent, DENOMINATORS
    if fp is None:
        p.numerator = 0
        p.denominator = 100
        return 0
    if not isinstance(fp, FractionalPercent):
        raise ConfigError(path, f"expected a FractionalPercent, got {type(fp).__name__}")
    d = DENOMINATORS.get(fp.denominator)
    if d is None:
        raise ConfigError(path + ".denominator", f"expected one of {', '.join(DENOMINATORS)}, got {fp.denominator!r}")
    if not isinstance(fp.numerator, int) or not 0 <= fp.numerator <= 0xffffffff:
        raise ConfigError(path + ".numerator", f"expected an unsigned 32-bit integer, got {fp.numerator!r}")
    p.numerator = fp.numerator
    p.denominator = d
    return 0


cdef _NfBuild _nf_new(size_t size, int regex_copies):
    """A zeroed config struct of `size` bytes (its first member an NOwned), at .o; its
    regexes compiled regex_copies times (one per worker: the router's policy)."""
    from fastproxy.config.regex import re2_to_posix
    cdef void* p = calloc(1, size)
    cdef _NfBuild b
    if p == NULL:
        raise MemoryError()
    b = _NfBuild.__new__(_NfBuild)
    b.o = <NOwned*>p
    b.path = ""
    b.regex_copies = max(1, regex_copies)
    b.regexes = &b.o.regexes
    b.re2_to_posix = re2_to_posix
    return b


cdef _nf_expect(object config, object cls, str kind):
    if not isinstance(config, cls):
        raise ConfigError(kind, f"expected a {cls.__name__} config, got {type(config).__name__}")


# ---------------------------------------------------------------- envoy.filters.http.fault

cdef struct NFaultCfg:
    NOwned own
    uint8_t has_delay
    uint64_t delay_ms
    NPercent delay_pct
    uint8_t has_abort
    int abort_status
    NPercent abort_pct
    int64_t max_active              # -1: no limit
    int64_t active                  # atomic: streams in a fault now (every worker)


cdef struct NFaultStream:
    HStream* s
    Timer timer
    int abort_status                # an abort to send when the delay ends
    NFaultCfg* counted              # holds one of this config's `active`


cdef void* _nf_fault_create(void* config, fp_stream* s, const fp_api* api) noexcept nogil:
    cdef NFaultStream* f = <NFaultStream*>calloc(1, sizeof(NFaultStream))
    if f == NULL:
        return NULL
    f.s = <HStream*>s
    timer_init(&f.timer, _nf_fault_timer, f)
    return f


cdef void _nf_fault_abort(HStream* s, int status) noexcept nogil:
    hf_request_local_reply(s, status, "fault filter abort", 18)


cdef void _nf_fault_timer(Worker* w, void* arg) noexcept nogil:
    cdef NFaultStream* f = <NFaultStream*>arg
    cdef HStream* s = f.s
    cdef int status = f.abort_status
    # either call may end the stream (and free f): f is not touched after it
    if status:
        _nf_fault_abort(s, status)
    else:
        hf_continue(s, False)


cdef int _nf_fault_decode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef NFaultStream* f = <NFaultStream*>self
    cdef HStream* s = f.s
    cdef Worker* w = s.c.w
    cdef NFaultCfg* cfg = <NFaultCfg*>_nf_route_cfg(s)
    cdef bint delay, abort
    if cfg == NULL:
        cfg = <NFaultCfg*>_nf_filter_cfg(s)
    if cfg == NULL:
        return FP_CONTINUE
    delay = cfg.has_delay and _nf_percent_hit(w, &cfg.delay_pct)
    abort = cfg.has_abort and _nf_percent_hit(w, &cfg.abort_pct)
    if not delay and not abort:
        return FP_CONTINUE
    if cfg.max_active >= 0:
        if nf_add_i64(&cfg.active, 1) > cfg.max_active:
            nf_add_i64(&cfg.active, -1)
            return FP_CONTINUE          # too many faults active: this stream goes on as is
        f.counted = cfg
    if delay:
        f.abort_status = cfg.abort_status if abort else 0
        if timer_arm(w, &f.timer, cfg.delay_ms) == 0:
            return FP_STOP_ITERATION
        if not abort:
            return FP_CONTINUE
    _nf_fault_abort(s, cfg.abort_status)
    return FP_STOP_ITERATION


cdef void _nf_fault_destroy(void* self) noexcept nogil:
    cdef NFaultStream* f = <NFaultStream*>self
    timer_cancel(f.s.c.w, &f.timer)
    if f.counted != NULL:
        nf_add_i64(&f.counted.active, -1)
    free(f)


cdef fp_http_filter NF_FAULT_VT
NF_FAULT_VT.abi_version = FP_FILTER_ABI_VERSION
NF_FAULT_VT.destroy_config = _nf_destroy_config
NF_FAULT_VT.create = _nf_fault_create
NF_FAULT_VT.decode_headers = _nf_fault_decode_headers
NF_FAULT_VT.destroy = _nf_fault_destroy


cdef class _FaultKind(NativeFilterKind):
    def __cinit__(self):
        self.vt = &NF_FAULT_VT

    cdef void* make_config(self, object config, bint per_route, int regex_copies) except NULL:
        from fastproxy.http.native_filters import HTTPFault, FaultDelay, FaultAbort
        cdef _NfBuild b
        cdef NFaultCfg* c
        _nf_expect(config, HTTPFault, "envoy.filters.http.fault")
        b = _nf_new(sizeof(NFaultCfg), regex_copies)
        c = <NFaultCfg*>b.o
        try:
            c.max_active = -1
            if config.delay is not None:
                d = config.delay
                if not isinstance(d, FaultDelay):
                    raise ConfigError("delay", f"expected a FaultDelay, got {type(d).__name__}")
                if not isinstance(d.fixed_delay, (int, float)) or d.fixed_delay <= 0:
                    raise ConfigError("delay.fixed_delay", f"must be a positive number of seconds, got {d.fixed_delay!r}")
                c.has_delay = 1
                c.delay_ms = max(1, int(round(d.fixed_delay * 1000)))
                _nf_percent(&c.delay_pct, d.percentage, "delay.percentage")
            if config.abort is not None:
                a = config.abort
                if not isinstance(a, FaultAbort):
                    raise ConfigError("abort", f"expected a FaultAbort, got {type(a).__name__}")
                if not isinstance(a.http_status, int) or not 200 <= a.http_status < 600:
                    raise ConfigError("abort.http_status", f"must be in [200, 600), got {a.http_status!r}")
                c.has_abort = 1
                c.abort_status = a.http_status
                _nf_percent(&c.abort_pct, a.percentage, "abort.percentage")
            if config.max_active_faults is not None:
                if not isinstance(config.max_active_faults, int) or config.max_active_faults < 0:
                    raise ConfigError("max_active_faults", f"expected an unsigned integer, got {config.max_active_faults!r}")
                c.max_active = config.max_active_faults
        except BaseException:
            _nf_destroy_config(c)
            raise
        return c


# ---------------------------------------------------------------- envoy.filters.http.header_mutation

cdef struct NHdrMutCfg:
    NOwned own
    NHdrOp* req
    int nreq
    NHdrOp* resp
    int nresp


cdef int _nf_hmut_decode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef NHdrMutCfg* r = <NHdrMutCfg*>_nf_route_cfg(s)
    cdef NHdrMutCfg* c = <NHdrMutCfg*>_nf_filter_cfg(s)
    if r != NULL:
        _nf_apply_ops(<HMap*>h, r.req, r.nreq)
    if c != NULL:
        _nf_apply_ops(<HMap*>h, c.req, c.nreq)
    return FP_CONTINUE


cdef int _nf_hmut_encode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef NHdrMutCfg* r = <NHdrMutCfg*>hf_route_config(s)
    cdef NHdrMutCfg* c = <NHdrMutCfg*>_nf_filter_cfg(s)
    if r != NULL:
        _nf_apply_ops(<HMap*>h, r.resp, r.nresp)
    if c != NULL:
        _nf_apply_ops(<HMap*>h, c.resp, c.nresp)
    return FP_CONTINUE


cdef fp_http_filter NF_HMUT_VT
NF_HMUT_VT.abi_version = FP_FILTER_ABI_VERSION
NF_HMUT_VT.destroy_config = _nf_destroy_config
NF_HMUT_VT.create = _nf_create_stream
NF_HMUT_VT.decode_headers = _nf_hmut_decode_headers
NF_HMUT_VT.encode_headers = _nf_hmut_encode_headers


cdef class _HeaderMutationKind(NativeFilterKind):
    def __cinit__(self):
        self.vt = &NF_HMUT_VT

    cdef void* make_config(self, object config, bint per_route, int regex_copies) except NULL:
        from fastproxy.http.native_filters import HeaderMutation, Mutations
        cdef _NfBuild b
        cdef NHdrMutCfg* c
        _nf_expect(config, HeaderMutation, "envoy.filters.http.header_mutation")
        b = _nf_new(sizeof(NHdrMutCfg), regex_copies)
        c = <NHdrMutCfg*>b.o
        try:
            m = config.mutations
            if not isinstance(m, Mutations):
                raise ConfigError("mutations", f"expected Mutations, got {type(m).__name__}")
            c.req = b.ops(list(m.request_mutations), &c.nreq, "mutations.request_mutations")
            c.resp = b.ops(list(m.response_mutations), &c.nresp, "mutations.response_mutations")
        except BaseException:
            _nf_destroy_config(c)
            raise
        return c


# ---------------------------------------------------------------- envoy.filters.http.local_ratelimit

# http_local_rate_limit.<prefix>.* (LRL_*, LOCAL_RATE_LIMIT_STATS): fastproxy/stats_table.py.


cdef struct NRateCfg:
    NOwned own
    uint8_t has_bucket
    int64_t max_tokens
    int64_t per_fill
    int64_t interval_ms
    int64_t tokens                  # atomic
    int64_t last_fill               # atomic: CLOCK_MONOTONIC ms of the last fill
    NPercent enabled
    NPercent enforced
    int status
    NHdrOp* hdrs
    int nhdrs
    int64_t* stats                  # a StatBlock's single row (atomic adds from every worker)


cdef bint _nf_take_token(NRateCfg* c) noexcept nogil:
    cdef int64_t now = <int64_t>clock_ms()
    cdef int64_t last = nf_load_i64(&c.last_fill)
    cdef int64_t periods, t, nt
    if now - last >= c.interval_ms:
        periods = (now - last) // c.interval_ms
        # one worker wins the refill of these periods; the others see the new last_fill
        if nf_cas_i64(&c.last_fill, last, last + periods * c.interval_ms):
            while True:
                t = nf_load_i64(&c.tokens)
                nt = t + periods * c.per_fill
                if nt > c.max_tokens or nt < t:
                    nt = c.max_tokens
                if nf_cas_i64(&c.tokens, t, nt):
                    break
    while True:
        t = nf_load_i64(&c.tokens)
        if t <= 0:
            return False
        if nf_cas_i64(&c.tokens, t, t - 1):
            return True


cdef int _nf_lrl_decode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef NRateCfg* c = <NRateCfg*>_nf_route_cfg(s)
    cdef Worker* w = s.c.w
    if c == NULL:
        c = <NRateCfg*>_nf_filter_cfg(s)
    if c == NULL or not c.has_bucket or not _nf_percent_hit(w, &c.enabled):
        return FP_CONTINUE
    nf_add_i64(&c.stats[LRL_ENABLED], 1)
    if _nf_take_token(c):
        nf_add_i64(&c.stats[LRL_OK], 1)
        return FP_CONTINUE
    nf_add_i64(&c.stats[LRL_RATE_LIMITED], 1)
    if not _nf_percent_hit(w, &c.enforced):
        return FP_CONTINUE
    nf_add_i64(&c.stats[LRL_ENFORCED], 1)
    _nf_apply_ops(&s.fc.local_headers, c.hdrs, c.nhdrs)
    hf_request_local_reply(s, c.status, "local_rate_limited", 18)
    return FP_STOP_ITERATION


cdef fp_http_filter NF_LRL_VT
NF_LRL_VT.abi_version = FP_FILTER_ABI_VERSION
NF_LRL_VT.destroy_config = _nf_destroy_config
NF_LRL_VT.create = _nf_create_stream
NF_LRL_VT.decode_headers = _nf_lrl_decode_headers


_NF_STATS = {}                      # "http_local_rate_limit.<prefix>" -> StatBlockHandle (process-wide)


def native_filter_stats(names=None):
    """{"<block>.<stat>": value} for the native filters' stat blocks (``names``: only these
    blocks, e.g. "http_local_rate_limit.<stat_prefix>")."""
    out = {}
    for name, block in list(_NF_STATS.items()):
        if names is not None and name not in names:
            continue
        for stat, value in (<StatBlockHandle>block).read().items():
            out[f"{name}.{stat}"] = value
    return out


cdef class _LocalRateLimitKind(NativeFilterKind):
    def __cinit__(self):
        self.vt = &NF_LRL_VT

    cdef void* make_config(self, object config, bint per_route, int regex_copies) except NULL:
        from fastproxy.http.native_filters import LocalRateLimit, TokenBucket
        cdef _NfBuild b
        cdef NRateCfg* c
        cdef StatBlockHandle sb
        _nf_expect(config, LocalRateLimit, "envoy.filters.http.local_ratelimit")
        if not isinstance(config.stat_prefix, str) or not config.stat_prefix:
            raise ConfigError("stat_prefix", "a non-empty stat_prefix is required")
        b = _nf_new(sizeof(NRateCfg), regex_copies)
        c = <NRateCfg*>b.o
        try:
            name = "http_local_rate_limit." + config.stat_prefix
            sb = _NF_STATS.get(name)
            if sb is None:
                sb = _NF_STATS[name] = _statblock_handle(LOCAL_RATE_LIMIT_STATS, LOCAL_RATE_LIMIT_GAUGES, 1)
            c.stats = <int64_t*>sb.b.v
            tb = config.token_bucket
            if tb is not None:
                if not isinstance(tb, TokenBucket):
                    raise ConfigError("token_bucket", f"expected a TokenBucket, got {type(tb).__name__}")
                if not isinstance(tb.max_tokens, int) or not 0 <= tb.max_tokens <= 0xffffffff:
                    raise ConfigError("token_bucket.max_tokens", f"expected an unsigned 32-bit integer, got {tb.max_tokens!r}")
                if not isinstance(tb.tokens_per_fill, int) or not 0 < tb.tokens_per_fill <= 0xffffffff:
                    raise ConfigError("token_bucket.tokens_per_fill", f"must be > 0, got {tb.tokens_per_fill!r}")
                if not isinstance(tb.fill_interval, (int, float)) or tb.fill_interval <= 0:
                    raise ConfigError("token_bucket.fill_interval", f"must be > 0, got {tb.fill_interval!r}")
                c.has_bucket = 1
                c.max_tokens = tb.max_tokens
                c.per_fill = tb.tokens_per_fill
                c.interval_ms = max(1, int(round(tb.fill_interval * 1000)))
                c.tokens = c.max_tokens
                c.last_fill = <int64_t>clock_ms()
            _nf_percent(&c.enabled, config.filter_enabled, "filter_enabled.default_value")
            _nf_percent(&c.enforced, config.filter_enforced, "filter_enforced.default_value")
            if not isinstance(config.status, int) or not 200 <= config.status <= 599:
                raise ConfigError("status", f"expected an HTTP status, got {config.status!r}")
            c.status = config.status if config.status >= 400 else 429
            c.hdrs = b.ops(list(config.response_headers_to_add), &c.nhdrs, "response_headers_to_add")
        except BaseException:
            _nf_destroy_config(c)
            raise
        return c


# ---------------------------------------------------------------- envoy.filters.http.health_check

cdef struct NHealthCfg:
    NOwned own
    uint8_t pass_through
    RouteHeaderMatcher* m
    int nm


cdef int _nf_hc_decode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef NHealthCfg* c = <NHealthCfg*>_nf_filter_cfg(s)
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs
    cdef int i
    cdef bint hit = True
    if c == NULL or c.pass_through:
        return FP_CONTINUE
    if c.nm:
        # The headers as the routes see them, matched by the routes' own matcher.
        hdrs = _route_input(s, &r, stack)
        if hdrs == NULL:
            return FP_CONTINUE
        for i in range(c.nm):
            if not _rt_header_matches(&c.m[i], &r):
                hit = False
                break
        _route_input_free(hdrs, stack)
        if not hit:
            return FP_CONTINUE
    hf_request_local_reply(s, 200, NULL, 0)
    return FP_STOP_ITERATION


cdef fp_http_filter NF_HC_VT
NF_HC_VT.abi_version = FP_FILTER_ABI_VERSION
NF_HC_VT.destroy_config = _nf_destroy_config
NF_HC_VT.create = _nf_create_stream
NF_HC_VT.decode_headers = _nf_hc_decode_headers


cdef class _HealthCheckKind(NativeFilterKind):
    def __cinit__(self):
        self.vt = &NF_HC_VT

    cdef void* make_config(self, object config, bint per_route, int regex_copies) except NULL:
        from fastproxy.http.native_filters import HealthCheck
        cdef _NfBuild b
        cdef NHealthCfg* c
        cdef int i
        _nf_expect(config, HealthCheck, "envoy.filters.http.health_check")
        b = _nf_new(sizeof(NHealthCfg), regex_copies)
        c = <NHealthCfg*>b.o
        try:
            c.pass_through = bool(config.pass_through_mode)
            headers = list(config.headers)
            c.nm = len(headers)
            if headers:
                c.m = <RouteHeaderMatcher*>b.alloc(len(headers) * sizeof(RouteHeaderMatcher))
            for i, m in enumerate(headers):
                b.header_matcher(&c.m[i], m, f"headers[{i}]")
        except BaseException:
            _nf_destroy_config(c)
            raise
        return c


# ---------------------------------------------------------------- envoy.filters.http.buffer

cdef struct NBufCfg:
    NOwned own
    uint8_t disabled
    uint32_t max_bytes


cdef NBufCfg* _nf_buf_cfg(HStream* s) noexcept nogil:
    cdef NBufCfg* c = <NBufCfg*>_nf_route_cfg(s)
    if c == NULL:
        c = <NBufCfg*>_nf_filter_cfg(s)
    if c == NULL or c.disabled:
        return NULL
    return c


cdef int _nf_buf_too_large(HStream* s) noexcept nogil:
    stat_add((<HttpCfg*>s.c.cfg.http).stats, s.c.w, H_RQ_TOO_LARGE, 1)
    hf_request_local_reply(s, 413, "Payload Too Large", 17)
    return FP_STOP_ITERATION


cdef int _nf_buf_decode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef NBufCfg* c = _nf_buf_cfg(s)
    if c == NULL or end_stream:
        return FP_CONTINUE
    if s.req_content_length > <int64_t>c.max_bytes or s.fc.dec.held.length > c.max_bytes:
        # (held: body that arrived while an earlier filter held the headers)
        return _nf_buf_too_large(s)
    # Body bytes held past this filter count against the stream's buffer limit (413 beyond).
    s.fc.buffer_limit = c.max_bytes
    # As Envoy's filter stops the headers: the router sees them (and connects upstream)
    # only once the whole body is here, so an over-limit body is refused without any.
    return hf_hold_until_body_end(s)


cdef int _nf_buf_decode_data(void* self, fp_body* b, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef NBufCfg* c = _nf_buf_cfg(s)
    if c == NULL:
        return FP_CONTINUE
    if (<Chain*>b).length > c.max_bytes:
        return _nf_buf_too_large(s)
    return FP_CONTINUE if end_stream else FP_STOP_AND_BUFFER


cdef fp_http_filter NF_BUF_VT
NF_BUF_VT.abi_version = FP_FILTER_ABI_VERSION
NF_BUF_VT.destroy_config = _nf_destroy_config
NF_BUF_VT.create = _nf_create_stream
NF_BUF_VT.decode_headers = _nf_buf_decode_headers
NF_BUF_VT.decode_data = _nf_buf_decode_data


cdef class _BufferKind(NativeFilterKind):
    def __cinit__(self):
        self.vt = &NF_BUF_VT

    cdef void* make_config(self, object config, bint per_route, int regex_copies) except NULL:
        from fastproxy.http.native_filters import Buffer, BufferPerRoute
        cdef _NfBuild b
        cdef NBufCfg* c
        if per_route and isinstance(config, BufferPerRoute):
            if config.disabled and config.buffer is not None:
                raise ConfigError("envoy.filters.http.buffer", "BufferPerRoute: only one of disabled or buffer")
            if not config.disabled:
                if config.buffer is None:
                    raise ConfigError("envoy.filters.http.buffer", "BufferPerRoute: one of disabled or buffer is required")
                return self.make_config(config.buffer, False, regex_copies)
            b = _nf_new(sizeof(NBufCfg), regex_copies)
            c = <NBufCfg*>b.o
            c.disabled = 1
            return c
        _nf_expect(config, Buffer, "envoy.filters.http.buffer")
        if not isinstance(config.max_request_bytes, int) or not 0 < config.max_request_bytes <= 0xffffffff:
            raise ConfigError("max_request_bytes", f"must be > 0, got {config.max_request_bytes!r}")
        b = _nf_new(sizeof(NBufCfg), regex_copies)
        c = <NBufCfg*>b.o
        c.max_bytes = config.max_request_bytes
        return c


# ---------------------------------------------------------------- envoy.filters.http.cors

cdef struct NCorsCfg:
    NOwned own
    uint8_t is_policy               # 0: the filter-level (empty) config
    RouteStringMatch* origins
    int norigins
    const char* allow_methods
    size_t allow_methods_n
    const char* allow_headers
    size_t allow_headers_n
    const char* expose_headers
    size_t expose_headers_n
    const char* max_age
    size_t max_age_n
    uint8_t allow_credentials


cdef bint _nf_origin_allowed(const NCorsCfg* p, const char* o, size_t n,
                             unsigned int worker) noexcept nogil:
    cdef int i
    for i in range(p.norigins):
        # a matcher that accepts "*" accepts every origin (Envoy's rule)
        if (_rt_string_match(&p.origins[i], "*", 1, worker)
                or _rt_string_match(&p.origins[i], o, n, worker)):
            return True
    return False


cdef const NCorsCfg* _nf_cors_policy(HStream* s, const char** origin, size_t* on) noexcept nogil:
    """The route's policy if the request is a CORS request whose origin it allows."""
    cdef const NCorsCfg* p = <const NCorsCfg*>_nf_route_cfg(s)
    if p == NULL or not p.is_policy:
        return NULL
    origin[0] = hm_get(&s.fc.req, "origin", 6, on)
    if origin[0] == NULL or on[0] == 0 or not _nf_origin_allowed(p, origin[0], on[0], <unsigned int>s.c.w.index):
        return NULL
    return p


cdef int _nf_cors_decode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef const char* origin
    cdef size_t on, n
    cdef const char* v
    cdef HMap* lh
    cdef const NCorsCfg* p = _nf_cors_policy(s, &origin, &on)
    if p == NULL:
        return FP_CONTINUE
    v = hm_get(<HMap*>h, ":method", 7, &n)
    if v == NULL or n != 7 or memcmp(v, "OPTIONS", 7) != 0:
        return FP_CONTINUE
    v = hm_get(<HMap*>h, "access-control-request-method", 29, &n)
    if v == NULL or n == 0:
        return FP_CONTINUE
    # a preflight: answered here
    lh = &s.fc.local_headers
    hm_add(lh, "access-control-allow-origin", 27, origin, on)
    if p.allow_credentials:
        hm_add(lh, "access-control-allow-credentials", 32, "true", 4)
    if p.allow_methods_n:
        hm_add(lh, "access-control-allow-methods", 28, p.allow_methods, p.allow_methods_n)
    if p.allow_headers_n:
        hm_add(lh, "access-control-allow-headers", 28, p.allow_headers, p.allow_headers_n)
    if p.max_age_n:
        hm_add(lh, "access-control-max-age", 22, p.max_age, p.max_age_n)
    hf_request_local_reply(s, 200, NULL, 0)
    return FP_STOP_ITERATION


cdef int _nf_cors_encode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef const char* origin
    cdef size_t on
    cdef const NCorsCfg* p = _nf_cors_policy(s, &origin, &on)
    if p == NULL:
        return FP_CONTINUE
    hm_set(<HMap*>h, "access-control-allow-origin", 27, origin, on)
    if p.allow_credentials:
        hm_set(<HMap*>h, "access-control-allow-credentials", 32, "true", 4)
    if p.expose_headers_n:
        hm_set(<HMap*>h, "access-control-expose-headers", 29, p.expose_headers, p.expose_headers_n)
    return FP_CONTINUE


cdef fp_http_filter NF_CORS_VT
NF_CORS_VT.abi_version = FP_FILTER_ABI_VERSION
NF_CORS_VT.destroy_config = _nf_destroy_config
NF_CORS_VT.create = _nf_create_stream
NF_CORS_VT.decode_headers = _nf_cors_decode_headers
NF_CORS_VT.encode_headers = _nf_cors_encode_headers


cdef class _CorsKind(NativeFilterKind):
    def __cinit__(self):
        self.vt = &NF_CORS_VT

    cdef void* make_config(self, object config, bint per_route, int regex_copies) except NULL:
        from fastproxy.http.native_filters import Cors, CorsPolicy
        cdef _NfBuild b
        cdef NCorsCfg* c
        cdef int i
        if not per_route:
            if config is not None:
                _nf_expect(config, Cors, "envoy.filters.http.cors")
            b = _nf_new(sizeof(NCorsCfg), regex_copies)
            c = <NCorsCfg*>b.o
            return c
        _nf_expect(config, CorsPolicy, "envoy.filters.http.cors (per route)")
        if not config.forward_not_matching_preflights:
            raise ConfigError("forward_not_matching_preflights", "only true (Envoy's default) is supported")
        b = _nf_new(sizeof(NCorsCfg), regex_copies)
        c = <NCorsCfg*>b.o
        try:
            c.is_policy = 1
            origins = list(config.allow_origin_string_match)
            c.norigins = len(origins)
            if origins:
                c.origins = <RouteStringMatch*>b.alloc(len(origins) * sizeof(RouteStringMatch))
            for i, m in enumerate(origins):
                b.string_match(&c.origins[i], m, f"allow_origin_string_match[{i}]")
            b.path = "allow_methods"
            c.allow_methods = b.bytes_(config.allow_methods or "", &c.allow_methods_n)
            b.path = "allow_headers"
            c.allow_headers = b.bytes_(config.allow_headers or "", &c.allow_headers_n)
            b.path = "expose_headers"
            c.expose_headers = b.bytes_(config.expose_headers or "", &c.expose_headers_n)
            b.path = "max_age"
            c.max_age = b.bytes_(config.max_age or "", &c.max_age_n)
            c.allow_credentials = bool(config.allow_credentials)
        except BaseException:
            _nf_destroy_config(c)
            raise
        return c


NATIVE_HTTP_FILTERS["envoy.filters.http.fault"] = _FaultKind()
NATIVE_HTTP_FILTERS["envoy.filters.http.header_mutation"] = _HeaderMutationKind()
NATIVE_HTTP_FILTERS["envoy.filters.http.local_ratelimit"] = _LocalRateLimitKind()
NATIVE_HTTP_FILTERS["envoy.filters.http.health_check"] = _HealthCheckKind()
NATIVE_HTTP_FILTERS["envoy.filters.http.buffer"] = _BufferKind()
NATIVE_HTTP_FILTERS["envoy.filters.http.cors"] = _CorsKind()
