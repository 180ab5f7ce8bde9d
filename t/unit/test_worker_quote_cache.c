/*
 * Unit tests of results' copy of each application's quotes (worker/quote_cache.c), built with
 * ASan and UBSan by `make build/san/test_worker_quote_cache`, run by t/31-worker-unit.t.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "quote_cache.h"

#define APP_A "0190a1b2-0000-7000-8000-00000000000a"

static void put(quote_cache_t *c, const char *app, const char *version,
                const read_model_quote_t *q, int n)
{
    quote_cache_entry_t e;

    assert_int_equal(quote_cache_make(&e, app, version, q, n), 0);
    assert_int_equal(quote_cache_put(c, &e), 0);
    assert_null(e.quotes);
}

static void test_empty(void **state)
{
    quote_cache_t c = { 0 };
    (void)state;

    assert_null(quote_cache_get(&c, APP_A, "1"));
    quote_cache_drop(&c, APP_A);
    quote_cache_clear(&c);
    quote_cache_free(&c);
}

/* A copy owns its strings, keeps the final states, and shows running as pending: only results
 * changes the first two, the executor the other. */
static void test_copy(void **state)
{
    quote_cache_t      c = { 0 };
    char               code[3][8] = { "alfa", "ingos", "reso" }, premium[16] = "8734.50";
    char               error[32] = "HTTP 500";
    read_model_quote_t q[3] = { { code[0], "ok", premium, NULL },
                                { code[1], "running", NULL, NULL },
                                { code[2], "error", NULL, error } };
    const quote_cache_entry_t *e;
    (void)state;

    put(&c, APP_A, "725", q, 3);
    memset(code, 'x', sizeof(code));
    memset(premium, 'x', sizeof(premium) - 1);
    memset(error, 'x', sizeof(error) - 1);

    e = quote_cache_get(&c, APP_A, "725");
    assert_non_null(e);
    assert_int_equal(e->n, 3);
    assert_string_equal(e->quotes[0].code, "alfa");
    assert_string_equal(e->quotes[0].status, "ok");
    assert_string_equal(e->quotes[0].premium, "8734.50");
    assert_null(e->quotes[0].error);
    assert_string_equal(e->quotes[1].code, "ingos");
    assert_string_equal(e->quotes[1].status, "pending");
    assert_null(e->quotes[1].premium);
    assert_string_equal(e->quotes[2].status, "error");
    assert_string_equal(e->quotes[2].error, "HTTP 500");
    quote_cache_free(&c);
}

/* Another version of the row (another writer committed since) or another id: no copy. */
static void test_version(void **state)
{
    quote_cache_t      c = { 0 };
    read_model_quote_t q[1] = { { "alfa", "pending", NULL, NULL } };
    (void)state;

    put(&c, APP_A, "725", q, 1);
    assert_null(quote_cache_get(&c, APP_A, "726"));
    assert_null(quote_cache_get(&c, APP_A, "72"));
    assert_null(quote_cache_get(&c, "0190a1b2-0000-7000-8000-00000000000b", "725"));
    assert_non_null(quote_cache_get(&c, APP_A, "725"));
    quote_cache_free(&c);
}

/* The next version is made from the entry it replaces (what results does each transaction). */
static void test_replace_from_itself(void **state)
{
    quote_cache_t              c = { 0 };
    read_model_quote_t         q[2] = { { "alfa", "pending", NULL, NULL },
                                        { "reso", "pending", NULL, NULL } };
    read_model_quote_t         next[2];
    const quote_cache_entry_t *e;
    (void)state;

    put(&c, APP_A, "725", q, 2);
    e = quote_cache_get(&c, APP_A, "725");
    memcpy(next, e->quotes, sizeof(next));
    next[1].status = "ok";
    next[1].premium = "9100.00";
    put(&c, APP_A, "731", next, 2);      /* next points into the entry this put frees */

    assert_null(quote_cache_get(&c, APP_A, "725"));
    e = quote_cache_get(&c, APP_A, "731");
    assert_non_null(e);
    assert_string_equal(e->quotes[0].code, "alfa");
    assert_string_equal(e->quotes[1].status, "ok");
    assert_string_equal(e->quotes[1].premium, "9100.00");
    quote_cache_free(&c);
}

/* Two applications in one slot: the later replaces the earlier, which is then read again. */
static void test_collision(void **state)
{
    quote_cache_t      c = { 0 };
    read_model_quote_t q[1] = { { "alfa", "pending", NULL, NULL } };
    char               other[40];
    int                i;
    (void)state;

    put(&c, APP_A, "1", q, 1);
    for (i = 0; i < 1000000; i++) {
        snprintf(other, sizeof(other), "0190a1b2-0000-7000-8000-%012d", i);
        put(&c, other, "2", q, 1);
        if (quote_cache_get(&c, APP_A, "1") == NULL)
            break;
        quote_cache_drop(&c, other);
    }
    assert_true(i < 1000000);
    assert_non_null(quote_cache_get(&c, other, "2"));
    quote_cache_drop(&c, APP_A);                  /* not the one held: nothing happens */
    assert_non_null(quote_cache_get(&c, other, "2"));
    quote_cache_free(&c);
}

static void test_drop_and_clear(void **state)
{
    quote_cache_t      c = { 0 };
    read_model_quote_t q[1] = { { "alfa", "ok", "1.00", NULL } };
    (void)state;

    put(&c, APP_A, "1", q, 1);
    put(&c, "0190a1b2-0000-7000-8000-00000000000b", "1", q, 1);
    quote_cache_drop(&c, APP_A);
    assert_null(quote_cache_get(&c, APP_A, "1"));
    assert_non_null(quote_cache_get(&c, "0190a1b2-0000-7000-8000-00000000000b", "1"));
    quote_cache_clear(&c);
    assert_null(quote_cache_get(&c, "0190a1b2-0000-7000-8000-00000000000b", "1"));
    put(&c, APP_A, "2", q, 0);                    /* no quotes is still a copy */
    assert_int_equal(quote_cache_get(&c, APP_A, "2")->n, 0);
    quote_cache_free(&c);
}

static void test_key_too_long(void **state)
{
    quote_cache_entry_t e;
    char                app[64], version[64];
    (void)state;

    memset(app, 'a', sizeof(app) - 1);
    app[sizeof(app) - 1] = '\0';
    memset(version, '7', sizeof(version) - 1);
    version[sizeof(version) - 1] = '\0';
    assert_int_equal(quote_cache_make(&e, app, "1", NULL, 0), -1);
    assert_null(e.quotes);
    assert_int_equal(quote_cache_make(&e, APP_A, version, NULL, 0), -1);
    assert_null(e.quotes);
    /* what RES_APP_VERSION gives at most: a 32-bit xid, '/', microseconds as a bigint */
    assert_int_equal(quote_cache_make(&e, APP_A, "4294967295/-9223372036854775808", NULL, 0), 0);
    quote_cache_entry_free(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_replace_from_itself),
        cmocka_unit_test(test_collision),
        cmocka_unit_test(test_drop_and_clear),
        cmocka_unit_test(test_key_too_long),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
