/**
 * The problem file format of the fixtures (test/fixtures/README.md): `shapes`, `options`,
 * `inputs` (flat row-major arrays); `expected` and `gradients` are answers, ignored here.
 */
import { describe, type KmclLossOptions } from './options.js';
import type { KmclProblem } from './raw.js';

export interface ProblemFile {
  name?: string;
  shapes: { B: number; K: number; M: number; mu: number[]; variance: number[]; [k: string]: unknown };
  options?: KmclLossOptions;
  inputs: Record<'features' | 'logits' | 'mu' | 'variance' | 'labels', number[]>;
  expected?: { loss: number; asl: number; reconstruction: number; contrastive: number };
  gradients?: Record<'features' | 'logits' | 'mu' | 'variance', number[]>;
}

/** Turns a parsed problem file into a {@link KmclProblem} and its options; throws naming the bad field. */
export function problemFromFile(
  file: unknown,
  where = 'input',
  ctor: typeof Float32Array | typeof Float64Array = Float32Array,
): { problem: KmclProblem; options: KmclLossOptions } {
  if (file === null || typeof file !== 'object') throw new TypeError(`${where} must be a JSON object, got ${describe(file)}`);
  const f = file as Partial<ProblemFile>;
  const s = f.shapes;
  if (!s || typeof s !== 'object') throw new TypeError(`${where}.shapes is missing`);
  for (const key of ['mu', 'variance'] as const) {
    if (!Array.isArray(s[key]) || s[key].length !== 3) throw new TypeError(`${where}.shapes.${key} must be a shape [B, K, D]`);
  }
  const inputs = f.inputs;
  if (!inputs || typeof inputs !== 'object') throw new TypeError(`${where}.inputs is missing`);
  const array = (name: keyof ProblemFile['inputs']) => {
    const v = inputs[name];
    if (!Array.isArray(v)) throw new TypeError(`${where}.inputs.${name} must be an array of numbers`);
    return ctor.from(v) as Float32Array;
  };
  const problem: KmclProblem = {
    batch: s.B as number,
    classes: s.K as number,
    dim: s.M as number,
    muDim: s.mu[2],
    varianceShape: [s.variance[1], s.variance[2]],
    features: array('features'),
    logits: array('logits'),
    labels: array('labels'),
    mu: array('mu'),
    variance: array('variance'),
  };
  return { problem, options: f.options ?? {} };
}
