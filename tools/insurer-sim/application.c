/* Reads the fields the tariff needs from the request body (yajl's tree parser). Fields the
 * price does not depend on (vin, plate, year, ...) are not checked: that is the edge's job. */
#include "application.h"
#include "dates.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

static yajl_val app_get(yajl_val obj, const char *a, const char *b)
{
    const char *path[3] = { a, b, NULL };

    return yajl_tree_get(obj, path, yajl_t_any);
}

/* The string of v, or NULL when v is not a string (a function, so a NULL check is seen). */
static const char *app_string(yajl_val v)
{
    return v != NULL && v->type == yajl_t_string ? v->u.string : NULL;
}

/* An integer given as a JSON integer or as a string of digits ("77", "03"). */
static int app_int(yajl_val v, long min, long max, long *out)
{
    if (YAJL_IS_INTEGER(v)) {
        *out = YAJL_GET_INTEGER(v);
    } else if (YAJL_IS_DOUBLE(v)) {
        double d = YAJL_GET_DOUBLE(v);
        /* out of range first: converting 1e300 to long is undefined */
        if (d != floor(d) || d < (double) min || d > (double) max)
            return -1;
        *out = (long)d;
    } else if (app_string(v) != NULL) {
        const char *s = app_string(v);
        char *end;
        if (s == NULL || *s < '0' || *s > '9')
            return -1;
        *out = strtol(s, &end, 10);
        if (*end != '\0' || end - s > 6)
            return -1;
    } else {
        return -1;
    }
    return (*out < min || *out > max) ? -1 : 0;
}

static int app_date(yajl_val v, struct date *d)
{
    const char *s = app_string(v);

    return s != NULL && date_parse(s, d) ? 0 : -1;
}

static int app_fail(char *err, size_t errsize, const char *msg)
{
    snprintf(err, errsize, "%s", msg);
    return -1;
}

static int app_drivers(yajl_val root, const struct date *on, struct tariff_app *t, char *err,
                       size_t errsize)
{
    yajl_val unlimited = app_get(root, "unlimited_drivers", NULL);
    yajl_val drivers = app_get(root, "drivers", NULL);

    if (unlimited != NULL && !YAJL_IS_TRUE(unlimited) && !YAJL_IS_FALSE(unlimited))
        return app_fail(err, errsize, "unlimited_drivers must be true or false");
    t->unlimited = YAJL_IS_TRUE(unlimited);
    if (t->unlimited)
        return 0;
    if (!YAJL_IS_ARRAY(drivers) || drivers->u.array.len < 1
        || drivers->u.array.len > TARIFF_MAX_DRIVERS)
        return app_fail(err, errsize, "drivers must be an array of 1..5 drivers, "
                        "or unlimited_drivers true");
    t->ndrivers = (int)drivers->u.array.len;
    for (int i = 0; i < t->ndrivers; i++) {
        yajl_val d = drivers->u.array.values[i];
        struct date born, licensed;

        if (app_date(app_get(d, "birth_date", NULL), &born) < 0
            || app_date(app_get(d, "license_issued_date", NULL), &licensed) < 0)
            return app_fail(err, errsize, "each driver needs birth_date and license_issued_date "
                            "as YYYY-MM-DD");
        t->driver[i].age = date_full_years(&born, on);
        t->driver[i].experience = date_full_years(&licensed, on);
        if (t->driver[i].experience < 0)
            t->driver[i].experience = 0;
    }
    return 0;
}

static int app_kbm(yajl_val v, struct tariff_app *t)
{
    const char *s = app_string(v);
    long cls;

    if (v == NULL) {
        t->kbm_class = 3;   /* the class a driver without history starts in (KBM 1.0) */
        return 0;
    }
    if (s != NULL && strcmp(s, "M") == 0) {
        t->kbm_class = TARIFF_KBM_M;
        return 0;
    }
    if (app_int(v, 0, 13, &cls) < 0)
        return -1;
    t->kbm_class = (int)cls;
    return 0;
}

int application_parse(const char *json, struct application *app, char *err, size_t errsize)
{
    char perr[256];
    yajl_val root = yajl_tree_parse(json, perr, sizeof(perr));
    struct tariff_app *t = &app->tariff;
    const char *s;
    yajl_val v;
    struct date on;
    long n;
    int rc = -1;

    memset(app, 0, sizeof(*app));
    if (root == NULL) {
        /* yajl's message spans lines (it quotes the input); keep the first. */
        perr[strcspn(perr, "\n")] = '\0';
        snprintf(err, errsize, "malformed JSON: %s", perr);
        return -1;
    }
    if (!YAJL_IS_OBJECT(root)) {
        app_fail(err, errsize, "the body must be a JSON object");
        goto out;
    }
    s = app_string(app_get(root, "application_id", NULL));
    if (s == NULL || strlen(s) < 1 || strlen(s) > APPLICATION_ID_MAX) {
        app_fail(err, errsize, "application_id must be a string of 1..128 chars");
        goto out;
    }
    strcpy(app->id, s);

    s = app_string(app_get(root, "vehicle", "category"));
    if (s == NULL || strlen(s) >= sizeof(t->category) || !tariff_category_known(s)) {
        app_fail(err, errsize, "vehicle.category must be one of A, M, B, BE, C, C1, CE, C1E, "
                 "D, D1, DE, D1E, Tm, Tb");
        goto out;
    }
    strcpy(t->category, s);
    if (app_int(app_get(root, "vehicle", "power_hp"), 1, 1500, &n) < 0) {
        app_fail(err, errsize, "vehicle.power_hp must be an integer from 1 to 1500");
        goto out;
    }
    t->power_hp = (int)n;
    if (app_int(app_get(root, "owner", "region_code"), 1, 999, &n) < 0) {
        app_fail(err, errsize, "owner.region_code must be a region code such as \"77\"");
        goto out;
    }
    t->region = (int)n;
    if (app_kbm(app_get(root, "kbm_class", NULL), t) < 0) {
        app_fail(err, errsize, "kbm_class must be \"M\" or a class from 0 to 13");
        goto out;
    }
    v = app_get(root, "period_months", NULL);
    t->period_months = 12;
    if (v != NULL) {
        if (app_int(v, 1, 12, &n) < 0) {
            app_fail(err, errsize, "period_months must be an integer from 1 to 12");
            goto out;
        }
        t->period_months = (int)n;
    }
    /* Ages count on the start date, so a payload prices the same whatever day it is sent. */
    v = app_get(root, "start_date", NULL);
    if (v == NULL) {
        on = date_today();
    } else if (app_date(v, &on) < 0) {
        app_fail(err, errsize, "start_date must be a date YYYY-MM-DD");
        goto out;
    }
    if (app_drivers(root, &on, t, err, errsize) < 0)
        goto out;
    rc = 0;
out:
    yajl_tree_free(root);
    return rc;
}
