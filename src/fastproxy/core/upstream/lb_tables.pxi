# The consistent-hash tables of the load balancer (RING_HASH's ring, MAGLEV's table), built
# with a worker host set (cluster_health_changed) and read by the workers; the hash they
# are keyed with (xxHash64, as Envoy's); weighted LEAST_REQUEST's per-worker scheduler.
# Owner: issue 16's LB work.

# ---- xxHash64 (Yann Collet's XXH64, from its specification) ----

cdef uint64_t XXH_P1 = 11400714785074694791ULL       # the specification's five primes
cdef uint64_t XXH_P2 = 14029467366897019727ULL
cdef uint64_t XXH_P3 = 1609587929392839161ULL
cdef uint64_t XXH_P4 = 9650029242287828579ULL
cdef uint64_t XXH_P5 = 2870177450012600261ULL


cdef inline uint64_t _rotl64(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _read64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)        # (little-endian hosts: the specification's byte order)
    return v


cdef inline uint32_t _read32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t _xxh_lane(uint64_t acc, uint64_t lane) noexcept nogil:
    """One lane's step: fold 8 input bytes into an accumulator."""
    acc = acc + lane * XXH_P2
    return _rotl64(acc, 31) * XXH_P1


cdef uint64_t fp_xxhash64(const void* p, size_t n, uint64_t seed) noexcept nogil:
    """XXH64 of n bytes at p with seed: the hash Envoy keys its rings (and hash policies)
    with. Written from the algorithm's description: four accumulators over 32-byte
    stripes, then the 8-, 4- and 1-byte tail, then the final avalanche."""
    cdef const uint8_t* b = <const uint8_t*>p
    cdef const uint8_t* end = b + n
    cdef uint64_t h, a1, a2, a3, a4
    if n >= 32:
        a1 = seed + XXH_P1 + XXH_P2
        a2 = seed + XXH_P2
        a3 = seed
        a4 = seed - XXH_P1
        while end - b >= 32:
            a1 = _xxh_lane(a1, _read64(b))
            a2 = _xxh_lane(a2, _read64(b + 8))
            a3 = _xxh_lane(a3, _read64(b + 16))
            a4 = _xxh_lane(a4, _read64(b + 24))
            b += 32
        h = _rotl64(a1, 1) + _rotl64(a2, 7) + _rotl64(a3, 12) + _rotl64(a4, 18)
        h = (h ^ _xxh_lane(0, a1)) * XXH_P1 + XXH_P4
        h = (h ^ _xxh_lane(0, a2)) * XXH_P1 + XXH_P4
        h = (h ^ _xxh_lane(0, a3)) * XXH_P1 + XXH_P4
        h = (h ^ _xxh_lane(0, a4)) * XXH_P1 + XXH_P4
    else:
        h = seed + XXH_P5
    h += <uint64_t>n
    while end - b >= 8:
        h ^= _xxh_lane(0, _read64(b))
        h = _rotl64(h, 27) * XXH_P1 + XXH_P4
        b += 8
    if end - b >= 4:
        h ^= <uint64_t>_read32(b) * XXH_P1
        h = _rotl64(h, 23) * XXH_P2 + XXH_P3
        b += 4
    while b < end:
        h ^= <uint64_t>b[0] * XXH_P5
        h = _rotl64(h, 11) * XXH_P1
        b += 1
    h ^= h >> 33
    h *= XXH_P2
    h ^= h >> 29
    h *= XXH_P3
    h ^= h >> 32
    return h


def _xxhash64(bytes data, uint64_t seed=0):
    """fp_xxhash64 from Python (fastproxy._testing.xxhash64)."""
    return fp_xxhash64(<const char*>data, len(data), seed)


# ---- lookups (per pick: no lock, no allocation) ----

cdef int ring_lookup(LbSource* src, uint64_t h, int attempt) noexcept nogil:
    """RING_HASH: the host of the first ring point at or after h (wrapping to the first);
    a re-pick (attempt > 0) moves that many points on, as Envoy's ring does. -1: no ring."""
    cdef int64_t lo = 0, hi, mid
    if src.nring == 0:
        return -1
    hi = src.nring
    while lo < hi:
        mid = (lo + hi) >> 1
        if src.ring_hash[mid] < h:
            lo = mid + 1
        else:
            hi = mid
    if lo == src.nring:
        lo = 0
    if attempt > 0:
        lo = (lo + attempt) % src.nring
    return src.ring_host[lo]


cdef int maglev_lookup(LbSource* src, uint64_t h, int attempt) noexcept nogil:
    """MAGLEV: table[h mod size]; a re-pick flips the hash as Envoy's table does. -1: no
    table."""
    if src.ntable == 0:
        return -1
    if attempt > 0:
        h ^= (~(<uint64_t>0)) - <uint64_t>attempt + 1
    return src.table[h % <uint64_t>src.ntable]


cdef inline bint _edf_less(LbEdfEntry* a, LbEdfEntry* b) noexcept nogil:
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.order < b.order)


cdef void _edf_sift_down(LbEdf* e, int i) noexcept nogil:
    cdef int c
    cdef LbEdfEntry t
    while True:
        c = 2 * i + 1
        if c >= e.n:
            return
        if c + 1 < e.n and _edf_less(&e.heap[c + 1], &e.heap[c]):
            c += 1
        if not _edf_less(&e.heap[c], &e.heap[i]):
            return
        t = e.heap[c]
        e.heap[c] = e.heap[i]
        e.heap[i] = t
        i = c


cdef inline double _lr_weight(Host* h, double bias) noexcept nogil:
    """Envoy's LEAST_REQUEST host weight: weight / (rq_active + 1) ^ bias (bias 0: the
    weight alone)."""
    cdef double active = <double>_host_rq_active(h) + 1.0
    if bias == 0.0:
        return <double>h.weight
    if bias == 1.0:
        return <double>h.weight / active
    return <double>h.weight / pow(active, bias)


cdef int lb_edf_pick(LbEdf* e, HostSet* hs, LbSource* src, double bias) noexcept nogil:
    """Weighted LEAST_REQUEST: the host with the earliest deadline, put back with its next
    deadline by its weight / (rq_active + 1) ^ bias now (Envoy's EDF scheduler: the
    scheduler's time moves to the deadline picked; ties go to the earlier entry)."""
    cdef LbEdfEntry* top = &e.heap[0]
    cdef int host = top.host
    cdef double w = _lr_weight(&hs.hosts[host], bias)
    e.now = top.deadline
    top.deadline = e.now + 1.0 / (w if w > 0 else 1e-9)
    top.order = e.seq
    e.seq += 1
    _edf_sift_down(e, 0)
    return host


cdef void _lb_edf_free(WorkerLb* lb) noexcept nogil:
    cdef int k
    for k in range(lb.nedf):
        free(lb.edf[k].heap)
    free(lb.edf)
    lb.edf = NULL
    lb.nedf = 0


cdef void _edf_init(LbEdf* e, HostSet* hs, LbSource* src) noexcept nogil:
    """Every host of src at deadline 1 / its weight now, in src's order (a heap: sorted)."""
    cdef int i
    e.n = src.n
    e.now = 0.0
    for i in range(src.n):
        e.heap[i].deadline = 1.0 / max(1e-9, _lr_weight(&hs.hosts[src.idx[i]], hs.active_request_bias))
        e.heap[i].order = <uint64_t>i
        e.heap[i].host = src.idx[i]
    e.seq = <uint64_t>src.n
    for i in range(src.n // 2 - 1, -1, -1):
        _edf_sift_down(e, i)


cdef void lb_edf_reset(WorkerLb* lb, HostSet* hs) noexcept nogil:
    """A new host set arrived on this worker: weighted LEAST_REQUEST's schedulers start
    afresh over its sources with unequal weights (none for other policies; a source
    whose scheduler cannot be allocated falls back to the power of two choices)."""
    cdef int k
    cdef LbSource* src
    _lb_edf_free(lb)
    if hs.policy != LB_LEAST_REQUEST or hs.nsources == 0:
        return
    lb.edf = <LbEdf*>calloc(hs.nsources, sizeof(LbEdf))
    if lb.edf == NULL:
        return
    lb.nedf = hs.nsources
    for k in range(hs.nsources):
        src = hs.sources[k]
        if src.equal_weights or src.n == 0:
            continue
        lb.edf[k].heap = <LbEdfEntry*>malloc(src.n * sizeof(LbEdfEntry))
        if lb.edf[k].heap != NULL:
            _edf_init(&lb.edf[k], hs, src)


# ---- building (with a worker host set, on whichever thread rebuilds it) ----

cdef uint64_t fp_murmur2_64(const void* p, size_t n, uint64_t seed) noexcept nogil:
    """The 64-bit MurmurHash2 variant of libstdc++'s std::hash (what Envoy's RING_HASH
    hash_function MURMUR_HASH_2 keys the ring with): 8-byte words mixed into the length-
    seeded state, the tail's bytes as one little-endian word, two final shift-mixes."""
    cdef const uint8_t* b = <const uint8_t*>p
    cdef uint64_t mul = (<uint64_t>0xc6a4a793 << 32) + <uint64_t>0x5bd1e995
    cdef size_t aligned = n & ~(<size_t>7), i
    cdef uint64_t h = seed ^ (<uint64_t>n * mul), d
    cdef int k
    i = 0
    while i < aligned:
        d = _read64(b + i) * mul
        d = (d ^ (d >> 47)) * mul
        h ^= d
        h *= mul
        i += 8
    if n & 7:
        d = 0
        for k in range(<int>(n & 7) - 1, -1, -1):
            d = (d << 8) + b[aligned + k]
        h ^= d
        h *= mul
    h = (h ^ (h >> 47)) * mul
    return h ^ (h >> 47)


def _murmur2_64(bytes data, uint64_t seed=0xc70f6907):
    """fp_murmur2_64 from Python (tests)."""
    return fp_murmur2_64(<const char*>data, len(data), seed)


cdef struct _RingPoint:
    uint64_t hash
    int host


cdef int _ring_cmp(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const _RingPoint*>a).hash, y = (<const _RingPoint*>b).hash
    return -1 if x < y else (1 if x > y else 0)


cdef int _lb_normalized(HostSet* hs, LbSource* s, LbBuild* b, int* order, double* w) noexcept nogil:
    """Envoy's normalized host weights for a ring or table (normalizeWeights): each host's
    weight over the source's total, in the source's order; with locality_weighted_lb_config,
    locality by locality (index order; a locality of weight 0 left out) each host's weight
    over its locality's total times the locality's share of the localities' weights. Fills
    order (host indexes) and w; returns how many."""
    cdef int i, j, n = 0, nloc = 0
    cdef double total = 0, ltotal = 0, lsum
    cdef uint32_t loc
    if not b.locality_weighted:
        for i in range(s.n):
            total += hs.hosts[s.idx[i]].weight
        for i in range(s.n):
            order[i] = s.idx[i]
            w[i] = hs.hosts[s.idx[i]].weight / total
        return s.n
    for i in range(s.n):
        if <int>hs.hosts[s.idx[i]].locality + 1 > nloc:
            nloc = <int>hs.hosts[s.idx[i]].locality + 1
    for loc in range(<uint32_t>nloc):       # the localities' weights (each once)
        for i in range(s.n):
            if hs.hosts[s.idx[i]].locality == loc:
                ltotal += hs.hosts[s.idx[i]].locality_weight
                break
    if ltotal <= 0:
        return 0
    for loc in range(<uint32_t>nloc):
        lsum = 0
        j = -1
        for i in range(s.n):
            if hs.hosts[s.idx[i]].locality == loc:
                lsum += hs.hosts[s.idx[i]].weight
                j = i
        if j < 0 or hs.hosts[s.idx[j]].locality_weight == 0:
            continue
        for i in range(s.n):
            if hs.hosts[s.idx[i]].locality == loc:
                order[n] = s.idx[i]
                w[n] = hs.hosts[s.idx[i]].weight * (hs.hosts[s.idx[i]].locality_weight / ltotal) / lsum
                n += 1
    return n


cdef int ring_build(HostSet* hs, LbSource* s, LbBuild* b) noexcept nogil:
    """Envoy's ring: each host (in normalized-weight order) gets scale * its normalized
    weight points, counted as running sums over the hosts, where scale makes the lightest
    host's share a whole number of points of at least minimum_ring_size (at most
    maximum_ring_size points in all); point i of a host is the hash of "<address>_<i>".
    Sorted by hash. -1: no memory."""
    cdef double minw = 1.0, scale, current = 0.0, target = 0.0
    cdef uint64_t size, n = 0, cap, i
    cdef int j, len0, klen, nh
    cdef _RingPoint* pts
    cdef Host* h
    cdef char key[96]
    cdef int* order
    cdef double* w
    if s.n == 0:
        return 0
    order = <int*>malloc(s.n * sizeof(int))
    w = <double*>malloc(s.n * sizeof(double))
    if order == NULL or w == NULL:
        free(order)
        free(w)
        return -1
    nh = _lb_normalized(hs, s, b, order, w)
    for j in range(nh):
        if w[j] < minw:
            minw = w[j]
    if nh == 0 or minw <= 0:
        free(order)
        free(w)
        return 0
    scale = ceil(minw * <double>b.ring_min) / minw
    if scale > <double>b.ring_max:
        scale = <double>b.ring_max
    size = <uint64_t>ceil(scale)
    cap = size + <uint64_t>nh + 1           # (running sums can round one point over per host)
    pts = <_RingPoint*>malloc(cap * sizeof(_RingPoint))
    if pts == NULL:
        free(order)
        free(w)
        return -1
    for j in range(nh):
        h = &hs.hosts[order[j]]
        len0 = h.keylen
        memcpy(key, h.key, len0)
        key[len0] = b'_'
        target += scale * w[j]
        i = 0
        while current < target and n < cap:
            klen = len0 + 1 + _u64_decimal(i, key + len0 + 1)
            pts[n].hash = fp_murmur2_64(key, klen, 0xc70f6907) if b.ring_murmur else fp_xxhash64(key, klen, 0)
            pts[n].host = order[j]
            n += 1
            i += 1
            current += 1.0
    free(order)
    free(w)
    qsort(pts, n, sizeof(_RingPoint), _ring_cmp)
    s.ring_hash = <uint64_t*>malloc(max(1, n) * sizeof(uint64_t))
    s.ring_host = <int*>malloc(max(1, n) * sizeof(int))
    if s.ring_hash == NULL or s.ring_host == NULL:
        free(pts)
        return -1
    for i in range(n):
        s.ring_hash[i] = pts[i].hash
        s.ring_host[i] = pts[i].host
    s.nring = <int>n
    free(pts)
    return 0


cdef int _u64_decimal(uint64_t v, char* out) noexcept nogil:
    """v in decimal at out (no terminator); its length."""
    cdef char tmp[24]
    cdef int n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef struct _MaglevEntry:
    int host
    uint64_t offset
    uint64_t skip
    double weight
    double target
    uint64_t next


cdef int maglev_build(HostSet* hs, LbSource* s, LbBuild* b) noexcept nogil:
    """Envoy's Maglev table (the paper's population): hosts sorted by their address text,
    each with offset xxHash64(address) mod M and skip xxHash64(address, seed 1) mod (M - 1)
    + 1; in rounds, a host whose normalized weight has earned a turn takes its next free
    slot of its permutation, until all M slots are taken. -1: no memory."""
    cdef uint64_t M = b.maglev_size, filled = 0, c, iteration
    cdef double maxw = 0.0
    cdef _MaglevEntry* e
    cdef int* order
    cdef double* w
    cdef double* ws
    cdef int i, j, nh
    cdef Host* h
    if s.n == 0 or M < 2:
        return 0
    e = <_MaglevEntry*>calloc(s.n, sizeof(_MaglevEntry))
    order = <int*>malloc(s.n * sizeof(int))
    w = <double*>malloc(s.n * sizeof(double))
    ws = <double*>malloc(hs.nhosts * sizeof(double))
    if e == NULL or order == NULL or w == NULL or ws == NULL:
        free(e)
        free(order)
        free(w)
        free(ws)
        return -1
    nh = _lb_normalized(hs, s, b, order, w)
    for j in range(nh):
        ws[order[j]] = w[j]         # (a host's weight by its index, across the sort)
    _sort_by_key(hs, order, nh)
    for i in range(nh):
        h = &hs.hosts[order[i]]
        e[i].host = order[i]
        e[i].offset = fp_xxhash64(h.key, h.keylen, 0) % M
        e[i].skip = fp_xxhash64(h.key, h.keylen, 1) % (M - 1) + 1
        e[i].weight = ws[order[i]]
        if e[i].weight > maxw:
            maxw = e[i].weight
    free(order)
    free(w)
    free(ws)
    if nh == 0 or maxw <= 0:
        free(e)
        return 0
    s.table = <int*>malloc(M * sizeof(int))
    if s.table == NULL:
        free(e)
        return -1
    memset(s.table, 0xff, M * sizeof(int))
    iteration = 1
    while filled < M:
        for i in range(nh):
            if filled >= M:
                break
            if <double>iteration * e[i].weight < e[i].target:
                continue
            e[i].target += maxw
            c = (e[i].offset + e[i].skip * e[i].next) % M
            while s.table[c] >= 0:
                e[i].next += 1
                c = (e[i].offset + e[i].skip * e[i].next) % M
            s.table[c] = e[i].host
            e[i].next += 1
            filled += 1
        iteration += 1
    s.ntable = <int>M
    free(e)
    return 0


cdef void _sort_by_key(HostSet* hs, int* order, int n) noexcept nogil:
    """order (host indexes) sorted by the hosts' address text (bytewise, then shorter
    first): a bottom-up merge sort, since qsort's comparator has no context."""
    cdef int* tmp = <int*>malloc(n * sizeof(int))
    cdef int width, lo, mid, hi, a, b2, k
    cdef int* src = order
    cdef int* dst = tmp
    cdef int* sw
    if tmp == NULL:
        _insertion_by_key(hs, order, n)
        return
    width = 1
    while width < n:
        lo = 0
        while lo < n:
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            a = lo
            b2 = mid
            k = lo
            while a < mid and b2 < hi:
                if _key_cmp(&hs.hosts[src[b2]], &hs.hosts[src[a]]) < 0:
                    dst[k] = src[b2]
                    b2 += 1
                else:
                    dst[k] = src[a]
                    a += 1
                k += 1
            while a < mid:
                dst[k] = src[a]
                a += 1
                k += 1
            while b2 < hi:
                dst[k] = src[b2]
                b2 += 1
                k += 1
            lo += 2 * width
        sw = src
        src = dst
        dst = sw
        width *= 2
    if src != order:
        memcpy(order, src, n * sizeof(int))
    free(tmp)


cdef void _insertion_by_key(HostSet* hs, int* order, int n) noexcept nogil:
    cdef int i, j, v
    for i in range(1, n):
        v = order[i]
        j = i - 1
        while j >= 0 and _key_cmp(&hs.hosts[v], &hs.hosts[order[j]]) < 0:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = v


cdef inline int _key_cmp(Host* a, Host* b) noexcept nogil:
    cdef int n = min(a.keylen, b.keylen)
    cdef int r = memcmp(a.key, b.key, n)
    if r != 0:
        return r
    return <int>a.keylen - <int>b.keylen
