// Issue 9, items 6-7: the numeric domain. Inside it (docs/kmcl-loss.md, "Numeric domain") the
// float32 path gives a finite loss, finite parts and finite gradients, within a stated tolerance of
// the float64 path; outside it the call is refused with an error naming the argument. Property
// tests (fast-check) over random shapes, layouts, values spanning the accepted range and all
// options. KMCL_FUZZ_RUNS=N runs N cases per property instead of the short default (npm run fuzz).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { kmclLossRaw, kmclLossRawFloat64, type KmclProblem } from '../src/index.js';
import { NUMERIC_DOMAIN, type KmclLossOptions } from '../src/options.js';

const RUNS = Number(process.env.KMCL_FUZZ_RUNS ?? 150);
const SEED = Number(process.env.KMCL_FUZZ_SEED ?? 20261202);
const F32_EPS = 2 ** -24;
const D = NUMERIC_DOMAIN;

/** Log-uniform in [lo, hi]. */
const logUniform = (lo: number, hi: number) => fc.double({ min: Math.log(lo), max: Math.log(hi), noNaN: true }).map((x) => Math.min(hi, Math.max(lo, Math.exp(x))));
/** 0, or ± a magnitude log-uniform in [1e-8, max]: spans the accepted range. */
const signedValue = (max: number) =>
  fc.tuple(fc.boolean(), logUniform(1e-8, max), fc.integer({ min: 0, max: 5 })).map(([neg, v, z]) => (z === 0 ? 0 : neg ? -v : v));

interface Case {
  problem: KmclProblem;
  options: KmclLossOptions;
}

function caseArb(region: { maxAbs: number; variance: readonly [number, number]; temperature: readonly [number, number] }): fc.Arbitrary<Case> {
  return fc
    .record({
      B: fc.integer({ min: 1, max: 12 }),
      K: fc.integer({ min: 1, max: 6 }),
      M: fc.integer({ min: 1, max: 8 }),
      anisotropic: fc.boolean(),
      perClassVariance: fc.boolean(),
      perDimVariance: fc.boolean(),
      options: fc.record({
        temperature: logUniform(...region.temperature),
        gammaNeg: fc.oneof(fc.constant(0), logUniform(D.minGammaNegDifferentiable, D.gamma[1])),
        gammaPos: fc.oneof(fc.constant(0), logUniform(1e-3, D.gamma[1])),
        clip: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 0.999, noNaN: true })),
        eps: logUniform(D.eps[0], 0.99),
        logEps: logUniform(...D.logEps),
        detachFocalWeight: fc.boolean(),
        distanceScale: logUniform(...D.distanceScale),
        stableReconstruction: fc.boolean(),
        weights: fc.record({ asl: logUniform(1e-6, D.weight[1]), reconstruction: logUniform(1e-6, D.weight[1]), contrastive: logUniform(1e-6, D.weight[1]) }),
      }),
    })
    .chain((s) => {
      const Dm = s.anisotropic ? s.M : 1;
      const Kv = s.perClassVariance ? s.K : 1;
      const Dv = s.perDimVariance ? Dm : 1;
      const arr = (n: number, v: fc.Arbitrary<number>) => fc.array(v, { minLength: n, maxLength: n }).map((a) => Float32Array.from(a));
      return fc.record({
        problem: fc.record({
          batch: fc.constant(s.B),
          classes: fc.constant(s.K),
          dim: fc.constant(s.M),
          muDim: fc.constant(Dm),
          varianceShape: fc.constant([Kv, Dv] as const),
          features: arr(s.B * s.M, signedValue(region.maxAbs)),
          logits: arr(s.B * s.K, signedValue(3e38)),
          labels: arr(s.B * s.K, fc.constantFrom(0, 1)),
          mu: arr(s.B * s.K * Dm, signedValue(region.maxAbs)),
          variance: arr(s.B * Kv * Dv, logUniform(...region.variance)),
        }),
        options: fc.constant(s.options as KmclLossOptions),
      });
    }) as fc.Arbitrary<Case>;
}

const to64 = (p: KmclProblem) => ({
  ...p,
  features: Float64Array.from(p.features),
  logits: Float64Array.from(p.logits),
  labels: Float64Array.from(p.labels),
  mu: Float64Array.from(p.mu),
  variance: Float64Array.from(p.variance),
});

/**
 * The size of the quantities float32 rounds before the loss takes differences of them: the
 * largest reconstruction exponent |E_ik| and the largest distance over the temperature. A float32
 * sum of M terms carries a relative error of about M·2⁻²⁴, so the terms can differ from float64 by
 * that much of these magnitudes however exactly the rest is computed.
 */
function conditioning(p: KmclProblem, o: KmclLossOptions): number {
  const { batch: B, classes: K, dim: M, muDim: Dm } = p;
  const [Kv, Dv] = p.varianceShape;
  const v = (i: number, k: number, m: number) => p.variance[(i * Kv + (Kv === 1 ? 0 : k)) * Dv + (Dv === 1 ? 0 : m)];
  const mu = (i: number, k: number, m: number) => p.mu[(i * K + k) * Dm + (Dm === 1 ? 0 : m)];
  let maxE = 0;
  let maxDist = 0;
  for (let i = 0; i < B; i++)
    for (let k = 0; k < K; k++) {
      let e = 0;
      for (let m = 0; m < M; m++) e += (p.features[i * M + m] - mu(i, k, m)) ** 2 / v(i, k, m);
      maxE = Math.max(maxE, e / 2);
      for (let l = 0; l < B; l++) {
        let d = 0;
        for (let m = 0; m < M; m++) {
          const a = v(i, k, m);
          const b = v(l, k, m);
          d += (mu(i, k, m) - mu(l, k, m)) ** 2 / (a + b) + Math.log1p((a - b) ** 2 / (4 * a * b));
        }
        maxDist = Math.max(maxDist, d * (o.distanceScale ?? 1));
      }
    }
  return maxE + maxDist / (o.temperature ?? 0.17);
}

function allFinite(r: { loss: number; asl: number; reconstruction: number; contrastive: number; gradients?: object }): string | undefined {
  for (const k of ['loss', 'asl', 'reconstruction', 'contrastive'] as const) if (!Number.isFinite(r[k])) return `${k} is ${r[k]}`;
  for (const [k, g] of Object.entries(r.gradients ?? {}) as [string, Float32Array | Float64Array][]) {
    const j = g.findIndex((x) => !Number.isFinite(x));
    if (j >= 0) return `gradients.${k}[${j}] is ${g[j]}`;
  }
  return undefined;
}

/**
 * The stated tolerance of each term against float64 (the same float32 inputs):
 * |t32 − t64| ≤ 1e-3·(1 + |t64|) + 8·M·2⁻²⁴·κ·w, κ from {@link conditioning}, w the term's weight.
 */
function checkAgainstFloat64({ problem, options }: Case): string | undefined {
  const r = kmclLossRaw(problem, { ...options, device: 'cpu' });
  const bad = allFinite(r);
  if (bad) return `float32: ${bad}`;
  const q = kmclLossRawFloat64(to64(problem), options);
  const kappa = conditioning(problem, options);
  const w = options.weights!;
  const weightOf = { asl: w.asl!, reconstruction: w.reconstruction!, contrastive: w.contrastive!, loss: w.asl! + w.reconstruction! + w.contrastive! };
  for (const k of ['asl', 'reconstruction', 'contrastive', 'loss'] as const) {
    // The parts are unweighted; the total carries the weights.
    const tol = 1e-3 * (1 + Math.abs(q[k])) + 8 * problem.dim * F32_EPS * kappa * (k === 'loss' ? weightOf.loss : 1);
    if (!(Math.abs(r[k] - q[k]) <= tol)) return `${k}: float32 ${r[k]} vs float64 ${q[k]} (tolerance ${tol.toExponential(2)}, κ ${kappa.toExponential(2)})`;
  }
  return undefined;
}

describe('numeric domain (property tests)', () => {
  it(`well-conditioned inputs: float32 is finite and within 1e-3·(1 + |float64|) of float64 (${RUNS} cases)`, () => {
    const arb = caseArb({ maxAbs: 100, variance: [1e-3, 1e3], temperature: [0.01, 10] });
    fc.assert(
      fc.property(arb, (c) => {
        const msg = checkAgainstFloat64(c);
        if (msg) throw new Error(msg);
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });

  it(`the whole accepted range: finite loss, parts and gradients, within the conditioning-scaled tolerance (${RUNS} cases)`, () => {
    const arb = caseArb({ maxAbs: D.maxAbsFeature, variance: D.variance, temperature: D.temperature });
    fc.assert(
      fc.property(arb, (c) => {
        const msg = checkAgainstFloat64(c);
        if (msg) throw new Error(msg);
      }),
      { numRuns: RUNS, seed: SEED + 1 },
    );
  });

  it(`values outside the domain are refused naming the argument (${RUNS} cases)`, () => {
    const arb = caseArb({ maxAbs: 10, variance: [0.1, 10], temperature: [0.05, 1] });
    const outOfDomain = fc.oneof(
      fc.record({ field: fc.constant('variance'), value: fc.oneof(logUniform(1e-45, 9e-7), logUniform(1.01e6, 3e38)) }),
      fc.record({ field: fc.constant('features'), value: logUniform(1.01e6, 3e38) }),
      fc.record({ field: fc.constant('mu'), value: logUniform(1.01e6, 3e38).map((x) => -x) }),
      fc.record({ field: fc.constant('temperature'), value: fc.oneof(logUniform(1e-300, 9.9e-5), logUniform(1.01e4, 1e300)) }),
      fc.record({ field: fc.constant('eps'), value: fc.oneof(logUniform(1e-300, 9.9e-31), logUniform(1, 1e300)) }),
      fc.record({ field: fc.constant('logEps'), value: fc.oneof(logUniform(1e-300, 9.9e-31), logUniform(1.01, 1e300)) }),
      fc.record({ field: fc.constant('distanceScale'), value: fc.oneof(logUniform(1e-300, 9.9e-7), logUniform(1.01e6, 1e300)) }),
      fc.record({ field: fc.constant('gammaNeg'), value: logUniform(100.1, 1e300) }),
      fc.record({ field: fc.constant('weights.contrastive'), value: logUniform(1.01e6, 1e300) }),
    );
    fc.assert(
      fc.property(arb, outOfDomain, fc.nat(), ({ problem, options }, bad, at) => {
        const p = { ...problem } as KmclProblem;
        let o: KmclLossOptions = { ...options };
        if (bad.field === 'variance' || bad.field === 'features' || bad.field === 'mu') {
          const a = Float32Array.from(p[bad.field]);
          a[at % a.length] = bad.value;
          p[bad.field] = a;
        } else if (bad.field === 'weights.contrastive') {
          o = { ...o, weights: { ...o.weights, contrastive: bad.value } };
        } else {
          o = { ...o, [bad.field]: bad.value };
        }
        const name = bad.field.startsWith('weights') || !['variance', 'features', 'mu'].includes(bad.field) ? `options.${bad.field}` : `problem.${bad.field}`;
        expect(() => kmclLossRaw(p, { ...o, device: 'cpu' })).toThrow(name);
      }),
      { numRuns: RUNS, seed: SEED + 2 },
    );
  });
});

describe('the cases of issue 9', () => {
  const tiny = (variance: number[]): KmclProblem => ({
    batch: 2,
    classes: 1,
    dim: 1,
    muDim: 1,
    varianceShape: [1, 1],
    features: Float32Array.from([0, 1]),
    logits: Float32Array.from([1, 1]),
    labels: Float32Array.from([1, 1]),
    mu: Float32Array.from([0.5, 0.5]),
    variance: Float32Array.from(variance),
  });
  it('subnormal variances are refused with the bound, not turned into NaN', () => {
    expect(() => kmclLossRaw(tiny([1e-40, 1e-40]))).toThrow(/problem\.variance must be in \[0\.000001, 1000000\].*element 0 is 9\.99994610111476e-41/);
    expect(() => kmclLossRaw(tiny([1, 1e-40]))).toThrow(/problem\.variance .*element 1/);
  });
  it('the variance bounds themselves give finite results equal to float64 within the tolerance', () => {
    for (const v of [[1e-6, 1e-6], [1e-6, 1e6], [1e6, 1e6]]) {
      const c = { problem: tiny(v), options: { weights: { asl: 1, reconstruction: 1, contrastive: 1 } } };
      expect(checkAgainstFloat64(c)).toBeUndefined();
    }
  });
  it('eps = 1e39 and other options beyond the domain are refused', () => {
    expect(() => kmclLossRaw(tiny([1, 1]), { eps: 1e39 })).toThrow(/options\.eps must be in \[1e-30, 1\)/);
    expect(() => kmclLossRaw(tiny([1, 1]), { gammaNeg: 0.1, detachFocalWeight: false })).toThrow(/options\.gammaNeg must be 0 or >= 0\.25/);
    expect(() => kmclLossRaw(tiny([1, 1]), { gammaNeg: 0.1 })).not.toThrow();
  });
  it('the core refuses out-of-domain options itself (the float64 path, past the TypeScript checks)', async () => {
    const { nativeAddon } = await import('../src/native.js');
    const p = to64(tiny([1, 1]));
    const opts = { temperature: 1e-5, gammaNeg: 4, gammaPos: 0, clip: 0.05, eps: 1e-7, logEps: 1e-7, detachFocalWeight: true, distanceScale: 1, stableReconstruction: true, weights: { asl: 1, reconstruction: 1, contrastive: 1 } };
    expect(() => nativeAddon().computeF64({ ...p, varianceShape: [1, 1] }, opts, false, 'cpu')).toThrow(/options\.temperature must be in \[0\.0001, 10000\]/);
    expect(() => nativeAddon().computeF64({ ...p, varianceShape: [1, 1] }, { ...opts, temperature: 0.17, eps: 1e39 }, false, 'cpu')).toThrow(/options\.eps/);
  });
});
