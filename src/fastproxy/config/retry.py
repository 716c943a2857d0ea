"""Retries in Envoy's v3 YAML: RouteAction and VirtualHost retry_policy / hedge_policy and the
virtual host's attempt-count and buffer-limit fields (model: fastproxy.http.retry). Owner:
issue 16's RETRY work."""
from __future__ import annotations

from .proto import Message, unsupported_field

ROUTE_RETRY_FIELDS = ("retry_policy", "hedge_policy")
VHOST_RETRY_FIELDS = ("retry_policy", "hedge_policy", "include_request_attempt_count",
                      "include_attempt_count_in_response", "per_request_buffer_limit_bytes")


def route_retry(a: Message) -> dict:
    """mh.RouteAction's keyword arguments for the retry fields of route action ``a``."""
    for f in ROUTE_RETRY_FIELDS:
        if a.raw(f) is not None:
            raise unsupported_field(a.at(f), f)
    return {}


def vhost_retry(vh: Message) -> dict:
    """mh.VirtualHost's keyword arguments for the retry fields of virtual host ``vh``."""
    for f in VHOST_RETRY_FIELDS:
        if vh.raw(f) is not None:
            raise unsupported_field(vh.at(f), f)
    return {}
