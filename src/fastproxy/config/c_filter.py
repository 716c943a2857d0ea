"""C HTTP filters (an ``fp_http_filter`` table, e.g. built with cffi) in an Envoy config.

A C filter is registered by name from Python first (``Proxy.register_c_filter(name,
ffi.addressof(lib, "table"), lib)``); the config then names it in a TypedStruct::

    http_filters:
    - name: c_header
      typed_config:
        "@type": type.googleapis.com/xds.type.v3.TypedStruct
        type_url: type.googleapis.com/fastproxy.c.HttpFilter
        value:
          filter: c_header                 # the registered name
          config: {header: x-c-filter}     # handed to the table's create_config as JSON

Per route, ``typed_per_filter_config.<filter name>`` is a TypedStruct with the same
type_url whose ``value`` is the route's config (create_config is called for it too, and
the filter reads the result through ``api->route_config``).
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .proto import Message

C_HTTP_FILTER_TYPE_URL = "type.googleapis.com/fastproxy.c.HttpFilter"


def c_http_filter(typed_config: Message):
    """The TypedStruct (type_url already known to be C_HTTP_FILTER_TYPE_URL) as a
    CHttpFilter; its name is set by the caller from the entry's name."""
    from ..http_filter import CHttpFilter, lookup_c_filter
    value = typed_config.message("value", ("filter", "config"), required=True)
    name = value.string("filter", required=True, non_empty=True)
    found = lookup_c_filter(name)
    if found is None:
        raise ConfigError(value.at("filter"), f"no C filter registered as {name!r} "
                                              f"(Proxy.register_c_filter(name, table, lib) first)")
    table, keepalive = found
    # The config is data for the C side (JSON); None (absent) means no config at all.
    return CHttpFilter(name="", table=table, config=value.raw("config"), keepalive=keepalive)


def c_http_filter_route_config(typed_config: Message) -> Any:
    """typed_per_filter_config for a C filter: the TypedStruct's value, as JSON for the
    table's create_config."""
    type_url = typed_config.string("type_url", required=True)
    if type_url != C_HTTP_FILTER_TYPE_URL:
        raise ConfigError(typed_config.at("type_url"), f"expected {C_HTTP_FILTER_TYPE_URL!r}, got {type_url!r}")
    return typed_config.raw("value")
