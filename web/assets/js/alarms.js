// Alarm rows (SPEC §11), shared by the Alarms page and the device page: severity in
// colour, active before cleared, and an acknowledge button while unacknowledged.

import { enc, get, post, qs } from './api.js';
import { ago, badge, fill, h, toast } from './dom.js';

export const SEVERITIES = ['critical', 'major', 'minor', 'warning'];

export function severity(s) {
  return h('span', { class: `badge sev-${s}`, dataset: { severity: s } }, s);
}

/** Active alarms first, then up to `limit` cleared ones, each newest first. */
export async function loadAlarms(filter, limit = 100) {
  const [active, cleared] = await Promise.all([
    get(`/alarms${qs({ ...filter, status: 'active', limit: 1000 })}`),
    get(`/alarms${qs({ ...filter, status: 'cleared', limit })}`),
  ]);
  return active.items.concat(cleared.items);
}

export function alarmHead(withDevice = true) {
  const cols = ['severity', 'name', withDevice && 'device', 'status', 'raised', 'cleared', 'value', 'source', ''];
  return h('thead', {}, h('tr', {}, cols.filter(Boolean).map((t) => h('th', {}, t))));
}

/** Fills `body` with `alarms`; `reload` runs after an acknowledgement. */
export function renderAlarms(body, alarms, reload, withDevice = true) {
  const ack = async (a) => {
    try {
      await post(`/alarms/${enc(a.alarm_id)}/ack`);
      toast(`alarm ${a.alarm_id} acknowledged`);
    } catch (err) {
      toast(err.message, true);
    }
    reload();
  };
  const value = (a) => (a.value === null ? '—' : h('code', {}, JSON.stringify(a.value)));
  const row = (a) => h('tr', { dataset: { alarm: a.alarm_id, status: a.status, acknowledged: String(a.acknowledged) } },
    h('td', {}, severity(a.severity)), h('td', {}, a.name),
    withDevice && h('td', {}, h('a', { href: `#/devices/${enc(a.device_id)}` }, a.device_id)),
    h('td', {}, badge(a.status)), h('td', { title: a.raised_at }, ago(a.raised_at)),
    h('td', { title: a.cleared_at || '' }, ago(a.cleared_at)), h('td', {}, value(a)), h('td', {}, a.source),
    h('td', {}, a.acknowledged
      ? h('span', { class: 'muted', title: a.acknowledged_at }, 'acknowledged')
      : h('button', { type: 'button', dataset: { action: 'ack' }, onclick: () => ack(a) }, 'acknowledge')));
  const cols = withDevice ? 9 : 8;
  fill(body, alarms.length ? alarms.map(row) : h('tr', {}, h('td', { colspan: cols, class: 'empty' }, 'No alarms.')));
}
