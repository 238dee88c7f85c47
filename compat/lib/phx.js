// Helpers around the unmodified phoenix.js client: a WebSocket transport that
// records raw frames, promise wrappers for joins and pushes, and an event log
// that tests wait on. Every wait is bounded by a timeout; nothing sleeps.

import { Socket } from "phoenix";
import WebSocket from "ws";

export { Socket };

/** Default bound for any single wait, in ms. */
export const WAIT_MS = 5000;

/** Resolves/rejects like `promise`, or rejects after `ms` naming `label`. */
export function withTimeout(promise, ms, label) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * An append-only log of things that happened, with bounded waits for an
 * entry matching a predicate (entries already logged count, so there is no
 * race between an event and starting to wait for it).
 */
export class EventLog {
  constructor(name = "event") {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    const entry = { ...item, seq: this.items.length, at: performance.now() };
    this.items.push(entry);
    for (const w of [...this.waiters]) {
      if (entry.seq >= w.from && w.pred(entry)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(entry);
      }
    }
    return entry;
  }

  /** Entries matching `pred` (from index `from`). */
  filter(pred, from = 0) {
    return this.items.slice(from).filter(pred);
  }

  /** Current length; pass it as `from` to wait only for later entries. */
  get mark() {
    return this.items.length;
  }

  /** Waits for the first entry at index >= from that satisfies pred. */
  waitFor(pred, { from = 0, timeout = WAIT_MS, label = `${this.name} matching ${pred}` } = {}) {
    const found = this.items.slice(from).find(pred);
    if (found) return Promise.resolve(found);
    let waiter;
    const p = new Promise((resolve) => {
      waiter = { pred, from, resolve };
      this.waiters.push(waiter);
    });
    return withTimeout(p, timeout, label).finally(() => {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
    });
  }
}

/**
 * Normalises a raw text frame to {join_ref, ref, topic, event, payload, shape}.
 * V2 frames are 5-element arrays; V1 frames are objects.
 */
export function decodeFrame(data) {
  if (typeof data !== "string") return { shape: "binary", raw: data };
  const v = JSON.parse(data);
  if (Array.isArray(v)) {
    const [join_ref, ref, topic, event, payload] = v;
    return { shape: "array", length: v.length, join_ref, ref, topic, event, payload, raw: data };
  }
  return { shape: "object", keys: Object.keys(v).sort(), ...v, raw: data };
}

/**
 * A WebSocket class (from `ws`) for phoenix.js' `transport` option that
 * records every frame in `frames` (dir "in"/"out") before phoenix sees it.
 */
export function recordingTransport(frames) {
  return class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      frames.push({ dir: "url", url });
      this.addEventListener("message", (ev) => {
        let frame;
        try {
          frame = decodeFrame(ev.data);
        } catch (err) {
          frame = { shape: "unparseable", raw: ev.data, error: String(err) };
        }
        frames.push({ dir: "in", ...frame });
      });
      this.addEventListener("close", (ev) => frames.push({ dir: "close", code: ev.code, reason: ev.reason }));
    }

    send(data) {
      frames.push({ dir: "out", ...decodeFrame(data) });
      super.send(data);
    }
  };
}

/**
 * Creates a phoenix.js Socket against the gateway, records its frames and
 * socket-level events, connects it, and waits for the first open.
 * Registers cleanup with `t.after` when a test context is given.
 */
export async function openSocket(gw, opts = {}, t = null) {
  const frames = new EventLog("frame");
  const events = new EventLog("socket event");
  const socket = new Socket(gw.socketUrl, { transport: recordingTransport(frames), ...opts });
  socket.onOpen(() => events.push({ type: "open" }));
  socket.onClose((ev) => events.push({ type: "close", code: ev?.code }));
  socket.onError((err) => events.push({ type: "error", error: err?.message ?? String(err) }));
  const client = { socket, frames, events, close: () => closeSocket(socket) };
  if (t) t.after(() => client.close());
  socket.connect();
  await events.waitFor((e) => e.type === "open", { label: `socket open to ${gw.socketUrl}` });
  return client;
}

/** Stops every timer the client holds for this socket and disconnects it. */
export function closeSocket(socket) {
  for (const ch of [...socket.channels]) {
    ch.rejoinTimer.reset();
    ch.joinPush.cancelTimeout();
    for (const p of ch.pushBuffer) p.cancelTimeout();
  }
  socket.reconnectTimer.reset();
  return withTimeout(new Promise((resolve) => socket.disconnect(resolve)), WAIT_MS, "socket disconnect").catch(
    () => {},
  );
}

/**
 * Wraps a phoenix Push (join or push) so that its first outcome resolves a
 * promise with {status, response}. Status is "ok", "error", "timeout" or any
 * status the server replied with.
 */
export function outcome(push, label, statuses = ["ok", "error", "timeout"], timeout = 15000) {
  const p = new Promise((resolve) => {
    for (const status of statuses) push.receive(status, (response) => resolve({ status, response }));
  });
  return withTimeout(p, timeout, label);
}

/** Joins `channel`; resolves with the first {status, response}. */
export function join(channel, timeout) {
  return outcome(channel.join(timeout), `join ${channel.topic}`);
}

/** Pushes `event` and resolves with the first {status, response}. */
export function push(channel, event, payload = {}, timeout) {
  return outcome(channel.push(event, payload, timeout), `reply to ${event} on ${channel.topic}`);
}

/**
 * Records the given events (and phx_error/phx_close via onError/onClose) of a
 * channel in an EventLog.
 */
export function recordChannel(channel, events = []) {
  const log = new EventLog(`${channel.topic} event`);
  for (const event of events) {
    channel.on(event, (payload, ref, joinRef) => log.push({ event, payload, ref, joinRef }));
  }
  channel.onError((reason) => log.push({ event: "onError", payload: reason, state: channel.state }));
  channel.onClose((reason) => log.push({ event: "onClose", payload: reason, state: channel.state }));
  // joinPush hooks survive rejoins, so every join outcome is logged here.
  for (const status of ["ok", "error", "timeout"]) {
    channel.joinPush.receive(status, (response) => log.push({ event: `join:${status}`, payload: response }));
  }
  return log;
}

/** The full list, keyed and sorted by key: clients list keys in the order
 * their state and diffs arrived, which differs between clients. */
export function byKey(presence) {
  return presence
    .list((key, presence) => [key, presence])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}
