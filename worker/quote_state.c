/* The quote state machine; the table is in quote_state.h. */
#include "quote_state.h"

#include <string.h>

static const char *const quote_names[] = { "pending", "running", "ok", "error" };
static const char *const app_names[] = { "accepted", "in_progress", "completed" };

const char *quote_status_name(quote_status_t s)
{
    return (unsigned)s <= QUOTE_ERROR ? quote_names[s] : "unknown";
}

int quote_status_parse(const char *name, quote_status_t *s)
{
    for (int i = QUOTE_PENDING; i <= QUOTE_ERROR; i++) {
        if (name != NULL && strcmp(name, quote_names[i]) == 0) {
            *s = (quote_status_t)i;
            return 0;
        }
    }
    return -1;
}

const char *app_status_name(app_status_t s)
{
    return (unsigned)s <= APP_COMPLETED ? app_names[s] : "unknown";
}

int quote_next(quote_status_t cur, int cur_attempt, quote_event_t ev, int attempt,
               int max_attempts, quote_status_t *next)
{
    if (cur == QUOTE_OK || cur == QUOTE_ERROR)
        return -1;                      /* terminal: a late or duplicate event changes nothing */
    if (cur != QUOTE_PENDING && cur != QUOTE_RUNNING)
        return -1;
    if (attempt < 1 || attempt < cur_attempt)
        return -1;                      /* an older attempt never overrides a newer one */
    if (max_attempts < 1)
        max_attempts = 1;

    switch (ev) {
    case QEV_START:
        /* the same attempt while it runs is a redelivered task: one call per attempt */
        if (cur == QUOTE_RUNNING && attempt == cur_attempt)
            return -1;
        *next = QUOTE_RUNNING;
        return 0;
    case QEV_SUCCEEDED:
        /* also from pending: a stale-swept call that still answered is a good answer */
        *next = QUOTE_OK;
        return 0;
    case QEV_FAILED:
        *next = attempt < max_attempts ? QUOTE_PENDING : QUOTE_ERROR;
        return 0;
    case QEV_STALE:
        /* the sweeper read this very attempt; anything newer means someone moved on */
        if (attempt != cur_attempt)
            return -1;
        *next = QUOTE_PENDING;
        return 0;
    }
    return -1;
}

app_status_t app_status_from(int n_quotes, int n_terminal)
{
    if (n_quotes <= 0)
        return APP_ACCEPTED;
    return n_terminal >= n_quotes ? APP_COMPLETED : APP_IN_PROGRESS;
}
