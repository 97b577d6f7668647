// MQTT.js (the npm `mqtt` package's browser bundle) in a real Chromium, connecting to
// fleetmq's WebSocket listener as a provisioned device with MQTT 3.1.1 and 5: it gets a
// command sent through the admin API and answers it; the API shows it `completed`.

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import test from 'node:test';

import { PATIENCE_MS, launch, requirements, screenshot, startFleetmq } from './lib/harness.mjs';

const PAGE = `<!doctype html><meta charset="utf-8"><title>MQTT.js device</title>
<script src="/mqtt.min.js"></script><pre id="log"></pre>`;

/** `node_modules/mqtt/dist/mqtt.min.js`, or null when the package is not installed. */
function mqttBundle() {
  try {
    const main = createRequire(import.meta.url).resolve('mqtt');
    let dir = dirname(main);
    while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
    return readFileSync(join(dir, 'dist', 'mqtt.min.js'));
  } catch {
    return null;
  }
}

/** The test's own static server: the page and the bundle, nothing else. */
async function staticServer(bundle) {
  const server = createServer((req, res) => {
    if (req.url === '/') res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
    else if (req.url === '/mqtt.min.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
    else res.writeHead(404).end();
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => server.close() };
}

test('MQTT.js over WebSocket answers a command, MQTT 3.1.1 and 5', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const bundle = mqttBundle();
  if (!bundle) {
    if (process.env.CI === 'true') throw new Error('npm package mqtt is missing (npm ci in tests/browser)');
    t.skip('npm package mqtt is missing');
    return;
  }
  const fm = await startFleetmq('mqtt_ws');
  t.after(() => fm.stop());
  const site = await staticServer(bundle);
  t.after(() => site.close());
  const browser = await launch(chromium);
  t.after(() => browser.close());

  for (const protocolVersion of [4, 5]) {
    await t.test(`protocolVersion ${protocolVersion}`, async () => {
      const id = `mqttjs-v${protocolVersion}`;
      const created = await fm.api('POST', '/devices', { id });
      assert.equal(created.status, 201);
      const { password } = created.body.credentials;
      const page = await browser.newPage();
      page.setDefaultTimeout(PATIENCE_MS);
      await page.goto(site.url);

      const granted = await page.evaluate(async ({ url, id, password, protocolVersion }) => {
        const log = (line) => { document.getElementById('log').textContent += `${line}\n`; };
        const client = mqtt.connect(url, {
          clientId: id, username: id, password, protocolVersion, reconnectPeriod: 0, connectTimeout: 10000, clean: true,
        });
        await new Promise((ok, fail) => { client.once('connect', ok); client.once('error', fail); });
        log(`connected with MQTT ${protocolVersion === 5 ? '5' : '3.1.1'}`);
        window.received = [];
        client.on('message', (topic, payload) => {
          const command = JSON.parse(payload.toString());
          window.received.push({ topic, command });
          log(`command ${command.type} ${command.commandId}`);
          const answer = { commandId: command.commandId, success: true, result: { by: 'mqtt.js', protocolVersion } };
          client.publish(`device/${id}/response`, JSON.stringify(answer), { qos: 1 });
        });
        const own = await client.subscribeAsync(`device/${id}/command`, { qos: 1 });
        // Another device's commands are refused (SUBACK 0x80; v5 0x87).
        // MQTT.js rejects a refused subscription; the SUBACK it got rides on the error.
        let other;
        try {
          other = (await client.subscribeAsync('device/someone-else/command', { qos: 1 })).map((g) => g.qos);
        } catch (err) {
          other = err.packet?.granted ?? [err.message];
        }
        window.client = client;
        return { own: own.map((g) => g.qos), other };
      }, { url: `ws://127.0.0.1:${fm.ws}/mqtt`, id, password, protocolVersion });
      assert.deepEqual(granted.own, [1]);
      assert.deepEqual(granted.other, [protocolVersion === 5 ? 0x87 : 0x80]);

      const clients = await fm.api('GET', '/clients');
      const me = clients.body.items.find((c) => c.client_id === id);
      assert.equal(me?.transport, 'ws');
      assert.equal(me?.protocol, protocolVersion === 5 ? '5' : '3.1.1');

      const sent = await fm.api('POST', `/devices/${id}/commands?wait_ms=${PATIENCE_MS}`,
        { type: 'RELOAD', params: { from: 'browser-test' }, metadata: { job_id: `ws-${protocolVersion}` } });
      assert.equal(sent.status, 200, JSON.stringify(sent.body));
      assert.equal(sent.body.status, 'completed');
      assert.deepEqual(sent.body.result, { by: 'mqtt.js', protocolVersion });
      const record = await fm.api('GET', `/commands/${sent.body.command_id}`);
      assert.equal(record.body.status, 'completed');

      const received = await page.evaluate(() => window.received);
      assert.equal(received.length, 1);
      assert.equal(received[0].topic, `device/${id}/command`);
      assert.equal(received[0].command.commandId, sent.body.command_id);
      assert.deepEqual(received[0].command.params, { from: 'browser-test' });
      await screenshot(page, `mqtt_ws-v${protocolVersion}`);
      await page.evaluate(() => window.client.endAsync());
      await page.close();
    });
  }
});
