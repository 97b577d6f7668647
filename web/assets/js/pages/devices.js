// Devices: search, label filter (`site=lab` or `site:lab`, sent as the API's
// `label=site:lab`), online filter, and provisioning. A filter that cannot be applied
// empties the list and says why: an unfiltered list under it would look filtered.

import { get, post, qs } from '../api.js';
import { ago, dot, fill, h, labelChips, secretBox } from '../dom.js';
import { labelQuery, parseLabels } from '../labels.js';

function row(d) {
  const href = `#/devices/${encodeURIComponent(d.id)}`;
  return h('tr', { dataset: { device: d.id } },
    h('td', {}, dot(d.online)),
    h('td', {}, h('a', { href }, d.id)),
    h('td', {}, labelChips(d.labels)),
    h('td', {}, d.reported_status?.version ?? '—'),
    h('td', { title: d.last_seen || '' }, d.online ? 'now' : ago(d.last_seen)),
    h('td', {}, d.protocol ? `${d.protocol} / ${d.transport}` : '—'),
    h('td', {}, d.ip || '—'));
}

function provisionForm(onDone) {
  const result = h('div');
  const form = h('form', { class: 'stack', id: 'provision' },
    h('label', {}, 'Device id', h('input', { name: 'id', required: true, placeholder: 'sensor-1' })),
    h('label', {}, 'Labels (key=value, comma separated)', h('input', { name: 'labels', placeholder: 'e.g. site=lab, rack=3' })),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'encrypted' }), 'Encrypt payloads (SPEC §4)'),
    h('div', {}, h('button', { class: 'primary', type: 'submit' }, 'Provision')), result);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    try {
      const body = { id: f.id.value.trim(), labels: parseLabels(f.labels.value) };
      if (f.encrypted.checked) body.encrypted = true;
      const created = await post('/devices', body);
      const entries = [['username', created.credentials.username], ['password', created.credentials.password]];
      if (created.key) entries.push([`key (generation ${created.key.generation})`, created.key.base64]);
      fill(result, secretBox(`Device ${created.device.id} provisioned`, entries),
        h('a', { href: `#/devices/${encodeURIComponent(created.device.id)}` }, 'Open the device'));
      form.reset();
      onDone();
    } catch (err) {
      fill(result, h('p', { class: 'error' }, err.message));
    }
  });
  return form;
}

export function mount(root) {
  const search = h('input', { type: 'search', id: 'device-search', placeholder: 'search id…' });
  const label = h('input', { id: 'label-filter', placeholder: 'labels, e.g. site=lab, rack=3', 'aria-label': 'label filter' });
  const filterError = h('p', { class: 'error', id: 'label-filter-error', role: 'alert', hidden: true });
  const online = h('select', { id: 'online-filter' },
    h('option', { value: '' }, 'all'), h('option', { value: 'true' }, 'online'), h('option', { value: 'false' }, 'offline'));
  const body = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  const count = h('span', { class: 'muted' });
  let items = [];
  let cursor = null;
  let stopped = false;

  const render = () => {
    const needle = search.value.trim().toLowerCase();
    const shown = needle ? items.filter((d) => d.id.toLowerCase().includes(needle)) : items;
    fill(body, shown.length ? shown.map(row) : h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No devices match.')));
    count.textContent = `${shown.length} shown${cursor ? ', more on the server' : ''}`;
    more.hidden = !cursor;
  };
  /** The filter could not be applied: no rows, the reason in place of the count. */
  const refuse = (message) => {
    items = [];
    cursor = null;
    filterError.textContent = message;
    filterError.hidden = false;
    label.setAttribute('aria-invalid', 'true');
    fill(body, h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'Filter not applied: fix it to see devices.')));
    count.textContent = 'filter not applied';
    more.hidden = true;
  };
  let generation = 0;
  const load = async (append = false) => {
    let labels;
    try {
      labels = labelQuery(label.value);
    } catch (err) {
      generation += 1;
      refuse(err.message);
      return;
    }
    const params = { label: labels, online: online.value, limit: 200 };
    if (append) params.cursor = cursor;
    // An older answer (an earlier filter) never overwrites a newer one.
    const mine = ++generation;
    try {
      const page = await get(`/devices${qs(params)}`);
      if (stopped || mine !== generation) return;
      filterError.hidden = true;
      label.removeAttribute('aria-invalid');
      items = append ? items.concat(page.items) : page.items;
      cursor = page.next_cursor;
      render();
    } catch (err) {
      if (mine !== generation) return;
      if (err.status === 400 || err.status === 422) refuse(err.message);
      else throw err;
    }
  };
  let typing;
  search.addEventListener('input', render);
  label.addEventListener('input', () => {
    clearTimeout(typing);
    // Until the new filter's answer is in, what is listed is not what it asks for.
    generation += 1;
    count.textContent = 'filtering…';
    typing = setTimeout(() => load(), 300);
  });
  online.addEventListener('change', () => load());
  more.addEventListener('click', () => load(true));

  fill(root, h('h1', {}, 'Devices'),
    h('div', { class: 'panel' },
      h('div', { class: 'spread' }, h('div', { class: 'row' }, search, label, online), count), filterError,
      h('table', { id: 'devices' },
        h('thead', {}, h('tr', {}, ['', 'id', 'labels', 'version', 'last seen', 'protocol', 'ip'].map((t) => h('th', {}, t)))),
        body),
      more),
    h('div', { class: 'panel' }, h('h2', {}, 'Provision a device'), provisionForm(() => load())));
  load();
  return { refresh: () => load(), unmount: () => { stopped = true; clearTimeout(typing); } };
}
