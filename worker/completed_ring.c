/* The applications a results role completed lately (completed_ring.h). */
#include "completed_ring.h"

#include <stdio.h>
#include <stdlib.h>

int completed_ring_add(completed_ring_t *r, const char *id, int64_t at_ms)
{
    if (r->e == NULL && (r->e = calloc(COMPLETED_RING_CAP, sizeof(*r->e))) == NULL)
        return -1;
    snprintf(r->e[r->head].id, sizeof(r->e[r->head].id), "%s", id);
    r->e[r->head].at_ms = at_ms;
    r->head = (r->head + 1) % COMPLETED_RING_CAP;
    if (r->n < COMPLETED_RING_CAP)
        r->n++;
    return 0;
}

int completed_ring_since(const completed_ring_t *r, int64_t since_ms, int *pos,
                         const char **ids, int max)
{
    int oldest = (r->head - r->n + COMPLETED_RING_CAP) % COMPLETED_RING_CAP;
    int k = 0;

    for (; *pos < r->n && k < max; (*pos)++) {
        const completed_entry_t *e = &r->e[(oldest + *pos) % COMPLETED_RING_CAP];

        if (e->at_ms >= since_ms)
            ids[k++] = e->id;
    }
    return k;
}

void completed_ring_free(completed_ring_t *r)
{
    free(r->e);
    r->e = NULL;
    r->head = r->n = 0;
}
