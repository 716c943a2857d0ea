# Operations on a head (core/http/message_decls.pxi) that any codec produced: free it, add
# a field the proxy supplies, replace the target. Offsets already handed out stay valid.

cdef const char* http_protocol_name(int protocol) noexcept nogil:
    """%PROTOCOL% as Envoy prints it."""
    if protocol == HTTP_PROTO_20:
        return "HTTP/2"
    return "HTTP/1.0" if protocol == HTTP_PROTO_10 else "HTTP/1.1"


cdef void http_head_free(HttpHead* h) noexcept nogil:
    free(h.buf)
    free(h.fields)
    memset(h, 0, sizeof(HttpHead))


cdef inline int _head_reserve(HttpHead* h, size_t need) noexcept nogil:
    """Room for need bytes plus a NUL after them. The head's bytes are always followed by a
    NUL (h.buf[h.len] == 0), so a C function that reads a field up to a terminator it was
    not given stops inside the block: regexec is called with REG_STARTEND, which glibc
    honours, but ASan's regexec interceptor (and other libcs) read to the NUL. -1: no memory."""
    cdef size_t cap
    cdef char* nb
    if need + 1 <= h.cap:
        return 0
    cap = <size_t>h.cap * 2 if h.cap else HEAD_BLOCK_MIN
    while cap < need + 1:
        cap *= 2
    nb = <char*>realloc(h.buf, cap)
    if nb == NULL:
        return -1
    h.buf = nb
    h.cap = <uint32_t>cap
    return 0


cdef int http_head_add_field(HttpHead* h, const char* name, size_t nn, const char* value,
                          size_t vn) noexcept nogil:
    """Append a field the proxy supplies (e.g. a default Host) to a taken head: its bytes go
    after the received ones, so offsets already handed out stay valid. -1: out of memory."""
    cdef size_t need = <size_t>h.len + nn + vn
    cdef HttpField* nf
    cdef uint32_t ncap
    if need > 0xFFFFFFF0u or _head_reserve(h, need) < 0:
        return -1
    if h.nfields == h.fields_cap:
        ncap = h.fields_cap * 2 if h.fields_cap else HEAD_FIELDS_MIN
        nf = <HttpField*>realloc(h.fields, ncap * sizeof(HttpField))
        if nf == NULL:
            return -1
        h.fields = nf
        h.fields_cap = ncap
    memcpy(h.buf + h.len, name, nn)
    memcpy(h.buf + h.len + nn, value, vn)
    h.fields[h.nfields].name_off = h.len
    h.fields[h.nfields].name_len = <uint32_t>nn
    h.fields[h.nfields].value_off = h.len + <uint32_t>nn
    h.fields[h.nfields].value_len = <uint32_t>vn
    h.nfields += 1
    h.len = <uint32_t>need
    h.buf[h.len] = 0
    return 0


cdef int http_head_set_target(HttpHead* h, const char* t, size_t n) noexcept nogil:
    """Replace a taken request head's target (a normalized path): in place when it is not
    longer, else its bytes go after the received ones (offsets stay valid). -1: no memory."""
    cdef size_t need = <size_t>h.len + n
    if n <= h.target_len:
        memmove(h.buf + h.target_off, t, n)
        h.target_len = <uint32_t>n
        return 0
    if need > 0xFFFFFFF0u or _head_reserve(h, need) < 0:
        return -1
    memcpy(h.buf + h.len, t, n)
    h.target_off = h.len
    h.target_len = <uint32_t>n
    h.len = <uint32_t>need
    h.buf[h.len] = 0
    return 0
