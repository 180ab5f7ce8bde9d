/* Calendar dates as the application carries them ("YYYY-MM-DD"). */
#ifndef INSURER_SIM_DATES_H
#define INSURER_SIM_DATES_H

#include <stdbool.h>
#include <stddef.h>

struct date {
    int year, month, day;
};

/* Strict "YYYY-MM-DD" with a real calendar day; returns true when valid. */
bool date_parse(const char *s, struct date *d);
/* Today in UTC. */
struct date date_today(void);
/* Whole years from `from` to `to` (an age on a given day); negative when to is earlier. */
int date_full_years(const struct date *from, const struct date *to);
/* d plus n days. */
struct date date_add_days(const struct date *d, int n);
/* "YYYY-MM-DD" into buf (at least 11 bytes). */
void date_format(const struct date *d, char *buf, size_t size);

#endif
