// Comparing results and making out arrays, for the tests of `options.out` and the async buffer
// pool. Kept apart from helpers.ts, which worker threads, child processes and benchmarks import
// outside vitest.
import { expect } from 'vitest';
import { GRADIENT_NAMES, type GradientName, type KmclOut } from '../src/raw.js';

type F = Float32Array | Float64Array;

/** Bitwise equality of two float arrays (NaN payloads and -0 included). */
export function sameBits(a: F, b: F): boolean {
  return a.constructor === b.constructor && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** The same loss terms (Object.is) and, where there are gradients, bitwise the same gradients. */
export function expectSameResult(
  got: { loss: number; asl: number; reconstruction: number; contrastive: number; gradients?: Record<GradientName, F> },
  want: typeof got,
  what = '',
): void {
  const at = (s: string) => (what ? `${what}: ${s}` : s);
  for (const t of ['loss', 'asl', 'reconstruction', 'contrastive'] as const) expect(Object.is(got[t], want[t]), at(t)).toBe(true);
  expect(got.gradients === undefined, at('gradients present')).toBe(want.gradients === undefined);
  if (want.gradients) for (const g of GRADIENT_NAMES) expect(sameBits(got.gradients![g], want.gradients[g]), at(g)).toBe(true);
}

/** Out arrays of the problem's sizes, filled with a sentinel (NaN by default). */
export function outsFor<C extends typeof Float32Array | typeof Float64Array>(
  p: { features: F; logits: F; mu: F; variance: F },
  ctor: C,
  fill = NaN,
  names: readonly (typeof GRADIENT_NAMES)[number][] = GRADIENT_NAMES,
): Required<KmclOut<InstanceType<C>>> {
  const out: Record<string, F> = {};
  for (const g of names) out[g] = new ctor(p[g].length).fill(fill);
  return out as Required<KmclOut<InstanceType<C>>>;
}
