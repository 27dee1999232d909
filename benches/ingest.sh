#!/usr/bin/env bash
# Peak ingest of one node (issue 14): location pings a second over WebSockets with JSON,
# against Redis GEOADD with 50 clients measured in the same run. A documented
# long-running command, not part of scripts/test.
#
#   benches/ingest.sh                      # 19,000 drivers, 9.5 pings/s each, 1 per write
#   BURST=10 benches/ingest.sh             # each socket writes its 10 pings at once
#   MESSAGES_PER_S=100 DRIVERS=10000 RATE=30 BURST=10 benches/ingest.sh
#                                          # the per-socket frame budget lifted (server's
#                                          # HAIL_SOCKET_MESSAGES_PER_S): the node, not the policy
#   DRIVERS=5000 SECONDS_MEASURED=10 benches/ingest.sh
#   PERF=1 benches/ingest.sh               # also `perf record -g` the server in the window
#   HAIL=/tmp/hail-before benches/ingest.sh   # another build of hail (serve and load), no build
#
# Everything runs on this machine: a throwaway redis-server (in memory only) on a free
# loopback port, measured with redis-benchmark (50 clients, no pipelining, GEOADD of one
# member each); then a fresh `hail serve` (release, SQLite in a temporary directory,
# signup limits lifted) and `hail load` against it — the load generator shares the
# server's cores. The machine's own Redis (6379) is never used.
set -euo pipefail
cd "$(dirname "$0")/.."

DRIVERS=${DRIVERS:-19000}
RATE=${RATE:-9.5}
MESSAGES_PER_S=${MESSAGES_PER_S:-10}
BURST=${BURST:-1}
SECONDS_MEASURED=${SECONDS_MEASURED:-30}
GEOADDS=${GEOADDS:-2000000}
HAIL=${HAIL:-}

# shellcheck source=benches/common.sh
. benches/common.sh

work=$(mktemp -d /tmp/hail-ingest.XXXXXX)
redis_pid=""
hail_pid=""
cleanup() {
    set +e
    for pid in $hail_pid $redis_pid; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

release_hail
echo "machine: $(nproc) cores; server, load generator and Redis all on it"
echo "load before: $(uptime)"

# Redis GEOADD, 50 clients: one GEOADD of one member (out of 250,000) per request.
start_redis "$work"
geoadd=$(redis-benchmark -p "$redis_port" -c 50 -n "$GEOADDS" -r 250000 --csv \
    GEOADD drivers 127.0276 37.4979 "driver:__rand_int__" | tail -1 | cut -d, -f2 | tr -d '"')
echo "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'): GEOADD, 50 clients: ${geoadd} /s"
kill "$redis_pid"
wait "$redis_pid" 2>/dev/null || true
redis_pid=""

# hail: a fresh node.
port=$(free_port)
token=ingest-bench-operator-token
HAIL_LISTEN=127.0.0.1:$port HAIL_DATABASE_URL="sqlite://$work/hail.db" HAIL_OPERATOR_TOKEN=$token \
    HAIL_SIGNUP_LIMIT_PER_MIN=100000000 HAIL_WRITE_LIMIT_PER_MIN=100000000 HAIL_LOG=warn \
    HAIL_SOCKET_MESSAGES_PER_S=$MESSAGES_PER_S "$HAIL" serve >"$work/serve.log" 2>&1 &
hail_pid=$!
wait_ready "$port"
if [ -n "${PERF:-}" ]; then
    # Starts 10 s after the sockets begin pinging (past a 5 s warm-up), for 10 s.
    (
        while ! grep -q connected "$work/load.err" 2>/dev/null; do sleep 0.5; done
        sleep 10
        perf record -g -p "$hail_pid" -o "${PERF_OUT:-target/ingest.perf.data}" -- sleep 10 \
            >/dev/null 2>&1
    ) &
fi
"$HAIL" load --server "http://127.0.0.1:$port" --operator-token "$token" \
    --drivers "$DRIVERS" --rate "$RATE" --burst "$BURST" --duration "${SECONDS_MEASURED}s" \
    --json 2> >(tee "$work/load.err" >&2) | tee "$work/load.out"
echo "load after: $(uptime)"
echo "server peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$hail_pid/status")"
accepted=$(tail -1 "$work/load.out" | sed -n 's/.*"accepted_pings_per_s":\([0-9.]*\).*/\1/p')
awk -v h="$accepted" -v r="$geoadd" 'BEGIN {
    printf "hail accepted %.0f pings/s; Redis GEOADD %.0f /s; hail/Redis %.2f (goal 3)\n", h, r, h / r
}'
