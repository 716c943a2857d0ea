#!/usr/bin/env python3
"""A deliberately naive TCP relay built on splice(2): the reference point for the bench.

For each accepted connection it connects to the upstream and starts one thread per
direction; each thread moves bytes socket -> pipe -> socket with blocking os.splice calls
(zero copy: the payload never enters user space). No event loop, no buffering policy, no
timeouts. os.splice releases the GIL, so the two directions really run concurrently.

    python benchmarks/naive_splice_relay.py --listen 127.0.0.1:9000 \
        --upstream 127.0.0.1:5201 --pipe-size 1048576

The pipe size (F_SETPIPE_SZ) bounds how much one splice call can move; the bench runs it
with 64 KiB (the kernel default) and 1 MiB to inform the core's choice.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import socket
import threading

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def make_pipe(size: int) -> tuple[int, int, int]:
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for non-root: keep the default
    return r, w, fcntl.fcntl(w, F_GETPIPE_SZ)


def pump(src: socket.socket, dst: socket.socket, pipe_size: int) -> None:
    """Copy src -> dst until EOF or error, then half-close dst."""
    r, w, size = make_pipe(pipe_size)
    sfd, dfd = src.fileno(), dst.fileno()
    try:
        while True:
            n = os.splice(sfd, w, size, flags=os.SPLICE_F_MOVE)
            if n == 0:
                break  # EOF from src
            while n:
                n -= os.splice(r, dfd, n, flags=os.SPLICE_F_MOVE)
    except OSError:
        # Reset on either side: tear the whole connection down.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        os.close(r)
        os.close(w)


def handle(client: socket.socket, upstream: tuple[str, int], pipe_size: int) -> None:
    try:
        server = socket.create_connection(upstream, timeout=5.0)
    except OSError:
        client.close()
        return
    server.settimeout(None)
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=pump, args=(server, client, pipe_size), daemon=True)
    back.start()
    pump(client, server, pipe_size)
    back.join()
    client.close()
    server.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    ap.add_argument("--upstream", required=True, help="HOST:PORT to relay to")
    ap.add_argument("--pipe-size", type=int, default=1 << 20, help="F_SETPIPE_SZ in bytes")
    args = ap.parse_args(argv)
    upstream = _hostport(args.upstream)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(_hostport(args.listen))
    ls.listen(128)
    while True:
        client, _ = ls.accept()
        threading.Thread(target=handle, args=(client, upstream, args.pipe_size), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
