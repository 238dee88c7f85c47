// Rebalancing after a scale-out ([rebalance], docs/rebalancing.md) with the
// official phoenix.js client behind nginx in plain round-robin: one pod
// starts alone and gets every connection, two more start (a scale-out), and
// the first sheds its excess with close 1012, which phoenix.js reconnects
// from through nginx. The counts converge into the band, slowly, without a
// pod going below the average and without any client reconnecting over and
// over. With history on ([channel.history]), a publisher keeps publishing
// through the shedding, and every client, shed or not, ends with every
// message once, in order: phoenix.js rejoins with the last position it saw
// (docs/history.md). Waits are on the pods' /metrics gauges and the
// clients' events.

import { test } from "node:test";
import assert from "node:assert/strict";
import { freePort, HOST, LONGPOLL_SECRET, startGateway, startNginx, startRedis, testScope, until } from "../../testkit/index.mjs";
import { setTimeout as sleep } from "node:timers/promises";
import { join, openSocket, recordChannel } from "../lib/phx.js";

const CLIENTS = 90;
const INTERVAL_MS = 500;
const PERIOD_MS = 4000;
const MARGIN_MIN = 3;
const MAX_PER_ROUND = 10;
const CONVERGE_MS = 40_000;
/** The history test's topics, and how often each gets a message. */
const TOPICS = 3;
const PUBLISH_EVERY_MS = 40;
const API_KEY = "rebalance-history-api-key";

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
    recovered: value(/^gateway_history_recoveries_total\{[^}]*result="recovered"[^}]*\} (\d+)$/m),
    notRecovered: value(/^gateway_history_recoveries_total\{[^}]*result="not_recovered"[^}]*\} (\d+)$/m),
    gaps: value(/^gateway_history_gaps_total(?:\{[^}]*\})? (\d+)$/m),
    replayed: value(/^gateway_history_replayed_total(?:\{[^}]*\})? (\d+)$/m),
  };
}

/** A fleet's config with rebalancing at this file's pace; `extra` adds keys. */
function rebalanceConfig(name, extra = {}) {
  return {
    // Every client comes from nginx's address: no per-source rate here.
    server: { drain_delay_ms: 0, drain_period_ms: 0, connection_rate_per_source: 0 },
    redis: { prefix: `compat-${name}-${process.pid}-${Date.now()}:` },
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
    ...extra,
  };
}

/**
 * Redis, pod A alone behind nginx (which already lists the ports of the two
 * pods to come), and `CLIENTS` phoenix.js clients on A, each set up by
 * `joinClient(client, i)` (which joins its channel and returns what the
 * test keeps of it). `scaleOut()` then starts pods B and C; `converged()`
 * waits until every pod holds at most the ceiling with every client
 * connected and joined again.
 */
async function oneLoadedPod(t, scope, config, joinClient, env = {}) {
  const redis = await startRedis(scope);
  env = { ...env, REDIS_URL: redis.url, GATEWAY_LONGPOLL_SECRET: LONGPOLL_SECRET };
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
    clients.push({ ...client, ...(await joinClient(client, i)) });
  }
  const alone = await until("pod A's gauges with every client", async () => {
    const s = await scrape(a);
    return s.connections === CLIENTS && s.pods === 1 ? s : null;
  });
  assert.equal(alone.shed, 0, "a pod alone in its fleet sheds nothing");

  const average = CLIENTS / 3;
  const ceiling = Math.ceil(average + Math.max(average * 0.1, MARGIN_MIN));
  const fleet = { redis, lb, a, pods: [a], clients, average, ceiling };
  fleet.scaleOut = async () => {
    fleet.pods.push(await start("podB", portB), await start("podC", portC));
  };
  // All three report, none holds more than the ceiling, every client is
  // back (connected and joined). `onSample` sees every poll's samples.
  fleet.converged = (onSample = () => {}) =>
    until(
      `every pod at or under ${ceiling} connections with all ${CLIENTS} clients back`,
      async () => {
        const s = await Promise.all(fleet.pods.map(scrape));
        onSample(s);
        const total = s.reduce((n, p) => n + p.connections, 0);
        const joined = clients.every((cl) => cl.socket.isConnected() && cl.channel.state === "joined");
        // Each pod's last round saw the settled counts too (not clients in
        // flight between pods).
        const settled = s.every((p) => p.pods === 3 && p.connections <= ceiling && p.average === average);
        return settled && total === CLIENTS && joined ? s : null;
      },
      { timeoutMs: CONVERGE_MS },
    );
  return fleet;
}

/** The closes (socket events) every client saw. */
const closesOf = (clients) => clients.flatMap((cl) => cl.events.filter((e) => e.type === "close"));

test("after a scale-out, the loaded pod sheds its excess to the new pods through nginx, gradually", async (t) => {
  const scope = testScope(t);
  const fleet = await oneLoadedPod(t, scope, rebalanceConfig("rebalance"), async (client, i) => {
    const channel = client.socket.channel("room:lobby", { i });
    assert.equal((await join(channel)).status, "ok");
    return { channel };
  });
  const { clients, average, ceiling } = fleet;

  await fleet.scaleOut();
  const scaledAt = performance.now();

  // A is sampled on every poll.
  let lowestA = Infinity;
  const samples = await fleet.converged((s) => {
    lowestA = Math.min(lowestA, s[0].connections);
  });
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
  const closes = closesOf(clients);
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

/** A position "<epoch>:<offset>", split. */
function parse(position) {
  const i = position.lastIndexOf(":");
  return { epoch: position.slice(0, i), offset: Number(position.slice(i + 1)) };
}

/**
 * `topic` joined the way an app that recovers joins it (docs/history.md):
 * the join params are a function of the last position seen, which phoenix.js
 * evaluates on every rejoin, so a client that was shed asks for what came
 * after it. Every new_msg and join outcome is in `log`.
 */
function recoveringChannel(socket, topic) {
  const state = { last: null };
  const channel = socket.channel(topic, () => (state.last ? { history: { since: state.last } } : {}));
  const log = recordChannel(channel, ["new_msg"]);
  channel.on("new_msg", (_payload, ref) => {
    state.last = ref;
  });
  channel.joinPush.receive("ok", ({ history }) => {
    // A first join, or continuity lost: from the top. Recovered: the
    // replay follows and moves `last` on.
    if (!state.last || !history.recovered) state.last = history.position;
  });
  return { channel, log, state };
}

/**
 * Publishes message 0, 1, 2, ... to every topic, one message per topic
 * every `PUBLISH_EVERY_MS` (the publisher's rate, not a wait for anything),
 * until stopped: through `POST /api/broadcast` on the pods up in turn, and
 * every fourth with `redis-cli FCALL gateway_publish`, the backends' way.
 * Each topic's messages are published one after the other, each resolving
 * once stored, so `positions[topic]` lists them in order of position.
 * `stop()` resolves with how many were published per topic.
 */
function startPublishing(fleet, topics, prefix) {
  const positions = Object.fromEntries(topics.map((topic) => [topic, []]));
  const viaApi = async (pod, topic, payload) => {
    const res = await fetch(`${pod.httpUrl}/api/broadcast`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ topic, event: "new_msg", payload }),
      signal: AbortSignal.timeout(5000),
    });
    const body = await res.json();
    if (res.status !== 200) throw new Error(`POST /api/broadcast on ${pod.name}: ${res.status} ${JSON.stringify(body)}`);
    return body.position;
  };
  const viaFcall = async (topic, payload) => {
    const envelope = JSON.stringify({ event: "new_msg", payload });
    const out = await fleet.redis.cli("FCALL", "gateway_publish", "1", `${prefix}${topic}`, envelope);
    const [position, published] = out.split("\n");
    if (published !== "1") throw new Error(`FCALL gateway_publish answered ${JSON.stringify(out)}`);
    return position;
  };
  const publisher = { positions, sent: 0, error: null, startedAt: performance.now(), stoppedAt: null };
  let stopping = false;
  const running = (async () => {
    while (!stopping) {
      const seq = publisher.sent;
      const pace = sleep(PUBLISH_EVERY_MS);
      await Promise.all(
        topics.map(async (topic, k) => {
          const payload = { seq };
          const position =
            seq % 4 === 3
              ? await viaFcall(topic, payload)
              : await viaApi(fleet.pods[(seq + k) % fleet.pods.length], topic, payload);
          positions[topic].push(position);
        }),
      );
      publisher.sent = seq + 1;
      await pace;
    }
    publisher.stoppedAt = performance.now();
    return publisher.sent;
  })();
  running.catch((err) => {
    publisher.error = err;
  });
  publisher.stop = () => {
    stopping = true;
    return running;
  };
  return publisher;
}

test("with history on, no message is lost while the pods rebalance: every client gets every message once, in order", async (t) => {
  const scope = testScope(t);
  const config = rebalanceConfig("rebalance-history", {
    channel: [{ pattern: "room:*", events: ["new_msg"], history: { size: 1000, ttl: 600 } }],
  });
  const topics = Array.from({ length: TOPICS }, (_, k) => `room:rebalance-history-${k}`);
  const fleet = await oneLoadedPod(
    t,
    scope,
    config,
    async (client, i) => {
      const topic = topics[i % TOPICS];
      const r = recoveringChannel(client.socket, topic);
      assert.equal((await join(r.channel)).status, "ok");
      return { ...r, topic };
    },
    { GATEWAY_API_KEY: API_KEY },
  );
  const { clients, ceiling } = fleet;

  // Messages flow before, during and after the scale-out and the shedding.
  const publisher = startPublishing(fleet, topics, config.redis.prefix);
  await until("the first messages on pod A", async () => {
    if (publisher.error) throw publisher.error;
    return clients.every((cl) => cl.log.filter((e) => e.event === "new_msg").length >= 3);
  });
  await fleet.scaleOut();
  const samples = await fleet.converged(() => {
    if (publisher.error) throw publisher.error;
  });
  const sent = await publisher.stop();
  const last = sent - 1;
  await Promise.all(
    clients.map((cl, i) =>
      cl.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === last, {
        timeout: 15_000,
        label: `client ${i}: message ${last} on ${cl.topic}`,
      }),
    ),
  );
  const shed = samples.reduce((n, s) => n + s.shed, 0);
  const closes = closesOf(clients);
  const times = closes.map((e) => e.at);
  t.diagnostic(
    `${sent} messages per topic over ${Math.round(publisher.stoppedAt - publisher.startedAt)} ms; ` +
      `${shed} shed, the closes from ${Math.round(Math.min(...times) - publisher.startedAt)} ms ` +
      `to ${Math.round(Math.max(...times) - publisher.startedAt)} ms`,
  );

  // Most clients were shed while messages were being published.
  const moved = clients.filter((cl) => cl.events.filter((e) => e.type === "close").length > 0);
  assert.ok(moved.length >= CLIENTS - ceiling, `only ${moved.length} clients were shed`);
  assert.deepEqual([...new Set(closes.map((e) => e.code))], [1012], "every close is a shed");
  assert.ok(Math.min(...times) > publisher.startedAt && Math.max(...times) < publisher.stoppedAt, "shed while publishing");

  // Every client: every message of its topic exactly once, in order, at the
  // positions the publishers were given; every rejoin recovered.
  let replayed = 0;
  for (const [i, cl] of clients.entries()) {
    const got = cl.log.filter((e) => e.event === "new_msg");
    assert.deepEqual(
      got.map((e) => e.payload.seq),
      Array.from({ length: sent }, (_, seq) => seq),
      `client ${i} (${cl.topic}, ${cl.events.filter((e) => e.type === "close").length} sheds): every message once, in order`,
    );
    assert.deepEqual(
      got.map((e) => e.ref),
      publisher.positions[cl.topic],
      `client ${i}: at the positions they were published at`,
    );
    const joins = cl.log.filter((e) => e.event === "join:ok");
    assert.equal(joins.length, 1 + cl.events.filter((e) => e.type === "close").length, `client ${i}: one rejoin per shed`);
    for (const j of joins.slice(1)) {
      assert.equal(j.payload.history.recovered, true, `client ${i}: rejoin reply ${JSON.stringify(j.payload)}`);
    }
    // What each rejoin replayed: from the last message before it to the
    // reply's position.
    for (const j of joins.slice(1)) {
      const before = got.filter((e) => e.seq < j.seq).at(-1);
      const from = before ? parse(before.ref).offset : 0;
      replayed += parse(j.payload.history.position).offset - from;
    }
  }
  const after = await Promise.all(fleet.pods.map(scrape));
  const sum = (key) => after.reduce((n, s) => n + (s[key] ?? 0), 0);
  t.diagnostic(
    `${closes.length} rejoins (all recovered) replayed ${replayed} messages; ` +
      `pods counted ${sum("recovered")} recovered, ${sum("notRecovered")} not, ${sum("gaps")} gaps`,
  );
  assert.equal(sum("notRecovered"), 0, "no rejoin was refused its recovery");
  // What the clients were away for came by replay: their own count is the
  // pods'.
  assert.ok(replayed > 0, "the rejoins replayed what their clients missed");
  assert.equal(sum("replayed"), replayed, "messages the pods replayed");
  assert.equal(sum("recovered"), closes.length, "every rejoin asked for what followed its last message");
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
  // The grace before SIGKILL outlasts the drain (3 s) and its deadline
  // (4 s): the default 3 s would race the drain's last closes and cut them
  // (1006).
  const exited = a.proc.stop({ signal: "SIGTERM", graceMs: 10_000 });
  // A withdrew its count while it still drains (3 s): B's next round sees
  // B alone.
  await until("pod B seeing itself alone", async () => (await scrape(b)).pods === 1, { timeoutMs: 2500 });
  assert.ok(a.proc.running, "pod A still draining when B saw it gone");
  assert.ok(!(await exited).graceExpired, "pod A ended its drain by itself");

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
