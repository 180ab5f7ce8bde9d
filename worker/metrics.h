/* Counters and gauges shown at /metrics (Prometheus text). Lock-free: C11 atomics. */
#ifndef OSAGO_WORKER_METRICS_H
#define OSAGO_WORKER_METRICS_H

#include <stdatomic.h>
#include <stddef.h>

#include "insurers.h"

/* A histogram of milliseconds: slot i counts observations in (bound[i-1], bound[i]] of its
 * bounds (metrics.c), the slot after the last bound those above it. */
#define METRICS_HIST_SLOTS 12

typedef struct {
    atomic_ulong slot[METRICS_HIST_SLOTS];
    atomic_ulong count;
    atomic_ulong sum_ms;
} metrics_hist_t;

/* One insurer's attempts, by its place in the insurer file (insurer_list_t.items). */
typedef struct {
    metrics_hist_t call_ms;
    atomic_ulong   ok, error, timeout;    /* disjoint: error is every failure but a timeout */
} metrics_insurer_t;

/* How an attempt ended, for metrics_observe_attempt. */
typedef enum {
    METRICS_ATTEMPT_OK,
    METRICS_ATTEMPT_ERROR,
    METRICS_ATTEMPT_TIMEOUT
} metrics_attempt_t;

typedef struct {
    atomic_ulong intake_relayed;          /* stream entries stored and announced */
    atomic_ulong intake_claimed;          /* taken over from a dead consumer (XAUTOCLAIM) */
    atomic_ulong intake_invalid;          /* entries that could not be relayed (logged, acked) */
    atomic_ulong applications_started;
    atomic_ulong tasks_started;
    atomic_ulong insurer_calls;           /* attempts sent */
    atomic_ulong insurer_calls_limited;   /* attempts not sent: the insurer held its share */
    atomic_ulong insurer_ok;
    atomic_ulong insurer_errors;          /* by attempt: error, timeout, malformed */
    atomic_ulong insurer_timeouts;
    atomic_ulong tasks_retried;
    atomic_ulong tasks_failed;            /* error after the last attempt */
    atomic_ulong results_applied;
    atomic_ulong results_duplicate;       /* at-least-once redeliveries that changed nothing */
    atomic_ulong results_cache_hits;      /* applications decided from results' copy */
    atomic_ulong results_cache_misses;    /* applications whose quotes were read again */
    atomic_ulong applications_completed;
    atomic_ulong tasks_swept;             /* re-driven by the sweeper */
    atomic_ulong tasks_redriven;          /* pending too long: their Task was lost */
    atomic_ulong applications_redriven;   /* accepted too long: their Created was lost */
    atomic_ulong publish_total;           /* PUBLISH osago:app-updates */
    atomic_long  calls_in_flight;
    metrics_hist_t insurer_call_ms;       /* an insurer call, request to answer */
    metrics_hist_t kafka_confirm_ms;      /* a produced batch, produce to Kafka's last report */
    metrics_hist_t application_ms;        /* an application, accepted at the edge to completed */
    metrics_insurer_t by_insurer[INSURERS_MAX];
    atomic_int   redis_up, kafka_up, pg_up;
} metrics_t;

/*
 * Counters render as osago_worker_<field>_total (publish_total as osago_worker_publish_total),
 * gauges as osago_worker_<field>, the histograms as osago_worker_<field> with le bounds of their
 * own: insurer_call_ms 50 ms to 60 s, kafka_confirm_ms 1 ms to 5 s, application_ms 100 ms to 5
 * min. redis_up, kafka_up and
 * pg_up are set by http.c's probe (every 5 s and on each /readyz): roles need not touch them.
 * metrics_render also shows the process's memory (resident, and malloc's bytes in use and free)
 * and returns the full length like snprintf: >= cap means the text was cut.
 */
/* An insurer call attempt that ended, of the insurer at index `insurer` of the insurer file:
 * its time in insurer_call_ms, its outcome in insurer_ok or insurer_errors (and
 * insurer_timeouts), both again by insurer. */
void   metrics_observe_attempt(metrics_t *m, int insurer, long ms, metrics_attempt_t outcome);
void   metrics_observe_kafka_confirm_ms(metrics_t *m, long ms);
void   metrics_observe_application_ms(metrics_t *m, long ms);
/* Prometheus text; the insurers name the by-insurer series (NULL: none shown). */
size_t metrics_render(const metrics_t *m, const insurer_list_t *insurers, char *buf, size_t cap);

#endif
