# TLS: the structs of contexts (core/tls/context.pxi, built on the main thread) and of
# per-connection transports (core/tls/transport.pxi, on the workers without the GIL).
# Included early: ListenerCfg (snapshot.pxi) and ClusterParams (upstream/decls.pxi) hold a
# TlsProvider, Endp.tls a TlsConn.
#
#   TlsCtx       one built SSL_CTX and what its callbacks read (validation, ALPN, SNI
#                certificates, ticket keys, the stat block); reference-counted: each
#                connection made with it holds one, so a rotated-out context lives exactly
#                as long as its last connection.
#   TlsProvider  what a listener or cluster refers to: per worker, the TlsCtx its new
#                handshakes use, swapped by a worker message on rotation
#                (TlsContextHandle.update), and the worker's client session cache.
#   TlsConn      one connection's SSL and its state (Endp.tls).


DEF TLS_RECORD = 16384          # a TLS record's plaintext: writes are coalesced up to this
DEF TLS_SESSIONS_MAX = 16       # client sessions a worker keeps per context (max_session_keys is capped to it)

cdef struct TlsSan                  # core/tls/context.pxi: a SAN matcher (type + string matcher)

cdef struct TlsCert:                # one server certificate (the SNI choice, cert callback)
    X509* leaf
    EVP_PKEY* key
    X509** chain                    # intermediates, sent after the leaf
    int nchain
    int key_type                    # EVP_PKEY_RSA, EVP_PKEY_EC, ...

cdef struct TlsTicketKey:           # Envoy's 80-byte session ticket key
    unsigned char name[16]
    unsigned char hmac[32]
    unsigned char aes[32]

cdef struct TlsCtx:
    int refcnt                      # atomic
    SSL_CTX* ctx
    uint8_t server
    StatBlock* stats                # SSL_* (listener.<a>.ssl / cluster.<n>.ssl); one reference
    # validation of the peer's certificate
    uint8_t verify                  # any of the below: the verify callback runs
    uint8_t has_ca                  # trusted_ca given: verify the chain
    uint8_t accept_untrusted        # trust_chain_verification ACCEPT_UNTRUSTED
    uint8_t allow_expired
    uint8_t require_cert            # server: require_client_certificate
    int nsans
    TlsSan* sans
    void* san_owned                 # the matchers' memory (an NOwned block; _nf_destroy_config)
    int ncert_hashes
    unsigned char* cert_hashes      # ncert_hashes * 32 bytes (SHA-256 of the DER)
    int nspki_hashes
    unsigned char* spki_hashes      # SHA-256 of the SubjectPublicKeyInfo
    # ALPN, wire format (length-prefixed names)
    unsigned char* alpn
    unsigned int alpn_len
    # server certificates (the cert callback picks by SNI among those of the key type the
    # client supports; OpenSSL picks the key type when there is one of each)
    int ncerts
    TlsCert* certs
    uint8_t sni_select              # several certificates of one key type: pick by SNI
    # session tickets with given keys (first encrypts, all decrypt)
    int nticket_keys
    TlsTicketKey* ticket_keys
    # client
    char* sni                       # NUL-terminated, or NULL
    uint8_t auto_sni
    uint8_t auto_san_validation
    int max_session_keys            # 0: no resumption

cdef struct TlsSession:             # a client session kept for resumption
    SSL_SESSION* sess
    char sni[256]                   # the server name it was made for ("" : none)

cdef struct TlsWorkerCtx:           # a provider's per-worker slot
    TlsCtx* ctx                     # one reference; swapped by _msg_tls_swap
    TlsSession sessions[TLS_SESSIONS_MAX]
    int nsessions
    int next_session                # ring cursor

cdef struct TlsProvider:
    int refcnt                      # atomic: its handle, listener configs, cluster params
    int nworkers
    uint8_t server
    uint64_t gen                    # unique per provider, never 0: a pool sees its cluster's
                                    #   TLS change by it (addresses are reused)
    TlsWorkerCtx* per_worker

# Closes a connection whose handshake did not complete in time (its owner's close).
ctypedef void (*tls_timeout_t)(void* owner) noexcept nogil

cdef struct TlsConn:
    SSL* ssl
    TlsCtx* ctx                     # one reference
    TlsProvider* provider           # one reference (client: its session cache)
    Worker* w
    uint8_t server
    uint8_t done                    # handshake complete
    uint8_t failed                  # a handshake or verification failure was counted
    uint8_t read_wants_write        # SSL_read said WANT_WRITE: EPOLLOUT makes it readable again
    uint8_t write_wants_read        # SSL_write said WANT_READ: EPOLLIN makes it writable again
    uint8_t eof                     # close_notify or the peer's EOF was read
    uint8_t shut                    # close_notify sent
    uint8_t notify_pending          # close_notify held by OpenSSL (socket full): a half-close's FIN waits for it
    uint8_t ktls_tx                 # the kernel encrypts what this socket sends (splice may send)
    uint8_t ktls_rx                 # the kernel decrypts what it receives (splice may read)
    int wpending                    # bytes offered to the SSL_write that wanted a retry (the same bytes go again)
    char host[256]                  # client: the server name (sni or auto_sni), "" : none
    Timer timer                     # transport_socket_connect_timeout (downstream)
    tls_timeout_t on_timeout
    void* owner

cdef struct TlsWorker:              # the TLS subsystem's per-worker state
    char scratch[TLS_RECORD]        # small slices coalesced into one record
