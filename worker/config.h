/* osago-worker configuration: flags and environment, validated at start. */
#ifndef OSAGO_WORKER_CONFIG_H
#define OSAGO_WORKER_CONFIG_H

#include <stddef.h>

enum worker_role {
    ROLE_RELAY        = 1 << 0,   /* Redis intake stream -> PostgreSQL + OsagoApplicationCreated */
    ROLE_ORCHESTRATOR = 1 << 1,   /* Created -> quote rows, Started, one Task per insurer */
    ROLE_EXECUTOR     = 1 << 2,   /* Task -> insurer call (libcurl multi) -> TaskResult */
    ROLE_RESULTS      = 1 << 3,   /* TaskResult -> PostgreSQL, Redis read model, PUBLISH */
    ROLE_SWEEPER      = 1 << 4,   /* re-drives tasks whose heartbeat went stale */
    ROLE_ALL          = (1 << 5) - 1
};

typedef struct {
    const char *command;            /* "run" or "migrate" */
    unsigned    roles;              /* ROLE_* bits */

    const char *kafka_bootstrap;    /* --kafka / OSAGO_KAFKA, default 127.0.0.1:9092 */
    int         kafka_session_timeout_ms;
    const char *redis_host;         /* --redis HOST:PORT / OSAGO_REDIS, default 127.0.0.1:6380 */
    int         redis_port;
    const char *redis_password;     /* OSAGO_REDIS_PASSWORD */
    int         redis_db;
    const char *pg_conninfo;        /* --pg / OSAGO_PG, default host=127.0.0.1 port=5433 dbname=osago user=osago */
    const char *insurers_file;      /* --insurers / OSAGO_INSURERS, default conf/insurers.json */
    const char *migrations_dir;     /* --migrations, default worker/migrations */
    const char *http_listen;        /* --http HOST:PORT, default 127.0.0.1:9464 */
    char        http_host[64];
    int         http_port;
    const char *consumer_name;      /* --name, default hostname-pid: the Redis consumer */

    int         insurer_timeout_ms; /* default 60000 (an insurer file entry may override) */
    int         max_attempts;       /* default 3 */
    int         retry_base_ms;      /* default 1000: first retry delay, doubled each time */
    int         retry_max_ms;       /* default 30000 */
    int         max_in_flight;      /* insurer calls in flight per executor, default 512 */
    int         sweep_interval_s;   /* default 60 */
    int         stale_after_s;      /* default 120 */
    int         heartbeat_s;        /* default 15: executor refreshes running tasks */
    int         claim_idle_ms;      /* default 30000: XAUTOCLAIM entries idle this long */
    const char *log_level;          /* debug|info|warn|error, default info */

    char        name_buf[128];
} worker_config_t;

/*
 * Fills cfg from argv and the environment. Returns 0, or -1 with a one-line
 * reason in err (e.g. "--max-attempts must be 1..10, got 0").
 */
int config_parse(worker_config_t *cfg, int argc, char **argv, char *err, size_t errlen);

/* Parses "relay,executor" or "all" into ROLE_* bits; -1 on an unknown name. */
int config_parse_roles(const char *list, unsigned *roles);

void config_usage(const char *prog);

#endif
