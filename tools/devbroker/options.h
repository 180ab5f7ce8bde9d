/* devbroker's command line. */
#ifndef DEVBROKER_OPTIONS_H
#define DEVBROKER_OPTIONS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>

#define OPTIONS_MAX_TOPICS 32

struct devbroker_config {
    struct sockaddr_in listen;      /* the bootstrap address clients are given */
    struct sockaddr_in control;
    bool has_control;
    int brokers;
    int partitions;
    int ntopics;
    char topic[OPTIONS_MAX_TOPICS][250];   /* Kafka allows topic names up to 249 chars */
};

enum { OPTIONS_OK = 0, OPTIONS_HELP = 1, OPTIONS_BAD = 2 };

/* Fills cfg from argv (defaults first); prints the reason to stderr when it fails. */
int options_parse(int argc, char **argv, struct devbroker_config *cfg);
void options_usage(FILE *out);

#endif
