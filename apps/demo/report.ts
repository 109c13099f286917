/**
 * The demo's outputs: `report.json` (configuration, environment, data, per-epoch loss parts and
 * validation mAP, final test metrics and times of both runs), `plot.svg` (training curves of
 * both runs and the validation mAP per epoch, drawn with vega-lite, rendered headless to SVG)
 * and `summary.md` (the result tables as markdown).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

import type { PrecisionRecallF1 } from 'kmcl/tfjs';

/** The two runs of the demo. */
export type RunName = 'kmcl' | 'asl';

/** Display names of the runs. */
export const RUN_LABELS: Record<RunName, string> = { kmcl: 'KMCL', asl: 'ASL-only' };

/** Mean loss parts of one epoch and the validation mAP (EMA weights) after it. */
export interface EpochRecord {
  /** 1-based epoch number. */
  epoch: number;
  /** Means over the epoch's steps; `loss` is the weighted total that was minimised. */
  loss: number;
  asl: number;
  reconstruction: number;
  contrastive: number;
  /** Learning rate of the epoch's last step. */
  learningRate: number;
  /** mAP on the validation split with the EMA weights after the epoch (fraction in [0, 1]). */
  valMAP: number | null;
  /** Wall time of the epoch's training steps, ms. */
  trainMs: number;
}

/** A point of a training curve: the mean loss parts over a bin of consecutive steps. */
export interface CurvePoint {
  /** Fractional epoch at the end of the bin (1.0 = end of the first epoch). */
  epoch: number;
  loss: number;
  asl: number;
  reconstruction: number;
  contrastive: number;
}

/** Test-split metrics of one run (EMA weights), fractions in [0, 1]. */
export interface TestMetrics extends PrecisionRecallF1 {
  mAP: number;
  /** AP per class; null for a class without positives in the test split. */
  perClassAP: (number | null)[];
  top3: PrecisionRecallF1;
}

/** Time split of one run's training. */
export interface RunTimes {
  /** Σ step time (forward, loss, backward, optimizer, EMA), ms. */
  trainMs: number;
  /** Σ time of the fused loss op (forward and its gradients, one native pass), ms. */
  lossMs: number;
  /** trainMs − lossMs: the backbone and head (forward and backward), optimizer and EMA, ms. */
  backboneMs: number;
  /** Validation after every epoch and the final test evaluation, ms. */
  evalMs: number;
  /** Mean step time, ms. */
  perStepMs: number;
  /** Mean loss time per step, ms. */
  lossPerStepMs: number;
}

export interface RunReport {
  name: RunName;
  label: string;
  /** The loss weights this run trained with. */
  lossWeights: { asl: number; reconstruction: number; contrastive: number };
  steps: number;
  epochs: EpochRecord[];
  /** Binned training curve (at most ~100 points). */
  curve: CurvePoint[];
  test: TestMetrics;
  times: RunTimes;
}

/** The complete report written to `report.json`. */
export interface DemoReport {
  tool: 'kmcl demo';
  /** Schema version of this report. */
  version: 1;
  createdAt: string;
  /** The command line as given (after `npm run demo --`). */
  argv: string[];
  config: Record<string, unknown>;
  environment: {
    node: string;
    platform: string;
    arch: string;
    cpuModel: string;
    cpuCores: number;
    /** 1 / 5 / 15-minute load averages when the demo started and when it finished. */
    loadAverage: number[];
    loadAverageAtEnd: number[];
    tfjsVersion: string;
    tfjsBackend: string;
    /** 'fused' (the native KmclLoss kernel) or 'composite' (plain-tfjs fallback). */
    kmclPath: 'fused' | 'composite';
    fallbackReason: string | null;
    /** The kmcl device option and what `auto` resolves to. */
    device: string;
    resolvedDevice: string;
    nativeAddon: string | null;
    cpuThreads: number;
    cuda: string;
  };
  data: {
    source: string;
    /** What the images are (task, grid, difficulty). */
    task: string;
    classes: number;
    classNames: string[];
    imageSize: number;
    sizes: { train: number; val: number; test: number };
    /** Fraction of images holding each class, and mean labels per image, per split. */
    stats: Record<'train' | 'val' | 'test', { classFrequency: number[]; meanLabelsPerImage: number }>;
    generationMs: number;
  };
  model: {
    description: string;
    parameters: number;
    head: { mode: string; covariance: string; projectionDim: number | null };
  };
  runs: Record<RunName, RunReport>;
  /** KMCL − ASL-only of the headline test metrics (percentage points). */
  difference: { mAP: number; CF1: number; OF1: number; CF1top3: number; OF1top3: number };
  /** Wall time of the whole demo so far (set when the report is written), ms. */
  wallMs: number;
  /** The files written, relative to the output folder. */
  files: { report: string; plot: string; summary: string };
}

/** Bins a per-step series into at most `maxPoints` means (for the curves). */
export function binCurve(
  steps: readonly { loss: number; asl: number; reconstruction: number; contrastive: number }[],
  stepsPerEpoch: number,
  maxPoints = 100,
): CurvePoint[] {
  const n = steps.length;
  if (n === 0) return [];
  const size = Math.max(1, Math.ceil(n / maxPoints));
  const out: CurvePoint[] = [];
  for (let start = 0; start < n; start += size) {
    const end = Math.min(n, start + size);
    const p = { loss: 0, asl: 0, reconstruction: 0, contrastive: 0 };
    for (let i = start; i < end; i++) {
      p.loss += steps[i].loss;
      p.asl += steps[i].asl;
      p.reconstruction += steps[i].reconstruction;
      p.contrastive += steps[i].contrastive;
    }
    const k = end - start;
    out.push({ epoch: end / stepsPerEpoch, loss: p.loss / k, asl: p.asl / k, reconstruction: p.reconstruction / k, contrastive: p.contrastive / k });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The plot

/** The test metrics the plot shows. */
const TEST_METRICS: readonly (readonly [string, (t: TestMetrics) => number])[] = [
  ['mAP', (t) => t.mAP],
  ['CF1', (t) => t.CF1],
  ['OF1', (t) => t.OF1],
  ['CF1 top-3', (t) => t.top3.CF1],
  ['OF1 top-3', (t) => t.top3.OF1],
];

const RUN_COLORS = { domain: [RUN_LABELS.kmcl, RUN_LABELS.asl], range: ['#d62728', '#1f77b4'] };

/**
 * The vega-lite spec of the plot: six panels — the minimised total loss of both runs, their
 * ASL term, the KMCL run's reconstruction and contrastive terms, the validation mAP per epoch of
 * both runs, its difference KMCL − ASL-only per epoch (a 0.2-point gap is invisible on the mAP
 * axis), and the test metrics of both runs with their difference.
 */
export function plotSpec(report: Pick<DemoReport, 'runs' | 'config'>): TopLevelSpec {
  const runs = [report.runs.kmcl, report.runs.asl];
  const curve = runs.flatMap((r) => r.curve.map((p) => ({ run: r.label, ...p })));
  const aux = report.runs.kmcl.curve.flatMap((p) => [
    { term: 'reconstruction', epoch: p.epoch, value: p.reconstruction },
    { term: 'contrastive', epoch: p.epoch, value: p.contrastive },
  ]);
  const val = runs.flatMap((r) => r.epochs.filter((e) => e.valMAP !== null).map((e) => ({ run: r.label, epoch: e.epoch, mAP: 100 * (e.valMAP as number) })));
  // Δ validation mAP per epoch (KMCL − ASL-only, points): visible even when both curves overlap.
  const valDelta = report.runs.kmcl.epochs.flatMap((e, i) => {
    const b = report.runs.asl.epochs[i];
    return e.valMAP !== null && b && b.valMAP !== null ? [{ epoch: e.epoch, delta: 100 * (e.valMAP - b.valMAP) }] : [];
  });
  const testRows = TEST_METRICS.map(([name, get]) => {
    const k = 100 * get(report.runs.kmcl.test);
    const a = 100 * get(report.runs.asl.test);
    const d = k - a;
    return { metric: name, delta: d, label: `${k.toFixed(2)} vs ${a.toFixed(2)} (${d >= 0 ? '+' : '−'}${Math.abs(d).toFixed(2)})` };
  });
  const width = 330;
  const height = 200;
  const color = { field: 'run', type: 'nominal', title: 'run', scale: RUN_COLORS } as const;
  const epochX = { field: 'epoch', type: 'quantitative', title: 'epoch' } as const;
  const c = report.config;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'KMCL vs ASL-only on the multilabel digit composites',
      subtitle: `${String(c.mode)} head, ${String(c.covariance)} covariance, τ = ${String(c.temperature)}, ${String(c.epochs)} epochs, batch ${String(c.batchSize)}, ${String(c.trainSize)} training images, seed ${String(c.seed)}`,
    },
    background: 'white',
    padding: 10,
    columns: 2,
    // The run colours and the term colours are different scales.
    resolve: { scale: { color: 'independent' } },
    concat: [
      {
        title: 'Training loss (the minimised total)',
        width,
        height,
        data: { values: curve },
        mark: { type: 'line', strokeWidth: 1.5 },
        encoding: { x: epochX, y: { field: 'loss', type: 'quantitative', title: 'loss', scale: { zero: false } }, color },
      },
      {
        title: 'ASL term (both runs)',
        width,
        height,
        data: { values: curve },
        mark: { type: 'line', strokeWidth: 1.5 },
        encoding: { x: epochX, y: { field: 'asl', type: 'quantitative', title: 'ASL', scale: { zero: false } }, color },
      },
      {
        title: 'KMCL run: reconstruction and contrastive terms',
        width,
        height,
        data: { values: aux },
        mark: { type: 'line', strokeWidth: 1.5 },
        encoding: {
          x: epochX,
          y: { field: 'value', type: 'quantitative', title: 'term value' },
          color: { field: 'term', type: 'nominal', title: 'term', scale: { range: ['#9467bd', '#2ca02c'] } },
        },
      },
      {
        title: 'Validation mAP (EMA weights)',
        width,
        height,
        data: { values: val },
        mark: { type: 'line', point: true, strokeWidth: 1.5 },
        encoding: {
          x: { field: 'epoch', type: 'quantitative', title: 'epoch', axis: { tickMinStep: 1 } },
          y: { field: 'mAP', type: 'quantitative', title: 'mAP (%)', scale: { zero: false } },
          color,
        },
      },
      {
        title: 'Validation mAP difference KMCL − ASL-only (points)',
        width,
        height,
        layer: [
          { data: { values: [{ zero: 0 }] }, mark: { type: 'rule', color: '#7f7f7f', strokeDash: [4, 3] }, encoding: { y: { field: 'zero', type: 'quantitative' } } },
          {
            data: { values: valDelta },
            mark: { type: 'line', point: { color: '#d62728' }, strokeWidth: 1.5, color: '#d62728' },
            encoding: {
              x: { field: 'epoch', type: 'quantitative', title: 'epoch', axis: { tickMinStep: 1 } },
              y: { field: 'delta', type: 'quantitative', title: 'Δ mAP (points)' },
            },
          },
        ],
      },
      {
        title: 'Test split (EMA weights): KMCL vs ASL-only, % (Δ points)',
        width,
        height,
        data: { values: testRows },
        layer: [
          {
            mark: { type: 'bar', color: '#d62728', opacity: 0.7 },
            encoding: {
              y: { field: 'metric', type: 'nominal', title: null, sort: TEST_METRICS.map(([n]) => n) },
              x: { field: 'delta', type: 'quantitative', title: 'KMCL − ASL-only (points)' },
            },
          },
          {
            mark: { type: 'text', align: 'left', dx: 4, fontSize: 10 },
            encoding: {
              y: { field: 'metric', type: 'nominal', sort: TEST_METRICS.map(([n]) => n) },
              x: { datum: 0, type: 'quantitative' },
              text: { field: 'label' },
            },
          },
        ],
      },
    ],
  } as TopLevelSpec;
}

/** Renders a vega-lite spec to an SVG string, headless (no canvas, no DOM). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

// ---------------------------------------------------------------------------------------------
// Tables

const pct = (v: number | null | undefined): string => (v === null || v === undefined || !Number.isFinite(v) ? '–' : (100 * v).toFixed(2));
const signed = (v: number): string => (Number.isFinite(v) ? `${v >= 0 ? '+' : '−'}${Math.abs(v).toFixed(2)}` : '–');
const seconds = (ms: number): string => (ms / 1000).toFixed(1);

/** The headline metrics table (markdown): test metrics in %, and the time split. */
export function resultsTable(report: Pick<DemoReport, 'runs'>): string {
  const k = report.runs.kmcl;
  const a = report.runs.asl;
  const row = (name: string, f: (r: RunReport) => number) => `| ${name} | ${pct(f(k))} | ${pct(f(a))} | ${signed(100 * (f(k) - f(a)))} |`;
  const time = (name: string, f: (t: RunTimes) => number, unit = 's', fmt = seconds) => `| ${name} | ${fmt(f(k.times))} ${unit} | ${fmt(f(a.times))} ${unit} | |`;
  return [
    `| test split (EMA weights) | ${k.label} | ${a.label} | Δ (points) |`,
    '|---|---:|---:|---:|',
    row('mAP', (r) => r.test.mAP),
    row('CP', (r) => r.test.CP),
    row('CR', (r) => r.test.CR),
    row('CF1', (r) => r.test.CF1),
    row('OP', (r) => r.test.OP),
    row('OR', (r) => r.test.OR),
    row('OF1', (r) => r.test.OF1),
    row('CF1 (top-3)', (r) => r.test.top3.CF1),
    row('OF1 (top-3)', (r) => r.test.top3.OF1),
    time('training time', (t) => t.trainMs),
    time('… backbone (+ head, optimizer, EMA)', (t) => t.backboneMs),
    time('… KMCL loss op (forward + gradients)', (t) => t.lossMs),
    time('per step (backbone + loss)', (t) => t.perStepMs, 'ms', (v) => v.toFixed(1)),
    time('… loss op per step', (t) => t.lossPerStepMs, 'ms', (v) => v.toFixed(2)),
    time('evaluation (val each epoch + test)', (t) => t.evalMs),
  ].join('\n');
}

/** Per-class AP table (markdown), with the class frequency in the test split. */
export function perClassTable(report: Pick<DemoReport, 'runs' | 'data'>): string {
  const k = report.runs.kmcl.test.perClassAP;
  const a = report.runs.asl.test.perClassAP;
  const freq = report.data.stats.test.classFrequency;
  const lines = [
    `| class | test frequency | AP ${report.runs.kmcl.label} | AP ${report.runs.asl.label} | Δ |`,
    '|---|---:|---:|---:|---:|',
  ];
  for (let c = 0; c < k.length; c++) {
    const d = k[c] !== null && a[c] !== null ? signed(100 * ((k[c] as number) - (a[c] as number))) : '–';
    lines.push(`| ${report.data.classNames[c] ?? c} | ${freq[c]?.toFixed(3) ?? '–'} | ${pct(k[c])} | ${pct(a[c])} | ${d} |`);
  }
  return lines.join('\n');
}

/** Per-epoch table (markdown) of both runs: mean loss parts and validation mAP. */
export function epochTable(report: Pick<DemoReport, 'runs'>): string {
  const k = report.runs.kmcl.epochs;
  const a = report.runs.asl.epochs;
  const lines = [
    '| epoch | KMCL loss | KMCL asl | KMCL rec | KMCL con | KMCL val mAP | ASL-only loss | ASL-only val mAP |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (let i = 0; i < Math.max(k.length, a.length); i++) {
    const e = k[i];
    const b = a[i];
    lines.push(
      `| ${i + 1} | ${e ? e.loss.toFixed(3) : ''} | ${e ? e.asl.toFixed(3) : ''} | ${e ? e.reconstruction.toFixed(3) : ''} | ${e ? e.contrastive.toFixed(3) : ''} | ${e ? pct(e.valMAP) : ''} | ${b ? b.loss.toFixed(3) : ''} | ${b ? pct(b.valMAP) : ''} |`,
    );
  }
  return lines.join('\n');
}

/** `summary.md`: the command, machine and the tables. */
export function summaryMarkdown(report: DemoReport): string {
  const env = report.environment;
  const c = report.config;
  const cmd = report.argv.length ? `npm run demo -- ${report.argv.join(' ')}` : 'npm run demo';
  return [
    '# kmcl demo: KMCL vs ASL-only',
    '',
    `- command: \`${cmd}\``,
    `- date: ${report.createdAt}`,
    `- machine: ${env.cpuModel}, ${env.cpuCores} cores, load average ${env.loadAverage.map((v) => v.toFixed(2)).join(' / ')} at the start, ${env.loadAverageAtEnd.map((v) => v.toFixed(2)).join(' / ')} at the end; Node ${env.node}`,
    `- tfjs ${env.tfjsVersion} backend \`${env.tfjsBackend}\`; kmcl loss: ${env.kmclPath === 'fused' ? 'fused native kernel' : `plain-tfjs composite (${env.fallbackReason})`}, device ${env.resolvedDevice} (${env.cpuThreads} threads)`,
    `- data: ${report.data.task ? `${report.data.task} of the ` : ''}${report.data.source}, ${report.data.sizes.train} / ${report.data.sizes.val} / ${report.data.sizes.test} images (train / val / test) of ${report.data.imageSize}×${report.data.imageSize}`,
    `- model: ${report.model.description}; ${report.model.parameters.toLocaleString('en-US')} parameters`,
    `- training: ${String(c.epochs)} epochs, batch ${String(c.batchSize)}, peak learning rate ${String(c.learningRate)} (OneCycle), τ = ${String(c.temperature)}, seed ${String(c.seed)}`,
    `- wall time: ${seconds(report.wallMs)} s`,
    '',
    '## Test metrics (%) and time split',
    '',
    resultsTable(report),
    '',
    '## Per-class AP (%)',
    '',
    perClassTable(report),
    '',
    '## Per epoch',
    '',
    epochTable(report),
    '',
  ].join('\n');
}

/** JSON with non-finite numbers as null (JSON.stringify does that too; made explicit here). */
function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n';
}

/**
 * Writes `report.json`, `plot.svg` and `summary.md` into `outDir` (created if needed) and
 * returns their absolute paths.
 */
export async function writeReport(report: DemoReport, outDir: string): Promise<{ report: string; plot: string; summary: string }> {
  const dir = resolve(outDir);
  mkdirSync(dir, { recursive: true });
  const paths = { report: join(dir, report.files.report), plot: join(dir, report.files.plot), summary: join(dir, report.files.summary) };
  const svg = await renderSvg(plotSpec(report));
  writeFileSync(paths.plot, svg);
  writeFileSync(paths.summary, summaryMarkdown(report));
  writeFileSync(paths.report, toJson(report));
  return paths;
}
