/*
 * ngx_http_osago_module: the OSAGO edge.
 *
 * Shared declarations between the module's files: configuration, the
 * per-request limiter state, the per-worker state hung off the main conf.
 */

#ifndef _NGX_HTTP_OSAGO_MODULE_H_INCLUDED_
#define _NGX_HTTP_OSAGO_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_osago_redis.h"


#define NGX_HTTP_OSAGO_FALLBACK_LOCAL    0
#define NGX_HTTP_OSAGO_FALLBACK_OPEN     1
#define NGX_HTTP_OSAGO_FALLBACK_CLOSED   2

#define NGX_HTTP_OSAGO_API_KEY_MAX       256
#define NGX_HTTP_OSAGO_NAME_MAX          64
#define NGX_HTTP_OSAGO_DIGEST_LEN        32


/* outcomes of a limiter decision; indexes into the metrics counters */
typedef enum {
    NGX_HTTP_OSAGO_ALLOWED = 0,
    NGX_HTTP_OSAGO_LIMITED,
    NGX_HTTP_OSAGO_UNAUTHORIZED,
    NGX_HTTP_OSAGO_FALLBACK_ALLOWED,
    NGX_HTTP_OSAGO_FALLBACK_LIMITED,
    NGX_HTTP_OSAGO_UNAVAILABLE,
    NGX_HTTP_OSAGO_BUSY,            /* over osago_partner_lookup_rate */
    NGX_HTTP_OSAGO_OUTCOME_MAX
} ngx_http_osago_outcome_e;


typedef struct ngx_http_osago_partner_cache_s  ngx_http_osago_partner_cache_t;
typedef struct ngx_http_osago_shm_partner_s    ngx_http_osago_shm_partner_t;
typedef struct ngx_http_osago_poll_slot_s      ngx_http_osago_poll_slot_t;
typedef struct ngx_http_osago_shctx_s          ngx_http_osago_shctx_t;
typedef struct ngx_http_osago_poll_node_s      ngx_http_osago_poll_node_t;


/* A partner's contract as the limiter uses it. */
typedef struct {
    ngx_uint_t                       rate_milli;   /* requests per 1000 s */
    ngx_uint_t                       burst;
    u_char                           name[NGX_HTTP_OSAGO_NAME_MAX];
    size_t                           name_len;
    u_char                           pool[NGX_HTTP_OSAGO_NAME_MAX];
    size_t                           pool_len;
} ngx_http_osago_contract_t;


typedef struct {
    ngx_http_osago_redis_conf_t      redis;
    ngx_http_osago_redis_script_t   *gcra;
    ngx_http_osago_redis_script_t   *intake;
    time_t                           app_ttl;

    ngx_msec_t                       partner_cache_ttl;
    ngx_uint_t                       partner_cache_size;
    ngx_uint_t                       partner_lookup_rate;   /* 0: no cap */

    size_t                           zone_size;
    ngx_shm_zone_t                  *shm_zone;

    /* some location limits or shows metrics: connect to Redis */
    ngx_flag_t                       used;
    ngx_flag_t                       intake_used;
    ngx_flag_t                       poll_used;

    /* per worker process, created in init_process */
    ngx_http_osago_redis_t          *redis_conn;
    ngx_http_osago_partner_cache_t  *partners;
    ngx_uint_t                       lookup_tokens;   /* thousandths */
    ngx_msec_t                       lookup_refilled;
    ngx_queue_t                      limit_batches;   /* open this tick */
    ngx_event_t                      limit_flush;
    ngx_log_t                       *redis_log;
    ngx_rbtree_t                     intake_in_flight;  /* partner:key */
    ngx_rbtree_node_t                intake_sentinel;
    ngx_rbtree_t                     poll_tree;         /* ids waited for */
    ngx_rbtree_node_t                poll_sentinel;
    ngx_http_osago_redis_t          *poll_sub;
    ngx_http_osago_redis_subscription_t  poll_subscription;
    ngx_event_t                      poll_exit_watch;
    ngx_uint_t                       poll_parked;       /* this worker */
    ngx_http_osago_poll_slot_t      *poll_slot;         /* its counts in the
                                                           zone; NULL: none */
    ngx_uint_t                       poll_epoch;        /* subscriptions made */
    ngx_queue_t                      poll_recheck;      /* ids to read again */
    ngx_event_t                      poll_recheck_next; /* the next slice */
} ngx_http_osago_main_conf_t;


typedef struct {
    ngx_flag_t                       limit;
    ngx_http_complex_value_t        *api_key;
    ngx_uint_t                       fallback;
    ngx_uint_t                       edges;

    ngx_flag_t                       intake;
    size_t                           intake_max_body;
    ngx_uint_t                       intake_max_depth;
    time_t                           idempotency_ttl;
    ngx_http_complex_value_t        *user_id;
    ngx_uint_t                       user_limit;      /* 0: no limit */
    ngx_msec_t                       user_limit_period;

    ngx_http_complex_value_t        *poll;            /* the id */
    ngx_msec_t                       poll_timeout;
} ngx_http_osago_loc_conf_t;


/* The limiter's per-request state; survives internal redirects. */
typedef struct {
    ngx_http_request_t              *request;

    u_char                           digest[NGX_HTTP_OSAGO_DIGEST_LEN];

    ngx_uint_t                       outcome;
    ngx_str_t                        partner;
    ngx_str_t                        pool;

    /* what the RateLimit headers report */
    ngx_uint_t                       quota;
    ngx_uint_t                       window;
    ngx_uint_t                       remaining;
    ngx_uint_t                       reset;
    ngx_uint_t                       retry_after;

    unsigned                         waiting:1;
    unsigned                         decided:1;
    unsigned                         has_policy:1;
    unsigned                         counted:1;
} ngx_http_osago_limit_ctx_t;


extern ngx_module_t  ngx_http_osago_module;


/* limit */
ngx_int_t ngx_http_osago_limit_init(ngx_conf_t *cf);
void ngx_http_osago_limit_init_worker(ngx_http_osago_main_conf_t *omcf,
    ngx_log_t *log);
void ngx_http_osago_limit_exit_worker(ngx_http_osago_main_conf_t *omcf);
ngx_int_t ngx_http_osago_limit_add_variables(ngx_conf_t *cf);
ngx_http_osago_limit_ctx_t *ngx_http_osago_limit_get_ctx(ngx_http_request_t *r);
extern ngx_str_t  ngx_http_osago_outcome_names[];

/* intake */
typedef enum {
    NGX_HTTP_OSAGO_INTAKE_KEY_MISSING = 0,
    NGX_HTTP_OSAGO_INTAKE_KEY_MALFORMED,
    NGX_HTTP_OSAGO_INTAKE_MEDIA_TYPE,
    NGX_HTTP_OSAGO_INTAKE_TOO_LARGE,
    NGX_HTTP_OSAGO_INTAKE_KEY_REUSED,
    NGX_HTTP_OSAGO_INTAKE_IN_PROGRESS,
    NGX_HTTP_OSAGO_INTAKE_USER_LIMITED,
    NGX_HTTP_OSAGO_INTAKE_UNAVAILABLE,
    NGX_HTTP_OSAGO_INTAKE_METHOD,
    NGX_HTTP_OSAGO_INTAKE_REASON_INVALID,      /* the body, see the type */
    NGX_HTTP_OSAGO_INTAKE_REASON_MAX
} ngx_http_osago_intake_reason_e;

#define NGX_HTTP_OSAGO_INTAKE_ACCEPTED   0
#define NGX_HTTP_OSAGO_INTAKE_REPLAYED   1
#define NGX_HTTP_OSAGO_INTAKE_REJECTED   2

char *ngx_http_osago_intake(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
void ngx_http_osago_intake_init_worker(ngx_http_osago_main_conf_t *omcf);

/* poll */
char *ngx_http_osago_poll(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_osago_poll_init_worker(ngx_http_osago_main_conf_t *omcf,
    ngx_log_t *log);
void ngx_http_osago_poll_exit_worker(ngx_http_osago_main_conf_t *omcf);
void ngx_http_osago_poll_redis_up(ngx_http_osago_main_conf_t *omcf);

/* partner cache (per worker) */
typedef struct {
    ngx_uint_t                       state;
    ngx_msec_t                       expires;
    ngx_http_osago_contract_t        contract;
    ngx_http_osago_shm_partner_t    *shared;
    void                            *batch;     /* requests of this tick */
} ngx_http_osago_partner_t;

#define NGX_HTTP_OSAGO_PARTNER_NEW       0      /* asked, no answer yet */
#define NGX_HTTP_OSAGO_PARTNER_KNOWN     1
#define NGX_HTTP_OSAGO_PARTNER_UNKNOWN   2
#define NGX_HTTP_OSAGO_PARTNER_DISABLED  3

ngx_http_osago_partner_cache_t *ngx_http_osago_partner_cache_create(
    ngx_uint_t size, ngx_log_t *log);
void ngx_http_osago_partner_cache_destroy(
    ngx_http_osago_partner_cache_t *cache);
ngx_http_osago_partner_t *ngx_http_osago_partner_lookup(
    ngx_http_osago_partner_cache_t *cache, u_char *digest);
ngx_http_osago_partner_t *ngx_http_osago_partner_store(
    ngx_http_osago_partner_cache_t *cache, u_char *digest);
void ngx_http_osago_partner_settle(ngx_http_osago_partner_cache_t *cache,
    ngx_http_osago_partner_t *partner);

/* shared zone: counters and per-partner state of all workers */
ngx_int_t ngx_http_osago_zone_add(ngx_conf_t *cf,
    ngx_http_osago_main_conf_t *omcf);
ngx_http_osago_shctx_t *ngx_http_osago_zone_ctx(ngx_http_osago_main_conf_t *omcf);
ngx_http_osago_shm_partner_t *ngx_http_osago_zone_partner(
    ngx_http_osago_main_conf_t *omcf, u_char *name, size_t len);
ngx_uint_t ngx_http_osago_zone_key_known(ngx_http_osago_main_conf_t *omcf,
    u_char *digest);
void ngx_http_osago_zone_key_learn(ngx_http_osago_main_conf_t *omcf,
    u_char *digest, ngx_uint_t names_partner);
ngx_int_t ngx_http_osago_zone_local_gcra(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_shm_partner_t *sp, ngx_uint_t rate_milli, ngx_uint_t burst,
    uint64_t *remaining, uint64_t *retry_us, uint64_t *reset_us);

/* metrics */
void ngx_http_osago_metrics_decision(ngx_http_osago_main_conf_t *omcf,
    ngx_http_osago_shm_partner_t *sp, ngx_uint_t outcome);
void ngx_http_osago_metrics_intake(ngx_http_osago_main_conf_t *omcf,
    ngx_uint_t kind, ngx_uint_t reason);
void ngx_http_osago_metrics_intake_parse(ngx_http_osago_main_conf_t *omcf,
    ngx_uint_t usec);
typedef enum {
    NGX_HTTP_OSAGO_POLL_READ = 0,       /* a read of the read model */
    NGX_HTTP_OSAGO_POLL_AT_ONCE,        /* answered without parking */
    NGX_HTTP_OSAGO_POLL_PARKED,
    NGX_HTTP_OSAGO_POLL_UNPARKED,       /* for whatever reason */
    NGX_HTTP_OSAGO_POLL_WOKEN,          /* answered by a change; usec */
    NGX_HTTP_OSAGO_POLL_TIMED_OUT,
    NGX_HTTP_OSAGO_POLL_ID_HELD,        /* a worker began to hold an id's node */
    NGX_HTTP_OSAGO_POLL_ID_FREED
} ngx_http_osago_poll_event_e;

void ngx_http_osago_metrics_poll(ngx_http_osago_main_conf_t *omcf,
    ngx_uint_t event, ngx_uint_t usec);
void ngx_http_osago_metrics_poll_slot(ngx_http_osago_main_conf_t *omcf);
void ngx_http_osago_metrics_poll_subscriber(void *data, ngx_uint_t up);
void ngx_http_osago_metrics_redis_rtt(void *data, ngx_uint_t usec);
void ngx_http_osago_metrics_redis_state(void *data, ngx_uint_t up);
void ngx_http_osago_metrics_redis_error(void *data, ngx_uint_t kind);
char *ngx_http_osago_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

/* problem+json responses (RFC 9457) */
typedef struct {
    ngx_uint_t                       status;
    ngx_str_t                        type;
    ngx_str_t                        title;
    ngx_str_t                        detail;
    ngx_str_t                        pointer;
} ngx_http_osago_problem_t;

ngx_int_t ngx_http_osago_problem_send(ngx_http_request_t *r,
    ngx_http_osago_problem_t *problem);
ngx_int_t ngx_http_osago_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *content_type, ngx_buf_t *b);
ngx_int_t ngx_http_osago_add_header(ngx_http_request_t *r, const char *name,
    ngx_str_t *value);
ngx_int_t ngx_http_osago_add_header_uint(ngx_http_request_t *r,
    const char *name, ngx_uint_t n);
u_char *ngx_http_osago_json_escape(u_char *dst, u_char *src, size_t size);
size_t ngx_http_osago_json_escaped_len(u_char *src, size_t size);


#endif /* _NGX_HTTP_OSAGO_MODULE_H_INCLUDED_ */
