/* Error reporting: one prefix and one line per message, so that callers of
 * osagoctl can grep its stderr reliably. */
#include "diag.h"

#include <stdarg.h>
#include <stdio.h>

static void vreport(const char *fmt, va_list ap)
{
    fputs("osagoctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int diag_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    return EXIT_RUNTIME;
}

int diag_usage(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    fputs("Try 'osagoctl --help' for usage.\n", stderr);
    return EXIT_USAGE;
}

const char *diag_quote(const char *s, char buf[DIAG_QUOTE_MAX])
{
    /* Reserve room for the closing quote, "..." and the terminator so the
     * loop only has to check one bound. */
    const size_t limit = DIAG_QUOTE_MAX - 6;
    size_t n = 0;

    buf[n++] = '"';
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        size_t need = (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') ? 4 : 1;

        if (n + need > limit) {
            buf[n++] = '"';
            buf[n++] = '.';
            buf[n++] = '.';
            buf[n++] = '.';
            buf[n] = '\0';
            return buf;
        }
        if (need == 1) {
            buf[n++] = (char)ch;
        } else {
            snprintf(buf + n, 5, "\\x%02x", ch);
            n += 4;
        }
    }
    buf[n++] = '"';
    buf[n] = '\0';
    return buf;
}
