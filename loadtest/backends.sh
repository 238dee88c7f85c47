#!/usr/bin/env bash
# make bench-backends: what a push costs when a backend answers it
# (docs/performance.md#backends). One release gateway and redis-server;
# `push-rtt load` (loadtest/src/bin/push_rtt.rs) pushes on an open-loop
# schedule and measures push sent → reply, with the gateway's, Redis's and
# the backend's CPU over the measured window. Rules (all public, new_msg,
# include_sender), each client on a topic of its own:
#   broadcast    bench:*  mode = "broadcast": published through Redis, replied after
#   forward      fwd:*    mode = "forward", stream chat: `push-rtt worker --broadcast`
#                         answers and broadcasts the payload to the topic (the chat loop)
#   forward-rpc  rpc:*    mode = "forward", stream rpc: a worker that only answers
#   hook         hk:*     mode = "hook": `push-rtt hook --broadcast` answers and broadcasts
#   join-plain   bench:*  leave+join of the client's topic, join sent → reply
#   join-hook    hk:*     the same through the join hook
#   forward-py   py:*     forward to examples/backends/worker.py (one run at the end)
# BACKENDS_ROUNDS (3) rounds, each of every push variant at every
# BACKENDS_RATES ("1000 10000") pushes/s and the joins at
# BACKENDS_HOOK_RATE (1000)/s, every other round in reverse order; each run
# BACKENDS_WARMUP (2s) + BACKENDS_DURATION (15s) measured + up to 5 s drain.
# BACKENDS_VARIANTS picks push variants, BACKENDS_JOINS=0 skips the joins.
# Pushes come from BACKENDS_CLIENTS (500) clients, joins from
# BACKENDS_JOIN_CLIENTS (50). The rules keep the default forward limits
# (max_pending 16, rate 50/s per channel): 10,000/s is 20/s per client.
# Before each run it waits while a cargo or rustc runs (BACKENDS_WAIT_QUIET=0:
# don't) and records `uptime`. Results under bench/results/backends-<ts>/,
# medians at the end (loadtest/bench/backends.py).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${BACKENDS_ROUNDS:-3}
RATES=${BACKENDS_RATES:-1000 10000}
HOOK_RATE=${BACKENDS_HOOK_RATE:-1000}
PY_RATE=${BACKENDS_PY_RATE:-1000}
DURATION=${BACKENDS_DURATION:-15s}
WARMUP=${BACKENDS_WARMUP:-2s}
CLIENTS=${BACKENDS_CLIENTS:-500}
JOIN_CLIENTS=${BACKENDS_JOIN_CLIENTS:-50}
VARIANTS=${BACKENDS_VARIANTS:-broadcast forward forward-rpc hook}
JOINS=${BACKENDS_JOINS:-1}
OUT=bench/results/backends-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
# shellcheck source=loadtest/bench/lib.sh
. loadtest/bench/lib.sh
RTT=$TARGET_DIR/release/push-rtt
HOOK_SECRET="bench-hook-secret-$$-0123456789"

build_release
start_redis
HOOK_PORT=$(free_port)
HOOK_URL="http://127.0.0.1:$HOOK_PORT"

"$RTT" hook --listen "127.0.0.1:$HOOK_PORT" --broadcast >"$OUT/hook.log" 2>&1 &
HOOK_PID=$!
PIDS+=($HOOK_PID)
"$RTT" worker --redis-url "$REDIS_URL" --stream "${PREFIX}in:chat" --group bench --broadcast >"$OUT/worker-chat.log" 2>&1 &
WORKER_PID=$!
PIDS+=($WORKER_PID)
"$RTT" worker --redis-url "$REDIS_URL" --stream "${PREFIX}in:rpc" --group bench >"$OUT/worker-rpc.log" 2>&1 &
RPC_PID=$!
PIDS+=($RPC_PID)

rule() { printf '\n[[channel]]\npattern = "%s"\npolicy = "public"\nevents = ["new_msg"]\ninclude_sender = true\n' "$1"; }
{ example_config
  rule 'bench:*'
  rule 'fwd:*'; printf 'mode = "forward"\n[channel.forward]\nstream = "chat"\n'
  rule 'rpc:*'; printf 'mode = "forward"\n[channel.forward]\nstream = "rpc"\n'
  rule 'py:*'; printf 'mode = "forward"\n[channel.forward]\nstream = "py"\n'
  rule 'hk:*'; printf 'mode = "hook"\n[channel.hooks]\njoin = "%s/join"\npush = "%s/push"\n' "$HOOK_URL" "$HOOK_URL"
} >"$OUT/gateway.toml"
GW_PORT=$(free_port)
env -u REDIS_URL -u GATEWAY_CONFIG -u GATEWAY_LISTEN PORT="$GW_PORT" GATEWAY_API_KEY="$KEY" \
  GATEWAY_HOOK_SECRET="$HOOK_SECRET" GATEWAY_LOG="${GW_LOG:-warn}" \
  "$GW" --config "$OUT/gateway.toml" >"$OUT/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
GW_URL="ws://127.0.0.1:$GW_PORT/socket/websocket?vsn=2.0.0"
wait_http "http://127.0.0.1:$GW_PORT/healthz" "$GW_PID" "$OUT/gateway.log"

# wait_quiet: no other build competing for the 2 cores (up to 15 min).
wait_quiet() {
  [ "${BACKENDS_WAIT_QUIET:-1}" = 1 ] || return 0
  local i
  for i in $(seq 1 180); do
    pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null || return 0
    [ "$i" = 1 ] && echo "waiting for other builds to finish..." >&2
    sleep 5
  done
  echo "still busy after 15 min; measuring anyway" >&2
}

# run NAME VARIANT RATE: one push-rtt load run writing $OUT/NAME.{json,txt,cmd,load}.
run() {
  local name=$1 variant=$2 rate=$3 args=() others=()
  case $variant in
    broadcast) args=(--topic-prefix "bench:$name") ;;
    forward) args=(--topic-prefix "fwd:$name"); others=("$WORKER_PID") ;;
    forward-rpc) args=(--topic-prefix "rpc:$name"); others=("$RPC_PID") ;;
    forward-py) args=(--topic-prefix "py:$name"); others=("$PY_PID") ;;
    hook) args=(--topic-prefix "hk:$name"); others=("$HOOK_PID") ;;
    join-plain) args=(--op join --clients "$JOIN_CLIENTS" --topic-prefix "bench:$name") ;;
    join-hook) args=(--op join --clients "$JOIN_CLIENTS" --topic-prefix "hk:$name"); others=("$HOOK_PID") ;;
    *) echo "run: unknown variant $variant" >&2; return 1 ;;
  esac
  [ "${args[0]}" = --op ] || args+=(--clients "$CLIENTS")
  [ ${#others[@]} = 0 ] || args+=(--other-pid "$(IFS=,; echo "${others[*]}")")
  wait_quiet
  { uptime; top -bn1 | head -15; } >"$OUT/$name.load"
  echo "== $name ($(uptime | sed 's/.*load/load/'))" >&2
  echo "$RTT load ${args[*]} --rate $rate" >"$OUT/$name.cmd"
  "$RTT" load --url "$GW_URL" --source-ips "$IPS" --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
    --gateway-pid "$GW_PID" --redis-pid "$REDIS_PID" --label "$variant $rate" --json "$OUT/$name.json" "${args[@]}" \
    | tee "$OUT/$name.txt" >&2 || echo "$name: push-rtt exited $?" >&2
}

read -r -a rates <<<"$RATES"
for round in $(seq 1 "$ROUNDS"); do
  runs=()
  for rate in "${rates[@]}"; do
    for v in $VARIANTS; do runs+=("$v $rate"); done
  done
  [ "$JOINS" = 0 ] || runs+=("join-plain $HOOK_RATE" "join-hook $HOOK_RATE")
  # every other round in reverse, so that drift over the run favours no variant
  if [ $((round % 2)) = 0 ]; then
    for ((i = ${#runs[@]} - 1; i >= 0; i--)); do
      read -r v rate <<<"${runs[$i]}"; run "$v-p$rate-r$round" "$v" "$rate"
    done
  else
    for r in "${runs[@]}"; do
      read -r v rate <<<"$r"; run "$v-p$rate-r$round" "$v" "$rate"
    done
  fi
done

# The real Python worker (examples/backends/worker.py), once, if redis-py is
# there (BACKENDS_PYTHON: the interpreter; Debian's has python3-redis).
PY=${BACKENDS_PYTHON:-python3}
if ! "$PY" -c 'import redis' 2>/dev/null && /usr/bin/python3 -c 'import redis' 2>/dev/null; then
  PY=/usr/bin/python3
fi
if [ "$PY_RATE" != 0 ] && "$PY" -c 'import redis' 2>/dev/null; then
  REDIS_URL="$REDIS_URL" STREAM="${PREFIX}in:py" GROUP=chat CONSUMER=bench-py \
    "$PY" examples/backends/worker.py >"$OUT/worker-py.log" 2>&1 &
  PY_PID=$!
  PIDS+=($PY_PID)
  sleep 1
  run "forward-py-p$PY_RATE-r1" forward-py "$PY_RATE"
  stop "$PY_PID"
elif [ "$PY_RATE" != 0 ]; then
  echo "forward-py: skipped, $PY has no redis module" >&2
fi

for p in "$WORKER_PID" "$RPC_PID"; do stop "$p"; done
cat "$OUT"/worker-chat.log "$OUT"/worker-rpc.log >&2
python3 loadtest/bench/backends.py "$OUT" | tee "$OUT/summary.md"
