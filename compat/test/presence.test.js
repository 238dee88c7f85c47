// Presence across pods with the official phoenix.js `Presence` class: three
// gateway processes sharing one redis-server, clients joining and leaving on
// different pods, two tabs of one user, a pod killed with SIGKILL, and a
// Redis restart. Each test waits until every surviving client's
// `presence.list()` shows the truth (users and how many tabs each).

import { test } from "node:test";
import assert from "node:assert/strict";
import { LongPoll, Presence } from "phoenix";
import { startCluster, testScope } from "../../testkit/index.mjs";
import { byKey, EventLog, join, openSocket, push } from "../lib/phx.js";

const POD_TIMEOUT_MS = 1500;
const CONVERGE_MS = 20000;

/** "alice:2,bob:1": who is present and with how many metas (tabs). */
function summary(presence) {
  return presence
    .list((key, { metas }) => `${key}:${metas.length}`)
    .sort()
    .join(",");
}

async function member(t, pod, topic, user, tab = 1, opts = {}) {
  const client = await openSocket(pod, opts, t);
  const channel = client.socket.channel(topic, { user, tab });
  const presence = new Presence(channel);
  const syncs = new EventLog(`${user}/${tab} sync`);
  presence.onSync(() => syncs.push({ list: summary(presence) }));
  assert.equal((await join(channel)).status, "ok", `${user} joins ${topic}`);
  return { ...client, channel, presence, syncs, name: `${user}/${tab}` };
}

/** Waits until every member's list is `want`. */
async function converge(members, want, timeout = CONVERGE_MS) {
  await Promise.all(
    members.map((m) => {
      const from = m.syncs.mark;
      if (summary(m.presence) === want) return null;
      return m.syncs.waitFor((e) => e.list === want, {
        from,
        timeout,
        label: `${m.name}'s presence list to be ${want} (it is ${summary(m.presence)})`,
      });
    }),
  );
}

/** Three pods sharing one redis-server of this test's own: the Redis broker
 * and presence on room:*; they stop on SIGTERM at once (no drain). */
function startPods(t) {
  const config = {
    server: { drain_delay_ms: 0, drain_period_ms: 0 },
    redis: { prefix: `compat-${process.pid}-${Date.now()}:`, linger_ms: 200 },
    presence: { batch_ms: 100, pod_timeout_ms: POD_TIMEOUT_MS },
    socket: [{ path: "/socket", longpoll: { enabled: true } }],
    channel: [
      {
        pattern: "room:*",
        events: ["new_msg"],
        presence: { key_param: "user", meta_params: ["tab", "status"], update_event: "presence_update" },
      },
    ],
  };
  return startCluster(testScope(t), { pods: 3, config, nginx: false });
}

test("joins and leaves on three pods, two tabs of one user", async (t) => {
  const { pods } = await startPods(t);
  const topic = "room:three";
  const alice = await member(t, pods[0], topic, "alice");
  const bob = await member(t, pods[1], topic, "bob");
  const carol = await member(t, pods[2], topic, "carol");
  await converge([alice, bob, carol], "alice:1,bob:1,carol:1");

  const alice2 = await member(t, pods[1], topic, "alice", 2);
  const all = [alice, bob, carol, alice2];
  await converge(all, "alice:2,bob:1,carol:1");
  const tabs = alice.presence.list((k, { metas }) => (k === "alice" ? metas.map((m) => m.tab).sort() : null));
  assert.deepEqual(tabs.filter(Boolean), [[1, 2]], "one key, one meta per tab");
  for (const m of alice.presence.list((k, { metas }) => metas).flat()) {
    assert.equal(typeof m.phx_ref, "string");
    assert.match(m.online_at, /^\d+$/);
  }

  // bob leaves the channel, alice's first tab closes its socket.
  await new Promise((resolve) => bob.channel.leave().receive("ok", resolve));
  await alice.close();
  await converge([carol, alice2], "alice:1,carol:1");
  // Every list is the same, metas included.
  assert.deepEqual(byKey(carol.presence), byKey(alice2.presence));
});

test("a long-poll client is listed and sees the same list as WebSocket clients", async (t) => {
  const { pods } = await startPods(t);
  const topic = "room:longpoll";
  const alice = await member(t, pods[0], topic, "alice");
  const bob = await member(t, pods[1], topic, "bob", 1, { transport: LongPoll });
  assert.ok(bob.socket.conn instanceof LongPoll);
  const carol = await member(t, pods[2], topic, "carol");
  await converge([alice, bob, carol], "alice:1,bob:1,carol:1");
  await new Promise((resolve) => alice.channel.leave().receive("ok", resolve));
  await converge([bob, carol], "bob:1,carol:1");
  assert.deepEqual(byKey(bob.presence), byKey(carol.presence));
});

test("a meta update on one pod reaches every client as one replaced meta", async (t) => {
  const { pods } = await startPods(t);
  const topic = "room:update";
  const alice = await member(t, pods[0], topic, "alice");
  const bob = await member(t, pods[1], topic, "bob");
  const carol = await member(t, pods[2], topic, "carol");
  const all = [alice, bob, carol];
  await converge(all, "alice:1,bob:1,carol:1");
  const status = (m) => m.presence.list((k, { metas }) => (k === "bob" ? metas.map((x) => x.status) : null)).filter(Boolean)[0];
  const reply = await push(bob.channel, "presence_update", { status: "away" });
  assert.equal(reply.status, "ok");
  await Promise.all(
    all.map((m) => {
      const from = m.syncs.mark;
      if (status(m)?.[0] === "away") return null;
      return m.syncs.waitFor(() => status(m)?.[0] === "away", { from, timeout: CONVERGE_MS, label: `${m.name} sees bob away` });
    }),
  );
  for (const m of all) assert.deepEqual(status(m), ["away"], `${m.name}: one meta for bob, replaced`);
  assert.equal(summary(alice.presence), "alice:1,bob:1,carol:1");
});

test("a pod killed with SIGKILL: its users leave everywhere within the pod timeout", async (t) => {
  const { pods } = await startPods(t);
  const topic = "room:kill";
  const alice = await member(t, pods[0], topic, "alice");
  const bob = await member(t, pods[1], topic, "bob");
  const bob2 = await member(t, pods[2], topic, "bob", 2);
  const carol = await member(t, pods[2], topic, "carol");
  await converge([alice, bob, bob2, carol], "alice:1,bob:2,carol:1");

  const killed = Date.now();
  await pods[1].kill("SIGKILL");
  bob.socket.disconnect(); // its pod is gone; stop reconnecting
  await converge([alice, bob2, carol], "alice:1,bob:1,carol:1", POD_TIMEOUT_MS * 4);
  const took = Date.now() - killed;
  t.diagnostic(`leaves of the killed pod after ${took} ms (pod_timeout_ms = ${POD_TIMEOUT_MS})`);
  // The bound is POD_TIMEOUT_MS; the slack is for a machine busy with other tests.
  assert.ok(took < POD_TIMEOUT_MS + 1000, `took ${took} ms`);
  assert.deepEqual(byKey(alice.presence), byKey(carol.presence));
});

test("a Redis restart: pods re-announce and every list converges", async (t) => {
  const { pods, redis } = await startPods(t);
  const topic = "room:redis";
  const alice = await member(t, pods[0], topic, "alice");
  const bob = await member(t, pods[1], topic, "bob");
  const carol = await member(t, pods[2], topic, "carol");
  await converge([alice, bob, carol], "alice:1,bob:1,carol:1");

  // Redis loses everything, and pod 2 dies while it is away.
  await redis.kill();
  await pods[2].kill("SIGKILL");
  carol.socket.disconnect();
  await redis.restart();
  await converge([alice, bob], "alice:1,bob:1");
  // Changes after the restart reach everyone.
  const dave = await member(t, pods[1], topic, "dave");
  await converge([alice, bob, dave], "alice:1,bob:1,dave:1");
  assert.deepEqual(byKey(alice.presence), byKey(dave.presence));
});
