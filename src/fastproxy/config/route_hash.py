"""Route hash policies in Envoy's v3 YAML: RouteAction.hash_policy (model:
fastproxy.http.hash_policy). Owner: issue 16's HASH work."""
from __future__ import annotations

from .proto import Message, unsupported_field

ROUTE_HASH_FIELDS = ("hash_policy",)


def route_hash_policy(a: Message) -> dict:
    """mh.RouteAction's keyword arguments for the hash policy of route action ``a``."""
    if a.raw("hash_policy"):
        raise unsupported_field(a.at("hash_policy"), "hash_policy")
    return {}
