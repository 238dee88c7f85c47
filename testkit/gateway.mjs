// The gateway binary (startGateway) and the seeds example (startSeeds): where
// their binaries are, the environment they get, readiness on the port they
// report, restart() on the same port.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { HOST, httpStatus, spawnProcess, until } from "./process.mjs";
import { toml } from "./toml.mjs";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

// Relative paths are taken from the current directory (compat/ or e2e/ under `npm test`).
export const GATEWAY_BIN = path.resolve(process.env.GATEWAY_BIN || path.join(REPO_ROOT, "target/debug/gateway"));
export const SEEDS_BIN = path.resolve(
  process.env.GATEWAY_SEEDS_BIN || path.join(REPO_ROOT, "target/debug/examples/seeds"),
);

/** A gateway (or seeds) process; restart() brings it back on the same port. */
class Server {
  constructor(scope, { name, bin, args, env, cwd, listening, logFile }) {
    Object.assign(this, { scope, name, bin, args, env, cwd, listening, logFile });
    this.port = 0;
    this.proc = null;
    this.lpId = null;
  }

  get pid() {
    return this.proc?.pid;
  }

  get addr() {
    return `${HOST}:${this.port}`;
  }

  get httpUrl() {
    return `http://${HOST}:${this.port}`;
  }

  /** The endpoint to give phoenix.js' Socket (it appends /websocket). */
  get socketUrl() {
    return `ws://${HOST}:${this.port}/socket`;
  }

  /** Spawns on `port` (0: the process picks one and logs it) and waits for
   * the listening line, then for GET /readyz 200. */
  async spawn(port) {
    if (!fs.existsSync(this.bin)) {
      throw new Error(`${this.name}: no binary at ${this.bin}; build it (cargo build -p gateway --example seeds --bin gateway) or set GATEWAY_BIN / GATEWAY_SEEDS_BIN`);
    }
    this.proc = spawnProcess(this.scope, this.name, this.bin, this.args, {
      cwd: this.cwd,
      env: { ...this.env, PORT: String(port) },
      logFile: this.logFile,
    });
    const m = await this.proc.waitForLog(this.listening);
    this.port = Number(m.groups.port);
    this.lpId = m.groups.lp ?? null;
    await until(`${this.name} GET /readyz`, async () => (await httpStatus(`${this.httpUrl}/readyz`)) === 200, {
      proc: this.proc,
    });
    return this;
  }

  /** Stops the process with `signal` (SIGKILL: like a crash; SIGINT/SIGTERM:
   * its graceful shutdown, SIGKILL after 3 s) and resolves with its exit. */
  kill(signal = "SIGKILL") {
    return this.proc.stop({ signal });
  }

  /** Starts it again on the same port (after kill()). */
  restart() {
    if (this.proc?.running) throw new Error(`${this.name}: restart() while it is still running`);
    return this.scope.run(() =>
      until(`${this.name} restart on :${this.port}`, () =>
        this.spawn(this.port).catch((err) => {
          if (err.addrInUse) return false; // the old listener is still going away
          throw err;
        }),
      ),
    );
  }
}

/** The environment of a gateway process: the caller's, without what would
 * change its config (GATEWAY_*, REDIS_URL; GATEWAY_LOG passes through). */
function gatewayEnv(extra) {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if ((k.startsWith("GATEWAY_") && k !== "GATEWAY_LOG") || k === "REDIS_URL" || k === "PORT") delete env[k];
  }
  return { ...env, GATEWAY_LOG_FORMAT: "human", NO_COLOR: "1", ...extra };
}

/**
 * The gateway binary (GATEWAY_BIN) on a port of its own choosing (or on
 * `port`, one freePort() gave, when a balancer must know it before the pod
 * starts), ready once /readyz answers 200. `config`: a path (from the
 * repository root) or an object written as TOML into the scope's directory.
 * `env` adds variables (REDIS_URL, GATEWAY_LONGPOLL_SECRET, ...).
 */
export function startGateway(scope, { name = "gateway", config = "config/example.toml", env = {}, port = 0 } = {}) {
  return scope.run(async () => {
    let configFile = config;
    if (typeof config !== "string") {
      configFile = path.join(scope.mkdir(name), "gateway.toml");
      fs.writeFileSync(configFile, toml(config));
    }
    const server = new Server(scope, {
      name,
      bin: GATEWAY_BIN,
      args: ["--config", configFile],
      cwd: REPO_ROOT,
      env: gatewayEnv(env),
      listening: /gateway listening addr=\S+:(?<port>\d+).*?longpoll_pod="?(?<lp>[0-9a-f]+)/,
      logFile: scope.logFile(name),
    });
    return server.spawn(port);
  });
}

/**
 * The seeds example (GATEWAY_SEEDS_BIN) with RECURRING_MS = `recurringMs`;
 * broadcast() posts to its /broadcast route. RUST_LOG passes through.
 */
export function startSeeds(scope, { name = "seeds", recurringMs = 100, env = {} } = {}) {
  return scope.run(async () => {
    const server = new Server(scope, {
      name,
      bin: SEEDS_BIN,
      args: [],
      env: {
        ...process.env,
        RECURRING_MS: String(recurringMs),
        RUST_LOG: process.env.RUST_LOG || "info,gateway=info",
        NO_COLOR: "1",
        ...env,
      },
      listening: /seeds listening on http:\/\/\S+:(?<port>\d+)\//,
      logFile: scope.logFile(name),
    });
    /** POST /broadcast; resolves with the JSON answer. */
    server.broadcast = async (topic, event, payload = {}) => {
      const res = await fetch(`${server.httpUrl}/broadcast`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ topic, event, payload }),
        signal: AbortSignal.timeout(5000),
      });
      const body = await res.json();
      if (res.status !== 200) throw new Error(`POST /broadcast -> ${res.status} ${JSON.stringify(body)}`);
      return body;
    };
    return server.spawn(0);
  });
}
