// The dashboard in a real Chromium against the real fleetmq binary and a simulated
// device: sign in, see the device come online, send a command to `completed`, change
// its config and see the device apply it, then the other pages. Screenshots go to
// target/browser-artifacts/.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { join } from 'node:path';
import test from 'node:test';

import {
  API_KEY, ARTIFACTS, PATIENCE_MS, binary, eventually, launch, requirements, screenshot, startFleetmq, watchPage,
} from './lib/harness.mjs';

const DEVICE = 'dash-0000';

/**
 * Whether the server has `GET /api/v1/events`. A missing route answers at once; a
 * stream may hold its headers back until its first frame, so no answer in time means
 * it is there.
 */
async function hasEventStream(fm) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 3000);
  try {
    const res = await fetch(`${fm.admin}/api/v1/events`, { headers: { 'x-api-key': API_KEY }, signal: abort.signal });
    return res.status !== 404;
  } catch (err) {
    if (err.name === 'AbortError') return true;
    throw err;
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}

test('dashboard: sign in, device online live, command completed, config applied', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const fm = await startFleetmq('dashboard');
  t.after(() => fm.stop());

  // Pages must not reload by polling during the test: only events can show the device
  // online or the command completed. (The polling fallback: live.test.mjs.)
  const live = await hasEventStream(fm);
  assert.ok(live, 'GET /api/v1/events answers 404');
  const pollMs = 600000;

  const created = await fm.api('POST', '/devices', { id: DEVICE, labels: { site: 'lab' } });
  assert.equal(created.status, 201, JSON.stringify(created.body));

  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);

  // Sign in: a wrong key is refused, the right one opens the device page.
  await page.goto(`${fm.admin}/?poll_ms=${pollMs}#/devices/${DEVICE}`);
  await page.fill('#signin input[name=api_key]', 'not-the-key');
  await page.click('#signin button[type=submit]');
  await page.getByText('That key was not accepted.').waitFor();
  await screenshot(page, 'dashboard-01-signin');
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#presence[data-online="false"]');
  await page.waitForSelector('#live[data-live="live"]');
  await screenshot(page, 'dashboard-02-device-offline');

  // The simulated device comes online (it refreshes the credentials it uses itself).
  const simLog = openSync(join(ARTIFACTS, 'dashboard-device_sim.log'), 'w');
  const sim = spawn(binary('device_sim', true), ['--mqtt', `127.0.0.1:${fm.tcp}`, '--admin', fm.admin,
    '--api-key', API_KEY, '--count', '1', '--prefix', 'dash-', '--telemetry-ms', '300',
    '--reply-latency-ms', '100', '--version', '2.3.4'], { stdio: ['ignore', simLog, simLog] });
  t.after(() => sim.kill('SIGINT'));
  await page.waitForSelector('#presence[data-online="true"]');
  // Only the event stream tells when the device came online.
  await page.waitForSelector('#presence-history li[data-type="device.online"]');
  await screenshot(page, 'dashboard-03-device-online');

  // A command, watched to its terminal state.
  await page.fill('#send-command input[name=type]', 'REBOOT');
  await page.fill('#send-command textarea[name=params]', '{"delay_s": 1}');
  await page.fill('#send-command textarea[name=metadata]', '{"job_id": "browser-1"}');
  await page.click('#send-command button[type=submit]');
  await page.waitForSelector('#watch [data-status="completed"]');
  await page.waitForSelector('#commands tr[data-status="completed"]');
  const commands = await fm.api('GET', `/devices/${DEVICE}/commands`);
  assert.equal(commands.body.items[0].status, 'completed');
  assert.deepEqual(commands.body.items[0].metadata, { job_id: 'browser-1' });
  await screenshot(page, 'dashboard-04-command-completed');

  // Config: version 1 is saved, then reported by the device once it applied it.
  await page.fill('#config-editor', '{"sample_ms": 250, "mode": "eco"}');
  await page.click('#config-form button[type=submit]');
  await eventually('config version 1 shown', async () => (await page.textContent('#config-version')) === '1');
  await eventually('reported config version 1 shown', async () => (await page.textContent('#config-reported')) === '1');
  const config = await fm.api('GET', `/devices/${DEVICE}/config`);
  assert.deepEqual(config.body.config, { sample_ms: 250, mode: 'eco' });
  assert.equal(config.body.reported_version, 1);

  // Telemetry: the sim's numeric keys get a chart each.
  await page.selectOption('#range', '15m');
  await page.waitForSelector('#charts svg.chart path.line');
  await page.waitForSelector('#reported-version:text("2.3.4")');
  await screenshot(page, 'dashboard-05-config-and-telemetry');

  // Overview, devices (label filter), clients, webhooks.
  await page.goto(`${fm.admin}/?poll_ms=1000#/`);
  await page.waitForSelector('#stat-online .value');
  await screenshot(page, 'dashboard-06-overview');
  await page.click('nav a[href="#/devices"]');
  await page.waitForSelector(`#devices tr[data-device="${DEVICE}"] td:text("2.3.4")`);
  await page.fill('#label-filter', 'site:elsewhere');
  await page.waitForSelector(`#devices tr[data-device="${DEVICE}"]`, { state: 'detached' });
  await page.fill('#label-filter', 'site:lab');
  await page.waitForSelector(`#devices tr[data-device="${DEVICE}"]`);
  // Provision from the UI: the token is shown once.
  await page.fill('#provision input[name=id]', 'ui-made-1');
  await page.fill('#provision input[name=labels]', 'site=lab, rack=7');
  await page.click('#provision button[type=submit]');
  await page.waitForSelector('#provision [data-secret] code[data-field=password]');
  assert.equal((await fm.api('GET', '/devices/ui-made-1')).body.labels.rack, '7');
  await screenshot(page, 'dashboard-07-devices');
  await page.click('nav a[href="#/clients"]');
  await page.waitForSelector('#clients tr[data-client]');
  await screenshot(page, 'dashboard-08-clients');
  await page.click('nav a[href="#/webhooks"]');
  await page.waitForSelector('#deliveries tbody tr');
  await page.click('nav a[href="#/service-clients"]');
  await page.waitForSelector('#service-clients tbody tr');
  await page.click('nav a[href="#/clients"]');

  // Rotate credentials (this disconnects the device): the new token is shown once.
  await page.click(`#clients a[href="#/devices/${DEVICE}"]`);
  page.once('dialog', (d) => d.accept());
  await page.click('#rotate-credentials');
  await page.waitForSelector('[data-secret] code[data-field=password]');
  await page.waitForSelector('#presence[data-online="false"]');
  await screenshot(page, 'dashboard-09-rotated');

  // A 401 (here: a key that stopped being valid) sends the user back to sign-in.
  // The page polls every second here, so a poll may hit the 401 (and replace the nav with
  // sign-in) before a click on the nav could land: navigate by the hash instead.
  await page.evaluate(() => {
    sessionStorage.setItem('fleetmq.apiKey', 'revoked');
    location.hash = '#/devices';
  });
  await page.waitForSelector('#signin');
  await screenshot(page, 'dashboard-10-signed-out');

  const pageErrors = problems.filter((p) => p.startsWith('page error'));
  assert.deepEqual(pageErrors, []);
});

// The browser side of the live path on its own: the real server for everything but the
// event stream, which is scripted here. With polling off, only an event can show the
// device online.
test('dashboard: an event on the stream reloads the device page (polling off)', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const { default: mqtt } = await import('mqtt');
  const fm = await startFleetmq('dashboard-live');
  t.after(() => fm.stop());
  const id = 'live-1';
  const created = await fm.api('POST', '/devices', { id });
  assert.equal(created.status, 201);

  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage();
  page.setDefaultTimeout(PATIENCE_MS);
  let online = null;
  const streams = [];
  await page.route('**/api/v1/events*', (route) => {
    const headers = route.request().headers();
    streams.push({ key: headers['x-api-key'], lastEventId: headers['last-event-id'] });
    const frames = online
      ? `id: 7\nevent: device.online\ndata: ${JSON.stringify(online)}\n\n`
      : ': keepalive\n\n';
    return route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body: frames });
  });
  await page.goto(`${fm.admin}/?poll_ms=600000#/devices/${id}`);
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#presence[data-online="false"]');

  const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${fm.tcp}`,
    { clientId: id, username: id, password: created.body.credentials.password, reconnectPeriod: 0 });
  t.after(() => device.endAsync());
  online = { id: '7', type: 'device.online', at: new Date().toISOString(), device_id: id, data: {} };
  await page.waitForSelector('#presence[data-online="true"]');
  await page.waitForSelector('#presence-history li[data-type="device.online"]', { state: 'attached' });
  assert.ok(streams.every((s) => s.key === API_KEY), 'the stream is asked with the key');
  assert.ok(streams.some((s) => s.lastEventId === undefined));
  await screenshot(page, 'dashboard-live-scripted-stream');
});

// What a device publishes on `device/{id}/events` shows on its page as it happens: the
// real event stream with polling off, so only `device.event` can add the row.
test('dashboard: the device page lists the device\'s own events live', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const { default: mqtt } = await import('mqtt');
  const fm = await startFleetmq('dashboard-device-events');
  t.after(() => fm.stop());
  const id = 'events-1';
  const created = await fm.api('POST', '/devices', { id });
  assert.equal(created.status, 201);

  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage();
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);
  await page.goto(`${fm.admin}/?poll_ms=600000#/devices/${id}`);
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#device-events td.empty');

  const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${fm.tcp}`,
    { clientId: id, username: id, password: created.body.credentials.password, reconnectPeriod: 0 });
  t.after(() => device.endAsync());
  await page.waitForSelector('#presence[data-online="true"]');
  await device.publishAsync(`device/${id}/events`, JSON.stringify({ type: 'door_open', door: 2 }), { qos: 1 });
  const row = await page.waitForSelector('#device-events tr[data-type="door_open"]');
  assert.match(await row.textContent(), /"door":2/);
  assert.equal(await page.locator('#presence-history li[data-type="device.event"]').count(), 0,
    'a device event is not a presence change');
  // (A device without config answers 404 to its config, which the console logs.)
  assert.deepEqual(problems.filter((p) => p.startsWith('page error')), []);
  await screenshot(page, 'dashboard-device-events');
});
