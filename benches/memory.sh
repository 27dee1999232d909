#!/usr/bin/env bash
# Memory per connected driver (issue 14): the server's resident memory before any driver
# and with N drivers connected and pinging (socket, fleet slot, hub channel, everything),
# divided by N. Release build, SQLite store, simulator on the same machine.
#
#   benches/memory.sh            # 10,000 drivers
#   DRIVERS=19000 benches/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
drivers="${DRIVERS:-10000}"
port="${PORT:-18751}"
cargo build --release --locked -q
hail=target/release/hail
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
token=memory-bench-operator-token
HAIL_OPERATOR_TOKEN=$token HAIL_LISTEN=127.0.0.1:$port HAIL_DATABASE_URL="sqlite://$work/hail.db" \
  HAIL_SIGNUP_LIMIT_PER_MIN=1000000 HAIL_WRITE_LIMIT_PER_MIN=1000000 HAIL_LOG=warn \
  "$hail" serve >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
before=$(rss)
"$hail" sim --server "http://127.0.0.1:$port" --operator-token $token --drivers "$drivers" \
  --ping-interval-ms 4000 --requests-per-min 0 --duration 40s --drain 0s >/dev/null 2>&1 &
sim=$!
# Sample while the whole fleet is connected (the simulator waits for it before its 40 s).
peak=0
while kill -0 $sim 2>/dev/null; do
  now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
  sleep 1
done
connected=$(curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/ops/snapshot" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["drivers_online"])')
echo "drivers $drivers (online at the end: $connected): server RSS ${before} kB before, peak ${peak} kB;" \
  "$(( (peak - before) / drivers )) kB ($(( (peak - before) * 1024 / drivers )) bytes) per driver"
