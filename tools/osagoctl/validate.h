/* Checks of user-supplied partner values. Each check explains a rejection on
 * stderr itself, so every caller reports the same rule the same way. */
#ifndef OSAGOCTL_VALIDATE_H
#define OSAGOCTL_VALIDATE_H

#include <stdbool.h>

#define NAME_MAX_LEN 64
#define RATE_MIN_MILLI 1L              /* 0.001 req/s */
#define RATE_MAX_MILLI 1000000000L     /* 1000000 req/s */
#define BURST_MIN 1L
#define BURST_MAX 1000000L

/* Rates are kept as integer thousandths so that no value ever goes through
 * a double and comes back as 0.49999999. */
struct rate {
    long milli;
    /* Canonical form stored in Redis: "20", "0.5", "100.25". Sized for any
     * pair of ints so the compiler can prove snprintf never truncates. */
    char text[32];
};

/* what: "partner name" or "pool label", used in the message. */
bool validate_name(const char *what, const char *s);
bool validate_rate(const char *s, struct rate *out);
bool validate_burst(const char *s, long *out);

/* The burst a partner gets when none is given: one second's worth of
 * requests, and never less than one request. */
long burst_default(const struct rate *r);

#endif
