"""A cluster's load-balancer options in Envoy's v3 YAML: ring_hash_lb_config,
maglev_lb_config, least_request_lb_config, common_lb_config (model: fastproxy.upstream.lb).
Owner: issue 16's LB work."""
from __future__ import annotations

from .proto import Message, unsupported_field

CLUSTER_LB_FIELDS = ("ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config",
                     "common_lb_config")


def cluster_lb_options(msg: Message, lb_policy: str) -> dict:
    """model.Cluster's keyword arguments for the load balancer's options in ``msg``."""
    for f in CLUSTER_LB_FIELDS:
        if msg.raw(f) is not None:
            raise unsupported_field(msg.at(f), f)
    return {}
