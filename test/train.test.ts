import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildKmclModel, decays, kmclLoss, kmclLossReference, meanAveragePrecision, oneCycleLr, trainKmcl, type KmclLossInputs } from '../src/tfjs/index.js';
import { projectionData, relNorm } from './helpers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

/** A seeded synthetic multilabel problem: labels are noisy linear functions of the inputs. */
function synthetic(n: number, seed: number, F = 16, K = 5) {
  const { x, y } = projectionData(n, seed, { F, K, worldSeed: 7, threshold: 0.8, noise: 0.5 });
  return { x: tf.tensor2d(x, [n, F]), y: tf.tensor2d(y, [n, K]), F, K };
}

function backbone(F: number, seed: number): tf.LayersModel {
  const input = tf.input({ shape: [F] });
  const h = tf.layers.dense({ units: 24, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed }) }).apply(input) as tf.SymbolicTensor;
  return tf.model({ inputs: input, outputs: h });
}

describe('gradients reach the model', () => {
  for (const head of [
    { numClasses: 5, mode: 'isotropic' as const, covariance: 'perClass' as const },
    { numClasses: 5, mode: 'anisotropic' as const, covariance: 'perDim' as const, projectionDim: 8 },
    { numClasses: 5, mode: 'anisotropic' as const, covariance: 'shared' as const, projectionDim: 8 },
  ]) {
    it(`tf.variableGrads through the fused op equals the composite (${head.mode}, ${head.covariance})`, () => {
      const data = synthetic(24, 1);
      const model = buildKmclModel(backbone(data.F, 3), head);
      const gradsOf = (fn: typeof kmclLoss) =>
        tf.tidy(() => {
          const { grads } = tf.variableGrads(() => {
            const [logits, mu, variance, features] = model.apply(data.x) as tf.Tensor[];
            return fn({ features, logits, mu, variance, labels: data.y } as KmclLossInputs).loss;
          });
          return Object.fromEntries(Object.entries(grads).map(([k, g]) => [k, g.dataSync().slice()]));
        });
      const fused = gradsOf(kmclLoss);
      const composite = gradsOf(kmclLossReference as typeof kmclLoss);
      expect(Object.keys(fused).sort()).toEqual(Object.keys(composite).sort());
      expect(Object.keys(fused).some((k) => /variance_kernel/.test(k))).toBe(true);
      for (const k of Object.keys(fused)) expect(relNorm(fused[k], composite[k]), k).toBeLessThan(1e-3);
      model.dispose();
      tf.dispose([data.x, data.y]);
    });
  }

  it('optimizer.minimize with the op decreases the loss', () => {
    const data = synthetic(64, 2);
    const model = buildKmclModel(backbone(data.F, 4), { numClasses: 5, mode: 'anisotropic', projectionDim: 8 });
    const optimizer = tf.train.adam(3e-3);
    const lossNow = () =>
      tf.tidy(() => {
        const [logits, mu, variance, features] = model.apply(data.x) as tf.Tensor[];
        return kmclLoss({ features, logits, mu, variance, labels: data.y } as KmclLossInputs).loss.dataSync()[0];
      });
    const first = lossNow();
    for (let i = 0; i < 60; i++) {
      optimizer.minimize(() => {
        const [logits, mu, variance, features] = model.apply(data.x, { training: true }) as tf.Tensor[];
        return kmclLoss({ features, logits, mu, variance, labels: data.y } as KmclLossInputs).loss;
      });
    }
    const last = lossNow();
    expect(last).toBeLessThan(first * 0.8);
    optimizer.dispose();
    model.dispose();
    tf.dispose([data.x, data.y]);
  });
});

describe('trainKmcl', () => {
  it('1,000 training steps leave tf.memory().numTensors unchanged', async () => {
    const data = synthetic(40, 3, 8, 4);
    const model = buildKmclModel(backbone(data.F, 5), { numClasses: 4, mode: 'isotropic' });
    // One short warm-up run first: layers and the head create a few constants once, on first use.
    (await trainKmcl(model, { x: data.x, y: data.y, epochs: 1, batchSize: 10 })).ema.dispose();
    const before = tf.memory().numTensors;
    const { steps, ema } = await trainKmcl(model, { x: data.x, y: data.y, epochs: 250, batchSize: 10, learningRate: 1e-3 });
    ema.dispose();
    expect(steps.length).toBe(1000);
    expect(steps.every((s) => Number.isFinite(s.loss))).toBe(true);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
    tf.dispose([data.x, data.y]);
  });

  it('a 200-step run lifts validation mAP well above the label-frequency baseline (EMA weights)', async () => {
    const train = synthetic(640, 10);
    const val = synthetic(300, 11);
    const model = buildKmclModel(backbone(train.F, 6), { numClasses: train.K, mode: 'anisotropic', projectionDim: 16 });
    const parts: number[] = [];
    const { steps, ema } = await trainKmcl(model, {
      x: train.x, y: train.y, epochs: 10, batchSize: 32, learningRate: 1e-2, seed: 3,
      onStep: (s) => parts.push(s.contrastive),
    });
    expect(steps.length).toBe(200);
    expect(parts.length).toBe(200);
    const scores = ema.apply(() => tf.tidy(() => ((model.predict(val.x) as tf.Tensor[])[0] as tf.Tensor2D).arraySync()));
    const labels = val.y.arraySync();
    const { mAP } = meanAveragePrecision(scores, labels);
    // Uninformative scores give, per class, an AP equal to the class frequency.
    const freq = labels[0].map((_, k) => labels.reduce((s, row) => s + row[k], 0) / labels.length);
    const baseline = freq.reduce((a, b) => a + b, 0) / freq.length;
    expect(mAP).toBeGreaterThan(baseline + 0.3);
    ema.dispose();
    model.dispose();
    tf.dispose([train.x, train.y, val.x, val.y]);
  });

  it('asl mode trains with the reconstruction and contrastive weights at 0', async () => {
    const data = synthetic(32, 4, 8, 4);
    const model = buildKmclModel(backbone(data.F, 7), { numClasses: 4, mode: 'isotropic' });
    const { steps, ema } = await trainKmcl(model, { x: data.x, y: data.y, epochs: 1, batchSize: 16, mode: 'asl' });
    for (const s of steps) expect(s.loss).toBeCloseTo(s.asl, 3);
    ema.dispose();
    model.dispose();
    tf.dispose([data.x, data.y]);
  });

  it('rejects bad configs with the field named', async () => {
    const data = synthetic(8, 5, 8, 4);
    const model = buildKmclModel(backbone(data.F, 8), { numClasses: 4, mode: 'isotropic' });
    await expect(trainKmcl(model, { x: data.x, y: data.y, epochs: 0, batchSize: 4 })).rejects.toThrow(/config\.epochs must be a positive integer, got 0/);
    await expect(trainKmcl(model, { x: data.x, y: data.y, epochs: 1, batchSize: 4, mode: 'focal' as never })).rejects.toThrow(/config\.mode must be 'kmcl' or 'asl'/);
    model.dispose();
    tf.dispose([data.x, data.y]);
  });
});

describe('schedule and decay', () => {
  it('OneCycle warms up to the peak and anneals far below it', () => {
    const lrs = Array.from({ length: 100 }, (_, s) => oneCycleLr(s, 100, 1e-3));
    const peak = lrs.indexOf(Math.max(...lrs));
    expect(peak).toBe(20);
    expect(lrs[peak]).toBeCloseTo(1e-3, 12);
    expect(lrs[0]).toBeCloseTo(1e-3 / 25, 12);
    expect(lrs[99]).toBeLessThan(1e-5);
    for (let s = 1; s <= peak; s++) expect(lrs[s]).toBeGreaterThan(lrs[s - 1]);
    for (let s = peak + 1; s < 100; s++) expect(lrs[s]).toBeLessThan(lrs[s - 1]);
  });
  it('weight decay applies to kernels, not biases', () => {
    const model = buildKmclModel(backbone(4, 9), { numClasses: 3, mode: 'anisotropic', projectionDim: 4 });
    const decayed = model.trainableWeights.filter((w) => decays(w)).map((w) => w.name);
    const kept = model.trainableWeights.filter((w) => !decays(w)).map((w) => w.name);
    expect(decayed.every((n) => /kernel/.test(n))).toBe(true);
    expect(kept.every((n) => /bias/.test(n))).toBe(true);
    expect(decayed.length).toBeGreaterThan(0);
    expect(kept.length).toBeGreaterThan(0);
    model.dispose();
  });
});
