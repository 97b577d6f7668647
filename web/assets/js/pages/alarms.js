// Alarms (SPEC §11): active alarms first, filtered by device and severity, acknowledged
// here; and the alarm rules with a simple editor.

import { del, enc, get, post, put } from '../api.js';
import { alarmHead, loadAlarms, renderAlarms, SEVERITIES, severity } from '../alarms.js';
import { fill, h, toast } from '../dom.js';
import { apiLabel, shownLabel } from '../labels.js';

const OPS = ['>', '>=', '<', '<=', '==', '!='];

function describeTarget(t) {
  if (t.all) return 'all devices';
  if (t.label) return `label ${shownLabel(t.label)}`;
  return (t.devices || []).join(', ');
}

function describe(c) {
  if (!c) return 'condition no longer holds';
  if (c.offline_for_s !== undefined) return `offline ${c.offline_for_s} s`;
  return `${c.key} ${c.op} ${c.value}${c.for_s ? ` for ${c.for_s} s` : ''}`;
}

function rulesPanel(state) {
  const body = h('tbody');
  const msg = h('p');
  const select = (name, values) => h('select', { name }, values.map((v) => h('option', { value: v }, v)));
  const form = h('form', { class: 'stack', id: 'rule-form' },
    h('label', {}, 'Name', h('input', { name: 'name', required: true })),
    h('label', {}, 'Severity', select('severity', SEVERITIES)),
    h('label', {}, 'Target: all, a label key=value, or device ids', h('div', { class: 'row' },
      select('target_kind', ['all', 'label', 'devices']), h('input', { name: 'target', placeholder: 'e.g. site=lab, or dev-1, dev-2' }))),
    h('label', {}, 'Condition: a telemetry key, or offline', h('div', { class: 'row' },
      select('kind', ['telemetry', 'offline']), h('input', { name: 'key', placeholder: 'key' }), select('op', OPS),
      h('input', { name: 'value', type: 'number', step: 'any', placeholder: 'value' }),
      h('input', { name: 'for_s', type: 'number', min: 0, placeholder: 'for s' }))),
    h('label', {}, 'Clear (optional; empty key: when the condition no longer holds)', h('div', { class: 'row' },
      h('input', { name: 'clear_key', placeholder: 'key' }), select('clear_op', OPS),
      h('input', { name: 'clear_value', type: 'number', step: 'any', placeholder: 'value' }),
      h('input', { name: 'clear_for_s', type: 'number', min: 0, placeholder: 'for s' }))),
    h('div', { class: 'row' },
      h('button', { class: 'primary', type: 'submit', id: 'rule-submit' }, 'Create rule'),
      h('button', { type: 'button', id: 'rule-cancel', hidden: true, onclick: () => edit(null) }, 'Cancel')),
    msg);
  let editing = null;
  const f = form.elements;
  const edit = (rule) => {
    editing = rule;
    form.reset();
    fill(msg);
    if (rule) {
      f.name.value = rule.name;
      f.severity.value = rule.severity;
      const t = rule.target;
      f.target_kind.value = t.all ? 'all' : t.label ? 'label' : 'devices';
      f.target.value = t.label ? shownLabel(t.label) : (t.devices || []).join(', ');
      const c = rule.condition;
      f.kind.value = c.offline_for_s !== undefined ? 'offline' : 'telemetry';
      f.key.value = c.key || '';
      f.op.value = c.op || '>';
      f.value.value = c.value ?? '';
      f.for_s.value = c.offline_for_s ?? c.for_s ?? '';
      if (rule.clear) {
        f.clear_key.value = rule.clear.key;
        f.clear_op.value = rule.clear.op;
        f.clear_value.value = rule.clear.value;
        f.clear_for_s.value = rule.clear.for_s;
      }
    }
    fill(form.querySelector('#rule-submit'), rule ? `Save ${rule.name}` : 'Create rule');
    form.querySelector('#rule-cancel').hidden = !rule;
  };
  const body_of = () => {
    const kind = f.target_kind.value;
    const target = kind === 'all' ? { all: true } : kind === 'label' ? { label: apiLabel(f.target.value) }
      : { devices: f.target.value.split(',').map((s) => s.trim()).filter(Boolean) };
    const forS = Number(f.for_s.value || 0);
    const condition = f.kind.value === 'offline' ? { offline_for_s: forS }
      : { key: f.key.value.trim(), op: f.op.value, value: Number(f.value.value), for_s: forS };
    const rule = { name: f.name.value.trim(), severity: f.severity.value, target, condition };
    if (f.clear_key.value.trim()) {
      rule.clear = { key: f.clear_key.value.trim(), op: f.clear_op.value, value: Number(f.clear_value.value),
        for_s: Number(f.clear_for_s.value || 0) };
    }
    return rule;
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const saved = editing ? await put(`/alarm-rules/${enc(editing.rule_id)}`, body_of()) : await post('/alarm-rules', body_of());
      toast(`rule ${saved.name} ${editing ? 'saved' : 'created'}`);
      edit(null);
      state.reload();
    } catch (err) {
      fill(msg, h('span', { class: 'error' }, err.message));
    }
  });
  const remove = async (r) => {
    if (!confirm(`Delete rule ${r.name}? Its active alarms are cleared.`)) return;
    try {
      await del(`/alarm-rules/${enc(r.rule_id)}`);
      toast(`rule ${r.name} deleted`);
    } catch (err) {
      toast(err.message, true);
    }
    state.reload();
  };
  const render = (rules) => fill(body, rules.length ? rules.map((r) => h('tr', { dataset: { rule: r.rule_id } },
    h('td', {}, r.name), h('td', {}, severity(r.severity)), h('td', {}, describeTarget(r.target)),
    h('td', {}, h('code', {}, describe(r.condition))), h('td', {}, h('code', {}, describe(r.clear))),
    h('td', { class: 'row' },
      h('button', { type: 'button', dataset: { action: 'edit' }, onclick: () => edit(r) }, 'edit'),
      h('button', { type: 'button', class: 'danger', dataset: { action: 'delete' }, onclick: () => remove(r) }, 'delete'))))
    : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No alarm rules.')));
  const panel = [
    h('div', { class: 'panel' }, h('h2', {}, 'Rules'), h('table', { id: 'alarm-rules' }, h('thead', {}, h('tr', {},
      ['name', 'severity', 'target', 'condition', 'clear', ''].map((t) => h('th', {}, t)))), body)),
    h('div', { class: 'panel' }, h('h2', {}, 'New or changed rule'), form),
  ];
  return { panel, render };
}

export function mount(root) {
  const state = { stopped: false };
  const device = h('input', { id: 'alarm-device', placeholder: 'any device' });
  const sev = h('select', { id: 'alarm-severity' }, ['', ...SEVERITIES].map((v) => h('option', { value: v }, v || 'any')));
  const body = h('tbody');
  const rules = rulesPanel(state);
  state.reload = async () => {
    const filter = { device: device.value.trim(), severity: sev.value };
    const [alarms, list] = await Promise.all([loadAlarms(filter), get('/alarm-rules')]);
    if (state.stopped) return;
    renderAlarms(body, alarms, state.reload);
    rules.render(list.items);
  };
  device.addEventListener('change', () => state.reload());
  sev.addEventListener('change', () => state.reload());
  fill(root, h('h1', {}, 'Alarms'),
    h('div', { class: 'panel' },
      h('div', { class: 'spread' }, h('label', { class: 'row' }, 'device', device), h('label', { class: 'row' }, 'severity', sev)),
      h('table', { id: 'alarms' }, alarmHead(), body)),
    rules.panel);
  state.reload();
  return {
    refresh: () => state.reload(),
    onEvent: (ev) => { if (ev.type.startsWith('alarm.')) state.reload(); },
    unmount: () => { state.stopped = true; },
  };
}
