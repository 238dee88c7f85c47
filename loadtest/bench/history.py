"""Summary of the history runs in a results directory (loadtest/bench/history.sh):
fan-out with history on vs off, medians over rounds and the paired on/off
ratio of deliveries/s; recover runs, medians over rounds."""
import json
import os
import re
import statistics
import sys

out = sys.argv[1]
fan, rec = {}, []
for f in sorted(os.listdir(out)):
    m = re.fullmatch(r"fanout-(off-redis|on-fcall|off-api|on-api)-p([0-9.]+)-r(\d+)\.json", f)
    if m:
        fan.setdefault((m[2], m[1]), {})[int(m[3])] = json.load(open(os.path.join(out, f)))
    elif re.fullmatch(r"recover(-r\d+)?\.json", f):
        rec.append(json.load(open(os.path.join(out, f))))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def g(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p)
    return d


if fan:
    print(f"\nhistory fan-out ({out}): medians over rounds (n = rounds)")
    print(f"{'rate':>5} {'variant':<10}{'n':>3}{'deliv/s':>10}{'on/off':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'missing':>8}{'pos err':>8}{'gw µs/d':>9}{'gw s':>7}{'lt s':>7}{'redis s':>8}"
          f"{'redis µs/msg':>13}{'fcall µs':>9}{'pub µs':>8}")
    pairs = {"on-fcall": "off-redis", "on-api": "off-api"}
    for (rate, variant) in sorted(fan, key=lambda k: (float(k[0]), ["off-redis", "on-fcall", "off-api", "on-api"].index(k[1]))):
        runs = fan[(rate, variant)]
        vals = list(runs.values())
        ratio = None
        if variant in pairs and (rate, pairs[variant]) in fan:
            off = fan[(rate, pairs[variant])]
            ratio = med([runs[r]["deliveries_per_sec"] / off[r]["deliveries_per_sec"]
                         for r in runs if r in off and off[r]["deliveries_per_sec"]])
        pos_err = sum(v["counters"].get("pos_gaps", 0) + v["counters"].get("pos_dups", 0) for v in vals)
        print(f"{rate:>5} {variant:<10}{len(vals):>3}"
              f"{fmt(med([v['deliveries_per_sec'] for v in vals]), '.0f'):>10}"
              f"{'-' if ratio is None else format(ratio, '.1%'):>8}"
              f"{fmt(med([v['latency']['delivery']['p50_ms'] for v in vals])):>9}"
              f"{fmt(med([v['latency']['delivery']['p99_ms'] for v in vals])):>9}"
              f"{sum(v['missing'] for v in vals):>8}{pos_err:>8}"
              f"{fmt(med([g(v, 'gateway_cpu', 'us_per_delivery') for v in vals])):>9}"
              f"{fmt(med([g(v, 'gateway_cpu', 'secs') for v in vals]), '.1f'):>7}"
              f"{fmt(med([v.get('client_cpu_secs') for v in vals]), '.1f'):>7}"
              f"{fmt(med([g(v, 'redis', 'use', 'cpu_secs') for v in vals]), '.2f'):>8}"
              f"{fmt(med([g(v, 'redis', 'cpu_us_per_published') for v in vals]), '.1f'):>13}"
              f"{fmt(med([g(v, 'redis', 'fcall_us_per_call') for v in vals]), '.1f'):>9}"
              f"{fmt(med([g(v, 'redis', 'publish_us_per_call') for v in vals]), '.1f'):>8}")
    print("on/off: median over rounds of each round's history-on deliveries/s over the history-off run of the same round;")
    print("pos err: offsets skipped + repeated (all rounds); gw/lt/redis s: CPU seconds of the gateway, loadtest and")
    print("redis-server over the measured phase and drain; redis µs/msg: redis-server CPU per published message;")
    print("fcall/pub µs: INFO commandstats time per FCALL / PUBLISH call.")

if rec:
    r0 = rec[0]["recover"]["outcome"]
    print(f"\nrecover: {r0['clients']} clients over {r0['topics']} topics, {r0['behind']} behind, SIG{r0['signal']}; "
          f"medians over {len(rec)} run(s)")
    rows = [
        ("join reply p50 / p99 ms", lambda d: d["latency"]["join"]["p50_ms"], lambda d: d["latency"]["join"]["p99_ms"]),
        ("join+replay p50 / p99 ms", lambda d: d["latency"]["join_replay"]["p50_ms"], lambda d: d["latency"]["join_replay"]["p99_ms"]),
        ("all back after listening s", lambda d: d["recover"]["all_back_after_listening_secs"], None),
        ("Redis fcall calls / ms (rejoins)", lambda d: d["recover"]["redis_rejoin_fcall"]["calls"],
         lambda d: d["recover"]["redis_rejoin_fcall"]["usec"] / 1000),
        ("Redis all commands ms / CPU s (rejoins)", lambda d: d["recover"]["redis_rejoin_usec"] / 1000,
         lambda d: d["recover"]["redis_rejoin_cpu_secs"]),
        ("Redis while down: fcall µs/call / CPU s", lambda d: d["recover"]["redis_while_down_fcall"]["us_per_call"],
         lambda d: d["recover"]["redis_while_down_cpu_secs"]),
        ("CPU s gateway / loadtest", lambda d: d["recover"]["cpu_secs"]["gateway"], lambda d: d["recover"]["cpu_secs"]["clients"]),
        ("gateway share of CPU %", lambda d: 100 * d["recover"]["gateway_share_of_cpu"], None),
    ]
    for name, a, b in rows:
        s = fmt(med([a(d) for d in rec]))
        if b:
            s += " / " + fmt(med([b(d) for d in rec]))
        print(f"  {name:<42}{s}")
    tot = lambda k: sum(d["recover"][k] for d in rec)
    print(f"  {'recovered true / false (all runs)':<42}{tot('recovered')} / {tot('not_recovered')}")
    print(f"  {'positions received / expected (all runs)':<42}{tot('positions_received')} / {tot('positions_expected')}")
    print(f"  {'lost / skipped / repeated (all runs)':<42}{tot('lost')} / {tot('skipped')} / {tot('repeated')}")
    print(f"  {'not rejoined / errors (all runs)':<42}{tot('not_rejoined')} / {sum(d['errors'] for d in rec)}")
