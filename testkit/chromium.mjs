// Debian's Chromium through the caller's playwright-core (launchChromium),
// with flags that keep it off the network; the scope closes it.

import { withTimeout } from "./process.mjs";

const CHROMIUM_PATH = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

// Without the background-networking flags Chromium keeps trying to reach
// Google's services, which a closed network refuses many times a second.
export const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * Launches CHROMIUM_PATH (default /usr/bin/chromium) with `chromium` from
 * playwright-core (the caller's dependency); the scope closes it. A failed
 * launch's error carries the browser's output.
 */
export function launchChromium(scope, chromium, options = {}) {
  return scope.run(async () => {
    const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS, timeout: 30_000, ...options });
    scope.defer(() => withTimeout(browser.close(), 15_000, "closing Chromium"));
    return browser;
  });
}
