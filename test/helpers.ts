/** Shared test helpers: fixtures, error measures and seeded random problems. */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ProblemFile } from '../src/fixture.js';
import type { KmclProblem } from '../src/raw.js';
import { mulberry32 } from '../dev/seeded-random.js';

export const FIXTURES_DIR = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');

export interface Fixture extends ProblemFile {
  file: string;
  name: string;
  expected: { loss: number; asl: number; reconstruction: number; contrastive: number };
  gradients: Record<'features' | 'logits' | 'mu' | 'variance', number[]>;
}

export function loadFixtures(): Fixture[] {
  return readdirSync(FIXTURES_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => ({ ...(JSON.parse(readFileSync(join(FIXTURES_DIR, f), 'utf8')) as Fixture), file: join(FIXTURES_DIR, f) }));
}

export const TERMS = ['loss', 'asl', 'reconstruction', 'contrastive'] as const;
export const GRADS = ['features', 'logits', 'mu', 'variance'] as const;

/** |a - b| / |b|, or the absolute error when |b| < floor (values near zero). */
export function relErr(a: number, b: number, floor = 0.1): number {
  return Math.abs(b) < floor ? Math.abs(a - b) : Math.abs(a - b) / Math.abs(b);
}

/** ‖g − ref‖ / ‖ref‖ (absolute ‖g‖ when ref is zero). */
export function relNorm(g: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (g.length !== ref.length) throw new Error(`length ${g.length} != ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let j = 0; j < ref.length; j++) {
    num += (g[j] - ref[j]) ** 2;
    den += ref[j] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Fixture tolerance: each term within 1e-5 relative, or 1e-6 absolute near zero. */
export function termClose(actual: number, expected: number): boolean {
  return Math.abs(actual - expected) <= Math.max(1e-5 * Math.abs(expected), 1e-6);
}

export { mulberry32 };

/**
 * Seeded multilabel data for the training tests: x uniform in [-1, 1), [n, F]; label k is 1 when a
 * fixed random projection of x (the same "world" for every split, from `worldSeed`), plus uniform
 * noise of width `noise` when given, exceeds `threshold`.
 */
export function projectionData(
  n: number,
  seed: number,
  o: { F: number; K: number; worldSeed: number; threshold: number; noise?: number },
): { x: Float32Array; y: Float32Array } {
  const { F, K } = o;
  const rnd = mulberry32(seed);
  const w = mulberry32(o.worldSeed);
  const proj = Array.from({ length: K * F }, () => w() * 2 - 1);
  const x = new Float32Array(n * F);
  const y = new Float32Array(n * K);
  for (let i = 0; i < n; i++) {
    for (let f = 0; f < F; f++) x[i * F + f] = rnd() * 2 - 1;
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let f = 0; f < F; f++) s += proj[k * F + f] * x[i * F + f];
      if (o.noise) s += o.noise * (rnd() - 0.5);
      y[i * K + k] = s > o.threshold ? 1 : 0;
    }
  }
  return { x, y };
}

export interface RandomProblemSpec {
  seed: number;
  B: number;
  K: number;
  M: number;
  /** 1 (isotropic) or M */
  D: number;
  Kv: number;
  Dv: number;
  /** average positive labels per sample (default 2) */
  positives?: number;
  logitRange?: number;
}

/** A random problem with values away from the spec's kinks (clip, eps). */
export function randomProblem<C extends typeof Float32Array | typeof Float64Array = typeof Float32Array>(
  s: RandomProblemSpec,
  ctor: C = Float32Array as C,
): KmclProblem & { features: InstanceType<C> } {
  const rnd = mulberry32(s.seed);
  const fill = (n: number, f: () => number) => {
    const a = new ctor(n);
    for (let j = 0; j < n; j++) a[j] = f();
    return a;
  };
  const rate = Math.min(1, (s.positives ?? 2) / s.K);
  const range = s.logitRange ?? 2.5;
  return {
    batch: s.B,
    classes: s.K,
    dim: s.M,
    muDim: s.D,
    varianceShape: [s.Kv, s.Dv],
    features: fill(s.B * s.M, () => rnd() * 2 - 1),
    logits: fill(s.B * s.K, () => (rnd() * 2 - 1) * range),
    labels: fill(s.B * s.K, () => (rnd() < rate ? 1 : 0)),
    mu: fill(s.B * s.K * s.D, () => rnd() * 2 - 1),
    variance: fill(s.B * s.Kv * s.Dv, () => 0.3 + 1.5 * rnd()),
  } as unknown as KmclProblem & { features: InstanceType<C> };
}

/** The four variance layouts of the spec for a given mu layout. */
export function layouts(K: number, M: number): { name: string; D: number; Kv: number; Dv: number }[] {
  return [
    { name: 'isotropic [B,K,1]', D: 1, Kv: K, Dv: 1 },
    { name: 'isotropic [B,1,1]', D: 1, Kv: 1, Dv: 1 },
    { name: 'anisotropic [B,K,M]', D: M, Kv: K, Dv: M },
    { name: 'anisotropic [B,1,M]', D: M, Kv: 1, Dv: M },
    { name: 'anisotropic [B,K,1]', D: M, Kv: K, Dv: 1 },
    { name: 'anisotropic [B,1,1]', D: M, Kv: 1, Dv: 1 },
  ];
}
