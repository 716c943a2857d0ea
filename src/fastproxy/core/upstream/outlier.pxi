# Outlier detection (Envoy's OutlierDetection): per-host results reported by the router and
# the pool (consecutive 5xx, gateway and local-origin failures, success rate, failure
# percentage), ejections (HF_FAILED_OUTLIER_CHECK) and their expiry. Owner: issue 16's OD
# work.
#
# Reporting (contract 4 of the issue's API): the router and the pool call
# outlier_report_http (a response head from the host) and outlier_report_local (a
# connection's or request's failure, or a request bound to a connection) with the host's
# stat block. A cluster without outlier detection costs a load and a branch: its hosts'
# HostShared.od.det is NULL.

cdef enum OutlierResult:        # what outlier_report_local reports (Envoy's Outlier::Result)
    OUT_NONE = 0                # nothing to report (a circuit breaker's overflow)
    OUT_CONNECT_FAILED = 1      # LocalOriginConnectFailed: connect failure, reset, termination
    OUT_TIMEOUT = 2             # LocalOriginTimeout (the route's or a try's timeout)
    OUT_RESET = 3               # a reset of an upstream request (Envoy reports it as a
                                #   connect failure: LocalOriginConnectFailed)
    OUT_CONNECT_SUCCESS = 4     # LocalOriginConnectSuccess: a request bound to a connection


cdef extern from *:
    """
    /* Outlier detection's atomics (core/upstream/outlier.pxi): any worker reports. */
    static inline uint64_t fp_od_xchg_u64(uint64_t *p, uint64_t v) {
        return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
    }
    static inline void fp_od_add_u64(uint64_t *p, uint64_t v) {
        __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
    }
    static inline void *fp_od_load_ptr(void **p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fp_od_store_ptr(void **p, void *v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline uint32_t fp_od_flags_or(uint32_t *p, uint32_t v) {
        return __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL);
    }
    static inline uint32_t fp_od_flags_clear(uint32_t *p, uint32_t v) {
        return __atomic_fetch_and(p, ~v, __ATOMIC_ACQ_REL);
    }
    """
    uint64_t fp_od_xchg_u64(uint64_t* p, uint64_t v) nogil
    void fp_od_add_u64(uint64_t* p, uint64_t v) nogil
    void* fp_od_load_ptr(void** p) nogil
    void fp_od_store_ptr(void** p, void* v) nogil
    uint32_t fp_od_flags_or(uint32_t* p, uint32_t v) nogil
    uint32_t fp_od_flags_clear(uint32_t* p, uint32_t v) nogil


cdef inline OutlierDetector* _od_of(HostShared* hs) noexcept nogil:
    return <OutlierDetector*>fp_od_load_ptr(<void**>&hs.od.det)


cdef void outlier_report_http(StatBlock* hstats, Worker* w, int status) noexcept nogil:
    """A response head with `status` came from the host whose stat block is hstats."""
    cdef HostShared* hs = host_shared(hstats)
    if hs == NULL or hs.od.det == NULL:
        return
    _od_put_http(hs, status)


cdef void outlier_report_local(StatBlock* hstats, Worker* w, int kind) noexcept nogil:
    """A local-origin result (OUT_*) for the host whose stat block is hstats."""
    cdef HostShared* hs = host_shared(hstats)
    if hs == NULL or hs.od.det == NULL or kind == OUT_NONE:
        return
    _od_put_local(hs, kind)


cdef inline int outlier_failure_kind(const char* reason, bint resp_started) noexcept nogil:
    """What an upstream request that failed with `reason` (stream_upstream_failed) reports:
    Envoy's router reports every reset as a connect failure, a timeout while it still waits
    for the response head, nothing for a circuit breaker's overflow (a cluster-wide limit,
    not the host's fault)."""
    if reason == UPSTREAM_OVERFLOW:
        return OUT_NONE
    if reason == UPSTREAM_TIMEOUT:
        return OUT_NONE if resp_started else OUT_TIMEOUT
    return OUT_CONNECT_FAILED


cdef void _od_put_http(HostShared* hs, int status) noexcept nogil:
    pass


cdef void _od_put_local(HostShared* hs, int kind) noexcept nogil:
    pass
