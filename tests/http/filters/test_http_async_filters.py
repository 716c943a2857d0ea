"""`async def` hooks of Python HTTP filters and asyncio: which loop they run on (the one
that started the proxy, or Proxy(loop=...), per proxy), `async with Proxy(...)` and
`await proxy.aclose()` draining in-flight hooks without blocking the loop, stop() refused
on that loop, and hooks handed to the loop in batches. Real clients, a real upstream,
real event loops."""
from __future__ import annotations

import asyncio
import contextvars
import gc
import http.client
import threading
import time
import warnings

import pytest

from fastproxy import Cluster, Endpoint, FilterStatus, HttpFilter, Listener, Proxy, PythonHttpFilter
from fastproxy.http import (HttpConnectionManager, Route, RouteAction, RouteConfiguration, RouteMatch,
                            VirtualHost)

from conftest import wait_for
from http_upstreams import http_request

CONTINUE = FilterStatus.CONTINUE


def make_proxy(filters, upstream, concurrency=2, loop=None, plain_listener=False):
    """A proxy with one HTTP listener ("http") running `filters` before the router; with
    plain_listener, a second one ("plain") without filters."""
    def hcm(name, fs):
        rc = RouteConfiguration(virtual_hosts=[VirtualHost("vh", ["*"], routes=[
            Route(RouteMatch(prefix="/"), route=RouteAction(cluster="c"))])])
        return HttpConnectionManager(name, rc, http_filters=fs)
    listeners = [Listener("http", hcm("ingress", filters), port=0)]
    if plain_listener:
        listeners.append(Listener("plain", hcm("plain", []), port=0))
    return Proxy(listeners, [Cluster("c", [Endpoint("127.0.0.1", upstream.port)])],
                 concurrency=concurrency, loop=loop)


def spec(cls):
    return PythonHttpFilter(cls.__name__, cls)


def request(p, path="/", listener="http", timeout=10):
    return http_request(p.listener_address(listener), "GET", path, None, None, timeout)


class LoopThread:
    """An asyncio loop running forever on a thread of its own (an app's loop)."""

    def __init__(self, loop_factory=asyncio.new_event_loop):
        self.loop = loop_factory()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# ---------------------------------------------------------------- which loop

request_var = contextvars.ContextVar("request_var", default=None)


def test_async_with_runs_hooks_on_the_loop_that_started_it(upstream):
    seen = []

    class OnMyLoop(HttpFilter):
        async def decode_headers(self, headers, end_stream):
            # the first step already runs in a Task of its own, as asyncio.timeout(),
            # httpx and aiohttp need
            seen.append((asyncio.get_running_loop(), asyncio.current_task() is not None))
            async with asyncio.timeout(5):
                await asyncio.sleep(0)
            headers["x-loop"] = "mine"
            return CONTINUE

        async def encode_headers(self, headers, end_stream):
            # no await in this hook: it cannot suspend, so it runs without a Task
            seen.append((asyncio.get_running_loop(), asyncio.current_task() is not None))
            assert request_var.get() is None, "each hook runs in its own copy of the context"
            request_var.set("set by a hook")
            headers["x-encoded"] = "yes"
            return CONTINUE

    async def main():
        async with make_proxy([spec(OnMyLoop)], upstream) as p:
            await asyncio.to_thread(request, p)
            r, _ = await asyncio.to_thread(request, p)
            return r.status, r.getheader("x-encoded"), asyncio.get_running_loop()

    status, encoded, loop = asyncio.run(main())
    assert (status, encoded) == (200, "yes")
    assert seen == [(loop, True), (loop, False)] * 2
    assert upstream.requests[-1][2]["x-loop"] == ["mine"]


def test_loop_argument_runs_hooks_there(upstream):
    app = LoopThread()
    seen = []

    class Recorder(HttpFilter):
        async def decode_headers(self, headers, end_stream):
            seen.append((asyncio.get_running_loop(), threading.current_thread()))
            return CONTINUE

    try:
        with make_proxy([spec(Recorder)], upstream, loop=app.loop) as p:     # started outside any loop
            r, _ = request(p)
            assert r.status == 200
        assert seen == [(app.loop, app.thread)]
    finally:
        app.close()


def test_loop_argument_must_be_a_loop(upstream):
    with pytest.raises(TypeError, match=r"Proxy\(loop=...\) takes an asyncio event loop, got str"):
        make_proxy([], upstream, loop="default")


def test_two_proxies_on_two_loops_in_two_threads(upstream):
    """Nothing process-wide: each proxy's hooks run on the loop that started it, while
    the other proxy serves on another loop in another thread at the same time."""
    seen = {"a": set(), "b": set()}
    both_started = threading.Barrier(2, timeout=10)

    def make_filter(tag):
        class Tagged(HttpFilter):
            async def decode_headers(self, headers, end_stream):
                await asyncio.sleep(0.001)
                seen[tag].add((asyncio.get_running_loop(), threading.current_thread().name))
                headers["x-proxy"] = tag
                return CONTINUE
        return Tagged

    def serve(tag, result):
        async def main():
            async with make_proxy([spec(make_filter(tag))], upstream) as p:
                await asyncio.to_thread(both_started.wait)
                statuses = []
                for _ in range(20):
                    r, _ = await asyncio.to_thread(request, p)
                    statuses.append(r.status)
                return statuses, asyncio.get_running_loop()
        result[tag] = asyncio.run(main())

    result = {}
    threads = [threading.Thread(target=serve, args=(tag, result), name=f"app-{tag}") for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for tag in "ab":
        statuses, loop = result[tag]
        assert statuses == [200] * 20
        assert seen[tag] == {(loop, f"app-{tag}")}
    assert result["a"][1] is not result["b"][1]
    assert sorted(h["x-proxy"][0] for _, _, h, _ in upstream.requests) == ["a"] * 20 + ["b"] * 20


def test_started_outside_a_loop_each_proxy_has_its_own_loop_thread(upstream):
    seen = []

    class Recorder(HttpFilter):
        async def decode_headers(self, headers, end_stream):
            seen.append((asyncio.get_running_loop(), threading.current_thread()))
            return CONTINUE

    with make_proxy([spec(Recorder)], upstream) as p1, make_proxy([spec(Recorder)], upstream) as p2:
        assert request(p1)[0].status == 200
        assert request(p2)[0].status == 200
    (loop1, thread1), (loop2, thread2) = seen
    assert loop1 is not loop2 and thread1 is not thread2
    assert thread1.name == thread2.name == "fastproxy-filters-asyncio"
    # stop() ended them
    assert not thread1.is_alive() and not thread2.is_alive()
    assert loop1.is_closed() and loop2.is_closed()


# ---------------------------------------------------------------- stopping from asyncio

class SlowAsync(HttpFilter):
    """Awaits 0.2 s in the middle of the request."""
    started = 0

    async def decode_headers(self, headers, end_stream):
        SlowAsync.started += 1
        await asyncio.sleep(0.2)
        headers["x-slow"] = "done"
        return CONTINUE


def test_aclose_drains_in_flight_async_hooks_without_blocking_the_loop(upstream):
    SlowAsync.started = 0

    async def main():
        loop = asyncio.get_running_loop()
        ticks = []

        async def ticker():
            while True:
                ticks.append(loop.time())
                await asyncio.sleep(0.01)

        p = make_proxy([spec(SlowAsync)], upstream)
        p.start()                                   # binds this loop
        addr = p.listener_address("http")
        clients = [asyncio.create_task(asyncio.to_thread(http_request, addr, "GET", f"/r{i}"))
                   for i in range(10)]
        while SlowAsync.started < 10:               # all 10 hooks in flight
            await asyncio.sleep(0.005)
        tick = asyncio.create_task(ticker())
        t0 = loop.time()
        await p.aclose(drain_timeout=10)
        t1 = loop.time()
        tick.cancel()
        results = await asyncio.gather(*clients)
        return results, [t for t in ticks if t0 <= t <= t1], t1 - t0

    results, ticks, took = asyncio.run(main())
    assert [(r.status, body) for r, body in results] == [(200, f"GET /r{i} 0".encode()) for i in range(10)]
    assert all(h["x-slow"] == ["done"] for _, _, h, _ in upstream.requests)
    assert took < 5, "the drain ended when the last request did, not at drain_timeout"
    # The loop kept running while the proxy drained: the ticker ran all along.
    assert len(ticks) >= 5
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.15


def test_leaving_async_with_lets_in_flight_hooks_finish(upstream):
    SlowAsync.started = 0

    async def main():
        async with make_proxy([spec(SlowAsync)], upstream) as p:
            addr = p.listener_address("http")
            clients = [asyncio.create_task(asyncio.to_thread(http_request, addr)) for _ in range(3)]
            while SlowAsync.started < 3:
                await asyncio.sleep(0.005)
        return await asyncio.gather(*clients), p

    results, p = asyncio.run(main())
    assert [r.status for r, _ in results] == [200] * 3
    with pytest.raises(RuntimeError, match="proxy is stopped"):
        p.start()


def test_stop_on_the_hooks_loop_is_refused(upstream):
    class Pass(HttpFilter):
        async def decode_headers(self, headers, end_stream):
            return CONTINUE

    async def main():
        async with make_proxy([spec(Pass)], upstream) as p:
            with pytest.raises(RuntimeError, match=r"await proxy.aclose\(\)"):
                p.stop()
            # nothing was stopped
            r, _ = await asyncio.to_thread(request, p)
            return r.status

    assert asyncio.run(main()) == 200


def test_sync_with_inside_the_loop_is_refused_before_starting(upstream):
    p = make_proxy([], upstream)

    async def main():
        with pytest.raises(RuntimeError, match=r"use `async with Proxy"):
            with p:
                pass

    asyncio.run(main())
    with pytest.raises(RuntimeError, match="not started"):
        p.listener_address("http")


def test_stop_cancels_hooks_still_running(upstream):
    """Past drain_timeout the streams close; their hooks are cancelled, not left running
    on the loop."""
    app = LoopThread()
    ended = []

    class Forever(HttpFilter):
        async def decode_headers(self, headers, end_stream):
            ended.append("started")
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise
            return CONTINUE

    try:
        p = make_proxy([spec(Forever)], upstream, loop=app.loop).start()
        conn = http.client.HTTPConnection(*p.listener_address("http"), timeout=10)
        conn.request("GET", "/")
        wait_for(lambda: ended == ["started"])
        p.stop(drain_timeout=0.1)
        wait_for(lambda: ended == ["started", "cancelled"])
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.getresponse()
        conn.close()
    finally:
        app.close()


def arrival_counter(arrived: list):
    """A filter that notes each request on the worker, just before the async hook after it."""
    class Count(HttpFilter):
        def decode_headers(self, headers, end_stream):
            arrived.append(1)
            return CONTINUE
    return Count


class DrainMeetsClose(asyncio.SelectorEventLoop):
    """Makes the race of a drain with the proxy's close certain: once armed, the drain's
    first create_task waits until another thread queues a callback on the loop (the
    stopping proxy's cancel), so that cancel runs before the drain's Tasks take a step."""

    def __init__(self):
        super().__init__()
        self.armed = False
        self.in_drain = threading.Event()
        self.cancel_queued = threading.Event()

    def create_task(self, coro, **kwargs):
        if self.armed:
            self.armed = False
            self.in_drain.set()
            self.cancel_queued.wait(20)
        return super().create_task(coro, **kwargs)

    def call_soon_threadsafe(self, *args, **kwargs):
        handle = super().call_soon_threadsafe(*args, **kwargs)
        if self.in_drain.is_set():
            self.cancel_queued.set()
        return handle


def test_closing_while_a_drain_starts_hooks_closes_them_and_resets_the_streams(upstream):
    """The proxy stops while the loop is starting a batch of hooks: the Tasks the batch
    made are cancelled before their first step, and the hooks they would have run are
    closed (no "coroutine ... was never awaited"); the streams are reset, none hangs."""
    app = LoopThread(DrainMeetsClose)
    arrived, started, outcomes = [], [], []
    busy, release = threading.Event(), threading.Event()

    Count = arrival_counter(arrived)

    class Queued(HttpFilter):
        async def decode_headers(self, headers, end_stream):
            started.append(1)
            await asyncio.sleep(0)
            return CONTINUE

    def block():
        busy.set()
        release.wait(20)

    def client(addr, i):
        try:
            outcomes.append(http_request(addr, "GET", f"/q{i}", timeout=10)[0].status)
        except (http.client.HTTPException, OSError) as e:
            outcomes.append(type(e).__name__)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            p = make_proxy([spec(Count), spec(Queued)], upstream, concurrency=1, loop=app.loop,
                           plain_listener=True).start()
            app.loop.call_soon_threadsafe(block)
            busy.wait(5)
            addr = p.listener_address("http")
            clients = [threading.Thread(target=client, args=(addr, i)) for i in range(5)]
            for t in clients:
                t.start()
            wait_for(lambda: len(arrived) == 5)
            assert request(p, listener="plain")[0].status == 200     # the worker queued all 5
            app.loop.armed = True
            release.set()
            assert app.loop.in_drain.wait(5)
            stopper = threading.Thread(target=p.stop, kwargs={"drain_timeout": 0.1})
            stopper.start()
            stopper.join(20)
            assert not stopper.is_alive()
            for t in clients:
                t.join(10)
            assert not any(t.is_alive() for t in clients)
            assert started == []
            assert len(outcomes) == 5 and 200 not in outcomes, outcomes
            del p
            gc.collect()
        finally:
            release.set()
            app.close()
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert unawaited == []


# ---------------------------------------------------------------- batching

class CountingLoop(asyncio.SelectorEventLoop):
    """Counts the wake-ups other threads cause (call_soon_threadsafe)."""
    wakeups = 0

    def call_soon_threadsafe(self, *args, **kwargs):
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_hooks_queued_meanwhile_share_one_wakeup(upstream):
    """While the loop is busy, every hook a worker hands over joins the batch that one
    wake-up will start (one call_soon_threadsafe, not one per hook)."""
    app = LoopThread(CountingLoop)
    arrived = []
    busy = threading.Event()
    release = threading.Event()

    Count = arrival_counter(arrived)

    class Later(HttpFilter):
        async def decode_headers(self, headers, end_stream):
            headers["x-later"] = "1"
            return CONTINUE

    def block():
        busy.set()
        release.wait(20)

    try:
        # One worker: the plain listener's answer below comes after every hook it was
        # handed before (the worker finishes a hook, queueing it, before its next event).
        p = make_proxy([spec(Count), spec(Later)], upstream, concurrency=1, loop=app.loop,
                       plain_listener=True).start()
        app.loop.call_soon_threadsafe(block)
        busy.wait(5)
        base = app.loop.wakeups
        addr = p.listener_address("http")
        out = []
        clients = [threading.Thread(target=lambda i=i: out.append(http_request(addr, "GET", f"/b{i}")))
                   for i in range(20)]
        for t in clients:
            t.start()
        wait_for(lambda: len(arrived) == 20)
        assert request(p, listener="plain")[0].status == 200
        release.set()
        for t in clients:
            t.join(10)
        assert sorted(r.status for r, _ in out) == [200] * 20
        assert app.loop.wakeups - base == 1
        p.stop()
    finally:
        release.set()
        app.close()
