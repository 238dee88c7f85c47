#!/usr/bin/env bash
# make memory: resident memory per idle joined WebSocket connection on the
# shipped config/example.toml (with Redis), the figure docs/performance.md
# reports. Three shapes, each on a fresh gateway process:
#   room      every connection joins one room:* topic without a presence key
#             (the rule has presence, the client is only a watcher)
#   presence  with the `user` join param, so every connection is tracked, in
#             rooms of 100 (one topic of 19,000 would send every joiner a
#             list of up to 19,000: the presence-join scenario measures that)
#   topics10  every connection joins 10 room:* topics
# raw-writer (loadtest/src/bin/raw_writer.rs, the delivery ceiling of make
# bench) holds the same connections in the same run, for comparison.
# MEM_CONNECTIONS (default 19000: the most one process holds under a 20,000
# open-files limit), MEM_RATE (connections/s, default 5000), MEM_HOLD (how long
# they are held before RSS is read, default 15s: jemalloc returns freed pages
# after 10 s), MEM_SHAPES (default "room presence topics10").
set -euo pipefail
cd "$(dirname "$0")/.."

N=${MEM_CONNECTIONS:-19000}
RATE=${MEM_RATE:-5000}
HOLD=${MEM_HOLD:-15s}
SHAPES=${MEM_SHAPES:-room presence topics10}
OUT=bench/results/memory-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
# shellcheck source=loadtest/bench/lib.sh
. loadtest/bench/lib.sh

build_release
start_redis
export LT_TOPIC_PREFIX=room:idle
for shape in $SHAPES; do
  case $shape in
    room) args=(-t 1) ;;
    presence) args=(-t 1 --join-user --rooms $(( (N + 99) / 100 ))) ;;
    topics10) args=(-t 10) ;;
    *) echo "unknown shape $shape" >&2; exit 2 ;;
  esac
  start_gateway "gw-$shape" example
  lt "$shape" idle -n "$N" -r "$RATE" "${args[@]}" --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$HOLD"
  stop "$GW_PID"
done
start_raw
lt raw-writer idle -n "$N" -r "$RATE" -t 1 --url "$RAW_URL" --gateway-pid "$RAW_PID" --duration "$HOLD"
stop "$RAW_PID"

python3 - "$OUT" "$N" <<'PY'
import json, os, sys
out, n = sys.argv[1], sys.argv[2]
print(f"\nidle joined connections on config/example.toml, {n} per shape ({out})\n")
print(f"{'shape':<10}{'connected':>10}{'errors':>8}{'B/conn':>9}{'KiB/conn':>10}{'RSS MiB':>9}")
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"):
        continue
    d = json.load(open(os.path.join(out, f)))
    mem = d.get("memory") or {}
    b = mem.get("bytes_per_connection") or 0
    rss = (mem.get("rss_after") or 0) / 1048576
    print(f"{f[:-5]:<10}{d['counters']['connects_ok']:>10}{d['errors']:>8}{b:>9.0f}{b/1024:>10.2f}{rss:>9.0f}")
PY
