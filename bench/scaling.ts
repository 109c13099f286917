/**
 * Scaling study of the native CPU path (issue 5, item 3): time per fwd+bwd call and peak RSS for
 * B from 64 to 4096 at K = 80, M = D = 64, 3 positives per sample on average, each B measured in a
 * fresh child process (so that process.resourceUsage().maxRSS is that B's peak). It fits the
 * log-log slope of time against B, reports the work measure Σy·B (positives × B, i.e.
 * positives-per-sample × B²) and draws both curves with vega-lite into `scaling.svg`.
 *
 *   tsx bench/scaling.ts [--quick] [--batches 64,128,...] [--out DIR] [--svg-copy PATH]
 *
 * The fused path keeps O(B·K·M) inputs, gradients and accumulators and O(B·K + B²) statistics; the
 * contrastive sweeps visit, for every positive (i, k), all B samples, so the time grows as Σy·B.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import { backendInfo, kmclLossRaw } from '../src/index.js';
import { compositeBytesEstimate, countPositives, gridSize, ioBytes, makeProblem } from './grid.js';
import { gitCommit, machineInfo, SCHEMA, type PowerFit, type ScalingFile, type ScalingRow } from './format.js';

export const SCALING_BATCHES = [64, 128, 256, 512, 1024, 2048, 4096];
export const SCALING_K = 80;
export const SCALING_M = 64;
export const SCALING_POSITIVES = 3;

const RESULT_TAG = 'KMCL_SCALING_RESULT ';
const here = dirname(fileURLToPath(import.meta.url));

/** What a child process measures for one problem size. */
export interface ChildRequest {
  B: number;
  K: number;
  M: number;
  positives: number;
  /** At least this many timed calls … */
  minCalls: number;
  /** … and more (up to maxCalls) until their total reaches this. */
  minTimeMs: number;
  maxCalls: number;
  seed: number;
}

/** What one child process measures: the measured part of a {@link ScalingRow}. */
export type ChildResult = Pick<ScalingRow, 'B' | 'positives' | 'medianMs' | 'minMs' | 'calls' | 'peakRssBytes' | 'baselineRssBytes'>;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** Runs inside the child: one warm-up call, then timed calls with a GC between them. */
export function measureInChild(req: ChildRequest): ChildResult {
  const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
  // Load the addon and start its threads on a tiny problem, so the baseline includes them.
  kmclLossRaw(makeProblem(gridSize(4, 2, 2, 1), 1), { device: 'cpu' });
  gc();
  const baselineRssBytes = process.memoryUsage().rss;
  const size = gridSize(req.B, req.K, req.M, req.positives);
  const problem = makeProblem(size, req.seed);
  const call = (): void => {
    const r = kmclLossRaw(problem, { device: 'cpu', gradients: true });
    if (!Number.isFinite(r.loss)) throw new Error(`loss ${r.loss}`);
  };
  call();
  gc();
  const times: number[] = [];
  let total = 0;
  while (times.length < req.minCalls || (total < req.minTimeMs && times.length < req.maxCalls)) {
    const t0 = performance.now();
    call();
    const dt = performance.now() - t0;
    times.push(dt);
    total += dt;
    gc();
  }
  return {
    B: req.B,
    positives: countPositives(problem),
    medianMs: Number(median(times).toPrecision(6)),
    minMs: Number(Math.min(...times).toPrecision(6)),
    calls: times.length,
    // maxRSS is in kilobytes (KiB on Linux).
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    baselineRssBytes,
  };
}

/** Measures one size in a fresh `node --expose-gc` process running this file under tsx. */
export function measureFresh(req: ChildRequest): ChildResult {
  const tsx = createRequire(import.meta.url).resolve('tsx');
  const run = spawnSync(process.execPath, ['--expose-gc', '--import', tsx, join(here, 'scaling.ts'), '--child', JSON.stringify(req)], {
    encoding: 'utf8',
    maxBuffer: 16 * 2 ** 20,
  });
  const line = run.stdout?.split('\n').find((l) => l.startsWith(RESULT_TAG));
  if (run.status !== 0 || !line) {
    throw new Error(`scaling child for B=${req.B} exited with ${run.status ?? run.signal}: ${(run.stderr || run.error?.message || '').trim().slice(-2000)}`);
  }
  return JSON.parse(line.slice(RESULT_TAG.length)) as ChildResult;
}

/** Least-squares fit of log(y) = intercept + slope·log(x). */
export function fitPowerLaw(xs: number[], ys: number[]): PowerFit {
  if (xs.length !== ys.length || xs.length < 2) throw new Error('fitPowerLaw needs two or more points');
  const lx = xs.map(Math.log);
  const ly = ys.map(Math.log);
  const n = lx.length;
  const mx = lx.reduce((a, b) => a + b, 0) / n;
  const my = ly.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (lx[i] - mx) * (ly[i] - my);
    sxx += (lx[i] - mx) ** 2;
    syy += (ly[i] - my) ** 2;
  }
  const slope = sxy / sxx;
  const intercept = my - slope * mx;
  const r2 = syy === 0 ? 1 : (sxy * sxy) / (sxx * syy);
  return { slope, intercept, r2, fromB: Math.min(...xs), toB: Math.max(...xs) };
}

export interface ScalingOptions {
  batches: number[];
  K: number;
  M: number;
  positives: number;
  minCalls: number;
  minTimeMs: number;
  maxCalls: number;
  /** Fixed B with several positives-per-sample values; omitted when undefined. */
  sweep?: { B: number; positivesPerSample: number[] };
  outDir: string;
  command: string;
  /** Also write the SVG here (a copy to cite from the repository). */
  svgCopy?: string;
  log?: (line: string) => void;
}

/** The vega-lite spec of the two curves: time and peak RSS against B, on log-log axes. */
export function scalingChartSpec(f: ScalingFile): vl.TopLevelSpec {
  const fit = f.fits.time;
  const large = f.fits.timeLarge;
  const measured = 'measured (fastest call)';
  const measuredMedian = 'measured (median call)';
  const fitted = `fit over B = ${fit.fromB}…${fit.toB}: ∝ B^${fit.slope.toFixed(2)}`;
  const fittedLarge = `fit over B = ${large.fromB}…${large.toB}: ∝ B^${large.slope.toFixed(2)}`;
  const line = (p: PowerFit, B: number) => Math.exp(p.intercept) * B ** p.slope;
  const time = f.rows.flatMap((r) => [
    { B: r.B, value: r.minMs, series: measured },
    { B: r.B, value: r.medianMs, series: measuredMedian },
    { B: r.B, value: line(fit, r.B), series: fitted },
    ...(r.B >= large.fromB ? [{ B: r.B, value: line(large, r.B), series: fittedLarge }] : []),
  ]);
  const memSeries = ['native: peak RSS', 'native: peak RSS above baseline', 'native: inputs + gradients', 'tfjs composite: tensors (estimate)'];
  const memory = f.rows.flatMap((r) => [
    { B: r.B, value: r.peakRssBytes / 2 ** 20, series: memSeries[0] },
    { B: r.B, value: Math.max(r.peakRssBytes - r.baselineRssBytes, 1) / 2 ** 20, series: memSeries[1] },
    { B: r.B, value: r.ioBytes / 2 ** 20, series: memSeries[2] },
    { B: r.B, value: r.compositeBytesEstimate / 2 ** 20, series: memSeries[3] },
  ]);
  const Bs = f.rows.map((r) => r.B);
  const x = {
    field: 'B',
    type: 'quantitative',
    // A margin around the measured B, so the first and last ticks keep their labels.
    scale: { type: 'log', base: 2, nice: false, domain: [Math.min(...Bs) / 1.25, Math.max(...Bs) * 1.25] as number[] },
    axis: { values: Bs, title: 'batch size B' },
  } as const;
  const legend = { orient: 'bottom', title: null, columns: 1, labelLimit: 400, symbolType: 'stroke', symbolStrokeWidth: 2 } as const;
  // One legend per panel: colour and dash encode the same series (solid = measured).
  const series = (domain: string[], colors: string[], dashes: number[][]) => ({
    color: { field: 'series', type: 'nominal', scale: { domain, range: colors }, legend },
    strokeDash: { field: 'series', type: 'nominal', scale: { domain, range: dashes }, legend },
  });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `kmcl native CPU fwd+bwd: K = ${f.size.K}, M = D = ${f.size.M}, ${f.size.positives} positives per sample`,
      subtitle: `${f.machine.cpu}, ${f.machine.cores} cores, ${f.machine.nativeThreads} threads; commit ${f.commit}; each B in a fresh process`,
    },
    hconcat: [
      {
        width: 340,
        height: 280,
        title: `time per call: log-log slope ${large.slope.toFixed(2)} at large B`,
        data: { values: time },
        mark: { type: 'line', point: true },
        encoding: {
          x,
          y: { field: 'value', type: 'quantitative', scale: { type: 'log' }, title: 'time per call (ms)' },
          ...series([measured, measuredMedian, fitted, fittedLarge], ['#1f77b4', '#aec7e8', '#7f7f7f', '#ff7f0e'], [[1, 0], [1, 0], [6, 4], [2, 2]]),
        },
      },
      {
        width: 340,
        height: 280,
        title: 'memory (MiB, log scale)',
        data: { values: memory },
        mark: { type: 'line', point: true },
        encoding: {
          x,
          y: { field: 'value', type: 'quantitative', scale: { type: 'log' }, title: 'MiB' },
          ...series(memSeries, ['#1f77b4', '#2ca02c', '#7f7f7f', '#d62728'], [[1, 0], [1, 0], [6, 4], [2, 2]]),
        },
      },
    ],
    resolve: { scale: { color: 'independent', strokeDash: 'independent' }, legend: { color: 'independent', strokeDash: 'independent' } },
  } as vl.TopLevelSpec;
}

/** Renders the chart headless (vega's 'none' renderer) to an SVG string. */
export async function scalingChartSvg(f: ScalingFile): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(scalingChartSpec(f)).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Runs the study, writes `<outDir>/scaling.json` and `<outDir>/scaling.svg`. */
export async function runScaling(o: ScalingOptions): Promise<ScalingFile> {
  const log = o.log ?? ((line: string) => console.log(line));
  const info = backendInfo();
  const machine = machineInfo({ threads: info.cpu.threads, cuda: info.cuda });
  const rows: ScalingRow[] = [];
  for (const B of o.batches) {
    const r = measureFresh({ B, K: o.K, M: o.M, positives: o.positives, minCalls: o.minCalls, minTimeMs: o.minTimeMs, maxCalls: o.maxCalls, seed: 7000 + B });
    const size = gridSize(B, o.K, o.M, o.positives);
    rows.push({ ...r, ioBytes: ioBytes(size), compositeBytesEstimate: compositeBytesEstimate(size) });
    log(`  scaling B=${B}: median ${r.medianMs.toPrecision(4)} ms, fastest ${r.minMs.toPrecision(4)} ms over ${r.calls} calls, peak RSS ${(r.peakRssBytes / 2 ** 20).toFixed(0)} MiB`);
  }
  const Bs = rows.map((r) => r.B);
  const upper = rows.slice(Math.floor(rows.length / 2));
  const fits = {
    // On the fastest call of each B: other work on shared cores only ever adds time.
    time: fitPowerLaw(Bs, rows.map((r) => r.minMs)),
    timeLarge: fitPowerLaw(upper.map((r) => r.B), upper.map((r) => r.minMs)),
    // Above the baseline, and over the upper half: at small B the startup peak hides the problem.
    memory: fitPowerLaw(upper.map((r) => r.B), upper.map((r) => Math.max(1, r.peakRssBytes - r.baselineRssBytes))),
  };
  let positivesSweep: ScalingFile['positivesSweep'];
  if (o.sweep) {
    const sweepRows = [];
    for (const p of o.sweep.positivesPerSample) {
      const r = measureFresh({ B: o.sweep.B, K: o.K, M: o.M, positives: p, minCalls: o.minCalls, minTimeMs: o.minTimeMs, maxCalls: o.maxCalls, seed: 9000 + p });
      sweepRows.push({ positivesPerSample: p, positives: r.positives, medianMs: r.medianMs, minMs: r.minMs, calls: r.calls });
      log(`  positives sweep B=${o.sweep.B}, ${p} per sample: median ${r.medianMs.toPrecision(4)} ms`);
    }
    positivesSweep = { B: o.sweep.B, rows: sweepRows };
  }
  const file: ScalingFile = {
    schema: SCHEMA,
    kind: 'scaling',
    size: { K: o.K, M: o.M, D: o.M, Kv: o.K, Dv: o.M, positives: o.positives },
    machine,
    commit: gitCommit(),
    date: new Date().toISOString(),
    command: o.command,
    rows,
    fits,
    ...(positivesSweep ? { positivesSweep } : {}),
  };
  mkdirSync(o.outDir, { recursive: true });
  writeFileSync(join(o.outDir, 'scaling.json'), `${JSON.stringify(file, null, 2)}\n`);
  const svg = await scalingChartSvg(file);
  writeFileSync(join(o.outDir, 'scaling.svg'), svg);
  if (o.svgCopy) copyFileSync(join(o.outDir, 'scaling.svg'), o.svgCopy);
  return file;
}

/** The study's defaults; `quick` measures three small sizes only. */
export function scalingOptions(args: { quick: boolean; batches?: number[]; outDir: string; command: string; svgCopy?: string }): ScalingOptions {
  return {
    batches: args.batches ?? (args.quick ? [64, 128, 256] : SCALING_BATCHES),
    K: SCALING_K,
    M: SCALING_M,
    positives: SCALING_POSITIVES,
    minCalls: args.quick ? 2 : 5,
    minTimeMs: args.quick ? 200 : 3000,
    maxCalls: 50,
    sweep: args.quick ? undefined : { B: 1024, positivesPerSample: [1, 3, 9] },
    outDir: args.outDir,
    command: args.command,
    svgCopy: args.svgCopy,
  };
}

async function main(argv: string[]): Promise<void> {
  const child = argv.indexOf('--child');
  if (child >= 0) {
    const r = measureInChild(JSON.parse(argv[child + 1]) as ChildRequest);
    process.stdout.write(`${RESULT_TAG}${JSON.stringify(r)}\n`);
    return;
  }
  const value = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const batches = value('--batches')?.split(',').map(Number);
  if (batches?.some((b) => !Number.isInteger(b) || b < 2)) throw new Error(`--batches must be integers ≥ 2, got ${value('--batches')}`);
  const f = await runScaling(
    scalingOptions({
      quick: argv.includes('--quick'),
      batches,
      outDir: value('--out') ?? 'bench/results',
      command: `tsx bench/scaling.ts${argv.length ? ` ${argv.join(' ')}` : ''}`,
      svgCopy: value('--svg-copy'),
    }),
  );
  const { formatScaling } = await import('./summary.js');
  console.log(`\n${formatScaling(f)}`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(`scaling: ${(e as Error).stack ?? e}`);
    process.exit(1);
  });
}
