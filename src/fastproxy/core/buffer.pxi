# Buffers: chains of reference-counted slices (Envoy's Buffer::Instance idea).
#
# A Slice is one malloc'd block: a header followed by `cap` bytes. A Chain is an ordered
# list of SliceRefs, each naming a byte range of a slice. Moving bytes between chains moves
# refs (no copy); a Python view pins its slice by holding a reference. Only the chain owns
# its SliceRef array; slices may be shared (refcnt > 1) and are then never appended to.

DEF SLICE_SIZE = 65536          # default capacity of a fresh slice
DEF CHAIN_IOV_MAX = 64          # at most this many iovecs per readv/writev

cdef struct Slice:
    int refcnt                  # atomic: a Python view may drop it on another thread
    size_t cap
    size_t fill                 # bytes written so far (append point)
    char* data                  # == (char*)(slice + 1)

cdef struct SliceRef:
    Slice* s
    size_t off
    size_t len

cdef struct Chain:
    SliceRef* refs
    int head                    # index of the first ref in use
    int count                   # refs in use: refs[head .. head+count)
    int cap
    size_t length               # total bytes


cdef inline Slice* slice_new(size_t cap) noexcept nogil:
    cdef Slice* s = <Slice*>malloc(sizeof(Slice) + cap)
    if s == NULL:
        return NULL
    s.refcnt = 1
    s.cap = cap
    s.fill = 0
    s.data = (<char*>s) + sizeof(Slice)
    return s


cdef inline void slice_incref(Slice* s) noexcept nogil:
    fp_atomic_add_int(&s.refcnt, 1)


cdef inline void slice_decref(Slice* s) noexcept nogil:
    if fp_atomic_add_int(&s.refcnt, -1) == 0:
        free(s)


cdef inline void chain_init(Chain* c) noexcept nogil:
    c.refs = NULL
    c.head = 0
    c.count = 0
    c.cap = 0
    c.length = 0


cdef void chain_clear(Chain* c) noexcept nogil:
    cdef int i
    for i in range(c.count):
        slice_decref(c.refs[c.head + i].s)
    c.head = 0
    c.count = 0
    c.length = 0


cdef void chain_free(Chain* c) noexcept nogil:
    chain_clear(c)
    free(c.refs)
    c.refs = NULL
    c.cap = 0


cdef int chain_room(Chain* c, int extra) noexcept nogil:
    """Make room for `extra` refs at the tail. Returns 0, or -1 when out of memory."""
    cdef int need = c.count + extra
    cdef SliceRef* nr
    cdef int ncap
    if c.head + need <= c.cap:
        return 0
    if need <= c.cap and c.head > 0:
        memmove(c.refs, c.refs + c.head, c.count * sizeof(SliceRef))
        c.head = 0
        return 0
    ncap = c.cap * 2 if c.cap else 8
    while ncap < need:
        ncap *= 2
    nr = <SliceRef*>malloc(ncap * sizeof(SliceRef))
    if nr == NULL:
        return -1
    if c.count:
        memcpy(nr, c.refs + c.head, c.count * sizeof(SliceRef))
    free(c.refs)
    c.refs = nr
    c.head = 0
    c.cap = ncap
    return 0


cdef inline SliceRef* chain_tail(Chain* c) noexcept nogil:
    return &c.refs[c.head + c.count - 1] if c.count else NULL


cdef inline size_t chain_tail_room(Chain* c) noexcept nogil:
    """Writable bytes after the tail ref, when the chain owns the slice's append point."""
    cdef SliceRef* t = chain_tail(c)
    if t == NULL or t.s.refcnt != 1 or t.off + t.len != t.s.fill:
        return 0
    return t.s.cap - t.s.fill


cdef int chain_append_slice(Chain* c, Slice* s, size_t off, size_t n) noexcept nogil:
    """Append a ref to s[off:off+n]; takes over one reference of s."""
    if chain_room(c, 1) < 0:
        slice_decref(s)
        return -1
    cdef SliceRef* r = &c.refs[c.head + c.count]
    r.s = s
    r.off = off
    r.len = n
    c.count += 1
    c.length += n
    return 0


cdef int chain_ref_bytes(Chain* dst, const Chain* src, size_t n) noexcept nogil:
    """References to the first n bytes of src at the end of dst; src keeps them (no byte is
    copied: a retry's kept body, a shadow's copy). -1: no memory."""
    cdef int i = 0
    cdef const SliceRef* r
    cdef size_t k
    while n and i < src.count:
        r = &src.refs[src.head + i]
        k = r.len if r.len < n else n
        slice_incref(r.s)
        if chain_append_slice(dst, r.s, r.off, k) < 0:
            return -1
        n -= k
        i += 1
    return 0


cdef int chain_append(Chain* c, const char* p, size_t n) noexcept nogil:
    """Copy n bytes to the end of the chain."""
    cdef size_t room = chain_tail_room(c)
    cdef size_t k
    cdef SliceRef* t
    cdef Slice* s
    if room and n:
        k = room if room < n else n
        t = chain_tail(c)
        memcpy(t.s.data + t.s.fill, p, k)
        t.s.fill += k
        t.len += k
        c.length += k
        p += k
        n -= k
    if n:
        s = slice_new(n if n > SLICE_SIZE else SLICE_SIZE)
        if s == NULL:
            return -1
        memcpy(s.data, p, n)
        s.fill = n
        return chain_append_slice(c, s, 0, n)
    return 0


cdef int chain_prepend(Chain* c, const char* p, size_t n) noexcept nogil:
    """Copy n bytes to the front of the chain."""
    if n == 0:
        return 0
    cdef Slice* s = slice_new(n)
    if s == NULL:
        return -1
    memcpy(s.data, p, n)
    s.fill = n
    if c.head == 0:
        if chain_room(c, 1) < 0:
            slice_decref(s)
            return -1
        memmove(c.refs + 1, c.refs, c.count * sizeof(SliceRef))
        c.head = 1
    c.head -= 1
    c.refs[c.head].s = s
    c.refs[c.head].off = 0
    c.refs[c.head].len = n
    c.count += 1
    c.length += n
    return 0


cdef void chain_drain(Chain* c, size_t n) noexcept nogil:
    """Drop n bytes from the front."""
    cdef SliceRef* r
    while n and c.count:
        r = &c.refs[c.head]
        if r.len <= n:
            n -= r.len
            c.length -= r.len
            slice_decref(r.s)
            c.head += 1
            c.count -= 1
        else:
            r.off += n
            r.len -= n
            c.length -= n
            n = 0
    if c.count == 0:
        c.head = 0


cdef int chain_move(Chain* dst, Chain* src) noexcept nogil:
    """Move every byte of src to the end of dst without copying."""
    if src.count == 0:
        return 0
    if chain_room(dst, src.count) < 0:
        return -1
    memcpy(dst.refs + dst.head + dst.count, src.refs + src.head, src.count * sizeof(SliceRef))
    dst.count += src.count
    dst.length += src.length
    src.head = 0
    src.count = 0
    src.length = 0
    return 0


cdef char* chain_linearize(Chain* c) noexcept nogil:
    """Make the whole chain one contiguous ref and return its first byte (NULL if empty or
    out of memory). Copies only when the bytes span several slices."""
    cdef Slice* s
    cdef size_t pos = 0
    cdef int i
    cdef SliceRef* r
    if c.count == 0:
        return NULL
    if c.count > 1:
        s = slice_new(c.length)
        if s == NULL:
            return NULL
        for i in range(c.count):
            r = &c.refs[c.head + i]
            memcpy(s.data + pos, r.s.data + r.off, r.len)
            pos += r.len
        s.fill = pos
        chain_clear(c)
        chain_append_slice(c, s, 0, pos)
    r = &c.refs[c.head]
    return r.s.data + r.off


cdef ssize_t chain_read_fd(Chain* c, int fd, size_t max_bytes, size_t* asked=NULL) noexcept nogil:
    """readv() at most max_bytes from fd into the tail of the chain. Returns what readv
    returned (errno set on -1); *asked (if given) is how many bytes readv was offered, so
    a caller can tell a short read (the socket is drained) from a full one."""
    cdef iovec iov[2]
    cdef int n = 0
    cdef size_t room = chain_tail_room(c)
    cdef Slice* fresh = NULL
    cdef ssize_t got
    cdef size_t k
    cdef SliceRef* t
    if room > max_bytes:
        room = max_bytes
    if room:
        t = chain_tail(c)
        iov[0].iov_base = t.s.data + t.s.fill
        iov[0].iov_len = room
        n = 1
    if room < max_bytes and room < 4096:
        fresh = slice_new(SLICE_SIZE)
        if fresh == NULL and n == 0:
            errno = ENOMEM
            return -1
        if fresh != NULL:
            iov[n].iov_base = fresh.data
            k = max_bytes - room
            iov[n].iov_len = k if k < SLICE_SIZE else SLICE_SIZE
            n += 1
    if asked != NULL:
        asked[0] = iov[0].iov_len + (iov[1].iov_len if n > 1 else 0)
    got = readv(fd, iov, n)
    if got <= 0:
        if fresh != NULL:
            slice_decref(fresh)
        return got
    k = <size_t>got
    if room:
        t = chain_tail(c)
        if k < room:
            room = k
        t.s.fill += room
        t.len += room
        c.length += room
        k -= room
    if fresh != NULL:
        if k:
            fresh.fill = k
            if chain_append_slice(c, fresh, 0, k) < 0:
                errno = ENOMEM
                return -1
        else:
            slice_decref(fresh)
    return got


cdef ssize_t chain_write_fd(Chain* c, int fd, size_t* offered=NULL, bint more=False) noexcept nogil:
    """writev() the front of the chain to fd and drain what was written. *offered (if
    given) is how many bytes writev was offered, so a caller can tell a short write (the
    socket's buffer is full) from a full one. more (sockets only): sendmsg with MSG_MORE,
    for a caller that shuts the socket's write side right after, so that the last bytes
    and the FIN leave in one segment."""
    cdef msghdr msg
    cdef iovec iov[CHAIN_IOV_MAX]
    cdef int n = c.count if c.count < CHAIN_IOV_MAX else CHAIN_IOV_MAX
    cdef int i
    cdef SliceRef* r
    cdef ssize_t put
    cdef size_t total = 0
    for i in range(n):
        r = &c.refs[c.head + i]
        iov[i].iov_base = r.s.data + r.off
        iov[i].iov_len = r.len
        total += r.len
    if offered != NULL:
        offered[0] = total
    if more:
        memset(&msg, 0, sizeof(msghdr))
        msg.msg_iov = iov
        msg.msg_iovlen = <size_t>n
        put = sendmsg(fd, &msg, MSG_MORE)
    else:
        put = writev(fd, iov, n)
    if put > 0:
        chain_drain(c, <size_t>put)
    return put
