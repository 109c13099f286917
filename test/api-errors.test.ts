// Issue 9, items 8-12: the tfjs op and the raw API refuse bad input with errors that name what the
// caller passed, leak nothing on a failed call, and report configuration problems.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { kmclLossRaw, kmclLossRawFloat64 } from '../src/index.js';
import { buildKmclModel, kmclLoss, trainKmcl, type KmclLossInputs } from '../src/tfjs/index.js';
import { describeExit, runChild } from './child.js';
import { randomProblem } from './helpers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

const spec = { seed: 41, B: 6, K: 4, M: 3, D: 3, Kv: 4, Dv: 3, positives: 2 };

function tensors(p = randomProblem(spec), labelsDtype: 'float32' | 'int32' = 'float32'): KmclLossInputs {
  return {
    features: tf.tensor2d(p.features, [p.batch, p.dim]),
    logits: tf.tensor2d(p.logits, [p.batch, p.classes]),
    mu: tf.tensor3d(p.mu, [p.batch, p.classes, p.muDim]),
    variance: tf.tensor3d(p.variance, [p.batch, p.varianceShape[0], p.varianceShape[1]]),
    labels: tf.tensor2d(Array.from(p.labels), [p.batch, p.classes], labelsDtype),
  };
}

describe('the tfjs op', () => {
  it('leaks no tensor when the kernel refuses int32 labels (the cast is disposed in a finally)', () => {
    const p = randomProblem(spec);
    const labels = Array.from(p.labels);
    labels[3] = 2;
    const x = tensors({ ...p, labels: Float32Array.from(labels) }, 'int32');
    const before = tf.memory().numTensors;
    for (let j = 0; j < 5; j++) expect(() => kmclLoss(x)).toThrow(/kmclLoss: labels must be exactly 0 or 1; element 3 is 2/);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(Object.values(x));
  });

  it('takes null options like the raw API (the defaults)', () => {
    const x = tensors();
    const a = tf.tidy(() => kmclLoss(x, null).loss.dataSync()[0]);
    const b = tf.tidy(() => kmclLoss(x).loss.dataSync()[0]);
    expect(a).toBe(b);
    tf.dispose(Object.values(x));
  });

  it("names the op's tensors, not problem fields; soft labels get a hint", () => {
    const p = randomProblem(spec);
    const soft = Float32Array.from(p.labels);
    soft[0] = 0.7;
    const x1 = tensors({ ...p, labels: soft });
    expect(() => kmclLoss(x1)).toThrow(/^kmclLoss: labels must be exactly 0 or 1; element 0 is 0\.69999\d* \(soft labels are not supported/);
    const v = Float32Array.from(p.variance);
    v[2] = -1;
    const x2 = tensors({ ...p, variance: v });
    expect(() => kmclLoss(x2)).toThrow(/^kmclLoss: variance must be > 0; element 2 is -1/);
    tf.dispose([...Object.values(x1), ...Object.values(x2)]);
  });

  it('a wrong batch size on features blames features', () => {
    const x = tensors();
    const features = tf.zeros([5, 3]);
    expect(() => kmclLoss({ ...x, features: features as tf.Tensor2D })).toThrow(/^kmclLoss: features must have shape \[B, M\] with B = 6 like logits, labels, mu and variance, got \[5, 3\]/);
    tf.dispose([...Object.values(x), features]);
  });

  it('the caller owns all four scalars: disposing them all leaves tf.memory() flat', () => {
    const x = tensors();
    kmclLoss(x); // warm-up
    const before = tf.memory().numTensors;
    for (let j = 0; j < 10; j++) tf.dispose(Object.values(kmclLoss(x)));
    expect(tf.memory().numTensors).toBe(before);
    for (let j = 0; j < 10; j++) kmclLoss(x).loss.dispose();
    expect(tf.memory().numTensors).toBe(before + 30); // the three unused parts of each call
    tf.dispose(Object.values(x));
  });

  it('trainKmcl checks y against the model K before training', async () => {
    const input = tf.input({ shape: [4] });
    const h = tf.layers.dense({ units: 6 }).apply(input) as tf.SymbolicTensor;
    const model = buildKmclModel(tf.model({ inputs: input, outputs: h }), { numClasses: 3, mode: 'isotropic' });
    const x = tf.randomNormal([8, 4]);
    const y = tf.zeros([8, 5]) as tf.Tensor2D;
    const before = tf.memory().numTensors;
    await expect(trainKmcl(model, { x, y, epochs: 1, batchSize: 4 })).rejects.toThrow(/config\.y must have shape \[8, 3\] \(K = 3 from the model's logits output\), got \[8, 5\]/);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, y]);
  });
});

describe('fallback to the composite', () => {
  const script = (call: string) => `
    import * as tf from '@tensorflow/tfjs';
    import { kmclLoss } from './src/tfjs/index.ts';
    await tf.setBackend('cpu');
    const x = { features: tf.ones([2, 1]), logits: tf.ones([2, 1]), mu: tf.ones([2, 1, 1]), variance: tf.ones([2, 1, 1]), labels: tf.ones([2, 1]) };
    try { const r = ${call}; console.log(JSON.stringify({ loss: r.loss.dataSync()[0] })); }
    catch (e) { console.log(JSON.stringify({ error: e.message })); }
  `;
  const noAddon = { KMCL_ADDON_PATH: '/nonexistent/kmcl.node' };

  it('warns with the whole reason and what it costs', async () => {
    const r = await runChild(script('kmclLoss(x)'), { env: noAddon });
    expect(r.status, describeExit(r)).toBe(0);
    expect(Number.isFinite(r.json.loss)).toBe(true);
    expect(r.stderr).toMatch(/Cost: the composite builds B×B×K pair tensors: about 270-560× slower/);
    expect(r.stderr).toMatch(/Tried:\n\s+KMCL_ADDON_PATH \/nonexistent\/kmcl\.node: not found\n/);
    expect(r.stderr).toMatch(/npx kmcl build/);
    expect(r.stderr).toMatch(/KMCL_FALLBACK=error/);
  });

  it("options.fallback = 'error' and KMCL_FALLBACK=error make it an error", async () => {
    const a = await runChild(script("kmclLoss(x, { fallback: 'error' })"), { env: noAddon });
    expect(a.json.error).toMatch(/^kmclLoss: the fused kernel cannot run \(options\.fallback is 'error'\): the native addon is not available/);
    const b = await runChild(script('kmclLoss(x)'), { env: { ...noAddon, KMCL_FALLBACK: 'error' } });
    expect(b.json.error).toMatch(/the fused kernel cannot run/);
    expect(b.stderr).not.toMatch(/using the plain-tfjs composite/);
    const c = await runChild(script("kmclLoss(x, { fallback: 'maybe' })"), { env: noAddon });
    expect(c.json.error).toMatch(/options\.fallback must be 'warn' or 'error', got "maybe"/);
  });
});

describe('the raw API', () => {
  it('backendInfo().cpu reports an invalid KMCL_NUM_THREADS', async () => {
    const r = await runChild(`
      import { backendInfo } from './src/index.ts';
      console.log(JSON.stringify(backendInfo().cpu));
    `, { env: { KMCL_NUM_THREADS: 'many' } });
    expect(r.status, describeExit(r)).toBe(0);
    expect(r.json).toMatchObject({ compiled: true, threads: 0, threadsError: 'KMCL_NUM_THREADS must be an integer from 1 to 1024, got "many"' });
  });

  it('kmclLossRawFloat64 validates options.gradients like kmclLossRaw', () => {
    const p = randomProblem(spec, Float64Array);
    expect(() => kmclLossRawFloat64(p as never, { gradients: 'yes' as never })).toThrow(/^options\.gradients must be a boolean, got "yes"$/);
    expect(() => kmclLossRaw(randomProblem(spec), { gradients: 'yes' as never })).toThrow(/^options\.gradients must be a boolean, got "yes"$/);
  });

  it('describes BigInt values as BigInts', () => {
    const p = randomProblem(spec);
    expect(() => kmclLossRaw({ ...p, batch: 6n as never })).toThrow(/problem\.batch must be a positive integer, got the BigInt 6n/);
    expect(() => kmclLossRaw(p, { temperature: 1n as never })).toThrow(/options\.temperature must be a finite number, got the BigInt 1n/);
  });
});
