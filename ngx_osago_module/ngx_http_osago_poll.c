/*
 * GET /osago/application/{id}?latest=<updated_at ms>: the application's
 * read model, answered at once when it is newer than what the client has,
 * otherwise parked in this worker until the application changes (200) or
 * the poll timeout passes (304).
 *
 * Parked requests hold no Redis connection and no upstream.  Each worker
 * keeps one subscriber connection on osago:app-updates and a tree of the
 * ids it waits for (a node per id).  A message "{id} {updated_at}" for a
 * node with parked requests sends ONE read of the read model, whatever the
 * number of requests parked on it, and answers every request the new
 * version is news to, a slice per event-loop turn.
 *
 * No lost wake-ups.  A request's own read is registered on its node while
 * it is in flight; a message that arrives meanwhile is remembered on the
 * node (announced), and a request whose read came back older than the
 * announced version is not parked blind but woken at once.  When the
 * subscription is (re)confirmed, every id with parked requests is read
 * again, a slice at a time: what was published while nobody listened is
 * found that way; and a request whose read was in flight across that
 * re-check is read again once parked (the subscription's epoch changed
 * under it).
 */

#include <time.h>

#include "ngx_http_osago_module.h"


#define NGX_HTTP_OSAGO_POLL_ID_LEN      36      /* a UUID, 8-4-4-4-12 */
#define NGX_HTTP_OSAGO_POLL_EXIT_WATCH  250     /* ms */
#define NGX_HTTP_OSAGO_POLL_WAKE_RETRY  1000    /* ms */
#define NGX_HTTP_OSAGO_POLL_RECHECK_SLICE  128   /* ids read again at once */
#define NGX_HTTP_OSAGO_POLL_RECHECK_PAUSE  10    /* ms between slices */
#define NGX_HTTP_OSAGO_POLL_OFFER_SLICE    256   /* requests offered a turn */


struct ngx_http_osago_poll_node_s {
    ngx_str_node_t                   sn;        /* key: the id */
    ngx_queue_t                      parked;
    ngx_uint_t                       nparked;
    ngx_uint_t                       reads;     /* requests' first reads */
    uint64_t                         announced; /* newest updated_at heard */
    uint64_t                         announced_us;
    ngx_http_osago_redis_cmd_t      *wake;      /* the read for everyone */
    ngx_event_t                      retry;     /* that read failed: again */
    ngx_queue_t                      recheck;   /* in omcf->poll_recheck */

    /* the newest read, offered to the parked requests a slice a turn */
    ngx_queue_t                      offered;   /* still to be offered it */
    ngx_event_t                      offer;     /* posted: the next slice */
    u_char                          *doc;
    size_t                           doc_len;
    uint64_t                         doc_updated_at;

    unsigned                         wake_again:1;
    unsigned                         rechecking:1;
    unsigned                         offering:1;
    unsigned                         doc_found:1;
    unsigned                         doc_completed:1;
    u_char                           id[NGX_HTTP_OSAGO_POLL_ID_LEN];
};


typedef struct {
    ngx_http_request_t              *request;
    ngx_http_osago_main_conf_t      *omcf;
    ngx_http_osago_poll_node_t      *node;
    ngx_queue_t                      queue;     /* node->parked, offered */
    ngx_http_osago_redis_cmd_t      *read;      /* its first read */
    ngx_event_t                      timeout;
    ngx_str_t                        partner;
    uint64_t                         latest;
    ngx_uint_t                       epoch;     /* of the subscription */
    unsigned                         has_latest:1;
    unsigned                         parked:1;
} ngx_http_osago_poll_ctx_t;


/* what a read of osago:app:{id} found */
typedef struct {
    ngx_str_t                        doc;
    ngx_str_t                        owner;
    uint64_t                         updated_at;
    unsigned                         found:1;
    unsigned                         completed:1;
} ngx_http_osago_poll_doc_t;


typedef enum {
    NGX_HTTP_OSAGO_POLL_BAD_ID = 0,
    NGX_HTTP_OSAGO_POLL_BAD_LATEST,
    NGX_HTTP_OSAGO_POLL_NOT_FOUND,
    NGX_HTTP_OSAGO_POLL_UNAVAILABLE,
    NGX_HTTP_OSAGO_POLL_METHOD,
    NGX_HTTP_OSAGO_POLL_BODY
} ngx_http_osago_poll_problem_e;


static ngx_http_osago_problem_t  ngx_http_osago_poll_problems[] = {
    { NGX_HTTP_BAD_REQUEST,
      ngx_string("urn:osago:problem:malformed-id"),
      ngx_string("Malformed application id"),
      ngx_string("an application id is a UUID "
                 "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
      ngx_null_string },
    { NGX_HTTP_BAD_REQUEST,
      ngx_string("urn:osago:problem:malformed-latest"),
      ngx_string("Malformed latest"),
      ngx_string("latest is the updated_at (milliseconds) of the document "
                 "the client has"),
      ngx_null_string },
    { NGX_HTTP_NOT_FOUND,
      ngx_string("urn:osago:problem:application-not-found"),
      ngx_string("Application not found"),
      ngx_string("no application with this id belongs to this partner"),
      ngx_null_string },
    { NGX_HTTP_SERVICE_UNAVAILABLE,
      ngx_string("urn:osago:problem:unavailable"),
      ngx_string("Temporarily unavailable"),
      ngx_string("the application store cannot be reached; retry shortly"),
      ngx_null_string },
    { NGX_HTTP_NOT_ALLOWED,
      ngx_string("urn:osago:problem:method-not-allowed"),
      ngx_string("Method not allowed"),
      ngx_string("an application is read with GET"),
      ngx_null_string },
    { NGX_HTTP_BAD_REQUEST,
      ngx_string("urn:osago:problem:unexpected-body"),
      ngx_string("Unexpected request body"),
      ngx_string("a GET of an application carries no body"),
      ngx_null_string }
};


static ngx_int_t ngx_http_osago_poll_read(ngx_http_osago_main_conf_t *omcf,
    u_char *id, ngx_http_osago_redis_handler_pt handler, void *data,
    ngx_http_osago_redis_cmd_t **cmd);
static void ngx_http_osago_poll_wake(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_poll_node_t *node);
static void ngx_http_osago_poll_node_release(
    ngx_http_osago_main_conf_t *omcf, ngx_http_osago_poll_node_t *node);
static void ngx_http_osago_poll_wake_retry(ngx_event_t *ev);
static void ngx_http_osago_poll_recheck_slice(ngx_event_t *ev);
static void ngx_http_osago_poll_offer_next(ngx_event_t *ev);
static ngx_int_t ngx_http_osago_poll_keep_doc(ngx_http_osago_poll_node_t *node,
    ngx_http_osago_poll_doc_t *doc);
static void ngx_http_osago_poll_offer(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_poll_node_t *node);


static uint64_t
ngx_http_osago_poll_now_us(void)
{
    struct timespec  ts;

    /* not nginx's cached time: one wake-up may answer thousands */
    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


/* ids: lowercased into id, or NGX_ERROR */
static ngx_int_t
ngx_http_osago_poll_parse_id(ngx_str_t *value, u_char *id)
{
    u_char      ch;
    ngx_uint_t  i;

    if (value->len != NGX_HTTP_OSAGO_POLL_ID_LEN) {
        return NGX_ERROR;
    }

    for (i = 0; i < NGX_HTTP_OSAGO_POLL_ID_LEN; i++) {
        ch = value->data[i];

        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (ch != '-') {
                return NGX_ERROR;
            }

            id[i] = ch;
            continue;
        }

        ch = ngx_tolower(ch);

        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) {
            return NGX_ERROR;
        }

        id[i] = ch;
    }

    return NGX_OK;
}


/* a decimal updated_at in milliseconds, at most 18 digits */
static ngx_int_t
ngx_http_osago_poll_parse_ms(u_char *p, size_t len, uint64_t *ms)
{
    off_t  n;

    if (len > 18) {
        return NGX_ERROR;
    }

    n = ngx_atoof(p, len);      /* digits only; an empty string is an error */
    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    *ms = (uint64_t) n;

    return NGX_OK;
}


/* the tree of ids this worker waits for */


static ngx_http_osago_poll_node_t *
ngx_http_osago_poll_node_find(ngx_http_osago_main_conf_t *omcf, u_char *id)
{
    ngx_str_t  key;

    key.data = id;
    key.len = NGX_HTTP_OSAGO_POLL_ID_LEN;

    return (ngx_http_osago_poll_node_t *) ngx_str_rbtree_lookup(
               &omcf->poll_tree, &key, ngx_crc32_short(id, key.len));
}


static ngx_http_osago_poll_node_t *
ngx_http_osago_poll_node_get(ngx_http_osago_main_conf_t *omcf, u_char *id)
{
    ngx_http_osago_poll_node_t  *node;

    node = ngx_http_osago_poll_node_find(omcf, id);
    if (node) {
        return node;
    }

    node = ngx_calloc(sizeof(ngx_http_osago_poll_node_t), ngx_cycle->log);
    if (node == NULL) {
        return NULL;
    }

    ngx_memcpy(node->id, id, NGX_HTTP_OSAGO_POLL_ID_LEN);
    node->retry.handler = ngx_http_osago_poll_wake_retry;
    node->retry.data = node;
    node->retry.log = ngx_cycle->log;
    node->retry.cancelable = 1;
    node->offer.handler = ngx_http_osago_poll_offer_next;
    node->offer.data = node;
    node->offer.log = ngx_cycle->log;
    ngx_queue_init(&node->offered);
    node->sn.str.data = node->id;
    node->sn.str.len = NGX_HTTP_OSAGO_POLL_ID_LEN;
    node->sn.node.key = ngx_crc32_short(node->id, NGX_HTTP_OSAGO_POLL_ID_LEN);
    ngx_queue_init(&node->parked);

    ngx_rbtree_insert(&omcf->poll_tree, &node->sn.node);
    ngx_http_osago_metrics_poll(omcf, NGX_HTTP_OSAGO_POLL_ID_HELD, 0);

    return node;
}


/* a node lives while a request waits on it or reads for it */
static void
ngx_http_osago_poll_node_release(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_poll_node_t *node)
{
    if (node->nparked || node->reads) {
        return;
    }

    if (node->wake) {
        ngx_http_osago_redis_cancel(node->wake);
    }

    if (node->retry.timer_set) {
        ngx_del_timer(&node->retry);
    }

    if (node->rechecking) {
        ngx_queue_remove(&node->recheck);
    }

    ngx_rbtree_delete(&omcf->poll_tree, &node->sn.node);
    ngx_free(node);
    ngx_http_osago_metrics_poll(omcf, NGX_HTTP_OSAGO_POLL_ID_FREED, 0);
}


/* reading the read model */


static ngx_int_t
ngx_http_osago_poll_read(ngx_http_osago_main_conf_t *omcf, u_char *id,
    ngx_http_osago_redis_handler_pt handler, void *data,
    ngx_http_osago_redis_cmd_t **cmd)
{
    u_char       key[sizeof("osago:app:") - 1 + NGX_HTTP_OSAGO_POLL_ID_LEN];
    size_t       len[5];
    const char  *argv[5];

    ngx_memcpy(ngx_cpymem(key, "osago:app:", sizeof("osago:app:") - 1), id,
               NGX_HTTP_OSAGO_POLL_ID_LEN);

    argv[0] = "HMGET";
    len[0] = sizeof("HMGET") - 1;
    argv[1] = (const char *) key;
    len[1] = sizeof(key);
    argv[2] = "doc";
    len[2] = sizeof("doc") - 1;
    argv[3] = "owner";
    len[3] = sizeof("owner") - 1;
    argv[4] = "updated_at";
    len[4] = sizeof("updated_at") - 1;

    *cmd = ngx_http_osago_redis_command(omcf->redis_conn, 5, argv, len,
                                        handler, data);
    if (*cmd == NULL) {
        return NGX_ERROR;
    }

    ngx_http_osago_metrics_poll(omcf, NGX_HTTP_OSAGO_POLL_READ, 0);

    return NGX_OK;
}


/* NGX_OK with doc filled in (found or not), NGX_ERROR on a reply not ours */
static ngx_int_t
ngx_http_osago_poll_doc(redisReply *reply, ngx_http_osago_poll_doc_t *doc)
{
    redisReply  **el;

    static u_char  completed[] = "\"status\":\"completed\"";

    ngx_memzero(doc, sizeof(ngx_http_osago_poll_doc_t));

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) {
        return NGX_ERROR;
    }

    el = reply->element;

    if (el[0]->type == REDIS_REPLY_NIL) {
        return NGX_OK;
    }

    /* an empty doc is no document: nginx would not send a body of 0 bytes */
    if (el[0]->type != REDIS_REPLY_STRING
        || el[0]->len == 0
        || el[1]->type != REDIS_REPLY_STRING
        || el[2]->type != REDIS_REPLY_STRING
        || ngx_http_osago_poll_parse_ms((u_char *) el[2]->str, el[2]->len,
                                        &doc->updated_at)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    doc->doc.data = (u_char *) el[0]->str;
    doc->doc.len = el[0]->len;
    doc->owner.data = (u_char *) el[1]->str;
    doc->owner.len = el[1]->len;
    doc->found = 1;

    /*
     * The documents are written by the edge and the worker, compactly:
     * only the application's own status can read "completed" (an
     * insurer's is pending, ok or error).
     */
    doc->completed = ngx_strlcasestrn(doc->doc.data,
                                      doc->doc.data + doc->doc.len,
                                      completed, sizeof(completed) - 2)
                     != NULL;

    return NGX_OK;
}


/* answering */


static ngx_int_t
ngx_http_osago_poll_problem(ngx_http_request_t *r, ngx_uint_t which)
{
    if (which == NGX_HTTP_OSAGO_POLL_UNAVAILABLE
        && ngx_http_osago_add_header(r, "Retry-After",
                                     &(ngx_str_t) ngx_string("1"))
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (which == NGX_HTTP_OSAGO_POLL_METHOD
        && ngx_http_osago_add_header(r, "Allow",
                                     &(ngx_str_t) ngx_string("GET, HEAD"))
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_osago_problem_send(r, &ngx_http_osago_poll_problems[which]);
}


static ngx_int_t
ngx_http_osago_poll_send_doc(ngx_http_request_t *r, ngx_str_t *doc)
{
    ngx_buf_t  *b;

    static ngx_str_t  type = ngx_string("application/json");

    b = ngx_create_temp_buf(r->pool, doc->len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, doc->data, doc->len);

    if (ngx_http_osago_add_header(r, "Cache-Control",
                                  &(ngx_str_t) ngx_string("no-store"))
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_osago_send(r, NGX_HTTP_OK, &type, b);
}


static ngx_int_t
ngx_http_osago_poll_send_not_modified(ngx_http_request_t *r)
{
    r->headers_out.status = NGX_HTTP_NOT_MODIFIED;
    r->headers_out.content_length_n = -1;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/* Takes a request off its node (and the timer off the tree). */
static void
ngx_http_osago_poll_unpark(ngx_http_osago_poll_ctx_t *ctx)
{
    if (!ctx->parked) {
        return;
    }

    ctx->parked = 0;
    ngx_queue_remove(&ctx->queue);
    ctx->node->nparked--;
    ctx->omcf->poll_parked--;

    ngx_http_osago_metrics_poll(ctx->omcf, NGX_HTTP_OSAGO_POLL_UNPARKED, 0);

    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }
}


/*
 * Finishes a request from outside its own event handlers (a Redis reply, a
 * timer): the requests this posts run here too.
 */
static void
ngx_http_osago_poll_finish(ngx_http_osago_poll_ctx_t *ctx, ngx_int_t rc)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r = ctx->request;

    c = r->connection;

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_osago_poll_timeout_handler(ngx_event_t *ev)
{
    ngx_http_osago_poll_ctx_t  *ctx = ev->data;

    ngx_http_osago_poll_unpark(ctx);
    ngx_http_osago_metrics_poll(ctx->omcf, NGX_HTTP_OSAGO_POLL_TIMED_OUT, 0);

    /* unparked, the request's cleanup has nothing left to do: the node goes
     * here when this was the last request on it */
    ngx_http_osago_poll_node_release(ctx->omcf, ctx->node);

    ngx_http_osago_poll_finish(ctx,
        ngx_http_osago_poll_send_not_modified(ctx->request));
}


/* Stopping gracefully (or reloading): parked requests get their 304 now. */
static void
ngx_http_osago_poll_exit_watch(ngx_event_t *ev)
{
    ngx_queue_t                 *q;
    ngx_rbtree_node_t           *rn, *next, *root, *sentinel;
    ngx_http_osago_poll_ctx_t   *ctx;
    ngx_http_osago_poll_node_t  *node;
    ngx_http_osago_main_conf_t  *omcf = ev->data;

    if (!ngx_exiting) {
        if (omcf->poll_parked) {
            ngx_add_timer(ev, NGX_HTTP_OSAGO_POLL_EXIT_WATCH);
        }

        return;
    }

    root = omcf->poll_tree.root;
    sentinel = omcf->poll_tree.sentinel;

    if (root == sentinel) {
        return;
    }

    for (rn = ngx_rbtree_min(root, sentinel); rn; rn = next) {
        next = ngx_rbtree_next(&omcf->poll_tree, rn);
        node = (ngx_http_osago_poll_node_t *) rn;

        /* the node goes away with its last request: hold it meanwhile */
        node->reads++;

        /* a document being offered goes to the rest of its requests now */
        while (!ngx_queue_empty(&node->offered)) {
            ngx_http_osago_poll_offer(omcf, node);
        }

        while (!ngx_queue_empty(&node->parked)) {
            q = ngx_queue_head(&node->parked);
            ctx = ngx_queue_data(q, ngx_http_osago_poll_ctx_t, queue);

            ngx_http_osago_poll_unpark(ctx);
            ngx_http_osago_poll_finish(ctx,
                ngx_http_osago_poll_send_not_modified(ctx->request));
        }

        node->reads--;
        ngx_http_osago_poll_node_release(omcf, node);
    }
}


static void
ngx_http_osago_poll_park(ngx_http_osago_poll_ctx_t *ctx)
{
    ngx_http_request_t          *r = ctx->request;
    ngx_http_osago_loc_conf_t   *olcf;
    ngx_http_osago_main_conf_t  *omcf = ctx->omcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_osago_module);

    ngx_queue_insert_tail(&ctx->node->parked, &ctx->queue);
    ctx->node->nparked++;
    ctx->parked = 1;
    omcf->poll_parked++;

    ngx_http_osago_metrics_poll(omcf, NGX_HTTP_OSAGO_POLL_PARKED, 0);

    ctx->timeout.handler = ngx_http_osago_poll_timeout_handler;
    ctx->timeout.data = ctx;
    ctx->timeout.log = r->connection->log;

    /*
     * Not cancelable: a worker stopping gracefully waits for its parked
     * requests, and the exit watch answers them at once.
     */
    ngx_add_timer(&ctx->timeout, olcf->poll_timeout);

    if (!omcf->poll_exit_watch.timer_set) {
        ngx_add_timer(&omcf->poll_exit_watch, NGX_HTTP_OSAGO_POLL_EXIT_WATCH);
    }
}


/* the request's first read came back */
static void
ngx_http_osago_poll_first_read(void *data, ngx_http_osago_redis_status_e status,
    redisReply *reply)
{
    ngx_int_t                    rc;
    ngx_http_request_t          *r;
    ngx_http_osago_poll_doc_t    doc;
    ngx_http_osago_poll_ctx_t   *ctx = data;
    ngx_http_osago_poll_node_t  *node = ctx->node;

    r = ctx->request;
    ctx->read = NULL;
    node->reads--;

    if (status != NGX_HTTP_OSAGO_REDIS_REPLY
        || ngx_http_osago_poll_doc(reply, &doc) != NGX_OK)
    {
        if (status == NGX_HTTP_OSAGO_REDIS_REPLY) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "osago poll: unexpected read model for %*s",
                          (size_t) NGX_HTTP_OSAGO_POLL_ID_LEN, node->id);
        }

        rc = ngx_http_osago_poll_problem(r, NGX_HTTP_OSAGO_POLL_UNAVAILABLE);
        goto done;
    }

    /* another partner's application does not exist, as far as this one knows */
    if (!doc.found
        || doc.owner.len != ctx->partner.len
        || ngx_strncmp(doc.owner.data, ctx->partner.data, doc.owner.len) != 0)
    {
        rc = ngx_http_osago_poll_problem(r, NGX_HTTP_OSAGO_POLL_NOT_FOUND);
        goto done;
    }

    if (!ctx->has_latest || doc.updated_at > ctx->latest || doc.completed) {
        ngx_http_osago_metrics_poll(ctx->omcf, NGX_HTTP_OSAGO_POLL_AT_ONCE, 0);
        rc = ngx_http_osago_poll_send_doc(r, &doc.doc);
        goto done;
    }

    if (ngx_exiting) {
        /* nothing new, and this worker is going: poll again elsewhere */
        rc = ngx_http_osago_poll_send_not_modified(r);
        goto done;
    }

    ngx_http_osago_poll_park(ctx);

    /*
     * A change announced while this read was in flight, or a subscription
     * re-made meanwhile (its re-check ran before this request was parked,
     * and what was published before it was lost): read again now.
     */
    if (node->announced > ctx->latest) {
        ngx_http_osago_poll_wake(ctx->omcf, node);

    } else if (ctx->epoch != ctx->omcf->poll_epoch) {
        /* no message to time the answer from: timed from now, as the re-check is */
        node->announced_us = ngx_http_osago_poll_now_us();
        ngx_http_osago_poll_wake(ctx->omcf, node);
    }

    return;

done:

    ngx_http_osago_poll_node_release(ctx->omcf, node);
    ngx_http_osago_poll_finish(ctx, rc);
}


/* the read for everyone parked on a node came back */
static void
ngx_http_osago_poll_wake_read(void *data, ngx_http_osago_redis_status_e status,
    redisReply *reply)
{
    ngx_http_osago_poll_doc_t    doc;
    ngx_http_osago_poll_node_t  *node = data;
    ngx_http_osago_main_conf_t  *omcf;

    node->wake = NULL;
    omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_osago_module);

    if (status != NGX_HTTP_OSAGO_REDIS_REPLY
        || ngx_http_osago_poll_doc(reply, &doc) != NGX_OK)
    {
        /*
         * They stay parked. A lost connection re-reads every parked id
         * once it is back; a read that timed out on a live connection, or
         * a read model that cannot be used, would not be heard of again
         * until the next change: read again shortly.
         */
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "osago poll: cannot read %*s for %ui parked request(s)%s",
                      (size_t) NGX_HTTP_OSAGO_POLL_ID_LEN, node->id,
                      node->nparked,
                      status == NGX_HTTP_OSAGO_REDIS_DOWN
                      ? "" : "; read again in a second");
        node->wake_again = 0;

        if (status != NGX_HTTP_OSAGO_REDIS_DOWN && node->nparked
            && !node->retry.timer_set)
        {
            ngx_add_timer(&node->retry, NGX_HTTP_OSAGO_POLL_WAKE_RETRY);
        }

        ngx_http_osago_poll_node_release(omcf, node);
        return;
    }

    if (ngx_http_osago_poll_keep_doc(node, &doc) != NGX_OK) {
        node->wake_again = 0;

        if (node->nparked && !node->retry.timer_set) {
            ngx_add_timer(&node->retry, NGX_HTTP_OSAGO_POLL_WAKE_RETRY);
        }

        ngx_http_osago_poll_node_release(omcf, node);
        return;
    }

    /* every request parked now is offered the new version */
    if (!ngx_queue_empty(&node->parked)) {
        ngx_queue_add(&node->offered, &node->parked);
        ngx_queue_init(&node->parked);
    }

    if (node->offer.posted) {
        /* the next slice comes in its turn, with the newer document */
        return;
    }

    if (!node->offering) {
        /* hold the node while its requests go */
        node->offering = 1;
        node->reads++;
    }

    ngx_http_osago_poll_offer(omcf, node);
}


/* The node keeps a copy of what was read: the reply goes with this turn. */
static ngx_int_t
ngx_http_osago_poll_keep_doc(ngx_http_osago_poll_node_t *node,
    ngx_http_osago_poll_doc_t *doc)
{
    u_char  *copy = NULL;

    if (doc->found) {
        copy = ngx_alloc(ngx_max(doc->doc.len, 1), ngx_cycle->log);
        if (copy == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(copy, doc->doc.data, doc->doc.len);
    }

    if (node->doc) {
        ngx_free(node->doc);
    }

    node->doc = copy;
    node->doc_len = doc->doc.len;
    node->doc_updated_at = doc->updated_at;
    node->doc_found = doc->found;
    node->doc_completed = doc->completed;

    return NGX_OK;
}


/*
 * Offers the node's document to at most a slice of the requests waiting
 * for it, then lets the event loop turn: a crowd parked on one id (a
 * partner's poll loop gone wrong) is answered over several turns, and the
 * Redis replies and requests that arrive meanwhile are not held up behind
 * it.  The node may be freed here.
 */
static void
ngx_http_osago_poll_offer(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_poll_node_t *node)
{
    ngx_int_t                   rc;
    ngx_str_t                   doc;
    ngx_uint_t                  n;
    ngx_queue_t                *q;
    ngx_http_osago_poll_ctx_t  *ctx;

    doc.data = node->doc;
    doc.len = node->doc_len;

    for (n = 0;
         n < NGX_HTTP_OSAGO_POLL_OFFER_SLICE
         && !ngx_queue_empty(&node->offered);
         n++)
    {
        q = ngx_queue_head(&node->offered);
        ctx = ngx_queue_data(q, ngx_http_osago_poll_ctx_t, queue);

        if (!node->doc_found) {
            /* expired or removed meanwhile */
            ngx_http_osago_poll_unpark(ctx);
            rc = ngx_http_osago_poll_problem(ctx->request,
                                             NGX_HTTP_OSAGO_POLL_NOT_FOUND);

        } else if (node->doc_updated_at > ctx->latest || node->doc_completed) {
            ngx_http_osago_poll_unpark(ctx);
            ngx_http_osago_metrics_poll(omcf, NGX_HTTP_OSAGO_POLL_WOKEN,
                (ngx_uint_t) (ngx_http_osago_poll_now_us()
                              - node->announced_us));
            rc = ngx_http_osago_poll_send_doc(ctx->request, &doc);

        } else {
            /* not news to this one */
            ngx_queue_remove(q);
            ngx_queue_insert_tail(&node->parked, q);
            continue;
        }

        ngx_http_osago_poll_finish(ctx, rc);
    }

    if (!ngx_queue_empty(&node->offered)) {
        /* a later turn of the event loop: posted to ngx_posted_events it
         * would run in this one, before the loop polls again */
        ngx_post_event(&node->offer, &ngx_posted_next_events);
        return;
    }

    if (node->offer.posted) {
        /* finished by a caller other than the posted event (worker exit) */
        ngx_delete_posted_event(&node->offer);
    }

    if (node->doc) {
        ngx_free(node->doc);
        node->doc = NULL;
    }

    if (node->wake_again) {
        /* the read offered may have predated a change heard meanwhile */
        node->wake_again = 0;

        if (node->nparked) {
            ngx_http_osago_poll_wake(omcf, node);
        }
    }

    node->offering = 0;
    node->reads--;

    ngx_http_osago_poll_node_release(omcf, node);
}


static void
ngx_http_osago_poll_offer_next(ngx_event_t *ev)
{
    ngx_http_osago_poll_node_t  *node = ev->data;
    ngx_http_osago_main_conf_t  *omcf;

    omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_osago_module);

    ngx_http_osago_poll_offer(omcf, node);
}


static void
ngx_http_osago_poll_wake(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_poll_node_t *node)
{
    if (node->wake) {
        /* the read in flight may predate the change: one more after it */
        node->wake_again = 1;
        return;
    }

    if (ngx_http_osago_poll_read(omcf, node->id,
                                 ngx_http_osago_poll_wake_read, node,
                                 &node->wake)
        != NGX_OK)
    {
        /* Redis is away: every parked id is read again when it is back */
        node->wake = NULL;
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "osago poll: %*s changed while Redis is unreachable; "
                      "read again when it is back",
                      (size_t) NGX_HTTP_OSAGO_POLL_ID_LEN, node->id);
    }
}


static void
ngx_http_osago_poll_wake_retry(ngx_event_t *ev)
{
    ngx_http_osago_poll_node_t  *node = ev->data;
    ngx_http_osago_main_conf_t  *omcf;

    omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_osago_module);

    if (node->nparked) {
        ngx_http_osago_poll_wake(omcf, node);
    }
}


/* the subscription */


static void
ngx_http_osago_poll_message(void *data, u_char *text, size_t len)
{
    u_char                       id[NGX_HTTP_OSAGO_POLL_ID_LEN];
    uint64_t                     updated_at;
    ngx_str_t                    value;
    ngx_http_osago_poll_node_t  *node;
    ngx_http_osago_main_conf_t  *omcf = data;

    /* "{id} {updated_at}" */
    value.data = text;
    value.len = NGX_HTTP_OSAGO_POLL_ID_LEN;

    if (len < NGX_HTTP_OSAGO_POLL_ID_LEN + 2
        || text[NGX_HTTP_OSAGO_POLL_ID_LEN] != ' '
        || ngx_http_osago_poll_parse_id(&value, id) != NGX_OK
        || ngx_http_osago_poll_parse_ms(text + NGX_HTTP_OSAGO_POLL_ID_LEN + 1,
                                        len - NGX_HTTP_OSAGO_POLL_ID_LEN - 1,
                                        &updated_at)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "osago poll: ignoring a malformed update message "
                      "(%uz bytes)", len);
        return;
    }

    node = ngx_http_osago_poll_node_find(omcf, id);
    if (node == NULL) {
        return;     /* nobody here waits for it */
    }

    if (updated_at > node->announced) {
        node->announced = updated_at;
        node->announced_us = ngx_http_osago_poll_now_us();
    }

    if (node->nparked) {
        ngx_http_osago_poll_wake(omcf, node);
    }
}


/*
 * Every id with parked requests, read again, a slice at a time: after an
 * outage there may be tens of thousands, and their reads, all sent at once,
 * would queue on the connection the limiter and the intake share ahead of
 * those commands' deadlines.  An id already waiting for its turn keeps it.
 */
static void
ngx_http_osago_poll_recheck(ngx_http_osago_main_conf_t *omcf)
{
    ngx_rbtree_node_t           *rn, *root, *sentinel;
    ngx_http_osago_poll_node_t  *node;

    root = omcf->poll_tree.root;
    sentinel = omcf->poll_tree.sentinel;

    if (root == sentinel) {
        return;
    }

    for (rn = ngx_rbtree_min(root, sentinel);
         rn;
         rn = ngx_rbtree_next(&omcf->poll_tree, rn))
    {
        node = (ngx_http_osago_poll_node_t *) rn;

        if (node->nparked && !node->rechecking) {
            ngx_queue_insert_tail(&omcf->poll_recheck, &node->recheck);
            node->rechecking = 1;
        }
    }

    if (!omcf->poll_recheck_next.timer_set) {
        ngx_http_osago_poll_recheck_slice(&omcf->poll_recheck_next);
    }
}


static void
ngx_http_osago_poll_recheck_slice(ngx_event_t *ev)
{
    ngx_uint_t                   n;
    ngx_queue_t                 *q;
    ngx_http_osago_poll_node_t  *node;
    ngx_http_osago_main_conf_t  *omcf = ev->data;

    if (!ngx_http_osago_redis_is_up(omcf->redis_conn)) {
        /* the reads would be refused: the connection's return goes on */
        return;
    }

    for (n = 0;
         n < NGX_HTTP_OSAGO_POLL_RECHECK_SLICE
         && !ngx_queue_empty(&omcf->poll_recheck);
         n++)
    {
        q = ngx_queue_head(&omcf->poll_recheck);
        ngx_queue_remove(q);
        node = ngx_queue_data(q, ngx_http_osago_poll_node_t, recheck);
        node->rechecking = 0;

        if (node->nparked) {
            node->announced_us = ngx_http_osago_poll_now_us();
            ngx_http_osago_poll_wake(omcf, node);
        }
    }

    if (!ngx_queue_empty(&omcf->poll_recheck)) {
        ngx_add_timer(ev, NGX_HTTP_OSAGO_POLL_RECHECK_PAUSE);
    }
}


static void
ngx_http_osago_poll_subscribed(void *data)
{
    ngx_http_osago_main_conf_t  *omcf = data;

    omcf->poll_epoch++;
    ngx_http_osago_poll_recheck(omcf);
}


/*
 * The command connection is ready again.  Reads refused or lost while it
 * was away (a wake-up, or the re-check of a subscription made before it
 * came back) are made now.
 */
void
ngx_http_osago_poll_redis_up(ngx_http_osago_main_conf_t *omcf)
{
    if (omcf->poll_used && omcf->poll_tree.root != omcf->poll_tree.sentinel) {
        ngx_http_osago_poll_recheck(omcf);
    }
}


/* the request */


static void
ngx_http_osago_poll_cleanup(void *data)
{
    ngx_http_osago_poll_ctx_t  *ctx = data;

    if (ctx->read) {
        ngx_http_osago_redis_cancel(ctx->read);
        ctx->read = NULL;
        ctx->node->reads--;

    } else if (!ctx->parked) {
        return;
    }

    ngx_http_osago_poll_unpark(ctx);
    ngx_http_osago_poll_node_release(ctx->omcf, ctx->node);
}


static ngx_int_t
ngx_http_osago_poll_handler(ngx_http_request_t *r)
{
    u_char                       id[NGX_HTTP_OSAGO_POLL_ID_LEN];
    ngx_int_t                    rc;
    ngx_str_t                    value, latest;
    ngx_http_cleanup_t          *cln;
    ngx_http_osago_loc_conf_t   *olcf;
    ngx_http_osago_poll_ctx_t   *ctx;
    ngx_http_osago_main_conf_t  *omcf;
    ngx_http_osago_limit_ctx_t  *lctx;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_osago_poll_problem(r, NGX_HTTP_OSAGO_POLL_METHOD);
    }

    /*
     * nginx goes on discarding a body that has not all arrived after the
     * handler returns, in place of the read handler that notices a client
     * going away, and under lingering_timeout: a parked request would miss
     * its client's leaving, or be closed unanswered.  Asked before the
     * discard, which counts down the length by what has arrived: the answer
     * must not depend on how the bytes were cut into packets.
     */
    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        return ngx_http_osago_poll_problem(r, NGX_HTTP_OSAGO_POLL_BODY);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_osago_module);
    omcf = ngx_http_get_module_main_conf(r, ngx_http_osago_module);

    if (ngx_http_complex_value(r, olcf->poll, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_osago_poll_parse_id(&value, id) != NGX_OK) {
        return ngx_http_osago_poll_problem(r, NGX_HTTP_OSAGO_POLL_BAD_ID);
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_osago_poll_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_arg(r, (u_char *) "latest", 6, &latest) == NGX_OK) {
        if (ngx_http_osago_poll_parse_ms(latest.data, latest.len,
                                         &ctx->latest)
            != NGX_OK)
        {
            return ngx_http_osago_poll_problem(r,
                                               NGX_HTTP_OSAGO_POLL_BAD_LATEST);
        }

        ctx->has_latest = 1;
    }

    lctx = ngx_http_osago_limit_get_ctx(r);

    if (lctx == NULL || lctx->partner.len == 0) {
        /* admitted by the "open" fallback without a known partner */
        return ngx_http_osago_poll_problem(r, NGX_HTTP_OSAGO_POLL_UNAVAILABLE);
    }

    ctx->request = r;
    ctx->omcf = omcf;
    ctx->partner = lctx->partner;

    ctx->node = ngx_http_osago_poll_node_get(omcf, id);
    if (ctx->node == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* registered before the read goes: see "No lost wake-ups" above */
    ctx->node->reads++;
    ctx->epoch = omcf->poll_epoch;

    if (ngx_http_osago_poll_read(omcf, id, ngx_http_osago_poll_first_read,
                                 ctx, &ctx->read)
        != NGX_OK)
    {
        ctx->node->reads--;
        ngx_http_osago_poll_node_release(omcf, ctx->node);
        return ngx_http_osago_poll_problem(r, NGX_HTTP_OSAGO_POLL_UNAVAILABLE);
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ngx_http_osago_poll_cleanup(ctx);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_osago_poll_cleanup;
    cln->data = ctx;

    /* a client that goes away is noticed (and cleaned up) at once */
    r->read_event_handler = ngx_http_test_reading;
    r->main->count++;

    return NGX_DONE;
}


char *
ngx_http_osago_poll(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_osago_loc_conf_t  *olcf = conf;

    ngx_str_t                         *value;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_osago_main_conf_t        *omcf;
    ngx_http_compile_complex_value_t   ccv;

    if (olcf->poll) {
        return "is duplicate";
    }

    value = cf->args->elts;

    olcf->poll = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (olcf->poll == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = olcf->poll;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_osago_poll_handler;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_osago_module);
    omcf->used = 1;
    omcf->poll_used = 1;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_osago_poll_init_worker(ngx_http_osago_main_conf_t *omcf,
    ngx_log_t *log)
{
    ngx_http_osago_redis_observer_t  observer;

    ngx_rbtree_init(&omcf->poll_tree, &omcf->poll_sentinel,
                    ngx_str_rbtree_insert_value);

    omcf->poll_exit_watch.handler = ngx_http_osago_poll_exit_watch;
    omcf->poll_exit_watch.data = omcf;
    omcf->poll_exit_watch.log = log;
    omcf->poll_exit_watch.cancelable = 1;

    ngx_queue_init(&omcf->poll_recheck);
    omcf->poll_recheck_next.handler = ngx_http_osago_poll_recheck_slice;
    omcf->poll_recheck_next.data = omcf;
    omcf->poll_recheck_next.log = log;
    omcf->poll_recheck_next.cancelable = 1;

    if (!omcf->poll_used) {
        return NGX_OK;
    }

    ngx_str_set(&omcf->poll_subscription.channel, "osago:app-updates");
    omcf->poll_subscription.subscribed = ngx_http_osago_poll_subscribed;
    omcf->poll_subscription.message = ngx_http_osago_poll_message;
    omcf->poll_subscription.data = omcf;

    ngx_memzero(&observer, sizeof(ngx_http_osago_redis_observer_t));
    observer.state = ngx_http_osago_metrics_poll_subscriber;
    observer.data = omcf;

    ngx_http_osago_metrics_poll_subscriber(omcf, 0);

    omcf->poll_sub = ngx_http_osago_redis_subscribe(&omcf->redis,
                                                    &omcf->poll_subscription,
                                                    &observer, log);

    return omcf->poll_sub ? NGX_OK : NGX_ERROR;
}


void
ngx_http_osago_poll_exit_worker(ngx_http_osago_main_conf_t *omcf)
{
    if (omcf->poll_sub) {
        ngx_http_osago_redis_destroy(omcf->poll_sub);
        omcf->poll_sub = NULL;
    }

    if (omcf->poll_exit_watch.timer_set) {
        ngx_del_timer(&omcf->poll_exit_watch);
    }

    if (omcf->poll_recheck_next.timer_set) {
        ngx_del_timer(&omcf->poll_recheck_next);
    }
}
