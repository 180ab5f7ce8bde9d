/*
 * The applications a results role made completed lately, each with the time its read model was
 * written. Redis acknowledges a write before its replicas have it: when a failover promotes a
 * replica, the last documents written to the old primary are gone, and a completed application
 * is never written again (no result is left to deliver, the sweeper leaves completed ones
 * alone). So once Redis is reached on a new connection, results writes these again (results.c).
 *
 * A fixed ring of RING_CAP entries: the oldest fall off, so it covers about RING_CAP divided by
 * the completion rate (33 s at 500 applications a second).
 */
#ifndef OSAGO_WORKER_COMPLETED_RING_H
#define OSAGO_WORKER_COMPLETED_RING_H

#include <stdint.h>

#define COMPLETED_RING_CAP 16384

typedef struct {
    char    id[40];
    int64_t at_ms;
} completed_entry_t;

typedef struct {
    completed_entry_t *e;       /* COMPLETED_RING_CAP entries, allocated on first use */
    int                head;    /* where the next entry goes */
    int                n;       /* entries held, up to COMPLETED_RING_CAP */
} completed_ring_t;

/* Remembers id (an application id, cut at 39 bytes); 0, or -1 when out of memory. */
int  completed_ring_add(completed_ring_t *r, const char *id, int64_t at_ms);

/* Up to max ids of the entries written at or after since_ms, oldest first, from *pos on (0 the
 * first time); *pos moves past what was returned. Returns how many; 0 when no more. The ids
 * point into the ring: valid until the next add. */
int  completed_ring_since(const completed_ring_t *r, int64_t since_ms, int *pos,
                          const char **ids, int max);

void completed_ring_free(completed_ring_t *r);

#endif
