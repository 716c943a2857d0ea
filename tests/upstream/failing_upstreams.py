"""Scripted HTTP/1.1 upstreams that fail on purpose: each one is one host of a cluster.

A host listens on 127.0.0.1:<ephemeral> (the refusing one only binds) and serves keep-alive
HTTP/1.1 as a real server does (one thread per connection, tests/http_upstreams.py's
`RawHttpUpstream` reads the requests; `Connection: close` or HTTP/1.0 close after the
answer). Every answer carries ``x-upstream-host: <name>`` and the name as its body, so a
client sees which host answered.

Behaviours (``scripted_host(name, behaviour, **options)``):

======== ==============================================================================
ok       200 to everything
fail_n   ``status`` (503) to the first ``n`` requests, then 200
reset    reads the request, then resets the connection (RST: SO_LINGER 0), never answers
hang     accepts and reads, never answers; the connection stays open until the peer
         leaves (or the host closes)
refuse   a bound port that does not listen: every connect is refused
slow     200 after ``delay`` seconds
flaky    per request, seeded (``seed``): the connection is reset with probability
         ``reset_rate``, else the answer is 503 with probability ``fail_rate``, else 200.
         Every reset ends a connection, so with keep-alive ``reset_rate`` is also the share
         of connections that die under a request.
gateway  ``status`` (502, 503 or 504) to everything
======== ==============================================================================

The health endpoint (``health_path``, default ``/healthz``) is answered apart from the
behaviour, with the status the test sets at run time: ``host.set_health(503)``; besides a
status it may be ``"hang"`` or ``"reset"``. Health requests are counted in
``health_checks``, never in ``requests``, so the per-host request counts are traffic only.

Counters (thread-safe, read them as attributes): ``requests`` (traffic requests read),
``health_checks``, ``connections`` (accepted), ``resets`` (connections this host reset),
``statuses`` (a Counter of the statuses it answered). ``host.wait(lambda h: h.requests >= 3)``
or ``host.wait_requests(3)`` blocks on a condition the server notifies at each change
(never a sleep). ``HostGroup`` holds the hosts of one cluster and closes them together.

Run as a script it serves hosts in a process of its own (the benchmark does this, so the
proxies' upstreams do not share the load generator's interpreter)::

    python tests/upstream/failing_upstreams.py ok:a flaky:b:fail_rate=0.5,reset_rate=0.05,seed=1

It prints one JSON line {name: port} once listening and, on SIGTERM or SIGINT, one JSON
line of every host's counters before it exits.
"""
from __future__ import annotations

import collections
import json
import random
import select
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # tests/, when run as a script

from http_upstreams import RawHttpUpstream  # noqa: E402
from upstreams import refused_port, rst_close  # noqa: E402

__all__ = ["BEHAVIOURS", "HOST_HEADER", "ScriptedHost", "RefusingHost", "HostGroup", "scripted_host"]

HOST_HEADER = "x-upstream-host"
BEHAVIOURS = ("ok", "fail_n", "reset", "hang", "refuse", "slow", "flaky", "gateway")
REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_OPTIONS = {"ok": (), "fail_n": ("n", "status"), "reset": (), "hang": (), "slow": ("delay",),
            "flaky": ("fail_rate", "reset_rate", "seed"), "gateway": ("status",)}


class _Counters:
    """The counters every host keeps, under one condition, and the waits on them."""

    def _init_counters(self):
        self._cond = threading.Condition()
        self.requests = 0
        self.health_checks = 0
        self.resets = 0
        self.statuses = collections.Counter()

    def _bump(self, field, status=None):
        with self._cond:
            setattr(self, field, getattr(self, field) + 1)
            if status is not None:
                self.statuses[status] += 1
            self._cond.notify_all()

    def wait(self, pred, timeout=10.0, msg=None):
        """Block until ``pred(self)`` is true (returns its value) or ``timeout`` passes
        (AssertionError). Woken by every request, answer and reset; connections are
        counted by the accept thread without a notification, so a pending wait also
        re-checks every 50 ms."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = pred(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: condition not met within {timeout}s: "
                                         f"{msg or pred} ({self.snapshot()})")
                self._cond.wait(min(left, 0.05))

    def wait_requests(self, n, timeout=10.0):
        """Block until this host has read ``n`` traffic requests."""
        return self.wait(lambda h: h.requests >= n, timeout, f"{n} requests")

    def snapshot(self) -> dict:
        """The counters as a plain dict (what the script prints)."""
        return {"requests": self.requests, "health_checks": self.health_checks,
                "connections": self.connections, "resets": self.resets,
                "statuses": dict(self.statuses)}


class ScriptedHost(_Counters, RawHttpUpstream):
    """A listening host with one behaviour (see the module's docstring)."""

    def __init__(self, name, behaviour="ok", *, n=0, status=None, delay=0.0, fail_rate=0.0,
                 reset_rate=0.0, seed=0, health_path="/healthz", health=200):
        if behaviour not in BEHAVIOURS or behaviour == "refuse":
            raise ValueError(f"{name}: behaviour {behaviour!r} is not one of {BEHAVIOURS} "
                             "(refuse is RefusingHost)")
        if behaviour == "gateway" and status not in (None, 502, 503, 504):
            raise ValueError(f"{name}: a gateway host answers 502, 503 or 504, not {status}")
        self.name = name
        self.behaviour = behaviour
        self.n = n
        self.status = status or (502 if behaviour == "gateway" else 503)
        self.delay = delay
        self.fail_rate = fail_rate
        self.reset_rate = reset_rate
        self._rng = random.Random(seed)
        self.health_path = health_path
        self.health = health
        self._stop = threading.Event()
        self._init_counters()
        # record=False: `requests` is this host's counter, not the parser's log.
        super().__init__(self._handle, lock=self._cond, record=False)
        self.requests = 0

    def close(self):
        self._stop.set()
        super().close()

    def set_health(self, health):
        """What the health endpoint answers from now on: a status, "hang" or "reset"."""
        with self._cond:
            self.health = health

    # -- answers --------------------------------------------------------------------

    def _answer(self, status, headers, method):
        body = b"" if method == "HEAD" else f"{self.name}\n".encode()
        keep = _keep_alive(headers)
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                f"{HOST_HEADER}: {self.name}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(self.name) + 1}\r\n"
                + ("" if keep else "Connection: close\r\n") + "\r\n").encode() + body
        if keep:
            return head
        return lambda c: c.sendall(head)     # sent, then RawHttpUpstream closes the connection

    def _reset(self, c):
        self._bump("resets")
        rst_close(c)

    def _hang(self, c):
        """Never answer; keep reading (and dropping) until the peer leaves or the host
        closes, so no thread outlives its connection for long."""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([c], [], [], 0.2)
                if ready and not c.recv(1 << 16):
                    return
            except (OSError, ValueError):
                return

    def _act(self, action, headers, method):
        """action: a status, "reset" or "hang" -> what RawHttpUpstream sends."""
        if action == "reset":
            return self._reset
        if action == "hang":
            return self._hang
        if action == "slow":
            self._stop.wait(self.delay)
            action = 200
        with self._cond:
            self.statuses[action] += 1
        return self._answer(action, headers, method)

    def _handle(self, method, path, headers, body):
        if path.split("?", 1)[0] == self.health_path:
            self._bump("health_checks")
            return self._act(self.health, headers, method)
        with self._cond:
            self.requests += 1
            nth = self.requests
            draw = self._rng.random(), self._rng.random()
            self._cond.notify_all()
        b = self.behaviour
        if b == "ok":
            action = 200
        elif b == "fail_n":
            action = self.status if nth <= self.n else 200
        elif b in ("reset", "hang", "slow"):
            action = b
        elif b == "flaky":
            action = "reset" if draw[0] < self.reset_rate else 503 if draw[1] < self.fail_rate else 200
        else:                                   # gateway
            action = self.status
        return self._act(action, headers, method)


class RefusingHost(_Counters):
    """A host whose port is bound but never listens: connections to it are refused. Its
    counters stay zero (nothing reaches it); kept for the same interface as the others."""

    behaviour = "refuse"

    def __init__(self, name, **_ignored):
        self.name = name
        self.connections = 0
        self._init_counters()
        self.sock, self.port = refused_port()

    def set_health(self, health):
        pass

    def close(self):
        self.sock.close()


def scripted_host(name, behaviour="ok", **options):
    """One host: ``behaviour`` in BEHAVIOURS, ``options`` as ScriptedHost takes them."""
    if behaviour == "refuse":
        return RefusingHost(name)
    return ScriptedHost(name, behaviour, **options)


class HostGroup:
    """The hosts of one cluster, in order; a context manager closing them all.

    ``HostGroup(("a", "ok"), ("b", "fail_n", {"n": 3}), ...)``; ``group["b"]`` is a host,
    ``group.ports`` the ports in order, ``group.counts()`` {name: traffic requests}."""

    def __init__(self, *specs):
        self.hosts = []
        try:
            for spec in specs:
                name, behaviour, *rest = spec
                self.hosts.append(scripted_host(name, behaviour, **(rest[0] if rest else {})))
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name):
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def __iter__(self):
        return iter(self.hosts)

    @property
    def ports(self):
        return [h.port for h in self.hosts]

    def by_port(self, port):
        return next(h for h in self.hosts if h.port == port)

    def counts(self, field="requests"):
        return {h.name: getattr(h, field) for h in self.hosts}

    def close(self):
        for h in self.hosts:
            h.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _keep_alive(headers):
    """HTTP/1.1 keeps the connection unless the request says `Connection: close` (the
    parser does not pass the version on; HTTP/1.0 clients send `Connection: close` or
    nothing, and the proxies under test speak HTTP/1.1 upstream)."""
    tokens = ",".join(headers.get("connection", [])).lower()
    return "close" not in [t.strip() for t in tokens.split(",")]


def parse_spec(text):
    """``behaviour:name[:k=v,k=v]`` (the script's arguments) -> (name, behaviour, options)."""
    behaviour, name, *rest = text.split(":", 2)
    options = {}
    for item in (rest[0].split(",") if rest and rest[0] else []):
        k, v = item.split("=", 1)
        if behaviour not in _OPTIONS or k not in _OPTIONS[behaviour] + ("health_path",):
            raise SystemExit(f"{text}: {k} is not an option of {behaviour}")
        options[k] = v if k == "health_path" else float(v) if "." in v else int(v)
    return name, behaviour, options


def main(argv):
    import signal
    group = HostGroup(*[parse_spec(a) for a in argv])
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({h.name: h.port for h in group}), flush=True)
    done.wait()
    print(json.dumps({h.name: h.snapshot() for h in group}), flush=True)
    group.close()


if __name__ == "__main__":
    main(sys.argv[1:])
