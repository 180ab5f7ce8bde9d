#!/usr/bin/env bash
# bench/limit.sh: what the per-partner limiter costs, on this machine, in one run.
#
# Starts its own redis-server and nginx (stock /usr/sbin/nginx, 2 workers, temp prefix, free
# loopback ports) with these locations on one server:
#
#   /plain             nothing but the 204
#   /limit_req         nginx's own limit_req, one key, a rate it never reaches (the mechanism's
#                      cost, not rejections)
#   /osago             osago_limit on, one partner whose contract admits everything
#                      (rate 1000000, burst 1000000)
#   /limit_req-20rps   limit_req at 20 r/s burst 40, to compare rejections
#
# All of them end in `try_files /.none =204;`, not `return 204;`: `return` answers in the REWRITE
# phase, before PREACCESS where both limit_req and osago_limit run, so with it neither limiter
# would run at all (checked below: the probe locations must refuse their second request).
#
# Runs, each bounded in time:
#   1. wrk -t2 -c64 -d10s --latency against plain, limit_req and osago, twice, in alternating order;
#   2. bench/pace (build/pace) at a fixed 5,000 req/s for 10 s (after 1 s of warm-up) against each;
#   3. rejection: a partner at 20 req/s (burst 40) offered 250 req/s for 10 s, osago and limit_req;
#   4. the 429 path at full speed: wrk (no Lua script, the key as a plain -H header) with that
#      partner's key.
# Prints a markdown report and writes it to build/bench/limit.md (raw tool outputs in
# build/bench/limit-raw/). Kills only the two processes it started.
#
# Environment: OSAGO_BUILD (default ./build), NGINX (default /usr/sbin/nginx),
# BENCH_SECONDS (default 10; the wrk and pace durations), BENCH_PACE_RPS (default 5000),
# BENCH_REJECT_RPS (default 250).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${OSAGO_BUILD:-$ROOT/build}
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=$BUILD/nginx/ngx_http_osago_module.so
PACE=$BUILD/pace
OUTDIR=$BUILD/bench
OUT=$OUTDIR/limit.md
RAW=$OUTDIR/limit-raw
SECS=${BENCH_SECONDS:-10}
PACE_RPS=${BENCH_PACE_RPS:-5000}
REJECT_RPS=${BENCH_REJECT_RPS:-250}
WRK_CONNS=64
PACE_CONNS=64
REJECT_RATE=20
REJECT_BURST=40

log() { printf 'bench/limit: %s\n' "$*" >&2; }
die() { printf 'bench/limit: %s\n' "$*" >&2; exit 1; }

for tool in "$NGINX" redis-server redis-cli wrk sha256sum timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (tools/install-deps.sh installs it)"
done
[ -x "$PACE" ] || die "$PACE is missing: bench/run-all builds it"

WORK=$(mktemp -d /tmp/osago-bench.XXXXXX)
chmod 755 "$WORK"              # nginx workers run as nobody when started as root
mkdir -p "$WORK/redis" "$WORK/nginx/html" "$WORK/nginx/tmp"
rm -rf "$RAW"
mkdir -p "$OUTDIR" "$RAW"

REDIS_PID=
NGX_PID=

stop_pid() {
    local pid=$1 sig=$2 i
    [ -n "$pid" ] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    trap '' INT TERM HUP
    stop_pid "$NGX_PID" TERM
    stop_pid "$REDIS_PID" TERM
    NGX_PID='' REDIS_PID=''
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---------------------------------------------------------------------------------------------
# Ports: random high loopback ports below the ephemeral range, checked free.

port_free() {
    if command -v ss >/dev/null 2>&1; then
        [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 1; fi
    fi
}
pick_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        [ "$p" != "${1:-}" ] && port_free "$p" && { echo "$p"; return; }
    done
    die "no free port found"
}
REDIS_PORT=$(pick_port)
HTTP_PORT=$(pick_port "$REDIS_PORT")
BASE=http://127.0.0.1:$HTTP_PORT

# ---------------------------------------------------------------------------------------------
# Redis and the partners (written as docs/rate-limiting.md specifies, as osagoctl would).

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$WORK/redis" --daemonize no --logfile "$WORK/redis/redis.log" </dev/null &
REDIS_PID=$!
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
for ((i = 0; i < 50; i++)); do
    [ "$(rcli PING 2>/dev/null)" = PONG ] && break
    sleep 0.1
done
[ "$(rcli PING 2>/dev/null)" = PONG ] || die "redis-server did not start: $(tail -5 "$WORK/redis/redis.log")"

new_key() { printf 'bench_%s' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"; }
# add_partner NAME RATE BURST: prints the key
add_partner() {
    local key hash
    key=$(new_key)
    hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
    rcli HSET "osago:partner:$hash" name "$1" rate "$2" burst "$3" pool shared enabled 1 >/dev/null
    rcli HSET osago:partners "$1" "$hash" >/dev/null
    printf '%s' "$key"
}
KEY_OPEN=$(add_partner bench-open 1000000 1000000)
KEY_20=$(add_partner bench-20rps "$REJECT_RATE" "$REJECT_BURST")
KEY_PROBE=$(add_partner bench-probe 1 1)

# ---------------------------------------------------------------------------------------------
# nginx. The osago location only when the module exists and nginx accepts it.

write_conf() {   # write_conf with_module(0|1)
    {
        [ "$1" = 1 ] && echo "load_module $MODULE;"
        cat <<EOF
worker_processes 2;
worker_rlimit_nofile 20000;
master_process on;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 10000; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path       $WORK/nginx/tmp/proxy;
    fastcgi_temp_path     $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path       $WORK/nginx/tmp/uwsgi;
    scgi_temp_path        $WORK/nginx/tmp/scgi;
    root $WORK/nginx/html;
    # wrk keeps its 64 connections for the whole run: no reconnect every 1000 requests.
    keepalive_requests 1000000;
    # The terminator's stat() of the missing file is cached: no syscall per request.
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;
    open_file_cache_errors on;

    limit_req_status 429;
    # One key per zone (the server port). 1,000,000 r/s with burst 1,000,000: never reached, as
    # limit_req counts in milliseconds and would otherwise refuse a second request in the same ms.
    limit_req_zone \$server_port zone=bench_open:1m  rate=1000000r/s;
    limit_req_zone \$server_port zone=bench_20rps:1m rate=${REJECT_RATE}r/s;
    limit_req_zone \$server_port zone=bench_probe:1m rate=1r/m;
EOF
        [ "$1" = 1 ] && cat <<EOF
    osago_redis_server 127.0.0.1:$REDIS_PORT;
EOF
        cat <<EOF
    server {
        listen 127.0.0.1:$HTTP_PORT backlog=4096;
        location = /plain            { try_files /.none =204; }
        location = /limit_req        { limit_req zone=bench_open burst=1000000 nodelay; try_files /.none =204; }
        location = /limit_req-20rps  { limit_req zone=bench_20rps burst=$REJECT_BURST nodelay; try_files /.none =204; }
        location = /limit_req-probe  { limit_req zone=bench_probe; try_files /.none =204; }
EOF
        # fallback closed: if Redis failed during the run it would show as 503s, not be hidden
        # by the local fallback.
        [ "$1" = 1 ] && cat <<EOF
        location = /osago            { osago_limit on; osago_limit_fallback closed; try_files /.none =204; }
        location = /metrics          { osago_metrics; }
EOF
        echo "    }"
        echo "}"
    } > "$WORK/nginx/nginx.conf"
}

OSAGO=0
OSAGO_WHY="build/nginx/ngx_http_osago_module.so does not exist (make module)"
if [ -f "$MODULE" ]; then
    write_conf 1
    if t=$("$NGINX" -t -q -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" 2>&1); then
        OSAGO=1
    else
        OSAGO_WHY="nginx refuses the module: $(printf '%s' "$t" | head -3 | tr '\n' ' ')"
    fi
fi
[ "$OSAGO" = 1 ] || { log "osago rows skipped: $OSAGO_WHY"; write_conf 0; }

"$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" </dev/null &
NGX_PID=$!
for ((i = 0; i < 50; i++)); do
    kill -0 "$NGX_PID" 2>/dev/null || die "nginx exited at start: $(tail -5 "$WORK/nginx/error.log")"
    (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null && break
    sleep 0.1
done

# ---------------------------------------------------------------------------------------------
# Sanity: each location does what the benchmark assumes.

# http_get PATH [KEY]: the response head (status line and headers), CR stripped.
http_get() {
    local hdr=""
    [ -n "${2:-}" ] && hdr="X-API-Key: $2"$'\r\n'
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n%s\r\n" "$1" "$2" >&3
        cat <&3' "$HTTP_PORT" "$1" "$hdr" | tr -d '\r' | sed '/^$/q'
}
status_of() { http_get "$@" | awk 'NR == 1 { print $2 }'; }

# The module's Redis round-trip histogram, summed over workers: "b LE CUMULATIVE" lines, then
# "sum SECONDS" and "count N". HTTP/1.0, so the body is never chunked.
scrape_rtt() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n" >&3
        cat <&3' "$HTTP_PORT" | tr -d '\r' | awk '
        /^osago_redis_rtt_seconds_bucket/ {
            match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
            if (!(le in b)) order[++n] = le
            b[le] += $NF
        }
        /^osago_redis_rtt_seconds_sum/   { sum += $NF }
        /^osago_redis_rtt_seconds_count/ { count += $NF }
        END { for (i = 1; i <= n; i++) print "b", order[i], b[order[i]]; print "sum", sum + 0; print "count", count + 0 }'
}

# rtt_delta BEFORE AFTER: "mean_us p50_le p99_le count" of the calls between the two scrapes
# (p50/p99 as the histogram bucket bound they fall under).
rtt_delta() {
    awk 'FNR == 1 { f++ }
        f == 1 && $1 == "b" { b0[$2] = $3 } f == 1 && $1 == "sum" { s0 = $2 } f == 1 && $1 == "count" { c0 = $2 }
        f == 2 && $1 == "b" { order[++n] = $2; b1[$2] = $3 } f == 2 && $1 == "sum" { s1 = $2 } f == 2 && $1 == "count" { c1 = $2 }
        END {
            c = c1 - c0; if (c <= 0) { print "- - - 0"; exit }
            p50 = p99 = "-"
            for (i = 1; i <= n; i++) {
                d = b1[order[i]] - b0[order[i]]
                if (p50 == "-" && d >= 0.5 * c) p50 = order[i]
                if (p99 == "-" && d >= 0.99 * c) p99 = order[i]
            }
            printf "%.0f %s %s %d\n", (s1 - s0) / c * 1e6, p50, p99, c
        }' "$1" "$2"
}
le_fmt() {   # "0.000500" -> "≤ 500 µs", "+Inf" -> "> last bucket"
    case "$1" in
        -) printf '—' ;;
        +Inf) printf '> last bucket' ;;
        *) printf '≤ %s' "$(fmt_us "$(awk -v v="$1" 'BEGIN { printf "%.0f", v * 1e6 }')")" ;;
    esac
}

[ "$(status_of /plain)" = 204 ] || die "/plain does not answer 204"
a=$(status_of /limit_req-probe); b=$(status_of /limit_req-probe)
[ "$a $b" = "204 429" ] \
    || die "limit_req probe answered '$a $b', expected '204 429': the terminator does not let limit_req run"
[ "$(status_of /limit_req)" = 204 ] || die "/limit_req does not answer 204"

if [ "$OSAGO" = 1 ]; then
    s_nokey=$(status_of /osago)
    head_open=$(http_get /osago "$KEY_OPEN")
    s_open=$(awk 'NR == 1 { print $2 }' <<<"$head_open")
    a=$(status_of /osago "$KEY_PROBE"); b=$(status_of /osago "$KEY_PROBE")
    if [ "$s_nokey" != 401 ]; then
        OSAGO=0 OSAGO_WHY="/osago without a key answered $s_nokey, not 401"
    elif [ "$s_open" != 204 ]; then
        OSAGO=0 OSAGO_WHY="/osago with the open partner's key answered $s_open, not 204"
    elif ! grep -qi '^RateLimit-Policy:' <<<"$head_open"; then
        OSAGO=0 OSAGO_WHY="/osago's 204 carries no RateLimit-Policy header"
    elif [ "$a $b" != "204 429" ]; then
        OSAGO=0 OSAGO_WHY="a partner at 1 req/s burst 1 got '$a $b' for two requests, not '204 429'"
    fi
    [ "$OSAGO" = 1 ] || log "osago rows skipped: $OSAGO_WHY"
fi
printf '%s\n' "${head_open:-}" > "$RAW/osago-sample-head.txt"

# ---------------------------------------------------------------------------------------------
# Measurements.

# to_us VALUE: wrk's "410.00us", "2.05ms", "1.02s", "1.50m" -> microseconds
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1e6;
        else if (u == "m") f = 6e7; else f = 1
        printf "%.0f", n * f }'
}
fmt_us() {   # 410 -> "410 µs", 2050 -> "2.05 ms"; "" -> "—"
    [ -n "${1:-}" ] || { printf '—'; return; }
    awk -v v="$1" 'BEGIN { if (v < 1000) printf "%d µs", v; else printf "%.2f ms", v / 1000 }'
}
fmt_n() {     # 71790.2 -> 71,790
    awk -v v="${1:-0}" 'BEGIN { s = sprintf("%.0f", v); r = ""
        while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
        printf "%s%s", s, r }'
}

declare -A W_RPS W_P50 W_P99 W_NON2XX W_ERR

# run_wrk TAG PATH [KEY]: results in W_*[TAG]
run_wrk() {
    local tag=$1 path=$2 key=${3:-} f=$RAW/wrk-$1.txt
    local args=(-t2 "-c$WRK_CONNS" "-d${SECS}s" --latency)
    [ -n "$key" ] && args+=(-H "X-API-Key: $key")
    log "wrk $tag: wrk ${args[*]/$key/KEY} $BASE$path"
    timeout $((SECS + 30)) wrk "${args[@]}" "$BASE$path" > "$f" 2>&1 || log "wrk $tag failed (see $f)"
    W_RPS[$tag]=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
    W_P50[$tag]=$(to_us "$(awk '$1 == "50%" { print $2 }' "$f")")
    W_P99[$tag]=$(to_us "$(awk '$1 == "99%" { print $2 }' "$f")")
    W_NON2XX[$tag]=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$f")
    W_NON2XX[$tag]=${W_NON2XX[$tag]:-0}
    W_ERR[$tag]=$(awk -F'[ ,]+' '/Socket errors:/ { print $5 + $7 + $9 + $11 }' "$f")
    W_ERR[$tag]=${W_ERR[$tag]:-0}
    W_TOTAL[$tag]=$(awk '/requests in/ { print $1 }' "$f")
    sleep 1
}
declare -A W_TOTAL

declare -A P_LINE
# run_pace TAG PATH KEY RATE SECONDS WARMUP CONNS
run_pace() {
    local tag=$1 path=$2 key=$3 rate=$4 secs=$5 warm=$6 conns=$7 f=$RAW/pace-$1.txt
    local args=(-p "$HTTP_PORT" -u "$path" -r "$rate" -d "$secs" -w "$warm" -c "$conns" -T 5)
    [ -n "$key" ] && args+=(-H "X-API-Key: $key")
    log "pace $tag: pace ${args[*]/$key/KEY}"
    timeout $((secs + 30)) "$PACE" "${args[@]}" > "$f" 2>&1 || log "pace $tag failed (see $f)"
    P_LINE[$tag]=$(grep '^RESULT ' "$f" | head -1 || true)
    sleep 1
}
pv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"${P_LINE[$1]:-}"; }

LOCS=(plain limit_req)
[ "$OSAGO" = 1 ] && LOCS+=(osago)
# The same request bytes everywhere: the key goes to plain and limit_req too (they ignore it).
key_for() { printf '%s' "$KEY_OPEN"; }

declare -A RTT
# with_rtt TAG COMMAND...: runs the command, keeps the Redis RTT seen during it in RTT[TAG]
with_rtt() {
    local tag=$1; shift
    if [ "$OSAGO" != 1 ]; then "$@"; return; fi
    scrape_rtt > "$RAW/rtt-$tag.before" || true
    "$@"
    scrape_rtt > "$RAW/rtt-$tag.after" || true
    RTT[$tag]=$(rtt_delta "$RAW/rtt-$tag.before" "$RAW/rtt-$tag.after" 2>/dev/null || true)
}

START=$(date +%s)
for loc in "${LOCS[@]}"; do with_rtt "wrk-$loc.1" run_wrk "$loc.1" "/$loc" "$(key_for "$loc")"; done
for ((i = ${#LOCS[@]} - 1; i >= 0; i--)); do
    loc=${LOCS[$i]}
    run_wrk "$loc.2" "/$loc" "$(key_for "$loc")"
done
for loc in "${LOCS[@]}"; do
    with_rtt "pace-$loc" run_pace "$loc" "/$loc" "$(key_for "$loc")" "$PACE_RPS" $((SECS + 1)) 1 "$PACE_CONNS"
done
run_pace reject-limit_req /limit_req-20rps "$KEY_20" "$REJECT_RPS" "$SECS" 0 16
[ "$OSAGO" = 1 ] && run_pace reject-osago /osago "$KEY_20" "$REJECT_RPS" "$SECS" 0 16
run_wrk 429-limit_req /limit_req-20rps "$KEY_20"
[ "$OSAGO" = 1 ] && run_wrk 429-osago /osago "$KEY_20"
ELAPSED=$(( $(date +%s) - START ))

# ---------------------------------------------------------------------------------------------
# Report.

mean2() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { printf "%.0f", (a + b) / 2 }'; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else printf "—" }'; }
declare -A MEAN
for loc in "${LOCS[@]}"; do MEAN[$loc]=$(mean2 "${W_RPS[$loc.1]}" "${W_RPS[$loc.2]}"); done

nginx_v=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')
redis_v=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
wrk_cmd="wrk -t2 -c$WRK_CONNS -d${SECS}s --latency -H 'X-API-Key: KEY' $BASE/LOCATION"
if [ "$OSAGO" = 1 ]; then
    mod_desc="\`$MODULE\` ($(date -r "$MODULE" '+%Y-%m-%d %H:%M'), sha256 $(sha256sum "$MODULE" | cut -c1-12))"
else
    mod_desc="not measured: $OSAGO_WHY"
fi

report() {
    cat <<EOF
# Per-partner limiter: cost and behaviour (bench/limit.sh)

$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, Linux $(uname -r), nginx $nginx_v (2 workers,
access_log off, keepalive_requests 1000000), Redis $redis_v, all on loopback, load generator on the
same 2 cores. Module: $mod_desc. Run time: ${ELAPSED} s.

Locations (one server): \`plain\` = \`try_files /.none =204;\` only; \`limit_req\` = one key, rate
1000000r/s burst=1000000 nodelay (never rejects: the mechanism's cost); \`osago\` = \`osago_limit on;\`
with one partner at rate 1000000 burst 1000000 (admits everything; Redis is asked for every request,
the module batching a partner's concurrent requests into one EVALSHA). All end in
\`try_files /.none =204;\` because \`return\` runs before the PREACCESS phase and would skip both
limiters (verified at start: a 1 r/m limit_req and a 1 req/s partner refuse their second request).

## Throughput, closed loop (wrk)

\`$wrk_cmd\`, each location twice, order ${LOCS[*]} then reversed; the same X-API-Key header
(the open partner's) is sent to every location, so the requests are byte for byte the same.

| location | run | requests/s | p50 | p99 | non-2xx | socket errors |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
EOF
    local loc r
    for loc in "${LOCS[@]}"; do
        for r in 1 2; do
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$loc" "$r" "$(fmt_n "${W_RPS[$loc.$r]:-0}")" \
                "$(fmt_us "${W_P50[$loc.$r]}")" "$(fmt_us "${W_P99[$loc.$r]}")" \
                "${W_NON2XX[$loc.$r]}" "${W_ERR[$loc.$r]}"
        done
        printf '| **%s** | mean | **%s** | | | | |\n' "$loc" "$(fmt_n "${MEAN[$loc]}")"
    done
    echo
    echo "| ratio of mean requests/s | value |"
    echo "| --- | ---: |"
    echo "| limit_req / plain | $(ratio "${MEAN[limit_req]}" "${MEAN[plain]}") |"
    if [ "$OSAGO" = 1 ]; then
        echo "| osago / plain | $(ratio "${MEAN[osago]}" "${MEAN[plain]}") |"
        echo "| osago / limit_req | $(ratio "${MEAN[osago]}" "${MEAN[limit_req]}") |"
    else
        echo "| osago / plain, osago / limit_req | not measured |"
    fi
    cat <<EOF

## Latency at a fixed $(fmt_n "$PACE_RPS") requests/s (bench/pace, open loop)

\`build/pace -p $HTTP_PORT -u /LOCATION -r $PACE_RPS -d $((SECS + 1)) -w 1 -c $PACE_CONNS -T 5 -H 'X-API-Key: KEY'\`:
${SECS} s measured after 1 s of warm-up, $PACE_CONNS keep-alive connections, latency counted from when
each request was due.

| location | achieved req/s | p50 | p99 | p99.9 | max | non-2xx | errors | sent late (>1 ms) |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
EOF
    for loc in "${LOCS[@]}"; do
        if [ -z "${P_LINE[$loc]:-}" ]; then
            printf '| %s | failed (see %s) | | | | | | | |\n' "$loc" "$RAW/pace-$loc.txt"
            continue
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$loc" "$(fmt_n "$(pv "$loc" rps)")" \
            "$(fmt_us "$(pv "$loc" p50_us)")" "$(fmt_us "$(pv "$loc" p99_us)")" \
            "$(fmt_us "$(pv "$loc" p999_us)")" "$(fmt_us "$(pv "$loc" max_us)")" \
            "$(( $(pv "$loc" s429) + $(pv "$loc" sother) ))" "$(pv "$loc" errors)" "$(pv "$loc" late)"
    done
    if [ "$OSAGO" = 1 ]; then
        cat <<EOF

The module's own Redis round-trip histogram (\`osago_redis_rtt_seconds\`, scraped from
\`osago_metrics\` before and after; percentiles as the bucket bound they fall under):

| osago run | requests | EVALSHA calls | requests per call | mean RTT | p50 | p99 |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
EOF
        local t r m p50 p99 c n
        for t in "wrk-osago.1:wrk run 1 (saturated)" "pace-osago:pace at $(fmt_n "$PACE_RPS")/s"; do
            r=${RTT[${t%%:*}]:-}
            if [ -z "$r" ]; then
                printf '| %s | | not scraped | | | | |\n' "${t#*:}"
                continue
            fi
            if [ "${t%%:*}" = pace-osago ]; then
                n=$((PACE_RPS * (SECS + 1)))    # warm-up included, as in the scrape
            else
                n=${W_TOTAL[osago.1]:-0}
            fi
            read -r m p50 p99 c <<<"$r"
            if [ "$m" = - ]; then m='—'; else m=$(fmt_us "$m"); fi
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${t#*:}" "$(fmt_n "$n")" "$(fmt_n "$c")" \
                "$(awk -v n="$n" -v c="$c" 'BEGIN { if (c > 0) printf "%.2f", n / c; else printf "—" }')" \
                "$m" "$(le_fmt "$p50")" "$(le_fmt "$p99")"
        done
    fi
    local expect
    expect=$(awk -v b="$REJECT_BURST" -v r="$REJECT_RATE" -v d="$SECS" 'BEGIN { printf "%.1f", (b + r * d) / d }')
    cat <<EOF

## Rejection: a ${REJECT_RATE} req/s partner (burst ${REJECT_BURST}) offered ${REJECT_RPS} req/s

\`build/pace -p $HTTP_PORT -u /LOCATION -r $REJECT_RPS -d $SECS -w 0 -c 16 -T 5 -H 'X-API-Key: KEY'\`, from
idle. Expected admitted/s = (burst + rate × ${SECS} s) / ${SECS} s = ${expect}.

| limiter | offered/s | admitted/s | 429/s | other non-2xx | errors | p50 | p99 |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
EOF
    local tag name
    for tag in reject-limit_req reject-osago; do
        [ "$tag" = reject-osago ] && [ "$OSAGO" != 1 ] && continue
        name=${tag#reject-}
        [ "$name" = limit_req ] && name="limit_req 20r/s burst=$REJECT_BURST nodelay"
        [ "$name" = osago ] && name="osago (rate $REJECT_RATE burst $REJECT_BURST)"
        if [ -z "${P_LINE[$tag]:-}" ]; then
            printf '| %s | failed | | | | | | |\n' "$name"
            continue
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$REJECT_RPS" \
            "$(pv "$tag" admitted_per_s)" \
            "$(awk -v n="$(pv "$tag" s429)" -v d="$SECS" 'BEGIN { printf "%.1f", n / d }')" \
            "$(pv "$tag" sother)" "$(pv "$tag" errors)" \
            "$(fmt_us "$(pv "$tag" p50_us)")" "$(fmt_us "$(pv "$tag" p99_us)")"
    done
    cat <<EOF

## The 429 path at full speed (wrk, no Lua: the key as a plain header)

\`wrk -t2 -c$WRK_CONNS -d${SECS}s --latency -H 'X-API-Key: KEY' $BASE/LOCATION\` with the ${REJECT_RATE} req/s
partner's key (osago; limit_req ignores it, its zone is 20r/s): nearly every answer is a 429.

| limiter | requests/s | p50 | p99 | non-2xx (429) | of all | socket errors |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
EOF
    for tag in 429-limit_req 429-osago; do
        [ "$tag" = 429-osago ] && [ "$OSAGO" != 1 ] && continue
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${tag#429-}" "$(fmt_n "${W_RPS[$tag]:-0}")" \
            "$(fmt_us "${W_P50[$tag]}")" "$(fmt_us "${W_P99[$tag]}")" "$(fmt_n "${W_NON2XX[$tag]}")" \
            "$(awk -v n="${W_NON2XX[$tag]}" -v t="${W_TOTAL[$tag]:-0}" 'BEGIN { if (t > 0) printf "%.2f %%", 100 * n / t; else printf "—" }')" \
            "${W_ERR[$tag]}"
    done
    echo
    echo "Raw outputs: \`$RAW/\`."
}

report > "$OUT.new"
mv "$OUT.new" "$OUT"
cat "$OUT"
log "report written to $OUT"
