// A real deployment in miniature for the long-poll tests: one redis-server,
// three `gateway` processes (config/example.toml with REDIS_URL), and nginx
// (Debian's) in front of them in plain round-robin, with no affinity.
//
// nginx serves two ports: `port` proxies everything, WebSocket upgrades
// included; `noWsPort` refuses upgrades (403 on /socket/websocket), as a
// balancer that does not pass WebSocket does. Its access log records the
// upstream of every request, so tests can count requests per pod.
//
// Everything runs on free ports in a temporary directory, is bounded in time
// and is killed by stop(). Used by compat/ (phoenix.js in Node) and e2e/
// (phoenix.js in Chromium); it depends on Node built-ins only.
//
// Env: GATEWAY_BIN (default ../target/debug/gateway relative to compat/),
//      NGINX_BIN (default /usr/sbin/nginx), REDIS_SERVER_BIN, REDIS_CLI_BIN.

import { spawn, execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync, mkdirSync, chmodSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, "../..");
export const GATEWAY_BIN = path.resolve(
  REPO_ROOT,
  "compat",
  process.env.GATEWAY_BIN || "../target/debug/gateway",
);
const NGINX_BIN = process.env.NGINX_BIN || "/usr/sbin/nginx";
const REDIS_SERVER = process.env.REDIS_SERVER_BIN || "redis-server";
const REDIS_CLI = process.env.REDIS_CLI_BIN || "redis-cli";

const HOST = "127.0.0.1";
const START_MS = 20_000;
const POLL_MS = 50;
/** The secret every pod shares (GATEWAY_LONGPOLL_SECRET). */
export const LONGPOLL_SECRET = "cluster-test-longpoll-secret-0123456789";

function freePort() {
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

/** A child process whose output is kept (bounded) and whose exit is a promise. */
function launch(name, cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
  const proc = { name, child, output: "", exitInfo: null };
  const keep = (chunk) => {
    proc.output += chunk;
    if (proc.output.length > 200_000) proc.output = proc.output.slice(-100_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  proc.exited = new Promise((resolve) => {
    child.on("exit", (code, signal) => resolve((proc.exitInfo = { code, signal })));
    child.on("error", (error) => resolve((proc.exitInfo = { error: error.message })));
  });
  return proc;
}

async function kill(proc, signal = "SIGKILL") {
  if (!proc || proc.exitInfo) return;
  try {
    proc.child.kill(signal);
  } catch {}
  await Promise.race([proc.exited, delay(5000)]);
}

/** Resolves when `check()` resolves truthy; fails after START_MS naming `what`. */
async function until(what, check, proc) {
  const deadline = Date.now() + START_MS;
  for (;;) {
    if (proc?.exitInfo) {
      throw new Error(`${what}: process exited ${JSON.stringify(proc.exitInfo)}\n${proc.output}`);
    }
    try {
      if (await check()) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${what}: not ready within ${START_MS} ms\n${proc?.output ?? ""}`);
    await delay(POLL_MS);
  }
}

async function httpOk(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  await res.text();
  return res.status === 200;
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, HOST);
    s.setTimeout(1000, () => {
      s.destroy();
      resolve(false);
    });
    s.on("error", () => resolve(false));
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      s.destroy();
      resolve(d.toString().startsWith("+PONG"));
    });
  });
}

/** `redis-cli -p port args...`, stdout trimmed. */
export function redisCli(port, ...args) {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI, ["-h", HOST, "-p", String(port), ...args], { timeout: 5000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`redis-cli ${args.join(" ")}: ${err.message} ${stderr}`)) : resolve(stdout.trim()),
    );
  });
}

function nginxConf(dir, pods, port, noWsPort) {
  const upstream = pods.map((p) => `    server ${HOST}:${p.port};`).join("\n");
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
error_log ${dir}/error.log info;
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
${upstream}
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

class Cluster {
  constructor(dir) {
    this.dir = dir;
    this.pods = [];
    this.redis = null;
    this.nginx = null;
  }

  /** `http://127.0.0.1:port` of nginx (WebSocket passes). */
  get httpUrl() {
    return `http://${HOST}:${this.port}`;
  }

  /** phoenix.js endpoint through nginx, WebSocket allowed. */
  get socketUrl() {
    return `ws://${HOST}:${this.port}/socket`;
  }

  /** phoenix.js endpoint through nginx where WebSocket upgrades are refused. */
  get noWsSocketUrl() {
    return `ws://${HOST}:${this.noWsPort}/socket`;
  }

  async startRedis() {
    this.redisPort = await freePort();
    this.redis = launch("redis", REDIS_SERVER, [
      "--port", String(this.redisPort), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", this.dir,
    ]);
    await until("redis-server", () => redisPing(this.redisPort), this.redis);
  }

  async startPod(i) {
    if (!existsSync(GATEWAY_BIN)) {
      throw new Error(`gateway binary not found at ${GATEWAY_BIN}; run cargo build -p gateway or set GATEWAY_BIN`);
    }
    const port = await freePort();
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith("GATEWAY_")) delete env[k];
    const proc = launch(`pod${i}`, GATEWAY_BIN, ["--config", "config/example.toml"], {
      cwd: REPO_ROOT,
      env: {
        ...env,
        PORT: String(port),
        REDIS_URL: `redis://${HOST}:${this.redisPort}`,
        GATEWAY_LONGPOLL_SECRET: LONGPOLL_SECRET,
        GATEWAY_LOG_FORMAT: "human",
        NO_COLOR: "1",
      },
    });
    await until(`gateway pod${i}`, () => httpOk(`http://${HOST}:${port}/healthz`), proc);
    await until(`gateway pod${i} long-poll id`, () => /longpoll_pod="?([0-9a-f]+)/.test(proc.output), proc);
    const lpId = proc.output.match(/longpoll_pod="?([0-9a-f]+)/)[1];
    const pod = { i, port, proc, lpId, addr: `${HOST}:${port}` };
    this.pods[i] = pod;
    return pod;
  }

  async startNginx() {
    if (!existsSync(NGINX_BIN)) {
      throw new Error(`nginx not found at ${NGINX_BIN}; run scripts/setup-test-deps.sh or set NGINX_BIN`);
    }
    this.port = await freePort();
    this.noWsPort = await freePort();
    mkdirSync(path.join(this.dir, "tmp"), { recursive: true });
    // nginx started as root runs its worker as nobody, which must write here.
    chmodSync(this.dir, 0o777);
    chmodSync(path.join(this.dir, "tmp"), 0o777);
    const conf = path.join(this.dir, "nginx.conf");
    writeFileSync(conf, nginxConf(this.dir, this.pods, this.port, this.noWsPort));
    this.nginx = launch("nginx", NGINX_BIN, ["-p", this.dir, "-c", conf, "-e", path.join(this.dir, "error.log")]);
    await until("nginx", () => httpOk(`${this.httpUrl}/healthz`), this.nginx);
    await until("nginx (no-WebSocket port)", () => httpOk(`http://${HOST}:${this.noWsPort}/healthz`), this.nginx);
  }

  /** Publishes a backend broadcast the way the README says, with redis-cli. */
  publish(topic, event, payload) {
    return redisCli(this.redisPort, "PUBLISH", `phx:${topic}`, JSON.stringify({ event, payload }));
  }

  /** Requests nginx passed on: {upstream, method, uri, status}, from its
   * access log. `upstream` is the pod that answered. */
  requests() {
    let log = "";
    try {
      log = readFileSync(path.join(this.dir, "access.log"), "utf8");
    } catch {}
    return log
      .split("\n")
      .filter(Boolean)
      .map((line) => {
        // "a, b" when nginx tried a dead pod first: the last one answered.
        const m = line.match(/^(.*) (\S+) (\S+) (\d+)$/);
        if (!m) return null;
        return { upstream: m[1].split(",").pop().trim(), method: m[2], uri: m[3], status: Number(m[4]) };
      })
      .filter(Boolean);
  }

  /** Long-poll requests per pod address, from nginx's access log. */
  longpollRequestsPerPod() {
    const counts = Object.fromEntries(this.pods.filter(Boolean).map((p) => [p.addr, 0]));
    for (const r of this.requests()) {
      if (r.uri === "/socket/longpoll" && r.upstream !== "-") counts[r.upstream] = (counts[r.upstream] || 0) + 1;
    }
    return counts;
  }

  /** The pod that owns a long-poll session token (it names the pod's id). */
  ownerOf(token) {
    const body = Buffer.from(token.split(".")[0], "base64url").toString();
    const lpId = body.split(".")[1];
    return this.pods.find((p) => p && p.lpId === lpId);
  }

  async killPod(pod) {
    await kill(pod.proc, "SIGKILL");
  }

  /** Everything each process printed, for failure messages. */
  logs() {
    return [this.redis, this.nginx, ...this.pods.map((p) => p?.proc)]
      .filter(Boolean)
      .map((p) => `----- ${p.name} -----\n${p.output.slice(-8000)}`)
      .join("\n");
  }

  async stop() {
    await kill(this.nginx, "SIGTERM");
    await Promise.all(this.pods.filter(Boolean).map((p) => kill(p.proc)));
    await kill(this.redis);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Starts Redis, `pods` gateways and nginx in front of them. */
export async function startCluster({ pods = 3 } = {}) {
  const cluster = new Cluster(mkdtempSync(path.join(os.tmpdir(), "gateway-lb-")));
  try {
    await cluster.startRedis();
    await Promise.all(Array.from({ length: pods }, (_, i) => cluster.startPod(i)));
    await cluster.startNginx();
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}
