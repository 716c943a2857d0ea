# OpenSSL 3 declarations for the facts a TLS connection shows its users (core/tls/info.pxi):
# versions, cipher, SNI, certificate names, SANs, digests, PEM. The TLS engine's own
# declarations are in openssl.pxd; every name here has the prefix oi_ (the C names are
# OpenSSL's) so the two files can be cimported side by side without a clash. All callable
# without the GIL.
from libc.stdint cimport uint8_t

cdef extern from "<time.h>" nogil:
    struct oi_tm "tm":
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
    long oi_timegm "timegm"(oi_tm* t)

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct oi_SSL "SSL"
    ctypedef struct oi_SSL_CIPHER "SSL_CIPHER"
    ctypedef struct oi_SSL_SESSION "SSL_SESSION"
    ctypedef struct oi_X509 "X509"
    ctypedef struct oi_X509_NAME "X509_NAME"
    ctypedef struct oi_STACK "OPENSSL_STACK"
    ctypedef struct oi_STACK_X509 "STACK_OF(X509)"
    ctypedef struct oi_BIO "BIO"
    ctypedef struct oi_BIO_METHOD "BIO_METHOD"
    ctypedef struct oi_EVP_MD "EVP_MD"
    ctypedef struct oi_ASN1_INTEGER "ASN1_INTEGER"
    ctypedef struct oi_ASN1_TIME "ASN1_TIME"
    ctypedef struct oi_ASN1_STRING "ASN1_STRING"
    ctypedef struct oi_BIGNUM "BIGNUM"

    enum:
        OI_TLSEXT_NAMETYPE_host_name "TLSEXT_NAMETYPE_host_name"

    const char* oi_SSL_get_version "SSL_get_version"(const oi_SSL* s)
    const oi_SSL_CIPHER* oi_SSL_get_current_cipher "SSL_get_current_cipher"(const oi_SSL* s)
    const char* oi_SSL_CIPHER_get_name "SSL_CIPHER_get_name"(const oi_SSL_CIPHER* c)
    const char* oi_SSL_get_servername "SSL_get_servername"(const oi_SSL* s, const int type)
    oi_X509* oi_SSL_get0_peer_certificate "SSL_get0_peer_certificate"(const oi_SSL* s)
    oi_X509* oi_SSL_get_certificate "SSL_get_certificate"(const oi_SSL* s)
    oi_STACK_X509* oi_SSL_get_peer_cert_chain "SSL_get_peer_cert_chain"(const oi_SSL* s)
    oi_SSL_SESSION* oi_SSL_get_session "SSL_get_session"(const oi_SSL* s)
    const unsigned char* oi_SSL_SESSION_get_id "SSL_SESSION_get_id"(const oi_SSL_SESSION* s, unsigned int* len)
    int oi_SSL_session_reused "SSL_session_reused"(const oi_SSL* s)

cdef extern from "openssl/stack.h" nogil:
    int oi_sk_num "OPENSSL_sk_num"(const oi_STACK* st)
    void* oi_sk_value "OPENSSL_sk_value"(const oi_STACK* st, int i)

cdef extern from "openssl/bio.h" nogil:
    const oi_BIO_METHOD* oi_BIO_s_mem "BIO_s_mem"()
    oi_BIO* oi_BIO_new "BIO_new"(const oi_BIO_METHOD* t)
    int oi_BIO_free "BIO_free"(oi_BIO* a)
    long oi_BIO_get_mem_data "BIO_get_mem_data"(oi_BIO* b, char** pp)

cdef extern from "openssl/x509.h" nogil:
    enum:
        OI_XN_FLAG_RFC2253 "XN_FLAG_RFC2253"
    oi_X509_NAME* oi_X509_get_subject_name "X509_get_subject_name"(const oi_X509* x)
    int oi_X509_NAME_print_ex "X509_NAME_print_ex"(oi_BIO* out, const oi_X509_NAME* nm, int indent,
                                                   unsigned long flags)
    int oi_X509_digest "X509_digest"(const oi_X509* data, const oi_EVP_MD* type, unsigned char* md,
                                     unsigned int* len)
    oi_ASN1_INTEGER* oi_X509_get_serialNumber "X509_get_serialNumber"(oi_X509* x)
    const oi_ASN1_TIME* oi_X509_get0_notBefore "X509_get0_notBefore"(const oi_X509* x)
    const oi_ASN1_TIME* oi_X509_get0_notAfter "X509_get0_notAfter"(const oi_X509* x)
    void* oi_X509_get_ext_d2i "X509_get_ext_d2i"(const oi_X509* x, int nid, int* crit, int* idx)

cdef extern from "openssl/x509v3.h" nogil:
    enum:
        OI_NID_subject_alt_name "NID_subject_alt_name"
        OI_GEN_DNS "GEN_DNS"
        OI_GEN_URI "GEN_URI"
    ctypedef struct oi_GENERAL_NAMES "GENERAL_NAMES"
    # GENERAL_NAME's member d is an anonymous union: this name is never used for a C
    # variable, only to reach d.ia5 (the string of a DNS or URI name).
    union oi_gn_d:
        oi_ASN1_STRING* ia5
    ctypedef struct oi_GENERAL_NAME "GENERAL_NAME":
        int type
        oi_gn_d d
    void oi_GENERAL_NAMES_free "GENERAL_NAMES_free"(oi_GENERAL_NAMES* a)

cdef extern from "openssl/asn1.h" nogil:
    const unsigned char* oi_ASN1_STRING_get0_data "ASN1_STRING_get0_data"(const oi_ASN1_STRING* x)
    int oi_ASN1_STRING_length "ASN1_STRING_length"(const oi_ASN1_STRING* x)
    oi_BIGNUM* oi_ASN1_INTEGER_to_BN "ASN1_INTEGER_to_BN"(const oi_ASN1_INTEGER* ai, oi_BIGNUM* bn)
    int oi_ASN1_TIME_to_tm "ASN1_TIME_to_tm"(const oi_ASN1_TIME* s, oi_tm* tm)

cdef extern from "openssl/bn.h" nogil:
    char* oi_BN_bn2hex "BN_bn2hex"(const oi_BIGNUM* a)
    void oi_BN_free "BN_free"(oi_BIGNUM* a)

cdef extern from "openssl/evp.h" nogil:
    const oi_EVP_MD* oi_EVP_sha256 "EVP_sha256"()

cdef extern from "openssl/crypto.h" nogil:
    void oi_OPENSSL_free "OPENSSL_free"(void* p)

cdef extern from "openssl/pem.h" nogil:
    int oi_PEM_write_bio_X509 "PEM_write_bio_X509"(oi_BIO* bp, oi_X509* x)
