/*
 * Kafka events (DESIGN.md): {type, version, event_id, application_id, occurred_at, traceparent,
 * data}. JSON with yajl; decoding validates every field and names what is wrong.
 */
#ifndef OSAGO_WORKER_EVENT_H
#define OSAGO_WORKER_EVENT_H

#include <stddef.h>
#include <stdint.h>

#define EVENT_MAX_INSURERS 64

/* The most bytes an application payload may take as compact JSON with every number in it
 * written out in full, as PostgreSQL's jsonb prints numbers back (1e5 as 100000) for the
 * sweeper's re-drives. It keeps every event, whatever it carries and wherever it came from,
 * far under what a producer sends (message.max.bytes, 1,000,000 by default): one event too
 * large for it would fail its whole batch on every retry. */
#define EVENT_MAX_PAYLOAD (512 * 1024)

typedef enum {
    EV_CREATED = 0,      /* OsagoApplicationCreated     data: {partner, payload} */
    EV_STARTED,          /* OsagoApplicationStarted     data: {insurers: [code...]} */
    EV_TASK,             /* OsagoApplicationTask        data: {insurer, attempt, payload} */
    EV_TASK_RESULT       /* OsagoApplicationTaskResult  data: {insurer, attempt, status: "ok"|"error",
                                                               premium_rub (string, when ok), error (when error)} */
} event_type_t;

typedef struct {
    event_type_t type;
    int          version;                 /* 1 */
    char         event_id[37];            /* UUID */
    char         application_id[37];
    int64_t      occurred_at_ms;          /* encoded as RFC 3339 with ms, UTC */
    char         traceparent[56];

    char         partner[65];             /* created */
    char        *payload;                 /* created, task: the canonical application JSON (malloc'd) */
    int          n_insurers;              /* started */
    char         insurers[EVENT_MAX_INSURERS][33];
    char         insurer[33];             /* task, result */
    int          attempt;                 /* task, result: 1.. */
    int          ok;                      /* result */
    char         premium_rub[32];         /* result, ok: decimal string, e.g. "8734.12" */
    char         error[256];              /* result, error */
} osago_event_t;

const char *event_topic(event_type_t type);      /* "osago.application.created", ... */
const char *event_type_name(event_type_t type);  /* "OsagoApplicationCreated", ... */

/* Random bytes for ids, drawn from the kernel a block at a time by a thread that makes many
 * (the executor: two ids per insurer call, the orchestrator: one per task); NULL where the
 * functions below take one draws each id on its own. Zero-initialise; one per thread. */
typedef struct {
    unsigned char buf[512];
    size_t        left;         /* unused bytes at the end of buf */
} id_pool_t;

/* Fills event_id (random UUID v4) and occurred_at_ms (now). */
void event_stamp(osago_event_t *ev, id_pool_t *pool);

/* Returns malloc'd JSON (*len set), or NULL. */
char *event_encode(const osago_event_t *ev, size_t *len);

/* Returns 0, or -1 with a reason in err ("data.attempt must be 1..10"). ev->payload is malloc'd. */
int  event_decode(const char *json, size_t len, osago_event_t *ev, char *err, size_t errlen);

void event_free(osago_event_t *ev);

/* ---- added with the implementation (event.c) ---- */

/* The checks event_decode makes on the decoded fields, applied to a filled struct: event_encode
 * refuses an event that would not decode (so nothing invalid reaches Kafka). 0, or -1 + err. */
int  event_validate(const osago_event_t *ev, char *err, size_t errlen);

/* Whether event_encode would carry payload (a JSON object, at most 64 levels deep, strings and
 * names strict UTF-8 without a NUL, at most EVENT_MAX_PAYLOAD bytes with its numbers written out): 0, or -1 with the
 * reason in err ("nested deeper than 64 levels"). */
int  event_payload_check(const char *payload, char *err, size_t errlen);

int  event_uuid_valid(const char *s);          /* 8-4-4-4-12 hex digits (either case) */
int  event_code_valid(const char *s);          /* insurer code: [a-z0-9_-]{1,32} */
int  event_traceparent_valid(const char *s);   /* "00-<32 hex>-<16 hex>-<2 hex>", lower case,
                                                  ids not all zero */
void event_traceparent_new(char out[56], id_pool_t *pool);   /* a new trace (random ids, sampled) */
void event_traceparent_child(const char *parent, char out[56], id_pool_t *pool);
                                               /* same trace id, new span id; a new trace when
                                                  parent is not valid */

/* Replaces every byte that is not part of valid UTF-8 with '?', in place (the length stays):
 * text quoted from an insurer's answer must not make a JSON event or log line invalid. */
void event_utf8_sanitize(char *s);

#endif
