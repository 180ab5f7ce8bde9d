/* Partner records in Redis, laid out as docs/rate-limiting.md ("Redis keys")
 * specifies. Every change is one Lua script, so the partner hash and the
 * osago:partners index can never disagree, even with two operators at once. */
#ifndef OSAGOCTL_PARTNER_STORE_H
#define OSAGOCTL_PARTNER_STORE_H

#include "redis_conn.h"

#include <stddef.h>

#define PARTNER_KEY_PREFIX "osago:partner:"
#define PARTNER_INDEX_KEY "osago:partners"
#define PARTNER_RL_KEY_PREFIX "osago:rl:partner:"

enum store_status {
    STORE_OK = 0,
    STORE_NO_PARTNER = -1,
    STORE_EXISTS = -2,        /* a partner with that name exists */
    STORE_KEY_TAKEN = -3,     /* the new key hash is already in use */
    STORE_DANGLING = -4,      /* the index points at a missing partner hash */
    STORE_FAILED = -100       /* Redis failed; already reported */
};

struct partner_new {
    const char *name, *key_hash, *rate, *burst, *pool, *created_at;
};

/* Fields to change; NULL leaves a field as it is. */
struct partner_change {
    const char *rate, *burst, *pool, *enabled;
};

/* One partner as listed; any field may be NULL if the record is damaged. */
struct partner_row {
    const char *name, *key_hash, *rate, *burst, *pool, *enabled;
};

struct partner_list {
    struct partner_row *rows;   /* sorted by name */
    size_t count;
    void *owner;                /* the reply the strings point into */
};

int store_add(struct redis_conn *rc, const struct partner_new *p);
int store_change(struct redis_conn *rc, const char *name, const struct partner_change *c);
int store_rotate(struct redis_conn *rc, const char *name, const char *new_key_hash);
int store_delete(struct redis_conn *rc, const char *name);

/* Returns STORE_OK and fills list (free with store_list_free), or STORE_FAILED. */
int store_list(struct redis_conn *rc, struct partner_list *list);
void store_list_free(struct partner_list *list);

#endif
