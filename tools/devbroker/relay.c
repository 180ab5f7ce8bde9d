/* Byte relay from the bootstrap port to a mock broker: one session per client connection, two
 * non-blocking sockets and one buffer per direction. Reading from a side pauses while its
 * buffer still waits to be written to the other side, which is all the flow control needed. */
#include "relay.h"
#include "net.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define RELAY_BUF           65536
#define RELAY_MAX_SESSIONS  2048    /* two fds each, well inside the open-file limit */

struct relay_end {
    struct ev_watch w;
    char buf[RELAY_BUF];    /* read from this side, not yet written to the other */
    size_t len, off;
};

struct relay_session {
    struct relay *relay;
    struct relay_end client, broker;
    int broker_id;
    bool connecting;
    bool closed;
    struct relay_session *prev, *next;
};

static void relay_on_event(struct ev_watch *w, uint32_t events);

static void relay_unlink(struct relay_session **head, struct relay_session *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        *head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

static void relay_push(struct relay_session **head, struct relay_session *s)
{
    s->prev = NULL;
    s->next = *head;
    if (*head != NULL)
        (*head)->prev = s;
    *head = s;
}

static void relay_close_end(struct relay *r, struct relay_end *e)
{
    if (e->w.fd < 0)
        return;
    evloop_del(r->loop, &e->w);
    close(e->w.fd);
    e->w.fd = -1;
}

/* Closing only marks the session: an event for its other socket may be later in this batch. */
static void relay_close(struct relay_session *s)
{
    struct relay *r = s->relay;

    if (s->closed)
        return;
    s->closed = true;
    relay_close_end(r, &s->client);
    relay_close_end(r, &s->broker);
    relay_unlink(&r->live, s);
    relay_push(&r->dead, s);
    r->nlive--;
}

/* Writes what `from` holds to `to`. Returns -1 when the session must close. */
static int relay_flush(struct relay_end *from, struct relay_end *to)
{
    while (from->off < from->len) {
        ssize_t n = send(to->w.fd, from->buf + from->off, from->len - from->off, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        from->off += (size_t)n;
    }
    from->len = from->off = 0;
    return 0;
}

/* Reads into e's empty buffer. Returns 1 on data, 0 when nothing is ready, -1 on EOF or error. */
static int relay_fill(struct relay_end *e)
{
    for (;;) {
        ssize_t n = recv(e->w.fd, e->buf, sizeof(e->buf), 0);

        if (n > 0) {
            e->len = (size_t)n;
            e->off = 0;
            return 1;
        }
        if (n == 0)
            return -1;
        if (errno == EINTR)
            continue;
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    }
}

static int relay_update(struct relay_session *s)
{
    struct relay *r = s->relay;
    uint32_t ce = 0, be = 0;

    if (s->connecting) {
        be = EPOLLOUT;      /* connect completion; the client waits until then */
    } else {
        if (s->client.len == 0)
            ce |= EPOLLIN;
        if (s->broker.len == 0)
            be |= EPOLLIN;
        if (s->broker.len > 0)
            ce |= EPOLLOUT;
        if (s->client.len > 0)
            be |= EPOLLOUT;
    }
    if (evloop_set(r->loop, &s->client.w, ce) < 0 || evloop_set(r->loop, &s->broker.w, be) < 0)
        return -1;
    return 0;
}

static int relay_finish_connect(struct relay_session *s)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(s->broker.w.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
        fprintf(stderr, "devbroker: relay: connect to broker %d: %s\n", s->broker_id,
                strerror(err != 0 ? err : errno));
        return -1;
    }
    s->connecting = false;
    return 0;
}

static void relay_on_event(struct ev_watch *w, uint32_t events)
{
    struct relay_session *s = w->owner;
    struct relay_end *self = (w == &s->client.w) ? &s->client : &s->broker;
    struct relay_end *peer = (self == &s->client) ? &s->broker : &s->client;
    bool eof = false;

    if (s->connecting) {
        /* The client's socket is watched for nothing until then, but a hang-up still comes. */
        if (self == &s->client || relay_finish_connect(s) < 0) {
            relay_close(s);
            return;
        }
    }
    if (events & EPOLLERR) {
        relay_close(s);
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP)) {
        /* With the buffer still full a hang-up cannot be read past; it would fire forever. */
        if (self->len == 0 ? relay_fill(self) < 0 : (events & EPOLLHUP) != 0)
            eof = true;
    }
    /* Pass on what is buffered in both directions, even on EOF: a broker's last response
     * should reach the client before the session closes. */
    if (relay_flush(self, peer) < 0 || relay_flush(peer, self) < 0 || eof) {
        relay_close(s);
        return;
    }
    if (relay_update(s) < 0)
        relay_close(s);
}

static void relay_accept(struct relay *r, int fd)
{
    struct relay_session *s;
    struct sockaddr_in addr;
    int id = mock_first_up(r->mock, &addr);

    /* Only possible between a `broker down` and relay_sync(): hang up like the broker. */
    if (id == 0 || r->nlive >= RELAY_MAX_SESSIONS || net_set_nonblock(fd) < 0) {
        if (id != 0)
            fprintf(stderr, "devbroker: relay: refusing a connection (%zu open)\n", r->nlive);
        close(fd);
        return;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(fd);
        return;
    }
    s->relay = r;
    s->broker_id = id;
    s->client.w = (struct ev_watch){ .fd = fd, .handler = relay_on_event, .owner = s };
    s->broker.w = (struct ev_watch){ .fd = net_connect_start(&addr), .handler = relay_on_event,
                                     .owner = s };
    s->connecting = true;
    if (s->broker.w.fd < 0) {
        fprintf(stderr, "devbroker: relay: connect to broker %d: %s\n", id, strerror(errno));
        close(fd);
        free(s);
        return;
    }
    if (evloop_add(r->loop, &s->client.w, 0) < 0
        || evloop_add(r->loop, &s->broker.w, EPOLLOUT) < 0) {
        evloop_del(r->loop, &s->client.w);
        close(s->client.w.fd);
        close(s->broker.w.fd);
        free(s);
        return;
    }
    relay_push(&r->live, s);
    r->nlive++;
}

static void relay_on_listen(struct ev_watch *w, uint32_t events)
{
    struct relay *r = w->owner;

    (void)events;
    /* Take what the backlog holds now; level-triggered epoll brings us back for the rest. */
    for (int i = 0; i < 64; i++) {
        int fd = accept(w->fd, NULL, NULL);

        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR
                && errno != ECONNABORTED)
                fprintf(stderr, "devbroker: relay: accept: %s\n", strerror(errno));
            return;
        }
        relay_accept(r, fd);
    }
}

static int relay_listen(struct relay *r)
{
    int fd = net_listen(&r->addr, 512);

    if (fd < 0)
        return -1;
    r->listener = (struct ev_watch){ .fd = fd, .handler = relay_on_listen, .owner = r };
    if (evloop_add(r->loop, &r->listener, EPOLLIN) < 0) {
        close(fd);
        r->listener.fd = -1;
        return -1;
    }
    return 0;
}

static void relay_unlisten(struct relay *r)
{
    if (r->listener.fd < 0)
        return;
    evloop_del(r->loop, &r->listener);
    close(r->listener.fd);
    r->listener.fd = -1;
}

int relay_start(struct relay *r, struct evloop *loop, struct mock *mock, struct sockaddr_in *addr)
{
    memset(r, 0, sizeof(*r));
    r->loop = loop;
    r->mock = mock;
    r->addr = *addr;
    r->listener.fd = -1;
    if (relay_listen(r) < 0)
        return -1;
    *addr = r->addr;
    return 0;
}

int relay_sync(struct relay *r)
{
    struct sockaddr_in unused;
    bool any_up = mock_first_up(r->mock, &unused) != 0;

    if (!any_up) {
        relay_unlisten(r);
        return 0;
    }
    if (r->listener.fd < 0 && relay_listen(r) < 0) {
        char addr[64];

        net_format_addr(&r->addr, addr, sizeof(addr));
        fprintf(stderr, "devbroker: relay: listen %s again: %s\n", addr, strerror(errno));
        return -1;
    }
    return 0;
}

void relay_broker_down(struct relay *r, int broker)
{
    struct relay_session *s = r->live, *next;

    for (; s != NULL; s = next) {
        next = s->next;
        if (broker == -1 || s->broker_id == broker)
            relay_close(s);
    }
}

void relay_reap(struct relay *r)
{
    while (r->dead != NULL) {
        struct relay_session *s = r->dead;

        r->dead = s->next;
        free(s);
    }
}

void relay_stop(struct relay *r)
{
    relay_broker_down(r, -1);
    relay_reap(r);
    relay_unlisten(r);
}
