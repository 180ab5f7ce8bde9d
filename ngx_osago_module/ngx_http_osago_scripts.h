/*
 * Lua scripts the edge runs in Redis (loaded with SCRIPT LOAD on every
 * connect, called with EVALSHA).  Kept in one place so the Redis side of
 * the edge can be read at a glance.
 */

#ifndef _NGX_HTTP_OSAGO_SCRIPTS_H_INCLUDED_
#define _NGX_HTTP_OSAGO_SCRIPTS_H_INCLUDED_


/*
 * GCRA for one partner, in one round trip, for a batch of requests: a
 * worker sends one call per partner per event-loop tick with the number of
 * requests that arrived, so a flood costs Redis one call per tick, not one
 * per request.
 *
 * KEYS[1]  osago:partner:{sha256(api key)}
 * ARGV[1]  "1": read the contract from KEYS[1] (the edge's copy is stale)
 * ARGV[2]  rate in requests per 1000 s (when ARGV[1] is "0")
 * ARGV[3]  burst                        (when ARGV[1] is "0")
 * ARGV[4]  partner name                 (when ARGV[1] is "0")
 * ARGV[5]  limiter key prefix, "osago:rl:partner:"
 * ARGV[6]  number of requests to admit
 *
 * Returns {admitted, remaining, retry_after_us, reset_us[, rate_milli,
 * burst, name, pool]}: the first `admitted` requests pass, the others are
 * limited; `remaining` and the times are as after the last admission.
 * A negative first element means -1 unknown key, -2 disabled, -3 contract
 * unusable (rate, burst or name out of osagoctl's rules; names must be safe
 * in Redis keys and metric labels; tonumber takes "nan", "inf" and "1e16",
 * which Redis would turn into integers no division survives).  The
 * contract is returned whenever it was read and usable enough to name.
 *
 * Time is Redis' own, so every edge shares one clock.  The arrival time is
 * stored as an integer string: Lua would print a large double in exponent
 * form and lose microseconds.  The rate limiter key is derived from the
 * partner's name, so this script wants a single Redis (or a Sentinel
 * primary), not Redis Cluster.
 */
#define NGX_HTTP_OSAGO_SCRIPT_GCRA                                            \
"local fetch = ARGV[1] == '1'\n"                                              \
"local rate, burst, name, pool\n"                                             \
"if fetch then\n"                                                             \
"  local h = redis.call('HMGET', KEYS[1], 'name', 'rate', 'burst', 'pool',\n" \
"                       'enabled')\n"                                         \
"  if not h[1] then return {-1} end\n"                                        \
"  name = h[1]\n"                                                             \
"  pool = h[4] or 'default'\n"                                                \
"  rate = tonumber(h[2])\n"                                                   \
"  burst = tonumber(h[3])\n"                                                  \
"  if #name > 64 or not name:find('^[%w_.-]+$') then return {-3} end\n"       \
"  if #pool > 64 or not pool:find('^[%w_.-]*$') then pool = '' end\n"         \
"  if h[5] ~= '1' then return {-2, 0, 0, 0, 0, 0, name, pool} end\n"          \
"  if not rate or rate ~= rate or rate <= 0 or rate > 1000000\n"             \
"     or not burst or burst ~= burst or burst < 1 or burst > 1000000 then\n"  \
"    return {-3, 0, 0, 0, 0, 0, name, pool}\n"                                \
"  end\n"                                                                     \
"  rate = math.floor(rate * 1000 + 0.5)\n"                                    \
"  burst = math.floor(burst)\n"                                               \
"  if rate < 1 then return {-3, 0, 0, 0, 0, 0, name, pool} end\n"             \
"else\n"                                                                      \
"  rate = tonumber(ARGV[2])\n"                                                \
"  burst = tonumber(ARGV[3])\n"                                               \
"  name = ARGV[4]\n"                                                          \
"end\n"                                                                       \
"local n = tonumber(ARGV[6]) or 1\n"                                          \
"local key = ARGV[5] .. name\n"                                               \
"local t = redis.call('TIME')\n"                                              \
"local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"                     \
"local interval = 1000000000 / rate\n"                                        \
"local tolerance = interval * burst\n"                                        \
"local tat = tonumber(redis.call('GET', key) or 0)\n"                         \
"if tat < now then tat = now end\n"                                           \
"local admitted = math.floor((now + tolerance - tat) / interval + 1e-6)\n"    \
"if admitted > n then admitted = n end\n"                                     \
"if admitted < 0 then admitted = 0 end\n"                                     \
"if admitted > 0 then\n"                                                      \
"  tat = tat + admitted * interval\n"                                         \
"  redis.call('SET', key, string.format('%.0f', tat), 'PX',\n"                \
"             math.ceil((tat - now) / 1000) + 1)\n"                           \
"end\n"                                                                       \
"local remaining = math.floor((now + tolerance - tat) / interval + 1e-6)\n"   \
"if remaining < 0 then remaining = 0 end\n"                                   \
"local retry = tat + interval - tolerance - now\n"                            \
"if retry < 0 then retry = 0 end\n"                                           \
"local res = {admitted, remaining, retry, tat - now}\n"                       \
"if fetch then\n"                                                             \
"  res[5] = rate; res[6] = burst; res[7] = name; res[8] = pool\n"             \
"end\n"                                                                       \
"return res\n"


/*
 * Accepting an application, atomically: the idempotency check, the per-user
 * limit, the read model and the intake stream entry happen together or not
 * at all, so a client retrying after any failure gets exactly one
 * application.
 *
 * KEYS[1]  osago:idem:{partner}:{idempotency key}
 * KEYS[2]  osago:app:{id}
 * KEYS[3]  osago:rl:user:{partner}:{sha256(user id)}, or "" for no user
 * KEYS[4]  osago:intake
 * ARGV[1]  payload fingerprint (sha256 hex of the canonical payload)
 * ARGV[2]  application id          ARGV[3]  partner
 * ARGV[4]  canonical payload       ARGV[5]  traceparent
 * ARGV[6]  updated_at (ms)         ARGV[7]  read model document
 * ARGV[8]  response body           ARGV[9]  idempotency TTL (s)
 * ARGV[10] read model TTL (s)      ARGV[11] user limit: applications
 * ARGV[12] user limit: period (ms)
 * ARGV[13] "1": replay only (the body is valid only as an earlier day's)
 *
 * Returns {0} accepted; {1, status, body, app_id} a replay; {2} the key was
 * used with another payload; {3, ms} the user is over the limit for ms more;
 * {4} replay only, and the key is unknown.
 */
#define NGX_HTTP_OSAGO_SCRIPT_INTAKE                                          \
"local seen = redis.call('HMGET', KEYS[1], 'fingerprint', 'status', 'body',\n"\
"                        'app_id')\n"                                         \
"if seen[1] then\n"                                                           \
"  if seen[1] == ARGV[1] then return {1, seen[2], seen[3], seen[4]} end\n"    \
"  return {2}\n"                                                              \
"end\n"                                                                       \
"if ARGV[13] == '1' then return {4} end\n"                                    \
"if KEYS[3] ~= '' then\n"                                                     \
"  local used = tonumber(redis.call('GET', KEYS[3]) or 0)\n"                  \
"  if used >= tonumber(ARGV[11]) then\n"                                      \
"    return {3, redis.call('PTTL', KEYS[3])}\n"                               \
"  end\n"                                                                     \
"  if redis.call('INCR', KEYS[3]) == 1 then\n"                                \
"    redis.call('PEXPIRE', KEYS[3], ARGV[12])\n"                              \
"  end\n"                                                                     \
"end\n"                                                                       \
"redis.call('HSET', KEYS[2], 'doc', ARGV[7], 'owner', ARGV[3],\n"             \
"           'updated_at', ARGV[6])\n"                                         \
"redis.call('EXPIRE', KEYS[2], ARGV[10])\n"                                   \
"redis.call('XADD', KEYS[4], '*', 'app_id', ARGV[2], 'partner', ARGV[3],\n"   \
"           'payload', ARGV[4], 'trace', ARGV[5])\n"                          \
"redis.call('HSET', KEYS[1], 'app_id', ARGV[2], 'fingerprint', ARGV[1],\n"    \
"           'status', '202', 'body', ARGV[8])\n"                              \
"redis.call('EXPIRE', KEYS[1], ARGV[9])\n"                                    \
"return {0}\n"


#endif /* _NGX_HTTP_OSAGO_SCRIPTS_H_INCLUDED_ */
