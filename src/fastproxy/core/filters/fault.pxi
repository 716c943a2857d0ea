# envoy.filters.http.fault: delays and aborts a share of the requests (per route or for
# the whole chain), at most max_active_faults at once across the workers. Config and stream
# structs: native_decls.pxi; shared helpers: native_common.pxi.

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
    cdef NFaultCfg* cfg = <NFaultCfg*>hf_route_config(s)
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


NATIVE_HTTP_FILTERS["envoy.filters.http.fault"] = _FaultKind()
