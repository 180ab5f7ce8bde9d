/*
 * Unit tests of a conninfo's addresses spelled out and rotated (worker/pg_hosts.c), built with
 * ASan and UBSan by `make build/san/test_worker_pg_hosts`, run by t/31-worker-unit.t. Names are
 * looked up by a table here (db.example has three addresses), and once by the system's resolver
 * (localhost).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pg_hosts.h"

static int lookups;

static int table_resolve(const char *name, char addrs[][PG_HOSTS_ADDR_LEN], int max)
{
    static const char *const db[] = { "10.0.0.1", "10.0.0.2", "fd00::3" };
    int                      n = 0;

    lookups++;
    if (strcmp(name, "db.example") == 0)
        for (; n < 3 && n < max; n++)
            snprintf(addrs[n], PG_HOSTS_ADDR_LEN, "%s", db[n]);
    return n;
}

static void plan(const char *host, const char *hostaddr, const char *port, int skip,
                 pg_hosts_t *out)
{
    lookups = 0;
    assert_int_equal(pg_hosts_plan(host, hostaddr, port, skip, table_resolve, out), 0);
}

static void assert_list(const char *got, const char *want)
{
    if (want == NULL) {
        assert_null(got);
    } else {
        assert_non_null(got);
        assert_string_equal(got, want);
    }
}

static void test_default_host(void **state)
{
    pg_hosts_t h;

    (void) state;
    plan(NULL, NULL, "5432", 3, &h);
    assert_int_equal(h.n, 0);
    assert_null(h.host);
    assert_null(h.hostaddr);
    assert_null(h.port);
    assert_int_equal(lookups, 0);
}

static void test_address_list_rotated(void **state)
{
    pg_hosts_t h;

    (void) state;
    plan("127.0.0.1,127.0.0.1,::1", NULL, "1,2,3", 0, &h);
    assert_int_equal(h.n, 3);
    assert_list(h.host, "127.0.0.1,127.0.0.1,::1");
    assert_list(h.hostaddr, NULL);            /* addresses already: nothing looked up */
    assert_list(h.port, "1,2,3");
    assert_int_equal(lookups, 0);
    pg_hosts_free(&h);

    plan("127.0.0.1,127.0.0.1,::1", NULL, "1,2,3", 1, &h);
    assert_list(h.host, "127.0.0.1,::1,127.0.0.1");
    assert_list(h.port, "2,3,1");
    pg_hosts_free(&h);

    plan("127.0.0.1,127.0.0.1,::1", NULL, "1,2,3", 5, &h);   /* modulo the length */
    assert_list(h.port, "3,1,2");
    pg_hosts_free(&h);
}

static void test_name_expanded(void **state)
{
    pg_hosts_t h;

    (void) state;
    plan("db.example", NULL, "6432", 0, &h);
    assert_int_equal(h.n, 3);
    assert_int_equal(lookups, 1);
    assert_list(h.host, "db.example,db.example,db.example");   /* kept for TLS and .pgpass */
    assert_list(h.hostaddr, "10.0.0.1,10.0.0.2,fd00::3");
    assert_list(h.port, NULL);                                 /* one port serves them all */
    pg_hosts_free(&h);

    /* the attempt after the first address was silent starts at the second */
    plan("db.example", NULL, NULL, 1, &h);
    assert_list(h.hostaddr, "10.0.0.2,fd00::3,10.0.0.1");
    pg_hosts_free(&h);
}

static void test_mixed_list(void **state)
{
    pg_hosts_t h;

    (void) state;
    plan("/run/postgresql,db.example,nowhere.example", NULL, "5432,5433,5434", 0, &h);
    assert_int_equal(h.n, 5);
    assert_int_equal(lookups, 2);             /* the socket directory is not a name */
    assert_list(h.host, "/run/postgresql,db.example,db.example,db.example,nowhere.example");
    /* empty: libpq resolves (or fails) that entry itself */
    assert_list(h.hostaddr, ",10.0.0.1,10.0.0.2,fd00::3,");
    assert_list(h.port, "5432,5433,5433,5433,5434");
    pg_hosts_free(&h);

    plan("/run/postgresql,db.example,nowhere.example", NULL, "5432,5433,5434", 4, &h);
    assert_list(h.host, "nowhere.example,/run/postgresql,db.example,db.example,db.example");
    assert_list(h.hostaddr, ",,10.0.0.1,10.0.0.2,fd00::3");
    assert_list(h.port, "5434,5432,5433,5433,5433");
    pg_hosts_free(&h);
}

static void test_hostaddr_given(void **state)
{
    pg_hosts_t h;

    (void) state;
    plan("a.example,db.example", "10.0.0.9,10.0.0.8", "1,2", 1, &h);
    assert_int_equal(h.n, 2);
    assert_int_equal(lookups, 0);             /* the operator chose the addresses */
    assert_list(h.host, "db.example,a.example");
    assert_list(h.hostaddr, "10.0.0.8,10.0.0.9");
    assert_list(h.port, "2,1");
    pg_hosts_free(&h);

    plan(NULL, "10.0.0.1,10.0.0.2", "7", 1, &h);
    assert_int_equal(h.n, 2);
    assert_list(h.host, NULL);
    assert_list(h.hostaddr, "10.0.0.2,10.0.0.1");
    assert_list(h.port, NULL);
    pg_hosts_free(&h);
}

static void test_counts_libpq_refuses(void **state)
{
    pg_hosts_t h;

    (void) state;
    /* two names, one address: libpq says so; the lists it would refuse are not replaced */
    plan("a.example,b.example", "10.0.0.1", "1,2,3", 1, &h);
    assert_int_equal(h.n, 2);
    assert_list(h.host, "b.example,a.example");
    assert_list(h.hostaddr, NULL);
    assert_list(h.port, NULL);
    pg_hosts_free(&h);
}

static void test_ports_not_paired(void **state)
{
    pg_hosts_t h;

    (void) state;
    /* three ports for two hosts: not expanded, or the ports would pair with the addresses */
    plan("db.example,b.example", NULL, "1,2,3", 1, &h);
    assert_int_equal(lookups, 0);
    assert_int_equal(h.n, 2);
    assert_list(h.host, "b.example,db.example");
    assert_list(h.hostaddr, NULL);
    assert_list(h.port, NULL);
    pg_hosts_free(&h);
}

static void test_scoped_address(void **state)
{
    pg_hosts_t h;

    (void) state;
    plan("fe80::1%eth0,db.example", NULL, "5432,5433", 0, &h);
    assert_int_equal(lookups, 1);             /* the scoped address is not a name */
    assert_int_equal(h.n, 4);
    assert_list(h.host, "fe80::1%eth0,db.example,db.example,db.example");
    assert_list(h.hostaddr, ",10.0.0.1,10.0.0.2,fd00::3");
    pg_hosts_free(&h);
}

static void test_find(void **state)
{
    pg_hosts_t h;

    (void) state;
    plan("/nowhere,127.0.0.1,db.example", NULL, "5432,6000,6001", 0, &h);
    assert_int_equal(h.n, 5);
    /* libpq says which host, address and port it is on */
    assert_int_equal(pg_hosts_find(&h, 0, "/nowhere", "", "5432"), 0);
    assert_int_equal(pg_hosts_find(&h, 0, "127.0.0.1", "127.0.0.1", "6000"), 1);
    assert_int_equal(pg_hosts_find(&h, 0, "db.example", "10.0.0.2", "6001"), 3);
    assert_int_equal(pg_hosts_find(&h, 0, "db.example", "fd00::3", "6001"), 4);
    /* unknown (or libpq's own): where it was */
    assert_int_equal(pg_hosts_find(&h, 2, "db.example", "10.9.9.9", "6001"), 2);
    assert_int_equal(pg_hosts_find(&h, 1, "other", "10.0.0.1", "6001"), 1);
    pg_hosts_free(&h);

    /* the same address twice: libpq goes in order, so the one from `from` on */
    plan("127.0.0.1,127.0.0.1", NULL, "6000,6000", 1, &h);
    assert_int_equal(pg_hosts_find(&h, 0, "127.0.0.1", "127.0.0.1", "6000"), 0);
    assert_int_equal(pg_hosts_find(&h, 1, "127.0.0.1", "127.0.0.1", "6000"), 1);
    pg_hosts_free(&h);

    /* no list (libpq's default address): one, always the first */
    plan(NULL, NULL, NULL, 0, &h);
    assert_int_equal(pg_hosts_find(&h, 0, "/var/run/postgresql", "", "5432"), 0);
}

static void test_system_resolver(void **state)
{
    char addrs[PG_HOSTS_ADDR_MAX][PG_HOSTS_ADDR_LEN];
    int  n = pg_hosts_resolve("localhost", addrs, PG_HOSTS_ADDR_MAX), loopback = 0;

    (void) state;
    assert_true(n >= 1);
    for (int i = 0; i < n; i++) {
        loopback |= strcmp(addrs[i], "127.0.0.1") == 0 || strcmp(addrs[i], "::1") == 0;
        for (int j = 0; j < i; j++)
            assert_string_not_equal(addrs[i], addrs[j]);
    }
    assert_true(loopback);
    assert_int_equal(pg_hosts_resolve("localhost", addrs, 1), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_host),
        cmocka_unit_test(test_address_list_rotated),
        cmocka_unit_test(test_name_expanded),
        cmocka_unit_test(test_mixed_list),
        cmocka_unit_test(test_hostaddr_given),
        cmocka_unit_test(test_counts_libpq_refuses),
        cmocka_unit_test(test_ports_not_paired),
        cmocka_unit_test(test_scoped_address),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_system_resolver),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
