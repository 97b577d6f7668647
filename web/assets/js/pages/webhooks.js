// Webhooks: the endpoints (the config file's, read-only, and those created here) and the
// deliveries the outbox still owes or gave up on, with retry-now and discard.

import { del, enc, get, patch, post, qs } from '../api.js';
import { ago, badge, fill, fmtTime, h, toast } from '../dom.js';

/** `a, b` → ['a', 'b']; empty → null (every event type). */
function parseEvents(text) {
  const list = text.split(',').map((s) => s.trim()).filter(Boolean);
  return list.length ? list : null;
}

function endpointsPanel(state) {
  const body = h('tbody');
  const msg = h('p');
  const form = h('form', { class: 'stack', id: 'webhook-form' },
    h('label', {}, 'URL (an http or https URL)', h('input', { name: 'url', type: 'url', required: true })),
    h('label', {}, 'Secret (signs each delivery; never shown again)',
      h('input', { name: 'secret', type: 'password', autocomplete: 'new-password' })),
    h('label', {}, 'Events (comma-separated: device.online, command.*; empty: all)', h('input', { name: 'events' })),
    h('label', { class: 'check' }, h('input', { name: 'enabled', type: 'checkbox', defaultChecked: true }), 'enabled'),
    h('div', { class: 'row' },
      h('button', { class: 'primary', type: 'submit', id: 'webhook-submit' }, 'Create'),
      h('button', { type: 'button', id: 'webhook-cancel', hidden: true, onclick: () => edit(null) }, 'Cancel')),
    msg);
  let editing = null;
  const edit = (endpoint) => {
    editing = endpoint;
    form.reset();
    fill(msg);
    const f = form.elements;
    f.secret.required = !endpoint;
    f.secret.placeholder = endpoint ? 'leave empty to keep the current one' : '';
    if (endpoint) {
      f.url.value = endpoint.url;
      f.events.value = (endpoint.events || []).join(', ');
      f.enabled.checked = endpoint.enabled;
    }
    form.dataset.editing = endpoint ? endpoint.id : '';
    fill(form.querySelector('#webhook-submit'), endpoint ? `Save ${endpoint.id}` : 'Create');
    form.querySelector('#webhook-cancel').hidden = !endpoint;
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    const body = { url: f.url.value.trim(), events: parseEvents(f.events.value), enabled: f.enabled.checked };
    if (f.secret.value) body.secret = f.secret.value;
    try {
      const saved = editing ? await patch(`/webhooks/${enc(editing.id)}`, body) : await post('/webhooks', body);
      toast(`${saved.id} ${editing ? 'saved' : 'created'}`);
      edit(null);
      state.reload();
    } catch (err) {
      fill(msg, h('span', { class: 'error' }, err.message));
    }
  });
  const act = async (what, fn) => {
    try {
      await fn();
      toast(what);
    } catch (err) {
      toast(err.message, true);
    }
    state.reload();
  };
  const actions = (e) => {
    const show = h('button', { type: 'button', dataset: { action: 'deliveries' }, onclick: () => state.showDeliveries(e.id) }, 'deliveries');
    if (e.source === 'config') return [h('span', { class: 'muted' }, 'config file (read-only) '), show];
    return [
      h('button', { type: 'button', dataset: { action: 'edit' }, onclick: () => edit(e) }, 'edit'),
      h('button', { type: 'button', dataset: { action: 'toggle' },
        onclick: () => act(`${e.id} ${e.enabled ? 'disabled' : 'enabled'}`, () => patch(`/webhooks/${enc(e.id)}`, { enabled: !e.enabled })) },
      e.enabled ? 'disable' : 'enable'),
      show,
      h('button', { type: 'button', class: 'danger', dataset: { action: 'delete' },
        onclick: () => confirm(`Delete webhook ${e.id}? What it is still owed is given up.`)
          && act(`${e.id} deleted`, () => del(`/webhooks/${enc(e.id)}`)) }, 'delete'),
    ];
  };
  const render = (endpoints) => fill(body, endpoints.length ? endpoints.map((e) => h('tr', { dataset: { webhook: e.id, source: e.source, enabled: String(e.enabled) } },
    h('td', { class: 'mono' }, e.id), h('td', {}, badge(e.source)), h('td', { class: 'mono' }, e.url),
    h('td', {}, h('code', {}, (e.events || ['*']).join(', '))), h('td', {}, e.enabled ? 'yes' : 'no'),
    h('td', {}, e.created_at ? fmtTime(e.created_at) : '—'), h('td', { class: 'row' }, actions(e))))
    : h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No webhook endpoints.')));
  const panel = [
    h('div', { class: 'panel' }, h('table', { id: 'webhooks' }, h('thead', {}, h('tr', {},
      ['id', 'source', 'url', 'events', 'enabled', 'created', ''].map((t) => h('th', {}, t)))), body)),
    h('div', { class: 'panel' }, h('h2', {}, 'New or changed endpoint'), form),
  ];
  return { panel, render };
}

function deliveriesPanel(state) {
  const webhook = h('select', { id: 'delivery-webhook' });
  const status = h('select', { id: 'delivery-status' },
    ['', 'pending', 'failed', 'dead'].map((v) => h('option', { value: v }, v || 'all')));
  const body = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  let items = [];
  let cursor = null;
  const load = async (append = false) => {
    const query = { webhook: webhook.value, status: status.value, limit: 200, cursor: append ? cursor : '' };
    const page = await get(`/webhooks/deliveries${qs(query)}`);
    if (state.stopped) return;
    items = append ? items.concat(page.items) : page.items;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    fill(body, items.length ? items.map(row) : h('tr', {}, h('td', { colspan: 10, class: 'empty' }, 'Nothing owed.')));
  };
  const act = async (what, fn) => {
    try {
      await fn();
      toast(what);
    } catch (err) {
      toast(err.message, true);
    }
    load();
  };
  const row = (d) => h('tr', { dataset: { delivery: d.id, status: d.status } },
    h('td', {}, d.id), h('td', { class: 'mono', title: d.url }, d.webhook_id || '—'), h('td', {}, h('code', {}, d.event_type)),
    h('td', { title: d.status === 'pending' ? 'not attempted yet' : '' }, badge(d.status)), h('td', { class: 'num' }, d.attempts),
    h('td', { class: 'error' }, d.last_error || ''),
    h('td', { title: d.last_attempt_at || '' }, ago(d.last_attempt_at)),
    h('td', {}, fmtTime(d.next_attempt_at)), h('td', { title: d.created_at }, ago(d.created_at)),
    h('td', { class: 'row' },
      h('button', { type: 'button', dataset: { action: 'retry' }, onclick: () => act(`delivery ${d.id} is due now`, () => post(`/webhooks/deliveries/${enc(d.id)}/retry`)) }, 'retry now'),
      h('button', { type: 'button', class: 'danger', dataset: { action: 'discard' },
        onclick: () => confirm(`Discard delivery ${d.id}? It will not be sent.`)
          && act(`delivery ${d.id} discarded`, () => del(`/webhooks/deliveries/${enc(d.id)}`)) }, 'discard')));
  const setEndpoints = (endpoints) => {
    const chosen = webhook.value;
    fill(webhook, h('option', { value: '' }, 'all endpoints'),
      endpoints.map((e) => h('option', { value: e.id, selected: e.id === chosen }, `${e.id} (${e.url})`)));
  };
  webhook.addEventListener('change', () => load());
  status.addEventListener('change', () => load());
  more.addEventListener('click', () => load(true));
  const panel = h('div', { class: 'panel' },
    h('h2', {}, 'Deliveries'),
    h('div', { class: 'spread' }, h('label', { class: 'row' }, 'endpoint', webhook), h('label', { class: 'row' }, 'status', status)),
    h('table', { id: 'deliveries' }, h('thead', {}, h('tr', {},
      ['id', 'endpoint', 'event', 'status', 'attempts', 'last error', 'last attempt', 'next attempt', 'queued', ''].map((t) => h('th', {}, t)))), body),
    more);
  const show = (id) => {
    webhook.value = id;
    load();
    panel.scrollIntoView();
  };
  return { panel, load, setEndpoints, show };
}

export function mount(root) {
  const state = { stopped: false };
  const endpoints = endpointsPanel(state);
  const deliveries = deliveriesPanel(state);
  state.showDeliveries = deliveries.show;
  state.reload = async () => {
    const page = await get('/webhooks?limit=1000');
    if (state.stopped) return;
    endpoints.render(page.items);
    deliveries.setEndpoints(page.items);
    await deliveries.load();
  };
  fill(root, h('h1', {}, 'Webhooks'), endpoints.panel, deliveries.panel);
  state.reload();
  return { refresh: () => state.reload(), unmount: () => { state.stopped = true; } };
}
