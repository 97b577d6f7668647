// A server-sent events parser (the WHATWG "event stream" format) for streams read with
// fetch(): EventSource cannot send the `x-api-key` header. Pure: no DOM, so Node's test
// runner checks it too.

export class SseParser {
  /** `onEvent({id, event, data})` per dispatched event; `onComment(text)` per comment. */
  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.buffer = '';
    this.lastEventId = '';
    this.retry = null;
    this.skipLf = false;
    this.resetEvent();
  }

  resetEvent() {
    this.eventType = '';
    this.data = [];
    this.sawData = false;
  }

  /** Feeds decoded text; lines may be split anywhere across calls. */
  push(text) {
    // A CR ends a line at once; an LF right after it (maybe in the next chunk) belongs to it.
    if (!text) return;
    if (this.skipLf && text.startsWith('\n')) text = text.slice(1);
    this.skipLf = false;
    this.buffer += text;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i += 1) {
      const c = this.buffer[i];
      if (c !== '\r' && c !== '\n') continue;
      this.line(this.buffer.slice(start, i));
      if (c === '\r') {
        if (i + 1 === this.buffer.length) this.skipLf = true;
        else if (this.buffer[i + 1] === '\n') i += 1;
      }
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') return this.dispatch();
    if (line.startsWith(':')) return this.onComment(line.slice(1).trimStart());
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event': this.eventType = value; break;
      case 'data': this.data.push(value); this.sawData = true; break;
      case 'id': if (!value.includes('\0')) this.lastEventId = value; break;
      case 'retry': if (/^\d+$/.test(value)) this.retry = Number(value); break;
      default: break;
    }
    return undefined;
  }

  dispatch() {
    // Unlike EventSource, an event with a type but no data (e.g. `event: gap`) is
    // still delivered: it tells the page to reload.
    if (this.sawData || this.eventType) {
      this.onEvent({ id: this.lastEventId, event: this.eventType || 'message', data: this.data.join('\n') });
    }
    this.resetEvent();
  }
}
