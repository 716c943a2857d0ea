"""Upstream (and peer) servers used by the integration tests.

Every server listens on an ephemeral loopback port and runs in background threads, never in
the test's main thread:

* :class:`EchoServer` - one selector thread serving any number of connections. It echoes
  bytes back, propagates half-close (after the peer's FIN and once its output is flushed it
  shuts its write side) and can send a banner first, so a client can tell which upstream it
  reached.
* :class:`ThreadedServer` - an accept thread plus one thread per connection running a
  *handler* ``handler(sock, server)``; the handlers below script the behaviours the tests
  need (sink with checksum, source, duplex stream, reset mid-stream, half-close peers).
  Whatever a handler returns is appended to ``server.results``; exceptions go to
  ``server.errors``.

Byte streams are generated from a seeded PRNG one chunk at a time (never held in memory as a
whole) and checksummed with SHA-256 at both ends.
"""
from __future__ import annotations

import errno
import hashlib
import random
import selectors
import socket
import struct
import threading
import time

CHUNK = 1 << 20

__all__ = [
    "CHUNK", "prng_chunks", "StreamSender", "StreamReceiver", "EchoServer", "ThreadedServer",
    "BlackholeServer", "refused_port", "rst_close",
    "sink_handler", "gated_sink_handler", "source_handler", "duplex_handler", "reset_after_handler",
    "reply_after_eof_handler", "close_write_first_handler", "hold_handler",
]


# --------------------------------------------------------------------------- byte streams

def prng_chunks(seed: int, total: int, chunk: int = CHUNK):
    """Yield ``total`` pseudo-random bytes (deterministic for ``seed``) in ``chunk``-sized pieces."""
    rng = random.Random(seed)
    left = total
    while left > 0:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def rst_close(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class StreamSender:
    """Send a PRNG stream on a socket; keeps the SHA-256 and byte count of what was sent.

    ``sent`` is updated after every chunk so another thread can watch progress. With
    ``shut_wr`` the write side is shut down once everything is sent.
    """

    def __init__(self, sock, seed, total, chunk=256 * 1024, shut_wr=True, gate=None):
        self.sock = sock
        self.seed = seed
        self.total = total
        self.chunk = chunk
        self.shut_wr = shut_wr
        self.gate = gate            # optional threading.Event waited before each chunk
        self.sent = 0
        self.sha = hashlib.sha256()
        self.error = None
        self.done = threading.Event()

    def run(self):
        try:
            for piece in prng_chunks(self.seed, self.total, self.chunk):
                if self.gate is not None:
                    self.gate.wait()
                self.sock.sendall(piece)
                self.sha.update(piece)
                self.sent += len(piece)
            if self.shut_wr:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = e
        finally:
            self.done.set()

    def start(self) -> "StreamSender":
        threading.Thread(target=self.run, daemon=True, name="stream-sender").start()
        return self

    @property
    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class StreamReceiver:
    """Read a socket until EOF, hashing everything; ``received`` tracks progress.

    ``gate`` (a threading.Event), when given, must be set for reading to go on: clearing it
    pauses the reader (the slow-reader tests use that).
    """

    def __init__(self, sock, bufsize=CHUNK, gate=None):
        self.sock = sock
        self.buf = bytearray(bufsize)
        self.gate = gate
        self.received = 0
        self.sha = hashlib.sha256()
        self.error = None
        self.eof = False
        self.done = threading.Event()

    def run(self):
        view = memoryview(self.buf)
        try:
            while True:
                if self.gate is not None:
                    self.gate.wait()
                n = self.sock.recv_into(view)
                if n == 0:
                    self.eof = True
                    break
                self.sha.update(view[:n])
                self.received += n
        except OSError as e:
            self.error = e
        finally:
            view.release()
            self.done.set()

    def start(self) -> "StreamReceiver":
        threading.Thread(target=self.run, daemon=True, name="stream-receiver").start()
        return self

    @property
    def hexdigest(self) -> str:
        return self.sha.hexdigest()


# --------------------------------------------------------------------------- servers

def _listen_socket(host: str, backlog: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(backlog)
    return s


class EchoServer:
    """Selector-based echo server (one thread, any number of connections).

    ``banner``: bytes sent to every new connection before echoing.
    ``record``: keep every connection's received bytes in ``self.received`` (small tests only).
    Counters: ``accepted`` (total), ``active`` (open now), ``rx_bytes``.
    """

    def __init__(self, host="127.0.0.1", banner: bytes = b"", record=False, backlog=4096, name=None):
        self.name = name or f"echo-{id(self):x}"
        self.banner = banner
        self.record = record
        self.sock = _listen_socket(host, backlog)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.port = self.address[1]
        self.accepted = 0
        self.active = 0
        self.rx_bytes = 0
        self.received: list = []        # bytearray per connection, in accept order (record=True)
        self.peers: list = []           # the proxy-side address of each accepted connection
        self.errors: list = []
        self._lock = threading.Lock()
        self._closing = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, daemon=True, name=self.name)
        self._thread.start()

    # one state object per connection
    class _Conn:
        __slots__ = ("sock", "out", "eof", "rec", "events")

    def _accept(self):
        while True:
            try:
                c, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                    self.errors.append(e)
                    return
                raise
            c.setblocking(False)
            st = self._Conn()
            st.sock = c
            st.out = bytearray(self.banner)
            st.eof = False
            st.rec = None
            if self.record:
                st.rec = bytearray()
                self.received.append(st.rec)
            with self._lock:
                self.accepted += 1
                self.active += 1
                self.peers.append(peer)
            st.events = selectors.EVENT_READ | (selectors.EVENT_WRITE if st.out else 0)
            self._sel.register(c, st.events, st)

    def _drop(self, st):
        try:
            self._sel.unregister(st.sock)
        except (KeyError, ValueError):
            pass
        st.sock.close()
        with self._lock:
            self.active -= 1

    def _service(self, st, mask):
        try:
            if mask & selectors.EVENT_READ and not st.eof:
                data = st.sock.recv(65536)
                if data:
                    self.rx_bytes += len(data)
                    if st.rec is not None:
                        st.rec += data
                    st.out += data
                else:
                    st.eof = True
            if st.out:
                n = st.sock.send(st.out)
                del st.out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(st)          # reset by the peer, etc.
            return
        if st.eof and not st.out:
            try:
                st.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._drop(st)
            return
        # Backpressure: stop reading while there is output pending.
        want = selectors.EVENT_WRITE if st.out else selectors.EVENT_READ
        if st.eof:
            want = selectors.EVENT_WRITE
        if want != st.events:
            st.events = want
            self._sel.modify(st.sock, want, st)

    def _loop(self):
        while not self._closing:
            for key, mask in self._sel.select(timeout=0.5):
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass
                else:
                    self._service(key.data, mask)
        for key in list(self._sel.get_map().values()):
            if isinstance(key.data, EchoServer._Conn):
                key.data.sock.close()
        self._sel.close()

    def close(self):
        if self._closing:
            return
        self._closing = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()


class ThreadedServer:
    """An accept thread plus one thread per connection running ``handler(sock, server)``."""

    def __init__(self, handler, host="127.0.0.1", backlog=1024, name=None):
        self.handler = handler
        self.name = name or getattr(handler, "__name__", "server")
        self.sock = _listen_socket(host, backlog)
        self.address = self.sock.getsockname()
        self.port = self.address[1]
        self.accepted = 0
        self.results: list = []
        self.errors: list = []
        self.state: dict = {}           # free-form, for handlers that report progress
        self.conns: set = set()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._closing = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=self.name)
        self._thread.start()

    def _accept_loop(self):
        while not self._closing:
            try:
                c, peer = self.sock.accept()
            except OSError:
                if self._closing:
                    return
                time.sleep(0.01)
                continue
            with self.lock:
                self.accepted += 1
                self.conns.add(c)
            threading.Thread(target=self._run, args=(c,), daemon=True, name=self.name + "-conn").start()

    def _run(self, c):
        try:
            result = self.handler(c, self)
            with self.cond:
                self.results.append(result)
                self.cond.notify_all()
        except Exception as e:          # noqa: BLE001 - reported to the test
            with self.cond:
                self.errors.append(e)
                self.cond.notify_all()
        finally:
            with self.lock:
                self.conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)


class BlackholeServer:
    """A listening socket that never accepts, with its accept queue filled up.

    Once the queue is full the kernel drops further SYNs, so a connect() to it stays in
    SYN_SENT: a stand-in for an unreachable host that works on loopback.
    """

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(0)
        self.address = self.sock.getsockname()
        self.port = self.address[1]
        self.fillers = []
        self.full = False
        for _ in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            self.fillers.append(s)
            s.connect_ex(self.address)
            sel = selectors.DefaultSelector()
            sel.register(s, selectors.EVENT_WRITE)
            ready = sel.select(timeout=0.3)
            sel.close()
            if not ready:               # this one hangs in SYN_SENT: the queue is full
                self.full = True
                break
        if not self.full:
            raise RuntimeError("could not fill the accept queue of the blackhole listener")

    def close(self):
        for s in self.fillers:
            s.close()
        self.sock.close()


def refused_port(host="127.0.0.1"):
    """A (socket, port) pair: the port is bound but not listening, so connects are refused.

    Keep the socket open while the port must stay refused (nobody else can take it).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    return s, s.getsockname()[1]


# --------------------------------------------------------------------------- handlers

def sink_handler(sock, server):
    """Read until EOF; record the byte count and SHA-256 of what arrived."""
    r = StreamReceiver(sock)
    r.run()
    return {"n": r.received, "sha": r.hexdigest, "error": r.error, "eof": r.eof}


def gated_sink_handler(gate, rcvbuf=None):
    """Like sink_handler, but reads only while ``gate`` (a threading.Event) is set; bytes
    received so far are in ``server.state['receiver'].received``."""

    def handler(sock, server):
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        r = StreamReceiver(sock, gate=gate)
        server.state["receiver"] = r
        r.run()
        return {"n": r.received, "sha": r.hexdigest, "error": r.error, "eof": r.eof}

    handler.__name__ = "gated_sink"
    return handler


def source_handler(seed, total, sndbuf=None, chunk=256 * 1024):
    """Send ``total`` PRNG bytes (progress in ``server.state['sent']``), then FIN, then
    drain the peer until EOF."""

    def handler(sock, server):
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        s = StreamSender(sock, seed, total, chunk=chunk)
        server.state["sender"] = s
        s.run()
        rest = 0
        try:
            while True:
                d = sock.recv(65536)
                if not d:
                    break
                rest += len(d)
        except OSError:
            pass
        return {"sent": s.sent, "sha": s.hexdigest, "error": s.error, "drained": rest}

    handler.__name__ = "source"
    return handler


def duplex_handler(seed, total):
    """Send ``total`` PRNG bytes while reading the peer's stream until EOF; record both
    checksums."""

    def handler(sock, server):
        snd = StreamSender(sock, seed, total, chunk=CHUNK).start()
        rcv = StreamReceiver(sock)
        rcv.run()
        snd.done.wait()
        return {"sent": snd.sent, "sent_sha": snd.hexdigest, "send_error": snd.error,
                "received": rcv.received, "received_sha": rcv.hexdigest, "recv_error": rcv.error}

    handler.__name__ = "duplex"
    return handler


def reset_after_handler(nbytes):
    """Send ``nbytes`` then close with an RST (SO_LINGER 0)."""

    def handler(sock, server):
        payload = b"r" * nbytes
        sock.sendall(payload)
        rst_close(sock)
        return {"sent": nbytes}

    handler.__name__ = "reset_after"
    return handler


def reply_after_eof_handler(payload: bytes):
    """Read until the peer's FIN, then send ``payload`` and close: the peer must still be
    able to receive after shutting its write side."""

    def handler(sock, server):
        got = bytearray()
        while True:
            d = sock.recv(65536)
            if not d:
                break
            got += d
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return {"received": bytes(got)}

    handler.__name__ = "reply_after_eof"
    return handler


def close_write_first_handler(payload: bytes):
    """Send ``payload``, shut the write side at once, then keep reading until EOF."""

    def handler(sock, server):
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            d = sock.recv(65536)
            if not d:
                break
            got += d
        return {"received": bytes(got)}

    handler.__name__ = "close_write_first"
    return handler


def hold_handler(sock, server):
    """Read until EOF or reset, recording how the connection ended ('eof' / 'reset')."""
    got = 0
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return {"end": "eof", "received": got}
            got += len(d)
            server.state["received"] = server.state.get("received", 0) + len(d)
    except ConnectionResetError:
        return {"end": "reset", "received": got}
