"""Resource limits: max_connections overflow, and running out of file descriptors (EMFILE)
in a proxy process with a low RLIMIT_NOFILE."""
from __future__ import annotations

import resource
import select
import selectors
import subprocess
import sys
import tempfile
import time

import pytest

from fastproxy import Cluster, Endpoint, Listener, TcpProxy

from conftest import (SRC, connect, cpu_seconds, echo_roundtrip, fd_count, listener_stat,
                      recv_exact, wait_closed, wait_for, wait_stalled)


def test_global_downstream_limit_over_tcp_and_http_listeners(servers, proxy_factory):
    """Proxy(max_downstream_connections=N) (Envoy's overload.global_downstream_max_connections)
    counts the connections of every listener together, TCP and HTTP, and frees a slot when
    either kind of connection ends."""
    from fastproxy.http.model import (HttpConnectionManager, Route, RouteAction, RouteConfiguration,
                                      RouteMatch, VirtualHost)
    echo = servers.echo()
    rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
        Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))])])
    p = proxy_factory([Listener("tcp", TcpProxy("c"), stat_prefix="t"),
                       Listener("http", HttpConnectionManager("h", rc))],
                      [Cluster("c", [Endpoint("127.0.0.1", echo.port)])], max_downstream_connections=2)
    tcp, http = p.listener_address("tcp"), p.listener_address("http")
    held_tcp = connect(tcp)
    held_tcp.sendall(b"in")
    assert recv_exact(held_tcp, 2) == b"in"
    held_http = connect(http)
    wait_for(lambda: listener_stat(p, "http", "downstream_cx_active") == 1)
    for addr, name in ((tcp, "tcp"), (http, "http")):       # 2 of 2 open: both listeners refuse
        extra = connect(addr)
        assert wait_closed(extra, timeout=5) in ("eof", "reset")
        extra.close()
        wait_for(lambda: listener_stat(p, name, "downstream_global_cx_overflow") == 1)
    assert listener_stat(p, "tcp", "downstream_cx_overflow") == 0      # not the listener's own limit
    held_http.close()                                       # an HTTP connection ending frees a slot
    a = wait_for(lambda: _admitted(tcp), timeout=10)
    held_tcp.close()                                        # and so does a TCP one
    b = wait_for(lambda: _admitted(tcp), timeout=10)
    a.close()
    b.close()


def _admitted(addr):
    """A connection the proxy kept (it echoes), or None while it still refuses: a slot is
    free once the worker has seen the earlier connection's close, a moment after the client."""
    s = connect(addr)
    try:
        s.sendall(b"ok")
        if recv_exact(s, 2) == b"ok":
            return s
    except (OSError, AssertionError):                   # reset, or EOF (recv_exact)
        pass
    s.close()
    return None


def test_max_connections_overflow(servers, proxy_factory):
    echo = servers.echo()
    p = proxy_factory([Listener("l", TcpProxy("c"), stat_prefix="t", max_connections=2)],
                      [Cluster("c", [Endpoint("127.0.0.1", echo.port)])])
    addr = p.listener_address("l")
    c1, c2 = connect(addr), connect(addr)
    for s in (c1, c2):
        s.sendall(b"in")
        assert recv_exact(s, 2) == b"in"
    c3 = connect(addr)                        # the kernel accepts; the proxy must refuse
    assert wait_closed(c3, timeout=5) in ("eof", "reset")
    c3.close()
    wait_for(lambda: listener_stat(p, "l", "downstream_cx_overflow") == 1)
    assert listener_stat(p, "l", "downstream_cx_active") == 2
    assert echo.accepted == 2                 # no upstream connection for the overflow
    c1.sendall(b"ok")                         # the admitted ones are unaffected
    assert recv_exact(c1, 2) == b"ok"
    c1.close()
    wait_for(lambda: listener_stat(p, "l", "downstream_cx_active") == 1)
    assert echo_roundtrip(addr, b"room again") == b"room again"
    c2.close()
    wait_for(lambda: listener_stat(p, "l", "downstream_cx_active") == 0)
    assert listener_stat(p, "l", "downstream_cx_overflow") == 1


PROXY_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from fastproxy import Proxy, Listener, Cluster, Endpoint, TcpProxy
p = Proxy(listeners=[Listener("l", TcpProxy("c"), stat_prefix="t")],
          clusters=[Cluster("c", [Endpoint("127.0.0.1", int(sys.argv[2]))])],
          concurrency=1)
p.start()
# Each proxied connection takes two descriptors (the client's, then the upstream's): with an
# odd number left, the upstream socket() would meet EMFILE each time and accept never would,
# so the count left is made even, whatever the interpreter and the core hold open (the core
# keeps a duplicate of the debug log's descriptor, for one).
import os, resource
left = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - (len(os.listdir("/proc/self/fd")) - 1)
spare = os.open(os.devnull, os.O_RDONLY) if left % 2 else None
print(p.listener_address("l")[1], flush=True)
for line in sys.stdin:                # a line asks for the splice pipe counts; EOF stops us
    print(json.dumps(p._engine.pipe_stats()), flush=True)
p.stop(drain_timeout=0.5)
print("stopped", flush=True)
"""

NOFILE = 64


def _limit_fds():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _readline(proc, timeout):
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        raise AssertionError(f"proxy subprocess printed nothing within {timeout}s")
    return proc.stdout.readline()


def _try_echo(addr, msg):
    try:
        return echo_roundtrip(addr, msg, timeout=1) == msg
    except (OSError, AssertionError):
        return False


def _stop_child(proc, clients) -> None:
    """Close the test's clients, then ask the proxy subprocess to stop (EOF on its stdin)
    and fail if it does not."""
    for s in clients:
        s.close()
    if proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("proxy subprocess did not stop on request")


@pytest.mark.timeout(90)
def test_emfile_does_not_kill_or_spin(servers):
    echo = servers.echo()
    err = tempfile.TemporaryFile(mode="w+")     # a pipe could fill up with log lines
    proc = subprocess.Popen([sys.executable, "-c", PROXY_SCRIPT, str(SRC), str(echo.port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                            preexec_fn=_limit_fds, text=True)

    def stderr_text():
        err.seek(0)
        return err.read()[-4000:]
    clients = []
    try:
        line = _readline(proc, 20)
        assert line.strip().isdigit(), (line, stderr_text() if proc.poll() is not None else "")
        addr = ("127.0.0.1", int(line))
        assert _try_echo(addr, b"warm-up")
        # Far more connections than the proxy has descriptors for (each proxied connection
        # costs it at least two sockets, plus pipes on the splice path).
        for i in range(3 * NOFILE):
            s = connect(addr, timeout=5)
            s.sendall(b"hello-%03d" % i)
            clients.append(s)
        # Saturation: the proxy stops opening upstream connections.
        wait_stalled(lambda: echo.accepted, quiet=0.5, timeout=20)
        assert proc.poll() is None, stderr_text()
        assert echo.accepted < 3 * NOFILE, "the fd limit was not reached; the test proves nothing"
        assert fd_count(proc.pid) <= NOFILE
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(1.0)                       # measurement window while saturated
        busy = cpu_seconds(proc.pid) - cpu0
        window = time.monotonic() - t0
        assert busy < 0.5 * window, f"proxy spins at EMFILE: {busy:.2f}s CPU in {window:.2f}s"
        assert proc.poll() is None, stderr_text()
        # The connections that did get through work (their echo came back).
        served = 0
        sel = selectors.DefaultSelector()
        for i, s in enumerate(clients):
            sel.register(s, selectors.EVENT_READ, i)
        for key, _ in sel.select(timeout=0.5):
            try:
                if key.fileobj.recv(64) == b"hello-%03d" % key.data:
                    served += 1
            except OSError:
                pass
        sel.close()
        assert served >= 1
        for s in clients:
            s.close()
        clients.clear()
        # Once the clients are gone the proxy recovers and serves new connections.
        wait_for(lambda: _try_echo(addr, b"after the storm"), timeout=20, interval=0.1,
                 msg="proxy serves again after EMFILE")
        for i in range(5):
            assert _try_echo(addr, b"again-%d" % i)
        assert proc.poll() is None
    finally:
        _stop_child(proc, clients)
    assert proc.returncode == 0, stderr_text()


@pytest.mark.timeout(90)
def test_emfile_frees_pooled_pipes_and_falls_back_to_copying(servers):
    """Pooled splice pipes hold descriptors: when accept runs out of them the worker closes
    its pool first; a direction that can get no pipe copies instead, with the same bytes."""
    import json
    import threading
    from test_tcp_proxy import SPLICE_AFTER, _echo_exchange, _payload
    echo = servers.echo()
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-c", PROXY_SCRIPT, str(SRC), str(echo.port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                            preexec_fn=_limit_fds, text=True)

    def pipes():
        proc.stdin.write("pipes\n")
        proc.stdin.flush()
        return json.loads(_readline(proc, 10))

    clients = []
    try:
        addr = ("127.0.0.1", int(_readline(proc, 20)))
        # Fill the pool: connections that splice both ways, then close.
        bulk = [connect(addr, timeout=20) for _ in range(4)]
        for i, s in enumerate(bulk):
            _echo_exchange(s, _payload(i, 2 * SPLICE_AFTER))
        for s in bulk:
            s.close()
        wait_for(lambda: pipes()["pooled"] == 8, timeout=10, msg="8 pipes pooled")
        # Run out of descriptors.
        for i in range(3 * NOFILE):
            s = connect(addr, timeout=5)
            s.sendall(b"hello-%03d" % i)
            clients.append(s)
        wait_stalled(lambda: echo.accepted, quiet=0.5, timeout=20)
        assert proc.poll() is None
        assert pipes()["pooled"] == 0, "EMFILE should have closed the pooled pipes"
        # While saturated, a streaming connection that got in mostly finds no descriptor
        # for a pipe: then it copies, and its bytes are the same.
        done = threading.Event()
        for s in clients:
            try:
                s.settimeout(0.2)
                if s.recv(64):
                    s.settimeout(20)
                    created = pipes()["created"]
                    _echo_exchange(s, _payload(99, 4 * SPLICE_AFTER))
                    done.set()
                    break
            except OSError:
                continue
        assert done.is_set(), "no connection was served"
        for s in clients:
            s.close()
        clients.clear()
        # Recovered: new streaming connections splice again.
        wait_for(lambda: _try_echo(addr, b"after the storm"), timeout=20, interval=0.1,
                 msg="proxy serves again after EMFILE")
        with connect(addr, timeout=20) as s:
            _echo_exchange(s, _payload(100, 4 * SPLICE_AFTER))
        assert pipes()["created"] > created
    finally:
        _stop_child(proc, clients)
    assert proc.returncode == 0, err.seek(0) or err.read()[-4000:]
