// DOM helpers: elements are built with properties and text nodes only, never from HTML
// strings, so nothing a device reports can become markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** `h('a', {href: '#/'}, 'text', child)`: an HTML element. `on*` attributes are listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key in el && typeof value !== 'string') {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : value);
    }
  }
  return append(el, children);
}

/** An SVG element with the given attributes. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  return append(el, children);
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function fmtTime(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleString();
}

/** "5 s ago", "3 min ago", ... */
export function ago(ts) {
  if (!ts) return '—';
  const secs = Math.round((Date.now() - new Date(ts).getTime()) / 1000);
  if (!Number.isFinite(secs)) return String(ts);
  if (secs < 5) return 'just now';
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} d ago`;
}

/** A duration in seconds as "42 s", "3 min", "2 h 5 min", "4 d 2 h". */
export function fmtDuration(secs) {
  if (!Number.isFinite(secs) || secs < 0) return '—';
  const s = Math.floor(secs);
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  if (min < 60) return `${min} min`;
  const hours = Math.floor(min / 60);
  if (hours < 24) return min % 60 ? `${hours} h ${min % 60} min` : `${hours} h`;
  const days = Math.floor(hours / 24);
  return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

export function json(value) {
  return value === null || value === undefined ? '—' : JSON.stringify(value, null, 2);
}

export function badge(status) {
  return h('span', { class: `badge ${status}`, dataset: { status } }, status);
}

export function dot(online) {
  return h('span', { class: online ? 'dot on' : 'dot', title: online ? 'online' : 'offline',
    dataset: { online: String(Boolean(online)) } });
}

export function labelChips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => h('span', { class: 'label-chip' }, `${k}=${v}`));
}

/** Parses a JSON textarea; an empty one is `fallback`. Throws with a readable message. */
export function parseJsonField(text, what, fallback) {
  if (!text.trim()) return fallback;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${err.message}`);
  }
}

let toastTimer;
/** A short message in the corner. */
export function toast(message, bad = false) {
  document.querySelector('.toast')?.remove();
  const el = h('div', { class: bad ? 'toast bad' : 'toast', role: 'status' }, message);
  document.body.append(el);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.remove(), 4000);
}

/**
 * An id shown whole in selectable monospace, with a button that copies it (the text
 * stays selectable where the clipboard is not available, e.g. plain http).
 */
export function copyable(text, attrs = {}) {
  const button = h('button', { type: 'button', class: 'copy', title: `copy ${text}`, 'aria-label': `copy ${text}`, dataset: { copy: text } }, 'copy');
  button.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = 'copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = 'selected';
    }
    setTimeout(() => { button.textContent = 'copy'; }, 1500);
  });
  const code = h('code', { class: 'id', ...attrs }, text);
  return h('span', { class: 'copyable' }, code, button);
}

/** A one-time secret: shown once, with a copy button. */
export function secretBox(title, entries) {
  return h('div', { class: 'secret', dataset: { secret: '' } },
    h('strong', {}, title), h('div', { class: 'muted' }, 'Shown once: store it now.'),
    entries.map(([name, value]) => h('div', { class: 'row' },
      h('span', {}, `${name}:`), h('code', { dataset: { field: name } }, value),
      h('button', { type: 'button', onclick: () => navigator.clipboard?.writeText(value) }, 'copy'))));
}
