/* Where osagoctl finds Redis: the one piece of state every command shares. */
#ifndef OSAGOCTL_CONFIG_H
#define OSAGOCTL_CONFIG_H

#include <stdbool.h>

#define CONFIG_DEFAULT_REDIS "127.0.0.1:6380"

struct osagoctl_config {
    const char *addr;      /* as the user wrote it, for messages */
    char host[256];        /* host name, IP, or socket path when is_unix */
    int port;
    bool is_unix;
    const char *password;  /* NULL: no AUTH */
    long db;
    bool db_set;           /* SELECT only when asked, as the edge does */
};

/* Fills cfg from the flags (NULL when not given), falling back to
 * OSAGO_REDIS, OSAGO_REDIS_PASSWORD and OSAGO_REDIS_DB. Reports a bad value
 * and returns EXIT_USAGE; returns EXIT_OK otherwise. */
int config_resolve(struct osagoctl_config *cfg, const char *redis_flag,
                   const char *password_flag, const char *db_flag);

#endif
