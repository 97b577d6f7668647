// Refused MQTT connection attempts (`GET /api/v1/connections/refused`): why a device or
// client could not connect. The client itself is only told "not authorized" and the
// like; the cause is here (and in the broker's log).

import { get, qs } from './api.js';
import { ago, fill, fmtNum, h } from './dom.js';

/** What each cause means, for the row's tooltip. */
const MEANING = {
  unknown_device: 'no device with this id (never provisioned, or deleted)',
  unknown_service_client: 'no device or service client with this username',
  wrong_token: 'wrong device token (an old one after a rotation reads the same)',
  wrong_password: 'wrong service-client password',
  client_id_mismatch: 'a device must connect with client id = username = its id',
  anonymous_not_allowed: 'no credentials, and anonymous clients are not allowed',
  backoff: 'refused unchecked after repeated failures from this address (mqtt.auth_backoff)',
  connection_limit: 'mqtt.max_connections reached',
  unsupported_protocol: 'not MQTT 3.1.1 or 5',
  malformed_connect: 'the first packet was not a valid CONNECT',
  invalid_client_id: 'empty client id without a clean session',
  keep_alive_too_long: 'Keep Alive above mqtt.max_keepalive_s',
  will_refused: 'will topic invalid or denied, or its payload did not decrypt',
  connect_timeout: 'no CONNECT within mqtt.connect_timeout_s',
  handshake_failed: 'TLS or WebSocket handshake failed',
  closed_before_connect: 'closed before sending CONNECT',
  server_unavailable: 'the broker could not serve it (store or router failure)',
};

export function causeLabel(cause) {
  return h('span', { class: 'badge', title: MEANING[cause] || '', dataset: { cause } }, cause.replaceAll('_', ' '));
}

/** Fetches up to `limit` attempts, of one identity (client id or username) if given. */
export async function loadRefusals({ identity, limit = 100 } = {}) {
  return get(`/connections/refused${qs({ identity, limit })}`);
}

/** Fills `body` (a tbody) with the attempts; `compact` leaves out protocol and peer. */
export function renderRefusals(body, items, { compact = false } = {}) {
  const cols = compact ? 5 : 8;
  fill(body, items.length ? items.map((r) => h('tr', { dataset: { cause: r.cause } },
    h('td', { title: r.at }, ago(r.at)),
    h('td', {}, causeLabel(r.cause)),
    h('td', {}, r.client_id ?? '—'),
    h('td', {}, r.username ?? '—'),
    compact ? null : h('td', {}, r.protocol ? `MQTT ${r.protocol}` : '—'),
    compact ? null : h('td', {}, r.transport),
    compact ? null : h('td', { class: 'mono' }, r.peer),
    h('td', { class: 'num', title: `since ${r.first_at}` }, fmtNum(r.count))))
    : h('tr', {}, h('td', { colspan: cols, class: 'empty' }, 'No refused attempts.')));
}

/** A table for [`renderRefusals`]; returns `[table, tbody]`. */
export function refusalTable(id, { compact = false } = {}) {
  const heads = compact
    ? ['last', 'cause', 'client id', 'username', 'count']
    : ['last', 'cause', 'client id', 'username', 'protocol', 'transport', 'peer', 'count'];
  const body = h('tbody');
  const table = h('table', { id }, h('thead', {}, h('tr', {}, heads.map((t) => h('th', {}, t)))), body);
  return [table, body];
}
