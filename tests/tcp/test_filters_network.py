"""Python network filters on the L4 path: transforms, ordering, STOP_ITERATION and the
continue_* calls from other threads, errors, the Buffer API and the connection object."""
from __future__ import annotations

import functools
import socket
import threading

import pytest

from fastproxy import FilterStatus, NetworkFilter

from conftest import (connect, echo_roundtrip, recv_exact, recv_until_eof, stat, wait_closed,
                      wait_for)
from upstreams import prng_chunks

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP_ITERATION


def _received(echo, i=0):
    return bytes(echo.received[i]) if len(echo.received) > i else b""


class Upper(NetworkFilter):
    def on_data(self, data, end_stream):
        data.replace(bytes(data).upper())
        return CONTINUE


def test_on_data_transform_reaches_upstream(servers, tcp_proxy):
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[Upper])
    with connect(addr) as s:
        s.sendall(b"hello, world")
        assert recv_exact(s, 12) == b"HELLO, WORLD"
    assert _received(echo) == b"HELLO, WORLD"
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    assert stat(p, "tcp.t.bytes_copied") >= 12          # read direction only (on_write not overridden)


class Tag(NetworkFilter):
    """Appends <r TAG> on the read path and <w TAG> on the write path."""

    def __init__(self, tag):
        super().__init__()
        self.tag = tag

    def on_data(self, data, end_stream):
        if len(data):
            data.append(b"<r" + self.tag + b">")
        return CONTINUE

    def on_write(self, data, end_stream):
        if len(data):
            data.append(b"<w" + self.tag + b">")
        return CONTINUE


def test_filter_order_read_forward_write_reverse(servers, tcp_proxy):
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[functools.partial(Tag, b"A"), functools.partial(Tag, b"B")])
    want = b"ping<rA><rB><wB><wA>"
    with connect(addr) as s:
        s.sendall(b"ping")
        assert recv_exact(s, len(want)) == want
    assert _received(echo) == b"ping<rA><rB>"


class Edit(NetworkFilter):
    def on_data(self, data, end_stream):
        if len(data) >= 2:
            data.drain(2)
            data.prepend(b"<")
            data.append(b">")
        return CONTINUE


def test_buffer_drain_prepend_append(servers, tcp_proxy):
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[Edit])
    with connect(addr) as s:
        s.sendall(b"xxhello")
        assert recv_exact(s, 7) == b"<hello>"
    assert _received(echo) == b"<hello>"


class Inspect(NetworkFilter):
    """Looks at every chunk through memoryview(data) and reports what it saw."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def on_data(self, data, end_stream):
        n = len(data)
        if n:
            mv = memoryview(data)
            self.log.append({
                "len": n, "nbytes": mv.nbytes, "contiguous": mv.c_contiguous, "ndim": mv.ndim,
                "format": mv.format, "same": mv.tobytes() == bytes(data),
                "head": bytes(mv[:16]),
            })
            mv.release()
        return CONTINUE


def test_memoryview_of_buffer(servers, tcp_proxy):
    log = []
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[functools.partial(Inspect, log)])
    payload = b"".join(prng_chunks(3, 300_000, chunk=100_000))
    with connect(addr) as s:
        s.sendall(payload)
        assert recv_exact(s, len(payload)) == payload
    assert _received(echo) == payload
    assert sum(r["len"] for r in log) == len(payload)
    for r in log:
        assert r["nbytes"] == r["len"] and r["contiguous"] and r["ndim"] == 1 and r["format"] == "B", r
        assert r["same"], r
    assert log[0]["head"] == payload[:16]


class HoldRead(NetworkFilter):
    """STOP_ITERATION on data until released by the test."""

    def __init__(self, box):
        super().__init__()
        self.box = box
        self.released = False

    def on_data(self, data, end_stream):
        if self not in self.box:
            self.box.append(self)
        return CONTINUE if self.released else STOP


class Record(NetworkFilter):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def on_data(self, data, end_stream):
        self.seen.append(bytes(data))
        return CONTINUE


def test_stop_iteration_on_data_until_continue_reading(servers, tcp_proxy):
    box, seen = [], []
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[functools.partial(HoldRead, box), functools.partial(Record, seen)])
    with connect(addr) as s:
        s.sendall(b"held-bytes")
        wait_for(lambda: box, msg="filter saw the data")
        # Held: neither the next filter nor the upstream gets anything meanwhile.
        s.settimeout(0.4)
        with pytest.raises(socket.timeout):
            s.recv(1)
        assert echo.rx_bytes == 0 and b"".join(seen) == b""
        f = box[0]
        f.released = True
        t = threading.Thread(target=f.connection.continue_reading)   # from a foreign thread
        t.start()
        t.join()
        s.settimeout(5)
        assert recv_exact(s, 10) == b"held-bytes"
        assert b"".join(seen) == b"held-bytes"
        s.sendall(b"+after")
        assert recv_exact(s, 6) == b"+after"
    assert _received(echo) == b"held-bytes+after"


class HoldWrite(NetworkFilter):
    def __init__(self, box):
        super().__init__()
        self.box = box
        self.released = False

    def on_write(self, data, end_stream):
        if self not in self.box:
            self.box.append(self)
        return CONTINUE if self.released else STOP


def test_stop_iteration_on_write_until_continue_writing(servers, tcp_proxy):
    box = []
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[functools.partial(HoldWrite, box)])
    with connect(addr) as s:
        s.sendall(b"abc")
        wait_for(lambda: _received(echo) == b"abc", msg="upstream got the bytes")
        wait_for(lambda: box, msg="write filter saw the echo")
        s.settimeout(0.4)
        with pytest.raises(socket.timeout):
            s.recv(1)
        f = box[0]
        f.released = True
        t = threading.Thread(target=f.connection.continue_writing)
        t.start()
        t.join()
        s.settimeout(5)
        assert recv_exact(s, 3) == b"abc"


class Gate(NetworkFilter):
    def __init__(self, box):
        super().__init__()
        self.box = box

    def on_new_connection(self):
        self.box.append(self)
        return STOP


def test_stop_iteration_on_new_connection_delays_upstream(servers, tcp_proxy):
    box = []
    echo = servers.echo()
    p, addr = tcp_proxy([echo], filters=[functools.partial(Gate, box)])
    with connect(addr) as s:
        wait_for(lambda: box, msg="on_new_connection called")
        s.sendall(b"early")
        s.settimeout(0.4)
        with pytest.raises(socket.timeout):
            s.recv(1)
        assert echo.accepted == 0, "upstream connected before continue_reading()"
        assert stat(p, "cluster.c.upstream_cx_total") == 0
        t = threading.Thread(target=box[0].connection.continue_reading)
        t.start()
        t.join()
        s.settimeout(5)
        assert recv_exact(s, 5) == b"early"
    assert echo.accepted == 1


class Boom(NetworkFilter):
    def on_data(self, data, end_stream):
        if b"boom" in bytes(data):
            raise RuntimeError("filter failure (expected by the test)")
        return CONTINUE


def test_filter_exception_closes_connection_proxy_keeps_serving(servers, tcp_proxy):
    echo = servers.echo()
    p, addr = tcp_proxy([echo], filters=[Boom])
    with connect(addr) as ok:
        ok.sendall(b"fine")
        assert recv_exact(ok, 4) == b"fine"
        with connect(addr) as bad:
            bad.sendall(b"boom")
            assert wait_closed(bad, timeout=5) in ("eof", "reset")
        wait_for(lambda: stat(p, "tcp.t.python_filter_error") == 1)
        ok.sendall(b"still")                       # an unrelated connection is unaffected
        assert recv_exact(ok, 5) == b"still"
    assert echo_roundtrip(addr, b"new one") == b"new one"
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    wait_for(lambda: echo.active == 0)


class Closer(NetworkFilter):
    def __init__(self, closed):
        super().__init__()
        self.closed = closed

    def on_data(self, data, end_stream):
        if b"quit" in bytes(data):
            self.connection.close()
            return STOP
        return CONTINUE

    def on_close(self):
        self.closed.append(self.connection.id)


def test_close_from_filter(servers, tcp_proxy):
    closed = []
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[functools.partial(Closer, closed)])
    with connect(addr) as s:
        s.sendall(b"hi")
        assert recv_exact(s, 2) == b"hi"
        s.sendall(b"quit")
        assert wait_closed(s, timeout=5) in ("eof", "reset")
    wait_for(lambda: len(closed) == 1, msg="on_close called")
    wait_for(lambda: echo.active == 0, msg="upstream connection closed too")
    assert _received(echo) == b"hi"           # "quit" was not forwarded
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


class Greeter(NetworkFilter):
    GREETING = b"220 fastproxy test greeting\r\n"

    def on_new_connection(self):
        self.connection.write(self.GREETING)
        return CONTINUE


def test_write_injects_bytes_to_downstream(servers, tcp_proxy):
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[Greeter])
    with connect(addr) as s:
        assert recv_exact(s, len(Greeter.GREETING)) == Greeter.GREETING
        s.sendall(b"then echo")
        assert recv_exact(s, 9) == b"then echo"
    assert _received(echo) == b"then echo"      # injected bytes never went upstream


class Info(NetworkFilter):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def on_new_connection(self):
        c = self.connection
        self.log.append(("new", c.id, c.remote_address, c.local_address))
        return CONTINUE

    def on_data(self, data, end_stream):
        self.log.append(("data", self.connection.id, bytes(data), bool(end_stream)))
        return CONTINUE

    def on_write(self, data, end_stream):
        self.log.append(("write", self.connection.id, bytes(data), bool(end_stream)))
        return CONTINUE

    def on_close(self):
        self.log.append(("close", self.connection.id))


def _addr(a):
    """Normalise an address given as (host, port) or "host:port"."""
    if isinstance(a, str):
        host, _, port = a.rpartition(":")
        return host, int(port)
    return a[0], a[1]


def test_connection_object_end_stream_and_on_close(servers, tcp_proxy):
    log = []
    calls = []

    def factory():
        calls.append(1)
        return Info(log)

    echo = servers.echo()
    p, addr = tcp_proxy([echo], filters=[factory])
    with connect(addr) as a, connect(addr) as b:
        for s, msg in ((a, b"from-a"), (b, b"from-b")):
            s.sendall(msg)
            assert recv_exact(s, len(msg)) == msg
        news = [e for e in log if e[0] == "new"]
        assert len(news) == 2 and len(calls) == 2        # one filter instance per connection
        ids = {e[1] for e in news}
        assert len(ids) == 2
        assert {_addr(e[2]) for e in news} == {a.getsockname(), b.getsockname()}
        assert {_addr(e[3]) for e in news} == {tuple(addr)}
        # half-close a: on_data sees end_stream, the echo upstream closes, a gets EOF
        a.shutdown(socket.SHUT_WR)
        assert recv_until_eof(a) == b""
        wait_for(lambda: any(e[0] == "data" and e[3] for e in log), msg="end_stream=True seen")
        # the upstream's FIN (echo closes after ours) reaches on_write as end_stream too
        wait_for(lambda: any(e[0] == "write" and e[3] for e in log), msg="on_write end_stream seen")
    wait_for(lambda: len([e for e in log if e[0] == "close"]) == 2, msg="on_close for both")
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    assert sorted(e[1] for e in log if e[0] == "close") == sorted(ids)
    data = b"".join(e[2] for e in log if e[0] == "data")
    assert sorted([b"from-a", b"from-b"]) == sorted(
        b"".join(e[2] for e in log if e[0] == "data" and e[1] == i) for i in ids)
    assert len(data) == 12
    assert sorted(b"".join(e[2] for e in log if e[0] == "write" and e[1] == i) for i in ids) == \
        sorted([b"from-a", b"from-b"])


class InPlaceUpper(NetworkFilter):
    """Edits the bytes through memoryview(data): only works if the view aliases the
    connection's buffer (zero-copy). Keeps the first view to check it stays valid."""

    def __init__(self, kept):
        super().__init__()
        self.kept = kept

    def on_data(self, data, end_stream):
        if len(data):
            mv = memoryview(data)
            mv[:] = mv.tobytes().upper()
            if not self.kept:
                self.kept.append((mv, mv.tobytes()))
            else:
                mv.release()
        return CONTINUE


def test_memoryview_is_zero_copy_and_outlives_the_call(servers, tcp_proxy):
    kept = []
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[functools.partial(InPlaceUpper, kept)])
    first = b"abcdefghij" * 1000
    with connect(addr) as s:
        s.sendall(first)
        assert recv_exact(s, len(first)) == first.upper()
        more = bytes(prng_chunks(5, 2_000_000).__next__()).replace(b"\0", b"x")
        s.sendall(more)
        assert recv_exact(s, len(more)) == more.upper()
    assert _received(echo) == first.upper() + more.upper()
    mv, snapshot = kept[0]
    # The view taken during the first call still shows the bytes it showed then.
    assert mv.tobytes() == snapshot and snapshot == first.upper()[:len(snapshot)]
    mv.release()


def test_stop_iteration_holds_end_stream_too(servers, tcp_proxy):
    """Data and FIN arrive while a filter holds the read path: both are released, in
    order, by continue_reading()."""
    box = []
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[functools.partial(HoldRead, box)])
    with connect(addr) as s:
        s.sendall(b"request")
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: box, msg="filter saw the data")
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(1)
        assert echo.rx_bytes == 0
        box[0].released = True
        box[0].connection.continue_reading()
        s.settimeout(5)
        assert recv_until_eof(s) == b"request"     # echo answered, then closed after our FIN
    assert _received(echo) == b"request"
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


def test_half_close_before_upstream_connect(servers, tcp_proxy):
    """The client sends and shuts its write side while on_new_connection holds the
    connection; after continue_reading() the upstream gets both, answers, and closes."""
    box = []
    echo = servers.echo(record=True)
    p, addr = tcp_proxy([echo], filters=[functools.partial(Gate, box)])
    with connect(addr) as s:
        wait_for(lambda: box)
        s.sendall(b"early bird")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(1)
        box[0].connection.continue_reading()
        s.settimeout(5)
        assert recv_until_eof(s) == b"early bird"
    assert _received(echo) == b"early bird"
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


class Keep(NetworkFilter):
    """Hands its connection to the test (on_new_connection only: both directions splice)."""

    def __init__(self, box):
        super().__init__()
        self.box = box

    def on_new_connection(self):
        self.box.append(self.connection)
        return CONTINUE


class KeepBuffered(Keep):
    def on_write(self, data, end_stream):
        return CONTINUE


@pytest.mark.parametrize("cls", [Keep, KeepBuffered], ids=["splice", "buffered"])
def test_write_from_foreign_thread_keeps_order(servers, tcp_proxy, cls):
    box = []
    echo = servers.echo()
    p, addr = tcp_proxy([echo], filters=[functools.partial(cls, box)])
    with connect(addr) as s:
        s.sendall(b"one|")
        assert recv_exact(s, 4) == b"one|"
        wait_for(lambda: box)
        t = threading.Thread(target=box[0].write, args=(b"PUSH|",))
        t.start()
        t.join()
        assert recv_exact(s, 5) == b"PUSH|"
        s.sendall(b"two|")
        assert recv_exact(s, 4) == b"two|"
    assert echo.rx_bytes == 8                   # the injected bytes never went upstream


def test_close_from_foreign_thread(servers, tcp_proxy):
    box = []
    echo = servers.echo()
    p, addr = tcp_proxy([echo], filters=[functools.partial(Keep, box)])
    with connect(addr) as s:
        s.sendall(b"hi")
        assert recv_exact(s, 2) == b"hi"
        wait_for(lambda: box)
        threading.Thread(target=box[0].close).start()
        assert wait_closed(s, timeout=5) in ("eof", "reset")
    wait_for(lambda: echo.active == 0)
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)
    box[0].close()                              # closing a closed connection is harmless
    box[0].write(b"late")
    box[0].continue_reading()


class Raiser(NetworkFilter):
    def __init__(self, where):
        super().__init__()
        self.where = where
        if where == "factory":
            raise RuntimeError("factory failure (expected by the test)")

    def on_new_connection(self):
        if self.where == "on_new_connection":
            raise RuntimeError("expected by the test")
        return CONTINUE

    def on_data(self, data, end_stream):
        if self.where == "on_data":
            raise RuntimeError("expected by the test")
        return CONTINUE

    def on_write(self, data, end_stream):
        if self.where == "on_write":
            raise RuntimeError("expected by the test")
        return CONTINUE

    def on_close(self):
        if self.where == "on_close":
            raise RuntimeError("expected by the test")


class BadStatus(NetworkFilter):
    def on_data(self, data, end_stream):
        return "not a status"


@pytest.mark.parametrize("where", ["factory", "on_new_connection", "on_data", "on_write", "bad_status"])
def test_filter_failures_close_only_their_connection(servers, proxy_factory, where):
    from fastproxy import Cluster, Endpoint, Listener
    echo = servers.echo()
    bad = BadStatus if where == "bad_status" else functools.partial(Raiser, where)
    p = proxy_factory([Listener(name="bad", cluster="c", stat_prefix="bad", filters=[bad]),
                       Listener(name="good", cluster="c", stat_prefix="good", filters=[Upper])],
                      [Cluster("c", [Endpoint("127.0.0.1", echo.port)])])
    good = connect(p.listener_address("good"))
    good.sendall(b"a")
    assert recv_exact(good, 1) == b"A"
    with connect(p.listener_address("bad")) as s:
        s.sendall(b"x")
        assert wait_closed(s, timeout=5) in ("eof", "reset")
    wait_for(lambda: stat(p, "tcp.bad.python_filter_error") >= 1)
    wait_for(lambda: stat(p, "tcp.bad.downstream_cx_active") == 0)
    good.sendall(b"b")
    assert recv_exact(good, 1) == b"B"
    good.close()
    assert echo_roundtrip(p.listener_address("good"), b"fine") == b"FINE"


def test_on_close_exception_is_contained(servers, tcp_proxy):
    echo = servers.echo()
    p, addr = tcp_proxy([echo], filters=[functools.partial(Raiser, "on_close")])
    for i in range(3):
        assert echo_roundtrip(addr, b"r%d" % i) == b"r%d" % i
    wait_for(lambda: stat(p, "tcp.t.python_filter_error") == 3)
    wait_for(lambda: stat(p, "tcp.t.downstream_cx_active") == 0)


@pytest.mark.timeout(60)
def test_held_read_path_is_bounded_then_delivers_everything(servers, tcp_proxy):
    """While a filter holds the read path the proxy buffers at most about buffer_limit and
    stops reading the client; continue_reading() then lets every byte through, intact."""
    from conftest import rss_bytes, wait_stalled
    from upstreams import StreamSender, sink_handler
    box = []
    up = servers.threaded(sink_handler)
    p, addr = tcp_proxy([up], filters=[functools.partial(HoldRead, box)], buffer_limit=1 << 20)
    total = 64 << 20
    rss0 = rss_bytes()
    s = connect(addr, timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    snd = StreamSender(s, seed=21, total=total).start()
    wait_for(lambda: box)
    sent = wait_stalled(lambda: snd.sent, quiet=0.5, timeout=20)
    grow = rss_bytes() - rss0
    assert sent < 48 << 20, f"client could send {sent >> 20} MB into a held connection"
    assert grow < 48 << 20, f"RSS grew {grow >> 20} MB while held"
    box[0].released = True
    box[0].connection.continue_reading()
    assert snd.done.wait(30) and snd.error is None, snd.error
    wait_for(lambda: up.results or up.errors, timeout=30)
    s.close()
    assert not up.errors, up.errors
    assert up.results[0]["n"] == total and up.results[0]["sha"] == snd.hexdigest
