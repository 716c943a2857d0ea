# The HTTP/2 client codec and the multiplexed upstream pool (nghttp2, driven from the worker
# loop without the GIL).
#
# Design
# ------
# The router and the connection manager reach upstream requests through one handle,
# s.upstream.conn (UpConn*), the http_pool_* calls and ClientCodecApi (http_pool.pxi has the
# contract). An HTTP/2 cluster keeps that seam by handing out a light per-stream handle:
#
#   H2R_STREAM  an UpConn without a socket (ep.fd -1), one per request, its codec
#               H2_STREAM_CODEC. Its out_buf holds the request body not yet taken by nghttp2
#               (unframed: the data provider frames it into DATA frames), its in_buf the
#               response body received and not yet delivered; its H2Stream (u.h2s) the
#               request head until it is submitted, the response head and trailers, and the
#               stream's progress. Its counters are its own (rq_total/active, pending), its
#               host facts (hosts, host_index, hstats) those of the connection's host.
#   H2R_CONN    a real connection (socket, TLS, connect/idle/duration timers, cx counters),
#               its nghttp2 session in u.h2 (H2Conn). It sits in its pool's per-host list
#               (HttpPool.idle, the same list as idle HTTP/1.1 connections) from its connect
#               until it drains, whether or not it carries streams: a request takes the first
#               one with room. Its state is UC_CONNECTING then UC_BUSY (never UC_IDLE: an
#               HTTP/2 connection with no stream still reads SETTINGS, PINGs and GOAWAY).
#
# Room on a connection: min(the peer's SETTINGS_MAX_CONCURRENT_STREAMS, our
# max_concurrent_streams) streams at once, and max_requests_per_connection in its life (then
# it drains: no new streams, it closes after its last one, upstream_cx_max_requests). While
# it connects, the requests that chose it wait on it (H2Conn.waiting: pending requests, as
# many as our max_concurrent_streams, as Envoy counts a connecting client's capacity); more
# open a new connection, up to the circuit breakers' max_connections, beyond which they
# queue in the pool (UC_WAITING, served by http_serve_waiting at the end of the loop turn,
# exactly as HTTP/1.1 requests are). max_requests bounds the streams bound to connections
# (checked when a stream is bound: 503 UO, upstream_rq_active_overflow), max_pending_requests
# the requests waiting for a connection.
#
# Events. nghttp2's callbacks only record (the response head in h2s.resp, body bytes into
# the handle's in_buf, the end, a reset) and put the handle on its connection's news list;
# after the bytes are fed, the connection's pump delivers each handle's news to its stream
# (stream_on_upstream -> the handle's decode -> ur_on_response_headers / _data / _error),
# then writes the downstream (hconn_pump). Nothing runs the stream machinery inside nghttp2.
# Frames the router's calls queue (a request head, body bytes, a reset) go out when the
# connection is flushed: at once when it is pumping, else at the end of the loop turn
# (HttpPool.h2_flush, served with the pool's waiting requests).
#
# Flow control (nghttp2's no_auto_window_update): the connection window reopens as DATA is
# taken into a stream's in_buf (bounded by the stream windows); a stream's window reopens
# only as its bytes are delivered downstream, so a slow client stalls its own stream only.
# The request body goes out as the peer's windows allow: the data provider takes what
# out_buf holds, defers when it is empty, and is resumed when more comes.
#
# Ends. A stream ends with its response (release), or abandoned (cancel: RST_STREAM CANCEL,
# the connection stays), or failed by the peer: RST_STREAM or a GOAWAY that refused it
# -> ur_on_response_error(s, UE_RESET) (503 UR before the head, a reset after it). A
# connection that breaks (EOF, a read or write error, a protocol error) ends every stream
# on it that has not received its end; a stream whose whole response was received keeps
# delivering it from its own in_buf after the connection is gone.

DEF H2C_REF_MIN = 4096              # DATA payloads at least this long are referenced, not copied

cdef nghttp2_session_callbacks* H2C_CALLBACKS = NULL
cdef ClientCodecApi H2_STREAM_CODEC        # a stream handle's codec
cdef ClientCodecApi H2_CONN_CODEC          # a connection's (release only: the session)

cdef struct H2Conn:
    nghttp2_session* session        # NULL until it connects
    UpConn* streams                 # handles of its open streams (H2Stream.next/prev)
    UpConn* waiting                 # handles waiting for it to connect
    UpConn* news                    # handles with events to deliver (H2Stream.news_next)
    UpConn* flush_next              # HttpPool.h2_flush
    uint32_t nstreams               # on `streams`
    uint32_t nwaiting               # on `waiting`
    uint32_t nrequests              # streams it was given (max_requests_per_connection)
    uint32_t max_streams            # our max_concurrent_streams
    uint8_t flush_queued
    uint8_t draining                # takes no new stream (GOAWAY, max requests, duration)
    uint8_t closing                 # its streams are being ended; then it closes
    uint8_t goaway_rx               # the peer sent GOAWAY (upstream_cx_close_notify)
    uint8_t ping_outstanding
    Timer ping_timer                # connection_keepalive.interval
    Timer ping_timeout              # connection_keepalive.timeout
    uint8_t in_pump
    uint8_t repump
    uint8_t proto_error             # nghttp2 refused the peer's bytes
    uint8_t auto                    # auto_config: HTTP/2 only if TLS's ALPN selects h2
    StatBlock* stats                # cluster.<name>.http2.* (one reference), or NULL
    Slice* feeding                  # the slice of in_buf nghttp2 is reading (DATA payloads
                                    #   point into it: a stream's in_buf references them)

cdef struct H2Stream:
    int32_t id                      # 0: not submitted yet
    UpConn* next                    # its connection's streams or waiting list
    UpConn* prev
    UpConn* news_next
    uint8_t in_news
    uint8_t linked                  # on its connection's streams list
    uint8_t waiting                 # on its connection's waiting list
    uint8_t head_encoded            # the router gave the request head (nva below until submitted)
    uint8_t has_body                # DATA frames follow the HEADERS
    uint8_t req_end                 # the body's end came: out_buf is all that is left
    uint8_t deferred                # the data provider waits for bytes
    uint8_t head_done               # the final response head is complete
    uint8_t head_delivered
    uint8_t end_rx                  # END_STREAM received
    uint8_t end_delivered
    uint8_t closed                  # its nghttp2 stream is closed
    uint8_t reset_rx                # the peer ended it early (RST_STREAM, refused by GOAWAY)
    uint8_t conn_lost               # its connection broke before the end
    uint8_t method_head             # a HEAD request: the response has no body
    uint8_t bad                     # a malformed response
    uint32_t reset_code
    char* nvbuf                     # the request head (nva + bytes), until submitted
    nghttp2_nv* nva
    size_t nvlen
    char* tbuf                      # the request trailers, until the body's end is sent
    nghttp2_nv* tnva
    size_t tnvlen
    HttpHead resp                   # the response head (then its trailers in `trailers`)
    HttpHead trailers


# ---------------------------------------------------------------- request heads -> nv

cdef int _h2_nv_take(PairList* l, const FieldPair* first, size_t nfirst, bint keep_te_trailers,
                     char** out_buf, nghttp2_nv** out_nva, size_t* out_n) noexcept nogil:
    """h2_nv_from_pairs (codec_h2.pxi: pseudo-headers first, names lowercased,
    connection-specific fields dropped), copied into one malloc'd block the stream owns
    (the nv array, then the bytes it points at): a request may wait for its connection
    longer than the router's field values live. -1: no memory."""
    cdef H2Nv a
    cdef size_t i, bytes_ = 0
    cdef char* buf
    cdef char* p
    cdef nghttp2_nv* nva
    if h2_nv_from_pairs(&a, first, nfirst, l, keep_te_trailers) < 0:
        return -1
    for i in range(a.n):
        bytes_ += a.nv[i].namelen + a.nv[i].valuelen
    buf = <char*>malloc(a.n * sizeof(nghttp2_nv) + bytes_ + 1)
    if buf == NULL:
        h2_nv_free(&a)
        return -1
    nva = <nghttp2_nv*>buf
    p = buf + a.n * sizeof(nghttp2_nv)
    for i in range(a.n):
        nva[i] = a.nv[i]
        nva[i].name = <uint8_t*>p
        memcpy(p, a.nv[i].name, a.nv[i].namelen)
        p += a.nv[i].namelen
        nva[i].value = <uint8_t*>p
        if a.nv[i].valuelen:
            memcpy(p, a.nv[i].value, a.nv[i].valuelen)
        p += a.nv[i].valuelen
    out_buf[0] = buf
    out_nva[0] = nva
    out_n[0] = a.n
    h2_nv_free(&a)
    return 0


# ---------------------------------------------------------------- the stream handle's codec

cdef void _h2c_start(UpConn* h, int method) noexcept nogil:
    h.h2s.method_head = method == METHOD_HEAD


cdef void _h2c_release(UpConn* h) noexcept nogil:
    cdef H2Stream* st = h.h2s
    if st == NULL:
        return
    free(st.nvbuf)
    st.nvbuf = NULL
    free(st.tbuf)
    st.tbuf = NULL
    http_head_free(&st.resp)
    http_head_free(&st.trailers)


cdef bint _h2c_response_complete(UpConn* h) noexcept nogil:
    return h.h2s.end_rx != 0


cdef bint _h2c_reusable(UpConn* h) noexcept nogil:
    return True                     # (a stream is never reused; its connection is the pool's)


cdef uint64_t _h2c_raw_body_left(UpConn* h) noexcept nogil:
    return 0                        # DATA frames: never spliced


cdef bint _h2c_raw_body_moved(UpConn* h, uint64_t n) noexcept nogil:
    return False


cdef bint _h2c_raw_data_ok(UpConn* h) noexcept nogil:
    return False


cdef int _h2c_encode_headers(UpConn* h, StrRef method, StrRef target, PairList* l,
                             const BodyFraming* f) noexcept nogil:
    """The request head as HEADERS: pseudo-headers (:scheme https over TLS, :authority
    from Host), connection-specific fields dropped, TE only as "trailers", the length as
    content-length. Kept until the stream is submitted (at once on a connected connection).
    -1: no memory."""
    cdef H2Stream* st = h.h2s
    cdef FieldPair ps[4]
    cdef size_t np = 3
    cdef char lenbuf[24]
    cdef int k
    cdef StrRef authority = _pl_take(l, "host", 4)
    ps[0].name = _cs(":method")
    ps[0].value = method
    ps[1].name = _cs(":scheme")
    ps[1].value = _cs("https" if cluster_params(h.cluster, h.w).tls != NULL else "http")
    ps[2].name = _cs(":path")
    ps[2].value = target
    if authority.p != NULL:
        ps[3].name = _cs(":authority")
        ps[3].value = authority
        np = 4
    st.has_body = (f.kind == BODY_LENGTH and f.length > 0) or f.kind == BODY_STREAM
    if f.kind == BODY_LENGTH:
        if f.length_text.p != NULL:
            k = _pl_add(l, _cs("content-length"), f.length_text)
        else:
            k = _pl_add(l, _cs("content-length"), _s(lenbuf, _u64_text(f.length, lenbuf)))
        if k < 0:
            return -1
    # `te: trailers` (gRPC needs it) is already in `l`: the router's head keeps it
    # (head_writer.pxi te_trailers); h2_nv_from_pairs keeps it and drops any other TE.
    free(st.nvbuf)
    st.nvbuf = NULL
    if _h2_nv_take(l, ps, np, True, &st.nvbuf, &st.nva, &st.nvlen) < 0:
        return -1
    st.head_encoded = 1
    _h2_try_submit(h)
    return 0


cdef int _h2c_encode_data(UpConn* h, Chain* src, size_t n) noexcept nogil:
    if not h.h2s.has_body:
        chain_drain(src, n)
        return 0
    if chain_move_bytes(&h.out_buf, src, n) < 0:
        return -1
    _h2_resume(h)
    return 0


cdef int _h2c_encode_end(UpConn* h, PairList* trailers) noexcept nogil:
    cdef H2Stream* st = h.h2s
    st.req_end = 1
    if not st.has_body:
        return 0
    if trailers != NULL and trailers.n and st.tbuf == NULL:
        if _h2_nv_take(trailers, NULL, 0, False, &st.tbuf, &st.tnva, &st.tnvlen) < 0:
            return -1
    _h2_resume(h)
    return 0


cdef int _h2c_decode(UpConn* h) noexcept nogil:
    """Deliver what the stream received to its owner (the events of codec_h1_client.pxi).
    -1: the stream ended (h may be released)."""
    cdef H2Stream* st = h.h2s
    cdef HStream* s = h.stream
    cdef ResponseFacts f
    cdef const char* v
    cdef size_t n = 0
    cdef int64_t cl
    cdef size_t i
    cdef bint end
    cdef UpConn* conn
    if s == NULL:
        return 0
    if st.head_done and not st.head_delivered:
        st.head_delivered = 1
        memset(&f, 0, sizeof(ResponseFacts))
        f.content_length = -1
        v = _head_field(&st.resp, "content-length", &n)
        if v != NULL:
            cl = 0
            for i in range(n):
                if v[i] < b'0' or v[i] > b'9' or cl > (<int64_t>1 << 56):
                    cl = -1
                    break
                cl = cl * 10 + <int64_t>(v[i] - 48)
            f.length_text = _s(v, n)
            f.content_length = cl
        if st.method_head or st.resp.status == 204 or st.resp.status == 304:
            f.end_stream = 1
            f.content_length = -1
            if st.resp.status == 204:
                f.length_text = _s(NULL, 0)
        elif st.end_rx and h.in_buf.length == 0 and st.trailers.nfields == 0:
            f.end_stream = 1
            f.length_text = _s(NULL, 0)
            f.content_length = -1
        if f.end_stream:
            chain_clear(&h.in_buf)      # (a body where none can be: dropped)
        if ur_on_response_headers(s, &st.resp, &f) < 0:
            return -1
        if h.stream != s:
            return -1
    if (st.reset_rx or st.conn_lost or st.bad) and not st.end_rx:
        if not st.head_delivered:
            ur_on_response_error(s, UE_PROTOCOL if st.bad else (UE_RESET if st.reset_rx else UE_CLOSED_BEFORE_HEAD))
        else:
            ur_on_response_error(s, UE_RESET if st.reset_rx else (UE_BODY_FRAMING if st.bad else UE_CLOSED_IN_BODY))
        return -1
    if not st.head_delivered or st.end_delivered:
        return 0
    end = st.end_rx != 0
    if not ur_response_data_wanted(s, end and h.in_buf.length == 0):
        return 0
    n = h.in_buf.length
    if n == 0 and not end:
        return 0
    if n and not _enc_body_filtered(s) and not s.c.codec.send_ok(s.c, s):
        # The client reads slowly: the stream's window stays shut. (The connection manager
        # pumps the handle again when there is room, as it sees bytes in its in_buf; an end
        # without bytes always goes, or nothing would.)
        return 0
    conn = h.h2_conn
    if n and conn != NULL and conn.h2.session != NULL and st.id > 0 and not st.closed:
        nghttp2_session_consume_stream(conn.h2.session, st.id, n)
        _h2_flush_later(conn)           # its WINDOW_UPDATE
    if end:
        st.end_delivered = 1
    return ur_on_response_data(s, &h.in_buf, n, end, &st.trailers if end and st.trailers.nfields else NULL)


H2_STREAM_CODEC.name = "http2"
H2_STREAM_CODEC.start = _h2c_start
H2_STREAM_CODEC.release = _h2c_release
H2_STREAM_CODEC.decode = _h2c_decode
H2_STREAM_CODEC.response_complete = _h2c_response_complete
H2_STREAM_CODEC.reusable = _h2c_reusable
H2_STREAM_CODEC.raw_body_left = _h2c_raw_body_left
H2_STREAM_CODEC.raw_body_moved = _h2c_raw_body_moved
H2_STREAM_CODEC.encode_headers = _h2c_encode_headers
H2_STREAM_CODEC.encode_data = _h2c_encode_data
H2_STREAM_CODEC.encode_end = _h2c_encode_end
H2_STREAM_CODEC.raw_data_ok = _h2c_raw_data_ok


# ---------------------------------------------------------------- nghttp2's callbacks
# (they only record and mark news; see the design above)

cdef inline void _h2_news(UpConn* conn, UpConn* h) noexcept nogil:
    if h.h2s.in_news:
        return
    h.h2s.in_news = 1
    h.h2s.news_next = conn.h2.news
    conn.h2.news = h


cdef inline void _h2_news_unlink(UpConn* conn, UpConn* h) noexcept nogil:
    cdef UpConn** pp
    if not h.h2s.in_news:
        return
    pp = &conn.h2.news
    while pp[0] != NULL and pp[0] != h:
        pp = &pp[0].h2s.news_next
    if pp[0] == h:
        pp[0] = h.h2s.news_next
    h.h2s.in_news = 0
    h.h2s.news_next = NULL


cdef inline UpConn* _h2_stream_of(nghttp2_session* session, int32_t id) noexcept nogil:
    return <UpConn*>nghttp2_session_get_stream_user_data(session, id)


cdef int _h2cb_begin_headers(nghttp2_session* session, const nghttp2_frame* frame,
                             void* user_data) noexcept nogil:
    cdef UpConn* h
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    h = _h2_stream_of(session, frame.hd.stream_id)
    if h == NULL:
        return 0
    if not h.h2s.head_done:
        http_head_free(&h.h2s.resp)     # a new head (after a 1xx)
    return 0


cdef int _h2cb_header(nghttp2_session* session, const nghttp2_frame* frame,
                      const uint8_t* name, size_t namelen, const uint8_t* value, size_t valuelen,
                      uint8_t flags, void* user_data) noexcept nogil:
    cdef UpConn* h
    cdef H2Stream* st
    cdef size_t i
    cdef int status = 0
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    h = _h2_stream_of(session, frame.hd.stream_id)
    if h == NULL:
        return 0
    st = h.h2s
    if st.head_done:
        # trailers (nghttp2 refuses pseudo-headers in them)
        if http_head_add_field(&st.trailers, <const char*>name, namelen, <const char*>value, valuelen) < 0:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        return 0
    if namelen == 7 and memcmp(name, b":status", 7) == 0:
        for i in range(valuelen):
            status = status * 10 + (value[i] - 48)
        st.resp.status = <uint16_t>status
        return 0
    if namelen and name[0] == b':':
        return 0
    if http_head_add_field(&st.resp, <const char*>name, namelen, <const char*>value, valuelen) < 0:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    return 0


cdef int _h2cb_frame_recv(nghttp2_session* session, const nghttp2_frame* frame,
                          void* user_data) noexcept nogil:
    cdef UpConn* conn = <UpConn*>user_data
    cdef UpConn* h
    cdef H2Stream* st
    if frame.hd.type == NGHTTP2_SETTINGS or frame.hd.type == NGHTTP2_GOAWAY:
        if frame.hd.type == NGHTTP2_GOAWAY:
            # No new stream on it; nghttp2 closes those above last_stream_id as refused.
            if not conn.h2.goaway_rx:
                conn.h2.goaway_rx = 1
                stat_add(conn.cluster.stats, conn.w, C_CX_CLOSE_NOTIFY, 1)
            _h2_conn_drain(conn)
        _h2_pool_room(conn)             # its room changed: requests may wait for it
        return 0
    if frame.hd.type == NGHTTP2_RST_STREAM:
        if conn.h2.stats != NULL:
            stat_add(conn.h2.stats, conn.w, H2_RX_RESET, 1)
        return 0
    if frame.hd.type == NGHTTP2_PING and frame.hd.flags & NGHTTP2_FLAG_ACK and conn.h2.ping_outstanding:
        conn.h2.ping_outstanding = 0
        timer_cancel(conn.w, &conn.h2.ping_timeout)
        return 0
    if frame.hd.type != NGHTTP2_HEADERS and frame.hd.type != NGHTTP2_DATA:
        return 0
    h = _h2_stream_of(session, frame.hd.stream_id)
    if h == NULL:
        return 0
    st = h.h2s
    if frame.hd.type == NGHTTP2_HEADERS:
        if not st.head_done:
            if st.resp.status < 200:
                http_head_free(&st.resp)    # 1xx: dropped, as HTTP/1.1's (we answer Expect)
                return 0
            st.head_done = 1
        _h2_news(conn, h)              # (http2.trailers counts requests' trailers: the server side's)
    if frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
        st.end_rx = 1
        _h2_news(conn, h)
    return 0


cdef int _h2cb_data_chunk(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                          const uint8_t* data, size_t len, void* user_data) noexcept nogil:
    cdef UpConn* conn = <UpConn*>user_data
    cdef UpConn* h = _h2_stream_of(session, stream_id)
    cdef Slice* sl
    # The connection's window reopens as bytes leave the session for a stream's buffer.
    nghttp2_session_consume_connection(session, len)
    if h == NULL or h.h2s.method_head:
        nghttp2_session_consume_stream(session, stream_id, len)     # nobody reads them
        return 0
    sl = conn.h2.feeding
    if len >= H2C_REF_MIN and sl != NULL and <const char*>data >= sl.data \
            and <const char*>data + len <= sl.data + sl.fill:
        # No copy: the stream's buffer references the received bytes (a shared slice is
        # never appended to, so the connection's next read goes to a fresh one). Small
        # chunks are copied: a slow stream must not pin a whole read slice for a few bytes.
        slice_incref(sl)
        if chain_append_slice(&h.in_buf, sl, <size_t>(<const char*>data - sl.data), len) < 0:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE            # (resets the stream)
    elif chain_append(&h.in_buf, <const char*>data, len) < 0:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    _h2_news(conn, h)
    return 0


cdef int _h2cb_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                            void* user_data) noexcept nogil:
    cdef UpConn* conn = <UpConn*>user_data
    cdef UpConn* h = _h2_stream_of(session, stream_id)
    cdef H2Stream* st
    if h == NULL:
        return 0
    # nghttp2 may keep a closed stream a while (priorities): nothing may find h through it
    # once h is freed.
    nghttp2_session_set_stream_user_data(session, stream_id, NULL)
    st = h.h2s
    st.closed = 1
    if not st.end_rx:
        st.reset_rx = 1
        st.reset_code = error_code
    _h2_unlink(conn, h)                 # its bytes are in its own buffers from now on
    _h2_news(conn, h)
    return 0


cdef int _h2cb_invalid_frame(nghttp2_session* session, const nghttp2_frame* frame,
                             int lib_error_code, void* user_data) noexcept nogil:
    cdef UpConn* conn = <UpConn*>user_data
    cdef UpConn* h
    if frame.hd.stream_id == 0:
        return 0
    h = _h2_stream_of(session, frame.hd.stream_id)
    if h != NULL and (lib_error_code == NGHTTP2_ERR_HTTP_HEADER or lib_error_code == NGHTTP2_ERR_HTTP_MESSAGING):
        h.h2s.bad = 1                   # nghttp2 resets it: a malformed response (502)
        if conn.h2.stats != NULL:
            stat_add(conn.h2.stats, conn.w, H2_RX_MESSAGING_ERROR, 1)
        _h2_news(conn, h)
    return 0


cdef ssize_t _h2cb_read_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf,
                             size_t length, uint32_t* data_flags, nghttp2_data_source* source,
                             void* user_data) noexcept nogil:
    """The data provider: the request body the handle's out_buf holds, as the peer's
    windows allow (nghttp2 asks for at most what they allow)."""
    cdef UpConn* conn = <UpConn*>user_data
    cdef UpConn* h = _h2_stream_of(session, stream_id)
    cdef H2Stream* st
    cdef size_t n, k, got = 0
    cdef SliceRef* r
    if h == NULL:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE        # abandoned: reset it
    st = h.h2s
    n = min(length, h.out_buf.length)
    while got < n:
        r = &h.out_buf.refs[h.out_buf.head]
        k = min(<size_t>r.len, n - got)
        memcpy(buf + got, r.s.data + r.off, k)
        chain_drain(&h.out_buf, k)
        got += k
    if n:
        _h2_news(conn, h)               # room in its buffer: the client may send more
    if h.out_buf.length == 0:
        if st.req_end:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            if st.tnvlen:
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                nghttp2_submit_trailer(session, stream_id, st.tnva, st.tnvlen)
            free(st.tbuf)
            st.tbuf = NULL
            st.tnvlen = 0
            return <ssize_t>n
        if n == 0:
            st.deferred = 1
            return NGHTTP2_ERR_DEFERRED
    return <ssize_t>n


cdef void _h2_callbacks_init():
    global H2C_CALLBACKS
    cdef nghttp2_session_callbacks* cb
    if nghttp2_session_callbacks_new(&cb) != 0:
        raise MemoryError()
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, _h2cb_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(cb, _h2cb_header)
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, _h2cb_frame_recv)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, _h2cb_data_chunk)
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, _h2cb_stream_close)
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, _h2cb_invalid_frame)
    H2C_CALLBACKS = cb


_h2_callbacks_init()


# ---------------------------------------------------------------- the connection

cdef void _h2_conn_release(UpConn* conn) noexcept nogil:
    """upconn_close's last step for an HTTP/2 connection (its streams have gone)."""
    cdef H2Conn* hc = conn.h2
    if hc == NULL:
        return
    timer_cancel(conn.w, &hc.ping_timer)
    timer_cancel(conn.w, &hc.ping_timeout)
    if hc.session != NULL:
        nghttp2_session_del(hc.session)
        hc.session = NULL
    if hc.stats != NULL:
        statblock_decref(hc.stats)
        hc.stats = NULL
    # (hc itself is freed with conn: a pump up the stack may still read it)


H2_CONN_CODEC.name = "http2"
H2_CONN_CODEC.release = _h2_conn_release


cdef inline uint32_t _h2_room(UpConn* conn) noexcept nogil:
    """How many more streams the connection takes now (a connecting one: its waiting
    list's room)."""
    cdef H2Conn* hc = conn.h2
    cdef ClusterParams* prm = cluster_params(conn.cluster, conn.w)
    cdef uint32_t limit = hc.max_streams
    cdef uint32_t peer, used, life
    if hc.draining or hc.closing or conn.state == UC_CLOSED:
        return 0
    if hc.session != NULL:
        peer = nghttp2_session_get_remote_settings(hc.session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        if peer < limit:
            limit = peer
    used = hc.nstreams + hc.nwaiting
    if prm.max_rq_per_cx:
        life = prm.max_rq_per_cx - hc.nrequests if hc.nrequests < prm.max_rq_per_cx else 0
        if life < limit:
            limit = life
    return limit - used if used < limit else 0


cdef void _h2_flush_later(UpConn* conn) noexcept nogil:
    """Frames wait in the session: send them now if the connection is pumping, else at the
    end of the loop turn."""
    cdef HttpPool* p
    if conn.state != UC_BUSY or conn.h2.session == NULL:
        return
    if conn.h2.in_pump:
        conn.h2.repump = 1
        return
    if conn.h2.flush_queued:
        return
    p = _pool_of(conn.cluster, conn.w)
    conn.h2.flush_queued = 1
    conn.h2.flush_next = p.h2_flush
    p.h2_flush = conn
    _pool_kick(p, conn.w)


cdef void _h2_pool_room(UpConn* conn) noexcept nogil:
    """The connection has room again (or more): requests waiting in the pool may take it."""
    cdef HttpPool* p = _pool_of(conn.cluster, conn.w)
    if p.wait_head != NULL:
        _pool_kick(p, conn.w)


cdef void _h2_conn_drain(UpConn* conn) noexcept nogil:
    """No new stream on it (GOAWAY, max requests, max duration): out of the pool's list;
    it closes after its last stream."""
    cdef UpConn** pp
    conn.h2.draining = 1
    if conn.idle_head != NULL:
        pp = conn.idle_head
        while pp[0] != NULL and pp[0] != conn:
            pp = &pp[0].idle_next
        if pp[0] == conn:
            pp[0] = conn.idle_next
        conn.idle_head = NULL
        conn.idle_next = NULL


cdef void _h2_unlink(UpConn* conn, UpConn* h) noexcept nogil:
    """h leaves its connection's streams list (its stream closed, or it ended)."""
    cdef H2Stream* st = h.h2s
    cdef H2Conn* hc = conn.h2
    if not st.linked:
        return
    st.linked = 0
    if st.prev != NULL:
        st.prev.h2s.next = st.next
    else:
        hc.streams = st.next
    if st.next != NULL:
        st.next.h2s.prev = st.prev
    st.next = NULL
    st.prev = NULL
    hc.nstreams -= 1
    if hc.stats != NULL:
        stat_sub(hc.stats, conn.w, H2_STREAMS_ACTIVE, 1)
    if hc.nstreams == 0 and not hc.closing:
        if hc.draining:
            _h2_flush_later(conn)       # its last frames; the pump closes it
        elif cluster_params(conn.cluster, conn.w).pool_idle_ms:
            timer_arm(conn.w, &conn.timer, cluster_params(conn.cluster, conn.w).pool_idle_ms)
    _h2_pool_room(conn)


cdef inline void _h2_link(UpConn* conn, UpConn* h) noexcept nogil:
    cdef H2Stream* st = h.h2s
    cdef H2Conn* hc = conn.h2
    st.linked = 1
    st.prev = NULL
    st.next = hc.streams
    if hc.streams != NULL:
        hc.streams.h2s.prev = h
    hc.streams = h
    hc.nstreams += 1
    if hc.stats != NULL:
        stat_add(hc.stats, conn.w, H2_STREAMS_ACTIVE, 1)
    timer_cancel(conn.w, &conn.timer)


cdef void _h2_try_submit(UpConn* h) noexcept nogil:
    """Submit h's request on its connection once both are ready."""
    cdef H2Stream* st = h.h2s
    cdef UpConn* conn = h.h2_conn
    cdef nghttp2_data_provider dp
    cdef int32_t id
    if conn == NULL or conn.state != UC_BUSY or conn.h2.session == NULL or not st.head_encoded \
            or st.id != 0 or not st.linked:
        return
    if st.has_body:
        dp.source.ptr = NULL
        dp.read_callback = _h2cb_read_body
        id = nghttp2_submit_request(conn.h2.session, NULL, st.nva, st.nvlen, &dp, h)
    else:
        id = nghttp2_submit_request(conn.h2.session, NULL, st.nva, st.nvlen, NULL, h)
    free(st.nvbuf)
    st.nvbuf = NULL
    st.nvlen = 0
    if id < 0:
        # No stream id left on it (or no memory): it drains, the request fails as a
        # connection that ended before the response.
        _h2_conn_drain(conn)
        st.conn_lost = 1
        _h2_unlink(conn, h)
        _h2_news(conn, h)
        _h2_flush_later(conn)
        return
    st.id = id
    _h2_flush_later(conn)


cdef void _h2_resume(UpConn* h) noexcept nogil:
    cdef H2Stream* st = h.h2s
    cdef UpConn* conn = h.h2_conn
    if not st.deferred or conn == NULL or conn.h2.session == NULL or st.id <= 0 or st.closed:
        return
    st.deferred = 0
    nghttp2_session_resume_data(conn.h2.session, st.id)
    _h2_flush_later(conn)


cdef uint64_t _h2_ping_interval(UpConn* conn) noexcept nogil:
    """connection_keepalive.interval plus up to interval_jitter percent of it."""
    cdef const H2Options* o = &cluster_params(conn.cluster, conn.w).h2
    cdef uint64_t jitter = o.keepalive_interval_ms * o.keepalive_interval_jitter_pct // 100
    if jitter:
        return o.keepalive_interval_ms + worker_random(conn.w) % (jitter + 1)
    return o.keepalive_interval_ms


cdef void _h2_ping_timer(Worker* w, void* arg) noexcept nogil:
    """connection_keepalive: a PING every interval; no ACK within the timeout ends the
    connection (_h2_ping_timeout), as Envoy's."""
    cdef UpConn* conn = <UpConn*>arg
    cdef H2Conn* hc = conn.h2
    cdef const H2Options* o = &cluster_params(conn.cluster, w).h2
    cdef uint8_t opaque[8]
    if conn.state != UC_BUSY or hc.session == NULL or hc.closing or not o.keepalive_interval_ms:
        return
    if not hc.ping_outstanding:
        memset(opaque, 0, 8)
        if nghttp2_submit_ping(hc.session, NGHTTP2_FLAG_NONE, opaque) == 0:
            hc.ping_outstanding = 1
            timer_arm(w, &hc.ping_timeout, o.keepalive_timeout_ms if o.keepalive_timeout_ms else 1)
            _h2_flush_later(conn)
    timer_arm(w, &hc.ping_timer, _h2_ping_interval(conn))


cdef void _h2_ping_timeout(Worker* w, void* arg) noexcept nogil:
    cdef UpConn* conn = <UpConn*>arg
    if conn.state != UC_BUSY:
        return
    if conn.h2.stats != NULL:
        stat_add(conn.h2.stats, w, H2_KEEPALIVE_TIMEOUT, 1)
    if fp_log_level <= LOG_DEBUG:
        fp_log(w.index, "http2", conn.id, 0, "upstream HTTP/2 keepalive timeout")
    _h2_conn_close_streams(conn, 503, UPSTREAM_TERMINATION)


cdef int _h2_session_new(UpConn* conn) noexcept nogil:
    """The connection is up (TCP, TLS): its client session, our SETTINGS and connection
    window (codec_h2.pxi's, as the server side's). -1: no memory."""
    cdef H2Conn* hc = conn.h2
    cdef ClusterParams* prm = cluster_params(conn.cluster, conn.w)
    cdef nghttp2_option* opt = h2_option_new(&prm.h2)
    if opt == NULL:
        return -1
    if nghttp2_session_client_new2(&hc.session, H2C_CALLBACKS, conn, opt) != 0:
        nghttp2_option_del(opt)
        hc.session = NULL
        return -1
    nghttp2_option_del(opt)
    if h2_submit_settings(hc.session, &prm.h2, False) != 0:
        return -1
    return 0


cdef UpConn* _h2_conn_new(HStream* s, ClusterCfg* cl, int host_index) noexcept nogil:
    """A new HTTP/2 connection object to the host (no socket yet), in the pool's list."""
    cdef UpConn* u = _upconn_new(s, cl, host_index)
    cdef ClusterParams* prm = cluster_params(cl, s.c.w)
    cdef HttpPool* p = _pool_of(cl, s.c.w)
    cdef UpConn** head
    if u == NULL:
        return NULL
    # _upconn_new made it a pending HTTP/1.1 request: make it a bare connection.
    u.stream = NULL
    u.pending = 0
    fp_atomic_add_i64(&cl.n_pending, -1)
    stat_sub(cl.stats, u.w, C_RQ_PENDING_ACTIVE, 1)
    stat_sub(cl.stats, u.w, C_RQ_PENDING_TOTAL, 1)
    host_stat_sub(u.hstats, u.w, HS_RQ_PENDING_ACTIVE, 1)
    u.h2 = <H2Conn*>calloc(1, sizeof(H2Conn))
    if u.h2 == NULL:
        upconn_close(u)                 # (still an HTTP/1.1 connection object, without a socket)
        return NULL
    u.codec.release(u)
    u.codec = &H2_CONN_CODEC
    u.h2_role = H2R_CONN
    timer_init(&u.h2.ping_timer, _h2_ping_timer, u)
    timer_init(&u.h2.ping_timeout, _h2_ping_timeout, u)
    u.h2.max_streams = prm.h2.max_concurrent_streams or 1
    u.h2.auto = prm.protocol == UP_AUTO
    u.h2.stats = prm.h2_stats
    if u.h2.stats != NULL:
        fp_atomic_add_int(&u.h2.stats.refcnt, 1)
    head = _pool_list(p, u.w, host_index)
    if head != NULL and u.hosts == p.hosts:
        u.idle_next = head[0]
        head[0] = u
        u.idle_head = head
    return u


cdef UpConn* _h2_handle_new(HStream* s, ClusterCfg* cl, int host_index) noexcept nogil:
    """A stream handle for s (pending: not bound to a connection yet)."""
    cdef UpConn* h = <UpConn*>calloc(1, sizeof(UpConn))
    cdef Worker* w = s.c.w
    if h == NULL:
        return NULL
    h.h2s = <H2Stream*>calloc(1, sizeof(H2Stream))
    if h.h2s == NULL:
        free(h)
        return NULL
    h.h2_role = H2R_STREAM
    h.ep.fd = -1
    h.ep.writable = 1                   # the owner may always hand it bytes (upconn_pump flushes)
    h.w = w
    h.cluster = cl
    fp_atomic_add_int(&cl.refcnt, 1)
    h.host_index = host_index
    h.hosts = lb_hosts(cl, w)
    fp_atomic_add_int(&h.hosts.refcnt, 1)
    host_stats_hold(&h.hstats, h.hosts.hosts[host_index].stats)
    h.id = _next_conn_id(w)
    h.state = UC_WAITING
    h.stream = s
    h.codec = &H2_STREAM_CODEC
    h.codec.start(h, s.method)
    timer_init(&h.timer, _upconn_idle_timeout, h)
    timer_init(&h.duration_timer, _upconn_max_duration, h)
    return h


cdef inline void _h2_pend(UpConn* h) noexcept nogil:
    """h waits for a connection (one connecting, or room in the pool): Envoy's pending
    request. A stream that starts at once on a connection with room never is one."""
    if not h.pending:
        h.pending = 1
        fp_atomic_add_i64(&h.cluster.n_pending, 1)
        stat_add(h.cluster.stats, h.w, C_RQ_PENDING_TOTAL, 1)
        stat_add(h.cluster.stats, h.w, C_RQ_PENDING_ACTIVE, 1)
        host_stat_add(h.hstats, h.w, HS_RQ_PENDING_ACTIVE, 1)


cdef inline void _h2_unpend(UpConn* h) noexcept nogil:
    if h.pending:
        h.pending = 0
        fp_atomic_add_i64(&h.cluster.n_pending, -1)
        stat_sub(h.cluster.stats, h.w, C_RQ_PENDING_ACTIVE, 1)
        host_stat_sub(h.hstats, h.w, HS_RQ_PENDING_ACTIVE, 1)


cdef void _h2_wait_on(UpConn* conn, UpConn* h) noexcept nogil:
    """h waits for conn to connect."""
    cdef H2Stream* st = h.h2s
    _h2_pend(h)
    h.h2_conn = conn
    h.state = UC_CONNECTING
    st.waiting = 1
    st.prev = NULL
    st.next = conn.h2.waiting
    if conn.h2.waiting != NULL:
        conn.h2.waiting.h2s.prev = h
    conn.h2.waiting = h
    conn.h2.nwaiting += 1


cdef void _h2_unwait(UpConn* h) noexcept nogil:
    cdef H2Stream* st = h.h2s
    cdef UpConn* conn = h.h2_conn
    if not st.waiting:
        return
    st.waiting = 0
    if st.prev != NULL:
        st.prev.h2s.next = st.next
    else:
        conn.h2.waiting = st.next
    if st.next != NULL:
        st.next.h2s.prev = st.prev
    st.next = NULL
    st.prev = NULL
    conn.h2.nwaiting -= 1


cdef bint _h2_bind(UpConn* conn, UpConn* h) noexcept nogil:
    """h's stream starts on the connected conn: counted as an active request (Envoy's
    max_requests check is here). False: refused by max_requests (h's stream got 503 UO)."""
    cdef ClusterCfg* cl = conn.cluster
    cdef ClusterParams* prm = cluster_params(cl, conn.w)
    cdef HStream* s = h.stream
    _h2_unpend(h)
    h.h2_conn = conn
    if cb_full(&cl.n_rq, prm.max_rq):
        stat_add(cl.stats, conn.w, C_RQ_ACTIVE_OVERFLOW, 1)
        h.h2_conn = NULL
        if s != NULL:
            s.response_flags |= RF_UO
            h.stream = NULL
            s.upstream.conn = NULL
            _h2_handle_end(h)
            stream_upstream_failed(s, 503, UPSTREAM_OVERFLOW)
        return False
    h.state = UC_BUSY
    h.rq_attached = 1
    fp_atomic_add_i64(&cl.n_rq, 1)
    stat_add(cl.stats, conn.w, C_RQ_TOTAL, 1)
    stat_add(cl.stats, conn.w, C_RQ_ACTIVE, 1)
    host_stat_add(h.hstats, conn.w, HS_RQ_TOTAL, 1)
    host_rq_active_add(h.hstats, conn.w, 1)
    outlier_report_local(h.hstats, conn.w, OUT_CONNECT_SUCCESS)  # Envoy's pool ready
    conn.h2.nrequests += 1
    if prm.max_rq_per_cx and conn.h2.nrequests >= prm.max_rq_per_cx:
        stat_add(cl.stats, conn.w, C_CX_MAX_REQUESTS, 1)
        _h2_conn_drain(conn)
    _h2_link(conn, h)
    _h2_try_submit(h)
    return True


cdef void _h2_handle_end(UpConn* h) noexcept nogil:
    """h is done: off its connection (its open stream reset), its counters settled; freed
    at the end of the loop turn."""
    cdef H2Stream* st = h.h2s
    cdef UpConn* conn = h.h2_conn
    cdef ClusterCfg* cl = h.cluster
    if h.state == UC_CLOSED:
        return
    _wait_unlink(h)
    if conn != NULL:
        _h2_unwait(h)
        _h2_news_unlink(conn, h)
        if conn.h2.session != NULL and st.id > 0 and not st.closed:
            nghttp2_session_set_stream_user_data(conn.h2.session, st.id, NULL)
            nghttp2_submit_rst_stream(conn.h2.session, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_CANCEL)
            stat_add(cl.stats, h.w, C_RQ_TX_RESET, 1)
            if conn.h2.stats != NULL:
                stat_add(conn.h2.stats, h.w, H2_TX_RESET, 1)
            st.closed = 1
        _h2_unlink(conn, h)
        _h2_flush_later(conn)
        h.h2_conn = NULL
    h.state = UC_CLOSED
    _h2_unpend(h)
    if h.rq_attached:
        h.rq_attached = 0
        stat_sub(cl.stats, h.w, C_RQ_ACTIVE, 1)
        host_rq_active_add(h.hstats, h.w, -1)
        fp_atomic_add_i64(&cl.n_rq, -1)
    if h.stream != NULL:
        h.stream.upstream.conn = NULL
        h.stream = NULL
    chain_free(&h.in_buf)
    chain_free(&h.out_buf)
    h.next_deferred = http_worker(h.w).upconn_deferred
    http_worker(h.w).upconn_deferred = h


cdef void _h2_conn_close_streams(UpConn* conn, int status, const char* reason) noexcept nogil:
    """The connection is going (a failed connect, a timeout, EOF, an error, its cluster or
    host went): requests waiting for it fail (status, reason), streams without their end
    get their response error, then it closes."""
    cdef H2Conn* hc = conn.h2
    cdef UpConn* h
    cdef HStream* s
    cdef HConn* c
    cdef int remote
    cdef bint connecting = conn.state == UC_CONNECTING
    if hc.closing:
        return
    hc.closing = 1
    _h2_conn_drain(conn)
    while hc.waiting != NULL:
        h = hc.waiting
        s = h.stream
        if s != NULL:
            s.response_flags |= RF_UF if connecting else RF_UC
        if h.pending:
            stat_add(conn.cluster.stats, conn.w, C_RQ_PENDING_FAILURE_EJECT, 1)
        h.stream = NULL
        if s != NULL:
            s.upstream.conn = NULL
        _h2_handle_end(h)
        if s != NULL:
            stream_upstream_failed(s, status, reason)
    if hc.nstreams:
        # Envoy's pool: a destroy "with active rq", and each stream it cuts is a pending
        # failure eject (its HTTP/2 pool's count for a ConnectionTermination reset).
        remote = conn.remote_close or conn.eof
        stat_add(conn.cluster.stats, conn.w, C_DESTROY_WITH_ACTIVE_RQ, 1)
        stat_add(conn.cluster.stats, conn.w, C_DESTROY_LOCAL_WITH_ACTIVE_RQ + remote, 1)
        stat_add(conn.cluster.stats, conn.w, C_RQ_PENDING_FAILURE_EJECT, hc.nstreams)
    while hc.streams != NULL:
        h = hc.streams
        h.h2s.conn_lost = 1
        h.h2s.closed = 1                # (the session goes with the connection)
        _h2_unlink(conn, h)
        h.h2_conn = NULL
        _h2_news_unlink(conn, h)
        if h.stream != NULL:
            s = h.stream
            c = s.c
            stream_on_upstream(s)       # (s may be gone after it)
            hconn_pump(c)
    hc.news = NULL
    upconn_close(conn)


cdef void _h2_conn_connected(UpConn* conn) noexcept nogil:
    """TCP (and TLS) are up: the session starts and the requests waiting on it are bound."""
    cdef H2Conn* hc = conn.h2
    cdef UpConn* h
    if _h2_session_new(conn) < 0:
        http_pool_fail(conn, 503, UPSTREAM_CONNECT_FAILURE)
        return
    if hc.auto:
        stat_add(conn.cluster.stats, conn.w, C_CX_HTTP2_TOTAL, 1)     # (ALPN chose it)
    if cluster_params(conn.cluster, conn.w).h2.keepalive_interval_ms:
        timer_arm(conn.w, &hc.ping_timer, _h2_ping_interval(conn))
    while hc.waiting != NULL and conn.state == UC_BUSY:
        h = hc.waiting
        _h2_unwait(h)
        if not _h2_bind(conn, h):
            continue
        if hc.draining:
            # (max_requests_per_connection reached while binding: the rest wait in the pool)
            while hc.waiting != NULL:
                h = hc.waiting
                _h2_unwait(h)
                h.h2_conn = NULL
                h.state = UC_WAITING
                _h2_queue(_pool_of(conn.cluster, conn.w), h)
            _pool_kick(_pool_of(conn.cluster, conn.w), conn.w)
    if hc.nstreams == 0 and cluster_params(conn.cluster, conn.w).pool_idle_ms:
        timer_arm(conn.w, &conn.timer, cluster_params(conn.cluster, conn.w).pool_idle_ms)
    _h2_pool_room(conn)


cdef void _h2_queue(HttpPool* p, UpConn* h) noexcept nogil:
    _h2_pend(h)
    h.queued = 1
    h.wait_next = NULL
    h.wait_prev = p.wait_tail
    if p.wait_tail != NULL:
        p.wait_tail.wait_next = h
    else:
        p.wait_head = h
    p.wait_tail = h


cdef void h2_conn_pump(UpConn* u) noexcept nogil:
    """Read, feed nghttp2, send what it queued, deliver each stream's news."""
    cdef H2Conn* hc = u.h2
    cdef ssize_t n
    cdef size_t asked = 0
    cdef const uint8_t* data
    cdef SliceRef* r
    cdef bint progress
    cdef UpConn* h
    cdef HStream* s
    cdef HConn* c
    if hc.in_pump:
        hc.repump = 1
        return
    if hc.closing:
        return                          # (its streams are being ended: it closes after them)
    hc.in_pump = 1
    while u.state == UC_BUSY and hc.session != NULL:
        hc.repump = 0
        progress = False
        if u.ep.readable and not u.eof and u.in_buf.length < HTTP_IO_LIMIT:
            n = endp_read(&u.ep, &u.in_buf, HTTP_IO_LIMIT - u.in_buf.length, &asked)
            if n > 0:
                stat_add(u.cluster.stats, u.w, C_RX_BYTES, <uint64_t>n)
                progress = True
                if <size_t>n < asked and not u.ep.hup:
                    u.ep.readable = 0
            elif n == 0:
                u.eof = 1
                u.remote_close = 1
            elif errno == EAGAIN:
                u.ep.readable = 0
            elif errno != EINTR:
                u.eof = 1
                u.remote_close = 1
        while u.in_buf.length and not hc.proto_error:
            r = &u.in_buf.refs[u.in_buf.head]
            hc.feeding = r.s
            n = nghttp2_session_mem_recv(hc.session, <const uint8_t*>(r.s.data + r.off), r.len)
            hc.feeding = NULL
            if n < 0:
                if fp_log_level <= LOG_DEBUG:
                    fp_log(u.w.index, "http2", u.id, 0, "upstream HTTP/2 error: %s", nghttp2_strerror(<int>n))
                hc.proto_error = 1
                chain_clear(&u.in_buf)
                break
            chain_drain(&u.in_buf, <size_t>n)
        # What nghttp2 queued: our frames, the streams' requests and bodies as the windows allow.
        while u.out_buf.length < HTTP_IO_LIMIT:
            n = nghttp2_session_mem_send(hc.session, &data)
            if n <= 0:
                if n < 0:
                    if fp_log_level <= LOG_DEBUG:
                        fp_log(u.w.index, "http2", u.id, 0, "upstream HTTP/2 error: %s", nghttp2_strerror(<int>n))
                    hc.proto_error = 1
                break
            if chain_append(&u.out_buf, <const char*>data, <size_t>n) < 0:
                hc.proto_error = 1
                break
        if u.out_buf.length and u.ep.writable:
            n = endp_write(&u.ep, &u.out_buf, NULL, False)
            if n > 0:
                stat_add(u.cluster.stats, u.w, C_TX_BYTES, <uint64_t>n)
                progress = True
            elif n < 0 and errno == EAGAIN:
                u.ep.writable = 0
            elif n < 0 and errno != EINTR:
                u.eof = 1
                u.remote_close = 1
        # Each stream's news to its owner.
        while hc.news != NULL:
            h = hc.news
            hc.news = h.h2s.news_next
            h.h2s.in_news = 0
            h.h2s.news_next = NULL
            s = h.stream
            if s == NULL:
                continue
            c = s.c
            stream_on_upstream(s)
            hconn_pump(c)
            progress = True
            if u.state != UC_BUSY:
                break
        if u.state != UC_BUSY:
            break
        if u.eof or hc.proto_error:
            hc.in_pump = 0
            _h2_conn_close_streams(u, 503, UPSTREAM_PROTOCOL_ERROR if hc.proto_error else UPSTREAM_TERMINATION)
            return
        if hc.nstreams == 0 and hc.nwaiting == 0 and (hc.draining or not nghttp2_session_want_read(hc.session)) \
                and u.out_buf.length == 0 and not nghttp2_session_want_write(hc.session):
            hc.in_pump = 0
            _h2_conn_close_streams(u, 503, UPSTREAM_TERMINATION)     # drained: nothing left on it
            return
        if not progress and not hc.repump:
            break
    hc.in_pump = 0


cdef void h2_handle_pump(UpConn* h) noexcept nogil:
    """The owner of h asks it to move (room downstream, body bytes to send)."""
    cdef UpConn* conn = h.h2_conn
    cdef HStream* s = h.stream
    if s != NULL and h.h2s.head_done and (h.in_buf.length or h.h2s.end_rx or h.h2s.reset_rx
                                          or h.h2s.conn_lost):
        if stream_on_upstream(s) < 0:
            return
    conn = h.h2_conn
    if conn != NULL and conn.state == UC_BUSY:
        h2_conn_pump(conn)


cdef void h2_flush_pool(HttpPool* p) noexcept nogil:
    """The end of the loop turn: send what the pool's connections queued."""
    cdef UpConn* u
    while p.h2_flush != NULL:
        u = p.h2_flush
        p.h2_flush = u.h2.flush_next
        u.h2.flush_next = NULL
        u.h2.flush_queued = 0
        if u.state == UC_BUSY:
            h2_conn_pump(u)


# ---------------------------------------------------------------- the pool's HTTP/2 side

cdef UpConn* _h2_pick(UpConn** head) noexcept nogil:
    """The first HTTP/2 connection of a host's list with room."""
    cdef UpConn* x = head[0] if head != NULL else NULL
    while x != NULL:
        if x.h2_role == H2R_CONN and _h2_room(x) > 0:
            return x
        x = x.idle_next
    return NULL


cdef int _h2_place(HttpPool* p, UpConn* h, bint first) noexcept nogil:
    """Give the handle h a connection: the first one to its host with room (bound at once
    when connected, else waiting on it), or a new one as max_connections allows (first:
    its first try, which counts upstream_cx_overflow). 1: placed; 0: no room (it waits in
    the pool); -1: the connect failed at once."""
    cdef ClusterCfg* cl = h.cluster
    cdef Worker* w = h.w
    cdef ClusterParams* prm = cluster_params(cl, w)
    cdef UpConn** head = _pool_list(p, w, h.host_index)
    cdef UpConn* conn
    cdef HStream* s = h.stream
    if head != NULL:
        head = _pool_find_for(p, head, s)
    conn = _h2_pick(head)
    if conn != NULL:
        _wait_unlink(h)
        if conn.state == UC_BUSY:
            if fp_log_level <= LOG_DEBUG:
                fp_log(w.index, "pool", conn.id, 0, "new stream on an HTTP/2 connection for stream %u of connection %llu",
                       s.c.nrequests, <unsigned long long>s.c.id)
            _h2_bind(conn, h)           # (max_requests: its stream failed, h ended)
        else:
            _h2_wait_on(conn, h)
        return 1
    if cb_full(&cl.n_cx, prm.max_cx):
        # As HTTP/1.1 (http_pool_acquire): wait for room on this worker's connections to
        # the host; with none, connect anyway.
        if first:
            stat_add(cl.stats, w, C_CX_OVERFLOW, 1)
        if _pool_has_conn_to(p, h.hosts, h.host_index):
            return 0
    _wait_unlink(h)
    conn = _h2_conn_new(s, cl, h.host_index)
    if conn == NULL:
        return -1
    _h2_wait_on(conn, h)
    if _upconn_connect(conn, &conn.hosts.hosts[conn.host_index]) < 0:
        stat_add(cl.stats, w, C_RQ_PENDING_FAILURE_EJECT, 1)
        _h2_unwait(h)
        h.h2_conn = NULL
        _h2_conn_drain(conn)
        conn.h2.closing = 1
        upconn_close(conn)
        return -1
    return 1


cdef UpConn* h2_pool_acquire(HStream* s, ClusterCfg* cl, int idx) noexcept nogil:
    """http_pool_acquire for an HTTP/2 cluster (its contract): a stream handle, ready when a
    connected connection had room, else pending; NULL with s.response_flags saying why."""
    cdef Worker* w = s.c.w
    cdef HttpPool* p = _pool_of(cl, w)
    cdef ClusterParams* prm = cluster_params(cl, w)
    cdef UpConn** head = _pool_list(p, w, idx)
    cdef UpConn* conn
    cdef UpConn* h
    cdef int r
    if head != NULL:
        head = _pool_find_for(p, head, s)
    conn = _h2_pick(head)
    if conn != NULL and conn.state == UC_BUSY:
        if cb_full(&cl.n_rq, prm.max_rq):
            stat_add(cl.stats, w, C_RQ_ACTIVE_OVERFLOW, 1)
            s.response_flags |= RF_UO
            return NULL
    elif cb_full(&cl.n_pending, prm.max_pending):
        stat_add(cl.stats, w, C_RQ_PENDING_OVERFLOW, 1)
        s.response_flags |= RF_UO
        return NULL
    h = _h2_handle_new(s, cl, idx)
    if h == NULL:
        s.response_flags |= RF_UF
        return NULL
    r = _h2_place(p, h, True)
    if r < 0:
        h.stream = NULL
        _h2_handle_end(h)
        s.response_flags |= RF_UF
        return NULL
    if r == 0:
        h.state = UC_WAITING
        _h2_queue(p, h)
    return h


cdef void h2_pool_release(UpConn* h) noexcept nogil:
    """http_pool_release / http_pool_cancel of a stream handle: the stream is done with it
    (an open stream is reset with CANCEL; its connection stays)."""
    h.stream = NULL
    _h2_handle_end(h)


cdef void h2_pool_fail(UpConn* h, int status, const char* reason) noexcept nogil:
    """http_pool_fail of a stream handle: its stream fails, the connection stays."""
    cdef HStream* s = h.stream
    cdef H2Stream* st = h.h2s
    if s != NULL:
        if st.reset_rx and not st.bad:
            s.response_flags |= RF_UR
            if st.reset_code == NGHTTP2_REFUSED_STREAM and status == 503:
                reason = UPSTREAM_REFUSED   # (a refusal is not counted as a reset: Envoy 1.40)
            else:
                stat_add(h.cluster.stats, h.w, C_RQ_RX_RESET, 1)
        elif h.state == UC_CONNECTING:
            s.response_flags |= RF_UF
        else:
            s.response_flags |= RF_UPE if status == 502 else RF_UC
    h.stream = NULL
    if s != NULL:
        s.upstream.conn = NULL
    _h2_handle_end(h)
    if s != NULL:
        stream_upstream_failed(s, status, reason)


cdef void h2_serve_waiting(HttpPool* p, UpConn* h) noexcept nogil:
    """http_serve_waiting's step for a queued HTTP/2 request: placed, left waiting, or
    failed (503 UF: its connect failed at once)."""
    cdef HStream* s
    if _h2_place(p, h, False) >= 0:
        return
    s = h.stream
    h.stream = NULL
    if s != NULL:
        s.upstream.conn = NULL
        s.response_flags |= RF_UF
    _h2_handle_end(h)
    if s != NULL:
        stream_upstream_failed(s, 503, UPSTREAM_CONNECT_FAILURE)


# ---------------------------------------------------------------- auto_config over TLS

cdef bint h2_alpn_selected(UpConn* conn) noexcept nogil:
    """The TLS handshake's ALPN chose h2."""
    cdef const unsigned char* p = NULL
    cdef unsigned int n = 0
    if conn.ep.tls == NULL:
        return False
    SSL_get0_alpn_selected((<TlsConn*>conn.ep.tls).ssl, &p, &n)
    return n == 2 and p[0] == b'h' and p[1] == b'2'


cdef void h2_offer_alpn(UpConn* conn) noexcept nogil:
    """What a new HTTP/2 connection offers in its TLS handshake, unless the cluster's TLS
    context names its own protocols (as Envoy): h2, or h2 and http/1.1 under auto_config."""
    cdef TlsConn* t = <TlsConn*>conn.ep.tls
    if t == NULL or t.ctx.alpn_len:
        return
    if conn.h2.auto:
        SSL_set_alpn_protos(t.ssl, <const unsigned char*>b"\x02h2\x08http/1.1", 12)
    else:
        SSL_set_alpn_protos(t.ssl, <const unsigned char*>b"\x02h2", 3)


cdef int _h2_request_as_h1(UpConn* conn, UpConn* h) noexcept nogil:
    """Write what h holds of its request (the head, as HEADERS would have carried it; the
    body; its end) as HTTP/1.1 into conn. -1: no memory."""
    cdef H2Stream* st = h.h2s
    cdef PairList l
    cdef PairList tl
    cdef BodyFraming bf
    cdef StrRef method, target, name, value
    cdef size_t i, k
    cdef int rc = 0
    memset(&l, 0, sizeof(PairList))
    memset(&tl, 0, sizeof(PairList))
    memset(&bf, 0, sizeof(BodyFraming))
    method = _s(NULL, 0)
    target = _s(NULL, 0)
    bf.kind = BODY_STREAM if st.has_body else BODY_NONE
    for i in range(st.nvlen):
        name = _s(<const char*>st.nva[i].name, st.nva[i].namelen)
        value = _s(<const char*>st.nva[i].value, st.nva[i].valuelen)
        if _ieq(name.p, name.n, ":method"):
            method = value
        elif _ieq(name.p, name.n, ":path"):
            target = value
        elif _ieq(name.p, name.n, ":authority"):
            rc |= _pl_add(&l, _cs("host"), value)
        elif _ieq(name.p, name.n, "content-length"):
            if st.has_body:
                bf.kind = BODY_LENGTH
                bf.length_text = value
                bf.length = 0
                for k in range(value.n):
                    bf.length = bf.length * 10 + <uint64_t>(value.p[k] - 48)
        elif name.n and name.p[0] != b':' and not _ieq(name.p, name.n, "te"):
            rc |= _pl_add(&l, name, value)
    for i in range(st.tnvlen):
        rc |= _pl_add(&tl, _s(<const char*>st.tnva[i].name, st.tnva[i].namelen),
                      _s(<const char*>st.tnva[i].value, st.tnva[i].valuelen))
    if rc == 0:
        rc = conn.codec.encode_headers(conn, method, target, &l, &bf)
    if rc == 0 and h.out_buf.length:
        rc = conn.codec.encode_data(conn, &h.out_buf, h.out_buf.length)
    if rc == 0 and st.req_end:
        rc = conn.codec.encode_end(conn, &tl)
    free(l.v)
    free(tl.v)
    return rc


cdef void h2_conn_fallback_h1(UpConn* conn) noexcept nogil:
    """auto_config: the server did not choose h2. The connection becomes an HTTP/1.1 one
    for the first request waiting on it (its request, held as HEADERS and body bytes, is
    written as HTTP/1.1; the stream's handle becomes this connection); the others wait in
    the pool again for connections of their own."""
    cdef H2Conn* hc = conn.h2
    cdef HttpPool* p = _pool_of(conn.cluster, conn.w)
    cdef UpConn* first = NULL
    cdef UpConn* h
    cdef HStream* s
    _h2_conn_drain(conn)
    while hc.waiting != NULL:
        h = hc.waiting
        _h2_unwait(h)
        h.h2_conn = NULL
        if first == NULL:
            first = h
        else:
            h.state = UC_WAITING
            _h2_queue(p, h)
            _pool_kick(p, conn.w)
    stat_add(conn.cluster.stats, conn.w, C_CX_HTTP1_TOTAL, 1)
    _h2_conn_release(conn)
    conn.h2_role = H2R_NONE
    conn.codec = &H1_CLIENT_CODEC
    free(conn.h2)
    conn.h2 = NULL
    if first == NULL:
        conn.codec.start(conn, METHOD_GET)
        http_pool_release(conn, True)   # an idle HTTP/1.1 connection
        return
    s = first.stream
    conn.codec.start(conn, s.method if s != NULL else METHOD_GET)
    if s == NULL or (first.h2s.head_encoded and _h2_request_as_h1(conn, first) < 0):
        first.stream = NULL
        _h2_handle_end(first)
        http_pool_release(conn, s == NULL)
        if s != NULL:
            s.upstream.conn = NULL
            stream_upstream_failed(s, 503, UPSTREAM_CONNECT_FAILURE)
        return
    first.stream = NULL
    _h2_handle_end(first)               # (its pending request: counted off)
    conn.stream = s
    s.upstream.conn = conn
    if not _upconn_attach(conn):
        _upconn_overflowed(conn)
