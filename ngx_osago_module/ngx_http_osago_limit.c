/*
 * Per-partner rate limiting: a PREACCESS phase handler that identifies the
 * partner by its API key and asks Redis for a GCRA decision (one EVALSHA),
 * parking the request until the reply resumes it; a header filter that adds
 * the RateLimit headers; the $osago_partner* variables.
 */

#include "ngx_http_osago_zone.h"

#include <openssl/sha.h>


/* why a key was refused; indexes ngx_http_osago_limit_unauthorized[] */
typedef enum {
    NGX_HTTP_OSAGO_KEY_MISSING = 0,
    NGX_HTTP_OSAGO_KEY_MALFORMED,
    NGX_HTTP_OSAGO_KEY_UNKNOWN,
    NGX_HTTP_OSAGO_KEY_DISABLED
} ngx_http_osago_key_problem_e;


/*
 * The requests of one event-loop tick that wait for the same partner's
 * decision: one EVALSHA answers them all.
 */
typedef struct {
    ngx_queue_t                     queue;      /* the worker's open batches */
    ngx_queue_t                     waiters;
    ngx_uint_t                      count;      /* as sent to Redis */
    ngx_uint_t                      fetch;
    u_char                          digest[NGX_HTTP_OSAGO_DIGEST_LEN];
    ngx_http_osago_contract_t       contract;
    ngx_http_osago_redis_cmd_t     *cmd;
    ngx_http_osago_main_conf_t     *omcf;
} ngx_http_osago_limit_batch_t;


typedef struct {
    ngx_http_osago_limit_ctx_t      limit;      /* first: ctx is the state */

    ngx_http_osago_contract_t       contract;
    ngx_uint_t                      key_problem;
    ngx_http_osago_limit_batch_t   *batch;
    ngx_queue_t                     batch_link;
    ngx_event_t                     resume;
} ngx_http_osago_limit_state_t;


static ngx_int_t ngx_http_osago_limit_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_osago_limit_finish(ngx_http_request_t *r,
    ngx_http_osago_limit_state_t *st);
static void ngx_http_osago_limit_fallback(ngx_http_request_t *r,
    ngx_http_osago_limit_state_t *st, ngx_http_osago_partner_t *partner);
static void ngx_http_osago_limit_cleanup(void *data);
static ngx_int_t ngx_http_osago_limit_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_osago_limit_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


static ngx_http_osago_problem_t  ngx_http_osago_limit_unauthorized[] = {
    { NGX_HTTP_UNAUTHORIZED,
      ngx_string("urn:osago:problem:api-key-missing"),
      ngx_string("API key required"),
      ngx_string("send the partner API key in the X-API-Key header"),
      ngx_null_string },

    { NGX_HTTP_UNAUTHORIZED,
      ngx_string("urn:osago:problem:api-key-malformed"),
      ngx_string("API key malformed"),
      ngx_string("an API key is at most 256 printable ASCII characters"),
      ngx_null_string },

    { NGX_HTTP_UNAUTHORIZED,
      ngx_string("urn:osago:problem:api-key-unknown"),
      ngx_string("API key not recognised"),
      ngx_string("no partner has this API key"),
      ngx_null_string },

    { NGX_HTTP_UNAUTHORIZED,
      ngx_string("urn:osago:problem:api-key-disabled"),
      ngx_string("API key disabled"),
      ngx_string("this partner's access is disabled; contact the operator"),
      ngx_null_string }
};

static ngx_http_osago_problem_t  ngx_http_osago_limit_limited = {
    429,
    ngx_string("urn:osago:problem:rate-limited"),
    ngx_string("Too many requests"),
    ngx_string("over the contracted request rate; retry after the time in "
               "the Retry-After header"),
    ngx_null_string
};

static ngx_http_osago_problem_t  ngx_http_osago_limit_unavailable = {
    NGX_HTTP_SERVICE_UNAVAILABLE,
    ngx_string("urn:osago:problem:limiter-unavailable"),
    ngx_string("Service temporarily unavailable"),
    ngx_string("the request could not be checked against the partner "
               "contract; retry shortly"),
    ngx_null_string
};

static ngx_http_osago_problem_t  ngx_http_osago_limit_busy = {
    NGX_HTTP_SERVICE_UNAVAILABLE,
    ngx_string("urn:osago:problem:limiter-unavailable"),
    ngx_string("Service temporarily unavailable"),
    ngx_string("too many API keys new to this server at once; retry "
               "shortly"),
    ngx_null_string
};


/* in the order of ngx_http_osago_outcome_e; $osago_limit_status and metrics */
ngx_str_t  ngx_http_osago_outcome_names[] = {
    ngx_string("allowed"),
    ngx_string("limited"),
    ngx_string("unauthorized"),
    ngx_string("fallback_allowed"),
    ngx_string("fallback_limited"),
    ngx_string("unavailable"),
    ngx_string("busy")
};


#define NGX_HTTP_OSAGO_VAR_PARTNER  0
#define NGX_HTTP_OSAGO_VAR_POOL     1
#define NGX_HTTP_OSAGO_VAR_STATUS   2

static ngx_http_variable_t  ngx_http_osago_limit_vars[] = {

    { ngx_string("osago_partner"), NULL, ngx_http_osago_limit_variable,
      NGX_HTTP_OSAGO_VAR_PARTNER, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("osago_partner_pool"), NULL, ngx_http_osago_limit_variable,
      NGX_HTTP_OSAGO_VAR_POOL, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("osago_limit_status"), NULL, ngx_http_osago_limit_variable,
      NGX_HTTP_OSAGO_VAR_STATUS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/*
 * Module contexts are wiped by internal redirects; the pool cleanup that
 * owns the state is not, so the decision is found again through it and a
 * redirected request is not counted twice.
 */
ngx_http_osago_limit_ctx_t *
ngx_http_osago_limit_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t          *cln;
    ngx_http_osago_limit_ctx_t  *ctx;

    r = r->main;

    ctx = ngx_http_get_module_ctx(r, ngx_http_osago_module);

    if (ctx || !r->internal) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_osago_limit_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_osago_module);
            return ctx;
        }
    }

    return NULL;
}


static void
ngx_http_osago_limit_decide(ngx_http_osago_limit_state_t *st,
    ngx_uint_t outcome)
{
    st->limit.outcome = outcome;
    st->limit.decided = 1;
}


static void
ngx_http_osago_limit_set_policy(ngx_http_osago_limit_state_t *st,
    ngx_uint_t rate_milli, ngx_uint_t burst, uint64_t remaining,
    uint64_t retry_us, uint64_t reset_us)
{
    ngx_http_osago_limit_ctx_t  *ctx = &st->limit;

    ctx->has_policy = 1;
    ctx->quota = burst;
    ctx->window = ngx_max((burst * 1000 + rate_milli - 1) / rate_milli, 1);
    ctx->remaining = remaining;
    ctx->reset = (reset_us + 999999) / 1000000;
    ctx->retry_after = ngx_max((retry_us + 999999) / 1000000, 1);
}


static void
ngx_http_osago_limit_set_partner(ngx_http_osago_limit_state_t *st,
    ngx_http_osago_contract_t *contract)
{
    if (contract != &st->contract) {
        st->contract = *contract;
    }

    st->limit.partner.data = st->contract.name;
    st->limit.partner.len = st->contract.name_len;
    st->limit.pool.data = st->contract.pool;
    st->limit.pool.len = st->contract.pool_len;
}


static ngx_int_t
ngx_http_osago_limit_check_key(ngx_str_t *key)
{
    u_char  *p, *last;

    if (key->len > NGX_HTTP_OSAGO_API_KEY_MAX) {
        return NGX_ERROR;
    }

    for (p = key->data, last = p + key->len; p < last; p++) {
        if (*p < 0x21 || *p > 0x7e) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_osago_limit_copy_str(u_char *dst, size_t *len, redisReply *reply)
{
    *len = 0;

    if (reply->type == REDIS_REPLY_STRING) {
        *len = ngx_min((size_t) reply->len, NGX_HTTP_OSAGO_NAME_MAX);
        ngx_memcpy(dst, reply->str, *len);
    }
}


/*
 * The script's answer has exactly the shape its first element promises
 * (ngx_http_osago_scripts.h): anything else, from a script of another
 * release or from whatever sits between us and Redis, is taken for Redis
 * trouble rather than read past its end or divided by.
 */
static ngx_uint_t
ngx_http_osago_limit_reply_valid(redisReply *reply, ngx_uint_t fetch)
{
    size_t     i, want;
    long long  code;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1
        || reply->element[0]->type != REDIS_REPLY_INTEGER)
    {
        return 0;
    }

    code = reply->element[0]->integer;

    if (code < -3) {
        return 0;
    }

    if (code == -1 || (code < 0 && reply->elements == 1)) {
        want = 1;           /* unknown key; or a contract without a name */

    } else {
        want = (code < 0 || fetch) ? 8 : 4;
    }

    if (reply->elements != want) {
        return 0;
    }

    for (i = 0; i < ngx_min(want, 6); i++) {
        if (reply->element[i]->type != REDIS_REPLY_INTEGER) {
            return 0;
        }
    }

    if (code >= 0 && fetch
        && (reply->element[4]->integer < 1 || reply->element[5]->integer < 1))
    {
        return 0;
    }

    return 1;
}


/*
 * When the script read the contract, it is this worker's new copy of it.
 */
static void
ngx_http_osago_limit_learn(ngx_http_osago_limit_batch_t *batch,
    ngx_int_t code, redisReply *reply)
{
    ngx_http_osago_partner_t    *partner;
    ngx_http_osago_contract_t   *c = &batch->contract;
    ngx_http_osago_main_conf_t  *omcf = batch->omcf;

    if (reply->elements >= 8) {
        c->rate_milli = ngx_max(reply->element[4]->integer, 0);
        c->burst = ngx_max(reply->element[5]->integer, 0);
        ngx_http_osago_limit_copy_str(c->name, &c->name_len,
                                      reply->element[6]);
        ngx_http_osago_limit_copy_str(c->pool, &c->pool_len,
                                      reply->element[7]);
    }

    /* an unusable contract is an operator's error: ask again next time */
    if (code == -3) {
        return;
    }

    /* a cached partner's batches (no fetch) are the hot path: only a key
     * that no longer names one costs the zone's lock there */
    if (batch->fetch || code == -1) {
        ngx_http_osago_zone_key_learn(omcf, batch->digest, code != -1);
    }

    if (!batch->fetch) {
        return;
    }

    partner = ngx_http_osago_partner_store(omcf->partners, batch->digest);
    if (partner == NULL) {
        return;
    }

    partner->expires = ngx_current_msec + omcf->partner_cache_ttl;

    if (code == -1) {
        partner->state = NGX_HTTP_OSAGO_PARTNER_UNKNOWN;
        ngx_http_osago_partner_settle(omcf->partners, partner);
        return;
    }

    partner->state = (code == -2) ? NGX_HTTP_OSAGO_PARTNER_DISABLED
                                  : NGX_HTTP_OSAGO_PARTNER_KNOWN;
    ngx_http_osago_partner_settle(omcf->partners, partner);

    if (partner->shared == NULL
        || ngx_memn2cmp(partner->contract.name, c->name,
                        partner->contract.name_len, c->name_len))
    {
        partner->shared = ngx_http_osago_zone_partner(omcf, c->name,
                                                      c->name_len);
    }

    partner->contract = *c;
}


/* The decision for the request that came index-th in its batch. */
static void
ngx_http_osago_limit_decide_from_reply(ngx_http_osago_limit_state_t *st,
    ngx_http_osago_limit_batch_t *batch, ngx_int_t code, redisReply *reply,
    ngx_uint_t index)
{
    uint64_t                    remaining, retry_us, reset_us, interval, ahead;
    ngx_http_osago_contract_t  *c = &batch->contract;

    switch (code) {

    case -1:
        st->key_problem = NGX_HTTP_OSAGO_KEY_UNKNOWN;
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAUTHORIZED);
        return;

    case -2:
        ngx_http_osago_limit_set_partner(st, c);
        st->key_problem = NGX_HTTP_OSAGO_KEY_DISABLED;
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAUTHORIZED);
        return;

    case -3:
        ngx_log_error(NGX_LOG_ERR, st->limit.request->connection->log, 0,
                      "osago limit: partner \"%*s\" (key hash %*xs...) has an "
                      "unusable contract: rate or burst missing, not "
                      "positive or over 1000000, or a name outside "
                      "[A-Za-z0-9_.-]{1,64}",
                      c->name_len, c->name, (size_t) 6, batch->digest);
        ngx_http_osago_limit_set_partner(st, c);
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAVAILABLE);
        return;
    }

    remaining = ngx_max(reply->element[1]->integer, 0);
    retry_us = ngx_max(reply->element[2]->integer, 0);
    reset_us = ngx_max(reply->element[3]->integer, 0);

    ngx_http_osago_limit_set_partner(st, c);

    if (index < (ngx_uint_t) code) {
        /* admitted before the batch's later requests: more was left then */
        ahead = code - 1 - index;
        interval = 1000000000ULL / ngx_max(c->rate_milli, 1);

        ngx_http_osago_limit_set_policy(st, c->rate_milli, c->burst,
                                        remaining + ahead, 0,
                                        reset_us > ahead * interval
                                        ? reset_us - ahead * interval : 0);
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_ALLOWED);
        return;
    }

    ngx_http_osago_limit_set_policy(st, c->rate_milli, c->burst, 0, retry_us,
                                    reset_us);
    ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_LIMITED);
}


static void
ngx_http_osago_limit_wake(ngx_http_osago_limit_state_t *st)
{
    st->batch = NULL;
    st->limit.waiting = 0;

    /* resumed from the event loop, not from inside hiredis */
    ngx_post_event(&st->resume, &ngx_posted_events);
}


static void
ngx_http_osago_limit_batch_fallback(ngx_http_osago_limit_batch_t *batch)
{
    ngx_queue_t                   *q;
    ngx_http_osago_partner_t      *partner;
    ngx_http_osago_limit_state_t  *st;

    partner = ngx_http_osago_partner_lookup(batch->omcf->partners,
                                            batch->digest);

    while (!ngx_queue_empty(&batch->waiters)) {
        q = ngx_queue_head(&batch->waiters);
        ngx_queue_remove(q);
        st = ngx_queue_data(q, ngx_http_osago_limit_state_t, batch_link);

        ngx_http_osago_limit_fallback(st->limit.request, st, partner);
        ngx_http_osago_limit_wake(st);
    }
}


static void
ngx_http_osago_limit_batch_reply(void *data,
    ngx_http_osago_redis_status_e status, redisReply *reply)
{
    ngx_http_osago_limit_batch_t  *batch = data;
    ngx_int_t                      code;
    ngx_uint_t                     index;
    ngx_queue_t                   *q;
    ngx_http_osago_limit_state_t  *st;

    batch->cmd = NULL;

    if (status != NGX_HTTP_OSAGO_REDIS_REPLY
        || !ngx_http_osago_limit_reply_valid(reply, batch->fetch))
    {
        if (status == NGX_HTTP_OSAGO_REDIS_REPLY) {
            ngx_log_error(NGX_LOG_ERR, batch->omcf->redis_log, 0,
                          "osago limit: unexpected reply from Redis%s%*s",
                          reply->type == REDIS_REPLY_ERROR ? ": " : "",
                          reply->type == REDIS_REPLY_ERROR
                          ? (size_t) reply->len : 0,
                          reply->str);
        }

        ngx_http_osago_limit_batch_fallback(batch);
        ngx_free(batch);
        return;
    }

    code = reply->element[0]->integer;

    ngx_http_osago_limit_learn(batch, code, reply);

    for (index = 0; !ngx_queue_empty(&batch->waiters); index++) {
        q = ngx_queue_head(&batch->waiters);
        ngx_queue_remove(q);
        st = ngx_queue_data(q, ngx_http_osago_limit_state_t, batch_link);

        ngx_http_osago_limit_decide_from_reply(st, batch, code, reply, index);
        ngx_http_osago_limit_wake(st);
    }

    ngx_free(batch);
}


/*
 * Runs once per event-loop tick in which requests asked for a decision:
 * one EVALSHA per partner with the number of requests it has waiting.
 */
static void
ngx_http_osago_limit_flush(ngx_event_t *ev)
{
    ngx_http_osago_main_conf_t  *omcf = ev->data;

    u_char                         count[NGX_INT_T_LEN];
    u_char                         rate[NGX_INT_T_LEN], burst[NGX_INT_T_LEN];
    size_t                         argvlen[7];
    const char                    *argv[7];
    ngx_queue_t                   *q;
    ngx_http_osago_partner_t      *partner;
    ngx_http_osago_limit_batch_t  *batch;
    u_char                         partner_key[sizeof("osago:partner:") - 1
                                               + 2 * NGX_HTTP_OSAGO_DIGEST_LEN];

    ngx_memcpy(partner_key, "osago:partner:", sizeof("osago:partner:") - 1);

    while (!ngx_queue_empty(&omcf->limit_batches)) {
        q = ngx_queue_head(&omcf->limit_batches);
        ngx_queue_remove(q);
        batch = ngx_queue_data(q, ngx_http_osago_limit_batch_t, queue);

        /* later requests of this partner start a new batch */
        partner = ngx_http_osago_partner_lookup(omcf->partners, batch->digest);
        if (partner && partner->batch == batch) {
            partner->batch = NULL;
        }

        if (batch->count == 0) {
            ngx_free(batch);    /* everyone left before it was sent */
            continue;
        }

        /* only the key's hash ever reaches Redis, never its bytes */
        ngx_hex_dump(partner_key + sizeof("osago:partner:") - 1,
                     batch->digest, NGX_HTTP_OSAGO_DIGEST_LEN);

        argv[0] = (const char *) partner_key;
        argvlen[0] = sizeof(partner_key);
        argv[1] = batch->fetch ? "1" : "0";
        argvlen[1] = 1;
        argv[2] = (const char *) rate;
        argvlen[2] = ngx_sprintf(rate, "%ui", batch->contract.rate_milli)
                     - rate;
        argv[3] = (const char *) burst;
        argvlen[3] = ngx_sprintf(burst, "%ui", batch->contract.burst) - burst;
        argv[4] = (const char *) batch->contract.name;
        argvlen[4] = batch->contract.name_len;
        argv[5] = "osago:rl:partner:";
        argvlen[5] = sizeof("osago:rl:partner:") - 1;
        argv[6] = (const char *) count;
        argvlen[6] = ngx_sprintf(count, "%ui", batch->count) - count;

        batch->cmd = ngx_http_osago_redis_eval(omcf->redis_conn, omcf->gcra,
                                               1, 7, argv, argvlen,
                                               ngx_http_osago_limit_batch_reply,
                                               batch);
        if (batch->cmd == NULL) {
            ngx_http_osago_limit_batch_fallback(batch);
            ngx_free(batch);
        }
    }
}


static void
ngx_http_osago_limit_resume(ngx_event_t *ev)
{
    ngx_http_osago_limit_state_t  *st = ev->data;
    ngx_http_request_t            *r = st->limit.request;
    ngx_connection_t              *c = r->connection;

    ngx_http_set_log_request(c->log, r);

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler(r);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_osago_limit_cleanup(void *data)
{
    ngx_http_osago_limit_state_t  *st = data;

    if (st->batch) {
        ngx_queue_remove(&st->batch_link);

        /* once sent, Redis has counted this request anyway */
        if (st->batch->cmd == NULL) {
            st->batch->count--;
        }

        st->batch = NULL;
    }

    if (st->resume.posted) {
        ngx_delete_posted_event(&st->resume);
    }
}


static ngx_int_t
ngx_http_osago_limit_join_batch(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_limit_state_t *st, ngx_http_osago_partner_t *partner,
    ngx_uint_t fetch)
{
    ngx_http_osago_limit_batch_t  *batch = partner->batch;

    if (batch == NULL) {
        batch = ngx_alloc(sizeof(ngx_http_osago_limit_batch_t),
                          st->limit.request->connection->log);
        if (batch == NULL) {
            return NGX_ERROR;
        }

        batch->omcf = omcf;
        batch->cmd = NULL;
        batch->count = 0;
        batch->fetch = fetch;
        batch->contract = partner->contract;
        ngx_memcpy(batch->digest, st->limit.digest, NGX_HTTP_OSAGO_DIGEST_LEN);
        ngx_queue_init(&batch->waiters);

        ngx_queue_insert_tail(&omcf->limit_batches, &batch->queue);
        partner->batch = batch;

        if (!omcf->limit_flush.posted) {
            ngx_post_event(&omcf->limit_flush, &ngx_posted_events);
        }
    }

    ngx_queue_insert_tail(&batch->waiters, &st->batch_link);
    batch->count++;
    st->batch = batch;

    return NGX_OK;
}


/*
 * A key that names no partner this worker knows costs Redis a lookup, and
 * keys are free to make up: a flood of random ones, new or seen a cache TTL
 * ago, would put one EVALSHA per request on the Redis every edge shares.
 * Such lookups draw from a bucket of osago_partner_lookup_rate a second (as
 * many at once); partners' keys, cached or stale, and requests that join a
 * lookup already on its way never do, nor any while Redis is away (the
 * fallback answers, and Redis is not asked).  Lookups queued behind a
 * worker's first connect do draw: they reach Redis once it is made.  Once the bucket is empty, a
 * key that named a partner when last asked (by any worker, before a reload
 * too: the zone remembers) is still looked up.
 */
static ngx_uint_t
ngx_http_osago_limit_may_look_up(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_partner_t *partner, u_char *digest)
{
    ngx_uint_t  rate, full, elapsed;

    rate = omcf->partner_lookup_rate;

    if (rate == 0
        || (partner
            && (partner->batch
                || partner->state == NGX_HTTP_OSAGO_PARTNER_KNOWN
                || partner->state == NGX_HTTP_OSAGO_PARTNER_DISABLED))
        || !ngx_http_osago_redis_takes_commands(omcf->redis_conn))
    {
        return 1;
    }

    /* in thousandths of a lookup: one per millisecond for each a second */
    full = rate * 1000;
    elapsed = (ngx_uint_t) (ngx_current_msec - omcf->lookup_refilled);
    omcf->lookup_refilled = ngx_current_msec;

    if (elapsed >= 1000) {
        omcf->lookup_tokens = full;

    } else {
        omcf->lookup_tokens = ngx_min(full,
                                      omcf->lookup_tokens + elapsed * rate);
    }

    if (omcf->lookup_tokens >= 1000) {
        omcf->lookup_tokens -= 1000;
        return 1;
    }

    return ngx_http_osago_zone_key_known(omcf, digest);
}


static ngx_int_t
ngx_http_osago_limit_handler(ngx_http_request_t *r)
{
    ngx_str_t                      key;
    ngx_uint_t                     fresh;
    ngx_pool_cleanup_t            *cln;
    ngx_http_osago_partner_t      *partner;
    ngx_http_osago_loc_conf_t     *olcf;
    ngx_http_osago_main_conf_t    *omcf;
    ngx_http_osago_limit_ctx_t    *ctx;
    ngx_http_osago_limit_state_t  *st;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_osago_module);

    if (!olcf->limit || r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_osago_limit_get_ctx(r);

    if (ctx) {
        if (ctx->waiting) {
            return NGX_AGAIN;
        }

        st = (ngx_http_osago_limit_state_t *) ctx;

        return ngx_http_osago_limit_finish(r, st);
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_osago_limit_state_t));
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st = cln->data;
    ngx_memzero(st, sizeof(ngx_http_osago_limit_state_t));

    cln->handler = ngx_http_osago_limit_cleanup;

    st->limit.request = r;
    st->resume.handler = ngx_http_osago_limit_resume;
    st->resume.data = st;
    st->resume.log = r->connection->log;

    ngx_http_set_ctx(r, &st->limit, ngx_http_osago_module);

    if (ngx_http_complex_value(r, olcf->api_key, &key) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (key.len == 0) {
        st->key_problem = NGX_HTTP_OSAGO_KEY_MISSING;
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAUTHORIZED);
        return ngx_http_osago_limit_finish(r, st);
    }

    if (ngx_http_osago_limit_check_key(&key) != NGX_OK) {
        st->key_problem = NGX_HTTP_OSAGO_KEY_MALFORMED;
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAUTHORIZED);
        return ngx_http_osago_limit_finish(r, st);
    }

    SHA256(key.data, key.len, st->limit.digest);

    omcf = ngx_http_get_module_main_conf(r, ngx_http_osago_module);

    partner = ngx_http_osago_partner_lookup(omcf->partners, st->limit.digest);

    fresh = partner
            && partner->state != NGX_HTTP_OSAGO_PARTNER_NEW
            && (ngx_msec_int_t) (partner->expires - ngx_current_msec) > 0;

    if (fresh && partner->state == NGX_HTTP_OSAGO_PARTNER_UNKNOWN) {
        st->key_problem = NGX_HTTP_OSAGO_KEY_UNKNOWN;
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAUTHORIZED);
        return ngx_http_osago_limit_finish(r, st);
    }

    if (fresh && partner->state == NGX_HTTP_OSAGO_PARTNER_DISABLED) {
        ngx_http_osago_limit_set_partner(st, &partner->contract);
        st->key_problem = NGX_HTTP_OSAGO_KEY_DISABLED;
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAUTHORIZED);
        return ngx_http_osago_limit_finish(r, st);
    }

    if (!ngx_http_osago_limit_may_look_up(omcf, partner, st->limit.digest)) {
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_BUSY);
        return ngx_http_osago_limit_finish(r, st);
    }

    if (partner == NULL) {
        /* a placeholder, so that this tick's requests share one question */
        partner = ngx_http_osago_partner_store(omcf->partners,
                                               st->limit.digest);
        if (partner == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ngx_http_osago_limit_join_batch(omcf, st, partner, !fresh) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->limit.waiting = 1;

    /* notice a client that gives up while Redis answers */
    r->read_event_handler = ngx_http_test_reading;

    return NGX_AGAIN;
}


void
ngx_http_osago_limit_init_worker(ngx_http_osago_main_conf_t *omcf,
    ngx_log_t *log)
{
    ngx_queue_init(&omcf->limit_batches);

    omcf->lookup_tokens = omcf->partner_lookup_rate * 1000;
    omcf->lookup_refilled = ngx_current_msec;

    omcf->limit_flush.handler = ngx_http_osago_limit_flush;
    omcf->limit_flush.data = omcf;
    omcf->limit_flush.log = log;
    omcf->redis_log = log;
}


void
ngx_http_osago_limit_exit_worker(ngx_http_osago_main_conf_t *omcf)
{
    ngx_queue_t                   *q;
    ngx_http_osago_limit_batch_t  *batch;

    if (omcf->limit_flush.posted) {
        ngx_delete_posted_event(&omcf->limit_flush);
    }

    while (!ngx_queue_empty(&omcf->limit_batches)) {
        q = ngx_queue_head(&omcf->limit_batches);
        ngx_queue_remove(q);
        batch = ngx_queue_data(q, ngx_http_osago_limit_batch_t, queue);
        ngx_free(batch);
    }
}


/* Redis is unreachable or did not answer in time. */
static void
ngx_http_osago_limit_fallback(ngx_http_request_t *r,
    ngx_http_osago_limit_state_t *st, ngx_http_osago_partner_t *partner)
{
    uint64_t                    remaining, retry_us, reset_us;
    ngx_uint_t                  rate, burst;
    ngx_http_osago_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_osago_module);

    if (olcf->fallback == NGX_HTTP_OSAGO_FALLBACK_CLOSED) {
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAVAILABLE);
        return;
    }

    if (partner && partner->state == NGX_HTTP_OSAGO_PARTNER_NEW) {
        partner = NULL;     /* asked, never answered: nothing is known */
    }

    /* what this worker last heard of the key still holds */
    if (partner && partner->state != NGX_HTTP_OSAGO_PARTNER_KNOWN) {
        st->key_problem = (partner->state == NGX_HTTP_OSAGO_PARTNER_UNKNOWN)
                          ? NGX_HTTP_OSAGO_KEY_UNKNOWN
                          : NGX_HTTP_OSAGO_KEY_DISABLED;
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAUTHORIZED);
        return;
    }

    if (partner) {
        ngx_http_osago_limit_set_partner(st, &partner->contract);
    }

    if (olcf->fallback == NGX_HTTP_OSAGO_FALLBACK_OPEN) {
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_FALLBACK_ALLOWED);
        return;
    }

    if (partner == NULL || partner->shared == NULL) {
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_UNAVAILABLE);
        return;
    }

    /* this instance's share of the contract */
    rate = ngx_max(partner->contract.rate_milli / olcf->edges, 1);
    burst = ngx_max(partner->contract.burst / olcf->edges, 1);

    if (ngx_http_osago_zone_local_gcra(
            ngx_http_get_module_main_conf(r, ngx_http_osago_module),
            partner->shared, rate, burst, &remaining, &retry_us, &reset_us)
        == NGX_OK)
    {
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_FALLBACK_ALLOWED);

    } else {
        ngx_http_osago_limit_decide(st, NGX_HTTP_OSAGO_FALLBACK_LIMITED);
    }

    ngx_http_osago_limit_set_policy(st, rate, burst, remaining, retry_us,
                                    reset_us);
}


static ngx_int_t
ngx_http_osago_limit_finish(ngx_http_request_t *r,
    ngx_http_osago_limit_state_t *st)
{
    ngx_http_osago_problem_t      *problem;
    ngx_http_osago_partner_t      *partner;
    ngx_http_osago_main_conf_t    *omcf;
    ngx_http_osago_shm_partner_t  *shared;

    static ngx_str_t  www_authenticate = ngx_string("ApiKey header=\"X-API-Key\"");

    omcf = ngx_http_get_module_main_conf(r, ngx_http_osago_module);

    if (!st->limit.counted) {
        st->limit.counted = 1;

        shared = NULL;

        if (st->limit.partner.len) {
            partner = ngx_http_osago_partner_lookup(omcf->partners,
                                                    st->limit.digest);
            shared = partner ? partner->shared : NULL;
        }

        ngx_http_osago_metrics_decision(omcf, shared, st->limit.outcome);
    }

    switch (st->limit.outcome) {

    case NGX_HTTP_OSAGO_ALLOWED:
    case NGX_HTTP_OSAGO_FALLBACK_ALLOWED:
        return NGX_DECLINED;

    case NGX_HTTP_OSAGO_UNAUTHORIZED:
        problem = &ngx_http_osago_limit_unauthorized[st->key_problem];

        if (ngx_http_osago_add_header(r, "WWW-Authenticate", &www_authenticate)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        break;

    case NGX_HTTP_OSAGO_LIMITED:
    case NGX_HTTP_OSAGO_FALLBACK_LIMITED:
        problem = &ngx_http_osago_limit_limited;

        if (ngx_http_osago_add_header_uint(r, "Retry-After",
                                           st->limit.retry_after)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        break;

    default: /* NGX_HTTP_OSAGO_UNAVAILABLE, NGX_HTTP_OSAGO_BUSY */
        problem = (st->limit.outcome == NGX_HTTP_OSAGO_BUSY)
                  ? &ngx_http_osago_limit_busy
                  : &ngx_http_osago_limit_unavailable;

        if (ngx_http_osago_add_header_uint(r, "Retry-After", 1) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ngx_http_finalize_request(r, ngx_http_osago_problem_send(r, problem));

    return NGX_DONE;
}


static ngx_int_t
ngx_http_osago_limit_header_filter(ngx_http_request_t *r)
{
    ngx_str_t                    policy, limit;
    ngx_http_osago_limit_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_osago_limit_get_ctx(r);

    if (ctx == NULL || !ctx->has_policy) {
        return ngx_http_next_header_filter(r);
    }

    policy.data = ngx_pnalloc(r->pool, 2 * (sizeof("\"partner\";q=;w=") - 1
                                           + 2 * NGX_INT_T_LEN));
    if (policy.data == NULL) {
        return NGX_ERROR;
    }

    policy.len = ngx_sprintf(policy.data, "\"partner\";q=%ui;w=%ui",
                             ctx->quota, ctx->window) - policy.data;

    limit.data = policy.data + policy.len;
    limit.len = ngx_sprintf(limit.data, "\"partner\";r=%ui;t=%ui",
                            ctx->remaining, ctx->reset) - limit.data;

    if (ngx_http_osago_add_header(r, "RateLimit-Policy", &policy) != NGX_OK
        || ngx_http_osago_add_header(r, "RateLimit", &limit) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_osago_limit_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                   *s;
    ngx_http_osago_limit_ctx_t  *ctx;

    ctx = ngx_http_osago_limit_get_ctx(r);

    if (ctx == NULL || !ctx->decided) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {
    case NGX_HTTP_OSAGO_VAR_PARTNER:
        s = &ctx->partner;
        break;
    case NGX_HTTP_OSAGO_VAR_POOL:
        s = &ctx->pool;
        break;
    default:
        s = &ngx_http_osago_outcome_names[ctx->outcome];
    }

    v->len = s->len;
    v->data = s->data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


ngx_int_t
ngx_http_osago_limit_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_osago_limit_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_osago_limit_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_osago_limit_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_osago_limit_header_filter;

    return NGX_OK;
}
