/* Listing output. Values come from Redis, where anyone with access may have
 * edited them by hand, so nothing here trusts them to be well-formed: a
 * missing field shows as "-" (table) or null (JSON), JSON numbers are only
 * emitted for strings that are valid JSON numbers, and what is not UTF-8, or
 * is a control character, never reaches the output as it is. */
#include "partner_format.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* The length of the UTF-8 character s starts with (*cp set), or 0 when s
 * does not start with one. Strict RFC 3629 rather than the C library's
 * mbrtowc: glibc's accepts 4-byte forms up to U+1FFFFF, which would reach
 * the JSON output as they are and make it invalid UTF-8. */
static size_t utf8_char(const char *s, uint32_t *cp)
{
    /* The least code point each length may encode: below it is overlong */
    static const uint32_t min[] = { 0, 0, 0x80, 0x800, 0x10000 };
    const unsigned char *u = (const unsigned char *)s;
    size_t len;
    uint32_t c;

    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    if ((u[0] & 0xe0) == 0xc0) {
        len = 2;
        c = u[0] & 0x1f;
    } else if ((u[0] & 0xf0) == 0xe0) {
        len = 3;
        c = u[0] & 0x0f;
    } else if ((u[0] & 0xf8) == 0xf0) {
        len = 4;
        c = u[0] & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((u[i] & 0xc0) != 0x80)      /* so never reads past the NUL */
            return 0;
        c = c << 6 | (u[i] & 0x3f);
    }
    if (c < min[len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

/* A table cell: a tab or newline would shift the columns and an escape
 * sequence would reach the terminal, so control characters and bytes that
 * are not UTF-8 show as '?'. */
static void tsv_cell(FILE *out, const char *s)
{
    if (s == NULL) {
        fputc('-', out);
        return;
    }
    while (*s != '\0') {
        uint32_t cp;
        size_t n = utf8_char(s, &cp);

        if (n == 0 || cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) {
            fputc('?', out);
            s += n > 0 ? n : 1;
        } else {
            fwrite(s, 1, n, out);
            s += n;
        }
    }
}

static void key_id(const char *hash, char out[KEY_ID_LEN + 1])
{
    size_t n = 0;

    if (hash != NULL)
        for (; n < KEY_ID_LEN && hash[n] != '\0'; n++)
            out[n] = hash[n];
    out[n] = '\0';
}

void format_partners_tsv(FILE *out, const struct partner_list *list)
{
    fputs("name\trate\tburst\tpool\tenabled\tkey_id\n", out);
    for (size_t i = 0; i < list->count; i++) {
        const struct partner_row *p = &list->rows[i];
        const char *cells[] = { p->name, p->rate, p->burst, p->pool, p->enabled };
        char id[KEY_ID_LEN + 1];

        for (size_t c = 0; c < sizeof(cells) / sizeof(cells[0]); c++) {
            tsv_cell(out, cells[c]);
            fputc('\t', out);
        }
        key_id(p->key_hash, id);
        tsv_cell(out, id[0] ? id : NULL);
        fputc('\n', out);
    }
}

/* A JSON string: control characters escaped, and bytes that are not UTF-8
 * (JSON text must be) written as U+FFFD. */
static void json_string(FILE *out, const char *s)
{
    if (s == NULL) {
        fputs("null", out);
        return;
    }
    fputc('"', out);
    while (*s != '\0') {
        unsigned char c = (unsigned char)*s;
        uint32_t cp;
        size_t n;

        if (c == '"' || c == '\\') {
            fprintf(out, "\\%c", c);
            s++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(out, "\\u%04x", c);
            s++;
        } else if ((n = utf8_char(s, &cp)) == 0) {
            fputs("\\ufffd", out);
            s++;
        } else {
            fwrite(s, 1, n, out);
            s += n;
        }
    }
    fputc('"', out);
}

/* The forms osagoctl writes (digits, optionally '.' and digits), which are
 * a subset of JSON numbers. Leading zeros are excluded since JSON forbids
 * them. */
static bool is_plain_number(const char *s)
{
    const char *p = s;

    if (*p == '0' && p[1] >= '0' && p[1] <= '9')
        return false;
    if (!(*p >= '0' && *p <= '9'))
        return false;
    while (*p >= '0' && *p <= '9')
        p++;
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9'))
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return *p == '\0';
}

static void json_number(FILE *out, const char *s)
{
    if (s != NULL && is_plain_number(s))
        fputs(s, out);
    else
        json_string(out, s);
}

static void json_enabled(FILE *out, const char *s)
{
    if (s != NULL && strcmp(s, "1") == 0)
        fputs("true", out);
    else if (s != NULL && strcmp(s, "0") == 0)
        fputs("false", out);
    else
        json_string(out, s);
}

void format_partners_json(FILE *out, const struct partner_list *list)
{
    fputc('[', out);
    for (size_t i = 0; i < list->count; i++) {
        const struct partner_row *p = &list->rows[i];
        char id[KEY_ID_LEN + 1];

        key_id(p->key_hash, id);
        fputs(i == 0 ? "\n  {\"name\": " : ",\n  {\"name\": ", out);
        json_string(out, p->name);
        fputs(", \"rate\": ", out);
        json_number(out, p->rate);
        fputs(", \"burst\": ", out);
        json_number(out, p->burst);
        fputs(", \"pool\": ", out);
        json_string(out, p->pool);
        fputs(", \"enabled\": ", out);
        json_enabled(out, p->enabled);
        fputs(", \"key_id\": ", out);
        json_string(out, id[0] ? id : NULL);
        fputc('}', out);
    }
    fputs(list->count > 0 ? "\n]\n" : "]\n", out);
}
