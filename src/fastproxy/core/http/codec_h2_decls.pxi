# The HTTP/2 codec's declarations shared by its server side (codec_h2_server.pxi) and its
# client side (codec_h2_client.pxi): the compiled http2_protocol_options (H2Options), one
# per HTTP connection manager (HttpCfg.h2) and one per cluster that speaks HTTP/2
# (ClusterParams.h2). Python fills every field (fastproxy.http.model.Http2ProtocolOptions
# holds Envoy's defaults, .to_spec() gives the dict); the core never invents a default.

cdef struct H2Options:
    uint32_t hpack_table_size                       # SETTINGS_HEADER_TABLE_SIZE we announce
    uint32_t max_concurrent_streams                 # SETTINGS_MAX_CONCURRENT_STREAMS we announce
    uint32_t initial_stream_window_size             # SETTINGS_INITIAL_WINDOW_SIZE we announce
    uint32_t initial_connection_window_size         # our connection window (a WINDOW_UPDATE on 0)
    uint32_t max_outbound_frames                    # queued, not yet written: GOAWAY above it
    uint32_t max_outbound_control_frames            # ... of PING, SETTINGS and RST_STREAM
    uint32_t max_consecutive_inbound_frames_with_empty_payload
    uint32_t max_inbound_priority_frames_per_stream
    uint32_t max_inbound_window_update_frames_per_data_frame_sent
    uint8_t override_stream_error_on_invalid_http_message   # 1: reset the stream, not the connection
    uint8_t allow_connect                           # extended CONNECT (RFC 8441)
    uint64_t keepalive_interval_ms                  # connection_keepalive.interval; 0: no PINGs
    uint64_t keepalive_timeout_ms                   # connection_keepalive.timeout
    uint32_t keepalive_interval_jitter_pct          # connection_keepalive.interval_jitter, percent
    uint64_t keepalive_idle_interval_ms             # connection_keepalive.connection_idle_interval; 0: none


cdef int h2_options_compile(dict spec, H2Options* o) except -1:
    """spec: Http2ProtocolOptions.to_spec() (every key present; a missing one is a bug of
    the caller, so KeyError)."""
    memset(o, 0, sizeof(H2Options))
    o.hpack_table_size = spec["hpack_table_size"]
    o.max_concurrent_streams = spec["max_concurrent_streams"]
    o.initial_stream_window_size = spec["initial_stream_window_size"]
    o.initial_connection_window_size = spec["initial_connection_window_size"]
    o.max_outbound_frames = spec["max_outbound_frames"]
    o.max_outbound_control_frames = spec["max_outbound_control_frames"]
    o.max_consecutive_inbound_frames_with_empty_payload = \
        spec["max_consecutive_inbound_frames_with_empty_payload"]
    o.max_inbound_priority_frames_per_stream = spec["max_inbound_priority_frames_per_stream"]
    o.max_inbound_window_update_frames_per_data_frame_sent = \
        spec["max_inbound_window_update_frames_per_data_frame_sent"]
    o.override_stream_error_on_invalid_http_message = spec["override_stream_error_on_invalid_http_message"]
    o.allow_connect = spec["allow_connect"]
    o.keepalive_interval_ms = spec["keepalive_interval_ms"]
    o.keepalive_timeout_ms = spec["keepalive_timeout_ms"]
    o.keepalive_interval_jitter_pct = spec["keepalive_interval_jitter_pct"]
    o.keepalive_idle_interval_ms = spec["keepalive_idle_interval_ms"]
    return 0
