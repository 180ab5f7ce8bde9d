/*
 * The edge's read model of one application, rebuilt from PostgreSQL (the source of truth) and
 * written to Redis with a version check, so that concurrent or late writers (a redelivered
 * event, two workers during a rebalance) can never replace a newer document with an older one,
 * and a document that did not change is not published again.
 */
#include "read_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yajl/yajl_gen.h>

#include "log.h"
#include "pg.h"
#include "redis_conn.h"

#define RM_ROLE "read_model"

/* One row per quote (or one row of NULLs for an application without quotes). */
static const char rm_select[] =
    "SELECT " READ_MODEL_APP_COLUMNS ", " READ_MODEL_QUOTE_COLUMNS
    " FROM applications a LEFT JOIN quotes q ON q.application_id = a.id"
    " WHERE a.id = ANY ($1::uuid[]) ORDER BY a.id";

/*
 * KEYS[1] osago:app:{id}; ARGV: doc, owner, updated_at (ms), ttl (s), message.
 * Writes and publishes only when the stored version is older (the edge's own "accepted"
 * document carries the acceptance time, which every later version exceeds).
 */
static const char rm_script[] =
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'updated_at'))\n"
    "if cur and cur >= tonumber(ARGV[3]) then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'owner', ARGV[2], 'updated_at', ARGV[3])\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[4])\n"
    "redis.call('PUBLISH', 'osago:app-updates', ARGV[5])\n"
    "return 1\n";

/* SHA-1 of rm_script (sha1sum of the string above). Should the two ever disagree, EVALSHA
 * answers NOSCRIPT every time and each call falls back to EVAL: slower, still correct. */
static const char rm_script_sha[] = "fac041c6dfb429755488b1e1ddc8b1aabce187dd";

typedef struct {
    int         order;        /* position in the insurer file; unknown codes sort last */
    const char *code;
    const char *name;
    const char *status;
    const char *premium;      /* NULL when none */
    const char *error;        /* NULL when none */
} rm_quote_t;

static int rm_quote_cmp(const void *a, const void *b)
{
    const rm_quote_t *x = a, *y = b;

    if (x->order != y->order)
        return x->order < y->order ? -1 : 1;
    return strcmp(x->code, y->code);
}

static int gen_str(yajl_gen g, const char *s)
{
    return yajl_gen_string(g, (const unsigned char *) s, strlen(s)) == yajl_gen_status_ok ? 0 : -1;
}

static int gen_kv(yajl_gen g, const char *k, const char *v)
{
    if (gen_str(g, k) < 0)
        return -1;
    if (v == NULL)
        return yajl_gen_null(g) == yajl_gen_status_ok ? 0 : -1;
    if (gen_str(g, v) == 0)
        return 0;
    /* an error text that is not valid UTF-8 must not keep the document from being written */
    return gen_str(g, "(unprintable)");
}

static int gen_quote(yajl_gen g, const rm_quote_t *q)
{
    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || gen_kv(g, "code", q->code) < 0
        || gen_kv(g, "name", q->name) < 0
        || gen_kv(g, "status", q->status) < 0
        || gen_str(g, "premium_rub") < 0)
        return -1;
    if (q->premium != NULL) {
        if (yajl_gen_number(g, q->premium, strlen(q->premium)) != yajl_gen_status_ok)
            return -1;
    } else if (yajl_gen_null(g) != yajl_gen_status_ok) {
        return -1;
    }
    if (gen_kv(g, "error", q->error) < 0 || yajl_gen_map_close(g) != yajl_gen_status_ok)
        return -1;
    return 0;
}

int read_model_quotes_of(const PGresult *res, int first, int last, int qcol,
                         read_model_quote_t *quotes, int max)
{
    int n = 0;

    for (int i = first; i < last && n < max; i++) {
        if (PQgetisnull(res, i, qcol))
            continue;
        quotes[n].code = PQgetvalue(res, i, qcol);
        quotes[n].status = PQgetvalue(res, i, qcol + 1);
        quotes[n].premium = PQgetisnull(res, i, qcol + 2) ? NULL : PQgetvalue(res, i, qcol + 2);
        quotes[n].error = PQgetisnull(res, i, qcol + 3) ? NULL : PQgetvalue(res, i, qcol + 3);
        n++;
    }
    return n;
}

/* The quotes in the document's order (the insurer file's), with their names and API status. */
static int rm_collect(const read_model_quote_t *in, int n, const insurer_list_t *insurers,
                      rm_quote_t *quotes)
{
    if (n > READ_MODEL_QUOTES_MAX)
        n = READ_MODEL_QUOTES_MAX;
    for (int i = 0; i < n; i++) {
        rm_quote_t      *q = &quotes[i];
        const insurer_t *ins = insurers_find(insurers, in[i].code);

        q->code = in[i].code;
        q->order = ins != NULL ? (int) (ins - insurers->items) : INSURERS_MAX;
        q->name = ins != NULL ? ins->name : q->code;
        q->status = read_model_api_status(in[i].status);
        q->premium = in[i].premium;
        q->error = in[i].error;
    }
    qsort(quotes, (size_t) n, sizeof(quotes[0]), rm_quote_cmp);
    return n;
}

static int rm_build(yajl_gen g, const PGresult *apps, int row, const rm_quote_t *quotes, int n)
{
    const char *updated = PQgetvalue(apps, row, READ_MODEL_APP_UPDATED);

    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || gen_kv(g, "id", PQgetvalue(apps, row, READ_MODEL_APP_ID)) < 0
        || gen_kv(g, "status", PQgetvalue(apps, row, READ_MODEL_APP_STATUS)) < 0
        || gen_kv(g, "created_at", PQgetvalue(apps, row, READ_MODEL_APP_CREATED)) < 0
        || gen_str(g, "updated_at") < 0
        || yajl_gen_number(g, updated, strlen(updated)) != yajl_gen_status_ok
        || gen_str(g, "insurers") < 0
        || yajl_gen_array_open(g) != yajl_gen_status_ok)
        return -1;
    for (int i = 0; i < n; i++)
        if (gen_quote(g, &quotes[i]) < 0)
            return -1;
    if (yajl_gen_array_close(g) != yajl_gen_status_ok || yajl_gen_map_close(g) != yajl_gen_status_ok)
        return -1;
    return 0;
}

int read_model_doc_build(const PGresult *apps, int app_row, const read_model_quote_t *quotes,
                         int n, const insurer_list_t *insurers, const char *trace,
                         read_model_doc_t *doc)
{
    rm_quote_t           q[READ_MODEL_QUOTES_MAX];
    int                  nq = rm_collect(quotes, n, insurers, q);
    const char          *id = PQgetvalue(apps, app_row, READ_MODEL_APP_ID);
    const char          *updated = PQgetvalue(apps, app_row, READ_MODEL_APP_UPDATED);
    yajl_gen             g = yajl_gen_alloc(NULL);
    const unsigned char *buf;
    size_t               len;

    memset(doc, 0, sizeof(*doc));
    if (g != NULL && strlen(id) < sizeof(doc->id) && strlen(updated) < sizeof(doc->updated)) {
        yajl_gen_config(g, yajl_gen_validate_utf8, 1);
        if (rm_build(g, apps, app_row, q, nq) == 0
            && yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok
            && (doc->doc = malloc(len)) != NULL
            && (doc->owner = strdup(PQgetvalue(apps, app_row, READ_MODEL_APP_OWNER))) != NULL) {
            memcpy(doc->doc, buf, len);
            doc->doc_len = len;
            memcpy(doc->id, id, strlen(id) + 1);
            memcpy(doc->updated, updated, strlen(updated) + 1);
            doc->trace = trace;
            yajl_gen_free(g);
            return 0;
        }
    }
    wlog(LOG_ERROR, RM_ROLE, trace, "read_model_build", "document of %s not built", id);
    if (g != NULL)
        yajl_gen_free(g);
    read_model_doc_free(doc);
    return -1;
}

void read_model_doc_free(read_model_doc_t *doc)
{
    free(doc->doc);
    free(doc->owner);
    doc->doc = doc->owner = NULL;
}

static const char *rm_trace_of(const char *id, const char *const *ids, const char *const *traces,
                               int n)
{
    for (int i = 0; traces != NULL && i < n; i++)
        if (strcasecmp(ids[i], id) == 0)
            return traces[i];
    return NULL;
}

/* Builds one document per application found (rows grouped by id); returns how many, or -1. */
static int rm_docs(const PGresult *res, const insurer_list_t *insurers, const char *const *ids,
                   const char *const *traces, int n, read_model_doc_t *docs)
{
    int rows = PQntuples(res), nd = 0;

    for (int first = 0, last; first < rows; first = last) {
        const char        *id = PQgetvalue(res, first, READ_MODEL_APP_ID);
        read_model_quote_t quotes[READ_MODEL_QUOTES_MAX];
        int                nq;

        for (last = first + 1;
             last < rows && strcmp(PQgetvalue(res, last, READ_MODEL_APP_ID), id) == 0; last++)
            ;
        nq = read_model_quotes_of(res, first, last, READ_MODEL_APP_NCOLS, quotes,
                                  READ_MODEL_QUOTES_MAX);
        if (read_model_doc_build(res, first, quotes, nq, insurers,
                                 rm_trace_of(id, ids, traces, n), &docs[nd]) != 0) {
            while (nd > 0)
                read_model_doc_free(&docs[--nd]);
            return -1;
        }
        nd++;
    }
    return nd;
}

static int rm_append(redisContext *redis, const char *cmd, const char *script_or_sha,
                     const read_model_doc_t *d, int ttl_s)
{
    char        key[64], ttl[16], msg[80];
    const char *argv[9] = { cmd, script_or_sha, "1", key, d->doc, d->owner, d->updated, ttl, msg };
    size_t      lens[9];

    snprintf(key, sizeof(key), "osago:app:%s", d->id);
    snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    snprintf(msg, sizeof(msg), "%s %s", d->id, d->updated);
    for (int i = 0; i < 9; i++)
        lens[i] = i == 4 ? d->doc_len : strlen(argv[i]);
    return redisAppendCommandArgv(redis, 9, argv, lens) == REDIS_OK ? 0 : -1;
}

/*
 * One pipelined round of the script for every document not done yet. Returns how many were
 * written, or -1; *noscript counts the replies that asked for the script's text.
 */
static int rm_round(redisContext *redis, read_model_doc_t *docs, int n, int ttl_s, int use_eval,
                    int *noscript)
{
    int sent = 0, written = 0, rc = 0, failed_over = 0;

    *noscript = 0;
    for (int i = 0; i < n; i++) {
        if (docs[i].done)
            continue;
        if (rm_append(redis, use_eval ? "EVAL" : "EVALSHA", use_eval ? rm_script : rm_script_sha,
                      &docs[i], ttl_s) != 0) {
            redis_abandon(redis, "out of memory mid-pipeline");
            return -1;
        }
        sent++;
    }
    for (int i = 0; i < n && sent > 0; i++) {
        redisReply *r = NULL;

        if (docs[i].done)
            continue;
        sent--;
        if (redisGetReply(redis, (void **) &r) != REDIS_OK || r == NULL) {
            wlog(LOG_WARN, RM_ROLE, docs[i].trace, "redis_error", "read model of %s: %s",
                 docs[i].id, redis->errstr[0] ? redis->errstr : "no reply");
            return -1;                 /* the connection is broken: the rest cannot be read */
        }
        if (r->type == REDIS_REPLY_INTEGER) {
            docs[i].done = 1;
            if (r->integer == 1) {
                written++;
                wlog(LOG_DEBUG, RM_ROLE, docs[i].trace, "read_model_published",
                     "%s updated_at %s", docs[i].id, docs[i].updated);
            }
        } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
            (*noscript)++;
        } else if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "WRONGTYPE") != NULL) {
            /* the key holds something else: no retry changes that, and failing the round
             * would hold every result behind this one (their offsets wait for the write) */
            docs[i].done = 1;
            wlog(LOG_ERROR, RM_ROLE, docs[i].trace, "read_model_refused",
                 "read model of %s not written: osago:app:%s is not a hash (%s); the edge "
                 "shows nothing of it until the key is deleted and the application changes",
                 docs[i].id, docs[i].id, r->str);
        } else {
            wlog(LOG_WARN, RM_ROLE, docs[i].trace, "redis_error", "read model of %s: %s",
                 docs[i].id, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            rc = -1;
            failed_over |= redis_failed_over(redis, r);
        }
        freeReplyObject(r);
        if (failed_over)
            break;                     /* the rest go to the new primary, on a new connection */
    }
    return rc < 0 ? -1 : written;
}

int read_model_write(redisContext *redis, read_model_doc_t *docs, int n, int ttl_s)
{
    int written, again, noscript;

    written = rm_round(redis, docs, n, ttl_s, 0, &noscript);
    /* a Redis that restarted or was flushed lost the script: EVAL loads it again */
    if (written >= 0 && noscript > 0) {
        again = rm_round(redis, docs, n, ttl_s, 1, &noscript);
        written = again < 0 ? -1 : written + again;
    }
    return written;
}

int read_model_publish_many(PGconn *pg, redisContext *redis, const insurer_list_t *insurers,
                            const char *const *ids, const char *const *traces, int n, int ttl_s,
                            const pg_wait_t *wait)
{
    char             *array;
    const char       *params[1];
    PGresult         *res;
    read_model_doc_t *docs;
    int               nd, written = -1;

    if (n <= 0)
        return 0;
    if ((array = pg_text_array(ids, n)) == NULL)
        return -1;
    params[0] = array;
    res = pg_run_prepared(pg, RM_ROLE, "rm_select", rm_select, 1, params, wait);
    free(array);
    if (res == NULL)
        return -1;
    docs = calloc((size_t) n + 1, sizeof(*docs));
    nd = docs != NULL ? rm_docs(res, insurers, ids, traces, n, docs) : -1;
    if (nd >= 0 && nd < n)
        /* nothing to show for the others, and retrying would not change that */
        wlog(LOG_WARN, RM_ROLE, traces != NULL ? traces[0] : NULL, "read_model_unknown",
             "%d of %d applications not in PostgreSQL", n - nd, n);
    if (nd >= 0)
        written = read_model_write(redis, docs, nd, ttl_s);
    for (int i = 0; docs != NULL && i < nd; i++)
        read_model_doc_free(&docs[i]);
    free(docs);
    PQclear(res);
    return written;
}
