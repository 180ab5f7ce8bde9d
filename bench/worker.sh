#!/usr/bin/env bash
# bench/worker.sh: applications per second from the intake stream to `completed`, and the worker's
# own added latency, with 10 simulated insurers. INSURER_MS=LO-HI (default 50-200, issue #4's
# scenario): each call answered in a time drawn from that range; INSURER_MS=N: every insurer in
# exactly N ms (the earlier sessions' runs, with 100).
#
# Starts its own Redis, PostgreSQL (initdb in a temp dir), devbroker, insurer-sim and one
# osago-worker (non-sanitizer build) on free loopback ports; bench/inject.pl appends RATE
# applications/s for SECONDS to osago:intake the way the edge does. An application's latency is
# applications.updated_at (completed) minus the time it was appended; the worker's added latency is
# that minus INSURER_MS (every insurer answers in exactly that), or with a range minus the slowest
# of its insurer calls as insurer-sim timed it. With SOAK_SECONDS the injection
# runs that long and the worker's RSS and malloc's bytes in use are sampled every 30 s (memory must
# stay flat).
# Writes build/bench/worker.md. Kills only what it started.
#
# Knobs: BENCH_RATE, BENCH_SECONDS, SOAK_SECONDS, INSURER_MS, INSURERS, BENCH_WARMUP,
# BENCH_FETCH_WAIT_MS (the worker's default unless set), BENCH_MAX_IN_FLIGHT (1024: 500/s x 10 calls x 125 ms on average need 625),
# BENCH_SIM_OPTS (default --threads 1: one MHD thread costs the least CPU per call on 2 cores),
# BENCH_WORKER_OPTS, BENCH_BROKER_OPTS (devbroker's, e.g. --partitions 1), BENCH_PG_OPTS, BENCH_PG_STATEMENTS=1 (pg_stat_statements per application, WAL included),
# BENCH_PG_SQL (SQL run as the osago role after the migrations, in one transaction: a schema change to try), BENCH_KEEP_LOGS=DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${OSAGO_BUILD:-$ROOT/build}
RATE=${BENCH_RATE:-500}
SECS=${SOAK_SECONDS:-${BENCH_SECONDS:-20}}
INSURER_MS=${INSURER_MS:-50-200}
case $INSURER_MS in
    *-*) FIXED_MS= SIM_LATENCY=$INSURER_MS
         INSURER_WORDS="$INSURER_MS ms (each call drawn from the range; the added latency subtracts each application's slowest call as insurer-sim timed it)" ;;
    *)   FIXED_MS=$INSURER_MS SIM_LATENCY=$INSURER_MS-$INSURER_MS
         INSURER_WORDS="exactly $INSURER_MS ms" ;;
esac
INSURERS=${INSURERS:-alfa,ingos,reso,vsk,rgs,sogaz,zetta,sber,tinkoff,renins}
WARMUP=${BENCH_WARMUP:-3}   # seconds of injection left out of the latency figures (cold start)
OUT=$BUILD/bench/worker.md
PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -1)

for b in osago-worker devbroker insurer-sim; do
    [ -x "$BUILD/$b" ] || { echo "bench/worker: $BUILD/$b missing (make all)" >&2; exit 1; }
done

# below the ephemeral range (32768+): devbroker and the mock bind ephemeral ports of their own
# after these are picked, and a port picked there could be taken before its server starts
free_port() { python3 -c '
import random, socket
while True:
    p = random.randint(20000, 32000); s = socket.socket()
    try: s.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass
    finally: s.close()'; }
WORK=$(mktemp -d /tmp/osago-bench-worker.XXXXXX)
chmod 755 "$WORK"
RP=$(free_port); PP=$(free_port); KP=$(free_port); SP=$(free_port); HP=$(free_port); CP=$(free_port)
PIDS=()
PG_UP=

cleanup() {
    local p
    # one at a time, last started first: the worker stops while Kafka, Redis and PostgreSQL are
    # still there (stopped together, it would wait on a broker that is gone)
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        p=${PIDS[$i]}
        kill -TERM "$p" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null && echo "bench/worker: pid $p did not stop in 10 s, killed" >&2
    done
    [ -n "$PG_UP" ] && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1
    [ -n "${BENCH_KEEP_LOGS:-}" ] && cp "$WORK/pg/log" "$WORK/worker.log" "$WORK/stages" "$WORK/latencies" "$WORK/cpustat" "$BENCH_KEEP_LOGS/" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_for() {  # file pattern
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "bench/worker: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
REDIS_PID=$!
mkdir -p "$WORK/pg" && chown postgres: "$WORK/pg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg/data" -A trust -U postgres --no-sync -E UTF8 --locale C >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -w -l "$WORK/pg/log" \
    -o "-c listen_addresses=127.0.0.1 -p $PP -k $WORK/pg -c fsync=off -c max_connections=50 ${BENCH_PG_OPTS:-} \
        ${BENCH_PG_STATEMENTS:+-c shared_preload_libraries=pg_stat_statements}" start >/dev/null
PG_UP=1
"$PG_BIN/psql" -h 127.0.0.1 -p "$PP" -U postgres -qc "CREATE ROLE osago LOGIN" -c "CREATE DATABASE osago OWNER osago"
[ -n "${BENCH_PG_STATEMENTS:-}" ] &&
    "$PG_BIN/psql" -h 127.0.0.1 -p "$PP" -U postgres -d osago -qc "CREATE EXTENSION pg_stat_statements"
PG="host=127.0.0.1 port=$PP dbname=osago user=osago"

"$BUILD/devbroker" --listen "127.0.0.1:$KP" --control "127.0.0.1:$CP" ${BENCH_BROKER_OPTS:-} >"$WORK/devbroker.log" 2>&1 &
PIDS+=($!)
BROKER_PID=$!
wait_for "$WORK/devbroker.log" 'devbroker: ready'
"$BUILD/insurer-sim" --listen "127.0.0.1:$SP" --insurers "$INSURERS" \
    --latency-ms "$SIM_LATENCY" --write-insurers "$WORK/insurers.json" \
    --timing-log "$WORK/sim-timing" ${BENCH_SIM_OPTS:---threads 1} >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
SIM_PID=$!
wait_for "$WORK/sim.log" 'insurer-sim: ready'
"$BUILD/osago-worker" migrate --pg "$PG" --migrations "$ROOT/worker/migrations" 2>>"$WORK/worker.log"
psqlq() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PP" -U osago -d osago -Atq -c "$1"; }
# an experiment's change to the schema, as the osago role, in one transaction, before the worker
# prepares its statements
[ -n "${BENCH_PG_SQL:-}" ] && psqlq "$BENCH_PG_SQL" >/dev/null
"$BUILD/osago-worker" run --kafka "127.0.0.1:$KP" --redis "127.0.0.1:$RP" --pg "$PG" \
    --insurers "$WORK/insurers.json" --http "127.0.0.1:$HP" --max-in-flight "${BENCH_MAX_IN_FLIGHT:-1024}" \
    --log-level warn --kafka-session-timeout-ms 6000 ${BENCH_FETCH_WAIT_MS:+--kafka-fetch-wait-ms $BENCH_FETCH_WAIT_MS} ${BENCH_WORKER_OPTS:-} 2>>"$WORK/worker.log" &
WPID=$!
PIDS+=("$WPID")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.2; done
sleep 5    # the consumer groups' first join (the mock takes a few seconds)

rss() { awk '/VmRSS/ {print $2}' "/proc/$WPID/status"; }
# malloc's bytes in use (KiB), from the worker's /metrics: flat while RSS grows is fragmentation
heap() { curl -s "http://127.0.0.1:$HP/metrics" | awk '/^osago_worker_heap_in_use_bytes / { print int($2 / 1024) }'; }
# CPU seconds: the worker's (utime + stime), and the whole machine's busy time; per application
# they compare runs on a noisy machine better than throughput does
cpu_worker() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$WPID/stat"; }
cpu_machine() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }
# CPU ticks by component: the worker's threads by name (librdkafka's together), PostgreSQL
# (the postmaster's children), devbroker, insurer-sim, Redis
# /proc/PID/stat lines as "pid name state ppid ...", the name (which may hold spaces) in one
# field: utime and stime are then $14 and $15
# (a process may exit between the glob and the read: sed then fails, which must not end the run)
proc_stat() { sed -E 's/^([0-9]+) \((.*)\) /\1 \2 /' "$@" 2>/dev/null || true; }
cpu_components() {
    local pm
    pm=$(head -1 "$WORK/pg/data/postmaster.pid")
    {
        proc_stat "/proc/$WPID/task/"*/stat |
            awk '{ n = $2; if (n ~ /^rdk:/) n = "librdkafka"; else if (n !~ /^w:/) n = "w:other"
                   print n, $14 + $15 }'
        proc_stat /proc/[0-9]*/stat | awk -v pm="$pm" '$1 == pm || $4 == pm { print "PostgreSQL", $14 + $15 }'
        for pair in "devbroker:$BROKER_PID" "insurer-sim:$SIM_PID" "Redis:$REDIS_PID"; do
            [ -r "/proc/${pair#*:}/stat" ] &&
                proc_stat "/proc/${pair#*:}/stat" | awk -v n="${pair%%:*}" '{ print n, $14 + $15 }'
        done
    } | awk '{ t[$1] += $2 } END { for (k in t) print k, t[k] }'
}
# devbroker's counters ("requests=N produces=N fetches=N ..."): the Kafka round trips the
# stack makes, the part of its CPU that batching decides
broker_stats() { python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"stats\n"); print(s.makefile().readline().strip())' "$CP"; }
RSS0=$(rss)
BROKER0=$(broker_stats)
CPUW0=$(cpu_worker); CPUM0=$(cpu_machine)
cpu_components > "$WORK/cpu0"
SAMPLES="$RSS0"
HEAP0=$(heap); HEAPS="$HEAP0"
# PostgreSQL's WAL per application: the work its writes cost, which host noise does not move
WAL0=$(psqlq "SELECT pg_current_wal_lsn()")
perl "$ROOT/bench/inject.pl" "$RP" "$RATE" "$SECS" "$WORK/injected" > "$WORK/inject.out" &
INJ=$!
PIDS+=("$INJ")
# the machine's busy and total jiffies once a second while injecting: a tail that follows the
# cores filling up (rather than one event) shows in the windows below
while kill -0 "$INJ" 2>/dev/null; do
    awk -v ms="$(date +%s%3N)" '/^cpu / { printf "%s %.0f %.0f\n", ms, $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
    sleep 1
done > "$WORK/cpustat" &
PIDS+=($!)
while kill -0 "$INJ" 2>/dev/null; do
    sleep 30 & wait $! || true
    kill -0 "$INJ" 2>/dev/null && SAMPLES="$SAMPLES $(rss)" && HEAPS="$HEAPS $(heap)"
done
N=$(wc -l < "$WORK/injected")
for _ in $(seq 600); do
    [ "$(psqlq "SELECT count(*) FROM applications WHERE status = 'completed'")" -ge "$N" ] && break
    sleep 0.2
done
RSS1=$(rss); HEAP1=$(heap)
# the worker's metrics once the run is drained: the histograms below all read this one scrape
METRICS1=$(curl -s "http://127.0.0.1:$HP/metrics")
# "N <what>, mean M ms; within <bound> P %, ..." from histogram NAME of that scrape, with the
# mean's and the shares' printf formats and the bounds (ms) to give shares for
hist_shares() {
    local name=$1 what=$2 mean_fmt=$3 share_fmt=$4
    shift 4
    awk -v name="$name" -v what="$what" -v mf="$mean_fmt" -v sf="$share_fmt" -v bounds="$*" '
        BEGIN { nb = split(bounds, le, " ") }
        index($1, "osago_worker_" name "_bucket{") == 1 {
            match($1, /le="[^"]+"/); b[substr($1, RSTART + 4, RLENGTH - 5)] = $2 }
        $1 == "osago_worker_" name "_sum" { s = $2 }
        $1 == "osago_worker_" name "_count" { n = $2 }
        END { if (n == 0) { print "-"; exit }
              printf "%d %s, mean " mf " ms;", n, what, s / n
              for (i = 1; i <= nb; i++)
                  printf "%s %s " sf " %%", (i == 1 ? " within" : ","),
                         (le[i] % 1000 == 0 ? le[i] / 1000 " s" : le[i] " ms"), b[le[i]] * 100 / n }' \
        <<<"$METRICS1"
}
# the insurer calls as the executor timed them (curl, request to answer): the nominal time plus
# what a saturated machine adds to the simulated insurer
CALL_MS=$(awk '/^osago_worker_insurer_call_ms_sum / { s = $2 }
    /^osago_worker_insurer_call_ms_count / { n = $2 } END { if (n > 0) printf "%.1f", s / n; else print "-" }' \
    <<<"$METRICS1")
# how long the worker's produces waited for Kafka's confirmation: what a role that waits for it
# (relay, orchestrator) adds per batch
CONFIRM=$(hist_shares kafka_confirm_ms batches %.1f %.0f 5 10 20 50)
# the same applications as the worker's own histogram sees them (its SLO metric), whole run
APP_HIST=$(hist_shares application_ms applications %.0f %.1f 200 500 1000)
WAL1=$(psqlq "SELECT pg_current_wal_lsn()")
cpu_components > "$WORK/cpu1"
BROKER1=$(broker_stats)
# insurer-sim writes its timing log out as it stops
kill -TERM "$SIM_PID" && wait "$SIM_PID" || true
# ms per application, largest first
COMPONENTS=$(awk -v n="$N" -v hz="$(getconf CLK_TCK)" '
    NR == FNR { t0[$1] = $2; next }
    { d = ($2 - t0[$1]) * 1000 / hz / n; if (d >= 0.005) printf "%.2f %s\n", d, $1 }' \
    "$WORK/cpu0" "$WORK/cpu1" | sort -rn | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
CPUW=$(awk -v a="$CPUW0" -v b="$(cpu_worker)" 'BEGIN { printf "%.2f", b - a }')
CPUM=$(awk -v a="$CPUM0" -v b="$(cpu_machine)" 'BEGIN { printf "%.2f", b - a }')
psqlq "SELECT id, (extract(epoch FROM updated_at) * 1000)::bigint FROM applications WHERE status = 'completed'" \
    | tr '|' ' ' > "$WORK/completed"
ERRS=$(psqlq "SELECT count(*) FROM quotes WHERE status <> 'ok'")
# updates that stayed on their page (HOT) write no index entry: the share says what the writes cost
HOT=$(psqlq "SELECT string_agg(relname || ' ' || n_tup_upd || ' updates, ' ||
                              round(100.0 * n_tup_hot_upd / greatest(n_tup_upd, 1)) || ' % HOT', '; '
                              ORDER BY relname)
             FROM pg_stat_user_tables WHERE relname IN ('applications', 'quotes')")
# a consumer that fell further behind than the stand-in keeps (librdkafka's OFFSET warning)
OFFSET_RESETS=$(grep -c 'Offset out of range' "$WORK/worker.log" || true)
# why, when some did not end ok (a benchmark with errors measures something else)
ERR_REASONS=$(psqlq "SELECT count(*) || ' × ' || status || ': ' || coalesce(left(error, 120), '-')
                     FROM quotes WHERE status <> 'ok' GROUP BY status, left(error, 120)
                     ORDER BY count(*) DESC LIMIT 5")
if [ -n "${BENCH_PG_STATEMENTS:-}" ]; then   # what PostgreSQL spent its time on, per application
    "$PG_BIN/psql" -h 127.0.0.1 -p "$PP" -U postgres -d osago -q -c "SELECT calls,
        round((total_exec_time + total_plan_time)::numeric * 1000 / $N, 1) AS us_per_app,
        round((total_exec_time / nullif(calls, 0))::numeric, 3) AS ms_per_call,
        round((total_plan_time / nullif(plans, 0))::numeric, 3) AS plan_ms, plans, rows,
        round(wal_bytes / $N) AS wal_per_app,
        left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
        FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 15" >"$WORK/pg_statements"
fi
RETRIES=$(psqlq "SELECT count(*) FROM quotes WHERE attempt > 1")

# where the time goes: each event's Kafka timestamp (taken when it was produced) per application
stage_times() {  # topic, earliest|latest -> "id ms" per application
    kcat -C -b "127.0.0.1:$KP" -t "$1" -e -q -f '%k %T\n' 2>/dev/null |
        awk -v pick="$2" '{ if (!($1 in t) || (pick == "latest" ? $2 > t[$1] : $2 < t[$1])) t[$1] = $2 }
                          END { for (k in t) print k, t[k] }'
}
stage_times osago.application.created earliest > "$WORK/t_created"
stage_times osago.application.task earliest > "$WORK/t_task"
stage_times osago.application.task-result latest > "$WORK/t_result"
# each application's slowest insurer call, request in to answer out, as insurer-sim timed it
awk '{ d = $4 - $3; if (!($1 in t) || d > t[$1]) t[$1] = d } END { for (k in t) print k, t[k] }' \
    "$WORK/sim-timing" > "$WORK/slowest"
# what "added" subtracts per application: the set time, or with a range its slowest call
if [ -n "$FIXED_MS" ]; then
    awk -v ms="$FIXED_MS" '{ print $1, ms }' "$WORK/injected" > "$WORK/insurer_time"
else
    cp "$WORK/slowest" "$WORK/insurer_time"
fi
T0=$(awk 'NR == 1 || $2 < t { t = $2 } END { print t }' "$WORK/injected")
SINCE=$((T0 + WARMUP * 1000))
awk -v since="$SINCE" '
    FILENAME ~ /insurer_time$/ { ins[$1] = $2; next }
    FILENAME ~ /injected$/ { if ($2 >= since) a[$1] = $2; next }
    FILENAME ~ /t_created$/ { b[$1] = $2; next }
    FILENAME ~ /t_task$/ { c[$1] = $2; next }
    FILENAME ~ /t_result$/ { d[$1] = $2; next }
    ($1 in a) && ($1 in b) && ($1 in c) && ($1 in d) && ($1 in ins) {
        print b[$1] - a[$1], c[$1] - b[$1], d[$1] - c[$1] - ins[$1], $2 - d[$1]
    }' "$WORK/insurer_time" "$WORK/injected" "$WORK/t_created" "$WORK/t_task" "$WORK/t_result" \
    "$WORK/completed" \
    > "$WORK/stages"
pct() {  # numbers on stdin -> "p50 / p99", or "-"
    sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
                                        k = int(NR * .99) + 1; if (k > NR) k = NR
                                        print v[int(NR * .5) + 1] " / " v[k] }'
}
pcts() { echo "$(cut -d' ' -f"$1" "$WORK/stages" | pct) ms"; }   # column -> "p50 / p99 ms"
STAGES="relay (intake → Created) $(pcts 1); orchestrator (Created → first Task) $(pcts 2); \
executor (first Task → last result, minus the insurer) $(pcts 3); results (last result → \
completed) $(pcts 4); p50 / p99 over $(wc -l < "$WORK/stages") applications"

# latency, injected, completed, added (the latency minus the application's insurer time), id
awk 'FILENAME ~ /insurer_time$/ { ins[$1] = $2; next }
     FILENAME ~ /injected$/ { t[$1] = $2; next }
     ($1 in t) && ($1 in ins) { print $2 - t[$1], t[$1], $2, $2 - t[$1] - ins[$1], $1 }' \
    "$WORK/insurer_time" "$WORK/injected" "$WORK/completed" | sort -n > "$WORK/latencies"
# throughput over every application; latency over those injected after the warm-up
STATS=$(awk -v since="$SINCE" '
    { if (first == "" || $2 < first) first = $2; if ($3 > last) last = $3; all++
      if ($2 >= since) lat[++n] = $1 }
    END {
        if (all == 0 || n == 0) { print "0 0 0 0"; exit }
        p50 = lat[int(n * 0.50) + 1]; p99 = lat[int(n * 0.99) + 1]; if (p99 == "") p99 = lat[n]
        span = (last - first) / 1000; if (span <= 0) span = 1
        printf "%d %.1f %d %d\n", all, all / span, p50, p99
    }' "$WORK/latencies")
read -r DONE APS P50 P99 <<<"$STATS"
ADDED=$(awk -v since="$SINCE" '$2 >= since { print $4 }' "$WORK/latencies" | pct)
[ "$ADDED" = "-" ] && ADDED="0 / 0"
# "minus the slowest insurer's time" with the insurers' time as insurer-sim measured it
# (request in to answer out): on a saturated machine the simulated insurers slow down too,
# and with a set time the table's figures charge that to the worker (with a range, the table
# already subtracts that)
SIM_OWN=$(awk '{ print $4 - $3 }' "$WORK/sim-timing" | pct)
[ -n "$FIXED_MS" ] && ADDED_OWN=$(awk -v since="$SINCE" '
    FILENAME ~ /slowest$/ { s[$1] = $2; next }
    FILENAME ~ /injected$/ { if ($2 >= since) a[$1] = $2; next }
    ($1 in a) && ($1 in s) { print $2 - a[$1] - s[$1] }' \
    "$WORK/slowest" "$WORK/injected" "$WORK/completed" | pct)
# the added latency by when the application was injected, 10 s at a time: a tail that grows
# through a run (the Kafka stand-in's log filling up, docs/BENCHMARKS.md) shows here
BY_WINDOW=$(awk -v t0="$T0" -v since="$SINCE" \
        '$2 >= since { print int(($2 - t0) / 10000), $4 }' "$WORK/latencies" |
    sort -k1,1n -k2,2n | awk '
    function flush(  k) { k = int(n * .99) + 1; if (k > n) k = n
                          printf "%s%d–%d s %d / %d ms", (out++ ? ", " : ""), w * 10, w * 10 + 10,
                                 v[int(n * .5) + 1], v[k] }
    NR > 1 && $1 != w { flush(); n = 0 }
    { w = $1; v[++n] = $2 }
    END { if (n) flush() }')
# the machine's busy share over the same 10-s windows (of wall time from the first injection)
BUSY_BY_WINDOW=$(awk -v t0="$T0" 'NR > 1 && $3 > t && (m + $1) / 2 >= t0 { w = int(((m + $1) / 2 - t0) / 10000); b[w] += $2 - u; a[w] += $3 - t; if (w > n) n = w }
    { m = $1; u = $2; t = $3 }
    END { for (i = 0; i <= n; i++) if (a[i] > 0) printf "%s%d–%d s %.0f %%", (k++ ? ", " : ""), i * 10, i * 10 + 10, b[i] * 100 / a[i] }' \
    "$WORK/cpustat")
# applications completed in each second after the first injection: a stall shows as a gap
TIMELINE=$(awk -v t0="$T0" '{ s = int(($3 - t0) / 1000); c[s]++; if (s > m) m = s }
    END { for (i = 0; i <= m; i++) printf "%s%d", (i ? " " : ""), c[i] + 0 }' "$WORK/latencies")

mkdir -p "$(dirname "$OUT")"
{
echo "# Worker benchmark (bench/worker.sh)"
echo
echo "$(date -u '+%F %H:%M') UTC, $(nproc) cores; 1 osago-worker (all roles), devbroker, Redis, PostgreSQL (fsync off), insurer-sim with $(tr ',' '\n' <<<"$INSURERS" | wc -l) insurers answering in $INSURER_WORDS, all on loopback."
echo
echo "Latencies are of the applications injected after the first ${WARMUP} s (the cold start: new connections to the insurers, first plans); throughput counts all."
echo
echo "| offered | applications completed | completed/s | insurer calls/s | p50 intake→completed | p99 | worker's added latency p50 / p99 | quotes not ok | retried |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| $RATE/s × ${SECS}s ($N) | $DONE | $APS | $(awk -v a="$APS" -v n="$(tr ',' '\n' <<<"$INSURERS" | wc -l)" 'BEGIN{printf "%.0f", a*n}') | ${P50} ms | ${P99} ms | ${ADDED} ms | $ERRS | $RETRIES |"
echo
echo "Worker RSS (KiB): start $RSS0, samples every 30 s: $SAMPLES, end $RSS1."
echo
echo "Worker heap in use (KiB, malloc's): start $HEAP0, samples every 30 s: $HEAPS, end $HEAP1."
echo
# least-squares slope of the samples from minute 5 on (the warm-up fills buffers, caches and
# arenas first): what "flat" is judged by in a soak
slope() { awk '{ for (i = 11; i <= NF; i++) { x = (i - 1) / 2; n++; sx += x; sy += $i; sxx += x * x; sxy += x * $i } }
               END { if (n >= 4) printf "%.0f", (n * sxy - sx * sy) / (n * sxx - sx * sx); else print "n/a" }' <<<"$1"; }
[ "$(wc -w <<<"$SAMPLES")" -ge 14 ] &&
    { echo "From minute 5 on (least squares): RSS $(slope "$SAMPLES") KiB/min, heap in use $(slope "$HEAPS") KiB/min."; echo; }
echo "PostgreSQL WAL per application: $(psqlq "SELECT round(pg_wal_lsn_diff('$WAL1', '$WAL0') / $N)") bytes; $HOT."
echo
echo "CPU per application: worker $(awk -v c="$CPUW" -v n="$N" 'BEGIN { printf "%.2f", c * 1000 / n }') ms, whole machine $(awk -v c="$CPUM" -v n="$N" 'BEGIN { printf "%.2f", c * 1000 / n }') ms (worker $CPUW s, machine $CPUM s for $N applications)."
echo
[ -n "$ERR_REASONS" ] && { echo "Quotes not ok:"; echo "$ERR_REASONS" | sed 's/^/- /'; echo; }
[ "$OFFSET_RESETS" -gt 0 ] && {
    echo "**The stand-in dropped events no consumer had read yet:** $OFFSET_RESETS offset resets (\`Offset out of range\`) in the worker's log. devbroker keeps about 5 MB per partition (docs/devbroker.md): a consumer further behind than that skips what was dropped, and the quotes it would have started wait for the sweeper. The figures above are not the pipeline's."
    echo; }
echo "CPU per application by component (ms): $COMPONENTS."
echo
echo "Kafka requests per application (devbroker): $(awk -v n="$N" '
    NR == FNR { for (i = 2; i <= NF; i++) { split($i, kv, "="); a[kv[1]] = kv[2] }; next }
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); d[kv[1]] = kv[2] - a[kv[1]] } }
    END { printf "%.1f (produce %.1f, fetch %.1f, of them held empty %.1f)",
                 d["requests"] / n, d["produces"] / n, d["fetches"] / n, d["held"] / n }' \
    <(echo "$BROKER0") <(echo "$BROKER1"))."
echo
echo "The insurer calls: $INSURER_MS ms set; insurer-sim's own time (request in to answer out) p50 / p99 $SIM_OWN ms; as the executor timed them (curl) mean $CALL_MS ms."
echo
echo "Kafka's confirmation of the worker's produces (whole run): $CONFIRM."
echo
echo "The worker's own \`osago_worker_application_ms\` (acceptance to completed, whole run, warm-up included): $APP_HIST."
echo
[ -n "$FIXED_MS" ] &&
    { echo "Worker's added latency with each application's slowest insurer as insurer-sim timed it (not the $INSURER_MS ms set): p50 / p99 $ADDED_OWN ms."; echo; }
echo "Completed per second from the first injection: $TIMELINE."
echo
echo "Worker's added latency p50 / p99 by when the application was injected (10-s windows from the first injection, the warm-up left out): ${BY_WINDOW:--}."
echo
echo "Machine busy (all $(nproc) cores) in the same 10-s windows: ${BUSY_BY_WINDOW:--}."
echo
echo "Stages: $STAGES"
if [ -s "$WORK/pg_statements" ]; then echo; echo '```'; cat "$WORK/pg_statements"; echo '```'; fi
} | tee "$OUT"
