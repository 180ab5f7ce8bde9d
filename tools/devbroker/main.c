/* devbroker: Kafka for the local stack and the tests. librdkafka's mock cluster in a daemon,
 * reachable at a fixed bootstrap address, with a control port for fault injection. */
#include "control.h"
#include "evloop.h"
#include "mock.h"
#include "net.h"
#include "options.h"
#include "relay.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

struct devbroker {
    struct mock mock;
    struct evloop loop;
    struct relay relay;
    struct control control;
};

static void after_batch(void *arg)
{
    struct devbroker *d = arg;

    relay_tick(&d->relay);
    control_reap(&d->control);
}

static int next_timeout(void *arg)
{
    struct devbroker *d = arg;

    return relay_next_timeout(&d->relay);
}

/* SIGINT/SIGTERM stay blocked everywhere (librdkafka's threads inherit the mask) except inside
 * epoll_pwait, so only the main loop ever sees them. */
static int signals_setup(sigset_t *wait_mask)
{
    struct sigaction sa;
    sigset_t block;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
        return -1;
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        return -1;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &block, wait_mask) < 0)
        return -1;
    sigdelset(wait_mask, SIGINT);
    sigdelset(wait_mask, SIGTERM);
    return 0;
}

int main(int argc, char **argv)
{
    struct devbroker_config cfg;
    struct devbroker d;
    sigset_t wait_mask;
    char err[512], addr[64];
    int rc;

    rc = options_parse(argc, argv, &cfg);
    if (rc != OPTIONS_OK) {
        options_usage(rc == OPTIONS_HELP ? stdout : stderr);
        return rc == OPTIONS_HELP ? 0 : 2;
    }
    if (signals_setup(&wait_mask) < 0) {
        perror("devbroker: signals");
        return 1;
    }
    memset(&d, 0, sizeof(d));
    d.relay.bootstrap.w.fd = d.control.listener.fd = -1;
    if (evloop_init(&d.loop) < 0) {
        perror("devbroker: epoll");
        return 1;
    }
    d.loop.after_batch = after_batch;
    d.loop.after_batch_arg = &d;
    d.loop.next_timeout = next_timeout;

    /* Bind the fixed ports first: a port in use should fail fast, before the cluster starts. */
    if (relay_start(&d.relay, &d.loop, &d.mock, &cfg.listen) < 0) {
        net_format_addr(&cfg.listen, addr, sizeof(addr));
        fprintf(stderr, "devbroker: listen %s: %s\n", addr, strerror(errno));
        evloop_close(&d.loop);
        return 1;
    }
    if (cfg.has_control && control_start(&d.control, &d.loop, &d.mock, &d.relay, &cfg.control) < 0) {
        net_format_addr(&cfg.control, addr, sizeof(addr));
        fprintf(stderr, "devbroker: control %s: %s\n", addr, strerror(errno));
        relay_stop(&d.relay);
        evloop_close(&d.loop);
        return 1;
    }
    if (mock_start(&d.mock, cfg.brokers, err, sizeof(err)) < 0) {
        fprintf(stderr, "devbroker: mock cluster: %s\n", err);
        rc = 1;
        goto out;
    }
    for (int i = 0; i < cfg.ntopics; i++) {
        if (mock_topic_create(&d.mock, cfg.topic[i], cfg.partitions, err, sizeof(err)) < 0) {
            fprintf(stderr, "devbroker: %s\n", err);
            rc = 1;
            goto out;
        }
    }
    if (relay_brokers_start(&d.relay) < 0) {
        fprintf(stderr, "devbroker: relay ports for the brokers: %s\n", strerror(errno));
        rc = 1;
        goto out;
    }
    fprintf(stderr, "devbroker: mock brokers at %s, advertised as", mock_bootstraps(&d.mock));
    for (int i = 0; i < d.mock.nbrokers; i++) {
        net_format_addr(&d.relay.broker[i].addr, addr, sizeof(addr));
        fprintf(stderr, " %s", addr);
    }
    fprintf(stderr, "; %d topic(s) x %d partition(s)\n", cfg.ntopics, cfg.partitions);
    if (cfg.has_control) {
        net_format_addr(&cfg.control, addr, sizeof(addr));
        fprintf(stderr, "devbroker: control port %s\n", addr);
    }
    net_format_addr(&cfg.listen, addr, sizeof(addr));
    printf("devbroker: ready bootstrap=%s\n", addr);
    fflush(stdout);

    rc = 0;
    if (evloop_run(&d.loop, &stop_requested, &wait_mask) < 0) {
        perror("devbroker: epoll_wait");
        rc = 1;
    }
    fprintf(stderr, "devbroker: stopping\n");
out:
    if (cfg.has_control)
        control_stop(&d.control);
    relay_stop(&d.relay);
    mock_stop(&d.mock);
    evloop_close(&d.loop);
    return rc;
}
