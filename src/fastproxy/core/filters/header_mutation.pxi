# envoy.filters.http.header_mutation: request and response header operations, the route's
# (per-route config) before the chain's. Config struct: native_decls.pxi.

cdef int _nf_hmut_decode_headers(void* self, fp_headers* h, int end_stream) noexcept nogil:
    cdef HStream* s = _nf_stream(self)
    cdef NHdrMutCfg* r = <NHdrMutCfg*>hf_route_config(s)
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


NATIVE_HTTP_FILTERS["envoy.filters.http.header_mutation"] = _HeaderMutationKind()
