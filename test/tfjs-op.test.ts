import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { kernelCounters, KMCL_LOSS, kmclLoss, kmclLossReference, registerKmclKernels, type KmclLossInputs } from '../src/tfjs/index.js';
import { GRADS, layouts, loadFixtures, randomProblem, relNorm, termClose, TERMS } from './helpers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

const fixtures = loadFixtures();

function tensorsOf(p: ReturnType<typeof randomProblem> | { batch: number; classes: number; dim: number; muDim: number; varianceShape: readonly [number, number]; features: Float32Array; logits: Float32Array; mu: Float32Array; variance: Float32Array; labels: Float32Array }): KmclLossInputs {
  return {
    features: tf.tensor2d(p.features, [p.batch, p.dim]),
    logits: tf.tensor2d(p.logits, [p.batch, p.classes]),
    mu: tf.tensor3d(p.mu, [p.batch, p.classes, p.muDim]),
    variance: tf.tensor3d(p.variance, [p.batch, p.varianceShape[0], p.varianceShape[1]]),
    labels: tf.tensor2d(p.labels, [p.batch, p.classes]),
  };
}

function fixtureInputs(fx: (typeof fixtures)[number]): KmclLossInputs {
  const s = fx.shapes;
  return {
    features: tf.tensor2d(fx.inputs.features, [s.B, s.M]),
    logits: tf.tensor2d(fx.inputs.logits, [s.B, s.K]),
    mu: tf.tensor3d(fx.inputs.mu, s.mu as [number, number, number]),
    variance: tf.tensor3d(fx.inputs.variance, s.variance as [number, number, number]),
    labels: tf.tensor2d(fx.inputs.labels, [s.B, s.K]),
  };
}

/** Terms and the gradients of `loss` w.r.t. the four differentiable inputs. */
function evaluate(fn: typeof kmclLoss, inputs: KmclLossInputs, options: object) {
  const terms = tf.tidy(() => {
    const r = fn(inputs, options);
    return Object.fromEntries(TERMS.map((t) => [t, r[t].dataSync()[0]]));
  });
  const grads = tf.tidy(() => {
    const g = tf.grads((f, l, m, v) => fn({ features: f, logits: l, mu: m, variance: v, labels: inputs.labels } as KmclLossInputs, options).loss);
    return g([inputs.features, inputs.logits, inputs.mu, inputs.variance]).map((t) => t.dataSync().slice());
  });
  return { terms: terms as Record<(typeof TERMS)[number], number>, grads: Object.fromEntries(GRADS.map((g, j) => [g, grads[j]])) as Record<(typeof GRADS)[number], Float32Array> };
}

describe('kmclLoss against the fixtures', () => {
  for (const fx of fixtures) {
    it(fx.name, () => {
      const inputs = fixtureInputs(fx);
      const { terms, grads } = evaluate(kmclLoss, inputs, fx.options ?? {});
      for (const t of TERMS) expect(termClose(terms[t], fx.expected[t]), `${t}: ${terms[t]} vs ${fx.expected[t]}`).toBe(true);
      for (const g of GRADS) expect(relNorm(grads[g], fx.gradients[g]), `d/d${g}`).toBeLessThan(1e-4);
      tf.dispose(Object.values(inputs));
    });
  }
});

describe('kmclLoss against the composite on random problems', () => {
  let seed = 300;
  for (const layout of layouts(5, 6)) {
    for (const options of [{}, { temperature: 0.3, clip: 0, gammaPos: 1, detachFocalWeight: false, distanceScale: 6, stableReconstruction: false }]) {
      const s = ++seed;
      it(`${layout.name} ${JSON.stringify(options)}`, () => {
        const inputs = tensorsOf(randomProblem({ seed: s, B: 10, K: 5, M: 6, D: layout.D, Kv: layout.Kv, Dv: layout.Dv, positives: 2 }));
        const fused = evaluate(kmclLoss, inputs, options);
        const composite = evaluate(kmclLossReference as typeof kmclLoss, inputs, options);
        for (const t of TERMS) expect(fused.terms[t]).toBeCloseTo(composite.terms[t], 3);
        for (const g of GRADS) expect(relNorm(fused.grads[g], composite.grads[g]), `d/d${g}`).toBeLessThan(1e-3);
        tf.dispose(Object.values(inputs));
      });
    }
  }
});

describe('the tape decides whether gradients are computed', () => {
  it('outside any gradient tape the kernel computes no gradients', () => {
    const inputs = tensorsOf(randomProblem({ seed: 1, B: 6, K: 4, M: 3, D: 3, Kv: 4, Dv: 3 }));
    const before = { ...kernelCounters };
    tf.tidy(() => kmclLoss(inputs).loss.dataSync());
    expect(kernelCounters.forward).toBe(before.forward + 1);
    expect(kernelCounters.withGradients).toBe(before.withGradients);
    tf.tidy(() => tf.grad((m: tf.Tensor) => kmclLoss({ ...inputs, mu: m as tf.Tensor3D }).loss)(inputs.mu).dataSync());
    expect(kernelCounters.forward).toBe(before.forward + 2);
    expect(kernelCounters.withGradients).toBe(before.withGradients + 1);
    tf.dispose(Object.values(inputs));
  });
  it('the parts are not differentiable: asking for their gradient is a clear error', () => {
    const inputs = tensorsOf(randomProblem({ seed: 2, B: 6, K: 4, M: 3, D: 3, Kv: 4, Dv: 3 }));
    expect(() => tf.grad((m: tf.Tensor) => kmclLoss({ ...inputs, mu: m as tf.Tensor3D }).contrastive)(inputs.mu)).toThrow(/only the `loss` output is differentiable/);
    tf.dispose(Object.values(inputs));
  });
  it('the upstream gradient scales the saved gradients', () => {
    const inputs = tensorsOf(randomProblem({ seed: 3, B: 6, K: 4, M: 3, D: 3, Kv: 4, Dv: 3 }));
    const g1 = tf.tidy(() => tf.grad((m: tf.Tensor) => kmclLoss({ ...inputs, mu: m as tf.Tensor3D }).loss)(inputs.mu).dataSync().slice());
    const g3 = tf.tidy(() => tf.grad((m: tf.Tensor) => tf.mul(kmclLoss({ ...inputs, mu: m as tf.Tensor3D }).loss, -3))(inputs.mu).dataSync().slice());
    expect(relNorm(g3, g1.map((v) => -3 * v))).toBeLessThan(1e-6);
    tf.dispose(Object.values(inputs));
  });
});

describe('registration', () => {
  it('is idempotent, also for a second copy of the module', async () => {
    expect(() => registerKmclKernels()).not.toThrow();
    vi.resetModules();
    const copy = await import('../src/tfjs/kernel.js');
    expect(() => copy.registerKmclKernels()).not.toThrow();
    expect(tf.getKernel(KMCL_LOSS, 'cpu')).toBeDefined();
    expect(tf.getKernel(KMCL_LOSS, 'tensorflow')).toBeDefined();
  });
});

describe('validation before any kernel runs', () => {
  const p = () => tensorsOf(randomProblem({ seed: 4, B: 4, K: 3, M: 2, D: 2, Kv: 3, Dv: 2 }));
  const cases: [string, (i: KmclLossInputs) => KmclLossInputs, object, RegExp][] = [
    ['mu of the wrong shape', (i) => ({ ...i, mu: tf.zeros([4, 3, 5]) as tf.Tensor3D }), {}, /kmclLoss: mu must have shape \[B, K, 1\] or \[B, K, M\]/],
    ['features of int32 dtype', (i) => ({ ...i, features: tf.zeros([4, 2], 'int32') as tf.Tensor2D }), {}, /kmclLoss: features must have dtype float32, got int32/],
    ['variance of the wrong rank', (i) => ({ ...i, variance: tf.ones([4, 3]) as unknown as tf.Tensor3D }), {}, /kmclLoss: variance must have shape \[B, Kv, Dv\]/],
    ['labels not a tensor', (i) => ({ ...i, labels: [[1]] as unknown as tf.Tensor2D }), {}, /kmclLoss: inputs\.labels must be a tf\.Tensor/],
    ['unknown option', (i) => i, { temprature: 1 }, /options\.temprature is not a kmcl option/],
    ['bad device', (i) => i, { device: 'gpu' }, /options\.device must be 'auto', 'cpu' or 'cuda'/],
    ['variance <= 0 (checked on the values, before the native call)', (i) => ({ ...i, variance: tf.zeros([4, 3, 2]) as tf.Tensor3D }), {}, /kmclLoss: variance must be > 0/],
    ['labels not 0/1', (i) => ({ ...i, labels: tf.fill([4, 3], 0.5) as tf.Tensor2D }), {}, /kmclLoss: labels must be exactly 0 or 1/],
  ];
  for (const [name, mutate, options, message] of cases) {
    it(name, () => {
      const inputs = mutate(p());
      const before = kernelCounters.forward;
      expect(() => kmclLoss(inputs, options)).toThrow(message);
      expect(kernelCounters.forward).toBe(before);
    });
  }
});

describe('int32 and bool labels', () => {
  it('are accepted and give the same loss as float labels', () => {
    const inputs = tensorsOf(randomProblem({ seed: 5, B: 6, K: 4, M: 3, D: 3, Kv: 4, Dv: 3 }));
    const a = tf.tidy(() => kmclLoss(inputs).loss.dataSync()[0]);
    const b = tf.tidy(() => kmclLoss({ ...inputs, labels: tf.cast(inputs.labels, 'int32') as tf.Tensor2D }).loss.dataSync()[0]);
    const c = tf.tidy(() => kmclLoss({ ...inputs, labels: tf.cast(inputs.labels, 'bool') as tf.Tensor2D }).loss.dataSync()[0]);
    expect(b).toBe(a);
    expect(c).toBe(a);
  });
});

describe('wasm backend', () => {
  it('the same kernel body gives the cpu backend numbers on wasm', async () => {
    await import('@tensorflow/tfjs-backend-wasm');
    const p = randomProblem({ seed: 40, B: 12, K: 5, M: 4, D: 4, Kv: 1, Dv: 4, positives: 2 });
    const run = () => {
      const inputs = tensorsOf(p);
      const r = evaluate(kmclLoss, inputs, {});
      tf.dispose(Object.values(inputs));
      return r;
    };
    const onCpu = run();
    await tf.setBackend('wasm');
    try {
      const before = kernelCounters.withGradients;
      const onWasm = run();
      expect(kernelCounters.withGradients).toBe(before + 1);
      for (const t of TERMS) expect(onWasm.terms[t]).toBe(onCpu.terms[t]);
      for (const g of GRADS) expect(relNorm(onWasm.grads[g], onCpu.grads[g])).toBeLessThan(1e-6);
    } finally {
      await tf.setBackend('cpu');
    }
  });
});

describe('the cpu backend data', () => {
  it('is read in place and never written', () => {
    const inputs = tensorsOf(randomProblem({ seed: 41, B: 7, K: 4, M: 3, D: 3, Kv: 4, Dv: 3 }));
    const before = Object.fromEntries(Object.entries(inputs).map(([k, t]) => [k, (t as tf.Tensor).dataSync().slice()]));
    tf.tidy(() => tf.grads((m: tf.Tensor, v: tf.Tensor) => kmclLoss({ ...inputs, mu: m as tf.Tensor3D, variance: v as tf.Tensor3D }).loss)([inputs.mu, inputs.variance]));
    for (const [k, t] of Object.entries(inputs)) expect((t as tf.Tensor).dataSync(), k).toEqual(before[k]);
    tf.dispose(Object.values(inputs));
  });
});
