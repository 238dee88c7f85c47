"""The summary of loadtest/redis_sizing.sh (make bench-redis): reads
OUT/readings.txt, the INFO commandstats around the presence joins and
leaves, and the fan-out JSON, and prints Markdown tables.

    python3 loadtest/bench/redis_sizing.py OUT DURATION_SECS [RECONCILE_SECS]
"""

import json
import os
import re
import sys

# The script's own commands, left out of the pods' commandstats.
OWN = {"info", "hlen", "client", "memory", "function", "dbsize", "eval", "ping", "scan", "hrandfield", "xlen", "command"}


def readings(out):
    r = {}
    for line in open(os.path.join(out, "readings.txt")):
        k, _, v = line.rstrip("\n").partition(" ")
        r.setdefault(k, []).append(v)
    return r


def commandstats(path):
    stats = {}
    for line in open(path):
        m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line.strip())
        if m:
            stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return stats


def delta(out, name):
    if not os.path.exists(os.path.join(out, f"{name}.after")):
        return {}
    before = commandstats(os.path.join(out, f"{name}.before"))
    after = commandstats(os.path.join(out, f"{name}.after"))
    d = {}
    for cmd, (calls, usec) in after.items():
        c0, u0 = before.get(cmd, (0, 0))
        if calls > c0 and cmd.split("|")[0] not in OWN:
            d[cmd] = (calls - c0, usec - u0)
    return d


def kib(b):
    return f"{b / 1024:,.1f} KiB" if abs(b) >= 10240 else f"{b:,.0f} B"


def main():
    out, duration = sys.argv[1], float(sys.argv[2])
    r = readings(out)
    one = lambda k: r[k][0]
    num = lambda k: float(one(k).split()[0])
    topics = int(re.search(r"--rooms (\d+)", open(os.path.join(out, "topicsA.cmd")).read()).group(1))
    users = int(re.search(r"-n (\d+)", open(os.path.join(out, "users.cmd")).read()).group(1))

    print(f"# make bench-redis ({out})\n")
    print(f"redis-server {one('redis.version')}, machine {one('machine')}, load average "
          f"{one('loadavg.start')} at the start, {one('loadavg.end')} at the end.\n")

    print("| what | measured | per unit |")
    print("|---|---:|---:|")
    empty_rate = num("cpu_rate.empty")
    print(f"| empty Redis | used_memory {kib(num('mem.empty'))}, CPU {empty_rate * 1e3:.2f} ms/s | |")
    for i in (1, 2):
        print(f"| idle pod {i}: used_memory | +{kib(num(f'mem.pod{i}'))} | |")
        conns = r.get(f"idle.pod{i}.connections", ["?"])[0]
        kinds = r.get(f"idle.pod{i}.clients", [""])[0]
        print(f"| idle pod {i}: connections to Redis (flags/subscriptions/last command) | {conns} | `{kinds}` |")
    for i in (1, 2):
        conns = r.get(f"busy.pod{i}.connections", ["?"])[0]
        kinds = r.get(f"busy.pod{i}.clients", [""])[0]
        print(f"| pod {i} once its clients joined room:* with presence: connections | {conns} | `{kinds}` |")
    idle_rate = num("cpu_rate.idle_pods")
    print(f"| Redis CPU, 2 idle pods | {idle_rate * 1e3:.2f} ms/s | {(idle_rate - empty_rate) / 2 * 1e3:.2f} ms/s per pod |")
    mt = num("mem.topics")
    print(f"| {topics:,} bench:* topics subscribed by one pod | +{kib(mt)} | **{mt / topics:,.0f} B per topic** |")
    mpt = num("mem.pod_topics")
    print(f"| the same topics subscribed by a second pod | +{kib(mpt)} | **{mpt / topics:,.0f} B per pod-topic** |")
    tr = num("cpu_rate.topics")
    print(f"| Redis CPU while 2 × {topics:,} pod-topics are held | {tr * 1e3:.2f} ms/s | {(tr - idle_rate) * 1e6 / (2 * topics):.3f} µs/s per pod-topic |")
    mr = num("mem.room_topics")
    keys = num("keys.room_topics")
    print(f"| {topics:,} room:* topics joined on one pod (subscription + history metadata) | +{kib(mr)}, {keys:,.0f} keys | **{mr / topics:,.0f} B per topic** |")
    rr = num("cpu_rate.room_topics")
    secs = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    d = delta(out, "rooms")
    per = ", ".join(f"{cmd} {calls / secs:,.1f}/s ({usec / calls:.1f} µs)" for cmd, (calls, usec) in sorted(d.items(), key=lambda x: -x[1][0]))
    hg = d.get("hgetall", (0, 0))[0]
    each = f"; {(rr - tr) * secs * 1e6 / hg:.1f} µs of Redis CPU per HGETALL" if hg else ""
    print(f"| Redis CPU while they are held too ({secs:.0f} s) | {rr * 1e3:.2f} ms/s | {(rr - tr) * 1e6 / topics:.3f} µs/s per room topic{each}; commands: {per} |")

    mu = num("mem.users")
    hbytes, hlen = (float(x) for x in one("presence.topic_hash").split())
    print(f"| {users:,} present users (101 rooms, 2 pods) | +{kib(mu)} | **{mu / users:,.0f} B per present user** |")
    print(f"| … of which a room's hash (`MEMORY USAGE`) | {kib(hbytes)} for {hlen:.0f} | {hbytes / max(hlen, 1):,.0f} B per entry |")
    for v in r.get("presence.pod_index", []):
        b, n = (float(x) for x in v.split())
        print(f"| … a pod's index hash | {kib(b)} for {n:.0f} | {b / max(n, 1):,.0f} B per entry |")
    wr = num("cpu_rate.watchers")
    for name, what in (("joins", "join"), ("leaves", "leave")):
        c, dt = (float(x) for x in one(f"{name}.cpu").split())
        net = c - wr * dt
        d = delta(out, name)
        per = ", ".join(f"{cmd} {calls / users:.2f} ({usec / calls:.1f} µs)" for cmd, (calls, usec) in sorted(d.items(), key=lambda x: -x[1][0]) if calls / users >= 0.01)
        print(f"| {users:,} presence {name} in {dt:.1f} s: Redis CPU | {c:.3f} s ({net:.3f} s above the idle rate) | "
              f"**{net * 1e6 / users:.1f} µs per {what}** (commands per {what}, those an FCALL runs included: {per}) |")

    for k in sorted(r):
        m = re.match(r"history\.(\d+)\.mem$", k)
        if not m:
            continue
        size = m.group(1)
        n = int(re.search(r"replies: (\d+)", open(os.path.join(out, f"history-{size}.pipe")).read()).group(1))
        mh = num(k)
        sbytes, slen = (float(x) for x in one(f"history.{size}.stream").split())
        meta = num(f"history.{size}.meta")
        cpu = num(f"history.{size}.cpu")
        print(f"| {n:,} kept messages of {size} B envelopes ({n // 100:,} topics × 100) | +{kib(mh)} | "
              f"**{mh / n:,.0f} B per message**; one topic: stream {kib(sbytes)} for {slen:.0f}, metadata {kib(meta)} |")
        print(f"| … Redis CPU for those FCALLs, pipelined | {cpu:.3f} s | {cpu * 1e6 / n:.1f} µs per FCALL |")
    if "idempotency.mem" in r:
        mi = num("idempotency.mem")
        print(f"| 10,000 idempotency keys (kept 2 min) | +{kib(mi)} | {mi / 10000:,.0f} B per key |")

    print("\n## Redis CPU per message (fan-out)\n")
    print("| publisher | msgs/s asked | published | subscribing pods | Redis CPU µs/msg (all) | above the idle rate | commandstats µs/call | deliveries/s | missing |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs = []
    for f in os.listdir(out):
        m = re.match(r"(fan-(\w+)-p(\d+)-pods(\d))\.json$", f)
        if m:
            runs.append((int(m.group(3)), m.group(4), m.group(2), m.group(1)))
    for rate, pods, via, name in sorted(runs):
        d = json.load(open(os.path.join(out, name + ".json")))
        published = d["counters"]["published"]
        red = d.get("redis") or {}
        cpu = (red.get("use") or {}).get("cpu_secs")
        bg = float(r[f"{name}.cpu_rate_before"][0])
        window = duration + 1.0  # the measured phase and the 1 s drain
        per_call = red.get("fcall_us_per_call") if via == "fcall" else red.get("publish_us_per_call")
        if cpu is None or not published:
            print(f"| {via} | {rate} | {published} | {pods} | – | – | – | – | {d.get('missing')} |")
            continue
        print(f"| {'PUBLISH' if via == 'publish' else 'FCALL gateway_publish'} | {rate} | {published:,} | {pods} | "
              f"{cpu * 1e6 / published:.1f} | {(cpu - bg * window) * 1e6 / published:.1f} | {per_call or 0:.1f} | "
              f"{d.get('deliveries_per_sec') or 0:,.0f} | {d.get('missing')} |")


if __name__ == "__main__":
    main()
