/*
 * libFuzzer target for the application validator (ngx_osago_module/osago_application.c).
 *
 *   make fuzz                     20 s on a copy of fuzz/corpus/
 *   make fuzz FUZZ_TIME=600       longer
 *
 * Besides the sanitizers (ASan, UBSan with no recovery) it checks what must hold for any input:
 * an error has a known type, a pointer and a detail; a success fits the documented bounds, and
 * its canonical form is valid and canonicalizes to itself byte for byte. "Today" is 2025-06-15,
 * as in the seed corpus.
 */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "osago_application.h"

#define TODAY_2025_06_15  20254

static const char *const  types[] = {
    "malformed-json", "invalid-utf8", "too-deep", "unknown-field", "duplicate-field",
    "missing-field", "invalid-field", "empty-body"
};

static void
check_error(const osago_app_error_t *err)
{
    size_t  i;
    int     known = 0;

    if (err->type == NULL) {
        abort();
    }
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        known |= strcmp(err->type, types[i]) == 0;
    }
    if (!known
        || memchr(err->pointer, '\0', sizeof(err->pointer)) == NULL
        || memchr(err->detail, '\0', sizeof(err->detail)) == NULL
        || err->detail[0] == '\0'
        || (err->pointer[0] != '\0' && err->pointer[0] != '/'))
    {
        abort();
    }
    for (i = 0; err->pointer[i] != '\0'; i++) {
        if ((unsigned char) err->pointer[i] < 0x20 || err->pointer[i] == 0x7F) {
            abort();
        }
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char  out[OSAGO_APP_CANONICAL_MAX];
    static unsigned char  again[OSAGO_APP_CANONICAL_MAX];
    osago_app_limits_t    lim;
    osago_app_error_t     err;
    unsigned char        *copy;
    long                  r, r2;
    size_t                cap;

    lim.max_depth = 8;
    lim.today_days = TODAY_2025_06_15;
    lim.any_start_date = 0;

    /* the documented capacity, capped by the documented maximum */
    cap = 2 * size + 512 < sizeof(out) ? 2 * size + 512 : sizeof(out);

    r = osago_app_canonicalize(data, size, &lim, out, cap, &err);

    if (r < 0) {
        if (r != -1) {
            abort();
        }
        check_error(&err);
        return 0;
    }

    if (r == 0 || (size_t) r > cap || r > OSAGO_APP_CANONICAL_MAX) {
        abort();
    }

    /* the canonical form is a fixed point (copied: the input must not alias the output) */
    copy = malloc((size_t) r);
    if (copy == NULL) {
        return 0;
    }
    memcpy(copy, out, (size_t) r);
    r2 = osago_app_canonicalize(copy, (size_t) r, &lim, again, sizeof(again), &err);
    free(copy);

    if (r2 != r || memcmp(again, out, (size_t) r) != 0) {
        abort();
    }

    /* a replay's check (any start_date) accepts whatever today's accepts, unchanged */
    lim.any_start_date = 1;
    r2 = osago_app_canonicalize(data, size, &lim, again, cap, &err);

    if (r2 != r || memcmp(again, out, (size_t) r) != 0) {
        abort();
    }

    return 0;
}
