/**
 * Benchmark problems: the grid of issue 5 and a seeded generator of KMCL problems.
 *
 * A grid point is (B, K, M): B samples, K classes, feature dimension M with kernel means of the
 * same dimension D = M (M = 1 is the isotropic case, one scalar mean and variance per class) and
 * per-class variance `[B, K, D]` (the BC setting of the spec, the layout with the most variance
 * parameters). Labels are independent Bernoulli draws with rate positives / K, so each sample has
 * `positives` positive labels on average (3 in every benchmark here).
 */
import { mulberry32 } from '../dev/seeded-random.js';
import type { KmclProblem } from '../src/raw.js';

/** Batch sizes of the suites (issue 5). */
export const GRID_BATCHES = [32, 64, 128, 256, 512] as const;
/** Class counts of the suites. */
export const GRID_CLASSES = [20, 80] as const;
/** Feature dimensions M of the suites: 1 (isotropic) and 64 (anisotropic); D = M. */
export const GRID_DIMS = [1, 64] as const;
/** Average positive labels per sample. */
export const GRID_POSITIVES = 3;

/** The sizes of one benchmark problem. */
export interface ProblemSize {
  /** Batch size. */
  B: number;
  /** Classes. */
  K: number;
  /** Feature dimension. */
  M: number;
  /** Kernel-mean dimension: 1 (isotropic) or M (anisotropic). */
  D: number;
  /** Variance shape [Kv, Dv] per sample. */
  Kv: number;
  Dv: number;
  /** Average positive labels per sample. */
  positives: number;
}

/** The problem size of a grid point: mu `[B, K, D]`, per-class variance `[B, K, D]`, D = M by default. */
export function gridSize(B: number, K: number, M: number, positives = GRID_POSITIVES, D = M): ProblemSize {
  return { B, K, M, D, Kv: K, Dv: D, positives };
}

/** mulberry32: a small seeded generator, so every run benchmarks the same numbers. */
export { mulberry32 };

/**
 * A seeded random problem of the given size. Values are in the ranges a KMM head produces
 * (spec "The KMM head"): logits in (−3, 3), means in (−1, 1), variances in (1, 3).
 */
export function makeProblem(size: ProblemSize, seed = 1): KmclProblem {
  const { B, K, M, D, Kv, Dv, positives } = size;
  const rnd = mulberry32(seed);
  const fill = (n: number, f: () => number): Float32Array => {
    const a = new Float32Array(n);
    for (let j = 0; j < n; j++) a[j] = f();
    return a;
  };
  const rate = Math.min(1, positives / K);
  return {
    batch: B,
    classes: K,
    dim: M,
    muDim: D,
    varianceShape: [Kv, Dv],
    features: fill(B * M, () => rnd() * 2 - 1),
    logits: fill(B * K, () => (rnd() * 2 - 1) * 3),
    labels: fill(B * K, () => (rnd() < rate ? 1 : 0)),
    mu: fill(B * K * D, () => rnd() * 2 - 1),
    variance: fill(B * Kv * Dv, () => 1 + 2 * rnd()),
  };
}

/** The number of positive labels of a problem (Σ y). */
export function countPositives(problem: KmclProblem): number {
  let n = 0;
  for (let j = 0; j < problem.labels.length; j++) n += problem.labels[j];
  return n;
}

/**
 * Bytes of the inputs and gradients of one call of the fused path: the O(B·K·M) part of its
 * memory (the native path adds O(B·K·D) double accumulators and O(B·K) statistics, no B×B×K×D).
 */
export function ioBytes(size: ProblemSize): number {
  const { B, K, M, D, Kv, Dv } = size;
  const inputs = B * M + 2 * B * K + B * K * D + B * Kv * Dv; // features, logits + labels, mu, variance
  const gradients = B * M + B * K + B * K * D + B * Kv * Dv;
  return 4 * (inputs + gradients);
}

/**
 * Calibrated peak tensor memory of one composite fwd+bwd (tf.profile peakBytes on the cpu
 * backend): about 4·B²·K·(31·D + 63) bytes: some 31 live [B, B, K, D] float32 tensors (forward
 * intermediates kept by the tape and their gradients) plus [B, B, K] ones.
 */
export function compositeBytesEstimate(size: Pick<ProblemSize, 'B' | 'K' | 'D'>): number {
  return 4 * size.B * size.B * size.K * (31 * size.D + 63);
}
