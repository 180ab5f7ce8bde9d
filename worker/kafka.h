/* librdkafka wrappers: an idempotent producer that confirms delivery, and consumers that store
 * offsets only when told (after the work they cover is durable). */
#ifndef OSAGO_WORKER_KAFKA_H
#define OSAGO_WORKER_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "config.h"
#include "event.h"

typedef struct kafka_producer kafka_producer_t;

kafka_producer_t *kafka_producer_new(const worker_config_t *cfg, char *err, size_t errlen);
void              kafka_producer_free(kafka_producer_t *p);

/*
 * Encodes and produces every event (topic from its type, key = application id, header
 * "traceparent"), then waits until Kafka confirmed all of them or timeout_ms passed.
 * Returns 0 when all were delivered; -1 otherwise (nothing may be acknowledged upstream).
 * Thread-safe: every role shares one producer.
 */
int kafka_produce_events(kafka_producer_t *p, const osago_event_t *const *evs, int n,
                         int timeout_ms);

/* A consumer in group "osago-worker-<role>" (so every role sees every event) on the topics,
 * with enable.auto.offset.store=false. */
rd_kafka_t *kafka_consumer_new(const worker_config_t *cfg, const char *group,
                               const char *const *topics, int ntopics, char *err, size_t errlen);

/* Marks msg as done: its offset + 1 is committed by the next auto-commit. */
void kafka_done(rd_kafka_t *consumer, const rd_kafka_message_t *msg);

/*
 * Logs a consumer poll error for role, at most once a second per *last_ms (during a broker outage
 * every poll fails); end-of-partition notices are not errors and are not logged.
 */
void kafka_log_poll_error(const char *role, const rd_kafka_message_t *m, long long *last_ms);

/* 1 when the broker answered metadata within timeout_ms (for /readyz). */
int kafka_reachable(kafka_producer_t *p, int timeout_ms);

#endif
