#!/usr/bin/env bash
# make curves: the scaling curves of docs/performance.md, measured on this
# machine (gateway, Redis and loadtest together) and drawn as SVG.
#
#   memory       gateway RSS growth per idle joined connection, 1k -> 19k on one
#                process (raw-writer beside it), and 50k over three pods
#   subscribers  deliveries/s and p99 vs subscribers of one topic (100 -> 19k;
#                one process holds at most ~19,900 sockets here), 200k deliveries/s offered
#   rate         p99 and deliveries/s vs publish rate, one topic of 10k subscribers,
#                up to saturation; gateway (through Redis) and raw-writer
#   pods         the same fan-out over 1, 2 and 3 pods on one Redis: Redis
#                messages per broadcast (PUBLISH replies) and deliveries/s
#
# Writes every run's JSON/HTML and the SVG charts under bench/results/curves-<ts>/;
# CURVES_DOCS=DIR also copies the charts and summary.md there (docs/perf).
# CURVES=memory,subscribers,rate,pods selects curves; CURVES_DURATION (10s) per point.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${CURVES_DURATION:-10s}
WHICH=${CURVES:-memory,subscribers,rate,pods}
OUT=bench/results/curves-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
# shellcheck source=loadtest/bench/lib.sh
. loadtest/bench/lib.sh
want() { [[ ",$WHICH," == *",$1,"* ]]; }

build_release
start_redis
REDIS_ARGS=(--via redis --redis-url "$REDIS_URL" --prefix "$PREFIX")

if want memory; then
  for n in 1000 2000 5000 10000 15000 19000; do
    start_gateway "gw-mem-$n"
    lt "mem-gw-$n" idle -n "$n" -r 5000 --gateway-pid "$GW_PID" --url "$GW_URL" --duration 15s
    stop "$GW_PID"
    start_raw
    lt "mem-raw-$n" idle -n "$n" -r 5000 --gateway-pid "$RAW_PID" --url "$RAW_URL" --duration 15s
    stop "$RAW_PID"
  done
  urls=() pids=()
  for i in 1 2 3; do start_gateway "gw-mem50k-$i"; urls+=("$GW_URL"); pids+=("$GW_PID"); done
  lt "mem3-gw-50000" idle -n 50000 -r 5000 --per-worker 12500 \
    --url "$(IFS=,; echo "${urls[*]}")" --gateway-pid "$(IFS=,; echo "${pids[*]}")" --duration 15s
  for p in "${pids[@]}"; do stop "$p"; done
fi

if want subscribers; then
  start_gateway gw-subs
  start_raw
  for s in 100 1000 5000 10000 19000; do
    p=$((200000 / s))
    lt "subs-gw-$s" fanout -s "$s" -t 1 -p "$p" "${REDIS_ARGS[@]}" --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$DURATION" --drain 5s
    lt "subs-raw-$s" fanout -s "$s" -t 1 -p "$p" --via api --api-url "$RAW_API" --url "$RAW_URL" --gateway-pid "$RAW_PID" --duration "$DURATION" --drain 5s
  done
  stop "$GW_PID"; stop "$RAW_PID"
fi

if want rate; then
  start_gateway gw-rate
  start_raw
  for p in 1 5 10 20 40 60 80 100 120; do
    lt "rate-gw-$p" fanout -s 10000 -t 1 -p "$p" "${REDIS_ARGS[@]}" --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$DURATION" --drain 5s
    lt "rate-raw-$p" fanout -s 10000 -t 1 -p "$p" --via api --api-url "$RAW_API" --url "$RAW_URL" --gateway-pid "$RAW_PID" --duration "$DURATION" --drain 5s
  done
  stop "$GW_PID"; stop "$RAW_PID"
fi

if want pods; then
  for k in 1 2 3; do
    urls=() pids=()
    for i in $(seq 1 "$k"); do start_gateway "gw-pods$k-$i"; urls+=("$GW_URL"); pids+=("$GW_PID"); done
    lt "pods-$k" fanout -s 6000 -t 1 -p 40 "${REDIS_ARGS[@]}" --url "$(IFS=,; echo "${urls[*]}")" \
      --gateway-pid "$(IFS=,; echo "${pids[*]}")" \
      --duration "$DURATION" --drain 5s
    for p in "${pids[@]}"; do stop "$p"; done
  done
fi

python3 loadtest/bench/curves.py "$OUT" "$PLOT"
if [[ -n "${CURVES_DOCS:-}" ]]; then
  mkdir -p "$CURVES_DOCS"
  cp "$OUT"/*.svg "$OUT/summary.md" "$CURVES_DOCS"/
fi
