// Message payloads for display: UTF-8 text as it is (unless it has control characters), JSON pretty-printed, anything else
// as hex. Pure: no DOM, so Node's test runner checks it too.

/** Control characters other than tab, line feed and carriage return. */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

/** Bytes of a base64 string. */
export function fromBase64(b64) {
  const bin = atob(b64 || '');
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

/** Bytes of a text. */
export function fromText(text) {
  return new TextEncoder().encode(text || '');
}

/** The bytes as UTF-8 text, or null when they are not valid UTF-8. */
export function utf8(bytes) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

/** `0a 1b ff …`, 16 bytes a line with the offset in front. */
export function hexDump(bytes, max = 4096) {
  const lines = [];
  const end = Math.min(bytes.length, max);
  for (let at = 0; at < end; at += 16) {
    const row = Array.from(bytes.slice(at, Math.min(at + 16, end)), (b) => b.toString(16).padStart(2, '0'));
    lines.push(`${at.toString(16).padStart(6, '0')}  ${row.join(' ')}`);
  }
  if (bytes.length > end) lines.push(`… ${bytes.length - end} more bytes`);
  return lines.join('\n');
}

/**
 * How to show a payload: `{kind, full, short}` with kind `empty`, `json`, `text` or
 * `binary`; `full` pretty-printed JSON, the text, or a hex dump; `short` one line of at
 * most `width` characters for a table.
 */
export function describe(bytes, width = 80) {
  if (bytes.length === 0) return { kind: 'empty', full: '', short: '(empty)' };
  const text = utf8(bytes);
  // Valid UTF-8 full of control characters is binary to a reader.
  if (text === null || CONTROL.test(text)) {
    const hex = Array.from(bytes.slice(0, Math.ceil(width / 3)), (b) => b.toString(16).padStart(2, '0')).join(' ');
    return { kind: 'binary', full: hexDump(bytes), short: clip(hex, width, bytes.length * 3 > width) };
  }
  const trimmed = text.trim();
  if (/^[[{"]/.test(trimmed) || /^(-?\d|true$|false$|null$)/.test(trimmed)) {
    try {
      const value = JSON.parse(trimmed);
      if (typeof value === 'object' && value !== null) {
        return { kind: 'json', full: JSON.stringify(value, null, 2), short: clip(JSON.stringify(value), width) };
      }
    } catch {
      // Not JSON: text.
    }
  }
  return { kind: 'text', full: text, short: clip(text.replace(/\s+/g, ' '), width) };
}

function clip(text, width, more = false) {
  return text.length > width ? `${text.slice(0, width - 1)}…` : `${text}${more ? ' …' : ''}`;
}
