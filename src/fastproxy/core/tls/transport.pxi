# The TLS transport of one connection, on its worker without the GIL: the SSL made from
# its provider's current context over the connection's socket (socket BIO, so that kTLS
# can take over), the reads and writes of the I/O seam (endp_read / endp_write: the
# chain_read_fd / chain_write_fd contract), the handshake (implicit through the first
# read or write downstream, explicit upstream: tls_handshake), its completion (stats,
# the checks OpenSSL leaves to us), and close_notify / free on every close path.
#
# Edge-triggered readiness (Endp.readable/writable) keeps its meaning: endp_read reads
# records until the chain has `max` bytes or OpenSSL wants the socket, so "n < asked" still
# means "the socket is drained". OpenSSL may want the other direction of the socket than
# the call was for (a read that must write handshake bytes, a write that must read them):
# the call says EAGAIN and remembers it, and endp_tls_event turns the socket event it
# waits for into the readiness the caller waits for.

cdef int _TLS_SLOT
cdef uint16_t _ssl_cipher_ids[64]
cdef int _ssl_ncipher_ids = 0


cdef inline TlsWorker* tls_worker(Worker* w) noexcept nogil:
    return <TlsWorker*>w.state[_TLS_SLOT]


# ---------------------------------------------------------------- the seam (API14.md)

cdef inline SSL* endp_ssl(Endp* ep) noexcept nogil:
    """The connection's SSL (NULL: plaintext)."""
    return (<TlsConn*>ep.tls).ssl if ep.tls != NULL else NULL


cdef inline bint endp_handshake_done(Endp* ep) noexcept nogil:
    """Plaintext, or TLS whose handshake completed."""
    return ep.tls == NULL or (<TlsConn*>ep.tls).done


cdef inline bint endp_splice_ok(Endp* src, Endp* dst) noexcept nogil:
    """May bytes go src -> pipe -> dst unread: from a plaintext source to a plaintext
    destination, or to one whose kernel encrypts (kTLS took the keys of that direction).
    Never from a kTLS-rx source: splice fails on its non-data records (close_notify,
    KeyUpdate, tickets), which only SSL_read handles."""
    return src.tls == NULL and (dst.tls == NULL or (<TlsConn*>dst.tls).ktls_tx)


cdef inline void endp_tls_event(Endp* ep, uint32_t events) noexcept nogil:
    """Call from an endpoint's on_event after it set readable/writable: OpenSSL's
    cross-wants (a read waiting for the socket to take bytes, a write waiting for bytes
    to come) become the readiness their caller waits for."""
    cdef TlsConn* t = <TlsConn*>ep.tls
    if t == NULL:
        return
    if t.read_wants_write and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
        t.read_wants_write = 0
        ep.readable = 1
    if t.write_wants_read and events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP):
        t.write_wants_read = 0
        ep.writable = 1
    if t.notify_pending and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
        # The half-close's close_notify has now left OpenSSL: the FIN may follow it.
        if _tls_notify(t):
            shutdown(ep.fd, SHUT_WR)


cdef inline ssize_t endp_read(Endp* ep, Chain* c, size_t max_bytes, size_t* asked) noexcept nogil:
    if ep.tls == NULL:
        return chain_read_fd(c, ep.fd, max_bytes, asked)
    return tls_read(ep, <TlsConn*>ep.tls, c, max_bytes, asked)


cdef inline ssize_t endp_write(Endp* ep, Chain* c, size_t* offered, bint more) noexcept nogil:
    if ep.tls == NULL:
        return chain_write_fd(c, ep.fd, offered, more)
    return tls_write(ep, <TlsConn*>ep.tls, c, offered)


cdef void endp_shutdown_wr(Endp* ep) noexcept nogil:
    """The FIN of a half-close: close_notify first under TLS. A socket too full to take the
    alert gets its FIN from endp_tls_event once EPOLLOUT lets the alert out (a FIN sent
    now would cut it off: the peer would see a truncation, not a clean close)."""
    if ep.tls != NULL and not _tls_notify(<TlsConn*>ep.tls):
        return
    shutdown(ep.fd, SHUT_WR)


cdef ssize_t endp_discard(Endp* ep) noexcept nogil:
    """Read and drop what the peer sends (a lingering close): > 0 bytes dropped, 0 EOF, -1
    with errno (EAGAIN: wait for the next event)."""
    cdef char scratch[16384]
    cdef TlsConn* t = <TlsConn*>ep.tls
    cdef int r
    if t == NULL:
        return read(ep.fd, scratch, sizeof(scratch))
    if t.eof:
        return 0
    ERR_clear_error()
    fp_set_errno(0)
    r = SSL_read(t.ssl, scratch, sizeof(scratch))
    if r > 0:
        return r
    return _tls_result(t, r, True)


cdef void endp_tls_close(Endp* ep, bint notify) noexcept nogil:
    """Before the socket closes: close_notify when notify (a clean close of a connection
    whose handshake completed), then the SSL goes. NULL-safe, once."""
    cdef TlsConn* t = <TlsConn*>ep.tls
    if t == NULL:
        return
    ep.tls = NULL
    if notify:
        _tls_notify(t)
    tls_conn_free(t)


# ---------------------------------------------------------------- life

cdef void _tls_timeout(Worker* w, void* arg) noexcept nogil:
    """transport_socket_connect_timeout: the handshake did not complete in time."""
    cdef TlsConn* t = <TlsConn*>arg
    if t.done or t.on_timeout == NULL:
        return
    _tls_conn_error(t)
    t.on_timeout(t.owner)


cdef TlsConn* tls_conn_new(Worker* w, TlsProvider* p, int fd) noexcept nogil:
    """A TLS transport over fd with the worker's current context of p (server or client as
    p is). NULL when out of memory (the caller closes the connection)."""
    cdef TlsCtx* c = p.per_worker[w.index].ctx
    cdef TlsConn* t = <TlsConn*>calloc(1, sizeof(TlsConn))
    if t == NULL:
        return NULL
    t.ssl = SSL_new(c.ctx)
    if t.ssl == NULL or SSL_set_fd(t.ssl, fd) != 1:
        if t.ssl != NULL:
            SSL_free(t.ssl)
        ERR_clear_error()
        free(t)
        return NULL
    SSL_set_ex_data(t.ssl, 0, t)
    fp_atomic_add_int(&c.refcnt, 1)
    t.ctx = c
    fp_atomic_add_int(&p.refcnt, 1)
    t.provider = p
    t.w = w
    t.server = p.server
    timer_init(&t.timer, _tls_timeout, t)
    if t.server:
        SSL_set_accept_state(t.ssl)
    else:
        SSL_set_connect_state(t.ssl)
    return t


cdef int tls_conn_arm_timeout(TlsConn* t, uint64_t ms, tls_timeout_t on_timeout, void* owner) noexcept nogil:
    """Close the connection (on_timeout(owner)) if its handshake has not completed in ms.
    -1: the timer could not be armed (no memory): the caller closes the connection, which
    would otherwise wait for a handshake without a bound."""
    t.on_timeout = on_timeout
    t.owner = owner
    return timer_arm(t.w, &t.timer, ms)


cdef void tls_server_name(TlsCtx* c, const char* host, size_t host_len, char* out) noexcept nogil:
    """A client's server name into out (256 bytes; "" for none): the context's sni, else
    with auto_sni the request's host without its port (not an IP literal's brackets)."""
    cdef size_t n = 0
    cdef int i
    out[0] = 0
    if c.sni != NULL:
        n = strlen(c.sni)
        memcpy(out, c.sni, n + 1)
    elif c.auto_sni and host != NULL and host_len:
        n = host_len
        if host[0] == b'[':
            n = 0                       # an IPv6 literal: no SNI (RFC 6066)
        else:
            for i in range(<int>host_len):
                if host[i] == b':':
                    n = <size_t>i
                    break
        if n >= 256:
            n = 0
        memcpy(out, host, n)
        out[n] = 0


cdef void tls_client_prepare(TlsConn* t, const char* host, size_t host_len) noexcept nogil:
    """Client: the server name (tls_server_name), for SNI, auto_san_validation and the
    session to resume."""
    cdef TlsCtx* c = t.ctx
    cdef TlsWorkerCtx* slot
    cdef int i
    tls_server_name(c, host, host_len, t.host)
    if t.host[0]:
        SSL_set_tlsext_host_name(t.ssl, t.host)
    if c.max_session_keys > 0:
        slot = &t.provider.per_worker[t.w.index]
        for i in range(slot.nsessions):
            if strcmp(slot.sessions[i].sni, t.host) == 0:
                SSL_set_session(t.ssl, slot.sessions[i].sess)
                break
    ERR_clear_error()


cdef void tls_conn_free(TlsConn* t) noexcept nogil:
    timer_cancel(t.w, &t.timer)
    SSL_free(t.ssl)
    tls_ctx_decref(t.ctx)
    tls_provider_decref(t.provider)
    free(t)


cdef bint _tls_notify(TlsConn* t) noexcept nogil:
    """Send close_notify once (only after a completed handshake). False: the socket did not
    take it yet (notify_pending; call again when it is writable); True: sent, or nothing to
    send, or a failed write (let be: the connection is closing)."""
    cdef int r
    if not t.done or t.failed or (t.shut and not t.notify_pending):
        return True
    t.shut = 1
    ERR_clear_error()
    fp_set_errno(0)
    r = SSL_shutdown(t.ssl)
    t.notify_pending = r < 0 and SSL_get_error(t.ssl, r) == SSL_ERROR_WANT_WRITE
    ERR_clear_error()
    return not t.notify_pending


# ---------------------------------------------------------------- handshake

cdef inline void _tls_conn_error(TlsConn* t) noexcept nogil:
    """A handshake that failed (or an error on the connection): connection_error, once."""
    if not t.failed:
        t.failed = 1
        stat_add(t.ctx.stats, t.w, SSL_CONNECTION_ERROR, 1)


cdef int _tls_handshake_done(TlsConn* t) noexcept nogil:
    """The handshake has just completed: what OpenSSL leaves to us (a client certificate
    required but not sent), then the stats. -1: the connection must close."""
    cdef TlsCtx* c = t.ctx
    cdef Worker* w = t.w
    cdef int v, i
    cdef uint16_t cid
    cdef int nid
    cdef bint no_cert = SSL_get0_peer_certificate(t.ssl) == NULL
    t.done = 1
    timer_cancel(w, &t.timer)
    if no_cert and c.require_cert:
        stat_add(c.stats, w, SSL_FAIL_VERIFY_NO_CERT, 1)
        _tls_conn_error(t)
        return -1
    stat_add(c.stats, w, SSL_HANDSHAKE, 1)
    if no_cert:
        stat_add(c.stats, w, SSL_NO_CERTIFICATE, 1)
    if SSL_session_reused(t.ssl):
        stat_add(c.stats, w, SSL_SESSION_REUSED, 1)
    v = SSL_version(t.ssl)
    if 0x0301 <= v <= 0x0304:
        stat_add(c.stats, w, SSL_VERSION_TLS10 + (v - 0x0301), 1)
    cid = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(t.ssl))
    for i in range(_ssl_ncipher_ids):
        if _ssl_cipher_ids[i] == cid:
            stat_add(c.stats, w, SSL_CIPHER_0 + i, 1)
            break
    nid = SSL_get_negotiated_group(t.ssl)
    i = -1
    if nid == NID_X25519:
        i = 0
    elif nid == NID_X9_62_prime256v1:
        i = 1
    elif nid == NID_secp384r1:
        i = 2
    elif nid == NID_secp521r1:
        i = 3
    elif nid == NID_X448:
        i = 4
    if i >= 0:
        stat_add(c.stats, w, SSL_CURVE_0 + i, 1)
    t.ktls_tx = BIO_get_ktls_send(SSL_get_wbio(t.ssl)) != 0
    t.ktls_rx = BIO_get_ktls_recv(SSL_get_rbio(t.ssl)) != 0
    return 0


cdef ssize_t _tls_result(TlsConn* t, int r, bint reading) noexcept nogil:
    """After an SSL call returned r <= 0: -1 with EAGAIN when OpenSSL wants the socket
    (the cross-want remembered), 0 at the peer's close_notify or EOF, else -1 with errno
    (ECONNRESET/EPIPE as the socket said, EPROTO for a TLS error)."""
    cdef int e = SSL_get_error(t.ssl, r)
    cdef int saved = errno
    if e == SSL_ERROR_WANT_READ:
        if not reading:
            t.write_wants_read = 1
        fp_set_errno(EAGAIN)
        return -1
    if e == SSL_ERROR_WANT_WRITE:
        if reading:
            t.read_wants_write = 1
        fp_set_errno(EAGAIN)
        return -1
    ERR_clear_error()
    if not t.done:
        _tls_conn_error(t)
    if e == SSL_ERROR_ZERO_RETURN or (e == SSL_ERROR_SYSCALL and saved == 0):
        t.eof = 1
        return 0
    if e == SSL_ERROR_SYSCALL and saved != EAGAIN and saved != EINTR:
        fp_set_errno(saved)
    else:
        fp_set_errno(EPROTO)
    t.failed = 1
    return -1


cdef int tls_handshake(Endp* ep) noexcept nogil:
    """Drive an explicit (client) handshake: 1 done, 0 waiting for the socket (the
    endpoint's readiness as OpenSSL wants it), -1 failed (counted)."""
    cdef TlsConn* t = <TlsConn*>ep.tls
    cdef int r
    if t.done:
        return 1
    ERR_clear_error()
    fp_set_errno(0)         # (_tls_result reads errno after SSL_ERROR_SYSCALL: not a stale one)
    r = SSL_do_handshake(t.ssl)
    if r == 1:
        return 1 if _tls_handshake_done(t) == 0 else -1
    if _tls_result(t, r, True) < 0 and errno == EAGAIN:
        t.read_wants_write = 0          # (a handshake waits on the socket, not on a caller)
        return 0
    return -1


cdef inline int _tls_check_done(TlsConn* t) noexcept nogil:
    if not t.done and SSL_is_init_finished(t.ssl):
        return _tls_handshake_done(t)
    return 0


# ---------------------------------------------------------------- reads and writes

cdef ssize_t tls_read(Endp* ep, TlsConn* t, Chain* c, size_t max_bytes, size_t* asked) noexcept nogil:
    """SSL_read into the tail of the chain, record after record, until it holds max_bytes
    more or OpenSSL wants the socket. *asked: max_bytes when stopped for the socket (so a
    short count says "drained"), the count itself when stopped at max_bytes or at EOF (the
    caller reads again: SSL may hold decrypted bytes, and the EOF is then returned)."""
    cdef size_t total = 0, room, k
    cdef Slice* fresh = NULL
    cdef SliceRef* tail
    cdef char* p
    cdef int r
    cdef ssize_t res
    if asked != NULL:
        asked[0] = max_bytes
    if t.eof:
        return 0
    if t.failed:
        fp_set_errno(EPROTO)
        return -1
    while total < max_bytes:
        room = chain_tail_room(c)
        if room >= 512:
            tail = chain_tail(c)
            p = tail.s.data + tail.s.fill
        else:
            if fresh == NULL:
                fresh = slice_new(SLICE_SIZE)
                if fresh == NULL:
                    if total:
                        break
                    fp_set_errno(ENOMEM)
                    return -1
            room = fresh.cap - fresh.fill
            p = fresh.data + fresh.fill
        k = max_bytes - total
        if k > room:
            k = room
        if k > 0x40000000:
            k = 0x40000000
        ERR_clear_error()
        fp_set_errno(0)
        r = SSL_read(t.ssl, p, <int>k)
        if r > 0:
            if fresh != NULL and p == fresh.data + fresh.fill:
                fresh.fill += <size_t>r
                if chain_append_slice(c, fresh, 0, <size_t>r) < 0:
                    fp_set_errno(ENOMEM)
                    return -1
                fresh = NULL
            else:
                tail = chain_tail(c)
                tail.s.fill += <size_t>r
                tail.len += <size_t>r
                c.length += <size_t>r
            total += <size_t>r
            if _tls_check_done(t) < 0:
                fp_set_errno(EPROTO)
                return -1
            continue
        if _tls_check_done(t) < 0:
            if fresh != NULL:
                slice_decref(fresh)
            fp_set_errno(EPROTO)
            return -1
        res = _tls_result(t, r, True)
        if fresh != NULL:
            slice_decref(fresh)
            fresh = NULL
        if res == 0:                    # EOF: the bytes first, then 0 from the next call
            if total and asked != NULL:
                asked[0] = total
            return <ssize_t>total if total else 0
        if errno == EAGAIN:
            if total:
                return <ssize_t>total   # < asked: drained
            return -1
        return -1
    if fresh != NULL:
        slice_decref(fresh)
    if asked != NULL:
        asked[0] = total                # stopped at max_bytes: not drained
    return <ssize_t>total


cdef ssize_t tls_write(Endp* ep, TlsConn* t, Chain* c, size_t* offered) noexcept nogil:
    """SSL_write the front of the chain and drain what went. Small slices are coalesced
    into one record of up to TLS_RECORD bytes (a response head and a small body: one record,
    one send). A write OpenSSL wants retried goes again with the same bytes (the chain
    still holds them; *wpending says how many)."""
    cdef size_t total = 0, k, n
    cdef SliceRef* r
    cdef const char* p
    cdef char* scratch
    cdef int i, rc
    cdef ssize_t res
    if offered != NULL:
        offered[0] = c.length
    if t.failed:
        fp_set_errno(EPROTO)
        return -1
    while c.length:
        r = &c.refs[c.head]
        if t.ktls_tx:
            # kTLS: OpenSSL hands the kernel our pointer without a copy and a retry re-reads
            # it, so the bytes must stay where they were: the head slice, never the scratch.
            n = <size_t>t.wpending if t.wpending and <size_t>t.wpending <= r.len else r.len
            if n > 0x40000000:
                n = 0x40000000
        elif t.wpending:
            n = <size_t>t.wpending
            if n > c.length:            # the chain lost bytes since (OpenSSL refuses the retry)
                n = c.length
        elif r.len >= TLS_RECORD or c.count == 1:
            n = r.len if r.len < 0x40000000 else 0x40000000
        else:
            n = c.length if c.length < TLS_RECORD else TLS_RECORD
        if n <= r.len:
            p = r.s.data + r.off
        else:
            scratch = tls_worker(t.w).scratch
            k = 0
            i = 0
            while k < n:
                r = &c.refs[c.head + i]
                memcpy(scratch + k, r.s.data + r.off, r.len if r.len < n - k else n - k)
                k += r.len if r.len < n - k else n - k
                i += 1
            p = scratch
        ERR_clear_error()
        fp_set_errno(0)
        rc = SSL_write(t.ssl, p, <int>n)
        if rc > 0:
            t.wpending = 0
            chain_drain(c, <size_t>rc)
            total += <size_t>rc
            if _tls_check_done(t) < 0:
                fp_set_errno(EPROTO)
                return -1
            continue
        if _tls_check_done(t) < 0:
            fp_set_errno(EPROTO)
            return -1
        res = _tls_result(t, rc, False)
        if res < 0 and errno == EAGAIN:
            t.wpending = <int>n
            if total:
                return <ssize_t>total   # < offered: the socket is full
            return -1
        if res == 0:
            fp_set_errno(EPIPE)               # the peer closed: nothing more can be sent
        return -1
    return <ssize_t>total


# ---------------------------------------------------------------- worker state

cdef int _tls_worker_init(Worker* w) noexcept nogil:
    w.state[_TLS_SLOT] = calloc(1, sizeof(TlsWorker))
    return 0 if w.state[_TLS_SLOT] != NULL else -1


cdef void _tls_worker_fini(Worker* w) noexcept nogil:
    free(w.state[_TLS_SLOT])
    w.state[_TLS_SLOT] = NULL


def _init_cipher_ids():
    global _ssl_ncipher_ids
    from fastproxy import stats_table
    ids = stats_table.SSL_CIPHER_IDS
    if len(ids) > 64 or len(ids) != len(stats_table.SSL_CIPHERS):
        raise ImportError("stats_table.SSL_CIPHER_IDS: one id per cipher row, at most 64")
    for i, v in enumerate(ids):
        _ssl_cipher_ids[i] = v
    _ssl_ncipher_ids = len(ids)


_init_cipher_ids()
_TLS_SLOT = worker_subsystem_add(_tls_worker_init, _tls_worker_fini, NULL)
