# The HTTP/1.1 server codec: a downstream connection's bytes (HConn.in_buf) become stream
# events for the connection manager, and the responses it encodes become bytes in
# HConn.out_buf. The parser (codec_h1.pxi) and the framing writer (codec_h1_framing.pxi) do
# the work; this file is the only one that reads the request parser's state (HConn.h1).
#
# Events, in order, per request (core/http/conn_manager.pxi and active_stream.pxi):
#   cm_on_request_begin(c)                    the first byte of a request head
#   cm_on_request_headers(c, &head, &facts)   the head is complete and valid; the connection
#                                             manager takes the head (and starts a stream)
#   cm_on_request_data(s, src, n, end, tr)    n body bytes at the front of src (de-framed),
#                                             `end` with the last, trailers with the end;
#                                             only while cm_request_data_wanted(s)
#   cm_on_codec_error(c, status, empty_body)  a malformed head (no stream yet) or body
#   cm_on_peer_closed(c, inside_request)      the client closed between requests or inside
#                                             a head
# A request without a body is complete at its head (facts.end_stream): no data event.

cdef ServerCodecApi H1_SERVER_CODEC


cdef void _h1s_start(HConn* c) noexcept nogil:
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    h1_init(&c.h1.req, H1_REQUEST, h.max_head, 0, h.max_fields)


cdef void _h1s_release(HConn* c) noexcept nogil:
    h1_free(&c.h1.req)


cdef bint _h1s_mid_message(HConn* c) noexcept nogil:
    cdef H1Parser* p = &c.h1.req
    return not (p.state == H1_MESSAGE_DONE or (p.state == H1_HEAD and p.head.len == 0))


cdef void _h1s_stream_done(HConn* c, HStream* s) noexcept nogil:
    if not s.keepalive or not s.req_received:
        # Either we said Connection: close, or the request body was never read (a local
        # reply came first): the bytes that follow can't be trusted as a next request.
        c.close_after = 1
        if not s.req_received:
            c.unread_request = 1        # the parser is reset below; _hconn_finish must know
    h1_reset(&c.h1.req)


cdef void _h1s_stream_reset(HConn* c, HStream* s, bint refused) noexcept nogil:
    pass                                # (HTTP/1 resets a stream by closing: stream_reset)


cdef bint _h1s_send_ok(HConn* c, HStream* s) noexcept nogil:
    return c.out_buf.length < HTTP_IO_LIMIT


cdef uint64_t _h1s_raw_body_left(HConn* c, HStream* s) noexcept nogil:
    cdef H1Parser* p = &c.h1.req
    if p.framing == H1_BODY_LENGTH and (p.state == H1_HEAD_DONE or p.state == H1_BODY):
        return p.body_remaining
    return 0


cdef bint _h1s_raw_body_moved(HConn* c, HStream* s, uint64_t n) noexcept nogil:
    h1_body_skipped(&c.h1.req, n)
    return c.h1.req.state == H1_MESSAGE_DONE


cdef int _h1_request_target(HttpHead* hd, const HttpCfg* h) noexcept nogil:
    """Bring a request head to origin-form with a Host, before anything reads it.

    * absolute-form (RFC 9112 3.2.2, "GET http://a.example/p HTTP/1.1"): routed and sent
      upstream as its path ("/p"), and its authority replaces the Host field's value, as
      RFC 9112 3.2.2 and Envoy do. Only http and https; an empty path becomes "/".
    * HTTP/1.0 without Host: default_host_for_http_10 if configured, else refused (Envoy).
    Returns -1 for a request to refuse with 400, -2 for an HTTP/1.0 request without Host
    nor default_host_for_http_10 (400 too, with Envoy's empty body)."""
    cdef char* t = hd.buf + hd.target_off
    cdef size_t n = hd.target_len
    cdef size_t a, e
    cdef uint32_t i
    cdef int host = -1
    for i in range(hd.nfields):
        if hd.fields[i].name_len == 4 and _ieq(hd.buf + hd.fields[i].name_off, 4, "host"):
            host = <int>i
            break
    if hd.method != METHOD_CONNECT and n and t[0] != b"/" and not (n == 1 and t[0] == b"*"):
        if n > 7 and _ieq(t, 7, "http://"):
            a = 7
        elif n > 8 and _ieq(t, 8, "https://"):
            a = 8
        else:
            return -1
        e = a
        while e < n and t[e] != b'/' and t[e] != b'?':
            e += 1
        if e == a:
            return -1
        if e == n or t[e] != b'/':
            # No path: slide the authority one byte left over the second '/' of "://"
            # and put the path's "/" after it, so both stay inside the received bytes.
            memmove(t + a - 1, t + a, e - a)
            a -= 1
            e -= 1
            t[e] = b'/'
        if host < 0:                    # HTTP/1.0: no Host; the field's value is set below
            if http_head_add_field(hd, "host", 4, "", 0) < 0:
                return -1
            host = <int>hd.nfields - 1
        hd.fields[host].value_off = hd.target_off + <uint32_t>a
        hd.fields[host].value_len = <uint32_t>(e - a)
        hd.target_off += <uint32_t>e
        hd.target_len -= <uint32_t>e
        return 0
    if host < 0 and hd.minor == 0:
        if h.default_host_10 == NULL:
            return -2                   # no Host and no default_host_for_http_10
        if http_head_add_field(hd, "host", 4, h.default_host_10, h.default_host_10_len) < 0:
            return -1
    return 0


cdef int _h1_underscores(HConn* c, HttpHead* hd, HttpCfg* h) noexcept nogil:
    """headers_with_underscores_action on a request head just parsed (Envoy's HTTP/1 codec
    does it while parsing). DROP_HEADER removes such fields (http1.dropped_headers_with_
    underscores); REJECT_REQUEST refuses the request as a codec error (400, http1.requests_
    rejected_with_underscores_in_headers): returns -1 then."""
    cdef uint32_t i, k = 0
    cdef uint64_t dropped = 0
    for i in range(hd.nfields):
        if memchr(hd.buf + hd.fields[i].name_off, b'_', hd.fields[i].name_len) != NULL:
            if h.underscores == US_REJECT:
                stat_add(h.http1_stats, c.w, H1S_REJECTED_UNDERSCORES, 1)
                return -1
            dropped += 1
            continue
        hd.fields[k] = hd.fields[i]
        k += 1
    hd.nfields = k
    if dropped:
        stat_add(h.http1_stats, c.w, H1S_DROPPED_UNDERSCORES, dropped)
    return 0


cdef int _h1s_headers(HConn* c) noexcept nogil:
    """The parser holds a complete request head: hand it over as the headers event."""
    cdef H1Parser* p = &c.h1.req
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef RequestFacts f
    cdef HttpHead head
    memset(&f, 0, sizeof(RequestFacts))
    f.keepalive = (p.flags & H1F_KEEP_ALIVE) != 0
    f.expect_continue = (p.flags & H1F_EXPECT_CONTINUE) != 0
    f.upgrade = (p.flags & H1F_UPGRADE) != 0
    f.connect = (p.flags & H1F_CONNECT) != 0
    f.unsupported_coding = (p.flags & H1F_TE_CODINGS) != 0
    f.envoy_hdrs = (p.flags & H1X_ENVOY_HDR) != 0
    f.content_length = p.content_length
    f.end_stream = p.framing == H1_BODY_NONE
    if f.end_stream:
        p.state = H1_MESSAGE_DONE
    h1_head_take(p, &head)
    if h.underscores != US_ALLOW and _h1_underscores(c, &head, h) < 0:
        # Envoy's codec refuses the request (a protocol error, like the codec's own)
        http_head_free(&head)
        cm_on_codec_error(c, 400, False)
        return -1 if c.closed else 0
    f.protocol = HTTP_PROTO_10 if head.minor == 0 else HTTP_PROTO_11
    f.target = _h1_request_target(&head, h)
    cm_on_request_headers(c, &head, &f, NULL)
    return -1 if c.closed else 0


cdef int _h1s_decode_body(HConn* c, HStream* s) noexcept nogil:
    cdef H1Parser* p = &c.h1.req
    cdef SliceRef* r
    cdef ssize_t n
    cdef size_t off, seg
    cdef bint end
    while c.in_buf.length and p.state != H1_MESSAGE_DONE and cm_request_data_wanted(s):
        r = &c.in_buf.refs[c.in_buf.head]
        n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
        if n < 0:
            cm_on_codec_error(c, p.err_status, False)
            return -1
        chain_drain(&c.in_buf, off)
        end = p.state == H1_MESSAGE_DONE
        if seg or end:
            if cm_on_request_data(s, &c.in_buf, seg, end,
                                  &p.trailers if end and p.trailers.nfields else NULL) < 0:
                return -1
        chain_drain(&c.in_buf, <size_t>n - off - seg)
    return 0


cdef int _h1s_decode(HConn* c) noexcept nogil:
    """Decode what c.in_buf holds: the current stream's body, or the next request head.
    Returns -1 when the connection closed or the stream ended, else 0 (waiting for bytes,
    for room, or a head was answered by the codec's error)."""
    cdef H1Parser* p = &c.h1.req
    cdef SliceRef* r
    cdef ssize_t n
    if c.streams != NULL:
        return _h1s_decode_body(c, c.streams)
    while True:
        if c.in_buf.length == 0:
            if c.down_eof:
                cm_on_peer_closed(c, h1_feed_eof(p) < 0)
                return -1
            return 0
        if p.state == H1_HEAD and p.head.len == 0:
            cm_on_request_begin(c)
        r = &c.in_buf.refs[c.in_buf.head]
        n = h1_feed_head(p, r.s.data + r.off, r.len)
        if n < 0:
            cm_on_codec_error(c, p.err_status, p.err == H1E_MISSING_HOST)
            return -1 if c.closed else 0
        chain_drain(&c.in_buf, <size_t>n)
        if p.state == H1_HEAD_DONE:
            return _h1s_headers(c)


cdef int _h1s_encode_headers(HConn* c, HStream* s, int status, StrRef reason, PairList* l,
                             const BodyFraming* f, bint close) noexcept nogil:
    """A response head into c.out_buf. The status line has the client's HTTP/1.x version,
    as Envoy answers, except the 426 that refuses HTTP/1.0 (Envoy's codec never took the
    request as HTTP/1.0) and a tunnel's head: HTTP/1.1. A body of unknown length goes
    chunked, or to an HTTP/1.0 client as it is with the close ending it (s.keepalive is
    cleared then)."""
    cdef H1BodyWriter* w = &c.h1.resp
    cdef char lenbuf[24]
    cdef int minor = 1
    if s != NULL and s.protocol == HTTP_PROTO_10 and status != 426 and f.kind != BODY_TUNNEL:
        minor = 0
    if h1_framing_fields(w, l, f, minor == 1, lenbuf, sizeof(lenbuf)) < 0:
        return -1
    w.head_only = s != NULL and s.method == METHOD_HEAD
    if w.head_only and f.kind == BODY_NONE and f.length_text.p == NULL and status >= 200 \
            and status != 204 and status != 304:
        # Envoy's codec announces an answer to HEAD that gives no length as chunked (no
        # body follows either way); checked against Envoy 1.40, proxied and local.
        if _pl_add(l, _cs("transfer-encoding"), _cs("chunked")) < 0:
            return -1
    if f.kind == BODY_STREAM and minor == 0:
        close = True
        if s != NULL:
            s.keepalive = 0
    if f.kind == BODY_TUNNEL:
        if f.upgrade and _pl_add(l, _cs("connection"), _cs("upgrade")) < 0:
            return -1
    elif close:
        if _pl_add(l, _cs("connection"), _cs("close")) < 0:
            return -1
    elif minor == 0:
        if _pl_add(l, _cs("connection"), _cs("keep-alive")) < 0:
            return -1
    if reason.p == NULL:
        reason = _cs(_status_reason(status))
    return _append_head(&c.out_buf, l, False, _s(NULL, 0), _s(NULL, 0), status, reason, minor)


cdef int _h1s_encode_data(HConn* c, HStream* s, Chain* src, size_t n) noexcept nogil:
    return h1_write_body(&c.h1.resp, &c.out_buf, src, n)


cdef int _h1s_encode_bytes(HConn* c, HStream* s, const char* p, size_t n) noexcept nogil:
    return h1_write_body_bytes(&c.h1.resp, &c.out_buf, p, n)


cdef int _h1s_encode_end(HConn* c, HStream* s, PairList* trailers) noexcept nogil:
    return h1_write_end(&c.h1.resp, &c.out_buf, trailers)


cdef int _h1s_encode_continue(HConn* c, HStream* s) noexcept nogil:
    return chain_append(&c.out_buf, "HTTP/1.1 100 Continue\r\n\r\n", 25)


cdef bint _h1s_raw_data_ok(HConn* c, HStream* s) noexcept nogil:
    cdef H1BodyWriter* w = &c.h1.resp
    return not (w.chunked or w.counted or w.head_only)


H1_SERVER_CODEC.name = "http1"
H1_SERVER_CODEC.stat_cx_total = H_CX_HTTP1_TOTAL
H1_SERVER_CODEC.stat_cx_active = H_CX_HTTP1_ACTIVE
H1_SERVER_CODEC.stat_rq_total = H_RQ_HTTP1_TOTAL
H1_SERVER_CODEC.start = _h1s_start
H1_SERVER_CODEC.release = _h1s_release
H1_SERVER_CODEC.decode = _h1s_decode
H1_SERVER_CODEC.mid_message = _h1s_mid_message
H1_SERVER_CODEC.multiplexed = 0
H1_SERVER_CODEC.stream_done = _h1s_stream_done
H1_SERVER_CODEC.stream_reset = _h1s_stream_reset
H1_SERVER_CODEC.flush = NULL
H1_SERVER_CODEC.drain = NULL
H1_SERVER_CODEC.send_ok = _h1s_send_ok
H1_SERVER_CODEC.raw_body_left = _h1s_raw_body_left
H1_SERVER_CODEC.raw_body_moved = _h1s_raw_body_moved
H1_SERVER_CODEC.encode_headers = _h1s_encode_headers
H1_SERVER_CODEC.encode_data = _h1s_encode_data
H1_SERVER_CODEC.encode_bytes = _h1s_encode_bytes
H1_SERVER_CODEC.encode_end = _h1s_encode_end
H1_SERVER_CODEC.encode_continue = _h1s_encode_continue
H1_SERVER_CODEC.raw_data_ok = _h1s_raw_data_ok
