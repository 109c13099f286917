/**
 * `npm run study`: does the KMCL loss beat the ASL-only baseline on the grid task? Paired runs
 * (same seed → same data, initial weights, batch order and schedule; only the loss weights
 * differ) over several seeds and training-set sizes, plus an ablation of the KMM head at one
 * size. For every (size, head) it reports the mean difference KMCL − ASL-only of mAP, CF1 and
 * OF1 with a 95 % Student-t interval over the per-seed paired differences, the per-seed values,
 * and ΔAP per class grouped by class frequency. See docs/study.md.
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';

import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';

import { backendInfo, kmclFallbackReason, type KmmCovariance, type KmmMode } from 'kmcl/tfjs';
import type { Device } from 'kmcl';

import { buildDemoModel, countParameters, registerWasmConvGradients } from '../demo/model.js';
import { progressModeFor, formatDuration, type ProgressMode, type ProgressStream } from '../demo/progress.js';
import { RUN_LABELS, type RunName } from '../demo/report.js';
import { DemoArgsError, makeDemoData, modelDescription, trainAndEvaluate, type DemoBackend, type DemoData, type DemoTask, type SplitTensors } from '../demo/run.js';
import { MAX_DIFFICULTY } from '../demo/hard-task.js';
import { pairedInterval } from './stats.js';
import { writeStudyOutputs } from './report.js';

/** A KMM head configuration. */
export interface HeadSpec {
  mode: KmmMode;
  covariance: KmmCovariance;
}

/** `mode/covariance`, e.g. 'anisotropic/perClass'. */
export function headName(h: HeadSpec): string {
  return `${h.mode}/${h.covariance}`;
}

/** The default head (the demo's) and the ablation's heads. */
export const DEFAULT_HEAD: HeadSpec = Object.freeze({ mode: 'anisotropic', covariance: 'perClass' });
export const ABLATION_HEADS: readonly HeadSpec[] = Object.freeze([
  DEFAULT_HEAD,
  Object.freeze({ mode: 'anisotropic', covariance: 'perDim' } as HeadSpec),
  Object.freeze({ mode: 'anisotropic', covariance: 'shared' } as HeadSpec),
  Object.freeze({ mode: 'isotropic', covariance: 'perClass' } as HeadSpec),
]);

/** Everything a study depends on. */
export interface StudyConfig {
  task: DemoTask;
  difficulty: number;
  /** Seeds of the main comparison (each: its own data draw, initial weights and batch order). */
  seeds: number[];
  /** Training-set sizes of the main comparison, ascending. */
  trainSizes: number[];
  /** Epochs for each training size (same length as trainSizes). */
  epochs: number[];
  valSize: number;
  testSize: number;
  batchSize: number;
  learningRate: number;
  temperature: number;
  /** Head ablation: how many of the seeds (the first ones) run every head of {@link ABLATION_HEADS}; 0 = no ablation. */
  ablationSeeds: number;
  /** Training size of the ablation (one of trainSizes). */
  ablationSize: number;
  device: Device;
  backend: DemoBackend;
  out: string;
  quick: boolean;
  json: boolean;
}

export const DEFAULT_STUDY: Readonly<StudyConfig> = Object.freeze({
  task: 'grid',
  difficulty: 1,
  seeds: [1, 2, 3, 4, 5],
  trainSizes: [500, 2000],
  epochs: [15, 6],
  valSize: 200,
  testSize: 1500,
  batchSize: 64,
  learningRate: 3e-3,
  temperature: 0.17,
  ablationSeeds: 3,
  ablationSize: 500,
  device: 'auto',
  backend: 'wasm',
  out: 'study-out',
  quick: false,
  json: false,
} as StudyConfig);

/** `--quick`: 3 seeds, one size, a few epochs, no head ablation. */
export const QUICK_STUDY: Readonly<Partial<StudyConfig>> = Object.freeze({
  seeds: [1, 2, 3],
  trainSizes: [500],
  epochs: [6],
  testSize: 1000,
  valSize: 200,
  ablationSeeds: 0,
  ablationSize: 500,
});

export const STUDY_USAGE = `Usage: npm run study [-- FLAGS]

Paired runs of the demo network (CNN + KMM head) with the fused KMCL loss and ASL-only over
several seeds and training-set sizes, and a head ablation at one size; reports the mean
difference KMCL − ASL-only of test mAP, CF1 and OF1 with a 95 % paired Student-t interval.
Writes report.json, summary.md and plot.svg (plot.png when rsvg-convert is on PATH) to the
output folder.

  --quick                 3 seeds, ${QUICK_STUDY.trainSizes?.[0]} training images, ${QUICK_STUDY.epochs?.[0]} epochs, no ablation
  --seeds LIST|N          seeds, e.g. 1,2,3 or a count N for 1…N (default ${DEFAULT_STUDY.seeds.length})
  --train-sizes LIST      training-set sizes (default ${DEFAULT_STUDY.trainSizes.join(',')})
  --epochs LIST|N         epochs per training size, or one value for all (default ${DEFAULT_STUDY.epochs.join(',')})
  --ablation-seeds N      seeds (the first N) that run every head at the ablation size; 0 = none (default ${DEFAULT_STUDY.ablationSeeds})
  --ablation-size N       training size of the ablation, one of the sizes (default: the smallest)
  --val-size N            validation images (default ${DEFAULT_STUDY.valSize})
  --test-size N           test images (default ${DEFAULT_STUDY.testSize})
  --batch-size N          batch size ≥ 2 (default ${DEFAULT_STUDY.batchSize})
  --learning-rate X       peak OneCycle learning rate (default ${DEFAULT_STUDY.learningRate})
  --temperature X         contrastive temperature τ (default ${DEFAULT_STUDY.temperature})
  --task T                grid | easy (default ${DEFAULT_STUDY.task})
  --difficulty X          grid task distractor strength in [0, ${MAX_DIFFICULTY}] (default ${DEFAULT_STUDY.difficulty})
  --device D              kmcl loss device: auto | cpu | cuda (default ${DEFAULT_STUDY.device})
  --backend B             tfjs backend: wasm | cpu (default ${DEFAULT_STUDY.backend})
  --out DIR               output folder (default ${DEFAULT_STUDY.out}/)
  --json                  print report.json on stdout; no progress bars or tables
  -h, --help              this help`;

function fail(flag: string, message: string): never {
  throw new DemoArgsError(flag, `${flag}: ${message}`);
}

function parseNumber(flag: string, raw: string, integer: boolean): number {
  const n = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(raw.trim()) ? Number(raw) : Number.NaN;
  if (!Number.isFinite(n)) fail(flag, `must be a number, got '${raw}'`);
  if (integer && !Number.isSafeInteger(n)) fail(flag, `must be an integer, got '${raw}'`);
  return n;
}

function parseList(flag: string, raw: string, min: number): number[] {
  const parts = raw.split(',');
  return parts.map((p) => {
    const v = parseNumber(flag, p, true);
    if (v < min) fail(flag, `values must be integers ≥ ${min}, got ${v}`);
    return v;
  });
}

const STUDY_FLAGS = [
  '--quick', '--json', '--help', '--seeds', '--train-sizes', '--epochs', '--ablation-seeds', '--ablation-size', '--val-size',
  '--test-size', '--batch-size', '--learning-rate', '--temperature', '--task', '--difficulty', '--device', '--backend', '--out',
] as const;
const BOOL_FLAGS = new Set(['--quick', '--json', '--help']);

/**
 * Parses the study's flags.
 * @throws DemoArgsError (exit code 2) naming the flag.
 */
export function parseStudyArgs(argv: readonly string[]): { help: boolean; config: StudyConfig } {
  const raw = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') continue;
    if (arg === '-h') {
      raw.set('--help', true);
      continue;
    }
    if (!arg.startsWith('--')) throw new DemoArgsError(arg, `unexpected argument '${arg}': flags start with '--' (see --help)`);
    const eq = arg.indexOf('=');
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    if (!(STUDY_FLAGS as readonly string[]).includes(flag)) {
      const near = STUDY_FLAGS.find((k) => k.startsWith(flag) || flag.startsWith(k));
      throw new DemoArgsError(flag, `unknown flag ${flag}${near ? ` (did you mean ${near}?)` : ''}; known flags: ${STUDY_FLAGS.join(', ')}`);
    }
    if (raw.has(flag)) fail(flag, 'given more than once');
    if (BOOL_FLAGS.has(flag)) {
      if (eq >= 0) fail(flag, `takes no value, got '${arg.slice(eq + 1)}'`);
      raw.set(flag, true);
      continue;
    }
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('--') && next.length > 2)) fail(flag, 'needs a value (see --help)');
      value = next;
      i++;
    }
    if (value === '') fail(flag, 'needs a non-empty value');
    raw.set(flag, value);
  }
  const quick = raw.has('--quick');
  const c: StudyConfig = { ...DEFAULT_STUDY, ...(quick ? QUICK_STUDY : {}), quick, json: raw.has('--json') } as StudyConfig;
  c.seeds = [...c.seeds];
  c.trainSizes = [...c.trainSizes];
  c.epochs = [...c.epochs];
  const str = (f: string) => raw.get(f) as string | undefined;
  const int = (f: string, min: number): number | undefined => {
    const v = str(f);
    if (v === undefined) return undefined;
    const n = parseNumber(f, v, true);
    if (n < min) fail(f, `must be an integer ≥ ${min}, got ${n}`);
    return n;
  };
  const pos = (f: string): number | undefined => {
    const v = str(f);
    if (v === undefined) return undefined;
    const n = parseNumber(f, v, false);
    if (!(n > 0)) fail(f, `must be a number > 0, got ${n}`);
    return n;
  };
  const choice = <T extends string>(f: string, choices: readonly T[]): T | undefined => {
    const v = str(f);
    if (v === undefined) return undefined;
    if (!(choices as readonly string[]).includes(v)) fail(f, `must be one of ${choices.join(', ')}, got '${v}'`);
    return v as T;
  };
  const seeds = str('--seeds');
  if (seeds !== undefined) {
    const list = parseList('--seeds', seeds, Number.MIN_SAFE_INTEGER);
    c.seeds = list.length === 1 ? (list[0] >= 2 ? Array.from({ length: list[0] }, (_, i) => i + 1) : fail('--seeds', `needs at least 2 seeds for an interval, got ${list[0]}`)) : list;
    if (new Set(c.seeds).size !== c.seeds.length) fail('--seeds', `seeds must be distinct, got ${seeds}`);
  }
  const sizes = str('--train-sizes');
  if (sizes !== undefined) {
    c.trainSizes = parseList('--train-sizes', sizes, 1);
    if (new Set(c.trainSizes).size !== c.trainSizes.length) fail('--train-sizes', `sizes must be distinct, got ${sizes}`);
  }
  const epochs = str('--epochs');
  if (epochs !== undefined) c.epochs = parseList('--epochs', epochs, 1);
  else if (sizes !== undefined && c.epochs.length !== c.trainSizes.length) c.epochs = c.trainSizes.map(() => c.epochs[0]);
  if (c.epochs.length === 1 && c.trainSizes.length > 1) c.epochs = c.trainSizes.map(() => c.epochs[0]);
  if (c.epochs.length !== c.trainSizes.length) fail('--epochs', `give one value or one per training size (${c.trainSizes.length}), got ${c.epochs.length}`);
  // Keep each size with its epochs, ascending by size.
  const order = c.trainSizes.map((s, i) => [s, c.epochs[i]] as const).sort((a, b) => a[0] - b[0]);
  c.trainSizes = order.map((o) => o[0]);
  c.epochs = order.map((o) => o[1]);
  c.ablationSeeds = int('--ablation-seeds', 0) ?? c.ablationSeeds;
  if (c.ablationSeeds > c.seeds.length) fail('--ablation-seeds', `must be at most the number of seeds (${c.seeds.length}), got ${c.ablationSeeds}`);
  const ablationSize = int('--ablation-size', 1);
  c.ablationSize = ablationSize ?? c.trainSizes[0];
  if (!c.trainSizes.includes(c.ablationSize)) fail('--ablation-size', `must be one of the training sizes ${c.trainSizes.join(', ')}, got ${c.ablationSize}`);
  c.valSize = int('--val-size', 1) ?? c.valSize;
  c.testSize = int('--test-size', 1) ?? c.testSize;
  c.batchSize = int('--batch-size', 2) ?? c.batchSize;
  c.learningRate = pos('--learning-rate') ?? c.learningRate;
  c.temperature = pos('--temperature') ?? c.temperature;
  c.task = choice('--task', ['grid', 'easy'] as const) ?? c.task;
  const diff = str('--difficulty');
  if (diff !== undefined) {
    const d = parseNumber('--difficulty', diff, false);
    if (!(d >= 0 && d <= MAX_DIFFICULTY)) fail('--difficulty', `must be a number in [0, ${MAX_DIFFICULTY}], got ${d}`);
    c.difficulty = d;
  }
  c.device = choice('--device', ['auto', 'cpu', 'cuda'] as const) ?? c.device;
  c.backend = choice('--backend', ['wasm', 'cpu'] as const) ?? c.backend;
  c.out = str('--out') ?? c.out;
  return { help: raw.has('--help'), config: c };
}

// ---------------------------------------------------------------------------------------------
// Report types

/** Test metrics in percent. */
export interface StudyMetrics {
  mAP: number;
  CF1: number;
  OF1: number;
}

/** One training run. */
export interface StudyRun {
  seed: number;
  trainSize: number;
  /** 'kmcl' (all loss weights 1) or 'asl' (ASL-only). */
  mode: RunName;
  /** `mode/covariance` of the KMM head. */
  head: string;
  epochs: number;
  steps: number;
  /** Test metrics with the EMA weights, percent. */
  metrics: StudyMetrics;
  /** Test AP per class, percent (null: no positive in the test split). */
  perClassAP: (number | null)[];
  /** Wall time of the run (training and evaluation), s. */
  seconds: number;
  /** Σ step time and Σ loss-op time, ms. */
  trainMs: number;
  lossMs: number;
  /** ASL term of the first step: equal in a pair when both start from the same weights and batch. */
  firstStepAsl: number;
}

export const STUDY_METRICS = ['mAP', 'CF1', 'OF1'] as const;
export type StudyMetric = (typeof STUDY_METRICS)[number];

/** A paired comparison of one metric at one (size, head). */
export interface Comparison {
  trainSize: number;
  head: string;
  metric: StudyMetric;
  /** Mean of KMCL − ASL-only over the seeds, percentage points. */
  meanDelta: number;
  /** 95 % Student-t interval of the mean paired difference (n − 1 degrees of freedom). */
  ci95: [number, number];
  sd: number;
  /** The seeds and, in the same order, the per-seed differences and both runs' values. */
  seeds: number[];
  deltas: number[];
  kmcl: number[];
  asl: number[];
  kmclMean: number;
  aslMean: number;
}

/** ΔAP of a group of classes (by test frequency) at one (size, head). */
export interface FrequencyGroupDelta {
  trainSize: number;
  head: string;
  group: 'frequent' | 'middle' | 'rare';
  classes: number[];
  /** Mean test frequency of the group's classes. */
  frequency: number;
  /** Mean over seeds of the group's mean ΔAP, points; interval as for {@link Comparison}. */
  meanDelta: number;
  ci95: [number, number];
  deltas: number[];
  /** Mean ΔAP per class of the group, points (same order as classes). */
  perClass: number[];
}

export interface StudyReport {
  tool: 'kmcl study';
  version: 1;
  createdAt: string;
  argv: string[];
  commit: string | null;
  config: StudyConfig & { interval: string; stepsPerEpoch: Record<string, number> };
  environment: {
    node: string;
    cpuModel: string;
    cpuCores: number;
    loadAverage: number[];
    loadAverageAtEnd: number[];
    tfjsVersion: string;
    tfjsBackend: string;
    kmclPath: 'fused' | 'composite';
    fallbackReason: string | null;
    resolvedDevice: string;
    cpuThreads: number;
  };
  data: { task: string; source: string; imageSize: number; classes: number; testClassFrequency: number[] };
  model: Record<string, { description: string; parameters: number }>;
  runs: StudyRun[];
  comparisons: Comparison[];
  byFrequency: FrequencyGroupDelta[];
  /** Share of the training step time spent in the loss op, over all runs of each mode. */
  lossShare: { kmcl: number; asl: number; kmclLossMs: number; kmclTrainMs: number; aslLossMs: number; aslTrainMs: number };
  /** Whether every run finished; false in a report written part-way. */
  complete: boolean;
  wallMs: number;
  files: { report: string; summary: string; plot: string; png: string | null };
}

// ---------------------------------------------------------------------------------------------
// Analysis

/** Paired comparisons of every (size, head) that has ≥ 1 seed with both runs. */
export function compareRuns(runs: readonly StudyRun[]): Comparison[] {
  const groups = new Map<string, { trainSize: number; head: string }>();
  for (const r of runs) groups.set(`${r.trainSize}|${r.head}`, { trainSize: r.trainSize, head: r.head });
  const out: Comparison[] = [];
  const sorted = [...groups.values()].sort((a, b) => a.trainSize - b.trainSize || (a.head === headName(DEFAULT_HEAD) ? -1 : b.head === headName(DEFAULT_HEAD) ? 1 : a.head.localeCompare(b.head)));
  for (const g of sorted) {
    const pairs = pairsOf(runs, g.trainSize, g.head);
    if (pairs.length === 0) continue;
    for (const metric of STUDY_METRICS) {
      const kmcl = pairs.map((p) => p.kmcl.metrics[metric]);
      const asl = pairs.map((p) => p.asl.metrics[metric]);
      const deltas = kmcl.map((v, i) => v - asl[i]);
      const s = pairedInterval(deltas);
      out.push({
        trainSize: g.trainSize,
        head: g.head,
        metric,
        meanDelta: s.mean,
        ci95: s.ci95,
        sd: s.sd,
        seeds: pairs.map((p) => p.seed),
        deltas,
        kmcl,
        asl,
        kmclMean: kmcl.reduce((a, b) => a + b, 0) / kmcl.length,
        aslMean: asl.reduce((a, b) => a + b, 0) / asl.length,
      });
    }
  }
  return out;
}

function pairsOf(runs: readonly StudyRun[], trainSize: number, head: string): { seed: number; kmcl: StudyRun; asl: StudyRun }[] {
  const bySeed = new Map<number, { kmcl?: StudyRun; asl?: StudyRun }>();
  for (const r of runs) {
    if (r.trainSize !== trainSize || r.head !== head) continue;
    const e = bySeed.get(r.seed) ?? {};
    e[r.mode] = r;
    bySeed.set(r.seed, e);
  }
  return [...bySeed.entries()].flatMap(([seed, e]) => (e.kmcl && e.asl ? [{ seed, kmcl: e.kmcl, asl: e.asl }] : []));
}

/**
 * Splits the classes by test frequency into frequent (top 3), middle and rare (bottom 3) and
 * gives each (size, head) the per-seed mean ΔAP of each group with its interval.
 */
export function groupByFrequency(runs: readonly StudyRun[], frequency: readonly number[]): FrequencyGroupDelta[] {
  const order = frequency.map((f, c) => [f, c] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).map((x) => x[1]);
  const k = order.length;
  const nEdge = Math.max(1, Math.floor(k * 0.3));
  const groups: { group: FrequencyGroupDelta['group']; classes: number[] }[] = [
    { group: 'frequent', classes: order.slice(0, nEdge) },
    { group: 'middle', classes: order.slice(nEdge, k - nEdge) },
    { group: 'rare', classes: order.slice(k - nEdge) },
  ];
  const keys = new Map<string, { trainSize: number; head: string }>();
  for (const r of runs) keys.set(`${r.trainSize}|${r.head}`, { trainSize: r.trainSize, head: r.head });
  const out: FrequencyGroupDelta[] = [];
  for (const { trainSize, head } of keys.values()) {
    const pairs = pairsOf(runs, trainSize, head);
    if (pairs.length === 0) continue;
    for (const g of groups) {
      if (g.classes.length === 0) continue;
      const classDelta = (p: (typeof pairs)[number], c: number): number | null => {
        const a = p.kmcl.perClassAP[c];
        const b = p.asl.perClassAP[c];
        return a === null || b === null ? null : a - b;
      };
      const deltas: number[] = [];
      for (const p of pairs) {
        const ds = g.classes.map((c) => classDelta(p, c)).filter((v): v is number => v !== null);
        if (ds.length > 0) deltas.push(ds.reduce((a, b) => a + b, 0) / ds.length);
      }
      if (deltas.length === 0) continue;
      const s = pairedInterval(deltas);
      const perClass = g.classes.map((c) => {
        const ds = pairs.map((p) => classDelta(p, c)).filter((v): v is number => v !== null);
        return ds.length ? ds.reduce((a, b) => a + b, 0) / ds.length : Number.NaN;
      });
      out.push({
        trainSize,
        head,
        group: g.group,
        classes: g.classes,
        frequency: g.classes.reduce((a, c) => a + frequency[c], 0) / g.classes.length,
        meanDelta: s.mean,
        ci95: s.ci95,
        deltas,
        perClass,
      });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The run

/**
 * The planned pairs in order: first the main comparison (each seed, each size, default head),
 * then the ablation's other heads (the first `ablationSeeds` seeds, at the ablation size), so a
 * study stopped part-way has the main comparison first.
 */
export function planRuns(c: StudyConfig): { seed: number; seedIndex: number; trainSize: number; epochs: number; head: HeadSpec }[] {
  const plan: { seed: number; seedIndex: number; trainSize: number; epochs: number; head: HeadSpec }[] = [];
  c.seeds.forEach((seed, seedIndex) => {
    c.trainSizes.forEach((trainSize, i) => plan.push({ seed, seedIndex, trainSize, epochs: c.epochs[i], head: DEFAULT_HEAD }));
  });
  const ai = c.trainSizes.indexOf(c.ablationSize);
  c.seeds.slice(0, c.ablationSeeds).forEach((seed, seedIndex) => {
    for (const head of ABLATION_HEADS.slice(1)) plan.push({ seed, seedIndex, trainSize: c.ablationSize, epochs: c.epochs[ai], head });
  });
  return plan;
}

function gitCommit(): string | null {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return dirty ? `${sha} (with uncommitted changes)` : sha;
  } catch {
    return null;
  }
}

export interface RunStudyIO {
  stdout?: { write(chunk: string): unknown };
  stderr?: ProgressStream;
  progress?: ProgressMode;
  argv?: readonly string[];
}

/** Checks a config built in code. @throws DemoArgsError naming the field. */
export function validateStudyConfig(c: StudyConfig): void {
  const intList = (name: 'seeds' | 'trainSizes' | 'epochs', min: number, minLength: number) => {
    const v = c[name];
    if (!Array.isArray(v) || v.length < minLength || v.some((x) => !Number.isSafeInteger(x) || x < min)) {
      throw new DemoArgsError(name, `config.${name} must be a list of at least ${minLength} integers ≥ ${min}, got ${JSON.stringify(v)}`);
    }
  };
  intList('seeds', Number.MIN_SAFE_INTEGER, 2);
  intList('trainSizes', 1, 1);
  intList('epochs', 1, 1);
  if (c.epochs.length !== c.trainSizes.length) throw new DemoArgsError('epochs', 'config.epochs must have one entry per training size');
  for (const [name, min] of [['valSize', 1], ['testSize', 1], ['batchSize', 2], ['ablationSeeds', 0]] as const) {
    if (!Number.isSafeInteger(c[name]) || c[name] < min) throw new DemoArgsError(name, `config.${name} must be an integer ≥ ${min}, got ${String(c[name])}`);
  }
  if (c.ablationSeeds > 0 && !c.trainSizes.includes(c.ablationSize)) throw new DemoArgsError('ablationSize', 'config.ablationSize must be one of config.trainSizes');
  if (!(c.learningRate > 0) || !(c.temperature > 0)) throw new DemoArgsError('learningRate', 'config.learningRate and config.temperature must be > 0');
  if (!(c.difficulty >= 0 && c.difficulty <= MAX_DIFFICULTY)) throw new DemoArgsError('difficulty', `config.difficulty must be in [0, ${MAX_DIFFICULTY}]`);
}

/**
 * Runs the study and writes its outputs (also after every pair, so that a study stopped
 * part-way leaves a report of the runs done, marked `complete: false`).
 */
export async function runStudy(config: StudyConfig, io: RunStudyIO = {}): Promise<StudyReport> {
  validateStudyConfig(config);
  const wallStart = performance.now();
  const loadAtStart = os.loadavg();
  const stdout = io.stdout ?? process.stdout;
  const stderr: ProgressStream = io.stderr ?? process.stderr;
  const progressMode = io.progress ?? progressModeFor(config.json, stderr);
  const say = (line = '') => {
    if (!config.json) stdout.write(`${line}\n`);
  };
  const note = (line: string) => {
    if (progressMode !== 'off') stderr.write(`${line}\n`);
  };

  if (!(await tf.setBackend(config.backend))) throw new Error(`could not start the tfjs '${config.backend}' backend`);
  await tf.ready();
  if (config.backend === 'wasm') registerWasmConvGradients();
  const fallbackReason = kmclFallbackReason() ?? null;
  const info = backendInfo();
  if (config.device === 'cuda' && !info.cuda.usable) throw new Error(`--device cuda: CUDA is not usable here (${info.cuda.reason ?? 'unknown reason'})`);
  const resolvedDevice = config.device === 'auto' ? info.defaultDevice : config.device;

  const plan = planRuns(config);
  const maxSize = config.trainSizes[config.trainSizes.length - 1];
  const stepsOf = (n: number, epochs: number) => epochs * Math.ceil(n / config.batchSize);
  const totalSteps = 2 * plan.reduce((a, p) => a + stepsOf(p.trainSize, p.epochs), 0);
  say(`kmcl study — tfjs ${tf.version.tfjs} '${tf.getBackend()}', loss: ${fallbackReason === null ? `fused kernel on ${resolvedDevice}` : `composite (${fallbackReason})`}`);
  say(
    `plan: ${plan.length} pairs (${2 * plan.length} runs, ${totalSteps} steps): seeds ${config.seeds.join(', ')} × sizes ${config.trainSizes.join(', ')}` +
      (config.ablationSeeds > 0 ? `; head ablation at ${config.ablationSize} with seeds ${config.seeds.slice(0, config.ablationSeeds).join(', ')}` : '; no head ablation'),
  );

  const runs: StudyRun[] = [];
  const models: StudyReport['model'] = {};
  let dataInfo: StudyReport['data'] | null = null;
  const freqSum = new Array<number>(10).fill(0);
  let freqN = 0;
  let stepsDone = 0;
  let stepMsDone = 0;
  const commit = gitCommit();

  const buildReport = (complete: boolean): StudyReport => {
    const comparisons = compareRuns(runs);
    const frequency = freqN > 0 ? freqSum.map((f) => f / freqN) : freqSum;
    const sum = (m: RunName, k: 'lossMs' | 'trainMs') => runs.filter((r) => r.mode === m).reduce((a, r) => a + r[k], 0);
    const lossShare = {
      kmclLossMs: sum('kmcl', 'lossMs'),
      kmclTrainMs: sum('kmcl', 'trainMs'),
      aslLossMs: sum('asl', 'lossMs'),
      aslTrainMs: sum('asl', 'trainMs'),
      kmcl: 0,
      asl: 0,
    };
    lossShare.kmcl = lossShare.kmclTrainMs > 0 ? lossShare.kmclLossMs / lossShare.kmclTrainMs : 0;
    lossShare.asl = lossShare.aslTrainMs > 0 ? lossShare.aslLossMs / lossShare.aslTrainMs : 0;
    const cpus = os.cpus();
    return {
      tool: 'kmcl study',
      version: 1,
      createdAt: new Date().toISOString(),
      argv: [...(io.argv ?? [])],
      commit,
      config: {
        ...config,
        interval: '95 % two-sided Student-t interval of the mean paired difference (KMCL − ASL-only, same seed), n − 1 degrees of freedom',
        stepsPerEpoch: Object.fromEntries(config.trainSizes.map((n) => [String(n), Math.ceil(n / config.batchSize)])),
      },
      environment: {
        node: process.versions.node,
        cpuModel: cpus[0]?.model.trim() ?? 'unknown',
        cpuCores: cpus.length,
        loadAverage: loadAtStart,
        loadAverageAtEnd: os.loadavg(),
        tfjsVersion: tf.version.tfjs,
        tfjsBackend: tf.getBackend(),
        kmclPath: fallbackReason === null ? 'fused' : 'composite',
        fallbackReason,
        resolvedDevice,
        cpuThreads: info.cpu.threads,
      },
      data: dataInfo ?? { task: '', source: '', imageSize: 0, classes: 0, testClassFrequency: [] },
      model: models,
      runs,
      comparisons,
      byFrequency: groupByFrequency(runs, frequency),
      lossShare,
      complete,
      wallMs: performance.now() - wallStart,
      files: { report: 'report.json', summary: 'summary.md', plot: 'plot.svg', png: null },
    };
  };

  // Data of the current seed (the plan visits each seed's pairs together, the ablation after).
  let current: { seed: number; ds: DemoData['ds']; val: SplitTensors['val']; test: SplitTensors['test'] } | null = null;
  const releaseData = () => {
    if (current) tf.dispose([current.val.x, current.val.y, current.test.x, current.test.y]);
    current = null;
  };
  const dataFor = (seed: number) => {
    if (current && current.seed === seed) return current;
    releaseData();
    const data = makeDemoData({ ...config, seed, trainSize: maxSize, dataDir: null });
    const { ds } = data;
    if (!seenSeeds.has(seed)) {
      seenSeeds.add(seed);
      ds.stats.test.classFrequency.forEach((f, c) => (freqSum[c] += f));
      freqN++;
    }
    dataInfo ??= { task: data.taskText, source: data.sourceText, imageSize: ds.imageSize, classes: ds.classes, testClassFrequency: [] };
    const S = ds.imageSize;
    const K = ds.classes;
    const split = (sp: typeof ds.val) => ({ x: tf.tensor4d(sp.images, [sp.count, S, S, 1]), y: tf.tensor2d(sp.labels, [sp.count, K]), labels: { data: sp.labels, shape: [sp.count, K] as [number, number] } });
    current = { seed, ds, val: split(ds.val), test: split(ds.test) };
    return current;
  };
  const seenSeeds = new Set<number>();

  try {
    for (const [pairIndex0, p] of plan.entries()) {
      const pairIndex = pairIndex0 + 1;
      const { seed } = p;
      const { ds, val, test } = dataFor(seed);
      const S = ds.imageSize;
      // The first n training images (a smaller split is a prefix of a larger one).
      const n = p.trainSize;
      const trainImages = ds.train.images.subarray(0, n * S * S);
      const trainLabels = ds.train.labels.subarray(0, n * ds.classes);
      const tensors: SplitTensors = {
        classes: ds.classes,
        train: { x: tf.tensor4d(trainImages, [n, S, S, 1]), y: tf.tensor2d(trainLabels, [n, ds.classes]), labels: { data: trainLabels, shape: [n, ds.classes] } },
        val,
        test,
      };
      const model = buildDemoModel({ imageSize: S, numClasses: ds.classes, mode: p.head.mode, covariance: p.head.covariance, seed });
      const hn = headName(p.head);
      models[hn] ??= { description: modelDescription(p.head), parameters: countParameters(model) };
      const initial = model.getWeights().map((w) => w.clone());
      try {
        for (const mode of ['kmcl', 'asl'] as const) {
          const perStep = stepsDone > 0 ? stepMsDone / stepsDone : Number.NaN;
          note(
            `[${pairIndex}/${plan.length}] seed ${seed}, ${n} training images, head ${hn}, ${RUN_LABELS[mode]} — ` +
              `study ETA ${formatDuration((totalSteps - stepsDone) * perStep)}`,
          );
          const t0 = performance.now();
          let firstStepAsl = Number.NaN;
          const r = await trainAndEvaluate(model, initial, mode, { ...config, seed, epochs: p.epochs }, tensors, {
            progressMode,
            stream: stderr,
            onStep: (s) => {
              if (s.epoch === 0 && s.step === 0) firstStepAsl = s.asl;
            },
          });
          const seconds = (performance.now() - t0) / 1000;
          stepsDone += r.steps;
          stepMsDone += seconds * 1000;
          runs.push({
            seed,
            trainSize: n,
            mode,
            head: hn,
            epochs: p.epochs,
            steps: r.steps,
            metrics: { mAP: 100 * r.test.mAP, CF1: 100 * r.test.CF1, OF1: 100 * r.test.OF1 },
            perClassAP: r.test.perClassAP.map((v) => (v === null ? null : 100 * v)),
            seconds,
            trainMs: r.times.trainMs,
            lossMs: r.times.lossMs,
            firstStepAsl,
          });
        }
      } finally {
        tf.dispose([tensors.train.x, tensors.train.y, ...initial]);
        model.dispose();
      }
      const [k, a] = runs.slice(-2);
      say(
        `seed ${seed}, ${n} images, ${hn}: mAP KMCL ${k.metrics.mAP.toFixed(2)} / ASL-only ${a.metrics.mAP.toFixed(2)} ` +
          `(Δ ${(k.metrics.mAP - a.metrics.mAP >= 0 ? '+' : '−')}${Math.abs(k.metrics.mAP - a.metrics.mAP).toFixed(2)})`,
      );
      const info = dataInfo as StudyReport['data'] | null; // set in dataFor()
      if (info) info.testClassFrequency = freqSum.map((f) => f / freqN);
      await writeStudyOutputs(buildReport(false), config.out, { plot: false });
    }
  } finally {
    releaseData();
  }
  const report = buildReport(true);
  const paths = await writeStudyOutputs(report, config.out, { plot: true });
  if (config.json) {
    stdout.write(JSON.stringify(report, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
  } else {
    const { summaryTables } = await import('./report.js');
    say();
    say(summaryTables(report));
    say(`wrote ${[paths.report, paths.summary, paths.plot, paths.png].filter(Boolean).join(', ')} (${(report.wallMs / 1000).toFixed(0)} s)`);
  }
  return report;
}
