/* PostgreSQL helpers (libpq, synchronous: each role thread has its own connection). */
#ifndef OSAGO_WORKER_PG_H
#define OSAGO_WORKER_PG_H

#include <stdatomic.h>

#include <libpq-fe.h>

#include "pg_hosts.h"

/*
 * How a role waits for PostgreSQL (wait may be NULL: whatever happens, as the migrate command
 * does). Its connections carry statement_timeout = answer_ms, so a PostgreSQL that is alive
 * cancels a statement that waits too long (a lock held for minutes) and the role gets an error
 * it retries. Each statement's answer is awaited in 100-ms slices and given up when wait->stop
 * is set, or a second after answer_ms (a hung server, which still acknowledges keepalives): the
 * connection's socket is shut, so the caller sees a lost connection, which it handles already,
 * and `pg_abandoned` is logged. Whether the statement ran is then unknown (PostgreSQL may finish
 * one it had begun; a transaction left open is rolled back once its backend notices): only for
 * statements safe to repeat, as every one of the worker's is. A stalled PostgreSQL thus never
 * holds a stop, nor a role for much longer than answer_ms: it connects again, to the next
 * address of a list if this one stays silent.
 */
typedef struct {
    atomic_int *stop;        /* the role's stop flag (NULL: none) */
    int           answer_ms;   /* a statement's answer awaited at most this long (0: no limit) */
} pg_wait_t;

/*
 * Connects, retrying with backoff (100 ms doubling to 2 s) until *stop, or with stop NULL (the
 * migrate command) for at most 30 s. The connect is polled in 100-ms slices (pg_connect_start):
 * a stop ends an attempt under way (`pg_abandoned`), and an address that says nothing for the
 * connect timeout is given up for the next one, as libpq's blocking connect does. *stop
 * already set: one round of the addresses, to its end. NULL on failure (logged).
 * connect_timeout defaults to 5 s, application_name to osago-worker-<role>, statement_timeout
 * to wait->answer_ms; the conninfo may override them. *start (NULL: the first) is the address
 * of a list the connect starts at, and becomes the one that answered: a role's next connect
 * goes straight to where its last connection was, rather than wait again on a silent address
 * ahead of it in the list.
 */
PGconn *pg_connect(const char *conninfo, const char *role, const pg_wait_t *wait, int *start);

/* A connect under way (pg_connect_start): where libpq is in the conninfo's addresses, so that
 * an address that says nothing can be given up for the next one. */
typedef struct {
    pg_hosts_t plan;            /* the addresses, in the order libpq tries them */
    int        at;              /* the one it is on */
    int        timeout_ms;      /* per address: the conninfo's connect_timeout */
    char       where[256];      /* what libpq says of it ("10.0.0.7 port 5432") */
} pg_connecting_t;

/* A connection to be made without blocking (PQconnectStartParams with pg_connect's defaults):
 * drive it with pg_connect_poll as libpq's PQconnectPoll says, and give it up (PQfinish) after
 * at->timeout_ms on one address, the conninfo's connect_timeout (at least 2 s; 0 or unset: 5
 * s), which libpq does not enforce when polled. Nor does libpq then move on to the next address
 * (host=a,b, or a name with several): the next attempt starts past it instead, at skip
 * pg_connect_skip_past, counting each of a name's addresses (pg_hosts.h). NULL when out of
 * memory; check PQstatus for CONNECTION_BAD. pg_connecting_free *at, whatever happened. Names
 * are looked up here, and that may block: give hostaddr, or an address, for a loop that must
 * not wait. */
PGconn *pg_connect_start(const char *conninfo, const char *role, int skip, int statement_ms,
                         pg_connecting_t *at);

/* PQconnectPoll; once PGRES_POLLING_OK, the connection is set up as pg_connect's are. */
PostgresPollingStatusType pg_connect_poll(PGconn *conn, const char *role);

/* After each pg_connect_poll: 1 when libpq moved on to another address, which gets the whole
 * timeout (at->where says which), 0 when not. */
int pg_connect_moved(const PGconn *conn, pg_connecting_t *at);

/* Where the attempt after one that started at skip and timed out on at->at starts. */
int pg_connect_skip_past(const pg_connecting_t *at, int skip);

/* Once connected: the address that answered, counted from the list's first, for an attempt
 * that started at skip (where the next connect starts). */
int pg_connect_landed(const pg_connecting_t *at, int skip);

void pg_connecting_free(pg_connecting_t *at);

/* Reconnects when the connection is bad (pg_connect, from *start); returns 0 when usable. */
int pg_ensure(PGconn **conn, int *start, const char *conninfo, const char *role,
              const pg_wait_t *wait);


/* Runs a statement expecting PGRES_COMMAND_OK or PGRES_TUPLES_OK; NULL on error (logged
 * with role, SQLSTATE, message and the statement's start). params are text; PQclear the result.
 * After NULL inside a transaction, ROLLBACK; when PQstatus(conn) is bad, call pg_ensure. */
PGresult *pg_exec(PGconn *conn, const char *role, const char *sql, int nparams,
                  const char *const *params, const pg_wait_t *wait);

/*
 * Runs the statement prepared as `name` on this connection, preparing it first when the
 * connection does not know it yet (a new or re-established connection: SQLSTATE 26000). Saves
 * the parse and plan of every execution (measured here: 0.57 -> 0.15 ms for the executor's
 * claim). Returns the result whatever its status (NULL once abandoned at a stop, or out of
 * memory): the caller checks it (and its SQLSTATE) and clears it. Only outside a transaction
 * block, where the failed first try aborts nothing.
 */
PGresult *pg_exec_prepared(PGconn *conn, const char *role, const char *name, const char *sql,
                           int nparams, const char *const *params, const pg_wait_t *wait);

/* PQprepare, awaited as above: the result whatever its status, NULL once abandoned. */
PGresult *pg_prepare(PGconn *conn, const char *role, const char *name, const char *sql,
                     int nparams, const pg_wait_t *wait);

/*
 * pg_exec_prepared, but an error is logged (with role and the statement's name) and NULL is
 * returned; the result on success is the caller's to clear.
 */
PGresult *pg_run_prepared(PGconn *conn, const char *role, const char *name, const char *sql,
                          int nparams, const char *const *params, const pg_wait_t *wait);

/* pg_run_prepared for a thread that must end without a stop flag to wait on (the executor's
 * hand-back at a stop): PostgreSQL's answer is given up as at a stop after timeout_ms. */
PGresult *pg_run_prepared_for(PGconn *conn, const char *role, const char *name, const char *sql,
                              int nparams, const char *const *params, int timeout_ms);

/* ---- a transaction's statements in one round trip (the executor without blocking, results) ---
 *
 * libpq's pipeline mode: pg_pipe_begin enters it, pg_pipe_stmt queues statements, pg_pipe_sync
 * ends the round trip and sends it; pg_pipe_collect, called whenever the socket is readable (or
 * writable while pg_pipe_sync or pg_pipe_collect said 1), gathers the results in order until
 * the sync comes back and leaves pipeline mode. The connection is non-blocking from
 * pg_pipe_begin on; PQexec and friends still work on it between round trips (they block).
 */
#define PG_PIPE_MAX 6

typedef struct {
    PGresult *res[PG_PIPE_MAX];   /* in the order queued: one per statement */
    int       n;
    int       queued;
} pg_pipe_t;

/* 0, or -1 (the connection is not usable). */
int pg_pipe_begin(PGconn *conn, pg_pipe_t *p);

/* Queues a prepared statement, or with name == NULL the parameterless `sql` (BEGIN, COMMIT).
 * 0, or -1. */
int pg_pipe_stmt(PGconn *conn, pg_pipe_t *p, const char *name, const char *sql, int nparams,
                 const char *const *params);

/* Queues the preparation of a statement (PQsendPrepare). 0, or -1. */
int pg_pipe_prepare(PGconn *conn, pg_pipe_t *p, const char *name, const char *sql, int nparams);

/* Sends what was queued: 0 all written, 1 the socket must become writable first, -1 error. */
int pg_pipe_sync(PGconn *conn);

/* 1: every result is in p (check each one's status) and pipeline mode is left; 0: not yet
 * (*want_write says whether to wait for the socket to be writable too); -1: the connection
 * failed (finish it). */
int pg_pipe_collect(PGconn *conn, pg_pipe_t *p, int *want_write);

/* For a thread that may block (results): pg_pipe_sync, then pg_pipe_collect whenever the socket
 * is ready, until every result is in p. 0; -1 the connection failed; PG_GIVEN_UP wait->stop was
 * set or wait->answer_ms passed while waiting. After either, the round trip is abandoned and
 * the connection must be closed. */
#define PG_GIVEN_UP (-2)
int pg_pipe_wait(PGconn *conn, const char *role, pg_pipe_t *p, const pg_wait_t *wait);

/* Clears the results; the pipe can be used again. */
void pg_pipe_clear(pg_pipe_t *p);

/* The first result that is not COMMAND_OK or TUPLES_OK, as one line in buf; NULL if none. */
const char *pg_pipe_error(const pg_pipe_t *p, char *buf, size_t size);

/* A PostgreSQL array literal {"a","b",...} (for text[], uuid[], int[] parameters): every element
 * quoted, since unquoted an insurer coded null would be SQL NULL. malloc'd, NULL when out of
 * memory. */
char *pg_text_array(const char *const *values, int n);

#endif
