/* When a failed insurer call is tried again. */
#ifndef OSAGO_WORKER_RETRY_H
#define OSAGO_WORKER_RETRY_H

#include <stdint.h>

/* 1 when an attempt that failed may be followed by another (attempt counts from 1). */
int retry_allowed(int attempt, int max_attempts);

/*
 * Delay before attempt `next` (2, 3, ...): base * 2^(next-2), capped at max, with up to 20 %
 * random jitter drawn from *seed (rand_r), so retries of many tasks do not arrive together.
 * The jitter only shortens: the result lies in [d - d/5, d] for the capped d, so max is a hard
 * bound. next < 2 (the first attempt), base <= 0 or max <= 0: 0. seed NULL: no jitter.
 */
int64_t retry_delay_ms(int next, int base_ms, int max_ms, unsigned *seed);

#endif
