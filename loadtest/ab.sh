#!/usr/bin/env bash
# make bench-ab A=<gateway binary> B=<gateway binary>: the same fan-out run
# against two gateway builds, alternated A B A B ... on one redis-server, to
# see what a change costs on the hot path (e.g. a release build of the
# previous commit against this one). Prints deliveries/s, latency and the
# gateway's CPU time per delivery of every run and the median of each side.
#
# AB_ROUNDS (default 3) rounds; AB_DURATION (default 20s) each run;
# AB_SHAPE (default "-s 10000 -t 1 -p 50": fanout-10k's shape).
# AB_IDLE="-n 10000 -r 5000" compares memory per idle joined connection
# instead (the idle scenario, with the same rounds and duration).
# AB_CONNECT="-n 10000 -r 12000 -t 1" compares the CPU of whole connection
# lifecycles instead (connect, join, close: the connect scenario's gateway
# and client user/system µs per connection from /proc).
set -euo pipefail
cd "$(dirname "$0")/.."

A=${1:?usage: loadtest/ab.sh A-BINARY B-BINARY}
B=${2:?usage: loadtest/ab.sh A-BINARY B-BINARY}
ROUNDS=${AB_ROUNDS:-3}
DURATION=${AB_DURATION:-20s}
SHAPE=${AB_SHAPE:--s 10000 -t 1 -p 50}
OUT=bench/results/ab-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
# shellcheck source=loadtest/bench/lib.sh
. loadtest/bench/lib.sh

$CARGO build --release -p loadtest
start_redis
for round in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    GW=${!side}
    start_gateway "gw-$side-$round"
    if [ -n "${AB_CONNECT:-}" ]; then
      # shellcheck disable=SC2086
      lt "$side-$round" connect $AB_CONNECT --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$DURATION"
    elif [ -n "${AB_IDLE:-}" ]; then
      # shellcheck disable=SC2086
      lt "$side-$round" idle $AB_IDLE --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$DURATION"
    else
      # shellcheck disable=SC2086
      lt "$side-$round" fanout $SHAPE --via redis --redis-url "$REDIS_URL" --prefix "$PREFIX" \
        --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$DURATION" --drain 5s
    fi
    stop "$GW_PID"
  done
done

python3 - "$OUT" "$A" "$B" <<'PY'
import json, os, statistics, sys
out, a, b = sys.argv[1:4]
runs = {"A": [], "B": []}
print(f"\nA = {a}\nB = {b}\n")
idle = {"A": [], "B": []}
cycles = {"A": [], "B": []}
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"):
        continue
    d = json.load(open(os.path.join(out, f)))
    us = (d.get("lifecycle_cpu") or {}).get("us_per_connection")
    if us:
        row = [us["gateway_user"], us["gateway_system"], us["client_user"], us["client_system"]]
        cycles[f[0]].append(row)
        print(f"{f[:-5]:<6} gateway user {row[0]:6.1f} sys {row[1]:6.1f}   client user {row[2]:6.1f} sys {row[3]:6.1f}  µs per connection")
if cycles["A"] or cycles["B"]:
    for side, rows in cycles.items():
        if rows:
            med = [statistics.median(r[i] for r in rows) for i in range(4)]
            print(f"median {side}: gateway user {med[0]:.1f} sys {med[1]:.1f}, client user {med[2]:.1f} sys {med[3]:.1f} µs per connection")
    print(f"\nresults in {out}")
    sys.exit(0)
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"):
        continue
    d = json.load(open(os.path.join(out, f)))
    if d.get("scenario") == "idle" or "delivery" not in d.get("latency", {}):
        mem = (d.get("memory") or {}).get("bytes_per_connection")
        if mem is not None:
            idle[f[0]].append(mem)
            print(f"{f[:-5]:<6}{mem:>10.0f} bytes per idle connection")
if idle["A"] or idle["B"]:
    for side, ms in idle.items():
        if ms:
            print(f"median {side}: {statistics.median(ms):.0f} bytes per idle connection")
    print(f"\nresults in {out}")
    sys.exit(0)
print(f"{'run':<6}{'deliv/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'missing':>9}{'CPU µs/d':>10}")
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"):
        continue
    d = json.load(open(os.path.join(out, f)))
    lat = d["latency"]["delivery"]
    cpu = (d.get("gateway_cpu") or {}).get("us_per_delivery")
    runs[f[0]].append((d["deliveries_per_sec"], lat["p50_ms"], lat["p99_ms"], cpu))
    print(f"{f[:-5]:<6}{d['deliveries_per_sec']:>11.0f}{lat['p50_ms']:>9.2f}{lat['p99_ms']:>9.2f}{d['missing']:>9}{cpu or 0:>10.2f}")
print()
for side, rs in runs.items():
    med = [statistics.median(x[i] for x in rs) for i in range(4)]
    print(f"median {side}: {med[0]:.0f} deliv/s, p50 {med[1]:.2f} ms, p99 {med[2]:.2f} ms, {med[3]:.2f} CPU µs/delivery")
print(f"\nresults in {out}")
PY
