/* The Kafka cluster itself: librdkafka's mock cluster, its topics and its fault switches. */
#ifndef DEVBROKER_MOCK_H
#define DEVBROKER_MOCK_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>

#define MOCK_MAX_BROKERS 16

struct mock {
    rd_kafka_t *rk;                 /* owns the cluster; never connects anywhere itself */
    rd_kafka_mock_cluster_t *cluster;
    int nbrokers;
    struct sockaddr_in addr[MOCK_MAX_BROKERS];  /* broker id i+1 listens on addr[i] */
    bool up[MOCK_MAX_BROKERS];      /* our mirror: the mock API has no getter */
};

/* Creates the cluster with brokers 1..nbrokers; returns 0 or -1 with errbuf filled. */
int mock_start(struct mock *m, int nbrokers, char *errbuf, size_t errsize);
void mock_stop(struct mock *m);

/* The mock's own bootstrap list ("127.0.0.1:P1,127.0.0.1:P2"). */
const char *mock_bootstraps(const struct mock *m);

int mock_topic_create(struct mock *m, const char *topic, int partitions, char *errbuf,
                      size_t errsize);

/* Fault switches; broker -1 means every broker. Return 0 or -1 with errbuf filled. */
int mock_broker_set_up(struct mock *m, int broker, bool up, char *errbuf, size_t errsize);
int mock_broker_set_rtt(struct mock *m, int broker, int rtt_ms, char *errbuf, size_t errsize);
int mock_topic_set_error(struct mock *m, const char *topic, const char *errname, char *errbuf,
                         size_t errsize);
/* The next `count` requests of one kind (by name: Produce, InitProducerId, ...) fail with
 * errname, whichever broker they reach (rd_kafka_mock_push_request_errors). */
int mock_request_error(struct mock *m, const char *api, const char *errname, int count,
                       char *errbuf, size_t errsize);

/* The first broker that is up (its address in *addr, id returned), or 0 when all are down. */
int mock_first_up(const struct mock *m, struct sockaddr_in *addr);

#endif
