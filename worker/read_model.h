/*
 * The edge's read model of an application (DESIGN.md): rebuilt from PostgreSQL after every
 * change, written to osago:app:{id} (doc, owner, updated_at) and announced with
 * PUBLISH osago:app-updates "{id} {updated_at}".
 */
#ifndef OSAGO_WORKER_READ_MODEL_H
#define OSAGO_WORKER_READ_MODEL_H

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "insurers.h"

/*
 * Reads the application and its quotes, builds the document
 * {id, status, created_at, updated_at (ms), insurers:[{code, name, status, premium_rub, error}]}
 * and writes and publishes it. Returns 0, or -1 (logged): the caller retries (the Kafka message
 * is not marked done).
 */
int read_model_publish(PGconn *pg, redisContext *redis, const insurer_list_t *insurers,
                       const char *application_id, const char *trace, int ttl_s);

/* ---- added with the role threads (orchestrator, results) ----------------------------------
 *
 * Both functions write a document only when Redis holds an older version of it (the hash's
 * updated_at, which the writers move forward by at least 1 ms per change) or none, atomically
 * with its EXPIRE and PUBLISH (one Lua script): a duplicate or late call publishes nothing, and
 * an older document never replaces a newer one. read_model_publish therefore returns 1 when it
 * wrote and published, 0 when Redis was already current (or the application is unknown), -1 on
 * an error.
 *
 * read_model_publish_many: the same for n applications with one SELECT and one pipelined round
 * trip to Redis; traces[i] (or traces NULL) is logged with ids[i]. Returns how many documents
 * were written and published, or -1 on an error (the caller retries them all: what is current
 * already is skipped). Both run outside a transaction block (they prepare their statement on
 * first use, see pg_exec_prepared).
 */
int read_model_publish_many(PGconn *pg, redisContext *redis, const insurer_list_t *insurers,
                            const char *const *ids, const char *const *traces, int n, int ttl_s);

#endif
