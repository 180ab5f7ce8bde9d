/* librdkafka wrappers: an idempotent producer that confirms delivery, and consumers that store
 * offsets only when told (after the work they cover is durable). */
#ifndef OSAGO_WORKER_KAFKA_H
#define OSAGO_WORKER_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "config.h"
#include "event.h"
#include "metrics.h"

typedef struct kafka_producer kafka_producer_t;

/* metrics, when given, gets the time each batch took to be confirmed (kafka_confirm_ms). */
kafka_producer_t *kafka_producer_new(const worker_config_t *cfg, metrics_t *metrics, char *err,
                                     size_t errlen);
void              kafka_producer_free(kafka_producer_t *p);

/*
 * A produce that the caller looks at later. kafka_produce_start encodes and produces every
 * event (as below) without waiting and returns the batch, or NULL when out of memory; an event
 * that cannot be encoded or produced fails the batch (logged). on_done(arg), when given, runs
 * on the producer's report thread once every event of the batch was reported, and never after
 * kafka_batch_release. kafka_batch_state: 1 still waiting, 0 all confirmed, -1 some failed.
 */
typedef struct kafka_batch kafka_batch_t;

kafka_batch_t *kafka_produce_start(kafka_producer_t *p, const osago_event_t *const *evs, int n,
                                   void (*on_done)(void *arg), void *arg);
int            kafka_batch_state(kafka_batch_t *b);
const char    *kafka_batch_error(kafka_batch_t *b);     /* the first failure, for logs */
void           kafka_batch_release(kafka_batch_t *b);

/*
 * Encodes and produces every event (topic from its type, key = application id, header
 * "traceparent"), then waits until Kafka confirmed all of them or timeout_ms passed.
 * Returns 0 when all were delivered; -1 otherwise (nothing may be acknowledged upstream).
 * Thread-safe: every role shares one producer.
 */
int kafka_produce_events(kafka_producer_t *p, const osago_event_t *const *evs, int n,
                         int timeout_ms);

/*
 * What a role must forget when partitions are taken from it in a rebalance: revoked(arg,
 * parts) runs on the polling thread before they go, while an offset can still be stored for
 * them. A role whose work on a partition outlives a poll needs it: once the partition is back,
 * perhaps at an offset another member reached meanwhile, an offset stored for work read before
 * would move the group back. A role with a hook must poll often: the rebalance waits for it
 * (librdkafka's max.poll.interval.ms at most).
 */
typedef struct {
    void (*revoked)(void *arg, const rd_kafka_topic_partition_list_t *parts);
    void  *arg;
} kafka_rebalance_hook_t;

/* A consumer in group "osago-worker-<role>" (so every role sees every event) on the topics,
 * with enable.auto.offset.store=false. hook (may be NULL; revoked is then required) must
 * outlive the consumer; with one, the partitions given and lost are logged. */
rd_kafka_t *kafka_consumer_new(const worker_config_t *cfg, const char *group,
                               const char *const *topics, int ntopics,
                               kafka_rebalance_hook_t *hook, char *err, size_t errlen);

/* Marks msg as done: its offset + 1 is committed by the next auto-commit. */
void kafka_done(rd_kafka_t *consumer, const rd_kafka_message_t *msg);

/*
 * Logs a consumer poll error for role, at most once a second per *last_ms (during a broker outage
 * every poll fails); end-of-partition notices are not errors and are not logged.
 */
void kafka_log_poll_error(const char *role, const rd_kafka_message_t *m, long long *last_ms);

/* 1 when the broker answered metadata within timeout_ms (for /readyz). */
int kafka_reachable(kafka_producer_t *p, int timeout_ms);

/* 1 once librdkafka raised a fatal error on the producer (it then asked the process to stop). */
int kafka_producer_failed(kafka_producer_t *p);

#endif
