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
    """
    uint64_t fp_od_xchg_u64(uint64_t* p, uint64_t v) nogil
    void fp_od_add_u64(uint64_t* p, uint64_t v) nogil
    void* fp_od_load_ptr(void** p) nogil
    void fp_od_store_ptr(void** p, void* v) nogil

from libc.math cimport sqrt


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


# ---------------------------------------------------------------- the detector

cdef enum:                       # why a host is ejected (Envoy's OutlierEjectionType)
    ODT_5XX = 0
    ODT_GATEWAY = 1
    ODT_LOCAL = 2               # consecutive local-origin failures
    ODT_SR = 3                  # success rate
    ODT_SR_LOCAL = 4
    ODT_FP = 5                  # failure percentage
    ODT_FP_LOCAL = 6
    ODT_N = 7

cdef struct OutlierConfig:      # the cluster's OutlierDetection (upstream/outlier.py to_spec)
    uint64_t interval_ms
    uint64_t base_ejection_ms
    uint64_t max_ejection_ms
    uint64_t max_jitter_ms
    int consecutive_5xx         # thresholds: the counters reach them exactly once per run
    int consecutive_gateway_failure
    int consecutive_local_origin_failure
    uint32_t max_ejection_percent
    uint8_t always_eject_one_host
    uint8_t split               # split_external_local_origin_errors
    uint8_t hc_uneject          # successful_active_health_check_uneject_host
    uint64_t sr_minimum_hosts
    uint64_t sr_request_volume
    uint64_t sr_stdev_factor    # x1000
    uint64_t fp_threshold
    uint64_t fp_minimum_hosts
    uint64_t fp_request_volume
    uint32_t enforcing[7]       # by OdType: the % chance a detected ejection is carried out

cdef struct OutlierDetector:
    # One per cluster (ClusterCfg.outlier), made when the cluster first configures outlier
    # detection and freed with the ClusterCfg: a stream that reports holds the cluster, so
    # the detector a host's HostShared points to is alive. `lock` guards everything but
    # `cfg`'s thresholds, which the workers read (a config change is atomic enough: each
    # is one aligned word). Taken by a worker only when a counter reaches its threshold.
    pthread_mutex_t lock
    ClusterCfg* cluster         # the owner (no reference)
    StatBlock* stats            # cluster.<name>.outlier_detection.* (one reference), counted
                                #   in row 0 under `lock` (any thread ejects)
    OutlierConfig cfg
    int enabled
    int nhosts
    StatBlock** blocks          # the cluster's hosts (one reference each), config order
    uint64_t* prev              # per host: last interval's totals (4 each: total, success,
                                #   local total, local success)
    double* rates               # per host: scratch for the success-rate pass
    int* valid                  # per host: scratch (indexes)
    int nejected
    uint64_t rng
    double sr_average[2]        # last interval's (external, local origin); -1: not computed
    double sr_threshold[2]


cdef inline HostShared* _od_host(OutlierDetector* d, int i) noexcept nogil:
    return <HostShared*>d.blocks[i].ext


cdef inline void _od_stat(OutlierDetector* d, int i, uint64_t n) noexcept nogil:
    # (under d.lock: one writer at a time, whichever thread it is)
    if d.stats != NULL:
        d.stats.v[i] += n


cdef inline void _od_active_gauge(OutlierDetector* d) noexcept nogil:
    if d.stats != NULL:
        d.stats.v[OD_EJECTIONS_ACTIVE] = <uint64_t>d.nejected


cdef int[7] _OD_DETECTED
cdef int[7] _OD_ENFORCED
_OD_DETECTED[:] = [OD_EJECTIONS_DETECTED_CONSECUTIVE_5XX, OD_EJECTIONS_DETECTED_CONSECUTIVE_GATEWAY_FAILURE,
                   OD_EJECTIONS_DETECTED_CONSECUTIVE_LOCAL_ORIGIN_FAILURE, OD_EJECTIONS_DETECTED_SUCCESS_RATE,
                   OD_EJECTIONS_DETECTED_LOCAL_ORIGIN_SUCCESS_RATE, OD_EJECTIONS_DETECTED_FAILURE_PERCENTAGE,
                   OD_EJECTIONS_DETECTED_FAILURE_PERCENTAGE_LOCAL_ORIGIN]
_OD_ENFORCED[:] = [OD_EJECTIONS_ENFORCED_CONSECUTIVE_5XX, OD_EJECTIONS_ENFORCED_CONSECUTIVE_GATEWAY_FAILURE,
                   OD_EJECTIONS_ENFORCED_CONSECUTIVE_LOCAL_ORIGIN_FAILURE, OD_EJECTIONS_ENFORCED_SUCCESS_RATE,
                   OD_EJECTIONS_ENFORCED_LOCAL_ORIGIN_SUCCESS_RATE, OD_EJECTIONS_ENFORCED_FAILURE_PERCENTAGE,
                   OD_EJECTIONS_ENFORCED_FAILURE_PERCENTAGE_LOCAL_ORIGIN]


cdef void _od_put_http(HostShared* hs, int status) noexcept nogil:
    """Envoy's putHttpResponseCode: a 5xx counts toward consecutive_5xx, a 502/503/504
    toward consecutive_gateway_failure too; anything else is a success and ends both runs."""
    cdef OutlierDetector* d = _od_of(hs)
    if d == NULL:
        return
    fp_od_add_u64(&hs.od.sr_total, 1)
    if 500 <= status <= 599:
        if status == 502 or status == 503 or status == 504:
            if fp_atomic_add_int(&hs.od.consecutive_gateway_failure, 1) == d.cfg.consecutive_gateway_failure:
                _od_consecutive(d, hs, ODT_GATEWAY)
        else:
            fp_store_int(&hs.od.consecutive_gateway_failure, 0)
        if fp_atomic_add_int(&hs.od.consecutive_5xx, 1) == d.cfg.consecutive_5xx:
            _od_consecutive(d, hs, ODT_5XX)
    else:
        fp_od_add_u64(&hs.od.sr_success, 1)
        fp_store_int(&hs.od.consecutive_5xx, 0)
        fp_store_int(&hs.od.consecutive_gateway_failure, 0)


cdef void _od_put_local(HostShared* hs, int kind) noexcept nogil:
    """Envoy's putResult: without split_external_local_origin_errors a local failure is
    the status the router answers with (503, a timeout 504) and a connection's success is
    not counted; with it, local results have their own counters."""
    cdef OutlierDetector* d = _od_of(hs)
    if d == NULL:
        return
    if not d.cfg.split:
        if kind != OUT_CONNECT_SUCCESS:
            _od_put_http(hs, 504 if kind == OUT_TIMEOUT else 503)
        return
    fp_od_add_u64(&hs.od.sr_local_total, 1)
    if kind == OUT_CONNECT_SUCCESS:
        fp_od_add_u64(&hs.od.sr_local_success, 1)
        fp_store_int(&hs.od.consecutive_local_origin_failure, 0)
    elif fp_atomic_add_int(&hs.od.consecutive_local_origin_failure, 1) == d.cfg.consecutive_local_origin_failure:
        _od_consecutive(d, hs, ODT_LOCAL)


cdef void _od_consecutive(OutlierDetector* d, HostShared* hs, int kind) noexcept nogil:
    """A consecutive-failure counter reached its threshold: the host is ejected now (Envoy
    posts it to its main thread; here the reporting worker does it under the lock)."""
    cdef int changed = 0
    cdef uint64_t now = clock_ms()
    pthread_mutex_lock(&d.lock)
    # (A host that left the cluster, or one already ejected, is left alone, as Envoy.)
    if d.enabled and hs.od.det == d and not hs.od.ejected:
        _od_stat(d, _OD_DETECTED[kind], 1)
        changed = _od_eject(d, hs, kind, now)
        if kind == ODT_5XX:
            _od_stat(d, OD_EJECTIONS_CONSECUTIVE_5XX, 1)
            fp_store_int(&hs.od.consecutive_5xx, 0)
        elif kind == ODT_GATEWAY:
            fp_store_int(&hs.od.consecutive_gateway_failure, 0)
        else:
            fp_store_int(&hs.od.consecutive_local_origin_failure, 0)
    pthread_mutex_unlock(&d.lock)
    if changed:
        cluster_health_changed(d.cluster)


cdef inline uint64_t _od_random(OutlierDetector* d) noexcept nogil:
    return xorshift64s(&d.rng)


cdef int _od_eject(OutlierDetector* d, HostShared* hs, int kind, uint64_t now) noexcept nogil:
    """Envoy's ejectHost (under d.lock): within max_ejection_percent of the cluster's hosts
    (always one with always_eject_one_host), and with the rule's enforcing_* chance. 1:
    the host is ejected now."""
    cdef uint32_t max_pct = d.cfg.max_ejection_percent if d.cfg.max_ejection_percent < 100 else 100
    cdef double pct = 100.0 * (d.nejected + 1) / (d.nhosts if d.nhosts > 0 else 1)
    if not (pct <= max_pct or (d.cfg.always_eject_one_host and d.nejected == 0)):
        _od_stat(d, OD_EJECTIONS_OVERFLOW, 1)
        return 0
    if kind == ODT_5XX or kind == ODT_SR:
        _od_stat(d, OD_EJECTIONS_TOTAL, 1)        # (deprecated in Envoy, still counted)
    if _od_random(d) % 100 >= d.cfg.enforcing[kind]:
        return 0
    d.nejected += 1
    _od_active_gauge(d)
    _od_stat(d, OD_EJECTIONS_ENFORCED_TOTAL, 1)
    _od_stat(d, _OD_ENFORCED[kind], 1)
    hs.od.ejected = 1
    fp_atomic_or_u32(&hs.health_flags, HF_FAILED_OUTLIER_CHECK)
    hs.od.num_ejections += 1
    hs.od.ejected_at_ms = now
    hs.od.jitter_ms = _od_random(d) % (d.cfg.max_jitter_ms + 1)
    # The multiplier grows while base x multiplier < max + base (Envoy's backoff).
    if <uint64_t>hs.od.backoff * d.cfg.base_ejection_ms < d.cfg.max_ejection_ms + d.cfg.base_ejection_ms:
        hs.od.backoff += 1
    return 1


cdef void _od_uneject(OutlierDetector* d, HostShared* hs, uint64_t now) noexcept nogil:
    """(under d.lock) The host takes traffic again, its consecutive counters from zero."""
    d.nejected -= 1
    _od_active_gauge(d)
    hs.od.ejected = 0
    fp_atomic_and_u32(&hs.health_flags, ~(<uint32_t>HF_FAILED_OUTLIER_CHECK))
    fp_store_int(&hs.od.consecutive_5xx, 0)
    fp_store_int(&hs.od.consecutive_gateway_failure, 0)
    fp_store_int(&hs.od.consecutive_local_origin_failure, 0)
    hs.od.unejected_at_ms = now


cdef int _od_success_rates(OutlierDetector* d, int local) noexcept nogil:
    """Envoy's processSuccessRateEjections for one origin (under d.lock), on the interval
    that just ended (d.prev): success-rate then failure-percentage ejections among the
    hosts not ejected with enough requests. Returns how many hosts it ejected."""
    cdef uint64_t sr_volume = d.cfg.sr_request_volume
    cdef uint64_t fp_volume = d.cfg.fp_request_volume
    cdef uint64_t total, success, min_volume = sr_volume if sr_volume < fp_volume else fp_volume
    cdef double rate, total_rate = 0, mean, var, stdev, threshold
    cdef int i, k, nsr = 0, nfp = 0, ejected = 0
    cdef int sr_kind = ODT_SR_LOCAL if local else ODT_SR
    cdef int fp_kind = ODT_FP_LOCAL if local else ODT_FP
    cdef HostShared* hs
    cdef uint64_t now = clock_ms()
    d.sr_average[local] = -1
    d.sr_threshold[local] = -1
    if <uint64_t>d.nhosts < d.cfg.sr_minimum_hosts and <uint64_t>d.nhosts < d.cfg.fp_minimum_hosts:
        return 0
    # valid[0 .. nsr): success-rate hosts; rates[i]: host i's rate (-1: none)
    for i in range(d.nhosts):
        d.rates[i] = -1
        hs = _od_host(d, i)
        if hs.od.ejected:
            continue
        total = d.prev[4 * i + 2 * local]
        success = d.prev[4 * i + 2 * local + 1]
        if total == 0:
            continue
        if success > total:
            success = total
        rate = success * 100.0 / total
        if total >= min_volume:
            if local:
                hs.od.local_success_rate = <int64_t>(rate * 1000)
            else:
                hs.od.success_rate = <int64_t>(rate * 1000)
        if total >= sr_volume:
            d.valid[nsr] = i
            nsr += 1
            total_rate += rate
        if total >= fp_volume:
            d.rates[i] = rate
            nfp += 1
    if nsr > 0 and <uint64_t>nsr >= d.cfg.sr_minimum_hosts:
        mean = total_rate / nsr
        var = 0
        for k in range(nsr):
            rate = _od_rate_of(d, d.valid[k], local)
            var += (rate - mean) * (rate - mean)
        stdev = sqrt(var / nsr)
        threshold = mean - (d.cfg.sr_stdev_factor / 1000.0) * stdev
        d.sr_average[local] = mean
        d.sr_threshold[local] = threshold
        for k in range(nsr):
            hs = _od_host(d, d.valid[k])
            if _od_rate_of(d, d.valid[k], local) < threshold and not hs.od.ejected:
                _od_stat(d, OD_EJECTIONS_SUCCESS_RATE, 1)       # (deprecated, both origins)
                _od_stat(d, _OD_DETECTED[sr_kind], 1)
                ejected += _od_eject(d, hs, sr_kind, now)
    if nfp > 0 and <uint64_t>nfp >= d.cfg.fp_minimum_hosts:
        for i in range(d.nhosts):
            hs = _od_host(d, i)
            # (Envoy would eject a host the success-rate pass just ejected a second time.)
            if d.rates[i] >= 0 and 100.0 - d.rates[i] >= d.cfg.fp_threshold and not hs.od.ejected:
                _od_stat(d, _OD_DETECTED[fp_kind], 1)
                ejected += _od_eject(d, hs, fp_kind, now)
    return ejected


cdef inline double _od_rate_of(OutlierDetector* d, int i, int local) noexcept nogil:
    cdef uint64_t total = d.prev[4 * i + 2 * local]
    cdef uint64_t success = d.prev[4 * i + 2 * local + 1]
    if success > total:
        success = total
    return success * 100.0 / total


cdef int outlier_tick(OutlierDetector* d) noexcept nogil:
    """The interval timer (Envoy's onIntervalTimer): un-eject the hosts whose time is up,
    close the interval's success-rate buckets, eject by success rate and failure
    percentage, and lower the ejection multiplier of hosts that stayed in. Tells the load
    balancer when a host's health changed. Returns 1 when something changed."""
    cdef int i, changed = 0
    cdef uint64_t now = clock_ms(), t
    cdef HostShared* hs
    pthread_mutex_lock(&d.lock)
    if not d.enabled:
        pthread_mutex_unlock(&d.lock)
        return 0
    for i in range(d.nhosts):
        hs = _od_host(d, i)
        if hs.od.ejected:
            t = d.cfg.base_ejection_ms * hs.od.backoff
            if t > d.cfg.max_ejection_ms:
                t = d.cfg.max_ejection_ms
            if t + hs.od.jitter_ms <= now - hs.od.ejected_at_ms:
                _od_uneject(d, hs, now)
                changed = 1
        d.prev[4 * i] = fp_od_xchg_u64(&hs.od.sr_total, 0)
        d.prev[4 * i + 1] = fp_od_xchg_u64(&hs.od.sr_success, 0)
        d.prev[4 * i + 2] = fp_od_xchg_u64(&hs.od.sr_local_total, 0)
        d.prev[4 * i + 3] = fp_od_xchg_u64(&hs.od.sr_local_success, 0)
        hs.od.success_rate = -1
        hs.od.local_success_rate = -1
    if _od_success_rates(d, 0) > 0:
        changed = 1
    if _od_success_rates(d, 1) > 0:
        changed = 1
    for i in range(d.nhosts):
        hs = _od_host(d, i)
        if not hs.od.ejected and hs.od.unejected_at_ms and now - hs.od.unejected_at_ms >= d.cfg.interval_ms \
                and hs.od.backoff:
            hs.od.backoff -= 1
    pthread_mutex_unlock(&d.lock)
    if changed:
        cluster_health_changed(d.cluster)
    return changed


cdef void _od_forget_host(OutlierDetector* d, HostShared* hs) noexcept nogil:
    """(under d.lock) hs is no longer one of the detector's hosts: its ejection ends and
    its reports go nowhere (a host that comes back starts afresh, as a new host in Envoy)."""
    if hs.od.ejected:
        d.nejected -= 1
        fp_atomic_and_u32(&hs.health_flags, ~(<uint32_t>HF_FAILED_OUTLIER_CHECK))
    fp_od_store_ptr(<void**>&hs.od.det, NULL)


cdef void _od_adopt_host(OutlierDetector* d, HostShared* hs) noexcept nogil:
    """(under d.lock) hs becomes one of the detector's hosts, with no history."""
    cdef OutlierHostState fresh
    memset(&fresh, 0, sizeof(OutlierHostState))
    fresh.success_rate = -1
    fresh.local_success_rate = -1
    hs.od = fresh
    fp_od_store_ptr(<void**>&hs.od.det, d)


cdef int outlier_hosts_changed(ClusterCfg* c, HostSet* hosts) noexcept nogil:
    """The cluster's hosts are now `hosts` (ClusterHandle.set_hosts, any thread that holds
    the cluster): hosts that stay keep their state, new ones start afresh, those that
    left are forgotten. -1: no memory (the detector keeps its hosts)."""
    cdef OutlierDetector* d = c.outlier
    cdef int i, j, n = 0
    cdef StatBlock** blocks
    cdef uint64_t* prev
    cdef double* rates
    cdef int* valid
    cdef HostShared* hs
    if d == NULL:
        return 0
    pthread_mutex_lock(&d.lock)
    if not d.enabled:
        hosts = NULL
    j = hosts.nhosts if hosts != NULL else 0
    blocks = <StatBlock**>calloc(max(1, j), sizeof(StatBlock*))
    prev = <uint64_t*>calloc(max(1, j) * 4, sizeof(uint64_t))
    rates = <double*>calloc(max(1, j), sizeof(double))
    valid = <int*>calloc(max(1, j), sizeof(int))
    if blocks == NULL or prev == NULL or rates == NULL or valid == NULL:
        pthread_mutex_unlock(&d.lock)
        free(blocks)
        free(prev)
        free(rates)
        free(valid)
        return -1
    # Mark the hosts that stay (listed = 2), then take the new list (a host listed twice,
    # the same address twice, counts once).
    for i in range(j):
        hs = host_shared(hosts.hosts[i].stats)
        if hs == NULL or hs.od.listed:
            continue
        hs.od.listed = 1
        if hs.od.det != d:
            _od_adopt_host(d, hs)
            hs.od.listed = 1
        fp_atomic_add_int(&hosts.hosts[i].stats.refcnt, 1)
        blocks[n] = hosts.hosts[i].stats
        n += 1
    for i in range(d.nhosts):
        hs = _od_host(d, i)
        if not hs.od.listed:
            _od_forget_host(d, hs)     # (not in the new host set: no rebuild for it)
        statblock_decref(d.blocks[i])
    for i in range(n):
        (<HostShared*>blocks[i].ext).od.listed = 0
    free(d.blocks)
    free(d.prev)
    free(d.rates)
    free(d.valid)
    d.blocks = blocks
    d.prev = prev
    d.rates = rates
    d.valid = valid
    d.nhosts = n
    _od_active_gauge(d)
    pthread_mutex_unlock(&d.lock)
    return 0


cdef void outlier_detector_free(ClusterCfg* c) noexcept nogil:
    """The cluster is freed: so is its detector (nothing reports into it any more)."""
    cdef OutlierDetector* d = c.outlier
    cdef int i
    if d == NULL:
        return
    c.outlier = NULL
    for i in range(d.nhosts):
        _od_forget_host(d, _od_host(d, i))
        statblock_decref(d.blocks[i])
    statblock_decref(d.stats)
    pthread_mutex_destroy(&d.lock)
    free(d.blocks)
    free(d.prev)
    free(d.rates)
    free(d.valid)
    free(d)


cdef int outlier_host_healthy_check(StatBlock* hstats) noexcept nogil:
    """An active health check of the host passed (health_checker.pxi may call it): with
    successful_active_health_check_uneject_host (the default), an ejected host is
    un-ejected, as Envoy does. 1: it was."""
    cdef HostShared* hs = host_shared(hstats)
    cdef OutlierDetector* d
    cdef int done = 0
    if hs == NULL:
        return 0
    d = _od_of(hs)
    if d == NULL or not d.cfg.hc_uneject:
        return 0
    pthread_mutex_lock(&d.lock)
    if hs.od.det == d and hs.od.ejected and not (fp_load_u32(&hs.health_flags) & HF_FAILED_ACTIVE_HC):
        _od_uneject(d, hs, clock_ms())
        done = 1
    pthread_mutex_unlock(&d.lock)
    if done:
        cluster_health_changed(d.cluster)
    return done


# ---------------------------------------------------------------- the Python side

cdef void _od_config(OutlierConfig* cfg, dict spec) except *:
    cfg.interval_ms = max(1, <uint64_t>spec["interval"])
    cfg.base_ejection_ms = max(1, <uint64_t>spec["base_ejection_time"])
    cfg.max_ejection_ms = max(1, <uint64_t>spec["max_ejection_time"])
    cfg.max_jitter_ms = <uint64_t>spec["max_ejection_time_jitter"]
    cfg.consecutive_5xx = min(<uint64_t>spec["consecutive_5xx"], 0x7fffffff)
    cfg.consecutive_gateway_failure = min(<uint64_t>spec["consecutive_gateway_failure"], 0x7fffffff)
    cfg.consecutive_local_origin_failure = min(<uint64_t>spec["consecutive_local_origin_failure"], 0x7fffffff)
    cfg.max_ejection_percent = spec["max_ejection_percent"]
    cfg.always_eject_one_host = bool(spec["always_eject_one_host"])
    cfg.split = bool(spec["split_external_local_origin_errors"])
    cfg.hc_uneject = bool(spec["successful_active_health_check_uneject_host"])
    cfg.sr_minimum_hosts = spec["success_rate_minimum_hosts"]
    cfg.sr_request_volume = spec["success_rate_request_volume"]
    cfg.sr_stdev_factor = spec["success_rate_stdev_factor"]
    cfg.fp_threshold = spec["failure_percentage_threshold"]
    cfg.fp_minimum_hosts = spec["failure_percentage_minimum_hosts"]
    cfg.fp_request_volume = spec["failure_percentage_request_volume"]
    cfg.enforcing[ODT_5XX] = spec["enforcing_consecutive_5xx"]
    cfg.enforcing[ODT_GATEWAY] = spec["enforcing_consecutive_gateway_failure"]
    cfg.enforcing[ODT_LOCAL] = spec["enforcing_consecutive_local_origin_failure"]
    cfg.enforcing[ODT_SR] = spec["enforcing_success_rate"]
    cfg.enforcing[ODT_SR_LOCAL] = spec["enforcing_local_origin_success_rate"]
    cfg.enforcing[ODT_FP] = spec["enforcing_failure_percentage"]
    cfg.enforcing[ODT_FP_LOCAL] = spec["enforcing_failure_percentage_local_origin"]


def outlier_configure(ClusterHandle cluster, dict spec, StatBlockHandle stats=None):
    """Give the cluster outlier detection with `spec` (OutlierDetection.to_spec()), its
    counters in `stats` (an "outlier" block: cluster.<name>.outlier_detection.*), or
    none (spec None). A changed spec starts every host afresh (Envoy makes a new detector
    with the new cluster). Main thread."""
    cdef ClusterCfg* c = cluster.c
    cdef OutlierDetector* d = c.outlier
    cdef OutlierConfig cfg
    cdef int i
    cdef bint changed = False
    cdef int enabled = spec is not None
    cdef StatBlock* new_stats
    cdef StatBlock* old_stats
    memset(&cfg, 0, sizeof(OutlierConfig))
    if spec is not None:
        if stats is None or stats.names != OUTLIER_STATS:
            raise ValueError("stats: a block of kind 'outlier' is required")
        _od_config(&cfg, spec)
    if d == NULL:
        if spec is None:
            return
        d = <OutlierDetector*>calloc(1, sizeof(OutlierDetector))
        if d == NULL:
            raise MemoryError()
        pthread_mutex_init(&d.lock, NULL)
        d.cluster = c
        d.rng = <uint64_t><size_t>d ^ clock_ms() | 1
        d.sr_average[0] = d.sr_average[1] = d.sr_threshold[0] = d.sr_threshold[1] = -1
        c.outlier = d
    new_stats = NULL
    if stats is not None:
        new_stats = stats.b
        fp_atomic_add_int(&new_stats.refcnt, 1)
    with nogil:
        pthread_mutex_lock(&d.lock)
        # Every host starts afresh (its ejection ends), then takes the new config; the stat
        # block is swapped under the lock, as everything that counts into it holds it.
        for i in range(d.nhosts):
            if _od_host(d, i).od.ejected:
                changed = True
            _od_forget_host(d, _od_host(d, i))
            statblock_decref(d.blocks[i])
        d.nhosts = 0
        d.nejected = 0
        d.cfg = cfg
        d.enabled = enabled
        old_stats = d.stats
        d.stats = new_stats
        pthread_mutex_unlock(&d.lock)
        statblock_decref(old_stats)
    if cluster.current is not None and outlier_hosts_changed(c, cluster.current.hs) < 0:
        raise MemoryError()
    if changed:
        cluster_health_changed(c)


def outlier_tick_now(ClusterHandle cluster):
    """Run the cluster's detector's interval (outlier_tick) now, without the GIL. Returns
    the interval in seconds (None: the cluster has no outlier detection)."""
    cdef OutlierDetector* d = cluster.c.outlier
    if d == NULL or not d.enabled:
        return None
    with nogil:
        outlier_tick(d)
    return d.cfg.interval_ms / 1000.0


def outlier_host_info(ClusterHandle cluster):
    """The cluster's detector, as admin /clusters shows it: (success_rate_average,
    success_rate_ejection_threshold, local_origin ones, {(ip, port): (success_rate,
    local_origin_success_rate, ejected)}), rates in percent (-1: not computed); None
    without outlier detection."""
    cdef OutlierDetector* d = cluster.c.outlier
    cdef HostShared* hs
    cdef int i
    if d == NULL or not d.enabled:
        return None
    hosts = {}
    statuses = cluster.host_statuses()
    with nogil:
        pthread_mutex_lock(&d.lock)
    try:
        out = (d.sr_average[0], d.sr_threshold[0], d.sr_average[1], d.sr_threshold[1])
        if cluster.current is not None:
            for i in range(cluster.current.hs.nhosts):
                hs = host_shared(cluster.current.hs.hosts[i].stats)
                if hs != NULL and hs.od.det == d and i < len(statuses):
                    hosts[statuses[i][0], statuses[i][1]] = (
                        hs.od.success_rate / 1000.0 if hs.od.success_rate >= 0 else -1.0,
                        hs.od.local_success_rate / 1000.0 if hs.od.local_success_rate >= 0 else -1.0,
                        bool(hs.od.ejected))
    finally:
        pthread_mutex_unlock(&d.lock)
    return out + (hosts,)


stat_kind_add("outlier", OUTLIER_STATS, OUTLIER_GAUGES)
