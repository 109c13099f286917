/**
 * Turns benchmark result files (schema 1, see format.ts) into markdown: one table per suite with
 * the median time per call, ops/s and the ratio composite / implementation measured in the same
 * run, and the table of the CPU scaling study.
 *
 *   tsx bench/summary.ts bench/results/*.json     (no arguments: every JSON in bench/results/)
 */
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IMPL_LABELS, readResultFile, type MachineInfo, type ResultFile, type ScalingFile, type SuiteFile, type SuiteRow } from './format.js';

/** Three significant digits, no exponent for the values a benchmark shows; integers from 1000 up. */
export function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (Math.abs(x) >= 1000) return Math.round(x).toString();
  if (x === 0) return '0';
  if (Math.abs(x) < 1e-3) return x.toExponential(2);
  return x.toPrecision(3);
}

/** A speed-up factor: `780×`, `34.2×`, `1.52×`. */
export function fmtRatio(x: number): string {
  return `${x >= 100 ? Math.round(x).toString() : x.toPrecision(3)}×`;
}

function fmtMiB(bytes: number): string {
  return fmt(bytes / 2 ** 20);
}

function fmtBytes(bytes: number): string {
  if (bytes >= 2 ** 40) return `${fmt(bytes / 2 ** 40)} TiB`;
  if (bytes >= 2 ** 30) return `${fmt(bytes / 2 ** 30)} GiB`;
  return `${fmt(bytes / 2 ** 20)} MiB`;
}

/** Markdown table cells may not contain a bare `|`. */
function cell(s: string): string {
  return s.replace(/\|/g, '\\|');
}

/** One line on where and how a file was measured. */
export function provenance(f: { machine: MachineInfo; date: string; commit: string; command: string }): string {
  const m = f.machine;
  const cuda = m.cuda.usable ? `CUDA device ${m.cuda.device}` : `CUDA not usable (${m.cuda.reason})`;
  return (
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.platform} ${m.arch}, Node ${m.node}; ` +
    `native CPU threads ${m.nativeThreads}; ${cuda}. Load average at start ${m.loadAverage.join(' / ')} (1 / 5 / 15 min). ` +
    `Date ${f.date}, commit ${f.commit}, command \`${f.command}\`.`
  );
}

function rowCells(r: SuiteRow, composite: SuiteRow | undefined): string[] {
  const label = IMPL_LABELS[r.impl];
  if (r.status !== 'ok') {
    const note = r.status === 'failed' ? `failed: ${r.reason}` : `skipped: ${r.reason}`;
    return [String(r.B), label, '—', '—', '—', '—', cell(note)];
  }
  let ratio = '—';
  if (r.impl !== 'tfjs-composite-cpu') {
    ratio = composite?.status === 'ok' && composite.medianMs !== undefined ? fmtRatio(composite.medianMs / r.medianMs!) : 'n/a';
  }
  return [String(r.B), label, fmt(r.medianMs!), fmt(r.opsPerSec!), String(r.samples), ratio, ''];
}

/** One suite as a heading, a provenance line and a table, one row per (B, implementation). */
export function formatSuite(f: SuiteFile): string {
  const lines = [
    `### ${f.suite}: ${f.title}`,
    '',
    provenance(f),
    `Settings: ${f.settings.quick ? 'quick subset, ' : ''}time cap ${fmt(f.settings.timeCapMs / 1000)} s per call, composite memory budget ${fmtBytes(f.settings.memoryBudgetBytes)}.`,
    '',
    '| B | implementation | median (ms) | ops/s | samples | composite / this | note |',
    '| ---: | --- | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const r of f.rows) {
    const composite = f.rows.find((c) => c.B === r.B && c.impl === 'tfjs-composite-cpu');
    lines.push(`| ${rowCells(r, composite).join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Least squares y = intercept + slope·x, with R². */
export function fitLine(xs: number[], ys: number[]): { intercept: number; slope: number; r2: number } {
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
    syy += (ys[i] - my) ** 2;
  }
  const slope = sxy / sxx;
  return { intercept: my - slope * mx, slope, r2: syy === 0 ? 1 : (sxy * sxy) / (sxx * syy) };
}

/** The scaling study: time, peak RSS and the work measure per B, the fitted slopes. */
export function formatScaling(f: ScalingFile): string {
  const s = f.size;
  const lines = [
    `### Scaling of the native CPU path: K = ${s.K}, M = ${s.M}, D = ${s.D}, variance [B, ${s.Kv}, ${s.Dv}], ${s.positives} positives per sample on average`,
    '',
    provenance(f),
    '',
    '| B | positives Σy | median (ms) | fastest (ms) | calls | fastest / (Σy·B) (ns) | peak RSS (MiB) | RSS above baseline (MiB) | inputs + gradients (MiB) | composite tensors would need |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of f.rows) {
    const nsPerPair = (r.minMs * 1e6) / (r.positives * r.B);
    lines.push(
      `| ${r.B} | ${r.positives} | ${fmt(r.medianMs)} | ${fmt(r.minMs)} | ${r.calls} | ${fmt(nsPerPair)} | ${fmtMiB(r.peakRssBytes)} | ${fmtMiB(r.peakRssBytes - r.baselineRssBytes)} | ${fmtMiB(r.ioBytes)} | ${fmtBytes(r.compositeBytesEstimate)} |`,
    );
  }
  const { time, timeLarge, memory } = f.fits;
  lines.push(
    '',
    `Fitted log-log slope of the fastest call's time against B: ${time.slope.toFixed(2)} over B = ${time.fromB}…${time.toB} (R² ${time.r2.toFixed(4)}), ` +
      `${timeLarge.slope.toFixed(2)} over B = ${timeLarge.fromB}…${timeLarge.toB} (R² ${timeLarge.r2.toFixed(4)}). ` +
      `Peak RSS above the baseline: slope ${memory.slope.toFixed(2)} over B = ${memory.fromB}…${memory.toB} (R² ${memory.r2.toFixed(4)}).`,
  );
  if (f.positivesSweep) {
    const sw = f.positivesSweep;
    lines.push(
      '',
      `Positives sweep at B = ${sw.B} (same K, M, D):`,
      '',
      '| positives per sample | positives Σy | median (ms) | fastest (ms) | calls | fastest / (Σy·B) (ns) |',
      '| ---: | ---: | ---: | ---: | ---: | ---: |',
    );
    for (const r of sw.rows) {
      lines.push(`| ${r.positivesPerSample} | ${r.positives} | ${fmt(r.medianMs)} | ${fmt(r.minMs)} | ${r.calls} | ${fmt((r.minMs * 1e6) / (r.positives * sw.B))} |`);
    }
    if (sw.rows.length >= 2) {
      const line = fitLine(sw.rows.map((r) => r.positives), sw.rows.map((r) => r.minMs));
      lines.push(
        '',
        `Linear in the positives: fastest = ${fmt(line.intercept)} ms + ${fmt(line.slope)} ms × Σy (R² ${line.r2.toFixed(4)}), ` +
          `i.e. ${fmt((line.slope * 1e6) / sw.B)} ns per (positive, sample) pair at B = ${sw.B}; the intercept is the part that does not depend on the labels.`,
      );
    }
  }
  return lines.join('\n');
}

export function formatResult(f: ResultFile): string {
  return f.kind === 'suite' ? formatSuite(f) : formatScaling(f);
}

/** Every file, in the order given, separated by blank lines. */
export function summarize(files: ResultFile[]): string {
  return `${files.map(formatResult).join('\n\n')}\n`;
}

/** The compact result files in a folder (not benny's own files, which live in `benny/`). */
export function resultFilesIn(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => join(dir, f));
}

function main(argv: string[]): void {
  const paths = argv.length > 0 ? argv : resultFilesIn('bench/results');
  if (paths.length === 0) {
    console.error('summary: no result files (run `npm run bench` first, or pass bench/results/*.json)');
    process.exit(2);
  }
  process.stdout.write(summarize(paths.map(readResultFile)));
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main(process.argv.slice(2));
  } catch (e) {
    console.error(`summary: ${(e as Error).message}`);
    process.exit(1);
  }
}
