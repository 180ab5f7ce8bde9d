/*
 * Unit tests of the application validator and canonicalizer (ngx_osago_module/osago_application.c).
 *
 * Built with ASan and UBSan by `make build/san/test_osago_application`, run by t/30-app-validate.t.
 * Every call goes through run(), which copies the body into a heap block of exactly its length (so
 * a read past len is an ASan report) and checks the invariants that hold for every input: an error
 * has a known type, a detail and a pointer; a canonical form fits the documented bounds and
 * canonicalizes to itself.
 *
 * "Today" is 2025-06-15 unless a test says otherwise.
 */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "osago_application.h"


/* Cyrillic capitals, UTF-8 (kept as separate literals: a hex escape would swallow a digit). */
#define CY_A  "\xD0\x90"
#define CY_B  "\xD0\x92"
#define CY_E  "\xD0\x95"
#define CY_K  "\xD0\x9A"
#define CY_M  "\xD0\x9C"
#define CY_H  "\xD0\x9D"
#define CY_O  "\xD0\x9E"
#define CY_P  "\xD0\xA0"
#define CY_C  "\xD0\xA1"
#define CY_T  "\xD0\xA2"
#define CY_Y  "\xD0\xA3"
#define CY_X  "\xD0\xA5"

/* A valid application with every member, and its canonical form. */
#define VEHICLE \
    "\"vehicle\":{\"category\":\"B\",\"power_hp\":150,\"year\":2015," \
    "\"vin\":\"XTA21099043456789\",\"plate\":\"A123BC77\"}"
#define DRIVER \
    "{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}"
#define DRIVERS  "\"drivers\":[" DRIVER "]"

static const char BASE[] =
    "{" VEHICLE ","
    "\"owner\":{\"region_code\":\"77\",\"birth_date\":\"1980-03-10\"},"
    DRIVERS ","
    "\"kbm_class\":\"3\",\"period_months\":12,\"start_date\":\"2025-06-20\"}";

static const char BASE_CANON[] =
    "{\"drivers\":[{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}],"
    "\"kbm_class\":\"3\",\"owner\":{\"birth_date\":\"1980-03-10\",\"region_code\":\"77\"},"
    "\"period_months\":12,\"start_date\":\"2025-06-20\",\"vehicle\":{\"category\":\"B\","
    "\"plate\":\"" CY_A "123" CY_B CY_C "77\",\"power_hp\":150,\"vin\":\"XTA21099043456789\","
    "\"year\":2015}}";

/* The smallest valid application: unlimited drivers, vin only, no kbm_class, lower bounds. */
static const char MINIMAL[] =
    "{\"vehicle\":{\"category\":\"A\",\"power_hp\":1,\"year\":1950,\"vin\":\"00000000000000000\"},"
    "\"owner\":{\"region_code\":\"01\",\"birth_date\":\"2007-06-15\"},"
    "\"unlimited_drivers\":true,\"period_months\":3,\"start_date\":\"2025-06-15\"}";

static const char MINIMAL_CANON[] =
    "{\"owner\":{\"birth_date\":\"2007-06-15\",\"region_code\":\"01\"},\"period_months\":3,"
    "\"start_date\":\"2025-06-15\",\"unlimited_drivers\":true,\"vehicle\":{\"category\":\"A\","
    "\"power_hp\":1,\"vin\":\"00000000000000000\",\"year\":1950}}";


/* ---- helpers ------------------------------------------------------------------------------ */

/* Days since 1970-01-01, counted the slow way (independent of the code under test). */
static int
days_of(int y, int m, int d)
{
    static const int  mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int               days = 0, i;

    for (i = 1970; i < y; i++) {
        days += (i % 4 == 0 && (i % 100 != 0 || i % 400 == 0)) ? 366 : 365;
    }
    for (i = 1; i < m; i++) {
        days += mdays[i - 1];
        if (i == 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))) {
            days++;
        }
    }
    return days + d - 1;
}

static osago_app_limits_t
limits(size_t depth, int y, int m, int d)
{
    osago_app_limits_t  lim;

    lim.max_depth = depth;
    lim.today_days = days_of(y, m, d);
    lim.any_start_date = 0;
    return lim;
}

static osago_app_limits_t  LIM;     /* max_depth 8, today 2025-06-15; set in main() */

static const char *const TYPES[] = {
    "malformed-json", "invalid-utf8", "too-deep", "unknown-field", "duplicate-field",
    "missing-field", "invalid-field", "empty-body", "internal"
};

static long run(const void *body, size_t len, const osago_app_limits_t *lim,
                unsigned char *out, size_t cap, osago_app_error_t *err);

static void
check_error_shape(const osago_app_error_t *err)
{
    size_t  i;
    int     known = 0;

    assert_non_null(err->type);
    for (i = 0; i < sizeof(TYPES) / sizeof(TYPES[0]); i++) {
        known |= strcmp(err->type, TYPES[i]) == 0;
    }
    if (!known) {
        fail_msg("unknown error type \"%s\"", err->type);
    }
    assert_true(memchr(err->pointer, '\0', sizeof(err->pointer)) != NULL);
    assert_true(memchr(err->detail, '\0', sizeof(err->detail)) != NULL);
    assert_true(strlen(err->detail) > 0);
    assert_null(strchr(err->detail, '\n'));
    assert_true(err->pointer[0] == '\0' || err->pointer[0] == '/');
    for (i = 0; err->pointer[i] != '\0'; i++) {
        assert_true((unsigned char) err->pointer[i] >= 0x20);
        if (err->pointer[i] == '~') {
            assert_true(err->pointer[i + 1] == '0' || err->pointer[i + 1] == '1');
        }
    }
}

/* The body is copied into a heap block of exactly len bytes: ASan catches any read past it. */
static long
run(const void *body, size_t len, const osago_app_limits_t *lim,
    unsigned char *out, size_t cap, osago_app_error_t *err)
{
    unsigned char      *copy = malloc(len ? len : 1);
    unsigned char       again[OSAGO_APP_CANONICAL_MAX];
    osago_app_error_t   err2;
    long                r, r2;

    assert_non_null(copy);
    if (len) {
        memcpy(copy, body, len);
    }
    memset(err, 0xA5, sizeof(*err));

    r = osago_app_canonicalize(copy, len, lim, out, cap, err);
    free(copy);

    if (r < 0) {
        assert_int_equal(r, -1);
        check_error_shape(err);
        return r;
    }

    assert_true(r > 0);
    assert_true((size_t) r <= cap);
    assert_true((size_t) r <= 2 * len + 512);
    assert_true(r <= OSAGO_APP_CANONICAL_MAX);

    /* the canonical form is a fixed point */
    copy = malloc((size_t) r);
    assert_non_null(copy);
    memcpy(copy, out, (size_t) r);
    r2 = osago_app_canonicalize(copy, (size_t) r, lim, again, sizeof(again), &err2);
    free(copy);
    if (r2 != r || memcmp(again, out, (size_t) r) != 0) {
        fail_msg("canonical form is not a fixed point: %.*s", (int) r, (const char *) out);
    }

    return r;
}

static void
ok_at(int line, const osago_app_limits_t *lim, const char *body, size_t len, const char *expected)
{
    unsigned char      out[4096];
    osago_app_error_t  err;
    long               r;

    r = run(body, len, lim, out, sizeof(out), &err);
    if (r < 0) {
        fail_msg("line %d: expected success, got %s at \"%s\": %s\n  body: %.300s",
                 line, err.type, err.pointer, err.detail, body);
    }
    if (expected != NULL
        && ((size_t) r != strlen(expected) || memcmp(out, expected, (size_t) r) != 0))
    {
        fail_msg("line %d: canonical form\n  got:      %.*s\n  expected: %s",
                 line, (int) r, (const char *) out, expected);
    }
}

static void
err_at(int line, const osago_app_limits_t *lim, const char *body, size_t len,
       const char *type, const char *pointer)
{
    unsigned char      out[4096];
    osago_app_error_t  err;
    long               r;

    r = run(body, len, lim, out, sizeof(out), &err);
    if (r >= 0) {
        fail_msg("line %d: expected %s at \"%s\", got success: %.*s\n  body: %.300s",
                 line, type, pointer, (int) r, (const char *) out, body);
    }
    if (strcmp(err.type, type) != 0 || (pointer != NULL && strcmp(err.pointer, pointer) != 0)) {
        fail_msg("line %d: expected %s at \"%s\", got %s at \"%s\": %s\n  body: %.300s",
                 line, type, pointer ? pointer : "*", err.type, err.pointer, err.detail, body);
    }
}

#define OK(body, canon)             ok_at(__LINE__, &LIM, body, strlen(body), canon)
#define OK_LIM(lim, body)           ok_at(__LINE__, &(lim), body, strlen(body), NULL)
#define ERR(body, type, ptr)        err_at(__LINE__, &LIM, body, strlen(body), type, ptr)
#define ERR_LEN(body, len, type, ptr) err_at(__LINE__, &LIM, body, len, type, ptr)
#define ERR_LIM(lim, body, type, ptr) err_at(__LINE__, &(lim), body, strlen(body), type, ptr)

/* BASE (or another document) with the first occurrence of `from` replaced by `to`. */
static const char *
subst(const char *doc, const char *from, const char *to)
{
    static char   bufs[8][8192];
    static int    next;
    char         *buf = bufs[next++ % 8];
    const char   *at = strstr(doc, from);

    if (at == NULL) {
        fail_msg("test bug: \"%s\" is not in the document", from);
    }
    snprintf(buf, sizeof(bufs[0]), "%.*s%s%s", (int) (at - doc), doc, to, at + strlen(from));
    return buf;
}

#define WITH(from, to)   subst(BASE, from, to)
#define MIN_WITH(f, t)   subst(MINIMAL, f, t)

static long
canon(const char *body, unsigned char *out)
{
    osago_app_error_t  err;
    long               r = run(body, strlen(body), &LIM, out, 4096, &err);

    if (r < 0) {
        fail_msg("expected success, got %s at \"%s\": %s\n  body: %s",
                 err.type, err.pointer, err.detail, body);
    }
    return r;
}

#define SAME(a, b)  same_at(__LINE__, a, b, 1)
#define DIFF(a, b)  same_at(__LINE__, a, b, 0)

static void
same_at(int line, const char *a, const char *b, int same)
{
    unsigned char  oa[4096], ob[4096];
    long           ra = canon(a, oa), rb = canon(b, ob);
    int            eq = ra == rb && memcmp(oa, ob, (size_t) ra) == 0;

    if (eq != same) {
        fail_msg("line %d: canonical forms should be %s\n  a: %.*s\n  b: %.*s", line,
                 same ? "equal" : "different", (int) ra, (const char *) oa, (int) rb,
                 (const char *) ob);
    }
}

static void
detail_is(const char *body, const char *expected)
{
    unsigned char      out[4096];
    osago_app_error_t  err;

    assert_int_equal(run(body, strlen(body), &LIM, out, sizeof(out), &err), -1);
    assert_string_equal(err.detail, expected);
}


/* ---- valid documents ------------------------------------------------------------------------ */

static void
test_valid_base(void **state)
{
    (void) state;
    OK(BASE, BASE_CANON);
}

static void
test_valid_minimal(void **state)
{
    (void) state;
    OK(MINIMAL, MINIMAL_CANON);
}

static void
test_valid_maximal(void **state)
{
    static const char  body[] =
        "{\"vehicle\":{\"category\":\"D1E\",\"power_hp\":1500,\"year\":2026,"
        "\"vin\":\"ZZZZZZZZZZZZZZZZZ\",\"plate\":\"X999XX799\"},"
        "\"owner\":{\"region_code\":\"99\",\"birth_date\":\"1904-06-16\"},"
        "\"drivers\":["
        "{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2006-01-01\"},"
        "{\"birth_date\":\"2007-06-15\",\"license_issued_date\":\"2025-06-15\"},"
        "{\"birth_date\":\"1904-06-16\",\"license_issued_date\":\"1950-02-28\"},"
        "{\"birth_date\":\"2004-02-29\",\"license_issued_date\":\"2024-02-29\"},"
        "{\"birth_date\":\"1970-12-31\",\"license_issued_date\":\"1999-12-31\"}],"
        "\"kbm_class\":13,\"period_months\":12,\"start_date\":\"2025-08-14\"}";
    static const char  expected[] =
        "{\"drivers\":["
        "{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2006-01-01\"},"
        "{\"birth_date\":\"2007-06-15\",\"license_issued_date\":\"2025-06-15\"},"
        "{\"birth_date\":\"1904-06-16\",\"license_issued_date\":\"1950-02-28\"},"
        "{\"birth_date\":\"2004-02-29\",\"license_issued_date\":\"2024-02-29\"},"
        "{\"birth_date\":\"1970-12-31\",\"license_issued_date\":\"1999-12-31\"}],"
        "\"kbm_class\":\"13\",\"owner\":{\"birth_date\":\"1904-06-16\",\"region_code\":\"99\"},"
        "\"period_months\":12,\"start_date\":\"2025-08-14\",\"vehicle\":{\"category\":\"D1E\","
        "\"plate\":\"" CY_X "999" CY_X CY_X "799\",\"power_hp\":1500,"
        "\"vin\":\"ZZZZZZZZZZZZZZZZZ\",\"year\":2026}}";

    (void) state;
    OK(body, expected);
    assert_true(strlen(expected) < OSAGO_APP_CANONICAL_MAX);
}

static void
test_valid_vin_or_plate(void **state)
{
    (void) state;
    /* plate only */
    OK(WITH(",\"vin\":\"XTA21099043456789\"", ""), NULL);
    /* vin only */
    OK(WITH(",\"plate\":\"A123BC77\"", ""), NULL);
    /* no kbm_class */
    OK(WITH("\"kbm_class\":\"3\",", ""), NULL);
}

static void
test_valid_categories(void **state)
{
    static const char *const  cats[] = {
        "A", "M", "B", "BE", "C", "C1", "CE", "C1E", "D", "D1", "DE", "D1E", "Tm", "Tb"
    };
    static const char *const  bad[] = {
        "\"b\"", "\"TM\"", "\"tb\"", "\"BE \"", "\" B\"", "\"\"", "\"E\"", "\"C1 E\"", "\"B1\""
    };
    char    from[64];
    size_t  i;

    (void) state;
    for (i = 0; i < sizeof(cats) / sizeof(cats[0]); i++) {
        snprintf(from, sizeof(from), "\"category\":\"%s\"", cats[i]);
        OK(WITH("\"category\":\"B\"", from), NULL);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(from, sizeof(from), "\"category\":%s", bad[i]);
        ERR(WITH("\"category\":\"B\"", from), "invalid-field", "/vehicle/category");
    }
}


/* ---- canonical form ----------------------------------------------------------------------- */

static void
test_canonical_equal(void **state)
{
    (void) state;

    /* whitespace and member order at every level */
    SAME(BASE,
         " \r\n\t{ \"start_date\" : \"2025-06-20\" ,\n \"period_months\":12,\"kbm_class\":\"3\","
         "\"drivers\" : [ { \"license_issued_date\":\"2010-05-05\" , \"birth_date\":\"1990-01-01\" } ],"
         "\"owner\":{\"birth_date\":\"1980-03-10\",\"region_code\":\"77\"},"
         "\"vehicle\":{\"plate\":\"A123BC77\",\"year\":2015,\"vin\":\"XTA21099043456789\","
         "\"power_hp\":150,\"category\":\"B\"}\n}\n\t ");

    /* plate alphabet: Latin, Cyrillic, mixed */
    SAME(BASE, WITH("A123BC77", CY_A "123" CY_B CY_C "77"));
    SAME(BASE, WITH("A123BC77", "A123" CY_B "C77"));
    SAME(WITH("A123BC77", "K001MH750"), WITH("A123BC77", CY_K "001" CY_M CY_H "750"));
    SAME(WITH("A123BC77", "O000PC199"), WITH("A123BC77", CY_O "000" CY_P CY_C "199"));
    SAME(WITH("A123BC77", "T555YX50"), WITH("A123BC77", CY_T "555" CY_Y CY_X "50"));
    SAME(WITH("A123BC77", "E001KM50"), WITH("A123BC77", CY_E "001" CY_K CY_M "50"));
    SAME(WITH("A123BC77", "H001HH50"), WITH("A123BC77", CY_H "001" CY_H CY_H "50"));

    /* kbm_class as integer or string */
    SAME(BASE, WITH("\"kbm_class\":\"3\"", "\"kbm_class\":3"));
    SAME(WITH("\"kbm_class\":\"3\"", "\"kbm_class\":\"0\""),
         WITH("\"kbm_class\":\"3\"", "\"kbm_class\":-0"));
    SAME(WITH("\"kbm_class\":\"3\"", "\"kbm_class\":\"13\""),
         WITH("\"kbm_class\":\"3\"", "\"kbm_class\":13"));

    /* string escapes that decode to the same characters */
    SAME(BASE, WITH("\"category\":\"B\"", "\"category\":\"\\u0042\""));
    SAME(BASE, WITH("\"region_code\":\"77\"", "\"region_code\":\"\\u00377\""));
    SAME(BASE, WITH("\"vehicle\"", "\"\\u0076ehicle\""));
    SAME(BASE, WITH("A123BC77", "\\u0041123\\u0412C77"));
}

static void
test_canonical_different(void **state)
{
    (void) state;
    DIFF(BASE, WITH("\"power_hp\":150", "\"power_hp\":151"));
    DIFF(BASE, WITH("\"year\":2015", "\"year\":2016"));
    DIFF(BASE, WITH("\"category\":\"B\"", "\"category\":\"BE\""));
    DIFF(BASE, WITH("A123BC77", "A123BC777"));
    DIFF(BASE, WITH("A123BC77", "A124BC77"));
    DIFF(BASE, WITH("A123BC77", "B123AC77"));
    DIFF(BASE, WITH("XTA21099043456789", "XTA21099043456780"));
    DIFF(BASE, WITH(",\"vin\":\"XTA21099043456789\"", ""));
    DIFF(BASE, WITH(",\"plate\":\"A123BC77\"", ""));
    DIFF(BASE, WITH("\"region_code\":\"77\"", "\"region_code\":\"78\""));
    DIFF(BASE, WITH("1980-03-10", "1980-03-11"));
    DIFF(BASE, WITH("1990-01-01", "1990-01-02"));
    DIFF(BASE, WITH("2010-05-05", "2010-05-06"));
    DIFF(BASE, WITH("\"kbm_class\":\"3\",", ""));
    DIFF(BASE, WITH("\"kbm_class\":\"3\"", "\"kbm_class\":\"M\""));
    DIFF(BASE, WITH("\"kbm_class\":\"3\"", "\"kbm_class\":\"13\""));
    DIFF(BASE, WITH("\"period_months\":12", "\"period_months\":6"));
    DIFF(BASE, WITH("2025-06-20", "2025-06-21"));
    DIFF(BASE, WITH("\"drivers\":[{\"birth_date\":\"1990-01-01\","
                    "\"license_issued_date\":\"2010-05-05\"}]", "\"unlimited_drivers\":true"));
    /* two drivers: their order is kept, so swapping them is a different payload */
    DIFF(WITH("}],", "},{\"birth_date\":\"1985-01-01\",\"license_issued_date\":\"2004-01-01\"}],"),
         WITH("[{", "[{\"birth_date\":\"1985-01-01\",\"license_issued_date\":\"2004-01-01\"},{"));
    /* one driver vs the same driver twice */
    DIFF(BASE, WITH("}],", "},{\"birth_date\":\"1990-01-01\","
                    "\"license_issued_date\":\"2010-05-05\"}],"));
}


/* ---- error types ---------------------------------------------------------------------------- */

static void
test_empty_body(void **state)
{
    unsigned char      out[64];
    osago_app_error_t  err;

    (void) state;
    ERR_LEN("", 0, "empty-body", "");
    ERR(" ", "empty-body", "");
    ERR(" \t\r\n  \n", "empty-body", "");
    assert_int_equal(osago_app_canonicalize(NULL, 0, &LIM, out, sizeof(out), &err), -1);
    assert_string_equal(err.type, "empty-body");
    /* a form feed or a NUL is not JSON whitespace */
    ERR("\f", "malformed-json", "");
    ERR_LEN("\0", 1, "malformed-json", "");
}

static void
test_malformed(void **state)
{
    static const char *const  bodies[] = {
        "{", "}", "{\"vehicle\":", "{\"vehicle\"", "{\"vehicle\":{}", "{}}", "{} x", "{}{}",
        "{},{}", "{\"a\":1,}", "{'a':1}", "{a:1}", "{\"a\":01}", "{\"a\":+1}", "{\"a\":.5}",
        "{\"a\":1.}", "{\"a\":1e}", "{\"a\":-}", "{\"a\":NaN}", "{\"a\":Infinity}",
        "{\"a\":tru}", "{\"a\":nul}", "/*c*/{}", "{}//c", "{} /* c */", "\xEF\xBB\xBF{}",
        "{\"a\" 1}", "{\"a\":1 \"b\":2}", "[1,]", "{\"a\":\"\\x\"}", "{\"a\":\"\\u00zz\"}",
        "{\"a\":\"abc}", "\"abc", "{\"a\":[1,2}", "{\"a\":{]}", "nope", ",", ":",
        "{\"a\":1}}"
    };
    size_t  i;

    (void) state;
    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        ERR(bodies[i], "malformed-json", "");
    }

    /* trailing garbage after a valid application */
    ERR(subst(BASE, "\"2025-06-20\"}", "\"2025-06-20\"} x"), "malformed-json", "");
    ERR(subst(BASE, "\"2025-06-20\"}", "\"2025-06-20\"}}"), "malformed-json", "");
    ERR(subst(BASE, "\"2025-06-20\"}", "\"2025-06-20\"}{}"), "malformed-json", "");
    /* a raw NUL after the object, or between tokens */
    {
        char    buf[sizeof(BASE) + 1];
        size_t  n = strlen(BASE);

        memcpy(buf, BASE, n);
        buf[n] = '\0';
        ERR_LEN(buf, n + 1, "malformed-json", "");
        ERR_LEN("{\"vehicle\":\0{}}", 15, "malformed-json", "");
    }
    /* truncated at every byte: never a success, never anything but malformed-json */
    for (i = 1; i < strlen(BASE); i++) {
        ERR_LEN(BASE, i, "malformed-json", "");
    }

    /* a body that is not JSON is reported as such even after a schema error */
    ERR("{\"colour\":\"red\",", "malformed-json", "");
    ERR("{\"vehicle\":{\"power_hp\":0}", "malformed-json", "");
    ERR("{\"vehicle\":{\"power_hp\":0}} trailing", "malformed-json", "");

    detail_is("{} x", "the body is not valid JSON (near byte 4)");
    detail_is("{\"vehicle\":{", "the body is not valid JSON: it ends too early");
}

static void
test_not_an_object(void **state)
{
    (void) state;
    ERR("[]", "invalid-field", "");
    ERR("[{}]", "invalid-field", "");
    ERR("5", "invalid-field", "");
    ERR("-1.5e3", "invalid-field", "");
    ERR("\"application\"", "invalid-field", "");
    ERR("null", "invalid-field", "");
    ERR("true", "invalid-field", "");
    ERR("false", "invalid-field", "");
    detail_is("[]", "the body must be a JSON object");
    ERR("{}", "missing-field", "/drivers");
}

static void
test_invalid_utf8(void **state)
{
    (void) state;
    /* bytes yajl refuses: a stray continuation, 0xFF, a truncated sequence, 0xF8 lead */
    ERR(WITH("A123BC77", "A123BC\xFF" "77"), "invalid-utf8", "/vehicle/plate");
    ERR(WITH("A123BC77", "A123BC\x80" "77"), "invalid-utf8", "/vehicle/plate");
    ERR(WITH("A123BC77", "A123BC\xD0"), "invalid-utf8", "/vehicle/plate");
    ERR(WITH("A123BC77", "\xF8\x88\x80\x80\x80"), "invalid-utf8", "/vehicle/plate");
    /* forms yajl lets through and the validator refuses: overlong, surrogate, above U+10FFFF */
    ERR(WITH("A123BC77", "\xC0\xAF"), "invalid-utf8", "/vehicle/plate");
    ERR(WITH("A123BC77", "\xE0\x80\xAF"), "invalid-utf8", "/vehicle/plate");
    ERR(WITH("A123BC77", "\xED\xA0\x80"), "invalid-utf8", "/vehicle/plate");
    ERR(WITH("A123BC77", "\xF4\x90\x80\x80"), "invalid-utf8", "/vehicle/plate");
    ERR(WITH("A123BC77", "\\udc00"), "invalid-utf8", "/vehicle/plate");
    /* other positions: an array element, a member name, an unknown member's value */
    ERR(WITH("\"2010-05-05\"}]", "\"2010-05-05\"}, \"\xFF\"]"), "invalid-utf8", "/drivers/1");
    ERR(WITH("\"vehicle\":{", "\"vehicle\":{\"\xFF\":1,"), "invalid-utf8", "/vehicle");
    ERR(WITH("\"vehicle\":{", "\"vehicle\":{\"a\xC0\x80\":1,"), "invalid-utf8", "/vehicle");
    ERR(WITH("\"owner\":{", "\"owner\":{\"note\":\"\xFE\","), "invalid-utf8", "/owner/note");
    ERR("\"\xFF\"", "invalid-utf8", "");
    /* it wins over an earlier schema error */
    ERR(WITH("\"power_hp\":150", "\"power_hp\":0,\"x\":\"\xFF\""), "invalid-utf8", "/vehicle/x");
    /* valid multi-byte characters are fine where the schema allows them */
    OK(WITH("A123BC77", CY_A "123" CY_B CY_C "77"), BASE_CANON);
}

static void
test_control_characters(void **state)
{
    (void) state;
    /* a raw NUL byte inside a string */
    {
        static const char  nul[] = "{\"vehicle\":{\"plate\":\"A1\0\"}}";

        ERR_LEN(nul, sizeof(nul) - 1, "malformed-json", "/vehicle/plate");
    }
    {
        char    buf[sizeof(BASE)];
        char   *p;

        memcpy(buf, BASE, sizeof(BASE));
        p = strstr(buf, "A123BC77");
        p[3] = '\0';
        ERR_LEN(buf, sizeof(BASE) - 1, "malformed-json", "/vehicle/plate");
    }
    /* escaped */
    ERR(WITH("A123BC77", "A123BC77\\u0000"), "invalid-field", "/vehicle/plate");
    ERR(WITH("XTA21099043456789", "XTA2109904345678\\u001f"), "invalid-field", "/vehicle/vin");
    ERR(WITH("\"category\":\"B\"", "\"category\":\"B\\n\""), "invalid-field",
        "/vehicle/category");
    ERR(WITH("\"kbm_class\":\"3\"", "\"kbm_class\":\"\\u007f\""), "invalid-field", "/kbm_class");
    ERR(WITH("\"kbm_class\":\"3\"", "\"kbm_class\":\"\\u0085\""), "invalid-field", "/kbm_class");
    detail_is(WITH("A123BC77", "A123BC77\\u0000"), "plate must not contain control characters");
    /* raw controls are not JSON (RFC 8259), still located */
    ERR(WITH("1980-03-10", "1980-03-10\t"), "malformed-json", "/owner/birth_date");
    ERR(WITH("1980-03-10", "1980-03-10\n"), "malformed-json", "/owner/birth_date");
    ERR(WITH("\"2010-05-05\"}]", "\"2010-05-05\"}, \"\x01\"]"), "malformed-json", "/drivers/1");
    /* in a member name: the object is the offender */
    ERR(WITH("\"owner\":{", "\"owner\":{\"a\x01\":1,"), "malformed-json", "/owner");
}

static void
test_too_deep(void **state)
{
    enum { N = 10000 };
    static char         body[8 * N + 64];
    char                expected[192];
    size_t              i, n;
    osago_app_limits_t  deep = limits(100000, 2025, 6, 15);
    osago_app_limits_t  three = limits(3, 2025, 6, 15);
    osago_app_limits_t  two = limits(2, 2025, 6, 15);
    osago_app_limits_t  zero = limits(0, 2025, 6, 15);

    (void) state;

    /* 10,000 arrays: refused at the 9th, pointer to it */
    memset(body, '[', N);
    memset(body + N, ']', N);
    ERR_LEN(body, 2 * N, "too-deep", "/0/0/0/0/0/0/0/0");
    ERR_LEN(body, N, "too-deep", "/0/0/0/0/0/0/0/0");
    detail_is("[[[[[[[[[[]]]]]]]]]]", "objects and arrays are nested deeper than 8 levels");

    /* 10,000 objects */
    for (n = 0, i = 0; i < N; i++) {
        memcpy(body + n, "{\"a\":", 5);
        n += 5;
    }
    ERR_LEN(body, n, "too-deep", "/a/a/a/a/a/a/a/a");

    /* inside a known member: too-deep wins over the type error of category */
    n = (size_t) snprintf(body, sizeof(body), "{\"vehicle\":{\"category\":");
    memset(body + n, '[', N);
    n += N;
    snprintf(expected, sizeof(expected), "/vehicle/category");
    for (i = 0; i < 6; i++) {
        strcat(expected, "/0");
    }
    ERR_LEN(body, n, "too-deep", expected);

    /* with no practical limit, 10,000 levels are still handled (here: a top-level array) */
    memset(body, '[', N);
    memset(body + N, ']', N);
    ERR_LIM(deep, "[[[[]]]]", "invalid-field", "");
    err_at(__LINE__, &deep, body, 2 * N, "invalid-field", "");
    err_at(__LINE__, &deep, body, N, "malformed-json", "");

    /* the application itself nests 3 deep (top, drivers, a driver) */
    OK_LIM(three, BASE);
    ERR_LIM(two, BASE, "too-deep", "/drivers/0");
    OK_LIM(two, MINIMAL);
    ERR_LIM(zero, MINIMAL, "too-deep", "");
}

static void
test_garbage(void **state)
{
    enum { MIB = 1024 * 1024 };
    char               *big = malloc(MIB);
    unsigned char       out[4096];
    osago_app_error_t   err;
    uint32_t            x = 2463534242u;
    size_t              i, n;
    int                 round;

    (void) state;
    assert_non_null(big);

    /* 1 MiB of random bytes, a few seeds: always a clean error */
    for (round = 0; round < 4; round++) {
        for (i = 0; i < MIB; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            big[i] = (char) (x >> 24);
        }
        if (round == 1) {
            big[0] = '{';
        }
        if (round == 2) {
            memcpy(big, "{\"vehicle\":\"", 12);
        }
        assert_int_equal(run(big, MIB, &LIM, out, sizeof(out), &err), -1);
    }

    /* 1 MiB of one letter */
    memset(big, 'x', MIB);
    err_at(__LINE__, &LIM, big, MIB, "malformed-json", "");

    /* 1 MiB of whitespace */
    memset(big, ' ', MIB);
    err_at(__LINE__, &LIM, big, MIB, "empty-body", "");

    /* 1 MiB of '{' */
    memset(big, '{', MIB);
    err_at(__LINE__, &LIM, big, MIB, "malformed-json", "");

    /* 1 MiB of '[' */
    memset(big, '[', MIB);
    err_at(__LINE__, &LIM, big, MIB, "too-deep", NULL);

    /* 1 MiB of well-formed JSON in an unknown member */
    n = (size_t) snprintf(big, MIB, "{\"pad\":\"");
    memset(big + n, 'p', MIB - n - 2);
    memcpy(big + MIB - 2, "\"}", 2);
    err_at(__LINE__, &LIM, big, MIB, "unknown-field", "/pad");

    /* 1 MiB string as a plate */
    n = (size_t) snprintf(big, MIB, "{\"vehicle\":{\"plate\":\"");
    memset(big + n, 'A', MIB - n - 3);
    memcpy(big + MIB - 3, "\"}}", 3);
    err_at(__LINE__, &LIM, big, MIB, "invalid-field", "/vehicle/plate");

    /* 1 MiB of digits as power_hp */
    n = (size_t) snprintf(big, MIB, "{\"vehicle\":{\"power_hp\":");
    memset(big + n, '9', MIB - n - 2);
    memcpy(big + MIB - 2, "}}", 2);
    err_at(__LINE__, &LIM, big, MIB, "invalid-field", "/vehicle/power_hp");

    free(big);
}

static void
test_unknown_field(void **state)
{
    char  key[400], body[600];

    (void) state;
    ERR(WITH("\"kbm_class\"", "\"colour\":\"red\",\"kbm_class\""), "unknown-field", "/colour");
    ERR(WITH("\"category\"", "\"colour\":1,\"category\""), "unknown-field", "/vehicle/colour");
    ERR(WITH("\"region_code\"", "\"name\":null,\"region_code\""), "unknown-field", "/owner/name");
    ERR(WITH("\"license_issued_date\"", "\"name\":{},\"license_issued_date\""),
        "unknown-field", "/drivers/0/name");
    ERR(WITH("}],", "},{\"birth_date\":\"1985-01-01\",\"license_issued_date\":\"2004-01-01\","
             "\"x\":[]}],"), "unknown-field", "/drivers/1/x");
    /* names are case-sensitive and exact */
    ERR(WITH("\"vehicle\"", "\"Vehicle\""), "unknown-field", "/Vehicle");
    ERR(WITH("\"vehicle\"", "\"vehicle \""), "unknown-field", "/vehicle ");
    ERR(WITH("\"vehicle\"", "\"vehicl\""), "unknown-field", "/vehicl");
    ERR(WITH("\"vin\"", "\"VIN\""), "unknown-field", "/vehicle/VIN");
    /* a member of one object is unknown in another */
    ERR(WITH("\"category\"", "\"birth_date\":\"1980-03-10\",\"category\""), "unknown-field",
        "/vehicle/birth_date");
    ERR(WITH("\"kbm_class\"", "\"power_hp\":150,\"kbm_class\""), "unknown-field", "/power_hp");
    /* RFC 6901 escaping */
    ERR(WITH("\"kbm_class\"", "\"a/b~c\":1,\"kbm_class\""), "unknown-field", "/a~1b~0c");
    ERR(WITH("\"kbm_class\"", "\"\":1,\"kbm_class\""), "unknown-field", "/");
    ERR(WITH("\"kbm_class\"", "\"\\u0444\":1,\"kbm_class\""), "unknown-field", "/\xD1\x84");
    /* a name that cannot be shown (control character, too long): the object is named instead */
    ERR(WITH("\"kbm_class\"", "\"a\\u0000b\":1,\"kbm_class\""), "unknown-field", "");
    ERR(WITH("\"category\"", "\"\\tx\":1,\"category\""), "unknown-field", "/vehicle");
    memset(key, 'k', 300);
    key[300] = '\0';
    snprintf(body, sizeof(body), "{\"vehicle\":{\"%s\":1}}", key);
    ERR(body, "unknown-field", "/vehicle");
    key[150] = '\0';
    snprintf(body, sizeof(body), "{\"vehicle\":{\"%s\":1}}", key);
    {
        char  expected[200];

        snprintf(expected, sizeof(expected), "/vehicle/%.150s", key);
        ERR(body, "unknown-field", expected);
    }
    detail_is(WITH("\"category\"", "\"colour\":1,\"category\""),
              "unknown field: vehicle allows only category, plate, power_hp, vin and year");
    /* the first error in document order is reported */
    ERR(WITH("\"power_hp\":150", "\"power_hp\":0,\"x\":1"), "invalid-field",
        "/vehicle/power_hp");
}

static void
test_duplicate_field(void **state)
{
    (void) state;
    ERR(WITH("\"kbm_class\":\"3\"", "\"kbm_class\":\"3\",\"kbm_class\":\"3\""),
        "duplicate-field", "/kbm_class");
    ERR(WITH("\"period_months\":12", "\"period_months\":12,\"period_months\":6"),
        "duplicate-field", "/period_months");
    ERR(subst(BASE, "\"start_date\"", "\"vehicle\":{},\"start_date\""), "duplicate-field",
        "/vehicle");
    ERR(WITH("\"power_hp\":150", "\"power_hp\":150,\"power_hp\":150"), "duplicate-field",
        "/vehicle/power_hp");
    ERR(WITH("\"region_code\":\"77\"", "\"region_code\":\"77\",\"region_code\":\"77\""),
        "duplicate-field", "/owner/region_code");
    ERR(WITH("\"license_issued_date\":\"2010-05-05\"",
             "\"license_issued_date\":\"2010-05-05\",\"birth_date\":\"1990-01-01\""),
        "duplicate-field", "/drivers/0/birth_date");
    /* the same name spelled with an escape is the same name */
    ERR(WITH("\"kbm_class\":\"3\"", "\"kbm_class\":\"3\",\"kbm\\u005fclass\":\"3\""),
        "duplicate-field", "/kbm_class");
    detail_is(WITH("\"power_hp\":150", "\"power_hp\":150,\"power_hp\":150"),
              "power_hp is given more than once");
    /* drivers given twice */
    ERR(WITH("\"kbm_class\"", "\"drivers\":[],\"kbm_class\""), "duplicate-field", "/drivers");
}

static void
test_missing_field(void **state)
{
    (void) state;
    ERR(WITH("\"drivers\":[{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}],",
             ""), "missing-field", "/drivers");
    ERR(WITH("\"owner\":{\"region_code\":\"77\",\"birth_date\":\"1980-03-10\"},", ""),
        "missing-field", "/owner");
    ERR(WITH(",\"period_months\":12", ""), "missing-field", "/period_months");
    ERR(WITH(",\"start_date\":\"2025-06-20\"", ""), "missing-field", "/start_date");
    ERR(subst(BASE, "\"vehicle\":{\"category\":\"B\",\"power_hp\":150,\"year\":2015,"
              "\"vin\":\"XTA21099043456789\",\"plate\":\"A123BC77\"},", ""),
        "missing-field", "/vehicle");
    ERR(WITH("\"category\":\"B\",", ""), "missing-field", "/vehicle/category");
    ERR(WITH("\"power_hp\":150,", ""), "missing-field", "/vehicle/power_hp");
    ERR(WITH("\"year\":2015,", ""), "missing-field", "/vehicle/year");
    ERR(WITH(",\"vin\":\"XTA21099043456789\",\"plate\":\"A123BC77\"", ""), "missing-field",
        "/vehicle/vin");
    ERR(WITH("\"region_code\":\"77\",", ""), "missing-field", "/owner/region_code");
    ERR(WITH(",\"birth_date\":\"1980-03-10\"", ""), "missing-field", "/owner/birth_date");
    ERR(WITH("\"birth_date\":\"1990-01-01\",", ""), "missing-field", "/drivers/0/birth_date");
    ERR(WITH(",\"license_issued_date\":\"2010-05-05\"", ""), "missing-field",
        "/drivers/0/license_issued_date");
    ERR(WITH("}],", "},{\"birth_date\":\"1985-01-01\"}],"), "missing-field",
        "/drivers/1/license_issued_date");
    ERR(WITH("}],", "},{}],"), "missing-field", "/drivers/1/birth_date");
    ERR("{\"vehicle\":{}}", "missing-field", "/vehicle/category");
    ERR("{\"owner\":{}}", "missing-field", "/owner/birth_date");
    detail_is(WITH("\"power_hp\":150,", ""), "power_hp is required in vehicle");
    detail_is(WITH(",\"vin\":\"XTA21099043456789\",\"plate\":\"A123BC77\"", ""),
              "vehicle must have a vin, a plate or both");
}

static void
test_wrong_types(void **state)
{
    static const struct {
        const char  *from, *to, *pointer;
    } cases[] = {
        { VEHICLE, "\"vehicle\":[]", "/vehicle" },
        { VEHICLE, "\"vehicle\":\"B\"", "/vehicle" },
        { "\"owner\":{\"region_code\":\"77\",\"birth_date\":\"1980-03-10\"}", "\"owner\":\"x\"",
          "/owner" },
        { "\"owner\":{\"region_code\":\"77\",\"birth_date\":\"1980-03-10\"}", "\"owner\":null",
          "/owner" },
        { DRIVERS, "\"drivers\":{\"0\":" DRIVER "}", "/drivers" },
        { DRIVERS, "\"drivers\":" DRIVER, "/drivers" },
        { DRIVERS, "\"drivers\":true", "/drivers" },
        { "\"kbm_class\":\"3\"", "\"kbm_class\":null", "/kbm_class" },
        { "\"kbm_class\":\"3\"", "\"kbm_class\":true", "/kbm_class" },
        { "\"kbm_class\":\"3\"", "\"kbm_class\":[3]", "/kbm_class" },
        { "\"kbm_class\":\"3\"", "\"kbm_class\":3.0", "/kbm_class" },
        { "\"period_months\":12", "\"period_months\":\"12\"", "/period_months" },
        { "\"period_months\":12", "\"period_months\":null", "/period_months" },
        { "\"period_months\":12", "\"period_months\":[12]", "/period_months" },
        { "\"start_date\":\"2025-06-20\"", "\"start_date\":20250620", "/start_date" },
        { "\"start_date\":\"2025-06-20\"", "\"start_date\":{}", "/start_date" },
        { "\"category\":\"B\"", "\"category\":2", "/vehicle/category" },
        { "\"category\":\"B\"", "\"category\":[\"B\"]", "/vehicle/category" },
        { "\"power_hp\":150", "\"power_hp\":\"150\"", "/vehicle/power_hp" },
        { "\"power_hp\":150", "\"power_hp\":true", "/vehicle/power_hp" },
        { "\"power_hp\":150", "\"power_hp\":null", "/vehicle/power_hp" },
        { "\"power_hp\":150", "\"power_hp\":{}", "/vehicle/power_hp" },
        { "\"year\":2015", "\"year\":\"2015\"", "/vehicle/year" },
        { "\"vin\":\"XTA21099043456789\"", "\"vin\":12345678901234567", "/vehicle/vin" },
        { "\"plate\":\"A123BC77\"", "\"plate\":null", "/vehicle/plate" },
        { "\"region_code\":\"77\"", "\"region_code\":77", "/owner/region_code" },
        { "\"birth_date\":\"1980-03-10\"", "\"birth_date\":false", "/owner/birth_date" },
        { "[{\"birth_date\":\"1990-01-01\"", "[{\"birth_date\":19900101", "/drivers/0/birth_date" },
        { "\"license_issued_date\":\"2010-05-05\"", "\"license_issued_date\":[]",
          "/drivers/0/license_issued_date" },
        { "[{\"birth_date\"", "[1,{\"birth_date\"", "/drivers/0" },
        { "}],", "},[]],", "/drivers/1" },
        { "}],", "},null],", "/drivers/1" },
        { "}],", "},\"driver\"],", "/drivers/1" },
    };
    size_t  i;

    (void) state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ERR(WITH(cases[i].from, cases[i].to), "invalid-field", cases[i].pointer);
    }
    detail_is(WITH("\"power_hp\":150", "\"power_hp\":\"150\""),
              "power_hp must be an integer from 1 to 1500");
}

static void
test_integers(void **state)
{
    static const char *const  bad_power[] = {
        "0", "-0", "-1", "1501", "1.5e2", "150.0", "150e0", "1E2", "1e999", "-1e999",
        "99999999999999999999", "-99999999999999999999", "4294967446", "18446744073709551766",
        "1000000000", "100000000", "150.5", "0.0"
    };
    char    to[64];
    size_t  i;

    (void) state;
    OK(WITH("\"power_hp\":150", "\"power_hp\":1"), NULL);
    OK(WITH("\"power_hp\":150", "\"power_hp\":1500"), NULL);
    for (i = 0; i < sizeof(bad_power) / sizeof(bad_power[0]); i++) {
        snprintf(to, sizeof(to), "\"power_hp\":%s", bad_power[i]);
        ERR(WITH("\"power_hp\":150", to), "invalid-field", "/vehicle/power_hp");
    }
    /* year: 1950 .. today's year + 1 */
    OK(WITH("\"year\":2015", "\"year\":1950"), NULL);
    OK(WITH("\"year\":2015", "\"year\":2026"), NULL);
    ERR(WITH("\"year\":2015", "\"year\":1949"), "invalid-field", "/vehicle/year");
    ERR(WITH("\"year\":2015", "\"year\":2027"), "invalid-field", "/vehicle/year");
    ERR(WITH("\"year\":2015", "\"year\":2015.0"), "invalid-field", "/vehicle/year");
    detail_is(WITH("\"year\":2015", "\"year\":2027"), "year must be an integer from 1950 to 2026");
    /* period_months: 3 .. 12 */
    OK(WITH("\"period_months\":12", "\"period_months\":3"), NULL);
    ERR(WITH("\"period_months\":12", "\"period_months\":2"), "invalid-field", "/period_months");
    ERR(WITH("\"period_months\":12", "\"period_months\":13"), "invalid-field", "/period_months");
    ERR(WITH("\"period_months\":12", "\"period_months\":-12"), "invalid-field", "/period_months");
    ERR(WITH("\"period_months\":12", "\"period_months\":1e1"), "invalid-field", "/period_months");
}

static void
test_kbm_class(void **state)
{
    static const char *const  good[] = {
        "\"M\"", "\"0\"", "\"1\"", "\"9\"", "\"10\"", "\"13\"", "0", "-0", "7", "13"
    };
    static const char *const  bad[] = {
        "\"14\"", "\"01\"", "\"m\"", "\"\"", "\"-1\"", "\" 3\"", "\"3 \"", "\"M1\"", "\"1.0\"",
        "14", "-1", "1.0", "3e0", "\"\\u004d \""
    };
    char    to[64];
    size_t  i;

    (void) state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(to, sizeof(to), "\"kbm_class\":%s", good[i]);
        OK(WITH("\"kbm_class\":\"3\"", to), NULL);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(to, sizeof(to), "\"kbm_class\":%s", bad[i]);
        ERR(WITH("\"kbm_class\":\"3\"", to), "invalid-field", "/kbm_class");
    }
}

static void
test_dates(void **state)
{
    static const char *const  bad[] = {
        "2023-02-29", "1900-02-29", "1980-04-31", "1980-06-31", "1980-13-01", "1980-00-10",
        "1980-01-00", "1980-01-32", "1980-1-01", "1980-01-1", "19800101", "1980/01/01",
        "1980-01-01T00:00:00Z", " 1980-01-01", "1980-01-01 ", "80-01-01", "+1980-01-01",
        "1980-0a-01", "", "01-01-1980", "1980\\u002d01-01x"
    };
    char    to[64];
    size_t  i;

    (void) state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(to, sizeof(to), "\"%s\"", bad[i]);
        ERR(WITH("\"1980-03-10\"", to), "invalid-field", "/owner/birth_date");
    }
    detail_is(WITH("1980-03-10", "2023-02-29"),
              "birth_date must be a real calendar date in the form YYYY-MM-DD");
    /* leap days that exist */
    OK(WITH("1980-03-10", "2000-02-29"), NULL);
    OK(WITH("1980-03-10", "1996-02-29"), NULL);
    OK(WITH("2010-05-05", "2024-02-29"), NULL);
    /* escapes decode before the date is read */
    SAME(BASE, WITH("1980-03-10", "1980\\u002d03-10"));

    /* start_date: today .. today + 60 days */
    OK(WITH("2025-06-20", "2025-06-15"), NULL);
    OK(WITH("2025-06-20", "2025-08-14"), NULL);
    ERR(WITH("2025-06-20", "2025-06-14"), "invalid-field", "/start_date");
    ERR(WITH("2025-06-20", "2025-08-15"), "invalid-field", "/start_date");
    ERR(WITH("2025-06-20", "2026-06-20"), "invalid-field", "/start_date");
    ERR(WITH("2025-06-20", "2025-06-31"), "invalid-field", "/start_date");
    detail_is(WITH("2025-06-20", "2025-08-15"),
              "start_date must be a date YYYY-MM-DD from today (2025-06-15) to 2025-08-14");
    {
        /* across a year end and a February: 60 days after 2025-12-31 is 2026-03-01 */
        osago_app_limits_t  nye = limits(8, 2025, 12, 31);
        osago_app_limits_t  leap = limits(8, 2027, 12, 31);

        OK_LIM(nye, WITH("2025-06-20", "2026-03-01"));
        ERR_LIM(nye, WITH("2025-06-20", "2026-03-02"), "invalid-field", "/start_date");
        ERR_LIM(nye, WITH("2025-06-20", "2025-12-30"), "invalid-field", "/start_date");
        /* 2028 is a leap year: 60 days after 2027-12-31 is 2028-02-29 */
        OK_LIM(leap, WITH("2025-06-20", "2028-02-29"));
        ERR_LIM(leap, WITH("2025-06-20", "2028-03-01"), "invalid-field", "/start_date");
        /* the vehicle year follows today: 2028 is allowed in 2027 */
        OK_LIM(leap, subst(WITH("\"year\":2015", "\"year\":2028"), "2025-06-20", "2028-01-01"));
        ERR_LIM(leap, subst(WITH("\"year\":2015", "\"year\":2029"), "2025-06-20", "2028-01-01"),
                "invalid-field", "/vehicle/year");
    }
    {
        /* the edge's replay of an application accepted on an earlier day: the window error
         * says so, and with any_start_date the same body is valid, canonicalised the same */
        osago_app_limits_t  later = limits(8, 2025, 6, 25);
        osago_app_limits_t  replay = later;
        osago_app_error_t   err;
        unsigned char       out[OSAGO_APP_CANONICAL_MAX], again[OSAGO_APP_CANONICAL_MAX];
        long                n, m;

        replay.any_start_date = 1;
        assert_int_equal(run(BASE, strlen(BASE), &later, out, sizeof(out), &err), -1);
        assert_string_equal(err.pointer, "/start_date");
        assert_int_equal(err.start_window, 1);
        n = run(BASE, strlen(BASE), &replay, out, sizeof(out), &err);
        m = run(BASE, strlen(BASE), &LIM, again, sizeof(again), &err);
        assert_true(n > 0 && n == m);
        assert_memory_equal(out, again, (size_t) n);
        /* the day after the window's end: inside it where the clock is on tomorrow already */
        assert_int_equal(run(WITH("2025-06-20", "2025-08-25"), strlen(BASE), &later, out,
                             sizeof(out), &err), -1);
        assert_string_equal(err.pointer, "/start_date");
        assert_int_equal(err.start_window, 1);
        /* later still, a date past the window never was inside it: nothing to replay */
        assert_int_equal(run(WITH("2025-06-20", "2025-09-01"), strlen(BASE), &later, out,
                             sizeof(out), &err), -1);
        assert_string_equal(err.pointer, "/start_date");
        assert_int_equal(err.start_window, 0);
        /* not a window error: a date that does not exist, an earlier error, a later fatal one */
        assert_int_equal(run(WITH("2025-06-20", "2025-06-31"), strlen(BASE), &later, out,
                             sizeof(out), &err), -1);
        assert_int_equal(err.start_window, 0);
        ERR_LIM(replay, WITH("2025-06-20", "2025-06-31"), "invalid-field", "/start_date");
        {
            const char *both = subst(WITH("\"power_hp\":150", "\"power_hp\":0"),
                                     "2025-06-20", "2025-06-10");

            assert_int_equal(run(both, strlen(both), &LIM, out, sizeof(out), &err), -1);
            assert_string_equal(err.pointer, "/vehicle/power_hp");
            assert_int_equal(err.start_window, 0);
        }
        assert_int_equal(run(BASE, strlen(BASE) - 1, &later, out, sizeof(out), &err), -1);
        assert_string_equal(err.type, "malformed-json");
        assert_int_equal(err.start_window, 0);
    }
}

static void
test_ages(void **state)
{
    (void) state;
    /* owner: 18 today is fine, 18 tomorrow is not */
    OK(WITH("1980-03-10", "2007-06-15"), NULL);
    ERR(WITH("1980-03-10", "2007-06-16"), "invalid-field", "/owner/birth_date");
    /* 120 until the 121st birthday */
    OK(WITH("1980-03-10", "1904-06-16"), NULL);
    ERR(WITH("1980-03-10", "1904-06-15"), "invalid-field", "/owner/birth_date");
    ERR(WITH("1980-03-10", "2030-01-01"), "invalid-field", "/owner/birth_date");
    ERR(WITH("1980-03-10", "0000-01-01"), "invalid-field", "/owner/birth_date");
    detail_is(WITH("1980-03-10", "2007-06-16"),
              "birth_date must be a date YYYY-MM-DD of a person aged 18 to 120");
    /* drivers */
    OK(subst(WITH("1990-01-01", "2007-06-15"), "2010-05-05", "2023-06-15"), NULL);
    ERR(WITH("1990-01-01", "2007-06-16"), "invalid-field", "/drivers/0/birth_date");
    ERR(WITH("1990-01-01", "1904-06-15"), "invalid-field", "/drivers/0/birth_date");
    {
        /* born on 29 February: 18 on 1 March of a common year */
        osago_app_limits_t  feb28 = limits(8, 2022, 2, 28);
        osago_app_limits_t  mar01 = limits(8, 2022, 3, 1);
        const char         *body = subst(WITH("1980-03-10", "2004-02-29"), "2025-06-20",
                                         "2022-03-10");

        ERR_LIM(feb28, body, "invalid-field", "/owner/birth_date");
        OK_LIM(mar01, body);
    }
}

static void
test_license(void **state)
{
    (void) state;
    /* not in the future */
    OK(WITH("2010-05-05", "2025-06-15"), NULL);
    ERR(WITH("2010-05-05", "2025-06-16"), "invalid-field", "/drivers/0/license_issued_date");
    detail_is(WITH("2010-05-05", "2025-06-16"),
              "license_issued_date must be a date YYYY-MM-DD not later than today (2025-06-15)");
    /* at least 16 years after birth_date (born 1990-01-01) */
    OK(WITH("2010-05-05", "2006-01-01"), NULL);
    ERR(WITH("2010-05-05", "2005-12-31"), "invalid-field", "/drivers/0/license_issued_date");
    ERR(WITH("2010-05-05", "1989-01-01"), "invalid-field", "/drivers/0/license_issued_date");
    detail_is(WITH("2010-05-05", "2005-12-31"),
              "license_issued_date must be at least 16 years after birth_date");
    /* the same check with the members the other way round */
    ERR(WITH("{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}",
             "{\"license_issued_date\":\"2005-12-31\",\"birth_date\":\"1990-01-01\"}"),
        "invalid-field", "/drivers/0/license_issued_date");
    /* second driver */
    ERR(WITH("}],", "},{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2000-01-01\"}],"),
        "invalid-field", "/drivers/1/license_issued_date");
    ERR(WITH("2010-05-05", "2023-02-29"), "invalid-field", "/drivers/0/license_issued_date");
}

static void
test_region_code(void **state)
{
    static const char *const  good[] = { "01", "09", "10", "50", "77", "89", "90", "95", "99" };
    static const char *const  bad[] = {
        "\"00\"", "\"96\"", "\"97\"", "\"98\"", "\"100\"", "\"7\"", "\"077\"", "\"7a\"",
        "\" 77\"", "\"\"", "77", "\"\\u0037\\u0037 \""
    };
    char    to[64];
    size_t  i;

    (void) state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(to, sizeof(to), "\"region_code\":\"%s\"", good[i]);
        OK(WITH("\"region_code\":\"77\"", to), NULL);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(to, sizeof(to), "\"region_code\":%s", bad[i]);
        ERR(WITH("\"region_code\":\"77\"", to), "invalid-field", "/owner/region_code");
    }
}

static void
test_vin(void **state)
{
    static const char *const  bad[] = {
        "XTA2109904345678", "XTA210990434567890", "XTA2109904345678I", "XTA2109904345678O",
        "XTA2109904345678Q", "xta21099043456789", "XTA21099043456 89", "XTA-1099043456789",
        "", "XTA2109904345678" CY_A
    };
    char    to[64];
    size_t  i;

    (void) state;
    OK(WITH("XTA21099043456789", "ABCDEFGHJKLMNPRST"), NULL);
    OK(WITH("XTA21099043456789", "UVWXYZ01234567890"), NULL);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(to, sizeof(to), "\"vin\":\"%s\"", bad[i]);
        ERR(WITH("\"vin\":\"XTA21099043456789\"", to), "invalid-field", "/vehicle/vin");
    }
}

static void
test_plate(void **state)
{
    static const char *const  good[] = {
        "A123BC77", "A123BC777", "A123BC102", "X000XX01", "M999MM99", CY_K "123" CY_E CY_T "750",
        "E001KM50", "H001HH50", "O001PC50", "T001YX50"
    };
    static const char *const  bad[] = {
        "A123BC077", "A123BC00", "A123BC7", "A123BC7777", "D123BC77", "\xD0\x94" "123BC77",
        "a123bc77", "\xD0\xB0" "123BC77", "A12BC77", "A1234BC77", "A123B77", "A123BCD77",
        "123ABC77", "A 123 BC 77", "A123BC 77", "A123BC77 ", "", "A", "A123", "A123BC",
        "A123BCAB", "Z123BC77", "A123BC7A"
    };
    char    to[96];
    size_t  i;

    (void) state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(to, sizeof(to), "\"plate\":\"%s\"", good[i]);
        OK(WITH("\"plate\":\"A123BC77\"", to), NULL);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(to, sizeof(to), "\"plate\":\"%s\"", bad[i]);
        ERR(WITH("\"plate\":\"A123BC77\"", to), "invalid-field", "/vehicle/plate");
    }
    /* every Latin look-alike maps to its Cyrillic letter */
    SAME(WITH("A123BC77", "A123BE77"), WITH("A123BC77", CY_A "123" CY_B CY_E "77"));
    SAME(WITH("A123BC77", "K123MH77"), WITH("A123BC77", CY_K "123" CY_M CY_H "77"));
    SAME(WITH("A123BC77", "O123PC77"), WITH("A123BC77", CY_O "123" CY_P CY_C "77"));
    SAME(WITH("A123BC77", "T123YX77"), WITH("A123BC77", CY_T "123" CY_Y CY_X "77"));
    DIFF(WITH("A123BC77", "A123BC77"), WITH("A123BC77", "A123CB77"));
}

static void
test_drivers(void **state)
{
    static const char  one[] =
        "{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}";
    char  five[512], six[600], to[700];

    (void) state;
    snprintf(five, sizeof(five), "%s,%s,%s,%s,%s", one, one, one, one, one);
    snprintf(six, sizeof(six), "%s,%s", five, one);

    snprintf(to, sizeof(to), "[%s]", five);
    OK(WITH("[{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}]", to), NULL);
    snprintf(to, sizeof(to), "[%s]", six);
    ERR(WITH("[{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}]", to),
        "invalid-field", "/drivers");
    ERR(WITH("[{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}]", "[]"),
        "invalid-field", "/drivers");
    detail_is(WITH("[{\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}]",
                   "[]"), "drivers must be an array of 1 to 5 driver objects");

    /* unlimited_drivers must be true, and excludes drivers */
    ERR(MIN_WITH("\"unlimited_drivers\":true", "\"unlimited_drivers\":false"), "invalid-field",
        "/unlimited_drivers");
    ERR(MIN_WITH("\"unlimited_drivers\":true", "\"unlimited_drivers\":\"true\""), "invalid-field",
        "/unlimited_drivers");
    ERR(MIN_WITH("\"unlimited_drivers\":true", "\"unlimited_drivers\":1"), "invalid-field",
        "/unlimited_drivers");
    ERR(MIN_WITH("\"unlimited_drivers\":true", "\"unlimited_drivers\":null"), "invalid-field",
        "/unlimited_drivers");
    ERR(MIN_WITH("\"unlimited_drivers\":true", "\"unlimited_drivers\":false,\"drivers\":[{"
                 "\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}]"),
        "invalid-field", "/unlimited_drivers");
    ERR(MIN_WITH("\"unlimited_drivers\":true", "\"unlimited_drivers\":true,\"drivers\":[{"
                 "\"birth_date\":\"1990-01-01\",\"license_issued_date\":\"2010-05-05\"}]"),
        "invalid-field", "/drivers");
    ERR(WITH("\"kbm_class\"", "\"unlimited_drivers\":true,\"kbm_class\""), "invalid-field",
        "/unlimited_drivers");
    detail_is(WITH("\"kbm_class\"", "\"unlimited_drivers\":true,\"kbm_class\""),
              "give either drivers or unlimited_drivers: true, not both");
    ERR(MIN_WITH("\"unlimited_drivers\":true,", ""), "missing-field", "/drivers");
}

static void
test_output_buffer(void **state)
{
    unsigned char      out[4096];
    osago_app_error_t  err;
    long               r;

    (void) state;
    r = osago_app_canonicalize((const unsigned char *) BASE, strlen(BASE), &LIM, out,
                               sizeof(out), &err);
    assert_int_equal(r, (long) strlen(BASE_CANON));
    /* exactly enough */
    assert_int_equal(run(BASE, strlen(BASE), &LIM, out, (size_t) r, &err), r);
    assert_memory_equal(out, BASE_CANON, (size_t) r);
    /* one byte short: refused, nothing written past the end (ASan would see it: heap block) */
    {
        unsigned char  *small = malloc((size_t) r - 1);

        assert_non_null(small);
        assert_int_equal(run(BASE, strlen(BASE), &LIM, small, (size_t) r - 1, &err), -1);
        assert_string_equal(err.type, "internal");
        free(small);
    }
    assert_int_equal(osago_app_canonicalize((const unsigned char *) BASE, strlen(BASE), &LIM,
                                            NULL, 0, &err), -1);
    assert_string_equal(err.type, "internal");
    assert_int_equal(osago_app_canonicalize((const unsigned char *) BASE, strlen(BASE), NULL,
                                            out, sizeof(out), &err), -1);
    assert_string_equal(err.type, "internal");
    assert_int_equal(osago_app_canonicalize((const unsigned char *) BASE, strlen(BASE), &LIM,
                                            out, sizeof(out), NULL), -1);
}

static void
test_not_nul_terminated(void **state)
{
    unsigned char      out[4096];
    osago_app_error_t  err;
    char               buf[sizeof(BASE) + 16];
    size_t             n = strlen(BASE);

    (void) state;
    /* the bytes after len are not part of the body */
    memcpy(buf, BASE, n);
    memcpy(buf + n, " garbage\xFF{{{{", 13);
    assert_int_equal(osago_app_canonicalize((const unsigned char *) buf, n, &LIM, out,
                                            sizeof(out), &err), (long) strlen(BASE_CANON));
    /* and run() always passes an exact heap copy: every test above checks for over-reads */
    ok_at(__LINE__, &LIM, buf, n, BASE_CANON);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_valid_base),
        cmocka_unit_test(test_valid_minimal),
        cmocka_unit_test(test_valid_maximal),
        cmocka_unit_test(test_valid_vin_or_plate),
        cmocka_unit_test(test_valid_categories),
        cmocka_unit_test(test_canonical_equal),
        cmocka_unit_test(test_canonical_different),
        cmocka_unit_test(test_empty_body),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_not_an_object),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_control_characters),
        cmocka_unit_test(test_too_deep),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_unknown_field),
        cmocka_unit_test(test_duplicate_field),
        cmocka_unit_test(test_missing_field),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_kbm_class),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_ages),
        cmocka_unit_test(test_license),
        cmocka_unit_test(test_region_code),
        cmocka_unit_test(test_vin),
        cmocka_unit_test(test_plate),
        cmocka_unit_test(test_drivers),
        cmocka_unit_test(test_output_buffer),
        cmocka_unit_test(test_not_nul_terminated),
    };

    LIM = limits(8, 2025, 6, 15);
    assert_int_equal(days_of(1970, 1, 1), 0);

    return cmocka_run_group_tests_name("osago_application", tests, NULL, NULL);
}
