// A chat backend for the gateway, in Node with the `redis` package (v4):
// the same contract as worker.py (docs/backends.md). Reads the pushes a
// `mode = "forward"` rule appends to its stream in a consumer group, stores
// each new_msg in a Redis list, answers the client with its id and
// broadcasts it, in one PUBLISH to the entry's reply address, then XACKs.
// Entries a dead worker left unacknowledged are claimed (XAUTOCLAIM) after
// CLAIM_IDLE_MS and handled again; the gateway drops a second answer.
//
//   npm install redis@4
//   REDIS_URL=redis://127.0.0.1:6379 node worker.mjs
//
// Environment: REDIS_URL, STREAM (phx:in:chat), GROUP (chat), CONSUMER
// (host-pid), CLAIM_IDLE_MS (5000; below the rule's reply_timeout_ms).

import os from "node:os";
import { createClient } from "redis";

const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const STREAM = process.env.STREAM || "phx:in:chat";
const GROUP = process.env.GROUP || "chat";
const CONSUMER = process.env.CONSUMER || `${os.hostname()}-${process.pid}`;
const CLAIM_IDLE_MS = Number(process.env.CLAIM_IDLE_MS || 5000);
const MAX_BODY = 2000;
const KEEP = 1000; // messages kept per topic

const log = (...args) => console.log(`[${CONSUMER}]`, ...args);

function parse(text, fallback) {
  try {
    return JSON.parse(text);
  } catch {
    return fallback;
  }
}

async function handle(r, id, entry) {
  const { topic, event, reply_to: replyTo, reply_ref: replyRef } = entry;
  const payload = parse(entry.payload, null);
  const claims = parse(entry.claims || "{}", {});
  const body = payload && typeof payload === "object" ? payload.body : undefined;
  let answer;
  if (event !== "new_msg" || typeof body !== "string" || !body.trim()) {
    answer = { status: "error", response: { reason: "a new_msg needs a body" } };
  } else if (body.length > MAX_BODY) {
    answer = { status: "error", response: { reason: "message too long" } };
  } else {
    const message = { id, body: body.trim(), user: claims.sub || payload.user || "anonymous" };
    const key = `chat:messages:${topic}`;
    await r.rPush(key, JSON.stringify(message));
    await r.lTrim(key, -KEEP, -1);
    answer = {
      status: "ok",
      response: { id, worker: CONSUMER },
      broadcasts: [{ topic, event: "new_msg", payload: message }],
    };
  }
  // No reply address when the rule answers on store.
  if (replyTo) await r.publish(replyTo, JSON.stringify({ ref: replyRef, ...answer }));
  log("handled", id, answer.status);
}

async function main() {
  const r = createClient({ url: REDIS_URL });
  r.on("error", (e) => log("redis error:", e.message));
  await r.connect();
  try {
    await r.xGroupCreate(STREAM, GROUP, "0", { MKSTREAM: true });
  } catch (e) {
    if (!String(e.message).includes("BUSYGROUP")) throw e;
  }
  log("consuming", STREAM, "as", GROUP);
  let nextClaim = 0;
  for (;;) {
    const batches = [];
    if (Date.now() >= nextClaim) {
      // Entries whose worker died before XACK.
      const claimed = await r.xAutoClaim(STREAM, GROUP, CONSUMER, CLAIM_IDLE_MS, "0-0", { COUNT: 100 });
      batches.push(claimed.messages);
      nextClaim = Date.now() + CLAIM_IDLE_MS / 2;
    }
    const read = await r.xReadGroup(GROUP, CONSUMER, { key: STREAM, id: ">" }, { COUNT: 100, BLOCK: 500 });
    for (const s of read || []) batches.push(s.messages);
    for (const entries of batches) {
      for (const m of entries) {
        if (m === null) continue; // trimmed from the stream meanwhile
        await handle(r, m.id, m.message);
        await r.xAck(STREAM, GROUP, m.id);
      }
    }
  }
}

main().catch((e) => {
  log("fatal:", e);
  process.exit(1);
});
