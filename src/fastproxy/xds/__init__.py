"""Dynamic configuration (xDS): resources discovered at run time beside the static ones.

resources.py is the layer every transport shares: it validates a type's resources with
the bootstrap loader's own functions (one validation path, one error format), computes the
new state of the world and applies it with Proxy.update(), and keeps Envoy's per-type
subscription stats. files.py is the first transport: Envoy's path_config_source (a
DiscoveryResponse in a file, reloaded when a file is moved into place). ads_client.py is
the gRPC transport (ADS, state of the world and delta); ads.py sits it on the same layer:
each response goes to XdsResources.apply(), ACKed on success and NACKed with the
ConfigError's text.

Like config/, nothing here imports the compiled core.
"""
from .resources import CLUSTER_TYPE, LISTENER_TYPE, TYPES, SubscriptionStats, XdsResources, parse_discovery_response

__all__ = ["CLUSTER_TYPE", "LISTENER_TYPE", "TYPES", "SubscriptionStats", "XdsResources",
           "parse_discovery_response"]
