/* Error reporting and exit codes shared by every osagoctl command. */
#ifndef OSAGOCTL_DIAG_H
#define OSAGOCTL_DIAG_H

#include <stddef.h>

/* Scripts tell "you called it wrong" (fix the command line) from "it did not
 * work" (look at Redis) by the exit code alone. */
enum {
    EXIT_OK = 0,
    EXIT_RUNTIME = 1,
    EXIT_USAGE = 2
};

/* Room for a quoted user value in a message: long or binary input is cut
 * and escaped so a message always stays on one readable line. */
#define DIAG_QUOTE_MAX 100

/* "osagoctl: <message>" on stderr; returns EXIT_RUNTIME. */
int diag_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Same, followed by a pointer to --help; returns EXIT_USAGE. */
int diag_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writes s to buf as a double-quoted string with non-printable bytes shown
 * as \xNN, truncated with "..." if needed; returns buf. */
const char *diag_quote(const char *s, char buf[DIAG_QUOTE_MAX]);

#endif
