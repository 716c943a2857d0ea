# The load balancer: which host of a cluster a new upstream connection goes to. It knows
# hosts, not connections (the HTTP pool, http_pool.pxi, keeps those).
#
# A HostSet is immutable once built (by the main thread). Each worker holds its own
# reference to its cluster's current HostSet, replaced by a posted message when DNS
# changes the membership, so picking a host takes no lock. Weighted round robin uses a
# schedule precomputed on the main thread (smooth weighted interleaving), so the worker
# only advances an index; RANDOM draws an index into the same schedule, which weights it.
# The cluster's params (policy, timeouts, limits) are per worker too (WorkerLb.params),
# replaced the same way when the cluster's config changes.


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


cdef Host* cluster_pick(ClusterCfg* c, Worker* w, LbContext* ctx) noexcept nogil:
    """Choose the host for a new upstream connection; NULL when the cluster is empty.
    ctx: the request's hash, attempt and hosts to avoid (NULL: none)."""
    cdef WorkerLb* lb = &c.per_worker[w.index]
    cdef HostSet* hs = lb.hosts
    cdef uint32_t i
    cdef int attempt = 0 if ctx == NULL else ctx.attempt
    if hs == NULL or hs.nschedule == 0:
        return NULL
    if lb.params.lb == LB_RANDOM and attempt == 0:
        i = <uint32_t>(worker_random(w) % <uint64_t>hs.nschedule)
    else:
        # Round robin; a retry after a failed connect also moves on to the next host.
        i = lb.next % <uint32_t>hs.nschedule
        lb.next += 1
    return &hs.hosts[hs.schedule[i]]
