// Topics: the retained messages (filter, page, view one, delete) and, from
// `topics_live.js`, a publish form and a live subscription to a topic filter.

import { del, get, qs } from '../api.js';
import { ago, fill, fmtTime, h, toast } from '../dom.js';
import { describe, fromBase64, fromText } from '../payload.js';
import { filterOf, livePanel, problem, publishPanel } from './topics_live.js';

const PAGE = 100;

function bytesOf(m) {
  return m.encoding === 'base64' ? fromBase64(m.payload) : fromText(m.payload);
}

function detailView(m, close) {
  const bytes = bytesOf(m);
  const shown = describe(bytes);
  const field = (name, value) => [h('dt', {}, name), h('dd', { dataset: { field: name } }, value)];
  return [
    h('div', { class: 'spread' }, h('h2', { class: 'mono' }, m.topic),
      h('button', { type: 'button', id: 'retained-close', onclick: close }, 'close')),
    h('dl', { class: 'fields' },
      field('qos', String(m.qos)), field('size', `${bytes.length} bytes`), field('format', shown.kind),
      field('stored', fmtTime(m.stored_at)), field('expires', m.expires_at ? fmtTime(m.expires_at) : 'never'),
      field('properties', h('code', {}, JSON.stringify(m.properties)))),
    h('pre', { id: 'retained-payload', dataset: { kind: shown.kind } }, shown.full || '(empty payload)'),
  ];
}

function retainedPanel(state) {
  const filter = h('input', { id: 'retained-filter', name: 'filter', value: '#', size: 40,
    placeholder: 'a/+/c, a/# or a prefix ending in /' });
  const msg = h('p', { id: 'retained-msg', role: 'alert' });
  const body = h('tbody');
  const more = h('button', { type: 'button', id: 'retained-more', hidden: true }, 'Load more');
  const detail = h('div', { class: 'panel', id: 'retained-detail', hidden: true });
  let items = [];
  let cursor = null;
  const show = (m) => {
    detail.hidden = false;
    fill(detail, detailView(m, () => { detail.hidden = true; }));
    detail.scrollIntoView({ block: 'nearest' });
  };
  const remove = async (m) => {
    if (!confirm(`Delete the retained message on ${m.topic}? New subscribers will no longer get it.`)) return;
    try {
      await del(`/retained${qs({ topic: m.topic })}`);
      toast(`retained message on ${m.topic} deleted`);
      if (detail.querySelector('h2')?.textContent === m.topic) detail.hidden = true;
      load();
    } catch (err) {
      fill(msg, h('span', { class: 'error' }, problem(err, 'delete it')));
    }
  };
  const row = (m) => {
    const bytes = bytesOf(m);
    const shown = describe(bytes, 70);
    return h('tr', { dataset: { topic: m.topic } },
      h('td', { class: 'mono' }, m.topic), h('td', { class: 'num' }, bytes.length), h('td', { class: 'num' }, m.qos),
      h('td', { title: m.stored_at }, ago(m.stored_at)),
      h('td', {}, h('code', { class: 'preview', dataset: { kind: shown.kind } }, shown.short)),
      h('td', { class: 'row' },
        h('button', { type: 'button', dataset: { action: 'view' }, onclick: () => show(m) }, 'view'),
        h('button', { type: 'button', class: 'danger', dataset: { action: 'delete' }, onclick: () => remove(m) }, 'delete')));
  };
  const load = async (append = false) => {
    let page;
    try {
      page = await get(`/retained${qs({ topic: filterOf(filter.value), limit: PAGE, cursor: append ? cursor : '' })}`);
    } catch (err) {
      fill(msg, h('span', { class: 'error' }, problem(err, 'list retained messages')));
      return;
    }
    if (state.stopped) return;
    fill(msg);
    items = append ? items.concat(page.items) : page.items;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    fill(body, items.length ? items.map(row)
      : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No retained messages match.')));
  };
  more.addEventListener('click', () => load(true));
  const form = h('form', { class: 'row', id: 'retained-form',
    onsubmit: (ev) => { ev.preventDefault(); load(); } },
  h('label', { class: 'row' }, 'topic filter', filter), h('button', { type: 'submit' }, 'Show'));
  const panel = [
    h('div', { class: 'panel' }, h('h2', {}, 'Retained messages'), form, msg,
      h('table', { id: 'retained' }, h('thead', {}, h('tr', {},
        ['topic', 'size', 'qos', 'stored', 'payload', ''].map((t) => h('th', {}, t)))), body), more),
    detail,
  ];
  return { panel, load };
}

export function mount(root) {
  const state = { stopped: false };
  const retained = retainedPanel(state);
  const live = livePanel(state);
  const publish = publishPanel({ published: (retain) => retain && retained.load() });
  fill(root, h('h1', {}, 'Topics'), retained.panel, publish, live.panel);
  retained.load();
  return {
    // Live events do not change retained messages often enough to reload on each.
    onEvent: () => {},
    refresh: () => retained.load(),
    unmount: () => { state.stopped = true; live.stop(); },
  };
}
