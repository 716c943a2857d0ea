# `async def` hooks of Python HTTP filters: the asyncio loop they run on and the handoffs
# between the workers and that loop.
#
# Each Proxy owns one AsyncBridge, bound to the loop that started the proxy, the one given
# as Proxy(loop=...), or else a loop thread of its own started on the first async hook.
# Its listeners' Python filters reach it through their factory (_PyFilterFactory), so two
# proxies in one process never share a loop or any other state here.
#
# A wake-up of the other thread costs more than the hook itself, so the handoffs are
# batched both ways:
#   worker -> loop  a hook that returns a coroutine appends a _HookJob to the bridge's
#                   inbound list and arms its worker's end-of-turn timer (a 0 ms Timer: it
#                   fires after the turn's other events); that timer wakes the loop (one
#                   call_soon_threadsafe) unless a drain is already pending, and that one
#                   _drain starts every job queued meanwhile, from every worker.
#   loop -> worker  a finished hook goes to its worker's outbound list; one _flush per loop
#                   iteration (scheduled by the drain to run right after the hooks' first
#                   steps) posts each worker's list as one message (one eventfd write),
#                   which the worker applies under one GIL acquisition.
# A hook whose code has no await (nor async for/with) cannot suspend: the drain runs it at
# once, in a copy of the context as a Task would, and its result goes back with the same
# flush; no Task, no timer, one loop iteration. Any other hook runs in an asyncio Task of
# its own, because code in it may need one from its first line (asyncio.timeout(), httpx
# and aiohttp call asyncio.current_task()); the Task drives the coroutine's first step
# itself and arms the hook's timeout timer only if that step suspends.

import asyncio as _asyncio
import contextvars as _contextvars
import dis as _dis
import threading as _threading

# Instructions by which a coroutine can suspend (Python 3.10 to 3.13).
_SUSPENDING_OPS = frozenset(("YIELD_VALUE", "YIELD_FROM", "SEND", "GET_AWAITABLE", "GET_AITER",
                             "GET_ANEXT", "BEFORE_ASYNC_WITH", "SETUP_ASYNC_WITH"))
_cannot_suspend_cache = {}          # code object -> bool


cdef bint _cannot_suspend(object coro):
    """Whether `coro` is a Python coroutine whose code has no suspension point."""
    code = getattr(coro, "cr_code", None)
    if code is None:
        return False
    r = _cannot_suspend_cache.get(code)
    if r is None:
        r = _cannot_suspend_cache[code] = not any(
            i.opname in _SUSPENDING_OPS for i in _dis.get_instructions(code))
    return r

cdef enum:                          # _HookJob.kind: how the hook ended
    HOOK_RETURNED = 0
    HOOK_RAISED = 1
    HOOK_TIMED_OUT = 2


cdef struct WorkerWake:             # per worker of a bridge: its end-of-turn wake-up
    Timer timer
    PyObject* bridge                # a strong reference while the timer is armed


cdef class _PyFilterFactory:
    """What a Python filter's HttpFilterCfg.config points at: makes the filter for each
    stream and names the bridge its async hooks go to."""
    cdef object make                # () -> HttpFilter
    cdef AsyncBridge bridge


cdef class _HookJob:
    """One `async def` hook call, from the worker to the loop and back."""
    cdef _PyStream ps
    cdef object coro                # until the loop starts it
    cdef Body body                  # the body bytes the hook holds (data hooks), or None
    cdef bint encoding
    cdef str name                   # the filter's class name, for the timeout's log line
    cdef object timeout             # seconds, or None / 0: no limit
    cdef object task                # the asyncio Task running it, while it runs
    cdef bint expired               # its timeout fired
    cdef int kind                   # HOOK_*: set on the loop, read on the worker
    cdef object value               # the returned status, or the exception


cdef class _Resume:
    """Awaiting this continues a coroutine whose first step already ran and yielded
    `pending`: the enclosing Task first gets `pending` (what the coroutine waits for), then
    every send/throw goes to the coroutine."""
    cdef object coro
    cdef object pending
    cdef bint started

    def __cinit__(self, coro, pending):
        self.coro = coro
        self.pending = pending

    def __await__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        if not self.started:
            self.started = True
            return self.pending
        return self.coro.send(value)

    def throw(self, typ, val=None, tb=None):
        self.started = True
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)

    def close(self):
        self.coro.close()


async def _awaiting(awaitable):
    return await awaitable


cdef _run_now(_HookJob job):
    """A hook that cannot suspend, run to its end in a copy of the context."""
    coro = job.coro
    job.coro = None
    try:
        _contextvars.copy_context().run(coro.send, None)
    except StopIteration as e:
        job.kind = HOOK_RETURNED
        job.value = e.value
    except BaseException as e:
        job.kind = HOOK_RAISED
        job.value = e
    else:                               # not possible for code without a suspension point
        coro.close()
        job.kind = HOOK_RAISED
        job.value = RuntimeError(f"{job.name}: the hook suspended")


def _expire(_HookJob job):
    job.expired = True
    if job.task is not None:
        job.task.cancel()


async def _run_hook(AsyncBridge bridge, _HookJob job):
    """The Task of one hook: its result goes back to the worker, whatever happens."""
    coro = job.coro
    job.coro = None
    timer = None
    try:
        try:
            pending = coro.send(None)
        except StopIteration as e:
            job.value = e.value
        else:
            if job.timeout:
                timer = bridge.loop.call_later(job.timeout, _expire, job)
            job.value = await _Resume(coro, pending)
        job.kind = HOOK_TIMED_OUT if job.expired else HOOK_RETURNED
    except BaseException as e:
        job.kind = HOOK_TIMED_OUT if job.expired else HOOK_RAISED
        job.value = e
    finally:
        if timer is not None:
            timer.cancel()
        bridge._tasks.pop(job.task, None)
        job.task = None
    bridge._deliver(job)


cdef class AsyncBridge:
    """Where one Proxy's `async def` filter hooks run: an asyncio loop and the batched
    handoffs between that loop and the proxy's workers (see the top of this file)."""
    cdef readonly object loop       # None until bound; then the loop hooks run on
    cdef WorkerWake* wakes          # one per worker (Worker.index)
    cdef int nworkers
    cdef object _own_thread         # the thread running our own loop, if we started one
    cdef object _lock               # guards _inbound, _wake_pending, _closed
    cdef list _inbound              # jobs from the workers, not started yet
    cdef bint _wake_pending         # a _drain is scheduled on the loop
    cdef bint _closed
    cdef dict _outbound             # loop thread only: {Worker address: [finished jobs]}
    cdef bint _flush_pending        # loop thread only: a _flush is scheduled
    cdef dict _tasks                # loop thread only: {Task: _HookJob} of the hooks running
                                    # (cancelled at close)
    cdef object _drain_cb, _flush_cb

    def __cinit__(self, int nworkers):
        cdef int i
        if nworkers < 1:
            raise ValueError("nworkers must be >= 1")
        # Freed in __dealloc__: an armed timer holds a reference to the bridge, and a
        # worker only arms one from a stream that holds another.
        self.wakes = <WorkerWake*>calloc(nworkers, sizeof(WorkerWake))
        if self.wakes == NULL:
            raise MemoryError()
        self.nworkers = nworkers
        for i in range(nworkers):
            timer_init(&self.wakes[i].timer, _wake_at_turn_end, &self.wakes[i])
        self._lock = _threading.Lock()
        self._inbound = []
        self._outbound = {}
        self._tasks = {}
        self._drain_cb = self._drain
        self._flush_cb = self._flush

    def bind(self, loop):
        """Run hooks on `loop` (None: on a loop thread of our own, started on first use)."""
        with self._lock:
            if self.loop is not None:
                raise RuntimeError("the bridge already has its event loop")
            self.loop = loop

    def runs_on_current_thread(self):
        """Whether the calling thread is the one running our loop (where blocking waits
        for the hooks would never end)."""
        loop = self.loop
        return loop is not None and _asyncio._get_running_loop() is loop

    cdef object _hook_loop(self):
        """The loop, started on a thread of our own if none was bound. Lock held."""
        if self.loop is None:
            loop = _asyncio.new_event_loop()
            t = _threading.Thread(target=_own_loop_main, args=(loop,),
                                  name="fastproxy-filters-asyncio", daemon=True)
            t.start()
            self.loop = loop
            self._own_thread = t
        return self.loop

    def __dealloc__(self):
        free(self.wakes)

    cdef submit(self, _HookJob job):
        """On the job's worker: queue the hook; the loop is woken at the end of the
        worker's turn (with every other hook of that turn), unless a drain is pending."""
        cdef Worker* w = job.ps.ref.w
        cdef WorkerWake* k
        with self._lock:
            if self._closed:
                raise RuntimeError("the proxy is stopping: the async hook cannot start")
            if self.loop is not None and self.loop.is_closed():
                raise RuntimeError("the event loop the proxy's async filter hooks run on is closed")
            self._inbound.append(job)
            if self._wake_pending:
                return
        k = &self.wakes[w.index] if w.index < self.nworkers else NULL
        if k != NULL and on_worker_thread(w):
            if timer_armed(&k.timer):
                return                      # armed earlier this turn
            if timer_arm(w, &k.timer, 0) == 0:
                Py_INCREF(self)
                k.bridge = <PyObject*>self
                return
        self._wake_loop()                   # no timer (out of memory): wake it now

    cdef _wake_loop(self):
        with self._lock:
            if self._wake_pending or self._closed or not self._inbound:
                return
            self._wake_pending = True
            loop = self._hook_loop()
        try:
            loop.call_soon_threadsafe(self._drain_cb)
        except BaseException as e:
            # The loop closed meanwhile: nothing will drain; the queued hooks fail.
            with self._lock:
                jobs = self._inbound
                self._inbound = []
                self._wake_pending = False
            self._fail(jobs, e)

    cdef _fail(self, list jobs, object error):
        cdef _HookJob job
        cdef dict out = {}
        for j in jobs:
            job = <_HookJob>j
            job.coro.close()
            job.coro = None
            job.kind = HOOK_RAISED
            job.value = error
            _group_by_worker(out, job)
        self._post_results(out)

    def workers_stopped(self):
        """The proxy's workers are joined: timers they had armed never fire; drop the
        references those held."""
        cdef int i
        for i in range(self.nworkers):
            if self.wakes[i].bridge != NULL:
                self.wakes[i].timer.index = TIMER_NONE
                self.wakes[i].bridge = NULL
                Py_DECREF(self)

    def _drain(self):
        """On the loop: start every queued hook."""
        cdef _HookJob job
        cdef bint closed = False
        with self._lock:
            jobs = self._inbound
            self._inbound = []
            self._wake_pending = False
            closed = self._closed
        if closed:
            _close_unstarted(jobs)          # (close() empties the queue itself: none, in practice)
            return
        loop = self.loop
        tasks = False
        for j in jobs:
            job = <_HookJob>j
            if _cannot_suspend(job.coro):
                _run_now(job)
                _group_by_worker(self._outbound, job)
                continue
            job.task = loop.create_task(_run_hook(self, job))
            self._tasks[job.task] = job
            tasks = True
        if not tasks:
            self._flush()
        elif not self._flush_pending:
            # After the Tasks' first steps, in the next iteration: those that finish without
            # suspending go back in that one flush.
            self._flush_pending = True
            loop.call_soon(self._flush_cb)

    def _deliver(self, _HookJob job):
        """On the loop: a hook finished; its worker gets it with the next flush."""
        _group_by_worker(self._outbound, job)
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush_cb)


    def _flush(self):
        """On the loop: one message per worker with every hook that finished since the
        last flush."""
        out = self._outbound
        self._outbound = {}
        self._flush_pending = False
        self._post_results(out)

    cdef _post_results(self, dict out):
        """One message to each worker with its finished hooks."""
        cdef size_t key
        cdef list batch
        if not out:
            return
        with self._lock:
            if self._closed:
                return                      # the workers are stopping; the streams are gone
            for k, b in out.items():
                key = k
                batch = b
                Py_INCREF(batch)            # the message's reference
                if worker_post(<Worker*>key, _msg_async_results, <void*>batch) < 0:
                    Py_DECREF(batch)
                    _log.error("fastproxy: out of memory handing %d async filter results to "
                               "a worker; those streams wait for their timeouts", len(batch))

    def close(self):
        """The proxy stops: no hook starts or reports any more; running ones are
        cancelled; our own loop thread, if any, ends. Any thread."""
        with self._lock:
            self._closed = True
            dropped = self._inbound
            self._inbound = []
            loop = self.loop
            own = self._own_thread
        _close_unstarted(dropped)
        if loop is None or loop.is_closed():
            # No loop will run the Tasks a drain made: their hooks never start.
            _close_unstarted(list(self._tasks.values()))
            self._tasks.clear()
            return
        try:
            if _asyncio._get_running_loop() is loop:
                self._cancel_all()
            else:
                loop.call_soon_threadsafe(self._cancel_all)
            if own is not None:
                loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass                            # closed meanwhile
        if own is not None and own is not _threading.current_thread():
            own.join(5.0)

    def _cancel_all(self):
        """On the loop, at close: cancel every hook's Task. A Task cancelled before its
        first step never runs _run_hook, so the hook it would have started is closed here
        (else it is never awaited and warns when collected)."""
        tasks = self._tasks
        self._tasks = {}
        for t, job in tasks.items():
            t.cancel()
        _close_unstarted(list(tasks.values()))


cdef _close_unstarted(list jobs):
    """Close the coroutines of hooks that were never started (any thread: nothing runs them)."""
    cdef _HookJob job
    for j in jobs:
        job = <_HookJob>j
        if job.coro is not None:
            job.coro.close()
            job.coro = None


cdef inline _group_by_worker(dict out, _HookJob job):
    cdef size_t key = <size_t>job.ps.ref.w
    batch = out.get(key)
    if batch is None:
        out[key] = [job]
    else:
        batch.append(job)


cdef void _wake_at_turn_end(Worker* w, void* arg) noexcept with gil:
    """A worker's end-of-turn timer: wake the loop for the hooks it queued this turn."""
    cdef WorkerWake* k = <WorkerWake*>arg
    cdef AsyncBridge bridge = <AsyncBridge>k.bridge
    k.bridge = NULL
    Py_DECREF(bridge)                   # the armed timer's reference; `bridge` holds its own
    try:
        bridge._wake_loop()
    except BaseException as e:
        _log.error("fastproxy: waking the asyncio loop of the async filter hooks failed",
                   exc_info=(type(e), e, e.__traceback__))


def _own_loop_main(loop):
    """The loop thread a bridge starts when the proxy was started outside any loop."""
    _asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        rest = _asyncio.all_tasks(loop)
        for t in rest:
            t.cancel()
        if rest:
            loop.run_until_complete(_asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


# -- worker side

cdef _start_async(HttpFilterCallbacks cb, object coro, Headers hobj, Body bobj, HMap* m,
                  bint encoding, str name, object timeout):
    """On the worker, in the hook: the stream waits while the coroutine runs on the
    proxy's loop. Headers and body bytes move into Python objects the coroutine may keep."""
    cdef _PyStream ps = cb.ps
    cdef _HookJob job
    if not hasattr(coro, "send"):
        coro = _awaiting(coro)              # another awaitable: a Future, say
    if ps.bridge is None:
        coro.close()
        raise RuntimeError(f"{name}: an async hook needs the proxy's event loop "
                           f"(this filter was not built by a Proxy)")
    if hobj is not None:
        hobj._detach(True)
        ps.detached.append((hobj, <size_t>m))
    if bobj is not None:
        bobj._take()
    job = _HookJob.__new__(_HookJob)
    job.ps = ps
    job.coro = coro
    job.body = bobj
    job.encoding = encoding
    job.name = name
    job.timeout = timeout
    try:
        ps.bridge.submit(job)
    except BaseException:
        coro.close()
        raise


cdef void _msg_async_results(Worker* w, void* arg) noexcept nogil:
    _py_async_results(<PyObject*>arg)


cdef void _py_async_results(PyObject* arg) noexcept with gil:
    """A batch of finished hooks, all of this worker's streams: each verdict is read with
    the GIL, then each stream continues (its next filters, the router, the socket writes)
    without it, so the event loop's thread is not held off by C work."""
    cdef list batch = <list>arg
    Py_DECREF(batch)                    # the message's reference; `batch` holds its own
    for job in batch:
        _py_async_done(<_HookJob>job)


cdef void _py_async_done(_HookJob job) noexcept:
    cdef HStream* s = job.ps.ref.s
    cdef FChain* fc
    cdef int verdict
    cdef bint encoding = job.encoding
    if s == NULL or s.fc == NULL or s.fc.dead:
        return                          # the stream ended meanwhile
    fc = s.fc
    verdict = _py_async_verdict(s, job)
    if s.fc != fc or fc.dead:
        return
    # This runs on the stream's own worker (a worker message), so nothing else can end the
    # stream while the GIL is let go; a Python filter further on takes it back itself.
    if verdict == 0:
        with nogil:
            hf_continue(s, encoding)
    elif verdict == 2:
        with nogil:
            hf_fail(s, encoding)
    # else: the coroutine returned a STOP status: the filter continues the stream itself


cdef int _py_async_verdict(HStream* s, _HookJob job) noexcept:
    """0: continue, 1: stay stopped, 2: failed (local reply set)."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.enc if job.encoding else &fc.dec
    try:
        if job.body is not None:
            job.body._give_back(&d.held)
        job.ps._sync()
        if job.kind == HOOK_RAISED:
            _log_filter_exception(s, job.value)
            return 2
        if job.kind == HOOK_TIMED_OUT:
            _log.error("fastproxy: HTTP filter %s timed out", job.name)
            if not s.resp_started:
                fc.local_status = 504
            return 2
        if fc.local_status:
            return 2
        if job.value is None or int(job.value) == 0:
            return 0
        return 1
    except BaseException as e:
        _log_filter_exception(s, e)
        return 2
