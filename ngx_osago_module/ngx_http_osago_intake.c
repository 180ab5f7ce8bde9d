/*
 * Idempotent intake of applications: POST /osago/application.
 *
 * The body is read without blocking, validated and canonicalised
 * (osago_application.c), fingerprinted, and accepted by one atomic Redis
 * script that checks the Idempotency-Key, the per-user limit, writes the
 * read model and appends the intake stream entry.
 */

#include "ngx_http_osago_zone.h"
#include "osago_application.h"

#include <openssl/rand.h>
#include <openssl/sha.h>
#include <time.h>


#define NGX_HTTP_OSAGO_IDEM_KEY_MAX   64
#define NGX_HTTP_OSAGO_UUID_LEN       36
#define NGX_HTTP_OSAGO_TRACE_LEN      55


typedef struct {
    ngx_http_request_t             *request;
    ngx_http_osago_redis_cmd_t     *cmd;
    ngx_event_t                     resume;

    ngx_str_node_t                 *in_flight;    /* partner:key, this worker */

    ngx_str_t                       idem_key;
    ngx_str_t                       user;
    u_char                          id[NGX_HTTP_OSAGO_UUID_LEN];
    u_char                          traceparent[NGX_HTTP_OSAGO_TRACE_LEN];

    /* the answer, filled by the Redis reply */
    ngx_uint_t                      status;
    ngx_str_t                       body;
    ngx_str_t                       location;
    ngx_uint_t                      replayed;
    ngx_uint_t                      retry_after;
    ngx_http_osago_problem_t       *problem;

    /*
     * A body valid but for a start_date behind today's window may be the
     * retry of an application accepted on an earlier day: the key is looked
     * up, and replayed if it holds this very payload, else this 400 goes.
     */
    ngx_http_osago_problem_t       *replay_or;
    ngx_uint_t                      replay_missed;
} ngx_http_osago_intake_ctx_t;


static void ngx_http_osago_intake_body_handler(ngx_http_request_t *r);
static void ngx_http_osago_intake_cleanup(void *data);


static ngx_str_t  ngx_http_osago_intake_json = ngx_string("application/json");


#define ngx_http_osago_problem_entry(status, type, title, detail)             \
    { status, ngx_string("urn:osago:problem:" type), ngx_string(title),      \
      ngx_string(detail), ngx_null_string }

static ngx_http_osago_problem_t
    ngx_http_osago_intake_problems[NGX_HTTP_OSAGO_INTAKE_REASON_INVALID] = {
    ngx_http_osago_problem_entry(NGX_HTTP_BAD_REQUEST,
        "idempotency-key-missing", "Idempotency-Key required",
        "send an Idempotency-Key header (1 to 64 characters of A-Z a-z 0-9 "
        "_ -, a UUID is recommended)"),
    ngx_http_osago_problem_entry(NGX_HTTP_BAD_REQUEST,
        "idempotency-key-malformed", "Idempotency-Key malformed",
        "send one Idempotency-Key header of 1 to 64 characters of "
        "A-Z a-z 0-9 _ -"),
    ngx_http_osago_problem_entry(NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type", "Unsupported media type",
        "the body must be application/json"),
    ngx_http_osago_problem_entry(NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
        "body-too-large", "Body too large",
        "the application body is over the size limit"),
    ngx_http_osago_problem_entry(422,
        "idempotency-key-reused", "Idempotency-Key reused",
        "this Idempotency-Key was already used with a different payload"),
    ngx_http_osago_problem_entry(NGX_HTTP_CONFLICT,
        "request-in-progress", "Request in progress",
        "a request with this Idempotency-Key is still being processed; "
        "retry shortly"),
    ngx_http_osago_problem_entry(429,
        "user-rate-limited", "Too many applications",
        "this user already submitted an application recently; retry after "
        "the time in the Retry-After header"),
    ngx_http_osago_problem_entry(NGX_HTTP_SERVICE_UNAVAILABLE,
        "intake-unavailable", "Service temporarily unavailable",
        "the application could not be confirmed as stored (Redis did not "
        "answer in time or is unreachable); retry with the same "
        "Idempotency-Key: if it was stored after all, the retry returns "
        "the original answer"),
    ngx_http_osago_problem_entry(NGX_HTTP_NOT_ALLOWED,
        "method-not-allowed", "Method not allowed",
        "applications are submitted with POST")
};

/* in the order of ngx_http_osago_intake_reason_e */

/* helpers */


/* the module's ctx slot holds the limiter's state; this one hangs here */
static ngx_http_osago_intake_ctx_t *
ngx_http_osago_intake_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t  *cln;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_osago_intake_cleanup) {
            return cln->data;
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_osago_intake_problem(ngx_http_request_t *r, ngx_uint_t which,
    ngx_uint_t retry_after)
{
    ngx_str_t  v;

    ngx_http_osago_metrics_intake(
        ngx_http_get_module_main_conf(r, ngx_http_osago_module),
        NGX_HTTP_OSAGO_INTAKE_REJECTED, which);

    if (retry_after
        && ngx_http_osago_add_header_uint(r, "Retry-After", retry_after)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (which == NGX_HTTP_OSAGO_INTAKE_METHOD) {
        ngx_str_set(&v, "POST");
        if (ngx_http_osago_add_header(r, "Allow", &v) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_osago_problem_send(r, &ngx_http_osago_intake_problems[which]);
}


/*
 * The header, when sent once; *twice is set when it was sent more than once
 * (which of two keys, or of two traces, the client meant is anyone's guess).
 */
static ngx_table_elt_t *
ngx_http_osago_intake_find_header(ngx_http_request_t *r, char *name,
    ngx_uint_t *twice)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *found;

    len = ngx_strlen(name);
    part = &r->headers_in.headers.part;
    h = part->elts;
    found = NULL;
    *twice = 0;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return *twice ? NULL : found;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            *twice = (found != NULL);
            found = &h[i];

            if (*twice) {
                return NULL;
            }
        }
    }
}


static ngx_int_t
ngx_http_osago_intake_check_key(ngx_str_t *key)
{
    u_char  *p, *last;

    if (key->len == 0 || key->len > NGX_HTTP_OSAGO_IDEM_KEY_MAX) {
        return NGX_ERROR;
    }

    for (p = key->data, last = p + key->len; p < last; p++) {
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')
              || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* application/json, optionally with parameters ("; charset=utf-8") */
static ngx_int_t
ngx_http_osago_intake_check_type(ngx_http_request_t *r)
{
    u_char     *p, *last;
    ngx_str_t  *ct;

    if (r->headers_in.content_type == NULL) {
        return NGX_ERROR;
    }

    ct = &r->headers_in.content_type->value;
    last = ct->data + ct->len;

    for (p = ct->data; p < last && *p != ';' && *p != ' ' && *p != '\t'; p++) {
        /* void */
    }

    if ((size_t) (p - ct->data) != ngx_http_osago_intake_json.len
        || ngx_strncasecmp(ct->data, ngx_http_osago_intake_json.data,
                           ngx_http_osago_intake_json.len) != 0)
    {
        return NGX_ERROR;
    }

    /* RFC 9110: the media type, then only parameters, each after OWS ";" */
    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    return (p == last || *p == ';') ? NGX_OK : NGX_ERROR;
}


/* RFC 9562 version 7: 48 bits of Unix milliseconds, then randomness */
static ngx_int_t
ngx_http_osago_intake_uuid7(u_char *dst, uint64_t ms)
{
    u_char  b[16];

    if (RAND_bytes(b + 6, 10) != 1) {
        return NGX_ERROR;
    }

    b[0] = (u_char) (ms >> 40);
    b[1] = (u_char) (ms >> 32);
    b[2] = (u_char) (ms >> 24);
    b[3] = (u_char) (ms >> 16);
    b[4] = (u_char) (ms >> 8);
    b[5] = (u_char) ms;
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;

    dst = ngx_hex_dump(dst, b, 4);
    *dst++ = '-';
    dst = ngx_hex_dump(dst, b + 4, 2);
    *dst++ = '-';
    dst = ngx_hex_dump(dst, b + 6, 2);
    *dst++ = '-';
    dst = ngx_hex_dump(dst, b + 8, 2);
    *dst++ = '-';
    (void) ngx_hex_dump(dst, b + 10, 6);

    return NGX_OK;
}


static ngx_uint_t
ngx_http_osago_intake_is_hex(u_char *p, size_t n)
{
    ngx_uint_t  nonzero = 0;

    while (n--) {
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) {
            return 0;
        }

        nonzero |= (*p++ != '0');
    }

    return nonzero;
}


/*
 * W3C traceparent: the caller's when it is well formed (version 00), with a
 * new span of ours; otherwise a new trace.
 */
static ngx_int_t
ngx_http_osago_intake_traceparent(ngx_http_request_t *r, u_char *dst)
{
    u_char            rnd[24], trace[32];
    ngx_uint_t        twice;
    ngx_table_elt_t  *h;

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        return NGX_ERROR;
    }

    /* W3C Trace Context: more than one traceparent is as good as none */
    h = ngx_http_osago_intake_find_header(r, "traceparent", &twice);

    if (h && h->value.len == NGX_HTTP_OSAGO_TRACE_LEN
        && ngx_strncmp(h->value.data, "00-", 3) == 0
        && h->value.data[35] == '-' && h->value.data[52] == '-'
        && ngx_http_osago_intake_is_hex(h->value.data + 3, 32)
        && ngx_http_osago_intake_is_hex(h->value.data + 36, 16))
    {
        ngx_memcpy(trace, h->value.data + 3, 32);

    } else {
        (void) ngx_hex_dump(trace, rnd, 16);
    }

    dst = ngx_cpymem(dst, "00-", 3);
    dst = ngx_cpymem(dst, trace, 32);
    *dst++ = '-';
    dst = ngx_hex_dump(dst, rnd + 16, 8);
    (void) ngx_cpymem(dst, "-01", 3);

    return NGX_OK;
}


/* the content handler */


static ngx_int_t
ngx_http_osago_intake_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_uint_t                    twice;
    ngx_table_elt_t              *h;
    ngx_pool_cleanup_t           *cln;
    ngx_http_osago_loc_conf_t    *olcf;
    ngx_http_osago_intake_ctx_t  *ctx;

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_osago_intake_problem(r, NGX_HTTP_OSAGO_INTAKE_METHOD,
                                             0);
    }

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_osago_module);

    h = ngx_http_osago_intake_find_header(r, "Idempotency-Key", &twice);

    if (twice) {
        return ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_KEY_MALFORMED, 0);
    }

    if (h == NULL) {
        return ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_KEY_MISSING, 0);
    }

    if (ngx_http_osago_intake_check_key(&h->value) != NGX_OK) {
        return ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_KEY_MALFORMED, 0);
    }

    if (ngx_http_osago_intake_check_type(r) != NGX_OK) {
        return ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_MEDIA_TYPE, 0);
    }

    if (r->headers_in.content_length_n > (off_t) olcf->intake_max_body) {
        return ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_TOO_LARGE, 0);
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_osago_intake_ctx_t));
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = cln->data;
    ngx_memzero(ctx, sizeof(ngx_http_osago_intake_ctx_t));
    cln->handler = ngx_http_osago_intake_cleanup;

    ctx->request = r;
    ctx->idem_key = h->value;

    /* the body in one memory buffer where it fits; see body_bytes() */
    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_osago_intake_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/*
 * The body as one contiguous piece, read back from its file if need be;
 * NGX_DECLINED, with nothing copied or read, when it is over max (a chunked
 * body has no Content-Length to refuse it by before it arrives).
 */
static ngx_int_t
ngx_http_osago_intake_body_bytes(ngx_http_request_t *r, ngx_str_t *body,
    size_t max)
{
    size_t        len;
    u_char       *p;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    body->len = 0;
    body->data = (u_char *) "";

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    if (len == 0) {
        return NGX_OK;
    }

    if (len > max) {
        body->len = len;
        return NGX_DECLINED;
    }

    cl = r->request_body->bufs;

    if (ngx_buf_in_memory(cl->buf)
        && (cl->next == NULL || ngx_buf_size(cl->next->buf) == 0))
    {
        body->data = cl->buf->pos;
        body->len = len;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;
    body->len = len;

    for ( /* void */ ; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        if (!b->in_file || b->file_last == b->file_pos) {
            continue;   /* a chunked body's closing buffer carries no data */
        }

        n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                          b->file_pos);
        if (n != b->file_last - b->file_pos) {
            return NGX_ERROR;
        }

        p += n;
    }

    return NGX_OK;
}


static void
ngx_http_osago_intake_finish(ngx_http_request_t *r,
    ngx_http_osago_intake_ctx_t *ctx)
{
    ngx_buf_t   *b;
    ngx_str_t    v;

    if (ctx->problem) {
        ngx_http_finalize_request(r,
            ngx_http_osago_intake_problem(r,
                ctx->problem - ngx_http_osago_intake_problems,
                ctx->retry_after));
        return;
    }

    if (ctx->replay_missed) {
        ngx_http_finalize_request(r,
            ngx_http_osago_problem_send(r, ctx->replay_or));
        return;
    }

    if (ngx_http_osago_add_header(r, "Location", &ctx->location)
        != NGX_OK)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ctx->replayed) {
        ngx_str_set(&v, "true");
        if (ngx_http_osago_add_header(r, "Idempotent-Replayed", &v)
            != NGX_OK)
        {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    b->pos = ctx->body.data;
    b->last = ctx->body.data + ctx->body.len;
    b->memory = 1;

    ngx_http_finalize_request(r, ngx_http_osago_send(r, ctx->status,
                                      &ngx_http_osago_intake_json, b));
}


static void
ngx_http_osago_intake_release(ngx_http_osago_intake_ctx_t *ctx)
{
    ngx_http_osago_main_conf_t  *omcf;

    if (ctx->in_flight) {
        omcf = ngx_http_get_module_main_conf(ctx->request,
                                             ngx_http_osago_module);
        ngx_rbtree_delete(&omcf->intake_in_flight, &ctx->in_flight->node);
        ngx_free(ctx->in_flight);
        ctx->in_flight = NULL;
    }
}


static void
ngx_http_osago_intake_cleanup(void *data)
{
    ngx_http_osago_intake_ctx_t  *ctx = data;

    if (ctx->cmd) {
        ngx_http_osago_redis_cancel(ctx->cmd);
        ctx->cmd = NULL;
    }

    if (ctx->resume.posted) {
        ngx_delete_posted_event(&ctx->resume);
    }

    ngx_http_osago_intake_release(ctx);
}


static void
ngx_http_osago_intake_resume(ngx_event_t *ev)
{
    ngx_http_osago_intake_ctx_t  *ctx = ev->data;
    ngx_http_request_t           *r = ctx->request;
    ngx_connection_t             *c = r->connection;

    ngx_http_set_log_request(c->log, r);

    r->read_event_handler = ngx_http_block_reading;

    ngx_http_osago_intake_finish(r, ctx);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_osago_intake_copy_reply(ngx_http_request_t *r, ngx_str_t *dst,
    redisReply *reply)
{
    if (reply->type != REDIS_REPLY_STRING) {
        return NGX_ERROR;
    }

    dst->data = ngx_pnalloc(r->pool, reply->len);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, reply->str, reply->len);
    dst->len = reply->len;

    return NGX_OK;
}


static void
ngx_http_osago_intake_reply(void *data, ngx_http_osago_redis_status_e status,
    redisReply *reply)
{
    ngx_http_osago_intake_ctx_t  *ctx = data;
    ngx_http_request_t           *r = ctx->request;
    ngx_http_osago_main_conf_t   *omcf;
    ngx_int_t                     code, n;
    u_char                       *p;
    ngx_str_t                     id;

    ctx->cmd = NULL;
    ngx_http_osago_intake_release(ctx);

    omcf = ngx_http_get_module_main_conf(r, ngx_http_osago_module);

    if (status != NGX_HTTP_OSAGO_REDIS_REPLY
        || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1
        || reply->element[0]->type != REDIS_REPLY_INTEGER)
    {
        if (status == NGX_HTTP_OSAGO_REDIS_REPLY) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "osago intake: unexpected reply from Redis%s%*s",
                          reply->type == REDIS_REPLY_ERROR ? ": " : "",
                          reply->type == REDIS_REPLY_ERROR
                          ? (size_t) reply->len : 0, reply->str);
        }

        ctx->problem = &ngx_http_osago_intake_problems[
                                        NGX_HTTP_OSAGO_INTAKE_UNAVAILABLE];
        ctx->retry_after = 1;
        goto done;
    }

    code = reply->element[0]->integer;

    switch (code) {

    case 0:
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "osago intake: accepted application %*s "
                      "traceparent %*s",
                      (size_t) NGX_HTTP_OSAGO_UUID_LEN, ctx->id,
                      (size_t) NGX_HTTP_OSAGO_TRACE_LEN, ctx->traceparent);
        ngx_http_osago_metrics_intake(omcf, NGX_HTTP_OSAGO_INTAKE_ACCEPTED, 0);
        break;

    case 1:
        if (reply->elements < 4
            || reply->element[1]->type != REDIS_REPLY_STRING
            || ngx_http_osago_intake_copy_reply(r, &ctx->body,
                                                reply->element[2]) != NGX_OK
            || reply->element[3]->type != REDIS_REPLY_STRING)
        {
            ctx->problem = &ngx_http_osago_intake_problems[
                                        NGX_HTTP_OSAGO_INTAKE_UNAVAILABLE];
            ctx->retry_after = 1;
            goto done;
        }

        n = ngx_atoi((u_char *) reply->element[1]->str,
                     reply->element[1]->len);
        ctx->status = (n >= 200 && n < 600) ? (ngx_uint_t) n : 202;
        ctx->replayed = 1;

        id.data = (u_char *) reply->element[3]->str;
        id.len = ngx_min(reply->element[3]->len, NGX_HTTP_OSAGO_UUID_LEN);
        p = ngx_pnalloc(r->pool, sizeof("/osago/application/") - 1 + id.len);
        if (p == NULL) {
            ctx->problem = &ngx_http_osago_intake_problems[
                                        NGX_HTTP_OSAGO_INTAKE_UNAVAILABLE];
            ctx->retry_after = 1;
            goto done;
        }

        ctx->location.data = p;
        ctx->location.len = ngx_sprintf(p, "/osago/application/%V", &id) - p;

        ngx_http_osago_metrics_intake(omcf, NGX_HTTP_OSAGO_INTAKE_REPLAYED, 0);
        break;

    case 2:
        ctx->problem = &ngx_http_osago_intake_problems[
                                        NGX_HTTP_OSAGO_INTAKE_KEY_REUSED];
        break;

    case 4:
        /* replay only, and nothing to replay: the body's own 400 */
        ngx_http_osago_metrics_intake(omcf, NGX_HTTP_OSAGO_INTAKE_REJECTED,
                                      NGX_HTTP_OSAGO_INTAKE_REASON_INVALID);
        ctx->replay_missed = 1;
        break;

    default: /* 3: the user's limit */
        ctx->problem = &ngx_http_osago_intake_problems[
                                        NGX_HTTP_OSAGO_INTAKE_USER_LIMITED];
        n = (reply->elements > 1
             && reply->element[1]->type == REDIS_REPLY_INTEGER)
            ? reply->element[1]->integer : 1000;
        ctx->retry_after = (n > 0) ? (n + 999) / 1000 : 1;
    }

done:

    /* answered from the event loop, not from inside hiredis */
    ngx_post_event(&ctx->resume, &ngx_posted_events);
}


static ngx_int_t
ngx_http_osago_intake_in_flight(ngx_http_request_t *r,
    ngx_http_osago_intake_ctx_t *ctx, ngx_str_t *partner)
{
    size_t                       len;
    u_char                      *p;
    uint32_t                     hash;
    ngx_str_t                    name;
    ngx_str_node_t              *sn;
    ngx_http_osago_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_osago_module);

    len = partner->len + 1 + ctx->idem_key.len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    name.data = p;
    p = ngx_cpymem(p, partner->data, partner->len);
    *p++ = ':';
    ngx_memcpy(p, ctx->idem_key.data, ctx->idem_key.len);
    name.len = len;

    hash = ngx_crc32_long(name.data, name.len);

    if (ngx_str_rbtree_lookup(&omcf->intake_in_flight, &name, hash)) {
        return NGX_BUSY;
    }

    sn = ngx_alloc(sizeof(ngx_str_node_t) + len, r->connection->log);
    if (sn == NULL) {
        return NGX_ERROR;
    }

    sn->node.key = hash;
    sn->str.data = (u_char *) (sn + 1);
    sn->str.len = len;
    ngx_memcpy(sn->str.data, name.data, len);

    ngx_rbtree_insert(&omcf->intake_in_flight, &sn->node);
    ctx->in_flight = sn;

    return NGX_OK;
}


static ngx_int_t
ngx_http_osago_intake_accept(ngx_http_request_t *r,
    ngx_http_osago_intake_ctx_t *ctx, ngx_str_t *partner, u_char *canonical,
    size_t canonical_len)
{
    u_char                      *p, *doc, *body;
    u_char                       created[sizeof("1970-01-01T00:00:00.000Z")];
    u_char                       updated[NGX_INT_T_LEN];
    u_char                       fp[2 * SHA256_DIGEST_LENGTH];
    u_char                       digest[SHA256_DIGEST_LENGTH];
    u_char                       idem_ttl[NGX_INT_T_LEN], app_ttl[NGX_INT_T_LEN];
    u_char                       user_max[NGX_INT_T_LEN], user_ms[NGX_INT_T_LEN];
    size_t                       argvlen[17], doc_len, body_len;
    uint64_t                     ms;
    ngx_tm_t                     tm;
    ngx_str_t                    user;
    ngx_time_t                  *tp;
    const char                  *argv[17];
    ngx_http_osago_loc_conf_t   *olcf;
    ngx_http_osago_main_conf_t  *omcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_osago_module);
    omcf = ngx_http_get_module_main_conf(r, ngx_http_osago_module);

    tp = ngx_timeofday();
    ms = (uint64_t) tp->sec * 1000 + tp->msec;

    if (ngx_http_osago_intake_uuid7(ctx->id, ms) != NGX_OK
        || ngx_http_osago_intake_traceparent(r, ctx->traceparent) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_gmtime(tp->sec, &tm);
    (void) ngx_sprintf(created, "%4d-%02d-%02dT%02d:%02d:%02d.%03MZ",
                       tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                       tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec,
                       tp->msec);

    SHA256(canonical, canonical_len, digest);
    (void) ngx_hex_dump(fp, digest, SHA256_DIGEST_LENGTH);

    /* the read model document and the 202 body; all of it plain ASCII */
    doc = ngx_pnalloc(r->pool, 256);
    body = ngx_pnalloc(r->pool, 256);
    p = ngx_pnalloc(r->pool, sizeof("/osago/application/") - 1
                             + NGX_HTTP_OSAGO_UUID_LEN);
    if (doc == NULL || body == NULL || p == NULL) {
        return NGX_ERROR;
    }

    doc_len = ngx_sprintf(doc, "{\"id\":\"%*s\",\"status\":\"accepted\","
                          "\"created_at\":\"%*s\",\"updated_at\":%uL,"
                          "\"insurers\":[]}",
                          (size_t) NGX_HTTP_OSAGO_UUID_LEN, ctx->id,
                          sizeof(created) - 1, created, ms) - doc;

    ctx->location.data = p;
    ctx->location.len = ngx_sprintf(p, "/osago/application/%*s",
                                    (size_t) NGX_HTTP_OSAGO_UUID_LEN,
                                    ctx->id) - p;

    body_len = ngx_sprintf(body, "{\"id\":\"%*s\",\"status\":\"accepted\","
                           "\"created_at\":\"%*s\",\"links\":{\"self\":\"%V\"}}",
                           (size_t) NGX_HTTP_OSAGO_UUID_LEN, ctx->id,
                           sizeof(created) - 1, created, &ctx->location)
               - body;

    ctx->status = NGX_HTTP_ACCEPTED;
    ctx->body.data = body;
    ctx->body.len = body_len;

    if (ngx_http_complex_value(r, olcf->user_id, &user) != NGX_OK) {
        return NGX_ERROR;
    }

    /* keys: every variable part is validated or hashed, never raw input */
    argv[0] = (const char *) ngx_pnalloc(r->pool, sizeof("osago:idem::") - 1
                                         + partner->len + ctx->idem_key.len);
    argv[1] = (const char *) ngx_pnalloc(r->pool, sizeof("osago:app:") - 1
                                         + NGX_HTTP_OSAGO_UUID_LEN);
    argv[2] = (const char *) ngx_pnalloc(r->pool, sizeof("osago:rl:user::") - 1
                                         + partner->len + 64);
    if (argv[0] == NULL || argv[1] == NULL || argv[2] == NULL) {
        return NGX_ERROR;
    }

    argvlen[0] = ngx_sprintf((u_char *) argv[0], "osago:idem:%V:%V", partner,
                             &ctx->idem_key) - (u_char *) argv[0];
    argvlen[1] = ngx_sprintf((u_char *) argv[1], "osago:app:%*s",
                             (size_t) NGX_HTTP_OSAGO_UUID_LEN, ctx->id)
                 - (u_char *) argv[1];

    if (user.len && olcf->user_limit) {
        SHA256(user.data, user.len, digest);
        p = ngx_sprintf((u_char *) argv[2], "osago:rl:user:%V:", partner);
        p = ngx_hex_dump(p, digest, 32);
        argvlen[2] = p - (u_char *) argv[2];

    } else {
        argvlen[2] = 0;
    }

    argv[3] = "osago:intake";
    argvlen[3] = sizeof("osago:intake") - 1;

    argv[4] = (const char *) fp;
    argvlen[4] = sizeof(fp);
    argv[5] = (const char *) ctx->id;
    argvlen[5] = NGX_HTTP_OSAGO_UUID_LEN;
    argv[6] = (const char *) partner->data;
    argvlen[6] = partner->len;
    argv[7] = (const char *) canonical;
    argvlen[7] = canonical_len;
    argv[8] = (const char *) ctx->traceparent;
    argvlen[8] = NGX_HTTP_OSAGO_TRACE_LEN;
    argv[9] = (const char *) updated;
    argvlen[9] = ngx_sprintf(updated, "%uL", ms) - updated;
    argv[10] = (const char *) doc;
    argvlen[10] = doc_len;
    argv[11] = (const char *) body;
    argvlen[11] = body_len;
    argv[12] = (const char *) idem_ttl;
    argvlen[12] = ngx_sprintf(idem_ttl, "%T", olcf->idempotency_ttl)
                  - idem_ttl;
    argv[13] = (const char *) app_ttl;
    argvlen[13] = ngx_sprintf(app_ttl, "%T", omcf->app_ttl) - app_ttl;
    argv[14] = (const char *) user_max;
    argvlen[14] = ngx_sprintf(user_max, "%ui", olcf->user_limit) - user_max;
    argv[15] = (const char *) user_ms;
    argvlen[15] = ngx_sprintf(user_ms, "%M", olcf->user_limit_period)
                  - user_ms;
    argv[16] = ctx->replay_or ? "1" : "0";
    argvlen[16] = 1;

    ctx->cmd = ngx_http_osago_redis_eval(omcf->redis_conn, omcf->intake, 4,
                                         17, argv, argvlen,
                                         ngx_http_osago_intake_reply, ctx);
    if (ctx->cmd == NULL) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* The 400 of an invalid body, in the request's pool (err is the caller's). */
static ngx_http_osago_problem_t *
ngx_http_osago_intake_invalid(ngx_http_request_t *r, osago_app_error_t *err)
{
    size_t                     type_len;
    ngx_http_osago_problem_t  *problem;

    problem = ngx_pcalloc(r->pool, sizeof(ngx_http_osago_problem_t));
    if (problem == NULL) {
        return NULL;
    }

    type_len = ngx_strlen(err->type);

    problem->status = NGX_HTTP_BAD_REQUEST;
    problem->type.data = ngx_pnalloc(r->pool,
                                     sizeof("urn:osago:problem:") - 1 + type_len);
    problem->detail.len = ngx_strlen(err->detail);
    problem->detail.data = ngx_pnalloc(r->pool, problem->detail.len + 1);
    problem->pointer.len = ngx_strlen(err->pointer);
    problem->pointer.data = ngx_pnalloc(r->pool, problem->pointer.len + 1);

    if (problem->type.data == NULL || problem->detail.data == NULL
        || problem->pointer.data == NULL)
    {
        return NULL;
    }

    problem->type.len = ngx_sprintf(problem->type.data, "urn:osago:problem:%s",
                                    err->type)
                        - problem->type.data;
    ngx_str_set(&problem->title, "Invalid application");
    ngx_memcpy(problem->detail.data, err->detail, problem->detail.len);
    ngx_memcpy(problem->pointer.data, err->pointer, problem->pointer.len);

    return problem;
}


static void
ngx_http_osago_intake_body_handler(ngx_http_request_t *r)
{
    long                          n;
    u_char                       *canonical;
    size_t                        cap;
    ngx_int_t                     rc;
    ngx_str_t                     body;
    ngx_str_t                     partner;
    uint64_t                      started;
    struct timespec               ts;
    osago_app_error_t             err;
    osago_app_limits_t            limits;
    ngx_http_osago_problem_t     *problem;
    ngx_http_osago_loc_conf_t    *olcf;
    ngx_http_osago_main_conf_t   *omcf;
    ngx_http_osago_limit_ctx_t   *lctx;
    ngx_http_osago_intake_ctx_t  *ctx;

    ctx = ngx_http_osago_intake_get_ctx(r);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_osago_module);
    omcf = ngx_http_get_module_main_conf(r, ngx_http_osago_module);

    rc = ngx_http_osago_intake_body_bytes(r, &body, olcf->intake_max_body);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_finalize_request(r, ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_TOO_LARGE, 0));
        return;
    }

    cap = 2 * body.len + 512;

    canonical = ngx_pnalloc(r->pool, cap);
    if (canonical == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    limits.max_depth = olcf->intake_max_depth;
    limits.today_days = (int) (ngx_time() / 86400);
    limits.any_start_date = 0;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    started = (uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;

    n = osago_app_canonicalize(body.data, body.len, &limits, canonical, cap,
                               &err);

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ngx_http_osago_metrics_intake_parse(omcf,
        ((uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec - started) / 1000);

    if (n < 0 && ngx_strcmp(err.type, "internal") == 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "osago intake: validator failed: %s", err.detail);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (n < 0) {
        problem = ngx_http_osago_intake_invalid(r, &err);
        if (problem == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        if (err.start_window) {
            /* perhaps accepted on an earlier day: the key decides (see ctx) */
            limits.any_start_date = 1;
            n = osago_app_canonicalize(body.data, body.len, &limits,
                                       canonical, cap, &err);
        }

        if (n < 0) {
            ngx_http_osago_metrics_intake(omcf, NGX_HTTP_OSAGO_INTAKE_REJECTED,
                                          NGX_HTTP_OSAGO_INTAKE_REASON_INVALID);
            ngx_http_finalize_request(r, ngx_http_osago_problem_send(r,
                                                                     problem));
            return;
        }

        ctx->replay_or = problem;
    }

    lctx = ngx_http_osago_limit_get_ctx(r);

    if (lctx == NULL || lctx->partner.len == 0) {
        /* admitted by the "open" fallback without a known partner */
        ngx_http_finalize_request(r, ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_UNAVAILABLE, 1));
        return;
    }

    partner = lctx->partner;

    rc = ngx_http_osago_intake_in_flight(r, ctx, &partner);

    if (rc == NGX_BUSY) {
        ngx_http_finalize_request(r, ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_IN_PROGRESS, 1));
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_osago_intake_accept(r, ctx, &partner, canonical,
                                      (size_t) n);

    if (rc == NGX_ERROR) {
        ngx_http_osago_intake_release(ctx);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_osago_intake_release(ctx);
        ngx_http_finalize_request(r, ngx_http_osago_intake_problem(r,
                                     NGX_HTTP_OSAGO_INTAKE_UNAVAILABLE, 1));
        return;
    }

    ctx->resume.handler = ngx_http_osago_intake_resume;
    ctx->resume.data = ctx;
    ctx->resume.log = r->connection->log;

    /* notice a client that gives up while Redis answers */
    r->read_event_handler = ngx_http_test_reading;
}


char *
ngx_http_osago_intake(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_osago_loc_conf_t   *olcf = conf;
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_osago_main_conf_t  *omcf;

    if (olcf->intake) {
        return "is duplicate";
    }

    olcf->intake = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_osago_intake_handler;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_osago_module);
    omcf->used = 1;
    omcf->intake_used = 1;

    return NGX_CONF_OK;
}


void
ngx_http_osago_intake_init_worker(ngx_http_osago_main_conf_t *omcf)
{
    ngx_rbtree_init(&omcf->intake_in_flight, &omcf->intake_sentinel,
                    ngx_str_rbtree_insert_value);
}
