# Clusters: the cluster config a worker reads (connect timeout, pool options, circuit
# breakers), host sets built on the main thread and handed to the workers (DNS refresh),
# and the Python handles that own them. Which host a connection goes to:
# load_balancer.pxi; the structs: decls.pxi.


cdef inline bint cb_full(int64_t* count, uint32_t limit) noexcept nogil:
    return fp_atomic_load_i64(count) >= <int64_t>limit


cdef void hostset_decref(HostSet* h) noexcept nogil:
    cdef int i
    if h != NULL and fp_atomic_add_int(&h.refcnt, -1) == 0:
        for i in range(h.nhosts):
            statblock_decref(h.hosts[i].stats)
        free(h.hosts)
        free(h.schedule)
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
        free(c.per_worker)
        http_pools_free(c)
        free(c)


cdef void _msg_hostset_swap(Worker* w, void* arg) noexcept nogil:
    cdef HostSetSwap* m = <HostSetSwap*>arg
    cdef WorkerLb* lb = &m.cluster.per_worker[w.index]
    cdef HostSet* old = lb.hosts
    lb.hosts = m.hosts          # the message's reference moves into the slot
    hostset_decref(old)
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


def make_hostset(list hosts, list schedule):
    """hosts: [(ip, port, hostname[, weight])], schedule: [host index] (the weighted pick
    order)."""
    cdef HostSetHandle h = HostSetHandle.__new__(HostSetHandle)
    cdef HostSet* hs = <HostSet*>calloc(1, sizeof(HostSet))
    cdef int i
    if hs == NULL:
        raise MemoryError()
    h.hs = hs
    hs.refcnt = 1
    hs.nhosts = len(hosts)
    hs.nschedule = len(schedule)
    hs.hosts = <Host*>calloc(max(1, hs.nhosts), sizeof(Host))
    hs.schedule = <int*>calloc(max(1, hs.nschedule), sizeof(int))
    if hs.hosts == NULL or hs.schedule == NULL:
        raise MemoryError()
    for i, entry in enumerate(hosts):
        ip, port, name = entry[:3]
        hs.hosts[i].weight = entry[3] if len(entry) > 3 else 1
        _fill_sockaddr(&hs.hosts[i], ip, port)
        raw = name.encode("ascii")
        if len(raw) > HOST_NAME_MAX_LEN:
            raise ValueError(f"host name longer than {HOST_NAME_MAX_LEN} bytes: {name!r}")
        memcpy(hs.hosts[i].hostname, <char*>raw, len(raw))
        hs.hosts[i].hostname_len = <uint16_t>len(raw)
    for i, k in enumerate(schedule):
        if not 0 <= k < hs.nhosts:
            raise ValueError("schedule index out of range")
        hs.schedule[i] = k
    return h


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
    if lb_policy not in ("ROUND_ROBIN", "RANDOM"):
        raise ValueError(f"lb_policy must be ROUND_ROBIN or RANDOM, got {lb_policy!r}")
    p.lb = LB_RANDOM if lb_policy == "RANDOM" else LB_ROUND_ROBIN
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
                   str protocol="http1", dict h2=None, StatBlockHandle h2_stats=None):
        """Give every worker the cluster's new params (a config update; the cluster is
        configured, so no longer removed). Returns at once; each worker's new requests and
        connections use them from its next loop turn. tls: upstream TLS with that client
        context (None: plaintext). protocol: "http1", "http2" (h2c with prior knowledge on
        plaintext, ALPN h2 over TLS) or "auto" (ALPN over TLS, HTTP/1.1 on plaintext); h2:
        Http2ProtocolOptions.to_spec(); h2_stats: its cluster.<name>.http2.* block. A
        connection keeps the protocol it was made with."""
        cdef ClusterParams p = _cluster_params(
            lb_policy, connect_timeout, pool_idle_timeout, max_connection_duration,
            max_requests_per_connection, max_connections, max_pending_requests, max_requests,
            max_retries, False, protocol, h2)
        p.tls = _client_tls(tls)
        p.h2_stats = _h2_stats_block(h2_stats)
        self._post_params(p)

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
        """The current hosts: [(ip, port, hostname, weight, {stat: value})], the stats
        summed over the workers in Envoy's order (HOST_STATS)."""
        import socket as _socket
        cdef Host* hst
        cdef StatBlockHandle view
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
            out.append((ip, port, hst.hostname[:hst.hostname_len].decode("ascii"), hst.weight, stats))
        return out

    def circuit_breakers(self):
        """{name: (in use, limit)} for connections, pending requests and requests, over
        every worker (what Envoy's circuit_breakers.* gauges are computed from)."""
        return {"cx": (fp_atomic_load_i64(&self.c.n_cx), self.params.max_cx),
                "pending": (fp_atomic_load_i64(&self.c.n_pending), self.params.max_pending),
                "rq": (fp_atomic_load_i64(&self.c.n_rq), self.params.max_rq),
                "retries": (fp_atomic_load_i64(&self.c.n_retries), self._retry_limit())}

    cdef uint64_t _retry_limit(self):
        """What the retries are limited to now: the retry budget's share of the active and
        pending requests (at least its min_retry_concurrency), else max_retries."""
        cdef uint64_t budget
        if not self.c.has_retry_budget:
            return self.params.max_retries
        budget = <uint64_t>((fp_atomic_load_i64(&self.c.n_rq) + fp_atomic_load_i64(&self.c.n_pending))
                            * <int64_t>self.c.retry_budget_pct_x100 // 10000)
        return max(budget, self.c.retry_budget_min)

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
        cdef int i
        cdef HostSetSwap* m
        cdef dict table
        cdef StatBlockHandle sb
        cdef Host* hst
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
                    table[key] = sb
                fp_atomic_add_int(&sb.b.refcnt, 1)     # the host set's reference
                hst.stats = sb.b
        if hosts.hs.by_stats == NULL and hostset_index(hosts.hs) < 0:
            raise MemoryError()
        _host_stats_prune(table)
        self.current = hosts
        for i in range(self.c.nworkers):
            m = <HostSetSwap*>malloc(sizeof(HostSetSwap))
            if m == NULL:
                raise MemoryError()
            fp_atomic_add_int(&hosts.hs.refcnt, 1)
            fp_atomic_add_int(&self.c.refcnt, 1)
            m.cluster = self.c
            m.hosts = hosts.hs
            if self.engine.post(i, _msg_hostset_swap, m) < 0:
                hostset_decref(m.hosts)         # that worker keeps its hosts
                cluster_decref(m.cluster)
                free(m)
                raise MemoryError()
