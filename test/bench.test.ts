/**
 * The benchmarks' own tests: the summary printer (exact markdown for a fixed input), the result
 * file format (schema validation), and one tiny run of every benchmark code path so that none of
 * them rots. No test here asserts a timing.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backendInfo } from '../src/index.js';
import { readResultFile, validateResultFile, type ScalingFile, type SuiteFile } from '../bench/format.js';
import { compositeBytesEstimate, countPositives, gridSize, makeProblem } from '../bench/grid.js';
import { parseArgs, runOptions, selectSuites, targetRatio } from '../bench/run.js';
import { fitPowerLaw, runScaling, scalingChartSpec } from '../bench/scaling.js';
import { gridSuites, isOutOfMemory, runSuite, type RunOptions } from '../bench/suites.js';
import { fmt, fmtRatio, formatScaling, formatSuite, summarize } from '../bench/summary.js';

const machine = {
  cpu: 'Test CPU 9000',
  cores: 2,
  memoryGiB: 24,
  node: 'v20.0.0',
  platform: 'linux',
  arch: 'x64',
  loadAverage: [0.5, 0.25, 0.1] as [number, number, number],
  nativeThreads: 2,
  cuda: { usable: false, reason: 'no NVIDIA driver' },
};

const suiteFile: SuiteFile = {
  schema: 1,
  kind: 'suite',
  suite: 'K20-M64',
  title: 'fwd+bwd, K = 20, M = 64',
  size: { K: 20, M: 64, D: 64, Kv: 20, Dv: 64, positives: 3 },
  machine,
  commit: 'abc1234',
  date: '2026-01-02T03:04:05.000Z',
  command: 'npm run bench',
  settings: { quick: false, timeCapMs: 60000, memoryBudgetBytes: 4 * 2 ** 30 },
  rows: [
    { B: 128, impl: 'native-cpu', status: 'ok', medianMs: 21.5, meanMs: 22, opsPerSec: 45.4545, samples: 40, rmePercent: 1.2, firstCallMs: 25 },
    { B: 128, impl: 'tfjs-composite-cpu', status: 'ok', medianMs: 36000, meanMs: 36100, opsPerSec: 0.0277, samples: 3, firstCallMs: 37000 },
    { B: 128, impl: 'native-cuda', status: 'skipped', reason: 'CUDA not usable: no NVIDIA driver' },
    { B: 256, impl: 'native-cpu', status: 'ok', medianMs: 0.000512, meanMs: 0.0006, opsPerSec: 1666666.7, samples: 60 },
    { B: 256, impl: 'tfjs-composite-cpu', status: 'skipped', reason: 'out of memory budget: the composite needs ≈ 10.7 GiB | more' },
    { B: 256, impl: 'native-cuda', status: 'failed', reason: 'Error: boom' },
  ],
};

const scalingFile: ScalingFile = {
  schema: 1,
  kind: 'scaling',
  size: { K: 80, M: 64, D: 64, Kv: 80, Dv: 64, positives: 3 },
  machine,
  commit: 'abc1234',
  date: '2026-01-02T03:04:05.000Z',
  command: 'tsx bench/scaling.ts',
  rows: [
    { B: 64, positives: 200, medianMs: 1.7, minMs: 1.6, calls: 10, peakRssBytes: 100 * 2 ** 20, baselineRssBytes: 90 * 2 ** 20, ioBytes: 5 * 2 ** 20, compositeBytesEstimate: 2.5 * 2 ** 30 },
    { B: 128, positives: 400, medianMs: 6.5, minMs: 6.4, calls: 10, peakRssBytes: 120 * 2 ** 20, baselineRssBytes: 90 * 2 ** 20, ioBytes: 10 * 2 ** 20, compositeBytesEstimate: 10 * 2 ** 30 },
  ],
  fits: {
    time: { slope: 2, intercept: -7.846, r2: 1, fromB: 64, toB: 128 },
    timeLarge: { slope: 2, intercept: -7.846, r2: 1, fromB: 64, toB: 128 },
    memory: { slope: 1.58, intercept: 0, r2: 1, fromB: 64, toB: 128 },
  },
  positivesSweep: {
    B: 128,
    rows: [
      { positivesPerSample: 1, positives: 128, medianMs: 2.1, minMs: 2, calls: 5 },
      { positivesPerSample: 2, positives: 256, medianMs: 3.1, minMs: 3, calls: 5 },
    ],
  },
};

const PROVENANCE =
  'Machine: Test CPU 9000, 2 cores, 24 GiB, linux x64, Node v20.0.0; native CPU threads 2; CUDA not usable (no NVIDIA driver). ' +
  'Load average at start 0.5 / 0.25 / 0.1 (1 / 5 / 15 min). Date 2026-01-02T03:04:05.000Z, commit abc1234, command `npm run bench`.';

describe('summary printer', () => {
  it('formats numbers and ratios', () => {
    expect([fmt(36000), fmt(21.5), fmt(0.0277), fmt(0.000512), fmt(0), fmt(1666666.7)]).toEqual(['36000', '21.5', '0.0277', '5.12e-4', '0', '1666667']);
    expect([fmtRatio(1674.4), fmtRatio(34.21), fmtRatio(1.5)]).toEqual(['1674×', '34.2×', '1.50×']);
  });

  it('prints one suite as the exact markdown table', () => {
    expect(formatSuite(suiteFile)).toBe(
      [
        '### K20-M64: fwd+bwd, K = 20, M = 64',
        '',
        PROVENANCE,
        'Settings: time cap 60.0 s per call, composite memory budget 4.00 GiB.',
        '',
        '| B | implementation | median (ms) | ops/s | samples | composite / this | note |',
        '| ---: | --- | ---: | ---: | ---: | ---: | --- |',
        '| 128 | kmcl native CPU (fused) | 21.5 | 45.5 | 40 | 1674× |  |',
        '| 128 | tfjs composite (cpu backend) | 36000 | 0.0277 | 3 | — |  |',
        '| 128 | kmcl native CUDA (fused) | — | — | — | — | skipped: CUDA not usable: no NVIDIA driver |',
        '| 256 | kmcl native CPU (fused) | 5.12e-4 | 1666667 | 60 | n/a |  |',
        '| 256 | tfjs composite (cpu backend) | — | — | — | — | skipped: out of memory budget: the composite needs ≈ 10.7 GiB \\| more |',
        '| 256 | kmcl native CUDA (fused) | — | — | — | — | failed: Error: boom |',
      ].join('\n'),
    );
  });

  it('prints the scaling study with its fits and the positives sweep', () => {
    expect(formatScaling(scalingFile)).toBe(
      [
        '### Scaling of the native CPU path: K = 80, M = 64, D = 64, variance [B, 80, 64], 3 positives per sample on average',
        '',
        PROVENANCE.replace('npm run bench', 'tsx bench/scaling.ts'),
        '',
        '| B | positives Σy | median (ms) | fastest (ms) | calls | fastest / (Σy·B) (ns) | peak RSS (MiB) | RSS above baseline (MiB) | inputs + gradients (MiB) | composite tensors would need |',
        '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
        '| 64 | 200 | 1.70 | 1.60 | 10 | 125 | 100 | 10.0 | 5.00 | 2.50 GiB |',
        '| 128 | 400 | 6.50 | 6.40 | 10 | 125 | 120 | 30.0 | 10.0 | 10.0 GiB |',
        '',
        "Fitted log-log slope of the fastest call's time against B: 2.00 over B = 64…128 (R² 1.0000), 2.00 over B = 64…128 (R² 1.0000). " +
          'Peak RSS above the baseline: slope 1.58 over B = 64…128 (R² 1.0000).',
        '',
        'Positives sweep at B = 128 (same K, M, D):',
        '',
        '| positives per sample | positives Σy | median (ms) | fastest (ms) | calls | fastest / (Σy·B) (ns) |',
        '| ---: | ---: | ---: | ---: | ---: | ---: |',
        '| 1 | 128 | 2.10 | 2.00 | 5 | 122 |',
        '| 2 | 256 | 3.10 | 3.00 | 5 | 91.6 |',
        '',
        'Linear in the positives: fastest = 1.00 ms + 0.00781 ms × Σy (R² 1.0000), i.e. 61.0 ns per (positive, sample) pair at B = 128; ' +
          'the intercept is the part that does not depend on the labels.',
      ].join('\n'),
    );
  });

  it('reads the 30× CPU target off the K20-M64 suite at B = 128', () => {
    expect(targetRatio([scalingFile, suiteFile])).toBe(
      'target (B = 128, K = 20, M = 64 anisotropic, fwd+bwd): composite / native CPU = 1674.4× (median 36000 ms / 21.5 ms); meets the 30× target',
    );
    expect(targetRatio([scalingFile])).toBeUndefined();
  });

  it('joins files with blank lines and ends with a newline', () => {
    expect(summarize([suiteFile, scalingFile])).toBe(`${formatSuite(suiteFile)}\n\n${formatScaling(scalingFile)}\n`);
  });
});

describe('result file format', () => {
  it('accepts the files it writes', () => {
    expect(validateResultFile(JSON.parse(JSON.stringify(suiteFile)))).toEqual(suiteFile);
    expect(validateResultFile(JSON.parse(JSON.stringify(scalingFile)))).toEqual(scalingFile);
  });

  const broken = (patch: (f: Record<string, any>) => void): Record<string, any> => {
    const f = JSON.parse(JSON.stringify(suiteFile)) as Record<string, any>;
    patch(f);
    return f;
  };
  it.each([
    ['schema', (f: Record<string, any>) => (f.schema = 2), /schema must be 1/],
    ['kind', (f: Record<string, any>) => (f.kind = 'other'), /kind must be 'suite' or 'scaling'/],
    ['date', (f: Record<string, any>) => (f.date = 'yesterday'), /date must be ISO 8601/],
    ['machine', (f: Record<string, any>) => delete f.machine.cpu, /machine: cpu must be a non-empty string/],
    ['impl', (f: Record<string, any>) => (f.rows[0].impl = 'gpu'), /rows\[0\]: impl must be one of/],
    ['ok without a median', (f: Record<string, any>) => delete f.rows[0].medianMs, /rows\[0\]: medianMs must be a finite number/],
    ['skipped without a reason', (f: Record<string, any>) => delete f.rows[2].reason, /rows\[2\]: reason must be a non-empty string/],
    ['status', (f: Record<string, any>) => (f.rows[1].status = 'slow'), /rows\[1\]: status must be ok, skipped or failed/],
    ['settings', (f: Record<string, any>) => delete f.settings.timeCapMs, /settings: timeCapMs must be a finite number/],
  ])('rejects a bad %s, naming the field', (_name, patch, message) => {
    expect(() => validateResultFile(broken(patch), 'x.json')).toThrow(message);
  });

  it('rejects a scaling file without its fits', () => {
    const f = JSON.parse(JSON.stringify(scalingFile)) as Record<string, any>;
    delete f.fits.timeLarge;
    expect(() => validateResultFile(f)).toThrow(/fits: timeLarge must be an object/);
  });
});

describe('benchmark helpers', () => {
  it('draws 3 positive labels per sample on average', () => {
    const p = makeProblem(gridSize(2000, 80, 64), 3);
    expect(countPositives(p) / 2000).toBeGreaterThan(2.8);
    expect(countPositives(p) / 2000).toBeLessThan(3.2);
    expect(p.mu.length).toBe(2000 * 80 * 64);
    expect(makeProblem(gridSize(4, 20, 1)).mu.length).toBe(4 * 20);
  });

  it('fits a power law exactly on exact data', () => {
    const fit = fitPowerLaw([64, 128, 256], [3 * 64 ** 2, 3 * 128 ** 2, 3 * 256 ** 2]);
    expect(fit.slope).toBeCloseTo(2, 12);
    expect(Math.exp(fit.intercept)).toBeCloseTo(3, 9);
    expect(fit.r2).toBeCloseTo(1, 12);
  });

  it('knows the grid, the quick subset and the CLI flags', () => {
    const grid = gridSuites();
    expect(grid.map((s) => s.name)).toEqual(['K20-M1', 'K20-M64', 'K80-M1', 'K80-M64']);
    expect(grid.every((s) => s.batches.join() === '32,64,128,256,512' && s.impls.length === 3)).toBe(true);
    const quick = selectSuites(parseArgs(['--quick']));
    expect(quick.map((s) => [s.name, s.batches.join()])).toEqual([
      ['K20-M1', '32,64'],
      ['K20-M64', '32,64'],
    ]);
    const one = parseArgs(['--suite', 'K80-M1', '--batches', '8,16', '--out', 'x', '--time-cap', '2', '--memory-budget', '0.5']);
    expect(selectSuites(one).map((s) => [s.name, s.batches.join()])).toEqual([['K80-M1', '8,16']]);
    expect(runOptions(one, 'c')).toMatchObject({ outDir: 'x', timeCapMs: 2000, memoryBudgetBytes: 2 ** 29 });
    expect(() => parseArgs(['--bogus'])).toThrow(/unknown argument --bogus/);
    expect(() => selectSuites(parseArgs(['--suite', 'K7-x']))).toThrow(/unknown suite K7-x/);
  });

  it('estimates the composite memory and recognises out-of-memory errors', () => {
    expect(compositeBytesEstimate({ B: 128, K: 20, D: 64 })).toBe(4 * 128 * 128 * 20 * (31 * 64 + 63));
    expect(isOutOfMemory(new RangeError('Invalid array length'))).toBe(true);
    expect(isOutOfMemory(new RangeError('Array buffer allocation failed'))).toBe(true);
    expect(isOutOfMemory(new Error('kmcl: CUDA out of memory'))).toBe(true);
    expect(isOutOfMemory(new TypeError('x is not a function'))).toBe(false);
  });
});

describe('the benchmark code paths at a tiny size', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kmcl-bench-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const tiny = (over: Partial<RunOptions> = {}): RunOptions => ({
    outDir: dir,
    quick: true,
    timeCapMs: 60_000,
    memoryBudgetBytes: 2 ** 30,
    fast: { minSamples: 1, maxTime: 0.01, minTime: 0.002, delay: 0 },
    slow: { minSamples: 1, maxTime: 0, minTime: 0.002, delay: 0 },
    slowCallMs: 1000,
    command: 'vitest',
    log: () => {},
    ...over,
  });

  for (const M of [1, 6]) {
    it(`runs a suite with M = ${M} at B = 8 with every implementation and writes its files`, async () => {
      const f = await runSuite({ name: `tiny-M${M}`, K: 4, M, positives: 2, batches: [8], impls: ['native-cpu', 'tfjs-composite-cpu', 'native-cuda'] }, tiny());
      expect(readResultFile(join(dir, `tiny-M${M}.json`))).toEqual(f);
      expect(existsSync(join(dir, 'benny', `tiny-M${M}.json`))).toBe(true);
      expect(readFileSync(join(dir, 'benny', `tiny-M${M}.chart.html`), 'utf8')).toContain('<html');
      expect(f.rows.map((r) => r.impl)).toEqual(['native-cpu', 'tfjs-composite-cpu', 'native-cuda']);
      for (const r of f.rows.slice(0, 2)) {
        expect(r.status, r.reason).toBe('ok');
        expect(r.medianMs).toBeGreaterThan(0);
        expect(r.samples).toBeGreaterThan(0);
      }
      const cuda = f.rows[2];
      if (backendInfo().cuda.usable) expect(cuda.status).toBe('ok');
      else expect(cuda).toMatchObject({ status: 'skipped', reason: expect.stringMatching(/^CUDA not usable: /) });
      expect(formatSuite(f)).toMatch(/\| 8 \| kmcl native CPU \(fused\) \| [^|]+ \| [^|]+ \| \d+ \| [\d.]+× \|/);
    });
  }

  it('skips the cells that exceed the memory budget or the time cap, with the reason', async () => {
    const f = await runSuite(
      { name: 'tiny-skips', K: 4, M: 6, positives: 2, batches: [8], impls: ['tfjs-composite-cpu'] },
      tiny({ memoryBudgetBytes: 1000 }),
    );
    expect(f.rows).toEqual([{ B: 8, impl: 'tfjs-composite-cpu', status: 'skipped', reason: expect.stringMatching(/^out of memory budget: /) }]);
    const g = await runSuite(
      { name: 'tiny-cap', K: 4, M: 6, positives: 2, batches: [8], impls: ['native-cpu'] },
      tiny({ timeCapMs: 1e-6, saveBenny: false }),
    );
    expect(g.rows[0]).toMatchObject({ status: 'skipped', reason: expect.stringMatching(/^over the time cap: /) });
    expect(existsSync(join(dir, 'benny', 'tiny-cap.json'))).toBe(false);
    expect(formatSuite(g)).toContain('skipped: over the time cap');
  });

  it('runs the scaling study at tiny B in fresh processes and draws the SVG', async () => {
    const f = await runScaling({
      batches: [8, 16, 32],
      K: 4,
      M: 6,
      positives: 2,
      minCalls: 1,
      minTimeMs: 0,
      maxCalls: 2,
      sweep: { B: 16, positivesPerSample: [1, 2] },
      outDir: dir,
      command: 'vitest',
      log: () => {},
    });
    expect(readResultFile(join(dir, 'scaling.json'))).toEqual(f);
    expect(f.rows.map((r) => r.B)).toEqual([8, 16, 32]);
    for (const r of f.rows) {
      expect(r.medianMs).toBeGreaterThan(0);
      expect(r.peakRssBytes).toBeGreaterThanOrEqual(r.baselineRssBytes);
      expect(r.positives).toBeGreaterThan(0);
    }
    expect(f.positivesSweep?.rows.map((r) => r.positivesPerSample)).toEqual([1, 2]);
    expect(Number.isFinite(f.fits.time.slope)).toBe(true);
    expect(scalingChartSpec(f)).toHaveProperty('hconcat');
    const svg = readFileSync(join(dir, 'scaling.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('batch size B');
    expect(formatScaling(f)).toContain("Fitted log-log slope of the fastest call's time against B");
  });

  it('the summary CLI prints what the runs wrote', () => {
    const tsx = createRequire(import.meta.url).resolve('tsx');
    const run = spawnSync(process.execPath, ['--import', tsx, 'bench/summary.ts', join(dir, 'tiny-M1.json'), join(dir, 'scaling.json')], { encoding: 'utf8' });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toContain('### tiny-M1: ');
    expect(run.stdout).toContain('### Scaling of the native CPU path');
    const bad = spawnSync(process.execPath, ['--import', tsx, 'bench/summary.ts', join(dir, 'benny', 'tiny-M1.json')], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/schema must be 1/);
  });
});

describe('the GPU comparison driver, off the GPU', () => {
  const python = spawnSync('python3', ['--version'], { encoding: 'utf8' });
  it.skipIf(python.status !== 0)('compare_gpu.py: parser, max-batch search and report (--self-test)', () => {
    const run = spawnSync('python3', ['bench/baselines/compare_gpu.py', '--self-test'], { encoding: 'utf8' });
    expect(run.status, run.stdout + run.stderr).toBe(0);
    expect(run.stdout).toContain('1 passed, 0 failed');
  });

  it('kmcl_cuda_probe.mjs loads the addon, times a call and reports why CUDA cannot run', () => {
    const probe = (...args: string[]) => {
      const run = spawnSync(process.execPath, ['bench/baselines/kmcl_cuda_probe.mjs', ...args], { encoding: 'utf8' });
      return { status: run.status, out: JSON.parse(run.stdout.trim().split('\n').pop()!) as Record<string, any> };
    };
    const info = probe('info');
    expect(info.status).toBe(0);
    expect(info.out.cuda.usable).toBe(backendInfo().cuda.usable);
    const t = probe('time', '8', '4', '6', '6', 'cpu');
    expect(t.out).toMatchObject({ B: 8, K: 4, M: 6, D: 6, device: 'cpu' });
    expect(t.out.medianMs).toBeGreaterThan(0);
    if (!backendInfo().cuda.usable) {
      const m = probe('max-batch', '4', '6', '6', '64', '16', '5');
      expect(m.out).toMatchObject({ maxBatch: 0, firstFailure: 16, bounded: true });
      expect(m.out.stop.length).toBeGreaterThan(0);
    }
  });
});

describe('eager PyTorch baseline (torch_eager.py) against the fixtures', () => {
  // The numpy port of the same vectorised code runs wherever python3 has numpy; torch is only
  // on the GPU machine (compare_gpu.py checks it there in float64 with autograd).
  const probe = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' });
  it.skipIf(probe.status !== 0)('matches every fixture (numpy, gradients by central differences)', () => {
    const run = spawnSync('python3', ['bench/baselines/torch_eager.py', '--check', '--numpy'], { encoding: 'utf8' });
    expect(run.status, run.stdout + run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^10 passed, 0 failed$/m);
  });
});
