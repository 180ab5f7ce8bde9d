/* The bodies insurer-sim answers with (all JSON through yajl_gen, except the deliberately
 * broken ones). Each returns a malloc'd buffer (caller frees) or NULL when out of memory. */
#ifndef INSURER_SIM_RESPONSES_H
#define INSURER_SIM_RESPONSES_H

#include <stddef.h>
#include <stdint.h>

/* {"insurer","application_id","premium_rub","quote_id","valid_until"} */
char *response_quote(const char *insurer, const char *application_id, double premium,
                     const char *quote_id, const char *valid_until, size_t *len);

/* {"error": code, "message": ..., "insurer": ... (when not NULL)} */
char *response_error(const char *code, const char *message, const char *insurer, size_t *len);

/* {"status":"ok","insurers":N,"waiting":calls held now,"max_waiting":most held at once} */
char *response_health(int ninsurers, int waiting, int max_waiting, size_t *len);

/* A 200 body a client cannot use, picked by draw: the good answer cut in half, an HTML error
 * page from a proxy, or nothing at all. */
char *response_malformed(const char *good, size_t good_len, uint64_t draw, size_t *len);

#endif
