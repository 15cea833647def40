#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: `start` installs the server from the
# operating system's packages if it is missing, creates a cluster in a temporary directory on
# a free local port, and prints the URL to export as WALLET_TEST_POSTGRES_URL; `stop DIR`
# stops and removes it. The cluster listens on 127.0.0.1 only and trusts local connections.
set -euo pipefail

pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$dir" ] && echo "$dir"
}

install_server() {
    if [ -z "$(pg_bin)" ]; then
        echo "postgres.sh: installing postgresql from the package registry" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs a command as the cluster's owner: PostgreSQL refuses to run as root.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "${1:-}" in
start)
    install_server
    bin=$(pg_bin)
    dir=$(mktemp -d /tmp/wallet-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port=$(free_port)
    as_owner "$bin/initdb" -D "$dir/data" -U wallet --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    # Durable commits as in production (the default), enough connections for the parallel
    # test suite (each test creates its own database), and the socket in the cluster's dir.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=400 -c fsync=on -c synchronous_commit=on" \
        start >/dev/null
    echo "$dir" >"$dir/dir"
    echo "postgres://wallet@127.0.0.1:$port/postgres"
    echo "$dir" >&2
    ;;
stop)
    dir=${2:?usage: postgres.sh stop DIR}
    bin=$(pg_bin)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    rm -rf "$dir" 2>/dev/null || true
    ;;
*)
    echo "usage: postgres.sh start | stop DIR" >&2
    exit 2
    ;;
esac
