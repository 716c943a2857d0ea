"""Hot restart: a new fastproxy process takes over from a running one without refusing or
resetting a connection (Envoy's ``--restart-epoch`` / ``--base-id``, without its shared-memory
stats: each process keeps its own counters).

Each process with hot restart on listens on a Unix domain socket in the abstract namespace
named from its base id and restart epoch. A new process (epoch N+1) connects to epoch N's:

1. for each listener of its configuration it asks for the listening sockets (by listener
   name and configured address) and gets the very file descriptors (SCM_RIGHTS), one per
   worker of the parent; its workers accept on them (workers beyond the parent's bind their
   own sockets with SO_REUSEPORT). Taking the same sockets over, instead of binding new
   ones, keeps the connections queued in their accept queues: closing a listening socket
   with queued connections would reset them;
2. once its workers run, it tells the parent to drain: the parent stops accepting (it closes
   its own references; the sockets live on in the child), asks each open HTTP connection to
   close after its next response (``Connection: close``) and lets TCP connections finish;
   it exits with status 0 when its last connection ends, or at ``--parent-shutdown-time-s``
   after the hand-over, closing what is still open.

The messages are JSON objects, one per datagram of a SOCK_SEQPACKET socket, so that a
message and the descriptors sent with it arrive together.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Optional

log = logging.getLogger("fastproxy.hot_restart")

#: Envoy's defaults for the drain window and the parent's lifetime after a hand-over.
DEFAULT_PARENT_SHUTDOWN_TIME_S = 900
MAX_MESSAGE = 65536
#: How long a child waits for each answer of its parent.
PARENT_TIMEOUT_S = 10.0
#: --use-dynamic-base-id tries base ids from 0 up to this many.
DYNAMIC_BASE_IDS = 1 << 16


class HotRestartError(Exception):
    """Hot restart cannot proceed (no parent, base id in use, a protocol error)."""


def domain_socket_name(base_id: int, epoch: int) -> str:
    """The abstract-namespace address of the process at `epoch` under `base_id` (a leading
    NUL: no file to clean up after a crash)."""
    return f"\0fastproxy_hot_restart_{base_id}_{epoch}"


def _send(sock: socket.socket, msg: dict, fds: tuple = ()) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def _recv(sock: socket.socket, maxfds: int = 0) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, maxfds)
    if not data:
        for fd in fds:
            os.close(fd)
        raise HotRestartError("the other process closed the hot restart socket")
    try:
        msg = json.loads(data)
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise HotRestartError(f"bad hot restart message: {data[:80]!r}") from None
    return msg, fds


def _checked_listen_fd(fd: int) -> int:
    """A received descriptor, made what the core expects of a listening socket
    (non-blocking, close-on-exec), after checking it is one."""
    s = socket.socket(fileno=fd)
    try:
        if s.type != socket.SOCK_STREAM or not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise HotRestartError(f"fd {fd} from the parent is not a listening TCP socket")
        s.setblocking(False)
        s.set_inheritable(False)
    except BaseException:
        s.close()
        raise
    return s.detach()


class HotRestart:
    """This process's side of hot restart: the domain socket a later epoch connects to
    (``serve``), and, from epoch 1 on, the connection to the parent (``take_sockets``,
    ``drain_parent``)."""

    def __init__(self, base_id: int, epoch: int, parent_shutdown_time_s: float = DEFAULT_PARENT_SHUTDOWN_TIME_S,
                 use_dynamic_base_id: bool = False):
        self.epoch = epoch
        self.parent_shutdown_time_s = parent_shutdown_time_s
        self._parent: Optional[socket.socket] = None
        self._server: Optional[socket.socket] = None
        self._proxy: Any = None
        self._on_drained: Optional[Callable[[], None]] = None
        self._handed_over = threading.Event()
        if use_dynamic_base_id and epoch == 0:
            self.base_id = self._bind_dynamic(base_id)
        else:
            self.base_id = base_id
            self._server = self._bind(base_id)

    def _bind(self, base_id: int) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.bind(domain_socket_name(base_id, self.epoch))
        except OSError as e:
            s.close()
            raise HotRestartError(
                f"cannot bind the hot restart domain socket for base id {base_id}, epoch {self.epoch}: "
                f"{e.strerror or e} (another fastproxy uses this base id: see --base-id, "
                "--use-dynamic-base-id, --restart-epoch)") from None
        s.listen(1)
        return s

    def _bind_dynamic(self, start: int) -> int:
        for base_id in range(start, start + DYNAMIC_BASE_IDS):
            try:
                self._server = self._bind(base_id)
                return base_id
            except HotRestartError:
                continue
        raise HotRestartError(f"no free base id in {start}..{start + DYNAMIC_BASE_IDS - 1}")

    # ---- the child's side ----

    def connect_parent(self) -> None:
        """Epoch N > 0: connect to epoch N-1 of the same base id."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(PARENT_TIMEOUT_S)
        try:
            s.connect(domain_socket_name(self.base_id, self.epoch - 1))
        except OSError as e:
            s.close()
            raise HotRestartError(
                f"--restart-epoch {self.epoch}: no fastproxy of epoch {self.epoch - 1} with base id "
                f"{self.base_id} to take over from ({e.strerror or e}); start the first process "
                "with --restart-epoch 0 and the same --base-id") from None
        self._parent = s

    def take_sockets(self, listeners) -> dict[str, list[int]]:
        """The parent's listening sockets for each of `listeners` (model Listeners) it has:
        listener name -> fds (this process owns them)."""
        out: dict[str, list[int]] = {}
        try:
            for l in listeners:
                _send(self._parent, {"type": "pass_listen_sockets", "name": l.name,
                                     "address": [l.address, l.port]})
                msg, fds = _recv(self._parent, maxfds=1024)
                if msg.get("type") != "listen_sockets":
                    for fd in fds:
                        os.close(fd)
                    raise HotRestartError(f"unexpected answer from the parent: {msg!r}")
                if fds:
                    try:
                        out[l.name] = [_checked_listen_fd(fd) for fd in fds]
                    except BaseException:
                        for fd in fds:
                            try:
                                os.close(fd)
                            except OSError:
                                pass
                        raise
        except BaseException:
            for fds in out.values():
                for fd in fds:
                    os.close(fd)
            raise
        return out

    def drain_parent(self) -> None:
        """This process accepts on the sockets: the parent stops and drains."""
        _send(self._parent, {"type": "drain_listeners"})
        msg, _ = _recv(self._parent)
        if msg.get("type") != "draining":
            raise HotRestartError(f"unexpected answer from the parent: {msg!r}")
        self._parent.close()
        self._parent = None

    # ---- the parent's side ----

    def serve(self, proxy, on_drained: Callable[[], None]) -> None:
        """Answer the next epoch on a thread of its own. After a hand-over, `on_drained` is
        called (on that thread) when the proxy's last connection ends or at
        parent_shutdown_time_s, whichever is first."""
        self._proxy = proxy
        self._on_drained = on_drained
        threading.Thread(target=self._serve, name="fastproxy-hot-restart", daemon=True).start()

    def _serve(self) -> None:
        while True:
            server = self._server
            if server is None:
                return
            try:
                conn, _ = server.accept()
            except OSError:
                return                  # closed
            with conn:
                try:
                    self._check_peer(conn)
                    self._answer(conn)
                except (OSError, HotRestartError) as e:
                    log.warning("hot restart: a new process's request failed: %s", e)
            if self._handed_over.is_set():
                # No later epoch can take over from a process that has nothing to pass.
                self._server = None
                server.close()
                self._drain_then_exit()
                return

    @staticmethod
    def _check_peer(conn: socket.socket) -> None:
        """Only a process of this user may take the sockets over: an abstract-namespace
        socket has no file permissions to keep other users out."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.geteuid():
            raise HotRestartError(f"refused: process {pid} runs as uid {uid}, this one as {os.geteuid()}")

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(PARENT_TIMEOUT_S)
        while True:
            msg, fds = _recv(conn)
            for fd in fds:
                os.close(fd)
            kind = msg.get("type")
            if kind == "pass_listen_sockets":
                name, address = msg.get("name"), msg.get("address")
                mine = self._proxy._listen_fds(name, tuple(address) if isinstance(address, list) else None)
                try:
                    _send(conn, {"type": "listen_sockets", "count": len(mine)}, tuple(mine))
                finally:
                    for fd in mine:
                        os.close(fd)
                log.info("hot restart: passed %d socket(s) of listener %r to the new process", len(mine), name)
            elif kind == "drain_listeners":
                self._proxy._hand_over_listeners()
                self._handed_over.set()
                _send(conn, {"type": "draining"})
                log.info("hot restart: the new process accepts now; draining (exit at the last "
                         "connection or in %ss)", self.parent_shutdown_time_s)
                return
            else:
                raise HotRestartError(f"unknown message {msg!r}")

    def _drain_then_exit(self) -> None:
        deadline = time.monotonic() + self.parent_shutdown_time_s
        while self._proxy._active_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._on_drained()

    def close(self) -> None:
        for s in (self._server, self._parent):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._server = self._parent = None
