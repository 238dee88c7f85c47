// Joins accepted and refused, with the exact reply frames (PHOENIX_PROTOCOL §3.1).

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { startSeeds, suiteScope } from "../../testkit/index.mjs";
import { openSocket, join, push, outcome } from "../lib/phx.js";

const scope = suiteScope();
let gw;
before(async () => {
  gw = await startSeeds(scope);
});

/** The reply frame the server sent for push `ref` on `topic`. */
function replyFrame(frames, topic, ref) {
  return frames.waitFor((f) => f.dir === "in" && f.topic === topic && f.event === "phx_reply" && f.ref === ref, {
    label: `phx_reply for ref ${ref} on ${topic}`,
  });
}

test("join ok: ping, ping:<sub>, room:lobby, wild:2:4", async (t) => {
  const { socket, frames } = await openSocket(gw, {}, t);
  for (const topic of ["ping", "ping:abc", "room:lobby", "wild:2:4"]) {
    const channel = socket.channel(topic, { some: "param" });
    const res = await join(channel);
    assert.deepEqual(res, { status: "ok", response: {} }, `join ${topic}`);
    assert.equal(channel.state, "joined");

    const jr = channel.joinRef();
    const sent = frames.filter((f) => f.dir === "out" && f.topic === topic && f.event === "phx_join");
    assert.equal(sent.length, 1);
    assert.equal(sent[0].join_ref, jr, "phx_join carries join_ref == ref");
    assert.equal(sent[0].ref, jr);
    assert.deepEqual(sent[0].payload, { some: "param" }, "join params are sent as the payload");

    const reply = await replyFrame(frames, topic, jr);
    assert.equal(reply.shape, "array");
    assert.equal(reply.length, 5);
    assert.equal(reply.join_ref, jr, "join reply echoes the join_ref");
    assert.deepEqual(reply.payload, { status: "ok", response: {} });
  }
  // Joined channels work.
  const wild = socket.channels.find((c) => c.topic === "wild:2:4");
  assert.deepEqual(await push(wild, "ping", {}), { status: "ok", response: { ping: "pong" } });
});

test("join error: room:secret is unauthorized, wild:1:3 is refused", async (t) => {
  const { socket, frames } = await openSocket(gw, {}, t);

  const secret = socket.channel("room:secret");
  assert.deepEqual(await join(secret), { status: "error", response: { reason: "unauthorized" } });
  assert.equal(secret.state, "errored", "a refused join leaves the channel errored (client retries later)");
  const secretReply = await replyFrame(frames, "room:secret", secret.joinRef());
  assert.equal(secretReply.join_ref, secret.joinRef(), "refusal echoes the join_ref");
  assert.deepEqual(secretReply.payload, { status: "error", response: { reason: "unauthorized" } });

  const wild = socket.channel("wild:1:3");
  const res = await join(wild);
  assert.equal(res.status, "error");
  assert.equal(typeof res.response.reason, "string");
  assert.ok(res.response.reason.length > 0);

  // Stop the client's retry loop the documented way: leave. The server has
  // nothing registered for these topics and still acknowledges the leave.
  for (const ch of [secret, wild]) {
    const leave = ch.leave();
    const left = await outcome(leave, `leave ${ch.topic}`);
    assert.equal(left.status, "ok");
    assert.equal(ch.state, "closed");
  }
});

test("join of a topic no channel serves: error unmatched topic with null join_ref", async (t) => {
  const { socket, frames } = await openSocket(gw, {}, t);
  const ch = socket.channel("nobody:here");
  const ref = ch.joinPush;
  assert.deepEqual(await join(ch), { status: "error", response: { reason: "unmatched topic" } });
  const reply = await replyFrame(frames, "nobody:here", ref.ref);
  assert.equal(reply.join_ref, null);
  await outcome(ch.leave(), "leave nobody:here");
});

test("wild:A:B joins only when B = 2A", async (t) => {
  const { socket } = await openSocket(gw, {}, t);
  const cases = [
    ["wild:2:4", "ok"],
    ["wild:-3:-6", "ok"],
    ["wild:0:0", "ok"],
    ["wild:1:3", "error"],
    ["wild:a:b", "error"],
    ["wild:2", "error"],
    ["wild:2:4:8", "error"],
  ];
  for (const [topic, expected] of cases) {
    const ch = socket.channel(topic);
    const res = await join(ch);
    assert.equal(res.status, expected, `join ${topic}`);
    if (expected === "error") await outcome(ch.leave(), `leave ${topic}`);
  }
});
