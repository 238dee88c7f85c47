// The way in (issue 17, docs/backends.md): client pushes that a rule forwards
// reach backends through a Redis stream, and the backends' answers reach the
// pushing client's ref. Three gateway pods with config/example.toml and its
// commented chat:* rule turned on (the block between ">>> backends" and
// "<<< backends"), one Redis, the unmodified phoenix.js client, and the real
// workers of examples/backends (Python with redis-py, Node with `redis`).
// Where a test needs a backend that misbehaves, it plays the backend itself
// with redis-cli.

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {
  REPO_ROOT,
  spawnProcess,
  startCluster,
  suiteScope,
  testScope,
  until,
} from "../../testkit/index.mjs";
import { join, openSocket, outcome, push, recordChannel } from "../lib/phx.js";

const EXAMPLES = path.join(REPO_ROOT, "examples/backends");
/** A Python that has redis-py: $PYTHON, or the first python3 on PATH, or
 * Debian's (where apt's python3-redis goes; a pyenv's may lack it). */
const PYTHON = [process.env.PYTHON, "python3", "/usr/bin/python3"]
  .filter(Boolean)
  .find((py) => spawnSync(py, ["-c", "import redis"]).status === 0);

/** Rules only these tests use: a stream no worker reads, and one answered on store. */
const TEST_RULES = `
[[channel]]
pattern = "quiet:*"
events = ["new_msg"]
mode = "forward"

[channel.forward]
stream = "quiet"
reply_timeout_ms = 1500
max_pending = 4

[[channel]]
pattern = "stored:*"
events = ["note"]
mode = "forward"

[channel.forward]
stream = "stored"
reply = "on_store"
rate = 20
max_len = 50
`;

/** config/example.toml with its backends block uncommented, plus TEST_RULES. */
function config(dir) {
  const example = fs.readFileSync(path.join(REPO_ROOT, "config/example.toml"), "utf8");
  const block = example.match(/^# >>> backends\n([\s\S]*?)^# <<< backends$/m);
  assert.ok(block, "config/example.toml has the backends block");
  const rules = block[1].replace(/^# ?/gm, "");
  const file = path.join(dir, "backends.toml");
  fs.writeFileSync(file, `${example}\n${rules}\n${TEST_RULES}`);
  return file;
}

const scope = suiteScope();
let cluster;
before(async () => {
  cluster = await startCluster(scope, { pods: 3, nginx: false, config: config(scope.mkdir("config")) });
});

let n = 0;
const unique = (prefix) => `${prefix}:backends-${process.pid}-${++n}`;

/** A worker of examples/backends (`py` or `node`) in `s`, consuming once it says so. */
async function startWorker(s, kind, name, env = {}) {
  assert.ok(kind !== "py" || PYTHON, "a python3 with redis-py (make test-deps installs python3-redis)");
  const [cmd, file] = kind === "py" ? [PYTHON, "worker.py"] : [process.execPath, "worker.mjs"];
  const proc = spawnProcess(s, name, cmd, [path.join(EXAMPLES, file)], {
    cwd: EXAMPLES,
    env: { ...process.env, REDIS_URL: cluster.redis.url, CONSUMER: name, CLAIM_IDLE_MS: "1000", ...env },
    graceMs: 1000,
  });
  await proc.waitForLog(/consuming/);
  return proc;
}

/** A metric's value on a pod (0 when absent). */
async function metric(pod, name, labels = "") {
  const text = await (await fetch(`${pod.httpUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ""} `));
  return line ? Number(line.split(" ").pop()) : 0;
}

const cli = (...args) => cluster.redis.cli(...args);

/** The newest entry of a stream as {id, fields}. */
async function newestEntry(stream) {
  const lines = (await cli("XREVRANGE", stream, "+", "-", "COUNT", "1")).split("\n");
  const fields = {};
  for (let i = 1; i + 1 < lines.length; i += 2) fields[lines[i]] = lines[i + 1];
  return { id: lines[0], fields };
}

async function joined(pod, topic, t, events = ["new_msg"]) {
  const client = await openSocket(pod, {}, t);
  const channel = client.socket.channel(topic, {});
  const log = recordChannel(channel, events);
  assert.equal((await join(channel)).status, "ok");
  return { client, channel, log };
}

test("a push on pod A reaches the Python worker; its answer the pusher's ref, its broadcast clients on pods B and C", async (t) => {
  const s = testScope(t);
  await startWorker(s, "py", "py-1");
  const topic = unique("chat");
  const [a, b, c] = await Promise.all(cluster.pods.map((pod) => joined(pod, topic, t)));
  const reply = await push(a.channel, "new_msg", { body: " hello from A " });
  assert.equal(reply.status, "ok");
  assert.equal(reply.response.worker, "py-1");
  assert.match(reply.response.id, /^\d+-\d+$/, "the message id is its stream entry's");
  for (const { log } of [a, b, c]) {
    const got = await log.waitFor((e) => e.event === "new_msg");
    assert.deepEqual(got.payload, { id: reply.response.id, body: "hello from A", user: "anonymous" });
  }
  const stored = JSON.parse(await cli("LINDEX", `chat:messages:${topic}`, "0"));
  assert.equal(stored.id, reply.response.id);
  // What the worker was given (docs/backends.md): the push as sent, and where to answer.
  const { fields } = await newestEntry("phx:in:chat");
  assert.equal(fields.topic, topic);
  assert.equal(fields.event, "new_msg");
  assert.deepEqual(JSON.parse(fields.payload), { body: " hello from A " });
  assert.equal(fields.claims, "{}");
  assert.match(fields.reply_to, /^phx:rp:/);
  assert.ok(fields.ref && fields.join_ref && fields.pod && fields.reply_ref);
  const podId = fields.reply_to.slice("phx:rp:".length);
  assert.match(fields.conn, new RegExp(`^${podId}:\\d+$`), "conn is <pod id>:<n>, as lifecycle events name it");

  // A worker's answer to an invalid message is an error reply, not a broadcast.
  const refused = await push(a.channel, "new_msg", { body: "   " });
  assert.deepEqual(refused, { status: "error", response: { reason: "a new_msg needs a body" } });
  assert.equal(await metric(cluster.pods[0], "gateway_forward_pushes_total", 'result="ok"') >= 1, true);
});

test("a Python and a Node worker in one group share the load; an entry held by a SIGKILLed worker is claimed and answered once", async (t) => {
  const s = testScope(t);
  const py = await startWorker(s, "py", "py-2", { STALL_ON: "stall" });
  const node = await startWorker(s, "node", "node-1");
  const topic = unique("chat");
  const { channel } = await joined(cluster.pods[1], topic, t);
  const workers = new Set();
  for (let round = 0; round < 5 && workers.size < 2; round++) {
    const replies = await Promise.all(
      Array.from({ length: 10 }, (_, i) => push(channel, "new_msg", { body: `m${round}-${i}` })),
    );
    for (const r of replies) {
      assert.equal(r.status, "ok");
      workers.add(r.response.worker);
    }
  }
  assert.deepEqual([...workers].sort(), ["node-1", "py-2"], "both workers answered");

  // Only the Python worker runs now; it takes the next entry and hangs.
  await node.stop();
  const pending = outcome(channel.push("new_msg", { body: "stall here" }), "the stalled push");
  await py.waitForLog(/stalling on/);
  await py.stop({ signal: "SIGKILL" });
  await startWorker(s, "node", "node-2");
  const reply = await pending;
  assert.equal(reply.status, "ok", JSON.stringify(reply));
  assert.equal(reply.response.worker, "node-2", "the other worker claimed the entry");
  const stored = (await cli("LRANGE", `chat:messages:${topic}`, "0", "-1"))
    .split("\n")
    .filter((l) => l.includes("stall here"));
  assert.equal(stored.length, 1, "handled once");
});

test("no worker: the client gets a timeout error after reply_timeout; a late answer is dropped", async (t) => {
  const topic = unique("quiet");
  const { channel } = await joined(cluster.pods[2], topic, t);
  const before = await metric(cluster.pods[2], "gateway_forward_pushes_total", 'result="timeout"');
  const started = performance.now();
  const reply = await push(channel, "new_msg", { body: "anyone?" });
  const waited = performance.now() - started;
  assert.deepEqual(reply, { status: "error", response: { reason: "timeout" } });
  assert.ok(waited >= 1400, `answered after the 1500 ms reply_timeout, not before (${waited} ms)`);
  assert.equal(await metric(cluster.pods[2], "gateway_forward_pushes_total", 'result="timeout"'), before + 1);
  // A backend that answers now, within one more reply_timeout, has its
  // broadcasts sent, not its reply.
  const { fields } = await newestEntry("phx:in:quiet");
  const late = { ref: fields.reply_ref, status: "ok", broadcasts: [{ topic, event: "new_msg", payload: { late: true } }] };
  const log = recordChannel(channel, ["new_msg"]);
  await cli("PUBLISH", fields.reply_to, JSON.stringify(late));
  assert.deepEqual((await log.waitFor((e) => e.event === "new_msg")).payload, { late: true });
  await until("the late answer counted", async () =>
    (await metric(cluster.pods[2], "gateway_forward_answers_total", 'result="late"')) >= 1,
  );
});

test("a backend's answer: a second one to the same push is dropped; a malformed one is an error reply, logged once", async (t) => {
  const pod = cluster.pods[0];
  const topic = unique("quiet");
  const { channel, client } = await joined(pod, topic, t);
  const answerNext = async (answer) => {
    const before = (await newestEntry("phx:in:quiet")).id;
    const pushed = outcome(channel.push("new_msg", { body: "x" }), "push");
    let entry;
    await until("the push in the stream", async () => {
      entry = await newestEntry("phx:in:quiet");
      return entry.id !== before && entry.fields.topic === topic;
    });
    const body = typeof answer === "string" ? answer : JSON.stringify({ ref: entry.fields.reply_ref, ...answer });
    await cli("PUBLISH", entry.fields.reply_to, body);
    return { entry, reply: await pushed };
  };

  const unknown = await metric(pod, "gateway_forward_answers_total", 'result="unknown"');
  const { entry, reply } = await answerNext({ status: "ok", response: { first: true } });
  assert.deepEqual(reply, { status: "ok", response: { first: true } });
  await cli("PUBLISH", entry.fields.reply_to, JSON.stringify({ ref: entry.fields.reply_ref, status: "ok", response: { second: true } }));
  await until("the second answer dropped", async () =>
    (await metric(pod, "gateway_forward_answers_total", 'result="unknown"')) === unknown + 1,
  );
  const second = client.frames.filter((f) => f.dir === "in" && JSON.stringify(f.payload ?? null).includes("second"));
  assert.deepEqual(second, [], "the client never sees the second answer");

  for (const bad of [{ status: "maybe" }, { status: "ok", response: [1, 2] }]) {
    const { reply: r } = await answerNext(bad);
    assert.deepEqual(r, { status: "error", response: { reason: "bad backend reply" } });
  }
  const malformed = await metric(pod, "gateway_forward_answers_total", 'result="malformed"');
  await cli("PUBLISH", entry.fields.reply_to, "not json at all");
  await until("the unreadable answer counted", async () =>
    (await metric(pod, "gateway_forward_answers_total", 'result="malformed"')) === malformed + 1,
  );
  const warnings = fs
    .readFileSync(pod.logFile, "utf8")
    .split("\n").filter((l) => l.includes("malformed answer to a forwarded push"));
  assert.equal(warnings.length, 1, "logged once, not per answer");
});

test("bad input: an oversize push is refused and not forwarded; a client faster than its backend is limited and the stream stays bounded, while a client beside it is served", async (t) => {
  const pod = cluster.pods[1];
  await startWorker(testScope(t), "py", "py-3");
  const neighbour = await joined(pod, unique("chat"), t);
  const served = (async () => {
    const replies = [];
    for (let i = 0; i < 20; i++) replies.push(await push(neighbour.channel, "new_msg", { body: `n${i}` }));
    return replies;
  })();
  // Over the chat rule's max_payload (8192): refused before the stream.
  const chatTopic = unique("chat");
  const chat = await joined(pod, chatTopic, t);
  const big = await push(chat.channel, "new_msg", { body: "x".repeat(9000) });
  assert.deepEqual(big, { status: "error", response: { reason: "payload too large" } });
  assert.ok(!(await cli("XRANGE", "phx:in:chat", "-", "+")).includes(chatTopic), "nothing forwarded");

  // No worker drains quiet:*: 4 pushes may wait (max_pending), the rest are refused at once.
  const quiet = await joined(pod, unique("quiet"), t);
  const replies = await Promise.all(Array.from({ length: 10 }, () => push(quiet.channel, "new_msg", { body: "q" })));
  const reasons = replies.map((r) => r.response.reason).sort();
  assert.deepEqual(reasons, [...Array(4).fill("timeout"), ...Array(6).fill("too many pending pushes")]);

  // Answered on store, at 20 pushes/s after a burst of 20; the stream keeps about max_len (50).
  const stored = await joined(pod, unique("stored"), t, []);
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => push(stored.channel, "note", { i })));
  const ok = results.filter((r) => r.status === "ok");
  const limited = results.filter((r) => r.response.reason === "rate limited");
  assert.ok(ok.length >= 20, `the burst passes (${ok.length})`);
  assert.ok(limited.length > 0, "the rest is rate limited");
  assert.equal(ok.length + limited.length, 100);
  for (const r of ok) assert.match(r.response.id, /^\d+-\d+$/);
  for (let round = 0; round < 3; round++) {
    await Promise.all(Array.from({ length: 20 }, (_, i) => push(stored.channel, "note", { i })));
  }
  const len = Number(await cli("XLEN", "phx:in:stored"));
  // MAXLEN ~ trims whole stream nodes (100 entries each by default).
  assert.ok(len <= 50 + 100, `the stream is bounded (${len} entries)`);
  for (const r of await served) assert.equal(r.status, "ok", `the neighbour is served: ${JSON.stringify(r)}`);
});

test("Redis down: a forwarded push is answered with an error at once", async (t) => {
  const pod = cluster.pods[2];
  const { channel } = await joined(pod, unique("chat"), t);
  await cluster.redis.kill("SIGKILL");
  await until("the pod sees Redis gone", async () => (await metric(pod, "gateway_redis_up")) === 0);
  const reply = await push(channel, "new_msg", { body: "into the void" });
  assert.deepEqual(reply, { status: "error", response: { reason: "backend unavailable" } });
  assert.ok((await metric(pod, "gateway_forward_pushes_total", 'result="unavailable"')) >= 1);
});
