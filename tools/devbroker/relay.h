/* The fixed bootstrap address. librdkafka 2.0's mock brokers only listen on random ports, so
 * devbroker accepts on --listen and relays each connection byte for byte to the first mock
 * broker that is up. Clients bootstrap through it; the metadata they get back names the mock
 * brokers' own ports, which they then use directly. */
#ifndef DEVBROKER_RELAY_H
#define DEVBROKER_RELAY_H

#include "evloop.h"
#include "mock.h"

#include <netinet/in.h>
#include <stddef.h>

struct relay_session;

struct relay {
    struct evloop *loop;
    struct mock *mock;
    struct ev_watch listener;       /* fd -1 while every broker is down */
    struct sockaddr_in addr;
    struct relay_session *live;     /* open sessions */
    struct relay_session *dead;     /* closed in this batch, freed after it */
    size_t nlive;
};

/* Listens on addr (port filled in when 0). Returns 0 or -1 (errno set). */
int relay_start(struct relay *r, struct evloop *loop, struct mock *mock, struct sockaddr_in *addr);

/* Drops the sessions relayed to broker id (-1: all), as the broker itself drops its clients. */
void relay_broker_down(struct relay *r, int broker);

/* Follows the brokers' state after `broker up|down`: with every broker down the bootstrap port
 * stops listening (clients get "connection refused", as from the down mock brokers themselves),
 * and listens again once one is up. Returns 0, or -1 when the port cannot be bound again. */
int relay_sync(struct relay *r);

/* Frees sessions closed during the last batch of events. */
void relay_reap(struct relay *r);

void relay_stop(struct relay *r);

#endif
