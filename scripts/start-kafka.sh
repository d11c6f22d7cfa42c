#!/usr/bin/env bash
# Starts the Kafka-protocol broker the Kafka tests and benchmark publish to, if it is not
# running: tansu on 127.0.0.1:9092 (in-memory storage), and the Python confluent-kafka
# client the tests read messages back with. Idempotent: installs only what is missing
# (tansu is built once with cargo and cached in ~/.cargo/bin), starts tansu only if the port
# is closed, and waits until it accepts connections. Exits non-zero, saying why, on failure.
#
#   scripts/start-kafka.sh            # then: cargo test -p pgevents-sinks kafka
#
# Environment: KAFKA_PORT (default 9092), KAFKA_LOG (default /tmp/pgevents-tansu.log),
# KAFKA_WAIT_SECONDS (default 60).
set -euo pipefail

port="${KAFKA_PORT:-9092}"
log="${KAFKA_LOG:-/tmp/pgevents-tansu.log}"
wait_seconds="${KAFKA_WAIT_SECONDS:-60}"
export PATH="$HOME/.cargo/bin:$PATH"

fail() { echo "start-kafka: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

python=$(command -v python3 || true)
[ -n "$python" ] || fail "python3 is not installed: install it (apt-get install python3 python3-pip)"
if ! "$python" -c 'import confluent_kafka' 2>/dev/null; then
  echo "start-kafka: installing the confluent-kafka Python client"
  "$python" -m pip install --quiet confluent-kafka \
    || fail "pip could not install confluent-kafka: check access to PyPI"
fi

if ! command -v tansu >/dev/null 2>&1; then
  echo "start-kafka: building tansu (once; it is cached in ~/.cargo/bin)"
  cargo install tansu --features dynostore --locked \
    || fail "cargo could not build tansu: check access to crates.io and the build log above"
fi

if port_open "$port"; then
  echo "start-kafka: a broker already listens on 127.0.0.1:$port"
  exit 0
fi

echo "start-kafka: starting tansu on 127.0.0.1:$port (log: $log)"
nohup tansu broker \
  --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$log" 2>&1 &
pid=$!
for ((i = 0; i < wait_seconds * 10; i++)); do
  port_open "$port" && { echo "start-kafka: tansu (pid $pid) accepts connections"; exit 0; }
  kill -0 "$pid" 2>/dev/null || fail "tansu exited before accepting connections; see $log"
  sleep 0.1
done
fail "tansu did not accept connections on 127.0.0.1:$port within $wait_seconds s; see $log"
