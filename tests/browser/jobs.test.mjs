// The dashboard's Jobs page in a real Chromium against the real fleetmq binary: a job
// started from the form (its target count previewed), its progress bar by state, the
// failed-devices panel, and cancel.

import assert from 'node:assert/strict';
import test from 'node:test';

import {
  API_KEY, PATIENCE_MS, eventually, launch, requirements, screenshot, startFleetmq, watchPage,
} from './lib/harness.mjs';

test('jobs page: start from the form, progress by state, failed devices, cancel', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const fm = await startFleetmq('jobs');
  t.after(() => fm.stop());
  for (const [id, model] of [['job-a', 'x1'], ['job-b', 'x1'], ['job-c', 'x2']]) {
    assert.equal((await fm.api('POST', '/devices', { id, labels: { model } })).status, 201);
  }

  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 1200 } });
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);
  page.on('dialog', (d) => d.accept());
  await page.goto(`${fm.admin}/?poll_ms=600000#/jobs`);
  await page.fill('#signin input[name=api_key]', API_KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#jobs td.empty');

  // The preview counts what the target matches.
  await page.fill('#job-form input[name=target]', 'model:x1');
  await page.waitForSelector('#job-preview[data-count="2"]');
  await page.selectOption('#job-form select[name=target_kind]', 'all');
  await page.waitForSelector('#job-preview[data-count="3"]');
  await page.selectOption('#job-form select[name=target_kind]', 'label');
  await page.waitForSelector('#job-preview[data-count="2"]');

  await page.fill('#job-form input[name=name]', 'ui job');
  await page.fill('#job-form input[name=type]', 'OTA');
  await page.fill('#job-form textarea[name=metadata]', '{"ticket":"7"}');
  await page.fill('#job-form input[name=max_in_flight]', '1');
  await page.click('#job-form button[type=submit]');
  const row = page.locator('#jobs tr[data-status="running"]');
  await row.waitFor();
  const id = await row.getAttribute('data-job');
  const job = (await fm.api('GET', `/jobs/${id}`)).body;
  assert.equal(job.target_count, 2);
  assert.deepEqual(job.command.metadata, { ticket: '7', job_id: id });
  // The devices are offline: one queued (the in-flight cap), one pending.
  await page.waitForSelector(`#jobs tr[data-job="${id}"] .seg.queued[data-count="1"]`);
  await page.waitForSelector(`#jobs tr[data-job="${id}"] .seg.pending[data-count="1"]`);
  await screenshot(page, 'jobs-01-running');

  await row.locator('[data-action="failed"]').click();
  await page.waitForSelector('#job-failed td.empty');

  await row.locator('[data-action="cancel"]').click();
  await page.waitForSelector(`#jobs tr[data-job="${id}"][data-status="cancelled"]`);
  await page.waitForSelector(`#jobs tr[data-job="${id}"] .seg.cancelled[data-count="1"]`);
  await eventually('the job is cancelled', async () => (await fm.api('GET', `/jobs/${id}`)).body.status === 'cancelled');
  await screenshot(page, 'jobs-02-cancelled');
  assert.deepEqual(problems, []);
});
