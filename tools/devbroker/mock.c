/* librdkafka 2.0's mock cluster in this process. The mock runs its own thread; the calls here
 * post commands to it, so they are safe from the main loop. */
#include "mock.h"
#include "net.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int mock_start(struct mock *m, int nbrokers, char *errbuf, size_t errsize)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *boot;
    char *list, *save = NULL, *tok;
    int i = 0;

    memset(m, 0, sizeof(*m));
    if (nbrokers < 1 || nbrokers > MOCK_MAX_BROKERS) {
        snprintf(errbuf, errsize, "brokers must be 1..%d", MOCK_MAX_BROKERS);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    /* The handle only hosts the cluster; a producer is the lightest kind. It has no
     * bootstrap.servers on purpose, and its notice saying so is noise: warnings and up only. */
    if (rd_kafka_conf_set(conf, "log_level", "4", errbuf, errsize) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errbuf, errsize);
    if (m->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    m->cluster = rd_kafka_mock_cluster_new(m->rk, nbrokers);
    if (m->cluster == NULL) {
        snprintf(errbuf, errsize, "rd_kafka_mock_cluster_new failed");
        mock_stop(m);
        return -1;
    }
    m->nbrokers = nbrokers;

    /* The mock lists its brokers in id order (it creates them 1..N and appends each), so the
     * i-th bootstrap address is broker i+1. */
    boot = rd_kafka_mock_cluster_bootstraps(m->cluster);
    list = strdup(boot);
    if (list == NULL) {
        snprintf(errbuf, errsize, "out of memory");
        mock_stop(m);
        return -1;
    }
    for (tok = strtok_r(list, ",", &save); tok != NULL && i < nbrokers;
         tok = strtok_r(NULL, ",", &save), i++) {
        if (net_parse_addr(tok, &m->addr[i]) < 0)
            break;
        m->up[i] = true;
    }
    free(list);
    if (i != nbrokers) {
        snprintf(errbuf, errsize, "unexpected mock bootstrap list \"%s\"", boot);
        mock_stop(m);
        return -1;
    }
    return 0;
}

void mock_stop(struct mock *m)
{
    if (m->cluster != NULL)
        rd_kafka_mock_cluster_destroy(m->cluster);
    if (m->rk != NULL)
        rd_kafka_destroy(m->rk);
    m->cluster = NULL;
    m->rk = NULL;
}

const char *mock_bootstraps(const struct mock *m)
{
    return rd_kafka_mock_cluster_bootstraps(m->cluster);
}

int mock_topic_create(struct mock *m, const char *topic, int partitions, char *errbuf,
                      size_t errsize)
{
    /* Replicas cannot outnumber brokers; three is what a small real cluster would run. */
    int replicas = m->nbrokers < 3 ? m->nbrokers : 3;
    rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(m->cluster, topic, partitions, replicas);

    if (err) {
        snprintf(errbuf, errsize, "topic %s: %s", topic, rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

static int mock_check_broker(const struct mock *m, int broker, char *errbuf, size_t errsize)
{
    if (broker == -1 || (broker >= 1 && broker <= m->nbrokers))
        return 0;
    snprintf(errbuf, errsize, "no broker %d (brokers are 1..%d, or all)", broker, m->nbrokers);
    return -1;
}

int mock_broker_set_up(struct mock *m, int broker, bool up, char *errbuf, size_t errsize)
{
    rd_kafka_resp_err_t err;

    if (mock_check_broker(m, broker, errbuf, errsize) < 0)
        return -1;
    err = up ? rd_kafka_mock_broker_set_up(m->cluster, broker)
             : rd_kafka_mock_broker_set_down(m->cluster, broker);
    if (err) {
        snprintf(errbuf, errsize, "%s", rd_kafka_err2str(err));
        return -1;
    }
    for (int i = 0; i < m->nbrokers; i++)
        if (broker == -1 || broker == i + 1)
            m->up[i] = up;
    return 0;
}

int mock_broker_set_rtt(struct mock *m, int broker, int rtt_ms, char *errbuf, size_t errsize)
{
    rd_kafka_resp_err_t err;

    if (mock_check_broker(m, broker, errbuf, errsize) < 0)
        return -1;
    if (rtt_ms < 0) {
        snprintf(errbuf, errsize, "rtt must be >= 0 ms");
        return -1;
    }
    err = rd_kafka_mock_broker_set_rtt(m->cluster, broker, rtt_ms);
    if (err) {
        snprintf(errbuf, errsize, "%s", rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

/* "UNKNOWN_TOPIC_OR_PART", "RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE", "_TRANSPORT" or a number,
 * as librdkafka names them in its own error table. Returns 0 and sets *code, or -1. */
static int mock_err_lookup(const char *name, rd_kafka_resp_err_t *code)
{
    static const char prefix[] = "RD_KAFKA_RESP_ERR_";
    const struct rd_kafka_err_desc *descs;
    size_t n;
    char *end;
    long num;

    if (strncasecmp(name, prefix, sizeof(prefix) - 1) == 0)
        name += sizeof(prefix) - 1;
    errno = 0;
    num = strtol(name, &end, 10);
    rd_kafka_get_err_descs(&descs, &n);
    for (size_t i = 0; i < n; i++) {
        if (descs[i].name == NULL)
            continue;
        if ((*end == '\0' && end != name && errno == 0 && descs[i].code == num)
            || strcasecmp(descs[i].name, name) == 0) {
            *code = descs[i].code;
            return 0;
        }
    }
    return -1;
}

int mock_topic_set_error(struct mock *m, const char *topic, const char *errname, char *errbuf,
                         size_t errsize)
{
    rd_kafka_resp_err_t code = RD_KAFKA_RESP_ERR_NO_ERROR;

    if (strcasecmp(errname, "clear") != 0 && mock_err_lookup(errname, &code) < 0) {
        snprintf(errbuf, errsize, "unknown error name %s (use librdkafka's names, e.g. "
                 "UNKNOWN_TOPIC_OR_PART, LEADER_NOT_AVAILABLE, or clear)", errname);
        return -1;
    }
    rd_kafka_mock_topic_set_error(m->cluster, topic, code);
    return 0;
}

int mock_request_error(struct mock *m, const char *api, const char *errname, int count,
                       char *errbuf, size_t errsize)
{
    /* the requests a client's failure handling turns on; the protocol's ApiKey numbers */
    static const struct { const char *name; int16_t key; } apis[] = {
        { "Produce", 0 }, { "Fetch", 1 }, { "ListOffsets", 2 }, { "Metadata", 3 },
        { "OffsetCommit", 8 }, { "OffsetFetch", 9 }, { "FindCoordinator", 10 },
        { "JoinGroup", 11 }, { "Heartbeat", 12 }, { "SyncGroup", 14 }, { "InitProducerId", 22 },
    };
    rd_kafka_resp_err_t code;
    size_t              i;

    for (i = 0; i < sizeof(apis) / sizeof(apis[0]); i++)
        if (strcasecmp(apis[i].name, api) == 0)
            break;
    if (i == sizeof(apis) / sizeof(apis[0])) {
        snprintf(errbuf, errsize, "unknown request %s (Produce, Fetch, ListOffsets, Metadata, "
                 "OffsetCommit, OffsetFetch, FindCoordinator, JoinGroup, Heartbeat, SyncGroup, "
                 "InitProducerId)", api);
        return -1;
    }
    if (mock_err_lookup(errname, &code) < 0) {
        snprintf(errbuf, errsize, "unknown error name %s (use librdkafka's names, e.g. "
                 "CLUSTER_AUTHORIZATION_FAILED, NOT_LEADER_FOR_PARTITION)", errname);
        return -1;
    }
    for (int n = 0; n < count; n++)
        rd_kafka_mock_push_request_errors(m->cluster, apis[i].key, 1, code);
    return 0;
}

int mock_first_up(const struct mock *m, struct sockaddr_in *addr)
{
    for (int i = 0; i < m->nbrokers; i++) {
        if (m->up[i]) {
            *addr = m->addr[i];
            return i + 1;
        }
    }
    return 0;
}
