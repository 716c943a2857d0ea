# envoy.filters.http.local_ratelimit: a token bucket every worker shares (atomics), its
# http_local_rate_limit.<stat_prefix>.* stats (LRL_*, LOCAL_RATE_LIMIT_STATS: defined in
# fastproxy/stats_table.py) and the 429 it answers with. Config struct: native_decls.pxi.


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
    cdef NRateCfg* c = <NRateCfg*>hf_route_config(s)
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


NATIVE_HTTP_FILTERS["envoy.filters.http.local_ratelimit"] = _LocalRateLimitKind()
