"""Listener drain on update (Envoy's listener drain, --drain-time-s / --drain-strategy): an
unchanged listener keeps its connections as they are; the connections of a changed or
removed listener's old version are asked to close (HTTP/1.1 Connection: close on a
response, with a probability rising over the drain time, or on every next response with
the immediate strategy) and whatever is still open at the drain end is closed, HTTP or TCP
proxy; new connections take the new version, on the same socket (none refused)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from fastproxy import Cluster, ConfigError, Endpoint, Listener, Proxy, TcpProxy
from fastproxy.http import HttpConnectionManager, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost

from conftest import connect, echo_roundtrip, recv_exact, recv_head, stat, wait_closed, wait_for
from http_upstreams import RawHttpUpstream


def _named_upstream(name: bytes) -> RawHttpUpstream:
    """An HTTP upstream whose every answer is its name: which version routed a request."""
    def handler(method, path, headers, body):
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name)
    return RawHttpUpstream(handler)


@pytest.fixture
def ab():
    """Two upstreams, answering b"A" and b"B", and their clusters "a" and "b"."""
    a, b = _named_upstream(b"A"), _named_upstream(b"B")
    yield [Cluster("a", [Endpoint("127.0.0.1", a.port)]), Cluster("b", [Endpoint("127.0.0.1", b.port)])]
    a.close()
    b.close()


def _web(name: str, cluster: str, **kw) -> Listener:
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster=cluster))])])
    return Listener(name, HttpConnectionManager(name, rc), **kw)


def _get(sock) -> tuple[bytes, bool]:
    """One GET on an open keep-alive connection: (body, the response said Connection: close)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    got = recv_head(sock)
    assert got is not None, "connection closed instead of answering"
    head, rest = got
    assert head.startswith(b"HTTP/1.1 200"), head
    lines = head.lower().split(b"\r\n")
    length = next(int(l.split(b":", 1)[1]) for l in lines if l.startswith(b"content-length:"))
    body = rest + recv_exact(sock, length - len(rest))
    return body, b"connection: close" in lines


def _fresh_get(addr) -> bytes:
    with connect(addr) as s:
        return _get(s)[0]


class Churn(threading.Thread):
    """New connections in a loop, one request each: every one must be answered."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.addr, self.bodies, self.errors = addr, [], []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.bodies.append(_fresh_get(self.addr))
            except Exception as e:      # noqa: BLE001 - reported by the test
                self.errors.append(e)
                return


@pytest.mark.timeout(60)
def test_changed_listener_drains_old_connections_and_serves_new_ones(ab, proxy_factory):
    """Gradual, 2 s: no connection refused across the update; an old keep-alive connection
    goes on being served by the old version until a response says Connection: close,
    which comes within the drain time, and it then ends; new connections get the new one."""
    p = proxy_factory([_web("web", "a")], ab, drain_time_s=2)
    addr = p.listener_address("web")
    old = connect(addr)
    assert _get(old) == (b"A", False)
    churn = Churn(addr)
    churn.start()
    wait_for(lambda: len(churn.bodies) >= 5, msg="churn running")

    updated = time.monotonic()
    p.update(listeners=[_web("web", "b")])
    assert p.listener_address("web") == addr
    assert p.draining_listeners() == ["web"]
    # Only the filter chain changed (its routes): as Envoy's, an update in place, whose
    # old filter chains drain, not the listener.
    assert stat(p, "listener_manager.total_filter_chains_draining") == 1
    assert stat(p, "listener_manager.total_listeners_draining") == 0
    assert _fresh_get(addr) == b"B"
    n = len(churn.bodies)
    wait_for(lambda: churn.errors or len(churn.bodies) >= n + 5, msg="churn after the update")

    # The old connection: still the old version, until told to close (the probability
    # reaches 1 at the drain end).
    while True:
        body, close = _get(old)
        assert body == b"A"
        if close:
            break
    assert time.monotonic() - updated < 2 + 1.0
    assert wait_closed(old) == "eof"
    old.close()
    churn.stop.set()
    churn.join(10)
    assert not churn.errors, churn.errors
    assert set(churn.bodies[n:]) == {b"B"}
    assert stat(p, "http.web.downstream_cx_drain_close") == 1
    assert stat(p, "listener_manager.listener_added") == 1
    assert stat(p, "listener_manager.listener_modified") == 1
    assert stat(p, "listener_manager.listener_in_place_updated") == 1
    assert stat(p, "listener_manager.listener_removed") == 0
    wait_for(lambda: p.draining_listeners() == [], msg="drain over")
    assert stat(p, "listener_manager.total_filter_chains_draining") == 0


def test_a_change_beside_the_filter_chain_drains_the_listener(ab, proxy_factory):
    """A listener-level field (here its per-connection buffer limit) changed: not an update
    in place; the old listener version drains (total_listeners_draining), as Envoy's."""
    p = proxy_factory([_web("web", "a")], ab, drain_time_s=30)
    addr = p.listener_address("web")
    old = connect(addr)
    assert _get(old) == (b"A", False)
    changed = _web("web", "a")
    changed.buffer_limit = 1 << 19
    p.update(listeners=[changed])
    assert stat(p, "listener_manager.total_listeners_draining") == 1
    assert stat(p, "listener_manager.total_filter_chains_draining") == 0
    assert stat(p, "listener_manager.listener_modified") == 1
    assert stat(p, "listener_manager.listener_in_place_updated") == 0
    old.close()


@pytest.mark.timeout(30)
def test_idle_connection_of_changed_listener_closed_at_drain_end(ab, proxy_factory):
    """A keep-alive connection that sends nothing more is closed when the drain time is
    over, not before: no client stays on the old version past --drain-time-s."""
    p = proxy_factory([_web("web", "a")], ab, drain_time_s=1.5)
    addr = p.listener_address("web")
    idle = connect(addr)
    assert _get(idle) == (b"A", False)
    updated = time.monotonic()
    p.update(listeners=[_web("web", "b")])
    assert wait_closed(idle, timeout=10) == "eof"
    elapsed = time.monotonic() - updated
    assert 1.3 <= elapsed < 1.5 + 1.5, elapsed
    idle.close()
    wait_for(lambda: p.draining_listeners() == [], msg="nothing left draining")
    assert _fresh_get(addr) == b"B"


@pytest.mark.timeout(30)
def test_unchanged_listener_is_not_drained_by_another_listeners_update(ab, proxy_factory):
    """An update that changes one listener leaves the other's connections alone: its
    keep-alive connection outlives the other's drain, and is never told to close."""
    p = proxy_factory([_web("keep", "a"), _web("other", "a")], ab, drain_time_s=0.5,
                      drain_strategy="immediate")
    keep = connect(p.listener_address("keep"))
    other = connect(p.listener_address("other"))
    assert _get(keep) == (b"A", False)
    assert _get(other) == (b"A", False)
    p.update(listeners=[_web("keep", "a"), _web("other", "b")])
    assert p.draining_listeners() == ["other"]
    assert wait_closed(other) == "eof"          # drained: closed at its drain end
    wait_for(lambda: p.draining_listeners() == [], msg="other's drain over")
    for _ in range(3):
        assert _get(keep) == (b"A", False)
    assert stat(p, "http.keep.downstream_cx_drain_close") == 0
    assert stat(p, "listener_manager.listener_modified") == 1
    keep.close()
    other.close()


@pytest.mark.timeout(30)
def test_removed_listener_drains_like_a_changed_one(ab, proxy_factory):
    """A removed listener stops accepting at once; its busy connection is answered (with
    Connection: close, immediate strategy), its idle one closed at the drain end, and the
    listener that stays is not touched."""
    release = threading.Event()

    def slow(method, path, headers, body):
        release.wait(10)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"

    up = RawHttpUpstream(slow)
    try:
        clusters = ab + [Cluster("slow", [Endpoint("127.0.0.1", up.port)])]
        p = proxy_factory([_web("keep", "a"), _web("gone", "slow")], clusters, concurrency=1,
                          drain_time_s=1.5, drain_strategy="immediate")
        addr = p.listener_address("gone")
        keep = connect(p.listener_address("keep"))
        assert _get(keep) == (b"A", False)
        busy = connect(addr)
        busy.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        wait_for(lambda: len(up.requests) == 1, msg="the slow request reached the upstream")
        idle = connect(addr)
        wait_for(lambda: stat(p, "http.gone.downstream_cx_active") == 2, msg="both accepted")

        updated = time.monotonic()
        p.update(listeners=[_web("keep", "a")])
        with pytest.raises(ConnectionRefusedError):
            connect(addr, timeout=2)
        assert p.draining_listeners() == ["gone"]
        release.set()
        head, rest = recv_head(busy)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
        assert wait_closed(idle, timeout=10) == "eof"
        assert time.monotonic() - updated >= 1.3
        assert _get(keep) == (b"A", False)
        assert stat(p, "listener_manager.listener_removed") == 1
        for s in (keep, busy, idle):
            s.close()
    finally:
        release.set()
        up.close()


@pytest.mark.timeout(30)
def test_tcp_proxy_session_of_changed_listener_closed_at_drain_end(servers, proxy_factory):
    """A TCP proxy session has no way to be asked to leave: it goes on working on the old
    version through the drain time, and is closed at its end."""
    echo = servers.echo()
    c = [Cluster("c", [Endpoint("127.0.0.1", echo.port)])]
    p = proxy_factory([Listener("l", TcpProxy("c"), stat_prefix="t")], c, drain_time_s=1.5)
    addr = p.listener_address("l")
    session = connect(addr)
    session.sendall(b"before")
    assert recv_exact(session, 6) == b"before"
    updated = time.monotonic()
    p.update(listeners=[Listener("l", TcpProxy("c"), stat_prefix="t", idle_timeout=60)])
    session.sendall(b"during")
    assert recv_exact(session, 6) == b"during"
    assert echo_roundtrip(addr, b"new version") == b"new version"
    assert wait_closed(session, timeout=10) == "eof"
    assert time.monotonic() - updated >= 1.3
    session.close()
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("strategy", ["gradual", "immediate"])
def test_drain_strategy(ab, proxy_factory, strategy):
    """Immediate: the first response after the update already says Connection: close.
    Gradual: the probability starts at 0 (here 1 s into a 600 s drain: at most 1/600)."""
    p = proxy_factory([_web("web", "a")], ab, drain_strategy=strategy)
    assert p.drain_time_s == 600 and p.drain_strategy == strategy
    old = connect(p.listener_address("web"))
    assert _get(old) == (b"A", False)
    p.update(listeners=[_web("web", "b")])
    assert _get(old) == (b"A", strategy == "immediate")
    if strategy == "immediate":
        assert wait_closed(old) == "eof"
    old.close()
    assert _fresh_get(p.listener_address("web")) == b"B"


def test_an_update_with_the_same_listeners_drains_nothing(ab, proxy_factory):
    """Restating the whole configuration changes no listener: nothing drains, the
    listener's ListenerCfg is the same object."""
    p = proxy_factory([_web("web", "a"), Listener("t", TcpProxy("a"))], ab, drain_time_s=0)
    before = dict(p._listeners)
    p.update(listeners=[_web("web", "a"), Listener("t", TcpProxy("a"))], clusters=ab)
    assert all(p._listeners[n] is before[n] for n in before)
    assert p.draining_listeners() == []
    assert stat(p, "listener_manager.listener_modified") == 0


def test_drain_options_are_checked():
    with pytest.raises(ConfigError, match="drain_strategy"):
        Proxy(drain_strategy="slow")
    with pytest.raises(ConfigError, match="drain_time_s"):
        Proxy(drain_time_s=-1)
    with pytest.raises(ConfigError, match="drain_time_s"):
        Proxy(drain_time_s=True)


def test_drain_type_from_envoy_yaml_and_in_the_dump():
    """Envoy's Listener.drain_type is read (DEFAULT or MODIFY_ONLY: both drain on an update),
    shown in the config dump, and a bad value is an error naming its path."""
    from fastproxy.config import load_envoy
    from conftest import envoy_bootstrap, static_cluster, tcp_listener

    def boot(drain_type):
        return envoy_bootstrap([{**tcp_listener("c"), "drain_type": drain_type}],
                               [static_cluster("c", [("127.0.0.1", 1)])], admin=False)

    b = load_envoy(boot("MODIFY_ONLY"))
    assert b.listeners[0].drain_type == "MODIFY_ONLY"
    assert load_envoy(boot(0)).listeners[0].drain_type == "DEFAULT"
    dumped = Proxy.from_bootstrap(b).config_dump(resource="static_listeners")
    assert dumped["configs"][0]["listener"]["drain_type"] == "MODIFY_ONLY"
    with pytest.raises(ConfigError, match=r"static_resources\.listeners\[0\]\.drain_type"):
        load_envoy(boot("SOMETIMES"))
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.drain_type"):
        Proxy([Listener("l", TcpProxy("c"), drain_type="sometimes")], [Cluster("c", [Endpoint("127.0.0.1", 1)])])


def test_config_dump_shows_a_discovered_listeners_draining_version(ab, proxy_factory):
    """A discovered listener that changed is listed with its new version's active_state and
    its old version's draining_state (with the version it came with) while it drains."""
    p = proxy_factory([_web("web", "a")], ab, drain_time_s=30)
    p.note_discovered("listener", "web", "v1")
    old = connect(p.listener_address("web"))
    assert _get(old) == (b"A", False)
    p.update(listeners=[_web("web", "b")])
    p.note_discovered("listener", "web", "v2")
    listeners = p.config_dump(resource="dynamic_listeners")["configs"]
    assert len(listeners) == 1
    entry = listeners[0]
    assert entry["name"] == "web"
    assert entry["active_state"]["version_info"] == "v2"
    assert entry["draining_state"]["version_info"] == "v1"
    route = entry["draining_state"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "'a'" in repr(route) and "'b'" not in repr(route)
    old.close()
    wait_for(lambda: p.draining_listeners() == [], msg="drained with its last connection")
    entry = p.config_dump(resource="dynamic_listeners")["configs"][0]
    assert "draining_state" not in entry


@pytest.mark.timeout(120)
@pytest.mark.parametrize("who", ["fastproxy", "envoy"])
def test_command_line_drain_of_a_listener_changed_by_lds_as_envoy(tmp_path, who):
    """The same bootstrap (LDS from a file) and the same flags, --drain-time-s 2
    --drain-strategy immediate, on the fastproxy command line and on Envoy 1.40: once the
    file changes the listener, new connections get the new version; an old keep-alive
    connection's next response is the old version's, with Connection: close; an old idle
    one is closed at the drain end, about 2 s after the change, not before."""
    import os
    import subprocess
    import sys

    import yaml
    from conftest import SRC, envoy_bootstrap, find_envoy, free_port, http_listener, static_cluster

    if who == "envoy" and not find_envoy():
        pytest.skip("envoy binary not found")
    a, b = _named_upstream(b"A"), _named_upstream(b"B")
    port = free_port()
    lds = tmp_path / "lds.yaml"

    def publish(version, cluster):
        listener = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                    **http_listener([{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                                    name="dyn", stat_prefix="dyn", port=port)}
        (tmp_path / "lds.tmp").write_text(yaml.safe_dump({"version_info": version, "resources": [listener]}))
        os.replace(tmp_path / "lds.tmp", lds)

    publish("1", "a")
    cfg = tmp_path / "boot.yaml"
    cfg.write_text(yaml.safe_dump(envoy_bootstrap(
        [], [static_cluster("a", [a.port]), static_cluster("b", [b.port])], admin=False,
        node={"id": "node-1", "cluster": "tests"},
        dynamic_resources={"lds_config": {"path_config_source": {"path": str(lds)},
                                          "resource_api_version": "V3"}}), sort_keys=False))
    flags = ["--concurrency", "1", "--drain-time-s", "2", "--drain-strategy", "immediate"]
    if who == "envoy":
        cmd = [find_envoy(), "-c", str(cfg), "--disable-hot-restart", "--log-level", "critical", *flags]
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}   # an ASan run's
    else:
        cmd = [sys.executable, "-m", "fastproxy", "-c", str(cfg), "-l", "critical", *flags]
        env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = ("127.0.0.1", port)

    def fresh():
        try:
            return _fresh_get(addr)
        except OSError:
            return None

    try:
        wait_for(lambda: fresh() == b"A", timeout=30, msg=f"{who} serves the listener")
        busy, idle = connect(addr, timeout=10), connect(addr, timeout=10)
        assert _get(busy) == (b"A", False) and _get(idle) == (b"A", False)
        publish("2", "b")
        wait_for(lambda: fresh() == b"B", timeout=10, msg=f"{who} took the change")
        changed = time.monotonic()
        assert _get(busy) == (b"A", True)
        assert wait_closed(idle, timeout=10) == "eof"
        elapsed = time.monotonic() - changed
        assert 1.0 < elapsed < 2 + 1.5, (who, elapsed)
        assert wait_closed(busy, timeout=5) == "eof"
        busy.close()
        idle.close()
    finally:
        proc.terminate()
        proc.wait(30)
        a.close()
        b.close()
