// The dashboard's Alarms page in a real Chromium against the real fleetmq binary: a
// rule created in the editor raises an alarm from a real MQTT device's telemetry; it is
// listed active first in its severity colour, filtered, acknowledged from the page, and
// shown on the device page.

import assert from 'node:assert/strict';
import test from 'node:test';

import {
  API_KEY, PATIENCE_MS, eventually, launch, requirements, screenshot, startFleetmq, watchPage,
} from './lib/harness.mjs';

test('alarms page: rule editor, active alarm in colour, filters, acknowledge, device page', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const mqtt = await import('mqtt');
  const fm = await startFleetmq('alarms');
  t.after(() => fm.stop());
  const created = await fm.api('POST', '/devices', { id: 'al-dev' });
  assert.equal(created.status, 201);

  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);
  page.on('dialog', (d) => d.accept());
  await page.goto(`${fm.admin}/?poll_ms=600000#/alarms`);
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#alarm-rules td.empty');

  // A rule from the editor: temp > 80 for 10 s of telemetry time, on one device.
  await page.fill('#rule-form input[name=name]', 'overheat');
  await page.selectOption('#rule-form select[name=severity]', 'critical');
  await page.selectOption('#rule-form select[name=target_kind]', 'devices');
  await page.fill('#rule-form input[name=target]', 'al-dev');
  await page.fill('#rule-form input[name=key]', 'temp');
  await page.selectOption('#rule-form select[name=op]', '>');
  await page.fill('#rule-form input[name=value]', '80');
  await page.fill('#rule-form input[name=for_s]', '10');
  await page.click('#rule-submit');
  await page.locator('#alarm-rules tr[data-rule]').waitFor();
  const rules = (await fm.api('GET', '/alarm-rules')).body.items;
  assert.equal(rules.length, 1);
  assert.deepEqual(rules[0].condition, { key: 'temp', op: '>', value: 80, for_s: 10 });
  assert.deepEqual(rules[0].target, { devices: ['al-dev'] });

  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${fm.tcp}`, {
    clientId: 'al-dev', username: 'al-dev', password: created.body.credentials.password, reconnectPeriod: 0,
  });
  t.after(() => client.end(true));
  const t0 = Date.now() - 3600e3;
  for (const [s, temp] of [[0, 85], [10, 90]]) {
    await client.publishAsync('device/al-dev/telemetry', JSON.stringify({ temp, ts: t0 + s * 1000 }), { qos: 1 });
  }
  // A device-reported warning too, so there is something to filter out.
  await client.publishAsync('device/al-dev/events', JSON.stringify({ type: 'alarm.raised', name: 'door', severity: 'warning' }), { qos: 1 });

  // The live stream reloads the page on alarm events.
  const active = page.locator('#alarms tr[data-status="active"]');
  await eventually('two active alarms shown', async () => (await active.count()) === 2);
  const critical = page.locator('#alarms tr[data-status="active"]:has([data-severity="critical"])');
  assert.equal(await critical.count(), 1);
  const colour = await critical.locator('.badge.sev-critical').evaluate((el) => getComputedStyle(el).backgroundColor);
  assert.notEqual(colour, 'rgba(0, 0, 0, 0)', 'critical has a colour of its own');

  await page.selectOption('#alarm-severity', 'warning');
  await eventually('only the warning', async () => (await page.locator('#alarms tr[data-alarm]').count()) === 1
    && (await page.locator('#alarms [data-severity="warning"]').count()) === 1);
  await page.selectOption('#alarm-severity', '');
  await eventually('both again', async () => (await page.locator('#alarms tr[data-alarm]').count()) === 2);

  await critical.locator('[data-action="ack"]').click();
  await eventually('acknowledged in the API', async () => {
    const listed = (await fm.api('GET', '/alarms?severity=critical')).body.items;
    return listed.length === 1 && listed[0].acknowledged;
  });
  await page.locator('#alarms tr[data-acknowledged="true"]').waitFor();

  await page.goto(`${fm.admin}/?poll_ms=600000#/devices/al-dev`);
  await eventually('alarms on the device page', async () => (await page.locator('#device-alarms tr[data-alarm]').count()) === 2);
  await screenshot(page, 'alarms-device');
  // A 404 is the browser asking for /favicon.ico.
  assert.deepEqual(problems.filter((p) => !p.includes('404')), []);
});
