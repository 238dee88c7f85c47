// HTTP hooks (issue 17, docs/hooks.md) with the unmodified phoenix.js client
// and the example hook server of examples/backends (Python's standard
// library, verifying every request's signature): the connect hook admits a
// user with assigns or refuses one, the join hook answers with a reply or
// refuses with a reason, and the push hook replies and broadcasts.

import { test, before } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { freePort, REPO_ROOT, spawnProcess, startGateway, suiteScope } from "../../testkit/index.mjs";
import {
  closeSocket,
  EventLog,
  join,
  openSocket,
  push,
  recordChannel,
  recordingTransport,
  Socket,
} from "../lib/phx.js";

const SECRET = "compat-hook-secret-0123456789";

const scope = suiteScope();
let gw;
before(async () => {
  const port = await freePort();
  const hooks = spawnProcess(
    scope,
    "hook_server",
    "python3",
    [path.join(REPO_ROOT, "examples/backends/hook_server.py"), "--port", String(port)],
    { env: { ...process.env, GATEWAY_HOOK_SECRET: SECRET } },
  );
  await hooks.waitForLog(/listening on/);
  const url = (hook) => `http://127.0.0.1:${port}/${hook}`;
  gw = await startGateway(scope, {
    config: {
      hooks: { secret: SECRET },
      socket: [{ path: "/socket", hooks: { connect: url("connect") } }],
      channel: [
        {
          pattern: "hooked:*",
          events: ["shout"],
          mode: "hook",
          hooks: { join: url("join"), push: url("push") },
        },
      ],
    },
  });
});

async function metric(name, labels) {
  const text = await (await fetch(`${gw.httpUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}} `));
  return line ? Number(line.split(" ").pop()) : 0;
}

test("the connect hook admits a user; join and push hooks reply, refuse and broadcast", async (t) => {
  const alice = await openSocket(gw, { params: { user: "alice" } }, t);
  const bob = await openSocket(gw, { params: { user: "bob" } }, t);
  const room = alice.socket.channel("hooked:lobby", {});
  const bobRoom = bob.socket.channel("hooked:lobby", {});
  const seen = recordChannel(bobRoom, ["shout"]);
  const joined = await join(room);
  assert.deepEqual(joined, { status: "ok", response: { welcome: "hello alice, this is hooked:lobby" } });
  assert.equal((await join(bobRoom)).status, "ok");

  const refused = await join(alice.socket.channel("hooked:admin-ops", {}));
  assert.deepEqual(refused, { status: "error", response: { reason: "forbidden" } });

  const reply = await push(room, "shout", { body: "hi all" });
  assert.deepEqual(reply, { status: "ok", response: { shouted: true } });
  const got = await seen.waitFor((e) => e.event === "shout");
  assert.deepEqual(got.payload, { body: "HI ALL", from: "alice" }, "the hook's broadcast, with the connect hook's assigns");

  assert.ok((await metric("gateway_hook_requests_total", 'hook="connect",result="ok"')) >= 2);
  assert.ok((await metric("gateway_hook_requests_total", 'hook="join",result="refused"')) >= 1);
  assert.ok((await metric("gateway_hook_requests_total", 'hook="push",result="ok"')) >= 1);
});

test("the connect hook refuses a banned user: phoenix.js never opens", async () => {
  const before = await metric("gateway_hook_requests_total", 'hook="connect",result="refused"');
  const events = new EventLog("socket event");
  const socket = new Socket(gw.socketUrl, {
    params: { user: "banned" },
    transport: recordingTransport(new EventLog("frame")),
    reconnectAfterMs: () => 60_000,
  });
  socket.onOpen(() => events.push({ type: "open" }));
  socket.onError(() => events.push({ type: "error" }));
  socket.connect();
  try {
    await events.waitFor((e) => e.type === "error");
    assert.equal(events.filter((e) => e.type === "open").length, 0);
    assert.equal(await metric("gateway_hook_requests_total", 'hook="connect",result="refused"'), before + 1);
  } finally {
    await closeSocket(socket);
  }
});
