# Declarations of the native HTTP filters (core/filters/): Envoy's fault, header_mutation,
# local_ratelimit, health_check, buffer and cors, one implementation file each, with the
# helpers they share in native_common.pxi. Each filter is an fp_http_filter table whose hooks
# are `noexcept nogil` and never touch a Python object; a chain of only these never takes
# the GIL. Their configs are the C structs below, built once on the main thread (make_config,
# from the models in fastproxy/http/native_filters.py) and read-only afterwards, except the
# atomics of a token bucket and of a fault's active count, which every worker shares.
#
# Per-stream state: most of these filters need none, so their `create` returns the stream
# itself (a non-NULL "self" that costs no allocation); the hooks find their filter-level
# config through fc.cfgs[fc.current] and the per-route one through hf_route_config. The
# fault filter allocates a small state with its delay timer (cancelled in destroy, so a
# stream that ends while delayed never leaves a timer behind).
#
# String and header matchers (cors origins, health_check headers) are the router's own:
# RouteStringMatch / RouteHeaderMatcher (core/router/decls.pxi), matched by
# core/router/matchers.pxi and built by _MatchBuilder (core/router/build.pxi).

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


# ---------------------------------------------------------------- shared

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


# ---------------------------------------------------------------- envoy.filters.http.header_mutation

cdef struct NHdrMutCfg:
    NOwned own
    NHdrOp* req
    int nreq
    NHdrOp* resp
    int nresp


# ---------------------------------------------------------------- envoy.filters.http.local_ratelimit

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


# ---------------------------------------------------------------- envoy.filters.http.health_check

cdef struct NHealthCfg:
    NOwned own
    uint8_t pass_through
    RouteHeaderMatcher* m
    int nm


# ---------------------------------------------------------------- envoy.filters.http.buffer

cdef struct NBufCfg:
    NOwned own
    uint8_t disabled
    uint32_t max_bytes


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
