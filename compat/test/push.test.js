// Pushes with ok replies, error replies, and no reply at all (client timeout).

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { startSeeds, suiteScope } from "../../testkit/index.mjs";
import { openSocket, join, push, outcome } from "../lib/phx.js";

const scope = suiteScope();
let gw;
before(async () => {
  gw = await startSeeds(scope);
});

async function joined(t, topic) {
  const client = await openSocket(gw, {}, t);
  const channel = client.socket.channel(topic);
  assert.equal((await join(channel)).status, "ok", `join ${topic}`);
  return { ...client, channel };
}

test("push with ok reply: ping, ack_phrase, ping_<phrase>", async (t) => {
  const { channel, frames } = await joined(t, "ping");
  assert.deepEqual(await push(channel, "ping", {}), { status: "ok", response: { ping: "pong" } });
  assert.deepEqual(await push(channel, "ping", { ack_phrase: "hello there" }), {
    status: "ok",
    response: { ping: "hello there" },
  });
  assert.deepEqual(await push(channel, "ping_howdy", {}), { status: "ok", response: { ping: "howdy" } });

  // Wire shape of a reply: [jr, ref, topic, "phx_reply", {status, response}].
  const p = channel.push("ping", { ack_phrase: "wire" });
  await outcome(p, "ping wire");
  const reply = frames.filter((f) => f.dir === "in" && f.event === "phx_reply" && f.ref === p.ref);
  assert.equal(reply.length, 1);
  assert.equal(reply[0].length, 5);
  assert.equal(reply[0].join_ref, channel.joinRef(), "reply carries the channel's join_ref");
  assert.equal(reply[0].topic, "ping");
  assert.deepEqual(reply[0].payload, { status: "ok", response: { ping: "wire" } });
});

test("push with error reply", async (t) => {
  const { channel } = await joined(t, "room:lobby");
  assert.deepEqual(await push(channel, "new_msg", {}), {
    status: "error",
    response: { reason: "invalid message" },
  });
  assert.deepEqual(await push(channel, "new_msg", { body: 42 }), {
    status: "error",
    response: { reason: "invalid message" },
  });
  const wild = channel.socket.channel("wild:2:4");
  assert.equal((await join(wild)).status, "ok");
  assert.deepEqual(await push(wild, "nonsense", {}), {
    status: "error",
    response: { reason: "unhandled event nonsense" },
  });
  // The channels survive error replies.
  assert.equal(channel.state, "joined");
  assert.deepEqual(await push(wild, "ping", {}), { status: "ok", response: { ping: "pong" } });
});

test("push without reply (pong) hits the client's push timeout", async (t) => {
  const { channel, frames } = await joined(t, "ping");
  const pong = channel.push("pong", { n: 1 }, 300);
  const res = await outcome(pong, "pong outcome");
  assert.deepEqual(res, { status: "timeout", response: {} });
  const pongRef = frames.filter((f) => f.dir === "out" && f.event === "pong")[0].ref;

  // A later round trip on the same connection: if the server had replied to
  // pong, that reply would have been queued before this one.
  assert.deepEqual(await push(channel, "ping", {}), { status: "ok", response: { ping: "pong" } });
  assert.equal(
    frames.filter((f) => f.dir === "in" && f.ref === pongRef).length,
    0,
    "no frame answers the pong push",
  );
  assert.equal(channel.state, "joined");
});

test("pushes made before the join completes are buffered and answered", async (t) => {
  const client = await openSocket(gw, {}, t);
  const channel = client.socket.channel("ping:buffered");
  const joining = join(channel);
  const replies = [1, 2, 3].map((i) => push(channel, "ping", { ack_phrase: `p${i}` }));
  assert.equal((await joining).status, "ok");
  const got = await Promise.all(replies);
  assert.deepEqual(
    got.map((r) => r.response.ping),
    ["p1", "p2", "p3"],
  );
});
