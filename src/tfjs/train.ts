/**
 * Training helpers for a backbone + KMM head trained with the fused KMCL loss, in the manner of
 * the paper's training: AdamW-style Adam with decoupled weight decay on kernels (not biases), a
 * OneCycle learning-rate schedule, an exponential moving average (EMA) of the weights used for
 * evaluation, and the loss parts reported every step. `mode: 'asl'` trains the same network with
 * the reconstruction and contrastive weights set to 0 (the baseline KMCL claims to beat).
 */
import * as tf from '@tensorflow/tfjs';
import { describe } from '../options.js';
import { KmmHead, type KmmHeadConfig } from './head.js';
import { kmclLoss, type KmclOpOptions } from './op.js';

/**
 * Puts a KMM head on a backbone: a model from the backbone's inputs to
 * `[logits, mu, variance, features]`, where `features` is what the loss reconstructs (the
 * backbone output in isotropic mode, the head's projection in anisotropic mode).
 */
export function buildKmclModel(backbone: tf.LayersModel, head: KmmHeadConfig | KmmHead, name = 'kmcl_model'): tf.LayersModel {
  if (backbone.outputs.length !== 1 || backbone.outputs[0].shape.length !== 2) {
    throw new Error(`buildKmclModel: the backbone must have one output of shape [B, F], got ${backbone.outputs.map((o) => `[${o.shape.join(', ')}]`).join(', ')}`);
  }
  const layer = head instanceof KmmHead ? head : new KmmHead(head);
  const f = backbone.outputs[0];
  const outs = layer.apply(f) as tf.SymbolicTensor[];
  const features = outs.length === 4 ? outs[3] : f;
  return tf.model({ inputs: backbone.inputs, outputs: [outs[0], outs[1], outs[2], features], name });
}

/** OneCycle learning rate (cosine warm-up to `maxLr`, then cosine annealing), as in PyTorch. */
export function oneCycleLr(step: number, totalSteps: number, maxLr: number, pctStart = 0.2, divFactor = 25, finalDivFactor = 1e4): number {
  const initial = maxLr / divFactor;
  const final = initial / finalDivFactor;
  const warm = Math.max(1, Math.round(pctStart * totalSteps));
  const cos = (from: number, to: number, t: number) => to + ((from - to) * (1 + Math.cos(Math.PI * Math.min(1, Math.max(0, t))))) / 2;
  if (step < warm) return cos(initial, maxLr, step / warm);
  return cos(maxLr, final, (step - warm) / Math.max(1, totalSteps - warm));
}

/** Whether weight decay applies to a variable: kernels yes, biases (and anything else) no. */
export function decays(v: tf.Variable | tf.LayerVariable): boolean {
  return /kernel/i.test(v.name) && !/bias/i.test(v.name);
}

/** An exponential moving average of a model's weights. */
export class WeightEma {
  readonly shadows: tf.Variable[];
  constructor(
    private readonly model: tf.LayersModel,
    readonly decay = 0.999,
  ) {
    if (!(decay >= 0 && decay < 1)) throw new RangeError(`WeightEma: decay must be in [0, 1), got ${decay}`);
    this.shadows = tf.tidy(() => model.weights.map((w) => tf.variable(tf.clone(w.read()), false)));
  }
  /** shadow ← d·shadow + (1 − d)·w, with the warm-up d_t = min(decay, (1 + t)/(10 + t)). */
  update(step: number): void {
    const d = Math.min(this.decay, (1 + step) / (10 + step));
    tf.tidy(() => {
      this.model.weights.forEach((w, j) => this.shadows[j].assign(tf.add(tf.mul(this.shadows[j], d), tf.mul(w.read(), 1 - d))));
    });
  }
  /** Runs `fn` with the EMA weights loaded into the model, then restores the live weights. */
  apply<T>(fn: () => T): T {
    const live = this.model.weights.map((w) => tf.clone(w.read()));
    this.model.setWeights(this.shadows);
    try {
      return fn();
    } finally {
      this.model.setWeights(live);
      tf.dispose(live);
    }
  }
  dispose(): void {
    tf.dispose(this.shadows);
  }
}

/** One step's report. Times in milliseconds; `lossMs` is the fused loss (forward + gradients). */
export interface StepInfo {
  epoch: number;
  step: number;
  learningRate: number;
  loss: number;
  asl: number;
  reconstruction: number;
  contrastive: number;
  lossMs: number;
  stepMs: number;
}

export interface TrainKmclConfig {
  /** Training inputs (first axis = samples) and labels `[N, K]` of 0/1. */
  x: tf.Tensor;
  y: tf.Tensor2D;
  epochs: number;
  batchSize: number;
  /** Peak learning rate of the OneCycle schedule (default 1e-3). */
  learningRate?: number;
  /** Decoupled weight decay on kernels (default 1e-4); biases are never decayed. */
  weightDecay?: number;
  /** EMA decay (default 0.997). */
  emaDecay?: number;
  /** 'kmcl' (default) or 'asl': ASL only, reconstruction and contrastive weights 0. */
  mode?: 'kmcl' | 'asl';
  /** Loss options (temperature, gammas, ...); weights are overridden in 'asl' mode. */
  loss?: KmclOpOptions;
  /** Seed of the per-epoch shuffles. */
  seed?: number;
  onStep?: (info: StepInfo) => void;
  /** Called after each epoch with the EMA in place for evaluation. */
  onEpochEnd?: (epoch: number, ema: WeightEma) => void | Promise<void>;
}

export interface TrainKmclResult {
  steps: StepInfo[];
  /** The EMA of the weights; evaluate with `ema.apply(() => model.predict(x))`. Dispose when done. */
  ema: WeightEma;
  timeMs: { total: number; loss: number };
}

function positive(name: string, v: unknown, integer: boolean): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
    throw new TypeError(`trainKmcl: config.${name} must be a positive ${integer ? 'integer' : 'number'}, got ${describe(v)}`);
  }
  return v;
}

function shuffled(n: number, seed: number): Int32Array {
  const idx = Int32Array.from({ length: n }, (_, i) => i);
  let s = seed >>> 0 || 1;
  for (let i = n - 1; i > 0; i--) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const j = (s >>> 0) % (i + 1);
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx;
}

/**
 * Trains `model` (from {@link buildKmclModel}) with the fused KMCL loss. Each step: forward in
 * training mode, `kmclLoss` (gradients computed in the same native pass), Adam with decoupled
 * weight decay on kernels, the OneCycle learning rate, and an EMA update.
 */
export async function trainKmcl(model: tf.LayersModel, config: TrainKmclConfig): Promise<TrainKmclResult> {
  const epochs = positive('epochs', config.epochs, true);
  const batchSize = positive('batchSize', config.batchSize, true);
  const maxLr = positive('learningRate', config.learningRate ?? 1e-3, false);
  const weightDecay = config.weightDecay ?? 1e-4;
  if (!(weightDecay >= 0)) throw new RangeError(`trainKmcl: config.weightDecay must be >= 0, got ${weightDecay}`);
  const mode = config.mode ?? 'kmcl';
  if (mode !== 'kmcl' && mode !== 'asl') throw new TypeError(`trainKmcl: config.mode must be 'kmcl' or 'asl', got ${describe(mode)}`);
  if (model.outputs.length !== 4) throw new Error('trainKmcl: the model must output [logits, mu, variance, features] (see buildKmclModel)');
  const { x, y } = config;
  const n = x.shape[0];
  if (y.rank !== 2 || y.shape[0] !== n) throw new Error(`trainKmcl: config.y must have shape [${n}, K], got [${y.shape.join(', ')}]`);
  const K = model.outputs[0].shape[1];
  if (typeof K === 'number' && y.shape[1] !== K) {
    throw new Error(`trainKmcl: config.y must have shape [${n}, ${K}] (K = ${K} from the model's logits output), got [${y.shape.join(', ')}]`);
  }
  const lossOptions: KmclOpOptions = { ...config.loss };
  if (mode === 'asl') lossOptions.weights = { asl: lossOptions.weights?.asl ?? 1, reconstruction: 0, contrastive: 0 };

  const stepsPerEpoch = Math.ceil(n / batchSize);
  const totalSteps = epochs * stepsPerEpoch;
  const vars = model.trainableWeights.map((w) => (w as unknown as { val: tf.Variable }).val);
  // Inside tidy so the zero tensors the variables start from are freed (variables are kept).
  const m = tf.tidy(() => vars.map((v) => tf.variable(tf.zerosLike(v), false)));
  const s = tf.tidy(() => vars.map((v) => tf.variable(tf.zerosLike(v), false)));
  const decayMask = model.trainableWeights.map((w) => decays(w));
  const ema = new WeightEma(model, config.emaDecay ?? 0.997);
  const b1 = 0.9;
  const b2 = 0.999;
  const steps: StepInfo[] = [];
  let lossMs = 0;
  const t0 = performance.now();
  let step = 0;
  try {
    for (let epoch = 0; epoch < epochs; epoch++) {
      const order = shuffled(n, (config.seed ?? 1) * 7919 + epoch);
      for (let start = 0; start < n; start += batchSize) {
        const stepStart = performance.now();
        const lr = oneCycleLr(step, totalSteps, maxLr);
        let parts = { loss: 0, asl: 0, reconstruction: 0, contrastive: 0 };
        let thisLossMs = 0;
        tf.tidy(() => {
          const idx = tf.tensor1d(order.subarray(start, Math.min(n, start + batchSize)), 'int32');
          const xb = tf.gather(x, idx);
          const yb = tf.gather(y, idx) as tf.Tensor2D;
          const { value, grads } = tf.variableGrads(() => {
            const [logits, mu, variance, features] = model.apply(xb, { training: true }) as tf.Tensor[];
            const l0 = performance.now();
            const r = kmclLoss({ features: features as tf.Tensor2D, logits: logits as tf.Tensor2D, mu: mu as tf.Tensor3D, variance: variance as tf.Tensor3D, labels: yb }, lossOptions);
            thisLossMs = performance.now() - l0;
            const [a, rec, con] = [r.asl, r.reconstruction, r.contrastive].map((t) => t.dataSync()[0]);
            parts = { loss: 0, asl: a, reconstruction: rec, contrastive: con };
            return r.loss;
          }, vars);
          parts.loss = value.dataSync()[0];
          // Adam with bias correction; decoupled weight decay on kernels (AdamW).
          const c1 = 1 - b1 ** (step + 1);
          const c2 = 1 - b2 ** (step + 1);
          vars.forEach((v, j) => {
            const g = grads[v.name];
            if (!g) return;
            m[j].assign(tf.add(tf.mul(m[j], b1), tf.mul(g, 1 - b1)));
            s[j].assign(tf.add(tf.mul(s[j], b2), tf.mul(tf.square(g), 1 - b2)));
            let update = tf.div(tf.div(m[j], c1), tf.add(tf.sqrt(tf.div(s[j], c2)), 1e-8));
            if (decayMask[j] && weightDecay > 0) update = tf.add(update, tf.mul(v, weightDecay));
            v.assign(tf.sub(v, tf.mul(update, lr)));
          });
        });
        ema.update(step);
        lossMs += thisLossMs;
        const info: StepInfo = { epoch, step, learningRate: lr, ...parts, lossMs: thisLossMs, stepMs: performance.now() - stepStart };
        steps.push(info);
        config.onStep?.(info);
        step++;
      }
      await config.onEpochEnd?.(epoch, ema);
    }
  } catch (e) {
    ema.dispose();
    throw e;
  } finally {
    tf.dispose([...m, ...s]);
  }
  return { steps, ema, timeMs: { total: performance.now() - t0, loss: lossMs } };
}
