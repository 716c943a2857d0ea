# A listener with several filter chains (Envoy's filter_chains, filter_chain_match,
# default_filter_chain) and its listener filter, envoy.filters.listener.tls_inspector.
#
# Each filter chain is a ListenerCfg of its own (Engine.make_listener: its start function,
# cluster or HTTP config, stats). A listener with chains gets a parent ListenerCfg
# (Engine.make_chain_listener) whose `start` is chain_listener_start: with the inspector it
# keeps the accepted socket in a Pending record, registered in epoll, and peeks
# (recv MSG_PEEK: nothing is consumed) until the first bytes tell a TLS ClientHello from
# anything else; then it matches the connection against the chains' compiled match table
# in Envoy's order and hands the socket to the chosen chain's own start. From then on the
# connection belongs to the chain's ListenerCfg (its reference, its CfgConn list) exactly
# as if the chain had accepted it.
#
# A pending connection counts on its listener like any other (max_connections, the global
# limit, listener.<addr>.downstream_pre_cx_active), sits in the parent's CfgConn list (a
# drain ends it) and in its worker's list (the worker's teardown closes it), and is bounded
# per worker (PENDING_MAX_PER_WORKER) beside the listener's own limits.

DEF TLS_MAX_CLIENT_HELLO = 65536    # Envoy's max_client_hello_size: bytes peeked at most
DEF TLS_MAX_HELLO_BODY = 16384      # the largest ClientHello message BoringSSL reads (Envoy's parser)
DEF TLS_MAX_RECORD = 16384          # a plaintext record's largest payload
DEF TLS_MAX_HOST_NAME = 255
DEF PENDING_MAX_PER_WORKER = 16384  # connections in their listener filter, per worker

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    enum:
        MSG_PEEK

# What the ClientHello parser found (tls_hello_parse).
cdef enum:
    HELLO_MORE = 0          # a ClientHello so far: more bytes are needed
    HELLO_TLS = 1           # a whole, well-formed ClientHello
    HELLO_NOT_TLS = 2       # not (the start of) a TLS ClientHello
    HELLO_TOO_LARGE = 3     # a ClientHello so far, that cannot end within TLS_MAX_CLIENT_HELLO bytes

# FilterChainMatch.transport_protocol, compiled.
cdef enum:
    TP_ANY = 0
    TP_RAW_BUFFER = 1
    TP_TLS = 2
    TP_OTHER = 3            # a name no listener filter detects: never matches

# FilterChainMatch.source_type, compiled.
cdef enum:
    ST_ANY = 0
    ST_LOCAL = 1            # SAME_IP_OR_LOOPBACK
    ST_EXTERNAL = 2

cdef struct HelloInfo:
    const uint8_t* sni      # the host_name (not NUL-terminated), or NULL
    size_t sni_len
    const uint8_t* alpn     # the ALPN protocol_name_list's content (u8-length-prefixed names), or NULL
    size_t alpn_len


cdef struct MatchStr:       # a server name (lower case; a wildcard is kept as its ".suffix") or protocol
    uint32_t off            # into ChainTable.chars
    uint32_t len
    uint8_t wildcard

cdef struct ChainMatch:     # one chain's filter_chain_match (an empty list: any)
    uint16_t dport          # 0: any
    uint8_t transport       # TP_*
    uint8_t source_type     # ST_*
    int dst_first
    int ndst
    int sni_first
    int nsni
    int alpn_first
    int nalpn
    int src_first
    int nsrc
    int sport_first
    int nsport

cdef struct ChainTable:     # immutable once built; shared by the workers
    int refcnt              # atomic
    int nchains
    ChainMatch* m
    InternalCidr* cidrs     # (the connection manager's CIDR struct and test, _cidr_contains)
    MatchStr* strs
    uint16_t* ports
    char* chars
    uint8_t needs_local     # a chain matches on the destination port or address, or source type

cdef struct ConnFacts:      # what the matcher knows of a connection
    uint16_t dport
    uint8_t dfamily         # 0: the local address is unknown
    uint8_t daddr[16]
    uint8_t sfamily
    uint8_t saddr[16]
    uint16_t sport
    uint8_t is_local        # SAME_IP_OR_LOOPBACK
    uint8_t transport       # TP_RAW_BUFFER or TP_TLS
    const uint8_t* sni      # lower case, or NULL / 0
    size_t sni_len
    const uint8_t* alpn     # protocol_name_list content, or NULL
    size_t alpn_len

cdef struct ChainSet:       # a parent ListenerCfg's chains (ListenerCfg.chains)
    int nchains
    ListenerCfg** chains    # one reference each
    ListenerCfg* dflt       # default_filter_chain (one reference), or NULL
    ChainTable* table       # one reference
    StatBlock* istats       # tls_inspector.* (one reference), or NULL
    uint8_t inspect_tls
    uint8_t continue_on_timeout
    uint64_t timeout_ms     # 0: no listener filter timeout

cdef struct Pending:        # an accepted connection in its listener filter
    Endp ep
    Timer timer
    Worker* w
    ListenerCfg* cfg        # the parent (one reference)
    CfgConn link            # in the parent's list on this worker: its drain closes it
    Pending* prev           # in the worker's list (ChainWorker.pending)
    Pending* next
    sockaddr_storage peer
    size_t peeked           # bytes seen at the last look
    uint8_t rcvbuf_raised

cdef struct ChainWorker:    # this subsystem's per-worker state
    Pending* pending
    int npending
    uint8_t* peek_buf       # TLS_MAX_CLIENT_HELLO bytes: what recv(MSG_PEEK) returns
    uint8_t* msg_buf        # the ClientHello message, reassembled from its records
    char sni_lower[TLS_MAX_HOST_NAME]
    int* cand               # the matcher's candidates (grown to the largest table seen)
    int cand_cap


cdef int _CHAINS_SLOT


cdef inline ChainWorker* chain_worker(Worker* w) noexcept nogil:
    return <ChainWorker*>w.state[_CHAINS_SLOT]


# ---- the ClientHello parser (no GIL, no allocation; fastproxy/_testing/tls_reference.py
# is its reference) ----

cdef inline uint32_t _u16(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef bint _hello_extensions_unique(const uint8_t* p, size_t n) noexcept nogil:
    """The extension block parses, each extension once (BoringSSL refuses duplicates):
    one bit per extension type, so thousands of tiny extensions cost one pass."""
    cdef uint8_t seen[8192]
    cdef size_t i = 0, elen
    cdef uint32_t t
    memset(seen, 0, sizeof(seen))
    while i < n:
        if n - i < 4:
            return False
        t = _u16(p + i)
        elen = _u16(p + i + 2)
        if n - i - 4 < elen or seen[t >> 3] & (1 << (t & 7)):
            return False
        seen[t >> 3] |= <uint8_t>(1 << (t & 7))
        i += 4 + elen
    return True


cdef int _hello_body(const uint8_t* b, size_t n, HelloInfo* out) noexcept nogil:
    """A ClientHello message body: HELLO_TLS (with SNI and ALPN in out) or HELLO_NOT_TLS,
    judged as Envoy's inspector (BoringSSL up to its servername callback) judges it."""
    cdef size_t i = 0, l, ext_end, elen, j, nlen
    cdef uint32_t version, t
    cdef const uint8_t* e
    cdef bint has_versions = False, version_ok = False
    if n < 2 + 32 + 1:
        return HELLO_NOT_TLS
    version = _u16(b)
    i = 2 + 32
    l = b[i]                                    # legacy_session_id
    i += 1
    if l > 32 or n - i < l:
        return HELLO_NOT_TLS
    i += l
    if n - i < 2:
        return HELLO_NOT_TLS
    l = _u16(b + i)                             # cipher_suites
    i += 2
    if l < 2 or l % 2 or n - i < l:
        return HELLO_NOT_TLS
    i += l
    if n - i < 1:
        return HELLO_NOT_TLS
    l = b[i]                                    # compression_methods
    i += 1
    if l < 1 or n - i < l:
        return HELLO_NOT_TLS
    i += l
    out.sni = NULL
    out.sni_len = 0
    out.alpn = NULL
    out.alpn_len = 0
    if i < n:
        if n - i < 2:
            return HELLO_NOT_TLS
        l = _u16(b + i)
        i += 2
        if n - i != l or not _hello_extensions_unique(b + i, l):
            return HELLO_NOT_TLS
        ext_end = n
        while i < ext_end:
            t = _u16(b + i)
            elen = _u16(b + i + 2)
            e = b + i + 4
            i += 4 + elen
            if t == 0:                          # server_name: exactly one host_name
                if elen < 5 or _u16(e) != elen - 2 or e[2] != 0 or _u16(e + 3) != elen - 5:
                    return HELLO_NOT_TLS
                nlen = elen - 5
                if nlen == 0 or nlen > TLS_MAX_HOST_NAME or memchr(e + 5, 0, nlen) != NULL:
                    return HELLO_NOT_TLS
                out.sni = e + 5
                out.sni_len = nlen
            elif t == 16:                       # ALPN: a malformed list is only not used
                if elen >= 2 and _u16(e) == elen - 2 and elen - 2 >= 2:
                    j = 2
                    while j < elen:
                        if e[j] == 0 or elen - j - 1 < e[j]:
                            break
                        j += 1 + e[j]
                    if j == elen:
                        out.alpn = e + 2
                        out.alpn_len = elen - 2
            elif t == 43:                       # supported_versions
                has_versions = True
                if elen < 1 or e[0] != elen - 1 or e[0] < 2 or e[0] % 2:
                    return HELLO_NOT_TLS
                j = 1
                while j < elen:
                    if 0x0301 <= _u16(e + j) <= 0x0304:
                        version_ok = True
                    j += 2
    if not has_versions:
        version_ok = version >= 0x0301
    return HELLO_TLS if version_ok else HELLO_NOT_TLS


cdef int tls_hello_parse(const uint8_t* data, size_t n, uint8_t* msg, HelloInfo* out) noexcept nogil:
    """The first n bytes a client sent: HELLO_MORE, HELLO_TOO_LARGE (its records need more
    than TLS_MAX_CLIENT_HELLO bytes), HELLO_TLS (out: SNI, ALPN, pointing into msg,
    TLS_MAX_HELLO_BODY + 4 bytes the message is reassembled in) or HELLO_NOT_TLS.
    Records must be handshake records (type 22, version 3.x, at most 16 KiB); the message
    a ClientHello of at most 16 KiB, which may span records and must end its record."""
    cdef size_t pos = 0, mlen = 0, rlen, take, need = 0
    while True:
        if n - pos < 1:
            return HELLO_MORE
        if data[pos] != 0x16:
            return HELLO_NOT_TLS
        if n - pos < 2:
            return HELLO_MORE
        if data[pos + 1] != 0x03:
            return HELLO_NOT_TLS
        if n - pos < 5:
            return HELLO_MORE
        rlen = _u16(data + pos + 3)
        if rlen > TLS_MAX_RECORD:
            return HELLO_NOT_TLS
        if n - pos - 5 < rlen:                  # a record is read whole
            return HELLO_TOO_LARGE if pos + 5 + rlen > TLS_MAX_CLIENT_HELLO else HELLO_MORE
        take = rlen
        if take > TLS_MAX_HELLO_BODY + 4 - mlen:
            take = TLS_MAX_HELLO_BODY + 4 - mlen
        memcpy(msg + mlen, data + pos + 5, take)
        mlen += take
        if mlen >= 4:
            if msg[0] != 1:                     # the first handshake message must be a ClientHello
                return HELLO_NOT_TLS
            need = 4 + ((<size_t>msg[1] << 16) | (<size_t>msg[2] << 8) | msg[3])
            if need > TLS_MAX_HELLO_BODY + 4:
                return HELLO_NOT_TLS
            if mlen >= need:
                if mlen > need:                 # the ClientHello must end its flight
                    return HELLO_NOT_TLS
                return _hello_body(msg + 4, need - 4, out)
        pos += 5 + rlen
        if mlen >= 4 and pos + 5 + (need - mlen) > TLS_MAX_CLIENT_HELLO:
            # (the rest of the message needs at least one more record) Envoy would peek
            # 64 KiB and find it unfinished; this is known now
            return HELLO_TOO_LARGE


# ---- the match table (built on the main thread, read by the workers) ----

cdef void chain_table_decref(ChainTable* t) noexcept nogil:
    if t == NULL or fp_atomic_add_int(&t.refcnt, -1) != 0:
        return
    free(t.m)
    free(t.cidrs)
    free(t.strs)
    free(t.ports)
    free(t.chars)
    free(t)


cdef int _cidr_rank(ChainTable* t, int first, int n, uint8_t family, const uint8_t* addr) noexcept nogil:
    """The longest prefix of a chain's ranges holding addr (no ranges: 0, as Envoy's
    catch-all 0.0.0.0/0 and ::/0); -1 when none holds it."""
    cdef int i, best = -1
    if n == 0:
        return 0
    if family == 0:
        return -1
    for i in range(first, first + n):
        if t.cidrs[i].plen > best and _cidr_contains(&t.cidrs[i], addr, family == 6):
            best = t.cidrs[i].plen
    return best


cdef int _sni_rank(ChainTable* t, ChainMatch* m, const uint8_t* name, size_t nlen) noexcept nogil:
    """Envoy's server-name order: the exact name, then the longest wildcard suffix, then
    a chain without server_names (0); -1: none of the chain's names."""
    cdef int i, best = -1
    cdef MatchStr* s
    if m.nsni == 0:
        return 0
    for i in range(m.sni_first, m.sni_first + m.nsni):
        s = &t.strs[i]
        if not s.wildcard:
            if s.len == nlen and memcmp(t.chars + s.off, name, nlen) == 0:
                return 1 << 20
        elif s.len >= 2 and nlen > s.len and memcmp(t.chars + s.off, name + nlen - s.len, s.len) == 0:
            if <int>s.len > best:
                best = s.len
    return best


cdef bint _has_str(ChainTable* t, int first, int n, const uint8_t* v, size_t vlen) noexcept nogil:
    cdef int i
    for i in range(first, first + n):
        if t.strs[i].len == vlen and memcmp(t.chars + t.strs[i].off, v, vlen) == 0:
            return True
    return False


cdef bint _has_port(ChainTable* t, int first, int n, uint16_t port) noexcept nogil:
    cdef int i
    for i in range(first, first + n):
        if t.ports[i] == port:
            return True
    return False


cdef int _keep_best(int* cand, int n, int* rank) noexcept nogil:
    """Keep the candidates of the highest rank >= 0 (rank[i] for cand[i]); returns how many."""
    cdef int i, k = 0, best = -1
    for i in range(n):
        if rank[i] > best:
            best = rank[i]
    if best < 0:
        return 0
    for i in range(n):
        if rank[i] == best:
            cand[k] = cand[i]
            k += 1
    return k


cdef int chain_match(ChainTable* t, ConnFacts* f, int* cand, int* rank) noexcept nogil:
    """The chain for connection f (an index), -1 for none. At each level of Envoy's order
    (destination port, destination IP, server name, transport protocol, application
    protocols, source type, source IP, source port) only the candidates with the most
    specific criterion the connection meets go on; a level that none meets ends in no
    match (Envoy does not fall back to a less specific branch). cand and rank: room for
    t.nchains ints each."""
    cdef int i, n = t.nchains
    cdef ChainMatch* m
    cdef size_t j
    cdef bint found
    for i in range(n):
        cand[i] = i
    # destination port: the exact one, else the chains without one
    for i in range(n):
        m = &t.m[cand[i]]
        rank[i] = 1 if m.dport != 0 and m.dport == f.dport else (0 if m.dport == 0 else -1)
    n = _keep_best(cand, n, rank)
    # destination IP: the longest prefix
    for i in range(n):
        m = &t.m[cand[i]]
        rank[i] = _cidr_rank(t, m.dst_first, m.ndst, f.dfamily, f.daddr)
    n = _keep_best(cand, n, rank)
    # server name
    for i in range(n):
        rank[i] = _sni_rank(t, &t.m[cand[i]], f.sni, f.sni_len)
    n = _keep_best(cand, n, rank)
    # transport protocol: the detected one, else the chains without one
    for i in range(n):
        m = &t.m[cand[i]]
        rank[i] = 1 if m.transport == f.transport else (0 if m.transport == TP_ANY else -1)
    n = _keep_best(cand, n, rank)
    # application protocols: the first of the client's (in its order) a chain names, else
    # the chains without any
    found = False
    j = 0
    while f.alpn != NULL and j < f.alpn_len and not found:
        for i in range(n):
            m = &t.m[cand[i]]
            rank[i] = 1 if _has_str(t, m.alpn_first, m.nalpn, f.alpn + j + 1, f.alpn[j]) else -1
            found = found or rank[i] == 1
        j += 1 + f.alpn[j]
    if not found:
        for i in range(n):
            rank[i] = 0 if t.m[cand[i]].nalpn == 0 else -1
    n = _keep_best(cand, n, rank)
    # source type: the connection's kind if a chain names it, else the chains for any
    for i in range(n):
        m = &t.m[cand[i]]
        if m.source_type == ST_ANY:
            rank[i] = 0
        elif m.source_type == (ST_LOCAL if f.is_local else ST_EXTERNAL):
            rank[i] = 1
        else:
            rank[i] = -1
    n = _keep_best(cand, n, rank)
    # source IP: the longest prefix
    for i in range(n):
        m = &t.m[cand[i]]
        rank[i] = _cidr_rank(t, m.src_first, m.nsrc, f.sfamily, f.saddr)
    n = _keep_best(cand, n, rank)
    # source port: the exact one, else the chains without ports
    for i in range(n):
        m = &t.m[cand[i]]
        rank[i] = 1 if _has_port(t, m.sport_first, m.nsport, f.sport) else (0 if m.nsport == 0 else -1)
    n = _keep_best(cand, n, rank)
    return cand[0] if n > 0 else -1


cdef void _facts_addr(const sockaddr* sa, uint8_t* family, uint8_t* addr, uint16_t* port) noexcept nogil:
    """An accepted socket's address as the matcher compares it (a v4-mapped IPv6 address
    as the IPv4 one)."""
    cdef const uint8_t* a
    family[0] = 0
    if sa.sa_family == AF_INET:
        family[0] = 4
        memcpy(addr, &(<const sockaddr_in*>sa).sin_addr, 4)
        port[0] = ntohs((<const sockaddr_in*>sa).sin_port)
    elif sa.sa_family == AF_INET6:
        a = (<const sockaddr_in6*>sa).sin6_addr.s6_addr
        port[0] = ntohs((<const sockaddr_in6*>sa).sin6_port)
        if memcmp(a, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0:
            family[0] = 4
            memcpy(addr, a + 12, 4)
        else:
            family[0] = 6
            memcpy(addr, a, 16)


cdef class ChainTableHandle:
    """A listener's compiled filter_chain_match table (make_chain_table)."""
    cdef ChainTable* t

    def __dealloc__(self):
        chain_table_decref(self.t)

    def __len__(self):
        return self.t.nchains


cdef int _pack_cidr(InternalCidr* c, str text) except -1:
    import ipaddress
    net = ipaddress.ip_network(text, strict=False)
    packed = net.network_address.packed
    c.v6 = net.version == 6
    c.plen = net.prefixlen
    memset(c.addr, 0, 16)
    memcpy(c.addr, <const char*>packed, len(packed))
    return 0


def make_chain_table(list chains):
    """Compile filter chain matches. chains: one dict per chain, with keys dport (0: any),
    prefix_ranges and source_prefix_ranges (CIDR strings), server_names (lower case;
    "*.x" wildcards), transport ("" / "raw_buffer" / "tls" / another name),
    application_protocols (bytes), source_type ("ANY", "SAME_IP_OR_LOOPBACK",
    "EXTERNAL"), source_ports. The model has validated them."""
    cdef ChainTableHandle h = ChainTableHandle.__new__(ChainTableHandle)
    cdef ChainTable* t = <ChainTable*>calloc(1, sizeof(ChainTable))
    cdef int i, k, ncidr = 0, nstr = 0, nport = 0
    cdef size_t nchars = 0, off = 0
    cdef ChainMatch* m
    cdef bytes b
    if t == NULL:
        raise MemoryError()
    t.refcnt = 1
    h.t = t
    for c in chains:
        ncidr += len(c["prefix_ranges"]) + len(c["source_prefix_ranges"])
        nstr += len(c["server_names"]) + len(c["application_protocols"])
        nport += len(c["source_ports"])
        nchars += sum(len(s.encode()) for s in c["server_names"]) + sum(len(p) for p in c["application_protocols"])
    t.m = <ChainMatch*>calloc(max(1, len(chains)), sizeof(ChainMatch))
    t.cidrs = <InternalCidr*>calloc(max(1, ncidr), sizeof(InternalCidr))
    t.strs = <MatchStr*>calloc(max(1, nstr), sizeof(MatchStr))
    t.ports = <uint16_t*>calloc(max(1, nport), sizeof(uint16_t))
    t.chars = <char*>malloc(max(1, nchars))
    if t.m == NULL or t.cidrs == NULL or t.strs == NULL or t.ports == NULL or t.chars == NULL:
        raise MemoryError()
    t.nchains = len(chains)
    ncidr = nstr = nport = 0
    for i, c in enumerate(chains):
        m = &t.m[i]
        m.dport = c["dport"] or 0
        transport = c["transport"]
        m.transport = {"": TP_ANY, "raw_buffer": TP_RAW_BUFFER, "tls": TP_TLS}.get(transport, TP_OTHER)
        m.source_type = {"ANY": ST_ANY, "SAME_IP_OR_LOOPBACK": ST_LOCAL, "EXTERNAL": ST_EXTERNAL}[c["source_type"]]
        if m.dport or c["prefix_ranges"] or m.source_type != ST_ANY:
            t.needs_local = 1
        for key, is_src in (("prefix_ranges", False), ("source_prefix_ranges", True)):
            if is_src:
                m.src_first, m.nsrc = ncidr, len(c[key])
            else:
                m.dst_first, m.ndst = ncidr, len(c[key])
            for text in c[key]:
                _pack_cidr(&t.cidrs[ncidr], text)
                ncidr += 1
        m.sni_first, m.nsni = nstr, len(c["server_names"])
        for name in c["server_names"]:
            wildcard = name.startswith("*.")
            b = (name[1:] if wildcard else name).encode()
            t.strs[nstr].off = off
            t.strs[nstr].len = len(b)
            t.strs[nstr].wildcard = wildcard
            memcpy(t.chars + off, <const char*>b, len(b))
            off += len(b)
            nstr += 1
        m.alpn_first, m.nalpn = nstr, len(c["application_protocols"])
        for proto in c["application_protocols"]:
            b = bytes(proto)
            t.strs[nstr].off = off
            t.strs[nstr].len = len(b)
            memcpy(t.chars + off, <const char*>b, len(b))
            off += len(b)
            nstr += 1
        m.sport_first, m.nsport = nport, len(c["source_ports"])
        for port in c["source_ports"]:
            t.ports[nport] = port
            nport += 1
    return h


cdef int _pack_ip(str text, uint8_t* family, uint8_t* addr) except -1:
    import ipaddress
    ip = ipaddress.ip_address(text)
    packed = ip.packed
    family[0] = 4 if ip.version == 4 else 6
    memcpy(addr, <const char*>packed, len(packed))
    return 0


cdef int _facts_from_py(ConnFacts* f, dict conn, bytes sni, bytes alpn) except -1:
    import ipaddress
    memset(f, 0, sizeof(ConnFacts))
    _pack_ip(conn["local"][0], &f.dfamily, f.daddr)
    _pack_ip(conn["remote"][0], &f.sfamily, f.saddr)
    f.dport = conn["local"][1]
    f.sport = conn["remote"][1]
    f.is_local = conn["remote"][0] == conn["local"][0] or ipaddress.ip_address(conn["remote"][0]).is_loopback
    f.transport = TP_TLS if conn["transport"] == "tls" else TP_RAW_BUFFER
    f.sni = <const uint8_t*>sni
    f.sni_len = len(sni)
    f.alpn = <const uint8_t*>alpn if alpn else NULL
    f.alpn_len = len(alpn)
    return 0


def _chain_table_match(ChainTableHandle table, dict conn):
    """The index of the chain the workers pick for conn (fastproxy._testing): {"local":
    (ip, port), "remote": (ip, port), "transport": "tls" | "raw_buffer", "server_name":
    str, "application_protocols": [bytes]}; -1 for none."""
    cdef ConnFacts f
    cdef int* cand = <int*>malloc(max(1, table.t.nchains) * 2 * sizeof(int))
    cdef bytes sni = conn.get("server_name", "").lower().encode()
    cdef bytes alpn = b"".join(bytes([len(p)]) + p for p in conn.get("application_protocols", ()))
    if cand == NULL:
        raise MemoryError()
    try:
        _facts_from_py(&f, conn, sni, alpn)
        return chain_match(table.t, &f, cand, cand + table.t.nchains)
    finally:
        free(cand)


def _tls_hello_parse(bytes data):
    """What the inspector makes of a client's first bytes (fastproxy._testing): ("more",),
    ("too_large",), ("not_tls",) or ("tls", server name bytes or None, [ALPN protocol
    bytes] or None)."""
    cdef HelloInfo info
    cdef uint8_t* msg = <uint8_t*>malloc(TLS_MAX_HELLO_BODY + 4)
    cdef int r
    cdef size_t j
    if msg == NULL:
        raise MemoryError()
    try:
        r = tls_hello_parse(<const uint8_t*>data, len(data), msg, &info)
        if r == HELLO_MORE:
            return ("more",)
        if r == HELLO_NOT_TLS:
            return ("not_tls",)
        if r == HELLO_TOO_LARGE:
            return ("too_large",)
        sni = (<const char*>info.sni)[:info.sni_len] if info.sni != NULL else None
        alpn = None
        if info.alpn != NULL:
            alpn = []
            j = 0
            while j < info.alpn_len:
                alpn.append((<const char*>info.alpn)[j + 1:j + 1 + info.alpn[j]])
                j += 1 + info.alpn[j]
        return ("tls", sni, alpn)
    finally:
        free(msg)


# ---- the parent listener: accepting, inspecting, handing over ----

cdef void _pending_unlink(Worker* w, Pending* p) noexcept nogil:
    cdef ChainWorker* cw = chain_worker(w)
    timer_cancel(w, &p.timer)
    if p.prev != NULL:
        p.prev.next = p.next
    else:
        cw.pending = p.next
    if p.next != NULL:
        p.next.prev = p.prev
    cw.npending -= 1
    listener_conn_remove(w, p.cfg, &p.link)
    stat_sub(p.cfg.lstats, w, L_PRE_CX_ACTIVE, 1)


cdef void _pending_close(Worker* w, Pending* p) noexcept nogil:
    """The connection ends in its listener filter."""
    cdef ListenerCfg* cfg = p.cfg
    _pending_unlink(w, p)
    epoll_ctl(w.epfd, EPOLL_CTL_DEL, p.ep.fd, NULL)
    close(p.ep.fd)
    listener_cx_release(cfg)
    free(p)
    listener_cfg_decref(cfg)


cdef void _chain_close_unmatched(Worker* w, ListenerCfg* cfg, int fd) noexcept nogil:
    """No chain takes the connection and there is no default one (Envoy closes it and
    counts no_filter_chain_match)."""
    stat_add(cfg.lstats, w, L_NO_FILTER_CHAIN_MATCH, 1)
    close(fd)
    listener_cx_release(cfg)


cdef void _chain_select(Worker* w, ListenerCfg* cfg, int fd, const sockaddr* peer, uint8_t transport,
                        HelloInfo* hello) noexcept nogil:
    """Match the connection and start it on its chain (or close it). Owns fd and the
    connection's place in cfg.sock.active, as a ListenerCfg.start does."""
    cdef ChainSet* cs = cfg.chains
    cdef ChainWorker* cw = chain_worker(w)
    cdef ConnFacts f
    cdef sockaddr_storage local
    cdef socklen_t llen = sizeof(local)
    cdef int idx = -1, need, i
    cdef int* grown
    cdef ListenerCfg* chosen
    cdef size_t k
    memset(&f, 0, sizeof(ConnFacts))
    f.transport = transport
    _facts_addr(peer, &f.sfamily, f.saddr, &f.sport)
    if cs.table.needs_local and getsockname(fd, <sockaddr*>&local, &llen) == 0:
        _facts_addr(<sockaddr*>&local, &f.dfamily, f.daddr, &f.dport)
        f.is_local = _is_loopback(peer) or (f.dfamily == f.sfamily and memcmp(f.daddr, f.saddr, 16 if f.sfamily == 6 else 4) == 0)
    if hello != NULL and hello.sni != NULL:
        for k in range(hello.sni_len):      # server names compare in lower case
            cw.sni_lower[k] = hello.sni[k] + 32 if 65 <= hello.sni[k] <= 90 else hello.sni[k]
        f.sni = <const uint8_t*>cw.sni_lower
        f.sni_len = hello.sni_len
    if hello != NULL:
        f.alpn = hello.alpn
        f.alpn_len = hello.alpn_len
    need = 2 * cs.table.nchains
    if need > cw.cand_cap:
        grown = <int*>realloc(cw.cand, need * sizeof(int))
        if grown != NULL:
            cw.cand = grown
            cw.cand_cap = need
    if cs.table.nchains and need <= cw.cand_cap:
        idx = chain_match(cs.table, &f, cw.cand, cw.cand + cs.table.nchains)
    chosen = cs.chains[idx] if idx >= 0 else cs.dflt
    if chosen == NULL:
        _chain_close_unmatched(w, cfg, fd)
        return
    chosen.start(w, chosen, fd, peer)
    if fp_load_acquire_u64(&cfg.drain_end_ms):
        # The listener was retired while this connection was in its filter: its chain's
        # drain (stamped with the parent's) must cover it on this worker too.
        listener_drain_start(w, chosen)


cdef void _pending_done(Worker* w, Pending* p, uint8_t transport, HelloInfo* hello) noexcept nogil:
    """The listener filter is done: out of epoll, on to the chain."""
    cdef ListenerCfg* cfg = p.cfg
    cdef sockaddr_storage peer = p.peer
    cdef int fd = p.ep.fd
    _pending_unlink(w, p)
    epoll_ctl(w.epfd, EPOLL_CTL_DEL, fd, NULL)
    free(p)
    _chain_select(w, cfg, fd, <sockaddr*>&peer, transport, hello)
    listener_cfg_decref(cfg)            # (the chains live while cfg does)


cdef void _pending_inspect(Worker* w, Pending* p, bint hup) noexcept nogil:
    """Peek at what the client sent so far (Envoy's tls_inspector)."""
    cdef ChainWorker* cw = chain_worker(w)
    cdef StatBlock* st = p.cfg.chains.istats
    cdef HelloInfo hello
    cdef ssize_t n = recv(p.ep.fd, cw.peek_buf, TLS_MAX_CLIENT_HELLO, MSG_PEEK)
    cdef int r
    cdef int rcvbuf = 4 * TLS_MAX_CLIENT_HELLO
    if n < 0:
        if errno == EAGAIN or errno == EINTR:
            return
        _pending_close(w, p)
        return
    if n == 0:                          # closed before it sent anything
        _pending_close(w, p)
        return
    if <size_t>n == p.peeked and not hup:
        return                          # nothing new
    p.peeked = n
    r = tls_hello_parse(cw.peek_buf, n, cw.msg_buf, &hello)
    if r == HELLO_MORE or r == HELLO_TOO_LARGE:
        if r == HELLO_TOO_LARGE or n >= TLS_MAX_CLIENT_HELLO:
            if st != NULL:
                stat_add(st, w, TI_CLIENT_HELLO_TOO_LARGE, 1)
            _pending_close(w, p)
        elif hup:                       # the peer sends no more: it can never complete
            _pending_close(w, p)
        elif n >= TLS_MAX_CLIENT_HELLO // 2 and not p.rcvbuf_raised:
            # Nothing is read, so the kernel's window does not grow: 64 KiB unread may not
            # fit. Only a ClientHello in tiny records gets this far (a real one is < 17 KiB);
            # room for the whole limit lets it reach client_hello_too_large, not the timeout.
            p.rcvbuf_raised = 1
            setsockopt(p.ep.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(int))
        return
    if r == HELLO_NOT_TLS:
        if st != NULL:
            stat_add(st, w, TI_TLS_NOT_FOUND, 1)
        _pending_done(w, p, TP_RAW_BUFFER, NULL)
        return
    if st != NULL:
        stat_add(st, w, TI_TLS_FOUND, 1)
        stat_add(st, w, TI_SNI_FOUND if hello.sni != NULL else TI_SNI_NOT_FOUND, 1)
        stat_add(st, w, TI_ALPN_FOUND if hello.alpn != NULL else TI_ALPN_NOT_FOUND, 1)
    _pending_done(w, p, TP_TLS, &hello)


cdef void _pending_on_event(Worker* w, Endp* ep, uint32_t events) noexcept nogil:
    _pending_inspect(w, <Pending*>ep.owner, (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0)


cdef void _pending_timeout(Worker* w, void* arg) noexcept nogil:
    """listener_filters_timeout: close (Envoy's default) or go on as not TLS
    (continue_on_listener_filters_timeout)."""
    cdef Pending* p = <Pending*>arg
    stat_add(p.cfg.lstats, w, L_PRE_CX_TIMEOUT, 1)
    if p.cfg.chains.continue_on_timeout:
        _pending_done(w, p, TP_RAW_BUFFER, NULL)
    else:
        _pending_close(w, p)


cdef void _pending_drain_end(void* owner) noexcept nogil:
    """Its listener's drain is over (a retired version): it goes with the rest."""
    cdef Pending* p = <Pending*>owner
    _pending_close(p.w, p)


cdef void chain_listener_start(Worker* w, ListenerCfg* cfg, int fd, const sockaddr* peer) noexcept nogil:
    """The start of a listener with filter chains (see the top of this file)."""
    cdef ChainSet* cs = cfg.chains
    cdef ChainWorker* cw = chain_worker(w)
    cdef Pending* p
    cdef epoll_event ev
    if not cs.inspect_tls:
        _chain_select(w, cfg, fd, peer, TP_RAW_BUFFER, NULL)
        return
    if cw.npending >= PENDING_MAX_PER_WORKER:
        stat_add(cfg.lstats, w, L_CX_OVERFLOW, 1)
        close(fd)
        listener_cx_release(cfg)
        return
    p = <Pending*>calloc(1, sizeof(Pending))
    if p == NULL:
        close(fd)
        listener_cx_release(cfg)
        return
    fp_atomic_add_int(&cfg.refcnt, 1)
    p.cfg = cfg
    p.w = w
    p.ep.on_event = _pending_on_event
    p.ep.fd = fd
    p.ep.owner = p
    memcpy(&p.peer, peer, sizeof(sockaddr_in6) if peer.sa_family == AF_INET6 else sizeof(sockaddr_in))
    timer_init(&p.timer, _pending_timeout, p)
    p.next = cw.pending
    if p.next != NULL:
        p.next.prev = p
    cw.pending = p
    cw.npending += 1
    listener_conn_add(w, cfg, &p.link, p, _pending_drain_end)
    stat_add(cfg.lstats, w, L_PRE_CX_ACTIVE, 1)
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET
    ev.data.ptr = &p.ep
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        _pending_close(w, p)
        return
    if cs.timeout_ms and timer_arm(w, &p.timer, cs.timeout_ms) < 0:
        _pending_close(w, p)
        return
    _pending_inspect(w, p, False)       # the ClientHello often came with the connection


# ---- per-worker state ----

cdef void _chains_teardown(Worker* w, void* arg) noexcept nogil:
    cdef ChainWorker* cw = chain_worker(w)
    while cw.pending != NULL:
        _pending_close(w, cw.pending)


cdef int _chains_worker_init(Worker* w) noexcept nogil:
    cdef ChainWorker* cw = <ChainWorker*>calloc(1, sizeof(ChainWorker))
    if cw == NULL:
        return -1
    w.state[_CHAINS_SLOT] = cw
    cw.peek_buf = <uint8_t*>malloc(TLS_MAX_CLIENT_HELLO)
    cw.msg_buf = <uint8_t*>malloc(TLS_MAX_HELLO_BODY + 4)
    if cw.peek_buf == NULL or cw.msg_buf == NULL:
        return -1
    return worker_add_teardown(w, _chains_teardown, NULL)


cdef void _chains_worker_fini(Worker* w) noexcept nogil:
    cdef ChainWorker* cw = chain_worker(w)
    if cw != NULL:
        free(cw.peek_buf)
        free(cw.msg_buf)
        free(cw.cand)
        free(cw)
    w.state[_CHAINS_SLOT] = NULL


_CHAINS_SLOT = worker_subsystem_add(_chains_worker_init, _chains_worker_fini, NULL)
stat_kind_add("tls_inspector", TLS_INSPECTOR_STATS, TLS_INSPECTOR_GAUGES)


cdef void chain_set_free(ChainSet* cs) noexcept nogil:
    cdef int i
    if cs == NULL:
        return
    for i in range(cs.nchains):
        listener_cfg_decref(cs.chains[i])
    listener_cfg_decref(cs.dflt)
    chain_table_decref(cs.table)
    statblock_decref(cs.istats)
    free(cs.chains)
    free(cs)


cdef void chain_set_drain_start(Worker* w, ChainSet* cs) noexcept nogil:
    """The parent leaves w's listener set: each chain's connections there drain."""
    cdef int i
    for i in range(cs.nchains):
        listener_drain_start(w, cs.chains[i])
    if cs.dflt != NULL:
        listener_drain_start(w, cs.dflt)
