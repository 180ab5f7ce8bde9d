/* Help text, kept in one place so every "--help" shows the same rules the
 * validators enforce. */
#include "usage.h"

#include "diag.h"

static const char usage_text[] =
    "Usage: osagoctl [--redis HOST:PORT] [--password P] [--db N] COMMAND ...\n"
    "\n"
    "Manages the partners of the OSAGO edge in Redis (docs/rate-limiting.md).\n"
    "\n"
    "Commands:\n"
    "  partner add NAME --rate R [--burst B] [--pool LABEL]\n"
    "                           create a partner and print its API key (shown once)\n"
    "  partner list [--json]    show all partners\n"
    "  partner set NAME [--rate R] [--burst B] [--pool LABEL]\n"
    "                           change a partner's contract\n"
    "  partner disable NAME     refuse the partner's key (401) but keep the partner\n"
    "  partner enable NAME      accept the partner's key again\n"
    "  partner rotate-key NAME  issue a new key (shown once); the old one stops working\n"
    "  partner delete NAME      remove the partner and its key\n"
    "  help                     show this text\n"
    "\n"
    "Values:\n"
    "  NAME, LABEL  1 to 64 characters from A-Z a-z 0-9 _ . -\n"
    "  R            requests per second, 0.001 to 1000000, at most 3 decimals\n"
    "  B            requests admitted at once, 1 to 1000000 (add: R rounded up)\n"
    "  LABEL        routing label, $osago_partner_pool at the edge (add: \"default\")\n"
    "\n"
    "Connection:\n"
    "  --redis HOST:PORT|unix:PATH  default $OSAGO_REDIS, else 127.0.0.1:6380\n"
    "  --password P                 default $OSAGO_REDIS_PASSWORD (safer: flags show in ps)\n"
    "  --db N                       default $OSAGO_REDIS_DB, else no SELECT\n"
    "\n"
    "Only the SHA-256 of a key is stored; a lost key cannot be recovered, only rotated.\n"
    "Edges cache contracts for osago_partner_cache_ttl (5 s by default), so a change\n"
    "can take that long to apply.\n"
    "\n"
    "Exit status: 0 success, 1 runtime error (Redis, unknown partner), 2 usage error.\n";

int usage_print(FILE *out)
{
    fputs(usage_text, out);
    return EXIT_OK;
}
