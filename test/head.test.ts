import '@tensorflow/tfjs';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { KmmHead, kmmHead, type KmmCovariance, type KmmMode } from '../src/tfjs/head.js';
import { kmclLossReference } from '../src/tfjs/reference.js';

const B = 5;
const F = 12;
const K = 4;
const P = 6; // projectionDim

const MODES: KmmMode[] = ['isotropic', 'anisotropic'];
const COVARIANCES: KmmCovariance[] = ['perClass', 'perDim', 'shared'];

function expectedShapes(mode: KmmMode, covariance: KmmCovariance): number[][] {
  const M = mode === 'anisotropic' ? P : F;
  const D = mode === 'anisotropic' ? M : 1;
  const Kv = covariance === 'perClass' ? K : 1;
  const Dv = covariance === 'shared' ? 1 : D;
  const shapes = [
    [B, K],
    [B, K, D],
    [B, Kv, Dv],
  ];
  if (mode === 'anisotropic') shapes.push([B, M]);
  return shapes;
}

function randomFeatures(seed: number): tf.Tensor2D {
  return tf.randomNormal([B, F], 0, 1, 'float32', seed) as tf.Tensor2D;
}

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

describe('KmmHead', () => {
  for (const mode of MODES) {
    for (const covariance of COVARIANCES) {
      const config = { numClasses: K, mode, covariance, ...(mode === 'anisotropic' ? { projectionDim: P } : {}) };

      it(`${mode} / ${covariance}: shapes, variance > 1, feeds the loss`, () => {
        const head = kmmHead(config);
        const f = randomFeatures(1);
        const outputs = head.apply(f) as tf.Tensor[];
        const want = expectedShapes(mode, covariance);
        expect(outputs.map((t) => t.shape)).toEqual(want);
        expect(head.computeOutputShape([null, F])).toEqual(want.map(([, ...rest]) => [null, ...rest]));
        const [logits, mu, variance] = outputs;
        expect(variance.min().dataSync()[0]).toBeGreaterThan(1);
        const features = mode === 'anisotropic' ? outputs[3] : f;
        const labels = tf.tensor2d([1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1], [B, K]);
        const loss = kmclLossReference({
          features: features as tf.Tensor2D,
          logits: logits as tf.Tensor2D,
          mu: mu as tf.Tensor3D,
          variance: variance as tf.Tensor3D,
          labels,
        });
        expect(Number.isFinite(loss.loss.dataSync()[0])).toBe(true);
        tf.dispose([outputs, f, labels, loss]);
        head.dispose();
      });

      it(`${mode} / ${covariance}: symbolic outputs in tf.model`, () => {
        const input = tf.input({ shape: [F] });
        const out = kmmHead(config).apply(input) as tf.SymbolicTensor[];
        expect(out.map((s) => s.shape)).toEqual(expectedShapes(mode, covariance).map(([, ...rest]) => [null, ...rest]));
        const model = tf.model({ inputs: input, outputs: out });
        const f = randomFeatures(2);
        const y = model.predict(f) as tf.Tensor[];
        expect(y.map((t) => t.shape)).toEqual(expectedShapes(mode, covariance));
        tf.dispose([y, f]);
        model.dispose();
      });
    }
  }

  it('initialises mu in U(0, 0.1) with bias 0, variance weights 1 with bias 0', () => {
    const head = new KmmHead({ numClasses: 20, mode: 'anisotropic', projectionDim: 64 });
    const f = tf.ones([2, 32]);
    tf.dispose(head.apply(f) as tf.Tensor[]);
    const byName = new Map(head.weights.map((w) => [w.originalName.split('/').pop() ?? '', w.read()]));
    expect([...byName.keys()].sort()).toEqual(
      ['logits_bias', 'logits_kernel', 'mu_bias', 'mu_kernel', 'projection_bias', 'projection_kernel', 'variance_bias', 'variance_kernel'],
    );
    const muKernel = byName.get('mu_kernel')!;
    expect(muKernel.shape).toEqual([64, 20 * 64]);
    const values = muKernel.dataSync();
    let lo = Infinity;
    let hi = -Infinity;
    let sum = 0;
    for (const v of values) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
      sum += v;
    }
    expect(lo).toBeGreaterThanOrEqual(0);
    expect(hi).toBeLessThanOrEqual(0.1);
    expect(sum / values.length).toBeCloseTo(0.05, 2); // 81920 draws: really uniform, not constant
    expect(hi - lo).toBeGreaterThan(0.099);
    expect(Array.from(byName.get('mu_bias')!.dataSync()).every((v) => v === 0)).toBe(true);
    expect(Array.from(byName.get('variance_kernel')!.dataSync()).every((v) => v === 1)).toBe(true);
    expect(Array.from(byName.get('variance_bias')!.dataSync()).every((v) => v === 0)).toBe(true);
    tf.dispose(f);
    head.dispose();
  });

  it('variance is > 1 even where ELU saturates at −1', () => {
    const head = new KmmHead({ numClasses: 3, mode: 'isotropic', covariance: 'perClass' });
    const f = tf.fill([2, 4], -1e3); // variance kernel of ones: Dense(f) = −4000 → ELU = −1
    const [, , variance] = head.apply(f) as tf.Tensor[];
    const v = variance.dataSync();
    for (const x of v) expect(x).toBeGreaterThan(1);
    tf.dispose([f, variance]);
    head.dispose();
  });

  for (const mode of MODES) {
    it(`${mode}: model.toJSON + weights round trip gives identical outputs`, async () => {
      const input = tf.input({ shape: [F] });
      const head = kmmHead({ numClasses: K, mode, covariance: mode === 'anisotropic' ? 'perDim' : 'perClass', projectionDim: mode === 'anisotropic' ? P : undefined });
      const dense = tf.layers.dense({ units: F, activation: 'relu' });
      const model = tf.model({ inputs: input, outputs: head.apply(dense.apply(input)) as tf.SymbolicTensor[] });

      let saved: tf.io.ModelArtifacts | undefined;
      await model.save(tf.io.withSaveHandler(async (artifacts) => {
        saved = artifacts;
        return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
      }));
      expect(saved).toBeDefined();
      const topology = JSON.stringify(saved!.modelTopology);
      expect(topology).toContain('KmmHead');
      const loaded = await tf.loadLayersModel(tf.io.fromMemory(saved!));
      const restored = loaded.layers.find((l) => l instanceof KmmHead) as KmmHead;
      expect(restored.getConfig()).toMatchObject(head.getConfig());

      const f = randomFeatures(3);
      const a = model.predict(f) as tf.Tensor[];
      const b = loaded.predict(f) as tf.Tensor[];
      expect(b.length).toBe(a.length);
      a.forEach((t, i) => expect(Array.from(b[i].dataSync())).toEqual(Array.from(t.dataSync())));

      // model.toJSON() alone rebuilds the architecture; setWeights then gives the same function.
      const json = JSON.parse(JSON.stringify(model.toJSON(null, false))) as tf.io.ModelJSON['modelTopology'];
      const fromJson = await tf.models.modelFromJSON({ modelTopology: json });
      fromJson.setWeights(model.getWeights());
      const c = fromJson.predict(f) as tf.Tensor[];
      a.forEach((t, i) => expect(Array.from(c[i].dataSync())).toEqual(Array.from(t.dataSync())));

      tf.dispose([f, a, b, c]);
      model.dispose();
      loaded.dispose();
      fromJson.dispose();
    });
  }

  it('the loss differentiates through every head weight', () => {
    const head = kmmHead({ numClasses: K, projectionDim: P, covariance: 'perClass' });
    const f = randomFeatures(5);
    const labels = tf.tensor2d([1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1], [B, K]);
    tf.dispose(head.apply(f) as tf.Tensor[]);
    const { value, grads } = tf.variableGrads(() => {
      const [logits, mu, variance, features] = head.apply(f) as tf.Tensor[];
      return kmclLossReference({
        features: features as tf.Tensor2D,
        logits: logits as tf.Tensor2D,
        mu: mu as tf.Tensor3D,
        variance: variance as tf.Tensor3D,
        labels,
      }).loss;
    }, head.trainableWeights.map((w) => w.read() as tf.Variable)); // read() is the tf.Variable itself
    expect(Object.keys(grads).length).toBe(8);
    for (const g of Object.values(grads)) {
      const n = tf.norm(g).dataSync()[0];
      expect(Number.isFinite(n)).toBe(true);
    }
    tf.dispose([value, Object.values(grads), f, labels]);
    head.dispose();
  });

  it('apply leaks nothing but its outputs', () => {
    const head = kmmHead({ numClasses: K, projectionDim: P });
    const f = randomFeatures(4);
    tf.dispose(head.apply(f) as tf.Tensor[]); // builds the weights
    const before = tf.memory().numTensors;
    const out = head.apply(f) as tf.Tensor[];
    expect(tf.memory().numTensors).toBe(before + 4);
    tf.dispose(out);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(f);
    head.dispose();
  });

  it('rejects bad configs and inputs, naming the field', () => {
    expect(() => kmmHead({} as never)).toThrow(/numClasses must be a positive integer/);
    expect(() => kmmHead({ numClasses: 2.5 })).toThrow(/numClasses/);
    expect(() => kmmHead({ numClasses: 3, mode: 'diagonal' as KmmMode })).toThrow(/config\.mode/);
    expect(() => kmmHead({ numClasses: 3, covariance: 'full' as KmmCovariance })).toThrow(/config\.covariance/);
    expect(() => kmmHead({ numClasses: 3, projectionDim: 0 })).toThrow(/projectionDim/);
    expect(() => kmmHead({ numClasses: 3, mode: 'isotropic', projectionDim: 8 })).toThrow(/projectionDim/);
    const x = tf.zeros([2, 3, 4]);
    expect(() => kmmHead({ numClasses: 3 }).apply(x)).toThrow();
    tf.dispose(x);
  });
});
