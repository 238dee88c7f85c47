// Channel lifecycle: leave, server-side close (ding -> phx_close), and a crash
// (phx_error) followed by the client's automatic rejoin (PHOENIX_PROTOCOL §3.2, §3.3, §6).

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { startSeeds, suiteScope } from "../../testkit/index.mjs";
import { openSocket, join, push, outcome, recordChannel } from "../lib/phx.js";

const scope = suiteScope();
let gw;
before(async () => {
  gw = await startSeeds(scope);
});

const DEFAULT_REJOIN = (tries) => [1000, 2000, 5000][tries - 1] || 10000;

/**
 * Socket options that keep phoenix.js' default rejoin schedule but record
 * each time the client schedules a rejoin (the client computes the delay
 * synchronously when it arms the rejoin timer).
 */
function rejoinRecorder() {
  const calls = [];
  return {
    calls,
    opts: {
      rejoinAfterMs: (tries) => {
        calls.push({ tries, at: performance.now() });
        return DEFAULT_REJOIN(tries);
      },
    },
  };
}

test("leave: ok reply, phx_close, and no more broadcasts for the left channel", async (t) => {
  const a = await openSocket(gw, {}, t);
  const b = await openSocket(gw, {}, t);
  const aRoom = a.socket.channel("room:lobby");
  const aRoomLog = recordChannel(aRoom, ["new_msg", "after_leave"]);
  const aMarker = a.socket.channel("ping:leave-marker");
  const aMarkerLog = recordChannel(aMarker, ["marker"]);
  const bRoom = b.socket.channel("room:lobby");
  const bRoomLog = recordChannel(bRoom, ["after_leave"]);
  for (const ch of [aRoom, aMarker, bRoom]) assert.equal((await join(ch)).status, "ok");

  // Before leaving, A gets room broadcasts.
  await gw.broadcast("room:lobby", "new_msg", { body: "before leave" });
  await aRoomLog.waitFor((e) => e.event === "new_msg");

  const jr = aRoom.joinRef();
  const leave = aRoom.leave();
  assert.deepEqual(await outcome(leave, "leave ok"), { status: "ok", response: {} });
  assert.equal(aRoom.state, "closed");
  assert.ok(!a.socket.channels.includes(aRoom), "the client dropped the channel");
  // The ok came from the server, then the server closed the channel.
  const okFrame = await a.frames.waitFor(
    (f) => f.dir === "in" && f.event === "phx_reply" && f.topic === "room:lobby" && f.ref === leave.ref,
    { label: "leave reply frame" },
  );
  assert.equal(okFrame.join_ref, jr);
  assert.deepEqual(okFrame.payload, { status: "ok", response: {} });
  const closeFrame = await a.frames.waitFor(
    (f) => f.dir === "in" && f.event === "phx_close" && f.topic === "room:lobby",
    { label: "phx_close after leave" },
  );
  assert.ok(closeFrame.seq > okFrame.seq, "phx_close follows the leave reply");
  assert.equal(closeFrame.join_ref, jr);
  assert.equal(closeFrame.ref, jr);

  // Broadcast to the room, then a marker to a topic A is still in. Both are
  // queued on A's connection in publish order, so once the marker arrives an
  // after_leave frame for A would already have arrived.
  const mark = a.frames.mark;
  await gw.broadcast("room:lobby", "after_leave", { n: 1 });
  await gw.broadcast("ping:leave-marker", "marker", { n: 2 });
  await aMarkerLog.waitFor((e) => e.event === "marker", { label: "marker at A" });
  await bRoomLog.waitFor((e) => e.event === "after_leave", { label: "after_leave at B" });
  assert.deepEqual(
    a.frames.filter((f) => f.dir === "in" && f.topic === "room:lobby", mark),
    [],
    "A's connection received nothing for room:lobby after leaving",
  );
  assert.equal(aRoomLog.filter((e) => e.event === "after_leave").length, 0);
});

test("ding: reply, then phx_close; onClose fires and the channel does not rejoin", async (t) => {
  const rec = rejoinRecorder();
  const c = await openSocket(gw, rec.opts, t);
  const ping = c.socket.channel("ping");
  const log = recordChannel(ping, ["after_ding"]);
  const marker = c.socket.channel("ping:ding-marker");
  const markerLog = recordChannel(marker, ["marker"]);
  assert.equal((await join(ping)).status, "ok");
  assert.equal((await join(marker)).status, "ok");
  const jr = ping.joinRef();

  const ding = ping.push("ding", {});
  assert.deepEqual(await outcome(ding, "ding reply"), { status: "ok", response: { msg: "shutting down" } });
  const closed = await log.waitFor((e) => e.event === "onClose", { label: "onClose" });
  assert.equal(closed.state, "closed");

  const replyFrame = c.frames.filter((f) => f.dir === "in" && f.ref === ding.ref)[0];
  const closeFrame = c.frames.filter((f) => f.dir === "in" && f.topic === "ping" && f.event === "phx_close")[0];
  assert.ok(replyFrame && closeFrame, "both reply and phx_close frames arrived");
  assert.ok(replyFrame.seq < closeFrame.seq, "the reply precedes phx_close");
  assert.deepEqual(
    [closeFrame.join_ref, closeFrame.ref, closeFrame.topic, closeFrame.event, closeFrame.payload],
    [jr, jr, "ping", "phx_close", {}],
  );

  // Does not rejoin: no phx_error, no rejoin scheduled, channel dropped.
  assert.equal(log.filter((e) => e.event === "onError").length, 0, "onError never fired");
  assert.equal(c.frames.filter((f) => f.dir === "in" && f.event === "phx_error").length, 0);
  assert.deepEqual(rec.calls, [], "the client never scheduled a rejoin");
  assert.ok(!c.socket.channels.includes(ping), "the client dropped the channel");

  // Server side the channel is gone: a broadcast to "ping" is not delivered,
  // proven by a later broadcast to another topic arriving on the same connection.
  const mark = c.frames.mark;
  await gw.broadcast("ping", "after_ding", {});
  await gw.broadcast("ping:ding-marker", "marker", {});
  await markerLog.waitFor((e) => e.event === "marker");
  assert.deepEqual(
    c.frames.filter((f) => (f.dir === "in" || f.dir === "out") && f.topic === "ping", mark),
    [],
    "no frames for ping (neither a delivery nor a rejoin) after the close",
  );
  assert.equal(c.frames.filter((f) => f.dir === "out" && f.topic === "ping" && f.event === "phx_join").length, 1);
  // The connection itself is fine.
  assert.deepEqual(await push(marker, "ping", {}), { status: "ok", response: { ping: "pong" } });
});

test("crash: unknown event -> phx_error, onError, automatic rejoin, ping works again", async (t) => {
  const rec = rejoinRecorder();
  const c = await openSocket(gw, rec.opts, t);
  const ping = c.socket.channel("ping");
  const log = recordChannel(ping, []);
  assert.equal((await join(ping)).status, "ok");
  const jr1 = ping.joinRef();

  const boom = ping.push("no_such_event", {}, 500);
  const err = await log.waitFor((e) => e.event === "onError", { label: "onError" });
  assert.equal(err.state, "errored");
  assert.deepEqual(err.payload, { reason: "channel_crash" });
  const errFrame = c.frames.filter((f) => f.dir === "in" && f.event === "phx_error")[0];
  assert.deepEqual(
    [errFrame.join_ref, errFrame.ref, errFrame.topic],
    [jr1, jr1, "ping"],
    "phx_error is tagged with the join_ref as ref",
  );
  assert.deepEqual(
    rec.calls.map((c) => c.tries),
    [1],
    "the client scheduled its first rejoin (1 s)",
  );

  // Rejoin happens by itself (phoenix.js default: after 1 s).
  const rejoined = await log.waitFor((e) => e.event === "join:ok", {
    from: log.filter((e) => e.event === "join:ok")[0].seq + 1,
    label: "automatic rejoin",
    timeout: 5000,
  });
  assert.equal(ping.state, "joined");
  const jr2 = ping.joinRef();
  assert.notEqual(jr2, jr1, "the rejoin uses a fresh join_ref");
  const joins = c.frames.filter((f) => f.dir === "out" && f.topic === "ping" && f.event === "phx_join");
  assert.equal(joins.length, 2);
  t.diagnostic(`rejoin sent ${(joins[1].at - err.at).toFixed(0)} ms after phx_error; joined after ${(rejoined.at - err.at).toFixed(0)} ms`);

  assert.deepEqual(await push(ping, "ping", {}), { status: "ok", response: { ping: "pong" } });
  assert.deepEqual(await push(ping, "ping_again", {}), { status: "ok", response: { ping: "again" } });
  // The push that crashed the channel never got a reply.
  assert.equal((await outcome(boom, "crashing push")).status, "timeout");
});
