import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { backendInfo, kmclLossRaw, kmclLossRawAsync, kmclLossRawFloat64, problemFromFile } from '../src/index.js';
import type { KmclProblem, KmclRawResult } from '../src/raw.js';
import { GRADS, TERMS, layouts, loadFixtures, randomProblem, relNorm, termClose } from './helpers.js';

const fixtures = loadFixtures();
const tsx = createRequire(import.meta.url).resolve('tsx');

function checkAgainstFixture(r: { loss: number; asl: number; reconstruction: number; contrastive: number; gradients?: { [G in (typeof GRADS)[number]]: ArrayLike<number> } }, fx: (typeof fixtures)[number]) {
  for (const t of TERMS) {
    expect(termClose(r[t], fx.expected[t]), `${fx.name} ${t}: ${r[t]} vs ${fx.expected[t]}`).toBe(true);
  }
  for (const g of GRADS) {
    const err = relNorm(r.gradients![g], fx.gradients[g]);
    expect(err, `${fx.name} d/d${g}`).toBeLessThan(1e-4);
  }
}

describe('fixtures', () => {
  it('has the ten public fixtures', () => {
    expect(fixtures.length).toBe(10);
  });
  for (const fx of fixtures) {
    it(`${fx.name}: kmclLossRaw`, () => {
      const { problem, options } = problemFromFile(fx);
      checkAgainstFixture(kmclLossRaw(problem, options), fx);
    });
    it(`${fx.name}: kmclLossRawAsync equals the sync call`, async () => {
      const { problem, options } = problemFromFile(fx);
      const a = await kmclLossRawAsync(problem, options);
      checkAgainstFixture(a, fx);
      const s = kmclLossRaw(problem, options);
      for (const t of TERMS) expect(a[t]).toBe(s[t]);
      for (const g of GRADS) expect(a.gradients![g]).toEqual(s.gradients![g]);
    });
    it(`${fx.name}: float64 build`, () => {
      const { problem, options } = problemFromFile(fx, 'fixture', Float64Array);
      checkAgainstFixture(kmclLossRawFloat64(problem as never, options), fx);
    });
  }
  it('the CLI prints the same numbers for every fixture', () => {
    for (const fx of fixtures) {
      const run = spawnSync(process.execPath, ['--import', tsx, 'src/cli.ts', 'loss', '--input', fx.file, '--device', 'cpu'], { encoding: 'utf8' });
      expect(run.status, run.stderr).toBe(0);
      checkAgainstFixture(JSON.parse(run.stdout), fx);
    }
  });
});

describe('gradients against central finite differences (float64 build)', () => {
  // With detachFocalWeight (the default) the analytic gradient treats the focal weight as a
  // constant, which a finite difference of the loss cannot: the fixtures cover that case, and
  // here the default set uses γ = 0 (w = 1), the others differentiate w.
  const optionSets = [
    { gammaNeg: 0 },
    { temperature: 0.4, gammaNeg: 2, gammaPos: 1, clip: 0, detachFocalWeight: false, distanceScale: 2.5, weights: { asl: 0.7, reconstruction: 1.3, contrastive: 2 } },
    { stableReconstruction: false, clip: 0.1, logEps: 1e-3, eps: 1e-5, temperature: 0.05, detachFocalWeight: false, gammaPos: 2 },
  ];
  let seed = 100;
  for (const layout of layouts(4, 3)) {
    for (const [oi, options] of optionSets.entries()) {
      const s = ++seed;
      it(`${layout.name}, options set ${oi}`, () => {
        const p = randomProblem({ seed: s, B: 6, K: 4, M: 3, D: layout.D, Kv: layout.Kv, Dv: layout.Dv, positives: 1.8 }, Float64Array);
        const base = kmclLossRawFloat64(p as never, options);
        expect(base.contrastive).toBeGreaterThan(0);
        for (const g of GRADS) {
          const x = p[g] as unknown as Float64Array;
          const fd = new Float64Array(x.length);
          for (let j = 0; j < x.length; j++) {
            const x0 = x[j];
            const h = 1e-5 * Math.max(1, Math.abs(x0));
            x[j] = x0 + h;
            const up = kmclLossRawFloat64(p as never, { ...options, gradients: false }).loss;
            x[j] = x0 - h;
            const down = kmclLossRawFloat64(p as never, { ...options, gradients: false }).loss;
            x[j] = x0;
            fd[j] = (up - down) / (2 * h);
          }
          expect(relNorm(base.gradients![g], fd), `d/d${g}`).toBeLessThan(1e-6);
        }
      });
    }
  }
});

function permuteRows(a: Float32Array, rows: number, perm: number[]): Float32Array {
  const width = a.length / rows;
  const out = new Float32Array(a.length);
  perm.forEach((src, dst) => out.set(a.subarray(src * width, (src + 1) * width), dst * width));
  return out;
}

/** Permutes axis 1 of a [B, K, D] array (K may be 1: then nothing moves). */
function permuteClasses(a: Float32Array, B: number, K: number, perm: number[]): Float32Array {
  if (K === 1) return a.slice();
  const D = a.length / (B * K);
  const out = new Float32Array(a.length);
  for (let i = 0; i < B; i++)
    perm.forEach((src, dst) => out.set(a.subarray((i * K + src) * D, (i * K + src + 1) * D), (i * K + dst) * D));
  return out;
}

describe('invariances', () => {
  const B = 9;
  const K = 5;
  const M = 4;
  for (const layout of layouts(K, M)) {
    it(`permuting the batch permutes the gradients (${layout.name})`, () => {
      const p = randomProblem({ seed: 7, B, K, M, ...layout });
      const perm = [3, 0, 8, 1, 7, 2, 6, 4, 5];
      const q: KmclProblem = {
        ...p,
        features: permuteRows(p.features, B, perm),
        logits: permuteRows(p.logits, B, perm),
        labels: permuteRows(p.labels, B, perm),
        mu: permuteRows(p.mu, B, perm),
        variance: permuteRows(p.variance, B, perm),
      };
      const a = kmclLossRaw(p);
      const b = kmclLossRaw(q);
      for (const t of TERMS) expect(b[t]).toBeCloseTo(a[t], 4);
      for (const g of GRADS) expect(relNorm(b.gradients![g], permuteRows(a.gradients![g], B, perm))).toBeLessThan(1e-5);
    });
    it(`permuting the classes permutes the gradients (${layout.name})`, () => {
      const p = randomProblem({ seed: 8, B, K, M, ...layout });
      const perm = [2, 4, 0, 3, 1];
      const q: KmclProblem = {
        ...p,
        logits: permuteClasses(p.logits, B, K, perm),
        labels: permuteClasses(p.labels, B, K, perm),
        mu: permuteClasses(p.mu, B, K, perm),
        variance: permuteClasses(p.variance, B, layout.Kv, perm),
      };
      const a = kmclLossRaw(p);
      const b = kmclLossRaw(q);
      for (const t of TERMS) expect(b[t]).toBeCloseTo(a[t], 4);
      expect(relNorm(b.gradients!.features, a.gradients!.features)).toBeLessThan(1e-5);
      expect(relNorm(b.gradients!.logits, permuteClasses(a.gradients!.logits, B, K, perm))).toBeLessThan(1e-5);
      expect(relNorm(b.gradients!.mu, permuteClasses(a.gradients!.mu, B, K, perm))).toBeLessThan(1e-5);
      expect(relNorm(b.gradients!.variance, permuteClasses(a.gradients!.variance, B, layout.Kv, perm))).toBeLessThan(1e-5);
    });
  }
  it('B = 1 gives a zero contrastive term and no contrastive gradient', () => {
    const p = randomProblem({ seed: 9, B: 1, K: 4, M: 3, D: 3, Kv: 4, Dv: 3, positives: 3 });
    const r = kmclLossRaw(p);
    expect(r.contrastive).toBe(0);
    const noCon = kmclLossRaw(p, { weights: { contrastive: 0 } });
    for (const g of GRADS) expect(r.gradients![g]).toEqual(noCon.gradients![g]);
  });
  it('a batch where no two samples share a label gives a zero contrastive term and gradient', () => {
    const p = randomProblem({ seed: 10, B: 4, K: 4, M: 3, D: 3, Kv: 4, Dv: 3 });
    p.labels = new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
    const r = kmclLossRaw(p);
    expect(r.contrastive).toBe(0);
    const noCon = kmclLossRaw(p, { weights: { contrastive: 0 } });
    for (const g of GRADS) expect(r.gradients![g]).toEqual(noCon.gradients![g]);
  });
  it('a label-free batch: contrastive 0, reconstruction the constant -log(eps) with zero gradient', () => {
    const p = randomProblem({ seed: 11, B: 5, K: 3, M: 2, D: 2, Kv: 3, Dv: 2 });
    p.labels.fill(0);
    const r = kmclLossRaw(p, { weights: { asl: 0 } });
    expect(r.contrastive).toBe(0);
    expect(r.reconstruction).toBeCloseTo(-Math.log(1e-7), 5);
    for (const g of GRADS) expect(Array.from(r.gradients![g]).every((v) => v === 0)).toBe(true);
  });
});

describe('numerics at the extremes', () => {
  const cases: [string, (p: KmclProblem) => void][] = [
    ['features ±1e4', (p) => p.features.forEach((_, j) => (p.features[j] = j % 2 ? 1e4 : -1e4))],
    ['variance 1e-4', (p) => p.variance.fill(1e-4)],
    ['variance 1e6', (p) => p.variance.fill(1e6)],
    ['variance from 1e-4 to 1e6', (p) => p.variance.forEach((_, j) => (p.variance[j] = 10 ** (-4 + (j % 11))))],
    ['logits ±100', (p) => p.logits.forEach((_, j) => (p.logits[j] = j % 3 ? 100 : -100))],
    ['all-zero labels', (p) => p.labels.fill(0)],
    ['all-one labels', (p) => p.labels.fill(1)],
    ['features ±1e4 with variance 1e-4 and logits ±100', (p) => {
      p.features.forEach((_, j) => (p.features[j] = j % 2 ? 1e4 : -1e4));
      p.variance.fill(1e-4);
      p.logits.forEach((_, j) => (p.logits[j] = j % 3 ? 100 : -100));
    }],
  ];
  for (const [name, mutate] of cases) {
    for (const layout of [layouts(5, 4)[0], layouts(5, 4)[2], layouts(5, 4)[5]]) {
      for (const B of [1, 7]) {
        it(`${name}, ${layout.name}, B = ${B}`, () => {
          const p = randomProblem({ seed: 12 + B, B, K: 5, M: 4, ...layout });
          mutate(p);
          for (const options of [{}, { temperature: 0.01, stableReconstruction: false }, { temperature: 1e-4, gammaPos: 0.5, detachFocalWeight: false }]) {
            const r = kmclLossRaw(p, options);
            for (const t of TERMS) expect(Number.isFinite(r[t]), `${t} = ${r[t]}`).toBe(true);
            for (const g of GRADS) expect(r.gradients![g].every(Number.isFinite), `d/d${g} finite`).toBe(true);
          }
        });
      }
    }
  }
});

describe('threads', () => {
  it('results do not depend on KMCL_NUM_THREADS (bitwise: every sum has a fixed order)', () => {
    const p = randomProblem({ seed: 21, B: 203, K: 12, M: 16, D: 16, Kv: 12, Dv: 16, positives: 3 });
    const saved = process.env.KMCL_NUM_THREADS;
    const results: KmclRawResult[] = [];
    try {
      for (const n of ['1', '2', '3', '8']) {
        process.env.KMCL_NUM_THREADS = n;
        results.push(kmclLossRaw(p, { device: 'cpu' }));
      }
    } finally {
      if (saved === undefined) delete process.env.KMCL_NUM_THREADS;
      else process.env.KMCL_NUM_THREADS = saved;
    }
    expect(results[0].contrastive).toBeGreaterThan(0);
    for (const r of results.slice(1)) {
      for (const t of TERMS) expect(r[t]).toBe(results[0][t]);
      for (const g of GRADS) expect(r.gradients![g]).toEqual(results[0].gradients![g]);
    }
  });
  it('a bad KMCL_NUM_THREADS is an error, not a crash', () => {
    const saved = process.env.KMCL_NUM_THREADS;
    try {
      process.env.KMCL_NUM_THREADS = 'lots';
      expect(() => kmclLossRaw(randomProblem({ seed: 1, B: 2, K: 2, M: 2, D: 2, Kv: 2, Dv: 2 }))).toThrow(/KMCL_NUM_THREADS must be an integer/);
    } finally {
      if (saved === undefined) delete process.env.KMCL_NUM_THREADS;
      else process.env.KMCL_NUM_THREADS = saved;
    }
  });
});

describe('backendInfo', () => {
  it('reports the CPU path and why CUDA is or is not usable', () => {
    const info = backendInfo();
    expect(info.native.loaded).toBe(true);
    expect(info.cpu.compiled).toBe(true);
    expect(info.cpu.threads).toBeGreaterThan(0);
    if (info.cuda.usable) {
      expect(info.defaultDevice).toBe('cuda');
      expect(info.cuda.deviceName).toBeTruthy();
    } else {
      expect(info.defaultDevice).toBe('cpu');
      expect(info.cuda.reason).toMatch(/CUDA|driver|device/);
    }
  });
});
