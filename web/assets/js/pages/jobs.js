// Jobs (SPEC §12): one command to many devices. A form to start one (with a preview of
// how many devices its target matches), every job with a progress bar by state, cancel,
// and a job's failed devices.

import { del, enc, get, post, qs } from '../api.js';
import { ago, badge, fill, fmtNum, h, toast } from '../dom.js';
import { apiLabel } from '../labels.js';

/** How often the page reloads while some job is running. */
const PROGRESS_POLL_MS = 2000;

/** The states a progress bar shows, in order (terminal ones first). */
const STATES = ['completed', 'failed', 'expired', 'cancelled', 'superseded', 'delivered', 'sent', 'queued', 'pending'];

/** A bar of one segment per state, each as wide as its share of the targets. */
export function progress(job) {
  const total = Math.max(job.target_count, 1);
  const bar = h('div', { class: 'progress', title: STATES.map((s) => `${s}: ${job.counts[s]}`).join(', ') });
  for (const state of STATES) {
    const n = job.counts[state];
    if (!n) continue;
    const seg = h('span', { class: `seg ${state}`, dataset: { state, count: String(n) } });
    seg.style.width = `${(100 * n) / total}%`;
    bar.append(seg);
  }
  return bar;
}

/** `{"a":1}` → object; empty → undefined; anything else is an error for `field`. */
function parseObject(text, field) {
  if (!text.trim()) return undefined;
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${field}: ${err.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error(`${field}: must be a JSON object`);
  return value;
}

const num = (text) => (text.trim() === '' ? undefined : Number(text));

/** The request body the form describes. */
function jobBody(f) {
  const target = f.target_kind.value === 'all' ? { all: true }
    : f.target_kind.value === 'label' ? { label: apiLabel(f.target.value) }
      : { devices: f.target.value.split(/[\s,]+/).filter(Boolean) };
  const command = { type: f.type.value.trim() };
  const params = parseObject(f.params.value, 'params');
  const metadata = parseObject(f.metadata.value, 'metadata');
  if (params) command.params = params;
  if (metadata) command.metadata = metadata;
  if (num(f.timeout_s.value) !== undefined) command.timeout_s = num(f.timeout_s.value);
  const body = { name: f.name.value.trim(), target, command };
  const rollout = { per_minute: num(f.per_minute.value), max_in_flight: num(f.max_in_flight.value) };
  if (rollout.per_minute !== undefined || rollout.max_in_flight !== undefined) body.rollout = rollout;
  if (num(f.failed_pct.value) !== undefined) body.abort = { failed_pct: num(f.failed_pct.value), min_done: num(f.min_done.value) || 0 };
  return body;
}

/** How many devices a target matches (pages through the device list). */
async function countTarget(f) {
  const kind = f.target_kind.value;
  if (kind === 'devices') return new Set(f.target.value.split(/[\s,]+/).filter(Boolean)).size;
  let label = '';
  if (kind === 'label') {
    try {
      label = apiLabel(f.target.value);
    } catch {
      return null;
    }
  }
  let count = 0;
  let cursor = '';
  do {
    const page = await get(`/devices${qs({ label, limit: 1000, cursor })}`);
    count += page.items.length;
    cursor = page.next_cursor || '';
  } while (cursor);
  return count;
}

function createPanel(state) {
  const msg = h('p');
  const preview = h('span', { class: 'muted', id: 'job-preview' }, '');
  const field = (label, name, attrs = {}) => h('label', {}, label, h('input', { name, ...attrs }));
  const form = h('form', { class: 'stack', id: 'job-form' },
    field('Name', 'name', { required: true }),
    h('label', {}, 'Target', h('select', { name: 'target_kind' },
      h('option', { value: 'label' }, 'devices with label (key=value)'),
      h('option', { value: 'devices' }, 'these devices (ids, comma or space separated)'),
      h('option', { value: 'all' }, 'all devices'))),
    field('Label or device ids', 'target'),
    preview,
    field('Command type', 'type', { required: true }),
    h('label', {}, 'Params (JSON object)', h('textarea', { name: 'params', rows: 2 })),
    h('label', {}, 'Metadata (JSON object; job_id is added)', h('textarea', { name: 'metadata', rows: 2 })),
    field('Answer timeout, s (empty: default)', 'timeout_s', { type: 'number', min: 1 }),
    h('div', { class: 'row' },
      field('Per minute', 'per_minute', { type: 'number', min: 1 }),
      field('Max in flight', 'max_in_flight', { type: 'number', min: 1 })),
    h('div', { class: 'row' },
      field('Abort at failed %', 'failed_pct', { type: 'number', min: 0, max: 100, step: 'any' }),
      field('... once done ≥', 'min_done', { type: 'number', min: 0 })),
    h('button', { class: 'primary', type: 'submit' }, 'Start job'),
    msg);
  let timer = null;
  const refreshPreview = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      try {
        const n = await countTarget(form.elements);
        fill(preview, n === null ? 'label: key=value, e.g. site=lab' : `matches ${fmtNum(n)} device${n === 1 ? '' : 's'}`);
        preview.dataset.count = n === null ? '' : String(n);
      } catch (err) {
        fill(preview, h('span', { class: 'error' }, err.message));
      }
    }, 300);
  };
  form.elements.target_kind.addEventListener('change', refreshPreview);
  form.elements.target.addEventListener('input', refreshPreview);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    fill(msg);
    try {
      const job = await post('/jobs', jobBody(form.elements));
      toast(`job ${job.name} started for ${job.target_count} devices`);
      form.reset();
      fill(preview);
      state.reload();
    } catch (err) {
      fill(msg, h('span', { class: 'error' }, err.message));
    }
  });
  refreshPreview();
  return h('div', { class: 'panel' }, h('h2', {}, 'New job'), form);
}

function failedPanel(state) {
  const title = h('h2', {}, 'Failed devices');
  const body = h('tbody');
  const panel = h('div', { class: 'panel', id: 'job-failed', hidden: true }, title,
    h('table', {}, h('thead', {}, h('tr', {}, ['device', 'status', 'error', 'ended'].map((t) => h('th', {}, t)))), body));
  const show = async (job) => {
    const rows = [];
    for (const status of ['failed', 'expired']) {
      const page = await get(`/jobs/${enc(job.job_id)}/commands${qs({ status, limit: 1000 })}`);
      rows.push(...page.items);
    }
    if (state.stopped) return;
    panel.hidden = false;
    fill(title, `Failed devices of ${job.name}`);
    fill(body, rows.length ? rows.map((c) => h('tr', { dataset: { device: c.device_id } },
      h('td', {}, h('a', { href: `#/devices/${enc(c.device_id)}` }, c.device_id)), h('td', {}, badge(c.status)),
      h('td', { class: 'error' }, c.error || ''), h('td', { title: c.completed_at || '' }, ago(c.completed_at))))
      : h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'None failed.')));
    panel.scrollIntoView();
  };
  return { panel, show };
}

export function mount(root) {
  const state = { stopped: false };
  const body = h('tbody');
  const failed = failedPanel(state);
  const act = async (what, fn) => {
    try {
      await fn();
      toast(what);
    } catch (err) {
      toast(err.message, true);
    }
    state.reload();
  };
  const row = (job) => h('tr', { dataset: { job: job.job_id, status: job.status } },
    h('td', {}, job.name, h('div', { class: 'muted mono' }, job.job_id)),
    h('td', {}, badge(job.status)),
    h('td', { class: 'num' }, fmtNum(job.target_count)),
    h('td', { class: 'wide' }, progress(job),
      h('div', { class: 'muted' }, STATES.filter((s) => job.counts[s]).map((s) => `${s} ${job.counts[s]}`).join(' · '))),
    h('td', { title: job.created_at }, ago(job.created_at)),
    h('td', { class: 'row' },
      h('button', { type: 'button', dataset: { action: 'failed' }, onclick: () => failed.show(job) }, 'failed devices'),
      job.status === 'running' && h('button', { type: 'button', class: 'danger', dataset: { action: 'cancel' },
        onclick: () => confirm(`Cancel job ${job.name}? Its open commands are cancelled.`)
          && act(`job ${job.name} cancelled`, () => del(`/jobs/${enc(job.job_id)}`)) }, 'cancel')));
  state.reload = async () => {
    const page = await get('/jobs');
    if (state.stopped) return;
    state.running = page.items.some((j) => j.status === 'running');
    fill(body, page.items.length ? page.items.map(row) : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No jobs yet.')));
  };
  fill(root, h('h1', {}, 'Jobs'),
    h('div', { class: 'panel' }, h('table', { id: 'jobs' }, h('thead', {}, h('tr', {},
      ['job', 'status', 'targets', 'progress', 'created', ''].map((t) => h('th', {}, t)))), body)),
    failed.panel, createPanel(state));
  state.reload();
  // Commands moving between open states raise no event: while a job runs, poll.
  const timer = setInterval(() => state.running && state.reload(), PROGRESS_POLL_MS);
  return { refresh: () => state.reload(), unmount: () => { state.stopped = true; clearInterval(timer); } };
}
