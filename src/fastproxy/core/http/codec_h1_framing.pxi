# HTTP/1.1 on the way out, shared by the server codec (responses) and the client codec
# (requests): a head serialized into a connection's out chain, the framing fields a
# BodyFraming becomes, and the body writer that frames what follows (Content-Length bytes as
# they are, chunks, the last chunk with trailers). Zero copy: body slices are moved, only
# chunk lines are written.

cdef int _append_head(Chain* out, PairList* l, bint request, StrRef method, StrRef target,
                      int status, StrRef reason, int minor=1) noexcept nogil:
    """Serialize a head straight into a fresh slice at the end of `out`. `minor`: the
    response's HTTP/1.x version; requests upstream are always HTTP/1.1."""
    cdef ssize_t n
    cdef Slice* s
    if request:
        n = h1_request_head_size(method, target, 1, l.v, l.n)
    else:
        n = h1_response_head_size(status, reason, minor, l.v, l.n)
    if n < 0:
        return -1
    s = slice_new(<size_t>n)
    if s == NULL:
        return -1
    if request:
        h1_write_request_head(s.data, method, target, 1, l.v, l.n)
    else:
        h1_write_response_head(s.data, status, reason, minor, l.v, l.n)
    s.fill = <size_t>n
    return chain_append_slice(out, s, 0, <size_t>n)


cdef int _append_chunk_header(Chain* out, size_t n) noexcept nogil:
    cdef char hdr[H1_CHUNK_HEADER_MAX]
    cdef size_t k = h1_write_chunk_header(hdr, n)
    return chain_append(out, hdr, k)


cdef int _append_last_chunk(Chain* out, PairList* trailers) noexcept nogil:
    """0 CRLF, the trailer fields, CRLF."""
    cdef FieldPair* v = trailers.v if trailers != NULL else NULL
    cdef size_t nv = trailers.n if trailers != NULL else 0
    cdef ssize_t n = h1_last_chunk_size(v, nv)
    cdef Slice* s
    if n < 0:
        return -1
    s = slice_new(<size_t>n)
    if s == NULL:
        return -1
    h1_write_last_chunk(s.data, v, nv)
    s.fill = <size_t>n
    return chain_append_slice(out, s, 0, <size_t>n)


cdef int h1_framing_fields(H1BodyWriter* w, PairList* l, const BodyFraming* f, bint stream_ok,
                           char* buf, size_t cap) noexcept nogil:
    """The Content-Length / Transfer-Encoding fields of a head and the writer's state for
    its body. stream_ok: the peer takes chunked (else a streamed body is sent as it is and
    the connection's close ends it). buf (24 bytes) holds a length written in decimal."""
    cdef int k
    w.chunked = 0
    w.counted = 0
    w.left = 0
    if f.kind == BODY_LENGTH:
        if f.check_length:
            w.counted = 1
            w.left = f.length
        if f.length_text.p != NULL:
            return _pl_add(l, _cs("content-length"), f.length_text)
        k = snprintf(buf, cap, "%llu", <unsigned long long>f.length)
        return _pl_add(l, _cs("content-length"), _s(buf, <size_t>k))
    if f.kind == BODY_NONE:
        if f.length_text.p != NULL:     # a HEAD or 304 answer: the size it would have
            return _pl_add(l, _cs("content-length"), f.length_text)
        return 0
    if f.kind == BODY_STREAM and stream_ok:
        w.chunked = 1
        return _pl_add(l, _cs("transfer-encoding"), _cs("chunked"))
    return 0


cdef int h1_write_body(H1BodyWriter* w, Chain* out, Chain* src, size_t n) noexcept nogil:
    """Move n bytes from the front of src to out, framed. -1: more than a counted length,
    or no memory."""
    if w.head_only:
        chain_drain(src, n)             # an answer to HEAD carries no body
        return 0
    if n == 0:
        return 0
    if w.counted:
        if n > w.left:
            return -1
        w.left -= n
    if w.chunked:
        if _append_chunk_header(out, n) < 0 or chain_move_bytes(out, src, n) < 0:
            return -1
        return chain_append(out, "\r\n", 2)
    return chain_move_bytes(out, src, n)


cdef int h1_write_body_bytes(H1BodyWriter* w, Chain* out, const char* p, size_t n) noexcept nogil:
    """h1_write_body for bytes in memory (copied)."""
    if w.head_only or n == 0:
        return 0
    if w.counted:
        if n > w.left:
            return -1
        w.left -= n
    if w.chunked:
        if _append_chunk_header(out, n) < 0 or chain_append(out, p, n) < 0:
            return -1
        return chain_append(out, "\r\n", 2)
    return chain_append(out, p, n)


cdef int h1_write_end(H1BodyWriter* w, Chain* out, PairList* trailers) noexcept nogil:
    """The body is complete: the last chunk (with the trailers) when chunked. -1: fewer
    bytes than a counted length (the peer would read the next message as body), or no
    memory. Trailers without chunked framing have nowhere to go and are dropped."""
    if w.head_only:
        return 0
    if w.counted and w.left:
        return -1
    if w.chunked:
        return _append_last_chunk(out, trailers)
    return 0
