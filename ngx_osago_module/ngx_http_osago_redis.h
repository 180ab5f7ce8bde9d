/*
 * Asynchronous Redis for nginx workers: hiredis' async API driven by the
 * nginx event loop.
 *
 * One connection per worker process carries every command, pipelined; a
 * subscription (ngx_http_osago_redis_subscribe) has one of its own.
 * Connect and per-command timeouts run on nginx timers; a lost connection
 * is re-established with backoff; AUTH, SELECT and SCRIPT LOAD are replayed
 * on every (re)connect; EVALSHA falls back to EVAL on NOSCRIPT.
 *
 * A caller that goes away before its reply arrives cancels its command: the
 * command itself lives until hiredis is done with it, outside any request
 * pool, so a late reply finds nothing to call.
 */

#ifndef _NGX_HTTP_OSAGO_REDIS_H_INCLUDED_
#define _NGX_HTTP_OSAGO_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <hiredis/hiredis.h>


typedef struct ngx_http_osago_redis_s      ngx_http_osago_redis_t;
typedef struct ngx_http_osago_redis_cmd_s  ngx_http_osago_redis_cmd_t;


typedef enum {
    NGX_HTTP_OSAGO_REDIS_REPLY = 0,     /* reply holds Redis' answer */
    NGX_HTTP_OSAGO_REDIS_DOWN,          /* no connection, or it was lost */
    NGX_HTTP_OSAGO_REDIS_TIMEOUT        /* no answer within the timeout */
} ngx_http_osago_redis_status_e;

/* error kinds reported to the observer */
typedef enum {
    NGX_HTTP_OSAGO_REDIS_ERR_TIMEOUT = 0,
    NGX_HTTP_OSAGO_REDIS_ERR_DISCONNECT,
    NGX_HTTP_OSAGO_REDIS_ERR_REPLY,
    NGX_HTTP_OSAGO_REDIS_ERR_MAX
} ngx_http_osago_redis_err_e;


/*
 * Called exactly once per command unless cancelled.  The reply is owned by
 * hiredis and valid only during the call.
 */
typedef void (*ngx_http_osago_redis_handler_pt)(void *data,
    ngx_http_osago_redis_status_e status, redisReply *reply);


typedef struct {
    ngx_str_t                        name;
    ngx_str_t                        body;
    u_char                           sha1[40];
} ngx_http_osago_redis_script_t;


/* Optional hooks for metrics; data is passed back as is. */
typedef struct {
    void                           (*rtt)(void *data, ngx_uint_t usec);
    void                           (*state)(void *data, ngx_uint_t up);
    void                           (*error)(void *data, ngx_uint_t kind);
    void                            *data;
} ngx_http_osago_redis_observer_t;


typedef struct {
    ngx_str_t                        server;      /* as configured */
    ngx_addr_t                      *addr;        /* resolved at conf time */
    u_char                           host[NGX_SOCKADDR_STRLEN + 1];
    int                              port;        /* 0 for a unix socket */

    ngx_str_t                        password;
    ngx_uint_t                       database;
    ngx_msec_t                       connect_timeout;
    ngx_msec_t                       command_timeout;

    ngx_array_t                     *scripts;     /* of *script_t */
} ngx_http_osago_redis_conf_t;


char *ngx_http_osago_redis_set_server(ngx_conf_t *cf,
    ngx_http_osago_redis_conf_t *rcf, ngx_str_t *value);
ngx_http_osago_redis_script_t *ngx_http_osago_redis_add_script(ngx_conf_t *cf,
    ngx_http_osago_redis_conf_t *rcf, char *name, char *body);

/*
 * A subscription has a connection of its own, in subscribe mode, re-made
 * and re-subscribed with the same backoff as the command connection.
 * subscribed() runs each time Redis confirms the subscription: whatever was
 * published while there was none is lost, so the caller re-checks what it
 * waits for.  message() gets each message's payload, valid during the call.
 */
typedef struct {
    ngx_str_t                        channel;
    void                           (*subscribed)(void *data);
    void                           (*message)(void *data, u_char *text,
                                              size_t len);
    void                            *data;
} ngx_http_osago_redis_subscription_t;


ngx_http_osago_redis_t *ngx_http_osago_redis_create(
    ngx_http_osago_redis_conf_t *rcf, ngx_http_osago_redis_observer_t *obs,
    ngx_log_t *log);
ngx_http_osago_redis_t *ngx_http_osago_redis_subscribe(
    ngx_http_osago_redis_conf_t *rcf, ngx_http_osago_redis_subscription_t *sub,
    ngx_http_osago_redis_observer_t *obs, ngx_log_t *log);
void ngx_http_osago_redis_destroy(ngx_http_osago_redis_t *redis);
ngx_uint_t ngx_http_osago_redis_is_up(ngx_http_osago_redis_t *redis);
/* whether a command queued now goes to Redis: up, or behind a first connect */
ngx_uint_t ngx_http_osago_redis_takes_commands(ngx_http_osago_redis_t *redis);

/*
 * Queue a command.  Returns the command handle (for cancelling), or NULL
 * when Redis is known to be unreachable right now: the caller decides what
 * to do at once, without waiting.
 */
ngx_http_osago_redis_cmd_t *ngx_http_osago_redis_command(
    ngx_http_osago_redis_t *redis, int argc, const char **argv,
    const size_t *argvlen, ngx_http_osago_redis_handler_pt handler,
    void *data);

/* EVALSHA script numkeys args...; argv holds keys then args */
ngx_http_osago_redis_cmd_t *ngx_http_osago_redis_eval(
    ngx_http_osago_redis_t *redis, ngx_http_osago_redis_script_t *script,
    int nkeys, int argc, const char **argv, const size_t *argvlen,
    ngx_http_osago_redis_handler_pt handler, void *data);

void ngx_http_osago_redis_cancel(ngx_http_osago_redis_cmd_t *cmd);


#endif /* _NGX_HTTP_OSAGO_REDIS_H_INCLUDED_ */
