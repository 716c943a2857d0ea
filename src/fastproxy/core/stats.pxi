# Per-worker counters. A StatBlock holds one row of counters per worker, each row padded to
# a cache line so workers never share one; only the owning worker writes its row, and the
# main thread sums the rows when Python asks (Envoy's thread-local stats, much simplified).
# Blocks are keyed by their stat prefix on the Python side and outlive config snapshots,
# so counters keep counting across proxy.update().

# listener.<address>_<port>.*
DEF L_CX_TOTAL = 0
DEF L_CX_ACTIVE = 1
DEF L_CX_OVERFLOW = 2
DEF L_ACCEPT_FAIL = 3
DEF L_CX_DESTROY = 4
DEF L_GLOBAL_CX_OVERFLOW = 5
DEF L_NSTATS = 6
LISTENER_STATS = ("downstream_cx_total", "downstream_cx_active", "downstream_cx_overflow",
                  "downstream_cx_accept_fail", "downstream_cx_destroy", "downstream_global_cx_overflow")
LISTENER_GAUGES = frozenset(["downstream_cx_active"])

# tcp.<stat_prefix>.*
DEF T_CX_TOTAL = 0
DEF T_CX_ACTIVE = 1
DEF T_NO_ROUTE = 2
DEF T_RX_BYTES = 3
DEF T_TX_BYTES = 4
DEF T_IDLE_TIMEOUT = 5
DEF T_PAUSED = 6
DEF T_RESUMED = 7
DEF T_SPLICED = 8
DEF T_COPIED = 9
DEF T_FILTER_ERROR = 10
DEF T_RESET_SENT = 11
DEF T_NSTATS = 12
TCP_STATS = ("downstream_cx_total", "downstream_cx_active", "downstream_cx_no_route",
             "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total", "idle_timeout",
             "downstream_flow_control_paused_reading_total",
             "downstream_flow_control_resumed_reading_total", "bytes_spliced", "bytes_copied",
             "python_filter_error", "reset_sent")
TCP_GAUGES = frozenset(["downstream_cx_active"])

# cluster.<name>.*
DEF C_CX_TOTAL = 0
DEF C_CX_ACTIVE = 1
DEF C_CONNECT_FAIL = 2
DEF C_CONNECT_TIMEOUT = 3
DEF C_RX_BYTES = 4
DEF C_TX_BYTES = 5
DEF C_NONE_HEALTHY = 6
DEF C_DESTROY_LOCAL = 7         # C_DESTROY_LOCAL + 1: remote (the *_REMOTE ones below too)
DEF C_DESTROY_REMOTE = 8
DEF C_ATTEMPTS_EXCEEDED = 9
DEF C_RQ_TOTAL = 10
DEF C_RQ_1XX = 11               # 2xx..5xx follow, then C_RQ_COMPLETED (see _count_status)
DEF C_RQ_5XX = 15
DEF C_RQ_COMPLETED = 16
DEF C_RQ_TIMEOUT = 17
DEF C_CX_DESTROY = 18
DEF C_DESTROY_WITH_ACTIVE_RQ = 19
DEF C_DESTROY_LOCAL_WITH_ACTIVE_RQ = 20
DEF C_DESTROY_REMOTE_WITH_ACTIVE_RQ = 21
DEF C_CX_HTTP1_TOTAL = 22
DEF C_RQ_ACTIVE = 23
DEF C_RQ_PENDING_TOTAL = 24
DEF C_RQ_PENDING_ACTIVE = 25
DEF C_RQ_PENDING_FAILURE_EJECT = 26
DEF C_CX_IDLE_TIMEOUT = 27
DEF C_CX_MAX_REQUESTS = 28
DEF C_CX_OVERFLOW = 29          # circuit breakers (core/upstream.pxi)
DEF C_CX_POOL_OVERFLOW = 30
DEF C_RQ_PENDING_OVERFLOW = 31
DEF C_RQ_ACTIVE_OVERFLOW = 32
DEF C_RQ_RETRY_OVERFLOW = 33
DEF C_CX_MAX_DURATION = 34
DEF C_NSTATS = 35
CLUSTER_STATS = ("upstream_cx_total", "upstream_cx_active", "upstream_cx_connect_fail",
                 "upstream_cx_connect_timeout", "upstream_cx_rx_bytes_total",
                 "upstream_cx_tx_bytes_total", "upstream_cx_none_healthy",
                 "upstream_cx_destroy_local", "upstream_cx_destroy_remote",
                 "upstream_cx_connect_attempts_exceeded", "upstream_rq_total",
                 "upstream_rq_1xx", "upstream_rq_2xx", "upstream_rq_3xx", "upstream_rq_4xx",
                 "upstream_rq_5xx", "upstream_rq_completed", "upstream_rq_timeout",
                 "upstream_cx_destroy", "upstream_cx_destroy_with_active_rq",
                 "upstream_cx_destroy_local_with_active_rq",
                 "upstream_cx_destroy_remote_with_active_rq", "upstream_cx_http1_total",
                 "upstream_rq_active", "upstream_rq_pending_total", "upstream_rq_pending_active",
                 "upstream_rq_pending_failure_eject", "upstream_cx_idle_timeout",
                 "upstream_cx_max_requests", "upstream_cx_overflow", "upstream_cx_pool_overflow",
                 "upstream_rq_pending_overflow", "upstream_rq_active_overflow",
                 "upstream_rq_retry_overflow", "upstream_cx_max_duration_reached")
CLUSTER_GAUGES = frozenset(["upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active"])

# A cluster's hosts, as admin /clusters prints them (cluster::<address>::<stat>::<value>), in
# Envoy's order: the counters, then the gauges. One block per (cluster, host address), kept
# by the engine for its lifetime, so host sets replaced by DNS and connections that outlive
# them never point at freed rows.
DEF HS_CX_CONNECT_FAIL = 0
DEF HS_CX_TOTAL = 1
DEF HS_RQ_ERROR = 2
DEF HS_RQ_SUCCESS = 3
DEF HS_RQ_TIMEOUT = 4
DEF HS_RQ_TOTAL = 5
DEF HS_CX_ACTIVE = 6
DEF HS_RQ_ACTIVE = 7
DEF HS_RQ_PENDING_ACTIVE = 8
DEF HS_NSTATS = 9
HOST_STATS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total",
              "cx_active", "rq_active", "rq_pending_active")
HOST_GAUGES = frozenset(["cx_active", "rq_active", "rq_pending_active"])

# listener.<address>_<port>.http.<stat_prefix>.*: the connection manager's per-listener stats
DEF LH_RQ_1XX = 0               # ..5xx follow
DEF LH_RQ_COMPLETED = 5
DEF LH_NSTATS = 6
LISTENER_HTTP_STATS = ("downstream_rq_1xx", "downstream_rq_2xx", "downstream_rq_3xx",
                       "downstream_rq_4xx", "downstream_rq_5xx", "downstream_rq_completed")


# Histograms (downstream_rq_time, upstream_rq_time) live in the same per-worker rows, after
# the counters: HIST_SLOTS uint64s each, HIST_NBUCKETS bucket counts then the sum of the
# recorded values. Buckets are log-linear: 0..15 exact, then 8 per power of two (at most
# 12.5% wide), the last one open-ended. Single writer per row, no locks; read() sums rows.
DEF HIST_NBUCKETS = 272
DEF HIST_SLOTS = 273
HISTOGRAM_BUCKETS = HIST_NBUCKETS

# Per-status-code counters (a cluster's upstream_rq_<code>): one slot per code 100..599,
# after the histograms. Envoy creates such a counter at its first use, so read_codes()
# reports only the codes seen.
DEF CODE_FIRST = 100
DEF CODE_SLOTS = 500
DEF C_CODES = C_NSTATS + HIST_SLOTS     # a cluster block: its counters, upstream_rq_time, codes

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil


cdef inline int hist_bucket(uint64_t v) noexcept nogil:
    cdef int e
    if v < 16:
        return <int>v
    e = 63 - __builtin_clzll(v)
    if e > 35:
        return HIST_NBUCKETS - 1
    return 16 + (e - 4) * 8 + <int>((v >> (e - 3)) & 7)


def histogram_bucket_bounds(int i):
    """[low, high) of bucket i (high None for the last, open-ended one)."""
    if i < 16:
        return i, i + 1
    if i == HIST_NBUCKETS - 1:
        return (15 << 32), None
    e = (i - 16) // 8 + 4
    sub = (i - 16) % 8
    return (8 + sub) << (e - 3), (9 + sub) << (e - 3)


def histogram_bucket_of(uint64_t v):
    return hist_bucket(v)


cdef struct StatBlock:
    int nstats
    int nworkers
    int stride                  # uint64s per worker row, a multiple of 8 (64 bytes)
    uint64_t* v


cdef inline void stat_add(StatBlock* b, Worker* w, int i, uint64_t n) noexcept nogil:
    b.v[w.index * b.stride + i] += n


cdef inline void hist_record(StatBlock* b, Worker* w, int first, uint64_t v) noexcept nogil:
    """Record v into the histogram whose slots start at index `first` of the block."""
    cdef uint64_t* row = b.v + w.index * b.stride + first
    row[hist_bucket(v)] += 1
    row[HIST_NBUCKETS] += v


cdef inline void stat_sub(StatBlock* b, Worker* w, int i, uint64_t n) noexcept nogil:
    b.v[w.index * b.stride + i] -= n


cdef inline void host_stat_add(StatBlock* b, Worker* w, int i, int64_t n) noexcept nogil:
    """A host's counter or gauge (HS_*); b is NULL for a host without a block."""
    if b != NULL:
        b.v[w.index * b.stride + i] += <uint64_t>n


cdef StatBlock* statblock_new(int nstats, int nworkers) noexcept nogil:
    cdef StatBlock* b = <StatBlock*>malloc(sizeof(StatBlock))
    if b == NULL:
        return NULL
    b.nstats = nstats
    b.nworkers = nworkers
    b.stride = (nstats + 7) // 8 * 8
    b.v = <uint64_t*>calloc(b.stride * nworkers, sizeof(uint64_t))
    if b.v == NULL:
        free(b)
        return NULL
    return b


cdef class StatBlockHandle:
    """Python owner of a StatBlock (lives as long as the engine keeps it)."""
    cdef StatBlock* b
    cdef readonly tuple names
    cdef readonly frozenset gauges
    cdef readonly tuple histograms      # names; slots follow the counters, HIST_SLOTS each
    cdef readonly bint codes            # CODE_SLOTS per-code counters follow the histograms

    def __dealloc__(self):
        if self.b != NULL:
            free(self.b.v)
            free(self.b)

    def read(self):
        """Sum the per-worker rows: {name: value}. Gauges are read as signed."""
        cdef int i, k
        cdef uint64_t total
        out = {}
        for i in range(len(self.names)):
            total = 0
            for k in range(self.b.nworkers):
                total += fp_load_u64(&self.b.v[k * self.b.stride + i])
            value = <int64_t>total if self.names[i] in self.gauges else total
            out[self.names[i]] = value
        return out


    def read_worker(self, int k, tuple names):
        """One worker's row: {name: value} for the given names (Envoy's per-worker
        listener stats, listener.<address>.worker_<k>.*). Gauges are read as signed."""
        cdef uint64_t v
        out = {}
        if not 0 <= k < self.b.nworkers:
            raise IndexError(k)
        for i, name in enumerate(self.names):
            if name in names:
                v = fp_load_u64(&self.b.v[k * self.b.stride + i])
                out[name] = <int64_t>v if name in self.gauges else v
        return out

    def read_codes(self):
        """{status code: count summed over the workers} for the codes seen (a block made
        with codes=True; {} otherwise)."""
        cdef int i, k, first
        cdef uint64_t total
        out = {}
        if not self.codes:
            return out
        first = len(self.names) + len(self.histograms) * HIST_SLOTS
        for i in range(CODE_SLOTS):
            total = 0
            for k in range(self.b.nworkers):
                total += fp_load_u64(&self.b.v[k * self.b.stride + first + i])
            if total:
                out[CODE_FIRST + i] = total
        return out

    def read_histograms(self):
        """{name: (bucket counts summed over the workers, sum of the values)}."""
        cdef int i, j, k, first
        cdef uint64_t total
        out = {}
        for j, name in enumerate(self.histograms):
            first = len(self.names) + j * HIST_SLOTS
            counts = []
            for i in range(HIST_SLOTS):
                total = 0
                for k in range(self.b.nworkers):
                    total += fp_load_u64(&self.b.v[k * self.b.stride + first + i])
                counts.append(total)
            out[name] = (counts[:HIST_NBUCKETS], counts[HIST_NBUCKETS])
        return out


cdef StatBlockHandle _statblock_handle(tuple names, frozenset gauges, int nworkers,
                                       tuple histograms=(), bint codes=False):
    cdef StatBlockHandle h = StatBlockHandle.__new__(StatBlockHandle)
    h.b = statblock_new(len(names) + len(histograms) * HIST_SLOTS + (CODE_SLOTS if codes else 0),
                        nworkers)
    if h.b == NULL:
        raise MemoryError()
    h.names = names
    h.gauges = gauges
    h.histograms = histograms
    h.codes = codes
    return h
