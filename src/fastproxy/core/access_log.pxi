# Access logs (Envoy's access_log on the http_connection_manager) and the stream facts they
# print (HStream's "stream_info" fields: times, byte counts, status, response flags,
# upstream host, client address).
#
# A format is compiled in Python (fastproxy/access_log.py) into an AlogOp array once per
# config. When a stream ends, stream_log() formats one record per sink into a stack buffer
# on the worker, without the GIL, and hands it to the kernel with one write(2) on an fd
# opened O_APPEND|O_NONBLOCK: a record is one write, so concurrent workers never interleave
# within a line, and a full pipe drops the record instead of stalling the worker. stdout and
# stderr are the process's inherited descriptors (fastproxy.access_log.open_sink): a socket
# there (systemd's journal) is written with send(MSG_DONTWAIT), which does not wait either,
# without making the process's own descriptor non-blocking.

cdef enum:                          # HStream.response_flags: Envoy's short codes, in the
    RF_UH = 1 << 0                  # order Envoy prints them
    RF_UT = 1 << 1
    RF_LR = 1 << 2
    RF_UR = 1 << 3
    RF_UF = 1 << 4
    RF_UC = 1 << 5
    RF_UO = 1 << 6                  # a circuit breaker refused the request (upstream overflow)
    RF_NR = 1 << 7
    RF_DC = 1 << 8
    RF_URX = 1 << 9
    RF_SI = 1 << 10
    RF_DPE = 1 << 11
    RF_UPE = 1 << 12
    RF_NC = 1 << 13                 # the route's cluster is not configured
    RF_DR = 1 << 14                 # downstream remote reset (HTTP/2 RST_STREAM from the client)
    RF_COUNT = 15

cdef const char* _rf_names[15]
_rf_names[:] = [b"UH", b"UT", b"LR", b"UR", b"UF", b"UC", b"UO", b"NR", b"DC", b"URX", b"SI",
                b"DPE", b"UPE", b"NC", b"DR"]

cdef enum:                          # AlogOp.kind
    AL_LIT = 0
    AL_REQ = 1
    AL_RESP = 2
    AL_START_TIME = 3
    AL_RESPONSE_CODE = 4
    AL_RESPONSE_FLAGS = 5
    AL_BYTES_RECEIVED = 6
    AL_BYTES_SENT = 7
    AL_PROTOCOL = 8
    AL_DURATION = 9
    AL_REQUEST_DURATION = 10
    AL_RESPONSE_DURATION = 11
    AL_RESPONSE_TX_DURATION = 12
    AL_UPSTREAM_HOST = 13
    AL_UPSTREAM_CLUSTER = 14
    AL_ROUTE_NAME = 15
    AL_DS_REMOTE = 16
    AL_DS_REMOTE_NOPORT = 17
    AL_DS_DIRECT = 18
    AL_DS_DIRECT_NOPORT = 19
    AL_DS_LOCAL = 20
    AL_DS_LOCAL_NOPORT = 21
    AL_TLS_VERSION = 22             # the TLS facts of the downstream connection
    AL_TLS_CIPHER = 23              # (core/tls/info.pxi)
    AL_TLS_SESSION_ID = 24
    AL_SNI = 25
    AL_PEER_SUBJECT = 26
    AL_LOCAL_SUBJECT = 27
    AL_PEER_URI_SAN = 28
    AL_LOCAL_URI_SAN = 29
    AL_PEER_DNS_SAN = 30
    AL_LOCAL_DNS_SAN = 31
    AL_PEER_FP256 = 32
    AL_PEER_SERIAL = 33
    AL_PEER_V_START = 34
    AL_PEER_V_END = 35

_ALOG_KINDS = {"LIT": AL_LIT, "REQ": AL_REQ, "RESP": AL_RESP, "START_TIME": AL_START_TIME,
               "RESPONSE_CODE": AL_RESPONSE_CODE, "RESPONSE_FLAGS": AL_RESPONSE_FLAGS,
               "BYTES_RECEIVED": AL_BYTES_RECEIVED, "BYTES_SENT": AL_BYTES_SENT,
               "PROTOCOL": AL_PROTOCOL, "DURATION": AL_DURATION,
               "REQUEST_DURATION": AL_REQUEST_DURATION, "RESPONSE_DURATION": AL_RESPONSE_DURATION,
               "RESPONSE_TX_DURATION": AL_RESPONSE_TX_DURATION, "UPSTREAM_HOST": AL_UPSTREAM_HOST,
               "UPSTREAM_CLUSTER": AL_UPSTREAM_CLUSTER, "ROUTE_NAME": AL_ROUTE_NAME,
               "DOWNSTREAM_REMOTE_ADDRESS": AL_DS_REMOTE,
               "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": AL_DS_REMOTE_NOPORT,
               "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": AL_DS_DIRECT,
               "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": AL_DS_DIRECT_NOPORT,
               "DOWNSTREAM_LOCAL_ADDRESS": AL_DS_LOCAL,
               "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": AL_DS_LOCAL_NOPORT,
               "DOWNSTREAM_TLS_VERSION": AL_TLS_VERSION, "DOWNSTREAM_TLS_CIPHER": AL_TLS_CIPHER,
               "DOWNSTREAM_TLS_SESSION_ID": AL_TLS_SESSION_ID, "REQUESTED_SERVER_NAME": AL_SNI,
               "DOWNSTREAM_PEER_SUBJECT": AL_PEER_SUBJECT, "DOWNSTREAM_LOCAL_SUBJECT": AL_LOCAL_SUBJECT,
               "DOWNSTREAM_PEER_URI_SAN": AL_PEER_URI_SAN, "DOWNSTREAM_LOCAL_URI_SAN": AL_LOCAL_URI_SAN,
               "DOWNSTREAM_PEER_DNS_SAN": AL_PEER_DNS_SAN, "DOWNSTREAM_LOCAL_DNS_SAN": AL_LOCAL_DNS_SAN,
               "DOWNSTREAM_PEER_FINGERPRINT_256": AL_PEER_FP256, "DOWNSTREAM_PEER_SERIAL": AL_PEER_SERIAL,
               "DOWNSTREAM_PEER_CERT_V_START": AL_PEER_V_START, "DOWNSTREAM_PEER_CERT_V_END": AL_PEER_V_END}

DEF ALOG_RECORD_MAX = 16384         # a longer record is cut (and still ends with its newline)

cdef struct AlogOp:
    int kind
    char* text                      # literal / header name / strftime format (malloc'd)
    size_t text_len
    char* alt                       # the alternative header (X?Y), NULL if none
    size_t alt_len
    int max_len                     # -1: no limit

cdef struct AlogSink:
    int fd
    int sock                        # fd is a socket: send(MSG_DONTWAIT) instead of write
    int nops
    AlogOp* ops


cdef struct _AlOut:
    char* p
    size_t cap
    size_t n


cdef inline void _al_put(_AlOut* o, const char* s, size_t n) noexcept nogil:
    if n > o.cap - o.n:
        n = o.cap - o.n
    memcpy(o.p + o.n, s, n)
    o.n += n


cdef inline void _al_value(_AlOut* o, const char* s, size_t n, int max_len) noexcept nogil:
    """An operator's value: "-" when absent, cut to max_len."""
    if s == NULL:
        _al_put(o, "-", 1)
        return
    if max_len >= 0 and n > <size_t>max_len:
        n = <size_t>max_len
    _al_put(o, s, n)


cdef inline void _al_u64(_AlOut* o, uint64_t v) noexcept nogil:
    cdef char b[24]
    cdef int k = snprintf(b, sizeof(b), "%llu", <unsigned long long>v)
    _al_put(o, b, <size_t>k)


cdef void _al_time(_AlOut* o, const char* fmt, size_t n, uint64_t us) noexcept nogil:
    """strftime in UTC plus Envoy's sub-second specifiers %f, %<d>f, %E<d>S and %s."""
    cdef time_t secs = <time_t>(us // 1000000)
    cdef uint64_t nanos = (us % 1000000) * 1000
    cdef tm t
    cdef char spec[4]
    cdef char tmp[64]
    cdef size_t i = 0, k
    cdef int digits
    cdef uint64_t frac, div
    if n == 0:
        fmt = "%Y-%m-%dT%H:%M:%E3SZ"
        n = strlen(fmt)
    gmtime_r(&secs, &t)
    while i < n:
        if fmt[i] != 37 or i + 1 >= n:          # '%'
            _al_put(o, fmt + i, 1)
            i += 1
            continue
        digits = 0
        if fmt[i + 1] == 102:                   # %f
            digits = 9
            i += 2
        elif 49 <= fmt[i + 1] <= 57 and i + 2 < n and fmt[i + 2] == 102:       # %3f
            digits = fmt[i + 1] - 48
            i += 3
        elif fmt[i + 1] == 69 and i + 3 < n and 49 <= fmt[i + 2] <= 57 and fmt[i + 3] == 83:
            k = strftime(tmp, sizeof(tmp), "%S", &t)                           # %E3S
            _al_put(o, tmp, k)
            _al_put(o, ".", 1)
            digits = fmt[i + 2] - 48
            i += 4
        elif fmt[i + 1] == 115:                 # %s
            _al_u64(o, <uint64_t>secs)
            i += 2
            continue
        else:
            spec[0] = 37
            spec[1] = fmt[i + 1]
            spec[2] = 0
            k = strftime(tmp, sizeof(tmp), spec, &t)
            _al_put(o, tmp, k)
            i += 2
            continue
        div = 1
        for k in range(9 - digits):
            div *= 10
        frac = nanos // div
        k = <size_t>snprintf(tmp, sizeof(tmp), "%0*llu", digits, <unsigned long long>frac)
        _al_put(o, tmp, k)


cdef void _al_addr(_AlOut* o, const char* ip, size_t ip_len, unsigned int port, bint with_port) noexcept nogil:
    cdef char b[16]
    cdef int k
    cdef bint v6 = memchr(ip, 58, ip_len) != NULL      # ':'
    if ip_len == 0:
        _al_put(o, "-", 1)
        return
    if not with_port:
        _al_put(o, ip, ip_len)
        return
    if v6:
        _al_put(o, "[", 1)
    _al_put(o, ip, ip_len)
    k = snprintf(b, sizeof(b), "]:%u" if v6 else ":%u", port)
    _al_put(o, b, <size_t>k)


cdef void _al_sockaddr(_AlOut* o, sockaddr_storage* ss, bint with_port) noexcept nogil:
    cdef char ip[48]
    cdef unsigned int port
    if ss.ss_family == AF_INET6:
        inet_ntop(AF_INET6, &(<sockaddr_in6*>ss).sin6_addr, ip, sizeof(ip))
        port = ntohs((<sockaddr_in6*>ss).sin6_port)
    elif ss.ss_family == AF_INET:
        inet_ntop(AF_INET, &(<sockaddr_in*>ss).sin_addr, ip, sizeof(ip))
        port = ntohs((<sockaddr_in*>ss).sin_port)
    else:
        _al_put(o, "-", 1)
        return
    _al_addr(o, ip, strlen(ip), port, with_port)


cdef void _al_tls(_AlOut* o, AlogOp* op, SSL* ssl, HConn* c) noexcept nogil:
    """A TLS operator's value: "-" on plaintext and for what the connection lacks (no
    client certificate, no SNI, no SAN of the kind), as Envoy prints them."""
    cdef TlsText t
    cdef bint have = False
    cdef const char* v = NULL
    cdef int64_t us
    if ssl == NULL:
        _al_put(o, "-", 1)
        return
    if op.kind == AL_TLS_VERSION:
        v = tls_version(ssl)
    elif op.kind == AL_TLS_CIPHER:
        v = tls_cipher(ssl)
    elif op.kind == AL_SNI:
        v = hconn_requested_server_name(c)
        if v == NULL:
            _al_put(o, "-", 1)
            return
    elif op.kind == AL_PEER_V_START or op.kind == AL_PEER_V_END:
        us = tls_cert_time_us(tls_peer_cert(ssl), op.kind == AL_PEER_V_END)
        if us < 0:
            _al_put(o, "-", 1)
        else:
            _al_time(o, op.text, op.text_len, <uint64_t>us)
        return
    if v != NULL:
        _al_value(o, v, strlen(v), op.max_len)
        return
    memset(&t, 0, sizeof(TlsText))
    if op.kind == AL_TLS_SESSION_ID:
        have = tls_session_id(ssl, &t)
    elif op.kind == AL_PEER_SUBJECT:
        have = tls_subject(tls_peer_cert(ssl), &t)
    elif op.kind == AL_LOCAL_SUBJECT:
        have = tls_subject(tls_local_cert(ssl), &t)
    elif op.kind == AL_PEER_URI_SAN:
        have = tls_sans(tls_peer_cert(ssl), GEN_URI, &t, "", ",") > 0
    elif op.kind == AL_LOCAL_URI_SAN:
        have = tls_sans(tls_local_cert(ssl), GEN_URI, &t, "", ",") > 0
    elif op.kind == AL_PEER_DNS_SAN:
        have = tls_sans(tls_peer_cert(ssl), GEN_DNS, &t, "", ",") > 0
    elif op.kind == AL_LOCAL_DNS_SAN:
        have = tls_sans(tls_local_cert(ssl), GEN_DNS, &t, "", ",") > 0
    elif op.kind == AL_PEER_FP256:
        have = tls_sha256_hex(tls_peer_cert(ssl), &t)
    elif op.kind == AL_PEER_SERIAL:
        have = tls_serial_hex(tls_peer_cert(ssl), &t)
    if have and t.n and not t.failed:
        _al_value(o, t.p, t.n, op.max_len)
    else:
        _al_put(o, "-", 1)
    tt_free(&t)


cdef const char* _al_request_field(HStream* s, const char* name, size_t n, size_t* out,
                                   char* scratch, size_t cap, char** owned) noexcept nogil:
    """A request header (lower-case name) or pseudo-header of the stream, NULL if absent:
    the request as Envoy's access log sees it, i.e. after the connection manager's and the
    router's mutations (x-forwarded-for, x-request-id, x-envoy-*). A request the codec
    rejected has no headers at all. `scratch` (cap bytes) may hold the value; a built
    value longer than that (a long x-forwarded-for) goes into memory allocated for it,
    returned in owned[0] for the caller to free."""
    cdef size_t need
    cdef HttpHead* h = &s.head
    cdef HttpCfg* hc = <HttpCfg*>s.c.cfg.http
    cdef int cls
    if h.buf == NULL:
        return NULL
    if n and name[0] == 58:                     # ':'
        if _ieq(name, n, ":method"):
            out[0] = h.method_len
            return h.buf + h.method_off
        if _ieq(name, n, ":path"):
            if s.connect:
                return NULL                     # CONNECT has no path (Envoy prints "-")
            if s.rewritten_path != NULL:        # the path the upstream got
                out[0] = s.rewritten_path_len
                return s.rewritten_path
            out[0] = h.target_len
            return h.buf + h.target_off
        if _ieq(name, n, ":authority"):
            return _head_field(h, "host", out)
        if _ieq(name, n, ":scheme"):
            if endp_ssl(&s.c.down) != NULL:
                out[0] = 5
                return "https"
            out[0] = 4
            return "http"
        return NULL
    if s.request_id_len and _ieq(name, n, "x-request-id"):
        out[0] = s.request_id_len
        return s.request_id
    if n > 8 and (name[0] | 0x20) == 120:      # 'x'
        if hc.use_remote_address and not hc.skip_xff_append and _ieq(name, n, "x-forwarded-for"):
            need = stream_forwarded_xff_size(s)
            if need > cap:
                owned[0] = <char*>malloc(need)
                if owned[0] == NULL:
                    return NULL                 # no memory: "-" rather than a cut value
                scratch = owned[0]
                cap = need
            out[0] = stream_forwarded_xff(s, scratch, cap)
            return scratch
        cls = _xe_class(name, n)
        if cls:
            if (cls & XE_EXPECTED) and s.expected_timeout_ms:
                out[0] = _u64_text(s.expected_timeout_ms, scratch)
                return scratch
            if (cls & XE_ORIG_PATH) and s.rewritten_path != NULL:
                out[0] = h.target_len
                return h.buf + h.target_off
            if s.fc != NULL:                    # the map: sanitized, then as filters left it
                if s.cluster != NULL and xe_drops(s, name, n, XE_AT_ROUTER):
                    return NULL
                return hm_get(&s.fc.req, name, n, out)
            if (cls & XE_INTERNAL) and s.client_internal:
                out[0] = 4
                return "true"
            if (cls & XE_EXT_ADDR) and s.edge:
                out[0] = s.client_ip_len
                return s.client_ip
            if xe_drops(s, name, n, XE_AT_HCM | (XE_AT_ROUTER if s.cluster != NULL else 0)):
                return NULL
    return _head_field(h, name, out)


cdef size_t alog_format(AlogSink* k, HStream* s, char* buf, size_t cap) noexcept nogil:
    cdef _AlOut o
    cdef int i, b
    cdef AlogOp* op
    cdef const char* v
    cdef size_t n = 0
    cdef bint first
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef sockaddr_storage ss
    cdef socklen_t sl
    cdef char scratch[256]              # a value built for the log: numbers, a short x-forwarded-for
    cdef char* owned
    o.p = buf
    o.cap = cap
    o.n = 0
    for i in range(k.nops):
        op = &k.ops[i]
        if op.kind == AL_LIT:
            _al_put(&o, op.text, op.text_len)
        elif op.kind == AL_REQ or op.kind == AL_RESP:
            v = NULL
            owned = NULL
            if op.kind == AL_REQ:
                v = _al_request_field(s, op.text, op.text_len, &n, scratch, sizeof(scratch), &owned)
                if v == NULL and op.alt != NULL:
                    v = _al_request_field(s, op.alt, op.alt_len, &n, scratch, sizeof(scratch), &owned)
            elif s.service_time_set and _ieq(op.text, op.text_len, "x-envoy-upstream-service-time"):
                n = _u64_text(s.service_time_ms, scratch)
                v = scratch
            elif s.resp_from_upstream and s.upstream.conn != NULL:
                v = _head_field(s.upstream.resp_head, op.text, &n)
                if v == NULL and op.alt != NULL:
                    v = _head_field(s.upstream.resp_head, op.alt, &n)
            _al_value(&o, v, n, op.max_len)
            free(owned)
        elif op.kind == AL_START_TIME:
            _al_time(&o, op.text, op.text_len, s.start_time_us)
        elif op.kind == AL_RESPONSE_CODE:
            _al_u64(&o, <uint64_t>s.status)
        elif op.kind == AL_RESPONSE_FLAGS:
            first = True
            for b in range(RF_COUNT):
                if s.response_flags & (1 << b):
                    if not first:
                        _al_put(&o, ",", 1)
                    _al_put(&o, _rf_names[b], strlen(_rf_names[b]))
                    first = False
            if first:
                _al_put(&o, "-", 1)
        elif op.kind == AL_BYTES_RECEIVED:
            _al_u64(&o, s.req_body_bytes)
        elif op.kind == AL_BYTES_SENT:
            _al_u64(&o, s.bytes_sent)
        elif op.kind == AL_PROTOCOL:
            _al_put(&o, http_protocol_name(s.protocol), strlen(http_protocol_name(s.protocol)))
        elif op.kind == AL_DURATION:
            _al_u64(&o, s.end_ms - s.start_ms)
        elif op.kind == AL_REQUEST_DURATION:
            if s.request_end_ms:
                _al_u64(&o, s.request_end_ms - s.start_ms)
            else:
                _al_put(&o, "-", 1)
        elif op.kind == AL_RESPONSE_DURATION:
            if s.response_start_ms:
                _al_u64(&o, s.response_start_ms - s.start_ms)
            else:
                _al_put(&o, "-", 1)
        elif op.kind == AL_RESPONSE_TX_DURATION:
            if s.response_start_ms:
                _al_u64(&o, s.end_ms - s.response_start_ms)
            else:
                _al_put(&o, "-", 1)
        elif op.kind == AL_UPSTREAM_HOST:
            if s.upstream.addrlen:
                _al_sockaddr(&o, &s.upstream.addr, True)
            else:
                _al_put(&o, "-", 1)
        elif op.kind == AL_UPSTREAM_CLUSTER:
            if s.cluster_index >= 0:
                _al_value(&o, s.routes.cluster_names[s.cluster_index],
                          strlen(s.routes.cluster_names[s.cluster_index]), op.max_len)
            else:
                _al_put(&o, "-", 1)
        elif op.kind == AL_ROUTE_NAME:
            if s.route != NULL and s.route.name.n:
                _al_value(&o, s.route.name.p, s.route.name.n, op.max_len)
            else:
                _al_put(&o, "-", 1)
        elif op.kind == AL_DS_REMOTE or op.kind == AL_DS_REMOTE_NOPORT:
            _al_addr(&o, s.client_ip, s.client_ip_len, s.client_port, op.kind == AL_DS_REMOTE)
        elif op.kind == AL_DS_DIRECT or op.kind == AL_DS_DIRECT_NOPORT:
            _al_addr(&o, c.remote_ip, c.remote_ip_len, c.remote_port, op.kind == AL_DS_DIRECT)
        elif op.kind == AL_DS_LOCAL or op.kind == AL_DS_LOCAL_NOPORT:
            sl = sizeof(sockaddr_storage)
            memset(&ss, 0, sizeof(ss))
            if c.down.fd < 0 or getsockname(c.down.fd, <sockaddr*>&ss, &sl) < 0:
                _al_put(&o, "-", 1)
            else:
                _al_sockaddr(&o, &ss, op.kind == AL_DS_LOCAL)
        elif AL_TLS_VERSION <= op.kind <= AL_PEER_V_END:
            _al_tls(&o, op, <SSL*>endp_ssl(&c.down), c)
    if o.n == cap and cap:
        buf[cap - 1] = 10                       # a cut record still ends its line
    return o.n


cdef void stream_log(HStream* s) noexcept nogil:
    """The stream is over: record its time, write its access log records. Once per stream."""
    cdef HConn* c = s.c
    cdef HttpCfg* h = <HttpCfg*>c.cfg.http
    cdef char buf[ALOG_RECORD_MAX]
    cdef size_t n
    cdef int i
    if s.logged:
        return
    s.logged = 1
    s.end_ms = c.w.now
    if s.status:
        hist_record(h.stats, c.w, H_NSTATS, s.end_ms - s.start_ms)
    if s.cluster != NULL and s.resp_from_upstream and s.upstream.start_ms:
        hist_record(s.cluster.stats, c.w, C_NSTATS, s.end_ms - s.upstream.start_ms)
    for i in range(h.nlogs):
        n = alog_format(&h.logs[i], s, buf, sizeof(buf))
        if n == 0:
            continue
        if h.logs[i].sock:
            send(h.logs[i].fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL)
        else:
            write(h.logs[i].fd, buf, n)         # O_APPEND|O_NONBLOCK: never waits


cdef void alog_sinks_free(AlogSink* logs, int nlogs) noexcept nogil:
    cdef int i, j
    for i in range(nlogs):
        if logs[i].fd >= 0:
            close(logs[i].fd)
        for j in range(logs[i].nops):
            free(logs[i].ops[j].text)
            free(logs[i].ops[j].alt)
        free(logs[i].ops)
    free(logs)


cdef char* _al_dup(bytes b):
    cdef char* p = <char*>malloc(len(b) + 1)
    if p == NULL:
        raise MemoryError()
    memcpy(p, <char*>b, len(b))
    p[len(b)] = 0
    return p


cdef int alog_compile(HttpCfg* h, hcm) except -1:
    """Open the access log sinks of hcm and compile their formats into h.logs."""
    from fastproxy.access_log import compile_format, open_sink
    from fastproxy.errors import ConfigError
    cdef int i, j
    cdef AlogSink* k
    cdef AlogOp* op
    logs = list(hcm.access_log)
    h.nlogs = 0
    if not logs:
        return 0
    h.logs = <AlogSink*>calloc(len(logs), sizeof(AlogSink))
    if h.logs == NULL:
        raise MemoryError()
    for i, log in enumerate(logs):
        where = f"http.{hcm.stat_prefix}.access_log[{i}]"
        ops = compile_format(log.format, where + ".format")
        k = &h.logs[i]
        k.fd = -1
        h.nlogs = i + 1
        k.ops = <AlogOp*>calloc(max(1, len(ops)), sizeof(AlogOp))
        if k.ops == NULL:
            raise MemoryError()
        for j, (kind, text, alt, max_len) in enumerate(ops):
            op = &k.ops[j]
            k.nops = j + 1
            op.kind = _ALOG_KINDS[kind]
            op.text = _al_dup(text)
            op.text_len = len(text)
            if alt:
                op.alt = _al_dup(alt)
                op.alt_len = len(alt)
            op.max_len = max_len
        try:
            fd, sock = open_sink(log.path)
        except OSError as e:
            raise ConfigError(where + ".path", f"cannot open {log.path!r}: {e.strerror or e}") from None
        k.fd = fd
        k.sock = sock
    return 0
