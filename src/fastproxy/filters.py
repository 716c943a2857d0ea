"""Network (L4) filter interface, Envoy style.

A connection's read filters run in the order they are configured; its write filters run
in reverse. Every hook has a default that does nothing and lets the bytes through, so a
subclass overrides only what it needs::

    class Upper(fastproxy.NetworkFilter):
        def on_data(self, data, end_stream):
            data.replace(bytes(data).upper())
            return fastproxy.FilterStatus.CONTINUE

Hooks run on the worker thread that owns the connection, with the GIL held.
``data`` is a :class:`fastproxy.Buffer`: a zero-copy view of the connection's pending
bytes, valid only during the call (copy with ``bytes(data)`` to keep them).
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ._core import Buffer, Connection


class FilterStatus(enum.IntEnum):
    """What the filter chain does after a hook returns (Envoy's Network::FilterStatus)."""

    CONTINUE = 0
    """Pass the (possibly changed) bytes to the next filter."""
    STOP_ITERATION = 1
    """Hold the bytes here; later filters do not see them until the filter calls
    ``self.connection.continue_reading()`` (read path) or ``continue_writing()``."""
    STOP_AND_BUFFER = 2
    """HTTP data hooks: collect the body (up to the listener's buffer limit) and call the
    hook again with all of it and ``end_stream=True``. Beyond the limit: 413 on the request
    path, 500 on the response path."""
    STOP_NO_BUFFER = 3
    """HTTP data hooks: the filter took the bytes; nothing is passed on and nothing is kept."""


class NetworkFilter:
    """Base class of Python network filters. One instance per connection.

    ``self.connection`` is set before ``on_new_connection`` and offers
    ``continue_reading()``, ``continue_writing()`` (both callable from any thread),
    ``close()``, ``write(data)`` (inject bytes to the downstream), ``remote_address``,
    ``local_address`` and ``id``.
    """

    connection: Optional[Connection] = None

    def __init__(self, config: Any = None) -> None:
        self.config = config

    def on_new_connection(self) -> FilterStatus:
        """A downstream connection was accepted. STOP_ITERATION delays the upstream
        connection (and later filters) until ``continue_reading()``."""
        return FilterStatus.CONTINUE

    def on_data(self, data: Buffer, end_stream: bool) -> FilterStatus:
        """Bytes read from the downstream, on their way upstream."""
        return FilterStatus.CONTINUE

    def on_write(self, data: Buffer, end_stream: bool) -> FilterStatus:
        """Bytes from the upstream, on their way to the downstream."""
        return FilterStatus.CONTINUE

    def on_close(self) -> None:
        """The connection is closed (either side); the instance is then dropped."""
