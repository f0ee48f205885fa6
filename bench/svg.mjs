import { writeFileSync } from 'node:fs';

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');

/** A plain SVG bar chart: throughput per target, with p99 latency written beside each bar. */
export function writeSvg(file, report) {
  const rows = report.rows;
  const width = 900;
  const barH = 26;
  const left = 320;
  const top = 50;
  const height = top + rows.length * (barH + 12) + 40;
  const max = Math.max(...rows.map((r) => r.reqPerSec), 1);
  const scale = (width - left - 170) / max;
  const bars = rows
    .map((r, i) => {
      const y = top + i * (barH + 12);
      const w = Math.max(1, r.reqPerSec * scale);
      const color = r.target.startsWith('portcullis')
        ? '#2b6cb0'
        : r.target.startsWith('upstream')
          ? '#718096'
          : '#dd6b20';
      return [
        `<text x="${left - 10}" y="${y + 18}" text-anchor="end" font-size="13">${esc(r.target)}</text>`,
        `<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${color}"/>`,
        `<text x="${(left + w + 8).toFixed(1)}" y="${y + 18}" font-size="12">${r.reqPerSec} req/s · p99 ${r.p99.toFixed(1)} ms</text>`,
      ].join('');
    })
    .join('\n');
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
<title>Portcullis benchmark: requests per second and p99 latency per target</title>
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="28" font-size="16" font-weight="bold">Portcullis benchmark — ${esc(report.mode)}, ${esc(report.time)}</text>
${bars}
<text x="20" y="${height - 14}" font-size="11" fill="#4a5568">${esc(report.machine)}; ${report.connections} connections, ${report.rounds} × ${report.durationSeconds}s per target, interleaved</text>
</svg>
`;
  writeFileSync(file, svg);
}
