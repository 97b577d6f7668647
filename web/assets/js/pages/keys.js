// Admin API keys (`/api/v1/keys`): create one (its secret is shown once), list them,
// revoke one. The built-in key (`config` or `admin`) is listed too.

import { del, enc, get, post } from '../api.js';
import { fill, fmtTime, h, secretBox, toast } from '../dom.js';

const ROLES = [
  ['viewer', 'viewer: reads only'],
  ['operator', 'operator: also devices, commands, configuration'],
  ['admin', 'admin: everything, including keys'],
];

export function mount(root) {
  const body = h('tbody');
  const msg = h('div', { id: 'key-created' });
  let stopped = false;
  const load = async () => {
    let items = [];
    let cursor = '';
    do {
      const page = await get(`/keys?limit=1000${cursor ? `&cursor=${enc(cursor)}` : ''}`);
      items = items.concat(page.items);
      cursor = page.next_cursor;
    } while (cursor);
    if (stopped) return;
    fill(body, items.map((k) => h('tr', { dataset: { key: k.name, role: k.role } },
      h('td', {}, k.name), h('td', {}, k.role),
      h('td', {}, k.builtin ? 'built-in' : fmtTime(k.created_at)),
      h('td', {}, h('button', { type: 'button', class: 'danger', onclick: () => revoke(k.name) }, 'revoke')))));
  };
  const revoke = async (name) => {
    if (!confirm(`Revoke API key ${name}? Anything using it is refused at once.`)) return;
    await del(`/keys/${enc(name)}`);
    toast(`${name} revoked`);
    load();
  };
  const form = h('form', { class: 'stack', id: 'key-form' },
    h('label', {}, 'Name (letters, digits, . _ -)', h('input', { name: 'name', required: true, maxLength: 64, pattern: '[A-Za-z0-9._\\-]+' })),
    h('label', {}, 'Role', h('select', { name: 'role' }, ROLES.map(([value, text]) => h('option', { value }, text)))),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Create')), msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    try {
      const answer = await post('/keys', { name: f.name.value.trim(), role: f.role.value });
      fill(msg, secretBox(`API key ${answer.key.name} (${answer.key.role})`, [['secret', answer.secret]]));
      form.reset();
      load();
    } catch (err) {
      fill(msg, h('span', { class: 'error' }, err.message));
    }
  });
  fill(root, h('h1', {}, 'API keys'),
    h('div', { class: 'panel' }, h('table', { id: 'keys' },
      h('thead', {}, h('tr', {}, ['name', 'role', 'created', ''].map((t) => h('th', {}, t)))), body)),
    h('div', { class: 'panel' }, h('h2', {}, 'New API key'), form));
  load();
  return { refresh: load, unmount: () => { stopped = true; } };
}
