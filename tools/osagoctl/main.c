/* osagoctl: manages the partners of the OSAGO edge in Redis. This file reads
 * the options that come before the command and hands over to it. */
#include "config.h"
#include "diag.h"
#include "opts.h"
#include "partner_cmds.h"
#include "usage.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    enum { O_REDIS, O_PASSWORD, O_DB };
    struct opt opts[] = {
        [O_REDIS] = { .name = "redis", .takes_value = true },
        [O_PASSWORD] = { .name = "password", .takes_value = true },
        [O_DB] = { .name = "db", .takes_value = true },
    };
    struct osagoctl_config cfg;
    char q[DIAG_QUOTE_MAX];
    const char *command;
    int next, rc;

    /* A closed stdout (`| head -c0`) is a write error to report, not a silent death: the key
     * of a partner just added would be lost without a word. */
    signal(SIGPIPE, SIG_IGN);
    rc = opts_parse_leading(argc - 1, argv + 1, opts, sizeof(opts) / sizeof(opts[0]), &next);
    if (rc == OPTS_HELP)
        return usage_print(stdout);
    if (rc != EXIT_OK)
        return rc;
    next++; /* index in argv, past the program name */
    if (next >= argc)
        return diag_usage("missing command");

    command = argv[next];
    if (strcmp(command, "help") == 0)
        return usage_print(stdout);
    if (strcmp(command, "partner") != 0)
        return diag_usage("unknown command %s", diag_quote(command, q));

    rc = config_resolve(&cfg, opts[O_REDIS].value, opts[O_PASSWORD].value, opts[O_DB].value);
    if (rc != EXIT_OK)
        return rc;
    return partner_main(&cfg, argc - next - 1, argv + next + 1);
}
