/**
 * The result files of the benchmarks (schema 1) and what every file records about the run:
 * machine, date, commit and command. `bench/summary.ts` reads these files; `validateResultFile`
 * checks one before anything is printed from it, so a stale or foreign file fails loudly.
 */
import { execFileSync } from 'node:child_process';
import { cpus, loadavg, platform, arch, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import type { ProblemSize } from './grid.js';

export const SCHEMA = 1;

/** The implementations a suite compares. */
export const IMPLS = ['native-cpu', 'tfjs-composite-cpu', 'native-cuda'] as const;
export type Impl = (typeof IMPLS)[number];

/** How each implementation is named in tables. */
export const IMPL_LABELS: Record<Impl, string> = {
  'native-cpu': 'kmcl native CPU (fused)',
  'tfjs-composite-cpu': 'tfjs composite (cpu backend)',
  'native-cuda': 'kmcl native CUDA (fused)',
};

/** The machine a file was measured on. */
export interface MachineInfo {
  /** CPU model name. */
  cpu: string;
  /** Logical cores the OS reports. */
  cores: number;
  memoryGiB: number;
  node: string;
  platform: string;
  arch: string;
  /** 1-, 5- and 15-minute load averages when the run started (others' work shares these cores). */
  loadAverage: [number, number, number];
  /** Worker threads of the native CPU path (KMCL_NUM_THREADS or the cores). */
  nativeThreads: number;
  /** The CUDA path: whether a device was usable, which, or why not. */
  cuda: { usable: boolean; device?: string; reason?: string };
}

/** The sizes shared by every row of a suite: a problem size without B. */
export type SuiteSize = Omit<ProblemSize, 'B'>;

export type RowStatus = 'ok' | 'skipped' | 'failed';

/** One (B, implementation) cell of a suite: fwd+bwd of the whole loss. */
export interface SuiteRow {
  B: number;
  impl: Impl;
  status: RowStatus;
  /** Median time per call over benny's samples (each sample is the mean of one cycle). */
  medianMs?: number;
  /** Mean time per call (1 / ops/s). */
  meanMs?: number;
  /** benny's ops/s (benchmark.js hz, mean-based). */
  opsPerSec?: number;
  /** Number of benny samples (cycles). */
  samples?: number;
  /** Relative margin of error of the mean, %. */
  rmePercent?: number;
  /** The first (untimed-by-benny) call, which decides whether the cell runs at all. */
  firstCallMs?: number;
  /** Why the cell was skipped or failed. */
  reason?: string;
}

/** What a run measured under. */
export interface RunSettings {
  quick: boolean;
  /** A cell whose first call takes longer is skipped. */
  timeCapMs: number;
  /** A composite cell whose estimated peak tensor memory exceeds this is skipped. */
  memoryBudgetBytes: number;
}

interface FileHeader {
  schema: typeof SCHEMA;
  machine: MachineInfo;
  /** `git rev-parse --short HEAD`, with `-dirty` when the tree had changes. */
  commit: string;
  /** ISO 8601. */
  date: string;
  command: string;
}

/** One benny suite: fwd+bwd of the loss for several implementations over B. */
export interface SuiteFile extends FileHeader {
  kind: 'suite';
  suite: string;
  title: string;
  size: SuiteSize;
  settings: RunSettings;
  rows: SuiteRow[];
}

/** One B of the CPU scaling study, each measured in a fresh process. */
export interface ScalingRow {
  B: number;
  /** Σ y: positive labels in the batch. */
  positives: number;
  medianMs: number;
  /** The fastest call (the fits use it: other work on shared cores only adds time). */
  minMs: number;
  /** Timed calls. */
  calls: number;
  /** Peak resident set size of the child process (process.resourceUsage().maxRSS). */
  peakRssBytes: number;
  /** RSS of the child after loading the addon, before the problem was made. */
  baselineRssBytes: number;
  /** Inputs and gradients of one call, O(B·K·M). */
  ioBytes: number;
  /** What the tfjs composite's tensors would need at this size (calibrated estimate). */
  compositeBytesEstimate: number;
}

export interface PowerFit {
  /** log(y) = intercept + slope·log(B), least squares. */
  slope: number;
  intercept: number;
  r2: number;
  /** The B range the fit used. */
  fromB: number;
  toB: number;
}

export interface ScalingFile extends FileHeader {
  kind: 'scaling';
  size: Omit<SuiteSize, never>;
  rows: ScalingRow[];
  fits: {
    /** Fastest-call time against B over all B. */
    time: PowerFit;
    /** Time against B over the upper half of the B range (fixed costs matter less there). */
    timeLarge: PowerFit;
    /** Peak RSS above the baseline against B. */
    memory: PowerFit;
  };
  /** Fixed B, varying positives per sample: time should follow the positive count. */
  positivesSweep?: { B: number; rows: { positivesPerSample: number; positives: number; medianMs: number; minMs: number; calls: number }[] };
}

export type ResultFile = SuiteFile | ScalingFile;

function fail(where: string, what: string): never {
  throw new Error(`${where}: ${what}`);
}

function isObject(x: unknown): x is Record<string, unknown> {
  return x !== null && typeof x === 'object' && !Array.isArray(x);
}

function num(where: string, o: Record<string, unknown>, key: string, optional = false): void {
  const v = o[key];
  if (v === undefined && optional) return;
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(where, `${key} must be a finite number, got ${JSON.stringify(v)}`);
}

function str(where: string, o: Record<string, unknown>, key: string, optional = false): void {
  const v = o[key];
  if (v === undefined && optional) return;
  if (typeof v !== 'string' || v.length === 0) fail(where, `${key} must be a non-empty string, got ${JSON.stringify(v)}`);
}

function validateHeader(where: string, o: Record<string, unknown>): void {
  if (o.schema !== SCHEMA) fail(where, `schema must be ${SCHEMA}, got ${JSON.stringify(o.schema)}`);
  str(where, o, 'commit');
  str(where, o, 'date');
  if (Number.isNaN(Date.parse(o.date as string))) fail(where, `date must be ISO 8601, got ${JSON.stringify(o.date)}`);
  str(where, o, 'command');
  const m = o.machine;
  if (!isObject(m)) fail(where, 'machine must be an object');
  const w = `${where}.machine`;
  str(w, m, 'cpu');
  num(w, m, 'cores');
  num(w, m, 'memoryGiB');
  str(w, m, 'node');
  str(w, m, 'platform');
  str(w, m, 'arch');
  num(w, m, 'nativeThreads');
  if (!Array.isArray(m.loadAverage) || m.loadAverage.length !== 3 || !m.loadAverage.every((x) => typeof x === 'number')) {
    fail(w, 'loadAverage must be three numbers');
  }
  if (!isObject(m.cuda) || typeof m.cuda.usable !== 'boolean') fail(w, 'cuda must be { usable: boolean, device?, reason? }');
}

function validateSize(where: string, s: unknown): void {
  if (!isObject(s)) fail(where, 'size must be an object');
  for (const k of ['K', 'M', 'D', 'Kv', 'Dv', 'positives']) num(`${where}.size`, s, k);
}

/**
 * Checks that `x` is a result file of this schema (a suite or the scaling study) and returns it
 * typed. Throws an error naming the file (`where`) and the offending field.
 */
export function validateResultFile(x: unknown, where = 'result file'): ResultFile {
  if (!isObject(x)) fail(where, 'must be a JSON object');
  validateHeader(where, x);
  validateSize(where, x.size);
  if (!Array.isArray(x.rows)) fail(where, 'rows must be an array');
  if (x.kind === 'suite') {
    str(where, x, 'suite');
    str(where, x, 'title');
    const s = x.settings;
    if (!isObject(s) || typeof s.quick !== 'boolean') fail(where, 'settings must be { quick, timeCapMs, memoryBudgetBytes }');
    num(`${where}.settings`, s, 'timeCapMs');
    num(`${where}.settings`, s, 'memoryBudgetBytes');
    x.rows.forEach((r: unknown, i: number) => {
      const w = `${where}.rows[${i}]`;
      if (!isObject(r)) fail(w, 'must be an object');
      num(w, r, 'B');
      if (!IMPLS.includes(r.impl as Impl)) fail(w, `impl must be one of ${IMPLS.join(', ')}, got ${JSON.stringify(r.impl)}`);
      if (r.status === 'ok') {
        for (const k of ['medianMs', 'meanMs', 'opsPerSec', 'samples']) num(w, r, k);
        num(w, r, 'rmePercent', true);
        num(w, r, 'firstCallMs', true);
      } else if (r.status === 'skipped' || r.status === 'failed') {
        str(w, r, 'reason');
        num(w, r, 'firstCallMs', true);
      } else {
        fail(w, `status must be ok, skipped or failed, got ${JSON.stringify(r.status)}`);
      }
    });
    return x as unknown as SuiteFile;
  }
  if (x.kind === 'scaling') {
    x.rows.forEach((r: unknown, i: number) => {
      const w = `${where}.rows[${i}]`;
      if (!isObject(r)) fail(w, 'must be an object');
      for (const k of ['B', 'positives', 'medianMs', 'minMs', 'calls', 'peakRssBytes', 'baselineRssBytes', 'ioBytes', 'compositeBytesEstimate']) num(w, r, k);
    });
    if (!isObject(x.fits)) fail(where, 'fits must be an object');
    for (const f of ['time', 'timeLarge', 'memory']) {
      const fit = x.fits[f];
      if (!isObject(fit)) fail(`${where}.fits`, `${f} must be an object`);
      for (const k of ['slope', 'intercept', 'r2', 'fromB', 'toB']) num(`${where}.fits.${f}`, fit, k);
    }
    return x as unknown as ScalingFile;
  }
  return fail(where, `kind must be 'suite' or 'scaling', got ${JSON.stringify(x.kind)}`);
}

/** Reads and validates one result file. */
export function readResultFile(path: string): ResultFile {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Error(`${path}: not readable JSON (${(e as Error).message})`);
  }
  return validateResultFile(parsed, path);
}

/** `git rev-parse --short HEAD`, `-dirty` when tracked files changed; 'unknown' outside git. */
export function gitCommit(cwd = process.cwd()): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return dirty ? `${head}-dirty` : head;
  } catch {
    return 'unknown';
  }
}

/** The machine, as far as the OS and the native addon tell. */
export function machineInfo(native: { threads: number; cuda: { usable: boolean; deviceName?: string; reason?: string } }): MachineInfo {
  const c = cpus();
  const [l1, l5, l15] = loadavg();
  return {
    cpu: c[0]?.model?.trim() || 'unknown',
    cores: c.length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    platform: platform(),
    arch: arch(),
    loadAverage: [round2(l1), round2(l5), round2(l15)],
    nativeThreads: native.threads,
    cuda: native.cuda.usable
      ? { usable: true, device: native.cuda.deviceName ?? 'unknown device' }
      : { usable: false, reason: native.cuda.reason ?? 'unknown reason' },
  };
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}
