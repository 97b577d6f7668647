// The dashboard's Webhooks page in a real Chromium against the real fleetmq binary:
// create, edit, disable and delete an endpoint from the page; deliveries to a URL
// nobody answers show `failed` (attempted) and `pending` (queued behind it, never
// attempted), and the retry-now and discard buttons act on them.

import assert from 'node:assert/strict';
import test from 'node:test';

import {
  API_KEY, PATIENCE_MS, eventually, freePort, launch, requirements, screenshot, startFleetmq, watchPage,
} from './lib/harness.mjs';

test('webhooks page: endpoints managed, deliveries pending/failed, retry and discard', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const fm = await startFleetmq('webhooks');
  t.after(() => fm.stop());
  // Nobody listens there: every attempt fails at once.
  const dead = `http://127.0.0.1:${await freePort()}/hook`;
  assert.equal((await fm.api('POST', '/devices', { id: 'wh-dev' })).status, 201);

  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);
  page.on('dialog', (d) => d.accept());
  await page.goto(`${fm.admin}/?poll_ms=600000#/webhooks`);
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#webhooks td.empty');

  // Create from the form.
  await page.fill('#webhook-form input[name=url]', dead);
  await page.fill('#webhook-form input[name=secret]', 'ui-secret');
  await page.fill('#webhook-form input[name=events]', 'command.cancelled, device.*');
  await page.click('#webhook-submit');
  const row = page.locator('#webhooks tr[data-source="api"]');
  await row.waitFor();
  const id = await row.getAttribute('data-webhook');
  const created = (await fm.api('GET', `/webhooks/${id}`)).body;
  assert.deepEqual(created.events, ['command.cancelled', 'device.*']);
  assert.equal(created.enabled, true);
  assert.equal(await page.isChecked('#webhook-form input[name=enabled]'), true, 'the reset form creates enabled ones');
  assert.equal(created.secret, undefined);

  // Two events for it: the first fails at the dead URL, the second waits behind it.
  for (const n of [1, 2]) {
    const cmd = await fm.api('POST', '/devices/wh-dev/commands', { type: `PING${n}` });
    assert.equal(cmd.status, 202, JSON.stringify(cmd.body));
    assert.equal((await fm.api('DELETE', `/commands/${cmd.body.command_id}`)).status, 200);
  }
  await eventually('one failed, one pending', async () => {
    const page1 = (await fm.api('GET', `/webhooks/deliveries?webhook=${id}`)).body;
    return page1.items.map((d) => d.status).join() === 'failed,pending';
  });
  await page.click('#webhooks [data-action="deliveries"]');
  const failed = page.locator('#deliveries tr[data-status="failed"]');
  const pending = page.locator('#deliveries tr[data-status="pending"]');
  await failed.waitFor();
  await pending.waitFor();
  assert.equal(await pending.locator('.badge').textContent(), 'pending');
  await screenshot(page, 'webhooks-01-deliveries');

  // Discard the pending one; retry the failed one (it fails again: still owed).
  const pendingId = await pending.getAttribute('data-delivery');
  await pending.locator('[data-action="discard"]').click();
  await page.waitForSelector(`#deliveries tr[data-delivery="${pendingId}"]`, { state: 'detached' });
  assert.equal((await fm.api('GET', '/stats')).body.webhooks.discarded, 1);
  const failedId = await failed.getAttribute('data-delivery');
  await failed.locator('[data-action="retry"]').click();
  await page.getByText(`delivery ${failedId} is due now`).waitFor();

  // Edit the events, then disable and delete from the page.
  await row.locator('[data-action="edit"]').click();
  await page.fill('#webhook-form input[name=events]', 'device.online');
  await page.click('#webhook-submit');
  await eventually('the edit saved', async () =>
    (await fm.api('GET', `/webhooks/${id}`)).body.events?.join() === 'device.online');
  await row.locator('[data-action="toggle"]').click();
  await page.waitForSelector(`#webhooks tr[data-webhook="${id}"][data-enabled="false"]`);
  await row.locator('[data-action="delete"]').click();
  await page.waitForSelector(`#webhooks tr[data-webhook="${id}"]`, { state: 'detached' });
  assert.equal((await fm.api('GET', `/webhooks/${id}`)).status, 404);
  await screenshot(page, 'webhooks-02-deleted');
  assert.deepEqual(problems.filter((p) => !p.includes('404')), []);
});
