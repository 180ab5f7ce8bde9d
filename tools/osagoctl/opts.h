/* Command-line option parsing for osagoctl's long options. getopt_long is a
 * GNU extension outside the POSIX level this project builds against, and the
 * rules here are small enough to own. */
#ifndef OSAGOCTL_OPTS_H
#define OSAGOCTL_OPTS_H

#include <stdbool.h>
#include <stddef.h>

/* Returned instead of an exit code when --help or -h was given. */
#define OPTS_HELP (-1)

struct opt {
    const char *name;   /* without the leading "--" */
    bool takes_value;   /* --name VALUE or --name=VALUE */
    bool seen;
    const char *value;
};

/* Options and positional arguments in any order; "--" ends the options.
 * ctx prefixes messages, e.g. "partner add: ". At most maxpos positionals
 * are accepted into pos. Returns EXIT_OK, OPTS_HELP, or EXIT_USAGE after
 * reporting. */
int opts_parse(const char *ctx, int argc, char **argv, struct opt *opts, size_t nopts,
               const char **pos, size_t maxpos, size_t *npos);

/* Options up to the first positional argument, whose index goes to *next
 * (argc if there is none); used for the options before the command. */
int opts_parse_leading(int argc, char **argv, struct opt *opts, size_t nopts, int *next);

#endif
