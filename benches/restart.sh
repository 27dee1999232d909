#!/usr/bin/env bash
# Restart to serving (issue 14): a node restarting on a store that knows 250,000 drivers
# and holds 10,000 open trips — how long from the process starting until it answers
# `/readyz` as the dispatch leader, and until its dispatcher has adopted every waiting
# trip (its "leading dispatch" log line). Drivers re-pinging afterwards is the fleet's
# part, not measured here.
#
#   benches/restart.sh                    # SQLite (the default store)
#   DRIVERS=1000000 TRIPS=50000 benches/restart.sh
#   RUNS=5 benches/restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

drivers="${DRIVERS:-250000}"
trips="${TRIPS:-10000}"
runs="${RUNS:-3}"
port="${PORT:-18741}"
cargo build --release --locked -q
hail=$PWD/target/release/hail
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
url="sqlite://$work/hail.db"
token=restart-bench-operator-token

# Create the schema with hail itself, then fill the store directly (a day of onboarding
# and requests would take too long through the API).
HAIL_OPERATOR_TOKEN=$token HAIL_LISTEN=127.0.0.1:$port HAIL_DATABASE_URL=$url \
  HAIL_LOG=warn "$hail" serve >"$work/first.log" 2>&1 &
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
kill %1; wait %1 2>/dev/null || true

python3 - "$work/hail.db" "$drivers" "$trips" <<'PY'
import json, random, sqlite3, sys, time, datetime
path, drivers, trips = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(42)
db = sqlite3.connect(path)
now = int(time.time() * 1000)
def rfc(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
db.executemany(
    "INSERT INTO accounts (id, role, name, vehicle_plate, token_hash, created_at) VALUES (?, 'driver', ?, ?, ?, ?)",
    ((f"drv_{i:07d}", f"Driver {i}", f"{i % 100:02d}가{i % 10000:04d}", f"d{i:063d}", now) for i in range(drivers)))
db.executemany(
    "INSERT INTO accounts (id, role, name, vehicle_plate, token_hash, created_at) VALUES (?, 'passenger', ?, NULL, ?, ?)",
    ((f"psg_{i:07d}", f"Passenger {i}", f"p{i:063d}", now) for i in range(trips)))
trip_rows, event_rows = [], []
for i in range(trips):
    kind = i % 10  # 4 in 10 waiting, 3 accepted, 3 under way
    state, seq = ("requested", 1) if kind < 4 else (("accepted", 2) if kind < 7 else ("in_progress", 4))
    driver = None if state == "requested" else f"drv_{i:07d}"
    at = now - random.randint(0, 60_000)
    lat, lng = 37.45 + random.random() * 0.25, 126.8 + random.random() * 0.38
    trip = {"id": f"trp_{i:07d}", "state": state, "seq": seq, "passenger_id": f"psg_{i:07d}",
            "driver_id": driver, "pickup": {"lat": lat, "lng": lng},
            "dropoff": {"lat": lat + 0.01, "lng": lng + 0.01},
            "fare_estimate": {"amount": 9800, "currency": "KRW"}, "fare": None,
            "requested_at": rfc(at), "updated_at": rfc(at)}
    trip_rows.append((trip["id"], state, seq, trip["passenger_id"], driver, lat, lng, lat + 0.01,
                      lng + 0.01, 9800, None, "KRW", at, at))
    for s, event in enumerate(["requested", "accepted", "arrived", "started"][:seq], start=1):
        trip_at = dict(trip, seq=s)
        event_rows.append((trip["id"], s, event, at, json.dumps(trip_at), "system", None, None))
db.executemany("INSERT INTO trips (id, state, seq, passenger_id, driver_id, pickup_lat, pickup_lng, "
               "dropoff_lat, dropoff_lng, fare_estimate_amount, fare_amount, currency, requested_at, "
               "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", trip_rows)
db.executemany("INSERT INTO trip_events (trip_id, seq, event, at, trip, actor_role, actor_id, reason) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", event_rows)
db.commit()
print(f"store: {drivers} drivers, {trips} passengers, {trips} open trips, {len(event_rows)} events")
PY

for run in $(seq 1 "$runs"); do
  start=$(date +%s%N)
  HAIL_OPERATOR_TOKEN=$token HAIL_LISTEN=127.0.0.1:$port HAIL_DATABASE_URL=$url \
    HAIL_LOG=info NO_COLOR=1 "$hail" serve >"$work/run.log" 2>&1 &
  pid=$!
  ready=""
  for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$port/readyz" 2>/dev/null | grep -q '"leader"'; then
      ready=$(date +%s%N); break
    fi
    sleep 0.01
  done
  for _ in $(seq 1 600); do grep -q "leading dispatch" "$work/run.log" && break; sleep 0.01; done
  # The log line's own time, against the process's start.
  leading_at=$(grep -m1 "leading dispatch" "$work/run.log" | cut -d' ' -f1)
  leading=$(python3 -c "import datetime,sys; t=datetime.datetime.fromisoformat(sys.argv[1].replace('Z','+00:00')); print(int(t.timestamp()*1e9))" "$leading_at")
  waiting=$(grep -m1 "leading dispatch" "$work/run.log" | grep -o 'waiting=[0-9]*')
  printf 'run %d: /readyz as leader after %.0f ms; dispatch leading (%s) after %.0f ms\n' \
    "$run" "$(( (ready - start) / 1000 ))e-3" "$waiting" "$(( (leading - start) / 1000 ))e-3"
  kill $pid; wait $pid 2>/dev/null || true
done
