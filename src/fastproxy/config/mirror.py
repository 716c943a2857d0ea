"""Request mirroring in Envoy's v3 YAML: RouteAction.request_mirror_policies (model:
fastproxy.http.mirror). Owner: issue 16's MIRROR work."""
from __future__ import annotations

from .proto import Message, unsupported_field

ROUTE_MIRROR_FIELDS = ("request_mirror_policies",)


def route_mirrors(a: Message, refs: list) -> dict:
    """mh.RouteAction's keyword arguments for the mirror policies of route action ``a``; the
    clusters they name go into ``refs`` as (name, path), as the route's own do."""
    if a.raw("request_mirror_policies"):
        raise unsupported_field(a.at("request_mirror_policies"), "request_mirror_policies")
    return {}
