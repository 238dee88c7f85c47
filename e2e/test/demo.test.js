// End-to-end test of the demo chat page at `/`: the real gateway binary,
// Debian's Chromium driven by playwright-core, two browser contexts (two
// users) chatting in room:lobby through the official phoenix.js client.
//
// Processes: ../../testkit (GATEWAY_BIN, CHROMIUM_PATH).

import { after, before, describe, it } from 'node:test';
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

/** Resolves once `#log` of `page` has an entry whose text is exactly `line`. */
async function waitForLine(page, line) {
  try {
    await page.waitForFunction(
      (want) => [...document.querySelectorAll('#log li')].some((li) => li.textContent === want),
      line,
      { timeout: DOM_TIMEOUT_MS },
    );
  } catch (err) {
    const have = await page.$$eval('#log li', (lis) => lis.map((li) => li.textContent)).catch(() => '?');
    const status = await page.textContent('#status').catch(() => '?');
    throw new Error(
      `${JSON.stringify(line)} not in #log of ${page.url()} within ${DOM_TIMEOUT_MS} ms; ` +
        `#log has ${JSON.stringify(have)}, #status is ${JSON.stringify(status)} (${err.message})`,
    );
  }
}

/** The log's entries as "user: body" strings, with the user part checked to be in span.user. */
function logLines(page) {
  return page.$$eval('#log li', (lis) =>
    lis.map((li) => ({ user: li.querySelector('.user')?.textContent, text: li.textContent })),
  );
}

describe('demo chat page', { timeout: 90_000 }, () => {
  const scope = suiteScope('demo chat page');
  let page1;
  let page2;
  const pageErrors = [];
  const t0 = Date.now();
  const aliceMsg = `hello from alice ${randomUUID()}`;
  const bobMsg = `hi alice, bob here ${randomUUID()}`;

  before(
    scope.guard(async () => {
      const gw = await startGateway(scope, { config: 'config/example.toml' });
      console.log(`# gateway ready on :${gw.port} after ${Date.now() - t0} ms`);
      const browser = await launchChromium(scope, chromium);
      // Two contexts: two independent users, like two separate browsers.
      const open = async (name) => {
        const ctx = await browser.newContext({ viewport: { width: 900, height: 720 } });
        const page = await ctx.newPage();
        page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
        // Logged, not failed on: Chromium asks for /favicon.ico, which the gateway 404s.
        page.on('console', (msg) => {
          if (msg.type() === 'error') {
            console.log(`# ${name} console error: ${msg.text()} (${msg.location().url || 'no url'})`);
          }
        });
        await page.goto(`${gw.httpUrl}/`, { waitUntil: 'load', timeout: DOM_TIMEOUT_MS });
        return page;
      };
      [page1, page2] = await Promise.all([open('page1'), open('page2')]);
      console.log(`# browser up, both pages loaded after ${Date.now() - t0} ms`);
    }),
  );

  // On failure, before the browser closes; the scope then prints the logs.
  scope.onFailure(async () => {
    if (!page1 || !page2) return;
    await mkdir(ARTIFACTS, { recursive: true });
    await page1.screenshot({ path: path.join(ARTIFACTS, 'failure-page1.png') }).catch(() => {});
    await page2.screenshot({ path: path.join(ARTIFACTS, 'failure-page2.png') }).catch(() => {});
  });
  after(() => console.log(`# total ${Date.now() - t0} ms`));

  // Steps build on each other: once one fails the rest are skipped, and the
  // scope saves screenshots of both pages and prints the gateway's log.
  const step = (name, fn) =>
    it(name, async (t) => {
      if (scope.failed) return t.skip('an earlier step failed');
      await fn();
    });

  step('both pages join room:lobby', async () => {
    await Promise.all(
      [page1, page2].map((p) => p.waitForSelector('body[data-joined="true"]', { timeout: DOM_TIMEOUT_MS })),
    );
    assert.equal(await page1.textContent('#status'), 'joined room:lobby');
    assert.equal(await page2.textContent('#status'), 'joined room:lobby');
  });

  step('both pages show both users online (phoenix.js Presence)', async () => {
    const names = [await page1.inputValue('#user'), await page2.inputValue('#user')].sort();
    for (const p of [page1, page2]) {
      await p.waitForFunction(
        (want) => document.getElementById('online').textContent === want,
        names.join(', '),
        { timeout: DOM_TIMEOUT_MS },
      );
    }
  });

  step("a rename on page 1 replaces its name in both Online lists (presence_update)", async () => {
    const before = await page1.inputValue('#user');
    const other = await page2.inputValue('#user');
    const renamed = `renamed-${randomUUID().slice(0, 8)}`;
    await page1.fill('#user', renamed);
    await page1.press('#user', 'Enter');
    // Exactly these names: the new one is listed and the old one is gone.
    const want = [other, renamed].sort().join(', ');
    for (const [name, p] of [['page2', page2], ['page1', page1]]) {
      try {
        await p.waitForFunction((w) => document.getElementById('online').textContent === w, want, {
          timeout: DOM_TIMEOUT_MS,
        });
      } catch (err) {
        const online = await p.textContent('#online').catch(() => '?');
        throw new Error(
          `${name}'s Online list is ${JSON.stringify(online)}, not ${JSON.stringify(want)} ` +
            `${DOM_TIMEOUT_MS} ms after ${before} renamed itself ${renamed} (${err.message})`,
        );
      }
    }
    assert.equal(await page1.textContent('#status'), 'joined room:lobby', 'the rename was not refused');
  });

  step("alice's message (Send button) reaches both pages", async () => {
    await page1.fill('#user', 'alice');
    await page1.fill('#body', aliceMsg);
    await page1.click('#send');
    const line = `alice: ${aliceMsg}`;
    await Promise.all([waitForLine(page2, line), waitForLine(page1, line)]);
    assert.equal(await page1.inputValue('#body'), '', 'the input is cleared after sending');
  });

  step("bob's message (Enter key) reaches both pages", async () => {
    await page2.fill('#user', 'bob');
    await page2.fill('#body', bobMsg);
    await page2.press('#body', 'Enter');
    const line = `bob: ${bobMsg}`;
    await Promise.all([waitForLine(page1, line), waitForLine(page2, line)]);
  });

  step('both logs hold exactly the two messages, in order, once each', async () => {
    const want = [
      { user: 'alice: ', text: `alice: ${aliceMsg}` },
      { user: 'bob: ', text: `bob: ${bobMsg}` },
    ];
    assert.deepEqual(await logLines(page1), want);
    assert.deepEqual(await logLines(page2), want);
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
  });

  step('screenshot of page 2', async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, 'demo.png');
    await page2.screenshot({ path: file, fullPage: true });
    console.log(`# saved ${path.relative(E2E_DIR, file)}`);
  });
});
