// The processes of the JavaScript suites (compat/ and e2e/), in one place:
// free ports, a temporary directory per scope, child processes whose output
// goes to a log file, readiness waits bounded by a deadline, and teardown
// (SIGTERM, then SIGKILL) that dumps every log to stderr when a test failed.
// On top: redis-server, the gateway binary (config from a file or a JS
// object), the seeds example, nginx round-robin in front of pods, a cluster
// of all three, and Chromium through playwright-core (passed in by the
// caller). Node built-ins only; imported by relative path. See README.md.

import { execFile, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, afterEach } from "node:test";
import { fileURLToPath } from "node:url";

export const HOST = "127.0.0.1";
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

// Relative paths are taken from the current directory (compat/ or e2e/ under `npm test`).
export const GATEWAY_BIN = path.resolve(process.env.GATEWAY_BIN || path.join(REPO_ROOT, "target/debug/gateway"));
export const SEEDS_BIN = path.resolve(
  process.env.GATEWAY_SEEDS_BIN || path.join(REPO_ROOT, "target/debug/examples/seeds"),
);
const NGINX_BIN = process.env.NGINX_BIN || "/usr/sbin/nginx";
const REDIS_SERVER_BIN = process.env.REDIS_SERVER_BIN || "redis-server";
const REDIS_CLI_BIN = process.env.REDIS_CLI_BIN || "redis-cli";
const CHROMIUM_PATH = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

/** What every readiness wait gets at most: generous for 2 busy cores. */
export const START_MS = 20_000;
/** The polling interval of the bounded waits. */
const POLL_MS = 25;
/** SIGTERM at teardown, then SIGKILL after this (a gateway with
 * config/example.toml drains for 2 s, longer with long-poll sessions open). */
const STOP_GRACE_MS = 3_000;
/** Bytes of each log printed when a test failed (the files are kept whole). */
const DUMP_BYTES = 64 * 1024;
/** The long-poll secret every pod of a cluster shares (GATEWAY_LONGPOLL_SECRET). */
export const LONGPOLL_SECRET = "cluster-test-longpoll-secret-0123456789";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// eslint-disable-next-line no-control-regex
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, "");
const ADDR_IN_USE = /address already in use|address in use|AddrInUse|EADDRINUSE/i;

/** Resolves like `promise`, or rejects after `ms` naming `what`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

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

/**
 * Polls `check()` until it returns something truthy, which it resolves with.
 * Fails after `timeoutMs`, when `check()` throws, or at once when `proc`
 * exits (with its log; `addrInUse` says whether its port was taken).
 */
export async function until(what, check, { timeoutMs = START_MS, proc = null } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc && !proc.running) {
      const err = new Error(`${what}: ${proc.name} exited (${JSON.stringify(proc.exitInfo)})\n${proc.tail()}`);
      err.addrInUse = ADDR_IN_USE.test(proc.log());
      throw err;
    }
    const value = await check();
    if (value) return value;
    if (Date.now() >= deadline) {
      throw new Error(`${what}: not within ${timeoutMs} ms${proc ? `\n${proc.tail()}` : ""}`);
    }
    await (proc ? Promise.race([sleep(POLL_MS), proc.exited]) : sleep(POLL_MS));
  }
}

/** The status of GET `url`, or null when nothing answers. */
export async function httpStatus(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await res.text();
    return res.status;
  } catch {
    return null;
  }
}

/** A small TOML writer for gateway configs: tables, arrays of tables,
 * strings, numbers, booleans and arrays of those. */
export function toml(object) {
  const isTable = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const isTableArray = (v) => Array.isArray(v) && v.length > 0 && v.every(isTable);
  const key = (k) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k));
  const value = (v) => {
    if (typeof v === "string") return JSON.stringify(v).replace(/\x7f/g, "\\u007f");
    if (typeof v === "boolean") return String(v);
    if (typeof v === "number" && Number.isFinite(v)) return String(v);
    if (Array.isArray(v)) return `[${v.map(value).join(", ")}]`;
    if (isTable(v)) return `{ ${entries(v).map(([k, x]) => `${key(k)} = ${value(x)}`).join(", ")} }`;
    throw new TypeError(`toml: cannot write ${String(v)}`);
  };
  const entries = (table) => Object.entries(table).filter(([, v]) => v !== undefined);
  const lines = [];
  const write = (table, names) => {
    for (const [k, v] of entries(table)) if (!isTable(v) && !isTableArray(v)) lines.push(`${key(k)} = ${value(v)}`);
    for (const [k, v] of entries(table)) {
      const name = [...names, key(k)];
      if (isTable(v)) {
        lines.push("", `[${name.join(".")}]`);
        write(v, name);
      } else if (isTableArray(v)) {
        for (const item of v) {
          lines.push("", `[[${name.join(".")}]]`);
          write(item, name);
        }
      }
    }
  };
  write(object, []);
  return `${lines.join("\n").trim()}\n`;
}

// ---------------------------------------------------------------------------
// Scopes: what one test (or one file) started, stopped and cleaned up together

/**
 * Owns a temporary directory, the processes started in it and cleanups.
 * close() runs the cleanups (last first); when the scope failed it then
 * prints every log to stderr and keeps the directory, else removes it.
 */
export class Scope {
  constructor(name = "test") {
    this.name = name;
    this.failed = false;
    this.cleanups = [];
    this.failureHooks = [];
    this.logs = new Map(); // file -> label
    this.root = null;
  }

  /** The scope's temporary directory (made on first use). */
  get dir() {
    if (!this.root) {
      const safe = this.name.replace(/[^A-Za-z0-9_-]+/g, "-").slice(0, 40);
      this.root = fs.mkdtempSync(path.join(os.tmpdir(), `gateway-test-${safe}-`));
      fs.chmodSync(this.root, 0o755); // nginx workers (nobody, under root) look inside
    }
    return this.root;
  }

  /** A new directory `name` in the scope's directory. */
  mkdir(name, mode = 0o755) {
    const dir = path.join(this.dir, name);
    fs.mkdirSync(dir, { recursive: true, mode });
    fs.chmodSync(dir, mode);
    return dir;
  }

  /** A log file path in the scope, unique per name, printed on failure. */
  logFile(name) {
    let file = path.join(this.dir, `${name}.log`);
    for (let i = 2; this.logs.has(file); i++) file = path.join(this.dir, `${name}-${i}.log`);
    this.logs.set(file, name);
    return file;
  }

  /** Runs `fn` at close(), before what was deferred earlier. */
  defer(fn) {
    this.cleanups.push(fn);
  }

  /** Runs `fn` at close() when the scope failed, before any cleanup
   * (screenshots of pages that are still open, say). */
  onFailure(fn) {
    this.failureHooks.push(fn);
  }

  fail() {
    this.failed = true;
  }

  /** `fn(this)`, marking the scope failed when it throws. */
  async run(fn) {
    try {
      return await fn(this);
    } catch (err) {
      this.fail();
      throw err;
    }
  }

  /** `fn` wrapped by run(), for before() hooks that do more than start processes. */
  guard(fn) {
    return (...args) => this.run(() => fn(...args));
  }

  async close({ failed = false } = {}) {
    if (failed) this.fail();
    const errors = [];
    const attempt = async (fn) => {
      try {
        await fn();
      } catch (err) {
        errors.push(err);
      }
    };
    if (this.failed) for (const fn of this.failureHooks) await attempt(fn);
    while (this.cleanups.length) {
      // Processes started one after another (a cluster) stop together.
      const batch = [this.cleanups.pop()];
      while (batch[0].proc && this.cleanups.at(-1)?.proc) batch.push(this.cleanups.pop());
      await Promise.all(batch.map(attempt));
    }
    if (this.failed) this.dump();
    else if (this.root) fs.rmSync(this.root, { recursive: true, force: true });
    if (errors.length) throw new AggregateError(errors, `${this.name}: teardown failed: ${errors[0].message}`);
  }

  /** Every log of the scope to stderr (the tail of each, ANSI colours removed). */
  dump() {
    const out = [`===== ${this.name} failed; logs and files kept in ${this.root ?? "(no directory)"} =====`];
    for (const [file, label] of this.logs) {
      let text = "";
      try {
        const size = fs.statSync(file).size;
        const fd = fs.openSync(file, "r");
        const buf = Buffer.alloc(Math.min(size, DUMP_BYTES));
        fs.readSync(fd, buf, 0, buf.length, size - buf.length);
        fs.closeSync(fd);
        text = (size > buf.length ? `[... first ${size - buf.length} bytes in the file ...]\n` : "") + buf.toString();
      } catch (err) {
        text = `(no log: ${err.code ?? err.message})\n`;
      }
      out.push(`----- ${label}: ${file} -----`, stripAnsi(text).trimEnd());
    }
    out.push(`===== end of ${this.name} logs =====`, "");
    process.stderr.write(out.join("\n"));
  }
}

/**
 * A Scope for the tests of one file (call at top level) or one describe():
 * a failing test marks it failed; it closes in an after() hook.
 */
export function suiteScope(name = path.basename(process.argv[1] || "suite")) {
  const scope = new Scope(name);
  afterEach((t) => {
    if (t.passed === false) scope.fail();
  });
  after(() => scope.close());
  return scope;
}

/** A Scope for one test: it closes after the test, failed if the test did. */
export function testScope(t, name = t.name) {
  const scope = new Scope(name);
  t.after(() => scope.close({ failed: t.passed === false }));
  return scope;
}

// ---------------------------------------------------------------------------
// Processes

const live = new Set();
let safetyNet = false;

/** SIGKILL whatever is still running when this process ends (a test runner
 * interrupted, an after() hook that never ran). */
function installSafetyNet() {
  if (safetyNet) return;
  safetyNet = true;
  const killAll = () => {
    for (const proc of live) proc.signal("SIGKILL");
  };
  process.on("exit", killAll);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
    process.once(sig, () => {
      killAll();
      // Re-raise unless someone else (the test runner) handles the signal.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}

/** A child process in its own process group, stdout and stderr in a log file. */
export class Proc {
  constructor(name, child, logFile, offset, graceMs) {
    this.name = name;
    this.child = child;
    this.logFile = logFile;
    this.offset = offset; // where this run's output starts in the log file
    this.graceMs = graceMs;
    this.exitInfo = null;
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => resolve((this.exitInfo = { code, signal })));
      child.on("error", (error) => resolve((this.exitInfo = { error: error.message })));
    }).finally(() => live.delete(this));
    live.add(this);
  }

  get pid() {
    return this.child.pid;
  }

  get running() {
    return this.exitInfo === null;
  }

  /** What this run printed so far. */
  log() {
    try {
      const fd = fs.openSync(this.logFile, "r");
      try {
        const size = fs.fstatSync(fd).size;
        const buf = Buffer.alloc(Math.max(0, size - this.offset));
        fs.readSync(fd, buf, 0, buf.length, this.offset);
        return stripAnsi(buf.toString());
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return "";
    }
  }

  /** The last lines of log(), for error messages. */
  tail(bytes = 4000) {
    const log = this.log();
    return `----- ${this.name} (${this.logFile}) -----\n${log.length > bytes ? `...${log.slice(-bytes)}` : log}`;
  }

  /** Resolves with the first match of `re` in this run's output. */
  waitForLog(re, { timeoutMs = START_MS } = {}) {
    return until(`${this.name}: log line ${re}`, () => this.log().match(re), { timeoutMs, proc: this });
  }

  /** Sends `sig` to the process group; false if it is gone. */
  signal(sig) {
    if (!this.running) return false;
    try {
      process.kill(-this.child.pid, sig);
      return true;
    } catch {
      try {
        return this.child.kill(sig);
      } catch {
        return false;
      }
    }
  }

  /**
   * Stops the process with `signal` and resolves with its exit status; when
   * it is still running after `graceMs`, SIGKILL (and `graceExpired: true`).
   */
  async stop({ signal = "SIGTERM", graceMs = this.graceMs } = {}) {
    if (!this.running) return this.exitInfo;
    this.signal(signal);
    if (signal !== "SIGKILL") {
      let timer;
      const expired = await Promise.race([
        this.exited.then(() => false),
        new Promise((resolve) => {
          timer = setTimeout(resolve, graceMs, true);
        }),
      ]);
      clearTimeout(timer);
      if (!expired) return this.exitInfo;
      this.signal("SIGKILL");
      return { ...(await this.exitedWithin(`${this.name} after SIGKILL`)), graceExpired: true };
    }
    return this.exitedWithin(`${this.name} after SIGKILL`);
  }

  exitedWithin(what) {
    return withTimeout(this.exited, 10_000, what);
  }
}

/**
 * Starts `cmd args` with its output appended to `logFile` (default: a new
 * log file of the scope named `name`); the scope stops it at close().
 */
export function spawnProcess(scope, name, cmd, args, { cwd, env = process.env, logFile, graceMs = STOP_GRACE_MS } = {}) {
  installSafetyNet();
  const file = logFile ?? scope.logFile(name);
  const fd = fs.openSync(file, "a");
  let child;
  try {
    const offset = fs.fstatSync(fd).size;
    if (offset > 0) fs.writeSync(fd, `----- ${name} restarted -----\n`);
    child = spawn(cmd, args, { cwd, env, stdio: ["ignore", fd, fd], detached: true });
    const proc = new Proc(name, child, file, offset, graceMs);
    scope.defer(Object.assign(() => proc.stop(), { proc }));
    return proc;
  } finally {
    fs.closeSync(fd);
  }
}

/** `start(port)` on a free port, again on another one while the port was
 * taken meanwhile (the error says so). */
async function onFreePort(start, attempts = 5) {
  for (let i = 1; ; i++) {
    try {
      return await start(await freePort());
    } catch (err) {
      if (!err.addrInUse || i >= attempts) throw err;
    }
  }
}

// ---------------------------------------------------------------------------
// redis-server

function redisPing(port) {
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

/** A redis-server on a free port and its own directory, without persistence. */
export function startRedis(scope, { name = "redis" } = {}) {
  return scope.run(async () => {
    const dir = scope.mkdir(name);
    const logFile = scope.logFile(name);
    const redis = {
      name,
      port: null,
      proc: null,
      get url() {
        return `redis://${HOST}:${this.port}/0`;
      },
      /** `redis-cli args...` against this server; its stdout, trimmed. */
      cli: (...args) => redisCli(redis.port, ...args),
      /** SIGKILL by default: gone at once, with everything it held. */
      kill: (signal = "SIGKILL") => redis.proc.stop({ signal }),
      /** A fresh, empty server on the same port (after kill()). */
      restart: () => until(`${name} restart on :${redis.port}`, () => spawnOn(redis.port).catch(retryIfInUse)),
    };
    const retryIfInUse = (err) => {
      if (err.addrInUse) return false;
      throw err;
    };
    const spawnOn = async (port) => {
      const args = ["--port", String(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", dir];
      redis.port = port;
      redis.proc = spawnProcess(scope, name, REDIS_SERVER_BIN, args, { logFile });
      await until(`${name} PING on :${port}`, () => redisPing(port), { proc: redis.proc });
      return redis;
    };
    return onFreePort(spawnOn);
  });
}

/** `redis-cli -p port args...`, stdout trimmed. */
export function redisCli(port, ...args) {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI_BIN, ["-h", HOST, "-p", String(port), ...args], { timeout: 5000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`redis-cli ${args.join(" ")}: ${err.message} ${stderr}`)) : resolve(stdout.trim()),
    );
  });
}

// ---------------------------------------------------------------------------
// The gateway binary and the seeds example

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
 * The gateway binary (GATEWAY_BIN) on a port of its own choosing, ready once
 * /readyz answers 200. `config`: a path (from the repository root) or an
 * object written as TOML into the scope's directory. `env` adds variables
 * (REDIS_URL, GATEWAY_LONGPOLL_SECRET, ...).
 */
export function startGateway(scope, { name = "gateway", config = "config/example.toml", env = {} } = {}) {
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
    return server.spawn(0);
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

// ---------------------------------------------------------------------------
// nginx round-robin

function nginxConf(dir, upstreams, port, noWsPort) {
  // Timeouts longer than the poll window (10 s) plus the relay timeout
  // (2 s); no buffering so a held GET answers as soon as the pod does.
  const proxy = `
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_read_timeout 30s;
      proxy_send_timeout 30s;
      proxy_buffering off;`;
  return `
worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log stderr info;
events { worker_connections 512; }
http {
  log_format upstream '$upstream_addr $request_method $uri $status';
  access_log ${dir}/access.log upstream;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  client_body_buffer_size 1m;
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
  upstream gateways {
    # Plain round-robin: no ip_hash, no hash, no sticky cookie.
${upstreams.map((addr) => `    server ${addr};`).join("\n")}
  }
  server {
    listen ${HOST}:${port};
    location /socket/websocket {${proxy}
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }
    location / {${proxy}
      proxy_set_header Connection "";
    }
  }
  server {
    listen ${HOST}:${noWsPort};
    # A balancer that refuses WebSocket upgrades.
    location /socket/websocket { return 403; }
    location / {${proxy}
      proxy_set_header Connection "";
    }
  }
}
`;
}

/**
 * nginx (NGINX_BIN) in plain round-robin in front of `upstreams`
 * ("host:port"), on two free ports: `port` passes WebSocket upgrades,
 * `noWsPort` refuses them (403), like a balancer without WebSocket. Its
 * access log records the upstream of every request (requests()).
 */
export function startNginx(scope, { upstreams, name = "nginx" }) {
  return scope.run(async () => {
    if (!fs.existsSync(NGINX_BIN)) {
      throw new Error(`nginx not found at ${NGINX_BIN}; run scripts/setup-test-deps.sh or set NGINX_BIN`);
    }
    // nginx started as root runs its worker as nobody, which writes here.
    const dir = scope.mkdir(name, 0o777);
    scope.mkdir(`${name}/tmp`, 0o777);
    const accessLog = path.join(dir, "access.log");
    const logFile = scope.logFile(name);
    scope.logs.set(accessLog, `${name} access log`);
    const nginx = {
      name,
      port: null,
      noWsPort: null,
      proc: null,
      /** `http://127.0.0.1:port` (WebSocket passes). */
      get httpUrl() {
        return `http://${HOST}:${this.port}`;
      },
      /** phoenix.js endpoint, WebSocket allowed. */
      get socketUrl() {
        return `ws://${HOST}:${this.port}/socket`;
      },
      /** phoenix.js endpoint where WebSocket upgrades are refused. */
      get noWsSocketUrl() {
        return `ws://${HOST}:${this.noWsPort}/socket`;
      },
      /** Requests nginx passed on, {upstream, method, uri, status}, from its
       * access log; `upstream` is the one that answered. */
      requests() {
        let log = "";
        try {
          log = fs.readFileSync(accessLog, "utf8");
        } catch {}
        return log
          .split("\n")
          .map((line) => line.match(/^(.*) (\S+) (\S+) (\d+)$/))
          .filter(Boolean)
          // "a, b" when nginx tried a dead upstream first: the last one answered.
          .map((m) => ({ upstream: m[1].split(",").pop().trim(), method: m[2], uri: m[3], status: Number(m[4]) }));
      },
    };
    return onFreePort(async (port) => {
      nginx.port = port;
      nginx.noWsPort = await freePort();
      const conf = path.join(dir, "nginx.conf");
      fs.writeFileSync(conf, nginxConf(dir, upstreams, nginx.port, nginx.noWsPort));
      nginx.proc = spawnProcess(scope, name, NGINX_BIN, ["-p", dir, "-c", conf, "-e", "stderr"], { logFile });
      for (const p of [nginx.port, nginx.noWsPort]) {
        await until(`${name} GET /healthz on :${p}`, async () => (await httpStatus(`http://${HOST}:${p}/healthz`)) === 200, {
          proc: nginx.proc,
        });
      }
      return nginx;
    });
  });
}

// ---------------------------------------------------------------------------
// A cluster: Redis, N gateway pods, nginx

/**
 * One redis-server, `pods` gateway processes with `config` (default
 * config/example.toml) sharing it (REDIS_URL) and one long-poll secret, and,
 * unless `nginx` is false, nginx round-robin in front of them. Each pod has
 * `i`, `port`, `addr`, `lpId` (its long-poll pod id) and kill(signal).
 */
export function startCluster(scope, { pods = 3, config = "config/example.toml", nginx = true } = {}) {
  return scope.run(async () => {
    const redis = await startRedis(scope);
    const started = await Promise.all(
      Array.from({ length: pods }, async (_, i) => {
        const env = { REDIS_URL: redis.url, GATEWAY_LONGPOLL_SECRET: LONGPOLL_SECRET };
        return Object.assign(await startGateway(scope, { name: `pod${i}`, config, env }), { i });
      }),
    );
    const lb = nginx ? await startNginx(scope, { upstreams: started.map((p) => p.addr) }) : null;
    return {
      redis,
      pods: started,
      nginx: lb,
      port: lb?.port,
      noWsPort: lb?.noWsPort,
      httpUrl: lb?.httpUrl,
      socketUrl: lb?.socketUrl,
      noWsSocketUrl: lb?.noWsSocketUrl,
      /** A backend broadcast the way the README says, with redis-cli
       * (config/example.toml's prefix); resolves with the receiver count. */
      publish: (topic, event, payload) => redis.cli("PUBLISH", `phx:${topic}`, JSON.stringify({ event, payload })),
      requests: () => lb.requests(),
      /** Long-poll requests per pod address, from nginx's access log. */
      longpollRequestsPerPod() {
        const counts = Object.fromEntries(started.map((p) => [p.addr, 0]));
        for (const r of lb.requests()) {
          if (r.uri === "/socket/longpoll" && r.upstream !== "-") counts[r.upstream] = (counts[r.upstream] || 0) + 1;
        }
        return counts;
      },
      /** The pod that owns a long-poll session token (it names the pod's id). */
      ownerOf(token) {
        const lpId = Buffer.from(token.split(".")[0], "base64url").toString().split(".")[1];
        return started.find((p) => p.lpId === lpId);
      },
      killPod: (pod) => pod.kill("SIGKILL"),
    };
  });
}

// ---------------------------------------------------------------------------
// Chromium (Debian's), through the caller's playwright-core

// Without the background-networking flags Chromium keeps trying to reach
// Google's services, which a closed network refuses many times a second.
export const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * Launches CHROMIUM_PATH (default /usr/bin/chromium) with `chromium` from
 * playwright-core (the caller's dependency); the scope closes it. A failed
 * launch's error carries the browser's output.
 */
export function launchChromium(scope, chromium, options = {}) {
  return scope.run(async () => {
    const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS, timeout: 30_000, ...options });
    scope.defer(() => withTimeout(browser.close(), 15_000, "closing Chromium"));
    return browser;
  });
}
