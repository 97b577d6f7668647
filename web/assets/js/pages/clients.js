// Connected MQTT clients (`GET /api/v1/clients`), each linked to its detail (`#/clients/ID`,
// a device also to its device page), with kick (`DELETE .../{client_id}`),
// and the recent refused connection attempts with their causes.

import { del, enc, get } from '../api.js';
import { ago, fill, h, toast } from '../dom.js';
import { loadRefusals, refusalTable, renderRefusals } from '../refusals.js';

export function mount(root) {
  const body = h('tbody');
  const [refusedTable, refusedBody] = refusalTable('refused');
  let stopped = false;
  const kick = async (c) => {
    if (!confirm(`Disconnect ${c.client_id}?`)) return;
    await del(`/clients/${enc(c.client_id)}`);
    toast(`${c.client_id} disconnected`);
    load();
  };
  const load = async () => {
    let items = [];
    let cursor = '';
    do {
      const page = await get(`/clients?limit=1000${cursor ? `&cursor=${enc(cursor)}` : ''}`);
      items = items.concat(page.items);
      cursor = page.next_cursor;
    } while (cursor && items.length < 5000);
    const refused = await loadRefusals({ limit: 100 });
    if (stopped) return;
    renderRefusals(refusedBody, refused.items);
    fill(body, items.length ? items.map((c) => h('tr', { dataset: { client: c.client_id } },
      h('td', {}, c.kind === 'device'
        ? [h('a', { href: `#/devices/${enc(c.client_id)}` }, c.client_id), ' ', h('a', { href: `#/clients/${enc(c.client_id)}`, class: 'muted', title: 'subscriptions and counters' }, '(connection)')]
        : h('a', { href: `#/clients/${enc(c.client_id)}` }, c.client_id)),
      h('td', {}, c.kind), h('td', {}, c.username ?? '—'), h('td', {}, c.protocol), h('td', {}, c.transport),
      h('td', { class: 'mono' }, c.peer), h('td', {}, ago(c.connected_at_ms)),
      h('td', {}, h('button', { type: 'button', class: 'danger', onclick: () => kick(c) }, 'kick'))))
      : h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No client is connected.')));
  };
  fill(root, h('h1', {}, 'Connected clients'), h('div', { class: 'panel' },
    h('table', { id: 'clients' }, h('thead', {}, h('tr', {},
      ['client id', 'kind', 'username', 'protocol', 'transport', 'peer', 'connected', ''].map((t) => h('th', {}, t)))), body)),
    h('div', { class: 'panel' }, h('h2', {}, 'Refused connection attempts'),
      h('p', { class: 'muted' }, 'The newest first; repeats of one address, client id and cause are counted on one row. Clients are only told "not authorized" and the like.'),
      refusedTable));
  load();
  return { refresh: load, unmount: () => { stopped = true; } };
}
