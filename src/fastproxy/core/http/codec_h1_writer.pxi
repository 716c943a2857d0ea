# The HTTP/1.1 serializer: request and response heads and chunk framing from StrRef/FieldPair
# input the caller owns (the contract is in codec_h1_decls.pxi; noexcept nogil).

# ---------------------------------------------------------------- serializer

cdef inline bint _h1_all(const char* s, size_t n, uint8_t k) noexcept nogil:
    return _h1_span(<const uint8_t*>s, n, k) == n


cdef ssize_t _h1_fields_size(const FieldPair* f, size_t nf) noexcept nogil:
    cdef size_t i
    cdef size_t total = 0
    for i in range(nf):
        if f[i].name.n == 0 or not _h1_all(f[i].name.p, f[i].name.n, _K_TCHAR):
            return -1
        if not _h1_all(f[i].value.p, f[i].value.n, _K_FVAL):
            return -1
        total += f[i].name.n + 2 + f[i].value.n + 2
    return <ssize_t>total


cdef char* _h1_put_fields(char* o, const FieldPair* f, size_t nf) noexcept nogil:
    cdef size_t i
    for i in range(nf):
        memcpy(o, f[i].name.p, f[i].name.n)
        o += f[i].name.n
        o[0] = 58
        o[1] = _SP
        o += 2
        memcpy(o, f[i].value.p, f[i].value.n)
        o += f[i].value.n
        o[0] = _CR
        o[1] = _LF
        o += 2
    return o


cdef ssize_t h1_request_head_size(StrRef method, StrRef target, int minor, const FieldPair* f,
                                  size_t nf) noexcept nogil:
    """Bytes h1_write_request_head will write, or -1 if any piece is invalid."""
    cdef ssize_t fs
    if method.n == 0 or not _h1_all(method.p, method.n, _K_TCHAR):
        return -1
    if target.n == 0 or not _h1_all(target.p, target.n, _K_TARGET):
        return -1
    if minor != 0 and minor != 1:
        return -1
    fs = _h1_fields_size(f, nf)
    if fs < 0:
        return -1
    return <ssize_t>(method.n + 1 + target.n + 1 + 8 + 2) + fs + 2


cdef size_t h1_write_request_head(char* out, StrRef method, StrRef target, int minor,
                                  const FieldPair* f, size_t nf) noexcept nogil:
    cdef char* o = out
    memcpy(o, method.p, method.n)
    o += method.n
    o[0] = _SP
    o += 1
    memcpy(o, target.p, target.n)
    o += target.n
    memcpy(o, b" HTTP/1.", 8)
    o[8] = <char>(48 + minor)
    o[9] = _CR
    o[10] = _LF
    o = _h1_put_fields(o + 11, f, nf)
    o[0] = _CR
    o[1] = _LF
    return <size_t>(o + 2 - out)


cdef ssize_t h1_response_head_size(int status, StrRef reason, int minor, const FieldPair* f,
                                   size_t nf) noexcept nogil:
    cdef ssize_t fs
    if status < 100 or status > 599 or (minor != 0 and minor != 1):
        return -1
    if not _h1_all(reason.p, reason.n, _K_FVAL):
        return -1
    fs = _h1_fields_size(f, nf)
    if fs < 0:
        return -1
    return <ssize_t>(13 + reason.n + 2) + fs + 2


cdef size_t h1_write_response_head(char* out, int status, StrRef reason, int minor,
                                   const FieldPair* f, size_t nf) noexcept nogil:
    cdef char* o = out
    memcpy(o, b"HTTP/1.", 7)
    o[7] = <char>(48 + minor)
    o[8] = _SP
    o[9] = <char>(48 + status // 100)
    o[10] = <char>(48 + status // 10 % 10)
    o[11] = <char>(48 + status % 10)
    o[12] = _SP
    o += 13
    memcpy(o, reason.p, reason.n)
    o += reason.n
    o[0] = _CR
    o[1] = _LF
    o = _h1_put_fields(o + 2, f, nf)
    o[0] = _CR
    o[1] = _LF
    return <size_t>(o + 2 - out)


cdef size_t h1_write_chunk_header(char* out, uint64_t size) noexcept nogil:
    """"<hex size>\\r\\n" into out (at least H1_CHUNK_HEADER_MAX bytes). The chunk data
    follows, then "\\r\\n". Size 0 is the last-chunk: use h1_write_last_chunk instead."""
    cdef const char* digits = b"0123456789abcdef"
    cdef char tmp[16]
    cdef int n = 0
    cdef int i
    while True:
        tmp[n] = digits[size & 15]
        n += 1
        size >>= 4
        if size == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    out[n] = _CR
    out[n + 1] = _LF
    return <size_t>(n + 2)


cdef ssize_t h1_last_chunk_size(const FieldPair* trailers, size_t nt) noexcept nogil:
    cdef ssize_t fs = _h1_fields_size(trailers, nt)
    return -1 if fs < 0 else 3 + fs + 2


cdef size_t h1_write_last_chunk(char* out, const FieldPair* trailers, size_t nt) noexcept nogil:
    cdef char* o
    out[0] = 48
    out[1] = _CR
    out[2] = _LF
    o = _h1_put_fields(out + 3, trailers, nt)
    o[0] = _CR
    o[1] = _LF
    return <size_t>(o + 2 - out)
