#!/usr/bin/env bash
# make bench-redis: what Redis holds and spends for gateway pods, measured on
# a redis-server of its own (a free loopback port, never 6379) with release
# gateway pods on config/example.toml's rules (room:* keeps history, size
# 100, and has presence) plus the bench config's bench:* rule (plain pub/sub):
#
#   pods     used_memory and client connections of idle pods, Redis CPU a
#            second with no pod and with two idle pods;
#   topics   SIZING_TOPICS (10,000) bench:* topics subscribed by one pod,
#            then the same by a second pod (per pod-topic), then as many
#            room:* topics (history metadata written by each join, presence
#            read), and Redis CPU a second while they are held (presence's
#            periodic reconciles: SIZING_RECONCILE_SECS, 30 s);
#   presence SIZING_USERS (10,000) users present (`user` join param) in
#            SIZING_ROOMS (101) room:* rooms, each on both pods: memory per user, CPU per join and
#            per leave (commandstats per join too);
#   history  SIZING_HISTORY_TOPICS (1,000) topics x 100 kept messages
#            (FCALL gateway_publish, pipelined) at two envelope sizes, and
#            idempotency keys;
#   cpu      fan-out at SIZING_RATES (1000 4000) msgs/s for SIZING_DURATION
#            (10s), PUBLISH on bench:* and FCALL gateway_publish on room:*,
#            topics subscribed by one pod and by two: Redis CPU per message.
#
# Memory is INFO memory's used_memory once it has settled, minus the reading
# before; CPU is INFO cpu's used_cpu_sys + used_cpu_user (the loadtest fan-out
# reads the same counters of the process from /proc), with the idle rate
# measured just before subtracted. Every wait is bounded; every process is
# stopped at exit. Results: bench/results/redis-sizing-<ts>/ (readings.txt,
# the loadtest JSON of the fan-outs) and a table (loadtest/bench/redis_sizing.py).
set -euo pipefail
cd "$(dirname "$0")/.."

TOPICS=${SIZING_TOPICS:-10000}
USERS=${SIZING_USERS:-10000}
# Rooms of about USERS/ROOMS users; an odd number, so that connection g
# (pod g mod 2, room g mod ROOMS) puts every room on both pods.
ROOMS=${SIZING_ROOMS:-101}
HTOPICS=${SIZING_HISTORY_TOPICS:-1000}
ENVELOPES=${SIZING_ENVELOPES:-200 1000}
RATES=${SIZING_RATES:-1000 4000}
DURATION=${SIZING_DURATION:-10}
IDLE_SECS=${SIZING_IDLE_SECS:-10}
# Presence lists every topic of a pod again every pod_timeout_ms / 3 (10 s,
# jittered) in one burst: the window must hold a few bursts.
RECONCILE_SECS=${SIZING_RECONCILE_SECS:-30}
WAIT_SECS=${SIZING_WAIT_SECS:-120}
OUT=bench/results/redis-sizing-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
# shellcheck source=loadtest/bench/lib.sh
. loadtest/bench/lib.sh
PREFIX="phx:"  # the default prefix: key names are as long as in production

[ -n "${SIZING_NO_BUILD:-}" ] || build_release
start_redis
echo "redis-server $REDIS_PID on $REDIS_URL; results in $OUT" >&2

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
# info SECTION FIELD: one field of INFO.
info() { rcli INFO "$1" | tr -d '\r' | awk -F: -v k="$2" '$1 == k { print $2 }'; }
cpu() { rcli INFO cpu | tr -d '\r' | awk -F: '$1 == "used_cpu_sys" || $1 == "used_cpu_user" { s += $2 } END { printf "%.6f\n", s }'; }
now() { date +%s.%N; }
# note KEY VALUE: one reading, for the summary.
note() { echo "$1 $2" >>"$OUT/readings.txt"; echo "  $1 = $2" >&2; }

# mem: used_memory once two readings half a second apart differ by less
# than 4 KiB (client buffers shrink, lazy frees finish), at most 10 s.
mem() {
  local a b i
  a=$(info memory used_memory)
  for i in $(seq 20); do
    sleep 0.5
    b=$(info memory used_memory)
    if [ $((b - a)) -lt 4096 ] && [ $((a - b)) -lt 4096 ]; then break; fi
    a=$b
  done
  echo "$b"
}

# wait_until DESC CMD...: until CMD succeeds, at most WAIT_SECS; fails the run.
wait_until() {
  local desc=$1; shift
  local end=$((SECONDS + WAIT_SECS))
  until "$@"; do
    if [ $SECONDS -ge $end ]; then echo "timed out waiting for $desc" >&2; exit 1; fi
    sleep 0.2
  done
}

# bg_rate SECS: Redis CPU seconds a second over SECS of whatever runs now.
bg_rate() {
  local c0 t0 c1 t1
  c0=$(cpu); t0=$(now)
  sleep "$1"
  c1=$(cpu); t1=$(now)
  python3 -c "print(f'{($c1 - $c0) / ($t1 - $t0):.6f}')"
}

ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ]; }
library() { rcli FUNCTION LIST LIBRARYNAME gateway_history_v1 | grep -q gateway_history_v1; }
channels() { info stats pubsub_channels; }
channels_at_least() { [ "$(channels)" -ge "$1" ]; }
# subscriptions: channels summed over every client (a channel two pods
# subscribe counts twice).
subscriptions() { rcli CLIENT LIST | grep -o ' sub=[0-9]*' | awk -F= '{ s += $2 } END { print s + 0 }'; }
subscriptions_at_least() { [ "$(subscriptions)" -ge "$1" ]; }
channels_at_most() { [ "$(channels)" -le "$1" ]; }
# present TOPIC_PREFIX: presences in the rooms TOPIC_PREFIX:0..ROOMS-1
# (HLEN of each hash, a command the pods do not use, so that commandstats
# keep the pods' commands apart).
present() {
  local i
  for ((i = 0; i < ROOMS; i++)); do echo "HLEN ${PREFIX}presence:{$1:$i}"; done | rcli | awk '{ s += $1 } END { print s + 0 }'
}
present_is() { [ "$(present "$1")" -eq "$2" ]; }

# connections NAME: the pods' client connections to Redis as CLIENT LIST and
# ss see them (pid, flags, subscriptions, last command), for the summary.
connections() {
  ss -Htnp state established "( dport = :$REDIS_PORT )" >"$OUT/$1.ss"
  rcli CLIENT LIST >"$OUT/$1.clients"
  python3 - "$OUT/$1.ss" "$OUT/$1.clients" "$1" "${POD_PIDS[@]}" >>"$OUT/readings.txt" <<'PY'
import re, sys
ss, clients, name, pids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
owner = {}
for line in open(ss):
    m = re.search(r":(\d+)\s+\S+:\d+\s+users:\(\(\"[^\"]*\",pid=(\d+)", line)
    if m:
        owner[m.group(1)] = m.group(2)
per = {p: [] for p in pids}
for line in open(clients):
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    pid = owner.get(f.get("addr", "").rsplit(":", 1)[-1])
    if pid in per:
        per[pid].append(f"{f.get('flags')}/{f.get('sub')}/{f.get('cmd')}")
for i, p in enumerate(pids):
    print(f"{name}.pod{i + 1}.connections {len(per[p])}")
    print(f"{name}.pod{i + 1}.clients {','.join(sorted(per[p]))}")
PY
  grep "^$1\.pod" "$OUT/readings.txt" >&2
}

# hold NAME URL ARGS...: `loadtest idle ARGS` in the background for up to
# 10 minutes, until `release`d; sets HOLD_PID.
hold() {
  local name=$1 url=$2; shift 2
  echo "== $name: loadtest idle $*" >&2
  echo "$LT idle $* --url $url" >"$OUT/$name.cmd"
  "$LT" idle "$@" --url "$url" --source-ips "$IPS" --duration 600s >"$OUT/$name.txt" 2>&1 &
  HOLD_PID=$!
  PIDS+=($HOLD_PID)
}
release() { stop "$1"; }
alive() { kill -0 "$1" 2>/dev/null || { echo "loadtest $1 exited early:" >&2; tail -n 20 "$OUT"/*.txt >&2; exit 1; }; }

POD_PIDS=()

echo "== empty Redis" >&2
note redis.version "$(info server redis_version)"
note machine "$(nproc)cores/$(awk '/MemTotal/ { printf "%.0fGiB", $2 / 1048576 }' /proc/meminfo)/$(uname -r)"
note loadavg.start "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)"
M0=$(mem); note mem.empty "$M0"
note cpu_rate.empty "$(bg_rate "$IDLE_SECS")"

echo "== two idle pods" >&2
start_gateway podA; A_PID=$GW_PID A_PORT=$GW_PORT A_URL=$GW_URL A_API=$GW_API
POD_PIDS+=("$A_PID")
wait_until "pod A ready" ready "$A_PORT"
wait_until "the history library" library
M1=$(mem); note mem.pod1 "$((M1 - M0))"
start_gateway podB; B_PID=$GW_PID B_PORT=$GW_PORT B_URL=$GW_URL
POD_PIDS+=("$B_PID")
wait_until "pod B ready" ready "$B_PORT"
M2=$(mem); note mem.pod2 "$((M2 - M1))"
note clients.idle "$(info clients connected_clients)"
connections idle
note cpu_rate.idle_pods "$(bg_rate "$IDLE_SECS")"

echo "== $TOPICS topics (bench:*, plain pub/sub)" >&2
C0=$(channels)
hold topicsA "$A_URL" -n $((TOPICS / 10)) -r 2000 -t 10 --rooms "$TOPICS" --topic-prefix bench:sz
TA=$HOLD_PID
wait_until "$TOPICS channels" channels_at_least $((C0 + TOPICS)); alive "$TA"
M3=$(mem); note mem.topics "$((M3 - M2))"
S0=$(subscriptions)
hold topicsB "$B_URL" -n $((TOPICS / 10)) -r 2000 -t 10 --rooms "$TOPICS" --topic-prefix bench:sz
TB=$HOLD_PID
wait_until "$TOPICS more subscriptions" subscriptions_at_least $((S0 + TOPICS)); alive "$TB"
M4=$(mem); note mem.pod_topics "$((M4 - M3))"
note cpu_rate.topics "$(bg_rate "$IDLE_SECS")"

echo "== $TOPICS topics (room:*, history and presence)" >&2
K0=$(rcli DBSIZE)
C1=$(channels)
hold roomsA "$A_URL" -n $((TOPICS / 10)) -r 2000 -t 10 --rooms "$TOPICS" --topic-prefix room:sz
RA=$HOLD_PID
wait_until "$TOPICS more channels" channels_at_least $((C1 + TOPICS)); alive "$RA"
M5=$(mem); note mem.room_topics "$((M5 - M4))"
note keys.room_topics "$(($(rcli DBSIZE) - K0))"
rcli INFO commandstats >"$OUT/rooms.before"
note cpu_rate.room_topics "$(bg_rate "$RECONCILE_SECS")"
rcli INFO commandstats >"$OUT/rooms.after"
release "$RA"; release "$TB"; release "$TA"
wait_until "the topics unsubscribed" channels_at_most "$C0"

echo "== $USERS present users in $ROOMS rooms over two pods" >&2
C2=$(channels)
S1=$(subscriptions)
hold watchers "$A_URL,$B_URL" -n $((ROOMS * 2)) -r 1000 -t 1 --rooms "$ROOMS" --topic-prefix room:pr
W=$HOLD_PID
wait_until "the rooms subscribed" subscriptions_at_least $((S1 + ROOMS * 2)); alive "$W"
M6=$(mem)
rate=$(bg_rate "$IDLE_SECS"); note cpu_rate.watchers "$rate"
rcli INFO commandstats >"$OUT/joins.before"
c0=$(cpu); t0=$(now)
hold users "$A_URL,$B_URL" -n "$USERS" -r 2000 -t 1 --rooms "$ROOMS" --join-user --topic-prefix room:pr
U=$HOLD_PID
wait_until "$USERS present" present_is room:pr "$USERS"; alive "$U"
c1=$(cpu); t1=$(now)
rcli INFO commandstats >"$OUT/joins.after"
note joins.cpu "$(python3 -c "print(f'{$c1 - $c0:.6f} {$t1 - $t0:.3f}')")"
M7=$(mem); note mem.users "$((M7 - M6))"
connections busy
room="${PREFIX}presence:{room:pr:0}"
note presence.topic_hash "$(rcli MEMORY USAGE "$room" SAMPLES 0) $(rcli HLEN "$room")"
note presence.entry "$(rcli HRANDFIELD "$room" 1 WITHVALUES | tr '\n' ' ')"
for k in $(rcli --scan --pattern "${PREFIX}presence-pod:*"); do
  note presence.pod_index "$(rcli MEMORY USAGE "$k" SAMPLES 0) $(rcli HLEN "$k")"
done
rcli INFO commandstats >"$OUT/leaves.before"
c0=$(cpu); t0=$(now)
release "$U"
wait_until "every user gone" present_is room:pr 0
c1=$(cpu); t1=$(now)
rcli INFO commandstats >"$OUT/leaves.after"
note leaves.cpu "$(python3 -c "print(f'{$c1 - $c0:.6f} {$t1 - $t0:.3f}')")"
release "$W"
wait_until "the rooms unsubscribed" channels_at_most "$C2"

echo "== history: $HTOPICS topics x 100 messages" >&2
for size in $ENVELOPES; do
  H0=$(mem)
  c0=$(cpu)
  python3 - "$HTOPICS" "$size" "room:h$size" "$PREFIX" <<'PY' | rcli --pipe >"$OUT/history-$size.pipe"
import sys
topics, size, name, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = sys.stdout.buffer
head = '{"event":"new_msg","payload":{"body":"'
tail = '"}}'
body = "x" * max(0, size - len(head) - len(tail))
env = (head + body + tail).encode()
def cmd(*args):
    b = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        b += b"$%d\r\n%s\r\n" % (len(a), a)
    return b
# size 100 and ttl 3600 s as config/example.toml's room:* rule, as pods pass them
for _ in range(100):
    for t in range(topics):
        out.write(cmd("FCALL", "gateway_publish", 1, f"{prefix}{name}:{t}", env, "", 100, 3600000))
PY
  c1=$(cpu)
  grep -q 'errors: 0' "$OUT/history-$size.pipe" || { cat "$OUT/history-$size.pipe" >&2; exit 1; }
  H1=$(mem)
  note "history.$size.mem" "$((H1 - H0))"
  note "history.$size.cpu" "$(python3 -c "print(f'{$c1 - $c0:.6f}')")"
  note "history.$size.stream" "$(rcli MEMORY USAGE "{${PREFIX}room:h$size:0}:s" SAMPLES 0) $(rcli XLEN "{${PREFIX}room:h$size:0}:s")"
  note "history.$size.meta" "$(rcli MEMORY USAGE "{${PREFIX}room:h$size:0}:m" SAMPLES 0)"
done
# Idempotency keys: 10,000 publishes with keys to one full topic (its
# stream stays at 100), each key kept 2 minutes.
size=${ENVELOPES%% *}
H0=$(mem)
python3 - "${PREFIX}room:h$size:0" "$size" <<'PY' | rcli --pipe >"$OUT/idempotency.pipe"
import sys
chan, size = sys.argv[1], int(sys.argv[2])
head, tail = '{"event":"new_msg","payload":{"body":"', '"}}'
env = (head + "x" * max(0, size - len(head) - len(tail)) + tail).encode()
for i in range(10000):
    key = b"%032x" % i
    args = [b"FCALL", b"gateway_publish", b"1", chan.encode(), env, key, b"100", b"3600000"]
    sys.stdout.buffer.write(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
PY
grep -q 'errors: 0' "$OUT/idempotency.pipe" || { cat "$OUT/idempotency.pipe" >&2; exit 1; }
H1=$(mem); note idempotency.mem "$((H1 - H0))"

echo "== Redis CPU per message" >&2
fan() {  # fan NAME VIA TOPIC_PREFIX URLS SUBSCRIBERS RATE
  local name=$1 via=$2 tp=$3 urls=$4 subs=$5 rate=$6 bg
  bg=$(bg_rate 5)
  note "$name.cpu_rate_before" "$bg"
  LT_TOPIC_PREFIX=$tp LT_TAIL=6 lt "$name" fanout -s "$subs" -t 101 -p "$rate" --via "$via" \
    --redis-url "$REDIS_URL" --prefix "$PREFIX" --redis-pid "$REDIS_PID" --url "$urls" \
    --gateway-pid "$A_PID,$B_PID" --duration "${DURATION}s" --drain 1s
}
for rate in $RATES; do
  for pods in 1 2; do
    if [ "$pods" = 1 ]; then urls=$A_URL subs=101; else urls="$A_URL,$B_URL" subs=202; fi
    fan "fan-publish-p$rate-pods$pods" redis "bench:c$rate$pods" "$urls" "$subs" "$rate"
    fan "fan-fcall-p$rate-pods$pods" fcall "room:c$rate$pods" "$urls" "$subs" "$rate"
  done
done
note loadavg.end "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)"
note mem.end "$(info memory used_memory) rss $(info memory used_memory_rss)"

python3 loadtest/bench/redis_sizing.py "$OUT" "$DURATION" "$RECONCILE_SECS" | tee "$OUT/summary.md"
