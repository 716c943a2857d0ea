# The HTTP/1.1 client codec: the requests the router encodes become bytes in UpConn.out_buf,
# and the upstream's bytes (UpConn.in_buf) become response events for the stream bound to
# the connection. The only file that reads the response parser's state (UpConn.h1).
#
# Events, in order, per response (core/http/router_filter.pxi):
#   ur_on_response_headers(s, head, &facts)   a final response head (1xx other than 101 are
#                                             dropped here: the proxy answers Expect itself);
#                                             the head stays the codec's until the next
#                                             request (s.upstream.resp_head borrows it)
#   ur_on_response_data(s, src, n, end, tr)   n body bytes at the front of src (de-framed);
#                                             the end (with trailers) is always delivered,
#                                             also after a head without a body; only while
#                                             ur_response_data_wanted(s, at_end)
#   ur_on_response_error(s, UE_*)             a malformed response, or the upstream closed
#                                             before its end
# After a 101 the codec steps aside: the connection is a tunnel (the router's).

cdef ClientCodecApi H1_CLIENT_CODEC


cdef void _h1c_start(UpConn* u, int method) noexcept nogil:
    cdef H1Parser* p = &u.h1.resp
    if p.max_head == 0:
        h1_init(p, H1_RESPONSE, 0, 0, 0)
    else:
        h1_reset(p)
    h1_response_for(p, method)          # HEAD and CONNECT change how the response ends
    u.h1.end_delivered = 0


cdef void _h1c_release(UpConn* u) noexcept nogil:
    h1_free(&u.h1.resp)


cdef bint _h1c_response_complete(UpConn* u) noexcept nogil:
    return u.h1.resp.state == H1_MESSAGE_DONE


cdef bint _h1c_reusable(UpConn* u) noexcept nogil:
    return u.h1.resp.state == H1_MESSAGE_DONE and (u.h1.resp.flags & H1F_KEEP_ALIVE) != 0


cdef uint64_t _h1c_raw_body_left(UpConn* u) noexcept nogil:
    cdef H1Parser* p = &u.h1.resp
    if p.framing == H1_BODY_LENGTH and (p.state == H1_HEAD_DONE or p.state == H1_BODY):
        return p.body_remaining
    return 0


cdef bint _h1c_raw_body_moved(UpConn* u, uint64_t n) noexcept nogil:
    h1_body_skipped(&u.h1.resp, n)
    return u.h1.resp.state == H1_MESSAGE_DONE


cdef int _h1c_headers(UpConn* u, HStream* s) noexcept nogil:
    """A complete response head is in the parser: drop 1xx, refuse what cannot be framed,
    hand the rest to the stream. -1: the stream ended; 1: read the next head (a 1xx)."""
    cdef H1Parser* p = &u.h1.resp
    cdef ResponseFacts f
    cdef size_t n = 0
    cdef const char* v
    cdef int st = p.head.status
    if p.flags & H1F_TE_CODINGS:
        # gzip, chunked etc.: the coding would be lost when re-framing (Envoy: 502).
        ur_on_response_error(s, UE_PROTOCOL)
        return -1
    if st != 101 and (st < 200 or st == 204) and ((p.flags & H1X_TE) or p.content_length > 0):
        # Envoy's codec: a 1xx or 204 cannot frame a body, so Transfer-Encoding or a
        # non-zero Content-Length there means the upstream and we disagree on where the
        # message ends; the connection cannot be trusted for the next response.
        ur_on_response_error(s, UE_PROTOCOL)
        return -1
    if p.flags & H1F_INTERIM:
        h1_reset(p)                     # 1xx: we already answered any Expect ourselves
        return 1
    memset(&f, 0, sizeof(ResponseFacts))
    f.end_stream = p.framing == H1_BODY_NONE
    f.content_length = <int64_t>p.body_remaining if p.framing == H1_BODY_LENGTH else -1
    if st >= 200 and st != 204 and p.content_length >= 0:
        v = _head_field(&p.head, "content-length", &n)
        if v != NULL:
            f.length_text = _s(v, n)
    if f.end_stream:
        p.state = H1_MESSAGE_DONE
    return ur_on_response_headers(s, &p.head, &f)


cdef int _h1c_decode(UpConn* u) noexcept nogil:
    """Decode what u.in_buf holds for the stream bound to u (see the events above).
    -1: the stream ended (u may be pooled, closed or gone); 0: waiting."""
    cdef H1Parser* p = &u.h1.resp
    cdef HStream* s = u.stream
    cdef SliceRef* r
    cdef ssize_t n
    cdef size_t off, seg
    cdef bint end
    cdef int rc
    while True:
        if p.state == H1_HEAD:
            if u.in_buf.length == 0:
                if u.eof:
                    ur_on_response_error(s, UE_CLOSED_IN_HEAD if p.head.len else UE_CLOSED_BEFORE_HEAD)
                    return -1
                return 0
            r = &u.in_buf.refs[u.in_buf.head]
            n = h1_feed_head(p, r.s.data + r.off, r.len)
            if n < 0:
                ur_on_response_error(s, UE_PROTOCOL)
                return -1
            chain_drain(&u.in_buf, <size_t>n)
            if p.state != H1_HEAD_DONE:
                continue
            rc = _h1c_headers(u, s)
            if rc < 0:
                return -1
            if rc == 0 and s.tunnel:
                return 0                # a 101: the router's tunnel takes the connection
            continue
        if p.flags & H1F_UPGRADE:
            return 0                    # after a 101 the connection is not HTTP any more
        if u.h1.end_delivered or not ur_response_data_wanted(s, p.state == H1_MESSAGE_DONE):
            return 0
        if p.state == H1_MESSAGE_DONE:
            u.h1.end_delivered = 1
            return ur_on_response_data(s, &u.in_buf, 0, True,
                                       &p.trailers if p.trailers.nfields else NULL)
        if u.in_buf.length == 0:
            if u.eof:
                if h1_feed_eof(p) == 0:
                    continue            # a body delimited by the close: complete
                ur_on_response_error(s, UE_CLOSED_IN_BODY)
                return -1
            return 0
        r = &u.in_buf.refs[u.in_buf.head]
        n = h1_feed_body(p, r.s.data + r.off, r.len, &off, &seg)
        if n < 0:
            ur_on_response_error(s, UE_BODY_FRAMING)
            return -1
        chain_drain(&u.in_buf, off)
        end = p.state == H1_MESSAGE_DONE
        if seg or end:
            if end:
                u.h1.end_delivered = 1
            if ur_on_response_data(s, &u.in_buf, seg, end,
                                   &p.trailers if end and p.trailers.nfields else NULL) < 0:
                return -1
        chain_drain(&u.in_buf, <size_t>n - off - seg)


cdef int _h1c_encode_headers(UpConn* u, StrRef method, StrRef target, PairList* l,
                             const BodyFraming* f) noexcept nogil:
    """A request head into u.out_buf (always HTTP/1.1; a body of unknown length chunked)."""
    cdef char lenbuf[24]
    if h1_framing_fields(&u.h1.req, l, f, True, lenbuf, sizeof(lenbuf)) < 0:
        return -1
    u.h1.req.head_only = 0
    if f.upgrade and _pl_add(l, _cs("connection"), _cs("upgrade")) < 0:
        return -1
    return _append_head(&u.out_buf, l, True, method, target, 0, _s(NULL, 0))


cdef int _h1c_encode_data(UpConn* u, Chain* src, size_t n) noexcept nogil:
    return h1_write_body(&u.h1.req, &u.out_buf, src, n)


cdef int _h1c_encode_end(UpConn* u, PairList* trailers) noexcept nogil:
    return h1_write_end(&u.h1.req, &u.out_buf, trailers)


cdef bint _h1c_raw_data_ok(UpConn* u) noexcept nogil:
    return not (u.h1.req.chunked or u.h1.req.counted)


# -- a response read on its own (H1ResponseReader: active health checks)

ctypedef int (*h1rr_body_fn)(void* arg, const char* data, size_t n) noexcept nogil


cdef void h1rr_init(H1ResponseReader* r, bint head_request) noexcept nogil:
    """Ready to read the response to a request (a HEAD request's has no body)."""
    h1_init(&r.p, H1_RESPONSE, 0, 0, 0)
    if head_request:
        h1_response_for(&r.p, METHOD_HEAD)


cdef void h1rr_reset(H1ResponseReader* r) noexcept nogil:
    """Ready for the next response on the same connection."""
    h1_reset(&r.p)


cdef void h1rr_free(H1ResponseReader* r) noexcept nogil:
    h1_free(&r.p)


cdef inline HttpHead* h1rr_head(H1ResponseReader* r) noexcept nogil:
    """The final response's head (valid once h1rr_feed returned 1)."""
    return &r.p.head


cdef inline bint h1rr_keep_alive(H1ResponseReader* r) noexcept nogil:
    """May the connection carry another request after this response?"""
    return (r.p.flags & H1F_KEEP_ALIVE) != 0


cdef int h1rr_feed(H1ResponseReader* r, const char* data, size_t n, h1rr_body_fn on_body,
                   void* arg) noexcept nogil:
    """Response bytes; body bytes go to on_body (NULL: dropped). 1: the final response is
    complete, 0: more to come, -1: malformed (or on_body failed). 1xx heads are skipped."""
    cdef ssize_t k
    cdef size_t off, seg
    while n > 0 or r.p.state == H1_HEAD_DONE:
        if r.p.state == H1_HEAD:
            k = h1_feed_head(&r.p, data, n)
            if k < 0:
                return -1
            if r.p.state == H1_HEAD_DONE and (r.p.flags & H1F_INTERIM):
                h1_reset(&r.p)          # a 1xx: the final response follows
        else:
            k = h1_feed_body(&r.p, data, n, &off, &seg)
            if k < 0:
                return -1
            if seg and on_body != NULL and on_body(arg, data + off, seg) < 0:
                return -1
            if r.p.state == H1_MESSAGE_DONE:
                return 1
        data += k
        n -= <size_t>k
        if k == 0 and r.p.state != H1_HEAD_DONE:
            break
    return 0


cdef bint h1rr_feed_eof(H1ResponseReader* r) noexcept nogil:
    """The peer closed: True when that ended a complete response (a body read to the
    close); the connection is then not kept."""
    if h1_feed_eof(&r.p) == 0 and r.p.state == H1_MESSAGE_DONE:
        r.p.flags &= ~(<uint32_t>H1F_KEEP_ALIVE)
        return True
    return False


H1_CLIENT_CODEC.name = "http1"
H1_CLIENT_CODEC.start = _h1c_start
H1_CLIENT_CODEC.release = _h1c_release
H1_CLIENT_CODEC.decode = _h1c_decode
H1_CLIENT_CODEC.response_complete = _h1c_response_complete
H1_CLIENT_CODEC.reusable = _h1c_reusable
H1_CLIENT_CODEC.raw_body_left = _h1c_raw_body_left
H1_CLIENT_CODEC.raw_body_moved = _h1c_raw_body_moved
H1_CLIENT_CODEC.encode_headers = _h1c_encode_headers
H1_CLIENT_CODEC.encode_data = _h1c_encode_data
H1_CLIENT_CODEC.encode_end = _h1c_encode_end
H1_CLIENT_CODEC.raw_data_ok = _h1c_raw_data_ok
