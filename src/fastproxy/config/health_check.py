"""A cluster's active health checks in Envoy's v3 YAML: health_checks (model:
fastproxy.upstream.health_check). Owner: issue 16's HC work."""
from __future__ import annotations

from .proto import Message, unsupported_field

HEALTH_CHECK_FIELDS = ("health_checks",)


def cluster_health_checks(msg: Message) -> dict:
    """model.Cluster's keyword arguments for the health checks in ``msg``."""
    if msg.raw("health_checks"):
        raise unsupported_field(msg.at("health_checks"), "health_checks")
    return {}
