// The dashboard shell: sign-in, navigation, a hash router, and the live connection that
// tells the current page when to reload.

import { ApiError, checkKey, onUnauthorized, session } from './api.js';
import { fill, h, toast } from './dom.js';
import { Live } from './live.js';
import * as overview from './pages/overview.js';
import * as devices from './pages/devices.js';
import * as device from './pages/device.js';
import * as clients from './pages/clients.js';
import * as client from './pages/client.js';
import * as serviceClients from './pages/service_clients.js';
import * as jobs from './pages/jobs.js';
import * as webhooks from './pages/webhooks.js';
import * as alarms from './pages/alarms.js';
import * as keys from './pages/keys.js';
import * as audit from './pages/audit.js';
import * as topics from './pages/topics.js';

const DEFAULT_POLL_MS = 5000;
/** Events arriving in a burst cause one reload of the page. */
const EVENT_DEBOUNCE_MS = 250;

const NAV = [
  ['#/', 'Overview'],
  ['#/devices', 'Devices'],
  ['#/jobs', 'Jobs'],
  ['#/alarms', 'Alarms'],
  ['#/topics', 'Topics'],
  ['#/clients', 'Clients'],
  ['#/service-clients', 'Service clients'],
  ['#/webhooks', 'Webhooks'],
  ['#/keys', 'API keys'],
  ['#/audit', 'Audit'],
];

/** `?poll_ms=` overrides how often pages reload while there is no live stream. */
function pollMs() {
  const value = Number(new URLSearchParams(location.search).get('poll_ms'));
  return Number.isFinite(value) && value >= 500 ? value : DEFAULT_POLL_MS;
}

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case undefined: return { page: overview, nav: '#/' };
    case 'devices': return parts[1] ? { page: device, nav: '#/devices', args: [parts[1]] } : { page: devices, nav: '#/devices' };
    case 'jobs': return { page: jobs, nav: '#/jobs' };
    case 'alarms': return { page: alarms, nav: '#/alarms' };
    case 'topics': return { page: topics, nav: '#/topics' };
    case 'clients': return parts[1] ? { page: client, nav: '#/clients', args: [parts[1]] } : { page: clients, nav: '#/clients' };
    case 'service-clients': return { page: serviceClients, nav: '#/service-clients' };
    case 'webhooks': return { page: webhooks, nav: '#/webhooks' };
    case 'keys': return { page: keys, nav: '#/keys' };
    case 'audit': return { page: audit, nav: '#/audit' };
    default: return null;
  }
}

const app = {
  root: document.getElementById('app'),
  current: null,
  live: null,
  recent: [],
  reloadTimer: null,

  signIn(message) {
    this.stopLive();
    this.unmount();
    this.main = null;
    const input = h('input', { type: 'password', name: 'api_key', autocomplete: 'current-password',
      placeholder: 'admin API key', required: true, autofocus: true });
    const error = h('p', { class: 'error', role: 'alert' }, message || '');
    const submit = async (ev) => {
      ev.preventDefault();
      error.textContent = '';
      const key = input.value.trim();
      try {
        if (!(await checkKey(key))) {
          error.textContent = 'That key was not accepted.';
          return;
        }
      } catch (err) {
        error.textContent = err.message;
        return;
      }
      session.key = key;
      this.start();
    };
    fill(this.root, h('div', { class: 'panel signin' },
      h('h1', {}, h('img', { src: '/assets/logo.svg', alt: '' }), 'fleetmq'),
      h('p', { class: 'muted' }, 'Sign in with an API key (data/admin.key on the server, or a named key). It is kept in this tab only.'),
      h('form', { class: 'stack', id: 'signin', onsubmit: submit },
        h('label', {}, 'API key', input), h('button', { class: 'primary', type: 'submit' }, 'Sign in'), error)));
  },

  start() {
    this.liveEl = h('span', { class: 'live', id: 'live', dataset: { live: 'connecting' } }, 'connecting');
    this.nav = h('nav', {}, NAV.map(([href, text]) => h('a', { href }, text)));
    this.main = h('main');
    fill(this.root,
      h('header', { class: 'top' },
        h('a', { class: 'brand', href: '#/' }, h('img', { src: '/assets/logo.svg', alt: '' }), 'fleetmq'),
        this.nav, this.liveEl,
        h('button', { type: 'button', onclick: () => { session.clear(); this.signIn(); } }, 'Sign out')),
      this.main);
    this.live = new Live({
      pollMs: pollMs(),
      onEvent: (ev) => this.event(ev),
      onGap: () => this.refresh(),
      onPoll: () => this.refresh(),
      onState: (state) => {
        this.liveEl.dataset.live = state;
        this.liveEl.textContent = state;
        this.liveEl.title = state === 'live' ? 'receiving server-sent events' : 'reloading every few seconds';
      },
    });
    this.live.start();
    this.show();
  },

  stopLive() {
    this.live?.stop();
    this.live = null;
  },

  unmount() {
    this.current?.unmount?.();
    this.current = null;
  },

  show() {
    if (!session.key) return this.signIn();
    if (!this.main) return this.start();
    const found = route();
    this.unmount();
    for (const a of this.nav.querySelectorAll('a')) a.classList.toggle('active', a.getAttribute('href') === found?.nav);
    if (!found) {
      fill(this.main, h('div', { class: 'panel' }, 'No such page. ', h('a', { href: '#/' }, 'Overview')));
      return undefined;
    }
    const ctx = { recent: this.recent, live: () => this.live?.state === 'live', pollMs: pollMs() };
    this.current = found.page.mount(this.main, ctx, ...(found.args || []));
    return undefined;
  },

  refresh() {
    this.current?.refresh?.();
  },

  event(ev) {
    this.recent.unshift(ev);
    this.recent.length = Math.min(this.recent.length, 200);
    if (this.current?.onEvent) {
      this.current.onEvent(ev);
      return;
    }
    // Batched telemetry comes every few seconds per device: a page that does not ask
    // for events is not reloaded for it.
    if (ev.type === 'telemetry') return;
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.refresh(), EVENT_DEBOUNCE_MS);
  },
};

onUnauthorized(() => {
  app.signIn('Your session ended: sign in again.');
});
window.addEventListener('hashchange', () => app.show());
// A failed API call that no page handled is shown, and counts as handled (a 401 has
// already sent the user to sign-in); anything else is a bug and stays an error.
window.addEventListener('unhandledrejection', (ev) => {
  if (ev.reason instanceof ApiError) {
    ev.preventDefault();
    if (ev.reason.status !== 401) toast(ev.reason.message, true);
    return;
  }
  toast(ev.reason?.message || String(ev.reason), true);
});
app.show();
