// The dashboard's live connection (web/assets/js/live.js) against a scripted event
// stream, without a browser: headers, parsing, reconnect with Last-Event-ID, gap, and
// the polling fallback when the server has no stream.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import test from 'node:test';

import { eventually } from './lib/harness.mjs';

const KEY = 'live-test-key';

/** A server whose `/api/v1/events` answers with `script(n, req, res)` for the n-th call. */
async function server(script) {
  const calls = [];
  const srv = createServer((req, res) => {
    calls.push({ url: req.url, headers: req.headers });
    script(calls.length, req, res);
  });
  await new Promise((ok) => srv.listen(0, '127.0.0.1', ok));
  const base = `http://127.0.0.1:${srv.address().port}`;
  return { calls, base, close: () => { srv.closeAllConnections(); srv.close(); } };
}

/** Browser globals live.js needs: a signed-in session and fetch relative to the page. */
function browserGlobals(base) {
  const realFetch = globalThis.fetch;
  const store = new Map([['fleetmq.apiKey', KEY]]);
  globalThis.sessionStorage = {
    getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v), removeItem: (k) => store.delete(k),
  };
  globalThis.fetch = (url, init) => realFetch(new URL(url, base), init);
  return () => { globalThis.fetch = realFetch; delete globalThis.sessionStorage; };
}

function recorder(pollMs) {
  const seen = { events: [], gaps: 0, polls: 0, states: [] };
  const options = {
    pollMs,
    onEvent: (e) => seen.events.push(e),
    onGap: () => { seen.gaps += 1; },
    onPoll: () => { seen.polls += 1; },
    onState: (s) => seen.states.push(s),
  };
  return { seen, options };
}

test('events arrive, a dropped stream resumes with Last-Event-ID, gap reloads', async (t) => {
  const sse = (res) => res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
  const srv = await server((n, req, res) => {
    sse(res);
    if (n === 1) {
      const event = { id: '41', type: 'device.online', at: '2026-01-01T00:00:00Z', device_id: 'd1', data: {} };
      res.write(': keepalive\n\n');
      res.write(`id: 41\nevent: device.online\ndata: ${JSON.stringify(event)}\n\n`);
      setTimeout(() => res.end(), 50);
    } else {
      res.write('id: 57\nevent: gap\ndata: {}\n\n');
    }
  });
  t.after(srv.close);
  t.after(browserGlobals(srv.base));
  const { Live } = await import('../../web/assets/js/live.js');
  const { seen, options } = recorder(60000);
  const live = new Live(options);
  t.after(() => live.stop());
  live.start();

  await eventually('second connection', () => srv.calls.length >= 2 && seen.gaps === 1, 5000);
  assert.deepEqual(seen.events.map((e) => [e.type, e.device_id]), [['device.online', 'd1']]);
  assert.equal(srv.calls[0].headers['x-api-key'], KEY);
  assert.equal(srv.calls[0].headers['last-event-id'], undefined);
  assert.equal(srv.calls[1].headers['last-event-id'], '41');
  // Every kind of event the stream carries: no `type` filter.
  assert.equal(srv.calls[0].url, '/api/v1/events');
  assert.deepEqual(seen.states, ['live', 'polling', 'live']);
  // Leaving the live state fetched what the page may have missed, once.
  assert.equal(seen.polls, 1);
  assert.equal(live.lastEventId, '57');
});

test('without the route (404) the page polls', async (t) => {
  const srv = await server((n, req, res) => res.writeHead(404).end('{"error":{"code":"not_found"}}'));
  t.after(srv.close);
  t.after(browserGlobals(srv.base));
  const { Live } = await import('../../web/assets/js/live.js');
  const { seen, options } = recorder(50);
  const live = new Live(options);
  t.after(() => live.stop());
  live.start();
  await eventually('three polls', () => seen.polls >= 3, 5000);
  assert.deepEqual(seen.states, ['polling']);
  assert.equal(srv.calls.length, 1, 'a missing route is not hammered');
});
