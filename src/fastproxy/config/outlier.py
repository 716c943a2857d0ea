"""A cluster's outlier detection in Envoy's v3 YAML: outlier_detection (model:
fastproxy.upstream.outlier). Owner: issue 16's OD work."""
from __future__ import annotations

from .proto import Message, unsupported_field

OUTLIER_FIELDS = ("outlier_detection",)


def cluster_outlier_detection(msg: Message) -> dict:
    """model.Cluster's keyword arguments for the outlier detection in ``msg``."""
    if msg.raw("outlier_detection") is not None:
        raise unsupported_field(msg.at("outlier_detection"), "outlier_detection")
    return {}
