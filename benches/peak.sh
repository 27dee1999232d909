#!/usr/bin/env bash
# Latency at the process limit (issue 14): one node, 19,000 drivers pinging every second,
# 60 trip requests a second, request → offer on the driver's socket — optionally with an
# operator console's stream open. A documented long-running command, not part of
# scripts/test.
#
#   benches/peak.sh                        # 19,000 drivers, 1 s pings, 60 requests/s, 60 s
#   CONSOLE=1 benches/peak.sh              # the same with an operator console open
#   DRIVERS=5000 SECONDS_MEASURED=20 benches/peak.sh
#   PERF=1 benches/peak.sh                 # also `perf record -g` the server in the window
#   HAIL=/tmp/hail-before benches/peak.sh  # another build of hail (serve and peak), no build
#   KEEP_LOG=/tmp/run1 benches/peak.sh     # keep the server's log (/tmp/run1), the
#                                          # generator's (.gen) and the server's /metrics
#                                          # at the end (.metrics)
#
# A fresh `hail serve` (release, SQLite in a temporary directory, the per-address and
# per-user limits lifted as for every benchmark here: the generator is one address and a
# whole city) and `hail peak` against it, both on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

DRIVERS=${DRIVERS:-19000}
PING_INTERVAL_MS=${PING_INTERVAL_MS:-1000}
REQUESTS_PER_S=${REQUESTS_PER_S:-60}
SECONDS_MEASURED=${SECONDS_MEASURED:-60}
HAIL=${HAIL:-}

# shellcheck source=benches/common.sh
. benches/common.sh

work=$(mktemp -d /tmp/hail-peak.XXXXXX)
hail_pid=""
cleanup() {
    set +e
    if [ -n "$hail_pid" ]; then
        kill "$hail_pid" 2>/dev/null
        wait "$hail_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

release_hail
echo "machine: $(nproc) cores; server and generator both on it"
echo "load before: $(uptime)"

port=$(free_port)
token=peak-bench-operator-token
HAIL_LISTEN=127.0.0.1:$port HAIL_DATABASE_URL="sqlite://$work/hail.db" HAIL_OPERATOR_TOKEN=$token \
    HAIL_SIGNUP_LIMIT_PER_MIN=100000000 HAIL_TRIP_REQUEST_LIMIT_PER_MIN=100000000 \
    HAIL_WRITE_LIMIT_PER_MIN=100000000 HAIL_LOG=warn \
    "$HAIL" serve >"$work/serve.log" 2>&1 &
hail_pid=$!
wait_ready "$port"
if [ -n "${PERF:-}" ]; then
    # Starts 10 s into the measured window, for 15 s.
    (
        for _ in $(seq 1200); do
            grep -q "requests/s for" "$work/peak.err" 2>/dev/null && break
            kill -0 "$hail_pid" 2>/dev/null || exit 0
            sleep 0.5
        done
        sleep 15
        perf record -e cpu-clock -g -p "$hail_pid" -o "${PERF_OUT:-target/peak.perf.data}" \
            -- sleep 15 >/dev/null 2>&1
    ) &
fi
console=()
if [ -n "${CONSOLE:-}" ]; then console=(--console); fi
"$HAIL" peak --server "http://127.0.0.1:$port" --operator-token "$token" \
    --drivers "$DRIVERS" --ping-interval-ms "$PING_INTERVAL_MS" \
    --requests-per-s "$REQUESTS_PER_S" --duration "${SECONDS_MEASURED}s" \
    --server-pid "$hail_pid" "${console[@]}" --json \
    2> >(tee "$work/peak.err" >&2) | tee "$work/peak.out"
[ -n "${KEEP_LOG:-}" ] && curl -s "http://127.0.0.1:$port/metrics" >"$KEEP_LOG.metrics"
echo "load after: $(uptime)"
echo "server peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$hail_pid/status")"
echo "server warnings: $(grep -c . "$work/serve.log")"
[ -n "${KEEP_LOG:-}" ] && cp "$work/serve.log" "$KEEP_LOG" && cp "$work/peak.err" "$KEEP_LOG.gen"
sed "s/^[^ ]* *//" "$work/serve.log" | sort | uniq -c | sort -rn | head -5 || true
