/*
 * Unit tests of the ring of applications completed lately (worker/completed_ring.c), built with
 * ASan and UBSan by `make build/san/test_worker_completed_ring`, run by t/31-worker-unit.t.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "completed_ring.h"

static void test_empty(void **state)
{
    completed_ring_t r = { 0 };
    const char      *ids[4];
    int              pos = 0;
    (void)state;

    assert_int_equal(completed_ring_since(&r, 0, &pos, ids, 4), 0);
    completed_ring_free(&r);
}

/* Entries since a time, oldest first, in pages of max, each page from where the last ended. */
static void test_since_in_pages(void **state)
{
    completed_ring_t r = { 0 };
    const char      *ids[3];
    char             id[40];
    int              pos = 0;
    (void)state;

    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "app-%d", i);
        assert_int_equal(completed_ring_add(&r, id, 1000 + i * 10), 0);
    }
    /* since 1035: app-4 .. app-9, three at a time */
    assert_int_equal(completed_ring_since(&r, 1035, &pos, ids, 3), 3);
    assert_string_equal(ids[0], "app-4");
    assert_string_equal(ids[2], "app-6");
    assert_int_equal(completed_ring_since(&r, 1035, &pos, ids, 3), 3);
    assert_string_equal(ids[0], "app-7");
    assert_string_equal(ids[2], "app-9");
    assert_int_equal(completed_ring_since(&r, 1035, &pos, ids, 3), 0);
    pos = 0;
    assert_int_equal(completed_ring_since(&r, 2000, &pos, ids, 3), 0);
    completed_ring_free(&r);
}

/* Full, the ring drops the oldest: what is left is the last COMPLETED_RING_CAP, in order. */
static void test_wraps(void **state)
{
    completed_ring_t r = { 0 };
    const char     **ids = calloc(COMPLETED_RING_CAP, sizeof(*ids));
    char             id[40];
    int              pos = 0, extra = 5;
    (void)state;

    assert_non_null(ids);
    for (int i = 0; i < COMPLETED_RING_CAP + extra; i++) {
        snprintf(id, sizeof(id), "app-%d", i);
        assert_int_equal(completed_ring_add(&r, id, i), 0);
    }
    assert_int_equal(completed_ring_since(&r, 0, &pos, ids, COMPLETED_RING_CAP),
                     COMPLETED_RING_CAP);
    snprintf(id, sizeof(id), "app-%d", extra);
    assert_string_equal(ids[0], id);
    snprintf(id, sizeof(id), "app-%d", COMPLETED_RING_CAP + extra - 1);
    assert_string_equal(ids[COMPLETED_RING_CAP - 1], id);
    /* an id longer than a UUID is cut, never overrun */
    assert_int_equal(completed_ring_add(&r, "0123456789012345678901234567890123456789xyz", 1 << 30), 0);
    pos = 0;
    assert_int_equal(completed_ring_since(&r, 1 << 30, &pos, ids, 2), 1);
    assert_string_equal(ids[0], "012345678901234567890123456789012345678");
    free(ids);
    completed_ring_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_since_in_pages),
        cmocka_unit_test(test_wraps),
    };
    return cmocka_run_group_tests_name("worker completed ring", tests, NULL, NULL);
}
