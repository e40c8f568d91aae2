/**
 * A dependency-free SVG line plot for loss curves, so `tessera train` (and `tessera sim`)
 * leave a picture next to their numbers. The live dashboard uses uPlot; a static file needs
 * nothing more than polylines.
 */
export interface Series {
  name: string;
  color: string;
  points: [number, number][];
}

export interface PlotOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  width?: number;
  height?: number;
  /** Horizontal reference lines, e.g. the unigram entropy. */
  hlines?: { y: number; label: string; color: string }[];
  logX?: boolean;
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

function niceTicks(lo: number, hi: number, n: number): number[] {
  const span = hi - lo || 1;
  const step0 = span / n;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

export function lossPlotSvg(series: Series[], o: PlotOptions): string {
  const W = o.width ?? 800,
    H = o.height ?? 480;
  const m = { l: 64, r: 20, t: 40, b: 50 };
  const fx = (x: number) => (o.logX ? Math.log10(Math.max(x, 1e-12)) : x);
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(fx(x)) && Number.isFinite(y));
  const ys = [...all.map((p) => p[1]), ...(o.hlines ?? []).map((h) => h.y)];
  const xs = all.map((p) => fx(p[0]));
  const x0 = Math.min(...xs, 0),
    x1 = Math.max(...xs, 1);
  let y0 = Math.min(...ys),
    y1 = Math.max(...ys);
  if (!Number.isFinite(y0)) {
    y0 = 0;
    y1 = 1;
  }
  const pad = (y1 - y0) * 0.05 || 0.5;
  y0 -= pad;
  y1 += pad;
  const px = (x: number) => m.l + ((fx(x) - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const py = (y: number) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
  );
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${esc(o.title)}</text>`);
  for (const t of niceTicks(y0, y1, 6)) {
    parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${py(t)}" y2="${py(t)}" stroke="#eee"/>`);
    parts.push(`<text x="${m.l - 6}" y="${py(t) + 4}" text-anchor="end">${t}</text>`);
  }
  for (const t of niceTicks(x0, x1, 8)) {
    const label = o.logX ? Number(Math.pow(10, t).toPrecision(3)).toExponential(0) : String(t);
    const X = m.l + ((t - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
    parts.push(`<line x1="${X}" x2="${X}" y1="${m.t}" y2="${H - m.b}" stroke="#f3f3f3"/>`);
    parts.push(`<text x="${X}" y="${H - m.b + 16}" text-anchor="middle">${label}</text>`);
  }
  parts.push(
    `<rect x="${m.l}" y="${m.t}" width="${W - m.l - m.r}" height="${H - m.t - m.b}" fill="none" stroke="#888"/>`,
  );
  parts.push(`<text x="${W / 2}" y="${H - 10}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  parts.push(
    `<text x="16" y="${H / 2}" text-anchor="middle" transform="rotate(-90 16 ${H / 2})">${esc(o.yLabel)}</text>`,
  );
  for (const h of o.hlines ?? []) {
    parts.push(
      `<line x1="${m.l}" x2="${W - m.r}" y1="${py(h.y)}" y2="${py(h.y)}" stroke="${h.color}" stroke-dasharray="6 4"/>`,
    );
    parts.push(
      `<text x="${W - m.r - 4}" y="${py(h.y) - 5}" text-anchor="end" fill="${h.color}">${esc(h.label)}</text>`,
    );
  }
  series.forEach((s, i) => {
    const pts = s.points.filter(([x, y]) => Number.isFinite(fx(x)) && Number.isFinite(y));
    if (pts.length)
      parts.push(
        `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`,
      );
    parts.push(`<rect x="${m.l + 10}" y="${m.t + 10 + i * 18}" width="12" height="3" fill="${s.color}"/>`);
    parts.push(`<text x="${m.l + 28}" y="${m.t + 15 + i * 18}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}
