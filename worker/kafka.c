/*
 * librdkafka wrappers.
 *
 * Producer: one idempotent producer shared by every role thread, with its own thread serving
 * delivery reports. A produce is a batch: its struct is each message's opaque, counts the
 * reports still due and is reference counted (the caller plus one per message), so it outlives
 * a caller that stopped waiting. Callers either wait for the batch (kafka_produce_events) or
 * start it and look at it later (kafka_produce_start), optionally told through on_done.
 *
 * Consumers: auto-commit stays on, but only offsets stored by kafka_done() are committed, so an
 * offset never runs ahead of durable work (librdkafka 2.0: rd_kafka_offsets_store; there is no
 * rd_kafka_offset_store_message before 2.1).
 */
#include "kafka.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define KAFKA_POLLER_MS 100   /* how long a stop waits for the delivery-report thread */

struct kafka_producer {
    rd_kafka_t   *rk;
    pthread_t     poller;
    int           poller_started;
    atomic_int    closing;
    atomic_int    fatal;      /* librdkafka raised a fatal error: this producer is done */
    metrics_t    *metrics;
};

struct kafka_batch {
    atomic_int      refs;       /* the caller + one per message not yet reported */
    atomic_int      pending;    /* messages not yet reported */
    atomic_int      failed;
    atomic_int      first_err;  /* rd_kafka_resp_err_t of the first failure */
    pthread_mutex_t lock;       /* on_done against kafka_batch_release, and the waiter */
    pthread_cond_t  done;
    void          (*on_done)(void *arg);
    void           *arg;
    metrics_t      *metrics;    /* the producer's, for the time to the last report */
    struct timespec started;
};

static void batch_unref(kafka_batch_t *b)
{
    if (atomic_fetch_sub(&b->refs, 1) == 1) {
        pthread_cond_destroy(&b->done);
        pthread_mutex_destroy(&b->lock);
        free(b);
    }
}

/* The last report of a batch wakes its waiter and calls on_done, under the lock so that a
 * caller releasing the batch at that moment never sees on_done run after the release. */
static void batch_reported(kafka_batch_t *b)
{
    if (atomic_fetch_sub(&b->pending, 1) == 1) {
        if (b->metrics != NULL) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            metrics_observe_kafka_confirm_ms(b->metrics,
                                             (now.tv_sec - b->started.tv_sec) * 1000L +
                                             (now.tv_nsec - b->started.tv_nsec) / 1000000L);
        }
        pthread_mutex_lock(&b->lock);
        pthread_cond_broadcast(&b->done);
        if (b->on_done != NULL)
            b->on_done(b->arg);
        pthread_mutex_unlock(&b->lock);
    }
    batch_unref(b);
}

static void batch_fail(kafka_batch_t *b, rd_kafka_resp_err_t err)
{
    int none = 0;
    atomic_compare_exchange_strong(&b->first_err, &none, (int)err);
    atomic_fetch_add(&b->failed, 1);
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    kafka_batch_t *b = msg->_private;
    (void)rk, (void)opaque;
    if (b == NULL)
        return;
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
        batch_fail(b, msg->err);
    batch_reported(b);
}

/* Delivery reports are served here, so no producing thread has to poll, nor wait to. */
static void *poller_main(void *arg)
{
    kafka_producer_t *p = arg;
    while (!atomic_load(&p->closing))
        rd_kafka_poll(p->rk, KAFKA_POLLER_MS);
    return NULL;
}

/* librdkafka's own log lines become JSON lines like every other. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    if (strcmp(fac, "FAIL") == 0)
        return;     /* the same failure reaches error_cb, which logs it */
    enum log_level l = level <= 3 ? LOG_ERROR : level == 4 ? LOG_WARN
                     : level <= 6 ? LOG_INFO : LOG_DEBUG;
    wlog(l, "kafka", NULL, "rdkafka", "%s %s: %s", rd_kafka_name(rk), fac, buf);
}

/*
 * A fatal error leaves the idempotent producer unable to produce anything again (a refused
 * producer id, a fenced epoch): every role would fail its batches for ever while /healthz said
 * fine. The process stops instead and exits 1 (main.c), so its supervisor starts a new one with
 * a new producer; what was not confirmed is not acknowledged and is done again. Only the
 * producer's opaque is a producer: consumers raise fatal errors only with static group
 * membership (group.instance.id), which the worker does not use.
 */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_producer_t *p = rd_kafka_type(rk) == RD_KAFKA_PRODUCER ? opaque : NULL;

    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        wlog(LOG_ERROR, "kafka", NULL, "kafka_fatal", "%s: fatal error %s: %s%s",
             rd_kafka_name(rk), rd_kafka_err2name(orig), why,
             p != NULL ? "; stopping, to be restarted with a new producer" : "");
        if (p != NULL && atomic_exchange(&p->fatal, 1) == 0)
            kill(getpid(), SIGTERM);     /* blocked in every thread: the main thread takes it */
        return;
    }
    /* transport errors repeat while a broker is down; librdkafka retries by itself */
    wlog(LOG_WARN, "kafka", NULL, "kafka_error", "%s: %s: %s", rd_kafka_name(rk),
         rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static int set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
               size_t errlen)
{
    char why[256];
    if (rd_kafka_conf_set(conf, name, value, why, sizeof(why)) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "kafka: %s=%s: %s", name, value, why);
        return -1;
    }
    return 0;
}

static rd_kafka_conf_t *common_conf(const worker_config_t *cfg, const char *client_id, char *err,
                                    size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (set(conf, "bootstrap.servers", cfg->kafka_bootstrap, err, errlen) < 0 ||
        set(conf, "client.id", client_id, err, errlen) < 0 ||
        set(conf, "log.connection.close", "false", err, errlen) < 0 ||
        /* requests are small and latency is the point: a request written while the previous
         * one is unacknowledged must not wait for the ACK (measured at 300/s: added latency
         * p50 42-44 -> 38 ms) */
        set(conf, "socket.nagle.disable", "true", err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    return conf;
}

kafka_producer_t *kafka_producer_new(const worker_config_t *cfg, metrics_t *metrics, char *err,
                                     size_t errlen)
{
    char why[512], linger[16];
    rd_kafka_conf_t *conf = common_conf(cfg, "osago-worker", err, errlen);
    if (conf == NULL)
        return NULL;
    snprintf(linger, sizeof(linger), "%d", cfg->kafka_linger_ms);
    /* acks=all and idempotence: a retried send is written once, in order, per partition.
     * message.timeout.ms bounds how long an undeliverable event stays queued: the caller
     * has given up long before and will produce it again. */
    if (set(conf, "enable.idempotence", "true", err, errlen) < 0 ||
        set(conf, "acks", "all", err, errlen) < 0 ||
        set(conf, "linger.ms", linger, err, errlen) < 0 ||
        set(conf, "message.timeout.ms", "60000", err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);

    kafka_producer_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "kafka: out of memory");
        return NULL;
    }
    p->metrics = metrics;
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    if (p->rk == NULL) {   /* conf is still ours on failure */
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "kafka: cannot create the producer: %s", why);
        free(p);
        return NULL;
    }
    if (pthread_create(&p->poller, NULL, poller_main, p) != 0) {
        snprintf(err, errlen, "kafka: cannot start the delivery report thread");
        rd_kafka_destroy(p->rk);
        free(p);
        return NULL;
    }
    p->poller_started = 1;
    return p;
}

void kafka_producer_free(kafka_producer_t *p)
{
    if (p == NULL)
        return;
    if (p->poller_started) {
        atomic_store(&p->closing, 1);
        pthread_join(p->poller, NULL);
    }
    if (rd_kafka_flush(p->rk, 5000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        wlog(LOG_WARN, "kafka", NULL, "kafka_flush_timeout",
             "%d message(s) undelivered at shutdown; they will be produced again by whoever "
             "retries the work", rd_kafka_outq_len(p->rk));
        /* purged messages get their delivery reports (releasing their calls) on the flush */
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(p->rk, 1000);
    }
    rd_kafka_destroy(p->rk);
    free(p);
}

kafka_batch_t *kafka_produce_start(kafka_producer_t *p, const osago_event_t *const *evs, int n,
                                   void (*on_done)(void *arg), void *arg)
{
    kafka_batch_t *b = calloc(1, sizeof(*b));
    char         **json = calloc((size_t)(n > 0 ? n : 1), sizeof(*json));
    size_t        *len = calloc((size_t)(n > 0 ? n : 1), sizeof(*len));
    int            i;

    if (b == NULL || json == NULL || len == NULL) {
        free(b), free(json), free(len);
        wlog(LOG_ERROR, "kafka", NULL, "kafka_produce_failed", "out of memory");
        return NULL;
    }
    atomic_init(&b->refs, 1);
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->done, NULL);

    /* encode everything first: an invalid event fails the batch before any of it is sent */
    for (i = 0; i < n; i++) {
        json[i] = event_encode(evs[i], &len[i]);
        if (json[i] == NULL) {
            char why[256], what[200];

            /* event_encode says only that it failed: the checks it makes say why */
            if (event_validate(evs[i], why, sizeof(why)) == 0) {
                if (evs[i]->payload != NULL
                    && event_payload_check(evs[i]->payload, what, sizeof(what)) != 0)
                    snprintf(why, sizeof(why), "payload is %s", what);
                else
                    snprintf(why, sizeof(why), "out of memory");
            }
            wlog(LOG_ERROR, "kafka", evs[i]->traceparent, "kafka_encode_failed",
                 "%s for application %s not produced: %s", event_type_name(evs[i]->type),
                 evs[i]->application_id, why);
            batch_fail(b, RD_KAFKA_RESP_ERR__BAD_MSG);
            goto out;
        }
    }

    /* Each message is counted before producev: the report thread may see it at once. One
     * extra count, dropped after the loop, keeps on_done from running before every message
     * of the batch was handed over. */
    atomic_store(&b->pending, 1);
    b->on_done = on_done;
    b->arg = arg;
    b->metrics = p->metrics;
    clock_gettime(CLOCK_MONOTONIC, &b->started);
    for (i = 0; i < n; i++) {
        const osago_event_t *ev = evs[i];
        rd_kafka_headers_t  *h = rd_kafka_headers_new(1);
        rd_kafka_resp_err_t  err;

        rd_kafka_header_add(h, "traceparent", -1, ev->traceparent, -1);
        atomic_fetch_add(&b->refs, 1);
        atomic_fetch_add(&b->pending, 1);
        err = rd_kafka_producev(p->rk,
                                RD_KAFKA_V_TOPIC(event_topic(ev->type)),
                                RD_KAFKA_V_KEY(ev->application_id, strlen(ev->application_id)),
                                RD_KAFKA_V_VALUE(json[i], len[i]),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                                RD_KAFKA_V_HEADERS(h),
                                RD_KAFKA_V_OPAQUE(b),
                                RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            json[i] = NULL;     /* librdkafka frees it */
            continue;
        }
        /* on failure the payload and headers are still ours, and there is no report */
        rd_kafka_headers_destroy(h);
        atomic_fetch_sub(&b->pending, 1);
        atomic_fetch_sub(&b->refs, 1);
        wlog(LOG_ERROR, "kafka", ev->traceparent, "kafka_produce_failed",
             "%s for application %s not produced: %s", event_type_name(ev->type),
             ev->application_id, rd_kafka_err2str(err));
        batch_fail(b, err);
        break;      /* the rest would fail alike (queue full, fatal); the batch is retried */
    }
    atomic_fetch_add(&b->refs, 1);
    batch_reported(b);              /* the extra count: now on_done may run */
out:
    for (int k = 0; k < n; k++)
        free(json[k]);
    free(json);
    free(len);
    return b;
}

int kafka_batch_state(kafka_batch_t *b)
{
    if (atomic_load(&b->pending) > 0)
        return 1;
    return atomic_load(&b->failed) > 0 ? -1 : 0;
}

const char *kafka_batch_error(kafka_batch_t *b)
{
    int e = atomic_load(&b->first_err);
    return e != 0 ? rd_kafka_err2str((rd_kafka_resp_err_t)e) : "not confirmed in time";
}

void kafka_batch_release(kafka_batch_t *b)
{
    if (b == NULL)
        return;
    pthread_mutex_lock(&b->lock);
    b->on_done = NULL;
    pthread_mutex_unlock(&b->lock);
    batch_unref(b);
}

int kafka_produce_events(kafka_producer_t *p, const osago_event_t *const *evs, int n,
                         int timeout_ms)
{
    struct timespec until;
    kafka_batch_t  *b;
    int             state;

    if (n <= 0)
        return 0;
    if ((b = kafka_produce_start(p, evs, n, NULL, NULL)) == NULL)
        return -1;
    clock_gettime(CLOCK_REALTIME, &until);      /* the condition variable's clock */
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->lock);
    while (atomic_load(&b->pending) > 0
           && pthread_cond_timedwait(&b->done, &b->lock, &until) == 0)
        ;
    pthread_mutex_unlock(&b->lock);
    state = kafka_batch_state(b);
    if (state != 0)
        wlog(LOG_WARN, "kafka", evs[0]->traceparent, "kafka_not_confirmed",
             "%d of %d event(s) for application %s not confirmed within %d ms: %s",
             state > 0 ? atomic_load(&b->pending) + atomic_load(&b->failed)
                       : atomic_load(&b->failed),
             n, evs[0]->application_id, timeout_ms, kafka_batch_error(b));
    kafka_batch_release(b);
    return state == 0 ? 0 : -1;
}

/* "topic [0,1,3]; topic2 [2]" into buf, for the rebalance's log line. */
static void partitions_text(const rd_kafka_topic_partition_list_t *parts, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (int i = 0; i < parts->cnt && used < len; i++) {
        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
        int same = i > 0 && strcmp(parts->elems[i - 1].topic, tp->topic) == 0;
        int n = same ? snprintf(buf + used, len - used, ",%d", (int)tp->partition)
                     : snprintf(buf + used, len - used, "%s%s [%d", i > 0 ? "]; " : "",
                                tp->topic, (int)tp->partition);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    if (parts->cnt > 0 && used < len)
        snprintf(buf + used, len - used, "]");
}

/* librdkafka's own handling, plus the role's hook before partitions go, and a log line either
 * way (which partitions a member holds is the first question about a stuck partition). */
static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    const kafka_rebalance_hook_t *hook = opaque;
    const char *protocol = rd_kafka_rebalance_protocol(rk);
    int cooperative = protocol != NULL && strcmp(protocol, "COOPERATIVE") == 0;
    char list[512];
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;

    partitions_text(parts, list, sizeof(list));
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        wlog(LOG_INFO, "kafka", NULL, "partitions_assigned", "%s: %s", rd_kafka_name(rk), list);
        if (cooperative)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            e = rd_kafka_assign(rk, parts);
    } else {
        if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            wlog(LOG_WARN, "kafka", NULL, "rebalance_error", "%s: %s", rd_kafka_name(rk),
                 rd_kafka_err2str(err));
        wlog(LOG_INFO, "kafka", NULL, "partitions_revoked", "%s: %s", rd_kafka_name(rk), list);
        hook->revoked(hook->arg, parts);
        if (cooperative)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            e = rd_kafka_assign(rk, NULL);
    }
    if (error != NULL) {
        e = rd_kafka_error_code(error);
        rd_kafka_error_destroy(error);
    }
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        wlog(LOG_ERROR, "kafka", NULL, "kafka_error", "%s: %s failed: %s", rd_kafka_name(rk),
             err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? "assign" : "unassign",
             rd_kafka_err2str(e));
}

rd_kafka_t *kafka_consumer_new(const worker_config_t *cfg, const char *group,
                               const char *const *topics, int ntopics,
                               kafka_rebalance_hook_t *hook, char *err, size_t errlen)
{
    char why[512], num[16], wait[16], client_id[192];
    int session = cfg->kafka_session_timeout_ms > 0 ? cfg->kafka_session_timeout_ms : 10000;

    snprintf(client_id, sizeof(client_id), "%s-%s", group,
             cfg->consumer_name != NULL ? cfg->consumer_name : "worker");
    rd_kafka_conf_t *conf = common_conf(cfg, client_id, err, errlen);
    if (conf == NULL)
        return NULL;
    snprintf(num, sizeof(num), "%d", session);
    snprintf(wait, sizeof(wait), "%d", cfg->kafka_fetch_wait_ms > 0 ? cfg->kafka_fetch_wait_ms
                                                                    : 100);
    if (set(conf, "group.id", group, err, errlen) < 0 ||
        set(conf, "enable.auto.commit", "true", err, errlen) < 0 ||
        set(conf, "enable.auto.offset.store", "false", err, errlen) < 0 ||
        set(conf, "auto.commit.interval.ms", "1000", err, errlen) < 0 ||
        set(conf, "auto.offset.reset", "earliest", err, errlen) < 0 ||
        /* Kafka (and tools/devbroker) answers a waiting fetch as soon as data arrives, so
         * this is only how often an idle consumer asks; it also bounds how long a request
         * queued behind a fetch on the same connection waits (less than librdkafka's 500) */
        set(conf, "fetch.wait.max.ms", wait, err, errlen) < 0 ||
        /* what librdkafka prefetches while a role is busy (the executor stops taking tasks
         * at --max-in-flight and lets them wait here): 16 MB, not the default 64 MB */
        set(conf, "queued.max.messages.kbytes", "16384", err, errlen) < 0 ||
        set(conf, "session.timeout.ms", num, err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    /* the heartbeat must come well within the session timeout, or a short one never holds */
    snprintf(num, sizeof(num), "%d", session / 3 < 3000 ? session / 3 : 3000);
    if (set(conf, "heartbeat.interval.ms", num, err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }

    /* only with a hook: a callback makes a rebalance wait for the role's next poll, where
     * librdkafka would otherwise assign and revoke on its own thread */
    if (hook != NULL) {
        rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
        rd_kafka_conf_set_opaque(conf, hook);
    }

    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "kafka: cannot create consumer %s: %s", group, why);
        return NULL;
    }
    /* one queue: rd_kafka_consumer_poll also serves the log, error and rebalance events */
    rd_kafka_poll_set_consumer(rk);

    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(ntopics);
    for (int i = 0; i < ntopics; i++)
        rd_kafka_topic_partition_list_add(list, topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "kafka: consumer %s cannot subscribe: %s", group,
                 rd_kafka_err2str(e));
        rd_kafka_destroy(rk);
        return NULL;
    }
    return rk;
}

void kafka_done(rd_kafka_t *consumer, const rd_kafka_message_t *msg)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(msg->rkt), msg->partition)
        ->offset = msg->offset + 1;
    rd_kafka_resp_err_t e = rd_kafka_offsets_store(consumer, list);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR && list->elems[0].err != RD_KAFKA_RESP_ERR_NO_ERROR)
        e = list->elems[0].err;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        /* typically the partition moved to another member in a rebalance: it will see the
         * message again, which the idempotent handlers absorb */
        wlog(LOG_INFO, "kafka", NULL, "kafka_offset_not_stored", "%s [%d] offset %lld: %s",
             rd_kafka_topic_name(msg->rkt), (int)msg->partition, (long long)msg->offset,
             rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(list);
}

int kafka_producer_failed(kafka_producer_t *p)
{
    return p != NULL && atomic_load(&p->fatal);
}

int kafka_reachable(kafka_producer_t *p, int timeout_ms)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(p->rk, 0, NULL, &md, timeout_ms);
    int ok = e == RD_KAFKA_RESP_ERR_NO_ERROR && md != NULL && md->broker_cnt > 0;
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    return ok;
}


void kafka_log_poll_error(const char *role, const rd_kafka_message_t *m, long long *last_ms)
{
    struct timespec ts;
    long long       now;

    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (now - *last_ms < 1000)
        return;
    *last_ms = now;
    wlog(LOG_WARN, role, NULL, "kafka_error", "consumer: %s", rd_kafka_message_errstr(m));
}
