/*
 * Prometheus text exposition of metrics_t. Counters are read one by one without a lock: a
 * scrape may see one counter a little ahead of another, which Prometheus tolerates; each
 * histogram is self-consistent (histogram()).
 */
#include "metrics.h"

#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
/* libasan exports these; GCC 12 ships no header for them */
size_t __sanitizer_get_current_allocated_bytes(void);
size_t __sanitizer_get_free_bytes(void);
#endif

/* Upper bounds in ms. An insurer answers in tens of milliseconds to a minute (the timeout); Kafka
 * confirms in a few milliseconds, and in seconds only while a broker is away. An application
 * waits for its slowest insurer, and for minutes only when an insurer times out and is called
 * again (three attempts of up to a minute each, with the backoff between them). */
static const long call_bounds[] = { 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000 };
static const long confirm_bounds[] = { 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000 };
static const long application_bounds[] = { 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000,
                                           120000, 300000 };
#define NBOUNDS(a) ((int)(sizeof(a) / sizeof((a)[0])))

_Static_assert(NBOUNDS(call_bounds) < METRICS_HIST_SLOTS, "too many insurer call bounds");
_Static_assert(NBOUNDS(confirm_bounds) < METRICS_HIST_SLOTS, "too many Kafka confirm bounds");
_Static_assert(NBOUNDS(application_bounds) < METRICS_HIST_SLOTS, "too many application bounds");

static void observe(metrics_hist_t *h, const long *bounds, int nbounds, long ms)
{
    int i = 0;
    if (ms < 0)
        ms = 0;
    while (i < nbounds && ms > bounds[i])
        i++;
    atomic_fetch_add(&h->slot[i], 1);
    atomic_fetch_add(&h->count, 1);
    atomic_fetch_add(&h->sum_ms, (unsigned long)ms);
}

void metrics_observe_attempt(metrics_t *m, int insurer, long ms, metrics_attempt_t outcome)
{
    metrics_insurer_t *by = insurer >= 0 && insurer < INSURERS_MAX ? &m->by_insurer[insurer] : NULL;

    observe(&m->insurer_call_ms, call_bounds, NBOUNDS(call_bounds), ms);
    if (outcome == METRICS_ATTEMPT_OK)
        atomic_fetch_add(&m->insurer_ok, 1);
    else
        atomic_fetch_add(&m->insurer_errors, 1);
    if (outcome == METRICS_ATTEMPT_TIMEOUT)
        atomic_fetch_add(&m->insurer_timeouts, 1);
    if (by == NULL)
        return;
    observe(&by->call_ms, call_bounds, NBOUNDS(call_bounds), ms);
    atomic_fetch_add(outcome == METRICS_ATTEMPT_OK      ? &by->ok
                     : outcome == METRICS_ATTEMPT_ERROR ? &by->error
                                                        : &by->timeout, 1);
}

void metrics_observe_kafka_confirm_ms(metrics_t *m, long ms)
{
    observe(&m->kafka_confirm_ms, confirm_bounds, NBOUNDS(confirm_bounds), ms);
}

void metrics_observe_application_ms(metrics_t *m, long ms)
{
    observe(&m->application_ms, application_bounds, NBOUNDS(application_bounds), ms);
}

struct out {
    char  *buf;
    size_t cap, len;   /* len counts what would have been written, like snprintf */
};

__attribute__((format(printf, 2, 3)))
static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->len < o->cap ? o->buf + o->len : NULL,
                      o->len < o->cap ? o->cap - o->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n;
}

static void counter(struct out *o, const char *name, const char *help, unsigned long v)
{
    put(o, "# HELP osago_worker_%s_total %s\n# TYPE osago_worker_%s_total counter\n"
           "osago_worker_%s_total %lu\n", name, help, name, name, v);
}

static void gauge(struct out *o, const char *name, const char *help, long v)
{
    put(o, "# HELP osago_worker_%s %s\n# TYPE osago_worker_%s gauge\nosago_worker_%s %ld\n",
        name, help, name, name, v);
}

/* One series of a histogram, its labels (`insurer="alfa"`, or "" for none) before le. The
 * buckets, count and +Inf come from the same reads of the slots, so a scrape is always
 * self-consistent; the sum is read apart and may be a call ahead. */
static void histogram_series(struct out *o, const char *name, const char *labels,
                             metrics_hist_t *h, const long *bounds, int nbounds)
{
    unsigned long cumulative = 0;
    int           labelled = labels[0] != '\0';
    const char   *sep = labelled ? "," : "";
    const char   *open = labelled ? "{" : "", *close = labelled ? "}" : "";

    for (int i = 0; i <= nbounds; i++) {
        cumulative += atomic_load(&h->slot[i]);
        if (i < nbounds)
            put(o, "osago_worker_%s_bucket{%s%sle=\"%ld\"} %lu\n", name, labels, sep, bounds[i],
                cumulative);
        else
            put(o, "osago_worker_%s_bucket{%s%sle=\"+Inf\"} %lu\n", name, labels, sep,
                cumulative);
    }
    put(o, "osago_worker_%s_sum%s%s%s %lu\nosago_worker_%s_count%s%s%s %lu\n", name, open, labels,
        close, atomic_load(&h->sum_ms), name, open, labels, close, cumulative);
}

static void histogram(struct out *o, const char *name, const char *help, metrics_hist_t *h,
                      const long *bounds, int nbounds)
{
    put(o, "# HELP osago_worker_%s %s\n# TYPE osago_worker_%s histogram\n", name, help, name);
    histogram_series(o, name, "", h, bounds, nbounds);
}

/* The attempts again by insurer: which one fails or slows down. An insurer's code is
 * [a-z0-9_-] (insurers.h), so it needs no escaping as a label value. */
static void by_insurer(struct out *o, metrics_t *m, const insurer_list_t *insurers)
{
    static const char *const outcome[] = { "ok", "error", "timeout" };
    char labels[64];

    if (insurers == NULL || insurers->n <= 0)
        return;
    put(o, "# HELP osago_worker_insurer_attempts_total Insurer call attempts that ended, by insurer"
           " and outcome (ok: a premium; error: any failure but a timeout; timeout).\n"
           "# TYPE osago_worker_insurer_attempts_total counter\n");
    for (int i = 0; i < insurers->n && i < INSURERS_MAX; i++) {
        metrics_insurer_t *by = &m->by_insurer[i];
        unsigned long      v[3] = { atomic_load(&by->ok), atomic_load(&by->error),
                                    atomic_load(&by->timeout) };

        for (int k = 0; k < 3; k++)
            put(o, "osago_worker_insurer_attempts_total{insurer=\"%s\",outcome=\"%s\"} %lu\n",
                insurers->items[i].code, outcome[k], v[k]);
    }
    put(o, "# HELP osago_worker_insurer_attempt_ms Insurer call time by insurer, in "
           "milliseconds.\n# TYPE osago_worker_insurer_attempt_ms histogram\n");
    for (int i = 0; i < insurers->n && i < INSURERS_MAX; i++) {
        snprintf(labels, sizeof(labels), "insurer=\"%s\"", insurers->items[i].code);
        histogram_series(o, "insurer_attempt_ms", labels, &m->by_insurer[i].call_ms, call_bounds,
                         NBOUNDS(call_bounds));
    }
}

/*
 * Memory as the kernel sees it (resident) and as malloc does (bytes handed out and bytes held
 * free): a soak tells a leak (in use grows with the work done) from fragmentation (resident
 * grows, in use does not). mallinfo2 walks every arena under its lock: once per scrape, never on
 * a role's path.
 */
static void process_memory(struct out *o)
{
    long  resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%*s %ld", &resident) != 1)     /* size, then resident, in pages */
            resident = 0;
        fclose(f);
    }
    put(o, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
           "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %ld\n",
        resident * sysconf(_SC_PAGESIZE));

    size_t in_use, free_bytes;
#ifdef __SANITIZE_ADDRESS__
    /* AddressSanitizer replaces malloc: glibc's arenas would be empty */
    in_use = __sanitizer_get_current_allocated_bytes();
    free_bytes = __sanitizer_get_free_bytes();
#else
    struct mallinfo2 mi = mallinfo2();
    in_use = mi.uordblks + mi.hblkhd;
    free_bytes = mi.fordblks;
#endif
    gauge(o, "heap_in_use_bytes", "Bytes malloc has handed out and not had back.", (long)in_use);
    gauge(o, "heap_free_bytes", "Bytes free inside malloc's arenas, not returned to the system.",
          (long)free_bytes);
}

size_t metrics_render(const metrics_t *cm, const insurer_list_t *insurers, char *buf, size_t cap)
{
    /* atomic_load takes a non-const pointer in C11 (until C17's DR 459): reading is safe */
    metrics_t *m = (metrics_t *)cm;
    struct out o = { buf, cap, 0 };

#define C(field, help) counter(&o, #field, help, atomic_load(&m->field))
    C(intake_relayed, "Intake stream entries stored in PostgreSQL and announced on Kafka.");
    C(intake_claimed, "Intake entries taken over from a dead consumer (XAUTOCLAIM).");
    C(intake_invalid, "Intake entries that could not be relayed (logged and acknowledged).");
    C(applications_started, "Applications for which quote tasks were created.");
    C(tasks_started, "Quote tasks taken by an executor.");
    C(insurer_calls, "Insurer call attempts sent.");
    C(insurer_calls_limited, "Insurer call attempts not sent: the insurer held its share of the "
      "call slots (--insurer-share-pct); failed as attempts, retried.");
    C(insurer_ok, "Insurer calls answered with a premium.");
    C(insurer_errors, "Insurer call attempts that failed (error, timeout, malformed answer).");
    C(insurer_timeouts, "Insurer call attempts that timed out.");
    C(tasks_retried, "Quote tasks retried after a failed attempt.");
    C(tasks_failed, "Quote tasks that ended in error after the last attempt.");
    C(results_applied, "Task results applied to PostgreSQL.");
    C(results_duplicate, "Redelivered task results that changed nothing.");
    C(results_cache_hits,
      "Applications whose results were decided from results' copy of their quotes.");
    C(results_cache_misses, "Applications whose quotes results read again from PostgreSQL.");
    C(applications_completed, "Applications with every quote answered.");
    C(tasks_swept, "Stale quote tasks re-driven by the sweeper.");
    C(tasks_redriven, "Pending quote tasks re-driven by the sweeper (their task was lost).");
    C(applications_redriven,
      "Accepted applications re-driven by the sweeper (their Created event was lost).");
#undef C
    counter(&o, "publish", "Read-model updates published on osago:app-updates.",
            atomic_load(&m->publish_total));
    gauge(&o, "calls_in_flight", "Insurer calls in flight.", atomic_load(&m->calls_in_flight));
    gauge(&o, "redis_up", "1 when the last probe reached Redis.", atomic_load(&m->redis_up));
    gauge(&o, "kafka_up", "1 when the last probe reached Kafka.", atomic_load(&m->kafka_up));
    gauge(&o, "pg_up", "1 when the last probe reached PostgreSQL.", atomic_load(&m->pg_up));

    process_memory(&o);

    histogram(&o, "insurer_call_ms", "Insurer call time in milliseconds.", &m->insurer_call_ms,
              call_bounds, NBOUNDS(call_bounds));
    histogram(&o, "kafka_confirm_ms",
              "Time from producing a batch of events to Kafka confirming all of them, in "
              "milliseconds.", &m->kafka_confirm_ms, confirm_bounds, NBOUNDS(confirm_bounds));
    histogram(&o, "application_ms",
              "Time from an application's acceptance at the edge to its completion (every "
              "insurer answered), in milliseconds.", &m->application_ms, application_bounds,
              NBOUNDS(application_bounds));
    by_insurer(&o, m, insurers);

    if (cap > 0 && o.len >= cap)
        buf[cap - 1] = '\0';
    return o.len;
}
