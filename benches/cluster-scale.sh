#!/usr/bin/env bash
# A cluster holding more driver sockets than one process can (issue 11, DESIGN §6): three
# `hail serve` nodes on this machine's PostgreSQL, joined by a NATS server of its own,
# each driven by its own `hail sim` process (one process may open at most 20,000 files
# here, so neither one node nor one simulator can hold all the drivers). Prints each
# simulator's summary and each node's resident memory.
#
#   benches/cluster-scale.sh [drivers per node, default 19000] [requests a minute in all, default 120]
set -euo pipefail
cd "$(dirname "$0")/.."
per_node=${1:-19000}
requests=${2:-120}
token=scale-operator-token-123456
admin=${HAIL_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
db=hail_scale_$$
work=$(mktemp -d)
cargo build --release --locked -q
psql "$admin" -qc "CREATE DATABASE $db"
url="${admin%/*}/$db"
nats_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/sbin/nats-server -a 127.0.0.1 -p "$nats_port" >/dev/null 2>&1 &
pids=($!)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; sleep 1; psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; }
trap cleanup EXIT
ports=(8181 8182 8183)
for i in 0 1 2; do
  HAIL_NODE_ID=node-$i HAIL_LISTEN=127.0.0.1:${ports[$i]} HAIL_DATABASE_URL=$url \
  HAIL_BUS_URL=nats://127.0.0.1:$nats_port HAIL_OPERATOR_TOKEN=$token HAIL_LOG=warn \
  HAIL_SIGNUP_LIMIT_PER_MIN=1000000 HAIL_TRIP_REQUEST_LIMIT_PER_MIN=1000000 \
    target/release/hail serve > "$work/node-$i.out" 2> "$work/node-$i.err" &
  pids+=($!)
done
sleep 3
for i in 0 1 2; do
  # Each simulator drives one node; a third of the demand each. A source address has
  # about 28,000 ephemeral ports, shared by the three simulators: 8 addresses leave room.
  target/release/hail sim --server http://127.0.0.1:${ports[$i]} --operator-token $token \
    --drivers "$per_node" --ping-interval-ms 4000 --requests-per-min $((requests / 3)) \
    --duration 60s --drain 20s --seed $((42 + i)) --source-addresses 8 --json --timings "$work/timings-$i" \
    > "$work/sim-$i.out" 2> "$work/sim-$i.err" &
  sims+=($!)
done
# Resident memory of each node, sampled every 5 s while the simulators run.
while kill -0 "${sims[@]}" 2>/dev/null; do
  for i in 0 1 2; do
    rss=$(ps -o rss= -p "${pids[$((i + 1))]}" | tr -d ' ')
    echo "$rss" >> "$work/rss-$i"
  done
  sleep 5
done
wait "${sims[@]}" || true
for i in 0 1 2; do
  curl -s "127.0.0.1:${ports[$i]}/metrics" | grep -E '^hail_bus_(published|received|dropped)|^hail_bus_lag_seconds_(count|sum)' | tr '\n' ' ' | sed "s/^/node-$i: /"; echo
done
for i in 0 1 2; do
  echo "node-$i: peak RSS $(sort -n "$work/rss-$i" | tail -1) KiB"
  tail -1 "$work/sim-$i.out"
done
# Request → first offer on any simulator's driver socket (one machine: one clock).
cat "$work"/timings-* | python3 -c '
import sys
sent, offered = {}, {}
for line in sys.stdin:
    trip, kind, ms = line.strip().split(",")
    table = sent if kind == "request" else offered
    table[trip] = min(table.get(trip, float("inf")), int(ms))
lat = sorted(offered[t] - sent[t] for t in sent if t in offered)
if lat:
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"request -> offer over all simulators: {len(lat)} of {len(sent)} requests offered, p50 {pick(0.5)} ms, p99 {pick(0.99)} ms, max {lat[-1]} ms")
'
curl -s -H "Authorization: Bearer $token" "127.0.0.1:${ports[0]}/v1/ops/cluster"; echo
psql "$url" -Atc "SELECT 'trips by state: ' || string_agg(state || ' ' || n, ', ') FROM (SELECT state, count(*) n FROM trips GROUP BY state ORDER BY state) s"
psql "$url" -Atc "SELECT 'offers by outcome: ' || string_agg(state || ' ' || n, ', ') FROM (SELECT state, count(*) n FROM offers GROUP BY state ORDER BY state) s"
echo "(logs in $work)"
