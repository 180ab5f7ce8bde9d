/* What happens to one call: its latency and the injected fault, drawn from a seeded generator
 * with the insurer's rates. */
#ifndef INSURER_SIM_FAULTS_H
#define INSURER_SIM_FAULTS_H

#include "config.h"

#include <stdatomic.h>
#include <stdint.h>

enum fault_kind { FAULT_NONE, FAULT_ERROR, FAULT_TIMEOUT, FAULT_MALFORMED };

struct fault_plan {
    enum fault_kind kind;
    int latency_ms;
    uint64_t draw;      /* a further random number for the call (quote id, garbage flavour) */
};

/* Draws come from a counter hashed with the seed: lock-free across the server's threads, and
 * the same sequence for the same seed. */
struct fault_rng {
    uint64_t seed;
    atomic_uint_fast64_t counter;
};

void fault_rng_init(struct fault_rng *rng, uint64_t seed);
uint64_t fault_rng_next(struct fault_rng *rng);

void fault_decide(const struct insurer *ins, struct fault_rng *rng, struct fault_plan *plan);

#endif
