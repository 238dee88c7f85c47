#!/usr/bin/env python3
"""Turns the runs of loadtest/curves.sh into SVG charts (drawn by bench-plot)
and summary.md, a set of markdown tables with every measured point."""
import json
import os
import re
import subprocess
import sys

out, plot = sys.argv[1], sys.argv[2]
runs = {}
for f in os.listdir(out):
    if f.endswith(".json") and not f.startswith("chart-"):
        runs[f[:-5]] = json.load(open(os.path.join(out, f)))


def points(prefix):
    """Runs named PREFIX-<number>, by number."""
    got = []
    for name, d in runs.items():
        m = re.fullmatch(re.escape(prefix) + r"-(\d+)", name)
        if m:
            got.append((int(m.group(1)), d))
    return sorted(got, key=lambda p: p[0])


def chart(name, title, x_label, y_label, series, log_x=False, log_y=False):
    series = [{"name": n, "points": p} for n, p in series if p]
    if not series:
        return
    spec = os.path.join(out, f"chart-{name}.json")
    json.dump({"title": title, "x_label": x_label, "y_label": y_label,
               "log_x": log_x, "log_y": log_y, "series": series}, open(spec, "w"))
    subprocess.run([plot, spec, os.path.join(out, f"{name}.svg")], check=True)


def kib(d):
    return (d.get("memory") or {}).get("bytes_per_connection", 0) / 1024


def p99(d):
    return d["latency"]["delivery"]["p99_ms"]


md = []
any_run = next(iter(runs.values()), None)
if any_run:
    m = any_run["machine"]
    md.append(f"Measured at commit `{any_run.get('git_commit')}` on {m['cores']} cores, "
              f"{m['memory_bytes'] / 2**30:.0f} GiB; gateway, Redis and loadtest on the same machine.\n")

gw, raw = points("mem-gw"), points("mem-raw")
if gw:
    three = points("mem3-gw")
    chart("memory", "memory per idle joined connection", "connections", "KiB per connection",
          [("gateway (1 process)", [(n, kib(d)) for n, d in gw]),
           ("raw-writer (no protocol)", [(n, kib(d)) for n, d in raw]),
           ("gateway, 3 pods (sum)", [(n, kib(d)) for n, d in three])])
    md.append("### Memory per idle joined connection\n")
    md.append("| connections | gateway KiB/conn | gateway RSS after (MiB) | raw-writer KiB/conn | conn+join/s | errors |")
    md.append("|---:|---:|---:|---:|---:|---:|")
    rawd = dict(raw)
    for n, d in gw:
        r = rawd.get(n)
        md.append(f"| {n} | {kib(d):.2f} | {d['memory']['rss_after'] / 2**20:.0f} | "
                  f"{kib(r) if r else float('nan'):.2f} | {d['connections_joins_per_sec']:.0f} | {d['errors']} |")
    for n, d in three:
        md.append(f"| {n} over 3 pods | {kib(d):.2f} | {d['memory']['rss_after'] / 2**20:.0f} (sum) | - | "
                  f"{d['connections_joins_per_sec']:.0f} | {d['errors']} |")
    md.append("")


def cpu_us(d):
    """Server CPU µs per delivery, or nan when not measured."""
    c = (d or {}).get("gateway_cpu") or {}
    v = c.get("us_per_delivery")
    return float("nan") if v is None else v


def fanout_table(title, label, gw, raw):
    md.append(f"### {title}\n")
    md.append(f"| {label} | gateway deliv/s | raw deliv/s | vs raw | gateway p50 ms | gateway p99 ms | raw p99 ms "
              f"| gateway CPU µs/deliv | raw CPU µs/deliv | gateway missing | disconnects |")
    md.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rawd = dict(raw)
    for x, d in gw:
        r = rawd.get(x)
        ratio = f"{d['deliveries_per_sec'] / r['deliveries_per_sec']:.0%}" if r else "-"
        md.append(f"| {x} | {d['deliveries_per_sec']:.0f} | {r['deliveries_per_sec'] if r else 0:.0f} | {ratio} | "
                  f"{d['latency']['delivery']['p50_ms']:.2f} | {p99(d):.2f} | {p99(r) if r else float('nan'):.2f} | "
                  f"{cpu_us(d):.2f} | {cpu_us(r):.2f} | {d['missing']} | {d['counters']['disconnects']} |")
    md.append("")


gw, raw = points("subs-gw"), points("subs-raw")
if gw:
    chart("subscribers-deliveries", "deliveries/s vs subscribers of one topic (200k/s offered)",
          "subscribers", "deliveries/s",
          [("gateway (Redis)", [(x, d["deliveries_per_sec"]) for x, d in gw]),
           ("raw-writer", [(x, d["deliveries_per_sec"]) for x, d in raw])], log_x=True)
    chart("subscribers-p99", "p99 publish->receive vs subscribers of one topic (200k/s offered)",
          "subscribers", "p99 ms",
          [("gateway (Redis)", [(x, p99(d)) for x, d in gw]),
           ("raw-writer", [(x, p99(d)) for x, d in raw])], log_x=True, log_y=True)
    fanout_table("Fan-out vs subscribers of one topic (200,000 deliveries/s offered)", "subscribers", gw, raw)

gw, raw = points("rate-gw"), points("rate-raw")
if gw:
    chart("rate-p99", "p99 publish->receive vs publish rate (one topic, 10k subscribers)",
          "messages/s published", "p99 ms",
          [("gateway (Redis)", [(x, p99(d)) for x, d in gw]),
           ("raw-writer", [(x, p99(d)) for x, d in raw])], log_y=True)
    chart("rate-deliveries", "deliveries/s vs publish rate (one topic, 10k subscribers)",
          "messages/s published", "deliveries/s",
          [("gateway (Redis)", [(x, d["deliveries_per_sec"]) for x, d in gw]),
           ("raw-writer", [(x, d["deliveries_per_sec"]) for x, d in raw])])
    chart("rate-cpu", "server CPU per delivery vs publish rate (one topic, 10k subscribers)",
          "messages/s published", "CPU µs per delivery",
          [("gateway (Redis)", [(x, cpu_us(d)) for x, d in gw if cpu_us(d) == cpu_us(d)]),
           ("raw-writer", [(x, cpu_us(d)) for x, d in raw if cpu_us(d) == cpu_us(d)])])
    fanout_table("Fan-out vs publish rate (one topic, 10,000 subscribers)", "msgs/s", gw, raw)

pods = points("pods")
if pods:
    chart("pods", "one topic, 6,000 subscribers, 40 msgs/s, spread over N pods",
          "gateway pods", "deliveries/s",
          [("gateway (Redis)", [(x, d["deliveries_per_sec"]) for x, d in pods])])
    md.append("### The same fan-out over 1, 2 and 3 pods (6,000 subscribers, 40 msgs/s, one Redis)\n")
    md.append("| pods | Redis messages per broadcast | deliveries/s | p50 ms | p99 ms | gateways' CPU µs/deliv | missing |")
    md.append("|---:|---:|---:|---:|---:|---:|---:|")
    for x, d in pods:
        md.append(f"| {x} | {d.get('redis_messages_per_publish') or 0:.2f} | {d['deliveries_per_sec']:.0f} | "
                  f"{d['latency']['delivery']['p50_ms']:.2f} | {p99(d):.2f} | {cpu_us(d):.2f} | {d['missing']} |")
    md.append("")

open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
print(f"charts and summary.md in {out}")
