#!/usr/bin/env bash
# The test suite with all its set-up: installs what this machine lacks (Debian packages),
# starts the brokers that are not running, then runs `cargo test --workspace` (or, given
# arguments, `cargo test` with them, e.g. `./test.sh -p pgevents-cli --test main demo`;
# `./test.sh --setup-only` installs and starts without testing).
#
# Needs no input (CI=true and a closed stdin are fine). As root it installs with apt-get;
# as another user it prints the apt-get line to run and stops.
set -euo pipefail
cd "$(dirname "$0")"

# ---- what to install ---------------------------------------------------------------------
need_apt=()
# Also in the sbin directories, which are not on every user's PATH.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
# PostgreSQL server binaries: the tests start their own throwaway clusters with them.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
have psql || need_apt+=(postgresql-client)
have runuser || need_apt+=(util-linux)
# openssl: the TLS tests make a certificate authority and a server certificate with it.
have openssl || need_apt+=(openssl)
# Headless Chromium and its WebDriver: the console's browser tests drive them.
have chromium || need_apt+=(chromium)
have chromedriver || need_apt+=(chromium-driver)
# Brokers: the sink tests publish to real NATS (JetStream), Redis and RabbitMQ servers.
have nats-server || need_apt+=(nats-server)
have redis-server || need_apt+=(redis-server)
have rabbitmq-server || need_apt+=(rabbitmq-server)
# The Kafka sink's client (librdkafka, built from its bundled sources) links OpenSSL.
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
have pkg-config || need_apt+=(pkg-config)
have make || need_apt+=(make)

root=false
[ "$(id -u)" = 0 ] && root=true
if [ ${#need_apt[@]} -gt 0 ]; then
  line="apt-get update && apt-get install -y ${need_apt[*]}"
  if ! $root; then
    echo "missing: ${need_apt[*]}" >&2
    echo "install them as root, then run ./test.sh again:" >&2
    echo "  sudo sh -c '$line'" >&2
    exit 1
  fi
  echo "installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  apt-get install -y -qq "${need_apt[@]}" </dev/null
fi
# As root, the tests run PostgreSQL as the `postgres` user (PostgreSQL refuses to run as root).
if $root && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi

# ---- what to start -----------------------------------------------------------------------
# Data and logs of the brokers this script starts: the system's places as root, else a
# directory of this user's.
if $root; then
  state=/var/lib
  logs=/var/log
else
  state="${XDG_STATE_HOME:-$HOME/.local/state}/pgevents-test"
  logs="$state/log"
fi
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT NAME SECONDS
  local i
  for ((i = 0; i < $3; i++)); do port_open "$1" && return 0; sleep 1; done
  echo "$2 did not accept connections on 127.0.0.1:$1 within $3 s (see its log in $logs)" >&2
  return 1
}
if ! port_open 6379; then
  echo "starting Redis"
  mkdir -p "$state/redis" "$logs/redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir "$state/redis" --logfile "$logs/redis/test.log" </dev/null
fi
if ! port_open 4222; then
  echo "starting NATS (JetStream)"
  mkdir -p "$state/nats-server" "$logs"
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  # In a session of its own: it outlives this script, as the other brokers do.
  setsid -f "$nats" -a 127.0.0.1 -p 4222 -js -sd "$state/nats-server" -l "$logs/nats-server.log" \
    </dev/null >/dev/null 2>&1
fi
if ! port_open 5672; then
  if ! $root; then
    echo "RabbitMQ is not running on 127.0.0.1:5672; start it as root: sudo rabbitmq-server -detached" >&2
    exit 1
  fi
  if timeout 60 rabbitmqctl -q status </dev/null >/dev/null 2>&1; then
    echo "starting the RabbitMQ application"; timeout 120 rabbitmqctl start_app </dev/null
  else
    echo "starting RabbitMQ"; rabbitmq-server -detached </dev/null
  fi
fi
# A Kafka-compatible broker, when this checkout has a script to start one.
if [ -f scripts/start-kafka.sh ]; then
  bash scripts/start-kafka.sh </dev/null
fi
wait_port 6379 Redis 30
wait_port 4222 NATS 30
wait_port 5672 RabbitMQ 180

# ---- the suite ---------------------------------------------------------------------------
# `--setup-only`: everything above (installs, brokers), no tests: CI lints first.
if [ "${1:-}" = "--setup-only" ]; then
  echo "set up: packages installed, brokers running"
  exit 0
fi
if [ $# -eq 0 ]; then
  exec cargo test --workspace </dev/null
fi
exec cargo test "$@" </dev/null
