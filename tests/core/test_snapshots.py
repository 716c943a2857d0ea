"""Config updates at run time (Proxy.update): cluster swaps under traffic, listeners added
and removed, invalid updates rejected without disturbing traffic; and the Python API's
construction: errors naming the Python argument, ports bound by start()."""
from __future__ import annotations

import threading

import pytest

from fastproxy import Cluster, ConfigError, Endpoint, FilterStatus, Listener, NetworkFilter, TcpProxy

from conftest import (connect, echo_roundtrip, free_port, listen_inodes, listening_ports, recv_exact, recv_head,
                      recv_until_eof, stat, wait_closed, wait_for)
from fastproxy import Proxy


def _cluster(name, server):
    return Cluster(name, [Endpoint("127.0.0.1", server.port)])


def _banner_of_new_connection(addr) -> bytes:
    with connect(addr, timeout=5) as s:
        return recv_exact(s, 1)


class LongLived(threading.Thread):
    """Keeps one connection busy: send a unique block, read the same block back, repeat."""

    def __init__(self, addr, ident):
        super().__init__(daemon=True)
        self.sock = connect(addr, timeout=10)
        self.banner = recv_exact(self.sock, 1)
        self.tag = ident
        self.rounds = 0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            while not self.stop.is_set():
                block = (b"%s:%08d|" % (self.tag, self.rounds)) * 400
                self.sock.sendall(block)
                got = recv_exact(self.sock, len(block))
                if got != block:
                    raise AssertionError(f"corrupted echo on {self.tag!r}: {got[:40]!r}")
                self.rounds += 1
        except Exception as e:          # noqa: BLE001 - reported by the test
            self.error = e


class Churn(threading.Thread):
    """Opens short connections in a loop; each must complete its exchange."""

    def __init__(self, addr, ident):
        super().__init__(daemon=True)
        self.addr = addr
        self.tag = ident
        self.done = 0
        self.banners = []
        self.errors = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                with connect(self.addr, timeout=10) as s:
                    banner = recv_exact(s, 1)
                    msg = b"%s-%06d" % (self.tag, self.done) * 50
                    s.sendall(msg)
                    if recv_exact(s, len(msg)) != msg:
                        raise AssertionError("corrupted echo")
                    self.banners.append(banner)
                    self.done += 1
            except Exception as e:      # noqa: BLE001 - reported by the test
                self.errors.append(e)
                return


@pytest.mark.timeout(60)
def test_cluster_swap_under_traffic(servers, proxy_factory):
    a = servers.echo(banner=b"A")
    b = servers.echo(banner=b"B")
    p = proxy_factory([Listener("l", TcpProxy("c"), stat_prefix="t")], [_cluster("c", a)])
    addr = p.listener_address("l")
    longs = [LongLived(addr, b"long%d" % i) for i in range(2)]
    assert [x.banner for x in longs] == [b"A", b"A"]
    churn = [Churn(addr, b"churn%d" % i) for i in range(2)]
    for t in longs + churn:
        t.start()
    try:
        swaps = 10
        for i in range(swaps):
            target, tag = (b, b"B") if i % 2 == 0 else (a, b"A")
            before = [x.rounds for x in longs]
            churn_before = sum(c.done for c in churn)
            p.update(clusters=[_cluster("c", target)])
            # update() returns once every worker switched: the very next connection
            # goes to the new upstream.
            assert _banner_of_new_connection(addr) == tag, f"swap {i}"
            assert p.listener_address("l") == addr
            # traffic keeps flowing on the old connections and on new ones
            wait_for(lambda: all(x.rounds > r for x, r in zip(longs, before)) or
                     any(x.error for x in longs), timeout=10, msg="long-lived connections progress")
            wait_for(lambda: sum(c.done for c in churn) > churn_before + 2 or
                     any(c.errors for c in churn), timeout=10, msg="new connections keep working")
            assert not [x.error for x in longs if x.error], [x.error for x in longs]
            assert not [c.errors for c in churn if c.errors], [c.errors for c in churn]
    finally:
        for t in longs + churn:
            t.stop.set()
        for t in longs + churn:
            t.join(10)
    assert all(x.error is None for x in longs), [x.error for x in longs]
    assert all(not c.errors for c in churn), [c.errors for c in churn]
    # Both upstreams got short connections; the long-lived ones stayed on A throughout
    # (a reconnect would have injected a banner byte into their echo stream).
    banners = set(bb for c in churn for bb in c.banners)
    assert banners == {b"A", b"B"}, banners
    assert a.active >= 2
    for x in longs:
        x.sock.sendall(b"final")
        assert recv_exact(x.sock, 5) == b"final"
        x.sock.close()
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    # Counters survive snapshots.
    total = stat(p, "tcp.t.downstream_cx_total")
    assert total == 2 + swaps + sum(c.done for c in churn), total


def test_listener_rebound_to_new_cluster_keeps_port_and_old_connections(servers, proxy_factory):
    a = servers.echo(banner=b"A")
    b = servers.echo(banner=b"B")
    p = proxy_factory([Listener("l", TcpProxy("ca"), stat_prefix="t")], [_cluster("ca", a)])
    host, port = p.listener_address("l")
    old = connect((host, port))
    assert recv_exact(old, 1) == b"A"
    p.update(listeners=[Listener("l", TcpProxy("cb"), address=host, port=port, stat_prefix="t")],
             clusters=[_cluster("cb", b)])
    assert p.listener_address("l") == (host, port)
    assert _banner_of_new_connection((host, port)) == b"B"
    # The old connection, whose cluster is gone from the config, keeps working.
    old.sendall(b"old-still-works")
    assert recv_exact(old, 15) == b"old-still-works"
    old.close()
    wait_for(lambda: a.active == 0)


def _refuses(addr) -> bool:
    """True if ``addr`` no longer proxies: connect refused, or closed without data."""
    try:
        s = connect(addr, timeout=2)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    with s:
        try:
            s.sendall(b"x")
            return wait_closed(s, timeout=1) in ("eof", "reset")
        except (ConnectionResetError, BrokenPipeError):
            return True
        except AssertionError:
            return False            # still open or echoed: still accepting


def test_listener_added_and_removed_at_runtime(servers, proxy_factory):
    echo = servers.echo()
    base = Listener("base", TcpProxy("c"), stat_prefix="base")
    p = proxy_factory([base], [_cluster("c", echo)])
    extra = Listener("extra", TcpProxy("c"), stat_prefix="extra")
    p.update(listeners=[base, extra])
    xaddr = p.listener_address("extra")
    assert xaddr[1] != p.listener_address("base")[1]
    assert echo_roundtrip(xaddr, b"new listener") == b"new listener"
    established = connect(xaddr)
    established.sendall(b"before removal")
    assert recv_exact(established, 14) == b"before removal"

    p.update(listeners=[base])
    # Removal is synchronous: new connections to the port fail at once...
    assert _refuses(xaddr)
    with pytest.raises(KeyError):
        p.listener_address("extra")
    # ...while the established connection drains normally.
    established.sendall(b"after removal")
    assert recv_exact(established, 13) == b"after removal"
    # The echo_roundtrip connection above may still be closing: await, don't sample.
    wait_for(lambda: stat(p, "tcp.extra.downstream_cx_active") == 1)
    established.close()
    wait_for(lambda: stat(p, "tcp.extra.downstream_cx_active") == 0)
    assert echo_roundtrip(p.listener_address("base"), b"base ok") == b"base ok"


def test_invalid_update_rejected_and_old_config_kept(servers, proxy_factory):
    echo = servers.echo()
    p = proxy_factory([Listener("l", TcpProxy("c"), stat_prefix="t")], [_cluster("c", echo)])
    addr = p.listener_address("l")
    with connect(addr) as s:
        s.sendall(b"one")
        assert recv_exact(s, 3) == b"one"
        with pytest.raises(ConfigError):
            p.update(listeners=[Listener("l", TcpProxy("no-such-cluster"))])
        with pytest.raises(ConfigError):
            p.update(clusters=[])           # listener "l" would lose its cluster
        s.sendall(b"two")
        assert recv_exact(s, 3) == b"two"
    assert p.listener_address("l") == addr
    assert echo_roundtrip(addr, b"three") == b"three"


def test_update_adds_endpoint_to_round_robin(servers, proxy_factory):
    a = servers.echo(banner=b"A")
    b = servers.echo(banner=b"B")
    p = proxy_factory([Listener("l", TcpProxy("c"))], [_cluster("c", a)])
    addr = p.listener_address("l")
    assert {_banner_of_new_connection(addr) for _ in range(4)} == {b"A"}
    p.update(clusters=[Cluster("c", [Endpoint("127.0.0.1", a.port), Endpoint("127.0.0.1", b.port)])])
    seen = [_banner_of_new_connection(addr) for _ in range(8)]
    assert seen.count(b"A") >= 2 and seen.count(b"B") >= 2, seen


class Upper(NetworkFilter):
    def on_data(self, data, end_stream):
        data.replace(bytes(data).upper())
        return FilterStatus.CONTINUE


def test_filter_chain_update_applies_to_new_connections_only(servers, proxy_factory):
    echo = servers.echo()
    p = proxy_factory([Listener("l", TcpProxy("c"), stat_prefix="t")], [_cluster("c", echo)])
    addr = p.listener_address("l")
    old = connect(addr)
    old.sendall(b"plain")
    assert recv_exact(old, 5) == b"plain"
    # Same requested address (port 0): the listening socket is kept, only the chain changes.
    p.update(listeners=[Listener("l", TcpProxy("c"), stat_prefix="t", filters=[Upper])])
    assert p.listener_address("l") == addr
    assert echo_roundtrip(addr, b"shout") == b"SHOUT"
    old.sendall(b"still plain")                 # spliced, no filter: its config is kept
    assert recv_exact(old, 11) == b"still plain"
    p.update(listeners=[Listener("l", TcpProxy("c"), stat_prefix="t")])
    assert echo_roundtrip(addr, b"quiet") == b"quiet"
    old.close()
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


def test_no_connection_refused_during_listener_updates(servers, proxy_factory):
    """Connections opened while the listener set is being replaced over and over (same
    address) are never refused or dropped."""
    echo = servers.echo()
    lst = Listener("l", TcpProxy("c"), stat_prefix="t")
    p = proxy_factory([lst], [_cluster("c", echo)])
    addr = p.listener_address("l")
    stop = threading.Event()
    errors, ok = [], [0]

    def client():
        while not stop.is_set():
            try:
                if echo_roundtrip(addr, b"during update", timeout=5) != b"during update":
                    errors.append("bad echo")
                ok[0] += 1
            except OSError as e:
                errors.append(e)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            filters = [Upper] if i % 2 else []
            p.update(listeners=[Listener("l", TcpProxy("c"), stat_prefix="t", filters=filters)],
                     clusters=[Cluster("c", [Endpoint("127.0.0.1", echo.port)], connect_timeout=1.0 + i)])
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert ok[0] > 0
    # b"DURING UPDATE" can legitimately come back while the Upper chain is active: only
    # transport errors count.
    transport = [e for e in errors if not isinstance(e, str)]
    assert not transport, transport[:5]


def test_restating_the_bound_port_keeps_the_listening_sockets(servers, proxy_factory):
    """Deterministic counterpart of the next test: updating a port-0 listener to the port
    it is bound to must keep its listening sockets (same socket inodes), not re-bind."""
    echo = servers.echo()
    p = proxy_factory([Listener("l", TcpProxy("c"))], [_cluster("c", echo)])
    host, port = p.listener_address("l")
    before = listen_inodes(port)
    assert len(before) >= 1
    p.update(listeners=[Listener("l", TcpProxy("c"), address=host, port=port)])
    assert p.listener_address("l") == (host, port)
    assert listen_inodes(port) == before, "the listening sockets were re-bound"
    assert echo_roundtrip((host, port), b"same socket") == b"same socket"


@pytest.mark.timeout(60)
def test_restating_the_bound_port_explicitly_does_not_drop_connections(servers):
    """A listener first configured with port 0 and then updated with the port it got is the
    same listening address: connections arriving during the update must not be reset
    (the socket should be kept, not re-bound and the old one closed)."""
    import fastproxy
    echo = servers.echo()
    errors, done = [], [0]
    for trial in range(25):
        p = fastproxy.Proxy([Listener("l", TcpProxy("c"))], [_cluster("c", echo)], concurrency=2)
        p.start()
        try:
            host, port = p.listener_address("l")
            stop = threading.Event()

            def client():
                while not stop.is_set():
                    try:
                        if echo_roundtrip((host, port), b"x", timeout=5) == b"x":
                            done[0] += 1
                    except (OSError, AssertionError) as e:
                        errors.append((trial, e))

            threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
            for t in threads:
                t.start()
            wait_for(lambda: done[0] > trial * 10 + 10, timeout=10)
            p.update(listeners=[Listener("l", TcpProxy("c"), address=host, port=port)])
            assert p.listener_address("l") == (host, port)
            mark = done[0]
            wait_for(lambda: done[0] > mark + 10, timeout=10)
            stop.set()
            for t in threads:
                t.join(10)
        finally:
            p.stop(drain_timeout=0.2)
    assert not errors, f"{len(errors)} connections failed, e.g. {errors[:3]}"


# --------------------------------------------------------------------------- construction

def test_python_api_errors_name_the_python_argument():
    with pytest.raises(ConfigError) as e:
        Proxy([Listener("l", TcpProxy("c"))], [Cluster("c", [Endpoint("127.0.0.1", 8080), Endpoint("127.0.0.1", 70000)])])
    assert e.value.path == "clusters[0].endpoints[1].port"
    assert e.value.message.startswith("Endpoint(port=70000): port 70000 out of range 1..65535")
    assert "port_value" not in str(e.value) and "static_resources" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        Proxy([Listener("l", TcpProxy("c"))], [Cluster("c", [Endpoint("127.0.0.1", 1, weight=0)])])
    assert e.value.path == "clusters[0].endpoints[0].weight"
    assert "Endpoint(weight=0)" in e.value.message
    with pytest.raises(ConfigError) as e:
        Proxy([Listener("l", TcpProxy("nope"))], [])
    assert e.value.path == "listeners[0].handler.cluster"


def test_python_api_wrong_container_is_a_clear_type_error():
    one = Listener("l", TcpProxy("c"))
    clusters = [Cluster("c", [Endpoint("127.0.0.1", 1)])]
    with pytest.raises(TypeError, match=r"takes a list of Listener, got a single Listener: write "
                                        r"listeners=\[Listener\(\.\.\.\)\]"):
        Proxy(one, clusters)
    with pytest.raises(TypeError, match=r"got a dict \(an Envoy configuration goes to Proxy.from_envoy\)"):
        Proxy({"name": "l"}, clusters)
    with pytest.raises(TypeError, match=r"clusters\[0\] must be a Cluster, got dict"):
        Proxy([one], [{"name": "c"}])
    with pytest.raises(TypeError, match="takes a list of Cluster, got a single Cluster"):
        Proxy([one], clusters[0])


def test_ports_are_bound_by_start_not_by_the_constructor(servers):
    echo = servers.echo()
    port = free_port()
    p = Proxy([Listener("l", TcpProxy("c"), port=port)], [_cluster("c", echo)], concurrency=1)
    try:
        assert port not in listening_ports()
        # A second proxy for the same port can be built too: nothing is taken yet.
        Proxy([Listener("l", TcpProxy("c"), port=port)], [_cluster("c", echo)], concurrency=1).stop()
        with pytest.raises(RuntimeError, match="bound by start"):
            p.listener_address("l")
        p.start()
        assert port in listening_ports()
        assert p.listener_address("l") == ("127.0.0.1", port)
        assert echo_roundtrip(("127.0.0.1", port), b"hello") == b"hello"
    finally:
        p.stop()


def test_http_listener_removed_drains_its_connections(proxy_factory):
    """A removed HTTP listener drains the connections it accepted (immediate strategy): a
    busy one gets its response, with Connection: close, and then ends; an idle keep-alive
    connection is closed at the drain end (tests/core/test_listener_drain.py has the rest)."""
    from fastproxy.http import HttpConnectionManager, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost
    from http_upstreams import RawHttpUpstream

    release = threading.Event()

    def handler(method, path, headers, body):
        if path == "/slow":
            release.wait(10)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    up = RawHttpUpstream(handler)

    def web(name):
        hcm = HttpConnectionManager(name, RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
            Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))])]))
        return Listener(name, hcm)

    try:
        keep, gone = web("keep"), web("gone")
        p = proxy_factory([keep, gone], [Cluster("c", [Endpoint("127.0.0.1", up.port)])], concurrency=1,
                          drain_time_s=1, drain_strategy="immediate")
        addr = p.listener_address("gone")
        idle = connect(addr)
        idle.sendall(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        head, rest = recv_head(idle)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
        assert rest + recv_exact(idle, 2 - len(rest)) == b"ok"
        busy = connect(addr)
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        wait_for(lambda: any(r[1] == "/slow" for r in up.requests))

        p.update(listeners=[keep])
        release.set()
        head, rest = recv_head(busy)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
        assert rest + recv_until_eof(busy) == b"ok"
        assert wait_closed(idle) == "eof"
        idle.close()
        busy.close()
    finally:
        release.set()
        up.close()
