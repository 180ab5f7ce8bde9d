/* A small epoll loop: each watched fd carries a callback. Level-triggered, so a handler that
 * stops early (a full buffer) is simply called again later. */
#ifndef DEVBROKER_EVLOOP_H
#define DEVBROKER_EVLOOP_H

#include <signal.h>
#include <stdint.h>

struct ev_watch;
typedef void ev_handler(struct ev_watch *w, uint32_t events);

struct ev_watch {
    int fd;
    uint32_t events;    /* what is registered now, so updates can skip no-op epoll_ctl calls */
    ev_handler *handler;
    void *owner;
};

struct evloop {
    int epfd;
    /* Called after each batch of events: the place to free what handlers closed, since a later
     * event of the same batch may still point at it. */
    void (*after_batch)(void *arg);
    void *after_batch_arg;
    /* The wait's timeout in ms (-1: none), asked before each wait with after_batch_arg;
     * after_batch also runs when it expires. NULL: no timeout. */
    int (*next_timeout)(void *arg);
};

int evloop_init(struct evloop *loop);
void evloop_close(struct evloop *loop);

/* Registers w->fd for events; returns 0 or -1. */
int evloop_add(struct evloop *loop, struct ev_watch *w, uint32_t events);
/* Changes the registered events (no-op when unchanged). */
int evloop_set(struct evloop *loop, struct ev_watch *w, uint32_t events);
void evloop_del(struct evloop *loop, struct ev_watch *w);

/* Runs until *stop is set (by a signal handler). Signals in sigmask_during_wait are blocked
 * outside the wait, so a signal can only land while waiting and is never lost between the
 * flag check and epoll_pwait. Returns 0, or -1 on an epoll error. */
int evloop_run(struct evloop *loop, volatile sig_atomic_t *stop, const sigset_t *wait_mask);

#endif
