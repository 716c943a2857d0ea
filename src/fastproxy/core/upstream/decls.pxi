# Upstream declarations: clusters and their host sets (cluster.pxi), the per-worker load
# balancer state (load_balancer.pxi) and the per-worker HTTP connection pool
# (http_pool.pxi, whose contract is at its top). Included before any of them.

cdef extern from "<stdlib.h>" nogil:
    void qsort(void* base, size_t n, size_t size, int (*cmp)(const void*, const void*) noexcept nogil)

cdef extern from "<math.h>" nogil:
    double pow(double x, double y)
    double ceil(double x)

cdef enum LbPolicy:
    LB_ROUND_ROBIN = 0
    LB_RANDOM = 1
    LB_LEAST_REQUEST = 2
    LB_RING_HASH = 3
    LB_MAGLEV = 4

DEF HOST_NAME_MAX_LEN = 255         # model.MAX_ENDPOINT_HOSTNAME
DEF HOST_KEY_MAX_LEN = 64           # "[" IPv6 text (at most 45) "]:" port
DEF LB_MAX_PRIORITY = 127           # model.MAX_PRIORITY: an endpoint's highest priority

# A host's health, as Envoy's Host::HealthFlag: why it is not healthy (0: healthy). Set by
# active health checks (health_check.pxi), outlier detection (outlier.pxi) and EDS; read
# by the load balancer when it builds a host set (load_balancer.pxi) and by /clusters.
cdef enum HostHealthFlag:
    HF_FAILED_ACTIVE_HC = 0x1           # /failed_active_hc
    HF_FAILED_OUTLIER_CHECK = 0x2       # /failed_outlier_check (ejected)
    HF_FAILED_EDS_HEALTH = 0x4          # /failed_eds_health
    HF_DEGRADED_ACTIVE_HC = 0x8         # /degraded_active_hc
    HF_DEGRADED_EDS_HEALTH = 0x10       # /degraded_eds_health
    HF_PENDING_DYNAMIC_REMOVAL = 0x20   # /pending_dynamic_removal
    HF_PENDING_ACTIVE_HC = 0x40         # /pending_active_hc (not checked yet)
    HF_EXCLUDED_VIA_IMMEDIATE_HC_FAIL = 0x80
    HF_ACTIVE_HC_TIMEOUT = 0x100        # /active_hc_timeout
    HF_EDS_STATUS_DRAINING = 0x200      # /eds_status_draining (EDS health_status DRAINING:
                                        #   excluded, as Envoy 1.40 does)

cdef enum:
    HF_UNHEALTHY = HF_FAILED_ACTIVE_HC | HF_FAILED_OUTLIER_CHECK | HF_FAILED_EDS_HEALTH
    HF_DEGRADED = HF_DEGRADED_ACTIVE_HC | HF_DEGRADED_EDS_HEALTH
    # Envoy's excluded hosts: counted in membership_excluded, never picked (not even in
    # panic), and not counted as hosts of their priority for the panic threshold.
    HF_EXCLUDED = (HF_PENDING_DYNAMIC_REMOVAL | HF_PENDING_ACTIVE_HC | HF_EXCLUDED_VIA_IMMEDIATE_HC_FAIL
                   | HF_EDS_STATUS_DRAINING)
    HF_EDS = HF_FAILED_EDS_HEALTH | HF_DEGRADED_EDS_HEALTH | HF_EDS_STATUS_DRAINING  # what EDS sets

cdef struct OutlierDetector        # outlier.pxi: a cluster's detector (config, its hosts)

cdef struct OutlierHostState:   # outlier.pxi owns these fields (atomics: any worker reports)
    OutlierDetector* det                # the cluster's detector; NULL: no outlier detection
    int consecutive_5xx                 # counted by the workers (atomic adds)
    int consecutive_gateway_failure
    int consecutive_local_origin_failure
    uint64_t sr_total                   # this interval's requests (external origin)
    uint64_t sr_success
    uint64_t sr_local_total             # local origin (split_external_local_origin_errors)
    uint64_t sr_local_success
    # The rest is written under the detector's lock (ejections and interval ticks).
    uint8_t ejected                     # HF_FAILED_OUTLIER_CHECK set by the detector
    uint8_t listed                      # (scratch of outlier_hosts_changed)
    uint32_t num_ejections              # how many times it was ejected
    uint32_t backoff                    # Envoy's ejection time multiplier
    uint64_t ejected_at_ms              # CLOCK_MONOTONIC ms of the last ejection
    uint64_t unejected_at_ms            # 0: never un-ejected
    uint64_t jitter_ms                  # drawn at the last ejection
    int64_t success_rate                # last interval's, x1000 (-1: not enough requests)
    int64_t local_success_rate

cdef struct HostShared:
    # What every thread knows of a host beyond its counters: one per host identity (the
    # host's stat block: cluster and address), reached by host_shared(block) from a Host or
    # from a stream's or connection's hstats, and freed with the block. Plain memory: every
    # field is read and written with atomics (fp_atomic_*), from any thread.
    uint32_t health_flags               # HostHealthFlag bits; 0: healthy
    OutlierHostState od
    # requests in flight over every worker (LEAST_REQUEST), moved twice per request by any
    # worker: on a cache line of its own, so those writes do not evict the line the
    # outlier reports and the health reads use (calloc'd blocks are 16-aligned: the pad
    # covers a 64-byte line either way)
    uint8_t _pad[64]
    int64_t rq_active
    uint8_t _pad_end[56]

cdef struct Host:
    sockaddr_storage addr
    socklen_t addrlen
    uint32_t weight                 # load_balancing_weight (admin /clusters)
    uint32_t priority               # the endpoint's priority (0: the highest)
    uint32_t locality               # its locality's index within its priority
    uint32_t locality_weight        # that locality's load_balancing_weight (0: none given)
    uint32_t eds_flags              # HF_FAILED_EDS_HEALTH / HF_DEGRADED_EDS_HEALTH from the
                                    #   endpoint's health_status (set into HostShared)
    uint8_t keylen                  # the address as Envoy writes it ("10.0.0.1:80",
    char key[HOST_KEY_MAX_LEN]      #   "[::1]:80"): what RING_HASH and MAGLEV hash
    StatBlock* stats                # HS_* per worker (stats.pxi), one reference held by the
                                    #   host set; NULL until ClusterHandle.set_hosts
    uint16_t hostname_len           # 0: none (auto_host_rewrite leaves the Host alone)
    char hostname[HOST_NAME_MAX_LEN + 1]    # endpoint.hostname, or a DNS endpoint's name

cdef struct LbSource:
    # The hosts one pick chooses among (Envoy's HostsSource: a priority's (or a locality's)
    # healthy, degraded or, in panic, all hosts): index arrays into HostSet.hosts, in
    # config order.
    int n
    int* idx
    int slot                    # its index in HostSet.sources (a worker's cursor / scheduler)
    uint8_t equal_weights       # every host has the same weight (plain RR, P2C)
    int nschedule               # weighted round robin: host indexes, each weight times,
    int* schedule               #   interleaved (EDF order)
    # RING_HASH: ring points sorted by hash (lb_tables.pxi); MAGLEV: the lookup table
    int nring
    uint64_t* ring_hash
    int* ring_host
    int ntable
    int* table

cdef struct LbLocality:
    LbSource healthy
    LbSource degraded
    int nhosts
    int nexcluded
    uint32_t weight             # the locality's load_balancing_weight
    double healthy_weight       # Envoy's effective weight: weight x min(1, overprovisioning
    double degraded_weight      #   x healthy (degraded) share of its non-excluded hosts)

cdef struct LbPriority:
    int nhosts                  # every host of the priority (excluded ones too)
    int nhealthy
    int ndegraded
    int nexcluded
    uint8_t panic               # healthy + degraded below healthy_panic_threshold: all hosts
    uint32_t healthy_load       # Envoy's per-priority load, percent (the loads of all
    uint32_t degraded_load      #   priorities sum to 100)
    LbSource healthy
    LbSource degraded
    LbSource all                # every host of the priority (panic)
    int nlocalities             # locality_weighted_lb_config: per locality (Host.locality)
    LbLocality* loc             #   its sources and effective weights; else 0 / NULL

cdef struct HostSet:
    # Two kinds. A base set is what set_hosts got: the cluster's full host list (config
    # order, every priority, healthy or not), owning the hosts and their stat blocks. A
    # worker's set is derived from the base with the hosts' health at that moment
    # (cluster_health_changed): it shares the base's hosts (holding a reference to it) and
    # adds the per-priority lists and tables the load balancer picks from.
    int refcnt                  # atomic
    int nhosts
    Host* hosts
    HostSet* base               # a derived set: its base (one reference); NULL: a base set
    uint32_t* health            # a derived set: each host's health_flags when it was built
    int policy                  # a derived set: the LbPolicy its tables were built for (a
    uint32_t choice_count       #   pick follows the set, never a params message that may
    double active_request_bias  #   land before or after it)
    int npriorities
    LbPriority* prio
    int nsources                # every LbSource of the set, by slot (a worker sizes its
    LbSource** sources          #   cursors and schedulers by them)
    int nhealthy                # over every priority (membership_* gauges)
    int ndegraded
    int nexcluded
    int* by_stats               # open-addressing table: a host's stat block -> its index
    uint32_t by_stats_mask      #   (hostset_find), built by ClusterHandle.set_hosts. A
                                #   host's block is its identity (cluster, address): the
                                #   pool finds the hosts that stay across a swap with it.

cdef struct LbBuild:            # what building a cluster's worker host sets needs (ClusterCfg)
    int policy                  # LbPolicy
    uint32_t overprovisioning   # percent (Envoy's overprovisioning_factor, default 140)
    uint32_t panic_threshold    # percent (healthy_panic_threshold, default 50)
    uint8_t locality_weighted   # common_lb_config.locality_weighted_lb_config
    uint64_t ring_min           # RING_HASH minimum_ring_size / maximum_ring_size
    uint64_t ring_max
    uint8_t ring_murmur         # hash_function MURMUR_HASH_2 (else XX_HASH)
    uint64_t maglev_size        # MAGLEV table_size (a prime)
    uint32_t choice_count       # LEAST_REQUEST
    double active_request_bias

cdef enum:                      # ClusterParams.protocol
    UP_HTTP1 = 0
    UP_HTTP2 = 1
    UP_AUTO = 2

cdef struct ClusterParams:      # what a cluster's config sets; one copy per worker
    int lb
    uint8_t removed             # no cluster of this name is configured (any more): new
                                #   requests get 503 NC, TCP connections are closed
    uint64_t connect_timeout_ms
    # HTTP connection pool options (Envoy's HttpProtocolOptions)
    uint64_t pool_idle_ms       # an idle pooled connection is closed after this; 0: never
    uint64_t max_duration_ms    # max_connection_duration; 0: none
    uint32_t max_rq_per_cx      # max_requests_per_connection; 0: none
    # Circuit breakers (DEFAULT priority): the limits; the counts are in ClusterCfg.
    uint32_t max_cx
    uint32_t max_pending
    uint32_t max_rq
    uint32_t max_retries
    TlsProvider* tls            # upstream TLS (client context), else NULL; each copy holds a reference
    uint8_t protocol            # UP_HTTP1, UP_HTTP2 (prior knowledge h2c, or ALPN h2 over TLS),
                                #   UP_AUTO (ALPN h2,http/1.1 over TLS; HTTP/1.1 on plaintext)
    H2Options h2                # http2_protocol_options (UP_HTTP2 / UP_AUTO)
    StatBlock* h2_stats         # cluster.<name>.http2.* (H2_*), or NULL; each copy holds a reference

cdef struct LbContext:          # what a pick may use besides the host set (may be NULL)
    uint8_t has_hash                    # the route's hash_policy produced `hash`
    uint64_t hash
    int attempt                         # 0: the first try; retries and re-picks count up
    # retry_host_predicate previous_hosts: hosts to avoid (their stat blocks), tried up to
    # host_selection_retry_max_attempts times before one of them is taken anyway
    StatBlock** avoid
    int navoid
    int host_selection_max_attempts     # 0 or 1: one pick

cdef struct LbEdfEntry:         # weighted LEAST_REQUEST's scheduler entry (Envoy's EDF)
    double deadline
    uint64_t order              # insertion order: ties go to the earlier one
    int host

cdef struct LbEdf:              # one per LbSource of a weighted LEAST_REQUEST host set
    int n
    double now
    uint64_t seq
    LbEdfEntry* heap

cdef struct WorkerLb:           # one per worker, touched only by that worker
    HostSet* hosts              # the worker's current host set (one reference)
    uint32_t next               # round-robin cursor (the start of each source's cursor)
    int ncursors                # per source (3 per priority: healthy, degraded, all): its
    uint32_t* cursors           #   round-robin cursor, sized at each host set swap
    LbEdf* edf                  # weighted LEAST_REQUEST: per source, or NULL
    int nedf
    ClusterParams params        # the worker's copy, replaced by a message (set_params)

cdef struct ClusterCfg
cdef struct UpConn              # core/http/decls.pxi: an upstream HTTP/1.1 connection

cdef struct HttpPool:           # one per cluster per worker, touched only by that worker
    ClusterCfg* cluster         # back pointer (no reference): serving the waiting requests
    HostSet* hosts              # the host set `idle` and `nconns` are indexed by (one
                                #   reference, so a new set never reuses its address)
    int nhosts
    UpConn** idle               # per host: idle connections, most recently used first
    int* nconns                 # per host: this worker's connections (connecting, busy,
                                #   idle; not CONNECT tunnels, which never come back)
    UpConn* wait_head           # requests waiting for a connection (circuit breaker),
    UpConn* wait_tail           #   oldest first
    HttpPool* kick_next         # HttpWorker.kicked: serve wait_head at the end of the loop turn
    uint8_t kicked
    uint64_t tls_gen            # the cluster's TLS provider generation (0: plaintext) the
                                #   idle lists were last checked against (_pool_sweep_tls)
    UpConn* h2_flush            # HTTP/2 connections with frames to send (streams' requests,
                                #   resets, window updates), sent at the end of the loop turn

cdef struct ClusterCfg:
    # A cluster keeps its ClusterCfg for as long as its name is configured or referenced:
    # a config update changes what it points to (host sets, params: worker messages), never
    # the pointer, so listeners and route tables that are not rebuilt see the change and
    # pools keep their connections to the hosts that stay.
    int refcnt                  # atomic
    StatBlock* stats
    int nworkers
    WorkerLb* per_worker        # the load balancer's state and params, one per worker
    HttpPool* http_pools        # the HTTP connection pool, one per worker (http_pools_new)
    # Circuit breakers (DEFAULT priority; the limits are in the params). Like Envoy's, they
    # count over every worker: the counts are atomics shared by the workers, checked (a
    # load) before a connection or request is admitted and moved (an atomic add) when one
    # starts or ends, no lock. As in Envoy, check-then-add can overshoot a limit by the
    # number of workers racing for it.
    int64_t n_cx                # open upstream connections (HTTP and TCP)
    int64_t n_pending           # requests waiting for a connection (connecting or queued)
    int64_t n_rq                # requests bound to a connection
    int64_t n_retries           # retries outstanding (core/http/retry.pxi), limited by
                                #   params.max_retries, or by the retry budget when it has one:
    uint8_t has_retry_budget    #   (set by ClusterHandle.set_retry_budget, read by any worker)
    uint32_t retry_budget_pct_x100      # budget_percent x 100
    uint32_t retry_budget_min           # min_retry_concurrency
    # Health -> host set (cluster_health_changed): rebuilding a worker's host set from the
    # latest full host list with the hosts' current health, from any thread, serialized by
    # `lock` (set_hosts and set_params take it too).
    pthread_mutex_t lock
    HostSet* base               # the latest full host list (one reference), or NULL
    HostSet* current            # the worker set last posted (one reference), or NULL
    uint8_t membership_changed  # set_hosts changed the hosts: the next post counts it
    LbBuild build               # the load balancer's build options (set_params)
    Worker* workers             # the engine's workers (to post the rebuilt sets to)
    int* posting                # the engine's: 1 while worker threads take messages,
                                #   else a swap is applied directly (as Engine.post)
    OutlierDetector* outlier    # outlier detection (outlier.pxi), or NULL; freed with the cluster

cdef struct HostSetSwap:        # a worker message: the worker's new host set
    ClusterCfg* cluster
    HostSet* hosts
    uint8_t membership_change   # the hosts changed (not only their health): worker 0 counts it

cdef struct ParamsSwap:         # a worker message: the worker's new params
    ClusterCfg* cluster
    ClusterParams params
