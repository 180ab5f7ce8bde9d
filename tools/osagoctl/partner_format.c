/* Listing output. Values come from Redis, where anyone with access may have
 * edited them by hand, so nothing here trusts them to be well-formed: a
 * missing field shows as "-" (table) or null (JSON), and JSON numbers are
 * only emitted for strings that are valid JSON numbers. */
#include "partner_format.h"

#include <stdbool.h>
#include <string.h>

static const char *or_dash(const char *s)
{
    return s != NULL ? s : "-";
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
        char id[KEY_ID_LEN + 1];

        key_id(p->key_hash, id);
        fprintf(out, "%s\t%s\t%s\t%s\t%s\t%s\n", or_dash(p->name), or_dash(p->rate),
                or_dash(p->burst), or_dash(p->pool), or_dash(p->enabled), id[0] ? id : "-");
    }
}

static void json_string(FILE *out, const char *s)
{
    if (s == NULL) {
        fputs("null", out);
        return;
    }
    fputc('"', out);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
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
