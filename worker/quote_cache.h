/*
 * The results role's copy of the quotes of the applications it is completing, as its own last
 * transaction left them. A result whose application row is the version results itself wrote
 * (the row's xmin with its updated_at, read under the row's lock) is decided, and its read model
 * built, from this copy and the quotes the transaction changes, without reading every quote of
 * the application again: N quote rows per application with N insurers instead of about N².
 *
 * It is sound because only results makes a quote ok or error, or gives it a premium or an error
 * text, and it updates the application row in the same transaction; every other writer of quotes
 * in the worker (the executor's claim, release and heartbeat, the sweeper) changes only what the
 * API shows as pending. So a copy holds "pending" and the two final states, never running.
 * Writers outside the worker (a hand edit, a data migration) move the row's version through
 * migration 004's triggers.
 *
 * Direct-mapped by a hash of the application id: a collision replaces the older copy, which only
 * costs a read. Bounded to QUOTE_CACHE_SLOTS applications.
 */
#ifndef OSAGO_WORKER_QUOTE_CACHE_H
#define OSAGO_WORKER_QUOTE_CACHE_H

#include "read_model.h"

/* A power of two: 30 times the applications in flight at 500/s with insurers answering within
 * a second, 3 times when they take 10 s (1.7 MB of slots, allocated on first use) */
#define QUOTE_CACHE_SLOTS 16384

typedef struct {
    char                app[40];       /* as PostgreSQL prints a uuid; "" for a free slot */
    char                version[48];   /* the application row's version results' commit left */
    int                 n;
    read_model_quote_t *quotes;        /* one allocation with their strings */
} quote_cache_entry_t;

typedef struct {
    quote_cache_entry_t *slots;        /* QUOTE_CACHE_SLOTS, allocated on first put */
} quote_cache_t;

/* The copy of app's quotes if the application row is still version; NULL otherwise. */
const quote_cache_entry_t *quote_cache_get(const quote_cache_t *c, const char *app,
                                           const char *version);

/*
 * A copy of quotes[0..n) for app at version, with running shown as pending, in *e (not in the
 * cache yet: quote_cache_put). Made apart from putting so that quotes may point into entries the
 * puts of the same batch replace. 0, or -1 when out of memory or the key does not fit.
 */
int  quote_cache_make(quote_cache_entry_t *e, const char *app, const char *version,
                      const read_model_quote_t *quotes, int n);

/* Puts e (from quote_cache_make) into its slot, freeing what was there; e is emptied. -1, with
 * e freed, when the slots cannot be allocated. */
int  quote_cache_put(quote_cache_t *c, quote_cache_entry_t *e);

/* Forgets app (completed: no result of it will change a quote again). */
void quote_cache_drop(quote_cache_t *c, const char *app);

void quote_cache_entry_free(quote_cache_entry_t *e);

/* Forgets everything: a new PostgreSQL connection may be to another server, whose xids are not
 * the ones remembered. */
void quote_cache_clear(quote_cache_t *c);

void quote_cache_free(quote_cache_t *c);

#endif
