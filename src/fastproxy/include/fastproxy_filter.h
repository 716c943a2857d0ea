/* fastproxy HTTP filter C ABI, version 1.
 *
 * A C filter is a `fp_http_filter` table of function pointers. fastproxy calls them on the
 * worker thread that owns the stream, without the GIL, in Envoy's order: decoder hooks in
 * the order the filters are configured, encoder hooks in reverse. A NULL hook is skipped at
 * no cost. Everything a filter may touch (headers, body, the stream) is reached through the
 * `fp_api` table handed to `create`; the pointers it gives are valid only during the call
 * that received them.
 *
 * Build one with cffi (see examples/c_filter/ and docs/filters.md), then register the
 * table's address from Python:
 *
 *     proxy.register_c_filter("my_filter", ffi.addressof(lib, "my_filter_table"), lib)
 *
 * Statuses (the same numbers as fastproxy.FilterStatus):
 *   FP_CONTINUE          pass headers/data on to the next filter
 *   FP_STOP_ITERATION    hold them here; the stream waits until the filter continues
 *   FP_STOP_AND_BUFFER   (data) collect the body up to the buffer limit, then call again
 *                        with all of it and end_stream = 1
 *   FP_STOP_NO_BUFFER    (data) the filter consumed the bytes; nothing is passed on
 */
#ifndef FASTPROXY_FILTER_H
#define FASTPROXY_FILTER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FP_FILTER_ABI_VERSION 1

enum {
    FP_CONTINUE = 0,
    FP_STOP_ITERATION = 1,
    FP_STOP_AND_BUFFER = 2,
    FP_STOP_NO_BUFFER = 3
};

typedef struct fp_str {
    const char *p;
    size_t n;
} fp_str;

typedef struct fp_headers fp_headers;   /* a header map: request, response or trailers */
typedef struct fp_body fp_body;         /* body bytes passing through the hook */
typedef struct fp_stream fp_stream;     /* one request/response exchange */

typedef struct fp_api {
    uint32_t abi_version;

    /* Header maps. Names compare case-insensitively; names a filter adds are stored in
     * lower case. Pseudo-headers are entries too: ":method", ":path", ":authority",
     * ":scheme" on requests, ":status" on responses. */
    size_t (*headers_len)(const fp_headers *h);
    int (*headers_at)(const fp_headers *h, size_t i, fp_str *name, fp_str *value); /* 0 or -1 */
    int (*headers_get)(const fp_headers *h, const char *name, size_t name_len, fp_str *value); /* 1 found, 0 not */
    int (*headers_add)(fp_headers *h, const char *name, size_t name_len,
                       const char *value, size_t value_len);                   /* 0 or -1 (bad name/value, no memory) */
    int (*headers_set)(fp_headers *h, const char *name, size_t name_len,
                       const char *value, size_t value_len);                   /* replaces every value */
    size_t (*headers_remove)(fp_headers *h, const char *name, size_t name_len); /* how many removed */

    /* Body bytes: a chain of segments. */
    size_t (*body_len)(const fp_body *b);
    size_t (*body_segments)(const fp_body *b, fp_str *out, size_t max);        /* segments written */
    int (*body_append)(fp_body *b, const char *p, size_t n);
    int (*body_prepend)(fp_body *b, const char *p, size_t n);
    void (*body_drain)(fp_body *b, size_t n);

    /* The stream. send_local_reply ends the stream with this response (the hook should
     * then return FP_STOP_ITERATION). As in Envoy it passes through the encoder filters
     * (this filter's encode_headers too) unless they already hold a response, in which
     * case it goes straight to the client; once the response head went out the stream is
     * reset instead and -1 is returned. */
    int (*send_local_reply)(fp_stream *s, int status, const char *body, size_t body_len);
    /* Resume a stream a hook stopped. Only on the worker thread (from a later hook). */
    void (*continue_decoding)(fp_stream *s);
    void (*continue_encoding)(fp_stream *s);
    /* Per-route config the filter's create_route_config returned, or NULL. */
    void *(*route_config)(fp_stream *s);

    /* Filter state: string values under keys on the stream, shared by its filters (a
     * Python filter's callbacks.filter_state str/bytes values are the same store) and read
     * by the route's hash_policy `filter_state` (Envoy's hashable string objects). set
     * copies key and value; value NULL removes the key; 0, or -1 (no memory). get: 1
     * found, 0 not; the value stays valid until the key is set again or the stream ends. */
    int (*filter_state_set)(fp_stream *s, const char *key, size_t key_len,
                            const char *value, size_t value_len);
    int (*filter_state_get)(fp_stream *s, const char *key, size_t key_len, fp_str *value);
} fp_api;

typedef struct fp_http_filter {
    uint32_t abi_version;                       /* FP_FILTER_ABI_VERSION */

    /* Factory level (main thread, at config time): parse this filter's config, given as
     * JSON text (the TypedStruct's "config"); NULL config = none. Return NULL and fill
     * err (NUL-terminated, at most err_len bytes) to reject it. Both may be NULL. */
    void *(*create_config)(const char *json, size_t json_len, char *err, size_t err_len);
    void (*destroy_config)(void *config);

    /* Stream level (worker thread). create returns the per-stream state; NULL: it could
     * not be created, and the stream fails closed (500, nothing sent upstream). */
    void *(*create)(void *config, fp_stream *s, const fp_api *api);
    int (*decode_headers)(void *self, fp_headers *h, int end_stream);
    int (*decode_data)(void *self, fp_body *b, int end_stream);
    int (*decode_trailers)(void *self, fp_headers *t);
    int (*encode_headers)(void *self, fp_headers *h, int end_stream);
    int (*encode_data)(void *self, fp_body *b, int end_stream);
    int (*encode_trailers)(void *self, fp_headers *t);
    void (*on_log)(void *self);                 /* after the stream ended */
    void (*destroy)(void *self);                /* last call; free self here */
} fp_http_filter;

#ifdef __cplusplus
}
#endif
#endif
