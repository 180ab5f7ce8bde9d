/* Coefficient tables and the product TB x KT x KBM x KVS x KO x KM x KS. Each insurer sets its
 * base rate and territory coefficient inside the regulator's corridors; where it sits is a hash
 * of its code, so prices differ between insurers but never change between calls. */
#include "tariff.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

struct corridor {
    const char *category;
    double min, max;
};

/* Base-rate corridors, RUB (individuals; Bank of Russia 6007-U, rounded). */
static const struct corridor tariff_base[] = {
    { "A", 867, 1579 },   { "M", 867, 1579 },
    { "B", 1646, 7535 },  { "BE", 1646, 7535 },
    { "C", 2807, 5079 },  { "C1", 2807, 5079 }, { "CE", 2807, 5079 }, { "C1E", 2807, 5079 },
    { "D", 2246, 4044 },  { "D1", 2246, 4044 }, { "DE", 2246, 4044 }, { "D1E", 2246, 4044 },
    { "Tb", 1401, 2536 }, { "Tm", 869, 1573 },
};

struct territory {
    int region;
    double min, max;
};

/* Territory corridors by the owner's region (capital cities of the region, rounded). */
static const struct territory tariff_territory[] = {
    { 77, 1.80, 2.00 },   /* Moscow */
    { 78, 1.64, 1.80 },   /* Saint Petersburg */
    { 50, 1.56, 1.70 },   /* Moscow region */
    { 47, 1.28, 1.40 },   /* Leningrad region */
    { 66, 1.50, 1.68 },   /* Sverdlovsk region */
    { 54, 1.50, 1.61 },   /* Novosibirsk region */
    { 16, 1.60, 1.73 },   /* Tatarstan */
    { 52, 1.48, 1.56 },   /* Nizhny Novgorod region */
    { 23, 1.37, 1.51 },   /* Krasnodar territory */
    { 2, 1.40, 1.52 },    /* Bashkortostan */
    { 61, 1.50, 1.64 },   /* Rostov region */
    { 63, 1.54, 1.66 },   /* Samara region */
    { 5, 0.64, 0.70 },    /* Dagestan */
    { 20, 0.64, 0.69 },   /* Chechnya */
    { 6, 0.83, 0.90 },    /* Ingushetia */
};
static const struct territory tariff_territory_default = { 0, 1.00, 1.30 };

/* Bonus-malus by class: M, then 0..13. */
static const double tariff_kbm[15] = {
    2.45, 2.30, 1.55, 1.40, 1.00, 0.95, 0.90, 0.85, 0.80, 0.75, 0.70, 0.65, 0.60, 0.50, 0.46
};

/* Age x experience (KVS), simplified after the regulator's matrix. Rows: age 16-21, 22-24,
 * 25-29, 30-34, 35-39, 40-49, 50-59, 60+; columns: experience 0, 1, 2, 3-4, 5-6, 7-9, 10-14,
 * 15+ years. Cells no driver can reach repeat their neighbour. */
static const double tariff_kvs[8][8] = {
    { 1.87, 1.87, 1.87, 1.66, 1.66, 1.66, 1.66, 1.66 },
    { 1.77, 1.77, 1.77, 1.04, 1.04, 1.04, 1.04, 1.04 },
    { 1.77, 1.69, 1.63, 1.04, 1.04, 1.04, 1.01, 1.01 },
    { 1.63, 1.63, 1.63, 1.04, 1.04, 1.01, 0.96, 0.96 },
    { 1.63, 1.63, 1.63, 0.99, 0.96, 0.96, 0.96, 0.96 },
    { 1.63, 1.63, 1.63, 0.96, 0.96, 0.96, 0.96, 0.96 },
    { 1.63, 1.63, 1.63, 0.96, 0.96, 0.96, 0.96, 0.96 },
    { 1.60, 1.60, 1.60, 0.93, 0.93, 0.93, 0.93, 0.93 },
};
static const int tariff_age_from[8] = { 0, 22, 25, 30, 35, 40, 50, 60 };
static const int tariff_exp_from[8] = { 0, 1, 2, 3, 5, 7, 10, 15 };

/* Period of use (KS) by months: index = months. */
static const double tariff_ks[13] = {
    0.50, 0.50, 0.50, 0.50, 0.60, 0.65, 0.70, 0.80, 0.90, 0.95, 1.00, 1.00, 1.00
};

static uint64_t tariff_mix(uint64_t x)
{
    /* splitmix64's finaliser: spreads FNV's weak low bits */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

double tariff_position(const char *insurer, const char *what)
{
    uint64_t h = 0xcbf29ce484222325ULL;   /* FNV-1a */

    for (const char *p = insurer; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
    h = (h ^ '/') * 0x100000001b3ULL;
    for (const char *p = what; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
    return (double)(tariff_mix(h) >> 11) / 9007199254740992.0;   /* 2^53 */
}

static const struct corridor *tariff_corridor(const char *category)
{
    for (size_t i = 0; i < sizeof(tariff_base) / sizeof(tariff_base[0]); i++)
        if (strcmp(tariff_base[i].category, category) == 0)
            return &tariff_base[i];
    return NULL;
}

bool tariff_category_known(const char *category)
{
    return tariff_corridor(category) != NULL;
}

static int tariff_band(const int *from, int n, int value)
{
    int i = 0;

    while (i + 1 < n && value >= from[i + 1])
        i++;
    return i;
}

static double tariff_km(int hp)
{
    if (hp <= 50)
        return 0.6;
    if (hp <= 70)
        return 1.0;
    if (hp <= 100)
        return 1.1;
    if (hp <= 120)
        return 1.2;
    if (hp <= 150)
        return 1.4;
    return 1.6;
}

static double tariff_round(double v, double unit)
{
    return round(v / unit) * unit;
}

void tariff_quote(const char *insurer, const struct tariff_app *app, struct tariff_breakdown *out)
{
    const struct corridor *c = tariff_corridor(app->category);
    const struct territory *t = &tariff_territory_default;
    double pos;

    if (c == NULL)
        c = tariff_corridor("B");
    /* Insurers price in the upper half of the corridor, as the market does. */
    pos = 0.5 + 0.5 * tariff_position(insurer, app->category);
    out->base = tariff_round(c->min + pos * (c->max - c->min), 1.0);

    for (size_t i = 0; i < sizeof(tariff_territory) / sizeof(tariff_territory[0]); i++)
        if (tariff_territory[i].region == app->region)
            t = &tariff_territory[i];
    out->kt = tariff_round(t->min + tariff_position(insurer, "territory") * (t->max - t->min),
                           0.01);
    if (out->kt > t->max)
        out->kt = t->max;

    out->kbm = tariff_kbm[app->kbm_class == TARIFF_KBM_M ? 0 : app->kbm_class + 1];

    /* The worst driver decides: the youngest or least experienced one. */
    out->kvs = 1.0;
    out->ko = 1.0;
    if (app->unlimited) {
        out->ko = 2.32;
    } else {
        out->kvs = 0.0;
        for (int i = 0; i < app->ndrivers; i++) {
            int row = tariff_band(tariff_age_from, 8, app->driver[i].age);
            int col = tariff_band(tariff_exp_from, 8, app->driver[i].experience);

            if (tariff_kvs[row][col] > out->kvs)
                out->kvs = tariff_kvs[row][col];
        }
        if (out->kvs == 0.0)
            out->kvs = 1.0;
    }
    out->km = tariff_km(app->power_hp);
    out->ks = tariff_ks[app->period_months < 0 ? 0 : app->period_months > 12 ? 12
                                                                                : app->period_months];
    out->premium = tariff_round(out->base * out->kt * out->kbm * out->kvs * out->ko * out->km
                                    * out->ks, 0.01);
}
