/*
 * Unit tests of the retry policy (worker/retry.c), built with ASan and UBSan by
 * `make build/san/test_worker_retry`, run by t/31-worker-unit.t.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "retry.h"

static void test_attempts(void **state)
{
    (void)state;
    /* 3 attempts in all: after the 1st and 2nd a retry, after the 3rd none */
    assert_true(retry_allowed(1, 3));
    assert_true(retry_allowed(2, 3));
    assert_false(retry_allowed(3, 3));
    assert_false(retry_allowed(4, 3));
    assert_false(retry_allowed(1, 1));
    assert_false(retry_allowed(0, 3));
    assert_false(retry_allowed(-1, 3));
    assert_true(retry_allowed(9, 10));
    assert_false(retry_allowed(10, 10));
}

static void test_growth_without_jitter(void **state)
{
    (void)state;
    assert_int_equal(retry_delay_ms(2, 1000, 30000, NULL), 1000);
    assert_int_equal(retry_delay_ms(3, 1000, 30000, NULL), 2000);
    assert_int_equal(retry_delay_ms(4, 1000, 30000, NULL), 4000);
    assert_int_equal(retry_delay_ms(5, 1000, 30000, NULL), 8000);
    assert_int_equal(retry_delay_ms(6, 1000, 30000, NULL), 16000);
    assert_int_equal(retry_delay_ms(2, 50, 60000, NULL), 50);
    assert_int_equal(retry_delay_ms(3, 50, 60000, NULL), 100);
}

static void test_cap(void **state)
{
    (void)state;
    assert_int_equal(retry_delay_ms(7, 1000, 30000, NULL), 30000);    /* 32000 capped */
    assert_int_equal(retry_delay_ms(10, 1000, 30000, NULL), 30000);
    assert_int_equal(retry_delay_ms(2, 5000, 3000, NULL), 3000);      /* base above the cap */
    /* no overflow however far the attempt count goes */
    assert_int_equal(retry_delay_ms(1000, 600000, 3600000, NULL), 3600000);
    assert_int_equal(retry_delay_ms(INT32_MAX, 1, 3600000, NULL), 3600000);
}

static void test_first_attempt_and_bad_input(void **state)
{
    unsigned seed = 1;
    (void)state;
    assert_int_equal(retry_delay_ms(1, 1000, 30000, &seed), 0);
    assert_int_equal(retry_delay_ms(0, 1000, 30000, &seed), 0);
    assert_int_equal(retry_delay_ms(-5, 1000, 30000, &seed), 0);
    assert_int_equal(retry_delay_ms(2, 0, 30000, &seed), 0);
    assert_int_equal(retry_delay_ms(2, -1, 30000, &seed), 0);
    assert_int_equal(retry_delay_ms(2, 1000, 0, &seed), 0);
}

/* Jitter only shortens, by at most 20 %, and really varies. */
static void test_jitter_bounds(void **state)
{
    unsigned seed = 12345;
    (void)state;
    for (int next = 2; next <= 10; next++) {
        int64_t full = retry_delay_ms(next, 1000, 30000, NULL);
        int64_t lo = full, hi = 0;
        double sum = 0;
        const int n = 20000;
        for (int i = 0; i < n; i++) {
            int64_t d = retry_delay_ms(next, 1000, 30000, &seed);
            if (d < full - full / 5 || d > full)
                fail_msg("next %d: %lld outside [%lld, %lld]", next, (long long)d,
                         (long long)(full - full / 5), (long long)full);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
            sum += (double)d;
        }
        /* the whole range is used, and the mean sits near 90 % */
        assert_true(lo <= full - full / 5 + full / 100);
        assert_true(hi >= full - full / 100);
        assert_in_range((int64_t)(sum / n), (uint64_t)(full * 0.88), (uint64_t)(full * 0.92));
    }
}

static void test_jitter_small_and_deterministic(void **state)
{
    unsigned a = 7, b = 7;
    (void)state;
    /* too small to jitter: exactly the delay */
    for (int i = 0; i < 100; i++)
        assert_int_equal(retry_delay_ms(2, 4, 100, &a), 4);
    for (int i = 0; i < 100; i++) {
        int64_t d = retry_delay_ms(2, 5, 100, &a);
        assert_true(d == 4 || d == 5);
    }
    /* the same seed gives the same sequence (so a test can replay one) */
    a = b = 99;
    for (int i = 0; i < 100; i++)
        assert_int_equal(retry_delay_ms(3, 1000, 30000, &a), retry_delay_ms(3, 1000, 30000, &b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attempts),
        cmocka_unit_test(test_growth_without_jitter),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_first_attempt_and_bad_input),
        cmocka_unit_test(test_jitter_bounds),
        cmocka_unit_test(test_jitter_small_and_deterministic),
    };
    return cmocka_run_group_tests_name("worker retry policy", tests, NULL, NULL);
}
