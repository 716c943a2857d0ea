# Python network filters: the calls a worker makes into user Python network filters, with
# the GIL. A worker takes the GIL in three files only: here, and for Python HTTP filters in
# core/filters/python.pxi and core/filters/python_async.pxi (their `async def` hooks' results).
#
# A session whose listener has Python filters owns a Connection object (s.pyconn, one
# strong reference). Every function here that the worker calls is `noexcept with gil`,
# catches every Python exception, logs it with its traceback and reports failure, so a
# broken filter closes its own connection and nothing else. Sessions without Python
# filters never reach this file.

import logging as _logging

_log = _logging.getLogger("fastproxy")

cdef enum ConnOp:
    OP_CONTINUE_READING = 1
    OP_CONTINUE_WRITING = 2
    OP_CLOSE = 3
    OP_WRITE = 4

cdef struct ConnMsg:
    PyObject* conn              # a strong reference, dropped with the GIL after the op
    int op
    char* data
    size_t len


cdef class _SlicePin:
    """Keeps one slice alive while a memoryview of it exists."""
    cdef Slice* s

    def __dealloc__(self):
        if self.s != NULL:
            slice_decref(self.s)


cdef char _EMPTY[1]
cdef char* _FORMAT_B = "B"


cdef class Buffer:
    """The bytes a network filter is handed: a view of the connection's pending data.

    Valid only during the filter call. ``memoryview(data)`` is zero-copy (it coalesces
    the data into one slice first if it spans several) and writable; the memory stays
    valid as long as the view lives. ``drain``, ``prepend``, ``append`` and ``replace``
    change what is passed on.
    """
    cdef Chain* c

    cdef inline Chain* _chain(self) except NULL:
        if self.c == NULL:
            raise RuntimeError("this Buffer is only valid during the filter call that received it")
        return self.c

    def __len__(self):
        return self._chain().length

    def __bool__(self):
        return self._chain().length != 0

    def __bytes__(self):
        cdef Chain* c = self._chain()
        cdef bytearray out = bytearray(c.length)
        cdef char* p = out
        cdef int i
        cdef SliceRef* r
        for i in range(c.count):
            r = &c.refs[c.head + i]
            memcpy(p, r.s.data + r.off, r.len)
            p += r.len
        return bytes(out)

    def __repr__(self):
        return f"<fastproxy.Buffer {len(self)} bytes>" if self.c != NULL else "<fastproxy.Buffer (released)>"

    def __getbuffer__(self, Py_buffer* view, int flags):
        cdef Chain* c = self._chain()
        cdef char* p = chain_linearize(c)
        cdef _SlicePin pin = _SlicePin.__new__(_SlicePin)
        if p == NULL:
            if c.length:
                raise MemoryError()
            p = _EMPTY
        else:
            pin.s = c.refs[c.head].s
            slice_incref(pin.s)
        view.buf = p
        view.obj = pin
        view.len = c.length
        view.readonly = 0
        view.itemsize = 1
        view.format = _FORMAT_B if (flags & PyBUF_FORMAT) else NULL
        view.ndim = 1
        view.shape = &view.len if (flags & PyBUF_ND) else NULL
        view.strides = &view.itemsize if (flags & PyBUF_STRIDES) else NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def drain(self, Py_ssize_t n):
        """Drop the first n bytes."""
        cdef Chain* c = self._chain()
        if n < 0:
            raise ValueError("n must be >= 0")
        chain_drain(c, <size_t>n)

    def prepend(self, data):
        cdef const unsigned char[::1] v = _as_bytes_view(data)
        if v.shape[0] and chain_prepend(self._chain(), <const char*>&v[0], v.shape[0]) < 0:
            raise MemoryError()

    def append(self, data):
        cdef const unsigned char[::1] v = _as_bytes_view(data)
        if v.shape[0] and chain_append(self._chain(), <const char*>&v[0], v.shape[0]) < 0:
            raise MemoryError()

    def replace(self, data):
        """Replace all the bytes with ``data``."""
        chain_clear(self._chain())
        self.append(data)

    def clear(self):
        chain_clear(self._chain())


cdef inline const unsigned char[::1] _as_bytes_view(data) except *:
    if isinstance(data, str):
        raise TypeError("Buffer data must be bytes-like, not str")
    return memoryview(data).cast("B")


cdef class Connection:
    """``self.connection`` of a NetworkFilter: the downstream connection it serves."""
    cdef Session* s             # NULL once the session closed; only its worker writes it
    cdef Worker* w
    cdef readonly uint64_t id
    cdef readonly object remote_address
    cdef readonly object local_address
    cdef list filters           # all instances, in config order
    cdef list read_filters      # those overriding on_data, in order
    cdef list write_filters     # those overriding on_write, in order (iterated in reverse)
    cdef int open_stop_at       # filter that stopped on_new_connection

    def __repr__(self):
        return f"<fastproxy.Connection id={self.id} remote={self.remote_address}>"

    @property
    def closed(self):
        return self.s == NULL

    cdef _post(self, int op, data=None):
        cdef ConnMsg* m
        cdef const unsigned char[::1] v
        if self.s == NULL:
            return
        m = <ConnMsg*>calloc(1, sizeof(ConnMsg))
        if m == NULL:
            raise MemoryError()
        if data is not None:
            v = _as_bytes_view(data)
            m.len = v.shape[0]
            m.data = <char*>malloc(m.len if m.len else 1)
            if m.data == NULL:
                free(m)
                raise MemoryError()
            if m.len:
                memcpy(m.data, &v[0], m.len)
        m.conn = <PyObject*>self
        m.op = op
        Py_INCREF(self)
        if worker_post(self.w, _msg_conn_op, m) < 0:
            Py_DECREF(self)
            free(m.data)
            free(m)
            raise MemoryError()

    def continue_reading(self):
        """Resume a read chain stopped with STOP_ITERATION (from any thread)."""
        self._post(OP_CONTINUE_READING)

    def continue_writing(self):
        """Resume a write chain stopped with STOP_ITERATION (from any thread)."""
        self._post(OP_CONTINUE_WRITING)

    def close(self):
        """Close the connection (both sides), after this call returns."""
        self._post(OP_CLOSE)

    def write(self, data):
        """Send bytes to the downstream, after what the upstream already sent to it.
        They do not pass through the write filters."""
        self._post(OP_WRITE, data)


cdef void _msg_conn_op(Worker* w, void* arg) noexcept nogil:
    cdef ConnMsg* m = <ConnMsg*>arg
    cdef Session* s = (<Connection>m.conn).s
    cdef Dir* d
    if s != NULL and s.state != S_CLOSED:
        if m.op == OP_CLOSE:
            session_close(s, False, False)
        elif m.op == OP_WRITE:
            d = &s.u2d
            if chain_append(&d.inj if d.splice else &d.buf, m.data, m.len) < 0:
                session_close(s, False, False)
            else:
                session_pump(s)
        elif m.op == OP_CONTINUE_READING:
            if s.state == S_FILTERS:
                if _py_session_open(s) == 0:
                    session_connect(s)
            elif s.d2u.stopped:
                if dir_run_filters(s, &s.d2u, s.d2u.stop_at) < 0:
                    session_close(s, False, False)
                else:
                    session_pump(s)
        elif m.op == OP_CONTINUE_WRITING:
            if s.u2d.stopped:
                if dir_run_filters(s, &s.u2d, s.u2d.stop_at) < 0:
                    session_close(s, False, False)
                else:
                    session_pump(s)
    free(m.data)
    _py_decref_with_gil(m.conn)
    free(m)


cdef void _py_decref_with_gil(PyObject* o) noexcept with gil:
    Py_XDECREF(o)


cdef object _sockaddr_tuple(int fd, bint peer):
    cdef sockaddr_storage ss
    cdef socklen_t n = sizeof(sockaddr_storage)
    cdef char text[64]
    import socket as _socket
    cdef int r
    if peer:
        r = getpeername(fd, <sockaddr*>&ss, &n)
    else:
        r = getsockname(fd, <sockaddr*>&ss, &n)
    if r < 0:
        return None
    if ss.ss_family == AF_INET6:
        return (_socket.inet_ntop(_socket.AF_INET6, (<char*>&(<sockaddr_in6*>&ss).sin6_addr)[:16]),
                ntohs((<sockaddr_in6*>&ss).sin6_port))
    return (_socket.inet_ntop(_socket.AF_INET, (<char*>&(<sockaddr_in*>&ss).sin_addr)[:4]),
            ntohs((<sockaddr_in*>&ss).sin_port))


cdef inline void _filter_failed(Session* s, str where) noexcept:
    stat_add(s.cfg.tstats, s.w, T_FILTER_ERROR, 1)
    try:
        _log.exception("network filter %s failed on connection %d; closing it", where, s.id)
    except BaseException:
        pass


cdef int _py_session_open(Session* s) noexcept with gil:
    """Create the filters (first call) and run on_new_connection from where it stopped.
    0: all continued; 1: a filter holds the connection; -1: failed (session closed)."""
    cdef Connection conn
    cdef int i, start
    try:
        if s.pyconn == NULL:
            conn = Connection.__new__(Connection)
            conn.s = s
            conn.w = s.w
            conn.id = s.id
            conn.remote_address = _sockaddr_tuple(s.down.fd, True)
            conn.local_address = _sockaddr_tuple(s.down.fd, False)
            conn.filters = [factory() for factory in <tuple>s.cfg.filter_factories]
            conn.read_filters = []
            conn.write_filters = []
            for f in conn.filters:
                f.connection = conn
                if type(f).on_data is not NetworkFilter.on_data:
                    conn.read_filters.append(f)
                if type(f).on_write is not NetworkFilter.on_write:
                    conn.write_filters.append(f)
            Py_INCREF(conn)
            s.pyconn = <PyObject*>conn
            start = 0
        else:
            conn = <Connection>s.pyconn
            start = conn.open_stop_at + 1
        for i in range(start, len(conn.filters)):
            if _status(conn.filters[i].on_new_connection()) == 1:
                conn.open_stop_at = i
                return 1
        return 0
    except BaseException:
        _filter_failed(s, "on_new_connection")
        session_close(s, False, False)
        return -1


cdef inline int _status(object r) except -1:
    if r is None or r == 0:
        return 0
    if r == 1:
        return 1
    raise TypeError(f"a filter hook must return a FilterStatus, got {r!r}")


cdef int _py_run_filters(Session* s, Dir* d, int resume_after) noexcept with gil:
    """Run on_data (in order) or on_write (in reverse) over d.rbuf; move what passes to d.buf.
    0: passed; 1: a filter stopped; -1: a filter raised."""
    cdef Connection conn = <Connection>s.pyconn
    cdef list fl = conn.read_filters if d.upward else conn.write_filters
    cdef int n = len(fl)
    cdef int i, step, stop
    cdef Buffer buf = Buffer.__new__(Buffer)
    end_stream = bool(d.src_eof)
    if d.upward:
        i = 0 if resume_after < 0 else resume_after + 1
        step = 1
        stop = n
    else:
        i = n - 1 if resume_after < 0 else resume_after - 1
        step = -1
        stop = -1
    buf.c = &d.rbuf
    d.stopped = 0
    try:
        while i != stop:
            f = fl[i]
            r = f.on_data(buf, end_stream) if d.upward else f.on_write(buf, end_stream)
            if _status(r) == 1:
                d.stopped = 1
                d.stop_at = i
                return 1
            i += step
    except BaseException:
        _filter_failed(s, "on_data" if d.upward else "on_write")
        return -1
    finally:
        buf.c = NULL
    if chain_move(&d.buf, &d.rbuf) < 0:
        return -1
    if d.src_eof:
        d.eof_passed = 1
    return 0


cdef void _py_session_closed(Session* s) noexcept with gil:
    cdef Connection conn = <Connection>s.pyconn
    conn.s = NULL
    for f in conn.filters:
        try:
            f.on_close()
        except BaseException:
            _filter_failed(s, "on_close")
    s.pyconn = NULL
    Py_DECREF(conn)
