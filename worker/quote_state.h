/*
 * The quote state machine (one quote per application and insurer) and how an application's
 * status follows from its quotes. Pure functions: the SQL applies what these decide.
 */
#ifndef OSAGO_WORKER_QUOTE_STATE_H
#define OSAGO_WORKER_QUOTE_STATE_H

typedef enum { QUOTE_PENDING = 0, QUOTE_RUNNING, QUOTE_OK, QUOTE_ERROR } quote_status_t;

typedef enum {
    QEV_START = 0,     /* an executor took the task (attempt n) */
    QEV_SUCCEEDED,     /* the insurer answered with a premium */
    QEV_FAILED,        /* error or timeout; retried while attempts remain */
    QEV_STALE          /* the sweeper found it running with an old heartbeat */
} quote_event_t;

typedef enum { APP_ACCEPTED = 0, APP_IN_PROGRESS, APP_COMPLETED } app_status_t;

const char *quote_status_name(quote_status_t s);              /* "pending", "running", "ok", "error" */
int         quote_status_parse(const char *name, quote_status_t *s);
const char *app_status_name(app_status_t s);                  /* "accepted", "in_progress", "completed" */

/*
 * The next status for ev at `attempt`, or -1 when ev does not apply (a duplicate or late event:
 * a terminal quote never changes, an older attempt never overrides a newer one).
 * cur_attempt is the attempt recorded on the quote.
 *
 * The table (c = cur_attempt, a = attempt, M = max_attempts). Every event returns -1 when the
 * quote is ok or error (terminal) or when a < c (older attempt) or a < 1:
 *
 *   event          pending(c)                  running(c)
 *   QEV_START      running, records a          a == c: -1 (redelivered task: one call per
 *                                              attempt); a > c: running, records a
 *   QEV_SUCCEEDED  ok, records a               ok, records a
 *   QEV_FAILED     a < M: pending, records a+1 (the next try is due)
 *                  a >= M: error, records a    (same)
 *   QEV_STALE      a == c: pending, records c  a == c: pending, records c
 *                  a != c: -1                  a != c: -1
 *
 * The attempt to record is therefore `attempt`, except QEV_FAILED -> pending, which records
 * attempt + 1. Row meaning: pending(n) = a task for attempt n is due (a Task event for n is on
 * its way, or must be produced); running(n) = an executor is calling the insurer for attempt n.
 * Consequences for the roles:
 *  - the orchestrator inserts pending rows with attempt 0 (the column default) or 1 and produces
 *    Task attempt 1; either way START(1) applies;
 *  - a retry may keep the quote running(a) (heartbeat refreshed during the backoff) and then
 *    claim START(a+1), which running(a) accepts; or apply FAILED (pending, a+1) first. Either
 *    way a duplicate FAILED(a) or a redelivered Task(a) is then older than the row: -1. With
 *    the pending variant, a Task(a+1) not yet durable when its executor dies is found only by
 *    a sweep of pending rows (STALE applies to them), so prefer the running variant;
 *  - STALE re-drives the same attempt (the crash was not the insurer's fault): the sweeper sets
 *    pending(c) and produces Task(c);
 *  - SUCCEEDED is accepted from pending: a swept call that still answered keeps its premium, and
 *    the re-driven Task(c) then finds a terminal quote (-1);
 *  - a final error result (TaskResult status "error") is applied as QEV_FAILED with
 *    max_attempts = attempt: the executor already decided there is no next try.
 */
int quote_next(quote_status_t cur, int cur_attempt, quote_event_t ev, int attempt,
               int max_attempts, quote_status_t *next);

/* completed when every quote is ok or error; in_progress once any quote exists. */
app_status_t app_status_from(int n_quotes, int n_terminal);

#endif
