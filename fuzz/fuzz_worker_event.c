/*
 * libFuzzer target for the worker's Kafka event decoder (worker/event.c, event_decode).
 *
 *   make fuzz                     runs it after the application validator, FUZZ_TIME each
 *
 * Kafka messages are not NUL-terminated: the input is decoded from a heap block of exactly its
 * length, so a read past the end is an ASan report. Besides the sanitizers it checks what must
 * hold for any input: a refusal says why; an accepted event passes event_validate, encodes, and
 * decodes again to the same fields, and its payload (when it has one) is a JSON object that
 * survives the round trip byte for byte.
 */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

static void same_event(const osago_event_t *a, const osago_event_t *b)
{
    if (a->type != b->type || a->version != b->version || a->attempt != b->attempt
        || a->ok != b->ok || a->n_insurers != b->n_insurers
        || a->occurred_at_ms != b->occurred_at_ms
        || strcmp(a->event_id, b->event_id) != 0
        || strcmp(a->application_id, b->application_id) != 0
        || strcmp(a->traceparent, b->traceparent) != 0 || strcmp(a->partner, b->partner) != 0
        || strcmp(a->insurer, b->insurer) != 0 || strcmp(a->premium_rub, b->premium_rub) != 0
        || strcmp(a->error, b->error) != 0)
        abort();
    for (int i = 0; i < a->n_insurers; i++)
        if (strcmp(a->insurers[i], b->insurers[i]) != 0)
            abort();
    if ((a->payload == NULL) != (b->payload == NULL)
        || (a->payload != NULL && strcmp(a->payload, b->payload) != 0))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    osago_event_t ev, again;
    char          err[256] = "";
    char         *copy = malloc(size > 0 ? size : 1);
    char         *text;
    size_t        len = 0;

    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    if (event_decode(copy, size, &ev, err, sizeof(err)) != 0) {
        if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL)
            abort();
        free(copy);
        return 0;
    }
    free(copy);
    if (event_validate(&ev, err, sizeof(err)) != 0)
        abort();
    if ((ev.type == EV_CREATED || ev.type == EV_TASK)
        && (ev.payload == NULL || ev.payload[0] != '{'))
        abort();
    if ((text = event_encode(&ev, &len)) == NULL)
        abort();
    if (event_decode(text, len, &again, err, sizeof(err)) != 0)
        abort();
    same_event(&ev, &again);
    free(text);
    event_free(&again);
    event_free(&ev);
    return 0;
}
