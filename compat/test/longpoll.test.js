// Long-poll without sticky sessions, end to end: the official phoenix.js
// LongPoll transport (in Node it uses fetch) against three real gateway
// pods and one Redis behind nginx in plain round-robin (testkit's startCluster).

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { LongPoll, Presence, Socket } from "phoenix";
import WebSocket from "ws";
import { startCluster, suiteScope } from "../../testkit/index.mjs";
import { byKey, closeSocket, EventLog, join, push, recordChannel, withTimeout } from "../lib/phx.js";

/** Presence diffs cross pods through Redis (batched); generous for 2 busy cores. */
const CONVERGE_MS = 20_000;

/** Rejoining after the owner pod died takes a poll window (10 s) plus the
 * relay timeout (2 s) at worst, then the client's reconnect backoff. */
const REJOIN_MS = 40_000;

const scope = suiteScope();
let cluster;
before(async () => {
  cluster = await startCluster(scope, { pods: 3 });
});

let n = 0;
const unique = (name) => `room:${name}-${process.pid}-${++n}`;

/** A phoenix.js socket with `opts`, opened, closed after the test. */
async function open(t, url, opts) {
  const events = new EventLog("socket event");
  const socket = new Socket(url, opts);
  socket.onOpen(() => events.push({ type: "open" }));
  socket.onClose((ev) => events.push({ type: "close", code: ev?.code }));
  socket.onError((err) => events.push({ type: "error", error: String(err) }));
  t.after(() => closeSocket(socket));
  socket.connect();
  await events.waitFor((e) => e.type === "open", { label: `socket open to ${url}` });
  return { socket, events };
}

async function member(t, url, opts, topic) {
  const client = await open(t, url, opts);
  const channel = client.socket.channel(topic);
  const log = recordChannel(channel, ["new_msg"]);
  assert.equal((await join(channel)).status, "ok", `join ${topic}`);
  return { ...client, channel, log };
}

test(
  "LongPoll through nginx round-robin: join, push with reply, redis-cli broadcasts, requests on every pod",
  async (t) => {
    const topic = unique("lp");
    const m = await member(t, cluster.socketUrl, { transport: LongPoll }, topic);
    assert.ok(m.socket.conn instanceof LongPoll);
    for (let i = 0; i < 6; i++) {
      assert.deepEqual(await push(m.channel, "new_msg", { i }), { status: "ok", response: {} });
      await m.log.waitFor((e) => e.event === "new_msg" && e.payload.i === i, { label: `own new_msg ${i}` });
    }
    for (let i = 0; i < 6; i++) {
      const receivers = await cluster.publish(topic, "new_msg", { body: `from redis ${i}` });
      assert.equal(receivers, "1", "exactly the owner pod is subscribed to the topic");
      await m.log.waitFor((e) => e.event === "new_msg" && e.payload.body === `from redis ${i}`, {
        label: `redis broadcast ${i}`,
      });
    }
    // Order of delivery is the order of publishing.
    const bodies = m.log.filter((e) => e.event === "new_msg" && e.payload.body).map((e) => e.payload.body);
    assert.deepEqual(bodies, [0, 1, 2, 3, 4, 5].map((i) => `from redis ${i}`));

    const perPod = cluster.longpollRequestsPerPod();
    t.diagnostic(`long-poll requests per pod (nginx access log): ${JSON.stringify(perPod)}`);
    assert.equal(Object.keys(perPod).length, 3);
    for (const [pod, count] of Object.entries(perPod)) {
      assert.ok(count >= 3, `pod ${pod} served ${count} long-poll requests`);
    }
  },
);

/** "alice:1,bob:1": who is present and with how many metas. */
function summary(presence) {
  return presence
    .list((key, { metas }) => `${key}:${metas.length}`)
    .sort()
    .join(",");
}

/** A client joined to `topic` as `user` (config/example.toml keys room:*
 * presence by the `user` join param) with phoenix.js `Presence` on its
 * channel; every onSync is logged with the list at that moment. */
async function presenceMember(t, url, opts, topic, user) {
  const client = await open(t, url, opts);
  const channel = client.socket.channel(topic, { user });
  const presence = new Presence(channel);
  const syncs = new EventLog(`${user} presence sync`);
  presence.onSync(() => syncs.push({ list: summary(presence) }));
  assert.equal((await join(channel)).status, "ok", `${user} joins ${topic}`);
  return { ...client, channel, presence, syncs, user };
}

/** Waits (on onSync events) until every member's list is `want`. */
async function converge(members, want) {
  await Promise.all(
    members.map((m) =>
      summary(m.presence) === want
        ? null
        : m.syncs.waitFor((e) => e.list === want, {
            from: m.syncs.mark,
            timeout: CONVERGE_MS,
            label: `${m.user}'s presence list to be ${want} (it is ${summary(m.presence)})`,
          }),
    ),
  );
}

test(
  "presence through nginx round-robin: long-poll and WebSocket clients' Presence lists converge, and a leave",
  async (t) => {
    const topic = unique("presence");
    const reqsBefore = cluster.longpollRequestsPerPod();
    const alice = await presenceMember(t, cluster.socketUrl, { transport: LongPoll }, topic, "alice");
    const bob = await presenceMember(t, cluster.socketUrl, { transport: LongPoll }, topic, "bob");
    const carol = await presenceMember(t, cluster.socketUrl, { transport: WebSocket }, topic, "carol");
    assert.ok(alice.socket.conn instanceof LongPoll && bob.socket.conn instanceof LongPoll);
    assert.ok(carol.socket.conn instanceof WebSocket);
    const owners = [alice, bob].map((m) => `${m.user} on pod${cluster.ownerOf(m.socket.conn.token)?.i}`);
    t.diagnostic(`long-poll session owners: ${owners.join(", ")}`);

    const all = [alice, bob, carol];
    await converge(all, "alice:1,bob:1,carol:1");
    // Every client holds the same list, metas (phx_ref, online_at) included.
    assert.deepEqual(byKey(alice.presence), byKey(carol.presence));
    assert.deepEqual(byKey(bob.presence), byKey(carol.presence));
    for (const { metas } of alice.presence.list((k, p) => p)) {
      assert.equal(typeof metas[0].phx_ref, "string");
    }

    // bob (long-poll) leaves the channel; the others see him go.
    await withTimeout(
      new Promise((resolve) => bob.channel.leave().receive("ok", resolve)),
      10_000,
      "bob's leave reply",
    );
    await converge([alice, carol], "alice:1,carol:1");
    assert.deepEqual(byKey(alice.presence), byKey(carol.presence));

    // carol (WebSocket) leaves too: alice, on long-poll, is alone.
    await withTimeout(
      new Promise((resolve) => carol.channel.leave().receive("ok", resolve)),
      10_000,
      "carol's leave reply",
    );
    await converge([alice], "alice:1");

    // This test's long-poll requests, too, went to every pod.
    const reqsAfter = cluster.longpollRequestsPerPod();
    const delta = Object.fromEntries(Object.entries(reqsAfter).map(([pod, c]) => [pod, c - (reqsBefore[pod] || 0)]));
    t.diagnostic(`long-poll requests per pod in this test: ${JSON.stringify(delta)}`);
    for (const [pod, count] of Object.entries(delta)) {
      assert.ok(count >= 1, `pod ${pod} served ${count} of this test's long-poll requests`);
    }
  },
);

test(
  "a WebSocket client and a long-poll client in one topic receive the same broadcasts",
  async (t) => {
    const topic = unique("mixed");
    const lp = await member(t, cluster.socketUrl, { transport: LongPoll }, topic);
    const ws = await member(t, cluster.socketUrl, { transport: WebSocket }, topic);
    assert.ok(ws.socket.conn instanceof WebSocket);
    assert.deepEqual(await push(ws.channel, "new_msg", { from: "ws" }), { status: "ok", response: {} });
    assert.deepEqual(await push(lp.channel, "new_msg", { from: "lp" }), { status: "ok", response: {} });
    await cluster.publish(topic, "new_msg", { from: "redis" });
    for (const [name, m] of [["long-poll", lp], ["WebSocket", ws]]) {
      for (const from of ["ws", "lp", "redis"]) {
        await m.log.waitFor((e) => e.event === "new_msg" && e.payload.from === from, {
          label: `${from} broadcast at the ${name} client`,
        });
      }
      assert.equal(m.log.filter((e) => e.event === "new_msg").length, 3, `${name} got each broadcast once`);
    }
  },
);

/** sessionStorage for Node, where phoenix.js finds none. */
function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k) };
}

test(
  "longPollFallbackMs: WebSocket refused by the balancer falls back to long-poll; available, it stays WebSocket",
  async (t) => {
    const topic = unique("fallback");
    const opts = () => ({ transport: WebSocket, longPollFallbackMs: 2500, sessionStorage: memoryStorage() });
    const blocked = await member(t, cluster.noWsSocketUrl, opts(), topic);
    assert.equal(blocked.socket.transport, LongPoll, "fell back to LongPoll");
    assert.ok(blocked.socket.conn instanceof LongPoll);
    assert.deepEqual(await push(blocked.channel, "new_msg", { via: "fallback" }), { status: "ok", response: {} });
    await blocked.log.waitFor((e) => e.event === "new_msg" && e.payload.via === "fallback");

    const direct = await member(t, cluster.socketUrl, opts(), topic);
    // The heartbeat probe answered: the socket keeps WebSocket.
    await withTimeout(
      (async () => {
        while (!direct.socket.primaryPassedHealthCheck) await new Promise((r) => setTimeout(r, 20));
      })(),
      5000,
      "WebSocket health check",
    );
    assert.equal(direct.socket.transport, WebSocket);
    assert.ok(direct.socket.conn instanceof WebSocket);
    await cluster.publish(topic, "new_msg", { via: "redis" });
    for (const m of [blocked, direct]) {
      await m.log.waitFor((e) => e.event === "new_msg" && e.payload.via === "redis");
    }
  },
);

// Last: it kills a pod.
test(
  "killing the owner pod: the client reconnects and rejoins through the survivors",
  async (t) => {
    const topic = unique("owner");
    const m = await member(t, cluster.socketUrl, { transport: LongPoll }, topic);
    const owner = cluster.ownerOf(m.socket.conn.token);
    assert.ok(owner, "the session token names one of the pods");
    const joins = m.log.filter((e) => e.event === "join:ok").length;
    await cluster.killPod(owner);
    t.diagnostic(`killed the owner, pod${owner.i} (${owner.addr})`);

    await m.log.waitFor((e) => e.event === "join:ok", {
      from: m.log.items.findLastIndex((e) => e.event === "join:ok") + 1,
      timeout: REJOIN_MS,
      label: "rejoin after the owner pod died",
    });
    assert.equal(m.log.filter((e) => e.event === "join:ok").length, joins + 1);
    const newOwner = cluster.ownerOf(m.socket.conn.token);
    assert.ok(newOwner && newOwner !== owner, "the new session lives on a survivor");
    assert.ok(m.events.items.some((e) => e.type === "close"), "the socket saw its session end");

    assert.deepEqual(await push(m.channel, "new_msg", { after: "rejoin" }), { status: "ok", response: {} });
    await cluster.publish(topic, "new_msg", { after: "kill" });
    await m.log.waitFor((e) => e.event === "new_msg" && e.payload.after === "kill", { label: "broadcast after rejoin" });
  },
);
