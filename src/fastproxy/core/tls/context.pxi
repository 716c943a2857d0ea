# TLS contexts: building an SSL_CTX from a spec dict (API14.md, section 1) on the main
# thread with the GIL, the callbacks OpenSSL calls on the workers during handshakes (no
# GIL: peer verification, SNI certificate choice, ALPN, session tickets with given keys,
# client sessions to keep), and the Python handle (TlsContextHandle) whose update() makes
# every worker's new handshakes use a rebuilt context (secret rotation) while existing
# connections keep theirs. Structs: core/tls/decls.pxi; connections: core/tls/transport.pxi.

import os as _os
import socket as _socket
from types import SimpleNamespace as _NS

cdef struct TlsSan:
    int type                        # GEN_DNS, GEN_URI, GEN_EMAIL, GEN_IPADD
    RouteStringMatch m

cdef struct _TlsSanOwned:           # the matchers' block: an NOwned first (_nf_destroy_config)
    NOwned o

cdef struct TlsSwap:                # a worker message: the provider's new context
    TlsProvider* p
    TlsCtx* ctx

_SAN_TYPES = {"DNS": GEN_DNS, "URI": GEN_URI, "EMAIL": GEN_EMAIL, "IP_ADDRESS": GEN_IPADD}
_MATCH_KEYS = ("exact", "prefix", "suffix", "contains", "safe_regex")
_TLS_VERSIONS = {0x0301: TLS1_VERSION, 0x0302: TLS1_1_VERSION, 0x0303: TLS1_2_VERSION,
                 0x0304: TLS1_3_VERSION}
cdef char* _DIGEST_KEY = b"digest"
cdef char* _SHA256_NAME = b"SHA256"


# ---------------------------------------------------------------- kTLS probe

_ktls = None

def ktls_available():
    """Whether the kernel has the TLS upper-layer protocol (the `tls` module): set once, by
    trying TCP_ULP "tls" on a connected loopback socket (the module may be loaded on
    demand). When it has, contexts enable OpenSSL's KTLS option and a direction whose keys
    the kernel took may splice."""
    global _ktls
    if _ktls is None:
        _ktls = _probe_ktls()
    return _ktls


def _probe_ktls():
    cdef int TCP_ULP = 31
    try:
        lst = _socket.socket()
        try:
            lst.bind(("127.0.0.1", 0))
            lst.listen(1)
            c = _socket.create_connection(lst.getsockname())
            a, _ = lst.accept()
            try:
                c.setsockopt(_socket.IPPROTO_TCP, TCP_ULP, b"tls")
                return True
            except OSError:
                return False
            finally:
                a.close()
                c.close()
        finally:
            lst.close()
    except OSError:
        return False


# ---------------------------------------------------------------- freeing

cdef void tls_ctx_decref(TlsCtx* c) noexcept nogil:
    cdef int i, j
    if c == NULL or fp_atomic_add_int(&c.refcnt, -1) != 0:
        return
    if c.ctx != NULL:
        SSL_CTX_free(c.ctx)
    for i in range(c.ncerts):
        X509_free(c.certs[i].leaf)
        EVP_PKEY_free(c.certs[i].key)
        for j in range(c.certs[i].nchain):
            X509_free(c.certs[i].chain[j])
        free(c.certs[i].chain)
    free(c.certs)
    if c.san_owned != NULL:
        _nf_destroy_config(c.san_owned)
    free(c.cert_hashes)
    free(c.spki_hashes)
    free(c.alpn)
    free(c.ticket_keys)
    free(c.sni)
    statblock_decref(c.stats)
    free(c)


cdef void _tls_sessions_clear(TlsWorkerCtx* slot) noexcept nogil:
    cdef int i
    for i in range(slot.nsessions):
        SSL_SESSION_free(slot.sessions[i].sess)
        slot.sessions[i].sess = NULL
    slot.nsessions = 0
    slot.next_session = 0


cdef void tls_provider_decref(TlsProvider* p) noexcept nogil:
    cdef int i
    if p == NULL or fp_atomic_add_int(&p.refcnt, -1) != 0:
        return
    for i in range(p.nworkers):
        _tls_sessions_clear(&p.per_worker[i])
        tls_ctx_decref(p.per_worker[i].ctx)
    free(p.per_worker)
    free(p)


cdef void _msg_tls_swap(Worker* w, void* arg) noexcept nogil:
    """The worker's new handshakes use the new context; its old reference goes (the
    connections made with it hold their own), and so do the client sessions made with it."""
    cdef TlsSwap* m = <TlsSwap*>arg
    cdef TlsWorkerCtx* slot = &m.p.per_worker[w.index]
    cdef TlsCtx* old = slot.ctx
    slot.ctx = m.ctx                    # the message's reference moves into the slot
    _tls_sessions_clear(slot)
    tls_ctx_decref(old)
    tls_provider_decref(m.p)
    free(m)


# ---------------------------------------------------------------- callbacks (workers, no GIL)

cdef inline TlsConn* _tls_conn_of(SSL* ssl) noexcept nogil:
    return <TlsConn*>SSL_get_ex_data(ssl, 0)


cdef bint _tls_san_ok(TlsCtx* c, TlsConn* t, X509* cert) noexcept nogil:
    """The peer's subjectAltNames pass the matchers (any one SAN of a matcher's type
    matching any one matcher), and the verified host name when auto_san_validation."""
    cdef GENERAL_NAMES* names
    cdef GENERAL_NAME* gn
    cdef const unsigned char* d
    cdef int i, j, n, k
    cdef char ip[64]
    cdef bint ok = False
    if not c.server and c.auto_san_validation and t.host[0]:
        if X509_check_host(cert, t.host, strlen(t.host), 0, NULL) != 1:
            return False
        if c.nsans == 0:
            return True
    if c.nsans == 0:
        return True
    names = <GENERAL_NAMES*>X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL)
    if names == NULL:
        return False
    n = sk_GENERAL_NAME_num(names)
    for i in range(n):
        gn = sk_GENERAL_NAME_value(names, i)
        if gn.type == GEN_IPADD:
            d = ASN1_STRING_get0_data(gn.d.iPAddress)
            k = ASN1_STRING_length(gn.d.iPAddress)
            if k == 4:
                inet_ntop(AF_INET, d, ip, sizeof(ip))
            elif k == 16:
                inet_ntop(AF_INET6, d, ip, sizeof(ip))
            else:
                continue
            d = <const unsigned char*>ip
            k = <int>strlen(ip)
        elif gn.type == GEN_DNS or gn.type == GEN_URI or gn.type == GEN_EMAIL:
            d = ASN1_STRING_get0_data(gn.d.ia5)
            k = ASN1_STRING_length(gn.d.ia5)
        else:
            continue
        for j in range(c.nsans):
            if c.sans[j].type == gn.type and _rt_string_match(&c.sans[j].m, <const char*>d, <size_t>k,
                                                              <unsigned int>t.w.index):
                ok = True
                break
        if ok:
            break
    GENERAL_NAMES_free(names)
    return ok


cdef bint _tls_hash_ok(TlsCtx* c, X509* cert) noexcept nogil:
    """verify_certificate_hash / verify_certificate_spki: either list matching passes."""
    cdef unsigned char md[EVP_MAX_MD_SIZE]
    cdef unsigned int mdlen = 0
    cdef int i
    if c.ncert_hashes == 0 and c.nspki_hashes == 0:
        return True
    if c.ncert_hashes and X509_digest(cert, EVP_sha256(), md, &mdlen) == 1 and mdlen == 32:
        for i in range(c.ncert_hashes):
            if memcmp(md, c.cert_hashes + 32 * i, 32) == 0:
                return True
    if c.nspki_hashes and X509_pubkey_digest(cert, EVP_sha256(), md, &mdlen) == 1 and mdlen == 32:
        for i in range(c.nspki_hashes):
            if memcmp(md, c.spki_hashes + 32 * i, 32) == 0:
                return True
    return False


cdef int _tls_verify_cb(X509_STORE_CTX* sctx, void* arg) noexcept nogil:
    """Verify the peer's certificate (instead of OpenSSL's X509_verify_cert alone): the
    chain against trusted_ca, then the SAN matchers (and auto_san_validation's host), then
    the pinned hashes; each failure counted as Envoy counts it (fail_verify_*)."""
    cdef TlsCtx* c = <TlsCtx*>arg
    cdef SSL* ssl = <SSL*>X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx())
    cdef TlsConn* t = _tls_conn_of(ssl) if ssl != NULL else NULL
    cdef X509* cert = X509_STORE_CTX_get0_cert(sctx)
    if t == NULL or cert == NULL:
        return 0
    if c.has_ca:
        if c.allow_expired:
            X509_STORE_CTX_set_flags(sctx, X509_V_FLAG_NO_CHECK_TIME)
        if X509_verify_cert(sctx) != 1:
            stat_add(c.stats, t.w, SSL_FAIL_VERIFY_ERROR, 1)
            if not c.accept_untrusted:
                return 0
            # ACCEPT_UNTRUSTED as Envoy's DefaultCertValidator has it: the failure is
            # counted and the certificate accepted as it is, the SAN and hash checks too.
            X509_STORE_CTX_set_error(sctx, X509_V_OK)
            return 1
        X509_STORE_CTX_set_error(sctx, X509_V_OK)
    if not _tls_san_ok(c, t, cert):
        stat_add(c.stats, t.w, SSL_FAIL_VERIFY_SAN, 1)
        X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION)
        return 0
    if not _tls_hash_ok(c, cert):
        stat_add(c.stats, t.w, SSL_FAIL_VERIFY_CERT_HASH, 1)
        X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION)
        return 0
    return 1


cdef int _tls_cert_cb(SSL* ssl, void* arg) noexcept nogil:
    """Server, several certificates of one key type: for each key type, the first
    certificate whose names cover the client's SNI (else the first of that type). OpenSSL
    then picks among the types by what the client supports."""
    cdef TlsCtx* c = <TlsCtx*>arg
    cdef const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    cdef int i, j, pick, k
    cdef bint seen
    for i in range(c.ncerts):
        seen = False
        for j in range(i):
            if c.certs[j].key_type == c.certs[i].key_type:
                seen = True
                break
        if seen:
            continue                    # not the first of its type
        pick = i
        if name != NULL:
            for j in range(i, c.ncerts):
                if c.certs[j].key_type == c.certs[i].key_type and \
                        X509_check_host(c.certs[j].leaf, name, 0, 0, NULL) == 1:
                    pick = j
                    break
        if SSL_use_certificate(ssl, c.certs[pick].leaf) != 1 or \
                SSL_use_PrivateKey(ssl, c.certs[pick].key) != 1:
            return 0
        SSL_clear_chain_certs(ssl)
        for k in range(c.certs[pick].nchain):
            SSL_add1_chain_cert(ssl, c.certs[pick].chain[k])
    return 1


cdef int _tls_alpn_cb(SSL* ssl, const unsigned char** out, unsigned char* outlen,
                      const unsigned char* inp, unsigned int inlen, void* arg) noexcept nogil:
    """The first of the server's protocols the client offers (server preference); none in
    common: no ALPN (the handshake goes on, as Envoy's)."""
    cdef TlsCtx* c = <TlsCtx*>arg
    cdef unsigned int i = 0, j
    cdef unsigned int n, m
    while i < c.alpn_len:
        n = c.alpn[i]
        j = 0
        while j < inlen:
            m = inp[j]
            if m == n and j + 1 + m <= inlen and memcmp(inp + j + 1, c.alpn + i + 1, n) == 0:
                out[0] = inp + j + 1
                outlen[0] = <unsigned char>m
                return SSL_TLSEXT_ERR_OK
            j += 1 + m
        i += 1 + n
    return SSL_TLSEXT_ERR_NOACK


cdef int _tls_ticket_cb(SSL* ssl, unsigned char* key_name, unsigned char* iv,
                        EVP_CIPHER_CTX* cctx, EVP_MAC_CTX* hctx, int enc) noexcept nogil:
    """Session tickets with the configured keys (Envoy's 80-byte format: name, HMAC
    secret, AES key): the first key encrypts, any decrypts (2: decrypted with an older
    key, so OpenSSL issues a fresh ticket)."""
    cdef TlsConn* t = _tls_conn_of(ssl)
    cdef TlsCtx* c
    cdef TlsTicketKey* k
    cdef OSSL_PARAM params[2]
    cdef int i
    if t == NULL:
        return -1
    c = t.ctx
    params[0] = OSSL_PARAM_construct_utf8_string(_DIGEST_KEY, _SHA256_NAME, 0)
    params[1] = OSSL_PARAM_construct_end()
    if enc:
        k = &c.ticket_keys[0]
        memcpy(key_name, k.name, 16)
        if RAND_bytes(iv, 16) != 1:
            return -1
        if EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1 or \
                EVP_MAC_init(hctx, k.hmac, 32, params) != 1:
            return -1
        return 1
    for i in range(c.nticket_keys):
        k = &c.ticket_keys[i]
        if memcmp(key_name, k.name, 16) == 0:
            if EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1 or \
                    EVP_MAC_init(hctx, k.hmac, 32, params) != 1:
                return -1
            return 1 if i == 0 else 2
    return 0                            # unknown key: a full handshake


cdef int _tls_new_session_cb(SSL* ssl, SSL_SESSION* sess) noexcept nogil:
    """Client: keep the session the server just gave (TLS 1.3 sends it after the
    handshake) in the worker's cache of its provider, up to max_session_keys per context,
    the oldest replaced. 1: the cache took the reference."""
    cdef TlsConn* t = _tls_conn_of(ssl)
    cdef TlsWorkerCtx* slot
    cdef TlsSession* e
    cdef int n, i
    if t == NULL or t.provider == NULL or t.ctx.max_session_keys <= 0:
        return 0
    slot = &t.provider.per_worker[t.w.index]
    if slot.ctx != t.ctx:
        return 0                        # made with a context rotated out since
    n = t.ctx.max_session_keys
    # One per server name: a newer one replaces the one kept for the same name.
    for i in range(slot.nsessions):
        if strcmp(slot.sessions[i].sni, t.host) == 0:
            SSL_SESSION_free(slot.sessions[i].sess)
            slot.sessions[i].sess = sess
            return 1
    if slot.nsessions < n:
        e = &slot.sessions[slot.nsessions]
        slot.nsessions += 1
    else:
        e = &slot.sessions[slot.next_session % n]
        slot.next_session = (slot.next_session + 1) % n
        SSL_SESSION_free(e.sess)
    e.sess = sess
    memcpy(e.sni, t.host, sizeof(e.sni))
    return 1


# ---------------------------------------------------------------- building (main thread)

cdef str _ssl_error(str what):
    cdef unsigned long e = ERR_get_error()
    cdef char buf[256]
    cdef unsigned long last = e
    while e != 0:
        last = e
        e = ERR_get_error()
    ERR_clear_error()
    if last == 0:
        return what
    ERR_error_string_n(last, buf, sizeof(buf))
    return f"{what}: {(<bytes>buf).decode('utf-8', 'replace')}"


cdef list _pem_certs(bytes pem, str key):
    """Every certificate of a PEM bundle (X509*, owned by the caller: each freed by it)."""
    cdef BIO* bio = BIO_new_mem_buf(<const char*>pem, len(pem))
    cdef X509* x
    cdef list out = []
    if bio == NULL:
        raise MemoryError()
    try:
        while True:
            x = PEM_read_bio_X509(bio, NULL, NULL, NULL)
            if x == NULL:
                break
            out.append(<size_t>x)
    finally:
        BIO_free(bio)
        ERR_clear_error()           # the end of the bundle reads as an error
    if not out:
        raise ValueError(f"{key}: no PEM certificate found")
    return out


cdef _need_bytes(spec, str key, bint optional=True):
    v = spec.get(key)
    if v is None:
        if optional:
            return None
        raise ValueError(f"{key}: required")
    if isinstance(v, str):
        v = v.encode()
    if not isinstance(v, (bytes, bytearray)):
        raise ValueError(f"{key}: expected bytes, got {type(v).__name__}")
    return bytes(v)


cdef _load_certificate(TlsCtx* c, int i, dict cert):
    cdef str where = f"certificates[{i}]"
    cdef bytes chain_pem = _need_bytes(cert, "chain", False)
    cdef bytes key_pem = _need_bytes(cert, "key", False)
    pw = _need_bytes(cert, "password")
    cdef list xs
    cdef BIO* bio
    cdef EVP_PKEY* key
    cdef TlsCert* tc = &c.certs[i]
    cdef int j
    cdef bytes pwb
    try:
        xs = _pem_certs(chain_pem, where + ".chain")
    except ValueError as e:
        raise ValueError(str(e)) from None
    tc.leaf = <X509*><size_t>xs[0]
    tc.nchain = len(xs) - 1
    if tc.nchain:
        tc.chain = <X509**>calloc(tc.nchain, sizeof(X509*))
        if tc.chain == NULL:
            for x in xs[1:]:
                X509_free(<X509*><size_t>x)
            tc.nchain = 0
            raise MemoryError()
        for j in range(tc.nchain):
            tc.chain[j] = <X509*><size_t>xs[j + 1]
    bio = BIO_new_mem_buf(<const char*>key_pem, len(key_pem))
    if bio == NULL:
        raise MemoryError()
    if pw is not None and b"\0" in pw:
        BIO_free(bio)
        raise ValueError(f"{where}.password: must not contain NUL")
    pwb = pw if pw is not None else b""     # b"": never a terminal prompt
    key = PEM_read_bio_PrivateKey(bio, NULL, NULL, <void*><const char*>pwb)
    BIO_free(bio)
    if key == NULL:
        raise ValueError(_ssl_error(f"{where}.key: cannot read the private key"))
    tc.key = key
    if X509_check_private_key(tc.leaf, key) != 1:
        ERR_clear_error()
        raise ValueError(f"{where}: key does not match certificate")
    tc.key_type = EVP_PKEY_get_base_id(key)


cdef bytes _sid_context(spec):
    """SHA-256 over the server's certificates (not their keys) and everything that decides
    whether a client certificate is accepted: the session ID context, so OpenSSL resumes a
    session (ID or ticket) only on a context with the same identity and validation."""
    import hashlib
    h = hashlib.sha256(b"fastproxy-sid-1")
    def feed(v):
        b = v if isinstance(v, (bytes, bytearray)) else repr(v).encode()
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    for cert in spec.get("certificates") or []:
        feed(cert.get("chain") or b"")
    for k in ("trusted_ca", "crl", "san_matchers", "cert_hashes", "spki_hashes",
              "trust_chain_verification", "allow_expired_certificate",
              "require_client_certificate"):
        feed(k)
        feed(spec.get(k))
    return h.digest()


cdef _hashes(spec, str key, unsigned char** out, int* n):
    v = spec.get(key) or []
    cdef bytes b = b""
    for i, h in enumerate(v):
        if not isinstance(h, (bytes, bytearray)) or len(h) != 32:
            raise ValueError(f"{key}[{i}]: expected 32 bytes (a SHA-256 digest)")
        b += bytes(h)
    n[0] = len(v)
    if n[0]:
        out[0] = <unsigned char*>malloc(len(b))
        if out[0] == NULL:
            raise MemoryError()
        memcpy(out[0], <const char*>b, len(b))


cdef _build_sans(TlsCtx* c, list matchers, int nworkers):
    cdef _NfBuild b
    cdef int i
    if not matchers:
        return
    b = _nf_new(sizeof(_TlsSanOwned), nworkers)
    c.san_owned = <void*>b.o
    c.sans = <TlsSan*>b.alloc(len(matchers) * sizeof(TlsSan))
    for i, m in enumerate(matchers):
        path = f"san_matchers[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{path}: expected a dict")
        t = _SAN_TYPES.get(m.get("type"))
        if t is None:
            raise ValueError(f"{path}.type: expected one of {', '.join(_SAN_TYPES)}, got {m.get('type')!r}")
        md = m.get("match")
        if not isinstance(md, dict):
            raise ValueError(f"{path}.match: expected a dict")
        kinds = [k for k in _MATCH_KEYS if k in md]
        if len(kinds) != 1:
            raise ValueError(f"{path}.match: exactly one of {', '.join(_MATCH_KEYS)}")
        c.sans[i].type = t
        try:
            b.string_match(&c.sans[i].m, _NS(kind=kinds[0], value=md[kinds[0]],
                                             ignore_case=bool(md.get("ignore_case", False))),
                           path + ".match")
        except ConfigError as e:
            raise ValueError(str(e)) from None
        c.nsans = i + 1


cdef bytes _alpn_wire(list protos, str key):
    cdef bytes out = b""
    for i, p in enumerate(protos):
        if isinstance(p, str):
            p = p.encode()
        if not isinstance(p, (bytes, bytearray)) or not 0 < len(p) < 256:
            raise ValueError(f"{key}[{i}]: expected 1 to 255 bytes")
        out += bytes([len(p)]) + bytes(p)
    return out


cdef int _tls_version(spec, str key, int default) except -1:
    v = spec.get(key)
    if v is None:
        return default
    r = _TLS_VERSIONS.get(v)
    if r is None:
        raise ValueError(f"{key}: expected one of 0x0301..0x0304, got {v!r}")
    return r


cdef TlsCtx* _tls_ctx_build(dict spec, bint server, StatBlockHandle stats, int nworkers) except NULL:
    """Build a TlsCtx from a spec (see API14.md); raises ValueError naming the key."""
    cdef TlsCtx* c = <TlsCtx*>calloc(1, sizeof(TlsCtx))
    cdef SSL_CTX* ctx
    cdef X509_STORE* store
    cdef bytes b
    cdef int i, j, vmin, vmax
    cdef uint64_t opts
    cdef bytes kb
    cdef bint have_types_twice = False
    if c == NULL:
        raise MemoryError()
    c.refcnt = 1
    c.server = server
    c.stats = stats.b
    fp_atomic_add_int(&stats.b.refcnt, 1)
    try:
        known = {"certificates", "min_version", "max_version", "cipher_suites", "ecdh_curves",
                 "signature_algorithms", "alpn", "trusted_ca", "crl", "san_matchers",
                 "cert_hashes", "spki_hashes", "trust_chain_verification",
                 "allow_expired_certificate", "require_client_certificate",
                 "session_ticket_keys", "disable_stateless_session_resumption",
                 "disable_stateful_session_resumption", "session_timeout",
                 "sni", "auto_sni", "auto_san_validation", "max_session_keys"}
        for k in spec:
            if k not in known:
                raise ValueError(f"{k}: unknown key")
        ctx = SSL_CTX_new(TLS_server_method() if server else TLS_client_method())
        if ctx == NULL:
            raise MemoryError(_ssl_error("SSL_CTX_new"))
        c.ctx = ctx
        SSL_CTX_set_ex_data(ctx, 0, c)
        opts = SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION
        if ktls_available():
            opts |= SSL_OP_ENABLE_KTLS
        if server:
            # The server's order of cipher_suites decides, as in Envoy unless its
            # prefer_client_ciphers (refused by the loader: only false is built).
            opts |= SSL_OP_CIPHER_SERVER_PREFERENCE
        SSL_CTX_set_options(ctx, opts)
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        if server:
            # An idle keep-alive connection gives its read and write buffers back (tens of
            # KiB each with read-ahead). Measured on keep-alive TLS (wrk -c50, one worker):
            # no measurable CPU per request (13.91 vs 13.93 us), lower peak RSS.
            SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS)
        if not ktls_available():
            # One read() takes a record's header and body (and the records behind it) in
            # one go. (kTLS receive needs OpenSSL to read record by record: not with it.)
            SSL_CTX_set_read_ahead(ctx, 1)
            SSL_CTX_set_default_read_buffer_len(ctx, 32768)
        vmin = _tls_version(spec, "min_version", TLS1_2_VERSION)
        vmax = _tls_version(spec, "max_version", TLS1_3_VERSION)
        if vmin > vmax:
            raise ValueError("min_version: greater than max_version")
        SSL_CTX_set_min_proto_version(ctx, vmin)
        SSL_CTX_set_max_proto_version(ctx, vmax)
        if vmin < TLS1_2_VERSION:
            # TLS 1.0/1.1 need SHA-1 signatures, which OpenSSL 3's default level refuses.
            SSL_CTX_set_cipher_list(ctx, b"DEFAULT:@SECLEVEL=0")
        cs = spec.get("cipher_suites")
        if cs:
            b = ":".join(cs).encode()
            if SSL_CTX_set_cipher_list(ctx, b) != 1:
                raise ValueError(_ssl_error(f"cipher_suites: none of {list(cs)!r} is known"))
        curves = spec.get("ecdh_curves")
        if curves:
            b = ":".join(curves).encode()
            if SSL_CTX_set1_groups_list(ctx, b) != 1:
                raise ValueError(_ssl_error(f"ecdh_curves: {list(curves)!r}"))
        sigalgs = spec.get("signature_algorithms")
        if sigalgs:
            b = ":".join(sigalgs).encode()
            if SSL_CTX_set1_sigalgs_list(ctx, b) != 1:
                raise ValueError(_ssl_error(f"signature_algorithms: {list(sigalgs)!r}"))
        # certificates
        certs = spec.get("certificates") or []
        if not isinstance(certs, (list, tuple)):
            raise ValueError("certificates: expected a list")
        if server and not certs:
            raise ValueError("certificates: a server context needs at least one")
        if not server and len(certs) > 1:
            raise ValueError("certificates: a client context has at most one")
        if certs:
            c.certs = <TlsCert*>calloc(len(certs), sizeof(TlsCert))
            if c.certs == NULL:
                raise MemoryError()
        types = []
        for i, cert in enumerate(certs):
            if not isinstance(cert, dict):
                raise ValueError(f"certificates[{i}]: expected a dict")
            c.ncerts = i + 1
            _load_certificate(c, i, cert)
            if c.certs[i].key_type in types:
                have_types_twice = True
            else:
                types.append(c.certs[i].key_type)
                # The first of each key type is the context's own (OpenSSL keeps one per type).
                if SSL_CTX_use_certificate(ctx, c.certs[i].leaf) != 1 or \
                        SSL_CTX_use_PrivateKey(ctx, c.certs[i].key) != 1:
                    raise ValueError(_ssl_error(f"certificates[{i}]"))
                for j in range(c.certs[i].nchain):
                    if SSL_CTX_add1_chain_cert(ctx, c.certs[i].chain[j]) != 1:
                        raise ValueError(_ssl_error(f"certificates[{i}].chain"))
        if server and have_types_twice:
            c.sni_select = 1
            SSL_CTX_set_cert_cb(ctx, _tls_cert_cb, c)
        # validation
        ca = _need_bytes(spec, "trusted_ca")
        store = SSL_CTX_get_cert_store(ctx)
        if ca:
            for x in _pem_certs(ca, "trusted_ca"):
                X509_STORE_add_cert(store, <X509*><size_t>x)
                X509_free(<X509*><size_t>x)
            c.has_ca = 1
            # As Envoy: an intermediate listed in trusted_ca is a trust anchor of its own.
            X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN)
        crl = _need_bytes(spec, "crl")
        if crl:
            _load_crls(store, crl)
            X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL)
        tcv = spec.get("trust_chain_verification") or "VERIFY_TRUST_CHAIN"
        if tcv not in ("VERIFY_TRUST_CHAIN", "ACCEPT_UNTRUSTED"):
            raise ValueError(f"trust_chain_verification: expected VERIFY_TRUST_CHAIN or ACCEPT_UNTRUSTED, got {tcv!r}")
        c.accept_untrusted = tcv == "ACCEPT_UNTRUSTED"
        c.allow_expired = bool(spec.get("allow_expired_certificate"))
        _build_sans(c, list(spec.get("san_matchers") or []), nworkers)
        _hashes(spec, "cert_hashes", &c.cert_hashes, &c.ncert_hashes)
        _hashes(spec, "spki_hashes", &c.spki_hashes, &c.nspki_hashes)
        c.require_cert = bool(spec.get("require_client_certificate")) and server
        c.auto_san_validation = bool(spec.get("auto_san_validation")) and not server
        if (c.nsans or c.auto_san_validation) and not c.has_ca:
            # A SAN check on a chain nobody verified proves nothing: anyone can issue a
            # certificate with any SAN (Envoy refuses this configuration the same way).
            raise ValueError("san_matchers/auto_san_validation: SAN-based verification of peer "
                             "certificates without trusted_ca is insecure and not allowed")
        c.verify = c.has_ca or c.nsans or c.ncert_hashes or c.nspki_hashes or c.auto_san_validation
        if c.verify or c.require_cert:
            # The client's certificate is asked for; whether none is acceptable is decided
            # when the handshake completes (fail_verify_no_cert), as Envoy counts it.
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL)
            SSL_CTX_set_cert_verify_callback(ctx, _tls_verify_cb, c)
        # ALPN
        alpn = _alpn_wire(list(spec.get("alpn") or []), "alpn")
        if alpn:
            c.alpn = <unsigned char*>malloc(len(alpn))
            if c.alpn == NULL:
                raise MemoryError()
            memcpy(c.alpn, <const char*>alpn, len(alpn))
            c.alpn_len = len(alpn)
            if server:
                SSL_CTX_set_alpn_select_cb(ctx, _tls_alpn_cb, c)
            elif SSL_CTX_set_alpn_protos(ctx, c.alpn, c.alpn_len) != 0:
                raise ValueError(_ssl_error("alpn"))
        # sessions
        timeout = spec.get("session_timeout")
        if timeout is not None:
            if not timeout >= 0:
                raise ValueError("session_timeout: must be >= 0")
            SSL_CTX_set_timeout(ctx, <long>timeout)
        if server:
            # A session resumes only on a context of the same identity and peer validation:
            # with ticket keys shared between listeners, a session made where one CA was
            # trusted must not skip the verification of a listener that trusts another.
            sid = _sid_context(spec)
            SSL_CTX_set_session_id_context(ctx, <const unsigned char*><const char*>sid, len(sid))
            no_stateless = bool(spec.get("disable_stateless_session_resumption"))
            no_stateful = bool(spec.get("disable_stateful_session_resumption"))
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF if no_stateful else SSL_SESS_CACHE_SERVER)
            if no_stateless:
                SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET)
            if no_stateless and no_stateful:
                SSL_CTX_set_num_tickets(ctx, 0)
            keys = spec.get("session_ticket_keys")
            if keys and not no_stateless:
                c.ticket_keys = <TlsTicketKey*>calloc(len(keys), sizeof(TlsTicketKey))
                if c.ticket_keys == NULL:
                    raise MemoryError()
                for i, k in enumerate(keys):
                    if not isinstance(k, (bytes, bytearray)) or len(k) != 80:
                        raise ValueError(f"session_ticket_keys[{i}]: expected 80 bytes")
                    kb = bytes(k)
                    memcpy(&c.ticket_keys[i], <const char*>kb, 80)
                    c.nticket_keys = i + 1
                SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, _tls_ticket_cb)
        else:
            sni = spec.get("sni")
            if sni:
                b = sni.encode("idna") if isinstance(sni, str) else bytes(sni)
                if len(b) > 255 or b"\0" in b:
                    raise ValueError("sni: not a host name")
                c.sni = <char*>calloc(len(b) + 1, 1)
                if c.sni == NULL:
                    raise MemoryError()
                memcpy(c.sni, <const char*>b, len(b))
            c.auto_sni = bool(spec.get("auto_sni"))
            msk = spec.get("max_session_keys", 1)
            if not isinstance(msk, int) or msk < 0:
                raise ValueError("max_session_keys: expected an integer >= 0")
            c.max_session_keys = min(msk, TLS_SESSIONS_MAX)
            if c.max_session_keys:
                SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE)
                SSL_CTX_sess_set_new_cb(ctx, _tls_new_session_cb)
            else:
                SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)
                SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET)
    except BaseException:
        tls_ctx_decref(c)
        raise
    return c


cdef _load_crls(X509_STORE* store, bytes pem):
    cdef BIO* bio = BIO_new_mem_buf(<const char*>pem, len(pem))
    cdef X509_CRL* x
    cdef int n = 0
    if bio == NULL:
        raise MemoryError()
    try:
        while True:
            x = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL)
            if x == NULL:
                break
            X509_STORE_add_crl(store, x)
            X509_CRL_free(x)
            n += 1
    finally:
        BIO_free(bio)
        ERR_clear_error()
    if n == 0:
        raise ValueError("crl: no PEM CRL found")


cdef class TlsContextHandle:
    """A TLS context for listeners (server) or clusters (client): per worker, the SSL_CTX
    its new handshakes use. update() rotates it without a restart."""
    cdef TlsProvider* p
    cdef Engine engine
    cdef readonly str name
    cdef readonly bint server
    cdef readonly StatBlockHandle stats

    def __dealloc__(self):
        tls_provider_decref(self.p)

    def update(self, dict spec):
        """Rebuild from spec; every worker's new handshakes use it from its next loop turn,
        connections already made keep theirs. Raises ValueError like make_tls_context,
        and then the context in force stays."""
        cdef TlsCtx* c = _tls_ctx_build(spec, self.server, self.stats, self.engine.nworkers)
        cdef TlsSwap* m
        cdef int i
        try:
            for i in range(self.p.nworkers):
                m = <TlsSwap*>malloc(sizeof(TlsSwap))
                if m == NULL:
                    raise MemoryError()
                fp_atomic_add_int(&c.refcnt, 1)
                fp_atomic_add_int(&self.p.refcnt, 1)
                m.p = self.p
                m.ctx = c
                if self.engine.post(i, _msg_tls_swap, m) < 0:
                    tls_ctx_decref(c)
                    tls_provider_decref(self.p)
                    free(m)
                    raise MemoryError()
        finally:
            tls_ctx_decref(c)           # the build's reference: the workers hold theirs

    def sessions_cached(self):
        """Client sessions kept for resumption, over the workers (racy; tests)."""
        return sum(self.p.per_worker[i].nsessions for i in range(self.p.nworkers))


cdef uint64_t _tls_provider_gens = 0    # the last TlsProvider.gen given


cdef TlsContextHandle _make_tls_context(Engine engine, dict spec, bint server,
                                        StatBlockHandle ssl_stats, str name):
    global _tls_provider_gens
    cdef TlsContextHandle h = TlsContextHandle.__new__(TlsContextHandle)
    cdef TlsProvider* p
    cdef TlsCtx* c = _tls_ctx_build(spec, server, ssl_stats, engine.nworkers)
    cdef int i
    p = <TlsProvider*>calloc(1, sizeof(TlsProvider))
    if p == NULL:
        tls_ctx_decref(c)
        raise MemoryError()
    p.per_worker = <TlsWorkerCtx*>calloc(engine.nworkers, sizeof(TlsWorkerCtx))
    if p.per_worker == NULL:
        free(p)
        tls_ctx_decref(c)
        raise MemoryError()
    p.refcnt = 1
    p.nworkers = engine.nworkers
    p.server = server
    _tls_provider_gens += 1             # (under the GIL)
    p.gen = _tls_provider_gens
    for i in range(engine.nworkers):
        fp_atomic_add_int(&c.refcnt, 1)
        p.per_worker[i].ctx = c
    tls_ctx_decref(c)
    h.p = p
    h.engine = engine
    h.name = name
    h.server = server
    h.stats = ssl_stats
    return h


stat_kind_add("ssl", SSL_STATS, SSL_GAUGES)
