# The HTTP/2 codec's plumbing shared by its server side (codec_h2_server.pxi) and its client
# side (codec_h2_client.pxi): nghttp2 options and SETTINGS from H2Options, field lists to
# nghttp2_nv arrays (names lowercased, connection-specific fields dropped), and the flood
# accounting that bounds what one peer can make a connection queue or process.
#
# nghttp2 never calls back into the connection manager: its callbacks only record what
# happened in the codec's own structures, and the codec hands the events over after
# nghttp2_session_mem_recv / nghttp2_session_send have returned (a callback that closed the
# connection would free the session under nghttp2's feet).

DEF H2_FRAME_HEADER = 9
DEF H2_STREAM_RESET_BURST = 1000    # nghttp2's rapid-reset limit (CVE-2023-44487): its own
DEF H2_STREAM_RESET_RATE = 33       #   defaults, set explicitly so they do not move under us
DEF H2_MAX_CONTINUATIONS = 512      # CONTINUATION frames per header block (Envoy 1.40 takes 512)
DEF H2_MAX_SETTINGS = 32            # entries per SETTINGS frame (nghttp2's default)


cdef nghttp2_option* h2_option_new(const H2Options* o) noexcept nogil:
    """The nghttp2_option for a session under `o`; NULL: no memory."""
    cdef nghttp2_option* opt = NULL
    if nghttp2_option_new(&opt) != 0:
        return NULL
    # A stream's window reopens only as its receiver takes the bytes (HTTP/2 flow control
    # is the stream's watermark: a slow reader stops its own stream, not the connection).
    nghttp2_option_set_no_auto_window_update(opt, 1)
    nghttp2_option_set_stream_reset_rate_limit(opt, H2_STREAM_RESET_BURST, H2_STREAM_RESET_RATE)
    nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS)
    # PING and SETTINGS ACKs nghttp2 queues for a peer that does not read: Envoy bounds them
    # with max_outbound_control_frames too.
    nghttp2_option_set_max_outbound_ack(opt, o.max_outbound_control_frames)
    nghttp2_option_set_max_settings(opt, H2_MAX_SETTINGS)
    # No closed streams kept (they serve RFC 7540 priorities only): frames for a stream that
    # is over are then ignored, as Envoy's nghttp2 ignores them, not a connection error.
    nghttp2_option_set_no_closed_streams(opt, 1)
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, o.hpack_table_size)
    return opt


cdef int h2_submit_settings(nghttp2_session* session, const H2Options* o, bint server) noexcept nogil:
    """Our SETTINGS (Envoy's: table size, concurrent streams, stream window; push off for a
    client) and the connection window. <0: nghttp2's error."""
    cdef nghttp2_settings_entry iv[4]
    cdef size_t n = 0
    cdef int rv
    iv[n].settings_id = NGHTTP2_SETTINGS_HEADER_TABLE_SIZE
    iv[n].value = o.hpack_table_size
    n += 1
    iv[n].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
    iv[n].value = o.max_concurrent_streams
    n += 1
    iv[n].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
    iv[n].value = o.initial_stream_window_size
    n += 1
    if not server:
        iv[n].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[n].value = 0
        n += 1
    rv = nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, iv, n)
    if rv != 0:
        return rv
    if o.initial_connection_window_size > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE:
        rv = nghttp2_session_set_local_window_size(session, NGHTTP2_FLAG_NONE, 0,
                                                   <int32_t>o.initial_connection_window_size)
    return rv


cdef inline bint h2_connection_specific(const char* name, size_t n) noexcept nogil:
    """A field HTTP/2 forbids (RFC 9113 8.2.2): a peer treats a message with one as malformed."""
    return (_ieq(name, n, "connection") or _ieq(name, n, "keep-alive")
            or _ieq(name, n, "proxy-connection") or _ieq(name, n, "transfer-encoding")
            or _ieq(name, n, "upgrade"))


cdef struct H2Nv:                   # an nghttp2_nv array and the lowercased names it points at
    nghttp2_nv* nv
    size_t n
    char* names


cdef void h2_nv_free(H2Nv* a) noexcept nogil:
    free(a.nv)
    free(a.names)
    a.nv = NULL
    a.names = NULL
    a.n = 0


cdef int h2_nv_from_pairs(H2Nv* a, const FieldPair* first, size_t nfirst, PairList* l,
                          bint keep_te_trailers) noexcept nogil:
    """nfirst pseudo-header pairs, then l's fields: names lowercased (HTTP/2 field names are
    lowercase; an HTTP/1 peer's are not), connection-specific fields and `te` (but
    `te: trailers` when keep_te_trailers) dropped, empty names skipped. Values are the
    callers' (nghttp2 copies both when the frame is submitted). -1: no memory."""
    cdef size_t total = nfirst + (l.n if l != NULL else 0)
    cdef size_t names_len = 0
    cdef size_t i, k, off = 0
    cdef const FieldPair* f
    cdef nghttp2_nv* v
    a.n = 0
    a.nv = <nghttp2_nv*>malloc((total + 1) * sizeof(nghttp2_nv))
    a.names = NULL
    if a.nv == NULL:
        return -1
    if l != NULL:
        for i in range(l.n):
            names_len += l.v[i].name.n
    a.names = <char*>malloc(names_len + 1)
    if a.names == NULL:
        free(a.nv)
        a.nv = NULL
        return -1
    for i in range(total):
        f = &first[i] if i < nfirst else &l.v[i - nfirst]
        if f.name.n == 0:
            continue
        if i >= nfirst:
            if h2_connection_specific(f.name.p, f.name.n):
                continue
            if _ieq(f.name.p, f.name.n, "te") and not (keep_te_trailers and _ieq(f.value.p, f.value.n, "trailers")):
                continue
        v = &a.nv[a.n]
        if i < nfirst:
            v.name = <uint8_t*>f.name.p
        else:
            for k in range(f.name.n):
                a.names[off + k] = <char>_lower(<unsigned char>f.name.p[k])
            v.name = <uint8_t*>(a.names + off)
            off += f.name.n
        v.namelen = f.name.n
        v.value = <uint8_t*>f.value.p
        v.valuelen = f.value.n
        v.flags = NGHTTP2_NV_FLAG_NONE
        a.n += 1
    return 0


cdef inline unsigned char _lower(unsigned char ch) noexcept nogil:
    return ch + 32 if 65 <= ch <= 90 else ch


cdef int h2_head_append(HttpHead* h, const uint8_t* p, size_t n, uint32_t* off) noexcept nogil:
    """Append n bytes to a head being built from HEADERS (a pseudo-header's value), their
    offset in *off. -1: no memory or too long."""
    cdef size_t need = <size_t>h.len + n
    if need > 0xFFFFFFF0u or _head_reserve(h, need) < 0:
        return -1
    memcpy(h.buf + h.len, p, n)
    off[0] = h.len
    h.len = <uint32_t>need
    h.buf[h.len] = 0
    return 0


# ---------------------------------------------------------------- flood accounting
# ============================================================================================
# FLOOD ACCOUNTING (handoff: from H2S's "handoff" commit on, the ABUSE helper may edit this
# section, between this banner and the END banner; H2S keeps the rest of the file).
# What one peer can make a connection queue or process is bounded as Envoy bounds it
# (Http2ProtocolOptions): frames queued for a peer that does not read (max_outbound_frames,
# max_outbound_control_frames), runs of frames without payload, PRIORITY frames per stream,
# WINDOW_UPDATEs per DATA frame sent. Past a limit the connection ends with GOAWAY
# ENHANCE_YOUR_CALM and the flood is counted (http2.*_flood). The counters live in H2Flood,
# one per connection; the codec calls the h2_flood_* hooks below.
# ============================================================================================

cdef struct H2Flood:
    uint32_t out_frames             # frames put into out_buf since it was last empty
    uint32_t out_control            # ... of them PING, SETTINGS and RST_STREAM
    uint32_t empty_run              # consecutive inbound frames without payload
    uint64_t priority_frames        # inbound PRIORITY frames
    uint64_t window_updates         # inbound WINDOW_UPDATE frames
    uint64_t data_frames_sent       # outbound DATA frames
    uint64_t open_streams           # inbound streams open now (not every stream ever opened:
                                    #   Envoy 1.40's limits grow with the open ones, measured)


cdef enum:                          # h2_flood_*: which limit a peer went past (0: none)
    H2F_NONE = 0
    H2F_OUTBOUND = 1
    H2F_OUTBOUND_CONTROL = 2
    H2F_EMPTY = 3
    H2F_PRIORITY = 4
    H2F_WINDOW_UPDATE = 5


cdef inline void h2_flood_out_drained(H2Flood* f) noexcept nogil:
    """out_buf was written out entirely: nothing of ours is queued in it."""
    f.out_frames = 0
    f.out_control = 0


cdef inline void h2_flood_stream_open(H2Flood* f) noexcept nogil:
    """A request stream began (nghttp2's on_begin_headers)."""
    f.open_streams += 1


cdef inline void h2_flood_stream_closed(H2Flood* f) noexcept nogil:
    """A stream h2_flood_stream_open counted has closed (nghttp2's on_stream_close)."""
    if f.open_streams:
        f.open_streams -= 1


cdef int h2_flood_frame_sent(H2Flood* f, const H2Options* o, const nghttp2_frame* frame,
                             size_t nghttp2_queued) noexcept nogil:
    """A frame went into out_buf (nghttp2's on_frame_send); nghttp2_queued: the frames
    nghttp2 still holds. H2F_* when that is past a limit."""
    cdef uint8_t t = frame.hd.type
    f.out_frames += 1
    if t == NGHTTP2_DATA:
        f.data_frames_sent += 1
    if t == NGHTTP2_PING or t == NGHTTP2_SETTINGS or t == NGHTTP2_RST_STREAM:
        f.out_control += 1
        if f.out_control > o.max_outbound_control_frames:
            return H2F_OUTBOUND_CONTROL
    if f.out_frames + nghttp2_queued > o.max_outbound_frames:
        return H2F_OUTBOUND
    return H2F_NONE


cdef inline int _h2_flood_payload(H2Flood* f, const H2Options* o, size_t payload, bint end_stream) noexcept nogil:
    """Envoy's run of frames with an empty payload (padding aside) and no END_STREAM: a
    peer can make a proxy wake for each without ever sending a byte of content."""
    if payload == 0 and not end_stream:
        f.empty_run += 1
        if f.empty_run > o.max_consecutive_inbound_frames_with_empty_payload:
            return H2F_EMPTY
    else:
        f.empty_run = 0
    return H2F_NONE


cdef int h2_flood_frame_begin(H2Flood* f, const H2Options* o, const nghttp2_frame_hd* hd) noexcept nogil:
    """An inbound frame header (nghttp2's on_begin_frame), before its payload: the only
    callback some frames get (CONTINUATION, frames for closed streams). HEADERS and DATA are
    counted on receipt (h2_flood_frame_recv: their padding is known then), as Envoy does.
    H2F_* when past a limit."""
    cdef uint8_t t = hd.type
    if t == NGHTTP2_CONTINUATION:
        return _h2_flood_payload(f, o, hd.length, False)
    if t == NGHTTP2_PRIORITY:
        f.priority_frames += 1
        if f.priority_frames > <uint64_t>o.max_inbound_priority_frames_per_stream * (1 + f.open_streams):
            return H2F_PRIORITY
    elif t == NGHTTP2_WINDOW_UPDATE:
        # Envoy 1.40 (measured): past 5 + 2 x (open streams + the allowance per DATA frame
        # sent x DATA frames sent); a fresh connection takes 5.
        f.window_updates += 1
        if f.window_updates > 5 + 2 * (f.open_streams +
                                       <uint64_t>o.max_inbound_window_update_frames_per_data_frame_sent
                                       * f.data_frames_sent):
            return H2F_WINDOW_UPDATE
    return H2F_NONE


cdef int h2_flood_frame_recv(H2Flood* f, const H2Options* o, const nghttp2_frame* frame) noexcept nogil:
    """An inbound HEADERS or DATA frame (nghttp2's on_frame_recv; the other types are
    counted by h2_flood_frame_begin). H2F_* when past a limit."""
    cdef uint8_t t = frame.hd.type
    cdef bint end_stream = (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0
    if t == NGHTTP2_DATA:
        return _h2_flood_payload(f, o, frame.hd.length - frame.data.padlen, end_stream)
    if t == NGHTTP2_HEADERS:
        return _h2_flood_payload(f, o, frame.hd.length - frame.headers.padlen, end_stream)
    return H2F_NONE


cdef int h2_flood_stat(int kind) noexcept nogil:
    """The http2.* counter of a flood kind."""
    if kind == H2F_OUTBOUND:
        return H2_OUTBOUND_FLOOD
    if kind == H2F_OUTBOUND_CONTROL:
        return H2_OUTBOUND_CONTROL_FLOOD
    if kind == H2F_EMPTY:
        return H2_INBOUND_EMPTY_FRAMES_FLOOD
    if kind == H2F_PRIORITY:
        return H2_INBOUND_PRIORITY_FRAMES_FLOOD
    return H2_INBOUND_WINDOW_UPDATE_FRAMES_FLOOD

# ============================================================================================
# END OF THE FLOOD ACCOUNTING SECTION
# ============================================================================================
