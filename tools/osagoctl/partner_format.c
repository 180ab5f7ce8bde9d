/* Listing output. Values come from Redis, where anyone with access may have
 * edited them by hand, so nothing here trusts them to be well-formed: a
 * missing field shows as "-" (table) or null (JSON), JSON numbers are only
 * emitted for strings that are valid JSON numbers, and what is not UTF-8, or
 * is a control character, never reaches the output as it is. */
#include "partner_format.h"

#include <locale.h>
#include <stdbool.h>
#include <string.h>
#include <wchar.h>

/* The length of the UTF-8 character s starts with (*wc set), or 0 when s
 * does not start with one; the C library decodes, in a UTF-8 locale of its
 * own (the process's may be "C"). */
static size_t utf8_char(locale_t utf8, const char *s, wchar_t *wc)
{
    mbstate_t st;
    size_t n;
    locale_t was;

    if ((unsigned char)*s < 0x80) {
        *wc = (unsigned char)*s;
        return 1;
    }
    if (utf8 == (locale_t)0)
        return 0;
    memset(&st, 0, sizeof(st));
    was = uselocale(utf8);
    n = mbrtowc(wc, s, strnlen(s, 4), &st);     /* UTF-8: 4 bytes at most */
    uselocale(was);
    return n == (size_t)-1 || n == (size_t)-2 || n == 0 ? 0 : n;
}

/* A table cell: a tab or newline would shift the columns and an escape
 * sequence would reach the terminal, so control characters and bytes that
 * are not UTF-8 show as '?'. */
static void tsv_cell(FILE *out, locale_t utf8, const char *s)
{
    if (s == NULL) {
        fputc('-', out);
        return;
    }
    while (*s != '\0') {
        wchar_t wc;
        size_t n = utf8_char(utf8, s, &wc);

        if (n == 0 || wc < 0x20 || (wc >= 0x7f && wc < 0xa0)) {
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
    locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);

    fputs("name\trate\tburst\tpool\tenabled\tkey_id\n", out);
    for (size_t i = 0; i < list->count; i++) {
        const struct partner_row *p = &list->rows[i];
        const char *cells[] = { p->name, p->rate, p->burst, p->pool, p->enabled };
        char id[KEY_ID_LEN + 1];

        for (size_t c = 0; c < sizeof(cells) / sizeof(cells[0]); c++) {
            tsv_cell(out, utf8, cells[c]);
            fputc('\t', out);
        }
        key_id(p->key_hash, id);
        tsv_cell(out, utf8, id[0] ? id : NULL);
        fputc('\n', out);
    }
    if (utf8 != (locale_t)0)
        freelocale(utf8);
}

/* A JSON string: control characters escaped, and bytes that are not UTF-8
 * (JSON text must be) written as U+FFFD. */
static void json_string(FILE *out, locale_t utf8, const char *s)
{
    if (s == NULL) {
        fputs("null", out);
        return;
    }
    fputc('"', out);
    while (*s != '\0') {
        unsigned char c = (unsigned char)*s;
        wchar_t wc;
        size_t n;

        if (c == '"' || c == '\\') {
            fprintf(out, "\\%c", c);
            s++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(out, "\\u%04x", c);
            s++;
        } else if ((n = utf8_char(utf8, s, &wc)) == 0) {
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

static void json_number(FILE *out, locale_t utf8, const char *s)
{
    if (s != NULL && is_plain_number(s))
        fputs(s, out);
    else
        json_string(out, utf8, s);
}

static void json_enabled(FILE *out, locale_t utf8, const char *s)
{
    if (s != NULL && strcmp(s, "1") == 0)
        fputs("true", out);
    else if (s != NULL && strcmp(s, "0") == 0)
        fputs("false", out);
    else
        json_string(out, utf8, s);
}

void format_partners_json(FILE *out, const struct partner_list *list)
{
    locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);

    fputc('[', out);
    for (size_t i = 0; i < list->count; i++) {
        const struct partner_row *p = &list->rows[i];
        char id[KEY_ID_LEN + 1];

        key_id(p->key_hash, id);
        fputs(i == 0 ? "\n  {\"name\": " : ",\n  {\"name\": ", out);
        json_string(out, utf8, p->name);
        fputs(", \"rate\": ", out);
        json_number(out, utf8, p->rate);
        fputs(", \"burst\": ", out);
        json_number(out, utf8, p->burst);
        fputs(", \"pool\": ", out);
        json_string(out, utf8, p->pool);
        fputs(", \"enabled\": ", out);
        json_enabled(out, utf8, p->enabled);
        fputs(", \"key_id\": ", out);
        json_string(out, utf8, id[0] ? id : NULL);
        fputc('}', out);
    }
    fputs(list->count > 0 ? "\n]\n" : "]\n", out);
    if (utf8 != (locale_t)0)
        freelocale(utf8);
}
