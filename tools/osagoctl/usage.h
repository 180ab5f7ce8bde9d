/* The help text. */
#ifndef OSAGOCTL_USAGE_H
#define OSAGOCTL_USAGE_H

#include <stdio.h>

/* Returns EXIT_OK, for `return usage_print(stdout);`. */
int usage_print(FILE *out);

#endif
