/* Flags: --listen, --insurers, --latency-ms, --insurer-opts (repeatable), --write-insurers,
 * --timing-log, --seed, --threads, --hold-ms, --max-connections. --insurer-opts apply after the rest, in
 * the order given, whatever the order of the flags. */
#include "options.h"
#include "insurers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define OPTIONS_MAX_OVERRIDES 64

void options_usage(FILE *out)
{
    fprintf(out,
            "usage: insurer-sim [--listen 127.0.0.1:8090]\n"
            "                   [--insurers alfa,ingos,reso,vsk,rosgosstrakh]\n"
            "                   [--latency-ms 50-200] [--seed N] [--write-insurers FILE]\n"
            "                   [--insurer-opts CODE:latency=50-200,error=0.1,timeout=0.05,"
            "malformed=0.05,status=500]...\n"
            "                   [--threads 2] [--hold-ms 120000] [--max-connections 16000]\n"
            "                   [--timing-log FILE]\n"
            "Simulated insurer APIs: POST /insurers/{code}/quote, GET /healthz.\n"
            "CODE * in --insurer-opts means every insurer. --timing-log appends a line per\n"
            "answered quote: APPLICATION_ID CODE RECEIVED_MS ANSWERED_MS (Unix ms). Prints\n"
            "\"insurer-sim: ready listen=HOST:PORT insurers=N\" when serving.\n");
}

static int options_long(const char *flag, const char *v, long min, long max, long *out)
{
    char *end;

    errno = 0;
    *out = strtol(v, &end, 10);
    if (errno != 0 || *end != '\0' || end == v || *out < min || *out > max) {
        fprintf(stderr, "insurer-sim: %s must be an integer from %ld to %ld\n", flag, min, max);
        return -1;
    }
    return 0;
}

/* "50-200" or "100"; in ms. */
static int options_range(const char *flag, const char *v, int *lo, int *hi)
{
    char *end;
    long a, b;

    errno = 0;
    a = strtol(v, &end, 10);
    if (end == v || errno != 0)
        goto bad;
    b = a;
    if (*end == '-') {
        const char *p = end + 1;
        b = strtol(p, &end, 10);
        if (end == p || errno != 0)
            goto bad;
    }
    if (*end != '\0' || a < 0 || b < a || b > 600000)
        goto bad;
    *lo = (int)a;
    *hi = (int)b;
    return 0;
bad:
    fprintf(stderr, "insurer-sim: %s: expected MS or MIN-MAX in ms (0..600000), got \"%s\"\n",
            flag, v);
    return -1;
}

static int options_rate(const char *what, const char *v, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(*out >= 0.0 && *out <= 1.0)) {
        fprintf(stderr, "insurer-sim: --insurer-opts %s must be a share from 0 to 1, got \"%s\"\n",
                what, v);
        return -1;
    }
    return 0;
}

static int options_listen(const char *v, struct sim_config *cfg)
{
    const char *colon = strrchr(v, ':');
    struct in_addr a;
    long port;
    size_t hlen;

    if (colon == NULL || (hlen = (size_t)(colon - v)) == 0 || hlen >= sizeof(cfg->host))
        goto bad;
    memcpy(cfg->host, v, hlen);
    cfg->host[hlen] = '\0';
    if (strcmp(cfg->host, "localhost") == 0)
        strcpy(cfg->host, "127.0.0.1");
    if (inet_pton(AF_INET, cfg->host, &a) != 1)
        goto bad;
    /* No authentication and made-up prices: loopback only. */
    if ((ntohl(a.s_addr) >> 24) != 127) {
        fprintf(stderr, "insurer-sim: --listen: only loopback addresses (127.0.0.0/8)\n");
        return -1;
    }
    if (options_long("--listen port", colon + 1, 0, 65535, &port) < 0)
        return -1;
    cfg->port = (int)port;
    return 0;
bad:
    fprintf(stderr, "insurer-sim: --listen: expected HOST:PORT with an IPv4 address\n");
    return -1;
}

static bool options_code_ok(const char *p, size_t n)
{
    if (n == 0 || n > SIM_CODE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_'
              || p[i] == '-'))
            return false;
    return true;
}

static int options_insurers(const char *v, struct sim_config *cfg)
{
    cfg->ninsurers = 0;
    while (*v != '\0') {
        size_t n = strcspn(v, ",");
        struct insurer *ins;

        if (!options_code_ok(v, n)) {
            fprintf(stderr, "insurer-sim: --insurers: codes are 1..%d of [a-z0-9_-]\n",
                    SIM_CODE_MAX);
            return -1;
        }
        if (insurers_find(cfg, v, n) != NULL) {
            fprintf(stderr, "insurer-sim: --insurers: %.*s is listed twice\n", (int)n, v);
            return -1;
        }
        if (cfg->ninsurers == SIM_MAX_INSURERS) {
            fprintf(stderr, "insurer-sim: --insurers: at most %d\n", SIM_MAX_INSURERS);
            return -1;
        }
        ins = &cfg->insurer[cfg->ninsurers++];
        memset(ins, 0, sizeof(*ins));
        memcpy(ins->code, v, n);
        ins->code[n] = '\0';
        snprintf(ins->name, sizeof(ins->name), "%s", insurers_name(ins->code));
        ins->status = 500;
        v += n;
        if (*v == ',')
            v++;
    }
    if (cfg->ninsurers == 0) {
        fprintf(stderr, "insurer-sim: --insurers: at least one insurer\n");
        return -1;
    }
    return 0;
}

/* One "key=value" of --insurer-opts onto ins. */
static int options_apply_kv(struct insurer *ins, const char *key, const char *val)
{
    long st;

    if (strcmp(key, "latency") == 0)
        return options_range("--insurer-opts latency", val, &ins->latency_min,
                             &ins->latency_max);
    if (strcmp(key, "error") == 0)
        return options_rate(key, val, &ins->error);
    if (strcmp(key, "timeout") == 0)
        return options_rate(key, val, &ins->timeout);
    if (strcmp(key, "malformed") == 0)
        return options_rate(key, val, &ins->malformed);
    if (strcmp(key, "status") == 0) {
        if (options_long("--insurer-opts status", val, 400, 599, &st) < 0)
            return -1;
        ins->status = (int)st;
        return 0;
    }
    fprintf(stderr, "insurer-sim: --insurer-opts: unknown key %s (latency, error, timeout, "
            "malformed, status)\n", key);
    return -1;
}

static int options_override(const char *v, struct sim_config *cfg)
{
    const char *colon = strchr(v, ':');
    char list[512];
    char *save = NULL, *kv;
    size_t n;
    int rc = 0;

    if (colon == NULL || strlen(colon + 1) >= sizeof(list)) {
        fprintf(stderr, "insurer-sim: --insurer-opts: expected CODE:key=value,...\n");
        return -1;
    }
    n = (size_t)(colon - v);
    if (!(n == 1 && v[0] == '*') && insurers_find(cfg, v, n) == NULL) {
        fprintf(stderr, "insurer-sim: --insurer-opts: %.*s is not in --insurers\n", (int)n, v);
        return -1;
    }
    for (int i = 0; i < cfg->ninsurers; i++) {
        struct insurer *ins = &cfg->insurer[i];

        if (!(n == 1 && v[0] == '*') && (strlen(ins->code) != n || memcmp(ins->code, v, n) != 0))
            continue;
        strcpy(list, colon + 1);
        for (kv = strtok_r(list, ",", &save); kv != NULL && rc == 0;
             kv = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(kv, '=');

            if (eq == NULL) {
                fprintf(stderr, "insurer-sim: --insurer-opts: expected key=value, got %s\n", kv);
                return -1;
            }
            *eq = '\0';
            rc = options_apply_kv(ins, kv, eq + 1);
        }
        if (rc < 0)
            return -1;
        /* One draw decides among the faults, so their shares must fit in one call. */
        if (ins->error + ins->timeout + ins->malformed > 1.0 + 1e-9) {
            fprintf(stderr, "insurer-sim: --insurer-opts %s: error + timeout + malformed > 1\n",
                    ins->code);
            return -1;
        }
    }
    return 0;
}

int options_parse(int argc, char **argv, struct sim_config *cfg)
{
    const char *insurers = "alfa,ingos,reso,vsk,rosgosstrakh";
    const char *latency = "50-200";
    const char *overrides[OPTIONS_MAX_OVERRIDES];
    int noverrides = 0;
    long v;

    memset(cfg, 0, sizeof(*cfg));
    strcpy(cfg->host, "127.0.0.1");
    cfg->port = 8090;
    cfg->threads = 2;
    cfg->seed = 1;
    cfg->hold_ms = 120000;
    cfg->max_connections = 16000;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value, *eq;
        char name[32];

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)
            return OPTIONS_HELP;
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "insurer-sim: unexpected argument \"%s\"\n", arg);
            return OPTIONS_BAD;
        }
        eq = strchr(arg, '=');
        if (eq != NULL) {
            snprintf(name, sizeof(name), "%.*s", (int)(eq - arg), arg);
            value = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", arg);
            if (i + 1 >= argc) {
                fprintf(stderr, "insurer-sim: %s needs a value\n", arg);
                return OPTIONS_BAD;
            }
            value = argv[++i];
        }
        if (strcmp(name, "--listen") == 0) {
            if (options_listen(value, cfg) < 0)
                return OPTIONS_BAD;
        } else if (strcmp(name, "--insurers") == 0) {
            insurers = value;
        } else if (strcmp(name, "--latency-ms") == 0) {
            latency = value;
        } else if (strcmp(name, "--insurer-opts") == 0) {
            if (noverrides == OPTIONS_MAX_OVERRIDES) {
                fprintf(stderr, "insurer-sim: too many --insurer-opts\n");
                return OPTIONS_BAD;
            }
            overrides[noverrides++] = value;
        } else if (strcmp(name, "--write-insurers") == 0) {
            cfg->write_insurers = value;
        } else if (strcmp(name, "--timing-log") == 0) {
            cfg->timing_log = value;
        } else if (strcmp(name, "--seed") == 0) {
            char *end;
            errno = 0;
            cfg->seed = strtoull(value, &end, 10);
            /* A digit first: strtoull skips blanks and takes a sign, and " -5"
             * would wrap to 2^64-5 */
            if (errno != 0 || *end != '\0' || !(value[0] >= '0' && value[0] <= '9')) {
                fprintf(stderr, "insurer-sim: --seed must be a non-negative integer\n");
                return OPTIONS_BAD;
            }
        } else if (strcmp(name, "--threads") == 0) {
            if (options_long(name, value, 1, 64, &v) < 0)
                return OPTIONS_BAD;
            cfg->threads = (int)v;
        } else if (strcmp(name, "--hold-ms") == 0) {
            if (options_long(name, value, 1, 3600000, &v) < 0)
                return OPTIONS_BAD;
            cfg->hold_ms = (int)v;
        } else if (strcmp(name, "--max-connections") == 0) {
            if (options_long(name, value, 16, 100000, &v) < 0)
                return OPTIONS_BAD;
            cfg->max_connections = (int)v;
        } else {
            fprintf(stderr, "insurer-sim: unknown option %s\n", name);
            return OPTIONS_BAD;
        }
    }
    if (options_insurers(insurers, cfg) < 0)
        return OPTIONS_BAD;
    for (int i = 0; i < cfg->ninsurers; i++)
        if (options_range("--latency-ms", latency, &cfg->insurer[i].latency_min,
                          &cfg->insurer[i].latency_max) < 0)
            return OPTIONS_BAD;
    for (int i = 0; i < noverrides; i++)
        if (options_override(overrides[i], cfg) < 0)
            return OPTIONS_BAD;
    return OPTIONS_OK;
}
