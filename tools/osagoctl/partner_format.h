/* How `partner list` shows partners: a table for people, JSON for programs. */
#ifndef OSAGOCTL_PARTNER_FORMAT_H
#define OSAGOCTL_PARTNER_FORMAT_H

#include "partner_store.h"

#include <stdio.h>

/* Characters of the key hash shown as the key id: enough to tell keys
 * apart and to match a log line, too few to be mistaken for the hash. */
#define KEY_ID_LEN 12

void format_partners_tsv(FILE *out, const struct partner_list *list);
void format_partners_json(FILE *out, const struct partner_list *list);

#endif
