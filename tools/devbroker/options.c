/* Flags of devbroker: --listen, --brokers, --partitions, --topics, --control. */
#include "options.h"
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The topics of DESIGN.md ("Intake stream -> Kafka"). */
static const char *const options_default_topics[] = {
    "osago.application.created",
    "osago.application.started",
    "osago.application.task",
    "osago.application.task-result",
};

void options_usage(FILE *out)
{
    fprintf(out,
            "usage: devbroker [--listen 127.0.0.1:9092] [--brokers 1] [--partitions 4]\n"
            "                 [--topics a,b,c] [--control 127.0.0.1:PORT]\n"
            "Kafka for the local stack: librdkafka's mock cluster behind a fixed bootstrap\n"
            "address. Prints \"devbroker: ready bootstrap=HOST:PORT\" when usable.\n"
            "Control port commands: ping, stats, broker down|up N, broker rtt N MS,\n"
            "topic error TOPIC ERRNAME|clear, request error API ERRNAME [COUNT], quit\n"
            "(N: broker id or all).\n");
}

/* Only loopback: this is a development and test broker with no authentication. */
static int options_addr(const char *flag, const char *value, struct sockaddr_in *addr)
{
    if (net_parse_addr(value, addr) < 0) {
        fprintf(stderr, "devbroker: %s: expected HOST:PORT with an IPv4 address, got \"%s\"\n",
                flag, value);
        return -1;
    }
    if ((ntohl(addr->sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "devbroker: %s: only loopback addresses (127.0.0.0/8) are allowed\n",
                flag);
        return -1;
    }
    return 0;
}

static int options_int(const char *flag, const char *value, int min, int max, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(value, &end, 10);
    if (errno != 0 || *end != '\0' || end == value || v < min || v > max) {
        fprintf(stderr, "devbroker: %s must be an integer from %d to %d\n", flag, min, max);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Kafka's own rule for topic names: [a-zA-Z0-9._-], 1..249 chars. */
static int options_topics(const char *value, struct devbroker_config *cfg)
{
    const char *p = value;

    cfg->ntopics = 0;
    while (*p != '\0') {
        size_t n = strcspn(p, ",");

        if (n == 0 || n > 249 || cfg->ntopics == OPTIONS_MAX_TOPICS) {
            fprintf(stderr, "devbroker: --topics: names of 1..249 chars, at most %d topics\n",
                    OPTIONS_MAX_TOPICS);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            char ch = p[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')
                  || ch == '.' || ch == '_' || ch == '-')) {
                fprintf(stderr, "devbroker: --topics: a topic name takes only [a-zA-Z0-9._-]\n");
                return -1;
            }
        }
        memcpy(cfg->topic[cfg->ntopics], p, n);
        cfg->topic[cfg->ntopics][n] = '\0';
        cfg->ntopics++;
        p += n;
        if (*p == ',')
            p++;
    }
    if (cfg->ntopics == 0) {
        fprintf(stderr, "devbroker: --topics: at least one topic\n");
        return -1;
    }
    return 0;
}

int options_parse(int argc, char **argv, struct devbroker_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    (void)net_parse_addr("127.0.0.1:9092", &cfg->listen);
    cfg->brokers = 1;
    cfg->partitions = 4;
    for (size_t i = 0; i < sizeof(options_default_topics) / sizeof(options_default_topics[0]); i++)
        snprintf(cfg->topic[cfg->ntopics++], sizeof(cfg->topic[0]), "%s",
                 options_default_topics[i]);

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value;
        char name[32];
        const char *eq;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)
            return OPTIONS_HELP;
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "devbroker: unexpected argument \"%s\"\n", arg);
            return OPTIONS_BAD;
        }
        /* Both "--flag value" and "--flag=value". */
        eq = strchr(arg, '=');
        if (eq != NULL) {
            snprintf(name, sizeof(name), "%.*s", (int)(eq - arg), arg);
            value = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", arg);
            if (i + 1 >= argc) {
                fprintf(stderr, "devbroker: %s needs a value\n", arg);
                return OPTIONS_BAD;
            }
            value = argv[++i];
        }
        if (strcmp(name, "--listen") == 0) {
            if (options_addr(name, value, &cfg->listen) < 0)
                return OPTIONS_BAD;
        } else if (strcmp(name, "--control") == 0) {
            if (options_addr(name, value, &cfg->control) < 0)
                return OPTIONS_BAD;
            cfg->has_control = true;
        } else if (strcmp(name, "--brokers") == 0) {
            if (options_int(name, value, 1, 16, &cfg->brokers) < 0)
                return OPTIONS_BAD;
        } else if (strcmp(name, "--partitions") == 0) {
            if (options_int(name, value, 1, 1000, &cfg->partitions) < 0)
                return OPTIONS_BAD;
        } else if (strcmp(name, "--topics") == 0) {
            if (options_topics(value, cfg) < 0)
                return OPTIONS_BAD;
        } else {
            fprintf(stderr, "devbroker: unknown option %s\n", name);
            return OPTIONS_BAD;
        }
    }
    return OPTIONS_OK;
}
