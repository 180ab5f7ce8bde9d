#!/usr/bin/env bash
# bench/poll.sh: what a parked long-poll costs the edge, and how fast one update wakes them all,
# against nchan (Debian's libnginx-mod-nchan, long-poll subscribers, Redis) in the same run.
#
# For each N in BENCH_POLL_COUNTS (default "10000 50000") and each server, osago and nchan in
# alternating order, a fresh stock nginx (/usr/sbin/nginx) is started in a temp prefix on a free
# loopback port (`listen ... reuseport`), sharing one redis-server of our own. Worker processes:
# the same for both servers, 2 (the production `worker_processes auto` on this 2-core machine), or
# more where one worker could not hold its share of the N connections: a process may have only
# `ulimit -Hn` descriptors (20000 here, and root without CAP_SYS_RESOURCE cannot raise it), so
# 50,000 connections need at least 3 workers; reuseport spreads them evenly (BENCH_POLL_WORKERS
# overrides the choice).

#
#   osago  load_module build/nginx/ngx_http_osago_module.so; one partner that admits everything
#          (osagoctl partner add, rate 1000000 burst 1000000) and one application read model
#          osago:app:{id} at updated_at 1000. Every connection asks
#          GET /osago/application/{id}?latest=1000 with the partner's X-API-Key and parks
#          (osago_poll $app_id; osago_poll_timeout 60s). Woken by HSET of the document at
#          updated_at 2000, then PUBLISH osago:app-updates "{id} 2000". Parked count: the sum of the
#          osago_poll_parked lines of the osago_metrics location.
#   nchan  load_module ngx_nchan_module.so; `nchan_subscriber longpoll` on /sub/{channel} and
#          `nchan_publisher` on /pub/{channel}, both `nchan_redis_pass` to an upstream with
#          `nchan_redis_server` (distributed mode: the message goes through Redis). Woken by POSTing
#          the same document to /pub/{channel}. Parked count: "subscribers:" of nchan_stub_status.
#
# build/parker (bench/parker.c, built here) opens the N connections from 127.0.0.2.. (one source
# address per 10,000 connections, plus one), at most BENCH_POLL_CONNECT_PER_MS per ms, one GET each;
# as several parker processes when N sockets do not fit under one process's descriptor limit.
# Once the server reports N parked (bounded wait), the workers' memory is read again, and one update
# is published; the publish time is taken in the publishing process right before it writes the
# command (not by `date` and a redis-cli/curl start-up, which would add milliseconds to the figures).
# Wake latency = each response's arrival (CLOCK_REALTIME in parker) - publish time.
#
# Memory per parked request = (sum of VmRSS of the worker processes with N parked - the same just
# before parker started) / N. PSS (/proc/PID/smaps_rollup) is shown too: with 2 workers a shared page
# that both touch counts twice in RSS, once in PSS. Kernel socket buffers are in neither.
#
# Every step is bounded in time (parker's -t, bounded waits, `timeout`); a step that fails is
# reported as such and the run goes on. Writes build/bench/poll.md (raw files in
# build/bench/poll-raw/) and prints it. Kills only the processes it started, by PID.
#
# Environment: OSAGO_BUILD (default ./build), NGINX (default /usr/sbin/nginx),
# NCHAN_MODULE (default /usr/lib/nginx/modules/ngx_nchan_module.so), BENCH_POLL_COUNTS,
# BENCH_POLL_CONNECT_PER_MS (default 10), BENCH_POLL_SERVERS (default "osago nchan"),
# BENCH_POLL_WORKERS (default: computed, see above).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${OSAGO_BUILD:-$ROOT/build}
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=$BUILD/nginx/ngx_http_osago_module.so
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
OSAGOCTL=$BUILD/osagoctl
PARKER=$BUILD/parker
OUTDIR=$BUILD/bench
OUT=$OUTDIR/poll.md
RAW=$OUTDIR/poll-raw
COUNTS=${BENCH_POLL_COUNTS:-10000 50000}
PER_MS=${BENCH_POLL_CONNECT_PER_MS:-10}
SERVERS=${BENCH_POLL_SERVERS:-osago nchan}
POLL_TIMEOUT=60          # osago_poll_timeout and nchan_subscriber_timeout, seconds
PARK_WAIT=60             # at most this long for the server to report N parked, seconds
WAKE_WAIT=30             # at most this long for the N answers after the publish, seconds
PARTNER=bench-poll

log() { printf 'bench/poll: %s\n' "$*" >&2; }
die() { printf 'bench/poll: %s\n' "$*" >&2; exit 1; }

for tool in "$NGINX" redis-server redis-cli python3 curl timeout ps; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (tools/install-deps.sh installs it)"
done
for n in $COUNTS; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "BENCH_POLL_COUNTS: '$n' is not a count"
done
[[ $PER_MS =~ ^[1-9][0-9]*$ ]] || die "BENCH_POLL_CONNECT_PER_MS: '$PER_MS' is not a positive integer"
[[ ${BENCH_POLL_WORKERS:-1} =~ ^[1-9][0-9]*$ ]] || die "BENCH_POLL_WORKERS: not a positive integer"

# parker, built like bench/run-all builds pace.
CC=${CC:-cc}
CFLAGS=${CFLAGS:--O2 -g}
if [ ! -x "$PARKER" ] || [ "$ROOT/bench/parker.c" -nt "$PARKER" ] \
   || [ "$ROOT/bench/http_response.c" -nt "$PARKER" ]; then
    log "building $PARKER"
    mkdir -p "$BUILD"
    # shellcheck disable=SC2086 # CFLAGS is a list of flags
    "$CC" -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror $CFLAGS \
        -o "$PARKER" "$ROOT/bench/parker.c" "$ROOT/bench/http_response.c"
fi

# ---------------------------------------------------------------------------------------------
# Descriptors: parker holds N sockets, nginx N client connections plus its Redis connections and
# the listeners. Raise the limit as far as allowed (root with CAP_SYS_RESOURCE: to fs.nr_open);
# what a single process cannot hold is spread over several processes below.

MAXN=0
for n in $COUNTS; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done
NOFILE=$((MAXN + 4096))
NR_OPEN=$(cat /proc/sys/fs/nr_open)
[ "$NOFILE" -gt "$NR_OPEN" ] && NOFILE=$NR_OPEN
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$NOFILE" ]; then
    if ulimit -Hn "$NOFILE" 2>/dev/null; then
        hard=$NOFILE
    else
        log "ulimit -Hn is $hard and cannot be raised (no CAP_SYS_RESOURCE): several parkers and" \
            "nginx workers share the connections"
        NOFILE=$hard
    fi
fi
ulimit -Sn "$NOFILE"
PER_PROC=$((NOFILE - 1000))              # sockets one parker process takes
WORKER_CAP=$((NOFILE * 3 / 4))           # client connections a worker is planned for (reuseport
                                         # spreads them within a few percent; the rest is headroom)
workers_for() {   # N -> worker processes
    local w
    if [ -n "${BENCH_POLL_WORKERS:-}" ]; then echo "$BENCH_POLL_WORKERS"; return; fi
    w=$(( ($1 + WORKER_CAP - 1) / WORKER_CAP ))
    [ "$w" -lt 2 ] && w=2
    echo "$w"
}

# ---------------------------------------------------------------------------------------------
# Work area, processes, cleanup.

WORK=$(mktemp -d /tmp/osago-bench-poll.XXXXXX)
chmod 755 "$WORK"              # nginx workers run as nobody when started as root
mkdir -p "$WORK/redis"
rm -rf "$RAW"
mkdir -p "$OUTDIR" "$RAW"

REDIS_PID=
NGX_PID=
PARKER_PIDS=()

stop_pid() {
    local pid=$1 sig=$2 i
    [ -n "$pid" ] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    trap '' INT TERM HUP
    local p
    for p in "${PARKER_PIDS[@]}"; do stop_pid "$p" TERM; done
    stop_pid "$NGX_PID" TERM
    stop_pid "$REDIS_PID" TERM
    PARKER_PIDS=() NGX_PID='' REDIS_PID=''
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------------------------------------
# Redis, the partner, the documents.

REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$WORK/redis" --daemonize no --logfile "$WORK/redis/redis.log" </dev/null &
REDIS_PID=$!
rcli() { timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
for ((i = 0; i < 50; i++)); do
    [ "$(rcli PING 2>/dev/null)" = PONG ] && break
    sleep 0.1
done
[ "$(rcli PING 2>/dev/null)" = PONG ] || die "redis-server did not start: $(tail -5 "$WORK/redis/redis.log")"

# The partner, the way an operator adds one (osagoctl), else as t/lib/OsagoTest.pm add_partner does.
if [ -x "$OSAGOCTL" ]; then
    KEY=$(timeout 10 "$OSAGOCTL" --redis "127.0.0.1:$REDIS_PORT" partner add "$PARTNER" \
        --rate 1000000 --burst 1000000) || die "osagoctl partner add failed"
else
    KEY=bench_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    hash=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
    rcli HSET "osago:partner:$hash" name "$PARTNER" rate 1000000 burst 1000000 pool default \
        enabled 1 >/dev/null
    rcli HSET osago:partners "$PARTNER" "$hash" >/dev/null
fi

new_uuid() { python3 -c 'import uuid; print(uuid.uuid4())'; }
# doc ID UPDATED_AT STATUS INSURER_STATUS: a read-model document of the usual size (10 insurers)
doc() {
    local id=$1 at=$2 st=$3 ist=$4 code i=0 ins=""
    for code in alfa ingos reso vsk rgs sogaz zetta sber tinkoff renins; do
        i=$((i + 1))
        if [ "$ist" = ok ]; then
            ins+="{\"code\":\"$code\",\"name\":\"Insurer $code\",\"status\":\"ok\",\"premium_rub\":$((9000 + i * 137)),\"error\":null},"
        else
            ins+="{\"code\":\"$code\",\"name\":\"Insurer $code\",\"status\":\"pending\",\"premium_rub\":null,\"error\":null},"
        fi
    done
    printf '{"id":"%s","status":"%s","created_at":"2024-05-01T10:00:00.000Z","updated_at":%s,"insurers":[%s]}' \
        "$id" "$st" "$at" "${ins%,}"
}

# ---------------------------------------------------------------------------------------------
# nginx configurations. One server per step, a fresh nginx each time: memory that a previous step
# grew and malloc kept would otherwise hide in the idle figure.

common_head() {   # common_head PREFIX N
    local wc=$(($2 + 1024))
    [ "$wc" -gt $((NOFILE - 256)) ] && wc=$((NOFILE - 256))
    cat <<EOF
worker_processes $(workers_for "$2");
worker_rlimit_nofile $NOFILE;
master_process on;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $wc; }
http {
    access_log off;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path       $1/tmp/proxy;
    fastcgi_temp_path     $1/tmp/fastcgi;
    uwsgi_temp_path       $1/tmp/uwsgi;
    scgi_temp_path        $1/tmp/scgi;
    root $1/html;
EOF
}

write_conf_osago() {   # PREFIX N PORT
    {
        echo "load_module $MODULE;"
        common_head "$1" "$2"
        cat <<EOF
    osago_redis_server 127.0.0.1:$REDIS_PORT;
    server {
        listen 127.0.0.1:$3 backlog=4096 reuseport;
        location ~ ^/osago/application/(?<app_id>[^/]+)\$ {
            osago_limit on;             # identifies the partner from X-API-Key
            osago_poll \$app_id;
            osago_poll_timeout ${POLL_TIMEOUT}s;
        }
        location = /metrics { osago_metrics; }
    }
}
EOF
    } > "$1/nginx.conf"
}

write_conf_nchan() {   # PREFIX N PORT
    {
        echo "load_module $NCHAN_MODULE;"
        common_head "$1" "$2"
        cat <<EOF
    upstream nchan_redis {
        nchan_redis_server redis://127.0.0.1:$REDIS_PORT;
    }
    server {
        listen 127.0.0.1:$3 backlog=4096 reuseport;
        location ~ ^/sub/([\w-]+)\$ {
            nchan_subscriber longpoll;
            nchan_channel_id \$1;
            nchan_redis_pass nchan_redis;
            nchan_subscriber_timeout ${POLL_TIMEOUT}s;
        }
        location ~ ^/pub/([\w-]+)\$ {
            nchan_publisher;
            nchan_channel_id \$1;
            nchan_redis_pass nchan_redis;
        }
        location = /nchan_status { nchan_stub_status; }
    }
}
EOF
    } > "$1/nginx.conf"
}

# check_conf SERVER: prints why the server cannot be measured, nothing when it can
check_conf() {
    local p=$WORK/check-$1 t
    mkdir -p "$p/tmp" "$p/html"
    case $1 in
        osago)
            [ -f "$MODULE" ] || { echo "$MODULE does not exist (make module)"; return; }
            write_conf_osago "$p" 1000 1 ;;
        nchan)
            [ -f "$NCHAN_MODULE" ] || { echo "$NCHAN_MODULE does not exist (apt-get install libnginx-mod-nchan)"; return; }
            write_conf_nchan "$p" 1000 1 ;;
    esac
    if ! t=$("$NGINX" -t -q -p "$p/" -c "$p/nginx.conf" 2>&1); then
        printf 'nginx refuses the configuration: %s' \
            "$(printf '%s' "$t" | grep -m1 emerg | sed 's/^.*\[emerg\] [0-9#]*: //')"
    fi
}

# ---------------------------------------------------------------------------------------------
# Probes.

worker_pids() { ps -o pid= --ppid "$NGX_PID" 2>/dev/null | tr -d ' ' || true; }
# mem_kib FIELD: the sum over the worker processes (VmRSS from status, Pss from smaps_rollup)
mem_kib() {
    local p s=0 v f
    for p in $(worker_pids); do
        if [ "$1" = Pss ]; then f=/proc/$p/smaps_rollup; else f=/proc/$p/status; fi
        v=$(awk -v k="$1:" '$1 == k { print $2 }' "$f" 2>/dev/null || true)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

# worker_conns: descriptors held by each worker, "a/b/..." (how evenly the connections spread)
worker_conns() {
    local p out=""
    for p in $(worker_pids); do
        out+="$(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)/"
    done
    echo "${out%/}"
}

http_get() { curl -s --max-time 5 "http://127.0.0.1:$1$2" || true; }

parked_count() {   # SERVER PORT
    case $1 in
        osago) http_get "$2" /metrics | awk '/^osago_poll_parked[ {]/ { s += $NF; seen = 1 }
                                             END { if (seen) printf "%d\n", s; else print "-" }' ;;
        nchan) http_get "$2" /nchan_status | awk -F': *' '$1 == "subscribers" { print $2; seen = 1 }
                                                      END { if (!seen) print "-" }' ;;
    esac
}

# publish_redis PORT CHANNEL MESSAGE / publish_http PORT PATH BODY_FILE: the CLOCK_REALTIME µs at
# which the command was written (the connection is already open then), and what came back.
publish_redis() {
    timeout 10 python3 - "$@" <<'EOF'
import socket, sys, time
port, channel, msg = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()
args = [b"PUBLISH", channel, msg]
cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
s = socket.create_connection(("127.0.0.1", port), timeout=5)
t = time.time_ns() // 1000
s.sendall(cmd)
reply = s.recv(64).decode().strip()
print(t, "PUBLISH:" + reply.lstrip(":"))
EOF
}
publish_http() {
    timeout 10 python3 - "$@" <<'EOF'
import socket, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
body = open(sys.argv[3], "rb").read()
req = (b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
       b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), len(body))) + body
s = socket.create_connection(("127.0.0.1", port), timeout=5)
t = time.time_ns() // 1000
s.sendall(req)
reply = s.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
print(t, "POST:" + (reply.split(" ")[1] if " " in reply else "none"))
EOF
}

# module_wake PORT: the module's own osago_poll_wake_seconds histogram (a fresh nginx per row, so it
# covers this wake-up only): "count mean_ms p50_le p99_le", percentiles as the bucket bound they fall
# under
module_wake() {
    http_get "$1" /metrics | awk '
        /^osago_poll_wake_seconds_bucket/ {
            match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
            if (!(le in b)) order[++n] = le
            b[le] += $NF
        }
        /^osago_poll_wake_seconds_sum/   { sum += $NF }
        /^osago_poll_wake_seconds_count/ { count += $NF }
        END {
            if (count == 0) { print "0 - - -"; exit }
            p50 = p99 = "-"
            for (i = 1; i <= n; i++) {
                if (p50 == "-" && b[order[i]] >= 0.5 * count) p50 = order[i]
                if (p99 == "-" && b[order[i]] >= 0.99 * count) p99 = order[i]
            }
            printf "%d %.1f %s %s\n", count, sum / count * 1000, p50, p99
        }'
}

# wake_stats ARRIVALS PUBLISH_US: "p50_ms p99_ms max_ms answered_before_publish" over the 200s
wake_stats() {
    awk -v pub="$2" '$1 == 200 { print $2 - pub }' "$1" | sort -n | awk '
        { v[++n] = $1; if ($1 < 0) early++ }
        END {
            if (n == 0) { print "- - - 0"; exit }
            i50 = int(0.50 * n); if (i50 < 0.50 * n) i50++
            i99 = int(0.99 * n); if (i99 < 0.99 * n) i99++
            printf "%.1f %.1f %.1f %d\n", v[i50] / 1000, v[i99] / 1000, v[n] / 1000, early + 0
        }'
}

# ---------------------------------------------------------------------------------------------
# One step: SERVER N. Results in R_*[SERVER-N].

declare -A R_REACHED R_PARKED R_PARK_S R_IDLE R_BUSY R_PIDLE R_PBUSY R_P50 R_P99 R_MAX R_EARLY \
    R_STATUS R_ERRORS R_PUB R_NOTE R_WORKERS R_PARKERS R_SPREAD R_MWAKE

run_step() {
    local srv=$1 n=$2 tag=$1-$2 p=$WORK/$1-$2 port id path pubinfo pub_us i c t0 rc
    local ptimeout
    # connecting at PER_MS per ms, then the bounded waits for parking and waking, plus slack
    ptimeout=$((n / (PER_MS * 1000) + PARK_WAIT + WAKE_WAIT + 30))
    R_WORKERS[$tag]=$(workers_for "$n")
    mkdir -p "$p/tmp" "$p/html"
    port=$(free_port)
    id=$(new_uuid)
    if [ "$srv" = osago ]; then
        rcli HSET "osago:app:$id" doc "$(doc "$id" 1000 in_progress pending)" owner "$PARTNER" \
            updated_at 1000 >/dev/null
        path="/osago/application/$id?latest=1000"
        write_conf_osago "$p" "$n" "$port"
    else
        path="/sub/$id"
        write_conf_nchan "$p" "$n" "$port"
    fi
    doc "$id" 2000 completed ok > "$p/doc2000.json"

    log "$tag: nginx with ${R_WORKERS[$tag]} workers on 127.0.0.1:$port, $n connections"
    "$NGINX" -p "$p/" -c "$p/nginx.conf" </dev/null &
    NGX_PID=$!
    for ((i = 0; i < 50; i++)); do
        kill -0 "$NGX_PID" 2>/dev/null || { R_NOTE[$tag]="nginx exited at start: $(tail -3 "$p/error.log" | tr '\n' ' ')"; NGX_PID=; return; }
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    # a probe the server must answer at once (osago: no `latest`, so no parking)
    if [ "$srv" = osago ]; then
        c=$(curl -s -o "$RAW/$tag-probe.json" -w '%{http_code}' --max-time 5 -H "X-API-Key: $KEY" \
            "http://127.0.0.1:$port/osago/application/$id" || true)
        [ "$c" = 200 ] || log "$tag: probe GET without latest answered '$c', not 200 ($(head -c 200 "$RAW/$tag-probe.json" 2>/dev/null))"
    fi
    [ "$(parked_count "$srv" "$port")" = 0 ] \
        || log "$tag: the parked count is '$(parked_count "$srv" "$port")' before any request"
    sleep 1
    R_IDLE[$tag]=$(mem_kib VmRSS)
    R_PIDLE[$tag]=$(mem_kib Pss)

    # N sockets over as few parker processes as the descriptor limit allows, each with its own
    # source addresses (one per 10,000 connections, plus one) and its share of the connect rate
    local nparkers=$(( (n + PER_PROC - 1) / PER_PROC )) j nj srcs first=2 rate
    rate=$(awk -v r="$PER_MS" -v k="$nparkers" 'BEGIN { printf "%.3f", r / k }')
    R_PARKERS[$tag]=$nparkers
    PARKER_PIDS=()
    t0=$(date +%s%N)
    for ((j = 0; j < nparkers; j++)); do
        nj=$(( n / nparkers + (j < n % nparkers ? 1 : 0) ))
        srcs=$(( nj / 10000 + 1 ))
        "$PARKER" -n "$nj" -p "$path" -H "X-API-Key: $KEY" -s "$srcs" -b "$first" -c "$rate" \
            -t "$ptimeout" -r "$p/ready.$j" -o "$p/arrivals.$j" "127.0.0.1:$port" \
            > "$RAW/$tag-parker.$j.txt" 2> "$RAW/$tag-parker.$j.log" &
        PARKER_PIDS+=($!)
        first=$((first + srcs))
    done

    # every request written (bounded by parker's own clock: it writes the file, or exits)
    for ((j = 0; j < nparkers; j++)); do
        while [ ! -f "$p/ready.$j" ] && kill -0 "${PARKER_PIDS[$j]}" 2>/dev/null; do sleep 0.1; done
    done
    # the server reports N parked: at most PARK_WAIT s
    R_PARKED[$tag]=-
    for ((i = 0; i < PARK_WAIT * 5; i++)); do
        c=$(parked_count "$srv" "$port")
        R_PARKED[$tag]=$c
        [ "$c" = "$n" ] && break
        kill -0 "${PARKER_PIDS[0]}" 2>/dev/null || break
        sleep 0.2
    done
    R_PARK_S[$tag]=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    if [ "${R_PARKED[$tag]}" = "$n" ]; then R_REACHED[$tag]=yes; else R_REACHED[$tag]=no; fi
    log "$tag: parked ${R_PARKED[$tag]} of $n after ${R_PARK_S[$tag]} s ($(cat "$p"/ready.* 2>/dev/null | tr '\n' ' '))"
    sleep 1     # let allocations settle before reading memory
    R_BUSY[$tag]=$(mem_kib VmRSS)
    R_PBUSY[$tag]=$(mem_kib Pss)
    R_SPREAD[$tag]=$(worker_conns)

    if [ "$srv" = osago ]; then
        rcli HSET "osago:app:$id" doc "$(cat "$p/doc2000.json")" updated_at 2000 >/dev/null
        pubinfo=$(publish_redis "$REDIS_PORT" osago:app-updates "$id 2000" || echo "0 PUBLISH:failed")
    else
        pubinfo=$(publish_http "$port" "/pub/$id" "$p/doc2000.json" || echo "0 POST:failed")
    fi
    pub_us=${pubinfo%% *}
    R_PUB[$tag]=${pubinfo#* }
    log "$tag: published (${R_PUB[$tag]}), waiting for the answers"

    # each parker stops by itself once its connections have their answers, or at its -t
    for ((j = 0; j < nparkers; j++)); do
        rc=0
        wait "${PARKER_PIDS[$j]}" || rc=$?
        [ "$rc" -le 1 ] || log "$tag: parker $j exited with $rc ($(tail -2 "$RAW/$tag-parker.$j.log" | tr '\n' ' '))"
    done
    PARKER_PIDS=()
    cat "$p"/arrivals.* > "$RAW/$tag-arrivals.txt" 2>/dev/null || true
    local res
    # the parkers' RESULT lines added up
    res=$(cat "$RAW/$tag"-parker.*.txt 2>/dev/null | awk '/^RESULT / {
            for (i = 2; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] == "statuses") {
                    m = split(kv[2], st, ",")
                    for (x = 1; x <= m; x++) { split(st[x], sc, ":"); if (sc[1] != "-") sum["st " sc[1]] += sc[2] }
                } else {
                    if (!(kv[1] in sum)) order[++n] = kv[1]
                    sum[kv[1]] += kv[2]
                }
            }
            got = 1
        }
        END {
            if (!got) exit
            line = "RESULT"
            for (i = 1; i <= n; i++) line = line " " order[i] "=" sum[order[i]]
            sts = ""
            for (k in sum) if (k ~ /^st /) sts = sts (sts ? "," : "") substr(k, 4) ":" sum[k]
            print line " statuses=" (sts ? sts : "-")
        }')
    R_STATUS[$tag]=$(sed -n 's/.* statuses=\([^ ]*\).*/\1/p' <<<"$res")
    R_ERRORS[$tag]=$(awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "=")
        if (kv[1] ~ /^(refused|addrnotavail|connect_failed|closed|bad_response|timeout)$/ && kv[2] > 0)
            s = s (s ? "," : "") kv[1] ":" kv[2] } } END { print s ? s : "0" }' <<<"$res")
    [ -n "$res" ] || R_ERRORS[$tag]="no parker result"
    read -r "R_P50[$tag]" "R_P99[$tag]" "R_MAX[$tag]" "R_EARLY[$tag]" \
        < <(wake_stats "$RAW/$tag-arrivals.txt" "$pub_us" 2>/dev/null || echo "- - - 0")
    log "$tag: ${res:-no RESULT from parker}"
    [ "$srv" = osago ] && R_MWAKE[$tag]=$(module_wake "$port")

    stop_pid "$NGX_PID" TERM
    NGX_PID=
    cp "$p/error.log" "$RAW/$tag-error.log" 2>/dev/null || true
    cp "$p/nginx.conf" "$RAW/$tag-nginx.conf"
    rm -rf "$p"
}

# ---------------------------------------------------------------------------------------------
# The run.

declare -A SKIP
for srv in $SERVERS; do
    why=$(check_conf "$srv")
    if [ -n "$why" ]; then
        SKIP[$srv]=$why
        log "$srv rows skipped: $why"
    fi
done

START=$(date +%s)
k=0
for n in $COUNTS; do
    order=$SERVERS
    # alternate which server goes first
    [ $((k % 2)) = 1 ] && order=$(tr ' ' '\n' <<<"$SERVERS" | tac | tr '\n' ' ')
    k=$((k + 1))
    for srv in $order; do
        [ -n "${SKIP[$srv]:-}" ] && continue
        run_step "$srv" "$n"
        sleep 2      # TIME_WAITs and the last FINs out of the way
    done
done
ELAPSED=$(( $(date +%s) - START ))

# ---------------------------------------------------------------------------------------------
# Report.

le_ms() {   # a histogram bound in seconds -> "≤ X ms"
    case $1 in
        -) printf '—' ;;
        +Inf) printf '> last bucket' ;;
        *) awk -v v="$1" 'BEGIN { printf "≤ %g ms", v * 1000 }' ;;
    esac
}
mib() { awk -v v="${1:-0}" 'BEGIN { printf "%.1f", v / 1024 }'; }
per() { awk -v a="${1:-0}" -v b="${2:-0}" -v n="$3" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / n; else print "—" }'; }
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a != "" && a != "-" && a != "—" && b + 0 > 0) printf "%.2f", a / b; else printf "—" }'; }
declare -A KPR KPP

nginx_v=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')
redis_v=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
nchan_v=$(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo unknown)
if [ -z "${SKIP[osago]:-}" ] && [[ " $SERVERS " == *" osago "* ]]; then
    mod_desc="\`$MODULE\` ($(date -r "$MODULE" '+%Y-%m-%d %H:%M'), sha256 $(sha256sum "$MODULE" | cut -c1-12))"
else
    mod_desc="not measured: ${SKIP[osago]:-not in BENCH_POLL_SERVERS}"
fi

report() {
    cat <<EOF
# Parked long-polls: memory per parked request and wake-up time (bench/poll.sh)

$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM,
Linux $(uname -r), nginx $nginx_v (a fresh instance per row, \`listen ... reuseport\`), Redis
$redis_v, nchan $nchan_v (Debian libnginx-mod-nchan), all on loopback; build/parker (one thread,
epoll; several processes where N sockets exceed one process's descriptor limit) on the same cores.
Descriptor limit per process: $NOFILE (\`ulimit -Hn\`), so a worker holds at most that many
connections: 2 workers where that suffices, more otherwise (the same for both servers).
osago module: $mod_desc. Run time: ${ELAPSED} s.

Each row: build/parker opens N keep-alive connections from 127.0.0.2.. (one source address per
10,000 connections, plus one), at most ${PER_MS} per ms, and sends one GET on each: osago
\`GET /osago/application/{id}?latest=1000\` with the partner's X-API-Key (the read model is at
updated_at 1000, so it parks); nchan \`GET /sub/{id}\` (\`nchan_subscriber longpoll\`, channel through
Redis with \`nchan_redis_pass\`). When the server reports N parked (osago: \`osago_poll_parked\` in
osago_metrics; nchan: \`subscribers\` in nchan_stub_status), memory is read, then one update of the
same ~1 KiB document (10 insurers) is published: osago HSET + \`PUBLISH osago:app-updates "{id} 2000"\`, nchan
\`POST /pub/{id}\`. Wake latency = arrival of each 200 at parker - the moment the publish command was
written. Memory per parked request = (worker RSS with N parked - worker RSS just before) / N, summed
over the workers (the worker_connections arrays are preallocated and in both figures). "workers"
shows the descriptors each worker held while parked; "publish" what the publish got back (osago:
Redis PUBLISH's count of subscribed connections; nchan: the POST's status).

| N | server | workers (fds each) | parked (reached, count) | to park | worker RSS idle → parked | KiB per parked (RSS) | KiB per parked (PSS) | wake p50 | wake p99 | wake max | responses | errors | publish |
| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |
EOF
    local n srv tag
    for n in $COUNTS; do
        for srv in $SERVERS; do
            tag=$srv-$n
            if [ -n "${SKIP[$srv]:-}" ]; then
                printf '| %s | %s | | not measured | | | | | | | | | | |\n' "$n" "$srv"
                continue
            fi
            if [ -n "${R_NOTE[$tag]:-}" ]; then
                printf '| %s | %s | | failed: %s | | | | | | | | | | |\n' "$n" "$srv" "${R_NOTE[$tag]}"
                continue
            fi
            KPR[$tag]=$(per "${R_IDLE[$tag]}" "${R_BUSY[$tag]}" "$n")
            KPP[$tag]=$(per "${R_PIDLE[$tag]}" "${R_PBUSY[$tag]}" "$n")
            printf '| %s | %s | %s (%s) | %s, %s | %s s | %s → %s MiB | %s | %s | %s ms | %s ms | %s ms | %s | %s | %s |\n' \
                "$n" "$srv" "${R_WORKERS[$tag]}" "${R_SPREAD[$tag]}" "${R_REACHED[$tag]}" "${R_PARKED[$tag]}" "${R_PARK_S[$tag]}" \
                "$(mib "${R_IDLE[$tag]}")" "$(mib "${R_BUSY[$tag]}")" "${KPR[$tag]}" "${KPP[$tag]}" \
                "${R_P50[$tag]}" "${R_P99[$tag]}" "${R_MAX[$tag]}" "${R_STATUS[$tag]:-none}" \
                "${R_ERRORS[$tag]:-?}$([ "${R_EARLY[$tag]:-0}" != 0 ] && printf ', %s answered before the publish' "${R_EARLY[$tag]}")" \
                "${R_PUB[$tag]}"
        done
    done
    local parts=""
    for n in $COUNTS; do
        for srv in $SERVERS; do
            [ -n "${R_PARKERS[$srv-$n]:-}" ] && { parts+="${parts:+, }${R_PARKERS[$srv-$n]} for N = $n"; break; }
        done
    done
    echo
    echo "parker processes per row: ${parts:-none}."
    local mw cnt mean p50 p99
    mw=""
    for n in $COUNTS; do
        [ -n "${R_MWAKE[osago-$n]:-}" ] || continue
        read -r cnt mean p50 p99 <<<"${R_MWAKE[osago-$n]}"
        mw+="| $n | $cnt | $mean ms | $(le_ms "$p50") | $(le_ms "$p99") |"$'\n'
    done
    if [ -n "$mw" ]; then
        cat <<EOF

The module's own view of the same wake-ups (\`osago_poll_wake_seconds\`: from the message heard on
osago:app-updates to each answer, inside nginx; no Redis transit, no client side):

| N | woken | mean | p50 | p99 |
| ---: | ---: | ---: | ---: | ---: |
${mw%$'\n'}
EOF
    fi
    cat <<EOF

Target: at least 50,000 parked; memory per parked request and wake p99 no worse than nchan's
(ratio osago/nchan ≤ 1).

| N | KiB per parked, osago/nchan (RSS) | (PSS) | wake p50, osago/nchan | wake p99, osago/nchan |
| ---: | ---: | ---: | ---: | ---: |
EOF
    for n in $COUNTS; do
        printf '| %s | %s | %s | %s | %s |\n' "$n" \
            "$(ratio "${KPR[osago-$n]:-}" "${KPR[nchan-$n]:-}")" "$(ratio "${KPP[osago-$n]:-}" "${KPP[nchan-$n]:-}")" \
            "$(ratio "${R_P50[osago-$n]:-}" "${R_P50[nchan-$n]:-}")" "$(ratio "${R_P99[osago-$n]:-}" "${R_P99[nchan-$n]:-}")"
    done
    echo
    echo "Raw files (parker output, arrival times, nginx configurations and error logs): \`$RAW/\`."
}

report > "$OUT.new"
mv "$OUT.new" "$OUT"
cat "$OUT"
log "report written to $OUT"
