/*
 * Asynchronous Redis for nginx workers (see ngx_http_osago_redis.h).
 *
 * The hiredis socket is wrapped in an ngx_connection_t whose read and write
 * events call into hiredis.  Both directions are registered level-triggered:
 * hiredis reads at most 16 KB per call, and with edge-triggered epoll a
 * larger reply would never be read to the end.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_http.h>

#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <hiredis/async.h>

#include "ngx_http_osago_redis.h"


#define NGX_HTTP_OSAGO_REDIS_BACKOFF_MIN  50
#define NGX_HTTP_OSAGO_REDIS_BACKOFF_MAX  1000
#define NGX_HTTP_OSAGO_REDIS_MAX_ARGS     32

/*
 * TCP keepalive: a Redis host that vanished (crash, a moved address, a NAT
 * that forgot the flow) is found within idle + interval * count seconds.
 * The subscriber only ever reads, so nothing else would tell it.
 */
#define NGX_HTTP_OSAGO_REDIS_KEEPIDLE     10
#define NGX_HTTP_OSAGO_REDIS_KEEPINTVL    5
#define NGX_HTTP_OSAGO_REDIS_KEEPCNT      3


typedef enum {
    NGX_HTTP_OSAGO_REDIS_DISCONNECTED = 0,
    NGX_HTTP_OSAGO_REDIS_CONNECTING,    /* TCP connect or handshake */
    NGX_HTTP_OSAGO_REDIS_READY
} ngx_http_osago_redis_state_e;


struct ngx_http_osago_redis_s {
    ngx_http_osago_redis_conf_t     *conf;
    ngx_http_osago_redis_observer_t  observer;
    ngx_log_t                       *log;

    redisAsyncContext               *ac;
    ngx_connection_t                *conn;
    ngx_uint_t                       state;
    ngx_uint_t                       handshake_pending;
    unsigned                         tcp_connected:1;
    unsigned                         in_handshake:1;
    unsigned                         in_write:1;
    unsigned                         ever_failed:1;
    unsigned                         exiting:1;

    /* a subscriber connection: no commands but the handshake's */
    ngx_http_osago_redis_subscription_t  *sub;

    ngx_msec_t                       backoff;
    ngx_event_t                      reconnect_ev;
    ngx_event_t                      connect_timer;
    ngx_event_t                      command_timer;

    /* commands sent and not yet answered, oldest first */
    ngx_queue_t                      in_flight;
    uint64_t                         last_reply_us;
};


struct ngx_http_osago_redis_cmd_s {
    ngx_queue_t                      queue;
    ngx_http_osago_redis_t          *redis;
    ngx_http_osago_redis_handler_pt  handler;
    void                            *data;

    ngx_msec_t                       deadline;
    uint64_t                         sent_us;

    /* kept to resend as EVAL should Redis have lost the script */
    ngx_http_osago_redis_script_t   *script;
    int                              nkeys;
    int                              argc;
    const char                     **argv;
    size_t                          *argvlen;

    unsigned                         in_flight:1;
    unsigned                         answered:1;
};


static void ngx_http_osago_redis_connect(ngx_http_osago_redis_t *redis);
static void ngx_http_osago_redis_drop(ngx_http_osago_redis_t *redis,
    const char *reason);
static void ngx_http_osago_redis_schedule_reconnect(
    ngx_http_osago_redis_t *redis);
static void ngx_http_osago_redis_release_conn(ngx_http_osago_redis_t *redis);
static void ngx_http_osago_redis_set_ready(ngx_http_osago_redis_t *redis);
static void ngx_http_osago_redis_shorten_deadlines(
    ngx_http_osago_redis_t *redis);
static void ngx_http_osago_redis_keepalive(ngx_http_osago_redis_t *redis,
    ngx_socket_t fd);
static void ngx_http_osago_redis_subscribe_channel(
    ngx_http_osago_redis_t *redis);
static ngx_uint_t ngx_http_osago_redis_accepts(ngx_http_osago_redis_t *redis);
static ngx_http_osago_redis_cmd_t *ngx_http_osago_redis_send(
    ngx_http_osago_redis_t *redis, ngx_http_osago_redis_cmd_t *cmd,
    int argc, const char **argv, const size_t *argvlen);
static void ngx_http_osago_redis_track(ngx_http_osago_redis_t *redis,
    ngx_http_osago_redis_cmd_t *cmd);


static uint64_t
ngx_http_osago_redis_now_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


/* configuration */


char *
ngx_http_osago_redis_set_server(ngx_conf_t *cf,
    ngx_http_osago_redis_conf_t *rcf, ngx_str_t *value)
{
    size_t     len;
    ngx_url_t  u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *value;
    u.default_port = 6379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in osago_redis_server \"%V\"",
                               u.err, &u.url);
        }
        return NGX_CONF_ERROR;
    }

    if (u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "osago_redis_server \"%V\" has no address",
                           &u.url);
        return NGX_CONF_ERROR;
    }

    rcf->server = *value;
    rcf->addr = &u.addrs[0];

#if (NGX_HAVE_UNIX_DOMAIN)
    if (u.family == AF_UNIX) {
        struct sockaddr_un  *saun = (struct sockaddr_un *) u.addrs[0].sockaddr;

        ngx_cpystrn(rcf->host, (u_char *) saun->sun_path,
                    sizeof(rcf->host));
        rcf->port = 0;
        return NGX_CONF_OK;
    }
#endif

    /* hiredis resolves names synchronously: hand it the numeric address */
    len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, rcf->host,
                        NGX_SOCKADDR_STRLEN, 0);
    rcf->host[len] = '\0';
    rcf->port = ngx_inet_get_port(u.addrs[0].sockaddr);

    return NGX_CONF_OK;
}


ngx_http_osago_redis_script_t *
ngx_http_osago_redis_add_script(ngx_conf_t *cf,
    ngx_http_osago_redis_conf_t *rcf, char *name, char *body)
{
    u_char                          digest[SHA_DIGEST_LENGTH];
    ngx_http_osago_redis_script_t  *script, **slot;

    if (rcf->scripts == NULL) {
        rcf->scripts = ngx_array_create(cf->pool, 4, sizeof(void *));
        if (rcf->scripts == NULL) {
            return NULL;
        }
    }

    script = ngx_pcalloc(cf->pool, sizeof(ngx_http_osago_redis_script_t));
    if (script == NULL) {
        return NULL;
    }

    script->name.data = (u_char *) name;
    script->name.len = ngx_strlen(name);
    script->body.data = (u_char *) body;
    script->body.len = ngx_strlen(body);

    /* EVALSHA names a script by the SHA-1 of its text */
    SHA1(script->body.data, script->body.len, digest);
    ngx_hex_dump(script->sha1, digest, SHA_DIGEST_LENGTH);

    slot = ngx_array_push(rcf->scripts);
    if (slot == NULL) {
        return NULL;
    }

    *slot = script;

    return script;
}


/* hiredis event hooks */


static void
ngx_http_osago_redis_event(ngx_event_t *ev, ngx_int_t event, ngx_uint_t add)
{
    ngx_connection_t  *c = ev->data;

    if (add) {
        if (!ev->active
            && ngx_add_event(ev, event, NGX_LEVEL_EVENT) != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                          "osago redis: cannot add event");
        }
        return;
    }

    if (ev->active) {
        /* level: the other direction, if registered, stays level too */
        (void) ngx_del_event(ev, event, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_osago_redis_add_read(void *privdata)
{
    ngx_http_osago_redis_t  *redis = privdata;

    if (redis->conn) {
        ngx_http_osago_redis_event(redis->conn->read, NGX_READ_EVENT, 1);
    }
}


static void
ngx_http_osago_redis_del_read(void *privdata)
{
    ngx_http_osago_redis_t  *redis = privdata;

    if (redis->conn) {
        ngx_http_osago_redis_event(redis->conn->read, NGX_READ_EVENT, 0);
    }
}


/*
 * A connected socket almost always has room: rather than asking epoll
 * whether it is writable (two epoll_ctl calls and a loop iteration per
 * batch), flush once after the current batch of events, with every command
 * the batch queued.  Only a write that hiredis could not finish waits for
 * epoll.
 */
static void
ngx_http_osago_redis_add_write(void *privdata)
{
    ngx_http_osago_redis_t  *redis = privdata;
    ngx_event_t             *wev;

    if (redis->conn == NULL) {
        return;
    }

    wev = redis->conn->write;

    if (redis->tcp_connected && !redis->in_write) {
        if (!wev->active && !wev->posted) {
            ngx_post_event(wev, &ngx_posted_events);
        }
        return;
    }

    ngx_http_osago_redis_event(wev, NGX_WRITE_EVENT, 1);
}


static void
ngx_http_osago_redis_del_write(void *privdata)
{
    ngx_http_osago_redis_t  *redis = privdata;

    if (redis->conn == NULL) {
        return;
    }

    if (redis->conn->write->posted) {
        ngx_delete_posted_event(redis->conn->write);
    }

    ngx_http_osago_redis_event(redis->conn->write, NGX_WRITE_EVENT, 0);
}


static void
ngx_http_osago_redis_cleanup(void *privdata)
{
    ngx_http_osago_redis_release_conn(privdata);
}


static void
ngx_http_osago_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_osago_redis_t  *redis = c->data;

    /* may free the context and the connection: touch neither afterwards */
    redisAsyncHandleRead(redis->ac);
}


static void
ngx_http_osago_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_osago_redis_t  *redis = c->data;

    redis->in_write = 1;
    redisAsyncHandleWrite(redis->ac);
    redis->in_write = 0;
}


/*
 * hiredis closes the socket itself: the nginx connection only forgets it.
 * Safe to call more than once.
 */
static void
ngx_http_osago_redis_release_conn(ngx_http_osago_redis_t *redis)
{
    ngx_connection_t  *c = redis->conn;

    if (c == NULL) {
        return;
    }

    redis->conn = NULL;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    /*
     * freed first, as ngx_close_connection() does: the free clears the
     * fd's slot in cycle->files (poll, select); the -1 after it makes
     * stale events of this fd in the current epoll batch skipped
     */
    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}


/* connection life cycle */


static void
ngx_http_osago_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_uint_t               level;
    ngx_http_osago_redis_t  *redis = ac->data;

    if (redis == NULL || redis->ac != ac) {
        return;
    }

    if (status != REDIS_OK) {
        /* one error per outage; the retries every second are news to no one */
        level = (redis->backoff > NGX_HTTP_OSAGO_REDIS_BACKOFF_MIN * 2)
                ? NGX_LOG_INFO : NGX_LOG_ERR;

        ngx_log_error(level, redis->log, 0,
                      "osago redis: cannot connect to %V: %s",
                      &redis->conf->server, ac->errstr);

        /* hiredis frees the context when this callback returns */
        redis->ac = NULL;
        redis->state = NGX_HTTP_OSAGO_REDIS_DISCONNECTED;
        ngx_http_osago_redis_release_conn(redis);

        if (redis->connect_timer.timer_set) {
            ngx_del_timer(&redis->connect_timer);
        }

        if (redis->observer.error) {
            redis->observer.error(redis->observer.data,
                                  NGX_HTTP_OSAGO_REDIS_ERR_DISCONNECT);
        }

        ngx_http_osago_redis_schedule_reconnect(redis);
        return;
    }

    redis->tcp_connected = 1;

    if (redis->handshake_pending == 0) {
        ngx_http_osago_redis_set_ready(redis);
    }
}


static void
ngx_http_osago_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_http_osago_redis_t  *redis = ac->data;

    if (redis == NULL || redis->ac != ac) {
        return;     /* we dropped it ourselves, and already said so */
    }

    redis->ac = NULL;
    ngx_http_osago_redis_release_conn(redis);

    if (redis->exiting) {
        redis->state = NGX_HTTP_OSAGO_REDIS_DISCONNECTED;
        return;
    }

    ngx_log_error(NGX_LOG_ERR, redis->log, 0,
                  "osago redis: connection to %V lost: %s",
                  &redis->conf->server,
                  (status == REDIS_OK || ac->errstr == NULL)
                  ? "closed" : ac->errstr);

    if (redis->state == NGX_HTTP_OSAGO_REDIS_READY
        && redis->observer.state)
    {
        redis->observer.state(redis->observer.data, 0);
    }

    redis->state = NGX_HTTP_OSAGO_REDIS_DISCONNECTED;

    if (redis->observer.error) {
        redis->observer.error(redis->observer.data,
                              NGX_HTTP_OSAGO_REDIS_ERR_DISCONNECT);
    }

    ngx_http_osago_redis_schedule_reconnect(redis);
}


/*
 * Commands queued behind a connect were given its timeout (see _track).
 * Once it is made, none is allowed more than a command's: the deadlines stay
 * in the order of the queue, which the timeout handler relies on, and a
 * Redis that stalls right after the handshake costs what it always did.
 */
static void
ngx_http_osago_redis_shorten_deadlines(ngx_http_osago_redis_t *redis)
{
    ngx_msec_t                   limit;
    ngx_queue_t                 *q;
    ngx_http_osago_redis_cmd_t  *cmd;

    limit = ngx_current_msec + redis->conf->command_timeout;

    for (q = ngx_queue_head(&redis->in_flight);
         q != ngx_queue_sentinel(&redis->in_flight);
         q = ngx_queue_next(q))
    {
        cmd = ngx_queue_data(q, ngx_http_osago_redis_cmd_t, queue);

        if ((ngx_msec_int_t) (cmd->deadline - limit) > 0) {
            cmd->deadline = limit;
        }
    }

    if (!ngx_queue_empty(&redis->in_flight)) {
        cmd = ngx_queue_data(ngx_queue_head(&redis->in_flight),
                             ngx_http_osago_redis_cmd_t, queue);

        ngx_add_timer(&redis->command_timer,
                      (ngx_msec_int_t) (cmd->deadline - ngx_current_msec) > 0
                      ? cmd->deadline - ngx_current_msec : 0);
    }
}


static void
ngx_http_osago_redis_set_ready(ngx_http_osago_redis_t *redis)
{
    redis->state = NGX_HTTP_OSAGO_REDIS_READY;

    /*
     * The subscriber has no handshake: a Redis that accepts and then refuses
     * (maxclients, a password we lack) would otherwise have it reconnect
     * every 50 ms; its backoff ends with the subscription's confirmation.
     */
    if (redis->sub == NULL) {
        redis->backoff = NGX_HTTP_OSAGO_REDIS_BACKOFF_MIN;
    }

    if (redis->connect_timer.timer_set) {
        ngx_del_timer(&redis->connect_timer);
    }

    ngx_http_osago_redis_shorten_deadlines(redis);

    ngx_log_error(NGX_LOG_INFO, redis->log, 0,
                  "osago redis: connected to %V%s", &redis->conf->server,
                  redis->sub ? " (subscriber)" : "");

    /* a subscriber is up once Redis confirms the subscription, not before */
    if (redis->observer.state && redis->sub == NULL) {
        redis->observer.state(redis->observer.data, 1);
    }
}


/*
 * hiredis calls this for the subscription's confirmation and for every
 * message, and once with no reply when the connection goes.
 */
static void
ngx_http_osago_redis_on_message(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply                           *reply = r;
    redisReply                          **el;
    ngx_http_osago_redis_t               *redis = privdata;
    ngx_http_osago_redis_subscription_t  *sub = redis->sub;

    if (reply == NULL || redis->ac != ac
        || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
    {
        return;
    }

    el = reply->element;

    if (el[0]->type != REDIS_REPLY_STRING) {
        return;
    }

    if (el[0]->len == sizeof("message") - 1
        && ngx_strncmp(el[0]->str, "message", el[0]->len) == 0
        && el[2]->type == REDIS_REPLY_STRING)
    {
        sub->message(sub->data, (u_char *) el[2]->str, el[2]->len);
        return;
    }

    if (el[0]->len == sizeof("subscribe") - 1
        && ngx_strncmp(el[0]->str, "subscribe", el[0]->len) == 0)
    {
        ngx_log_error(NGX_LOG_INFO, redis->log, 0,
                      "osago redis: subscribed to \"%V\"", &sub->channel);
        redis->backoff = NGX_HTTP_OSAGO_REDIS_BACKOFF_MIN;

        if (redis->observer.state) {
            redis->observer.state(redis->observer.data, 1);
        }

        sub->subscribed(sub->data);
    }
}


static void
ngx_http_osago_redis_subscribe_channel(ngx_http_osago_redis_t *redis)
{
    size_t       len[2];
    const char  *argv[2];

    argv[0] = "SUBSCRIBE";
    len[0] = sizeof("SUBSCRIBE") - 1;
    argv[1] = (const char *) redis->sub->channel.data;
    len[1] = redis->sub->channel.len;

    if (redisAsyncCommandArgv(redis->ac, ngx_http_osago_redis_on_message,
                              redis, 2, argv, len)
        != REDIS_OK)
    {
        ngx_http_osago_redis_drop(redis, "cannot subscribe");
    }
}


static void
ngx_http_osago_redis_handshake_reply(void *data,
    ngx_http_osago_redis_status_e status, redisReply *reply)
{
    ngx_http_osago_redis_t  *redis = data;

    if (redis->state != NGX_HTTP_OSAGO_REDIS_CONNECTING) {
        return;     /* that connection is gone already */
    }

    if (status != NGX_HTTP_OSAGO_REDIS_REPLY) {
        ngx_http_osago_redis_drop(redis, "handshake got no answer");
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, redis->log, 0,
                      "osago redis: %V refused the handshake: %*s",
                      &redis->conf->server, (size_t) reply->len, reply->str);
        ngx_http_osago_redis_drop(redis, NULL);
        return;
    }

    if (--redis->handshake_pending == 0 && redis->tcp_connected) {
        ngx_http_osago_redis_set_ready(redis);
    }
}


static ngx_int_t
ngx_http_osago_redis_handshake(ngx_http_osago_redis_t *redis)
{
    u_char                          db[NGX_INT_T_LEN];
    size_t                          len[3];
    ngx_uint_t                      i;
    const char                     *argv[3];
    ngx_http_osago_redis_conf_t    *rcf = redis->conf;
    ngx_http_osago_redis_script_t **scripts;

    /*
     * Counted before sending: a reply cannot arrive before the socket is
     * read, which happens after this function returns.
     */
    /* channels are not per database, and a subscriber runs no scripts */
    redis->handshake_pending = (rcf->password.len ? 1 : 0)
                               + (redis->sub ? 0 : (rcf->database ? 1 : 0)
                                  + (rcf->scripts ? rcf->scripts->nelts : 0));

    if (rcf->password.len) {
        argv[0] = "AUTH";
        len[0] = 4;
        argv[1] = (const char *) rcf->password.data;
        len[1] = rcf->password.len;

        if (ngx_http_osago_redis_command(redis, 2, argv, len,
                ngx_http_osago_redis_handshake_reply, redis) == NULL)
        {
            return NGX_ERROR;
        }
    }

    if (redis->sub) {
        return NGX_OK;
    }

    if (rcf->database) {
        argv[0] = "SELECT";
        len[0] = 6;
        argv[1] = (const char *) db;
        len[1] = ngx_sprintf(db, "%ui", rcf->database) - db;

        if (ngx_http_osago_redis_command(redis, 2, argv, len,
                ngx_http_osago_redis_handshake_reply, redis) == NULL)
        {
            return NGX_ERROR;
        }
    }

    if (rcf->scripts == NULL) {
        return NGX_OK;
    }

    scripts = rcf->scripts->elts;

    for (i = 0; i < rcf->scripts->nelts; i++) {
        argv[0] = "SCRIPT";
        len[0] = 6;
        argv[1] = "LOAD";
        len[1] = 4;
        argv[2] = (const char *) scripts[i]->body.data;
        len[2] = scripts[i]->body.len;

        if (ngx_http_osago_redis_command(redis, 3, argv, len,
                ngx_http_osago_redis_handshake_reply, redis) == NULL)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_osago_redis_keepalive(ngx_http_osago_redis_t *redis, ngx_socket_t fd)
{
    int  on = 1, idle = NGX_HTTP_OSAGO_REDIS_KEEPIDLE,
         intvl = NGX_HTTP_OSAGO_REDIS_KEEPINTVL,
         cnt = NGX_HTTP_OSAGO_REDIS_KEEPCNT;

    /* without it the connection still works: said, not fatal */
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) == -1
        || setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle))
           == -1
        || setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl))
           == -1
        || setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) == -1)
    {
        ngx_log_error(NGX_LOG_WARN, redis->log, ngx_socket_errno,
                      "osago redis: cannot enable TCP keepalive to %V",
                      &redis->conf->server);
    }
}


static void
ngx_http_osago_redis_connect(ngx_http_osago_redis_t *redis)
{
    ngx_int_t                     rc;
    ngx_connection_t             *c;
    redisAsyncContext            *ac;
    ngx_http_osago_redis_conf_t  *rcf = redis->conf;

    if (rcf->port) {
        ac = redisAsyncConnect((const char *) rcf->host, rcf->port);

    } else {
        ac = redisAsyncConnectUnix((const char *) rcf->host);
    }

    if (ac == NULL) {
        ngx_log_error(NGX_LOG_ERR, redis->log, 0,
                      "osago redis: cannot allocate a connection");
        ngx_http_osago_redis_schedule_reconnect(redis);
        return;
    }

    if (ac->err) {
        ngx_log_error(NGX_LOG_ERR, redis->log, 0,
                      "osago redis: cannot connect to %V: %s",
                      &rcf->server, ac->errstr);
        redisAsyncFree(ac);
        ngx_http_osago_redis_schedule_reconnect(redis);
        return;
    }

    if (rcf->port) {
        ngx_http_osago_redis_keepalive(redis, ac->c.fd);
    }

    c = ngx_get_connection(ac->c.fd, redis->log);
    if (c == NULL) {
        /* worker_connections exhausted; hiredis still owns and closes fd */
        redisAsyncFree(ac);
        ngx_http_osago_redis_schedule_reconnect(redis);
        return;
    }

    c->data = redis;
    c->read->handler = ngx_http_osago_redis_read_handler;
    c->write->handler = ngx_http_osago_redis_write_handler;
    c->read->log = redis->log;
    c->write->log = redis->log;

    redis->ac = ac;
    redis->conn = c;
    redis->state = NGX_HTTP_OSAGO_REDIS_CONNECTING;
    redis->tcp_connected = 0;

    ac->data = redis;
    ac->ev.data = redis;
    ac->ev.addRead = ngx_http_osago_redis_add_read;
    ac->ev.delRead = ngx_http_osago_redis_del_read;
    ac->ev.addWrite = ngx_http_osago_redis_add_write;
    ac->ev.delWrite = ngx_http_osago_redis_del_write;
    ac->ev.cleanup = ngx_http_osago_redis_cleanup;

    redisAsyncSetConnectCallback(ac, ngx_http_osago_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, ngx_http_osago_redis_on_disconnect);

    ngx_add_timer(&redis->connect_timer, rcf->connect_timeout);

    /* queued now, written by hiredis as soon as the socket connects */
    redis->in_handshake = 1;
    rc = ngx_http_osago_redis_handshake(redis);
    redis->in_handshake = 0;

    if (rc != NGX_OK) {
        ngx_http_osago_redis_drop(redis, "cannot queue the handshake");
        return;
    }

    /*
     * SUBSCRIBE follows the handshake in the same first write, queued here
     * rather than once connected: a failure to queue it drops the context,
     * which must not happen inside hiredis's connect callback (hiredis goes
     * on using the context after that callback returns).
     */
    if (redis->sub) {
        ngx_http_osago_redis_subscribe_channel(redis);
    }
}


/*
 * Give up the current connection at once: every command still waiting is
 * answered DOWN, and a reconnect is scheduled.
 */
static void
ngx_http_osago_redis_drop(ngx_http_osago_redis_t *redis, const char *reason)
{
    redisAsyncContext  *ac = redis->ac;
    ngx_uint_t          was_ready;

    if (ac == NULL) {
        return;
    }

    if (reason) {
        ngx_log_error(NGX_LOG_ERR, redis->log, 0,
                      "osago redis: dropping the connection to %V: %s",
                      &redis->conf->server, reason);
    }

    was_ready = (redis->state == NGX_HTTP_OSAGO_REDIS_READY);

    /* our disconnect callback recognises a context we dropped ourselves */
    redis->ac = NULL;
    redis->state = NGX_HTTP_OSAGO_REDIS_DISCONNECTED;
    ngx_http_osago_redis_release_conn(redis);

    if (redis->connect_timer.timer_set) {
        ngx_del_timer(&redis->connect_timer);
    }

    /* deferred by hiredis when called from one of its callbacks */
    redisAsyncFree(ac);

    if (was_ready && redis->observer.state) {
        redis->observer.state(redis->observer.data, 0);
    }

    if (redis->observer.error) {
        redis->observer.error(redis->observer.data,
                              NGX_HTTP_OSAGO_REDIS_ERR_DISCONNECT);
    }

    ngx_http_osago_redis_schedule_reconnect(redis);
}


static void
ngx_http_osago_redis_schedule_reconnect(ngx_http_osago_redis_t *redis)
{
    if (redis->exiting || redis->reconnect_ev.timer_set) {
        return;
    }

    redis->ever_failed = 1;

    ngx_add_timer(&redis->reconnect_ev, redis->backoff);

    redis->backoff = ngx_min(redis->backoff * 2,
                             NGX_HTTP_OSAGO_REDIS_BACKOFF_MAX);
}


static void
ngx_http_osago_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_osago_redis_t  *redis = ev->data;

    if (redis->exiting || redis->ac) {
        return;
    }

    ngx_http_osago_redis_connect(redis);
}


static void
ngx_http_osago_redis_connect_timeout_handler(ngx_event_t *ev)
{
    ngx_http_osago_redis_t  *redis = ev->data;

    if (redis->state == NGX_HTTP_OSAGO_REDIS_CONNECTING) {
        ngx_http_osago_redis_drop(redis, "connect timed out");
    }
}


/*
 * Commands share one timeout and are sent in order, so the oldest one in
 * flight always expires first: one timer for all of them (those queued
 * behind a connect have its timeout, cut to a command's once it is made).
 */
static void
ngx_http_osago_redis_command_timeout_handler(ngx_event_t *ev)
{
    ngx_http_osago_redis_t      *redis = ev->data;
    ngx_queue_t                 *q;
    ngx_uint_t                   stalled;
    ngx_msec_int_t               left;
    ngx_http_osago_redis_cmd_t  *cmd;

    stalled = 0;

    while (!ngx_queue_empty(&redis->in_flight)) {
        q = ngx_queue_head(&redis->in_flight);
        cmd = ngx_queue_data(q, ngx_http_osago_redis_cmd_t, queue);

        left = (ngx_msec_int_t) (cmd->deadline - ngx_current_msec);
        if (left > 0) {
            ngx_add_timer(ev, (ngx_msec_t) left);
            break;
        }

        ngx_queue_remove(q);
        cmd->in_flight = 0;

        /* nothing at all came back since this command went out */
        if (redis->last_reply_us < cmd->sent_us) {
            stalled = 1;
        }

        if (redis->observer.error) {
            redis->observer.error(redis->observer.data,
                                  NGX_HTTP_OSAGO_REDIS_ERR_TIMEOUT);
        }

        if (!cmd->answered) {
            cmd->answered = 1;
            cmd->handler(cmd->data, NGX_HTTP_OSAGO_REDIS_TIMEOUT, NULL);
        }

        /* hiredis still holds the command: freed when it lets go */
    }

    if (stalled) {
        ngx_http_osago_redis_drop(redis, "no reply within the timeout");
    }
}


/* commands */


static void
ngx_http_osago_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply                  *reply = r;
    ngx_http_osago_redis_cmd_t  *cmd = privdata;
    ngx_http_osago_redis_t      *redis = cmd->redis;
    uint64_t                     now;

    if (cmd->in_flight) {
        ngx_queue_remove(&cmd->queue);
        cmd->in_flight = 0;

        /* nothing left to time out: a worker stopping need not wait */
        if (ngx_queue_empty(&redis->in_flight)
            && redis->command_timer.timer_set)
        {
            ngx_del_timer(&redis->command_timer);
        }
    }

    if (reply) {
        now = ngx_http_osago_redis_now_us();
        redis->last_reply_us = now;

        if (redis->observer.rtt) {
            redis->observer.rtt(redis->observer.data,
                                (ngx_uint_t) (now - cmd->sent_us));
        }
    }

    if (!cmd->answered
        && reply
        && reply->type == REDIS_REPLY_ERROR
        && cmd->script
        && reply->len >= 8
        && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0)
    {
        /* SCRIPT FLUSH or a failover: EVAL loads the script again */
        const char  *argv[NGX_HTTP_OSAGO_REDIS_MAX_ARGS];
        size_t       argvlen[NGX_HTTP_OSAGO_REDIS_MAX_ARGS];
        u_char       nkeys[NGX_INT_T_LEN];
        int          i;

        ngx_log_error(NGX_LOG_WARN, redis->log, 0,
                      "osago redis: script \"%V\" not loaded, sending it",
                      &cmd->script->name);

        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = (const char *) cmd->script->body.data;
        argvlen[1] = cmd->script->body.len;
        argv[2] = (const char *) nkeys;
        argvlen[2] = ngx_sprintf(nkeys, "%d", cmd->nkeys) - nkeys;

        for (i = 0; i < cmd->argc; i++) {
            argv[3 + i] = cmd->argv[i];
            argvlen[3 + i] = cmd->argvlen[i];
        }

        cmd->script = NULL;

        if (redisAsyncCommandArgv(ac, ngx_http_osago_redis_reply, cmd,
                                  3 + cmd->argc, argv, argvlen)
            == REDIS_OK)
        {
            /* timed like any command: a Redis that goes quiet now must
             * still answer the request within the timeout */
            ngx_http_osago_redis_track(redis, cmd);
            return;
        }

        reply = NULL;
    }

    if (!cmd->answered) {
        cmd->answered = 1;

        if (reply && reply->type == REDIS_REPLY_ERROR
            && redis->observer.error)
        {
            redis->observer.error(redis->observer.data,
                                  NGX_HTTP_OSAGO_REDIS_ERR_REPLY);
        }

        cmd->handler(cmd->data,
                     reply ? NGX_HTTP_OSAGO_REDIS_REPLY
                           : NGX_HTTP_OSAGO_REDIS_DOWN,
                     reply);
    }

    /*
     * The node was demoted to a replica: after a failover behind a moved
     * address (virtual IP, proxy) only a new connection reaches the primary.
     */
    if (reply
        && reply->type == REDIS_REPLY_ERROR
        && reply->len >= 8
        && ngx_strncmp(reply->str, "READONLY", 8) == 0
        && redis->ac == ac)
    {
        ngx_http_osago_redis_drop(redis, "the server is a read-only replica");
    }

    ngx_free(cmd);
}


static ngx_http_osago_redis_cmd_t *
ngx_http_osago_redis_send(ngx_http_osago_redis_t *redis,
    ngx_http_osago_redis_cmd_t *cmd, int argc, const char **argv,
    const size_t *argvlen)
{
    if (redisAsyncCommandArgv(redis->ac, ngx_http_osago_redis_reply, cmd,
                              argc, argv, argvlen)
        != REDIS_OK)
    {
        ngx_free(cmd);
        return NULL;
    }

    cmd->redis = redis;
    ngx_http_osago_redis_track(redis, cmd);

    return cmd;
}


/*
 * A command just written joins the in-flight queue, with its deadline.  One
 * written while the connection is being made waits for it: the connect
 * timeout bounds the connect and the handshake together, and a handshake
 * held to the command timeout instead dropped every connection slower
 * than that.
 */
static void
ngx_http_osago_redis_track(ngx_http_osago_redis_t *redis,
    ngx_http_osago_redis_cmd_t *cmd)
{
    ngx_msec_t  timeout;

    timeout = (redis->state == NGX_HTTP_OSAGO_REDIS_CONNECTING)
              ? redis->conf->connect_timeout : redis->conf->command_timeout;

    cmd->sent_us = ngx_http_osago_redis_now_us();
    cmd->deadline = ngx_current_msec + timeout;
    cmd->in_flight = 1;

    ngx_queue_insert_tail(&redis->in_flight, &cmd->queue);

    if (!redis->command_timer.timer_set) {
        ngx_add_timer(&redis->command_timer, timeout);
    }
}


/*
 * While the first connection of this worker is being made, commands queue
 * behind the handshake (a worker that just started should not fail its
 * first requests).  After a failure they are refused until the connection
 * is ready again: a Redis that accepts connections but does not answer
 * must not cost every request the full timeout.  The handshake itself is
 * always let through.
 */
static ngx_uint_t
ngx_http_osago_redis_accepts(ngx_http_osago_redis_t *redis)
{
    switch (redis->state) {

    case NGX_HTTP_OSAGO_REDIS_READY:
        return 1;

    case NGX_HTTP_OSAGO_REDIS_CONNECTING:
        return redis->in_handshake || !redis->ever_failed;

    default:
        return 0;
    }
}


ngx_http_osago_redis_cmd_t *
ngx_http_osago_redis_command(ngx_http_osago_redis_t *redis, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_osago_redis_handler_pt handler, void *data)
{
    ngx_http_osago_redis_cmd_t  *cmd;

    if (!ngx_http_osago_redis_accepts(redis)) {
        return NULL;
    }

    cmd = ngx_calloc(sizeof(ngx_http_osago_redis_cmd_t), redis->log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;

    return ngx_http_osago_redis_send(redis, cmd, argc, argv, argvlen);
}


ngx_http_osago_redis_cmd_t *
ngx_http_osago_redis_eval(ngx_http_osago_redis_t *redis,
    ngx_http_osago_redis_script_t *script, int nkeys, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_osago_redis_handler_pt handler, void *data)
{
    int                          i;
    u_char                      *p, nk[NGX_INT_T_LEN];
    size_t                       size, lens[NGX_HTTP_OSAGO_REDIS_MAX_ARGS];
    const char                  *args[NGX_HTTP_OSAGO_REDIS_MAX_ARGS];
    ngx_http_osago_redis_cmd_t  *cmd;

    if (!ngx_http_osago_redis_accepts(redis)
        || argc + 3 > NGX_HTTP_OSAGO_REDIS_MAX_ARGS)
    {
        return NULL;
    }

    /* one allocation: the command and a copy of its arguments */
    size = sizeof(ngx_http_osago_redis_cmd_t)
           + argc * (sizeof(char *) + sizeof(size_t));

    for (i = 0; i < argc; i++) {
        size += argvlen[i];
    }

    cmd = ngx_calloc(size, redis->log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->script = script;
    cmd->nkeys = nkeys;
    cmd->argc = argc;
    cmd->argv = (const char **) (cmd + 1);
    cmd->argvlen = (size_t *) (cmd->argv + argc);

    p = (u_char *) (cmd->argvlen + argc);

    for (i = 0; i < argc; i++) {
        cmd->argv[i] = (const char *) p;
        cmd->argvlen[i] = argvlen[i];
        p = ngx_cpymem(p, argv[i], argvlen[i]);
    }

    args[0] = "EVALSHA";
    lens[0] = 7;
    args[1] = (const char *) script->sha1;
    lens[1] = sizeof(script->sha1);
    args[2] = (const char *) nk;
    lens[2] = ngx_sprintf(nk, "%d", nkeys) - nk;

    for (i = 0; i < argc; i++) {
        args[3 + i] = cmd->argv[i];
        lens[3 + i] = argvlen[i];
    }

    return ngx_http_osago_redis_send(redis, cmd, argc + 3, args, lens);
}


void
ngx_http_osago_redis_cancel(ngx_http_osago_redis_cmd_t *cmd)
{
    /* the reply, when it comes, frees the command and calls nobody */
    cmd->answered = 1;
}


ngx_uint_t
ngx_http_osago_redis_is_up(ngx_http_osago_redis_t *redis)
{
    return redis->state == NGX_HTTP_OSAGO_REDIS_READY;
}


ngx_uint_t
ngx_http_osago_redis_takes_commands(ngx_http_osago_redis_t *redis)
{
    return ngx_http_osago_redis_accepts(redis);
}


/* per-worker instance */


static ngx_http_osago_redis_t *
ngx_http_osago_redis_init(ngx_http_osago_redis_conf_t *rcf,
    ngx_http_osago_redis_observer_t *observer,
    ngx_http_osago_redis_subscription_t *sub, ngx_log_t *log)
{
    ngx_http_osago_redis_t  *redis;

    redis = ngx_calloc(sizeof(ngx_http_osago_redis_t), log);
    if (redis == NULL) {
        return NULL;
    }

    redis->conf = rcf;
    redis->log = log;
    redis->sub = sub;
    redis->backoff = NGX_HTTP_OSAGO_REDIS_BACKOFF_MIN;

    if (observer) {
        redis->observer = *observer;
    }

    ngx_queue_init(&redis->in_flight);

    /*
     * The cached time is the master's, from before the fork: timers set
     * from it could expire at the first tick of a worker that took a while
     * to start.
     */
    ngx_time_update();

    /* cancelable: a gracefully exiting worker does not wait for these two */
    redis->reconnect_ev.handler = ngx_http_osago_redis_reconnect_handler;
    redis->reconnect_ev.data = redis;
    redis->reconnect_ev.log = log;
    redis->reconnect_ev.cancelable = 1;

    redis->connect_timer.handler = ngx_http_osago_redis_connect_timeout_handler;
    redis->connect_timer.data = redis;
    redis->connect_timer.log = log;
    redis->connect_timer.cancelable = 1;

    /*
     * Not cancelable: a worker shutting down gracefully waits for the
     * commands in flight (at most the command timeout), so requests parked
     * on them are answered, not cut.
     */
    redis->command_timer.handler = ngx_http_osago_redis_command_timeout_handler;
    redis->command_timer.data = redis;
    redis->command_timer.log = log;

    ngx_http_osago_redis_connect(redis);

    return redis;
}


ngx_http_osago_redis_t *
ngx_http_osago_redis_create(ngx_http_osago_redis_conf_t *rcf,
    ngx_http_osago_redis_observer_t *observer, ngx_log_t *log)
{
    return ngx_http_osago_redis_init(rcf, observer, NULL, log);
}


ngx_http_osago_redis_t *
ngx_http_osago_redis_subscribe(ngx_http_osago_redis_conf_t *rcf,
    ngx_http_osago_redis_subscription_t *sub,
    ngx_http_osago_redis_observer_t *observer, ngx_log_t *log)
{
    return ngx_http_osago_redis_init(rcf, observer, sub, log);
}


void
ngx_http_osago_redis_destroy(ngx_http_osago_redis_t *redis)
{
    redisAsyncContext  *ac;

    redis->exiting = 1;

    if (redis->reconnect_ev.timer_set) {
        ngx_del_timer(&redis->reconnect_ev);
    }

    if (redis->connect_timer.timer_set) {
        ngx_del_timer(&redis->connect_timer);
    }

    if (redis->command_timer.timer_set) {
        ngx_del_timer(&redis->command_timer);
    }

    ac = redis->ac;

    if (ac) {
        redis->ac = NULL;
        /* accepts nothing more: redisAsyncFree answers what is pending, and a handler of
         * those answers must not queue a command on the freed context */
        redis->state = NGX_HTTP_OSAGO_REDIS_DISCONNECTED;
        ngx_http_osago_redis_release_conn(redis);
        redisAsyncFree(ac);
    }

    ngx_free(redis);
}
