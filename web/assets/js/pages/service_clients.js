// Service clients: MQTT users for host applications, with their ACL rules. Rules are
// deny-by-default: a client created without any may do nothing, so the form says so
// while the field is empty and asks before creating one.

import { del, enc, get, post } from '../api.js';
import { fill, fmtTime, h, parseJsonField, toast } from '../dom.js';

const EXAMPLE_RULES = '[{"action":"subscribe","topic":"device/+/telemetry","allow":true}]';
const NO_RULES = 'No rules: this client will be denied every publish and subscribe (deny all).';

export function mount(root) {
  const body = h('tbody');
  const msg = h('p');
  let stopped = false;
  const load = async () => {
    const page = await get('/service-clients?limit=1000');
    if (stopped) return;
    fill(body, page.items.length ? page.items.map((c) => h('tr', { dataset: { name: c.name } },
      h('td', {}, c.name),
      h('td', {}, h('code', {}, c.rules.map((r) => `${r.allow ? 'allow' : 'deny'} ${r.action} ${r.topic}`).join('\n') || 'no rules (deny all)')),
      h('td', {}, fmtTime(c.created_at)),
      h('td', {}, h('button', { type: 'button', class: 'danger', onclick: () => remove(c.name) }, 'delete'))))
      : h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No service clients.')));
  };
  const remove = async (name) => {
    if (!confirm(`Delete service client ${name}?`)) return;
    await del(`/service-clients/${enc(name)}`);
    toast(`${name} deleted`);
    load();
  };
  const rules = h('textarea', { name: 'rules', rows: 4, placeholder: 'empty: no rules (deny all); see the example below' });
  const rulesWarning = h('p', { class: 'warn', id: 'rules-warning', role: 'status' });
  const checkRules = () => {
    rulesWarning.textContent = rules.value.trim() === '' || /^\[\s*\]$/.test(rules.value.trim()) ? NO_RULES : '';
    rulesWarning.hidden = !rulesWarning.textContent;
  };
  rules.addEventListener('input', checkRules);
  checkRules();
  const form = h('form', { class: 'stack', id: 'service-client-form' },
    h('label', {}, 'Name', h('input', { name: 'name', required: true })),
    h('label', {}, 'Password (at least 8 characters)', h('input', { name: 'password', type: 'password', required: true, minLength: 8, autocomplete: 'new-password' })),
    h('label', {}, 'Rules (JSON array; first match wins, anything unmatched is denied)', rules),
    h('div', { class: 'row muted' }, h('span', {}, 'Example: '), h('code', { id: 'rules-example' }, EXAMPLE_RULES),
      h('button', { type: 'button', id: 'use-example', onclick: () => { rules.value = EXAMPLE_RULES; checkRules(); } }, 'use it')),
    rulesWarning,
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Create')), msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    try {
      const parsed = parseJsonField(f.rules.value, 'rules', []);
      if (!Array.isArray(parsed)) throw new Error('rules must be a JSON array');
      if (parsed.length === 0 && !confirm(`${NO_RULES} Create ${f.name.value.trim()} anyway?`)) {
        fill(msg, h('span', { class: 'muted' }, 'Not created: add rules, or confirm a deny-all client.'));
        return;
      }
      await post('/service-clients', { name: f.name.value.trim(), password: f.password.value, rules: parsed });
      fill(msg, parsed.length ? `Created ${f.name.value.trim()}.` : `Created ${f.name.value.trim()} with no rules: it is denied everything.`);
      form.reset();
      checkRules();
      load();
    } catch (err) {
      fill(msg, h('span', { class: 'error' }, err.message));
    }
  });
  fill(root, h('h1', {}, 'Service clients'),
    h('div', { class: 'panel' }, h('table', { id: 'service-clients' },
      h('thead', {}, h('tr', {}, ['name', 'rules', 'created', ''].map((t) => h('th', {}, t)))), body)),
    h('div', { class: 'panel' }, h('h2', {}, 'New service client'), form));
  load();
  return { refresh: load, unmount: () => { stopped = true; } };
}
