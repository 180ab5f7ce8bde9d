/*
 * Synchronous hiredis (0.14) connections for the role threads: 2 s connect and command
 * timeouts, so a hung Redis costs a role 2 s rather than forever, and reconnection with a
 * 100 ms .. 2 s backoff.
 */
#include "redis_conn.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "log.h"

#define REDIS_TIMEOUT_MS      2000
#define REDIS_BACKOFF_MIN_MS  100
#define REDIS_BACKOFF_MAX_MS  2000

static void nap(int ms, atomic_int *stop)
{
    while (ms > 0 && (stop == NULL || !*stop)) {
        int slice = ms < 50 ? ms : 50;
        struct timespec ts = { 0, (long)slice * 1000000L };
        nanosleep(&ts, NULL);
        ms -= slice;
    }
}

/* AUTH and SELECT on a fresh connection; 0, or -1 with the reason in why. */
static int setup(redisContext *c, const worker_config_t *cfg, char *why, size_t cap)
{
    redisReply *r;

    if (cfg->redis_password != NULL) {
        r = redisCommand(c, "AUTH %s", cfg->redis_password);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, cap, "AUTH: %s", r != NULL ? r->str : c->errstr);
            freeReplyObject(r);
            return -1;
        }
        freeReplyObject(r);
    }
    if (cfg->redis_db != 0) {
        r = redisCommand(c, "SELECT %d", cfg->redis_db);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, cap, "SELECT %d: %s", cfg->redis_db, r != NULL ? r->str : c->errstr);
            freeReplyObject(r);
            return -1;
        }
        freeReplyObject(r);
    }
    return 0;
}

redisContext *redis_connect(const worker_config_t *cfg, const char *role, atomic_int *stop)
{
    struct timeval tv = { REDIS_TIMEOUT_MS / 1000, (REDIS_TIMEOUT_MS % 1000) * 1000 };
    int backoff = REDIS_BACKOFF_MIN_MS, attempts = 0;
    char why[256];

    for (;;) {     /* one attempt even when already stopping, like pg_connect */
        redisContext *c = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
        if (c != NULL && c->err == 0 && redisSetTimeout(c, tv) == REDIS_OK &&
            setup(c, cfg, why, sizeof(why)) == 0) {
            if (attempts > 0)
                wlog(LOG_INFO, role, NULL, "redis_connected", "connected to %s:%d after %d "
                     "retries", cfg->redis_host, cfg->redis_port, attempts);
            return c;
        }
        if (c == NULL)
            snprintf(why, sizeof(why), "out of memory");
        else if (c->err != 0)
            snprintf(why, sizeof(why), "%s", c->errstr);
        if (c != NULL)
            redisFree(c);
        wlog(attempts == 0 ? LOG_WARN : LOG_DEBUG, role, NULL, "redis_connect_failed",
             "cannot connect to Redis %s:%d (retrying): %s", cfg->redis_host, cfg->redis_port,
             why);
        attempts++;
        if (stop == NULL || *stop)
            return NULL;    /* no stop flag: one attempt */
        nap(backoff, stop);
        if (*stop)
            return NULL;
        backoff = backoff * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS : backoff * 2;
    }
}

int redis_failed_over(redisContext *c, const redisReply *r)
{
    /* anywhere in the message: Redis 6 wraps a script's as "ERR Error running script ... " */
    if (r == NULL || r->type != REDIS_REPLY_ERROR || strstr(r->str, "READONLY") == NULL)
        return 0;
    redis_abandon(c, "the node is a replica now (READONLY)");
    return 1;
}

void redis_abandon(redisContext *c, const char *why)
{
    if (c->err == 0) {
        c->err = REDIS_ERR_OTHER;
        snprintf(c->errstr, sizeof(c->errstr), "%s", why);
    }
}

int redis_ensure(redisContext **c, const worker_config_t *cfg, const char *role,
                 atomic_int *stop)
{
    /* hiredis sets err on I/O errors and timeouts (never on a -ERR reply); after that the
     * context is unusable, a reply may still be in flight */
    if (*c != NULL && (*c)->err == 0)
        return 0;
    if (*c != NULL) {
        wlog(LOG_WARN, role, NULL, "redis_reconnect", "Redis connection lost (%s); reconnecting",
             (*c)->errstr);
        redisFree(*c);
    }
    *c = redis_connect(cfg, role, stop);
    return *c != NULL ? 0 : -1;
}
