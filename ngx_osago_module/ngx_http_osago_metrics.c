/*
 * Counters in the shared zone, and the osago_metrics location that shows
 * them in the Prometheus text format.  Counting is lock-free (atomic adds);
 * only the exposition takes the zone lock, to walk the partner list.
 */

#include "ngx_http_osago_zone.h"


/* Redis round-trip buckets, in microseconds */
static ngx_uint_t  ngx_http_osago_rtt_bounds[NGX_HTTP_OSAGO_RTT_BUCKETS - 1] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 1000000
};


/* application body validation time buckets, in microseconds */
static ngx_uint_t  ngx_http_osago_parse_bounds[NGX_HTTP_OSAGO_PARSE_BUCKETS - 1] = {
    5, 10, 25, 50, 100, 1000, 10000
};

/* wake-up latency buckets (a change heard -> its answer), in microseconds */
static ngx_uint_t  ngx_http_osago_wake_bounds[NGX_HTTP_OSAGO_WAKE_BUCKETS - 1] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000
};

/* in the order of ngx_http_osago_intake_reason_e */
static ngx_str_t  ngx_http_osago_intake_reasons[] = {
    ngx_string("idempotency_key_missing"),
    ngx_string("idempotency_key_malformed"),
    ngx_string("media_type"),
    ngx_string("too_large"),
    ngx_string("idempotency_key_reused"),
    ngx_string("in_progress"),
    ngx_string("user_limited"),
    ngx_string("unavailable"),
    ngx_string("method"),
    ngx_string("invalid_body")
};

static ngx_str_t  ngx_http_osago_redis_errors[] = {
    ngx_string("timeout"),
    ngx_string("disconnect"),
    ngx_string("reply")
};


void
ngx_http_osago_metrics_decision(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_shm_partner_t *sp, ngx_uint_t outcome)
{
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(omcf);

    (void) ngx_atomic_fetch_add(&sh->decisions[outcome], 1);

    switch (outcome) {

    case NGX_HTTP_OSAGO_ALLOWED:
    case NGX_HTTP_OSAGO_FALLBACK_ALLOWED:
        if (sp) {
            (void) ngx_atomic_fetch_add(&sp->allowed, 1);
        }
        break;

    case NGX_HTTP_OSAGO_LIMITED:
    case NGX_HTTP_OSAGO_FALLBACK_LIMITED:
        if (sp) {
            (void) ngx_atomic_fetch_add(&sp->limited, 1);
        }
        break;
    }
}


void
ngx_http_osago_metrics_intake(ngx_http_osago_main_conf_t *omcf,
    ngx_uint_t kind, ngx_uint_t reason)
{
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(omcf);

    switch (kind) {
    case NGX_HTTP_OSAGO_INTAKE_ACCEPTED:
        (void) ngx_atomic_fetch_add(&sh->intake_accepted, 1);
        break;
    case NGX_HTTP_OSAGO_INTAKE_REPLAYED:
        (void) ngx_atomic_fetch_add(&sh->intake_replayed, 1);
        break;
    default:
        (void) ngx_atomic_fetch_add(&sh->intake_rejected[reason], 1);
    }
}


void
ngx_http_osago_metrics_intake_parse(ngx_http_osago_main_conf_t *omcf,
    ngx_uint_t usec)
{
    ngx_uint_t               i;
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(omcf);

    for (i = 0; i < NGX_HTTP_OSAGO_PARSE_BUCKETS - 1; i++) {
        if (usec <= ngx_http_osago_parse_bounds[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&sh->parse_bucket[i], 1);
    (void) ngx_atomic_fetch_add(&sh->parse_count, 1);
    (void) ngx_atomic_fetch_add(&sh->parse_sum_us, usec);
}


void
ngx_http_osago_metrics_poll(ngx_http_osago_main_conf_t *omcf,
    ngx_uint_t event, ngx_uint_t usec)
{
    ngx_uint_t               i;
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(omcf);

    switch (event) {

    case NGX_HTTP_OSAGO_POLL_READ:
        (void) ngx_atomic_fetch_add(&sh->poll_reads, 1);
        break;

    case NGX_HTTP_OSAGO_POLL_AT_ONCE:
        (void) ngx_atomic_fetch_add(&sh->poll_at_once, 1);
        break;

    case NGX_HTTP_OSAGO_POLL_PARKED:
        (void) ngx_atomic_fetch_add(omcf->poll_slot ? &omcf->poll_slot->parked
                                                    : &sh->poll_parked, 1);
        break;

    case NGX_HTTP_OSAGO_POLL_UNPARKED:
        (void) ngx_atomic_fetch_add(omcf->poll_slot ? &omcf->poll_slot->parked
                                                    : &sh->poll_parked,
                                    (ngx_atomic_int_t) -1);
        break;

    case NGX_HTTP_OSAGO_POLL_TIMED_OUT:
        (void) ngx_atomic_fetch_add(&sh->poll_timed_out, 1);
        break;

    case NGX_HTTP_OSAGO_POLL_ID_HELD:
        (void) ngx_atomic_fetch_add(omcf->poll_slot ? &omcf->poll_slot->ids
                                                    : &sh->poll_ids, 1);
        break;

    case NGX_HTTP_OSAGO_POLL_ID_FREED:
        (void) ngx_atomic_fetch_add(omcf->poll_slot ? &omcf->poll_slot->ids
                                                    : &sh->poll_ids,
                                    (ngx_atomic_int_t) -1);
        break;

    case NGX_HTTP_OSAGO_POLL_WOKEN:
        for (i = 0; i < NGX_HTTP_OSAGO_WAKE_BUCKETS - 1; i++) {
            if (usec <= ngx_http_osago_wake_bounds[i]) {
                break;
            }
        }

        (void) ngx_atomic_fetch_add(&sh->wake_bucket[i], 1);
        (void) ngx_atomic_fetch_add(&sh->poll_woken, 1);
        (void) ngx_atomic_fetch_add(&sh->wake_sum_us, usec);
        break;
    }
}


static ngx_uint_t
ngx_http_osago_pid_alive(ngx_pid_t pid)
{
    return pid != 0 && (kill(pid, 0) == 0 || ngx_errno != NGX_ESRCH);
}


/*
 * Takes a slot for this process's parked requests and held ids: a free one,
 * or one whose process is gone (its counts go with it).  The exposition
 * sums the slots of live processes only, so a worker that died with
 * requests parked stops counting at once.  Past the slots (more processes
 * at once than NGX_HTTP_OSAGO_POLL_SLOTS) a process counts in the shared
 * totals, which such a death would leave behind.  A slot under this
 * process's own pid was a dead process's (the pid came round again): it is
 * taken first, or it would count as alive.
 */
void
ngx_http_osago_metrics_poll_slot(ngx_http_osago_main_conf_t *omcf)
{
    ngx_uint_t                   i, pass;
    ngx_atomic_uint_t            pid, self;
    ngx_http_osago_shctx_t      *sh = ngx_http_osago_zone_ctx(omcf);
    ngx_http_osago_poll_slot_t  *slot;

    self = (ngx_atomic_uint_t) ngx_pid;

    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < NGX_HTTP_OSAGO_POLL_SLOTS; i++) {
            slot = &sh->poll_slot[i];
            pid = slot->pid;

            if (pass == 0 ? pid != self
                          : ngx_http_osago_pid_alive((ngx_pid_t) pid))
            {
                continue;
            }

            if (!ngx_atomic_cmp_set(&slot->pid, pid, self)) {
                continue;
            }

            slot->parked = 0;
            slot->ids = 0;
            omcf->poll_slot = slot;
            return;
        }
    }

    omcf->poll_slot = NULL;
}


/*
 * The per-worker gauges are slots by worker number, which a reload's new
 * worker shares with the old one still finishing its requests: an exiting
 * worker leaves the slot to its successor, or its "down" on the way out would
 * read as the new worker's Redis being away.
 */
void
ngx_http_osago_metrics_poll_subscriber(void *data, ngx_uint_t up)
{
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(data);

    if (ngx_worker < NGX_HTTP_OSAGO_MAX_WORKERS && !ngx_exiting) {
        sh->poll_subscribed[ngx_worker] = up;
    }
}


void
ngx_http_osago_metrics_redis_rtt(void *data, ngx_uint_t usec)
{
    ngx_uint_t               i;
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(data);

    for (i = 0; i < NGX_HTTP_OSAGO_RTT_BUCKETS - 1; i++) {
        if (usec <= ngx_http_osago_rtt_bounds[i]) {
            break;
        }
    }

    /* buckets are stored non-cumulative and summed on exposition */
    (void) ngx_atomic_fetch_add(&sh->rtt_bucket[i], 1);
    (void) ngx_atomic_fetch_add(&sh->rtt_count, 1);
    (void) ngx_atomic_fetch_add(&sh->rtt_sum_us, usec);
}


void
ngx_http_osago_metrics_redis_state(void *data, ngx_uint_t up)
{
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(data);

    if (ngx_worker < NGX_HTTP_OSAGO_MAX_WORKERS && !ngx_exiting) {
        sh->redis_up[ngx_worker] = up;
    }
}


void
ngx_http_osago_metrics_redis_error(void *data, ngx_uint_t kind)
{
    ngx_http_osago_shctx_t  *sh = ngx_http_osago_zone_ctx(data);

    (void) ngx_atomic_fetch_add(&sh->redis_errors[kind], 1);
}


#define NGX_HTTP_OSAGO_METRICS_LINE  (128 + NGX_HTTP_OSAGO_NAME_MAX)


/*
 * A histogram whose buckets are kept non-cumulative, in microseconds, the
 * last slot above every bound (only +Inf shows it); the type line first.
 */
static u_char *
ngx_http_osago_metrics_histogram(u_char *p, const char *name,
    const char *help, ngx_uint_t *bounds, ngx_atomic_t *buckets,
    ngx_uint_t n, ngx_atomic_uint_t count, ngx_atomic_uint_t sum_us)
{
    ngx_uint_t  i, cumulative;

    p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s histogram\n", name, help,
                    name);

    cumulative = 0;

    for (i = 0; i < n - 1; i++) {
        cumulative += buckets[i];
        p = ngx_sprintf(p, "%s_bucket{le=\"%ui.%06ui\"} %ui\n", name,
                        bounds[i] / 1000000, bounds[i] % 1000000, cumulative);
    }

    /*
     * an observation lands in its bucket before the count moves, and other
     * workers go on observing while this one reads: a count read earlier
     * than the buckets may be short of them, and +Inf must not be
     */
    cumulative += buckets[n - 1];

    if (count < cumulative) {
        count = cumulative;
    }

    return ngx_sprintf(p,
                       "%s_bucket{le=\"+Inf\"} %uA\n"
                       "%s_sum %uA.%06uA\n"
                       "%s_count %uA\n",
                       name, count, name, sum_us / 1000000, sum_us % 1000000,
                       name, count);
}


static ngx_int_t
ngx_http_osago_metrics_handler(ngx_http_request_t *r)
{
    size_t                         size;
    u_char                        *p;
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_uint_t                     i, n, workers;
    ngx_atomic_uint_t              parked, ids;
    ngx_queue_t                   *q;
    ngx_core_conf_t               *ccf;
    ngx_http_osago_zone_t         *ozone;
    ngx_http_osago_shctx_t        *sh;
    ngx_http_osago_main_conf_t    *omcf;
    ngx_http_osago_shm_partner_t  *sp;

    static ngx_str_t  type = ngx_string("text/plain; version=0.0.4");

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    omcf = ngx_http_get_module_main_conf(r, ngx_http_osago_module);
    ozone = omcf->shm_zone->data;
    sh = ozone->sh;

    ccf = (ngx_core_conf_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                           ngx_core_module);
    workers = ngx_min((ngx_uint_t) ccf->worker_processes,
                      NGX_HTTP_OSAGO_MAX_WORKERS);

    ngx_shmtx_lock(&ozone->shpool->mutex);

    n = 0;
    for (q = ngx_queue_head(&sh->partners);
         q != ngx_queue_sentinel(&sh->partners);
         q = ngx_queue_next(q))
    {
        n++;
    }

    size = 8192
           + (NGX_HTTP_OSAGO_OUTCOME_MAX + NGX_HTTP_OSAGO_RTT_BUCKETS
              + NGX_HTTP_OSAGO_REDIS_ERR_MAX + NGX_HTTP_OSAGO_PARSE_BUCKETS
              + NGX_HTTP_OSAGO_INTAKE_REASON_MAX + NGX_HTTP_OSAGO_WAKE_BUCKETS
              + 2 * workers + 2 * n)
             * NGX_HTTP_OSAGO_METRICS_LINE;

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        ngx_shmtx_unlock(&ozone->shpool->mutex);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    p = ngx_sprintf(p,
            "# HELP osago_limit_decisions_total Rate limiter decisions.\n"
            "# TYPE osago_limit_decisions_total counter\n");

    for (i = 0; i < NGX_HTTP_OSAGO_OUTCOME_MAX; i++) {
        p = ngx_sprintf(p, "osago_limit_decisions_total{outcome=\"%V\"} %uA\n",
                        &ngx_http_osago_outcome_names[i], sh->decisions[i]);
    }

    p = ngx_sprintf(p,
            "# HELP osago_limit_partner_decisions_total "
            "Admitted and limited requests by partner.\n"
            "# TYPE osago_limit_partner_decisions_total counter\n");

    /* partner names are [A-Za-z0-9_.-], safe inside a label value */
    for (q = ngx_queue_head(&sh->partners);
         q != ngx_queue_sentinel(&sh->partners);
         q = ngx_queue_next(q))
    {
        sp = ngx_queue_data(q, ngx_http_osago_shm_partner_t, queue);

        p = ngx_sprintf(p,
                "osago_limit_partner_decisions_total"
                "{partner=\"%*s\",outcome=\"allowed\"} %uA\n"
                "osago_limit_partner_decisions_total"
                "{partner=\"%*s\",outcome=\"limited\"} %uA\n",
                sp->name_len, sp->name, sp->allowed,
                sp->name_len, sp->name, sp->limited);
    }

    ngx_shmtx_unlock(&ozone->shpool->mutex);

    p = ngx_http_osago_metrics_histogram(p, "osago_redis_rtt_seconds",
            "Redis round-trip time.", ngx_http_osago_rtt_bounds,
            sh->rtt_bucket, NGX_HTTP_OSAGO_RTT_BUCKETS, sh->rtt_count,
            sh->rtt_sum_us);

    p = ngx_sprintf(p,
            "# HELP osago_redis_up Whether the worker's Redis connection "
            "is ready.\n"
            "# TYPE osago_redis_up gauge\n");

    for (i = 0; i < workers; i++) {
        p = ngx_sprintf(p, "osago_redis_up{worker=\"%ui\"} %uA\n",
                        i, sh->redis_up[i]);
    }

    p = ngx_sprintf(p,
            "# HELP osago_redis_errors_total Redis commands that failed.\n"
            "# TYPE osago_redis_errors_total counter\n");

    for (i = 0; i < NGX_HTTP_OSAGO_REDIS_ERR_MAX; i++) {
        p = ngx_sprintf(p, "osago_redis_errors_total{kind=\"%V\"} %uA\n",
                        &ngx_http_osago_redis_errors[i], sh->redis_errors[i]);
    }

    p = ngx_sprintf(p,
            "# HELP osago_intake_requests_total Application submissions "
            "by result.\n"
            "# TYPE osago_intake_requests_total counter\n"
            "osago_intake_requests_total{result=\"accepted\"} %uA\n"
            "osago_intake_requests_total{result=\"replayed\"} %uA\n",
            sh->intake_accepted, sh->intake_replayed);

    p = ngx_sprintf(p,
            "# HELP osago_intake_rejected_total Application submissions "
            "refused, by reason.\n"
            "# TYPE osago_intake_rejected_total counter\n");

    for (i = 0; i < NGX_HTTP_OSAGO_INTAKE_REASON_MAX; i++) {
        p = ngx_sprintf(p, "osago_intake_rejected_total{reason=\"%V\"} %uA\n",
                        &ngx_http_osago_intake_reasons[i],
                        sh->intake_rejected[i]);
    }

    p = ngx_http_osago_metrics_histogram(p, "osago_intake_parse_seconds",
            "Time to validate and canonicalise an application body.",
            ngx_http_osago_parse_bounds, sh->parse_bucket,
            NGX_HTTP_OSAGO_PARSE_BUCKETS, sh->parse_count, sh->parse_sum_us);

    parked = sh->poll_parked;
    ids = sh->poll_ids;

    for (i = 0; i < NGX_HTTP_OSAGO_POLL_SLOTS; i++) {
        if (ngx_http_osago_pid_alive((ngx_pid_t) sh->poll_slot[i].pid)) {
            parked += sh->poll_slot[i].parked;
            ids += sh->poll_slot[i].ids;
        }
    }

    p = ngx_sprintf(p,
            "# HELP osago_poll_parked Status requests parked now, waiting "
            "for a change.\n"
            "# TYPE osago_poll_parked gauge\n"
            "osago_poll_parked %uA\n"
            "# HELP osago_poll_ids Application ids held in memory for "
            "parked or reading requests (once per worker per id).\n"
            "# TYPE osago_poll_ids gauge\n"
            "osago_poll_ids %uA\n"
            "# HELP osago_poll_answered_total Status requests answered, by "
            "how.\n"
            "# TYPE osago_poll_answered_total counter\n"
            "osago_poll_answered_total{how=\"at_once\"} %uA\n"
            "osago_poll_answered_total{how=\"woken\"} %uA\n"
            "osago_poll_answered_total{how=\"timed_out\"} %uA\n"
            "# HELP osago_poll_reads_total Reads of the read model for "
            "status requests (one per wake-up, however many wait).\n"
            "# TYPE osago_poll_reads_total counter\n"
            "osago_poll_reads_total %uA\n",
            parked, ids, sh->poll_at_once, sh->poll_woken,
            sh->poll_timed_out, sh->poll_reads);

    p = ngx_http_osago_metrics_histogram(p, "osago_poll_wake_seconds",
            "From a change heard on osago:app-updates to a parked request's "
            "answer.", ngx_http_osago_wake_bounds, sh->wake_bucket,
            NGX_HTTP_OSAGO_WAKE_BUCKETS, sh->poll_woken, sh->wake_sum_us);

    p = ngx_sprintf(p,
            "# HELP osago_poll_subscribed Whether the worker's "
            "osago:app-updates subscriber connection is up.\n"
            "# TYPE osago_poll_subscribed gauge\n");

    for (i = 0; i < workers; i++) {
        p = ngx_sprintf(p, "osago_poll_subscribed{worker=\"%ui\"} %uA\n",
                        i, sh->poll_subscribed[i]);
    }

    b->last = p;

    return ngx_http_osago_send(r, NGX_HTTP_OK, &type, b);
}


char *
ngx_http_osago_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_osago_main_conf_t  *omcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_osago_metrics_handler;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_osago_module);
    omcf->used = 1;

    return NGX_CONF_OK;
}
