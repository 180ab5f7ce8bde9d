/* Input rules for partner values. Names and labels end up inside Redis keys
 * and nginx variables, so they are limited to characters that are inert in
 * both. */
#include "validate.h"

#include "diag.h"

#include <stdio.h>
#include <string.h>

static bool is_name_char(char c)
{
    /* Spelled out rather than isalnum(): the locale must not widen it. */
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

bool validate_name(const char *what, const char *s)
{
    char q[DIAG_QUOTE_MAX];
    size_t len = strlen(s);

    if (len == 0) {
        diag_usage("invalid %s \"\": it must not be empty", what);
        return false;
    }
    if (len > NAME_MAX_LEN) {
        diag_usage("invalid %s %s: longer than %d characters", what, diag_quote(s, q),
                   NAME_MAX_LEN);
        return false;
    }
    for (const char *p = s; *p != '\0'; p++) {
        if (!is_name_char(*p)) {
            char bad[DIAG_QUOTE_MAX];
            char one[2] = { *p, '\0' };

            diag_usage("invalid %s %s: character %s is not allowed "
                       "(use A-Z a-z 0-9 _ . -, at most %d characters)",
                       what, diag_quote(s, q), diag_quote(one, bad), NAME_MAX_LEN);
            return false;
        }
    }
    return true;
}

bool validate_rate(const char *s, struct rate *out)
{
    char q[DIAG_QUOTE_MAX];
    const char *p = s;
    long whole = 0, frac = 0;
    int frac_digits = 0;
    bool too_big = false;

    if (!is_digit(*p))
        goto not_a_number;
    for (; is_digit(*p); p++) {
        /* Keep scanning past the limit so "99999999x" is still called
         * malformed rather than too big. */
        if (whole > RATE_MAX_MILLI / 1000)
            too_big = true;
        else
            whole = whole * 10 + (*p - '0');
    }
    if (*p == '.') {
        p++;
        if (!is_digit(*p))
            goto not_a_number;
        for (; is_digit(*p); p++) {
            frac_digits++;
            if (frac_digits <= 3)
                frac = frac * 10 + (*p - '0');
        }
    }
    if (*p != '\0')
        goto not_a_number;
    if (frac_digits > 3) {
        diag_usage("invalid rate %s: at most 3 decimals are allowed (e.g. 0.125)",
                   diag_quote(s, q));
        return false;
    }
    for (int i = frac_digits; i < 3; i++)
        frac *= 10;

    /* whole can be ten times the largest rate here: not multiplied then (a 32-bit long) */
    if (whole > RATE_MAX_MILLI / 1000)
        too_big = true;
    out->milli = too_big ? RATE_MAX_MILLI + 1 : whole * 1000 + frac;
    if (out->milli < RATE_MIN_MILLI || out->milli > RATE_MAX_MILLI) {
        diag_usage("invalid rate %s: must be from 0.001 to 1000000 requests per second",
                   diag_quote(s, q));
        return false;
    }

    /* One spelling per value, so "20", "20.0" and "020" store alike. */
    if (frac == 0) {
        snprintf(out->text, sizeof(out->text), "%d", (int)(out->milli / 1000));
    } else {
        size_t n;

        snprintf(out->text, sizeof(out->text), "%d.%03d", (int)(out->milli / 1000),
                 (int)(out->milli % 1000));
        n = strlen(out->text);
        while (out->text[n - 1] == '0')
            out->text[--n] = '\0';
    }
    return true;

not_a_number:
    diag_usage("invalid rate %s: expected a decimal number of requests per second "
               "such as 20, 0.5 or 100.25", diag_quote(s, q));
    return false;
}

bool validate_burst(const char *s, long *out)
{
    char q[DIAG_QUOTE_MAX];
    long v = 0;
    bool too_big = false;

    if (*s == '\0')
        goto not_a_number;
    for (const char *p = s; *p != '\0'; p++) {
        if (!is_digit(*p))
            goto not_a_number;
        if (v > BURST_MAX)
            too_big = true;
        else
            v = v * 10 + (*p - '0');
    }
    if (too_big || v < BURST_MIN || v > BURST_MAX) {
        diag_usage("invalid burst %s: must be from %ld to %ld requests", diag_quote(s, q),
                   BURST_MIN, BURST_MAX);
        return false;
    }
    *out = v;
    return true;

not_a_number:
    diag_usage("invalid burst %s: expected a whole number of requests", diag_quote(s, q));
    return false;
}

long burst_default(const struct rate *r)
{
    long b = (r->milli + 999) / 1000;

    return b < BURST_MIN ? BURST_MIN : b;
}
