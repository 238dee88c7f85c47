// A cluster (startCluster): one Redis, N gateway pods sharing it and one
// long-poll secret, nginx in front; helpers that read it back (which pod got
// which request, which pod owns a long-poll session).

import { startGateway } from "./gateway.mjs";
import { startNginx } from "./nginx.mjs";
import { startRedis } from "./redis.mjs";

/** The long-poll secret every pod of a cluster shares (GATEWAY_LONGPOLL_SECRET). */
export const LONGPOLL_SECRET = "cluster-test-longpoll-secret-0123456789";

/**
 * One redis-server, `pods` gateway processes with `config` (default
 * config/example.toml) sharing it (REDIS_URL) and one long-poll secret, and,
 * unless `nginx` is false, nginx round-robin in front of them. Each pod has
 * `i`, `port`, `addr`, `lpId` (its long-poll pod id), kill(signal) and
 * restart() (same port). `env` adds variables to every pod's environment
 * (GATEWAY_API_KEY, ...).
 */
export function startCluster(scope, { pods = 3, config = "config/example.toml", nginx = true, env = {} } = {}) {
  return scope.run(async () => {
    const redis = await startRedis(scope);
    const started = await Promise.all(
      Array.from({ length: pods }, async (_, i) => {
        const podEnv = { ...env, REDIS_URL: redis.url, GATEWAY_LONGPOLL_SECRET: LONGPOLL_SECRET };
        return Object.assign(await startGateway(scope, { name: `pod${i}`, config, env: podEnv }), { i });
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
      /** SIGKILL, then the same pod again on its port (a crash and a restart). */
      async restartPod(pod) {
        await pod.kill("SIGKILL");
        return pod.restart();
      },
    };
  });
}
