// Connecting: params and the default vsn (2.0.0, array frames), heartbeats
// (PHOENIX_PROTOCOL §5), and the V1 JSON serializer (vsn 1.0.0, object frames).

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { startSeeds, suiteScope } from "../../testkit/index.mjs";
import { openSocket, join, push, outcome, recordChannel } from "../lib/phx.js";

const scope = suiteScope();
let gw;
before(async () => {
  gw = await startSeeds(scope);
});

test("connect with params and the default vsn 2.0.0", async (t) => {
  const params = { token: "user-token", user: { id: 7 }, tags: ["a", "b"] };
  const c = await openSocket(gw, { params }, t);
  assert.equal(c.socket.vsn, "2.0.0", "phoenix.js defaults to vsn 2.0.0");

  const url = new URL(c.frames.filter((f) => f.dir === "url")[0].url);
  assert.equal(url.pathname, "/socket/websocket");
  assert.equal(url.searchParams.get("token"), "user-token");
  assert.equal(url.searchParams.get("user[id]"), "7");
  assert.equal(url.searchParams.get("tags[0]"), "a");
  assert.equal(url.searchParams.get("vsn"), "2.0.0");
  assert.equal([...url.searchParams.keys()].at(-1), "vsn", "vsn comes last");

  const ch = c.socket.channel("ping:params");
  assert.equal((await join(ch)).status, "ok");
  assert.deepEqual(await push(ch, "ping", { ack_phrase: "v2" }), { status: "ok", response: { ping: "v2" } });

  // Every frame both ways is a V2 array [join_ref, ref, topic, event, payload].
  const wire = c.frames.filter((f) => f.dir === "in" || f.dir === "out");
  assert.ok(wire.length >= 4);
  for (const f of wire) {
    assert.equal(f.shape, "array", `V2 frame: ${f.raw}`);
    assert.equal(f.length, 5, `V2 frame has 5 slots: ${f.raw}`);
  }
});

test("connect with params given as a function", async (t) => {
  let calls = 0;
  const c = await openSocket(gw, { params: () => ({ token: `t${++calls}` }) }, t);
  assert.ok(calls >= 1);
  const url = new URL(c.frames.filter((f) => f.dir === "url")[0].url);
  assert.match(url.searchParams.get("token"), /^t\d+$/);
  const ch = c.socket.channel("ping");
  assert.equal((await join(ch)).status, "ok");
});

test("heartbeats are answered and keep the connection open", async (t) => {
  const c = await openSocket(gw, { heartbeatIntervalMs: 200 }, t);
  const ch = c.socket.channel("ping:hb");
  assert.equal((await join(ch)).status, "ok");

  // Wait for three heartbeat round trips.
  let from = 0;
  for (let i = 1; i <= 3; i++) {
    const sent = await c.frames.waitFor((f) => f.dir === "out" && f.topic === "phoenix" && f.event === "heartbeat", {
      from,
      label: `heartbeat ${i} sent`,
    });
    from = sent.seq + 1;
    assert.equal(sent.join_ref, null, "heartbeat carries a null join_ref");
    assert.deepEqual(sent.payload, {});
    const reply = await c.frames.waitFor(
      (f) => f.dir === "in" && f.topic === "phoenix" && f.event === "phx_reply" && f.ref === sent.ref,
      { label: `heartbeat ${i} reply` },
    );
    assert.deepEqual(
      [reply.join_ref, reply.ref, reply.topic, reply.event, reply.payload],
      [null, sent.ref, "phoenix", "phx_reply", { status: "ok", response: {} }],
    );
  }
  // socket.ping() uses the same heartbeat and reports the RTT.
  const rtt = await new Promise((resolve) => c.socket.ping(resolve));
  assert.equal(typeof rtt, "number");
  assert.equal(c.events.filter((e) => e.type === "close" || e.type === "error").length, 0, "no reconnects");
  assert.equal(c.socket.isConnected(), true);
  assert.deepEqual(await push(ch, "ping", {}), { status: "ok", response: { ping: "pong" } });
});

test("V1 serializer (vsn 1.0.0 with JSON encode/decode) works", async (t) => {
  const v1 = {
    vsn: "1.0.0",
    encode: (msg, callback) => callback(JSON.stringify(msg)),
    decode: (raw, callback) => callback(JSON.parse(raw)),
  };
  const c = await openSocket(gw, { ...v1, heartbeatIntervalMs: 1000, params: { token: "v1" } }, t);
  const url = new URL(c.frames.filter((f) => f.dir === "url")[0].url);
  assert.equal(url.searchParams.get("vsn"), "1.0.0");

  const ping = c.socket.channel("ping:v1");
  assert.equal((await join(ping)).status, "ok");
  assert.deepEqual(await push(ping, "ping", { ack_phrase: "v1!" }), { status: "ok", response: { ping: "v1!" } });
  assert.deepEqual(await push(ping, "ping_hi", {}), { status: "ok", response: { ping: "hi" } });

  const room = c.socket.channel("room:lobby");
  const roomLog = recordChannel(room, ["new_msg"]);
  assert.equal((await join(room)).status, "ok");
  assert.deepEqual(await push(room, "new_msg", {}), { status: "error", response: { reason: "invalid message" } });
  assert.deepEqual(await push(room, "new_msg", { body: "v1 body" }), { status: "ok", response: {} });
  await roomLog.waitFor((e) => e.event === "new_msg" && e.payload.body === "v1 body");

  // A V2 client in the same room gets the same broadcast as an array frame.
  const v2 = await openSocket(gw, {}, t);
  const v2room = v2.socket.channel("room:lobby");
  const v2log = recordChannel(v2room, ["new_msg"]);
  assert.equal((await join(v2room)).status, "ok");
  assert.deepEqual(await push(room, "new_msg", { body: "mixed" }), { status: "ok", response: {} });
  await v2log.waitFor((e) => e.event === "new_msg" && e.payload.body === "mixed");
  await roomLog.waitFor((e) => e.event === "new_msg" && e.payload.body === "mixed");
  assert.equal(v2.frames.filter((f) => f.dir === "in" && f.event === "new_msg")[0].shape, "array");

  // A heartbeat round trip over V1.
  const hb = await c.frames.waitFor((f) => f.dir === "out" && f.event === "heartbeat", { label: "V1 heartbeat" });
  await c.frames.waitFor((f) => f.dir === "in" && f.topic === "phoenix" && f.ref === hb.ref, {
    label: "V1 heartbeat reply",
  });

  // Server frames are objects with exactly topic, event, payload, ref (no join_ref).
  const incoming = c.frames.filter((f) => f.dir === "in");
  assert.ok(incoming.length >= 8);
  for (const f of incoming) {
    assert.equal(f.shape, "object", `V1 frame: ${f.raw}`);
    assert.deepEqual(f.keys, ["event", "payload", "ref", "topic"], `V1 frame keys: ${f.raw}`);
  }
  const bcast = incoming.filter((f) => f.event === "new_msg");
  assert.ok(bcast.length >= 2);
  for (const f of bcast) assert.equal(f.ref, null, "broadcasts have ref null");

  // A crash and automatic rejoin also work over V1.
  const log = recordChannel(ping, []);
  ping.push("crash_me", {}, 200);
  const err = await log.waitFor((e) => e.event === "onError", { label: "V1 onError" });
  assert.deepEqual(err.payload, { reason: "channel_crash" });
  await log.waitFor((e) => e.event === "join:ok", { from: err.seq, label: "V1 automatic rejoin", timeout: 5000 });
  assert.deepEqual(await push(ping, "ping", {}), { status: "ok", response: { ping: "pong" } });
  await outcome(c.socket.channels.find((ch) => ch.topic === "room:lobby").leave(), "V1 leave");
});
