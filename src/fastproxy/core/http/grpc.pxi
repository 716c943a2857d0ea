# gRPC in the connection manager: local replies to gRPC requests (GRPC's file, issue 15).
#
# STUB written by H2S so the hook in core/http/local_reply.pxi (hconn_local_reply_ex: "if st
# != NULL and st.grpc") compiles; GRPC replaces this function's body with the gRPC answer
# (HTTP 200, content-type application/grpc, grpc-status mapped from `status`, grpc-message,
# trailers-only) and keeps its signature.

cdef void grpc_local_reply(HConn* c, HStream* s, int status, const char* body, size_t body_len,
                           bint close_conn, const HMap* extra) noexcept nogil:
    """The proxy's own answer to the gRPC request s (HStream.grpc), in place of `status` /
    `body`. STUB: the plain reply until GRPC's lands."""
    local_reply_write(c, s, status, body, body_len, NULL, 0, close_conn, extra)
