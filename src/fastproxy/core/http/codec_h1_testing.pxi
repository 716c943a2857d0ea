# The HTTP/1.1 codec's Python surface for tests, the llhttp differential test, the fuzz
# target and benchmarks (reached through fastproxy._testing; nothing in the package calls it).

# ---------------------------------------------------------------- Python surface (tests)
# Everything below holds the GIL: it exists for tests, the differential test against
# llhttp and the fuzz target. The proxy's data path calls the C functions above.

cdef tuple _H1_FRAMING = ("none", "length", "chunked", "eof")


cdef tuple _h1_fields_tuple(HttpHead* h):
    cdef uint32_t i
    cdef HttpField* f
    out = []
    for i in range(h.nfields):
        f = &h.fields[i]
        out.append((h.buf[f.name_off:f.name_off + f.name_len],
                    h.buf[f.value_off:f.value_off + f.value_len]))
    return tuple(out)


# Test and benchmark hooks (everything below with a leading underscore): they drive the
# codec's C functions directly, so they are compiled in; nothing in the package calls them.
# Tests and benchmarks reach them through fastproxy._testing, which the wheel leaves out.
cdef class _H1TestParser:
    """Feeds bytes through the compiled codec and reports events:

    ("head", dict)  the head: method/target or status/reason, version, headers, flags,
                    body framing ("none", "length", "chunked", "eof"), content_length
    ("data", bytes) body bytes (split however the input was split)
    ("trailers", ((name, value), ...))   a chunked body's trailer fields, if any
    ("done",)       the message is complete
    ("tunnel", bytes)  bytes after a CONNECT or Upgrade message (the parser stops there)
    ("error", status, reason)

    Pipelined messages are parsed one after another. After a message that does not keep
    the connection alive, or after an error, further input is ignored. A response parser
    answers requests made with ``request_method`` (settable between responses).
    ``skip_body(n)`` stands for a caller that moves n bytes of a Content-Length body
    itself (splice). ``take_heads=True`` moves each head block out of the parser before
    reading it (h1_head_take), as the connection manager does.
    """
    cdef H1Parser p
    cdef bint stopped
    cdef bint tunnel
    cdef bint take_heads
    cdef bytes _request_method

    def __cinit__(self, kind="request", *, max_head=0, max_start_line=0, max_fields=0,
                  request_method=b"GET", take_heads=False):
        if kind not in ("request", "response"):
            raise ValueError("kind must be 'request' or 'response'")
        h1_init(&self.p, H1_REQUEST if kind == "request" else H1_RESPONSE,
                max_head, max_start_line, max_fields)
        self.request_method = request_method
        self.take_heads = take_heads

    def __dealloc__(self):
        h1_free(&self.p)

    @property
    def request_method(self):
        return self._request_method

    @request_method.setter
    def request_method(self, value):
        cdef bytes m = bytes(value)
        self._request_method = m
        h1_response_for(&self.p, _h1_method_id(<const uint8_t*><const char*>m, len(m)))

    @property
    def limits(self):
        return {"max_head": self.p.max_head, "max_start_line": self.p.max_start_line,
                "max_fields": self.p.max_fields}

    @property
    def body_remaining(self):
        """Bytes of a Content-Length body not yet seen (what a caller would splice)."""
        if self.p.framing == H1_BODY_LENGTH and (self.p.state == H1_HEAD_DONE or self.p.state == H1_BODY):
            return self.p.body_remaining
        return 0

    def skip_body(self, n):
        """Account for n body bytes the caller moved itself; returns the events that
        follow (("done",) when the body is complete)."""
        cdef list events = []
        if self.stopped or self.body_remaining == 0 or not 0 < n <= self.body_remaining:
            raise ValueError("no Content-Length body with that many bytes left")
        h1_body_skipped(&self.p, n)
        if self.p.state == H1_MESSAGE_DONE:
            self._message_done(events, NULL, 0, 0)
        return events

    cdef dict _head(self):
        cdef HttpHead taken
        cdef dict d
        if not self.take_heads:
            return self._head_dict(&self.p.head)
        h1_head_take(&self.p, &taken)
        try:
            return self._head_dict(&taken)
        finally:
            http_head_free(&taken)

    cdef dict _head_dict(self, HttpHead* h):
        cdef uint32_t fl = self.p.flags
        d = {}
        if self.p.kind == H1_REQUEST:
            d["method"] = h.buf[h.method_off:h.method_off + h.method_len]
            d["target"] = h.buf[h.target_off:h.target_off + h.target_len]
        else:
            d["status"] = h.status
            d["reason"] = h.buf[h.reason_off:h.reason_off + h.reason_len]
        d["version"] = (1, h.minor)
        d["headers"] = _h1_fields_tuple(h)
        d["keep_alive"] = bool(fl & H1F_KEEP_ALIVE)
        d["upgrade"] = bool(fl & H1F_UPGRADE)
        d["connect"] = bool(fl & H1F_CONNECT)
        d["expect_continue"] = bool(fl & H1F_EXPECT_CONTINUE)
        d["interim"] = bool(fl & H1F_INTERIM)
        d["body"] = _H1_FRAMING[self.p.framing]
        d["content_length"] = None if self.p.content_length < 0 else self.p.content_length
        return d

    cdef _error(self, list events):
        events.append(("error", self.p.err_status, _h1_reason_bytes[self.p.err].decode()))
        self.stopped = True

    cdef bint _message_done(self, list events, const char* s, size_t pos, size_t n):
        """Report the end of a message; False when parsing stops here."""
        cdef uint32_t fl = self.p.flags
        if self.p.trailers.nfields:
            events.append(("trailers", _h1_fields_tuple(&self.p.trailers)))
        events.append(("done",))
        if fl & (H1F_CONNECT | H1F_UPGRADE):
            self.stopped = True
            self.tunnel = True
            if pos < n:
                events.append(("tunnel", s[pos:n]))
            return False
        if not (fl & (H1F_KEEP_ALIVE | H1F_INTERIM)):
            self.stopped = True
            return False
        h1_reset(&self.p)
        return True

    def feed(self, data):
        cdef bytes b = bytes(data)
        cdef const char* s = b
        cdef size_t n = len(b)
        cdef size_t pos = 0
        cdef size_t off = 0, seg = 0
        cdef ssize_t r
        cdef int st
        cdef list events = []
        if self.stopped:
            if self.tunnel and n:
                events.append(("tunnel", b))
            return events
        while True:
            st = self.p.state
            if st == H1_HEAD:
                if pos == n:
                    break
                r = h1_feed_head(&self.p, s + pos, n - pos)
                if r < 0:
                    self._error(events)
                    break
                pos += <size_t>r
                if self.p.state != H1_HEAD_DONE:
                    break
                events.append(("head", self._head()))
            elif st == H1_MESSAGE_DONE:
                if not self._message_done(events, s, pos, n):
                    break
            else:
                r = h1_feed_body(&self.p, s + pos, n - pos, &off, &seg)
                if r < 0:
                    self._error(events)
                    break
                if seg:
                    events.append(("data", s[pos + off:pos + off + seg]))
                pos += <size_t>r
                if r == 0 and self.p.state == st:
                    break
        return events

    def feed_eof(self):
        cdef list events = []
        if self.stopped:
            return events
        if h1_feed_eof(&self.p) < 0:
            self._error(events)
        elif self.p.state == H1_MESSAGE_DONE:
            events.append(("done",))
        self.stopped = True
        return events


cdef FieldPair* _h1_pairs(list keep, headers, size_t* count) except NULL:
    """Borrow (name, value) byte strings as H1Pairs; `keep` holds the bytes alive."""
    cdef FieldPair* f
    cdef Py_ssize_t i
    items = [(bytes(k), bytes(v)) for k, v in headers]
    count[0] = len(items)
    f = <FieldPair*>calloc(len(items) + 1, sizeof(FieldPair))
    if f == NULL:
        raise MemoryError()
    for i in range(len(items)):
        k, v = items[i]
        keep.append(k)
        keep.append(v)
        f[i].name.p = <const char*>k
        f[i].name.n = len(k)
        f[i].value.p = <const char*>v
        f[i].value.n = len(v)
    return f


def _http1_request_head(method, target, headers=(), version=(1, 1)):
    """Serialize a request head; ValueError if any piece could not be sent as is."""
    cdef list keep = []
    cdef bytes m = bytes(method)
    cdef bytes t = bytes(target)
    cdef size_t nf = 0
    cdef StrRef ms, ts
    cdef ssize_t size
    cdef int minor = version[1] if tuple(version[:1]) == (1,) else -1
    cdef FieldPair* f = _h1_pairs(keep, headers, &nf)
    try:
        ms.p = m
        ms.n = len(m)
        ts.p = t
        ts.n = len(t)
        size = h1_request_head_size(ms, ts, minor, f, nf)
        if size < 0:
            raise ValueError("invalid request head")
        out = bytearray(size)
        h1_write_request_head(<char*>out, ms, ts, minor, f, nf)
        return bytes(out)
    finally:
        free(f)


def _http1_response_head(int status, reason=b"", headers=(), version=(1, 1)):
    """Serialize a response head; ValueError if any piece could not be sent as is."""
    cdef list keep = []
    cdef bytes r = bytes(reason)
    cdef size_t nf = 0
    cdef StrRef rs
    cdef ssize_t size
    cdef int minor = version[1] if tuple(version[:1]) == (1,) else -1
    cdef FieldPair* f = _h1_pairs(keep, headers, &nf)
    try:
        rs.p = r
        rs.n = len(r)
        size = h1_response_head_size(status, rs, minor, f, nf)
        if size < 0:
            raise ValueError("invalid response head")
        out = bytearray(size)
        h1_write_response_head(<char*>out, status, rs, minor, f, nf)
        return bytes(out)
    finally:
        free(f)


def _http1_chunk(data):
    """One chunk: size line, data, CRLF. Empty data is refused (that is the last-chunk)."""
    cdef bytes d = bytes(data)
    cdef char hdr[H1_CHUNK_HEADER_MAX]
    cdef size_t k
    if not d:
        raise ValueError("an empty chunk is the last-chunk: use _http1_last_chunk")
    k = h1_write_chunk_header(hdr, len(d))
    return hdr[:k] + d + b"\r\n"


def _http1_last_chunk(trailers=()):
    """The last-chunk, the trailer fields and the final CRLF."""
    cdef list keep = []
    cdef size_t nt = 0
    cdef ssize_t size
    cdef FieldPair* f = _h1_pairs(keep, trailers, &nt)
    try:
        size = h1_last_chunk_size(f, nt)
        if size < 0:
            raise ValueError("invalid trailer field")
        out = bytearray(size)
        h1_write_last_chunk(<char*>out, f, nt)
        return bytes(out)
    finally:
        free(f)


def _http1_bench(data, long rounds, kind="request"):
    """Parse every message in `data` (pipelined, each fully valid) `rounds` times without
    the GIL, body bytes included. Returns (seconds, messages parsed); a parse error raises."""
    cdef bytes b = bytes(data)
    cdef const char* s = b
    cdef size_t n = len(b)
    cdef H1Parser p
    cdef long i, messages = 0
    cdef size_t pos, off, seg
    cdef ssize_t r
    cdef timespec t0, t1
    cdef int bad = 0
    h1_init(&p, H1_REQUEST if kind == "request" else H1_RESPONSE, 0, 0, 0)
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        for i in range(rounds):
            pos = 0
            while pos < n:
                h1_reset(&p)
                r = h1_feed_head(&p, s + pos, n - pos)
                if r < 0 or p.state != H1_HEAD_DONE:
                    bad = 1
                    break
                pos += <size_t>r
                while p.state != H1_MESSAGE_DONE:
                    r = h1_feed_body(&p, s + pos, n - pos, &off, &seg)
                    if r < 0 or (r == 0 and p.state != H1_MESSAGE_DONE and pos == n):
                        bad = 1
                        break
                    pos += <size_t>r
                if bad:
                    break
                messages += 1
            if bad:
                break
        clock_gettime(CLOCK_MONOTONIC, &t1)
    err = p.err
    h1_free(&p)
    if bad:
        raise ValueError(f"bench input does not parse: {HTTP1_ERRORS[err]}")
    return (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9, messages
