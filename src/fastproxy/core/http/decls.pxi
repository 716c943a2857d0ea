# Declarations of the HTTP connection manager, the router filter and the upstream HTTP pool:
# their enums, structs, compile-time sizes and C string constants. Included before every
# implementation file of core/http/ and core/upstream/http_pool.pxi (Cython needs a struct
# or DEF before its first use; functions may come in any order).

cdef enum:                          # UpConn.state
    UC_CONNECTING = 0
    UC_BUSY = 1
    UC_IDLE = 2
    UC_CLOSED = 3
    UC_WAITING = 4                  # no socket yet: the cluster's max_connections is reached

cdef enum:                          # how a head we send frames its body (_body_framing
                                    #   turns these into the codec's BodyFraming)
    UF_PARSER = 0                   # as the received message was (its length, or streamed)
    UF_NONE = 1                     # no body
    UF_LENGTH = 2                   # the given length (counted: a filter's body)
    UF_MAP_LENGTH = 3               # the Content-Length a filter left in the header map (counted)
    UF_STREAM = 4                   # length not known (HTTP/1.1: chunked)

cdef enum:
    HTTP_IO_LIMIT = 1 << 20         # bytes buffered per direction before reading pauses

cdef enum:                          # HttpCfg.escaped_slashes: path_with_escaped_slashes_action
    ES_KEEP = 0
    ES_REJECT = 1
    ES_REDIRECT = 2
    ES_FORWARD = 3

cdef enum:                          # HttpCfg.strip_port: strip_port_mode
    STRIP_PORT_NONE = 0
    STRIP_PORT_MATCHING = 1
    STRIP_PORT_ANY = 2

cdef enum:                          # HttpCfg.underscores: headers_with_underscores_action
    US_ALLOW = 0
    US_REJECT = 1
    US_DROP = 2

cdef enum:                          # stream_normalize_path (core/http/hcm_headers.pxi)
    PN_NOMEM = -2
    PN_REJECT = -1                  # 400, downstream_rq_failed_path_normalization
    PN_OK = 0
    PN_REDIRECT = 1                 # 307 to the new path, downstream_rq_redirected_with_normalized_path

cdef struct HttpCfg:
    int refcnt                      # atomic
    RouteProvider* routes           # its route table per worker (one reference); a stream
                                    #   routes with the table it took at its start (HStream.routes)
    StatBlock* stats                # http.<stat_prefix>.*
    uint64_t idle_timeout_ms        # downstream connection without a stream; 0: none
    uint64_t request_headers_timeout_ms
    uint64_t stream_idle_timeout_ms
    uint64_t request_timeout_ms     # the whole request must arrive within it; 0: none
    uint8_t allow_connect           # upgrade_configs has CONNECT: tunnel it (else 403)
    uint8_t allow_websocket         # upgrade_configs has websocket: forward it (else 403)
    uint8_t accept_http_10          # http_protocol_options.accept_http_10 (else 426)
    char* default_host_10           # default_host_for_http_10, or NULL
    size_t default_host_10_len
    int nlogs
    AlogSink* logs                  # access logs (core/access_log.pxi)
    uint32_t max_requests_per_connection
    uint32_t max_head
    uint32_t max_fields
    uint64_t max_request_bytes      # 0: unlimited
    uint8_t use_remote_address
    uint8_t generate_request_id
    uint8_t suppress_envoy_headers  # the router's: no x-envoy-expected-rq-timeout-ms,
                                    # -original-path, -original-host, -upstream-service-time
    uint32_t xff_num_trusted_hops
    uint8_t internal_mode           # IA_*: which client addresses are internal (core/http/stream_extras.pxi)
    int ninternal
    InternalCidr* internal_cidrs    # IA_CIDRS: internal_address_config.cidr_ranges
    char local_ip[48]               # Envoy's local address: what XFF gets for a loopback peer
    size_t local_ip_len
    char* server_name
    size_t server_name_len
    uint8_t server_mode             # SERVER_*: server_header_transformation
    char* via                       # via: appended to request and response Via; NULL: none
    size_t via_len
    uint8_t skip_xff_append         # use_remote_address without touching x-forwarded-for
    uint8_t xfcc_mode               # XFCC_*: forward_client_cert_details (core/http/hcm_headers.pxi)
    uint8_t xfcc_details            # XD_* bits: set_current_client_cert_details
    uint8_t preserve_external_request_id
    uint8_t always_set_request_id   # always_set_request_id_in_response
    uint8_t normalize_path          # path normalization (core/http/hcm_headers.pxi)
    uint8_t merge_slashes
    uint8_t escaped_slashes         # ES_*: path_with_escaped_slashes_action
    uint8_t strip_port              # STRIP_PORT_*: strip_matching_host_port / strip_any_host_port
    uint8_t underscores             # US_*: headers_with_underscores_action
    StatBlock* http1_stats          # the server-wide http1.* counters (HTTP1_STATS)
    uint8_t codec_type              # CODEC_*: codec_type (core/http/codec_h2_server.pxi)
    H2Options h2                    # http2_protocol_options
    void* h2_option                 # ... as the nghttp2_option of its sessions (owned)
    StatBlock* http2_stats          # the server-wide http2.* counters (HTTP2_STATS); NULL: none
    uint64_t drain_timeout_ms       # drain_timeout: HTTP/2's shutdown notice to its final GOAWAY
    int nfilters                    # http_filters before the router (core/http/filter_manager.pxi)
    HttpFilterCfg* filters
    uint32_t filter_hooks           # union of the filters' HK_* bits
    uint32_t filter_buffer_limit
    OwnedCfg* owned_cfgs            # filter configs freed with this HttpCfg
    int nowned
    PyObject* py_keep               # a list of the Python objects filters point at, or NULL

cdef struct ServerCodecApi
cdef struct ClientCodecApi


cdef enum:                          # UpConn.h2_role
    H2R_NONE = 0
    H2R_CONN = 1
    H2R_STREAM = 2

cdef struct H2Conn                  # core/http/codec_h2_client.pxi
cdef struct H2Stream


cdef struct SplicePipe:             # a pipe that Content-Length bodies go through
    int r
    int w
    size_t bytes                    # in the pipe now
    size_t cap

cdef struct UpConn:
    Endp ep
    Worker* w
    UpConn* prev                    # the worker's list of upstream connections
    UpConn* next
    UpConn* idle_next               # the pool's idle list for its host
    UpConn** idle_head              # the list it is on, NULL when not idle
    UpConn* next_deferred
    ClusterCfg* cluster             # one reference
    int host_index
    HostSet* hosts                  # the host set host_index is into (pool key), one
                                    #   reference: it outlives a DNS change under a request
    int state
    uint8_t eof
    HStream* stream
    const ClientCodecApi* codec     # the protocol it speaks (its state: h1)
    H1ClientConn h1                 # the HTTP/1.1 codec's state (codec_h1_client.pxi only)
    Chain in_buf
    Chain out_buf
    Timer timer                     # connect timeout, then pooled-idle timeout
    Timer duration_timer            # the cluster's max_connection_duration
    uint8_t pending                 # its stream waits for it (upstream_rq_pending_active):
                                    #   connecting, or UC_WAITING
    uint8_t rq_attached             # a stream is attached and its response is not complete
    uint8_t remote_close            # the upstream ended the connection (destroy_remote)
    uint8_t cx_counted              # has a socket: counted in upstream_cx_active and n_cx
    uint8_t last_request            # close after this response (max requests or duration reached)
    uint32_t nrequests              # requests it has carried
    UpConn* wait_next               # its pool's queue of UC_WAITING ones
    UpConn* wait_prev
    uint8_t queued                  # on that queue
    uint8_t host_counted            # counted in its pool's nconns (not a CONNECT tunnel's)
    uint64_t id                     # the debug lines' ConnectionId (shared with HConn's)
    StatBlock* hstats               # its host's counters (HS_*), NULL: none
    # HTTP/2 (core/http/codec_h2_client.pxi: the design is at its top)
    uint8_t h2_role                 # H2R_NONE: an HTTP/1.1 connection; H2R_CONN: a shared HTTP/2
                                    #   connection; H2R_STREAM: one stream's handle on one
    H2Conn* h2                      # H2R_CONN: the session and its streams (freed with u)
    H2Stream* h2s                   # H2R_STREAM: the stream's state (freed with u)
    UpConn* h2_conn                 # H2R_STREAM: the connection that carries it (or will, once
                                    #   it connects); NULL: none (waiting, or its stream closed)

cdef struct UpstreamRequest:        # the router filter's request to one upstream host
                                    # (Envoy's UpstreamRequest): what it holds from the pool
                                    # and what the client codec's events told it
    UpConn* conn                    # the pool's handle (HTTP/1: the connection), NULL: none
    StatBlock* hstats               # the chosen host's counters (HS_*), one reference; NULL: none
    sockaddr_storage addr           # the host chosen (addrlen 0: none)
    socklen_t addrlen
    uint64_t start_ms               # a connection was assigned (monotonic); 0: never
    uint8_t req_done                # the whole request is in the connection's out_buf
    uint8_t resp_received           # the response's end event came
    uint8_t resp_end_fed            # ... and went to the encoder filters
    const HttpHead* resp_head       # the response head, owned by conn's codec (valid while
                                    #   conn is attached: access logs read it)
    ResponseFacts resp_facts        # ... and what the codec said of it


cdef struct RetryState              # core/http/retry.pxi
cdef struct Shadow                  # request mirroring (core/http/shadow.pxi)

cdef struct HStream:
    HConn* c
    LbContext lb                    # what its next host pick uses (the route's hash, the
                                    #   retry's attempt and hosts to avoid); zeroed at start
    uint64_t hash_cookies           # cookies the route's hash_policy generated, to set on the
                                    #   upstream's response (bit: HashMethod.cookie_bit)
    uint64_t hash_cookie_value      # ... the hash their value shows (core/http/hash_policy.pxi)
    HStream* conn_next              # the connection's active streams (HConn.streams)
    HStream* conn_prev
    void* codec_stream              # the server codec's per-stream state (HTTP/2), or NULL
    uint8_t ended                   # finished or reset: its memory waits for the end of the
                                    #   loop turn (stream_free), so `s.ended` is a safe test
    uint8_t grpc                    # the request's content-type is application/grpc*
    HStream* next_deferred
    HttpHead head                   # the request head, owned
    int method
    uint8_t protocol                # HTTP_PROTO_*: the request's protocol (the codec's)
    RouteTable* routes              # its worker's route table when it started (one reference):
                                    #   route, clusters, per-route configs for its whole life
    const RouteEntry* route
    ClusterCfg* cluster
    UpstreamRequest upstream        # the router filter's (core/http/router_filter.pxi)
    RetryState* retry               # its retries and per-try timeout (core/http/retry.pxi);
                                    #   NULL: none (the route has no retry policy)
    uint8_t req_has_body            # a body follows the request head
    uint8_t req_received            # the whole request came from the downstream (its end event)
    uint8_t resp_started            # the response head went to the downstream
    int64_t req_content_length      # the request body's length as its head gave it; -1: unknown
    uint8_t keepalive               # the downstream connection may carry another request
    uint8_t upgrade                 # the request asks to switch protocols (WebSocket)
    uint8_t tunnel                  # 101 received: both connections are now a byte tunnel
    uint8_t tunnel_up_eof
    uint8_t tunnel_down_eof
    int status
    uint64_t start_ms
    uint64_t req_body_bytes         # request body bytes received (tunnels: bytes from the client)
    Timer timeout                   # the route's timeout (upstream request)
    char* rewritten_path            # the route's path rewrite, or NULL
    size_t rewritten_path_len
    FChain* fc                      # filter instances and state; NULL without http_filters
    int cluster_override            # a filter chose the cluster (index into routes.clusters), or -1
    uint8_t route_cleared           # a filter asked for the route to be recomputed
    uint8_t connect                 # a CONNECT request (tunnelled once the upstream connects)
    uint8_t expect_continue         # Expect: 100-continue, which we answer (and do not forward)
    # stream_info: what access logs print (core/access_log.pxi) and later filters read
    uint8_t resp_from_upstream      # the response head came from s.upstream.conn (RESP() can read it)
    uint8_t logged
    uint32_t response_flags         # RF_* (Envoy's UH, UF, UC, NR, UT, DC, SI, ...)
    uint64_t start_time_us          # wall clock at the start (CLOCK_REALTIME, microseconds)
    uint64_t request_end_ms         # monotonic: the whole request was received; 0: not yet
    uint64_t response_start_ms      # the response head went downstream; 0: not yet
    uint64_t end_ms
    uint64_t bytes_sent             # response body bytes sent downstream (tunnels: to the client)
    int cluster_index               # into routes.clusters; -1: none
    char client_ip[48]              # the trusted client address (use_remote_address/XFF)
    size_t client_ip_len
    uint16_t client_port            # 0 when the address came from x-forwarded-for
    uint8_t client_internal         # Envoy's "internal request" (core/http/stream_extras.pxi)
    uint8_t edge                    # use_remote_address and not internal: an edge request
    uint8_t envoy_hdrs              # the request has x-envoy-* fields (RequestFacts.envoy_hdrs)
    uint64_t timeout_ms             # the route timeout in force (x-envoy-upstream-rq-timeout-ms)
    uint64_t expected_timeout_ms    # what x-envoy-expected-rq-timeout-ms says; 0: not sent
    uint64_t service_time_ms        # the x-envoy-upstream-service-time we sent ...
    uint8_t service_time_set        # ... if we did
    char request_id[40]             # the x-request-id we generated, if any
    size_t request_id_len
    Timer idle_timer                # stream_idle_timeout (lazy: checks last_active_ms)
    Timer request_timer             # request_timeout
    uint64_t last_active_ms
    # gRPC and the route's stream duration (core/http/grpc.pxi)
    Timer duration_timer            # the route's max_stream_duration, or the grpc-timeout it allows
    uint64_t grpc_timeout_ms        # the grpc-timeout sent upstream in place of the request's ...
    uint8_t grpc_timeout_set        # ... when set
    uint8_t local_grpc_status       # a local reply's grpc-status + 1, chosen by its sender;
                                    #   0: mapped from the HTTP status
    # request mirroring (core/http/shadow.pxi)
    Shadow* shadows                 # a primary's shadows still fed its request body
    uint8_t shadow_role             # SHR_*: shadows considered (once per request), or s is one

cdef struct HConn:
    Endp down
    Worker* w
    HConn* prev
    HConn* next
    HConn* next_deferred
    ListenerCfg* cfg                # one reference; cfg.http is this connection's config
    CfgConn cfg_link                # in cfg's list of its connections (its drain closes them)
    const ServerCodecApi* codec     # the protocol it speaks (its state: h1)
    H1ServerConn h1                 # the HTTP/1.1 codec's state (codec_h1_server.pxi only)
    Chain in_buf
    Chain out_buf
    HStream* streams                # its active streams (HTTP/1: at most one), newest first
    uint32_t nstreams
    void* h2                        # the HTTP/2 server codec's state (codec_h2_server.pxi), or NULL
    uint32_t nrequests
    uint8_t closed
    uint8_t down_eof
    uint8_t close_after             # close once out_buf is flushed and no stream is active
    uint8_t drain_next              # draining: the next response says Connection: close
    uint8_t lingering               # answered and shut for writing: discarding what still comes
    uint8_t unread_request          # a request ended before all of it was read (_hconn_finish)
    uint8_t in_pump
    uint8_t repump
    uint8_t pump_queued             # on HttpWorker.pump_later (hconn_pump_later)
    HConn* pump_next
    Timer idle_timer
    Timer headers_timer
    char remote_ip[48]
    size_t remote_ip_len
    uint16_t remote_port
    uint8_t remote_loopback         # the peer is 127/8 or ::1
    uint64_t req_start_ms           # the first byte of the request being parsed arrived
    uint64_t req_start_us           # ... (wall clock, START_TIME)
    SplicePipe req_pipe             # request bodies: downstream -> upstream
    SplicePipe rsp_pipe             # response bodies: upstream -> downstream
    uint8_t codec_seen              # bytes arrived: counted in downstream_cx_http1_*
    uint8_t peer_gone               # a read or write failed: the peer reset (a remote close)
    uint8_t partial_rq              # the client closed inside a request head (an active stream)
    uint16_t local_port             # the listener's port (strip_matching_host_port only)
    uint64_t id                     # the debug lines' ConnectionId (core/debug_log.pxi)
    uint32_t streams_closed         # streams ended on it (Envoy's premature-reset check:
    uint32_t premature_resets       #   ... and of them, reset by the client within 1 s)


# ---------------------------------------------------------------- the codec seam
# A codec turns a connection's bytes into stream events and stream events back into bytes;
# the connection manager (downstream) and the upstream request (upstream) see it only
# through these tables. Decoding pushes events: server codecs call cm_on_request_begin,
# cm_on_request_headers, cm_on_request_data (while cm_request_data_wanted), cm_on_codec_error
# and cm_on_peer_closed (core/http/conn_manager.pxi, active_stream.pxi); client codecs call
# ur_on_response_headers, ur_on_response_data (while ur_response_data_wanted) and
# ur_on_response_error (core/http/router_filter.pxi). Encoding takes a head as a field list
# plus a BodyFraming, then body bytes and an end (with trailers). raw_* let bytes no filter
# reads bypass user space (splice) where the codec frames them as they are.

cdef struct ServerCodecApi:
    const char* name
    int stat_cx_total               # its http.<prefix>.downstream_cx_<protocol>_total (H_*)
    int stat_cx_active              # ... _active
    int stat_rq_total               # ... downstream_rq_<protocol>_total
    uint8_t multiplexed             # many streams at once (HTTP/2): decode delivers every
                                    #   stream's body itself; no splice, no tunnels
    void (*start)(HConn* c) noexcept nogil              # a new connection
    void (*release)(HConn* c) noexcept nogil            # the connection closes
    int (*decode)(HConn* c) noexcept nogil              # decode c.in_buf into events; -1: the
                                                        #   connection closed or the stream ended
    bint (*mid_message)(HConn* c) noexcept nogil        # part of a request has been read
    void (*stream_done)(HConn* c, HStream* s) noexcept nogil    # s ended (HTTP/1: read the next
                                                        #   request; it decides on close_after)
    void (*stream_reset)(HConn* c, HStream* s, bint refused) noexcept nogil   # the proxy abandons s
                                                        #   (HTTP/2: RST_STREAM; HTTP/1: unused)
    void (*flush)(HConn* c) noexcept nogil              # serialize what is queued into out_buf
                                                        #   (HTTP/2: frames; NULL: encode_* write directly)
    void (*drain)(HConn* c) noexcept nogil              # drain or idle (HTTP/2: GOAWAY twice); NULL:
                                                        #   the connection manager's HTTP/1 rule
    bint (*send_ok)(HConn* c, HStream* s) noexcept nogil    # may s queue more response body now?
    uint64_t (*raw_body_left)(HConn* c, HStream* s) noexcept nogil  # request body bytes still on
                                                        #   the socket that may be moved unread (0: none)
    bint (*raw_body_moved)(HConn* c, HStream* s, uint64_t n) noexcept nogil    # n of them were:
                                                        #   True when that completed the request
    int (*encode_headers)(HConn* c, HStream* s, int status, StrRef reason, PairList* l,
                          const BodyFraming* f, bint close) noexcept nogil
    int (*encode_data)(HConn* c, HStream* s, Chain* src, size_t n) noexcept nogil   # moves n bytes of src
    int (*encode_bytes)(HConn* c, HStream* s, const char* p, size_t n) noexcept nogil
    int (*encode_end)(HConn* c, HStream* s, PairList* trailers) noexcept nogil      # trailers may be NULL
    int (*encode_continue)(HConn* c, HStream* s) noexcept nogil     # 100 Continue
    bint (*raw_data_ok)(HConn* c, HStream* s) noexcept nogil        # response body bytes may go out as they are

cdef struct ClientCodecApi:
    const char* name
    void (*start)(UpConn* u, int method) noexcept nogil     # a request of `method` will be sent
    void (*release)(UpConn* u) noexcept nogil
    int (*decode)(UpConn* u) noexcept nogil             # decode u.in_buf into events; -1: the
                                                        #   stream ended (u may be gone)
    bint (*response_complete)(UpConn* u) noexcept nogil
    bint (*reusable)(UpConn* u) noexcept nogil          # may carry another request after this one
    uint64_t (*raw_body_left)(UpConn* u) noexcept nogil
    bint (*raw_body_moved)(UpConn* u, uint64_t n) noexcept nogil
    int (*encode_headers)(UpConn* u, StrRef method, StrRef target, PairList* l,
                          const BodyFraming* f) noexcept nogil
    int (*encode_data)(UpConn* u, Chain* src, size_t n) noexcept nogil
    int (*encode_end)(UpConn* u, PairList* trailers) noexcept nogil
    bint (*raw_data_ok)(UpConn* u) noexcept nogil


cdef enum:                          # ur_on_response_error: how an upstream response failed
    UE_PROTOCOL = 1                 # a malformed or unacceptable head
    UE_CLOSED_IN_HEAD = 2           # the upstream closed inside a response head
    UE_CLOSED_BEFORE_HEAD = 3       # ... before any byte of one
    UE_BODY_FRAMING = 4             # bad body framing
    UE_CLOSED_IN_BODY = 5           # the upstream closed before the body's end
    UE_RESET = 6                    # the upstream reset the stream (HTTP/2 RST_STREAM, or a
                                    #   GOAWAY that refused it): 503 UR, or a reset after the head


# The http.<stat_prefix>.* block (H_*, HTTP_STATS, HTTP_GAUGES): fastproxy/stats_table.py.


cdef struct PairList:               # field lines being assembled for a head we send
    FieldPair* v
    size_t n
    size_t cap


DEF SERVER_OVERWRITE = 0
DEF SERVER_APPEND_IF_ABSENT = 1
DEF SERVER_PASS_THROUGH = 2


# Envoy's wording of the local replies for an upstream that failed before the response
# headers (the text clients and logs know): one prefix, then the reset reason. OVERFLOW is
# a request a circuit breaker refused (sent with x-envoy-overloaded: true).
cdef extern from *:
    """
    #define FP_UPSTREAM_RESET(reason) \
        "upstream connect error or disconnect/reset before headers. reset reason: " reason
    static const char FP_UPSTREAM_PROTOCOL_ERROR[] = FP_UPSTREAM_RESET("protocol error");
    static const char FP_UPSTREAM_OVERFLOW[] = FP_UPSTREAM_RESET("overflow");
    static const char FP_UPSTREAM_CONNECT_TIMEOUT[] = FP_UPSTREAM_RESET("connection timeout");
    static const char FP_UPSTREAM_CONNECT_FAILURE[] = FP_UPSTREAM_RESET("connection failure");
    static const char FP_UPSTREAM_REMOTE_FAILURE[] = FP_UPSTREAM_RESET("remote connection failure");
    static const char FP_UPSTREAM_TERMINATION[] = FP_UPSTREAM_RESET("connection termination");
    static const char FP_UPSTREAM_REMOTE_RESET[] = FP_UPSTREAM_RESET("remote reset");
    static const char FP_UPSTREAM_REFUSED[] = FP_UPSTREAM_RESET("remote refused stream reset");
    static const char FP_NO_HEALTHY_UPSTREAM[] = "no healthy upstream";
    static const char FP_UPSTREAM_TIMEOUT[] = "upstream request timeout";
    """
    const char* UPSTREAM_PROTOCOL_ERROR "FP_UPSTREAM_PROTOCOL_ERROR"
    const char* UPSTREAM_OVERFLOW "FP_UPSTREAM_OVERFLOW"
    const char* UPSTREAM_CONNECT_TIMEOUT "FP_UPSTREAM_CONNECT_TIMEOUT"
    const char* UPSTREAM_CONNECT_FAILURE "FP_UPSTREAM_CONNECT_FAILURE"
    const char* UPSTREAM_REMOTE_FAILURE "FP_UPSTREAM_REMOTE_FAILURE"
    const char* UPSTREAM_TERMINATION "FP_UPSTREAM_TERMINATION"
    const char* UPSTREAM_REMOTE_RESET "FP_UPSTREAM_REMOTE_RESET"
    const char* UPSTREAM_REFUSED "FP_UPSTREAM_REFUSED"
    const char* NO_HEALTHY_UPSTREAM "FP_NO_HEALTHY_UPSTREAM"
    const char* UPSTREAM_TIMEOUT "FP_UPSTREAM_TIMEOUT"


DEF ROUTE_HEADERS_ON_STACK = 48     # router input entries kept on the stack (most requests)


DEF ROUTE_TEXT_ON_STACK = 8192      # a rewritten path or a Location this long costs no malloc
cdef const char* NO_MEMORY_BODY = "out of memory"    # the codec's 503 body too (core/http/codec_h1.pxi)
# Envoy's 507 when a request outgrows the retry buffer while it waits to be retried
cdef const char* RETRY_BUFFER_EXCEEDED = "exceeded request buffer limit while retrying upstream"


DEF PREMATURE_RESET_STREAMS = 500   # Envoy's overload.premature_reset_total_stream_count
DEF PREMATURE_RESET_MS = 1000       # ... premature_reset_min_stream_lifetime_seconds
DEF LINGER_MS = 1000                # how long a lingering close reads (Envoy's delayed_close_timeout)
