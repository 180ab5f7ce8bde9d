/* insurer-sim's command line. */
#ifndef INSURER_SIM_OPTIONS_H
#define INSURER_SIM_OPTIONS_H

#include "config.h"

#include <stdio.h>

enum { OPTIONS_OK = 0, OPTIONS_HELP = 1, OPTIONS_BAD = 2 };

/* Fills cfg (defaults, then flags); prints the reason to stderr when it fails. */
int options_parse(int argc, char **argv, struct sim_config *cfg);
void options_usage(FILE *out);

#endif
