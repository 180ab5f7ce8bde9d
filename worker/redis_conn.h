/* Synchronous Redis (hiredis) for the worker's roles: connect with AUTH/SELECT, reconnect. */
#ifndef OSAGO_WORKER_REDIS_CONN_H
#define OSAGO_WORKER_REDIS_CONN_H

#include <stdatomic.h>

#include <hiredis/hiredis.h>

#include "config.h"

/* Connects (2 s timeout), retrying with backoff until *stop; NULL when stopping.
 * Backoff 100 ms doubling to 2 s; commands time out after 2 s too (then c->err is set and
 * redis_ensure reconnects). stop == NULL or *stop already set: a single attempt. */
redisContext *redis_connect(const worker_config_t *cfg, const char *role, atomic_int *stop);

/* A usable connection, reconnecting when the last command failed at the connection level. */
int redis_ensure(redisContext **c, const worker_config_t *cfg, const char *role,
                 atomic_int *stop);

/*
 * Whether r is a replica's refusal of a write (READONLY). After a failover behind the address we
 * connect to (a virtual IP, a proxy, a DNS name), a connection opened before it still reaches
 * the old primary, now a replica, and only a new connection reaches the new one. So the context
 * is marked failed, as after an I/O error, and the caller's next redis_ensure replaces it.
 * Returns 1 when so, 0 otherwise (r may be NULL).
 */
int redis_failed_over(redisContext *c, const redisReply *r);

/* Marks c failed, as after an I/O error (why: for the reconnect's log line), so that the next
 * redis_ensure replaces it: for a pipeline given up half-written, whose replies would be read as
 * the answers to later commands. */
void redis_abandon(redisContext *c, const char *why);

#endif
