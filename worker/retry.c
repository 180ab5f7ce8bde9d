/* Retry policy for insurer calls: exponential backoff with a cap and jitter. */
#include "retry.h"

#include <stdlib.h>

int retry_allowed(int attempt, int max_attempts)
{
    return attempt >= 1 && attempt < max_attempts;
}

/*
 * The jitter only ever shortens the delay (the result lies in [80 %, 100 %] of the capped
 * value), so the cap is a real upper bound that operators can reason about.
 */
int64_t retry_delay_ms(int next, int base_ms, int max_ms, unsigned *seed)
{
    if (next < 2 || base_ms <= 0 || max_ms <= 0)
        return 0;

    int64_t d = base_ms;
    for (int i = 2; i < next && d < max_ms; i++)
        d *= 2;     /* stops doubling at the cap, so it never overflows */
    if (d > max_ms)
        d = max_ms;

    if (seed != NULL) {
        int64_t span = d / 5;
        if (span > 0)
            d -= (int64_t)((double)rand_r(seed) / ((double)RAND_MAX + 1.0) * (double)(span + 1));
    }
    return d;
}
