/**
 * The benny suites of issue 5: forward + backward of the whole KMCL loss, over B, for
 * - `native-cpu`: kmclLossRaw(problem, { device: 'cpu', gradients: true }) (the fused forward
 *   also computes the gradients),
 * - `tfjs-composite-cpu`: tf.valueAndGrads of kmclLossReference(...).loss with respect to
 *   features, logits, mu and variance on the tfjs `cpu` backend, results read with dataSync,
 * - `native-cuda`: kmclLossRaw(problem, { device: 'cuda' }), when backendInfo() says a device is
 *   usable; otherwise a row that says why not.
 *
 * Every cell is called once first. A cell that throws (out of memory, `RangeError: invalid array
 * length`), that takes longer than the time cap, or whose composite tensors would not fit the
 * memory budget, becomes a `skipped` row with the reason; only the others run under benny.
 * `runSuite` works at any size: `npm test` runs it at B = 8.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as benny from 'benny';
import * as tf from '@tensorflow/tfjs';
import { backendInfo, kmclLossRaw, type KmclProblem } from '../src/index.js';
import { kmclLossReference } from '../src/tfjs/reference.js';
import { compositeBytesEstimate, gridSize, makeProblem, GRID_BATCHES, GRID_CLASSES, GRID_DIMS, GRID_POSITIVES, type ProblemSize } from './grid.js';

export { compositeBytesEstimate };
import { gitCommit, machineInfo, IMPLS, SCHEMA, type Impl, type MachineInfo, type RunSettings, type SuiteFile, type SuiteRow } from './format.js';

/** One suite: fixed K and M (D = M), a list of batch sizes, the implementations to compare. */
export interface SuiteSpec {
  name: string;
  K: number;
  /** Feature and kernel dimension: 1 is isotropic. */
  M: number;
  positives: number;
  batches: number[];
  impls: readonly Impl[];
}

/** benchmark.js case options (seconds), as benny passes them through. */
export interface CaseOptions {
  minSamples: number;
  maxTime: number;
  minTime?: number;
  delay?: number;
}

export interface RunOptions {
  /** Folder for the compact JSON (`<suite>.json`); benny's own files go to `<outDir>/benny/`. */
  outDir: string;
  quick: boolean;
  timeCapMs: number;
  memoryBudgetBytes: number;
  /** benchmark.js options for cells whose first call took less than `slowCallMs`. */
  fast: CaseOptions;
  /** … and for slower cells (a few samples are enough when one call takes seconds). */
  slow: CaseOptions;
  slowCallMs: number;
  /** Save benny's JSON and chart.html (default true). */
  saveBenny?: boolean;
  command: string;
  /** Print one line per cell (default true). */
  log?: (line: string) => void;
}

/** The suites of the full grid: K ∈ {20, 80} × M ∈ {1 (isotropic), 64 (anisotropic)}. */
export function gridSuites(): SuiteSpec[] {
  const out: SuiteSpec[] = [];
  for (const K of GRID_CLASSES) {
    for (const M of GRID_DIMS) {
      out.push({ name: suiteName(K, M), K, M, positives: GRID_POSITIVES, batches: [...GRID_BATCHES], impls: IMPLS });
    }
  }
  return out;
}

export function suiteName(K: number, M: number): string {
  return `K${K}-M${M}`;
}

export function suiteTitle(s: SuiteSpec): string {
  const kind = s.M === 1 ? 'isotropic' : 'anisotropic';
  return `fwd+bwd, K = ${s.K}, M = ${s.M} (${kind}: mu and variance [B, K, ${s.M}]), ${s.positives} positives per sample on average`;
}

/** A fwd+bwd call of one implementation on one problem, plus what to release afterwards. */
interface Cell {
  call: () => void;
  dispose: () => void;
}

function nativeCell(problem: KmclProblem, device: 'cpu' | 'cuda'): Cell {
  return {
    call: () => {
      const r = kmclLossRaw(problem, { device, gradients: true });
      if (!Number.isFinite(r.loss) || !r.gradients) throw new Error(`kmclLossRaw returned loss ${r.loss}`);
    },
    dispose: () => {},
  };
}

function compositeCell(problem: KmclProblem, size: ProblemSize): Cell {
  const { B, K, M, D, Kv, Dv } = size;
  const features = tf.tensor2d(problem.features, [B, M]);
  const logits = tf.tensor2d(problem.logits, [B, K]);
  const mu = tf.tensor3d(problem.mu, [B, K, D]);
  const variance = tf.tensor3d(problem.variance, [B, Kv, Dv]);
  const labels = tf.tensor2d(problem.labels, [B, K]);
  const lossOf = tf.valueAndGrads((f: tf.Tensor, a: tf.Tensor, m: tf.Tensor, v: tf.Tensor) =>
    kmclLossReference({ features: f as tf.Tensor2D, logits: a as tf.Tensor2D, mu: m as tf.Tensor3D, variance: v as tf.Tensor3D, labels }).loss,
  );
  return {
    call: () => {
      const out = tf.tidy(() => {
        const { value, grads } = lossOf([features, logits, mu, variance]);
        return [value, ...grads];
      });
      try {
        // dataSync: the cpu backend computes eagerly, but reading makes sure nothing is pending.
        const loss = out[0].dataSync()[0];
        for (const g of out.slice(1)) g.dataSync();
        if (!Number.isFinite(loss)) throw new Error(`composite returned loss ${loss}`);
      } finally {
        tf.dispose(out);
      }
    },
    dispose: () => tf.dispose([features, logits, mu, variance, labels]),
  };
}

/** Whether an error means "does not fit" rather than a bug. */
export function isOutOfMemory(e: unknown): boolean {
  const m = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return /out of memory|allocation failed|invalid array length|invalid typed array length|array buffer allocation|cannot allocate|std::bad_alloc|cudaErrorMemoryAllocation/i.test(m);
}

function errorText(e: unknown): string {
  const m = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return m.split('\n')[0].slice(0, 200);
}

function fmtBytes(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

let tfReady: Promise<void> | undefined;

/** The tfjs `cpu` backend, set once per process. */
export function useTfjsCpu(): Promise<void> {
  tfReady ??= (async () => {
    await tf.setBackend('cpu');
    await tf.ready();
  })();
  return tfReady;
}

/**
 * Runs one suite: first calls, skips, the benny run of the rest; writes `<outDir>/<name>.json`
 * (schema 1) and benny's `<outDir>/benny/<name>.json` and `.chart.html`. Returns the file's content.
 */
export async function runSuite(spec: SuiteSpec, opts: RunOptions): Promise<SuiteFile> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const info = backendInfo();
  const machine: MachineInfo = machineInfo({ threads: info.cpu.threads, cuda: info.cuda });
  if (spec.impls.includes('tfjs-composite-cpu')) await useTfjsCpu();
  const sizeOf = (B: number) => gridSize(B, spec.K, spec.M, spec.positives);
  const rows: SuiteRow[] = [];
  // Cells that passed their first call, in row order, for benny.
  const cases: { row: SuiteRow; cell: Cell; options: CaseOptions }[] = [];
  const cells: Cell[] = [];

  for (const B of spec.batches) {
    const size = sizeOf(B);
    const problem = makeProblem(size, 1000 + B);
    for (const impl of spec.impls) {
      const row: SuiteRow = { B, impl, status: 'ok' };
      rows.push(row);
      if (impl === 'native-cuda' && !info.cuda.usable) {
        Object.assign(row, { status: 'skipped', reason: `CUDA not usable: ${info.cuda.reason ?? 'unknown reason'}` });
        continue;
      }
      if (impl === 'tfjs-composite-cpu') {
        const need = compositeBytesEstimate(size);
        if (need > opts.memoryBudgetBytes) {
          Object.assign(row, {
            status: 'skipped',
            reason: `out of memory budget: the composite's tensors need ≈ ${fmtBytes(need)} (budget ${fmtBytes(opts.memoryBudgetBytes)})`,
          });
          continue;
        }
      }
      let cell: Cell | undefined;
      try {
        cell = impl === 'tfjs-composite-cpu' ? compositeCell(problem, size) : nativeCell(problem, impl === 'native-cuda' ? 'cuda' : 'cpu');
        cells.push(cell);
        const t0 = performance.now();
        cell.call();
        row.firstCallMs = round3(performance.now() - t0);
      } catch (e) {
        Object.assign(row, { status: isOutOfMemory(e) ? 'skipped' : 'failed', reason: isOutOfMemory(e) ? `out of memory: ${errorText(e)}` : errorText(e) });
        log(`  ${spec.name} B=${B} ${impl}: ${row.status} (${row.reason})`);
        continue;
      }
      if (row.firstCallMs > opts.timeCapMs) {
        Object.assign(row, { status: 'skipped', reason: `over the time cap: one call took ${(row.firstCallMs / 1000).toFixed(1)} s (cap ${(opts.timeCapMs / 1000).toFixed(0)} s)` });
        log(`  ${spec.name} B=${B} ${impl}: skipped (${row.reason})`);
        continue;
      }
      cases.push({ row, cell, options: row.firstCallMs >= opts.slowCallMs ? opts.slow : opts.fast });
    }
  }

  if (cases.length > 0) {
    const caseName = (r: SuiteRow) => `${r.impl} B=${r.B}`;
    const entries = cases.map(({ row, cell, options }) => {
      // benny calls a test once while setting up, to learn whether it returns a promise; that
      // probe is answered without work (a composite call can take many seconds). The test is
      // async so that benchmark.js runs it deferred: its synchronous clock re-runs the test once
      // per cycle as a "pretest", which would double the cost of the slow cells.
      let probe = true;
      const test = async (): Promise<void> => {
        if (probe) {
          probe = false;
          return;
        }
        cell.call();
      };
      return benny.add(caseName(row), test, options);
    });
    const saves = opts.saveBenny === false
      ? []
      : [
          benny.save({ file: spec.name, folder: join(opts.outDir, 'benny'), format: 'json', details: true }),
          benny.save({ file: spec.name, folder: join(opts.outDir, 'benny'), format: 'chart.html' }),
        ];
    const summary = await benny.suite(
      spec.name,
      benny.configure({ minDisplayPrecision: 4 }),
      ...entries,
      benny.cycle((r) => {
        const row = cases.find((c) => caseName(c.row) === r.name)?.row;
        log(`  ${spec.name} B=${row?.B} ${row?.impl}: median ${(r.details.median * 1e3).toPrecision(4)} ms, ${r.samples} samples`);
        return undefined;
      }),
      benny.complete(() => undefined),
      ...saves,
    );
    for (const r of summary.results) {
      const c = cases.find((x) => caseName(x.row) === r.name);
      if (!c) continue;
      if (!r.completed) {
        Object.assign(c.row, { status: 'failed', reason: 'benny recorded no sample' });
        continue;
      }
      Object.assign(c.row, {
        medianMs: round3(r.details.median * 1e3),
        meanMs: round3(r.details.mean * 1e3),
        // From the mean itself: benny's `ops` is rounded for display.
        opsPerSec: round3(1 / r.details.mean),
        samples: r.samples,
        rmePercent: Math.round(r.details.relativeMarginOfError * 100) / 100,
      });
    }
  }
  for (const cell of cells) cell.dispose();

  const size = sizeOf(spec.batches[0] ?? 1);
  const file: SuiteFile = {
    schema: SCHEMA,
    kind: 'suite',
    suite: spec.name,
    title: suiteTitle(spec),
    size: { K: size.K, M: size.M, D: size.D, Kv: size.Kv, Dv: size.Dv, positives: size.positives },
    machine,
    commit: gitCommit(),
    date: new Date().toISOString(),
    command: opts.command,
    settings: { quick: opts.quick, timeCapMs: opts.timeCapMs, memoryBudgetBytes: opts.memoryBudgetBytes } satisfies RunSettings,
    rows,
  };
  mkdirSync(opts.outDir, { recursive: true });
  writeFileSync(join(opts.outDir, `${spec.name}.json`), `${JSON.stringify(file, null, 2)}\n`);
  return file;
}

function round3(x: number): number {
  return Number(x.toPrecision(6));
}
