/*
 * Results: OsagoApplicationTaskResult -> the quote and its application's status in PostgreSQL
 * -> the Redis read model and its PUBLISH -> the offset. OsagoApplicationStarted only makes
 * sure the read model lists every insurer.
 *
 * The messages of one poll are applied in one transaction: each result is decided by
 * quote_next against the quote as locked (and as changed by the results before it in the same
 * batch), and each application's status follows from all its quotes, so every result is
 * applied atomically with its application's status; a batch only saves round trips. The
 * offsets are stored once the transaction committed and the read model was written; while Redis
 * is away, batches go on into PostgreSQL and owe their read models (res_batch).
 *
 * An application's status and read model need all its quotes: results keeps a copy of them as
 * its last commit left them (quote_cache.h) and reads them from PostgreSQL only when it holds
 * none for the application's current version (res_from_cache, res_state).
 *
 * The read models of the applications a transaction changed are built from its own rows
 * (res_keep_docs) rather than read again after the COMMIT; results owed to Redis (res_owe) drop
 * them and have their applications read again once Redis is back. Duplicates (at-least-once
 * delivery) change nothing: quote_next refuses them. Their applications still go through
 * read_model_publish_many, which writes and publishes only when Redis is behind PostgreSQL: that
 * is how a publish lost to a crash or a Redis outage after the COMMIT is repaired by the
 * redelivery, while an ordinary duplicate publishes nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <yajl/yajl_gen.h>

#include "completed_ring.h"
#include "event.h"
#include "kafka.h"
#include "log.h"
#include "pg.h"
#include "quote_cache.h"
#include "quote_state.h"
#include "read_model.h"
#include "redis_conn.h"
#include "worker.h"

#define RES_ROLE      "results"
#define RES_GROUP     "osago-worker-results"
#define RES_BATCH     256
#define RES_RETRY_MS  1000
#define RES_POLL_MS   500
#define RES_OWED_MAX  20000   /* results kept for Redis before results stops taking more */
#define RES_REASSERT_MS 60000 /* completed read models written again after a new connection:
                               * those written this long before the last write known to have
                               * gone through (a replica's lag is well under it) */
#define RES_PRIMARY_CHECK_MS 5000   /* an idle results role asks Redis this often (ROLE) */
#define RES_REASSERT_BACKOFF_MAX_MS 30000

typedef struct {
    rd_kafka_message_t *msg;
    osago_event_t       ev;
    int                 valid;       /* decoded, and a type this role handles */
    int                 committed;   /* its transaction committed (whatever it decided) */
    int                 applied;     /* it changed its quote */
    int                 completed;   /* it made its application completed */
    long                completed_after_ms;  /* then: acceptance to completion, or -1 */
    int                 skip;        /* no such quote, or data PostgreSQL refuses */
    int                 counted;     /* in the metrics already */
    int                 revoked;     /* its partition was taken away since: not ours to store */
} res_item_t;

/* A locked quote as the batch sees it, with what the batch decided for it. */
typedef struct {
    const char    *app;
    const char    *ins;
    const char    *app_status;
    const char    *app_version;    /* the application row's version (RES_APP_VERSION) */
    quote_status_t status;
    int            attempt;
    int            changed;
    const char    *premium;        /* borrowed from the deciding event */
    const char    *error;
} res_quote_t;

typedef struct {
    worker_t     *w;
    rd_kafka_t   *consumer;
    PGconn       *pg;
    int           pg_start;          /* the address of --pg its connects start at */
    redisContext *redis;
    const PGconn *prepared_conn;     /* the connection res_stmts are prepared on */
    int           prepared_pid;
    long long     last_kafka_warn_ms;
    res_item_t    items[RES_BATCH];
    int           n;
    /* Results applied to PostgreSQL whose read models Redis has not taken yet (it is away), in
     * the order consumed: their offsets are stored once the read models are written. */
    res_item_t   *owed;
    int           n_owed, cap_owed;
    kafka_rebalance_hook_t rebalance;   /* marks the revoked among items and owed */
    int64_t       owed_try_ms;
    /* The read models of the applications the batch changed, built from its transactions */
    read_model_doc_t docs[RES_BATCH];
    int              n_docs;
    quote_cache_t    cache;              /* the quotes of the applications in progress */
    /* Applications completed lately, written again when Redis is reached on a new connection
     * (res_reassert): a failover may have lost them. */
    completed_ring_t completed;
    int              redis_once;         /* connected before: a new connection is a reconnect */
    int64_t          redis_wrote_ms;     /* the last read models written */
    int64_t          redis_used_ms;      /* the last command that went through */
    int64_t          reassert_since_ms;  /* > 0: completed since then are to be written again */
    int64_t          reassert_next_ms;   /* not tried again before */
    int64_t          reassert_backoff_ms;
} results_t;

static int64_t res_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void res_nap(results_t *r, int64_t ms)
{
    int64_t until = res_now_ms() + ms;

    while (!*r->w->stop) {
        int64_t left = until - res_now_ms();
        struct timespec ts = { 0, 0 };

        if (left <= 0)
            return;
        ts.tv_nsec = (long) (left > 100 ? 100 : left) * 1000000L;
        nanosleep(&ts, NULL);
    }
}

/* ---- SQL ------------------------------------------------------------------------------------ */

/* Locks the applications with their quotes in one order (by id), so that concurrent batches
 * (two workers during a rebalance) wait for each other rather than deadlock, and count each
 * other's quotes: "completed" cannot be missed by both. */
/* The version of an application row results' copy of its quotes is trusted for
 * (quote_cache.h): the transaction that wrote it, and its updated_at, which only moves forward.
 * The xid alone would match another row version after a wraparound, or on another server. */
#define RES_APP_VERSION \
    "a.xmin::text || '/' || floor(extract(epoch FROM a.updated_at) * 1000000)::bigint"

static const char res_lock_sql[] =
    "SELECT a.id::text, a.status, q.insurer_code, q.status, q.attempt, " RES_APP_VERSION
    " FROM applications a JOIN quotes q ON q.application_id = a.id"
    " WHERE (q.application_id, q.insurer_code) IN"
    "       (SELECT * FROM unnest($1::uuid[], $2::text[]))"
    " ORDER BY a.id, q.insurer_code"
    " FOR UPDATE OF a, q";

static const char res_quotes_sql[] =
    "UPDATE quotes q SET status = t.status, attempt = t.attempt, premium_rub = t.premium,"
    " error = t.error, heartbeat_at = NULL, updated_at = now()"
    " FROM jsonb_to_recordset($1::jsonb)"
    "      AS t(app uuid, ins text, status text, attempt int, premium numeric, error text)"
    " WHERE q.application_id = t.app AND q.insurer_code = t.ins"
    " RETURNING q.application_id::text, " READ_MODEL_QUOTE_COLUMNS;

/* Every quote of the changed applications results holds no copy of (quote_cache.h), as the
 * transaction left them: their status, and their read models (built from these rows and
 * res_apps' without reading them again). Grouped by application. Its rows and res_quotes' are
 * RES_QROW_APP (the id) and READ_MODEL_QUOTE_COLUMNS from RES_QROW_QUOTE. */
static const char res_state_sql[] =
    "SELECT q.application_id::text, " READ_MODEL_QUOTE_COLUMNS
    " FROM quotes q WHERE q.application_id = ANY ($1::uuid[]) ORDER BY q.application_id";
enum { RES_QROW_APP, RES_QROW_QUOTE };

/* updated_at moves forward by at least 1 ms per change: it versions the read model. The
 * version after READ_MODEL_APP_COLUMNS is what results' copy of the quotes is kept under; the
 * age after it, what a completion adds to osago_worker_application_ms. */
static const char res_apps_sql[] =
    "UPDATE applications a SET status = t.status,"
    " updated_at = greatest(now(), a.updated_at + interval '1 millisecond')"
    " FROM unnest($1::uuid[], $2::text[]) AS t(id, status) WHERE a.id = t.id"
    " RETURNING " READ_MODEL_APP_COLUMNS ", " RES_APP_VERSION ","
    "  greatest(0, floor(extract(epoch FROM a.updated_at - a.created_at) * 1000))::bigint";
enum { RES_APPS_VERSION = READ_MODEL_APP_NCOLS, RES_APPS_AGE_MS };

/* Prepared once per connection, before the transaction (a statement that does not exist would
 * abort it): the parse and plan are most of a small statement's cost. */
static const struct {
    const char *name, *sql;
    int         nparams;
} res_stmts[] = {
    { "res_lock", res_lock_sql, 2 },
    { "res_quotes", res_quotes_sql, 1 },
    { "res_state", res_state_sql, 1 },
    { "res_apps", res_apps_sql, 2 },
};

/* pg_ensure, forgetting what belonged to a connection it replaces: its prepared statements and
 * results' copy of the quotes (res_prepare), whatever address or backend pid the new one has. */
static int res_pg(results_t *r)
{
    if (r->pg == NULL || PQstatus(r->pg) != CONNECTION_OK)
        r->prepared_conn = NULL;
    return pg_ensure(&r->pg, &r->pg_start, r->w->cfg->pg_conninfo, RES_ROLE, &r->w->pg_wait);
}

static int res_prepare(results_t *r)
{
    /* a reconnection is a new backend: res_pg, or its pid (with the handle), says so */
    if (r->prepared_conn == r->pg && r->prepared_pid == PQbackendPID(r->pg))
        return 0;
    quote_cache_clear(&r->cache);   /* its versions may mean other rows on another server */
    for (size_t i = 0; i < sizeof(res_stmts) / sizeof(res_stmts[0]); i++) {
        PGresult   *res = pg_prepare(r->pg, RES_ROLE, res_stmts[i].name, res_stmts[i].sql,
                                     res_stmts[i].nparams, &r->w->pg_wait);
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        int         ok = PQresultStatus(res) == PGRES_COMMAND_OK
                         || (state != NULL && strcmp(state, "42P05") == 0);   /* exists */

        if (res == NULL)
            return -1;              /* abandoned at a stop, and said so */
        if (!ok)
            wlog(LOG_WARN, RES_ROLE, NULL, "pg_error", "prepare %s: %.*s", res_stmts[i].name,
                 (int) strcspn(PQerrorMessage(r->pg), "\n"), PQerrorMessage(r->pg));
        PQclear(res);
        if (!ok)
            return -1;
    }
    r->prepared_conn = r->pg;
    r->prepared_pid = PQbackendPID(r->pg);
    return 0;
}

/* Whether a statement's result is an error; if so it is logged (a statement that an earlier
 * error in the same round trip aborted is not: that error says it) and *bad_data tells whether
 * the batch's own data was refused (class 22: a retry of the same batch cannot help). */
static int res_failed(PGresult *res, int *bad_data)
{
    ExecStatusType st = PQresultStatus(res);
    const char    *state;
    char           msg[256];

    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return 0;
    if (st == PGRES_PIPELINE_ABORTED)
        return 1;
    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    *bad_data = state != NULL && strncmp(state, "22", 2) == 0;
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
    msg[strcspn(msg, "\n")] = '\0';
    wlog(*bad_data ? LOG_ERROR : LOG_WARN, RES_ROLE, NULL, "pg_error", "SQLSTATE %s: %s",
         state != NULL ? state : "none", msg);
    return 1;
}

/* Whether any statement of a round trip failed (res_failed on each, in order). */
static int res_round_failed(const pg_pipe_t *p, int *bad_data)
{
    for (int i = 0; i < p->queued; i++)
        if (i >= p->n || res_failed(p->res[i], bad_data))
            return 1;
    return 0;
}

static int res_simple(results_t *r, const char *sql)
{
    PGresult *res = pg_exec(r->pg, RES_ROLE, sql, 0, NULL, &r->w->pg_wait);
    int       ok = res != NULL;

    PQclear(res);
    return ok ? 0 : -1;
}

typedef struct {
    const char        *name;      /* a statement of res_stmts, or NULL for sql */
    const char        *sql;       /* BEGIN, COMMIT */
    int                nparams;
    const char *const *params;
} res_stmt_t;

/*
 * The statements s[0..n) in one round trip (libpq's pipeline mode): a transaction is three
 * round trips rather than six. p holds their results, in order. 0, or -1 when the round trip
 * itself failed: the connection is then closed, since it may be left mid-pipeline (pg_ensure
 * opens a new one, and PostgreSQL rolls the transaction back).
 */
static int res_round(results_t *r, pg_pipe_t *p, const res_stmt_t *s, int n)
{
    char why[256];
    int  ok = pg_pipe_begin(r->pg, p) == 0, rc = -1;

    for (int i = 0; ok && i < n; i++)
        ok = pg_pipe_stmt(r->pg, p, s[i].name, s[i].sql, s[i].nparams, s[i].params) == 0;
    if (ok && (rc = pg_pipe_wait(r->pg, RES_ROLE, p, &r->w->pg_wait)) == 0)
        return 0;
    snprintf(why, sizeof(why), "%s", PQerrorMessage(r->pg));
    why[strcspn(why, "\n")] = '\0';
    if (rc == PG_GIVEN_UP)
        wlog(LOG_WARN, RES_ROLE, NULL, "pg_abandoned", "%s before PostgreSQL answered a round "
             "trip: its transaction is rolled back, its results %s",
             *r->w->stop ? "stopping" : "out of time",
             *r->w->stop ? "redelivered" : "applied again on a new connection");
    else
        wlog(LOG_WARN, RES_ROLE, NULL, "pg_error", "round trip failed: %s; reconnecting", why);
    pg_pipe_clear(p);
    PQfinish(r->pg);
    r->pg = NULL;
    return -1;
}

/* ---- deciding ---------------------------------------------------------------------------------- */

static res_quote_t *res_find(res_quote_t *q, int nq, const osago_event_t *ev)
{
    for (int i = 0; i < nq; i++)
        if (strcmp(q[i].ins, ev->insurer) == 0 && strcasecmp(q[i].app, ev->application_id) == 0)
            return &q[i];
    return NULL;
}

/* Applies one result to its quote in memory, as quote_next decides. */
static void res_decide(const worker_t *w, res_item_t *it, res_quote_t *q)
{
    const osago_event_t *ev = &it->ev;
    quote_status_t       next;
    /* an error result is final by contract (the executor sends one only when it stopped
     * retrying): it is applied with max_attempts = its attempt (quote_state.h) */
    int                  max = ev->ok ? (w->cfg->max_attempts > ev->attempt ? w->cfg->max_attempts
                                                                            : ev->attempt)
                                      : ev->attempt;
    quote_event_t        qev = ev->ok ? QEV_SUCCEEDED : QEV_FAILED;

    if (quote_next(q->status, q->attempt, qev, ev->attempt, max, &next) != 0)
        return;                                   /* a duplicate or a late older attempt */
    q->status = next;
    q->attempt = qev == QEV_FAILED && next == QUOTE_PENDING ? ev->attempt + 1 : ev->attempt;
    q->premium = next == QUOTE_OK ? ev->premium_rub : NULL;
    q->error = next == QUOTE_ERROR ? ev->error : NULL;
    q->changed = 1;
    it->applied = 1;
}

static int gen_s(yajl_gen g, const char *k, const char *v)
{
    if (yajl_gen_string(g, (const unsigned char *) k, strlen(k)) != yajl_gen_status_ok)
        return -1;
    if (v == NULL)
        return yajl_gen_null(g) == yajl_gen_status_ok ? 0 : -1;
    return yajl_gen_string(g, (const unsigned char *) v, strlen(v)) == yajl_gen_status_ok ? 0 : -1;
}

/* The changed quotes as a JSON array for jsonb_to_recordset; NULL when none or on error. */
static char *res_changes_json(const res_quote_t *q, int nq)
{
    yajl_gen             g = yajl_gen_alloc(NULL);
    const unsigned char *buf;
    size_t               len;
    char                *out = NULL;
    int                  ok = g != NULL && yajl_gen_array_open(g) == yajl_gen_status_ok;

    for (int i = 0; ok && i < nq; i++) {
        if (!q[i].changed)
            continue;
        ok = yajl_gen_map_open(g) == yajl_gen_status_ok
             && gen_s(g, "app", q[i].app) == 0 && gen_s(g, "ins", q[i].ins) == 0
             && gen_s(g, "status", quote_status_name(q[i].status)) == 0
             && yajl_gen_string(g, (const unsigned char *) "attempt", 7) == yajl_gen_status_ok
             && yajl_gen_integer(g, q[i].attempt) == yajl_gen_status_ok
             && yajl_gen_string(g, (const unsigned char *) "premium", 7) == yajl_gen_status_ok
             && (q[i].premium != NULL
                 ? yajl_gen_number(g, q[i].premium, strlen(q[i].premium))
                 : yajl_gen_null(g)) == yajl_gen_status_ok
             && gen_s(g, "error", q[i].error) == 0
             && yajl_gen_map_close(g) == yajl_gen_status_ok;
    }
    if (ok && yajl_gen_array_close(g) == yajl_gen_status_ok
        && yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok && (out = malloc(len + 1)) != NULL) {
        memcpy(out, buf, len);
        out[len] = '\0';
    }
    if (g != NULL)
        yajl_gen_free(g);
    return out;
}

/* ---- one transaction ---------------------------------------------------------------------- */

/* The distinct applications whose quotes a transaction changed, with all their quotes as it
 * leaves them: app k's are quotes[k * READ_MODEL_QUOTES_MAX ...] (nq[k] of them), views into
 * results' copy (cached[k]), res_quotes' rows and res_state's. */
typedef struct {
    int                        n;
    const char                *apps[RES_BATCH];
    const char                *version[RES_BATCH];   /* the row's version as locked */
    const char                *prev[RES_BATCH];      /* their status before */
    const char                *status[RES_BATCH];    /* their new status */
    const quote_cache_entry_t *cached[RES_BATCH];    /* NULL: their quotes are read (res_state) */
    int                        nq[RES_BATCH];
    read_model_quote_t        *quotes;
} res_apps_t;

static int res_app_index(const res_apps_t *a, const char *app)
{
    for (int k = 0; k < a->n; k++)
        if (strcasecmp(a->apps[k], app) == 0)
            return k;
    return -1;
}

/* The distinct applications whose quotes changed, with their status and version before. */
static void res_changed_apps(const res_quote_t *q, int nq, res_apps_t *a)
{
    for (int i = 0; i < nq; i++)
        if (q[i].changed && res_app_index(a, q[i].app) < 0) {
            a->prev[a->n] = q[i].app_status;
            a->version[a->n] = q[i].app_version;
            a->cached[a->n] = NULL;
            a->nq[a->n] = 0;
            a->apps[a->n++] = q[i].app;
        }
}

static read_model_quote_t *res_quote_of(res_apps_t *a, int k, const char *code)
{
    read_model_quote_t *qs = a->quotes + (size_t) k * READ_MODEL_QUOTES_MAX;

    for (int i = 0; i < a->nq[k]; i++)
        if (strcmp(qs[i].code, code) == 0)
            return &qs[i];
    return NULL;
}

/* The applications results' copy still holds as their rows are, with the batch's decisions:
 * their quotes need not be read. A copy without one of the changed quotes is not used (the
 * quotes of an application are made once, so this does not happen). Premiums and error texts
 * come later, as PostgreSQL wrote them (res_take_written). */
static void res_from_cache(results_t *r, res_apps_t *a, const res_quote_t *q, int nq)
{
    for (int k = 0; k < a->n; k++) {
        const quote_cache_entry_t *e = quote_cache_get(&r->cache, a->apps[k], a->version[k]);

        if (e != NULL && e->n <= READ_MODEL_QUOTES_MAX) {
            memcpy(a->quotes + (size_t) k * READ_MODEL_QUOTES_MAX, e->quotes,
                   (size_t) e->n * sizeof(e->quotes[0]));
            a->nq[k] = e->n;
            a->cached[k] = e;
        }
    }
    for (int i = 0; i < nq; i++) {
        int                 k = q[i].changed ? res_app_index(a, q[i].app) : -1;
        read_model_quote_t *c;

        if (k < 0 || a->cached[k] == NULL)
            continue;
        if ((c = res_quote_of(a, k, q[i].ins)) != NULL) {
            c->status = quote_status_name(q[i].status);
        } else {
            a->cached[k] = NULL;
            a->nq[k] = 0;
        }
    }
}

/* The quotes of the applications not in results' copy, from res_state's rows. */
static void res_from_state(res_apps_t *a, const PGresult *state)
{
    int rows = PQntuples(state);

    for (int first = 0, last; first < rows; first = last) {
        const char *app = PQgetvalue(state, first, RES_QROW_APP);
        int         k = res_app_index(a, app);

        for (last = first + 1;
             last < rows && strcmp(PQgetvalue(state, last, RES_QROW_APP), app) == 0; last++)
            ;
        if (k >= 0 && a->cached[k] == NULL)
            a->nq[k] = read_model_quotes_of(state, first, last, RES_QROW_QUOTE,
                                            a->quotes + (size_t) k * READ_MODEL_QUOTES_MAX,
                                            READ_MODEL_QUOTES_MAX);
    }
}

/* The changed quotes as PostgreSQL wrote them (res_quotes' rows): a premium's text is the
 * column's (8734.5 is stored as 8734.50), so the document reads as one built from a SELECT. */
static void res_take_written(res_apps_t *a, const PGresult *written)
{
    for (int row = 0; row < PQntuples(written); row++) {
        int                 k = res_app_index(a, PQgetvalue(written, row, RES_QROW_APP));
        read_model_quote_t  w, *c;

        if (k < 0 || a->cached[k] == NULL
            || read_model_quotes_of(written, row, row + 1, RES_QROW_QUOTE, &w, 1) != 1
            || (c = res_quote_of(a, k, w.code)) == NULL)
            continue;
        *c = w;
    }
}

/* Each application's new status, from all its quotes. */
static void res_app_status(res_apps_t *a)
{
    for (int k = 0; k < a->n; k++) {
        const read_model_quote_t *qs = a->quotes + (size_t) k * READ_MODEL_QUOTES_MAX;
        int                       done = 0;

        for (int i = 0; i < a->nq[k]; i++)
            done += strcmp(qs[i].status, "ok") == 0 || strcmp(qs[i].status, "error") == 0;
        /* no quotes cannot happen (its own quote changed); if it did, it stays in progress */
        a->status[k] = app_status_name(a->nq[k] > 0 ? app_status_from(a->nq[k], done)
                                                    : APP_IN_PROGRESS);
    }
}

static const char *res_trace_of(res_item_t **its, int m, const char *app)
{
    for (int i = 0; i < m; i++)
        if (strcasecmp(its[i]->ev.application_id, app) == 0)
            return its[i]->ev.traceparent;
    return NULL;
}

/* Keeps the read models of the applications a transaction changed, from its own rows: apps
 * (res_apps' RETURNING) and their quotes. A later transaction of the batch (res_apply's one by
 * one) replaces an application's document; one that could not be built drops the older one too,
 * so that res_publish reads the application again rather than write a stale document. */
static void res_keep_docs(results_t *r, res_item_t **its, int m, const res_apps_t *a,
                          const PGresult *apps)
{
    for (int row = 0; row < PQntuples(apps); row++) {
        const char      *app = PQgetvalue(apps, row, READ_MODEL_APP_ID);
        read_model_doc_t doc;
        int              k = res_app_index(a, app), j = 0, built;

        built = k >= 0
                && read_model_doc_build(apps, row, a->quotes + (size_t) k * READ_MODEL_QUOTES_MAX,
                                        a->nq[k], r->w->insurers, res_trace_of(its, m, app),
                                        &doc) == 0;
        while (j < r->n_docs && strcasecmp(r->docs[j].id, app) != 0)
            j++;
        if (j < r->n_docs) {
            read_model_doc_free(&r->docs[j]);
            if (!built)
                r->docs[j] = r->docs[--r->n_docs];
        } else if (built && r->n_docs < RES_BATCH) {
            r->n_docs++;
        } else {
            if (built)
                read_model_doc_free(&doc);
            continue;
        }
        if (built)
            r->docs[j] = doc;
    }
}

/* Keeps a copy of the quotes of each application the transaction left in progress, under the
 * version its commit gave the row; a completed one's is dropped. All copies are made before any
 * is put: the quotes may point into the entries they replace. */
static void res_remember_quotes(results_t *r, const res_apps_t *a, const PGresult *apps)
{
    quote_cache_entry_t fresh[RES_BATCH];
    int                 n = 0;

    for (int row = 0; row < PQntuples(apps); row++) {
        const char *app = PQgetvalue(apps, row, READ_MODEL_APP_ID);
        int         k = res_app_index(a, app);

        if (k < 0 || strcmp(PQgetvalue(apps, row, READ_MODEL_APP_STATUS), "completed") == 0
            || quote_cache_make(&fresh[n], app, PQgetvalue(apps, row, RES_APPS_VERSION),
                                a->quotes + (size_t) k * READ_MODEL_QUOTES_MAX, a->nq[k]) != 0)
            continue;
        n++;
    }
    for (int row = 0; row < PQntuples(apps); row++)
        if (strcmp(PQgetvalue(apps, row, READ_MODEL_APP_STATUS), "completed") == 0)
            quote_cache_drop(&r->cache, PQgetvalue(apps, row, READ_MODEL_APP_ID));
    for (int i = 0; i < n; i++)
        quote_cache_put(&r->cache, &fresh[i]);
}

/* The age res_apps gave an application (acceptance to this update, in ms), or -1. */
static long res_age_ms(const PGresult *apps, const char *app)
{
    for (int row = 0; row < PQntuples(apps); row++)
        if (strcasecmp(PQgetvalue(apps, row, READ_MODEL_APP_ID), app) == 0)
            return PQgetisnull(apps, row, RES_APPS_AGE_MS)
                       ? -1 : atol(PQgetvalue(apps, row, RES_APPS_AGE_MS));
    return -1;
}

/* Marks, per application that became completed, the last item that changed it, with the time
 * the application took. */
static void res_mark_completed(res_item_t **its, int m, const res_apps_t *a, const PGresult *apps)
{
    for (int k = 0; k < a->n; k++) {
        if (strcmp(a->status[k], "completed") != 0 || strcmp(a->prev[k], "completed") == 0)
            continue;
        for (int i = m - 1; i >= 0; i--)
            if (its[i]->applied && strcasecmp(its[i]->ev.application_id, a->apps[k]) == 0) {
                its[i]->completed = 1;
                its[i]->completed_after_ms = res_age_ms(apps, a->apps[k]);
                break;
            }
    }
}

/*
 * Writes the decisions and commits, keeping the read models and results' copy of the quotes.
 * When the copy holds every application changed, its status is known before anything is
 * written: the quotes, the applications and the COMMIT go in one round trip. Otherwise the
 * quotes go with every quote of the applications not held read back, and the applications'
 * status with the COMMIT in a second round trip. 0, or -1 (the caller rolls back, or the
 * connection was closed).
 */
static int res_write_commit(results_t *r, res_item_t **its, int m, const res_quote_t *q, int nq,
                            int *bad_data)
{
    res_apps_t        a = { .n = 0 };
    const char       *missing[RES_BATCH];
    char             *changes = res_changes_json(q, nq), *ids = NULL, *status = NULL;
    char             *missing_ids = NULL;
    pg_pipe_t         p = { { NULL }, 0, 0 }, c = { { NULL }, 0, 0 };
    const PGresult   *written, *apps;
    int               n_missing = 0, rc = -1;

    res_changed_apps(q, nq, &a);
    if (changes == NULL || (ids = pg_text_array(a.apps, a.n)) == NULL
        || (a.quotes = malloc((size_t) a.n * READ_MODEL_QUOTES_MAX * sizeof(*a.quotes))) == NULL)
        goto out;
    res_from_cache(r, &a, q, nq);
    for (int k = 0; k < a.n; k++)
        if (a.cached[k] == NULL)
            missing[n_missing++] = a.apps[k];
    if (n_missing == 0) {
        res_app_status(&a);
        if ((status = pg_text_array(a.status, a.n)) == NULL)
            goto out;
        {
            const char      *quotes_params[1] = { changes }, *apps_params[2] = { ids, status };
            const res_stmt_t all[3] = { { "res_quotes", NULL, 1, quotes_params },
                                        { "res_apps", NULL, 2, apps_params },
                                        { NULL, "COMMIT", 0, NULL } };

            if (res_round(r, &p, all, 3) != 0 || res_round_failed(&p, bad_data))
                goto out;
        }
        written = p.res[0];
        apps = p.res[1];
    } else {
        if ((missing_ids = pg_text_array(missing, n_missing)) == NULL)
            goto out;
        {
            const char      *quotes_params[1] = { changes }, *state_params[1] = { missing_ids };
            const res_stmt_t write[2] = { { "res_quotes", NULL, 1, quotes_params },
                                          { "res_state", NULL, 1, state_params } };

            if (res_round(r, &p, write, 2) != 0 || res_round_failed(&p, bad_data))
                goto out;
        }
        res_from_state(&a, p.res[1]);
        res_app_status(&a);
        if ((status = pg_text_array(a.status, a.n)) == NULL)
            goto out;
        {
            const char      *apps_params[2] = { ids, status };
            const res_stmt_t commit[2] = { { "res_apps", NULL, 2, apps_params },
                                           { NULL, "COMMIT", 0, NULL } };

            if (res_round(r, &c, commit, 2) != 0 || res_round_failed(&c, bad_data))
                goto out;
        }
        written = p.res[0];
        apps = c.res[0];
    }
    res_take_written(&a, written);
    for (int k = 0; k < a.n; k++)
        atomic_fetch_add(a.cached[k] != NULL ? &r->w->metrics->results_cache_hits
                                             : &r->w->metrics->results_cache_misses, 1);
    res_mark_completed(its, m, &a, apps);
    res_keep_docs(r, its, m, &a, apps);
    res_remember_quotes(r, &a, apps);     /* last: its puts free entries a.quotes points into */
    rc = 0;
out:
    pg_pipe_clear(&p);
    pg_pipe_clear(&c);
    free(a.quotes);
    free(changes);
    free(ids);
    free(missing_ids);
    free(status);
    return rc;
}

/* Locks, decides and writes the results its[0..m); 0 committed, -1 rolled back. */
static int res_txn(results_t *r, res_item_t **its, int m, int *bad_data)
{
    const char  *apps[RES_BATCH], *codes[RES_BATCH];
    res_quote_t  q[RES_BATCH];
    pg_pipe_t    p = { { NULL }, 0, 0 };
    PGresult    *locked;
    char        *lock_params[2];
    int          nq, any = 0;

    for (int i = 0; i < m; i++) {
        apps[i] = its[i]->ev.application_id;
        codes[i] = its[i]->ev.insurer;
        its[i]->applied = its[i]->completed = 0;
    }
    if (res_prepare(r) != 0)
        return -1;
    lock_params[0] = pg_text_array(apps, m);
    lock_params[1] = pg_text_array(codes, m);
    if (lock_params[0] == NULL || lock_params[1] == NULL) {
        free(lock_params[0]);
        free(lock_params[1]);
        return -1;
    }
    {
        const res_stmt_t lock[2] = { { NULL, "BEGIN", 0, NULL },
                                     { "res_lock", NULL, 2, (const char *const *) lock_params } };
        int              sent = res_round(r, &p, lock, 2);

        free(lock_params[0]);
        free(lock_params[1]);
        if (sent != 0)
            goto undo;             /* the connection is closed: nothing to roll back */
    }
    if (res_round_failed(&p, bad_data))
        goto fail;
    locked = p.res[1];
    nq = PQntuples(locked) < RES_BATCH ? PQntuples(locked) : RES_BATCH;
    for (int i = 0; i < nq; i++) {
        q[i].app = PQgetvalue(locked, i, 0);
        q[i].app_status = PQgetvalue(locked, i, 1);
        q[i].ins = PQgetvalue(locked, i, 2);
        q[i].attempt = atoi(PQgetvalue(locked, i, 4));
        q[i].app_version = PQgetvalue(locked, i, 5);
        q[i].changed = 0;
        if (quote_status_parse(PQgetvalue(locked, i, 3), &q[i].status) != 0)
            q[i].status = QUOTE_ERROR;                  /* unknown: treat as terminal */
    }
    for (int i = 0; i < m; i++) {
        res_quote_t *found = res_find(q, nq, &its[i]->ev);

        if (found == NULL) {
            its[i]->skip = 1;
            wlog(LOG_ERROR, RES_ROLE, its[i]->ev.traceparent, "quote_unknown",
                 "result for %s/%s skipped: no such quote", its[i]->ev.application_id,
                 its[i]->ev.insurer);
            continue;
        }
        res_decide(r->w, its[i], found);
        any |= its[i]->applied;
    }
    if (any ? res_write_commit(r, its, m, q, nq, bad_data) != 0 : res_simple(r, "COMMIT") != 0)
        goto fail;
    pg_pipe_clear(&p);
    for (int i = 0; i < m; i++)
        its[i]->committed = 1;
    return 0;

fail:
    if (r->pg != NULL)
        res_simple(r, "ROLLBACK");
undo:
    pg_pipe_clear(&p);
    for (int i = 0; i < m; i++)
        its[i]->applied = its[i]->completed = its[i]->skip = 0;
    return -1;
}

/* Applies its[0..m); data PostgreSQL refuses is found by applying one by one, and skipped. */
static int res_apply(results_t *r, res_item_t **its, int m)
{
    int bad = 0;

    if (m == 0 || res_txn(r, its, m, &bad) == 0)
        return 0;
    if (!bad)
        return -1;
    if (m == 1) {
        its[0]->skip = its[0]->committed = 1;
        wlog(LOG_ERROR, RES_ROLE, its[0]->ev.traceparent, "event_invalid",
             "result for %s/%s skipped: PostgreSQL refused its data", its[0]->ev.application_id,
             its[0]->ev.insurer);
        return 0;
    }
    for (int i = 0; i < m; i++)
        if (res_apply(r, &its[i], 1) != 0)
            return -1;
    return 0;
}

/* ---- the batch ---------------------------------------------------------------------------- */

static int res_apply_all(results_t *r)
{
    res_item_t *its[RES_BATCH];
    int         m = 0;

    for (int i = 0; i < r->n; i++)
        if (r->items[i].valid && !r->items[i].committed && r->items[i].ev.type == EV_TASK_RESULT)
            its[m++] = &r->items[i];
    if (m == 0)
        return 0;
    if (res_pg(r) != 0)
        return -1;
    return res_apply(r, its, m);
}

static void res_account(results_t *r)
{
    metrics_t *m = r->w->metrics;

    for (int i = 0; i < r->n; i++) {
        res_item_t *it = &r->items[i];

        if (!it->valid || it->counted || it->ev.type != EV_TASK_RESULT || it->skip)
            continue;
        it->counted = 1;
        if (it->applied) {
            atomic_fetch_add(&m->results_applied, 1);
            wlog(LOG_DEBUG, RES_ROLE, it->ev.traceparent, "result_applied", "%s/%s attempt %d: %s",
                 it->ev.application_id, it->ev.insurer, it->ev.attempt,
                 it->ev.ok ? it->ev.premium_rub : it->ev.error);
        } else {
            atomic_fetch_add(&m->results_duplicate, 1);
            wlog(LOG_DEBUG, RES_ROLE, it->ev.traceparent, "result_duplicate",
                 "%s/%s attempt %d changed nothing", it->ev.application_id, it->ev.insurer,
                 it->ev.attempt);
        }
        if (it->completed) {
            atomic_fetch_add(&m->applications_completed, 1);
            if (it->completed_after_ms >= 0)
                metrics_observe_application_ms(m, it->completed_after_ms);
            wlog(LOG_INFO, RES_ROLE, it->ev.traceparent, "application_completed", "%s",
                 it->ev.application_id);
        }
    }
}

/* redis_ensure, noting a connection lost after one was made: from then the read models completed
 * shortly before the last write that went through are owed again (res_reassert). */
static int res_redis(results_t *r)
{
    if ((r->redis == NULL || r->redis->err != 0) && r->redis_once && r->reassert_since_ms == 0)
        r->reassert_since_ms = (r->redis_wrote_ms > 0 ? r->redis_wrote_ms : res_now_ms())
                               - RES_REASSERT_MS;
    if (redis_ensure(&r->redis, r->w->cfg, RES_ROLE, NULL) != 0)
        return -1;
    r->redis_once = 1;
    return 0;
}

/* The applications items[0..n) made completed, whose read models were just written. */
static void res_remember_completed(results_t *r, const res_item_t *items, int n)
{
    int64_t now = res_now_ms();

    r->redis_wrote_ms = r->redis_used_ms = now;
    for (int i = 0; i < n; i++)
        if (items[i].completed && completed_ring_add(&r->completed, items[i].ev.application_id,
                                                     now) != 0)
            return;     /* out of memory: a failover may leave these behind, as before */
}

static int res_has_doc(const read_model_doc_t *docs, int n_docs, const char *app)
{
    for (int i = 0; i < n_docs; i++)
        if (strcasecmp(docs[i].id, app) == 0)
            return 1;
    return 0;
}

/* The read models of the applications of items[0..n): those in docs as built, the others read
 * from PostgreSQL, once each (per RES_BATCH), in as many round trips as it takes. A single
 * attempt at reconnecting to Redis: results goes on taking results rather than wait for Redis
 * (res_batch). */
static int res_publish(results_t *r, const res_item_t *items, int n, read_model_doc_t *docs,
                       int n_docs)
{
    if (n_docs > 0) {
        int rc;

        if (res_redis(r) != 0
            || (rc = read_model_write(r->redis, docs, n_docs, r->w->cfg->app_ttl_s)) < 0)
            return -1;
        atomic_fetch_add(&r->w->metrics->publish_total, (unsigned long) rc);
    }
    for (int from = 0; from < n;) {
        const char *ids[RES_BATCH], *traces[RES_BATCH];
        int         k = 0, rc;

        for (; from < n && k < RES_BATCH; from++) {
            const res_item_t *it = &items[from];
            int               seen = 0;

            if (!it->valid || it->skip || res_has_doc(docs, n_docs, it->ev.application_id))
                continue;
            for (int j = 0; j < k && !seen; j++)
                seen = strcasecmp(ids[j], it->ev.application_id) == 0;
            if (!seen) {
                ids[k] = it->ev.application_id;
                traces[k++] = it->ev.traceparent;
            }
        }
        if (k == 0)
            continue;
        if (res_pg(r) != 0
            || res_redis(r) != 0)
            return -1;
        rc = read_model_publish_many(r->pg, r->redis, r->w->insurers, ids, traces, k,
                                     r->w->cfg->app_ttl_s, &r->w->pg_wait);
        if (rc < 0)
            return -1;
        atomic_fetch_add(&r->w->metrics->publish_total, (unsigned long) rc);
    }
    return 0;
}

static void res_decode(res_item_t *it)
{
    char err[256];

    if (event_decode(it->msg->payload, it->msg->len, &it->ev, err, sizeof(err)) != 0) {
        wlog(LOG_ERROR, RES_ROLE, NULL, "event_invalid", "%s [%d] offset %lld skipped: %s",
             rd_kafka_topic_name(it->msg->rkt), (int) it->msg->partition,
             (long long) it->msg->offset, err);
        return;
    }
    if (it->ev.type != EV_TASK_RESULT && it->ev.type != EV_STARTED) {
        wlog(LOG_ERROR, RES_ROLE, it->ev.traceparent, "event_invalid", "%s skipped",
             event_type_name(it->ev.type));
        return;
    }
    it->valid = 1;
}

static void res_poll(results_t *r)
{
    int timeout = RES_POLL_MS;

    while (r->n < RES_BATCH && !*r->w->stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->consumer, timeout);

        if (m == NULL)
            return;
        timeout = 0;          /* take what is already here; do not wait for a full batch */
        if (m->err) {
            kafka_log_poll_error(RES_ROLE, m, &r->last_kafka_warn_ms);
            rd_kafka_message_destroy(m);
            continue;
        }
        memset(&r->items[r->n], 0, sizeof(r->items[0]));
        r->items[r->n].msg = m;
        res_decode(&r->items[r->n++]);
    }
}

static void res_mark_revoked(res_item_t *items, int n,
                             const rd_kafka_topic_partition_list_t *parts)
{
    for (int i = 0; i < n; i++)
        for (int k = 0; k < parts->cnt; k++)
            if (items[i].msg->partition == parts->elems[k].partition
                && strcmp(rd_kafka_topic_name(items[i].msg->rkt), parts->elems[k].topic) == 0)
                items[i].revoked = 1;
}

/*
 * Partitions taken away in a rebalance: the results read from them and not yet stored (the
 * owed ones wait for Redis across polls) are redelivered to the next owner, where they change
 * nothing. Their read models are still written here, but their offsets are no longer ours:
 * stored once the partition came back, past them, they would move the group back.
 */
static void res_partitions_revoked(void *arg, const rd_kafka_topic_partition_list_t *parts)
{
    results_t *r = arg;

    res_mark_revoked(r->items, r->n, parts);
    res_mark_revoked(r->owed, r->n_owed, parts);
}

static void res_items_free(res_item_t *items, int *n)
{
    for (int i = 0; i < *n; i++) {
        event_free(&items[i].ev);
        rd_kafka_message_destroy(items[i].msg);
    }
    *n = 0;
}

static void res_batch_free(results_t *r)
{
    res_items_free(r->items, &r->n);
    while (r->n_docs > 0)
        read_model_doc_free(&r->docs[--r->n_docs]);
}

/* The batch, applied to PostgreSQL, waits with the results before it for Redis; 0, or -1 when
 * out of memory (the batch then stays). */
static int res_owe(results_t *r)
{
    if (r->n_owed + r->n > r->cap_owed) {
        int         cap = r->cap_owed ? r->cap_owed * 2 : 1024;
        res_item_t *grown;

        while (cap < r->n_owed + r->n)
            cap *= 2;
        if ((grown = realloc(r->owed, (size_t) cap * sizeof(*grown))) == NULL)
            return -1;
        r->owed = grown;
        r->cap_owed = cap;
    }
    if (r->n_owed == 0) {
        wlog(LOG_WARN, RES_ROLE, NULL, "read_model_owed", "read models not written (Redis "
             "away?): results go on into PostgreSQL and owe them until they can be");
        r->owed_try_ms = res_now_ms();
    }
    memcpy(&r->owed[r->n_owed], r->items, (size_t) r->n * sizeof(r->items[0]));
    r->n_owed += r->n;
    r->n = 0;
    return 0;
}

/* Once a second while results owes read models: writes them all, then stores their offsets. */
static void res_settle(results_t *r)
{
    int64_t now = res_now_ms();

    if (r->n_owed == 0 || now - r->owed_try_ms < RES_RETRY_MS)
        return;
    r->owed_try_ms = now;
    if (res_publish(r, r->owed, r->n_owed, NULL, 0) != 0)
        return;
    wlog(LOG_INFO, RES_ROLE, NULL, "read_model_settled", "owed read models of %d results "
         "written", r->n_owed);
    res_remember_completed(r, r->owed, r->n_owed);
    for (int i = 0; i < r->n_owed; i++)
        if (!r->owed[i].revoked)
            kafka_done(r->consumer, r->owed[i].msg);
    res_items_free(r->owed, &r->n_owed);
    /* an outage's worth (up to RES_OWED_MAX decoded events, tens of MB) is not kept for the next */
    free(r->owed);
    r->owed = NULL;
    r->cap_owed = 0;
}

/*
 * PostgreSQL first (once), then the read model, then the offsets; PostgreSQL is retried until it
 * went through or the worker stops (then nothing is marked done: redelivery finishes it). When
 * Redis does not take the read models, the batch is owed (res_settle) and results goes on: a
 * quote stays running until its result is applied, so results waiting on Redis for longer than
 * the stale age would have the sweeper call the insurers again. Up to RES_OWED_MAX results are
 * owed; beyond that results waits for Redis as it did.
 */
static void res_batch(results_t *r)
{
    while (!*r->w->stop) {
        if (res_apply_all(r) == 0) {
            res_account(r);
            if (r->n_owed == 0 && res_publish(r, r->items, r->n, r->docs, r->n_docs) == 0) {
                res_remember_completed(r, r->items, r->n);
                for (int i = 0; i < r->n; i++)
                    if (!r->items[i].revoked)
                        kafka_done(r->consumer, r->items[i].msg);
                return;
            }
            if (r->n_owed < RES_OWED_MAX && res_owe(r) == 0)
                return;
            res_settle(r);      /* owed too much: wait for Redis here */
        }
        res_nap(r, RES_RETRY_MS);
    }
}

/*
 * After Redis was reached on a new connection: the read models of the applications completed
 * since reassert_since_ms are written again where Redis is behind PostgreSQL (the script writes
 * nothing, and publishes nothing, where it is current). Tried until it went through: once a
 * second, and while Redis stays away from an idle role, less and less often.
 */
static void res_reassert(results_t *r)
{
    int64_t     now = res_now_ms();
    int         pos = 0, checked = 0, written = 0, k;
    const char *ids[RES_BATCH];

    if (r->reassert_since_ms == 0 || r->n_owed > 0 || now < r->reassert_next_ms)
        return;
    if (res_redis(r) != 0) {
        r->reassert_backoff_ms = r->reassert_backoff_ms == 0 ? RES_RETRY_MS
                                                             : r->reassert_backoff_ms * 2;
        if (r->reassert_backoff_ms > RES_REASSERT_BACKOFF_MAX_MS)
            r->reassert_backoff_ms = RES_REASSERT_BACKOFF_MAX_MS;
        r->reassert_next_ms = now + r->reassert_backoff_ms;
        return;
    }
    r->reassert_backoff_ms = 0;
    while ((k = completed_ring_since(&r->completed, r->reassert_since_ms, &pos, ids,
                                     RES_BATCH)) > 0) {
        int rc;

        if (res_pg(r) != 0
            || (rc = read_model_publish_many(r->pg, r->redis, r->w->insurers, ids, NULL, k,
                                             r->w->cfg->app_ttl_s, &r->w->pg_wait)) < 0) {
            r->reassert_next_ms = res_now_ms() + RES_RETRY_MS;   /* from the oldest again */
            return;
        }
        checked += k;
        written += rc;
    }
    atomic_fetch_add(&r->w->metrics->publish_total, (unsigned long) written);
    if (written > 0)
        wlog(LOG_WARN, RES_ROLE, NULL, "read_model_reasserted", "Redis on a new connection had "
             "lost the read models of %d of the %d applications completed lately: written again",
             written, checked);
    else if (checked > 0)
        wlog(LOG_INFO, RES_ROLE, NULL, "read_model_reasserted", "Redis on a new connection "
             "holds the read models of the %d applications completed lately", checked);
    r->redis_used_ms = res_now_ms();
    r->reassert_since_ms = 0;
}

/*
 * An idle results role would notice a failover only with its next result: ROLE now and then
 * finds a node gone (an I/O error) or demoted to a replica, whose connection stays open and
 * answers reads, so that res_reassert runs without waiting for traffic. A ROLE refused (renamed,
 * an ACL) tells nothing and is let be.
 */
static void res_check_primary(results_t *r)
{
    redisReply *reply;

    if (r->redis == NULL || r->redis->err != 0 || res_now_ms() - r->redis_used_ms < RES_PRIMARY_CHECK_MS)
        return;
    r->redis_used_ms = res_now_ms();
    reply = redisCommand(r->redis, "ROLE");   /* an I/O error marks the context failed */
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0
        && reply->element[0]->type == REDIS_REPLY_STRING
        && strcmp(reply->element[0]->str, "master") != 0)
        redis_abandon(r->redis, "the node is a replica now (ROLE)");
    freeReplyObject(reply);
    if (r->redis->err != 0)
        res_redis(r);
}

/* ---- the thread ------------------------------------------------------------------------------ */

static rd_kafka_t *res_consumer(results_t *r)
{
    static const char *const topics[] = { "osago.application.task-result",
                                          "osago.application.started" };
    char                     err[256];

    while (!*r->w->stop) {
        rd_kafka_t *c;

        r->rebalance.revoked = res_partitions_revoked;
        r->rebalance.arg = r;
        c = kafka_consumer_new(r->w->cfg, RES_GROUP, topics, 2, &r->rebalance, err, sizeof(err));

        if (c != NULL)
            return c;
        wlog(LOG_ERROR, RES_ROLE, NULL, "kafka_error", "consumer not created: %s", err);
        res_nap(r, 5000);
    }
    return NULL;
}

void *results_main(void *arg)
{
    worker_t  *w = arg;
    results_t *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        wlog(LOG_ERROR, RES_ROLE, NULL, "role_failed", "out of memory");
        return NULL;
    }
    r->w = w;
    r->consumer = res_consumer(r);
    wlog(LOG_INFO, RES_ROLE, NULL, "role_started", "group %s", RES_GROUP);

    while (!*w->stop) {
        res_settle(r);
        res_check_primary(r);
        res_reassert(r);
        res_poll(r);
        if (r->n > 0)
            res_batch(r);
        res_batch_free(r);
    }

    res_batch_free(r);
    res_items_free(r->owed, &r->n_owed);   /* not done: redelivered, applied as duplicates */
    free(r->owed);
    completed_ring_free(&r->completed);
    quote_cache_free(&r->cache);
    if (r->consumer != NULL) {
        rd_kafka_consumer_close(r->consumer);
        rd_kafka_destroy(r->consumer);
    }
    if (r->redis != NULL)
        redisFree(r->redis);
    if (r->pg != NULL)
        PQfinish(r->pg);
    free(r);
    wlog(LOG_INFO, RES_ROLE, NULL, "role_stopped", "results stopped");
    return NULL;
}
