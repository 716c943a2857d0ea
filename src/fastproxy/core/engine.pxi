# Engine: the control surface of the compiled core, used by fastproxy.proxy on the main
# thread. It owns the workers (threads whose loops run without the GIL), turns Python
# config into C structs, and posts snapshots to the workers.

import threading as _threading


cdef class Engine:
    cdef Worker* workers
    cdef readonly int nworkers
    cdef readonly bint started
    cdef list _threads
    cdef bint _stopped
    cdef dict host_stats                # cluster block: {address bytes: StatBlockHandle}
    cdef int64_t* global_active     # downstream connections over all listeners
    cdef int64_t global_max         # 0: no global limit
    cdef int posting                # 1 while worker threads take messages (a cluster's
                                    #   health rebuild posts to them, cluster_health_changed)

    cdef bint workers_run(self):
        """Whether worker threads run the messages posted to them (started, not stopped):
        otherwise the main thread owns every worker's state and runs a message itself."""
        return self.started and not self._stopped

    cdef int post(self, int i, msg_fn_t fn, void* arg):
        """fn(worker i, arg) on worker i's thread, or here when no worker runs (a message
        posted to a stopped worker would never run, nor be freed). -1: no memory for the
        message (fn did not run; the caller undoes what arg holds)."""
        if not self.workers_run():
            fn(&self.workers[i], arg)
            return 0
        return worker_post(&self.workers[i], fn, arg)

    def __cinit__(self, int nworkers):
        cdef int i
        if nworkers < 1 or nworkers > 1024:
            raise ValueError("concurrency must be between 1 and 1024")
        self.host_stats = {}
        self.workers = <Worker*>calloc(nworkers, sizeof(Worker))
        if self.workers == NULL:
            raise MemoryError()
        for i in range(nworkers):
            if worker_init(&self.workers[i], i) < 0:
                self.nworkers = i
                raise OSError(errno, "cannot create a worker (epoll, eventfd or its state)")
        self.nworkers = nworkers
        self._threads = []
        self.global_active = <int64_t*>calloc(1, sizeof(int64_t))
        if self.global_active == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        if self.workers == NULL:
            return
        if self.started and not self._stopped:
            # Threads still run: leak rather than free memory they use.
            return
        for i in range(self.nworkers):
            if not self.started:
                worker_teardown(&self.workers[i])
            worker_destroy(&self.workers[i])
        free(self.workers)
        self.workers = NULL
        free(self.global_active)        # no listener config of this engine is in use any more
        self.global_active = NULL

    def start(self):
        if self.started:
            raise RuntimeError("engine already started")
        cdef int i
        _core_log_from_logging()        # debug lines from the workers (core/debug_log.pxi)
        for i in range(self.nworkers):
            fp_store_int(&self.workers[i].running, 1)
        fp_store_int(&self.posting, 1)      # (queued messages wait for the threads below)
        for i in range(self.nworkers):
            t = _threading.Thread(target=self._run_worker, args=(i,),
                                  name=f"fastproxy-worker-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        self.started = True

    def _run_worker(self, int i):
        cdef Worker* w = &self.workers[i]
        with nogil:
            worker_loop(w)

    def stop(self):
        """Stop every worker: close all connections and listeners, join the threads."""
        cdef int i
        if not self.started or self._stopped:
            return
        for i in range(self.nworkers):
            fp_store_int(&self.workers[i].running, 0)
            worker_wake(&self.workers[i])     # allocation-free: a stop cannot fail to wake
        for t in self._threads:
            t.join()
        fp_store_int(&self.posting, 0)     # (a rebuild from now on applies its set itself)
        # A message posted to a worker (a filter's continue, a host set swap) after it
        # drained its queue for the last time was never run: run (and free) what is left
        # here, now that no worker thread runs. The wake fd is non-blocking, so an empty
        # drain returns.
        for i in range(self.nworkers):
            worker_drain_messages(&self.workers[i])
        self._stopped = True
        _core_log_release()             # no worker of this engine writes debug lines any more

    def set_global_max_connections(self, int64_t limit):
        """Refuse downstream connections beyond `limit` over all listeners (0: no limit);
        applies to listeners made after the call."""
        if limit < 0:
            raise ValueError("the global connection limit must be >= 0")
        self.global_max = limit

    def active_connections(self):
        """Connections open on all workers (an instantaneous, racy but untorn read)."""
        cdef int i, total = 0
        for i in range(self.nworkers):
            total += fp_load_int(&self.workers[i].nsessions)
        return total

    def pipe_stats(self):
        """Splice pipes over all workers: made (pipe2), reused from a worker's pool, and kept
        in the pools now, with the per-worker bound (racy reads, for tests and debugging)."""
        cdef int i
        cdef uint64_t created = 0, reused = 0
        cdef int pooled = 0
        for i in range(self.nworkers):
            created += fp_load_u64(&self.workers[i].pipes_created)
            reused += fp_load_u64(&self.workers[i].pipes_reused)
            pooled += fp_load_int(&self.workers[i].npipes)
        return {"created": created, "reused": reused, "pooled": pooled,
                "pool_max_per_worker": PIPE_POOL_MAX}

    # ---- building config structs ----

    def new_stats(self, str kind):
        """A stat block of `kind` ("listener", "tcp", "cluster" or one a subsystem
        registered with stat_kind_add), one row per worker."""
        spec = _STAT_KINDS.get(kind)
        if spec is None:
            raise ValueError(kind)
        return _statblock_handle(spec[0], spec[1], self.nworkers, spec[2], spec[3])

    def bind(self, str ip, int port, int backlog, list fds=None):
        return bind_listener(self.nworkers, ip, port, backlog, fds)

    def make_cluster(self, StatBlockHandle stats, str lb_policy, double connect_timeout,
                     HostSetHandle hosts, pool_idle_timeout=None, max_connection_duration=None,
                     uint32_t max_requests_per_connection=0, uint32_t max_connections=1024,
                     uint32_t max_pending_requests=1024, uint32_t max_requests=1024,
                     uint32_t max_retries=3, bint removed=False, TlsContextHandle tls=None,
                     str protocol=None, dict h2=None, StatBlockHandle h2_stats=None, dict lb=None):
        """A cluster (ClusterHandle). removed: a name referenced with no cluster configured
        (Proxy._cluster_ref), whose requests get 503 NC until set_params revives it. tls:
        upstream TLS with that client context (make_tls_context). protocol (None: the
        default), h2, h2_stats: the upstream protocol, as ClusterHandle.set_params takes
        them (the engine passes them on unread); lb: the load balancer's options, as
        set_params takes them."""
        cdef ClusterHandle h = ClusterHandle.__new__(ClusterHandle)
        cdef ClusterParams params = _cluster_params(
            lb_policy, connect_timeout, pool_idle_timeout, max_connection_duration,
            max_requests_per_connection, max_connections, max_pending_requests, max_requests,
            max_retries, removed, protocol, h2)
        params.tls = _client_tls(tls)
        params.h2_stats = _h2_stats_block(h2_stats)
        cdef LbBuild build = _lb_build(lb_policy, lb)
        cdef ClusterCfg* c = <ClusterCfg*>calloc(1, sizeof(ClusterCfg))
        if c == NULL:
            raise MemoryError()
        c.refcnt = 1
        c.stats = stats.b
        c.nworkers = self.nworkers
        cluster_lb_init(c, self.workers, &self.posting)
        c.build = build
        if cluster_per_worker_new(c) < 0:
            free(c)
            raise MemoryError()
        for i in range(self.nworkers):
            # Spread the workers' round-robin starting points over the schedule.
            c.per_worker[i].next = <uint32_t>(i * max(1, hosts.hs.nhosts) // self.nworkers)
            c.per_worker[i].params = params     # (no worker knows c yet)
            if params.tls != NULL:
                fp_atomic_add_int(&params.tls.refcnt, 1)
            if params.h2_stats != NULL:
                fp_atomic_add_int(&params.h2_stats.refcnt, 1)
        h.c = c
        h.engine = self
        h.stats = stats
        h.params = params
        if params.tls != NULL:
            fp_atomic_add_int(&params.tls.refcnt, 1)    # the handle's copy
        if params.h2_stats != NULL:
            fp_atomic_add_int(&params.h2_stats.refcnt, 1)
        h.set_hosts(hosts)
        return h

    def make_listener(self, str name, ListenSockHandle sock, ClusterHandle cluster,
                      StatBlockHandle lstats, StatBlockHandle tstats, idle_timeout,
                      int max_connect_attempts, max_connections, size_t buffer_limit,
                      tuple filter_factories, bint splice_read, bint splice_write,
                      ConnHandler handler=None, StatBlockHandle handler_stats=None,
                      TlsContextHandle tls=None, transport_socket_connect_timeout=None):
        """A listener's config. Its connections go to the TCP proxy (to `cluster`), or to
        `handler` when given (an HTTP connection manager's config), which gets
        `handler_stats`, its per-listener stat block, if it has one. tls: its connections
        are TLS with that server context; transport_socket_connect_timeout (seconds): a
        connection whose handshake has not completed by then is closed."""
        if tls is not None and not tls.server:
            raise ValueError(f"tls: {tls.name!r} is a client context; a listener needs a server one")
        if transport_socket_connect_timeout is not None and not transport_socket_connect_timeout >= 0:
            raise ValueError("transport_socket_connect_timeout: must be >= 0")
        cdef ListenerCfgHandle h = ListenerCfgHandle.__new__(ListenerCfgHandle)
        cdef ListenerCfg* c = <ListenerCfg*>calloc(1, sizeof(ListenerCfg))
        if c == NULL:
            raise MemoryError()
        c.refcnt = 1
        c.start = session_start
        c.sock = sock.s
        fp_atomic_add_int(&sock.s.refcnt, 1)
        if cluster is not None:                     # a handler may route per request
            c.cluster = cluster.c
            fp_atomic_add_int(&cluster.c.refcnt, 1)
        c.lstats = lstats.b
        c.tstats = tstats.b
        c.idle_timeout_ms = 0 if not idle_timeout else max(1, <uint64_t>(idle_timeout * 1000))
        c.max_connect_attempts = max_connect_attempts
        c.max_connections = max_connections or 0
        if self.global_max:
            c.global_active = self.global_active
            c.global_max = self.global_max
        c.buffer_limit = buffer_limit
        c.nfilters = len(filter_factories)
        if c.nfilters:
            Py_INCREF(filter_factories)
            c.filter_factories = <PyObject*>filter_factories
        c.splice_read = splice_read
        c.splice_write = splice_write
        c.nworkers = self.nworkers
        c.conns = <CfgConn**>calloc(self.nworkers, sizeof(CfgConn*))
        c.drains = <ListenerDrain*>calloc(self.nworkers, sizeof(ListenerDrain))
        if tls is not None:
            c.tls = tls.p
            fp_atomic_add_int(&tls.p.refcnt, 1)
            if transport_socket_connect_timeout:
                c.tls_timeout_ms = max(1, <uint64_t>(transport_socket_connect_timeout * 1000))
        h.c = c                                     # frees c if attach raises
        if c.conns == NULL or c.drains == NULL:
            raise MemoryError()
        h.name = name
        if handler is not None:
            handler.attach(c, handler_stats)
        return h

    def make_chain_listener(self, str name, ListenSockHandle sock, StatBlockHandle lstats, list chains,
                            ChainTableHandle table, ListenerCfgHandle default, bint inspect_tls,
                            listener_filters_timeout, bint continue_on_listener_filters_timeout,
                            StatBlockHandle inspector_stats):
        """A listener with filter chains (core/listener_filters.pxi): `chains`
        (ListenerCfgHandles made by make_listener on `sock`) in the order of `table`'s
        matches, `default` the default_filter_chain or None. With inspect_tls its
        connections wait in the tls_inspector (at most listener_filters_timeout seconds;
        None or 0: no limit) for their first bytes before a chain is picked. Limits
        (max_connections, the global one) are the first chain's."""
        cdef ListenerCfgHandle h = ListenerCfgHandle.__new__(ListenerCfgHandle)
        cdef ListenerCfgHandle ch
        cdef ListenerCfg* c
        cdef ListenerCfg* like
        cdef ChainSet* cs
        cdef int i
        if len(chains) != len(table):
            raise ValueError(f"listener {name!r}: {len(chains)} chains for {len(table)} matches")
        if not chains and default is None:
            raise ValueError(f"listener {name!r}: a filter chain or a default one is needed")
        for ch in chains + ([default] if default is not None else []):
            if ch.c.sock != sock.s:
                raise ValueError(f"listener {name!r}: filter chain {ch.name!r} is on another socket")
        like = (<ListenerCfgHandle>(chains[0] if chains else default)).c
        c = <ListenerCfg*>calloc(1, sizeof(ListenerCfg))
        if c == NULL:
            raise MemoryError()
        c.refcnt = 1
        c.start = chain_listener_start
        c.sock = sock.s
        fp_atomic_add_int(&sock.s.refcnt, 1)
        c.lstats = lstats.b
        c.tstats = like.tstats
        c.max_connections = like.max_connections
        c.global_active = like.global_active
        c.global_max = like.global_max
        c.buffer_limit = like.buffer_limit
        c.nworkers = self.nworkers
        h.c = c                                     # frees c (and what it holds) on error
        h.name = name
        c.conns = <CfgConn**>calloc(self.nworkers, sizeof(CfgConn*))
        c.drains = <ListenerDrain*>calloc(self.nworkers, sizeof(ListenerDrain))
        cs = <ChainSet*>calloc(1, sizeof(ChainSet))
        if c.conns == NULL or c.drains == NULL or cs == NULL:
            free(cs)
            raise MemoryError()
        c.chains = cs
        cs.chains = <ListenerCfg**>calloc(max(1, len(chains)), sizeof(ListenerCfg*))
        if cs.chains == NULL:
            raise MemoryError()
        for i, ch in enumerate(chains):
            cs.chains[i] = ch.c
            fp_atomic_add_int(&ch.c.refcnt, 1)
            cs.nchains = i + 1
            ch.c.sni_inspected = inspect_tls
        if default is not None:
            default.c.sni_inspected = inspect_tls
            cs.dflt = default.c
            fp_atomic_add_int(&default.c.refcnt, 1)
        cs.table = table.t
        fp_atomic_add_int(&table.t.refcnt, 1)
        if inspector_stats is not None:
            cs.istats = inspector_stats.b
            fp_atomic_add_int(&inspector_stats.b.refcnt, 1)
        cs.inspect_tls = inspect_tls
        cs.continue_on_timeout = continue_on_listener_filters_timeout
        cs.timeout_ms = 0 if not listener_filters_timeout else max(1, <uint64_t>(listener_filters_timeout * 1000))
        return h

    def make_tls_context(self, dict spec, bint server, StatBlockHandle ssl_stats, str name):
        """A TLS context (TlsContextHandle) for listeners (server) or clusters (client),
        built from `spec` (API14.md); its handshakes count into ssl_stats (a block of
        kind "ssl"). Raises ValueError naming the spec key on a bad spec."""
        return _make_tls_context(self, spec, server, ssl_stats, name)

    def apply(self, list listeners):
        """Make `listeners` (ListenerCfgHandles) the workers' listener set. Returns when
        every worker has switched: new connections from then on use the new config."""
        cdef Snapshot* snap = <Snapshot*>calloc(1, sizeof(Snapshot))
        cdef ListenerCfgHandle lh
        cdef int i
        if snap == NULL:
            raise MemoryError()
        pthread_mutex_init(&snap.lock, NULL)
        pthread_cond_init(&snap.done, NULL)
        snap.listeners = <ListenerCfg**>calloc(max(1, len(listeners)), sizeof(ListenerCfg*))
        if snap.listeners == NULL:
            snapshot_free(snap)
            raise MemoryError()
        snap.nlisteners = len(listeners)
        for i, lh in enumerate(listeners):
            snap.listeners[i] = lh.c
            fp_atomic_add_int(&lh.c.refcnt, 1)
        snap.pending = self.nworkers
        if not self.workers_run():
            for i in range(self.nworkers):
                _msg_apply_snapshot(&self.workers[i], snap)
        else:
            for i in range(self.nworkers):
                if self.post(i, _msg_apply_snapshot, snap) < 0:
                    # No memory for the message: that worker keeps its listener set.
                    pthread_mutex_lock(&snap.lock)
                    snap.failed += 1
                    pthread_mutex_unlock(&snap.lock)
                    snapshot_release(snap)
            with nogil:
                pthread_mutex_lock(&snap.lock)
                while snap.pending > 0:
                    pthread_cond_wait(&snap.done, &snap.lock)
                pthread_mutex_unlock(&snap.lock)
        failed = snap.failed
        snapshot_free(snap)
        if failed:
            raise MemoryError(f"{failed} of {self.nworkers} workers kept their previous "
                              "listeners: out of memory")
