/* Date arithmetic through days since the epoch (civil calendar, no time zones involved). */
#include "dates.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static bool date_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int date_days_in_month(int y, int m)
{
    static const int days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };

    return m == 2 && date_leap(y) ? 29 : days[m - 1];
}

bool date_parse(const char *s, struct date *d)
{
    int v[3] = { 0, 0, 0 };
    const int len[3] = { 4, 2, 2 };
    const char *p = s;

    if (strlen(s) != 10)
        return false;
    for (int f = 0; f < 3; f++) {
        for (int i = 0; i < len[f]; i++, p++) {
            if (*p < '0' || *p > '9')
                return false;
            v[f] = v[f] * 10 + (*p - '0');
        }
        if (f < 2 && *p++ != '-')
            return false;
    }
    if (v[0] < 1900 || v[0] > 2200 || v[1] < 1 || v[1] > 12 || v[2] < 1
        || v[2] > date_days_in_month(v[0], v[1]))
        return false;
    d->year = v[0];
    d->month = v[1];
    d->day = v[2];
    return true;
}

/* Days since 1970-01-01 (Howard Hinnant's days_from_civil). */
static long date_to_days(const struct date *d)
{
    int y = d->year - (d->month <= 2);
    long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (unsigned)((153 * (d->month + (d->month > 2 ? -3 : 9)) + 2) / 5 + d->day - 1);
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + (long)doe - 719468;
}

static struct date date_from_days(long z)
{
    struct date d;
    long era;
    unsigned doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned)(z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d.day = (int)(doy - (153 * mp + 2) / 5 + 1);
    d.month = (int)(mp < 10 ? mp + 3 : mp - 9);
    d.year = (int)(yoe + era * 400) + (d.month <= 2);
    return d;
}

struct date date_today(void)
{
    return date_from_days((long)(time(NULL) / 86400));
}

int date_full_years(const struct date *from, const struct date *to)
{
    int years = to->year - from->year;

    if (to->month < from->month || (to->month == from->month && to->day < from->day))
        years--;
    return years;
}

struct date date_add_days(const struct date *d, int n)
{
    return date_from_days(date_to_days(d) + n);
}

void date_format(const struct date *d, char *buf, size_t size)
{
    snprintf(buf, size, "%04d-%02d-%02d", d->year, d->month, d->day);
}
