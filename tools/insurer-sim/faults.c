/* Per-call latency and fault injection. */
#include "faults.h"

static uint64_t fault_splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

void fault_rng_init(struct fault_rng *rng, uint64_t seed)
{
    rng->seed = seed;
    atomic_init(&rng->counter, 0);
}

uint64_t fault_rng_next(struct fault_rng *rng)
{
    uint64_t n = atomic_fetch_add_explicit(&rng->counter, 1, memory_order_relaxed);

    return fault_splitmix(rng->seed ^ fault_splitmix(n));
}

static double fault_unit(uint64_t x)
{
    return (double)(x >> 11) / 9007199254740992.0;   /* [0, 1) */
}

void fault_decide(const struct insurer *ins, struct fault_rng *rng, struct fault_plan *plan)
{
    double u = fault_unit(fault_rng_next(rng));
    uint64_t span = (uint64_t)(ins->latency_max - ins->latency_min) + 1;

    plan->latency_ms = ins->latency_min + (int)(fault_rng_next(rng) % span);
    plan->draw = fault_rng_next(rng);
    /* One draw splits [0, 1) into error | timeout | malformed | fine, so the rates are exact
     * shares (options check that they add up to at most 1). */
    if (u < ins->error)
        plan->kind = FAULT_ERROR;
    else if (u < ins->error + ins->timeout)
        plan->kind = FAULT_TIMEOUT;
    else if (u < ins->error + ins->timeout + ins->malformed)
        plan->kind = FAULT_MALFORMED;
    else
        plan->kind = FAULT_NONE;
}
