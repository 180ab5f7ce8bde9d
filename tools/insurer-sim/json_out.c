/* yajl_gen wrapper: yajl validates the structure (an unbalanced map is an error at the end). */
#include "json_out.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Remembers the first failure, so callers can chain calls and check once at the end. */
static void json_out_check(struct json_out *j, yajl_gen_status st)
{
    if (st != yajl_gen_status_ok)
        j->failed = 1;
}

int json_out_init(struct json_out *j)
{
    j->failed = 0;
    j->g = yajl_gen_alloc(NULL);
    if (j->g == NULL)
        return -1;
    /* Names and ids come from flags and clients: never emit invalid UTF-8. */
    yajl_gen_config(j->g, yajl_gen_validate_utf8, 1);
    return 0;
}

void json_out_free(struct json_out *j)
{
    if (j->g != NULL)
        yajl_gen_free(j->g);
    j->g = NULL;
}

static void json_out_key(struct json_out *j, const char *key)
{
    json_out_check(j, yajl_gen_string(j->g, (const unsigned char *)key, strlen(key)));
}

void json_out_map_open(struct json_out *j) { json_out_check(j, yajl_gen_map_open(j->g)); }
void json_out_map_close(struct json_out *j) { json_out_check(j, yajl_gen_map_close(j->g)); }
void json_out_array_open(struct json_out *j) { json_out_check(j, yajl_gen_array_open(j->g)); }
void json_out_array_close(struct json_out *j) { json_out_check(j, yajl_gen_array_close(j->g)); }

void json_out_kv_str(struct json_out *j, const char *key, const char *value)
{
    json_out_key(j, key);
    json_out_check(j, yajl_gen_string(j->g, (const unsigned char *)value, strlen(value)));
}

void json_out_kv_int(struct json_out *j, const char *key, long long value)
{
    json_out_key(j, key);
    json_out_check(j, yajl_gen_integer(j->g, value));
}

void json_out_kv_money(struct json_out *j, const char *key, double value)
{
    char num[64];
    int n = snprintf(num, sizeof(num), "%.2f", value);

    json_out_key(j, key);
    json_out_check(j, yajl_gen_number(j->g, num, (size_t)n));
}

int json_out_result(struct json_out *j, const char **buf, size_t *len)
{
    const unsigned char *b;

    if (j->failed || yajl_gen_get_buf(j->g, &b, len) != yajl_gen_status_ok)
        return -1;
    *buf = (const char *)b;
    return 0;
}

char *json_out_take(struct json_out *j, size_t *len)
{
    const char *buf;
    char *copy;

    if (json_out_result(j, &buf, len) < 0)
        return NULL;
    copy = malloc(*len + 1);
    if (copy == NULL)
        return NULL;
    memcpy(copy, buf, *len);
    copy[*len] = '\0';
    return copy;
}
