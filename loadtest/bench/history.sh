# History benchmarks, shared by loadtest/bench.sh (make bench: one short
# round) and loadtest/history.sh (make bench-history: several rounds). Source
# after lib.sh, once start_redis and start_gateway have run (the gateway's
# config has bench:* without history and hist:* with it).

# hist_fanout NAME VARIANT RATE DURATION: 10,000 (HISTORY_SUBSCRIBERS)
# subscribers of one topic, RATE msgs/s for DURATION, Redis's CPU and
# commandstats read around the measured phase. VARIANT:
#   off-redis  bench:lt, plain PUBLISH (no history)
#   on-fcall   hist:lt, FCALL gateway_publish (stored, with positions)
#   off-api    bench:lt, POST /api/broadcast
#   on-api     hist:lt, POST /api/broadcast (the gateway calls gateway_publish)
hist_fanout() {
  local name=$1 variant=$2 rate=$3 dur=$4 prefix
  local args=(--redis-url "$REDIS_URL" --prefix "$PREFIX" --redis-pid "$REDIS_PID")
  case $variant in
    off-redis) prefix=bench:lt; args+=(--via redis) ;;
    on-fcall) prefix=hist:lt; args+=(--via fcall) ;;
    off-api) prefix=bench:lt; args+=(--via api --api-url "$GW_API" --api-key "$KEY") ;;
    on-api) prefix=hist:lt; args+=(--via api --api-url "$GW_API" --api-key "$KEY") ;;
    *) echo "hist_fanout: unknown variant $variant" >&2; return 1 ;;
  esac
  LT_TOPIC_PREFIX=$prefix LT_TAIL=${LT_TAIL:-20} lt "$name" fanout -s "${HISTORY_SUBSCRIBERS:-10000}" -t 1 -p "$rate" \
    "${args[@]}" --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$dur" --drain 5s
}

# hist_recover NAME ARGS...: `loadtest recover ARGS` on a pod of its own
# (killed with SIGKILL and started again), topics hist:NAME:N, so each run
# starts from fresh topics.
hist_recover() {
  local name=$1; shift
  local main_pid=$GW_PID main_url=$GW_URL main_port=$GW_PORT main_api=$GW_API
  start_gateway "$name-gw"
  LT_TOPIC_PREFIX="hist:$name" LT_TAIL=${LT_TAIL:-24} lt "$name" recover "$@" --gateway-pid "$GW_PID" --url "$GW_URL" \
    --restart-cmd "$(restart_cmd "$name-gw")" --redis-url "$REDIS_URL" --prefix "$PREFIX" --redis-pid "$REDIS_PID"
  stop "$GW_PID"
  if [ -f "$OUT/$name-gw.pid" ]; then stop "$(cat "$OUT/$name-gw.pid")"; rm -f "$OUT/$name-gw.pid"; fi
  GW_PID=$main_pid GW_URL=$main_url GW_PORT=$main_port GW_API=$main_api
}

# hist_summary: the history runs of $OUT as tables, medians over rounds.
hist_summary() { python3 loadtest/bench/history.py "$OUT"; }
