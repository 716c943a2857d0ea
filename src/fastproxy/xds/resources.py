"""The resource layer every xDS transport shares.

A transport (a file today, a gRPC stream later) hands over a type URL, a version and the
complete list of that type's resources (state of the world). They are decoded with the
bootstrap loader's own functions (config/envoy.py), so a listener from LDS is checked
exactly as a static one and its errors carry the same kind of path, rooted at
``resources[i]``. The new full set (static resources, then every discovered one; a resource
absent from the response is removed) is validated as a whole and applied with
Proxy.update(), the proxy's hot-update path. A rejected update changes nothing.

Route configurations (RDS) and cluster load assignments (EDS) are resources *named* by
others: an HTTP connection manager's ``rds.route_config_name``, an EDS cluster's
``eds_cluster_config.service_name``. They are subscribed by name as listeners and clusters
come and go (``wanted()``), and, as in Envoy, a response updates the named resources it
holds and leaves the others as they are (an RDS or EDS response is not "the whole set":
a name missing from it is not removed). Until its assignment arrives an EDS cluster is
warming (no endpoints); until its route configuration arrives a listener is warming.

TLS secrets (SDS over xDS) are named resources too: an SdsSecretConfig whose sds_config is
``ads`` or an api_config_source, in a listener's or cluster's TLS context. A listener or
cluster warms until its secrets come (fastproxy.sds); a new version rotates the contexts
using it in place; a secret the server removes (or leaves out) stays, as in Envoy.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Optional

from ..config.envoy import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_CONFIG_TYPE, _cluster, _listener, grpc_source_errors, load_assignment
from ..config.proto import Message, checked, collecting, raise_collected, report
from ..config.tls import SECRET_TYPE, secret as decode_secret
from ..errors import ConfigError, ConfigErrors, ListenerBindError
from ..model import Bootstrap
from ..model_tls import listener_contexts, over_xds
from ..validation import describe
from .xxhash64 import xxh64

log = logging.getLogger("fastproxy.config")   # Envoy logs xDS updates under [config]


ROUTE_TYPE = ROUTE_CONFIG_TYPE

# type URL -> (short name, stat prefix Envoy uses for the subscription, Bootstrap field).
# RDS and EDS subscriptions have stats per resource (http.<prefix>.rds.<name>.*,
# cluster.<name>.*): see XdsResources.read_stats.
TYPES = {
    LISTENER_TYPE: ("lds", "listener_manager.lds", "listeners"),
    CLUSTER_TYPE: ("cds", "cluster_manager.cds", "clusters"),
    ROUTE_TYPE: ("rds", "", "routes"),
    ENDPOINT_TYPE: ("eds", "", "endpoints"),
    SECRET_TYPE: ("sds", "", "secrets"),       # (stats per secret: sds.<name>.*, fastproxy.sds)
}
# Envoy's order of the initial fetch (and of the requests on a new stream).
ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)

# envoy.service.discovery.v3.DiscoveryResponse: the fields a file (or a stream) carries.
_RESPONSE_FIELDS = ("version_info", "resources", "type_url", "nonce", "canary", "control_plane")


def parse_discovery_response(data: Any, type_url: str) -> tuple:
    """A DiscoveryResponse as plain data -> (version_info, [resource dicts]). Its type_url,
    when given, must be ``type_url``. Raises ConfigError with the field's path."""
    msg = Message(data if data is not None else {}, "", _RESPONSE_FIELDS)
    given = msg.string("type_url")
    if given and given != type_url:
        raise ConfigError(msg.at("type_url"), f"expected {type_url!r}, got {given!r}")
    msg.string("nonce")
    msg.mapping("control_plane")
    canary = msg.raw("canary")
    if canary is not None and not isinstance(canary, bool):
        raise ConfigError(msg.at("canary"), f"expected a bool, got {describe(canary)}")
    version = msg.string("version_info", default="")
    return version, [item for item, _ in msg.repeated("resources")]


def check_node(node: Any, dynamic: Any, listeners: Any = (), clusters: Any = ()) -> None:
    """Envoy refuses to subscribe to anything without the node's id and cluster (a
    management server tells its clients apart by them), files included; so does fastproxy.
    Checked when the proxy is built, after the command line's --service-node and
    --service-cluster have had their say. ``listeners`` and ``clusters`` (static) may
    subscribe too: RDS, EDS."""
    if dynamic is not None and dynamic.lds is not None:
        url = LISTENER_TYPE
    elif dynamic is not None and dynamic.cds is not None:
        url = CLUSTER_TYPE
    elif any(c.type == "EDS" and subscribes(c.eds_config, dynamic) for c in clusters):
        url = ENDPOINT_TYPE
    elif any(_rds(l) is not None and subscribes(_rds(l).config_source, dynamic) for l in listeners):
        url = ROUTE_TYPE
    elif secret_sources(listeners, clusters, dynamic):
        url = SECRET_TYPE
    else:
        return
    if not node.id or not node.cluster:
        raise ConfigError("node", f"{url}: node 'id' and 'cluster' are required. Set it either in 'node' "
                                  "config or via --service-node and --service-cluster options.")


def subscribes(source: Any, dynamic: Any) -> bool:
    """Whether a config source leads anywhere: a file, a per-type stream, or ads with the
    bootstrap's ads_config (an RDS or EDS source of ads without one subscribes nothing:
    Proxy.update gives those routes or endpoints)."""
    return source is not None and (source.path is not None or source.api is not None
                                   or (source.ads and dynamic is not None and dynamic.ads is not None))


def secret_sources(listeners: Any, clusters: Any, dynamic: Any) -> dict:
    """{secret name: its ConfigSource} of the SDS-over-xDS secrets the TLS contexts of
    ``listeners`` and ``clusters`` name (the first source given for a name wins)."""
    contexts = [c.tls for c in clusters if getattr(c, "tls", None) is not None]
    contexts += [ctx for l in listeners for ctx, _ in listener_contexts(l, "")]
    out: dict = {}
    for ctx in contexts:
        for sds in ctx.secret_names():
            if over_xds(sds) and subscribes(sds.sds_config, dynamic):
                out.setdefault(sds.name, sds.sds_config)
    return out


class SubscriptionStats:
    """Envoy's per-subscription stats (<prefix>.update_attempt, update_success,
    update_rejected, update_failure counters; version, the XXH64 of the last accepted
    version_info, as a gauge). The transport counts attempts and failures (it knows what
    they are); XdsResources.apply counts successes and rejections."""

    COUNTERS = ("update_attempt", "update_success", "update_rejected", "update_failure")
    # RDS's (Envoy's RdsRouteConfigSubscription: config_reload when the table changed) and
    # EDS's (a response without the cluster's assignment: update_empty).
    RDS_COUNTERS = COUNTERS + ("update_empty", "config_reload")
    EDS_COUNTERS = COUNTERS + ("update_empty", "update_no_rebuild")

    def __init__(self, prefix: str, counters: tuple = COUNTERS):
        self.prefix = prefix
        self.counts = dict.fromkeys(counters, 0)
        self.version_info = ""
        self.version = 0

    def count(self, name: str) -> None:
        self.counts[name] += 1

    def accepted(self, version_info: str) -> None:
        self.counts["update_success"] += 1
        self.version_info = version_info
        self.version = xxh64(version_info.encode())

    def read(self) -> dict:
        out = {f"{self.prefix}.{k}": v for k, v in self.counts.items()}
        out[f"{self.prefix}.version"] = self.version
        return out

    def gauge_names(self) -> set:
        return {f"{self.prefix}.version"}


def _body(item: Any, type_url: str, path: str) -> dict:
    """A received resource (an Any as a mapping) of ``type_url``, without its "@type"."""
    if not isinstance(item, dict):
        raise ConfigError(path, f"expected a mapping (google.protobuf.Any), got {describe(item)}")
    given = item.get("@type")
    if given != type_url:
        raise ConfigError(path + ".@type", f"expected {type_url!r}, got {given!r}")
    return {k: v for k, v in item.items() if k != "@type"}


def _bind_refusal(error: ListenerBindError, listeners: list) -> ConfigError:
    """As Envoy: a listener that cannot bind fails the whole update, which is refused with
    the listener's address as its path when the update brought it (``listeners``)."""
    failed = next((i for i, l in enumerate(listeners) if l.name == error.listener), None)
    detail = str(error).split(": ", 1)[-1]
    return ConfigError("resources" if failed is None else f"resources[{failed}].address", f"cannot bind: {detail}")


class XdsResources:
    """The discovered resources of one Proxy, beside its static ones.

    ``static`` is the configuration the proxy started with (its listeners and clusters stay
    whatever is discovered; a discovered resource may not take a static one's name).
    ``on_change`` (set by the discovery that owns this layer) is called, with the lock
    held, after every accepted update: subscriptions follow what is in force."""

    def __init__(self, proxy: Any, static: Bootstrap):
        self.proxy = proxy
        self.static = {"listeners": list(static.listeners), "clusters": list(static.clusters)}
        self.dynamic: dict = {"listeners": [], "clusters": []}       # in the order last received
        # name -> (version_info, last_updated: time.time()) of the response that last changed
        # each discovered resource (what Envoy's config dump shows per resource).
        self.updated: dict = {"listeners": {}, "clusters": {}, "routes": {}, "endpoints": {}}
        self.stats = {url: SubscriptionStats(prefix) for url, (_, prefix, _) in TYPES.items() if prefix}
        # RDS: route configuration name -> model.RouteConfiguration; EDS: assignment name ->
        # [model.Endpoint]. Kept while subscribed; a name no longer used is forgotten.
        self.routes: dict = {}
        self.assignments: dict = {}
        # Per resource subscription stats: RDS by route configuration name, EDS by cluster.
        self.route_stats: dict = {}
        self.endpoint_stats: dict = {}
        # EDS clusters whose initial fetch timed out: warm (with no endpoints) from then on.
        self.timed_out: set = set()
        # SDS: secrets whose initial fetch timed out (a cluster waiting only for those is
        # no longer counted warming; it has no hosts until they come).
        self.secrets_timed_out: set = set()
        self._sds_sources: dict = {}    # secret name -> the source it was subscribed from
        self._rds_sources: dict = {}    # route configuration name -> the source it was subscribed from
        self.on_change = None
        # One update at a time, whichever transport it comes from.
        self._lock = threading.RLock()

    def apply(self, type_url: str, version_info: str, resources: list, removed: Any = ()) -> None:
        """LDS, CDS: install ``resources`` as the complete set of ``type_url``'s discovered
        resources (state of the world). RDS, EDS: update the named resources ``resources``
        holds (``removed``: delta's removed_resources, which Envoy ignores for both). Raises
        ConfigError (the update is rejected, counted, and nothing changes) naming the
        offending field, e.g. ``resources[2].filter_chains[0].filters[0].typed_config.cluster``."""
        if type_url not in TYPES:
            raise ConfigError("type_url", f"unsupported resource type {type_url!r} (fastproxy "
                                          f"discovers {', '.join(TYPES)})")
        if type_url == SECRET_TYPE:
            return self._apply_secrets(version_info, resources, list(removed))
        if type_url in (ROUTE_TYPE, ENDPOINT_TYPE):
            return self._apply_named(type_url, version_info, resources, list(removed))
        kind, _, field = TYPES[type_url]
        stats = self.stats[type_url]
        with self._lock:
            previous = list(self.dynamic[field])
            try:
                items = self._decode(type_url, resources)
                self._install(field, items)
            except ConfigError as e:
                # Logged before counted: whoever sees the count can read the reason.
                log.warning("%s update rejected: version %r, %d resource(s): %s", kind, version_info,
                            len(resources) if isinstance(resources, list) else 0, e)
                stats.count("update_rejected")
                raise
            now = time.time()
            before = self.updated[field]
            previous_by_name = {r.name: r for r in previous}
            self.updated[field] = {r.name: before[r.name] if r.name in before and previous_by_name.get(r.name) == r
                                   else (version_info, now) for r in items}
            log.info("%s update accepted: version %r, %d resource(s)", kind, version_info, len(items))
            stats.accepted(version_info)
            self._note_dump(field, version_info)
            self._changed()

    def _changed(self) -> None:
        self._forget_unused()
        if self.on_change is not None:
            self.on_change()

    def _note_dump(self, field: str, version_info: str) -> None:
        """Tell the proxy's config dump which resources are discovered and at which version
        (Proxy.note_discovered: dynamic_active_listeners / _clusters and, for a discovered
        listener's inline routes, dynamic_route_configs)."""
        note = getattr(self.proxy, "note_discovered", None)
        if note is None:
            return
        kind = "listener" if field == "listeners" else "cluster"
        warming = set(self.warming_clusters()) if kind == "cluster" else set(self.warming_listeners())
        for name, (version, _) in self.updated[field].items():
            try:
                note(kind, name, version, "warming" if name in warming else "active")
                if kind == "listener":
                    note("route", name, version)
            except (KeyError, ValueError):
                pass            # a TCP listener has no route configuration
        self.proxy.note_discovery_version(field, version_info)

    # -- what is subscribed, what is warming --------------------------------------------------

    def clusters_in_force(self) -> list:
        return self.static["clusters"] + self.dynamic["clusters"]

    def listeners_in_force(self) -> list:
        return self.static["listeners"] + self.dynamic["listeners"]

    def wanted(self) -> dict:
        """{ENDPOINT_TYPE: {assignment name: its ConfigSource}, ROUTE_TYPE: {route
        configuration name: its ConfigSource}}: what the clusters and listeners in force name
        (the first source given for a name wins, as Envoy shares one subscription per name)."""
        with self._lock:
            dyn = self.proxy.config.dynamic_resources
            eds: dict = {}
            for c in self.clusters_in_force():
                if c.type == "EDS" and subscribes(c.eds_config, dyn):
                    eds.setdefault(c.eds_name, c.eds_config)
            rds: dict = {}
            for l in self.listeners_in_force():
                r = _rds(l)
                if r is not None and subscribes(r.config_source, dyn):
                    rds.setdefault(r.route_config_name, r.config_source)
            # As Envoy, a route configuration stays subscribed while a listener version still
            # serving takes its routes from it (a changed listener's old version while the
            # new one warms), from the source it was subscribed from.
            in_use = getattr(self.proxy, "route_configs_in_use", None)
            for name in (in_use() if in_use is not None else ()):
                if name not in rds and name in self._rds_sources:
                    rds[name] = self._rds_sources[name]
            self._rds_sources = dict(rds)
            sds = secret_sources(self.listeners_in_force(), self.clusters_in_force(), dyn)
            store = self._store()
            # As for routes: a listener version still serving keeps its secrets subscribed.
            for ref in (store.xds_in_use() if store is not None else ()):
                if ref.name not in sds and ref.name in self._sds_sources:
                    sds[ref.name] = self._sds_sources[ref.name]
            self._sds_sources = dict(sds)
            return {ENDPOINT_TYPE: eds, ROUTE_TYPE: rds, SECRET_TYPE: sds}

    def _store(self) -> Any:
        """The proxy's secrets (fastproxy.sds.SecretStore), if it keeps any."""
        return getattr(self.proxy, "secret_store", None)

    def warming_clusters(self) -> list:
        """EDS clusters whose assignment has not arrived (nor timed out), and clusters whose
        TLS secrets (SDS over xDS) have not (nor timed out)."""
        store = self._store()
        with self._lock:
            return [c.name for c in self.clusters_in_force() if (
                c.type == "EDS" and c.eds_name not in self.assignments and c.eds_name not in self.timed_out)
                or (store is not None and set(store.missing([c.tls])) - self.secrets_timed_out)]

    def warming_listeners(self) -> list:
        """Listeners whose route configuration (RDS) has not arrived: the proxy's own count
        when it keeps one (Proxy.warming_listeners), else the same rule computed here."""
        own = getattr(self.proxy, "warming_listeners", None)
        if own is not None:
            return list(own())
        with self._lock:
            return [l.name for l in self.listeners_in_force()
                    if _rds(l) is not None and _rds(l).route_config_name not in self.routes]

    def fetch_timed_out(self, names: Any) -> None:
        """The initial fetch of these assignments timed out: their clusters are warm (with
        no endpoints), as Envoy's initial_fetch_timeout makes them."""
        with self._lock:
            self.timed_out |= set(names)
            self._changed()

    def _forget_unused(self) -> None:
        """A route configuration or assignment nobody names any more is dropped (Envoy
        unsubscribes it and forgets it), with its stats."""
        wanted = self.wanted()
        for held, key in ((self.routes, ROUTE_TYPE), (self.assignments, ENDPOINT_TYPE)):
            for name in [n for n in held if n not in wanted[key]]:
                del held[name]
                self.updated[TYPES[key][2]].pop(name, None)
        clusters = {c.name for c in self.clusters_in_force() if c.type == "EDS"}
        for name in [n for n in self.endpoint_stats if n not in clusters]:
            del self.endpoint_stats[name]
        for name in [n for n in self.route_stats if n not in wanted[ROUTE_TYPE]]:
            del self.route_stats[name]
        self.timed_out &= set(wanted[ENDPOINT_TYPE])
        self.secrets_timed_out &= set(wanted[SECRET_TYPE])
        store = self._store()
        if store is not None:
            store.forget_xds(wanted[SECRET_TYPE])

    # -- RDS and EDS ----------------------------------------------------------------------

    def eds_stats(self, cluster: str) -> SubscriptionStats:
        st = self.endpoint_stats.get(cluster)
        if st is None:
            st = self.endpoint_stats[cluster] = SubscriptionStats(f"cluster.{cluster}", SubscriptionStats.EDS_COUNTERS)
        return st

    def rds_stats(self, name: str) -> SubscriptionStats:
        st = self.route_stats.get(name)
        if st is None:
            st = self.route_stats[name] = SubscriptionStats(name, SubscriptionStats.RDS_COUNTERS)
        return st

    def _subscribers(self, type_url: str, names: Any) -> list:
        """The stats of the subscriptions ``names`` feed: EDS, each cluster taking one of
        those assignments; RDS, each route configuration."""
        names = set(names)
        if type_url == ROUTE_TYPE:
            return [self.rds_stats(n) for n in sorted(names)]
        return [self.eds_stats(c.name) for c in self.clusters_in_force() if c.type == "EDS" and c.eds_name in names]

    def count_attempt(self, type_url: str, names: Any = None) -> None:
        """A response (or a failed stream) of ``type_url`` concerning ``names`` (None: every
        subscribed one): update_attempt for each subscription it feeds."""
        with self._lock:
            if type_url in self.stats:
                self.stats[type_url].count("update_attempt")
                return
            if names is None:
                names = self.wanted()[type_url]
            if type_url == SECRET_TYPE:
                store = self._store()
                for name in (names if store is not None else ()):
                    store.count(name, "update_attempt")
                return
            for st in self._subscribers(type_url, names):
                st.count("update_attempt")

    def count_named(self, type_url: str, counter: str, names: Any) -> None:
        """``counter`` for each subscription ``names`` (RDS, EDS or SDS) feed."""
        with self._lock:
            if type_url == SECRET_TYPE:
                store = self._store()
                for name in (names if store is not None else ()):
                    store.count(name, counter)
                return
            for st in self._subscribers(type_url, names):
                st.count(counter)

    def _apply_named(self, type_url: str, version_info: str, resources: list, removed: list) -> None:
        """RDS, EDS: each named resource on its own, as Envoy's per-resource watches take
        them: a good one is applied even when another of the same response is refused (the
        response is then NACKed with the refused ones' errors)."""
        kind, _, field = TYPES[type_url]
        with self._lock:
            wanted = self.wanted()[type_url]
            if not isinstance(resources, list):
                error = ConfigError("resources", f"expected a list, got {describe(resources)}")
                self._rejected(type_url, version_info, wanted, error, 0)
                raise error
            decoded, refused = [], {}
            with collecting() as errors:
                for i, item in enumerate(resources):
                    before = len(errors)
                    # (The loader reports some errors to this collection and goes on: a
                    # resource with any is refused.)
                    one = checked(self._decode_named, type_url, item, f"resources[{i}]")
                    if len(errors) > before:
                        refused[_resource_name(item)] = errors[before:]
                    elif one is not None:
                        decoded.append(one)
            # A name nobody subscribed to is not taken (as Envoy's multiplexer drops it).
            ignored = [n for n, _ in decoded if n not in wanted]
            if ignored:
                log.info("%s update: ignoring %s, not subscribed", kind, ", ".join(map(repr, ignored)))
            got = {n: v for n, v in decoded if n in wanted}
            # Envoy tells a subscription of a response that holds its resource (or removes
            # it); a lone subscription, of every response of its type (then update_empty).
            touched = set(got) | {n for n in removed if n in wanted} | (set(refused) & set(wanted))
            empty = [n for n in removed if n in wanted]      # subscriptions told "nothing for you"
            if not touched and len(wanted) == 1 and not refused:
                touched = set(wanted)
                empty = list(wanted)
            for st in self._subscribers(type_url, touched if not (refused and not touched) else wanted):
                st.count("update_attempt")
            if removed:
                # Envoy 1.40 ignores a delta removal of a route configuration or an assignment
                # (the resource stays as it was); so does fastproxy.
                log.warning("%s update: ignoring the removal of %s (as Envoy does)", kind,
                            ", ".join(map(repr, removed)))
            if got:
                held = self.routes if type_url == ROUTE_TYPE else self.assignments
                changed = {n: v for n, v in got.items() if held.get(n) != v}
                if changed:
                    try:
                        self._install_named(type_url, changed)
                    except ConfigError as e:
                        self._rejected(type_url, version_info, set(got) | set(refused) or wanted, e, len(resources))
                        raise
                now = time.time()
                for n in changed:
                    self.updated[field][n] = (version_info, now)
                rebuilt = {f"cluster.{c.name}" for c in self.clusters_in_force()
                           if c.type == "EDS" and c.eds_name in changed}
                for st in self._subscribers(type_url, got):
                    st.accepted(version_info)
                    if type_url == ROUTE_TYPE and st.prefix in changed:
                        st.count("config_reload")
                    elif type_url == ENDPOINT_TYPE and st.prefix not in rebuilt:
                        st.count("update_no_rebuild")
                log.info("%s update accepted: version %r, %d resource(s) (%s)", kind, version_info, len(got),
                         ", ".join(sorted(got)))
                self._noted(type_url)
            elif not refused:
                # Envoy: a response without this subscription's resource is update_empty (and
                # ends an EDS cluster's warming, with no endpoints).
                for st in self._subscribers(type_url, empty):
                    st.count("update_empty")
                if type_url == ENDPOINT_TYPE:
                    self.timed_out |= {n for n in removed if n in wanted}
            if got or not refused:
                self._changed()
            if refused:
                flat = [e for errs in refused.values() for e in errs]
                error = flat[0] if len(flat) == 1 else ConfigErrors(flat)
                self._rejected(type_url, version_info, set(refused) & set(wanted) or wanted, error, len(resources))
                raise error

    # -- SDS -------------------------------------------------------------------------------

    def secrets_fetch_timed_out(self, names: Any) -> None:
        """The initial fetch of these secrets timed out: initialization goes on without
        them (what names them stays without them: a listener unbound, a cluster without
        hosts, until they come)."""
        with self._lock:
            self.secrets_timed_out |= set(names)
            self._changed()

    def _missing_secrets(self) -> set:
        store = self._store()
        if store is None:
            return set()
        contexts = [c.tls for c in self.clusters_in_force()]
        contexts += [ctx for l in self.listeners_in_force() for ctx, _ in listener_contexts(l, "")]
        return set(store.missing(contexts))

    def _apply_secrets(self, version_info: str, resources: list, removed: list) -> None:
        """SDS: each named secret on its own, as Envoy's per-secret subscriptions take them.
        A new one rotates the contexts that use it (fastproxy.sds) and, when something
        warmed for it, builds that (a listener bound, a cluster given its hosts). A secret
        that does not compile (a key that does not match its certificate) is refused with
        the reason and the old one stays; a removal is ignored (the last good one stays,
        as Envoy keeps it while a listener or cluster names it)."""
        store = self._store()
        with self._lock:
            wanted = self.wanted()[SECRET_TYPE]
            if not isinstance(resources, list):
                raise ConfigError("resources", f"expected a list, got {describe(resources)}")
            decoded, refused, index = [], {}, {}
            with collecting() as errors:
                for i, item in enumerate(resources):
                    before = len(errors)
                    one = checked(lambda: decode_secret(_body(item, SECRET_TYPE, f"resources[{i}]"),
                                                        f"resources[{i}]"))
                    if len(errors) > before:
                        refused[_resource_name(item)] = errors[before:]
                    elif one is not None:
                        decoded.append(one)
                        index[one.name] = i
            ignored = [x.name for x in decoded if x.name not in wanted]
            if ignored:
                log.info("sds update: ignoring %s, not subscribed", ", ".join(map(repr, ignored)))
            got = {x.name: x for x in decoded if x.name in wanted}
            for name in sorted(set(got) | (set(refused) & set(wanted))):
                store.count(name, "update_attempt")
            if removed:
                log.warning("sds update: ignoring the removal of %s (the last good secret stays, as in Envoy)",
                            ", ".join(map(repr, removed)))
            # A secret naming files is applied even when it is the same model: the files
            # may hold new data (the store compiles again and updates only what changed).
            changed = {n: x for n, x in got.items() if store.xds.get(n, (None,))[0] != x or x.watched_paths()}
            if changed:
                waited = self._missing_secrets() & set(changed)

                def reinstall() -> None:
                    if not waited:
                        return              # rotated in place: nothing to build
                    try:
                        self.proxy.update(listeners=self.listeners_in_force(),
                                          clusters=self._with_endpoints(self.clusters_in_force()), _validated=True)
                    except ListenerBindError as e:
                        raise _bind_refusal(e, []) from None
                try:
                    store.set_xds(changed, version_info, reinstall)
                except ConfigError as e:
                    names = sorted(changed)
                    error = ConfigError(f"resources[{index[names[0]]}]" if len(names) == 1 else "resources",
                                        f"secret {', '.join(map(repr, names))}: {e}")
                    log.warning("sds update rejected: version %r: %s", version_info, error)
                    for name in names:
                        store.count(name, "update_rejected")
                    raise error from None
                if waited:
                    # What warmed for them is active now (the config dump's states).
                    for field, url in (("clusters", CLUSTER_TYPE), ("listeners", LISTENER_TYPE)):
                        if self.updated[field]:
                            self._note_dump(field, self.version_info(url))
            for name in got:
                store.count(name, "update_success")
            if got:
                log.info("sds update accepted: version %r, %d secret(s) (%s)", version_info, len(got),
                         ", ".join(sorted(got)))
            self._changed()
            if refused:
                flat = [e for errs in refused.values() for e in errs]
                log.warning("sds update rejected: version %r: %s", version_info, "; ".join(map(str, flat)))
                for name in set(refused) & set(wanted):
                    store.count(name, "update_rejected")
                raise flat[0] if len(flat) == 1 else ConfigErrors(flat)

    def _rejected(self, type_url: str, version_info: str, names: Any, error: ConfigError, n: int) -> None:
        # Logged before counted: whoever sees the count can read the reason.
        log.warning("%s update rejected: version %r, %d resource(s): %s", TYPES[type_url][0], version_info, n, error)
        for st in self._subscribers(type_url, names):
            st.count("update_rejected")

    def _noted(self, type_url: str) -> None:
        """The config dump's view after an RDS or EDS update."""
        if type_url == ENDPOINT_TYPE:
            self._note_dump("clusters", self.version_info(CLUSTER_TYPE))
            return
        # /config_dump's dynamic_route_configs: each by its name, at its version.
        note = getattr(self.proxy, "note_discovered", None)
        for n, (version, _) in self.updated["routes"].items():
            if note is not None:
                try:
                    note("route", n, version)
                except KeyError:
                    pass
        self._note_dump("listeners", self.version_info(LISTENER_TYPE))

    def _decode_named(self, type_url: str, item: Any, path: str) -> tuple:
        """(name, decoded) of one RDS or EDS resource."""
        body = _body(item, type_url, path)
        if type_url == ENDPOINT_TYPE:
            name = body.get("cluster_name")
            return name, load_assignment(body, path, "EDS")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(path + ".name", "a discovered resource needs a non-empty name")
        # Per-route filter configs are read with the filters of a connection manager naming
        # the table (a filter config without such a filter is refused with its path).
        from ..config.http import route_configuration
        filters = next((l.http_connection_manager.http_filters for l in self.listeners_in_force()
                        if _rds(l) is not None and _rds(l).route_config_name == name), ())
        return name, route_configuration(body, path, list(filters))

    def _install_named(self, type_url: str, changed: dict) -> None:
        """Apply new route configurations or assignments (validated as a whole first, as
        every update)."""
        routes, assignments = dict(self.routes), dict(self.assignments)
        (routes if type_url == ROUTE_TYPE else assignments).update(changed)
        # Nothing else changes, and the loader checked what did by the model's rules as it
        # read it (a route configuration's clusters need not exist: RDS's validate_clusters
        # is false); validating the whole configuration again was most of a large push. A
        # routes-only update gives the providers their new tables and rebuilds nothing.
        try:
            if type_url == ROUTE_TYPE:
                # (A listener warming for these routes is bound now: that can fail.)
                self.proxy.update(routes=list(routes.values()), _validated=True)
            else:
                self.proxy.update(clusters=self._with_endpoints(self.clusters_in_force(), assignments),
                                  _validated=True)
        except ListenerBindError as e:
            raise _bind_refusal(e, []) from None
        self.routes, self.assignments = routes, assignments

    def _with_endpoints(self, clusters: list, assignments: Optional[dict] = None) -> list:
        """The clusters with each EDS cluster's endpoints filled from its assignment."""
        held = self.assignments if assignments is None else assignments
        return [c.with_endpoints(list(held.get(c.eds_name, ())),
                                 getattr(held.get(c.eds_name), "overprovisioning_factor", 140))
                if c.type == "EDS" else c for c in clusters]

    # -- decoding ------------------------------------------------------------------------

    def _decode(self, type_url: str, resources: list) -> list:
        """Every resource through the bootstrap loader's function for its type; every
        error of the response is reported in one ConfigError(s), as for a bootstrap."""
        if not isinstance(resources, list):
            raise ConfigError("resources", f"expected a list, got {describe(resources)}")
        with collecting() as errors:
            out = [checked(self._decode_one, type_url, item, f"resources[{i}]", i)
                   for i, item in enumerate(resources)]
        raise_collected(errors)
        return out

    def _decode_one(self, type_url: str, item: Any, path: str, index: int) -> Any:
        body = _body(item, type_url, path)
        # A discovered resource is known by its name: it must have one.
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(path + ".name", "a discovered resource needs a non-empty name")
        field = TYPES[type_url][2]
        if any(r.name == name for r in self.static[field]):
            raise ConfigError(path + ".name", f"{name!r} is a static {field[:-1]} "
                                              "(static_resources) and cannot be replaced dynamically")
        static_clusters = {c.name for c in self.static["clusters"]}
        ads = self.proxy.config.dynamic_resources.ads if self.proxy.config.dynamic_resources else None
        if type_url == CLUSTER_TYPE:
            cluster = _cluster(body, path)
            for e in grpc_source_errors(cluster.eds_config, path + ".eds_cluster_config.eds_config",
                                        static_clusters, ads, require_ads=False):
                raise e
            self._check_sds_sources([(cluster.tls, path + ".transport_socket.typed_config")], static_clusters, ads)
            return cluster
        listener, refs = _listener(body, path, index)
        # (the model's chain.tls is the chain's transport_socket)
        self._check_sds_sources([(ctx, p[:-len(".tls")] + ".transport_socket.typed_config")
                                 for ctx, p in listener_contexts(listener, path)], static_clusters, ads)
        r = _rds(listener)
        if r is not None:
            for e in grpc_source_errors(r.config_source, f"{path}.{_RDS_PATH}.config_source", static_clusters, ads,
                                        require_ads=False):
                raise e
        # As the bootstrap loader does, to point at the field naming a missing cluster.
        known = {c.name for c in self.static["clusters"] + self.dynamic["clusters"]}
        for cluster, cluster_path in refs:
            if cluster not in known:
                report(ConfigError(cluster_path, f"unknown cluster {cluster!r}"))
        return listener

    @staticmethod
    def _check_sds_sources(contexts: list, static_clusters: set, ads: Any) -> None:
        """A discovered TLS context's secrets over xDS lead somewhere (as the bootstrap
        loader checks a static one's)."""
        from ..model_tls import sds_refs
        for ctx, path in contexts:
            for sds, spath in sds_refs(ctx, path):
                for e in grpc_source_errors(sds.sds_config, spath + ".sds_config", static_clusters, ads):
                    raise e

    # -- applying ------------------------------------------------------------------------

    def _install(self, field: str, items: list) -> None:
        """Validate the whole new configuration, discovered ``items`` first so that an
        error's index maps back to ``resources[i]``, then apply it."""
        other = "clusters" if field == "listeners" else "listeners"
        lists = {field: items + self.static[field],
                 other: self.static[other] + self.dynamic[other]}
        lists["clusters"] = self._with_endpoints(lists["clusters"])
        candidate = Bootstrap(lists["listeners"], lists["clusters"])
        # The resources this update leaves alone passed validation when they came (static
        # ones with the bootstrap), and the loader checked those it brings as it read them
        # (their cluster references too, in _decode_one): only names and addresses are
        # checked across them all.
        trusted = frozenset(map(id, self.static[field] + lists[other] + lists[field]))
        try:
            candidate.validate(trusted=trusted)
        except ConfigError as e:
            raise self._rebase(e, field, len(items), lists) from None
        dynamic = dict(self.dynamic, **{field: items})
        try:
            # Validated above, as a whole, in another order (which validation does not
            # depend on): not again.
            self.proxy.update(listeners=self.static["listeners"] + dynamic["listeners"],
                              clusters=self._with_endpoints(self.static["clusters"] + dynamic["clusters"]),
                              _validated=True)
        except ListenerBindError as e:
            raise _bind_refusal(e, items if field == "listeners" else []) from None
        self.dynamic[field] = items

    def _rebase(self, error: ConfigError, field: str, n: int, lists: dict) -> ConfigError:
        """A path of the whole candidate (``listeners[3].name``) as the author knows it:
        ``resources[i]...`` for a resource of this response, otherwise the static or the
        previously discovered resource it is."""
        def where(match: "re.Match") -> str:
            kind, i = match.group(1), int(match.group(2))
            if kind == field and i < n:
                return f"resources[{i}]"
            static = self.static[kind]
            base = n if kind == field else 0
            if i - base < len(static):
                return f"static_resources.{kind}[{i - base}]"
            return f"dynamic {kind[:-1]} {lists[kind][i].name!r}"
        path = re.sub(r"^(listeners|clusters)\[(\d+)\]", where, error.path)
        return ConfigError(path, error.message)

    # -- reporting -----------------------------------------------------------------------

    def read_stats(self) -> dict:
        """The per-resource subscriptions' stats (RDS, EDS) and the warming gauges (the
        per-type LDS / CDS stats are read by the transport that has the type)."""
        out: dict = {}
        with self._lock:
            for st in self.endpoint_stats.values():
                out.update(st.read())
            for prefix, name in self._rds_prefixes():
                # Envoy: a ':' of the route configuration's name is '_' in its stat names.
                out.update({f"http.{prefix}.rds.{k.replace(':', '_')}": v
                            for k, v in self.rds_stats(name).read().items()})
            out["cluster_manager.warming_clusters"] = len(self.warming_clusters())
            out["listener_manager.total_listeners_warming"] = len(self.warming_listeners())
        return out

    def gauge_names(self) -> set:
        out: set = {"cluster_manager.warming_clusters", "listener_manager.total_listeners_warming"}
        with self._lock:
            for st in self.endpoint_stats.values():
                out |= st.gauge_names()
            for prefix, name in self._rds_prefixes():
                out |= {f"http.{prefix}.rds.{g.replace(':', '_')}" for g in self.rds_stats(name).gauge_names()}
        return out

    def _rds_prefixes(self) -> list:
        """(stat_prefix, route configuration name) of each HTTP connection manager in force
        that takes its routes from RDS (Envoy's http.<stat_prefix>.rds.<name>.*; a ':' in
        the name becomes '_')."""
        out = []
        for l in self.listeners_in_force():
            r = _rds(l)
            if r is not None and (l.http_connection_manager.stat_prefix, r.route_config_name) not in out:
                out.append((l.http_connection_manager.stat_prefix, r.route_config_name))
        return out

    def version_info(self, type_url: str) -> str:
        """The version_info of the last accepted response of that type ("" before one)."""
        st = self.stats.get(type_url)
        return st.version_info if st is not None else ""

    def discovered(self, field: str) -> list:
        """[(model object, version_info, last_updated)] of the discovered "listeners" or
        "clusters" (for a config dump: static ones are in ``static``), or of the "routes"
        (model.RouteConfiguration) and "endpoints" ((name, [model.Endpoint]))."""
        with self._lock:
            if field == "routes":
                return [(r, *self.updated[field][n]) for n, r in self.routes.items() if n in self.updated[field]]
            if field == "endpoints":
                return [((n, e), *self.updated[field][n]) for n, e in self.assignments.items()
                        if n in self.updated[field]]
            return [(r, *self.updated[field][r.name]) for r in self.dynamic[field]]


_RDS_PATH = "filter_chains[0].filters[0].typed_config.rds"


def _resource_name(item: Any) -> Any:
    """The name an RDS (name) or EDS (cluster_name) resource gives itself, if any."""
    return item.get("name", item.get("cluster_name")) if isinstance(item, dict) else None


def _rds(listener: Any) -> Any:
    """The listener's HTTP connection manager's ``rds`` (model.Rds), or None."""
    hcm = getattr(listener, "http_connection_manager", None)
    return getattr(hcm, "rds", None) if hcm is not None else None
