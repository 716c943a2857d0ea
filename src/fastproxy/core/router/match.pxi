# The route table read on the workers (no GIL): table lifetime, virtual host selection,
# route matching, weighted picks, and the rewritten path and redirect Location writers
# (no allocation; route_text gives them a buffer of the size they ask for when the caller's
# is too small). A route's header, query and regex tests are the matchers the native
# filters share: matchers.pxi. The contract is in core/router/decls.pxi; the table is built
# by build.pxi.

# ---------------------------------------------------------------- lifetime

cdef void regex_list_free(RouteRegex* rx) noexcept nogil:
    """regfree the compiled copies of a builder's regexes (their memory is the owner's)."""
    cdef int i
    while rx != NULL:
        for i in range(rx.ncompiled):
            regfree(&rx.copies[i])
        rx = rx.next


cdef void _route_table_free(RouteTable* t) noexcept nogil:
    cdef RouteArenaBlock* b = t.arena
    cdef RouteArenaBlock* nb
    cdef int i
    regex_list_free(t.regexes)
    for i in range(t.nclusters):
        cluster_decref(t.clusters[i])
        free(t.cluster_names[i])
    free(t.clusters)
    free(t.cluster_names)
    for i in range(t.nowned):
        t.owned[i].destroy(t.owned[i].config)
    free(t.owned)
    if t.py_keep != NULL:
        _py_decref_with_gil(t.py_keep)
    while b != NULL:
        nb = b.next
        free(b.data)
        free(b)
        b = nb
    free(t)


cdef void route_table_incref(RouteTable* t) noexcept nogil:
    if t != NULL:
        fp_atomic_add_int(&t.refcnt, 1)


cdef void route_table_decref(RouteTable* t) noexcept nogil:
    if t != NULL and fp_atomic_add_int(&t.refcnt, -1) == 0:
        _route_table_free(t)


cdef void route_provider_decref(RouteProvider* p) noexcept nogil:
    cdef int i
    if p == NULL or fp_atomic_add_int(&p.refcnt, -1) != 0:
        return
    for i in range(p.nworkers):
        route_table_decref(p.slots[i])
    free(p.slots)
    free(p)


cdef RouteTable* route_provider_take(RouteProvider* p, int worker) noexcept nogil:
    """Worker `worker`'s current table, with a reference for the caller (a stream)."""
    cdef RouteTable* t = p.slots[worker]
    route_table_incref(t)
    return t


cdef struct RouteTableSwap:         # a worker message: this provider's slot gets this table
    RouteProvider* provider         # one reference each
    RouteTable* table


cdef void _msg_route_table_swap(Worker* w, void* arg) noexcept nogil:
    cdef RouteTableSwap* m = <RouteTableSwap*>arg
    cdef RouteTable* old = m.provider.slots[w.index]
    m.provider.slots[w.index] = m.table     # the message's reference moves into the slot
    route_table_decref(old)                 # streams that took it keep their own
    route_provider_decref(m.provider)
    free(m)

# ---------------------------------------------------------------- small helpers

cdef inline unsigned char _rt_lc(unsigned char c) noexcept nogil:
    if c >= 65 and c <= 90:         # 'A'..'Z'
        return c + 32
    return c


cdef inline uint64_t _rt_load(const char* p, size_t n) noexcept nogil:
    """p[:n] (n <= 8) as one little-endian word, zero-padded. Short tails are put together
    from two overlapping fixed-size loads (the overlapping bytes coincide), not copied
    through memory: a variable-length copy would stall on store forwarding."""
    cdef uint64_t w
    cdef uint32_t lo, hi
    if n >= 8:
        memcpy(&w, p, 8)
        return w
    if n >= 4:
        memcpy(&lo, p, 4)
        memcpy(&hi, p + n - 4, 4)
        return <uint64_t>lo | (<uint64_t>hi << (8 * (n - 4)))
    if n == 0:
        return 0
    return (<uint64_t><unsigned char>p[0] | (<uint64_t><unsigned char>p[n >> 1] << (8 * (n >> 1)))
            | (<uint64_t><unsigned char>p[n - 1] << (8 * (n - 1))))


cdef inline uint64_t _rt_lower8(uint64_t w) noexcept nogil:
    """Lowercase the ASCII letters of 8 bytes at once: a byte gets 0x20 added when it is in
    'A'..'Z' (bit 7 of byte+0x3f says >= 'A', of byte+0x25 says > 'Z'; no carry can cross a
    byte because the high bit is masked off first). Bytes >= 0x80 are left alone."""
    cdef uint64_t low7 = w & 0x7f7f7f7f7f7f7f7fULL
    cdef uint64_t ge_a = low7 + 0x3f3f3f3f3f3f3f3fULL
    cdef uint64_t gt_z = low7 + 0x2525252525252525ULL
    cdef uint64_t upper = (ge_a ^ gt_z) & ~w & 0x8080808080808080ULL
    return w | (upper >> 2)


cdef inline bint _rt_ieq(const char* a, const char* lower, size_t n) noexcept nogil:
    """a equals `lower` (already lowercase) ignoring ASCII case: the core's one
    case-insensitive compare (_rt_ieq2 folds both sides the same way; _ieq takes a
    NUL-terminated literal)."""
    cdef size_t i = 0
    while i + 8 <= n:
        if _rt_lower8(_rt_load(a + i, 8)) != _rt_load(lower + i, 8):
            return False
        i += 8
    if i < n:
        return _rt_lower8(_rt_load(a + i, n - i)) == _rt_load(lower + i, n - i)
    return True


cdef inline uint64_t _rt_last_word(const char* key, size_t k) noexcept nogil:
    """The last (up to) 8 bytes of a key, as _rt_starts compares them first."""
    if k >= 8:
        return _rt_load(key + k - 8, 8)
    return _rt_load(key, k)


cdef inline bint _rt_starts(const char* s, const char* key, size_t k, uint64_t last,
                            bint fold) noexcept nogil:
    """s (at least k bytes) starts with key (lowercase when fold). Keys of a route table
    tend to share their beginning ("/api/v1/...") and differ at the end, so the last word
    is compared first, with one load: most non-matches never reach memcmp."""
    cdef uint64_t w
    if k >= 8:
        w = _rt_load(s + k - 8, 8)
    else:
        w = _rt_load(s, k)
    if fold:
        w = _rt_lower8(w)
    if w != last:
        return False
    if k <= 8:
        return True
    if fold:
        return _rt_ieq(s, key, k - 8)
    return memcmp(s, key, k - 8) == 0


cdef inline bint _rt_ieq2(const char* a, size_t an, const char* b, size_t bn) noexcept nogil:
    """Both sides may have any case (the same folding as _rt_ieq, both sides folded)."""
    cdef size_t i = 0
    if an != bn:
        return False
    while i + 8 <= an:
        if _rt_lower8(_rt_load(a + i, 8)) != _rt_lower8(_rt_load(b + i, 8)):
            return False
        i += 8
    if i < an:
        return _rt_lower8(_rt_load(a + i, an - i)) == _rt_lower8(_rt_load(b + i, an - i))
    return True


# The hash of the domain maps and the run index works a word (8 bytes) at a time. Its state
# after the whole words of a string can be finished with any shorter tail, which is what
# lets the run index hash every prefix length of a path in one pass.
cdef enum:
    RT_HASH_SEED = 0x2545F491


cdef inline uint64_t _rt_hmix(uint64_t h, uint64_t w) noexcept nogil:
    h = (h ^ w) * 0x9E3779B97F4A7C15ULL
    return h ^ (h >> 29)


cdef inline uint64_t _rt_hfinal(uint64_t h, const char* tail, size_t k, size_t n,
                                bint fold) noexcept nogil:
    """Finish a hash: h covers the whole words, tail[:k] (k < 8) the rest, n the length."""
    cdef uint64_t w = _rt_load(tail, k)
    if fold:
        w = _rt_lower8(w)
    h = _rt_hmix(h, w) ^ n
    h *= 0xff51afd7ed558ccdULL
    return h ^ (h >> 33)


cdef inline uint64_t _rt_hash(const char* s, size_t n, bint fold) noexcept nogil:
    """fold: the hash of the lowercased bytes."""
    cdef uint64_t h = RT_HASH_SEED
    cdef uint64_t w
    cdef size_t i = 0
    while i + 8 <= n:
        w = _rt_load(s + i, 8)
        if fold:
            w = _rt_lower8(w)
        h = _rt_hmix(h, w)
        i += 8
    return _rt_hfinal(h, s + i, n - i, n, fold)


cdef inline size_t _rt_path_end(const char* path, size_t n) noexcept nogil:
    """Length of the path without its query and fragment."""
    cdef const char* q
    if path == NULL:
        return 0
    q = <const char*>memchr(path, 63, n)        # '?'
    if q != NULL:
        n = <size_t>(q - path)
    q = <const char*>memchr(path, 35, n)        # '#'
    if q != NULL:
        n = <size_t>(q - path)
    return n

# ---------------------------------------------------------------- virtual host selection

cdef int _rt_domain_find(const RouteDomainMap* m, const char* s, size_t n) noexcept nogil:
    cdef uint64_t h
    cdef uint32_t j
    cdef const RouteDomainSlot* sl
    if m.slots == NULL:
        return -1
    h = _rt_hash(s, n, True)
    j = <uint32_t>h & m.mask
    while True:
        sl = &m.slots[j]
        if sl.vhost < 0:
            return -1
        if sl.hash == h and sl.len == n and _rt_ieq(s, sl.key, n):
            return sl.vhost
        j = (j + 1) & m.mask


cdef int _rt_domainset_find(const RouteDomainSet* ds, const char* h, size_t n) noexcept nogil:
    cdef int v = _rt_domain_find(&ds.exact, h, n)
    cdef int i
    cdef uint32_t k
    if v >= 0:
        return v
    for i in range(ds.nsuffix):
        k = ds.suffix[i].len
        if k < n:                   # "*.foo.com" does not match ".foo.com"
            v = _rt_domain_find(&ds.suffix[i].map, h + n - k, k)
            if v >= 0:
                return v
    for i in range(ds.nprefix):
        k = ds.prefix[i].len
        if k < n:
            v = _rt_domain_find(&ds.prefix[i].map, h, k)
            if v >= 0:
                return v
    return -1


cdef size_t _rt_port_start(const char* h, size_t n) noexcept nogil:
    """Index of the ':' that starts the port, or n when there is none."""
    cdef const char* colon = <const char*>memrchr(h, 58, n)         # ':'
    cdef size_t c
    if colon == NULL:
        return n
    c = <size_t>(colon - h)
    if memchr(colon, 93, n - c) != NULL:        # a ']' after it: "[::1]" has no port
        return n
    if h[0] != 91 and memchr(h, 58, c) != NULL: # several ':' without '[': bare IPv6
        return n
    return c


cdef int route_find_vhost(const RouteTable* t, const char* host, size_t host_len) noexcept nogil:
    """Index of the virtual host for this :authority, or -1."""
    cdef int v
    if t.nvhosts == 0:
        return -1
    if t.only_default:
        return t.default_vhost
    if host == NULL:
        return -1
    if t.ignore_port:
        host_len = _rt_port_start(host, host_len)
    v = _rt_domainset_find(&t.domains, host, host_len)
    if v >= 0:
        return v
    return t.default_vhost

# ---------------------------------------------------------------- route matching

cdef const RouteRunSlot* _rt_run_slot(const RouteRunIndex* x, uint64_t h, const char* path,
                                      size_t n, uint8_t ci) noexcept nogil:
    cdef uint32_t j = <uint32_t>h & x.mask
    cdef const RouteRunSlot* s
    while True:
        s = &x.slots[j]
        if not s.used:
            return NULL
        if s.hash == h and s.len == n and s.ci == ci:
            if ci:
                if _rt_ieq(path, s.key, n):
                    return s
            elif memcmp(path, s.key, n) == 0:
                return s
        j = (j + 1) & x.mask


cdef inline int _rt_run_take(const RouteRunSlot* s, const char* path, size_t i, size_t noq,
                             bint exact, int best) noexcept nogil:
    """The best (lowest) route position, given the slot found at length i."""
    if s == NULL:
        return best
    if exact:
        if s.path_route >= 0 and s.path_route < best:
            best = s.path_route
        return best
    if s.prefix_route >= 0 and s.prefix_route < best:
        best = s.prefix_route
    if s.separated_route >= 0 and s.separated_route < best and (i == noq or path[i] == 47):
        best = s.separated_route
    return best


cdef inline int _rt_run_probe(const RouteRunIndex* x, uint64_t hcs, uint64_t hci,
                              const char* path, size_t b, size_t L, size_t noq, bint exact,
                              int best) noexcept nogil:
    """Look path[:L] up (the states cover path[:b], b <= L < b + 8)."""
    if x.has_cs:
        best = _rt_run_take(_rt_run_slot(x, _rt_hfinal(hcs, path + b, L - b, L, False),
                                         path, L, 0), path, L, noq, exact, best)
    if x.has_ci:
        best = _rt_run_take(_rt_run_slot(x, _rt_hfinal(hci, path + b, L - b, L, True),
                                         path, L, 1), path, L, noq, exact, best)
    return best


cdef int _rt_run_find(const RouteRunIndex* x, const char* path, size_t noq) noexcept nogil:
    """First route of an indexed run matching the query-less path[:noq], or -1. One pass
    over the path a word at a time; at each key length the word states are finished with
    the tail and looked up (raw and case-folded)."""
    cdef uint64_t hcs = RT_HASH_SEED
    cdef uint64_t hci = RT_HASH_SEED
    cdef uint64_t w
    cdef size_t b = 0               # the states cover path[:b]
    cdef size_t L
    cdef int li = 0
    cdef int best = 0x7fffffff
    while True:
        while li < x.nlens and x.lens[li] < b + 8 and x.lens[li] <= noq:
            L = x.lens[li]
            li += 1
            best = _rt_run_probe(x, hcs, hci, path, b, L, noq, False, best)
            if best == x.first:
                return best
        if noq < b + 8:             # the path ends in this word
            if x.has_path and noq <= x.max_path_len:
                best = _rt_run_probe(x, hcs, hci, path, b, noq, noq, True, best)
            break
        if b + 8 > x.limit:         # no key reaches past this word
            break
        w = _rt_load(path + b, 8)
        if x.has_cs:
            hcs = _rt_hmix(hcs, w)
        if x.has_ci:
            hci = _rt_hmix(hci, _rt_lower8(w))
        b += 8
    return -1 if best == 0x7fffffff else best


cdef inline bint _rt_scan_path(const RouteScan* sc, const char* path, size_t noq) noexcept nogil:
    """The path test of prefix / path / separated prefix routes; regex routes pass here and
    are tested by _rt_route_rest. Works on the packed record only."""
    cdef size_t k = sc.len
    if sc.kind == RM_PREFIX:
        return k <= noq and _rt_starts(path, sc.key, k, sc.last, sc.fold)
    if sc.kind == RM_PATH:
        return k == noq and _rt_starts(path, sc.key, k, sc.last, sc.fold)
    if sc.kind == RM_PATH_SEPARATED_PREFIX:
        return (k <= noq and (k == noq or path[k] == 47)
                and _rt_starts(path, sc.key, k, sc.last, sc.fold))
    return sc.kind == RM_SAFE_REGEX


cdef bint _rt_route_rest(const RouteEntry* e, const RouteInput* r, size_t noq) noexcept nogil:
    """Everything but the plain path test: the regex, the header and query matchers."""
    cdef int i
    cdef const char* path = r.path
    if e.match_kind == RM_SAFE_REGEX and not _rt_regex_full(e.match_regex, path, noq, r.worker):
        return False
    for i in range(e.nheader_matchers):
        if not _rt_header_matches(&e.header_matchers[i], r):
            return False
    for i in range(e.nquery_matchers):
        if not _rt_query_matches(&e.query_matchers[i], path, r.path_len, noq, r.worker):
            return False
    return True


cdef const RouteEntry* route_select_in_vhost(const RouteVhost* vh,
                                             const RouteInput* r) noexcept nogil:
    cdef size_t noq = _rt_path_end(r.path, r.path_len)
    cdef int s, i, pos
    cdef const RouteSegment* seg
    cdef const RouteScan* sc
    for s in range(vh.nsegments):
        seg = &vh.segments[s]
        if seg.index != NULL:
            pos = _rt_run_find(seg.index, r.path, noq)
            if pos >= 0:
                return &vh.routes[pos]
        else:
            for i in range(seg.count):
                sc = &seg.scan[i]
                if _rt_scan_path(sc, r.path, noq) and (
                        not sc.more or _rt_route_rest(&vh.routes[sc.pos], r, noq)):
                    return &vh.routes[sc.pos]
    return NULL


cdef const RouteEntry* route_select(const RouteTable* t, const RouteInput* r) noexcept nogil:
    """The route for this request, or NULL (no virtual host or no route: answer 404)."""
    cdef int v = route_find_vhost(t, r.host, r.host_len)
    if v < 0:
        return NULL
    if r.path == NULL:
        return NULL
    if r.connect:
        return _rt_select_connect(&t.vhosts[v], r)
    return route_select_in_vhost(&t.vhosts[v], r)


cdef const RouteEntry* _rt_select_connect(const RouteVhost* vh, const RouteInput* r) noexcept nogil:
    """A CONNECT request (no path): the first connect_matcher route whose header matchers
    pass. Path routes never match CONNECT, and connect routes match nothing else (the path
    scan's _rt_scan_path is false for RM_CONNECT)."""
    cdef int i
    for i in range(vh.nroutes):
        if vh.routes[i].match_kind == RM_CONNECT and _rt_route_rest(&vh.routes[i], r, 0):
            return &vh.routes[i]
    return NULL


cdef int route_pick_weighted(const RouteEntry* e, uint64_t random) noexcept nogil:
    """The cluster index for this request: e.cluster, or a weighted pick. -1: no cluster."""
    cdef uint64_t sel
    cdef int i
    if e.action == ROUTE_CLUSTER:
        return e.cluster
    if e.action != ROUTE_WEIGHTED_CLUSTERS or e.total_weight == 0:
        return -1
    sel = random % e.total_weight
    for i in range(e.nweighted):
        if sel < e.weighted[i].cumulative:
            return e.weighted[i].cluster
    return e.weighted[e.nweighted - 1].cluster

# ---------------------------------------------------------------- writing paths and URLs

cdef struct _RtOut:
    char* p
    size_t cap
    size_t n
    size_t need                     # every byte put, written or not: the room the text needs
    bint full


cdef inline void _rt_put(_RtOut* o, const char* s, size_t n) noexcept nogil:
    o.need += n
    if n == 0 or o.full:
        return
    if n > o.cap - o.n:
        o.full = True
        return
    memcpy(o.p + o.n, s, n)
    o.n += n


cdef inline ssize_t _rt_no_room(const _RtOut* o, size_t* need) noexcept nogil:
    if need != NULL:
        need[0] = o.need
    return ROUTE_NO_ROOM


cdef inline size_t _rt_matched_len(const RouteEntry* e, size_t noq) noexcept nogil:
    """The part of the path a prefix_rewrite replaces."""
    if e.match_kind == RM_SAFE_REGEX:
        return noq
    return e.match_value.n


cdef void _rt_replace_all(const RouteRewrite* rw, const char* s, size_t n, _RtOut* o,
                          unsigned int worker) noexcept nogil:
    """Write s with every match of rw.regex replaced by the substitution (the route's
    regex_rewrite, a hash policy's header regex_rewrite)."""
    cdef const RouteRegex* rx = rw.regex
    cdef const regex_t* re = &rx.copies[worker % <unsigned int>rx.ncopies]
    cdef regmatch_t m[RT_MAX_MATCH]
    cdef size_t nm = <size_t>rw.nmatch
    cdef size_t p = 0, ms, me, step
    cdef ssize_t lastend = -1
    cdef int i, g
    cdef unsigned char c
    if nm > RT_MAX_MATCH:           # (refused at build time)
        nm = RT_MAX_MATCH
    if s == NULL:
        s = ""
    while p <= n:
        m[0].rm_so = <regoff_t>p
        m[0].rm_eo = <regoff_t>n
        if regexec(re, s, nm, m, REG_STARTEND) != 0:
            break
        ms = <size_t>m[0].rm_so
        me = <size_t>m[0].rm_eo
        if ms > p:
            _rt_put(o, s + p, ms - p)
        if ms == me and <ssize_t>ms == lastend:
            # An empty match where the previous match ended: copy one character, go on.
            if p >= n:
                break
            c = <unsigned char>s[p]
            step = 1
            if c >= 0xF0:
                step = 4
            elif c >= 0xE0:
                step = 3
            elif c >= 0xC0:
                step = 2
            if step > n - p:
                step = n - p
            _rt_put(o, s + p, step)
            p += step
            continue
        for i in range(rw.nparts):
            g = rw.parts[i].group
            if g < 0:
                _rt_put(o, rw.parts[i].text.p, rw.parts[i].text.n)
            elif m[g].rm_so >= 0 and m[g].rm_eo > m[g].rm_so:
                _rt_put(o, s + m[g].rm_so, <size_t>(m[g].rm_eo - m[g].rm_so))
        p = me
        lastend = <ssize_t>me
    if p < n:
        _rt_put(o, s + p, n - p)


cdef ssize_t route_rewrite_path(const RouteEntry* e, const RouteInput* r, char* out,
                                size_t cap, size_t* need) noexcept nogil:
    """The upstream :path after prefix_rewrite / regex_rewrite, query kept. Returns its
    length, ROUTE_NONE (-1) when the route rewrites nothing, ROUTE_NO_ROOM (-2) with *need
    (unless NULL) set to a capacity that holds it."""
    cdef _RtOut o
    cdef size_t noq, m
    if e.action != ROUTE_CLUSTER and e.action != ROUTE_WEIGHTED_CLUSTERS:
        return ROUTE_NONE
    if e.prefix_rewrite.p == NULL and e.rewrite.regex == NULL:
        return ROUTE_NONE
    o.p = out
    o.cap = cap
    o.n = 0
    o.need = 0
    o.full = False
    noq = _rt_path_end(r.path, r.path_len)
    if e.prefix_rewrite.p != NULL:
        m = _rt_matched_len(e, noq)
        if m > r.path_len:
            m = r.path_len
        _rt_put(&o, e.prefix_rewrite.p, e.prefix_rewrite.n)
        _rt_put(&o, r.path + m, r.path_len - m)
    else:
        _rt_replace_all(&e.rewrite, r.path, noq, &o, r.worker)
        _rt_put(&o, r.path + noq, r.path_len - noq)
    if o.full:
        return _rt_no_room(&o, need)
    return <ssize_t>o.n


cdef const char* _rt_find_header(const RouteInput* r, const char* lower, size_t n,
                                 size_t* vlen) noexcept nogil:
    cdef int i
    for i in range(r.nheaders):
        if r.headers[i].name_len == n and _rt_ieq(r.headers[i].name, lower, n):
            vlen[0] = r.headers[i].value_len
            return r.headers[i].value
    return NULL


cdef ssize_t route_redirect_location(const RouteEntry* e, const RouteInput* r, char* out,
                                     size_t cap, size_t* need) noexcept nogil:
    """The Location of a redirect (or of a 201/3xx direct response), as Envoy builds it.
    Returns its length, ROUTE_NONE (-1) when the entry sends none, ROUTE_NO_ROOM (-2) with
    *need (unless NULL) set to a capacity that holds it."""
    cdef _RtOut o
    cdef bint redirect = e.action == ROUTE_REDIRECT
    cdef const char* scheme
    cdef size_t scheme_len
    cdef const char* host = r.host
    cdef size_t host_len = r.host_len if r.host != NULL else 0
    cdef const char* proto
    cdef size_t proto_len = 0
    cdef const char* port = NULL
    cdef size_t port_len = 0
    cdef const char* seg_p[2]
    cdef size_t seg_n[2]
    cdef const char* q
    cdef size_t noq, m, host_end, i
    cdef bint found, remove
    cdef int k
    if not redirect:
        if e.action != ROUTE_DIRECT_RESPONSE:
            return ROUTE_NONE
        if not (e.status == 201 or (e.status >= 300 and e.status < 400)):
            return ROUTE_NONE
    o.p = out
    o.cap = cap
    o.n = 0
    o.need = 0
    o.full = False
    # scheme
    if redirect and e.scheme_redirect.p != NULL:
        scheme = e.scheme_redirect.p
        scheme_len = e.scheme_redirect.n
    elif redirect and e.https_redirect:
        scheme = "https"
        scheme_len = 5
    else:
        scheme = r.scheme
        scheme_len = r.scheme_len
        if scheme == NULL:
            scheme = "http"
            scheme_len = 4
    if redirect and e.port_redirect.p != NULL:
        port = e.port_redirect.p
        port_len = e.port_redirect.n
    # host
    if redirect and e.host_redirect.p != NULL:
        host = e.host_redirect.p
        host_len = e.host_redirect.n
    elif host_len > 0:
        found = False
        if host[0] == 91:                       # '[': IPv6 literal, the port follows "]:"
            i = host_len
            while i > 1:
                i -= 1
                if host[i] == 58 and host[i - 1] == 93:
                    found = True
                    host_end = i
                    break
        else:
            i = host_len
            while i > 0:
                i -= 1
                if host[i] == 58:
                    found = True
                    host_end = i
                    break
        if found:
            proto = _rt_find_header(r, "x-forwarded-proto", 17, &proto_len)
            if proto == NULL:
                proto = r.scheme
                proto_len = r.scheme_len
                if proto == NULL:
                    proto = ""
                    proto_len = 0
            remove = port_len > 0
            if not _rt_ieq2(scheme, scheme_len, proto, proto_len):
                if (_rt_ieq2(proto, proto_len, "https", 5) and host_len - host_end == 4
                        and memcmp(host + host_end, ":443", 4) == 0):
                    remove = True
                if (_rt_ieq2(proto, proto_len, "http", 4) and host_len - host_end == 3
                        and memcmp(host + host_end, ":80", 3) == 0):
                    remove = True
            if remove:
                host_len = host_end
    # path, as up to two pieces
    seg_p[0] = r.path
    seg_n[0] = r.path_len if r.path != NULL else 0
    seg_p[1] = NULL
    seg_n[1] = 0
    if redirect and e.path_redirect.p != NULL:
        seg_p[0] = e.path_redirect.p
        seg_n[0] = e.path_redirect.n
        if not e.path_redirect_has_query and r.path != NULL:
            q = <const char*>memchr(r.path, 63, r.path_len)
            if q != NULL:
                seg_p[1] = q
                seg_n[1] = r.path_len - <size_t>(q - r.path)
    elif redirect and e.prefix_rewrite.p != NULL and r.path != NULL:
        noq = _rt_path_end(r.path, r.path_len)
        m = _rt_matched_len(e, noq)
        if m > r.path_len:
            m = r.path_len
        seg_p[0] = e.prefix_rewrite.p
        seg_n[0] = e.prefix_rewrite.n
        seg_p[1] = r.path + m
        seg_n[1] = r.path_len - m
    elif redirect and e.rewrite.regex != NULL and r.path != NULL:
        # regex_rewrite: the query-less path rewritten in place in `out`, then the query
        # (unless strip_query), as the route action's regex_rewrite does.
        _rt_put(&o, scheme, scheme_len)
        _rt_put(&o, "://", 3)
        _rt_put(&o, host, host_len)
        _rt_put(&o, port, port_len)
        noq = _rt_path_end(r.path, r.path_len)
        m = o.n
        _rt_replace_all(&e.rewrite, r.path, noq, &o, r.worker)
        if o.full:
            o.need += 1                         # room for the '/' that may go in front
        elif o.n == m or out[m] != 47:          # a '/' in front if it has none
            o.need += 1
            if o.n + 1 > o.cap:
                o.full = True
            else:
                memmove(out + m + 1, out + m, o.n - m)
                out[m] = 47
                o.n += 1
        if not e.strip_query:
            _rt_put(&o, r.path + noq, r.path_len - noq)
        if o.full:
            return _rt_no_room(&o, need)
        return <ssize_t>o.n
    if redirect and e.strip_query and not e.path_redirect_has_query:
        for k in range(2):
            if seg_n[k]:
                q = <const char*>memchr(seg_p[k], 63, seg_n[k])
                if q != NULL:
                    seg_n[k] = <size_t>(q - seg_p[k])
                    if k == 0:
                        seg_n[1] = 0
                    break
    _rt_put(&o, scheme, scheme_len)
    _rt_put(&o, "://", 3)
    _rt_put(&o, host, host_len)
    _rt_put(&o, port, port_len)
    if not ((seg_n[0] and seg_p[0][0] == 47) or (seg_n[0] == 0 and seg_n[1] and seg_p[1][0] == 47)):
        _rt_put(&o, "/", 1)
    _rt_put(&o, seg_p[0], seg_n[0])
    _rt_put(&o, seg_p[1], seg_n[1])
    if o.full:
        return _rt_no_room(&o, need)
    return <ssize_t>o.n


cdef ssize_t route_text(RouteTextFn fn, const RouteEntry* e, const RouteInput* r, char* stack,
                        size_t cap, char** text) noexcept nogil:
    """The text fn writes (route_rewrite_path, route_redirect_location), whatever its
    length: in `stack` (cap bytes) when it fits, else in a buffer malloc'd to its size.
    *text is where it is (the caller frees it when it is not `stack`). Returns its length,
    ROUTE_NONE, or ROUTE_NO_ROOM when no buffer could be had: the caller must then refuse
    the request, never go on without the text (a rewrite may confine the path)."""
    cdef size_t need = 0
    cdef ssize_t n = fn(e, r, stack, cap, &need)
    text[0] = stack
    if n != ROUTE_NO_ROOM:
        return n
    text[0] = <char*>malloc(need + 1)
    if text[0] == NULL:
        text[0] = stack
        return ROUTE_NO_ROOM
    n = fn(e, r, text[0], need, NULL)
    if n == ROUTE_NO_ROOM:          # (need is an upper bound: not reached)
        free(text[0])
        text[0] = stack
    return n
