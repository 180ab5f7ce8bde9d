/*
 * The Kafka event codec. Encoding uses yajl_gen; decoding is one pass of yajl's parser (see
 * event_decode). The application payload travels as a JSON object inside the event and
 * is kept as JSON text in the struct; it is re-generated token by token, numbers from their
 * original text, so it arrives exactly as it was sent (up to whitespace).
 *
 * Unknown members are ignored on decode: a newer release may add fields to version 1 events
 * while the previous release still consumes them (expand, then contract).
 */
#include "event.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

#define EVENT_MAX_ATTEMPT 10
#define EVENT_MAX_DEPTH   64   /* the edge's payloads are a few levels deep; this bounds recursion */
#define EVENT_BAD_TEXT \
    "holds a string that is not UTF-8 text (a NUL, a surrogate, an overlong form)"

static const char *const event_topics[] = {
    "osago.application.created",
    "osago.application.started",
    "osago.application.task",
    "osago.application.task-result",
};

static const char *const event_names[] = {
    "OsagoApplicationCreated",
    "OsagoApplicationStarted",
    "OsagoApplicationTask",
    "OsagoApplicationTaskResult",
};

const char *event_topic(event_type_t type)
{
    return (unsigned)type <= EV_TASK_RESULT ? event_topics[type] : NULL;
}

const char *event_type_name(event_type_t type)
{
    return (unsigned)type <= EV_TASK_RESULT ? event_names[type] : NULL;
}

/* ---- small validators ------------------------------------------------------------------- */

static int is_hex(int c, int lower_only)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (!lower_only && c >= 'A' && c <= 'F');
}

static int all_hex(const char *s, size_t n, int lower_only, int *all_zero)
{
    int zero = 1;
    for (size_t i = 0; i < n; i++) {
        if (!is_hex((unsigned char)s[i], lower_only))
            return 0;
        if (s[i] != '0')
            zero = 0;
    }
    if (all_zero != NULL)
        *all_zero = zero;
    return 1;
}

int event_uuid_valid(const char *s)
{
    if (s == NULL || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!is_hex((unsigned char)s[i], 0)) {
            return 0;
        }
    }
    return 1;
}

int event_code_valid(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    if (n < 1 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int event_traceparent_valid(const char *s)
{
    int zero_trace, zero_span;
    if (s == NULL || strlen(s) != 55 || s[2] != '-' || s[35] != '-' || s[52] != '-')
        return 0;
    if (!all_hex(s, 2, 1, NULL) || strncmp(s, "ff", 2) == 0)
        return 0;
    if (!all_hex(s + 3, 32, 1, &zero_trace) || !all_hex(s + 36, 16, 1, &zero_span) ||
        !all_hex(s + 53, 2, 1, NULL))
        return 0;
    return !zero_trace && !zero_span;
}

/* "8734.12": up to 10 integer digits and 2 decimals, which numeric(12,2) holds. */
static int premium_valid(const char *s)
{
    size_t i = 0, digits = 0, decimals = 0;
    while (s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (digits < 1 || digits > 10)
        return 0;
    if (s[i] == '.') {
        i++;
        while (s[i] >= '0' && s[i] <= '9')
            i++, decimals++;
        if (decimals < 1 || decimals > 2)
            return 0;
    }
    return s[i] == '\0';
}

static int fits(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

/* The length of the UTF-8 sequence at p (avail bytes there) as RFC 3629 has it: no overlong
 * form, no surrogate, nothing above U+10FFFF; 0 when p holds none. yajl checks only the shape
 * of a sequence, and decodes the escape of a lone surrogate into one. */
static size_t utf8_seq(const unsigned char *p, size_t avail)
{
    unsigned cp, min;
    size_t   need, k;

    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xE0) == 0xC0)
        need = 1, min = 0x80;
    else if ((p[0] & 0xF0) == 0xE0)
        need = 2, min = 0x800;
    else if ((p[0] & 0xF8) == 0xF0)
        need = 3, min = 0x10000;
    else
        return 0;
    cp = p[0] & (0x3Fu >> need);
    for (k = 1; k <= need && k < avail && (p[k] & 0xC0) == 0x80; k++)
        cp = (cp << 6) | (p[k] & 0x3F);
    if (k <= need || cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return need + 1;
}

/* Whether s[len] is text every consumer takes: UTF-8 by utf8_seq, and no NUL, which yajl
 * decodes from \u0000 and which PostgreSQL, and every C string after it, cannot hold. */
static int text_ok(const unsigned char *s, size_t len)
{
    for (size_t i = 0, n; i < len; i += n) {
        n = 1;
        if (s[i] != '\0' && s[i] < 0x80)
            continue;           /* ASCII, most of any payload: no call */
        if (s[i] == '\0' || (n = utf8_seq(s + i, len - i)) == 0)
            return 0;
    }
    return 1;
}

void event_utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t len = strlen(s), i = 0, n;

    while (i < len) {
        n = utf8_seq(p + i, len - i);
        if (n == 0)
            p[i++] = '?';
        else
            i += n;
    }
}

/* ---- random ids and time ---------------------------------------------------------------- */

/* The kernel's generator: OpenSSL's RAND_bytes costs several times more for 8-16 bytes (a
 * DRBG behind locks), and every event and insurer call draws an id. */
static void kernel_random(unsigned char *buf, size_t n)
{
    if (getrandom(buf, n, 0) == (ssize_t)n)
        return;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r = read(fd, buf, n);
        close(fd);
        if (r == (ssize_t)n)
            return;
    }
    /* Never reached on a working system; ids must still differ, not be secret. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned seed = (unsigned)ts.tv_nsec ^ (unsigned)ts.tv_sec ^ (unsigned)getpid();
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)rand_r(&seed);
}

/* A system call per id was a fifth of the executor's system calls (each one dearer than its
 * work on a virtual machine): a pool serves 32 UUIDs per call. Bytes served are wiped. */
static void random_bytes(unsigned char *buf, size_t n, id_pool_t *pool)
{
    if (pool == NULL || n > sizeof(pool->buf)) {
        kernel_random(buf, n);
        return;
    }
    if (pool->left < n) {
        kernel_random(pool->buf, sizeof(pool->buf));
        pool->left = sizeof(pool->buf);
    }
    pool->left -= n;
    memcpy(buf, pool->buf + pool->left, n);
    memset(pool->buf + pool->left, 0, n);
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

static void nonzero_random(unsigned char *buf, size_t n, id_pool_t *pool)
{
    for (;;) {
        random_bytes(buf, n, pool);
        for (size_t i = 0; i < n; i++)
            if (buf[i] != 0)
                return;
    }
}

void event_stamp(osago_event_t *ev, id_pool_t *pool)
{
    unsigned char b[16];
    char hex[32];
    struct timespec ts;

    random_bytes(b, sizeof(b), pool);
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);   /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);   /* RFC 4122 variant */
    hex_encode(b, 16, hex);
    snprintf(ev->event_id, sizeof(ev->event_id), "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8,
             hex + 12, hex + 16, hex + 20);

    clock_gettime(CLOCK_REALTIME, &ts);
    ev->occurred_at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void event_traceparent_new(char out[56], id_pool_t *pool)
{
    unsigned char trace[16], span[8];
    nonzero_random(trace, sizeof(trace), pool);
    nonzero_random(span, sizeof(span), pool);
    memcpy(out, "00-", 3);
    hex_encode(trace, 16, out + 3);
    out[35] = '-';
    hex_encode(span, 8, out + 36);
    memcpy(out + 52, "-01", 4);
}

void event_traceparent_child(const char *parent, char out[56], id_pool_t *pool)
{
    if (!event_traceparent_valid(parent)) {
        event_traceparent_new(out, pool);
        return;
    }
    unsigned char span[8];
    nonzero_random(span, sizeof(span), pool);
    memcpy(out, "00-", 3);
    memcpy(out + 3, parent + 3, 32);
    out[35] = '-';
    hex_encode(span, 8, out + 36);
    out[52] = '-';
    memcpy(out + 53, parent + 53, 2);
    out[55] = '\0';
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void format_time(int64_t ms, char *buf, size_t cap)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, cap - n, ".%03dZ", (int)(ms % 1000));
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* "2025-06-15T10:20:30.123Z" (1..9 fraction digits; UTC only). */
static int parse_time(const char *s, int64_t *ms)
{
    static const int mdays[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int y, mo, d, h, mi, sec, frac = 0, nfrac = 0;

    if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
        s[16] != ':')
        return -1;
    if (digits(s, 4, &y) || digits(s + 5, 2, &mo) || digits(s + 8, 2, &d) ||
        digits(s + 11, 2, &h) || digits(s + 14, 2, &mi) || digits(s + 17, 2, &sec))
        return -1;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (nfrac < 3)
                frac = frac * 10 + (*p - '0');
            nfrac++, p++;
        }
        if (nfrac < 1 || nfrac > 9)
            return -1;
        for (int i = nfrac; i < 3; i++)
            frac *= 10;
    }
    if (strcmp(p, "Z") != 0)
        return -1;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] ||
        (mo == 2 && d == 29 && !leap) || h > 23 || mi > 59 || sec > 59)
        return -1;
    *ms = ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + (int64_t)sec * 1000 + frac;
    return 0;
}

/* ---- validation of a filled struct (shared by encode and decode) ------------------------ */

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

int event_validate(const osago_event_t *ev, char *err, size_t errlen)
{
    if ((unsigned)ev->type > EV_TASK_RESULT)
        FAIL("type must be a known event type");
    if (ev->version != 1)
        FAIL("version must be 1");
    if (!fits(ev->event_id, sizeof(ev->event_id)) || !event_uuid_valid(ev->event_id))
        FAIL("event_id must be a UUID");
    if (!fits(ev->application_id, sizeof(ev->application_id)) ||
        !event_uuid_valid(ev->application_id))
        FAIL("application_id must be a UUID");
    if (ev->occurred_at_ms < 0 || ev->occurred_at_ms > INT64_C(253402300799999))
        FAIL("occurred_at must be an RFC 3339 UTC time with milliseconds");
    if (!fits(ev->traceparent, sizeof(ev->traceparent)) ||
        !event_traceparent_valid(ev->traceparent))
        FAIL("traceparent must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");

    switch (ev->type) {
    case EV_CREATED:
        if (!fits(ev->partner, sizeof(ev->partner)) || ev->partner[0] == '\0')
            FAIL("data.partner must be a string of 1..64 bytes");
        if (ev->payload == NULL)
            FAIL("data.payload must be an object");
        break;
    case EV_STARTED:
        if (ev->n_insurers < 1 || ev->n_insurers > EVENT_MAX_INSURERS)
            FAIL("data.insurers must be an array of 1..%d insurer codes", EVENT_MAX_INSURERS);
        for (int i = 0; i < ev->n_insurers; i++)
            if (!fits(ev->insurers[i], sizeof(ev->insurers[i])) ||
                !event_code_valid(ev->insurers[i]))
                FAIL("data.insurers[%d] must be an insurer code ([a-z0-9_-]{1,32})", i);
        break;
    case EV_TASK:
    case EV_TASK_RESULT:
        if (!fits(ev->insurer, sizeof(ev->insurer)) || !event_code_valid(ev->insurer))
            FAIL("data.insurer must be an insurer code ([a-z0-9_-]{1,32})");
        if (ev->attempt < 1 || ev->attempt > EVENT_MAX_ATTEMPT)
            FAIL("data.attempt must be 1..%d", EVENT_MAX_ATTEMPT);
        if (ev->type == EV_TASK) {
            if (ev->payload == NULL)
                FAIL("data.payload must be an object");
        } else if (ev->ok) {
            if (!fits(ev->premium_rub, sizeof(ev->premium_rub)) || !premium_valid(ev->premium_rub))
                FAIL("data.premium_rub must be a decimal string such as \"8734.12\"");
        } else {
            if (!fits(ev->error, sizeof(ev->error)) || ev->error[0] == '\0')
                FAIL("data.error must be a non-empty string");
        }
        break;
    }
    return 0;
}

/*
 * How many bytes a JSON number (its syntax checked by yajl) can grow by once written without
 * an exponent, as PostgreSQL's numeric prints it: 1e131000 is 8 bytes in the payload and
 * 131,001 in what the sweeper reads back. An upper bound, saturating far above any limit.
 */
static size_t number_growth(const char *s, size_t len)
{
    const char *end = s + len, *p = s;
    size_t      exp = 0;

    while (p < end && *p != 'e' && *p != 'E')
        p++;
    if (p == end)
        return 0;
    for (p++; p < end; p++)
        if (*p >= '0' && *p <= '9' && exp < (size_t) EVENT_MAX_PAYLOAD * 2)
            exp = exp * 10 + (size_t) (*p - '0');
    return exp + 2;     /* the digits the exponent stands for, a leading "0." */
}

/* A sum of number_growth, exact up to a gigabyte and held there: no size_t wraps, even 32 bits
 * wide (one number adds at most about ten million). */
static size_t grown(size_t sum, size_t more)
{
    sum += more;
    return sum > ((size_t) 1 << 30) ? (size_t) 1 << 30 : sum;
}

/* ---- encoding --------------------------------------------------------------------------- */

/* Parser callbacks that re-generate every token into a yajl_gen: copies the payload into the
 * event while checking that it is JSON and an object. */
struct forward {
    yajl_gen g;
    int      depth;
    int      tokens;
    int      not_object;
    int      too_deep;
    int      bad_text;      /* a string or name that text_ok refuses */
    size_t   growth;        /* number_growth of its numbers */
};

static int fw_begin(struct forward *f, int is_map)
{
    if (f->tokens++ == 0 && !is_map) {
        f->not_object = 1;
        return 0;
    }
    return 1;
}

static int fw_open(struct forward *f, int is_map)
{
    if (!fw_begin(f, is_map))
        return 0;
    if (++f->depth > EVENT_MAX_DEPTH) {
        f->too_deep = 1;
        return 0;
    }
    return 1;
}

static int fw_null(void *ctx)
{
    struct forward *f = ctx;
    return fw_begin(f, 0) && yajl_gen_null(f->g) == yajl_gen_status_ok;
}

static int fw_bool(void *ctx, int v)
{
    struct forward *f = ctx;
    return fw_begin(f, 0) && yajl_gen_bool(f->g, v) == yajl_gen_status_ok;
}

static int fw_number(void *ctx, const char *s, size_t len)
{
    struct forward *f = ctx;
    f->growth = grown(f->growth, number_growth(s, len));
    return fw_begin(f, 0) && yajl_gen_number(f->g, s, len) == yajl_gen_status_ok;
}

static int fw_text(struct forward *f, const unsigned char *s, size_t len)
{
    if (!text_ok(s, len)) {
        f->bad_text = 1;
        return 0;
    }
    return yajl_gen_string(f->g, s, len) == yajl_gen_status_ok;
}

static int fw_string(void *ctx, const unsigned char *s, size_t len)
{
    struct forward *f = ctx;
    return fw_begin(f, 0) && fw_text(f, s, len);
}

static int fw_start_map(void *ctx)
{
    struct forward *f = ctx;
    return fw_open(f, 1) && yajl_gen_map_open(f->g) == yajl_gen_status_ok;
}

static int fw_map_key(void *ctx, const unsigned char *s, size_t len)
{
    return fw_text(ctx, s, len);
}

static int fw_end_map(void *ctx)
{
    struct forward *f = ctx;
    f->depth--;
    return yajl_gen_map_close(f->g) == yajl_gen_status_ok;
}

static int fw_start_array(void *ctx)
{
    struct forward *f = ctx;
    return fw_open(f, 0) && yajl_gen_array_open(f->g) == yajl_gen_status_ok;
}

static int fw_end_array(void *ctx)
{
    struct forward *f = ctx;
    f->depth--;
    return yajl_gen_array_close(f->g) == yajl_gen_status_ok;
}

static const yajl_callbacks forward_callbacks = {
    fw_null, fw_bool, NULL, NULL, fw_number, fw_string,
    fw_start_map, fw_map_key, fw_end_map, fw_start_array, fw_end_array,
};

/* The bytes g holds so far. */
static size_t gen_len(yajl_gen g)
{
    const unsigned char *buf;
    size_t               len = 0;

    yajl_gen_get_buf(g, &buf, &len);
    return len;
}

/*
 * Copies payload into g, as a member's value (after its name: yajl writes the ':' first) or
 * as the whole of g; on failure err says why (when err is not NULL). The size limit is on the
 * payload as generated, compact: the sweeper's copy comes from jsonb with a space after every
 * ',' and ':', which the decoder never sees.
 */
static int gen_payload(yajl_gen g, const char *payload, int as_member, char *err, size_t errlen)
{
    struct forward f = { .g = g };
    yajl_handle    h = yajl_alloc(&forward_callbacks, NULL, &f);
    size_t         len = strlen(payload), before = gen_len(g), compact = 0;
    int            ok;

    if (h == NULL) {
        if (err != NULL)
            snprintf(err, errlen, "out of memory");
        return -1;
    }
    ok = yajl_parse(h, (const unsigned char *)payload, len) == yajl_status_ok &&
         yajl_complete_parse(h) == yajl_status_ok && f.tokens > 0 && !f.not_object;
    if (ok)
        compact = gen_len(g) - before - (as_member ? 1 : 0);
    if (ok && compact + f.growth > EVENT_MAX_PAYLOAD) {
        ok = 0;
        if (err != NULL)
            snprintf(err, errlen, "over %d bytes with its numbers written out (%zu)",
                     EVENT_MAX_PAYLOAD, compact + f.growth);
    } else if (!ok && err != NULL) {
        if (f.not_object || f.tokens == 0) {
            snprintf(err, errlen, "not a JSON object");
        } else if (f.too_deep) {
            snprintf(err, errlen, "nested deeper than %d levels", EVENT_MAX_DEPTH);
        } else if (f.bad_text) {
            snprintf(err, errlen, "%s", EVENT_BAD_TEXT);
        } else {
            unsigned char *msg = yajl_get_error(h, 0, (const unsigned char *)payload, len);

            snprintf(err, errlen, "not JSON: %s", msg != NULL ? (const char *)msg : "?");
            err[strcspn(err, "\n")] = '\0';
            if (msg != NULL)
                yajl_free_error(h, msg);
        }
    }
    yajl_free(h);
    return ok ? 0 : -1;
}

int event_payload_check(const char *payload, char *err, size_t errlen)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    int      rc;

    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    yajl_gen_config(g, yajl_gen_validate_utf8, 1);     /* exactly what event_encode will ask */
    rc = gen_payload(g, payload, 0, err, errlen);
    yajl_gen_free(g);
    return rc;
}

static void gen_str(yajl_gen g, const char *s)
{
    yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static void gen_kv_str(yajl_gen g, const char *k, const char *v)
{
    gen_str(g, k);
    gen_str(g, v);
}

static void gen_kv_int(yajl_gen g, const char *k, long long v)
{
    gen_str(g, k);
    yajl_gen_integer(g, v);
}

char *event_encode(const osago_event_t *ev, size_t *len)
{
    char err[128], when[40], text[sizeof(ev->error)];
    char *out = NULL;

    if (event_validate(ev, err, sizeof(err)) < 0)
        return NULL;
    yajl_gen g = yajl_gen_alloc(NULL);
    if (g == NULL)
        return NULL;
    /* invalid UTF-8 must fail here rather than produce an event no consumer can decode */
    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    format_time(ev->occurred_at_ms, when, sizeof(when));
    yajl_gen_map_open(g);
    gen_kv_str(g, "type", event_names[ev->type]);
    gen_kv_int(g, "version", ev->version);
    gen_kv_str(g, "event_id", ev->event_id);
    gen_kv_str(g, "application_id", ev->application_id);
    gen_kv_str(g, "occurred_at", when);
    gen_kv_str(g, "traceparent", ev->traceparent);
    gen_str(g, "data");
    yajl_gen_map_open(g);
    switch (ev->type) {
    case EV_CREATED:
        gen_kv_str(g, "partner", ev->partner);
        gen_str(g, "payload");
        if (gen_payload(g, ev->payload, 1, NULL, 0) < 0)
            goto out;
        break;
    case EV_STARTED:
        gen_str(g, "insurers");
        yajl_gen_array_open(g);
        for (int i = 0; i < ev->n_insurers; i++)
            gen_str(g, ev->insurers[i]);
        yajl_gen_array_close(g);
        break;
    case EV_TASK:
        gen_kv_str(g, "insurer", ev->insurer);
        gen_kv_int(g, "attempt", ev->attempt);
        gen_str(g, "payload");
        if (gen_payload(g, ev->payload, 1, NULL, 0) < 0)
            goto out;
        break;
    case EV_TASK_RESULT:
        gen_kv_str(g, "insurer", ev->insurer);
        gen_kv_int(g, "attempt", ev->attempt);
        gen_kv_str(g, "status", ev->ok ? "ok" : "error");
        if (ev->ok) {
            gen_kv_str(g, "premium_rub", ev->premium_rub);
        } else {
            memcpy(text, ev->error, sizeof(text));
            event_utf8_sanitize(text);
            gen_kv_str(g, "error", text);
        }
        break;
    }
    yajl_gen_map_close(g);
    if (yajl_gen_map_close(g) != yajl_gen_status_ok)
        goto out;

    const unsigned char *buf;
    size_t n;
    if (yajl_gen_get_buf(g, &buf, &n) != yajl_gen_status_ok)
        goto out;
    out = malloc(n + 1);
    if (out != NULL) {
        memcpy(out, buf, n);
        out[n] = '\0';
        *len = n;
    }
out:
    yajl_gen_free(g);
    return out;
}

/* ---- decoding --------------------------------------------------------------------------- */

/*
 * One pass of yajl's parser over the event: the members this codec knows are picked up as
 * they come (the first of a repeated name counts), the payload object is re-generated into
 * its text on the way, and everything else is skipped. What is wrong is judged once the text
 * is known to be well-formed JSON, in a fixed order, so an event gets the same reason
 * whatever the order of its members. Nothing is built that is not kept: an executor decodes
 * thousands of tasks a second.
 */
typedef enum {
    F_NONE = 0,
    F_TYPE, F_VERSION, F_EVENT_ID, F_APPLICATION_ID, F_OCCURRED_AT, F_TRACEPARENT, F_DATA,
    F_PARTNER, F_INSURERS, F_INSURER, F_ATTEMPT, F_STATUS, F_PREMIUM, F_ERROR, F_PAYLOAD,
    F_N
} field_t;

static const char *const root_names[] = {
    [F_TYPE] = "type", [F_VERSION] = "version", [F_EVENT_ID] = "event_id",
    [F_APPLICATION_ID] = "application_id", [F_OCCURRED_AT] = "occurred_at",
    [F_TRACEPARENT] = "traceparent", [F_DATA] = "data",
};

static const char *const data_names[] = {
    [F_PARTNER] = "partner", [F_INSURERS] = "insurers", [F_INSURER] = "insurer",
    [F_ATTEMPT] = "attempt", [F_STATUS] = "status", [F_PREMIUM] = "premium_rub",
    [F_ERROR] = "error", [F_PAYLOAD] = "payload",
};

enum { V_MISSING = 0, V_OK, V_BAD };   /* what a member's value turned out to be */

struct decoder {
    osago_event_t *ev;
    int       depth;            /* containers open, for the depth limit */
    int       too_deep;
    int       bad_text;         /* a payload string or name that text_ok refuses */
    int       root_object;      /* the event is an object (its first token opened a map) */
    int       in_data;          /* at the top level of the data object */
    int       in_insurers;      /* at the top level of data.insurers */
    int       skip;             /* > 0: inside a container nobody reads */
    int       payload_depth;    /* > 0: inside the payload, which goes to gen */
    size_t    payload_growth;   /* number_growth of the payload's numbers */
    field_t   key;              /* the member whose value comes next */
    unsigned char seen[F_N];    /* V_* per member */
    char      type[32];
    char      occurred_at[64];
    char      status[8];
    long long version, attempt;
    size_t    n_insurers;
    long      bad_insurer;      /* the first element that is not a code, or -1 */
    yajl_gen  g;
};

static field_t field_named(const char *const *names, size_t n_names, const unsigned char *s,
                           size_t len)
{
    for (size_t i = 0; i < n_names; i++)
        if (names[i] != NULL && strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return (field_t)i;
    return F_NONE;
}

/* A JSON number that is an integer (yajl has checked the syntax) and fits in a long long. */
static int integer_text(const char *s, size_t len, long long *out)
{
    char buf[24];
    char *end;

    if (len == 0 || len >= sizeof(buf) || memchr(s, '.', len) || memchr(s, 'e', len) ||
        memchr(s, 'E', len))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    *out = strtoll(buf, &end, 10);
    return errno == 0 && *end == '\0' ? 0 : -1;
}

/* A string member's value into dst[cap] when it fits. */
static int take_string(const unsigned char *s, size_t len, char *dst, size_t cap)
{
    if (len >= cap || !text_ok(s, len))
        return V_BAD;
    memcpy(dst, s, len);
    dst[len] = '\0';
    return V_OK;
}

/* Copies s[len] into dst[cap] (up to an embedded NUL), cut without splitting a UTF-8 sequence:
 * an insurer's long error text is not worth losing the result over. */
static void copy_utf8(char *dst, size_t cap, const unsigned char *s, size_t len)
{
    size_t n = strnlen((const char *)s, len);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && (s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* The value of the member d->key, when it is a string (s) or a number (number set). */
static void dec_scalar(struct decoder *d, const unsigned char *s, size_t len, int number)
{
    osago_event_t *ev = d->ev;
    field_t f = d->key;
    int v = V_BAD;

    d->key = F_NONE;
    if (f == F_NONE || d->seen[f] != V_MISSING)
        return;
    if (number) {
        if (f == F_VERSION && integer_text((const char *)s, len, &d->version) == 0)
            v = V_OK;
        else if (f == F_ATTEMPT && integer_text((const char *)s, len, &d->attempt) == 0)
            v = V_OK;
    } else if (s != NULL) {
        switch (f) {
        case F_TYPE:           v = take_string(s, len, d->type, sizeof(d->type)); break;
        case F_EVENT_ID:       v = take_string(s, len, ev->event_id, sizeof(ev->event_id)); break;
        case F_APPLICATION_ID:
            v = take_string(s, len, ev->application_id, sizeof(ev->application_id));
            break;
        case F_OCCURRED_AT:
            v = take_string(s, len, d->occurred_at, sizeof(d->occurred_at));
            break;
        case F_TRACEPARENT:
            v = take_string(s, len, ev->traceparent, sizeof(ev->traceparent));
            break;
        case F_PARTNER:        v = take_string(s, len, ev->partner, sizeof(ev->partner)); break;
        case F_INSURER:        v = take_string(s, len, ev->insurer, sizeof(ev->insurer)); break;
        case F_STATUS:         v = take_string(s, len, d->status, sizeof(d->status)); break;
        case F_PREMIUM:
            v = take_string(s, len, ev->premium_rub, sizeof(ev->premium_rub));
            break;
        case F_ERROR:
            if (len > 0 && s[0] != '\0') {
                copy_utf8(ev->error, sizeof(ev->error), s, len);
                /* yajl lets overlong forms and surrogates through; PostgreSQL would refuse
                 * them, and event_encode replaces them the same way */
                event_utf8_sanitize(ev->error);
                v = V_OK;
            }
            break;
        default:
            break;
        }
    }
    d->seen[f] = (unsigned char)v;
}

/* A scalar token; s is NULL for null and booleans. */
static int dec_token(struct decoder *d, const unsigned char *s, size_t len, int number)
{
    if (d->skip > 0)
        return 1;
    if (d->payload_depth > 0)
        return 1;   /* forwarded by the caller */
    if (d->in_insurers) {
        size_t i = d->n_insurers++;
        if (s == NULL || number || len >= sizeof(d->ev->insurers[0]) || !text_ok(s, len)) {
            if (d->bad_insurer < 0)
                d->bad_insurer = (long)i;
        } else if (i < EVENT_MAX_INSURERS) {
            memcpy(d->ev->insurers[i], s, len);
            d->ev->insurers[i][len] = '\0';
        }
        return 1;
    }
    if (d->depth > 0)
        dec_scalar(d, s, len, number);
    return 1;
}

static int dec_null(void *ctx)
{
    struct decoder *d = ctx;
    return dec_token(d, NULL, 0, 0) &&
           (d->payload_depth == 0 || yajl_gen_null(d->g) == yajl_gen_status_ok);
}

static int dec_bool(void *ctx, int b)
{
    struct decoder *d = ctx;
    return dec_token(d, NULL, 0, 0) &&
           (d->payload_depth == 0 || yajl_gen_bool(d->g, b) == yajl_gen_status_ok);
}

static int dec_number(void *ctx, const char *s, size_t len)
{
    struct decoder *d = ctx;
    if (d->payload_depth > 0)
        d->payload_growth = grown(d->payload_growth, number_growth(s, len));
    return dec_token(d, (const unsigned char *)s, len, 1) &&
           (d->payload_depth == 0 || yajl_gen_number(d->g, s, len) == yajl_gen_status_ok);
}

/* A string or member name of the payload, copied into gen. */
static int dec_payload_text(struct decoder *d, const unsigned char *s, size_t len)
{
    if (!text_ok(s, len)) {
        d->bad_text = 1;
        return 0;
    }
    return yajl_gen_string(d->g, s, len) == yajl_gen_status_ok;
}

static int dec_string(void *ctx, const unsigned char *s, size_t len)
{
    struct decoder *d = ctx;
    return dec_token(d, s, len, 0) &&
           (d->payload_depth == 0 || dec_payload_text(d, s, len));
}

static int dec_open(struct decoder *d, int is_map)
{
    field_t f;

    if (++d->depth > EVENT_MAX_DEPTH + 2) {
        d->too_deep = 1;
        return 0;
    }
    if (d->skip > 0) {
        d->skip++;
        return 1;
    }
    if (d->payload_depth > 0) {
        d->payload_depth++;
        return (is_map ? yajl_gen_map_open(d->g) : yajl_gen_array_open(d->g)) ==
               yajl_gen_status_ok;
    }
    if (d->in_insurers) {           /* an element that is not a string */
        if (d->bad_insurer < 0)
            d->bad_insurer = (long)d->n_insurers;
        d->n_insurers++;
        d->skip = 1;
        return 1;
    }
    if (d->depth == 1) {            /* the event itself */
        d->root_object = is_map;
        d->skip = !is_map;
        return 1;
    }
    f = d->key;
    d->key = F_NONE;
    if (f == F_NONE || d->seen[f] != V_MISSING) {
        d->skip = 1;
        return 1;
    }
    d->seen[f] = V_OK;
    if (f == F_DATA && is_map) {
        d->in_data = 1;
    } else if (f == F_INSURERS && !is_map) {
        d->in_insurers = 1;
    } else if (f == F_PAYLOAD && is_map) {
        d->payload_depth = 1;
        return yajl_gen_map_open(d->g) == yajl_gen_status_ok;
    } else {
        d->seen[f] = V_BAD;
        d->skip = 1;
    }
    return 1;
}

static int dec_close(struct decoder *d, int is_map)
{
    d->depth--;
    if (d->skip > 0) {
        d->skip--;
        return 1;
    }
    if (d->payload_depth > 0) {
        d->payload_depth--;
        return (is_map ? yajl_gen_map_close(d->g) : yajl_gen_array_close(d->g)) ==
               yajl_gen_status_ok;
    }
    if (d->in_insurers)
        d->in_insurers = 0;
    else if (d->in_data)
        d->in_data = 0;
    return 1;
}

static int dec_start_map(void *ctx) { return dec_open(ctx, 1); }
static int dec_end_map(void *ctx) { return dec_close(ctx, 1); }
static int dec_start_array(void *ctx) { return dec_open(ctx, 0); }
static int dec_end_array(void *ctx) { return dec_close(ctx, 0); }

static int dec_map_key(void *ctx, const unsigned char *s, size_t len)
{
    struct decoder *d = ctx;

    if (d->skip > 0)
        return 1;
    if (d->payload_depth > 0)
        return dec_payload_text(d, s, len);
    if (d->in_data)
        d->key = field_named(data_names, sizeof(data_names) / sizeof(data_names[0]), s, len);
    else
        d->key = field_named(root_names, sizeof(root_names) / sizeof(root_names[0]), s, len);
    return 1;
}

static const yajl_callbacks decoder_callbacks = {
    dec_null, dec_bool, NULL, NULL, dec_number, dec_string,
    dec_start_map, dec_map_key, dec_end_map, dec_start_array, dec_end_array,
};

/* What is wrong with the members picked up, in a fixed order; fills the rest of ev. */
static int decode_check(struct decoder *d, char *err, size_t errlen)
{
    osago_event_t *ev = d->ev;
    int type = -1;

    if (!d->root_object)
        FAIL("event must be a JSON object");
    if (d->seen[F_TYPE] == V_OK)
        for (int i = EV_CREATED; i <= EV_TASK_RESULT; i++)
            if (strcmp(d->type, event_names[i]) == 0)
                type = i;
    if (type < 0)
        FAIL("type must be a known event type");
    ev->type = (event_type_t)type;

    if (d->seen[F_VERSION] != V_OK || d->version != 1)
        FAIL("version must be 1");
    ev->version = 1;
    if (d->seen[F_EVENT_ID] != V_OK || !event_uuid_valid(ev->event_id))
        FAIL("event_id must be a UUID");
    if (d->seen[F_APPLICATION_ID] != V_OK || !event_uuid_valid(ev->application_id))
        FAIL("application_id must be a UUID");
    /* ids compare as text downstream (Kafka keys, logs): one spelling */
    for (char *p = ev->event_id; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'F' ? *p + 32 : *p);
    for (char *p = ev->application_id; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'F' ? *p + 32 : *p);
    if (d->seen[F_OCCURRED_AT] != V_OK || parse_time(d->occurred_at, &ev->occurred_at_ms) < 0)
        FAIL("occurred_at must be an RFC 3339 UTC time with milliseconds");
    if (d->seen[F_TRACEPARENT] != V_OK)
        ev->traceparent[0] = '\0';   /* reported by event_validate */
    if (d->seen[F_DATA] != V_OK)
        FAIL("data must be an object");

    switch (ev->type) {
    case EV_CREATED:
        if (d->seen[F_PARTNER] != V_OK)
            FAIL("data.partner must be a string of 1..64 bytes");
        break;
    case EV_STARTED:
        if (d->seen[F_INSURERS] != V_OK || d->n_insurers < 1 ||
            d->n_insurers > EVENT_MAX_INSURERS)
            FAIL("data.insurers must be an array of 1..%d insurer codes", EVENT_MAX_INSURERS);
        if (d->bad_insurer >= 0)
            FAIL("data.insurers[%ld] must be an insurer code ([a-z0-9_-]{1,32})", d->bad_insurer);
        ev->n_insurers = (int)d->n_insurers;
        break;
    case EV_TASK:
    case EV_TASK_RESULT:
        if (d->seen[F_INSURER] != V_OK)
            FAIL("data.insurer must be an insurer code ([a-z0-9_-]{1,32})");
        if (d->seen[F_ATTEMPT] != V_OK || d->attempt < 1 || d->attempt > EVENT_MAX_ATTEMPT)
            FAIL("data.attempt must be 1..%d", EVENT_MAX_ATTEMPT);
        ev->attempt = (int)d->attempt;
        if (ev->type == EV_TASK)
            break;
        if (d->seen[F_STATUS] == V_OK && strcmp(d->status, "ok") == 0)
            ev->ok = 1;
        else if (!(d->seen[F_STATUS] == V_OK && strcmp(d->status, "error") == 0))
            FAIL("data.status must be \"ok\" or \"error\"");
        if (ev->ok && d->seen[F_PREMIUM] != V_OK)
            FAIL("data.premium_rub must be a decimal string such as \"8734.12\"");
        if (!ev->ok && d->seen[F_ERROR] != V_OK)
            FAIL("data.error must be a non-empty string");
        break;
    }
    /* A member that this type, or this result's status, does not carry is dropped: kept, it
     * would ride along unchecked (an error's premium_rub, a Created's error) and differ from what
     * event_encode writes. The fuzzer found both. */
    if (ev->type != EV_CREATED)
        ev->partner[0] = '\0';
    if (ev->type != EV_TASK && ev->type != EV_TASK_RESULT)
        ev->insurer[0] = '\0';
    if (ev->type != EV_TASK_RESULT || !ev->ok)
        ev->premium_rub[0] = '\0';
    if (ev->type != EV_TASK_RESULT || ev->ok)
        ev->error[0] = '\0';

    if (ev->type == EV_CREATED || ev->type == EV_TASK) {
        const unsigned char *buf;
        size_t n;

        if (d->seen[F_PAYLOAD] != V_OK)
            FAIL("data.payload must be an object");
        if (yajl_gen_get_buf(d->g, &buf, &n) != yajl_gen_status_ok)
            FAIL("out of memory");
        /* what would come back refused from event_encode, and fail the batch it joined */
        if (n + d->payload_growth > EVENT_MAX_PAYLOAD)
            FAIL("data.payload must be at most %d bytes with its numbers written out (it is %zu)",
                 EVENT_MAX_PAYLOAD, n + d->payload_growth);
        if ((ev->payload = malloc(n + 1)) == NULL)
            FAIL("out of memory");
        memcpy(ev->payload, buf, n);
        ev->payload[n] = '\0';
    }
    return event_validate(ev, err, errlen);
}

int event_decode(const char *json, size_t len, osago_event_t *ev, char *err, size_t errlen)
{
    struct decoder d = { .ev = ev, .bad_insurer = -1 };
    yajl_handle h = NULL;
    yajl_status st;
    int rc = -1;

    memset(ev, 0, sizeof(*ev));
    if (len == 0 || memchr(json, '\0', len) != NULL)
        FAIL("malformed JSON: empty or contains a NUL byte");
    if ((d.g = yajl_gen_alloc(NULL)) == NULL ||
        (h = yajl_alloc(&decoder_callbacks, NULL, &d)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    st = yajl_parse(h, (const unsigned char *)json, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st == yajl_status_client_canceled && d.too_deep) {
        snprintf(err, errlen, "malformed JSON: nested deeper than %d levels", EVENT_MAX_DEPTH);
    } else if (st == yajl_status_client_canceled && d.bad_text) {
        snprintf(err, errlen, "data.payload %s", EVENT_BAD_TEXT);
    } else if (st != yajl_status_ok) {
        unsigned char *msg = yajl_get_error(h, 0, NULL, 0);
        snprintf(err, errlen, "malformed JSON: %s", msg != NULL ? (char *)msg : "parse error");
        err[strcspn(err, "\n")] = '\0';
        if (msg != NULL)
            yajl_free_error(h, msg);
    } else {
        rc = decode_check(&d, err, errlen);
    }
out:
    if (h != NULL)
        yajl_free(h);
    if (d.g != NULL)
        yajl_gen_free(d.g);
    if (rc < 0)
        event_free(ev);
    return rc;
}

void event_free(osago_event_t *ev)
{
    free(ev->payload);
    ev->payload = NULL;
}
