// Rebalancing after a scale-out ([rebalance], docs/rebalancing.md) with the
// official phoenix.js client behind nginx in plain round-robin: one pod
// starts alone and gets every connection, two more start (a scale-out), and
// the first sheds its excess with close 1012, which phoenix.js reconnects
// from through nginx. The counts converge into the band, slowly, without a
// pod going below the average and without any client reconnecting over and
// over. Waits are on the pods' /metrics gauges and the clients' events.

import { test } from "node:test";
import assert from "node:assert/strict";
import { freePort, HOST, LONGPOLL_SECRET, startGateway, startNginx, startRedis, testScope, until } from "../../testkit/index.mjs";
import { join, openSocket } from "../lib/phx.js";

const CLIENTS = 90;
const INTERVAL_MS = 500;
const PERIOD_MS = 4000;
const MARGIN_MIN = 3;
const MAX_PER_ROUND = 10;
const CONVERGE_MS = 40_000;

/** One sample of a pod's /metrics: the gauges this test reads. */
async function scrape(pod) {
  const res = await fetch(`${pod.httpUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const value = (re) => {
    const m = text.match(re);
    return m ? Number(m[1]) : null;
  };
  return {
    connections: value(/^gateway_connections\{[^}]*transport="websocket"[^}]*\} (\d+)$/m) ?? 0,
    shed: value(/^gateway_rebalance_shed_total (\d+)$/m),
    pods: value(/^gateway_rebalance_fleet_pods (\d+)$/m),
    average: value(/^gateway_rebalance_fleet_average (\S+)$/m),
    ceiling: value(/^gateway_rebalance_ceiling (\d+)$/m),
  };
}

test("after a scale-out, the loaded pod sheds its excess to the new pods through nginx, gradually", async (t) => {
  const scope = testScope(t);
  const redis = await startRedis(scope);
  const config = {
    // Every client comes from nginx's address: no per-source rate here.
    server: { drain_delay_ms: 0, drain_period_ms: 0, connection_rate_per_source: 0 },
    redis: { prefix: `compat-rebalance-${process.pid}-${Date.now()}:` },
    rebalance: {
      enabled: true,
      interval_ms: INTERVAL_MS,
      period_ms: PERIOD_MS,
      margin: 0.1,
      margin_min: MARGIN_MIN,
      max_per_round: MAX_PER_ROUND,
    },
    socket: [{ path: "/socket" }],
    channel: [{ pattern: "room:*", events: ["new_msg"] }],
  };
  const env = { REDIS_URL: redis.url, GATEWAY_LONGPOLL_SECRET: LONGPOLL_SECRET };
  const start = (name, port) => startGateway(scope, { name, config, env, port });
  const a = await start("podA", 0);
  // The pods of the scale-out: nginx knows them before they run, as a
  // Service lists new endpoints; max_fails=0 has it try them again at once.
  const [portB, portC] = [await freePort(), await freePort()];
  const lb = await startNginx(scope, {
    upstreams: [a.addr, `${HOST}:${portB}`, `${HOST}:${portC}`],
    serverParams: "max_fails=0",
  });

  // Every client lands on A, the only pod up, and joins a topic.
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    const client = await openSocket(lb, {}, t);
    const channel = client.socket.channel("room:lobby", { i });
    assert.equal((await join(channel)).status, "ok");
    clients.push({ ...client, channel });
  }
  const alone = await until("pod A's gauges with every client", async () => {
    const s = await scrape(a);
    return s.connections === CLIENTS && s.pods === 1 ? s : null;
  });
  assert.equal(alone.shed, 0, "a pod alone in its fleet sheds nothing");

  const b = await start("podB", portB);
  const c = await start("podC", portC);
  const pods = [a, b, c];
  const average = CLIENTS / pods.length;
  const ceiling = Math.ceil(average + Math.max(average * 0.1, MARGIN_MIN));
  const scaledAt = performance.now();

  // Converged: all three report, none holds more than the ceiling, every
  // client is back (connected and joined). A is sampled on every poll.
  let lowestA = Infinity;
  const samples = await until(
    `every pod at or under ${ceiling} connections with all ${CLIENTS} clients back`,
    async () => {
      const s = await Promise.all(pods.map(scrape));
      lowestA = Math.min(lowestA, s[0].connections);
      const total = s.reduce((n, p) => n + p.connections, 0);
      const joined = clients.every((cl) => cl.socket.isConnected() && cl.channel.state === "joined");
      // Each pod's last round saw the settled counts too (not clients in
      // flight between pods).
      const settled = s.every((p) => p.pods === 3 && p.connections <= ceiling && p.average === average);
      return settled && total === CLIENTS && joined ? s : null;
    },
    { timeoutMs: CONVERGE_MS },
  );
  const tookMs = performance.now() - scaledAt;
  t.diagnostic(`converged in ${Math.round(tookMs)} ms: ${JSON.stringify(samples)}`);

  for (const s of samples) {
    assert.equal(s.average, average, "each pod's fleet average");
    assert.equal(s.ceiling, ceiling, "each pod's ceiling");
  }
  // Shedding stops at the ceiling, above the average; clients that come
  // back to A through nginx only add to it.
  assert.ok(lowestA >= average, `pod A went down to ${lowestA}, below the average ${average}`);
  const shed = samples.reduce((n, s) => n + s.shed, 0);
  assert.ok(shed >= CLIENTS - ceiling, `only ${shed} shed`);

  // The clients' side: every shed close was 1012 and phoenix.js came back
  // by itself; nobody was bounced around.
  const closes = clients.flatMap((cl) => cl.events.filter((e) => e.type === "close"));
  assert.ok(closes.length > 0);
  assert.deepEqual([...new Set(closes.map((e) => e.code))], [1012], "every close is 1012");
  assert.equal(closes.length, shed, "one client close per shed connection");
  const reconnects = clients.map((cl) => cl.events.filter((e) => e.type === "open").length - 1);
  const most = Math.max(...reconnects);
  t.diagnostic(`reconnects per client: ${JSON.stringify(reconnects.reduce((h, n) => ({ ...h, [n]: (h[n] || 0) + 1 }), {}))}`);
  // Oldest first: a client that came back to a shedding pod is among the
  // last it would shed again.
  assert.ok(most <= 2, `a client reconnected ${most} times`);

  // Spread over the period, not at once: at most a round's quota (two
  // pods shedding at once at most) in any interval, over seconds.
  const times = closes.map((e) => e.at).sort((x, y) => x - y);
  let busiest = 0;
  for (let i = 0, j = 0; i < times.length; i++) {
    while (times[i] - times[j] >= INTERVAL_MS) j++;
    busiest = Math.max(busiest, i - j + 1);
  }
  const span = times[times.length - 1] - times[0];
  t.diagnostic(`${times.length} sheds over ${Math.round(span)} ms, at most ${busiest} in ${INTERVAL_MS} ms`);
  assert.ok(busiest <= 2 * (MAX_PER_ROUND + 1), `${busiest} closes within ${INTERVAL_MS} ms`);
  assert.ok(span >= PERIOD_MS / 2, `the sheds took only ${Math.round(span)} ms`);
});

test("a draining pod stops shedding at once and withdraws its count", async (t) => {
  const scope = testScope(t);
  const redis = await startRedis(scope);
  const n = 60;
  const prefix = `compat-rebalance-drain-${process.pid}-${Date.now()}:`;
  const config = (drain) => ({
    server: { drain_delay_ms: 0, drain_period_ms: drain, shutdown_deadline_ms: drain + 1000, connection_rate_per_source: 0 },
    redis: { prefix },
    // A slow pace: about two closes a second, so the drain starts mid-way.
    rebalance: { enabled: true, interval_ms: INTERVAL_MS, period_ms: 20_000, margin: 0.1, margin_min: MARGIN_MIN },
    socket: [{ path: "/socket" }],
    channel: [{ pattern: "room:*", events: ["new_msg"] }],
  });
  const env = { REDIS_URL: redis.url, GATEWAY_LONGPOLL_SECRET: LONGPOLL_SECRET };
  const a = await startGateway(scope, { name: "podA", config: config(3000), env });
  const portB = await freePort();
  const lb = await startNginx(scope, { upstreams: [a.addr, `${HOST}:${portB}`], serverParams: "max_fails=0" });
  const clients = [];
  for (let i = 0; i < n; i++) clients.push(await openSocket(lb, {}, t));
  const b = await startGateway(scope, { name: "podB", config: config(0), env, port: portB });

  // A is shedding, and B counts both pods.
  await until("pod A shedding", async () => ((await scrape(a)).shed ?? 0) >= 1, { timeoutMs: 10_000 });
  await until("pod B seeing two pods", async () => (await scrape(b)).pods === 2, { timeoutMs: 10_000 });

  const termAt = performance.now();
  const exited = a.kill("SIGTERM");
  // A withdrew its count while it still drains (3 s): B's next round sees
  // B alone.
  await until("pod B seeing itself alone", async () => (await scrape(b)).pods === 1, { timeoutMs: 2500 });
  assert.ok(a.proc.running, "pod A still draining when B saw it gone");
  await exited;

  // Every client is back, on B; what A closed after the drain began was
  // closed the drain's way (1001), not shed (1012).
  await until("every client reconnected to B", async () => (await scrape(b)).connections === n, { timeoutMs: 15_000 });
  const closes = clients.flatMap((cl) => cl.events.filter((e) => e.type === "close"));
  const late = closes.filter((e) => e.at > termAt + 100);
  t.diagnostic(`closes: ${closes.length - late.length} before the drain (1012), ${late.length} after`);
  assert.ok(late.length > 0);
  assert.deepEqual([...new Set(late.map((e) => e.code))], [1001], "after SIGTERM, only the drain closes");
  assert.ok(
    closes.filter((e) => e.at < termAt).every((e) => e.code === 1012),
    "before SIGTERM, only sheds",
  );
});
