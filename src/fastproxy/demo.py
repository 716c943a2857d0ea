"""``fastproxy demo``: the bundled default configuration plus a bundled upstream.

It starts a tiny HTTP/1.1 server (standard library, one thread per connection) as the
upstream of the default configuration, then the proxy in front of it, and prints what to
try. Every request to the upstream gets a short text page saying it came through
fastproxy, so ``curl http://127.0.0.1:10000/`` shows the whole path working.
"""
from __future__ import annotations

import copy
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Optional, Tuple

DEFAULT_LISTENER_PORT = 10000
DEFAULT_UPSTREAM_PORT = 10001
DEFAULT_ADMIN_PORT = 9901
LISTENER_NAME = "demo"
CLUSTER_NAME = "demo_upstream"


def default_config_path() -> str:
    """Filesystem path of the bundled default Envoy YAML (``fastproxy/data/default.yaml``)."""
    return os.fspath(resources.files("fastproxy").joinpath("data", "default.yaml"))


def default_config_text() -> str:
    return resources.files("fastproxy").joinpath("data", "default.yaml").read_text(encoding="utf-8")


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fastproxy-demo-upstream"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - quiet: the demo prints its own lines
        pass

    def _answer(self) -> None:
        n = self.server.count_request()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        host, port = self.server.server_address[:2]
        peer = self.client_address
        body = (
            "Hello from the fastproxy demo upstream.\n"
            f"You reached it through fastproxy: this server listens on {host}:{port} and the\n"
            f"connection it sees comes from the proxy ({peer[0]}:{peer[1]}).\n"
            f"Request #{n}: {self.command} {self.path}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer


class DemoUpstream(ThreadingHTTPServer):
    """The demo's upstream: answers any HTTP/1.x request with a short text page."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_UPSTREAM_PORT):
        super().__init__((host, port), _UpstreamHandler)
        self._count = 0
        self._count_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def count_request(self) -> int:
        with self._count_lock:
            self._count += 1
            return self._count

    @property
    def address(self) -> Tuple[str, int]:
        return self.server_address[0], self.server_address[1]

    def start(self) -> "DemoUpstream":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fastproxy-demo-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5.0)
            self._thread = None
        self.server_close()


def demo_bootstrap(port: int = DEFAULT_LISTENER_PORT, upstream_port: int = DEFAULT_UPSTREAM_PORT,
                   admin_port: Optional[int] = DEFAULT_ADMIN_PORT):
    """The bundled default as a :class:`fastproxy.model.Bootstrap`, ports replaced.

    ``admin_port=None`` drops the admin interface; ``0`` picks a free port.
    """
    from .config import load_envoy
    from .model import Admin

    b = copy.deepcopy(load_envoy(default_config_text()))
    for l in b.listeners:
        if l.name == LISTENER_NAME:
            l.port = port
    for c in b.clusters:
        if c.name == CLUSTER_NAME:
            for e in c.endpoints:
                e.port = upstream_port
    if admin_port is None:
        b.admin = None
    else:
        b.admin = Admin(address=b.admin.address if b.admin else "127.0.0.1", port=admin_port)
    b.validate()
    return b


def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def instructions(listener: Tuple[str, int], upstream: Tuple[str, int],
                 admin: Optional[Tuple[str, int]]) -> str:
    """What the demo prints once it is up."""
    lh = _hp(*listener)
    lines = [
        "",
        "fastproxy demo is running:",
        f"  {lh}  (listener '{LISTENER_NAME}', tcp_proxy)  ->  {_hp(*upstream)}  (cluster '{CLUSTER_NAME}', the bundled upstream)",
    ]
    if admin:
        lines.append(f"  admin: http://{_hp(*admin)}/")
    lines += [
        "",
        "Try, from another terminal:",
        f"  curl http://{lh}/",
        f"  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {listener[0]} {listener[1]}",
    ]
    if admin:
        ah = _hp(*admin)
        lines += [
            f"  curl http://{ah}/stats        # counters: tcp.demo.*, cluster.demo_upstream.*, ...",
            f"  curl http://{ah}/listeners",
            f"  curl -X POST http://{ah}/quitquitquit   # stop the demo",
        ]
    lines += ["", "Press Ctrl-C to stop.", ""]
    return "\n".join(lines)
