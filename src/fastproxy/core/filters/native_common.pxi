# What the native HTTP filters share on the workers (no GIL): freeing a config, finding the
# filter-level config, percentages, header mutations. A filter's per-route config is
# hf_route_config's (core/http/filter_manager.pxi), which picks the route the first time a
# filter asks for it, as Envoy caches it. Structs: native_decls.pxi.

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
