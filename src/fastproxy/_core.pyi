# Type stub of the compiled core's public classes (those fastproxy re-exports). The core is
# Cython; its signatures carry C types that Python's introspection does not show, so type
# checkers and editors read them here. Everything else in fastproxy._core is internal.
from typing import Any, Iterator, Optional, Union

_Bytes = Union[bytes, bytearray, memoryview]
_Field = Union[str, bytes]
_Address = tuple[str, int]

class Buffer:
    """The bytes a network filter is handed: a view of the connection's pending data, valid
    only during the filter call; ``memoryview(data)`` is zero-copy and writable."""
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def drain(self, n: int) -> None:
        """Drop the first n bytes."""
    def prepend(self, data: _Bytes) -> None:
        """Put bytes before the first one."""
    def append(self, data: _Bytes) -> None:
        """Put bytes after the last one."""
    def replace(self, data: _Bytes) -> None:
        """Replace all the bytes with ``data``."""
    def clear(self) -> None:
        """Drop all the bytes."""

class Body(Buffer):
    """Body bytes passing through an HTTP filter hook (a Buffer); valid during the hook, or
    until an ``async def`` hook's coroutine finishes."""

class Connection:
    """``self.connection`` of a NetworkFilter: the downstream connection it serves."""
    @property
    def id(self) -> int:
        """The connection's number, unique in the process."""
    @property
    def remote_address(self) -> _Address:
        """The client's (ip, port)."""
    @property
    def local_address(self) -> _Address:
        """The listener's (ip, port) the client connected to."""
    @property
    def closed(self) -> bool:
        """True once the connection is closed."""
    def continue_reading(self) -> None:
        """Resume a read chain stopped with STOP_ITERATION (from any thread)."""
    def continue_writing(self) -> None:
        """Resume a write chain stopped with STOP_ITERATION (from any thread)."""
    def close(self) -> None:
        """Close the connection (both sides), after this call returns."""
    def write(self, data: _Bytes) -> None:
        """Send bytes to the downstream, after what the upstream already sent to it; they do
        not pass through the write filters."""

class Headers:
    """An HTTP header map: case-insensitive, ordered, several values per name."""
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    def __getitem__(self, name: _Field) -> str: ...
    def __setitem__(self, name: _Field, value: _Field) -> None: ...
    def __delitem__(self, name: _Field) -> None: ...
    def __contains__(self, name: object) -> bool: ...
    def get_all(self, name: _Field) -> list[str]:
        """Every value of ``name``, in order."""
    def get(self, name: _Field, default: Any = None) -> Optional[str]:
        """The first value of ``name``, or ``default``."""
    def add(self, name: _Field, value: _Field) -> None:
        """Add a value (keeps the ones already there)."""
    def remove(self, name: _Field) -> int:
        """Remove every value of ``name``; how many there were."""
    def pop(self, name: _Field, default: Any = None) -> Optional[str]:
        """Remove ``name``; its first value, or ``default``."""
    def items(self) -> list[tuple[str, str]]:
        """(name, value) pairs as str, in order, pseudo-headers first."""
    def raw_items(self) -> list[tuple[bytes, bytes]]:
        """(name, value) pairs as bytes."""
    def keys(self) -> list[str]:
        """The names, in order (a name with several values comes once per value)."""

class StreamInfo:
    """What is known about a stream: a snapshot taken when it is read."""
    @property
    def downstream_remote_address(self) -> Optional[_Address]:
        """The client's (ip, port)."""
    @property
    def start_time(self) -> float:
        """time.time() when the request head arrived."""
    @property
    def duration(self) -> float:
        """Seconds since then (the whole stream in on_log)."""
    @property
    def response_code(self) -> int:
        """The response status; 0 before a response."""
    @property
    def upstream_host(self) -> Optional[str]:
        """"ip:port" of the upstream host, or None."""
    @property
    def upstream_cluster(self) -> Optional[str]:
        """The cluster the request went to, or None."""
    @property
    def route_name(self) -> Optional[str]:
        """The matched route's name, or None."""
    @property
    def bytes_received(self) -> int:
        """Request body bytes."""
    @property
    def bytes_sent(self) -> int:
        """Response body bytes sent downstream."""
    @property
    def response_flags(self) -> str:
        """Envoy's short codes ("UF,URX"), "-" if none."""
    @property
    def protocol(self) -> str:
        """The downstream protocol ("HTTP/1.1", "HTTP/1.0")."""
    @property
    def requested_server_name(self) -> Optional[str]:
        """The SNI of a TLS connection, or None."""
    @property
    def ssl_connection(self) -> Optional["SslConnectionInfo"]:
        """The downstream connection's TLS facts; None on plaintext."""


class SslConnectionInfo:
    """A TLS connection's facts (Envoy's Ssl::ConnectionInfo); certificate facts are None
    (lists empty) when that certificate is absent."""
    tls_version: str
    ciphersuite: str
    session_id: Optional[str]
    peer_certificate_presented: bool
    subject_peer_certificate: Optional[str]
    subject_local_certificate: Optional[str]
    uri_san_peer_certificate: list[str]
    uri_san_local_certificate: list[str]
    dns_sans_peer_certificate: list[str]
    dns_sans_local_certificate: list[str]
    sha256_peer_certificate_digest: Optional[str]
    serial_number_peer_certificate: Optional[str]
    valid_from_peer_certificate: Optional[int]
    expiration_peer_certificate: Optional[int]
    url_encoded_pem_encoded_peer_certificate: Optional[str]

class HttpFilterCallbacks:
    """``self.callbacks`` of an HttpFilter: what a filter can do to its stream."""
    @property
    def index(self) -> int:
        """This filter's position in the chain."""
    @property
    def filter_state(self) -> dict:
        """A dict shared by every Python filter of the stream."""
    @property
    def route_config(self) -> Any:
        """This filter's typed_per_filter_config for the stream's route, or None."""
    @property
    def route_name(self) -> Optional[str]:
        """The stream's route's name, or None."""
    @property
    def cluster(self) -> Optional[str]:
        """The cluster the request goes to (None: no route / a direct response); settable in
        a decode hook before the router runs."""
    @cluster.setter
    def cluster(self, name: str) -> None: ...
    @property
    def stream_info(self) -> StreamInfo:
        """A snapshot of the stream's StreamInfo."""
    def continue_decoding(self) -> None:
        """Resume the request after STOP_ITERATION / STOP_AND_BUFFER (any thread)."""
    def continue_encoding(self) -> None:
        """Resume the response (any thread)."""
    def send_local_reply(self, status: int, body: _Bytes = b"",
                         headers: Union[dict[_Field, _Field], list[tuple[_Field, _Field]], None] = None) -> None:
        """Answer the request from the proxy: the stream ends with this response."""
    def clear_route_cache(self) -> None:
        """Headers changed: choose the route again before the router runs."""
    def add_decoded_data(self, data: _Bytes) -> None:
        """Add bytes to the request body being filtered (from a decode hook)."""
    def add_encoded_data(self, data: _Bytes) -> None:
        """Add bytes to the response body being filtered (from an encode hook)."""
