/*
 * Sweeper: re-drives quotes left running by an executor that stopped refreshing their
 * heartbeat (it crashed, or lost its PostgreSQL connection for good).
 *
 * The rows are claimed with FOR UPDATE SKIP LOCKED, so sweepers of several workers share the
 * work without waiting for each other, and the new heartbeat is committed only after Kafka
 * confirmed the re-driven tasks: a failed produce rolls back and the next sweep tries again.
 * The task keeps the attempt number of the call that was lost (it never produced a result),
 * so a crash does not use up one of the insurer's attempts.
 *
 * Only running quotes are swept: a pending one always has its task on the way in Kafka. They
 * are found through their applications: a quote is running only while its application is
 * in_progress, and the partial index applications_in_progress (migration 002) holds just the
 * applications in flight, so the sweep reads those and their quotes by primary key however
 * large the tables grow. (No index of quotes may cover status or heartbeat_at: every quote
 * update would then write every index, not stay on its page.)
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

typedef struct {
    worker_t *w;
    PGconn   *pg;
} sweeper_t;

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
static const char sweep_select_sql[] =
    "SELECT q.application_id, q.insurer_code, q.attempt, a.payload::text, a.trace"
    " FROM applications a JOIN quotes q ON q.application_id = a.id"
    " WHERE a.status = 'in_progress' AND q.status = 'running'"
    "  AND q.heartbeat_at < now() - $1::int * interval '1 second'"
    " ORDER BY q.heartbeat_at"
    " LIMIT " SWEEP_STR(SWEEP_LIMIT)
    " FOR UPDATE OF q SKIP LOCKED";

/* QEV_STALE: pending at the same attempt, so the re-driven task is taken (an executor takes a
 * running quote only for a newer attempt); the new heartbeat gives it a whole stale period
 * before the next sweep could pick it again. */
static const char sweep_touch_sql[] =
    "UPDATE quotes SET status = 'pending', heartbeat_at = now(), updated_at = now()"
    " FROM unnest($1::uuid[], $2::text[]) AS t(app, ins)"
    " WHERE application_id = t.app AND insurer_code = t.ins";

static void sweep_rollback(sweeper_t *s)
{
    PQclear(PQexec(s->pg, "ROLLBACK"));
}

static void sweep_fill_task(osago_event_t *t, PGresult *res, int row)
{
    t->type = EV_TASK;
    t->version = 1;
    snprintf(t->application_id, sizeof(t->application_id), "%s", PQgetvalue(res, row, 0));
    snprintf(t->insurer, sizeof(t->insurer), "%s", PQgetvalue(res, row, 1));
    t->attempt = atoi(PQgetvalue(res, row, 2));
    if (t->attempt < 1)
        t->attempt = 1;
    t->payload = PQgetvalue(res, row, 3);        /* borrowed from res, not freed */
    snprintf(t->traceparent, sizeof(t->traceparent), "%s", PQgetvalue(res, row, 4));
    /* one event Kafka would refuse fails the whole batch, every sweep: never send one */
    if (!event_traceparent_valid(t->traceparent))
        event_traceparent_new(t->traceparent, NULL);
    event_stamp(t, NULL);
}

/* "{a,b,...}" of one column: uuids and insurer codes need no quoting. */
static char *sweep_array(PGresult *res, int col)
{
    int    rows = PQntuples(res);
    size_t cap = 3, len = 0;
    char  *buf;

    for (int i = 0; i < rows; i++)
        cap += (size_t) PQgetlength(res, i, col) + 1;
    if ((buf = malloc(cap)) == NULL)
        return NULL;
    buf[len++] = '{';
    for (int i = 0; i < rows; i++)
        len += (size_t) snprintf(buf + len, cap - len, "%s%s", i ? "," : "",
                                 PQgetvalue(res, i, col));
    snprintf(buf + len, cap - len, "}");
    return buf;
}

static int sweep_touch(sweeper_t *s, PGresult *rows)
{
    char       *apps = sweep_array(rows, 0), *codes = sweep_array(rows, 1);
    const char *params[2] = { apps, codes };
    PGresult   *res = NULL;

    if (apps != NULL && codes != NULL)
        res = pg_exec(s->pg, SWEEP_ROLE, sweep_touch_sql, 2, params);
    free(apps);
    free(codes);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

static int sweep_produce(sweeper_t *s, PGresult *rows)
{
    int                   n = PQntuples(rows), rc = -1;
    osago_event_t        *tasks = calloc((size_t) n, sizeof(*tasks));
    const osago_event_t **evs = calloc((size_t) n, sizeof(*evs));

    if (tasks != NULL && evs != NULL) {
        for (int i = 0; i < n; i++) {
            sweep_fill_task(&tasks[i], rows, i);
            evs[i] = &tasks[i];
        }
        rc = kafka_produce_events(s->w->producer, evs, n, SWEEP_PRODUCE_TIMEOUT_MS);
        if (rc != 0)
            wlog(LOG_WARN, SWEEP_ROLE, NULL, "kafka_error",
                 "%d re-driven tasks not confirmed; rolled back, the next sweep retries", n);
    }
    for (int i = 0; rc == 0 && i < n; i++)
        wlog(LOG_INFO, SWEEP_ROLE, tasks[i].traceparent, "task_swept",
             "%s/%s attempt %d had a stale heartbeat: re-driven", tasks[i].application_id,
             tasks[i].insurer, tasks[i].attempt);
    free(evs);
    free(tasks);
    return rc == 0 ? 0 : -1;
}

/* One page of stale quotes: the number re-driven, or -1. */
static int sweep_page(sweeper_t *s)
{
    char        stale[16];
    const char *params[1] = { stale };
    PGresult   *res, *rows;
    int         n;

    snprintf(stale, sizeof(stale), "%d", s->w->cfg->stale_after_s);
    if ((res = pg_exec(s->pg, SWEEP_ROLE, "BEGIN", 0, NULL)) == NULL)
        return -1;
    PQclear(res);
    if ((rows = pg_exec(s->pg, SWEEP_ROLE, sweep_select_sql, 1, params)) == NULL) {
        sweep_rollback(s);
        return -1;
    }
    n = PQntuples(rows);
    if (n > 0 && (sweep_touch(s, rows) != 0 || sweep_produce(s, rows) != 0)) {
        PQclear(rows);
        sweep_rollback(s);
        return -1;
    }
    PQclear(rows);
    if ((res = pg_exec(s->pg, SWEEP_ROLE, "COMMIT", 0, NULL)) == NULL)
        return -1;
    PQclear(res);
    atomic_fetch_add(&s->w->metrics->tasks_swept, (unsigned long) n);
    return n;
}

static void sweep_once(sweeper_t *s)
{
    int total = 0, n;

    /* a full page means there may be more: keep going, each page its own transaction */
    do {
        n = sweep_page(s);
        if (n > 0)
            total += n;
    } while (n == SWEEP_LIMIT && !*s->w->stop);
    if (total > 0)
        wlog(LOG_WARN, SWEEP_ROLE, NULL, "sweep_done", "%d stale tasks re-driven", total);
}

void *sweeper_main(void *arg)
{
    worker_t  *w = arg;
    sweeper_t  s = { w, NULL };
    int64_t    next = sweep_now_ms() + (int64_t) w->cfg->sweep_interval_s * 1000;

    wlog(LOG_INFO, SWEEP_ROLE, NULL, "role_started", "every %d s, stale after %d s",
         w->cfg->sweep_interval_s, w->cfg->stale_after_s);
    while (!*w->stop) {
        int64_t now = sweep_now_ms();

        if (now < next) {
            sweep_nap(&s, next - now);
            continue;
        }
        next = now + (int64_t) w->cfg->sweep_interval_s * 1000;
        if (pg_ensure(&s.pg, w->cfg->pg_conninfo, SWEEP_ROLE, w->stop) == 0)
            sweep_once(&s);
    }
    if (s.pg != NULL)
        PQfinish(s.pg);
    wlog(LOG_INFO, SWEEP_ROLE, NULL, "role_stopped", "sweeper stopped");
    return NULL;
}
