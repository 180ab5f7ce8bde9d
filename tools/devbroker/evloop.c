/* The daemon's epoll loop (relay and control port share the main thread). */
#include "evloop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

int evloop_init(struct evloop *loop)
{
    memset(loop, 0, sizeof(*loop));
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    return loop->epfd < 0 ? -1 : 0;
}

void evloop_close(struct evloop *loop)
{
    if (loop->epfd >= 0)
        close(loop->epfd);
    loop->epfd = -1;
}

int evloop_add(struct evloop *loop, struct ev_watch *w, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = w };

    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, w->fd, &ev) < 0)
        return -1;
    w->events = events;
    return 0;
}

int evloop_set(struct evloop *loop, struct ev_watch *w, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = w };

    if (w->events == events)
        return 0;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
        return -1;
    w->events = events;
    return 0;
}

void evloop_del(struct evloop *loop, struct ev_watch *w)
{
    if (w->fd >= 0)
        (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    w->events = 0;
}

int evloop_run(struct evloop *loop, volatile sig_atomic_t *stop, const sigset_t *wait_mask)
{
    struct epoll_event evs[64];

    while (!*stop) {
        int timeout = loop->next_timeout != NULL ? loop->next_timeout(loop->after_batch_arg) : -1;
        int n = epoll_pwait(loop->epfd, evs, 64, timeout, wait_mask);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (int i = 0; i < n; i++) {
            struct ev_watch *w = evs[i].data.ptr;

            /* A handler earlier in this batch may have closed this watch (fd = -1). */
            if (w->fd >= 0)
                w->handler(w, evs[i].events);
        }
        if (loop->after_batch != NULL)
            loop->after_batch(loop->after_batch_arg);
    }
    return 0;
}
