/* Control port connections and the command interpreter. */
#include "control.h"
#include "net.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONTROL_LINE_MAX 512
#define CONTROL_MAX_ARGS 6

struct control_client {
    struct control *control;
    struct ev_watch w;
    char buf[CONTROL_LINE_MAX];
    size_t len;
    struct control_client *next;
};

/* Broker id or "all" (-1). Returns 0 or -1. */
static int control_parse_broker(const char *s, int *id)
{
    char *end;
    long v;

    if (strcasecmp(s, "all") == 0) {
        *id = -1;
        return 0;
    }
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || v < 1 || v > MOCK_MAX_BROKERS)
        return -1;
    *id = (int)v;
    return 0;
}

static int control_parse_ms(const char *s, int *ms)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || v < 0 || v > 600000)
        return -1;
    *ms = (int)v;
    return 0;
}

static void control_broker(struct control *c, char **argv, int argc, char *out, size_t outsize)
{
    char err[256];
    int id, ms;

    if (argc < 3 || control_parse_broker(argv[2], &id) < 0) {
        snprintf(out, outsize, "error: usage: broker down|up N, broker rtt N MS (N: 1..%d or all)",
                 c->mock->nbrokers);
        return;
    }
    if (strcmp(argv[1], "down") == 0 && argc == 3) {
        if (mock_broker_set_up(c->mock, id, false, err, sizeof(err)) < 0) {
            snprintf(out, outsize, "error: %s", err);
            return;
        }
        /* The mock drops its own connections; relayed ones are ours to drop. */
        relay_broker_down(c->relay, id);
        (void)relay_sync(c->relay);
        fprintf(stderr, "devbroker: broker %s down\n", argv[2]);
    } else if (strcmp(argv[1], "up") == 0 && argc == 3) {
        if (mock_broker_set_up(c->mock, id, true, err, sizeof(err)) < 0) {
            snprintf(out, outsize, "error: %s", err);
            return;
        }
        if (relay_sync(c->relay) < 0) {
            snprintf(out, outsize, "error: broker up, but the bootstrap port could not listen "
                     "again (see the log)");
            return;
        }
        fprintf(stderr, "devbroker: broker %s up\n", argv[2]);
    } else if (strcmp(argv[1], "rtt") == 0 && argc == 4) {
        if (control_parse_ms(argv[3], &ms) < 0) {
            snprintf(out, outsize, "error: rtt must be 0..600000 ms");
            return;
        }
        if (mock_broker_set_rtt(c->mock, id, ms, err, sizeof(err)) < 0) {
            snprintf(out, outsize, "error: %s", err);
            return;
        }
        fprintf(stderr, "devbroker: broker %s rtt %d ms\n", argv[2], ms);
    } else {
        snprintf(out, outsize, "error: usage: broker down|up N, broker rtt N MS");
        return;
    }
    snprintf(out, outsize, "ok");
}

void control_execute(struct control *c, char *line, char *out, size_t outsize)
{
    char *argv[CONTROL_MAX_ARGS + 1];
    char *save = NULL, *tok;
    char err[256];
    int argc = 0;

    for (tok = strtok_r(line, " \t\r", &save); tok != NULL; tok = strtok_r(NULL, " \t\r", &save)) {
        if (argc == CONTROL_MAX_ARGS) {
            snprintf(out, outsize, "error: too many words");
            return;
        }
        argv[argc++] = tok;
    }
    argv[argc] = NULL;
    if (argc == 0) {
        snprintf(out, outsize, "error: empty command");
    } else if (strcmp(argv[0], "ping") == 0 && argc == 1) {
        snprintf(out, outsize, "ok");
    } else if (strcmp(argv[0], "stats") == 0 && argc == 1) {
        char stats[256];

        relay_stats(c->relay, stats, sizeof(stats));
        snprintf(out, outsize, "ok %s", stats);
    } else if (strcmp(argv[0], "broker") == 0 && argc >= 2) {
        control_broker(c, argv, argc, out, outsize);
    } else if (strcmp(argv[0], "topic") == 0) {
        if (argc != 4 || strcmp(argv[1], "error") != 0) {
            snprintf(out, outsize, "error: usage: topic error TOPIC ERRNAME|clear");
        } else if (mock_topic_set_error(c->mock, argv[2], argv[3], err, sizeof(err)) < 0) {
            snprintf(out, outsize, "error: %s", err);
        } else {
            fprintf(stderr, "devbroker: topic %s error %s\n", argv[2], argv[3]);
            snprintf(out, outsize, "ok");
        }
    } else if (strcmp(argv[0], "request") == 0) {
        int count = 1;

        if ((argc != 4 && argc != 5) || strcmp(argv[1], "error") != 0
            || (argc == 5 && ((count = atoi(argv[4])) < 1 || count > 1000))) {
            snprintf(out, outsize, "error: usage: request error API ERRNAME [COUNT 1..1000]");
        } else if (mock_request_error(c->mock, argv[2], argv[3], count, err, sizeof(err)) < 0) {
            snprintf(out, outsize, "error: %s", err);
        } else {
            fprintf(stderr, "devbroker: next %d %s request(s) fail with %s\n", count, argv[2],
                    argv[3]);
            snprintf(out, outsize, "ok");
        }
    } else {
        snprintf(out, outsize, "error: unknown command (ping, stats, broker down|up|rtt, "
                 "topic error, request error, quit)");
    }
}

static void control_drop(struct control_client *cl)
{
    struct control *c = cl->control;
    struct control_client **pp;

    evloop_del(c->loop, &cl->w);
    close(cl->w.fd);
    cl->w.fd = -1;
    for (pp = &c->live; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == cl) {
            *pp = cl->next;
            break;
        }
    }
    cl->next = c->dead;
    c->dead = cl;
}

/* Answers are a few bytes and the client waits for each, so a blocking-style send suffices;
 * a client that does not read is dropped rather than buffered for. */
static int control_reply(struct control_client *cl, const char *answer)
{
    char line[CONTROL_LINE_MAX + 2];
    int n = snprintf(line, sizeof(line), "%s\n", answer);

    return send(cl->w.fd, line, (size_t)n, MSG_NOSIGNAL) == n ? 0 : -1;
}

static void control_on_client(struct ev_watch *w, uint32_t events)
{
    struct control_client *cl = w->owner;
    ssize_t n;
    char *nl;

    (void)events;
    n = recv(w->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        control_drop(cl);
        return;
    }
    if (n < 0)
        return;
    cl->len += (size_t)n;
    while ((nl = memchr(cl->buf, '\n', cl->len)) != NULL) {
        char answer[CONTROL_LINE_MAX];
        size_t used = (size_t)(nl - cl->buf) + 1;

        *nl = '\0';
        if (strcmp(cl->buf, "quit") == 0 || strcmp(cl->buf, "quit\r") == 0) {
            (void)control_reply(cl, "ok");
            control_drop(cl);
            return;
        }
        control_execute(cl->control, cl->buf, answer, sizeof(answer));
        if (control_reply(cl, answer) < 0) {
            control_drop(cl);
            return;
        }
        memmove(cl->buf, cl->buf + used, cl->len - used);
        cl->len -= used;
    }
    if (cl->len == sizeof(cl->buf)) {
        (void)control_reply(cl, "error: line too long");
        control_drop(cl);
    }
}

static void control_on_listen(struct ev_watch *w, uint32_t events)
{
    struct control *c = w->owner;
    struct control_client *cl;
    int fd;

    (void)events;
    fd = accept(w->fd, NULL, NULL);
    if (fd < 0)
        return;
    cl = calloc(1, sizeof(*cl));
    if (cl == NULL || net_set_nonblock(fd) < 0) {
        free(cl);
        close(fd);
        return;
    }
    cl->control = c;
    cl->w = (struct ev_watch){ .fd = fd, .handler = control_on_client, .owner = cl };
    if (evloop_add(c->loop, &cl->w, EPOLLIN) < 0) {
        free(cl);
        close(fd);
        return;
    }
    cl->next = c->live;
    c->live = cl;
}

int control_start(struct control *c, struct evloop *loop, struct mock *mock, struct relay *relay,
                  struct sockaddr_in *addr)
{
    int fd;

    memset(c, 0, sizeof(*c));
    c->loop = loop;
    c->mock = mock;
    c->relay = relay;
    fd = net_listen(addr, 16);
    if (fd < 0)
        return -1;
    c->listener = (struct ev_watch){ .fd = fd, .handler = control_on_listen, .owner = c };
    if (evloop_add(loop, &c->listener, EPOLLIN) < 0) {
        close(fd);
        c->listener.fd = -1;
        return -1;
    }
    return 0;
}

void control_reap(struct control *c)
{
    while (c->dead != NULL) {
        struct control_client *cl = c->dead;

        c->dead = cl->next;
        free(cl);
    }
}

void control_stop(struct control *c)
{
    while (c->live != NULL)
        control_drop(c->live);
    control_reap(c);
    if (c->listener.fd >= 0) {
        evloop_del(c->loop, &c->listener);
        close(c->listener.fd);
        c->listener.fd = -1;
    }
}
