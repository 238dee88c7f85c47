// What long-poll costs behind a round-robin balancer: one phoenix.js LongPoll
// client (Node, fetch) through nginx in front of PODS gateway pods (default
// 3) and Redis (testkit's startCluster). Prints push -> reply latency over 200
// pushes, Redis PUBLISH calls per push (from INFO commandstats), requests per
// pod, and what an idle client costs over 30 s. A measurement, not a test:
//
//   cargo build -p gateway --bin gateway
//   cd compat && PODS=3 node scripts/longpoll-cost.mjs
import { LongPoll, Socket } from "phoenix";
import { Scope, startCluster } from "../../testkit/index.mjs";
const scope = new Scope("longpoll-cost");
const stats = async () => {
  const s = await cluster.redis.cli("INFO", "commandstats");
  const m = s.match(/cmdstat_publish:calls=(\d+)/);
  return m ? Number(m[1]) : 0;
};
let cluster;
try {
  cluster = await startCluster(scope, { pods: Number(process.env.PODS || 3) });
  const socket = new Socket(cluster.socketUrl, { transport: LongPoll });
  socket.connect();
  const ch = socket.channel("room:measure");
  await new Promise((r) => ch.join().receive("ok", r));
  const N = 200;
  const p0 = await stats();
  const lat = [];
  for (let i = 0; i < N; i++) {
    const t = performance.now();
    await new Promise((r) => ch.push("new_msg", { i }).receive("ok", r));
    lat.push(performance.now() - t);
  }
  const p1 = await stats();
  lat.sort((a, b) => a - b);
  const q = (x) => lat[Math.floor(x * (lat.length - 1))].toFixed(1);
  console.log(`pods=${cluster.pods.length} pushes=${N} reply latency ms p50=${q(0.5)} p90=${q(0.9)} p99=${q(0.99)} max=${q(1)}`);
  console.log(`PUBLISH calls during pushes: ${p1 - p0} (${((p1 - p0) / N).toFixed(2)} per push, incl. 1 broadcast each)`);
  const reqs = cluster.requests().filter((r) => r.uri === "/socket/longpoll");
  console.log(`long-poll requests: ${reqs.length}; per pod ${JSON.stringify(cluster.longpollRequestsPerPod())}`);
  // idle: one window
  const i0 = await stats();
  const r0 = cluster.requests().length;
  await new Promise((r) => setTimeout(r, 30_000));
  const i1 = await stats();
  console.log(`idle 30 s: ${cluster.requests().length - r0} requests, ${i1 - i0} PUBLISH calls`);
  socket.disconnect();
} catch (err) {
  scope.fail(); // keeps the logs, and prints them
  throw err;
} finally {
  await scope.close();
}
