/*
 * JSON lines on stderr. Each line is generated with yajl_gen (so every value is escaped) and
 * written with a single write(2): lines from different threads never interleave, and a log
 * collector can parse every line on its own.
 */
#include "log.h"
#include "event.h"   /* event_utf8_sanitize */

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>

/*
 * The one piece of process state besides the configuration: log_set_level() has no context to
 * put it in, and every thread reads it on every call, hence an atomic.
 */
static atomic_int log_min_level = LOG_INFO;

static const char *const log_level_names[] = { "debug", "info", "warn", "error" };

int log_set_level(const char *name)
{
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++) {
        if (name != NULL && strcmp(name, log_level_names[i]) == 0) {
            atomic_store(&log_min_level, i);
            return 0;
        }
    }
    return -1;
}

static int is_hex_lower(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* The 32-hex trace id of "00-<trace id>-<parent id>-<flags>" or of a bare trace id; NULL else. */
static const char *log_trace_id(const char *trace)
{
    if (trace == NULL)
        return NULL;
    size_t n = strlen(trace);
    if (n == 32 && is_hex_lower(trace, 32))
        return trace;
    if (n >= 55 && trace[2] == '-' && trace[35] == '-' && is_hex_lower(trace + 3, 32))
        return trace + 3;
    return NULL;
}

static void gen_kv(yajl_gen g, const char *key, const char *value)
{
    if (value == NULL)
        return;
    yajl_gen_string(g, (const unsigned char *)key, strlen(key));
    yajl_gen_string(g, (const unsigned char *)value, strlen(value));
}

static void format_ts(char *buf, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;     /* nowhere left to report it */
        }
        buf += w;
        len -= (size_t)w;
    }
}

void wlog(enum log_level level, const char *role, const char *trace, const char *event,
          const char *fmt, ...)
{
    if ((int)level < atomic_load(&log_min_level) || level > LOG_ERROR)
        return;

    char small[1024], *msg = small;
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(small)) {
        msg = malloc((size_t)n + 1);
        if (msg != NULL)
            vsnprintf(msg, (size_t)n + 1, fmt, ap2);
        else
            msg = small;    /* truncated beats nothing */
    } else if (n < 0) {
        small[0] = '\0';
    }
    va_end(ap2);
    /* yajl_gen escapes quotes, backslashes and control characters but passes other bytes
     * through: a message quoting an insurer's broken answer must not make the line invalid */
    event_utf8_sanitize(msg);

    char ts[40];
    format_ts(ts, sizeof(ts));

    char trace_id[33] = "";
    const char *tid = log_trace_id(trace);
    if (tid != NULL) {
        memcpy(trace_id, tid, 32);
        trace_id[32] = '\0';
    }

    yajl_gen g = yajl_gen_alloc(NULL);
    if (g != NULL) {
        yajl_gen_map_open(g);
        gen_kv(g, "ts", ts);
        gen_kv(g, "level", log_level_names[level]);
        gen_kv(g, "role", role);
        gen_kv(g, "event", event);
        gen_kv(g, "trace_id", tid != NULL ? trace_id : NULL);
        gen_kv(g, "msg", msg);
        yajl_gen_map_close(g);

        const unsigned char *out;
        size_t len;
        if (yajl_gen_get_buf(g, &out, &len) == yajl_gen_status_ok) {
            char *line = malloc(len + 1);
            if (line != NULL) {
                memcpy(line, out, len);
                line[len] = '\n';
                write_all(line, len + 1);
                free(line);
            }
        }
        yajl_gen_free(g);
    }
    if (msg != small)
        free(msg);
}
