/* Routing, body collection, pricing and the suspend/resume dance with libmicrohttpd. */
#include "server.h"
#include "application.h"
#include "dates.h"
#include "insurers.h"
#include "responses.h"
#include "tariff.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIM_BODY_MAX   65536    /* an application is well under 2 KB */
#define SIM_TRACE_MAX  128
#define SIM_QUOTE_VALID_DAYS 5

enum request_state {
    REQ_RECEIVING,  /* collecting the body */
    REQ_DELAYED,    /* answer ready, waiting out the latency */
    REQ_HELD,       /* injected timeout: no answer, closed when released */
};

struct request {
    enum request_state state;
    char *body;
    size_t len, cap;
    bool too_large;
    bool parked;            /* counted in sim_server.suspended */
    unsigned status;
    char *resp;
    size_t resp_len;
    const char *allow;      /* Allow header for 405 */
    char trace[SIM_TRACE_MAX + 1];
    uint64_t received_ms;   /* Unix time the headers were in */
    const struct insurer *priced_by;    /* a quote was priced: --timing-log's line */
    char app_id[APPLICATION_ID_MAX + 1];
};

static uint64_t unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void request_free(struct request *r)
{
    free(r->body);
    free(r->resp);
    free(r);
}

/* A parked call has left the queue: the handler saw it again, or MHD dropped it (the client
 * hung up meanwhile, so MHD never calls the handler for it). */
static void request_unpark(struct sim_server *s, struct request *r)
{
    if (r->parked) {
        r->parked = false;
        atomic_fetch_sub(&s->suspended, 1);
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct sim_server *s = cls;
    struct request *r = *req_cls;

    (void)conn;
    if (r != NULL) {
        /* the insurer's own time, received to sent, whatever the client's side added */
        if (s->timing != NULL && r->priced_by != NULL && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
            fprintf(s->timing, "%s %s %" PRIu64 " %" PRIu64 "\n", r->app_id, r->priced_by->code,
                    r->received_ms, unix_ms());
        request_unpark(s, r);
        request_free(r);
    }
    *req_cls = NULL;
}

static int request_append(struct request *r, const char *data, size_t n)
{
    if (r->too_large || r->len + n > SIM_BODY_MAX) {
        r->too_large = true;    /* keep reading (MHD must drain it) but keep nothing */
        return 0;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 2048;
        char *b;

        while (cap < r->len + n + 1)
            cap *= 2;
        b = realloc(r->body, cap);
        if (b == NULL)
            return -1;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

static void request_set(struct request *r, unsigned status, char *body, size_t len)
{
    free(r->resp);
    r->status = status;
    r->resp = body;
    r->resp_len = len;
}

static void request_error(struct request *r, unsigned status, const char *code, const char *msg,
                          const char *insurer)
{
    size_t len = 0;
    char *body = response_error(code, msg, insurer, &len);

    request_set(r, status, body, len);
}

static enum MHD_Result request_send(struct MHD_Connection *conn, struct request *r)
{
    struct MHD_Response *resp;
    enum MHD_Result ret;

    if (r->resp == NULL && r->status != 200)
        return MHD_NO;  /* out of memory while building the answer: drop the connection */
    resp = MHD_create_response_from_buffer(r->resp_len, r->resp != NULL ? r->resp : "",
                                           r->resp != NULL ? MHD_RESPMEM_MUST_FREE
                                                           : MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    r->resp = NULL;     /* MHD owns it now */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (r->trace[0] != '\0')
        MHD_add_response_header(resp, "traceparent", r->trace);
    if (r->allow != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    ret = MHD_queue_response(conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Prices the application and prepares the answer the fault plan calls for. */
static void request_quote(const struct insurer *ins, struct request *r,
                          const struct fault_plan *plan)
{
    struct application app;
    struct tariff_breakdown t;
    struct date until;
    char err[256], quote_id[64], valid[16], msg[64];
    size_t len = 0;
    char *body;

    if (r->too_large) {
        request_error(r, 413, "payload_too_large", "the body is over 64 KB", ins->code);
        return;
    }
    if (application_parse(r->body != NULL ? r->body : "", &app, err, sizeof(err)) < 0) {
        request_error(r, 400, "invalid_request", err, ins->code);
        return;
    }
    free(r->body);      /* not needed while the call waits out its latency */
    r->body = NULL;
    r->len = r->cap = 0;

    if (plan->kind == FAULT_ERROR) {
        snprintf(msg, sizeof(msg), "simulated insurer failure (HTTP %d)", ins->status);
        request_error(r, (unsigned)ins->status, "insurer_unavailable", msg, ins->code);
        return;
    }
    r->priced_by = ins;
    /* one word on the log line, whatever the client sent */
    if (strspn(app.id, "0123456789abcdefABCDEF-") == strlen(app.id))
        memcpy(r->app_id, app.id, sizeof(r->app_id));
    else
        strcpy(r->app_id, "-");
    tariff_quote(ins->code, &app.tariff, &t);
    snprintf(quote_id, sizeof(quote_id), "%s-%016" PRIx64, ins->code, plan->draw);
    until = date_today();
    until = date_add_days(&until, SIM_QUOTE_VALID_DAYS);
    date_format(&until, valid, sizeof(valid));
    body = response_quote(ins->code, app.id, t.premium, quote_id, valid, &len);
    if (body != NULL && plan->kind == FAULT_MALFORMED) {
        char *bad = response_malformed(body, len, plan->draw >> 8, &len);

        free(body);
        body = bad;
    }
    request_set(r, 200, body, len);
}

/* "/insurers/{code}/quote" -> the insurer (NULL if unknown); *is_quote says the shape matched. */
static const struct insurer *route_insurer(const struct sim_server *s, const char *url,
                                           bool *is_quote)
{
    static const char prefix[] = "/insurers/", suffix[] = "/quote";
    size_t ulen = strlen(url), plen = sizeof(prefix) - 1, slen = sizeof(suffix) - 1;

    *is_quote = false;
    if (ulen <= plen + slen || strncmp(url, prefix, plen) != 0
        || strcmp(url + ulen - slen, suffix) != 0)
        return NULL;
    *is_quote = true;
    return insurers_find(s->cfg, url + plen, ulen - plen - slen);
}

/* Parks the connection until due; false when it could not be parked. */
static bool request_park(struct sim_server *s, struct MHD_Connection *conn, struct request *r,
                         uint64_t due_ns)
{
    int now, max;

    r->parked = true;
    /* how many calls the clients have out at once: what a client's concurrency limit shows as */
    now = atomic_fetch_add(&s->suspended, 1) + 1;
    max = atomic_load(&s->suspended_max);
    while (now > max && !atomic_compare_exchange_weak(&s->suspended_max, &max, now))
        ;
    MHD_suspend_connection(conn);
    if (delay_queue_push(&s->delays, due_ns, conn))
        return true;
    /* Queue stopping or full: come straight back; the handler runs again and finishes. */
    MHD_resume_connection(conn);
    return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **req_cls)
{
    struct sim_server *s = cls;
    struct request *r = *req_cls;
    const struct insurer *ins;
    struct fault_plan plan;
    bool is_quote;

    (void)version;
    if (r == NULL) {
        const char *tp = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "traceparent");

        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return MHD_NO;
        if (tp != NULL && strlen(tp) <= SIM_TRACE_MAX)
            strcpy(r->trace, tp);
        r->received_ms = unix_ms();
        *req_cls = r;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (request_append(r, upload, *upload_size) < 0)
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    request_unpark(s, r);
    if (r->state == REQ_DELAYED)
        return request_send(conn, r);
    if (r->state == REQ_HELD)
        return MHD_NO;  /* close without a word, as a hung insurer would */

    if (strcmp(url, "/healthz") == 0) {
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
            r->allow = "GET, HEAD";
            request_error(r, 405, "method_not_allowed", "use GET", NULL);
        } else {
            size_t len = 0;
            char *body = response_health(s->cfg->ninsurers, atomic_load(&s->suspended),
                                         atomic_load(&s->suspended_max), &len);
            request_set(r, 200, body, len);
        }
        return request_send(conn, r);
    }
    ins = route_insurer(s, url, &is_quote);
    if (!is_quote) {
        request_error(r, 404, "not_found", "try POST /insurers/{code}/quote or GET /healthz",
                      NULL);
        return request_send(conn, r);
    }
    if (ins == NULL) {
        request_error(r, 404, "unknown_insurer", "no such insurer", NULL);
        return request_send(conn, r);
    }
    if (strcmp(method, "POST") != 0) {
        r->allow = "POST";
        request_error(r, 405, "method_not_allowed", "use POST", ins->code);
        return request_send(conn, r);
    }

    fault_decide(ins, &s->rng, &plan);
    if (plan.kind == FAULT_TIMEOUT) {
        r->state = REQ_HELD;
        /* Parked or, failing that, resumed at once: either way the next call closes it. */
        (void)request_park(s, conn, r, delay_now_ns() + (uint64_t)s->cfg->hold_ms * 1000000ULL);
        return MHD_YES;
    }
    request_quote(ins, r, &plan);
    /* Answers that are not quotes (400, 413) come at once: only priced calls carry latency. */
    if (plan.latency_ms > 0 && (r->status == 200 || r->status == (unsigned)ins->status)) {
        r->state = REQ_DELAYED;
        (void)request_park(s, conn, r, delay_now_ns() + (uint64_t)plan.latency_ms * 1000000ULL);
        return MHD_YES;
    }
    return request_send(conn, r);
}

static void server_close_timing(struct sim_server *s)
{
    if (s->timing != NULL)
        fclose(s->timing);
    s->timing = NULL;
}

int server_start(struct sim_server *s, const struct sim_config *cfg)
{
    struct sockaddr_in addr;
    const union MHD_DaemonInfo *info;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME
                     | MHD_USE_ERROR_LOG;

    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    atomic_init(&s->suspended, 0);
    atomic_init(&s->suspended_max, 0);
    fault_rng_init(&s->rng, cfg->seed);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &addr.sin_addr) != 1) {
        fprintf(stderr, "insurer-sim: bad listen address %s\n", cfg->host);
        return -1;
    }
    if (cfg->timing_log != NULL && (s->timing = fopen(cfg->timing_log, "a")) == NULL) {
        fprintf(stderr, "insurer-sim: --timing-log %s: %s\n", cfg->timing_log, strerror(errno));
        return -1;
    }
    if (delay_queue_start(&s->delays, (size_t)cfg->max_connections) < 0) {
        fprintf(stderr, "insurer-sim: cannot start the delay thread\n");
        server_close_timing(s);
        return -1;
    }
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        /* Idle keep-alive connections go after 5 min; parked ones never time out in MHD. */
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
        /* Headers only: bodies are copied out as they arrive. Keeps 10k connections small. */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)4096,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_END);
    if (s->daemon == NULL) {
        fprintf(stderr, "insurer-sim: cannot listen on %s:%d\n", cfg->host, cfg->port);
        delay_queue_stop(&s->delays, NULL, NULL);
        delay_queue_free(&s->delays);
        server_close_timing(s);
        return -1;
    }
    info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info != NULL ? info->port : cfg->port;
    return 0;
}

static void server_release(struct MHD_Connection *conn, void *arg)
{
    (void)arg;
    MHD_resume_connection(conn);
}

void server_stop(struct sim_server *s)
{
    MHD_socket lsock = MHD_quiesce_daemon(s->daemon);
    struct timespec pause = { 0, 5 * 1000000L };
    uint64_t deadline;

    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    /* MHD refuses to stop with suspended connections: bring every parked call back (waiting
     * ones get their answer, held ones are closed) and let the handlers see them. */
    delay_queue_stop(&s->delays, server_release, s);
    deadline = delay_now_ns() + 2000000000ULL;
    while (atomic_load(&s->suspended) > 0 && delay_now_ns() < deadline)
        nanosleep(&pause, NULL);
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
    delay_queue_free(&s->delays);
    server_close_timing(s);
}
