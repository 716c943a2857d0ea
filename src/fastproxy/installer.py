"""Compiling a configuration into the core and replacing it while the proxy runs: the
half of Proxy that turns models into core objects (clusters, route tables and their
per-worker providers, listener configs) and decides what an update keeps, changes in
place, warms or drains.

``ConfigInstaller`` is a mixin of fastproxy.proxy.Proxy (the state it works on is the
proxy's: its engine, clusters, listeners, route providers and draining versions); Proxy
calls ``_install`` (or ``_set_routes`` for a routes-only update) under its lock.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import os
import socket
import time
from typing import Any, Optional

from . import _core
from .errors import ConfigError, ListenerBindError
from .filters import NetworkFilter
from .model import Bootstrap, Cluster, Listener
from .model_tls import listener_contexts
from .http.model import RouteConfiguration
from .upstream.lb import lb_spec

log = logging.getLogger("fastproxy")


# The configuration objects an update installs (models, host lists) live until a later
# update replaces them, and a big one is hundreds of thousands of objects: a full cyclic
# collection scanning them (60-70 ms for 1,000 clusters of 10 endpoints) would land in the
# middle of whichever push came next. After an update they move to the collector's
# permanent generation (replaced ones are still freed by reference counting); every
# GC_THAW_EVERY updates they come back once, so that a cycle among replaced ones is found.
GC_THAW_EVERY = 64
_updates_since_thaw = 0


def _settle_collector() -> None:
    global _updates_since_thaw
    _updates_since_thaw += 1
    if _updates_since_thaw >= GC_THAW_EVERY:
        _updates_since_thaw = 0
        gc.unfreeze()
    gc.freeze()


def _reads_bytes(factory: Any, hook: str) -> bool:
    """Whether filters made by `factory` override `hook` (and so must see the bytes).
    Unknown factories are assumed to read, which only costs the splice fast path."""
    cls = factory.func if isinstance(factory, functools.partial) else factory
    if not isinstance(cls, type):
        return True
    return getattr(cls, hook) is not getattr(NetworkFilter, hook)


_FAMILIES = {
    "V4_ONLY": (socket.AF_INET,),
    "V6_ONLY": (socket.AF_INET6,),
    "AUTO": (socket.AF_INET6, socket.AF_INET),        # v6 if any, else v4
    "V4_PREFERRED": (socket.AF_INET, socket.AF_INET6),  # v4 if any, else v6
    "ALL": None,
}


# What EDS's health_status makes of a host (Envoy 1.40's setEdsHealthFlag): the core's
# HF_FAILED_EDS_HEALTH (not picked), HF_EDS_STATUS_DRAINING (excluded) or
# HF_DEGRADED_EDS_HEALTH (picked when healthy hosts lack).
_EDS_HEALTH_FLAGS = {"UNHEALTHY": "FAILED_EDS_HEALTH", "DRAINING": "EDS_STATUS_DRAINING",
                     "TIMEOUT": "FAILED_EDS_HEALTH", "DEGRADED": "DEGRADED_EDS_HEALTH"}


def _lb_fields(ep, localities: dict) -> tuple:
    """(priority, eds health bits, locality index in its priority, locality weight);
    localities: {priority: {locality: index}} of the cluster so far."""
    flag = _EDS_HEALTH_FLAGS.get(ep.health_status)
    bits = _core.HOST_HEALTH_FLAGS[flag] if flag else 0
    known = localities.setdefault(ep.priority, {})
    index = known.setdefault(tuple(ep.locality), len(known))
    return ep.priority, bits, index, ep.locality_weight


def resolve_endpoints(cluster: Cluster) -> list[tuple]:
    """(ip, port, weight, hostname, priority, eds_flags, locality, locality_weight) for
    every host of the cluster. STRICT_DNS endpoints expand to every address their name
    resolves to (Envoy's strict DNS). hostname is what auto_host_rewrite sends: the
    endpoint's own hostname, else a DNS endpoint's name, else "" (a STATIC endpoint: the
    Host stays). The rest is the load balancer's (_lb_fields). Blocking: main thread only."""
    out = []
    localities: dict = {}
    for ep in cluster.endpoints:
        lb = _lb_fields(ep, localities)
        if cluster.type != "STRICT_DNS":       # STATIC, EDS: IP addresses
            out.append((ep.address, ep.port, ep.weight, ep.hostname, *lb))
            continue
        try:
            infos = socket.getaddrinfo(ep.address, ep.port, type=socket.SOCK_STREAM)
        except OSError as e:
            log.warning("cluster %s: cannot resolve %s: %s", cluster.name, ep.address, e)
            continue
        by_family: dict[int, list[str]] = {}
        for fam, _, _, _, addr in infos:
            lst = by_family.setdefault(fam, [])
            if addr[0] not in lst:
                lst.append(addr[0])
        prefs = _FAMILIES[cluster.dns_lookup_family]
        if prefs is None:
            ips = by_family.get(socket.AF_INET, []) + by_family.get(socket.AF_INET6, [])
        else:
            ips = []
            for fam in prefs:
                if by_family.get(fam):
                    ips = by_family[fam]
                    break
        out.extend((ip, ep.port, ep.weight, ep.hostname or ep.address, *lb) for ip in ips)
    return out


def _host_set(hosts: list[tuple]):
    """The core's full host list of a cluster (resolve_endpoints' tuples); the load
    balancer's schedules, rings and tables are built from it in the core."""
    return _core.make_hostset([(ip, port, name, weight, *rest) for ip, port, weight, name, *rest in hosts])


def _route_cluster_names(rc: RouteConfiguration) -> set:
    """The clusters a route configuration names (route.cluster and weighted clusters)."""
    names = set()
    for vh in rc.virtual_hosts:
        for r in vh.routes:
            if r.route is not None:
                if r.route.cluster is not None:
                    names.add(r.route.cluster)
                names.update(wc.name for wc in r.route.weighted_clusters)
    return names


class _RdsRoutes:
    """An RDS route configuration's RouteProvider, shared by the listeners naming it (with
    the same HTTP filters), and the model and cluster handles of its current table."""

    def __init__(self, provider, http_filters: list, model: RouteConfiguration, table, refs: tuple):
        self.provider = provider
        self.http_filters = http_filters
        self.model, self.table, self.refs = model, table, refs

    def current(self, model: RouteConfiguration, cluster_ref) -> bool:
        """Is the table built from ``model``, with the clusters cluster_ref gives now?"""
        return model == self.model and all(
            cluster_ref(name) is ref for name, ref in zip(self.table.cluster_names, self.refs))

    def set(self, model: RouteConfiguration, table, refs: tuple) -> None:
        """The workers take ``table`` (built from ``model``) from here on."""
        self.provider.set(table)
        self.model, self.table, self.refs = model, table, refs


def _cluster_params(c: Cluster) -> tuple:
    """ClusterHandle.set_params's arguments for cluster ``c`` (make_cluster's after the
    host set): what a worker's copy of the cluster's params holds."""
    return (c.lb_policy, c.connect_timeout, c.idle_timeout, c.max_connection_duration,
            c.max_requests_per_connection, c.max_connections, c.max_pending_requests,
            c.max_requests, c.max_retries)


def _protocol(c: Cluster) -> tuple:
    """What a cluster speaks upstream, as compared across updates: (protocol, HTTP/2 spec)."""
    h2 = c.h2_options
    return c.upstream_protocol, None if h2 is None else h2.to_spec()


def _match_spec(m) -> dict:
    """A FilterChainMatch as _core.make_chain_table takes it."""
    return {"dport": m.destination_port or 0, "prefix_ranges": list(m.prefix_ranges),
            "server_names": [n.lower() for n in m.server_names], "transport": m.transport_protocol,
            "application_protocols": [p.encode() for p in m.application_protocols],
            "source_type": m.source_type, "source_prefix_ranges": list(m.source_prefix_ranges),
            "source_ports": list(m.source_ports)}


class _ClusterState:
    def __init__(self, model: Cluster, handle, hosts, waiting: bool = False):
        self.model = model
        self.handle = handle
        self.hosts = hosts
        self.waiting = waiting      # for its TLS secrets (SDS over xDS): no hosts meanwhile
        self.next_refresh = time.monotonic() + model.dns_refresh_rate


class _ListenerBuild:
    """A listener as compiled into the core: its model, its listening socket, the core
    objects it was built from (``refs``: cluster handles, HTTP configuration references)
    and its ListenerCfgHandle. An update keeps the handle, and so the listener's open
    connections, when model and socket are equal and every ref is the very same object."""

    __slots__ = ("model", "sock", "refs", "handle", "retired")

    def __init__(self, model: Listener, sock, refs: dict, handle):
        self.model, self.sock, self.refs, self.handle = model, sock, refs, handle
        self.retired = False        # its drain has started (once, even if that apply failed)

    def unchanged(self, model: Listener, sock, refs: dict) -> bool:
        return (self.sock is sock and self.model == model and self.refs.keys() == refs.keys()
                and all(self.refs[k] is v for k, v in refs.items()))


class _Draining:
    """A retired listener version whose connections drain until ``end`` (monotonic)."""

    __slots__ = ("name", "model", "handle", "end", "state", "in_place")

    def __init__(self, name: str, model: Listener, handle, end: float, state, in_place: bool = False):
        self.name, self.model, self.handle, self.end, self.state = name, model, handle, end, state
        self.in_place = in_place    # replaced by a version that differs in its filter chain only

    def over(self) -> bool:
        # Envoy lists a draining listener for the whole drain time; this one goes as soon
        # as its last connection has (nothing is left to drain).
        return time.monotonic() >= self.end or self.handle.connections() == 0


# What a Listener has beside its filter chain (Envoy's Listener fields outside
# filter_chains): a version that changes none of them is, in Envoy's words, updated in
# place (listener_in_place_updated): the same socket, new filter chains, the old ones
# draining (total_filter_chains_draining). The connections drain alike either way.
_LISTENER_SOCKET_FIELDS = ("address", "port", "backlog", "max_connections", "buffer_limit", "drain_type",
                           "tls_inspector", "listener_filters_timeout", "continue_on_listener_filters_timeout")


def _same_listener_socket(a: Listener, b: Listener) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _LISTENER_SOCKET_FIELDS)


class ConfigInstaller:
    """The compiling half of Proxy (see the module docstring)."""

    # ---- compiling config into the core ----

    def _stat_block(self, kind: str, name: str):
        key = (kind, name)
        block = self._stats.get(key)
        if block is None:
            block = self._stats[key] = self._engine.new_stats(kind)
        return block

    def _protocol_params(self, c: Cluster, old: Optional[Cluster] = None) -> dict:
        """make_cluster's / set_params's upstream protocol keywords for cluster ``c`` (which
        replaces ``old``): the protocol, HTTP/2's settings (the to_spec() dict) and its
        cluster.<name>.http2.* stat block. Nothing for an HTTP/1.1 cluster that was one
        before (the core's defaults are HTTP/1.1)."""
        if c.upstream_protocol == "http1" and (old is None or old.upstream_protocol == "http1"):
            return {}
        protocol, h2 = _protocol(c)
        return dict(protocol=protocol, h2=h2,
                    h2_stats=None if h2 is None else self._stat_block("http2", f"cluster.{c.name}.http2"))

    def _tls_context(self, ctx, server: bool, stats_name: str, owner: str):
        """The core TLS context (TlsContextHandle) for the model ``ctx`` (a
        DownstreamTlsContext when ``server``, else an UpstreamTlsContext) of ``owner`` (a
        listener's or cluster's name), its handshakes counted in the "ssl" stat block
        ``stats_name`` (listener.<ip>_<port>.ssl, cluster.<name>.ssl). The same handle
        while the model is the same (its secrets' rotation updates it in place: see
        fastproxy.sds). Raises ConfigError naming ``owner`` when it does not compile."""
        return self._secret_store.context(ctx, server, stats_name, owner)

    def _listener_secrets_missing(self, l: Listener) -> list:
        """The SDS-over-xDS secrets listener ``l``'s TLS contexts name that have not come."""
        return self._secret_store.missing(ctx for ctx, _ in listener_contexts(l, ""))

    def _cluster_ref(self, name: str):
        """The ClusterHandle that a route table or TCP listener refers to for cluster
        ``name``: the same one for as long as the name is configured or referenced. With
        no cluster of that name configured it is a removed one (503 NC, TCP connections
        closed), made here if needed, which a cluster added later under that name revives."""
        with self._lock:
            for configured in (self._installing_clusters, self._clusters):
                st = configured.get(name) if configured is not None else None
                if st is not None:
                    return st.handle
            handle = self._absent_clusters.get(name)
            if handle is None:
                # Its counters are those of cluster.<name> once it exists (not listed before).
                block = self._stats.get(("cluster", f"cluster.{name}")) or self._engine.new_stats("cluster")
                handle = self._engine.make_cluster(block, "ROUND_ROBIN", 5.0, _host_set([]), removed=True)
                self._absent_clusters[name] = handle
            return handle

    def _route_table(self, rc: RouteConfiguration, http_filters: list):
        """A route table for connection managers with these HTTP filters, and the cluster
        handles it refers to (by its cluster index)."""
        table = _core.make_route_table(rc, http_filters, self._cluster_ref, self.concurrency)
        return table, tuple(self._cluster_ref(name) for name in table.cluster_names)

    @staticmethod
    def _rds_key(hcm) -> tuple[str, str]:
        """Which RouteProvider a connection manager with rds uses: one per route
        configuration name and filter chain (whose per-route configs a table holds)."""
        return hcm.rds.route_config_name, repr(hcm.http_filters)

    def _rds_entry(self, key: tuple[str, str], http_filters: list, routes: dict, providers: dict,
                   pending: list) -> Optional[_RdsRoutes]:
        """The RDS provider ``key`` with the table of ``routes[key[0]]``, shared by every
        listener (and listener version) naming it, into ``providers``; a changed table of
        a provider in use is set (into ``pending``, done once the whole update is built).
        None: that route configuration is not there (and the provider not in use)."""
        entry = providers.get(key)
        if entry is not None:
            return entry
        rc = routes.get(key[0])
        entry = self._rds_providers.get(key)
        if entry is None:
            if rc is None:
                return None
            table, refs = self._route_table(rc, http_filters)
            entry = _RdsRoutes(_core.make_route_provider(self._engine, table), list(http_filters), rc, table, refs)
        else:
            self._rebuild_if_stale(entry, rc, pending)
        providers[key] = entry
        return entry

    def _rebuild_if_stale(self, entry: _RdsRoutes, rc: Optional[RouteConfiguration], pending: list) -> None:
        """When ``rc`` (the route configuration now given for ``entry``'s name, None: none)
        is not what its table was built from, with the clusters in force, build the new
        table into ``pending``: (entry, rc, table, refs), set once everything is built."""
        if rc is not None and not entry.current(rc, self._cluster_ref):
            pending.append((entry, rc, *self._route_table(rc, entry.http_filters)))

    def _set_routes(self, routes: dict) -> None:
        """Give the RDS providers whose route configuration changed their new tables: the
        next request on every connection (open ones too) routes with it."""
        pending: list = []
        for (name, _), entry in self._rds_providers.items():
            self._rebuild_if_stale(entry, routes.get(name), pending)
        for entry, rc, table, refs in pending:     # all built: now the workers get them
            entry.set(rc, table, refs)

    def _forget_unreferenced_clusters(self) -> None:
        """Drop the removed clusters nothing refers to any more (no listener, route table,
        connection or request): a cluster added under such a name later starts afresh."""
        forgotten = [name for name, handle in self._absent_clusters.items() if not handle.in_use]
        for name in forgotten:
            del self._absent_clusters[name]     # (the last reference: the cluster is freed)
        if forgotten:
            _core.prune_host_stats(self._engine)

    def _install(self, b: Bootstrap, routes: dict) -> None:
        """Compile ``b`` (with the RDS route configurations ``routes``) and give it to the
        workers."""
        self._check_health_check_logs(b)
        # Clusters first, without touching the workers: what is in force stays until the
        # listeners are built too (a bind can still fail). A cluster keeps its handle (its
        # ClusterCfg) across updates; a changed one gets its new params and hosts by worker
        # messages at the commit below, so listeners and routes that are not rebuilt see the
        # change, and its pools keep their connections to the hosts that stay.
        clusters: dict[str, _ClusterState] = {}
        commit = []                     # (what changes in place, in order, once it all built)
        for c in b.clusters:
            old = self._clusters.get(c.name)
            waiting = bool(self._secret_store.missing([c.tls]))
            if old is not None and old.model == c and old.waiting == waiting:
                clusters[c.name] = old          # unchanged: keep its LB state and DNS schedule
                continue
            if waiting and old is not None and not old.waiting:
                # A changed cluster warming for its new secrets: its previous version serves
                # meanwhile (Envoy's warming cluster).
                clusters[c.name] = old
                continue
            if waiting:
                # A new one warms for its secrets (SDS over xDS) as an EDS cluster warms for
                # its assignment: no hosts until they come; never a plaintext connection.
                hosts, tls = [], None
            else:
                hosts = resolve_endpoints(c)
                tls = self._tls_context(c.tls, False, f"cluster.{c.name}.ssl", c.name) if c.tls is not None else None
            if old is not None:
                membership = c.type == "EDS" and old.model.with_endpoints(c.endpoints) == c
                commit.append((old.handle, c, hosts, old, "cluster_updated" if membership else "cluster_modified", tls))
                clusters[c.name] = _ClusterState(c, old.handle, hosts, waiting)
                continue
            handle = self._absent_clusters.get(c.name)
            if handle is not None:              # a referenced name comes (back) alive
                commit.append((handle, c, hosts, None, "cluster_added", tls))
            else:
                handle = self._engine.make_cluster(
                    self._stat_block("cluster", f"cluster.{c.name}"), c.lb_policy, c.connect_timeout,
                    _host_set(hosts), *_cluster_params(c)[2:], tls=tls, **self._protocol_params(c),
                    lb=lb_spec(c))
                commit.append((None, c, hosts, None, "cluster_added", tls))
            clusters[c.name] = _ClusterState(c, handle, hosts, waiting)
        self._installing_clusters = clusters
        try:
            self._install_listeners(b, routes, clusters, commit)
        finally:
            self._installing_clusters = None

    def _commit_clusters(self, clusters: dict[str, _ClusterState], commit: list) -> None:
        """Apply the cluster changes _install prepared (worker messages, ahead of the
        listener snapshot in each worker's queue) and count them."""
        started = []                    # health checkers made by this commit
        for handle, c, hosts, old, stat, tls in commit:
            # (a cluster made by _install has its handle in `clusters`, its hosts set)
            hc_new = self._health_checker_for(clusters[c.name].handle, c)
            if hc_new is not None:
                started.append(hc_new)
            if handle is not None:
                if old is None or _cluster_params(old.model) != _cluster_params(c) or old.model.tls != c.tls \
                        or _protocol(old.model) != _protocol(c) or old.waiting or lb_spec(old.model) != lb_spec(c):
                    handle.set_params(*_cluster_params(c), tls=tls,
                                      **self._protocol_params(c, None if old is None else old.model), lb=lb_spec(c))
                if old is None or hosts != old.hosts:
                    handle.set_hosts(_host_set(hosts))
                if old is None:
                    del self._absent_clusters[c.name]
                    self._stats.setdefault(("cluster", f"cluster.{c.name}"), handle.stats)
            self._health_check_hosts(c.name, clusters[c.name].handle)
            self._cluster_counts[stat] += 1
            rb = c.retry_budget        # (circuit_breakers retry_budget: fastproxy.http.retry)
            clusters[c.name].handle.set_retry_budget(
                None if rb is None else rb.budget_percent, 3 if rb is None else rb.min_retry_concurrency)
        for name, st in clusters.items():
            old_st = self._clusters.get(name)
            if old_st is None or old_st.handle is not st.handle or \
                    old_st.model.outlier_detection != st.model.outlier_detection:
                self._outlier_configure(st.handle, st.model)
        for name, st in self._clusters.items():
            if name not in clusters:
                self._stop_health_checker(name)
                st.handle.remove()
                self._absent_clusters[name] = st.handle
                self._cluster_counts["cluster_removed"] += 1
        self._clusters = clusters
        self._await_first_health_checks(started)

    # ---- active health checks (fastproxy.upstream.health_check; the checkers run in the
    # core, on the proxy's health check loop thread) ----

    def _health_checker_for(self, handle, c: Cluster):
        """Make, keep or stop cluster ``c``'s health checker before its hosts are set (so
        that new hosts start failed). Returns a checker made now (its first round is awaited
        by the commit), else None. A changed HealthCheck makes a new checker, as Envoy
        makes a new cluster: every host starts failed again."""
        current = self._health_checkers.get(c.name)
        want = c.health_checks[0] if c.health_checks else None
        if current is not None and current[0] == want:
            return None
        if current is not None:
            self._stop_health_checker(c.name)
            if want is None:
                _core.hc_clear_flags(handle)
        if want is None:
            return None
        if self._hc_loop is None:
            self._hc_loop = _core.HealthCheckLoop()
            self._hc_loop.start()
        fd = -1
        if want.event_log_path is not None:
            try:
                fd = os.open(want.event_log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            except OSError as e:
                # (Checked by _check_health_check_logs before anything was committed.)
                log.error("cluster %s: health check event log %s: %s", c.name, want.event_log_path, e)
        checker = _core.HealthCheckerHandle(
            self._hc_loop, handle, self._stat_block("health_check", f"cluster.{c.name}.health_check"),
            want.to_spec(c.name), c.name, fd)
        checker.mark_unchecked(handle)
        _core.hc_health_changed(handle)
        self._health_checkers[c.name] = (want, checker)
        return checker

    def _health_check_hosts(self, name: str, handle) -> None:
        """The cluster's hosts changed (or its checker is new): its checker checks them."""
        current = self._health_checkers.get(name)
        if current is not None:
            current[1].set_hosts(handle)

    def _stop_health_checker(self, name: str) -> None:
        current = self._health_checkers.pop(name, None)
        if current is not None:
            current[1].stop()

    def _stop_health_checks(self) -> None:
        """Every checker and the loop they run on (the proxy stops)."""
        for name in list(self._health_checkers):
            self._stop_health_checker(name)
        if self._hc_loop is not None:
            self._hc_loop.stop()
            self._hc_loop = None

    @staticmethod
    def _check_health_check_logs(b: Bootstrap) -> None:
        """Every event log of the clusters' health checks can be opened for appending
        (before anything is committed: a bad path refuses the config with its field)."""
        for i, c in enumerate(b.clusters):
            for k, hc in enumerate(c.health_checks):
                if hc.event_log_path is None:
                    continue
                try:
                    os.close(os.open(hc.event_log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644))
                except OSError as e:
                    raise ConfigError(f"static_resources.clusters[{i}].health_checks[{k}].event_log_path",
                                      f"cannot open {hc.event_log_path!r}: {e.strerror or e}") from None

    def _await_first_health_checks(self, checkers: list) -> None:
        """Envoy initializes a cluster with active health checks once each host has had
        its first check: wait for the checkers made by this commit (each first check ends
        by its timeout at the latest)."""
        if not checkers:
            return
        limit = max(m.timeout + m.initial_jitter for m, _ in self._health_checkers.values()) + 1.0
        deadline = time.monotonic() + limit
        while not all(ck.first_round_done for ck in checkers) and time.monotonic() < deadline:
            time.sleep(0.002)

    def _outlier_configure(self, handle, c: Cluster) -> None:
        """Give cluster ``c``'s detector its config (none: no outlier detection); its
        counters are cluster.<name>.outlier_detection.*, a block made only for a cluster
        that configures outlier detection, as Envoy's."""
        od = c.outlier_detection
        stats = None if od is None else self._stat_block("outlier", f"cluster.{c.name}.outlier_detection")
        _core.outlier_configure(handle, None if od is None else od.to_spec(), stats)

    def _install_listeners(self, b: Bootstrap, routes: dict, clusters: dict[str, _ClusterState],
                           commit: list) -> None:
        socks: dict[str, tuple[tuple[str, int], Any]] = {}
        handles = []
        builds: dict[str, _ListenerBuild] = {}
        warming = []
        providers: dict = {}            # the RDS providers in use, by (name, filters)
        pending: list = []              # (entry, model, table, refs) to set once all is built
        listener_rds: dict = {}         # listener name -> the key of its RDS provider
        for l in b.listeners:
            # Every listener's provider, built or kept as it is (with the same rds and
            # filters, a listener kept as it is uses the same one).
            hcm = l.http_connection_manager
            if hcm is not None and hcm.rds is not None and \
                    self._rds_entry(self._rds_key(hcm), hcm.http_filters, routes, providers, pending) is not None:
                listener_rds[l.name] = self._rds_key(hcm)
        for i, l in enumerate(b.listeners):
            hcm = l.http_connection_manager
            route_config = None
            if hcm is not None:
                route_config = hcm.route_config if hcm.rds is None else routes.get(hcm.rds.route_config_name)
            if (hcm is not None and route_config is None) or self._listener_secrets_missing(l):
                # Warming: a new listener is not bound until its routes (RDS) and its
                # secrets (SDS over xDS) come; a changed one goes on serving its previous
                # version (its socket and config) meanwhile.
                warming.append(l.name)
                old_handle = self._listeners.get(l.name)
                if old_handle is not None:
                    socks[l.name] = self._socks[l.name]
                    handles.append(old_handle)
                    if l.name in self._listener_builds:     # kept, not retired
                        builds[l.name] = self._listener_builds[l.name]
                    key = self._listener_rds.get(l.name)
                    if key is not None:     # its routes go on taking updates
                        self._rds_entry(key, (), routes, providers, pending)
                        listener_rds[l.name] = key
                continue
            requested = (l.address, l.port)
            old = self._socks.get(l.name)
            if old is not None and (old[0] == requested or old[1].address == requested):
                sock = old[1]       # same address (also: port 0 restated as the port it got)
            else:
                try:
                    # (Adopted fds are the bind's from the call on, closed if it fails.)
                    sock = self._engine.bind(l.address, l.port, l.backlog, self._adopt.pop(l.name, None))
                except OSError as e:
                    raise ListenerBindError(
                        f"static_resources.listeners[{i}] ({l.name}): {e.strerror or e}", l.name) from None
            socks[l.name] = (requested, sock)
            ip, port = sock.address
            hcm = l.http_connection_manager
            # What the listener's core config is built from besides its model: when these
            # are the same objects (and the model is equal), the built one is kept. An RDS
            # listener's routes come from its provider (a new table there changes nothing
            # here); inline routes from the clusters they name.
            if l.selects_chain:
                refs = self._chains_refs(l)
            elif hcm is None:
                refs = {"cluster": self._cluster_ref(l.handler.cluster)}
            elif hcm.rds is not None:
                refs = {"rds": providers[listener_rds[l.name]].provider}
            else:
                refs = {("cluster", name): self._cluster_ref(name) for name in _route_cluster_names(route_config)}
            old_build = self._listener_builds.get(l.name)
            if old_build is not None and old_build.unchanged(l, sock, refs):
                builds[l.name] = old_build
                handles.append(old_build.handle)
                continue
            if l.selects_chain:
                handles.append(self._chain_listener(l, sock))
            else:
                provider = None
                if hcm is not None:
                    provider = (providers[listener_rds[l.name]].provider if hcm.rds is not None
                                else _core.make_route_provider(
                                    self._engine, self._route_table(route_config, hcm.http_filters)[0]))
                handles.append(self._chain_cfg(l, l.chains[0], sock, provider))
            builds[l.name] = _ListenerBuild(l, sock, refs, handles[-1])
        # Clusters first (one revived here is alive before a table naming it), then the
        # tables, then the snapshot: each worker's queue runs them in this order.
        self._commit_clusters(clusters, commit)
        for entry, rc, table, refs in pending:
            entry.set(rc, table, refs)
        self._retire_listeners(builds)
        self._engine.apply(handles)
        self._rds_providers = providers
        self._listener_rds = listener_rds
        self._socks = socks
        self._listeners = {h.name: h for h in handles}
        self._listener_builds = builds
        self._warming = warming
        self._forget_unreferenced_clusters()
        # The contexts in force (owner: the cluster's or listener's name) go on rotating,
        # those of a listener or cluster version still serving while its successor warms too.
        self._secret_store.keep([(c.model.name, False, c.model.tls) for c in self._clusters.values()
                                 if c.model.tls is not None] +
                                [(name, True, ctx) for name, build in builds.items()
                                 for ctx, _ in listener_contexts(build.model, "")])

    def _chains_refs(self, l: Listener) -> dict:
        """The core objects the chains of a listener with filter chains are built from
        (see _ListenerBuild): the clusters each chain's tcp_proxy or inline routes name."""
        refs: dict = {}
        for chain, j in l.all_chains():
            hcm = chain.http_connection_manager
            if hcm is None:
                refs[(j, "cluster")] = self._cluster_ref(chain.handler.cluster)
            else:
                refs.update({(j, "cluster", name): self._cluster_ref(name)
                             for name in _route_cluster_names(hcm.route_config)})
        return refs

    def _chain_cfg(self, l: Listener, chain, sock, provider):
        """One filter chain's ListenerCfg on ``sock`` (for a connection manager, with the
        RouteProvider ``provider``): a listener's only one, or one of a parent's."""
        ip, port = sock.address
        hcm = chain.http_connection_manager
        factories = tuple(chain.filters)
        http = None
        if hcm is not None:
            # Envoy's server-wide codec stats: http1.*, http2.*
            http = _core.make_http_cfg(
                hcm, self._stat_block("http", f"http.{hcm.stat_prefix}"), provider, self.concurrency,
                self._stat_block("http1", "http1"), self._async,
                http2_stats=self._stat_block("http2", "http2"))
        tls = {}
        if chain.tls is not None:       # (the keywords exist with TLS in the core)
            tls = dict(tls=self._tls_context(chain.tls, True, f"listener.{ip}_{port}.ssl", l.name),
                       transport_socket_connect_timeout=chain.transport_socket_connect_timeout)
        return self._engine.make_listener(
            l.name, sock, self._cluster_ref(chain.handler.cluster) if http is None else None,
            self._stat_block("listener", f"listener.{ip}_{port}"),
            self._stat_block("tcp", f"tcp.{chain.stat_prefix or chain.effective_stat_prefix}"),
            chain.idle_timeout, chain.max_connect_attempts, l.max_connections, l.buffer_limit,
            factories,
            not any(_reads_bytes(f, "on_data") for f in factories),
            not any(_reads_bytes(f, "on_write") for f in factories), http,
            None if http is None else
            self._stat_block("listener_http", f"listener.{ip}_{port}.http.{hcm.stat_prefix}"), **tls)

    def _chain_listener(self, l: Listener, sock):
        """A listener whose connections pick their filter chain (core/listener_filters.pxi):
        each chain's ListenerCfg, then the parent that chooses among them."""
        ip, port = sock.address

        def build(chain):
            hcm = chain.http_connection_manager
            provider = None if hcm is None else _core.make_route_provider(
                self._engine, self._route_table(hcm.route_config, hcm.http_filters)[0])
            return self._chain_cfg(l, chain, sock, provider)

        chains = [build(chain) for chain in l.chains]
        default = build(l.default_filter_chain) if l.default_filter_chain is not None else None
        table = _core.make_chain_table([_match_spec(chain.match) for chain in l.chains])
        return self._engine.make_chain_listener(
            l.name, sock, self._stat_block("listener", f"listener.{ip}_{port}"), chains, table, default,
            l.tls_inspector, l.listener_filters_timeout, l.continue_on_listener_filters_timeout,
            self._stat_block("tls_inspector", "tls_inspector") if l.tls_inspector else None)

    def _retire_listeners(self, builds: dict[str, "_ListenerBuild"]) -> None:
        """Before the apply that installs ``builds``: the versions it replaces or removes
        start their drain (the workers arm its end as they apply), and are counted."""
        now = time.monotonic()
        states = self._resource_states["listener"]
        retired = []
        for name, old in self._listener_builds.items():
            new = builds.get(name)
            if new is old or old.retired:
                continue
            self._listener_counts["modified" if new is not None else "removed"] += 1
            in_place = new is not None and _same_listener_socket(old.model, new.model)
            if in_place:
                self._listener_counts["in_place_updated"] += 1
            old.retired = True
            old.handle.start_drain(self.drain_time_s, self.drain_strategy == "immediate")
            st = states.get(name)
            retired.append(_Draining(name, old.model, old.handle, now + self.drain_time_s,
                                     dataclasses.replace(st[1]) if st is not None else None, in_place))
        with self._draining_lock:       # (the drains that are over go: each holds its config)
            self._draining = [d for d in self._draining if not d.over()] + retired
        self._listener_counts["added"] += sum(1 for name in builds if name not in self._listener_builds)

    def _still_draining(self) -> list[_Draining]:
        """The retired listener versions still draining (the others are forgotten here: the
        workers drop them with their last connection or at their drain end)."""
        with self._draining_lock:
            self._draining = [d for d in self._draining if not d.over()]
            return list(self._draining)
