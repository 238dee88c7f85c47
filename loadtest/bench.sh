#!/usr/bin/env bash
# make bench: a short, fixed set of loadtest scenarios against a release
# gateway and a redis-server on this machine. Writes JSON and HTML results under
# bench/results/<timestamp>/ and prints a summary table.
#
# Every fan-out scenario is also run against raw-writer (loadtest/src/bin/
# raw_writer.rs: the same pre-encoded frames written to the same number of
# loopback sockets with no protocol work, one writev per queued batch) and the
# gateway's deliveries/s is reported as a ratio to that ceiling ("vs raw").
#
# BENCH_DURATION (default 10s) is the measured phase of each scenario, except
# fanout-10k, the issue's target run, which lasts BENCH_LONG (default 60s).
# presence-join runs on three pods of its own, started after the others.
# History (docs/performance.md#history): the 10,000-subscriber fan-out with
# history off (PUBLISH on bench:*) and on (FCALL gateway_publish on hist:*),
# BENCH_DURATION each, and `recover` (10,000 clients rejoining 100 messages
# behind after a pod restart) on a pod of its own; `make bench-history` runs
# more rounds and rates.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-10s}
LONG=${BENCH_LONG:-60s}
OUT=bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
# shellcheck source=loadtest/bench/lib.sh
. loadtest/bench/lib.sh
# shellcheck source=loadtest/bench/history.sh
. loadtest/bench/history.sh

build_release
start_redis
start_gateway gateway
start_raw

REDIS_ARGS=(--via redis --redis-url "$REDIS_URL" --prefix "$PREFIX")
API_ARGS=(--via api --api-url "$GW_API" --api-key "$KEY")
# fanout NAME DURATION "SHAPE" PUBLISHER-ARGS...: the scenario against the
# gateway, then the same shape against raw-writer (through its /api/broadcast).
fanout() {
  local name=$1 dur=$2 shape=$3; shift 3
  # shellcheck disable=SC2086
  lt "$name" fanout $shape "$@" --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$dur" --drain 5s
  # shellcheck disable=SC2086
  lt "raw-$name" fanout $shape --via api --api-url "$RAW_API" --url "$RAW_URL" --gateway-pid "$RAW_PID" \
    --duration "$dur" --drain 5s
}

lt connect connect -n 10000 -r 12000 -t 1 --url "$GW_URL" --duration "$DURATION"
# idle on a pod of its own: memory growth from a fresh start to the steady state
MAIN_GW_PID=$GW_PID MAIN_GW_URL=$GW_URL
start_gateway gateway-idle
lt idle idle -n 10000 -r 5000 --gateway-pid "$GW_PID" --url "$GW_URL" --duration 15s
stop "$GW_PID"
GW_PID=$MAIN_GW_PID GW_URL=$MAIN_GW_URL
# reconnect storm on a pod of its own: 10,000 joined clients (over 1,000
# topics), the pod killed (SIGKILL) and started again, every client
# reconnecting and rejoining with phoenix.js's backoff (the full 19,000:
# docs/performance.md#reconnect-storm)
start_gateway gateway-storm
lt reconnect-storm reconnect-storm -n 10000 -r 5000 --gateway-pid "$GW_PID" --url "$GW_URL" \
  --restart-cmd "$(restart_cmd gateway-storm)"
stop "$GW_PID"
[ -f "$OUT/gateway-storm.pid" ] && stop "$(cat "$OUT/gateway-storm.pid")" && rm -f "$OUT/gateway-storm.pid"
GW_PID=$MAIN_GW_PID GW_URL=$MAIN_GW_URL
# history off and on, side by side (named as make bench-history names them)
hist_fanout fanout-off-redis-p50-r1 off-redis 50 "$DURATION"
hist_fanout fanout-on-fcall-p50-r1 on-fcall 50 "$DURATION"
# a pod restart: 10,000 clients over 1,000 history topics, 100 messages behind
hist_recover recover -n 10000 -r 5000 --distinct-topics 1000 --behind 100
# quiet latency: 1,000 subscribers, each alone on its topic; 1,000 msgs/s in all
fanout fanout-quiet "$DURATION" "-s 1000 -t 1000 -p 1000" "${REDIS_ARGS[@]}"
# the target: one topic, 10,000 subscribers, through Redis, sustained
fanout fanout-10k "$LONG" "-s 10000 -t 1 -p 50" "${REDIS_ARGS[@]}"
fanout fanout-api "$DURATION" "-s 1000 -t 10 -p 500" "${API_ARGS[@]}"
fanout fanout-2k "$DURATION" "-s 2000 -t 1 -p 200" "${API_ARGS[@]}"
lt chat chat -c 200 -p 1 --url "$GW_URL" --gateway-pid "$GW_PID" --duration "$DURATION"
# presence at scale, small (docs/performance.md#presence-at-scale has the full
# shape): three pods, a topic of 5,000 presences (1,000 connected users, 4,000
# written into Redis), 100 joins/s into it
presence_join presence-join --present 1000 --seeded 4000 --rate 100 --duration "$DURATION" --settle 5s

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
                 d["missing"], d["errors"], mem.get("bytes_per_connection"),
                 (d.get("gateway_cpu") or {}).get("us_per_delivery")))
print(f"\nresults in {out} (commit {d.get('git_commit')}, {d['machine']['cores']} cores)\n")
print(f"{'scenario':<24}{'conns':>8}{'conn+join/s':>13}{'deliv/s':>11}{'vs raw':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'missing':>9}{'errors':>8}{'B/conn':>9}{'CPU µs/d':>10}")
for r in rows:
    bpc = "-" if r[9] is None else f"{r[9]:.0f}"
    cpu = "-" if r[10] is None else f"{r[10]:.2f}"
    raw = dps.get("raw-" + r[0])
    ratio = (f"{r[3] / raw:.0%}" + ("!" if r[7] else "")) if raw else "-"
    print(f"{r[0]:<24}{r[1]:>8}{r[2]:>13.0f}{r[3]:>11.0f}{ratio:>8}{r[4]:>9.2f}{r[5]:>9.2f}{r[6]:>9.2f}{r[7]:>9}{r[8]:>8}{bpc:>9}{cpu:>10}")
print("\nvs raw: the gateway's deliveries/s over raw-writer's (raw-<scenario>: same subscribers,")
print("topics and publish rate, pre-encoded frames, one writev per batch), measured in this run;")
print("'!': the gateway run lost messages, so its rate is not comparable.")
print("CPU µs/d: the server process's CPU time (user+system) per delivery over the run and drain.")
for f in sorted(os.listdir(out)):
    if f.endswith(".json"):
        p = json.load(open(os.path.join(out, f))).get("presence")
        if p:
            print(f"\n{f[:-5]}: {p['joins']} joins, join reply p99 {p['join_reply']['p99_ms']:.1f} ms, "
                  f"presence_state p99 {p['presence_state']['p99_ms']:.1f} ms, "
                  f"{p['redis_commands_per_join']:.2f} Redis commands/join, "
                  f"{p['diff_frames_per_client_sec']:.1f} presence_diff/client/s (max {p['diff_frames_max_in_one_sec']} in a second), "
                  f"lists agree: {p['lists_agree']}")
storm = os.path.join(out, "reconnect-storm.json")
if os.path.exists(storm):
    sj = json.load(open(storm))
    s = sj["storm"] or {}
    o = s.get("outcome", {})
    tcp = o.get("tcp", {})
    gw, cl = s.get("gateway_us_per_rejoin", {}), s.get("client_us_per_rejoin", {})
    f = lambda v: "-" if v is None else f"{v:.1f}"
    print(f"\nreconnect-storm: {o.get('clients')} clients, SIG{o.get('signal')}; refused {s.get('refused')}, "
          f"errors {s.get('connect_errors')}, not rejoined {s.get('not_rejoined')}, "
          f"ListenOverflows {tcp.get('ListenOverflows')}, ListenDrops {tcp.get('ListenDrops')}; "
          f"listening after {o.get('listening_after_secs', 0):.2f} s, all rejoined after {f(s.get('all_rejoined_after_secs'))} s; "
          f"join p99 {sj['latency']['join']['p99_ms']:.1f} ms; "
          f"gateway µs/rejoin user {f(gw.get('user'))} system {f(gw.get('system'))}, "
          f"client user {f(cl.get('user'))} system {f(cl.get('system'))}")
PY
hist_summary
