// The processes of the JavaScript suites (compat/ and e2e/): the one entry
// point the suites import (by relative path), re-exporting the public API of
// the modules beside it. Node built-ins only. See README.md for the layout.

export { Scope, suiteScope, testScope } from "./scope.mjs";
export { freePort, HOST, httpStatus, Proc, spawnProcess, START_MS, until, withTimeout } from "./process.mjs";
export { toml } from "./toml.mjs";
export { redisCli, startRedis } from "./redis.mjs";
export { GATEWAY_BIN, REPO_ROOT, SEEDS_BIN, startGateway, startSeeds } from "./gateway.mjs";
export { startNginx } from "./nginx.mjs";
export { LONGPOLL_SECRET, startCluster } from "./cluster.mjs";
export { CHROMIUM_ARGS, launchChromium } from "./chromium.mjs";
