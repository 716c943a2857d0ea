# Route hash policies (Envoy's RouteAction.hash_policy): the request's hash for the
# consistent-hash load balancers (RING_HASH, MAGLEV), from a header, a cookie (generated
# with its ttl when missing), a query parameter, the source IP or filter state; `terminal`
# stops the list. The stream's LbContext (HStream.lb) carries it to the pick. Owner: issue
# 16's HASH work.
#
# Built on the main thread into the route table's arena (route_hash_policy_build, from the
# model in fastproxy.http.hash_policy); computed on the worker without the GIL by
# stream_hash_policy, which the router calls once, after the route and cluster are chosen
# and before the pool picks a host. Envoy 1.40's HashPolicyImpl::generateHash, step by step:
#   header      every line of the header (":authority"/"host", ":path", ":method",
#               ":scheme": the request's pseudo-headers), each after the regex_rewrite, sorted
#               bytewise, hashed in that order (xxHash64 of the first with seed 0, each next
#               one seeded with the hash so far)
#   cookie      the first cookie of that name in the Cookie lines ("; "-separated
#               name=value pairs, a quoted value unquoted); missing or empty with a ttl: the
#               router's generated value, 16 hex digits of xxHash64("<peer ip:port><local
#               ip:port>") (the same for every request of a connection), is hashed, and the
#               response from the upstream gets Set-Cookie lines for it (hash_cookies_add)
#   source_ip   the stream's client address as text (s.client_ip: the peer, or what
#               x-forwarded-for says under Envoy's rules)
#   query       the first value of the parameter in the target's query, as sent
#   filter_state  the string a filter set under the key (hf_filter_state_set)
# A policy that yields nothing is skipped; the others are combined as rotl(h, 1) ^ new.
# Only clusters whose balancer hashes get a hash (and only they generate cookies), as Envoy
# asks for the hash only in those balancers' pick.
#
# Memory on the request path: the stack, except a header with more than
# HP_VALUES_ON_STACK lines or regex_rewrite results over HP_REWRITE_ON_STACK bytes
# (malloc'd and freed in the call), and the generated cookie's one getsockname().

DEF HP_VALUES_ON_STACK = 8
DEF HP_REWRITE_ON_STACK = 1024

cdef enum:                          # HashMethod.kind
    HPK_HEADER = 1
    HPK_COOKIE = 2
    HPK_SOURCE_IP = 3
    HPK_QUERY = 4
    HPK_FILTER_STATE = 5

cdef struct HashMethod:
    int kind                        # HPK_*
    uint8_t terminal
    RouteStr name                   # the header (lower case), cookie or query parameter name,
                                    #   or the filter state key
    int source                      # HPK_HEADER: RHS_HEADERS, or RHS_* for a pseudo-header
    RouteRewrite rewrite            # HPK_HEADER: regex_rewrite (rewrite.regex NULL: none)
    int cookie_bit                  # HPK_COOKIE with a ttl: its bit in HStream.hash_cookies; -1: none
    RouteStr cookie_head            # ... the Set-Cookie text before the value: <name>="
    RouteStr cookie_tail            # ... and after it: "; Max-Age=..; Path=..; <attrs>; HttpOnly

cdef struct HashPolicy:
    int n                           # connection_properties with source_ip false are left out
    HashMethod* methods


# ---------------------------------------------------------------- building (main thread)

cdef int route_hash_policy_build(_RouteBuilder b, RouteEntry* e, a, str apath) except -1:
    """e.hash_policy from the route action `a` (its hash_policy list of
    fastproxy.http.hash_policy.HashPolicy); NULL: none."""
    from fastproxy.http.hash_policy import validate_hash_policies
    cdef HashPolicy* hp
    cdef HashMethod* m
    cdef int i, k = 0, bit = 0
    e.hash_policy = NULL
    policies = getattr(a, "hash_policy", None) or []
    if not policies:
        return 0
    validate_hash_policies(policies, apath + ".hash_policy")
    # Envoy builds no method for connection_properties with source_ip false.
    used = [(i, p) for i, p in enumerate(policies)
            if p.connection_properties is None or p.connection_properties.source_ip]
    if not used:
        return 0
    hp = <HashPolicy*>b.alloc(sizeof(HashPolicy))
    hp.methods = <HashMethod*>b.alloc(sizeof(HashMethod) * len(used))
    hp.n = len(used)
    for i, p in used:
        m = &hp.methods[k]
        k += 1
        ppath = f"{apath}.hash_policy[{i}]"
        m.terminal = bool(p.terminal)
        m.cookie_bit = -1
        if p.header is not None:
            m.kind = HPK_HEADER
            name = _rt_lower(p.header.header_name)
            b.put(&m.name, name)
            m.source = _RT_PSEUDO.get(name, RHS_HEADERS)
            if p.header.regex_rewrite is not None:
                b.rewrite(&m.rewrite, p.header.regex_rewrite, ppath + ".header")
        elif p.cookie is not None:
            c = p.cookie
            m.kind = HPK_COOKIE
            b.put(&m.name, c.name)
            if c.ttl is not None:
                m.cookie_bit = bit
                bit += 1
                b.put(&m.cookie_head, c.name + '="')
                b.put(&m.cookie_tail, _hp_cookie_tail(c))
        elif p.connection_properties is not None:
            m.kind = HPK_SOURCE_IP
        elif p.query_parameter is not None:
            m.kind = HPK_QUERY
            b.put(&m.name, p.query_parameter.name)
        else:
            m.kind = HPK_FILTER_STATE
            b.put(&m.name, p.filter_state.key)
    e.hash_policy = hp
    return 0


cdef str _hp_cookie_tail(c):
    """What follows a generated cookie's value, as Envoy's makeSetCookieValue writes it: the
    ttl's whole seconds as Max-Age (none for 0), the path, the attributes, HttpOnly."""
    ttl = int(c.ttl)                    # Envoy: Duration.seconds, the fraction dropped
    out = ['"']
    if ttl:
        out.append(f"; Max-Age={ttl}")
    if c.path:
        out.append(f"; Path={c.path}")
    for attr in c.attributes:
        out.append(f"; {attr.name}={attr.value}" if attr.value else f"; {attr.name}")
    out.append("; HttpOnly")
    return "".join(out)


# ---------------------------------------------------------------- the request's hash (worker)

cdef inline bint _hp_balancer_hashes(const HostSet* hs) noexcept nogil:
    """Does the load balancer the worker picks with use the request's hash (Envoy asks for
    it only in the consistent-hash balancers' pick)? The host set's own policy: the one its
    tables were built for, which the pick uses."""
    return hs != NULL and (hs.policy == LB_RING_HASH or hs.policy == LB_MAGLEV)


cdef int stream_hash_policy(HStream* s, const RouteInput* r) noexcept nogil:
    """The request's hash for the pick (s.lb.has_hash / hash) from s's route's hash_policy,
    and the cookies to generate (s.hash_cookies). Called by the router once the route and
    the cluster are chosen. -1: no memory."""
    cdef const HashPolicy* p = s.route.hash_policy if s.route != NULL else NULL
    cdef const HashMethod* m
    cdef uint64_t h = 0
    cdef uint64_t v = 0
    cdef bint have = False
    cdef int i, rc
    s.lb.has_hash = 0
    s.lb.hash = 0
    s.hash_cookies = 0
    if p == NULL or s.cluster == NULL or not _hp_balancer_hashes(lb_hosts(s.cluster, s.c.w)):
        return 0
    for i in range(p.n):
        m = &p.methods[i]
        rc = _hp_method(s, r, m, &v)
        if rc < 0:
            return -1
        if rc:
            # Rotating what came before keeps two equal policies from cancelling out.
            h = (_rotl64(h, 1) ^ v) if have else v
            have = True
        if m.terminal and have:
            break
    s.lb.has_hash = have
    s.lb.hash = h
    return 0


cdef int _hp_method(HStream* s, const RouteInput* r, const HashMethod* m, uint64_t* out) noexcept nogil:
    """One policy's hash: 1 (in *out), 0: it yields none, -1: no memory."""
    cdef const char* v = NULL
    cdef size_t n = 0
    cdef char hexv[16]
    if m.kind == HPK_HEADER:
        return _hp_header(m, r, out)
    if m.kind == HPK_COOKIE:
        if _hp_cookie_value(r, m.name.p, m.name.n, &v, &n) and n:
            out[0] = fp_xxhash64(v, n, 0)
            return 1
        if m.cookie_bit < 0:
            return 0
        if not s.hash_cookies and _hp_generated_cookie(s) < 0:
            return 0                    # (no local address: Envoy has one; nothing to hash)
        s.hash_cookies |= (<uint64_t>1) << m.cookie_bit
        _hp_hex16(s.hash_cookie_value, hexv)
        out[0] = fp_xxhash64(hexv, 16, 0)
        return 1
    if m.kind == HPK_SOURCE_IP:
        if s.client_ip_len == 0:
            return 0
        out[0] = fp_xxhash64(s.client_ip, s.client_ip_len, 0)
        return 1
    if m.kind == HPK_QUERY:
        if not _hp_query_value(r.path, r.path_len, m.name.p, m.name.n, &v, &n):
            return 0
        out[0] = fp_xxhash64(v, n, 0)
        return 1
    v = hf_filter_state_get(s.fc, m.name.p, m.name.n, &n)
    if v == NULL:
        return 0
    out[0] = fp_xxhash64(v, n, 0)
    return 1


cdef inline int _hp_cmp(StrRef a, StrRef b) noexcept nogil:
    """Bytewise order (std::string_view's)."""
    cdef int c = memcmp(a.p, b.p, a.n if a.n < b.n else b.n) if a.n and b.n else 0
    if c:
        return c
    return -1 if a.n < b.n else (1 if a.n > b.n else 0)


cdef int _hp_header(const HashMethod* m, const RouteInput* r, uint64_t* out) noexcept nogil:
    cdef StrRef stack[HP_VALUES_ON_STACK]
    cdef StrRef* vals = stack
    cdef StrRef t
    cdef char rbuf[HP_REWRITE_ON_STACK]
    cdef char* heap = NULL
    cdef size_t starts[HP_VALUES_ON_STACK]
    cdef size_t* offs = starts
    cdef size_t nv = 0, i, j
    cdef int k
    cdef _RtOut o
    cdef uint64_t h = 0
    if m.source != RHS_HEADERS:
        if m.source == RHS_AUTHORITY:
            stack[0] = _s(r.host, r.host_len)
        elif m.source == RHS_PATH:
            stack[0] = _s(r.path, r.path_len)
        elif m.source == RHS_METHOD:
            stack[0] = _s(r.method, r.method_len)
        else:
            stack[0] = _s(r.scheme, r.scheme_len)
        if stack[0].p == NULL:
            return 0
        nv = 1
    else:
        for k in range(r.nheaders):
            if r.headers[k].name_len == m.name.n and _rt_ieq(r.headers[k].name, m.name.p, m.name.n):
                nv += 1
        if nv == 0:
            return 0
        if nv > HP_VALUES_ON_STACK:
            vals = <StrRef*>malloc(nv * (sizeof(StrRef) + sizeof(size_t)))
            if vals == NULL:
                return -1
            offs = <size_t*>(vals + nv)
        nv = 0
        for k in range(r.nheaders):
            if r.headers[k].name_len == m.name.n and _rt_ieq(r.headers[k].name, m.name.p, m.name.n):
                vals[nv] = _s(r.headers[k].value, r.headers[k].value_len)
                nv += 1
    if m.rewrite.regex != NULL:
        # Every value rewritten into one buffer: the stack's, else one of the size needed.
        o.p = rbuf
        o.cap = sizeof(rbuf)
        while True:
            o.n = 0
            o.need = 0
            o.full = False
            for i in range(nv):
                offs[i] = o.need
                _rt_replace_all(&m.rewrite, vals[i].p, vals[i].n, &o, r.worker)
            if not o.full:
                break
            if heap != NULL:            # (cannot happen: the size needed was given)
                break
            heap = <char*>malloc(o.need if o.need else 1)
            if heap == NULL:
                if vals != stack:
                    free(vals)
                return -1
            o.p = heap
            o.cap = o.need
        for i in range(nv):
            vals[i] = _s(o.p + offs[i], (offs[i + 1] if i + 1 < nv else o.n) - offs[i])
    # Sorted, so that the same values in another order hash the same (insertion sort: a
    # header rarely has more than a few lines).
    for i in range(1, nv):
        t = vals[i]
        j = i
        while j > 0 and _hp_cmp(vals[j - 1], t) > 0:
            vals[j] = vals[j - 1]
            j -= 1
        vals[j] = t
    for i in range(nv):
        h = fp_xxhash64(vals[i].p, vals[i].n, h)     # (n 0: p is not read)
    out[0] = h
    free(heap)
    if vals != stack:
        free(vals)
    return 1


cdef bint _hp_cookie_value(const RouteInput* r, const char* name, size_t nn, const char** vp,
                           size_t* vn) noexcept nogil:
    """Envoy's Utility::parseCookieValue: in each Cookie line, the ';'-separated pairs (spaces
    before the name skipped, the value everything after the first '='); the first pair whose
    name matches exactly, its value unquoted if it is in double quotes."""
    cdef int k
    cdef const char* p
    cdef const char* end
    cdef const char* semi
    cdef const char* q
    cdef const char* eq
    cdef const char* a
    cdef size_t vlen
    for k in range(r.nheaders):
        if r.headers[k].name_len != 6 or not _rt_ieq(r.headers[k].name, "cookie", 6):
            continue
        p = r.headers[k].value
        end = p + r.headers[k].value_len
        while p <= end:
            semi = <const char*>memchr(p, 59, <size_t>(end - p)) if p < end else NULL   # ';'
            q = end if semi == NULL else semi
            eq = <const char*>memchr(p, 61, <size_t>(q - p)) if p < q else NULL          # '='
            if eq != NULL:
                a = p
                while a < eq and a[0] == 32:
                    a += 1
                if <size_t>(eq - a) == nn and memcmp(a, name, nn) == 0:
                    vp[0] = eq + 1
                    vlen = <size_t>(q - eq - 1)
                    if vlen >= 2 and vp[0][0] == 34 and vp[0][vlen - 1] == 34:      # '"'
                        vp[0] += 1
                        vlen -= 2
                    vn[0] = vlen
                    return True
            if semi == NULL:
                break
            p = semi + 1
    return False


cdef bint _hp_query_value(const char* path, size_t n, const char* name, size_t nn,
                          const char** vp, size_t* vn) noexcept nogil:
    """Envoy's QueryParamsMulti::parseQueryString(...).getFirstValue: after the first '?',
    '&'-separated parameters, a name without '=' having the value "", nothing decoded."""
    cdef const char* q = <const char*>memchr(path, 63, n) if path != NULL and n else NULL     # '?'
    cdef const char* end = path + n
    cdef const char* p
    cdef const char* amp
    cdef const char* pe
    cdef const char* eq
    if q == NULL:
        return False
    p = q + 1
    while p < end:
        amp = <const char*>memchr(p, 38, <size_t>(end - p))                                  # '&'
        pe = end if amp == NULL else amp
        eq = <const char*>memchr(p, 61, <size_t>(pe - p)) if p < pe else NULL                # '='
        if <size_t>((eq if eq != NULL else pe) - p) == nn and memcmp(p, name, nn) == 0:
            if eq == NULL:
                vp[0] = ""
                vn[0] = 0
            else:
                vp[0] = eq + 1
                vn[0] = <size_t>(pe - eq - 1)
            return True
        p = pe + 1
    return False


cdef inline void _hp_hex16(uint64_t v, char* out) noexcept nogil:
    """Envoy's Hex::uint64ToHex: 16 lower-case digits, most significant first."""
    cdef int i
    for i in range(15, -1, -1):
        out[i] = b"0123456789abcdef"[v & 15]
        v >>= 4


cdef size_t _hp_addr_text(const sockaddr* sa, char* out, size_t cap) noexcept nogil:
    """An address as Envoy's Address::Instance::asString: "ip:port", "[ip6]:port". 0: not IP."""
    cdef char ip[48]
    cdef uint16_t port
    cdef int n
    if sa.sa_family == AF_INET6:
        if inet_ntop(AF_INET6, &(<const sockaddr_in6*>sa).sin6_addr, ip, sizeof(ip)) == NULL:
            return 0
        port = ntohs((<const sockaddr_in6*>sa).sin6_port)
        n = snprintf(out, cap, "[%s]:%u", ip, <unsigned int>port)
    elif sa.sa_family == AF_INET:
        if inet_ntop(AF_INET, &(<const sockaddr_in*>sa).sin_addr, ip, sizeof(ip)) == NULL:
            return 0
        port = ntohs((<const sockaddr_in*>sa).sin_port)
        n = snprintf(out, cap, "%s:%u", ip, <unsigned int>port)
    else:
        return 0
    return <size_t>n if 0 < n < <int>cap else 0


cdef int _hp_generated_cookie(HStream* s) noexcept nogil:
    """s.hash_cookie_value: the hash behind a generated cookie's value (Envoy's router:
    xxHash64 of the connection's peer address then its local address, as text). -1: the
    local address is not known."""
    cdef HConn* c = s.c
    cdef sockaddr_storage local
    cdef socklen_t ll = sizeof(local)
    cdef char text[160]
    cdef int n
    cdef size_t k
    if memchr(c.remote_ip, 58, c.remote_ip_len) != NULL:               # ':': IPv6
        n = snprintf(text, sizeof(text), "[%s]:%u", c.remote_ip, <unsigned int>c.remote_port)
    else:
        n = snprintf(text, sizeof(text), "%s:%u", c.remote_ip, <unsigned int>c.remote_port)
    if n <= 0 or n >= <int>sizeof(text) or getsockname(c.down.fd, <sockaddr*>&local, &ll) < 0:
        return -1
    k = _hp_addr_text(<sockaddr*>&local, text + n, sizeof(text) - <size_t>n)
    if k == 0:
        return -1
    s.hash_cookie_value = fp_xxhash64(text, <size_t>n + k, 0)
    return 0


# ---------------------------------------------------------------- the generated cookies (worker)

cdef int hash_cookies_add(HStream* s, PairList* l, HMap* m, char** owned) noexcept nogil:
    """The Set-Cookie fields of the cookies s's hash policy generated (s.hash_cookies), as
    Envoy's router appends them to the upstream's response head (before the route's
    response_headers_to_add): to l, the text in *owned (malloc'd; the caller frees it after
    encoding), or copied into m. -1: no memory."""
    cdef const HashPolicy* p = s.route.hash_policy if s.route != NULL else NULL
    cdef const HashMethod* hm
    cdef size_t total = 0, at = 0, n
    cdef char* buf
    cdef char hexv[16]
    cdef int i
    if s.hash_cookies == 0 or p == NULL:
        return 0
    for i in range(p.n):
        hm = &p.methods[i]
        if hm.cookie_bit >= 0 and s.hash_cookies & ((<uint64_t>1) << hm.cookie_bit):
            total += hm.cookie_head.n + 16 + hm.cookie_tail.n
    buf = <char*>malloc(total if total else 1)
    if buf == NULL:
        return -1
    _hp_hex16(s.hash_cookie_value, hexv)
    for i in range(p.n):
        hm = &p.methods[i]
        if hm.cookie_bit < 0 or not (s.hash_cookies & ((<uint64_t>1) << hm.cookie_bit)):
            continue
        n = hm.cookie_head.n + 16 + hm.cookie_tail.n
        memcpy(buf + at, hm.cookie_head.p, hm.cookie_head.n)
        memcpy(buf + at + hm.cookie_head.n, hexv, 16)
        memcpy(buf + at + hm.cookie_head.n + 16, hm.cookie_tail.p, hm.cookie_tail.n)
        if l != NULL:
            if _pl_add(l, _cs("set-cookie"), _s(buf + at, n)) < 0:
                free(buf)
                return -1
        elif hm_add(m, "set-cookie", 10, buf + at, n) < 0:
            free(buf)
            return -1
        at += n
    if l != NULL:
        owned[0] = buf
    else:
        free(buf)
    return 0
