/* Partner storage. The Lua scripts return the store_status codes as
 * integers; the C side turns them into messages, so the wording lives in one
 * language only. Partner hash keys are built inside the scripts from the index
 * they just read, which is what keeps a lookup and its write atomic. */
#include "partner_store.h"

#include "diag.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char add_script[] =
    "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -2 end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then return -3 end\n"
    "redis.call('HSET', KEYS[2], 'name', ARGV[1], 'rate', ARGV[3], 'burst', ARGV[4],\n"
    "           'pool', ARGV[5], 'enabled', '1', 'created_at', ARGV[6])\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "return 0\n";

static const char change_script[] =
    "local h = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if not h then return -1 end\n"
    "local key = '" PARTNER_KEY_PREFIX "' .. h\n"
    /* HSET on a missing hash would create a partner without a name. */
    "if redis.call('EXISTS', key) == 0 then return -4 end\n"
    "redis.call('HSET', key, unpack(ARGV, 2))\n"
    "return 0\n";

/* RENAME moves every field at once, so fields added by others survive. */
static const char rotate_script[] =
    "local h = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if not h then return -1 end\n"
    "local old = '" PARTNER_KEY_PREFIX "' .. h\n"
    "if redis.call('EXISTS', old) == 0 then return -4 end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then return -3 end\n"
    "redis.call('RENAME', old, KEYS[2])\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "return 0\n";

/* The GCRA state goes too: a partner later re-created under the same name
 * starts with a full burst, not with its predecessor's debt. A missing
 * partner hash is tolerated so a damaged entry can still be removed. */
static const char delete_script[] =
    "local h = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if not h then return -1 end\n"
    "redis.call('DEL', '" PARTNER_KEY_PREFIX "' .. h)\n"
    "redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "redis.call('DEL', '" PARTNER_RL_KEY_PREFIX "' .. ARGV[1])\n"
    "return 0\n";

/* One script so the listing is a consistent snapshot. A damaged record gives
 * false fields, which reach C as nil replies. */
static const char list_script[] =
    "local idx = redis.call('HGETALL', KEYS[1])\n"
    "local out = {}\n"
    "for i = 1, #idx, 2 do\n"
    "  local f = redis.call('HMGET', '" PARTNER_KEY_PREFIX "' .. idx[i + 1],\n"
    "                       'rate', 'burst', 'pool', 'enabled')\n"
    "  out[#out + 1] = {idx[i], idx[i + 1], f[1], f[2], f[3], f[4]}\n"
    "end\n"
    "table.sort(out, function(a, b) return a[1] < b[1] end)\n"
    "return out\n";

/* Runs a script that answers with a status code. argv starts after
 * "EVAL script numkeys", which this fills in. */
static int eval_status(struct redis_conn *rc, const char *script, const char *numkeys,
                       int argc, const char **argv)
{
    const char *full[16];
    redisReply *r;
    int status;

    if (argc + 3 > (int)(sizeof(full) / sizeof(full[0]))) {
        diag_error("internal error: too many script arguments");
        return STORE_FAILED;
    }
    full[0] = "EVAL";
    full[1] = script;
    full[2] = numkeys;
    memcpy(full + 3, argv, (size_t)argc * sizeof(*argv));

    r = redis_command(rc, argc + 3, full);
    if (r == NULL)
        return STORE_FAILED;
    if (r->type != REDIS_REPLY_INTEGER) {
        diag_error("Redis at %s: unexpected reply type %d from a partner script", rc->addr,
                   r->type);
        status = STORE_FAILED;
    } else {
        status = (int)r->integer;
    }
    freeReplyObject(r);
    return status;
}

int store_add(struct redis_conn *rc, const struct partner_new *p)
{
    char key[sizeof(PARTNER_KEY_PREFIX) + 64];
    const char *argv[] = { PARTNER_INDEX_KEY, key, p->name, p->key_hash, p->rate, p->burst,
                           p->pool, p->created_at };

    snprintf(key, sizeof(key), PARTNER_KEY_PREFIX "%s", p->key_hash);
    return eval_status(rc, add_script, "2", (int)(sizeof(argv) / sizeof(argv[0])), argv);
}

int store_change(struct redis_conn *rc, const char *name, const struct partner_change *c)
{
    const char *argv[10];
    int n = 0;

    argv[n++] = PARTNER_INDEX_KEY;
    argv[n++] = name;
    if (c->rate != NULL) {
        argv[n++] = "rate";
        argv[n++] = c->rate;
    }
    if (c->burst != NULL) {
        argv[n++] = "burst";
        argv[n++] = c->burst;
    }
    if (c->pool != NULL) {
        argv[n++] = "pool";
        argv[n++] = c->pool;
    }
    if (c->enabled != NULL) {
        argv[n++] = "enabled";
        argv[n++] = c->enabled;
    }
    if (n == 2)
        return STORE_OK;
    return eval_status(rc, change_script, "1", n, argv);
}

int store_rotate(struct redis_conn *rc, const char *name, const char *new_key_hash)
{
    char key[sizeof(PARTNER_KEY_PREFIX) + 64];
    const char *argv[] = { PARTNER_INDEX_KEY, key, name, new_key_hash };

    snprintf(key, sizeof(key), PARTNER_KEY_PREFIX "%s", new_key_hash);
    return eval_status(rc, rotate_script, "2", 4, argv);
}

int store_delete(struct redis_conn *rc, const char *name)
{
    const char *argv[] = { PARTNER_INDEX_KEY, name };

    return eval_status(rc, delete_script, "1", 2, argv);
}

static const char *str_or_null(const redisReply *r)
{
    return r->type == REDIS_REPLY_STRING ? r->str : NULL;
}

int store_list(struct redis_conn *rc, struct partner_list *list)
{
    const char *argv[] = { "EVAL", list_script, "1", PARTNER_INDEX_KEY };
    redisReply *r;

    list->rows = NULL;
    list->count = 0;
    list->owner = NULL;

    r = redis_command(rc, 4, argv);
    if (r == NULL)
        return STORE_FAILED;
    if (r->type != REDIS_REPLY_ARRAY)
        goto bad_reply;
    if (r->elements > 0) {
        list->rows = calloc(r->elements, sizeof(*list->rows));
        if (list->rows == NULL) {
            diag_error("out of memory listing %zu partners", r->elements);
            freeReplyObject(r);
            return STORE_FAILED;
        }
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        struct partner_row *row = &list->rows[i];

        if (e->type != REDIS_REPLY_ARRAY || e->elements != 6)
            goto bad_reply;
        row->name = str_or_null(e->element[0]);
        row->key_hash = str_or_null(e->element[1]);
        row->rate = str_or_null(e->element[2]);
        row->burst = str_or_null(e->element[3]);
        row->pool = str_or_null(e->element[4]);
        row->enabled = str_or_null(e->element[5]);
    }
    list->count = r->elements;
    list->owner = r;
    return STORE_OK;

bad_reply:
    diag_error("Redis at %s: unexpected reply to the partner listing", rc->addr);
    free(list->rows);
    list->rows = NULL;
    freeReplyObject(r);
    return STORE_FAILED;
}

void store_list_free(struct partner_list *list)
{
    free(list->rows);
    if (list->owner != NULL)
        freeReplyObject(list->owner);
    list->rows = NULL;
    list->owner = NULL;
    list->count = 0;
}
