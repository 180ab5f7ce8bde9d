/* `partner` subcommands: each one checks its whole command line before
 * touching Redis, so a typo never leaves a half-done change behind. */
#include "partner_cmds.h"

#include "apikey.h"
#include "diag.h"
#include "opts.h"
#include "partner_format.h"
#include "partner_store.h"
#include "redis_conn.h"
#include "usage.h"
#include "validate.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define DEFAULT_POOL "default"
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

typedef int (*partner_cmd)(const struct osagoctl_config *cfg, int argc, char **argv);

/* Turns a store status into the user's message and the exit code. */
static int report(int status, const char *name)
{
    switch (status) {
    case STORE_OK:
        return EXIT_OK;
    case STORE_NO_PARTNER:
        return diag_error("no partner named \"%s\"", name);
    case STORE_EXISTS:
        return diag_error("partner \"%s\" already exists", name);
    case STORE_KEY_TAKEN:
        /* 2^-256 odds: more likely a broken RNG than bad luck, so say so. */
        return diag_error("the new key's hash is already in use; nothing was changed. "
                          "Retry, and check the system's random generator if it recurs");
    case STORE_DANGLING:
        return diag_error("partner \"%s\" is listed in " PARTNER_INDEX_KEY
                          " but its record is missing; delete it and add it again", name);
    case STORE_FAILED:
        return EXIT_RUNTIME;
    default:
        return diag_error("unexpected status %d from Redis for partner \"%s\"", status, name);
    }
}

/* The one NAME argument most subcommands take. */
static int need_name(const char *ctx, size_t npos, const char **pos)
{
    if (npos == 0)
        return diag_usage("%smissing partner NAME", ctx);
    return validate_name("partner name", pos[0]) ? EXIT_OK : EXIT_USAGE;
}

/* Prints a freshly stored key: stdout gets nothing but the key so that
 * `KEY=$(osagoctl partner add ...)` works; the reminder goes to stderr. */
static int show_key(const char *name, const char *key, const char *hash)
{
    printf("%s\n", key);
    if (fflush(stdout) != 0)
        return diag_error("cannot write the key of partner \"%s\" to stdout: %s; "
                          "it is saved, so run 'osagoctl partner rotate-key %s' for a new one",
                          name, strerror(errno), name);
    fprintf(stderr,
            "osagoctl: key for partner \"%s\" (key id %.*s) is shown only once; "
            "only its SHA-256 is stored\n",
            name, KEY_ID_LEN, hash);
    return EXIT_OK;
}

/* A store call that needs the hash of a new key (add, rotate-key). */
struct key_op {
    int (*store)(struct redis_conn *rc, const char *hash, const void *arg);
    const void *arg;
};

/* Generates a key, stores its hash and shows the key: shared by add and
 * rotate-key so both follow the same show-once rules. The key is shown only
 * once Redis has accepted it, so a failed command never prints a key that
 * does not work. */
static int with_new_key(const struct osagoctl_config *cfg, const char *name,
                        const struct key_op *op)
{
    char key[APIKEY_LEN + 1], hash[APIKEY_HASH_HEX_LEN + 1];
    struct redis_conn rc;
    int rc_exit, status, unanswered;

    rc_exit = redis_open(&rc, cfg);
    if (rc_exit != EXIT_OK)
        return rc_exit;
    if (!apikey_generate(key)) {
        redis_close(&rc);
        return EXIT_RUNTIME;
    }
    if (!apikey_hash_hex(key, hash)) {
        apikey_wipe(key);
        redis_close(&rc);
        return EXIT_RUNTIME;
    }
    status = op->store(&rc, hash, op->arg);
    /* no answer (a timeout, a connection lost): Redis may have run the command all the same */
    unanswered = status == STORE_FAILED && rc.ctx->err != 0;
    redis_close(&rc);
    rc_exit = status == STORE_OK ? show_key(name, key, hash) : report(status, name);
    /* The key stays unshown (it may not work): the operator learns how to tell whether it was
     * stored, and the way out if it was. */
    if (unanswered)
        fprintf(stderr,
                "osagoctl: Redis may still have made this change: if 'osagoctl partner list' "
                "shows key id %.*s for partner \"%s\", its key was never shown; "
                "'osagoctl partner rotate-key %s' replaces it\n",
                KEY_ID_LEN, hash, name, name);
    apikey_wipe(key);
    return rc_exit;
}

/* Runs one status-returning store call on a fresh connection. */
static int with_conn(const struct osagoctl_config *cfg, const char *name,
                     int (*fn)(struct redis_conn *rc, const char *name, const void *arg),
                     const void *arg)
{
    struct redis_conn rc;
    int rc_exit = redis_open(&rc, cfg), status;

    if (rc_exit != EXIT_OK)
        return rc_exit;
    status = fn(&rc, name, arg);
    redis_close(&rc);
    return report(status, name);
}

/* --- add ---------------------------------------------------------------- */

struct add_args {
    const char *name, *rate, *burst, *pool;
};

static int store_add_cb(struct redis_conn *rc, const char *hash, const void *arg)
{
    const struct add_args *a = arg;
    char created_at[24];
    struct partner_new p = {
        .name = a->name, .key_hash = hash, .rate = a->rate, .burst = a->burst,
        .pool = a->pool, .created_at = created_at,
    };

    snprintf(created_at, sizeof(created_at), "%lld", (long long)time(NULL));
    return store_add(rc, &p);
}

static int cmd_add(const struct osagoctl_config *cfg, int argc, char **argv)
{
    enum { O_RATE, O_BURST, O_POOL };
    struct opt opts[] = {
        [O_RATE] = { .name = "rate", .takes_value = true },
        [O_BURST] = { .name = "burst", .takes_value = true },
        [O_POOL] = { .name = "pool", .takes_value = true },
    };
    const char *ctx = "partner add: ", *pos[1];
    char burst_text[24];
    struct rate rate;
    struct add_args a;
    struct key_op op = { .store = store_add_cb, .arg = &a };
    size_t npos;
    long burst;
    int rc = opts_parse(ctx, argc, argv, opts, NELEM(opts), pos, 1, &npos);

    if (rc == OPTS_HELP)
        return usage_print(stdout);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = need_name(ctx, npos, pos)) != EXIT_OK)
        return rc;
    if (!opts[O_RATE].seen)
        return diag_usage("%s--rate is required", ctx);
    if (!validate_rate(opts[O_RATE].value, &rate))
        return EXIT_USAGE;
    if (opts[O_BURST].seen) {
        if (!validate_burst(opts[O_BURST].value, &burst))
            return EXIT_USAGE;
    } else {
        burst = burst_default(&rate);
    }
    if (opts[O_POOL].seen && !validate_name("pool label", opts[O_POOL].value))
        return EXIT_USAGE;

    snprintf(burst_text, sizeof(burst_text), "%ld", burst);
    a = (struct add_args){
        .name = pos[0], .rate = rate.text, .burst = burst_text,
        .pool = opts[O_POOL].seen ? opts[O_POOL].value : DEFAULT_POOL,
    };
    return with_new_key(cfg, pos[0], &op);
}

/* --- rotate-key ---------------------------------------------------------- */

static int store_rotate_cb(struct redis_conn *rc, const char *hash, const void *arg)
{
    return store_rotate(rc, arg, hash);
}

static int cmd_rotate_key(const struct osagoctl_config *cfg, int argc, char **argv)
{
    const char *ctx = "partner rotate-key: ", *pos[1];
    size_t npos;
    int rc = opts_parse(ctx, argc, argv, NULL, 0, pos, 1, &npos);
    struct key_op op = { .store = store_rotate_cb };

    if (rc == OPTS_HELP)
        return usage_print(stdout);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = need_name(ctx, npos, pos)) != EXIT_OK)
        return rc;
    op.arg = pos[0];
    return with_new_key(cfg, pos[0], &op);
}

/* --- set, enable, disable ------------------------------------------------ */

static int store_change_cb(struct redis_conn *rc, const char *name, const void *arg)
{
    return store_change(rc, name, arg);
}

static int cmd_set(const struct osagoctl_config *cfg, int argc, char **argv)
{
    enum { O_RATE, O_BURST, O_POOL };
    struct opt opts[] = {
        [O_RATE] = { .name = "rate", .takes_value = true },
        [O_BURST] = { .name = "burst", .takes_value = true },
        [O_POOL] = { .name = "pool", .takes_value = true },
    };
    const char *ctx = "partner set: ", *pos[1];
    struct partner_change change = { 0 };
    char burst_text[24];
    struct rate rate;
    size_t npos;
    long burst;
    int rc = opts_parse(ctx, argc, argv, opts, NELEM(opts), pos, 1, &npos);

    if (rc == OPTS_HELP)
        return usage_print(stdout);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = need_name(ctx, npos, pos)) != EXIT_OK)
        return rc;
    if (!opts[O_RATE].seen && !opts[O_BURST].seen && !opts[O_POOL].seen)
        return diag_usage("%snothing to change: give --rate, --burst or --pool", ctx);
    /* A new rate keeps the stored burst: the burst is part of the contract
     * in its own right, and silently resizing it would surprise. */
    if (opts[O_RATE].seen) {
        if (!validate_rate(opts[O_RATE].value, &rate))
            return EXIT_USAGE;
        change.rate = rate.text;
    }
    if (opts[O_BURST].seen) {
        if (!validate_burst(opts[O_BURST].value, &burst))
            return EXIT_USAGE;
        snprintf(burst_text, sizeof(burst_text), "%ld", burst);
        change.burst = burst_text;
    }
    if (opts[O_POOL].seen) {
        if (!validate_name("pool label", opts[O_POOL].value))
            return EXIT_USAGE;
        change.pool = opts[O_POOL].value;
    }
    return with_conn(cfg, pos[0], store_change_cb, &change);
}

static int set_enabled(const struct osagoctl_config *cfg, const char *ctx, const char *value,
                       int argc, char **argv)
{
    const char *pos[1];
    struct partner_change change = { .enabled = value };
    size_t npos;
    int rc = opts_parse(ctx, argc, argv, NULL, 0, pos, 1, &npos);

    if (rc == OPTS_HELP)
        return usage_print(stdout);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = need_name(ctx, npos, pos)) != EXIT_OK)
        return rc;
    return with_conn(cfg, pos[0], store_change_cb, &change);
}

static int cmd_enable(const struct osagoctl_config *cfg, int argc, char **argv)
{
    return set_enabled(cfg, "partner enable: ", "1", argc, argv);
}

static int cmd_disable(const struct osagoctl_config *cfg, int argc, char **argv)
{
    return set_enabled(cfg, "partner disable: ", "0", argc, argv);
}

/* --- delete -------------------------------------------------------------- */

static int store_delete_cb(struct redis_conn *rc, const char *name, const void *arg)
{
    (void)arg;
    return store_delete(rc, name);
}

static int cmd_delete(const struct osagoctl_config *cfg, int argc, char **argv)
{
    const char *ctx = "partner delete: ", *pos[1];
    size_t npos;
    int rc = opts_parse(ctx, argc, argv, NULL, 0, pos, 1, &npos);

    if (rc == OPTS_HELP)
        return usage_print(stdout);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = need_name(ctx, npos, pos)) != EXIT_OK)
        return rc;
    return with_conn(cfg, pos[0], store_delete_cb, NULL);
}

/* --- list ---------------------------------------------------------------- */

static int cmd_list(const struct osagoctl_config *cfg, int argc, char **argv)
{
    struct opt opts[] = { { .name = "json" } };
    struct partner_list list;
    struct redis_conn rc;
    size_t npos;
    int status, rc_exit = opts_parse("partner list: ", argc, argv, opts, NELEM(opts), NULL, 0,
                                     &npos);

    if (rc_exit == OPTS_HELP)
        return usage_print(stdout);
    if (rc_exit != EXIT_OK)
        return rc_exit;
    if ((rc_exit = redis_open(&rc, cfg)) != EXIT_OK)
        return rc_exit;
    status = store_list(&rc, &list);
    redis_close(&rc);
    if (status != STORE_OK)
        return EXIT_RUNTIME;

    if (opts[0].seen)
        format_partners_json(stdout, &list);
    else
        format_partners_tsv(stdout, &list);
    store_list_free(&list);
    if (fflush(stdout) != 0)
        return diag_error("cannot write to stdout: %s", strerror(errno));
    return EXIT_OK;
}

/* --- dispatch ------------------------------------------------------------ */

int partner_main(const struct osagoctl_config *cfg, int argc, char **argv)
{
    static const struct {
        const char *name;
        partner_cmd run;
    } cmds[] = {
        { "add", cmd_add },         { "list", cmd_list },       { "set", cmd_set },
        { "enable", cmd_enable },   { "disable", cmd_disable }, { "rotate-key", cmd_rotate_key },
        { "delete", cmd_delete },
    };
    char q[DIAG_QUOTE_MAX];

    if (argc == 0)
        return diag_usage("partner: missing subcommand "
                          "(add, list, set, enable, disable, rotate-key, delete)");
    if (strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0 ||
        strcmp(argv[0], "-h") == 0)
        return usage_print(stdout);
    for (size_t i = 0; i < NELEM(cmds); i++)
        if (strcmp(argv[0], cmds[i].name) == 0)
            return cmds[i].run(cfg, argc - 1, argv + 1);
    return diag_usage("partner: unknown subcommand %s", diag_quote(argv[0], q));
}
