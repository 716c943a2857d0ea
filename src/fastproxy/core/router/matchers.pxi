# The string and header matchers (Envoy's type.matcher.v3.StringMatcher and
# route.v3.HeaderMatcher / QueryParameterMatcher), on the workers (no GIL, no allocation):
# one implementation for the routes (core/router/match.pxi calls them for a route's header,
# query and safe_regex path tests) and the native filters (cors origins and health_check
# headers, core/filters/). Their structs are in core/router/decls.pxi, their builder is
# _MatchBuilder in core/router/build.pxi (main thread), which the native filters' builder
# extends, so both sides also share one regex policy (a compiled copy per worker).

cdef inline bint _rt_regex_full(const RouteRegex* rx, const char* s, size_t n,
                                unsigned int worker) noexcept nogil:
    """Does s[:n] match the anchored pattern rx (a route's safe_regex path match, a string
    matcher's safe_regex)? regexec is given the bounds with REG_STARTEND, and glibc's
    reads no byte outside them, so s needs no NUL of its own and is not copied. What it
    does need, for ASan's regexec interceptor (which checks strlen(s) + 1 bytes whatever
    the flags), is a NUL somewhere after s in the same allocation: every string the
    workers match has one (see "Regexes" in core/router/decls.pxi)."""
    cdef regmatch_t m[1]
    if rx.literal.n and (n < rx.literal.n or not _rt_starts(s, rx.literal.p, rx.literal.n,
                                                             rx.literal_last, False)):
        return False                # the pattern's literal start is not there: no regexec
    m[0].rm_so = 0
    m[0].rm_eo = <regoff_t>n
    if s == NULL:
        s = ""
    return regexec(&rx.copies[worker % <unsigned int>rx.ncopies], s, 0, m, REG_STARTEND) == 0


cdef bint _rt_string_match(const RouteStringMatch* sm, const char* v, size_t n,
                           unsigned int worker) noexcept nogil:
    cdef size_t k = sm.value.n
    cdef size_t i
    if sm.kind == RSM_SAFE_REGEX:
        return _rt_regex_full(sm.regex, v, n, worker)
    if sm.kind == RSM_EXACT:
        if n != k:
            return False
    elif sm.kind == RSM_PREFIX:
        if n < k:
            return False
    elif sm.kind == RSM_SUFFIX:
        if n < k:
            return False
        v = v + (n - k)
    elif sm.kind == RSM_CONTAINS:
        if k == 0:
            return True
        if n < k:
            return False
        if not sm.ignore_case:
            return memmem(v, n, sm.value.p, k) != NULL
        for i in range(n - k + 1):
            if _rt_ieq(v + i, sm.value.p, k):
                return True
        return False
    if k == 0:
        return True
    if sm.ignore_case:
        return _rt_ieq(v, sm.value.p, k)
    return memcmp(v, sm.value.p, k) == 0


cdef bint _rt_int64(const char* v, size_t n, int64_t* out) noexcept nogil:
    """A whole value that is a decimal integer with an optional sign, within int64."""
    cdef size_t i = 0
    cdef bint neg = False
    cdef uint64_t acc = 0
    cdef uint64_t limit
    if n and (v[0] == 43 or v[0] == 45):        # '+' / '-'
        neg = v[0] == 45
        i = 1
    if i == n:
        return False
    limit = (<uint64_t>1 << 63) if neg else (<uint64_t>1 << 63) - 1
    while i < n:
        if not 48 <= v[i] <= 57:
            return False
        if acc > (limit - <uint64_t>(v[i] - 48)) // 10:
            return False
        acc = acc * 10 + <uint64_t>(v[i] - 48)
        i += 1
    out[0] = -<int64_t>(acc - 1) - 1 if neg and acc else <int64_t>acc
    return True


cdef inline bint _rt_value_matches(const RouteHeaderMatcher* m, const char* v, size_t n,
                                   unsigned int worker) noexcept nogil:
    cdef int64_t x
    if m.is_range:
        return _rt_int64(v, n, &x) and m.range_start <= x < m.range_end
    return _rt_string_match(&m.sm, v, n, worker)


cdef bint _rt_header_matches(const RouteHeaderMatcher* m, const RouteInput* r) noexcept nogil:
    """route.v3.HeaderMatcher against a request: the one implementation the routes and the
    native filters (health_check) share. A repeated header matches when one of its field
    lines does: Envoy 1.40 matches each value on its own ("x: v" twice matches exact "v";
    "x: v1" + "x: v2" does not match exact "v1,v2"), in routes and filters alike (checked
    against Envoy in tests/http/filters/test_native_filters.py); invert_match inverts that
    outcome."""
    cdef const char* v = NULL
    cdef size_t n = 0
    cdef bint found = False
    cdef bint ok = False
    cdef int i
    cdef const RouteHeader* h
    if m.source == RHS_HEADERS:
        for i in range(r.nheaders):
            h = &r.headers[i]
            if h.name_len == m.name.n and _rt_ieq(h.name, m.name.p, h.name_len):
                found = True
                if m.presence_only:
                    break
                if _rt_value_matches(m, h.value, h.value_len, r.worker):
                    ok = True
                    break
    else:
        if m.source == RHS_METHOD:
            v = r.method
            n = r.method_len
        elif m.source == RHS_PATH:
            v = r.path
            n = r.path_len
        elif m.source == RHS_AUTHORITY:
            v = r.host
            n = r.host_len
        else:
            v = r.scheme
            n = r.scheme_len
        found = v != NULL
        ok = found and not m.presence_only and _rt_value_matches(m, v, n, r.worker)
    if m.presence_only:
        return (found == <bint>m.present) != <bint>m.invert
    if not found:
        if not m.missing_as_empty:
            return False
        ok = _rt_value_matches(m, "", 0, r.worker)
    return ok != <bint>m.invert


cdef bint _rt_query_matches(const RouteQueryMatcher* m, const char* path, size_t path_len,
                            size_t noq, unsigned int worker) noexcept nogil:
    cdef size_t q, end, pe, ne
    cdef const char* amp
    cdef const char* eq
    cdef const char* hashmark
    if noq >= path_len or path[noq] != 63:      # no '?': no query
        return False
    q = noq + 1
    end = path_len
    hashmark = <const char*>memchr(path + q, 35, end - q)
    if hashmark != NULL:
        end = <size_t>(hashmark - path)
    while q < end:
        amp = <const char*>memchr(path + q, 38, end - q)    # '&'
        pe = end if amp == NULL else <size_t>(amp - path)
        eq = <const char*>memchr(path + q, 61, pe - q)      # '='
        ne = pe if eq == NULL else <size_t>(eq - path)
        if ne - q == m.name.n and memcmp(path + q, m.name.p, m.name.n) == 0:
            if m.presence_only:
                return True
            if eq == NULL:
                return _rt_string_match(&m.sm, "", 0, worker)
            return _rt_string_match(&m.sm, path + ne + 1, pe - ne - 1, worker)
        q = pe + 1
    return False
