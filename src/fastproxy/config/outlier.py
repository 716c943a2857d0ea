"""A cluster's outlier detection in Envoy's v3 YAML: outlier_detection (model:
fastproxy.upstream.outlier). Owner: issue 16's OD work."""
from __future__ import annotations

from ..errors import ConfigError
from ..upstream.outlier import BOOL_FIELDS, COUNT_FIELDS, PERCENT_FIELDS, OutlierDetection
from .http_common import _bool
from .proto import Message, unsupported_field

OUTLIER_FIELDS = ("outlier_detection",)

_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time", "max_ejection_time_jitter")
_FIELDS = PERCENT_FIELDS + COUNT_FIELDS + BOOL_FIELDS + _DURATIONS + ("monitors",)


def cluster_outlier_detection(msg: Message) -> dict:
    """model.Cluster's keyword arguments for the outlier detection in ``msg``."""
    od = msg.message("outlier_detection", _FIELDS)
    if od is None:
        return {}
    if od.raw("monitors") is not None:
        # (Envoy hides it as not implemented: its extension monitors have no factory.)
        raise unsupported_field(od.at("monitors"), "monitors")
    kwargs = {}
    for name in PERCENT_FIELDS:
        value = od.uint32(name)
        if value is not None:
            if value > 100:
                raise ConfigError(od.at(name), f"value must be less than or equal to 100, got {value}")
            kwargs[name] = value
    for name in COUNT_FIELDS:
        value = od.uint32(name)
        if value is not None:
            kwargs[name] = value
    for name in BOOL_FIELDS:
        if od.raw(name) is not None:
            kwargs[name] = _bool(od, name)
    for name in _DURATIONS:
        value = od.duration(name)
        if value is not None:
            if name != "max_ejection_time_jitter" and value <= 0:
                raise ConfigError(od.at(name), "value must be greater than 0s")     # (Envoy's words)
            kwargs[name] = value
    model = OutlierDetection(**kwargs)
    model.validate(msg.at("outlier_detection"))
    return {"outlier_detection": model}

