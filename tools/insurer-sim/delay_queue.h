/* Suspended connections waiting out their latency (or an injected timeout), in deadline order.
 * One thread for all of them: it sleeps until the earliest deadline and resumes what is due,
 * so a thousand held calls cost a thousand heap entries, not a thousand threads. */
#ifndef INSURER_SIM_DELAY_QUEUE_H
#define INSURER_SIM_DELAY_QUEUE_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct delay_entry {
    uint64_t due_ns;
    struct MHD_Connection *conn;
};

struct delay_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* on CLOCK_MONOTONIC */
    struct delay_entry *heap;
    size_t n, cap, max;
    uint64_t wake_ns;       /* when the thread wakes by itself; 0 while it waits for a push */
    bool stopping;
    pthread_t thread;
};

uint64_t delay_now_ns(void);

/* max bounds the entries (one per connection at most). Returns 0 or -1. */
int delay_queue_start(struct delay_queue *q, size_t max);

/* Queues a connection the caller has just suspended. False when the queue is stopping or full:
 * the caller must then answer at once instead. */
bool delay_queue_push(struct delay_queue *q, uint64_t due_ns, struct MHD_Connection *conn);

/* Stops the thread and hands every connection still queued to release (which must resume it);
 * pushes are refused from then on. */
void delay_queue_stop(struct delay_queue *q, void (*release)(struct MHD_Connection *, void *),
                      void *arg);

/* Frees a stopped queue, once nothing can push to it any more (the daemon stopped). */
void delay_queue_free(struct delay_queue *q);

#endif
