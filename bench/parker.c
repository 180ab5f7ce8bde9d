/*
 * parker: parks N long-poll requests on one HTTP server and records when each answer arrives.
 *
 * It opens N HTTP/1.1 keep-alive connections to HOST:PORT, sends one GET PATH on each, and waits
 * for the N responses. Meant for measuring what a parked request costs the server and how long
 * waking them all takes: bench/poll.sh publishes one update once the server reports N parked
 * requests and computes the wake latency from the arrival times written here.
 *
 *   parker -n N -p PATH [-H 'Name: value']... [-s SOURCES] [-b FIRST] [-c CONNECTS_PER_MS]
 *          [-t SECONDS] [-r READY_FILE] [-o OUT_FILE] HOST:PORT
 *
 * One loopback destination port admits only ~28k connections per source address (the ephemeral
 * port range), so the connections are spread over SOURCES source addresses 127.0.0.FIRST,
 * 127.0.0.FIRST+1, ... (FIRST defaults to 2; bind() with IP_BIND_ADDRESS_NO_PORT before
 * connect(): the port is picked at connect() per 4-tuple, so each source address has a whole
 * ephemeral range of its own). A process can hold only `ulimit -Hn` sockets: where that is below
 * N (and cannot be raised without CAP_SYS_RESOURCE), run several parkers, each with its own FIRST.
 * CONNECTS_PER_MS may be fractional (several parkers share one rate).
 * Connections are opened at most CONNECTS_PER_MS per millisecond, with at most MAX_CONNECTING
 * handshakes outstanding, so the server's listen backlog is not overrun: a SYN dropped on a full
 * accept queue is retried by the kernel only after a second, which would distort the timing.
 *
 * When every request has been written (or its connection has failed), READY_FILE is written
 * (atomically, by rename) with one line "sent=N failed=N us=REALTIME_US". The answers are not
 * read back until they are due, and connections stay open after their answer (closing them would
 * give the server work in the middle of a wake-up).
 *
 * OUT_FILE gets one line per complete response, "STATUS ARRIVAL_US", ARRIVAL_US being the
 * CLOCK_REALTIME time in microseconds at which the response was complete, so a script can compare
 * it with a publish time taken by `date +%s%6N`.
 *
 * The run stops when all N connections have an answer or have failed, or after -t SECONDS in all
 * (a hard stop: what has no answer by then counts as `timeout`). stdout gets one line:
 *   RESULT n=N connected=N sent=N responses=N s200=N s304=N sother=N refused=N addrnotavail=N
 *          connect_failed=N closed=N bad_response=N timeout=N statuses=CODE:COUNT,...
 * Exit status: 0 when every connection got a response, 1 otherwise, 2 on usage/system errors.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http_response.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24   /* linux/in.h, Linux >= 4.2 */
#endif

#define MAX_HDRS        16
#define MAX_SOURCES     250          /* source addresses at most, ending at 127.0.0.251 */
#define MAX_CONNS       1000000
#define MAX_CONNECTING  2048         /* handshakes outstanding at once */
#define RBUF_INIT       2048
#define RBUF_MAX        (1024 * 1024)
#define NEVENTS         1024

enum { C_NEW, C_CONNECTING, C_SENDING, C_WAITING, C_DONE, C_FAILED };

/* Why a connection ended without a response: the RESULT counters. */
enum { E_REFUSED, E_ADDRNOTAVAIL, E_CONNECT, E_CLOSED, E_BAD, E_TIMEOUT, E_COUNT };
static const char *const err_names[E_COUNT] = {
    "refused", "addrnotavail", "connect_failed", "closed", "bad_response", "timeout"
};

typedef struct {
    int      fd;
    uint8_t  state;
    uint8_t  src;        /* index of the source address in use */
    uint8_t  tries;      /* source addresses tried (EADDRNOTAVAIL moves on to the next) */
    uint16_t status;
    uint32_t wpos;       /* bytes of the request written */
    uint32_t rlen, rcap;
    char    *rbuf;       /* allocated when the first byte of the answer arrives */
    uint64_t arrival_us;
} conn_t;

/* The configuration and the whole state of a run: the only thing passed around. */
typedef struct {
    /* options */
    int         n, nsources, first_source, nhdrs;
    double      per_ms, timeout_s;
    const char *path, *ready_file, *out_file, *hdrs[MAX_HDRS];
    struct sockaddr_in target;
    struct in_addr     sources[MAX_SOURCES];
    /* run */
    char       *req;
    size_t      req_len;
    conn_t     *conns;
    int         ep;
    int         opened, connecting, connected, sent, finished, responses;
    int         settled;     /* connections whose request is written, or that are over */
    int         ready_written;
    uint64_t    errors[E_COUNT];
    uint64_t    by_status[1000];
} run_t;

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/* Wall clock, to be compared with the publish time the script takes with `date`. */
static uint64_t real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static void die(const char *what)
{
    fprintf(stderr, "parker: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void)
{
    fprintf(stderr, "usage: parker -n N -p PATH [-H 'Name: value']... [-s SOURCES] "
                    "[-b FIRST (source addresses 127.0.0.FIRST.., FIRST + SOURCES <= %d)] "
                    "[-c CONNECTS_PER_MS] [-t SECONDS] [-r READY_FILE] [-o OUT_FILE] HOST:PORT\n",
            MAX_SOURCES + 2);
    exit(2);
}

static void parse_args(run_t *r, int argc, char **argv)
{
    int opt;
    r->n = 0;
    r->nsources = 1;
    r->first_source = 2;
    r->per_ms = 10;
    r->timeout_s = 120;
    r->path = "/";
    while ((opt = getopt(argc, argv, "n:p:H:s:b:c:t:r:o:")) != -1) {
        switch (opt) {
        case 'n': r->n = atoi(optarg); break;
        case 'p': r->path = optarg; break;
        case 'H':
            if (r->nhdrs == MAX_HDRS) {
                usage();
            }
            r->hdrs[r->nhdrs++] = optarg;
            break;
        case 's': r->nsources = atoi(optarg); break;
        case 'b': r->first_source = atoi(optarg); break;
        case 'c': r->per_ms = atof(optarg); break;
        case 't': r->timeout_s = atof(optarg); break;
        case 'r': r->ready_file = optarg; break;
        case 'o': r->out_file = optarg; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || r->n < 1 || r->n > MAX_CONNS || r->nsources < 1
        || r->nsources > MAX_SOURCES || r->first_source < 1
        || r->first_source + r->nsources > MAX_SOURCES + 2 || !(r->per_ms > 0)
        || r->timeout_s <= 0 || r->timeout_s > 3600 || r->path[0] != '/') {
        usage();
    }

    char host[64];
    const char *colon = strrchr(argv[optind], ':');
    if (colon == NULL || (size_t) (colon - argv[optind]) >= sizeof(host)) {
        usage();
    }
    memcpy(host, argv[optind], (size_t) (colon - argv[optind]));
    host[colon - argv[optind]] = '\0';
    int port = atoi(colon + 1);
    r->target.sin_family = AF_INET;
    r->target.sin_port = htons((uint16_t) port);
    if (port < 1 || port > 65535 || inet_pton(AF_INET, host, &r->target.sin_addr) != 1) {
        usage();
    }
    for (int i = 0; i < r->nsources; i++) {
        r->sources[i].s_addr = htonl(0x7f000000u + (uint32_t) (r->first_source + i));
    }
}

/* The one request every connection sends: the same bytes for all. */
static void build_request(run_t *r, const char *hostport)
{
    size_t cap = strlen(r->path) + strlen(hostport) + 128;
    for (int i = 0; i < r->nhdrs; i++) {
        cap += strlen(r->hdrs[i]) + 2;
    }
    r->req = malloc(cap);
    if (r->req == NULL) {
        die("malloc");
    }
    int off = snprintf(r->req, cap, "GET %s HTTP/1.1\r\nHost: %s\r\n", r->path, hostport);
    for (int i = 0; i < r->nhdrs; i++) {
        off += snprintf(r->req + off, cap - (size_t) off, "%s\r\n", r->hdrs[i]);
    }
    off += snprintf(r->req + off, cap - (size_t) off, "\r\n");
    r->req_len = (size_t) off;
}

/* 50,000 sockets need more than the usual 1024 (or 20000) descriptors: take what is allowed. */
static void raise_nofile(int n)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        die("getrlimit");
    }
    rlim_t want = (rlim_t) n + 64;
    if (rl.rlim_cur >= want) {
        return;
    }
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < want) {
        fprintf(stderr, "parker: only %llu file descriptors allowed (ulimit -n) for %d "
                        "connections: the rest will fail\n", (unsigned long long) rl.rlim_cur, n);
    }
}

static void set_events(run_t *r, conn_t *c, int op, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(r->ep, op, c->fd, &ev) < 0) {
        die("epoll_ctl");
    }
}

/*
 * The connection is over (answered or failed). Its socket stays open until exit: a close now
 * would make the server handle a FIN while it is still waking the others.
 */
static void finish(run_t *r, conn_t *c, int state, int err)
{
    if (c->state == C_CONNECTING) {
        r->connecting--;
    }
    if (c->state != C_WAITING) {
        r->settled++;
    }
    if (c->fd >= 0) {
        epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
    }
    if (state == C_FAILED) {
        r->errors[err]++;
        if (c->fd >= 0) {
            close(c->fd);     /* nothing more to learn from it */
            c->fd = -1;
        }
    }
    free(c->rbuf);
    c->rbuf = NULL;
    c->state = (uint8_t) state;
    r->finished++;
}

static void write_ready(run_t *r)
{
    /* every request is written, or its connection is over */
    if (r->ready_written || r->settled < r->n) {
        return;
    }
    r->ready_written = 1;
    if (r->ready_file == NULL) {
        return;
    }
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", r->ready_file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        die(tmp);
    }
    fprintf(f, "sent=%d failed=%d us=%" PRIu64 "\n", r->sent, r->finished - r->responses,
            real_us());
    if (fclose(f) != 0 || rename(tmp, r->ready_file) < 0) {
        die(r->ready_file);
    }
}

/* Start a connection from the current source address; on EADDRNOTAVAIL move to the next one. */
static void conn_start(run_t *r, conn_t *c)
{
    while (c->tries < r->nsources) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            /* EMFILE/ENFILE: the descriptor limit, not the server */
            finish(r, c, C_FAILED, E_CONNECT);
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        struct sockaddr_in src = { .sin_family = AF_INET, .sin_addr = r->sources[c->src] };
        int rc = bind(fd, (struct sockaddr *) &src, sizeof(src));
        if (rc == 0) {
            rc = connect(fd, (struct sockaddr *) &r->target, sizeof(r->target));
        }
        if (rc == 0 || errno == EINPROGRESS) {
            c->fd = fd;
            c->state = C_CONNECTING;
            r->connecting++;
            set_events(r, c, EPOLL_CTL_ADD, EPOLLOUT | EPOLLIN | EPOLLRDHUP);
            return;
        }
        int e = errno;
        close(fd);
        if (e != EADDRNOTAVAIL && e != EADDRINUSE) {
            finish(r, c, C_FAILED, e == ECONNREFUSED ? E_REFUSED : E_CONNECT);
            return;
        }
        c->tries++;
        c->src = (uint8_t) ((c->src + 1) % r->nsources);
    }
    finish(r, c, C_FAILED, E_ADDRNOTAVAIL);
}

/* Write (the rest of) the request. */
static void conn_send(run_t *r, conn_t *c)
{
    while (c->wpos < r->req_len) {
        ssize_t k = send(c->fd, r->req + c->wpos, r->req_len - c->wpos, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;       /* EPOLLOUT is still asked for */
            }
            if (errno == EINTR) {
                continue;
            }
            finish(r, c, C_FAILED, E_CLOSED);
            return;
        }
        c->wpos += (uint32_t) k;
    }
    c->state = C_WAITING;
    r->sent++;
    r->settled++;
    set_events(r, c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
}

static void on_connected(run_t *r, conn_t *c)
{
    int err = 0;
    socklen_t el = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) {
        err = errno;
    }
    if (err != 0) {
        finish(r, c, C_FAILED, err == ECONNREFUSED ? E_REFUSED : E_CONNECT);
        return;
    }
    r->connecting--;
    r->connected++;
    c->state = C_SENDING;
    conn_send(r, c);
}

static void on_readable(run_t *r, conn_t *c)
{
    int eof = 0;
    for (;;) {
        if (c->rlen == c->rcap) {
            uint32_t cap = c->rcap ? c->rcap * 2 : RBUF_INIT;
            char *nb = cap <= RBUF_MAX ? realloc(c->rbuf, cap) : NULL;
            if (nb == NULL) {
                finish(r, c, C_FAILED, E_BAD);
                return;
            }
            c->rbuf = nb;
            c->rcap = cap;
        }
        ssize_t k = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (k == 0) {
            eof = 1;     /* parse what came before the FIN first */
            break;
        }
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            if (errno == EINTR) {
                continue;
            }
            finish(r, c, C_FAILED, E_CLOSED);   /* ECONNRESET */
            return;
        }
        c->rlen += (uint32_t) k;
    }
    if (c->rlen == 0) {
        if (eof) {
            finish(r, c, C_FAILED, E_CLOSED);
        }
        return;
    }
    http_response_t resp;
    int done = http_response_parse(c->rbuf, c->rlen, eof, &resp);
    if (done < 0) {
        finish(r, c, C_FAILED, E_BAD);
        return;
    }
    if (done == 0) {
        return;
    }
    c->arrival_us = real_us();
    c->status = (uint16_t) resp.status;
    r->by_status[resp.status]++;
    r->responses++;
    finish(r, c, C_DONE, 0);
    if (eof) {
        close(c->fd);
        c->fd = -1;
    }
}

static void on_event(run_t *r, conn_t *c, uint32_t events)
{
    if (c->state == C_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            return;
        }
        on_connected(r, c);
        if (c->state != C_SENDING && c->state != C_WAITING) {
            return;
        }
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        && (c->state == C_SENDING || c->state == C_WAITING)) {
        /* an answer (early ones too: a 4xx before the request is fully written) */
        on_readable(r, c);
        if (c->state != C_SENDING && c->state != C_WAITING) {
            return;
        }
        if (events & (EPOLLHUP | EPOLLERR)) {
            finish(r, c, C_FAILED, E_CLOSED);
            return;
        }
    }
    if ((events & EPOLLOUT) && c->state == C_SENDING) {
        conn_send(r, c);
    }
}

/* Open as many new connections as the rate and the handshake cap allow at this moment. */
static void open_some(run_t *r, uint64_t start_us, uint64_t now)
{
    uint64_t allowed = (uint64_t) ((double) ((now - start_us) / 1000u + 1) * r->per_ms);
    if (allowed == 0) {
        allowed = 1;
    }
    while (r->opened < r->n && (uint64_t) r->opened < allowed && r->connecting < MAX_CONNECTING) {
        conn_t *c = &r->conns[r->opened];
        c->src = (uint8_t) (r->opened % r->nsources);
        r->opened++;
        conn_start(r, c);
    }
}

static void write_arrivals(run_t *r)
{
    if (r->out_file == NULL) {
        return;
    }
    FILE *f = fopen(r->out_file, "w");
    if (f == NULL) {
        die(r->out_file);
    }
    for (int i = 0; i < r->n; i++) {
        if (r->conns[i].state == C_DONE) {
            fprintf(f, "%u %" PRIu64 "\n", r->conns[i].status, r->conns[i].arrival_us);
        }
    }
    if (fclose(f) != 0) {
        die(r->out_file);
    }
}

static void print_result(run_t *r)
{
    uint64_t other = (uint64_t) r->responses - r->by_status[200] - r->by_status[304];
    printf("RESULT n=%d connected=%d sent=%d responses=%d s200=%" PRIu64 " s304=%" PRIu64
           " sother=%" PRIu64, r->n, r->connected, r->sent, r->responses, r->by_status[200],
           r->by_status[304], other);
    for (int e = 0; e < E_COUNT; e++) {
        printf(" %s=%" PRIu64, err_names[e], r->errors[e]);
    }
    printf(" statuses=");
    const char *sep = "";
    for (int s = 0; s < 1000; s++) {
        if (r->by_status[s] != 0) {
            printf("%s%d:%" PRIu64, sep, s, r->by_status[s]);
            sep = ",";
        }
    }
    printf("%s\n", *sep ? "" : "-");
}

int main(int argc, char **argv)
{
    static run_t run;   /* large (the counters), so not on the stack */
    run_t *r = &run;
    parse_args(r, argc, argv);
    build_request(r, argv[optind]);
    raise_nofile(r->n);
    signal(SIGPIPE, SIG_IGN);

    r->conns = calloc((size_t) r->n, sizeof(*r->conns));
    if (r->conns == NULL) {
        die("calloc");
    }
    for (int i = 0; i < r->n; i++) {
        r->conns[i].fd = -1;
    }
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    if (r->ep < 0) {
        die("epoll_create1");
    }

    uint64_t start = mono_us();
    uint64_t deadline = start + (uint64_t) (r->timeout_s * 1e6);
    struct epoll_event evs[NEVENTS];
    for (;;) {
        uint64_t now = mono_us();
        if (r->finished == r->n || now >= deadline) {
            break;
        }
        open_some(r, start, now);
        write_ready(r);
        /* while connections are still to be opened, wake every millisecond to pace them */
        int wait_ms = r->opened < r->n ? 1 : 100;
        int k = epoll_wait(r->ep, evs, NEVENTS, wait_ms);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) {
            on_event(r, evs[i].data.ptr, evs[i].events);
        }
        write_ready(r);
    }

    for (int i = 0; i < r->n; i++) {
        conn_t *c = &r->conns[i];
        if (c->state != C_DONE && c->state != C_FAILED) {
            finish(r, c, C_FAILED, E_TIMEOUT);
        }
    }
    write_arrivals(r);
    print_result(r);
    fprintf(stderr, "parker: %d connections to %s, %d requests sent, %d responses, %d failed, "
                    "%.1f s\n", r->n, argv[optind], r->sent, r->responses,
            r->finished - r->responses, (double) (mono_us() - start) / 1e6);
    /* the sockets still open close with the process */
    return r->responses == r->n ? 0 : 1;
}
