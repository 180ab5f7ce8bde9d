/* Every client connection goes through here, frame by frame, to a mock broker. librdkafka 2.0's
 * mock brokers only listen on random ports, so devbroker accepts on --listen (the bootstrap
 * address: any broker that is up) and on one port of its own per broker, and puts those ports
 * into the broker addresses the mock hands out (Metadata, FindCoordinator): clients never reach
 * a mock port directly.
 *
 * Being in the path also mends the mock's one behaviour that no client could live with in a
 * benchmark: it answers a fetch that finds nothing only when the fetch's max wait is over, even
 * if data arrives meanwhile, so a consumer either polls in a tight loop or waits. Kafka answers
 * such a fetch as soon as a produce lands in one of its topics, and so does the relay: it asks
 * the mock with no wait, keeps an empty answer until a produce to one of the fetch's topics is
 * acknowledged (then asks again) or the client's wait is over (then hands the empty answer on).
 * Like a Kafka broker, it reads a connection's next request only once its fetch is answered. */
#ifndef DEVBROKER_RELAY_H
#define DEVBROKER_RELAY_H

#include "evloop.h"
#include "mock.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

struct relay_session;

/* How many produces to a topic were acknowledged: a fetch answered empty while one of its
 * topics moved on raced with that produce, and asks again at once instead of waiting. */
struct relay_topic {
    char *name;
    uint64_t produced;
};

struct relay_port {
    struct relay *relay;
    struct ev_watch w;              /* fd -1 while not listening */
    struct sockaddr_in addr;
    int broker_id;                  /* 0: the bootstrap port (the first broker up) */
};

struct relay {
    struct evloop *loop;
    struct mock *mock;
    struct relay_port bootstrap;
    struct relay_port broker[MOCK_MAX_BROKERS];     /* broker id i+1 at broker[i] */
    struct relay_session *live;     /* open sessions */
    struct relay_session *dead;     /* closed in this batch, freed after it */
    size_t nlive;
    struct relay_topic *topics;
    size_t ntopics;
    struct {
        unsigned long requests;     /* client requests passed on, fetches included */
        unsigned long produces;
        unsigned long fetches;      /* fetches asked of the mock with no wait */
        unsigned long held;         /* empty answers kept */
        unsigned long woken;        /* held fetches asked again after a produce */
        unsigned long raced;        /* empty answers asked again at once: a produce landed
                                     * while they were on their way */
        unsigned long expired;      /* held fetches answered empty when the wait was over */
    } stats;
};

/* Listens on addr, the bootstrap port (port filled in when 0). Returns 0 or -1 (errno set). */
int relay_start(struct relay *r, struct evloop *loop, struct mock *mock, struct sockaddr_in *addr);

/* Once the mock runs: one loopback port per broker, advertised to clients in its place.
 * Returns 0 or -1 (errno set). */
int relay_brokers_start(struct relay *r);

/* Drops the sessions relayed to broker id (-1: all), as the broker itself drops its clients. */
void relay_broker_down(struct relay *r, int broker);

/* Follows the brokers' state after `broker up|down`: with every broker down the bootstrap port
 * stops listening (clients get "connection refused", as from the down mock brokers themselves),
 * and listens again once one is up. Returns 0, or -1 when the port cannot be bound again. */
int relay_sync(struct relay *r);

/* Milliseconds until the next held fetch is due (-1: none): the event loop's timeout. */
int relay_next_timeout(struct relay *r);

/* Answers the held fetches that are due, and frees sessions closed during the last batch of
 * events. */
void relay_tick(struct relay *r);

/* "sessions=N requests=N produces=N fetches=N held=N woken=N raced=N expired=N" into buf. */
void relay_stats(const struct relay *r, char *buf, size_t size);

void relay_stop(struct relay *r);

#endif
