// Fleet overview: devices online/offline, message rates from `GET /api/v1/stats` deltas,
// messages/s and connections over the last hour (`GET /api/v1/stats/history`, kept by
// the server so a reload shows the same), commands by state, webhook backlog, drops,
// and the latest live events of every kind.

import { get } from '../api.js';
import { lineChart } from '../chart.js';
import { ago, badge, fill, fmtDuration, fmtNum, h } from '../dom.js';
import { causeLabel } from '../refusals.js';

/** Devices counted for the offline figure, at most (pages of 1000). */
const MAX_COUNTED = 10000;
const RATE_EVERY_MS = 2000;
/** The trend is sampled once a minute on the server; its newest point moves meanwhile. */
const TREND_EVERY_MS = 15000;
const TREND_SPAN_MS = 3600e3;

/** A line of what an event says, beyond its type and device. */
function eventSummary(ev) {
  const d = ev.data || {};
  if (ev.type === 'telemetry') return `${fmtNum(d.record_count)} point${d.record_count === 1 ? '' : 's'}`;
  if (ev.type.startsWith('command.')) return d.type || '';
  if (ev.type.startsWith('alarm.')) return d.name || d.rule_name || '';
  if (ev.type.startsWith('job.')) return d.name || '';
  if (ev.type === 'device.event') return d.type || '';
  if (ev.type === 'device.decrypt_failed') return d.cause || '';
  return '';
}

/** The history's points of the last hour as two charts. */
function trendCharts(history) {
  const points = history.points.filter((p) => p.at_ms >= Date.now() - TREND_SPAN_MS);
  const to = points.length ? points[points.length - 1].at_ms : Date.now();
  const from = Math.min(points.length ? points[0].at_ms : to, to - 60e3);
  const series = (field) => points.filter((p) => typeof p[field] === 'number').map((p) => ({ t: p.at_ms, v: p[field] }));
  const box = (key, title, chart) => h('div', { class: 'chart-box', dataset: { key } }, h('h3', {}, title), chart);
  return [
    box('messages', 'Messages in /s', lineChart(series('messages_in_per_s'), { from, to, label: 'messages in', unit: 'msg/s' })),
    box('connections', 'Connections', lineChart(series('connections'), { from, to, label: 'connections' })),
  ];
}

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
  const events = h('ul', { class: 'events', id: 'live-events' });
  const trend = h('div', { class: 'charts', id: 'trend' });
  fill(root, h('h1', {}, 'Fleet overview'), cards,
    h('div', { class: 'panel trend' }, h('h2', {}, 'Last hour ', h('span', { class: 'muted' }, '(one sample a minute, kept by the server)')), trend),
    h('div', { class: 'grid' },
      h('div', { class: 'panel' }, h('h2', {}, 'Commands by state'), commands),
      h('div', { class: 'panel' }, h('h2', {}, 'Drops by cause'), drops),
      h('div', { class: 'panel' }, h('h2', {}, 'Refused connections'), refused),
      h('div', { class: 'panel' }, h('h2', {}, 'Live events'), events,
        h('p', { class: 'muted' }, 'Every kind of event the stream carries. Telemetry is on it only while a webhook asks for it (',
          h('code', {}, 'telemetry.webhook'), '); the chart above counts every message.'))));
  let prev = null;
  let devices = null;
  let stopped = false;

  const renderEvents = () => fill(events, ctx.recent.length
    ? ctx.recent.slice(0, 30).map((ev) => h('li', { dataset: { type: ev.type } }, h('span', { class: 'muted', title: ev.at }, ago(ev.at)), ' ',
      h('code', {}, ev.type), ' ', ev.device_id ? h('a', { href: `#/devices/${encodeURIComponent(ev.device_id)}` }, ev.device_id) : '',
      ' ', h('span', { class: 'muted' }, eventSummary(ev))))
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
      card('Uptime', fmtDuration(stats.uptime_s), 'stat-uptime'));
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

  const refreshTrend = async () => {
    const history = await get('/stats/history');
    if (!stopped) fill(trend, trendCharts(history));
  };

  const refresh = async () => {
    await refreshDevices();
    await Promise.all([tick(), refreshTrend()]);
  };
  refresh();
  // Rates need samples at a steady pace, live stream or not.
  const timer = setInterval(tick, RATE_EVERY_MS);
  const trendTimer = setInterval(() => refreshTrend().catch(() => {}), TREND_EVERY_MS);
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
    unmount: () => { stopped = true; clearInterval(timer); clearInterval(trendTimer); clearTimeout(devicesTimer); },
  };
}
