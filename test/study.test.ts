import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { DemoArgsError } from '../apps/demo/run.js';
import { pairedInterval, tQuantile975, verdict } from '../apps/study/stats.js';
import {
  ABLATION_HEADS,
  compareRuns,
  DEFAULT_STUDY,
  groupByFrequency,
  parseStudyArgs,
  planRuns,
  QUICK_STUDY,
  runStudy,
  type StudyReport,
  type StudyRun,
} from '../apps/study/study.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'kmcl-study-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function argsError(argv: string[]): DemoArgsError {
  try {
    parseStudyArgs(argv);
  } catch (e) {
    expect(e).toBeInstanceOf(DemoArgsError);
    return e as DemoArgsError;
  }
  throw new Error(`parseStudyArgs(${JSON.stringify(argv)}) did not throw`);
}

describe('study statistics', () => {
  it('t quantiles match published values (table and the large-df expansion)', () => {
    expect(tQuantile975(1)).toBeCloseTo(12.7062, 4);
    expect(tQuantile975(4)).toBeCloseTo(2.7764, 4);
    // R: qt(0.975, c(31, 40, 60, 120, 1000))
    expect(tQuantile975(31)).toBeCloseTo(2.039513, 4);
    expect(tQuantile975(40)).toBeCloseTo(2.021075, 4);
    expect(tQuantile975(60)).toBeCloseTo(2.000298, 4);
    expect(tQuantile975(120)).toBeCloseTo(1.979930, 4);
    expect(tQuantile975(1000)).toBeCloseTo(1.962339, 4);
    expect(() => tQuantile975(0)).toThrow(/df must be an integer ≥ 1/);
  });

  it('gives the paired t interval mean ± t·sd/√n', () => {
    // d = 1…5: mean 3, sd √2.5, se √0.5, t(4) = 2.776445 → 3 ± 1.963243.
    const s = pairedInterval([1, 2, 3, 4, 5]);
    expect(s.mean).toBe(3);
    expect(s.sd).toBeCloseTo(Math.sqrt(2.5), 12);
    expect(s.ci95[0]).toBeCloseTo(3 - 2.776445 * Math.sqrt(0.5), 5);
    expect(s.ci95[1]).toBeCloseTo(3 + 2.776445 * Math.sqrt(0.5), 5);
    // Shifting every difference shifts the interval; scaling scales it.
    const t = pairedInterval([11, 12, 13, 14, 15]);
    expect(t.ci95[0] - s.ci95[0]).toBeCloseTo(10, 10);
    const u = pairedInterval([2, 4, 6, 8, 10]);
    expect(u.ci95[1] - u.ci95[0]).toBeCloseTo(2 * (s.ci95[1] - s.ci95[0]), 10);
    expect(pairedInterval([0.5]).ci95.every(Number.isNaN)).toBe(true);
    expect(() => pairedInterval([])).toThrow(/at least one/);
    expect(() => pairedInterval([1, Number.NaN])).toThrow(/difference 1 is NaN/);
    expect(verdict([0.1, 0.4])).toBe('above');
    expect(verdict([-0.4, -0.1])).toBe('below');
    expect(verdict([-0.1, 0.4])).toBe('includes');
    expect(verdict([Number.NaN, Number.NaN])).toBe('undetermined');
  });

  it('pairs runs by seed and groups classes by frequency', () => {
    const run = (seed: number, mode: 'kmcl' | 'asl', mAP: number, ap: number[]): StudyRun => ({
      seed, trainSize: 100, mode, head: 'anisotropic/perClass', epochs: 1, steps: 1,
      metrics: { mAP, CF1: mAP / 2, OF1: mAP / 3 }, perClassAP: ap, seconds: 1, trainMs: 10, lossMs: 1, firstStepAsl: 1,
    });
    const ap = (base: number) => Array.from({ length: 10 }, (_, c) => base + c);
    const runs = [
      run(1, 'kmcl', 62, ap(52)), run(1, 'asl', 60, ap(50)),
      run(2, 'asl', 50, ap(40)), run(2, 'kmcl', 51, ap(41)),
      run(3, 'kmcl', 70, ap(70)), run(3, 'asl', 70, ap(70)),
      run(4, 'kmcl', 99, ap(99)), // unpaired: ignored
    ];
    const cmp = compareRuns(runs);
    expect(cmp.map((c) => c.metric)).toEqual(['mAP', 'CF1', 'OF1']);
    const m = cmp[0];
    expect(m.seeds).toEqual([1, 2, 3]);
    expect(m.deltas).toEqual([2, 1, 0]);
    expect(m.meanDelta).toBeCloseTo(1, 12);
    expect(m.ci95[0]).toBeCloseTo(1 - 4.302653 / Math.sqrt(3), 5); // sd 1
    expect(m.kmclMean).toBeCloseTo(61, 12);
    expect(cmp[1].deltas).toEqual([1, 0.5, 0]);
    const freq = [0.1, 0.9, 0.2, 0.3, 0.05, 0.4, 0.5, 0.6, 0.7, 0.8];
    const groups = groupByFrequency(runs, freq);
    expect(groups.map((g) => g.group)).toEqual(['frequent', 'middle', 'rare']);
    expect(groups[0].classes).toEqual([1, 9, 8]);
    expect(groups[2].classes).toEqual([2, 0, 4]);
    expect(groups[0].deltas).toEqual([2, 1, 0]);
    expect(groups[0].frequency).toBeCloseTo(0.8, 12);
  });
});

describe('parseStudyArgs', () => {
  it('gives the defaults, the quick preset and reads the flags', () => {
    expect(parseStudyArgs([]).config).toEqual({ ...DEFAULT_STUDY });
    const q = parseStudyArgs(['--quick']).config;
    expect(q).toMatchObject({ ...QUICK_STUDY, quick: true });
    expect(q.seeds.length).toBe(3);
    expect(q.trainSizes.length).toBe(1);
    const { config } = parseStudyArgs([
      '--seeds', '4', '--train-sizes', '300,100', '--epochs', '2,5', '--ablation-seeds', '2', '--val-size=20', '--test-size', '30',
      '--batch-size', '16', '--learning-rate', '1e-3', '--temperature', '0.5', '--task', 'easy', '--difficulty', '0.5',
      '--device', 'cpu', '--backend', 'cpu', '--out', 'x', '--json',
    ]);
    expect(config).toMatchObject({
      seeds: [1, 2, 3, 4], trainSizes: [100, 300], epochs: [5, 2], ablationSeeds: 2, ablationSize: 100, valSize: 20, testSize: 30,
      batchSize: 16, learningRate: 1e-3, temperature: 0.5, task: 'easy', difficulty: 0.5, device: 'cpu', backend: 'cpu', out: 'x', json: true,
    });
    expect(parseStudyArgs(['--seeds', '7,9,11']).config.seeds).toEqual([7, 9, 11]);
    expect(parseStudyArgs(['--train-sizes', '50,60', '--epochs', '3']).config.epochs).toEqual([3, 3]);
  });

  it('rejects bad flags naming the flag', () => {
    expect(argsError(['--seed', '3']).message).toMatch(/unknown flag --seed \(did you mean --seeds\?\)/);
    expect(argsError(['--seeds', '1']).message).toBe('--seeds: needs at least 2 seeds for an interval, got 1');
    expect(argsError(['--seeds', '1,1']).message).toBe('--seeds: seeds must be distinct, got 1,1');
    expect(argsError(['--train-sizes', '10,x']).message).toBe("--train-sizes: must be a number, got 'x'");
    expect(argsError(['--train-sizes', '0']).message).toBe('--train-sizes: values must be integers ≥ 1, got 0');
    expect(argsError(['--train-sizes', '10,20,30', '--epochs', '1,2']).message).toMatch(/^--epochs: give one value or one per training size \(3\)/);
    expect(argsError(['--ablation-seeds', '9']).message).toMatch(/^--ablation-seeds: must be at most the number of seeds/);
    expect(argsError(['--ablation-size', '7']).message).toMatch(/^--ablation-size: must be one of the training sizes/);
    expect(argsError(['--difficulty', '3']).message).toBe('--difficulty: must be a number in [0, 2], got 3');
    expect(argsError(['--task', 'hard']).message).toBe("--task: must be one of grid, easy, got 'hard'");
    expect(argsError(['--json=1']).message).toBe("--json: takes no value, got '1'");
    expect(argsError(['--out']).message).toBe('--out: needs a value (see --help)');
    expect(argsError(['--quick', '--quick']).message).toBe('--quick: given more than once');
  });

  it('plans the main comparison for every seed and size and the ablation heads for the first seeds', () => {
    const { config } = parseStudyArgs(['--seeds', '5', '--train-sizes', '100,400', '--ablation-seeds', '3']);
    const plan = planRuns(config);
    expect(plan.length).toBe(5 * 2 + 3 * (ABLATION_HEADS.length - 1));
    expect(plan.filter((p) => p.head.covariance === 'perDim').map((p) => [p.seed, p.trainSize])).toEqual([[1, 100], [2, 100], [3, 100]]);
  });

  it('the entry point exits 2 on a usage error and 0 for --help', () => {
    const bad = spawnSync(process.execPath, ['--import', 'tsx', 'apps/study/main.ts', '--seeds', 'x'], { cwd: root, encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/kmcl study: --seeds: must be a number, got 'x'/);
    const help = spawnSync(process.execPath, ['--import', 'tsx', 'apps/study/main.ts', '--help'], { cwd: root, encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: npm run study/);
  });
});

describe('runStudy (tiny configuration)', () => {
  it('runs paired KMCL / ASL-only runs and writes report.json, summary.md and plot.svg', async () => {
    const out = join(tmp, 'tiny');
    const { config } = parseStudyArgs([
      '--seeds', '2', '--train-sizes', '32,48', '--epochs', '1', '--val-size', '20', '--test-size', '60', '--batch-size', '16',
      '--ablation-seeds', '2', '--out', out, '--json',
    ]);
    const chunks: string[] = [];
    const report = await runStudy(config, { stdout: { write: (c: string) => chunks.push(c) }, argv: ['--tiny'] });
    const file = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')) as StudyReport;
    expect(JSON.parse(chunks.join(''))).toEqual(file);
    expect(file.complete).toBe(true);
    expect(file.argv).toEqual(['--tiny']);
    // 2 seeds × (size 32: 4 heads, size 48: 1 head) pairs, 2 runs each.
    expect(file.runs.length).toBe(2 * 5 * 2);
    for (const r of file.runs) {
      for (const v of [r.metrics.mAP, r.metrics.CF1, r.metrics.OF1]) {
        expect(v).toBeGreaterThanOrEqual(0);
        expect(v).toBeLessThanOrEqual(100);
      }
      expect(r.steps).toBe(Math.ceil(r.trainSize / 16));
      expect(r.seconds).toBeGreaterThan(0);
      expect(r.perClassAP).toHaveLength(10);
    }
    // A pair starts from the same weights and batch: the first step's ASL term is the same.
    for (const k of file.runs.filter((r) => r.mode === 'kmcl')) {
      const a = file.runs.find((r) => r.mode === 'asl' && r.seed === k.seed && r.trainSize === k.trainSize && r.head === k.head);
      expect(a).toBeDefined();
      expect(a!.firstStepAsl).toBeCloseTo(k.firstStepAsl, 4);
    }
    // 5 (size, head) groups × 3 metrics; each Δ is recomputed from the runs.
    expect(file.comparisons.length).toBe(15);
    for (const c of file.comparisons) {
      expect(c.seeds).toEqual([1, 2]);
      c.seeds.forEach((seed, i) => {
        const get = (mode: string) => file.runs.find((r) => r.mode === mode && r.seed === seed && r.trainSize === c.trainSize && r.head === c.head)!.metrics[c.metric];
        expect(c.deltas[i]).toBeCloseTo(get('kmcl') - get('asl'), 9);
      });
      expect(c.meanDelta).toBeCloseTo((c.deltas[0] + c.deltas[1]) / 2, 9);
      expect(c.ci95[0]).toBeLessThanOrEqual(c.meanDelta);
      expect(c.ci95[1]).toBeGreaterThanOrEqual(c.meanDelta);
    }
    expect(new Set(file.comparisons.map((c) => c.head)).size).toBe(4);
    expect(file.byFrequency.length).toBe(5 * 3);
    expect(file.lossShare.kmcl).toBeGreaterThan(0);
    expect(file.lossShare.kmcl).toBeLessThan(1);
    expect(file.lossShare.kmclLossMs).toBeCloseTo(file.runs.filter((r) => r.mode === 'kmcl').reduce((a, r) => a + r.lossMs, 0), 6);
    expect(report.data.testClassFrequency).toHaveLength(10);

    const svg = readFileSync(join(out, 'plot.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('KMCL − ASL-only');
    expect(svg).toContain('48 train, anisotropic/perClass');
    const summary = readFileSync(join(out, 'summary.md'), 'utf8');
    expect(summary).toContain('npm run study -- --tiny');
    expect(summary).toMatch(/\| 48 \| anisotropic\/perClass \| mAP \| 2 \|/);
    expect(summary).toContain('Student-t');
    expect(existsSync(join(out, 'plot.png'))).toBe(file.files.png !== null);
  });
});
