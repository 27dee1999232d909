# Shared by the bench scripts (sourced, not run).

# A free loopback port, never one of the well-known ones the machine's own services (or a
# default hail) use.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        case "$port" in 6379 | 5432 | 8080) continue ;; esac
        if ! ss -Htln "sport = :$port" | grep -q .; then
            echo "$port"
            return
        fi
    done
}

# Starts a throwaway in-memory redis-server (no RDB, no AOF) on a free port, its files in
# directory $1; sets redis_port and redis_pid (the caller stops it).
start_redis() {
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$1" --logfile "$1/redis.log" &
    redis_pid=$!
    for _ in $(seq 50); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$redis_port" ping >/dev/null
}

# Sets HAIL to the release build (built now) unless the caller named another binary.
release_hail() {
    if [ -z "${HAIL:-}" ]; then
        cargo build --locked --release 2>&1 | grep -v '^ *Compiling' >&2 || true
        HAIL=target/release/hail
    fi
}

# Waits up to 10 s for the hail on loopback port $1 to answer /readyz.
wait_ready() {
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$1/readyz" >/dev/null && return
        sleep 0.1
    done
}
