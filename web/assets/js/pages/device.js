// One device: presence and reported status, telemetry charts, the events it published
// (`device/{id}/events`), commands (send one and watch it to its terminal state), config,
// credential and key rotation, and why its last connection attempts were refused.

import { ApiError, del, enc, get, post, put, qs } from '../api.js';
import { alarmHead, loadAlarms, renderAlarms } from '../alarms.js';
import { lineChart } from '../chart.js';
import { ago, badge, copyable, dot, fill, fmtTime, h, json, labelChips, parseJsonField, secretBox, toast } from '../dom.js';
import { loadRefusals, refusalTable, renderRefusals } from '../refusals.js';
import { loadClient, renderConnection } from '../client_detail.js';

const TERMINAL = new Set(['completed', 'failed', 'expired', 'cancelled', 'superseded']);
/** `fit`: the newest points of the last 7 days, the axis from the first to the last of them. */
const RANGES = [['fit', 7 * 86400e3], ['15m', 15 * 60e3], ['1h', 3600e3], ['6h', 6 * 3600e3], ['24h', 86400e3], ['7d', 7 * 86400e3]];
/** A fitted axis never spans less than this: one point sits in its middle. */
const MIN_FIT_MS = 1000;
/** Points fetched per chart range, at most (pages of 1000, newest first). */
const MAX_POINTS = 5000;
/** The device's status has no event: while it has not applied the config, ask this often. */
const CONFIG_RECHECK_MS = 2000;
const EVENT_DEBOUNCE_MS = 200;
/** Telemetry is left off the shared event stream: the charts reload on their own. */
const TELEMETRY_EVERY_MS = 10000;
/** The device's own events shown, newest first. */
const DEVICE_EVENTS = 20;

async function telemetryPoints(id, from, to) {
  let items = [];
  let cursor;
  do {
    const page = await get(`/devices/${enc(id)}/telemetry${qs({ from, to, limit: 1000, cursor })}`);
    items = items.concat(page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < MAX_POINTS);
  return items;
}

/** A latest value's unit, when the API gives one (`{"value", "ts", "unit"}`). */
function unitOf(v) {
  return v && typeof v.unit === 'string' ? v.unit : '';
}

function withUnit(value, unit) {
  return unit ? `${value} ${unit}` : String(value);
}

function infoTable(d) {
  const rows = [
    ['state', h('span', { class: 'row', id: 'presence', dataset: { online: String(d.online) } }, dot(d.online), d.online ? 'online' : 'offline')],
    ['labels', labelChips(d.labels)],
    ['plugin', d.plugin],
    ['encrypted', d.encrypted ? `yes (key generation ${d.key_generation})` : 'no'],
    ['version', h('span', { id: 'reported-version' }, d.reported_status?.version ?? '—')],
    ['connected', fmtTime(d.connected_at)],
    ['last seen', `${fmtTime(d.last_seen)} (${ago(d.last_seen)})`],
    ['ip', d.ip || '—'],
    ['protocol', d.protocol ? `MQTT ${d.protocol} over ${d.transport}` : '—'],
    ['created', fmtTime(d.created_at)],
  ];
  return h('table', {}, h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))));
}

function commandRow(c, onCancel) {
  const outcome = c.error ?? (c.result !== null && c.result !== undefined ? JSON.stringify(c.result) : '');
  return h('tr', { dataset: { command: c.command_id, status: c.status } },
    h('td', { class: 'id-cell' }, copyable(c.command_id)),
    h('td', {}, c.type),
    h('td', {}, badge(c.status)),
    h('td', { class: 'num' }, c.attempts),
    h('td', { title: c.created_at }, ago(c.created_at)),
    h('td', { title: c.completed_at || '' }, c.completed_at ? ago(c.completed_at) : '—'),
    h('td', {}, h('code', {}, outcome.length > 80 ? `${outcome.slice(0, 80)}…` : outcome)),
    h('td', {}, TERMINAL.has(c.status) ? '' : h('button', { type: 'button', class: 'danger', onclick: () => onCancel(c) }, 'cancel')));
}

function deviceEventRow(e) {
  const data = JSON.stringify(e.data);
  return h('tr', { dataset: { type: e.type } },
    h('td', { title: e.at }, ago(e.at)),
    h('td', {}, e.type),
    h('td', {}, h('code', { title: data }, data.length > 120 ? `${data.slice(0, 120)}…` : data)));
}

/** A tracker's last position (its `lat`/`lon` telemetry, SPEC §10), or nothing. */
function positionOf(values) {
  const lat = values.lat && values.lat.value;
  const lon = values.lon && values.lon.value;
  if (typeof lat !== 'number' || typeof lon !== 'number') return [];
  const speed = values.speed && typeof values.speed.value === 'number' ? `${values.speed.value} km/h` : '—';
  // A geo: URI (RFC 5870) opens the viewer's own map application; the dashboard itself
  // loads nothing from another origin.
  return h('p', { class: 'position' }, h('strong', {}, 'Last position '),
    h('a', { href: `geo:${lat},${lon}` }, `${lat.toFixed(6)}, ${lon.toFixed(6)}`),
    ` · ${speed} · `, h('span', { title: values.lat.ts }, ago(values.lat.ts)));
}

export function mount(root, ctx, id) {
  const base = `/devices/${enc(id)}`;
  const title = h('h1', {}, id);
  const info = h('div');
  const status = h('pre', { id: 'reported-status' });
  const presence = h('ul', { class: 'events', id: 'presence-history' });
  const latest = h('tbody', { id: 'latest' });
  const position = h('div', { id: 'position' });
  const charts = h('div', { class: 'charts', id: 'charts' });
  const range = h('select', { id: 'range' }, RANGES.map(([name]) => h('option', { value: name }, name)));
  range.value = 'fit';
  const commandsBody = h('tbody');
  const eventsBody = h('tbody', { id: 'device-events' });
  const alarmsBody = h('tbody');
  const watch = h('div', { id: 'watch' });
  const secrets = h('div');
  const configVersion = h('span', { id: 'config-version' }, '—');
  const configReported = h('span', { id: 'config-reported' }, '—');
  const configText = h('textarea', { id: 'config-editor', rows: 8, spellcheck: false });
  const configMsg = h('span', { class: 'muted' });
  let configDirty = false;
  let config = null;
  let lastReported;
  let watching = null;
  let stopped = false;
  let configTimer;
  let eventTimer;
  const history = [];
  /** The live connection's subscriptions and counters. */
  const connection = h('div', { id: 'connection' });
  /** Kinds of events (`device`, `command`, ...) waiting for the debounced reload. */
  const pending = new Set();

  const loadInfo = async () => {
    const d = await get(base);
    if (stopped) return;
    fill(title, dot(d.online), d.id);
    fill(info, infoTable(d));
    renderConnection(connection, d.online ? await loadClient(id) : null);
    status.textContent = json(d.reported_status);
    if (!history.length && d.connected_at) history.push({ type: d.online ? 'connected' : 'last connected', at: d.connected_at });
    renderPresence();
  };
  const [refusedTable, refusedBody] = refusalTable('device-refused', { compact: true });
  const loadRefused = async () => {
    const page = await loadRefusals({ identity: id, limit: 10 });
    if (!stopped) renderRefusals(refusedBody, page.items, { compact: true });
  };
  const renderPresence = () => fill(presence, history.length
    ? history.slice(0, 50).map((e) => h('li', { dataset: { type: e.type } }, h('span', { class: 'muted' }, fmtTime(e.at)), ' ', e.type))
    : h('li', { class: 'muted' }, 'No presence changes seen yet.'));

  const loadTelemetry = async () => {
    const span = RANGES.find(([name]) => name === range.value)[1];
    const now = Date.now();
    const [last, points] = await Promise.all([get(`${base}/telemetry/latest`), telemetryPoints(id, now - span, now)]);
    if (stopped) return;
    let [from, to] = [now - span, now];
    if (range.value === 'fit' && points.length) {
      const times = points.map((p) => p.ts_ms);
      [from, to] = [Math.min(...times), Math.max(...times)];
      if (to - from < MIN_FIT_MS) {
        const mid = (from + to) / 2;
        [from, to] = [mid - MIN_FIT_MS / 2, mid + MIN_FIT_MS / 2];
      }
    }
    charts.dataset.from = String(from);
    charts.dataset.to = String(to);
    const values = Object.entries(last.values || {}).sort(([a], [b]) => a.localeCompare(b));
    fill(latest, values.length
      ? values.map(([key, v]) => h('tr', { dataset: { key } }, h('td', {}, key), h('td', { class: 'num' }, typeof v.value === 'object' ? JSON.stringify(v.value) : String(v.value)), h('td', { title: v.ts }, ago(v.ts))))
      : h('tr', {}, h('td', { class: 'empty', colspan: 3 }, 'No telemetry yet.')));
    fill(position, positionOf(last.values || {}));
    const numeric = values.filter(([, v]) => typeof v.value === 'number').map(([key]) => key);
    // Someone reading a chart's hover values keeps that chart until the pointer leaves.
    if (charts.matches(':hover') && charts.querySelector('svg.chart')) return;
    fill(charts, numeric.length ? numeric.map((key) => h('div', { class: 'chart-box', dataset: { key } },
      h('h3', {}, key, h('span', { class: 'muted' }, withUnit(last.values[key].value, unitOf(last.values[key])))),
      lineChart(points.filter((p) => typeof p.values[key] === 'number').map((p) => ({ t: p.ts_ms, v: p.values[key] })),
        { from, to, label: key, unit: unitOf(last.values[key]) })))
      : h('p', { class: 'muted' }, 'No numeric telemetry keys.'));
  };

  const loadEvents = async () => {
    const page = await get(`${base}/events?limit=${DEVICE_EVENTS}`);
    if (stopped) return;
    fill(eventsBody, page.items.length ? page.items.map(deviceEventRow)
      : h('tr', {}, h('td', { colspan: 3, class: 'empty' }, 'No events yet.')));
  };

  const cancel = async (c) => {
    await del(`/commands/${enc(c.command_id)}`);
    loadCommands();
  };
  const loadCommands = async () => {
    const page = await get(`${base}/commands?limit=50`);
    if (stopped) return;
    fill(commandsBody, page.items.length ? page.items.map((c) => commandRow(c, cancel))
      : h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No commands yet.')));
    if (watching) {
      const c = page.items.find((x) => x.command_id === watching) || await get(`/commands/${enc(watching)}`);
      fill(watch, 'Command ', h('code', {}, c.command_id), ' is ', badge(c.status),
        TERMINAL.has(c.status) ? [' ', h('code', {}, c.error ?? JSON.stringify(c.result ?? null))] : ' …');
      if (TERMINAL.has(c.status)) watching = null;
    }
  };

  const loadConfig = async () => {
    try {
      config = await get(`${base}/config`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
      config = null;
    }
    if (stopped) return;
    // A new reported version means a new status payload: show it too.
    if (config && lastReported !== undefined && config.reported_version !== lastReported) loadInfo();
    lastReported = config?.reported_version;
    configVersion.textContent = config ? String(config.version) : 'none';
    configReported.textContent = config?.reported_version ?? '—';
    if (!configDirty) configText.value = JSON.stringify(config?.config ?? {}, null, 2);
    clearTimeout(configTimer);
    if (config && config.reported_version !== config.version) {
      configMsg.textContent = 'waiting for the device to apply it';
      configTimer = setTimeout(() => loadConfig().catch(() => {}), CONFIG_RECHECK_MS);
    } else {
      configMsg.textContent = config ? 'applied by the device' : '';
    }
  };

  const sendForm = h('form', { class: 'stack', id: 'send-command' },
    h('label', {}, 'Type', h('input', { name: 'type', required: true, placeholder: 'RELOAD' })),
    h('label', {}, 'Params (JSON object)', h('textarea', { name: 'params', rows: 3, placeholder: '{}' })),
    h('label', {}, 'Metadata (JSON, returned as given)', h('textarea', { name: 'metadata', rows: 2, placeholder: '{"job_id":"123"}' })),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Send command')), watch);
  sendForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = sendForm.elements;
    try {
      const body = { type: f.type.value.trim(), params: parseJsonField(f.params.value, 'params', {}) };
      const metadata = parseJsonField(f.metadata.value, 'metadata', undefined);
      if (metadata !== undefined) body.metadata = metadata;
      const created = await post(`${base}/commands`, body);
      watching = created.command_id;
      await loadCommands();
    } catch (err) {
      fill(watch, h('span', { class: 'error' }, err.message));
    }
  });

  const saveConfig = async (ev) => {
    ev.preventDefault();
    try {
      const value = parseJsonField(configText.value, 'config', {});
      const saved = await put(`${base}/config`, value);
      configDirty = false;
      toast(`Config version ${saved.version} saved`);
      await loadConfig();
    } catch (err) {
      configMsg.textContent = '';
      fill(configMsg, h('span', { class: 'error' }, err.message));
    }
  };
  configText.addEventListener('input', () => { configDirty = true; });

  const rotate = async (what) => {
    if (!confirm(what === 'credentials' ? 'Issue a new token? The device is disconnected until it uses it.' : 'Create a new key generation?')) return;
    const answer = await post(`${base}/rotate-${what}`);
    fill(secrets, what === 'credentials'
      ? secretBox('New credentials', [['username', answer.credentials.username], ['password', answer.credentials.password]])
      : secretBox(`New key, generation ${answer.key.generation}`, [['key', answer.key.base64]]));
    loadInfo();
  };
  const remove = async () => {
    if (!confirm(`Delete device ${id}? Its connection is closed and its credentials stop working.`)) return;
    await del(base);
    location.hash = '#/devices';
  };

  fill(root, title,
    h('div', { class: 'grid' },
      h('div', { class: 'panel' }, h('h2', {}, 'Device'), info,
        h('div', { class: 'row' },
          h('button', { type: 'button', id: 'rotate-credentials', onclick: () => rotate('credentials') }, 'Rotate credentials'),
          h('button', { type: 'button', id: 'rotate-key', onclick: () => rotate('key') }, 'Rotate key'),
          h('button', { type: 'button', class: 'danger', onclick: remove }, 'Delete')), secrets,
        h('h2', {}, 'Connection'), connection),
      h('div', { class: 'panel' }, h('h2', {}, 'Reported status'), status, h('h2', {}, 'Presence history'), presence,
        h('h2', {}, 'Refused connection attempts'), refusedTable)),
    h('div', { class: 'panel' }, h('div', { class: 'spread' }, h('h2', {}, 'Telemetry'), h('label', { class: 'row' }, 'range', range)),
      position, charts, h('h2', {}, 'Latest values'), h('table', {}, h('thead', {}, h('tr', {}, ['key', 'value', 'at'].map((t) => h('th', {}, t)))), latest)),
    h('div', { class: 'grid' },
      h('div', { class: 'panel' }, h('h2', {}, 'Send a command'), sendForm),
      h('div', { class: 'panel' }, h('h2', {}, 'Config'),
        h('p', {}, 'version ', configVersion, ' · reported by the device ', configReported, ' · ', configMsg),
        h('form', { class: 'stack', id: 'config-form', onsubmit: saveConfig }, configText,
          h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Save config'))))),
    h('div', { class: 'panel' }, h('h2', {}, h('a', { href: '#/alarms' }, 'Alarms')),
      h('table', { id: 'device-alarms' }, alarmHead(false), alarmsBody)),
    h('div', { class: 'panel' }, h('h2', {}, 'Commands'),
      h('table', { id: 'commands' }, h('thead', {}, h('tr', {}, ['id', 'type', 'status', 'tries', 'created', 'finished', 'result', ''].map((t) => h('th', {}, t)))), commandsBody)),
    h('div', { class: 'panel' }, h('h2', {}, 'Events'),
      h('table', {}, h('thead', {}, h('tr', {}, ['at', 'type', 'data'].map((t) => h('th', {}, t)))), eventsBody)));
  range.addEventListener('change', () => loadTelemetry());
  const loadDeviceAlarms = async () => {
    const alarms = await loadAlarms({ device: id }, 20);
    if (!stopped) renderAlarms(alarmsBody, alarms, loadDeviceAlarms, false);
  };

  const refresh = async () => {
    await Promise.all([loadInfo(), loadCommands(), loadConfig(), loadTelemetry(), loadEvents(), loadRefused(), loadDeviceAlarms()]);
  };
  refresh().catch((err) => {
    if (err.status === 404) fill(root, h('div', { class: 'panel' }, `No device ${id}. `, h('a', { href: '#/devices' }, 'All devices')));
    else throw err;
  });
  const telemetryTimer = setInterval(() => {
    loadTelemetry().catch(() => {});
    loadRefused().catch(() => {});
  }, TELEMETRY_EVERY_MS);
  const presenceLike = (e) => e.type.startsWith('device.') && e.type !== 'device.event';
  for (const ev of ctx.recent.filter((e) => e.device_id === id && presenceLike(e))) history.push(ev);

  return {
    refresh,
    onEvent(ev) {
      if (ev.device_id !== id) return;
      if (ev.type === 'device.online' || ev.type === 'device.offline') {
        history.unshift(ev);
      }
      // The device's own events only add a row to the events table.
      pending.add(ev.type === 'device.event' ? 'events' : ev.type.split('.')[0]);
      clearTimeout(eventTimer);
      eventTimer = setTimeout(() => {
        const work = [loadInfo()];
        if (pending.has('command')) work.push(loadCommands());
        if (pending.has('device')) work.push(loadConfig());
        if (pending.has('events')) work.push(loadEvents());
        if (pending.has('alarm')) work.push(loadDeviceAlarms());
        if (pending.has('telemetry')) work.push(loadTelemetry());
        pending.clear();
        Promise.all(work);
      }, EVENT_DEBOUNCE_MS);
    },
    unmount() { stopped = true; clearTimeout(configTimer); clearTimeout(eventTimer); clearInterval(telemetryTimer); },
  };
}
