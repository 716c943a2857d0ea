"""A raw HTTP/2 client for the HTTP/2 tests: exactly the frames a test names, valid or not.

Frames are written by hand (the 9-byte frame header + payload, RFC 9113 section 4.1), so a
test can send what a conforming stack refuses to produce (DATA on stream 0, a WINDOW_UPDATE
past 2^31-1, a pseudo-header after a regular one, CONTINUATION without end). Header blocks
are compressed with the `hpack` encoder the `h2` package is built on, or given as raw HPACK
bytes (an HPACK bomb). Error codes are `h2.errors.ErrorCodes`.

Everything the peer sends back is read frame by frame (`H2Client.read`) into an `Answer`:
the GOAWAY (last stream id, error code), the RST_STREAMs, each stream's response head and
body, the peer's SETTINGS, and how the connection ended (EOF or reset). The client ACKs the
peer's SETTINGS unless told not to, and never answers PINGs unless told to.

Also here: the proxies under test, each a process of its own started on one Envoy v3
bootstrap (`h2_proxy_yaml`): the real Envoy 1.40 (`start_envoy`) and fastproxy's command
line (`start_fastproxy_process`), in front of an HTTP/1.1 upstream (tests/http_upstreams.py),
with `ProxyUnderTest.stats()` reading the admin's /stats as JSON (the same names in both).
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field

import hpack
from h2.errors import ErrorCodes

from conftest import admin_get, cpu_seconds, envoy_yaml, http_listener, rss_bytes, start_envoy, \
    start_fastproxy_process, static_cluster

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = {DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
               SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
               WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION"}
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# SETTINGS identifiers (RFC 9113 section 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
MAX_WINDOW = (1 << 31) - 1


# --------------------------------------------------------------------------- frames

def frame(ftype: int, flags: int, stream: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """One frame: the 9-byte header (24-bit length, type, flags, R bit + 31-bit stream id)
    and the payload. ``length`` overrides the length field (a frame that lies about it)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + struct.pack(">BBI", ftype, flags, stream & 0xFFFFFFFF) + payload


def settings_frame(pairs=(), ack: bool = False) -> bytes:
    """SETTINGS with ``pairs`` of (identifier, value), in order (repeats allowed)."""
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def headers_frame(stream: int, block: bytes, end_stream: bool = True, end_headers: bool = True,
                  priority: tuple | None = None) -> bytes:
    """HEADERS carrying the HPACK ``block``; ``priority`` = (depends_on, weight 1..256,
    exclusive) adds the PRIORITY fields."""
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    if priority is not None:
        dep, weight, exclusive = priority
        block = struct.pack(">IB", dep | (0x80000000 if exclusive else 0), weight - 1) + block
        flags |= PRIORITY_FLAG
    return frame(HEADERS, flags, stream, block)


def continuation_frame(stream: int, block: bytes, end_headers: bool = True) -> bytes:
    return frame(CONTINUATION, END_HEADERS if end_headers else 0, stream, block)


def data_frame(stream: int, data: bytes = b"", end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, stream, data)


def rst_stream_frame(stream: int, code: int = ErrorCodes.CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream, struct.pack(">I", code))


def ping_frame(data: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data)


def priority_frame(stream: int, depends_on: int = 0, weight: int = 16, exclusive: bool = False) -> bytes:
    return frame(PRIORITY, 0, stream, struct.pack(">IB", depends_on | (0x80000000 if exclusive else 0), weight - 1))


def window_update_frame(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", increment & 0xFFFFFFFF))


def goaway_frame(last_stream: int = 0, code: int = ErrorCodes.NO_ERROR, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream, code) + debug)


def request_headers(method="GET", path="/", authority="h.example", scheme="http", extra=()) -> list:
    """A request's header list: the four pseudo-headers then ``extra`` (name, value) pairs."""
    return [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path), *extra]


def hpack_literal(name: bytes, value: bytes, index: bool = False) -> bytes:
    """One header field as an HPACK literal with a literal name, no Huffman (RFC 7541 6.2):
    'with incremental indexing' (``index``) or 'without indexing'. Names are not lower-cased
    nor checked: whatever bytes the test gives go on the wire."""
    return (b"\x40" if index else b"\x00") + hpack_string(name) + hpack_string(value)


def hpack_string(s: bytes) -> bytes:
    return hpack_int(len(s), 7, 0) + s


def hpack_int(n: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1 integer with a ``prefix_bits`` prefix; ``first`` holds the bits above it."""
    top = (1 << prefix_bits) - 1
    if n < top:
        return bytes([first | n])
    out = bytearray([first | top])
    n -= top
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def hpack_indexed(index: int) -> bytes:
    """An indexed header field (RFC 7541 6.1): 62 is the newest dynamic table entry."""
    return hpack_int(index, 7, 0x80)


# --------------------------------------------------------------------------- answers

@dataclass
class GoAway:
    last_stream_id: int
    error_code: int
    debug: bytes = b""

    def __repr__(self):
        return f"GOAWAY({_code_name(self.error_code)}, last_stream_id={self.last_stream_id}, debug={self.debug[:60]!r})"


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


@dataclass
class Answer:
    """What the peer sent on one connection, as read so far."""
    frames: list = field(default_factory=list)          # (type, flags, stream, payload)
    goaways: list = field(default_factory=list)         # every GOAWAY, in order
    resets: dict = field(default_factory=dict)          # stream -> RST_STREAM error code
    heads: dict = field(default_factory=dict)           # stream -> [(name, value)] of the first head
    trailers: dict = field(default_factory=dict)        # stream -> [(name, value)]
    bodies: dict = field(default_factory=dict)          # stream -> bytes
    ended: set = field(default_factory=set)             # streams the peer ended (END_STREAM)
    settings: dict = field(default_factory=dict)        # the peer's SETTINGS values
    settings_acks: int = 0
    ping_acks: int = 0
    window_updates: dict = field(default_factory=dict)  # stream -> sum of increments
    closed: str | None = None                           # None (open), "eof" or "reset"
    bytes_read: int = 0

    @property
    def goaway(self) -> GoAway | None:
        """The last GOAWAY (Envoy's drain sends a NO_ERROR one before the final one)."""
        return self.goaways[-1] if self.goaways else None

    def status(self, stream: int) -> int | None:
        head = self.heads.get(stream)
        for k, v in head or ():
            if k == ":status":
                return int(v)
        return None

    def count(self, ftype: int) -> int:
        return sum(1 for f in self.frames if f[0] == ftype)

    def kind(self, stream: int | None = None) -> tuple:
        """The class of the answer, for comparing two peers: the connection-level error if
        there was one ("GOAWAY", code name, closed?), else the stream's answer
        ("RST_STREAM", code name) or ("status", n), else ("none",)."""
        ga = next((g for g in self.goaways if g.error_code != ErrorCodes.NO_ERROR), None)
        if ga is not None:
            return ("GOAWAY", _code_name(ga.error_code), self.closed is not None)
        if stream is not None and stream in self.resets:
            return ("RST_STREAM", _code_name(self.resets[stream]))
        if stream is not None and self.status(stream) is not None:
            return ("status", self.status(stream))
        if self.closed:
            return ("closed",)
        return ("none",)

    def summary(self) -> str:
        counts = {}
        for f in self.frames:
            counts[FRAME_NAMES.get(f[0], f[0])] = counts.get(FRAME_NAMES.get(f[0], f[0]), 0) + 1
        return (f"goaways={self.goaways} resets={ {s: _code_name(c) for s, c in self.resets.items()} } "
                f"statuses={ {s: self.status(s) for s in self.heads} } frames={counts} closed={self.closed} "
                f"bytes={self.bytes_read}")

    __repr__ = summary


class H2Client:
    """One HTTP/2 connection (prior knowledge, h2c) on a real socket. ``settings``: the
    client's SETTINGS pairs sent after the preface; ``preface=False`` sends nothing, for a
    test that writes the start itself. ``rcvbuf``: SO_RCVBUF before connecting (a small one
    makes a client that does not read stall the peer's writes sooner)."""

    def __init__(self, addr, timeout: float = 5.0, settings=(), preface: bool = True, rcvbuf: int | None = None,
                 auto_ack: bool = True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(tuple(addr))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 30
        self.answer = Answer()
        self.auto_ack = auto_ack
        self.send_failed: str | None = None      # why a send stopped (the peer closed/reset)
        self.sent_bytes = 0
        self._buf = b""
        self._block: tuple | None = None          # (stream, flags, bytes) of a header block in progress
        if preface:
            self.send(PREFACE + settings_frame(settings))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending ------------------------------------------------------------------------

    def encode(self, headers) -> bytes:
        """An HPACK block of (name, value) pairs with this connection's encoder (its dynamic
        table kept in step with what was sent). Names go as given (no lower-casing)."""
        return self.encoder.encode([(k.encode() if isinstance(k, str) else k,
                                     v.encode() if isinstance(v, str) else v) for k, v in headers])

    def send(self, *frames: bytes) -> bool:
        """Write the frames; False (and ``send_failed`` set) when the peer closed or reset
        the connection before all of them were written."""
        data = b"".join(frames)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.send_failed = type(e).__name__
            return False
        except socket.timeout:
            self.send_failed = "timeout"
            return False
        self.sent_bytes += len(data)
        return True

    def request(self, stream: int, headers=None, body: bytes | None = None, end_stream: bool = True) -> bytes:
        """The frames of one request (HEADERS, then one DATA if ``body``), not yet sent."""
        block = self.encode(headers if headers is not None else request_headers())
        if body is None:
            return headers_frame(stream, block, end_stream=end_stream)
        return headers_frame(stream, block, end_stream=False) + data_frame(stream, body, end_stream=end_stream)

    # -- reading ------------------------------------------------------------------------

    def read(self, timeout: float = 3.0, until=None, quiet: float | None = None) -> Answer:
        """Read frames into ``self.answer`` until ``until(answer)`` holds, the peer closes,
        or ``timeout`` passes (or, with ``quiet``, nothing arrives for that long). The
        answer is returned either way: the test asserts on it."""
        a = self.answer
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while a.closed is None and not (until is not None and until(a)):
            now = time.monotonic()
            if now >= deadline or (quiet is not None and now - last >= quiet):
                break
            wait = deadline - now if quiet is None else min(deadline - now, quiet - (now - last))
            self.sock.settimeout(max(wait, 0.001))
            try:
                d = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except ConnectionResetError:
                a.closed = "reset"
                break
            if not d:
                a.closed = "eof"
                break
            last = time.monotonic()
            a.bytes_read += len(d)
            self._buf += d
            self._parse()
        return a

    def read_until_closed(self, timeout: float = 5.0) -> Answer:
        return self.read(timeout, until=lambda a: a.closed is not None)

    def _parse(self):
        a = self.answer
        while len(self._buf) >= 9:
            n = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < 9 + n:
                return
            ftype, flags, stream = self._buf[3], self._buf[4], int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
            payload, self._buf = self._buf[9:9 + n], self._buf[9 + n:]
            a.frames.append((ftype, flags, stream, payload))
            self._on_frame(ftype, flags, stream, payload)

    def _on_frame(self, ftype, flags, stream, payload):
        a = self.answer
        if ftype == SETTINGS:
            if flags & ACK:
                a.settings_acks += 1
            else:
                for i in range(0, len(payload) - 5, 6):
                    k, v = struct.unpack(">HI", payload[i:i + 6])
                    a.settings[k] = v
                if self.auto_ack:
                    self.send(settings_frame(ack=True))
        elif ftype == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            a.goaways.append(GoAway(last & 0x7FFFFFFF, code, payload[8:]))
        elif ftype == RST_STREAM:
            a.resets[stream] = struct.unpack(">I", payload[:4])[0]
        elif ftype == PING:
            if flags & ACK:
                a.ping_acks += 1
        elif ftype == WINDOW_UPDATE:
            a.window_updates[stream] = a.window_updates.get(stream, 0) + (struct.unpack(">I", payload)[0] & 0x7FFFFFFF)
        elif ftype == DATA:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            a.bodies[stream] = a.bodies.get(stream, b"") + payload
            if flags & END_STREAM:
                a.ended.add(stream)
        elif ftype == HEADERS:
            if flags & PADDED:
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._block = (stream, flags, payload)
            if flags & END_HEADERS:
                self._end_block()
        elif ftype == CONTINUATION and self._block is not None:
            s, f, block = self._block
            self._block = (s, f, block + payload)
            if flags & END_HEADERS:
                self._end_block()

    def _end_block(self):
        a = self.answer
        stream, flags, block = self._block
        self._block = None
        try:
            fields = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                      for k, v in self.decoder.decode(block)]
        except Exception as e:          # a peer's bad HPACK is an answer too; keep reading
            fields = [("x-harness-hpack-error", repr(e))]
        if stream in a.heads and not any(k == ":status" and v.startswith("1") for k, v in a.heads[stream]):
            a.trailers[stream] = fields
        else:
            a.heads[stream] = fields
        if flags & END_STREAM:
            a.ended.add(stream)


# --------------------------------------------------------------------------- proxies

def h2_proxy_yaml(upstream_port: int, stat_prefix: str = "h2", hcm: dict | None = None) -> str:
    """The bootstrap both proxies run: one listener "web" with an HTTP connection manager
    (codec_type AUTO: HTTP/1.1, or HTTP/2 with prior knowledge) answering /direct itself (a
    204: one HEADERS frame per request, no upstream) and routing every other path to the
    HTTP/1.1 cluster "up"; ``hcm``: further HttpConnectionManager fields
    (http2_protocol_options, common_http_protocol_options, ...)."""
    fields = {"codec_type": "AUTO", **(hcm or {})}
    routes = [{"match": {"prefix": "/direct"}, "direct_response": {"status": 204}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    return envoy_yaml([http_listener(routes,
                                     stat_prefix=stat_prefix, **fields)],
                      [static_cluster("up", [upstream_port], connect_timeout="1s")])


class ProxyUnderTest:
    """One proxy process (``name`` "envoy" or "fastproxy") on ``yaml``: ``addr`` its
    listener, ``admin`` its admin address, ``pid`` its process."""

    def __init__(self, name: str, yaml_text: str, tmp_path):
        self.name = name
        start = start_envoy if name == "envoy" else start_fastproxy_process
        # Under `make test-asan` the fastproxy child inherits the sanitizer; its stderr is not
        # kept, so its reports go to files here, read by close().
        self.asan_log = tmp_path / "asan"
        saved = os.environ.get("ASAN_OPTIONS")
        if name != "envoy" and "libasan" in os.environ.get("LD_PRELOAD", ""):
            os.environ["ASAN_OPTIONS"] = f"{saved or ''}:log_path={self.asan_log}".lstrip(":")
        try:
            self.proc, self.admin, self.addr = start(yaml_text, tmp_path)
        finally:
            if saved is None:
                os.environ.pop("ASAN_OPTIONS", None)
            else:
                os.environ["ASAN_OPTIONS"] = saved
        self.pid = self.proc.pid

    def stats(self, pattern: str = r"^(http2\.|http\.)") -> dict:
        """Counters and gauges whose name matches ``pattern``, from the admin's JSON /stats
        (a name never written may be absent: read it with .get(name, 0))."""
        from urllib.parse import quote
        doc = json.loads(admin_get(self.admin, f"/stats?format=json&filter={quote(pattern)}"))
        return {s["name"]: s["value"] for s in doc["stats"] if "name" in s}

    def stat(self, name: str) -> int:
        import re
        return self.stats("^" + re.escape(name) + "$").get(name, 0)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def serves(self, path: str = "/after", timeout: float = 5.0) -> int | None:
        """The status of one ordinary HTTP/2 GET on a fresh connection (None: no answer)."""
        with H2Client(self.addr, timeout=timeout) as c:
            c.send(c.request(1, request_headers(path=path)))
            a = c.read(timeout, until=lambda a: 1 in a.ended or 1 in a.resets)
            return a.status(1)

    def close(self):
        """Stop the process; AssertionError if it left a sanitizer report."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        reports = [f.read_text() for f in self.asan_log.parent.glob(self.asan_log.name + ".*")]
        bad = [r for r in reports if "ERROR: AddressSanitizer" in r or "ERROR: LeakSanitizer" in r]
        assert not bad, f"{self.name}: sanitizer report:\n{bad[0][:4000]}"

