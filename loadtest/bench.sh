#!/usr/bin/env bash
# make bench: a short, fixed set of loadtest scenarios against a release
# gateway and a redis-server on this machine. Writes JSON and HTML results under
# bench/results/<timestamp>/ and prints a summary table.
#
# Every fan-out scenario is also run against raw-writer (loadtest/src/bin/
# raw_writer.rs: the same pre-encoded frames written to the same number of
# loopback sockets with no protocol work, one writev per queued batch) and the
# gateway's deliveries/s is reported as a ratio to that ceiling ("vs raw").
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
DURATION=${BENCH_DURATION:-10s}
OUT=bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

$CARGO build --release -p gateway -p loadtest
GW=$TARGET_DIR/release/gateway
LT=$TARGET_DIR/release/loadtest
RAW=$TARGET_DIR/release/raw-writer

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port)
RAW_PORT=$(free_port)
PORT=$(free_port)
PREFIX="bench$$:"
KEY="bench-$$"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

{ cat config/example.toml; printf '\n[redis]\nurl = "redis://127.0.0.1:%s"\nprefix = "%s"\n' "$REDIS_PORT" "$PREFIX"; } >"$OUT/gateway.toml"
env -u REDIS_URL -u GATEWAY_CONFIG -u GATEWAY_LISTEN PORT="$PORT" GATEWAY_API_KEY="$KEY" GATEWAY_LOG=warn \
  "$GW" --config "$OUT/gateway.toml" >"$OUT/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; do sleep 0.1; done

"$RAW" --listen "127.0.0.1:$RAW_PORT" >"$OUT/raw-writer.log" 2>&1 &
PIDS+=($!)
until curl -sf "http://127.0.0.1:$RAW_PORT/healthz" >/dev/null; do sleep 0.1; done

URL="ws://127.0.0.1:$PORT/socket/websocket?vsn=2.0.0"
RAW_URL="ws://127.0.0.1:$RAW_PORT/socket/websocket?vsn=2.0.0"
RAW_API="http://127.0.0.1:$RAW_PORT/api/broadcast"
IPS=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5
run_at() {
  local url=$1 name=$2; shift 2
  echo "== $name: loadtest $* --url $url" >&2
  "$LT" "$@" --url "$url" --source-ips "$IPS" --duration "$DURATION" \
    --json "$OUT/$name.json" --html "$OUT/$name.html" | tee "$OUT/$name.txt" || echo "$name: loadtest exited $?" >&2
}
run() { run_at "$URL" "$@"; }
# fanout NAME "SHAPE" "GATEWAY PUBLISHER ARGS": the scenario against the gateway,
# then the same shape against raw-writer (published through its /api/broadcast).
fanout() {
  local name=$1 shape=$2 via=$3
  # shellcheck disable=SC2086
  run "$name" fanout $shape $via
  # shellcheck disable=SC2086
  run_at "$RAW_URL" "raw-$name" fanout $shape --via api --api-url "$RAW_API"
}

run connect connect -n 10000 -r 10000 -t 1
run idle idle -n 10000 -r 5000 --gateway-pid "$GW_PID"
REDIS_ARGS="--via redis --redis-url redis://127.0.0.1:$REDIS_PORT --prefix $PREFIX"
fanout fanout-quiet "-s 1000 -t 1 -p 1000" "$REDIS_ARGS"
fanout fanout-10k "-s 10000 -t 1 -p 20" "$REDIS_ARGS"
fanout fanout-api "-s 1000 -t 10 -p 500" "--via api --api-url http://127.0.0.1:$PORT/api/broadcast --api-key $KEY"
fanout fanout-2k "-s 2000 -t 1 -p 200" "--via api --api-url http://127.0.0.1:$PORT/api/broadcast --api-key $KEY"
run chat chat -c 200 -p 1

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
dps = {}
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"):
        continue
    d = json.load(open(os.path.join(out, f)))
    lat = d["latency"]["delivery"] if d["latency"]["delivery"]["count"] else d["latency"]["join"]
    mem = d.get("memory") or {}
    dps[f[:-5]] = d["deliveries_per_sec"]
    rows.append((f[:-5], d["counters"]["connects_ok"], d["connections_joins_per_sec"],
                 d["deliveries_per_sec"], lat["p50_ms"], lat["p99_ms"], lat["max_ms"],
                 d["missing"], d["errors"], mem.get("bytes_per_connection")))
print(f"\nresults in {out} (commit {d.get('git_commit')}, {d['machine']['cores']} cores)\n")
print(f"{'scenario':<18}{'conns':>8}{'conn+join/s':>13}{'deliv/s':>11}{'vs raw':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'missing':>9}{'errors':>8}{'B/conn':>9}")
for r in rows:
    bpc = "-" if r[9] is None else f"{r[9]:.0f}"
    raw = dps.get("raw-" + r[0])
    ratio = (f"{r[3] / raw:.0%}" + ("!" if r[7] else "")) if raw else "-"
    print(f"{r[0]:<18}{r[1]:>8}{r[2]:>13.0f}{r[3]:>11.0f}{ratio:>8}{r[4]:>9.2f}{r[5]:>9.2f}{r[6]:>9.2f}{r[7]:>9}{r[8]:>8}{bpc:>9}")
print("\nvs raw: the gateway's deliveries/s over raw-writer's (raw-<scenario>: same subscribers,")
print("topics and publish rate, pre-encoded frames, one writev per batch), measured in this run;")
print("'!': the gateway run lost messages, so its rate is not comparable.")
PY
