/* An example fastproxy C filter (ABI: fastproxy_filter.h; build: build.py).
 *
 * On the request it adds `<header>: <value>` (default "x-c-filter: 1"), or, when the
 * request carries `<block_header>` (default "x-block"), answers `<block_status>` (default
 * 403) itself so the upstream never sees the request. On the response it adds
 * `<response_header>: <value>` (default "x-c-filter-response: 1"). With "state_header" and
 * "state_key", the request's `<state_header>` value is set as the stream's filter state
 * under `<state_key>` (what a route's hash_policy filter_state hashes).
 *
 * Config (the TypedStruct's "config", or CHttpFilter(config=...)), all keys optional:
 *   {"header": "x-c-filter", "value": "1", "response_header": "x-c-filter-response",
 *    "block_header": "x-block", "block_status": 403, "state_header": "x-session",
 *    "state_key": "session.key"}
 * A per-route config (typed_per_filter_config) has the same shape and replaces the
 * filter-level config on that route.
 *
 * Everything here runs on a fastproxy worker thread without the GIL: no Python API.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastproxy_filter.h"

typedef struct {
    char *header, *value, *response_header, *block_header, *state_header, *state_key;
    int block_status;
} hf_config;

typedef struct {                /* one per stream */
    const hf_config *cfg;
    fp_stream *stream;
    const fp_api *api;
} hf_state;

static const char BLOCKED_BODY[] = "blocked by the C filter\n";

/* ------------------------------------------------------------ config (a flat JSON object) */

static void set_err(char *err, size_t err_len, const char *msg, const char *key)
{
    if (err != NULL && err_len > 0)
        snprintf(err, err_len, "%s%s%s", msg, key ? ": " : "", key ? key : "");
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && isspace((unsigned char)*p))
        p++;
    return p;
}

/* A JSON string at *pp (just past the opening quote); returns a malloc'd copy or NULL.
 * Supports the common escapes; \u is accepted for ASCII only. */
static char *parse_string(const char **pp, const char *end)
{
    const char *p = *pp;
    size_t cap = 16, n = 0;
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    while (p < end && *p != '"') {
        char c = *p++;
        if (c == '\\') {
            if (p >= end)
                goto bad;
            c = *p++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned v = 0;
                int i;
                if (end - p < 4)
                    goto bad;
                for (i = 0; i < 4; i++) {
                    char h = p[i];
                    v = v * 16 + (unsigned)(isdigit((unsigned char)h) ? h - '0' : (tolower((unsigned char)h) - 'a' + 10));
                    if (!isxdigit((unsigned char)h))
                        goto bad;
                }
                if (v > 0x7f)
                    goto bad;
                p += 4;
                c = (char)v;
                break;
            }
            case '"': case '\\': case '/': break;
            default: goto bad;
            }
        }
        if (n + 1 >= cap) {
            char *q = realloc(out, cap *= 2);
            if (q == NULL)
                goto bad;
            out = q;
        }
        out[n++] = c;
    }
    if (p >= end)
        goto bad;
    out[n] = 0;
    *pp = p + 1;
    return out;
bad:
    free(out);
    return NULL;
}

static void destroy_config(void *config)
{
    hf_config *c = config;
    if (c == NULL)
        return;
    free(c->header);
    free(c->value);
    free(c->response_header);
    free(c->block_header);
    free(c->state_header);
    free(c->state_key);
    free(c);
}

static int set_default(char **slot, const char *v)
{
    if (*slot == NULL) {
        size_t n = strlen(v) + 1;
        if ((*slot = malloc(n)) != NULL)
            memcpy(*slot, v, n);
    }
    return *slot != NULL;
}

static void *create_config(const char *json, size_t json_len, char *err, size_t err_len)
{
    hf_config *c = calloc(1, sizeof *c);
    const char *p = json, *end = json + json_len;
    if (c == NULL) {
        set_err(err, err_len, "out of memory", NULL);
        return NULL;
    }
    c->block_status = 403;
    if (json != NULL) {
        p = skip_ws(p, end);
        if (p >= end || *p++ != '{') {
            set_err(err, err_len, "config must be a JSON object", NULL);
            goto fail;
        }
        p = skip_ws(p, end);
        if (p < end && *p == '}')
            p++;
        else for (;;) {
            char *key, **slot = NULL;
            p = skip_ws(p, end);
            if (p >= end || *p++ != '"' || (key = parse_string(&p, end)) == NULL) {
                set_err(err, err_len, "expected a key", NULL);
                goto fail;
            }
            p = skip_ws(p, end);
            if (p >= end || *p++ != ':') {
                set_err(err, err_len, "expected ':' after", key);
                free(key);
                goto fail;
            }
            p = skip_ws(p, end);
            if (strcmp(key, "block_status") == 0) {
                long v = 0;
                int digits = 0;
                while (p < end && isdigit((unsigned char)*p) && digits < 4) {
                    v = v * 10 + (*p++ - '0');
                    digits++;
                }
                if (digits == 0 || v < 200 || v > 599) {
                    set_err(err, err_len, "expected an HTTP status (200..599) for", key);
                    free(key);
                    goto fail;
                }
                c->block_status = (int)v;
            } else {
                if (strcmp(key, "header") == 0) slot = &c->header;
                else if (strcmp(key, "value") == 0) slot = &c->value;
                else if (strcmp(key, "response_header") == 0) slot = &c->response_header;
                else if (strcmp(key, "block_header") == 0) slot = &c->block_header;
                else if (strcmp(key, "state_header") == 0) slot = &c->state_header;
                else if (strcmp(key, "state_key") == 0) slot = &c->state_key;
                else {
                    set_err(err, err_len, "unknown key", key);
                    free(key);
                    goto fail;
                }
                free(*slot);
                if (p >= end || *p++ != '"' || (*slot = parse_string(&p, end)) == NULL) {
                    set_err(err, err_len, "expected a string for", key);
                    free(key);
                    goto fail;
                }
                if (**slot == 0 && slot != &c->value) {
                    set_err(err, err_len, "empty header name for", key);
                    free(key);
                    goto fail;
                }
            }
            free(key);
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p++;
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            set_err(err, err_len, "expected ',' or '}'", NULL);
            goto fail;
        }
        if (skip_ws(p, end) != end) {
            set_err(err, err_len, "trailing text after the config object", NULL);
            goto fail;
        }
    }
    if (!set_default(&c->header, "x-c-filter") || !set_default(&c->value, "1")
        || !set_default(&c->response_header, "x-c-filter-response")
        || !set_default(&c->block_header, "x-block")) {
        set_err(err, err_len, "out of memory", NULL);
        goto fail;
    }
    return c;
fail:
    destroy_config(c);
    return NULL;
}

/* ------------------------------------------------------------ stream hooks */

static void *create(void *config, fp_stream *s, const fp_api *api)
{
    hf_state *st;
    if (config == NULL || api->abi_version != FP_FILTER_ABI_VERSION)
        return NULL;                        /* cannot run: fastproxy answers 500 */
    st = malloc(sizeof *st);
    if (st == NULL)
        return NULL;
    st->cfg = config;
    st->stream = s;
    st->api = api;
    return st;
}

static const hf_config *effective(hf_state *st)
{
    const hf_config *r = st->api->route_config(st->stream);
    return r != NULL ? r : st->cfg;
}

static int decode_headers(void *self, fp_headers *h, int end_stream)
{
    hf_state *st = self;
    const hf_config *c;
    fp_str v;
    (void)end_stream;
    c = st->cfg = effective(st);            /* the route is known from here on */
    if (st->api->headers_get(h, c->block_header, strlen(c->block_header), &v)) {
        st->api->send_local_reply(st->stream, c->block_status, BLOCKED_BODY, sizeof BLOCKED_BODY - 1);
        return FP_STOP_ITERATION;
    }
    if (st->api->headers_set(h, c->header, strlen(c->header), c->value, strlen(c->value)) < 0) {
        st->api->send_local_reply(st->stream, 500, NULL, 0);
        return FP_STOP_ITERATION;
    }
    if (c->state_header != NULL && c->state_key != NULL
        && st->api->headers_get(h, c->state_header, strlen(c->state_header), &v)
        && st->api->filter_state_set(st->stream, c->state_key, strlen(c->state_key), v.p, v.n) < 0) {
        st->api->send_local_reply(st->stream, 500, NULL, 0);
        return FP_STOP_ITERATION;
    }
    return FP_CONTINUE;
}

static int encode_headers(void *self, fp_headers *h, int end_stream)
{
    hf_state *st = self;
    const hf_config *c = st->cfg;
    (void)end_stream;
    st->api->headers_add(h, c->response_header, strlen(c->response_header), c->value, strlen(c->value));
    return FP_CONTINUE;
}

static void destroy(void *self)
{
    free(self);
}

/* The table fastproxy reads; NULL hooks are skipped at no cost. Not `const`: cffi treats
 * a const global as a constant, and ffi.addressof needs a variable. */
fp_http_filter header_filter_table = {
    .abi_version = FP_FILTER_ABI_VERSION,
    .create_config = create_config,
    .destroy_config = destroy_config,
    .create = create,
    .decode_headers = decode_headers,
    .encode_headers = encode_headers,
    .destroy = destroy,
};
