/* The `partner` subcommands. */
#ifndef OSAGOCTL_PARTNER_CMDS_H
#define OSAGOCTL_PARTNER_CMDS_H

#include "config.h"

/* argv[0] is the subcommand ("add", "list", ...). Returns the exit code. */
int partner_main(const struct osagoctl_config *cfg, int argc, char **argv);

#endif
