// The Topics page's test panel: publish a message (`POST /api/v1/publish`) and watch a
// topic filter live (`GET /api/v1/subscribe`, read with fetch(): EventSource cannot
// send `x-api-key`). The subscription is closed when stopped or when the page goes.

import { ApiError, post, qs, session, signedOut } from '../api.js';
import { fill, h } from '../dom.js';
import { describe, fromBase64 } from '../payload.js';
import { SseParser } from '../sse.js';

/** Messages kept in the live table. */
const KEEP = 200;

/** What the filter box means: a prefix ending in `/` is everything under it. */
export function filterOf(text) {
  const value = text.trim();
  if (!value) return '#';
  return value.endsWith('/') ? `${value}#` : value;
}

/** An API error as a sentence; a 403 says which role is missing. */
export function problem(err, what) {
  if (err.status === 403) return `Not allowed to ${what}: ${err.message}`;
  return `Could not ${what}: ${err.message}`;
}

export function publishPanel({ published }) {
  const msg = h('p', { id: 'publish-msg', role: 'status' });
  const form = h('form', { class: 'stack', id: 'publish-form' },
    h('label', {}, 'Topic', h('input', { name: 'topic', required: true, placeholder: 'devices/lab/status' })),
    h('label', {}, 'Payload (sent as this text; empty clears a retained message)', h('textarea', { name: 'payload' })),
    h('div', { class: 'row' },
      h('label', { class: 'row' }, 'QoS', h('select', { name: 'qos' }, [0, 1, 2].map((q) => h('option', { value: q }, q)))),
      h('label', { class: 'check' }, h('input', { name: 'retain', type: 'checkbox' }), 'retain'),
      h('button', { class: 'primary', type: 'submit' }, 'Publish')),
    msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    const body = { topic: f.topic.value.trim(), payload: f.payload.value, qos: Number(f.qos.value), retain: f.retain.checked };
    try {
      await post('/publish', body);
      fill(msg, `Published to ${body.topic}${body.retain ? ' (retained)' : ''} at ${new Date().toLocaleTimeString()}.`);
      published(body.retain);
    } catch (err) {
      fill(msg, h('span', { class: 'error' }, problem(err, 'publish')));
    }
  });
  return h('div', { class: 'panel' }, h('h2', {}, 'Publish'), form);
}

/** One `GET /api/v1/subscribe` stream. */
class Subscription {
  constructor(filter, handlers) {
    this.filter = filter;
    this.handlers = handlers;
    this.abort = new AbortController();
  }

  /** Resolves when the stream ends; throws an ApiError when it was refused. */
  async run() {
    const res = await fetch(`/api/v1/subscribe${qs({ filter: this.filter })}`, {
      headers: { 'x-api-key': session.key || '', accept: 'text/event-stream' },
      signal: this.abort.signal, cache: 'no-store',
    });
    if (res.status === 401) {
      signedOut();
      return;
    }
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      throw new ApiError(res.status, body?.error?.code, body?.error?.message || res.statusText);
    }
    const parser = new SseParser((ev) => this.handlers[ev.event]?.(JSON.parse(ev.data)));
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.push(value);
    }
  }

  stop() { this.abort.abort(); }
}

function messageRow(m) {
  const shown = describe(fromBase64(m.payload_base64), 70);
  return h('tr', { dataset: { topic: m.topic } },
    h('td', { title: m.at }, new Date(m.at).toLocaleTimeString()), h('td', { class: 'mono' }, m.topic),
    h('td', { class: 'num' }, m.qos), h('td', {}, m.retain ? 'yes' : ''),
    h('td', { class: 'mono' }, m.client_id ?? h('span', { class: 'muted' }, 'broker')),
    h('td', {}, h('code', { class: 'preview', dataset: { kind: shown.kind }, title: shown.full.slice(0, 2000) }, shown.short)));
}

export function livePanel(state) {
  const filter = h('input', { id: 'live-filter', name: 'filter', value: '#', size: 30 });
  const start = h('button', { type: 'submit', class: 'primary', id: 'live-start' }, 'Subscribe');
  const stopButton = h('button', { type: 'button', id: 'live-stop', disabled: true }, 'Stop');
  const status = h('span', { id: 'live-status', class: 'muted', dataset: { state: 'idle' } }, 'not subscribed');
  const body = h('tbody');
  let sub = null;
  let dropped = 0;
  const setState = (name, text, bad = false) => {
    status.dataset.state = name;
    status.className = bad ? 'error' : 'muted';
    fill(status, text);
    start.disabled = name === 'live' || name === 'connecting';
    stopButton.disabled = !start.disabled;
  };
  const stop = () => {
    sub?.stop();
    sub = null;
  };
  const handlers = {
    subscribed: (d) => setState('live', `live on ${d.filter}`),
    message: (m) => {
      body.querySelector('td.empty')?.parentElement.remove();
      body.prepend(messageRow(m));
      while (body.children.length > KEEP) body.lastElementChild.remove();
    },
    dropped: (d) => {
      dropped += d.dropped;
      setState('live', `live; ${dropped} messages dropped (this page read too slowly)`);
    },
  };
  const subscribe = async () => {
    stop();
    dropped = 0;
    const mine = new Subscription(filterOf(filter.value), handlers);
    sub = mine;
    setState('connecting', 'connecting…');
    try {
      await mine.run();
      if (sub === mine && !state.stopped) setState('ended', 'the stream ended (server stopping?)');
    } catch (err) {
      if (mine.abort.signal.aborted) return;
      setState('error', problem(err, 'subscribe'), true);
    } finally {
      if (sub === mine) sub = null;
    }
  };
  stopButton.addEventListener('click', () => { stop(); setState('idle', 'stopped'); });
  const form = h('form', { class: 'row', id: 'live-form', onsubmit: (ev) => { ev.preventDefault(); subscribe(); } },
    h('label', { class: 'row' }, 'topic filter', filter), start, stopButton,
    h('button', { type: 'button', id: 'live-clear', onclick: () => fill(body) }, 'Clear'));
  const panel = h('div', { class: 'panel' }, h('h2', {}, 'Live subscription'), form, h('p', {}, status),
    h('p', { class: 'muted' }, 'What the broker routes, as it routes it (needs the operator role). Not stored: nothing is shown from before you subscribe.'),
    h('table', { id: 'live-messages' }, h('thead', {}, h('tr', {},
      ['time', 'topic', 'qos', 'retain', 'from', 'payload'].map((t) => h('th', {}, t)))), body));
  return { panel, stop };
}
