// The demo chat page's history (issue 16) in Debian's Chromium: a page that
// joins room:lobby shows its last 20 lines, a page whose connection drops
// gets the lines it missed (once each, in order) when phoenix.js reconnects
// and rejoins, a reloaded page shows the history again, and after a restart
// that lost the history the pages start over. One gateway with
// config/example.toml and the in-memory broker (room:* keeps 100 messages).
//
// Processes: ../../testkit (GATEWAY_BIN, CHROMIUM_PATH).

import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { launchChromium, startGateway, suiteScope } from '../../testkit/index.mjs';

const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ARTIFACTS = path.join(E2E_DIR, 'artifacts');
const DOM_TIMEOUT_MS = 10_000;

/** The log's lines ("user: body"). */
function logLines(page) {
  return page.$$eval('#log li', (lis) => lis.map((li) => li.textContent));
}

/** Resolves once the last line of `#log` is `line`. */
async function waitForLastLine(page, line) {
  try {
    await page.waitForFunction(
      (want) => document.querySelector('#log li:last-child')?.textContent === want,
      line,
      { timeout: DOM_TIMEOUT_MS },
    );
  } catch (err) {
    const have = await logLines(page).catch(() => '?');
    const status = await page.textContent('#status').catch(() => '?');
    throw new Error(
      `${JSON.stringify(line)} is not the last line of #log within ${DOM_TIMEOUT_MS} ms; ` +
        `#log has ${JSON.stringify(have)}, #status is ${JSON.stringify(status)} (${err.message})`,
    );
  }
}

const joined = (page) => page.waitForSelector('body[data-joined="true"]', { timeout: DOM_TIMEOUT_MS });

describe('demo chat history', { timeout: 120_000 }, () => {
  const scope = suiteScope('demo chat history');
  const run = randomUUID().slice(0, 8);
  const line = (i) => `alice: line ${i} of ${run}`;
  const pages = {};
  const pageErrors = [];
  let gw;
  let browser;

  const open = async (name) => {
    const ctx = await browser.newContext({ viewport: { width: 900, height: 720 } });
    const page = await ctx.newPage();
    page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
    await page.goto(`${gw.httpUrl}/`, { waitUntil: 'load', timeout: DOM_TIMEOUT_MS });
    await joined(page);
    pages[name] = page;
    return page;
  };

  /** Sends lines `from`..`to` (inclusive) from alice's page, each seen there. */
  const send = async (from, to) => {
    for (let i = from; i <= to; i++) {
      await pages.alice.fill('#body', `line ${i} of ${run}`);
      await pages.alice.press('#body', 'Enter');
      await waitForLastLine(pages.alice, line(i));
    }
  };

  const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => line(from + i));

  before(
    scope.guard(async () => {
      gw = await startGateway(scope, { config: 'config/example.toml' });
      browser = await launchChromium(scope, chromium);
      await open('alice');
      await open('bob');
      await pages.alice.fill('#user', 'alice');
    }),
  );

  scope.onFailure(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    for (const [name, page] of Object.entries(pages)) {
      await page.screenshot({ path: path.join(ARTIFACTS, `failure-history-${name}.png`) }).catch(() => {});
    }
  });

  const step = (name, fn) =>
    it(name, async (t) => {
      if (scope.failed) return t.skip('an earlier step failed');
      await fn();
    });

  step('a page opened after 25 lines shows the last 20', async () => {
    await send(1, 25);
    await waitForLastLine(pages.bob, line(25));
    assert.deepEqual(await logLines(pages.bob), range(1, 25), 'bob, joined before, saw every line live');
    const carol = await open('carol');
    await waitForLastLine(carol, line(25));
    assert.deepEqual(await logLines(carol), range(6, 25));
  });

  step("a page whose connection drops gets the lines it missed once it is back", async () => {
    const bob = pages.bob;
    // The socket goes away (phoenix.js errors its channels), 3 lines are
    // sent meanwhile, then it connects again and the channel rejoins by itself.
    await bob.evaluate(() => new Promise((resolve) => socket.disconnect(resolve)));
    await send(26, 28);
    assert.equal((await logLines(bob)).at(-1), line(25), 'bob is away');
    await bob.evaluate(() => socket.connect());
    await waitForLastLine(bob, line(28));
    await send(29, 29);
    await waitForLastLine(bob, line(29));
    assert.deepEqual(await logLines(bob), range(1, 29), 'every line once, in order');
  });

  step('after a reload the page shows the last 20 lines again', async () => {
    const bob = pages.bob;
    await bob.reload({ waitUntil: 'load', timeout: DOM_TIMEOUT_MS });
    await joined(bob);
    await waitForLastLine(bob, line(29));
    assert.deepEqual(await logLines(bob), range(10, 29));
    // And it goes on live.
    await send(30, 30);
    await waitForLastLine(bob, line(30));
    assert.deepEqual(await logLines(bob), range(10, 30));
  });

  step('after a gateway restart (the in-memory history is gone) the pages start over', async () => {
    // A new process, a new epoch: the rejoin says recovered: false, so the
    // page clears its log and joins again for the last 20 lines (none).
    await gw.kill('SIGKILL');
    await gw.restart();
    await Promise.all(
      ['alice', 'bob'].map((name) =>
        pages[name].waitForFunction(() => document.querySelectorAll('#log li').length === 0, null, {
          timeout: DOM_TIMEOUT_MS,
        }),
      ),
    );
    await joined(pages.alice);
    await send(31, 31);
    await waitForLastLine(pages.bob, line(31));
    assert.deepEqual(await logLines(pages.bob), range(31, 31));
    assert.deepEqual(await logLines(pages.alice), range(31, 31));
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
  });
});
