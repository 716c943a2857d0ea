"""Proxy: the user-facing object that owns a running data plane.

The main thread (this module) validates config, compiles it into the core's immutable
structs, and posts snapshots to the workers; the workers (in fastproxy._core) never wait
on it. See docs/architecture.md.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional

from . import _core
from .errors import ConfigError, ListenerBindError
from .filters import NetworkFilter
from .model import Admin, Bootstrap, Cluster, DynamicResources, Listener, Node
from .http.model import ANY_CLUSTER, RouteConfiguration
from .http.native_filters import native_filter_stat_blocks
from .memory import SERVER_GAUGES as MEMORY_GAUGES, memory_stats
if TYPE_CHECKING:
    from .xds.resources import XdsResources

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


def smooth_weighted_schedule(weights: list[int]) -> list[int]:
    """The pick order for weighted round robin: each host i appears weights[i] times,
    spread out rather than in runs (the 'smooth' interleaving nginx popularised)."""
    total = sum(weights)
    if weights and min(weights) == max(weights):
        # Equal weights interleave as 0..n-1, weights[0] times over (what the loop below
        # gives, in O(total) rather than O(total * n): a 10,000-endpoint EDS set).
        return list(range(len(weights))) * weights[0]
    current = [0] * len(weights)
    order = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return order


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    """The asyncio loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _reads_bytes(factory: Any, hook: str) -> bool:
    """Whether filters made by `factory` override `hook` (and so must see the bytes).
    Unknown factories are assumed to read, which only costs the splice fast path."""
    cls = factory.func if isinstance(factory, functools.partial) else factory
    if not isinstance(cls, type):
        return True
    return getattr(cls, hook) is not getattr(NetworkFilter, hook)


# listener.<address>.worker_<k>.*: what Envoy keeps per worker for each listener.
_PER_WORKER_LISTENER_STATS = ("downstream_cx_total", "downstream_cx_active")

_FAMILIES = {
    "V4_ONLY": (socket.AF_INET,),
    "V6_ONLY": (socket.AF_INET6,),
    "AUTO": (socket.AF_INET6, socket.AF_INET),        # v6 if any, else v4
    "V4_PREFERRED": (socket.AF_INET, socket.AF_INET6),  # v4 if any, else v6
    "ALL": None,
}


def resolve_endpoints(cluster: Cluster) -> list[tuple[str, int, int, str]]:
    """(ip, port, weight, hostname) for every host of the cluster. STRICT_DNS endpoints
    expand to every address their name resolves to (Envoy's strict DNS). hostname is what
    auto_host_rewrite sends: the endpoint's own hostname, else a DNS endpoint's name, else
    "" (a STATIC endpoint: the Host stays). Blocking: main thread only."""
    out = []
    for ep in cluster.endpoints:
        if cluster.type != "STRICT_DNS":       # STATIC, EDS: IP addresses
            out.append((ep.address, ep.port, ep.weight, ep.hostname))
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
        out.extend((ip, ep.port, ep.weight, ep.hostname or ep.address) for ip in ips)
    return out


def _host_set(hosts: list[tuple[str, int, int, str]]):
    return _core.make_hostset([(ip, port, name, weight) for ip, port, weight, name in hosts],
                              smooth_weighted_schedule([w for _, _, w, _ in hosts]))


def _circuit_breaker_gauges(prefix: str, c: "_ClusterState") -> dict:
    """Envoy's circuit_breakers.<priority>.* gauges: *_open is 1 while a limit is reached,
    remaining_* (with track_remaining) what is left of it. Only DEFAULT is enforced, so the
    HIGH ones read 0, as Envoy's do when nothing runs at that priority. Connection pools
    are not limited (cx_pool_open 0; Envoy's remaining_cx_pools is not emitted)."""
    state = c.handle.circuit_breakers()
    out = {}
    for key, gauge in (("cx", "cx_open"), ("pending", "rq_pending_open"), ("rq", "rq_open"),
                       ("retries", "rq_retry_open")):
        used, limit = state[key]
        # Retries never happen here; Envoy's rq_retry_open only changes when one starts.
        out[prefix + "default." + gauge] = int(key != "retries" and used >= limit)
        out[prefix + "high." + gauge] = 0
    out[prefix + "default.cx_pool_open"] = 0
    out[prefix + "high.cx_pool_open"] = 0
    if c.model.track_remaining:
        for key, gauge in (("cx", "remaining_cx"), ("pending", "remaining_pending"),
                           ("rq", "remaining_rq"), ("retries", "remaining_retries")):
            used, limit = state[key]
            out[prefix + "default." + gauge] = max(0, limit - used)
    return out


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


class _ClusterState:
    def __init__(self, model: Cluster, handle, hosts):
        self.model = model
        self.handle = handle
        self.hosts = hosts
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
_LISTENER_SOCKET_FIELDS = ("address", "port", "backlog", "max_connections", "buffer_limit", "drain_type")


def _same_listener_socket(a: Listener, b: Listener) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _LISTENER_SOCKET_FIELDS)


DRAIN_STRATEGIES = ("gradual", "immediate")
#: Envoy's --drain-time-s default.
DEFAULT_DRAIN_TIME_S = 600.0


def _as_list(value: Any, argument: str, cls: type) -> list:
    """The list a Proxy argument takes, with a TypeError naming the argument for what is
    easy to pass by mistake: one object instead of a list, or an Envoy-style dict."""
    what = cls.__name__
    if isinstance(value, cls):
        raise TypeError(f"Proxy({argument}=...) takes a list of {what}, got a single {what}: "
                        f"write {argument}=[{what}(...)]")
    if isinstance(value, (dict, str, bytes)):
        hint = " (an Envoy configuration goes to Proxy.from_envoy)" if isinstance(value, dict) else ""
        raise TypeError(f"Proxy({argument}=...) takes a list of {what}, got a {type(value).__name__}{hint}")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"Proxy({argument}=...) takes a list of {what}, got {type(value).__name__}") from None
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise TypeError(f"Proxy({argument}=...): {argument}[{i}] must be a {what}, got "
                            f"{type(item).__name__} {item!r:.60}")
    return items


class Proxy:
    """A proxy: listeners, the clusters they send to, and the worker threads that serve them.

    ``listeners``: :class:`Listener` objects, each with one handler (a :class:`TcpProxy` or a
    :class:`fastproxy.http.HttpConnectionManager`); ``clusters``: the :class:`Cluster` objects
    they name; ``concurrency``: worker threads (default: one per CPU); ``admin``: an
    :class:`Admin` to serve /stats and /ready; ``node``: the proxy's identity;
    ``max_downstream_connections``: a limit over all listeners; ``dynamic_resources``: where
    more listeners and clusters are discovered (fastproxy.xds: files today; they need the
    node's id and cluster, as in Envoy). The configuration is checked
    here: a mistake raises :class:`ConfigError` naming the argument's path.

    ``drain_time_s`` and ``drain_strategy`` (Envoy's ``--drain-time-s`` and
    ``--drain-strategy``): when ``update()`` changes or removes a listener, the connections
    of its old version drain: each HTTP response on one says ``Connection: close`` with a
    probability rising from 0 to 1 over ``drain_time_s`` ("gradual"), or always
    ("immediate"), and whatever is still open after ``drain_time_s`` (HTTP or TCP proxy) is
    closed. :meth:`draining_listeners` names the listeners with a version draining.

    Lifecycle: ``start()`` / ``stop()``, or ``with proxy:``, or ``run()`` (serve until
    SIGINT/SIGTERM); in asyncio code ``async with proxy:`` or ``await proxy.aclose()``. While it runs: ``update()`` replaces the configuration, ``stats()``,
    ``histograms()`` and ``listener_address()`` report. ``from_envoy()`` builds one from an
    Envoy v3 bootstrap.

    >>> p = Proxy(listeners=[Listener("l", TcpProxy("c"), port=0)],
    ...           clusters=[Cluster("c", [Endpoint("127.0.0.1", 8080)])])
    >>> with p:
    ...     host, port = p.listener_address("l")

    ``loop``: the asyncio loop the ``async def`` hooks of Python HTTP filters run on; by
    default the loop that starts the proxy (``async with proxy:``), else a loop thread of
    the proxy's own. Stopping from asyncio (``aclose()``) waits for those hooks without
    blocking that loop.
    """

    def __init__(self, listeners: Iterable[Listener] = (), clusters: Iterable[Cluster] = (), *,
                 concurrency: Optional[int] = None, admin: Optional[Admin] = None,
                 node: Optional[Node] = None, max_downstream_connections: Optional[int] = None,
                 loop: Optional[asyncio.AbstractEventLoop] = None,
                 dynamic_resources: Optional[DynamicResources] = None,
                 drain_time_s: float = DEFAULT_DRAIN_TIME_S, drain_strategy: str = "gradual"):
        if isinstance(drain_time_s, bool) or not isinstance(drain_time_s, (int, float)) \
                or not 0 <= drain_time_s < float("inf"):
            raise ConfigError("drain_time_s", f"must be a number of seconds >= 0, got {drain_time_s!r}")
        if drain_strategy not in DRAIN_STRATEGIES:
            raise ConfigError("drain_strategy", f"must be one of {', '.join(DRAIN_STRATEGIES)}, "
                                                f"got {drain_strategy!r}")
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise TypeError(f"Proxy(loop=...) takes an asyncio event loop, got {type(loop).__name__}")
        if dynamic_resources is not None and not isinstance(dynamic_resources, DynamicResources):
            raise TypeError("Proxy(dynamic_resources=...) takes a fastproxy.model.DynamicResources, "
                            f"got {type(dynamic_resources).__name__}")
        bootstrap = Bootstrap(_as_list(listeners, "listeners", Listener), _as_list(clusters, "clusters", Cluster),
                              admin, node if node is not None else Node(), max_downstream_connections,
                              dynamic_resources)
        bootstrap.validate_once()       # (what load_envoy validated is not validated again)
        from .xds.resources import check_node
        check_node(bootstrap.node, dynamic_resources, bootstrap.listeners, bootstrap.clusters)
        if concurrency is None or concurrency == 0:
            concurrency = os.cpu_count() or 1
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError("concurrency", f"must be a positive integer, got {concurrency!r}")
        self.concurrency = concurrency
        self._engine = _core.Engine(concurrency)
        if bootstrap.max_downstream_connections:
            self._engine.set_global_max_connections(bootstrap.max_downstream_connections)
        self._lock = threading.RLock()
        self._stats: dict[tuple[str, str], Any] = {}
        self._socks: dict[str, tuple[tuple[str, int], Any]] = {}   # listener name -> (requested, sock)
        self._clusters: dict[str, _ClusterState] = {}                # configured ones
        # Handles of names referenced (by a listener or route table) with no cluster
        # configured: removed, or not added yet. Requests to them get 503 NC; a cluster
        # added under the name revives the same handle. Forgotten once nothing refers to
        # them (_forget_unreferenced_clusters).
        self._absent_clusters: dict[str, Any] = {}
        self._installing_clusters: Optional[dict[str, _ClusterState]] = None   # (in _install)
        # cluster_manager.cluster_added|cluster_modified|cluster_removed|cluster_updated,
        # counted as Envoy counts them: the bootstrap's clusters are added; a changed
        # cluster is modified, unless only an EDS cluster's endpoints or a DNS cluster's
        # addresses changed, which is a membership update.
        self._cluster_counts = {"cluster_added": 0, "cluster_modified": 0, "cluster_removed": 0,
                                "cluster_updated": 0}
        self._listeners: dict[str, Any] = {}                        # name -> ListenerCfgHandle
        self._listener_builds: dict[str, _ListenerBuild] = {}
        self._draining: list[_Draining] = []        # retired versions, oldest first
        # Guards _draining alone: stats() (the admin's thread) must not wait for an update.
        self._draining_lock = threading.Lock()
        self.drain_time_s = float(drain_time_s)
        self.drain_strategy = drain_strategy
        # Envoy's listener_manager.listener_added / _modified / _removed
        self._listener_counts = {"added": 0, "modified": 0, "in_place_updated": 0, "removed": 0}
        # The route configurations given by update(routes=...) (RDS), by name; a listener
        # whose rds names one not here is warming (see warming_listeners).
        self._routes: dict[str, RouteConfiguration] = {}
        self._rds_providers: dict[tuple[str, str], _RdsRoutes] = {}   # in use, by (name, filters)
        self._listener_rds: dict[str, tuple[str, str]] = {}          # listener -> its provider's key
        self._warming: list[str] = self._warming_names(bootstrap, self._routes)
        self._bootstrap = bootstrap
        # What /config_dump shows: the bootstrap the proxy was made with, and per listener,
        # cluster and route configuration (by its listener's name) a ResourceState with
        # the model it describes, stamped when that model last changed.
        self._initial_bootstrap = bootstrap
        self._created = time.time()
        self._resource_states: dict[str, dict[str, Any]] = {"listener": {}, "cluster": {}, "route": {}}
        self._discovery_versions: dict[str, str] = {}
        self._track(bootstrap)
        self._state = "new"
        self._shutdown = threading.Event()
        self._dns_stop = threading.Event()
        self._dns_thread: Optional[threading.Thread] = None
        self._admin_server = None
        self._xds = None        # xds.files.FileDiscovery while it runs
        self._loop = loop
        # Hot restart: listening sockets taken over from the previous process, by listener
        # name (fastproxy.hot_restart); bound in their place by start().
        self._adopt: dict[str, list[int]] = {}
        # Where `async def` filter hooks run; bound to its loop by start().
        self._async = _core.AsyncBridge(concurrency)
        # Nothing is bound nor resolved yet: ports are taken by start().

    # ---- HTTP filter registration ----

    @staticmethod
    def register_http_filter(name: str, cls: type) -> None:
        """Make a fastproxy.HttpFilter subclass available to configs by name (Envoy YAML:
        a TypedStruct with ``filter: <name>``). Registrations are process-wide; a package can
        instead declare the class in the ``fastproxy.filters`` entry point group."""
        from .http_filter import register_http_filter
        register_http_filter(name, cls)

    @staticmethod
    def register_c_filter(name: str, table: Any, keepalive: Any = None) -> None:
        """Make a C filter (an ``fp_http_filter`` table; ``table`` is its address as an int
        or a cffi pointer) available to configs by name (TypedStruct type_url
        ``type.googleapis.com/fastproxy.c.HttpFilter``, ``filter: <name>``). ``keepalive``
        is kept referenced while the filter is in use (the cffi lib object)."""
        from .http_filter import register_c_filter
        register_c_filter(name, table, keepalive)

    # ---- construction from files ----

    @classmethod
    def from_bootstrap(cls, bootstrap: Bootstrap, *, concurrency: Optional[int] = None,
                       drain_time_s: float = DEFAULT_DRAIN_TIME_S, drain_strategy: str = "gradual") -> "Proxy":
        """A proxy for a whole configuration (what load_envoy returns: validated there, and
        not again here unless changed since)."""
        return cls(bootstrap.listeners, bootstrap.clusters, concurrency=concurrency, admin=bootstrap.admin,
                   node=bootstrap.node, max_downstream_connections=bootstrap.max_downstream_connections,
                   dynamic_resources=bootstrap.dynamic_resources, drain_time_s=drain_time_s,
                   drain_strategy=drain_strategy)

    @classmethod
    def from_envoy(cls, source: Any, *, concurrency: Optional[int] = None,
                   drain_time_s: float = DEFAULT_DRAIN_TIME_S, drain_strategy: str = "gradual") -> "Proxy":
        """From an Envoy v3 bootstrap: a path, YAML/JSON text, or a dict."""
        from .config import load_envoy
        return cls.from_bootstrap(load_envoy(source), concurrency=concurrency, drain_time_s=drain_time_s,
                                  drain_strategy=drain_strategy)

    # ---- lifecycle ----

    def start(self) -> "Proxy":
        """Bind the listeners, resolve the clusters and start the workers (and the admin).
        Raises ListenerBindError when a listener's address cannot be bound.

        ``async def`` filter hooks run on the ``loop`` given to the constructor, else on
        the asyncio loop running in the calling thread, else on a loop thread of the
        proxy's own (started on the first async hook)."""
        return self._start(self._loop if self._loop is not None else _running_loop())

    def _start(self, hook_loop: Optional[asyncio.AbstractEventLoop]) -> "Proxy":
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"proxy is {self._state}; start() works once")
            self._async.bind(hook_loop)
            self._install(self._bootstrap, self._routes)
            self._engine.start()
            self._state = "running"
            if any(c.model.type == "STRICT_DNS" for c in self._clusters.values()):
                self._start_dns()
            from .xds.discovery import needs_discovery
            if needs_discovery(self._bootstrap):
                # The initial fetch is done when this returns (the files are read here).
                from .xds.discovery import Discovery
                self._xds = Discovery(self, self._bootstrap.dynamic_resources)
                self._xds.start()
            if self._bootstrap.admin is not None:
                from .admin import AdminServer
                a = self._bootstrap.admin
                self._admin_server = AdminServer(self, a.address, a.port, a.access_log)
                if self._xds is not None:
                    # ADS: until the initial fetch is done (below) /ready says so, as Envoy's.
                    self._admin_server.state = "INITIALIZING"
                self._admin_server.start()
        if self._xds is not None:
            # The initial fetch (CDS, EDS, LDS, RDS; files were read above). Meanwhile the
            # admin's /ready says INITIALIZING (503), as Envoy's does until it is done.
            admin = self._admin_server
            self._xds.wait_initial()
            if admin is not None:
                self._xds.when_initialized(lambda: setattr(admin, "state", "LIVE")
                                           if admin.state == "INITIALIZING" else None)
        for name in self._listeners:
            host, port = self.listener_address(name)
            # debug: the command line prints these addresses itself, once
            log.debug("listener %s on %s:%d", name, host, port)
        return self

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, let open connections finish for up to drain_timeout seconds,
        then close the rest and join the workers.

        Blocks: raises RuntimeError when called on the thread running the loop the
        proxy's async filter hooks run on, as those hooks (and so the requests waiting for
        them) could not finish while it waits; use ``await aclose()`` there."""
        if self._async.runs_on_current_thread():
            raise RuntimeError("Proxy.stop() blocks, and this thread runs the asyncio loop of "
                               "the proxy's async filter hooks, which could not finish while "
                               "it waits: use `await proxy.aclose()` (or `async with proxy:`)")
        self._stop(drain_timeout)

    async def aclose(self, drain_timeout: float = 5.0) -> None:
        """stop() for asyncio code: the drain and the joins run on another thread, so the
        loop goes on (the async filter hooks of in-flight requests finish meanwhile)."""
        await asyncio.get_running_loop().run_in_executor(None, self._stop, drain_timeout)

    def _stop(self, drain_timeout: float) -> None:
        # Before the lock: a reload in progress holds it (Proxy.update) and is let finish.
        xds, self._xds = self._xds, None
        if xds is not None:
            xds.stop()
        with self._lock:
            for fds in self._adopt.values():    # taken over for a listener never bound
                for fd in fds:
                    os.close(fd)
            self._adopt.clear()
            if self._state in ("stopped", "new"):
                if self._state == "new":
                    self._engine.apply([])
                    self._state = "stopped"
                return
            self._state = "draining"
            self._engine.apply([])
            deadline = time.monotonic() + drain_timeout
            while self._engine.active_connections() and time.monotonic() < deadline:
                time.sleep(0.01)
            # Before the workers go: no hook result is posted to a stopped worker.
            self._async.close()
            self._engine.stop()
            self._async.workers_stopped()
            self._state = "stopped"
            self._dns_stop.set()
            if self._admin_server is not None:
                self._admin_server.stop()
        if self._dns_thread is not None:
            self._dns_thread.join()
        self._shutdown.set()

    def request_shutdown(self) -> None:
        """Make run() return (after draining). Thread-safe; also what SIGTERM does."""
        self._shutdown.set()

    def run(self, drain_timeout: float = 5.0) -> None:
        """Start (if needed) and serve until SIGINT/SIGTERM or request_shutdown()."""
        if self._state == "new":
            self.start()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self._shutdown.set())
        try:
            while not self._shutdown.wait(0.5):
                pass
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
            log.info("shutting down: draining connections")
            self.stop(drain_timeout)

    def __enter__(self) -> "Proxy":
        if self._state == "new":
            hook_loop = self._loop if self._loop is not None else _running_loop()
            if hook_loop is not None and hook_loop is _running_loop():
                raise RuntimeError("`with Proxy(...)` would block this asyncio loop when it "
                                   "stops, and the proxy's async filter hooks run on it: "
                                   "use `async with Proxy(...)`")
            self._start(hook_loop)
        return self

    def __exit__(self, *exc) -> None:
        self.stop(drain_timeout=0.5)

    async def __aenter__(self) -> "Proxy":
        """Start (on another thread: binding and DNS may block); the proxy's async filter
        hooks run on this loop unless the constructor was given another."""
        if self._state == "new":
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._start, self._loop if self._loop is not None else loop)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose(drain_timeout=0.5)

    def __del__(self):
        try:
            if getattr(self, "_state", None) == "running":
                self._stop(drain_timeout=0)
        except Exception:
            pass

    # ---- runtime changes ----

    def update(self, listeners: Optional[Iterable[Listener]] = None,
               clusters: Optional[Iterable[Cluster]] = None,
               routes: Optional[Iterable[RouteConfiguration]] = None, *, _validated: bool = False) -> None:
        """Replace the listeners, clusters and/or route configurations. New connections use
        the new config as soon as this returns. A listener that is equal and built from the
        same clusters and route providers keeps its connections as they are; the connections
        of a changed or removed one drain over ``drain_time_s`` (see the class). (With
        dynamic_resources, the next discovered update sets the static resources the proxy
        started with beside the discovered ones again.)

        ``routes``: the named RouteConfigurations that listeners whose connection manager has
        ``rds`` use (RDS); they replace the set given before (None: keep it). A routes-only
        change reaches the next request of every open connection, and drains nothing. A
        route may name a cluster that does not exist: its requests are answered 503 (flag
        NC). A listener whose route configuration is not there is warming
        (warming_listeners()): a new one is not bound, a changed one goes on serving its
        previous version."""
        with self._lock:
            if self._state in ("draining", "stopped"):
                raise RuntimeError("proxy is stopped")
            new_routes = self._routes if routes is None else self._route_map(routes, not _validated)
            b = Bootstrap(_as_list(listeners, "listeners", Listener) if listeners is not None
                          else list(self._bootstrap.listeners),
                          _as_list(clusters, "clusters", Cluster) if clusters is not None
                          else list(self._bootstrap.clusters),
                          self._bootstrap.admin, self._bootstrap.node, self._bootstrap.max_downstream_connections,
                          self._bootstrap.dynamic_resources)
            if not _validated:          # (the xDS layer validated these lists itself)
                b.validate()
            if self._state == "running":
                if listeners is None and clusters is None and not any(
                        self._rds_name(l) in new_routes for l in b.listeners if l.name in self._warming):
                    # Routes only, and no warming listener is ready: the RDS providers get
                    # their new tables, no listener is rebuilt (none drains).
                    self._set_routes(new_routes)
                    self._warming = self._warming_names(b, new_routes)
                else:
                    self._install(b, new_routes)
            else:
                self._warming = self._warming_names(b, new_routes)
            self._routes = new_routes
            self._bootstrap = b
            self._track(b)
            _settle_collector()
            if self._state == "running" and self._dns_thread is None and \
                    any(c.model.type == "STRICT_DNS" for c in self._clusters.values()):
                self._start_dns()

    @staticmethod
    def _route_map(routes: Iterable[RouteConfiguration], validate: bool) -> dict[str, RouteConfiguration]:
        """update(routes=...) as {name: RouteConfiguration}; names must be unique and
        non-empty. Their clusters need not exist (RDS's validate_clusters is false)."""
        out: dict[str, RouteConfiguration] = {}
        for i, rc in enumerate(_as_list(routes, "routes", RouteConfiguration)):
            if validate:
                rc.validate(f"routes[{i}]", ANY_CLUSTER)
            if not isinstance(rc.name, str) or not rc.name:
                raise ConfigError(f"routes[{i}].name", "a route configuration given by routes= needs a name "
                                                       "(what a connection manager's rds.route_config_name names)")
            if rc.name in out:
                raise ConfigError(f"routes[{i}].name", f"duplicate route configuration name {rc.name!r}")
            out[rc.name] = rc
        return out

    @staticmethod
    def _rds_name(l: Listener) -> Optional[str]:
        """The route configuration name listener ``l``'s connection manager has from RDS."""
        hcm = l.http_connection_manager
        return hcm.rds.route_config_name if hcm is not None and hcm.rds is not None else None

    @classmethod
    def _warming_names(cls, b: Bootstrap, routes: dict) -> list[str]:
        return [l.name for l in b.listeners if cls._rds_name(l) is not None and cls._rds_name(l) not in routes]

    def warming_listeners(self) -> list[str]:
        """The listeners waiting for their route configuration (rds names one that
        update(routes=...) has not given): a new one is not bound yet, a changed one
        serves its previous version meanwhile (Envoy's warming listeners)."""
        with self._lock:
            return list(self._warming)

    def route_configs_in_use(self) -> set[str]:
        """The names of the RDS route configurations some listener version serving now
        takes its routes from (also a changed listener's previous version while its new
        one warms): what an RDS subscription must keep (fastproxy.xds)."""
        with self._lock:
            return {name for name, _ in self._rds_providers}

    # ---- the config dump (admin /config_dump) ----

    def _track(self, b: Bootstrap) -> None:
        """Stamp every listener, cluster and route configuration of ``b`` that is new or
        differs from the one in force (Envoy's last_updated); forget the removed ones."""
        from .config.dump import ResourceState
        now = time.time()
        # Route configurations: a listener's inline one by the listener's name, those of
        # update(routes=...) (RDS) by their own.
        routes = {l.name: l.http_connection_manager.route_config for l in b.listeners
                  if l.http_connection_manager is not None and l.http_connection_manager.route_config is not None}
        routes.update(self._routes)
        current = {"listener": {l.name: l for l in b.listeners},
                   "cluster": {c.name: c for c in b.clusters},
                   "route": routes}
        for kind, models in current.items():
            old = self._resource_states[kind]
            new = {}
            for name, m in models.items():
                st = old.get(name)
                if st is None or st[0] != m:
                    prev = st[1] if st is not None else ResourceState(now)
                    st = (m, ResourceState(now, prev.dynamic, prev.version_info, prev.state))
                new[name] = st
            self._resource_states[kind] = new

    def note_discovered(self, kind: str, name: str, version_info: str, state: str = "active") -> None:
        """For a discovery service (xDS): listener, cluster or route configuration ``name``
        (``kind``: "listener", "cluster", "route"; a route configuration by its listener's
        name) came from it at ``version_info``; /config_dump lists it among the dynamic
        resources (a listener's ``state``: active, warming or draining; a cluster's: active
        or warming) with that version. Call after the update() that installed it."""
        states = {"listener": ("active", "warming", "draining"), "cluster": ("active", "warming"),
                  "route": ("active",)}
        if kind not in states:
            raise ValueError(f"kind must be one of {', '.join(states)}, got {kind!r}")
        if state not in states[kind]:
            raise ValueError(f"a {kind}'s state is one of {', '.join(states[kind])}, got {state!r}")
        with self._lock:
            entry = self._resource_states[kind].get(name)
            if entry is None:
                raise KeyError(f"no {kind} named {name!r} in force")
            st = entry[1]
            st.dynamic, st.version_info, st.state = True, version_info, state

    def note_discovery_version(self, type_name: str, version_info: str) -> None:
        """The last version a discovery service's ``type_name`` ("clusters", "listeners")
        was accepted at: the version_info of /config_dump's ClustersConfigDump /
        ListenersConfigDump."""
        with self._lock:
            self._discovery_versions[type_name] = version_info

    def config_dump(self, resource: Optional[str] = None, mask: Optional[str] = None,
                    include_eds: bool = False) -> dict:
        """The configuration in Envoy's ``/config_dump`` shape (envoy.admin.v3.ConfigDump,
        as JSON types): the bootstrap the proxy was made with, then the clusters, listeners
        and route configurations in force, each with its last_updated (and, for one from
        a discovery service, its version_info). ``resource`` and ``mask`` are the admin's
        ``?resource=`` and ``?mask=`` (see fastproxy.config.dump.apply_query); what Envoy
        refuses raises fastproxy.config.dump.DumpQueryError (a ValueError). ``include_eds``
        adds the EDS assignments (EndpointsConfigDump), as the admin's ``?include_eds``."""
        from .admin import package_version
        from .config import dump
        xds = self._xds
        endpoints = None
        if include_eds:
            endpoints = [(name, eps, version, updated) for (name, eps), version, updated in
                         (xds.resources.discovered("endpoints") if xds is not None else [])]
        with self._lock:
            b = self._bootstrap
            states = {kind: {name: st for name, (_, st) in entries.items()}
                      for kind, entries in self._resource_states.items()}
            node = {"user_agent_name": "fastproxy", "user_agent_version": package_version()}
            # (Envoy's DynamicListener has a draining_state; a StaticListener has none.)
            draining = [(d.model, d.state) for d in self._still_draining()
                        if d.state is not None and d.state.dynamic]
            full = dump.build(self._initial_bootstrap, self._created, node, list(b.listeners),
                              list(b.clusters), states["listener"], states["cluster"], states["route"],
                              dict(self._discovery_versions), dict(self._routes), endpoints, draining)
        return dump.apply_query(full, resource, mask)

    # ---- hot restart (fastproxy.hot_restart drives these) ----

    def _adopt_listen_sockets(self, fds: dict[str, list[int]]) -> None:
        """Before start(): listener name -> listening fds to accept on instead of binding
        (owned by the proxy from here on)."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("listening sockets are adopted before start()")
            self._adopt.update(fds)

    def _listen_fds(self, name: str, address: Optional[tuple]) -> list[int]:
        """Duplicates of the listening fds of listener `name` when it is configured with
        (or bound to) `address`, for a new process; [] when there is no such listener."""
        with self._lock:            # no apply (the only time a worker closes its fd) meanwhile
            entry = self._socks.get(name) if self._state == "running" else None
            if entry is None or address not in (entry[0], entry[1].address):
                return []
            return [os.dup(fd) for fd in entry[1].fds() if fd >= 0]

    def _hand_over_listeners(self) -> None:
        """Another process accepts on our sockets now: stop accepting and drain (no update
        may bind again)."""
        with self._lock:
            if self._state != "running":
                return
            for _requested, sock in self._socks.values():
                sock.hand_over()
            self._engine.apply([])
            self._state = "draining"

    def _active_connections(self) -> int:
        return self._engine.active_connections()

    @property
    def config(self) -> Bootstrap:
        """The configuration in force (the last one given to the constructor or update())."""
        return self._bootstrap

    def listener_address(self, name: str) -> tuple[str, int]:
        """The address listener `name` is bound to (its port when it asked for port 0)."""
        try:
            return self._socks[name][1].address
        except KeyError:
            if self._state == "new" and any(l.name == name for l in self._bootstrap.listeners):
                raise RuntimeError(f"listener {name!r} is bound by start(); the proxy is not started") from None
            if name in self._warming:
                raise KeyError(f"listener {name!r} is warming (its rds route configuration has not come)") from None
            raise KeyError(f"no listener named {name!r}") from None

    @property
    def xds(self) -> "Optional[XdsResources]":
        """The discovered resources while dynamic_resources are in use (a
        fastproxy.xds.XdsResources: ``static``, ``discovered()``, ``version_info()``), else None."""
        xds = self._xds
        return xds.resources if xds is not None else None

    @property
    def admin_address(self) -> Optional[tuple[str, int]]:
        """The admin interface's bound (host, port) while it runs, else None."""
        return self._admin_server.address if self._admin_server is not None else None

    def stats(self) -> dict[str, int]:
        """Counters and gauges with Envoy's names, summed over the workers."""
        draining = self._still_draining()
        out: dict[str, int] = {
            "server.concurrency": self.concurrency,
            "listener_manager.total_listeners_active": len(self._listeners),
            # Envoy drains a listener changed only in its filter chains in place: its old
            # filter chains drain, the listener does not.
            "listener_manager.total_listeners_draining": sum(1 for d in draining if not d.in_place),
            "listener_manager.total_filter_chains_draining": sum(1 for d in draining if d.in_place),
            "cluster_manager.active_clusters": len(self._clusters),
        }
        memory = memory_stats()
        out.update({name: memory[field] for name, field in MEMORY_GAUGES.items()})
        for what, n in self._listener_counts.items():
            out[f"listener_manager.listener_{what}"] = n
        for stat, value in self._cluster_counts.items():
            out[f"cluster_manager.{stat}"] = value
        for (kind, name), block in list(self._stats.items()):
            for stat, value in block.read().items():
                out[f"{name}.{stat}"] = value
            for code, value in block.read_codes().items():     # a cluster's, once seen
                out[f"{name}.upstream_rq_{code}"] = value
            if kind == "listener":
                # Envoy's per-worker listener stats: the block's rows, as they are.
                for k in range(self.concurrency):
                    for stat, value in block.read_worker(k, _PER_WORKER_LISTENER_STATS).items():
                        out[f"{name}.worker_{k}.{stat}"] = value
        for name, c in list(self._clusters.items()):
            out[f"cluster.{name}.membership_total"] = len(c.hosts)
            out.update(_circuit_breaker_gauges(f"cluster.{name}.circuit_breakers.", c))
        xds = self._xds
        if xds is not None:     # listener_manager.lds.*, cluster_manager.cds.*
            out.update(xds.read_stats())
        # native HTTP filters' stats (http_local_rate_limit.<prefix>.*) this config uses
        names = set()
        for l in self._bootstrap.listeners:
            hcm = l.http_connection_manager
            if hcm is not None:
                names.update(native_filter_stat_blocks(
                    hcm, self._routes.get(hcm.rds.route_config_name) if hcm.rds is not None else None))
        if names:
            out.update(_core.native_filter_stats(names))
        return out

    def _still_draining(self) -> list[_Draining]:
        """The retired listener versions still draining (the others are forgotten here: the
        workers drop them with their last connection or at their drain end)."""
        with self._draining_lock:
            self._draining = [d for d in self._draining if not d.over()]
            return list(self._draining)

    def draining_listeners(self) -> list[str]:
        """The names of the listeners an old version of which is draining (changed or
        removed by update(), with connections open and drain time left), sorted."""
        return sorted({d.name for d in self._still_draining()})

    def cluster_hosts(self) -> dict[str, list[tuple[str, int, str, int, dict]]]:
        """Each cluster's current hosts (what admin /clusters prints): {cluster: [(ip, port,
        hostname, weight, {stat: value})]}, the per-host counters summed over the workers
        in Envoy's order (cx_connect_fail, cx_total, rq_error, rq_success, rq_timeout,
        rq_total, then the gauges cx_active, rq_active, rq_pending_active)."""
        return {name: c.handle.host_statuses() for name, c in list(self._clusters.items())}

    def gauge_names(self) -> set[str]:
        """Which names in :meth:`stats` are gauges (Envoy's type); the others are counters."""
        out = {"server.concurrency", "listener_manager.total_listeners_active",
               "listener_manager.total_listeners_draining", "listener_manager.total_filter_chains_draining",
               "cluster_manager.active_clusters", *MEMORY_GAUGES}
        for (kind, name), block in list(self._stats.items()):
            out.update(f"{name}.{g}" for g in block.gauges)
            if kind == "listener":
                for k in range(self.concurrency):
                    out.update(f"{name}.worker_{k}.{g}" for g in block.gauges)
        for name, c in list(self._clusters.items()):
            out.add(f"cluster.{name}.membership_total")
            out.update(_circuit_breaker_gauges(f"cluster.{name}.circuit_breakers.", c))
        xds = self._xds
        if xds is not None:
            out |= xds.gauge_names()
        return out

    def histograms(self) -> dict:
        """Histograms with Envoy's names (``http.<stat_prefix>.downstream_rq_time``,
        ``cluster.<name>.upstream_rq_time``, milliseconds), summed over the workers:
        {name: fastproxy.histogram.Histogram} with count, sum and quantile(q)."""
        from .histogram import Histogram
        out = {}
        for (kind, name), block in list(self._stats.items()):
            for stat, (buckets, total) in block.read_histograms().items():
                out[f"{name}.{stat}"] = Histogram(buckets, total)
        return out

    # ---- compiling config into the core ----

    def _stat_block(self, kind: str, name: str):
        key = (kind, name)
        block = self._stats.get(key)
        if block is None:
            block = self._stats[key] = self._engine.new_stats(kind)
        return block

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
        elif rc is not None and not entry.current(rc, self._cluster_ref):
            pending.append((entry, rc, *self._route_table(rc, entry.http_filters)))
        providers[key] = entry
        return entry

    def _set_routes(self, routes: dict) -> None:
        """Give the RDS providers whose route configuration changed their new tables: the
        next request on every connection (open ones too) routes with it."""
        pending = []
        for (name, _), entry in self._rds_providers.items():
            rc = routes.get(name)
            if rc is not None and not entry.current(rc, self._cluster_ref):
                pending.append((entry, rc, *self._route_table(rc, entry.http_filters)))
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
        # Clusters first, without touching the workers: what is in force stays until the
        # listeners are built too (a bind can still fail). A cluster keeps its handle (its
        # ClusterCfg) across updates; a changed one gets its new params and hosts by worker
        # messages at the commit below, so listeners and routes that are not rebuilt see the
        # change, and its pools keep their connections to the hosts that stay.
        clusters: dict[str, _ClusterState] = {}
        commit = []                     # (what changes in place, in order, once it all built)
        for c in b.clusters:
            old = self._clusters.get(c.name)
            if old is not None and old.model == c:
                clusters[c.name] = old          # unchanged: keep its LB state and DNS schedule
                continue
            hosts = resolve_endpoints(c)
            if old is not None:
                membership = c.type == "EDS" and dataclasses.replace(old.model, endpoints=c.endpoints) == c
                commit.append((old.handle, c, hosts, old, "cluster_updated" if membership else "cluster_modified"))
                clusters[c.name] = _ClusterState(c, old.handle, hosts)
                continue
            handle = self._absent_clusters.get(c.name)
            if handle is not None:              # a referenced name comes (back) alive
                commit.append((handle, c, hosts, None, "cluster_added"))
            else:
                handle = self._engine.make_cluster(
                    self._stat_block("cluster", f"cluster.{c.name}"), c.lb_policy, c.connect_timeout,
                    _host_set(hosts), *_cluster_params(c)[2:])
                commit.append((None, c, hosts, None, "cluster_added"))
            clusters[c.name] = _ClusterState(c, handle, hosts)
        self._installing_clusters = clusters
        try:
            self._install_listeners(b, routes, clusters, commit)
        finally:
            self._installing_clusters = None

    def _commit_clusters(self, clusters: dict[str, _ClusterState], commit: list) -> None:
        """Apply the cluster changes _install prepared (worker messages, ahead of the
        listener snapshot in each worker's queue) and count them."""
        for handle, c, hosts, old, stat in commit:
            if handle is not None:
                if old is None or _cluster_params(old.model) != _cluster_params(c):
                    handle.set_params(*_cluster_params(c))
                if old is None or hosts != old.hosts:
                    handle.set_hosts(_host_set(hosts))
                if old is None:
                    del self._absent_clusters[c.name]
                    self._stats.setdefault(("cluster", f"cluster.{c.name}"), handle.stats)
            self._cluster_counts[stat] += 1
        for name, st in self._clusters.items():
            if name not in clusters:
                st.handle.remove()
                self._absent_clusters[name] = st.handle
                self._cluster_counts["cluster_removed"] += 1
        self._clusters = clusters

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
                if route_config is None:
                    # Warming: a new listener is not bound until its routes come; a changed one
                    # goes on serving its previous version (its socket and config) meanwhile.
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
                    sock = self._engine.bind(l.address, l.port, l.backlog, self._adopt.pop(l.name, None))
                except OSError as e:
                    raise ListenerBindError(
                        f"static_resources.listeners[{i}] ({l.name}): {e.strerror or e}") from None
            socks[l.name] = (requested, sock)
            ip, port = sock.address
            hcm = l.http_connection_manager
            # What the listener's core config is built from besides its model: when these
            # are the same objects (and the model is equal), the built one is kept. An RDS
            # listener's routes come from its provider (a new table there changes nothing
            # here); inline routes from the clusters they name.
            if hcm is None:
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
            factories = tuple(l.filters)
            http = None
            if hcm is not None:
                if hcm.rds is not None:
                    provider = providers[listener_rds[l.name]].provider
                else:
                    provider = _core.make_route_provider(
                        self._engine, self._route_table(route_config, hcm.http_filters)[0])
                http = _core.make_http_cfg(
                    hcm, self._stat_block("http", f"http.{hcm.stat_prefix}"), provider, self.concurrency,
                    self._stat_block("http1", "http1"),     # Envoy's server-wide codec stats
                    self._async)
            handles.append(self._engine.make_listener(
                l.name, sock, self._cluster_ref(l.handler.cluster) if http is None else None,
                self._stat_block("listener", f"listener.{ip}_{port}"),
                self._stat_block("tcp", f"tcp.{l.effective_stat_prefix}"),
                l.idle_timeout, l.max_connect_attempts, l.max_connections, l.buffer_limit,
                factories,
                not any(_reads_bytes(f, "on_data") for f in factories),
                not any(_reads_bytes(f, "on_write") for f in factories), http,
                None if http is None else
                self._stat_block("listener_http", f"listener.{ip}_{port}.http.{hcm.stat_prefix}")))
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

    # ---- DNS: resolved here, on a control-plane thread, never on a worker ----

    def _start_dns(self) -> None:
        self._dns_thread = threading.Thread(target=self._dns_loop, name="fastproxy-dns", daemon=True)
        self._dns_thread.start()

    def _dns_loop(self) -> None:
        while not self._dns_stop.is_set():
            with self._lock:
                due = [c for c in self._clusters.values() if c.model.type == "STRICT_DNS"]
            now = time.monotonic()
            wait = 5.0
            for c in due:
                if c.next_refresh <= now:
                    hosts = resolve_endpoints(c.model)
                    c.next_refresh = now + c.model.dns_refresh_rate
                    if hosts and hosts != c.hosts:
                        with self._lock:
                            # (An update may have changed the cluster meanwhile: its
                            # endpoints are what the update resolved.)
                            if self._clusters.get(c.model.name) is c:
                                log.info("cluster %s: hosts now %s", c.model.name, hosts)
                                c.hosts = hosts
                                c.handle.set_hosts(_host_set(hosts))
                                self._cluster_counts["cluster_updated"] += 1
                wait = min(wait, max(0.05, c.next_refresh - now))
            self._dns_stop.wait(wait)
