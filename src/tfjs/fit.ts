/**
 * Training with `model.compile` + `model.fit`: tfjs-layers gives a loss function one `yPred`
 * tensor per output, so the head's outputs are packed side by side into one `[B, W]` tensor
 * (`packKmclOutputs`) and `kmclFitLoss` unpacks them and runs the fused op on each batch.
 *
 * @example
 * const model = buildKmclModel(backbone, head);         // [logits, mu, variance, features]
 * const packed = packKmclOutputs(model);                 // one output, the same layers and weights
 * packed.compile({ optimizer: tf.train.adam(1e-3), loss: kmclFitLoss(head, { temperature: 0.17 }) });
 * await packed.fit(x, y, { epochs: 5, batchSize: 32, validationSplit: 0.1, callbacks: { onEpochEnd } });
 * const [logits] = model.predict(x) as tf.Tensor[];      // the unpacked model is trained too
 */
import * as tf from '@tensorflow/tfjs';
import { describe, resolveOptions } from '../options.js';
import { checkDevice } from '../raw.js';
import type { KmmHead, KmmHeadConfig } from './head.js';
import { kmclLoss, type KmclOpOptions } from './op.js';

/** The head fields that fix the packed layout. */
export type KmclLayoutConfig = Pick<KmmHeadConfig, 'numClasses' | 'mode' | 'covariance' | 'projectionDim'> | KmmHead;

/** Where each output sits in the packed `[B, W]` tensor: `W = K + K·D + Kv·Dv + M`. */
export interface KmclPackedLayout {
  K: number;
  D: number;
  Kv: number;
  Dv: number;
  M: number;
  width: number;
}

/**
 * Flattens `[logits, mu, variance, features]` and concatenates them along the last axis. Its
 * output shape has an unknown last dimension, so that `fit` accepts the `[B, K]` labels as the
 * target of the packed output (tfjs-layers checks targets against known output dimensions only).
 */
export class KmclPack extends tf.layers.Layer {
  /** @nocollapse */
  static className = 'KmclPack';
  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    const first = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    return [first[0], null];
  }
  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const list = Array.isArray(inputs) ? inputs : [inputs];
      return tf.concat(list.map((t) => tf.reshape(t, [t.shape[0], -1])), 1);
    });
  }
}
tf.serialization.registerClass(KmclPack);

/**
 * A model with the same inputs, layers and weights as `model` (from {@link buildKmclModel}, outputs
 * `[logits, mu, variance, features]`) and one output: `[logits, mu, variance, features]` flattened
 * and concatenated along the last axis, `[B, K + K·D + Kv·Dv + M]`. Training it trains `model`.
 */
export function packKmclOutputs(model: tf.LayersModel, name = `${model.name}_packed`): tf.LayersModel {
  if (model.outputs.length !== 4) {
    throw new Error(`packKmclOutputs: the model must output [logits, mu, variance, features] (see buildKmclModel), got ${model.outputs.length} outputs`);
  }
  const packed = new KmclPack({ name: `${name}_pack` }).apply(model.outputs) as tf.SymbolicTensor;
  return tf.model({ inputs: model.inputs, outputs: packed, name });
}

function checkHead(head: KmclLayoutConfig, fn: string): { K: number; mode: 'isotropic' | 'anisotropic'; covariance: 'perClass' | 'perDim' | 'shared' } {
  const h = head as Partial<KmmHeadConfig> | null;
  const ok =
    h !== null &&
    typeof h === 'object' &&
    typeof h.numClasses === 'number' &&
    Number.isInteger(h.numClasses) &&
    h.numClasses >= 1 &&
    (h.mode === undefined || h.mode === 'isotropic' || h.mode === 'anisotropic') &&
    (h.covariance === undefined || ['perClass', 'perDim', 'shared'].includes(h.covariance)) &&
    (h.mode === 'isotropic' || h.projectionDim === undefined || (Number.isInteger(h.projectionDim) && h.projectionDim >= 1));
  if (!ok) {
    throw new TypeError(`${fn}: head must be the head config { numClasses, mode, covariance, projectionDim } given to buildKmclModel (or the KmmHead), got ${describe(head)}`);
  }
  return { K: h.numClasses as number, mode: h.mode ?? 'anisotropic', covariance: h.covariance ?? 'perClass' };
}

/** The packed layout for `head` and an output of `width` columns; throws when they do not fit. */
export function kmclPackedLayout(head: KmclLayoutConfig, width: number, fn = 'kmclFitLoss'): KmclPackedLayout {
  const { K, mode, covariance } = checkHead(head, fn);
  let M: number;
  let D: number;
  if (mode === 'anisotropic') {
    M = head.projectionDim ?? 128;
    D = M;
  } else {
    D = 1;
    M = 0; // solved from the width below
  }
  const [Kv, Dv] = covariance === 'perClass' ? [K, D] : covariance === 'perDim' ? [1, D] : [1, 1];
  if (mode !== 'anisotropic') M = width - K - K * D - Kv * Dv;
  const expected = K + K * D + Kv * Dv + M;
  if (M < 1 || expected !== width) {
    throw new Error(
      `${fn}: the model output has ${width} columns, but a ${mode} head with covariance '${covariance}' and K = ${K}` +
        `${mode === 'anisotropic' ? `, M = ${M}` : ''} packs to K + K·D + Kv·Dv + M = ${mode === 'anisotropic' ? expected : `${K + K * D + Kv * Dv} + M with M ≥ 1`}` +
        ' columns; pack the outputs with packKmclOutputs(buildKmclModel(backbone, head)) and pass the same head config',
    );
  }
  return { K, D, Kv, Dv, M, width };
}

/** Splits a packed `[B, W]` tensor back into the op's inputs `{ logits, mu, variance, features }`. */
export function unpackKmclOutputs(packed: tf.Tensor, head: KmclLayoutConfig): { logits: tf.Tensor2D; mu: tf.Tensor3D; variance: tf.Tensor3D; features: tf.Tensor2D } {
  if (packed.rank !== 2) throw new Error(`unpackKmclOutputs: the packed output must have shape [B, W], got [${packed.shape.join(', ')}]`);
  const [B, W] = packed.shape as [number, number];
  const { K, D, Kv, Dv, M } = kmclPackedLayout(head, W, 'unpackKmclOutputs');
  return tf.tidy(() => {
    const [logits, mu, variance, features] = tf.split(packed, [K, K * D, Kv * Dv, M], 1);
    return {
      logits: logits as tf.Tensor2D,
      mu: tf.reshape(mu, [B, K, D]) as tf.Tensor3D,
      variance: tf.reshape(variance, [B, Kv, Dv]) as tf.Tensor3D,
      features: features as tf.Tensor2D,
    };
  });
}

/**
 * A loss function for `model.compile({ loss })` on a model from {@link packKmclOutputs}: it
 * unpacks `yPred`, runs the fused {@link kmclLoss} with `options` against the labels `yTrue`
 * (`[B, K]`, 0/1) and returns the weighted total. Gradients come from the fused op, as in
 * `trainKmcl`; `fit`'s optimizer, callbacks, validation data and progress logging all apply.
 * The layout is checked against `head` on the first call, with an error that says what to fix.
 */
export function kmclFitLoss(head: KmclLayoutConfig, options: KmclOpOptions = {}): (yTrue: tf.Tensor, yPred: tf.Tensor) => tf.Scalar {
  checkHead(head, 'kmclFitLoss');
  resolveOptions(options, ['device']);
  checkDevice(options.device);
  return (yTrue: tf.Tensor, yPred: tf.Tensor): tf.Scalar => {
    const { logits, mu, variance, features } = unpackKmclOutputs(yPred, head);
    return kmclLoss({ features, logits, mu, variance, labels: yTrue }, options).loss;
  };
}
