# envoy.filters.http.cors: answers preflights and adds the access-control-* response headers
# for origins the route's policy allows (origins matched by the router's string matcher,
# core/router/matchers.pxi). Config struct: native_decls.pxi.

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
    cdef const NCorsCfg* p = <const NCorsCfg*>hf_route_config(s)
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


NATIVE_HTTP_FILTERS["envoy.filters.http.cors"] = _CorsKind()
