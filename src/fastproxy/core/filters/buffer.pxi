# envoy.filters.http.buffer: holds the request until its whole body is here (413 beyond
# max_request_bytes), so the router connects upstream only then. Config struct:
# native_decls.pxi.

cdef NBufCfg* _nf_buf_cfg(HStream* s) noexcept nogil:
    cdef NBufCfg* c = <NBufCfg*>hf_route_config(s)
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


NATIVE_HTTP_FILTERS["envoy.filters.http.buffer"] = _BufferKind()
