/*
 * `osago-worker migrate`: applies worker/migrations/NNN_name.sql in order, each in a transaction,
 * recording applied versions in schema_migrations. Migrations only expand (add), so the previous
 * release keeps working during a rolling or blue/green deploy; contractions come a release later.
 */
#ifndef OSAGO_WORKER_MIGRATE_H
#define OSAGO_WORKER_MIGRATE_H

#include "config.h"

int migrate_run(const worker_config_t *cfg);   /* 0 ok; logs what it applied */

#endif
