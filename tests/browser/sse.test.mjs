// The dashboard's server-sent events parser (web/assets/js/sse.js), without a browser.

import assert from 'node:assert/strict';
import test from 'node:test';

import { SseParser } from '../../web/assets/js/sse.js';

function parse(chunks) {
  const events = [];
  const comments = [];
  const parser = new SseParser((e) => events.push(e), (c) => comments.push(c));
  for (const chunk of chunks) parser.push(chunk);
  return { events, comments, parser };
}

test('frames with id, event and JSON data', () => {
  const { events, parser } = parse(['id: 7\nevent: device.online\ndata: {"id":"7","type":"device.online"}\n\n']);
  assert.deepEqual(events, [{ id: '7', event: 'device.online', data: '{"id":"7","type":"device.online"}' }]);
  assert.equal(parser.lastEventId, '7');
});

test('lines split anywhere, CRLF and CR line ends', () => {
  const text = 'id: 1\r\nevent: a\r\ndata: x\r\n\r\nid: 2\revent: b\rdata: y\r\r';
  for (let cut = 0; cut <= text.length; cut += 1) {
    const { events } = parse([text.slice(0, cut), text.slice(cut)]);
    assert.deepEqual(events.map((e) => [e.id, e.event, e.data]), [['1', 'a', 'x'], ['2', 'b', 'y']], `cut at ${cut}`);
  }
});

test('comments are keepalives, multi-line data joins, no space is required', () => {
  const { events, comments } = parse([': keepalive\n\ndata:one\ndata: two\n\n']);
  assert.deepEqual(comments, ['keepalive']);
  assert.deepEqual(events, [{ id: '', event: 'message', data: 'one\ntwo' }]);
});

test('a gap frame without data is still delivered; the id persists', () => {
  const { events } = parse(['id: 9\nevent: gap\n\n', 'event: x\ndata: 1\n\n']);
  assert.deepEqual(events, [{ id: '9', event: 'gap', data: '' }, { id: '9', event: 'x', data: '1' }]);
});

test('an unfinished frame is not dispatched', () => {
  const { events } = parse(['id: 3\nevent: a\ndata: x\n']);
  assert.deepEqual(events, []);
});
