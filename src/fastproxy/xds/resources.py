"""The resource layer every xDS transport shares.

A transport (a file today, a gRPC stream later) hands over a type URL, a version and the
complete list of that type's resources (state of the world). They are decoded with the
bootstrap loader's own functions (config/envoy.py), so a listener from LDS is checked
exactly as a static one and its errors carry the same kind of path, rooted at
``resources[i]``. The new full set (static resources, then every discovered one; a resource
absent from the response is removed) is validated as a whole and applied with
Proxy.update(), the proxy's hot-update path. A rejected update changes nothing.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from ..config.envoy import CLUSTER_TYPE, LISTENER_TYPE, _cluster, _listener
from ..config.proto import Message, checked, collecting, raise_collected, report
from ..errors import ConfigError, ListenerBindError
from ..model import Bootstrap
from ..validation import describe
from .xxhash64 import xxh64

log = logging.getLogger("fastproxy.config")   # Envoy logs xDS updates under [config]


# type URL -> (short name, stat prefix Envoy uses for the subscription, Bootstrap field).
TYPES = {
    LISTENER_TYPE: ("lds", "listener_manager.lds", "listeners"),
    CLUSTER_TYPE: ("cds", "cluster_manager.cds", "clusters"),
}

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


def check_node(node: Any, dynamic: Any) -> None:
    """Envoy refuses to subscribe to anything without the node's id and cluster (a
    management server tells its clients apart by them), files included; so does fastproxy.
    Checked when the proxy is built, after the command line's --service-node and
    --service-cluster have had their say."""
    if dynamic is None or (dynamic.lds is None and dynamic.cds is None):
        return
    if not node.id or not node.cluster:
        url = LISTENER_TYPE if dynamic.lds is not None else CLUSTER_TYPE
        raise ConfigError("node", f"{url}: node 'id' and 'cluster' are required. Set it either in 'node' "
                                  "config or via --service-node and --service-cluster options.")


class SubscriptionStats:
    """Envoy's per-subscription stats (<prefix>.update_attempt, update_success,
    update_rejected, update_failure counters; version, the XXH64 of the last accepted
    version_info, as a gauge). The transport counts attempts and failures (it knows what
    they are); XdsResources.apply counts successes and rejections."""

    COUNTERS = ("update_attempt", "update_success", "update_rejected", "update_failure")

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.counts = dict.fromkeys(self.COUNTERS, 0)
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


class XdsResources:
    """The discovered listeners and clusters of one Proxy, beside its static ones.

    ``static`` is the configuration the proxy started with (its listeners and clusters stay
    whatever is discovered; a discovered resource may not take a static one's name)."""

    def __init__(self, proxy: Any, static: Bootstrap):
        self.proxy = proxy
        self.static = {"listeners": list(static.listeners), "clusters": list(static.clusters)}
        self.dynamic: dict = {"listeners": [], "clusters": []}       # in the order last received
        # name -> (version_info, last_updated: time.time()) of the response that last changed
        # each discovered resource (what Envoy's config dump shows per resource).
        self.updated: dict = {"listeners": {}, "clusters": {}}
        self.stats = {url: SubscriptionStats(prefix) for url, (_, prefix, _) in TYPES.items()}
        # One update at a time, whichever transport it comes from.
        self._lock = threading.Lock()

    def apply(self, type_url: str, version_info: str, resources: list) -> None:
        """Install ``resources`` as the complete set of ``type_url``'s discovered resources
        (state of the world). Raises ConfigError (the update is rejected, counted, and
        nothing changes) naming the offending field, e.g. ``resources[2].filter_chains[0]
        .filters[0].typed_config.cluster``."""
        if type_url not in TYPES:
            raise ConfigError("type_url", f"unsupported resource type {type_url!r} (fastproxy "
                                          f"discovers {', '.join(TYPES)})")
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

    def _note_dump(self, field: str, version_info: str) -> None:
        """Tell the proxy's config dump which resources are discovered and at which version
        (Proxy.note_discovered: dynamic_active_listeners / _clusters and, for a discovered
        listener's inline routes, dynamic_route_configs)."""
        note = getattr(self.proxy, "note_discovered", None)
        if note is None:
            return
        kind = "listener" if field == "listeners" else "cluster"
        for name, (version, _) in self.updated[field].items():
            try:
                note(kind, name, version)
                if kind == "listener":
                    note("route", name, version)
            except KeyError:
                pass            # a TCP listener has no route configuration
        self.proxy.note_discovery_version(field, version_info)

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
        if not isinstance(item, dict):
            raise ConfigError(path, f"expected a mapping (google.protobuf.Any), got {describe(item)}")
        given = item.get("@type")
        if given != type_url:
            raise ConfigError(path + ".@type", f"expected {type_url!r}, got {given!r}")
        body = {k: v for k, v in item.items() if k != "@type"}
        # A discovered resource is known by its name: it must have one.
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(path + ".name", "a discovered resource needs a non-empty name")
        field = TYPES[type_url][2]
        if any(r.name == name for r in self.static[field]):
            raise ConfigError(path + ".name", f"{name!r} is a static {field[:-1]} "
                                              "(static_resources) and cannot be replaced dynamically")
        if type_url == CLUSTER_TYPE:
            return _cluster(body, path)
        listener, refs = _listener(body, path, index)
        # As the bootstrap loader does, to point at the field naming a missing cluster.
        known = {c.name for c in self.static["clusters"] + self.dynamic["clusters"]}
        for cluster, cluster_path in refs:
            if cluster not in known:
                report(ConfigError(cluster_path, f"unknown cluster {cluster!r}"))
        return listener

    # -- applying ------------------------------------------------------------------------

    def _install(self, field: str, items: list) -> None:
        """Validate the whole new configuration, discovered ``items`` first so that an
        error's index maps back to ``resources[i]``, then apply it."""
        other = "clusters" if field == "listeners" else "listeners"
        lists = {field: items + self.static[field],
                 other: self.static[other] + self.dynamic[other]}
        candidate = Bootstrap(lists["listeners"], lists["clusters"])
        # The resources this update leaves alone passed validation when they came (static
        # ones with the bootstrap): only the references between them are checked again.
        trusted = frozenset(map(id, self.static[field] + lists[other]))
        try:
            candidate.validate(trusted=trusted)
        except ConfigError as e:
            raise self._rebase(e, field, len(items), lists) from None
        dynamic = dict(self.dynamic, **{field: items})
        try:
            # Validated above, as a whole, in another order (which validation does not
            # depend on): not again.
            self.proxy.update(listeners=self.static["listeners"] + dynamic["listeners"],
                              clusters=self.static["clusters"] + dynamic["clusters"], _validated=True)
        except ListenerBindError as e:
            # As Envoy: a listener that cannot bind fails the whole update.
            failed = next((i for i, l in enumerate(items) if field == "listeners" and f"({l.name})" in str(e)), None)
            detail = str(e).split(": ", 1)[-1]
            raise ConfigError("resources" if failed is None else f"resources[{failed}].address",
                              f"cannot bind: {detail}") from None
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
        out: dict = {}
        for s in self.stats.values():
            out.update(s.read())
        return out

    def gauge_names(self) -> set:
        out: set = set()
        for s in self.stats.values():
            out |= s.gauge_names()
        return out

    def version_info(self, type_url: str) -> str:
        """The version_info of the last accepted response of that type ("" before one)."""
        return self.stats[type_url].version_info

    def discovered(self, field: str) -> list:
        """[(model object, version_info, last_updated)] of the discovered "listeners" or
        "clusters" (for a config dump: static ones are in ``static``)."""
        with self._lock:
            return [(r, *self.updated[field][r.name]) for r in self.dynamic[field]]


__all__ = ["LISTENER_TYPE", "CLUSTER_TYPE", "TYPES", "parse_discovery_response", "SubscriptionStats",
           "XdsResources"]
