// nginx in plain round-robin in front of upstreams (startNginx): its config,
// two listeners (WebSocket passed or refused), its access log read back.

import fs from "node:fs";
import path from "node:path";
import { freePort, HOST, httpStatus, onFreePort, spawnProcess, until } from "./process.mjs";

const NGINX_BIN = process.env.NGINX_BIN || "/usr/sbin/nginx";

function nginxConf(dir, upstreams, port, noWsPort, serverParams) {
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
${upstreams.map((addr) => `    server ${addr}${serverParams ? ` ${serverParams}` : ""};`).join("\n")}
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
 * `serverParams` follow each upstream's address (`max_fails=0`: an upstream
 * that refused is tried again at once, not left out for 10 s, for pods that
 * start after nginx).
 */
export function startNginx(scope, { upstreams, name = "nginx", serverParams = "" }) {
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
      fs.writeFileSync(conf, nginxConf(dir, upstreams, nginx.port, nginx.noWsPort, serverParams));
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
