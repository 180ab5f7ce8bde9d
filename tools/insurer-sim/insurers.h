/* The insurer list: display names, lookup by code, and the file the worker reads. */
#ifndef INSURER_SIM_INSURERS_H
#define INSURER_SIM_INSURERS_H

#include "config.h"

#include <stddef.h>

/* The company's name for a known code ("alfa" -> "АльфаСтрахование"), else the code. */
const char *insurers_name(const char *code);

const struct insurer *insurers_find(const struct sim_config *cfg, const char *code, size_t len);

/* Writes [{code, name, url, timeout_ms}] for every insurer to path (atomically, through a
 * temporary file and rename). Returns 0, or -1 with err filled. */
int insurers_write_file(const struct sim_config *cfg, int port, const char *path, char *err,
                        size_t errsize);

#endif
