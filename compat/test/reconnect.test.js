// The client's own reconnect and rejoin after the gateway process goes away
// and comes back on the same port (PHOENIX_PROTOCOL §6).

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { startSeeds, suiteScope } from "../../testkit/index.mjs";
import { openSocket, join, push, recordChannel } from "../lib/phx.js";

const scope = suiteScope();
let gw;
before(async () => {
  gw = await startSeeds(scope, { recurringMs: 100 });
});

const DEFAULT_RECONNECT = (tries) => [10, 50, 100, 150, 200, 250, 500, 1000, 2000][tries - 1] || 5000;

/**
 * A connected client with phoenix.js' default reconnect schedule (recorded),
 * params re-evaluated per connect, and two joined channels.
 */
async function connectedClient(t) {
  const reconnects = [];
  let paramCalls = 0;
  const c = await openSocket(
    gw,
    {
      params: () => ({ token: `tok-${++paramCalls}` }),
      reconnectAfterMs: (tries) => {
        reconnects.push(tries);
        return DEFAULT_RECONNECT(tries);
      },
    },
    t,
  );
  const ping = c.socket.channel("ping:reconnect");
  const pingLog = recordChannel(ping, []);
  const rec = c.socket.channel("recurring");
  const recLog = recordChannel(rec, ["new_token"]);
  assert.equal((await join(ping)).status, "ok");
  assert.equal((await join(rec)).status, "ok");
  await recLog.waitFor((e) => e.event === "new_token", { label: "first new_token" });
  return { ...c, ping, pingLog, rec, recLog, reconnects, paramCalls: () => paramCalls };
}

/** After the rejoins: the socket is open again, both channels are joined and work. */
async function assertRecovered(t, c, { pid, since, port }) {
  await c.events.waitFor((e) => e.type === "open", { from: since, label: "socket reopened", timeout: 15000 });
  for (const ch of [c.ping, c.rec]) assert.equal(ch.state, "joined", `${ch.topic} is joined again`);
  assert.deepEqual(await push(c.ping, "ping", { ack_phrase: "back" }), { status: "ok", response: { ping: "back" } });
  // new_token now comes from the new process (its pid is in the token).
  const fresh = await c.recLog.waitFor(
    (e) => e.event === "new_token" && e.payload.token.startsWith(`${pid.toString(16)}-`),
    { label: "new_token from the restarted gateway" },
  );
  assert.equal(fresh.payload.n >= 1, true);
  const urls = c.frames.filter((f) => f.dir === "url");
  const last = new URL(urls.at(-1).url);
  assert.equal(last.port, String(port), "reconnected to the same port");
  assert.equal(last.searchParams.get("token"), `tok-${c.paramCalls()}`, "params are re-evaluated per connect");
  assert.ok(c.paramCalls() >= 2);
}

/** seq of the last join:ok logged before now. */
function lastJoinOk(log) {
  const oks = log.filter((e) => e.event === "join:ok");
  return oks.at(-1).seq;
}

test("gateway killed (SIGKILL) and restarted on the same port: client reconnects and rejoins", async (t) => {
  const c = await connectedClient(t);
  const port = gw.port;
  const oldPid = gw.pid;
  const pingJoinOk = lastJoinOk(c.pingLog);
  const recJoinOk = lastJoinOk(c.recLog);
  const since = c.events.mark;

  const frameMark = c.frames.mark;
  const killedAt = performance.now();
  const exit = await gw.kill("SIGKILL");
  assert.equal(exit.signal, "SIGKILL");

  const closed = await c.events.waitFor((e) => e.type === "close", { from: since, label: "socket close" });
  t.diagnostic(`client saw close code ${closed.code} ${(closed.at - killedAt).toFixed(0)} ms after the kill`);
  assert.notEqual(closed.code, 1000);
  const err = await c.pingLog.waitFor((e) => e.event === "onError", { from: pingJoinOk, label: "channel onError" });
  assert.equal(err.state, "errored");
  assert.deepEqual(err.payload, { source: "transport", reason: "connection_closed" });
  assert.ok(c.reconnects.length >= 1, "the client scheduled a reconnect by itself");

  // Let the client fail at least one reconnect attempt while nothing listens.
  const attempt = await c.frames.waitFor((f) => f.dir === "url", { from: frameMark, label: "a reconnect attempt" });
  await c.frames.waitFor((f) => f.dir === "close", { from: attempt.seq + 1, label: "the attempt failing" });

  // Same port, new process.
  const restartAt = performance.now();
  await gw.restart();
  assert.equal(gw.port, port);
  assert.notEqual(gw.pid, oldPid);
  t.diagnostic(`gateway restarted in ${(performance.now() - restartAt).toFixed(0)} ms`);

  await c.events.waitFor((e) => e.type === "open", { from: since, label: "socket reopened", timeout: 15000 });
  await c.pingLog.waitFor((e) => e.event === "join:ok", { from: pingJoinOk + 1, label: "ping rejoined", timeout: 15000 });
  await c.recLog.waitFor((e) => e.event === "join:ok", { from: recJoinOk + 1, label: "recurring rejoined", timeout: 15000 });
  t.diagnostic(
    `reconnect attempts scheduled: ${c.reconnects.length} (tries ${c.reconnects.join(",")}); ` +
      `rejoined ${(performance.now() - killedAt).toFixed(0)} ms after the kill`,
  );
  assert.ok(c.reconnects.length >= 2, "reconnects continued on the backoff schedule");
  await assertRecovered(t, c, { pid: gw.pid, since, port });
});

test("graceful shutdown (SIGINT): close code is not 1000, client reconnects after restart", async (t) => {
  const c = await connectedClient(t);
  const port = gw.port;
  const since = c.events.mark;
  const pingJoinOk = lastJoinOk(c.pingLog);
  const recJoinOk = lastJoinOk(c.recLog);

  const exit = await gw.kill("SIGINT");
  assert.ok(!exit.graceExpired, "the gateway exits by itself on SIGINT");
  const closed = await c.events.waitFor((e) => e.type === "close", { from: since, label: "socket close" });
  const closeFrame = c.frames.filter((f) => f.dir === "close").at(-1);
  t.diagnostic(`SIGINT: exit ${JSON.stringify(exit)}, client close code ${closed.code} reason "${closeFrame.reason}"`);
  // 1000 would stop phoenix.js <= 1.8.12 from reconnecting.
  assert.notEqual(closed.code, 1000);

  await gw.restart();
  await c.pingLog.waitFor((e) => e.event === "join:ok", { from: pingJoinOk + 1, label: "ping rejoined", timeout: 15000 });
  await c.recLog.waitFor((e) => e.event === "join:ok", { from: recJoinOk + 1, label: "recurring rejoined", timeout: 15000 });
  await assertRecovered(t, c, { pid: gw.pid, since, port });
});
