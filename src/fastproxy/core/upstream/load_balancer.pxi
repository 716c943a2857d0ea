# The load balancer: which host of a cluster a new upstream connection goes to. It knows
# hosts, not connections (the HTTP pool, http_pool.pxi, keeps those).
#
# A worker's HostSet is immutable once built (cluster_health_changed, cluster.pxi: on the
# main thread for a config or DNS change, on any thread for a health change). Each worker
# holds its own reference to its cluster's current set, replaced by a posted message, so a
# pick takes no lock and allocates nothing. The set carries, per priority, index arrays of
# its healthy, degraded and (for panic) all hosts with their weighted round-robin schedule
# and, for RING_HASH and MAGLEV, their ring or table (lb_tables.pxi); and Envoy's priority
# loads. A pick follows Envoy's LoadBalancerBase: a priority (and healthy or degraded) from
# the loads with a hash (the request's, or a random one), then a host of that priority's
# source with the set's policy (RANDOM: uniform over the source, as Envoy's). What a worker changes while picking (round-robin cursors,
# weighted LEAST_REQUEST's scheduler) is in its WorkerLb, sized when a set arrives.
# The cluster's params (timeouts, limits) are per worker too (WorkerLb.params), replaced the
# same way when the cluster's config changes.


cdef inline HostSet* lb_hosts(ClusterCfg* c, Worker* w) noexcept nogil:
    """The worker's current host set of c (NULL before the first one)."""
    return c.per_worker[w.index].hosts


cdef inline ClusterParams* cluster_params(ClusterCfg* c, Worker* w) noexcept nogil:
    """The worker's copy of c's params (what its config sets: timeouts, limits, policy)."""
    return &c.per_worker[w.index].params


cdef inline HostShared* host_shared(StatBlock* b) noexcept nogil:
    """The shared state (health, in-flight requests, outlier counters) of the host whose
    stat block is b; NULL for NULL."""
    return NULL if b == NULL else <HostShared*>b.ext


cdef inline void host_rq_active_add(StatBlock* b, Worker* w, int d) noexcept nogil:
    """A request to the host whose block is b starts (d = 1) or ends (d = -1): its
    rq_active gauge (this worker's row) and its in-flight count over every worker
    (HostShared.rq_active, what LEAST_REQUEST reads)."""
    cdef HostShared* sh = host_shared(b)
    if b == NULL:
        return
    if d > 0:
        host_stat_add(b, w, HS_RQ_ACTIVE, <uint64_t>d)
    else:
        host_stat_sub(b, w, HS_RQ_ACTIVE, <uint64_t>(-d))
    if sh != NULL:
        fp_atomic_add_i64(&sh.rq_active, d)


cdef inline int64_t _host_rq_active(Host* h) noexcept nogil:
    cdef HostShared* sh = host_shared(h.stats)
    return 0 if sh == NULL else fp_atomic_load_i64(&sh.rq_active)


cdef int lb_choose_priority(HostSet* hs, uint64_t h, uint8_t* degraded) noexcept nogil:
    """Envoy's choosePriority: the priority (and whether its degraded hosts) a hash falls
    into, by the per-priority loads (percent, summing to 100)."""
    cdef uint32_t point = <uint32_t>(h % 100) + 1, total = 0
    cdef int p
    degraded[0] = 0
    for p in range(hs.npriorities):
        total += hs.prio[p].healthy_load
        if point <= total:
            return p
    for p in range(hs.npriorities):
        total += hs.prio[p].degraded_load
        if point <= total:
            degraded[0] = 1
            return p
    return 0


cdef inline int _cursor_next(WorkerLb* lb, int k) noexcept nogil:
    """Source k's round-robin cursor, advanced (the worker's shared one when the cursors
    could not be sized)."""
    cdef uint32_t v
    if k < lb.ncursors:
        v = lb.cursors[k]
        lb.cursors[k] = v + 1
    else:
        v = lb.next
        lb.next += 1
    return <int>(v & 0x7fffffff)


cdef int _pick_least_request(HostSet* hs, WorkerLb* lb, LbSource* src, uint64_t* rng) noexcept nogil:
    """Envoy's LEAST_REQUEST over src: with equal weights, the least loaded of
    choice_count random hosts (the first sampled wins ties); else the EDF scheduler with
    weight / (rq_active + 1) ^ active_request_bias."""
    cdef uint32_t i
    cdef int best = -1, cand, k = src.slot
    cdef int64_t best_rq = 0, rq
    if not src.equal_weights and k < lb.nedf and lb.edf[k].heap != NULL and lb.edf[k].n == src.n:
        return lb_edf_pick(&lb.edf[k], hs, src, hs.active_request_bias)
    for i in range(hs.choice_count if hs.choice_count > 0 else 2):
        cand = src.idx[xorshift64s(rng) % <uint64_t>src.n]
        rq = _host_rq_active(&hs.hosts[cand])
        if best < 0 or rq < best_rq:
            best = cand
            best_rq = rq
    return best


cdef LbSource* _pick_locality(LbPriority* pr, bint degraded, uint64_t* rng) noexcept nogil:
    """locality_weighted_lb_config: a locality of the priority drawn by its effective
    weight (Envoy's chooseHealthyLocality / chooseDegradedLocality, which interleave by
    the same weights), its healthy (degraded) hosts; NULL when every weight is 0 (Envoy
    then uses the priority's hosts)."""
    cdef double total = 0, point
    cdef int i
    for i in range(pr.nlocalities):
        total += pr.loc[i].degraded_weight if degraded else pr.loc[i].healthy_weight
    if total <= 0:
        return NULL
    point = (xorshift64s(rng) >> 11) * (1.0 / 9007199254740992.0) * total
    for i in range(pr.nlocalities):
        point -= pr.loc[i].degraded_weight if degraded else pr.loc[i].healthy_weight
        if point < 0:
            return &pr.loc[i].degraded if degraded else &pr.loc[i].healthy
    for i in range(pr.nlocalities - 1, -1, -1):     # (rounding: the last weighted one)
        if (pr.loc[i].degraded_weight if degraded else pr.loc[i].healthy_weight) > 0:
            return &pr.loc[i].degraded if degraded else &pr.loc[i].healthy
    return NULL


cdef int _pick_once(ClusterCfg* c, Worker* w, WorkerLb* lb, HostSet* hs, LbContext* ctx,
                    int attempt, int retry) noexcept nogil:
    """One pick (Envoy's chooseHostOnce); retry counts the picks made for this request
    because an earlier one was a host to avoid. -1: no host."""
    cdef uint8_t degraded = 0
    cdef uint64_t h
    cdef int p, i
    cdef LbPriority* pr
    cdef LbSource* src = NULL
    cdef bint hashed = hs.policy == LB_RING_HASH or hs.policy == LB_MAGLEV
    if hashed and ctx != NULL and ctx.has_hash:
        h = ctx.hash
    else:
        h = worker_random(w)
    p = lb_choose_priority(hs, h, &degraded)
    pr = &hs.prio[p]
    if pr.panic:
        stat_add(c.stats, w, C_LB_HEALTHY_PANIC, 1)
    if hashed:
        # The ring or table of the priority (its healthy hosts, all of them in panic).
        # As Envoy's, a re-pick for a host to avoid moves on (retry), a retry of the
        # request itself hashes to the same host first.
        src = &pr.all if pr.panic else &pr.healthy
        if hs.policy == LB_RING_HASH:
            return ring_lookup(src, h, retry)
        return maglev_lookup(src, h, retry)
    if pr.panic:
        src = &pr.all
    else:
        if pr.nlocalities:
            src = _pick_locality(pr, degraded, &w.rng)
        if src == NULL:
            src = &pr.degraded if degraded else &pr.healthy
    if src.n == 0:
        return -1
    if hs.policy == LB_LEAST_REQUEST:
        return _pick_least_request(hs, lb, src, &w.rng)
    if hs.policy == LB_RANDOM and attempt == 0 and retry == 0:
        # Envoy's RANDOM: the same random number that chose the priority, over the
        # source's hosts (weights play no part).
        return src.idx[h % <uint64_t>src.n]
    else:
        # Round robin; a retry after a failed connect also moves on to the next host.
        i = _cursor_next(lb, src.slot) % src.nschedule
    return src.schedule[i]


cdef inline bint _lb_avoided(Host* h, LbContext* ctx) noexcept nogil:
    cdef int i
    for i in range(ctx.navoid):
        if ctx.avoid[i] == h.stats:
            return True
    return False


cdef Host* cluster_pick(ClusterCfg* c, Worker* w, LbContext* ctx) noexcept nogil:
    """Choose the host for a new upstream connection; NULL when the cluster has no host to
    give (empty, or no healthy host and not in panic). ctx: the request's hash, attempt
    and hosts to avoid (NULL: none). A host to avoid (retry_host_predicate previous_hosts)
    is re-picked up to host_selection_max_attempts picks in all, then the last pick is
    taken anyway, as Envoy does."""
    cdef WorkerLb* lb = &c.per_worker[w.index]
    cdef HostSet* hs = lb.hosts
    cdef int attempt = 0 if ctx == NULL else ctx.attempt
    cdef int tries = 1, t, i = -1
    if hs == NULL or hs.prio == NULL:
        return NULL
    if ctx != NULL and ctx.navoid > 0 and ctx.host_selection_max_attempts > 1:
        tries = ctx.host_selection_max_attempts
    for t in range(tries):
        i = _pick_once(c, w, lb, hs, ctx, attempt, t)
        if i < 0:
            return NULL
        if ctx == NULL or ctx.navoid == 0 or not _lb_avoided(&hs.hosts[i], ctx):
            break
    return &hs.hosts[i]
