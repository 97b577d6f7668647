// The Keys and Audit pages in a real Chromium against the real fleetmq binary: create a
// viewer key (its secret shown once), sign in with it and be refused a change, revoke
// it, and see all of that in the audit log.

import assert from 'node:assert/strict';
import test from 'node:test';

import { API_KEY, PATIENCE_MS, eventually, launch, requirements, screenshot, startFleetmq, watchPage } from './lib/harness.mjs';

test('dashboard: API keys are created, used, revoked, and audited', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const fm = await startFleetmq('keys');
  t.after(() => fm.stop());
  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);

  await page.goto(`${fm.admin}/?poll_ms=600000#/keys`);
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#keys tr[data-key="config"][data-role="admin"]');

  await page.fill('#key-form input[name=name]', 'wall-screen');
  await page.selectOption('#key-form select[name=role]', 'viewer');
  await page.click('#key-form button[type=submit]');
  const secret = await page.textContent('#key-created [data-secret] code[data-field=secret]');
  assert.match(secret, /^[0-9a-f]{64}$/);
  await page.waitForSelector('#keys tr[data-key="wall-screen"][data-role="viewer"]');
  await screenshot(page, 'keys-01-created');
  const listed = await fm.api('GET', '/keys');
  assert.ok(!JSON.stringify(listed.body).includes(secret), 'the secret is not listed');

  // The viewer key reads, and is refused a change with the API's message.
  const asViewer = await fm.api('POST', '/devices', { id: 'from-viewer' }, { 'x-api-key': secret });
  assert.equal(asViewer.status, 403);

  page.once('dialog', (d) => d.accept());
  await page.click('#keys tr[data-key="wall-screen"] button.danger');
  await page.waitForSelector('#keys tr[data-key="wall-screen"]', { state: 'detached' });
  assert.equal((await fm.api('GET', '/stats', undefined, { 'x-api-key': secret })).status, 401);

  await page.click('nav a[href="#/audit"]');
  await eventually('the revocation is in the audit log', async () => {
    await page.evaluate(() => { location.hash = '#/keys'; location.hash = '#/audit'; });
    return (await page.$('#audit tr[data-method="DELETE"][data-status="204"]')) !== null;
  });
  await page.waitForSelector('#audit tr[data-method="POST"][data-status="403"]');
  const first = await page.textContent('#audit tbody tr:first-child');
  assert.match(first, /config.*DELETE.*\/api\/v1\/keys\/\{name\}.*wall-screen.*204/);
  await screenshot(page, 'keys-02-audit');
  assert.deepEqual(problems.filter((p) => p.startsWith('page error')), []);
});
