/*
 * osago-worker: `run` starts the configured roles as threads plus the HTTP endpoints and
 * waits for SIGINT/SIGTERM; `migrate` applies the SQL migrations and exits.
 *
 * Exit status: 0 after a clean stop or migration, 1 on a runtime failure (a role thread that
 * returned on its own, a fatal error of the Kafka producer, HTTP port in use, a failed
 * migration), 2 on invalid configuration.
 */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <curl/curl.h>

#include "config.h"
#include "insurers.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "migrate.h"
#include "worker.h"

#define MALLOC_TRIM_SECONDS 60

/* Set by the main thread when SIGINT or SIGTERM arrives (sigwait: no handler), read by every
 * role's thread through worker_t.stop: atomic, as any flag shared between threads must be. */
static atomic_int stop_flag;

struct role_thread {
    const char *name;
    unsigned    bit;
    void     *(*entry)(void *);
    worker_t   *w;
    pthread_t   tid;
    int         started;
    int         failed;     /* returned although nobody asked it to stop */
};

/*
 * A role returning before the stop flag means it gave up (e.g. its consumer could not be
 * created): the process stops as a whole and exits 1, so the supervisor restarts it, rather
 * than running on without that role.
 */
static void *role_run(void *arg)
{
    struct role_thread *t = arg;
    char                comm[16];

    /* `top -H` and perf then show which role burns the CPU */
    snprintf(comm, sizeof(comm), "w:%s", t->name);
    prctl(PR_SET_NAME, comm, 0, 0, 0);
    t->entry(t->w);
    if (!*t->w->stop) {
        t->failed = 1;
        wlog(LOG_ERROR, t->name, NULL, "role_exited", "role %s stopped on its own; shutting "
             "down", t->name);
        kill(getpid(), SIGTERM);   /* blocked everywhere: the main thread takes it */
    }
    return NULL;
}

static int install_signals(sigset_t *stop_set)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    /* a peer closing a socket must be an error return, not the end of the process */
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        return -1;
    sigemptyset(stop_set);
    sigaddset(stop_set, SIGINT);
    sigaddset(stop_set, SIGTERM);
    return 0;
}

static const char *roles_text(unsigned roles, char *buf, size_t cap)
{
    static const char *const names[] = { "relay", "orchestrator", "executor", "results",
                                         "sweeper" };
    buf[0] = '\0';
    for (int i = 0; i < 5; i++)
        if (roles & (1u << i))
            snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", buf[0] ? "," : "", names[i]);
    return buf;
}

/*
 * Every insurer call in flight holds a socket, and systemd's and most shells' soft limit is
 * 1,024 descriptors: the soft limit is raised to the hard one, and a limit too low for
 * --max-in-flight is said at start rather than found as failed calls under load.
 */
static void raise_fd_limit(const worker_config_t *cfg)
{
    struct rlimit rl;
    rlim_t        need = (rlim_t) cfg->max_in_flight + 256;   /* Kafka, PostgreSQL, HTTP */

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        (void)getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        wlog(LOG_WARN, "main", NULL, "fd_limit",
             "open-file limit %llu is below --max-in-flight + 256 (%llu): calls beyond it fail; "
             "raise LimitNOFILE / ulimit -n", (unsigned long long) rl.rlim_cur,
             (unsigned long long) need);
}

/* Said at start, not refused: the path to the insurer may be a private network or a local
 * TLS-terminating proxy under another name, which the worker cannot tell. */
static void warn_auth_in_clear(const insurer_list_t *insurers)
{
    char host[256];

    for (int i = 0; i < insurers->n; i++) {
        int clear = insurers_auth_in_clear(&insurers->items[i], host, sizeof(host));

        if (clear != AUTH_SEALED)
            wlog(LOG_WARN, "main", NULL, "insurer_auth_in_clear",
                 "insurer %s: its auth_header goes to %s over http://%s, readable by anyone on "
                 "the way; use https://", insurers->items[i].code, host,
                 clear == AUTH_CLEAR_PROXY ? " through the proxy in the environment" : "");
    }
}

static int run(const worker_config_t *cfg)
{
    struct role_thread roles[] = {
        { "relay", ROLE_RELAY, relay_main, NULL, 0, 0, 0 },
        { "orchestrator", ROLE_ORCHESTRATOR, orchestrator_main, NULL, 0, 0, 0 },
        { "executor", ROLE_EXECUTOR, executor_main, NULL, 0, 0, 0 },
        { "results", ROLE_RESULTS, results_main, NULL, 0, 0, 0 },
        { "sweeper", ROLE_SWEEPER, sweeper_main, NULL, 0, 0, 0 },
    };
    const int nroles = (int)(sizeof(roles) / sizeof(roles[0]));
    insurer_list_t *insurers = calloc(1, sizeof(*insurers));
    metrics_t *metrics = calloc(1, sizeof(*metrics));
    struct http_server *http = NULL;
    kafka_producer_t *producer = NULL;
    worker_t w = { .cfg = cfg, .insurers = insurers, .metrics = metrics,
                   .stop = &stop_flag,
                   .pg_wait = { &stop_flag, cfg->pg_answer_timeout_ms } };
    sigset_t stop_set;
    char err[512], names[128];
    int rc = 1;

    if (insurers == NULL || metrics == NULL) {
        fprintf(stderr, "osago-worker: out of memory\n");
        goto out;
    }
    raise_fd_limit(cfg);
    /* only these roles call insurers or name them: a relay-only instance needs no file */
    if (cfg->roles & (ROLE_ORCHESTRATOR | ROLE_EXECUTOR | ROLE_RESULTS)) {
        if (insurers_load(cfg->insurers_file, cfg->insurer_timeout_ms, insurers, err,
                          sizeof(err)) < 0) {
            fprintf(stderr, "osago-worker: %s\n", err);
            rc = 2;
            goto out;
        }
        warn_auth_in_clear(insurers);
    }
    if (install_signals(&stop_set) < 0) {
        perror("osago-worker: sigaction");
        goto out;
    }
    /*
     * Block SIGINT/SIGTERM before any thread exists (librdkafka's, libmicrohttpd's, the roles'):
     * they inherit the mask, so the signal always reaches the main thread, which waits for it
     * in sigtimedwait without a race, and role threads' system calls are never interrupted.
     */
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "osago-worker: curl_global_init failed\n");
        goto out;
    }
    producer = kafka_producer_new(cfg, metrics, err, sizeof(err));
    if (producer == NULL) {
        fprintf(stderr, "osago-worker: %s\n", err);
        rc = 2;
        goto out_curl;
    }

    w.producer = producer;
    http = http_start(&w, err, sizeof(err));
    if (http == NULL) {
        fprintf(stderr, "osago-worker: %s\n", err);
        goto out_producer;
    }

    wlog(LOG_INFO, "main", NULL, "worker_started", "osago-worker %s started: roles %s, "
         "%d insurer(s), kafka %s, redis %s:%d", cfg->consumer_name,
         roles_text(cfg->roles, names, sizeof(names)), insurers->n, cfg->kafka_bootstrap,
         cfg->redis_host, cfg->redis_port);

    for (int i = 0; i < nroles; i++) {
        if (!(cfg->roles & roles[i].bit))
            continue;
        roles[i].w = &w;
        if (pthread_create(&roles[i].tid, NULL, role_run, &roles[i]) != 0) {
            wlog(LOG_ERROR, "main", NULL, "thread_failed", "cannot start role %s",
                 roles[i].name);
            stop_flag = 1;
            break;
        }
        roles[i].started = 1;
    }

    /*
     * Between signals, once a minute, malloc gives the system back the free pages inside its
     * arenas: each role thread fills an arena of its own in bursts and glibc returns memory only
     * from an arena's top, so the resident size would creep up by what the bursts leave
     * scattered while the bytes in use stay flat (docs/BENCHMARKS.md, the soaks). A few
     * milliseconds a minute.
     */
    while (!stop_flag) {
        struct timespec minute = { .tv_sec = MALLOC_TRIM_SECONDS };
        int             sig = sigtimedwait(&stop_set, NULL, &minute);

        if (sig == SIGINT || sig == SIGTERM)
            stop_flag = 1;
        else if (sig < 0 && errno == EAGAIN)
            malloc_trim(0);
    }

    wlog(LOG_INFO, "main", NULL, "worker_stopping", "stopping: waiting for the roles");
    rc = 0;
    for (int i = 0; i < nroles; i++) {
        if (!roles[i].started)
            continue;
        pthread_join(roles[i].tid, NULL);
        if (roles[i].failed)
            rc = 1;
    }
    for (int i = 0; i < nroles; i++)
        if ((cfg->roles & roles[i].bit) && !roles[i].started)
            rc = 1;
    if (kafka_producer_failed(producer))
        rc = 1;
    http_stop(http);
out_producer:
    kafka_producer_free(producer);
out_curl:
    curl_global_cleanup();
    wlog(LOG_INFO, "main", NULL, "worker_stopped", "stopped (exit %d)", rc);
out:
    free(metrics);
    free(insurers);
    return rc;
}

int main(int argc, char **argv)
{
    worker_config_t cfg;
    char err[512];

    if (config_parse(&cfg, argc, argv, err, sizeof(err)) < 0) {
        fprintf(stderr, "osago-worker: %s\n", err);
        return 2;
    }
    if (strcmp(cfg.command, "help") == 0) {
        config_usage("osago-worker");
        return 0;
    }
    log_set_level(cfg.log_level);   /* validated by config_parse */

    if (strcmp(cfg.command, "migrate") == 0)
        return migrate_run(&cfg) == 0 ? 0 : 1;
    return run(&cfg);
}
