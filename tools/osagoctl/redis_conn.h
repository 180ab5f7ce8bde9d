/* The Redis connection: opening it (AUTH, SELECT) and running commands with
 * errors already reported. */
#ifndef OSAGOCTL_REDIS_CONN_H
#define OSAGOCTL_REDIS_CONN_H

#include "config.h"

#include <hiredis/hiredis.h>

/* Both for connecting and for each command: a CLI should fail fast rather
 * than hang on a Redis that accepted the TCP connection but is stuck. */
#define REDIS_TIMEOUT_SECONDS 2

struct redis_conn {
    redisContext *ctx;
    const char *addr;   /* for messages */
};

/* Returns EXIT_OK, or EXIT_RUNTIME after reporting why. */
int redis_open(struct redis_conn *rc, const struct osagoctl_config *cfg);
void redis_close(struct redis_conn *rc);

/* Runs one command. Returns the reply (free with freeReplyObject), or NULL
 * after reporting an I/O failure or an error reply. */
redisReply *redis_command(struct redis_conn *rc, int argc, const char **argv);

#endif
