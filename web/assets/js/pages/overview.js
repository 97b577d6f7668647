// Fleet overview: devices online/offline, message rates from `GET /api/v1/stats` deltas,
// commands by state, webhook backlog, drops, and the latest live events.

import { get } from '../api.js';
import { ago, badge, fill, fmtNum, h } from '../dom.js';
import { causeLabel } from '../refusals.js';

/** Devices counted for the offline figure, at most (pages of 1000). */
const MAX_COUNTED = 10000;
const RATE_EVERY_MS = 2000;

async function countDevices() {
  let total = 0;
  let cursor = '';
  do {
    const page = await get(`/devices?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    total += page.items.length;
    cursor = page.next_cursor;
  } while (cursor && total < MAX_COUNTED);
  return { total, more: Boolean(cursor) };
}

function card(label, value, id) {
  return h('div', { class: 'card', id }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
}

export function mount(root, ctx) {
  const cards = h('div', { class: 'cards' });
  const commands = h('div');
  const drops = h('div');
  const refused = h('div', { id: 'refused-by-cause' });
  const events = h('ul', { class: 'events' });
  fill(root, h('h1', {}, 'Fleet overview'), cards,
    h('div', { class: 'grid' },
      h('div', { class: 'panel' }, h('h2', {}, 'Commands by state'), commands),
      h('div', { class: 'panel' }, h('h2', {}, 'Drops by cause'), drops),
      h('div', { class: 'panel' }, h('h2', {}, 'Refused connections'), refused),
      h('div', { class: 'panel' }, h('h2', {}, 'Live events'), events)));
  let prev = null;
  let devices = null;
  let stopped = false;

  const renderEvents = () => fill(events, ctx.recent.length
    ? ctx.recent.slice(0, 30).map((ev) => h('li', {}, h('span', { class: 'muted' }, ago(ev.at)), ' ',
      h('code', {}, ev.type), ' ', ev.device_id ? h('a', { href: `#/devices/${encodeURIComponent(ev.device_id)}` }, ev.device_id) : ''))
    : h('li', { class: 'muted' }, ctx.live() ? 'No events yet.' : 'Events appear here while the live stream is connected.'));

  const tick = async () => {
    const stats = await get('/stats');
    if (stopped) return;
    const now = performance.now();
    let rateIn = null;
    let rateOut = null;
    if (prev) {
      const secs = (now - prev.at) / 1000;
      rateIn = (stats.messages.received - prev.stats.messages.received) / secs;
      rateOut = (stats.messages.sent - prev.stats.messages.sent) / secs;
    }
    prev = { at: now, stats };
    const online = stats.connections.devices;
    const offline = devices ? Math.max(0, devices.total - online) : null;
    fill(cards,
      card('Devices online', fmtNum(online), 'stat-online'),
      card('Devices offline', devices ? `${fmtNum(offline)}${devices.more ? '+' : ''}` : '…', 'stat-offline'),
      card('Messages in /s', rateIn === null ? '…' : fmtNum(rateIn, 1), 'stat-rate-in'),
      card('Messages out /s', rateOut === null ? '…' : fmtNum(rateOut, 1), 'stat-rate-out'),
      card('Connections', fmtNum(stats.connections.current), 'stat-connections'),
      card('Webhook backlog', fmtNum(stats.webhooks.backlog), 'stat-backlog'),
      card('Telemetry stored', fmtNum(stats.telemetry.stored), 'stat-telemetry'),
      card('Uptime', `${fmtNum(stats.uptime_s / 3600, 1)} h`, 'stat-uptime'));
    const byStatus = Object.entries(stats.commands.by_status || {});
    fill(commands, byStatus.length
      ? h('table', {}, h('tbody', {}, byStatus.map(([status, n]) => h('tr', {}, h('td', {}, badge(status)), h('td', { class: 'num' }, fmtNum(n))))))
      : h('p', { class: 'empty' }, 'No commands yet.'));
    fill(drops, h('table', {}, h('tbody', {}, Object.entries(stats.drops).map(([cause, n]) =>
      h('tr', {}, h('td', {}, cause.replaceAll('_', ' ')), h('td', { class: 'num' }, fmtNum(n)))))));
    renderRefused(stats.connections);
    renderEvents();
  };
  const renderRefused = (c) => {
    const causes = Object.entries(c.refused_by_cause || {}).filter(([, n]) => n > 0);
    const backoff = c.backoff || {};
    fill(refused, causes.length
      ? h('table', {}, h('tbody', {}, causes.map(([cause, n]) => h('tr', {}, h('td', {}, causeLabel(cause)), h('td', { class: 'num' }, fmtNum(n))))))
      : h('p', { class: 'empty' }, 'No refused connections.'),
    h('p', { class: 'muted' }, `Backed off now: ${fmtNum(backoff.identities)} identities, ${fmtNum(backoff.addresses)} addresses · `,
      h('a', { href: '#/clients' }, 'recent attempts')));
  };
  const refreshDevices = async () => {
    devices = await countDevices();
  };

  const refresh = async () => {
    await refreshDevices();
    await tick();
  };
  refresh();
  // Rates need samples at a steady pace, live stream or not.
  const timer = setInterval(tick, RATE_EVERY_MS);
  let devicesTimer;
  return {
    refresh,
    onEvent: (ev) => {
      renderEvents();
      if (ev.type.startsWith('device.')) {
        clearTimeout(devicesTimer);
        devicesTimer = setTimeout(refresh, 250);
      }
    },
    unmount: () => { stopped = true; clearInterval(timer); clearTimeout(devicesTimer); },
  };
}
