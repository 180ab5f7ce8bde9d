/*
 * The module's shared memory zone: what every worker of this nginx
 * instance sees alike (counters for the metrics location, per-partner
 * state for the local fallback limiter, and the keys that named a partner,
 * for the lookup budget).
 */

#ifndef _NGX_HTTP_OSAGO_ZONE_H_INCLUDED_
#define _NGX_HTTP_OSAGO_ZONE_H_INCLUDED_


#include "ngx_http_osago_module.h"


#define NGX_HTTP_OSAGO_RTT_BUCKETS   12
#define NGX_HTTP_OSAGO_MAX_WORKERS   64
#define NGX_HTTP_OSAGO_PARSE_BUCKETS 8
#define NGX_HTTP_OSAGO_WAKE_BUCKETS  12
#define NGX_HTTP_OSAGO_KEY_PROBES    8   /* slots a known key may sit in */
#define NGX_HTTP_OSAGO_POLL_SLOTS    128 /* processes counting parked requests:
                                            twice the workers, for a reload */


/*
 * A process's own count of the parked requests and held ids: one that dies
 * without unparking them (a crash, SIGKILL) must not leave them counted.
 */
struct ngx_http_osago_poll_slot_s {
    ngx_atomic_t                    pid;        /* 0: never taken */
    ngx_atomic_t                    parked;
    ngx_atomic_t                    ids;
};


struct ngx_http_osago_shm_partner_s {
    ngx_rbtree_node_t               node;       /* key: crc32 of the name */
    ngx_queue_t                     queue;      /* every partner, for listing */

    ngx_atomic_t                    allowed;
    ngx_atomic_t                    limited;

    uint64_t                        local_tat;  /* under the zone mutex */

    size_t                          name_len;
    u_char                          name[NGX_HTTP_OSAGO_NAME_MAX];
};


struct ngx_http_osago_shctx_s {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     partners;

    ngx_atomic_t                    decisions[NGX_HTTP_OSAGO_OUTCOME_MAX];
    ngx_atomic_t                    untracked;  /* zone full: not per partner */

    ngx_atomic_t                    rtt_bucket[NGX_HTTP_OSAGO_RTT_BUCKETS];
    ngx_atomic_t                    rtt_count;
    ngx_atomic_t                    rtt_sum_us;

    ngx_atomic_t                    redis_errors[NGX_HTTP_OSAGO_REDIS_ERR_MAX];

    ngx_atomic_t                    intake_accepted;
    ngx_atomic_t                    intake_replayed;
    ngx_atomic_t                    intake_rejected[NGX_HTTP_OSAGO_INTAKE_REASON_MAX];
    ngx_atomic_t                    parse_bucket[NGX_HTTP_OSAGO_PARSE_BUCKETS];
    ngx_atomic_t                    parse_count;
    ngx_atomic_t                    parse_sum_us;
    ngx_atomic_t                    redis_up[NGX_HTTP_OSAGO_MAX_WORKERS];

    ngx_atomic_t                    poll_reads;
    ngx_atomic_t                    poll_at_once;
    ngx_atomic_t                    poll_parked;       /* processes past
                                                          the slots */
    ngx_atomic_t                    poll_woken;
    ngx_atomic_t                    poll_timed_out;
    ngx_atomic_t                    poll_ids;          /* likewise */
    ngx_http_osago_poll_slot_t      poll_slot[NGX_HTTP_OSAGO_POLL_SLOTS];
    ngx_atomic_t                    wake_bucket[NGX_HTTP_OSAGO_WAKE_BUCKETS];
    ngx_atomic_t                    wake_sum_us;
    ngx_atomic_t                    poll_subscribed[NGX_HTTP_OSAGO_MAX_WORKERS];

    /*
     * Keys that named a partner when Redis was last asked, by the first
     * 16 bytes of their digest (two words a slot, both 0 when free): a
     * worker that has not cached such a key yet, after a reload or because
     * another worker served it, never refuses it as over
     * osago_partner_lookup_rate.  Written under the zone mutex, read
     * without it: a read torn by a write may mix the halves of two keys,
     * which matches a third only by a 128-bit collision.
     */
    volatile uint64_t              *known_keys;
    ngx_uint_t                      known_mask;        /* slots - 1 */
};


typedef struct {
    ngx_http_osago_shctx_t         *sh;
    ngx_slab_pool_t                *shpool;
} ngx_http_osago_zone_t;


#endif /* _NGX_HTTP_OSAGO_ZONE_H_INCLUDED_ */
