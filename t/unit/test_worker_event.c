/*
 * Unit tests of the Kafka event codec (worker/event.c), built with ASan and UBSan by
 * `make build/san/test_worker_event`, run by t/31-worker-unit.t.
 *
 * Every decode goes through decode(), which copies the text into a heap block of exactly its
 * length (no terminating NUL: Kafka payloads have none), so a read past the end is an ASan
 * report.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "event.h"

#define APP_ID  "0f8fad5b-d9cb-469f-a165-70867728950e"
#define EV_ID   "7c9e6679-7425-40de-944b-e07fc1f90ae7"
#define TP      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define PAYLOAD "{\"vehicle\":{\"category\":\"B\",\"power_hp\":150},\"period_months\":12," \
                "\"ratio\":1.50,\"big\":1e3,\"drivers\":[{\"x\":true},null,false],\"s\":\"\\u00e9\\n\"}"
/* the payload after a decode: yajl resolves the escape, the text is the same JSON */
#define PAYLOAD_OUT "{\"vehicle\":{\"category\":\"B\",\"power_hp\":150},\"period_months\":12," \
                "\"ratio\":1.50,\"big\":1e3,\"drivers\":[{\"x\":true},null,false],\"s\":\"\xC3\xA9\\n\"}"
/* 2025-06-15T10:20:30.123Z */
#define WHEN_MS INT64_C(1749982830123)

/* ---- helpers ------------------------------------------------------------------------------ */

static int decode(const char *json, osago_event_t *ev, char *err, size_t errlen)
{
    size_t len = strlen(json);
    char *copy = malloc(len > 0 ? len : 1);
    assert_non_null(copy);
    memcpy(copy, json, len);
    int rc = event_decode(copy, len, ev, err, errlen);
    free(copy);
    return rc;
}

static void fill(osago_event_t *ev, event_type_t type)
{
    memset(ev, 0, sizeof(*ev));
    ev->type = type;
    ev->version = 1;
    strcpy(ev->event_id, EV_ID);
    strcpy(ev->application_id, APP_ID);
    ev->occurred_at_ms = WHEN_MS;
    strcpy(ev->traceparent, TP);
    switch (type) {
    case EV_CREATED:
        strcpy(ev->partner, "partner-1");
        ev->payload = strdup(PAYLOAD);
        break;
    case EV_STARTED:
        ev->n_insurers = 3;
        strcpy(ev->insurers[0], "alfa");
        strcpy(ev->insurers[1], "ingos");
        strcpy(ev->insurers[2], "rgs_2-x");
        break;
    case EV_TASK:
        strcpy(ev->insurer, "reso");
        ev->attempt = 2;
        ev->payload = strdup(PAYLOAD);
        break;
    case EV_TASK_RESULT:
        strcpy(ev->insurer, "vsk");
        ev->attempt = 3;
        ev->ok = 1;
        strcpy(ev->premium_rub, "8734.12");
        break;
    }
}

static void assert_same(const osago_event_t *a, const osago_event_t *b)
{
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->version, b->version);
    assert_string_equal(a->event_id, b->event_id);
    assert_string_equal(a->application_id, b->application_id);
    assert_true(a->occurred_at_ms == b->occurred_at_ms);
    assert_string_equal(a->traceparent, b->traceparent);
    assert_string_equal(a->partner, b->partner);
    if (a->payload != NULL || b->payload != NULL) {
        assert_non_null(a->payload);
        assert_non_null(b->payload);
        assert_string_equal(strcmp(a->payload, PAYLOAD) == 0 ? PAYLOAD_OUT : a->payload,
                            b->payload);
    }
    assert_int_equal(a->n_insurers, b->n_insurers);
    for (int i = 0; i < a->n_insurers; i++)
        assert_string_equal(a->insurers[i], b->insurers[i]);
    assert_string_equal(a->insurer, b->insurer);
    assert_int_equal(a->attempt, b->attempt);
    assert_int_equal(a->ok, b->ok);
    assert_string_equal(a->premium_rub, b->premium_rub);
    assert_string_equal(a->error, b->error);
}

/* encode -> decode -> same struct -> encode gives the same text */
static void round_trip(osago_event_t *ev)
{
    size_t len, len2;
    char err[256] = "";
    osago_event_t back;

    char *json = event_encode(ev, &len);
    assert_non_null(json);
    assert_int_equal(strlen(json), len);
    if (decode(json, &back, err, sizeof(err)) != 0)
        fail_msg("decode of %s failed: %s", json, err);
    assert_same(ev, &back);
    char *again = event_encode(&back, &len2);
    assert_non_null(again);
    assert_string_equal(json, again);
    free(again);
    free(json);
    event_free(&back);
}

/* An event as text, member by member; a NULL member is left out. */
struct env {
    const char *type, *version, *event_id, *application_id, *occurred_at, *traceparent, *data;
};

#define Q(s) "\"" s "\""
static const struct env TASK = {
    Q("OsagoApplicationTask"), "1", Q(EV_ID), Q(APP_ID), Q("2025-06-15T10:20:30.123Z"), Q(TP),
    "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{\"a\":1}}",
};

static char *text(const struct env *e)
{
    static const char *const names[] = { "type", "version", "event_id", "application_id",
                                         "occurred_at", "traceparent", "data" };
    const char *const vals[] = { e->type, e->version, e->event_id, e->application_id,
                                 e->occurred_at, e->traceparent, e->data };
    size_t cap = 64;
    for (int i = 0; i < 7; i++)
        cap += 32 + (vals[i] != NULL ? strlen(vals[i]) : 0);
    char *out = malloc(cap);
    assert_non_null(out);
    strcpy(out, "{");
    for (int i = 0; i < 7; i++) {
        if (vals[i] == NULL)
            continue;
        if (out[1] != '\0')
            strcat(out, ",");
        sprintf(out + strlen(out), "\"%s\":%s", names[i], vals[i]);
    }
    strcat(out, "}");
    return out;
}

static void expect_error(const char *json, const char *expected)
{
    osago_event_t ev;
    char err[256] = "";
    int rc = decode(json, &ev, err, sizeof(err));
    if (rc != -1)
        fail_msg("accepted %s (expected: %s)", json, expected);
    if (strcmp(err, expected) != 0)
        fail_msg("for %s\n  got      \"%s\"\n  expected \"%s\"", json, err, expected);
    assert_null(ev.payload);
    event_free(&ev);
}

static void expect_env_error(const struct env *e, const char *expected)
{
    char *json = text(e);
    expect_error(json, expected);
    free(json);
}

static void expect_data_error(const char *type, const char *data, const char *expected)
{
    struct env e = TASK;
    e.type = type;
    e.data = data;
    expect_env_error(&e, expected);
}

/* ---- round trips -------------------------------------------------------------------------- */

static void test_round_trip_created(void **state)
{
    osago_event_t ev;
    (void)state;
    fill(&ev, EV_CREATED);
    round_trip(&ev);
    event_free(&ev);
}

static void test_round_trip_started(void **state)
{
    osago_event_t ev;
    (void)state;
    fill(&ev, EV_STARTED);
    round_trip(&ev);
    ev.n_insurers = EVENT_MAX_INSURERS;
    for (int i = 0; i < EVENT_MAX_INSURERS; i++)
        snprintf(ev.insurers[i], sizeof(ev.insurers[i]), "ins%02d", i);
    round_trip(&ev);
}

static void test_round_trip_task(void **state)
{
    osago_event_t ev;
    (void)state;
    fill(&ev, EV_TASK);
    round_trip(&ev);
    ev.attempt = 10;
    round_trip(&ev);
    event_free(&ev);
}

static void test_round_trip_result_ok(void **state)
{
    osago_event_t ev;
    (void)state;
    fill(&ev, EV_TASK_RESULT);
    round_trip(&ev);
    strcpy(ev.premium_rub, "0.5");
    round_trip(&ev);
    strcpy(ev.premium_rub, "1234567890");
    round_trip(&ev);
}

static void test_round_trip_result_error(void **state)
{
    osago_event_t ev;
    (void)state;
    fill(&ev, EV_TASK_RESULT);
    ev.ok = 0;
    ev.premium_rub[0] = '\0';
    strcpy(ev.error, "timeout after 60000 ms: \"quoted\" \\ \t control, \xD0\x92\xD0\xA1\xD0\x9A");
    round_trip(&ev);
}

/* the exact text: member order, RFC 3339 time, payload kept token for token */
static void test_encode_text(void **state)
{
    osago_event_t ev;
    size_t len;
    (void)state;
    fill(&ev, EV_TASK);
    char *json = event_encode(&ev, &len);
    assert_non_null(json);
    assert_string_equal(json,
        "{\"type\":\"OsagoApplicationTask\",\"version\":1,\"event_id\":\"" EV_ID "\","
        "\"application_id\":\"" APP_ID "\",\"occurred_at\":\"2025-06-15T10:20:30.123Z\","
        "\"traceparent\":\"" TP "\",\"data\":{\"insurer\":\"reso\",\"attempt\":2,"
        "\"payload\":{\"vehicle\":{\"category\":\"B\",\"power_hp\":150},\"period_months\":12,"
        "\"ratio\":1.50,\"big\":1e3,\"drivers\":[{\"x\":true},null,false],\"s\":\"\xC3\xA9\\n\"}}}");
    free(json);
    event_free(&ev);

    fill(&ev, EV_TASK_RESULT);
    ev.ok = 0;
    strcpy(ev.error, "HTTP 500");
    ev.occurred_at_ms = 7;
    json = event_encode(&ev, &len);
    assert_non_null(json);
    assert_non_null(strstr(json, "\"occurred_at\":\"1970-01-01T00:00:00.007Z\""));
    assert_non_null(strstr(json, "\"data\":{\"insurer\":\"vsk\",\"attempt\":3,"
                                 "\"status\":\"error\",\"error\":\"HTTP 500\"}"));
    assert_null(strstr(json, "premium_rub"));
    free(json);
}

static void test_topics_and_names(void **state)
{
    (void)state;
    assert_string_equal(event_topic(EV_CREATED), "osago.application.created");
    assert_string_equal(event_topic(EV_STARTED), "osago.application.started");
    assert_string_equal(event_topic(EV_TASK), "osago.application.task");
    assert_string_equal(event_topic(EV_TASK_RESULT), "osago.application.task-result");
    assert_string_equal(event_type_name(EV_CREATED), "OsagoApplicationCreated");
    assert_string_equal(event_type_name(EV_STARTED), "OsagoApplicationStarted");
    assert_string_equal(event_type_name(EV_TASK), "OsagoApplicationTask");
    assert_string_equal(event_type_name(EV_TASK_RESULT), "OsagoApplicationTaskResult");
    assert_null(event_topic((event_type_t)4));
    assert_null(event_type_name((event_type_t)-1));
}

/* ---- decoding: what is accepted ----------------------------------------------------------- */

static void test_decode_lenient_parts(void **state)
{
    osago_event_t ev;
    char err[256] = "";
    (void)state;

    /* unknown members (a newer release's additions) are ignored; ids are lower-cased */
    struct env e = TASK;
    e.event_id = Q("7C9E6679-7425-40DE-944B-E07FC1F90AE7");
    e.data = "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{},\"future\":[1,2]}";
    char *json = text(&e);
    json[strlen(json) - 1] = '\0';
    char *more = malloc(strlen(json) + 32);
    sprintf(more, "%s,\"extra\":{\"x\":1}}", json);
    assert_int_equal(decode(more, &ev, err, sizeof(err)), 0);
    assert_string_equal(ev.event_id, EV_ID);
    assert_string_equal(ev.payload, "{}");
    event_free(&ev);
    free(more);
    free(json);

    /* occurred_at: 1..9 fraction digits or none; whitespace around tokens */
    const struct { const char *when; int64_t ms; } times[] = {
        { "2025-06-15T10:20:30Z", WHEN_MS - 123 },
        { "2025-06-15T10:20:30.1Z", WHEN_MS - 23 },
        { "2025-06-15T10:20:30.123456789Z", WHEN_MS },
        { "2024-02-29T00:00:00.000Z", INT64_C(1709164800000) },
        { "1970-01-01T00:00:00.000Z", 0 },
    };
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
        char when[64];
        snprintf(when, sizeof(when), "\"%s\"", times[i].when);
        e = TASK;
        e.occurred_at = when;
        json = text(&e);
        if (decode(json, &ev, err, sizeof(err)) != 0)
            fail_msg("%s: %s", times[i].when, err);
        assert_true(ev.occurred_at_ms == times[i].ms);
        event_free(&ev);
        free(json);
    }

    /* a long error is cut at 255 bytes, not in the middle of a UTF-8 character */
    char data[1024] = "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"error\",\"error\":\"xy";
    for (int i = 0; i < 200; i++)
        strcat(data, "\xD0\x96");     /* 2 bytes each: byte 255 would split one */
    strcat(data, "\"}");
    e = TASK;
    e.type = Q("OsagoApplicationTaskResult");
    e.data = data;
    json = text(&e);
    assert_int_equal(decode(json, &ev, err, sizeof(err)), 0);
    assert_int_equal(strlen(ev.error), 254);
    assert_int_equal((unsigned char)ev.error[253], 0x96);
    assert_int_equal(ev.ok, 0);
    free(json);

    /* bytes yajl lets through but PostgreSQL refuses (an overlong form, a surrogate) become '?',
     * as event_encode would make them (found by fuzz/fuzz_worker_event.c) */
    e = TASK;
    e.type = Q("OsagoApplicationTaskResult");
    e.data = "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"error\","
             "\"error\":\"a\xC0\xB8" "b\xED\xA0\x80" "c\"}";
    json = text(&e);
    if (decode(json, &ev, err, sizeof(err)) != 0)
        fail_msg("overlong: %s", err);
    assert_string_equal(ev.error, "a??b???c");
    free(json);
}

/* An event carries the members of its type (and a result those of its status) only: the others
 * are dropped on decode, as the encoder never writes them; kept, they rode along unchecked and
 * broke the fuzzer's round trip. */
static void test_decode_drops_foreign_members(void **state)
{
    osago_event_t ev, again;
    char          err[256] = "";
    size_t        len;
    (void)state;

    struct env e = TASK;
    e.type = Q("OsagoApplicationTaskResult");
    e.data = "{\"insurer\":\"vsk\",\"attempt\":3,\"status\":\"error\",\"error\":\"HTTP 500\","
             "\"premium_rub\":\"00-4\xd0\xb0\"}";
    char *json = text(&e);
    assert_int_equal(decode(json, &ev, err, sizeof(err)), 0);
    assert_false(ev.ok);
    assert_string_equal(ev.error, "HTTP 500");
    assert_string_equal(ev.premium_rub, "");
    char *out = event_encode(&ev, &len);
    assert_non_null(out);
    assert_int_equal(decode(out, &again, err, sizeof(err)), 0);
    assert_same(&ev, &again);
    free(out);
    free(json);
    event_free(&ev);
    event_free(&again);

    e.data = "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\"8734.12\","
             "\"error\":\"left over\"}";
    json = text(&e);
    assert_int_equal(decode(json, &ev, err, sizeof(err)), 0);
    assert_true(ev.ok);
    assert_string_equal(ev.premium_rub, "8734.12");
    assert_string_equal(ev.error, "");
    free(json);
    event_free(&ev);

    /* members of other types: a Created's error and insurer, a Task's partner and premium */
    e.type = Q("OsagoApplicationCreated");
    e.data = "{\"partner\":\"acme\",\"payload\":{},\"error\":\"HTTP 250\",\"insurer\":\"vsk\"}";
    json = text(&e);
    assert_int_equal(decode(json, &ev, err, sizeof(err)), 0);
    assert_string_equal(ev.partner, "acme");
    assert_string_equal(ev.error, "");
    assert_string_equal(ev.insurer, "");
    free(json);
    event_free(&ev);
    e.type = Q("OsagoApplicationTask");
    e.data = "{\"insurer\":\"vsk\",\"attempt\":1,\"payload\":{},\"partner\":\"acme\","
             "\"premium_rub\":\"1.00\"}";
    json = text(&e);
    assert_int_equal(decode(json, &ev, err, sizeof(err)), 0);
    assert_string_equal(ev.insurer, "vsk");
    assert_string_equal(ev.partner, "");
    assert_string_equal(ev.premium_rub, "");
    free(json);
    event_free(&ev);
}

static void test_decode_whitespace(void **state)
{
    osago_event_t ev;
    char err[256] = "";
    (void)state;
    const char *json =
        " {\n \"type\" : \"OsagoApplicationStarted\", \"version\": 1 ,\n"
        " \"event_id\": \"" EV_ID "\", \"application_id\": \"" APP_ID "\",\n"
        " \"occurred_at\": \"2025-06-15T10:20:30.123Z\", \"traceparent\": \"" TP "\",\n"
        " \"data\": { \"insurers\": [ \"alfa\" , \"rgs\" ] } }\n";
    assert_int_equal(decode(json, &ev, err, sizeof(err)), 0);
    assert_int_equal(ev.type, EV_STARTED);
    assert_int_equal(ev.n_insurers, 2);
    assert_string_equal(ev.insurers[1], "rgs");
    assert_null(ev.payload);
}

/* The decoder reads members as they come (one pass): their order must not matter, the first of
 * a repeated name counts, and a known name anywhere but its own place is ignored. */
static void test_decode_member_order_and_repeats(void **state)
{
    osago_event_t ev;
    char err[256] = "";
    (void)state;

    const char *reversed =
        "{\"data\":{\"payload\":{\"z\":[1,{\"y\":null}]},\"attempt\":2,\"insurer\":\"vsk\"},"
        "\"traceparent\":\"" TP "\",\"occurred_at\":\"2025-06-15T10:20:30.123Z\","
        "\"application_id\":\"" APP_ID "\",\"event_id\":\"" EV_ID "\",\"version\":1,"
        "\"type\":\"OsagoApplicationTask\"}";
    if (decode(reversed, &ev, err, sizeof(err)) != 0)
        fail_msg("reversed: %s", err);
    assert_int_equal(ev.type, EV_TASK);
    assert_int_equal(ev.attempt, 2);
    assert_string_equal(ev.insurer, "vsk");
    assert_string_equal(ev.payload, "{\"z\":[1,{\"y\":null}]}");
    event_free(&ev);

    /* repeats: the first attempt, the first data object, the first payload */
    struct env e = TASK;
    e.data = "{\"insurer\":\"reso\",\"attempt\":3,\"attempt\":4,"
             "\"payload\":{\"a\":1},\"payload\":{\"b\":2}}";
    char *json = text(&e);
    char *twice = malloc(strlen(json) + 64);
    assert_non_null(twice);
    json[strlen(json) - 1] = '\0';
    sprintf(twice, "%s,\"data\":{\"insurer\":\"alfa\"},\"type\":\"x\"}", json);
    if (decode(twice, &ev, err, sizeof(err)) != 0)
        fail_msg("repeats: %s", err);
    assert_int_equal(ev.attempt, 3);
    assert_string_equal(ev.insurer, "reso");
    assert_string_equal(ev.payload, "{\"a\":1}");
    event_free(&ev);
    free(twice);
    free(json);

    /* known names inside unknown members or the payload do not count */
    e = TASK;
    e.data = "{\"future\":{\"insurer\":\"x\",\"payload\":7},\"insurer\":\"reso\","
             "\"attempt\":1,\"payload\":{\"insurer\":\"sogaz\",\"attempt\":9}}";
    json = text(&e);
    if (decode(json, &ev, err, sizeof(err)) != 0)
        fail_msg("nested names: %s", err);
    assert_string_equal(ev.insurer, "reso");
    assert_int_equal(ev.attempt, 1);
    assert_string_equal(ev.payload, "{\"insurer\":\"sogaz\",\"attempt\":9}");
    event_free(&ev);
    free(json);

    /* a payload at the top level is not data.payload; nor is a first payload that is no object */
    e = TASK;
    e.data = "{\"insurer\":\"reso\",\"attempt\":1}";
    json = text(&e);
    json[strlen(json) - 1] = '\0';
    twice = malloc(strlen(json) + 32);
    assert_non_null(twice);
    sprintf(twice, "%s,\"payload\":{}}", json);
    expect_error(twice, "data.payload must be an object");
    free(twice);
    free(json);
    expect_data_error(Q("OsagoApplicationTask"),
                      "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":[],\"payload\":{}}",
                      "data.payload must be an object");
    /* an insurer list element that is a container is named by its index */
    expect_data_error(Q("OsagoApplicationStarted"), "{\"insurers\":[\"alfa\",{\"a\":[1]},\"rgs\"]}",
                      "data.insurers[1] must be an insurer code ([a-z0-9_-]{1,32})");
    expect_data_error(Q("OsagoApplicationTask"),
                      "{\"insurer\":\"reso\",\"attempt\":1.0,\"payload\":{}}",
                      "data.attempt must be 1..10");
    expect_data_error(Q("OsagoApplicationTask"),
                      "{\"insurer\":\"reso\",\"attempt\":99999999999999999999,\"payload\":{}}",
                      "data.attempt must be 1..10");
}

/* ---- decoding: every error ---------------------------------------------------------------- */

static void test_decode_malformed(void **state)
{
    osago_event_t ev;
    char err[256];
    (void)state;

    expect_error("{", "malformed JSON: parse error: premature EOF");
    expect_error("{\"type\":}", "malformed JSON: parse error: unallowed token at this point in JSON text");
    expect_error("{} {}", "malformed JSON: parse error: trailing garbage");
    expect_error("/* c */ {}", "malformed JSON: lexical error: probable comment found in input "
                 "text, comments are not enabled.");
    expect_error("{\"a\":\"\xC3\x28\"}", "malformed JSON: lexical error: invalid bytes in UTF8 string.");

    /* empty, and a NUL byte inside the length */
    assert_int_equal(event_decode("", 0, &ev, err, sizeof(err)), -1);
    assert_string_equal(err, "malformed JSON: empty or contains a NUL byte");
    assert_int_equal(event_decode("{}\0{}", 5, &ev, err, sizeof(err)), -1);
    assert_string_equal(err, "malformed JSON: empty or contains a NUL byte");

    /* nesting deeper than 64 inside the payload */
    char deep[400] = "{\"data\":{\"payload\":";
    for (int i = 0; i < 70; i++)
        strcat(deep, "[");
    expect_error(deep, "malformed JSON: nested deeper than 64 levels");

    expect_error("[]", "event must be a JSON object");
    expect_error("\"x\"", "event must be a JSON object");
}

static void test_decode_envelope_errors(void **state)
{
    struct env e;
    (void)state;

#define CASE(field, value, msg) do { e = TASK; e.field = value; expect_env_error(&e, msg); } while (0)
    CASE(type, NULL, "type must be a known event type");
    CASE(type, Q("OsagoApplicationDeleted"), "type must be a known event type");
    CASE(type, "1", "type must be a known event type");
    CASE(type, Q("OsagoApplicationTask\\u0000"), "type must be a known event type");
    CASE(version, NULL, "version must be 1");
    CASE(version, "2", "version must be 1");
    CASE(version, Q("1"), "version must be 1");
    CASE(version, "1.0", "version must be 1");
    CASE(event_id, NULL, "event_id must be a UUID");
    CASE(event_id, Q("7c9e6679742540de944be07fc1f90ae7"), "event_id must be a UUID");
    CASE(event_id, Q("7c9e6679-7425-40de-944b-e07fc1f90ae"), "event_id must be a UUID");
    CASE(event_id, Q("7c9e6679-7425-40de-944b-e07fc1f90aeg"), "event_id must be a UUID");
    CASE(application_id, NULL, "application_id must be a UUID");
    CASE(application_id, "12", "application_id must be a UUID");
    CASE(application_id, Q("0f8fad5b+d9cb-469f-a165-70867728950e"), "application_id must be a UUID");

    const char *bad_times[] = {
        NULL, "1749982830123", Q("2025-06-15T10:20:30.123"), Q("2025-06-15T10:20:30.123+03:00"),
        Q("2025-06-15 10:20:30.123Z"), Q("2025-02-29T10:20:30.123Z"), Q("2025-13-01T10:20:30Z"),
        Q("2025-06-15T24:00:00Z"), Q("2025-06-15T10:60:00Z"), Q("2025-06-15T10:20:30.Z"),
        Q("2025-06-15T10:20:30.1234567890Z"), Q("1969-12-31T23:59:59.999Z"), Q("2025-6-15T10:20:30Z"),
    };
    for (size_t i = 0; i < sizeof(bad_times) / sizeof(bad_times[0]); i++)
        CASE(occurred_at, bad_times[i],
             "occurred_at must be an RFC 3339 UTC time with milliseconds");

    const char *bad_tp[] = {
        NULL, "1", Q(""),
        Q("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),     /* upper case */
        Q("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),     /* zero trace id */
        Q("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),     /* zero parent id */
        Q("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),     /* version ff */
        Q("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),      /* short */
        Q("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Q("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
    };
    for (size_t i = 0; i < sizeof(bad_tp) / sizeof(bad_tp[0]); i++)
        CASE(traceparent, bad_tp[i],
             "traceparent must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");

    CASE(data, NULL, "data must be an object");
    CASE(data, "[]", "data must be an object");
    CASE(data, "null", "data must be an object");
#undef CASE
}

static void test_decode_created_errors(void **state)
{
    const char *t = Q("OsagoApplicationCreated");
    (void)state;
    expect_data_error(t, "{\"payload\":{}}", "data.partner must be a string of 1..64 bytes");
    expect_data_error(t, "{\"partner\":7,\"payload\":{}}",
                      "data.partner must be a string of 1..64 bytes");
    expect_data_error(t, "{\"partner\":\"\",\"payload\":{}}",
                      "data.partner must be a string of 1..64 bytes");
    expect_data_error(t, "{\"partner\":\"" "0123456789012345678901234567890123456789"
                         "0123456789012345678901234\",\"payload\":{}}",
                      "data.partner must be a string of 1..64 bytes");
    expect_data_error(t, "{\"partner\":\"p\"}", "data.payload must be an object");
    expect_data_error(t, "{\"partner\":\"p\",\"payload\":\"{}\"}", "data.payload must be an object");
    expect_data_error(t, "{\"partner\":\"p\",\"payload\":[]}", "data.payload must be an object");
}

/* A payload is judged by what it takes with its numbers written out, as the sweeper reads it
 * back from jsonb: what decodes must encode again (a Task made from a Created, a retry made
 * from a Task), and stay far under the producer's message.max.bytes. */
static void test_decode_payload_size(void **state)
{
    const char *created = Q("OsagoApplicationCreated");
    size_t      big = EVENT_MAX_PAYLOAD + 100;
    char       *data = malloc(big + 64), *json;
    struct env  e = TASK;
    osago_event_t ev;
    char        err[256];
    (void)state;

    assert_non_null(data);
    expect_data_error(created, "{\"partner\":\"p\",\"payload\":{\"x\":[1e524300]}}",
                      "data.payload must be at most 524288 bytes with its numbers written out "
                      "(it is 524318)");
    expect_data_error(Q("OsagoApplicationTask"),
                      "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{\"x\":-2.5E+524290}}",
                      "data.payload must be at most 524288 bytes with its numbers written out "
                      "(it is 524310)");

    /* written out, 524,016 bytes: carried */
    e.data = "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{\"x\":1e524000}}";
    json = text(&e);
    assert_int_equal(decode(json, &ev, err, sizeof(err)), 0);
    assert_string_equal(ev.payload, "{\"x\":1e524000}");
    free(json);
    event_free(&ev);

    /* a long string: the limit is on the whole payload, as re-generated */
    static const char head[] = "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{\"s\":\"";
    size_t at = sizeof(head) - 1;
    memcpy(data, head, at);
    memset(data + at, 'a', big);
    strcpy(data + at + big, "\"}}");
    e.data = data;
    json = text(&e);
    assert_int_equal(decode(json, &ev, err, sizeof(err)), -1);
    assert_string_equal(err, "data.payload must be at most 524288 bytes with its numbers written "
                             "out (it is 524396)");
    assert_null(ev.payload);
    event_free(&ev);
    free(json);
    free(data);
}

static void test_decode_started_errors(void **state)
{
    const char *t = Q("OsagoApplicationStarted");
    char many[2048] = "{\"insurers\":[";
    (void)state;
    expect_data_error(t, "{}", "data.insurers must be an array of 1..64 insurer codes");
    expect_data_error(t, "{\"insurers\":[]}",
                      "data.insurers must be an array of 1..64 insurer codes");
    expect_data_error(t, "{\"insurers\":\"alfa\"}",
                      "data.insurers must be an array of 1..64 insurer codes");
    for (int i = 0; i < 65; i++)
        sprintf(many + strlen(many), "%s\"i%d\"", i ? "," : "", i);
    strcat(many, "]}");
    expect_data_error(t, many, "data.insurers must be an array of 1..64 insurer codes");
    expect_data_error(t, "{\"insurers\":[\"alfa\",3]}",
                      "data.insurers[1] must be an insurer code ([a-z0-9_-]{1,32})");
    expect_data_error(t, "{\"insurers\":[\"Alfa\"]}",
                      "data.insurers[0] must be an insurer code ([a-z0-9_-]{1,32})");
    expect_data_error(t, "{\"insurers\":[\"a\",\"\"]}",
                      "data.insurers[1] must be an insurer code ([a-z0-9_-]{1,32})");
    expect_data_error(t, "{\"insurers\":[\"abcdefghijabcdefghijabcdefghijabc\"]}",
                      "data.insurers[0] must be an insurer code ([a-z0-9_-]{1,32})");
    /* yajl hands over the escaped NUL as a byte: the code must not decode as its prefix */
    expect_data_error(t, "{\"insurers\":[\"alfa\",\"reso\\u0000evil\"]}",
                      "data.insurers[1] must be an insurer code ([a-z0-9_-]{1,32})");
}

static void test_decode_task_errors(void **state)
{
    const char *t = Q("OsagoApplicationTask");
    (void)state;
    expect_data_error(t, "{\"attempt\":1,\"payload\":{}}",
                      "data.insurer must be an insurer code ([a-z0-9_-]{1,32})");
    expect_data_error(t, "{\"insurer\":\"re so\",\"attempt\":1,\"payload\":{}}",
                      "data.insurer must be an insurer code ([a-z0-9_-]{1,32})");
    expect_data_error(t, "{\"insurer\":\"reso\",\"payload\":{}}", "data.attempt must be 1..10");
    expect_data_error(t, "{\"insurer\":\"reso\",\"attempt\":0,\"payload\":{}}",
                      "data.attempt must be 1..10");
    expect_data_error(t, "{\"insurer\":\"reso\",\"attempt\":11,\"payload\":{}}",
                      "data.attempt must be 1..10");
    expect_data_error(t, "{\"insurer\":\"reso\",\"attempt\":\"1\",\"payload\":{}}",
                      "data.attempt must be 1..10");
    expect_data_error(t, "{\"insurer\":\"reso\",\"attempt\":1.5,\"payload\":{}}",
                      "data.attempt must be 1..10");
    expect_data_error(t, "{\"insurer\":\"reso\",\"attempt\":99999999999999999999,\"payload\":{}}",
                      "data.attempt must be 1..10");
    expect_data_error(t, "{\"insurer\":\"reso\",\"attempt\":1}", "data.payload must be an object");
    expect_data_error(t, "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":null}",
                      "data.payload must be an object");
    expect_data_error(t, "{\"insurer\":\"alfa\\u0000evil\",\"attempt\":1,\"payload\":{}}",
                      "data.insurer must be an insurer code ([a-z0-9_-]{1,32})");
    /* text an insurer or PostgreSQL would get as it is: a NUL, a lone surrogate, its bytes */
    const char *bad_text[] = {
        "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{\"n\":\"a\\u0000b\"}}",
        "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{\"n\":[\"\\udc00\"]}}",
        "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{\"n\":\"\xed\xa0\x80\"}}",
        "{\"insurer\":\"reso\",\"attempt\":1,\"payload\":{\"a\\u0000\":1}}",
    };
    for (size_t i = 0; i < sizeof(bad_text) / sizeof(bad_text[0]); i++)
        expect_data_error(t, bad_text[i], "data.payload holds a string that is not UTF-8 text "
                                          "(a NUL, a surrogate, an overlong form)");
}

static void test_decode_result_errors(void **state)
{
    const char *t = Q("OsagoApplicationTaskResult");
    (void)state;
    expect_data_error(t, "{\"insurer\":\"vsk\",\"attempt\":1,\"premium_rub\":\"1\"}",
                      "data.status must be \"ok\" or \"error\"");
    expect_data_error(t, "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"OK\"}",
                      "data.status must be \"ok\" or \"error\"");
    const char *bad_premiums[] = {
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\"}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":8734.12}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\"\"}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\"-5\"}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\"1.234\"}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\"1.\"}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\".5\"}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\"1e3\"}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\"12345678901\"}",
        "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\",\"premium_rub\":\"1,5\"}",
    };
    for (size_t i = 0; i < sizeof(bad_premiums) / sizeof(bad_premiums[0]); i++)
        expect_data_error(t, bad_premiums[i],
                          "data.premium_rub must be a decimal string such as \"8734.12\"");
    expect_data_error(t, "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"error\"}",
                      "data.error must be a non-empty string");
    expect_data_error(t, "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"error\",\"error\":\"\"}",
                      "data.error must be a non-empty string");
    expect_data_error(t, "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"error\",\"error\":5}",
                      "data.error must be a non-empty string");
    expect_data_error(t, "{\"insurer\":\"vsk\",\"attempt\":0,\"status\":\"ok\",\"premium_rub\":\"1\"}",
                      "data.attempt must be 1..10");
    expect_data_error(t, "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\","
                         "\"premium_rub\":\"8734.12\\u0000x\"}",
                      "data.premium_rub must be a decimal string such as \"8734.12\"");
    expect_data_error(t, "{\"insurer\":\"vsk\",\"attempt\":1,\"status\":\"ok\\u0000\","
                         "\"premium_rub\":\"1\"}",
                      "data.status must be \"ok\" or \"error\"");
}

/* ---- encoding refuses what would not decode ----------------------------------------------- */

/* event_payload_check is the relay's promise that event_encode will carry a payload: the two
 * must agree on every input, and the check must say why it refuses. */
static void test_payload_check_agrees_with_encode(void **state)
{
    char          deep64[400] = "", deep65[400] = "", err[128];
    osago_event_t ev;
    size_t        len;
    (void)state;

    for (int i = 0; i < 64; i++)
        strcat(deep64, "{\"a\":");
    strcat(deep64, "1");
    for (int i = 0; i < 64; i++)
        strcat(deep64, "}");
    snprintf(deep65, sizeof(deep65), "{\"b\":%s}", deep64);
    /* {"s":"aaa..."}: 8 bytes besides the string; and {"s": "aaa..."}, spaced as jsonb prints
     * it for the sweeper, one byte over as text and at the limit once compact */
    char *at_limit = malloc(EVENT_MAX_PAYLOAD + 1), *over_limit = malloc(EVENT_MAX_PAYLOAD + 2);
    char *spaced = malloc(EVENT_MAX_PAYLOAD + 2);
    assert_non_null(at_limit);
    assert_non_null(over_limit);
    assert_non_null(spaced);
    for (int k = 0; k < 3; k++) {
        char       *p = k == 0 ? at_limit : k == 1 ? over_limit : spaced;
        size_t      n = EVENT_MAX_PAYLOAD + (size_t) (k > 0);
        const char *head = k == 2 ? "{\"s\": \"" : "{\"s\":\"";

        memset(p, 'a', n);
        memcpy(p, head, strlen(head));
        memcpy(p + n - 2, "\"}", 2);
        p[n] = '\0';
    }

    const struct { const char *payload; const char *reason; } cases[] = {
        { "{\"vehicle\":{\"power_hp\":150}}", NULL },
        { deep64, NULL },
        { "{\"name\":\"\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd\"}", NULL },
        { deep65, "nested deeper than 64 levels" },
        { "[1,2]", "not a JSON object" },
        { "\"x\"", "not a JSON object" },
        { "", "not a JSON object" },
        { "{\"a\":", "not JSON: " },
        { "{\"n\":\"\xff\xfe\"}", "not JSON: " },
        { "{\"n\":\"\xc3\x28\"}", "not JSON: " },
        { "{\"x\":[1e524000]}", NULL },
        { "{\"x\":[1e524300]}", "over 524288 bytes with its numbers written out (524318)" },
        { "{\"x\":[1.5e131100,1e131100,2E+131100,1e-131100,1e1]}",
          "over 524288 bytes with its numbers written out (524462)" },
        { at_limit, NULL },
        { over_limit, "over 524288 bytes with its numbers written out (524289)" },
        { spaced, NULL },
        { "{\"x\": [1e524263, 1e1]}", NULL },
        { "{\"x\": [1e524263, 1e2]}", "over 524288 bytes with its numbers written out (524289)" },
        { "{\"n\":\"a\\u0000b\"}", "holds a string that is not UTF-8 text" },
        { "{\"n\":\"\\udc00\"}", "holds a string that is not UTF-8 text" },   /* yajl: ED B0 80 */
        { "{\"n\":\"\xed\xa0\x80\"}", "holds a string that is not UTF-8 text" },
        { "{\"n\":\"\xf4\x90\x80\x80\"}", "holds a string that is not UTF-8 text" },
        { "{\"a\\u0000\":1}", "holds a string that is not UTF-8 text" },
        { "{\"n\":\"\\ud83d\\ude00 \\u00e9\"}", NULL },   /* a surrogate pair: U+1F600 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int   rc = event_payload_check(cases[i].payload, err, sizeof(err));
        char *json;

        fill(&ev, EV_CREATED);
        free(ev.payload);
        ev.payload = strdup(cases[i].payload);
        json = event_encode(&ev, &len);
        if ((rc == 0) != (json != NULL))
            fail_msg("case %zu: check says %d, encode says %s", i, rc, json ? "ok" : "no");
        if (cases[i].reason == NULL) {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, -1);
            if (strncmp(err, cases[i].reason, strlen(cases[i].reason)) != 0)
                fail_msg("case %zu: reason '%s', want '%s...'", i, err, cases[i].reason);
        }
        free(json);
        event_free(&ev);
    }
    free(at_limit);
    free(over_limit);
    free(spaced);
}

static void test_encode_refuses_invalid(void **state)
{
    osago_event_t ev;
    size_t len;
    char err[256];
    (void)state;

    fill(&ev, EV_TASK);
    ev.attempt = 0;
    assert_null(event_encode(&ev, &len));
    assert_int_equal(event_validate(&ev, err, sizeof(err)), -1);
    assert_string_equal(err, "data.attempt must be 1..10");
    ev.attempt = 1;

    const char *bad_payloads[] = { "[1,2]", "{\"a\":", "{} {}", "\"x\"", "", "{\"a\":1}x",
                                   "// c\n{}" };
    char *good = ev.payload;
    for (size_t i = 0; i < sizeof(bad_payloads) / sizeof(bad_payloads[0]); i++) {
        ev.payload = (char *)bad_payloads[i];
        if (event_encode(&ev, &len) != NULL)
            fail_msg("encoded payload '%s'", bad_payloads[i]);
    }
    ev.payload = NULL;
    assert_null(event_encode(&ev, &len));
    ev.payload = good;

    strcpy(ev.traceparent, "not-a-traceparent");
    assert_null(event_encode(&ev, &len));
    strcpy(ev.traceparent, TP);
    strcpy(ev.application_id, "nope");
    assert_null(event_encode(&ev, &len));
    event_free(&ev);

    fill(&ev, EV_CREATED);
    strcpy(ev.partner, "bad \xC3\x28 utf8");
    assert_null(event_encode(&ev, &len));
    event_free(&ev);

    fill(&ev, EV_TASK_RESULT);
    strcpy(ev.premium_rub, "12,50");
    assert_null(event_encode(&ev, &len));
    ev.ok = 0;
    assert_null(event_encode(&ev, &len));   /* an error without text */
    ev.type = (event_type_t)9;
    assert_int_equal(event_validate(&ev, err, sizeof(err)), -1);
    assert_string_equal(err, "type must be a known event type");

    fill(&ev, EV_STARTED);
    ev.n_insurers = 0;
    assert_null(event_encode(&ev, &len));
}

/* An insurer's broken text must not make the result unencodable. */
static void test_encode_sanitizes_error(void **state)
{
    osago_event_t ev, back;
    size_t len;
    char err[256];
    (void)state;
    fill(&ev, EV_TASK_RESULT);
    ev.ok = 0;
    strcpy(ev.error, "bad \xC3\x28 \xFF \xE2\x82 end \xD0\x96");
    char *json = event_encode(&ev, &len);
    assert_non_null(json);
    assert_int_equal(decode(json, &back, err, sizeof(err)), 0);
    assert_string_equal(back.error, "bad ?( ? ?? end \xD0\x96");
    free(json);

    char s[] = "\xED\xA0\x80 \xC0\xAF \xF4\x90\x80\x80 ok";   /* surrogate, overlong, > U+10FFFF */
    event_utf8_sanitize(s);
    assert_string_equal(s, "??? ?? ???? ok");
}

/* ---- ids and trace context ---------------------------------------------------------------- */

static void test_stamp(void **state)
{
    static osago_event_t evs[256];
    id_pool_t pool = { .left = 0 };
    (void)state;
    for (int i = 0; i < 256; i++) {
        event_stamp(&evs[i], i % 2 ? &pool : NULL);   /* pooled and not */
        const char *id = evs[i].event_id;
        assert_true(event_uuid_valid(id));
        assert_int_equal(id[14], '4');                       /* version 4 */
        assert_non_null(strchr("89ab", id[19]));             /* RFC 4122 variant */
        for (const char *p = id; *p; p++)
            assert_true(*p == '-' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(evs[j].event_id, id);
    }
    /* now, in ms: after 2024 and before 2100 */
    assert_true(evs[0].occurred_at_ms > INT64_C(1704067200000));
    assert_true(evs[0].occurred_at_ms < INT64_C(4102444800000));
    assert_true(evs[255].occurred_at_ms >= evs[0].occurred_at_ms);
}

static void test_traceparent(void **state)
{
    char a[56], b[56], c[56];
    (void)state;
    event_traceparent_new(a, NULL);
    event_traceparent_new(b, NULL);
    assert_int_equal(strlen(a), 55);
    assert_true(event_traceparent_valid(a));
    assert_string_not_equal(a, b);
    assert_memory_equal(a, "00-", 3);
    assert_string_equal(a + 52, "-01");

    event_traceparent_child(a, c, NULL);
    assert_true(event_traceparent_valid(c));
    assert_memory_equal(a, c, 35);                   /* same trace id */
    assert_memory_not_equal(a + 36, c + 36, 16);     /* new parent id */
    assert_string_equal(c + 52, "-01");

    event_traceparent_child("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", c, NULL);
    assert_memory_equal(c, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
    assert_string_equal(c + 52, "-00");              /* flags kept */

    event_traceparent_child("garbage", c, NULL);     /* a new trace instead */
    assert_true(event_traceparent_valid(c));
    event_traceparent_child(NULL, c, NULL);
    assert_true(event_traceparent_valid(c));

    assert_true(event_uuid_valid("7C9E6679-7425-40DE-944B-E07FC1F90AE7"));
    assert_false(event_uuid_valid(NULL));
    assert_true(event_code_valid("a"));
    assert_true(event_code_valid("abcdefghijabcdefghijabcdefghij_-"));
    assert_false(event_code_valid("abcdefghijabcdefghijabcdefghij_-x"));
    assert_false(event_code_valid(""));
    assert_false(event_code_valid("A"));
}

/* The id pool: ids differ across its refills, and what it served is not left in it. */
static void test_id_pool(void **state)
{
    id_pool_t pool = { .left = 0 };
    char seen[100][56];
    (void)state;
    for (int i = 0; i < 100; i++) {          /* 100 spans of 8 bytes: one refill of 512 and more */
        event_traceparent_child("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                seen[i], &pool);
        assert_true(event_traceparent_valid(seen[i]));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(seen[j] + 36, seen[i] + 36);
    }
    assert_true(pool.left < sizeof(pool.buf));
    for (size_t k = pool.left; k < sizeof(pool.buf); k++)
        assert_int_equal(pool.buf[k], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_created),
        cmocka_unit_test(test_round_trip_started),
        cmocka_unit_test(test_round_trip_task),
        cmocka_unit_test(test_round_trip_result_ok),
        cmocka_unit_test(test_round_trip_result_error),
        cmocka_unit_test(test_encode_text),
        cmocka_unit_test(test_topics_and_names),
        cmocka_unit_test(test_decode_lenient_parts),
        cmocka_unit_test(test_decode_drops_foreign_members),
        cmocka_unit_test(test_decode_whitespace),
        cmocka_unit_test(test_decode_member_order_and_repeats),
        cmocka_unit_test(test_decode_malformed),
        cmocka_unit_test(test_decode_envelope_errors),
        cmocka_unit_test(test_decode_created_errors),
        cmocka_unit_test(test_decode_started_errors),
        cmocka_unit_test(test_decode_task_errors),
        cmocka_unit_test(test_decode_result_errors),
        cmocka_unit_test(test_encode_refuses_invalid),
        cmocka_unit_test(test_decode_payload_size),
        cmocka_unit_test(test_payload_check_agrees_with_encode),
        cmocka_unit_test(test_encode_sanitizes_error),
        cmocka_unit_test(test_stamp),
        cmocka_unit_test(test_traceparent),
        cmocka_unit_test(test_id_pool),
    };
    return cmocka_run_group_tests_name("worker event codec", tests, NULL, NULL);
}
