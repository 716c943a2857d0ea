# Python HTTP filters: an fp_http_filter table whose hooks take the GIL and call a
# fastproxy.HttpFilter instance (one per stream). With python_async.pxi (async hooks) and
# core/pybridge.pxi (network filters), the only code on a worker that takes the GIL; a
# listener without Python HTTP filters never gets here.
#
# What a hook receives:
#   Headers  a case-insensitive multi-map over the stream's C header map (no copy); when the
#            filter keeps it past the call (or the hook is `async def`), it is detached into
#            a Python copy, and changes made to that copy are written back on the worker
#            before the stream continues.
#   Body     a fastproxy.Buffer over the body bytes (zero-copy memoryview). For an async hook
#            the bytes are moved into the Body while the coroutine runs and moved back after.
# Every exception is caught here: logged with its traceback, counted
# (http.<prefix>.python_filter_error), and the stream gets a 500 (or a reset once the
# response started). The worker, the connection's other streams and the proxy go on.
# `async def` hooks go to the proxy's asyncio loop: python_async.pxi.

import time as _time

cdef struct StreamRef:              # lets other threads name a stream that may be gone
    int refcnt                      # atomic
    HStream* s                      # NULL once the stream ended (only its worker writes it)
    Worker* w


cdef inline void _sref_decref(StreamRef* r) noexcept nogil:
    if fp_atomic_add_int(&r.refcnt, -1) == 0:
        free(r)


cdef enum:                          # StreamMsg.op
    SM_CONTINUE_DECODING = 1
    SM_CONTINUE_ENCODING = 2
    SM_LOCAL_REPLY = 3

cdef struct StreamMsg:
    StreamRef* ref
    int op
    int encoding
    int status
    PyObject* payload               # a strong reference (dropped with the GIL), or NULL


cdef str _latin1(const char* p, size_t n):
    return p[:n].decode("latin-1")


cdef bytes _as_field_bytes(object v, str what):
    if isinstance(v, bytes):
        return <bytes>v
    if isinstance(v, str):
        try:
            return (<str>v).encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {what} {v!r} is not latin-1") from None
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, int):
        return str(v).encode()
    raise TypeError(f"header {what} must be str or bytes, not {type(v).__name__}")


cdef class Headers:
    """An HTTP header map: case-insensitive, ordered, several values per name.

    ``headers["x-user"]`` is the first value (KeyError if absent) as a str; ``get``,
    ``get_all``, ``add`` (another value), ``headers[name] = value`` (replace all), ``del``,
    ``pop``, ``in``, iteration over (name, value) pairs with ``items()``. Pseudo-headers are
    entries too: ``:method``, ``:path``, ``:authority``, ``:scheme`` on requests, ``:status``
    on responses. Values may be given as str (latin-1) or bytes.
    """
    cdef HMap* m                    # attached: the stream's map (valid during the hook)
    cdef list _items                # detached: [[name bytes, value bytes], ...]
    cdef bint _detached
    cdef bint _dirty

    @staticmethod
    cdef Headers _attach(HMap* m):
        cdef Headers h = Headers.__new__(Headers)
        h.m = m
        return h

    cdef _detach(self, bint keep):
        """The hook returned. Keep a Python copy if someone still holds us."""
        cdef size_t i
        if self.m == NULL:
            return
        if keep:
            self._items = [[self.m.l.v[i].name.p[:self.m.l.v[i].name.n],
                            self.m.l.v[i].value.p[:self.m.l.v[i].value.n]] for i in range(self.m.l.n)]
            self._detached = True
        self.m = NULL

    cdef int _write_back(self, HMap* m) except -1:
        """On the worker: replace the map's fields by the detached copy, if it changed."""
        cdef bytes n, v
        if not self._detached or not self._dirty:
            return 0
        m.l.n = 0
        for n, v in self._items:
            if hm_add(m, n, len(n), v, len(v)) < 0:
                raise ValueError(f"invalid header {n!r}: {v!r}")
        self._dirty = False
        return 0

    cdef inline int _check(self) except -1:
        if self.m == NULL and not self._detached:
            raise RuntimeError("these Headers are no longer valid (the stream moved on)")
        return 0

    def __len__(self):
        self._check()
        return <Py_ssize_t>self.m.l.n if self.m != NULL else len(self._items)

    def get_all(self, name):
        """Every value of ``name``, in order."""
        cdef bytes k = _as_field_bytes(name, "name")
        cdef size_t i
        cdef list out = []
        self._check()
        if self.m != NULL:
            for i in range(self.m.l.n):
                if _rt_ieq2(self.m.l.v[i].name.p, self.m.l.v[i].name.n, k, len(k)):
                    out.append(_latin1(self.m.l.v[i].value.p, self.m.l.v[i].value.n))
            return out
        kl = k.lower()
        return [v.decode("latin-1") for n, v in self._items if n.lower() == kl]

    def get(self, name, default=None):
        cdef bytes k = _as_field_bytes(name, "name")
        cdef size_t vn = 0
        cdef const char* v
        self._check()
        if self.m != NULL:
            v = hm_get(self.m, k, len(k), &vn)
            return default if v == NULL else _latin1(v, vn)
        kl = k.lower()
        for n, val in self._items:
            if n.lower() == kl:
                return val.decode("latin-1")
        return default

    def __getitem__(self, name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name):
        return self.get(name) is not None

    def add(self, name, value):
        """Add a value (keeps the ones already there)."""
        cdef bytes k = _as_field_bytes(name, "name")
        cdef bytes v = _as_field_bytes(value, "value")
        self._check()
        if self.m != NULL:
            if hm_add(self.m, k, len(k), v, len(v)) < 0:
                raise ValueError(f"invalid header {k!r}: {v!r}")
            return
        if not _hm_name_ok(k, len(k)) or not _hm_value_ok(v, len(v)):
            raise ValueError(f"invalid header {k!r}: {v!r}")
        self._items.append([k.lower(), v])
        self._dirty = True

    def __setitem__(self, name, value):
        """Replace every value of ``name`` by this one."""
        cdef bytes k = _as_field_bytes(name, "name")
        cdef bytes v = _as_field_bytes(value, "value")
        cdef list items
        self._check()
        if self.m != NULL:
            if hm_set(self.m, k, len(k), v, len(v)) < 0:
                raise ValueError(f"invalid header {k!r}: {v!r}")
            return
        if not _hm_name_ok(k, len(k)) or not _hm_value_ok(v, len(v)):
            raise ValueError(f"invalid header {k!r}: {v!r}")
        kl = k.lower()
        items = []
        placed = False
        for pair in self._items:
            if pair[0].lower() == kl:
                if placed:
                    continue
                pair = [pair[0], v]
                placed = True
            items.append(pair)
        if not placed:
            items.append([kl, v])
        self._items = items
        self._dirty = True

    def __delitem__(self, name):
        if not self.remove(name):
            raise KeyError(name)

    def remove(self, name):
        """Remove every value of ``name``; how many there were."""
        cdef bytes k = _as_field_bytes(name, "name")
        self._check()
        if self.m != NULL:
            return hm_remove(self.m, k, len(k))
        kl = k.lower()
        before = len(self._items)
        self._items = [p for p in self._items if p[0].lower() != kl]
        self._dirty = self._dirty or before != len(self._items)
        return before - len(self._items)

    def pop(self, name, default=None):
        v = self.get(name)
        if v is None:
            return default
        self.remove(name)
        return v

    def items(self):
        """(name, value) pairs as str, in order, pseudo-headers first."""
        cdef size_t i
        self._check()
        if self.m != NULL:
            return [(_latin1(self.m.l.v[i].name.p, self.m.l.v[i].name.n),
                     _latin1(self.m.l.v[i].value.p, self.m.l.v[i].value.n)) for i in range(self.m.l.n)]
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._items]

    def raw_items(self):
        """(name, value) pairs as bytes."""
        return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.items()]

    def keys(self):
        return [n for n, _ in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def __repr__(self):
        if self.m == NULL and not self._detached:
            return "<fastproxy.Headers (released)>"
        return f"<fastproxy.Headers {self.items()!r}>"


cdef class Body(Buffer):
    """Body bytes passing through a filter hook: a fastproxy.Buffer (zero-copy memoryview,
    drain/prepend/append/replace). Valid during the hook; for an ``async def`` hook, until
    the coroutine finishes."""
    cdef Chain own                  # the bytes, while an async hook has them

    cdef _take(self):
        """Move the bytes into this object (async hooks)."""
        if self.c != NULL and self.c != &self.own:
            chain_move(&self.own, self.c)
            self.c = &self.own

    cdef _give_back(self, Chain* held):
        """Prepend what we hold to the stream's bytes (which may have grown meanwhile)."""
        cdef Chain tmp
        memset(&tmp, 0, sizeof(Chain))
        chain_move(&tmp, &self.own)
        chain_move(&tmp, held)
        chain_move(held, &tmp)
        chain_free(&tmp)
        self.c = NULL

    def __dealloc__(self):
        chain_free(&self.own)


cdef class StreamInfo:
    """What is known about a stream: a snapshot taken when it is read."""
    cdef readonly object downstream_remote_address
    cdef readonly double start_time           # time.time() when the request head arrived
    cdef readonly double duration             # seconds since then (or the whole stream in on_log)
    cdef readonly int response_code           # 0 before a response
    cdef readonly object upstream_host        # "ip:port" or None
    cdef readonly object upstream_cluster
    cdef readonly object route_name
    cdef readonly uint64_t bytes_received     # request body bytes
    cdef readonly uint64_t bytes_sent         # response body bytes sent downstream
    cdef readonly str response_flags          # Envoy's short codes ("UF,URX"), "-" if none
    cdef readonly str protocol
    cdef readonly object requested_server_name   # the TLS SNI, or None
    cdef readonly object ssl_connection          # an SslConnectionInfo on TLS, else None

    def __repr__(self):
        return (f"<StreamInfo {self.downstream_remote_address} code={self.response_code} "
                f"upstream={self.upstream_host}>")


cdef class SslConnectionInfo:
    """The downstream connection's TLS facts (Envoy's Ssl::ConnectionInfo), read when the
    StreamInfo is taken. Certificate facts are None (lists empty) when that certificate is
    absent (no client certificate)."""
    cdef readonly str tls_version                # "TLSv1.3"
    cdef readonly str ciphersuite                # "TLS_AES_128_GCM_SHA256"
    cdef readonly object session_id              # hex, or None
    cdef readonly bint peer_certificate_presented
    cdef readonly object subject_peer_certificate    # RFC 2253
    cdef readonly object subject_local_certificate
    cdef readonly list uri_san_peer_certificate
    cdef readonly list uri_san_local_certificate
    cdef readonly list dns_sans_peer_certificate
    cdef readonly list dns_sans_local_certificate
    cdef readonly object sha256_peer_certificate_digest     # hex
    cdef readonly object serial_number_peer_certificate     # hex
    cdef readonly object valid_from_peer_certificate        # seconds since the epoch
    cdef readonly object expiration_peer_certificate
    cdef readonly object url_encoded_pem_encoded_peer_certificate

    def __repr__(self):
        return (f"<SslConnectionInfo {self.tls_version} {self.ciphersuite} "
                f"peer={self.subject_peer_certificate!r}>")


cdef object _tt_str(TlsText* t, bint have):
    """A TlsText as str (and freed); None when not `have` or memory ran out."""
    try:
        if not have or t.failed:
            return None
        return t.p[:t.n].decode("utf-8", "replace") if t.n else ""
    finally:
        tt_free(t)


cdef list _san_list(X509* x, int kind):
    cdef TlsText t
    memset(&t, 0, sizeof(TlsText))
    # A DNS name or URI has no line break (IA5 text of a host or URI): it separates them.
    n = tls_sans(x, kind, &t, "", "\n")
    text = _tt_str(&t, n > 0)
    return text.split("\n") if text else []


cdef object _ssl_connection(SSL* ssl):
    cdef SslConnectionInfo i
    cdef TlsText t
    cdef X509* peer
    cdef X509* local
    cdef int64_t us
    cdef const char* v
    if ssl == NULL:
        return None
    i = SslConnectionInfo.__new__(SslConnectionInfo)
    peer = tls_peer_cert(ssl)
    local = tls_local_cert(ssl)
    v = tls_version(ssl)
    i.tls_version = (<bytes>v).decode() if v != NULL else ""
    v = tls_cipher(ssl)
    i.ciphersuite = (<bytes>v).decode() if v != NULL else ""
    memset(&t, 0, sizeof(TlsText))
    i.session_id = _tt_str(&t, tls_session_id(ssl, &t))
    i.peer_certificate_presented = peer != NULL
    i.subject_peer_certificate = _tt_str(&t, tls_subject(peer, &t))
    i.subject_local_certificate = _tt_str(&t, tls_subject(local, &t))
    i.uri_san_peer_certificate = _san_list(peer, GEN_URI)
    i.uri_san_local_certificate = _san_list(local, GEN_URI)
    i.dns_sans_peer_certificate = _san_list(peer, GEN_DNS)
    i.dns_sans_local_certificate = _san_list(local, GEN_DNS)
    i.sha256_peer_certificate_digest = _tt_str(&t, tls_sha256_hex(peer, &t))
    i.serial_number_peer_certificate = _tt_str(&t, tls_serial_hex(peer, &t))
    i.url_encoded_pem_encoded_peer_certificate = _tt_str(&t, tls_pem_urlencoded(peer, &t))
    us = tls_cert_time_us(peer, False)
    i.valid_from_peer_certificate = us // 1000000 if us >= 0 else None
    us = tls_cert_time_us(peer, True)
    i.expiration_peer_certificate = us // 1000000 if us >= 0 else None
    return i


cdef StreamInfo _stream_info(HStream* s):
    cdef StreamInfo i = StreamInfo.__new__(StreamInfo)
    cdef SSL* ssl
    cdef const char* sni
    cdef char buf[64]
    cdef size_t k
    cdef uint64_t now = s.c.w.now
    i.downstream_remote_address = _latin1(s.c.remote_ip, s.c.remote_ip_len)
    i.duration = (now - s.start_ms) / 1000.0 if now >= s.start_ms else 0.0
    i.start_time = _time.time() - i.duration
    i.response_code = s.status
    i.bytes_received = s.req_body_bytes
    i.bytes_sent = s.bytes_sent
    flags = [(<bytes>_rf_names[b]).decode() for b in range(RF_COUNT) if s.response_flags & (1 << b)]
    i.response_flags = ",".join(flags) if flags else "-"
    i.protocol = http_protocol_name(s.protocol).decode()
    if s.upstream.conn != NULL and s.upstream.conn.hosts != NULL:
        k = _host_text(&s.upstream.conn.hosts.hosts[s.upstream.conn.host_index], buf, sizeof(buf))
        i.upstream_host = _latin1(buf, k) if k else None
    elif s.fc != NULL and s.fc.upstream_host_len:
        i.upstream_host = _latin1(s.fc.upstream_host, s.fc.upstream_host_len)
    if s.cluster != NULL:
        i.upstream_cluster = _cluster_name(s)
    if s.route != NULL and s.route.name.p != NULL:
        i.route_name = _latin1(s.route.name.p, s.route.name.n)
    ssl = <SSL*>endp_ssl(&s.c.down)
    sni = hconn_requested_server_name(s.c)
    i.requested_server_name = (<bytes>sni).decode("ascii", "replace") if sni != NULL else None
    i.ssl_connection = _ssl_connection(ssl)
    return i


cdef object _cluster_name(HStream* s):
    """The name of the cluster the router chose (it sets s.cluster and s.cluster_index
    together, from the stream's route table), or None."""
    if s.cluster_index < 0 or s.routes == NULL:
        return None
    return s.routes.cluster_names[s.cluster_index].decode()


cdef class FilterState(dict):
    """callbacks.filter_state: a dict shared by the stream's Python filters. Its str and
    bytes values under str keys are also the stream's filter state in C (the one C filters
    set through fp_api), which the route's hash_policy `filter_state` reads on the worker
    without the GIL: the keys a hook changed are copied there when the hook returns on the
    stream's worker (an async hook's when its result is applied), before the router runs.
    Other values stay Python-only (like Envoy's objects that are not hashable)."""
    cdef set changed                # str keys changed since the last copy

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, value)
        self._touch(key)

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        self._touch(key)

    def pop(self, key, *default):
        value = dict.pop(self, key, *default)
        self._touch(key)
        return value

    def popitem(self):
        key, value = dict.popitem(self)
        self._touch(key)
        return key, value

    def setdefault(self, key, default=None):
        value = dict.setdefault(self, key, default)
        self._touch(key)
        return value

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def clear(self):
        for key in list(self):
            self._touch(key)
        dict.clear(self)

    cdef _touch(self, key):
        if isinstance(key, str):
            if self.changed is None:
                self.changed = set()
            self.changed.add(key)

    cdef int copy_out(self, FChain* fc) except -1:
        """Write the changed keys into the stream's C filter state (worker thread)."""
        cdef bytes k
        cdef object v
        changed = self.changed
        self.changed = None
        for key in changed:
            k = key.encode("utf-8", "surrogateescape")
            v = dict.get(self, key)
            if isinstance(v, str):
                v = (<str>v).encode("utf-8", "surrogateescape")
            elif isinstance(v, (bytearray, memoryview)):
                v = bytes(v)
            elif not isinstance(v, bytes):
                v = None                # removed, or not a string: nothing to hash
            if hf_filter_state_set(fc, k, len(k), NULL if v is None else <const char*>(<bytes>v),
                                   0 if v is None else len(<bytes>v)) < 0:
                raise MemoryError()
        return 0


cdef class _PyStream:
    """Per-stream Python state shared by the stream's Python filters."""
    cdef StreamRef* ref
    cdef public FilterState filter_state
    cdef list detached              # Headers copies to write back before continuing
    cdef object log
    cdef AsyncBridge bridge         # where the stream's async hooks run (its proxy's loop)

    def __dealloc__(self):
        if self.ref != NULL:
            _sref_decref(self.ref)
            self.ref = NULL

    cdef _post(self, int op, int encoding=0, int status=0, object payload=None):
        cdef StreamMsg* m = <StreamMsg*>calloc(1, sizeof(StreamMsg))
        if m == NULL:
            raise MemoryError()
        fp_atomic_add_int(&self.ref.refcnt, 1)
        m.ref = self.ref
        m.op = op
        m.encoding = encoding
        m.status = status
        if payload is not None:
            Py_INCREF(payload)
            m.payload = <PyObject*>payload
        if worker_post(self.ref.w, _msg_stream_op, m) < 0:
            _sref_decref(m.ref)
            if m.payload != NULL:
                Py_DECREF(<object>m.payload)
            free(m)
            raise RuntimeError("the worker is gone")

    cdef bint _on_own_hook(self, int encoding=-1):
        """True when called from a hook of this very stream (on its worker), running in
        the given direction (-1: either)."""
        cdef HStream* s
        # The thread first: only the stream's worker may look at the stream (elsewhere it
        # may be freed at any moment).
        if not pthread_equal(pthread_self(), self.ref.w.thread):
            return False
        s = self.ref.s
        return (s != NULL and s.fc != NULL and s.fc.in_hook
                and (encoding < 0 or s.fc.hook_encoding == encoding))

    cdef _sync(self):
        """On the worker, stream alive: write detached header copies back, and the filter
        state a hook on another thread changed."""
        cdef Headers h
        cdef HStream* s = self.ref.s
        if self.filter_state.changed and s != NULL and s.fc != NULL:
            self.filter_state.copy_out(s.fc)
        items = self.detached
        self.detached = []
        for o in items:
            h = <Headers>o[0]
            if s != NULL and s.fc != NULL:
                h._write_back(<HMap*><size_t>o[1])


cdef class HttpFilterCallbacks:
    """``self.callbacks`` of an HttpFilter: what a filter can do to its stream.

    ``continue_decoding()``/``continue_encoding()`` and ``send_local_reply()`` may be called
    from any thread (they are posted to the stream's worker); the rest only from a hook.
    """
    cdef _PyStream ps
    cdef readonly int index

    @property
    def filter_state(self):
        """A dict shared by every Python filter of the stream (FilterState): its str/bytes
        values under str keys are what a route's hash_policy filter_state hashes."""
        return self.ps.filter_state

    cdef HStream* _stream(self) except NULL:
        cdef HStream* s
        if not pthread_equal(pthread_self(), self.ps.ref.w.thread):
            raise RuntimeError("only valid in a hook, on the stream's worker thread")
        s = self.ps.ref.s
        if s == NULL or s.fc == NULL:
            raise RuntimeError("the stream has ended")
        return s

    def continue_decoding(self):
        """Resume the request after STOP_ITERATION / STOP_AND_BUFFER (any thread)."""
        if self.ps._on_own_hook(0):
            hf_continue(self.ps.ref.s, False)
        else:
            self.ps._post(SM_CONTINUE_DECODING)

    def continue_encoding(self):
        """Resume the response (any thread)."""
        if self.ps._on_own_hook(1):
            hf_continue(self.ps.ref.s, True)
        else:
            self.ps._post(SM_CONTINUE_ENCODING)

    def send_local_reply(self, int status, body=b"", headers=None):
        """Answer the request from the proxy: the stream ends with this response (any
        thread; from a hook, return STOP_ITERATION after calling it). As in Envoy it passes
        through the encoder filters (this one's too) unless they already hold a response:
        then it goes straight to the client; after the response head went out the stream
        is reset instead (docs/filters.md, "Local replies")."""
        if not 200 <= status <= 599:
            raise ValueError("status must be 200..599")
        payload = (_as_field_bytes(body, "body") if body else b"",
                   [(_as_field_bytes(k, "name"), _as_field_bytes(v, "value"))
                    for k, v in (headers.items() if hasattr(headers, "items") else headers or ())])
        if self.ps._on_own_hook():
            _apply_local_reply(self.ps.ref.s, status, payload)
        else:
            self.ps._post(SM_LOCAL_REPLY, 0, status, payload)

    def clear_route_cache(self):
        """Headers changed: choose the route again before the router runs."""
        cdef HStream* s = self._stream()
        s.route_cleared = 1
        s.route = NULL

    @property
    def route_config(self):
        """This filter's typed_per_filter_config for the stream's route (route, then
        virtual host, then route configuration), or None."""
        cdef HStream* s = self._stream()
        _ensure_route(s)
        if s.route == NULL or s.route.per_filter == NULL or s.route.per_filter[self.index] == NULL:
            return None
        return <object>s.route.per_filter[self.index]

    @property
    def route_name(self):
        cdef HStream* s = self._stream()
        _ensure_route(s)
        if s.route == NULL or s.route.name.p == NULL:
            return None
        return _latin1(s.route.name.p, s.route.name.n)

    @property
    def cluster(self):
        """The cluster the request goes to (None: no route / a direct response). Settable
        (by name) in a decode hook before the router runs."""
        cdef HStream* s = self._stream()
        if s.cluster != NULL:
            return _cluster_name(s)
        if s.cluster_override >= 0:
            return s.routes.cluster_names[s.cluster_override].decode()
        _ensure_route(s)
        if s.route == NULL or s.route.action != ROUTE_CLUSTER:
            return None
        return s.routes.cluster_names[s.route.cluster].decode()

    @cluster.setter
    def cluster(self, name):
        cdef HStream* s = self._stream()
        cdef int i
        cdef bytes b = name.encode() if isinstance(name, str) else bytes(name)
        if s.upstream.conn != NULL:
            raise RuntimeError("the upstream request has already started")
        for i in range(s.routes.nclusters):
            if s.routes.cluster_names[i] == b:
                s.cluster_override = i
                return
        raise ValueError(f"unknown cluster {name!r} (a filter can pick one of the clusters "
                         f"the listener's routes name)")

    @property
    def stream_info(self):
        return _stream_info(self._stream())

    def add_decoded_data(self, data):
        """Add bytes to the request body being filtered (from a decode hook)."""
        cdef HStream* s = self._stream()
        cdef bytes b = _as_field_bytes(data, "data")
        if chain_append(&s.fc.dec.held, b, len(b)) < 0:
            raise MemoryError()

    def add_encoded_data(self, data):
        """Add bytes to the response body being filtered (from an encode hook)."""
        cdef HStream* s = self._stream()
        cdef bytes b = _as_field_bytes(data, "data")
        if chain_append(&s.fc.enc.held, b, len(b)) < 0:
            raise MemoryError()


cdef void _apply_local_reply(HStream* s, int status, object payload) noexcept:
    cdef bytes body = payload[0]
    cdef FChain* fc = s.fc
    if fc == NULL:
        return
    hm_free(&fc.local_headers)
    for k, v in payload[1]:
        hm_add(&fc.local_headers, <bytes>k, len(k), <bytes>v, len(v))
    hf_request_local_reply(s, status, body, len(body))


cdef void _msg_stream_op(Worker* w, void* arg) noexcept nogil:
    cdef StreamMsg* m = <StreamMsg*>arg
    cdef HStream* s = m.ref.s
    if s != NULL and s.fc != NULL and not s.fc.dead:
        if m.op == SM_CONTINUE_DECODING or m.op == SM_CONTINUE_ENCODING:
            _py_sync_stream(s)
            if s.fc != NULL:
                hf_continue(s, m.op == SM_CONTINUE_ENCODING)
        elif m.op == SM_LOCAL_REPLY:
            _py_local_reply_msg(s, m)
    _sref_decref(m.ref)
    if m.payload != NULL:
        _py_decref_with_gil(m.payload)
    free(m)


cdef void _py_sync_stream(HStream* s) noexcept with gil:
    try:
        (<_PyStream>s.fc.pyctx)._sync()
    except BaseException:
        _py_filter_failed(s, "writing back headers")


cdef void _py_local_reply_msg(HStream* s, StreamMsg* m) noexcept with gil:
    _apply_local_reply(s, m.status, <object>m.payload)


cdef void _log_filter_exception(HStream* s, object e) noexcept:
    cdef HttpCfg* h = <HttpCfg*>s.c.cfg.http
    try:
        _log.error("fastproxy: HTTP filter raised an exception; the stream ends with 500",
                   exc_info=(type(e), e, e.__traceback__))
    except BaseException:
        pass
    stat_add(h.stats, s.c.w, H_PY_FILTER_ERROR, 1)
    if s.fc.local_status == 0:
        s.fc.local_status = LOCAL_RESET if s.resp_started else 500


cdef void _log_create_failed(HStream* s, const char* name) noexcept nogil:
    """A C or native filter's create returned NULL for a stream (hf_stream_create): counted
    with the other filter failures; the stream ends with 500."""
    stat_add((<HttpCfg*>s.c.cfg.http).stats, s.c.w, H_PY_FILTER_ERROR, 1)
    _log_create_failed_gil(name)


cdef void _log_create_failed_gil(const char* name) noexcept with gil:
    try:
        _log.error("fastproxy: HTTP filter %s could not be created for a stream (its create "
                   "returned NULL); the stream ends with 500", name.decode(errors="replace"))
    except BaseException:
        pass


cdef void _py_filter_failed(HStream* s, str where) noexcept:
    import sys
    e = sys.exc_info()[1]
    _log_filter_exception(s, e)


cdef _PyStream _py_stream(HStream* s):
    cdef FChain* fc = s.fc
    cdef _PyStream ps
    cdef StreamRef* r
    if fc.pyctx != NULL:
        return <_PyStream>fc.pyctx
    r = <StreamRef*>calloc(1, sizeof(StreamRef))
    if r == NULL:
        raise MemoryError()
    r.refcnt = 1                    # the stream's own reference, dropped in py_stream_release
    r.s = s
    r.w = s.c.w
    ps = _PyStream.__new__(_PyStream)
    fp_atomic_add_int(&r.refcnt, 1)
    ps.ref = r
    ps.filter_state = FilterState()
    ps.detached = []
    Py_INCREF(ps)
    fc.pyctx = <PyObject*>ps
    fc.stream_ref = r
    return ps


cdef void py_stream_release(FChain* fc) noexcept with gil:
    cdef StreamRef* r = fc.stream_ref
    if r != NULL:
        r.s = NULL
        _sref_decref(r)
        fc.stream_ref = NULL
    if fc.pyctx != NULL:
        Py_DECREF(<object>fc.pyctx)
        fc.pyctx = NULL


# -- the fp_http_filter table for Python filters (config = a PyObject* factory)

cdef void* _pyf_create(void* config, fp_stream* st, const fp_api* api) noexcept with gil:
    cdef HStream* s = <HStream*>st
    cdef HttpFilterCallbacks cb
    cdef _PyFilterFactory factory = <_PyFilterFactory>config
    cdef _PyStream ps
    cdef int i = s.fc.current
    try:
        ps = _py_stream(s)
        ps.bridge = factory.bridge
        inst = factory.make()
        cb = HttpFilterCallbacks.__new__(HttpFilterCallbacks)
        cb.ps = ps
        cb.index = i
        inst.callbacks = cb
        Py_INCREF(inst)
        return <void*>inst
    except BaseException as e:
        _log_filter_exception(s, e)
        return NULL


cdef int _pyf_call(void* self, int hook, void* target, int end) noexcept with gil:
    cdef object inst = <object>self
    cdef HttpFilterCallbacks cb = inst.callbacks
    cdef HStream* s = cb.ps.ref.s
    cdef Headers hobj = None
    cdef Body bobj = None
    cdef bint encoding = hook >= HK_ENCODE_HEADERS
    try:
        if hook == HK_DECODE_DATA or hook == HK_ENCODE_DATA:
            bobj = Body.__new__(Body)
            bobj.c = <Chain*>target
            arg = bobj
        else:
            hobj = Headers._attach(<HMap*>target)
            arg = hobj
        if hook == HK_DECODE_HEADERS:
            r = inst.decode_headers(arg, bool(end))
        elif hook == HK_DECODE_DATA:
            r = inst.decode_data(arg, bool(end))
        elif hook == HK_DECODE_TRAILERS:
            r = inst.decode_trailers(arg)
        elif hook == HK_ENCODE_HEADERS:
            r = inst.encode_headers(arg, bool(end))
        elif hook == HK_ENCODE_DATA:
            r = inst.encode_data(arg, bool(end))
        else:
            r = inst.encode_trailers(arg)
        if r is None:
            st = 0
        elif type(r) is _CoroutineType or hasattr(r, "__await__"):
            _start_async(cb, r, hobj, bobj, <HMap*>target if hobj is not None else NULL,
                         encoding, type(inst).__name__, getattr(inst, "timeout", None))
            return FP_STOP_ITERATION
        else:
            st = int(r)
            if not 0 <= st <= 3:
                raise ValueError(f"{type(inst).__name__} returned {r!r}, not a FilterStatus")
        return st
    except BaseException as e:
        _log_filter_exception(s, e)
        return FP_STOP_ITERATION
    finally:
        if cb.ps.filter_state.changed and s != NULL and s.fc != NULL:
            # Before the next filter or the router: its hash_policy may read them.
            try:
                cb.ps.filter_state.copy_out(s.fc)
            except BaseException as e:
                _log_filter_exception(s, e)
        if hobj is not None and hobj.m != NULL:
            keep = _refcnt(hobj) > 2    # more than `hobj` and `arg`: the filter kept it
            hobj._detach(keep)
            if keep:
                cb.ps.detached.append((hobj, <size_t>target))
        if bobj is not None and bobj.c == <Chain*>target:
            bobj.c = NULL


cdef inline Py_ssize_t _refcnt(object o):
    return (<PyObject*>o).ob_refcnt


async def _never():
    pass
_c = _never()
_CoroutineType = type(_c)
_c.close()
del _c


cdef int _pyf_decode_headers(void* self, fp_headers* h, int end) noexcept nogil:
    return _pyf_call(self, HK_DECODE_HEADERS, h, end)

cdef int _pyf_decode_data(void* self, fp_body* b, int end) noexcept nogil:
    return _pyf_call(self, HK_DECODE_DATA, b, end)

cdef int _pyf_decode_trailers(void* self, fp_headers* t) noexcept nogil:
    return _pyf_call(self, HK_DECODE_TRAILERS, t, 1)

cdef int _pyf_encode_headers(void* self, fp_headers* h, int end) noexcept nogil:
    return _pyf_call(self, HK_ENCODE_HEADERS, h, end)

cdef int _pyf_encode_data(void* self, fp_body* b, int end) noexcept nogil:
    return _pyf_call(self, HK_ENCODE_DATA, b, end)

cdef int _pyf_encode_trailers(void* self, fp_headers* t) noexcept nogil:
    return _pyf_call(self, HK_ENCODE_TRAILERS, t, 1)

cdef void _pyf_on_log(void* self) noexcept with gil:
    cdef object inst = <object>self
    cdef HttpFilterCallbacks cb = inst.callbacks
    cdef HStream* s = cb.ps.ref.s
    try:
        inst.on_log(_stream_info(s))
    except BaseException as e:
        try:
            _log.error("fastproxy: HTTP filter on_log raised", exc_info=(type(e), e, e.__traceback__))
        except BaseException:
            pass

cdef void _pyf_destroy(void* self) noexcept with gil:
    cdef object inst = <object>self
    try:
        inst.on_destroy()
    except BaseException as e:
        try:
            _log.error("fastproxy: HTTP filter on_destroy raised", exc_info=(type(e), e, e.__traceback__))
        except BaseException:
            pass
    Py_DECREF(inst)


cdef fp_http_filter PY_FILTER_VT
PY_FILTER_VT.abi_version = FP_FILTER_ABI_VERSION
PY_FILTER_VT.create_config = NULL
PY_FILTER_VT.destroy_config = NULL
PY_FILTER_VT.create = _pyf_create
PY_FILTER_VT.decode_headers = _pyf_decode_headers
PY_FILTER_VT.decode_data = _pyf_decode_data
PY_FILTER_VT.decode_trailers = _pyf_decode_trailers
PY_FILTER_VT.encode_headers = _pyf_encode_headers
PY_FILTER_VT.encode_data = _pyf_encode_data
PY_FILTER_VT.encode_trailers = _pyf_encode_trailers
PY_FILTER_VT.on_log = _pyf_on_log
PY_FILTER_VT.destroy = _pyf_destroy
