# The HTTP/2 server codec (nghttp2): a downstream connection's bytes (HConn.in_buf) become
# stream events for the connection manager, as the HTTP/1.1 codec's do, many streams at
# once; the responses it encodes become HEADERS, DATA and trailer frames in HConn.out_buf.
# Also the codec choice (codec_type, ALPN, the client preface).
#
# Per request stream (H2SStream, the stream's nghttp2 user data):
#   HEADERS (a request)   -> cm_on_request_begin, cm_on_request_headers(c, head, facts, cs):
#                            pseudo-headers become the method, target and Host (:authority);
#                            cookies are joined with "; "
#   DATA                  -> copied into cs.rx; cm_on_request_data while
#                            cm_request_data_wanted(s); the stream's window reopens by what
#                            was delivered (nghttp2_session_consume_stream), the connection's
#                            as bytes arrive (while the connection buffers less than its window)
#   trailers              -> with the last data event
#   RST_STREAM, or a stream error nghttp2 found -> cm_on_stream_reset(s, remote)
# and back: encode_headers submits the response (END_STREAM on the HEADERS when no body),
# encode_data/encode_bytes queue body bytes in cs.tx, which a data provider hands to
# nghttp2 without a copy (NGHTTP2_DATA_FLAG_NO_COPY: the send_data callback moves the
# slices into out_buf behind the 9-byte frame header); encode_end's trailers follow the last
# DATA frame. A stream whose tx is full stops its upstream (send_ok), the others go on.
#
# nghttp2's callbacks only record; _h2s_dispatch hands the events to the connection manager
# once nghttp2 has returned. An H2SStream outlives its HStream until nghttp2 closes the
# stream (its queued response may still be going out), and an HStream may end first (its
# response is queued): cs.s is NULL from then on.

cdef ServerCodecApi H2_SERVER_CODEC

DEF H2_STREAM_TX_LIMIT = 262144     # response bytes queued per stream before its upstream pauses
DEF H2_OUT_LIMIT = 262144           # frames serialized into out_buf ahead of the socket
DEF H2_PREFACE_LEN = 24

cdef enum:                          # HttpCfg.codec_type
    CODEC_AUTO = 0
    CODEC_HTTP1 = 1
    CODEC_HTTP2 = 2

cdef struct H2SStream:
    HConn* c
    HStream* s                      # the connection manager's stream; NULL before its head is
                                    #   handed over and once it is done with the stream
    int32_t id
    H2SStream* next                 # every stream of the connection (H2SConn.streams)
    H2SStream* prev
    H2SStream* pending_next         # on H2SConn's event list
    uint8_t pending
    HttpHead head                   # the request head being received
    HttpHead trailers               # the request's trailers (kept until the stream is freed)
    uint32_t hdr_bytes              # field bytes of the header block (max_request_headers_kb)
    uint32_t nregular               # its fields but the pseudo-headers (max_headers_count)
    uint32_t ncookies
    int64_t content_length
    uint8_t authority               # :authority came (a Host field is then not taken)
    uint8_t expect_continue         # expect: 100-continue (answered by the router, as HTTP/1's)
    uint8_t in_trailers             # a second header block: trailers
    uint8_t envoy_hdrs
    uint8_t head_ready              # the head is complete, to hand over
    uint8_t started                 # handed over (cm_on_request_headers)
    Chain rx                        # request body received, not delivered yet
    uint8_t rx_end                  # END_STREAM came
    uint8_t rx_end_delivered
    Chain tx                        # response body queued for DATA frames
    uint8_t tx_end                  # encode_end came
    uint8_t has_provider            # the response was submitted with a data provider
    uint8_t deferred                # the provider said NGHTTP2_ERR_DEFERRED (resume on data)
    uint8_t out_deferred            # ... because out_buf was full (resume when it drains)
    H2Nv trailers_out               # response trailers to send after the last DATA
    char* trailer_bytes             # ... the values they point at (owned copies)
    uint8_t reset_pending           # nghttp2 closed it with an error while cs.s was set
    uint8_t got_rst                 # the client sent RST_STREAM
    uint8_t closed                  # nghttp2 closed the stream (on_stream_close)
    uint8_t rst_after_end           # RST_STREAM(NO_ERROR) once the response's END_STREAM is out

cdef struct H2SConn:
    HConn* c
    nghttp2_session* session
    const H2Options* o
    H2SStream* streams
    H2SStream* pending              # streams with events to hand over (FIFO)
    H2SStream* pending_tail
    uint64_t rx_buffered            # request body bytes in the streams' rx
    uint64_t conn_unconsumed        # ... not yet given back to the connection window
    uint8_t goaway_phase            # 0; 1: shutdown notice sent; 2: the final GOAWAY
    uint8_t failed                  # a connection error: the session ends
    uint8_t goaway_error            # nghttp2 sent a GOAWAY with an error code of its own accord
    uint32_t fail_code              # the GOAWAY code of a connection error our callbacks found
    int flood                       # H2F_*: a flood limit was passed
    H2Flood fl
    Timer drain_timer               # the shutdown notice's drain time, then the final GOAWAY
    Timer ping_timer                # connection_keepalive.interval
    Timer ping_timeout              # connection_keepalive.timeout
    uint8_t ping_outstanding
    uint8_t out_deferred            # some stream waits for room in out_buf (H2SStream.out_deferred)


cdef nghttp2_session_callbacks* _h2s_callbacks = NULL


cdef inline H2SConn* _h2(HConn* c) noexcept nogil:
    return <H2SConn*>c.h2


cdef inline void _h2s_stat(HConn* c, int i, uint64_t n) noexcept nogil:
    cdef StatBlock* b = (<HttpCfg*>c.cfg.http).http2_stats
    if b != NULL:                   # (no http2.* block given: nothing is counted)
        stat_add(b, c.w, i, n)


cdef inline void _h2s_gauge_sub(HConn* c, int i, uint64_t n) noexcept nogil:
    cdef StatBlock* b = (<HttpCfg*>c.cfg.http).http2_stats
    if b != NULL:
        stat_sub(b, c.w, i, n)


# ---------------------------------------------------------------- the codec choice

cdef const ServerCodecApi* hconn_pick_codec(HConn* c, HttpCfg* h) noexcept nogil:
    """codec_type HTTP2: HTTP/2 from the first byte (prior knowledge). Otherwise HTTP/1.1
    until the first bytes say more (hconn_settle_codec)."""
    if h.codec_type == CODEC_HTTP2:
        return &H2_SERVER_CODEC
    return &H1_SERVER_CODEC


cdef int hconn_settle_codec(HConn* c) noexcept nogil:
    """codec_type AUTO, with the first bytes in c.in_buf: ALPN "h2" on TLS, or the HTTP/2
    client preface on plaintext (and on TLS without ALPN), makes the connection HTTP/2;
    anything else HTTP/1.1 (Envoy's choice). 1 when settled, 0 while the bytes so far are a
    beginning of the preface."""
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef const unsigned char* alpn = NULL
    cdef unsigned int alen = 0
    cdef char first[H2_PREFACE_LEN]
    cdef size_t n = 0, k
    cdef int i
    cdef SliceRef* r
    if h.codec_type != CODEC_AUTO:
        return 1
    if c.down.tls != NULL:
        SSL_get0_alpn_selected((<TlsConn*>c.down.tls).ssl, &alpn, &alen)
        if alen == 2 and memcmp(<const char*>alpn, b"h2", 2) == 0:
            _hconn_switch_to_h2(c)
            return 1
        if alen:
            return 1                    # http/1.1 (or another protocol): HTTP/1.1
    i = c.in_buf.head
    while n < H2_PREFACE_LEN and i < c.in_buf.head + c.in_buf.count:
        r = &c.in_buf.refs[i]
        k = r.len if r.len < H2_PREFACE_LEN - n else H2_PREFACE_LEN - n
        memcpy(first + n, r.s.data + r.off, k)
        n += k
        i += 1
    if memcmp(first, NGHTTP2_CLIENT_MAGIC, n) != 0:
        return 1
    if n == H2_PREFACE_LEN:
        _hconn_switch_to_h2(c)
        return 1
    return 1 if c.down_eof else 0


cdef void _hconn_switch_to_h2(HConn* c) noexcept nogil:
    c.codec.release(c)
    c.codec = &H2_SERVER_CODEC
    c.codec.start(c)


# ---------------------------------------------------------------- start and release

cdef void _h2s_start(HConn* c) noexcept nogil:
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef H2SConn* h2 = <H2SConn*>calloc(1, sizeof(H2SConn))
    c.h2 = h2
    if h2 == NULL:
        return                          # decode closes the connection
    h2.c = c
    h2.o = &h.h2
    timer_init(&h2.drain_timer, _h2s_drain_timer, c)
    timer_init(&h2.ping_timer, _h2s_ping_timer, c)
    timer_init(&h2.ping_timeout, _h2s_ping_timeout, c)
    if _h2s_callbacks == NULL or h.h2_option == NULL \
            or nghttp2_session_server_new2(&h2.session, _h2s_callbacks, h2,
                                           <nghttp2_option*>h.h2_option) != 0:
        h2.session = NULL
        return
    _h2s_stat(c, H2_NGHTTP2_DOWNSTREAM_CX, 1)
    if h2_submit_settings(h2.session, h2.o, True) != 0:
        nghttp2_session_del(h2.session)
        h2.session = NULL
        return
    if h2.o.keepalive_interval_ms:
        timer_arm(c.w, &h2.ping_timer, _h2s_ping_interval(c))


cdef void _h2s_stream_free(H2SConn* h2, H2SStream* cs) noexcept nogil:
    if cs.prev != NULL:
        cs.prev.next = cs.next
    else:
        h2.streams = cs.next
    if cs.next != NULL:
        cs.next.prev = cs.prev
    h2.rx_buffered -= cs.rx.length
    _h2s_gauge_sub(h2.c, H2_PENDING_SEND_BYTES, cs.tx.length)
    http_head_free(&cs.head)
    http_head_free(&cs.trailers)
    chain_free(&cs.rx)
    chain_free(&cs.tx)
    _h2s_trailers_free(cs)
    free(cs)


cdef void _h2s_release(HConn* c) noexcept nogil:
    cdef H2SConn* h2 = _h2(c)
    cdef H2SStream* cs
    if h2 == NULL:
        return
    timer_cancel(c.w, &h2.drain_timer)
    timer_cancel(c.w, &h2.ping_timer)
    timer_cancel(c.w, &h2.ping_timeout)
    if h2.session != NULL:
        nghttp2_session_del(h2.session)     # (calls no callback that reaches us)
    while h2.streams != NULL:
        cs = h2.streams
        if not cs.closed:
            _h2s_gauge_sub(c, H2_STREAMS_ACTIVE, 1)
        if cs.s != NULL:
            cs.s.codec_stream = NULL
        _h2s_stream_free(h2, cs)
    free(h2)
    c.h2 = NULL


cdef bint _h2s_mid_message(HConn* c) noexcept nogil:
    """Frames are still to go out (a finished stream's queued body, a GOAWAY)."""
    cdef H2SConn* h2 = _h2(c)
    return h2 != NULL and h2.session != NULL and not h2.failed and nghttp2_session_want_write(h2.session) != 0


# ---------------------------------------------------------------- nghttp2's callbacks
# (record only: no connection manager call from here)

cdef inline H2SStream* _h2s_cs(H2SConn* h2, int32_t id) noexcept nogil:
    return <H2SStream*>nghttp2_session_get_stream_user_data(h2.session, id)


cdef void _h2s_pend(H2SConn* h2, H2SStream* cs) noexcept nogil:
    if cs.pending:
        return
    cs.pending = 1
    cs.pending_next = NULL
    if h2.pending_tail != NULL:
        h2.pending_tail.pending_next = cs
    else:
        h2.pending = cs
    h2.pending_tail = cs


cdef ssize_t _h2s_send_cb(nghttp2_session* session, const uint8_t* data, size_t length,
                          int flags, void* ud) noexcept nogil:
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef HConn* c = h2.c
    if c.out_buf.length >= H2_OUT_LIMIT and not h2.failed:
        return NGHTTP2_ERR_WOULDBLOCK
    if chain_append(&c.out_buf, <const char*>data, length) < 0:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return <ssize_t>length


cdef int _h2s_send_data_cb(nghttp2_session* session, nghttp2_frame* frame, const uint8_t* framehd,
                           size_t length, nghttp2_data_source* source, void* ud) noexcept nogil:
    """A DATA frame: its header, then `length` bytes moved (not copied) from the stream's tx.
    Never NGHTTP2_ERR_WOULDBLOCK: nghttp2 would call again later for the same bytes, which a
    reset of the stream may have dropped from tx meanwhile; out_buf is bounded by the data
    provider instead (_h2s_data_read_cb), one frame past H2_OUT_LIMIT at most."""
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef HConn* c = h2.c
    cdef H2SStream* cs = <H2SStream*>source.ptr
    if chain_append(&c.out_buf, <const char*>framehd, H2_FRAME_HEADER) < 0 \
            or chain_move_bytes(&c.out_buf, &cs.tx, length) < 0:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    _h2s_gauge_sub(c, H2_PENDING_SEND_BYTES, length)
    if cs.s != NULL:
        cs.s.last_active_ms = c.w.now
    return 0


cdef ssize_t _h2s_data_read_cb(nghttp2_session* session, int32_t stream_id, uint8_t* buf,
                               size_t length, uint32_t* data_flags, nghttp2_data_source* source,
                               void* ud) noexcept nogil:
    """How much of the stream's tx the next DATA frame carries (sent by _h2s_send_data_cb).
    None while out_buf is full: the stream waits (_h2s_flush resumes it)."""
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef H2SStream* cs = <H2SStream*>source.ptr
    cdef size_t n = cs.tx.length if cs.tx.length < length else length
    if h2.c.out_buf.length >= H2_OUT_LIMIT and not h2.failed:
        cs.deferred = 1
        cs.out_deferred = 1
        h2.out_deferred = 1
        return NGHTTP2_ERR_DEFERRED
    if n == 0 and not cs.tx_end:
        cs.deferred = 1
        return NGHTTP2_ERR_DEFERRED
    if n:
        data_flags[0] |= NGHTTP2_DATA_FLAG_NO_COPY
    if cs.tx_end and n == cs.tx.length:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
        if cs.trailers_out.n:
            data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
            if nghttp2_submit_trailer(session, stream_id, cs.trailers_out.nv, cs.trailers_out.n) != 0:
                data_flags[0] &= ~(<uint32_t>NGHTTP2_DATA_FLAG_NO_END_STREAM)
            _h2s_trailers_free(cs)      # (nghttp2 copied them)
    return <ssize_t>n


cdef int _h2s_begin_headers_cb(nghttp2_session* session, const nghttp2_frame* frame, void* ud) noexcept nogil:
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef H2SStream* cs
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    cs = <H2SStream*>calloc(1, sizeof(H2SStream))
    if cs == NULL:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE       # the stream is reset
    cs.c = h2.c
    cs.id = frame.hd.stream_id
    cs.content_length = -1
    if nghttp2_session_set_stream_user_data(session, cs.id, cs) != 0:
        free(cs)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    cs.next = h2.streams
    if h2.streams != NULL:
        h2.streams.prev = cs
    h2.streams = cs
    _h2s_stat(h2.c, H2_STREAMS_ACTIVE, 1)
    h2_flood_stream_open(&h2.fl)
    return 0


cdef int _h2s_header_cb(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                        size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                        void* ud) noexcept nogil:
    """One field of a request's header block (nghttp2 has checked it: pseudo-headers first
    and known, lowercase names, no connection-specific field). Limits are the connection
    manager's, per stream: past max_request_headers_kb or max_headers_count the stream is
    reset (Envoy: http2.header_overflow)."""
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef HConn* c = h2.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef H2SStream* cs = _h2s_cs(h2, frame.hd.stream_id)
    cdef HttpHead* hd
    cdef const char* nm = <const char*>name
    cdef const char* vl = <const char*>value
    cdef uint32_t off
    if cs == NULL or frame.hd.type != NGHTTP2_HEADERS:
        return 0
    if frame.headers.cat == NGHTTP2_HCAT_HEADERS:
        cs.in_trailers = 1
    hd = &cs.trailers if cs.in_trailers else &cs.head
    cs.hdr_bytes += <uint32_t>(namelen + valuelen)
    if not (namelen and nm[0] == b':'):
        cs.nregular += 1
    # (Envoy's names: header_list_size_too_large for the size, header_overflow for the count)
    if cs.hdr_bytes > h.max_head:
        _h2s_stat(c, H2_HEADER_LIST_TOO_LARGE, 1)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    if cs.nregular > h.max_fields:
        _h2s_stat(c, H2_HEADER_OVERFLOW, 1)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    if namelen and nm[0] == b':':
        if cs.in_trailers:
            return 0                    # (nghttp2 refuses pseudo-headers in trailers)
        if namelen == 7 and memcmp(nm, b":method", 7) == 0:
            if h2_head_append(hd, value, valuelen, &off) < 0:
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
            hd.method_off = off
            hd.method_len = <uint32_t>valuelen
            hd.method = <uint8_t>_h1_method_id(value, valuelen)
        elif namelen == 5 and memcmp(nm, b":path", 5) == 0:
            if h2_head_append(hd, value, valuelen, &off) < 0:
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
            hd.target_off = off
            hd.target_len = <uint32_t>valuelen
        elif namelen == 10 and memcmp(nm, b":authority", 10) == 0:
            # The Host of the request (RFC 9113 8.3.1); a host field besides is dropped.
            cs.authority = 1
            if http_head_add_field(hd, "host", 4, vl, valuelen) < 0:
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        return 0                        # (:scheme: the connection's own is used, as for HTTP/1)
    if memchr(nm, b'_', namelen) != NULL and h.underscores != US_ALLOW:
        if h.underscores == US_REJECT:
            _h2s_stat(c, H2_REJECTED_UNDERSCORES, 1)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE   # Envoy resets the stream
        _h2s_stat(c, H2_DROPPED_UNDERSCORES, 1)
        return 0
    if not cs.in_trailers:
        if namelen == 4 and memcmp(nm, b"host", 4) == 0 and cs.authority:
            return 0
        if namelen == 6 and memcmp(nm, b"cookie", 6) == 0:
            cs.ncookies += 1
        elif namelen == 14 and memcmp(nm, b"content-length", 14) == 0:
            cs.content_length = (<int64_t>_parse_u64(vl, valuelen)
                                 if 0 < valuelen <= 18 and _all_digits(vl, valuelen) else -1)
        elif namelen == 6 and memcmp(nm, b"expect", 6) == 0 and _ieq(vl, valuelen, "100-continue"):
            cs.expect_continue = 1
        if namelen > 8 and memcmp(nm, b"x-envoy-", 8) == 0:
            cs.envoy_hdrs = 1
    if http_head_add_field(hd, nm, namelen, vl, valuelen) < 0:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    return 0


cdef int _h2s_begin_frame_cb(nghttp2_session* session, const nghttp2_frame_hd* hd, void* ud) noexcept nogil:
    """Every inbound frame header, for the flood limits (the section in codec_h2.pxi)."""
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef int flood = h2_flood_frame_begin(&h2.fl, h2.o, hd)
    if flood != H2F_NONE:
        h2.flood = flood
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2s_frame_recv_cb(nghttp2_session* session, const nghttp2_frame* frame, void* ud) noexcept nogil:
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef HConn* c = h2.c
    cdef H2SStream* cs = NULL
    cdef uint8_t t = frame.hd.type
    cdef int flood = h2_flood_frame_recv(&h2.fl, h2.o, frame)
    if flood != H2F_NONE:
        h2.flood = flood
        return NGHTTP2_ERR_CALLBACK_FAILURE
    if frame.hd.stream_id:
        cs = _h2s_cs(h2, frame.hd.stream_id)
    if t == NGHTTP2_HEADERS:
        if cs == NULL:
            _h2s_stat(c, H2_HEADERS_CB_NO_STREAM, 1)
            return 0
        if frame.headers.cat == NGHTTP2_HCAT_REQUEST:
            cs.head_ready = 1
        elif cs.in_trailers:
            _h2s_stat(c, H2_TRAILERS, 1)
        if frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
            cs.rx_end = 1
        _h2s_pend(h2, cs)
    elif t == NGHTTP2_DATA:
        if cs != NULL and frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
            cs.rx_end = 1
            _h2s_pend(h2, cs)
    elif t == NGHTTP2_RST_STREAM:
        _h2s_stat(c, H2_RX_RESET, 1)
        if cs != NULL:
            cs.got_rst = 1
    elif t == NGHTTP2_PING and frame.hd.flags & NGHTTP2_FLAG_ACK:
        if h2.ping_outstanding:
            h2.ping_outstanding = 0
            timer_cancel(c.w, &h2.ping_timeout)
    return 0


cdef int _h2s_data_chunk_cb(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                            const uint8_t* data, size_t len, void* ud) noexcept nogil:
    """Request body bytes: into the stream's rx (copied: they lie in in_buf's slice, which
    nghttp2 is reading). The connection window reopens at once while the connection
    buffers less than its own window (a stream stalls only itself, and what one connection
    buffers stays bounded); the stream's as its receiver takes the bytes."""
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef H2SStream* cs = _h2s_cs(h2, stream_id)
    if cs == NULL or (cs.started and cs.s == NULL):
        nghttp2_session_consume(session, stream_id, len)     # nobody reads it: dropped
        return 0
    if chain_append(&cs.rx, <const char*>data, len) < 0:
        nghttp2_session_consume(session, stream_id, len)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    h2.rx_buffered += len
    if h2.rx_buffered <= h2.o.initial_connection_window_size and not h2.conn_unconsumed:
        nghttp2_session_consume_connection(session, len)
    else:
        h2.conn_unconsumed += len
    if cs.s != NULL:
        cs.s.last_active_ms = h2.c.w.now
    _h2s_pend(h2, cs)
    return 0


cdef int _h2s_stream_close_cb(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                              void* ud) noexcept nogil:
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef H2SStream* cs = _h2s_cs(h2, stream_id)
    if cs == NULL:
        return 0
    cs.closed = 1
    # (nghttp2 may keep the closed stream a while, for priorities: it must not hand cs out
    # any more, which _h2s_sweep frees)
    nghttp2_session_set_stream_user_data(session, stream_id, NULL)
    _h2s_gauge_sub(h2.c, H2_STREAMS_ACTIVE, 1)
    h2_flood_stream_closed(&h2.fl)
    if not cs.started or (cs.s != NULL and not (error_code == NGHTTP2_NO_ERROR and cs.tx_end)):
        # A stream the connection manager has, whose response did not go out whole: reset
        # (by the client, or by nghttp2 for a stream error). (A response sent whole while
        # the stream waits for the rest of its upstream's is no reset.)
        cs.reset_pending = 1
    _h2s_pend(h2, cs)
    return 0


cdef int _h2s_frame_send_cb(nghttp2_session* session, const nghttp2_frame* frame, void* ud) noexcept nogil:
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef HConn* c = h2.c
    cdef H2SStream* cs
    cdef uint8_t t = frame.hd.type
    cdef int flood = h2_flood_frame_sent(&h2.fl, h2.o, frame, nghttp2_session_get_outbound_queue_size(session))
    if flood != H2F_NONE and h2.flood == H2F_NONE and not h2.failed:
        h2.flood = flood
    if t == NGHTTP2_GOAWAY:
        _h2s_stat(c, H2_GOAWAY_SENT, 1)
        if frame.goaway.error_code != NGHTTP2_NO_ERROR and not h2.failed:
            h2.goaway_error = 1         # nghttp2 ended the session itself (_h2s_flush)
    elif t == NGHTTP2_RST_STREAM:
        _h2s_stat(c, H2_TX_RESET, 1)
        if frame.rst_stream.error_code == NGHTTP2_REFUSED_STREAM:
            _h2s_stat(c, H2_STREAM_REFUSED_ERRORS, 1)
    elif (t == NGHTTP2_DATA or t == NGHTTP2_HEADERS) and frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
        cs = _h2s_cs(h2, frame.hd.stream_id)
        if cs != NULL and cs.rst_after_end and not cs.closed:
            # The response is complete and the request was not read to its end: as Envoy,
            # the rest of it is refused (RST_STREAM NO_ERROR, RFC 9113 8.1).
            cs.rst_after_end = 0
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, cs.id, NGHTTP2_NO_ERROR)
    return 0


cdef int _h2s_invalid_frame_cb(nghttp2_session* session, const nghttp2_frame* frame,
                               int lib_error_code, void* ud) noexcept nogil:
    """A frame nghttp2 refused. As Envoy, the connection ends (GOAWAY with the RFC's code),
    but for an invalid HTTP message (malformed fields) under
    override_stream_error_on_invalid_http_message: then only its stream (nghttp2's reset).
    A malformed request counts as a request reset (Envoy had made its stream)."""
    cdef H2SConn* h2 = <H2SConn*>ud
    cdef H2SStream* cs
    if lib_error_code == NGHTTP2_ERR_HTTP_HEADER or lib_error_code == NGHTTP2_ERR_HTTP_MESSAGING:
        _h2s_stat(h2.c, H2_RX_MESSAGING_ERROR, 1)
        if h2.o.override_stream_error_on_invalid_http_message:
            # (only the stream is reset; one whose head never became a stream is counted
            # here, _h2s_fail counts them on a connection error)
            cs = _h2s_cs(h2, frame.hd.stream_id) if frame.hd.type == NGHTTP2_HEADERS else NULL
            if cs != NULL and not cs.started:
                cs.started = 1
                stat_add((<HttpCfg*>h2.c.cfg.http).stats, h2.c.w, H_RQ_RX_RESET, 1)
            return 0
    if lib_error_code == NGHTTP2_ERR_FLOW_CONTROL:
        h2.fail_code = NGHTTP2_FLOW_CONTROL_ERROR
    elif lib_error_code == NGHTTP2_ERR_FRAME_SIZE_ERROR:
        h2.fail_code = NGHTTP2_FRAME_SIZE_ERROR
    elif lib_error_code == NGHTTP2_ERR_STREAM_CLOSED:
        h2.fail_code = NGHTTP2_STREAM_CLOSED
    elif lib_error_code == NGHTTP2_ERR_REFUSED_STREAM:
        return 0                        # (over max_concurrent_streams before our SETTINGS' ACK)
    return NGHTTP2_ERR_CALLBACK_FAILURE


# ---------------------------------------------------------------- handing events over

cdef void _h2s_deliver(HConn* c, H2SConn* h2, H2SStream* cs) noexcept nogil:
    """The stream's received body (and end, trailers) to its receiver, as far as it wants
    it; what it took reopens the stream's window."""
    cdef HStream* s = cs.s
    cdef size_t n
    cdef bint end
    cdef int rc
    if s == NULL:
        return
    while (cs.rx.length or (cs.rx_end and not cs.rx_end_delivered)) and cm_request_data_wanted(s):
        n = cs.rx.length
        end = cs.rx_end != 0
        _h2s_consumed(h2, cs, n)
        cs.rx_end_delivered = end
        rc = cm_on_request_data(s, &cs.rx, n, end, &cs.trailers if end and cs.trailers.nfields else NULL)
        if c.closed or rc < 0 or s.ended:
            return


cdef void _h2s_consumed(H2SConn* h2, H2SStream* cs, size_t n) noexcept nogil:
    """n bytes of cs.rx are taken: the stream's window reopens by them, and the connection's
    by what it held back."""
    if n == 0:
        return
    h2.rx_buffered -= n
    if not cs.closed:
        nghttp2_session_consume_stream(h2.session, cs.id, n)
    if h2.conn_unconsumed and h2.rx_buffered < h2.o.initial_connection_window_size:
        nghttp2_session_consume_connection(h2.session, h2.conn_unconsumed)
        h2.conn_unconsumed = 0


cdef void _h2s_head_over(HConn* c, H2SConn* h2, H2SStream* cs) noexcept nogil:
    """The request head is complete: the connection manager's stream starts."""
    cdef RequestFacts f
    cdef HttpHead head
    cdef HStream* s
    cdef size_t hn = 0
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cs.started = 1
    cs.head_ready = 0
    memset(&f, 0, sizeof(RequestFacts))
    f.end_stream = cs.rx_end and cs.rx.length == 0
    if f.end_stream:
        cs.rx_end_delivered = 1
    f.keepalive = 1
    f.protocol = HTTP_PROTO_20
    f.connect = cs.head.method == METHOD_CONNECT
    f.envoy_hdrs = cs.envoy_hdrs
    f.content_length = cs.content_length
    f.expect_continue = cs.expect_continue and not f.end_stream
    if _h2s_join_cookies(&cs.head, cs.ncookies) < 0:
        nghttp2_submit_rst_stream(h2.session, NGHTTP2_FLAG_NONE, cs.id, NGHTTP2_INTERNAL_ERROR)
        return
    cs.head.minor = 1
    # A request without a Host (no :authority nor host) or a path: refused as HTTP/1's is.
    f.target = 0 if (cs.authority or _head_field(&cs.head, "host", &hn) != NULL) \
        and (cs.head.target_len or f.connect) else -1
    head = cs.head
    memset(&cs.head, 0, sizeof(HttpHead))
    cm_on_request_begin(c)
    s = cm_on_request_headers(c, &head, &f, cs)
    if c.closed or s == NULL:
        return
    if not s.ended:
        cs.s = s
    if h.max_requests_per_connection and c.nrequests >= h.max_requests_per_connection:
        _h2s_drain(c)                   # Envoy: the connection drains (GOAWAY) at the limit


cdef int _h2s_join_cookies(HttpHead* hd, uint32_t ncookies) noexcept nogil:
    """HTTP/2 splits Cookie into one field per crumb (RFC 9113 8.2.3); an HTTP/1.1 upstream
    and the filters get them joined with "; ", as Envoy joins them."""
    cdef uint32_t i, k = 0, first = 0
    cdef size_t total = 0
    cdef char* joined
    cdef size_t at = 0
    cdef uint32_t off
    if ncookies < 2:
        return 0
    for i in range(hd.nfields):
        if hd.fields[i].name_len == 6 and memcmp(hd.buf + hd.fields[i].name_off, b"cookie", 6) == 0:
            total += hd.fields[i].value_len + 2
    joined = <char*>malloc(total)
    if joined == NULL:
        return -1
    for i in range(hd.nfields):
        if hd.fields[i].name_len == 6 and memcmp(hd.buf + hd.fields[i].name_off, b"cookie", 6) == 0:
            if at:
                joined[at] = b';'
                joined[at + 1] = b' '
                at += 2
            memcpy(joined + at, hd.buf + hd.fields[i].value_off, hd.fields[i].value_len)
            at += hd.fields[i].value_len
            continue
        hd.fields[k] = hd.fields[i]
        k += 1
    hd.nfields = k
    i = <uint32_t>http_head_add_field(hd, "cookie", 6, joined, at)
    free(joined)
    return <int>i


cdef void _h2s_dispatch(HConn* c) noexcept nogil:
    """Hand what nghttp2 reported to the connection manager: new requests, body, resets.
    Returns with c possibly closed (then nothing of c.h2 is touched again)."""
    cdef H2SConn* h2 = _h2(c)
    cdef H2SStream* cs
    cdef HStream* s
    while h2.pending != NULL:
        cs = h2.pending
        h2.pending = cs.pending_next
        if h2.pending == NULL:
            h2.pending_tail = NULL
        cs.pending = 0
        if cs.head_ready and not cs.started and not cs.reset_pending:
            _h2s_head_over(c, h2, cs)
            if c.closed:
                return
        if cs.reset_pending:
            cs.reset_pending = 0
            if not cs.started and cs.got_rst:
                # Reset by the client before its head was handed over (the same read):
                # no stream was made, but it counts as a request reset, and a premature one
                # (the rapid reset attack: hconn_premature_resets).
                cs.started = 1
                cm_on_early_reset(c)
                if c.closed:
                    return
            cs.started = 1
            s = cs.s
            cs.s = NULL
            if s != NULL:
                s.codec_stream = NULL
                _h2s_consumed(h2, cs, cs.rx.length)
                chain_clear(&cs.rx)
                cm_on_stream_reset(s, cs.got_rst)
                if c.closed:
                    return
        elif cs.s != NULL:
            _h2s_deliver(c, h2, cs)
            if c.closed:
                return
    _h2s_sweep(h2)


cdef void _h2s_sweep(H2SConn* h2) noexcept nogil:
    """Free the streams nghttp2 closed that nobody refers to any more."""
    cdef H2SStream* cs = h2.streams
    cdef H2SStream* nxt
    while cs != NULL:
        nxt = cs.next
        if cs.closed and cs.s == NULL and not cs.pending and not cs.reset_pending:
            _h2s_consumed(h2, cs, cs.rx.length)     # (what the connection window holds back)
            chain_clear(&cs.rx)
            _h2s_stream_free(h2, cs)
        cs = nxt


cdef void _h2s_fail(HConn* c, int lib_error) noexcept nogil:
    """A connection error: GOAWAY (nghttp2's own for protocol errors, ENHANCE_YOUR_CALM for
    a flood), written out, then the connection closes with its streams reset."""
    cdef H2SConn* h2 = _h2(c)
    cdef uint32_t code = h2.fail_code if h2.fail_code else NGHTTP2_PROTOCOL_ERROR
    cdef H2SStream* cs = h2.streams
    while cs != NULL:
        # A request whose head never became a stream (malformed, or cut by the error) is
        # a request reset all the same: Envoy made its stream at the first HEADERS frame.
        if not cs.started and not cs.closed:
            cs.started = 1
            stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_RQ_RX_RESET, 1)
        cs = cs.next
    if h2.flood != H2F_NONE:
        _h2s_stat(c, h2_flood_stat(h2.flood), 1)
        code = NGHTTP2_ENHANCE_YOUR_CALM
    elif lib_error == NGHTTP2_ERR_FLOODED:
        _h2s_stat(c, H2_OUTBOUND_CONTROL_FLOOD, 1)
        code = NGHTTP2_ENHANCE_YOUR_CALM
    if fp_log_level <= LOG_DEBUG:
        fp_log(c.w.index, "http2", c.id, 0, "connection error: %s", nghttp2_strerror(lib_error))
    h2.failed = 1
    if not h2.goaway_error and (h2.flood != H2F_NONE or lib_error == NGHTTP2_ERR_FLOODED
                                or lib_error == NGHTTP2_ERR_CALLBACK_FAILURE):
        nghttp2_session_terminate_session(h2.session, code)
    nghttp2_session_send(h2.session)    # the GOAWAY (failed: past the out_buf limit too)
    chain_clear(&c.in_buf)
    # Closed once the GOAWAY is written, or after LINGER_MS for a peer that does not read.
    timer_cancel(c.w, &c.idle_timer)
    timer_init(&c.idle_timer, _hconn_linger_end, c)
    timer_arm(c.w, &c.idle_timer, LINGER_MS)
    while c.streams != NULL:
        stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_RQ_RX_RESET, 1)
        if c.streams.codec_stream != NULL:
            (<H2SStream*>c.streams.codec_stream).s = NULL
            c.streams.codec_stream = NULL
        _stream_abort(c.streams, RF_DPE)
    c.close_after = 1
    stat_add((<HttpCfg*>c.cfg.http).stats, c.w, H_CX_PROTOCOL_ERROR, 1)


# ---------------------------------------------------------------- decode and flush

cdef int _h2s_decode(HConn* c) noexcept nogil:
    """Feed c.in_buf to nghttp2, hand the events over, deliver what the streams' receivers
    want. -1 when the connection closed."""
    cdef H2SConn* h2 = _h2(c)
    cdef H2SStream* cs
    cdef H2SStream* nxt
    cdef SliceRef* r
    cdef ssize_t rv
    if h2 == NULL or h2.session == NULL:
        hconn_close(c, True)            # (no memory for the session)
        return -1
    if h2.failed:
        chain_clear(&c.in_buf)
        return 0
    while c.in_buf.length:
        r = &c.in_buf.refs[c.in_buf.head]
        rv = nghttp2_session_mem_recv(h2.session, <const uint8_t*>(r.s.data + r.off), r.len)
        if rv < 0 or h2.flood != H2F_NONE:
            _h2s_dispatch(c)
            if c.closed:
                return -1
            _h2s_fail(c, <int>rv if rv < 0 else NGHTTP2_ERR_CALLBACK_FAILURE)
            return 0
        chain_drain(&c.in_buf, <size_t>rv)
        _h2s_dispatch(c)
        if c.closed:
            return -1
    cs = h2.streams
    while cs != NULL:
        nxt = cs.next                   # (only _h2s_sweep frees, below)
        if cs.s != NULL and (cs.rx.length or (cs.rx_end and not cs.rx_end_delivered)):
            _h2s_deliver(c, h2, cs)
            if c.closed:
                return -1
        cs = nxt
    _h2s_sweep(h2)
    if c.down_eof and c.in_buf.length == 0:
        cm_on_peer_closed(c, False)     # streams still open end with the connection (DC)
        return -1
    # (A client's GOAWAY does not close the connection: as Envoy, it stays until the
    # client closes it or the idle timeout drains it; PINGs are still answered.)
    return 0


cdef void _h2s_flush(HConn* c) noexcept nogil:
    """Serialize what nghttp2 has queued into out_buf (up to H2_OUT_LIMIT ahead of the
    socket)."""
    cdef H2SConn* h2 = _h2(c)
    cdef int rv
    if h2 == NULL or h2.session == NULL or h2.failed:
        return
    if c.out_buf.length == 0:
        h2_flood_out_drained(&h2.fl)
    if h2.out_deferred and c.out_buf.length < H2_OUT_LIMIT:
        _h2s_resume_out_deferred(h2)
    rv = nghttp2_session_send(h2.session)
    if rv < 0 or h2.flood != H2F_NONE or h2.goaway_error:
        # (nghttp2's own GOAWAY for a protocol error it found: the connection ends as for
        # one our callbacks found; it is out already)
        _h2s_fail(c, rv if rv < 0 else NGHTTP2_ERR_CALLBACK_FAILURE)
        return
    if h2.pending != NULL:
        _h2s_dispatch(c)
        if c.closed:
            return
    else:
        _h2s_sweep(h2)
    if h2.goaway_phase == 2 and c.nstreams == 0:
        c.close_after = 1


# ---------------------------------------------------------------- encoding

cdef int _h2s_encode_headers(HConn* c, HStream* s, int status, StrRef reason, PairList* l,
                             const BodyFraming* f, bint close) noexcept nogil:
    """The response HEADERS (END_STREAM on them when no body follows: no body, a HEAD
    request). HTTP/2 has no reason phrase and no connection fields."""
    cdef H2SConn* h2 = _h2(c)
    cdef H2SStream* cs = <H2SStream*>s.codec_stream if s != NULL else NULL
    cdef FieldPair first[2]
    cdef char st[4]
    cdef char lenbuf[24]
    cdef size_t nfirst = 1
    cdef int k, rv
    cdef H2Nv nv
    cdef nghttp2_data_provider prd
    if cs == NULL or h2 == NULL or h2.session == NULL or f.kind == BODY_TUNNEL:
        return -1                       # (no stream: a connection-level reply; no tunnels here)
    if cs.closed:
        return 0                        # the client reset it: the reset event follows
    st[0] = <char>(48 + (status // 100) % 10)
    st[1] = <char>(48 + (status // 10) % 10)
    st[2] = <char>(48 + status % 10)
    first[0].name = _cs(":status")
    first[0].value = _s(st, 3)
    if f.kind == BODY_LENGTH or (f.kind == BODY_NONE and f.length_text.p != NULL):
        first[1].name = _cs("content-length")
        if f.length_text.p != NULL:
            first[1].value = f.length_text
        else:
            first[1].value = _s(lenbuf, _u64_text(f.length, lenbuf))
        nfirst = 2
    if h2_nv_from_pairs(&nv, first, nfirst, l, False) < 0:
        return -1
    # (a known empty body too: Envoy ends the stream on the HEADERS, content-length: 0)
    cs.has_provider = f.kind != BODY_NONE and s.method != METHOD_HEAD and status != 204 and status != 304 \
        and not (f.kind == BODY_LENGTH and f.length == 0 and (f.length_text.p == NULL or
                                                              (f.length_text.n == 1 and f.length_text.p[0] == b'0')))
    prd.source.ptr = cs
    prd.read_callback = _h2s_data_read_cb
    rv = nghttp2_submit_response(h2.session, cs.id, nv.nv, nv.n, &prd if cs.has_provider else NULL)
    h2_nv_free(&nv)
    return 0 if rv == 0 else -1


cdef void _h2s_resume_out_deferred(H2SConn* h2) noexcept nogil:
    """out_buf has room again: the streams whose DATA waited for it go on."""
    cdef H2SStream* cs = h2.streams
    h2.out_deferred = 0
    while cs != NULL:
        if cs.out_deferred:
            cs.out_deferred = 0
            if not cs.closed:
                _h2s_resume(h2, cs)
        cs = cs.next


cdef inline void _h2s_resume(H2SConn* h2, H2SStream* cs) noexcept nogil:
    if cs.deferred:
        cs.deferred = 0
        nghttp2_session_resume_data(h2.session, cs.id)


cdef int _h2s_encode_data(HConn* c, HStream* s, Chain* src, size_t n) noexcept nogil:
    cdef H2SStream* cs = <H2SStream*>s.codec_stream
    if cs == NULL or not cs.has_provider or cs.closed:
        chain_drain(src, n)             # (an answer to HEAD, or a stream the client reset)
        return 0 if cs != NULL else -1
    if chain_move_bytes(&cs.tx, src, n) < 0:
        return -1
    _h2s_stat(c, H2_PENDING_SEND_BYTES, n)
    _h2s_resume(_h2(c), cs)
    return 0


cdef int _h2s_encode_bytes(HConn* c, HStream* s, const char* p, size_t n) noexcept nogil:
    cdef H2SStream* cs = <H2SStream*>s.codec_stream if s != NULL else NULL
    if cs == NULL:
        return -1
    if not cs.has_provider or cs.closed or n == 0:
        return 0
    if chain_append(&cs.tx, p, n) < 0:
        return -1
    _h2s_stat(c, H2_PENDING_SEND_BYTES, n)
    _h2s_resume(_h2(c), cs)
    return 0


cdef void _h2s_trailers_free(H2SStream* cs) noexcept nogil:
    h2_nv_free(&cs.trailers_out)
    free(cs.trailer_bytes)
    cs.trailer_bytes = NULL


cdef int _h2s_encode_end(HConn* c, HStream* s, PairList* trailers) noexcept nogil:
    """The response's end; its trailers go out after the last DATA frame (the data provider
    submits them when it reaches the end)."""
    cdef H2SStream* cs = <H2SStream*>s.codec_stream if s != NULL else NULL
    cdef size_t i, total = 0, at = 0
    cdef PairList own
    if cs == NULL:
        return -1
    cs.tx_end = 1
    if trailers != NULL and trailers.n and cs.has_provider and not cs.closed:
        # nghttp2 copies them only when they are submitted: keep a copy until then.
        for i in range(trailers.n):
            total += trailers.v[i].value.n
        cs.trailer_bytes = <char*>malloc(total + 1)
        own.v = <FieldPair*>malloc(trailers.n * sizeof(FieldPair))
        own.n = trailers.n
        own.cap = trailers.n
        if cs.trailer_bytes == NULL or own.v == NULL:
            free(own.v)
            _h2s_trailers_free(cs)
            return -1
        for i in range(trailers.n):
            memcpy(cs.trailer_bytes + at, trailers.v[i].value.p, trailers.v[i].value.n)
            own.v[i].name = trailers.v[i].name
            own.v[i].value = _s(cs.trailer_bytes + at, trailers.v[i].value.n)
            at += trailers.v[i].value.n
        # (names: lowercased into the nv array's own block)
        if h2_nv_from_pairs(&cs.trailers_out, NULL, 0, &own, False) < 0:
            free(own.v)
            _h2s_trailers_free(cs)
            return -1
        free(own.v)
    if cs.has_provider:
        _h2s_resume(_h2(c), cs)
    return 0


cdef int _h2s_encode_continue(HConn* c, HStream* s) noexcept nogil:
    cdef H2SConn* h2 = _h2(c)
    cdef H2SStream* cs = <H2SStream*>s.codec_stream if s != NULL else NULL
    cdef nghttp2_nv nv
    if cs == NULL or cs.closed:
        return 0
    nv.name = <uint8_t*>":status"
    nv.namelen = 7
    nv.value = <uint8_t*>"100"
    nv.valuelen = 3
    nv.flags = NGHTTP2_NV_FLAG_NONE
    return 0 if nghttp2_submit_headers(h2.session, NGHTTP2_FLAG_NONE, cs.id, NULL, &nv, 1, NULL) >= 0 else -1


cdef bint _h2s_send_ok(HConn* c, HStream* s) noexcept nogil:
    cdef H2SStream* cs = <H2SStream*>s.codec_stream
    return cs == NULL or cs.tx.length < H2_STREAM_TX_LIMIT


cdef void _h2s_stream_done(HConn* c, HStream* s) noexcept nogil:
    """The connection manager is done with s (its response is queued whole). A request not
    read to its end is refused once the response is out (RST_STREAM NO_ERROR)."""
    cdef H2SConn* h2 = _h2(c)
    cdef H2SStream* cs = <H2SStream*>s.codec_stream
    if cs == NULL:
        return
    s.codec_stream = NULL
    cs.s = NULL
    if not s.req_received and not cs.closed:
        cs.rst_after_end = 1
    _h2s_consumed(h2, cs, cs.rx.length)
    chain_clear(&cs.rx)


cdef void _h2s_stream_reset(HConn* c, HStream* s, bint refused) noexcept nogil:
    """The proxy abandons s: RST_STREAM (REFUSED_STREAM when nothing of it was processed,
    else INTERNAL_ERROR)."""
    cdef H2SConn* h2 = _h2(c)
    cdef H2SStream* cs = <H2SStream*>s.codec_stream
    if cs == NULL:
        return
    s.codec_stream = NULL
    cs.s = NULL
    _h2s_consumed(h2, cs, cs.rx.length)
    chain_clear(&cs.rx)
    _h2s_gauge_sub(c, H2_PENDING_SEND_BYTES, cs.tx.length)
    chain_clear(&cs.tx)
    if not cs.closed:
        nghttp2_submit_rst_stream(h2.session, NGHTTP2_FLAG_NONE, cs.id,
                                  NGHTTP2_REFUSED_STREAM if refused else NGHTTP2_INTERNAL_ERROR)


# ---------------------------------------------------------------- drain, keepalive

cdef void _h2s_drain(HConn* c) noexcept nogil:
    """Envoy's two-step GOAWAY: first one with the last stream id 2^31-1 (nghttp2's
    shutdown notice: "no new streams soon"), then after the connection manager's
    drain_timeout the final one with the last stream id processed; the streams below it
    finish, then the connection closes."""
    cdef H2SConn* h2 = _h2(c)
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    if h2 == NULL or h2.session == NULL or h2.failed or h2.goaway_phase:
        return
    h2.goaway_phase = 1
    nghttp2_submit_shutdown_notice(h2.session)
    if h.drain_timeout_ms:
        timer_arm(c.w, &h2.drain_timer, h.drain_timeout_ms)
    else:
        _h2s_final_goaway(c)


cdef void _h2s_final_goaway(HConn* c) noexcept nogil:
    cdef H2SConn* h2 = _h2(c)
    if h2 == NULL or h2.session == NULL or h2.failed or h2.goaway_phase == 2:
        return
    h2.goaway_phase = 2
    nghttp2_submit_goaway(h2.session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(h2.session), NGHTTP2_NO_ERROR, NULL, 0)
    if c.nstreams == 0:
        c.close_after = 1               # (after the frames still queued: _h2s_mid_message)


cdef void _h2s_drain_timer(Worker* w, void* arg) noexcept nogil:
    cdef HConn* c = <HConn*>arg
    _h2s_final_goaway(c)
    hconn_pump(c)


cdef uint64_t _h2s_ping_interval(HConn* c) noexcept nogil:
    """connection_keepalive.interval plus up to interval_jitter percent of it."""
    cdef const H2Options* o = _h2(c).o
    cdef uint64_t jitter = o.keepalive_interval_ms * o.keepalive_interval_jitter_pct // 100
    if jitter:
        return o.keepalive_interval_ms + (c.id * <uint64_t>2654435761) % (jitter + 1)
    return o.keepalive_interval_ms


cdef void _h2s_ping_timer(Worker* w, void* arg) noexcept nogil:
    cdef HConn* c = <HConn*>arg
    cdef H2SConn* h2 = _h2(c)
    cdef uint8_t opaque[8]
    if h2 == NULL or h2.session == NULL or h2.failed:
        return
    if not h2.ping_outstanding:
        memset(opaque, 0, 8)
        memcpy(opaque, &w.now, 8)
        if nghttp2_submit_ping(h2.session, NGHTTP2_FLAG_NONE, opaque) == 0:
            h2.ping_outstanding = 1
            timer_arm(w, &h2.ping_timeout, h2.o.keepalive_timeout_ms if h2.o.keepalive_timeout_ms else 1)
    timer_arm(w, &h2.ping_timer, _h2s_ping_interval(c))
    hconn_pump(c)


cdef void _h2s_ping_timeout(Worker* w, void* arg) noexcept nogil:
    """No PING ACK within connection_keepalive.timeout: the peer is gone (Envoy closes)."""
    cdef HConn* c = <HConn*>arg
    _h2s_stat(c, H2_KEEPALIVE_TIMEOUT, 1)
    if fp_log_level <= LOG_DEBUG:
        fp_log(w.index, "http2", c.id, 0, "keepalive timeout: closing")
    hconn_close(c, False)


cdef uint64_t _h2s_raw_body_left(HConn* c, HStream* s) noexcept nogil:
    return 0


cdef bint _h2s_raw_body_moved(HConn* c, HStream* s, uint64_t n) noexcept nogil:
    return False


cdef bint _h2s_raw_data_ok(HConn* c, HStream* s) noexcept nogil:
    return False


cdef int h2_callbacks_init() except -1:
    """The session callbacks every HTTP/2 server connection shares (built once, at import)."""
    global _h2s_callbacks
    cdef nghttp2_session_callbacks* cb = NULL
    if _h2s_callbacks != NULL:
        return 0
    if nghttp2_session_callbacks_new(&cb) != 0:
        raise MemoryError()
    nghttp2_session_callbacks_set_send_callback(cb, _h2s_send_cb)
    nghttp2_session_callbacks_set_send_data_callback(cb, _h2s_send_data_cb)
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, _h2s_begin_frame_cb)
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, _h2s_begin_headers_cb)
    nghttp2_session_callbacks_set_on_header_callback(cb, _h2s_header_cb)
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, _h2s_frame_recv_cb)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, _h2s_data_chunk_cb)
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, _h2s_stream_close_cb)
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, _h2s_frame_send_cb)
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, _h2s_invalid_frame_cb)
    _h2s_callbacks = cb
    return 0


h2_callbacks_init()

H2_SERVER_CODEC.name = "http2"
H2_SERVER_CODEC.stat_cx_total = H_CX_HTTP2_TOTAL
H2_SERVER_CODEC.stat_cx_active = H_CX_HTTP2_ACTIVE
H2_SERVER_CODEC.stat_rq_total = H_RQ_HTTP2_TOTAL
H2_SERVER_CODEC.multiplexed = 1
H2_SERVER_CODEC.start = _h2s_start
H2_SERVER_CODEC.release = _h2s_release
H2_SERVER_CODEC.decode = _h2s_decode
H2_SERVER_CODEC.mid_message = _h2s_mid_message
H2_SERVER_CODEC.stream_done = _h2s_stream_done
H2_SERVER_CODEC.stream_reset = _h2s_stream_reset
H2_SERVER_CODEC.flush = _h2s_flush
H2_SERVER_CODEC.drain = _h2s_drain
H2_SERVER_CODEC.send_ok = _h2s_send_ok
H2_SERVER_CODEC.raw_body_left = _h2s_raw_body_left
H2_SERVER_CODEC.raw_body_moved = _h2s_raw_body_moved
H2_SERVER_CODEC.encode_headers = _h2s_encode_headers
H2_SERVER_CODEC.encode_data = _h2s_encode_data
H2_SERVER_CODEC.encode_bytes = _h2s_encode_bytes
H2_SERVER_CODEC.encode_end = _h2s_encode_end
H2_SERVER_CODEC.encode_continue = _h2s_encode_continue
H2_SERVER_CODEC.raw_data_ok = _h2s_raw_data_ok
