/* The insurer list (JSON file, DESIGN.md "Insurers"). */
#ifndef OSAGO_WORKER_INSURERS_H
#define OSAGO_WORKER_INSURERS_H

#include <stddef.h>

#define INSURERS_MAX 64
#define INSURERS_CONNECT_TIMEOUT_MS 5000

typedef struct {
    char code[33];            /* [a-z0-9_-]{1,32} */
    char name[128];
    char url[512];            /* http:// or https:// */
    int  timeout_ms;          /* default: the worker's insurer_timeout_ms */
    int  connect_timeout_ms;  /* default: INSURERS_CONNECT_TIMEOUT_MS, at most timeout_ms */
    char auth_header[256];    /* optional, "Name: value" */
} insurer_t;

typedef struct {
    insurer_t items[INSURERS_MAX];
    int       n;
} insurer_list_t;

/* Returns 0, or -1 with the reason in err (file, JSON pointer, what is wrong). */
int insurers_load(const char *path, int default_timeout_ms, insurer_list_t *out,
                  char *err, size_t errlen);

const insurer_t *insurers_find(const insurer_list_t *list, const char *code);

/* Whether the insurer's auth_header would cross a network in clear, with its http:// URL:
 * AUTH_CLEAR_HOST, the host is not this machine's loopback (a name is taken at its word: only
 * "localhost" counts); AUTH_CLEAR_PROXY, it is, but libcurl would send the call through the proxy
 * that http_proxy or all_proxy names, no_proxy not listing the host (or "*"). The host, as curl
 * parsed it, in host (may be truncated). Anything in doubt counts as in clear: a warning too many
 * costs less than a secret sent unsaid. */
enum { AUTH_SEALED = 0, AUTH_CLEAR_HOST, AUTH_CLEAR_PROXY };
int insurers_auth_in_clear(const insurer_t *ins, char *host, size_t hostlen);

#endif
