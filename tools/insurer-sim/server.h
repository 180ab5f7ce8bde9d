/* The HTTP side: libmicrohttpd with an epoll thread pool. A call that must wait (latency, an
 * injected timeout) is suspended and parked in the delay queue, never a blocked thread. */
#ifndef INSURER_SIM_SERVER_H
#define INSURER_SIM_SERVER_H

#include "config.h"
#include "delay_queue.h"
#include "faults.h"

#include <microhttpd.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>

struct sim_server {
    const struct sim_config *cfg;
    struct MHD_Daemon *daemon;
    struct delay_queue delays;
    struct fault_rng rng;
    atomic_int suspended;       /* suspended and not yet back in the handler */
    atomic_int suspended_max;   /* the most at once since start (GET /healthz: "max_waiting") */
    int port;                   /* the bound port (the flag may say 0) */
    FILE *timing;               /* --timing-log, or NULL */
};

/* Binds and starts serving. Returns 0 or -1 (reason on stderr). */
int server_start(struct sim_server *s, const struct sim_config *cfg);

/* Stops accepting, releases every parked call (held ones are closed unanswered), stops. */
void server_stop(struct sim_server *s);

#endif
