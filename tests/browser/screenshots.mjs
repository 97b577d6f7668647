// Regenerates the dashboard screenshots in docs/screenshots/ (run by hand, not a test):
//
//   cargo build --bin fleetmq --example device_sim
//   cd tests/browser && npm ci && node screenshots.mjs
//
// A real fleetmq binary with a temp data dir, three simulated devices sending telemetry,
// a few commands, a webhook to a URL nobody answers (so the Webhooks page has failed and
// pending deliveries), a few retained messages, then headless Chromium at 1280 px: the
// overview, a device page, a device's connection (client page), the webhooks page and
// the topics page (a retained message opened, a live subscription to the devices'
// telemetry). Review the PNGs before committing them. `SCREENSHOTS_ONLY=topics,device`
// takes only those pages.

import { spawn } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';

import {
  API_KEY, ARTIFACTS, PATIENCE_MS, REPO, binary, eventually, freePort, launch, sleep, startFleetmq,
} from './lib/harness.mjs';

const OUT = process.env.SCREENSHOTS_DIR || join(REPO, 'docs', 'screenshots');
const DEVICE = 'shot-0000';
const ONLY = (process.env.SCREENSHOTS_ONLY || '').split(',').map((p) => p.trim()).filter(Boolean);
const wanted = (name) => ONLY.length === 0 || ONLY.includes(name);

const { chromium } = await import('playwright-core');
mkdirSync(OUT, { recursive: true });
const fm = await startFleetmq('screenshots');
const cleanup = [() => fm.stop()];
try {
  for (let n = 0; n < 3; n += 1) {
    const id = `shot-000${n}`;
    const made = await fm.api('POST', '/devices', { id, labels: { site: n === 2 ? 'hq' : 'lab' } });
    if (made.status !== 201) throw new Error(`provisioning ${id}: ${JSON.stringify(made.body)}`);
  }
  const hook = await fm.api('POST', '/webhooks',
    { url: `http://127.0.0.1:${await freePort()}/hook`, secret: 'screenshot', events: ['command.*'] });
  if (hook.status !== 201) throw new Error(`webhook: ${JSON.stringify(hook.body)}`);
  const retained = [
    { topic: 'site/lab/status', payload: { state: 'open', staff: 3, since: '2026-01-05T07:30:00Z' } },
    { topic: 'site/hq/status', payload: { state: 'closed' } },
    { topic: 'site/hq/banner', payload: 'Maintenance window: Sunday 02:00-04:00 UTC' },
    { topic: 'site/lab/calibration', payload_base64: 'AQIDBAUGBwgJCgsMDQ4PEA==' },
  ];
  for (const msg of retained) {
    const sent = await fm.api('POST', '/publish', { qos: 1, retain: true, ...msg });
    if (sent.status !== 202) throw new Error(`retained ${msg.topic}: ${JSON.stringify(sent.body)}`);
  }

  const log = openSync(join(ARTIFACTS, 'screenshots-device_sim.log'), 'w');
  const sim = spawn(binary('device_sim', true), ['--mqtt', `127.0.0.1:${fm.tcp}`, '--admin', fm.admin,
    '--api-key', API_KEY, '--count', '2', '--prefix', 'shot-', '--telemetry-ms', '1000',
    '--reply-latency-ms', '100', '--version', '2.3.4'], { stdio: ['ignore', log, log] });
  cleanup.unshift(() => sim.kill('SIGINT'));
  await eventually('telemetry stored', async () =>
    (await fm.api('GET', `/devices/${DEVICE}/telemetry?limit=20`)).body.items.length >= 20, 60000);
  for (const type of ['REBOOT', 'PING', 'SET_INTERVAL']) {
    await fm.api('POST', `/devices/${DEVICE}/commands`, { type, params: {} });
  }
  // Two commands for the offline device, cancelled: deliveries queued behind the dead URL.
  for (const type of ['PING', 'RELOAD']) {
    const sent = await fm.api('POST', '/devices/shot-0002/commands', { type });
    await fm.api('DELETE', `/commands/${sent.body.command_id}`);
  }
  await sleep(3000);

  const browser = await launch(chromium);
  cleanup.unshift(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(PATIENCE_MS);
  await page.goto(`${fm.admin}/#/`);
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#trend svg.chart');
  if (wanted('overview')) {
    // The live panel shows what happens while the page is open.
    await fm.api('POST', `/devices/${DEVICE}/commands`, { type: 'PING' });
    await page.waitForSelector('#live-events li[data-type]');
    await sleep(2500); // two rate samples for the cards
    await page.screenshot({ path: join(OUT, 'overview.png'), fullPage: true });
  }

  if (wanted('device')) {
    await page.goto(`${fm.admin}/#/devices/${DEVICE}`);
    await page.waitForSelector('#charts svg.chart path.line');
    await page.waitForSelector('#commands tr[data-status="completed"]');
    const area = page.locator('#charts svg.chart .hover-area').first();
    await area.scrollIntoViewIfNeeded();
    const box = await area.boundingBox();
    await page.mouse.move(box.x + box.width * 0.7, box.y + box.height / 2, { steps: 3 });
    await page.screenshot({ path: join(OUT, 'device.png'), fullPage: true });
  }

  if (wanted('client')) {
    await page.goto(`${fm.admin}/#/clients/${DEVICE}`);
    await page.waitForSelector('#client-subscriptions tr[data-filter]');
    await page.screenshot({ path: join(OUT, 'client.png'), fullPage: true });
  }

  if (wanted('webhooks')) {
    await page.goto(`${fm.admin}/#/webhooks`);
    await page.waitForSelector('#deliveries tr[data-status="pending"]');
    await page.screenshot({ path: join(OUT, 'webhooks.png'), fullPage: true });
  }

  if (wanted('topics')) {
    await page.goto(`${fm.admin}/#/topics`);
    await page.locator('#retained tr[data-topic="site/lab/status"] [data-action="view"]').click();
    await page.fill('#live-filter', 'device/+/telemetry');
    await page.click('#live-start');
    await eventually('live telemetry rows', async () =>
      (await page.locator('#live-messages tbody tr').count()) >= 4, PATIENCE_MS);
    await page.click('#live-stop');
    await page.screenshot({ path: join(OUT, 'topics.png'), fullPage: true });
  }
  console.log(`screenshots written to ${OUT}`);
} finally {
  for (const step of cleanup) await step();
}
