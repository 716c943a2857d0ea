"""Envoy's ``layered_runtime``: the runtime keys fastproxy honours, and a refusal naming any
other key (the README's promise: nothing in a configuration is silently ignored).

Honoured (from static layers; a later layer overrides an earlier one, as in Envoy; nested
keys are flattened with dots, as Envoy does):

  overload.global_downstream_max_connections              a limit on downstream connections
                                                          over all listeners together
  envoy.resource_limits.listener.<listener name>.connection_limit
                                                          that listener's max_connections

An ``admin_layer`` (runtime changes through /runtime_modify), ``disk_layer`` and
``rtds_layer`` are refused: fastproxy has no runtime loader nor /runtime_modify.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..errors import ConfigError
from .proto import Message, describe, integer, report

GLOBAL_MAX_CONNECTIONS = "overload.global_downstream_max_connections"
_LISTENER_LIMIT = ("envoy.resource_limits.listener.", ".connection_limit")
INT64_MAX = (1 << 63) - 1

_REFUSED_LAYERS = {
    "admin_layer": "runtime changes through the admin's /runtime_modify are not supported",
    "disk_layer": "runtime values from disk are not supported",
    "rtds_layer": "runtime discovery (RTDS, xDS) is not supported",
}


@dataclass
class Runtime:
    global_max_connections: Optional[int] = None
    # listener name -> (connection limit, the runtime key's path, for errors)
    listener_limits: Dict[str, Tuple[int, str]] = field(default_factory=dict)

    def apply_listener_limits(self, listeners: list) -> None:
        """Set each named listener's max_connections; a key naming no listener is an error
        (it would limit nothing)."""
        by_name = {l.name: l for l in listeners}
        for name, (limit, path) in self.listener_limits.items():
            listener = by_name.get(name)
            if listener is None:
                report(ConfigError(path, f"no listener named {name!r} (known: {', '.join(sorted(by_name)) or 'none'})"))
                continue
            listener.max_connections = limit


def _flatten(value: Any, prefix: str, path: str, out: Dict[str, Tuple[Any, str]]) -> None:
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        ipath = f"{path}.{key}"
        if isinstance(item, Mapping):
            _flatten(item, name, ipath, out)
        else:
            out[name] = (item, ipath)


def layered_runtime(top: Message) -> Runtime:
    runtime = top.message("layered_runtime", ("layers",))
    result = Runtime()
    if runtime is None:
        return result
    values: Dict[str, Tuple[Any, str]] = {}
    for item, lpath in runtime.repeated("layers"):
        layer = Message(item, lpath, ("name", "static_layer") + tuple(_REFUSED_LAYERS))
        layer.string("name", required=True, non_empty=True)
        for kind, why in _REFUSED_LAYERS.items():
            if layer.raw(kind) is not None:
                report(ConfigError(layer.at(kind), f"{kind}: {why}; fastproxy reads static_layer only"))
        static = layer.mapping("static_layer")
        if static is not None:
            _flatten(static, "", layer.at("static_layer"), values)
    for key, (value, vpath) in values.items():
        if key == GLOBAL_MAX_CONNECTIONS:
            result.global_max_connections = integer(value, vpath, 1, INT64_MAX, "a positive integer")
        elif key.startswith(_LISTENER_LIMIT[0]) and key.endswith(_LISTENER_LIMIT[1]) \
                and len(key) > len(_LISTENER_LIMIT[0]) + len(_LISTENER_LIMIT[1]):
            name = key[len(_LISTENER_LIMIT[0]):-len(_LISTENER_LIMIT[1])]
            result.listener_limits[name] = (integer(value, vpath, 1, INT64_MAX, "a positive integer"), vpath)
        else:
            report(ConfigError(vpath, f"runtime key {key!r} (= {describe(value)}) is not supported by "
                                      f"fastproxy; it honours {GLOBAL_MAX_CONNECTIONS} and "
                                      f"{_LISTENER_LIMIT[0]}<listener name>{_LISTENER_LIMIT[1]}"))
    return result
