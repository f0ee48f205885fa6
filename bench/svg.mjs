import { writeFileSync } from 'node:fs';

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');

const COLORS = { upstream: '#718096', portcullis: '#2b6cb0', peer: '#dd6b20' };
const kindOf = (target) =>
  target.startsWith('portcullis') ? 'portcullis' : target.startsWith('upstream') ? 'upstream' : 'peer';

/** A round number of req/s for axis ticks: 1, 2 or 5 × 10^k, about five ticks over `max`. */
function tickStep(max) {
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? p * 10;
}

/**
 * A bar chart of throughput per target (higher is better), with an x axis in req/s, the range over
 * rounds as a whisker, p99 latency written beside each bar, and a legend.
 */
export function writeSvg(file, report) {
  const rows = report.rows;
  const width = 960;
  const barH = 24;
  const gap = 12;
  const left = 320;
  const right = 190;
  const top = 78;
  const plotH = rows.length * (barH + gap);
  const height = top + plotH + 84;
  const peak = Math.max(...rows.map((r) => r.maxReqPerSec ?? r.reqPerSec), 1);
  const step = tickStep(peak);
  const axisMax = Math.ceil(peak / step) * step;
  const scale = (width - left - right) / axisMax;
  const x = (v) => (left + v * scale).toFixed(1);
  const ticks = [];
  for (let v = 0; v <= axisMax; v += step) {
    ticks.push(
      `<line x1="${x(v)}" y1="${top - 6}" x2="${x(v)}" y2="${top + plotH}" stroke="#e2e8f0"/>`,
      `<text x="${x(v)}" y="${top + plotH + 16}" text-anchor="middle" font-size="11" fill="#4a5568">${v.toLocaleString('en-US')}</text>`,
    );
  }
  const bars = rows
    .map((r, i) => {
      const y = top + i * (barH + gap);
      const w = Math.max(1, r.reqPerSec * scale);
      const lo = r.minReqPerSec ?? r.reqPerSec;
      const hi = r.maxReqPerSec ?? r.reqPerSec;
      const whisker =
        hi > lo
          ? `<line x1="${x(lo)}" y1="${y + barH / 2}" x2="${x(hi)}" y2="${y + barH / 2}" stroke="#1a202c" stroke-width="1.5"/>` +
            `<line x1="${x(lo)}" y1="${y + 6}" x2="${x(lo)}" y2="${y + barH - 6}" stroke="#1a202c"/>` +
            `<line x1="${x(hi)}" y1="${y + 6}" x2="${x(hi)}" y2="${y + barH - 6}" stroke="#1a202c"/>`
          : '';
      return [
        `<text x="${left - 10}" y="${y + 17}" text-anchor="end" font-size="13">${esc(r.target)}</text>`,
        `<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${COLORS[kindOf(r.target)]}"/>`,
        whisker,
        `<text x="${(left + Math.max(w, (hi - 0) * scale) + 8).toFixed(1)}" y="${y + 17}" font-size="12">${r.reqPerSec.toLocaleString('en-US')} req/s · p99 ${r.p99.toFixed(1)} ms</text>`,
      ].join('');
    })
    .join('\n');
  const legendY = top + plotH + 52;
  const legend = [
    ['upstream', 'the service alone (ceiling)'],
    ['portcullis', 'Portcullis'],
    ['peer', 'peers doing the same checks'],
  ]
    .map(
      ([k, label], i) =>
        `<rect x="${20 + i * 260}" y="${legendY - 10}" width="12" height="12" fill="${COLORS[k]}"/>` +
        `<text x="${38 + i * 260}" y="${legendY}" font-size="12">${esc(label)}</text>`,
    )
    .join('');
  const spread =
    report.rounds > 1 ? `whiskers: range over ${report.rounds} rounds` : 'one round: no range shown';
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
<title>Portcullis benchmark: throughput per target (higher is better) and p99 latency</title>
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="28" font-size="16" font-weight="bold">Portcullis benchmark — throughput per target (requests per second, higher is better)</text>
<text x="20" y="50" font-size="12" fill="#4a5568">${esc(report.mode)} run, ${esc(report.time)}; ${report.connections} connections, ${report.rounds} × ${report.durationSeconds} s per target, interleaved; ${spread}</text>
${ticks.join('\n')}
<line x1="${left}" y1="${top + plotH}" x2="${x(axisMax)}" y2="${top + plotH}" stroke="#4a5568"/>
<text x="${x(axisMax / 2)}" y="${top + plotH + 34}" text-anchor="middle" font-size="12" fill="#4a5568">requests per second</text>
${bars}
${legend}
<text x="20" y="${height - 12}" font-size="11" fill="#4a5568">${esc(report.machine)}</text>
</svg>
`;
  writeFileSync(file, svg);
}
