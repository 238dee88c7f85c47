// End-to-end test of the demo chat page at `/`: the real gateway binary,
// Debian's Chromium driven by playwright-core, two browser contexts (two
// users) chatting in room:lobby through the official phoenix.js client.
//
// Env: GATEWAY_BIN (default ../target/debug/gateway, relative to e2e/),
//      CHROMIUM_PATH (default /usr/bin/chromium).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO_ROOT = path.resolve(E2E_DIR, '..');
const GATEWAY_BIN = path.resolve(E2E_DIR, process.env.GATEWAY_BIN || '../target/debug/gateway');
const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(E2E_DIR, 'artifacts');

// Without the background-networking flags Chromium keeps trying to reach
// Google's services, which this closed network refuses many times a second.
const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const HEALTH_TIMEOUT_MS = 20_000;
const HEALTH_POLL_MS = 100;
const DOM_TIMEOUT_MS = 10_000;

/** A port that was free a moment ago on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Starts the gateway; resolves once GET /healthz answers 200. */
async function startGateway(port) {
  const child = spawn(GATEWAY_BIN, ['--config', 'config/example.toml'], {
    cwd: REPO_ROOT,
    env: { ...process.env, PORT: String(port), GATEWAY_LOG_FORMAT: 'human' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk) => {
    output += chunk;
    if (output.length > 64_000) output = output.slice(-32_000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exit = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
    child.on('error', (err) => {
      exited = { error: err.message };
      resolve(exited);
    });
  });

  const gw = { child, port, exit, output: () => output, exited: () => exited };
  const url = `http://127.0.0.1:${port}/healthz`;
  const deadline = Date.now() + HEALTH_TIMEOUT_MS;
  for (;;) {
    if (exited) {
      throw new Error(`gateway exited before it was healthy: ${JSON.stringify(exited)}\n${output}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      if (res.ok) return gw;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stopGateway(gw);
      throw new Error(`gateway not healthy at ${url} within ${HEALTH_TIMEOUT_MS} ms\n${output}`);
    }
    await new Promise((r) => setTimeout(r, HEALTH_POLL_MS));
  }
}

/** SIGTERM, then SIGKILL if it has not exited within 5 s. */
async function stopGateway(gw) {
  if (!gw || gw.exited()) return;
  gw.child.kill('SIGTERM');
  let timer;
  const timeout = new Promise((r) => {
    timer = setTimeout(r, 5_000, 'timeout');
  });
  const outcome = await Promise.race([gw.exit, timeout]);
  clearTimeout(timer); // a pending timer would keep the test process alive
  if (outcome === 'timeout') {
    gw.child.kill('SIGKILL');
    await gw.exit;
  }
}

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
  let gw;
  let browser;
  let page1;
  let page2;
  const pageErrors = [];
  let failed = false;
  const t0 = Date.now();
  const aliceMsg = `hello from alice ${randomUUID()}`;
  const bobMsg = `hi alice, bob here ${randomUUID()}`;

  before(async () => {
    try {
      await setUp();
    } catch (err) {
      failed = true;
      throw err;
    }
  });

  async function setUp() {
    const port = await freePort();
    gw = await startGateway(port);
    // Safety net if the runner exits without running `after` (e.g. it is interrupted).
    process.on('exit', () => gw.exited() || gw.child.kill('SIGKILL'));
    const demoUrl = `http://127.0.0.1:${port}/`;
    console.log(`# gateway healthy on :${port} after ${Date.now() - t0} ms`);

    browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS, timeout: 30_000 });
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
      await page.goto(demoUrl, { waitUntil: 'load', timeout: DOM_TIMEOUT_MS });
      return page;
    };
    [page1, page2] = await Promise.all([open('page1'), open('page2')]);
    console.log(`# browser up, both pages loaded after ${Date.now() - t0} ms`);
  }

  after(async () => {
    try {
      if (failed && page1 && page2) {
        await mkdir(ARTIFACTS, { recursive: true });
        await page1.screenshot({ path: path.join(ARTIFACTS, 'failure-page1.png') }).catch(() => {});
        await page2.screenshot({ path: path.join(ARTIFACTS, 'failure-page2.png') }).catch(() => {});
      }
    } finally {
      try {
        if (browser) await browser.close();
      } finally {
        await stopGateway(gw);
        // eslint-disable-next-line no-control-regex
        if (failed && gw) console.log(`# gateway output:\n${gw.output().replace(/\x1b\[[0-9;]*m/g, '')}`);
        console.log(`# total ${Date.now() - t0} ms`);
      }
    }
  });

  // Steps build on each other: once one fails the rest are skipped, and
  // `after` saves screenshots of both pages and prints the gateway's log.
  const step = (name, fn) =>
    it(name, async (t) => {
      if (failed) return t.skip('an earlier step failed');
      try {
        await fn();
      } catch (err) {
        failed = true;
        throw err;
      }
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
