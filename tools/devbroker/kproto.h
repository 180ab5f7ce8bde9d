/* Just enough of the Kafka wire protocol for the relay to act like a Kafka broker where the mock
 * does not: find a request's kind, make a fetch not wait at the mock, tell an empty fetch
 * answer from one with data, see which topics a produce wrote, and put the relay's ports into
 * the broker addresses the mock hands out. Everything works in place on one whole frame (the
 * 4-byte size included) and never changes its length; a frame it cannot read is left alone. */
#ifndef DEVBROKER_KPROTO_H
#define DEVBROKER_KPROTO_H

#include <stddef.h>
#include <stdint.h>

enum {
    KP_PRODUCE = 0,
    KP_FETCH = 1,
    KP_METADATA = 3,
    KP_FIND_COORDINATOR = 10,
    KP_API_VERSIONS = 18,
};

struct kp_request {
    int16_t api_key;
    int16_t api_version;
    int32_t correlation_id;
};

/* The request header of frame[0..len). Returns 0, or -1 when it is not a request header. */
int kp_request_parse(const uint8_t *frame, size_t len, struct kp_request *req);

/* 1 when the request gets no answer at all (a produce with acks 0), else 0. */
int kp_request_unanswered(const uint8_t *frame, size_t len, const struct kp_request *req);

/* The correlation id of a response frame, or -1 when the frame is too short. */
int kp_response_correlation(const uint8_t *frame, size_t len, int32_t *correlation_id);

/* A fetch the relay can hold (versions 4..11, no incremental fetch session): sets its
 * max_wait_ms to 0 in place, returns the wait it asked for (ms), and calls topic() for each
 * topic it fetches. -1 when the frame is not such a fetch (it is then unchanged). */
int kp_fetch_request_nowait(uint8_t *frame, size_t len, const struct kp_request *req,
                            void (*topic)(void *arg, const char *name, size_t n), void *arg);

/* 1 when a fetch answer carries no records and no error, 0 when it has either, -1 unreadable. */
int kp_fetch_response_empty(const uint8_t *frame, size_t len, int16_t version);

/* Calls topic() for each topic of a produce answer (versions 0..7). Returns 0 or -1. */
int kp_produce_response_topics(const uint8_t *frame, size_t len, int16_t version,
                               void (*topic)(void *arg, const char *name, size_t n), void *arg);

/* Metadata (versions 0..8) and FindCoordinator (0..2) answers: each broker's port replaced by
 * port_of(node_id) when that is > 0. Returns 0 or -1 (unreadable; the frame may then be
 * partly rewritten, which only matters for frames that were broken already). */
int kp_rewrite_broker_ports(uint8_t *frame, size_t len, int16_t api_key, int16_t version,
                            int (*port_of)(void *arg, int32_t node_id), void *arg);

/* An ApiVersions answer (versions 0..3): the highest version offered of the APIs above lowered
 * to what this file reads. Returns 0 or -1. */
int kp_api_versions_cap(uint8_t *frame, size_t len, int16_t version);

#endif
