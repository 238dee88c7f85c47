// Broadcasts: client-originated (room:lobby new_msg), server-side (POST
// /broadcast), intercepted (request_ping -> send_ping), and channel pushes
// from a timer (recurring new_token).

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { startSeeds, suiteScope } from "../../testkit/index.mjs";
import { openSocket, join, push, recordChannel } from "../lib/phx.js";

const scope = suiteScope();
let gw;
before(async () => {
  gw = await startSeeds(scope, { recurringMs: 100 });
});

async function member(t, topic, events) {
  const client = await openSocket(gw, {}, t);
  const channel = client.socket.channel(topic);
  const log = recordChannel(channel, events);
  assert.equal((await join(channel)).status, "ok", `join ${topic}`);
  return { ...client, channel, log };
}

test("new_msg from one client reaches two other clients (and the sender)", async (t) => {
  const [a, b, c] = await Promise.all([1, 2, 3].map(() => member(t, "room:lobby", ["new_msg"])));
  const body = `hello from A ${Date.now()}`;
  assert.deepEqual(await push(a.channel, "new_msg", { body }), { status: "ok", response: {} });

  for (const [name, m] of [["B", b], ["C", c], ["A", a]]) {
    const got = await m.log.waitFor((e) => e.event === "new_msg" && e.payload.body === body, {
      label: `new_msg at ${name}`,
    });
    assert.deepEqual(got.payload, { body });
    // Fastlane broadcast frame: [null, null, topic, event, payload].
    const frame = await m.frames.waitFor((f) => f.dir === "in" && f.event === "new_msg", {
      label: `new_msg frame at ${name}`,
    });
    assert.equal(frame.join_ref, null);
    assert.equal(frame.ref, null);
    assert.equal(frame.topic, "room:lobby");
  }
});

test("server-side broadcast via POST /broadcast reaches a client", async (t) => {
  const m = await member(t, "room:lobby", ["announcement"]);
  const payload = { text: "from the server", n: 7, nested: { ok: true } };
  assert.deepEqual(await gw.broadcast("room:lobby", "announcement", payload), { ok: true });
  const got = await m.log.waitFor((e) => e.event === "announcement");
  assert.deepEqual(got.payload, payload);
});

test("request_ping broadcast is intercepted and pushed as send_ping with from_node", async (t) => {
  const m = await member(t, "ping", ["send_ping", "request_ping"]);
  await gw.broadcast("ping", "request_ping", { asked_by: "compat" });
  const got = await m.log.waitFor((e) => e.event === "send_ping", { label: "send_ping" });
  assert.equal(got.payload.asked_by, "compat", "original payload fields are kept");
  assert.equal(typeof got.payload.from_node, "string");
  assert.ok(got.payload.from_node.length > 0, "from_node is set");
  t.diagnostic(`from_node = ${got.payload.from_node}`);
  // Pushed by the channel (handle_out), so it carries the channel's join_ref.
  const frame = m.frames.filter((f) => f.dir === "in" && f.event === "send_ping")[0];
  assert.equal(frame.join_ref, m.channel.joinRef());
  assert.equal(frame.ref, null);
  // A non-intercepted broadcast to the same topic passes through unchanged,
  // after the intercepted one.
  await gw.broadcast("ping", "plain_event", { x: 1 });
  await m.frames.waitFor((f) => f.dir === "in" && f.event === "plain_event", { label: "plain_event" });
  assert.equal(m.log.filter((e) => e.event === "request_ping").length, 0, "request_ping itself is not delivered");
});

test("recurring pushes new_token repeatedly", async (t) => {
  const m = await member(t, "recurring", ["new_token"]);
  const third = await m.log.waitFor((e) => e.event === "new_token" && e.payload.n === 3, {
    label: "third new_token",
  });
  const tokens = m.log.filter((e) => e.event === "new_token");
  assert.deepEqual(
    tokens.slice(0, 3).map((e) => e.payload.n),
    [1, 2, 3],
  );
  for (const e of tokens) {
    assert.equal(typeof e.payload.token, "string");
    assert.match(e.payload.token, new RegExp(`^${gw.pid.toString(16)}-${e.payload.n}$`));
  }
  const frame = m.frames.filter((f) => f.dir === "in" && f.event === "new_token")[0];
  assert.equal(frame.join_ref, m.channel.joinRef(), "channel push carries the join_ref");
  assert.equal(frame.ref, null);
  t.diagnostic(`new_token 1 -> 3: ${(third.at - tokens[0].at).toFixed(0)} ms (RECURRING_MS=100)`);
});
