# The C filter ABI's callback table (fp_api, include/fastproxy/fastproxy_filter.h): what a C
# or native HTTP filter calls to read and change header maps and bodies, to answer the
# request itself and to continue a stopped iteration. Each entry is a thin, checked wrapper
# over the filter manager (core/http/filter_manager.pxi); the table is filled once, at import.

cdef size_t _api_headers_len(const fp_headers* h) noexcept nogil:
    return (<const HMap*>h).l.n

cdef int _api_headers_at(const fp_headers* h, size_t i, fp_str* name, fp_str* value) noexcept nogil:
    cdef const HMap* m = <const HMap*>h
    if i >= m.l.n:
        return -1
    name.p = m.l.v[i].name.p
    name.n = m.l.v[i].name.n
    value.p = m.l.v[i].value.p
    value.n = m.l.v[i].value.n
    return 0

cdef int _api_headers_get(const fp_headers* h, const char* name, size_t nn, fp_str* value) noexcept nogil:
    cdef size_t vn = 0
    cdef const char* v = hm_get(<const HMap*>h, name, nn, &vn)
    if v == NULL:
        return 0
    value.p = v
    value.n = vn
    return 1

cdef int _api_headers_add(fp_headers* h, const char* name, size_t nn, const char* value, size_t vn) noexcept nogil:
    return hm_add(<HMap*>h, name, nn, value, vn)

cdef int _api_headers_set(fp_headers* h, const char* name, size_t nn, const char* value, size_t vn) noexcept nogil:
    return hm_set(<HMap*>h, name, nn, value, vn)

cdef size_t _api_headers_remove(fp_headers* h, const char* name, size_t nn) noexcept nogil:
    return hm_remove(<HMap*>h, name, nn)

cdef size_t _api_body_len(const fp_body* b) noexcept nogil:
    return (<const Chain*>b).length

cdef size_t _api_body_segments(const fp_body* b, fp_str* out, size_t mx) noexcept nogil:
    cdef const Chain* c = <const Chain*>b
    cdef size_t i = 0
    cdef const SliceRef* r
    while i < mx and <int>i < c.count:
        r = &c.refs[c.head + i]
        out[i].p = r.s.data + r.off
        out[i].n = r.len
        i += 1
    return i

cdef int _api_body_append(fp_body* b, const char* p, size_t n) noexcept nogil:
    return chain_append(<Chain*>b, p, n) if n else 0

cdef int _api_body_prepend(fp_body* b, const char* p, size_t n) noexcept nogil:
    return chain_prepend(<Chain*>b, p, n) if n else 0

cdef void _api_body_drain(fp_body* b, size_t n) noexcept nogil:
    chain_drain(<Chain*>b, n)

cdef int _api_send_local_reply(fp_stream* st, int status, const char* body, size_t n) noexcept nogil:
    return hf_request_local_reply(<HStream*>st, status, body, n)

cdef void _api_continue_decoding(fp_stream* st) noexcept nogil:
    hf_continue(<HStream*>st, False)

cdef void _api_continue_encoding(fp_stream* st) noexcept nogil:
    hf_continue(<HStream*>st, True)

cdef void* _api_route_config(fp_stream* st) noexcept nogil:
    return hf_route_config(<HStream*>st)

cdef int _api_filter_state_set(fp_stream* st, const char* key, size_t kn, const char* value,
                               size_t vn) noexcept nogil:
    cdef HStream* s = <HStream*>st
    if s.fc == NULL or key == NULL:
        return -1
    return hf_filter_state_set(s.fc, key, kn, value, vn)

cdef int _api_filter_state_get(fp_stream* st, const char* key, size_t kn, fp_str* value) noexcept nogil:
    cdef HStream* s = <HStream*>st
    cdef size_t vn = 0
    cdef const char* v = hf_filter_state_get(s.fc, key, kn, &vn) if key != NULL else NULL
    if v == NULL:
        return 0
    value.p = v
    value.n = vn
    return 1

cdef fp_api FP_API
FP_API.abi_version = FP_FILTER_ABI_VERSION
FP_API.headers_len = _api_headers_len
FP_API.headers_at = _api_headers_at
FP_API.headers_get = _api_headers_get
FP_API.headers_add = _api_headers_add
FP_API.headers_set = _api_headers_set
FP_API.headers_remove = _api_headers_remove
FP_API.body_len = _api_body_len
FP_API.body_segments = _api_body_segments
FP_API.body_append = _api_body_append
FP_API.body_prepend = _api_body_prepend
FP_API.body_drain = _api_body_drain
FP_API.send_local_reply = _api_send_local_reply
FP_API.continue_decoding = _api_continue_decoding
FP_API.continue_encoding = _api_continue_encoding
FP_API.route_config = _api_route_config
FP_API.filter_state_set = _api_filter_state_set
FP_API.filter_state_get = _api_filter_state_get
