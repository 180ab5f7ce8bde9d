/* PostgreSQL helpers (libpq, synchronous: each role thread has its own connection). */
#ifndef OSAGO_WORKER_PG_H
#define OSAGO_WORKER_PG_H

#include <libpq-fe.h>

/* Connects, retrying with backoff until *stop or a deadline; NULL on failure (logged).
 * Backoff 100 ms doubling to 2 s. With stop != NULL it retries until *stop (no deadline; *stop
 * already set: a single attempt); with stop == NULL (the migrate command) for at most 30 s. connect_timeout defaults to 5 s and
 * application_name to osago-worker-<role>; the conninfo may override both. */
PGconn *pg_connect(const char *conninfo, const char *role, volatile int *stop);

/* Reconnects when the connection is bad; returns 0 when usable. */
int pg_ensure(PGconn **conn, const char *conninfo, const char *role, volatile int *stop);

/* Runs a statement expecting PGRES_COMMAND_OK or PGRES_TUPLES_OK; NULL on error (logged
 * with role, SQLSTATE, message and the statement's start). params are text; PQclear the result.
 * After NULL inside a transaction, ROLLBACK; when PQstatus(conn) is bad, call pg_ensure. */
PGresult *pg_exec(PGconn *conn, const char *role, const char *sql, int nparams,
                  const char *const *params);

#endif
