/**
 * The loss options of spec/kmcl-loss.md ("Options and defaults"), their defaults and their
 * validation. Every path (native CPU, CUDA, the tfjs composite) resolves options here.
 */

export interface KmclWeights {
  /** Weight of the asymmetric classification loss (spec section 1). Default 1. */
  asl?: number;
  /** Weight of the kernel reconstruction loss (spec section 2). Default 1. */
  reconstruction?: number;
  /** Weight of the contrastive loss (spec section 3). Default 1. */
  contrastive?: number;
}

export interface KmclLossOptions {
  /** Contrastive temperature τ, > 0. Default 0.17. */
  temperature?: number;
  /** ASL focusing exponent for negatives, ≥ 0. Default 4. */
  gammaNeg?: number;
  /** ASL focusing exponent for positives, ≥ 0. Default 0. */
  gammaPos?: number;
  /** ASL probability margin for negatives, in [0, 1). Default 0.05 (0 turns it off). */
  clip?: number;
  /** Floor inside the ASL and reconstruction logarithms, > 0. Default 1e-7. */
  eps?: number;
  /** Added inside the contrastive logarithm, > 0. Default 1e-7. */
  logEps?: number;
  /** The ASL focal weight is a constant for the gradient. Default true. */
  detachFocalWeight?: boolean;
  /** Multiplies the Bhattacharyya distance, > 0. Default 1 (the reference code's anisotropic branch is M). */
  distanceScale?: number;
  /** Log-space reconstruction (default true); false reproduces the reference's FLT_MIN clamp. */
  stableReconstruction?: boolean;
  /** Term weights, ≥ 0; total = Σ weight · term. */
  weights?: KmclWeights;
}

export interface ResolvedOptions {
  temperature: number;
  gammaNeg: number;
  gammaPos: number;
  clip: number;
  eps: number;
  logEps: number;
  detachFocalWeight: boolean;
  distanceScale: number;
  stableReconstruction: boolean;
  weights: Required<KmclWeights>;
}

export const DEFAULT_OPTIONS: Readonly<ResolvedOptions> = Object.freeze({
  temperature: 0.17,
  gammaNeg: 4,
  gammaPos: 0,
  clip: 0.05,
  eps: 1e-7,
  logEps: 1e-7,
  detachFocalWeight: true,
  distanceScale: 1,
  stableReconstruction: true,
  weights: Object.freeze({ asl: 1, reconstruction: 1, contrastive: 1 }),
});

/**
 * The numeric domain (docs/kmcl-loss.md, "Numeric domain"): every option and input inside these
 * bounds gives a finite loss, finite parts and finite gradients on every path (float32 CPU, CUDA,
 * the tfjs composite); values outside are refused with an error naming the argument. The bounds
 * leave a margin of at least 1e6 below float32 overflow for the worst case of each term.
 */
export const NUMERIC_DOMAIN = Object.freeze({
  temperature: [1e-4, 1e4],
  gamma: [0, 100],
  /** With `detachFocalWeight: false`, gammaNeg is 0 or at least this (the focal weight's derivative is unbounded near 0 for gamma < 1). */
  minGammaNegDifferentiable: 0.25,
  eps: [1e-30, 1],
  logEps: [1e-30, 1],
  distanceScale: [1e-6, 1e6],
  weight: [0, 1e6],
  /** |features|, |mu| at most this. */
  maxAbsFeature: 1e6,
  variance: [1e-6, 1e6],
} as const);

const LOSS_OPTION_NAMES = new Set([
  'temperature',
  'gammaNeg',
  'gammaPos',
  'clip',
  'eps',
  'logEps',
  'detachFocalWeight',
  'distanceScale',
  'stableReconstruction',
  'weights',
]);
const WEIGHT_NAMES = new Set(['asl', 'reconstruction', 'contrastive']);

function finiteNumber(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new TypeError(`options.${name} must be a finite number, got ${describe(value)}`);
  }
  return value;
}

function boolean(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') {
    throw new TypeError(`options.${name} must be a boolean, got ${describe(value)}`);
  }
  return value;
}

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `the BigInt ${value}n`;
  if (typeof value === 'object') return 'an object';
  return String(value);
}

function suggest(name: string, known: Iterable<string>): string {
  const lower = name.toLowerCase();
  for (const k of known) if (k.toLowerCase() === lower) return ` (did you mean "${k}"?)`;
  return '';
}

/**
 * Resolve loss options against the defaults. `extraNames` are option names that the caller
 * handles itself (e.g. `gradients`, `device`) and that are therefore not unknown.
 * Throws a TypeError/RangeError naming the option for anything outside the spec.
 */
export function resolveOptions(options: unknown = {}, extraNames: readonly string[] = []): ResolvedOptions {
  if (options === undefined || options === null) options = {};
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`options must be an object, got ${describe(options)}`);
  }
  const o = options as Record<string, unknown>;
  const allowed = new Set([...LOSS_OPTION_NAMES, ...extraNames]);
  for (const key of Object.keys(o)) {
    if (!allowed.has(key)) {
      throw new TypeError(`options.${key} is not a kmcl option${suggest(key, allowed)}; known options: ${[...allowed].join(', ')}`);
    }
  }
  const r: ResolvedOptions = { ...DEFAULT_OPTIONS, weights: { ...DEFAULT_OPTIONS.weights } };
  const D = NUMERIC_DOMAIN;
  const within = (name: string, v: number, [lo, hi]: readonly [number, number], hiOpen = false) => {
    if (!(v >= lo && (hiOpen ? v < hi : v <= hi))) {
      throw new RangeError(`options.${name} must be in [${lo}, ${hi}${hiOpen ? ')' : ']'} (docs/kmcl-loss.md, "Numeric domain"), got ${v}`);
    }
  };
  if (o.temperature !== undefined) {
    r.temperature = finiteNumber('temperature', o.temperature);
    if (!(r.temperature > 0)) throw new RangeError(`options.temperature must be > 0, got ${r.temperature}`);
    within('temperature', r.temperature, D.temperature);
  }
  for (const g of ['gammaNeg', 'gammaPos'] as const) {
    if (o[g] !== undefined) {
      r[g] = finiteNumber(g, o[g]);
      if (!(r[g] >= 0)) throw new RangeError(`options.${g} must be >= 0, got ${r[g]}`);
      within(g, r[g], D.gamma);
    }
  }
  if (o.clip !== undefined) {
    r.clip = finiteNumber('clip', o.clip);
    if (!(r.clip >= 0 && r.clip < 1)) throw new RangeError(`options.clip must be in [0, 1), got ${r.clip}`);
  }
  for (const e of ['eps', 'logEps'] as const) {
    if (o[e] !== undefined) {
      r[e] = finiteNumber(e, o[e]);
      if (!(r[e] > 0)) throw new RangeError(`options.${e} must be > 0, got ${r[e]}`);
      within(e, r[e], D[e], e === 'eps');
    }
  }
  if (o.distanceScale !== undefined) {
    r.distanceScale = finiteNumber('distanceScale', o.distanceScale);
    if (!(r.distanceScale > 0)) throw new RangeError(`options.distanceScale must be > 0, got ${r.distanceScale}`);
    within('distanceScale', r.distanceScale, D.distanceScale);
  }
  if (o.detachFocalWeight !== undefined) r.detachFocalWeight = boolean('detachFocalWeight', o.detachFocalWeight);
  if (!r.detachFocalWeight && r.gammaNeg > 0 && r.gammaNeg < D.minGammaNegDifferentiable) {
    throw new RangeError(
      `options.gammaNeg must be 0 or >= ${D.minGammaNegDifferentiable} when options.detachFocalWeight is false ` +
        `(the derivative of the focal weight (p - clip)^gammaNeg is unbounded near 0 for gammaNeg < 1 and overflows float32 below ${D.minGammaNegDifferentiable}), got ${r.gammaNeg}`,
    );
  }
  if (o.stableReconstruction !== undefined) r.stableReconstruction = boolean('stableReconstruction', o.stableReconstruction);
  if (o.weights !== undefined) {
    const w = o.weights;
    if (w === null || typeof w !== 'object' || Array.isArray(w)) {
      throw new TypeError(`options.weights must be an object like { asl, reconstruction, contrastive }, got ${describe(w)}`);
    }
    for (const key of Object.keys(w)) {
      if (!WEIGHT_NAMES.has(key)) {
        throw new TypeError(`options.weights.${key} is not a loss term${suggest(key, WEIGHT_NAMES)}; terms: asl, reconstruction, contrastive`);
      }
      const value = finiteNumber(`weights.${key}`, (w as Record<string, unknown>)[key]);
      if (!(value >= 0)) throw new RangeError(`options.weights.${key} must be >= 0, got ${value}`);
      within(`weights.${key}`, value, D.weight);
      r.weights[key as keyof KmclWeights] = value;
    }
  }
  return r;
}
