// Child processes and the bounded waits on them: a process in its own group
// with its output in a log file (Proc, spawnProcess), stopped with SIGTERM
// then SIGKILL, and SIGKILLed if this process ends first; polling with a
// deadline that fails at once when the process it waits for exits (until);
// free ports, an HTTP status probe, a promise with a timeout.

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";

export const HOST = "127.0.0.1";

/** What every readiness wait gets at most: generous for 2 busy cores. */
export const START_MS = 20_000;
/** The polling interval of the bounded waits. */
const POLL_MS = 25;
/** SIGTERM at teardown, then SIGKILL after this (a gateway with
 * config/example.toml drains for 2 s, longer with long-poll sessions open). */
const STOP_GRACE_MS = 3_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// eslint-disable-next-line no-control-regex
export const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, "");
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
export async function onFreePort(start, attempts = 5) {
  for (let i = 1; ; i++) {
    try {
      return await start(await freePort());
    } catch (err) {
      if (!err.addrInUse || i >= attempts) throw err;
    }
  }
}
