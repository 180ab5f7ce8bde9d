/* The control port: a line protocol over TCP so tests can break the cluster on purpose.
 *   ping | broker down N | broker up N | broker rtt N MS | topic error TOPIC ERRNAME|clear | quit
 * N is a broker id or "all". Every command is answered with "ok" or "error: <why>". */
#ifndef DEVBROKER_CONTROL_H
#define DEVBROKER_CONTROL_H

#include "evloop.h"
#include "mock.h"
#include "relay.h"

#include <netinet/in.h>
#include <stddef.h>

struct control_client;

struct control {
    struct evloop *loop;
    struct mock *mock;
    struct relay *relay;
    struct ev_watch listener;
    struct control_client *live, *dead;
};

int control_start(struct control *c, struct evloop *loop, struct mock *mock, struct relay *relay,
                  struct sockaddr_in *addr);

/* Runs one command line (no newline); writes the answer line (no newline) into out. */
void control_execute(struct control *c, char *line, char *out, size_t outsize);

void control_reap(struct control *c);
void control_stop(struct control *c);

#endif
