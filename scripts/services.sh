# Private Redis and PostgreSQL servers for the tests and benches.
#
# Sourced by scripts/test and scripts/with-services, not run directly.
# `services_start` starts, on free loopback ports in temporary directories,
# a redis-server, a TLS redis-server, a three-node Redis Cluster and a
# PostgreSQL cluster, all tuned for speed (no persistence, no disk flushes),
# and a durable redis-server and PostgreSQL cluster for the crash tests, and
# exports:
#
#   REDIS_URL, DATABASE_URL        where the fast servers listen
#   REDIS_TLS_URL                  rediss://127.0.0.1:PORT/ of the TLS redis-server (no plain
#                                  port; it also listens on 127.0.0.2, a host its certificate
#                                  does not name)
#   REDIS_TLS_CA                   PEM file of the test CA, made with openssl at start, that
#                                  signed the servers' certificate (SAN IP:127.0.0.1, DNS:localhost)
#   DATABASE_TLS_CA                the same CA's file: the PostgreSQL server at DATABASE_URL
#                                  also takes TLS connections (sslmode=require), with its certificate
#   REDIS_CLUSTER_URLS             redis://127.0.0.1:P1/,redis://127.0.0.1:P2/,redis://127.0.0.1:P3/
#   REDIS_CLUSTER_TLS_URLS         the same three nodes' TLS ports as rediss:// URLs (the
#                                  cluster runs with tls-cluster yes and serves both kinds)
#   CLINK_TEST_REDIS_KILL          script: SIGKILL the redis-server
#   CLINK_TEST_REDIS_START         script: start it again on the same port, wait until it answers
#   CLINK_TEST_PG_KILL             script: pg_ctl stop -m immediate (a crash, as the cluster's user)
#   CLINK_TEST_PG_START            script: start the cluster again, wait until it answers
#   CLINK_TEST_PG_RESTART          script: pg_ctl restart -m immediate, wait until it answers
#   REDIS_DURABLE_URL              a second redis-server that writes every change to its
#                                  append-only file before answering (appendonly yes,
#                                  appendfsync always), so a SIGKILL loses nothing it acknowledged
#   CLINK_TEST_REDIS_DURABLE_KILL  script: SIGKILL it;  CLINK_TEST_REDIS_DURABLE_START: start it again
#   DATABASE_DURABLE_URL           a second PostgreSQL cluster with PostgreSQL's durable
#                                  defaults (fsync=on, synchronous_commit=on, full_page_writes=on)
#   CLINK_TEST_PG_DURABLE_KILL     script: pg_ctl stop -m immediate;  CLINK_TEST_PG_DURABLE_START:
#                                  start it again (crash recovery replays its WAL)
#   VALKEY_URL                     redis://127.0.0.1:PORT/ of a Valkey 8.1 server, whose SET
#                                  takes IFEQ (Redis 7 has no such SET): Debian 13's
#                                  package, fetched with apt-get from Debian's archive into
#                                  a private directory (see services_need_valkey)
#   NATS_URL                       nats://127.0.0.1:PORT of a nats-server with JetStream (file
#                                  storage in its directory, kept across a restart)
#   CLINK_TEST_NATS_KILL           script: SIGKILL the nats-server;  CLINK_TEST_NATS_START: start it
#                                  again on the same port, wait until it is ready
#
# The durable pair serves only the crash tests (tests/suite/instances), so
# that every other test keeps the fast servers: on a disk where an fsync
# takes milliseconds, durability would slow every store test.
#
# `services_stop` stops them all and removes the directories; callers run it
# from an EXIT trap so that it also runs on failure. Every wait is bounded
# and fails with a message naming the log to read.
#
# Needs redis-server and redis-cli (with TLS, as Debian's are), nats-server, openssl,
# PostgreSQL's initdb/pg_ctl, and chromium (exported as CLINK_TEST_CHROMIUM). When one is missing and
# the script runs as root it installs Debian's package (apt-get); otherwise
# it stops and says what to install. initdb refuses to run as root, so as
# root the cluster runs as the unprivileged `postgres` user (created if
# missing).

# runuser and useradd live in sbin, which a CI shell may leave off its PATH.
PATH="$PATH:/usr/sbin:/sbin"

SERVICES_DIR=""
# Every PostgreSQL cluster started: its directory and its pg_ctl command.
SERVICES_PG_DIRS=()
SERVICES_PG_CTLS=()
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

# The lowest port the kernel hands out as a connection's own (its
# ephemeral range, 32768 on most machines): the servers' ports are drawn
# below it, so that a server restarted by a kill test never finds its port
# taken meanwhile by some connection's source port.
services_ephemeral_low() {
    local low
    low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)
    case "$low" in
        '' | *[!0-9]*) low=32768 ;;
    esac
    # Room for a cluster node's port and its bus port (+10000) below it.
    [ "$low" -ge 22000 ] || low=32768
    echo "$low"
}

# A port nothing listens on now (services_launch retries if it is taken meanwhile).
services_free_port() {
    local port low
    low=$(services_ephemeral_low)
    for _ in $(seq 50); do
        port=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    services_die "no free loopback port found"
}

# A port for a cluster node: it and its cluster bus port (+10000) are free.
services_free_cluster_port() {
    local port low
    low=$(services_ephemeral_low)
    for _ in $(seq 50); do
        port=$((10000 + RANDOM % (low - 20000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
            ! (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    services_die "no free loopback port pair for a cluster node found"
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

# Writes the start and kill scripts of a private server on port $1 in
# $SERVICES_DIR/$2: `$3` is the command that runs it (redis-server, or
# valkey-server by its loader), `$4` its name in messages.
services_fast_redis_scripts() {
    local port=$1 dir="$SERVICES_DIR/$2" server=$3 name=$4
    cat >"$dir/start" <<EOF
#!/bin/sh
# Starts the private $name on port $port and waits until it answers.
$server --port $port --bind 127.0.0.1 --protected-mode yes \\
    --save '' --appendonly no --dir '$dir' \\
    --daemonize yes --pidfile '$dir/redis.pid' --logfile '$dir/redis.log' || exit 1
for _ in \$(seq 1200); do
    [ "\$(redis-cli -p $port ping 2>/dev/null)" = PONG ] && exit 0
    sleep 0.1
done
echo "$name did not answer on port $port; see $dir/redis.log" >&2
exit 1
EOF
    cat >"$dir/kill" <<EOF
#!/bin/sh
# Kills the private $name at once (SIGKILL), as a crash would.
kill -9 "\$(cat '$dir/redis.pid')" || exit 1
while redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.05; done
EOF
}

services_redis_scripts() {
    services_fast_redis_scripts "$1" redis redis-server redis-server
}

# Starts the server whose scripts `$2` writes in $SERVICES_DIR/$1, named
# `$3` in messages; its port in SERVICES_PORT.
services_launch_fast() {
    local dir="$SERVICES_DIR/$1"
    mkdir -p "$dir"
    services_launch "$3" "$dir" "$2" "$dir/redis.log"
}

services_start_redis() {
    services_need_redis
    local dir="$SERVICES_DIR/redis"
    services_launch_fast redis services_redis_scripts redis-server
    export REDIS_URL="redis://127.0.0.1:$SERVICES_PORT/"
    export CLINK_TEST_REDIS_KILL="$dir/kill" CLINK_TEST_REDIS_START="$dir/start"
    services_say "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$SERVICES_PORT"
}

services_redis_durable_scripts() {
    local port=$1 dir="$SERVICES_DIR/redis-durable"
    cat >"$dir/start" <<EOF
#!/bin/sh
# Starts the durable redis-server on port $port (every write appended to its
# append-only file and flushed to disk before the answer) and waits until it
# answers, which is once it has loaded the file.
redis-server --port $port --bind 127.0.0.1 --protected-mode yes \\
    --save '' --appendonly yes --appendfsync always --dir '$dir' \\
    --daemonize yes --pidfile '$dir/redis.pid' --logfile '$dir/redis.log' || exit 1
for _ in \$(seq 1200); do
    [ "\$(redis-cli -p $port ping 2>/dev/null)" = PONG ] && exit 0
    sleep 0.1
done
echo "the durable redis-server did not answer on port $port; see $dir/redis.log" >&2
exit 1
EOF
    cat >"$dir/kill" <<EOF
#!/bin/sh
# Kills the durable redis-server at once (SIGKILL), as a crash would.
kill -9 "\$(cat '$dir/redis.pid')" || exit 1
while redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.05; done
EOF
}

# A second redis-server for the crash tests, persisting every write.
services_start_redis_durable() {
    local dir="$SERVICES_DIR/redis-durable"
    mkdir -p "$dir"
    services_launch "durable redis-server" "$dir" services_redis_durable_scripts "$dir/redis.log"
    export REDIS_DURABLE_URL="redis://127.0.0.1:$SERVICES_PORT/"
    export CLINK_TEST_REDIS_DURABLE_KILL="$dir/kill" CLINK_TEST_REDIS_DURABLE_START="$dir/start"
    services_say "durable redis-server (appendonly yes, appendfsync always) on 127.0.0.1:$SERVICES_PORT"
}

services_need_redis() {
    command -v redis-server >/dev/null || services_apt_install redis-server redis-server
    command -v redis-cli >/dev/null || services_apt_install redis-cli redis-tools
}

# Stops the redis-server whose pid file is $1, if it is one we started.
services_kill_redis() {
    local pid
    [ -f "$1" ] || return 0
    pid=$(cat "$1" 2>/dev/null)
    # Only a redis-server (or valkey-server): the pid file may be stale after a kill test.
    if [ -n "$pid" ] && grep -qE 'redis-server|valkey-server' "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

# A test CA and a server certificate it signed, valid for 127.0.0.1 and
# localhost, in $SERVICES_DIR/tls: ca.pem, server.pem, server.key.
services_make_certs() {
    command -v openssl >/dev/null || services_apt_install openssl openssl
    local dir="$SERVICES_DIR/tls"
    mkdir -p "$dir"
    printf '%s\n' \
        'basicConstraints=critical,CA:FALSE' \
        'keyUsage=critical,digitalSignature,keyEncipherment' \
        'extendedKeyUsage=serverAuth,clientAuth' \
        'subjectAltName=IP:127.0.0.1,DNS:localhost' >"$dir/server.ext"
    (
        set -e
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout ca.key -out ca.pem -days 2 -subj "/CN=clink-webhooks test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout server.key -out server.csr -subj "/CN=localhost"
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -CAserial ca.srl -out server.pem -days 2 -extfile server.ext
    ) >"$dir/openssl.log" 2>&1 || {
        cat "$dir/openssl.log" >&2
        services_die "openssl could not make the test certificates"
    }
    # The servers run as the caller; the key is private test material only.
    chmod 600 "$dir/ca.key" "$dir/server.key"
}

# The TLS options of a redis-server using the test certificates.
services_redis_tls_opts() {
    local dir="$SERVICES_DIR/tls"
    echo "--tls-cert-file $dir/server.pem --tls-key-file $dir/server.key" \
        "--tls-ca-cert-file $dir/ca.pem --tls-auth-clients no"
}

services_redis_tls_scripts() {
    local port=$1 dir="$SERVICES_DIR/redis-tls"
    local ping="redis-cli --tls --cacert $SERVICES_DIR/tls/ca.pem -h 127.0.0.1 -p $port ping"
    cat >"$dir/start" <<EOF
#!/bin/sh
# Starts the private TLS redis-server (TLS port $port, no plain port) and waits until it answers.
redis-server --port 0 --tls-port $port $(services_redis_tls_opts) \\
    --bind 127.0.0.1 127.0.0.2 --protected-mode yes --save '' --appendonly no --dir '$dir' \\
    --daemonize yes --pidfile '$dir/redis.pid' --logfile '$dir/redis.log' || exit 1
for _ in \$(seq 1200); do
    [ "\$($ping 2>/dev/null)" = PONG ] && exit 0
    sleep 0.1
done
echo "the TLS redis-server did not answer on port $port; see $dir/redis.log" >&2
exit 1
EOF
    cat >"$dir/kill" <<EOF
#!/bin/sh
# Kills the private TLS redis-server at once (SIGKILL).
kill -9 "\$(cat '$dir/redis.pid')"
EOF
}

services_start_redis_tls() {
    local dir="$SERVICES_DIR/redis-tls"
    mkdir -p "$dir"
    services_launch "TLS redis-server" "$dir" services_redis_tls_scripts "$dir/redis.log"
    export REDIS_TLS_URL="rediss://127.0.0.1:$SERVICES_PORT/"
    export REDIS_TLS_CA="$SERVICES_DIR/tls/ca.pem"
    services_say "TLS redis-server on 127.0.0.1:$SERVICES_PORT (CA $REDIS_TLS_CA)"
}

# Starts one cluster node in $1 on plain port $2 and TLS port $3, and waits
# (10 s at most) until it answers.
services_cluster_node() {
    local dir=$1 port=$2 tls_port=$3
    mkdir -p "$dir"
    # shellcheck disable=SC2046 # the options are words without blanks
    redis-server --port "$port" --tls-port "$tls_port" $(services_redis_tls_opts) \
        --tls-cluster yes --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
        --cluster-node-timeout 5000 --bind 127.0.0.1 --protected-mode yes \
        --save '' --appendonly no --dir "$dir" \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null 2>&1 ||
        return 1
    for _ in $(seq 1200); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    return 1
}

# Three nodes, each serving plain and TLS clients (tls-cluster yes: the
# cluster bus is TLS too, and each node announces the port of the client's
# kind), joined into one cluster that covers every slot.
services_start_redis_cluster() {
    local base="$SERVICES_DIR/redis-cluster" n port tls_port attempt
    local ports=() tls_ports=()
    mkdir -p "$base"
    for n in 1 2 3; do
        for attempt in 1 2 3 4 5; do
            port=$(services_free_cluster_port)
            tls_port=$(services_free_port)
            if [ "$tls_port" != "$port" ] && [ "$tls_port" != "$((port + 10000))" ] &&
                services_cluster_node "$base/node$n" "$port" "$tls_port"; then
                ports+=("$port")
                tls_ports+=("$tls_port")
                break
            fi
            services_say "cluster node $n did not start on ports $port/$tls_port (attempt $attempt)"
            services_kill_redis "$base/node$n/redis.pid"
            if [ "$attempt" -eq 5 ]; then
                tail -n 20 "$base/node$n/redis.log" >&2 2>/dev/null
                services_die "Redis Cluster node $n would not start"
            fi
            rm -rf "$base/node$n"
        done
    done

    local create="$base/create.log"
    command -v timeout >/dev/null || services_die "timeout (coreutils) is missing"
    if ! timeout 60 redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" \
        "127.0.0.1:${ports[2]}" --cluster-replicas 0 --cluster-yes </dev/null >"$create" 2>&1; then
        tail -n 20 "$create" >&2
        services_die "redis-cli --cluster create failed or took over 60 s; see $create and $base/node*/redis.log"
    fi
    # Every node must say the cluster is up before a client asks any of them.
    local waited=0
    for port in "${ports[@]}"; do
        until redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do
            waited=$((waited + 1))
            if [ "$waited" -gt 1800 ]; then
                services_die "the Redis Cluster did not reach cluster_state:ok within 180 s" \
                    "(node on port $port); see $base/node*/redis.log"
            fi
            sleep 0.1
        done
    done
    export REDIS_CLUSTER_URLS="redis://127.0.0.1:${ports[0]}/,redis://127.0.0.1:${ports[1]}/,redis://127.0.0.1:${ports[2]}/"
    export REDIS_CLUSTER_TLS_URLS="rediss://127.0.0.1:${tls_ports[0]}/,rediss://127.0.0.1:${tls_ports[1]}/,rediss://127.0.0.1:${tls_ports[2]}/"
    services_say "Redis Cluster of three nodes on 127.0.0.1:${ports[0]},${ports[1]},${ports[2]}" \
        "(TLS ${tls_ports[0]},${tls_ports[1]},${tls_ports[2]})"
}

# The cluster services_launch is setting up: its directory, its pg_ctl
# command and its tuning options.
SERVICES_PG_SETUP_DIR=""
SERVICES_PG_SETUP_CTL=""
SERVICES_PG_SETUP_TUNING=""

services_pg_scripts() {
    local port=$1 dir=$SERVICES_PG_SETUP_DIR ctl=$SERVICES_PG_SETUP_CTL
    local opts="-c listen_addresses=127.0.0.1 -p $port -k $dir/sock -c max_connections=200"
    opts="$opts $SERVICES_PG_SETUP_TUNING"
    cat >"$dir/start" <<EOF
#!/bin/sh
# Starts the private PostgreSQL cluster on port $port and waits until it answers.
$ctl -o "$opts" start >/dev/null
EOF
    cat >"$dir/kill" <<EOF
#!/bin/sh
# Stops the private PostgreSQL cluster at once (-m immediate), as a crash would.
$ctl -m immediate stop >/dev/null
EOF
    cat >"$dir/restart" <<EOF
#!/bin/sh
# Restarts the private PostgreSQL cluster with -m immediate (crash recovery on start).
$ctl -m immediate -o "$opts" restart >/dev/null
EOF
}

# The PostgreSQL binaries' directory, and the prefix that runs a command as
# the clusters' user (empty unless running as root).
SERVICES_PG_BIN=""
SERVICES_PG_AS=""

services_need_postgres() {
    [ -z "$SERVICES_PG_BIN" ] || return 0
    local bin
    if ! bin=$(services_find_pg_bin); then
        services_apt_install "PostgreSQL (initdb, pg_ctl)" postgresql
        bin=$(services_find_pg_bin) || services_die "PostgreSQL installed but initdb/pg_ctl not found"
    fi
    SERVICES_PG_BIN=$bin
    if [ "$(id -u)" -eq 0 ]; then
        command -v runuser >/dev/null || services_die "runuser (util-linux) is missing"
        if ! id postgres >/dev/null 2>&1; then
            services_say "creating the unprivileged user postgres to run the cluster"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin postgres || services_die "useradd postgres failed"
        fi
        SERVICES_PG_AS="runuser -u postgres --"
    fi
}

services_pg_owner() {
    if [ -n "$SERVICES_PG_AS" ]; then echo postgres; else id -un; fi
}

# Makes a PostgreSQL cluster in a directory of its own and starts it with the
# tuning options $2 ($1 names it in messages). Leaves its directory in
# SERVICES_PG_SETUP_DIR and its port in SERVICES_PORT.
services_new_pg_cluster() {
    local name=$1 tuning=$2 bin=$SERVICES_PG_BIN as_pg=$SERVICES_PG_AS dir
    dir=$(mktemp -d /tmp/clink-pg.XXXXXX) || services_die "mktemp failed"
    SERVICES_PG_DIRS+=("$dir")
    mkdir -p "$dir/sock"
    [ -z "$as_pg" ] || chown -R postgres: "$dir"

    (cd / && $as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
        --no-locale --no-sync >"$dir/initdb.log" 2>&1) ||
        { cat "$dir/initdb.log" >&2; services_die "initdb failed ($name)"; }

    SERVICES_PG_SETUP_DIR=$dir
    SERVICES_PG_SETUP_CTL="cd / && $as_pg $bin/pg_ctl -D $dir/data -l $dir/postgres.log -w -t 300"
    SERVICES_PG_SETUP_TUNING=$tuning
    SERVICES_PG_CTLS+=("$SERVICES_PG_SETUP_CTL")
    services_launch "$name" "$dir" services_pg_scripts "$dir/postgres.log"
}

services_start_postgres() {
    services_need_postgres
    # TLS as well as plain connections, with the test CA's server
    # certificate: a copy of it and its key the cluster's user owns (the
    # server refuses a key others can read).
    local tls
    tls=$(mktemp -d /tmp/clink-pg-tls.XXXXXX) || services_die "mktemp failed"
    SERVICES_PG_DIRS+=("$tls")
    cp "$SERVICES_DIR/tls/server.pem" "$SERVICES_DIR/tls/server.key" "$tls/"
    chmod 600 "$tls/server.key"
    [ -z "$SERVICES_PG_AS" ] || chown -R postgres: "$tls"
    # Durability is not under test here: skip the disk flushes.
    services_new_pg_cluster PostgreSQL "-c fsync=off -c synchronous_commit=off -c full_page_writes=off \
-c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key"
    local dir=$SERVICES_PG_SETUP_DIR
    export DATABASE_URL="postgres://postgres@127.0.0.1:$SERVICES_PORT/postgres"
    export DATABASE_TLS_CA="$SERVICES_DIR/tls/ca.pem"
    export CLINK_TEST_PG_KILL="$dir/kill" CLINK_TEST_PG_START="$dir/start"
    export CLINK_TEST_PG_RESTART="$dir/restart"
    services_say "PostgreSQL $("$SERVICES_PG_BIN/pg_ctl" --version | awk '{print $3}') on" \
        "127.0.0.1:$SERVICES_PORT (as $(services_pg_owner))"
}

# A second cluster for the crash tests, with PostgreSQL's durable defaults
# spelled out: a commit is acknowledged only once its WAL is on disk.
services_start_postgres_durable() {
    services_need_postgres
    services_new_pg_cluster "durable PostgreSQL" \
        "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
    local dir=$SERVICES_PG_SETUP_DIR
    export DATABASE_DURABLE_URL="postgres://postgres@127.0.0.1:$SERVICES_PORT/postgres"
    export CLINK_TEST_PG_DURABLE_KILL="$dir/kill" CLINK_TEST_PG_DURABLE_START="$dir/start"
    services_say "durable PostgreSQL (fsync=on, synchronous_commit=on) on 127.0.0.1:$SERVICES_PORT"
}

services_nats_scripts() {
    local port=$1 dir="$SERVICES_DIR/nats"
    cat >"$dir/start" <<EOF
#!/bin/sh
# Starts the private nats-server (JetStream, file storage in $dir/js) on
# port $port and waits until it says it is ready.
: >'$dir/nats.log'
nohup nats-server -js -sd '$dir/js' -a 127.0.0.1 -p $port -P '$dir/nats.pid' \\
    -l '$dir/nats.log' >/dev/null 2>&1 &
for _ in \$(seq 1200); do
    grep -q 'Server is ready' '$dir/nats.log' 2>/dev/null && exit 0
    grep -q -i -e fatal -e 'address already in use' '$dir/nats.log' 2>/dev/null && break
    sleep 0.1
done
echo "nats-server did not get ready on port $port; see $dir/nats.log" >&2
[ -f '$dir/nats.pid' ] && kill -9 "\$(cat '$dir/nats.pid')" 2>/dev/null
exit 1
EOF
    cat >"$dir/kill" <<EOF
#!/bin/sh
# Kills the private nats-server at once (SIGKILL), as a crash would, and
# waits until it is gone.
pid=\$(cat '$dir/nats.pid') || exit 1
kill -9 "\$pid" || exit 1
for _ in \$(seq 600); do kill -0 "\$pid" 2>/dev/null || exit 0; sleep 0.05; done
echo "nats-server \$pid did not die" >&2
exit 1
EOF
}

services_start_nats() {
    command -v nats-server >/dev/null || services_apt_install nats-server nats-server
    local dir="$SERVICES_DIR/nats"
    mkdir -p "$dir/js"
    services_launch nats-server "$dir" services_nats_scripts "$dir/nats.log"
    export NATS_URL="nats://127.0.0.1:$SERVICES_PORT"
    export CLINK_TEST_NATS_KILL="$dir/kill" CLINK_TEST_NATS_START="$dir/start"
    services_say "nats-server $(nats-server --version 2>&1 | awk '{print $NF}') with JetStream on 127.0.0.1:$SERVICES_PORT"
}

# Stops the nats-server whose pid file is $1, if it is one we started.
services_kill_nats() {
    local pid
    [ -f "$1" ] || return 0
    pid=$(cat "$1" 2>/dev/null)
    # Only a nats-server: the pid file may be stale after a kill test.
    if [ -n "$pid" ] && grep -q nats-server "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

# Valkey 8.1, for the Redis store's native completion (`SET .. IFEQ`, which
# Redis has from 8.4 and Valkey from 8.1; Debian 12 packages Redis 7.0 and
# Valkey 8.0 only). Debian 13's valkey-tools and the libraries it links,
# glibc among them, are downloaded with apt-get from Debian's archive
# and unpacked with dpkg -x
# into a private directory, where the server runs under their own dynamic
# loader: nothing of the system's is installed or changed. The first run
# needs Debian's archive (CLINK_DEBIAN_MIRROR, default deb.debian.org),
# apt-get, dpkg and debian-archive-keyring; the result is kept under
# CLINK_VALKEY_ROOT (default ~/.cache/clink-webhooks/valkey-8.1, or
# /tmp/clink-webhooks-UID without a home) for later runs, and used only
# when this user owns it. Sets SERVICES_VALKEY to the command that runs
# valkey-server.
services_need_valkey() {
    local cache
    if [ -n "${XDG_CACHE_HOME:-}" ]; then
        cache="$XDG_CACHE_HOME/clink-webhooks"
    elif [ -n "${HOME:-}" ]; then
        cache="$HOME/.cache/clink-webhooks"
    else
        cache="/tmp/clink-webhooks-$(id -u)"
    fi
    local root="${CLINK_VALKEY_ROOT:-$cache/valkey-8.1}" loader
    if [ -z "${CLINK_VALKEY_ROOT:-}" ]; then
        mkdir -p "$cache" || services_die "cannot make $cache"
        [ -O "$cache" ] || services_die "$cache is not this user's"
        chmod 700 "$cache"
    fi
    if [ ! -f "$root/.complete" ]; then
        command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
            services_die "Valkey 8.1 is needed, and apt-get and dpkg to fetch Debian's"
        local state
        state=$(mktemp -d /tmp/clink-valkey.XXXXXX) || services_die "mktemp failed"
        # In a subshell, whose exit trap removes the lists and packages
        # however it ends.
        (
            trap 'rm -rf "$state"' EXIT
            mkdir -p "$state"/lists/partial "$state"/cache/archives/partial "$state"/sources \
                "$state"/debs "$state"/root
            touch "$state/status"
            printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
                "${CLINK_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
                /usr/share/keyrings/debian-archive-keyring.gpg >"$state/sources/trixie.sources"
            opts=(-qq -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$state/sources"
                -o "Dir::State=$state" -o "Dir::State::Lists=$state/lists"
                -o "Dir::State::status=$state/status" -o "Dir::Cache=$state/cache"
                -o "APT::Sandbox::User=$(id -un)" -o APT::Update::Post-Invoke::=
                -o APT::Update::Post-Invoke-Success::= -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
            services_say "fetching Valkey 8.1 (Debian 13's packages) into $root"
            apt-get "${opts[@]}" update >&2 || services_die "apt-get update of Debian 13's lists failed"
            (cd "$state/debs" && apt-get "${opts[@]}" download valkey-tools libc6 libatomic1 \
                libjemalloc2 liblzf1 libssl3t64 libsystemd0 libcap2 libzstd1 zlib1g libgcc-s1 \
                libstdc++6 >&2) || services_die "apt-get download of Valkey 8.1 failed"
            for deb in "$state"/debs/*.deb; do
                dpkg -x "$deb" "$state/root" || services_die "dpkg -x $deb failed"
            done
            # The server is valkey-check-rdb run under the name valkey-server.
            ln -s valkey-check-rdb "$state/root/usr/bin/valkey-server"
            touch "$state/root/.complete"
            rm -rf "$root" && mv -T "$state/root" "$root" ||
                services_die "cannot move the unpacked packages to $root"
        ) || exit 1
    fi
    [ -O "$root" ] || services_die "$root is not this user's"
    loader=$(ls "$root"/usr/lib/*-linux-gnu*/ld-linux*.so.* 2>/dev/null | head -n 1 || true)
    [ -n "$loader" ] || services_die "no dynamic loader in $root/usr/lib"
    local libs
    libs="$(dirname "$loader"):$root/lib/$(basename "$(dirname "$loader")")"
    SERVICES_VALKEY="'$loader' --library-path '$libs' '$root/usr/bin/valkey-server'"
}

services_valkey_scripts() {
    services_fast_redis_scripts "$1" valkey "$SERVICES_VALKEY" valkey-server
}

services_start_valkey() {
    services_need_valkey
    services_launch_fast valkey services_valkey_scripts valkey-server
    export VALKEY_URL="redis://127.0.0.1:$SERVICES_PORT/"
    services_say "valkey-server $(eval "$SERVICES_VALKEY --version" | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$SERVICES_PORT"
}

services_start() {
    SERVICES_DIR=$(mktemp -d /tmp/clink-services.XXXXXX) || services_die "mktemp failed"
    # The tests signal their processes with the `kill` program (procps).
    if ! [ -x /bin/kill ] && ! [ -x /usr/bin/kill ]; then
        services_apt_install kill procps
    fi
    services_start_redis
    services_start_valkey
    services_make_certs
    services_start_redis_tls
    services_start_redis_cluster
    services_start_postgres
    services_start_redis_durable
    services_start_postgres_durable
    services_start_nats
    services_need_chromium
}

# Headless Chromium for the inbox console's browser test
# (tests/suite/console_browser.rs): Debian's package, installed when
# missing; its path exported as CLINK_TEST_CHROMIUM.
services_need_chromium() {
    local bin
    bin=$(command -v chromium || command -v chromium-browser || true)
    if [ -z "$bin" ]; then
        services_apt_install chromium chromium
        bin=$(command -v chromium) || services_die "chromium was installed but is not on PATH"
    fi
    export CLINK_TEST_CHROMIUM="$bin"
    services_say "$("$bin" --version 2>/dev/null | head -n 1) at $bin"
}

services_stop() {
    [ -n "$SERVICES_DIR" ] || return 0
    local i pidfile
    for i in "${!SERVICES_PG_DIRS[@]}"; do
        if [ -f "${SERVICES_PG_DIRS[$i]}/data/postmaster.pid" ]; then
            sh -c "${SERVICES_PG_CTLS[$i]} -m immediate stop" >/dev/null 2>&1 || true
        fi
    done
    for pidfile in "$SERVICES_DIR"/redis/redis.pid "$SERVICES_DIR"/redis-durable/redis.pid \
        "$SERVICES_DIR"/valkey/redis.pid \
        "$SERVICES_DIR"/redis-tls/redis.pid "$SERVICES_DIR"/redis-cluster/node*/redis.pid; do
        services_kill_redis "$pidfile"
    done
    services_kill_nats "$SERVICES_DIR/nats/nats.pid"
    for i in "${!SERVICES_PG_DIRS[@]}"; do
        rm -rf "${SERVICES_PG_DIRS[$i]}"
    done
    rm -rf "$SERVICES_DIR"
    SERVICES_DIR=""
    SERVICES_PG_DIRS=()
    SERVICES_PG_CTLS=()
    services_say "servers stopped"
}
