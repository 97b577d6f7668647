// What a new operator hit on the dashboard (issue 18), in a real Chromium against the
// real fleetmq binary and a simulated device: full command ids with a copy button, one
// label syntax (`site=lab` and `site:lab` both filter; a bad filter lists nothing),
// charts whose default range fits the data with hover values and readable axes, the
// overview's uptime, last-hour trend (kept by the server) and live events of every
// kind (jobs too), the service-client form that says when it would create a deny-all client,
// and a connected client's detail: its subscriptions (with MQTT 5 options) and counters.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { join } from 'node:path';
import test from 'node:test';

import {
  API_KEY, ARTIFACTS, PATIENCE_MS, binary, eventually, launch, requirements, screenshot, startFleetmq, watchPage,
} from './lib/harness.mjs';

const DEVICE = 'op-0000';

async function signIn(page, url) {
  await page.goto(url);
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
}

/** Rendered size in CSS pixels of each axis label of the charts under `root`. */
function axisLabelPx(page, root) {
  return page.$$eval(`${root} svg.chart text.tick`, (texts) => texts.map((t) =>
    parseFloat(getComputedStyle(t).fontSize) * t.ownerSVGElement.getScreenCTM().a));
}

test('operator: ids, labels, charts, overview', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const fm = await startFleetmq('operator');
  t.after(() => fm.stop());
  assert.equal((await fm.api('POST', '/devices', { id: DEVICE, labels: { site: 'lab' } })).status, 201);
  assert.equal((await fm.api('POST', '/devices', { id: 'op-hq', labels: { site: 'hq' } })).status, 201);
  // Four commands queued for the offline device within a millisecond or so: their ids
  // share the time prefix, which is all the page used to show.
  const ids = [];
  for (let n = 0; n < 4; n += 1) {
    const sent = await fm.api('POST', '/devices/op-hq/commands', { type: `PING${n}` });
    assert.equal(sent.status, 202, JSON.stringify(sent.body));
    ids.push(sent.body.command_id);
  }
  const browser = await launch(chromium);
  t.after(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write']);
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);

  // Labels: `site=lab` and `site:lab` filter alike; a filter that is not a label lists
  // nothing and says why, never the unfiltered list.
  await signIn(page, `${fm.admin}/?poll_ms=600000#/devices`);
  await page.waitForSelector('#devices tr[data-device="op-hq"]');
  for (const filter of ['site=lab', 'site:lab', ' site = lab ']) {
    await page.fill('#label-filter', filter);
    await page.waitForSelector('#devices tr[data-device="op-hq"]', { state: 'detached' });
    await page.waitForSelector(`#devices tr[data-device="${DEVICE}"]`);
    await eventually(`"1 shown" for ${filter}`, async () => (await page.textContent('.panel .spread > .muted')).startsWith('1 shown'));
    assert.equal(await page.isVisible('#label-filter-error'), false);
    await page.fill('#label-filter', '');
    await page.waitForSelector('#devices tr[data-device="op-hq"]');
  }
  await page.fill('#label-filter', 'site');
  await page.waitForSelector('#label-filter-error:visible');
  assert.match(await page.textContent('#label-filter-error'), /key=value/);
  assert.equal(await page.locator('#devices tr[data-device]').count(), 0, 'a failed filter lists nothing');
  assert.equal(await page.textContent('.panel .spread > .muted'), 'filter not applied');
  await screenshot(page, 'operator-01-bad-filter');
  // Labels show as they are typed to provision.
  await page.fill('#label-filter', '');
  await page.waitForSelector('#devices tr[data-device="op-hq"] .label-chip:text("site=hq")');

  // Command ids: whole, and copied by their button.
  await page.goto(`${fm.admin}/?poll_ms=600000#/devices/op-hq`);
  await page.waitForSelector(`#commands tr[data-command="${ids[3]}"]`);
  for (const id of ids) {
    assert.equal(await page.textContent(`#commands tr[data-command="${id}"] code.id`), id);
  }
  await page.click(`#commands tr[data-command="${ids[2]}"] button.copy`);
  await eventually('the id is on the clipboard', async () =>
    (await page.evaluate(() => navigator.clipboard.readText())) === ids[2]);
  await screenshot(page, 'operator-02-command-ids');

  // Telemetry: a device that just started sending fills its charts' width.
  const simLog = openSync(join(ARTIFACTS, 'operator-device_sim.log'), 'w');
  const sim = spawn(binary('device_sim', true), ['--mqtt', `127.0.0.1:${fm.tcp}`, '--admin', fm.admin,
    '--api-key', API_KEY, '--count', '1', '--prefix', 'op-', '--telemetry-ms', '300'], { stdio: ['ignore', simLog, simLog] });
  t.after(() => sim.kill('SIGINT'));
  await eventually('telemetry stored', async () =>
    (await fm.api('GET', `/devices/${DEVICE}/telemetry?limit=5`)).body.items.length >= 5);
  await page.goto(`${fm.admin}/?poll_ms=600000#/devices/${DEVICE}`);
  await page.waitForSelector('#charts svg.chart path.line');
  assert.equal(await page.inputValue('#range'), 'fit', 'the default range fits the data');
  const span = await page.$eval('#charts', (el) => Number(el.dataset.to) - Number(el.dataset.from));
  assert.ok(span > 0 && span < 10 * 60e3, `the axis spans ${span} ms, not an hour`);
  // The line spans most of the chart, not its right edge.
  const widths = await page.$$eval('#charts svg.chart', (svgs) => svgs.map((svg) =>
    svg.querySelector('path.line').getBBox().width / svg.querySelector('.hover-area').getBBox().width));
  assert.ok(widths.some((w) => w > 0.5), `lines cover ${widths.join(', ')} of their charts`);
  const sizes = await axisLabelPx(page, '#charts');
  assert.ok(sizes.length > 0 && sizes.every((px) => px >= 11), `axis labels at ${sizes.join(', ')} px`);
  // Hover: the nearest point's value and time.
  const chart = page.locator('#charts svg.chart').first();
  const area = chart.locator('.hover-area');
  await area.scrollIntoViewIfNeeded();
  await eventually('a hover read-out', async () => {
    const box = await area.boundingBox();
    await page.mouse.move(box.x + box.width * 0.5, box.y + box.height / 2);
    await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2, { steps: 4 });
    return (await chart.locator('.tip').getAttribute('visibility')) === 'visible';
  });
  assert.ok(Number.isFinite(Number(await chart.getAttribute('data-hover-value'))));
  assert.notEqual((await chart.locator('.tip-time').textContent()).trim(), '');
  assert.notEqual((await chart.locator('.tip-value').textContent()).trim(), '');
  await screenshot(page, 'operator-03-chart-hover');

  // Overview: uptime in words, the last hour's trend from the server, live events of
  // every kind (here: the device coming online and a job).
  await page.goto(`${fm.admin}/?poll_ms=600000#/`);
  await page.waitForSelector('#stat-uptime .value');
  assert.match(await page.textContent('#stat-uptime .value'), /^\d+ (s|min)$/);
  await page.waitForSelector('#trend .chart-box[data-key="messages"] svg.chart');
  await page.waitForSelector('#trend .chart-box[data-key="connections"] svg.chart[data-points]');
  // A kind the panel used to leave out: a job cancelled.
  const job = await fm.api('POST', '/jobs', { name: 'op-job', target: { devices: ['op-hq'] }, command: { type: 'NOOP' } });
  assert.equal(job.status, 201, JSON.stringify(job.body));
  assert.equal((await fm.api('DELETE', `/jobs/${job.body.job_id}`)).status, 200);
  await page.waitForSelector('#live-events li[data-type="job.cancelled"]');
  await page.waitForSelector(`#live-events li[data-type="device.online"] a[href="#/devices/${DEVICE}"]`);
  const history = await fm.api('GET', '/stats/history');
  assert.equal(history.status, 200);
  assert.equal(history.body.interval_s, 60);
  assert.ok(history.body.points.length >= 1 && history.body.points.at(-1).connections >= 1, JSON.stringify(history.body));
  // A reload draws the same trend: it lives on the server.
  await page.reload();
  await page.waitForSelector('#trend .chart-box[data-key="connections"] svg.chart path.line, #trend .chart-box[data-key="connections"] svg.chart circle.last');
  const trendSizes = await axisLabelPx(page, '#trend');
  assert.ok(trendSizes.every((px) => px >= 11), `trend labels at ${trendSizes.join(', ')} px`);
  await screenshot(page, 'operator-04-overview');

  assert.deepEqual(problems.filter((p) => p.startsWith('page error')), []);
});

test('operator: a service client without rules is created only when confirmed', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const fm = await startFleetmq('operator-service-clients');
  t.after(() => fm.stop());
  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage();
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);
  await signIn(page, `${fm.admin}/?poll_ms=600000#/service-clients`);
  await page.waitForSelector('#service-clients td.empty');

  // The placeholder does not look like rules; the example is shown as an example.
  const placeholder = await page.getAttribute('#service-client-form textarea[name=rules]', 'placeholder');
  assert.doesNotMatch(placeholder, /^\s*\[/);
  assert.match(await page.textContent('#rules-example'), /"allow":true/);
  assert.match(await page.textContent('#rules-warning'), /deny all/);

  await page.fill('#service-client-form input[name=name]', 'backend');
  await page.fill('#service-client-form input[name=password]', 'backend-password');
  // Declined: nothing created.
  const dialogs = [];
  page.once('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  await page.click('#service-client-form button[type=submit]');
  await page.getByText('Not created').waitFor();
  assert.match(dialogs[0], /deny all/);
  assert.equal((await fm.api('GET', '/service-clients')).body.items.length, 0);
  // Confirmed: created, and the page says it is denied everything.
  page.once('dialog', (d) => d.accept());
  await page.click('#service-client-form button[type=submit]');
  await page.getByText('with no rules: it is denied everything').waitFor();
  assert.deepEqual((await fm.api('GET', '/service-clients')).body.items.map((c) => c.rules), [[]]);

  // With the example's rules no question is asked.
  await page.fill('#service-client-form input[name=name]', 'reader');
  await page.fill('#service-client-form input[name=password]', 'reader-password');
  await page.click('#use-example');
  assert.equal(await page.isVisible('#rules-warning'), false);
  page.once('dialog', () => assert.fail('no confirmation expected with rules'));
  await page.click('#service-client-form button[type=submit]');
  await page.waitForSelector('#service-clients tr[data-name="reader"]');
  await screenshot(page, 'operator-05-service-clients');
  assert.deepEqual(problems.filter((p) => p.startsWith('page error')), []);
});

/** An MQTT.js client over TCP (Node), connected; null when the package is missing. */
async function mqttClient(port, options) {
  let mqtt;
  try {
    mqtt = (await import('mqtt')).default;
  } catch {
    return null;
  }
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, ...options });
  await new Promise((ok, fail) => { client.once('connect', ok); client.once('error', fail); });
  return client;
}

test('operator: a client page shows its subscriptions and counters; a device page its own', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const fm = await startFleetmq('operator-client-detail');
  t.after(() => fm.stop());
  const rules = [{ action: 'subscribe', topic: 'device/+/telemetry', allow: true }];
  assert.equal((await fm.api('POST', '/service-clients', { name: 'reader', password: 'reader-password', rules })).status, 201);
  const made = await fm.api('POST', '/devices', { id: DEVICE });
  assert.equal(made.status, 201);
  const reader = await mqttClient(fm.tcp, { clientId: 'reader-1', username: 'reader', password: 'reader-password', protocolVersion: 5 });
  if (!reader) {
    if (process.env.CI === 'true') throw new Error('npm package mqtt is missing (npm ci in tests/browser)');
    t.skip('npm package mqtt is missing');
    return;
  }
  t.after(() => reader.end(true));
  await reader.subscribeAsync('$share/workers/device/+/telemetry', { qos: 1, properties: { subscriptionIdentifier: 7 } });
  const device = await mqttClient(fm.tcp, { clientId: DEVICE, username: DEVICE, password: made.body.credentials.password });
  t.after(() => device.end(true));
  await device.subscribeAsync(`device/${DEVICE}/command`, { qos: 1 });

  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);
  await signIn(page, `${fm.admin}/?poll_ms=600000#/clients`);
  await page.click('#clients tr[data-client="reader-1"] a');
  const row = page.locator('#client-subscriptions tr[data-filter="$share/workers/device/+/telemetry"]');
  await row.waitFor();
  const cells = await row.locator('td').allTextContents();
  assert.deepEqual(cells, ['$share/workers/device/+/telemetry', '1', 'no', 'no', 'send', '7', 'workers']);
  assert.match(await page.textContent('#client-info'), /MQTT 5 over tcp/);
  assert.match(await page.textContent('#client-counters'), /messages in \/ out/);
  await screenshot(page, 'operator-06-client');

  // A device's row links to its device page, whose Device panel shows the connection.
  await page.goto(`${fm.admin}/?poll_ms=600000#/clients`);
  await page.click(`#clients tr[data-client="${DEVICE}"] a[href="#/devices/${DEVICE}"]`);
  await page.waitForSelector(`#device-subscriptions tr[data-filter="device/${DEVICE}/command"]`);
  assert.deepEqual(problems.filter((p) => p.startsWith('page error')), []);
});
