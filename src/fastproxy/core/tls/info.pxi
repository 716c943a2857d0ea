# What a TLS connection shows its users, as Envoy's Ssl::ConnectionInfo prints it: protocol
# version, cipher, SNI, the peer's and our certificate's subject, SANs, SHA-256, serial,
# validity, the peer's PEM (url-encoded, for x-forwarded-client-cert) and the session id.
# Functions over an SSL* (ENGINE's endp_ssl(&c.down); NULL: plaintext), callable on a
# worker without the GIL. The access log (core/access_log.pxi), x-forwarded-client-cert
# (core/http/hcm_headers.pxi) and the Python filters' StreamInfo.ssl_connection read them;
# nothing is computed unless one of those asks (no cost on a connection nobody logs).
#
# Text is built in a TlsText: a growable buffer (malloc/realloc), its failure sticky in
# .failed so callers check once at the end.

cdef struct TlsText:
    char* p
    size_t n
    size_t cap
    bint failed                     # an allocation failed: p holds what fit before it


cdef void tt_put(TlsText* t, const char* s, size_t n) noexcept nogil:
    cdef size_t cap
    cdef char* np
    if t.failed or n == 0:
        return
    if t.n + n > t.cap:
        cap = t.cap * 2 if t.cap else 256
        while cap < t.n + n:
            cap *= 2
        np = <char*>realloc(t.p, cap)
        if np == NULL:
            t.failed = True
            return
        t.p = np
        t.cap = cap
    memcpy(t.p + t.n, s, n)
    t.n += n


cdef inline void tt_puts(TlsText* t, const char* s) noexcept nogil:
    if s != NULL:
        tt_put(t, s, strlen(s))


cdef inline void tt_free(TlsText* t) noexcept nogil:
    free(t.p)
    t.p = NULL
    t.n = t.cap = 0


cdef const char* _HEX_LOWER = "0123456789abcdef"


cdef void _tt_hex(TlsText* t, const unsigned char* b, size_t n) noexcept nogil:
    """Lower-case hex, as Envoy's Hex::encode."""
    cdef char pair[2]
    cdef size_t i
    for i in range(n):
        pair[0] = _HEX_LOWER[b[i] >> 4]
        pair[1] = _HEX_LOWER[b[i] & 15]
        tt_put(t, pair, 2)


# ---------------------------------------------------------------- the connection

cdef inline const char* tls_version(SSL* ssl) noexcept nogil:
    """"TLSv1.3", "TLSv1.2", ... (Envoy's %DOWNSTREAM_TLS_VERSION%); NULL on plaintext."""
    return SSL_get_version(ssl) if ssl != NULL else NULL


cdef const char* tls_cipher(SSL* ssl) noexcept nogil:
    """The negotiated suite as Envoy prints it: TLS 1.3's standard names
    ("TLS_AES_128_GCM_SHA256"), OpenSSL's for the older ones ("ECDHE-RSA-AES128-GCM-SHA256")."""
    cdef const SSL_CIPHER* c
    if ssl == NULL:
        return NULL
    c = SSL_get_current_cipher(ssl)
    return SSL_CIPHER_get_name(c) if c != NULL else NULL


cdef inline const char* tls_sni(SSL* ssl) noexcept nogil:
    """The server name the client asked for (%REQUESTED_SERVER_NAME%), NULL if none."""
    return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) if ssl != NULL else NULL


cdef inline X509* tls_peer_cert(SSL* ssl) noexcept nogil:
    """The certificate the peer presented (owned by the SSL), NULL if none."""
    return SSL_get0_peer_certificate(ssl) if ssl != NULL else NULL


cdef inline X509* tls_local_cert(SSL* ssl) noexcept nogil:
    """The certificate we presented (owned by the SSL), NULL if none."""
    return SSL_get_certificate(ssl) if ssl != NULL else NULL


cdef bint tls_session_id(SSL* ssl, TlsText* t) noexcept nogil:
    """The session id in lower-case hex (%DOWNSTREAM_TLS_SESSION_ID%); False if none."""
    cdef SSL_SESSION* sess
    cdef const unsigned char* id
    cdef unsigned int n = 0
    if ssl == NULL:
        return False
    sess = SSL_get_session(ssl)
    if sess == NULL:
        return False
    id = SSL_SESSION_get_id(sess, &n)
    if n == 0:
        return False
    _tt_hex(t, id, n)
    return True


# ---------------------------------------------------------------- a certificate

cdef bint tls_subject(X509* x, TlsText* t) noexcept nogil:
    """The subject in RFC 2253 form (most significant RDN last, as Envoy's
    subjectPeerCertificate). False: no certificate (an empty subject is True, "")."""
    cdef BIO* b
    cdef char* data = NULL
    cdef long n
    if x == NULL:
        return False
    b = BIO_new(BIO_s_mem())
    if b == NULL:
        t.failed = True
        return False
    X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253)
    n = BIO_get_mem_data(b, &data)
    if n > 0:
        tt_put(t, data, <size_t>n)
    BIO_free(b)
    return True


cdef void _tt_san(TlsText* t, const unsigned char* b, size_t n) noexcept nogil:
    """A SAN as text that stays one field of a header or a log line: an IA5String can hold
    any byte, so CR/LF (a header injected into x-forwarded-client-cert), controls, non-ASCII
    and the separators of XFCC and of these lists (" , ; \\ and space) become %XX."""
    cdef size_t i, start = 0
    cdef unsigned char ch
    cdef char esc[3]
    esc[0] = 37                         # '%'
    for i in range(n):
        ch = b[i]
        if 0x21 <= ch <= 0x7E and ch != 34 and ch != 44 and ch != 59 and ch != 92:
            continue
        tt_put(t, <const char*>b + start, i - start)
        esc[1] = b"0123456789ABCDEF"[ch >> 4]
        esc[2] = b"0123456789ABCDEF"[ch & 15]
        tt_put(t, esc, 3)
        start = i + 1
    tt_put(t, <const char*>b + start, n - start)


cdef int tls_sans(X509* x, int gen_type, TlsText* t, const char* prefix, const char* sep) noexcept nogil:
    """Append the certificate's subjectAltNames of gen_type (GEN_DNS, GEN_URI), each
    as prefix + name (escaped by _tt_san), separated by sep. Returns how many."""
    cdef GENERAL_NAMES* names
    cdef GENERAL_NAME* g
    cdef int i, count = 0
    if x == NULL:
        return 0
    names = <GENERAL_NAMES*>X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL)
    if names == NULL:
        return 0
    for i in range(OPENSSL_sk_num(<OPENSSL_STACK*>names)):
        g = <GENERAL_NAME*>OPENSSL_sk_value(<OPENSSL_STACK*>names, i)
        if g == NULL or g.type != gen_type or g.d.ia5 == NULL:
            continue
        if count:
            tt_puts(t, sep)
        tt_puts(t, prefix)
        _tt_san(t, <const unsigned char*>ASN1_STRING_get0_data(g.d.ia5),
                <size_t>ASN1_STRING_length(g.d.ia5))
        count += 1
    GENERAL_NAMES_free(names)
    return count


cdef bint tls_sha256_hex(X509* x, TlsText* t) noexcept nogil:
    """SHA-256 of the DER in lower-case hex (Hash= of XFCC, %DOWNSTREAM_PEER_FINGERPRINT_256%)."""
    cdef unsigned char md[64]
    cdef unsigned int n = 0
    if x == NULL or X509_digest(x, EVP_sha256(), md, &n) != 1:
        return False
    _tt_hex(t, md, n)
    return True


cdef bint tls_serial_hex(X509* x, TlsText* t) noexcept nogil:
    """The serial number in lower-case hex, whole bytes (Envoy's %DOWNSTREAM_PEER_SERIAL%)."""
    cdef BIGNUM* bn
    cdef char* h
    cdef size_t i, n
    if x == NULL:
        return False
    bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(x), NULL)
    if bn == NULL:
        return False
    h = BN_bn2hex(bn)
    BN_free(bn)
    if h == NULL:
        return False
    n = strlen(h)
    for i in range(n):
        if 65 <= h[i] <= 70:            # 'A'..'F'
            h[i] = h[i] + 32
    tt_put(t, h, n)
    OPENSSL_free(h)
    return True


cdef int64_t tls_cert_time_us(X509* x, bint not_after) noexcept nogil:
    """notBefore / notAfter in microseconds since the epoch; -1 if unknown."""
    cdef tm tmv
    cdef const ASN1_TIME* at
    if x == NULL:
        return -1
    at = X509_get0_notAfter(x) if not_after else X509_get0_notBefore(x)
    memset(&tmv, 0, sizeof(tmv))
    if at == NULL or ASN1_TIME_to_tm(at, &tmv) != 1:
        return -1
    return <int64_t>timegm(&tmv) * 1000000


cdef inline bint _url_keeps(unsigned char ch) noexcept nogil:
    """RFC 3986 unreserved: what Envoy's PercentEncoding::urlEncode leaves as it is."""
    return (48 <= ch <= 57 or 65 <= ch <= 90 or 97 <= ch <= 122 or ch == 45 or ch == 46
            or ch == 95 or ch == 126)


cdef bint tls_pem_urlencoded(X509* x, TlsText* t) noexcept nogil:
    """The certificate as PEM, url-encoded (XFCC's Cert= and Chain=): '\\n' is %0A, '+' %2B,
    '/' %2F, '=' %3D, ' ' %20; letters, digits and '-' stay."""
    cdef BIO* b
    cdef char* data = NULL
    cdef long n, i
    cdef char esc[3]
    cdef unsigned char ch
    if x == NULL:
        return False
    b = BIO_new(BIO_s_mem())
    if b == NULL:
        t.failed = True
        return False
    if PEM_write_bio_X509(b, x) != 1:
        BIO_free(b)
        return False
    n = BIO_get_mem_data(b, &data)
    esc[0] = 37                         # '%'
    for i in range(n):
        ch = <unsigned char>data[i]
        if _url_keeps(ch):
            tt_put(t, data + i, 1)
        else:
            esc[1] = b"0123456789ABCDEF"[ch >> 4]
            esc[2] = b"0123456789ABCDEF"[ch & 15]
            tt_put(t, esc, 3)
    BIO_free(b)
    return True


cdef bint tls_peer_chain_urlencoded(SSL* ssl, TlsText* t) noexcept nogil:
    """The peer's leaf then the certificates it sent after it, each url-encoded PEM (XFCC's
    Chain=). On a server, OpenSSL's peer chain leaves the leaf out; it is put first."""
    cdef X509* leaf = tls_peer_cert(ssl)
    cdef OPENSSL_STACK* st
    cdef X509* x
    cdef int i
    if leaf == NULL:
        return False
    tls_pem_urlencoded(leaf, t)
    st = <OPENSSL_STACK*>SSL_get_peer_cert_chain(ssl)
    if st != NULL:
        for i in range(OPENSSL_sk_num(st)):
            x = <X509*>OPENSSL_sk_value(st, i)
            if x != leaf and x != NULL:
                tls_pem_urlencoded(x, t)
    return True
