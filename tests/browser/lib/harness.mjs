// Shared by the browser tests: a real fleetmq binary on free ports with a temp data dir,
// the admin API, a headless Debian Chromium driven by playwright-core, and artifacts.
//
// Where CI=true a missing browser or npm package fails the test; elsewhere it skips.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const TARGET = resolve(REPO, process.env.CARGO_TARGET_DIR || 'target');
export const ARTIFACTS = process.env.BROWSER_ARTIFACTS || join(TARGET, 'browser-artifacts');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const API_KEY = 'browser-test-admin-key-0123456789';
const IN_CI = process.env.CI === 'true';
/** Upper bound for anything a test waits for. */
export const PATIENCE_MS = 20000;

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

mkdirSync(ARTIFACTS, { recursive: true });

/**
 * What the test needs from outside the repo: the browser and playwright-core. Returns
 * playwright's `chromium`, or null after marking the test skipped (never under CI).
 */
export async function requirements(t) {
  const missing = [];
  if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} (apt-get install chromium)`);
  let playwright = null;
  try {
    playwright = await import('playwright-core');
  } catch {
    missing.push('playwright-core (npm ci in tests/browser)');
  }
  if (missing.length === 0) return playwright.chromium;
  const message = `missing: ${missing.join(', ')}`;
  if (IN_CI) throw new Error(`${message}; CI=true, so this fails instead of skipping`);
  t.skip(message);
  return null;
}

export async function launch(chromium) {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
}

export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; throws `what` after PATIENCE_MS. */
export async function eventually(what, fn, timeoutMs = PATIENCE_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out: ${what}${last ? ` (${last.message})` : ''}`);
    await sleep(100);
  }
}

/** A debug binary built by cargo; built here when missing (CI builds it beforehand). */
export function binary(name, example = false) {
  const path = join(TARGET, 'debug', example ? 'examples' : '', name);
  if (!existsSync(path)) {
    const args = ['build', '--locked', ...(example ? ['--example', name] : ['--bin', name])];
    const built = spawnSync('cargo', args, { cwd: REPO, stdio: 'inherit' });
    if (built.status !== 0) throw new Error(`cargo ${args.join(' ')} failed`);
  }
  return path;
}

/** A running fleetmq: `admin` (base URL), `tcp`, `ws` (ports), `api()`, `stop()`. */
export async function startFleetmq(name) {
  const [tcp, ws, admin] = [await freePort(), await freePort(), await freePort()];
  const data = mkdtempSync(join(tmpdir(), 'fleetmq-browser-'));
  const log = openSync(join(ARTIFACTS, `${name}-fleetmq.log`), 'w');
  const proc = spawn(binary('fleetmq'), ['serve', '--data-dir', data,
    '--mqtt-tcp', `127.0.0.1:${tcp}`, '--mqtt-ws', `127.0.0.1:${ws}`, '--admin-listen', `127.0.0.1:${admin}`], {
    env: { ...process.env, FLEETMQ_ADMIN_API_KEY: API_KEY, FLEETMQ_SECURITY_ALLOW_ANONYMOUS: 'false', RUST_LOG: 'info' },
    stdio: ['ignore', log, log],
  });
  let exited = null;
  proc.on('exit', (code) => { exited = code; });
  const base = `http://127.0.0.1:${admin}`;
  await eventually('fleetmq answers /health', async () => {
    if (exited !== null) throw new Error(`fleetmq exited with ${exited}; see ${name}-fleetmq.log`);
    return (await fetch(`${base}/health`)).ok;
  });
  const api = async (method, path, body, headers = {}) => {
    const res = await fetch(`${base}/api/v1${path}`, {
      method,
      headers: { 'x-api-key': API_KEY, ...(body ? { 'content-type': 'application/json' } : {}), ...headers },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
  return {
    admin: base, tcp, ws, api, proc,
    async stop() {
      if (exited === null) {
        proc.kill('SIGTERM');
        await eventually('fleetmq exits', () => exited !== null, 10000).catch(() => proc.kill('SIGKILL'));
      }
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** Saves a screenshot as `<name>.png` in the artifacts dir. */
export async function screenshot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Console errors and failed requests of a page, for the assertion messages. */
export function watchPage(page) {
  const problems = [];
  page.on('console', (msg) => { if (msg.type() === 'error') problems.push(`console: ${msg.text()}`); });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  return problems;
}
