/* Connection handling. Every failure names the address, because the first
 * question when it fails is "which Redis did it try?". */
#include "redis_conn.h"

#include "diag.h"

#include <errno.h>
#include <stdio.h>

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* hiredis reports a read timeout as a bare EAGAIN, which reads like a bug;
 * say what actually happened. */
static const char *io_error(const redisContext *c, int saved_errno)
{
    if (c->err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK))
        return "no answer within " STRINGIFY(REDIS_TIMEOUT_SECONDS) " s";
    return c->errstr[0] != '\0' ? c->errstr : "unknown error";
}

redisReply *redis_command(struct redis_conn *rc, int argc, const char **argv)
{
    redisReply *r;

    errno = 0;
    r = redisCommandArgv(rc->ctx, argc, argv, NULL);
    if (r == NULL) {
        diag_error("Redis at %s: %s", rc->addr, io_error(rc->ctx, errno));
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        diag_error("Redis at %s: %s", rc->addr, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

int redis_open(struct redis_conn *rc, const struct osagoctl_config *cfg)
{
    struct timeval tv = { .tv_sec = REDIS_TIMEOUT_SECONDS, .tv_usec = 0 };
    redisContext *c;
    redisReply *r;

    rc->ctx = NULL;
    rc->addr = cfg->addr;

    c = cfg->is_unix ? redisConnectUnixWithTimeout(cfg->host, tv)
                     : redisConnectWithTimeout(cfg->host, cfg->port, tv);
    if (c == NULL)
        return diag_error("cannot connect to Redis at %s: out of memory", cfg->addr);
    if (c->err) {
        diag_error("cannot connect to Redis at %s: %s", cfg->addr, c->errstr);
        redisFree(c);
        return EXIT_RUNTIME;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        diag_error("cannot set a timeout on the connection to Redis at %s: %s", cfg->addr,
                   c->errstr);
        redisFree(c);
        return EXIT_RUNTIME;
    }
    rc->ctx = c;

    if (cfg->password != NULL) {
        const char *argv[] = { "AUTH", cfg->password };

        /* Own message rather than redis_command's: "rejected AUTH" hides
         * whether the password or the connection is at fault. */
        errno = 0;
        r = redisCommandArgv(c, 2, argv, NULL);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            diag_error("cannot authenticate to Redis at %s: %s", cfg->addr,
                       r != NULL ? r->str : io_error(c, errno));
            if (r != NULL)
                freeReplyObject(r);
            redis_close(rc);
            return EXIT_RUNTIME;
        }
        freeReplyObject(r);
    }

    if (cfg->db_set) {
        char db[24];
        const char *argv[] = { "SELECT", db };

        snprintf(db, sizeof(db), "%ld", cfg->db);
        r = redis_command(rc, 2, argv);
        if (r == NULL) {
            redis_close(rc);
            return EXIT_RUNTIME;
        }
        freeReplyObject(r);
    }
    return EXIT_OK;
}

void redis_close(struct redis_conn *rc)
{
    if (rc->ctx != NULL)
        redisFree(rc->ctx);
    rc->ctx = NULL;
}
