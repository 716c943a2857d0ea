"""Proxy: the user-facing object that owns a running data plane.

The main thread (this module) validates config, compiles it into the core's immutable
structs (fastproxy.installer, a mixin of Proxy) and posts snapshots to the workers; the
workers (in fastproxy._core) never wait on it. See docs/architecture.md.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional

from . import _core
from .errors import ConfigError
from .model import Admin, Bootstrap, Cluster, DynamicResources, Listener, Node
from .http.model import ANY_CLUSTER, RouteConfiguration
from .http.native_filters import native_filter_stat_blocks
from .installer import (ConfigInstaller, _ClusterState, _Draining, _ListenerBuild, _RdsRoutes, _host_set,
                        _settle_collector, resolve_endpoints)
from .memory import SERVER_GAUGES as MEMORY_GAUGES, memory_stats
if TYPE_CHECKING:
    from .xds.resources import XdsResources

log = logging.getLogger("fastproxy")


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    """The asyncio loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# listener.<address>.worker_<k>.*: what Envoy keeps per worker for each listener.
_PER_WORKER_LISTENER_STATS = ("downstream_cx_total", "downstream_cx_active")

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
        # (Envoy moves rq_retry_open only as retries start and end: never before the first)
        out[prefix + "default." + gauge] = int(used >= limit and (key != "retries" or used > 0))
        out[prefix + "high." + gauge] = 0
    out[prefix + "default.cx_pool_open"] = 0
    out[prefix + "high.cx_pool_open"] = 0
    if c.model.track_remaining:
        for key, gauge in (("cx", "remaining_cx"), ("pending", "remaining_pending"),
                           ("rq", "remaining_rq"), ("retries", "remaining_retries")):
            used, limit = state[key]
            out[prefix + "default." + gauge] = max(0, limit - used)
    return out


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


class Proxy(ConfigInstaller):
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
                 drain_time_s: float = DEFAULT_DRAIN_TIME_S, drain_strategy: str = "gradual",
                 secrets: Iterable[Any] = ()):
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
        from .model_tls import Secret
        bootstrap = Bootstrap(_as_list(listeners, "listeners", Listener), _as_list(clusters, "clusters", Cluster),
                              admin, node if node is not None else Node(), max_downstream_connections,
                              dynamic_resources, _as_list(secrets, "secrets", Secret))
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
        # TLS secrets and the core contexts built from them (rotation: fastproxy.sds).
        from .sds import SecretStore
        self._secret_store = SecretStore(self._engine, self._lock, self._stat_block)
        self._secret_store.static = {s.name: s for s in bootstrap.secrets}
        self._socks: dict[str, tuple[tuple[str, int], Any]] = {}   # listener name -> (requested, sock)
        self._clusters: dict[str, _ClusterState] = {}                # configured ones
        # Handles of names referenced (by a listener or route table) with no cluster
        # configured: removed, or not added yet. Requests to them get 503 NC; a cluster
        # added under the name revives the same handle. Forgotten once nothing refers to
        # them (_forget_unreferenced_clusters).
        self._absent_clusters: dict[str, Any] = {}
        self._installing_clusters: Optional[dict[str, _ClusterState]] = None   # (in _install)
        # Active health checks: {cluster name: (HealthCheck model, HealthCheckerHandle)},
        # and the loop thread they run on (made with the first one).
        self._health_checkers: dict[str, tuple] = {}
        self._hc_loop = None
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
        from .upstream.outlier import OutlierTicker
        self._outlier_ticker = OutlierTicker(self._outlier_clusters)
        self._admin_server = None
        self._xds = None        # xds.discovery.Discovery while it runs
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
                   drain_strategy=drain_strategy, secrets=bootstrap.secrets)

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
            if self._outlier_clusters():
                self._outlier_ticker.start()
            from .xds.discovery import needs_discovery
            if needs_discovery(self._bootstrap):
                from .xds.discovery import Discovery
                self._xds = Discovery(self, self._bootstrap.dynamic_resources)
            if self._bootstrap.admin is not None:
                from .admin import AdminServer
                a = self._bootstrap.admin
                self._admin_server = AdminServer(self, a.address, a.port, a.access_log)
                if self._xds is not None:
                    # ADS: until the initial fetch is done (below) /ready says so, as Envoy's.
                    self._admin_server.state = "INITIALIZING"
                self._admin_server.start()
        if self._xds is not None:
            # Started outside the proxy's lock: its threads take their own lock, then the
            # proxy's (an update), never the other way round. The files are read here; then
            # the initial fetch (CDS, EDS, LDS, RDS), while the admin's /ready says
            # INITIALIZING (503), as Envoy's does until it is done.
            admin = self._admin_server
            self._xds.start()
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
        self._secret_store.stop()       # (its watcher takes the lock for a reload)
        self._outlier_ticker.stop()     # (no tick after the workers stop; it takes the lock)
        with self._lock:
            for fds in self._adopt.values():    # taken over for a listener never bound
                for fd in fds:
                    os.close(fd)
            self._adopt.clear()
            if self._state in ("stopped", "new"):
                if self._state == "new":
                    self._stop_health_checks()
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
            self._stop_health_checks()  # (before the workers: a transition posts to them)
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
               routes: Optional[Iterable[RouteConfiguration]] = None, *,
               secrets: Optional[Iterable[Any]] = None, _validated: bool = False) -> None:
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
        previous version.

        ``secrets``: the static TLS secrets (fastproxy.model_tls.Secret) that contexts name
        by SdsSecretConfig without sds_config; they replace the set given before (None:
        keep it). A changed secret reaches the contexts using it in place: new handshakes
        take the new certificate or CA, open connections keep theirs, nothing drains."""
        with self._lock:
            if self._state in ("draining", "stopped"):
                raise RuntimeError("proxy is stopped")
            from .model_tls import Secret
            new_routes = self._routes if routes is None else self._route_map(routes, not _validated)
            b = Bootstrap(_as_list(listeners, "listeners", Listener) if listeners is not None
                          else list(self._bootstrap.listeners),
                          _as_list(clusters, "clusters", Cluster) if clusters is not None
                          else list(self._bootstrap.clusters),
                          self._bootstrap.admin, self._bootstrap.node, self._bootstrap.max_downstream_connections,
                          self._bootstrap.dynamic_resources,
                          _as_list(secrets, "secrets", Secret) if secrets is not None
                          else list(self._bootstrap.secrets))
            if not _validated or secrets is not None:      # (the xDS layer validated its lists itself)
                b.validate()
            store = self._secret_store
            store.begin()
            try:
                if secrets is not None:
                    # The contexts in force that use a changed secret are updated first:
                    # those the install below builds take the new ones.
                    store.set_static(b.secrets)
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
            except BaseException:
                # All or nothing: when the install fails (a listener that does not build),
                # the secrets and the contexts they updated are put back: the certificate
                # in force goes on being served.
                store.rollback()
                raise
            store.commit()
            self._routes = new_routes
            self._bootstrap = b
            self._track(b)
            _settle_collector()
            if self._state == "running" and self._dns_thread is None and \
                    any(c.model.type == "STRICT_DNS" for c in self._clusters.values()):
                self._start_dns()
            if self._state == "running" and self._outlier_clusters():
                self._outlier_ticker.start()        # (or wakes it: intervals may have changed)

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

    def _warming_names(self, b: Bootstrap, routes: dict) -> list[str]:
        return [l.name for l in b.listeners if (self._rds_name(l) is not None and self._rds_name(l) not in routes)
                or self._listener_secrets_missing(l)]

    def warming_listeners(self) -> list[str]:
        """The listeners waiting for their route configuration (rds names one that
        update(routes=...) has not given) or for a TLS secret of a management server (SDS
        over xDS): a new one is not bound yet, a changed one serves its previous version
        meanwhile (Envoy's warming listeners)."""
        with self._lock:
            return list(self._warming)

    @property
    def secret_store(self) -> Any:
        """The TLS secrets and the contexts built from them (fastproxy.sds.SecretStore):
        fastproxy.xds gives it the secrets of SDS over xDS."""
        return self._secret_store

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
            store = self._secret_store
            full = dump.build(self._initial_bootstrap, self._created, node, list(b.listeners),
                              list(b.clusters), states["listener"], states["cluster"], states["route"],
                              dict(self._discovery_versions), dict(self._routes), endpoints, draining,
                              list(b.secrets), store.dynamic_secrets())
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
        may bind again, so discovery stops: the new process has its own streams)."""
        xds, self._xds = self._xds, None     # (before the lock, as in _stop)
        if xds is not None:
            xds.stop()
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
                raise KeyError(f"listener {name!r} is warming (its rds route configuration or an SDS "
                               "secret has not come)") from None
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
            # Envoy's membership gauges: the hosts of the set the load balancer picks from
            # (healthy, degraded and excluded by their health flags), over every priority.
            for what, n in c.handle.membership().items():
                out[f"cluster.{name}.membership_{what}"] = n
            out.update(_circuit_breaker_gauges(f"cluster.{name}.circuit_breakers.", c))
        xds = self._xds
        if xds is not None:     # listener_manager.lds.*, cluster_manager.cds.*
            out.update(xds.read_stats())
        out.update(self._secret_store.read_stats())     # sds.<secret>.*
        # native HTTP filters' stats (http_local_rate_limit.<prefix>.*) this config uses
        names = set()
        for l in self._bootstrap.listeners:
            for chain, _ in l.all_chains():
                hcm = chain.http_connection_manager
                if hcm is not None:
                    names.update(native_filter_stat_blocks(
                        hcm, self._routes.get(hcm.rds.route_config_name) if hcm.rds is not None else None))
        if names:
            out.update(_core.native_filter_stats(names))
        return out

    def draining_listeners(self) -> list[str]:
        """The names of the listeners an old version of which is draining (changed or
        removed by update(), with connections open and drain time left), sorted."""
        return sorted({d.name for d in self._still_draining()})

    def cluster_hosts(self) -> dict[str, list[tuple[str, int, str, int, dict, int, int]]]:
        """Each cluster's current hosts (what admin /clusters prints): {cluster: [(ip, port,
        hostname, weight, {stat: value}, health_flags, priority)]}, health_flags the host's
        HF_* bits (0: healthy; admin.health_flags_text), the per-host counters summed over the workers
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
            out.update(f"cluster.{name}.membership_{what}" for what in ("healthy", "degraded", "excluded", "total"))
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

    # ---- DNS: resolved here, on a control-plane thread, never on a worker ----

    def _start_dns(self) -> None:
        self._dns_thread = threading.Thread(target=self._dns_loop, name="fastproxy-dns", daemon=True)
        self._dns_thread.start()

    def _dns_loop(self) -> None:
        while not self._dns_stop.is_set():
            with self._lock:
                due = [c for c in self._clusters.values() if c.model.type == "STRICT_DNS" and not c.waiting]
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
                                self._health_check_hosts(c.model.name, c.handle)
                                self._cluster_counts["cluster_updated"] += 1
                wait = min(wait, max(0.05, c.next_refresh - now))
            self._dns_stop.wait(wait)

    # ---- outlier detection: the detectors' interval ticks (fastproxy.upstream.outlier) ----

    def _outlier_clusters(self) -> list:
        with self._lock:
            return [(c.handle, c.model.outlier_detection.interval) for c in self._clusters.values()
                    if c.model.outlier_detection is not None]

    def outlier_info(self) -> dict:
        """{cluster: (success_rate_average, success_rate_ejection_threshold, the local-origin
        two, {(ip, port): (success_rate, local_origin_success_rate, ejected)})} for the
        clusters with outlier detection (admin /clusters): percentages, -1 when the last
        interval had too few requests."""
        with self._lock:
            clusters = [(name, c.handle) for name, c in self._clusters.items() if c.model.outlier_detection is not None]
        out = {}
        for name, handle in clusters:
            info = _core.outlier_host_info(handle)
            if info is not None:
                out[name] = info
        return out
