# HTTP filter chains (Envoy's StreamDecoderFilter/StreamEncoderFilter), for every kind of
# filter: native ones compiled into the core (core/filters/), C filters loaded through cffi,
# and Python filters (core/filters/python.pxi). All of them are an `fp_http_filter` table
# (the C ABI in include/fastproxy_filter.h); this file runs the tables without the GIL.
#
#   request:  head -> decode_headers 0..n-1 -> router (route, upstream, head out)
#             body -> decode_data    0..n-1 -> router (framed for the upstream)
#             trailers -> decode_trailers 0..n-1 -> router (last chunk)
#   response: head -> encode_headers n-1..0 -> downstream head
#             body -> encode_data    n-1..0 -> downstream (framed)
#             trailers -> encode_trailers n-1..0
#   end:      on_log 0..n-1, destroy 0..n-1
#
# Local replies (a filter's send_local_reply, the router's 404/503/504/..., failures) follow
# Envoy's FilterManager::sendLocalReply: before any response entered the encoder filters the
# reply goes through all of them (encode_headers/encode_data n-1..0, the filter that asked
# for it included); asked for while they hold a response, it goes straight to the client;
# after the response head went out, the stream is reset.
#
# Each direction has one iteration state: the phase (headers, data, trailers), the index of
# the next filter to call, and whether a filter holds the stream. `held` is the body that has
# passed the filters before that index. While a filter holds the stream, body bytes that
# arrive are added to `held` without running the filters before it (Envoy's
# StopAllIterationAndBuffer); reading pauses at the buffer limit (STOP_ITERATION), or the
# stream fails with 413/500 beyond it (STOP_AND_BUFFER, or headers held).
#
# A stream whose listener has no filters never allocates any of this.

cdef extern from "fastproxy_filter.h" nogil:
    ctypedef struct fp_str:
        const char* p
        size_t n
    ctypedef struct fp_headers:
        pass
    ctypedef struct fp_body:
        pass
    ctypedef struct fp_stream:
        pass
    ctypedef struct fp_api:
        uint32_t abi_version
        size_t (*headers_len)(const fp_headers* h) noexcept nogil
        int (*headers_at)(const fp_headers* h, size_t i, fp_str* name, fp_str* value) noexcept nogil
        int (*headers_get)(const fp_headers* h, const char* name, size_t name_len, fp_str* value) noexcept nogil
        int (*headers_add)(fp_headers* h, const char* name, size_t name_len, const char* value, size_t value_len) noexcept nogil
        int (*headers_set)(fp_headers* h, const char* name, size_t name_len, const char* value, size_t value_len) noexcept nogil
        size_t (*headers_remove)(fp_headers* h, const char* name, size_t name_len) noexcept nogil
        size_t (*body_len)(const fp_body* b) noexcept nogil
        size_t (*body_segments)(const fp_body* b, fp_str* out, size_t mx) noexcept nogil
        int (*body_append)(fp_body* b, const char* p, size_t n) noexcept nogil
        int (*body_prepend)(fp_body* b, const char* p, size_t n) noexcept nogil
        void (*body_drain)(fp_body* b, size_t n) noexcept nogil
        int (*send_local_reply)(fp_stream* s, int status, const char* body, size_t body_len) noexcept nogil
        void (*continue_decoding)(fp_stream* s) noexcept nogil
        void (*continue_encoding)(fp_stream* s) noexcept nogil
        void* (*route_config)(fp_stream* s) noexcept nogil
        int (*filter_state_set)(fp_stream* s, const char* key, size_t key_len, const char* value, size_t value_len) noexcept nogil
        int (*filter_state_get)(fp_stream* s, const char* key, size_t key_len, fp_str* value) noexcept nogil
    ctypedef struct fp_http_filter:
        uint32_t abi_version
        void* (*create_config)(const char* json, size_t json_len, char* err, size_t err_len) noexcept nogil
        void (*destroy_config)(void* config) noexcept nogil
        void* (*create)(void* config, fp_stream* s, const fp_api* api) noexcept nogil
        int (*decode_headers)(void* self, fp_headers* h, int end_stream) noexcept nogil
        int (*decode_data)(void* self, fp_body* b, int end_stream) noexcept nogil
        int (*decode_trailers)(void* self, fp_headers* t) noexcept nogil
        int (*encode_headers)(void* self, fp_headers* h, int end_stream) noexcept nogil
        int (*encode_data)(void* self, fp_body* b, int end_stream) noexcept nogil
        int (*encode_trailers)(void* self, fp_headers* t) noexcept nogil
        void (*on_log)(void* self) noexcept nogil
        void (*destroy)(void* self) noexcept nogil
    int FP_FILTER_ABI_VERSION
    int FP_CONTINUE
    int FP_STOP_ITERATION
    int FP_STOP_AND_BUFFER
    int FP_STOP_NO_BUFFER


cdef enum:                          # which hooks a filter implements (HttpFilterCfg.hooks)
    HK_DECODE_HEADERS = 1
    HK_DECODE_DATA = 2
    HK_DECODE_TRAILERS = 4
    HK_ENCODE_HEADERS = 8
    HK_ENCODE_DATA = 16
    HK_ENCODE_TRAILERS = 32
    HK_LOG = 64

cdef enum:                          # FDir.phase
    FP_PH_HEADERS = 0
    FP_PH_DATA = 1
    FP_PH_TRAILERS = 2
    FP_PH_DONE = 3

cdef enum:                          # FDir.stopped
    FS_RUNNING = 0
    FS_HELD = 1                     # STOP_ITERATION (headers, data or trailers)
    FS_BUFFERING = 2                # STOP_AND_BUFFER: call `index` again at end of body
    FS_ASYNC = 3                    # a Python coroutine holds it (continue comes by message)

cdef enum:
    FILTER_BUFFER_LIMIT_DEFAULT = 1 << 20
    LOCAL_RESET = -1                # FChain.local_status: the response started, reset instead


cdef struct HttpFilterCfg:          # one entry of a listener's http_filters (immutable)
    const fp_http_filter* vt
    void* config                    # the factory's config (create_config's result, or a PyObject*)
    uint32_t hooks                  # HK_* the filter implements
    uint8_t is_python               # config is a PyObject* (strong reference) to a factory
    char* name


cdef struct Arena:                  # a stream's bump allocator for header strings filters add
    char* p                         # free space
    size_t left
    void** blocks                   # malloc'd blocks (the first one is inline in the FChain)
    size_t nblocks
    size_t cap

cdef struct HMap:                   # a header map: field lines in order, pseudo-headers first
    PairList l                      # (a member, not a look-alike: no type punning)
    Arena* ar                       # where the strings it copies live (the stream's arena)
    uint8_t used                    # the map holds a message (trailers may be absent)


cdef struct FDir:                   # one direction's iteration state
    int phase
    int index                       # next filter to call (decoder: ascending; encoder: descending)
    int stopped
    uint8_t end_seen                # the last body byte is in `held` (or there is no body)
    uint8_t has_trailers
    uint8_t sink_started            # the head went out (the codec frames what follows)
    uint8_t cont_pending            # the running hook asked to continue before returning
    uint8_t resume_at_end           # the headers held (FS_HELD) resume when the body is
                                    # complete (hf_hold_until_body_end)
    Chain held


cdef struct StreamRef                # core/filters/python.pxi


cdef struct FilterStateEntry:       # a string value a filter set on its stream under a key
    FilterStateEntry* next
    const char* key
    size_t key_len
    char* value
    size_t value_len
    size_t value_cap


cdef struct FChain:                 # a stream's filter instances and iteration state
    int n
    const HttpFilterCfg* cfgs       # the listener's filter configs (lifetime: the HttpCfg)
    void** selfs                    # per-stream filter state (NULL: the filter skips this stream)
    HMap req
    HMap resp
    HMap req_trailers
    HMap resp_trailers
    FDir dec
    FDir enc
    int current                     # the filter whose hook runs now (route_config, Python)
    uint8_t in_hook
    uint8_t hook_encoding           # the running hook's direction
    uint8_t dead                    # a local reply or a failure ended the stream in a hook
    uint8_t local_encoding          # a local reply is in the encoder chain (headers in `resp`,
                                    # body in enc.held); the request side is over
    uint8_t local_close             # ... and asked for Connection: close
    uint32_t buffer_limit
    PyObject* pyctx                 # per-stream Python state (filter_state, ...); NULL if no Python filter
    FilterStateEntry* fstate        # filter state: string values by key (hf_filter_state_set),
                                    #   in the arena; read by the route's hash_policy
    StreamRef* stream_ref           # for cross-thread continues (core/filters/python.pxi)
    HMap local_headers              # ... its extra headers
    char upstream_host[64]          # "ip:port" of the upstream, kept for on_log
    size_t upstream_host_len
    char status_text[4]             # the response's :status digits
    int local_status                # a local reply a hook asked for, sent when it returns
                                    # (LOCAL_RESET: reset the stream instead)
    char* local_body
    size_t local_body_len
    Arena arena                     # header maps' arrays and added strings (first 1.5 KiB inline)
    char arena0[1536]               # MUST stay the last member: it is not zeroed


# ---------------------------------------------------------------- header maps

cdef inline bint _hm_name_ok(const char* p, size_t n) noexcept nogil:
    cdef size_t i
    if n == 0:
        return False
    for i in range(n):
        if (i > 0 or p[0] != b':') and not (_h1_cls[<uint8_t>p[i]] & _K_TCHAR):
            return False
    return True


cdef inline bint _hm_value_ok(const char* p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if not (_h1_cls[<uint8_t>p[i]] & _K_FVAL):
            return False
    return True


cdef inline bint _all_digits(const char* p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if not (b'0' <= p[i] <= b'9'):
            return False
    return True


cdef char* arena_alloc(Arena* a, size_t n) noexcept nogil:
    """n bytes that live until arena_free (the stream's end)."""
    cdef char* q
    cdef void** nv
    cdef size_t bs
    n = (n + 7) & ~(<size_t>7)          # keep every allocation 8-byte aligned
    if n > a.left:
        if a.nblocks == a.cap:
            nv = <void**>realloc(a.blocks, (a.cap * 2 + 4) * sizeof(void*))
            if nv == NULL:
                return NULL
            a.blocks = nv
            a.cap = a.cap * 2 + 4
        bs = n if n > 2048 else 2048
        q = <char*>malloc(bs)
        if q == NULL:
            return NULL
        a.blocks[a.nblocks] = q
        a.nblocks += 1
        a.p = q
        a.left = bs
    q = a.p
    a.p += n
    a.left -= n
    return q


cdef void arena_free(Arena* a) noexcept nogil:
    cdef size_t i
    for i in range(a.nblocks):
        free(a.blocks[i])
    free(a.blocks)
    memset(a, 0, sizeof(Arena))


cdef const char* _hm_own(HMap* m, const char* p, size_t n, bint lower) noexcept nogil:
    """A copy of p[:n] that lives as long as the stream (from its arena: a few added
    headers cost no malloc at all)."""
    cdef char* q
    cdef size_t i
    if m.ar == NULL:
        return NULL
    q = arena_alloc(m.ar, n + 1)
    if q == NULL:
        return NULL
    if lower:
        for i in range(n):
            q[i] = p[i] + 32 if b'A' <= p[i] <= b'Z' else p[i]
    else:
        memcpy(q, p, n)
    q[n] = 0
    return q


cdef void hm_free(HMap* m) noexcept nogil:
    """Forget the fields (the array and the strings stay in the arena until the stream
    ends)."""
    m.l.v = NULL
    m.l.n = 0
    m.l.cap = 0
    m.used = 0


cdef int _hm_reserve(HMap* m, size_t cap) noexcept nogil:
    """Room for `cap` fields. The array comes from the stream's arena (never realloc'd
    or freed on its own), so a map costs no malloc of its own."""
    cdef FieldPair* nv
    if m.l.cap >= cap:
        return 0
    if m.ar == NULL:
        return -1
    nv = <FieldPair*>arena_alloc(m.ar, cap * sizeof(FieldPair))
    if nv == NULL:
        return -1
    if m.l.n:
        memcpy(nv, m.l.v, m.l.n * sizeof(FieldPair))
    m.l.v = nv
    m.l.cap = cap
    return 0


cdef inline int _hm_push(HMap* m, StrRef name, StrRef value) noexcept nogil:
    if m.l.n == m.l.cap and _hm_reserve(m, m.l.cap * 2 + 8) < 0:
        return -1
    m.l.v[m.l.n].name = name
    m.l.v[m.l.n].value = value
    m.l.n += 1
    return 0


cdef int hm_append_raw(HMap* m, StrRef name, StrRef value) noexcept nogil:
    """Add a field whose strings outlive the map (a received head, a literal)."""
    return _hm_push(m, name, value)


cdef int hm_add(HMap* m, const char* name, size_t nn, const char* value, size_t vn) noexcept nogil:
    cdef const char* a
    cdef const char* b
    if not _hm_name_ok(name, nn) or not _hm_value_ok(value, vn):
        return -1
    a = _hm_own(m, name, nn, True)
    b = _hm_own(m, value, vn, False)
    if a == NULL or b == NULL:
        return -1
    if name[0] == b':':
        # pseudo-headers stay in front, in the order they came
        if _hm_push(m, _s(a, nn), _s(b, vn)) < 0:
            return -1
        _hm_bubble_pseudo(m)
        return 0
    return _hm_push(m, _s(a, nn), _s(b, vn))


cdef void _hm_bubble_pseudo(HMap* m) noexcept nogil:
    cdef size_t i = m.l.n - 1
    cdef FieldPair t
    while i > 0 and m.l.v[i - 1].name.n and m.l.v[i - 1].name.p[0] != b':':
        t = m.l.v[i - 1]
        m.l.v[i - 1] = m.l.v[i]
        m.l.v[i] = t
        i -= 1


cdef size_t hm_remove(HMap* m, const char* name, size_t nn) noexcept nogil:
    cdef size_t before = m.l.n
    _pl_remove(&m.l, name, nn)
    return before - m.l.n


cdef int hm_set(HMap* m, const char* name, size_t nn, const char* value, size_t vn) noexcept nogil:
    """Replace every `name` by one field, where the first one stood (or add it)."""
    cdef const char* b
    cdef size_t i, k = 0
    cdef bint placed = False
    if not _hm_name_ok(name, nn) or not _hm_value_ok(value, vn):
        return -1
    for i in range(m.l.n):
        if _rt_ieq2(m.l.v[i].name.p, m.l.v[i].name.n, name, nn):
            if placed:
                continue
            b = _hm_own(m, value, vn, False)
            if b == NULL:
                return -1
            m.l.v[i].value = _s(b, vn)
            placed = True
        m.l.v[k] = m.l.v[i]
        k += 1
    m.l.n = k
    if not placed:
        return hm_add(m, name, nn, value, vn)
    return 0


cdef const char* hm_get(const HMap* m, const char* name, size_t nn, size_t* vn) noexcept nogil:
    cdef size_t i
    cdef const FieldPair* f
    if nn and name[0] == b':':
        # Pseudo-headers are in front: stop at the first regular field.
        for i in range(m.l.n):
            f = &m.l.v[i]
            if f.name.n == 0 or f.name.p[0] != b':':
                return NULL
            if f.name.n == nn and _rt_ieq2(f.name.p, nn, name, nn):
                vn[0] = f.value.n
                return f.value.p
        return NULL
    for i in range(m.l.n):
        f = &m.l.v[i]
        if f.name.n == nn and _rt_ieq2(f.name.p, f.name.n, name, nn):
            vn[0] = f.value.n
            return f.value.p
    return NULL


cdef int hm_from_head(HMap* m, const HttpHead* h, bint keep_length, bint skip_host) noexcept nogil:
    """The end-to-end fields of a received head (the head must outlive the map)."""
    cdef uint32_t i
    cdef const HttpField* f
    cdef const char* name
    cdef bint conn = _has_connection_field(h)
    if _hm_reserve(m, m.l.n + h.nfields + 8) < 0:
        return -1
    for i in range(h.nfields):
        f = &h.fields[i]
        name = h.buf + f.name_off
        if _is_hop_by_hop(name, f.name_len) or (conn and _named_by_connection(h, name, f.name_len)):
            if not (conn and _named_by_connection(h, name, f.name_len)) \
                    and te_trailers(name, f.name_len, h.buf + f.value_off, f.value_len):
                if _hm_push(m, _cs("te"), _cs("trailers")) < 0:
                    return -1
                continue
            if not (keep_length and _ieq(name, f.name_len, "content-length")):
                continue
        if skip_host and _ieq(name, f.name_len, "host"):
            continue                # it is :authority
        if _hm_push(m, _s(name, f.name_len), _s(h.buf + f.value_off, f.value_len)) < 0:
            return -1
    m.used = 1
    return 0


cdef int hm_to_pairs(const HMap* m, PairList* l, bint drop_framing) noexcept nogil:
    """The map's regular fields (no pseudo-headers, no hop-by-hop ones a filter may have
    added; Content-Length only if not drop_framing), for a head we serialize."""
    cdef size_t i
    cdef const FieldPair* f
    if _pl_reserve(l, l.n + m.l.n + 8) < 0:
        return -1
    for i in range(m.l.n):
        f = &m.l.v[i]
        if f.name.n and f.name.p[0] == b':':
            continue
        if _is_hop_by_hop(f.name.p, f.name.n) and not (f.value.n == 8 and te_trailers(f.name.p, f.name.n, f.value.p, 8)):
            # (transfer-encoding is always re-framed by us; content-length kept on request;
            # `te: trailers` is the map's own, from hm_from_head)
            if drop_framing or f.name.n != 14 or not _ieq(f.name.p, 14, "content-length"):
                continue
        l.v[l.n] = f[0]                 # room reserved above
        l.n += 1
    return 0


# -- the fp_api table (C filters call these through pointers)

# ---------------------------------------------------------------- filter state

cdef int hf_filter_state_set(FChain* fc, const char* key, size_t key_len, const char* value,
                             size_t value_len) noexcept nogil:
    """Set (value NULL: remove) the string value under `key` on the stream: Envoy's filter
    state as far as fastproxy's filters share it (C filters through fp_api, Python filters
    through callbacks.filter_state), read by the route's hash_policy filter_state. Both are
    copied into the stream's arena; a value that fits where the key's last one was reuses
    it. 0, or -1: no memory."""
    cdef FilterStateEntry* e = fc.fstate
    cdef FilterStateEntry** link = &fc.fstate
    cdef char* k
    while e != NULL:
        if e.key_len == key_len and memcmp(e.key, key, key_len) == 0:
            break
        link = &e.next
        e = e.next
    if value == NULL:
        if e != NULL:
            link[0] = e.next            # (its bytes stay in the arena until the stream ends)
        return 0
    if e == NULL:
        e = <FilterStateEntry*>arena_alloc(&fc.arena, sizeof(FilterStateEntry))
        k = arena_alloc(&fc.arena, key_len + 1)
        if e == NULL or k == NULL:
            return -1
        memcpy(k, key, key_len)
        k[key_len] = 0
        e.key = k
        e.key_len = key_len
        e.value = NULL
        e.value_len = 0
        e.value_cap = 0
        e.next = fc.fstate
        fc.fstate = e
    if e.value == NULL or value_len > e.value_cap:
        k = arena_alloc(&fc.arena, value_len + 1)
        if k == NULL:
            return -1
        e.value = k
        e.value_cap = value_len
    if value_len:
        memcpy(e.value, value, value_len)
    e.value[value_len] = 0
    e.value_len = value_len
    return 0


cdef const char* hf_filter_state_get(const FChain* fc, const char* key, size_t key_len,
                                     size_t* value_len) noexcept nogil:
    """The string value under `key` (hf_filter_state_set), or NULL."""
    cdef const FilterStateEntry* e = fc.fstate if fc != NULL else NULL
    while e != NULL:
        if e.key_len == key_len and memcmp(e.key, key, key_len) == 0:
            value_len[0] = e.value_len
            return e.value
        e = e.next
    return NULL


# ---------------------------------------------------------------- stream set-up and teardown

cdef char _NO_STREAM_STATE           # `self` of a filter with neither create nor config


cdef int hf_stream_create(HStream* s) noexcept nogil:
    """Create the stream's filter instances and its request header map. -1: no memory;
    1: a filter could not be created (its create returned NULL, a Python constructor
    raised): the caller fails the stream closed with a 500, as for a hook that fails (a
    filter missing from a stream could be the one that denies it); 0: ready."""
    cdef HttpCfg* h = <HttpCfg*>s.c.cfg.http
    # One allocation: the chain state and the per-filter instance pointers after it. Only
    # the state is zeroed: the inline arena is raw memory handed out as it is used.
    cdef size_t head
    cdef FChain* fc = <FChain*>malloc(sizeof(FChain) + max(1, h.nfilters) * sizeof(void*))
    cdef int i
    cdef const HttpFilterCfg* fcfg
    cdef size_t n
    cdef const char* v
    cdef bint failed = False
    if fc == NULL:
        return -1
    head = <size_t>(<char*>&fc.arena0 - <char*>fc)
    memset(fc, 0, head)
    memset(<char*>fc + sizeof(FChain), 0, max(1, h.nfilters) * sizeof(void*))
    s.fc = fc
    fc.n = h.nfilters
    fc.cfgs = h.filters
    fc.buffer_limit = h.filter_buffer_limit
    fc.enc.index = fc.n - 1
    fc.selfs = <void**>(<char*>fc + sizeof(FChain))
    fc.arena.p = fc.arena0
    fc.arena.left = sizeof(fc.arena0)
    fc.req.ar = &fc.arena
    fc.resp.ar = &fc.arena
    fc.req_trailers.ar = &fc.arena
    fc.resp_trailers.ar = &fc.arena
    fc.local_headers.ar = &fc.arena
    # The request map: pseudo-headers, then the end-to-end fields. Strings point into the
    # stream's own head (alive as long as the stream).
    hm_append_raw(&fc.req, _cs(":method"), _s(s.head.buf + s.head.method_off, s.head.method_len))
    hm_append_raw(&fc.req, _cs(":path"), _s(s.head.buf + s.head.target_off, s.head.target_len))
    v = _head_field(&s.head, "host", &n)
    if v != NULL:
        hm_append_raw(&fc.req, _cs(":authority"), _s(v, n))
    hm_append_raw(&fc.req, _cs(":scheme"), hconn_scheme(s.c))
    if hm_from_head(&fc.req, &s.head, True, True) < 0:
        return -1
    if hm_apply_xfcc(s, &fc.req) < 0:
        return -1
    # Envoy's connection manager mutates the request before the filters see it
    # (core/http/stream_extras.pxi): x-envoy-* sanitizing, x-envoy-internal / x-envoy-external-address,
    # and an edge request's new x-request-id. The rest (XFF, ...) is done when the head is sent.
    if s.envoy_hdrs:
        xe_sanitize(s, &fc.req.l, XE_AT_HCM)
    if s.client_internal:
        if hm_append_raw(&fc.req, _cs("x-envoy-internal"), _cs("true")) < 0:
            return -1
    elif s.edge:
        if hm_append_raw(&fc.req, _cs("x-envoy-external-address"), _s(s.client_ip, s.client_ip_len)) < 0:
            return -1
        if h.generate_request_id and not (h.preserve_external_request_id
                                          and hm_get(&fc.req, "x-request-id", 12, &n) != NULL):
            stream_new_request_id(s)
            hm_remove(&fc.req, "x-request-id", 12)
            if hm_append_raw(&fc.req, _cs("x-request-id"), _s(s.request_id, 36)) < 0:
                return -1
    if h.via_len and _hm_append_via(&fc.req, h) < 0:
        return -1
    for i in range(fc.n):
        fcfg = &fc.cfgs[i]
        fc.current = i
        if fcfg.vt.create == NULL:
            # No per-stream state: its hooks get the config as `self` (never NULL: NULL
            # would skip the filter, and a filter that denies must not be skipped).
            fc.selfs[i] = fcfg.config if fcfg.config != NULL else <void*>&_NO_STREAM_STATE
            continue
        fc.selfs[i] = fcfg.vt.create(fcfg.config, <fp_stream*>s, &FP_API)
        if fc.selfs[i] == NULL:
            failed = True
            if not fcfg.is_python:      # (a Python constructor's exception is logged and
                _log_create_failed(s, fcfg.name)    # counted where it is caught)
    if failed:
        fc.local_status = 0             # the caller answers (not a reply asked for by a hook)
        return 1
    return 0


cdef int _hm_append_via(HMap* m, const HttpCfg* h) noexcept nogil:
    """The connection manager's Via on the request map, before the filters see it."""
    cdef char* owned = NULL
    cdef const char* v
    cdef size_t n
    cdef int rc
    if _pl_append_list(&m.l, "via", 3, h.via, h.via_len, &owned) < 0:
        return -1
    if owned == NULL:
        return 0                        # added, pointing at the config's string
    v = hm_get(m, "via", 3, &n)         # the joined value: copied into the map's arena
    rc = hm_set(m, "via", 3, v, n)
    free(owned)
    return rc


cdef void hf_stream_end(HStream* s) noexcept nogil:
    """on_log, then destroy, for every filter; free the chain. The stream is ending."""
    cdef FChain* fc = s.fc
    cdef int i
    if fc == NULL:
        return
    fc.dead = 1                         # on_log may read the stream; nothing may change it
    for i in range(fc.n):
        if fc.selfs[i] != NULL and (fc.cfgs[i].hooks & HK_LOG) and fc.cfgs[i].vt.on_log != NULL:
            fc.current = i
            fc.cfgs[i].vt.on_log(fc.selfs[i])
    s.fc = NULL
    for i in range(fc.n):
        if fc.selfs[i] != NULL and fc.cfgs[i].vt.destroy != NULL and fc.cfgs[i].vt.create != NULL:
            fc.cfgs[i].vt.destroy(fc.selfs[i])
    if fc.pyctx != NULL or fc.stream_ref != NULL:
        py_stream_release(fc)
    hm_free(&fc.req)
    hm_free(&fc.resp)
    hm_free(&fc.req_trailers)
    hm_free(&fc.resp_trailers)
    hm_free(&fc.local_headers)
    arena_free(&fc.arena)
    chain_free(&fc.dec.held)
    chain_free(&fc.enc.held)
    free(fc.local_body)
    free(fc)


# hf_stream_create zeroes an FChain only up to arena0; anything after it would be garbage.
cdef FChain _fc_layout_probe
if <size_t>(<char*>&_fc_layout_probe.arena0 - <char*>&_fc_layout_probe) + sizeof(_fc_layout_probe.arena0) + 8 <= sizeof(FChain):
    raise ImportError("fastproxy core: FChain.arena0 must be the struct's last member")


# ---------------------------------------------------------------- iteration

cdef inline int _hook_status(int st) noexcept nogil:
    return st if 0 <= st <= 3 else FP_STOP_ITERATION


cdef int hf_request_local_reply(HStream* s, int status, const char* body, size_t n) noexcept nogil:
    """A filter answers the request itself (Envoy's sendLocalReply). Inside a hook it takes
    effect when the hook returns; outside one (a timer, a message from another thread), at
    once. See _hf_flush_local_reply for where it goes. -1: not sent (bad status, no memory,
    the stream is ending, or the response head already went out: then the stream is reset,
    as in Envoy)."""
    cdef FChain* fc = s.fc
    if fc == NULL or fc.dead or status < 200 or status > 599:
        return -1
    if s.resp_started:
        fc.local_status = LOCAL_RESET
        if not fc.in_hook:
            _hf_flush_local_reply(s)
        return -1
    free(fc.local_body)
    fc.local_body = NULL
    fc.local_body_len = 0
    if n:
        fc.local_body = <char*>malloc(n)
        if fc.local_body == NULL:
            return -1
        memcpy(fc.local_body, body, n)
        fc.local_body_len = n
    fc.local_status = status
    if not fc.in_hook:
        _hf_flush_local_reply(s)
    return 0


cdef bint _hf_flush_local_reply(HStream* s) noexcept nogil:
    """Act on the local reply a filter asked for (FChain.local_status), as Envoy's
    FilterManager::sendLocalReply does:
      * no response headers have entered the encoder filters yet: the reply goes through
        them (hf_local_reply_start, Envoy's sendLocalReplyViaFilterChain);
      * they hold a response already (the upstream's, or an earlier local reply's: this one
        was asked for while encoding): it bypasses them and goes straight to the client
        (sendDirectLocalReply), so no encoder runs twice and nothing loops;
      * the response head went downstream: the stream is reset.
    True if there was one: the stream ended, or its reply is in the encoder chain."""
    cdef FChain* fc = s.fc
    cdef HConn* c = s.c
    cdef int status
    cdef char* body
    cdef size_t n
    if fc == NULL or fc.local_status == 0:
        return False
    status = fc.local_status
    fc.local_status = 0
    if status == LOCAL_RESET or s.resp_started:
        fc.dead = 1
        stream_reset(s)
        return True
    # Envoy's connection manager picks the route before the first filter runs, so a
    # filter's reply carries the route's response header mutations even when no filter
    # asked for the route: pick it now if no one has (both paths below apply them).
    _ensure_route(s)
    if not fc.resp.used and _enc_filtered(s):
        body = fc.local_body                # ours now: the reply copies it, the stream may end
        n = fc.local_body_len
        fc.local_body = NULL
        fc.local_body_len = 0
        hf_local_reply_start(s, status, body, n, NULL, 0, False)
        free(body)
        hconn_pump(c)                       # (see hf_continue: a reply asked for outside a hook)
        return True
    if s.upstream.conn != NULL:
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
    s.status = status
    fc.dead = 1
    hconn_local_reply_ex(c, s, status, fc.local_body, fc.local_body_len, NULL, 0,
                         not s.req_received, &fc.local_headers)
    stream_finish(s)
    hconn_pump(c)
    return True


cdef int hf_local_reply_start(HStream* s, int status, const char* body, size_t n,
                              const char* location, size_t location_len, bint close_conn) noexcept nogil:
    """Send a local reply through the encoder filters (Envoy's sendLocalReplyViaFilterChain,
    which encodes from the first encoder filter): its headers, then its body, pass
    encode_headers/encode_data n-1..0, every filter that has those hooks, including the one
    that asked for the reply and those the request never reached. The request side is over:
    decoding stops (later body bytes are dropped) and the upstream, if any, is abandoned.
    The headers are :status, content-length, content-type (text/plain when there is a body
    and the filter gave none), the filter's extra fields (FChain.local_headers) and
    `location`; the head sent downstream takes :status and the fields from what the filters
    left, its framing from the body that passed them (core/http/local_reply.pxi,
    _local_response_head). A HEAD request gets the headers only.
    Preconditions: s.fc has encoder hooks, no response in it yet, the head not sent.
    -1: the stream ended (or the connection closed); 0: an encoder filter holds the reply.
    The caller must not touch the stream after -1."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.enc
    cdef HConn* c = s.c
    cdef char* st = fc.status_text
    cdef char clen[24]
    cdef int k
    cdef size_t i, vn
    cdef const FieldPair* f
    cdef const char* p
    cdef bint ok
    if s.upstream.conn != NULL:
        http_pool_cancel(s.upstream.conn)
        s.upstream.conn = NULL
    timer_cancel(c.w, &s.timeout)
    fc.dec.phase = FP_PH_DONE
    fc.dec.stopped = FS_RUNNING
    chain_clear(&fc.dec.held)
    fc.local_encoding = 1
    fc.local_close = close_conn
    s.status = status
    st[0] = <char>(48 + (status // 100) % 10)
    st[1] = <char>(48 + (status // 10) % 10)
    st[2] = <char>(48 + status % 10)
    hm_free(&fc.resp)
    k = snprintf(clen, sizeof(clen), "%zu", n)
    ok = (hm_append_raw(&fc.resp, _cs(":status"), _s(st, 3)) == 0
          and hm_add(&fc.resp, "content-length", 14, clen, <size_t>k) == 0)
    for i in range(fc.local_headers.l.n):
        f = &fc.local_headers.l.v[i]
        if f.name.n == 0 or f.name.p[0] == b':' or _is_hop_by_hop(f.name.p, f.name.n):
            continue
        ok = ok and _hm_push(&fc.resp, f.name, f.value) == 0      # strings live in the arena
    if n and hm_get(&fc.local_headers, "content-type", 12, &vn) == NULL:
        ok = ok and hm_append_raw(&fc.resp, _cs("content-type"), _cs("text/plain")) == 0
    hm_free(&fc.local_headers)
    if location != NULL:
        p = _hm_own(&fc.resp, location, location_len, False)
        ok = ok and p != NULL and _hm_push(&fc.resp, _cs("location"), _s(p, location_len)) == 0
    if s.response_flags & RF_UO:        # Envoy's circuit-breaker reply (hconn_local_reply_ex too)
        ok = ok and _hm_push(&fc.resp, _cs("x-envoy-overloaded"), _cs("true")) == 0
    if s.route != NULL:
        # As on the unfiltered path (hconn_local_reply_ex): the route's response header
        # mutations, which Envoy applies before the reply enters the encoder filters.
        ok = ok and _hm_apply_ops(&fc.resp, &s.route.response_headers) == 0
    if s.grpc:                          # a gRPC request: a trailers-only gRPC reply (core/http/grpc.pxi)
        ok = ok and grpc_local_reply_map(s, &fc.resp, n, body) == 0
    fc.resp.used = 1
    chain_clear(&d.held)
    if n and s.method != METHOD_HEAD and not s.grpc:
        ok = ok and chain_append(&d.held, body, n) == 0
    if not ok:
        fc.dead = 1
        stream_reset(s)
        return -1
    d.phase = FP_PH_HEADERS
    d.index = fc.n - 1
    d.stopped = FS_RUNNING
    d.end_seen = 1
    d.has_trailers = 0
    return hf_iterate(s, True)


cdef bint hf_fail(HStream* s, bint encoding) noexcept nogil:
    """A filter failed (an exception, a buffer over its limit): 500 (or 413 when the request
    body is over the limit) if the response has not started, else reset. Returns True."""
    cdef FChain* fc = s.fc
    if fc.local_status == 0:
        fc.local_status = LOCAL_RESET if s.resp_started else 500
    if fc.in_hook:
        return True
    _hf_flush_local_reply(s)
    return True


cdef int _call_hook(HStream* s, int i, bint encoding) noexcept nogil:
    """Call filter i's hook for the direction's current phase; its status."""
    cdef FChain* fc = s.fc
    cdef const fp_http_filter* vt = fc.cfgs[i].vt
    cdef FDir* d = &fc.enc if encoding else &fc.dec
    cdef bint end_headers = d.end_seen and d.held.length == 0 and not d.has_trailers
    cdef bint end_data = d.end_seen and not d.has_trailers
    cdef int st
    # A hook can continue the other direction, whose hooks then run inside this one: the
    # outer hook's "inside a hook" state is put back after, not cleared (a local reply the
    # outer hook sends must still wait for it to return).
    cdef uint8_t outer_in_hook = fc.in_hook
    cdef uint8_t outer_encoding = fc.hook_encoding
    fc.current = i
    fc.in_hook = 1
    fc.hook_encoding = encoding
    d.cont_pending = 0
    if encoding:
        if d.phase == FP_PH_HEADERS:
            st = vt.encode_headers(fc.selfs[i], <fp_headers*>&fc.resp, end_headers)
        elif d.phase == FP_PH_DATA:
            st = vt.encode_data(fc.selfs[i], <fp_body*>&d.held, end_data)
        else:
            st = vt.encode_trailers(fc.selfs[i], <fp_headers*>&fc.resp_trailers)
    else:
        if d.phase == FP_PH_HEADERS:
            st = vt.decode_headers(fc.selfs[i], <fp_headers*>&fc.req, end_headers)
        elif d.phase == FP_PH_DATA:
            st = vt.decode_data(fc.selfs[i], <fp_body*>&d.held, end_data)
        else:
            st = vt.decode_trailers(fc.selfs[i], <fp_headers*>&fc.req_trailers)
    fc.in_hook = outer_in_hook
    fc.hook_encoding = outer_encoding
    st = _hook_status(st)
    if st != FP_CONTINUE and d.cont_pending:
        st = FP_CONTINUE                # it continued itself from inside the hook
    d.cont_pending = 0
    return st


cdef inline uint32_t _phase_hook(int phase, bint encoding) noexcept nogil:
    if encoding:
        return HK_ENCODE_HEADERS if phase == FP_PH_HEADERS else (HK_ENCODE_DATA if phase == FP_PH_DATA else HK_ENCODE_TRAILERS)
    return HK_DECODE_HEADERS if phase == FP_PH_HEADERS else (HK_DECODE_DATA if phase == FP_PH_DATA else HK_DECODE_TRAILERS)


cdef int hf_iterate(HStream* s, bint encoding) noexcept nogil:
    """Run the direction's filters as far as they let us; hand what passed them all to the
    sink (router upstream, or the downstream). -1: the stream ended (or the connection
    closed); 0 otherwise."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.enc if encoding else &fc.dec
    cdef int i, st, step = -1 if encoding else 1
    cdef uint32_t hook
    cdef HConn* c = s.c
    while True:
        if d.stopped != FS_RUNNING or d.phase == FP_PH_DONE:
            return 0
        if d.phase == FP_PH_DATA and d.held.length == 0 and not d.end_seen:
            return 0                    # nothing to run
        hook = _phase_hook(d.phase, encoding)
        i = d.index
        while 0 <= i < fc.n:
            if fc.selfs[i] == NULL or not (fc.cfgs[i].hooks & hook):
                i += step
                continue
            st = _call_hook(s, i, encoding)
            if fc.local_status:
                # the hook asked for a local reply (or failed): this iteration is over
                _hf_flush_local_reply(s)
                return -1
            if c.closed or s.fc != fc:
                return -1
            if st == FP_CONTINUE:
                i += step
                continue
            if d.resume_at_end and d.end_seen:
                d.resume_at_end = 0     # it waits for a body that is here already
                i += step
                continue
            if d.phase != FP_PH_DATA:
                # any stop on headers or trailers holds them here; the rest follows later
                d.index = i + step
                d.stopped = FS_HELD
                return 0
            if st == FP_STOP_ITERATION:
                d.index = i + step
                d.stopped = FS_HELD
                return 0
            if st == FP_STOP_AND_BUFFER:
                if d.end_seen:              # nothing more will come: behave as a hold
                    d.index = i + step
                    d.stopped = FS_HELD
                else:
                    d.index = i
                    d.stopped = FS_BUFFERING
                return 0
            # STOP_NO_BUFFER: the filter took the bytes
            chain_clear(&d.held)
            if d.end_seen:
                d.index = i + step
                d.stopped = FS_HELD
                return 0
            d.index = 0 if not encoding else fc.n - 1
            return 0
        # every filter passed this phase
        d.index = 0 if not encoding else fc.n - 1
        if d.phase == FP_PH_HEADERS:
            if d.end_seen and d.held.length == 0 and not d.has_trailers:
                d.phase = FP_PH_DONE
            else:
                d.phase = FP_PH_DATA
            if (hf_sink_headers_encode(s) if encoding else hf_sink_headers_decode(s)) < 0:
                return -1
            continue
        if d.phase == FP_PH_DATA:
            if d.end_seen and d.has_trailers:
                d.phase = FP_PH_TRAILERS
            elif d.end_seen:
                d.phase = FP_PH_DONE
            if (hf_sink_data_encode(s) if encoding else hf_sink_data_decode(s)) < 0:
                return -1
            continue
        # trailers passed
        d.phase = FP_PH_DONE
        if (hf_sink_data_encode(s) if encoding else hf_sink_data_decode(s)) < 0:
            return -1
        return 0


cdef int hf_body_in(HStream* s, bint encoding, Chain* data, size_t n, bint end, bint trailers) noexcept nogil:
    """Body bytes (n from the front of `data`, already de-framed) for a direction's filters.
    `end`: the body is complete; `trailers`: trailers follow (in the direction's map).
    -1: the stream ended."""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.enc if encoding else &fc.dec
    if fc.local_encoding and not encoding:
        chain_drain(data, n)            # a local reply answers the request: its body is dropped
        return 0
    if n:
        if chain_move_bytes(&d.held, data, n) < 0:
            return -1 if hf_fail(s, encoding) else -1
    if end:
        d.end_seen = 1
        d.has_trailers = trailers
    if d.stopped != FS_RUNNING or d.phase == FP_PH_HEADERS:
        if d.held.length > fc.buffer_limit and (d.stopped == FS_BUFFERING or d.phase == FP_PH_HEADERS):
            if not encoding and not s.resp_started:
                stat_add((<HttpCfg*>s.c.cfg.http).stats, s.c.w, H_RQ_TOO_LARGE, 1)
                # Envoy's filter manager: 413 with its reason as the body
                if hf_request_local_reply(s, 413, "Payload Too Large", 17) == 0:
                    return -1
            hf_fail(s, encoding)
            return -1
        if not end:
            return 0
        if d.stopped == FS_BUFFERING:
            d.stopped = FS_RUNNING      # call the buffering filter again with all of it
        elif d.stopped == FS_HELD and d.resume_at_end:
            d.stopped = FS_RUNNING      # the headers go on, the whole body after them
            d.resume_at_end = 0
        else:
            return 0
    return hf_iterate(s, encoding)


cdef int hf_hold_until_body_end(HStream* s) noexcept nogil:
    """For a decode_headers hook that must see the whole request body before the router
    does (the buffer filter, as Envoy's returns StopIteration and then buffers): the
    headers stop at this filter; the body is kept, read on up to the stream's buffer limit
    (413 beyond it), and when it is complete the headers go on past this filter, then the
    body through every filter. So the router picks no upstream, and opens no connection,
    for a request that turns out too large. Returns the status the hook returns."""
    s.fc.dec.resume_at_end = 1
    return FP_STOP_ITERATION


cdef bint hf_wants_more(HStream* s, bint encoding) noexcept nogil:
    """May the direction's source be read further (flow control while a filter holds)?"""
    cdef FChain* fc = s.fc
    cdef FDir* d = &fc.enc if encoding else &fc.dec
    if (d.stopped == FS_HELD and not d.resume_at_end) or d.stopped == FS_ASYNC:
        return d.held.length < fc.buffer_limit
    return True                         # (a buffering hold reads on: 413 past the limit)


cdef void hf_continue(HStream* s, bint encoding) noexcept nogil:
    """continue_decoding/continue_encoding, on the worker: from a hook (the running
    iteration goes on when it returns), or from outside any (a timer, a message from
    another thread, an async hook's end): then the iteration resumes here, and whatever it
    produced leaves through hconn_pump (below)."""
    cdef FChain* fc = s.fc
    cdef FDir* d
    cdef HConn* c = s.c
    if fc == NULL or fc.dead or (fc.local_encoding and not encoding):
        return                          # (a local reply ended the request side)
    d = &fc.enc if encoding else &fc.dec
    if fc.in_hook and fc.hook_encoding == encoding:
        d.cont_pending = 1              # the running hook's iteration goes on when it returns
        return
    if fc.local_status:
        if not fc.in_hook:
            _hf_flush_local_reply(s)    # (a failure noted while the stream waited)
        return
    if d.stopped == FS_RUNNING:
        return
    d.stopped = FS_RUNNING
    d.resume_at_end = 0
    hf_iterate(s, encoding)
    # The one exit of every continuation that runs outside the connection's pump: what the
    # resumed iteration produced (a request head or body for the upstream, a response for
    # the client, or a local reply the router or a filter wrote after it: 404, a direct
    # response, a redirect, 503, 413, ...) is only queued; the pump writes it, reads what
    # the client sent meanwhile and starts the next pipelined request. Inside a pump (a
    # continue from a hook of the other direction) this only marks it to go round again;
    # after a close it does nothing (c is freed after the event loop's turn).
    hconn_pump(c)


cdef void _ensure_route(HStream* s) noexcept nogil:
    """Pick the route now if no one has (a filter asked for it before the router), from the
    router's own input (_route_input: on the stack for most requests)."""
    cdef RouteInput r
    cdef RouteHeader stack[ROUTE_HEADERS_ON_STACK]
    cdef RouteHeader* hdrs
    if s.route != NULL or s.fc == NULL:
        return
    hdrs = _route_input(s, &r, stack)
    if hdrs == NULL:
        return
    s.route = route_select(s.routes, &r)
    s.route_cleared = 0
    _route_input_free(hdrs, stack)


cdef void* hf_route_config(HStream* s) noexcept nogil:
    cdef FChain* fc = s.fc
    if fc == NULL or fc.current < 0 or fc.current >= fc.n:
        return NULL
    _ensure_route(s)                    # a decode hook runs before the router picks the route
    if s.route == NULL or s.route.per_filter == NULL:
        return NULL
    return s.route.per_filter[fc.current]


# ---------------------------------------------------------------- compiling http_filters (main thread)

cdef struct OwnedCfg:               # a filter config the HttpCfg frees with vt.destroy_config
    const fp_http_filter* vt
    void* config


cdef class NativeFilterKind:
    """A filter compiled into the core: its table and how to turn its (Python, parsed)
    config into the C config its hooks read. Subclasses live in core/filters_*.pxi and
    register themselves in NATIVE_HTTP_FILTERS under their Envoy name."""
    cdef const fp_http_filter* vt

    cdef void* make_config(self, object config, bint per_route, int regex_copies) except NULL:
        raise NotImplementedError

    def hooks(self):
        return _vt_hooks(self.vt)


NATIVE_HTTP_FILTERS = {}            # Envoy name -> NativeFilterKind


cdef uint32_t _vt_hooks(const fp_http_filter* vt):
    cdef uint32_t k = 0
    if vt.decode_headers != NULL: k |= HK_DECODE_HEADERS
    if vt.decode_data != NULL: k |= HK_DECODE_DATA
    if vt.decode_trailers != NULL: k |= HK_DECODE_TRAILERS
    if vt.encode_headers != NULL: k |= HK_ENCODE_HEADERS
    if vt.encode_data != NULL: k |= HK_ENCODE_DATA
    if vt.encode_trailers != NULL: k |= HK_ENCODE_TRAILERS
    if vt.on_log != NULL: k |= HK_LOG
    return k


cdef class _FilterCompiler:
    """Fills an HttpCfg's filter array; owns what it allocates until the HttpCfg takes it.
    The per-route configs (route_configs) it keeps apart, for the route table that points
    at them (give_route_configs): a table outlives the HttpCfg it was first built for."""
    cdef HttpCfg* h
    cdef list specs
    cdef list keep                  # Python objects the C side points at
    cdef AsyncBridge bridge         # where Python filters' async hooks run (the proxy's)
    cdef int regex_copies           # native filters' regexes: one copy per worker
    cdef RouteOwnedCfg* route_owned # per-route configs, until a table takes them
    cdef int route_nowned
    cdef list route_keep            # Python per-route configs, likewise

    def __dealloc__(self):
        cdef int i
        for i in range(self.route_nowned):
            self.route_owned[i].destroy(self.route_owned[i].config)
        free(self.route_owned)

    cdef _route_owned(self, const fp_http_filter* vt, void* cfg):
        cdef RouteOwnedCfg* nv
        if cfg == NULL or vt.destroy_config == NULL:
            return
        nv = <RouteOwnedCfg*>realloc(self.route_owned, (self.route_nowned + 1) * sizeof(RouteOwnedCfg))
        if nv == NULL:
            vt.destroy_config(cfg)
            raise MemoryError()
        self.route_owned = nv
        nv[self.route_nowned].destroy = vt.destroy_config
        nv[self.route_nowned].config = cfg
        self.route_nowned += 1

    def give_route_configs(self, RouteTableHandle rt not None):
        """The per-route configs compiled so far now belong to rt's table (which was built
        with route_configs as its per_filter)."""
        rt.t.owned = self.route_owned
        rt.t.nowned = self.route_nowned
        self.route_owned = NULL
        self.route_nowned = 0
        if self.route_keep:
            Py_INCREF(self.route_keep)
            rt.t.py_keep = <PyObject*>self.route_keep
            self.route_keep = []

    cdef _owned(self, const fp_http_filter* vt, void* cfg):
        cdef OwnedCfg* nv
        if cfg == NULL or vt.destroy_config == NULL:
            return
        nv = <OwnedCfg*>realloc(self.h.owned_cfgs, (self.h.nowned + 1) * sizeof(OwnedCfg))
        if nv == NULL:
            vt.destroy_config(cfg)
            raise MemoryError()
        self.h.owned_cfgs = nv
        nv[self.h.nowned].vt = vt
        nv[self.h.nowned].config = cfg
        self.h.nowned += 1

    cdef void* _c_config(self, const fp_http_filter* vt, object spec, object value, str path,
                         bint per_route=False) except? NULL:
        cdef bytes js
        cdef char err[256]
        cdef void* cfg
        if vt.create_config == NULL:
            return NULL
        cdef const char* jp = NULL
        cdef size_t jn = 0
        js = spec.config_json(value)
        if js is not None:
            jp = js
            jn = len(js)
        err[0] = 0
        cfg = vt.create_config(jp, jn, err, sizeof(err))
        if cfg == NULL and err[0]:
            raise ConfigError(path, f"the C filter rejected its config: {err.decode(errors='replace')}")
        if per_route:
            self._route_owned(vt, cfg)
        else:
            self._owned(vt, cfg)
        return cfg

    cdef compile(self, str path):
        cdef HttpFilterCfg* f
        cdef NativeFilterKind nk
        cdef int i
        cdef const fp_http_filter* vt
        cdef _PyFilterFactory factory
        from fastproxy.http_filter import PythonHttpFilter, CHttpFilter, NativeHttpFilter
        n = len(self.specs)
        self.h.nfilters = n
        self.h.filters = <HttpFilterCfg*>calloc(max(1, n), sizeof(HttpFilterCfg))
        if self.h.filters == NULL:
            raise MemoryError()
        for i, spec in enumerate(self.specs):
            f = &self.h.filters[i]
            fpath = f"{path}.http_filters[{i}]"
            nm = spec.name.encode()
            f.name = <char*>malloc(len(nm) + 1)
            if f.name == NULL:
                raise MemoryError()
            memcpy(f.name, <char*>nm, len(nm) + 1)
            if isinstance(spec, PythonHttpFilter):
                factory = _PyFilterFactory.__new__(_PyFilterFactory)
                factory.make = spec.factory()
                factory.bridge = self.bridge
                self.keep.append(factory)
                f.vt = &PY_FILTER_VT
                f.config = <void*>factory
                f.is_python = 1
                f.hooks = spec.hooks
            elif isinstance(spec, CHttpFilter):
                vt = <const fp_http_filter*><size_t>spec.table
                if vt == NULL or vt.abi_version != FP_FILTER_ABI_VERSION:
                    raise ConfigError(fpath, f"not an fp_http_filter table of ABI version "
                                             f"{FP_FILTER_ABI_VERSION}")
                if spec.keepalive is not None:
                    self.keep.append(spec.keepalive)
                f.vt = vt
                f.config = self._c_config(vt, spec, spec.config, fpath)
                f.hooks = _vt_hooks(vt)
            elif isinstance(spec, NativeHttpFilter):
                nk = NATIVE_HTTP_FILTERS.get(spec.kind)
                if nk is None:
                    raise ConfigError(fpath, f"unknown native HTTP filter {spec.kind!r}")
                f.vt = nk.vt
                f.config = nk.make_config(spec.config, False, self.regex_copies)
                self._owned(nk.vt, f.config)
                f.hooks = _vt_hooks(nk.vt)
            else:
                raise ConfigError(fpath, f"not an HTTP filter: {spec!r}")
            self.h.filter_hooks |= f.hooks

    def route_configs(self, route, vhost, rc):
        """The per-filter configs for one route (most specific: route, virtual host, route
        configuration), as addresses the route entry keeps; None if there are none."""
        cdef const fp_http_filter* vt
        cdef NativeFilterKind nk
        cdef void* p
        cdef int i
        from fastproxy.http_filter import PythonHttpFilter, CHttpFilter
        out = []
        found = False
        for i, spec in enumerate(self.specs):
            value = None
            for level in (route, vhost, rc):
                tp = getattr(level, "typed_per_filter_config", None) or {}
                if spec.name in tp:
                    value = tp[spec.name]
                    break
            if value is None:
                out.append(0)
                continue
            found = True
            if isinstance(spec, PythonHttpFilter):
                obj = spec.route_config(value)
                self.route_keep.append(obj)
                out.append(<size_t><void*>obj)
            elif isinstance(spec, CHttpFilter):
                vt = <const fp_http_filter*><size_t>spec.table
                if vt == NULL or vt.abi_version != FP_FILTER_ABI_VERSION:
                    raise ConfigError("typed_per_filter_config." + spec.name,
                                      f"not an fp_http_filter table of ABI version {FP_FILTER_ABI_VERSION}")
                p = self._c_config(vt, spec, value, "typed_per_filter_config." + spec.name, True)
                if spec.keepalive is not None:
                    # The table may outlive every HttpCfg: it keeps the filter's library too.
                    self.route_keep.append(spec.keepalive)
                out.append(<size_t>p)
            else:
                nk = NATIVE_HTTP_FILTERS.get(spec.kind)
                if nk is None:
                    raise ConfigError("typed_per_filter_config." + spec.name,
                                      f"unknown native HTTP filter {spec.kind!r}")
                p = nk.make_config(value, True, self.regex_copies)
                self._route_owned(nk.vt, p)
                out.append(<size_t>p)
        return out if found else None


cdef void http_cfg_free_filters(HttpCfg* h) noexcept nogil:
    cdef int i
    for i in range(h.nowned):
        h.owned_cfgs[i].vt.destroy_config(h.owned_cfgs[i].config)
    free(h.owned_cfgs)
    for i in range(h.nfilters):
        free(h.filters[i].name)
    free(h.filters)
    if h.py_keep != NULL:
        _py_decref_with_gil(h.py_keep)
