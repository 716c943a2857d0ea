# Clusters: the cluster config a worker reads (connect timeout, pool options, circuit
# breakers), host sets built on the main thread and handed to the workers (DNS refresh),
# and the Python handles that own them. Which host a connection goes to:
# load_balancer.pxi; the structs: decls.pxi.


cdef inline bint cb_full(int64_t* count, uint32_t limit) noexcept nogil:
    return fp_atomic_load_i64(count) >= <int64_t>limit


cdef inline int64_t cluster_retry_limit(ClusterCfg* c, uint32_t max_retries) noexcept nogil:
    """What the circuit breakers limit outstanding retries to now: the retry budget's share
    of the active and pending requests (at least its min_retry_concurrency) when the
    cluster has one, else max_retries."""
    cdef int64_t budget
    if not c.has_retry_budget:
        return max_retries
    budget = ((fp_atomic_load_i64(&c.n_rq) + fp_atomic_load_i64(&c.n_pending))
              * <int64_t>c.retry_budget_pct_x100 // 10000)
    return budget if budget > <int64_t>c.retry_budget_min else <int64_t>c.retry_budget_min


cdef void _lb_source_free(LbSource* s) noexcept nogil:
    free(s.idx)
    free(s.schedule)
    free(s.ring_hash)
    free(s.ring_host)
    free(s.table)


cdef void hostset_decref(HostSet* h) noexcept nogil:
    cdef int i, j
    if h != NULL and fp_atomic_add_int(&h.refcnt, -1) == 0:
        if h.base != NULL:          # a derived set: its hosts are its base's
            for i in range(h.npriorities if h.prio != NULL else 0):
                _lb_source_free(&h.prio[i].healthy)
                _lb_source_free(&h.prio[i].degraded)
                _lb_source_free(&h.prio[i].all)
                for j in range(h.prio[i].nlocalities if h.prio[i].loc != NULL else 0):
                    _lb_source_free(&h.prio[i].loc[j].healthy)
                    _lb_source_free(&h.prio[i].loc[j].degraded)
                free(h.prio[i].loc)
            free(h.sources)
            free(h.prio)
            free(h.health)
            hostset_decref(h.base)
        else:
            for i in range(h.nhosts):
                statblock_decref(h.hosts[i].stats)
            free(h.hosts)
            free(h.by_stats)
        free(h)


cdef inline uint32_t _stats_hash(StatBlock* b) noexcept nogil:
    return <uint32_t>(((<uint64_t><size_t>b) >> 4) * <uint64_t>11400714819323198485ULL >> 32)


cdef int hostset_index(HostSet* hs) noexcept nogil:
    """Build hs.by_stats (its hosts have their stat blocks). -1: no memory."""
    cdef uint32_t size = 8, k
    cdef int i
    while size < <uint32_t>hs.nhosts * 2:
        size <<= 1
    hs.by_stats = <int*>malloc(size * sizeof(int))
    if hs.by_stats == NULL:
        return -1
    memset(hs.by_stats, 0xff, size * sizeof(int))      # -1: empty
    hs.by_stats_mask = size - 1
    for i in range(hs.nhosts):
        k = _stats_hash(hs.hosts[i].stats) & hs.by_stats_mask
        while hs.by_stats[k] >= 0:
            if hs.hosts[hs.by_stats[k]].stats == hs.hosts[i].stats:
                break                   # the same address twice: the first one is found
            k = (k + 1) & hs.by_stats_mask
        if hs.by_stats[k] < 0:
            hs.by_stats[k] = i
    return 0


cdef int hostset_find(HostSet* hs, StatBlock* b) noexcept nogil:
    """The index in hs of the host whose stat block is b (the same address in the same
    cluster), -1 when hs has no such host."""
    cdef uint32_t k
    if hs == NULL or hs.by_stats == NULL or b == NULL:
        return -1
    k = _stats_hash(b) & hs.by_stats_mask
    while hs.by_stats[k] >= 0:
        if hs.hosts[hs.by_stats[k]].stats == b:
            return hs.by_stats[k]
        k = (k + 1) & hs.by_stats_mask
    return -1


cdef int _edf_cmp(const void* a, const void* b) noexcept nogil:
    # (k1 / w1) vs (k2 / w2) exactly, then the host's place in the source
    cdef const uint32_t* x = <const uint32_t*>a
    cdef const uint32_t* y = <const uint32_t*>b
    cdef uint64_t l = <uint64_t>x[0] * y[1], r = <uint64_t>y[0] * x[1]
    if l != r:
        return -1 if l < r else 1
    return -1 if x[2] < y[2] else (1 if x[2] > y[2] else 0)


cdef int _lb_source_schedule(HostSet* hs, LbSource* s) noexcept nogil:
    """s's weighted round-robin order: equal weights, the hosts in order; else every
    (host, k) for k in 1..weight ordered by k / weight (Envoy's EDF deadlines, ties by the
    host's place), so each host comes weight times per cycle, spread out. -1: no memory."""
    cdef int i, j, n = 0
    cdef uint32_t k, w0
    cdef uint32_t* e
    s.equal_weights = 1
    if s.n == 0:
        return 0
    w0 = hs.hosts[s.idx[0]].weight
    for i in range(s.n):
        if hs.hosts[s.idx[i]].weight != w0:
            s.equal_weights = 0
        n += <int>max(1, hs.hosts[s.idx[i]].weight)
    if s.equal_weights:
        n = s.n
    s.schedule = <int*>malloc(n * sizeof(int))
    if s.schedule == NULL:
        return -1
    s.nschedule = n
    if s.equal_weights:
        memcpy(s.schedule, s.idx, n * sizeof(int))
        return 0
    e = <uint32_t*>malloc(<size_t>n * 3 * sizeof(uint32_t))
    if e == NULL:
        return -1
    j = 0
    for i in range(s.n):
        w0 = max(1, hs.hosts[s.idx[i]].weight)
        for k in range(1, w0 + 1):
            e[j * 3] = k
            e[j * 3 + 1] = w0
            e[j * 3 + 2] = <uint32_t>i
            j += 1
    qsort(e, n, 3 * sizeof(uint32_t), _edf_cmp)
    for j in range(n):
        s.schedule[j] = s.idx[e[j * 3 + 2]]
    free(e)
    return 0


cdef void _lb_priority_loads(HostSet* hs, LbBuild* b) noexcept nogil:
    """Envoy's priority loads and panic (LoadBalancerBase's recalculatePerPriorityState,
    recalculatePerPriorityPanic and recalculateLoadInTotalPanic): each priority's health
    is min(100, overprovisioning * healthy / hosts), its degraded availability the same
    with degraded hosts; the 100% of load goes to the priorities in order by health (scaled
    when the total is under 100), then by degraded availability, the rest to the first
    available one. A priority whose healthy + degraded share of its non-excluded hosts is
    under the panic threshold is in panic; when all are, the load goes by host counts."""
    cdef int p, first_h = -1, first_d = -1, first_nonempty = -1, total_hosts = 0
    cdef uint32_t total = 0, availability, load_left, v, health_sum = 0, degraded_sum = 0
    cdef LbPriority* pr
    cdef double hosts_count
    cdef bint all_panic = True
    cdef uint32_t* health = <uint32_t*>calloc(hs.npriorities * 2, sizeof(uint32_t))
    if health == NULL:
        hs.prio[0].healthy_load = 100       # (what Envoy falls back to; no memory to do better)
        return
    for p in range(hs.npriorities):
        pr = &hs.prio[p]
        pr.healthy_load = 0
        pr.degraded_load = 0
        if pr.nhosts > 0:
            health[p * 2] = min(100, b.overprovisioning * <uint32_t>pr.nhealthy // <uint32_t>pr.nhosts)
            health[p * 2 + 1] = min(100, b.overprovisioning * <uint32_t>pr.ndegraded // <uint32_t>pr.nhosts)
        health_sum += health[p * 2]
        degraded_sum += health[p * 2 + 1]
    availability = min(100, health_sum + degraded_sum)
    if availability > 0:
        load_left = 100
        for p in range(hs.npriorities):
            if health[p * 2] > 0 and first_h < 0:
                first_h = p
            v = min(load_left, health[p * 2] * 100 // availability)
            hs.prio[p].healthy_load = v
            load_left -= v
        for p in range(hs.npriorities):
            if health[p * 2 + 1] > 0 and first_d < 0:
                first_d = p
            v = min(load_left, health[p * 2 + 1] * 100 // availability)
            hs.prio[p].degraded_load = v
            load_left -= v
        if load_left:
            if first_h >= 0:
                hs.prio[first_h].healthy_load += load_left
            else:
                hs.prio[first_d].degraded_load += load_left
    free(health)
    if b.panic_threshold == 0 and availability == 0:
        hs.prio[0].healthy_load = 100       # nothing to pick: the pick finds no host
        return
    for p in range(hs.npriorities):
        pr = &hs.prio[p]
        if availability == 0:
            pr.panic = 1
        else:
            # Envoy's isHostSetInPanic: a priority with no host left counts as 0% available
            # (in panic unless the threshold is 0).
            hosts_count = pr.nhosts - pr.nexcluded
            pr.panic = (0.0 if hosts_count == 0 else
                        100.0 * pr.nhealthy / hosts_count + 100.0 * pr.ndegraded / hosts_count) < b.panic_threshold
        if not pr.panic:
            all_panic = False
        total_hosts += pr.nhosts
    if not all_panic:
        return
    if total_hosts == 0:
        hs.prio[0].healthy_load = 100
        return
    load_left = 100
    for p in range(hs.npriorities):
        pr = &hs.prio[p]
        if first_nonempty < 0 and pr.nhosts:
            first_nonempty = p
        pr.healthy_load = <uint32_t>(100 * pr.nhosts // total_hosts)
        pr.degraded_load = 0
        load_left -= pr.healthy_load
    hs.prio[first_nonempty].healthy_load += load_left


cdef int _lb_source_build(HostSet* hs, LbSource* s, LbBuild* b, bint tables) noexcept nogil:
    """A source's slot, schedule and, for the hashing policies (tables), its ring or
    table. -1: no memory."""
    s.slot = hs.nsources
    hs.sources[hs.nsources] = s
    hs.nsources += 1
    if _lb_source_schedule(hs, s) < 0:
        return -1
    if not tables:
        return 0
    if b.policy == LB_RING_HASH:
        return ring_build(hs, s, b)
    if b.policy == LB_MAGLEV:
        return maglev_build(hs, s, b)
    return 0


cdef inline int _lb_idx_new(LbSource* s, int n) noexcept nogil:
    s.idx = <int*>malloc(max(1, n) * sizeof(int))
    return -1 if s.idx == NULL else 0


cdef int _lb_localities(HostSet* hs, LbPriority* pr, int p, LbBuild* b) noexcept nogil:
    """locality_weighted_lb_config: the priority's localities (Host.locality), each with its
    healthy and degraded hosts and Envoy's effective weights (HostSetImpl's
    effectiveLocalityWeight). -1: no memory."""
    cdef int i, n = 0
    cdef uint32_t f
    cdef LbLocality* l
    cdef double avail
    for i in range(hs.nhosts):
        if hs.hosts[i].priority == <uint32_t>p and <int>hs.hosts[i].locality + 1 > n:
            n = <int>hs.hosts[i].locality + 1
    pr.loc = <LbLocality*>calloc(max(1, n), sizeof(LbLocality))
    if pr.loc == NULL:
        return -1
    pr.nlocalities = n
    for i in range(hs.nhosts):
        if hs.hosts[i].priority == <uint32_t>p:
            l = &pr.loc[hs.hosts[i].locality]
            l.nhosts += 1
            l.weight = hs.hosts[i].locality_weight
    for i in range(n):
        if _lb_idx_new(&pr.loc[i].healthy, pr.loc[i].nhosts) < 0 or _lb_idx_new(&pr.loc[i].degraded, pr.loc[i].nhosts) < 0:
            return -1
    for i in range(hs.nhosts):
        if hs.hosts[i].priority != <uint32_t>p:
            continue
        l = &pr.loc[hs.hosts[i].locality]
        f = hs.health[i]
        if f & HF_EXCLUDED:
            l.nexcluded += 1
        elif f & HF_UNHEALTHY:
            pass
        elif f & HF_DEGRADED:
            l.degraded.idx[l.degraded.n] = i
            l.degraded.n += 1
        else:
            l.healthy.idx[l.healthy.n] = i
            l.healthy.n += 1
    for i in range(n):
        l = &pr.loc[i]
        if l.nhosts - l.nexcluded > 0:
            avail = b.overprovisioning / 100.0 / (l.nhosts - l.nexcluded)
            l.healthy_weight = l.weight * min(1.0, avail * l.healthy.n)
            l.degraded_weight = l.weight * min(1.0, avail * l.degraded.n)
    return 0


cdef HostSet* hostset_derive(HostSet* base, LbBuild* b) noexcept nogil:
    """A worker host set from base (the full host list, with stat blocks) and its hosts'
    health now (HostShared.health_flags): per priority its healthy, degraded and all-host
    lists with their schedules (and ring or table), its localities with
    locality_weighted_lb_config, Envoy's priority loads and panic. The set shares base's
    hosts and holds a reference to it. NULL: no memory."""
    cdef HostSet* hs = <HostSet*>calloc(1, sizeof(HostSet))
    cdef int i, p, maxp = 0, nsrc
    cdef uint32_t f
    cdef LbPriority* pr
    cdef HostShared* sh
    cdef bint hashed = b.policy == LB_RING_HASH or b.policy == LB_MAGLEV
    if hs == NULL:
        return NULL
    hs.refcnt = 1
    fp_atomic_add_int(&base.refcnt, 1)
    hs.base = base
    hs.nhosts = base.nhosts
    hs.hosts = base.hosts
    hs.by_stats = base.by_stats
    hs.by_stats_mask = base.by_stats_mask
    hs.policy = b.policy
    hs.choice_count = b.choice_count
    hs.active_request_bias = b.active_request_bias
    for i in range(base.nhosts):
        if <int>base.hosts[i].priority > maxp:
            maxp = <int>base.hosts[i].priority
    hs.npriorities = maxp + 1
    hs.health = <uint32_t*>calloc(max(1, base.nhosts), sizeof(uint32_t))
    hs.prio = <LbPriority*>calloc(hs.npriorities, sizeof(LbPriority))
    if hs.health == NULL or hs.prio == NULL:
        hostset_decref(hs)
        return NULL
    for i in range(base.nhosts):
        sh = host_shared(base.hosts[i].stats)
        hs.health[i] = 0 if sh == NULL else fp_load_u32(&sh.health_flags)
        hs.prio[base.hosts[i].priority].nhosts += 1
    for p in range(hs.npriorities):
        pr = &hs.prio[p]
        if _lb_idx_new(&pr.healthy, pr.nhosts) < 0 or _lb_idx_new(&pr.degraded, pr.nhosts) < 0 \
                or _lb_idx_new(&pr.all, pr.nhosts) < 0:
            hostset_decref(hs)
            return NULL
    # Envoy's coarse health: any unhealthy flag makes a host unhealthy, else any degraded
    # one degraded; an excluded host is in neither list (nor counted for panic).
    for i in range(base.nhosts):
        pr = &hs.prio[base.hosts[i].priority]
        f = hs.health[i]
        pr.all.idx[pr.all.n] = i
        pr.all.n += 1
        if f & HF_EXCLUDED:
            pr.nexcluded += 1
        elif f & HF_UNHEALTHY:
            pass
        elif f & HF_DEGRADED:
            pr.degraded.idx[pr.degraded.n] = i
            pr.degraded.n += 1
        else:
            pr.healthy.idx[pr.healthy.n] = i
            pr.healthy.n += 1
    nsrc = 0
    for p in range(hs.npriorities):
        pr = &hs.prio[p]
        pr.nhealthy = pr.healthy.n
        pr.ndegraded = pr.degraded.n
        hs.nhealthy += pr.nhealthy
        hs.ndegraded += pr.ndegraded
        hs.nexcluded += pr.nexcluded
        if b.locality_weighted and _lb_localities(hs, pr, p, b) < 0:
            hostset_decref(hs)
            return NULL
        nsrc += 3 + 2 * pr.nlocalities
    _lb_priority_loads(hs, b)
    hs.sources = <LbSource**>calloc(nsrc, sizeof(LbSource*))
    if hs.sources == NULL:
        hostset_decref(hs)
        return NULL
    for p in range(hs.npriorities):
        pr = &hs.prio[p]
        # (Envoy's hashing balancers build one ring or table per priority: its healthy
        # hosts, or all of them in panic; degraded hosts are not in it.)
        if (_lb_source_build(hs, &pr.healthy, b, hashed and not pr.panic) < 0
                or _lb_source_build(hs, &pr.degraded, b, False) < 0
                or _lb_source_build(hs, &pr.all, b, hashed and pr.panic) < 0):
            hostset_decref(hs)
            return NULL
        for i in range(pr.nlocalities):
            if (_lb_source_build(hs, &pr.loc[i].healthy, b, False) < 0
                    or _lb_source_build(hs, &pr.loc[i].degraded, b, False) < 0):
                hostset_decref(hs)
                return NULL
    return hs


cdef bint _same_hosts(HostSet* a, HostSet* b) noexcept nogil:
    """The same hosts (stat blocks: cluster and address) in the same order."""
    cdef int i
    if a == NULL or b == NULL:
        return a == b or (a == NULL and b.nhosts == 0) or (b == NULL and a.nhosts == 0)
    if a.nhosts != b.nhosts:
        return False
    for i in range(a.nhosts):
        if a.hosts[i].stats != b.hosts[i].stats:
            return False
    return True


cdef int _cluster_post_hosts(ClusterCfg* c, HostSet* hs) noexcept nogil:
    """Give every worker of c the set hs (each a reference); c.lock is held. -1: out of
    memory for some worker's message (that worker keeps its set)."""
    cdef int i, r = 0
    cdef HostSetSwap* m
    for i in range(c.nworkers):
        m = <HostSetSwap*>malloc(sizeof(HostSetSwap))
        if m == NULL:
            r = -1
            continue
        fp_atomic_add_int(&hs.refcnt, 1)
        fp_atomic_add_int(&c.refcnt, 1)
        m.cluster = c
        m.hosts = hs
        m.membership_change = c.membership_changed and i == 0
        if c.posting != NULL and fp_load_int(c.posting):
            if worker_post(&c.workers[i], _msg_hostset_swap, m) < 0:
                hostset_decref(m.hosts)
                cluster_decref(m.cluster)
                free(m)
                r = -1
        else:
            _msg_hostset_swap(&c.workers[i], m)     # no worker thread runs: its state is ours
    return r


cdef int _cluster_rebuild_locked(ClusterCfg* c) noexcept nogil:
    cdef HostSet* hs
    cdef int r
    if c.base == NULL:
        return 0
    hs = hostset_derive(c.base, &c.build)
    if hs == NULL:
        return -1
    hostset_decref(c.current)
    c.current = hs
    r = _cluster_post_hosts(c, hs)
    c.membership_changed = 0
    return r


cdef int cluster_health_changed(ClusterCfg* c) noexcept nogil:
    """Some host of c changed its health (HostShared.health_flags): rebuild c's worker host
    set from its latest full host list with every host's health now, and give it to every
    worker. Callable from any thread, without the GIL (health checkers, outlier detection,
    the main thread); rebuilds are serialized by c.lock, so the last one posted reflects
    the latest flags. -1: out of memory (the workers keep their sets)."""
    cdef int r
    if c == NULL:
        return 0
    pthread_mutex_lock(&c.lock)
    r = _cluster_rebuild_locked(c)
    pthread_mutex_unlock(&c.lock)
    return r


cdef void cluster_lb_init(ClusterCfg* c, Worker* workers, int* posting) noexcept nogil:
    """c's health-rebuild state: its lock, the workers to post to, the engine's flag of
    whether worker threads take messages."""
    pthread_mutex_init(&c.lock, NULL)
    c.workers = workers
    c.posting = posting
    c.build.policy = LB_ROUND_ROBIN
    c.build.overprovisioning = 140
    c.build.panic_threshold = 50
    c.build.choice_count = 2
    c.build.active_request_bias = 1.0


cdef int cluster_per_worker_new(ClusterCfg* c) noexcept nogil:
    """c's per-worker parts (for c.nworkers): its load balancer state and HTTP pools; -1,
    with nothing kept, when out of memory. cluster_decref frees them."""
    c.per_worker = <WorkerLb*>calloc(c.nworkers, sizeof(WorkerLb))
    if c.per_worker == NULL or http_pools_new(c) < 0:
        free(c.per_worker)
        c.per_worker = NULL
        return -1
    return 0


# A host's stat block lives while something may count into it: the engine's table of
# blocks (so a host that stays across a DNS refresh keeps its counters), each host set
# that has the host, and each stream or upstream connection that chose the host (it counts
# into the block after DNS has moved the host out of every set: a request's end, a
# connection's close). When only the table's reference is left, nothing can take a new one
# (a new reference comes from a host set), so set_hosts drops the block from the table and
# it is freed; a host that comes back later starts from zero, as a new host does in Envoy.
# The cluster's own totals (the cluster block) are counted beside the host's, so nothing
# is lost from /stats; /clusters lists the current hosts only.

cdef inline void host_stats_hold(StatBlock** slot, StatBlock* b) noexcept nogil:
    """slot (a stream's or upstream connection's hstats) refers to b from now on, with a
    reference of its own; the block it referred to before is released."""
    if b != NULL:
        fp_atomic_add_int(&b.refcnt, 1)
    statblock_decref(slot[0])
    slot[0] = b


cdef inline void host_stats_release(StatBlock** slot) noexcept nogil:
    """The stream or connection that owned slot is done counting."""
    statblock_decref(slot[0])
    slot[0] = NULL


cdef void cluster_decref(ClusterCfg* c) noexcept nogil:
    cdef int i
    if c != NULL and fp_atomic_add_int(&c.refcnt, -1) == 0:
        for i in range(c.nworkers):
            hostset_decref(c.per_worker[i].hosts)
            tls_provider_decref(c.per_worker[i].params.tls)
            statblock_decref(c.per_worker[i].params.h2_stats)
            free(c.per_worker[i].cursors)
            _lb_edf_free(&c.per_worker[i])
        free(c.per_worker)
        http_pools_free(c)
        outlier_detector_free(c)
        hostset_decref(c.base)
        hostset_decref(c.current)
        pthread_mutex_destroy(&c.lock)
        free(c)


cdef void _msg_hostset_swap(Worker* w, void* arg) noexcept nogil:
    cdef HostSetSwap* m = <HostSetSwap*>arg
    cdef WorkerLb* lb = &m.cluster.per_worker[w.index]
    cdef HostSet* old = lb.hosts
    cdef int need = m.hosts.nsources, i
    cdef uint32_t* cur
    lb.hosts = m.hosts          # the message's reference moves into the slot
    hostset_decref(old)
    if m.membership_change:     # (Envoy's membership_change: the hosts, not their health)
        stat_add(m.cluster.stats, w, C_MEMBERSHIP_CHANGE, 1)
    if need > lb.ncursors:
        # One round-robin cursor per source, each starting where this worker's spread
        # start is (a failed allocation: the sources share lb.next, _cursor_next).
        cur = <uint32_t*>realloc(lb.cursors, need * sizeof(uint32_t))
        if cur != NULL:
            for i in range(lb.ncursors, need):
                cur[i] = lb.next
            lb.cursors = cur
            lb.ncursors = need
    lb_edf_reset(lb, m.hosts)
    cluster_decref(m.cluster)
    free(m)


cdef void _msg_params_swap(Worker* w, void* arg) noexcept nogil:
    cdef ParamsSwap* m = <ParamsSwap*>arg
    cdef TlsProvider* old_tls = m.cluster.per_worker[w.index].params.tls
    cdef StatBlock* old_h2 = m.cluster.per_worker[w.index].params.h2_stats
    m.cluster.per_worker[w.index].params = m.params     # (its TLS and stats references move in)
    tls_provider_decref(old_tls)
    statblock_decref(old_h2)
    if m.params.removed:
        # The cluster is gone: its idle connections close (busy ones finish their request
        # and close then, http_pool_release).
        http_pool_close_idle(&m.cluster.http_pools[w.index])
    cluster_decref(m.cluster)
    free(m)


cdef inline double _lb_seconds() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class HostSetHandle:
    """A HostSet built on the main thread, not yet handed to workers."""
    cdef HostSet* hs

    def __dealloc__(self):
        hostset_decref(self.hs)

    @property
    def size(self):
        return self.hs.nhosts


cdef int _fill_sockaddr(Host* h, str ip, int port) except -1:
    """Parse an IP literal into a sockaddr (the control surface already validated it)."""
    import socket as _socket
    cdef bytes packed
    cdef sockaddr_in* a4
    cdef sockaddr_in6* a6
    memset(&h.addr, 0, sizeof(sockaddr_storage))
    if ":" in ip:
        packed = _socket.inet_pton(_socket.AF_INET6, ip)
        a6 = <sockaddr_in6*>&h.addr
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        memcpy(&a6.sin6_addr, <char*>packed, 16)
        h.addrlen = sizeof(sockaddr_in6)
    else:
        packed = _socket.inet_pton(_socket.AF_INET, ip)
        a4 = <sockaddr_in*>&h.addr
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        memcpy(&a4.sin_addr, <char*>packed, 4)
        h.addrlen = sizeof(sockaddr_in)
    return 0


def make_hostset(list hosts, schedule=None):
    """hosts: [(ip, port, hostname[, weight[, priority[, eds_flags[, locality,
    locality_weight]]]])]: a cluster's full host list in config order (every priority,
    healthy or not). eds_flags: HF_FAILED_EDS_HEALTH / HF_DEGRADED_EDS_HEALTH from the
    endpoint's health_status; locality: the index of its locality within its priority,
    locality_weight that locality's load_balancing_weight (0: none). The load balancer's
    lists and tables are built from it when it is given to a cluster (set_hosts).
    schedule: ignored (kept for callers of the old signature)."""
    cdef HostSetHandle h = HostSetHandle.__new__(HostSetHandle)
    cdef HostSet* hs = <HostSet*>calloc(1, sizeof(HostSet))
    cdef int i
    if hs == NULL:
        raise MemoryError()
    h.hs = hs
    hs.refcnt = 1
    hs.nhosts = len(hosts)
    hs.hosts = <Host*>calloc(max(1, hs.nhosts), sizeof(Host))
    if hs.hosts == NULL:
        raise MemoryError()
    for i, entry in enumerate(hosts):
        ip, port, name = entry[:3]
        n = len(entry)
        hs.hosts[i].weight = entry[3] if n > 3 else 1
        hs.hosts[i].priority = entry[4] if n > 4 else 0
        if hs.hosts[i].priority > LB_MAX_PRIORITY:
            raise ValueError(f"priority must be 0..{LB_MAX_PRIORITY}, got {hs.hosts[i].priority}")
        hs.hosts[i].eds_flags = (entry[5] if n > 5 else 0) & HF_EDS
        hs.hosts[i].locality = entry[6] if n > 6 else 0
        hs.hosts[i].locality_weight = entry[7] if n > 7 else 0
        _fill_sockaddr(&hs.hosts[i], ip, port)
        if ":" in ip:       # (the canonical text, as Envoy prints an address)
            import socket as _socket
            key = f"[{_socket.inet_ntop(_socket.AF_INET6, _socket.inet_pton(_socket.AF_INET6, ip))}]:{port}"
        else:
            key = f"{ip}:{port}"
        key = key.encode("ascii")
        if len(key) >= HOST_KEY_MAX_LEN:
            raise ValueError(f"address too long: {ip!r}")
        memcpy(hs.hosts[i].key, <char*>key, len(key))
        hs.hosts[i].keylen = <uint8_t>len(key)
        raw = name.encode("ascii")
        if len(raw) > HOST_NAME_MAX_LEN:
            raise ValueError(f"host name longer than {HOST_NAME_MAX_LEN} bytes: {name!r}")
        memcpy(hs.hosts[i].hostname, <char*>raw, len(raw))
        hs.hosts[i].hostname_len = <uint16_t>len(raw)
    return h


HOST_HEALTH_FLAGS = {
    "FAILED_ACTIVE_HC": HF_FAILED_ACTIVE_HC, "FAILED_OUTLIER_CHECK": HF_FAILED_OUTLIER_CHECK,
    "FAILED_EDS_HEALTH": HF_FAILED_EDS_HEALTH, "DEGRADED_ACTIVE_HC": HF_DEGRADED_ACTIVE_HC,
    "DEGRADED_EDS_HEALTH": HF_DEGRADED_EDS_HEALTH, "PENDING_DYNAMIC_REMOVAL": HF_PENDING_DYNAMIC_REMOVAL,
    "PENDING_ACTIVE_HC": HF_PENDING_ACTIVE_HC, "EXCLUDED_VIA_IMMEDIATE_HC_FAIL": HF_EXCLUDED_VIA_IMMEDIATE_HC_FAIL,
    "ACTIVE_HC_TIMEOUT": HF_ACTIVE_HC_TIMEOUT, "EDS_STATUS_DRAINING": HF_EDS_STATUS_DRAINING,
}


cdef LbBuild _lb_build(str lb_policy, dict lb) except *:
    """The load balancer's build options from the policy and the spec fastproxy.upstream.lb
    gives (LbOptions.to_spec(); None: Envoy's defaults)."""
    cdef LbBuild b
    memset(&b, 0, sizeof(LbBuild))
    policy = _LB_POLICIES.get(lb_policy)
    if policy is None:
        raise ValueError(f"lb_policy must be one of {', '.join(_LB_POLICIES)}, got {lb_policy!r}")
    lb = lb or {}
    b.policy = policy
    b.overprovisioning = lb.get("overprovisioning_factor", 140)
    b.panic_threshold = lb.get("healthy_panic_threshold", 50)
    b.locality_weighted = bool(lb.get("locality_weighted", False))
    b.ring_min = lb.get("minimum_ring_size", 1024)
    b.ring_max = lb.get("maximum_ring_size", 8388608)
    b.ring_murmur = lb.get("hash_function", "XX_HASH") == "MURMUR_HASH_2"
    b.maglev_size = lb.get("table_size", 65537)
    b.choice_count = lb.get("choice_count", 2)
    b.active_request_bias = lb.get("active_request_bias", 1.0)
    if b.ring_min < 1 or b.ring_max < b.ring_min or b.maglev_size < 1 or b.choice_count < 1:
        raise ValueError(f"lb: bad ring, table or choice sizes: {lb!r}")
    return b


_LB_POLICIES = {"ROUND_ROBIN": LB_ROUND_ROBIN, "RANDOM": LB_RANDOM, "LEAST_REQUEST": LB_LEAST_REQUEST,
                "RING_HASH": LB_RING_HASH, "MAGLEV": LB_MAGLEV}


cdef void _host_stats_prune(dict table):
    """Drop the blocks of a cluster's hosts that no host set, stream or connection refers
    to any more (only the table's reference is left). A host set replaced by this refresh
    still has its workers' references until they swap it: its hosts go at the cluster's
    next refresh. One cluster's table only: an EDS push of many clusters stays linear."""
    cdef StatBlockHandle sb
    for key, sb in list(table.items()):
        if fp_load_int(&sb.b.refcnt) == 1:
            del table[key]


def prune_host_stats(Engine engine):
    """Drop the host blocks nothing counts into any more, of every cluster (after clusters
    were freed: a removed cluster's hosts go with it)."""
    for key, table in list(engine.host_stats.items()):
        _host_stats_prune(table)
        if not table:
            del engine.host_stats[key]


def _host_stat_blocks(Engine engine):
    """How many host stat blocks the engine keeps (fastproxy._testing)."""
    return sum(len(table) for table in engine.host_stats.values())


cdef ClusterParams _cluster_params(str lb_policy, double connect_timeout, pool_idle_timeout,
                                   max_connection_duration, uint32_t max_requests_per_connection,
                                   uint32_t max_connections, uint32_t max_pending_requests,
                                   uint32_t max_requests, uint32_t max_retries, bint removed,
                                   str protocol=None, dict h2=None) except *:
    cdef ClusterParams p
    memset(&p, 0, sizeof(ClusterParams))
    if lb_policy not in _LB_POLICIES:
        raise ValueError(f"lb_policy must be one of {', '.join(_LB_POLICIES)}, got {lb_policy!r}")
    p.lb = _LB_POLICIES[lb_policy]
    p.removed = removed
    p.connect_timeout_ms = max(1, <uint64_t>(connect_timeout * 1000))
    p.pool_idle_ms = 0 if not pool_idle_timeout else max(1, <uint64_t>(pool_idle_timeout * 1000))
    p.max_duration_ms = 0 if not max_connection_duration else max(1, <uint64_t>(max_connection_duration * 1000))
    p.max_rq_per_cx = max_requests_per_connection
    p.max_cx = max_connections
    p.max_pending = max_pending_requests
    p.max_rq = max_requests
    p.max_retries = max_retries
    if protocol is None:
        protocol = "http1"
    if protocol not in ("http1", "http2", "auto"):
        raise ValueError(f"protocol must be http1, http2 or auto, got {protocol!r}")
    p.protocol = UP_HTTP2 if protocol == "http2" else (UP_AUTO if protocol == "auto" else UP_HTTP1)
    if p.protocol != UP_HTTP1:
        if h2 is None:
            raise ValueError(f"h2: the http2_protocol_options spec is required with protocol {protocol!r}")
        h2_options_compile(h2, &p.h2)
    return p


cdef StatBlock* _h2_stats_block(StatBlockHandle h2_stats) except? NULL:
    """A cluster's cluster.<name>.http2.* block (borrowed), or NULL."""
    if h2_stats is None:
        return NULL
    if h2_stats.names != HTTP2_STATS:
        raise ValueError("h2_stats: a block of kind 'http2' is required")
    return h2_stats.b


cdef TlsProvider* _client_tls(TlsContextHandle tls) except? NULL:
    """A cluster's TLS: a client context's provider (borrowed), or NULL."""
    if tls is None:
        return NULL
    if tls.server:
        raise ValueError(f"tls: {tls.name!r} is a server context; a cluster needs a client one")
    return tls.p


cdef class ClusterHandle:
    """Python owner of one reference to a ClusterCfg: a cluster's identity while its name
    is configured or referenced (Proxy._cluster_ref). Its config changes in place:
    set_params, set_hosts, remove."""
    cdef ClusterCfg* c
    cdef Engine engine
    cdef readonly StatBlockHandle stats
    cdef HostSetHandle current          # the host set last given to the workers
    cdef ClusterParams params           # the params last given to the workers (its tls: a reference)
    # Health flags a host new to the cluster starts with: HF_FAILED_ACTIVE_HC while the
    # cluster has active health checks (health_checker.pxi), as Envoy's new hosts, so that
    # no worker picks a host before its first check passes.
    cdef uint32_t new_host_health_flags

    def __dealloc__(self):
        tls_provider_decref(self.params.tls)
        statblock_decref(self.params.h2_stats)
        cluster_decref(self.c)

    @property
    def in_use(self):
        """Something besides this handle refers to the cluster: a listener or route
        table, a connection, a request, a worker message."""
        return fp_load_int(&self.c.refcnt) > 1

    @property
    def removed(self):
        """No cluster of this name is configured: requests get 503 NC."""
        return bool(self.params.removed)

    def set_params(self, str lb_policy, double connect_timeout, pool_idle_timeout=None,
                   max_connection_duration=None, uint32_t max_requests_per_connection=0,
                   uint32_t max_connections=1024, uint32_t max_pending_requests=1024,
                   uint32_t max_requests=1024, uint32_t max_retries=3, TlsContextHandle tls=None,
                   str protocol="http1", dict h2=None, StatBlockHandle h2_stats=None, dict lb=None):
        """Give every worker the cluster's new params (a config update; the cluster is
        configured, so no longer removed). Returns at once; each worker's new requests and
        connections use them from its next loop turn. tls: upstream TLS with that client
        context (None: plaintext). protocol: "http1", "http2" (h2c with prior knowledge on
        plaintext, ALPN h2 over TLS) or "auto" (ALPN over TLS, HTTP/1.1 on plaintext); h2:
        Http2ProtocolOptions.to_spec(); h2_stats: its cluster.<name>.http2.* block. A
        connection keeps the protocol it was made with. lb: the load balancer's options
        (fastproxy.upstream.lb spec); when they or the policy change, the workers get host
        sets built for them."""
        cdef ClusterParams p = _cluster_params(
            lb_policy, connect_timeout, pool_idle_timeout, max_connection_duration,
            max_requests_per_connection, max_connections, max_pending_requests, max_requests,
            max_retries, False, protocol, h2)
        cdef LbBuild b = _lb_build(lb_policy, lb)
        cdef int r = 0
        p.tls = _client_tls(tls)
        p.h2_stats = _h2_stats_block(h2_stats)
        self._post_params(p)
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            if memcmp(&b, &self.c.build, sizeof(LbBuild)) != 0:
                self.c.build = b
                r = _cluster_rebuild_locked(self.c)
            pthread_mutex_unlock(&self.c.lock)
        if r < 0:
            raise MemoryError()

    def remove(self):
        """No cluster of this name is configured any more: new HTTP requests to it get 503
        NC, new TCP connections are closed, idle pooled connections close. In-flight ones
        finish. set_params revives it."""
        cdef ClusterParams p = self.params
        p.removed = 1
        self._post_params(p)

    cdef _post_params(self, ClusterParams params):
        cdef int i
        cdef ParamsSwap* m
        cdef TlsProvider* old_tls = self.params.tls
        cdef StatBlock* old_h2 = self.params.h2_stats
        if params.tls != NULL:
            fp_atomic_add_int(&params.tls.refcnt, 1)    # the handle's copy
        if params.h2_stats != NULL:
            fp_atomic_add_int(&params.h2_stats.refcnt, 1)
        self.params = params
        tls_provider_decref(old_tls)
        statblock_decref(old_h2)
        for i in range(self.c.nworkers):
            m = <ParamsSwap*>malloc(sizeof(ParamsSwap))
            if m == NULL:
                raise MemoryError()
            fp_atomic_add_int(&self.c.refcnt, 1)
            if params.tls != NULL:
                fp_atomic_add_int(&params.tls.refcnt, 1)    # the worker's copy
            if params.h2_stats != NULL:
                fp_atomic_add_int(&params.h2_stats.refcnt, 1)
            m.cluster = self.c
            m.params = params
            if self.engine.post(i, _msg_params_swap, m) < 0:
                cluster_decref(m.cluster)           # that worker keeps its params
                tls_provider_decref(params.tls)
                statblock_decref(params.h2_stats)
                free(m)
                raise MemoryError()

    def host_statuses(self):
        """The current hosts: [(ip, port, hostname, weight, {stat: value}, health_flags,
        priority)], the stats summed over the workers in Envoy's order (HOST_STATS),
        health_flags the host's HostShared.health_flags now (HF_* bits; 0: healthy)."""
        import socket as _socket
        cdef Host* hst
        cdef StatBlockHandle view
        cdef HostShared* sh
        cdef int i
        out = []
        if self.current is None:
            return out
        for i in range(self.current.hs.nhosts):
            hst = &self.current.hs.hosts[i]
            if hst.addr.ss_family == AF_INET6:
                ip = _socket.inet_ntop(_socket.AF_INET6, (<char*>&(<sockaddr_in6*>&hst.addr).sin6_addr)[:16])
                port = ntohs((<sockaddr_in6*>&hst.addr).sin6_port)
            else:
                ip = _socket.inet_ntop(_socket.AF_INET, (<char*>&(<sockaddr_in*>&hst.addr).sin_addr)[:4])
                port = ntohs((<sockaddr_in*>&hst.addr).sin_port)
            stats = {}
            if hst.stats != NULL:
                view = StatBlockHandle.__new__(StatBlockHandle)     # borrows the block
                view.b = hst.stats
                view.names = HOST_STATS
                view.gauges = HOST_GAUGES
                view.histograms = ()
                try:
                    stats = view.read()
                finally:
                    view.b = NULL                                   # not its owner
            sh = host_shared(hst.stats)
            flags = 0 if sh == NULL else fp_load_u32(&sh.health_flags)
            out.append((ip, port, hst.hostname[:hst.hostname_len].decode("ascii"), hst.weight, stats,
                        flags, hst.priority))
        return out

    def membership(self):
        """{healthy, degraded, excluded, total}: the hosts of the set the workers pick from
        now, over every priority (Envoy's membership_* gauges)."""
        cdef HostSet* hs
        cdef int healthy = 0, degraded = 0, excluded = 0, total = 0
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            hs = self.c.current
            if hs != NULL:
                healthy, degraded, excluded, total = hs.nhealthy, hs.ndegraded, hs.nexcluded, hs.nhosts
            pthread_mutex_unlock(&self.c.lock)
        return {"healthy": healthy, "degraded": degraded, "excluded": excluded, "total": total}

    def _set_health(self, str ip, int port, uint32_t set_bits, uint32_t clear_bits):
        """Test hook (fastproxy._testing.set_host_health): set and clear health bits of the
        host at ip:port, then cluster_health_changed. Returns its flags after."""
        cdef Host* hst
        cdef HostShared* sh
        cdef int i, r
        if self.current is None:
            raise KeyError(f"{ip}:{port}")
        for i, entry in enumerate(self.host_statuses()):
            if entry[0] == ip and entry[1] == port:
                sh = host_shared(self.current.hs.hosts[i].stats)
                if sh == NULL:
                    break
                fp_atomic_and_u32(&sh.health_flags, ~clear_bits)
                fp_atomic_or_u32(&sh.health_flags, set_bits)
                with nogil:
                    r = cluster_health_changed(self.c)
                if r < 0:
                    raise MemoryError()
                return fp_load_u32(&sh.health_flags)
        raise KeyError(f"{ip}:{port}")

    def _pick_hashed(self, uint64_t h, int attempt=0):
        """Test hook: the host (ip, port) the current worker set gives a request hashed to
        h (RING_HASH, MAGLEV: its priority by the loads, then its ring or table); None: no
        host. Reads the set under the cluster's lock, never a worker's state."""
        cdef HostSet* hs
        cdef int i = -1, p
        cdef uint8_t degraded
        cdef LbSource* src
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            hs = self.c.current
            if hs != NULL:
                fp_atomic_add_int(&hs.refcnt, 1)
            pthread_mutex_unlock(&self.c.lock)
        if hs == NULL:
            return None
        try:
            p = lb_choose_priority(hs, h, &degraded)
            src = &hs.prio[p].all if hs.prio[p].panic else &hs.prio[p].healthy
            if hs.policy == LB_RING_HASH:
                i = ring_lookup(src, h, attempt)
            elif hs.policy == LB_MAGLEV:
                i = maglev_lookup(src, h, attempt)
            else:
                raise ValueError("the cluster's policy is not RING_HASH or MAGLEV")
            if i < 0:
                return None
            return self.host_statuses()[i][:2]
        finally:
            hostset_decref(hs)

    def _pick(self, int n, list avoid=None, int max_attempts=0, hash=None, int attempt=0, int worker=0):
        """Test hook (fastproxy._testing.pick): n picks by worker `worker`'s cluster_pick
        with an LbContext of the hosts to avoid ([(ip, port)]), host_selection_max_attempts,
        the hash and the attempt. Only on an engine whose workers do not run (a pick moves
        the worker's cursors). Returns [(ip, port) or None]."""
        cdef LbContext ctx
        cdef StatBlock* blocks[16]
        cdef Host* h
        cdef int i, k
        if self.engine.workers_run():
            raise RuntimeError("_pick needs an engine whose workers do not run")
        if not 0 <= worker < self.c.nworkers:
            raise ValueError("worker out of range")
        memset(&ctx, 0, sizeof(LbContext))
        rows = self.host_statuses()
        for ip, port in (avoid or [])[:16]:
            for k, row in enumerate(rows):
                if row[0] == ip and row[1] == port:
                    blocks[ctx.navoid] = self.current.hs.hosts[k].stats
                    ctx.navoid += 1
        ctx.avoid = blocks
        ctx.host_selection_max_attempts = max_attempts
        ctx.attempt = attempt
        if hash is not None:
            ctx.has_hash = 1
            ctx.hash = hash
        out = []
        for i in range(n):
            h = cluster_pick(self.c, &self.engine.workers[worker], &ctx)
            if h == NULL:
                out.append(None)
                continue
            k = hostset_find(self.c.per_worker[worker].hosts, h.stats)
            out.append(rows[k][:2])
        return out

    def _bench(self, str kind, int rounds):
        """Micro-benchmark hook (fastproxy._testing.lb_bench): `rounds` picks ("ring",
        "maglev": a random hash each; "least_request": the power of two choices) from
        the current worker set's priority 0 healthy hosts, or host set rebuilds
        ("rebuild": hostset_derive with its ring or table), timed in C without the GIL.
        Returns (seconds per operation, a checksum of the picks)."""
        cdef HostSet* hs
        cdef HostSet* t
        cdef LbSource* src
        cdef WorkerLb lb
        cdef uint64_t rng = 0x9E3779B97F4A7C15ULL, acc = 0
        cdef int i, which
        cdef double t0, t1
        which = {"ring": 0, "maglev": 1, "least_request": 2, "rebuild": 3}[kind]
        memset(&lb, 0, sizeof(WorkerLb))
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            hs = self.c.current
            if hs != NULL:
                fp_atomic_add_int(&hs.refcnt, 1)
            pthread_mutex_unlock(&self.c.lock)
        if hs == NULL or hs.prio[0].healthy.n == 0:
            hostset_decref(hs)
            raise ValueError("the cluster has no healthy host")
        src = &hs.prio[0].healthy
        with nogil:
            t0 = _lb_seconds()
            for i in range(rounds):
                if which == 0:
                    acc += <uint64_t>ring_lookup(src, xorshift64s(&rng), 0)
                elif which == 1:
                    acc += <uint64_t>maglev_lookup(src, xorshift64s(&rng), 0)
                elif which == 2:
                    acc += <uint64_t>_pick_least_request(hs, &lb, src, &rng)
                else:
                    t = hostset_derive(hs.base, &self.c.build)
                    if t != NULL:
                        acc += <uint64_t>t.nhealthy
                    hostset_decref(t)
            t1 = _lb_seconds()
        hostset_decref(hs)
        return (t1 - t0) / max(1, rounds), acc

    def circuit_breakers(self):
        """{name: (in use, limit)} for connections, pending requests and requests, over
        every worker (what Envoy's circuit_breakers.* gauges are computed from)."""
        return {"cx": (fp_atomic_load_i64(&self.c.n_cx), self.params.max_cx),
                "pending": (fp_atomic_load_i64(&self.c.n_pending), self.params.max_pending),
                "rq": (fp_atomic_load_i64(&self.c.n_rq), self.params.max_rq),
                "retries": (fp_atomic_load_i64(&self.c.n_retries), self._retry_limit())}

    cdef uint64_t _retry_limit(self):
        return <uint64_t>cluster_retry_limit(self.c, self.params.max_retries)

    def set_retry_budget(self, budget_percent=None, uint32_t min_retry_concurrency=3):
        """The circuit breakers' retry_budget (None: none; max_retries limits retries).
        Workers read it with their next retry decision."""
        if budget_percent is None:
            self.c.has_retry_budget = 0
            return
        self.c.retry_budget_pct_x100 = <uint32_t>(float(budget_percent) * 100 + 0.5)
        self.c.retry_budget_min = min_retry_concurrency
        self.c.has_retry_budget = 1

    def set_hosts(self, HostSetHandle hosts):
        """Give every worker the new host set (DNS refresh, a config update, EDS). Returns
        at once. A host that stays (same address) keeps its counters and its pooled
        connections; connections to hosts that left finish what they carry and close."""
        cdef int i, r
        cdef dict table
        cdef StatBlockHandle sb
        cdef Host* hst
        cdef HostShared* sh
        # Each host's counters: the block of that address in this cluster, kept by the
        # engine (a host that stays across a DNS refresh or a config update keeps counting).
        table = self.engine.host_stats.get(<size_t>self.c.stats)
        if table is None:
            table = {}
            if hosts.hs.nhosts:
                self.engine.host_stats[<size_t>self.c.stats] = table
        for i in range(hosts.hs.nhosts):
            hst = &hosts.hs.hosts[i]
            if hst.stats == NULL:
                key = (<char*>&hst.addr)[:hst.addrlen]
                sb = table.get(key)
                if sb is None:
                    sb = _statblock_handle(HOST_STATS, HOST_GAUGES, self.engine.nworkers)
                    sb.b.ext = calloc(1, sizeof(HostShared))
                    if sb.b.ext == NULL:
                        raise MemoryError()
                    (<HostShared*>sb.b.ext).health_flags = self.new_host_health_flags
                    table[key] = sb
                fp_atomic_add_int(&sb.b.refcnt, 1)     # the host set's reference
                hst.stats = sb.b
        if hosts.hs.base != NULL:
            raise ValueError("set_hosts takes a full host list (make_hostset)")
        for i in range(hosts.hs.nhosts):
            # What EDS says of the host (its health_status) is part of its health: the
            # EDS bits follow the latest assignment, the others are the checkers'.
            hst = &hosts.hs.hosts[i]
            sh = host_shared(hst.stats)
            if sh != NULL and (fp_load_u32(&sh.health_flags) & HF_EDS) != hst.eds_flags:
                fp_atomic_and_u32(&sh.health_flags, ~(<uint32_t>HF_EDS))
                fp_atomic_or_u32(&sh.health_flags, hst.eds_flags)
        if hosts.hs.by_stats == NULL and hostset_index(hosts.hs) < 0:
            raise MemoryError()
        _host_stats_prune(table)
        self.current = hosts
        if outlier_hosts_changed(self.c, hosts.hs) < 0:
            raise MemoryError()
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            fp_atomic_add_int(&hosts.hs.refcnt, 1)
            if not _same_hosts(self.c.base, hosts.hs):
                self.c.membership_changed = 1
            hostset_decref(self.c.base)
            self.c.base = hosts.hs
            r = _cluster_rebuild_locked(self.c)
            pthread_mutex_unlock(&self.c.lock)
        if r < 0:
            raise MemoryError()
