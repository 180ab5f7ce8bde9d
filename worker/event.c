/*
 * The Kafka event codec. Encoding uses yajl_gen; decoding uses yajl's parser (a depth-limited
 * pass, then yajl_tree). The application payload travels as a JSON object inside the event and
 * is kept as JSON text in the struct; it is re-generated token by token, numbers from their
 * original text, so it arrives exactly as it was sent (up to whitespace).
 *
 * Unknown members are ignored on decode: a newer release may add fields to version 1 events
 * while the previous release still consumes them (expand, then contract).
 */
#include "event.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#define EVENT_MAX_ATTEMPT 10
#define EVENT_MAX_DEPTH   64   /* the edge's payloads are a few levels deep; this bounds recursion */

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

void event_utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t i = 0;
    while (p[i] != '\0') {
        unsigned c = p[i], cp, min;
        size_t need, k;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0)
            need = 1, min = 0x80;
        else if ((c & 0xF0) == 0xE0)
            need = 2, min = 0x800;
        else if ((c & 0xF8) == 0xF0)
            need = 3, min = 0x10000;
        else
            goto bad;
        cp = c & (0x3Fu >> need);
        for (k = 1; k <= need && (p[i + k] & 0xC0) == 0x80; k++)
            cp = (cp << 6) | (p[i + k] & 0x3F);
        if (k <= need || cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto bad;
        i += need + 1;
        continue;
    bad:
        p[i++] = '?';
    }
}

/* Copies src into dst[cap], cut without splitting a UTF-8 sequence. */
static void copy_utf8(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- random ids and time ---------------------------------------------------------------- */

static void random_bytes(unsigned char *buf, size_t n)
{
    if (RAND_bytes(buf, (int)n) == 1)
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

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

static void nonzero_random(unsigned char *buf, size_t n)
{
    for (;;) {
        random_bytes(buf, n);
        for (size_t i = 0; i < n; i++)
            if (buf[i] != 0)
                return;
    }
}

void event_stamp(osago_event_t *ev)
{
    unsigned char b[16];
    char hex[32];
    struct timespec ts;

    random_bytes(b, sizeof(b));
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);   /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);   /* RFC 4122 variant */
    hex_encode(b, 16, hex);
    snprintf(ev->event_id, sizeof(ev->event_id), "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8,
             hex + 12, hex + 16, hex + 20);

    clock_gettime(CLOCK_REALTIME, &ts);
    ev->occurred_at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void event_traceparent_new(char out[56])
{
    unsigned char trace[16], span[8];
    nonzero_random(trace, sizeof(trace));
    nonzero_random(span, sizeof(span));
    memcpy(out, "00-", 3);
    hex_encode(trace, 16, out + 3);
    out[35] = '-';
    hex_encode(span, 8, out + 36);
    memcpy(out + 52, "-01", 4);
}

void event_traceparent_child(const char *parent, char out[56])
{
    if (!event_traceparent_valid(parent)) {
        event_traceparent_new(out);
        return;
    }
    unsigned char span[8];
    nonzero_random(span, sizeof(span));
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

/* ---- encoding --------------------------------------------------------------------------- */

/* Parser callbacks that re-generate every token into a yajl_gen: copies the payload into the
 * event while checking that it is JSON and an object. */
struct forward {
    yajl_gen g;
    int      depth;
    int      tokens;
    int      not_object;
};

static int fw_begin(struct forward *f, int is_map)
{
    if (f->tokens++ == 0 && !is_map) {
        f->not_object = 1;
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
    return fw_begin(f, 0) && yajl_gen_number(f->g, s, len) == yajl_gen_status_ok;
}

static int fw_string(void *ctx, const unsigned char *s, size_t len)
{
    struct forward *f = ctx;
    return fw_begin(f, 0) && yajl_gen_string(f->g, s, len) == yajl_gen_status_ok;
}

static int fw_start_map(void *ctx)
{
    struct forward *f = ctx;
    return fw_begin(f, 1) && ++f->depth <= EVENT_MAX_DEPTH &&
           yajl_gen_map_open(f->g) == yajl_gen_status_ok;
}

static int fw_map_key(void *ctx, const unsigned char *s, size_t len)
{
    struct forward *f = ctx;
    return yajl_gen_string(f->g, s, len) == yajl_gen_status_ok;
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
    return fw_begin(f, 0) && ++f->depth <= EVENT_MAX_DEPTH &&
           yajl_gen_array_open(f->g) == yajl_gen_status_ok;
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

static int gen_payload(yajl_gen g, const char *payload)
{
    struct forward f = { .g = g };
    yajl_handle h = yajl_alloc(&forward_callbacks, NULL, &f);
    if (h == NULL)
        return -1;
    size_t len = strlen(payload);
    int ok = yajl_parse(h, (const unsigned char *)payload, len) == yajl_status_ok &&
             yajl_complete_parse(h) == yajl_status_ok && f.tokens > 0 && !f.not_object;
    yajl_free(h);
    return ok ? 0 : -1;
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
        if (gen_payload(g, ev->payload) < 0)
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
        if (gen_payload(g, ev->payload) < 0)
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

/* First pass: well-formed JSON (no comments, valid UTF-8) nested at most EVENT_MAX_DEPTH deep,
 * so the recursive tree walk and yajl_tree_free stay bounded. */
struct depth {
    int depth;
};

static int dp_open(void *ctx)
{
    return ++((struct depth *)ctx)->depth <= EVENT_MAX_DEPTH + 2;
}

static int dp_close(void *ctx)
{
    ((struct depth *)ctx)->depth--;
    return 1;
}

static const yajl_callbacks depth_callbacks = {
    NULL, NULL, NULL, NULL, NULL, NULL, dp_open, NULL, dp_close, dp_open, dp_close,
};

static int check_json(const char *json, size_t len, char *err, size_t errlen)
{
    struct depth d = { 0 };
    yajl_handle h = yajl_alloc(&depth_callbacks, NULL, &d);
    if (h == NULL)
        FAIL("out of memory");
    yajl_status st = yajl_parse(h, (const unsigned char *)json, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st == yajl_status_client_canceled) {
        yajl_free(h);
        FAIL("malformed JSON: nested deeper than %d levels", EVENT_MAX_DEPTH);
    }
    if (st != yajl_status_ok) {
        unsigned char *msg = yajl_get_error(h, 0, NULL, 0);
        snprintf(err, errlen, "malformed JSON: %s", msg != NULL ? (char *)msg : "parse error");
        char *nl = strchr(err, '\n');
        if (nl != NULL)
            *nl = '\0';
        if (msg != NULL)
            yajl_free_error(h, msg);
        yajl_free(h);
        return -1;
    }
    yajl_free(h);
    return 0;
}

static yajl_val member(yajl_val obj, const char *key)
{
    if (!YAJL_IS_OBJECT(obj))
        return NULL;
    for (size_t i = 0; i < obj->u.object.len; i++)
        if (strcmp(obj->u.object.keys[i], key) == 0)
            return obj->u.object.values[i];
    return NULL;
}

/* Copies a string member into buf; 0, or -1 when missing, not a string or too long. */
static int member_str(yajl_val obj, const char *key, char *buf, size_t cap)
{
    yajl_val v = member(obj, key);
    if (!YAJL_IS_STRING(v) || strlen(v->u.string) >= cap)
        return -1;
    memcpy(buf, v->u.string, strlen(v->u.string) + 1);
    return 0;
}

static int member_int(yajl_val obj, const char *key, long long *out)
{
    yajl_val v = member(obj, key);
    if (!YAJL_IS_INTEGER(v))
        return -1;
    *out = YAJL_GET_INTEGER(v);
    return 0;
}

static void gen_tree(yajl_gen g, yajl_val v)
{
    switch (v->type) {
    case yajl_t_string:
        gen_str(g, v->u.string);
        break;
    case yajl_t_number:
        yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r));
        break;
    case yajl_t_object:
        yajl_gen_map_open(g);
        for (size_t i = 0; i < v->u.object.len; i++) {
            gen_str(g, v->u.object.keys[i]);
            gen_tree(g, v->u.object.values[i]);
        }
        yajl_gen_map_close(g);
        break;
    case yajl_t_array:
        yajl_gen_array_open(g);
        for (size_t i = 0; i < v->u.array.len; i++)
            gen_tree(g, v->u.array.values[i]);
        yajl_gen_array_close(g);
        break;
    case yajl_t_true:
        yajl_gen_bool(g, 1);
        break;
    case yajl_t_false:
        yajl_gen_bool(g, 0);
        break;
    default:
        yajl_gen_null(g);
        break;
    }
}

/* The payload object as compact JSON text (malloc'd), or NULL when out of memory. */
static char *tree_to_text(yajl_val v)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    char *out = NULL;
    const unsigned char *buf;
    size_t n;

    if (g == NULL)
        return NULL;
    gen_tree(g, v);
    if (yajl_gen_get_buf(g, &buf, &n) == yajl_gen_status_ok && (out = malloc(n + 1)) != NULL) {
        memcpy(out, buf, n);
        out[n] = '\0';
    }
    yajl_gen_free(g);
    return out;
}

static int decode_tree(yajl_val root, osago_event_t *ev, char *err, size_t errlen)
{
    char buf[64];
    long long n;
    yajl_val data, v;
    int type = -1;

    if (!YAJL_IS_OBJECT(root))
        FAIL("event must be a JSON object");

    v = member(root, "type");
    if (YAJL_IS_STRING(v))
        for (int i = EV_CREATED; i <= EV_TASK_RESULT; i++)
            if (strcmp(v->u.string, event_names[i]) == 0)
                type = i;
    if (type < 0)
        FAIL("type must be a known event type");
    ev->type = (event_type_t)type;

    if (member_int(root, "version", &n) < 0 || n != 1)
        FAIL("version must be 1");
    ev->version = 1;
    if (member_str(root, "event_id", ev->event_id, sizeof(ev->event_id)) < 0 ||
        !event_uuid_valid(ev->event_id))
        FAIL("event_id must be a UUID");
    if (member_str(root, "application_id", ev->application_id, sizeof(ev->application_id)) < 0 ||
        !event_uuid_valid(ev->application_id))
        FAIL("application_id must be a UUID");
    /* ids compare as text downstream (Kafka keys, logs): one spelling */
    for (char *p = ev->event_id; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'F' ? *p + 32 : *p);
    for (char *p = ev->application_id; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'F' ? *p + 32 : *p);
    if (member_str(root, "occurred_at", buf, sizeof(buf)) < 0 ||
        parse_time(buf, &ev->occurred_at_ms) < 0)
        FAIL("occurred_at must be an RFC 3339 UTC time with milliseconds");
    if (member_str(root, "traceparent", ev->traceparent, sizeof(ev->traceparent)) < 0)
        ev->traceparent[0] = '\0';   /* reported by event_validate */

    data = member(root, "data");
    if (!YAJL_IS_OBJECT(data))
        FAIL("data must be an object");

    switch (ev->type) {
    case EV_CREATED:
        if (member_str(data, "partner", ev->partner, sizeof(ev->partner)) < 0)
            FAIL("data.partner must be a string of 1..64 bytes");
        break;
    case EV_STARTED:
        v = member(data, "insurers");
        if (!YAJL_IS_ARRAY(v) || v->u.array.len < 1 || v->u.array.len > EVENT_MAX_INSURERS)
            FAIL("data.insurers must be an array of 1..%d insurer codes", EVENT_MAX_INSURERS);
        for (size_t i = 0; i < v->u.array.len; i++) {
            yajl_val c = v->u.array.values[i];
            if (!YAJL_IS_STRING(c) || strlen(c->u.string) >= sizeof(ev->insurers[0]))
                FAIL("data.insurers[%zu] must be an insurer code ([a-z0-9_-]{1,32})", i);
            strcpy(ev->insurers[i], c->u.string);
        }
        ev->n_insurers = (int)v->u.array.len;
        break;
    case EV_TASK:
    case EV_TASK_RESULT:
        if (member_str(data, "insurer", ev->insurer, sizeof(ev->insurer)) < 0)
            FAIL("data.insurer must be an insurer code ([a-z0-9_-]{1,32})");
        if (member_int(data, "attempt", &n) < 0 || n < 1 || n > EVENT_MAX_ATTEMPT)
            FAIL("data.attempt must be 1..%d", EVENT_MAX_ATTEMPT);
        ev->attempt = (int)n;
        if (ev->type == EV_TASK)
            break;
        v = member(data, "status");
        if (YAJL_IS_STRING(v) && strcmp(v->u.string, "ok") == 0)
            ev->ok = 1;
        else if (!(YAJL_IS_STRING(v) && strcmp(v->u.string, "error") == 0))
            FAIL("data.status must be \"ok\" or \"error\"");
        if (ev->ok) {
            if (member_str(data, "premium_rub", ev->premium_rub, sizeof(ev->premium_rub)) < 0)
                FAIL("data.premium_rub must be a decimal string such as \"8734.12\"");
        } else {
            v = member(data, "error");
            if (!YAJL_IS_STRING(v) || v->u.string[0] == '\0')
                FAIL("data.error must be a non-empty string");
            /* an insurer's long error text is not worth losing the result over */
            copy_utf8(ev->error, sizeof(ev->error), v->u.string);
        }
        break;
    }

    if (ev->type == EV_CREATED || ev->type == EV_TASK) {
        v = member(data, "payload");
        if (!YAJL_IS_OBJECT(v))
            FAIL("data.payload must be an object");
        ev->payload = tree_to_text(v);
        if (ev->payload == NULL)
            FAIL("out of memory");
    }
    return event_validate(ev, err, errlen);
}

int event_decode(const char *json, size_t len, osago_event_t *ev, char *err, size_t errlen)
{
    char perr[128];
    int rc;

    memset(ev, 0, sizeof(*ev));
    if (len == 0 || memchr(json, '\0', len) != NULL)
        FAIL("malformed JSON: empty or contains a NUL byte");
    if (check_json(json, len, err, errlen) < 0)
        return -1;

    /* yajl_tree_parse wants a C string; Kafka payloads are not terminated */
    char *copy = malloc(len + 1);
    if (copy == NULL)
        FAIL("out of memory");
    memcpy(copy, json, len);
    copy[len] = '\0';
    yajl_val root = yajl_tree_parse(copy, perr, sizeof(perr));
    free(copy);
    if (root == NULL)
        FAIL("malformed JSON: %s", perr);

    rc = decode_tree(root, ev, err, errlen);
    yajl_tree_free(root);
    if (rc < 0)
        event_free(ev);
    return rc;
}

void event_free(osago_event_t *ev)
{
    free(ev->payload);
    ev->payload = NULL;
}
