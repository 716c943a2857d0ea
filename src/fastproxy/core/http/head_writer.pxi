# The heads the proxy sends, before a codec encodes them: the field lines being assembled
# (PairList), the header operations of routes and the connection manager applied to them,
# hop-by-hop and Connection-nominated fields, x-request-id, and how a body is announced
# (_body_framing: a BodyFraming for the codec). No wire format here: the codecs
# (core/http/codec_h1_*.pxi) write bytes.

cdef inline bint _ieq(const char* a, size_t an, const char* lower) noexcept nogil:
    """a (any case) equals the lowercase NUL-terminated `lower` (_rt_ieq's compare)."""
    return strlen(lower) == an and _rt_ieq(a, lower, an)


cdef const char* _status_reason(int status) noexcept nogil:
    """The reason phrase of the IANA HTTP status code registry (RFC 9110 15), for the status
    lines fastproxy writes itself: local replies, and responses a filter changed."""
    if status < 300:
        if status == 100: return "Continue"
        if status == 101: return "Switching Protocols"
        if status == 102: return "Processing"
        if status == 103: return "Early Hints"
        if status == 200: return "OK"
        if status == 201: return "Created"
        if status == 202: return "Accepted"
        if status == 203: return "Non-Authoritative Information"
        if status == 204: return "No Content"
        if status == 205: return "Reset Content"
        if status == 206: return "Partial Content"
        if status == 207: return "Multi-Status"
        if status == 208: return "Already Reported"
        if status == 226: return "IM Used"
    elif status < 400:
        if status == 300: return "Multiple Choices"
        if status == 301: return "Moved Permanently"
        if status == 302: return "Found"
        if status == 303: return "See Other"
        if status == 304: return "Not Modified"
        if status == 305: return "Use Proxy"
        if status == 307: return "Temporary Redirect"
        if status == 308: return "Permanent Redirect"
    elif status < 500:
        if status == 400: return "Bad Request"
        if status == 401: return "Unauthorized"
        if status == 402: return "Payment Required"
        if status == 403: return "Forbidden"
        if status == 404: return "Not Found"
        if status == 405: return "Method Not Allowed"
        if status == 406: return "Not Acceptable"
        if status == 407: return "Proxy Authentication Required"
        if status == 408: return "Request Timeout"
        if status == 409: return "Conflict"
        if status == 410: return "Gone"
        if status == 411: return "Length Required"
        if status == 412: return "Precondition Failed"
        if status == 413: return "Payload Too Large"
        if status == 414: return "URI Too Long"
        if status == 415: return "Unsupported Media Type"
        if status == 416: return "Range Not Satisfiable"
        if status == 417: return "Expectation Failed"
        if status == 418: return "I'm a teapot"
        if status == 421: return "Misdirected Request"
        if status == 422: return "Unprocessable Content"
        if status == 423: return "Locked"
        if status == 424: return "Failed Dependency"
        if status == 425: return "Too Early"
        if status == 426: return "Upgrade Required"
        if status == 428: return "Precondition Required"
        if status == 429: return "Too Many Requests"
        if status == 431: return "Request Header Fields Too Large"
        if status == 451: return "Unavailable For Legal Reasons"
    else:
        if status == 500: return "Internal Server Error"
        if status == 501: return "Not Implemented"
        if status == 502: return "Bad Gateway"
        if status == 503: return "Service Unavailable"
        if status == 504: return "Gateway Timeout"
        if status == 505: return "HTTP Version Not Supported"
        if status == 506: return "Variant Also Negotiates"
        if status == 507: return "Insufficient Storage"
        if status == 508: return "Loop Detected"
        if status == 511: return "Network Authentication Required"
    return "Unknown"


cdef inline StrRef _s(const char* p, size_t n) noexcept nogil:
    cdef StrRef s
    s.p = p
    s.n = n
    return s


cdef inline StrRef _cs(const char* p) noexcept nogil:
    return _s(p, strlen(p))


cdef int _pl_add(PairList* l, StrRef name, StrRef value) noexcept nogil:
    cdef FieldPair* nv
    if l.n == l.cap:
        nv = <FieldPair*>realloc(l.v, (l.cap * 2 + 16) * sizeof(FieldPair))
        if nv == NULL:
            return -1
        l.v = nv
        l.cap = l.cap * 2 + 16
    l.v[l.n].name = name
    l.v[l.n].value = value
    l.n += 1
    return 0


cdef void _pl_remove(PairList* l, const char* name, size_t n) noexcept nogil:
    cdef size_t i, k = 0
    for i in range(l.n):
        if not _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name, n):
            l.v[k] = l.v[i]
            k += 1
    l.n = k


cdef StrRef _pl_take(PairList* l, const char* name, size_t n) noexcept nogil:
    """Remove every field `name`; return the first one's value (p NULL: there was none)."""
    cdef StrRef first = _s(NULL, 0)
    cdef size_t i
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name, n):
            first = l.v[i].value
            break
    _pl_remove(l, name, n)
    return first


cdef bint _pl_has(PairList* l, const char* name, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name, n):
            return True
    return False


cdef int _pl_overwrite(PairList* l, StrRef name, StrRef value) noexcept nogil:
    """Replace every field `name` by one `name: value` where the first one stood (or add it)."""
    cdef size_t i, k = 0
    cdef bint placed = False
    for i in range(l.n):
        if _rt_ieq2(l.v[i].name.p, l.v[i].name.n, name.p, name.n):
            if placed:
                continue
            l.v[i].value = value
            placed = True
        l.v[k] = l.v[i]
        k += 1
    l.n = k
    if not placed:
        return _pl_add(l, name, value)
    return 0


cdef int _pl_set_server(PairList* l, const HttpCfg* h) noexcept nogil:
    """Server on a response head, as the connection manager sets it after the filters and
    the route's mutations (server_header_transformation)."""
    if h.server_mode == SERVER_PASS_THROUGH or h.server_name_len == 0:
        return 0
    if h.server_mode == SERVER_APPEND_IF_ABSENT:
        if _pl_has(l, "server", 6):
            return 0
    else:
        _pl_remove(l, "server", 6)
    return _pl_add(l, _cs("server"), _s(h.server_name, h.server_name_len))


cdef int _pl_apply_ops(PairList* l, const RouteHeaderOps* ops) noexcept nogil:
    """A route's header mutations on a head being serialized (see _apply_route_ops)."""
    return _apply_route_ops(l, NULL, ops)


cdef int _hm_apply_ops(HMap* m, const RouteHeaderOps* ops) noexcept nogil:
    """A route's header mutations on a filter chain's header map (copied into its arena)."""
    return _apply_route_ops(NULL, m, ops)


cdef int _apply_route_ops(PairList* l, HMap* m, const RouteHeaderOps* ops) noexcept nogil:
    """Envoy's header mutations, on the pair list l or (when l is NULL) the map m, one level
    (route, virtual host, route configuration) at a time: the level's removes; then every
    add is decided against the headers as they are before any add of the level; then
    overwrites in order, then appends in order."""
    cdef int i = 0, j, k
    cdef const RouteHeaderOp* op
    cdef uint8_t* verdict
    cdef PairList* fields = l if l != NULL else &m.l
    cdef int rc
    if ops.n == 0:
        return 0
    verdict = <uint8_t*>malloc(ops.n)
    if verdict == NULL:
        return -1
    while i < ops.n:
        j = i
        while j < ops.n and ops.ops[j].level == ops.ops[i].level:
            j += 1
        for k in range(i, j):
            op = &ops.ops[k]
            if op.action == RHO_REMOVE:
                _pl_remove(fields, op.name.p, op.name.n)
        for k in range(i, j):
            op = &ops.ops[k]
            verdict[k] = 0                                  # skip
            if op.action == RHO_APPEND_IF_EXISTS_OR_ADD:
                verdict[k] = 2                              # append
            elif op.action == RHO_ADD_IF_ABSENT and not _pl_has(fields, op.name.p, op.name.n):
                verdict[k] = 2
            elif op.action == RHO_OVERWRITE_IF_EXISTS_OR_ADD:
                verdict[k] = 1                              # overwrite
            elif op.action == RHO_OVERWRITE_IF_EXISTS and _pl_has(fields, op.name.p, op.name.n):
                verdict[k] = 1
        for k in range(i, j):
            op = &ops.ops[k]
            if verdict[k] != 1:
                continue
            if l != NULL:
                rc = _pl_overwrite(l, _s(op.name.p, op.name.n), _s(op.value.p, op.value.n))
            else:
                rc = hm_set(m, op.name.p, op.name.n, op.value.p, op.value.n)
            if rc < 0:
                free(verdict)
                return -1
        for k in range(i, j):
            op = &ops.ops[k]
            if verdict[k] != 2:
                continue
            if l != NULL:
                rc = _pl_add(l, _s(op.name.p, op.name.n), _s(op.value.p, op.value.n))
            else:
                rc = hm_add(m, op.name.p, op.name.n, op.value.p, op.value.n)
            if rc < 0:
                free(verdict)
                return -1
        i = j
    free(verdict)
    return 0


cdef bint _is_hop_by_hop(const char* name, size_t n) noexcept nogil:
    # Dispatch on the length first: most fields are none of these, and their lengths say so.
    if n == 2:
        return _ieq(name, n, "te")
    if n == 7:
        return _ieq(name, n, "trailer") or _ieq(name, n, "upgrade")
    if n == 10:
        return _ieq(name, n, "connection") or _ieq(name, n, "keep-alive")
    if n == 14:
        return _ieq(name, n, "content-length")
    if n == 16:
        return _ieq(name, n, "proxy-connection")
    if n == 17:
        return _ieq(name, n, "transfer-encoding")
    return False


cdef char* _HEX = "0123456789abcdef"

cdef void _uuid4(char* out, uint64_t a, uint64_t b) noexcept nogil:
    """A version-4 UUID (8-4-4-4-12 hex digits) from 128 random bits."""
    cdef int i, k = 0
    cdef uint64_t hi = (a & 0xffffffffffff0fffULL) | 0x4000ULL             # version 4
    cdef uint64_t lo = (b & 0x3fffffffffffffffULL) | 0x8000000000000000ULL  # variant 10
    for i in range(16):
        if i == 8 or i == 12:
            out[k] = b'-'
            k += 1
        out[k] = _HEX[(hi >> (60 - 4 * i)) & 15]
        k += 1
    for i in range(16):
        if i == 0 or i == 4:
            out[k] = b'-'
            k += 1
        out[k] = _HEX[(lo >> (60 - 4 * i)) & 15]
        k += 1
    out[36] = 0


cdef void stream_new_request_id(HStream* s) noexcept nogil:
    """Generate the stream's x-request-id (s.request_id, 36 characters)."""
    cdef uint64_t a = worker_id_random(s.c.w)
    cdef uint64_t b = worker_id_random(s.c.w)
    _uuid4(s.request_id, a, b)
    s.request_id_len = 36


cdef size_t _u64_text(uint64_t v, char* out) noexcept nogil:
    """v in decimal at out (room for 20 digits); returns the length."""
    cdef char tmp[20]
    cdef size_t n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef bint _named_by_connection(const HttpHead* h, const char* name, size_t n) noexcept nogil:
    """Is `name` one of the tokens of the message's Connection header(s)?"""
    cdef uint32_t i
    cdef size_t pos, a, b
    cdef const HttpField* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if not _ieq(h.buf + f.name_off, f.name_len, "connection"):
            continue
        pos = 0
        while _h1_list_next(<const uint8_t*>h.buf + f.value_off, f.value_len, &pos, &a, &b):
            if _rt_ieq2(h.buf + f.value_off + a, b - a, name, n):
                return True
    return False


cdef bint _connection_nominations_ok(const HttpHead* h, bint upgrade) noexcept nogil:
    """Envoy's check of the fields a request's Connection header nominates for removal
    (Utility::sanitizeConnectionHeader), before any is removed: refused when it names Host
    (its removal would leave an HTTP/1.1 request without one), an X-Forwarded-For, -Host or
    -Proto (removing one hides where the request came from), a pseudo-header, or when it has
    10 or more elements. Upgrade requests skip all but the Host check, as in Envoy."""
    cdef uint32_t i
    cdef size_t pos, a, b, n
    cdef size_t count = 0
    cdef const char* t
    cdef const HttpField* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if not _ieq(h.buf + f.name_off, f.name_len, "connection"):
            continue
        pos = 0
        while _h1_list_next(<const uint8_t*>h.buf + f.value_off, f.value_len, &pos, &a, &b):
            if b == a:
                continue
            t = h.buf + f.value_off + a
            n = b - a
            count += 1
            if _ieq(t, n, "host"):
                return False
            if upgrade:
                continue
            if (t[0] == b':' or _ieq(t, n, "x-forwarded-for") or _ieq(t, n, "x-forwarded-host")
                    or _ieq(t, n, "x-forwarded-proto")):
                return False
    return upgrade or count < 10


cdef bint _has_connection_field(const HttpHead* h) noexcept nogil:
    cdef uint32_t i
    for i in range(h.nfields):
        if h.fields[i].name_len == 10 and _ieq(h.buf + h.fields[i].name_off, 10, "connection"):
            return True
    return False


cdef int _pl_reserve(PairList* l, size_t n) noexcept nogil:
    cdef FieldPair* nv
    if l.cap >= n:
        return 0
    nv = <FieldPair*>realloc(l.v, n * sizeof(FieldPair))
    if nv == NULL:
        return -1
    l.v = nv
    l.cap = n
    return 0


cdef bint te_trailers(const char* name, size_t n, const char* v, size_t vn) noexcept nogil:
    """A TE field that lists "trailers": forwarded as `te: trailers` alone (its other
    codings dropped), as Envoy 1.40 does for HTTP/1.1 and HTTP/2 clients (gRPC's trailers
    need it end to end); any other TE is hop-by-hop."""
    cdef size_t i = 0, k
    if n != 2 or not _ieq(name, 2, "te"):
        return False
    while i < vn:
        while i < vn and (v[i] == b' ' or v[i] == b'\t' or v[i] == b','):
            i += 1
        k = i
        while k < vn and v[k] != b',' and v[k] != b';' and v[k] != b' ' and v[k] != b'\t':
            k += 1
        if _ieq(v + i, k - i, "trailers"):
            return True
        while k < vn and v[k] != b',':
            k += 1
        i = k
    return False


cdef int _pl_from_head(PairList* l, const HttpHead* h) noexcept nogil:
    """The end-to-end fields of a received head (hop-by-hop ones dropped; `te: trailers`
    kept, see te_trailers)."""
    cdef uint32_t i
    cdef const HttpField* f
    cdef const char* name
    cdef bint conn = _has_connection_field(h)
    if _pl_reserve(l, l.n + h.nfields + 8) < 0:
        return -1
    for i in range(h.nfields):
        f = &h.fields[i]
        name = h.buf + f.name_off
        if _is_hop_by_hop(name, f.name_len) or (conn and _named_by_connection(h, name, f.name_len)):
            if not (conn and _named_by_connection(h, name, f.name_len)) \
                    and te_trailers(name, f.name_len, h.buf + f.value_off, f.value_len):
                if _pl_add(l, _cs("te"), _cs("trailers")) < 0:
                    return -1
            continue
        if _pl_add(l, _s(name, f.name_len), _s(h.buf + f.value_off, f.value_len)) < 0:
            return -1
    return 0


cdef const char* _head_field(const HttpHead* h, const char* lower, size_t* n) noexcept nogil:
    cdef uint32_t i
    cdef const HttpField* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if _ieq(h.buf + f.name_off, f.name_len, lower):
            n[0] = f.value_len
            return h.buf + f.value_off
    return NULL


cdef size_t _host_text(Host* h, char* out, size_t cap) noexcept nogil:
    """The upstream host as "ip:port" ("[ip6]:port")."""
    cdef char ip[48]
    cdef int k
    if h.addr.ss_family == AF_INET6:
        inet_ntop(AF_INET6, &(<sockaddr_in6*>&h.addr).sin6_addr, ip, sizeof(ip))
        k = snprintf(out, cap, "[%s]:%u", ip, <unsigned int>ntohs((<sockaddr_in6*>&h.addr).sin6_port))
    else:
        inet_ntop(AF_INET, &(<sockaddr_in*>&h.addr).sin_addr, ip, sizeof(ip))
        k = snprintf(out, cap, "%s:%u", ip, <unsigned int>ntohs((<sockaddr_in*>&h.addr).sin_port))
    return <size_t>k if 0 < k < <int>cap else 0


cdef const char* _req_field(HStream* s, const char* lower, size_t n, size_t* vn) noexcept nogil:
    """A request field as the upstream will see it: from the filters' map if there is one."""
    if s.fc != NULL:
        return hm_get(&s.fc.req, lower, n, vn)
    return _head_field(&s.head, lower, vn)


cdef uint64_t _parse_u64(const char* p, size_t n) noexcept nogil:
    cdef uint64_t x = 0
    cdef size_t i
    for i in range(n):
        x = x * 10 + <uint64_t>(p[i] - 48)
    return x


cdef int _body_framing(HStream* s, bint response, int framing, uint64_t length, const HMap* m,
                       BodyFraming* out) noexcept nogil:
    """The BodyFraming of a head we send (UF_*: what the caller knows of its body). UF_PARSER
    announces the body as it was received: its length (and the Content-Length text, also on
    a HEAD or 304 answer and a body-less request that had one), or streamed. -1: a filter
    left a Content-Length that is not a number."""
    cdef size_t n = 0
    cdef const char* v
    memset(out, 0, sizeof(BodyFraming))
    if framing == UF_NONE:
        out.kind = BODY_NONE
    elif framing == UF_LENGTH:
        out.kind = BODY_LENGTH
        out.length = length
        out.check_length = 1
    elif framing == UF_MAP_LENGTH:
        v = hm_get(m, "content-length", 14, &n)
        if v == NULL or n == 0 or n > 19 or not _all_digits(v, n):
            return -1
        out.kind = BODY_LENGTH
        out.length = _parse_u64(v, n)
        out.length_text = _s(v, n)
        out.check_length = 1
    elif framing == UF_STREAM:
        out.kind = BODY_STREAM
    elif response:
        out.length_text = s.upstream.resp_facts.length_text
        if s.upstream.resp_facts.end_stream:
            out.kind = BODY_NONE
            if (out.length_text.p == NULL and not s.c.codec.multiplexed and s.method != METHOD_HEAD
                    and s.status != 204 and s.status != 304):
                # A head that ended its stream (an HTTP/2 upstream's) to an HTTP/1.1 client:
                # its empty body is announced (Envoy's Content-Length: 0), not left to a close
                # that never comes on a keep-alive connection.
                out.kind = BODY_LENGTH
                out.length = 0
        elif s.upstream.resp_facts.content_length >= 0:
            out.kind = BODY_LENGTH
            out.length = <uint64_t>s.upstream.resp_facts.content_length
        else:
            out.kind = BODY_STREAM
    else:
        v = _head_field(&s.head, "content-length", &n)
        if v != NULL:
            out.length_text = _s(v, n)
        if not s.req_has_body:
            out.kind = BODY_NONE
        elif s.req_content_length >= 0:
            out.kind = BODY_LENGTH
            out.length = <uint64_t>s.req_content_length
        else:
            out.kind = BODY_STREAM
            out.length_text = _s(NULL, 0)
    return 0


cdef inline int _sink_framing(FDir* d, const HMap* m) noexcept nogil:
    """How a filtered body is framed, decided when its first bytes leave the chain: the
    exact length if the whole body is here, else the Content-Length a filter left in the
    headers (counted), else streamed."""
    cdef size_t n
    if d.phase == FP_PH_DONE:
        return UF_LENGTH
    if hm_get(m, "content-length", 14, &n) != NULL:
        return UF_MAP_LENGTH
    return UF_STREAM
