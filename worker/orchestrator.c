/*
 * Orchestrator: OsagoApplicationCreated -> one quote row per insurer (application in_progress),
 * then OsagoApplicationStarted and one OsagoApplicationTask per insurer.
 *
 * The rows are written before the events so that every task finds its quote; offsets are stored
 * only after Kafka confirmed the events. The read model's "in_progress" is written by the
 * results role when it sees Started: doing it here as well cost a read of every application
 * per batch, for a document one Kafka hop early. A redelivered Created finds its quote rows and
 * announces the same insurers again (downstream consumers are idempotent), so a crash between
 * the commit and the confirmation loses nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "event.h"
#include "kafka.h"
#include "log.h"
#include "pg.h"
#include "worker.h"

#define ORCH_ROLE     "orchestrator"
#define ORCH_GROUP    "osago-worker-orchestrator"
#define ORCH_BATCH    64
#define ORCH_RETRY_MS 1000
#define ORCH_BACKOFF_MAX_MS 30000
#define ORCH_POLL_MS  500
#define ORCH_PRODUCE_TIMEOUT_MS 5000   /* also bounds how long a stop waits on a Kafka outage */

typedef struct {
    rd_kafka_message_t *msg;
    int                 valid;          /* a Created event we can act on */
    int                 stored;         /* quote rows are in PostgreSQL */
    osago_event_t       created;
    osago_event_t       started;
    osago_event_t      *tasks;          /* one per insurer still to be quoted */
    int                 n_tasks;
} orch_item_t;

typedef struct {
    worker_t      *w;
    rd_kafka_t    *consumer;
    PGconn        *pg;
    int            pg_start;          /* the address of --pg its connects start at */
    long long      last_kafka_warn_ms;
    orch_item_t    items[ORCH_BATCH];
    int            n;
    id_pool_t      ids;             /* ten tasks an application, an id each */
} orch_t;

static int64_t orch_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void orch_nap(orch_t *o, int64_t ms)
{
    int64_t until = orch_now_ms() + ms;

    while (!*o->w->stop) {
        int64_t left = until - orch_now_ms();
        struct timespec ts = { 0, 0 };

        if (left <= 0)
            return;
        ts.tv_nsec = (long) (left > 100 ? 100 : left) * 1000000L;
        nanosleep(&ts, NULL);
    }
}

static void orch_item_free(orch_item_t *it)
{
    event_free(&it->created);     /* the tasks share its payload */
    free(it->tasks);
    if (it->msg != NULL)
        rd_kafka_message_destroy(it->msg);
    memset(it, 0, sizeof(*it));
}

static void orch_batch_free(orch_t *o)
{
    for (int i = 0; i < o->n; i++)
        orch_item_free(&o->items[i]);
    o->n = 0;
}

/* ---- consuming --------------------------------------------------------------------------- */

static void orch_decode(orch_item_t *it)
{
    char err[256];

    if (event_decode(it->msg->payload, it->msg->len, &it->created, err, sizeof(err)) != 0) {
        wlog(LOG_ERROR, ORCH_ROLE, NULL, "event_invalid",
             "%s [%d] offset %lld skipped: %s", rd_kafka_topic_name(it->msg->rkt),
             (int) it->msg->partition, (long long) it->msg->offset, err);
        return;
    }
    if (it->created.type != EV_CREATED) {
        wlog(LOG_ERROR, ORCH_ROLE, it->created.traceparent, "event_invalid",
             "%s on the created topic skipped", event_type_name(it->created.type));
        return;
    }
    it->valid = 1;
}

static void orch_poll(orch_t *o)
{
    int timeout = ORCH_POLL_MS;

    while (o->n < ORCH_BATCH && !*o->w->stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(o->consumer, timeout);

        if (m == NULL)
            return;
        timeout = 0;     /* take what is already here, do not wait for a full batch */
        if (m->err) {
            kafka_log_poll_error(ORCH_ROLE, m, &o->last_kafka_warn_ms);
            rd_kafka_message_destroy(m);
            continue;
        }
        o->items[o->n].msg = m;
        orch_decode(&o->items[o->n]);
        o->n++;
    }
}

/* ---- PostgreSQL ---------------------------------------------------------------------------- */

/*
 * One statement, so one transaction, for the whole batch: each application still accepted
 * becomes in_progress and gets its quote rows (so a redelivery after the insurer file changed
 * keeps the set it started with). The status update comes first and locks the row: an
 * orchestrator taking the same application at the same moment (a rebalance) waits for this one,
 * then finds it in_progress and inserts nothing, so the quotes need no existence checks of
 * their own (ON CONFLICT only keeps a row inserted by hand from wedging the batch). It returns
 * each application's quotes, fresh or existing: a data-modifying WITH is invisible to the outer
 * query's snapshot, so exactly one side of the UNION has an application's rows. An application
 * without a row gets no quotes (and no rows back); so does one that another orchestrator
 * started while this statement waited for its lock, since the rows it committed are newer
 * than the snapshot: orch_recheck reads them in a statement of their own.
 *
 * "Still accepted" is spelled as neither later status: the planner would answer status =
 * 'accepted' from the sweeper's partial index applications_accepted (migration 003), a scan of
 * every accepted application, which is a handful normally but the whole backlog after an outage.
 */
static const char orch_sql[] =
    "WITH apps AS (SELECT DISTINCT unnest($1::uuid[]) AS id),"
    " upd AS ("
    "  UPDATE applications SET status = 'in_progress',"
    "         updated_at = greatest(now(), updated_at + interval '1 millisecond')"
    "  WHERE id IN (SELECT id FROM apps) AND status NOT IN ('in_progress', 'completed')"
    "  RETURNING id),"
    " ins AS ("
    "  INSERT INTO quotes (application_id, insurer_code)"
    "  SELECT u.id, c FROM upd u CROSS JOIN unnest($2::text[]) AS c"
    "  ON CONFLICT DO NOTHING"
    "  RETURNING application_id, insurer_code, status)"
    " SELECT application_id::text, insurer_code, status FROM ins"
    " UNION ALL"
    " SELECT application_id::text, insurer_code, status FROM quotes"
    "  WHERE application_id IN (SELECT id FROM apps)";

static void orch_add_task(orch_item_t *it, const char *code, id_pool_t *ids)
{
    osago_event_t *t = &it->tasks[it->n_tasks++];

    t->type = EV_TASK;
    t->version = 1;
    snprintf(t->application_id, sizeof(t->application_id), "%s", it->created.application_id);
    snprintf(t->traceparent, sizeof(t->traceparent), "%s", it->created.traceparent);
    snprintf(t->insurer, sizeof(t->insurer), "%s", code);
    t->attempt = 1;
    t->payload = it->created.payload;
    event_stamp(t, ids);
}

static void orch_add_started(orch_item_t *it, const char *code)
{
    osago_event_t *s = &it->started;

    if (s->n_insurers < EVENT_MAX_INSURERS)
        snprintf(s->insurers[s->n_insurers++], sizeof(s->insurers[0]), "%s", code);
}

/* A new statement, so a new snapshot: it sees the quotes of the applications another
 * orchestrator started while orch_sql waited for their rows (a rebalance hands the same Created
 * to two consumers). Both announce such an application; the executor's claim takes each task
 * once. Announcing from the other one's commit alone would lose its tasks if it stopped before
 * Kafka confirmed them, since this side has stored the offset by then. */
static const char orch_recheck_sql[] =
    "SELECT application_id::text, insurer_code, status FROM quotes"
    " WHERE application_id = ANY ($1::uuid[])";

/* Builds Started and the Tasks of one application from its rows (id, code, status).
 * 1: no rows for it. */
static int orch_build_events(orch_item_t *it, PGresult *res, id_pool_t *ids)
{
    int rows = PQntuples(res), mine = 0;

    for (int i = 0; i < rows; i++)
        mine += strcasecmp(PQgetvalue(res, i, 0), it->created.application_id) == 0;
    if (mine == 0)
        return 1;
    if ((it->tasks = calloc((size_t) mine, sizeof(*it->tasks))) == NULL)
        return -1;
    it->started.type = EV_STARTED;
    it->started.version = 1;
    snprintf(it->started.application_id, sizeof(it->started.application_id), "%s",
             it->created.application_id);
    snprintf(it->started.traceparent, sizeof(it->started.traceparent), "%s",
             it->created.traceparent);
    event_stamp(&it->started, ids);
    for (int i = 0; i < rows; i++) {
        const char *code = PQgetvalue(res, i, 1);
        const char *status = PQgetvalue(res, i, 2);

        if (strcasecmp(PQgetvalue(res, i, 0), it->created.application_id) != 0)
            continue;
        orch_add_started(it, code);
        /* a quote already answered needs no task (a redelivered Created) */
        if (strcmp(status, "ok") != 0 && strcmp(status, "error") != 0)
            orch_add_task(it, code, ids);
    }
    return 0;
}

/* The application ids of the valid items whose events are not built yet; how many. */
static int orch_unstored_ids(const orch_t *o, const char **ids)
{
    int n = 0;

    for (int i = 0; i < o->n; i++)
        if (o->items[i].valid && !o->items[i].stored)
            ids[n++] = o->items[i].created.application_id;
    return n;
}

/* The valid items orch_sql found no quotes for, read again (orch_recheck_sql); those still
 * without are dropped with a logged reason. 0, or -1 try again later. */
static int orch_recheck(orch_t *o)
{
    const char *ids[ORCH_BATCH];
    char       *param;
    PGresult   *res;
    int         n = orch_unstored_ids(o, ids), rc = 0;

    if (n == 0)
        return 0;
    param = pg_text_array(ids, n);
    res = param != NULL ? pg_run_prepared(o->pg, ORCH_ROLE, "orch_recheck", orch_recheck_sql, 1,
                                          (const char *const *) &param, &o->w->pg_wait)
                        : NULL;
    free(param);
    if (res == NULL)
        return -1;
    for (int i = 0; i < o->n && rc >= 0; i++) {
        orch_item_t *it = &o->items[i];

        if (!it->valid || it->stored)
            continue;
        rc = orch_build_events(it, res, &o->ids);
        if (rc == 1) {
            wlog(LOG_WARN, ORCH_ROLE, it->created.traceparent, "application_skipped",
                 "Created for %s: no such application", it->created.application_id);
            it->valid = 0;
        } else if (rc == 0) {
            wlog(LOG_INFO, ORCH_ROLE, it->created.traceparent, "application_raced",
                 "%s: started by another orchestrator meanwhile; announced from its quotes too",
                 it->created.application_id);
        }
        it->stored = rc >= 0;
    }
    PQclear(res);
    return rc < 0 ? -1 : 0;
}

/* 0 every valid item stored (its events built), -1 try again later. */
static int orch_store(orch_t *o)
{
    const insurer_list_t *ins = o->w->insurers;
    const char           *ids[ORCH_BATCH], *codes[INSURERS_MAX];
    char                 *params[2];
    PGresult             *res;
    int                   n = orch_unstored_ids(o, ids), rc = -1;

    if (n == 0)
        return 0;
    for (int i = 0; i < ins->n; i++)
        codes[i] = ins->items[i].code;
    params[0] = pg_text_array(ids, n);
    params[1] = pg_text_array(codes, ins->n);
    res = params[0] != NULL && params[1] != NULL
          ? pg_run_prepared(o->pg, ORCH_ROLE, "orch_quotes", orch_sql, 2,
                            (const char *const *) params, &o->w->pg_wait)
          : NULL;
    free(params[0]);
    free(params[1]);
    if (res == NULL)
        return -1;
    rc = 0;
    for (int i = 0; i < o->n && rc >= 0; i++) {
        orch_item_t *it = &o->items[i];

        if (!it->valid || it->stored)
            continue;
        rc = orch_build_events(it, res, &o->ids);
        it->stored = rc == 0;
    }
    PQclear(res);
    return rc < 0 ? -1 : orch_recheck(o);
}

/* ---- Kafka and the read model ---------------------------------------------------------- */

static int orch_produce(orch_t *o)
{
    const osago_event_t **evs;
    int                   n = 0, cap = 0, rc;

    for (int i = 0; i < o->n; i++)
        if (o->items[i].valid)
            cap += 1 + o->items[i].n_tasks;
    if (cap == 0)
        return 0;
    evs = malloc(sizeof(*evs) * (size_t) cap);
    if (evs == NULL)
        return -1;
    for (int i = 0; i < o->n; i++) {
        orch_item_t *it = &o->items[i];

        if (!it->valid)
            continue;
        evs[n++] = &it->started;
        for (int t = 0; t < it->n_tasks; t++)
            evs[n++] = &it->tasks[t];
    }
    rc = kafka_produce_events(o->w->producer, evs, n, ORCH_PRODUCE_TIMEOUT_MS);
    if (rc != 0)
        wlog(LOG_WARN, ORCH_ROLE, NULL, "kafka_error",
             "%d events not confirmed; the Created events will be handled again", n);
    free(evs);
    return rc == 0 ? 0 : -1;
}

static int orch_process(orch_t *o)
{
    if (pg_ensure(&o->pg, &o->pg_start, o->w->cfg->pg_conninfo, ORCH_ROLE, &o->w->pg_wait) != 0)
        return -1;
    if (orch_store(o) != 0)
        return -1;
    if (orch_produce(o) != 0)
        return -1;
    for (int i = 0; i < o->n; i++) {
        orch_item_t *it = &o->items[i];

        if (it->valid) {
            atomic_fetch_add(&o->w->metrics->applications_started, 1);
            wlog(LOG_INFO, ORCH_ROLE, it->created.traceparent, "application_started",
                 "%s: %d insurers, %d tasks", it->created.application_id,
                 it->started.n_insurers, it->n_tasks);
        }
        kafka_done(o->consumer, it->msg);
    }
    return 0;
}

/* ---- the thread -------------------------------------------------------------------------- */

static rd_kafka_t *orch_consumer(orch_t *o)
{
    static const char *const topics[] = { "osago.application.created" };
    char                     err[256];

    while (!*o->w->stop) {
        rd_kafka_t *c = kafka_consumer_new(o->w->cfg, ORCH_GROUP, topics, 1, NULL, err,
                                           sizeof(err));

        if (c != NULL)
            return c;
        wlog(LOG_ERROR, ORCH_ROLE, NULL, "kafka_error", "consumer not created: %s", err);
        orch_nap(o, 5000);
    }
    return NULL;
}

static void orch_cleanup(orch_t *o)
{
    orch_batch_free(o);
    if (o->consumer != NULL) {
        rd_kafka_consumer_close(o->consumer);
        rd_kafka_destroy(o->consumer);
    }
    if (o->pg != NULL)
        PQfinish(o->pg);
    free(o);
}

void *orchestrator_main(void *arg)
{
    worker_t *w = arg;
    orch_t   *o = calloc(1, sizeof(*o));

    if (o == NULL) {
        wlog(LOG_ERROR, ORCH_ROLE, NULL, "role_failed", "out of memory");
        return NULL;
    }
    o->w = w;
    o->consumer = orch_consumer(o);
    wlog(LOG_INFO, ORCH_ROLE, NULL, "role_started", "group %s", ORCH_GROUP);

    while (!*w->stop) {
        int64_t backoff = ORCH_RETRY_MS;

        orch_poll(o);
        /* the same batch until it went through: its offsets stay unstored meanwhile. The wait
         * doubles: each try queues the unconfirmed events in librdkafka once more */
        while (o->n > 0 && !*w->stop && orch_process(o) != 0) {
            orch_nap(o, backoff);
            backoff = backoff * 2 > ORCH_BACKOFF_MAX_MS ? ORCH_BACKOFF_MAX_MS : backoff * 2;
        }
        orch_batch_free(o);
    }

    orch_cleanup(o);
    wlog(LOG_INFO, ORCH_ROLE, NULL, "role_stopped", "orchestrator stopped");
    return NULL;
}
