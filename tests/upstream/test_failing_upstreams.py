"""Self-test of the scripted failing upstreams (failing_upstreams.py): each behaviour seen
from a real client (http.client, raw sockets, curl) on loopback."""
from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import connect, recv_head, wait_closed
from failing_upstreams import HOST_HEADER, HostGroup, RefusingHost, ScriptedHost, scripted_host

HERE = Path(__file__).resolve().parent


def get(conn, path="/"):
    """One request on an open http.client connection: (status, host header, body)."""
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.getheader(HOST_HEADER), r.read()


@pytest.fixture
def host():
    made = []

    def make(behaviour="ok", name="h", **kw):
        h = scripted_host(name, behaviour, **kw)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def test_ok_keeps_the_connection_alive_and_names_itself(host):
    h = host("ok", "alpha")
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
    for _ in range(3):
        assert get(conn) == (200, "alpha", b"alpha\n")
    conn.close()
    assert (h.requests, h.connections, h.statuses[200]) == (3, 1, 3)


def test_request_bodies_are_read_before_the_answer(host):
    h = host("ok")
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
    conn.request("POST", "/", body=b"x" * 100_000)
    assert conn.getresponse().read() == b"h\n"
    conn.request("POST", "/", body=iter([b"abc", b"def"]), encode_chunked=True)
    r = conn.getresponse()
    assert (r.status, r.read()) == (200, b"h\n")
    assert (h.requests, h.connections) == (2, 1)


def test_connection_close_is_honoured(host):
    h = host("ok")
    s = connect(("127.0.0.1", h.port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _ = recv_head(s)
    assert b"Connection: close" in head
    assert wait_closed(s) == "eof"
    s.close()


def test_fail_n_fails_the_first_n_then_succeeds(host):
    h = host("fail_n", n=2)
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
    assert [get(conn)[0] for _ in range(4)] == [503, 503, 200, 200]
    g = host("fail_n", n=1, status=500)
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5)
    assert [get(conn)[0] for _ in range(2)] == [500, 200]
    assert dict(h.statuses) == {503: 2, 200: 2}


def test_reset_reads_the_request_then_sends_rst(host):
    h = host("reset")
    s = connect(("127.0.0.1", h.port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_closed(s) == "reset"          # an RST, not a FIN
    s.close()
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        get(conn)
    h.wait(lambda h: h.resets == 2)
    assert (h.requests, h.connections, h.statuses) == (2, 2, {})


def test_hang_reads_and_never_answers(host):
    h = host("hang")
    s = connect(("127.0.0.1", h.port), timeout=0.3)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    h.wait_requests(1)
    with pytest.raises(socket.timeout):        # 0.3 s of silence after the request was read
        s.recv(1)
    s.close()
    assert (h.requests, h.resets, h.statuses) == (1, 0, {})


def test_hang_serves_no_one_while_the_client_waits_and_closing_ends_it(host):
    h = ScriptedHost("h", "hang")
    s = connect(("127.0.0.1", h.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    h.wait_requests(1)
    h.close()                                   # the host's close ends the hung connection
    assert wait_closed(s) in ("eof", "reset")
    s.close()


def test_refuse_refuses_connections():
    h = RefusingHost("r")
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", h.port), timeout=2)
        assert (h.requests, h.connections) == (0, 0)
    finally:
        h.close()


def test_slow_answers_after_its_delay(host):
    h = host("slow", delay=0.3)
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
    t0 = time.monotonic()
    assert get(conn)[0] == 200
    assert time.monotonic() - t0 >= 0.3


def test_flaky_fails_and_resets_its_fractions_seeded(host):
    def run(h, n=400):
        out = []
        conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
        for _ in range(n):
            try:
                out.append(get(conn)[0])
            except (ConnectionResetError, http.client.RemoteDisconnected):
                out.append("reset")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
        conn.close()
        return out
    a = run(host("flaky", "a", fail_rate=0.5, reset_rate=0.1, seed=7))
    b = run(host("flaky", "b", fail_rate=0.5, reset_rate=0.1, seed=7))
    c = run(host("flaky", "c", fail_rate=0.5, reset_rate=0.1, seed=8))
    assert a == b != c                          # the seed fixes the sequence
    resets, fails = a.count("reset"), a.count(503)
    assert 20 <= resets <= 65                   # 10% of 400, binomial sd 6
    assert 130 <= fails <= 230                  # 50% of the 360 or so not reset, sd 9.5
    assert a.count(200) == 400 - resets - fails


def test_gateway_answers_its_status(host):
    for status in (502, 503, 504):
        h = host("gateway", status=status)
        conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
        assert [get(conn)[0] for _ in range(2)] == [status, status]
    assert host("gateway").status == 502
    with pytest.raises(ValueError, match="502, 503 or 504"):
        ScriptedHost("g", "gateway", status=500)
    with pytest.raises(ValueError, match="behaviour 'nope'"):
        scripted_host("g", "nope")


def test_health_endpoint_switches_at_run_time_and_is_counted_apart(host):
    h = host("reset", health_path="/hc")
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
    assert get(conn, "/hc") == (200, "h", b"h\n")     # a resetting host can still be healthy
    h.set_health(503)
    assert get(conn, "/hc")[0] == 503
    h.set_health("reset")
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        get(conn, "/hc")
    conn.close()
    h.set_health("hang")
    s = connect(("127.0.0.1", h.port), timeout=0.3)
    s.sendall(b"GET /hc HTTP/1.1\r\nHost: x\r\n\r\n")
    h.wait(lambda h: h.health_checks == 4)
    with pytest.raises(socket.timeout):
        s.recv(1)
    s.close()
    assert (h.requests, h.health_checks, h.resets) == (0, 4, 1)


def test_wait_returns_when_requests_arrive_and_times_out_otherwise(host):
    h = host("ok")
    got = []
    waiter = threading.Thread(target=lambda: got.append(h.wait_requests(5)))
    waiter.start()
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
    for _ in range(5):
        get(conn)
    waiter.join(5)
    assert got == [True]
    with pytest.raises(AssertionError, match="6 requests"):
        h.wait_requests(6, timeout=0.2)


def test_curl_sees_each_host_of_a_group():
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    with HostGroup(("a", "ok"), ("b", "fail_n", {"n": 1}), ("c", "gateway", {"status": 504}),
                   ("d", "refuse")) as group:
        def curl_status(port):
            out = subprocess.run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-D", "-",
                                  f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=10)
            return out.returncode, out.stdout
        rc, out = curl_status(group["a"].port)
        assert rc == 0 and out.endswith("200") and f"{HOST_HEADER}: a" in out
        assert curl_status(group["b"].port)[1].endswith("503")
        assert curl_status(group["b"].port)[1].endswith("200")
        assert curl_status(group["c"].port)[1].endswith("504")
        assert curl_status(group["d"].port)[0] == 7               # curl: couldn't connect
        assert group.counts() == {"a": 1, "b": 2, "c": 1, "d": 0}
        assert group.by_port(group.ports[1]).name == "b"


def test_script_serves_hosts_in_a_process_of_its_own():
    p = subprocess.Popen([sys.executable, str(HERE / "failing_upstreams.py"), "ok:a",
                          "flaky:b:fail_rate=1.0,seed=3", "fail_n:c:n=1,status=502"],
                         stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(p.stdout.readline())
        for name, want in (("a", 200), ("b", 503), ("c", 502), ("c", 200)):
            conn = http.client.HTTPConnection("127.0.0.1", ports[name], timeout=5)
            assert get(conn)[:2] == (want, name)
            conn.close()
        p.send_signal(signal.SIGTERM)
        counters = json.loads(p.stdout.readline())
        assert p.wait(10) == 0
    finally:
        p.kill()
    assert counters["c"] == {"requests": 2, "health_checks": 0, "connections": 2, "resets": 0,
                             "statuses": {"502": 1, "200": 1}}
