/*
 * /metrics, /healthz and /readyz on libmicrohttpd, a thread per connection (up to
 * HTTP_MAX_CONNECTIONS): a /readyz probe waits up to 3 s when a dependency hangs, and with a
 * shared pool two such probes at once held back /healthz, which a liveness check then took for
 * a dead worker in the middle of the outage.
 *
 * /readyz probes Redis (PING), Kafka (metadata) and PostgreSQL (SELECT 1) on fresh connections,
 * each within 1 s: a probe then says what a new connection would meet, not what an old one
 * remembers. A probe thread repeats the same checks every 5 s for the *_up gauges.
 */
#include "worker.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <microhttpd.h>

#include "log.h"
#include "pg.h"

#define PROBE_TIMEOUT_MS   1000
#define PROBE_PG_ADDRESSES 8      /* a standby list's addresses probed at once */
#define PROBE_PG_STAGGER_MS 250   /* the next address joins when those before say nothing */
#define PROBE_INTERVAL_MS  5000
#define HTTP_MAX_CONNECTIONS 64   /* each a thread: scrapers and probes, not the public */

struct http_server {
    struct MHD_Daemon *daemon;
    worker_t          *w;
    pthread_t          prober;
    int                prober_started;
    atomic_int         stopping;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- probes ----------------------------------------------------------------------------- */

static int probe_redis(const worker_config_t *cfg)
{
    struct timeval tv = { PROBE_TIMEOUT_MS / 1000, (PROBE_TIMEOUT_MS % 1000) * 1000 };
    redisContext *c = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
    redisReply *r = NULL;
    int ok = 0;

    if (c == NULL || c->err != 0 || redisSetTimeout(c, tv) != REDIS_OK)
        goto out;
    if (cfg->redis_password != NULL) {
        r = redisCommand(c, "AUTH %s", cfg->redis_password);
        if (r == NULL || r->type == REDIS_REPLY_ERROR)
            goto out;
        freeReplyObject(r);
    }
    r = redisCommand(c, "PING");
    ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
out:
    freeReplyObject(r);
    if (c != NULL)
        redisFree(c);
    return ok;
}

/* Waits for the PostgreSQL socket until the deadline; 0 when ready. */
static int pg_wait(PGconn *c, short events, long long deadline)
{
    long long left = deadline - now_ms();
    struct pollfd p = { PQsocket(c), events, 0 };
    if (left <= 0 || p.fd < 0)
        return -1;
    int n;
    do
        n = poll(&p, 1, (int)left);
    while (n < 0 && errno == EINTR);
    return n > 0 ? 0 : -1;
}

/*
 * A fresh connection to the first of the conninfo's addresses to take one. A connect starts at
 * the first address; while those under way say nothing, another starts every 250 ms past the
 * furthest address they have reached (pg_connect_start from that place in the list), all polled
 * together until the deadline: a silent address (a dead host first in a standby list) must not
 * fail the probe while another answers, and a healthy first address costs one connection, as
 * before. Asynchronous libpq: connect_timeout cannot hold a 1 s budget (libpq raises values
 * below 2 s to 2 s). NULL when none connected in time.
 */
static PGconn *probe_pg_connect(const char *conninfo, long long deadline)
{
    PGconn                   *c[PROBE_PG_ADDRESSES] = { NULL };
    PostgresPollingStatusType st[PROBE_PG_ADDRESSES];
    pg_connecting_t           at[PROBE_PG_ADDRESSES];
    int                       from[PROBE_PG_ADDRESSES];
    PGconn                   *won = NULL;
    int                       n = 1, started = 0, next = 0;
    long long                 next_start = now_ms();

    while (won == NULL && now_ms() < deadline) {
        struct pollfd p[PROBE_PG_ADDRESSES];
        long long     until;
        int           live = 0;

        if (started < PROBE_PG_ADDRESSES && next < n && now_ms() >= next_start) {
            from[started] = next;
            c[started] = pg_connect_start(conninfo, "readyz", next, 0, &at[started]);
            if (started == 0 && at[0].plan.n > 1)
                n = at[0].plan.n;
            st[started] = c[started] != NULL && PQstatus(c[started]) != CONNECTION_BAD
                          ? PGRES_POLLING_WRITING : PGRES_POLLING_FAILED;
            started++;
            next_start = now_ms() + PROBE_PG_STAGGER_MS;
        }
        for (int i = 0; i < started; i++) {
            p[i].fd = st[i] == PGRES_POLLING_FAILED ? -1 : PQsocket(c[i]);
            p[i].events = st[i] == PGRES_POLLING_READING ? POLLIN : POLLOUT;
            p[i].revents = 0;
            live += p[i].fd >= 0;
            /* the next connect starts past every address one under way has reached */
            if (pg_connect_skip_past(&at[i], from[i]) > next)
                next = pg_connect_skip_past(&at[i], from[i]);
        }
        if (live == 0) {
            if (next >= n || started == PROBE_PG_ADDRESSES)
                break;                    /* every address refused: no need to wait */
            next_start = now_ms();        /* the next one at once */
            continue;
        }
        until = next < n && next_start < deadline ? next_start : deadline;
        if (poll(p, (nfds_t) started, (int) (until > now_ms() ? until - now_ms() : 0)) < 0
            && errno != EINTR)
            break;
        for (int i = 0; i < started && won == NULL; i++) {
            if (p[i].fd < 0 || p[i].revents == 0)
                continue;
            st[i] = pg_connect_poll(c[i], "readyz");
            if (st[i] == PGRES_POLLING_FAILED)
                next = n;                 /* libpq went round every address: none took it */
            else
                pg_connect_moved(c[i], &at[i]);
            if (st[i] == PGRES_POLLING_OK) {
                won = c[i];
                c[i] = NULL;
            }
        }
    }
    for (int i = 0; i < started; i++) {
        if (c[i] != NULL)
            PQfinish(c[i]);
        pg_connecting_free(&at[i]);
    }
    return won;
}

/* PostgreSQL answers SELECT 1 on a fresh connection within the probe's budget. */
static int probe_pg(const char *conninfo)
{
    long long deadline = now_ms() + PROBE_TIMEOUT_MS;
    PGconn   *c = probe_pg_connect(conninfo, deadline);
    PGresult *r;
    int       ok = 0;

    if (c == NULL)
        return 0;
    if (PQsetnonblocking(c, 1) != 0 || !PQsendQuery(c, "SELECT 1"))
        goto out;
    while (PQflush(c) == 1)
        if (pg_wait(c, POLLOUT, deadline) < 0)
            goto out;
    while (PQisBusy(c)) {
        if (pg_wait(c, POLLIN, deadline) < 0 || !PQconsumeInput(c))
            goto out;
    }
    while ((r = PQgetResult(c)) != NULL) {
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            ok = 1;
        else
            ok = 0;
        PQclear(r);
    }
out:
    PQfinish(c);
    return ok;
}

struct probe {
    int redis, kafka, pg;
};

static struct probe probe_all(worker_t *w)
{
    struct probe p;
    p.redis = probe_redis(w->cfg);
    p.kafka = w->producer != NULL && !kafka_producer_failed(w->producer)
              && kafka_reachable(w->producer, PROBE_TIMEOUT_MS);
    p.pg = probe_pg(w->cfg->pg_conninfo);
    atomic_store(&w->metrics->redis_up, p.redis);
    atomic_store(&w->metrics->kafka_up, p.kafka);
    atomic_store(&w->metrics->pg_up, p.pg);
    return p;
}

static void *prober_main(void *arg)
{
    struct http_server *s = arg;
    while (!atomic_load(&s->stopping)) {
        probe_all(s->w);
        for (int t = 0; t < PROBE_INTERVAL_MS && !atomic_load(&s->stopping); t += 50) {
            struct timespec ts = { 0, 50 * 1000000L };
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* ---- HTTP ------------------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result serve_metrics(struct http_server *s, struct MHD_Connection *conn)
{
    size_t cap = 16384;
    for (;;) {
        char *buf = malloc(cap);
        if (buf == NULL)
            return MHD_NO;
        size_t n = metrics_render(s->w->metrics, s->w->insurers, buf, cap);
        if (n < cap)
            return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", buf, n,
                         MHD_RESPMEM_MUST_FREE);
        free(buf);
        cap = n + 1;
    }
}

static enum MHD_Result serve_readyz(struct http_server *s, struct MHD_Connection *conn)
{
    struct probe p = probe_all(s->w);
    int ready = p.redis && p.kafka && p.pg;
    char body[256];
    int n = snprintf(body, sizeof(body),
                     "{\"status\":\"%s\",\"checks\":{\"redis\":\"%s\",\"kafka\":\"%s\","
                     "\"postgres\":\"%s\"},\"failed\":[%s%s%s%s%s]}\n",
                     ready ? "ready" : "unavailable",
                     p.redis ? "ok" : "failed", p.kafka ? "ok" : "failed",
                     p.pg ? "ok" : "failed",
                     p.redis ? "" : "\"redis\"",
                     !p.redis && !p.kafka ? "," : "",
                     p.kafka ? "" : "\"kafka\"",
                     (!p.redis || !p.kafka) && !p.pg ? "," : "",
                     p.pg ? "" : "\"postgres\"");
    if (!ready)
        wlog(LOG_INFO, "http", NULL, "not_ready", "readyz: redis=%s kafka=%s postgres=%s",
             p.redis ? "ok" : "failed", p.kafka ? "ok" : "failed", p.pg ? "ok" : "failed");
    return reply(conn, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "application/json",
                 body, (size_t)n, MHD_RESPMEM_MUST_COPY);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version,
                               const char *upload_data, size_t *upload_data_size, void **state)
{
    struct http_server *s = cls;
    static char not_found[] = "not found\n", bad_method[] = "method not allowed\n", ok[] = "ok";
    (void)version, (void)upload_data, (void)upload_data_size, (void)state;

    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
            sizeof(bad_method) - 1, bad_method, MHD_RESPMEM_PERSISTENT);
        if (r == NULL)
            return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/metrics") == 0)
        return serve_metrics(s, conn);
    if (strcmp(url, "/healthz") == 0)
        return reply(conn, MHD_HTTP_OK, "text/plain; charset=utf-8", ok, sizeof(ok) - 1,
                     MHD_RESPMEM_PERSISTENT);
    if (strcmp(url, "/readyz") == 0)
        return serve_readyz(s, conn);
    return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", not_found,
                 sizeof(not_found) - 1, MHD_RESPMEM_PERSISTENT);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    wlog(LOG_WARN, "http", NULL, "mhd", "%s", msg);
}

/* Our own listening socket: a failure to bind is reported with its errno, not a guess. */
static int listen_on(const char *host, int port, char *err, size_t errlen, int *v6)
{
    struct addrinfo hints = { 0 }, *ai = NULL;
    char service[16];
    int fd = -1, one = 1, rc;

    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(service, sizeof(service), "%d", port);
    rc = getaddrinfo(host, service, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "http: cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 64) < 0) {
        snprintf(err, errlen, "http: cannot listen on %s:%d: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    *v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    return fd;
}

struct http_server *http_start(worker_t *w, char *err, size_t errlen)
{
    int v6 = 0;
    int fd = listen_on(w->cfg->http_host, w->cfg->http_port, err, errlen, &v6);
    if (fd < 0)
        return NULL;

    struct http_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(fd);
        snprintf(err, errlen, "http: out of memory");
        return NULL;
    }
    s->w = w;
    /* poll, not MHD's default select(): under load the worker holds well over 1,024
     * descriptors (a connection per insurer call), and select() cannot watch a socket numbered
     * above that, so /metrics and the probes went unanswered exactly when they mattered */
    s->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                                     MHD_USE_POLL | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0),
                                 0, NULL, NULL, handler, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,   /* first */
                                 MHD_OPTION_LISTEN_SOCKET, fd,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned) HTTP_MAX_CONNECTIONS,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 10,
                                 MHD_OPTION_END);
    if (s->daemon == NULL) {
        close(fd);
        free(s);
        snprintf(err, errlen, "http: libmicrohttpd failed to start on %s:%d",
                 w->cfg->http_host, w->cfg->http_port);
        return NULL;
    }
    if (pthread_create(&s->prober, NULL, prober_main, s) == 0)
        s->prober_started = 1;
    else
        wlog(LOG_WARN, "http", NULL, "prober", "no probe thread: the *_up gauges follow "
             "/readyz only");
    wlog(LOG_INFO, "http", NULL, "http_listening", "serving /metrics, /healthz, /readyz on %s:%d",
         w->cfg->http_host, w->cfg->http_port);
    return s;
}

void http_stop(struct http_server *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->stopping, 1);
    if (s->prober_started)
        pthread_join(s->prober, NULL);
    MHD_stop_daemon(s->daemon);   /* also closes the listening socket */
    free(s);
}
