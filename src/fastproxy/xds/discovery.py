"""Every dynamic subscription of a proxy, on one resource layer: the file-based ones
(files.py) and the gRPC ones (ads.py: the ADS stream and any per-type stream), so that what
each discovers is kept beside the other's. Proxy starts it when the bootstrap has
dynamic_resources.

Initialization follows Envoy's order: CDS first; then EDS for the clusters that are warming
(an EDS cluster warms until its assignment arrives); then LDS; then RDS for the listeners
that are warming (until their route configuration arrives). Each step waits at most its
config source's initial_fetch_timeout (wait_initial(), on the thread that starts the
proxy); when the last is done the proxy is initialized (/ready: LIVE). After that,
subscriptions simply follow what is in force: an EDS cluster or an RDS listener that comes
subscribes its name, one that goes unsubscribes it (advance(), after every update).

TLS secrets over xDS (SDS) are subscribed by name as soon as a listener or cluster in
force names one (Envoy subscribes them as it creates the listener or cluster, which then
warms): a cluster waiting for its secrets holds up the EDS step, a listener the RDS step,
each bounded by the secret's initial_fetch_timeout."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from ..model import ConfigSource, DynamicResources
from .resources import (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE, XdsResources,
                        secret_sources, subscribes)

log = logging.getLogger("fastproxy.config")

_STAGES = ("cds", "eds", "lds", "rds")


def needs_discovery(bootstrap: Any) -> bool:
    """Whether a proxy made from ``bootstrap`` subscribes to anything: LDS or CDS, or a
    static listener's RDS, or a static EDS cluster, or a static TLS context's secret over
    xDS."""
    dyn = bootstrap.dynamic_resources
    if dyn is not None and (dyn.lds is not None or dyn.cds is not None):
        return True
    return any(c.type == "EDS" and subscribes(c.eds_config, dyn) for c in bootstrap.clusters) or any(
        l.http_connection_manager is not None and l.http_connection_manager.rds is not None
        and subscribes(l.http_connection_manager.rds.config_source, dyn) for l in bootstrap.listeners) or bool(
        secret_sources(bootstrap.listeners, bootstrap.clusters, dyn))


def _grpc(source: Optional[ConfigSource]) -> bool:
    return source is not None and (source.ads or source.api is not None)


class Discovery:
    """See the module docstring."""

    def __init__(self, proxy: Any, dynamic: Optional[DynamicResources]):
        self.proxy = proxy
        self.dynamic = dynamic = dynamic if dynamic is not None else DynamicResources()
        self.resources = XdsResources(proxy, proxy.config)
        self.resources.on_change = self.advance
        self.files = None
        if any(s is not None and s.path is not None for s in (dynamic.cds, dynamic.lds)):
            from .files import FileDiscovery
            self.files = FileDiscovery(proxy, dynamic, self.resources)
        self.grpc: dict = {}            # key -> ads.GrpcTransport, created as sources are named
        self._started = False
        # The resource layer's lock: an update (which advances the subscriptions) and the
        # initial fetch's steps are one order of events, and one lock cannot be taken in two orders.
        self._lock = self.resources._lock
        self._progress = threading.Condition(self._lock)
        self._timed_out: set = set()    # stages whose initial fetch timed out
        self.stage = "cds"              # the initialization step in progress ("done": initialized)
        self._on_initialized: list = []
        # The gRPC transports the bootstrap names are made now: a missing server cluster
        # fails the proxy's start, not a later update.
        for src in (dynamic.cds, dynamic.lds):
            if _grpc(src):
                self._transport(src, CLUSTER_TYPE if src is dynamic.cds else LISTENER_TYPE)

    # ------------------------------------------------------------------ transports
    def _transport(self, source: ConfigSource, type_url: str, name: Optional[str] = None):
        """The stream ``source`` says ``type_url`` (resource ``name`` of RDS, EDS) comes on:
        the ADS one, or, for an api_config_source, one of its own: as Envoy, one per
        subscription (LDS, CDS; each route configuration, each cluster's assignment)."""
        if source.ads:
            key: tuple = ("ads",)
            api, path, own = self.dynamic.ads, "dynamic_resources.ads_config", None
        else:
            api = source.api
            key = ("api", type_url, api.cluster_name, api.delta, name)
            path, own = "api_config_source.grpc_services[0].envoy_grpc.cluster_name", type_url
        t = self.grpc.get(key)
        if t is None:
            from .ads import GrpcTransport     # (grpcio and xds-protos: only when needed)
            t = self.grpc[key] = GrpcTransport(self.proxy, self.resources, api, path, own)
            if self._started:
                t.start()
        return t

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        try:
            if self.files is not None:
                self.files.start()      # (reads the files now: CDS, then LDS)
            with self._lock:
                self._started = True
                self.advance()
                for t in list(self.grpc.values()):
                    t.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for t in list(self.grpc.values()):
            t.stop()
        if self.files is not None:
            self.files.stop()

    def when_initialized(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once initialization is done (now, if it is)."""
        with self._lock:
            if self.stage != "done":
                self._on_initialized.append(callback)
                return
        callback()

    def wait_initial(self) -> None:
        """Step through the initialization, each step waiting at most its config source's
        initial_fetch_timeout (Envoy's default 15 s; 0: do not wait for it here, as
        start() would otherwise never return). Called without the proxy's lock held:
        applying a response takes it."""
        with self._lock:
            while self.stage != "done":
                stage = self.stage
                timeout = self._stage_timeout(stage)
                if timeout <= 0:
                    return
                end = time.monotonic() + timeout
                self._progress.wait_for(lambda: self.stage != stage, timeout=max(0.0, end - time.monotonic()))
                if self.stage == stage:
                    log.warning("xds: the initial fetch of %s did not finish in %gs; going on", stage.upper(), timeout)
                    self._timed_out.add(stage)
                    if stage == "eds":
                        self.resources.fetch_timed_out(self._warming_assignments())
                        self.resources.secrets_fetch_timed_out(self._waiting_secrets("eds"))
                    self.advance()

    def _stage_timeout(self, stage: str) -> float:
        if stage in ("cds", "lds"):
            src = self.dynamic.cds if stage == "cds" else self.dynamic.lds
            return src.initial_fetch_timeout if _grpc(src) else 0.0
        wanted = self.resources.wanted()
        sources = list(wanted[ENDPOINT_TYPE if stage == "eds" else ROUTE_TYPE].values())
        sources += [wanted[SECRET_TYPE][n] for n in self._waiting_secrets(stage) if n in wanted[SECRET_TYPE]]
        return max((s.initial_fetch_timeout for s in sources if s is not None), default=0.0)

    def _waiting_secrets(self, stage: str) -> set:
        """The secrets (SDS over xDS) the clusters ("eds": they warm in that step) or the
        listeners ("rds") in force are waiting for."""
        store = self.proxy.secret_store
        if stage == "eds":
            contexts = [c.tls for c in self.resources.clusters_in_force()]
        else:
            from ..model_tls import listener_contexts
            contexts = [ctx for l in self.resources.listeners_in_force() for ctx, _ in listener_contexts(l, "")]
        return set(store.missing(contexts))

    def _warming_assignments(self) -> set:
        names = set(self.resources.warming_clusters())
        return {c.eds_name for c in self.resources.clusters_in_force() if c.name in names}

    # ------------------------------------------------------------------ subscriptions
    def advance(self) -> None:
        """Subscriptions follow what is in force, and initialization goes on as far as it
        can. Called after every accepted update (the resource layer's lock held)."""
        with self._lock:
            if not self._started:
                return
            dyn = self.dynamic
            if _grpc(dyn.cds):
                self._start_type(self._transport(dyn.cds, CLUSTER_TYPE), CLUSTER_TYPE)
            wanted = self.resources.wanted()
            self._follow(ENDPOINT_TYPE, wanted[ENDPOINT_TYPE])
            # (SDS files are the secret store's own: only the streams are followed here.)
            self._follow(SECRET_TYPE, {n: s for n, s in wanted[SECRET_TYPE].items() if _grpc(s)})
            stage = self.stage
            if stage == "cds" and (not _grpc(dyn.cds) or "cds" in self._timed_out
                                   or self._transport(dyn.cds, CLUSTER_TYPE).responded(CLUSTER_TYPE)):
                stage = "eds"
            if stage == "eds" and ("eds" in self._timed_out or not self.resources.warming_clusters()):
                stage = "lds"
            if stage in ("lds", "rds", "done") and _grpc(dyn.lds):
                self._start_type(self._transport(dyn.lds, LISTENER_TYPE), LISTENER_TYPE)
            if stage == "lds" and (not _grpc(dyn.lds) or "lds" in self._timed_out
                                   or self._transport(dyn.lds, LISTENER_TYPE).responded(LISTENER_TYPE)):
                stage = "rds"
            if stage in ("rds", "done"):
                self._follow(ROUTE_TYPE, wanted[ROUTE_TYPE])
            if stage == "rds" and ("rds" in self._timed_out or not self.resources.warming_listeners()):
                stage = "done"
            if stage != self.stage:
                log.info("xds: initialization: %s", "done" if stage == "done" else f"{stage.upper()} next")
                self.stage = stage
                self._progress.notify_all()
                if stage == "done":
                    callbacks, self._on_initialized = self._on_initialized, []
                    for cb in callbacks:
                        cb()

    def _start_type(self, transport: Any, type_url: str) -> None:
        if not transport.subscribed(type_url):
            # Envoy counts a subscription's start as an update_attempt.
            self.resources.stats[type_url].count("update_attempt")
            transport.subscribe(type_url)

    def _follow(self, type_url: str, wanted: dict) -> None:
        """Subscribe each transport to the names of ``type_url`` it serves now (a name no
        longer named is unsubscribed)."""
        by: dict = {}
        files: dict = {}
        for name, source in wanted.items():
            if _grpc(source):
                by.setdefault(id(self._transport(source, type_url, name)), set()).add(name)
            elif source is not None and source.path is not None:
                files.setdefault(source.path, source)
        if type_url != SECRET_TYPE and (files or self.files is not None):
            if self.files is None:
                from .files import FileDiscovery
                self.files = FileDiscovery(self.proxy, self.dynamic, self.resources)
                self.files.start()
            self.files.keep(type_url, set(files))
            for source in files.values():
                self.files.add(type_url, source)
        for key, t in list(self.grpc.items()):
            names = by.get(id(t), set())
            if not names and key[0] == "api" and key[1] == type_url:
                # A per-subscription stream no longer used: closed, as Envoy ends it with
                # its subscription (not joined: its reader may wait for this lock).
                del self.grpc[key]
                t.stop(wait=False)
                continue
            if names or t.subscribed(type_url):
                new = names - t.names(type_url)
                if new:
                    self.resources.count_attempt(type_url, new)     # (a subscription's start)
                t.subscribe(type_url, names)

    # ------------------------------------------------------------------ stats
    def read_stats(self) -> dict:
        out: dict = self.resources.read_stats()
        for url, src in ((CLUSTER_TYPE, self.dynamic.cds), (LISTENER_TYPE, self.dynamic.lds)):
            if src is not None:         # (only the subscribed types' stats exist, as in Envoy)
                out.update(self.resources.stats[url].read())
        if self.grpc:
            ads = self.grpc.get(("ads",))
            clients = [t.client for t in self.grpc.values()]
            main = ads.client if ads is not None else clients[0]
            out["control_plane.connected_state"] = 1 if main.connected.is_set() else 0
            out["control_plane.pending_requests"] = sum(c.pending_requests() for c in clients)
        return out

    def gauge_names(self) -> set:
        out = self.resources.gauge_names()
        for url, src in ((CLUSTER_TYPE, self.dynamic.cds), (LISTENER_TYPE, self.dynamic.lds)):
            if src is not None:
                out |= self.resources.stats[url].gauge_names()
        if self.grpc:
            out |= {"control_plane.connected_state", "control_plane.pending_requests"}
        return out


__all__ = ["Discovery", "needs_discovery"]
