"""Python network filters in an Envoy config.

Envoy's way to configure an extension without a compiled-in proto schema is a TypedStruct:

    typed_config:
      "@type": type.googleapis.com/xds.type.v3.TypedStruct
      type_url: type.googleapis.com/fastproxy.python.NetworkFilter
      value:
        class: mypackage.filters:RateLimit
        config: {max_per_second: 100}

The class is imported when the config is loaded, so a typo fails at load time rather than on
the first connection. The result is a filter factory: a zero-argument callable that returns a
fresh ``RateLimit(config)`` for each connection.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

from ..errors import ConfigError
from ..filters import NetworkFilter
from .proto import Message, describe

# Both TypedStruct spellings Envoy accepts (xds is current, udpa the older one).
TYPED_STRUCT_TYPES = (
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/udpa.type.v1.TypedStruct",
)
PYTHON_FILTER_TYPE_URL = "type.googleapis.com/fastproxy.python.NetworkFilter"
PYTHON_HTTP_FILTER_TYPE_URL = "type.googleapis.com/fastproxy.python.HttpFilter"


def python_filter_factory(typed_config: Message) -> Callable[[], Any]:
    """``typed_config`` is the TypedStruct message (its "@type" already checked)."""
    type_url = typed_config.string("type_url", required=True)
    if type_url != PYTHON_FILTER_TYPE_URL:
        raise ConfigError(typed_config.at("type_url"),
                          f"unsupported network filter {type_url!r} (fastproxy supports "
                          f"{PYTHON_FILTER_TYPE_URL!r} in a TypedStruct, and tcp_proxy)")
    # The keys of a Struct are data, not proto fields: "class" and "config" are ours.
    value = typed_config.message("value", ("class", "config"), required=True)
    class_path = value.at("class")
    cls = import_class(value.string("class", required=True), class_path)
    if not (isinstance(cls, type) and issubclass(cls, NetworkFilter)):
        raise ConfigError(class_path, f"{describe(cls)} is not a fastproxy.NetworkFilter subclass")
    # An absent Struct is an empty one. The same config object is handed to every instance:
    # copying it per connection would cost on the hot path, so filters treat it as read-only.
    config = value.mapping("config")
    return functools.partial(cls, {} if config is None else config)


def import_class(spec: str, path: str) -> Any:
    """Resolve "package.module:Name" (Name may be dotted, for nested classes)."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(path, f"expected 'package.module:ClassName', got {spec!r}")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # any failure while importing user code is a config error
        raise ConfigError(path, f"cannot import module {module_name!r}: {type(e).__name__}: {e}") from e
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(path, f"module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def python_http_filter(typed_config: Message):
    """An http_filters entry's TypedStruct naming a Python HttpFilter::

        typed_config:
          "@type": type.googleapis.com/xds.type.v3.TypedStruct
          type_url: type.googleapis.com/fastproxy.python.HttpFilter
          value:
            class: mypackage.filters:AddUser      # or  filter: add_user  (a registered name)
            config: {header: x-user}

    Returns a PythonHttpFilter (its name is set by the caller from the entry's name)."""
    from ..http_filter import HttpFilter, PythonHttpFilter, lookup_http_filter
    type_url = typed_config.string("type_url", required=True)
    if type_url != PYTHON_HTTP_FILTER_TYPE_URL:
        raise ConfigError(typed_config.at("type_url"),
                          f"unsupported HTTP filter {type_url!r} in a TypedStruct (fastproxy supports "
                          f"{PYTHON_HTTP_FILTER_TYPE_URL!r})")
    value = typed_config.message("value", ("class", "filter", "config"), required=True)
    if (value.raw("class") is None) == (value.raw("filter") is None):
        raise ConfigError(value.at("class"), "exactly one of 'class' (package.module:Class) or 'filter' "
                                             "(a registered filter name) is required")
    if value.raw("class") is not None:
        cls = import_class(value.string("class", required=True), value.at("class"))
        where = value.at("class")
    else:
        name = value.string("filter", required=True, non_empty=True)
        where = value.at("filter")
        cls = lookup_http_filter(name)
        if cls is None:
            raise ConfigError(where, f"no HTTP filter registered as {name!r} (proxy.register_http_filter() "
                                     f"or the 'fastproxy.filters' entry point group)")
    if not (isinstance(cls, type) and issubclass(cls, HttpFilter)):
        raise ConfigError(where, f"{describe(cls)} is not a fastproxy.HttpFilter subclass")
    config = value.mapping("config")
    return PythonHttpFilter(name="", cls=cls, config={} if config is None else config)


def python_http_filter_route_config(typed_config: Message):
    """typed_per_filter_config for a Python filter: a TypedStruct whose value is handed to the
    filter class's route_config()."""
    type_url = typed_config.string("type_url", required=True)
    if type_url != PYTHON_HTTP_FILTER_TYPE_URL:
        raise ConfigError(typed_config.at("type_url"), f"expected {PYTHON_HTTP_FILTER_TYPE_URL!r}, got {type_url!r}")
    value = typed_config.raw("value")
    return {} if value is None else value
