# An HTTP message as the codecs hand it to the connection manager and take it back: the
# types every HTTP file shares, whatever the protocol on the wire. A codec (core/http/
# codec_h1*.pxi; HTTP/2 later) turns bytes into a request or response head (HttpHead) plus
# the facts the connection manager needs about the message (RequestFacts, ResponseFacts),
# and turns a head we send (a FieldPair list, a status or method and target, a BodyFraming)
# back into bytes. Nothing here is HTTP/1-specific; the codec seam is described in
# docs/architecture.md ("The codec seam").

cdef enum:                          # HttpHead.method: the methods whose semantics we act on
    METHOD_OTHER = 0
    METHOD_GET = 1
    METHOD_HEAD = 2
    METHOD_POST = 3
    METHOD_PUT = 4
    METHOD_DELETE = 5
    METHOD_CONNECT = 6
    METHOD_OPTIONS = 7
    METHOD_TRACE = 8
    METHOD_PATCH = 9

cdef enum:                          # HStream.protocol (%PROTOCOL%, a filter's stream info)
    HTTP_PROTO_10 = 0
    HTTP_PROTO_11 = 1
    HTTP_PROTO_20 = 2

cdef enum:
    HEAD_BLOCK_MIN = 1024           # a head's first block: most heads fit
    HEAD_FIELDS_MIN = 16

cdef struct HttpField:
    uint32_t name_off               # offsets into the HttpHead's buf
    uint32_t name_len
    uint32_t value_off              # the value without leading/trailing SP and HTAB
    uint32_t value_len

cdef struct HttpHead:
    char* buf                       # the head's bytes as received (malloc'd, owned)
    uint32_t len
    uint32_t cap
    HttpField* fields                 # malloc'd, owned
    uint32_t nfields
    uint32_t fields_cap
    uint32_t method_off             # request line pieces (offsets into buf)
    uint32_t method_len
    uint32_t target_off
    uint32_t target_len
    uint32_t reason_off             # status line pieces
    uint32_t reason_len
    uint16_t status
    uint8_t method                  # METHOD_*
    uint8_t minor                   # HTTP/1.<minor>: 0 or 1

cdef struct StrRef:                  # serializer input: a byte string the caller owns
    const char* p
    size_t n

cdef struct FieldPair:                 # serializer input: one field line
    StrRef name
    StrRef value


cdef enum:                          # BodyFraming.kind: how a head we send announces its body
    BODY_NONE = 0                   # no body follows (length_text, if set, is still announced:
                                    #   a HEAD or 304 answer says how long the body would be)
    BODY_LENGTH = 1                 # exactly `length` bytes (length_text: that number as received)
    BODY_STREAM = 2                 # a body whose length is not known yet (HTTP/1.1: chunked)
    BODY_TUNNEL = 3                 # a 101 or a CONNECT's 200: the bytes after the head are a
                                    #   tunnel the codec does not frame

cdef struct BodyFraming:
    int kind
    uint64_t length
    StrRef length_text              # p NULL: write `length` in decimal
    uint8_t check_length            # the body must come to exactly `length` bytes (a filter set the
                                    #   length: the codec counts, so a peer never reads the next
                                    #   message from a body that disagrees with its head)
    uint8_t upgrade                 # the head asks for a protocol switch (a request) or grants
                                    #   one (a 101): the codec says so in its own terms

cdef struct RequestFacts:           # what a server codec knows of a request besides its head
    uint8_t end_stream              # no body follows the head
    uint8_t keepalive               # the connection may carry another request after this one
    uint8_t expect_continue         # the client waits for a 100 before it sends the body
    uint8_t upgrade                 # the request asks to switch protocols (Upgrade)
    uint8_t connect                 # a CONNECT request
    uint8_t unsupported_coding      # a transfer coding the proxy does not take (answered 501)
    uint8_t envoy_hdrs              # some field name starts with "x-envoy-"
    uint8_t protocol                # HTTP_PROTO_*
    int target                      # 0; -1: no valid origin-form target and Host (400);
                                    #   -2: no Host and no default host (400 after the filters)
    int64_t content_length          # the body's length when the head gave it, else -1

cdef struct ResponseFacts:          # what a client codec knows of a response besides its head
    uint8_t end_stream              # no body follows the head
    int64_t content_length          # the body's length when the head gave it, else -1
    StrRef length_text              # the Content-Length as received: with a body, and also on
                                    #   a HEAD or 304 answer (p NULL: none)
