/* insurer-sim's configuration: everything the flags say, nothing that changes at run time. */
#ifndef INSURER_SIM_CONFIG_H
#define INSURER_SIM_CONFIG_H

#include <stdint.h>

#define SIM_MAX_INSURERS 64
#define SIM_CODE_MAX 32

struct insurer {
    char code[SIM_CODE_MAX + 1];
    char name[128];
    int latency_min, latency_max;   /* ms, uniform */
    double error;       /* share of calls answered with `status` */
    double timeout;     /* share of calls never answered */
    double malformed;   /* share of calls answered 200 with a broken body */
    int status;         /* the injected error status */
};

struct sim_config {
    char host[64];          /* loopback IPv4 literal */
    int port;
    int threads;            /* libmicrohttpd's thread pool */
    uint64_t seed;
    int hold_ms;            /* how long an injected timeout keeps the connection */
    int max_connections;
    const char *write_insurers;
    const char *timing_log;     /* each answered quote: application, insurer, received, answered */
    int ninsurers;
    struct insurer insurer[SIM_MAX_INSURERS];
};

#endif
