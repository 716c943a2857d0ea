# Micro-benchmark loops for benchmarks/test_micro.py: each runs a buffer operation many
# times in C without the GIL and returns the seconds it took, so pytest-benchmark measures
# the operation, not the Python call around it. A private hook: reached through
# fastproxy._testing (not in the wheel), never from the package.

cdef extern from "<sys/socket.h>" nogil:
    int socketpair(int domain, int type, int protocol, int* sv)
    enum:
        AF_UNIX


def _buffer_bench(str op, size_t chunk, long rounds):
    """op: "append" (append chunk-byte pieces, cleared every 64), "move" (a 64-ref chain
    moved back and forth), "drain" (append then drain in chunk pieces), "readv_writev"
    (chain_write_fd a chunk over a socketpair and chain_read_fd it back).
    Returns (seconds, bytes processed)."""
    cdef char* data = <char*>calloc(max(<size_t>1, chunk), 1)
    cdef Chain a, b
    cdef long i
    cdef int k, kind
    cdef int sv[2]
    cdef uint64_t total = 0
    cdef ssize_t n
    cdef timespec t0, t1
    cdef int bad = 0
    if data == NULL:
        raise MemoryError()
    kind = {"append": 0, "move": 1, "drain": 2, "readv_writev": 3}[op]
    chain_init(&a)
    chain_init(&b)
    sv[0] = sv[1] = -1
    if kind == 3 and socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0:
        free(data)
        raise OSError("socketpair failed")
    if kind == 1:
        for k in range(64):
            chain_append_slice(&a, slice_new(chunk), 0, chunk)
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        for i in range(rounds):
            if kind == 0:
                chain_append(&a, data, chunk)
                total += chunk
                if (i & 63) == 63:
                    chain_clear(&a)
            elif kind == 1:
                chain_move(&b, &a)
                chain_move(&a, &b)
                total += 64 * chunk
            elif kind == 2:
                chain_append(&a, data, chunk)
                chain_drain(&a, chunk // 2)
                chain_drain(&a, chunk - chunk // 2)
                total += chunk
            else:
                chain_append(&a, data, chunk)
                while a.length:
                    n = chain_write_fd(&a, sv[0])
                    if n <= 0:
                        bad = 1
                        break
                    while b.length < <size_t>n:
                        if chain_read_fd(&b, sv[1], <size_t>n - b.length) <= 0:
                            bad = 1
                            break
                    total += <uint64_t>b.length
                    chain_clear(&b)
                    n = 0
                if bad:
                    break
        clock_gettime(CLOCK_MONOTONIC, &t1)
    chain_free(&a)
    chain_free(&b)
    free(data)
    if sv[0] >= 0:
        close(sv[0])
        close(sv[1])
    if bad:
        raise OSError("socketpair I/O failed")
    return (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9, total
