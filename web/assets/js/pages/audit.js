// The audit log (`GET /api/v1/audit`): every state-changing request made with a valid
// key, newest first, with "older" paging.

import { enc, get } from '../api.js';
import { fill, fmtTime, h } from '../dom.js';

const PAGE = 100;

export function mount(root) {
  const body = h('tbody');
  const more = h('button', { type: 'button', id: 'audit-more', hidden: true }, 'Older');
  let stopped = false;
  let cursor = null;
  const rows = (items) => items.map((e) => h('tr', { dataset: { status: String(e.status), method: e.method } },
    h('td', {}, fmtTime(e.at)), h('td', {}, e.key), h('td', {}, e.method),
    h('td', { class: 'mono' }, e.route), h('td', {}, e.target ?? '—'), h('td', {}, String(e.status))));
  const show = (page, append) => {
    if (stopped) return;
    const found = rows(page.items);
    if (append) body.append(...found);
    else fill(body, found.length ? found : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'Nothing recorded yet.')));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  };
  const load = async () => show(await get(`/audit?limit=${PAGE}`), false);
  more.addEventListener('click', async () => {
    if (cursor) show(await get(`/audit?limit=${PAGE}&cursor=${enc(cursor)}`), true);
  });
  fill(root, h('h1', {}, 'Audit log'),
    h('div', { class: 'panel' },
      h('p', { class: 'muted' }, 'Every change made through the API (with a valid key), newest first: which key, what, and the answer. Bodies and secrets are never recorded.'),
      h('table', { id: 'audit' }, h('thead', {}, h('tr', {},
        ['at', 'key', 'method', 'route', 'target', 'status'].map((t) => h('th', {}, t)))), body),
      more));
  load();
  return { refresh: load, unmount: () => { stopped = true; } };
}
