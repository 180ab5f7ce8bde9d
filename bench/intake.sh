#!/usr/bin/env bash
# bench/intake.sh: accepted applications per second and latency of POST /osago/application,
# beside plain nginx answering `return 202` with a body of the same size, in one run.
#
# Starts its own redis-server and nginx (2 workers, temp prefix, free loopback ports), one partner
# whose contract admits everything, no per-user limit. wrk (bench/intake.lua) posts valid
# applications with unique Idempotency-Keys; a second run mixes in 20 % replays. Each run is
# bounded (BENCH_SECONDS, default 10). Writes build/bench/intake.md. Kills only what it started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${OSAGO_BUILD:-$ROOT/build}
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=$BUILD/nginx/ngx_http_osago_module.so
SECS=${BENCH_SECONDS:-10}
PACE_RPS=${BENCH_PACE_RPS:-5000}
OUT=$BUILD/bench/intake.md

[ -f "$MODULE" ] || { echo "bench/intake: $MODULE missing (make module)" >&2; exit 1; }
[ -x "$BUILD/pace" ] || { echo "bench/intake: $BUILD/pace missing (bench/run-all builds it)" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK=$(mktemp -d /tmp/osago-bench-intake.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/redis" "$WORK/nginx/conf" "$WORK/nginx/logs" "$WORK/nginx/tmp"
RPORT=$(free_port); NPORT=$(free_port)
REDIS_PID=; NGINX_PID=

cleanup() {
    [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null || true
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis" \
    --daemonize yes --pidfile "$WORK/redis/redis.pid" >/dev/null
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_PID=$(cat "$WORK/redis/redis.pid")

KEY="bench-intake-key-$$"
HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
redis-cli -p "$RPORT" hset "osago:partner:$HASH" name bench rate 1000000 burst 1000000 \
    pool default enabled 1 >/dev/null

START=$(date -u -d '+1 day' +%F)
BODY='{"vehicle":{"category":"B","power_hp":150,"year":2018,"vin":"XTA21099012345678"},"owner":{"region_code":"77","birth_date":"1985-04-12"},"drivers":[{"birth_date":"1985-04-12","license_issued_date":"2005-06-01"}],"kbm_class":"3","period_months":12,"start_date":"'$START'"}'
REPLY=$(printf '{"id":"01934b5c-0000-7000-8000-000000000000","status":"accepted","created_at":"2026-11-28T00:00:00.000Z","links":{"self":"/osago/application/01934b5c-0000-7000-8000-000000000000"}}')

cat > "$WORK/nginx/conf/nginx.conf" <<CONF
load_module $MODULE;
worker_processes 2;
pid $WORK/nginx/logs/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
    keepalive_requests 1000000;
    osago_redis_server 127.0.0.1:$RPORT;
    server {
        listen 127.0.0.1:$NPORT;
        location = /plain { default_type application/json; return 202 '$REPLY'; }
        location = /osago/application { osago_limit on; osago_intake; osago_user_limit off; }
        location = /metrics { osago_metrics; }
    }
}
CONF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/conf/nginx.conf"
NGINX_PID=$(cat "$WORK/nginx/logs/nginx.pid")
sleep 0.5

run() {  # path replay_percent -> "req/s p50 p99 non2xx"
    OSAGO_BODY=$BODY OSAGO_KEY=$KEY OSAGO_PATH=$1 REPLAY_PERCENT=$2 \
        wrk -t2 -c64 -d"${SECS}s" --latency -s "$ROOT/bench/intake.lua" "http://127.0.0.1:$NPORT" \
        > "$WORK/wrk.out"
    awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
         /Non-2xx/ {bad=$NF} END {printf "%s %s %s %s\n", rps, p50, p99, bad+0}' "$WORK/wrk.out"
}

pace() {  # path -> "rps p50 p99 p999 non2xx" at BENCH_PACE_RPS, unique keys
    printf '%s' "$BODY" > "$WORK/body.json"
    "$BUILD/pace" -p "$NPORT" -u "$1" -r "$PACE_RPS" -d $((SECS + 1)) -w 1 -c 64 -T 5 -K \
        -b "$WORK/body.json" -H "X-API-Key: $KEY" 2>/dev/null \
        | awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                           printf "%s %s %s %s %d\n", v["rps"], v["p50_us"], v["p99_us"],
                                  v["p999_us"], v["sother"] + v["s429"] + v["errors"] }'
}

# the paced runs first, on an empty Redis; then the saturation runs
XLEN3=$(redis-cli -p "$RPORT" xlen osago:intake)
read -r PP_RPS PP_50 PP_99 PP_999 PP_BAD < <(pace /plain)
read -r PA_RPS PA_50 PA_99 PA_999 PA_BAD < <(pace /osago/application)
XLEN4=$(redis-cli -p "$RPORT" xlen osago:intake)
read -r P_RPS P_50 P_99 P_BAD < <(run /plain 0)
XLEN0=$(redis-cli -p "$RPORT" xlen osago:intake)
read -r A_RPS A_50 A_99 A_BAD < <(run /osago/application 0)
XLEN1=$(redis-cli -p "$RPORT" xlen osago:intake)
read -r R_RPS R_50 R_99 R_BAD < <(run /osago/application 20)
XLEN2=$(redis-cli -p "$RPORT" xlen osago:intake)
METRICS=$(curl -s "http://127.0.0.1:$NPORT/metrics" | grep -E '^osago_intake_(requests|parse_seconds_(sum|count))')

ACC1=$((XLEN1 - XLEN0)); ACC2=$((XLEN2 - XLEN1))
mkdir -p "$(dirname "$OUT")"
{
echo "# Intake benchmark (bench/intake.sh)"
echo
echo "$(date -u '+%F %H:%M') UTC, $(nproc) cores, nginx 2 workers, Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), wrk -t2 -c64 -d${SECS}s, loopback; body ${#BODY} bytes."
echo
echo "| run | requests/s | p50 | p99 | non-2xx | stream entries written | accepted/s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| plain \`return 202\` (same request, reply of ${#REPLY} bytes) | $P_RPS | $P_50 | $P_99 | $P_BAD | - | - |"
echo "| osago_intake, unique keys | $A_RPS | $A_50 | $A_99 | $A_BAD | $ACC1 | $(awk -v n="$ACC1" -v s="$SECS" 'BEGIN{printf "%.0f", n/s}') |"
echo "| osago_intake, 20 % replays | $R_RPS | $R_50 | $R_99 | $R_BAD | $ACC2 | $(awk -v n="$ACC2" -v s="$SECS" 'BEGIN{printf "%.0f", n/s}') |"
echo
echo "Open loop at a fixed $PACE_RPS requests/s (bench/pace -K: a new Idempotency-Key per request; 64 connections; latency from when each request was due):"
echo
echo "| location | achieved req/s | p50 | p99 | p99.9 | not 2xx | stream entries written |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| plain \`return 202\` | $PP_RPS | ${PP_50} µs | ${PP_99} µs | ${PP_999} µs | $PP_BAD | - |"
echo "| osago_intake | $PA_RPS | ${PA_50} µs | ${PA_99} µs | ${PA_999} µs | $PA_BAD | $((XLEN4 - XLEN3)) |"
echo
echo "intake / plain (requests/s): $(awk -v a="$A_RPS" -v p="$P_RPS" 'BEGIN{printf "%.2f", a/p}')"
echo
echo '```'
echo "$METRICS"
echo '```'
} | tee "$OUT"
