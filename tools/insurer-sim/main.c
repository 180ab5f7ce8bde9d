/* insurer-sim: any number of simulated OSAGO insurer APIs on one loopback port, with realistic
 * prices and injectable latency, errors, timeouts and malformed answers. */
#include "config.h"
#include "insurers.h"
#include "options.h"
#include "server.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

/* Every held call is an open socket: take all the descriptors the hard limit allows. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    struct sim_config cfg;
    struct sim_server server;
    sigset_t sigs;
    char err[512];
    int rc, sig = 0;

    rc = options_parse(argc, argv, &cfg);
    if (rc != OPTIONS_OK) {
        options_usage(rc == OPTIONS_HELP ? stdout : stderr);
        return rc == OPTIONS_HELP ? 0 : 2;
    }
    raise_fd_limit();
    /* Blocked before any thread starts, so only sigwait below ever takes them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (server_start(&server, &cfg) < 0)
        return 1;
    if (cfg.write_insurers != NULL
        && insurers_write_file(&cfg, server.port, cfg.write_insurers, err, sizeof(err)) < 0) {
        fprintf(stderr, "insurer-sim: --write-insurers: %s\n", err);
        server_stop(&server);
        return 1;
    }
    for (int i = 0; i < cfg.ninsurers; i++) {
        const struct insurer *ins = &cfg.insurer[i];
        fprintf(stderr, "insurer-sim: %s latency %d-%d ms, error %.3f (HTTP %d), timeout %.3f, "
                "malformed %.3f\n", ins->code, ins->latency_min, ins->latency_max, ins->error,
                ins->status, ins->timeout, ins->malformed);
    }
    printf("insurer-sim: ready listen=%s:%d insurers=%d\n", cfg.host, server.port, cfg.ninsurers);
    fflush(stdout);

    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "insurer-sim: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    server_stop(&server);
    return 0;
}
