// Starts the gateway `seeds` example as a child process on a free port, waits
// until GET /healthz answers, and stops it again.
//
// The binary comes from GATEWAY_SEEDS_BIN, defaulting to
// ../target/debug/examples/seeds relative to compat/.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";

const COMPAT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

export const SEEDS_BIN = path.resolve(
  COMPAT_DIR,
  process.env.GATEWAY_SEEDS_BIN || "../target/debug/examples/seeds",
);

const HOST = "127.0.0.1";
const HEALTH_ATTEMPTS = 250; // x HEALTH_RETRY_MS (plus request time): ~10 s at most
const HEALTH_RETRY_MS = 40;
const START_ATTEMPTS = 5; // port races when a free port is taken before the child binds
const OUTPUT_LIMIT = 64 * 1024;

/** A port nobody listens on right now: bind port 0, read it, close. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

class Gateway {
  constructor({ port, recurringMs, env }) {
    this.port = port;
    this.recurringMs = recurringMs;
    this.extraEnv = env;
    this.child = null;
    this.exited = null; // Promise<{code, signal}> of the current child
    this.output = "";
    this.generation = 0;
  }

  get httpUrl() {
    return `http://${HOST}:${this.port}`;
  }

  /** The endpoint to give phoenix.js' Socket (it appends /websocket). */
  get socketUrl() {
    return `ws://${HOST}:${this.port}/socket`;
  }

  get pid() {
    return this.child?.pid;
  }

  /** Spawns the binary on this.port and resolves once /healthz answers 200. */
  async spawnAndWait() {
    if (!existsSync(SEEDS_BIN)) {
      throw new Error(
        `gateway binary not found at ${SEEDS_BIN}; run \`cargo build -p gateway --example seeds\` ` +
          "or set GATEWAY_SEEDS_BIN",
      );
    }
    this.generation += 1;
    const gen = this.generation;
    const child = spawn(SEEDS_BIN, [], {
      env: {
        ...process.env,
        PORT: String(this.port),
        RECURRING_MS: String(this.recurringMs),
        RUST_LOG: process.env.RUST_LOG || "info,gateway=info",
        ...this.extraEnv,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    const append = (chunk) => {
      this.output += `[gen ${gen}] ${chunk}`;
      if (this.output.length > OUTPUT_LIMIT) this.output = this.output.slice(-OUTPUT_LIMIT);
    };
    child.stdout.on("data", append);
    child.stderr.on("data", append);
    let exitInfo = null;
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        exitInfo = { code, signal };
        resolve(exitInfo);
      });
      child.on("error", (err) => {
        exitInfo = { code: null, signal: null, error: err };
        resolve(exitInfo);
      });
    });

    for (let attempt = 1; attempt <= HEALTH_ATTEMPTS; attempt++) {
      if (exitInfo) {
        const err = new Error(
          `gateway exited before it was healthy (${JSON.stringify(exitInfo)}) on port ${this.port}\n${this.output}`,
        );
        err.exitedEarly = true;
        err.addrInUse = /in use|AddrInUse/i.test(this.output);
        throw err;
      }
      try {
        const res = await fetch(`${this.httpUrl}/healthz`, { signal: AbortSignal.timeout(1000) });
        const body = await res.text();
        if (res.status === 200) return body;
      } catch {
        // not listening yet
      }
      // Retry soon, or at once if the child exits meanwhile.
      await Promise.race([delay(HEALTH_RETRY_MS), this.exited]);
    }
    await this.kill();
    throw new Error(`gateway on port ${this.port} not healthy after ${HEALTH_ATTEMPTS} attempts\n${this.output}`);
  }

  /**
   * Stops the process with `signal` (SIGKILL: abrupt, like a crash; SIGINT:
   * the example's graceful shutdown) and resolves with its exit status.
   */
  async kill(signal = "SIGKILL", graceMs = 5000) {
    const child = this.child;
    if (!child) return null;
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    let info;
    if (signal === "SIGKILL") {
      info = await this.exited;
    } else {
      // A graceful stop gets a bounded grace period, then SIGKILL.
      const grace = delay(graceMs, "grace expired", { ref: false });
      info = await Promise.race([this.exited, grace]);
      if (info === "grace expired") {
        child.kill("SIGKILL");
        info = { ...(await this.exited), graceExpired: true };
      }
    }
    if (this.child === child) this.child = null;
    return info;
  }

  /** Starts the gateway again on the same port (after kill()). */
  async restart() {
    if (this.child) throw new Error("restart() while the gateway is still running");
    let lastErr;
    for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
      try {
        return await this.spawnAndWait();
      } catch (err) {
        lastErr = err;
        if (!err.addrInUse) throw err;
        await delay(100 * attempt); // the old listener is still going away
      }
    }
    throw lastErr;
  }

  /** Server-side broadcast through POST /broadcast; resolves with the JSON answer. */
  async broadcast(topic, event, payload = {}) {
    const res = await fetch(`${this.httpUrl}/broadcast`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ topic, event, payload }),
      signal: AbortSignal.timeout(5000),
    });
    const body = await res.json();
    if (res.status !== 200) {
      throw new Error(`POST /broadcast -> ${res.status} ${JSON.stringify(body)}`);
    }
    return body;
  }
}

/**
 * Starts a gateway on a free port and resolves once it is healthy.
 * @param {{recurringMs?: number, env?: object}} [opts]
 */
export async function startGateway({ recurringMs = 100, env = {} } = {}) {
  let lastErr;
  for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
    const gw = new Gateway({ port: await freePort(), recurringMs, env });
    try {
      await gw.spawnAndWait();
      return gw;
    } catch (err) {
      lastErr = err;
      await gw.kill();
      if (!err.addrInUse) throw err; // only a lost port race is worth another try
    }
  }
  throw lastErr;
}
