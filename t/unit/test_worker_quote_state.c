/*
 * Unit tests of the quote state machine (worker/quote_state.c), built with ASan and UBSan by
 * `make build/san/test_worker_quote_state`, run by t/31-worker-unit.t. The table under test is
 * the one documented in worker/quote_state.h.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "quote_state.h"

#define NA -1   /* "does not apply" */
#define P QUOTE_PENDING
#define R QUOTE_RUNNING
#define OK QUOTE_OK
#define ER QUOTE_ERROR

struct row {
    quote_status_t cur;
    int            cur_attempt;
    quote_event_t  ev;
    int            attempt;
    int            max;
    int            expect;      /* a quote_status_t, or NA */
};

static const char *const ev_names[] = { "START", "SUCCEEDED", "FAILED", "STALE" };

static void check(const struct row *r)
{
    quote_status_t next = (quote_status_t)77;
    int rc = quote_next(r->cur, r->cur_attempt, r->ev, r->attempt, r->max, &next);
    int got = rc < 0 ? NA : (int)next;
    if (got != r->expect)
        fail_msg("%s(%d) + %s(%d), max %d: got %s, expected %s", quote_status_name(r->cur),
                 r->cur_attempt, ev_names[r->ev], r->attempt, r->max,
                 got == NA ? "n/a" : quote_status_name((quote_status_t)got),
                 r->expect == NA ? "n/a" : quote_status_name((quote_status_t)r->expect));
    if (rc < 0)
        assert_int_equal(next, 77);   /* untouched when it does not apply */
}

static void check_all(const struct row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        check(&rows[i]);
}

#define CHECK_ALL(rows) check_all(rows, sizeof(rows) / sizeof(rows[0]))

static void test_names(void **state)
{
    quote_status_t s;
    (void)state;
    const char *names[] = { "pending", "running", "ok", "error" };
    for (int i = 0; i < 4; i++) {
        assert_string_equal(quote_status_name((quote_status_t)i), names[i]);
        assert_int_equal(quote_status_parse(names[i], &s), 0);
        assert_int_equal(s, i);
    }
    assert_int_equal(quote_status_parse("done", &s), -1);
    assert_int_equal(quote_status_parse("", &s), -1);
    assert_int_equal(quote_status_parse("OK", &s), -1);
    assert_int_equal(quote_status_parse(NULL, &s), -1);
    assert_string_equal(app_status_name(APP_ACCEPTED), "accepted");
    assert_string_equal(app_status_name(APP_IN_PROGRESS), "in_progress");
    assert_string_equal(app_status_name(APP_COMPLETED), "completed");
}

static void test_start(void **state)
{
    (void)state;
    static const struct row rows[] = {
        { P, 0, QEV_START, 1, 3, R },    /* orchestrator's row (attempt 0), Task 1 */
        { P, 1, QEV_START, 1, 3, R },    /* orchestrator's row (attempt 1), Task 1 */
        { P, 2, QEV_START, 2, 3, R },    /* a retry or a sweep re-drive */
        { P, 2, QEV_START, 3, 3, R },
        { P, 2, QEV_START, 1, 3, NA },   /* an older task redelivered */
        { R, 1, QEV_START, 1, 3, NA },   /* the same task redelivered while it runs */
        { R, 1, QEV_START, 2, 3, R },    /* a newer attempt takes over */
        { R, 2, QEV_START, 1, 3, NA },
        { P, 0, QEV_START, 0, 3, NA },   /* attempts count from 1 */
        { P, 0, QEV_START, 5, 3, R },    /* beyond max: another instance's setting, still run */
    };
    CHECK_ALL(rows);
}

static void test_succeeded(void **state)
{
    (void)state;
    static const struct row rows[] = {
        { R, 1, QEV_SUCCEEDED, 1, 3, OK },
        { R, 3, QEV_SUCCEEDED, 3, 3, OK },
        { P, 2, QEV_SUCCEEDED, 2, 3, OK },    /* swept, but the call still answered */
        { R, 2, QEV_SUCCEEDED, 1, 3, NA },    /* an older attempt's late answer */
        { P, 3, QEV_SUCCEEDED, 2, 3, NA },
        { R, 1, QEV_SUCCEEDED, 2, 3, OK },
    };
    CHECK_ALL(rows);
}

static void test_failed(void **state)
{
    (void)state;
    static const struct row rows[] = {
        { R, 1, QEV_FAILED, 1, 3, P },     /* attempts left: pending, the next try is due */
        { R, 2, QEV_FAILED, 2, 3, P },
        { R, 3, QEV_FAILED, 3, 3, ER },    /* the last attempt */
        { R, 4, QEV_FAILED, 4, 3, ER },    /* beyond max */
        { R, 1, QEV_FAILED, 1, 1, ER },    /* one attempt in all */
        { P, 2, QEV_FAILED, 1, 3, NA },    /* the duplicate of the failure that made pending(2) */
        { P, 2, QEV_FAILED, 2, 3, P },     /* failure of a swept attempt */
        { R, 2, QEV_FAILED, 1, 3, NA },
        { R, 1, QEV_FAILED, 1, 0, ER },    /* max < 1 counts as 1 */
        /* a final error result: the results role passes max = attempt */
        { R, 2, QEV_FAILED, 2, 2, ER },
        { P, 1, QEV_FAILED, 1, 1, ER },
    };
    CHECK_ALL(rows);
}

static void test_stale(void **state)
{
    (void)state;
    static const struct row rows[] = {
        { R, 1, QEV_STALE, 1, 3, P },      /* re-drive the same attempt */
        { R, 3, QEV_STALE, 3, 3, P },      /* even the last: the crash was not the insurer's */
        { P, 2, QEV_STALE, 2, 3, P },      /* a retry whose executor died in the backoff */
        { R, 2, QEV_STALE, 1, 3, NA },     /* the row moved on since the sweeper read it */
        { R, 2, QEV_STALE, 3, 3, NA },
        { P, 2, QEV_STALE, 3, 3, NA },
    };
    CHECK_ALL(rows);
}

/* A terminal quote never changes, whatever arrives. */
static void test_terminal(void **state)
{
    (void)state;
    for (int cur = QUOTE_OK; cur <= QUOTE_ERROR; cur++)
        for (int ev = QEV_START; ev <= QEV_STALE; ev++)
            for (int cur_attempt = 0; cur_attempt <= 4; cur_attempt++)
                for (int attempt = 0; attempt <= 5; attempt++) {
                    struct row r = { (quote_status_t)cur, cur_attempt, (quote_event_t)ev,
                                     attempt, 3, NA };
                    check(&r);
                }
}

/* An older attempt never overrides a newer one, for any state and event. */
static void test_older_attempt(void **state)
{
    (void)state;
    for (int cur = QUOTE_PENDING; cur <= QUOTE_RUNNING; cur++)
        for (int ev = QEV_START; ev <= QEV_STALE; ev++)
            for (int cur_attempt = 1; cur_attempt <= 5; cur_attempt++)
                for (int attempt = 0; attempt < cur_attempt; attempt++) {
                    struct row r = { (quote_status_t)cur, cur_attempt, (quote_event_t)ev,
                                     attempt, 3, NA };
                    check(&r);
                }
}

static void test_unknown_input(void **state)
{
    quote_status_t next;
    (void)state;
    assert_int_equal(quote_next((quote_status_t)9, 1, QEV_START, 1, 3, &next), -1);
    assert_int_equal(quote_next(QUOTE_RUNNING, 1, (quote_event_t)9, 2, 3, &next), -1);
}

/*
 * Whole histories, with the row updated the way quote_state.h says the SQL does (the attempt
 * recorded is `attempt`, except FAILED -> pending which records attempt + 1), including
 * redeliveries at every step.
 */
struct quote {
    quote_status_t s;
    int            attempt;
};

static int apply(struct quote *q, quote_event_t ev, int attempt, int max)
{
    quote_status_t next;
    if (quote_next(q->s, q->attempt, ev, attempt, max, &next) < 0)
        return 0;
    q->attempt = (ev == QEV_FAILED && next == QUOTE_PENDING) ? attempt + 1 : attempt;
    q->s = next;
    return 1;
}

static void test_histories(void **state)
{
    struct quote q;
    (void)state;

    /* fail, fail, succeed; every event delivered twice */
    q = (struct quote){ QUOTE_PENDING, 0 };
    assert_true(apply(&q, QEV_START, 1, 3));
    assert_false(apply(&q, QEV_START, 1, 3));
    assert_true(apply(&q, QEV_FAILED, 1, 3));
    assert_int_equal(q.s, QUOTE_PENDING);
    assert_int_equal(q.attempt, 2);
    assert_false(apply(&q, QEV_FAILED, 1, 3));
    assert_false(apply(&q, QEV_START, 1, 3));      /* the first task, redelivered late */
    assert_true(apply(&q, QEV_START, 2, 3));
    assert_true(apply(&q, QEV_FAILED, 2, 3));
    assert_int_equal(q.attempt, 3);
    assert_true(apply(&q, QEV_START, 3, 3));
    assert_true(apply(&q, QEV_SUCCEEDED, 3, 3));
    assert_int_equal(q.s, QUOTE_OK);
    assert_int_equal(q.attempt, 3);
    assert_false(apply(&q, QEV_SUCCEEDED, 3, 3));
    assert_false(apply(&q, QEV_FAILED, 3, 3));
    assert_false(apply(&q, QEV_STALE, 3, 3));

    /* three failures: error, with the last attempt recorded */
    q = (struct quote){ QUOTE_PENDING, 0 };
    for (int a = 1; a <= 3; a++) {
        assert_true(apply(&q, QEV_START, a, 3));
        assert_true(apply(&q, QEV_FAILED, a, 3));
    }
    assert_int_equal(q.s, QUOTE_ERROR);
    assert_int_equal(q.attempt, 3);
    assert_false(apply(&q, QEV_START, 3, 3));

    /* an executor dies mid-call: the redelivered task is ignored, the sweeper re-drives the
     * same attempt, another executor finishes; the dead call's late answer changes nothing */
    q = (struct quote){ QUOTE_PENDING, 0 };
    assert_true(apply(&q, QEV_START, 1, 3));
    assert_false(apply(&q, QEV_START, 1, 3));
    assert_true(apply(&q, QEV_STALE, 1, 3));
    assert_int_equal(q.s, QUOTE_PENDING);
    assert_int_equal(q.attempt, 1);
    assert_true(apply(&q, QEV_START, 1, 3));
    assert_true(apply(&q, QEV_SUCCEEDED, 1, 3));
    assert_false(apply(&q, QEV_FAILED, 1, 3));
    assert_int_equal(q.s, QUOTE_OK);

    /* swept while slow, then the slow call answers first: its premium is kept and the
     * re-driven task finds a terminal quote */
    q = (struct quote){ QUOTE_RUNNING, 2 };
    assert_true(apply(&q, QEV_STALE, 2, 3));
    assert_true(apply(&q, QEV_SUCCEEDED, 2, 3));
    assert_false(apply(&q, QEV_START, 2, 3));
    assert_int_equal(q.s, QUOTE_OK);
}

static void test_app_status(void **state)
{
    (void)state;
    assert_int_equal(app_status_from(0, 0), APP_ACCEPTED);
    assert_int_equal(app_status_from(5, 0), APP_IN_PROGRESS);
    assert_int_equal(app_status_from(5, 4), APP_IN_PROGRESS);
    assert_int_equal(app_status_from(5, 5), APP_COMPLETED);
    assert_int_equal(app_status_from(1, 1), APP_COMPLETED);
    assert_int_equal(app_status_from(-1, 0), APP_ACCEPTED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_start),
        cmocka_unit_test(test_succeeded),
        cmocka_unit_test(test_failed),
        cmocka_unit_test(test_stale),
        cmocka_unit_test(test_terminal),
        cmocka_unit_test(test_older_attempt),
        cmocka_unit_test(test_unknown_input),
        cmocka_unit_test(test_histories),
        cmocka_unit_test(test_app_status),
    };
    return cmocka_run_group_tests_name("worker quote state machine", tests, NULL, NULL);
}
