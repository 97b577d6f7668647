// One connected client (`GET /api/v1/clients/{client_id}`): what it is, its session, its
// counters and its subscriptions with their MQTT 5 options; kick it.

import { del, enc } from '../api.js';
import { ago, fill, h, toast } from '../dom.js';
import { counterTable, loadClient, sessionText, subscriptionTable } from '../client_detail.js';

function infoTable(c) {
  const rows = [
    ['kind', c.kind === 'device' ? h('a', { href: `#/devices/${enc(c.client_id)}` }, 'device') : c.kind],
    ['username', c.username ?? '—'],
    ['protocol', `MQTT ${c.protocol} over ${c.transport}`],
    ['peer', h('span', { class: 'mono' }, c.peer)],
    ['connected', ago(c.connected_at_ms)],
    ['session', sessionText(c)],
  ];
  return h('table', { id: 'client-info' }, h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))));
}

export function mount(root, _ctx, clientId) {
  const title = h('h1', {}, clientId);
  const info = h('div');
  const counters = h('div');
  const subs = h('div');
  let stopped = false;
  const kick = async () => {
    if (!confirm(`Disconnect ${clientId}?`)) return;
    await del(`/clients/${enc(clientId)}`);
    toast(`${clientId} disconnected`);
    location.hash = '#/clients';
  };
  const load = async () => {
    const c = await loadClient(clientId);
    if (stopped) return;
    if (!c) {
      fill(root, title, h('div', { class: 'panel' }, `${clientId} is not connected. `, h('a', { href: '#/clients' }, 'All clients')));
      return;
    }
    fill(info, infoTable(c));
    fill(counters, counterTable('client-counters', c.counters));
    fill(subs, subscriptionTable('client-subscriptions', c.subscriptions));
  };
  fill(root, h('p', {}, h('a', { href: '#/clients' }, '← Clients')), title,
    h('div', { class: 'grid' },
      h('div', { class: 'panel' }, h('h2', {}, 'Client'), info,
        h('button', { type: 'button', class: 'danger', onclick: kick }, 'kick')),
      h('div', { class: 'panel' }, h('h2', {}, 'Counters'), counters)),
    h('div', { class: 'panel' }, h('h2', {}, 'Subscriptions'), subs));
  load();
  return { refresh: load, unmount: () => { stopped = true; } };
}
