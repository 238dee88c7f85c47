#!/usr/bin/env bash
# make bench-history: history on vs off side by side in one run, and the
# recovery of 10,000 clients after a pod restart (docs/performance.md#history).
#
# HISTORY_ROUNDS (default 3) rounds, each of, in alternating order:
#   fan-out to 10,000 subscribers of one topic at HISTORY_RATES (default "50 100")
#   msgs/s for HISTORY_DURATION (10s): off-redis vs on-fcall at every rate,
#   off-api vs on-api at the first;
#   recover: HISTORY_CLIENTS (10000) clients over 1,000 topics, 100 behind.
# Results under bench/results/history-<ts>/, summary with medians at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${HISTORY_ROUNDS:-3}
RATES=${HISTORY_RATES:-50 100}
DURATION=${HISTORY_DURATION:-10s}
CLIENTS=${HISTORY_CLIENTS:-10000}
OUT=bench/results/history-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
# shellcheck source=loadtest/bench/lib.sh
. loadtest/bench/lib.sh
# shellcheck source=loadtest/bench/history.sh
. loadtest/bench/history.sh

build_release
start_redis
start_gateway gateway
read -r -a rates <<<"$RATES"
for round in $(seq 1 "$ROUNDS"); do
  runs=()
  for rate in "${rates[@]}"; do
    runs+=("off-redis $rate" "on-fcall $rate")
    [ "$rate" = "${rates[0]}" ] && runs+=("off-api $rate" "on-api $rate")
  done
  # every other round in reverse, so that drift over the run favours neither side
  if [ $((round % 2)) = 0 ]; then
    for ((i = ${#runs[@]} - 1; i >= 0; i--)); do
      read -r v rate <<<"${runs[$i]}"; hist_fanout "fanout-$v-p$rate-r$round" "$v" "$rate" "$DURATION"
    done
  else
    for run in "${runs[@]}"; do
      read -r v rate <<<"$run"; hist_fanout "fanout-$v-p$rate-r$round" "$v" "$rate" "$DURATION"
    done
  fi
  hist_recover "recover-r$round" -n "$CLIENTS" -r 5000 --distinct-topics 1000 --behind 100
done
hist_summary
