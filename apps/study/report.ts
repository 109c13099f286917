/**
 * The study's outputs: `report.json`, `summary.md` (the tables) and `plot.svg` (per-seed paired
 * differences with their 95 % interval and a line at zero; `plot.png` too when `rsvg-convert`
 * is on PATH).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import type { TopLevelSpec } from 'vega-lite';

import { renderSvg } from '../demo/report.js';
import { verdict } from './stats.js';
import type { Comparison, StudyReport } from './study.js';

const signed = (v: number, digits = 2): string => (Number.isFinite(v) ? `${v >= 0 ? '+' : '−'}${Math.abs(v).toFixed(digits)}` : '–');
const interval = (ci: readonly [number, number]): string => (Number.isFinite(ci[0]) ? `[${signed(ci[0])}, ${signed(ci[1])}]` : '–');

/** Plain words for where zero lies relative to an interval. */
export function verdictText(ci: readonly [number, number]): string {
  switch (verdict(ci)) {
    case 'above':
      return 'KMCL better (interval above 0)';
    case 'below':
      return 'KMCL worse (interval below 0)';
    case 'includes':
      return 'no difference shown (0 inside)';
    default:
      return 'too few seeds';
  }
}

function comparisonLabel(c: Pick<Comparison, 'trainSize' | 'head'>): string {
  return `${c.trainSize} train, ${c.head}`;
}

/** The main table: every (size, head) × metric with both means, Δ, interval and per-seed Δ. */
export function comparisonTable(report: Pick<StudyReport, 'comparisons'>): string {
  const lines = [
    '| training images | head | metric | seeds | ASL-only | KMCL | mean Δ (points) | 95 % CI (paired t) | per-seed Δ | verdict |',
    '|---:|---|---|---:|---:|---:|---:|---|---|---|',
  ];
  for (const c of report.comparisons) {
    lines.push(
      `| ${c.trainSize} | ${c.head} | ${c.metric} | ${c.seeds.length} | ${c.aslMean.toFixed(2)} | ${c.kmclMean.toFixed(2)} | ` +
        `${signed(c.meanDelta)} | ${interval(c.ci95)} | ${c.deltas.map((d) => signed(d)).join(', ')} | ${verdictText(c.ci95)} |`,
    );
  }
  return lines.join('\n');
}

/** ΔAP by class-frequency group. */
export function frequencyTable(report: Pick<StudyReport, 'byFrequency'>): string {
  const lines = [
    '| training images | head | classes (by test frequency) | mean frequency | mean ΔAP (points) | 95 % CI | ΔAP per class |',
    '|---:|---|---|---:|---:|---|---|',
  ];
  for (const g of report.byFrequency) {
    lines.push(
      `| ${g.trainSize} | ${g.head} | ${g.group}: ${g.classes.join(', ')} | ${g.frequency.toFixed(3)} | ${signed(g.meanDelta)} | ${interval(g.ci95)} | ` +
        `${g.classes.map((c, i) => `${c}: ${signed(g.perClass[i])}`).join(', ')} |`,
    );
  }
  return lines.join('\n');
}

/** Time table: the loss op's share of the training step time. */
export function timeTable(report: Pick<StudyReport, 'lossShare' | 'runs' | 'wallMs'>): string {
  const s = report.lossShare;
  const steps = (m: string) => report.runs.filter((r) => r.mode === m).reduce((a, r) => a + r.steps, 0);
  const row = (name: string, loss: number, train: number, share: number, n: number) =>
    `| ${name} | ${n} | ${(train / 1000).toFixed(1)} s | ${(loss / 1000).toFixed(1)} s | ${(100 * share).toFixed(1)} % | ${n ? (loss / n).toFixed(2) : '–'} ms |`;
  return [
    '| runs | steps | training time | loss op time | loss op share | loss op per step |',
    '|---|---:|---:|---:|---:|---:|',
    row('KMCL', s.kmclLossMs, s.kmclTrainMs, s.kmcl, steps('kmcl')),
    row('ASL-only', s.aslLossMs, s.aslTrainMs, s.asl, steps('asl')),
  ].join('\n');
}

/** The tables printed at the end of a run and written to summary.md. */
export function summaryTables(report: StudyReport): string {
  return [
    '## Paired differences KMCL − ASL-only (test split, EMA weights, percentage points)',
    '',
    comparisonTable(report),
    '',
    '## ΔAP by class frequency',
    '',
    frequencyTable(report),
    '',
    '## Time',
    '',
    timeTable(report),
    '',
  ].join('\n');
}

/** `summary.md`. */
export function summaryMarkdown(report: StudyReport): string {
  const c = report.config;
  const env = report.environment;
  const cmd = report.argv.length ? `npm run study -- ${report.argv.join(' ')}` : 'npm run study';
  return [
    '# kmcl study: KMCL vs ASL-only, paired over seeds',
    '',
    `- command: \`${cmd}\`${report.complete ? '' : ' — **stopped part-way: only the runs listed are done**'}`,
    `- date: ${report.createdAt}; commit: ${report.commit ?? 'unknown'}`,
    `- machine: ${env.cpuModel}, ${env.cpuCores} cores, load average ${env.loadAverage.map((v) => v.toFixed(2)).join(' / ')} at the start, ` +
      `${env.loadAverageAtEnd.map((v) => v.toFixed(2)).join(' / ')} at the end; Node ${env.node}; tfjs ${env.tfjsVersion} \`${env.tfjsBackend}\`; ` +
      `kmcl loss ${env.kmclPath === 'fused' ? 'fused native kernel' : `composite (${env.fallbackReason})`} on ${env.resolvedDevice}`,
    `- data: ${report.data.task} of the ${report.data.source}; ${c.valSize} validation and ${c.testSize} test images per seed`,
    `- runs: seeds ${c.seeds.join(', ')}; training sizes ${c.trainSizes.map((n, i) => `${n} (${c.epochs[i]} epochs)`).join(', ')}; ` +
      `batch ${c.batchSize}, peak learning rate ${c.learningRate} (OneCycle), τ = ${c.temperature}; head ablation: ` +
      (c.ablationSeeds > 0 ? `${c.ablationSize} training images, seeds ${c.seeds.slice(0, c.ablationSeeds).join(', ')}` : 'none'),
    `- pairing: each seed draws its own data, initial weights and batch order; KMCL and ASL-only share them`,
    `- interval: ${c.interval}`,
    `- wall time: ${(report.wallMs / 1000).toFixed(0)} s (${(report.wallMs / 60000).toFixed(1)} min) for ${report.runs.length} runs`,
    '',
    summaryTables(report),
    '## Runs',
    '',
    '| seed | training images | head | run | mAP | CF1 | OF1 | seconds |',
    '|---:|---:|---|---|---:|---:|---:|---:|',
    ...report.runs.map(
      (r) =>
        `| ${r.seed} | ${r.trainSize} | ${r.head} | ${r.mode === 'kmcl' ? 'KMCL' : 'ASL-only'} | ${r.metrics.mAP.toFixed(2)} | ${r.metrics.CF1.toFixed(2)} | ${r.metrics.OF1.toFixed(2)} | ${r.seconds.toFixed(0)} |`,
    ),
    '',
  ].join('\n');
}

/**
 * The plot: one panel per metric; one row per (size, head); grey dots the per-seed paired
 * differences, a black bar the 95 % interval with its mean, and a red line at zero.
 */
export function studyPlotSpec(report: Pick<StudyReport, 'comparisons' | 'config'>): TopLevelSpec {
  const rows = report.comparisons.flatMap((c) => [
    ...c.deltas.map((d, i) => ({ comparison: comparisonLabel(c), metric: c.metric, kind: 'seed', delta: d, seed: c.seeds[i] })),
    { comparison: comparisonLabel(c), metric: c.metric, kind: 'mean', delta: c.meanDelta, lo: c.ci95[0], hi: c.ci95[1] },
  ]);
  const order = [...new Set(report.comparisons.map(comparisonLabel))];
  const y = { field: 'comparison', type: 'nominal', title: null, sort: order, axis: { labelLimit: 400 } } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'KMCL − ASL-only on the test split (percentage points)',
      subtitle: `dots: seeds (paired runs); bar: mean with 95 % paired Student-t interval; red line: no difference. Seeds ${report.config.seeds.join(', ')}`,
    },
    background: 'white',
    padding: 10,
    data: { values: rows },
    facet: { column: { field: 'metric', type: 'nominal', title: null, sort: ['mAP', 'CF1', 'OF1'] } },
    spec: {
      width: 220,
      height: { step: 26 },
      layer: [
        { mark: { type: 'rule', color: '#d62728', strokeDash: [4, 3] }, encoding: { x: { datum: 0, type: 'quantitative' } } },
        {
          transform: [{ filter: "datum.kind === 'seed'" }],
          mark: { type: 'point', filled: true, color: '#7f7f7f', opacity: 0.8, size: 30 },
          encoding: { x: { field: 'delta', type: 'quantitative', title: 'Δ (points)' }, y },
        },
        {
          transform: [{ filter: "datum.kind === 'mean'" }],
          mark: { type: 'rule', color: 'black', strokeWidth: 2 },
          encoding: { x: { field: 'lo', type: 'quantitative' }, x2: { field: 'hi' }, y },
        },
        {
          transform: [{ filter: "datum.kind === 'mean'" }],
          mark: { type: 'tick', color: 'black', thickness: 2.5, size: 14 },
          encoding: { x: { field: 'delta', type: 'quantitative' }, y },
        },
      ],
    },
  } as unknown as TopLevelSpec;
}

/** rsvg-convert's path when it is on PATH, else null. */
function pngRenderer(): string | null {
  const r = spawnSync('rsvg-convert', ['--version'], { stdio: 'ignore' });
  return r.status === 0 ? 'rsvg-convert' : null;
}

/**
 * Writes report.json and summary.md (and, with `plot`, plot.svg and plot.png where
 * rsvg-convert is available) into `outDir`; returns the absolute paths (png null when not made).
 */
export async function writeStudyOutputs(
  report: StudyReport,
  outDir: string,
  options: { plot: boolean },
): Promise<{ report: string; summary: string; plot: string | null; png: string | null }> {
  const dir = resolve(outDir);
  mkdirSync(dir, { recursive: true });
  const paths = { report: join(dir, 'report.json'), summary: join(dir, 'summary.md'), plot: null as string | null, png: null as string | null };
  if (options.plot && report.comparisons.length > 0) {
    paths.plot = join(dir, 'plot.svg');
    writeFileSync(paths.plot, await renderSvg(studyPlotSpec(report)));
    if (pngRenderer()) {
      const png = join(dir, 'plot.png');
      const r = spawnSync('rsvg-convert', ['-f', 'png', '-z', '2', '-o', png, paths.plot], { stdio: 'ignore' });
      if (r.status === 0) paths.png = png;
    }
  }
  report.files.png = paths.png ? 'plot.png' : null;
  writeFileSync(paths.summary, summaryMarkdown(report));
  writeFileSync(paths.report, JSON.stringify(report, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
  return paths;
}
