// Webhook deliveries the outbox still owes (`GET /api/v1/webhooks/deliveries`).

import { get, qs } from '../api.js';
import { ago, badge, fill, fmtTime, h } from '../dom.js';

export function mount(root) {
  const status = h('select', { id: 'delivery-status' },
    ['failed', 'pending', 'dead', ''].map((v) => h('option', { value: v }, v || 'all')));
  const body = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  let items = [];
  let cursor = null;
  let stopped = false;
  const load = async (append = false) => {
    const page = await get(`/webhooks/deliveries${qs({ status: status.value, limit: 200, cursor: append ? cursor : '' })}`);
    if (stopped) return;
    items = append ? items.concat(page.items) : page.items;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    fill(body, items.length ? items.map((d) => h('tr', { dataset: { delivery: d.id } },
      h('td', {}, d.id), h('td', {}, h('code', {}, d.event_type)), h('td', { class: 'mono' }, d.url),
      h('td', {}, badge(d.status)), h('td', { class: 'num' }, d.attempts),
      h('td', { class: 'error' }, d.last_error || ''),
      h('td', { title: d.last_attempt_at || '' }, ago(d.last_attempt_at)),
      h('td', {}, fmtTime(d.next_attempt_at)), h('td', { title: d.created_at }, ago(d.created_at))))
      : h('tr', {}, h('td', { colspan: 9, class: 'empty' }, 'Nothing owed.')));
  };
  status.addEventListener('change', () => load());
  more.addEventListener('click', () => load(true));
  fill(root, h('h1', {}, 'Webhook deliveries'),
    h('div', { class: 'panel' }, h('div', { class: 'spread' }, h('label', { class: 'row' }, 'status', status)),
      h('table', { id: 'deliveries' }, h('thead', {}, h('tr', {},
        ['id', 'event', 'url', 'status', 'attempts', 'last error', 'last attempt', 'next attempt', 'queued'].map((t) => h('th', {}, t)))), body),
      more));
  load();
  return { refresh: () => load(), unmount: () => { stopped = true; } };
}
