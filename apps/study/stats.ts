/**
 * Statistics of the study: paired differences and their 95 % confidence interval from
 * Student's t distribution (two-sided, n − 1 degrees of freedom).
 */

/** t_{0.975, df} for df = 1 … 30 (two-sided 95 %). */
const T975: readonly number[] = [
  12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
  2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
  2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
];

/**
 * The 0.975 quantile of Student's t with `df` degrees of freedom: tabulated for df ≤ 30, a
 * Cornish–Fisher expansion around the normal quantile above (error < 1e-4 there).
 *
 * @throws RangeError when df is not an integer ≥ 1.
 */
export function tQuantile975(df: number): number {
  if (!Number.isInteger(df) || df < 1) throw new RangeError(`tQuantile975: df must be an integer ≥ 1 (got ${String(df)}).`);
  if (df <= T975.length) return T975[df - 1];
  const z = 1.959963985;
  const z3 = z ** 3;
  const z5 = z ** 5;
  const z7 = z ** 7;
  return z + (z3 + z) / (4 * df) + (5 * z5 + 16 * z3 + 3 * z) / (96 * df ** 2) + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * df ** 3);
}

/** Mean, standard deviation and 95 % t interval of a sample. */
export interface PairedSummary {
  n: number;
  mean: number;
  /** Sample standard deviation (n − 1); NaN for n < 2. */
  sd: number;
  /** Standard error of the mean; NaN for n < 2. */
  se: number;
  /** [lo, hi] of the 95 % t interval of the mean; [NaN, NaN] for n < 2. */
  ci95: [number, number];
}

/**
 * Summary of paired differences d_i = a_i − b_i (here KMCL − ASL-only per seed): mean and the
 * 95 % confidence interval mean ± t_{0.975, n−1} · sd / √n. Sums in double precision, two-pass.
 *
 * @throws RangeError when the sample is empty or holds a non-finite value.
 */
export function pairedInterval(differences: readonly number[]): PairedSummary {
  const n = differences.length;
  if (n === 0) throw new RangeError('pairedInterval: needs at least one difference.');
  differences.forEach((d, i) => {
    if (!Number.isFinite(d)) throw new RangeError(`pairedInterval: difference ${i} is ${String(d)}; all must be finite.`);
  });
  const mean = differences.reduce((a, b) => a + b, 0) / n;
  if (n < 2) return { n, mean, sd: Number.NaN, se: Number.NaN, ci95: [Number.NaN, Number.NaN] };
  const ss = differences.reduce((a, d) => a + (d - mean) ** 2, 0);
  const sd = Math.sqrt(ss / (n - 1));
  const se = sd / Math.sqrt(n);
  const h = tQuantile975(n - 1) * se;
  return { n, mean, sd, se, ci95: [mean - h, mean + h] };
}

/** 'above' when the interval lies above 0, 'below' when below, 'includes' when 0 is inside. */
export function verdict(ci95: readonly [number, number]): 'above' | 'below' | 'includes' | 'undetermined' {
  const [lo, hi] = ci95;
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return 'undetermined';
  if (lo > 0) return 'above';
  if (hi < 0) return 'below';
  return 'includes';
}
