/* JSON generation on top of yajl_gen, for the few shapes insurer-sim writes. */
#ifndef INSURER_SIM_JSON_OUT_H
#define INSURER_SIM_JSON_OUT_H

#include <stddef.h>
#include <yajl/yajl_gen.h>

struct json_out {
    yajl_gen g;
    int failed;     /* a yajl call failed (e.g. invalid UTF-8): the document is unusable */
};

int json_out_init(struct json_out *j);
void json_out_free(struct json_out *j);

void json_out_map_open(struct json_out *j);
void json_out_map_close(struct json_out *j);
void json_out_array_open(struct json_out *j);
void json_out_array_close(struct json_out *j);
void json_out_kv_str(struct json_out *j, const char *key, const char *value);
void json_out_kv_int(struct json_out *j, const char *key, long long value);
/* A number written with exactly two decimals (money: 12345.67, not 12345.670000000000073). */
void json_out_kv_money(struct json_out *j, const char *key, double value);

/* The document so far; valid until json_out_free. Returns -1 if any step failed. */
int json_out_result(struct json_out *j, const char **buf, size_t *len);

/* The document copied into a malloc'd buffer (caller frees); NULL on failure. */
char *json_out_take(struct json_out *j, size_t *len);

#endif
