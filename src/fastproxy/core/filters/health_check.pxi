# envoy.filters.http.health_check (non-pass-through): answers 200 to requests whose headers
# match, with the router's header matcher (core/router/matchers.pxi) over the same input the
# routes see. Config struct: native_decls.pxi.

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


NATIVE_HTTP_FILTERS["envoy.filters.http.health_check"] = _HealthCheckKind()
