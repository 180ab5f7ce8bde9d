/*
 * The edge's read model of an application (DESIGN.md): rebuilt from PostgreSQL after every
 * change, written to osago:app:{id} (doc, owner, updated_at) and announced with
 * PUBLISH osago:app-updates "{id} {updated_at}".
 */
#ifndef OSAGO_WORKER_READ_MODEL_H
#define OSAGO_WORKER_READ_MODEL_H

#include <string.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "insurers.h"
#include "pg.h"

/* The columns a document is built from, for the statements that feed read_model_doc_build:
 * the application's (alias a) and each quote's (alias q). The document's updated_at is the
 * application's, which every change of the document moves forward by at least 1 ms (see the
 * writers), so it is a version number for the document. */
#define READ_MODEL_APP_COLUMNS                                                                   \
    "a.id::text, a.status, a.partner,"                                                           \
    " to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"          \
    " floor(extract(epoch FROM a.updated_at) * 1000)::bigint"
/* Their positions, in READ_MODEL_APP_COLUMNS' order */
enum {
    READ_MODEL_APP_ID,
    READ_MODEL_APP_STATUS,
    READ_MODEL_APP_OWNER,
    READ_MODEL_APP_CREATED,
    READ_MODEL_APP_UPDATED,
    READ_MODEL_APP_NCOLS
};
#define READ_MODEL_QUOTE_COLUMNS "q.insurer_code, q.status, q.premium_rub::text, q.error"

/* One quote of a document, as READ_MODEL_QUOTE_COLUMNS gives it (borrowed strings; status as
 * PostgreSQL stores it, premium and error NULL when none). */
typedef struct {
    const char *code;
    const char *status;
    const char *premium;
    const char *error;
} read_model_quote_t;

/* The most quotes of one application a document shows. */
#define READ_MODEL_QUOTES_MAX (INSURERS_MAX * 2)

/* A quote's status as the API knows it, pending|ok|error (a running call is still pending for
 * the client); a string literal, never the argument. */
static inline const char *read_model_api_status(const char *db_status)
{
    if (strcmp(db_status, "ok") == 0)
        return "ok";
    if (strcmp(db_status, "error") == 0)
        return "error";
    return "pending";
}

/* One document ready for Redis: {id, status, created_at, updated_at (ms),
 * insurers:[{code, name, status, premium_rub, error}]}, with what the write needs. */
typedef struct {
    char        id[40];
    char        updated[24];
    char       *owner;
    char       *doc;
    size_t      doc_len;
    const char *trace;       /* borrowed: logged with the document */
    int         done;        /* written, or found current: nothing more to send */
} read_model_doc_t;

/*
 * The quotes in rows [first, last) of res (READ_MODEL_QUOTE_COLUMNS from column qcol) as views
 * into res, at most max; a row whose code is NULL is skipped (a LEFT JOIN's application without
 * quotes). Returns how many.
 */
int read_model_quotes_of(const PGresult *res, int first, int last, int qcol,
                         read_model_quote_t *quotes, int max);

/*
 * Builds the document of the application in row app_row of apps (READ_MODEL_APP_COLUMNS from
 * column 0) with quotes[0..n). 0, or -1 (logged). read_model_doc_free frees it.
 */
int read_model_doc_build(const PGresult *apps, int app_row, const read_model_quote_t *quotes,
                         int n, const insurer_list_t *insurers, const char *trace,
                         read_model_doc_t *doc);

void read_model_doc_free(read_model_doc_t *doc);

/*
 * Writes each document not done yet only when Redis holds an older version of it (the hash's
 * updated_at) or none, atomically with its EXPIRE and PUBLISH (one Lua script), in one pipelined
 * round trip (two when Redis lost the script): a duplicate or late write publishes nothing, and
 * an older document never replaces a newer one. Returns how many were written and published, or
 * -1 on an error (the caller retries: documents done are marked so and skipped).
 */
int read_model_write(redisContext *redis, read_model_doc_t *docs, int n, int ttl_s);

/*
 * The documents of n applications read from PostgreSQL (one SELECT, outside a transaction
 * block: it prepares its statement on first use, see pg_exec_prepared) and written as
 * read_model_write does; traces[i] (or traces NULL) is logged with ids[i]. Returns how many were
 * written and published (0 when Redis was current or the applications are unknown), or -1 (also
 * when the wait for the SELECT was given up, see pg_exec).
 */
int read_model_publish_many(PGconn *pg, redisContext *redis, const insurer_list_t *insurers,
                            const char *const *ids, const char *const *traces, int n, int ttl_s,
                            const pg_wait_t *wait);

#endif
