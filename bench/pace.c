/*
 * pace: a tiny open-loop HTTP/1.1 load generator (loopback benchmarks).
 *
 * wrk sends as fast as it can; pace sends at a fixed aggregate rate instead, so the latency it
 * reports is the latency at that load. Request k is due at t0 + k/rate. It goes out on an idle
 * keep-alive connection as soon as it is due; when every connection is busy it waits, and its
 * latency still counts from the moment it was due (no coordinated omission: a stall shows up as
 * latency, not as fewer samples). One thread, epoll, a timerfd for the schedule.
 *
 *   pace -p PORT [-a ADDR] [-u PATH] [-H 'Name: value']... [-r RPS] [-d SECONDS]
 *        [-w WARMUP_SECONDS] [-c CONNECTIONS] [-T DRAIN_SECONDS]
 *
 * Requests due in the first WARMUP seconds are sent but not counted. After the last request is
 * due pace waits at most DRAIN seconds for answers, then stops: the run is bounded in time.
 *
 * Output: a human summary on stderr and one line on stdout:
 *   RESULT sent=N done=N s2xx=N s429=N sother=N errors=N late=N rps=X p50_us=X p99_us=X
 *          p999_us=X max_us=X admitted_per_s=X
 * (counts cover the measured period only; `late` = requests that left more than 1 ms after
 * they were due because no connection was idle).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "http_response.h"

#define RBUF_SIZE  (64 * 1024)
#define MAX_CONNS  4096
#define MAX_HDRS   16
#define WBUF_SIZE  (16 * 1024)

enum { C_CLOSED, C_CONNECTING, C_IDLE, C_BUSY };

typedef struct {
    int      fd;
    int      state;
    uint64_t k;          /* request in flight */
    size_t   wpos;       /* bytes of the request written */
    size_t   wlen;       /* bytes of the request */
    char     wbuf[WBUF_SIZE];
    size_t   rlen;
    char     rbuf[RBUF_SIZE];
} conn_t;

static const char *req;             /* headers, without the blank line */
static size_t      req_len;
static const char *body;            /* -b: POSTed with each request */
static size_t      body_len;
static int         unique_key;      /* -K: an Idempotency-Key of its own per request */
static struct sockaddr_in target;

static uint64_t t0, interval_ns, total, warmup_k;
static uint64_t next_k;            /* next request to send */
static uint64_t *lat;              /* latency (ns) of measured requests, by arrival */
static uint64_t nlat;
static uint64_t c2xx, c429, cother, cerr, clate, csent;
static conn_t  *conns;
static int      nconns, ep;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static uint64_t due(uint64_t k)
{
    return t0 + k * interval_ns;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void conn_close(conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_CLOSED;
    c->rlen = 0;
}

static void conn_open(conn_t *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        die("socket");
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->rlen = 0;
    if (connect(fd, (struct sockaddr *) &target, sizeof(target)) == 0) {
        c->state = C_IDLE;
    } else if (errno == EINPROGRESS) {
        c->state = C_CONNECTING;
    } else {
        close(fd);
        c->fd = -1;
        c->state = C_CLOSED;
        return;
    }
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLRDHUP | (c->state == C_CONNECTING ? EPOLLOUT : 0),
        .data.ptr = c
    };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        die("epoll_ctl");
    }
}

static void record(uint64_t k, int status, uint64_t t)
{
    if (k < warmup_k) {
        return;
    }
    if (status < 0) {
        cerr++;
        return;
    }
    if (status >= 200 && status < 300) {
        c2xx++;
    } else if (status == 429) {
        c429++;
    } else {
        cother++;
    }
    lat[nlat++] = t - due(k);
}

/* A request failed on this connection: count it, reconnect later. */
static void conn_fail(conn_t *c, uint64_t t)
{
    if (c->state == C_BUSY) {
        record(c->k, -1, t);
    }
    conn_close(c);
}

static void want_write(conn_t *c, int on)
{
    struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0), .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        die("epoll_ctl");
    }
}

/* The request for c->k: the fixed headers, maybe its own key, the body. */
static void build_req(conn_t *c)
{
    int n = 0;
    memcpy(c->wbuf, req, req_len);
    c->wlen = req_len;
    if (unique_key) {
        n = snprintf(c->wbuf + c->wlen, WBUF_SIZE - c->wlen,
                     "Idempotency-Key: pace-%ld-%llu\r\n", (long) getpid(),
                     (unsigned long long) c->k);
        c->wlen += (size_t) n;
    }
    if (body != NULL) {
        n = snprintf(c->wbuf + c->wlen, WBUF_SIZE - c->wlen,
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n", body_len);
        c->wlen += (size_t) n;
    }
    memcpy(c->wbuf + c->wlen, "\r\n", 2);
    c->wlen += 2;
    if (body != NULL) {
        memcpy(c->wbuf + c->wlen, body, body_len);
        c->wlen += body_len;
    }
}

static int write_req(conn_t *c)
{
    int was_blocked = c->wpos > 0;
    while (c->wpos < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->wpos, c->wlen - c->wpos, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!was_blocked) {
                    want_write(c, 1);
                }
                return 0;
            }
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        c->wpos += (size_t) n;
    }
    if (was_blocked) {
        want_write(c, 0);
    }
    return 0;
}

static void on_readable(conn_t *c, uint64_t t)
{
    int eof = 0;
    for (;;) {
        if (c->rlen == RBUF_SIZE) {
            conn_fail(c, t);
            return;
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, RBUF_SIZE - c->rlen, 0);
        if (n == 0) {
            eof = 1;    /* parse what came before the FIN first */
            break;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            if (errno == EINTR) {
                continue;
            }
            conn_fail(c, t);
            return;
        }
        c->rlen += (size_t) n;
    }
    if (c->rlen == 0) {
        if (eof) {
            conn_fail(c, t);
        }
        return;
    }
    if (c->state != C_BUSY) {
        /* unsolicited bytes on an idle connection */
        conn_fail(c, t);
        return;
    }
    http_response_t resp;
    int done = http_response_parse(c->rbuf, c->rlen, eof, &resp);
    if (done < 0) {
        conn_fail(c, t);
        return;
    }
    if (done == 0) {
        return;     /* a full buffer fails on the next read */
    }
    record(c->k, resp.status, t);
    c->rlen = 0;
    c->state = C_IDLE;
    if (resp.close_after || eof) {
        /* keepalive_requests reached, say: open a fresh connection right away */
        conn_close(c);
        conn_open(c);
    }
}

static void send_due(uint64_t t)
{
    static int rr;  /* spread requests over the connections */
    for (int j = 0; j < nconns && next_k < total && due(next_k) <= t; j++) {
        conn_t *c = &conns[(rr + j) % nconns];
        if (c->state == C_CLOSED) {
            conn_open(c);
        }
        if (c->state != C_IDLE) {
            continue;
        }
        rr = (int) ((c - conns) + 1) % nconns;
        c->k = next_k++;
        c->wpos = 0;
        build_req(c);
        c->state = C_BUSY;
        if (c->k >= warmup_k) {
            csent++;
            if (t - due(c->k) > 1000000u) {
                clate++;
            }
        }
        if (write_req(c) < 0) {
            conn_fail(c, t);
        }
    }
}

static void arm(int tfd, uint64_t at)
{
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    its.it_value.tv_sec = (time_t) (at / 1000000000u);
    its.it_value.tv_nsec = (long) (at % 1000000000u);
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) {
        its.it_value.tv_nsec = 1;
    }
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
        die("timerfd_settime");
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (nlat == 0) {
        return 0;
    }
    uint64_t i = (uint64_t) (p * (double) nlat + 0.999999);
    if (i == 0) {
        i = 1;
    }
    if (i > nlat) {
        i = nlat;
    }
    return (double) lat[i - 1] / 1000.0;
}

static void usage(void)
{
    fprintf(stderr, "usage: pace -p PORT [-a ADDR] [-u PATH] [-H 'Name: value']... [-r RPS] "
                    "[-d SECONDS] [-w WARMUP_SECONDS] [-c CONNECTIONS] [-T DRAIN_SECONDS] "
                    "[-b BODY_FILE (POST)] [-K (unique Idempotency-Key per request)]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1", *path = "/", *hdrs[MAX_HDRS];
    int port = 0, nh = 0, opt;
    double rate = 1000, dur = 10, warm = 0, drain = 5;
    nconns = 32;

    const char *body_file = NULL;
    while ((opt = getopt(argc, argv, "a:p:u:H:r:d:w:c:T:b:K")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 'H':
            if (nh == MAX_HDRS) {
                usage();
            }
            hdrs[nh++] = optarg;
            break;
        case 'r': rate = atof(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 'T': drain = atof(optarg); break;
        case 'b': body_file = optarg; break;
        case 'K': unique_key = 1; break;
        default: usage();
        }
    }
    if (port <= 0 || port > 65535 || rate <= 0 || rate > 1e6 || dur <= 0 || dur > 3600
        || warm < 0 || warm >= dur || nconns < 1 || nconns > MAX_CONNS || drain < 0) {
        usage();
    }
    memset(&target, 0, sizeof(target));
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t) port);
    if (inet_pton(AF_INET, addr, &target.sin_addr) != 1) {
        usage();
    }

    size_t cap = strlen(path) + strlen(addr) + 128;
    for (int i = 0; i < nh; i++) {
        cap += strlen(hdrs[i]) + 2;
    }
    char *r = malloc(cap);
    if (r == NULL) {
        die("malloc");
    }
    if (body_file != NULL) {
        static char bbuf[8192];
        FILE *f = fopen(body_file, "rb");
        if (f == NULL) {
            die("body file");
        }
        body_len = fread(bbuf, 1, sizeof(bbuf), f);
        fclose(f);
        body = bbuf;
    }
    int off = snprintf(r, cap, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n",
                       body ? "POST" : "GET", path, addr, port);
    for (int i = 0; i < nh; i++) {
        off += snprintf(r + off, cap - (size_t) off, "%s\r\n", hdrs[i]);
    }
    req = r;
    req_len = (size_t) off;
    if (req_len + body_len + 256 > WBUF_SIZE) {
        usage();
    }

    signal(SIGPIPE, SIG_IGN);
    interval_ns = (uint64_t) (1e9 / rate);
    if (interval_ns == 0) {
        interval_ns = 1;
    }
    total = (uint64_t) (dur * rate);
    warmup_k = (uint64_t) (warm * rate);
    lat = calloc(total + 1, sizeof(*lat));
    conns = calloc((size_t) nconns, sizeof(*conns));
    if (lat == NULL || conns == NULL) {
        die("calloc");
    }

    ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (ep < 0 || tfd < 0) {
        die("epoll/timerfd");
    }
    struct epoll_event tev = { .events = EPOLLIN, .data.ptr = NULL };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0) {
        die("epoll_ctl");
    }

    /* connect everything first, then start the clock */
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conn_open(&conns[i]);
    }
    uint64_t cdeadline = now_ns() + 2000000000u;
    int ready = 0;
    struct epoll_event evs[256];
    while (ready < nconns && now_ns() < cdeadline) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == NULL || c->state != C_CONNECTING) {
                continue;
            }
            int err = 0;
            socklen_t el = sizeof(err);
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err != 0 || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                fprintf(stderr, "pace: connect %s:%d: %s\n", addr, port, strerror(err ? err : ECONNREFUSED));
                exit(1);
            }
            c->state = C_IDLE;
            want_write(c, 0);
        }
        ready = 0;
        for (int i = 0; i < nconns; i++) {
            ready += conns[i].state == C_IDLE;
        }
    }
    if (ready < nconns) {
        fprintf(stderr, "pace: only %d of %d connections established\n", ready, nconns);
        exit(1);
    }

    t0 = now_ns() + 1000000u;
    uint64_t last_due = due(total ? total - 1 : 0);
    uint64_t hard_end = last_due + (uint64_t) (drain * 1e9);
    arm(tfd, t0);

    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("epoll_wait");
        }
        uint64_t t = now_ns();
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == NULL) {
                uint64_t exp;
                while (read(tfd, &exp, sizeof(exp)) > 0) {
                }
                continue;
            }
            if (c->state == C_CLOSED) {
                continue;
            }
            if (c->state == C_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err != 0) {
                    conn_close(c);
                    continue;
                }
                c->state = C_IDLE;
                want_write(c, 0);
            }
            if (evs[i].events & EPOLLIN) {
                on_readable(c, t);
                if (c->state == C_CLOSED) {
                    continue;
                }
            }
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                conn_fail(c, t);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->state == C_BUSY && c->wpos < c->wlen) {
                if (write_req(c) < 0) {
                    conn_fail(c, t);
                }
            }
        }
        t = now_ns();
        send_due(t);

        int busy = 0;
        for (int i = 0; i < nconns; i++) {
            busy += conns[i].state == C_BUSY;
        }
        if (next_k >= total && busy == 0) {
            break;
        }
        if (t >= hard_end) {
            /* what is still in flight timed out */
            for (int i = 0; i < nconns; i++) {
                if (conns[i].state == C_BUSY) {
                    conn_fail(&conns[i], t);
                }
            }
            /* never sent at all: count as errors too */
            for (; next_k < total; next_k++) {
                if (next_k >= warmup_k) {
                    csent++;
                    cerr++;
                }
            }
            break;
        }
        arm(tfd, next_k < total && due(next_k) < hard_end ? due(next_k) : hard_end);
    }
    uint64_t t_end = now_ns();

    qsort(lat, nlat, sizeof(*lat), cmp_u64);
    double measured_s = dur - warm;
    double span = (double) (t_end - due(warmup_k)) / 1e9;
    double rps = span > 0 ? (double) (c2xx + c429 + cother) / span : 0;
    double maxus = nlat ? (double) lat[nlat - 1] / 1000.0 : 0;

    fprintf(stderr,
            "pace: %.0f req/s offered for %.1f s (%.1f s measured) over %d connections: "
            "%" PRIu64 " sent, %" PRIu64 " 2xx, %" PRIu64 " 429, %" PRIu64 " other, %" PRIu64
            " errors, %" PRIu64 " late; latency p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us\n",
            rate, dur, measured_s, nconns, csent, c2xx, c429, cother, cerr, clate,
            pct(0.50), pct(0.99), pct(0.999), maxus);
    printf("RESULT sent=%" PRIu64 " done=%" PRIu64 " s2xx=%" PRIu64 " s429=%" PRIu64
           " sother=%" PRIu64 " errors=%" PRIu64 " late=%" PRIu64 " rps=%.1f p50_us=%.0f"
           " p99_us=%.0f p999_us=%.0f max_us=%.0f admitted_per_s=%.2f\n",
           csent, nlat, c2xx, c429, cother, cerr, clate, rps, pct(0.50), pct(0.99), pct(0.999),
           maxus, (double) c2xx / measured_s);
    return 0;
}
