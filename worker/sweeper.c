/*
 * Sweeper: re-drives the work that lost its event.
 *
 * - Stale: quotes left running by an executor that stopped refreshing their heartbeat (it
 *   crashed, or lost its PostgreSQL connection for good), after --stale-after-s. The task
 *   keeps the attempt number of the call that was lost (it never produced a result), so a
 *   crash does not use up one of the insurer's attempts.
 * - Pending: quotes whose Task never reached an executor, and accepted applications whose
 *   Created never reached an orchestrator, after --redrive-after-s. Every step writes its row
 *   before its event is confirmed and acknowledges only after, so only a loss inside Kafka
 *   itself strands them (retention ran out behind a stopped consumer group, or a broker
 *   restored from a backup older than its last writes). A re-driven event that was not lost
 *   after all is a duplicate, which its consumer already refuses (the claim takes a quote
 *   once per attempt, the orchestrator keeps the quotes it made): the threshold only has to
 *   be longer than any lag the consumers are expected to catch up on, and each sweep re-drives
 *   a bounded number, so an outage's backlog is not doubled all at once.
 *
 * The rows are claimed with FOR UPDATE SKIP LOCKED, so sweepers of several workers share the
 * work without waiting for each other, and the rows are touched in the same transaction, which
 * commits only after Kafka confirmed the re-driven events: a failed produce rolls back and the
 * next sweep tries again.
 *
 * Quotes are found through their applications: a quote is running or pending only while its
 * application is in_progress, and the partial index applications_in_progress (migration 002)
 * holds just the applications in flight, so the sweep reads those and their quotes by primary
 * key however large the tables grow. (No index of quotes may cover status or heartbeat_at:
 * every quote update would then write every index, not stay on its page.) Accepted
 * applications have their own partial index (migration 003).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "event.h"
#include "kafka.h"
#include "log.h"
#include "pg.h"
#include "worker.h"

#define SWEEP_ROLE  "sweeper"
#define SWEEP_LIMIT 500
#define SWEEP_STR_(x) #x
#define SWEEP_STR(x)  SWEEP_STR_(x)
#define SWEEP_PRODUCE_TIMEOUT_MS 5000
#define SWEEP_REDRIVE_PAGES 10     /* per kind and sweep: 5,000 events a minute by default */

typedef struct {
    worker_t *w;
    PGconn   *pg;
    int       pg_start;   /* the address of --pg its connects start at */
} sweeper_t;

/* One kind of stranded work: how its rows are found, touched and turned into events. The
 * select takes the age in seconds ($1); its first columns are the key the touch takes as
 * arrays ($1, $2...). The age and the counter are the caller's (sweep_once). */
typedef struct {
    const char *name;
    const char *select_sql;
    const char *touch_sql;
    int         key_cols;
    int         max_pages;     /* per sweep; 0: until none is left */
    void      (*fill)(osago_event_t *ev, PGresult *res, int row);
    const char *log_event;
    const char *log_what;
} sweep_kind_t;

static int64_t sweep_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sweep_nap(sweeper_t *s, int64_t ms)
{
    int64_t until = sweep_now_ms() + ms;

    while (!*s->w->stop) {
        int64_t left = until - sweep_now_ms();
        struct timespec ts = { 0, 0 };

        if (left <= 0)
            return;
        ts.tv_nsec = (long) (left > 100 ? 100 : left) * 1000000L;
        nanosleep(&ts, NULL);
    }
}

/* The payload and trace come with the quote: the task must carry the application. */
#define SWEEP_QUOTES_SQL(cond)                                                              \
    "SELECT q.application_id, q.insurer_code, q.attempt, a.payload::text, a.trace"          \
    " FROM applications a JOIN quotes q ON q.application_id = a.id"                         \
    " WHERE a.status = 'in_progress' AND " cond                                             \
    " LIMIT " SWEEP_STR(SWEEP_LIMIT)                                                        \
    " FOR UPDATE OF q SKIP LOCKED"

static const char sweep_stale_sql[] = SWEEP_QUOTES_SQL(
    "q.status = 'running' AND q.heartbeat_at < now() - $1::int * interval '1 second'"
    " ORDER BY q.heartbeat_at");

static const char sweep_pending_sql[] = SWEEP_QUOTES_SQL(
    "q.status = 'pending' AND q.updated_at < now() - $1::int * interval '1 second'"
    " ORDER BY q.updated_at");

/* Pending at the same attempt, so the re-driven task is taken (an executor takes a running
 * quote only for a newer attempt: QEV_STALE); the new heartbeat gives a stale quote a whole
 * stale period, the new updated_at a pending one a whole re-drive period, before a sweep
 * could pick it again. */
static const char sweep_quotes_touch_sql[] =
    "UPDATE quotes SET status = 'pending', heartbeat_at = now(), updated_at = now()"
    " FROM unnest($1::uuid[], $2::text[]) AS t(app, ins)"
    " WHERE application_id = t.app AND insurer_code = t.ins";

/* Through applications_accepted (migration 003), which holds only the accepted ones. */
static const char sweep_accepted_sql[] =
    "SELECT id, partner, payload::text, trace FROM applications"
    " WHERE status = 'accepted' AND updated_at < now() - $1::int * interval '1 second'"
    " ORDER BY created_at"
    " LIMIT " SWEEP_STR(SWEEP_LIMIT)
    " FOR UPDATE SKIP LOCKED";

/* updated_at moves forward by at least 1 ms per change: it versions the read model */
static const char sweep_accepted_touch_sql[] =
    "UPDATE applications SET updated_at = greatest(now(), updated_at + interval '1 millisecond')"
    " WHERE id = ANY ($1::uuid[])";

/* A trace Kafka would refuse fails the whole batch, every sweep: never send one. */
static void sweep_fill_trace(osago_event_t *ev, const char *trace)
{
    snprintf(ev->traceparent, sizeof(ev->traceparent), "%s", trace);
    if (!event_traceparent_valid(ev->traceparent))
        event_traceparent_new(ev->traceparent, NULL);
}

/* (application_id, insurer_code, attempt, payload, trace) -> OsagoApplicationTask */
static void sweep_fill_task(osago_event_t *t, PGresult *res, int row)
{
    t->type = EV_TASK;
    t->version = 1;
    snprintf(t->application_id, sizeof(t->application_id), "%s", PQgetvalue(res, row, 0));
    snprintf(t->insurer, sizeof(t->insurer), "%s", PQgetvalue(res, row, 1));
    t->attempt = atoi(PQgetvalue(res, row, 2));
    if (t->attempt < 1)
        t->attempt = 1;             /* never claimed: the orchestrator's task was attempt 1 */
    t->payload = PQgetvalue(res, row, 3);        /* borrowed from res, not freed */
    sweep_fill_trace(t, PQgetvalue(res, row, 4));
    event_stamp(t, NULL);
}

/* (id, partner, payload, trace) -> OsagoApplicationCreated */
static void sweep_fill_created(osago_event_t *c, PGresult *res, int row)
{
    c->type = EV_CREATED;
    c->version = 1;
    snprintf(c->application_id, sizeof(c->application_id), "%s", PQgetvalue(res, row, 0));
    snprintf(c->partner, sizeof(c->partner), "%s", PQgetvalue(res, row, 1));
    c->payload = PQgetvalue(res, row, 2);        /* borrowed from res, not freed */
    sweep_fill_trace(c, PQgetvalue(res, row, 3));
    event_stamp(c, NULL);
}

static const sweep_kind_t sweep_stale = {
    "stale", sweep_stale_sql, sweep_quotes_touch_sql, 2, 0, sweep_fill_task,
    "task_swept", "running with a stale heartbeat"
};
static const sweep_kind_t sweep_pending = {
    "pending", sweep_pending_sql, sweep_quotes_touch_sql, 2, SWEEP_REDRIVE_PAGES, sweep_fill_task,
    "task_redriven", "pending and never claimed"
};
static const sweep_kind_t sweep_accepted = {
    "accepted", sweep_accepted_sql, sweep_accepted_touch_sql, 1, SWEEP_REDRIVE_PAGES,
    sweep_fill_created, "application_redriven", "accepted and never started"
};

static void sweep_rollback(sweeper_t *s)
{
    PQclear(pg_exec(s->pg, SWEEP_ROLE, "ROLLBACK", 0, NULL, &s->w->pg_wait));
}

/* One column of rows as an array literal (pg_text_array). */
static char *sweep_array(PGresult *res, int col)
{
    int          rows = PQntuples(res);
    const char **values = malloc(((size_t) rows + 1) * sizeof(*values));
    char        *array;

    if (values == NULL)
        return NULL;
    for (int i = 0; i < rows; i++)
        values[i] = PQgetvalue(res, i, col);
    array = pg_text_array(values, rows);
    free(values);
    return array;
}

static int sweep_touch(sweeper_t *s, const sweep_kind_t *k, PGresult *rows)
{
    char       *keys[2] = { NULL, NULL };
    PGresult   *res = NULL;
    int         ok = 1;

    for (int c = 0; c < k->key_cols; c++)
        ok = ok && (keys[c] = sweep_array(rows, c)) != NULL;
    if (ok)
        res = pg_exec(s->pg, SWEEP_ROLE, k->touch_sql, k->key_cols, (const char **) keys,
                      &s->w->pg_wait);
    free(keys[0]);
    free(keys[1]);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

static int sweep_produce(sweeper_t *s, const sweep_kind_t *k, PGresult *rows)
{
    int                   n = PQntuples(rows), rc = -1, sendable = 0;
    osago_event_t        *evs = calloc((size_t) n, sizeof(*evs));
    const osago_event_t **ptrs = calloc((size_t) n, sizeof(*ptrs));
    char                  why[96];

    if (evs != NULL && ptrs != NULL) {
        for (int i = 0; i < n; i++) {
            k->fill(&evs[i], rows, i);
            /* one event the encoder refuses would fail the page on every sweep: it is left
             * out and named, the rest of the page goes on */
            if (evs[i].payload != NULL
                && event_payload_check(evs[i].payload, why, sizeof(why)) != 0) {
                wlog(LOG_ERROR, SWEEP_ROLE, evs[i].traceparent, "redrive_impossible",
                     "%s (%s): payload is %s; it cannot be carried in an event",
                     evs[i].application_id, k->name, why);
                continue;
            }
            ptrs[sendable++] = &evs[i];
        }
        rc = kafka_produce_events(s->w->producer, ptrs, sendable, SWEEP_PRODUCE_TIMEOUT_MS);
        if (rc != 0)
            wlog(LOG_WARN, SWEEP_ROLE, NULL, "kafka_error",
                 "%d re-driven events (%s) not confirmed; rolled back, the next sweep retries",
                 sendable, k->name);
    }
    for (int i = 0; rc == 0 && i < sendable; i++) {
        const osago_event_t *ev = ptrs[i];

        if (ev->type == EV_TASK)
            wlog(LOG_INFO, SWEEP_ROLE, ev->traceparent, k->log_event,
                 "%s/%s attempt %d: %s, re-driven", ev->application_id, ev->insurer,
                 ev->attempt, k->log_what);
        else
            wlog(LOG_INFO, SWEEP_ROLE, ev->traceparent, k->log_event, "%s: %s, re-driven",
                 ev->application_id, k->log_what);
    }
    free(ptrs);
    free(evs);
    return rc == 0 ? sendable : -1;
}

/* One page of one kind: the number of rows it held (*redriven: of them re-driven), or -1. */
static int sweep_page(sweeper_t *s, const sweep_kind_t *k, int age_s, int *redriven)
{
    char        age[16];
    const char *params[1] = { age };
    PGresult   *res, *rows;
    int         n;

    snprintf(age, sizeof(age), "%d", age_s);
    if ((res = pg_exec(s->pg, SWEEP_ROLE, "BEGIN", 0, NULL, &s->w->pg_wait)) == NULL)
        return -1;
    PQclear(res);
    if ((rows = pg_exec(s->pg, SWEEP_ROLE, k->select_sql, 1, params, &s->w->pg_wait)) == NULL) {
        sweep_rollback(s);
        return -1;
    }
    n = PQntuples(rows);
    *redriven = 0;
    if (n > 0 && (sweep_touch(s, k, rows) != 0 || (*redriven = sweep_produce(s, k, rows)) < 0)) {
        PQclear(rows);
        sweep_rollback(s);
        return -1;
    }
    PQclear(rows);
    if ((res = pg_exec(s->pg, SWEEP_ROLE, "COMMIT", 0, NULL, &s->w->pg_wait)) == NULL)
        return -1;
    PQclear(res);
    return n;
}

static void sweep_kind(sweeper_t *s, const sweep_kind_t *k, int age_s, atomic_ulong *counter)
{
    int total = 0, pages = 0, n, redriven;

    /* a full page means there may be more: keep going, each page its own transaction */
    do {
        n = sweep_page(s, k, age_s, &redriven);
        if (n > 0)
            total += redriven;
    } while (n == SWEEP_LIMIT && ++pages != k->max_pages && !*s->w->stop);
    if (total > 0) {
        atomic_fetch_add(counter, (unsigned long) total);
        wlog(LOG_WARN, SWEEP_ROLE, NULL, "sweep_done", "%d re-driven: %s", total, k->log_what);
    }
}

static void sweep_once(sweeper_t *s)
{
    const worker_config_t *cfg = s->w->cfg;
    metrics_t             *m = s->w->metrics;

    sweep_kind(s, &sweep_stale, cfg->stale_after_s, &m->tasks_swept);
    sweep_kind(s, &sweep_pending, cfg->redrive_after_s, &m->tasks_redriven);
    sweep_kind(s, &sweep_accepted, cfg->redrive_after_s, &m->applications_redriven);
}

void *sweeper_main(void *arg)
{
    worker_t  *w = arg;
    sweeper_t  s = { w, NULL, 0 };
    int64_t    next = sweep_now_ms() + (int64_t) w->cfg->sweep_interval_s * 1000;

    wlog(LOG_INFO, SWEEP_ROLE, NULL, "role_started",
         "every %d s, running quotes stale after %d s, lost events re-driven after %d s",
         w->cfg->sweep_interval_s, w->cfg->stale_after_s, w->cfg->redrive_after_s);
    while (!*w->stop) {
        int64_t now = sweep_now_ms();

        if (now < next) {
            sweep_nap(&s, next - now);
            continue;
        }
        next = now + (int64_t) w->cfg->sweep_interval_s * 1000;
        if (pg_ensure(&s.pg, &s.pg_start, w->cfg->pg_conninfo, SWEEP_ROLE, &w->pg_wait) == 0)
            sweep_once(&s);
    }
    if (s.pg != NULL)
        PQfinish(s.pg);
    wlog(LOG_INFO, SWEEP_ROLE, NULL, "role_stopped", "sweeper stopped");
    return NULL;
}
