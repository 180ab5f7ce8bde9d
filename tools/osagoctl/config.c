/* Connection settings: flags win over the environment, which wins over the
 * built-in default, so one exported OSAGO_REDIS serves a whole shell session. */
#include "config.h"

#include "diag.h"

#include <stdlib.h>
#include <string.h>

/* Parses a decimal in [min, max] with nothing around it; strtol alone would
 * accept " 12", "12abc" and signs. */
static bool parse_bounded(const char *s, long min, long max, long *out)
{
    long v = 0;

    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        int d = *s - '0';

        if (d < 0 || d > 9 || v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (v < min)
        return false;
    *out = v;
    return true;
}

/* Accepts HOST:PORT, [IPv6]:PORT and unix:/path, matching what
 * osago_redis_server takes. */
static int parse_addr(struct osagoctl_config *cfg, const char *addr, const char *origin)
{
    char q[DIAG_QUOTE_MAX];
    const char *host = addr, *colon;
    size_t hostlen;
    long port;

    cfg->addr = addr;
    if (strncmp(addr, "unix:", 5) == 0) {
        const char *path = addr + 5;

        if (*path == '\0' || strlen(path) >= sizeof(cfg->host))
            return diag_usage("invalid Redis address %s (from %s): expected unix:/path/to/socket",
                              diag_quote(addr, q), origin);
        strcpy(cfg->host, path);
        cfg->is_unix = true;
        return EXIT_OK;
    }

    colon = strrchr(addr, ':');
    if (colon == NULL || !parse_bounded(colon + 1, 1, 65535, &port))
        return diag_usage("invalid Redis address %s (from %s): expected HOST:PORT, e.g. %s",
                          diag_quote(addr, q), origin, CONFIG_DEFAULT_REDIS);
    hostlen = (size_t)(colon - addr);
    if (hostlen >= 2 && host[0] == '[' && host[hostlen - 1] == ']') {
        host++;
        hostlen -= 2;
    }
    if (hostlen == 0 || hostlen >= sizeof(cfg->host))
        return diag_usage("invalid Redis address %s (from %s): the host is empty or too long",
                          diag_quote(addr, q), origin);
    memcpy(cfg->host, host, hostlen);
    cfg->host[hostlen] = '\0';
    cfg->port = (int)port;
    cfg->is_unix = false;
    return EXIT_OK;
}

/* An exported but empty variable means "not set": that is how people
 * usually unset something in a wrapper script. */
static const char *env(const char *name)
{
    const char *v = getenv(name);

    return (v != NULL && *v != '\0') ? v : NULL;
}

int config_resolve(struct osagoctl_config *cfg, const char *redis_flag,
                   const char *password_flag, const char *db_flag)
{
    const char *addr, *addr_origin, *db, *db_origin;
    char q[DIAG_QUOTE_MAX];
    int rc;

    memset(cfg, 0, sizeof(*cfg));

    if (redis_flag != NULL) {
        addr = redis_flag;
        addr_origin = "--redis";
    } else if ((addr = env("OSAGO_REDIS")) != NULL) {
        addr_origin = "OSAGO_REDIS";
    } else {
        addr = CONFIG_DEFAULT_REDIS;
        addr_origin = "the default";
    }
    rc = parse_addr(cfg, addr, addr_origin);
    if (rc != EXIT_OK)
        return rc;

    cfg->password = password_flag != NULL ? password_flag : env("OSAGO_REDIS_PASSWORD");

    db = db_flag != NULL ? db_flag : env("OSAGO_REDIS_DB");
    db_origin = db_flag != NULL ? "--db" : "OSAGO_REDIS_DB";
    if (db != NULL) {
        /* Redis' own ceiling for "databases" is INT_MAX; let the server
         * reject an index it does not have. */
        if (!parse_bounded(db, 0, 65535, &cfg->db))
            return diag_usage("invalid database %s (from %s): expected a number from 0 up",
                              diag_quote(db, q), db_origin);
        cfg->db_set = true;
    }
    return EXIT_OK;
}
