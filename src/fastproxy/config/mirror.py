"""Request mirroring in Envoy's v3 YAML: RouteAction.request_mirror_policies (model:
fastproxy.http.mirror). Owner: issue 16's MIRROR work.

A policy takes ``cluster``, ``runtime_fraction`` (default_value; runtime_key is kept, and
since fastproxy's runtime has no such key the default applies, as in Envoy while the key is
unset), ``trace_sampled`` (no tracing in fastproxy: accepted, no effect) and
``disable_shadow_host_suffix_append``. ``cluster_header`` is refused with its path. The
clusters named go into the listener's references, so an unknown one is refused as Envoy
refuses it ("unknown shadow cluster")."""
from __future__ import annotations

from ..errors import ConfigError
from ..http.mirror import MirrorPolicy
from .http_common import _bool
from .http_filters_native import _fractional_percent
from .proto import Message

ROUTE_MIRROR_FIELDS = ("request_mirror_policies",)
_POLICY_FIELDS = ("cluster", "cluster_header", "runtime_fraction", "trace_sampled",
                  "disable_shadow_host_suffix_append")


def route_mirrors(a: Message, refs: list) -> dict:
    """mh.RouteAction's keyword arguments for the mirror policies of route action ``a``; the
    clusters they name go into ``refs`` as (name, path), as the route's own do."""
    policies = []
    for item, path in a.repeated("request_mirror_policies"):
        policies.append(_policy(Message(item, path, _POLICY_FIELDS), refs))
    return {"request_mirror_policies": policies} if policies else {}


def _policy(m: Message, refs: list) -> MirrorPolicy:
    cluster = m.string("cluster", default="")
    cluster_header = m.string("cluster_header", default="")
    if cluster and cluster_header:
        # Envoy's ShadowPolicyImpl: exactly one of the two.
        raise ConfigError(m.at("cluster_header"), "only one of cluster and cluster_header may be set")
    if cluster_header:
        raise ConfigError(m.at("cluster_header"), "request mirroring to a cluster named by a request header "
                                                  "(cluster_header) is unsupported in fastproxy; use 'cluster'")
    if not cluster:
        raise ConfigError(m.at("cluster"), "exactly one of cluster and cluster_header must be set")
    refs.append((cluster, m.at("cluster")))
    fraction = key = None
    rf = m.message("runtime_fraction", ("default_value", "runtime_key"))
    if rf is not None:
        key = rf.string("runtime_key") or None
        fraction = _fractional_percent(rf.message("default_value", ("numerator", "denominator"), required=True))
    trace = None if m.raw("trace_sampled") is None else _bool(m, "trace_sampled")
    return MirrorPolicy(cluster=cluster, runtime_fraction=fraction, runtime_key=key, trace_sampled=trace,
                        disable_shadow_host_suffix_append=_bool(m, "disable_shadow_host_suffix_append"))
