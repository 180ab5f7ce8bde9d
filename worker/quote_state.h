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
 */
int quote_next(quote_status_t cur, int cur_attempt, quote_event_t ev, int attempt,
               int max_attempts, quote_status_t *next);

/* completed when every quote is ok or error; in_progress once any quote exists. */
app_status_t app_status_from(int n_quotes, int n_terminal);

#endif
