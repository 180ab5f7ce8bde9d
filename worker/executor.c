/*
 * Executor: OsagoApplicationTask -> the insurer's HTTP API -> OsagoApplicationTaskResult.
 *
 * One thread drives every call with libcurl's multi interface and keeps polling Kafka in the
 * same loop (never longer than EX_WAIT_MAX_MS between polls), so a 60 s insurer never stalls
 * the consumer nor trips max.poll.interval.ms. The calls' sockets sit in an epoll set that
 * curl maintains through its socket callback, so a loop costs what happened, not the number
 * of calls in flight (curl_multi_poll would poll all of them, every time). The claim in
 * PostgreSQL shares the loop the same way (its socket in the set, two pipelined round trips):
 * waiting for it synchronously kept a quarter of the loop's time from curl at 500 tasks a
 * second. When max_in_flight tasks are held the loop stops taking messages from the consumer
 * (but for one poll a second, which serves rebalances and max.poll.interval.ms); librdkafka's
 * prefetch, bounded by its queued.max.messages.kbytes, waits in memory. Pausing the partitions
 * instead cost up to a second of nothing after each resume (librdkafka decides to fetch again
 * on its broker thread's next round): at saturation the executor idled between bursts of
 * max_in_flight.
 *
 * Offsets: tasks finish out of order, but a partition's offset may only move past work that is
 * durable. Each consumed message gets a ticket in its partition's queue; the offset stored is
 * the one after the last ticket of the done prefix. A task is done when its TaskResult, or the
 * Task of its retry, was confirmed by Kafka. Outcomes are produced without waiting: the loop
 * goes on with curl and the consumer while Kafka confirms (the report wakes it), since a wait
 * of a broker round trip per loop caps how many calls one thread can turn around.
 *
 * Retries: a failed attempt with attempts left waits retry_delay_ms on this thread's timer
 * list, then a new Task (attempt + 1) is produced rather than the call re-run in-process. The
 * retry is thus durable and goes through the same claim as any task (so the quote's attempt
 * moves forward in PostgreSQL and a late answer of the old attempt is refused by results), and
 * it may run on any worker. During the delay the quote stays running with a fresh heartbeat,
 * and the original message's offset stays unstored.
 *
 * Crashes: a task redelivered while its quote is still running at the same attempt is not
 * called again (quote_state.h: one call per attempt); the sweeper re-drives it once the
 * heartbeat is stale (see ex_claim for the race that makes the claim two statements). A clean
 * stop hands its unfinished quotes back as pending first, so their redelivered tasks are taken
 * at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "event.h"
#include "kafka.h"
#include "log.h"
#include "pg.h"
#include "retry.h"
#include "worker.h"

#define EX_ROLE              "executor"
#define EX_GROUP             "osago-worker-executor"
#define EX_POLL_BATCH        256
#define EX_MAX_ANSWER        (64 * 1024)
#define EX_WAIT_MAX_MS       100
#define EX_RETRY_MS          1000
#define EX_DEFER_MS          100      /* a quote locked by another transaction: claim again */
#define EX_CLAIM_TIMEOUT_MS  10000    /* a claim round trip not back by then: connection dropped */
#define EX_RELEASE_TIMEOUT_MS 5000    /* the hand-back at a stop: each statement's answer */
#define EX_FULL_POLL_MS      1000     /* one poll a second while full: rebalances, liveness */
#define EX_PRODUCE_BACKOFF_MAX_MS 30000   /* a failed produce of outcomes, tried again */
#define EX_FINAL_PRODUCE_MS  2000         /* a stop waits this long for confirmations */
#define EX_JSON_DEPTH        64
#define EX_EPOLL_EVENTS      256
#define EX_IDLE_EASY_MAX     1024     /* easy handles kept for reuse (their buffers with them) */
#define EX_FD_EVENTS         (EPOLLIN | EPOLLOUT)   /* what a socket is in the epoll set for */
#define EX_FD_IN_SET         (1u << 30)
#define EX_FD_PARKED         (1u << 31)   /* in the set, but curl has no transfer on it */

/* ---- data ------------------------------------------------------------------------------------ */

typedef struct ticket {
    struct ticket *next;
    int64_t        offset;
    int            done;
    int            orphan;      /* its partition queue was reset: the call frees it */
} ticket_t;

typedef struct part {
    struct part *next;
    char        *topic;
    int32_t      partition;
    int64_t      last_offset;   /* highest offset seen: a lower one means a rewind */
    ticket_t    *head, *tail;
} part_t;

typedef enum {
    ST_CLAIM = 0,    /* consumed; to be marked running in PostgreSQL */
    ST_CLAIMING,     /* in the claim transaction in flight */
    ST_BACKLOG,      /* claimed; waiting for a free slot */
    ST_RUNNING,      /* the HTTP call is in the multi handle */
    ST_RETRY,        /* failed; waiting for its retry delay */
    ST_OUTBOX,       /* its TaskResult or retry Task waits to be produced */
    ST_SENT,         /* produced; waiting for Kafka's confirmation */
    ST_N
} call_state_t;

typedef enum { OUT_OK = 0, OUT_FAILED, OUT_RETRY } out_kind_t;

/* One produce of outcomes, shared by the calls in it until each has seen how it ended. */
typedef struct {
    kafka_batch_t *batch;
    int            calls;
} sent_t;

typedef struct call {
    struct call       *prev, *next;
    call_state_t       state;
    ticket_t          *ticket;
    const insurer_t   *ins;          /* NULL: not in our insurer file */
    char               app_id[37];
    char               insurer[33];
    char               traceparent[56];
    int                attempt;
    int                mark;         /* scratch of the claim transaction (MK_*) */
    char              *payload;      /* the application JSON (owned) */
    char              *body;         /* the request: payload + application_id (owned) */
    size_t             body_len;
    CURL              *easy;
    struct curl_slist *headers;
    char              *answer;
    size_t             answer_len;
    int                answer_over;
    char               errbuf[CURL_ERROR_SIZE];
    int64_t            started_ms;
    int64_t            due_ms;       /* ST_RETRY: when the retry Task is produced */
    out_kind_t         out_kind;
    osago_event_t      out;          /* what ST_OUTBOX produces (payload borrowed) */
    sent_t            *sent;         /* ST_SENT: the produce it is in */
} call_t;

typedef struct {
    call_t *head, *tail;
    int     n;
} call_list_t;

typedef struct {
    worker_t         *w;
    rd_kafka_t       *consumer;
    rd_kafka_queue_t *queue;
    int               wake[2];       /* librdkafka writes here when messages arrive, and
                                      * ex_wakeup when Kafka confirmed a produce */
    int               epfd;          /* the calls' sockets and wake[0] */
    struct epoll_event events[EX_EPOLL_EVENTS];
    int               nevents;       /* what the last ex_wait returned */
    int64_t           curl_due_ms;   /* curl's timer; -1: none */
    uint32_t         *fd_state;      /* per socket number: EX_FD_* (ex_curl_socket) */
    int               fd_cap;
    CURLM            *multi;
    CURL             *idle_easy[EX_IDLE_EASY_MAX];
    int               n_idle_easy;
    PGconn           *pg;
    const PGconn     *prepared_conn;  /* the connection ex_stmts are prepared on */
    int               prepared_pid;
    part_t           *parts;
    kafka_rebalance_hook_t rebalance;  /* forgets the tickets of revoked partitions */
    call_list_t       lists[ST_N];
    int64_t           polled_ms;     /* the last consumer poll */
    int               more_queued;   /* the last ex_consume stopped at its batch, with room */
    int64_t           claim_retry_ms;
    int64_t           connect_retry_ms;  /* after a failed connect: the next one not before */
    int               connect_failures;  /* since the last connection made */
    int               connect_skip;      /* the address of the conninfo its connects start at:
                                          * where the last answered, or past a silent one */
    int               connect_unanswered; /* PostgreSQL did not answer the last connect or
                                             * round trip in time, or a stop cut the connect */
    pg_connecting_t   connecting;        /* where the connect under way is */
    int               claim_phase;   /* CL_*: the claim (ST_CLAIMING) or heartbeat in flight */
    int64_t           claim_due_ms;  /* its round trip's deadline */
    int               claim_fd;      /* PostgreSQL's socket in epfd during a claim; -1 */
    uint32_t          claim_events;  /* what claim_fd is watched for */
    pg_pipe_t         claim_pipe;
    id_pool_t         ids;           /* two ids an insurer call: its span, its result event */
    int64_t           produce_retry_ms;
    int64_t           produce_backoff_ms;
    int64_t           next_heartbeat_ms;
    int64_t           last_warn_ms;
    unsigned          seed;
    int               running_by_insurer[INSURERS_MAX];  /* ST_RUNNING, by insurer file index */
    int               limited_by_insurer[INSURERS_MAX];  /* not sent since the last report */
    int64_t           limited_report_ms;
} executor_t;

static int64_t ex_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Warnings that repeat on every loop during an outage are said once a second. */
static int ex_warn_due(executor_t *x)
{
    int64_t now = ex_now_ms();

    if (now - x->last_warn_ms < 1000)
        return 0;
    x->last_warn_ms = now;
    return 1;
}

/* ---- call lists -------------------------------------------------------------------------- */

static void list_push(call_list_t *l, call_t *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->n++;
}

static void list_remove(call_list_t *l, call_t *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->n--;
}

/* The call's insurer's place in the insurer file (c->ins points into it). */
static int ex_ins_index(const executor_t *x, const call_t *c)
{
    return (int) (c->ins - x->w->insurers->items);
}

/* Kept as calls enter and leave ST_RUNNING (ex_move, ex_free_call), for the insurer's share. */
static void ex_count_running(executor_t *x, const call_t *c, int delta)
{
    if (c->ins != NULL)
        x->running_by_insurer[ex_ins_index(x, c)] += delta;
}

static void ex_move(executor_t *x, call_t *c, call_state_t to)
{
    if (c->state == ST_RUNNING)
        ex_count_running(x, c, -1);
    if (to == ST_RUNNING)
        ex_count_running(x, c, 1);
    list_remove(&x->lists[c->state], c);
    c->state = to;
    list_push(&x->lists[to], c);
}

static void ex_sent_put(call_t *c)
{
    if (c->sent != NULL && --c->sent->calls == 0) {
        kafka_batch_release(c->sent->batch);
        free(c->sent);
    }
    c->sent = NULL;
}

static size_t ex_write(char *data, size_t size, size_t n, void *arg);
static int    ex_curl_close(void *arg, curl_socket_t fd);

/*
 * Easy handles are reused: a new one allocates its buffers (tens of KiB) and a freed one
 * gives them back, which at thousands of calls a second was the largest part of the thread's
 * malloc time. Options that differ per call are all set again by ex_start.
 */
static CURL *ex_easy_get(executor_t *x)
{
    CURL *e;

    if (x->n_idle_easy > 0)
        return x->idle_easy[--x->n_idle_easy];
    if ((e = curl_easy_init()) == NULL)
        return NULL;
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, ex_write);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, ex_curl_close);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, x);
    return e;
}

/* e must be out of the multi handle already. What pointed into the call goes: the call is
 * freed while the handle waits. */
static void ex_easy_put(executor_t *x, CURL *e)
{
    if (x->n_idle_easy >= EX_IDLE_EASY_MAX) {
        curl_easy_cleanup(e);
        return;
    }
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
    x->idle_easy[x->n_idle_easy++] = e;
}

static void ex_free_call(executor_t *x, call_t *c)
{
    if (c->state == ST_RUNNING)
        ex_count_running(x, c, -1);
    list_remove(&x->lists[c->state], c);
    ex_sent_put(c);
    if (c->easy != NULL) {
        curl_multi_remove_handle(x->multi, c->easy);
        ex_easy_put(x, c->easy);
        atomic_fetch_sub(&x->w->metrics->calls_in_flight, 1);
    }
    curl_slist_free_all(c->headers);
    free(c->payload);
    free(c->body);
    free(c->answer);
    free(c);
}

/* ---- offsets ------------------------------------------------------------------------------ */

static void ex_part_reset(part_t *p)
{
    ticket_t *t = p->head;

    while (t != NULL) {
        ticket_t *next = t->next;

        if (t->done)
            free(t);
        else
            t->orphan = 1;
        t = next;
    }
    p->head = p->tail = NULL;
}

static part_t *ex_part(executor_t *x, const char *topic, int32_t partition)
{
    part_t *p;

    for (p = x->parts; p != NULL; p = p->next)
        if (p->partition == partition && strcmp(p->topic, topic) == 0)
            return p;
    if ((p = calloc(1, sizeof(*p))) == NULL || (p->topic = strdup(topic)) == NULL) {
        free(p);
        return NULL;
    }
    p->partition = partition;
    p->last_offset = -1;
    p->next = x->parts;
    x->parts = p;
    return p;
}

/* The message's place in its partition's order. A rewind (a partition that came back after a
 * rebalance, from its committed offset, or that librdkafka reset) starts the queue afresh as a
 * revoke does. */
static ticket_t *ex_ticket(executor_t *x, const rd_kafka_message_t *m)
{
    part_t   *p = ex_part(x, rd_kafka_topic_name(m->rkt), m->partition);
    ticket_t *t;

    if (p == NULL || (t = calloc(1, sizeof(*t))) == NULL)
        return NULL;
    if (m->offset <= p->last_offset)
        ex_part_reset(p);
    p->last_offset = m->offset;
    t->offset = m->offset;
    if (p->tail != NULL)
        p->tail->next = t;
    else
        p->head = t;
    p->tail = t;
    return t;
}

static void ex_ticket_done(ticket_t *t)
{
    if (t == NULL)
        return;
    if (t->orphan)
        free(t);
    else
        t->done = 1;
}

/* Stores, per partition, the offset after the longest done prefix. */
static void ex_store_offsets(executor_t *x)
{
    rd_kafka_topic_partition_list_t *list = NULL;

    for (part_t *p = x->parts; p != NULL; p = p->next) {
        int64_t upto = -1;

        while (p->head != NULL && p->head->done) {
            ticket_t *t = p->head;

            upto = t->offset;
            p->head = t->next;
            free(t);
        }
        if (p->head == NULL)
            p->tail = NULL;
        if (upto < 0)
            continue;
        if (list == NULL && (list = rd_kafka_topic_partition_list_new(8)) == NULL)
            return;
        rd_kafka_topic_partition_list_add(list, p->topic, p->partition)->offset = upto + 1;
    }
    if (list == NULL)
        return;
    /* a partition revoked meanwhile refuses the store: its new owner redoes those tasks */
    (void) rd_kafka_offsets_store(x->consumer, list);
    rd_kafka_topic_partition_list_destroy(list);
}

/* A partition taken away in a rebalance: its tickets can no longer be stored by us (their tasks
 * are redelivered to its next owner). Kept, they would be, once it came back: perhaps after
 * its other owner had stored offsets past them, which would then move the group back. */
static void ex_partitions_revoked(void *arg, const rd_kafka_topic_partition_list_t *parts)
{
    executor_t *x = arg;

    ex_store_offsets(x);     /* what is done goes with the commit librdkafka makes at a revoke */
    for (int i = 0; i < parts->cnt; i++)
        for (part_t *p = x->parts; p != NULL; p = p->next)
            if (p->partition == parts->elems[i].partition
                && strcmp(p->topic, parts->elems[i].topic) == 0) {
                ex_part_reset(p);
                p->last_offset = -1;
            }
}

/* ---- consuming ------------------------------------------------------------------------------ */

static void ex_accept(executor_t *x, const rd_kafka_message_t *m)
{
    osago_event_t ev;
    char          err[256] = "";
    ticket_t     *ticket = ex_ticket(x, m);
    call_t       *c;

    memset(&ev, 0, sizeof(ev));
    if (ticket == NULL) {
        wlog(LOG_ERROR, EX_ROLE, NULL, "out_of_memory", "task at offset %lld dropped for now",
             (long long) m->offset);
        return;
    }
    if (event_decode(m->payload, m->len, &ev, err, sizeof(err)) != 0 || ev.type != EV_TASK) {
        wlog(LOG_ERROR, EX_ROLE, NULL, "event_invalid", "[%d] offset %lld skipped: %s",
             (int) m->partition, (long long) m->offset,
             ev.type != EV_TASK && err[0] == '\0' ? "not a task" : err);
        event_free(&ev);
        ex_ticket_done(ticket);
        return;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL) {
        event_free(&ev);
        ex_ticket_done(ticket);
        return;
    }
    c->ticket = ticket;
    snprintf(c->app_id, sizeof(c->app_id), "%s", ev.application_id);
    snprintf(c->insurer, sizeof(c->insurer), "%s", ev.insurer);
    snprintf(c->traceparent, sizeof(c->traceparent), "%s", ev.traceparent);
    c->attempt = ev.attempt;
    c->payload = ev.payload;
    ev.payload = NULL;
    c->ins = insurers_find(x->w->insurers, ev.insurer);
    c->state = ST_CLAIM;
    list_push(&x->lists[ST_CLAIM], c);
    event_free(&ev);
}

/*
 * Tasks held: each needs a slot, or holds memory while it waits for its retry. Outcomes waiting
 * for Kafka's confirmation have as many slots again of their own, so that the few milliseconds
 * of a confirmation do not cost a small limit its calls; beyond those they count as well: while
 * Kafka takes tasks but refuses outcomes, finished calls would otherwise let the whole backlog
 * into memory, and into one ever larger batch of outcomes.
 */
static int ex_load(const executor_t *x)
{
    int unconfirmed = x->lists[ST_OUTBOX].n + x->lists[ST_SENT].n;
    int own_slots = x->w->cfg->max_in_flight;

    return x->lists[ST_CLAIM].n + x->lists[ST_CLAIMING].n + x->lists[ST_BACKLOG].n
           + x->lists[ST_RUNNING].n + x->lists[ST_RETRY].n
           + (unconfirmed > own_slots ? unconfirmed - own_slots : 0);
}

/*
 * Takes what the consumer has, up to the room there is. librdkafka writes to the wake pipe only
 * when its queue turns non-empty, so when this stops at EX_POLL_BATCH with room left, the rest
 * would sit unseen until some other wake-up (up to EX_WAIT_MAX_MS with no call in flight: a
 * backlog drained at 256 tasks per 100 ms); more_queued makes the next wait not wait.
 */
static void ex_consume(executor_t *x)
{
    char    drain[64];
    int     room = x->w->cfg->max_in_flight - ex_load(x);
    int64_t now = ex_now_ms();
    /* no more than there is room for; when full, one poll a second all the same: it serves
     * rebalances and keeps max.poll.interval.ms satisfied (and may take one task over) */
    int     limit = room < 1 ? 1 : room < EX_POLL_BATCH ? room : EX_POLL_BATCH;

    while (read(x->wake[0], drain, sizeof(drain)) > 0)
        ;
    x->more_queued = room > EX_POLL_BATCH;
    if (room < 1 && now - x->polled_ms < EX_FULL_POLL_MS)
        return;
    x->polled_ms = now;
    for (int i = 0; i < limit; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(x->consumer, 0);

        if (m == NULL) {
            x->more_queued = 0;
            return;
        }
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
            ex_accept(x, m);
        else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF && ex_warn_due(x))
            wlog(LOG_WARN, EX_ROLE, NULL, "kafka_error", "consumer: %s",
                 rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
    }
}

/* ---- PostgreSQL: claim and heartbeat ------------------------------------------------------- */

/*
 * Claiming is two statements in one transaction. The first locks the quotes, skipping those
 * another transaction holds; the second (a new snapshot, taken once the locks are ours) marks
 * them running, QEV_START of quote_state.h: a pending quote takes its attempt or a newer one
 * (the sweeper and a stopping executor set pending with the same attempt, so the lost call is
 * re-run); a running one only a newer attempt (a retry), so a task redelivered while another
 * executor still calls the insurer is not called twice; a terminal one nothing.
 *
 * Why not one UPDATE: the sweeper commits "pending" only after Kafka confirmed its task, and
 * this executor may consume the task before that commit. A single UPDATE would judge the row by
 * its old version (running), refuse it without waiting, and the task would be lost until the
 * next sweep. A locked quote is deferred instead, and claimed again shortly.
 */
static const char ex_lock_sql[] =
    "SELECT application_id::text, insurer_code FROM quotes"
    " WHERE (application_id, insurer_code) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"
    " FOR UPDATE SKIP LOCKED";

/* Two tasks of one quote in a claim (a retry, and the sweeper's re-drive of the attempt before
 * it, when the topic lags): the newest attempt is the one claimed. An UPDATE joined to both
 * would change the row once, from whichever its plan met first, and could run the older
 * attempt again: an insurer call past the three. */
static const char ex_claim_sql[] =
    "UPDATE quotes q SET status = 'running', attempt = t.attempt, heartbeat_at = now(),"
    " updated_at = now()"
    " FROM (SELECT app, ins, max(attempt) AS attempt"
    "       FROM unnest($1::uuid[], $2::text[], $3::int[]) AS u(app, ins, attempt)"
    "       GROUP BY app, ins) t"
    " WHERE q.application_id = t.app AND q.insurer_code = t.ins"
    "  AND ((q.status = 'pending' AND q.attempt <= t.attempt)"
    "       OR (q.status = 'running' AND q.attempt < t.attempt))"
    " RETURNING q.application_id::text, q.insurer_code, t.attempt";

/* Which of the deferred ones exist at all: a task for a quote that does not exist is dropped. */
static const char ex_exists_sql[] =
    "SELECT application_id::text, insurer_code FROM quotes"
    " WHERE (application_id, insurer_code) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))";

/*
 * The two statements below touch many quotes at once, while results locks the quotes of its
 * batch (with their applications) in key order. A plain multi-row UPDATE locks in whatever
 * order its plan meets the rows, and two such lockers deadlock: PostgreSQL breaks the cycle
 * only after deadlock_timeout (1 s), and results retries a second later, which stalled every
 * application for two seconds once per heartbeat under load (docs/BENCHMARKS.md).
 *
 * A stopping executor hands its calls back as pending: the redelivered tasks are then taken
 * at once by whoever gets the partitions, not after the stale sweep's wait. A task is not
 * always redelivered, though: after a rebalance its new owner (or this executor, reading the
 * partition again) refuses it while this executor runs the call, and stores the offset past
 * it. So the row is also dated $5 seconds back (--redrive-after-s), which puts it in the
 * sweeper's next pending pass; a sweep that finds it claimed meanwhile passes it by. $4 is 1
 * for a call whose attempt failed and was to be retried: it is handed back at the next
 * attempt, so the redelivered task of the failed one is refused as older and the retry is not
 * run twice (3 attempts in all). It locks in results' order (rows are locked after the sort),
 * so it may wait, never deadlock.
 */
static const char ex_release_sql[] =
    "WITH l AS MATERIALIZED ("
    "  SELECT application_id, insurer_code FROM quotes"
    "  WHERE (application_id, insurer_code) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"
    "  ORDER BY application_id, insurer_code FOR UPDATE)"
    " UPDATE quotes q SET status = 'pending', attempt = q.attempt + $4::int,"
    "        updated_at = now() - $5::int * interval '1 second'"
    " FROM l, unnest($1::uuid[], $2::text[], $3::int[]) AS t(app, ins, attempt)"
    " WHERE q.application_id = l.application_id AND q.insurer_code = l.insurer_code"
    "  AND q.application_id = t.app AND q.insurer_code = t.ins"
    "  AND q.status = 'running' AND q.attempt = t.attempt";

/* The heartbeat never waits: a quote another transaction holds is being decided by it (a
 * result, the sweeper, a newer attempt's claim), so its beat would be overwritten anyway, and
 * the claims queued behind the heartbeat on this connection must not wait for that
 * transaction. A quote skipped by a duplicate's brief lock gets the next beat. */
static const char ex_heartbeat_sql[] =
    "UPDATE quotes q SET heartbeat_at = now()"
    " FROM (SELECT application_id, insurer_code FROM quotes"
    "       WHERE (application_id, insurer_code) IN"
    "             (SELECT * FROM unnest($1::uuid[], $2::text[]))"
    "         AND status = 'running'"
    "       FOR UPDATE SKIP LOCKED) l"
    " WHERE q.application_id = l.application_id AND q.insurer_code = l.insurer_code";

static const struct {
    const char *name, *sql;
    int         nparams;
} ex_stmts[] = {
    { "ex_lock", ex_lock_sql, 2 },
    { "ex_claim", ex_claim_sql, 3 },
    { "ex_exists", ex_exists_sql, 2 },
    { "ex_release", ex_release_sql, 5 },
    { "ex_heartbeat", ex_heartbeat_sql, 2 },
};

/* At a stop only, where waiting is allowed: one round of the addresses (pg_connect makes one
 * when its stop flag is already set). The loop connects without blocking (ex_connect_start). */
static int ex_pg_blocking(executor_t *x)
{
    atomic_int      stopping = 1;
    const pg_wait_t once = { &stopping, x->w->cfg->pg_answer_timeout_ms };

    if (x->pg != NULL && PQstatus(x->pg) == CONNECTION_OK)
        return 0;
    return pg_ensure(&x->pg, &x->connect_skip, x->w->cfg->pg_conninfo, EX_ROLE, &once);
}

typedef struct {
    char  *apps, *codes, *attempts;
} ex_arrays_t;

static void ex_arrays_free(ex_arrays_t *a)
{
    free(a->apps);
    free(a->codes);
    free(a->attempts);
    a->apps = a->codes = a->attempts = NULL;
}

/* Array literals (pg_text_array) of the calls in the given lists whose mark is `mark` (-1: all):
 * their application ids, insurer codes and attempts. Returns how many, or -1. */
static int ex_arrays(executor_t *x, const call_state_t *states, int nstates, int mark,
                     ex_arrays_t *a)
{
    enum { NUM = 12 };                       /* an int in decimal, its sign and NUL */
    size_t       n = 0;
    int          count = 0;
    const char **apps, **codes, **attempts;
    char        *numbers;

    for (int s = 0; s < nstates; s++)
        n += (size_t) x->lists[states[s]].n;
    apps = malloc((n + 1) * sizeof(*apps));
    codes = malloc((n + 1) * sizeof(*codes));
    attempts = malloc((n + 1) * sizeof(*attempts));
    numbers = malloc(n * NUM + 1);
    if (apps != NULL && codes != NULL && attempts != NULL && numbers != NULL) {
        for (int s = 0; s < nstates; s++) {
            for (call_t *c = x->lists[states[s]].head; c != NULL; c = c->next) {
                if (mark >= 0 && c->mark != mark)
                    continue;
                apps[count] = c->app_id;
                codes[count] = c->insurer;
                attempts[count] = numbers + (size_t) count * NUM;
                snprintf(numbers + (size_t) count * NUM, NUM, "%d", c->attempt);
                count++;
            }
        }
        a->apps = pg_text_array(apps, count);
        a->codes = pg_text_array(codes, count);
        a->attempts = pg_text_array(attempts, count);
    }
    if (a->apps == NULL || a->codes == NULL || a->attempts == NULL) {
        ex_arrays_free(a);
        count = -1;
    }
    free(apps);
    free(codes);
    free(attempts);
    free(numbers);
    return count;
}

/* What one claim transaction decided for a call (call_t.mark). */
enum { MK_LOCKED_ELSEWHERE = 0, MK_LOCKED, MK_CLAIMED, MK_REFUSED, MK_MISSING };

/* Queues a claim statement over the calls in ST_CLAIMING marked `mark` (-1: all): 1, 0 when
 * none is so marked, -1 on an error. */
static int ex_claim_queue(executor_t *x, const char *name, int nparams, int mark)
{
    static const call_state_t st[] = { ST_CLAIMING };
    ex_arrays_t               a = { NULL, NULL, NULL };
    const char               *params[3];
    int                       n = ex_arrays(x, st, 1, mark, &a), rc = n < 0 ? -1 : 0;

    if (n > 0) {
        params[0] = a.apps;
        params[1] = a.codes;
        params[2] = a.attempts;
        rc = pg_pipe_stmt(x->pg, &x->claim_pipe, name, NULL, nparams, params) == 0 ? 1 : -1;
    }
    ex_arrays_free(&a);
    return rc;
}

/* A row of a claim statement's answer: (app, insurer[, attempt]), and whether a call took it */
typedef struct {
    const char *app, *insurer;
    int         attempt, taken;
} ex_row_t;

static int ex_row_cmp(const void *a, const void *b)
{
    const ex_row_t *x = a, *y = b;
    int             d = strcasecmp(x->app, y->app);

    return d != 0 ? d : strcmp(x->insurer, y->insurer);
}

/* Sets mark to `to` on every call marked `from` whose (app, insurer[, attempt]) is a row of
 * res; with_attempt: each row serves one call, so two copies of one task make one call. The
 * rows are sorted and each call looks its own up: over a backlog a claim holds up to
 * --max-in-flight calls (512 by default, up to 10,000), and comparing each with every row grew
 * with the square of that. */
static void ex_mark_rows(executor_t *x, PGresult *res, int from, int to, int with_attempt)
{
    int       rows = PQntuples(res);
    ex_row_t *row = calloc((size_t) rows + 1, sizeof(*row));

    if (row == NULL)
        return;
    for (int i = 0; i < rows; i++) {
        row[i].app = PQgetvalue(res, i, 0);
        row[i].insurer = PQgetvalue(res, i, 1);
        row[i].attempt = with_attempt ? atoi(PQgetvalue(res, i, 2)) : 0;
    }
    qsort(row, (size_t) rows, sizeof(*row), ex_row_cmp);
    for (call_t *c = x->lists[ST_CLAIMING].head; c != NULL; c = c->next) {
        ex_row_t  key = { c->app_id, c->insurer, 0, 0 };
        int       lo = 0, hi = rows;

        if (c->mark != from)
            continue;
        while (lo < hi) {           /* the first row not before the call's (app, insurer) */
            int mid = lo + (hi - lo) / 2;

            if (ex_row_cmp(&row[mid], &key) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (int i = lo; i < rows && ex_row_cmp(&row[i], &key) == 0; i++) {
            if (with_attempt && (row[i].taken || row[i].attempt != c->attempt))
                continue;
            row[i].taken = with_attempt;
            c->mark = to;
            break;
        }
    }
    free(row);
}

/*
 * The claim transaction runs beside the calls, never in the way of this loop: two round trips
 * in libpq's pipeline mode, each answered when PostgreSQL's socket is readable.
 *   CL_LOCKING: BEGIN, ex_lock (every call in ST_CLAIMING);
 *   CL_MARKING: ex_claim (the locked ones), ex_exists (the others), COMMIT.
 * The second round trip's statements depend on what the first locked. A failure of any kind
 * drops the connection (PostgreSQL rolls the transaction back) and the calls are claimed again
 * after EX_RETRY_MS on a new one.
 *   CL_HEARTBEAT: ex_heartbeat, between claims, the same way: a PostgreSQL that stalls costs
 * the heartbeat (retried on a new connection), never the loop that serves Kafka and curl.
 *   CL_CONNECTING, CL_PREPARING: the connection those need, made the same way when a claim or
 * a heartbeat finds none (ex_ready): libpq's connect polled on its socket, then ex_stmts
 * prepared in one round trip. A PostgreSQL that accepts and never answers costs the connect
 * timeout, not the loop (t/69c).
 */
enum { CL_IDLE = 0, CL_LOCKING, CL_MARKING, CL_HEARTBEAT, CL_CONNECTING, CL_PREPARING };

/* Whether a call in the claim is marked `mark`: what the second round trip queued for. */
static int ex_claim_any(const executor_t *x, int mark)
{
    for (const call_t *c = x->lists[ST_CLAIMING].head; c != NULL; c = c->next)
        if (c->mark == mark)
            return 1;
    return 0;
}

/* Before the connection closes: its number may be curl's next socket. */
static void ex_claim_unwatch(executor_t *x)
{
    if (x->claim_fd >= 0)
        (void) epoll_ctl(x->epfd, EPOLL_CTL_DEL, x->claim_fd, NULL);
    x->claim_fd = -1;
    x->claim_events = 0;
}

static int ex_claim_watch(executor_t *x, int want_write)
{
    struct epoll_event ev = { 0 };
    uint32_t           events = EPOLLIN | (want_write ? EPOLLOUT : 0);
    int                fd = PQsocket(x->pg);

    if (fd < 0)
        return -1;
    if (x->claim_fd == fd && events == x->claim_events)
        return 0;
    if (x->claim_fd >= 0 && x->claim_fd != fd)     /* a connect moved on to its next address */
        ex_claim_unwatch(x);
    ev.events = events;
    ev.data.fd = fd;
    /* a new socket that took the old one's number is not in the set: MOD fails, ADD it */
    if (epoll_ctl(x->epfd, x->claim_fd < 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) != 0
        && (errno != ENOENT || epoll_ctl(x->epfd, EPOLL_CTL_ADD, fd, &ev) != 0))
        return -1;
    x->claim_fd = fd;
    x->claim_events = events;
    return 0;
}

static int ex_claim_send(executor_t *x, int phase)
{
    int flushed = pg_pipe_sync(x->pg);

    if (flushed < 0 || ex_claim_watch(x, flushed == 1) != 0)
        return -1;
    x->claim_phase = phase;
    x->claim_due_ms = ex_now_ms() + EX_CLAIM_TIMEOUT_MS;
    return 0;
}

static void ex_claim_fail(executor_t *x, const char *why)
{
    call_t *c;

    if (x->claim_phase == CL_HEARTBEAT) {
        if (ex_warn_due(x))
            wlog(LOG_WARN, EX_ROLE, NULL, "pg_error", "heartbeat: %s; sent again shortly", why);
        x->next_heartbeat_ms = ex_now_ms() + EX_RETRY_MS;
    } else if (x->claim_phase == CL_CONNECTING || x->claim_phase == CL_PREPARING) {
        if (ex_warn_due(x))
            wlog(LOG_WARN, EX_ROLE, NULL, "pg_connect_failed",
                 "cannot connect to PostgreSQL: %s; trying again in %d ms (calls in flight go "
                 "on meanwhile)", why, EX_RETRY_MS);
        x->connect_failures++;
        x->connect_retry_ms = ex_now_ms() + EX_RETRY_MS;
    } else if (ex_warn_due(x)) {
        wlog(LOG_WARN, EX_ROLE, NULL, "pg_error", "claim of %d tasks: %s; claimed again shortly",
             x->lists[ST_CLAIMING].n, why);
    }
    ex_claim_unwatch(x);
    pg_pipe_clear(&x->claim_pipe);
    if (x->pg != NULL)
        PQfinish(x->pg);
    x->pg = NULL;
    while ((c = x->lists[ST_CLAIMING].head) != NULL)
        ex_move(x, c, ST_CLAIM);
    x->claim_phase = CL_IDLE;
    x->claim_retry_ms = ex_now_ms() + EX_RETRY_MS;
}

/* The statements, prepared in one round trip on a new connection (CL_PREPARING), outside any
 * transaction: the parse and plan are most of a small statement's cost. */
static void ex_prepare_start(executor_t *x)
{
    int rc = pg_pipe_begin(x->pg, &x->claim_pipe);

    for (size_t i = 0; rc == 0 && i < sizeof(ex_stmts) / sizeof(ex_stmts[0]); i++)
        rc = pg_pipe_prepare(x->pg, &x->claim_pipe, ex_stmts[i].name, ex_stmts[i].sql,
                             ex_stmts[i].nparams);
    x->claim_phase = CL_PREPARING;
    if (rc != 0 || ex_claim_send(x, CL_PREPARING) != 0)
        ex_claim_fail(x, PQerrorMessage(x->pg));
}

static void ex_prepared(executor_t *x)
{
    x->prepared_conn = x->pg;
    x->prepared_pid = PQbackendPID(x->pg);
    if (x->connect_failures > 0)
        wlog(LOG_INFO, EX_ROLE, NULL, "pg_connected", "connected after %d failed attempts",
             x->connect_failures);
    x->connect_failures = 0;
    x->connect_unanswered = 0;
}

/* The connect is on a new address (the first, or libpq's next of a list): it gets the whole
 * connect timeout, which is per address, as libpq's own. */
static void ex_connect_at(executor_t *x)
{
    x->claim_due_ms = ex_now_ms() + x->connecting.timeout_ms;
}

static void ex_connect_start(executor_t *x)
{
    if (x->pg != NULL && PQstatus(x->pg) == CONNECTION_OK) {
        ex_prepare_start(x);
        return;
    }
    if (x->pg != NULL) {
        wlog(LOG_WARN, EX_ROLE, NULL, "pg_reconnect", "PostgreSQL connection lost; reconnecting");
        ex_claim_unwatch(x);
        PQfinish(x->pg);
    }
    pg_connecting_free(&x->connecting);
    x->pg = pg_connect_start(x->w->cfg->pg_conninfo, EX_ROLE, x->connect_skip,
                             x->w->cfg->pg_answer_timeout_ms, &x->connecting);
    x->claim_phase = CL_CONNECTING;
    x->claim_events = 0;
    ex_connect_at(x);
    /* as if PQconnectPoll had said PGRES_POLLING_WRITING, which libpq's manual prescribes */
    if (x->pg == NULL || PQstatus(x->pg) == CONNECTION_BAD || ex_claim_watch(x, 1) != 0)
        ex_claim_fail(x, x->pg != NULL ? PQerrorMessage(x->pg) : "out of memory");
}

/* The connect, when its socket is ready: one more step of libpq's. */
static void ex_connect_progress(executor_t *x)
{
    int want_write;

    switch (pg_connect_poll(x->pg, EX_ROLE)) {
    case PGRES_POLLING_OK:
        x->connect_skip = pg_connect_landed(&x->connecting, x->connect_skip);
        ex_prepare_start(x);
        return;
    case PGRES_POLLING_READING:
        want_write = 0;
        break;
    case PGRES_POLLING_WRITING:
        want_write = 1;
        break;
    default:
        x->connect_unanswered = 0;       /* refused, or turned away: PostgreSQL did answer */
        ex_claim_fail(x, PQerrorMessage(x->pg));
        return;
    }
    /* libpq moved on to its next address (a host list, a name with several) */
    if (pg_connect_moved(x->pg, &x->connecting))
        ex_connect_at(x);
    x->claim_events = 0;            /* the socket may be a new one under the same number */
    if (ex_claim_watch(x, want_write) != 0)
        ex_claim_fail(x, "epoll_ctl failed");
}

/* 0: the connection is made and prepared. -1: it is being made (claim_phase), or due again at
 * connect_retry_ms after a failure; the caller tries again then. */
static int ex_ready(executor_t *x)
{
    if (x->pg != NULL && PQstatus(x->pg) == CONNECTION_OK && x->prepared_conn == x->pg
        && x->prepared_pid == PQbackendPID(x->pg))
        return 0;
    if (x->claim_phase == CL_IDLE && ex_now_ms() >= x->connect_retry_ms)
        ex_connect_start(x);
    return -1;
}

static void ex_claim_start(executor_t *x)
{
    call_t *c;

    if (x->lists[ST_CLAIM].n == 0 || ex_now_ms() < x->claim_retry_ms)
        return;
    /* under a steady stream of tasks one claim follows another: the heartbeat, due, takes the
     * connection first (ex_heartbeat, later in this loop), or running quotes would go stale */
    if (ex_now_ms() >= x->next_heartbeat_ms)
        return;
    if (ex_ready(x) != 0) {             /* connecting: the claim goes once that is done */
        if (x->claim_phase == CL_IDLE)
            x->claim_retry_ms = x->connect_retry_ms;
        return;
    }
    while ((c = x->lists[ST_CLAIM].head) != NULL) {
        c->mark = MK_LOCKED_ELSEWHERE;
        ex_move(x, c, ST_CLAIMING);
    }
    if (pg_pipe_begin(x->pg, &x->claim_pipe) != 0
        || pg_pipe_stmt(x->pg, &x->claim_pipe, NULL, "BEGIN", 0, NULL) != 0
        || ex_claim_queue(x, "ex_lock", 2, -1) != 1 || ex_claim_send(x, CL_LOCKING) != 0)
        ex_claim_fail(x, PQerrorMessage(x->pg));
}

/* The locks are ours: mark what they cover, ask about the rest, commit. */
static void ex_claim_locked(executor_t *x)
{
    ex_mark_rows(x, x->claim_pipe.res[1], MK_LOCKED_ELSEWHERE, MK_LOCKED, 0);
    if (pg_pipe_begin(x->pg, &x->claim_pipe) != 0
        || ex_claim_queue(x, "ex_claim", 3, MK_LOCKED) < 0
        || ex_claim_queue(x, "ex_exists", 2, MK_LOCKED_ELSEWHERE) < 0
        || pg_pipe_stmt(x->pg, &x->claim_pipe, NULL, "COMMIT", 0, NULL) != 0
        || ex_claim_send(x, CL_MARKING) != 0)
        ex_claim_fail(x, PQerrorMessage(x->pg));
}

/* Committed: every call in ST_CLAIMING gets its mark. */
static void ex_claim_marked(executor_t *x)
{
    PGresult *const *res = x->claim_pipe.res;
    int              i = 0;
    int              asked_exists = ex_claim_any(x, MK_LOCKED_ELSEWHERE);

    if (ex_claim_any(x, MK_LOCKED))
        ex_mark_rows(x, res[i++], MK_LOCKED, MK_CLAIMED, 1);
    for (call_t *c = x->lists[ST_CLAIMING].head; c != NULL; c = c->next)
        if (c->mark == MK_LOCKED)
            c->mark = MK_REFUSED;
    /* what was not locked either exists (held by another transaction) or does not */
    if (asked_exists) {
        for (call_t *c = x->lists[ST_CLAIMING].head; c != NULL; c = c->next)
            if (c->mark == MK_LOCKED_ELSEWHERE)
                c->mark = MK_MISSING;
        ex_mark_rows(x, res[i], MK_MISSING, MK_LOCKED_ELSEWHERE, 0);
    }
}

/* Claimed calls wait for a slot, refused ones are done, deferred ones go back to ST_CLAIM. */
static void ex_claim_apply(executor_t *x)
{
    call_t *c, *next;
    int     deferred = 0;

    for (c = x->lists[ST_CLAIMING].head; c != NULL; c = next) {
        next = c->next;
        if (c->mark == MK_CLAIMED) {
            atomic_fetch_add(&x->w->metrics->tasks_started, 1);
            ex_move(x, c, ST_BACKLOG);
        } else if (c->mark == MK_LOCKED_ELSEWHERE) {
            ex_move(x, c, ST_CLAIM);
            deferred++;
        } else {
            wlog(LOG_DEBUG, EX_ROLE, c->traceparent, "task_skipped", "%s/%s attempt %d: %s",
                 c->app_id, c->insurer, c->attempt,
                 c->mark == MK_MISSING ? "no such quote"
                                       : "the quote is terminal, newer, or running elsewhere");
            ex_ticket_done(c->ticket);
            ex_free_call(x, c);
        }
    }
    if (deferred > 0)
        x->claim_retry_ms = ex_now_ms() + EX_DEFER_MS;
}

/* The claim in flight, when its socket is ready (the event is taken from this loop's list). */
static void ex_claim_progress(executor_t *x)
{
    char why[256];
    int  ready = 0, want_write = 0, rc;

    for (int i = 0; i < x->nevents; i++) {
        if (x->events[i].data.fd == x->claim_fd) {
            x->events[i].data.fd = -1;
            ready = 1;
        }
    }
    if (!ready) {
        if (ex_now_ms() < x->claim_due_ms)
            return;
        x->connect_unanswered = 1;
        /* the next attempt starts past the silent address: libpq, polled, never leaves one
         * that does not answer */
        if (x->claim_phase == CL_CONNECTING)
            x->connect_skip = pg_connect_skip_past(&x->connecting, x->connect_skip);
        ex_claim_fail(x, x->claim_phase == CL_CONNECTING
                         ? "no connection within the connect timeout"
                         : "PostgreSQL did not answer in time");
        return;
    }
    if (x->claim_phase == CL_CONNECTING) {
        ex_connect_progress(x);
        return;
    }
    rc = pg_pipe_collect(x->pg, &x->claim_pipe, &want_write);
    if (rc < 0) {
        ex_claim_fail(x, PQerrorMessage(x->pg));
        return;
    }
    if (rc == 0) {
        if (ex_claim_watch(x, want_write) != 0)
            ex_claim_fail(x, "epoll_ctl failed");
        return;
    }
    if (pg_pipe_error(&x->claim_pipe, why, sizeof(why)) != NULL) {
        ex_claim_fail(x, why);
        return;
    }
    if (x->claim_phase == CL_LOCKING) {
        ex_claim_locked(x);
        return;
    }
    if (x->claim_phase == CL_MARKING)
        ex_claim_marked(x);
    if (x->claim_phase == CL_PREPARING)
        ex_prepared(x);
    pg_pipe_clear(&x->claim_pipe);
    ex_claim_unwatch(x);
    x->claim_phase = CL_IDLE;
    ex_claim_apply(x);
}

static void ex_claim(executor_t *x)
{
    if (x->claim_phase != CL_IDLE)
        ex_claim_progress(x);
    if (x->claim_phase == CL_IDLE)      /* the calls that came meanwhile, without another loop */
        ex_claim_start(x);
}

/* Stopping: the round trip in flight ends, one way or the other, within EX_CLAIM_TIMEOUT_MS.
 * A connect still under way is dropped: ex_release makes its own, or knows it cannot. Only
 * PostgreSQL's socket is waited on: the calls' sockets and the wake pipe, level-triggered and
 * no longer read, would wake an epoll_wait at once, every time. */
static void ex_claim_finish(executor_t *x)
{
    if (x->claim_phase == CL_CONNECTING) {
        ex_claim_unwatch(x);
        PQfinish(x->pg);
        x->pg = NULL;
        x->claim_phase = CL_IDLE;
        x->connect_unanswered = 1;      /* no telling whether one more attempt would hang */
    }
    while (x->claim_phase != CL_IDLE) {
        struct pollfd pfd = { x->claim_fd, POLLIN, 0 };

        if (x->claim_events & EPOLLOUT)
            pfd.events |= POLLOUT;
        x->nevents = 0;
        if (poll(&pfd, 1, 100) > 0) {
            x->events[0].data.fd = x->claim_fd;
            x->nevents = 1;
        }
        ex_claim_progress(x);
    }
    x->nevents = 0;
}

/* One UPDATE for every task this executor holds, so the sweeper leaves them alone; sent like
 * a claim round trip (CL_HEARTBEAT), answered in ex_claim_progress. */
static void ex_heartbeat(executor_t *x)
{
    static const call_state_t st[] = { ST_BACKLOG, ST_RUNNING, ST_RETRY, ST_OUTBOX, ST_SENT };
    ex_arrays_t               a = { NULL, NULL, NULL };
    const char               *params[2];
    int64_t                   now = ex_now_ms();
    int                       rc;

    /* the connection is the claim's until its round trips are back */
    if (now < x->next_heartbeat_ms || x->claim_phase != CL_IDLE)
        return;
    if (x->lists[ST_BACKLOG].n + x->lists[ST_RUNNING].n + x->lists[ST_RETRY].n
        + x->lists[ST_OUTBOX].n + x->lists[ST_SENT].n == 0) {
        x->next_heartbeat_ms = now + (int64_t) x->w->cfg->heartbeat_s * 1000;
        return;
    }
    if (ex_ready(x) != 0) {             /* connecting: the beat goes once that is done */
        if (x->claim_phase == CL_IDLE)
            x->next_heartbeat_ms = x->connect_retry_ms;
        return;
    }
    x->next_heartbeat_ms = now + (int64_t) x->w->cfg->heartbeat_s * 1000;
    if (ex_arrays(x, st, 5, -1, &a) < 0) {
        x->next_heartbeat_ms = now + EX_RETRY_MS;
        return;
    }
    params[0] = a.apps;
    params[1] = a.codes;
    rc = pg_pipe_begin(x->pg, &x->claim_pipe) != 0
         || pg_pipe_stmt(x->pg, &x->claim_pipe, "ex_heartbeat", NULL, 2, params) != 0
         || ex_claim_send(x, CL_HEARTBEAT) != 0;
    ex_arrays_free(&a);
    if (rc != 0) {
        x->claim_phase = CL_HEARTBEAT;      /* so the failure is reported as the heartbeat's */
        ex_claim_fail(x, PQerrorMessage(x->pg));
    }
}

/* ---- outcomes ----------------------------------------------------------------------------- */

static void ex_out_common(executor_t *x, call_t *c, event_type_t type, out_kind_t kind)
{
    osago_event_t *e = &c->out;

    memset(e, 0, sizeof(*e));
    e->type = type;
    e->version = 1;
    snprintf(e->application_id, sizeof(e->application_id), "%s", c->app_id);
    snprintf(e->traceparent, sizeof(e->traceparent), "%s", c->traceparent);
    snprintf(e->insurer, sizeof(e->insurer), "%s", c->insurer);
    e->attempt = c->attempt;
    event_stamp(e, &x->ids);
    c->out_kind = kind;
}

static void ex_succeeded(executor_t *x, call_t *c, const char *premium, long ms)
{
    ex_out_common(x, c, EV_TASK_RESULT, OUT_OK);
    c->out.ok = 1;
    snprintf(c->out.premium_rub, sizeof(c->out.premium_rub), "%s", premium);
    wlog(LOG_DEBUG, EX_ROLE, c->traceparent, "insurer_ok", "%s/%s attempt %d: %s RUB in %ld ms",
         c->app_id, c->insurer, c->attempt, premium, ms);
    ex_move(x, c, ST_OUTBOX);
}

/* A failed attempt: retried after the backoff while attempts remain (and retrying can help).
 * reason is stored with an error result, which partners read: what went wrong, not where
 * (hosts, ports, this worker's settings); detail, when given, is what the log says instead.
 * retry_level: how the retry is logged (a call not sent for its insurer's share is one of
 * many, reported by ex_limited_report instead). */
static void ex_failed_as(executor_t *x, call_t *c, const char *reason, const char *detail,
                         int retryable, enum log_level retry_level)
{
    const worker_config_t *cfg = x->w->cfg;

    if (detail == NULL)
        detail = reason;

    if (retryable && retry_allowed(c->attempt, cfg->max_attempts)) {
        int64_t delay = retry_delay_ms(c->attempt + 1, cfg->retry_base_ms, cfg->retry_max_ms,
                                       &x->seed);

        c->due_ms = ex_now_ms() + delay;
        wlog(retry_level, EX_ROLE, c->traceparent, "insurer_error",
             "%s/%s attempt %d of %d: %s; retry in %lld ms", c->app_id, c->insurer, c->attempt,
             cfg->max_attempts, detail, (long long) delay);
        ex_move(x, c, ST_RETRY);
        return;
    }
    ex_out_common(x, c, EV_TASK_RESULT, OUT_FAILED);
    c->out.ok = 0;
    snprintf(c->out.error, sizeof(c->out.error), "%s", reason);
    event_utf8_sanitize(c->out.error);
    wlog(LOG_WARN, EX_ROLE, c->traceparent, "task_failed", "%s/%s attempt %d of %d: %s; final",
         c->app_id, c->insurer, c->attempt, cfg->max_attempts, detail);
    ex_move(x, c, ST_OUTBOX);
}

static void ex_failed(executor_t *x, call_t *c, const char *reason, int retryable)
{
    ex_failed_as(x, c, reason, NULL, retryable, LOG_WARN);
}

/* An insurer's refusal of the request itself (4xx) meets every retry the same way; but for a
 * timeout, a request too early or too many (408, 425, 429), which a retry may get past. */
static int ex_status_retryable(long status)
{
    return status < 400 || status >= 500 || status == 408 || status == 425 || status == 429;
}

/* The premium of a 200 answer, as "%.2f"; or why the answer cannot be used. */
static int ex_premium(const char *answer, size_t len, char *premium, size_t cap, char *why,
                      size_t whylen)
{
    const char              *path[] = { "premium_rub", NULL };
    char                     err[128];
    yajl_val                 root, v;
    double                   d;

    if (len == 0) {
        snprintf(why, whylen, "empty body");
        return -1;
    }
    if (strlen(answer) != len) {     /* the parser would stop at it, taking a prefix */
        snprintf(why, whylen, "a NUL byte in the body");
        return -1;
    }
    if ((root = yajl_tree_parse(answer, err, sizeof(err))) == NULL) {
        snprintf(why, whylen, "not JSON");
        return -1;
    }
    v = YAJL_IS_OBJECT(root) ? yajl_tree_get(root, path, yajl_t_any) : NULL;
    if (v != NULL) {
        int copies = 0;

        /* yajl keeps both copies of a member, and the lookup takes the first */
        for (size_t i = 0; i < root->u.object.len; i++)
            copies += strcmp(root->u.object.keys[i], "premium_rub") == 0;
        if (copies > 1) {
            snprintf(why, whylen, "premium_rub given %d times", copies);
            yajl_tree_free(root);
            return -1;
        }
    }
    if (v == NULL || !YAJL_IS_NUMBER(v)) {
        snprintf(why, whylen, "%s", YAJL_IS_OBJECT(root) ? "no premium_rub number"
                                                         : "not a JSON object");
        yajl_tree_free(root);
        return -1;
    }
    /* judged as stored, in kopecks: numeric(12, 2) holds up to 9999999999.99, and a premium
     * that rounds to 0.00 is no premium. Judging the raw number let 9999999999.999 through to
     * fail in PostgreSQL on every redelivery, and stored 0.004 as a free policy. */
    d = strtod(YAJL_GET_NUMBER(v), NULL);
    if (!(d > 0 && d < 1e11)
        || (size_t) snprintf(premium, cap, "%.2f", d) >= cap
        || !((d = strtod(premium, NULL)) >= 0.01 && d < 1e10)) {
        snprintf(why, whylen, "premium_rub %.40s out of range", YAJL_GET_NUMBER(v));
        yajl_tree_free(root);
        return -1;
    }
    yajl_tree_free(root);
    return 0;
}

static void ex_call_done(executor_t *x, call_t *c, CURLcode rc)
{
    metrics_t *m = x->w->metrics;
    long       status = 0, ms = (long) (ex_now_ms() - c->started_ms);
    char       reason[200], why[128] = "", premium[32];
    int        timeout = rc == CURLE_OPERATION_TIMEDOUT;
    int        insurer = ex_ins_index(x, c);
    long       sent = 0;     /* request bytes: none, and the connection was never made */

    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c->easy, CURLINFO_REQUEST_SIZE, &sent);
    curl_multi_remove_handle(x->multi, c->easy);
    ex_easy_put(x, c->easy);
    c->easy = NULL;
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    atomic_fetch_sub(&m->calls_in_flight, 1);

    if (rc == CURLE_OK && status == 200
        && ex_premium(c->answer != NULL ? c->answer : "", c->answer_len, premium,
                      sizeof(premium), why, sizeof(why)) == 0) {
        metrics_observe_attempt(m, insurer, ms, METRICS_ATTEMPT_OK);
        ex_succeeded(x, c, premium, ms);
    } else {
        const char *detail = NULL;
        int         retryable = 1;

        if (timeout && sent == 0) {
            snprintf(reason, sizeof(reason), "no connection within %d ms",
                     c->ins->connect_timeout_ms);
        } else if (timeout) {
            snprintf(reason, sizeof(reason), "timeout after %d ms", c->ins->timeout_ms);
        } else if (status != 0 && status != 200) {     /* whatever the body (too long, cut) */
            snprintf(reason, sizeof(reason), "HTTP %ld", status);
            retryable = ex_status_retryable(status);
        } else if (status == 0 && rc == CURLE_OK) {
            snprintf(reason, sizeof(reason), "no HTTP status");
        } else if (c->answer_over) {
            snprintf(reason, sizeof(reason), "malformed answer: over %d bytes", EX_MAX_ANSWER);
        } else if (rc != CURLE_OK) {
            /* curl's own text names the host, port or address: for the log only */
            snprintf(reason, sizeof(reason), "%.180s", curl_easy_strerror(rc));
            if (c->errbuf[0] != '\0')
                detail = c->errbuf;
        } else {
            snprintf(reason, sizeof(reason), "malformed answer: %s", why);
        }
        metrics_observe_attempt(m, insurer, ms,
                                timeout ? METRICS_ATTEMPT_TIMEOUT : METRICS_ATTEMPT_ERROR);
        ex_failed_as(x, c, reason, detail, retryable, LOG_WARN);
    }
    free(c->answer);
    c->answer = NULL;
    c->answer_len = 0;
}

/* ---- the HTTP call ---------------------------------------------------------------------------- */

static int gen_value(yajl_gen g, yajl_val v, int depth)
{
    if (depth > EX_JSON_DEPTH)
        return -1;
    if (YAJL_IS_STRING(v))
        return yajl_gen_string(g, (const unsigned char *) v->u.string, strlen(v->u.string));
    if (YAJL_IS_NUMBER(v))
        return yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r));
    if (YAJL_IS_TRUE(v) || YAJL_IS_FALSE(v))
        return yajl_gen_bool(g, YAJL_IS_TRUE(v));
    if (YAJL_IS_NULL(v))
        return yajl_gen_null(g);
    if (YAJL_IS_ARRAY(v)) {
        int rc = (int) yajl_gen_array_open(g);

        for (size_t i = 0; rc == 0 && i < v->u.array.len; i++)
            rc = gen_value(g, v->u.array.values[i], depth + 1);
        return rc == 0 ? (int) yajl_gen_array_close(g) : rc;
    }
    if (YAJL_IS_OBJECT(v)) {
        int rc = (int) yajl_gen_map_open(g);

        for (size_t i = 0; rc == 0 && i < v->u.object.len; i++) {
            const char *k = v->u.object.keys[i];

            rc = (int) yajl_gen_string(g, (const unsigned char *) k, strlen(k));
            if (rc == 0)
                rc = gen_value(g, v->u.object.values[i], depth + 1);
        }
        return rc == 0 ? (int) yajl_gen_map_close(g) : rc;
    }
    return -1;
}

/* The request body when the payload has no "application_id" anywhere, which is the usual
 * case: the payload is event_decode's compact text, so the body is the id spliced in front of
 * its members, without parsing it again. */
static int ex_body_spliced(call_t *c)
{
    static const char head[] = "{\"application_id\":\"";
    size_t            plen = strlen(c->payload), idlen = strlen(c->app_id);
    int               empty = strcmp(c->payload, "{}") == 0;
    char             *p;

    if (c->payload[0] != '{' || strstr(c->payload, "\"application_id\"") != NULL)
        return -1;
    c->body_len = sizeof(head) - 1 + idlen + 1 + (empty ? 1 : plen);
    if ((c->body = malloc(c->body_len + 1)) == NULL)
        return -1;
    p = c->body;
    memcpy(p, head, sizeof(head) - 1);
    p += sizeof(head) - 1;
    memcpy(p, c->app_id, idlen);
    p += idlen;
    *p++ = '"';
    if (empty) {
        *p++ = '}';
    } else {
        *p++ = ',';
        memcpy(p, c->payload + 1, plen - 1);
        p += plen - 1;
    }
    *p = '\0';
    return 0;
}

/* The request body: the application with "application_id" first (any such member of the
 * payload itself is dropped: the id is ours to say). */
static int ex_body(call_t *c)
{
    char                 err[128];
    yajl_val             root = yajl_tree_parse(c->payload, err, sizeof(err));
    yajl_gen             g = yajl_gen_alloc(NULL);
    const unsigned char *buf;
    size_t               len;
    int                  rc = -1;

    if (root == NULL || g == NULL || !YAJL_IS_OBJECT(root))
        goto out;
    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || yajl_gen_string(g, (const unsigned char *) "application_id", 14) != yajl_gen_status_ok
        || yajl_gen_string(g, (const unsigned char *) c->app_id, strlen(c->app_id))
           != yajl_gen_status_ok)
        goto out;
    for (size_t i = 0; i < root->u.object.len; i++) {
        const char *k = root->u.object.keys[i];

        if (strcmp(k, "application_id") == 0)
            continue;
        if (yajl_gen_string(g, (const unsigned char *) k, strlen(k)) != yajl_gen_status_ok
            || gen_value(g, root->u.object.values[i], 1) != 0)
            goto out;
    }
    if (yajl_gen_map_close(g) != yajl_gen_status_ok
        || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok
        || (c->body = malloc(len + 1)) == NULL)
        goto out;
    memcpy(c->body, buf, len);
    c->body[len] = '\0';
    c->body_len = len;
    rc = 0;
out:
    if (g != NULL)
        yajl_gen_free(g);
    if (root != NULL)
        yajl_tree_free(root);
    return rc;
}

static size_t ex_write(char *data, size_t size, size_t n, void *arg)
{
    call_t *c = arg;
    size_t  len = size * n;
    char   *grown;

    if (c->answer_len + len > EX_MAX_ANSWER) {
        c->answer_over = 1;
        return 0;                       /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if ((grown = realloc(c->answer, c->answer_len + len + 1)) == NULL)
        return 0;
    c->answer = grown;
    memcpy(c->answer + c->answer_len, data, len);
    c->answer_len += len;
    c->answer[c->answer_len] = '\0';
    return len;
}

static int ex_headers(executor_t *x, call_t *c)
{
    char trace[56 + 16];
    char child[56];

    event_traceparent_child(c->traceparent, child, &x->ids);
    snprintf(trace, sizeof(trace), "traceparent: %s", child);
    /* "Expect:" off: curl would wait for a 100-continue before sending a body over 1 KB */
    const char *lines[] = { "Content-Type: application/json", "Expect:", trace,
                            c->ins->auth_header[0] ? c->ins->auth_header : NULL };

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        struct curl_slist *l;

        if (lines[i] == NULL)
            continue;
        if ((l = curl_slist_append(c->headers, lines[i])) == NULL)
            return -1;
        c->headers = l;
    }
    return 0;
}

/* 0 started; -1 could not start (retryable); -2 the task itself is unusable. */
static int ex_start(executor_t *x, call_t *c)
{
    CURL *e;

    if (c->body == NULL && ex_body_spliced(c) != 0 && ex_body(c) != 0)
        return -2;
    if ((e = ex_easy_get(x)) == NULL)
        return -1;
    c->easy = e;
    c->answer_over = 0;
    c->errbuf[0] = '\0';
    if (ex_headers(x, c) != 0)
        return -1;
    curl_easy_setopt(e, CURLOPT_URL, c->ins->url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long) c->body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) c->ins->timeout_ms);
    /* an address that drops connection attempts fails in seconds, not the whole timeout */
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) c->ins->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    if (curl_multi_add_handle(x->multi, e) != CURLM_OK)
        return -1;
    atomic_fetch_add(&x->w->metrics->calls_in_flight, 1);
    atomic_fetch_add(&x->w->metrics->insurer_calls, 1);
    c->started_ms = ex_now_ms();
    ex_move(x, c, ST_RUNNING);
    wlog(LOG_DEBUG, EX_ROLE, c->traceparent, "insurer_call", "%s/%s attempt %d: POST %s",
         c->app_id, c->insurer, c->attempt, c->ins->url);
    return 0;
}

/*
 * One insurer holds at most --insurer-share-pct of the call slots. An insurer that stops
 * answering keeps each call until its timeout: with one limit for all, its calls would take
 * every slot within seconds (rate x timeout of them) and every other insurer's calls would wait
 * for its timeouts, the executor's throughput falling from hundreds of applications a second to
 * a few. A call beyond its insurer's share fails as an attempt (retried after the backoff, an
 * error result after the last), so its task neither waits in memory nor holds up the tasks
 * behind it.
 */
static void ex_start_calls(executor_t *x)
{
    const worker_config_t *cfg = x->w->cfg;
    int share = (int) ((int64_t) cfg->max_in_flight * cfg->insurer_share_pct / 100);

    if (share < 1)
        share = 1;
    while (x->lists[ST_BACKLOG].n > 0 && x->lists[ST_RUNNING].n < cfg->max_in_flight) {
        call_t *c = x->lists[ST_BACKLOG].head;
        char    reason[160];
        int     rc;

        if (c->ins == NULL) {
            snprintf(reason, sizeof(reason), "insurer %s is not in the insurer file", c->insurer);
            ex_failed(x, c, reason, 0);
            continue;
        }
        if (x->running_by_insurer[ex_ins_index(x, c)] >= share) {
            atomic_fetch_add(&x->w->metrics->insurer_calls_limited, 1);
            x->limited_by_insurer[ex_ins_index(x, c)]++;
            snprintf(reason, sizeof(reason), "not sent: %d calls to %s in flight, its share of "
                     "the executor's %d (--insurer-share-pct %d)", share, c->insurer,
                     cfg->max_in_flight, cfg->insurer_share_pct);
            ex_failed_as(x, c, "not sent: too many calls to the insurer in flight", reason, 1,
                         LOG_DEBUG);
            continue;
        }
        rc = ex_start(x, c);
        if (rc == 0)
            continue;
        if (c->easy != NULL) {
            curl_multi_remove_handle(x->multi, c->easy);   /* a no-op unless it was added */
            ex_easy_put(x, c->easy);
            c->easy = NULL;
        }
        curl_slist_free_all(c->headers);
        c->headers = NULL;
        ex_failed(x, c, rc == -2 ? "payload is not a JSON object" : "call not started",
                  rc == -1);
    }
}

/* The epoll state of socket fd (EX_FD_*, with the events it is in the set for); NULL when it
 * cannot be tracked (out of memory: it is then added and removed as curl says). */
static uint32_t *ex_fd(executor_t *x, int fd)
{
    if (fd < 0)
        return NULL;
    if (fd >= x->fd_cap) {
        int       cap = x->fd_cap > 0 ? x->fd_cap : 1024;
        uint32_t *grown;

        while (cap <= fd)
            cap *= 2;
        if ((grown = realloc(x->fd_state, (size_t) cap * sizeof(*grown))) == NULL)
            return NULL;
        memset(grown + x->fd_cap, 0, (size_t) (cap - x->fd_cap) * sizeof(*grown));
        x->fd_state = grown;
        x->fd_cap = cap;
    }
    return &x->fd_state[fd];
}

/*
 * curl's socket callback: what to wait for on one socket. A connection going idle (REMOVE)
 * stays in the epoll set, parked: the next call on it wants the same events, so a call on a
 * kept-alive connection costs no epoll_ctl (it cost two, a fifth of the executor's system
 * calls). curl closes its sockets through ex_curl_close, which forgets them, so no state
 * outlives its socket; an idle one that speaks (the insurer closed it) leaves the set in
 * ex_perform.
 */
static int ex_curl_socket(CURL *e, curl_socket_t fd, int what, void *arg, void *sockp)
{
    executor_t        *x = arg;
    uint32_t          *st = ex_fd(x, fd);
    uint32_t           want = (what & CURL_POLL_IN ? EPOLLIN : 0)
                              | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    struct epoll_event ev = { 0 };
    int                op;

    (void) e;
    (void) sockp;
    if (what == CURL_POLL_REMOVE) {
        if (st != NULL && (*st & EX_FD_IN_SET))
            *st |= EX_FD_PARKED;
        else
            (void) epoll_ctl(x->epfd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    if (st != NULL && (*st & EX_FD_IN_SET) && (*st & EX_FD_EVENTS) == want) {
        *st &= ~EX_FD_PARKED;
        return 0;
    }
    ev.events = want;
    ev.data.fd = fd;
    op = st != NULL && (*st & EX_FD_IN_SET) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    /* the other operation when the set disagrees: a socket we never saw closed */
    if (epoll_ctl(x->epfd, op, fd, &ev) != 0
        && (errno != (op == EPOLL_CTL_MOD ? ENOENT : EEXIST)
            || epoll_ctl(x->epfd, op == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd,
                         &ev) != 0)) {
        if (st != NULL)
            *st = 0;
        if (ex_warn_due(x))
            wlog(LOG_WARN, EX_ROLE, NULL, "epoll_error", "socket %d not watched: %s", (int) fd,
                 strerror(errno));
        return 0;
    }
    if (st != NULL)
        *st = EX_FD_IN_SET | want;
    return 0;
}

/* curl's close: a closed socket leaves the epoll set by itself; its state goes with it. */
static int ex_curl_close(void *arg, curl_socket_t fd)
{
    executor_t *x = arg;

    if (fd >= 0 && fd < x->fd_cap)
        x->fd_state[fd] = 0;
    return close(fd);
}

/* curl's timer callback: -1 cancels. */
static int ex_curl_timer(CURLM *multi, long timeout_ms, void *arg)
{
    executor_t *x = arg;

    (void) multi;
    x->curl_due_ms = timeout_ms < 0 ? -1 : ex_now_ms() + timeout_ms;
    return 0;
}

/* Hands curl the sockets that are ready and its due timer, then finishes the calls it is done
 * with. */
static void ex_perform(executor_t *x)
{
    CURLMsg *msg;
    int      running, left;

    for (int i = 0; i < x->nevents; i++) {
        const struct epoll_event *ev = &x->events[i];
        int                       flags = 0;

        if (ev->data.fd == x->wake[0] || ev->data.fd < 0)   /* < 0: taken by the claim */
            continue;
        if (ev->data.fd < x->fd_cap && (x->fd_state[ev->data.fd] & EX_FD_PARKED)) {
            (void) epoll_ctl(x->epfd, EPOLL_CTL_DEL, ev->data.fd, NULL);
            x->fd_state[ev->data.fd] = 0;
            continue;
        }
        flags |= ev->events & EPOLLIN ? CURL_CSELECT_IN : 0;
        flags |= ev->events & EPOLLOUT ? CURL_CSELECT_OUT : 0;
        flags |= ev->events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0;
        curl_multi_socket_action(x->multi, ev->data.fd, flags, &running);
    }
    x->nevents = 0;
    if (x->curl_due_ms >= 0 && ex_now_ms() >= x->curl_due_ms) {
        x->curl_due_ms = -1;
        curl_multi_socket_action(x->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    while ((msg = curl_multi_info_read(x->multi, &left)) != NULL) {
        CURL    *e = msg->easy_handle;
        CURLcode rc = msg->data.result;
        char    *priv = NULL;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        ex_call_done(x, (call_t *) (void *) priv, rc);
    }
}

/* ---- retries and producing ----------------------------------------------------------------- */

static void ex_timers(executor_t *x)
{
    int64_t now = ex_now_ms();
    call_t *c, *next;

    for (c = x->lists[ST_RETRY].head; c != NULL; c = next) {
        next = c->next;
        if (now < c->due_ms)
            continue;
        ex_out_common(x, c, EV_TASK, OUT_RETRY);
        c->out.attempt = c->attempt + 1;
        c->out.payload = c->payload;
        ex_move(x, c, ST_OUTBOX);
    }
}

static void ex_account(executor_t *x, const call_t *c)
{
    metrics_t *m = x->w->metrics;

    if (c->out_kind == OUT_RETRY)
        atomic_fetch_add(&m->tasks_retried, 1);
    else if (c->out_kind == OUT_FAILED)
        atomic_fetch_add(&m->tasks_failed, 1);
}

/* Runs on the producer's report thread: the loop may be asleep in epoll_wait. */
static void ex_wakeup(void *arg)
{
    executor_t *x = arg;

    if (x->wake[1] >= 0 && write(x->wake[1], "1", 1) < 0) {
        /* full: the loop has a wake-up coming anyway */
    }
}

/* Every finished task in one produce, not waited for; ex_sent_check sees how it ended. */
static int ex_flush(executor_t *x)
{
    call_list_t          *out = &x->lists[ST_OUTBOX];
    const osago_event_t **evs;
    sent_t               *sent;
    call_t               *c, *next;
    int                   n = 0;

    /* one event Kafka cannot carry would fail every batch it is in: drop it, loudly */
    for (c = out->head; c != NULL; c = next) {
        char why[256];

        next = c->next;
        if (event_validate(&c->out, why, sizeof(why)) == 0)
            continue;
        wlog(LOG_ERROR, EX_ROLE, c->traceparent, "event_invalid",
             "%s/%s attempt %d: outcome not produced: %s", c->app_id, c->insurer, c->attempt, why);
        ex_ticket_done(c->ticket);
        ex_free_call(x, c);
    }
    if (out->n == 0)
        return 0;
    evs = malloc(sizeof(*evs) * (size_t) out->n);
    sent = calloc(1, sizeof(*sent));
    if (evs == NULL || sent == NULL) {
        free(evs);
        free(sent);
        return -1;
    }
    for (c = out->head; c != NULL; c = c->next)
        evs[n++] = &c->out;
    sent->batch = kafka_produce_start(x->w->producer, evs, n, ex_wakeup, x);
    free(evs);
    if (sent->batch == NULL) {
        free(sent);
        return -1;
    }
    while ((c = out->head) != NULL) {
        c->sent = sent;
        sent->calls++;
        ex_move(x, c, ST_SENT);
    }
    return 0;
}

/* Confirmed outcomes finish their tasks; the calls of a failed produce go back to the outbox,
 * produced again after a backoff that doubles up to EX_PRODUCE_BACKOFF_MAX_MS (librdkafka
 * already retried within message.timeout.ms, so this is an outage). */
static void ex_sent_check(executor_t *x)
{
    call_t *c, *next;
    int     failed = 0, confirmed = 0;

    for (c = x->lists[ST_SENT].head; c != NULL; c = next) {
        int state = kafka_batch_state(c->sent->batch);

        next = c->next;
        if (state > 0)
            continue;
        if (state < 0) {
            if (failed++ == 0 && ex_warn_due(x))
                wlog(LOG_WARN, EX_ROLE, c->traceparent, "kafka_error",
                     "outcomes not confirmed (%s); kept, produced again shortly",
                     kafka_batch_error(c->sent->batch));
            ex_sent_put(c);
            ex_move(x, c, ST_OUTBOX);
            continue;
        }
        confirmed++;
        ex_account(x, c);
        ex_ticket_done(c->ticket);
        ex_free_call(x, c);
    }
    if (failed > 0) {
        x->produce_backoff_ms = x->produce_backoff_ms == 0 ? EX_RETRY_MS
                                : x->produce_backoff_ms * 2 > EX_PRODUCE_BACKOFF_MAX_MS
                                ? EX_PRODUCE_BACKOFF_MAX_MS : x->produce_backoff_ms * 2;
        x->produce_retry_ms = ex_now_ms() + x->produce_backoff_ms;
    } else if (confirmed > 0) {
        x->produce_backoff_ms = 0;
    }
}

/* ---- flow control and waiting -------------------------------------------------------------- */

static int64_t ex_min(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* Sleeps until a socket, a Kafka message or report (the wake pipe) or the next deadline. */
static void ex_wait(executor_t *x)
{
    int64_t now = ex_now_ms();
    int64_t until = now + EX_WAIT_MAX_MS;
    int     n;

    if (x->claim_phase != CL_IDLE)
        until = ex_min(until, x->claim_due_ms);
    else if (x->lists[ST_CLAIM].n > 0)
        until = ex_min(until, x->claim_retry_ms);
    if ((x->lists[ST_BACKLOG].n > 0 && x->lists[ST_RUNNING].n < x->w->cfg->max_in_flight)
        || x->more_queued)
        until = now;
    if (x->lists[ST_OUTBOX].n > 0)
        until = ex_min(until, x->produce_retry_ms);
    for (call_t *c = x->lists[ST_RETRY].head; c != NULL; c = c->next)
        until = ex_min(until, c->due_ms);
    /* a heartbeat due waits for the round trip in flight, whose socket or deadline wakes us */
    if (x->claim_phase == CL_IDLE)
        until = ex_min(until, x->next_heartbeat_ms);
    if (x->curl_due_ms >= 0)
        until = ex_min(until, x->curl_due_ms);
    n = epoll_wait(x->epfd, x->events, EX_EPOLL_EVENTS, until > now ? (int) (until - now) : 0);
    x->nevents = n > 0 ? n : 0;
}

/* ---- the thread ------------------------------------------------------------------------------ */

/* An insurer that holds its share refuses hundreds of calls a second: one warning a second per
 * insurer says so, rather than one per call. */
static void ex_limited_report(executor_t *x)
{
    int64_t                now = ex_now_ms();
    const insurer_list_t  *ins = x->w->insurers;

    if (now - x->limited_report_ms < 1000)
        return;
    x->limited_report_ms = now;
    for (int i = 0; i < ins->n; i++) {
        if (x->limited_by_insurer[i] == 0)
            continue;
        wlog(LOG_WARN, EX_ROLE, NULL, "insurer_limited",
             "%s: %d calls not sent in the last second, %d in flight (its share of the "
             "executor's %d, --insurer-share-pct %d); each failed as an attempt",
             ins->items[i].code, x->limited_by_insurer[i], x->running_by_insurer[i],
             x->w->cfg->max_in_flight, x->w->cfg->insurer_share_pct);
        x->limited_by_insurer[i] = 0;
    }
}

static void ex_loop_once(executor_t *x)
{
    ex_consume(x);
    ex_claim(x);
    ex_start_calls(x);
    ex_perform(x);
    ex_start_calls(x);                  /* retries that could not start go straight on */
    ex_timers(x);
    ex_limited_report(x);
    ex_sent_check(x);
    if (x->lists[ST_OUTBOX].n > 0 && ex_now_ms() >= x->produce_retry_ms
        && ex_flush(x) != 0)
        x->produce_retry_ms = ex_now_ms() + EX_RETRY_MS;
    ex_store_offsets(x);
    ex_heartbeat(x);
    ex_wait(x);
}

static int ex_wake_pipe(executor_t *x)
{
    struct epoll_event ev = { 0 };

    x->wake[0] = x->wake[1] = -1;
    if (pipe(x->wake) != 0)
        return -1;
    for (int i = 0; i < 2; i++)
        fcntl(x->wake[i], F_SETFL, fcntl(x->wake[i], F_GETFL) | O_NONBLOCK);
    x->queue = rd_kafka_queue_get_consumer(x->consumer);
    if (x->queue != NULL)
        rd_kafka_queue_io_event_enable(x->queue, x->wake[1], "1", 1);
    ev.events = EPOLLIN;
    ev.data.fd = x->wake[0];
    return epoll_ctl(x->epfd, EPOLL_CTL_ADD, x->wake[0], &ev);
}

static int ex_init(executor_t *x)
{
    static const char *const topics[] = { "osago.application.task" };
    char                     err[256];

    x->seed = (unsigned) time(NULL) ^ (unsigned) (uintptr_t) x;
    x->wake[0] = x->wake[1] = -1;
    x->curl_due_ms = -1;
    if ((x->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        return -1;
    if ((x->multi = curl_multi_init()) == NULL)
        return -1;
    curl_multi_setopt(x->multi, CURLMOPT_SOCKETFUNCTION, ex_curl_socket);
    curl_multi_setopt(x->multi, CURLMOPT_SOCKETDATA, x);
    curl_multi_setopt(x->multi, CURLMOPT_TIMERFUNCTION, ex_curl_timer);
    curl_multi_setopt(x->multi, CURLMOPT_TIMERDATA, x);
    /* keep a connection per concurrent call alive between calls */
    curl_multi_setopt(x->multi, CURLMOPT_MAXCONNECTS, (long) x->w->cfg->max_in_flight);
    while (!*x->w->stop) {
        x->rebalance.revoked = ex_partitions_revoked;
        x->rebalance.arg = x;
        x->consumer = kafka_consumer_new(x->w->cfg, EX_GROUP, topics, 1, &x->rebalance, err,
                                         sizeof(err));
        if (x->consumer != NULL)
            break;
        wlog(LOG_ERROR, EX_ROLE, NULL, "kafka_error", "consumer not created: %s", err);
        for (int i = 0; i < 50 && !*x->w->stop; i++) {
            struct timespec ts = { 0, 100000000L };

            nanosleep(&ts, NULL);
        }
    }
    if (x->consumer == NULL)
        return -1;
    if (ex_wake_pipe(x) != 0)
        wlog(LOG_WARN, EX_ROLE, NULL, "wake_pipe", "no wake pipe: Kafka polled every %d ms",
             EX_WAIT_MAX_MS);
    return 0;
}

/* ex_release's statements, the calls marked 0 and then those marked 1; -1 if one failed. */
static int ex_release_rows(executor_t *x, const call_state_t *st, int *released)
{
    char back_s[16];
    int  rc = 0;

    snprintf(back_s, sizeof(back_s), "%d", x->w->cfg->redrive_after_s + 1);
    for (int next = 0; next <= 1; next++) {
        ex_arrays_t a = { NULL, NULL, NULL };
        const char *params[5];
        PGresult   *res;
        int64_t     asked_ms = ex_now_ms();

        if (ex_arrays(x, st, 5, next, &a) <= 0) {
            ex_arrays_free(&a);
            continue;
        }
        params[0] = a.apps;
        params[1] = a.codes;
        params[2] = a.attempts;
        params[3] = next ? "1" : "0";
        params[4] = back_s;
        /* prepared on this connection by the loop, or here when it is a new one */
        res = pg_run_prepared_for(x->pg, EX_ROLE, "ex_release", ex_release_sql, 5, params,
                                  EX_RELEASE_TIMEOUT_MS);
        if (res != NULL) {
            *released += atoi(PQcmdTuples(res));
            PQclear(res);
        } else {
            x->connect_unanswered = ex_now_ms() - asked_ms >= EX_RELEASE_TIMEOUT_MS;
            rc = -1;
        }
        ex_arrays_free(&a);
        if (rc != 0)
            break;          /* on a broken connection the next would fail too */
    }
    return rc;
}

/* The claimed calls that never produced anything go back to pending (see ex_release_sql):
 * those whose attempt failed (a retry due or not yet confirmed) at the next attempt, the rest
 * at theirs. Marked 1 and 0 (call_t.mark; no claim is in flight any more). */
static void ex_release(executor_t *x)
{
    static const call_state_t st[] = { ST_BACKLOG, ST_RUNNING, ST_RETRY, ST_OUTBOX, ST_SENT };
    int                       n = 0, released = 0;

    for (int s = 0; s < 5; s++) {
        for (call_t *c = x->lists[st[s]].head; c != NULL; c = c->next) {
            c->mark = st[s] == ST_RETRY || ((st[s] == ST_OUTBOX || st[s] == ST_SENT)
                                            && c->out_kind == OUT_RETRY);
            n++;
        }
    }
    if (n == 0)
        return;
    /* a connection lost on the way is worth one blocking attempt (a refused one fails at once),
     * unless the last one got no answer: the stop would wait the connect timeout for nothing */
    if (x->connect_unanswered && (x->pg == NULL || PQstatus(x->pg) != CONNECTION_OK)) {
        wlog(LOG_WARN, EX_ROLE, NULL, "tasks_not_released",
             "%d unfinished tasks not handed back: PostgreSQL is not answering; the sweeper "
             "re-drives them once their heartbeat is --stale-after-s old", n);
        return;
    }
    /* one that broke while nothing used it fails the first statement: once more on a new one
     * (the statement is idempotent: it changes only rows still running at the call's attempt) */
    for (int tries = 0; tries < 2; tries++) {
        if (ex_pg_blocking(x) != 0 || ex_release_rows(x, st, &released) == 0
            || PQstatus(x->pg) == CONNECTION_OK || x->connect_unanswered)
            break;
    }
    wlog(LOG_INFO, EX_ROLE, NULL, "tasks_released",
         "%d of %d unfinished tasks handed back (the sweeper's next pass re-drives those not "
         "delivered again)", released, n);
}

/* Stopping: results already in hand are worth one more produce; everything unfinished is handed
 * back and left to redelivery (its offset was never stored). */
static void ex_cleanup(executor_t *x)
{
    if (x->consumer != NULL) {
        int64_t until = ex_now_ms() + EX_FINAL_PRODUCE_MS;

        /* not when Kafka just failed us: the stop would only wait for nothing */
        if (x->lists[ST_OUTBOX].n > 0 && x->produce_backoff_ms == 0)
            (void) ex_flush(x);
        while (x->lists[ST_SENT].n > 0 && ex_now_ms() < until) {
            ex_sent_check(x);
            epoll_wait(x->epfd, x->events, EX_EPOLL_EVENTS, 10);  /* ex_wakeup cuts it short */
            x->nevents = 0;
        }
        ex_sent_check(x);
        ex_store_offsets(x);
        ex_claim_finish(x);
        ex_release(x);
    }
    for (int s = 0; s < ST_N; s++) {
        while (x->lists[s].head != NULL) {
            call_t *c = x->lists[s].head;

            if (c->ticket != NULL && c->ticket->orphan)
                free(c->ticket);
            ex_free_call(x, c);
        }
    }
    while (x->parts != NULL) {
        part_t *p = x->parts;

        x->parts = p->next;
        while (p->head != NULL) {
            ticket_t *t = p->head;

            p->head = t->next;
            free(t);
        }
        free(p->topic);
        free(p);
    }
    if (x->queue != NULL) {
        rd_kafka_queue_io_event_enable(x->queue, -1, NULL, 0);
        rd_kafka_queue_destroy(x->queue);
    }
    if (x->consumer != NULL) {
        rd_kafka_consumer_close(x->consumer);
        rd_kafka_destroy(x->consumer);
    }
    for (int i = 0; i < 2; i++)
        if (x->wake[i] >= 0)
            close(x->wake[i]);
    while (x->n_idle_easy > 0)
        curl_easy_cleanup(x->idle_easy[--x->n_idle_easy]);
    if (x->multi != NULL)
        curl_multi_cleanup(x->multi);
    if (x->epfd >= 0)
        close(x->epfd);
    free(x->fd_state);
    if (x->pg != NULL)
        PQfinish(x->pg);
    pg_connecting_free(&x->connecting);
}

void *executor_main(void *arg)
{
    worker_t   *w = arg;
    executor_t *x = calloc(1, sizeof(*x));

    if (x == NULL) {
        wlog(LOG_ERROR, EX_ROLE, NULL, "role_failed", "out of memory");
        return NULL;
    }
    x->w = w;
    x->epfd = -1;
    x->claim_fd = -1;
    if (ex_init(x) == 0) {
        wlog(LOG_INFO, EX_ROLE, NULL, "role_started", "group %s, max_in_flight %d", EX_GROUP,
             w->cfg->max_in_flight);
        while (!*w->stop)
            ex_loop_once(x);
    }
    ex_cleanup(x);
    free(x);
    wlog(LOG_INFO, EX_ROLE, NULL, "role_stopped", "executor stopped");
    return NULL;
}
