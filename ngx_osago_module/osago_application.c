/*
 * OSAGO application validator and canonicalizer (see osago_application.h).
 *
 * One pass of yajl's event parser over the body. Every value event first moves the JSON pointer
 * to the value (object member or array element), then checks the value against the schema slot it
 * fills. The first schema error is kept and the rest of the body is only checked for syntax,
 * UTF-8 and depth, so a body that is not JSON at all is reported as such. Required members are
 * checked when their object closes. The accepted values are kept in the context and written out
 * in canonical form at the end.
 */

#include "osago_application.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <yajl/yajl_parse.h>


#define APP_FRAMES        16    /* containers whose path is tracked; deeper ones are only counted */
#define APP_PTR_SIZE      sizeof(((osago_app_error_t *) 0)->pointer)
#define APP_MAX_DRIVERS   5
#define APP_START_AHEAD   60    /* start_date: from today to today + 60 days */
#define APP_MIN_AGE       18
#define APP_MAX_AGE       120
#define APP_LICENSE_AGE   16

#if defined(__GNUC__)
#define APP_PRINTF(f, a)  __attribute__((format(printf, f, a)))
#else
#define APP_PRINTF(f, a)
#endif


/* Schema slots: what the next value must be. */
enum {
    F_SKIP = 0,     /* inside something already rejected (or too deep to track): syntax only */
    F_ROOT,
    F_DRIVERS, F_KBM, F_OWNER, F_PERIOD, F_START, F_UNLIMITED, F_VEHICLE,
    F_DRIVER,       /* an element of drivers */
    F_D_BIRTH, F_D_LICENSE,
    F_O_BIRTH, F_O_REGION,
    F_V_CATEGORY, F_V_PLATE, F_V_POWER, F_V_VIN, F_V_YEAR
};

/* Containers the schema knows. */
enum { N_SKIP = 0, N_TOP, N_VEHICLE, N_OWNER, N_DRIVER, N_DRIVERS };

typedef struct {
    const char     *name;
    unsigned char   len;
    unsigned char   field;
} app_member_t;

/* Members of each object, sorted by name: the index is the member's bit in app_frame_t.seen. */
static const app_member_t app_top_members[] = {
    { "drivers",             7, F_DRIVERS },
    { "kbm_class",           9, F_KBM },
    { "owner",               5, F_OWNER },
    { "period_months",      13, F_PERIOD },
    { "start_date",         10, F_START },
    { "unlimited_drivers",  17, F_UNLIMITED },
    { "vehicle",             7, F_VEHICLE }
};
enum { TOP_DRIVERS, TOP_KBM, TOP_OWNER, TOP_PERIOD, TOP_START, TOP_UNLIMITED, TOP_VEHICLE };

static const app_member_t app_vehicle_members[] = {
    { "category",            8, F_V_CATEGORY },
    { "plate",               5, F_V_PLATE },
    { "power_hp",            8, F_V_POWER },
    { "vin",                 3, F_V_VIN },
    { "year",                4, F_V_YEAR }
};
enum { VEH_CATEGORY, VEH_PLATE, VEH_POWER, VEH_VIN, VEH_YEAR };

static const app_member_t app_owner_members[] = {
    { "birth_date",         10, F_O_BIRTH },
    { "region_code",        11, F_O_REGION }
};
enum { OWN_BIRTH, OWN_REGION };

static const app_member_t app_driver_members[] = {
    { "birth_date",         10, F_D_BIRTH },
    { "license_issued_date", 19, F_D_LICENSE }
};
enum { DRV_BIRTH, DRV_LICENSE };

typedef struct {
    const app_member_t *members;
    unsigned            n;
    const char         *unknown;    /* detail of unknown-field */
} app_node_t;

static const app_node_t app_nodes[] = {
    /* N_SKIP */    { NULL, 0, NULL },
    /* N_TOP */     { app_top_members, sizeof(app_top_members) / sizeof(app_top_members[0]),
                      "unknown field: the application allows only drivers, kbm_class, owner, "
                      "period_months, start_date, unlimited_drivers and vehicle" },
    /* N_VEHICLE */ { app_vehicle_members,
                      sizeof(app_vehicle_members) / sizeof(app_vehicle_members[0]),
                      "unknown field: vehicle allows only category, plate, power_hp, vin and year" },
    /* N_OWNER */   { app_owner_members, sizeof(app_owner_members) / sizeof(app_owner_members[0]),
                      "unknown field: owner allows only birth_date and region_code" },
    /* N_DRIVER */  { app_driver_members,
                      sizeof(app_driver_members) / sizeof(app_driver_members[0]),
                      "unknown field: a driver allows only birth_date and license_issued_date" },
    /* N_DRIVERS */ { NULL, 0, NULL }
};

static const char *const app_categories[] = {
    "A", "M", "B", "BE", "C", "C1", "CE", "C1E", "D", "D1", "DE", "D1E", "Tm", "Tb"
};
#define APP_NCATEGORIES  (sizeof(app_categories) / sizeof(app_categories[0]))

/* Plate letters: Latin look-alikes and the second UTF-8 byte of the Cyrillic capitals (after
 * 0xD0), in the same order: A B E K M H O P C T Y X = А В Е К М Н О Р С Т У Х. */
static const char          app_plate_latin[12] = { 'A', 'B', 'E', 'K', 'M', 'H',
                                                   'O', 'P', 'C', 'T', 'Y', 'X' };
static const unsigned char app_plate_cyr[12] = { 0x90, 0x92, 0x95, 0x9A, 0x9C, 0x9D,
                                                 0x9E, 0xA0, 0xA1, 0xA2, 0xA3, 0xA5 };


typedef struct {
    int  y, m, d;
} app_date_t;

typedef struct {
    unsigned char   kind;       /* 'o' object, 'a' array */
    unsigned char   node;       /* N_* */
    unsigned char   key;        /* object: slot of the member whose value comes next */
    size_t          base;       /* length of the container's own pointer */
    unsigned        seen;       /* object: members given so far */
    size_t          count;      /* array: elements started so far */
} app_frame_t;

typedef struct {
    const osago_app_limits_t  *lim;
    osago_app_error_t         *err;
    int                        failed;      /* *err holds an error */
    int                        fatal;       /* ... one that stops the parse */
    int                        awaiting;    /* a member name was read, its value not started */
    size_t                     depth;       /* open containers */
    size_t                     ptr_len;
    char                       ptr[APP_PTR_SIZE];
    app_frame_t                frames[APP_FRAMES];
    app_date_t                 today;
    long                       today_days;
    int                        start_window;   /* the first error is start_date's window */

    /* the application as read */
    size_t                     n_drivers;
    struct {
        app_date_t             birth;
        app_date_t             license;
    }                          drivers[APP_MAX_DRIVERS];
    int                        unlimited;
    char                       kbm[2];
    size_t                     kbm_len;
    app_date_t                 owner_birth;
    char                       region[2];
    long                       period;
    app_date_t                 start;
    size_t                     category;
    unsigned char              plate[12];
    size_t                     plate_len;
    long                       power;
    long                       year;
    char                       vin[17];
    int                        has_vin;
} app_ctx_t;


/* ---- dates (proleptic Gregorian, days since 1970-01-01) ------------------------------------ */

static long
app_days_from_civil(long y, long m, long d)
{
    long  era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + doe - 719468;
}

static void
app_civil_from_days(long z, app_date_t *out)
{
    long  era, doe, yoe, doy, mp, d, m;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;

    out->y = (int) (yoe + era * 400 + (m <= 2));
    out->m = (int) m;
    out->d = (int) d;
}

static long
app_days(const app_date_t *dt)
{
    return app_days_from_civil(dt->y, dt->m, dt->d);
}

/* Whole years from a to b: a birthday on 29 February is reached on 1 March in common years. */
static long
app_years_between(const app_date_t *a, const app_date_t *b)
{
    long  years = (long) b->y - a->y;

    if (b->m < a->m || (b->m == a->m && b->d < a->d)) {
        years--;
    }

    return years;
}

static int
app_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* "YYYY-MM-DD", a real calendar date. */
static int
app_parse_date(const unsigned char *s, size_t len, app_date_t *out)
{
    static const unsigned char  mdays[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int                         y, m, d;

    if (len != 10 || s[4] != '-' || s[7] != '-'
        || !app_digit(s[0]) || !app_digit(s[1]) || !app_digit(s[2]) || !app_digit(s[3])
        || !app_digit(s[5]) || !app_digit(s[6]) || !app_digit(s[8]) || !app_digit(s[9]))
    {
        return 0;
    }

    y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    m = (s[5] - '0') * 10 + (s[6] - '0');
    d = (s[8] - '0') * 10 + (s[9] - '0');

    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1]) {
        return 0;
    }

    if (m == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))) {
        return 0;
    }

    out->y = y;
    out->m = m;
    out->d = d;

    return 1;
}

/* "YYYY-MM-DD" and a NUL: 11 bytes (years here have four digits: they come from app_parse_date
 * or from "today", which callers keep in this era). */
static void
app_format_date(const app_date_t *dt, char *buf, size_t size)
{
    if (size < 11 || dt->y < 0 || dt->y > 9999) {
        snprintf(buf, size, "%04d-%02d-%02d", dt->y, dt->m, dt->d);
        return;
    }

    buf[0] = (char) ('0' + dt->y / 1000);
    buf[1] = (char) ('0' + dt->y / 100 % 10);
    buf[2] = (char) ('0' + dt->y / 10 % 10);
    buf[3] = (char) ('0' + dt->y % 10);
    buf[4] = '-';
    buf[5] = (char) ('0' + dt->m / 10);
    buf[6] = (char) ('0' + dt->m % 10);
    buf[7] = '-';
    buf[8] = (char) ('0' + dt->d / 10);
    buf[9] = (char) ('0' + dt->d % 10);
    buf[10] = '\0';
}

/* Writes the decimal digits of v backwards, ending just before end: returns where they start
 * (at most 20 bytes before end). */
static char *
app_decimal(char *end, size_t v)
{
    char  *p = end;

    do {
        *--p = (char) ('0' + v % 10);
        v /= 10;
    } while (v != 0);

    return p;
}


/* ---- strings ------------------------------------------------------------------------------- */

/* UTF-8 as RFC 3629 has it: no overlong forms, no surrogates, nothing above U+10FFFF. yajl checks
 * only the shape of multi-byte sequences, and decodes \u escapes of lone surrogates into them. */
static int
app_utf8_valid(const unsigned char *s, size_t n)
{
    size_t         i = 0;
    unsigned char  c, lo, hi;
    size_t         more, k;

    while (i < n) {
        c = s[i];

        if (c < 0x80) {
            i++;
            continue;
        }

        lo = 0x80;
        hi = 0xBF;

        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0) {
                lo = 0xA0;
            } else if (c == 0xED) {
                hi = 0x9F;
            }
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0) {
                lo = 0x90;
            } else if (c == 0xF4) {
                hi = 0x8F;
            }
        } else {
            return 0;
        }

        if (n - i - 1 < more) {
            return 0;
        }

        if (s[i + 1] < lo || s[i + 1] > hi) {
            return 0;
        }

        for (k = 2; k <= more; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
        }

        i += more + 1;
    }

    return 1;
}

/* C0 controls, DEL and C1 controls (U+0080..U+009F); s is valid UTF-8. */
static int
app_has_control(const unsigned char *s, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] == 0x7F
            || (s[i] == 0xC2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] <= 0x9F))
        {
            return 1;
        }
    }

    return 0;
}

/* One plate letter, Latin look-alike or Cyrillic capital: its index, or -1. */
static int
app_plate_letter(const unsigned char *s, size_t n, size_t *i)
{
    size_t  k;

    if (*i < n && s[*i] < 0x80) {
        for (k = 0; k < sizeof(app_plate_latin); k++) {
            if ((unsigned char) app_plate_latin[k] == s[*i]) {
                *i += 1;
                return (int) k;
            }
        }
        return -1;
    }

    if (*i + 1 < n && s[*i] == 0xD0) {
        for (k = 0; k < sizeof(app_plate_cyr); k++) {
            if (app_plate_cyr[k] == s[*i + 1]) {
                *i += 2;
                return (int) k;
            }
        }
    }

    return -1;
}

/* Letter, three digits, two letters, region of two digits (not 00) or three (not starting with 0);
 * written out with Cyrillic letters. */
static int
app_parse_plate(app_ctx_t *c, const unsigned char *s, size_t n)
{
    size_t  i = 0, o = 0, k, rest;
    int     letter;

    for (k = 0; k < 6; k++) {
        if (k == 0 || k >= 4) {
            letter = app_plate_letter(s, n, &i);
            if (letter < 0) {
                return 0;
            }
            c->plate[o++] = 0xD0;
            c->plate[o++] = app_plate_cyr[letter];

        } else {
            if (i >= n || !app_digit(s[i])) {
                return 0;
            }
            c->plate[o++] = s[i++];
        }
    }

    rest = n - i;

    if (rest != 2 && rest != 3) {
        return 0;
    }

    for (k = i; k < n; k++) {
        if (!app_digit(s[k])) {
            return 0;
        }
        c->plate[o++] = s[k];
    }

    if (s[i] == '0' && (rest == 3 || s[i + 1] == '0')) {
        return 0;
    }

    c->plate_len = o;

    return 1;
}

static int
app_parse_vin(app_ctx_t *c, const unsigned char *s, size_t n)
{
    size_t  i;

    if (n != sizeof(c->vin)) {
        return 0;
    }

    for (i = 0; i < n; i++) {
        if (!(app_digit(s[i]) || (s[i] >= 'A' && s[i] <= 'Z'))
            || s[i] == 'I' || s[i] == 'O' || s[i] == 'Q')
        {
            return 0;
        }
    }

    memcpy(c->vin, s, n);
    c->has_vin = 1;

    return 1;
}

/* A plain JSON integer (raw number text from yajl): 0 when it has a fraction or an exponent.
 * Magnitudes from 10^9 up saturate at 10^9, which every range here rejects. */
static int
app_integer(const char *s, size_t n, long *v)
{
    size_t  i = 0;
    long    r = 0;
    int     neg = 0;

    if (n > 0 && s[0] == '-') {
        neg = 1;
        i = 1;
    }

    if (i == n) {
        return 0;
    }

    for ( /* void */ ; i < n; i++) {
        if (!app_digit((unsigned char) s[i])) {
            return 0;
        }
        r = r < 100000000L ? r * 10 + (s[i] - '0') : 1000000000L;
    }

    *v = neg ? -r : r;

    return 1;
}


/* ---- pointers and errors ------------------------------------------------------------------- */

/* The pointer becomes the container's (base) plus one reference token. When the token does not
 * fit, or holds a control character, it stays at the container: still the offender's ancestor. */
static void
app_ptr_child(app_ctx_t *c, size_t base, const unsigned char *tok, size_t len)
{
    size_t  i, n = base;

    c->ptr_len = base;

    if (n + 1 >= APP_PTR_SIZE) {
        return;
    }

    c->ptr[n++] = '/';

    for (i = 0; i < len; i++) {
        if (tok[i] < 0x20 || tok[i] == 0x7F
            || (tok[i] == 0xC2 && i + 1 < len && tok[i + 1] >= 0x80 && tok[i + 1] <= 0x9F))
        {
            return;
        }

        if (tok[i] == '~' || tok[i] == '/') {
            if (n + 2 >= APP_PTR_SIZE) {
                return;
            }
            c->ptr[n++] = '~';
            c->ptr[n++] = tok[i] == '~' ? '0' : '1';

        } else {
            if (n + 1 >= APP_PTR_SIZE) {
                return;
            }
            c->ptr[n++] = (char) tok[i];
        }
    }

    /* never cut a multi-byte character: a token either fits whole or is left out */
    c->ptr_len = n;
}

static void
app_ptr_index(app_ctx_t *c, size_t base, size_t index)
{
    char   num[24];
    char  *p = app_decimal(num + sizeof(num), index);

    app_ptr_child(c, base, (const unsigned char *) p, (size_t) (num + sizeof(num) - p));
}

static void
app_ptr_name(app_ctx_t *c, size_t base, const char *name)
{
    app_ptr_child(c, base, (const unsigned char *) name, strlen(name));
}

/* Records an error at the current pointer. A schema error is kept only when it is the first;
 * a fatal one (the body is not usable JSON) replaces whatever was there and stops the parse. */
static void APP_PRINTF(4, 5)
app_error(app_ctx_t *c, int fatal, const char *type, const char *fmt, ...)
{
    va_list  ap;

    if (c->failed && !fatal) {
        return;
    }

    c->failed = 1;
    c->fatal |= fatal;
    c->err->type = type;
    memcpy(c->err->pointer, c->ptr, c->ptr_len);
    c->err->pointer[c->ptr_len] = '\0';

    va_start(ap, fmt);
    vsnprintf(c->err->detail, sizeof(c->err->detail), fmt, ap);
    va_end(ap);
}

/* What a slot accepts, as the detail of invalid-field. */
static void
app_invalid(app_ctx_t *c, int field)
{
    char        a[16], b[16];
    app_date_t  last;

    switch (field) {

    case F_ROOT:
        app_error(c, 0, "invalid-field", "the body must be a JSON object");
        break;

    case F_DRIVERS:
        app_error(c, 0, "invalid-field", "drivers must be an array of 1 to %d driver objects",
                  APP_MAX_DRIVERS);
        break;

    case F_DRIVER:
        app_error(c, 0, "invalid-field",
                  "each driver must be an object with birth_date and license_issued_date");
        break;

    case F_KBM:
        app_error(c, 0, "invalid-field",
                  "kbm_class must be \"M\" or a class from 0 to 13, as a string or an integer");
        break;

    case F_OWNER:
        app_error(c, 0, "invalid-field", "owner must be an object");
        break;

    case F_PERIOD:
        app_error(c, 0, "invalid-field", "period_months must be an integer from 3 to 12");
        break;

    case F_START:
        app_format_date(&c->today, a, sizeof(a));
        app_civil_from_days(c->today_days + APP_START_AHEAD, &last);
        app_format_date(&last, b, sizeof(b));
        app_error(c, 0, "invalid-field",
                  "start_date must be a date YYYY-MM-DD from today (%s) to %s", a, b);
        break;

    case F_UNLIMITED:
        app_error(c, 0, "invalid-field", "unlimited_drivers must be true when present");
        break;

    case F_VEHICLE:
        app_error(c, 0, "invalid-field", "vehicle must be an object");
        break;

    case F_D_BIRTH:
    case F_O_BIRTH:
        app_error(c, 0, "invalid-field",
                  "birth_date must be a date YYYY-MM-DD of a person aged %d to %d",
                  APP_MIN_AGE, APP_MAX_AGE);
        break;

    case F_D_LICENSE:
        app_format_date(&c->today, a, sizeof(a));
        app_error(c, 0, "invalid-field",
                  "license_issued_date must be a date YYYY-MM-DD not later than today (%s)", a);
        break;

    case F_O_REGION:
        app_error(c, 0, "invalid-field",
                  "region_code must be a string of two digits, a Russian region code "
                  "from 01 to 95 or 99");
        break;

    case F_V_CATEGORY:
        app_error(c, 0, "invalid-field", "category must be one of A, M, B, BE, C, C1, CE, C1E, "
                  "D, D1, DE, D1E, Tm, Tb");
        break;

    case F_V_PLATE:
        app_error(c, 0, "invalid-field",
                  "plate must be a registration plate such as A123BC77 or A123BC777, with "
                  "letters from ABEKMHOPCTYX (Cyrillic or their Latin look-alikes)");
        break;

    case F_V_POWER:
        app_error(c, 0, "invalid-field", "power_hp must be an integer from 1 to 1500");
        break;

    case F_V_VIN:
        app_error(c, 0, "invalid-field",
                  "vin must be 17 characters from 0-9 and A-Z except I, O and Q");
        break;

    case F_V_YEAR:
        app_error(c, 0, "invalid-field", "year must be an integer from 1950 to %d",
                  c->today.y + 1);
        break;

    default:
        break;
    }
}

/* The name of a string-valued slot, NULL for the others. */
static const char *
app_field_name(int field)
{
    switch (field) {
    case F_KBM:         return "kbm_class";
    case F_START:       return "start_date";
    case F_D_BIRTH:
    case F_O_BIRTH:     return "birth_date";
    case F_D_LICENSE:   return "license_issued_date";
    case F_O_REGION:    return "region_code";
    case F_V_CATEGORY:  return "category";
    case F_V_PLATE:     return "plate";
    case F_V_VIN:       return "vin";
    default:            return NULL;
    }
}

static app_frame_t *
app_frame(app_ctx_t *c)
{
    return (c->depth >= 1 && c->depth <= APP_FRAMES) ? &c->frames[c->depth - 1] : NULL;
}

/* Moves the pointer to the value about to start and returns its slot. */
static int
app_begin_value(app_ctx_t *c)
{
    app_frame_t  *f;

    if (c->depth == 0) {
        c->ptr_len = 0;
        return c->failed ? F_SKIP : F_ROOT;
    }

    f = app_frame(c);
    if (f == NULL) {
        return F_SKIP;
    }

    if (f->kind == 'o') {
        c->awaiting = 0;
        return c->failed ? F_SKIP : f->key;
    }

    app_ptr_index(c, f->base, f->count);
    f->count++;

    if (f->node != N_DRIVERS || c->failed) {
        return F_SKIP;
    }

    if (f->count > APP_MAX_DRIVERS) {
        c->ptr_len = f->base;
        app_invalid(c, F_DRIVERS);
        return F_SKIP;
    }

    return F_DRIVER;
}

/* After a lexical error: the pointer of the value being read when it happened. */
static void
app_ptr_at_error(app_ctx_t *c)
{
    app_frame_t  *f;

    if (c->depth == 0) {
        c->ptr_len = 0;
        return;
    }

    f = app_frame(c);
    if (f == NULL) {
        return;
    }

    if (f->kind == 'a') {
        app_ptr_index(c, f->base, f->count);

    } else if (!c->awaiting) {
        c->ptr_len = f->base;       /* in a member name: the object */
    }
}


/* ---- yajl callbacks ------------------------------------------------------------------------ */

static int
app_on_null(void *ctx)
{
    app_ctx_t  *c = ctx;

    app_invalid(c, app_begin_value(c));

    return 1;
}

static int
app_on_boolean(void *ctx, int value)
{
    app_ctx_t  *c = ctx;
    int         field = app_begin_value(c);

    if (field != F_UNLIMITED || !value) {
        app_invalid(c, field);
        return 1;
    }

    if (c->frames[0].seen & (1u << TOP_DRIVERS)) {
        app_error(c, 0, "invalid-field",
                  "give either drivers or unlimited_drivers: true, not both");
        return 1;
    }

    c->unlimited = 1;

    return 1;
}

static int
app_on_number(void *ctx, const char *s, size_t len)
{
    app_ctx_t  *c = ctx;
    int         field = app_begin_value(c);
    long        v;

    if (field == F_SKIP) {
        return 1;
    }

    if (!app_integer(s, len, &v)) {
        app_invalid(c, field);
        return 1;
    }

    switch (field) {

    case F_PERIOD:
        if (v < 3 || v > 12) {
            break;
        }
        c->period = v;
        return 1;

    case F_V_POWER:
        if (v < 1 || v > 1500) {
            break;
        }
        c->power = v;
        return 1;

    case F_V_YEAR:
        if (v < 1950 || v > (long) c->today.y + 1) {
            break;
        }
        c->year = v;
        return 1;

    case F_KBM:
        if (v < 0 || v > 13) {
            break;
        }
        if (v >= 10) {
            c->kbm[0] = '1';
            c->kbm[1] = (char) ('0' + v - 10);
            c->kbm_len = 2;
        } else {
            c->kbm[0] = (char) ('0' + v);
            c->kbm_len = 1;
        }
        return 1;

    default:
        break;
    }

    app_invalid(c, field);

    return 1;
}

static int
app_on_string(void *ctx, const unsigned char *s, size_t len)
{
    app_ctx_t   *c = ctx;
    int          field = app_begin_value(c);
    app_date_t   dt;
    size_t       i;
    long         days;

    if (!app_utf8_valid(s, len)) {
        app_error(c, 1, "invalid-utf8", "this string is not valid UTF-8");
        return 0;
    }

    if (field == F_SKIP) {
        return 1;
    }

    if (app_field_name(field) != NULL && app_has_control(s, len)) {
        app_error(c, 0, "invalid-field", "%s must not contain control characters",
                  app_field_name(field));
        return 1;
    }

    switch (field) {

    case F_KBM:
        if (len == 1 && (s[0] == 'M' || app_digit(s[0]))) {
            c->kbm[0] = (char) s[0];
            c->kbm_len = 1;
            return 1;
        }
        if (len == 2 && s[0] == '1' && s[1] >= '0' && s[1] <= '3') {
            c->kbm[0] = '1';
            c->kbm[1] = (char) s[1];
            c->kbm_len = 2;
            return 1;
        }
        break;

    case F_START:
    case F_O_BIRTH:
    case F_D_BIRTH:
    case F_D_LICENSE:
        if (!app_parse_date(s, len, &dt)) {
            app_error(c, 0, "invalid-field",
                      "%s must be a real calendar date in the form YYYY-MM-DD",
                      app_field_name(field));
            return 1;
        }

        days = app_days(&dt);

        if (field == F_START) {
            if (!c->lim->any_start_date
                && (days < c->today_days || days > c->today_days + APP_START_AHEAD))
            {
                /*
                 * Only a date behind the window was inside it on an earlier day;
                 * and the day after its end may have been inside it on an edge
                 * whose clock is already on tomorrow (a retry landing elsewhere
                 * around UTC midnight).
                 */
                c->start_window = !c->failed
                                  && (days < c->today_days
                                      || days == c->today_days + APP_START_AHEAD + 1);
                break;
            }
            c->start = dt;
            return 1;
        }

        if (field == F_D_LICENSE) {
            if (days > c->today_days) {
                break;
            }
            c->drivers[c->n_drivers - 1].license = dt;
            return 1;
        }

        days = app_years_between(&dt, &c->today);
        if (days < APP_MIN_AGE || days > APP_MAX_AGE) {
            break;
        }

        if (field == F_O_BIRTH) {
            c->owner_birth = dt;
        } else {
            c->drivers[c->n_drivers - 1].birth = dt;
        }
        return 1;

    case F_O_REGION:
        if (len == 2 && app_digit(s[0]) && app_digit(s[1])) {
            days = (s[0] - '0') * 10 + (s[1] - '0');
            if ((days >= 1 && days <= 95) || days == 99) {
                c->region[0] = (char) s[0];
                c->region[1] = (char) s[1];
                return 1;
            }
        }
        break;

    case F_V_CATEGORY:
        for (i = 0; i < APP_NCATEGORIES; i++) {
            if (strlen(app_categories[i]) == len && memcmp(app_categories[i], s, len) == 0) {
                c->category = i;
                return 1;
            }
        }
        break;

    case F_V_PLATE:
        if (app_parse_plate(c, s, len)) {
            return 1;
        }
        break;

    case F_V_VIN:
        if (app_parse_vin(c, s, len)) {
            return 1;
        }
        break;

    default:
        break;
    }

    app_invalid(c, field);

    return 1;
}

static int
app_on_start(app_ctx_t *c, int is_map)
{
    int           field = app_begin_value(c);
    int           node = N_SKIP;
    app_frame_t  *f;

    if (c->depth >= c->lim->max_depth) {
        app_error(c, 1, "too-deep", "objects and arrays are nested deeper than %zu levels",
                  c->lim->max_depth);
        return 0;
    }

    switch (field) {

    case F_ROOT:
        node = N_TOP;
        break;

    case F_VEHICLE:
        node = N_VEHICLE;
        break;

    case F_OWNER:
        node = N_OWNER;
        break;

    case F_DRIVER:
        node = N_DRIVER;
        break;

    case F_DRIVERS:
        node = N_DRIVERS;
        break;

    default:
        break;
    }

    if (node != N_SKIP && (node == N_DRIVERS) == is_map) {
        node = N_SKIP;
    }

    if (node == N_SKIP) {
        app_invalid(c, field);

    } else if (node == N_DRIVERS && c->unlimited) {
        app_error(c, 0, "invalid-field",
                  "give either drivers or unlimited_drivers: true, not both");
        node = N_SKIP;

    } else if (node == N_DRIVER) {
        c->n_drivers++;
    }

    c->depth++;

    f = app_frame(c);
    if (f == NULL) {
        return 1;
    }

    f->kind = is_map ? 'o' : 'a';
    f->node = (unsigned char) node;
    f->key = F_SKIP;
    f->base = c->ptr_len;
    f->seen = 0;
    f->count = 0;

    return 1;
}

static int
app_on_start_map(void *ctx)
{
    return app_on_start(ctx, 1);
}

static int
app_on_start_array(void *ctx)
{
    return app_on_start(ctx, 0);
}

static int
app_on_map_key(void *ctx, const unsigned char *key, size_t len)
{
    app_ctx_t           *c = ctx;
    app_frame_t         *f = app_frame(c);
    const app_node_t    *node;
    unsigned             i;

    if (!app_utf8_valid(key, len)) {
        if (f != NULL) {
            c->ptr_len = f->base;
        }
        app_error(c, 1, "invalid-utf8", "a member name of this object is not valid UTF-8");
        return 0;
    }

    if (f == NULL) {
        return 1;
    }

    app_ptr_child(c, f->base, key, len);
    c->awaiting = 1;
    f->key = F_SKIP;

    if (c->failed || f->node == N_SKIP) {
        return 1;
    }

    node = &app_nodes[f->node];

    for (i = 0; i < node->n; i++) {
        if (node->members[i].len == len && memcmp(node->members[i].name, key, len) == 0) {
            break;
        }
    }

    if (i == node->n) {
        app_error(c, 0, "unknown-field", "%s", node->unknown);
        return 1;
    }

    if (f->seen & (1u << i)) {
        app_error(c, 0, "duplicate-field", "%s is given more than once", node->members[i].name);
        return 1;
    }

    f->seen |= 1u << i;
    f->key = node->members[i].field;

    return 1;
}

static int
app_missing(app_ctx_t *c, app_frame_t *f, unsigned bit, const char *name, const char *what)
{
    if (f->seen & (1u << bit)) {
        return 0;
    }

    app_ptr_name(c, f->base, name);
    app_error(c, 0, "missing-field", "%s is required%s", name, what);

    return 1;
}

/* Required members, checked when their object closes. */
static void
app_close(app_ctx_t *c, app_frame_t *f)
{
    size_t  i;

    switch (f->node) {

    case N_TOP:
        if (!(f->seen & (1u << TOP_DRIVERS)) && !c->unlimited) {
            app_ptr_name(c, f->base, "drivers");
            app_error(c, 0, "missing-field",
                      "drivers is required: give either drivers (1 to %d) or "
                      "unlimited_drivers: true", APP_MAX_DRIVERS);
            return;
        }
        if (app_missing(c, f, TOP_OWNER, "owner", "")
            || app_missing(c, f, TOP_PERIOD, "period_months", "")
            || app_missing(c, f, TOP_START, "start_date", "")
            || app_missing(c, f, TOP_VEHICLE, "vehicle", ""))
        {
            return;
        }
        break;

    case N_VEHICLE:
        if (app_missing(c, f, VEH_CATEGORY, "category", " in vehicle")
            || app_missing(c, f, VEH_POWER, "power_hp", " in vehicle")
            || app_missing(c, f, VEH_YEAR, "year", " in vehicle"))
        {
            return;
        }
        if (!(f->seen & ((1u << VEH_VIN) | (1u << VEH_PLATE)))) {
            app_ptr_name(c, f->base, "vin");
            app_error(c, 0, "missing-field", "vehicle must have a vin, a plate or both");
        }
        break;

    case N_OWNER:
        (void) (app_missing(c, f, OWN_BIRTH, "birth_date", " in owner")
                || app_missing(c, f, OWN_REGION, "region_code", " in owner"));
        break;

    case N_DRIVER:
        if (app_missing(c, f, DRV_BIRTH, "birth_date", " for every driver")
            || app_missing(c, f, DRV_LICENSE, "license_issued_date", " for every driver"))
        {
            return;
        }
        i = c->n_drivers - 1;
        if (app_years_between(&c->drivers[i].birth, &c->drivers[i].license) < APP_LICENSE_AGE) {
            app_ptr_name(c, f->base, "license_issued_date");
            app_error(c, 0, "invalid-field",
                      "license_issued_date must be at least %d years after birth_date",
                      APP_LICENSE_AGE);
        }
        break;

    case N_DRIVERS:
        if (f->count == 0) {
            c->ptr_len = f->base;
            app_invalid(c, F_DRIVERS);
        }
        break;

    default:
        break;
    }
}

static int
app_on_end(void *ctx)
{
    app_ctx_t    *c = ctx;
    app_frame_t  *f = app_frame(c);

    if (f != NULL && f->node != N_SKIP && !c->failed) {
        app_close(c, f);
    }

    c->depth--;
    c->awaiting = 0;

    return 1;
}

static const yajl_callbacks app_callbacks = {
    app_on_null,
    app_on_boolean,
    NULL,               /* integers and doubles come raw, through app_on_number */
    NULL,
    app_on_number,
    app_on_string,
    app_on_start_map,
    app_on_map_key,
    app_on_end,
    app_on_start_array,
    app_on_end
};


/* ---- output -------------------------------------------------------------------------------- */

typedef struct {
    unsigned char  *p;
    size_t          n;
    size_t          cap;
} app_out_t;

/* Counts everything, writes what fits: the caller compares n with cap at the end. */
static void
app_put(app_out_t *o, const void *s, size_t n)
{
    if (n <= o->cap && o->n <= o->cap - n) {
        memcpy(o->p + o->n, s, n);
    }
    o->n += n;
}

static void
app_put_lit(app_out_t *o, const char *s)
{
    app_put(o, s, strlen(s));
}

/* A JSON string, escaping only what must be: '"', '\\' and control characters. */
static void
app_put_str(app_out_t *o, const void *str, size_t n)
{
    static const char     hex[] = "0123456789abcdef";
    const unsigned char  *s = str;
    size_t                i, run = 0;
    char                  esc[6];

    app_put(o, "\"", 1);

    for (i = 0; i < n; i++) {
        if (s[i] != '"' && s[i] != '\\' && s[i] >= 0x20) {
            continue;
        }

        app_put(o, s + run, i - run);
        run = i + 1;

        if (s[i] == '"' || s[i] == '\\') {
            esc[0] = '\\';
            esc[1] = (char) s[i];
            app_put(o, esc, 2);

        } else {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[s[i] >> 4];
            esc[5] = hex[s[i] & 0x0F];
            app_put(o, esc, 6);
        }
    }

    app_put(o, s + run, n - run);
    app_put(o, "\"", 1);
}

static void
app_put_date(app_out_t *o, const app_date_t *dt)
{
    char  buf[16];

    app_format_date(dt, buf, sizeof(buf));
    app_put_str(o, buf, 10);
}

static void
app_put_long(app_out_t *o, long v)
{
    char   num[24];
    char  *p;

    if (v < 0) {
        app_put(o, "-", 1);
        v = -v;     /* values here are small: no LONG_MIN */
    }

    p = app_decimal(num + sizeof(num), (size_t) v);
    app_put(o, p, (size_t) (num + sizeof(num) - p));
}

static long
app_write(app_ctx_t *c, unsigned char *out, size_t cap)
{
    app_out_t  o;
    size_t     i;

    o.p = out;
    o.n = 0;
    o.cap = cap;

    app_put_lit(&o, "{");

    if (c->n_drivers > 0) {
        app_put_lit(&o, "\"drivers\":[");
        for (i = 0; i < c->n_drivers; i++) {
            app_put_lit(&o, i ? ",{\"birth_date\":" : "{\"birth_date\":");
            app_put_date(&o, &c->drivers[i].birth);
            app_put_lit(&o, ",\"license_issued_date\":");
            app_put_date(&o, &c->drivers[i].license);
            app_put_lit(&o, "}");
        }
        app_put_lit(&o, "],");
    }

    if (c->kbm_len > 0) {
        app_put_lit(&o, "\"kbm_class\":");
        app_put_str(&o, c->kbm, c->kbm_len);
        app_put_lit(&o, ",");
    }

    app_put_lit(&o, "\"owner\":{\"birth_date\":");
    app_put_date(&o, &c->owner_birth);
    app_put_lit(&o, ",\"region_code\":");
    app_put_str(&o, c->region, sizeof(c->region));
    app_put_lit(&o, "},\"period_months\":");
    app_put_long(&o, c->period);
    app_put_lit(&o, ",\"start_date\":");
    app_put_date(&o, &c->start);

    if (c->unlimited) {
        app_put_lit(&o, ",\"unlimited_drivers\":true");
    }

    app_put_lit(&o, ",\"vehicle\":{\"category\":");
    app_put_str(&o, app_categories[c->category], strlen(app_categories[c->category]));

    if (c->plate_len > 0) {
        app_put_lit(&o, ",\"plate\":");
        app_put_str(&o, c->plate, c->plate_len);
    }

    app_put_lit(&o, ",\"power_hp\":");
    app_put_long(&o, c->power);

    if (c->has_vin) {
        app_put_lit(&o, ",\"vin\":");
        app_put_str(&o, c->vin, sizeof(c->vin));
    }

    app_put_lit(&o, ",\"year\":");
    app_put_long(&o, c->year);
    app_put_lit(&o, "}}");

    if (o.n > cap) {
        c->ptr_len = 0;
        app_error(c, 1, "internal", "the output buffer is too small (%zu bytes, %zu needed)",
                  cap, o.n);
        return -1;
    }

    return (long) o.n;
}


/* ---- entry point --------------------------------------------------------------------------- */

static void
app_lexical_error(app_ctx_t *c, yajl_handle h, const unsigned char *body, size_t len)
{
    unsigned char  *msg;
    const char     *text;
    size_t          at;

    at = yajl_get_bytes_consumed(h);
    msg = yajl_get_error(h, 0, body, len);
    text = msg != NULL ? (const char *) msg : "";

    if (strstr(text, "invalid bytes in UTF8 string") != NULL) {
        app_ptr_at_error(c);
        app_error(c, 1, "invalid-utf8", "this string is not valid UTF-8");

    } else if (strstr(text, "invalid character inside string") != NULL) {
        /* RFC 8259: raw control characters are not JSON at all */
        app_ptr_at_error(c);
        app_error(c, 1, "malformed-json",
                  "control characters must be escaped inside JSON strings");

    } else if (strstr(text, "premature EOF") != NULL) {
        c->ptr_len = 0;
        app_error(c, 1, "malformed-json", "the body is not valid JSON: it ends too early");

    } else {
        c->ptr_len = 0;
        app_error(c, 1, "malformed-json", "the body is not valid JSON (near byte %zu)", at);
    }

    if (msg != NULL) {
        yajl_free_error(h, msg);
    }
}

long
osago_app_canonicalize(const unsigned char *body, size_t len, const osago_app_limits_t *lim,
                       unsigned char *out, size_t out_cap, osago_app_error_t *err)
{
    app_ctx_t    c;
    yajl_handle  h;
    yajl_status  st;
    size_t       i;

    if (err == NULL) {
        return -1;
    }

    memset(&c, 0, sizeof(c));
    c.err = err;
    c.lim = lim;

    err->type = NULL;
    err->pointer[0] = '\0';
    err->detail[0] = '\0';
    err->start_window = 0;

    if ((body == NULL && len > 0) || lim == NULL || (out == NULL && out_cap > 0)) {
        app_error(&c, 1, "internal", "osago_app_canonicalize called with a NULL argument");
        return -1;
    }

    for (i = 0; i < len; i++) {
        if (body[i] != ' ' && body[i] != '\t' && body[i] != '\n' && body[i] != '\r') {
            break;
        }
    }

    if (i == len) {
        app_error(&c, 1, "empty-body", "the body is empty");
        return -1;
    }

    c.today_days = lim->today_days;
    app_civil_from_days(c.today_days, &c.today);

    h = yajl_alloc(&app_callbacks, NULL, &c);
    if (h == NULL) {
        app_error(&c, 1, "internal", "out of memory");
        return -1;
    }

    yajl_config(h, yajl_allow_comments, 0);
    yajl_config(h, yajl_dont_validate_strings, 0);
    yajl_config(h, yajl_allow_trailing_garbage, 0);
    yajl_config(h, yajl_allow_multiple_values, 0);
    yajl_config(h, yajl_allow_partial_values, 0);

    st = yajl_parse(h, body, len);
    if (st == yajl_status_ok) {
        st = yajl_complete_parse(h);
    }

    if (st == yajl_status_error) {
        app_lexical_error(&c, h, body, len);
    }

    yajl_free(h);

    if (c.failed) {
        /* a later fatal error (the body is not JSON) replaces the window's */
        err->start_window = c.start_window && !c.fatal;
        return -1;
    }

    if (st != yajl_status_ok) {
        /* canceled without a reason: cannot happen, but never report success for it */
        app_error(&c, 1, "internal", "the parser stopped unexpectedly");
        return -1;
    }

    return app_write(&c, out, out_cap);
}
