// The admin API client: every call sends `x-api-key` from sessionStorage; a 401 clears
// the key and sends the user back to sign-in.

const KEY_NAME = 'fleetmq.apiKey';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get key() { return sessionStorage.getItem(KEY_NAME); },
  set key(value) { sessionStorage.setItem(KEY_NAME, value); },
  clear() { sessionStorage.removeItem(KEY_NAME); },
};

let unauthorized = () => {};
/** What happens on a 401 (the app shows the sign-in page). */
export function onUnauthorized(fn) { unauthorized = fn; }
export function signedOut() { session.clear(); unauthorized(); }

/** Query string from an object; arrays repeat the parameter, empty values are left out. */
export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const item of Array.isArray(v) ? v : [v]) {
      if (item !== undefined && item !== null && item !== '') q.append(k, item);
    }
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

/** One API call; resolves to the parsed JSON body (null when empty). */
export async function api(method, path, body, { key = session.key, headers = {} } = {}) {
  const init = { method, headers: { 'x-api-key': key || '', ...headers } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(`/api/v1${path}`, init);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (res.status === 401) {
    signedOut();
    throw new ApiError(401, 'unauthorized', data?.error?.message || 'signed out');
  }
  if (!res.ok) {
    throw new ApiError(res.status, data?.error?.code, data?.error?.message || res.statusText);
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body = {}) => api('POST', path, body);
export const put = (path, body) => api('PUT', path, body);
export const patch = (path, body) => api('PATCH', path, body);
export const del = (path) => api('DELETE', path);

/** Whether `key` is accepted, without touching the stored one. */
export async function checkKey(key) {
  const res = await fetch('/api/v1/stats', { headers: { 'x-api-key': key } });
  if (res.ok) return true;
  if (res.status === 401) return false;
  throw new ApiError(res.status, 'unavailable', `the server answered ${res.status}`);
}

export const enc = encodeURIComponent;
