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

#endif
