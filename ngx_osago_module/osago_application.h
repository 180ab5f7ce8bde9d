/*
 * OSAGO application validator and canonicalizer.
 *
 * Plain C (C99/C11), no nginx headers, no globals besides const tables: used by the nginx intake
 * handler and by the worker. Parses with yajl 2's event API (UTF-8 validation on, partial values
 * off, a nesting-depth limit enforced as containers open), validates every field of the
 * application schema (docs: DESIGN.md "Edge HTTP API"), and writes the canonical form whose
 * SHA-256 is the idempotency fingerprint.
 *
 * Canonical form: compact JSON, members sorted by name at every level (so "unlimited_drivers"
 * comes between "start_date" and "vehicle"), only present members, integers as plain decimals,
 * kbm_class always a string, plate letters in Cyrillic, drivers in the order given. Two bodies
 * that mean the same application give byte-identical output; any semantic difference gives
 * different output. Canonicalizing a canonical form returns it unchanged.
 *
 * Error precedence: errors that make the body unusable as JSON (malformed-json, invalid-utf8,
 * too-deep, empty-body, control characters inside a string) win over schema errors; among schema
 * errors the first one in document order is reported (required members are checked when their
 * object closes).
 */

#ifndef OSAGO_APPLICATION_H
#define OSAGO_APPLICATION_H

#include <stddef.h>

typedef struct {
    size_t max_depth;          /* e.g. 8 */
    int    today_days;         /* days since 1970-01-01 (UTC) of "today", passed by the caller for testability */
    int    any_start_date;     /* 1: start_date may be any real date (checking a replay of an application
                                * accepted on an earlier day, whose window has moved on since) */
} osago_app_limits_t;

typedef struct {
    const char *type;          /* problem type suffix: "malformed-json", "invalid-utf8", "too-deep", "unknown-field", "duplicate-field", "missing-field", "invalid-field", "empty-body" */
    char pointer[192];         /* RFC 6901 JSON pointer to the offending value ("" for the whole document), '~' and '/' escaped */
    char detail[256];          /* one human sentence, e.g. "power_hp must be an integer from 1 to 1500" */
    int  start_window;         /* 1: the error is a real start_date behind today's window (and nothing
                                * else failed before it): with any_start_date the body may still be valid */
} osago_app_error_t;

/* The canonical form of any valid application fits in this many bytes (5 drivers, every optional
 * member present): a caller may size out with min(2*len+512, OSAGO_APP_CANONICAL_MAX). */
#define OSAGO_APP_CANONICAL_MAX  1024

/* Validates the body and writes its canonical form into out (capacity out_cap; needs at most 2*len+512 bytes).
 * Returns the canonical length (>0), or -1 with *err filled. Never reads past len; body need not be NUL-terminated.
 * A caller error (NULL arguments, out_cap too small for a valid body) is -1 with type "internal".
 * Pointers may hold any UTF-8 from the body's keys (never control characters): JSON-escape them on output. */
long osago_app_canonicalize(const unsigned char *body, size_t len, const osago_app_limits_t *lim,
                            unsigned char *out, size_t out_cap, osago_app_error_t *err);

#endif /* OSAGO_APPLICATION_H */
