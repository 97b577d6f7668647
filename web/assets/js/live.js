// Live updates: `GET /api/v1/events` read with fetch() + ReadableStream (EventSource
// cannot send `x-api-key`), reconnecting with backoff and `Last-Event-ID`. While the
// stream is down, or the server has no such route, the app polls instead.

import { session, signedOut } from './api.js';
import { SseParser } from './sse.js';

const MIN_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30000;
/** A server without the route is asked again this rarely. */
const MISSING_RETRY_MS = 60000;

export class Live {
  /**
   * `onEvent(event)` per event (`{id, type, at, device_id, data}`), `onGap()` when the
   * server says events were missed, `onPoll()` every `pollMs` while not live,
   * `onState(state)` with `connecting`, `live` or `polling`.
   */
  constructor({ pollMs, onEvent, onGap, onPoll, onState }) {
    Object.assign(this, { pollMs, onEvent, onGap, onPoll, onState });
    this.state = 'connecting';
    this.lastEventId = '';
    this.backoff = MIN_BACKOFF_MS;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.pollTimer = setInterval(() => {
      if (this.state !== 'live') this.onPoll();
    }, this.pollMs);
    this.run();
  }

  stop() {
    this.stopped = true;
    clearInterval(this.pollTimer);
    clearTimeout(this.wake);
    this.abort?.abort();
  }

  setState(state) {
    if (state === this.state) return;
    const wasLive = this.state === 'live';
    this.state = state;
    this.onState(state);
    // Whatever happened while the stream was down is fetched once right away.
    if (wasLive && !this.stopped) this.onPoll();
  }

  async run() {
    while (!this.stopped) {
      let wait = this.backoff;
      try {
        wait = await this.connect();
      } catch (err) {
        if (this.stopped) return;
        console.debug('event stream failed', err);
      }
      if (this.stopped) return;
      this.setState('polling');
      await new Promise((resolve) => { this.wake = setTimeout(resolve, wait); });
      this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    }
  }

  /** One connection; returns how long to wait before the next one. */
  async connect() {
    this.abort = new AbortController();
    const headers = { 'x-api-key': session.key || '', accept: 'text/event-stream' };
    if (this.lastEventId) headers['last-event-id'] = this.lastEventId;
    // No `type`: every kind of event the stream carries (device, command, alarm, job,
    // and telemetry while a webhook asks for it); each page picks what it needs.
    const res = await fetch('/api/v1/events', {
      headers, signal: this.abort.signal, cache: 'no-store',
    });
    if (res.status === 401) {
      this.stop();
      signedOut();
      return 0;
    }
    if (res.status === 404) return MISSING_RETRY_MS;
    if (!res.ok || !res.body) return this.backoff;
    this.backoff = MIN_BACKOFF_MS;
    this.setState('live');
    const parser = new SseParser((frame) => this.frame(frame));
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    return this.backoff;
  }

  frame({ id, event, data }) {
    if (id) this.lastEventId = id;
    if (event === 'gap') {
      this.onGap();
      return;
    }
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      return;
    }
    this.onEvent({ ...parsed, type: parsed.type || event });
  }
}
