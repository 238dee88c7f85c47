// redis-server on a free port of its own (startRedis), and redis-cli against
// it (redisCli).

import { execFile } from "node:child_process";
import net from "node:net";
import { HOST, onFreePort, spawnProcess, until } from "./process.mjs";

const REDIS_SERVER_BIN = process.env.REDIS_SERVER_BIN || "redis-server";
const REDIS_CLI_BIN = process.env.REDIS_CLI_BIN || "redis-cli";

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
