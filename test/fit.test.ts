import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildKmclModel, kmclFitLoss, kmclLoss, packKmclOutputs, trainKmcl, unpackKmclOutputs, type KmmHeadConfig } from '../src/tfjs/index.js';
import { projectionData } from './helpers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

/** Seeded multilabel data: labels are thresholds of fixed random projections of x. */
function data(n: number, seed: number, F = 12, K = 5) {
  const { x, y } = projectionData(n, seed, { F, K, worldSeed: 99, threshold: 0.3 });
  return { x: tf.tensor2d(x, [n, F]), y: tf.tensor2d(y, [n, K]), F, K };
}

function makeModel(F: number, head: KmmHeadConfig): tf.LayersModel {
  const input = tf.input({ shape: [F] });
  const h = tf.layers.dense({ units: 16, activation: 'relu' }).apply(input) as tf.SymbolicTensor;
  return buildKmclModel(tf.model({ inputs: input, outputs: h }), head);
}

/** Two models with the same architecture and the same initial weights. */
function twins(F: number, head: KmmHeadConfig): [tf.LayersModel, tf.LayersModel] {
  const a = makeModel(F, head);
  const b = makeModel(F, head);
  b.setWeights(a.getWeights());
  return [a, b];
}

function fusedLoss(model: tf.LayersModel, x: tf.Tensor, y: tf.Tensor, training = false): tf.Scalar {
  const [logits, mu, variance, features] = model.apply(x, { training }) as tf.Tensor[];
  return kmclLoss({ features, logits, mu, variance, labels: y }).loss;
}

const relDiff = (a: number, b: number) => Math.abs(a - b) / Math.max(1e-12, Math.abs(b));

const HEADS: KmmHeadConfig[] = [
  { numClasses: 5, mode: 'anisotropic', covariance: 'perClass', projectionDim: 6 },
  { numClasses: 5, mode: 'isotropic', covariance: 'shared' },
  { numClasses: 5, mode: 'anisotropic', covariance: 'perDim', projectionDim: 4 },
];

describe('model.fit with kmclFitLoss', () => {
  for (const head of HEADS) {
    it(`packs and unpacks to the same outputs (${head.mode}, ${head.covariance})`, () => {
      const d = data(8, 1);
      const model = makeModel(d.F, head);
      const packed = packKmclOutputs(model);
      tf.tidy(() => {
        const direct = model.predict(d.x) as tf.Tensor[];
        const un = unpackKmclOutputs(packed.predict(d.x) as tf.Tensor, head);
        const pairs: [tf.Tensor, tf.Tensor][] = [[un.logits, direct[0]], [un.mu, direct[1]], [un.variance, direct[2]], [un.features, direct[3]]];
        for (const [u, v] of pairs) {
          expect(u.shape).toEqual(v.shape);
          expect(Array.from(u.dataSync())).toEqual(Array.from(v.dataSync()));
        }
      });
      model.dispose();
      tf.dispose([d.x, d.y]);
    });

    it(`trains through fit exactly like a hand-written loop with the same optimizer and batches (${head.mode}, ${head.covariance})`, async () => {
      const d = data(48, 2);
      const [manual, viaFit] = twins(d.F, head);
      const lr = 0.05;
      const batch = 16;
      // Hand-written loop: sgd on the fused op, batches in order.
      const opt = tf.train.sgd(lr);
      const manualLosses: number[] = [];
      for (let epoch = 0; epoch < 2; epoch++) {
        for (let start = 0; start < 48; start += batch) {
          const xb = d.x.slice([start, 0], [batch, d.F]);
          const yb = d.y.slice([start, 0], [batch, d.K]);
          const l = opt.minimize(() => fusedLoss(manual, xb, yb, true), true)!;
          manualLosses.push(l.dataSync()[0]);
          tf.dispose([l, xb, yb]);
        }
      }
      // The same through compile + fit on the packed model.
      const packed = packKmclOutputs(viaFit);
      packed.compile({ optimizer: tf.train.sgd(lr), loss: kmclFitLoss(head) });
      const fitLosses: number[] = [];
      const history = await packed.fit(d.x, d.y, {
        epochs: 2,
        batchSize: batch,
        shuffle: false,
        verbose: 0,
        callbacks: { onBatchEnd: async (_b, logs) => void fitLosses.push(logs!.loss as number) },
      });
      expect(fitLosses.length).toBe(6);
      for (let i = 0; i < 6; i++) expect(relDiff(fitLosses[i], manualLosses[i]), `batch ${i}`).toBeLessThan(1e-5);
      expect(manualLosses[5]).toBeLessThan(manualLosses[0]);
      expect(history.history.loss).toHaveLength(2);
      // Same final weights: fit trained the shared layers of the unpacked model.
      const wa = manual.weights.map((w) => w.read());
      const wb = viaFit.weights.map((w) => w.read());
      for (let j = 0; j < wa.length; j++) {
        const a = wa[j].dataSync();
        const b = wb[j].dataSync();
        let diff = 0;
        let norm = 0;
        for (let i = 0; i < a.length; i++) {
          diff = Math.max(diff, Math.abs(a[i] - b[i]));
          norm = Math.max(norm, Math.abs(a[i]));
        }
        expect(diff / Math.max(norm, 1e-6), manual.weights[j].name).toBeLessThan(1e-4);
      }
      tf.dispose([d.x, d.y]);
      manual.dispose();
      viaFit.dispose();
    });
  }

  it("fit's first full-batch loss is trainKmcl's first-step loss on the same weights and data", async () => {
    const head = HEADS[0];
    const d = data(32, 3);
    const [a, b] = twins(d.F, head);
    const { steps, ema } = await trainKmcl(a, { x: d.x, y: d.y, epochs: 1, batchSize: 32 });
    ema.dispose();
    const packed = packKmclOutputs(b);
    packed.compile({ optimizer: tf.train.adam(1e-3), loss: kmclFitLoss(head) });
    const losses: number[] = [];
    await packed.fit(d.x, d.y, { epochs: 1, batchSize: 32, verbose: 0, callbacks: { onBatchEnd: async (_b, logs) => void losses.push(logs!.loss as number) } });
    expect(steps).toHaveLength(1);
    expect(relDiff(losses[0], steps[0].loss)).toBeLessThan(1e-5);
    tf.dispose([d.x, d.y]);
    a.dispose();
    b.dispose();
  });

  it('reports val_loss equal to the fused loss on the validation data with the trained weights', async () => {
    const head = HEADS[1];
    const d = data(32, 4);
    const v = data(16, 5);
    const model = makeModel(d.F, head);
    const packed = packKmclOutputs(model);
    packed.compile({ optimizer: tf.train.adam(1e-2), loss: kmclFitLoss(head, { temperature: 0.2 }) });
    const history = await packed.fit(d.x, d.y, { epochs: 1, batchSize: 16, verbose: 0, validationData: [v.x, v.y] });
    const valLoss = history.history.val_loss[0] as number;
    const direct = tf.tidy(() => {
      const [logits, mu, variance, features] = model.predict(v.x) as tf.Tensor[];
      return kmclLoss({ features, logits, mu, variance, labels: v.y }, { temperature: 0.2 }).loss.dataSync()[0];
    });
    expect(Number.isFinite(valLoss)).toBe(true);
    expect(relDiff(valLoss, direct)).toBeLessThan(1e-5);
    tf.dispose([d.x, d.y, v.x, v.y]);
    model.dispose();
  });

  it('names what is wrong: a bad head config, a layout that does not match, a bad option', async () => {
    expect(() => kmclFitLoss({ numClasses: 0 })).toThrow(/kmclFitLoss: head must be the head config/);
    expect(() => kmclFitLoss({ numClasses: 5 }, { temprature: 1 } as never)).toThrow(/temprature/);
    const d = data(8, 6);
    const model = makeModel(d.F, HEADS[0]);
    const packed = packKmclOutputs(model);
    packed.compile({ optimizer: tf.train.sgd(0.1), loss: kmclFitLoss({ ...HEADS[0], projectionDim: 7 }) });
    await expect(packed.fit(d.x, d.y, { epochs: 1, batchSize: 8, verbose: 0 })).rejects.toThrow(/has 71 columns.*= 82 columns; pack the outputs with packKmclOutputs/);
    expect(() => packKmclOutputs(tf.model({ inputs: model.inputs, outputs: model.outputs[0] }))).toThrow(/must output \[logits, mu, variance, features\]/);
    tf.dispose([d.x, d.y]);
    model.dispose();
  });
});
