// Real processes for the multi-pod tests: `redis-server` on a free port and
// `gateway` binaries (GATEWAY_BIN, default ../target/debug/gateway relative to
// compat/) with a temporary config that enables presence. Every wait is
// bounded; every process is killed by `stop()` or at exit.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";
import { freePort } from "./gateway.js";

const COMPAT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const GATEWAY_BIN = path.resolve(COMPAT_DIR, process.env.GATEWAY_BIN || "../target/debug/gateway");
const HOST = "127.0.0.1";
const START_MS = 15000;
const OUTPUT_LIMIT = 64 * 1024;

const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** A child process whose output is kept (the tail) for failure messages. */
function launch(cmd, args, env = {}) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const proc = { child, output: "", exited: null };
  const append = (chunk) => {
    proc.output = (proc.output + chunk).slice(-OUTPUT_LIMIT);
  };
  child.stdout.on("data", append);
  child.stderr.on("data", append);
  proc.exited = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
    child.on("error", (error) => {
      children.delete(child);
      resolve({ error });
    });
  });
  return proc;
}

async function killProc(proc, signal = "SIGKILL") {
  if (!proc) return;
  if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill(signal);
  await proc.exited;
}

/** Sends PING; true on +PONG. */
function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, HOST);
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.on("error", () => done(false));
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => done(d.toString().startsWith("+PONG")));
  });
}

/** Runs one Redis command (inline protocol) and resolves with the raw reply. */
export function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, HOST);
    s.setTimeout(5000, () => {
      s.destroy();
      reject(new Error(`redis ${args[0]} timed out`));
    });
    s.on("error", reject);
    s.on("connect", () => {
      const parts = [`*${args.length}`, ...args.flatMap((a) => [`$${Buffer.byteLength(String(a))}`, String(a)])];
      s.write(parts.join("\r\n") + "\r\n");
    });
    s.on("data", (d) => {
      s.destroy();
      resolve(d.toString());
    });
  });
}

/** A redis-server on a free port with no persistence. */
export class Redis {
  constructor() {
    this.port = null;
    this.proc = null;
  }

  get url() {
    return `redis://${HOST}:${this.port}/0`;
  }

  async spawn() {
    this.proc = launch("redis-server", ["--port", String(this.port), "--bind", HOST, "--save", "", "--appendonly", "no"]);
    const deadline = Date.now() + START_MS;
    while (Date.now() < deadline) {
      if (this.proc.child.exitCode !== null) return false;
      if (await ping(this.port)) return true;
      await delay(20);
    }
    throw new Error(`redis-server on ${this.port} did not answer\n${this.proc.output}`);
  }

  /** Starts on a free port (another try if the port was taken meanwhile). */
  async start() {
    for (let i = 0; i < 5; i++) {
      this.port = await freePort();
      if (await this.spawn()) return this;
    }
    throw new Error(`redis-server did not start\n${this.proc?.output}`);
  }

  /** SIGKILL, then a fresh, empty server on the same port. */
  async restart() {
    await killProc(this.proc);
    const deadline = Date.now() + START_MS;
    while (!(await this.spawn())) {
      if (Date.now() > deadline) throw new Error(`redis-server could not restart\n${this.proc.output}`);
      await delay(100);
    }
  }

  stop() {
    return killProc(this.proc);
  }
}

function podConfig({ redisUrl, prefix, podTimeoutMs }) {
  return `
[redis]
url = "${redisUrl}"
prefix = "${prefix}"
linger_ms = 200

[presence]
batch_ms = 20
pod_timeout_ms = ${podTimeoutMs}

[[socket]]
path = "/socket"
[socket.longpoll]
enabled = true

[[channel]]
pattern = "room:*"
events = ["new_msg"]
[channel.presence]
key_param = "user"
meta_params = ["tab", "status"]
update_event = "presence_update"
`;
}

/** A gateway process with the Redis broker and presence on room:*. */
export class Pod {
  constructor(opts) {
    this.opts = opts;
    this.port = null;
    this.proc = null;
    this.dir = mkdtempSync(path.join(os.tmpdir(), "gateway-compat-"));
  }

  /** The endpoint to give phoenix.js' Socket (it appends /websocket). */
  get socketUrl() {
    return `ws://${HOST}:${this.port}/socket`;
  }

  get output() {
    return this.proc?.output ?? "";
  }

  async start() {
    if (!existsSync(GATEWAY_BIN)) {
      throw new Error(`gateway binary not found at ${GATEWAY_BIN}; run \`cargo build -p gateway\` or set GATEWAY_BIN`);
    }
    const config = path.join(this.dir, "gateway.toml");
    writeFileSync(config, podConfig(this.opts));
    for (let attempt = 0; attempt < 5; attempt++) {
      this.port = await freePort();
      this.proc = launch(GATEWAY_BIN, ["--config", config], {
        PORT: String(this.port),
        REDIS_URL: "",
        GATEWAY_CONFIG: "",
        NO_COLOR: "1",
      });
      const deadline = Date.now() + START_MS;
      while (Date.now() < deadline && this.proc.child.exitCode === null) {
        try {
          const res = await fetch(`http://${HOST}:${this.port}/healthz`, { signal: AbortSignal.timeout(1000) });
          await res.text();
          if (res.status === 200 && this.proc.child.exitCode === null) return this;
        } catch {
          // not listening yet
        }
        await delay(20);
      }
      await killProc(this.proc);
      if (!/in use|AddrInUse/i.test(this.proc.output)) break;
    }
    throw new Error(`gateway did not start on ${this.port}\n${this.output}`);
  }

  /** SIGKILL by default: a crash with no cleanup. */
  async kill(signal = "SIGKILL") {
    await killProc(this.proc, signal);
  }

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A Redis and `n` pods sharing a fresh prefix. */
export async function startCluster(n, { podTimeoutMs = 1500 } = {}) {
  const redis = await new Redis().start();
  const prefix = `compat-${process.pid}-${Date.now()}:`;
  const pods = await Promise.all(
    Array.from({ length: n }, () => new Pod({ redisUrl: redis.url, prefix, podTimeoutMs }).start()),
  );
  return {
    redis,
    pods,
    prefix,
    output: () => pods.map((p, i) => `--- pod ${i} ---\n${p.output}`).join("\n"),
    stop: async () => {
      await Promise.all(pods.map((p) => p.stop()));
      await redis.stop();
    },
  };
}
