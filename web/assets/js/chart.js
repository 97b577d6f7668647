// A hand-written SVG line chart: one numeric series over a time range, with a hover
// read-out (time and value of the nearest point) and axis labels drawn at a readable
// size whatever the chart's width (the SVG is redrawn to its box's pixel width).

import { s } from './dom.js';

const DEFAULT_W = 560;
const H = 180;
const PAD = { left: 52, right: 14, top: 12, bottom: 24 };
/** Axis and read-out text, in CSS pixels. */
export const FONT_PX = 12;

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
  if (spanMs < 10 * 60e3) return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

function draw(svg, pts, { from, to, label, unit }, W) {
  svg.replaceChildren();
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('height', String(H));
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  const y0 = H - PAD.bottom;
  const y1 = PAD.top;
  svg.append(s('line', { class: 'axis', x1: x0, y1: y0, x2: x1, y2: y0 }));
  if (pts.length === 0) {
    svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data in this range'));
    return;
  }
  let min = Math.min(...pts.map((p) => p.v));
  let max = Math.max(...pts.map((p) => p.v));
  if (min === max) { min -= 1; max += 1; }
  const span = Math.max(1, to - from);
  const x = (t) => x0 + ((t - from) / span) * (x1 - x0);
  const y = (v) => y0 - ((v - min) / (max - min)) * (y0 - y1);
  for (const tick of niceTicks(min, max, 4)) {
    svg.append(s('line', { class: 'grid', x1: x0, x2: x1, y1: y(tick), y2: y(tick) }));
    svg.append(s('text', { class: 'tick', x: x0 - 6, y: y(tick) + 4, 'text-anchor': 'end' }, shortNum(tick)));
  }
  if (unit) svg.append(s('text', { class: 'tick unit', x: 4, y: y1 + 4 }, unit));
  const xTicks = W < 420 ? 2 : 4;
  for (let i = 0; i <= xTicks; i += 1) {
    const t = from + (span * i) / xTicks;
    svg.append(s('text', { class: 'tick', x: x(t), y: H - 6, 'text-anchor': i === 0 ? 'start' : i === xTicks ? 'end' : 'middle' },
      timeLabel(t, span)));
  }
  const d = pts.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ');
  svg.append(s('path', { class: 'line', d }));
  const last = pts[pts.length - 1];
  const fmt = (p) => `${shortNum(p.v)}${unit ? ` ${unit}` : ''}`;
  svg.append(s('circle', { class: 'last', cx: x(last.t), cy: y(last.v), r: 3 },
    s('title', {}, `${label}: ${fmt(last)} at ${new Date(last.t).toLocaleString()}`)));

  // Hover: a guide line, a dot and a box with the nearest point's time and value.
  const guide = s('line', { class: 'guide', y1, y2: y0 });
  const dot = s('circle', { class: 'hover-dot', r: 4 });
  const box = s('rect', { class: 'tip-box', rx: 4, height: FONT_PX * 2 + 12 });
  const line1 = s('text', { class: 'tip-value' });
  const line2 = s('text', { class: 'tip-time' });
  const tip = s('g', { class: 'tip', visibility: 'hidden' }, guide, dot, box, line1, line2);
  const area = s('rect', { class: 'hover-area', x: x0, y: y1, width: x1 - x0, height: y0 - y1 });
  svg.append(tip, area);
  const show = (clientX) => {
    const ctm = svg.getScreenCTM();
    if (!ctm) return;
    const px = (clientX - ctm.e) / ctm.a;
    const t = from + ((px - x0) / (x1 - x0)) * span;
    let best = pts[0];
    for (const p of pts) if (Math.abs(p.t - t) < Math.abs(best.t - t)) best = p;
    const [cx, cy] = [x(best.t), y(best.v)];
    for (const [k, v] of [['x1', cx], ['x2', cx]]) guide.setAttribute(k, v);
    dot.setAttribute('cx', cx);
    dot.setAttribute('cy', cy);
    line1.textContent = fmt(best);
    line2.textContent = new Date(best.t).toLocaleString();
    const width = Math.max(line1.getComputedTextLength?.() || 0, line2.getComputedTextLength?.() || 0, 60) + 16;
    const left = cx + 10 + width > x1 ? cx - 10 - width : cx + 10;
    const top = Math.min(Math.max(cy - FONT_PX - 6, y1), y0 - (FONT_PX * 2 + 12));
    box.setAttribute('x', left);
    box.setAttribute('y', top);
    box.setAttribute('width', width);
    line1.setAttribute('x', left + 8);
    line1.setAttribute('y', top + FONT_PX + 3);
    line2.setAttribute('x', left + 8);
    line2.setAttribute('y', top + FONT_PX * 2 + 7);
    tip.setAttribute('visibility', 'visible');
    svg.dataset.hoverValue = String(best.v);
    svg.dataset.hoverTime = String(best.t);
  };
  area.addEventListener('pointermove', (ev) => show(ev.clientX));
  area.addEventListener('pointerleave', () => tip.setAttribute('visibility', 'hidden'));
}

/**
 * `points`: `[{t: unix ms, v: number}]` in any order; `from`/`to`: the range in unix ms;
 * `unit`: shown with the values when given. Returns an `<svg>` drawn at 1 unit = 1 CSS
 * pixel, redrawn when its box changes width.
 */
export function lineChart(points, { from, to, label, unit = '' }) {
  const pts = points.filter((p) => Number.isFinite(p.v)).sort((a, b) => a.t - b.t);
  const svg = s('svg', { class: 'chart', role: 'img', 'aria-label': unit ? `${label} (${unit})` : label,
    'data-points': pts.length });
  const opts = { from, to, label, unit };
  let width = DEFAULT_W;
  draw(svg, pts, opts, width);
  if (typeof ResizeObserver === 'function') {
    const seen = new ResizeObserver((entries) => {
      if (!svg.isConnected) { seen.disconnect(); return; }
      const w = Math.round(entries[0].contentRect.width);
      if (w > 0 && Math.abs(w - width) > 2) {
        width = w;
        draw(svg, pts, opts, width);
      }
    });
    seen.observe(svg);
  }
  return svg;
}
