# Private Redis and PostgreSQL servers for the tests and benches.
#
# Sourced by scripts/test and scripts/with-services, not run directly.
# `services_start` starts both servers on free loopback ports in temporary
# directories and exports:
#
#   REDIS_URL, DATABASE_URL        where the servers listen
#   CLINK_TEST_REDIS_KILL          script: SIGKILL the redis-server
#   CLINK_TEST_REDIS_START         script: start it again on the same port, wait until it answers
#   CLINK_TEST_PG_KILL             script: pg_ctl stop -m immediate (a crash, as the cluster's user)
#   CLINK_TEST_PG_START            script: start the cluster again, wait until it answers
#   CLINK_TEST_PG_RESTART          script: pg_ctl restart -m immediate, wait until it answers
#
# `services_stop` stops both and removes the directories; callers run it
# from an EXIT trap so that it also runs on failure.
#
# Needs redis-server and PostgreSQL's initdb/pg_ctl. When one is missing and
# the script runs as root it installs Debian's package (apt-get); otherwise
# it stops and says what to install. initdb refuses to run as root, so as
# root the cluster runs as the unprivileged `postgres` user (created if
# missing).

# runuser and useradd live in sbin, which a CI shell may leave off its PATH.
PATH="$PATH:/usr/sbin:/sbin"

SERVICES_DIR=""
SERVICES_PG_DIR=""
SERVICES_PG_CTL=""
SERVICES_PORT=""

services_say() { printf '==> services: %s\n' "$*" >&2; }
services_die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

services_apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        services_die "$1 is missing; install it (on Debian: sudo apt-get install -y $2) and run again"
    fi
    command -v apt-get >/dev/null || services_die "$1 is missing and apt-get is not available; install $2"
    services_say "installing $2 (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || services_die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "$2" >&2 || services_die "apt-get install $2 failed"
}

# A port nothing listens on now (services_launch retries if it is taken meanwhile).
services_free_port() {
    local port
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    services_die "no free loopback port found"
}

services_find_pg_bin() {
    local dir
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Tries free ports until the server starts: `$3 PORT` writes the control
# scripts into $2 (`start` also waits until the server answers). The port
# found is left in SERVICES_PORT.
services_launch() {
    local name=$1 dir=$2 write=$3 log=$4 port attempt
    for attempt in 1 2 3 4 5; do
        port=$(services_free_port)
        "$write" "$port"
        chmod 755 "$dir"/start "$dir"/kill
        [ ! -f "$dir/restart" ] || chmod 755 "$dir/restart"
        if "$dir/start" >/dev/null 2>&1; then
            SERVICES_PORT=$port
            return 0
        fi
        services_say "$name did not start on port $port (attempt $attempt)"
    done
    tail -n 20 "$log" >&2 2>/dev/null
    services_die "$name would not start"
}

services_redis_scripts() {
    local port=$1 dir="$SERVICES_DIR/redis"
    cat >"$dir/start" <<EOF
#!/bin/sh
# Starts the private redis-server on port $port and waits until it answers.
redis-server --port $port --bind 127.0.0.1 --protected-mode yes \\
    --save '' --appendonly no --dir '$dir' \\
    --daemonize yes --pidfile '$dir/redis.pid' --logfile '$dir/redis.log' || exit 1
for _ in \$(seq 100); do
    [ "\$(redis-cli -p $port ping 2>/dev/null)" = PONG ] && exit 0
    sleep 0.1
done
echo "redis-server did not answer on port $port; see $dir/redis.log" >&2
exit 1
EOF
    cat >"$dir/kill" <<EOF
#!/bin/sh
# Kills the private redis-server at once (SIGKILL), as a crash would.
kill -9 "\$(cat '$dir/redis.pid')" || exit 1
while redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.05; done
EOF
}

services_start_redis() {
    command -v redis-server >/dev/null || services_apt_install redis-server redis-server
    command -v redis-cli >/dev/null || services_apt_install redis-cli redis-tools
    local dir="$SERVICES_DIR/redis"
    mkdir -p "$dir"
    services_launch redis-server "$dir" services_redis_scripts "$dir/redis.log"
    export REDIS_URL="redis://127.0.0.1:$SERVICES_PORT/"
    export CLINK_TEST_REDIS_KILL="$dir/kill" CLINK_TEST_REDIS_START="$dir/start"
    services_say "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$SERVICES_PORT"
}

services_pg_scripts() {
    local port=$1 dir=$SERVICES_PG_DIR
    local opts="-c listen_addresses=127.0.0.1 -p $port -k $dir/sock -c max_connections=200"
    # Durability is not under test: skip the disk flushes.
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    cat >"$dir/start" <<EOF
#!/bin/sh
# Starts the private PostgreSQL cluster on port $port and waits until it answers.
$SERVICES_PG_CTL -o "$opts" start >/dev/null
EOF
    cat >"$dir/kill" <<EOF
#!/bin/sh
# Stops the private PostgreSQL cluster at once (-m immediate), as a crash would.
$SERVICES_PG_CTL -m immediate stop >/dev/null
EOF
    cat >"$dir/restart" <<EOF
#!/bin/sh
# Restarts the private PostgreSQL cluster with -m immediate (crash recovery on start).
$SERVICES_PG_CTL -m immediate -o "$opts" restart >/dev/null
EOF
}

services_start_postgres() {
    local bin
    if ! bin=$(services_find_pg_bin); then
        services_apt_install "PostgreSQL (initdb, pg_ctl)" postgresql
        bin=$(services_find_pg_bin) || services_die "PostgreSQL installed but initdb/pg_ctl not found"
    fi
    local as_pg="" owner
    owner=$(id -un)
    if [ "$(id -u)" -eq 0 ]; then
        command -v runuser >/dev/null || services_die "runuser (util-linux) is missing"
        if ! id postgres >/dev/null 2>&1; then
            services_say "creating the unprivileged user postgres to run the cluster"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin postgres || services_die "useradd postgres failed"
        fi
        as_pg="runuser -u postgres --"
        owner=postgres
    fi

    # Its own directory, owned by the cluster's user.
    local dir
    dir=$(mktemp -d /tmp/clink-pg.XXXXXX) || services_die "mktemp failed"
    SERVICES_PG_DIR=$dir
    mkdir -p "$dir/sock"
    [ -z "$as_pg" ] || chown -R postgres: "$dir"

    (cd / && $as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
        --no-locale --no-sync >"$dir/initdb.log" 2>&1) ||
        { cat "$dir/initdb.log" >&2; services_die "initdb failed"; }

    SERVICES_PG_CTL="cd / && $as_pg $bin/pg_ctl -D $dir/data -l $dir/postgres.log -w -t 60"
    services_launch PostgreSQL "$dir" services_pg_scripts "$dir/postgres.log"
    export DATABASE_URL="postgres://postgres@127.0.0.1:$SERVICES_PORT/postgres"
    export CLINK_TEST_PG_KILL="$dir/kill" CLINK_TEST_PG_START="$dir/start"
    export CLINK_TEST_PG_RESTART="$dir/restart"
    services_say "PostgreSQL $("$bin/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$SERVICES_PORT (as $owner)"
}

services_start() {
    SERVICES_DIR=$(mktemp -d /tmp/clink-services.XXXXXX) || services_die "mktemp failed"
    services_start_redis
    services_start_postgres
}

services_stop() {
    [ -n "$SERVICES_DIR" ] || return 0
    if [ -n "$SERVICES_PG_DIR" ] && [ -f "$SERVICES_PG_DIR/data/postmaster.pid" ]; then
        sh -c "$SERVICES_PG_CTL -m immediate stop" >/dev/null 2>&1 || true
    fi
    if [ -f "$SERVICES_DIR/redis/redis.pid" ]; then
        local pid
        pid=$(cat "$SERVICES_DIR/redis/redis.pid")
        # Only a redis-server we started: the pid file may be stale after a kill test.
        if [ -n "$pid" ] && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    fi
    [ -z "$SERVICES_PG_DIR" ] || rm -rf "$SERVICES_PG_DIR"
    rm -rf "$SERVICES_DIR"
    SERVICES_DIR=""
    SERVICES_PG_DIR=""
    services_say "servers stopped"
}
