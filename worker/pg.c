/*
 * libpq helpers. Connection attempts back off from 100 ms to 2 s so a restarting PostgreSQL is
 * picked up quickly without a storm of connections from every role thread.
 */
#include "pg.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"
#include "pg_hosts.h"

#define PG_BACKOFF_MIN_MS  100
#define PG_BACKOFF_MAX_MS  2000
#define PG_NO_STOP_DEADLINE_MS 30000   /* stop == NULL (the migrate command): give up after this */
#define PG_CONNECT_TIMEOUT_S "5"        /* unless the conninfo says otherwise */
#define PG_ANSWER_GRACE_MS 1000         /* after statement_timeout, before a statement is given up */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps ms in short slices, so a stop request is honoured within 50 ms. */
static void nap(int ms, atomic_int *stop)
{
    while (ms > 0 && (stop == NULL || !*stop)) {
        int slice = ms < 50 ? ms : 50;
        struct timespec ts = { 0, (long)slice * 1000000L };
        nanosleep(&ts, NULL);
        ms -= slice;
    }
}

/* libpq messages end with a newline and may span lines; a log line must not. */
static void one_line(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (; *in != '\0' && o + 1 < cap; in++)
        out[o++] = (*in == '\n' || *in == '\r' || *in == '\t') ? ' ' : *in;
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
}

/* Notices ("relation already exists, skipping") would reach stderr as plain text, breaking the
 * one-JSON-object-per-line log: they become debug lines. arg is the role (a string literal). */
static void pg_notice(void *arg, const char *message)
{
    char line[512];
    one_line(message, line, sizeof(line));
    wlog(LOG_DEBUG, arg, NULL, "pg_notice", "%s", line);
}

/* PQconnectStartParams with our defaults, for the caller to poll; the conninfo's addresses (a
 * host name's as well, pg_hosts.h) tried from the skip-th on, then from the first, as *plan
 * says; statement_ms > 0: the session's statement_timeout. NULL when out of memory. */
static PGconn *pg_open(const char *conninfo, const char *role, int skip, int statement_ms,
                       pg_hosts_t *plan)
{
    /*
     * Our defaults come first: libpq lets later keywords override earlier ones, and the
     * expanded conninfo (dbname, expand_dbname = 1) is last, so the operator's settings win.
     */
    char appname[64];
    snprintf(appname, sizeof(appname), "osago-worker-%s", role != NULL ? role : "main");
    /*
     * Key lookups only: every statement of the worker finds its rows by primary key from a
     * small array. The planner thinks otherwise while the tables are young (empty at the last
     * ANALYZE, growing by thousands of rows a second): sequential scans, or full index scans
     * under a hash or merge join, a cost that grows with every row. With those priced out,
     * every plan is a nested loop of index lookups whatever the statistics say.
     *
     * And generic plans always: PostgreSQL otherwise re-plans a prepared statement whenever
     * the custom plan looks cheaper, which for these array-driven statements it nearly always
     * does (measured: the orchestrator's statement planned on 55 % of its calls at 0.39 ms,
     * the application status update on every call). Safe only with the above: a generic plan
     * is made once, on the first call, when the tables may be empty.
     */
    /*
     * And a partition found within about a minute, whatever is waiting on the connection:
     * keepalives while a statement's answer is awaited (30 s idle, then 3 probes 10 s apart),
     * and tcp_user_timeout while what was sent is not acknowledged. A PostgreSQL that is slow
     * still answers both (its kernel does), so no statement is cut short for being long.
     */
    const char *keys[] = { "connect_timeout", "application_name", "options",
                           "keepalives_idle", "keepalives_interval", "keepalives_count",
                           "tcp_user_timeout", "dbname", NULL, NULL, NULL, NULL };
    /*
     * And a statement that waits longer than the role will (a lock held for minutes) cancelled
     * by PostgreSQL itself: the role gets an error it retries on the same connection, rather
     * than give the connection up and leave its backend waiting behind it (pg_wait_t).
     */
    char        options[192];
    const char *vals[] = { PG_CONNECT_TIMEOUT_S, appname, options,
                           "30", "10", "3", "60000", conninfo, NULL, NULL, NULL, NULL };
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    /* what the conninfo leaves out, libpq takes from the environment (a service file, rare
     * here, is not looked at: its addresses are libpq's to try) */
    const char       *host = getenv("PGHOST"), *hostaddr = getenv("PGHOSTADDR");
    const char       *port = getenv("PGPORT");
    PGconn           *c = NULL;
    int               k = 8, len;

    len = snprintf(options, sizeof(options), "-c enable_seqscan=off -c enable_hashjoin=off"
                   " -c enable_mergejoin=off -c plan_cache_mode=force_generic_plan");
    /*
     * And who writes: the roles keep the rule results' copy of the quotes rests on
     * (quote_cache.h), so migration 004's triggers pass them by. Not migrate: a data migration
     * is what they are for.
     */
    if (role == NULL || strcmp(role, "migrate") != 0)
        len += snprintf(options + len, sizeof(options) - (size_t) len, " -c osago.writer=worker");
    if (statement_ms > 0)
        snprintf(options + len, sizeof(options) - (size_t) len, " -c statement_timeout=%d",
                 statement_ms);

    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
        if (o->val == NULL || o->val[0] == '\0')
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    }
    /* after the expanded conninfo, so they replace its lists */
    if (pg_hosts_plan(host, hostaddr, port, skip, NULL, plan) == 0) {
        if (plan->host != NULL) {
            keys[k] = "host";
            vals[k++] = plan->host;
        }
        if (plan->hostaddr != NULL) {
            keys[k] = "hostaddr";
            vals[k++] = plan->hostaddr;
        }
        if (plan->port != NULL) {
            keys[k] = "port";
            vals[k++] = plan->port;
        }
        c = PQconnectStartParams(keys, vals, 1);
    }
    PQconninfoFree(opts);
    return c;
}

/* What libpq says of the address a connect is on: a change is a move to another. */
static void pg_where(const PGconn *conn, char *buf, size_t size)
{
    const char *addr = PQhostaddr(conn), *host = PQhost(conn), *port = PQport(conn);

    snprintf(buf, size, "%s port %s", addr != NULL && addr[0] != '\0' ? addr
                                      : host != NULL ? host : "?", port != NULL ? port : "?");
}

int pg_connect_moved(const PGconn *conn, pg_connecting_t *at)
{
    char where[sizeof(at->where)];
    int  now_at = pg_hosts_find(&at->plan, at->at, PQhost(conn), PQhostaddr(conn), PQport(conn));

    pg_where(conn, where, sizeof(where));
    if (now_at == at->at && strcmp(where, at->where) == 0)
        return 0;
    at->at = now_at;
    memcpy(at->where, where, sizeof(where));
    return 1;
}

int pg_connect_skip_past(const pg_connecting_t *at, int skip)
{
    return skip + at->at + 1;
}

int pg_connect_landed(const pg_connecting_t *at, int skip)
{
    return (skip + at->at) % (at->plan.n > 0 ? at->plan.n : 1);
}

void pg_connecting_free(pg_connecting_t *at)
{
    pg_hosts_free(&at->plan);
}

/*
 * One attempt from the skip-th address, polled in slices of at most 100 ms: the connection, or
 * NULL with why. An address that says nothing for the connect timeout is given up: *passed then
 * says how many addresses the attempt went through, that one included (the next attempt starts
 * past them), of *n in all; -1 when none was silent. Connected, *passed is the address that
 * answered, counted from the list's first. The attempt is given up too once *stop is set (stop
 * NULL: never).
 */
static PGconn *pg_attempt(const char *conninfo, const char *role, int skip, int statement_ms,
                          atomic_int *stop, int *passed, int *n, char *why, size_t whylen)
{
    pg_connecting_t           at;
    PGconn                   *c = pg_connect_start(conninfo, role, skip, statement_ms, &at);
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;  /* what libpq's manual starts with */
    long long                 due = now_ms() + at.timeout_ms;
    int                       said = 0;

    *passed = -1;
    *n = at.plan.n > 0 ? at.plan.n : 1;
    why[0] = '\0';
    if (c == NULL) {
        snprintf(why, whylen, "out of memory");
        pg_connecting_free(&at);
        return NULL;
    }
    while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_FAILED) {
        struct pollfd pfd = { PQsocket(c), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0 };
        long long     wait = due - now_ms();

        if (st == PGRES_POLLING_OK) {
            *passed = pg_connect_landed(&at, skip);
            pg_connecting_free(&at);
            return c;
        }
        if (stop != NULL && *stop) {
            snprintf(why, whylen, "stopping");
            break;
        }
        if (wait <= 0) {
            *passed = pg_connect_skip_past(&at, 0);
            snprintf(why, whylen, "no answer from %s within the connect timeout (%d ms)", at.where,
                     at.timeout_ms);
            break;
        }
        if (poll(&pfd, 1, wait < 100 ? (int) wait : 100) <= 0) {
            if (!said++)                  /* a slice over (or a signal): look at stop again */
                wlog(LOG_DEBUG, role, NULL, "pg_waiting", "connect to %s: no answer yet",
                     at.where);
            continue;
        }
        st = pg_connect_poll(c, role);
        if (pg_connect_moved(c, &at)) {   /* the next address gets the whole timeout */
            said = 0;
            due = now_ms() + at.timeout_ms;
        }
    }
    if (why[0] == '\0')
        one_line(PQerrorMessage(c), why, whylen);
    PQfinish(c);
    pg_connecting_free(&at);
    return NULL;
}

PGconn *pg_connect(const char *conninfo, const char *role, const pg_wait_t *wait, int *start)
{
    atomic_int *stop = wait != NULL ? wait->stop : NULL;
    int           statement_ms = wait != NULL ? wait->answer_ms : 0;
    long long     deadline = now_ms() + PG_NO_STOP_DEADLINE_MS;
    int           backoff = PG_BACKOFF_MIN_MS, attempts = 0, round = 0;
    int           skip = start != NULL ? *start : 0;
    /* already stopping (the executor's hand-back): one round of the addresses, which the flag
     * does not end */
    atomic_int *cut = stop != NULL && !*stop ? stop : NULL;

    for (;;) {
        char    msg[512];
        int     passed, n;
        PGconn *c = pg_attempt(conninfo, role, skip, statement_ms, cut, &passed, &n, msg,
                               sizeof(msg));

        if (c != NULL) {
            if (start != NULL)
                *start = passed;
            if (attempts > 0)
                wlog(LOG_INFO, role, NULL, "pg_connected", "connected after %d retries",
                     attempts);
            return c;
        }
        if (cut != NULL && *cut) {
            wlog(LOG_WARN, role, NULL, "pg_abandoned",
                 "stopping before PostgreSQL answered the connect");
            return NULL;
        }
        /* the first failure is worth a warning, the following ones only while debugging */
        wlog(attempts == 0 ? LOG_WARN : LOG_DEBUG, role, NULL, "pg_connect_failed",
             "cannot connect to PostgreSQL (retrying): %s", msg);
        attempts++;
        if (cut == NULL && stop != NULL && passed > 0 && (round += passed) < n) {
            skip += passed;           /* the round goes on past the silent address */
            continue;
        }
        if (stop != NULL ? *stop : now_ms() >= deadline) {
            wlog(LOG_ERROR, role, NULL, "pg_connect_gave_up",
                 "no PostgreSQL connection after %d attempts: %s", attempts, msg);
            return NULL;
        }
        if (passed > 0) {
            skip += passed;           /* at once: the silent address has had its timeout */
            continue;
        }
        nap(backoff, stop);
        if (stop != NULL && *stop)
            return NULL;
        backoff = backoff * 2 > PG_BACKOFF_MAX_MS ? PG_BACKOFF_MAX_MS : backoff * 2;
    }
}

int pg_ensure(PGconn **conn, int *start, const char *conninfo, const char *role,
              const pg_wait_t *wait)
{
    if (*conn != NULL && PQstatus(*conn) == CONNECTION_OK)
        return 0;
    if (*conn != NULL) {
        wlog(LOG_WARN, role, NULL, "pg_reconnect", "PostgreSQL connection lost; reconnecting");
        PQfinish(*conn);
    }
    *conn = pg_connect(conninfo, role, wait, start);
    return *conn != NULL ? 0 : -1;
}

PGconn *pg_connect_start(const char *conninfo, const char *role, int skip, int statement_ms,
                         pg_connecting_t *at)
{
    PGconn           *c;
    PQconninfoOption *opts;

    memset(at, 0, sizeof(*at));
    c = pg_open(conninfo, role, skip, statement_ms, &at->plan);
    opts = c != NULL ? PQconninfo(c) : NULL;
    /* libpq applies connect_timeout only while it blocks; polled, the caller must. As libpq:
     * at least 2 s. Unlike libpq, 0 (no limit) is our default: a loop waits on nothing forever. */
    at->timeout_ms = atoi(PG_CONNECT_TIMEOUT_S) * 1000;
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val != NULL && atoi(o->val) > 0)
            at->timeout_ms = (atoi(o->val) < 2 ? 2 : atoi(o->val)) * 1000;
    PQconninfoFree(opts);
    if (c != NULL) {
        /* PQconnectStartParams may have passed addresses already (one that fails at once) */
        at->at = pg_hosts_find(&at->plan, 0, PQhost(c), PQhostaddr(c), PQport(c));
        pg_where(c, at->where, sizeof(at->where));
    }
    return c;
}

PostgresPollingStatusType pg_connect_poll(PGconn *conn, const char *role)
{
    PostgresPollingStatusType st = PQconnectPoll(conn);

    if (st == PGRES_POLLING_OK)
        PQsetNoticeProcessor(conn, pg_notice, (void *)role);
    return st;
}

/*
 * What PQexec does after sending, but in 100-ms slices of poll(2) that look at *stop and the
 * deadline (0: none): the last result, or the first error. Given up, the socket is shut rather
 * than the connection finished, so libpq itself reports it lost and every caller's handling of
 * a lost connection applies. NULL when given up (logged) or out of memory; an answer complete
 * in libpq's buffer when given up is still returned (the statement did run).
 */
static PGresult *pg_await(PGconn *conn, const char *role, const char *what, atomic_int *stop,
                          long long deadline_ms)
{
    PGresult *kept = NULL, *r;
    int       flushing = 1, abandoned = 0, waited = 0;

    for (;;) {
        if (flushing && (flushing = PQflush(conn)) < 0)
            break;
        if (flushing == 0 && !PQisBusy(conn)) {
            if ((r = PQgetResult(conn)) == NULL)
                break;
            if (kept != NULL && PQresultStatus(kept) == PGRES_FATAL_ERROR) {
                PQclear(r);
            } else {
                PQclear(kept);
                kept = r;
            }
            continue;
        }

        struct pollfd pfd = { PQsocket(conn), (short) (POLLIN | (flushing ? POLLOUT : 0)), 0 };

        if (!abandoned
            && ((stop != NULL && *stop) || (deadline_ms > 0 && now_ms() >= deadline_ms))) {
            wlog(LOG_WARN, role, NULL, "pg_abandoned", "%s before PostgreSQL answered %s: the "
                 "connection is closed (a statement PostgreSQL is running may still complete; "
                 "a transaction left open is rolled back)",
                 stop != NULL && *stop ? "stopping" : "out of time", what);
            abandoned = 1;
            shutdown(pfd.fd, SHUT_RDWR);    /* libpq reads the end of the connection now */
        }
        if (!abandoned && poll(&pfd, 1, 100) <= 0) {
            if (!waited++)    /* for whoever wonders what a role is doing: it waits */
                wlog(LOG_DEBUG, role, NULL, "pg_waiting", "no answer to %s yet", what);
            continue;
        }
        if (!PQconsumeInput(conn))
            flushing = 0;    /* the connection is gone: PQgetResult says so, without waiting */
    }
    if (abandoned && (kept == NULL || PQresultStatus(kept) == PGRES_FATAL_ERROR)) {
        PQclear(kept);
        return NULL;
    }
    return kept;
}

/* The answer to what was just sent (sent: whether libpq took it), or the send's error. */
static PGresult *pg_answer(PGconn *conn, int sent, const char *role, const char *what,
                           atomic_int *stop, long long deadline_ms)
{
    return sent ? pg_await(conn, role, what, stop, deadline_ms)
                : PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
}

/* Whether a statement that failed was given up (stop, deadline) or failed on a connection
 * given up earlier: said already, not worth an error line more. */
static int pg_given_up(PGconn *conn, const PGresult *res, atomic_int *stop,
                       long long deadline_ms)
{
    int out_of_time = (stop != NULL && *stop) || (deadline_ms > 0 && now_ms() >= deadline_ms);

    return out_of_time && (res == NULL || PQstatus(conn) != CONNECTION_OK);
}

/* Sends in non-blocking mode (a large statement to a PostgreSQL that reads nothing must not
 * block the send either; PQexec, for migrate's files, blocks whatever the mode). */
static int pg_nonblocking(PGconn *conn)
{
    return PQisnonblocking(conn) || PQsetnonblocking(conn, 1) == 0;
}

/* A role's stop flag, and the deadline of an answer to what it sends now (0: none). */
static atomic_int *pg_stop_of(const pg_wait_t *wait)
{
    return wait != NULL ? wait->stop : NULL;
}

/* A second past the session's statement_timeout (pg_open): a PostgreSQL that is alive cancels
 * the statement itself first, and only a hung one is given up. */
static long long pg_deadline_of(const pg_wait_t *wait)
{
    return wait != NULL && wait->answer_ms > 0 ? now_ms() + wait->answer_ms + PG_ANSWER_GRACE_MS
                                               : 0;
}

/* A statement on a connection already lost (a sweep's ROLLBACK after a statement was given
 * up): not sent, and not logged as an error of its own, since the loss was. */
static int pg_lost_already(PGconn *conn, const char *role, const char *what)
{
    if (PQstatus(conn) == CONNECTION_OK)
        return 0;
    wlog(LOG_DEBUG, role, NULL, "pg_not_sent", "%s not sent: the connection was lost", what);
    return 1;
}

PGresult *pg_exec(PGconn *conn, const char *role, const char *sql, int nparams,
                  const char *const *params, const pg_wait_t *wait)
{
    atomic_int  *stop = pg_stop_of(wait);
    long long      deadline = pg_deadline_of(wait);
    int            sent;

    if (pg_lost_already(conn, role, "a statement"))
        return NULL;
    sent = pg_nonblocking(conn)
           && PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    PGresult      *res = pg_answer(conn, sent, role, "a statement", stop, deadline);
    ExecStatusType st = PQresultStatus(res);

    if (res != NULL && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK))
        return res;
    if (pg_given_up(conn, res, stop, deadline)) {
        PQclear(res);
        return NULL;
    }

    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char msg[512], stmt[128];
    one_line(primary != NULL ? primary : PQerrorMessage(conn), msg, sizeof(msg));
    one_line(sql, stmt, sizeof(stmt));
    wlog(LOG_ERROR, role, NULL, "pg_error", "SQLSTATE %s: %s (statement: %s%s)",
         state != NULL ? state : "none", msg, stmt, strlen(sql) >= sizeof(stmt) ? "..." : "");
    PQclear(res);
    return NULL;
}

/* SQLSTATE 26000, invalid_sql_statement_name: this connection has not prepared it */
static int pg_unprepared(const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    return PQresultStatus(res) == PGRES_FATAL_ERROR && state != NULL
           && strcmp(state, "26000") == 0;
}

static PGresult *pg_prepared(PGconn *conn, const char *role, const char *name,
                             const char *sql, int nparams, const char *const *params,
                             atomic_int *stop, long long deadline_ms)
{
    int       sent = pg_nonblocking(conn)
                     && PQsendQueryPrepared(conn, name, nparams, params, NULL, NULL, 0);
    PGresult *res = pg_answer(conn, sent, role, name, stop, deadline_ms);

    if (!pg_unprepared(res))
        return res;
    PQclear(res);
    sent = PQsendPrepare(conn, name, sql, nparams, NULL);
    res = pg_answer(conn, sent, role, name, stop, deadline_ms);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return res;
    PQclear(res);
    sent = PQsendQueryPrepared(conn, name, nparams, params, NULL, NULL, 0);
    return pg_answer(conn, sent, role, name, stop, deadline_ms);
}

PGresult *pg_prepare(PGconn *conn, const char *role, const char *name, const char *sql,
                     int nparams, const pg_wait_t *wait)
{
    return pg_answer(conn, pg_nonblocking(conn) && PQsendPrepare(conn, name, sql, nparams, NULL),
                     role, name, pg_stop_of(wait), pg_deadline_of(wait));
}

PGresult *pg_exec_prepared(PGconn *conn, const char *role, const char *name, const char *sql,
                           int nparams, const char *const *params, const pg_wait_t *wait)
{
    return pg_prepared(conn, role, name, sql, nparams, params, pg_stop_of(wait),
                       pg_deadline_of(wait));
}

/* pg_prepared, with an error logged and turned into NULL */
static PGresult *pg_run(PGconn *conn, const char *role, const char *name, const char *sql,
                        int nparams, const char *const *params, atomic_int *stop,
                        long long deadline_ms)
{
    PGresult      *res;
    ExecStatusType st;
    char           msg[256];

    if (pg_lost_already(conn, role, name))
        return NULL;
    res = pg_prepared(conn, role, name, sql, nparams, params, stop, deadline_ms);
    st = PQresultStatus(res);

    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    if (pg_given_up(conn, res, stop, deadline_ms)) {
        PQclear(res);
        return NULL;
    }
    one_line(res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(conn), msg, sizeof(msg));
    wlog(LOG_WARN, role, NULL, "pg_error", "%s: %s", name, msg);
    PQclear(res);
    return NULL;
}

PGresult *pg_run_prepared(PGconn *conn, const char *role, const char *name, const char *sql,
                          int nparams, const char *const *params, const pg_wait_t *wait)
{
    return pg_run(conn, role, name, sql, nparams, params, pg_stop_of(wait),
                  pg_deadline_of(wait));
}

PGresult *pg_run_prepared_for(PGconn *conn, const char *role, const char *name, const char *sql,
                              int nparams, const char *const *params, int timeout_ms)
{
    return pg_run(conn, role, name, sql, nparams, params, NULL, now_ms() + timeout_ms);
}


char *pg_text_array(const char *const *values, int n)
{
    size_t cap = 3, len = 0;
    char  *buf;

    for (int i = 0; i < n; i++)
        cap += 2 * strlen(values[i]) + 3;
    if ((buf = malloc(cap)) == NULL)
        return NULL;
    buf[len++] = '{';
    for (int i = 0; i < n; i++) {
        if (i > 0)
            buf[len++] = ',';
        buf[len++] = '"';
        for (const char *c = values[i]; *c != '\0'; c++) {
            if (*c == '"' || *c == '\\')
                buf[len++] = '\\';
            buf[len++] = *c;
        }
        buf[len++] = '"';
    }
    buf[len++] = '}';
    buf[len] = '\0';
    return buf;
}

/* ---- pipelined round trips -------------------------------------------------------------------- */

int pg_pipe_begin(PGconn *conn, pg_pipe_t *p)
{
    pg_pipe_clear(p);
    if (PQstatus(conn) != CONNECTION_OK || PQsetnonblocking(conn, 1) != 0)
        return -1;
    return PQpipelineStatus(conn) == PQ_PIPELINE_ON || PQenterPipelineMode(conn) ? 0 : -1;
}

int pg_pipe_stmt(PGconn *conn, pg_pipe_t *p, const char *name, const char *sql, int nparams,
                 const char *const *params)
{
    if (p->queued >= PG_PIPE_MAX)
        return -1;
    if (!(name != NULL ? PQsendQueryPrepared(conn, name, nparams, params, NULL, NULL, 0)
                       : PQsendQueryParams(conn, sql, 0, NULL, NULL, NULL, NULL, 0)))
        return -1;
    p->queued++;
    return 0;
}

int pg_pipe_prepare(PGconn *conn, pg_pipe_t *p, const char *name, const char *sql, int nparams)
{
    if (p->queued >= PG_PIPE_MAX || !PQsendPrepare(conn, name, sql, nparams, NULL))
        return -1;
    p->queued++;
    return 0;
}

int pg_pipe_sync(PGconn *conn)
{
    return PQpipelineSync(conn) ? PQflush(conn) : -1;
}

int pg_pipe_collect(PGconn *conn, pg_pipe_t *p, int *want_write)
{
    int flushed = PQflush(conn);

    *want_write = flushed == 1;
    if (flushed < 0 || !PQconsumeInput(conn))
        return -1;
    /* each statement's results end with a NULL; the sync's own result ends the round trip. The
     * bound only guards against a libpq that never says busy: it is well above what comes. */
    for (int i = 0; i < 4 * PG_PIPE_MAX + 4 && !PQisBusy(conn); i++) {
        PGresult *r = PQgetResult(conn);

        if (r == NULL)
            continue;
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            return PQexitPipelineMode(conn) ? 1 : -1;
        }
        if (p->n < PG_PIPE_MAX)
            p->res[p->n++] = r;
        else
            PQclear(r);
    }
    return PQstatus(conn) == CONNECTION_OK ? 0 : -1;
}

int pg_pipe_wait(PGconn *conn, const char *role, pg_pipe_t *p, const pg_wait_t *wait)
{
    atomic_int *stop = pg_stop_of(wait);
    long long     deadline = pg_deadline_of(wait);
    int           rc = pg_pipe_sync(conn), want_write = rc == 1, waited = 0;

    while (rc >= 0) {
        struct pollfd pfd = { PQsocket(conn), (short) (POLLIN | (want_write ? POLLOUT : 0)), 0 };
        int           n;

        /* in slices: a PostgreSQL that never answers must not keep a stop, or the role, waiting */
        if ((stop != NULL && *stop) || (deadline > 0 && now_ms() >= deadline))
            return PG_GIVEN_UP;
        if ((n = poll(&pfd, 1, 100)) < 0 && errno != EINTR)
            return -1;
        if (n <= 0) {
            if (n == 0 && !waited++)
                wlog(LOG_DEBUG, role, NULL, "pg_waiting", "no answer to a transaction of %d"
                     " statements yet", p->n);
            continue;
        }
        rc = pg_pipe_collect(conn, p, &want_write);
        if (rc == 1)
            return 0;
    }
    return -1;
}

void pg_pipe_clear(pg_pipe_t *p)
{
    for (int i = 0; i < p->n; i++)
        PQclear(p->res[i]);
    p->n = p->queued = 0;
}

const char *pg_pipe_error(const pg_pipe_t *p, char *buf, size_t size)
{
    for (int i = 0; i < p->n; i++) {
        ExecStatusType st = PQresultStatus(p->res[i]);

        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
            continue;
        one_line(st == PGRES_PIPELINE_ABORTED ? "aborted by an earlier error"
                                              : PQresultErrorMessage(p->res[i]), buf, size);
        return buf;
    }
    if (p->n < p->queued) {
        snprintf(buf, size, "%d of %d results", p->n, p->queued);
        return buf;
    }
    return NULL;
}
