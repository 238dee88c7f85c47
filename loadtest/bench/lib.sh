# Shared by loadtest/bench.sh (make bench) and loadtest/curves.sh (make curves):
# builds the release binaries and starts redis-server, gateway pods and
# raw-writer on free loopback ports, all stopped again when the script exits.
# Source it after setting OUT (the results directory).

CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
GW=${GATEWAY_BIN:-$TARGET_DIR/release/gateway}
LT=$TARGET_DIR/release/loadtest
RAW=$TARGET_DIR/release/raw-writer
PLOT=$TARGET_DIR/release/bench-plot
IPS=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7
KEY="bench-$$"
PREFIX="bench$$:"
PIDS=()

build_release() { $CARGO build --release -p gateway -p loadtest; }

# Also the gateways a reconnect storm started again (their pids in $OUT/*.pid).
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$OUT"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL PID LOG: until URL answers; fails (showing LOG) if PID exits first.
wait_http() {
  until curl -sf "$1" >/dev/null; do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "process $2 exited before $1 answered:" >&2
      tail -n 20 "$3" >&2
      exit 1
    fi
    sleep 0.05
  done
}

# start_redis: sets REDIS_PORT, REDIS_URL, REDIS_PID.
start_redis() {
  REDIS_PORT=$(free_port)
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=($REDIS_PID)
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done
}

# example_config: config/example.toml on this Redis, without the per-source
# limits (the load comes from a few loopback addresses). GW_QUEUE_BYTES:
# outbound_queue_bytes, for a presence_state larger than the example's 4 MiB
# (a topic of 100,000 presences is about 8 MB), and GW_MAX_MEMORY_MB:
# max_memory_mb, for the states queued meanwhile. GW_NO_HISTORY=1 leaves out
# [channel.history] (and start_gateway's hist:* rule), for a gateway built
# before history existed (make bench-ab against an old build).
example_config() {
  local drop_history=()
  if [ -n "${GW_NO_HISTORY:-}" ]; then
    drop_history=(-e '/^\[channel.history\]/,/^$/d')
  fi
  sed -e 's/^\(max_connections_per_source\|connection_rate_per_source\|max_queued_joins_per_source\) = .*/\1 = 0/' \
    -e "s/^outbound_queue_bytes = .*/outbound_queue_bytes = ${GW_QUEUE_BYTES:-4194304}/" \
    -e "s/^max_memory_mb = .*/max_memory_mb = ${GW_MAX_MEMORY_MB:-1024}/" "${drop_history[@]}" config/example.toml
  printf '\n[redis]\nurl = "%s"\nprefix = "%s"\n' "$REDIS_URL" "$PREFIX"
}

# start_gateway NAME [example]: config/example.toml on Redis plus a public
# bench:* rule (the benchmarks measure channels without presence, whose cost
# docs/presence.md measures) and the same rule with history as hist:*
# (size 1000: room for a recovery 100 behind plus what is published while
# clients rejoin), or with "example" the shipped file alone;
# sets GW_PID, GW_PORT, GW_URL, GW_API.
start_gateway() {
  local name=$1
  GW_PORT=$(free_port)
  { example_config
    if [ "${2:-}" != example ]; then
      printf '\n[[channel]]\npattern = "bench:*"\npolicy = "public"\nevents = ["new_msg"]\ninclude_sender = true\n'
      if [ -z "${GW_NO_HISTORY:-}" ]; then
        printf '\n[[channel]]\npattern = "hist:*"\npolicy = "public"\nevents = ["new_msg"]\ninclude_sender = true\n'
        printf '\n[channel.history]\nsize = 1000\nttl = 3600\n'
      fi
    fi
  } >"$OUT/$name.toml"
  env -u REDIS_URL -u GATEWAY_CONFIG -u GATEWAY_LISTEN PORT="$GW_PORT" GATEWAY_API_KEY="$KEY" GATEWAY_LOG="${GW_LOG:-warn}" \
    "$GW" --config "$OUT/$name.toml" >"$OUT/$name.log" 2>&1 &
  GW_PID=$!
  PIDS+=($GW_PID)
  GW_URL="ws://127.0.0.1:$GW_PORT/socket/websocket?vsn=2.0.0"
  GW_API="http://127.0.0.1:$GW_PORT/api/broadcast"
  wait_http "http://127.0.0.1:$GW_PORT/healthz" "$GW_PID" "$OUT/$name.log"
}

# restart_cmd NAME: prints a shell command (for `loadtest reconnect-storm
# --restart-cmd`) that starts gateway NAME again on the same port and config
# (call it right after start_gateway NAME), appending to its log, and prints
# the new pid, also kept in $OUT/NAME.pid so that cleanup stops it.
restart_cmd() {
  local name=$1
  printf 'env -u REDIS_URL -u GATEWAY_CONFIG -u GATEWAY_LISTEN PORT=%q GATEWAY_API_KEY=%q GATEWAY_LOG=warn %q --config %q >>%q 2>&1 </dev/null & echo $! | tee %q' \
    "$GW_PORT" "$KEY" "$GW" "$OUT/$name.toml" "$OUT/$name.log" "$OUT/$name.pid"
}

# stop PID: stops one process started here and waits for it.
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# start_raw: sets RAW_PID, RAW_URL, RAW_API.
start_raw() {
  local port
  port=$(free_port)
  "$RAW" --listen "127.0.0.1:$port" >"$OUT/raw-writer.log" 2>&1 &
  RAW_PID=$!
  PIDS+=($RAW_PID)
  RAW_URL="ws://127.0.0.1:$port/socket/websocket?vsn=2.0.0"
  RAW_API="http://127.0.0.1:$port/api/broadcast"
  wait_http "http://127.0.0.1:$port/healthz" "$RAW_PID" "$OUT/raw-writer.log"
}

# lt NAME ARGS...: one loadtest run writing $OUT/NAME.{json,html,txt}; the
# command line is kept in the JSON (and in NAME.cmd). Topics are
# $LT_TOPIC_PREFIX:N (default bench:lt, without presence).
lt() {
  local name=$1; shift
  echo "== $name: loadtest $*" >&2
  echo "$LT $*" >"$OUT/$name.cmd"
  "$LT" "$@" --source-ips "$IPS" --topic-prefix "${LT_TOPIC_PREFIX:-bench:lt}" --json "$OUT/$name.json" --html "$OUT/$name.html" \
    | tee "$OUT/$name.txt" | tail -n "${LT_TAIL:-16}" >&2 || echo "$name: loadtest exited $?" >&2
}

# presence_join NAME ARGS...: three pods of their own (config/example.toml,
# whose room:* rule has presence keyed by the `user` param) on the same Redis
# and prefix, then `loadtest presence-join ARGS` over them in room:lt:0;
# the pods are stopped afterwards.
presence_join() {
  local name=$1; shift
  local urls=() pids=() i
  for i in 1 2 3; do
    start_gateway "$name-pod$i"
    urls+=("$GW_URL")
    pids+=("$GW_PID")
  done
  LT_TOPIC_PREFIX=room:lt LT_TAIL=30 lt "$name" presence-join "$@" \
    --url "$(IFS=,; echo "${urls[*]}")" --gateway-pid "$(IFS=,; echo "${pids[*]}")" \
    --redis-url "$REDIS_URL" --redis-pid "$REDIS_PID" --prefix "$PREFIX"
  for i in "${pids[@]}"; do stop "$i"; done
}
