/* The results role's copy of each application's quotes (quote_cache.h). */
#include "quote_cache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static quote_cache_entry_t *qc_slot(const quote_cache_t *c, const char *app)
{
    uint32_t h = 2166136261u;      /* FNV-1a: uuids are random enough, this only spreads them */

    for (const unsigned char *p = (const unsigned char *) app; *p != '\0'; p++)
        h = (h ^ *p) * 16777619u;
    return &c->slots[h & (QUOTE_CACHE_SLOTS - 1)];
}

const quote_cache_entry_t *quote_cache_get(const quote_cache_t *c, const char *app,
                                           const char *version)
{
    const quote_cache_entry_t *e;

    if (c->slots == NULL)
        return NULL;
    e = qc_slot(c, app);
    return strcmp(e->app, app) == 0 && strcmp(e->version, version) == 0 ? e : NULL;
}

static char *qc_copy(char **at, const char *s)
{
    char *out;

    if (s == NULL)
        return NULL;
    out = *at;
    memcpy(out, s, strlen(s) + 1);
    *at += strlen(s) + 1;
    return out;
}

int quote_cache_make(quote_cache_entry_t *e, const char *app, const char *version,
                     const read_model_quote_t *quotes, int n)
{
    size_t size = (size_t) n * sizeof(read_model_quote_t);
    char  *at;

    memset(e, 0, sizeof(*e));
    if (n < 0 || strlen(app) >= sizeof(e->app) || strlen(version) >= sizeof(e->version))
        return -1;
    for (int i = 0; i < n; i++)
        size += strlen(quotes[i].code) + 1
                + (quotes[i].premium != NULL ? strlen(quotes[i].premium) + 1 : 0)
                + (quotes[i].error != NULL ? strlen(quotes[i].error) + 1 : 0);
    if ((e->quotes = malloc(size > 0 ? size : 1)) == NULL)
        return -1;
    at = (char *) (e->quotes + n);
    for (int i = 0; i < n; i++) {
        e->quotes[i].code = qc_copy(&at, quotes[i].code);
        /* only what the copy can vouch for: running is the executor's to change */
        e->quotes[i].status = read_model_api_status(quotes[i].status);
        e->quotes[i].premium = qc_copy(&at, quotes[i].premium);
        e->quotes[i].error = qc_copy(&at, quotes[i].error);
    }
    memcpy(e->app, app, strlen(app) + 1);
    memcpy(e->version, version, strlen(version) + 1);
    e->n = n;
    return 0;
}

int quote_cache_put(quote_cache_t *c, quote_cache_entry_t *e)
{
    quote_cache_entry_t *slot;

    if (c->slots == NULL && (c->slots = calloc(QUOTE_CACHE_SLOTS, sizeof(*c->slots))) == NULL) {
        quote_cache_entry_free(e);
        return -1;
    }
    slot = qc_slot(c, e->app);
    quote_cache_entry_free(slot);
    *slot = *e;
    memset(e, 0, sizeof(*e));
    return 0;
}

void quote_cache_drop(quote_cache_t *c, const char *app)
{
    quote_cache_entry_t *slot;

    if (c->slots == NULL)
        return;
    slot = qc_slot(c, app);
    if (strcmp(slot->app, app) == 0)
        quote_cache_entry_free(slot);
}

void quote_cache_entry_free(quote_cache_entry_t *e)
{
    free(e->quotes);
    memset(e, 0, sizeof(*e));
}

void quote_cache_clear(quote_cache_t *c)
{
    for (int i = 0; c->slots != NULL && i < QUOTE_CACHE_SLOTS; i++)
        if (c->slots[i].quotes != NULL)
            quote_cache_entry_free(&c->slots[i]);
}

void quote_cache_free(quote_cache_t *c)
{
    quote_cache_clear(c);
    free(c->slots);
    c->slots = NULL;
}
