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
