"""The gRPC transports (ads_client.AdsClient) on the resource layer (resources.XdsResources):
the bootstrap's ADS stream (ads_config: every type whose config source is ``ads``) and the
non-aggregated ones (a config source's api_config_source: one stream per type, on the
type's own discovery service, e.g. ListenerDiscoveryService.StreamListeners). Both are the
same client with another service; what they receive is applied the same way.

The management server is the first endpoint of the static cluster the source names. Each
response goes to XdsResources.apply(): ACKed when it is installed, NACKed with the
ConfigError's text (the offending field's path, rooted at ``resources[i]``) when it is
refused. Delta LDS/CDS responses carry changes only: the resources held are kept here and
the resource layer, which works on whole sets there, gets the set they make (RDS and EDS
responses update the named resources they hold, delta or not).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from ..errors import ConfigError
from ..model import AdsConfig
from .ads_client import ADS_SERVICE, TYPE_SERVICES, AdsClient
from .resources import CLUSTER_TYPE, LISTENER_TYPE, XdsResources

log = logging.getLogger("fastproxy.config")


def node_dict(node: Any) -> dict:
    """The bootstrap's node as Envoy sends it (envoy.config.core.v3.Node, JSON shape)."""
    from ..config.dump import node_json
    return {"id": node.id, "cluster": node.cluster, **node_json(node), "user_agent_name": "fastproxy"}


def grpc_target(proxy: Any, source: AdsConfig, path: str) -> str:
    """host:port of the management server: the first endpoint of the source's cluster."""
    cluster = next((c for c in proxy.config.clusters if c.name == source.cluster_name), None)
    if cluster is None or not cluster.endpoints:
        raise ConfigError(path, f"cluster {source.cluster_name!r} has no endpoint to reach the "
                                "management server at")
    e = cluster.endpoints[0]
    host = f"[{e.address}]" if ":" in e.address else e.address
    return f"{host}:{e.port}"


class GrpcTransport:
    """One stream to a management server: ADS (``type_url`` None) or one type's own."""

    def __init__(self, proxy: Any, resources: XdsResources, source: AdsConfig, path: str,
                 type_url: Optional[str] = None):
        self.resources = resources
        self.delta = source.delta
        self.aggregated = type_url is None
        service = ADS_SERVICE if type_url is None else TYPE_SERVICES[type_url]
        self.client = AdsClient(grpc_target(proxy, source, path), node_dict(proxy.config.node), [],
                                self._apply, delta=self.delta, service=service,
                                max_receive_message_length=source.max_receive_message_length)
        self._held: dict = {}           # delta LDS/CDS: type -> name -> resource
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.client.start()

    def stop(self, wait: bool = True) -> None:
        if self._started:
            self.client.stop(wait)

    def subscribe(self, type_url: str, names: Optional[Any] = None) -> None:
        self.client.subscribe(type_url, names)

    def subscribed(self, type_url: str) -> bool:
        return type_url in self.client.types

    def names(self, type_url: str) -> set:
        """The names subscribed to (a wildcard or nothing: none)."""
        st = self.client.types.get(type_url)
        return set(st.names or ()) if st is not None else set()

    def responded(self, type_url: str) -> bool:
        st = self.client.types.get(type_url)
        return st is not None and st.responded.is_set()

    def _apply(self, type_url: str, resources: list, version: str, removed: list) -> Optional[str]:
        whole = type_url in (LISTENER_TYPE, CLUSTER_TYPE)
        if whole:
            self.resources.stats[type_url].count("update_attempt")
        held = None
        if self.delta and whole:
            held = dict(self._held.get(type_url, {}))
            for r in resources:
                held[r.get("name", "")] = r
            for name in removed:
                held.pop(name, None)
            full, removed = list(held.values()), []
        else:
            full = resources
        try:
            self.resources.apply(type_url, version, full, removed)
        except ConfigError as e:
            # Logged and counted (update_rejected) by apply(). A refused response still ends
            # its step of the initialization (Envoy's onConfigUpdateFailed).
            if self.resources.on_change is not None:
                self.resources.on_change()
            return str(e)
        except RuntimeError as e:       # the proxy stopped meanwhile
            return f"not applied: {e}"
        if held is not None:
            self._held[type_url] = held
        return None


__all__ = ["GrpcTransport", "grpc_target", "node_dict"]
