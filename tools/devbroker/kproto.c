/* Reading and patching Kafka frames in place (kproto.h). Only the non-flexible encodings are
 * read: kp_api_versions_cap keeps clients below the versions that switch to varints. */
#include "kproto.h"

#include <string.h>

/* The highest version of each API this file reads; ApiVersions answers are capped to these. */
#define KP_PRODUCE_MAX          7
#define KP_FETCH_MIN            4
#define KP_FETCH_MAX            11
#define KP_METADATA_MAX         8
#define KP_FIND_COORDINATOR_MAX 2

struct rd {
    uint8_t *p;
    size_t len, off;
    int bad;
};

static void rd_init(struct rd *r, const uint8_t *frame, size_t len)
{
    r->p = (uint8_t *)frame;
    r->len = len;
    r->off = len < 4 ? len : 4;     /* past the frame's size */
    r->bad = len < 4;
}

static int rd_has(struct rd *r, size_t n)
{
    if (r->bad || r->len - r->off < n) {
        r->bad = 1;
        return 0;
    }
    return 1;
}

static void rd_skip(struct rd *r, size_t n)
{
    if (rd_has(r, n))
        r->off += n;
}

static int64_t rd_be(struct rd *r, size_t n)
{
    uint64_t v = 0;

    if (!rd_has(r, n))
        return 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | r->p[r->off + i];
    r->off += n;
    /* sign-extend the narrower fields */
    if (n < 8 && (v >> (n * 8 - 1)) & 1)
        v |= ~(uint64_t)0 << (n * 8);
    return (int64_t)v;
}

static int16_t rd_i16(struct rd *r) { return (int16_t)rd_be(r, 2); }
static int32_t rd_i32(struct rd *r) { return (int32_t)rd_be(r, 4); }

static void put_be(uint8_t *p, uint32_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

/* A string (int16 length; -1 is null): its bytes through *s and *n. */
static void rd_str(struct rd *r, const char **s, size_t *n)
{
    int16_t len = rd_i16(r);

    *s = NULL;
    *n = 0;
    if (len < 0 || r->bad)
        return;
    if (rd_has(r, (size_t)len)) {
        *s = (const char *)r->p + r->off;
        *n = (size_t)len;
        r->off += (size_t)len;
    }
}

/* An array count; a count no frame this size could hold is an error, not a long loop. */
static int32_t rd_count(struct rd *r, size_t min_item)
{
    int32_t n = rd_i32(r);

    if (n < 0)
        return 0;
    if (min_item > 0 && (size_t)n > (r->len - r->off) / min_item) {
        r->bad = 1;
        return 0;
    }
    return n;
}

/* Unsigned varint of the flexible versions (only ApiVersions v3 is read in that form). */
static uint64_t rd_uvarint(struct rd *r)
{
    uint64_t v = 0;

    for (int shift = 0; shift < 64; shift += 7) {
        uint8_t b;

        if (!rd_has(r, 1))
            return 0;
        b = r->p[r->off++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v;
    }
    r->bad = 1;
    return 0;
}

static void rd_skip_tags(struct rd *r)
{
    for (uint64_t n = rd_uvarint(r); n > 0 && !r->bad; n--) {
        (void)rd_uvarint(r);
        rd_skip(r, (size_t)rd_uvarint(r));
    }
}

int kp_request_parse(const uint8_t *frame, size_t len, struct kp_request *req)
{
    struct rd r;

    rd_init(&r, frame, len);
    req->api_key = rd_i16(&r);
    req->api_version = rd_i16(&r);
    req->correlation_id = rd_i32(&r);
    return r.bad || req->api_key < 0 || req->api_version < 0 ? -1 : 0;
}

int kp_request_unanswered(const uint8_t *frame, size_t len, const struct kp_request *req)
{
    const char *s;
    size_t n;
    struct rd r;

    if (req->api_key != KP_PRODUCE)
        return 0;
    rd_init(&r, frame, len);
    rd_skip(&r, 8);                 /* key, version, correlation id */
    rd_str(&r, &s, &n);             /* client id */
    if (req->api_version >= 3)
        rd_str(&r, &s, &n);         /* transactional id */
    return rd_i16(&r) == 0 && !r.bad;
}

int kp_response_correlation(const uint8_t *frame, size_t len, int32_t *correlation_id)
{
    struct rd r;

    rd_init(&r, frame, len);
    *correlation_id = rd_i32(&r);
    return r.bad ? -1 : 0;
}

int kp_fetch_request_nowait(uint8_t *frame, size_t len, const struct kp_request *req,
                            void (*topic)(void *arg, const char *name, size_t n), void *arg)
{
    int16_t v = req->api_version;
    size_t wait_at, part_size = v >= 9 ? 28 : v >= 5 ? 24 : 16;
    const char *client, *name;
    size_t n;
    int32_t wait, ntopics;
    struct rd r;

    if (req->api_key != KP_FETCH || v < KP_FETCH_MIN || v > KP_FETCH_MAX)
        return -1;
    rd_init(&r, frame, len);
    rd_skip(&r, 8);                 /* key, version, correlation id */
    rd_str(&r, &client, &n);
    rd_skip(&r, 4);                 /* replica id */
    wait_at = r.off;
    wait = rd_i32(&r);
    rd_skip(&r, 4 + 4 + 1);         /* min bytes, max bytes, isolation level */
    if (v >= 7) {
        rd_skip(&r, 4);             /* session id */
        if (rd_i32(&r) != -1)       /* an incremental session must not see a request twice */
            return -1;
    }
    ntopics = rd_count(&r, 2 + 4);
    /* read it all before changing anything: an unreadable frame stays as it came */
    size_t topics_at = r.off;

    for (int32_t t = 0; t < ntopics && !r.bad; t++) {
        rd_str(&r, &name, &n);
        rd_skip(&r, (size_t)rd_count(&r, part_size) * part_size);
    }
    if (r.bad || wait < 0)
        return -1;
    r.off = topics_at;
    for (int32_t t = 0; t < ntopics; t++) {
        rd_str(&r, &name, &n);
        if (name != NULL)
            topic(arg, name, n);
        rd_skip(&r, (size_t)rd_count(&r, part_size) * part_size);
    }
    put_be(frame + wait_at, 0, 4);
    return wait;
}

int kp_fetch_response_empty(const uint8_t *frame, size_t len, int16_t version)
{
    const char *name;
    size_t n;
    struct rd r;
    int empty = 1;

    if (version < KP_FETCH_MIN || version > KP_FETCH_MAX)
        return -1;
    rd_init(&r, frame, len);
    rd_skip(&r, 4 + 4);             /* correlation id, throttle time */
    if (version >= 7) {
        if (rd_i16(&r) != 0)
            empty = 0;
        rd_skip(&r, 4);             /* session id */
    }
    for (int32_t t = rd_count(&r, 2 + 4); t > 0 && !r.bad; t--) {
        rd_str(&r, &name, &n);
        for (int32_t p = rd_count(&r, 4 + 2 + 8 + 8 + 4 + 4); p > 0 && !r.bad; p--) {
            rd_skip(&r, 4);         /* partition */
            if (rd_i16(&r) != 0)
                empty = 0;
            rd_skip(&r, 8 + 8 + (version >= 5 ? 8 : 0));  /* high watermark, LSO, log start */
            rd_skip(&r, (size_t)rd_count(&r, 16) * 16);    /* aborted transactions */
            if (version >= 11)
                rd_skip(&r, 4);     /* preferred read replica */
            int32_t records = rd_i32(&r);

            if (records > 0) {
                empty = 0;
                rd_skip(&r, (size_t)records);
            }
        }
    }
    return r.bad ? -1 : empty;
}

int kp_produce_response_topics(const uint8_t *frame, size_t len, int16_t version,
                               void (*topic)(void *arg, const char *name, size_t n), void *arg)
{
    size_t part_size = version >= 5 ? 30 : version >= 2 ? 22 : 14;
    const char *name;
    size_t n;
    struct rd r;

    if (version < 0 || version > KP_PRODUCE_MAX)
        return -1;
    rd_init(&r, frame, len);
    rd_skip(&r, 4);                 /* correlation id */
    for (int32_t t = rd_count(&r, 2 + 4); t > 0 && !r.bad; t--) {
        rd_str(&r, &name, &n);
        if (name != NULL && !r.bad)
            topic(arg, name, n);
        rd_skip(&r, (size_t)rd_count(&r, part_size) * part_size);
    }
    return r.bad ? -1 : 0;
}

/* One broker entry, at r: node id, host, port (the port rewritten). */
static void rewrite_broker(struct rd *r, int (*port_of)(void *arg, int32_t node_id), void *arg)
{
    const char *host;
    size_t n;
    int32_t node = rd_i32(r);
    int port;

    rd_str(r, &host, &n);
    if (!rd_has(r, 4))
        return;
    port = port_of(arg, node);
    if (port > 0)
        put_be(r->p + r->off, (uint32_t)port, 4);
    r->off += 4;
}

int kp_rewrite_broker_ports(uint8_t *frame, size_t len, int16_t api_key, int16_t version,
                            int (*port_of)(void *arg, int32_t node_id), void *arg)
{
    const char *s;
    size_t n;
    struct rd r;

    rd_init(&r, frame, len);
    rd_skip(&r, 4);                 /* correlation id */
    if (api_key == KP_METADATA && version <= KP_METADATA_MAX) {
        if (version >= 3)
            rd_skip(&r, 4);         /* throttle time */
        for (int32_t b = rd_count(&r, 4 + 2 + 4); b > 0 && !r.bad; b--) {
            rewrite_broker(&r, port_of, arg);
            if (version >= 1)
                rd_str(&r, &s, &n);     /* rack */
        }
        return r.bad ? -1 : 0;
    }
    if (api_key == KP_FIND_COORDINATOR && version <= KP_FIND_COORDINATOR_MAX) {
        if (version >= 1)
            rd_skip(&r, 4);         /* throttle time */
        if (rd_i16(&r) != 0)        /* an error: no coordinator in it */
            return 0;
        if (version >= 1)
            rd_str(&r, &s, &n);     /* error message */
        rewrite_broker(&r, port_of, arg);
        return r.bad ? -1 : 0;
    }
    return -1;
}

static int16_t version_cap(int16_t api_key)
{
    switch (api_key) {
    case KP_PRODUCE:
        return KP_PRODUCE_MAX;
    case KP_FETCH:
        return KP_FETCH_MAX;
    case KP_METADATA:
        return KP_METADATA_MAX;
    case KP_FIND_COORDINATOR:
        return KP_FIND_COORDINATOR_MAX;
    default:
        return -1;
    }
}

int kp_api_versions_cap(uint8_t *frame, size_t len, int16_t version)
{
    struct rd r;
    int64_t count;

    rd_init(&r, frame, len);
    rd_skip(&r, 4);                 /* correlation id (this answer's header is never flexible) */
    if (rd_i16(&r) != 0)
        return 0;                   /* an error answer (e.g. the version unsupported) lists
                                     * what the broker takes, in v0's form: left alone */
    if (version >= 3) {
        uint64_t n = rd_uvarint(&r);    /* entries + 1; 0 is a null array */

        if (r.bad || n == 0 || n - 1 > (r.len - r.off) / 6)
            return -1;
        count = (int64_t)(n - 1);
    } else {
        count = rd_count(&r, 6);
    }
    if (r.bad)
        return -1;
    for (int64_t i = 0; i < count && !r.bad; i++) {
        int16_t key = rd_i16(&r), cap = version_cap(key);

        rd_skip(&r, 2);             /* min version */
        if (!rd_has(&r, 2))
            break;
        if (cap >= 0 && rd_i16(&r) > cap)
            put_be(r.p + r.off - 2, (uint16_t)cap, 2);
        else if (cap < 0)
            rd_skip(&r, 2);
        if (version >= 3)
            rd_skip_tags(&r);
    }
    return r.bad ? -1 : 0;
}
