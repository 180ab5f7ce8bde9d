/*
 * Unit tests of configuration parsing (worker/config.c), built with ASan and UBSan by
 * `make build/san/test_worker_config`, run by t/31-worker-unit.t. Every test starts with no
 * OSAGO_* variable in the environment.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

static const char *const env_names[] = {
    "OSAGO_ROLES", "OSAGO_KAFKA", "OSAGO_KAFKA_SESSION_TIMEOUT_MS", "OSAGO_KAFKA_FETCH_WAIT_MS",
    "OSAGO_KAFKA_LINGER_MS", "OSAGO_REDIS", "OSAGO_REDIS_PASSWORD", "OSAGO_REDIS_DB", "OSAGO_PG",
    "OSAGO_PG_ANSWER_TIMEOUT_MS",
    "OSAGO_INSURERS", "OSAGO_MIGRATIONS",
    "OSAGO_HTTP", "OSAGO_NAME", "OSAGO_INSURER_TIMEOUT_MS", "OSAGO_MAX_ATTEMPTS",
    "OSAGO_RETRY_BASE_MS", "OSAGO_RETRY_MAX_MS", "OSAGO_MAX_IN_FLIGHT", "OSAGO_SWEEP_INTERVAL_S",
    "OSAGO_STALE_AFTER_S", "OSAGO_REDRIVE_AFTER_S", "OSAGO_HEARTBEAT_S", "OSAGO_CLAIM_IDLE_MS",
    "OSAGO_APP_TTL_S", "OSAGO_LOG_LEVEL",
};

static int clean_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
        unsetenv(env_names[i]);
    return 0;
}

/* Parses a NULL-terminated list of arguments after the program name. */
static int parse(worker_config_t *cfg, char *err, size_t errlen, ...)
{
    char *argv[64];
    int argc = 0;
    va_list ap;
    argv[argc++] = "osago-worker";
    va_start(ap, errlen);
    for (char *a; (a = va_arg(ap, char *)) != NULL;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    err[0] = '\0';
    return config_parse(cfg, argc, argv, err, errlen);
}

#define PARSE_OK(cfg, ...) do {                                                   \
        char e_[512];                                                             \
        if (parse(cfg, e_, sizeof(e_), __VA_ARGS__, (char *)NULL) != 0)           \
            fail_msg("config_parse failed: %s", e_);                              \
    } while (0)

#define PARSE_ERR(expected, ...) do {                                             \
        worker_config_t c_;                                                       \
        char e_[512];                                                             \
        if (parse(&c_, e_, sizeof(e_), __VA_ARGS__, (char *)NULL) != -1)          \
            fail_msg("accepted; expected \"%s\"", expected);                      \
        if (strcmp(e_, expected) != 0)                                            \
            fail_msg("got      \"%s\"\nexpected \"%s\"", e_, expected);          \
    } while (0)

static void test_defaults(void **state)
{
    worker_config_t cfg;
    char err[256], host[64], expect[128];
    (void)state;

    assert_int_equal(parse(&cfg, err, sizeof(err), (char *)NULL), 0);
    assert_string_equal(cfg.command, "run");
    assert_int_equal(cfg.roles, ROLE_ALL);
    assert_string_equal(cfg.kafka_bootstrap, "127.0.0.1:9092");
    assert_int_equal(cfg.kafka_session_timeout_ms, 10000);
    assert_int_equal(cfg.kafka_fetch_wait_ms, 100);
    assert_int_equal(cfg.kafka_linger_ms, 2);
    assert_int_equal(cfg.pg_answer_timeout_ms, 60000);
    assert_string_equal(cfg.redis_host, "127.0.0.1");
    assert_int_equal(cfg.redis_port, 6380);
    assert_null(cfg.redis_password);
    assert_int_equal(cfg.redis_db, 0);
    assert_string_equal(cfg.pg_conninfo, "host=127.0.0.1 port=5433 dbname=osago user=osago");
    assert_string_equal(cfg.insurers_file, "conf/insurers.json");
    assert_string_equal(cfg.migrations_dir, "worker/migrations");
    assert_int_equal(cfg.migrate_lock_timeout_ms, 2000);
    assert_int_equal(cfg.migrate_attempts, 30);
    assert_string_equal(cfg.http_listen, "127.0.0.1:9464");
    assert_string_equal(cfg.http_host, "127.0.0.1");
    assert_int_equal(cfg.http_port, 9464);
    assert_int_equal(cfg.insurer_timeout_ms, 60000);
    assert_int_equal(cfg.max_attempts, 3);
    assert_int_equal(cfg.retry_base_ms, 1000);
    assert_int_equal(cfg.retry_max_ms, 30000);
    assert_int_equal(cfg.max_in_flight, 512);
    assert_int_equal(cfg.insurer_share_pct, 50);
    assert_int_equal(cfg.sweep_interval_s, 60);
    assert_int_equal(cfg.stale_after_s, 120);
    assert_int_equal(cfg.redrive_after_s, 600);
    assert_int_equal(cfg.heartbeat_s, 15);
    assert_int_equal(cfg.claim_idle_ms, 30000);
    assert_int_equal(cfg.app_ttl_s, 7 * 86400);
    assert_string_equal(cfg.log_level, "info");

    /* the consumer name: hostname-pid, so two instances on one host differ */
    assert_int_equal(gethostname(host, sizeof(host)), 0);
    host[sizeof(host) - 1] = '\0';
    snprintf(expect, sizeof(expect), "%s-%ld", host, (long)getpid());
    assert_string_equal(cfg.consumer_name, expect);
    assert_ptr_equal(cfg.consumer_name, cfg.name_buf);
}

static void test_environment(void **state)
{
    worker_config_t cfg;
    (void)state;
    setenv("OSAGO_ROLES", "relay,sweeper", 1);
    setenv("OSAGO_KAFKA", "k1:9092,k2:9092", 1);
    setenv("OSAGO_KAFKA_SESSION_TIMEOUT_MS", "6000", 1);
    setenv("OSAGO_KAFKA_FETCH_WAIT_MS", "2", 1);
    setenv("OSAGO_KAFKA_LINGER_MS", "0", 1);
    setenv("OSAGO_REDIS", "redis.local:6379", 1);
    setenv("OSAGO_REDIS_PASSWORD", "s3cret", 1);
    setenv("OSAGO_REDIS_DB", "2", 1);
    setenv("OSAGO_PG", "host=db dbname=x", 1);
    setenv("OSAGO_PG_ANSWER_TIMEOUT_MS", "0", 1);
    setenv("OSAGO_INSURERS", "/etc/osago/insurers.json", 1);
    setenv("OSAGO_MIGRATIONS", "/usr/share/osago/migrations", 1);
    setenv("OSAGO_HTTP", "0.0.0.0:9100", 1);
    setenv("OSAGO_NAME", "worker-a", 1);
    setenv("OSAGO_INSURER_TIMEOUT_MS", "2000", 1);
    setenv("OSAGO_MAX_ATTEMPTS", "5", 1);
    setenv("OSAGO_RETRY_BASE_MS", "10", 1);
    setenv("OSAGO_RETRY_MAX_MS", "100", 1);
    setenv("OSAGO_MAX_IN_FLIGHT", "64", 1);
    setenv("OSAGO_SWEEP_INTERVAL_S", "1", 1);
    setenv("OSAGO_STALE_AFTER_S", "3", 1);
    setenv("OSAGO_REDRIVE_AFTER_S", "30", 1);
    setenv("OSAGO_HEARTBEAT_S", "1", 1);
    setenv("OSAGO_CLAIM_IDLE_MS", "500", 1);
    setenv("OSAGO_APP_TTL_S", "86400", 1);
    setenv("OSAGO_LOG_LEVEL", "debug", 1);
    PARSE_OK(&cfg, "run");

    assert_int_equal(cfg.roles, ROLE_RELAY | ROLE_SWEEPER);
    assert_string_equal(cfg.kafka_bootstrap, "k1:9092,k2:9092");
    assert_int_equal(cfg.kafka_session_timeout_ms, 6000);
    assert_int_equal(cfg.kafka_fetch_wait_ms, 2);
    assert_int_equal(cfg.kafka_linger_ms, 0);
    assert_string_equal(cfg.redis_host, "redis.local");
    assert_int_equal(cfg.redis_port, 6379);
    assert_string_equal(cfg.redis_password, "s3cret");
    assert_int_equal(cfg.redis_db, 2);
    assert_string_equal(cfg.pg_conninfo, "host=db dbname=x");
    assert_int_equal(cfg.pg_answer_timeout_ms, 0);
    assert_string_equal(cfg.insurers_file, "/etc/osago/insurers.json");
    assert_string_equal(cfg.migrations_dir, "/usr/share/osago/migrations");
    assert_string_equal(cfg.http_host, "0.0.0.0");
    assert_int_equal(cfg.http_port, 9100);
    assert_string_equal(cfg.consumer_name, "worker-a");
    assert_int_equal(cfg.insurer_timeout_ms, 2000);
    assert_int_equal(cfg.max_attempts, 5);
    assert_int_equal(cfg.retry_base_ms, 10);
    assert_int_equal(cfg.retry_max_ms, 100);
    assert_int_equal(cfg.max_in_flight, 64);
    assert_int_equal(cfg.sweep_interval_s, 1);
    assert_int_equal(cfg.stale_after_s, 3);
    assert_int_equal(cfg.redrive_after_s, 30);
    assert_int_equal(cfg.heartbeat_s, 1);
    assert_int_equal(cfg.claim_idle_ms, 500);
    assert_int_equal(cfg.app_ttl_s, 86400);
    assert_string_equal(cfg.log_level, "debug");
}

static void test_flags_override_env(void **state)
{
    worker_config_t cfg;
    (void)state;
    setenv("OSAGO_KAFKA", "from-env:9092", 1);
    setenv("OSAGO_MAX_ATTEMPTS", "0", 1);          /* invalid, but a flag wins: not checked */
    setenv("OSAGO_REDIS", "garbage", 1);
    setenv("OSAGO_ROLES", "relay", 1);
    PARSE_OK(&cfg, "--kafka", "from-flag:9092", "--max-attempts=4", "--redis", "[::1]:7000",
             "--roles", "executor,results", "--name=n1", "--http", "127.0.0.2:9999");
    assert_string_equal(cfg.kafka_bootstrap, "from-flag:9092");
    assert_int_equal(cfg.max_attempts, 4);
    assert_string_equal(cfg.redis_host, "::1");
    assert_int_equal(cfg.redis_port, 7000);
    assert_int_equal(cfg.roles, ROLE_EXECUTOR | ROLE_RESULTS);
    assert_string_equal(cfg.consumer_name, "n1");
    assert_string_equal(cfg.http_host, "127.0.0.2");

    /* the last occurrence of a flag wins; an empty variable counts as unset */
    setenv("OSAGO_MAX_ATTEMPTS", "", 1);
    setenv("OSAGO_REDIS", "", 1);
    PARSE_OK(&cfg, "--max-attempts", "2", "--max-attempts", "7");
    assert_int_equal(cfg.max_attempts, 7);
    assert_string_equal(cfg.redis_host, "127.0.0.1");
    assert_string_equal(cfg.kafka_bootstrap, "from-env:9092");
}

static void test_commands(void **state)
{
    worker_config_t cfg;
    (void)state;
    PARSE_OK(&cfg, "migrate", "--pg", "dbname=t", "--migrations", "/tmp/m");
    assert_string_equal(cfg.command, "migrate");
    assert_string_equal(cfg.pg_conninfo, "dbname=t");
    assert_string_equal(cfg.migrations_dir, "/tmp/m");
    /* 0: a migration waits for its locks as long as it takes, as before the limit */
    PARSE_OK(&cfg, "migrate", "--migrate-lock-timeout-ms", "0", "--migrate-attempts", "1");
    assert_int_equal(cfg.migrate_lock_timeout_ms, 0);
    assert_int_equal(cfg.migrate_attempts, 1);
    setenv("OSAGO_MIGRATE_LOCK_TIMEOUT_MS", "250", 1);
    setenv("OSAGO_MIGRATE_ATTEMPTS", "7", 1);
    PARSE_OK(&cfg, "migrate");
    assert_int_equal(cfg.migrate_lock_timeout_ms, 250);
    assert_int_equal(cfg.migrate_attempts, 7);
    unsetenv("OSAGO_MIGRATE_LOCK_TIMEOUT_MS");
    unsetenv("OSAGO_MIGRATE_ATTEMPTS");
    PARSE_ERR("--migrate-attempts must be 1..1000, got 0", "migrate", "--migrate-attempts", "0");
    PARSE_ERR("--migrate-lock-timeout-ms must be 0..600000, got -1", "migrate",
              "--migrate-lock-timeout-ms", "-1");
    PARSE_OK(&cfg, "--roles", "relay", "run");     /* the command may follow flags */
    assert_string_equal(cfg.command, "run");
    PARSE_OK(&cfg, "--help");
    assert_string_equal(cfg.command, "help");
    PARSE_OK(&cfg, "run", "-h", "--bogus");        /* help wins over later errors */
    assert_string_equal(cfg.command, "help");
    PARSE_OK(&cfg, "help");
    assert_string_equal(cfg.command, "help");

    PARSE_ERR("unknown command 'start' (run or migrate)", "start");
    PARSE_ERR("unexpected argument 'migrate'", "run", "migrate");
    PARSE_ERR("unexpected argument 'extra'", "run", "extra");
    PARSE_ERR("unknown option '--bogus'", "--bogus", "1");
    PARSE_ERR("unknown option '--kafka-broker'", "--kafka-broker=x");
    PARSE_ERR("unknown option '-v'", "-v");
    PARSE_ERR("--kafka needs a value", "--kafka");
    PARSE_ERR("--max-attempts needs a value", "run", "--max-attempts");
}

static void test_roles(void **state)
{
    unsigned r = 0;
    (void)state;
    assert_int_equal(config_parse_roles("all", &r), 0);
    assert_int_equal(r, ROLE_ALL);
    assert_int_equal(config_parse_roles("relay", &r), 0);
    assert_int_equal(r, ROLE_RELAY);
    assert_int_equal(config_parse_roles("relay,executor", &r), 0);
    assert_int_equal(r, ROLE_RELAY | ROLE_EXECUTOR);
    assert_int_equal(config_parse_roles("orchestrator,results,sweeper,results", &r), 0);
    assert_int_equal(r, ROLE_ORCHESTRATOR | ROLE_RESULTS | ROLE_SWEEPER);
    assert_int_equal(config_parse_roles("relay,orchestrator,executor,results,sweeper", &r), 0);
    assert_int_equal(r, ROLE_ALL);
    assert_int_equal(config_parse_roles("sweeper,all", &r), 0);
    assert_int_equal(r, ROLE_ALL);

    r = 99;
    assert_int_equal(config_parse_roles("", &r), -1);
    assert_int_equal(config_parse_roles(NULL, &r), -1);
    assert_int_equal(config_parse_roles("relay,", &r), -1);
    assert_int_equal(config_parse_roles(",relay", &r), -1);
    assert_int_equal(config_parse_roles("relay,,executor", &r), -1);
    assert_int_equal(config_parse_roles("ALL", &r), -1);
    assert_int_equal(config_parse_roles("relay executor", &r), -1);
    assert_int_equal(config_parse_roles("rela", &r), -1);
    assert_int_equal(config_parse_roles("relayx", &r), -1);
    assert_int_equal(r, 99);    /* untouched on error */

    PARSE_ERR("--roles must list roles relay, orchestrator, executor, results, sweeper "
              "(comma-separated) or all, got 'relay,writer'", "--roles", "relay,writer");
    setenv("OSAGO_ROLES", "none", 1);
    PARSE_ERR("OSAGO_ROLES must list roles relay, orchestrator, executor, results, sweeper "
              "(comma-separated) or all, got 'none'", "run");
}

/* Every number: not a number, below and above its range, with the flag's own name. */
static void test_numbers(void **state)
{
    static const struct {
        const char *flag, *env;
        int min, max;
    } nums[] = {
        { "--kafka-session-timeout-ms", "OSAGO_KAFKA_SESSION_TIMEOUT_MS", 6000, 1800000 },
        { "--kafka-fetch-wait-ms", "OSAGO_KAFKA_FETCH_WAIT_MS", 1, 1000 },
        { "--kafka-linger-ms", "OSAGO_KAFKA_LINGER_MS", 0, 1000 },
        { "--redis-db", "OSAGO_REDIS_DB", 0, 65535 },
        { "--pg-answer-timeout-ms", "OSAGO_PG_ANSWER_TIMEOUT_MS", 0, 3600000 },
        { "--insurer-timeout-ms", "OSAGO_INSURER_TIMEOUT_MS", 1, 600000 },
        { "--max-attempts", "OSAGO_MAX_ATTEMPTS", 1, 10 },
        { "--retry-base-ms", "OSAGO_RETRY_BASE_MS", 1, 600000 },
        { "--retry-max-ms", "OSAGO_RETRY_MAX_MS", 1, 3600000 },
        { "--max-in-flight", "OSAGO_MAX_IN_FLIGHT", 1, 10000 },
        { "--insurer-share-pct", "OSAGO_INSURER_SHARE_PCT", 1, 100 },
        { "--sweep-interval-s", "OSAGO_SWEEP_INTERVAL_S", 1, 3600 },
        { "--stale-after-s", "OSAGO_STALE_AFTER_S", 1, 86400 },
        { "--redrive-after-s", "OSAGO_REDRIVE_AFTER_S", 1, 604800 },
        { "--heartbeat-s", "OSAGO_HEARTBEAT_S", 1, 3600 },
        { "--claim-idle-ms", "OSAGO_CLAIM_IDLE_MS", 100, 86400000 },
        { "--app-ttl-s", "OSAGO_APP_TTL_S", 1, 31536000 },
    };
    (void)state;
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        char v[32], msg[256];
        worker_config_t cfg;

        snprintf(v, sizeof(v), "%d", nums[i].min - 1);
        snprintf(msg, sizeof(msg), "%s must be %d..%d, got %d", nums[i].flag, nums[i].min,
                 nums[i].max, nums[i].min - 1);
        PARSE_ERR(msg, nums[i].flag, v);
        snprintf(v, sizeof(v), "%d", nums[i].max + 1);
        snprintf(msg, sizeof(msg), "%s must be %d..%d, got %d", nums[i].flag, nums[i].min,
                 nums[i].max, nums[i].max + 1);
        PARSE_ERR(msg, nums[i].flag, v);
        const char *junk[] = { "", "abc", "12x", "1.5", " 5", "+5", "0x10", "99999999999999999999" };
        for (size_t j = 0; j < sizeof(junk) / sizeof(junk[0]); j++) {
            snprintf(msg, sizeof(msg), "%s must be an integer, got '%s'", nums[i].flag, junk[j]);
            PARSE_ERR(msg, nums[i].flag, junk[j]);
        }
        /* from the environment, the message names the variable */
        snprintf(v, sizeof(v), "%d", nums[i].max + 1);
        setenv(nums[i].env, v, 1);
        snprintf(msg, sizeof(msg), "%s must be %d..%d, got %d", nums[i].env, nums[i].min,
                 nums[i].max, nums[i].max + 1);
        PARSE_ERR(msg, "run");
        unsetenv(nums[i].env);

        /* both bounds are accepted (when the cross-checks allow) */
        snprintf(v, sizeof(v), "%d", nums[i].min);
        if (strcmp(nums[i].flag, "--stale-after-s") != 0 &&
            strcmp(nums[i].flag, "--retry-max-ms") != 0)
            PARSE_OK(&cfg, nums[i].flag, v);
        snprintf(v, sizeof(v), "%d", nums[i].max);
        if (strcmp(nums[i].flag, "--heartbeat-s") != 0 &&
            strcmp(nums[i].flag, "--retry-base-ms") != 0)
            PARSE_OK(&cfg, nums[i].flag, v);
    }
}

static void test_addresses_and_strings(void **state)
{
    (void)state;
    const char *bad[] = { "localhost", "localhost:", ":6379", "h:0", "h:65536", "h:63x", "::1:6379",
                          "[::1]", "h:-1" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char msg[256];
        snprintf(msg, sizeof(msg), "--redis must be HOST:PORT with a port 1..65535, got '%s'",
                 bad[i]);
        PARSE_ERR(msg, "--redis", bad[i]);
        snprintf(msg, sizeof(msg), "--http must be HOST:PORT with a port 1..65535, got '%s'",
                 bad[i]);
        PARSE_ERR(msg, "--http", bad[i]);
    }
    char longhost[80];
    memset(longhost, 'h', 70);
    strcpy(longhost + 70, ":80");
    PARSE_ERR("--http must be HOST:PORT with a port 1..65535, got 'hhhhhhhhhhhhhhhhhhhhhhhhhhhhhh"
              "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh:80'", "--http", longhost);
    setenv("OSAGO_REDIS", "nope", 1);
    PARSE_ERR("OSAGO_REDIS must be HOST:PORT with a port 1..65535, got 'nope'", "run");
    unsetenv("OSAGO_REDIS");

    PARSE_ERR("--kafka must not be empty", "--kafka", "");
    PARSE_ERR("--pg must not be empty", "--pg=");
    /* libpq's own reasons, so a typo is caught at start rather than in a reconnect loop */
    PARSE_ERR("--pg is not a PostgreSQL connection string: missing \"=\" after \"port\" in "
              "connection info string", "--pg", "host=127.0.0.1 port");
    PARSE_ERR("--pg is not a PostgreSQL connection string: invalid connection option \"hots\"",
              "--pg", "hots=127.0.0.1 dbname=osago");
    PARSE_ERR("--pg is not a PostgreSQL connection string: unterminated quoted string in "
              "connection info string", "--pg", "password='abc");
    {
        worker_config_t cfg;
        PARSE_OK(&cfg, "--pg", "postgresql://osago@127.0.0.1:5433/osago");
        assert_string_equal(cfg.pg_conninfo, "postgresql://osago@127.0.0.1:5433/osago");
    }
    PARSE_ERR("--insurers must not be empty", "--insurers", "");
    PARSE_ERR("--migrations must not be empty", "--migrations", "");
    PARSE_ERR("--log-level must be debug, info, warn or error, got 'verbose'", "--log-level",
              "verbose");
    PARSE_ERR("--log-level must be debug, info, warn or error, got 'INFO'", "--log-level", "INFO");
    PARSE_ERR("--name must be 1..127 characters", "--name", "");
    char longname[200];
    memset(longname, 'n', 128);
    longname[128] = '\0';
    PARSE_ERR("--name must be 1..127 characters", "--name", longname);
    longname[127] = '\0';
    worker_config_t cfg;
    PARSE_OK(&cfg, "--name", longname);
    assert_int_equal(strlen(cfg.consumer_name), 127);
}

static void test_cross_checks(void **state)
{
    worker_config_t cfg;
    (void)state;
    PARSE_ERR("--retry-max-ms (500) must be at least --retry-base-ms (1000)", "--retry-max-ms",
              "500");
    PARSE_OK(&cfg, "--retry-max-ms", "1000");
    PARSE_ERR("--stale-after-s (15) must be at least twice --heartbeat-s (15), or a late "
              "heartbeat would have running tasks swept", "--stale-after-s", "15");
    PARSE_ERR("--stale-after-s (29) must be at least twice --heartbeat-s (15), or a late "
              "heartbeat would have running tasks swept", "--stale-after-s", "29");
    PARSE_ERR("--stale-after-s (120) must be at least twice --heartbeat-s (61), or a late "
              "heartbeat would have running tasks swept", "--heartbeat-s", "61");
    PARSE_OK(&cfg, "--stale-after-s", "30");
    PARSE_OK(&cfg, "--heartbeat-s", "60");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clean_env),
        cmocka_unit_test_setup(test_environment, clean_env),
        cmocka_unit_test_setup(test_flags_override_env, clean_env),
        cmocka_unit_test_setup(test_commands, clean_env),
        cmocka_unit_test_setup(test_roles, clean_env),
        cmocka_unit_test_setup(test_numbers, clean_env),
        cmocka_unit_test_setup(test_addresses_and_strings, clean_env),
        cmocka_unit_test_setup(test_cross_checks, clean_env),
    };
    return cmocka_run_group_tests_name("worker configuration", tests, clean_env, NULL);
}
