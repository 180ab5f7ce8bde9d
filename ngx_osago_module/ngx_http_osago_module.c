/*
 * ngx_http_osago_module: directives, configuration, and the per-worker
 * start and stop of the Redis connection and the partner cache.
 */

#include "ngx_http_osago_module.h"
#include "ngx_http_osago_scripts.h"


#define NGX_HTTP_OSAGO_USER_LIMIT_PERIOD  60000     /* osago_user_limit N: per minute */


static ngx_int_t ngx_http_osago_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_osago_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_osago_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_osago_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_osago_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_osago_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_osago_init_process(ngx_cycle_t *cycle);
static void ngx_http_osago_exit_process(ngx_cycle_t *cycle);


static char *ngx_http_osago_redis_server(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_osago_fallback(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_osago_user_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_osago_at_least_one(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_osago_positive_msec(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_osago_positive_sec(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_osago_zone_size_check(ngx_conf_t *cf, void *post,
    void *data);


static ngx_conf_post_handler_pt  ngx_http_osago_at_least_one_p =
    ngx_http_osago_at_least_one;
static ngx_conf_post_handler_pt  ngx_http_osago_positive_msec_p =
    ngx_http_osago_positive_msec;
static ngx_conf_post_handler_pt  ngx_http_osago_positive_sec_p =
    ngx_http_osago_positive_sec;
static ngx_conf_post_handler_pt  ngx_http_osago_zone_size_p =
    ngx_http_osago_zone_size_check;

static ngx_conf_num_bounds_t  ngx_http_osago_database_bounds = {
    ngx_conf_check_num_bounds, 0, 65535
};

static ngx_conf_num_bounds_t  ngx_http_osago_lookup_rate_bounds = {
    ngx_conf_check_num_bounds, 0, 1000000
};


static ngx_command_t  ngx_http_osago_commands[] = {

    { ngx_string("osago_redis_server"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_osago_redis_server,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("osago_redis_password"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, redis.password),
      NULL },

    { ngx_string("osago_redis_database"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, redis.database),
      &ngx_http_osago_database_bounds },

    { ngx_string("osago_redis_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, redis.connect_timeout),
      &ngx_http_osago_positive_msec_p },

    { ngx_string("osago_redis_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, redis.command_timeout),
      &ngx_http_osago_positive_msec_p },

    { ngx_string("osago_partner_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, partner_cache_ttl),
      NULL },

    { ngx_string("osago_partner_cache_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, partner_cache_size),
      &ngx_http_osago_at_least_one_p },

    { ngx_string("osago_partner_lookup_rate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, partner_lookup_rate),
      &ngx_http_osago_lookup_rate_bounds },

    { ngx_string("osago_zone_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, zone_size),
      &ngx_http_osago_zone_size_p },

    { ngx_string("osago_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, limit),
      NULL },

    { ngx_string("osago_api_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, api_key),
      NULL },

    { ngx_string("osago_limit_fallback"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_osago_fallback,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, fallback),
      NULL },

    { ngx_string("osago_limit_edges"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, edges),
      &ngx_http_osago_at_least_one_p },

    { ngx_string("osago_app_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_osago_main_conf_t, app_ttl),
      &ngx_http_osago_positive_sec_p },

    { ngx_string("osago_intake"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_osago_intake,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("osago_intake_max_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, intake_max_body),
      NULL },

    { ngx_string("osago_intake_max_depth"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, intake_max_depth),
      &ngx_http_osago_at_least_one_p },

    { ngx_string("osago_idempotency_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, idempotency_ttl),
      &ngx_http_osago_positive_sec_p },

    { ngx_string("osago_user_id"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, user_id),
      NULL },

    { ngx_string("osago_user_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_osago_user_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("osago_poll"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_osago_poll,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("osago_poll_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_osago_loc_conf_t, poll_timeout),
      &ngx_http_osago_positive_msec_p },

    { ngx_string("osago_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_osago_metrics,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_osago_module_ctx = {
    ngx_http_osago_preconfiguration,       /* preconfiguration */
    ngx_http_osago_postconfiguration,      /* postconfiguration */

    ngx_http_osago_create_main_conf,       /* create main configuration */
    ngx_http_osago_init_main_conf,         /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_osago_create_loc_conf,        /* create location configuration */
    ngx_http_osago_merge_loc_conf          /* merge location configuration */
};


ngx_module_t  ngx_http_osago_module = {
    NGX_MODULE_V1,
    &ngx_http_osago_module_ctx,            /* module context */
    ngx_http_osago_commands,               /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_osago_init_process,           /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_osago_exit_process,           /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_osago_fallback_names[] = {
    ngx_string("local"),                   /* NGX_HTTP_OSAGO_FALLBACK_LOCAL */
    ngx_string("open"),                    /* NGX_HTTP_OSAGO_FALLBACK_OPEN */
    ngx_string("closed")                   /* NGX_HTTP_OSAGO_FALLBACK_CLOSED */
};


static ngx_int_t
ngx_http_osago_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_osago_limit_add_variables(cf);
}


static ngx_int_t
ngx_http_osago_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_osago_main_conf_t  *omcf;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_osago_module);

    if (!omcf->used) {
        return NGX_OK;
    }

    omcf->gcra = ngx_http_osago_redis_add_script(cf, &omcf->redis, "gcra",
                                                 NGX_HTTP_OSAGO_SCRIPT_GCRA);
    if (omcf->gcra == NULL) {
        return NGX_ERROR;
    }

    if (omcf->intake_used) {
        omcf->intake = ngx_http_osago_redis_add_script(cf, &omcf->redis,
                                        "intake", NGX_HTTP_OSAGO_SCRIPT_INTAKE);
        if (omcf->intake == NULL) {
            return NGX_ERROR;
        }
    }

    if (ngx_http_osago_zone_add(cf, omcf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_osago_limit_init(cf);
}


static void *
ngx_http_osago_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_osago_main_conf_t  *omcf;

    omcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_osago_main_conf_t));
    if (omcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     omcf->redis.server = { 0, NULL };
     *     omcf->redis.password = { 0, NULL };
     *     omcf->redis.scripts = NULL;
     *     omcf->used = 0;
     */

    omcf->redis.database = NGX_CONF_UNSET_UINT;
    omcf->redis.connect_timeout = NGX_CONF_UNSET_MSEC;
    omcf->redis.command_timeout = NGX_CONF_UNSET_MSEC;
    omcf->partner_cache_ttl = NGX_CONF_UNSET_MSEC;
    omcf->partner_cache_size = NGX_CONF_UNSET_UINT;
    omcf->partner_lookup_rate = NGX_CONF_UNSET_UINT;
    omcf->zone_size = NGX_CONF_UNSET_SIZE;
    omcf->app_ttl = NGX_CONF_UNSET;

    return omcf;
}


static char *
ngx_http_osago_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_osago_main_conf_t  *omcf = conf;

    ngx_str_t  default_server = ngx_string("127.0.0.1:6380");

    if (omcf->redis.server.len == 0
        && ngx_http_osago_redis_set_server(cf, &omcf->redis, &default_server)
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_uint_value(omcf->redis.database, 0);
    ngx_conf_init_msec_value(omcf->redis.connect_timeout, 1000);
    ngx_conf_init_msec_value(omcf->redis.command_timeout, 200);
    ngx_conf_init_msec_value(omcf->partner_cache_ttl, 5000);
    ngx_conf_init_uint_value(omcf->partner_cache_size, 10000);
    ngx_conf_init_uint_value(omcf->partner_lookup_rate, 1000);
    ngx_conf_init_size_value(omcf->zone_size, 1024 * 1024);
    ngx_conf_init_value(omcf->app_ttl, 7 * 86400);

    return NGX_CONF_OK;
}


static void *
ngx_http_osago_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_osago_loc_conf_t  *olcf;

    olcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_osago_loc_conf_t));
    if (olcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     olcf->api_key = NULL;
     *     olcf->user_id = NULL;
     *     olcf->intake = 0;
     */

    olcf->limit = NGX_CONF_UNSET;
    olcf->fallback = NGX_CONF_UNSET_UINT;
    olcf->edges = NGX_CONF_UNSET_UINT;

    olcf->intake_max_body = NGX_CONF_UNSET_SIZE;
    olcf->intake_max_depth = NGX_CONF_UNSET_UINT;
    olcf->idempotency_ttl = NGX_CONF_UNSET;
    olcf->user_limit = NGX_CONF_UNSET_UINT;
    olcf->user_limit_period = NGX_CONF_UNSET_MSEC;
    olcf->poll_timeout = NGX_CONF_UNSET_MSEC;

    return olcf;
}


/*
 * A complex value inherited from the parent, or compiled from its default
 * once at the outermost level and shared by every location below.
 */
static char *
ngx_http_osago_merge_value(ngx_conf_t *cf, ngx_http_complex_value_t **conf,
    ngx_http_complex_value_t **prev, ngx_str_t *value)
{
    ngx_http_compile_complex_value_t  ccv;

    if (*conf == NULL) {
        *conf = *prev;
    }

    if (*conf) {
        return NGX_CONF_OK;
    }

    *conf = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (*conf == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = *conf;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    *prev = *conf;

    return NGX_CONF_OK;
}


static char *
ngx_http_osago_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_osago_loc_conf_t  *prev = parent;
    ngx_http_osago_loc_conf_t  *conf = child;

    ngx_http_osago_main_conf_t  *omcf;

    static ngx_str_t  default_key = ngx_string("$http_x_api_key");
    static ngx_str_t  default_user = ngx_string("$http_x_user_id");

    ngx_conf_merge_value(conf->limit, prev->limit, 0);
    ngx_conf_merge_uint_value(conf->fallback, prev->fallback,
                              NGX_HTTP_OSAGO_FALLBACK_LOCAL);
    ngx_conf_merge_uint_value(conf->edges, prev->edges, 1);

    ngx_conf_merge_size_value(conf->intake_max_body, prev->intake_max_body,
                              64 * 1024);
    ngx_conf_merge_uint_value(conf->intake_max_depth, prev->intake_max_depth,
                              8);
    ngx_conf_merge_value(conf->idempotency_ttl, prev->idempotency_ttl, 86400);
    ngx_conf_merge_uint_value(conf->user_limit, prev->user_limit, 1);
    ngx_conf_merge_msec_value(conf->user_limit_period,
                              prev->user_limit_period,
                              NGX_HTTP_OSAGO_USER_LIMIT_PERIOD);
    ngx_conf_merge_msec_value(conf->poll_timeout, prev->poll_timeout, 30000);

    if (ngx_http_osago_merge_value(cf, &conf->api_key, &prev->api_key,
                                   &default_key)
        != NGX_CONF_OK
        || ngx_http_osago_merge_value(cf, &conf->user_id, &prev->user_id,
                                      &default_user)
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (conf->intake && !conf->limit) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"osago_intake\" needs \"osago_limit on\" in "
                           "the same location: applications belong to the "
                           "partner it identifies");
        return NGX_CONF_ERROR;
    }

    if (conf->poll && !conf->limit) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"osago_poll\" needs \"osago_limit on\" in "
                           "the same location: an application is shown "
                           "only to the partner it identifies");
        return NGX_CONF_ERROR;
    }

    if (conf->limit) {
        omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_osago_module);
        omcf->used = 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_osago_redis_server(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_osago_main_conf_t  *omcf = conf;

    ngx_str_t  *value = cf->args->elts;

    if (omcf->redis.server.len) {
        return "is duplicate";
    }

    return ngx_http_osago_redis_set_server(cf, &omcf->redis, &value[1]);
}


static char *
ngx_http_osago_fallback(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_osago_loc_conf_t  *olcf = conf;

    ngx_str_t   *value = cf->args->elts;
    ngx_uint_t   i;

    if (olcf->fallback != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    for (i = 0; i < sizeof(ngx_http_osago_fallback_names)
                    / sizeof(ngx_str_t); i++)
    {
        if (value[1].len == ngx_http_osago_fallback_names[i].len
            && ngx_strncmp(value[1].data, ngx_http_osago_fallback_names[i].data,
                           value[1].len) == 0)
        {
            olcf->fallback = i;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive, "
                       "it must be \"local\", \"open\" or \"closed\"",
                       &value[1], &cmd->name);

    return NGX_CONF_ERROR;
}


/* osago_user_limit off | N [period] */
static char *
ngx_http_osago_user_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_osago_loc_conf_t  *olcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value = cf->args->elts;

    if (olcf->user_limit != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        olcf->user_limit = 0;
        return NGX_CONF_OK;
    }

    n = ngx_atoi(value[1].data, value[1].len);
    if (n <= 0) {
        return "takes \"off\" or a positive number of applications";
    }

    olcf->user_limit = n;

    /* a lower level's limit replaces an outer one whole: its period too */
    olcf->user_limit_period = NGX_HTTP_OSAGO_USER_LIMIT_PERIOD;

    if (cf->args->nelts == 3) {
        olcf->user_limit_period = ngx_parse_time(&value[2], 0);
        if (olcf->user_limit_period == (ngx_msec_t) NGX_ERROR
            || olcf->user_limit_period == 0)
        {
            return "has an invalid period";
        }
    }

    return NGX_CONF_OK;
}


/* the strings below follow the directive name in nginx's message */

static char *
ngx_http_osago_at_least_one(ngx_conf_t *cf, void *post, void *data)
{
    ngx_uint_t  *np = data;

    if (*np < 1) {
        return "must be at least 1";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_osago_positive_msec(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *mp = data;

    if (*mp == 0) {
        return "must be greater than 0";
    }

    return NGX_CONF_OK;
}


/* a TTL of 0 would have Redis drop the key as it is written */
static char *
ngx_http_osago_positive_sec(ngx_conf_t *cf, void *post, void *data)
{
    time_t  *tp = data;

    if (*tp == 0) {
        return "must be greater than 0";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_osago_zone_size_check(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    if (*sp < 8 * ngx_pagesize) {
        return "is too small, it must be at least 32k";
    }

    return NGX_CONF_OK;
}


static ngx_http_osago_main_conf_t *
ngx_http_osago_cycle_main_conf(ngx_cycle_t *cycle)
{
    ngx_http_osago_main_conf_t  *omcf;

    /* cache manager and loader processes run no requests */
    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NULL;
    }

    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NULL;    /* no http block */
    }

    omcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_osago_module);

    return (omcf && omcf->used) ? omcf : NULL;
}


/* the command connection's state: a metric, and parked polls to re-check */
static void
ngx_http_osago_redis_state(void *data, ngx_uint_t up)
{
    ngx_http_osago_metrics_redis_state(data, up);

    if (up) {
        ngx_http_osago_poll_redis_up(data);
    }
}


static ngx_int_t
ngx_http_osago_init_process(ngx_cycle_t *cycle)
{
    ngx_http_osago_main_conf_t       *omcf;
    ngx_http_osago_redis_observer_t   observer;

    omcf = ngx_http_osago_cycle_main_conf(cycle);
    if (omcf == NULL) {
        return NGX_OK;
    }

    omcf->partners = ngx_http_osago_partner_cache_create(
                                     omcf->partner_cache_size, cycle->log);
    if (omcf->partners == NULL) {
        return NGX_ERROR;
    }

    observer.rtt = ngx_http_osago_metrics_redis_rtt;
    observer.state = ngx_http_osago_redis_state;
    observer.error = ngx_http_osago_metrics_redis_error;
    observer.data = omcf;

    ngx_http_osago_metrics_redis_state(omcf, 0);
    ngx_http_osago_metrics_poll_slot(omcf);

    ngx_http_osago_limit_init_worker(omcf, cycle->log);
    ngx_http_osago_intake_init_worker(omcf);

    omcf->redis_conn = ngx_http_osago_redis_create(&omcf->redis, &observer,
                                                   cycle->log);
    if (omcf->redis_conn == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_osago_poll_init_worker(omcf, cycle->log) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_osago_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_osago_main_conf_t  *omcf;

    omcf = ngx_http_osago_cycle_main_conf(cycle);
    if (omcf == NULL) {
        return;
    }

    ngx_http_osago_poll_exit_worker(omcf);

    if (omcf->redis_conn) {
        ngx_http_osago_redis_destroy(omcf->redis_conn);
        omcf->redis_conn = NULL;
    }

    ngx_http_osago_limit_exit_worker(omcf);

    ngx_http_osago_metrics_redis_state(omcf, 0);

    if (omcf->partners) {
        ngx_http_osago_partner_cache_destroy(omcf->partners);
        omcf->partners = NULL;
    }
}
