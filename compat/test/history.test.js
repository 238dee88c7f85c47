// History and recovery (issue 16) with the unmodified phoenix.js client:
// three gateway pods with config/example.toml (room:* keeps its last 100
// messages) sharing one Redis, nginx round-robin in front. A client that
// loses its connection rejoins with the last position it saw (join params as
// a function, which phoenix.js evaluates on every rejoin) and gets what it
// missed, in order, exactly once. Messages are published by a phoenix.js
// client's pushes on another pod, POST /api/broadcast on a third pod, and
// `redis-cli FCALL gateway_publish` (docs/history.md).

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { LongPoll } from "phoenix";
import { startCluster, suiteScope, until } from "../../testkit/index.mjs";
import { join, openSocket, push, recordChannel } from "../lib/phx.js";

const API_KEY = "history-test-api-key";
/** A reconnect or rejoin, with a pod restart or a poll window in between. */
const RECOVER_MS = 40_000;
/** A position: "<epoch>:<offset>". */
const POSITION = /^[0-9A-Za-z_-]+:\d+$/;

const scope = suiteScope();
let cluster;
before(async () => {
  cluster = await startCluster(scope, { pods: 3, env: { GATEWAY_API_KEY: API_KEY } });
});

let n = 0;
const unique = (name) => `room:history-${name}-${process.pid}-${++n}`;

function parse(position) {
  assert.match(position, POSITION);
  const i = position.lastIndexOf(":");
  return { epoch: position.slice(0, i), offset: Number(position.slice(i + 1)) };
}

/**
 * `topic` on `socket` the way an app that recovers joins it: the join params
 * are a function of the last position seen (from a message's ref, or from
 * the join reply when there is nothing to recover from), so every automatic
 * rejoin asks for what came after it. `first` is the history param of a
 * join without a position ({last: N}). Every new_msg and join outcome is in
 * `log` (lib/phx.js recordChannel).
 */
function recoveringChannel(socket, topic, { first = null } = {}) {
  const state = { last: null };
  const channel = socket.channel(topic, () => {
    if (state.last) return { history: { since: state.last } };
    return first ? { history: first } : {};
  });
  const log = recordChannel(channel, ["new_msg"]);
  channel.on("new_msg", (_payload, ref) => {
    state.last = ref;
  });
  channel.joinPush.receive("ok", ({ history }) => {
    // Recovered: the replay follows and moves `last` on. Not recovered (or
    // a first join): start from the top.
    if (!state.last || !history.recovered) state.last = history.position;
  });
  return { channel, log, state };
}

/** The new_msg entries of a log as {seq, via, position, offset, epoch}. */
function messages(log, from = 0) {
  return log
    .filter((e) => e.event === "new_msg", from)
    .map((e) => ({ seq: e.payload.seq, via: e.payload.via, position: e.ref, ...parse(e.ref), at: e.seq }));
}

/** Every seq of `want` exactly once, in order, at consecutive offsets of one epoch. */
function assertExactlyOnceInOrder(got, want) {
  assert.deepEqual(
    got.map((m) => m.seq),
    want,
    "every message exactly once, in the order it was published",
  );
  for (let i = 1; i < got.length; i++) {
    assert.equal(got[i].epoch, got[0].epoch, `message ${got[i].seq} in the same epoch`);
    assert.equal(got[i].offset, got[i - 1].offset + 1, `message ${got[i].seq} right after ${got[i - 1].seq}`);
  }
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

/** POST /api/broadcast on `pod`; resolves with the position it got. */
async function viaApi(pod, topic, payload) {
  const res = await fetch(`${pod.httpUrl}/api/broadcast`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ topic, event: "new_msg", payload }),
    signal: AbortSignal.timeout(5000),
  });
  const body = await res.json();
  assert.equal(res.status, 200, `POST /api/broadcast: ${JSON.stringify(body)}`);
  assert.equal(body.ok, true);
  return body.position;
}

/** The backends' command: `redis-cli FCALL gateway_publish 1 phx:<topic> <envelope>`. */
async function viaFcall(topic, payload) {
  const out = await cluster.redis.cli(
    "FCALL",
    "gateway_publish",
    "1",
    `phx:${topic}`,
    JSON.stringify({ event: "new_msg", payload }),
  );
  const [position, published] = out.split("\n");
  assert.equal(published, "1", `FCALL gateway_publish answered ${JSON.stringify(out)}`);
  return position;
}

/** A phoenix.js client on `pod` joined to `topic` that pushes new_msg. */
async function pusher(t, pod, topic) {
  const c = await openSocket(pod, {}, t);
  const channel = c.socket.channel(topic);
  assert.equal((await join(channel)).status, "ok", `pusher joins ${topic} on ${pod.name}`);
  return async (payload) => {
    assert.deepEqual(await push(channel, "new_msg", payload), { status: "ok", response: {} });
  };
}

/**
 * Publishes message `seq` through the three paths in turn: a phoenix.js
 * client's push on one pod, the HTTP API on another, redis-cli FCALL. Each
 * call resolves once the message is stored and published, so the order of
 * calls is the order of positions. Numbers messages from `from`.
 */
function publisher(topic, { pushVia, apiPod, from = 0 }) {
  const paths = [
    (seq) => pushVia({ seq, via: "push" }),
    (seq) => viaApi(apiPod, topic, { seq, via: "api" }),
    (seq) => viaFcall(topic, { seq, via: "fcall" }),
  ];
  let next = from;
  return async () => {
    const seq = next++;
    await paths[seq % paths.length](seq);
    return seq;
  };
}

/** The join:ok entries of a log after the first. */
const rejoins = (log) => log.filter((e) => e.event === "join:ok").slice(1);

test('{"history": {"last": N}} on a first join replays the last N kept, in order, with positions', async (t) => {
  const topic = unique("last");
  const published = [];
  for (let seq = 0; seq < 120; seq++) published.push(await viaFcall(topic, { seq, via: "fcall" }));
  const top = parse(published.at(-1));
  assert.deepEqual(
    published.map((p) => parse(p).offset),
    range(1, 121),
    "FCALL gave offsets 1..120",
  );

  // last: 10, over WebSocket on one pod and long-poll through nginx.
  const v1 = {
    vsn: "1.0.0",
    encode: (msg, callback) => callback(JSON.stringify(msg)),
    decode: (raw, callback) => callback(JSON.parse(raw)),
  };
  for (const [name, url, opts] of [
    ["WebSocket", cluster.pods[1].socketUrl, {}],
    ["WebSocket, V1 serializer", cluster.pods[0].socketUrl, v1],
    ["long-poll", cluster.socketUrl, { transport: LongPoll }],
  ]) {
    const c = await openSocket({ socketUrl: url }, opts, t);
    const r = recoveringChannel(c.socket, topic, { first: { last: 10 } });
    const reply = await join(r.channel);
    assert.equal(reply.status, "ok");
    assert.deepEqual(reply.response.history, { recovered: false, position: published.at(-1) }, name);
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 119, { label: `${name}: replay` });
    const replayed = messages(r.log);
    assertExactlyOnceInOrder(replayed, range(110, 120));
    assert.equal(replayed.at(-1).position, published.at(-1));
    assert.equal(replayed.at(-1).epoch, top.epoch);
    // The replay comes right after the ok reply.
    const ok = r.log.filter((e) => e.event === "join:ok")[0];
    assert.ok(replayed.every((m) => m.at > ok.seq), `${name}: replay after the reply`);
    assert.equal(r.state.last, published.at(-1));
    if (opts.vsn) {
      const frames = c.frames.filter((f) => f.dir === "in" && f.event === "new_msg");
      assert.deepEqual(frames.map((f) => f.shape), Array(10).fill("object"));
      assert.deepEqual(frames.map((f) => f.ref), published.slice(110), "V1: the position is the frame's ref");
    }
  }

  // More than the room keeps (size = 100): the 100 kept, oldest trimmed.
  const c = await openSocket(cluster.pods[2], {}, t);
  const all = recoveringChannel(c.socket, topic, { first: { last: 1000 } });
  assert.equal((await join(all.channel)).status, "ok");
  await all.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 119, { label: "replay of all kept" });
  // A live message after the replay: nothing else came in between.
  const live = await viaApi(cluster.pods[0], topic, { seq: 120, via: "api" });
  await all.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 120, { label: "live after replay" });
  assertExactlyOnceInOrder(messages(all.log), range(20, 121));
  assert.equal(messages(all.log).at(-1).position, live);
});

test(
  "WebSocket client on pod A: pod A restarted while 50 messages come through pod B's pushes, the API on pod C and FCALL; " +
    "after phoenix.js' reconnect and rejoin it has every message once, in order, recovered: true",
  async (t) => {
    const topic = unique("ws");
    const [podA, podB, podC] = cluster.pods;
    const reader = await openSocket(podA, { reconnectAfterMs: () => 100 }, t);
    const r = recoveringChannel(reader.socket, topic);
    const first = await join(r.channel);
    assert.equal(first.status, "ok");
    assert.equal(first.response.history.recovered, false, "a first join without since");
    t.diagnostic(`first join: ${JSON.stringify(first.response)}`);

    const publish = publisher(topic, { pushVia: await pusher(t, podB, topic), apiPod: podC });
    // Live before the loss.
    for (let i = 0; i < 6; i++) await publish();
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 5, { label: "the live messages" });
    const lastBefore = r.state.last;

    const since = reader.events.mark;
    await podA.kill("SIGKILL");
    await reader.events.waitFor((e) => e.type === "close", { from: since, label: "the client sees pod A go" });
    // 35 while pod A is down...
    for (let i = 0; i < 35; i++) await publish();
    const whileDown = r.state.last;
    // ...and 15 more while it restarts and the client reconnects and rejoins.
    const restarted = podA.restart();
    for (let i = 0; i < 15; i++) await publish();
    await restarted;
    t.diagnostic(`pod A restarted on :${podA.port}`);
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 55, {
      timeout: RECOVER_MS,
      label: "every message after the rejoin",
    });
    // One more, after everything: nothing is delivered twice before it.
    await publish();
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 56, { label: "the last message" });

    assert.equal(whileDown, lastBefore, "nothing arrived while pod A was down");
    const again = rejoins(r.log);
    assert.equal(again.length, 1, "one rejoin");
    assert.equal(again[0].payload.history.recovered, true, `rejoin reply ${JSON.stringify(again[0].payload)}`);
    const got = messages(r.log);
    assertExactlyOnceInOrder(got, range(0, 57));
    const joinSent = reader.frames.filter((f) => f.dir === "out" && f.event === "phx_join").at(-1);
    assert.deepEqual(joinSent.payload, { history: { since: lastBefore } }, "the rejoin asked for what followed");
    const replayed = got.filter((m) => m.at > again[0].seq && m.offset <= parse(again[0].payload.history.position).offset);
    t.diagnostic(
      `rejoin reply ${JSON.stringify(again[0].payload.history)}; ${replayed.length} messages replayed, ` +
        `${got.filter((m) => m.at > again[0].seq).length - replayed.length} live after it`,
    );
    assert.ok(replayed.length >= 35, "at least what was published while pod A was down came by replay");
    assert.deepEqual(
      [...new Set(got.map((m) => m.via))].sort(),
      ["api", "fcall", "push"],
      "all three publishing paths",
    );
  },
);

test("more missed than the room keeps: the rejoin says recovered: false and replays nothing", async (t) => {
  const topic = unique("lost");
  const c = await openSocket(cluster.pods[0], {}, t);
  const r = recoveringChannel(c.socket, topic);
  assert.equal((await join(r.channel)).status, "ok");
  await viaFcall(topic, { seq: 0, via: "fcall" });
  await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 0, { label: "a live message" });
  const seen = r.state.last;

  const closedAt = c.events.mark;
  await new Promise((resolve) => c.socket.disconnect(resolve));
  await c.events.waitFor((e) => e.type === "close", { from: closedAt, label: "socket closed" });
  // 101 more: message 1 (right after the last seen) is trimmed (size = 100).
  let top;
  for (let seq = 1; seq <= 101; seq++) top = await viaFcall(topic, { seq, via: "fcall" });
  const mark = r.log.mark;
  c.socket.connect();
  const rejoin = await r.log.waitFor((e) => e.event === "join:ok", {
    from: mark,
    timeout: RECOVER_MS,
    label: "rejoin",
  });
  assert.deepEqual(rejoin.payload.history, { recovered: false, position: top });
  // The app starts from the reply's position: the next message follows it.
  assert.equal(r.state.last, top);
  const after = await viaApi(cluster.pods[1], topic, { seq: 102, via: "api" });
  await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 102, { label: "a live message after" });
  const sinceRejoin = messages(r.log).filter((m) => m.at > rejoin.seq);
  assert.deepEqual(sinceRejoin.map((m) => m.seq), [102], "nothing replayed, never a partial replay");
  assert.equal(sinceRejoin[0].position, after);
  const sent = c.frames.filter((f) => f.dir === "out" && f.event === "phx_join").at(-1);
  assert.deepEqual(sent.payload, { history: { since: seen } });
});

test(
  "LongPoll through nginx round-robin: a disconnect/reconnect and the owner pod's death; " +
    "messages published while away arrive exactly once, in order",
  async (t) => {
    const topic = unique("lp");
    const m = await openSocket({ socketUrl: cluster.socketUrl }, { transport: LongPoll, reconnectAfterMs: () => 100 }, t);
    assert.ok(m.socket.conn instanceof LongPoll);
    const r = recoveringChannel(m.socket, topic);
    assert.equal((await join(r.channel)).status, "ok");
    const publish = publisher(topic, {
      pushVia: await pusher(t, cluster.pods[0], topic),
      apiPod: cluster.pods[1],
    });
    for (let i = 0; i < 3; i++) await publish();
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 2, { label: "live messages" });

    // 1. The client disconnects; 20 messages; it connects again (a new
    // session, on whichever pod nginx picks).
    const closedAt = m.events.mark;
    await new Promise((resolve) => m.socket.disconnect(resolve));
    await m.events.waitFor((e) => e.type === "close", { from: closedAt, label: "socket closed" });
    const lastBefore = r.state.last;
    for (let i = 0; i < 20; i++) await publish();
    m.socket.connect();
    const rejoin1 = await r.log.waitFor((e) => e.event === "join:ok", {
      from: r.log.items.findLastIndex((e) => e.event === "join:ok") + 1,
      timeout: RECOVER_MS,
      label: "rejoin after reconnect",
    });
    assert.equal(rejoin1.payload.history.recovered, true, `rejoin reply ${JSON.stringify(rejoin1.payload)}`);
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 22, { label: "the replay" });
    const replay1 = messages(r.log).filter((m) => m.at > rejoin1.seq);
    assertExactlyOnceInOrder(replay1, range(3, 23));
    assert.equal(parse(replay1[0].position).offset, parse(lastBefore).offset + 1, "right after the last seen");
    assert.equal(replay1.at(-1).position, rejoin1.payload.history.position, "up to the reply's position");

    // 2. The pod that owns the session dies; 20 messages through the
    // surviving pods and Redis meanwhile; phoenix.js sees the session end,
    // opens a new one and rejoins.
    const owner = cluster.ownerOf(m.socket.conn.token);
    assert.ok(owner, "the session token names one of the pods");
    const alive = cluster.pods.filter((p) => p !== owner);
    const publishAway = publisher(topic, { pushVia: await pusher(t, alive[0], topic), apiPod: alive[1], from: 23 });
    await cluster.killPod(owner);
    t.diagnostic(`killed the owner, ${owner.name} (${owner.addr})`);
    for (let i = 0; i < 20; i++) await publishAway();
    const rejoin2 = await r.log.waitFor((e) => e.event === "join:ok" && e.seq > rejoin1.seq, {
      timeout: RECOVER_MS,
      label: "rejoin after the owner died",
    });
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 42, { label: "what was missed" });
    await owner.restart();
    await publishAway();
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 43, { label: "the last message" });

    assertExactlyOnceInOrder(messages(r.log), range(0, 44));
    const again = rejoins(r.log);
    for (const j of again) assert.equal(j.payload.history.recovered, true, `rejoin reply ${JSON.stringify(j.payload)}`);
    const replayed = messages(r.log).filter((m) => m.at > rejoin2.seq && m.offset <= parse(rejoin2.payload.history.position).offset);
    t.diagnostic(
      `${again.length} rejoins; after the owner died: reply ${JSON.stringify(rejoin2.payload.history)}, ` +
        `${replayed.length} of 20 missed messages replayed, the rest live`,
    );
    assert.ok(m.socket.conn instanceof LongPoll);
  },
);

// Last: it cuts every pod's Redis subscriber connection. What is published
// while a pod resubscribes never reaches it live; the next message shows the
// gap, the pod ends the channel (phx_error), and phoenix.js rejoins with the
// last position its client saw, which recovers the rest.
test(
  "a pod's Redis subscriber connection is cut while messages are published: its clients still get every message once, in order",
  async (t) => {
    const topic = unique("resubscribe");
    const c = await openSocket(cluster.pods[0], {}, t);
    const r = recoveringChannel(c.socket, topic);
    assert.equal((await join(r.channel)).status, "ok");
    await viaFcall(topic, { seq: 0, via: "fcall" });
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 0, { label: "a live message" });
    await cluster.redis.cli("CLIENT", "KILL", "TYPE", "pubsub");
    for (let seq = 1; seq <= 3; seq++) await viaFcall(topic, { seq, via: "fcall" });
    await until(
      "the pod subscribed again",
      async () => (await cluster.redis.cli("PUBSUB", "NUMSUB", `phx:${topic}`)).endsWith("\n1"),
      { timeoutMs: 10_000 },
    );
    await viaFcall(topic, { seq: 4, via: "fcall" });
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 4, { label: "the message after" });
    await r.log.waitFor((e) => e.event === "new_msg" && e.payload.seq === 3, { label: "message 3", timeout: 3000 });
    assertExactlyOnceInOrder(messages(r.log), range(0, 5));
  },
);
