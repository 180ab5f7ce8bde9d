/* The quote request body: the application payload of DESIGN.md plus application_id. */
#ifndef INSURER_SIM_APPLICATION_H
#define INSURER_SIM_APPLICATION_H

#include "tariff.h"

#include <stddef.h>

#define APPLICATION_ID_MAX 128

struct application {
    char id[APPLICATION_ID_MAX + 1];
    struct tariff_app tariff;
};

/* Parses a NUL-terminated JSON body. Returns 0, or -1 with a message for the client in err
 * (malformed JSON or a field the tariff needs missing or invalid). */
int application_parse(const char *json, struct application *app, char *err, size_t errsize);

#endif
