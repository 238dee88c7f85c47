// Scopes: what one test (or one file) started, stopped and cleaned up
// together. A Scope owns a temporary directory, the log files printed to
// stderr when it failed, and the cleanups run at close(); suiteScope and
// testScope tie one to node:test's hooks.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, afterEach } from "node:test";
import { stripAnsi } from "./process.mjs";

/** Bytes of each log printed when a test failed (the files are kept whole). */
const DUMP_BYTES = 64 * 1024;

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
