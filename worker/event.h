/*
 * Kafka events (DESIGN.md): {type, version, event_id, application_id, occurred_at, traceparent,
 * data}. JSON with yajl; decoding validates every field and names what is wrong.
 */
#ifndef OSAGO_WORKER_EVENT_H
#define OSAGO_WORKER_EVENT_H

#include <stddef.h>
#include <stdint.h>

#define EVENT_MAX_INSURERS 64

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

/* Fills event_id (random UUID v4) and occurred_at_ms (now). */
void event_stamp(osago_event_t *ev);

/* Returns malloc'd JSON (*len set), or NULL. */
char *event_encode(const osago_event_t *ev, size_t *len);

/* Returns 0, or -1 with a reason in err ("data.attempt must be 1..10"). ev->payload is malloc'd. */
int  event_decode(const char *json, size_t len, osago_event_t *ev, char *err, size_t errlen);

void event_free(osago_event_t *ev);

#endif
