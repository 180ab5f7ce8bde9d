/*
 * Unit tests of the devbroker's Kafka frame code (tools/devbroker/kproto.c), built with ASan and
 * UBSan by `make build/san/test_devbroker_kproto`, run by t/32-devbroker-unit.t.
 *
 * The frames are built field by field after the Apache Kafka protocol's layouts, and every call
 * goes through run(), which copies the frame into a heap block of exactly the length passed: a
 * read or write past it is an ASan report, so the truncation sweeps below check bounds as well
 * as results. A patched frame is compared with one built independently with the patched values,
 * never with the input patched by hand, so both the offsets and the untouched bytes are checked.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "kproto.h"

#define TOPIC_A "osago.application.created"
#define TOPIC_B "osago.application.task-result"

/* ---- frame builder ------------------------------------------------------------------------- */

struct fb {
    uint8_t p[2048];
    size_t len;
};

static void fb_put(struct fb *b, uint64_t v, size_t n)
{
    assert_true(b->len + n <= sizeof(b->p));
    for (size_t i = 0; i < n; i++)
        b->p[b->len + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    b->len += n;
}

static void fb_i8(struct fb *b, int8_t v) { fb_put(b, (uint8_t)v, 1); }
static void fb_i16(struct fb *b, int16_t v) { fb_put(b, (uint16_t)v, 2); }
static void fb_i32(struct fb *b, int32_t v) { fb_put(b, (uint32_t)v, 4); }
static void fb_i64(struct fb *b, int64_t v) { fb_put(b, (uint64_t)v, 8); }

static void fb_raw(struct fb *b, const void *p, size_t n)
{
    assert_true(b->len + n <= sizeof(b->p));
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* A non-flexible string: int16 length, -1 for null. */
static void fb_str(struct fb *b, const char *s)
{
    if (s == NULL) {
        fb_i16(b, -1);
        return;
    }
    fb_i16(b, (int16_t)strlen(s));
    fb_raw(b, s, strlen(s));
}

static void fb_uvarint(struct fb *b, uint64_t v)
{
    while (v >= 0x80) {
        fb_put(b, (v & 0x7f) | 0x80, 1);
        v >>= 7;
    }
    fb_put(b, v, 1);
}

/* Opaque bytes that would look like huge counts and lengths to a reader that lost its place. */
static void fb_junk(struct fb *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fb_put(b, i % 2 ? 0xff : 0x7f, 1);
}

static void fb_begin(struct fb *b)
{
    b->len = 0;
    fb_i32(b, 0);               /* the size, patched by fb_end */
}

static size_t fb_end(struct fb *b)
{
    size_t len = b->len;

    b->len = 0;
    fb_i32(b, (int32_t)(len - 4));
    b->len = len;
    return len;
}

/* ---- calling the code under test ------------------------------------------------------------ */

enum fn {
    FN_PARSE,
    FN_UNANSWERED,
    FN_CORRELATION,
    FN_FETCH_REQUEST,
    FN_FETCH_RESPONSE,
    FN_PRODUCE_RESPONSE,
    FN_PORTS,
    FN_API_VERSIONS,
};

static const char *const fn_names[] = {
    "kp_request_parse", "kp_request_unanswered", "kp_response_correlation",
    "kp_fetch_request_nowait", "kp_fetch_response_empty", "kp_produce_response_topics",
    "kp_rewrite_broker_ports", "kp_api_versions_cap",
};

struct call {
    enum fn fn;
    int16_t api_key;            /* the request's (or for FN_PORTS the answer's) api key */
    int16_t version;
};

/* Everything a call handed back besides its result. */
struct seen {
    char topics[8][64];
    size_t ntopics;
    int32_t nodes[8];
    size_t nnodes;
    struct kp_request req;
    int32_t correlation_id;
};

static void on_topic(void *arg, const char *name, size_t n)
{
    struct seen *s = arg;

    assert_non_null(name);
    assert_true(s->ntopics < 8 && n < sizeof(s->topics[0]));
    memcpy(s->topics[s->ntopics], name, n);
    s->topics[s->ntopics][n] = '\0';
    s->ntopics++;
}

/* The relay's ports: 1 and 2 are relayed, 3 is not (0), 4 answers nonsense (-1). */
static int on_port(void *arg, int32_t node_id)
{
    struct seen *s = arg;

    assert_true(s->nnodes < 8);
    s->nodes[s->nnodes++] = node_id;
    switch (node_id) {
    case 1:
        return 30001;
    case 2:
        return 30002;
    case 4:
        return -1;
    default:
        return 0;
    }
}

/* c on a heap copy of frame[0..len); the bytes it left go to out (len of them). */
static int run(const struct call *c, const uint8_t *frame, size_t len, uint8_t *out,
               struct seen *seen)
{
    uint8_t *copy = malloc(len);
    struct kp_request req = { .api_key = c->api_key, .api_version = c->version };
    int rc = -2;

    assert_non_null(copy);
    memcpy(copy, frame, len);
    memset(seen, 0, sizeof(*seen));
    switch (c->fn) {
    case FN_PARSE:
        rc = kp_request_parse(copy, len, &seen->req);
        break;
    case FN_UNANSWERED:
        rc = kp_request_unanswered(copy, len, &req);
        break;
    case FN_CORRELATION:
        rc = kp_response_correlation(copy, len, &seen->correlation_id);
        break;
    case FN_FETCH_REQUEST:
        rc = kp_fetch_request_nowait(copy, len, &req, on_topic, seen);
        break;
    case FN_FETCH_RESPONSE:
        rc = kp_fetch_response_empty(copy, len, c->version);
        break;
    case FN_PRODUCE_RESPONSE:
        rc = kp_produce_response_topics(copy, len, c->version, on_topic, seen);
        break;
    case FN_PORTS:
        rc = kp_rewrite_broker_ports(copy, len, c->api_key, c->version, on_port, seen);
        break;
    case FN_API_VERSIONS:
        rc = kp_api_versions_cap(copy, len, c->version);
        break;
    }
    if (out != NULL)
        memcpy(out, copy, len);
    free(copy);
    return rc;
}

/* The whole frame: the result, the frame after (always the same length: the call cannot change
 * it) against expected. */
static int run_whole(const struct call *c, const struct fb *in, const struct fb *expected,
                     struct seen *seen)
{
    uint8_t out[sizeof(in->p)];
    int rc = run(c, in->p, in->len, out, seen);

    assert_int_equal(in->len, expected->len);
    assert_memory_equal(out, expected->p, in->len);
    return rc;
}

/*
 * Every prefix of a frame, its size field left saying the whole: a prefix that stops before
 * byte need (the end of what the function has to read) is refused (-1; 0 for
 * kp_request_unanswered, which answers yes or no), one that does not gives the whole frame's
 * result and bytes. The functions read only as far as they need, so fields after need (the
 * forgotten topics of a fetch, the throttle time of most answers) may be cut without notice.
 */
static void check_prefixes(const struct call *c, const struct fb *in, const struct fb *expected,
                           size_t need, int whole_rc)
{
    int refused = c->fn == FN_UNANSWERED ? 0 : -1;
    int rewrites = c->fn == FN_PORTS || c->fn == FN_API_VERSIONS;
    uint8_t out[sizeof(in->p)];
    struct seen seen;

    assert_true(need <= in->len && in->len == expected->len);
    for (size_t cut = 4; cut < in->len; cut++) {
        int rc = run(c, in->p, cut, out, &seen);

        if (cut >= need) {
            if (rc != whole_rc)
                fail_msg("%s v%d: %zu of %zu bytes (%zu read): %d, the whole frame gave %d",
                         fn_names[c->fn], c->version, cut, in->len, need, rc, whole_rc);
            assert_memory_equal(out, expected->p, cut);
            continue;
        }
        if (rc != refused)
            fail_msg("%s v%d: %zu of %zu bytes (%zu needed): %d, not %d", fn_names[c->fn],
                     c->version, cut, in->len, need, rc, refused);
        if (!rewrites) {
            /* the fetch request promises to stay as it came when refused */
            assert_memory_equal(out, in->p, cut);
        } else {
            /* a rewriter may have got part way (kproto.h allows it), but only to right values */
            for (size_t i = 0; i < cut; i++)
                if (out[i] != in->p[i] && out[i] != expected->p[i])
                    fail_msg("%s v%d: %zu of %zu bytes: byte %zu became %#x", fn_names[c->fn],
                             c->version, cut, in->len, i, out[i]);
        }
        if (c->fn == FN_FETCH_REQUEST && seen.ntopics != 0)
            fail_msg("kp_fetch_request_nowait v%d: %zu of %zu bytes: refused but reported %zu "
                     "topics", c->version, cut, in->len, seen.ntopics);
    }
}

/* ---- requests ------------------------------------------------------------------------------- */

static void request_header(struct fb *b, int16_t key, int16_t version, int32_t correlation_id)
{
    fb_begin(b);
    fb_i16(b, key);
    fb_i16(b, version);
    fb_i32(b, correlation_id);
    fb_str(b, "rdkafka");
}

/* Produce request (v0..7). *acks_end: where acks ends, all kp_request_unanswered reads. */
static size_t produce_request(struct fb *b, int16_t v, const char *transactional_id,
                              int16_t acks, size_t *acks_end)
{
    request_header(b, KP_PRODUCE, v, 41);
    if (v >= 3)
        fb_str(b, transactional_id);
    fb_i16(b, acks);
    *acks_end = b->len;
    fb_i32(b, 30000);           /* timeout */
    fb_i32(b, 1);
    fb_str(b, TOPIC_A);
    fb_i32(b, 1);
    fb_i32(b, 0);               /* partition */
    fb_i32(b, 61);              /* records */
    fb_junk(b, 61);
    return fb_end(b);
}

static void fetch_request_topic(struct fb *b, int16_t v, const char *name, int32_t partitions)
{
    fb_str(b, name);
    fb_i32(b, partitions);
    for (int32_t p = 0; p < partitions; p++) {
        fb_i32(b, p);
        if (v >= 9)
            fb_i32(b, 5);       /* current leader epoch */
        fb_i64(b, 1000 + p);    /* fetch offset */
        if (v >= 5)
            fb_i64(b, -1);      /* log start offset */
        fb_i32(b, 1048576);     /* partition max bytes */
    }
}

/* A Fetch request (v4..11) up to its topic count. */
static void fetch_request_head(struct fb *b, int16_t v, int32_t wait, int32_t epoch)
{
    request_header(b, KP_FETCH, v, 1234);
    fb_i32(b, -1);              /* replica id */
    fb_i32(b, wait);
    fb_i32(b, 1);               /* min bytes */
    fb_i32(b, 52428800);        /* max bytes */
    fb_i8(b, 1);                /* isolation level */
    if (v >= 7) {
        fb_i32(b, epoch == -1 ? 0 : 777);   /* session id */
        fb_i32(b, epoch);
    }
}

/* Fetch request (v4..11) for two topics. *topics_end: where the topics end, all that
 * kp_fetch_request_nowait reads. */
static size_t fetch_request(struct fb *b, int16_t v, int32_t wait, int32_t epoch,
                            size_t *topics_end)
{
    fetch_request_head(b, v, wait, epoch);
    fb_i32(b, 2);
    fetch_request_topic(b, v, TOPIC_A, 2);
    fetch_request_topic(b, v, TOPIC_B, 1);
    *topics_end = b->len;
    if (v >= 7) {
        fb_i32(b, 1);           /* forgotten topics */
        fb_str(b, TOPIC_B);
        fb_i32(b, 1);
        fb_i32(b, 3);
    }
    if (v >= 11)
        fb_str(b, "rack-a");
    return fb_end(b);
}

static void test_request_parse(void **state)
{
    const struct call c = { FN_PARSE, -1, -1 };
    struct fb b;
    struct seen seen;
    size_t at;

    (void)state;
    produce_request(&b, 3, NULL, 1, &at);
    assert_int_equal(run_whole(&c, &b, &b, &seen), 0);
    assert_int_equal(seen.req.api_key, KP_PRODUCE);
    assert_int_equal(seen.req.api_version, 3);
    assert_int_equal(seen.req.correlation_id, 41);
    check_prefixes(&c, &b, &b, 12, 0);

    fetch_request(&b, 11, 500, -1, &at);
    assert_int_equal(run_whole(&c, &b, &b, &seen), 0);
    assert_int_equal(seen.req.api_key, KP_FETCH);
    assert_int_equal(seen.req.api_version, 11);
    assert_int_equal(seen.req.correlation_id, 1234);

    /* a negative key or version is no request header */
    request_header(&b, -1, 0, 1);
    fb_end(&b);
    assert_int_equal(run_whole(&c, &b, &b, &seen), -1);
    request_header(&b, KP_METADATA, -3, 1);
    fb_end(&b);
    assert_int_equal(run_whole(&c, &b, &b, &seen), -1);
}

static void test_response_correlation(void **state)
{
    const struct call c = { FN_CORRELATION, -1, -1 };
    struct fb b;
    struct seen seen;

    (void)state;
    fb_begin(&b);
    fb_i32(&b, -559038737);     /* 0xdeadbeef: the sign must survive */
    fb_i16(&b, 0);
    fb_end(&b);
    assert_int_equal(run_whole(&c, &b, &b, &seen), 0);
    assert_int_equal(seen.correlation_id, -559038737);
    check_prefixes(&c, &b, &b, 8, 0);
}

static void test_request_unanswered(void **state)
{
    static const int16_t versions[] = { 0, 1, 2, 3, 5, 7 };
    struct fb b;
    struct seen seen;
    size_t need;

    (void)state;
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        const struct call c = { FN_UNANSWERED, KP_PRODUCE, versions[i] };

        produce_request(&b, versions[i], NULL, 0, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), 1);
        check_prefixes(&c, &b, &b, need, 1);
        /* a transactional id must be stepped over, not read as acks */
        if (versions[i] >= 3) {
            produce_request(&b, versions[i], "osago-tx", 0, &need);
            assert_int_equal(run_whole(&c, &b, &b, &seen), 1);
            check_prefixes(&c, &b, &b, need, 1);
        }
        produce_request(&b, versions[i], NULL, 1, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), 0);
        produce_request(&b, versions[i], NULL, -1, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), 0);
    }

    /* only a produce goes unanswered, whatever bytes sit where acks would be */
    {
        const struct call c = { FN_UNANSWERED, KP_FETCH, 4 };

        fetch_request(&b, 4, 0, -1, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), 0);
    }
}

static void check_fetch_request(int16_t v, int32_t wait)
{
    const struct call c = { FN_FETCH_REQUEST, KP_FETCH, v };
    struct fb in, expected;
    struct seen seen;
    size_t need, need2;

    fetch_request(&in, v, wait, -1, &need);
    fetch_request(&expected, v, 0, -1, &need2);
    assert_int_equal(run_whole(&c, &in, &expected, &seen), wait);
    assert_int_equal(seen.ntopics, 2);
    assert_string_equal(seen.topics[0], TOPIC_A);
    assert_string_equal(seen.topics[1], TOPIC_B);
    check_prefixes(&c, &in, &expected, need, wait);
}

static void test_fetch_request(void **state)
{
    (void)state;
    for (int16_t v = 4; v <= 11; v++)
        check_fetch_request(v, 500);
    check_fetch_request(4, 0);
    check_fetch_request(11, 2147483647);
}

static void test_fetch_request_refused(void **state)
{
    struct fb b;
    struct seen seen;
    size_t need;

    (void)state;
    /* an incremental fetch session (epoch 0 opens one, above that uses one): the broker would
     * see a held request twice */
    for (int16_t v = 7; v <= 11; v += 4) {
        const struct call c = { FN_FETCH_REQUEST, KP_FETCH, v };

        fetch_request(&b, v, 500, 0, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), -1);
        assert_int_equal(seen.ntopics, 0);
        check_prefixes(&c, &b, &b, b.len, -1);
        fetch_request(&b, v, 500, 3, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), -1);
        assert_int_equal(seen.ntopics, 0);
    }
    /* outside v4..11 (v3 has no isolation level, v12 is flexible) */
    {
        const struct call c3 = { FN_FETCH_REQUEST, KP_FETCH, 3 };
        const struct call c12 = { FN_FETCH_REQUEST, KP_FETCH, 12 };

        fetch_request(&b, 4, 500, -1, &need);
        assert_int_equal(run_whole(&c3, &b, &b, &seen), -1);
        fetch_request(&b, 11, 500, -1, &need);
        assert_int_equal(run_whole(&c12, &b, &b, &seen), -1);
    }
    /* not a fetch at all */
    {
        const struct call c = { FN_FETCH_REQUEST, KP_METADATA, 4 };

        fetch_request(&b, 4, 500, -1, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), -1);
    }
    /* a negative wait is no wait to hold for */
    {
        const struct call c = { FN_FETCH_REQUEST, KP_FETCH, 4 };

        fetch_request(&b, 4, -5, -1, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), -1);
        assert_int_equal(seen.ntopics, 0);
    }
}

/* ---- fetch answers -------------------------------------------------------------------------- */

struct fetch_answer {
    int16_t error;              /* top level (v7+) */
    int16_t part_error;         /* of the last partition */
    int32_t records;            /* bytes of records in the last partition, -1 null */
};

static void fetch_response_partition(struct fb *b, int16_t v, int32_t index, int16_t error,
                                     int32_t aborted, int32_t records)
{
    fb_i32(b, index);
    fb_i16(b, error);
    fb_i64(b, 42);              /* high watermark */
    fb_i64(b, 42);              /* last stable offset */
    if (v >= 5)
        fb_i64(b, 0);           /* log start offset */
    fb_i32(b, aborted);
    for (int32_t i = 0; i < aborted; i++) {
        fb_i64(b, 9000 + i);    /* producer id */
        fb_i64(b, 40);          /* first offset */
    }
    if (v >= 11)
        fb_i32(b, -1);          /* preferred read replica */
    fb_i32(b, records);
    if (records > 0)
        fb_junk(b, (size_t)records);
}

/* Two topics, three partitions: the first two never carry records (one with an aborted
 * transaction, one with null records and aborted list), the last as a says. */
static size_t fetch_response(struct fb *b, int16_t v, const struct fetch_answer *a)
{
    fb_begin(b);
    fb_i32(b, 1234);
    fb_i32(b, 0);               /* throttle time */
    if (v >= 7) {
        fb_i16(b, a->error);
        fb_i32(b, 0);           /* session id */
    }
    fb_i32(b, 2);
    fb_str(b, TOPIC_A);
    fb_i32(b, 2);
    fetch_response_partition(b, v, 0, 0, 1, 0);
    fetch_response_partition(b, v, 1, 0, -1, -1);
    fb_str(b, TOPIC_B);
    fb_i32(b, 1);
    fetch_response_partition(b, v, 0, a->part_error, 0, a->records);
    return fb_end(b);
}

static void check_fetch_response(int16_t v, const struct fetch_answer *a, int want)
{
    const struct call c = { FN_FETCH_RESPONSE, -1, v };
    struct fb b;
    struct seen seen;

    fetch_response(&b, v, a);
    if (run_whole(&c, &b, &b, &seen) != want)
        fail_msg("fetch answer v%d (error %d, partition error %d, %d record bytes): not %d", v,
                 a->error, a->part_error, a->records, want);
    /* the records are the last field: every byte is read */
    check_prefixes(&c, &b, &b, b.len, want);
}

static void test_fetch_response(void **state)
{
    static const int16_t versions[] = { 4, 5, 7, 11 };

    (void)state;
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        int16_t v = versions[i];

        check_fetch_response(v, &(struct fetch_answer){ 0, 0, 0 }, 1);
        check_fetch_response(v, &(struct fetch_answer){ 0, 0, -1 }, 1);
        check_fetch_response(v, &(struct fetch_answer){ 0, 0, 68 }, 0);
        check_fetch_response(v, &(struct fetch_answer){ 0, 1, 0 }, 0);    /* out of range */
        if (v >= 7)
            check_fetch_response(v, &(struct fetch_answer){ 71, 0, 0 }, 0);
    }
    /* an answer with no topics at all is empty too */
    {
        const struct call c = { FN_FETCH_RESPONSE, -1, 7 };
        struct fb b;
        struct seen seen;

        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i32(&b, 0);
        fb_i16(&b, 0);
        fb_i32(&b, 0);
        fb_i32(&b, 0);
        fb_end(&b);
        assert_int_equal(run_whole(&c, &b, &b, &seen), 1);
    }
    /* versions it does not read */
    {
        const struct call c3 = { FN_FETCH_RESPONSE, -1, 3 };
        const struct call c12 = { FN_FETCH_RESPONSE, -1, 12 };
        struct fb b;
        struct seen seen;

        fetch_response(&b, 4, &(struct fetch_answer){ 0, 0, 0 });
        assert_int_equal(run_whole(&c3, &b, &b, &seen), -1);
        fetch_response(&b, 11, &(struct fetch_answer){ 0, 0, 0 });
        assert_int_equal(run_whole(&c12, &b, &b, &seen), -1);
    }
}

/* ---- produce answers ------------------------------------------------------------------------ */

static void produce_response_partition(struct fb *b, int16_t v, int32_t index)
{
    fb_i32(b, index);
    fb_i16(b, 0);
    fb_i64(b, 100 + index);     /* base offset */
    if (v >= 2)
        fb_i64(b, -1);          /* log append time */
    if (v >= 5)
        fb_i64(b, 0);           /* log start offset */
}

/* *topics_end: where the topics end (v1+ has the throttle time after them). */
static size_t produce_response(struct fb *b, int16_t v, size_t *topics_end)
{
    fb_begin(b);
    fb_i32(b, 77);
    fb_i32(b, 2);
    fb_str(b, TOPIC_A);
    fb_i32(b, 2);
    produce_response_partition(b, v, 0);
    produce_response_partition(b, v, 1);
    fb_str(b, TOPIC_B);
    fb_i32(b, 1);
    produce_response_partition(b, v, 3);
    *topics_end = b->len;
    if (v >= 1)
        fb_i32(b, 0);           /* throttle time */
    return fb_end(b);
}

static void test_produce_response(void **state)
{
    static const int16_t versions[] = { 0, 1, 2, 5, 7 };
    struct fb b;
    struct seen seen;
    size_t need;

    (void)state;
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        const struct call c = { FN_PRODUCE_RESPONSE, -1, versions[i] };

        produce_response(&b, versions[i], &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), 0);
        assert_int_equal(seen.ntopics, 2);
        assert_string_equal(seen.topics[0], TOPIC_A);
        assert_string_equal(seen.topics[1], TOPIC_B);
        check_prefixes(&c, &b, &b, need, 0);
    }
    {
        const struct call c = { FN_PRODUCE_RESPONSE, -1, 8 };

        produce_response(&b, 7, &need);
        assert_int_equal(run_whole(&c, &b, &b, &seen), -1);
    }
}

/* ---- broker addresses ----------------------------------------------------------------------- */

static const struct broker {
    int32_t node;
    const char *host;
    const char *rack;
} brokers[4] = {
    { 1, "localhost", "rack-a" },
    { 2, "127.0.0.1", NULL },
    { 3, "127.0.0.1", "" },
    { 4, "mock-4.example", "rack-b" },
};

static const int32_t mock_ports[4] = { 9092, 9093, 9094, 9095 };
/* on_port's answers: 3 is unknown (0), 4 gets -1: both keep their ports */
static const int32_t relay_ports[4] = { 30001, 30002, 9094, 9095 };

/* Metadata answer (v0..8) with the 4 brokers on ports, then one topic. *brokers_end: where the
 * brokers end, all kp_rewrite_broker_ports reads. */
static size_t metadata_response(struct fb *b, int16_t v, const int32_t ports[4],
                                size_t *brokers_end)
{
    fb_begin(b);
    fb_i32(b, 99);
    if (v >= 3)
        fb_i32(b, 0);           /* throttle time */
    fb_i32(b, 4);
    for (size_t i = 0; i < 4; i++) {
        fb_i32(b, brokers[i].node);
        fb_str(b, brokers[i].host);
        fb_i32(b, ports[i]);
        if (v >= 1)
            fb_str(b, brokers[i].rack);
    }
    *brokers_end = b->len;
    if (v >= 2)
        fb_str(b, "mockCluster1");
    if (v >= 1)
        fb_i32(b, 1);           /* controller id */
    fb_i32(b, 1);
    fb_i16(b, 0);
    fb_str(b, TOPIC_A);
    if (v >= 1)
        fb_i8(b, 0);            /* is internal */
    fb_i32(b, 1);
    fb_i16(b, 0);
    fb_i32(b, 0);               /* partition */
    fb_i32(b, 2);               /* leader */
    if (v >= 7)
        fb_i32(b, 0);           /* leader epoch */
    fb_i32(b, 2);               /* replicas */
    fb_i32(b, 2);
    fb_i32(b, 1);
    fb_i32(b, 1);               /* in sync */
    fb_i32(b, 2);
    if (v >= 5)
        fb_i32(b, 0);           /* offline replicas */
    if (v >= 8) {
        fb_i32(b, -2147483647 - 1);     /* topic authorized operations */
        fb_i32(b, -2147483647 - 1);     /* cluster authorized operations */
    }
    return fb_end(b);
}

static void test_metadata_ports(void **state)
{
    static const int16_t versions[] = { 0, 1, 2, 3, 5, 7, 8 };
    struct fb in, expected;
    struct seen seen;
    size_t need, need2;

    (void)state;
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        const struct call c = { FN_PORTS, KP_METADATA, versions[i] };

        metadata_response(&in, versions[i], mock_ports, &need);
        metadata_response(&expected, versions[i], relay_ports, &need2);
        assert_int_equal(run_whole(&c, &in, &expected, &seen), 0);
        assert_int_equal(seen.nnodes, 4);
        for (size_t n = 0; n < 4; n++)
            assert_int_equal(seen.nodes[n], brokers[n].node);
        check_prefixes(&c, &in, &expected, need, 0);
    }
    /* v9 is flexible: not read, not touched */
    {
        const struct call c = { FN_PORTS, KP_METADATA, 9 };

        metadata_response(&in, 8, mock_ports, &need);
        assert_int_equal(run_whole(&c, &in, &in, &seen), -1);
        assert_int_equal(seen.nnodes, 0);
    }
    /* not an answer with brokers in it */
    {
        const struct call c = { FN_PORTS, KP_FETCH, 4 };

        metadata_response(&in, 0, mock_ports, &need);
        assert_int_equal(run_whole(&c, &in, &in, &seen), -1);
        assert_int_equal(seen.nnodes, 0);
    }
}

/* FindCoordinator answer (v0..2). *error_end: where the error code ends. */
static size_t coordinator_response(struct fb *b, int16_t v, int16_t error, int32_t port,
                                   size_t *error_end)
{
    fb_begin(b);
    fb_i32(b, 5);
    if (v >= 1)
        fb_i32(b, 0);           /* throttle time */
    fb_i16(b, error);
    *error_end = b->len;
    if (v >= 1)
        fb_str(b, error != 0 ? "The coordinator is not available." : NULL);
    fb_i32(b, 1);               /* node id: one on_port knows */
    fb_str(b, "localhost");
    fb_i32(b, port);
    return fb_end(b);
}

static void test_coordinator_ports(void **state)
{
    struct fb in, expected;
    struct seen seen;
    size_t need;

    (void)state;
    for (int16_t v = 0; v <= 2; v++) {
        const struct call c = { FN_PORTS, KP_FIND_COORDINATOR, v };

        coordinator_response(&in, v, 0, 9092, &need);
        coordinator_response(&expected, v, 0, 30001, &need);
        assert_int_equal(run_whole(&c, &in, &expected, &seen), 0);
        assert_int_equal(seen.nnodes, 1);
        assert_int_equal(seen.nodes[0], 1);
        check_prefixes(&c, &in, &expected, in.len, 0);

        /* an error answer names no coordinator, whatever its fields say */
        coordinator_response(&in, v, 15, 9092, &need);
        assert_int_equal(run_whole(&c, &in, &in, &seen), 0);
        assert_int_equal(seen.nnodes, 0);
        check_prefixes(&c, &in, &in, need, 0);
    }
    {
        const struct call c = { FN_PORTS, KP_FIND_COORDINATOR, 3 };

        coordinator_response(&in, 2, 0, 9092, &need);
        assert_int_equal(run_whole(&c, &in, &in, &seen), -1);
        assert_int_equal(seen.nnodes, 0);
    }
}

/* ---- ApiVersions ---------------------------------------------------------------------------- */

struct api {
    int16_t key, min, max;
};

/* ApiVersions answer: v0..2 non-flexible, v3 with a compact array and tagged fields (an entry
 * for key 1 carries one, to be stepped over). *array_end: where the keys end. */
static size_t api_versions_response(struct fb *b, int16_t v, int16_t error,
                                    const struct api *apis, size_t n, size_t *array_end)
{
    fb_begin(b);
    fb_i32(b, 3);
    fb_i16(b, error);
    if (v >= 3)
        fb_uvarint(b, n + 1);
    else
        fb_i32(b, (int32_t)n);
    for (size_t i = 0; i < n; i++) {
        fb_i16(b, apis[i].key);
        fb_i16(b, apis[i].min);
        fb_i16(b, apis[i].max);
        if (v >= 3 && apis[i].key == 1) {
            fb_uvarint(b, 1);
            fb_uvarint(b, 7);
            fb_uvarint(b, 3);
            fb_raw(b, "\x7f\xff\xff", 3);
        } else if (v >= 3) {
            fb_uvarint(b, 0);
        }
    }
    *array_end = b->len;
    if (v >= 1)
        fb_i32(b, 0);           /* throttle time */
    if (v >= 3) {
        fb_uvarint(b, 1);       /* tagged fields: supported features, an empty compact array */
        fb_uvarint(b, 0);
        fb_uvarint(b, 1);
        fb_uvarint(b, 1);
    }
    return fb_end(b);
}

static const struct api offered[] = {
    { 0, 3, 10 },               /* Produce */
    { 1, 4, 15 },               /* Fetch */
    { 2, 0, 8 },                /* ListOffsets: not capped */
    { 3, 1, 12 },               /* Metadata */
    { 10, 1, 4 },               /* FindCoordinator */
    { 18, 0, 3 },               /* ApiVersions: not capped */
    { 19, 2, 7 },               /* CreateTopics: not capped */
};

static const struct api capped[] = {
    { 0, 3, 7 },
    { 1, 4, 11 },
    { 2, 0, 8 },
    { 3, 1, 8 },
    { 10, 1, 2 },
    { 18, 0, 3 },
    { 19, 2, 7 },
};

static const struct api within_caps[] = {
    { 0, 0, 5 },
    { 1, 4, 11 },
    { 3, 0, 8 },
    { 10, 0, 1 },
    { 18, 0, 2 },
};

#define N_APIS (sizeof(offered) / sizeof(offered[0]))

static void test_api_versions_cap(void **state)
{
    struct fb in, expected;
    struct seen seen;
    size_t need, need2;

    (void)state;
    for (int16_t v = 0; v <= 3; v++) {
        const struct call c = { FN_API_VERSIONS, -1, v };

        api_versions_response(&in, v, 0, offered, N_APIS, &need);
        api_versions_response(&expected, v, 0, capped, N_APIS, &need2);
        assert_int_equal(run_whole(&c, &in, &expected, &seen), 0);
        check_prefixes(&c, &in, &expected, need, 0);

        /* versions already within the caps are left as they are */
        api_versions_response(&in, v, 0, within_caps, sizeof(within_caps) / sizeof(within_caps[0]),
                              &need);
        assert_int_equal(run_whole(&c, &in, &in, &seen), 0);
        check_prefixes(&c, &in, &in, need, 0);
    }
}

/* Enough keys for v3's count to take two varint bytes. */
static void test_api_versions_v3_many(void **state)
{
    const struct call c = { FN_API_VERSIONS, -1, 3 };
    struct api in_apis[140], out_apis[140];
    struct fb in, expected;
    struct seen seen;
    size_t need, need2;

    (void)state;
    for (int16_t i = 0; i < 140; i++) {
        in_apis[i] = (struct api){ i, 0, 20 };
        out_apis[i] = in_apis[i];
    }
    out_apis[0].max = 7;
    out_apis[1].max = 11;
    out_apis[3].max = 8;
    out_apis[10].max = 2;
    api_versions_response(&in, 3, 0, in_apis, 140, &need);
    api_versions_response(&expected, 3, 0, out_apis, 140, &need2);
    assert_int_equal(run_whole(&c, &in, &expected, &seen), 0);
    check_prefixes(&c, &in, &expected, need, 0);
}

/* An error answer lists what the broker takes in v0's form, whatever version was asked: it goes
 * on as it came. */
static void test_api_versions_error(void **state)
{
    struct fb in;
    struct seen seen;
    size_t need;

    (void)state;
    for (int16_t v = 0; v <= 3; v++) {
        const struct call c = { FN_API_VERSIONS, -1, v };

        api_versions_response(&in, 0, 35, offered, N_APIS, &need);
        assert_int_equal(run_whole(&c, &in, &in, &seen), 0);
        check_prefixes(&c, &in, &in, 4 + 4 + 2, 0);
    }
}

/* ---- counts no frame could hold ------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Refused, unchanged, and at once (a loop over 2^31 entries would take seconds). */
static void check_absurd(const struct call *c, const struct fb *b, const char *what)
{
    struct seen seen;
    double t0 = now_s();
    int rc = run_whole(c, b, b, &seen);
    double took = now_s() - t0;

    if (rc != -1)
        fail_msg("%s v%d, %s: %d, not -1", fn_names[c->fn], c->version, what, rc);
    if (took > 1.0)
        fail_msg("%s v%d, %s: took %.3f s", fn_names[c->fn], c->version, what, took);
}

#define HUGE_COUNT 0x7fffffff

static void test_absurd_counts(void **state)
{
    struct fb b;

    (void)state;
    {
        const struct call c = { FN_FETCH_REQUEST, KP_FETCH, 11 };

        fetch_request_head(&b, 11, 500, -1);
        fb_i32(&b, HUGE_COUNT);
        fetch_request_topic(&b, 11, TOPIC_A, 1);
        fb_end(&b);
        check_absurd(&c, &b, "topics");

        fetch_request_head(&b, 11, 500, -1);
        fb_i32(&b, 1);
        fb_str(&b, TOPIC_A);
        fb_i32(&b, HUGE_COUNT);
        fb_junk(&b, 64);
        fb_end(&b);
        check_absurd(&c, &b, "partitions");

        fetch_request_head(&b, 11, 500, -1);
        fb_i32(&b, 1);
        fb_i16(&b, 0x7fff);     /* a topic name longer than the frame */
        fb_junk(&b, 64);
        fb_end(&b);
        check_absurd(&c, &b, "topic name");
    }
    {
        const struct call c = { FN_FETCH_RESPONSE, -1, 11 };
        /* the count at each level in turn: topics, partitions, aborted transactions, records */
        for (int level = 0; level < 4; level++) {
            fb_begin(&b);
            fb_i32(&b, 1);
            fb_i32(&b, 0);
            fb_i16(&b, 0);
            fb_i32(&b, 0);
            fb_i32(&b, level == 0 ? HUGE_COUNT : 1);
            fb_str(&b, TOPIC_A);
            fb_i32(&b, level == 1 ? HUGE_COUNT : 1);
            fb_i32(&b, 0);
            fb_i16(&b, 0);
            fb_i64(&b, 0);
            fb_i64(&b, 0);
            fb_i64(&b, 0);
            fb_i32(&b, level == 2 ? HUGE_COUNT : 0);
            fb_i32(&b, -1);
            fb_i32(&b, level == 3 ? HUGE_COUNT : 0);
            fb_junk(&b, 64);
            fb_end(&b);
            check_absurd(&c, &b, (const char *[]){ "topics", "partitions", "aborted",
                                                   "records" }[level]);
        }
    }
    {
        const struct call c = { FN_PRODUCE_RESPONSE, -1, 7 };

        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i32(&b, HUGE_COUNT);
        fb_str(&b, TOPIC_A);
        fb_i32(&b, 0);
        fb_i32(&b, 0);
        fb_end(&b);
        check_absurd(&c, &b, "topics");

        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i32(&b, 1);
        fb_str(&b, TOPIC_A);
        fb_i32(&b, HUGE_COUNT);
        fb_junk(&b, 64);
        fb_end(&b);
        check_absurd(&c, &b, "partitions");
    }
    {
        const struct call c = { FN_PORTS, KP_METADATA, 8 };

        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i32(&b, 0);
        fb_i32(&b, HUGE_COUNT);
        fb_i32(&b, 1);
        fb_str(&b, "localhost");
        fb_i32(&b, 9092);
        fb_str(&b, NULL);
        fb_junk(&b, 64);
        fb_end(&b);
        check_absurd(&c, &b, "brokers");
    }
    {
        const struct call c0 = { FN_API_VERSIONS, -1, 0 };
        const struct call c3 = { FN_API_VERSIONS, -1, 3 };

        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i16(&b, 0);
        fb_i32(&b, HUGE_COUNT);
        fb_junk(&b, 64);
        fb_end(&b);
        check_absurd(&c0, &b, "keys");

        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i16(&b, 0);
        fb_uvarint(&b, (uint64_t)HUGE_COUNT + 1);
        fb_junk(&b, 64);
        fb_end(&b);
        check_absurd(&c3, &b, "keys");

        /* a varint that never ends within ten bytes */
        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i16(&b, 0);
        for (int i = 0; i < 12; i++)
            fb_put(&b, 0xff, 1);
        fb_end(&b);
        check_absurd(&c3, &b, "unending varint");

        /* a null compact array (length 0) holds no keys to read */
        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i16(&b, 0);
        fb_uvarint(&b, 0);
        fb_i32(&b, 0);
        fb_uvarint(&b, 0);
        fb_end(&b);
        check_absurd(&c3, &b, "null keys");
    }
}

/* Tagged fields whose count or size no frame could hold: refused. The key before them may have
 * been capped already (kproto.h allows a partial rewrite of a broken frame), so only the result
 * and the bounds (ASan) are checked. */
static void test_api_versions_v3_absurd_tags(void **state)
{
    const struct call c = { FN_API_VERSIONS, -1, 3 };
    struct fb b;
    struct seen seen;

    (void)state;
    for (int which = 0; which < 2; which++) {
        fb_begin(&b);
        fb_i32(&b, 1);
        fb_i16(&b, 0);
        fb_uvarint(&b, 3);
        for (int i = 0; i < 2; i++) {
            fb_i16(&b, 18);
            fb_i16(&b, 0);
            fb_i16(&b, 3);
            if (which == 0) {
                fb_uvarint(&b, HUGE_COUNT);         /* tag count */
            } else {
                fb_uvarint(&b, 1);
                fb_uvarint(&b, 0);
                fb_uvarint(&b, HUGE_COUNT);         /* tag size */
            }
        }
        fb_i32(&b, 0);
        fb_uvarint(&b, 0);
        fb_end(&b);
        assert_int_equal(run(&c, b.p, b.len, NULL, &seen), -1);
    }
}

/* A v3 key count of 2^63 (nine 0x80 bytes, then 0x01): refused, and without the signed
 * overflow that computing it as int64 minus one would be (UBSan reported it). */
static void test_api_versions_v3_count_overflow(void **state)
{
    const struct call c = { FN_API_VERSIONS, -1, 3 };
    struct fb b;

    (void)state;
    fb_begin(&b);
    fb_i32(&b, 1);
    fb_i16(&b, 0);
    fb_uvarint(&b, UINT64_C(1) << 63);
    fb_junk(&b, 64);
    fb_end(&b);
    check_absurd(&c, &b, "keys 2^63");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_parse),
        cmocka_unit_test(test_response_correlation),
        cmocka_unit_test(test_request_unanswered),
        cmocka_unit_test(test_fetch_request),
        cmocka_unit_test(test_fetch_request_refused),
        cmocka_unit_test(test_fetch_response),
        cmocka_unit_test(test_produce_response),
        cmocka_unit_test(test_metadata_ports),
        cmocka_unit_test(test_coordinator_ports),
        cmocka_unit_test(test_api_versions_cap),
        cmocka_unit_test(test_api_versions_v3_many),
        cmocka_unit_test(test_api_versions_error),
        cmocka_unit_test(test_absurd_counts),
        cmocka_unit_test(test_api_versions_v3_absurd_tags),
        cmocka_unit_test(test_api_versions_v3_count_overflow),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
