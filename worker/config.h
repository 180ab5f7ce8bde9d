/*
 * osago-worker configuration: flags and environment, validated at start.
 *
 * Precedence: a flag overrides its environment variable, which overrides the default; only the
 * winning value is validated. Every flag is --name VALUE or --name=VALUE; an empty environment
 * variable counts as unset. Usage: osago-worker [run|migrate] [flags]; --help.
 *
 *   flag                        environment                      default
 *   --roles LIST|all            OSAGO_ROLES                      all
 *   --kafka BOOTSTRAP           OSAGO_KAFKA                      127.0.0.1:9092
 *   --kafka-session-timeout-ms  OSAGO_KAFKA_SESSION_TIMEOUT_MS   10000     (1000..1800000)
 *   --kafka-fetch-wait-ms N     OSAGO_KAFKA_FETCH_WAIT_MS        100       (1..1000)
 *   --kafka-linger-ms N         OSAGO_KAFKA_LINGER_MS            2         (0..1000)
 *   --redis HOST:PORT           OSAGO_REDIS                      127.0.0.1:6380
 *   (none: not on command lines) OSAGO_REDIS_PASSWORD            unset: no AUTH
 *   --redis-db N                OSAGO_REDIS_DB                   0         (0..255)
 *   --pg CONNINFO               OSAGO_PG                         host=127.0.0.1 port=5433
 *                                                                dbname=osago user=osago
 *   --insurers FILE             OSAGO_INSURERS                   conf/insurers.json
 *   --migrations DIR            OSAGO_MIGRATIONS                 worker/migrations
 *   --http HOST:PORT            OSAGO_HTTP                       127.0.0.1:9464
 *   --name NAME                 OSAGO_NAME                       <hostname>-<pid>
 *   --insurer-timeout-ms N      OSAGO_INSURER_TIMEOUT_MS         60000     (1..600000)
 *   --max-attempts N            OSAGO_MAX_ATTEMPTS               3         (1..10)
 *   --retry-base-ms N           OSAGO_RETRY_BASE_MS              1000      (1..600000)
 *   --retry-max-ms N            OSAGO_RETRY_MAX_MS               30000     (1..3600000, >= base)
 *   --max-in-flight N           OSAGO_MAX_IN_FLIGHT              512       (1..10000)
 *   --insurer-share-pct N       OSAGO_INSURER_SHARE_PCT          50        (1..100)
 *   --sweep-interval-s N        OSAGO_SWEEP_INTERVAL_S           60        (1..3600)
 *   --stale-after-s N           OSAGO_STALE_AFTER_S              120       (1..86400, > heartbeat)
 *   --heartbeat-s N             OSAGO_HEARTBEAT_S                15        (1..3600)
 *   --claim-idle-ms N           OSAGO_CLAIM_IDLE_MS              30000     (100..86400000)
 *   --log-level LEVEL           OSAGO_LOG_LEVEL                  info      (debug|info|warn|error)
 *
 * The string members point into argv, the environment or static strings (never freed); the
 * parsed parts of HOST:PORT values and the default name live in the struct's buffers.
 */
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
    const char *command;            /* "run" (default), "migrate", or "help" (--help, -h) */
    unsigned    roles;              /* ROLE_* bits */

    const char *kafka_bootstrap;    /* --kafka / OSAGO_KAFKA, default 127.0.0.1:9092 */
    int         kafka_session_timeout_ms;
    int         kafka_fetch_wait_ms;/* the broker's wait for data on an empty fetch */
    int         kafka_linger_ms;    /* the producer's wait to batch events */
    const char *redis_host;         /* --redis HOST:PORT / OSAGO_REDIS, default 127.0.0.1:6380 */
    int         redis_port;
    const char *redis_password;     /* OSAGO_REDIS_PASSWORD */
    int         redis_db;
    const char *pg_conninfo;        /* --pg / OSAGO_PG, default host=127.0.0.1 port=5433 dbname=osago user=osago */
    int         pg_answer_timeout_ms; /* a statement's answer awaited at most this long (0: none) */
    const char *insurers_file;      /* --insurers / OSAGO_INSURERS, default conf/insurers.json */
    const char *migrations_dir;     /* --migrations, default worker/migrations */
    int         migrate_lock_timeout_ms; /* a migration's wait for one lock (0: no limit) */
    int         migrate_attempts;   /* tries of a file that waited too long or deadlocked */
    const char *http_listen;        /* --http HOST:PORT, default 127.0.0.1:9464 */
    char        http_host[64];
    int         http_port;
    const char *consumer_name;      /* --name, default hostname-pid: the Redis consumer */

    int         insurer_timeout_ms; /* default 60000 (an insurer file entry may override) */
    int         max_attempts;       /* default 3 */
    int         retry_base_ms;      /* default 1000: first retry delay, doubled each time */
    int         retry_max_ms;       /* default 30000 */
    int         max_in_flight;      /* insurer calls in flight per executor, default 512 */
    int         insurer_share_pct;  /* default 50: the most of max_in_flight one insurer holds */
    int         sweep_interval_s;   /* default 60 */
    int         stale_after_s;      /* default 120 */
    int         redrive_after_s;    /* default 600: a pending quote or accepted application
                                       untouched this long lost its event */
    int         heartbeat_s;        /* default 15: executor refreshes running tasks */
    int         claim_idle_ms;      /* default 30000: XAUTOCLAIM entries idle this long */
    int         app_ttl_s;          /* default 604800: the read models results writes (as the
                                       edge's osago_app_ttl for the one it writes) */
    const char *log_level;          /* debug|info|warn|error, default info */

    char        name_buf[128];
    char        redis_host_buf[256];/* added: storage for redis_host, parsed out of HOST:PORT */
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
