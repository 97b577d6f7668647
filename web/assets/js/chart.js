// A hand-written SVG line chart: one numeric series over a time range.

import { s } from './dom.js';

const W = 560;
const H = 180;
const PAD = { left: 48, right: 12, top: 10, bottom: 22 };

function niceTicks(min, max, count) {
  if (min === max) return [min];
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step / 1e6; v += step) ticks.push(v);
  return ticks;
}

function shortNum(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
  return String(+v.toFixed(2));
}

function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  if (spanMs > 2 * 86400e3) return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/**
 * `points`: `[{t: unix ms, v: number}]` in any order; `from`/`to`: the range in unix ms.
 * Returns an `<svg>`.
 */
export function lineChart(points, { from, to, label }) {
  const pts = points.filter((p) => Number.isFinite(p.v)).sort((a, b) => a.t - b.t);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label,
    'data-points': pts.length });
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  const y0 = H - PAD.bottom;
  const y1 = PAD.top;
  svg.append(s('line', { class: 'axis', x1: x0, y1: y0, x2: x1, y2: y0 }));
  if (pts.length === 0) {
    svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data in this range'));
    return svg;
  }
  let min = Math.min(...pts.map((p) => p.v));
  let max = Math.max(...pts.map((p) => p.v));
  if (min === max) { min -= 1; max += 1; }
  const span = Math.max(1, to - from);
  const x = (t) => x0 + ((t - from) / span) * (x1 - x0);
  const y = (v) => y0 - ((v - min) / (max - min)) * (y0 - y1);
  for (const tick of niceTicks(min, max, 4)) {
    svg.append(s('line', { class: 'grid', x1: x0, x2: x1, y1: y(tick), y2: y(tick) }));
    svg.append(s('text', { x: x0 - 6, y: y(tick) + 3, 'text-anchor': 'end' }, shortNum(tick)));
  }
  for (let i = 0; i <= 4; i += 1) {
    const t = from + (span * i) / 4;
    svg.append(s('text', { x: x(t), y: H - 6, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle' },
      timeLabel(t, span)));
  }
  const d = pts.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ');
  svg.append(s('path', { class: 'line', d }));
  const last = pts[pts.length - 1];
  svg.append(s('circle', { class: 'last', cx: x(last.t), cy: y(last.v), r: 3 },
    s('title', {}, `${label}: ${last.v} at ${new Date(last.t).toLocaleString()}`)));
  return svg;
}
