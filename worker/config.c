/*
 * Flags and environment -> worker_config_t (the table of options is in config.h). No getopt:
 * its global state would make config_parse impossible to call twice (the unit tests do).
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

enum opt_kind { OPT_STR, OPT_INT, OPT_ROLES, OPT_REDIS, OPT_HTTP, OPT_LEVEL, OPT_NAME, OPT_PG };

struct opt {
    const char   *flag;     /* NULL: environment only */
    const char   *env;
    enum opt_kind kind;
    size_t        offset;   /* of the member in worker_config_t */
    int           min, max;
    const char   *def;      /* the default, as text: one code path for all three sources */
};

#define OFF(m) offsetof(worker_config_t, m)

static const struct opt config_opts[] = {
    { "--roles", "OSAGO_ROLES", OPT_ROLES, OFF(roles), 0, 0, "all" },
    { "--kafka", "OSAGO_KAFKA", OPT_STR, OFF(kafka_bootstrap), 0, 0, "127.0.0.1:9092" },
    { "--kafka-session-timeout-ms", "OSAGO_KAFKA_SESSION_TIMEOUT_MS", OPT_INT,
      OFF(kafka_session_timeout_ms), 6000, 1800000, "10000" },
    { "--kafka-fetch-wait-ms", "OSAGO_KAFKA_FETCH_WAIT_MS", OPT_INT,
      OFF(kafka_fetch_wait_ms), 1, 1000, "100" },
    { "--kafka-linger-ms", "OSAGO_KAFKA_LINGER_MS", OPT_INT, OFF(kafka_linger_ms), 0, 1000, "2" },
    { "--redis", "OSAGO_REDIS", OPT_REDIS, 0, 0, 0, "127.0.0.1:6380" },
    { NULL, "OSAGO_REDIS_PASSWORD", OPT_STR, OFF(redis_password), 0, 0, NULL },
    { "--redis-db", "OSAGO_REDIS_DB", OPT_INT, OFF(redis_db), 0, 65535, "0" },
    { "--pg", "OSAGO_PG", OPT_PG, OFF(pg_conninfo), 0, 0,
      "host=127.0.0.1 port=5433 dbname=osago user=osago" },
    { "--pg-answer-timeout-ms", "OSAGO_PG_ANSWER_TIMEOUT_MS", OPT_INT, OFF(pg_answer_timeout_ms),
      0, 3600000, "60000" },
    { "--insurers", "OSAGO_INSURERS", OPT_STR, OFF(insurers_file), 0, 0, "conf/insurers.json" },
    { "--migrations", "OSAGO_MIGRATIONS", OPT_STR, OFF(migrations_dir), 0, 0,
      "worker/migrations" },
    { "--migrate-lock-timeout-ms", "OSAGO_MIGRATE_LOCK_TIMEOUT_MS", OPT_INT,
      OFF(migrate_lock_timeout_ms), 0, 600000, "2000" },
    { "--migrate-attempts", "OSAGO_MIGRATE_ATTEMPTS", OPT_INT, OFF(migrate_attempts), 1, 1000,
      "30" },
    { "--http", "OSAGO_HTTP", OPT_HTTP, OFF(http_listen), 0, 0, "127.0.0.1:9464" },
    { "--name", "OSAGO_NAME", OPT_NAME, OFF(consumer_name), 0, 0, NULL },
    { "--insurer-timeout-ms", "OSAGO_INSURER_TIMEOUT_MS", OPT_INT, OFF(insurer_timeout_ms),
      1, 600000, "60000" },
    { "--max-attempts", "OSAGO_MAX_ATTEMPTS", OPT_INT, OFF(max_attempts), 1, 10, "3" },
    { "--retry-base-ms", "OSAGO_RETRY_BASE_MS", OPT_INT, OFF(retry_base_ms), 1, 600000, "1000" },
    { "--retry-max-ms", "OSAGO_RETRY_MAX_MS", OPT_INT, OFF(retry_max_ms), 1, 3600000, "30000" },
    { "--max-in-flight", "OSAGO_MAX_IN_FLIGHT", OPT_INT, OFF(max_in_flight), 1, 10000, "512" },
    { "--insurer-share-pct", "OSAGO_INSURER_SHARE_PCT", OPT_INT, OFF(insurer_share_pct),
      1, 100, "50" },
    { "--sweep-interval-s", "OSAGO_SWEEP_INTERVAL_S", OPT_INT, OFF(sweep_interval_s),
      1, 3600, "60" },
    { "--stale-after-s", "OSAGO_STALE_AFTER_S", OPT_INT, OFF(stale_after_s), 1, 86400, "120" },
    { "--redrive-after-s", "OSAGO_REDRIVE_AFTER_S", OPT_INT, OFF(redrive_after_s),
      1, 604800, "600" },
    { "--heartbeat-s", "OSAGO_HEARTBEAT_S", OPT_INT, OFF(heartbeat_s), 1, 3600, "15" },
    { "--claim-idle-ms", "OSAGO_CLAIM_IDLE_MS", OPT_INT, OFF(claim_idle_ms),
      100, 86400000, "30000" },
    { "--app-ttl-s", "OSAGO_APP_TTL_S", OPT_INT, OFF(app_ttl_s), 1, 31536000, "604800" },
    { "--log-level", "OSAGO_LOG_LEVEL", OPT_LEVEL, OFF(log_level), 0, 0, "info" },
};

#define NOPTS (sizeof(config_opts) / sizeof(config_opts[0]))

static const struct {
    const char *name;
    unsigned    bit;
} config_roles[] = {
    { "relay", ROLE_RELAY },     { "orchestrator", ROLE_ORCHESTRATOR },
    { "executor", ROLE_EXECUTOR }, { "results", ROLE_RESULTS },
    { "sweeper", ROLE_SWEEPER }, { "all", ROLE_ALL },
};

int config_parse_roles(const char *list, unsigned *roles)
{
    unsigned bits = 0;
    const char *p = list;

    if (list == NULL || *list == '\0')
        return -1;
    for (;;) {
        size_t n = strcspn(p, ",");
        size_t i;
        for (i = 0; i < sizeof(config_roles) / sizeof(config_roles[0]); i++)
            if (strlen(config_roles[i].name) == n && strncmp(p, config_roles[i].name, n) == 0)
                break;
        if (i == sizeof(config_roles) / sizeof(config_roles[0]))
            return -1;
        bits |= config_roles[i].bit;
        if (p[n] == '\0')
            break;
        p += n + 1;
    }
    *roles = bits;
    return 0;
}

/* "HOST:PORT" or "[IPv6]:PORT" -> host (without brackets) and port. */
static int parse_hostport(const char *s, char *host, size_t hostcap, int *port)
{
    const char *colon = strrchr(s, ':');
    const char *h = s;
    size_t hlen;
    char *end;
    long p;

    if (colon == NULL)
        return -1;
    hlen = (size_t)(colon - s);
    if (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']')
        h = s + 1, hlen -= 2;
    else if (memchr(s, ':', hlen) != NULL)
        return -1;     /* a bare IPv6 address is ambiguous: brackets required */
    if (hlen == 0 || hlen >= hostcap)
        return -1;
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != '\0' || p < 1 || p > 65535)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)p;
    return 0;
}

static int apply(worker_config_t *cfg, const struct opt *o, const char *src, const char *v,
                 char *err, size_t errlen)
{
    char *member = (char *)cfg + o->offset;
    char *end;
    long n;

    switch (o->kind) {
    case OPT_STR:
        if (v != NULL && *v == '\0') {
            snprintf(err, errlen, "%s must not be empty", src);
            return -1;
        }
        *(const char **)member = v;
        return 0;
    case OPT_PG: {
        /* libpq's own parser: a typo fails here, not as a reconnect loop in every role */
        char             *why = NULL;
        PQconninfoOption *parsed;

        if (*v == '\0') {
            snprintf(err, errlen, "%s must not be empty", src);
            return -1;
        }
        if ((parsed = PQconninfoParse(v, &why)) == NULL) {
            snprintf(err, errlen, "%s is not a PostgreSQL connection string: %.*s", src,
                     why != NULL ? (int) strcspn(why, "\n") : 13,
                     why != NULL ? why : "out of memory");
            PQfreemem(why);
            return -1;
        }
        PQconninfoFree(parsed);
        *(const char **)member = v;
        return 0;
    }
    case OPT_INT:
        errno = 0;
        n = strtol(v, &end, 10);
        /* strtol would also take leading blanks and a '+': only digits, maybe a minus */
        if (!((v[0] >= '0' && v[0] <= '9') || v[0] == '-') || errno == ERANGE || end == v ||
            *end != '\0' || n < INT_MIN || n > INT_MAX) {
            snprintf(err, errlen, "%s must be an integer, got '%s'", src, v);
            return -1;
        }
        if (n < o->min || n > o->max) {
            snprintf(err, errlen, "%s must be %d..%d, got %ld", src, o->min, o->max, n);
            return -1;
        }
        *(int *)member = (int)n;
        return 0;
    case OPT_ROLES:
        if (config_parse_roles(v, &cfg->roles) < 0) {
            snprintf(err, errlen,
                     "%s must list roles relay, orchestrator, executor, results, sweeper "
                     "(comma-separated) or all, got '%s'", src, v);
            return -1;
        }
        return 0;
    case OPT_REDIS:
        if (parse_hostport(v, cfg->redis_host_buf, sizeof(cfg->redis_host_buf),
                           &cfg->redis_port) < 0) {
            snprintf(err, errlen, "%s must be HOST:PORT with a port 1..65535, got '%s'", src, v);
            return -1;
        }
        cfg->redis_host = cfg->redis_host_buf;
        return 0;
    case OPT_HTTP:
        if (parse_hostport(v, cfg->http_host, sizeof(cfg->http_host), &cfg->http_port) < 0) {
            snprintf(err, errlen, "%s must be HOST:PORT with a port 1..65535, got '%s'", src, v);
            return -1;
        }
        cfg->http_listen = v;
        return 0;
    case OPT_LEVEL:
        if (strcmp(v, "debug") != 0 && strcmp(v, "info") != 0 && strcmp(v, "warn") != 0 &&
            strcmp(v, "error") != 0) {
            snprintf(err, errlen, "%s must be debug, info, warn or error, got '%s'", src, v);
            return -1;
        }
        cfg->log_level = v;
        return 0;
    case OPT_NAME:
        if (v == NULL) {
            /* the Redis consumer name must differ between instances on one host too */
            char host[64];
            if (gethostname(host, sizeof(host)) != 0)
                strcpy(host, "localhost");
            host[sizeof(host) - 1] = '\0';
            snprintf(cfg->name_buf, sizeof(cfg->name_buf), "%s-%ld", host, (long)getpid());
        } else if (*v == '\0' || strlen(v) >= sizeof(cfg->name_buf)) {
            snprintf(err, errlen, "%s must be 1..%zu characters", src, sizeof(cfg->name_buf) - 1);
            return -1;
        } else {
            strcpy(cfg->name_buf, v);
        }
        cfg->consumer_name = cfg->name_buf;
        return 0;
    }
    return -1;
}

static int find_flag(const char *arg, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (config_opts[i].flag != NULL && strlen(config_opts[i].flag) == len &&
            strncmp(arg, config_opts[i].flag, len) == 0)
            return (int)i;
    return -1;
}

int config_parse(worker_config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    const char *flag_value[NOPTS] = { 0 };
    const char *command = NULL;

    memset(cfg, 0, sizeof(*cfg));
    cfg->command = "run";

    /* 1: collect the flags (the last occurrence wins) and the command */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0 || strcmp(a, "help") == 0) {
            cfg->command = "help";
            return 0;
        }
        if (strncmp(a, "--", 2) == 0) {
            const char *eq = strchr(a, '=');
            size_t len = eq != NULL ? (size_t)(eq - a) : strlen(a);
            int k = find_flag(a, len);
            if (k < 0) {
                snprintf(err, errlen, "unknown option '%.*s'", (int)len, a);
                return -1;
            }
            if (eq != NULL) {
                flag_value[k] = eq + 1;
            } else if (i + 1 < argc) {
                flag_value[k] = argv[++i];
            } else {
                snprintf(err, errlen, "%s needs a value", config_opts[k].flag);
                return -1;
            }
        } else if (command == NULL && (strcmp(a, "run") == 0 || strcmp(a, "migrate") == 0)) {
            command = a;
        } else if (a[0] == '-') {
            snprintf(err, errlen, "unknown option '%s'", a);
            return -1;
        } else if (command == NULL) {
            snprintf(err, errlen, "unknown command '%s' (run or migrate)", a);
            return -1;
        } else {
            snprintf(err, errlen, "unexpected argument '%s'", a);
            return -1;
        }
    }
    if (command != NULL)
        cfg->command = strcmp(command, "run") == 0 ? "run" : "migrate";

    /* 2: for each option, the flag, else the environment, else the default */
    for (size_t k = 0; k < NOPTS; k++) {
        const struct opt *o = &config_opts[k];
        const char *env = getenv(o->env);
        const char *v = o->def, *src = o->flag != NULL ? o->flag : o->env;
        if (flag_value[k] != NULL) {
            v = flag_value[k];
        } else if (env != NULL && *env != '\0') {
            v = env;
            src = o->env;
        }
        if (v == NULL && o->kind != OPT_NAME) {
            *(const char **)((char *)cfg + o->offset) = NULL;   /* optional and unset */
            continue;
        }
        if (apply(cfg, o, src, v, err, errlen) < 0)
            return -1;
    }

    /* 3: what only makes sense together */
    if (cfg->retry_max_ms < cfg->retry_base_ms) {
        snprintf(err, errlen, "--retry-max-ms (%d) must be at least --retry-base-ms (%d)",
                 cfg->retry_max_ms, cfg->retry_base_ms);
        return -1;
    }
    /* a heartbeat waits behind a claim or a slow statement: one late beat must not make a
     * running task stale, or its insurer is called twice */
    if (cfg->stale_after_s < 2 * cfg->heartbeat_s) {
        snprintf(err, errlen,
                 "--stale-after-s (%d) must be at least twice --heartbeat-s (%d), or a late "
                 "heartbeat would have running tasks swept", cfg->stale_after_s,
                 cfg->heartbeat_s);
        return -1;
    }
    return 0;
}

void config_usage(const char *prog)
{
    printf("usage: %s [run] [flags]     start the roles (all by default)\n"
           "       %s migrate [--pg CONNINFO] [--migrations DIR] [--migrate-lock-timeout-ms N]\n"
           "                            [--migrate-attempts N]\n"
           "\n"
           "flags (environment variable; default):\n"
           "  --roles LIST|all              OSAGO_ROLES; all (relay,orchestrator,executor,"
           "results,sweeper)\n"
           "  --kafka BOOTSTRAP             OSAGO_KAFKA; 127.0.0.1:9092\n"
           "  --kafka-session-timeout-ms N  OSAGO_KAFKA_SESSION_TIMEOUT_MS; 10000\n"
           "  --kafka-fetch-wait-ms N       OSAGO_KAFKA_FETCH_WAIT_MS; 100 (1..1000)\n"
           "  --kafka-linger-ms N           OSAGO_KAFKA_LINGER_MS; 2 (0..1000)\n"
           "  --redis HOST:PORT             OSAGO_REDIS; 127.0.0.1:6380 "
           "(password: OSAGO_REDIS_PASSWORD)\n"
           "  --redis-db N                  OSAGO_REDIS_DB; 0\n"
           "  --pg CONNINFO                 OSAGO_PG; host=127.0.0.1 port=5433 dbname=osago "
           "user=osago\n"
           "  --pg-answer-timeout-ms N      OSAGO_PG_ANSWER_TIMEOUT_MS; 60000 (0: none; a "
           "statement unanswered that long: connect again)\n"
           "  --insurers FILE               OSAGO_INSURERS; conf/insurers.json\n"
           "  --migrations DIR              OSAGO_MIGRATIONS; worker/migrations\n"
           "  --migrate-lock-timeout-ms N   OSAGO_MIGRATE_LOCK_TIMEOUT_MS; 2000 (0: wait as "
           "long as it takes)\n"
           "  --migrate-attempts N          OSAGO_MIGRATE_ATTEMPTS; 30 (a file given up on "
           "for a lock, or a deadlock, is tried again)\n"
           "  --http HOST:PORT              OSAGO_HTTP; 127.0.0.1:9464 "
           "(/metrics, /healthz, /readyz)\n"
           "  --name NAME                   OSAGO_NAME; HOSTNAME-PID (Redis consumer name)\n"
           "  --insurer-timeout-ms N        OSAGO_INSURER_TIMEOUT_MS; 60000\n"
           "  --max-attempts N              OSAGO_MAX_ATTEMPTS; 3\n"
           "  --retry-base-ms N             OSAGO_RETRY_BASE_MS; 1000\n"
           "  --retry-max-ms N              OSAGO_RETRY_MAX_MS; 30000\n"
           "  --max-in-flight N             OSAGO_MAX_IN_FLIGHT; 512\n"
           "  --insurer-share-pct N         OSAGO_INSURER_SHARE_PCT; 50 (of --max-in-flight, "
           "per insurer)\n"
           "  --sweep-interval-s N          OSAGO_SWEEP_INTERVAL_S; 60\n"
           "  --stale-after-s N             OSAGO_STALE_AFTER_S; 120\n"
           "  --redrive-after-s N           OSAGO_REDRIVE_AFTER_S; 600\n"
           "  --heartbeat-s N               OSAGO_HEARTBEAT_S; 15\n"
           "  --claim-idle-ms N             OSAGO_CLAIM_IDLE_MS; 30000\n"
           "  --app-ttl-s N                 OSAGO_APP_TTL_S; 604800 (the read models' lifetime)\n"
           "  --log-level LEVEL             OSAGO_LOG_LEVEL; info (debug, info, warn, error)\n"
           "Flags override the environment, which overrides the defaults.\n",
           prog, prog);
}
