/* What every role thread shares: the configuration, the producer, metrics and the stop flag. */
#ifndef OSAGO_WORKER_WORKER_H
#define OSAGO_WORKER_WORKER_H

#include <signal.h>

#include "config.h"
#include "insurers.h"
#include "kafka.h"
#include "metrics.h"
#include "pg.h"

typedef struct {
    const worker_config_t *cfg;
    const insurer_list_t  *insurers;
    kafka_producer_t      *producer;
    metrics_t             *metrics;
    atomic_int            *stop;        /* set by SIGINT/SIGTERM: roles finish and return */
    pg_wait_t              pg_wait;     /* how statements wait: stop, --pg-answer-timeout-ms */
} worker_t;

/* Role thread entry points: arg is the worker_t; each returns NULL when *stop is set. */
void *relay_main(void *arg);
void *orchestrator_main(void *arg);
void *executor_main(void *arg);
void *results_main(void *arg);
void *sweeper_main(void *arg);

/* /metrics, /healthz, /readyz (libmicrohttpd); NULL on failure to listen. */
struct http_server;
struct http_server *http_start(worker_t *w, char *err, size_t errlen);
void                http_stop(struct http_server *s);

#endif
