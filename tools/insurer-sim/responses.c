/* Response bodies. */
#include "responses.h"
#include "json_out.h"

#include <stdlib.h>
#include <string.h>

static char *response_finish(struct json_out *j, size_t *len)
{
    char *out = json_out_take(j, len);

    json_out_free(j);
    return out;
}

char *response_quote(const char *insurer, const char *application_id, double premium,
                     const char *quote_id, const char *valid_until, size_t *len)
{
    struct json_out j;

    if (json_out_init(&j) < 0)
        return NULL;
    json_out_map_open(&j);
    json_out_kv_str(&j, "insurer", insurer);
    json_out_kv_str(&j, "application_id", application_id);
    json_out_kv_money(&j, "premium_rub", premium);
    json_out_kv_str(&j, "quote_id", quote_id);
    json_out_kv_str(&j, "valid_until", valid_until);
    json_out_map_close(&j);
    return response_finish(&j, len);
}

char *response_error(const char *code, const char *message, const char *insurer, size_t *len)
{
    struct json_out j;

    if (json_out_init(&j) < 0)
        return NULL;
    json_out_map_open(&j);
    json_out_kv_str(&j, "error", code);
    json_out_kv_str(&j, "message", message);
    if (insurer != NULL)
        json_out_kv_str(&j, "insurer", insurer);
    json_out_map_close(&j);
    return response_finish(&j, len);
}

char *response_health(int ninsurers, int waiting, int max_waiting, size_t *len)
{
    struct json_out j;

    if (json_out_init(&j) < 0)
        return NULL;
    json_out_map_open(&j);
    json_out_kv_str(&j, "status", "ok");
    json_out_kv_int(&j, "insurers", ninsurers);
    json_out_kv_int(&j, "waiting", waiting);
    json_out_kv_int(&j, "max_waiting", max_waiting);
    json_out_map_close(&j);
    return response_finish(&j, len);
}

char *response_malformed(const char *good, size_t good_len, uint64_t draw, size_t *len)
{
    static const char html[] = "<html><head><title>502 Bad Gateway</title></head>"
                               "<body><center><h1>502 Bad Gateway</h1></center></body></html>\n";
    const char *src = "";
    char *out;

    switch (draw % 3) {
    case 0:
        src = good;
        *len = good_len / 2;
        break;
    case 1:
        src = html;
        *len = sizeof(html) - 1;
        break;
    default:
        *len = 0;
        break;
    }
    out = malloc(*len + 1);
    if (out == NULL) {
        *len = 0;       /* the caller's length must not outlive the body */
        return NULL;
    }
    memcpy(out, src, *len);
    out[*len] = '\0';
    return out;
}
