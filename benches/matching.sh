#!/usr/bin/env bash
# Greedy against batched matching (issue 15), back to back, same seed, same city: each run
# starts a fresh `hail serve` (release build, SQLite in a temporary directory) with one
# matching setting, drives it with `hail sim`, and keeps the simulator's JSON summary.
# Prints one table row per run.
#
#   benches/matching.sh                 # rush hour (demand above supply around hotspots)
#   benches/matching.sh --light         # the default city's light demand
#   SECONDS_PER_RUN=120 benches/matching.sh
#
# Each row: mean and p90 pickup distance of accepted offers, their mean pickup ETA, rides
# completed and their share of requests, and request → first offer (p50 / p99) for the
# requests that had a free driver within 10 km when made and for those that had to wait.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=rush
[ "${1:-}" = "--light" ] && scenario=light
seconds="${SECONDS_PER_RUN:-60}"
seed="${SEED:-42}"
port="${PORT:-18731}"
if [ "$scenario" = rush ]; then
  sim_args=(--drivers 300 --requests-per-min 600 --hotspots gangnam=5,jamsil=2
    --time-scale 8 --cancel-probability 0)
else
  sim_args=(--drivers 200 --requests-per-min 30 --time-scale 8)
fi

cargo build --release --locked -q
hail=target/release/hail
token=matching-bench-operator-token
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

run() { # name matching window_ms
  local name=$1 matching=$2 window=$3
  rm -f "$work"/hail.db*
  HAIL_OPERATOR_TOKEN=$token HAIL_LISTEN=127.0.0.1:$port \
    HAIL_DATABASE_URL="sqlite://$work/hail.db" HAIL_MATCHING=$matching \
    HAIL_BATCH_WINDOW_MS=$window HAIL_SIGNUP_LIMIT_PER_MIN=1000000 \
    HAIL_TRIP_REQUEST_LIMIT_PER_MIN=1000000 HAIL_WRITE_LIMIT_PER_MIN=1000000 \
    HAIL_LOG=warn "$hail" serve >"$work/$name.log" 2>&1 &
  server=$!
  for _ in $(seq 1 50); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.2
  done
  "$hail" sim --server "http://127.0.0.1:$port" --operator-token $token "${sim_args[@]}" \
    --duration "${seconds}s" --drain 0s --seed "$seed" --json 2>/dev/null | tail -n 1 \
    >"$work/$name.json"
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
  python3 - "$name" "$work/$name.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
p = s["pickups"]
def ms(x):
    return "-" if x is None else (f"{x/1000:.2f} s" if x >= 1000 else f"{x:.0f} ms")
free, waited = s["offer_latency_free_ms"], s["offer_latency_waited_ms"]
print(f"| {name} | {p['mean_m']:.0f} m | {p['p90_m']:.0f} m | {p['mean_eta_s']:.0f} s "
      f"| {s['trips_completed']} of {s['trips_requested']} ({100*s['completed_share']:.0f} %) "
      f"| {ms(free['p50'])} / {ms(free['p99'])} ({free['samples']}) "
      f"| {ms(waited['p50'])} / {ms(waited['p99'])} ({waited['samples']}) |")
PY
}

echo "scenario: $scenario (${sim_args[*]}), ${seconds} s of requests each, seed $seed"
echo "| matching | mean pickup | p90 pickup | mean pickup ETA | completed | request → offer, free driver in range: p50 / p99 (n) | waiting for a driver: p50 / p99 (n) |"
echo "|---|---|---|---|---|---|---|"
run "greedy" greedy 1000
run "batch, 1 s window" batch 1000
run "batch, 3 s window" batch 3000
run "greedy (again)" greedy 1000
