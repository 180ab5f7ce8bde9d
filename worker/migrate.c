/*
 * Numbered SQL migrations. Each file NNN_name.sql runs in one transaction together with its
 * schema_migrations row, so a file is either fully applied and recorded or not at all. A
 * session advisory lock serialises concurrent `osago-worker migrate` runs (several instances
 * starting at once): the second waits, then finds everything applied and does nothing.
 *
 * Files must not contain transaction control (BEGIN/COMMIT) nor statements that cannot run in
 * a transaction block (CREATE INDEX CONCURRENTLY).
 *
 * A file's wait for each lock is bounded (lock_timeout, local to its transaction): a DDL statement
 * queued behind a long transaction would otherwise hold every later query on that table queued
 * behind itself, intake's inserts included, for as long as that transaction lasts. A file given
 * up on for a lock, or chosen as a deadlock's victim, has changed nothing and is tried again.
 */
#include "migrate.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pg.h"

#define MIGRATE_LOCK_KEY "7305420866613592391"   /* arbitrary, fixed: "osago-worker migrate" */
#define MIGRATE_MAX_FILES 1000
#define MIGRATE_FILE_MAX  (16 * 1024 * 1024)
#define MIGRATE_PAUSE_MAX_MS 10000      /* between tries of a file that could not have its locks */

enum { APPLY_OK = 0, APPLY_FAILED = -1, APPLY_LOCKED = 1 };

struct migration {
    int  version;
    char name[256];
};

static int by_version(const void *a, const void *b)
{
    const struct migration *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

/* "001_applications.sql" -> 1; -1 for anything else (editor backups, READMEs). */
static int parse_name(const char *name)
{
    size_t n = strlen(name), digits = strspn(name, "0123456789");
    if (digits == 0 || digits > 9 || name[digits] != '_' || n < digits + 5 ||
        strcmp(name + n - 4, ".sql") != 0)
        return -1;
    return atoi(name);
}

static int list_dir(const char *dir, struct migration **out, int *n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    struct migration *m = NULL;
    int count = 0;

    if (d == NULL) {
        wlog(LOG_ERROR, "migrate", NULL, "migrate_dir", "%s: %s", dir, strerror(errno));
        return -1;
    }
    m = calloc(MIGRATE_MAX_FILES, sizeof(*m));
    if (m == NULL) {
        closedir(d);
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        int v = parse_name(e->d_name);
        if (v < 0 || strlen(e->d_name) >= sizeof(m->name))
            continue;
        if (count == MIGRATE_MAX_FILES) {
            wlog(LOG_ERROR, "migrate", NULL, "migrate_dir", "%s: more than %d migrations", dir,
                 MIGRATE_MAX_FILES);
            goto fail;
        }
        m[count].version = v;
        strcpy(m[count].name, e->d_name);
        count++;
    }
    qsort(m, (size_t)count, sizeof(*m), by_version);
    for (int i = 1; i < count; i++) {
        if (m[i].version == m[i - 1].version) {
            wlog(LOG_ERROR, "migrate", NULL, "migrate_duplicate",
                 "%s: %s and %s have the same version %d", dir, m[i - 1].name, m[i].name,
                 m[i].version);
            goto fail;
        }
    }
    closedir(d);
    *out = m;
    *n = count;
    return 0;
fail:
    closedir(d);
    free(m);
    return -1;
}

static char *read_sql(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        wlog(LOG_ERROR, "migrate", NULL, "migrate_read", "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MIGRATE_FILE_MAX + 1);
    size_t n = buf != NULL ? fread(buf, 1, MIGRATE_FILE_MAX + 1, f) : 0;
    int bad = buf == NULL || ferror(f) || n > MIGRATE_FILE_MAX || memchr(buf, '\0', n) != NULL;
    fclose(f);
    if (bad) {
        wlog(LOG_ERROR, "migrate", NULL, "migrate_read", "%s: unreadable, too large or binary",
             path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

static int simple(PGconn *c, const char *sql)
{
    PGresult *r = pg_exec(c, "migrate", sql, 0, NULL, NULL);
    PQclear(r);
    return r != NULL ? 0 : -1;
}

/* lock_not_available (lock_timeout) and deadlock_detected: PostgreSQL rolled the file back
 * because of other sessions' locks, not because of anything in it */
static int is_lock_conflict(const char *state)
{
    return state != NULL && (strcmp(state, "55P03") == 0 || strcmp(state, "40P01") == 0);
}

/* One step of a file's transaction: APPLY_OK; APPLY_LOCKED, the reason in why; or APPLY_FAILED,
 * logged. nparams < 0: sql may hold several statements (the simple protocol). */
static int step(PGconn *c, const struct migration *m, const char *sql, int nparams,
                const char *const *params, char *why, size_t whylen)
{
    PGresult       *r = nparams < 0 ? PQexec(c, sql)
                                    : PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType  st = PQresultStatus(r);
    const char     *state, *msg;
    int             rc = APPLY_OK;

    /* a file of comments only (a placeholder, a body commented out) is an empty query */
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
        if (is_lock_conflict(state)) {
            snprintf(why, whylen, "%s (SQLSTATE %s)", msg != NULL ? msg : "lock conflict", state);
            rc = APPLY_LOCKED;
        } else {
            wlog(LOG_ERROR, "migrate", NULL, "migrate_failed", "%s: SQLSTATE %s: %.*s", m->name,
                 state != NULL ? state : "none",
                 msg != NULL ? (int) strlen(msg) : (int) strcspn(PQerrorMessage(c), "\n"),
                 msg != NULL ? msg : PQerrorMessage(c));
            rc = APPLY_FAILED;
        }
    }
    PQclear(r);
    return rc;
}

/* The file's statements, then its row, then COMMIT: one transaction, rolled back whole on any
 * failure. APPLY_LOCKED: rolled back for other sessions' locks, to be tried again. */
static int apply_one(PGconn *c, const char *dir, const struct migration *m, int lock_timeout_ms,
                     char *why, size_t whylen)
{
    char        version[16], timeout[24];
    const char *row[2] = { version, m->name };
    const char *limit[1] = { timeout };
    char       *sql = read_sql(dir, m->name);
    int         rc;

    if (sql == NULL)
        return APPLY_FAILED;
    snprintf(version, sizeof(version), "%d", m->version);
    /* 0 is set too, as "no limit": a lock_timeout from the server's or the role's settings would
     * otherwise apply */
    snprintf(timeout, sizeof(timeout), "%dms", lock_timeout_ms);
    if (simple(c, "BEGIN") < 0) {
        free(sql);
        return APPLY_FAILED;
    }
    /* local to the transaction: the session's advisory lock (migrate_run) is not limited */
    rc = step(c, m, "SELECT set_config('lock_timeout', $1, true)", 1, limit, why, whylen);
    if (rc == APPLY_OK)
        rc = step(c, m, sql, -1, NULL, why, whylen);
    if (rc == APPLY_OK)
        rc = step(c, m, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2, row,
                  why, whylen);
    if (rc == APPLY_OK)
        rc = step(c, m, "COMMIT", 0, NULL, why, whylen);
    free(sql);
    if (rc != APPLY_OK) {
        simple(c, "ROLLBACK");      /* after a failed COMMIT, a warning and nothing else */
        return rc;
    }
    wlog(LOG_INFO, "migrate", NULL, "migrate_applied", "applied %s (version %d)", m->name,
         m->version);
    return APPLY_OK;
}

static void pause_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* One file, tried up to cfg->migrate_attempts times while other sessions' locks are in its way,
 * with a pause that doubles from 1 s up to 10 s between tries: their transactions get to finish,
 * and the queries queued behind this file's wait get to run. */
static int apply_with_retries(PGconn *c, const worker_config_t *cfg, const struct migration *m)
{
    char why[512] = "";
    int pause = 1000;

    for (int attempt = 1;; attempt++) {
        int rc = apply_one(c, cfg->migrations_dir, m, cfg->migrate_lock_timeout_ms, why,
                           sizeof(why));

        if (rc != APPLY_LOCKED)
            return rc;
        if (attempt >= cfg->migrate_attempts) {
            wlog(LOG_ERROR, "migrate", NULL, "migrate_failed",
                 "%s: not applied: %s, %d time(s) (another transaction holds a table it "
                 "changes: see pg_locks and pg_stat_activity; --migrate-attempts, "
                 "--migrate-lock-timeout-ms)", m->name, why, attempt);
            return APPLY_FAILED;
        }
        wlog(LOG_WARN, "migrate", NULL, "migrate_lock_wait",
             "%s: %s; attempt %d of %d, again in %d ms", m->name, why, attempt,
             cfg->migrate_attempts, pause);
        pause_ms(pause);
        pause = pause * 2 > MIGRATE_PAUSE_MAX_MS ? MIGRATE_PAUSE_MAX_MS : pause * 2;
    }
}

/* Payloads are UTF-8 text (a plate is Cyrillic). In a database of another encoding each one
 * that the encoding cannot hold fails with a data error, which the relay must take for a bad
 * entry and drop: refused once, here, before any table exists. */
static int check_encoding(PGconn *c)
{
    const char *enc = PQparameterStatus(c, "server_encoding");

    if (enc != NULL && strcmp(enc, "UTF8") == 0)
        return 0;
    wlog(LOG_ERROR, "migrate", NULL, "migrate_encoding",
         "the database's encoding is %s; osago needs UTF8 (CREATE DATABASE ... ENCODING 'UTF8'"
         " TEMPLATE template0, or initdb -E UTF8)", enc != NULL ? enc : "unknown");
    return -1;
}

static int is_applied(PGresult *applied, int version)
{
    for (int i = 0; i < PQntuples(applied); i++)
        if (atoi(PQgetvalue(applied, i, 0)) == version)
            return 1;
    return 0;
}

int migrate_run(const worker_config_t *cfg)
{
    struct migration *m = NULL;
    PGresult *applied = NULL;
    int n = 0, done = 0, rc = -1;

    if (list_dir(cfg->migrations_dir, &m, &n) < 0)
        return -1;
    PGconn *c = pg_connect(cfg->pg_conninfo, "migrate", NULL, NULL);
    if (c == NULL) {
        free(m);
        return -1;
    }
    if (check_encoding(c) < 0 || simple(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")") < 0)
        goto out;
    if (simple(c, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                  " version    integer     PRIMARY KEY,"
                  " name       text        NOT NULL,"
                  " applied_at timestamptz NOT NULL DEFAULT now())") < 0)
        goto unlock;
    applied = pg_exec(c, "migrate", "SELECT version FROM schema_migrations", 0, NULL, NULL);
    if (applied == NULL)
        goto unlock;

    for (int i = 0; i < n; i++) {
        if (is_applied(applied, m[i].version))
            continue;
        if (apply_with_retries(c, cfg, &m[i]) != APPLY_OK)
            goto unlock;
        done++;
    }
    rc = 0;
    wlog(LOG_INFO, "migrate", NULL, "migrate_done",
         "%d migration(s) applied, %d already present, %d known to the database",
         done, n - done, PQntuples(applied) + done);
unlock:
    simple(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")");
out:
    PQclear(applied);
    PQfinish(c);
    free(m);
    return rc;
}
