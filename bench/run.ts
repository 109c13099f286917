/**
 * `npm run bench`: the benny suites of issue 5 (fwd+bwd of the KMCL loss; native CPU, tfjs
 * composite on the cpu backend, native CUDA when a device is usable) over the grid
 * B ∈ {32, 64, 128, 256, 512} × K ∈ {20, 80} × M ∈ {1 (isotropic), 64}; then the markdown
 * summary of what ran.
 *
 *   npm run bench                          the full grid (about 15 minutes on 2 cores)
 *   npm run bench -- --quick               K = 20, B ∈ {32, 64}: under two minutes
 *   npm run bench -- --suite K20-M64 [--suite …] [--batches 32,128]
 *   npm run bench -- --suite scaling       the CPU scaling study (bench/scaling.ts)
 *   npm run bench -- --all                 the grid and the scaling study
 *   options: --out DIR (default bench/results), --time-cap SECONDS, --memory-budget GIB
 *
 * Results: `<out>/<suite>.json` (schema 1, read by bench/summary.ts), benny's JSON and chart in
 * `<out>/benny/`, and `<out>/summary.md`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gridSuites, runSuite, type RunOptions, type SuiteSpec } from './suites.js';
import { runScaling, scalingOptions } from './scaling.js';
import { summarize } from './summary.js';
import type { ResultFile } from './format.js';

export interface CliArgs {
  quick: boolean;
  all: boolean;
  suites: string[];
  batches?: number[];
  outDir: string;
  timeCapMs?: number;
  memoryBudgetBytes?: number;
}

const USAGE = 'usage: tsx bench/run.ts [--quick] [--all] [--suite NAME]... [--batches 32,64] [--out DIR] [--time-cap SECONDS] [--memory-budget GIB]';

export function parseArgs(argv: string[]): CliArgs {
  const a: CliArgs = { quick: false, all: false, suites: [], outDir: 'bench/results' };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
      return v;
    };
    const positive = (v: string): number => {
      const n = Number(v);
      if (!(n > 0)) throw new Error(`${flag} must be a positive number, got ${v}`);
      return n;
    };
    switch (flag) {
      case '--quick':
        a.quick = true;
        break;
      case '--all':
        a.all = true;
        break;
      case '--suite':
        a.suites.push(...next().split(','));
        break;
      case '--batches':
        a.batches = next().split(',').map((v) => {
          const n = Number(v);
          if (!Number.isInteger(n) || n < 1) throw new Error(`--batches must be positive integers, got ${v}`);
          return n;
        });
        break;
      case '--out':
        a.outDir = next();
        break;
      case '--time-cap':
        a.timeCapMs = positive(next()) * 1000;
        break;
      case '--memory-budget':
        a.memoryBudgetBytes = positive(next()) * 2 ** 30;
        break;
      case '--help':
      case '-h':
        console.log(USAGE);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${flag}\n${USAGE}`);
    }
  }
  return a;
}

/** The suites to run: the grid, the quick subset of it, or the ones named. */
export function selectSuites(a: CliArgs): SuiteSpec[] {
  let specs = gridSuites();
  const known = new Set([...specs.map((s) => s.name), 'scaling']);
  for (const n of a.suites) if (!known.has(n)) throw new Error(`unknown suite ${n}; known: ${[...known].join(', ')}`);
  if (a.suites.length > 0) specs = specs.filter((s) => a.suites.includes(s.name));
  else if (a.quick) specs = specs.filter((s) => s.K === 20);
  const batches = a.batches ?? (a.quick ? [32, 64] : undefined);
  return batches ? specs.map((s) => ({ ...s, batches })) : specs;
}

/** Time cap, memory budget and benchmark.js sampling for a full or a quick run. */
export function runOptions(a: CliArgs, command: string): RunOptions {
  return {
    outDir: a.outDir,
    quick: a.quick,
    // Full runs must let the composite finish at B = 128, K = 20, D = 64 (tens of seconds a call
    // on 2 cores), since that is where the 30× target is read.
    timeCapMs: a.timeCapMs ?? (a.quick ? 15_000 : 60_000),
    memoryBudgetBytes: a.memoryBudgetBytes ?? 4 * 2 ** 30,
    fast: a.quick ? { minSamples: 3, maxTime: 0.3 } : { minSamples: 5, maxTime: 2 },
    slow: a.quick ? { minSamples: 2, maxTime: 0 } : { minSamples: 3, maxTime: 0 },
    slowCallMs: 1000,
    command,
  };
}

/**
 * The CPU target of issue 5: native CPU at least 30× faster than the composite at B = 128,
 * K = 20, M = 64 (anisotropic), fwd+bwd, in the same run. A line saying so, when that cell ran.
 */
export function targetRatio(files: ResultFile[]): string | undefined {
  const suite = files.find((f) => f.kind === 'suite' && f.suite === 'K20-M64');
  if (suite?.kind !== 'suite') return undefined;
  const cell = (impl: string) => suite.rows.find((r) => r.B === 128 && r.impl === impl);
  const native = cell('native-cpu');
  const composite = cell('tfjs-composite-cpu');
  if (!native || !composite) return undefined;
  if (native.status !== 'ok' || composite.status !== 'ok') {
    return `target (B = 128, K = 20, M = 64 anisotropic): not measured (native ${native.status}, composite ${composite.status}: ${composite.reason ?? native.reason ?? ''})`;
  }
  const ratio = composite.medianMs! / native.medianMs!;
  return `target (B = 128, K = 20, M = 64 anisotropic, fwd+bwd): composite / native CPU = ${ratio.toFixed(1)}× (median ${composite.medianMs} ms / ${native.medianMs} ms); ${ratio >= 30 ? 'meets' : 'MISSES'} the 30× target`;
}

async function main(argv: string[]): Promise<void> {
  const args = parseArgs(argv);
  const command = `npm run bench${argv.length ? ` -- ${argv.join(' ')}` : ''}`;
  const t0 = Date.now();
  const files: ResultFile[] = [];
  const wantScaling = args.all || args.suites.includes('scaling');
  const suites = args.suites.length > 0 && !args.suites.some((s) => s !== 'scaling') ? [] : selectSuites(args);
  for (const spec of suites) {
    console.log(`\n== suite ${spec.name}: B ∈ {${spec.batches.join(', ')}}`);
    files.push(await runSuite(spec, runOptions(args, command)));
  }
  if (wantScaling) {
    console.log('\n== scaling study of the native CPU path');
    files.push(await runScaling(scalingOptions({ quick: args.quick, batches: args.batches, outDir: args.outDir, command })));
  }
  const md = summarize(files);
  mkdirSync(args.outDir, { recursive: true });
  writeFileSync(join(args.outDir, 'summary.md'), md);
  console.log(`\n${md}`);
  const target = targetRatio(files);
  if (target) console.log(target);
  console.log(`bench: done in ${((Date.now() - t0) / 1000).toFixed(0)} s; results in ${args.outDir}/ (summary: tsx bench/summary.ts ${args.outDir}/*.json)`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(`bench: ${(e as Error).stack ?? e}`);
    process.exit(1);
  });
}
