#!/usr/bin/env bash
# hail's fleet index side by side with Redis GEO and PostGIS, on one seeded fleet over
# Seoul (issue 14). A documented long-running command, not part of scripts/test.
#
#   benches/peers.sh            # 250,000 drivers (about 3 minutes plus the build)
#   benches/peers.sh --quick    # 25,000 drivers, shorter phases
#   benches/peers.sh --drivers 100000 [--seed 7] [--phase-secs 8]
#
# Starts a throwaway redis-server and a throwaway PostgreSQL 15 cluster with PostGIS, each
# on a free loopback port in a temporary directory, and stops them on exit. The machine's
# own Redis (6379) and PostgreSQL (5432) are never used. Missing servers are installed with
# apt-get (Debian: redis-server, postgresql-15-postgis-3) when running as root.
# Everything else — the dataset, the clients, the measurements and the table — is
# benches/peers.rs (`cargo bench --bench peers`); its dataset goes to target/peers/.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=/usr/lib/postgresql/15/bin
POSTGIS_CONTROL=/usr/share/postgresql/15/extension/postgis.control

need_install=()
command -v redis-server >/dev/null || need_install+=(redis-server)
{ [ -x "$PG_BIN/initdb" ] && [ -f "$POSTGIS_CONTROL" ]; } || need_install+=(postgresql-15-postgis-3)
if [ ${#need_install[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "peers.sh: missing ${need_install[*]}; install them (apt-get install ${need_install[*]})" >&2
        exit 1
    fi
    echo "peers.sh: installing ${need_install[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}" >/dev/null
fi

# shellcheck source=benches/common.sh
. benches/common.sh

work=$(mktemp -d /tmp/hail-peers.XXXXXX)
chmod 755 "$work"
redis_pid=""
pg_started=""
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$work"
    as_pg=(runuser -u postgres --)
fi

cleanup() {
    set +e
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
    fi
    if [ -n "$pg_started" ]; then
        "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Redis: in memory only, like hail's index (no RDB snapshots, no AOF).
start_redis "$work"

# PostgreSQL 15 + PostGIS: a throwaway cluster, trust auth on loopback only. A positions
# table is a cache, like hail's index and the Redis key: synchronous_commit = off, so an
# UPDATE does not wait for the WAL flush (fsync stays on; nothing else is tuned).
pg_port=$(free_port)
"${as_pg[@]}" "$PG_BIN/initdb" -D "$work/pg" -U postgres -A trust -E UTF8 >"$work/initdb.log"
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$work/pg" -w -l "$work/pg.log" \
    -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c synchronous_commit=off" \
    start >/dev/null
pg_started=1

# Build first, so the load printed is the load the measurements ran under.
cargo bench --locked --bench peers --no-run 2>&1 | grep -v '^ *Compiling' >&2 || true
echo "load before: $(uptime)"
echo "servers: redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on :$redis_port," \
    "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') + PostGIS on :$pg_port" \
    "(machine: $(nproc) cores)"
cargo bench --locked --bench peers -- --redis-port "$redis_port" --pg-port "$pg_port" "$@"
echo "load after: $(uptime)"
