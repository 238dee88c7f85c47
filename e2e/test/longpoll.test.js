// Long-poll in a real browser: phoenix.js' LongPoll transport in Debian's
// headless Chromium, where it uses XMLHttpRequest, from a page on another
// origin than the balancer (so every POST and every GET with the authToken
// header needs a CORS preflight), against three gateway pods and one Redis
// behind nginx in plain round-robin (../../testkit), including
// phoenix.js Presence (two pages see each other, then a leave). Also the
// WebSocket -> long-poll fallback (longPollFallbackMs) where nginx refuses
// WebSocket upgrades, and no fallback where it passes them.
//
// Processes: ../../testkit (GATEWAY_BIN, CHROMIUM_PATH, NGINX_BIN).

import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { chromium } from 'playwright-core';
import { launchChromium, startCluster, suiteScope } from '../../testkit/index.mjs';

const WAIT_MS = 15_000;

/** An HS256 JWT under config/example.toml's development secret. */
function jwt(sub) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  const mac = createHmac('sha256', 'dev-only-secret-change-me').update(body).digest('base64url');
  return `${body}.${mac}`;
}

describe('phoenix.js LongPoll in Chromium behind nginx round-robin', { timeout: 120_000 }, () => {
  const scope = suiteScope('longpoll in Chromium');
  let cluster;
  let browser;
  let page;
  const pageErrors = [];
  const xhrs = [];

  before(
    scope.guard(async () => {
      cluster = await startCluster(scope, { pods: 3 });
      browser = await launchChromium(scope, chromium);
      page = await (await browser.newContext()).newPage();
      page.on('pageerror', (err) => pageErrors.push(err.message));
      page.on('request', (req) => {
        if (req.url().includes(`:${cluster.port}/socket/longpoll`)) xhrs.push({ type: req.resourceType(), method: req.method() });
      });
      // The demo page of pod 0 only provides window.Phoenix here; the
      // long-poll endpoint (nginx) is another origin.
      await page.goto(`${cluster.pods[0].httpUrl}/`, { waitUntil: 'load', timeout: WAIT_MS });
    }),
  );

  it('joins, pushes with replies, receives redis-cli broadcasts, spread over all pods', async () => {
    const topic = `room:browser-${randomUUID()}`;
    const joined = await page.evaluate(
      ({ url, topic, token, waitMs }) =>
        new Promise((resolve, reject) => {
          const socket = new Phoenix.Socket(url, { transport: Phoenix.LongPoll, authToken: token });
          window.lp = { socket, got: [], replies: [] };
          socket.connect();
          const channel = socket.channel(topic);
          channel.on('new_msg', (payload) => window.lp.got.push(payload));
          window.lp.channel = channel;
          channel
            .join()
            .receive('ok', () => resolve({ ok: true, transport: socket.conn.constructor.name }))
            .receive('error', (e) => reject(new Error(`join error ${JSON.stringify(e)}`)))
            .receive('timeout', () => reject(new Error('join timeout')));
          setTimeout(() => reject(new Error('no join reply')), waitMs);
        }),
      { url: cluster.socketUrl, topic, token: jwt('browser-user'), waitMs: WAIT_MS },
    );
    assert.equal(joined.ok, true);

    for (let i = 0; i < 4; i++) {
      const reply = await page.evaluate(
        ({ i }) =>
          new Promise((resolve) =>
            window.lp.channel
              .push('new_msg', { i })
              .receive('ok', (r) => resolve({ status: 'ok', r }))
              .receive('error', (r) => resolve({ status: 'error', r }))
              .receive('timeout', () => resolve({ status: 'timeout' })),
          ),
        { i },
      );
      assert.deepEqual(reply, { status: 'ok', r: {} });
    }
    for (let i = 0; i < 4; i++) {
      assert.equal(await cluster.publish(topic, 'new_msg', { body: `redis ${i}` }), '1');
    }
    await page.waitForFunction(() => window.lp.got.length >= 8, null, { timeout: WAIT_MS });
    const got = await page.evaluate(() => window.lp.got);
    assert.deepEqual(
      got.filter((p) => 'i' in p),
      [0, 1, 2, 3].map((i) => ({ i })),
    );
    assert.deepEqual(
      got.filter((p) => 'body' in p),
      [0, 1, 2, 3].map((i) => ({ body: `redis ${i}` })),
    );

    // XHR, not fetch, and the CORS preflights reached the pods.
    assert.ok(xhrs.length > 0 && xhrs.every((r) => r.type === 'xhr'), JSON.stringify(xhrs));
    const seen = cluster.requests().filter((r) => r.uri === '/socket/longpoll');
    assert.ok(seen.some((r) => r.method === 'OPTIONS' && r.status === 200), 'CORS preflights were answered');
    const perPod = cluster.longpollRequestsPerPod();
    console.log(`# long-poll requests per pod (nginx access log): ${JSON.stringify(perPod)}`);
    for (const [pod, count] of Object.entries(perPod)) {
      assert.ok(count >= 2, `pod ${pod} served ${count} long-poll requests`);
    }
    assert.deepEqual(pageErrors, []);
  });
  it('presence: two browser LongPoll clients see each other in Presence.list(), and a leave', async () => {
    // config/example.toml keys presence on room:* by the `user` join param.
    const topic = `room:presence-${randomUUID()}`;
    const other = await (await browser.newContext()).newPage();
    other.on('pageerror', (err) => pageErrors.push(err.message));
    try {
      await other.goto(`http://127.0.0.1:${cluster.pods[2].port}/`, { waitUntil: 'load', timeout: WAIT_MS });
      const pages = { ann: page, ben: other };
      // Joins `topic` as `user` over LongPoll with phoenix.js Presence; every
      // onSync settles the waits (window.pres.until) whose list it matches.
      const joinAs = (p, user) =>
        p.evaluate(
          ({ url, topic, user, waitMs }) =>
            new Promise((resolve, reject) => {
              const socket = new Phoenix.Socket(url, { transport: Phoenix.LongPoll });
              socket.connect();
              const channel = socket.channel(topic, { user });
              const presence = new Phoenix.Presence(channel);
              const list = () => presence.list((key, { metas }) => `${key}:${metas.length}`).sort().join(',');
              const waits = [];
              presence.onSync(() => {
                for (const w of [...waits]) {
                  if (w.want !== list()) continue;
                  waits.splice(waits.indexOf(w), 1);
                  w.resolve(w.want);
                }
              });
              window.pres = {
                socket,
                channel,
                presence,
                list,
                until: (want, ms) =>
                  new Promise((ok, fail) => {
                    if (list() === want) return ok(want);
                    waits.push({ want, resolve: ok });
                    setTimeout(() => fail(new Error(`presence list is ${list()}, not ${want}, after ${ms} ms`)), ms);
                  }),
              };
              channel
                .join()
                .receive('ok', () => resolve({ longpoll: socket.conn instanceof Phoenix.LongPoll }))
                .receive('error', (e) => reject(new Error(`join error ${JSON.stringify(e)}`)))
                .receive('timeout', () => reject(new Error('join timeout')));
              setTimeout(() => reject(new Error('no join reply')), waitMs);
            }),
          { url: cluster.socketUrl, topic, user, waitMs: WAIT_MS },
        );
      const until = (p, want) => p.evaluate(({ want, ms }) => window.pres.until(want, ms), { want, ms: WAIT_MS });

      assert.deepEqual(await joinAs(pages.ann, 'ann'), { longpoll: true });
      assert.deepEqual(await joinAs(pages.ben, 'ben'), { longpoll: true });
      await Promise.all([until(pages.ann, 'ann:1,ben:1'), until(pages.ben, 'ann:1,ben:1')]);
      // Keyed and sorted: list() follows the order keys arrived in, which
      // differs between the pages (presence_state vs a later diff).
      const lists = await Promise.all(
        [pages.ann, pages.ben].map((p) =>
          p.evaluate(() => window.pres.presence.list((key, p) => [key, p]).sort(([a], [b]) => (a < b ? -1 : 1))),
        ),
      );
      assert.deepEqual(lists[0], lists[1], 'both pages hold the same list, metas included');

      await pages.ben.evaluate(
        (ms) =>
          new Promise((resolve, reject) => {
            window.pres.channel.leave().receive('ok', resolve);
            setTimeout(() => reject(new Error('no leave reply')), ms);
          }),
        WAIT_MS,
      );
      assert.equal(await until(pages.ann, 'ann:1'), 'ann:1');
      assert.deepEqual(pageErrors, []);
    } finally {
      await other.context().close();
    }
  });
  it('longPollFallbackMs: falls back to long-poll where nginx refuses the upgrade, keeps WebSocket where it passes', async () => {
    const topic = `room:fallback-${randomUUID()}`;
    // A fresh page each: the fallback is remembered in sessionStorage.
    const run = async (url) => {
      const p = await (await browser.newContext()).newPage();
      p.on('pageerror', (err) => pageErrors.push(err.message));
      await p.goto(`http://127.0.0.1:${cluster.pods[1].port}/`, { waitUntil: 'load', timeout: WAIT_MS });
      const result = await p.evaluate(
        ({ url, topic, waitMs }) =>
          new Promise((resolve, reject) => {
            const socket = new Phoenix.Socket(url, { longPollFallbackMs: 2500 });
            socket.connect();
            const channel = socket.channel(topic);
            channel.join().receive('ok', () => {
              channel.push('new_msg', { via: url }).receive('ok', () => {
                // Wait for the WebSocket health check (a heartbeat) to settle.
                const check = () =>
                  socket.primaryPassedHealthCheck || socket.transport === Phoenix.LongPoll
                    ? resolve({
                        longpoll: socket.transport === Phoenix.LongPoll,
                        conn: socket.conn.constructor.name,
                        remembered: sessionStorage.getItem('phx:fallback:LongPoll'),
                      })
                    : setTimeout(check, 20);
                check();
              });
            });
            setTimeout(() => reject(new Error('fallback socket did not join and push in time')), waitMs);
          }),
        { url, topic, waitMs: WAIT_MS },
      );
      await p.context().close();
      return result;
    };
    const blocked = await run(cluster.noWsSocketUrl);
    assert.equal(blocked.longpoll, true, JSON.stringify(blocked));
    assert.equal(blocked.remembered, 'true');
    const direct = await run(cluster.socketUrl);
    assert.equal(direct.longpoll, false, JSON.stringify(direct));
    assert.equal(direct.conn, 'WebSocket');
    assert.deepEqual(pageErrors, []);
  });
});
