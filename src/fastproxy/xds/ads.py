"""ads_config: the ADS transport (ads_client.AdsClient) on the resource layer
(resources.XdsResources), for every type whose config source is ``ads``.

The management server is the first endpoint of the static cluster ads_config names. Each
response goes to XdsResources.apply(): ACKed when it is installed, NACKed with the
ConfigError's text (the offending field's path, rooted at ``resources[i]``) when it is
refused. Delta responses carry changes only: the resources held are kept here and the
resource layer, which works on whole sets, gets the set they make.

Stats: the subscription's (listener_manager.lds.*, cluster_manager.cds.*: update_attempt
per response, update_failure for a stream that fails, success and rejection counted by the
resource layer) and Envoy's ``control_plane.connected_state`` gauge.

Initial fetch: Proxy.start() waits (after releasing the proxy's lock, which applying a
response takes) for the first response of each type, at most the
longest initial_fetch_timeout of the types (Envoy's default 15 s; 0: no wait), so that a
proxy serves the discovered configuration as soon as start() returns, as with files.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from ..errors import ConfigError
from ..model import DynamicResources
from .ads_client import AdsClient
from .resources import CLUSTER_TYPE, LISTENER_TYPE, XdsResources

log = logging.getLogger("fastproxy.config")


def node_dict(node: Any) -> dict:
    """The bootstrap's node as Envoy sends it (envoy.config.core.v3.Node, JSON shape)."""
    out: dict = {"id": node.id, "cluster": node.cluster}
    locality = {k: v for k, v in (("region", node.region), ("zone", node.zone), ("sub_zone", node.sub_zone)) if v}
    if locality:
        out["locality"] = locality
    if node.metadata:
        out["metadata"] = node.metadata
    out["user_agent_name"] = "fastproxy"
    return out


class AdsDiscovery:
    """The ADS subscriptions of a proxy."""

    def __init__(self, proxy: Any, dynamic: DynamicResources, resources: Optional[XdsResources] = None):
        assert dynamic.ads is not None
        self.resources = resources if resources is not None else XdsResources(proxy, proxy.config)
        sources = [(url, src) for url, src in ((CLUSTER_TYPE, dynamic.cds), (LISTENER_TYPE, dynamic.lds))
                   if src is not None and src.ads]
        self.types = [url for url, _ in sources]                # CDS before LDS, as Envoy asks
        self.fetch_timeout = max((src.initial_fetch_timeout for _, src in sources), default=0.0)
        self.delta = dynamic.ads.delta
        cluster = next(c for c in proxy.config.clusters if c.name == dynamic.ads.cluster_name)
        if not cluster.endpoints:
            raise ConfigError("dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                              f"cluster {cluster.name!r} has no endpoint to reach the management server at")
        e = cluster.endpoints[0]
        host = f"[{e.address}]" if ":" in e.address else e.address
        self.client = AdsClient(f"{host}:{e.port}", node_dict(proxy.config.node), self.types,
                                self._apply, delta=self.delta)
        self._held: dict = {t: {} for t in self.types}          # delta: name -> resource

    def start(self) -> None:
        self.client.start()

    def wait_initial(self) -> None:
        """Called without the proxy's lock held: applying a response takes it."""
        if self.fetch_timeout > 0 and not self.client.wait_initial(self.fetch_timeout):
            log.warning("xds: the initial fetch did not finish in %gs; serving what there is",
                        self.fetch_timeout)

    def stop(self) -> None:
        self.client.stop()

    def _apply(self, type_url: str, resources: list, version: str, removed: list) -> Optional[str]:
        stats = self.resources.stats[type_url]
        stats.count("update_attempt")
        if self.delta:
            held = dict(self._held[type_url])
            for r in resources:
                held[r.get("name", "")] = r
            for name in removed:
                held.pop(name, None)
            full = list(held.values())
        else:
            full = resources
        try:
            self.resources.apply(type_url, version, full)
        except ConfigError as e:
            return str(e)               # logged and counted (update_rejected) by apply()
        except RuntimeError as e:       # the proxy stopped meanwhile
            return f"not applied: {e}"
        if self.delta:
            self._held[type_url] = held
        return None

    def read_stats(self) -> dict:
        out: dict = {"control_plane.connected_state": 1 if self.client.connected.is_set() else 0}
        for t in self.types:
            out.update(self.resources.stats[t].read())
        return out

    def gauge_names(self) -> set:
        names = {"control_plane.connected_state"}
        for t in self.types:
            names |= self.resources.stats[t].gauge_names()
        return names


__all__ = ["AdsDiscovery", "node_dict"]
