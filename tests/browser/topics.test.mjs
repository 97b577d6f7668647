// The dashboard's Topics page in a real Chromium against the real fleetmq binary: the
// retained messages listed, filtered, viewed and deleted; the publish form publishes;
// the live subscription shows what is published while it runs and nothing else; a
// viewer key reads retained messages but is refused deletes and live messages cleanly.

import assert from 'node:assert/strict';
import test from 'node:test';

import {
  API_KEY, PATIENCE_MS, eventually, launch, requirements, screenshot, startFleetmq, watchPage,
} from './lib/harness.mjs';

import { describe, fromBase64, fromText } from '../../web/assets/js/payload.js';

test('payload previews: JSON pretty-printed, text as is, binary as hex', () => {
  assert.equal(describe(fromText('{"a":[1,2]}')).full, '{\n  "a": [\n    1,\n    2\n  ]\n}');
  assert.equal(describe(fromText('{"a":[1,2]}')).kind, 'json');
  assert.deepEqual(describe(fromText('on  line\n2'), 80), { kind: 'text', full: 'on  line\n2', short: 'on line 2' });
  assert.equal(describe(fromText('12')).kind, 'text');
  const bin = describe(fromBase64('/wABAg=='));
  assert.equal(bin.kind, 'binary');
  assert.equal(bin.full, '000000  ff 00 01 02');
  assert.equal(describe(new Uint8Array([1, 2, 3])).kind, 'binary', 'valid UTF-8, but control characters');
  assert.equal(describe(fromText('tab\tand\r\nnewline')).kind, 'text');
  assert.equal(describe(new Uint8Array()).kind, 'empty');
  assert.equal(describe(fromText('x'.repeat(100)), 10).short, `${'x'.repeat(9)}…`);
});

async function signIn(page, base, key) {
  await page.goto(`${base}/?poll_ms=600000#/topics`);
  await page.fill('#signin input[name=api_key]', key);
  await page.click('#signin button[type=submit]');
}

test('topics page: retained browse and delete, publish, live subscription, viewer refused', async (t) => {
  const chromium = await requirements(t);
  if (!chromium) return;
  const fm = await startFleetmq('topics');
  t.after(() => fm.stop());
  const publish = async (body) => {
    const res = await fm.api('POST', '/publish', { qos: 1, ...body });
    assert.equal(res.status, 202, JSON.stringify(res.body));
  };
  await publish({ topic: 'lab/a', payload: { t: 21 }, retain: true });
  await publish({ topic: 'lab/bin', payload_base64: '/wABAg==', retain: true });
  await publish({ topic: 'other/x', payload: 'elsewhere', retain: true });

  const browser = await launch(chromium);
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.setDefaultTimeout(PATIENCE_MS);
  const problems = watchPage(page);
  page.on('dialog', (d) => d.accept());
  await signIn(page, fm.admin, API_KEY);

  // Listed with previews; a prefix filter; the detail view pretty-prints JSON.
  const rowA = page.locator('#retained tr[data-topic="lab/a"]');
  await rowA.waitFor();
  assert.equal(await rowA.locator('code.preview').getAttribute('data-kind'), 'json');
  assert.equal(await page.locator('#retained tr[data-topic="lab/bin"] code.preview').textContent(), 'ff 00 01 02');
  await page.fill('#retained-filter', 'lab/');
  await page.click('#retained-form button[type=submit]');
  await page.waitForSelector('#retained tr[data-topic="other/x"]', { state: 'detached' });
  assert.equal(await page.locator('#retained tbody tr').count(), 2);
  await rowA.locator('[data-action="view"]').click();
  assert.equal(await page.locator('#retained-payload').textContent(), '{\n  "t": 21\n}');
  assert.equal(await page.locator('#retained-detail [data-field="qos"]').textContent(), '1');

  // Delete (the confirm is accepted): gone from the page and from the broker.
  await rowA.locator('[data-action="delete"]').click();
  await rowA.waitFor({ state: 'detached' });
  assert.equal(await page.locator('#retained-detail').isHidden(), true);
  assert.deepEqual((await fm.api('GET', '/retained?topic=lab/a')).body.items, []);

  // Live on `lab/+`: the form's publish and an API publish arrive, `nope/x` does not.
  await page.fill('#live-filter', 'lab/+');
  await page.click('#live-start');
  await page.waitForSelector('#live-status[data-state="live"]');
  await page.fill('#publish-form input[name=topic]', 'lab/live');
  await page.fill('#publish-form textarea[name=payload]', 'hello from the page');
  await page.selectOption('#publish-form select[name=qos]', '2');
  await page.click('#publish-form button[type=submit]');
  await page.getByText('Published to lab/live').waitFor();
  const live = page.locator('#live-messages tr[data-topic="lab/live"]');
  await live.waitFor();
  assert.equal(await live.locator('code.preview').textContent(), 'hello from the page');
  assert.equal(await live.locator('td.num').textContent(), '2');
  await publish({ topic: 'nope/x', payload: 'not matching' });
  await publish({ topic: 'lab/api', payload: { n: 1 } });
  await page.locator('#live-messages tr[data-topic="lab/api"]').waitFor();
  assert.equal(await page.locator('#live-messages tr[data-topic="nope/x"]').count(), 0);
  // A retained publish from the form shows up in the list too.
  await page.fill('#publish-form input[name=topic]', 'lab/kept');
  await page.check('#publish-form input[name=retain]');
  await page.click('#publish-form button[type=submit]');
  await page.locator('#retained tr[data-topic="lab/kept"]').waitFor();
  await page.locator('#live-messages tr[data-topic="lab/kept"]').waitFor();
  await screenshot(page, 'topics-01-live');
  await page.click('#live-stop');
  await page.waitForSelector('#live-status[data-state="idle"]');

  // A viewer reads, but deleting and watching live are refused with the reason.
  const made = await fm.api('POST', '/keys', { name: 'look', role: 'viewer' });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const viewer = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  viewer.setDefaultTimeout(PATIENCE_MS);
  viewer.on('dialog', (d) => d.accept());
  const viewerProblems = watchPage(viewer);
  await signIn(viewer, fm.admin, made.body.secret);
  const kept = viewer.locator('#retained tr[data-topic="lab/kept"]');
  await kept.waitFor();
  await kept.locator('[data-action="delete"]').click();
  await viewer.locator('#retained-msg .error', { hasText: 'Not allowed to delete it' }).waitFor();
  await viewer.click('#live-start');
  await viewer.waitForSelector('#live-status[data-state="error"]');
  assert.match(await viewer.locator('#live-status').textContent(), /Not allowed to subscribe: .*needs operator/);
  await screenshot(viewer, 'topics-02-viewer');
  assert.equal((await fm.api('GET', '/retained?topic=lab/kept')).body.items.length, 1);

  // The browser's own console reports the refused requests; nothing else went wrong.
  assert.deepEqual(problems, []);
  assert.deepEqual(viewerProblems.filter((p) => !p.includes('403')), []);
});
