/*
 * Intake relay: Redis stream osago:intake -> applications row + OsagoApplicationCreated.
 *
 * An entry is acknowledged only after its row is in PostgreSQL and its event is confirmed by
 * Kafka; until then it stays in the group's pending list, where this consumer finds it again
 * (reading its own history from id 0) or, should this process die, another one takes it over
 * with XAUTOCLAIM. Every step is idempotent, so a redelivery only repeats the event.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <yajl/yajl_gen.h>

#include "event.h"
#include "kafka.h"
#include "log.h"
#include "pg.h"
#include "redis_conn.h"
#include "worker.h"

#define RELAY_ROLE        "relay"
#define RELAY_STREAM      "osago:intake"
#define RELAY_GROUP       "osago-worker"
#define RELAY_BATCH       64
#define RELAY_BLOCK_MS    1000
#define RELAY_RETRY_MS    1000
#define RELAY_BACKOFF_MAX_MS 30000
#define RELAY_CLAIM_ROUNDS 16         /* XAUTOCLAIM pages per tick: bounded work per tick */
/* Short enough that a Kafka outage does not keep the relay from reading (and storing) what
 * arrives meanwhile; an event confirmed later than this is produced again (idempotent). */
#define RELAY_PRODUCE_TIMEOUT_MS 5000
#define RELAY_MAX_PAYLOAD (256 * 1024) /* the edge accepts 64k bodies; Kafka takes 1 MB */

typedef struct {
    char          id[48];             /* stream entry id, "ms-seq" */
    int           valid;
    int           stored;             /* its row is in PostgreSQL: inserted now, or found */
    int           oom;
    char          reason[200];
    int64_t       created_ms;
    osago_event_t ev;                 /* the Created event; ev.payload is owned */
} relay_entry_t;

typedef struct {
    worker_t      *w;
    redisContext  *redis;
    PGconn        *pg;
    int            pg_start;          /* the address of --pg its connects start at */
    int            group_ready;
    int            own_pending;       /* some of our own entries are still unacknowledged */
    int64_t        history_due_ms;    /* when to read them again (id 0) */
    int64_t        backoff_ms;        /* since the last batch that went through */
    int64_t        next_claim_ms;
    char           claim_cursor[48];  /* where the next XAUTOCLAIM goes on ("0-0": the head) */
    int64_t        retry_at_ms;       /* Redis trouble: pause until then */
    relay_entry_t  entries[RELAY_BATCH];
    int            n;
} relay_t;

static int64_t relay_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps in short slices so that a stop request is noticed within 100 ms. */
static void relay_nap(relay_t *r, int64_t ms)
{
    int64_t until = relay_now_ms() + ms;

    while (!*r->w->stop) {
        int64_t left = until - relay_now_ms();
        struct timespec ts;

        if (left <= 0)
            return;
        if (left > 100)
            left = 100;
        ts.tv_sec = 0;
        ts.tv_nsec = (long) left * 1000000L;
        nanosleep(&ts, NULL);
    }
}

static void relay_reset_batch(relay_t *r)
{
    for (int i = 0; i < r->n; i++)
        event_free(&r->entries[i].ev);
    memset(r->entries, 0, sizeof(r->entries[0]) * (size_t) r->n);
    r->n = 0;
}

/* ---- validation ---------------------------------------------------------------------- */

static int is_lower_hex(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* The edge makes lowercase ids; the read model key osago:app:{id} must match them exactly. */
static int valid_uuid(const char *s, size_t len)
{
    if (len != 36)
        return 0;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!is_lower_hex((unsigned char) s[i])) {
            return 0;
        }
    }
    return 1;
}

static int valid_partner(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* When the application was accepted: a UUIDv7 (what the edge makes) carries it in its first
 * 48 bits, which keeps created_at identical to the edge's 202 answer; else the entry's id. */
static int64_t created_ms_of(const char *uuid, const char *entry_id)
{
    if (uuid[14] == '7') {
        int64_t ms = 0;

        for (int i = 0; i < 13; i++) {
            if (i == 8)
                continue;
            ms = ms * 16 + (uuid[i] <= '9' ? uuid[i] - '0' : uuid[i] - 'a' + 10);
        }
        return ms;
    }
    return strtoll(entry_id, NULL, 10);
}

static const redisReply *field_of(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i];

        if (k->type == REDIS_REPLY_STRING && strcmp(k->str, name) == 0)
            return fields->element[i + 1]->type == REDIS_REPLY_STRING ? fields->element[i + 1]
                                                                      : NULL;
    }
    return NULL;
}

static int invalid(relay_entry_t *e, const char *fmt, const char *what)
{
    snprintf(e->reason, sizeof(e->reason), fmt, what);
    e->valid = 0;
    return -1;
}

static int check_payload(relay_entry_t *e, const redisReply *payload)
{
    char why[96];

    if (payload == NULL)
        return invalid(e, "missing field %s", "payload");
    if (payload->len > RELAY_MAX_PAYLOAD)
        return invalid(e, "payload over %s bytes", "262144");
    if (strlen(payload->str) != payload->len)
        return invalid(e, "payload %s", "contains a NUL byte");
    /* the encoder's own test: a payload it refused later would fail its whole produce batch
     * on every retry, so what it cannot carry is refused here, where it can be acknowledged */
    if (event_payload_check(payload->str, why, sizeof(why)) != 0)
        return invalid(e, "payload is %s", why);
    return 0;
}

/* Fills e from a stream entry [id, [field, value, ...]]; e->valid says whether to relay it. */
static void relay_parse_entry(const redisReply *entry, relay_entry_t *e)
{
    const redisReply *fields, *app_id, *partner, *trace;

    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2
        || entry->element[0]->type != REDIS_REPLY_STRING) {
        invalid(e, "%s", "malformed stream entry");
        return;
    }
    snprintf(e->id, sizeof(e->id), "%s", entry->element[0]->str);
    fields = entry->element[1];
    if (fields->type != REDIS_REPLY_ARRAY) {
        /* the entry was deleted from the stream while pending: nothing left to relay */
        invalid(e, "%s", "entry no longer in the stream");
        return;
    }
    app_id = field_of(fields, "app_id");
    partner = field_of(fields, "partner");
    trace = field_of(fields, "trace");

    if (app_id == NULL || !valid_uuid(app_id->str, app_id->len)) {
        invalid(e, "app_id %s", app_id == NULL ? "missing" : "is not a lowercase UUID");
        return;
    }
    snprintf(e->ev.application_id, sizeof(e->ev.application_id), "%s", app_id->str);
    if (partner == NULL || !valid_partner(partner->str, partner->len)) {
        invalid(e, "partner %s", partner == NULL ? "missing" : "is not [A-Za-z0-9_.-]{1,64}");
        return;
    }
    if (check_payload(e, field_of(fields, "payload")) < 0)
        return;

    e->ev.type = EV_CREATED;
    e->ev.version = 1;
    snprintf(e->ev.partner, sizeof(e->ev.partner), "%s", partner->str);
    if (trace != NULL && strlen(trace->str) == trace->len && event_traceparent_valid(trace->str)) {
        snprintf(e->ev.traceparent, sizeof(e->ev.traceparent), "%s", trace->str);
    } else {
        /* a bad trace id is no reason to lose an application: start a new trace */
        event_traceparent_new(e->ev.traceparent, NULL);
        wlog(LOG_WARN, RELAY_ROLE, e->ev.traceparent, "intake_trace_replaced",
             "entry %s (%s): trace %s, a new trace starts here", e->id, e->ev.application_id,
             trace == NULL ? "missing" : "malformed");
    }
    e->ev.payload = strdup(field_of(fields, "payload")->str);
    if (e->ev.payload == NULL) {
        e->oom = 1;                   /* not the entry's fault: retried, never acknowledged */
        return;
    }
    event_stamp(&e->ev, NULL);
    /* what Kafka would refuse to carry is refused here, where it can be acknowledged */
    if (event_validate(&e->ev, e->reason, sizeof(e->reason)) != 0)
        return;
    e->created_ms = created_ms_of(e->ev.application_id, e->id);
    e->valid = 1;
}

/* ---- PostgreSQL ---------------------------------------------------------------------- */

/* created_at is when the edge accepted the application; updated_at is when it got here. The
 * sweeper re-drives accepted rows by updated_at: stamped with the edge's time, a backlog
 * relayed after an outage longer than --redrive-after-s would all look stranded on arrival and
 * be started twice. greatest(): updated_at versions the read model, which the edge wrote with
 * its own time. */
static const char relay_insert_sql[] =
    "INSERT INTO applications (id, partner, payload, trace, created_at, updated_at)"
    " SELECT (e->>'id')::uuid, e->>'partner', (e->>'payload')::jsonb, e->>'trace', c.t,"
    "        greatest(now(), c.t)"
    " FROM jsonb_array_elements($1::jsonb) AS e,"
    "  LATERAL (SELECT timestamptz 'epoch'"
    "           + (e->>'created_ms')::bigint * interval '1 millisecond') AS c(t)"
    " ON CONFLICT (id) DO NOTHING"
    " RETURNING id::text";

/*
 * An id stored before is an entry read again (the relay died before its XACK) or, from a writer
 * other than the edge, an id used twice. Either way the stored application is what gets
 * announced: the insurers must quote the row that results will complete, and another partner's
 * entry must not carry its payload under an id that is not its own.
 */
static const char relay_stored_sql[] =
    "SELECT e->>'n', a.partner, a.payload::text, a.trace,"
    "       a.partner = e->>'partner' AND a.payload = (e->>'payload')::jsonb"
    " FROM jsonb_array_elements($1::jsonb) AS e"
    " JOIN applications AS a ON a.id = (e->>'id')::uuid";

static int gen_kv(yajl_gen g, const char *k, const char *v)
{
    return yajl_gen_string(g, (const unsigned char *) k, strlen(k)) == yajl_gen_status_ok
           && yajl_gen_string(g, (const unsigned char *) v, strlen(v)) == yajl_gen_status_ok
           ? 0 : -1;
}

/* n: the entry's place in the batch, by which relay_stored_sql's rows find it */
static int gen_entry(yajl_gen g, const relay_entry_t *e, int n)
{
    return yajl_gen_map_open(g) == yajl_gen_status_ok
           && yajl_gen_string(g, (const unsigned char *) "n", 1) == yajl_gen_status_ok
           && yajl_gen_integer(g, n) == yajl_gen_status_ok
           && gen_kv(g, "id", e->ev.application_id) == 0
           && gen_kv(g, "partner", e->ev.partner) == 0
           && gen_kv(g, "payload", e->ev.payload) == 0
           && gen_kv(g, "trace", e->ev.traceparent) == 0
           && yajl_gen_string(g, (const unsigned char *) "created_ms", 10) == yajl_gen_status_ok
           && yajl_gen_integer(g, e->created_ms) == yajl_gen_status_ok
           && yajl_gen_map_close(g) == yajl_gen_status_ok
           ? 0 : -1;
}

/* The JSON array of the valid entries that pass keep(), for the statements above; NULL when
 * there are none (*none set) or out of memory. */
static yajl_gen relay_gen_entries(relay_t *r, int (*keep)(const relay_t *, int, int), int arg,
                                  const char **json, int *none)
{
    yajl_gen             g = yajl_gen_alloc(NULL);
    const unsigned char *buf;
    size_t               len;
    int                  any = 0;

    *none = 0;
    if (g == NULL || yajl_gen_array_open(g) != yajl_gen_status_ok)
        goto failed;
    for (int i = 0; i < r->n; i++) {
        if (!r->entries[i].valid || !keep(r, i, arg))
            continue;
        if (gen_entry(g, &r->entries[i], i) < 0)
            goto failed;
        any = 1;
    }
    if (!any) {
        *none = 1;
        goto failed;
    }
    if (yajl_gen_array_close(g) != yajl_gen_status_ok
        || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
        goto failed;
    *json = (const char *) buf;
    return g;
failed:
    if (g != NULL)
        yajl_gen_free(g);
    return NULL;
}

static int keep_one(const relay_t *r, int i, int only)
{
    (void) r;
    return only < 0 || i == only;
}

static int keep_not_stored(const relay_t *r, int i, int unused)
{
    (void) unused;
    return !r->entries[i].stored;
}

/*
 * The entry the insert's row for this id came from. An id twice in the batch gives one row, and
 * which entry it came from is not said: both entries are left to relay_adopt_stored, which
 * compares each with the row.
 */
static relay_entry_t *relay_inserted_entry(relay_t *r, const char *application_id)
{
    relay_entry_t *found = NULL;

    for (int i = 0; i < r->n; i++) {
        relay_entry_t *e = &r->entries[i];

        if (e->valid && strcmp(e->ev.application_id, application_id) == 0) {
            if (found != NULL)
                return NULL;
            found = e;
        }
    }
    return found;
}

/* 0 stored; 1 PostgreSQL refused the data itself (a retry cannot help); -1 try again later.
 * only >= 0 selects one entry; -1 means every valid one. */
static int relay_insert(relay_t *r, int only, char *why, size_t whylen)
{
    const char *params[1];
    PGresult   *res;
    int         rc, none;
    yajl_gen    g = relay_gen_entries(r, keep_one, only, &params[0], &none);

    if (g == NULL)
        return none ? 0 : -1;
    res = pg_exec_prepared(r->pg, RELAY_ROLE, "relay_insert", relay_insert_sql, 1, params,
                           &r->w->pg_wait);
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        for (int row = 0; row < PQntuples(res); row++) {
            relay_entry_t *e = relay_inserted_entry(r, PQgetvalue(res, row, 0));

            if (e != NULL)
                e->stored = 1;
        }
        rc = 0;
    } else {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

        /* classes 22 (data exception) and 23 (integrity): this data, not the database */
        rc = state != NULL && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0)
             ? 1 : -1;
        snprintf(why, whylen, "%s", res != NULL ? PQresultErrorMessage(res)
                                                : "given up before PostgreSQL answered");
        why[strcspn(why, "\n")] = '\0';
    }
    PQclear(res);
    yajl_gen_free(g);
    return rc;
}

/* The entry takes the stored application's trace, and its partner and payload where they differ
 * from the entry's. */
static int relay_take_stored(relay_entry_t *e, PGresult *res, int row)
{
    const char *payload = PQgetvalue(res, row, 2);
    const char *trace = PQgetvalue(res, row, 3);
    char        why[160];
    char       *copy;

    if (event_traceparent_valid(trace))
        snprintf(e->ev.traceparent, sizeof(e->ev.traceparent), "%s", trace);
    if (strcmp(PQgetvalue(res, row, 4), "t") == 0)
        return 0;                     /* read again: the entry is the stored application */
    wlog(LOG_WARN, RELAY_ROLE, e->ev.traceparent, "intake_id_reused",
         "entry %s repeats application %s with another partner or payload; the stored"
         " application is announced", e->id, e->ev.application_id);
    if (event_payload_check(payload, why, sizeof(why)) != 0) {
        snprintf(e->reason, sizeof(e->reason), "the stored application's payload is %s", why);
        e->valid = 0;
        return 0;
    }
    copy = strdup(payload);
    if (copy == NULL)
        return -1;
    free(e->ev.payload);
    e->ev.payload = copy;
    snprintf(e->ev.partner, sizeof(e->ev.partner), "%s", PQgetvalue(res, row, 1));
    return 0;
}

/* Entries whose id was stored before announce the stored application (relay_stored_sql);
 * 0, or -1 to try again later. */
static int relay_adopt_stored(relay_t *r)
{
    const char *params[1];
    PGresult   *res;
    int         rc = 0, none;
    yajl_gen    g = relay_gen_entries(r, keep_not_stored, 0, &params[0], &none);

    if (g == NULL)
        return none ? 0 : -1;
    res = pg_run_prepared(r->pg, RELAY_ROLE, "relay_stored", relay_stored_sql, 1, params,
                          &r->w->pg_wait);
    if (res == NULL) {
        yajl_gen_free(g);
        return -1;
    }
    for (int row = 0; row < PQntuples(res) && rc == 0; row++) {
        int            n = atoi(PQgetvalue(res, row, 0));
        relay_entry_t *e = n >= 0 && n < r->n ? &r->entries[n] : NULL;

        if (e != NULL && e->valid && !e->stored) {
            rc = relay_take_stored(e, res, row);
            e->stored = 1;
        }
    }
    /* a row removed since the insert met it (nothing removes them): the next round inserts
     * the entry anew */
    for (int i = 0; i < r->n && rc == 0; i++)
        if (r->entries[i].valid && !r->entries[i].stored) {
            wlog(LOG_WARN, RELAY_ROLE, r->entries[i].ev.traceparent, "pg_error",
                 "application %s of entry %s neither inserted nor found; tried again",
                 r->entries[i].ev.application_id, r->entries[i].id);
            rc = -1;
        }
    PQclear(res);
    yajl_gen_free(g);
    return rc;
}

/* Stores every valid entry; an entry PostgreSQL refuses on its own is made invalid. */
static int relay_store(relay_t *r)
{
    char why[200] = "";
    int  rc = relay_insert(r, -1, why, sizeof(why));

    if (rc < 0) {
        wlog(LOG_WARN, RELAY_ROLE, NULL, "pg_error", "applications not stored: %s", why);
        return rc;
    }
    /* one bad entry must not hold back the others: find it by storing them one by one */
    for (int i = 0; rc == 1 && i < r->n; i++) {
        relay_entry_t *e = &r->entries[i];
        int            one;

        if (!e->valid)
            continue;
        one = relay_insert(r, i, why, sizeof(why));
        if (one < 0) {
            wlog(LOG_WARN, RELAY_ROLE, NULL, "pg_error", "applications not stored: %s", why);
            return -1;
        }
        if (one == 1) {
            snprintf(e->reason, sizeof(e->reason), "refused by PostgreSQL: %s", why);
            e->valid = 0;
        }
    }
    return relay_adopt_stored(r);
}

/* ---- Kafka and the acknowledgement ---------------------------------------------------- */

static int relay_produce(relay_t *r)
{
    const osago_event_t *evs[RELAY_BATCH];
    int                  n = 0;

    for (int i = 0; i < r->n; i++)
        if (r->entries[i].valid)
            evs[n++] = &r->entries[i].ev;
    if (n == 0)
        return 0;
    if (kafka_produce_events(r->w->producer, evs, n, RELAY_PRODUCE_TIMEOUT_MS) != 0) {
        wlog(LOG_WARN, RELAY_ROLE, NULL, "kafka_error",
             "%d OsagoApplicationCreated not confirmed; the entries stay pending", n);
        return -1;
    }
    return 0;
}

static int relay_append_ids(relay_t *r, const char *cmd, int with_group)
{
    const char *argv[3 + RELAY_BATCH];
    int         argc = 0;

    argv[argc++] = cmd;
    argv[argc++] = RELAY_STREAM;
    if (with_group)
        argv[argc++] = RELAY_GROUP;
    for (int i = 0; i < r->n; i++)
        if (r->entries[i].id[0] != '\0')
            argv[argc++] = r->entries[i].id;
    return redisAppendCommandArgv(r->redis, argc, argv, NULL) == REDIS_OK ? 0 : -1;
}

/*
 * XACK, then XDEL: an acknowledged entry is in PostgreSQL and Kafka and nobody reads it again
 * (this group is the stream's only reader), so deleting it keeps the stream's memory flat.
 */
static int relay_ack(relay_t *r)
{
    int rc = 0, ids = 0;

    for (int i = 0; i < r->n; i++)
        ids += r->entries[i].id[0] != '\0';
    if (ids == 0)
        return 0;
    if (relay_append_ids(r, "XACK", 1) < 0 || relay_append_ids(r, "XDEL", 0) < 0) {
        redis_abandon(r->redis, "out of memory mid-pipeline");
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        redisReply *reply = NULL;

        if (redisGetReply(r->redis, (void **) &reply) != REDIS_OK || reply == NULL) {
            wlog(LOG_WARN, RELAY_ROLE, NULL, "redis_error", "XACK/XDEL: %s", r->redis->errstr);
            return -1;
        }
        if (reply->type == REDIS_REPLY_ERROR) {
            wlog(LOG_WARN, RELAY_ROLE, NULL, "redis_error", "XACK/XDEL: %s", reply->str);
            rc = -1;
            redis_failed_over(r->redis, reply);
        }
        freeReplyObject(reply);
    }
    return rc;
}

static void relay_account(relay_t *r, int claimed)
{
    metrics_t *m = r->w->metrics;

    for (int i = 0; i < r->n; i++) {
        relay_entry_t *e = &r->entries[i];

        if (e->id[0] == '\0')
            continue;
        if (e->valid) {
            atomic_fetch_add(&m->intake_relayed, 1);
            wlog(LOG_DEBUG, RELAY_ROLE, e->ev.traceparent, "intake_relayed",
                 "entry %s: application %s stored and announced%s", e->id,
                 e->ev.application_id, claimed ? " (claimed)" : "");
        } else {
            atomic_fetch_add(&m->intake_invalid, 1);
            wlog(LOG_WARN, RELAY_ROLE, e->ev.traceparent[0] ? e->ev.traceparent : NULL,
                 "intake_invalid", "entry %s (app_id %s) acknowledged without relaying: %s",
                 e->id, e->ev.application_id[0] ? e->ev.application_id : "-", e->reason);
        }
    }
}

/* Relays the entries of one read; 0 when all were acknowledged. */
static int relay_process(relay_t *r, const redisReply *entries, int claimed)
{
    int rc = -1;

    relay_reset_batch(r);
    for (size_t i = 0; i < entries->elements && r->n < RELAY_BATCH; i++) {
        const redisReply *entry = entries->element[i];

        if (entry->type == REDIS_REPLY_NIL)
            continue;                 /* Redis 6.2 XAUTOCLAIM: deleted meanwhile */
        relay_parse_entry(entry, &r->entries[r->n++]);
    }
    for (int i = 0; i < r->n; i++)
        if (r->entries[i].oom) {
            relay_reset_batch(r);
            return -1;
        }
    if (r->n > 0 && relay_store(r) == 0 && relay_produce(r) == 0 && relay_ack(r) == 0) {
        relay_account(r, claimed);
        r->backoff_ms = 0;
        rc = 0;
    } else if (r->n == 0) {
        rc = 0;
    }
    relay_reset_batch(r);
    return rc;
}

/* ---- Redis reads ----------------------------------------------------------------------- */

/*
 * Entries of ours stay pending: they are read again from our history a little later. New
 * entries are read meanwhile, so that during a Kafka outage each accepted application still
 * gets its row in PostgreSQL and a place in our pending list (where XAUTOCLAIM finds it
 * should we die).
 */
static void relay_failed(relay_t *r)
{
    /* doubling: each retry queues the unconfirmed events again in librdkafka, so a long outage
     * should not multiply them */
    r->backoff_ms = r->backoff_ms == 0 ? RELAY_RETRY_MS
                    : r->backoff_ms * 2 > RELAY_BACKOFF_MAX_MS ? RELAY_BACKOFF_MAX_MS
                    : r->backoff_ms * 2;
    r->own_pending = 1;
    r->history_due_ms = relay_now_ms() + r->backoff_ms;
}

static void relay_redis_error(relay_t *r, const char *what, const redisReply *reply)
{
    const char *msg = reply != NULL ? reply->str : r->redis->errstr;

    if (reply != NULL && strncmp(reply->str, "NOGROUP", 7) == 0)
        r->group_ready = 0;          /* Redis lost the group (restart without persistence) */
    redis_failed_over(r->redis, reply);
    wlog(LOG_WARN, RELAY_ROLE, NULL, "redis_error", "%s: %s", what, msg[0] ? msg : "no reply");
    relay_failed(r);
    r->retry_at_ms = relay_now_ms() + RELAY_RETRY_MS;
}

static int relay_create_group(relay_t *r)
{
    /* from id 0, not $: entries accepted before the first worker ever ran are relayed too */
    redisReply *reply = redisCommand(r->redis, "XGROUP CREATE %s %s 0 MKSTREAM", RELAY_STREAM,
                                     RELAY_GROUP);
    int         ok = reply != NULL
                     && (reply->type != REDIS_REPLY_ERROR || strncmp(reply->str, "BUSYGROUP", 9) == 0);

    if (!ok) {
        relay_redis_error(r, "XGROUP CREATE", reply);
    } else {
        r->group_ready = 1;
        r->own_pending = 1;
    }
    if (reply != NULL)
        freeReplyObject(reply);
    return ok ? 0 : -1;
}

static redisReply *relay_xread(relay_t *r, int history)
{
    const char *me = r->w->cfg->consumer_name;
    int64_t     block = RELAY_BLOCK_MS;

    if (history)
        return redisCommand(r->redis, "XREADGROUP GROUP %s %s COUNT %d STREAMS %s 0",
                            RELAY_GROUP, me, RELAY_BATCH, RELAY_STREAM);
    /* wake up in time for a due history read; BLOCK 0 would mean forever */
    if (r->own_pending && r->history_due_ms - relay_now_ms() < block)
        block = r->history_due_ms - relay_now_ms();
    if (block < 1)
        block = 1;
    return redisCommand(r->redis, "XREADGROUP GROUP %s %s COUNT %d BLOCK %lld STREAMS %s >",
                        RELAY_GROUP, me, RELAY_BATCH, (long long) block, RELAY_STREAM);
}

/* history: our own pending entries (id 0, never blocks); else new ones (>, waits a while). */
static void relay_read(relay_t *r, int history)
{
    redisReply *reply = relay_xread(r, history);

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        relay_redis_error(r, "XREADGROUP", reply);
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1
               && reply->element[0]->type == REDIS_REPLY_ARRAY
               && reply->element[0]->elements == 2) {
        const redisReply *entries = reply->element[0]->element[1];

        if (history && entries->elements == 0)
            r->own_pending = 0;
        else if (relay_process(r, entries, 0) != 0)
            relay_failed(r);
    } else if (history && reply->type == REDIS_REPLY_NIL) {
        r->own_pending = 0;
    }
    if (reply != NULL)
        freeReplyObject(reply);
}

/*
 * Takes over entries another consumer read but never acknowledged (it died, or is stuck). Redis
 * looks at most ten times COUNT entries of the group's pending list per call, and a tick makes
 * RELAY_CLAIM_ROUNDS calls: a tick that ends before the list does leaves its cursor for the
 * next, so that entries behind a long run of ones still being worked on are reached in a few
 * ticks rather than never.
 */
static void relay_claim(relay_t *r)
{
    char *cursor = r->claim_cursor;
    char  idle[24];

    snprintf(idle, sizeof(idle), "%d", r->w->cfg->claim_idle_ms);
    for (int round = 0; round < RELAY_CLAIM_ROUNDS && !*r->w->stop; round++) {
        redisReply *reply = redisCommand(r->redis, "XAUTOCLAIM %s %s %s %s %s COUNT %d",
                                         RELAY_STREAM, RELAY_GROUP, r->w->cfg->consumer_name,
                                         idle, cursor, RELAY_BATCH);
        int         more = 0;

        if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
            relay_redis_error(r, "XAUTOCLAIM", reply);
        } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2
                   && reply->element[0]->type == REDIS_REPLY_STRING
                   && reply->element[1]->type == REDIS_REPLY_ARRAY) {
            const redisReply *entries = reply->element[1];

            if (entries->elements > 0) {
                atomic_fetch_add(&r->w->metrics->intake_claimed, entries->elements);
                wlog(LOG_WARN, RELAY_ROLE, NULL, "intake_claimed",
                     "took over %zu entries idle for %s ms or more", entries->elements, idle);
            }
            snprintf(cursor, sizeof(r->claim_cursor), "%s", reply->element[0]->str);
            if (relay_process(r, entries, 1) != 0)
                relay_failed(r);
            else
                more = strcmp(cursor, "0-0") != 0;
        }
        if (reply != NULL)
            freeReplyObject(reply);
        if (!more)
            break;
    }
}

/* ---- the thread ------------------------------------------------------------------------ */

static int relay_connected(relay_t *r)
{
    const worker_config_t *cfg = r->w->cfg;

    if (redis_ensure(&r->redis, cfg, RELAY_ROLE, r->w->stop) != 0)
        return 0;
    if (pg_ensure(&r->pg, &r->pg_start, cfg->pg_conninfo, RELAY_ROLE, &r->w->pg_wait) != 0)
        return 0;
    return r->group_ready || relay_create_group(r) == 0;
}

static void relay_tick(relay_t *r)
{
    int64_t now = relay_now_ms();

    if (now < r->retry_at_ms) {
        relay_nap(r, r->retry_at_ms - now);
        return;
    }
    if (now >= r->next_claim_ms) {
        r->next_claim_ms = now + r->w->cfg->claim_idle_ms / 2;
        relay_claim(r);
        if (r->retry_at_ms > now)
            return;
    }
    relay_read(r, r->own_pending && relay_now_ms() >= r->history_due_ms);
}

/*
 * A clean stop leaves the group when this consumer holds no pending entry (a restart has a new
 * name, so the group would list one idle consumer per restart). One with pending entries stays:
 * deleting it would drop them from the group's pending list, and XAUTOCLAIM hands them over.
 */
static void relay_leave_group(relay_t *r)
{
    const char *me = r->w->cfg->consumer_name;
    redisReply *pending, *del;

    if (r->redis == NULL || r->redis->err != 0)
        return;
    pending = redisCommand(r->redis, "XPENDING %s %s - + 1 %s", RELAY_STREAM, RELAY_GROUP, me);
    if (pending != NULL && pending->type == REDIS_REPLY_ARRAY && pending->elements == 0) {
        del = redisCommand(r->redis, "XGROUP DELCONSUMER %s %s %s", RELAY_STREAM, RELAY_GROUP,
                           me);
        freeReplyObject(del);
    }
    freeReplyObject(pending);
}

void *relay_main(void *arg)
{
    worker_t *w = arg;
    relay_t  *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        wlog(LOG_ERROR, RELAY_ROLE, NULL, "role_failed", "out of memory");
        return NULL;
    }
    r->w = w;
    r->own_pending = 1;
    r->next_claim_ms = relay_now_ms() + w->cfg->claim_idle_ms / 2;
    snprintf(r->claim_cursor, sizeof(r->claim_cursor), "0-0");
    wlog(LOG_INFO, RELAY_ROLE, NULL, "role_started", "consumer %s of %s, group %s",
         w->cfg->consumer_name, RELAY_STREAM, RELAY_GROUP);
    if (w->cfg->claim_idle_ms <= RELAY_PRODUCE_TIMEOUT_MS)
        wlog(LOG_WARN, RELAY_ROLE, NULL, "claim_idle_short",
             "--claim-idle-ms %d is not above the relay's %d-ms wait for Kafka: live relays "
             "may take each other's entries (nothing is lost, but Created goes out twice)",
             w->cfg->claim_idle_ms, RELAY_PRODUCE_TIMEOUT_MS);

    while (!*w->stop) {
        if (!relay_connected(r)) {
            relay_nap(r, RELAY_RETRY_MS);
            continue;
        }
        relay_tick(r);
    }

    relay_reset_batch(r);
    relay_leave_group(r);
    if (r->redis != NULL)
        redisFree(r->redis);
    if (r->pg != NULL)
        PQfinish(r->pg);
    free(r);
    wlog(LOG_INFO, RELAY_ROLE, NULL, "role_stopped", "relay stopped");
    return NULL;
}
