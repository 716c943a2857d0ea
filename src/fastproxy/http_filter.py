"""HTTP filters, Envoy style (StreamDecoderFilter / StreamEncoderFilter).

A filter is a plain class; one instance serves one request/response exchange (a stream).
Every hook has a default that does nothing and continues, so a subclass overrides only
what it needs; hooks it does not override are never called (and cost nothing)::

    class AddUser(fastproxy.HttpFilter):
        def decode_headers(self, headers, end_stream):
            headers["x-user"] = "alice"
            return fastproxy.FilterStatus.CONTINUE

Phase order for one stream (filters configured as A, B, then the router)::

    request   A.decode_headers -> B.decode_headers -> router (route, upstream, head out)
              A.decode_data    -> B.decode_data    -> router   (each body chunk)
              A.decode_trailers-> B.decode_trailers-> router
    response  B.encode_headers -> A.encode_headers -> client
              B.encode_data    -> A.encode_data    -> client
              B.encode_trailers-> A.encode_trailers-> client
    end       A.on_log(info), B.on_log(info); A.on_destroy(), B.on_destroy()

Hooks run on the stream's worker thread with the GIL held. A hook may be ``async def``:
the coroutine runs on the proxy's asyncio loop while the stream waits, for at most
``timeout`` seconds (504 after that). See docs/filters.md.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Union

from .filters import FilterStatus

if TYPE_CHECKING:
    from ._core import Body, Headers, StreamInfo

# What a hook returns: a FilterStatus, or (an ``async def`` hook) a coroutine giving one.
HookResult = Union[FilterStatus, Awaitable[FilterStatus]]

# Bits of the core's HK_* enum (core/http/filter_manager.pxi): which hooks a filter implements.
HOOK_BITS = {
    "decode_headers": 1, "decode_data": 2, "decode_trailers": 4,
    "encode_headers": 8, "encode_data": 16, "encode_trailers": 32, "on_log": 64,
}


class HttpFilter:
    """Base class of Python HTTP filters. See the module docstring for the phase order.

    ``self.config`` is the filter's config (the same object for every stream: treat it as
    read-only). ``self.callbacks`` (a fastproxy.HttpFilterCallbacks) is set before the
    first hook: ``continue_decoding()``, ``continue_encoding()``, ``send_local_reply()``,
    ``clear_route_cache()``, ``cluster``, ``route_name``, ``route_config`` (this filter's
    typed_per_filter_config on the chosen route), ``stream_info``, ``filter_state``,
    ``add_decoded_data()``, ``add_encoded_data()``.
    """

    callbacks: Any = None
    timeout: Optional[float] = 30.0
    """Seconds an ``async def`` hook may take before the stream gets a 504."""

    def __init__(self, config: Any = None) -> None:
        self.config = config

    def decode_headers(self, headers: Headers, end_stream: bool) -> HookResult:
        """The request head (``end_stream``: no body follows)."""
        return FilterStatus.CONTINUE

    def decode_data(self, data: Body, end_stream: bool) -> HookResult:
        """A piece of the request body (``end_stream``: the last one)."""
        return FilterStatus.CONTINUE

    def decode_trailers(self, trailers: Headers) -> HookResult:
        """The request's trailers (a chunked body's trailer fields)."""
        return FilterStatus.CONTINUE

    def encode_headers(self, headers: Headers, end_stream: bool) -> HookResult:
        """The response head (``:status`` among the headers)."""
        return FilterStatus.CONTINUE

    def encode_data(self, data: Body, end_stream: bool) -> HookResult:
        """A piece of the response body (``end_stream``: the last one)."""
        return FilterStatus.CONTINUE

    def encode_trailers(self, trailers: Headers) -> HookResult:
        """The response's trailers."""
        return FilterStatus.CONTINUE

    def on_log(self, info: StreamInfo) -> None:
        """The stream ended (``info`` is its StreamInfo)."""

    def on_destroy(self) -> None:
        """Last call; release what the instance holds."""

    @classmethod
    def route_config(cls, config: Any) -> Any:
        """Turn a typed_per_filter_config value into what ``callbacks.route_config`` gives
        (at config time, once). The default keeps it as it is."""
        return config


def overridden_hooks(cls: type) -> int:
    """The HOOK_BITS of the hooks ``cls`` overrides."""
    bits = 0
    for name, bit in HOOK_BITS.items():
        if getattr(cls, name, None) is not getattr(HttpFilter, name):
            bits |= bit
    return bits


@dataclass
class PythonHttpFilter:
    """An http_filters entry that runs a Python HttpFilter subclass."""

    name: str
    cls: type
    config: Any = None

    @property
    def hooks(self) -> int:
        """The HOOK_BITS of the hooks the class overrides (the core calls only those)."""
        return overridden_hooks(self.cls)

    def factory(self) -> Callable[[], HttpFilter]:
        """Makes the instance of one stream."""
        return functools.partial(self.cls, self.config)

    def route_config(self, value: Any) -> Any:
        """A typed_per_filter_config value as the class turns it (HttpFilter.route_config)."""
        return self.cls.route_config(value)


@dataclass
class CHttpFilter:
    """An http_filters entry that runs a C filter (an ``fp_http_filter`` table, see
    include/fastproxy_filter.h), e.g. built with cffi. ``table``: the table's address;
    ``keepalive``: whatever keeps that memory loaded (the cffi lib)."""

    name: str
    table: int
    config: Any = None
    keepalive: Any = None

    def config_json(self, value: Any) -> Optional[bytes]:
        """A config value as the JSON bytes the C filter's create hook parses (None: none)."""
        return None if value is None else json.dumps(value).encode()


@dataclass
class NativeHttpFilter:
    """An http_filters entry that runs a filter compiled into the core (no GIL):
    ``kind`` is its Envoy name (envoy.filters.http.cors, ...); ``config`` its parsed config."""

    name: str
    kind: str
    config: Any = None


HTTP_FILTER_SPECS = (PythonHttpFilter, CHttpFilter, NativeHttpFilter)

ENTRY_POINT_GROUP = "fastproxy.filters"
_registry: dict = {}


def register_http_filter(name: str, cls: type) -> None:
    """Make ``cls`` available to configs as ``filter: <name>``."""
    if not (isinstance(cls, type) and issubclass(cls, HttpFilter)):
        raise TypeError(f"{cls!r} is not a fastproxy.HttpFilter subclass")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    _registry[name] = cls


def lookup_http_filter(name: str) -> Optional[type]:
    """A registered filter, else one a package provides in the ``fastproxy.filters`` entry
    point group (``[project.entry-points."fastproxy.filters"] add_user = "pkg.mod:AddUser"``)."""
    cls = _registry.get(name)
    if cls is not None:
        return cls
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            _registry[name] = cls
            return cls
    return None



_c_registry: dict = {}


def _address(table: Any) -> int:
    if isinstance(table, int):
        return table
    try:                                    # a cffi pointer
        import cffi
        return int(cffi.FFI().cast("uintptr_t", table))
    except Exception:
        raise TypeError(f"expected an int address or a cffi pointer, got {table!r}") from None


def register_c_filter(name: str, table: Any, keepalive: Any = None) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    addr = _address(table)
    if not addr:
        raise ValueError("the filter table's address is NULL")
    _c_registry[name] = (addr, keepalive if keepalive is not None else table)


def lookup_c_filter(name: str):
    """(address, keepalive) of a registered C filter, or None."""
    return _c_registry.get(name)


def c_filter_name(table: int):
    """The name the C filter table at address ``table`` is registered under, or None."""
    return next((name for name, (addr, _) in _c_registry.items() if addr == table), None)


def get_include() -> str:
    """The directory holding fastproxy_filter.h (the C filter ABI), for cffi/C builds."""
    import os
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")
