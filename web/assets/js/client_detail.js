// One connected client's subscriptions and counters (`GET /api/v1/clients/{client_id}`),
// for the client page and a device page's connection panel.

import { enc, get } from './api.js';
import { fill, h } from './dom.js';

/** The client's detail, or null when it is not connected (404). */
export async function loadClient(clientId) {
  try {
    return await get(`/clients/${enc(clientId)}`);
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

const yesNo = (v) => (v === null || v === undefined ? '—' : v ? 'yes' : 'no');
const RETAIN_HANDLING = ['send', 'if new', 'never'];

/** The subscriptions table (`id` for tests and links). */
export function subscriptionTable(id, subs) {
  const rows = subs.length ? subs.map((s) => h('tr', { dataset: { filter: s.filter } },
    h('td', { class: 'mono' }, s.filter), h('td', { class: 'num' }, s.qos),
    h('td', {}, yesNo(s.no_local)), h('td', {}, yesNo(s.retain_as_published)),
    h('td', {}, RETAIN_HANDLING[s.retain_handling] ?? String(s.retain_handling)),
    h('td', { class: 'num' }, s.subscription_id ?? '—'), h('td', {}, s.share_group ?? '—')))
    : h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No subscriptions.'));
  return h('table', { id }, h('thead', {}, h('tr', {},
    ['filter', 'qos', 'no local', 'retain as published', 'retained on subscribe', 'subscription id', 'share group']
      .map((t) => h('th', {}, t)))), h('tbody', {}, rows));
}

/** Counters as a two-column table; null when the connection keeps none (a tracker). */
export function counterTable(id, c) {
  if (!c) return h('p', { class: 'muted' }, 'This connection keeps no MQTT counters.');
  const drops = Object.entries(c.dropped_by_cause || {}).map(([k, v]) => `${k}: ${v}`).join(', ') || 'none';
  const rows = [
    ['messages in / out', `${c.messages_in} / ${c.messages_out}`],
    ['bytes in / out', `${c.bytes_in} / ${c.bytes_out}`],
    ['dropped', drops],
    ['in flight (out / in)', `${c.inflight_out} / ${c.inflight_in}`],
    ['queued out', c.queued_out],
  ];
  return h('table', { id }, h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))));
}

/** Session facts: keep-alive, clean start, expiry. */
export function sessionText(d) {
  const expiry = d.session_persistent ? (d.session_expiry_s === null ? 'never expires' : `expires ${d.session_expiry_s} s after disconnect`) : 'ends with the connection';
  return `keep-alive ${d.keepalive_s ?? '—'} s · clean start ${yesNo(d.clean_start)} · session ${expiry}`;
}

/** Fills `el` with a device's live connection: its subscriptions and counters. */
export function renderConnection(el, d) {
  if (!d) return fill(el, h('p', { class: 'muted' }, 'Not connected.'));
  return fill(el, h('p', { class: 'muted' }, sessionText(d)),
    subscriptionTable('device-subscriptions', d.subscriptions), counterTable('device-counters', d.counters));
}
