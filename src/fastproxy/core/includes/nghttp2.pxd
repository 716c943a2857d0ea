# nghttp2 (the system's libnghttp2; Debian's libnghttp2-dev, 1.52 with the rapid-reset and
# CONTINUATION-flood limits backported) as the core calls it: one nghttp2_session per HTTP/2
# connection, driven from the worker loop without the GIL. The session never touches a
# socket: bytes read are handed to nghttp2_session_mem_recv, and what it wants to send is
# taken with nghttp2_session_mem_send (or the send callback) into the connection's out_buf.
# Only the names the codecs use are declared; callbacks are C functions declared noexcept.
from libc.stdint cimport uint8_t, uint32_t, int32_t, int64_t, uint64_t
from libc.stddef cimport size_t
from fastproxy.core.includes.system cimport ssize_t

cdef extern from "<nghttp2/nghttp2.h>" nogil:
    ctypedef struct nghttp2_session
    ctypedef struct nghttp2_option
    ctypedef struct nghttp2_session_callbacks
    ctypedef struct nghttp2_hd_deflater
    ctypedef struct nghttp2_hd_inflater
    ctypedef struct nghttp2_stream

    const char* NGHTTP2_CLIENT_MAGIC
    enum: NGHTTP2_CLIENT_MAGIC_LEN
    enum: NGHTTP2_DEFAULT_WEIGHT
    enum: NGHTTP2_INITIAL_WINDOW_SIZE
    enum: NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE
    enum: NGHTTP2_DEFAULT_HEADER_TABLE_SIZE
    enum: NGHTTP2_MAX_WINDOW_SIZE
    enum: NGHTTP2_INITIAL_MAX_CONCURRENT_STREAMS

    ctypedef enum nghttp2_error:
        NGHTTP2_ERR_INVALID_ARGUMENT
        NGHTTP2_ERR_BUFFER_ERROR
        NGHTTP2_ERR_UNSUPPORTED_VERSION
        NGHTTP2_ERR_WOULDBLOCK
        NGHTTP2_ERR_PROTO
        NGHTTP2_ERR_INVALID_FRAME
        NGHTTP2_ERR_EOF
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE
        NGHTTP2_ERR_STREAM_CLOSED
        NGHTTP2_ERR_STREAM_CLOSING
        NGHTTP2_ERR_STREAM_SHUT_WR
        NGHTTP2_ERR_INVALID_STREAM_ID
        NGHTTP2_ERR_INVALID_STREAM_STATE
        NGHTTP2_ERR_DEFERRED_DATA_EXIST
        NGHTTP2_ERR_START_STREAM_NOT_ALLOWED
        NGHTTP2_ERR_GOAWAY_ALREADY_SENT
        NGHTTP2_ERR_INVALID_HEADER_BLOCK
        NGHTTP2_ERR_INVALID_STATE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_ERR_FRAME_SIZE_ERROR
        NGHTTP2_ERR_HEADER_COMP
        NGHTTP2_ERR_FLOW_CONTROL
        NGHTTP2_ERR_INSUFF_BUFSIZE
        NGHTTP2_ERR_PAUSE
        NGHTTP2_ERR_TOO_MANY_INFLIGHT_SETTINGS
        NGHTTP2_ERR_PUSH_DISABLED
        NGHTTP2_ERR_DATA_EXIST
        NGHTTP2_ERR_SESSION_CLOSING
        NGHTTP2_ERR_HTTP_HEADER
        NGHTTP2_ERR_HTTP_MESSAGING
        NGHTTP2_ERR_REFUSED_STREAM
        NGHTTP2_ERR_INTERNAL
        NGHTTP2_ERR_CANCEL
        NGHTTP2_ERR_SETTINGS_EXPECTED
        NGHTTP2_ERR_TOO_MANY_SETTINGS
        NGHTTP2_ERR_FATAL
        NGHTTP2_ERR_NOMEM
        NGHTTP2_ERR_CALLBACK_FAILURE
        NGHTTP2_ERR_BAD_CLIENT_MAGIC
        NGHTTP2_ERR_FLOODED

    ctypedef enum nghttp2_error_code:
        NGHTTP2_NO_ERROR
        NGHTTP2_PROTOCOL_ERROR
        NGHTTP2_INTERNAL_ERROR
        NGHTTP2_FLOW_CONTROL_ERROR
        NGHTTP2_SETTINGS_TIMEOUT
        NGHTTP2_STREAM_CLOSED
        NGHTTP2_FRAME_SIZE_ERROR
        NGHTTP2_REFUSED_STREAM
        NGHTTP2_CANCEL
        NGHTTP2_COMPRESSION_ERROR
        NGHTTP2_CONNECT_ERROR
        NGHTTP2_ENHANCE_YOUR_CALM
        NGHTTP2_INADEQUATE_SECURITY
        NGHTTP2_HTTP_1_1_REQUIRED

    ctypedef enum nghttp2_frame_type:
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_PRIORITY
        NGHTTP2_RST_STREAM
        NGHTTP2_SETTINGS
        NGHTTP2_PUSH_PROMISE
        NGHTTP2_PING
        NGHTTP2_GOAWAY
        NGHTTP2_WINDOW_UPDATE
        NGHTTP2_CONTINUATION

    ctypedef enum nghttp2_flag:
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_FLAG_END_HEADERS
        NGHTTP2_FLAG_ACK
        NGHTTP2_FLAG_PADDED
        NGHTTP2_FLAG_PRIORITY

    ctypedef enum nghttp2_settings_id:
        NGHTTP2_SETTINGS_HEADER_TABLE_SIZE
        NGHTTP2_SETTINGS_ENABLE_PUSH
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        NGHTTP2_SETTINGS_MAX_FRAME_SIZE
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL
        NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES

    ctypedef enum nghttp2_headers_category:
        NGHTTP2_HCAT_REQUEST
        NGHTTP2_HCAT_RESPONSE
        NGHTTP2_HCAT_PUSH_RESPONSE
        NGHTTP2_HCAT_HEADERS

    ctypedef enum nghttp2_nv_flag:
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_NV_FLAG_NO_INDEX
        NGHTTP2_NV_FLAG_NO_COPY_NAME
        NGHTTP2_NV_FLAG_NO_COPY_VALUE

    ctypedef enum nghttp2_data_flag:
        NGHTTP2_DATA_FLAG_NONE
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_DATA_FLAG_NO_END_STREAM
        NGHTTP2_DATA_FLAG_NO_COPY

    ctypedef enum nghttp2_stream_proto_state:
        NGHTTP2_STREAM_STATE_IDLE
        NGHTTP2_STREAM_STATE_OPEN
        NGHTTP2_STREAM_STATE_RESERVED_LOCAL
        NGHTTP2_STREAM_STATE_RESERVED_REMOTE
        NGHTTP2_STREAM_STATE_HALF_CLOSED_LOCAL
        NGHTTP2_STREAM_STATE_HALF_CLOSED_REMOTE
        NGHTTP2_STREAM_STATE_CLOSED

    ctypedef struct nghttp2_nv:
        uint8_t* name
        uint8_t* value
        size_t namelen
        size_t valuelen
        uint8_t flags

    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags
        uint8_t reserved

    ctypedef struct nghttp2_priority_spec:
        int32_t stream_id
        int32_t weight
        uint8_t exclusive

    ctypedef struct nghttp2_data:
        nghttp2_frame_hd hd
        size_t padlen

    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        size_t padlen
        nghttp2_priority_spec pri_spec
        nghttp2_nv* nva
        size_t nvlen
        nghttp2_headers_category cat

    ctypedef struct nghttp2_priority:
        nghttp2_frame_hd hd
        nghttp2_priority_spec pri_spec

    ctypedef struct nghttp2_rst_stream:
        nghttp2_frame_hd hd
        uint32_t error_code

    ctypedef struct nghttp2_settings:
        nghttp2_frame_hd hd
        size_t niv
        nghttp2_settings_entry* iv

    ctypedef struct nghttp2_ping:
        nghttp2_frame_hd hd
        uint8_t opaque_data[8]

    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code
        uint8_t* opaque_data
        size_t opaque_data_len
        uint8_t reserved

    ctypedef struct nghttp2_window_update:
        nghttp2_frame_hd hd
        int32_t window_size_increment
        uint8_t reserved

    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_data data
        nghttp2_headers headers
        nghttp2_priority priority
        nghttp2_rst_stream rst_stream
        nghttp2_settings settings
        nghttp2_ping ping
        nghttp2_goaway goaway
        nghttp2_window_update window_update

    ctypedef union nghttp2_data_source:
        int fd
        void* ptr

    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
        uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept

    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback

    ctypedef ssize_t (*nghttp2_send_callback)(nghttp2_session* session, const uint8_t* data,
                                              size_t length, int flags, void* user_data) noexcept
    ctypedef int (*nghttp2_send_data_callback)(nghttp2_session* session, nghttp2_frame* frame,
                                               const uint8_t* framehd, size_t length,
                                               nghttp2_data_source* source, void* user_data) noexcept
    ctypedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session* session,
                                                   const nghttp2_frame* frame, void* user_data) noexcept
    ctypedef int (*nghttp2_on_invalid_frame_recv_callback)(nghttp2_session* session,
                                                           const nghttp2_frame* frame, int lib_error_code,
                                                           void* user_data) noexcept
    ctypedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session* session, uint8_t flags,
                                                        int32_t stream_id, const uint8_t* data,
                                                        size_t len, void* user_data) noexcept
    ctypedef int (*nghttp2_before_frame_send_callback)(nghttp2_session* session,
                                                       const nghttp2_frame* frame, void* user_data) noexcept
    ctypedef int (*nghttp2_on_frame_send_callback)(nghttp2_session* session,
                                                   const nghttp2_frame* frame, void* user_data) noexcept
    ctypedef int (*nghttp2_on_frame_not_send_callback)(nghttp2_session* session,
                                                       const nghttp2_frame* frame, int lib_error_code,
                                                       void* user_data) noexcept
    ctypedef int (*nghttp2_on_stream_close_callback)(nghttp2_session* session, int32_t stream_id,
                                                     uint32_t error_code, void* user_data) noexcept
    ctypedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session* session,
                                                      const nghttp2_frame* frame, void* user_data) noexcept
    ctypedef int (*nghttp2_on_header_callback)(nghttp2_session* session, const nghttp2_frame* frame,
                                               const uint8_t* name, size_t namelen,
                                               const uint8_t* value, size_t valuelen, uint8_t flags,
                                               void* user_data) noexcept
    ctypedef int (*nghttp2_on_invalid_header_callback)(nghttp2_session* session,
                                                       const nghttp2_frame* frame,
                                                       const uint8_t* name, size_t namelen,
                                                       const uint8_t* value, size_t valuelen,
                                                       uint8_t flags, void* user_data) noexcept
    ctypedef int (*nghttp2_on_begin_frame_callback)(nghttp2_session* session,
                                                    const nghttp2_frame_hd* hd, void* user_data) noexcept
    ctypedef int (*nghttp2_error_callback2)(nghttp2_session* session, int lib_error_code,
                                            const char* msg, size_t len, void* user_data) noexcept

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks** callbacks_ptr)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks* callbacks)
    void nghttp2_session_callbacks_set_send_callback(nghttp2_session_callbacks* cbs, nghttp2_send_callback cb)
    void nghttp2_session_callbacks_set_send_data_callback(nghttp2_session_callbacks* cbs, nghttp2_send_data_callback cb)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks* cbs, nghttp2_on_frame_recv_callback cb)
    void nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(nghttp2_session_callbacks* cbs, nghttp2_on_invalid_frame_recv_callback cb)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks* cbs, nghttp2_on_data_chunk_recv_callback cb)
    void nghttp2_session_callbacks_set_before_frame_send_callback(nghttp2_session_callbacks* cbs, nghttp2_before_frame_send_callback cb)
    void nghttp2_session_callbacks_set_on_frame_send_callback(nghttp2_session_callbacks* cbs, nghttp2_on_frame_send_callback cb)
    void nghttp2_session_callbacks_set_on_frame_not_send_callback(nghttp2_session_callbacks* cbs, nghttp2_on_frame_not_send_callback cb)
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks* cbs, nghttp2_on_stream_close_callback cb)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks* cbs, nghttp2_on_begin_headers_callback cb)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks* cbs, nghttp2_on_header_callback cb)
    void nghttp2_session_callbacks_set_on_invalid_header_callback(nghttp2_session_callbacks* cbs, nghttp2_on_invalid_header_callback cb)
    void nghttp2_session_callbacks_set_on_begin_frame_callback(nghttp2_session_callbacks* cbs, nghttp2_on_begin_frame_callback cb)
    void nghttp2_session_callbacks_set_error_callback2(nghttp2_session_callbacks* cbs, nghttp2_error_callback2 cb)

    int nghttp2_option_new(nghttp2_option** option_ptr)
    void nghttp2_option_del(nghttp2_option* option)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option* option, int val)
    void nghttp2_option_set_peer_max_concurrent_streams(nghttp2_option* option, uint32_t val)
    void nghttp2_option_set_no_recv_client_magic(nghttp2_option* option, int val)
    void nghttp2_option_set_no_http_messaging(nghttp2_option* option, int val)
    void nghttp2_option_set_no_auto_ping_ack(nghttp2_option* option, int val)
    void nghttp2_option_set_max_send_header_block_length(nghttp2_option* option, size_t val)
    void nghttp2_option_set_max_deflate_dynamic_table_size(nghttp2_option* option, size_t val)
    void nghttp2_option_set_no_closed_streams(nghttp2_option* option, int val)
    void nghttp2_option_set_max_outbound_ack(nghttp2_option* option, size_t val)
    void nghttp2_option_set_max_settings(nghttp2_option* option, size_t val)
    void nghttp2_option_set_server_fallback_rfc7540_priorities(nghttp2_option* option, int val)
    void nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation(nghttp2_option* option, int val)
    void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option* option, uint64_t burst, uint64_t rate)
    void nghttp2_option_set_max_continuations(nghttp2_option* option, size_t val)

    int nghttp2_session_server_new2(nghttp2_session** session_ptr, const nghttp2_session_callbacks* callbacks,
                                    void* user_data, const nghttp2_option* option)
    int nghttp2_session_client_new2(nghttp2_session** session_ptr, const nghttp2_session_callbacks* callbacks,
                                    void* user_data, const nghttp2_option* option)
    void nghttp2_session_del(nghttp2_session* session)
    ssize_t nghttp2_session_mem_recv(nghttp2_session* session, const uint8_t* data, size_t inlen)
    ssize_t nghttp2_session_mem_send(nghttp2_session* session, const uint8_t** data_ptr)
    int nghttp2_session_send(nghttp2_session* session)
    int nghttp2_session_want_read(nghttp2_session* session)
    int nghttp2_session_want_write(nghttp2_session* session)
    void* nghttp2_session_get_stream_user_data(nghttp2_session* session, int32_t stream_id)
    int nghttp2_session_set_stream_user_data(nghttp2_session* session, int32_t stream_id, void* stream_user_data)
    int nghttp2_session_resume_data(nghttp2_session* session, int32_t stream_id)
    int nghttp2_session_consume(nghttp2_session* session, int32_t stream_id, size_t size)
    int nghttp2_session_consume_connection(nghttp2_session* session, size_t size)
    int nghttp2_session_consume_stream(nghttp2_session* session, int32_t stream_id, size_t size)
    int32_t nghttp2_session_get_stream_effective_recv_data_length(nghttp2_session* session, int32_t stream_id)
    int32_t nghttp2_session_get_stream_remote_window_size(nghttp2_session* session, int32_t stream_id)
    int32_t nghttp2_session_get_remote_window_size(nghttp2_session* session)
    int32_t nghttp2_session_get_local_window_size(nghttp2_session* session)
    int32_t nghttp2_session_get_stream_local_window_size(nghttp2_session* session, int32_t stream_id)
    uint32_t nghttp2_session_get_remote_settings(nghttp2_session* session, nghttp2_settings_id id)
    uint32_t nghttp2_session_get_local_settings(nghttp2_session* session, nghttp2_settings_id id)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session* session)
    int32_t nghttp2_session_get_next_stream_id(nghttp2_session* session)
    int nghttp2_session_check_request_allowed(nghttp2_session* session)
    int nghttp2_session_set_local_window_size(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                                              int32_t window_size)
    size_t nghttp2_session_get_outbound_queue_size(nghttp2_session* session)
    nghttp2_stream* nghttp2_session_find_stream(nghttp2_session* session, int32_t stream_id)
    nghttp2_stream_proto_state nghttp2_stream_get_state(nghttp2_stream* stream)
    int nghttp2_session_terminate_session(nghttp2_session* session, uint32_t error_code)
    int nghttp2_session_terminate_session2(nghttp2_session* session, int32_t last_stream_id, uint32_t error_code)

    int nghttp2_submit_settings(nghttp2_session* session, uint8_t flags, const nghttp2_settings_entry* iv, size_t niv)
    int32_t nghttp2_submit_request(nghttp2_session* session, const nghttp2_priority_spec* pri_spec,
                                   const nghttp2_nv* nva, size_t nvlen, const nghttp2_data_provider* data_prd,
                                   void* stream_user_data)
    int nghttp2_submit_response(nghttp2_session* session, int32_t stream_id, const nghttp2_nv* nva,
                                size_t nvlen, const nghttp2_data_provider* data_prd)
    int32_t nghttp2_submit_headers(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                                   const nghttp2_priority_spec* pri_spec, const nghttp2_nv* nva,
                                   size_t nvlen, void* stream_user_data)
    int nghttp2_submit_trailer(nghttp2_session* session, int32_t stream_id, const nghttp2_nv* nva, size_t nvlen)
    int nghttp2_submit_data(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                            const nghttp2_data_provider* data_prd)
    int nghttp2_submit_rst_stream(nghttp2_session* session, uint8_t flags, int32_t stream_id, uint32_t error_code)
    int nghttp2_submit_ping(nghttp2_session* session, uint8_t flags, const uint8_t* opaque_data)
    int nghttp2_submit_goaway(nghttp2_session* session, uint8_t flags, int32_t last_stream_id,
                              uint32_t error_code, const uint8_t* opaque_data, size_t opaque_data_len)
    int nghttp2_submit_shutdown_notice(nghttp2_session* session)
    int nghttp2_submit_window_update(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                                     int32_t window_size_increment)

    const char* nghttp2_strerror(int lib_error_code)
    const char* nghttp2_http2_strerror(uint32_t error_code)
    int nghttp2_is_fatal(int lib_error_code)

    ctypedef struct nghttp2_info:
        int age
        int version_num
        const char* version_str
        const char* proto_str
    nghttp2_info* nghttp2_version(int least_version)
