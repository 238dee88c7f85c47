#!/usr/bin/env python3
"""Summary of make bench-backends (loadtest/backends.sh): the push-rtt JSON
files of a results directory grouped by variant and rate, medians over the
rounds (errors and timeouts summed), then what a hook or a worker adds over
the plain variant, as markdown.

    python3 loadtest/bench/backends.py bench/results/backends-<ts>
"""

import json
import pathlib
import statistics
import sys

ORDER = ["broadcast", "forward", "forward-rpc", "hook", "forward-py", "join-plain", "join-hook"]


def load(out):
    groups = {}
    for path in sorted(pathlib.Path(out).glob("*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        if "label" not in r:
            continue
        variant, rate = r["label"].rsplit(" ", 1)
        groups.setdefault((variant, int(float(rate))), []).append(r)
    return groups


def med(runs, *keys):
    vals = []
    for r in runs:
        v = r
        for k in keys:
            v = v[k]
        vals.append(v)
    return statistics.median(vals)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    groups = load(sys.argv[1])
    key = lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 99, k[1])
    print("| variant | offered/s | achieved/s | runs | p50 ms | p90 ms | p99 ms (runs) | max ms "
          "| ok | error | timeouts | gateway µs/op | redis µs/op | backend µs/op | send lag p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = {}
    for k in sorted(groups, key=key):
        runs = groups[k]
        row = {
            "achieved": med(runs, "achieved_rate"),
            "p50": med(runs, "latency_ms", "p50"),
            "p90": med(runs, "latency_ms", "p90"),
            "p99": med(runs, "latency_ms", "p99"),
            "max": med(runs, "latency_ms", "max"),
            "gw": med(runs, "cpu_us_per_op", "gateway"),
            "redis": med(runs, "cpu_us_per_op", "redis"),
            "other": med(runs, "cpu_us_per_op", "other"),
        }
        rows[k] = row
        ok = sum(r["ok"] for r in runs)
        err = sum(r["error"] for r in runs)
        to = sum(r["timeouts"] for r in runs)
        other = f"{row['other']:.1f}" if k[0] not in ("broadcast", "join-plain") else "–"
        p99s = ", ".join(f"{r['latency_ms']['p99']:.1f}" for r in runs)
        lags = [r["send_lag_ms"]["p99"] for r in runs if "send_lag_ms" in r]
        lag = f"{statistics.median(lags):.2f}" if lags else "–"
        print(f"| {k[0]} | {k[1]:,} | {row['achieved']:,.0f} | {len(runs)} | {row['p50']:.2f} "
              f"| {row['p90']:.2f} | {row['p99']:.2f} ({p99s}) | {row['max']:.1f} | {ok:,} | {err:,} | {to:,} "
              f"| {row['gw']:.1f} | {row['redis']:.1f} | {other} | {lag} |")
        reasons = {}
        for r in runs:
            for reason, n in r.get("reasons", {}).items():
                reasons[reason] = reasons.get(reason, 0) + n
            for f, n in r.get("failures", {}).items():
                reasons[f] = reasons.get(f, 0) + n
        if reasons:
            print(f"|  | errors: {reasons} | | | | | | | | | | | | | |")
    print()
    print("CPU in the measured window, in cores (CPU seconds / window seconds; medians):")
    print()
    print("| variant | offered/s | gateway | redis-server | backend | push-rtt (clients) | machine busy "
          "| run-queue wait, all four |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k in sorted(groups, key=key):
        runs = groups[k]
        c = lambda name: med([{"v": r["cpu_s"][name] / r["window_s"]} for r in runs], "v")
        waits = [sum(r["runqueue_wait_s"].values()) / r["window_s"] for r in runs if "runqueue_wait_s" in r]
        wait = f"{statistics.median(waits):.2f}" if waits else "–"
        print(f"| {k[0]} | {k[1]:,} | {c('gateway'):.2f} | {c('redis'):.2f} | {c('other'):.2f} "
              f"| {c('push_rtt'):.2f} | {c('machine_busy'):.2f} | {wait} |")
    print()
    print("Over the plain variant at the same rate (medians; + = more):")
    print()
    for variant, base in [("forward", "broadcast"), ("forward-rpc", "broadcast"),
                          ("hook", "broadcast"), ("forward-py", "broadcast"),
                          ("join-hook", "join-plain")]:
        for (v, rate), row in sorted(rows.items(), key=lambda kv: key(kv[0])):
            b = rows.get((base, rate))
            if v != variant or b is None:
                continue
            print(f"- {variant} vs {base} at {rate:,}/s: p50 {row['p50'] - b['p50']:+.2f} ms, "
                  f"p99 {row['p99'] - b['p99']:+.2f} ms, gateway CPU {row['gw'] - b['gw']:+.1f} µs/op, "
                  f"redis {row['redis'] - b['redis']:+.1f} µs/op")


if __name__ == "__main__":
    main()
