"""``fastproxy demo``: the bundled default configuration plus a bundled upstream.

It starts a tiny HTTP/1.1 server (standard library, one thread per connection) as the
upstream of the default configuration, then the proxy in front of it, and prints what to
try. Every request to the upstream gets a short text page saying it came through
fastproxy, so ``curl http://127.0.0.1:10000/`` shows the whole path working.

Beside it, an HTTPS listener (127.0.0.1:10443, "demo_https": TLS termination and the HTTP
connection manager, routing to the same upstream) with a self-signed ECDSA P-256 certificate
made on the fly for localhost / 127.0.0.1 in a temporary directory. The certificate comes
from the ``openssl`` command line tool (``openssl req -x509``): it is there wherever the
OpenSSL library the core links is, so the base install needs no Python package for it
(``cryptography`` is a test dependency only), and a subprocess at start-up costs the core
no code. Without ``openssl`` the demo runs plaintext only and says why.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Optional, Tuple

DEFAULT_LISTENER_PORT = 10000
DEFAULT_UPSTREAM_PORT = 10001
DEFAULT_ADMIN_PORT = 9901
DEFAULT_HTTPS_PORT = 10443
LISTENER_NAME = "demo"
HTTPS_LISTENER_NAME = "demo_https"
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


class DemoCertificate:
    """A self-signed certificate for localhost and 127.0.0.1 (ECDSA P-256, 30 days) in a
    temporary directory of its own, made by ``openssl req``; ``remove()`` deletes it."""

    def __init__(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise OSError("the openssl command is not installed (apt-get install openssl)")
        self.directory = tempfile.mkdtemp(prefix="fastproxy-demo-")
        self.cert = os.path.join(self.directory, "demo.crt")
        self.key = os.path.join(self.directory, "demo.key")
        try:
            r = subprocess.run(
                [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-days", "30", "-subj", "/O=fastproxy demo/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                 "-keyout", self.key, "-out", self.cert],
                capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            self.remove()
            raise OSError(f"openssl req failed: {e}") from None
        if r.returncode != 0:
            self.remove()
            raise OSError(f"openssl req failed: {r.stderr.strip() or r.returncode}")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def https_listener(port: int, cert: str, key: str) -> dict:
    """The demo's HTTPS listener as Envoy v3 JSON: TLS with ``cert``/``key`` (files; ALPN h2
    and http/1.1), then
    the HTTP connection manager routing everything to the demo upstream. An access log on
    stdout shows the TLS facts of each request."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "demo_https",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": CLUSTER_NAME}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string":
                "[%START_TIME%] https \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" %RESPONSE_CODE% "
                "%DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% sni=%REQUESTED_SERVER_NAME%\n"}}}}],
    }
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        # ALPN h2 first: HTTP/2 clients (curl --http2) get HTTP/2, the others HTTP/1.1
        # (the connection manager's codec_type AUTO follows what ALPN chose).
        "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": cert},
                                                     "private_key": {"filename": key}}],
                               "alpn_protocols": ["h2", "http/1.1"]},
    }
    return {
        "name": HTTPS_LISTENER_NAME,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        # The tls_inspector reads the SNI from the ClientHello: %REQUESTED_SERVER_NAME%.
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": [{
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
        }],
    }


def demo_bootstrap(port: int = DEFAULT_LISTENER_PORT, upstream_port: int = DEFAULT_UPSTREAM_PORT,
                   admin_port: Optional[int] = DEFAULT_ADMIN_PORT, https_port: Optional[int] = None,
                   certificate: Optional[DemoCertificate] = None):
    """The bundled default as a :class:`fastproxy.model.Bootstrap`, ports replaced.

    ``admin_port=None`` drops the admin interface; ``0`` picks a free port. With
    ``certificate`` (a DemoCertificate), the HTTPS listener is added on ``https_port``
    (default 10443; ``0``: a free port).
    """
    import yaml

    from .config import load_envoy
    from .model import Admin

    data = yaml.safe_load(default_config_text())
    if certificate is not None:
        data["static_resources"]["listeners"].append(https_listener(
            DEFAULT_HTTPS_PORT if https_port is None else https_port, certificate.cert, certificate.key))
    b = copy.deepcopy(load_envoy(data))
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
                 admin: Optional[Tuple[str, int]], https: Optional[Tuple[str, int]] = None,
                 cacert: Optional[str] = None) -> str:
    """What the demo prints once it is up (``https``: the HTTPS listener's address and
    ``cacert`` its certificate file, if it runs)."""
    lh = _hp(*listener)
    lines = [
        "",
        "fastproxy demo is running:",
        f"  {lh}  (listener '{LISTENER_NAME}', tcp_proxy)  ->  {_hp(*upstream)}  (cluster '{CLUSTER_NAME}', the bundled upstream)",
    ]
    if https:
        lines.append(f"  https://localhost:{https[1]}/  (listener '{HTTPS_LISTENER_NAME}', TLS + HTTP)  ->  "
                     f"{_hp(*upstream)}  (self-signed certificate: {cacert})")
    if admin:
        lines.append(f"  admin: http://{_hp(*admin)}/")
    lines += [
        "",
        "Try, from another terminal:",
        f"  curl http://{lh}/",
        f"  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {listener[0]} {listener[1]}",
    ]
    if https:
        lines += [
            f"  curl --cacert {cacert} https://localhost:{https[1]}/   # verifies the demo's certificate",
            f"  curl -k https://{_hp(*https)}/        # -k: without verifying it",
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
