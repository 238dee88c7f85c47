// The admin page (`[admin] page = true`, issue 19) in Debian's Chromium: two
// gateway pods sharing one redis-server, config/example.toml plus the page,
// the admin key in GATEWAY_ADMIN_KEY. The page is opened on pod 0 and the
// demo chat page (`/`) on pod 1, so everything the page shows of the chat
// user, and everything it does to it, goes through Redis: a wrong key is
// refused; the right one lists both pods; the chat user's room:lobby shows
// among the busiest topics and, clicked, with its connection, presence and
// history; the Publish form reaches the chat page; the topic view's
// disconnect button closes the chat page's socket, which phoenix.js
// reconnects as a new connection.
//
// Processes: ../../testkit (GATEWAY_BIN, CHROMIUM_PATH, redis-server).

import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { HOST, launchChromium, REPO_ROOT, startCluster, suiteScope } from '../../testkit/index.mjs';

const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ARTIFACTS = path.join(E2E_DIR, 'artifacts');
// The page's fleet view is refreshed every 2 s: a few ticks.
const DOM_TIMEOUT_MS = 10_000;
const KEY = `admin-key-${randomUUID()}`;

/** config/example.toml with the admin page on, in the scope's directory. */
function adminConfig(scope) {
  const example = fs.readFileSync(path.join(REPO_ROOT, 'config/example.toml'), 'utf8');
  const file = path.join(scope.mkdir('config'), 'admin.toml');
  fs.writeFileSync(file, `${example}\n[admin]\npage = true\n`);
  return file;
}

/** The status of a WebSocket upgrade of the admin socket on `port` that
 * presents `key` the way phoenix.js' authToken does (101: accepted). */
function upgradeStatus(port, key) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: HOST,
      port,
      path: '/admin/socket/websocket?vsn=2.0.0',
      timeout: 5000,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
        'Sec-WebSocket-Protocol': `phoenix, base64url.bearer.phx.${Buffer.from(key).toString('base64url')}`,
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy(new Error('upgrade: no answer in 5 s')));
    req.on('error', reject);
    req.end();
  });
}

/** Waits for `predicate(arg)` in `page`; on timeout says what `describe()` saw. */
async function waitFor(page, what, predicate, arg, describeState) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: DOM_TIMEOUT_MS });
  } catch (err) {
    const state = await page.evaluate(describeState).catch((e) => `? (${e.message})`);
    throw new Error(`${what}: not within ${DOM_TIMEOUT_MS} ms; the page shows ${JSON.stringify(state)} (${err.message})`);
  }
}

/** What the admin page shows, for failure messages. */
const adminState = () => ({
  status: document.getElementById('status').textContent,
  loginError: document.getElementById('login-error').textContent,
  appHidden: document.getElementById('app').hidden,
  pods: [...document.querySelectorAll('#pods tbody tr')].map((tr) => tr.textContent),
  topics: [...document.querySelectorAll('#topics tbody tr')].map((tr) => tr.textContent),
  topicView: document.getElementById('topic-view').textContent,
  publish: document.getElementById('publish-result').textContent,
  disconnect: document.getElementById('disconnect-result').textContent,
});

/** What the chat page shows, for failure messages. */
const chatState = () => ({
  status: document.getElementById('status').textContent,
  log: [...document.querySelectorAll('#log li')].map((li) => li.textContent),
  channel: typeof channel === 'undefined' ? null : channel.state,
  closes: window.closes ?? null,
  opens: window.opens ?? null,
});

/** The topic view's connections table: [{conn, user, socketId, transport}]. */
const topicConnections = (page) =>
  page.$$eval('#topic-connections tbody tr', (trs) =>
    trs.map((tr) => {
      const [conn, user, socketId, transport] = [...tr.cells].map((td) => td.textContent);
      return { conn, user, socketId, transport };
    }),
  );

describe('admin page', { timeout: 120_000 }, () => {
  const scope = suiteScope('admin page');
  const run = randomUUID().slice(0, 8);
  const chatMsg = `hello admins, ${run}`;
  const opsMsg = `maintenance at noon, ${run}`;
  let cluster;
  let browser;
  let admin;
  let chat;
  let chatUser;
  let oldConn;
  const pageErrors = [];

  before(
    scope.guard(async () => {
      cluster = await startCluster(scope, {
        pods: 2,
        config: adminConfig(scope),
        nginx: false,
        env: { GATEWAY_ADMIN_KEY: KEY },
      });
      browser = await launchChromium(scope, chromium);
      admin = await open('admin', `${cluster.pods[0].httpUrl}/admin`);
    }),
  );

  /** A page in a browser context of its own (its own sessionStorage). */
  const open = async (name, url) => {
    const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
    const page = await ctx.newPage();
    page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
    // Logged, not failed on: the refused key's upgrade is a console error.
    page.on('console', (msg) => {
      if (msg.type() === 'error') console.log(`# ${name} console error: ${msg.text()}`);
    });
    await page.goto(url, { waitUntil: 'load', timeout: DOM_TIMEOUT_MS });
    return page;
  };

  scope.onFailure(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    for (const [name, page] of [
      ['admin', admin],
      ['chat', chat],
    ]) {
      await page?.screenshot({ path: path.join(ARTIFACTS, `failure-admin-${name}.png`), fullPage: true }).catch(() => {});
    }
  });

  // Steps build on each other: once one fails the rest are skipped.
  const step = (name, fn) =>
    it(name, async (t) => {
      if (scope.failed) return t.skip('an earlier step failed');
      await fn();
    });

  step('a wrong key is refused: an error, and no app', async () => {
    await admin.fill('#key', `not-${KEY}`);
    await admin.click('#login-form button');
    await waitFor(
      admin,
      'the login error',
      () => document.getElementById('login-error').textContent !== '',
      null,
      adminState,
    );
    const state = await admin.evaluate(adminState);
    assert.equal(state.loginError, 'connection failed: wrong key or pod down');
    assert.equal(state.appHidden, true, 'the app stays hidden');
    assert.deepEqual(state.pods, [], 'no fleet was pushed');
    // What the page saw: the upgrade refused with 401, and the right key accepted.
    assert.equal(await upgradeStatus(cluster.pods[0].port, `not-${KEY}`), 401);
    assert.equal(await upgradeStatus(cluster.pods[0].port, KEY), 101);
  });

  step('the right key: the pods table lists both pods, ready', async () => {
    await admin.fill('#key', KEY);
    await admin.click('#login-form button');
    await waitFor(
      admin,
      'two ready pods',
      () => {
        const rows = [...document.querySelectorAll('#pods tbody tr')];
        return rows.length === 2 && rows.every((tr) => tr.cells[9].textContent === 'ready');
      },
      null,
      adminState,
    );
    const state = await admin.evaluate(adminState);
    assert.equal(state.appHidden, false);
    assert.equal(state.loginError, '', 'the failed try left no error behind');
    assert.match(state.status, /^connected · 2 pod\(s\)/);
    assert.equal(await admin.textContent('#missing'), '', 'every pod answered');
  });

  step("a chat user on the other pod: room:lobby among the busiest topics", async () => {
    chat = await open('chat', `${cluster.pods[1].httpUrl}/`);
    await chat.waitForSelector('body[data-joined="true"]', { timeout: DOM_TIMEOUT_MS });
    chatUser = await chat.inputValue('#user');
    await chat.fill('#body', chatMsg);
    await chat.press('#body', 'Enter');
    const line = `${chatUser}: ${chatMsg}`;
    await waitFor(
      chat,
      'the chat line',
      (want) => [...document.querySelectorAll('#log li')].some((li) => li.textContent === want),
      line,
      chatState,
    );

    await waitFor(
      admin,
      'room:lobby in the busiest topics',
      () =>
        [...document.querySelectorAll('#topics tbody tr')].some(
          (tr) => tr.cells[0].textContent === 'room:lobby' && Number(tr.cells[1].textContent) >= 1,
        ),
      null,
      adminState,
    );
    const row = await admin.$$eval('#topics tbody tr', (trs) =>
      trs.map((tr) => [...tr.cells].map((td) => td.textContent)).find((cells) => cells[0] === 'room:lobby'),
    );
    assert.deepEqual(row, ['room:lobby', '1', '1'], 'one subscriber, on one pod');
  });

  step('clicking it shows the topic view: the connection, presence and history', async () => {
    await admin.click('#topics a:text-is("room:lobby")');
    await waitFor(
      admin,
      'the topic view of room:lobby',
      () => document.getElementById('topic-summary') !== null,
      null,
      adminState,
    );
    assert.equal(await admin.inputValue('#topic-name'), 'room:lobby');
    assert.equal(await admin.textContent('#topic-summary'), '1 subscriber(s) on 1 pod(s)');
    const conns = await topicConnections(admin);
    assert.equal(conns.length, 1, JSON.stringify(conns));
    assert.equal(conns[0].transport, 'websocket');
    // `<pod id>/<number>`: the pod of the chat page, not the admin page's.
    const podIds = await admin.$$eval('#pods tbody tr', (trs) => trs.map((tr) => tr.dataset.pod));
    const [connPod] = conns[0].conn.split('/');
    assert.ok(podIds.includes(connPod), `${conns[0].conn} names one of the pods ${podIds}`);
    oldConn = conns[0].conn;

    // The demo page keys presence by its `user` join param.
    const presence = await admin.textContent('#topic-presence');
    assert.ok(presence.startsWith('presence: '), presence);
    const listed = JSON.parse(presence.slice('presence: '.length));
    assert.deepEqual(Object.keys(listed), [chatUser], presence);

    // room:* keeps history (config/example.toml): the chat line is its last.
    const history = (await admin.textContent('#topic-history')).split('\n');
    assert.match(history[0], /^history \(top \S+\):$/);
    assert.match(history.at(-1), /^\S+ new_msg /);
    const last = history.at(-1).split(' new_msg ')[1];
    assert.deepEqual(JSON.parse(last), { user: chatUser, body: chatMsg });
  });

  step("the Publish form's new_msg reaches the chat page", async () => {
    await admin.fill('#pub-topic', 'room:lobby');
    await admin.fill('#pub-event', 'new_msg');
    await admin.fill('#pub-payload', JSON.stringify({ user: 'ops', body: opsMsg }));
    await admin.click('#publish-form button');
    await waitFor(
      admin,
      'the publish reply',
      () => document.getElementById('publish-result').textContent !== '',
      null,
      adminState,
    );
    assert.equal(await admin.textContent('#publish-result'), 'published');
    await waitFor(
      chat,
      "ops' line on the chat page",
      (want) => document.querySelector('#log li:last-child')?.textContent === want,
      `ops: ${opsMsg}`,
      chatState,
    );
  });

  step("the topic view's disconnect button closes the chat socket; it comes back as a new connection", async () => {
    // phoenix.js reports the close (code and reason) and reconnects by itself.
    await chat.evaluate(() => {
      window.closes = [];
      window.opens = 0;
      socket.onClose((e) => window.closes.push({ code: e.code, reason: e.reason }));
      socket.onOpen(() => {
        window.opens += 1;
      });
    });
    await admin.click('#topic-connections tbody tr button:text-is("disconnect")');
    await waitFor(
      admin,
      'the disconnect reply',
      () => document.getElementById('disconnect-result').textContent !== '',
      null,
      adminState,
    );
    assert.equal(await admin.textContent('#disconnect-result'), 'disconnected 1');

    await waitFor(
      chat,
      'the chat socket closed, reopened and room:lobby joined again',
      () => window.closes.length >= 1 && window.opens >= 1 && channel.state === 'joined',
      null,
      chatState,
    );
    const { closes, opens } = await chat.evaluate(() => ({ closes: window.closes, opens: window.opens }));
    assert.deepEqual(closes, [{ code: 1001, reason: 'disconnect' }], 'closed once, as a forced disconnect');
    assert.equal(opens, 1);

    // The topic view, asked again, names the new connection.
    await admin.click('#topic-form button');
    await waitFor(
      admin,
      'a new connection in the topic view',
      (old) => {
        const rows = [...document.querySelectorAll('#topic-connections tbody tr')];
        return rows.length === 1 && rows[0].cells[0].textContent !== old;
      },
      oldConn,
      adminState,
    );
    assert.equal(await admin.textContent('#topic-summary'), '1 subscriber(s) on 1 pod(s)');
    const [now] = await topicConnections(admin);
    assert.equal(now.conn.split('/')[0], oldConn.split('/')[0], 'on the same pod as before');
    assert.equal(await admin.isHidden('#app'), false, "the admin page's own socket was not touched");
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
  });

  step('screenshot of the admin page', async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, 'admin.png');
    await admin.screenshot({ path: file, fullPage: true });
    console.log(`# saved ${path.relative(E2E_DIR, file)}`);
  });
});
