/* The OSAGO premium formula with the regulator's coefficient tables (simplified where noted
 * in docs/insurer-sim.md). Pure functions: same insurer and application, same premium. */
#ifndef INSURER_SIM_TARIFF_H
#define INSURER_SIM_TARIFF_H

#include <stdbool.h>

#define TARIFF_MAX_DRIVERS 5
#define TARIFF_KBM_M (-1)       /* class "M", the worst */

struct tariff_driver {
    int age;          /* whole years on the policy start date */
    int experience;   /* whole years since the licence was issued */
};

struct tariff_app {
    char category[4];   /* A, M, B, BE, C, C1, CE, C1E, D, D1, DE, D1E, Tm, Tb */
    int power_hp;
    int region;         /* owner's region code, e.g. 77 */
    int kbm_class;      /* TARIFF_KBM_M or 0..13 */
    bool unlimited;
    int ndrivers;
    struct tariff_driver driver[TARIFF_MAX_DRIVERS];
    int period_months;  /* 1..12 */
};

struct tariff_breakdown {
    double base;   /* the insurer's base rate for the category (TB), RUB */
    double kt;     /* territory */
    double kbm;    /* bonus-malus */
    double kvs;    /* age and experience */
    double ko;     /* unlimited drivers */
    double km;     /* engine power */
    double ks;     /* period of use */
    double premium;   /* the product, rounded to kopecks */
};

/* True when the category is one the tariff knows. */
bool tariff_category_known(const char *category);

/* Prices app for the insurer with this code. */
void tariff_quote(const char *insurer, const struct tariff_app *app, struct tariff_breakdown *out);

/* A number in [0, 1) fixed for (insurer, what): how an insurer places itself in a corridor. */
double tariff_position(const char *insurer, const char *what);

#endif
