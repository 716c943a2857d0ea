# OpenSSL 3 (the system's libssl/libcrypto; Debian's libssl-dev) as the core calls it:
# contexts are built on the main thread (core/tls/context.pxi), connections run on the
# workers without the GIL (core/tls/transport.pxi). Several names below are macros in
# the headers (SSL_CTX_set_mode, SSL_set_tlsext_host_name, BIO_get_ktls_send...): Cython
# emits the call text, so declaring them as functions is enough. The connection facts
# (core/tls/info.pxi: subjects, SANs, digests, PEM) use the last section.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastproxy.core.includes.system cimport tm

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct SSL_METHOD
    ctypedef struct SSL_CIPHER
    ctypedef struct SSL_SESSION
    ctypedef struct X509
    ctypedef struct X509_STORE
    ctypedef struct X509_STORE_CTX
    ctypedef struct X509_CRL
    ctypedef struct X509_NAME
    ctypedef struct EVP_PKEY
    ctypedef struct EVP_MD
    ctypedef struct EVP_CIPHER
    ctypedef struct EVP_CIPHER_CTX
    ctypedef struct EVP_MAC_CTX
    ctypedef struct ENGINE
    ctypedef struct BIO
    ctypedef struct OSSL_PARAM:
        const char* key
        unsigned int data_type
        void* data
        size_t data_size
        size_t return_size

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_WANT_X509_LOOKUP
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_ERROR_WANT_CONNECT
        SSL_ERROR_WANT_ACCEPT
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_MODE_RELEASE_BUFFERS
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        SSL_SESS_CACHE_OFF
        SSL_SESS_CACHE_CLIENT
        SSL_SESS_CACHE_SERVER
        SSL_SESS_CACHE_NO_INTERNAL_STORE
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_NOACK
        SSL_TLSEXT_ERR_ALERT_FATAL
        TLSEXT_NAMETYPE_host_name
        TLS1_VERSION
        TLS1_1_VERSION
        TLS1_2_VERSION
        TLS1_3_VERSION
        SSL_FILETYPE_PEM

    uint64_t SSL_OP_NO_RENEGOTIATION
    uint64_t SSL_OP_ENABLE_KTLS
    uint64_t SSL_OP_IGNORE_UNEXPECTED_EOF
    uint64_t SSL_OP_NO_TICKET
    uint64_t SSL_OP_CIPHER_SERVER_PREFERENCE
    uint64_t SSL_OP_NO_COMPRESSION

    const SSL_METHOD* TLS_server_method()
    const SSL_METHOD* TLS_client_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* m)
    void SSL_CTX_free(SSL_CTX* ctx)
    int SSL_CTX_up_ref(SSL_CTX* ctx)
    uint64_t SSL_CTX_set_options(SSL_CTX* ctx, uint64_t op)
    long SSL_CTX_set_mode(SSL_CTX* ctx, long mode)
    void SSL_CTX_set_read_ahead(SSL_CTX* ctx, int yes)
    void SSL_CTX_set_default_read_buffer_len(SSL_CTX* ctx, size_t len)
    int SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int v)
    int SSL_CTX_set_max_proto_version(SSL_CTX* ctx, int v)
    int SSL_CTX_set_cipher_list(SSL_CTX* ctx, const char* s)
    int SSL_CTX_set_ciphersuites(SSL_CTX* ctx, const char* s)
    int SSL_CTX_set1_groups_list(SSL_CTX* ctx, const char* s)
    int SSL_CTX_set1_sigalgs_list(SSL_CTX* ctx, const char* s)
    int SSL_CTX_use_certificate(SSL_CTX* ctx, X509* x)
    int SSL_CTX_use_PrivateKey(SSL_CTX* ctx, EVP_PKEY* k)
    int SSL_CTX_add1_chain_cert(SSL_CTX* ctx, X509* x)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, void* cb)
    void SSL_CTX_set_cert_verify_callback(SSL_CTX* ctx, int (*cb)(X509_STORE_CTX*, void*) noexcept nogil, void* arg)
    X509_STORE* SSL_CTX_get_cert_store(const SSL_CTX* ctx)
    void SSL_CTX_set_cert_cb(SSL_CTX* c, int (*cb)(SSL* ssl, void* arg) noexcept nogil, void* arg)
    void SSL_CTX_set_alpn_select_cb(SSL_CTX* ctx, int (*cb)(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* inp, unsigned int inlen, void* arg) noexcept nogil, void* arg)
    int SSL_CTX_set_alpn_protos(SSL_CTX* ctx, const unsigned char* protos, unsigned int len)
    int SSL_set_alpn_protos(SSL* ssl, const unsigned char* protos, unsigned int len)
    long SSL_CTX_set_session_cache_mode(SSL_CTX* ctx, long mode)
    long SSL_CTX_set_timeout(SSL_CTX* ctx, long t)
    int SSL_CTX_set_session_id_context(SSL_CTX* ctx, const unsigned char* sid, unsigned int len)
    void SSL_CTX_sess_set_new_cb(SSL_CTX* ctx, int (*cb)(SSL*, SSL_SESSION*) noexcept nogil)
    int SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX* ctx, int (*fp)(SSL*, unsigned char*, unsigned char*, EVP_CIPHER_CTX*, EVP_MAC_CTX*, int) noexcept nogil)
    int SSL_CTX_set_ex_data(SSL_CTX* ctx, int idx, void* data)
    void* SSL_CTX_get_ex_data(const SSL_CTX* ctx, int idx)
    int SSL_CTX_set_num_tickets(SSL_CTX* ctx, size_t n)

    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* s)
    SSL_CTX* SSL_get_SSL_CTX(const SSL* s)
    int SSL_set_fd(SSL* s, int fd)
    void SSL_set_accept_state(SSL* s)
    void SSL_set_connect_state(SSL* s)
    int SSL_do_handshake(SSL* s)
    int SSL_read(SSL* s, void* buf, int num)
    int SSL_write(SSL* s, const void* buf, int num)
    int SSL_pending(const SSL* s)
    int SSL_get_error(const SSL* s, int ret)
    int SSL_shutdown(SSL* s)
    int SSL_is_init_finished(const SSL* s)
    int SSL_set_tlsext_host_name(SSL* s, const char* name)
    const char* SSL_get_servername(const SSL* s, int type)
    int SSL_version(const SSL* s)
    const SSL_CIPHER* SSL_get_current_cipher(const SSL* s)
    const char* SSL_CIPHER_get_name(const SSL_CIPHER* c)
    uint16_t SSL_CIPHER_get_protocol_id(const SSL_CIPHER* c)
    int SSL_session_reused(const SSL* s)
    X509* SSL_get1_peer_certificate(const SSL* s)
    X509* SSL_get0_peer_certificate(const SSL* s)
    long SSL_get_verify_result(const SSL* s)
    int SSL_set_session(SSL* s, SSL_SESSION* sess)
    void SSL_SESSION_free(SSL_SESSION* sess)
    int SSL_SESSION_is_resumable(const SSL_SESSION* s)
    int SSL_set_ex_data(SSL* s, int idx, void* data)
    void* SSL_get_ex_data(const SSL* s, int idx)
    int SSL_get_ex_data_X509_STORE_CTX_idx()
    int SSL_get_negotiated_group(SSL* s)
    int SSL_use_certificate(SSL* s, X509* x)
    int SSL_use_PrivateKey(SSL* s, EVP_PKEY* k)
    int SSL_set1_chain(SSL* s, void* chain)
    int SSL_add1_chain_cert(SSL* s, X509* x)
    int SSL_clear_chain_certs(SSL* s)
    int SSL_check_private_key(const SSL* s)
    void SSL_get0_alpn_selected(const SSL* s, const unsigned char** data, unsigned int* len)
    int SSL_select_next_proto(unsigned char** out, unsigned char* outlen, const unsigned char* server, unsigned int server_len, const unsigned char* client, unsigned int client_len)
    BIO* SSL_get_wbio(const SSL* s)
    BIO* SSL_get_rbio(const SSL* s)
    int SSL_client_hello_get0_ext(SSL* s, unsigned int type, const unsigned char** out, size_t* outlen)
    int SSL_get_shared_sigalgs(SSL* s, int idx, int* psign, int* phash, int* psignhash, unsigned char* rsig, unsigned char* rhash)
    int SSL_get_sigalgs(SSL* s, int idx, int* psign, int* phash, int* psignhash, unsigned char* rsig, unsigned char* rhash)
    int SSL_set1_host(SSL* s, const char* hostname)

cdef extern from "<openssl/bio.h>" nogil:
    BIO* BIO_new_mem_buf(const void* buf, int len)
    int BIO_free(BIO* b)
    int BIO_get_ktls_send(BIO* b)
    int BIO_get_ktls_recv(BIO* b)

cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_last_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t len)
    int ERR_GET_REASON(unsigned long e)

cdef extern from "<openssl/pem.h>" nogil:
    ctypedef int pem_password_cb(char* buf, int size, int rwflag, void* u)
    X509* PEM_read_bio_X509(BIO* bp, X509** x, pem_password_cb* cb, void* u)
    X509* PEM_read_bio_X509_AUX(BIO* bp, X509** x, pem_password_cb* cb, void* u)
    EVP_PKEY* PEM_read_bio_PrivateKey(BIO* bp, EVP_PKEY** x, pem_password_cb* cb, void* u)
    X509_CRL* PEM_read_bio_X509_CRL(BIO* bp, X509_CRL** x, pem_password_cb* cb, void* u)

cdef extern from "<openssl/x509.h>" nogil:
    enum:
        X509_V_OK
        X509_V_ERR_CERT_HAS_EXPIRED
        X509_V_ERR_APPLICATION_VERIFICATION
        X509_V_FLAG_CRL_CHECK
        X509_V_FLAG_CRL_CHECK_ALL
        X509_V_FLAG_NO_CHECK_TIME
        X509_V_FLAG_PARTIAL_CHAIN
    void X509_free(X509* x)
    int X509_up_ref(X509* x)
    void X509_CRL_free(X509_CRL* x)
    int X509_STORE_add_cert(X509_STORE* s, X509* x)
    int X509_STORE_add_crl(X509_STORE* s, X509_CRL* x)
    int X509_STORE_set_flags(X509_STORE* s, unsigned long flags)
    int X509_verify_cert(X509_STORE_CTX* ctx)
    X509* X509_STORE_CTX_get0_cert(const X509_STORE_CTX* ctx)
    void* X509_STORE_CTX_get_ex_data(const X509_STORE_CTX* ctx, int idx)
    int X509_STORE_CTX_get_error(const X509_STORE_CTX* ctx)
    void X509_STORE_CTX_set_error(X509_STORE_CTX* ctx, int s)
    void X509_STORE_CTX_set_flags(X509_STORE_CTX* ctx, unsigned long flags)
    int X509_digest(const X509* x, const EVP_MD* t, unsigned char* md, unsigned int* len)
    int X509_pubkey_digest(const X509* x, const EVP_MD* t, unsigned char* md, unsigned int* len)
    EVP_PKEY* X509_get0_pubkey(const X509* x)
    int X509_check_private_key(const X509* x, const EVP_PKEY* k)
    void* X509_get_ext_d2i(const X509* x, int nid, int* crit, int* idx)
    int i2d_PUBKEY(const EVP_PKEY* a, unsigned char** pp)
    int X509_check_host(X509* x, const char* chk, size_t chklen, unsigned int flags, char** peername)

cdef extern from "<openssl/x509v3.h>" nogil:
    enum:
        NID_subject_alt_name
        GEN_EMAIL
        GEN_DNS
        GEN_URI
        GEN_IPADD
    ctypedef struct ASN1_STRING
    ctypedef struct GENERAL_NAMES
    ctypedef union _gn_d:
        ASN1_STRING* ia5
        ASN1_STRING* iPAddress
        void* ptr
    ctypedef struct GENERAL_NAME:
        int type
        _gn_d d
    void GENERAL_NAMES_free(GENERAL_NAMES* g)
    int sk_GENERAL_NAME_num(const GENERAL_NAMES* sk)
    GENERAL_NAME* sk_GENERAL_NAME_value(const GENERAL_NAMES* sk, int i)
    const unsigned char* ASN1_STRING_get0_data(const ASN1_STRING* x)
    int ASN1_STRING_length(const ASN1_STRING* x)

cdef extern from "<openssl/evp.h>" nogil:
    const EVP_MD* EVP_sha256()
    const EVP_CIPHER* EVP_aes_256_cbc()
    int EVP_PKEY_get_base_id(const EVP_PKEY* k)
    void EVP_PKEY_free(EVP_PKEY* k)
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* t, ENGINE* impl, const unsigned char* key, const unsigned char* iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* t, ENGINE* impl, const unsigned char* key, const unsigned char* iv)
    int EVP_MAC_CTX_set_params(EVP_MAC_CTX* ctx, const OSSL_PARAM* params)
    int EVP_MAC_init(EVP_MAC_CTX* ctx, const unsigned char* key, size_t keylen, const OSSL_PARAM* params)
    enum:
        EVP_PKEY_RSA
        EVP_PKEY_EC
        EVP_PKEY_ED25519
    enum:
        EVP_MAX_MD_SIZE

cdef extern from "<openssl/params.h>" nogil:
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char* key, char* buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()

cdef extern from "<openssl/rand.h>" nogil:
    int RAND_bytes(unsigned char* buf, int num)

cdef extern from "<openssl/obj_mac.h>" nogil:
    enum:
        NID_X9_62_prime256v1
        NID_secp384r1
        NID_secp521r1
        NID_X25519
        NID_X448

cdef extern from "<string.h>" nogil:
    int strcmp(const char* a, const char* b)

cdef extern from "<errno.h>" nogil:
    enum:
        EPROTO

cdef extern from *:
    """
    #include <errno.h>
    static inline void fp_set_errno(int e) { errno = e; }
    """
    void fp_set_errno(int e) nogil


# ---- what a connection shows its users (core/tls/info.pxi): names, SANs, digests, PEM

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct OPENSSL_STACK
    ctypedef struct STACK_OF_X509 "STACK_OF(X509)"
    const char* SSL_get_version(const SSL* s)
    X509* SSL_get_certificate(const SSL* s)
    STACK_OF_X509* SSL_get_peer_cert_chain(const SSL* s)
    SSL_SESSION* SSL_get_session(const SSL* s)
    const unsigned char* SSL_SESSION_get_id(const SSL_SESSION* s, unsigned int* len)

cdef extern from "<openssl/stack.h>" nogil:
    int OPENSSL_sk_num(const OPENSSL_STACK* st)
    void* OPENSSL_sk_value(const OPENSSL_STACK* st, int i)

cdef extern from "<openssl/bio.h>" nogil:
    ctypedef struct BIO_METHOD
    const BIO_METHOD* BIO_s_mem()
    BIO* BIO_new(const BIO_METHOD* t)
    long BIO_get_mem_data(BIO* b, char** pp)

cdef extern from "<openssl/x509.h>" nogil:
    ctypedef struct ASN1_INTEGER
    ctypedef struct ASN1_TIME
    enum:
        XN_FLAG_RFC2253
    X509_NAME* X509_get_subject_name(const X509* x)
    int X509_NAME_print_ex(BIO* out, const X509_NAME* nm, int indent, unsigned long flags)
    ASN1_INTEGER* X509_get_serialNumber(X509* x)
    const ASN1_TIME* X509_get0_notBefore(const X509* x)
    const ASN1_TIME* X509_get0_notAfter(const X509* x)

cdef extern from "<openssl/asn1.h>" nogil:
    ctypedef struct BIGNUM
    BIGNUM* ASN1_INTEGER_to_BN(const ASN1_INTEGER* ai, BIGNUM* bn)
    int ASN1_TIME_to_tm(const ASN1_TIME* s, tm* out)

cdef extern from "<openssl/bn.h>" nogil:
    char* BN_bn2hex(const BIGNUM* a)
    void BN_free(BIGNUM* a)

cdef extern from "<openssl/crypto.h>" nogil:
    void OPENSSL_free(void* p)

cdef extern from "<openssl/pem.h>" nogil:
    int PEM_write_bio_X509(BIO* bp, X509* x)
