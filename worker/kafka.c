/*
 * librdkafka wrappers.
 *
 * Producer: one idempotent producer shared by every role thread. A caller knows its own events
 * were delivered through a per-call struct passed as each message's opaque; delivery reports
 * are served by whichever thread polls, so the struct is reference counted (the caller plus one
 * per message) and outlives a caller that gave up waiting.
 *
 * Consumers: auto-commit stays on, but only offsets stored by kafka_done() are committed, so an
 * offset never runs ahead of durable work (librdkafka 2.0: rd_kafka_offsets_store; there is no
 * rd_kafka_offset_store_message before 2.1).
 */
#include "kafka.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define KAFKA_POLL_SLICE_MS 2   /* another thread may serve our reports: re-check often */

struct kafka_producer {
    rd_kafka_t *rk;
};

struct produce_call {
    atomic_int refs;       /* the waiting caller + one per message not yet reported */
    atomic_int pending;    /* messages not yet reported */
    atomic_int failed;
    atomic_int first_err;  /* rd_kafka_resp_err_t of the first failure */
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void call_release(struct produce_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        free(c);
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    struct produce_call *c = msg->_private;
    (void)rk, (void)opaque;
    if (c == NULL)
        return;
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        int none = 0;
        atomic_compare_exchange_strong(&c->first_err, &none, (int)msg->err);
        atomic_fetch_add(&c->failed, 1);
    }
    atomic_fetch_sub(&c->pending, 1);
    call_release(c);
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

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        wlog(LOG_ERROR, "kafka", NULL, "kafka_fatal", "%s: fatal error %s: %s",
             rd_kafka_name(rk), rd_kafka_err2name(orig), why);
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
        set(conf, "log.connection.close", "false", err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    return conf;
}

kafka_producer_t *kafka_producer_new(const worker_config_t *cfg, char *err, size_t errlen)
{
    char why[512];
    rd_kafka_conf_t *conf = common_conf(cfg, "osago-worker", err, errlen);
    if (conf == NULL)
        return NULL;
    /* acks=all and idempotence: a retried send is written once, in order, per partition.
     * message.timeout.ms bounds how long an undeliverable event stays queued: the caller
     * has given up long before and will produce it again. */
    if (set(conf, "enable.idempotence", "true", err, errlen) < 0 ||
        set(conf, "acks", "all", err, errlen) < 0 ||
        set(conf, "linger.ms", "5", err, errlen) < 0 ||
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
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    if (p->rk == NULL) {   /* conf is still ours on failure */
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "kafka: cannot create the producer: %s", why);
        free(p);
        return NULL;
    }
    return p;
}

void kafka_producer_free(kafka_producer_t *p)
{
    if (p == NULL)
        return;
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

int kafka_produce_events(kafka_producer_t *p, const osago_event_t *const *evs, int n,
                         int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    char **json;
    size_t *len;
    int rc = -1, i;

    if (n <= 0)
        return 0;
    json = calloc((size_t)n, sizeof(*json));
    len = calloc((size_t)n, sizeof(*len));
    struct produce_call *c = calloc(1, sizeof(*c));
    if (json == NULL || len == NULL || c == NULL) {
        free(json), free(len), free(c);
        wlog(LOG_ERROR, "kafka", NULL, "kafka_produce_failed", "out of memory");
        return -1;
    }
    atomic_init(&c->refs, 1);

    /* encode everything first: an invalid event fails the batch before any of it is sent */
    for (i = 0; i < n; i++) {
        json[i] = event_encode(evs[i], &len[i]);
        if (json[i] == NULL) {
            char why[256];
            if (event_validate(evs[i], why, sizeof(why)) == 0)
                snprintf(why, sizeof(why), "payload is not a JSON object, or invalid UTF-8");
            wlog(LOG_ERROR, "kafka", evs[i]->traceparent, "kafka_encode_failed",
                 "%s for application %s not produced: %s", event_type_name(evs[i]->type),
                 evs[i]->application_id, why);
            goto out;
        }
    }

    for (i = 0; i < n; i++) {
        const osago_event_t *ev = evs[i];
        rd_kafka_resp_err_t err;
        for (;;) {
            rd_kafka_headers_t *h = rd_kafka_headers_new(1);
            rd_kafka_header_add(h, "traceparent", -1, ev->traceparent, -1);
            /* counted before producev: another thread's poll may report it at once */
            atomic_fetch_add(&c->refs, 1);
            atomic_fetch_add(&c->pending, 1);
            err = rd_kafka_producev(p->rk,
                                    RD_KAFKA_V_TOPIC(event_topic(ev->type)),
                                    RD_KAFKA_V_KEY(ev->application_id,
                                                   strlen(ev->application_id)),
                                    RD_KAFKA_V_VALUE(json[i], len[i]),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                                    RD_KAFKA_V_HEADERS(h),
                                    RD_KAFKA_V_OPAQUE(c),
                                    RD_KAFKA_V_END);
            if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                json[i] = NULL;     /* librdkafka frees it */
                break;
            }
            /* on failure the payload and headers are still ours, and there is no report */
            rd_kafka_headers_destroy(h);
            atomic_fetch_sub(&c->pending, 1);
            atomic_fetch_sub(&c->refs, 1);
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || now_ms() >= deadline) {
                wlog(LOG_ERROR, "kafka", ev->traceparent, "kafka_produce_failed",
                     "%s for application %s not produced: %s", event_type_name(ev->type),
                     ev->application_id, rd_kafka_err2str(err));
                goto out;   /* the produced ones keep the call alive until reported */
            }
            rd_kafka_poll(p->rk, 10);   /* queue full: let deliveries drain it */
        }
    }

    while (atomic_load(&c->pending) > 0) {
        long long left = deadline - now_ms();
        if (left <= 0)
            break;
        rd_kafka_poll(p->rk, left < KAFKA_POLL_SLICE_MS ? (int)left : KAFKA_POLL_SLICE_MS);
    }
    if (atomic_load(&c->pending) == 0 && atomic_load(&c->failed) == 0) {
        rc = 0;
    } else {
        int pending = atomic_load(&c->pending);
        wlog(LOG_WARN, "kafka", evs[0]->traceparent, "kafka_not_confirmed",
             "%d of %d event(s) for application %s not confirmed within %d ms%s%s",
             pending + atomic_load(&c->failed), n, evs[0]->application_id, timeout_ms,
             atomic_load(&c->failed) > 0 ? ": " : "",
             atomic_load(&c->failed) > 0
                 ? rd_kafka_err2str((rd_kafka_resp_err_t)atomic_load(&c->first_err)) : "");
    }
out:
    for (int k = 0; k < n; k++)
        free(json[k]);
    free(json);
    free(len);
    call_release(c);
    return rc;
}

rd_kafka_t *kafka_consumer_new(const worker_config_t *cfg, const char *group,
                               const char *const *topics, int ntopics, char *err, size_t errlen)
{
    char why[512], num[16], client_id[192];
    int session = cfg->kafka_session_timeout_ms > 0 ? cfg->kafka_session_timeout_ms : 10000;

    snprintf(client_id, sizeof(client_id), "%s-%s", group,
             cfg->consumer_name != NULL ? cfg->consumer_name : "worker");
    rd_kafka_conf_t *conf = common_conf(cfg, client_id, err, errlen);
    if (conf == NULL)
        return NULL;
    snprintf(num, sizeof(num), "%d", session);
    if (set(conf, "group.id", group, err, errlen) < 0 ||
        set(conf, "enable.auto.commit", "true", err, errlen) < 0 ||
        set(conf, "enable.auto.offset.store", "false", err, errlen) < 0 ||
        set(conf, "auto.commit.interval.ms", "1000", err, errlen) < 0 ||
        set(conf, "auto.offset.reset", "earliest", err, errlen) < 0 ||
        /* an application crosses three topics: a broker-side fetch wait of the default
         * 500 ms at each hop would dominate the time to a quote */
        set(conf, "fetch.wait.max.ms", "10", err, errlen) < 0 ||
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
