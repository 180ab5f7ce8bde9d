/*
 * Unit tests of the insurer list file (worker/insurers.c), built with ASan and UBSan by
 * `make build/san/test_worker_insurers`, run by t/31-worker-unit.t (from the repository root,
 * so the shipped conf/insurers.json is checked too).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "insurers.h"

static char path[64];

static int make_path(void **state)
{
    (void)state;
    snprintf(path, sizeof(path), "/tmp/test-worker-insurers-%ld.json", (long)getpid());
    return 0;
}

static int remove_file(void **state)
{
    (void)state;
    unlink(path);
    return 0;
}

static void write_file(const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static insurer_list_t *load_ok(const char *text)
{
    static insurer_list_t list;
    char err[512] = "";
    write_file(text);
    if (insurers_load(path, 60000, &list, err, sizeof(err)) != 0)
        fail_msg("rejected: %s", err);
    return &list;
}

/* The message is "<path>: <rest>". */
static void expect_error(const char *text, const char *rest)
{
    static insurer_list_t list;
    char err[512] = "", expected[512];
    write_file(text);
    if (insurers_load(path, 60000, &list, err, sizeof(err)) != -1)
        fail_msg("accepted %s (expected: %s)", text, rest);
    snprintf(expected, sizeof(expected), "%s: %s", path, rest);
    if (strcmp(err, expected) != 0)
        fail_msg("for %s\n  got      \"%s\"\n  expected \"%s\"", text, err, expected);
    assert_int_equal(list.n, 0);
}

#define ONE(fields) "[{\"code\":\"alfa\",\"url\":\"http://127.0.0.1:8090/insurers/alfa/quote\"" fields "}]"

static void test_valid(void **state)
{
    (void)state;
    insurer_list_t *l = load_ok(
        "[{\"code\":\"alfa\",\"name\":\"\xD0\x90\xD0\xBB\xD1\x8C\xD1\x84\xD0\xB0\","
        "\"url\":\"http://127.0.0.1:8090/insurers/alfa/quote\",\"timeout_ms\":1500},\n"
        " {\"code\":\"rgs_2-x\",\"url\":\"https://api.example.ru/osago/v1/quote\","
        "\"auth_header\":\"Authorization: Bearer abc.def\"}]");
    assert_int_equal(l->n, 2);
    assert_string_equal(l->items[0].code, "alfa");
    assert_string_equal(l->items[0].name, "\xD0\x90\xD0\xBB\xD1\x8C\xD1\x84\xD0\xB0");
    assert_string_equal(l->items[0].url, "http://127.0.0.1:8090/insurers/alfa/quote");
    assert_int_equal(l->items[0].timeout_ms, 1500);
    assert_string_equal(l->items[0].auth_header, "");
    /* defaults: the name is the code, the timeout the worker's */
    assert_string_equal(l->items[1].name, "rgs_2-x");
    assert_int_equal(l->items[1].timeout_ms, 60000);
    assert_string_equal(l->items[1].auth_header, "Authorization: Bearer abc.def");
    /* the connect timeout: 5 s, never beyond the call's own */
    assert_int_equal(l->items[1].connect_timeout_ms, 5000);
    assert_int_equal(l->items[0].connect_timeout_ms, 1500);

    assert_ptr_equal(insurers_find(l, "rgs_2-x"), &l->items[1]);
    assert_ptr_equal(insurers_find(l, "alfa"), &l->items[0]);
    assert_null(insurers_find(l, "alf"));
    assert_null(insurers_find(l, ""));

    /* bounds */
    l = load_ok(ONE(",\"timeout_ms\":1"));
    assert_int_equal(l->items[0].timeout_ms, 1);
    l = load_ok(ONE(",\"connect_timeout_ms\":250,\"timeout_ms\":2000"));
    assert_int_equal(l->items[0].connect_timeout_ms, 250);
    l = load_ok(ONE(",\"connect_timeout_ms\":9000,\"timeout_ms\":2000"));
    assert_int_equal(l->items[0].connect_timeout_ms, 2000);
    l = load_ok(ONE(",\"timeout_ms\":600000"));
    assert_int_equal(l->items[0].timeout_ms, 600000);

    char many[64 * 80 + 8] = "[";
    for (int i = 0; i < INSURERS_MAX; i++)
        sprintf(many + strlen(many), "%s{\"code\":\"i%d\",\"url\":\"http://h/%d\"}", i ? "," : "",
                i, i);
    strcat(many, "]");
    l = load_ok(many);
    assert_int_equal(l->n, INSURERS_MAX);
}

static int auth_in_clear(const char *url, const char *auth, char *host, size_t hostlen)
{
    insurer_t ins;

    memset(&ins, 0, sizeof(ins));
    strcpy(ins.url, url);
    strcpy(ins.auth_header, auth);
    host[0] = '\0';
    return insurers_auth_in_clear(&ins, host, hostlen);
}

/* An auth_header over http:// beyond this machine, or through a proxy, is said at start. */
static void test_auth_in_clear(void **state)
{
    static const char *const proxy_vars[] = { "http_proxy", "all_proxy", "ALL_PROXY",
                                              "no_proxy", "NO_PROXY", "HTTP_PROXY" };
    static const struct {
        const char *url, *auth;
        int         clear;
        const char *host;       /* as curl read it */
    } cases[] = {
        { "http://10.1.2.3:8080/q", "Authorization: Bearer x", AUTH_CLEAR_HOST, "10.1.2.3" },
        { "http://api.insurer.ru/q", "X-Api-Key: k", AUTH_CLEAR_HOST, "api.insurer.ru" },
        { "http://[2001:db8::1]/q", "X-Api-Key: k", AUTH_CLEAR_HOST, "[2001:db8::1]" },
        { "http://[::ffff:10.0.0.1]/q", "X-Api-Key: k", AUTH_CLEAR_HOST, "[::ffff:10.0.0.1]" },
        { "http://[fe80::1%25eth0]/q", "X-Api-Key: k", AUTH_CLEAR_HOST, "[fe80::1]" },
        /* in doubt, said: a trailing dot is another name to the resolver's search list */
        { "http://localhost./q", "X-Api-Key: k", AUTH_CLEAR_HOST, "localhost." },
        { "http://127.0.0.1:8090/q", "X-Api-Key: k", AUTH_SEALED, "127.0.0.1" },
        { "http://127.8.9.10/q", "X-Api-Key: k", AUTH_SEALED, "127.8.9.10" },
        { "http://2130706433/q", "X-Api-Key: k", AUTH_SEALED, "127.0.0.1" },   /* curl's reading */
        { "http://LOCALHOST:8090/q", "X-Api-Key: k", AUTH_SEALED, "LOCALHOST" },
        { "http://[::1]:8090/q", "X-Api-Key: k", AUTH_SEALED, "[::1]" },
        { "http://[::1%25lo]/q", "X-Api-Key: k", AUTH_SEALED, "[::1]" },
        { "http://[::ffff:127.0.0.1]/q", "X-Api-Key: k", AUTH_SEALED, "[::ffff:127.0.0.1]" },
        { "https://api.insurer.ru/q", "X-Api-Key: k", AUTH_SEALED, "" },       /* encrypted */
        { "http://api.insurer.ru/q", "", AUTH_SEALED, "" },                     /* nothing to read */
    };
    char host[64];
    (void)state;

    for (size_t i = 0; i < sizeof(proxy_vars) / sizeof(proxy_vars[0]); i++)
        unsetenv(proxy_vars[i]);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int clear = auth_in_clear(cases[i].url, cases[i].auth, host, sizeof(host));

        if (clear != cases[i].clear)
            fail_msg("%s with \"%s\": %d, expected %d", cases[i].url, cases[i].auth, clear,
                     cases[i].clear);
        assert_string_equal(host, cases[i].host);
    }

    /* loopback, but libcurl would go through a proxy: unless no_proxy lists the host */
    setenv("http_proxy", "http://proxy.corp:3128", 1);
    assert_int_equal(auth_in_clear("http://127.0.0.1:8090/q", "X-Api-Key: k", host,
                                   sizeof(host)), AUTH_CLEAR_PROXY);
    assert_int_equal(auth_in_clear("http://10.1.2.3/q", "X-Api-Key: k", host, sizeof(host)),
                     AUTH_CLEAR_HOST);
    setenv("no_proxy", "example.ru, 127.0.0.1,::1", 1);
    assert_int_equal(auth_in_clear("http://127.0.0.1:8090/q", "X-Api-Key: k", host,
                                   sizeof(host)), AUTH_SEALED);
    assert_int_equal(auth_in_clear("http://[::1]/q", "X-Api-Key: k", host, sizeof(host)),
                     AUTH_SEALED);
    assert_int_equal(auth_in_clear("http://localhost/q", "X-Api-Key: k", host, sizeof(host)),
                     AUTH_CLEAR_PROXY);
    setenv("no_proxy", "*", 1);
    assert_int_equal(auth_in_clear("http://localhost/q", "X-Api-Key: k", host, sizeof(host)),
                     AUTH_SEALED);
    unsetenv("no_proxy");
    unsetenv("http_proxy");
    /* HTTP_PROXY in capitals is not curl's for http:// (a CGI client could set it) */
    setenv("HTTP_PROXY", "http://proxy.corp:3128", 1);
    assert_int_equal(auth_in_clear("http://127.0.0.1/q", "X-Api-Key: k", host, sizeof(host)),
                     AUTH_SEALED);
    unsetenv("HTTP_PROXY");
    setenv("ALL_PROXY", "socks5://proxy.corp:1080", 1);
    assert_int_equal(auth_in_clear("http://127.0.0.1/q", "X-Api-Key: k", host, sizeof(host)),
                     AUTH_CLEAR_PROXY);
    unsetenv("ALL_PROXY");
}

/* The file shipped in conf/ (t/31 runs the tests from the repository root). */
static void test_shipped_file(void **state)
{
    insurer_list_t list;
    char err[512];
    (void)state;
    if (access("conf/insurers.json", R_OK) != 0)
        skip();
    if (insurers_load("conf/insurers.json", 60000, &list, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_int_equal(list.n, 5);
    const char *codes[] = { "alfa", "ingos", "reso", "vsk", "rosgosstrakh" };
    for (int i = 0; i < 5; i++) {
        const insurer_t *ins = insurers_find(&list, codes[i]);
        assert_non_null(ins);
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:8090/insurers/%s/quote", codes[i]);
        assert_string_equal(ins->url, url);
        assert_string_not_equal(ins->name, ins->code);   /* a real (Russian) name */
    }
}

static void test_file_errors(void **state)
{
    insurer_list_t list;
    char err[512], expected[600];
    (void)state;

    unlink(path);
    assert_int_equal(insurers_load(path, 60000, &list, err, sizeof(err)), -1);
    snprintf(expected, sizeof(expected), "%s: No such file or directory", path);
    assert_string_equal(err, expected);

    expect_error("", "malformed JSON: parse error: premature EOF");
    expect_error("[{\"code\":\"alfa\",}]",
                 "malformed JSON: parse error: invalid object key (must be a string)");
    expect_error("{\"insurers\":[]}", "must be a JSON array of insurers");
    expect_error("[]", "must list 1..64 insurers, has 0");
    /* an escaped NUL would cut the string short where yajl's tree hands it over */
    expect_error("[{\"code\":\"a\\u0000x\",\"url\":\"http://h/\"}]",
                 "not a JSON text (contains a NUL byte, raw or as \\u0000)");
    expect_error("[{\"code\":\"a\",\"url\":\"http://h/\",\"name\":\"\\\\\\u0000\"}]",
                 "not a JSON text (contains a NUL byte, raw or as \\u0000)");
    /* an escaped backslash followed by the letters u0000 is no NUL */
    assert_string_equal(load_ok("[{\"code\":\"a\",\"url\":\"http://h/\",\"name\":\"x\\\\u0000\"}]")
                            ->items[0].name, "x\\u0000");

    char many[65 * 40 + 8] = "[";
    for (int i = 0; i < INSURERS_MAX + 1; i++)
        sprintf(many + strlen(many), "%s{\"code\":\"i%d\",\"url\":\"http://h/\"}", i ? "," : "", i);
    strcat(many, "]");
    expect_error(many, "must list 1..64 insurers, has 65");
}

static void test_entry_errors(void **state)
{
    (void)state;
    expect_error("[\"alfa\"]", "/0: must be an object");
    expect_error("[" "{\"code\":\"a\",\"url\":\"http://h/a\"}," "[]" "]", "/1: must be an object");
    expect_error("[{\"url\":\"http://h/\"}]", "/0: \"code\" is missing");
    expect_error("[{\"code\":\"alfa\"}]", "/0: \"url\" is missing");
    expect_error(ONE(",\"timeout\":5"),
                 "/0: unknown member \"timeout\" (code, name, url, timeout_ms, "
                 "connect_timeout_ms, auth_header)");

    /* code */
    const char *bad_codes[] = { "\"\"", "\"Alfa\"", "\"al fa\"", "\"alfa.ru\"",
                                "\"abcdefghijabcdefghijabcdefghijabc\"" };
    for (size_t i = 0; i < sizeof(bad_codes) / sizeof(bad_codes[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "[{\"code\":%s,\"url\":\"http://h/\"}]", bad_codes[i]);
        expect_error(text, "/0/code: must match [a-z0-9_-]{1,32}");
    }
    expect_error("[{\"code\":7,\"url\":\"http://h/\"}]", "/0/code: must be a string");
    expect_error("[{\"code\":\"a\",\"url\":\"http://h/a\"},{\"code\":\"b\",\"url\":\"http://h/b\"},"
                 "{\"code\":\"a\",\"url\":\"http://h/c\"}]", "/2/code: \"a\" is also at /0");

    /* url */
    const char *bad_urls[] = { "\"ftp://h/quote\"", "\"127.0.0.1:8090/q\"", "\"http://\"",
                               "\"https://\"", "\"http://h/a b\"", "\"HTTP://h/\"",
                               "\"http:///quote\"", "\"https:///\"", "\"http://h/\\u0001\"",
                               "\"http://h/\\u00e9\"", "\"http://[::1/q\"",
                               "\"http://h:99999/q\"",
                               /* credentials in the URL would be logged with it */
                               "\"https://user:secret@h/q\"", "\"http://user@h/q\"" };
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "[{\"code\":\"a\",\"url\":%s}]", bad_urls[i]);
        expect_error(text, "/0/url: must be an http:// or https:// URL of at most 511 bytes");
    }
    char longurl[700] = "[{\"code\":\"a\",\"url\":\"http://h/";
    memset(longurl + strlen(longurl), 'x', 520);
    strcat(longurl, "\"}]");
    expect_error(longurl, "/0/url: must be an http:// or https:// URL of at most 511 bytes");
    expect_error("[{\"code\":\"a\",\"url\":null}]", "/0/url: must be a string");
    assert_string_equal(load_ok("[{\"code\":\"a\",\"url\":\"http://a\"}]")->items[0].url, "http://a");
    assert_string_equal(load_ok("[{\"code\":\"a\",\"url\":\"http://[::1]:8090/q?x=1\"}]")->items[0].url,
                        "http://[::1]:8090/q?x=1");

    /* a member given twice: yajl keeps both, and neither may silently win */
    expect_error(ONE(",\"url\":\"http:///x\""), "/0/url: given twice");
    expect_error(ONE(",\"timeout_ms\":5,\"timeout_ms\":600"), "/0/timeout_ms: given twice");
    expect_error("[{\"code\":\"a\",\"code\":\"b\",\"url\":\"http://h/\"}]", "/0/code: given twice");

    /* timeout_ms */
    const char *bad_timeouts[] = { "0", "-1", "600001", "1.5", "\"100\"", "true", "1e3" };
    for (size_t i = 0; i < sizeof(bad_timeouts) / sizeof(bad_timeouts[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), ONE(",\"timeout_ms\":%s"), bad_timeouts[i]);
        expect_error(text, "/0/timeout_ms: must be an integer 1..600000");
        snprintf(text, sizeof(text), ONE(",\"connect_timeout_ms\":%s"), bad_timeouts[i]);
        expect_error(text, "/0/connect_timeout_ms: must be an integer 1..600000");
    }

    /* auth_header */
    const char *bad_auth[] = { "\"Authorization\"", "\"Authorization:Bearer x\"",
                               "\"Authorization: \"", "\": x\"", "\"Bad Name: x\"",
                               "\"X-Key: a\\r\\nX-Evil: b\"", "\"X-Key: a\\nb\"" };
    for (size_t i = 0; i < sizeof(bad_auth) / sizeof(bad_auth[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), ONE(",\"auth_header\":%s"), bad_auth[i]);
        expect_error(text, "/0/auth_header: must be \"Name: value\" (at most 255 bytes)");
    }
    /* a header of the request's own: curl would send it in place of its own */
    const char *own[] = { "Content-Length: 5", "transfer-encoding: chunked", "Host: evil",
                          "Traceparent: 00-x", "Expect: 100-continue" };
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
        char text[256], want[128];
        snprintf(text, sizeof(text), ONE(",\"auth_header\":\"%s\""), own[i]);
        snprintf(want, sizeof(want), "/0/auth_header: %.*s is the request's own header, not an "
                 "authorization", (int)strcspn(own[i], ":"), own[i]);
        expect_error(text, want);
    }
    assert_string_equal(load_ok(ONE(",\"auth_header\":\"X-Api-Key: k\""))->items[0].auth_header,
                        "X-Api-Key: k");

    /* name */
    expect_error(ONE(",\"name\":\"\""), "/0/name: must be 1..127 bytes");
    expect_error(ONE(",\"name\":1"), "/0/name: must be a string");
    char longname[300] = "[{\"code\":\"a\",\"url\":\"http://h/\",\"name\":\"";
    memset(longname + strlen(longname), 'n', 128);
    strcat(longname, "\"}]");
    expect_error(longname, "/0/name: must be 1..127 bytes");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_valid, remove_file),
        cmocka_unit_test(test_shipped_file),
        cmocka_unit_test(test_auth_in_clear),
        cmocka_unit_test_teardown(test_file_errors, remove_file),
        cmocka_unit_test_teardown(test_entry_errors, remove_file),
    };
    return cmocka_run_group_tests_name("worker insurer list", tests, make_path, NULL);
}
