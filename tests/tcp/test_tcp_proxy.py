"""Integration tests of the L4 (tcp_proxy) data path: integrity, half-close, failures,
flow control, timeouts, scale and load balancing. Real loopback sockets only."""
from __future__ import annotations

import selectors
import socket
import threading
import time

import pytest

from fastproxy import Cluster, Endpoint, FilterStatus, NetworkFilter

from conftest import (connect, echo_roundtrip, listener_stat, raise_nofile, recv_exact,
                      recv_until_eof, rss_bytes, stat, wait_closed, wait_for, wait_stalled)
from upstreams import (CHUNK, StreamReceiver, StreamSender, close_write_first_handler,
                       duplex_handler, gated_sink_handler, hold_handler, prng_chunks, refused_port,
                       reply_after_eof_handler, reset_after_handler, rst_close, source_handler)

MB = 1 << 20
# A direction with no filter copies its first bytes and splices the rest: it switches once
# it has read SPLICE_AFTER bytes (core/tcp_proxy.pxi) and they have gone out, so it copies
# at most that plus one read (a 64 KiB slice and the room left in the previous one).
SPLICE_AFTER = 64 * 1024
COPIED_BEFORE_SPLICE_MAX = SPLICE_AFTER + 2 * 64 * 1024


class PassThrough(NetworkFilter):
    """A Python filter that changes nothing: it forces the buffered (copy) data path."""

    def on_data(self, data, end_stream):
        return FilterStatus.CONTINUE

    def on_write(self, data, end_stream):
        return FilterStatus.CONTINUE


# --------------------------------------------------------------------------- integrity

def _duplex_through_proxy(servers, tcp_proxy, total, filters):
    up = servers.threaded(duplex_handler(seed=2, total=total))
    p, addr = tcp_proxy([up], filters=filters)
    spliced0 = stat(p, "tcp.t.bytes_spliced")
    copied0 = stat(p, "tcp.t.bytes_copied")
    s = connect(addr, timeout=60)
    snd = StreamSender(s, seed=1, total=total, chunk=CHUNK).start()
    rcv = StreamReceiver(s).start()
    assert snd.done.wait(120), "client sender stalled"
    assert rcv.done.wait(120), "client receiver stalled"
    s.close()
    assert snd.error is None and rcv.error is None, (snd.error, rcv.error)
    wait_for(lambda: up.results or up.errors, timeout=30, msg="upstream finished")
    assert not up.errors, up.errors
    r = up.results[0]
    assert r["send_error"] is None and r["recv_error"] is None, r
    # downstream -> upstream
    assert snd.sent == total and r["received"] == total, (snd.sent, r["received"])
    assert r["received_sha"] == snd.hexdigest
    # upstream -> downstream
    assert r["sent"] == total and rcv.received == total and rcv.eof, (r["sent"], rcv.received)
    assert rcv.hexdigest == r["sent_sha"]
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0, msg="connection torn down")
    st = p.stats()
    assert st["tcp.t.downstream_cx_rx_bytes_total"] >= total
    assert st["tcp.t.downstream_cx_tx_bytes_total"] >= total
    assert st["cluster.c.upstream_cx_rx_bytes_total"] >= total
    assert st["cluster.c.upstream_cx_tx_bytes_total"] >= total
    return st["tcp.t.bytes_spliced"] - spliced0, st["tcp.t.bytes_copied"] - copied0


@pytest.mark.timeout(150)
def test_integrity_256mb_each_way_splice_path(servers, tcp_proxy):
    total = 256 * MB
    spliced, copied = _duplex_through_proxy(servers, tcp_proxy, total, filters=())
    # No Python filter: after its first SPLICE_AFTER bytes (copied, as a short connection's
    # are) each direction goes through splice(2).
    assert spliced + copied == 2 * total, (spliced, copied)
    assert copied <= 2 * COPIED_BEFORE_SPLICE_MAX, copied


@pytest.mark.timeout(150)
def test_integrity_with_passthrough_filter_copy_path(servers, tcp_proxy):
    total = 256 * MB
    spliced, copied = _duplex_through_proxy(servers, tcp_proxy, total, filters=[PassThrough])
    # A Python filter sees the bytes, so they are read into buffers and copied.
    assert copied >= 2 * total, copied
    assert spliced == 0, spliced


class ReadOnly(NetworkFilter):
    """Overrides on_data only: downstream->upstream is buffered, the other way spliced."""

    def on_data(self, data, end_stream):
        return FilterStatus.CONTINUE


@pytest.mark.timeout(150)
def test_integrity_mixed_path(servers, tcp_proxy):
    total = 128 * MB
    spliced, copied = _duplex_through_proxy(servers, tcp_proxy, total, filters=[ReadOnly])
    assert copied >= total and spliced >= total - COPIED_BEFORE_SPLICE_MAX, (copied, spliced)
    assert copied + spliced == 2 * total, (copied, spliced)


def test_basic_stats(servers, tcp_proxy):
    echo = servers.echo()
    p, addr = tcp_proxy([echo])
    payload = b"0123456789" * 100
    assert echo_roundtrip(addr, payload) == payload
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    wait_for(lambda: stat(p, "cluster.c.upstream_cx_active") == 0)
    st = p.stats()
    assert st["tcp.t.downstream_cx_total"] == 1
    assert listener_stat(p, "l", "downstream_cx_total") == 1
    assert listener_stat(p, "l", "downstream_cx_active") == 0
    assert st["cluster.c.upstream_cx_total"] == 1
    assert st["tcp.t.downstream_cx_rx_bytes_total"] == len(payload)
    assert st["tcp.t.downstream_cx_tx_bytes_total"] == len(payload)
    assert st["cluster.c.upstream_cx_tx_bytes_total"] == len(payload)
    assert st["cluster.c.upstream_cx_rx_bytes_total"] == len(payload)


# --------------------------------------------------------------------------- half-close

@pytest.mark.parametrize("filters", [(), (PassThrough,)], ids=["splice", "filter"])
def test_half_close_downstream_first(servers, tcp_proxy, filters):
    """The client shuts its write side; the upstream still answers afterwards and the
    client receives everything."""
    reply = b"".join(prng_chunks(7, 3 * MB))
    up = servers.threaded(reply_after_eof_handler(reply))
    p, addr = tcp_proxy([up], filters=filters)
    request = b"request-line\n" * 5000
    with connect(addr, timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        got = recv_until_eof(s)
    assert len(got) == len(reply) and got == reply
    wait_for(lambda: up.results or up.errors)
    assert not up.errors, up.errors
    assert up.results[0]["received"] == request
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


@pytest.mark.parametrize("filters", [(), (PassThrough,)], ids=["splice", "filter"])
def test_half_close_upstream_first(servers, tcp_proxy, filters):
    """The upstream shuts its write side first; the client sees EOF, keeps sending, and the
    upstream receives all of it."""
    greeting = b"bye-from-upstream\n" * 1000
    up = servers.threaded(close_write_first_handler(greeting))
    p, addr = tcp_proxy([up], filters=filters)
    late = b"".join(prng_chunks(8, 2 * MB))
    with connect(addr, timeout=10) as s:
        assert recv_until_eof(s) == greeting          # EOF propagated downstream
        s.sendall(late)                                # ...but the other way stays open
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: up.results or up.errors, timeout=10, msg="upstream saw EOF")
        assert not up.errors, up.errors
        assert up.results[0]["received"] == late
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


# --------------------------------------------------------------------------- upstream failures

def test_upstream_refused_closes_downstream_cleanly(servers, tcp_proxy):
    holder, dead = refused_port()
    try:
        p, addr = tcp_proxy([dead])
        with connect(addr) as s:
            assert wait_closed(s, timeout=5) == "eof"
        wait_for(lambda: stat(p, "cluster.c.upstream_cx_connect_fail") == 1)
        wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
        assert stat(p, "cluster.c.upstream_cx_active") == 0
    finally:
        holder.close()


def test_max_connect_attempts_skips_dead_endpoints(servers, tcp_proxy):
    holders = [refused_port(), refused_port()]
    echo = servers.echo()
    try:
        eps = [holders[0][1], holders[1][1], echo.port]
        p, addr = tcp_proxy(eps, max_connect_attempts=3)
        for i in range(6):
            msg = b"attempt-%d" % i
            assert echo_roundtrip(addr, msg) == msg
        assert echo.accepted == 6
        assert stat(p, "cluster.c.upstream_cx_connect_fail") >= 2
    finally:
        for h, _ in holders:
            h.close()


def test_single_connect_attempt_fails_on_dead_endpoint(servers, tcp_proxy):
    """Counterpart of the test above: with one attempt, dead endpoints do break connections
    (so the retries are what made it work)."""
    holders = [refused_port(), refused_port()]
    echo = servers.echo()
    try:
        p, addr = tcp_proxy([holders[0][1], holders[1][1], echo.port], max_connect_attempts=1)
        outcomes = []
        for i in range(6):
            with connect(addr) as s:
                s.sendall(b"x")
                s.settimeout(5)
                try:
                    outcomes.append(s.recv(1) == b"x")
                except ConnectionResetError:
                    outcomes.append(False)
        assert outcomes.count(False) >= 2, outcomes
        assert outcomes.count(True) >= 1, outcomes
    finally:
        for h, _ in holders:
            h.close()


def test_connect_timeout(servers, tcp_proxy):
    hole = servers.blackhole()
    p, addr = tcp_proxy([hole], cluster_kw={"connect_timeout": 0.5})
    with connect(addr) as s:
        t0 = time.monotonic()
        end = wait_closed(s, timeout=5)
        elapsed = time.monotonic() - t0
    assert end in ("eof", "reset")
    assert 0.35 <= elapsed <= 2.5, elapsed
    wait_for(lambda: stat(p, "cluster.c.upstream_cx_connect_timeout") == 1)
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


def test_downstream_reset_while_connecting(servers, tcp_proxy):
    """A client that resets while the upstream connect is pending is cleaned up at once,
    not when the connect times out."""
    hole = servers.blackhole()
    p, addr = tcp_proxy([hole], cluster_kw={"connect_timeout": 10.0})
    s = connect(addr)
    wait_for(lambda: stat(p, "cluster.c.upstream_cx_active") == 1, msg="connect pending")
    rst_close(s)
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0, timeout=2)
    assert stat(p, "cluster.c.upstream_cx_active") == 0
    assert stat(p, "cluster.c.upstream_cx_connect_timeout") == 0


@pytest.mark.parametrize("filters", [(), (PassThrough,)], ids=["splice", "filter"])
def test_upstream_reset_midstream(servers, proxy_factory, filters):
    from fastproxy import Listener, TcpProxy
    rst = servers.threaded(reset_after_handler(256 * 1024))
    echo = servers.echo()
    p = proxy_factory(
        [Listener("r", TcpProxy("rst"), stat_prefix="r", filters=list(filters)),
         Listener("e", TcpProxy("echo"), stat_prefix="e", filters=list(filters))],
        [Cluster("rst", [Endpoint("127.0.0.1", rst.port)]),
         Cluster("echo", [Endpoint("127.0.0.1", echo.port)])])
    raddr = p.listener_address("r")
    for _ in range(2):          # the second round proves the listener still works
        with connect(raddr, timeout=10) as s:
            got = 0
            end = None
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        end = "eof"
                        break
                    got += len(d)
            except ConnectionResetError:
                end = "reset"
            assert end in ("eof", "reset")
            assert got <= 256 * 1024
    assert rst.accepted == 2
    assert echo_roundtrip(p.listener_address("e"), b"still alive") == b"still alive"
    wait_for(lambda: stat(p, "tcp.r.downstream_cx_active") == 0)
    wait_for(lambda: stat(p, "cluster.rst.upstream_cx_active") == 0)
    wait_for(lambda: stat(p, "tcp.e.downstream_cx_active") == 0)


@pytest.mark.parametrize("filters", [(), (PassThrough,)], ids=["splice", "filter"])
def test_downstream_reset_midstream(servers, tcp_proxy, filters):
    up = servers.threaded(hold_handler)
    p, addr = tcp_proxy([up], filters=filters)
    s = connect(addr)
    s.sendall(b"z" * 65536)
    wait_for(lambda: up.state.get("received", 0) == 65536, msg="data reached the upstream")
    rst_close(s)
    wait_for(lambda: up.results or up.errors, timeout=5, msg="upstream saw the close")
    assert not up.errors, up.errors
    assert up.results[0]["end"] in ("eof", "reset")
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    wait_for(lambda: stat(p, "cluster.c.upstream_cx_active") == 0)
    # and the proxy keeps serving: a new connection reaches the upstream
    with connect(addr) as s2:
        s2.sendall(b"q" * 10)
        wait_for(lambda: up.state.get("received", 0) == 65536 + 10, msg="second connection works")


def _try_echo(addr, msg):
    try:
        return echo_roundtrip(addr, msg, timeout=2) == msg
    except OSError:
        return False


# --------------------------------------------------------------------------- flow control

@pytest.mark.timeout(120)
@pytest.mark.parametrize("filters", [(), (PassThrough,)], ids=["splice", "filter"])
def test_slow_reader_bounded_memory(servers, tcp_proxy, filters):
    """Upstream sends 200 MB as fast as it can, the client does not read: the proxy must
    push back (stop reading the upstream) instead of buffering, then deliver everything
    intact once the client reads."""
    total = 200 * MB
    up = servers.threaded(source_handler(seed=11, total=total, sndbuf=256 * 1024))
    p, addr = tcp_proxy([up], filters=filters)
    rss0 = rss_bytes()
    s = connect(addr, timeout=60, rcvbuf=64 * 1024)
    wait_for(lambda: "sender" in up.state, msg="upstream connected")
    sender = up.state["sender"]
    sent_while_paused = wait_stalled(lambda: sender.sent, quiet=0.6, timeout=30)
    rss_grow = rss_bytes() - rss0
    print(f"paused reader: upstream sent {sent_while_paused / MB:.1f} MB, RSS +{rss_grow / MB:.1f} MB")
    # Kernel socket buffers on the way hold a few tens of MB at most; the rest must wait.
    assert sent_while_paused < 64 * MB, sent_while_paused
    assert rss_grow < 64 * MB, f"proxy buffered {rss_grow / MB:.1f} MB for a paused reader"
    rcv = StreamReceiver(s)
    rcv.run()
    s.close()
    assert rcv.error is None, rcv.error
    wait_for(lambda: up.results or up.errors, timeout=30)
    assert not up.errors, up.errors
    r = up.results[0]
    assert r["sent"] == total and rcv.received == total
    assert rcv.hexdigest == r["sha"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("filters", [(), (PassThrough,)], ids=["splice", "filter"])
def test_slow_upstream_bounded_memory(servers, tcp_proxy, filters):
    """The other direction: the client sends 200 MB, the upstream does not read. The proxy
    must stop reading the client rather than buffer."""
    total = 200 * MB
    gate = threading.Event()
    up = servers.threaded(gated_sink_handler(gate, rcvbuf=64 * 1024))
    p, addr = tcp_proxy([up], filters=filters)
    rss0 = rss_bytes()
    s = connect(addr, timeout=60)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    snd = StreamSender(s, seed=12, total=total).start()
    sent_while_paused = wait_stalled(lambda: snd.sent, quiet=0.6, timeout=30)
    rss_grow = rss_bytes() - rss0
    print(f"paused upstream: client sent {sent_while_paused / MB:.1f} MB, RSS +{rss_grow / MB:.1f} MB")
    assert sent_while_paused < 64 * MB, sent_while_paused
    assert rss_grow < 64 * MB, f"proxy buffered {rss_grow / MB:.1f} MB for a paused upstream"
    gate.set()
    assert snd.done.wait(60) and snd.error is None, snd.error
    wait_for(lambda: up.results or up.errors, timeout=30)
    s.close()
    assert not up.errors, up.errors
    r = up.results[0]
    assert r["n"] == total and r["eof"] and r["sha"] == snd.hexdigest


# --------------------------------------------------------------------------- idle timeout

@pytest.mark.parametrize("filters", [(), (PassThrough,)], ids=["splice", "filter"])
def test_idle_timeout_closes_idle_connection(servers, tcp_proxy, filters):
    echo = servers.echo()
    p, addr = tcp_proxy([echo], idle_timeout=0.3, filters=filters)
    with connect(addr) as s:
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        t0 = time.monotonic()
        end = wait_closed(s, timeout=5)
        elapsed = time.monotonic() - t0
    assert end in ("eof", "reset")
    assert 0.2 <= elapsed <= 2.0, elapsed
    wait_for(lambda: stat(p, "tcp.t.idle_timeout") == 1)
    wait_for(lambda: echo.active == 0, msg="upstream side closed too")


def test_idle_timeout_not_triggered_by_active_traffic(servers, tcp_proxy):
    echo = servers.echo()
    p, addr = tcp_proxy([echo], idle_timeout=0.3)
    with connect(addr) as s:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 1.5:          # 5x the idle timeout
            msg = b"tick-%04d" % i
            s.sendall(msg)
            assert recv_exact(s, len(msg)) == msg
            time.sleep(0.1)                          # pacing: well under the timeout
            i += 1
    assert stat(p, "tcp.t.idle_timeout") == 0


def test_idle_timeout_none_disables(servers, tcp_proxy):
    echo = servers.echo()
    p, addr = tcp_proxy([echo], idle_timeout=None)
    with connect(addr) as s:
        s.sendall(b"a")
        assert recv_exact(s, 1) == b"a"
        s.settimeout(0.8)
        with pytest.raises(socket.timeout):
            s.recv(1)
        s.sendall(b"b")
        assert recv_exact(s, 1) == b"b"
    assert stat(p, "tcp.t.idle_timeout") == 0


# --------------------------------------------------------------------------- scale

@pytest.mark.timeout(90)
@pytest.mark.parametrize("filters", [(), (PassThrough,)], ids=["splice", "filter"])
def test_thousand_concurrent_connections(servers, tcp_proxy, filters):
    n = 1000
    raise_nofile(8 * n + 1000)
    echo = servers.echo()
    p, addr = tcp_proxy([echo], filters=filters)
    socks = []
    try:
        for i in range(n):
            socks.append(connect(addr, timeout=10))
        wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == n, timeout=20,
                 msg=f"{n} connections active in the proxy")
        wait_for(lambda: echo.active == n, timeout=20, msg=f"{n} upstream connections")
        msgs = {}
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            m = (b"conn-%04d:" % i) * 8
            msgs[s] = [m, bytearray()]
            s.sendall(m)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        pending = n
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                want, got = msgs[s]
                d = s.recv(4096)
                assert d, f"connection closed early after {bytes(got)!r}"
                got += d
                if len(got) >= len(want):
                    assert bytes(got) == want
                    sel.unregister(s)
                    pending -= 1
        sel.close()
        assert pending == 0, f"{pending} connections never got their echo"
        assert echo.accepted == n
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0, timeout=20)
    assert stat(p, "tcp.t.downstream_cx_total") == n


# --------------------------------------------------------------------------- load balancing

def _spread(addr, count):
    for i in range(count):
        msg = b"lb-%d" % i
        assert echo_roundtrip(addr, msg) == msg


def test_round_robin_even(servers, tcp_proxy):
    ups = [servers.echo() for _ in range(3)]
    p, addr = tcp_proxy(ups, lb_policy="ROUND_ROBIN")
    _spread(addr, 60)
    counts = [u.accepted for u in ups]
    assert sum(counts) == 60
    # Round robin is per worker (2 of them): each worker is off by at most one per host.
    assert max(counts) - min(counts) <= 2, counts


def test_weighted_round_robin(servers, tcp_proxy):
    light, heavy = servers.echo(), servers.echo()
    p, addr = tcp_proxy([Endpoint("127.0.0.1", light.port, weight=1),
                         Endpoint("127.0.0.1", heavy.port, weight=3)])
    _spread(addr, 80)
    assert light.accepted + heavy.accepted == 80
    assert 14 <= light.accepted <= 26, (light.accepted, heavy.accepted)   # expected 20


def test_random_spreads(servers, tcp_proxy):
    ups = [servers.echo() for _ in range(3)]
    p, addr = tcp_proxy(ups, lb_policy="RANDOM")
    _spread(addr, 90)
    counts = [u.accepted for u in ups]
    assert sum(counts) == 90
    assert min(counts) >= 10, counts          # expected 30 each; < 10 is ~1e-6 likely


def test_strict_dns_localhost(servers, proxy_factory):
    from fastproxy import Listener, TcpProxy
    echo = servers.echo()
    p = proxy_factory([Listener("l", TcpProxy("dns"), stat_prefix="t")],
                      [Cluster("dns", [Endpoint("localhost", echo.port)], type="STRICT_DNS",
                               dns_lookup_family="V4_ONLY")])
    addr = p.listener_address("l")
    wait_for(lambda: _try_echo(addr, b"via dns"), timeout=10, msg="STRICT_DNS localhost resolves")
    assert echo.accepted >= 1


def test_dns_churn_keeps_host_stat_blocks_bounded(servers, proxy_factory, monkeypatch):
    """A STRICT_DNS cluster whose name resolves to a new address at every refresh: the
    per-host stat blocks of addresses that left every host set are freed, so they do not
    grow with the churn; a host that left while a connection to it is open keeps its
    block (and counts into it) until that connection ends."""
    from fastproxy import Listener, TcpProxy
    from fastproxy._testing import host_stat_blocks, stat_blocks_alive
    echo = servers.echo()
    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def churning_getaddrinfo(host, port, *args, **kw):
        # The control plane's resolver for one made-up name: 127.0.0.1 first (the echo
        # server), then another loopback address at each lookup (nothing listens there).
        if host != "churn.test":
            return real_getaddrinfo(host, port, *args, **kw)
        lookups.append(host)
        ip = "127.0.0.1" if len(lookups) == 1 else f"127.0.{len(lookups) // 250}.{len(lookups) % 250 + 2}"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", churning_getaddrinfo)
    before = stat_blocks_alive()
    p = proxy_factory([Listener("l", TcpProxy("dns"), stat_prefix="t")],
                      [Cluster("dns", [Endpoint("churn.test", echo.port)], type="STRICT_DNS",
                               dns_refresh_rate=0.05)])
    addr = p.listener_address("l")

    def current_ip():
        return [h[0] for h in p.cluster_hosts()["dns"]]

    held = connect(addr, timeout=10)          # to 127.0.0.1, the first resolution
    held.sendall(b"held")
    assert recv_exact(held, 4) == b"held"
    churn = 60
    wait_for(lambda: len(lookups) > churn, timeout=30, msg=f"{churn} DNS refreshes")
    # The current host, the one the workers may still hold from the refresh before, and
    # 127.0.0.1 (the open connection's) at most; one block per address ever seen before.
    assert host_stat_blocks(p) <= 3, host_stat_blocks(p)
    held.sendall(b"still counting")           # its host left every host set long ago
    assert recv_exact(held, 14) == b"still counting"
    held.close()
    wait_for(lambda: listener_stat(p, "l", "downstream_cx_active") == 0, msg="held connection gone")
    n = len(lookups)
    wait_for(lambda: len(lookups) > n + 3 and host_stat_blocks(p) <= 2, timeout=10,
             msg="the closed connection's host block freed")
    assert "127.0.0.1" not in current_ip()
    # Freed, not only forgotten: the process holds no more blocks than this proxy's own
    # (listener, tcp, cluster) and those two hosts' beyond what it had before.
    assert stat_blocks_alive() - before <= 3 + 2, (before, stat_blocks_alive())


# --------------------------------------------------------------------------- socket options

def _ss(*args):
    """`ss` output; without LD_PRELOAD, so that a sanitizer run's preload doesn't break it."""
    import os
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(["ss", *args], capture_output=True, text=True, timeout=10, env=env).stdout


def _cc_of(filter_expr):
    """Congestion control names `ss -tni` reports for the sockets matching filter_expr."""
    import re
    out = _ss("-tniH", "state", "established", filter_expr)
    return re.findall(r"\b(bbr|cubic|reno)\b(?! *:)", out)


def _sndbuf_of(filter_expr):
    """The send buffer sizes (skmem tb) `ss -tm` reports for the matching sockets."""
    import re
    out = _ss("-tmH", "state", "established", filter_expr)
    return [int(v) for v in re.findall(r"\btb(\d+)", out)]


def skip_unless_bbr_default():
    """The congestion-control tests need BBR as the host default (and ss)."""
    import shutil
    try:
        default = open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip()
    except OSError:
        pytest.skip("no /proc/sys/net/ipv4/tcp_congestion_control")
    if default != "bbr" or not shutil.which("ss"):
        pytest.skip(f"host default congestion control is {default!r} (or no ss)")


@pytest.fixture
def loopback_session(servers, tcp_proxy):
    """(upstream port, listener port) of one live proxied TCP session over loopback."""
    import shutil
    if not shutil.which("ss"):
        pytest.skip("no ss")
    up = servers.threaded(hold_handler)
    p, addr = tcp_proxy([up])
    s = connect(addr)
    s.sendall(b"x" * 1000)
    wait_for(lambda: up.state.get("received", 0) == 1000, msg="bytes through")
    yield up.port, addr[1]
    s.close()


def test_loopback_sockets_are_not_paced(loopback_session):
    """With BBR as the host default, the proxy's own loopback sockets (downstream accepted
    and upstream connected) use CUBIC instead: pacing only costs on loopback."""
    skip_unless_bbr_default()
    up_port, port = loopback_session
    assert _cc_of(f"( dport = :{up_port} )") == ["cubic"]       # proxy -> upstream
    assert _cc_of(f"( sport = :{port} )") == ["cubic"]          # proxy's accepted socket
    assert _cc_of(f"( dport = :{port} )") == ["bbr"]            # the client's: untouched


def test_loopback_sockets_have_a_fixed_send_buffer(loopback_session):
    """The proxy's loopback sockets get SO_SNDBUF 1 MiB (the kernel reports it doubled)
    instead of an autotuned buffer; the client's socket keeps the host's autotuning."""
    up_port, port = loopback_session
    assert _sndbuf_of(f"( dport = :{up_port} )") == [2 * 1048576]      # proxy -> upstream
    assert _sndbuf_of(f"( sport = :{port} )") == [2 * 1048576]         # proxy's accepted socket
    assert _sndbuf_of(f"( dport = :{port} )") != [2 * 1048576]         # the client's: untouched


def _proxy_socket_option(match, level, option, size=0):
    """getsockopt on the proxy's own socket (the proxy runs in this process) for which
    match(sockname, peername) is true; None when there is none."""
    import os
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if (s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM
                    and match(s.getsockname(), s.getpeername())):   # not a Unix socketpair
                return s.getsockopt(level, option, size) if size else s.getsockopt(level, option)
        except OSError:
            pass
        finally:
            s.close()
    return None


@pytest.mark.parametrize("listen", ["127.0.0.1", "0.0.0.0"], ids=["loopback", "any"])
def test_proxy_sockets_no_delay_and_loopback_tuning(servers, proxy_factory, listen):
    """Both proxy sockets of a session have TCP_NODELAY and, to a loopback peer, the fixed
    send buffer. A loopback listener sets them once on the listening socket and the sockets
    it accepts inherit them; a wildcard listener tunes each accepted socket whose peer (as
    accept4 returned it) is a loopback address."""
    from fastproxy import Listener, TcpProxy
    up = servers.threaded(hold_handler)
    p = proxy_factory([Listener("l", TcpProxy("c"), stat_prefix="t", address=listen, port=0)],
                      [Cluster("c", [Endpoint("127.0.0.1", up.port)])])
    port = p.listener_address("l")[1]
    with connect(("127.0.0.1", port)) as s:
        s.sendall(b"x" * 100)
        wait_for(lambda: up.state.get("received", 0) == 100, msg="bytes through")
        client = s.getsockname()
        accepted = lambda name, peer: tuple(peer) == client     # noqa: E731
        upstream = lambda name, peer: peer[1] == up.port        # noqa: E731
        for match in (accepted, upstream):
            assert _proxy_socket_option(match, socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert _proxy_socket_option(match, socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * MB
        if open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip() == "bbr":
            for match in (accepted, upstream):
                cc = _proxy_socket_option(match, socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
                assert cc.rstrip(b"\0") == b"cubic", cc
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) != 2 * MB   # the client's: untouched


def _segments_received(sock) -> int:
    """tcpi_segs_in of a socket's TCP_INFO: segments it has received so far."""
    import struct
    return struct.unpack_from("<I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 140)[0]


def _answer_and_fin_in_one_segment(sock, server):
    """Upstream: send an answer and the FIN in one segment as soon as accepted, then read
    to the end."""
    sock.send(b"answer" * 100, socket.MSG_MORE)
    sock.shutdown(socket.SHUT_WR)
    recv_until_eof(sock)


def test_last_bytes_and_fin_leave_in_one_segment(servers, tcp_proxy):
    """When the source's FIN comes with (or right behind) its last bytes, the proxy passes
    both on in one segment (MSG_MORE, then shutdown), as they came, not two: the peer wakes
    and ACKs once. The upstream here answers at once, so its bytes and FIN often come with
    the connect's completion: the FIN must be seen then too (edge-triggered, no other event
    follows)."""
    up = servers.threaded(_answer_and_fin_in_one_segment)
    p, addr = tcp_proxy([up])
    counts = []
    for _ in range(10):
        with connect(addr) as s:
            assert recv_until_eof(s) == b"answer" * 100
            counts.append(_segments_received(s))
    assert min(counts) == 2, counts     # the SYN-ACK, then the answer with the FIN


# --------------------------------------------------------------------------- splice pipes

def _pipe_fds() -> int:
    """Pipe descriptors open in this process (the proxy runs in it)."""
    import os
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{name}").startswith("pipe:")
        except OSError:
            pass
    return n


def _echo_exchange(s, payload: bytes) -> None:
    """Send payload through the proxy to an echo upstream and check what comes back."""
    t = threading.Thread(target=s.sendall, args=(payload,))
    t.start()
    got = recv_exact(s, len(payload))
    t.join()
    assert got == payload, "echoed bytes differ"


def _payload(seed: int, n: int) -> bytes:
    return b"".join(prng_chunks(seed, n))


def test_short_connections_use_no_pipe(servers, tcp_proxy):
    """A connection that moves little copies (two reads and writes a message, as splice
    would need too) and never makes a pipe; once a direction has carried SPLICE_AFTER bytes
    it switches to splice with a pipe, which goes back to the worker's pool at close."""
    echo = servers.echo()
    p, addr = tcp_proxy([echo], concurrency=1)
    base = _pipe_fds()
    for i in range(50):
        msg = b"request %d" % i
        assert echo_roundtrip(addr, msg) == msg
    with connect(addr) as s:
        _echo_exchange(s, b"hello" * 1000)
        assert _pipe_fds() == base, "a short connection holds a pipe"
        assert p._engine.pipe_stats()["created"] == 0
        _echo_exchange(s, _payload(7, 4 * SPLICE_AFTER))
        wait_for(lambda: _pipe_fds() == base + 4, msg="both directions switched to splice")
        st = p.stats()
        assert st["tcp.t.bytes_spliced"] > 0
        assert st["tcp.t.bytes_copied"] <= 2 * COPIED_BEFORE_SPLICE_MAX + 20000
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    ps = p._engine.pipe_stats()
    assert (ps["created"], ps["reused"], ps["pooled"]) == (2, 0, 2), ps
    assert _pipe_fds() == base + 4, "the drained pipes are kept for reuse"


def test_reused_pipes_carry_no_bytes_between_connections(servers, tcp_proxy):
    """Connections reuse pooled pipes, and none receives a byte of another: each of many
    connections echoes its own payload through the splice path and checks it, and between
    them connections end with bytes still in their pipes (the client resets while the proxy
    holds data for it). Those pipes are closed, not pooled."""
    echo = servers.echo()
    p, addr = tcp_proxy([echo], concurrency=1)
    size = 3 * SPLICE_AFTER
    for i in range(40):
        with connect(addr, timeout=20) as s:
            _echo_exchange(s, _payload(1000 + i, size))
        wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
        if i % 8 == 3:
            assert p._engine.pipe_stats()["pooled"] == 2
            base = _pipe_fds()
            # A connection that splices both ways with the two pooled pipes, then stops
            # reading: both pipes fill (the echo's answers wait in the upstream -> client
            # one, the rest of the request in the other), and the client resets.
            dirty = connect(addr, timeout=20, rcvbuf=4096)
            _echo_exchange(dirty, _payload(2000 + i, 2 * SPLICE_AFTER))
            assert p._engine.pipe_stats()["pooled"] == 0
            dirty.setblocking(False)
            wait_stalled(lambda: _send_while_room(dirty) + echo.rx_bytes, quiet=0.5)
            rst_close(dirty)
            wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
            assert p._engine.pipe_stats()["pooled"] == 0, "a pipe with bytes went back to the pool"
            assert _pipe_fds() == base - 4, "the pipes holding bytes are closed"
    ps = p._engine.pipe_stats()
    assert ps["reused"] >= 2 * 30, ps
    assert ps["created"] <= 2 + 2 * 5 * 2, ps           # the first, and the dirty ones' replacements


def _send_while_room(sock) -> int:
    """Send on a non-blocking socket until its buffer is full; returns the bytes sent."""
    chunk = b"z" * 65536
    sent = 0
    try:
        while True:
            sent += sock.send(chunk)
    except BlockingIOError:
        return sent


@pytest.mark.timeout(120)
def test_pipe_pool_is_bounded(servers, tcp_proxy):
    """More pipes in use at once than the pool keeps: at close, the pool keeps its bound
    and the rest are closed."""
    echo = servers.echo()
    p, addr = tcp_proxy([echo], concurrency=1)
    bound = p._engine.pipe_stats()["pool_max_per_worker"]
    base = _pipe_fds()
    n = bound // 2 + 8                  # 2 pipes each: more than the pool keeps
    socks = [connect(addr, timeout=20) for _ in range(n)]
    try:
        for i, s in enumerate(socks):
            _echo_exchange(s, _payload(i, 2 * SPLICE_AFTER))
        wait_for(lambda: _pipe_fds() == base + 4 * n, msg="every connection has its pipes")
        assert p._engine.pipe_stats()["created"] == 2 * n
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    assert p._engine.pipe_stats()["pooled"] == bound
    assert _pipe_fds() == base + 2 * bound
    p.stop(drain_timeout=0.5)
    assert _pipe_fds() == base, "the worker closes its pooled pipes when it stops"
