import * as tf from '@tensorflow/tfjs';
import { buildKmclModel, kmclLoss, meanAveragePrecision, trainKmcl } from 'kmcl/tfjs';

// A backbone from inputs [B, 16] to features [B, 32], and a KMM head for 5 classes on top.
const input = tf.input({ shape: [16] });
const hidden = tf.layers.dense({ units: 32, activation: 'relu' }).apply(input) as tf.SymbolicTensor;
const model = buildKmclModel(tf.model({ inputs: input, outputs: hidden }), { numClasses: 5, mode: 'anisotropic', projectionDim: 16 });

// Toy data: 5 labels, each a threshold of a random projection of x.
const x = tf.randomNormal([256, 16], 0, 1, 'float32', 1);
const y = tf.tidy(() => tf.cast(tf.greater(tf.matMul(x, tf.randomNormal([16, 5], 0, 1, 'float32', 2)), 1), 'float32')) as tf.Tensor2D;

// The op on its own: loss parts as scalars; gradients flow when a tape records.
const [logits, mu, variance, features] = model.predict(x) as tf.Tensor[];
const parts = kmclLoss({ features, logits, mu, variance, labels: y }, { temperature: 0.17 });
console.log('initial loss', parts.loss.dataSync()[0], 'contrastive', parts.contrastive.dataSync()[0]);
tf.dispose([logits, mu, variance, features, ...Object.values(parts)]); // the caller owns all four scalars

// Train: Adam + weight decay on kernels, OneCycle learning rate, EMA weights for evaluation.
const { ema } = await trainKmcl(model, { x, y, epochs: 8, batchSize: 32, learningRate: 1e-2 });
const scores = ema.apply(() => (model.predict(x) as tf.Tensor[])[0].arraySync() as number[][]);
console.log('train mAP', meanAveragePrecision(scores, y.arraySync()).mAP.toFixed(3));
