/* The relay between clients and the mock brokers (relay.h): one session per client connection,
 * two non-blocking sockets, whole Kafka frames in growable buffers. A side is read only while
 * the other side's output is small and its own input holds no frame it may not pass on yet,
 * which is all the flow control needed. */
#include "relay.h"
#include "kproto.h"
#include "net.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RELAY_MAX_SESSIONS  2048            /* two fds each, well inside the open-file limit */
#define RELAY_READ_CHUNK    65536
#define RELAY_READ_CHUNKS   16              /* per event: a fast sender cannot fill memory */
#define RELAY_MAX_FRAME     (128 << 20)     /* well over any fetch.max.bytes in use here */
#define RELAY_OUT_HIGH      (4 << 20)       /* stop reading a side while the other owes this */
#define RELAY_MAX_WAIT_MS   60000           /* a held fetch is answered within this at most */

struct buf {
    uint8_t *p;
    size_t off, len, cap;                   /* the bytes are p[off..len) */
};

struct relay_end {
    struct ev_watch w;
    struct buf in;          /* read from this side, not yet handled */
    struct buf out;         /* to be written to this side */
};

/* A request passed to the broker whose answer has not come back yet. */
struct pending {
    int32_t correlation_id;
    int16_t api_key, api_version;
    bool held_fetch;        /* the session's fetch, sent with no wait */
};

struct relay_session {
    struct relay *relay;
    struct relay_end client, broker;
    int broker_id;
    bool connecting;
    bool closed;
    struct pending *pending;                /* a ring, in the order sent */
    size_t npending, pending_head, pending_cap;
    /* the fetch in progress: while it is, the client's next requests wait */
    bool fetching;
    bool held;                              /* its empty answer is kept in `empty` */
    struct buf fetch_req;                   /* the request as sent again on a wake-up */
    struct buf topics;                      /* its topics, each followed by '\0' */
    int64_t due_ms;                         /* when the client's wait is over */
    uint64_t produced;                      /* its topics' produce count when it was sent */
    struct buf empty;
    struct relay_session *prev, *next;
};

static void relay_on_event(struct ev_watch *w, uint32_t events);
static void relay_from_client(struct relay_session *s);

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- buffers -------------------------------------------------------------------------------- */

static size_t buf_used(const struct buf *b)
{
    return b->len - b->off;
}

/* Room for n more bytes at the end. Returns 0 or -1. */
static int buf_reserve(struct buf *b, size_t n)
{
    size_t used = buf_used(b), cap;
    uint8_t *p;

    if (b->cap - b->len >= n)
        return 0;
    if (b->off > 0) {
        memmove(b->p, b->p + b->off, used);
        b->off = 0;
        b->len = used;
        if (b->cap - b->len >= n)
            return 0;
    }
    for (cap = b->cap ? b->cap : 4096; cap - used < n; cap *= 2)
        ;
    if ((p = realloc(b->p, cap)) == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_append(struct buf *b, const uint8_t *data, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off == b->len)
        b->off = b->len = 0;
}

/* Emptied, its memory kept for the next use (one per fetch: no allocation each time). */
static void buf_reset(struct buf *b)
{
    b->off = b->len = 0;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* The length of the whole frame at the start of b (its size field included), 0 while it is
 * incomplete, -1 when the size is impossible. */
static long buf_frame(const struct buf *b)
{
    const uint8_t *p = b->p + b->off;
    uint32_t size;

    if (buf_used(b) < 4)
        return 0;
    size = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (size > RELAY_MAX_FRAME)
        return -1;
    return buf_used(b) >= 4 + (size_t)size ? (long)(4 + size) : 0;
}

/* ---- sessions ------------------------------------------------------------------------------- */

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

static void relay_free(struct relay_session *s)
{
    buf_free(&s->client.in);
    buf_free(&s->client.out);
    buf_free(&s->broker.in);
    buf_free(&s->broker.out);
    buf_free(&s->empty);
    buf_free(&s->fetch_req);
    buf_free(&s->topics);
    free(s->pending);
    free(s);
}

static int pending_push(struct relay_session *s, const struct pending *p)
{
    if (s->npending == s->pending_cap) {
        size_t cap = s->pending_cap ? s->pending_cap * 2 : 16;
        struct pending *grown = malloc(cap * sizeof(*grown));

        if (grown == NULL)
            return -1;
        for (size_t i = 0; i < s->npending; i++)
            grown[i] = s->pending[(s->pending_head + i) % s->pending_cap];
        free(s->pending);
        s->pending = grown;
        s->pending_cap = cap;
        s->pending_head = 0;
    }
    s->pending[(s->pending_head + s->npending) % s->pending_cap] = *p;
    s->npending++;
    return 0;
}

/* The request an answer is for: answers come in the order of the requests, so it is the
 * oldest; requests skipped on the way never got an answer. false: none (nothing is taken). */
static bool pending_take(struct relay_session *s, int32_t correlation_id, struct pending *p)
{
    for (size_t i = 0; i < s->npending; i++) {
        const struct pending *at = &s->pending[(s->pending_head + i) % s->pending_cap];

        if (at->correlation_id != correlation_id)
            continue;
        *p = *at;
        s->pending_head = (s->pending_head + i + 1) % s->pending_cap;
        s->npending -= i + 1;
        return true;
    }
    return false;
}

/* The fetch is over for this session: its client's next requests may go. */
static void fetch_end(struct relay_session *s)
{
    s->fetching = s->held = false;
    buf_reset(&s->fetch_req);
    buf_reset(&s->topics);
    buf_reset(&s->empty);
}

static void add_topic(void *arg, const char *name, size_t n)
{
    struct relay_session *s = arg;

    /* out of memory: this topic will not wake the fetch, its wait still ends it */
    if (buf_append(&s->topics, (const uint8_t *)name, n) == 0
        && buf_append(&s->topics, (const uint8_t *)"", 1) < 0)
        s->topics.len -= n;
}

/* The fetch's topics are '\0'-terminated names one after another: the one at *at (NULL past
 * the last), with its length in *n; *at moves on to the next. */
static const char *topic_next(const struct relay_session *s, size_t *at, size_t *n)
{
    const char *name;

    if (*at >= buf_used(&s->topics))
        return NULL;
    name = (const char *)s->topics.p + s->topics.off + *at;
    *n = strlen(name);
    *at += *n + 1;
    return name;
}

static bool fetches_topic(const struct relay_session *s, const char *name, size_t n)
{
    const char *t;
    size_t at = 0, len;

    while ((t = topic_next(s, &at, &len)) != NULL)
        if (len == n && memcmp(t, name, n) == 0)
            return true;
    return false;
}

static struct relay_topic *topic_find(struct relay *r, const char *name, size_t n, bool add)
{
    struct relay_topic *grown;

    for (size_t i = 0; i < r->ntopics; i++)
        if (strlen(r->topics[i].name) == n && memcmp(r->topics[i].name, name, n) == 0)
            return &r->topics[i];
    if (!add || (grown = realloc(r->topics, (r->ntopics + 1) * sizeof(*grown))) == NULL)
        return NULL;
    r->topics = grown;
    if ((grown[r->ntopics].name = strndup(name, n)) == NULL)
        return NULL;
    grown[r->ntopics].produced = 0;
    return &r->topics[r->ntopics++];
}

/* The produce count of the session's fetch topics, summed: it changes when any of them moves. */
static uint64_t fetch_produced(const struct relay_session *s)
{
    uint64_t sum = 0;
    const char *name;
    size_t at = 0, len;

    while ((name = topic_next(s, &at, &len)) != NULL) {
        const struct relay_topic *t = topic_find(s->relay, name, len, false);

        if (t != NULL)
            sum += t->produced;
    }
    return sum;
}

/* What to wait for on each socket. */
static int relay_update(struct relay_session *s)
{
    struct relay *r = s->relay;
    uint32_t ce = 0, be = 0;

    if (s->closed)
        return 0;
    if (s->connecting) {
        be = EPOLLOUT;      /* connect completion; the client waits until then */
    } else {
        /* a client with a fetch in progress has its next request read, not passed on: Kafka
         * too reads a connection's next request only once the current one is answered */
        if (buf_used(&s->broker.out) < RELAY_OUT_HIGH
            && (!s->fetching || buf_frame(&s->client.in) == 0))
            ce |= EPOLLIN;
        if (buf_used(&s->client.out) < RELAY_OUT_HIGH)
            be |= EPOLLIN;
        if (buf_used(&s->client.out) > 0)
            ce |= EPOLLOUT;
        if (buf_used(&s->broker.out) > 0)
            be |= EPOLLOUT;
    }
    if (evloop_set(r->loop, &s->client.w, ce) < 0 || evloop_set(r->loop, &s->broker.w, be) < 0)
        return -1;
    return 0;
}

/* Writes what e owes. Returns -1 when the session must close. */
static int relay_flush(struct relay_end *e)
{
    while (buf_used(&e->out) > 0) {
        ssize_t n = send(e->w.fd, e->out.p + e->out.off, buf_used(&e->out), MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf_consume(&e->out, (size_t)n);
    }
    return 0;
}

/* Reads what e has, up to RELAY_READ_CHUNKS chunks (level-triggered epoll brings us back for the
 * rest, after the frames read so far moved on). Returns 0, or -1 on EOF or an error.
 *
 * Each read re-arms TCP_QUICKACK (the kernel clears it): the mock broker's sockets keep Nagle
 * on, so an answer written while the one before it is unacknowledged waits for our ACK, and a
 * delayed ACK costs 40 ms. Clients talking to the mock directly hid this by sending their next
 * request (and the ACK with it) at once; the relay holds fetches and has nothing to send. */
static int relay_read(struct relay_end *e)
{
    int one = 1;

    (void)setsockopt(e->w.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
    for (int chunks = 0; chunks < RELAY_READ_CHUNKS; chunks++) {
        ssize_t n;

        if (buf_reserve(&e->in, RELAY_READ_CHUNK) < 0)
            return -1;
        n = recv(e->w.fd, e->in.p + e->in.len, e->in.cap - e->in.len, 0);
        if (n > 0) {
            e->in.len += (size_t)n;
            if ((size_t)n < RELAY_READ_CHUNK)
                return 0;
            continue;
        }
        if (n == 0)
            return -1;
        if (errno != EINTR)
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    }
    return 0;
}

/* ---- the protocol --------------------------------------------------------------------------- */

static int port_of(void *arg, int32_t node_id)
{
    struct relay *r = arg;

    if (node_id < 1 || node_id > r->mock->nbrokers || r->broker[node_id - 1].w.fd < 0)
        return 0;
    return ntohs(r->broker[node_id - 1].addr.sin_port);
}

/* Sends the held fetch to the broker again. */
static void fetch_again(struct relay_session *s)
{
    const uint8_t *again = s->fetch_req.p + s->fetch_req.off;
    struct pending p = { .api_key = KP_FETCH, .held_fetch = true };
    struct kp_request req;

    s->held = false;
    buf_reset(&s->empty);
    if (kp_request_parse(again, buf_used(&s->fetch_req), &req) < 0
        || buf_append(&s->broker.out, again, buf_used(&s->fetch_req)) < 0) {
        relay_close(s);
        return;
    }
    p.correlation_id = req.correlation_id;
    p.api_version = req.api_version;
    s->produced = fetch_produced(s);
    if (pending_push(s, &p) < 0)
        relay_close(s);
}

/* A produce to topic was acknowledged: the fetches held on it ask again. */
static void wake_topic(void *arg, const char *name, size_t n)
{
    struct relay *r = arg;
    struct relay_topic *t = topic_find(r, name, n, true);

    if (t != NULL)
        t->produced++;
    for (struct relay_session *s = r->live, *next; s != NULL; s = next) {
        next = s->next;
        if (!s->held || !fetches_topic(s, name, n))
            continue;
        r->stats.woken++;
        fetch_again(s);
        if (!s->closed && (relay_flush(&s->broker) < 0 || relay_update(s) < 0))
            relay_close(s);
    }
}

/* One answer from the broker, in place at the head of broker.in, for the request p. Returns
 * true when it goes on to the client (false: a held fetch kept it). */
static bool relay_answer(struct relay_session *s, const struct pending *p, uint8_t *frame,
                         size_t len)
{
    struct relay *r = s->relay;

    switch (p->api_key) {
    case KP_API_VERSIONS:
        (void)kp_api_versions_cap(frame, len, p->api_version);
        break;
    case KP_METADATA:
    case KP_FIND_COORDINATOR:
        (void)kp_rewrite_broker_ports(frame, len, p->api_key, p->api_version, port_of, r);
        break;
    case KP_FETCH:
        if (!p->held_fetch)
            break;
        if (kp_fetch_response_empty(frame, len, p->api_version) == 1 && now_ms() < s->due_ms) {
            if (fetch_produced(s) != s->produced) {
                r->stats.raced++;
                fetch_again(s);     /* a produce landed while it was on its way */
                return false;
            }
            s->held = true;
            buf_reset(&s->empty);
            if (buf_append(&s->empty, frame, len) == 0) {
                r->stats.held++;
                return false;
            }
            s->held = false;
        }
        fetch_end(s);
        break;
    default:
        break;
    }
    return true;
}

/* Answers from the broker go to the client in order; produce acknowledgements wake fetches. */
static void relay_from_broker(struct relay_session *s)
{
    long len;

    while (!s->closed && (len = buf_frame(&s->broker.in)) != 0) {
        uint8_t *frame = s->broker.in.p + s->broker.in.off;
        struct pending p = { .api_key = -1 };
        int32_t correlation_id;
        bool was_fetching = s->fetching;

        if (len < 0) {
            relay_close(s);
            return;
        }
        /* an answer to no request we know of is passed on as it came */
        if (kp_response_correlation(frame, (size_t)len, &correlation_id) == 0)
            (void)pending_take(s, correlation_id, &p);
        if (relay_answer(s, &p, frame, (size_t)len)
            && buf_append(&s->client.out, frame, (size_t)len) < 0) {
            relay_close(s);
            return;
        }
        if (p.api_key == KP_PRODUCE)
            (void)kp_produce_response_topics(frame, (size_t)len, p.api_version, wake_topic,
                                              s->relay);
        buf_consume(&s->broker.in, (size_t)len);
        if (was_fetching && !s->fetching)
            relay_from_client(s);
    }
}

/* Requests from the client go to the broker in order, a fetch without its wait; after a fetch
 * the rest wait for its answer. */
static void relay_from_client(struct relay_session *s)
{
    long len;

    while (!s->closed && !s->fetching && (len = buf_frame(&s->client.in)) != 0) {
        uint8_t *frame = s->client.in.p + s->client.in.off;
        struct kp_request req = { .api_key = -1 };
        struct pending p = { .api_key = -1 };
        int wait;

        if (len < 0) {
            relay_close(s);
            return;
        }
        if (kp_request_parse(frame, (size_t)len, &req) == 0) {
            p.correlation_id = req.correlation_id;
            p.api_key = req.api_key;
            p.api_version = req.api_version;
            s->relay->stats.requests++;
            if (req.api_key == KP_PRODUCE)
                s->relay->stats.produces++;
            buf_reset(&s->topics);
            if ((wait = kp_fetch_request_nowait(frame, (size_t)len, &req, add_topic, s)) >= 0) {
                if (buf_append(&s->fetch_req, frame, (size_t)len) < 0) {
                    relay_close(s);
                    return;
                }
                s->due_ms = now_ms() + (wait < RELAY_MAX_WAIT_MS ? wait : RELAY_MAX_WAIT_MS);
                s->produced = fetch_produced(s);
                s->fetching = true;
                p.held_fetch = true;
                s->relay->stats.fetches++;
            }
        }
        if (buf_append(&s->broker.out, frame, (size_t)len) < 0
            || (!(p.api_key >= 0 && kp_request_unanswered(frame, (size_t)len, &req))
                && pending_push(s, &p) < 0)) {
            relay_close(s);
            return;
        }
        buf_consume(&s->client.in, (size_t)len);
    }
}

/* ---- events --------------------------------------------------------------------------------- */

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
    if ((events & (EPOLLIN | EPOLLHUP)) && relay_read(self) < 0)
        eof = true;
    if (self == &s->client)
        relay_from_client(s);
    else
        relay_from_broker(s);
    if (s->closed)
        return;
    /* Pass on what is owed in both directions, even on EOF: a broker's last answer should
     * reach the client before the session closes. */
    if (relay_flush(peer) < 0 || relay_flush(self) < 0 || eof) {
        relay_close(s);
        return;
    }
    if (relay_update(s) < 0)
        relay_close(s);
}

static void relay_accept(struct relay_port *port, int fd)
{
    struct relay *r = port->relay;
    struct relay_session *s;
    struct sockaddr_in addr;
    int id = port->broker_id;

    if (id == 0)
        id = mock_first_up(r->mock, &addr);
    else if (r->mock->up[id - 1])
        addr = r->mock->addr[id - 1];
    else
        id = 0;             /* that broker is down: hang up, as it would */
    if (id == 0 || r->nlive >= RELAY_MAX_SESSIONS || net_accepted(fd) < 0) {
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
    struct relay_port *port = w->owner;

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
        relay_accept(port, fd);
    }
}

static int relay_listen(struct relay_port *port)
{
    int fd = net_listen(&port->addr, 512);

    if (fd < 0)
        return -1;
    port->w = (struct ev_watch){ .fd = fd, .handler = relay_on_listen, .owner = port };
    if (evloop_add(port->relay->loop, &port->w, EPOLLIN) < 0) {
        close(fd);
        port->w.fd = -1;
        return -1;
    }
    return 0;
}

static void relay_unlisten(struct relay_port *port)
{
    if (port->w.fd < 0)
        return;
    evloop_del(port->relay->loop, &port->w);
    close(port->w.fd);
    port->w.fd = -1;
}

int relay_start(struct relay *r, struct evloop *loop, struct mock *mock, struct sockaddr_in *addr)
{
    memset(r, 0, sizeof(*r));
    r->loop = loop;
    r->mock = mock;
    r->bootstrap = (struct relay_port){ .relay = r, .w.fd = -1, .addr = *addr };
    for (int i = 0; i < MOCK_MAX_BROKERS; i++)
        r->broker[i] = (struct relay_port){ .relay = r, .w.fd = -1, .broker_id = i + 1 };
    if (relay_listen(&r->bootstrap) < 0)
        return -1;
    *addr = r->bootstrap.addr;
    return 0;
}

int relay_brokers_start(struct relay *r)
{
    for (int i = 0; i < r->mock->nbrokers; i++) {
        r->broker[i].addr = r->bootstrap.addr;
        r->broker[i].addr.sin_port = 0;
        if (relay_listen(&r->broker[i]) < 0)
            return -1;
    }
    return 0;
}

int relay_sync(struct relay *r)
{
    struct sockaddr_in unused;
    bool any_up = mock_first_up(r->mock, &unused) != 0;

    if (!any_up) {
        relay_unlisten(&r->bootstrap);
        return 0;
    }
    if (r->bootstrap.w.fd < 0 && relay_listen(&r->bootstrap) < 0) {
        char addr[64];

        net_format_addr(&r->bootstrap.addr, addr, sizeof(addr));
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

int relay_next_timeout(struct relay *r)
{
    int64_t now = now_ms(), due = -1;

    for (struct relay_session *s = r->live; s != NULL; s = s->next)
        if (s->held && (due < 0 || s->due_ms < due))
            due = s->due_ms;
    if (due < 0)
        return -1;
    return due <= now ? 0 : (int)(due - now);
}

void relay_tick(struct relay *r)
{
    int64_t now = now_ms();

    for (struct relay_session *s = r->live, *next; s != NULL; s = next) {
        next = s->next;
        if (!s->held || s->due_ms > now)
            continue;
        /* the client's wait is over: it gets the empty answer, as from Kafka */
        if (buf_append(&s->client.out, s->empty.p + s->empty.off, buf_used(&s->empty)) < 0) {
            relay_close(s);
            continue;
        }
        r->stats.expired++;
        fetch_end(s);
        relay_from_client(s);
        if (!s->closed && (relay_flush(&s->client) < 0 || relay_flush(&s->broker) < 0
                           || relay_update(s) < 0))
            relay_close(s);
    }
    while (r->dead != NULL) {
        struct relay_session *s = r->dead;

        r->dead = s->next;
        relay_free(s);
    }
}

void relay_stats(const struct relay *r, char *buf, size_t size)
{
    snprintf(buf, size, "sessions=%zu requests=%lu produces=%lu fetches=%lu held=%lu woken=%lu "
             "raced=%lu expired=%lu", r->nlive, r->stats.requests, r->stats.produces,
             r->stats.fetches, r->stats.held, r->stats.woken, r->stats.raced,
             r->stats.expired);
}

void relay_stop(struct relay *r)
{
    relay_broker_down(r, -1);
    relay_tick(r);
    relay_unlisten(&r->bootstrap);
    for (int i = 0; i < MOCK_MAX_BROKERS; i++)
        relay_unlisten(&r->broker[i]);
    for (size_t i = 0; i < r->ntopics; i++)
        free(r->topics[i].name);
    free(r->topics);
    r->topics = NULL;
    r->ntopics = 0;
}
