/**
 * The demo's network: a small CNN backbone (tfjs-layers) with a KMM head on top, built
 * deterministically from a seed, and the two convolution-gradient kernels the tfjs `wasm`
 * backend lacks or runs slowly, so that the CNN can be trained on `wasm`.
 *
 * Backbone (defaults), for one-channel S×S images:
 *
 *     conv 3×3 × 16, relu, same padding → max-pool 2×2
 *     conv 3×3 × 32, relu, same padding → max-pool 2×2
 *     flatten → dense 64, relu                                  → features f [B, 64]
 *
 * then the KMM head of the spec (`buildKmclModel`), whose outputs are
 * `[logits, mu, variance, features]`.
 */
import * as tf from '@tensorflow/tfjs';

import { buildKmclModel, type KmmCovariance, type KmmMode } from 'kmcl/tfjs';
import { mulberry32, mixSeed } from '../../dev/seeded-random.js';

/** Configuration of {@link buildDemoModel}. */
export interface DemoModelConfig {
  /** Side of the square one-channel input images. */
  imageSize: number;
  /** Number of classes K. */
  numClasses: number;
  /** Filters of the two 3×3 convolutions (default [16, 32]). */
  filters?: readonly [number, number];
  /** Units of the dense feature layer, F (default 64). */
  denseUnits?: number;
  /** KMM head mode (default 'anisotropic'). */
  mode?: KmmMode;
  /** KMM head covariance family (default 'perClass'). */
  covariance?: KmmCovariance;
  /** Anisotropic mode: the projected dimension M (default 64). */
  projectionDim?: number;
  /** Seed of every initialiser: the same seed gives the same initial weights. */
  seed: number;
}

export const DEFAULT_FILTERS: readonly [number, number] = [16, 32];
export const DEFAULT_DENSE_UNITS = 64;
export const DEFAULT_PROJECTION_DIM = 64;

/**
 * Runs `fn` with `Math.random` replaced by a seeded generator. tfjs draws every unseeded random
 * initialiser (glorotUniform without a seed, `tf.randomUniform` without a seed — the KMM head
 * uses both) from `Math.random`, so building a model inside this makes its initial weights a
 * function of `seed`. `Math.random` is restored afterwards, also when `fn` throws.
 */
export function withSeededRandom<T>(seed: number, fn: () => T): T {
  const original = Math.random;
  Math.random = mulberry32(mixSeed(seed, 0x6d6f64)); // 'mod'
  try {
    return fn();
  } finally {
    Math.random = original;
  }
}

/** The CNN backbone alone: input `[S, S, 1]` → features `[F]`. */
export function buildBackbone(config: Pick<DemoModelConfig, 'imageSize' | 'filters' | 'denseUnits'>): tf.LayersModel {
  const [f1, f2] = config.filters ?? DEFAULT_FILTERS;
  const units = config.denseUnits ?? DEFAULT_DENSE_UNITS;
  const S = config.imageSize;
  const input = tf.input({ shape: [S, S, 1], name: 'image' });
  const conv = (filters: number, name: string) =>
    tf.layers.conv2d({ filters, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: 'heNormal', name });
  let h = conv(f1, 'conv1').apply(input) as tf.SymbolicTensor;
  h = tf.layers.maxPooling2d({ poolSize: 2, name: 'pool1' }).apply(h) as tf.SymbolicTensor;
  h = conv(f2, 'conv2').apply(h) as tf.SymbolicTensor;
  h = tf.layers.maxPooling2d({ poolSize: 2, name: 'pool2' }).apply(h) as tf.SymbolicTensor;
  h = tf.layers.flatten({ name: 'flatten' }).apply(h) as tf.SymbolicTensor;
  h = tf.layers.dense({ units, activation: 'relu', kernelInitializer: 'heNormal', name: 'features' }).apply(h) as tf.SymbolicTensor;
  return tf.model({ inputs: input, outputs: h, name: 'cnn_backbone' });
}

/**
 * Backbone + KMM head as one model with outputs `[logits, mu, variance, features]`, initialised
 * deterministically from `config.seed`.
 */
export function buildDemoModel(config: DemoModelConfig): tf.LayersModel {
  const mode = config.mode ?? 'anisotropic';
  return withSeededRandom(config.seed, () => {
    const backbone = buildBackbone(config);
    const head =
      mode === 'anisotropic'
        ? { numClasses: config.numClasses, mode, covariance: config.covariance ?? 'perClass', projectionDim: config.projectionDim ?? DEFAULT_PROJECTION_DIM, name: 'kmm_head' }
        : { numClasses: config.numClasses, mode, covariance: config.covariance ?? 'perClass', name: 'kmm_head' };
    const model = buildKmclModel(backbone, head, 'kmcl_demo');
    // Build the head's weights now (inside the seeded scope) rather than on the first call.
    tf.tidy(() => {
      model.predict(tf.zeros([1, config.imageSize, config.imageSize, 1]));
    });
    return model;
  });
}

/** Number of trainable parameters of a model. */
export function countParameters(model: tf.LayersModel): number {
  return model.trainableWeights.reduce((n, w) => n + (w.shape as number[]).reduce((a: number, b: number) => a * b, 1), 0);
}

// ---------------------------------------------------------------------------------------------
// Convolution gradients for the wasm backend

type Conv2DGradAttrs = {
  strides: number | [number, number];
  pad: 'same' | 'valid' | number | number[][];
  dataFormat?: 'NHWC' | 'NCHW';
  dimRoundingMode?: string;
  filterShape?: [number, number, number, number];
  inputShape?: [number, number, number, number];
};

let wasmGradientsRegistered = false;
let originalBackpropInput: tf.KernelFunc | undefined;

function pair(v: number | [number, number]): [number, number] {
  return typeof v === 'number' ? [v, v] : v;
}

/** Top/left padding of a stride-1/strided 'same' or 'valid' or numeric pad (NHWC). */
function leadingPad(pad: Conv2DGradAttrs['pad'], inSize: number, outSize: number, k: number, stride: number): number | undefined {
  if (pad === 'valid') return 0;
  if (pad === 'same') return Math.floor(Math.max((outSize - 1) * stride + k - inSize, 0) / 2);
  if (typeof pad === 'number') return pad;
  return undefined;
}

/**
 * dW of a 2-D convolution as one forward convolution that the wasm backend runs with XNNPACK:
 * with the batch as the channel axis, dW[i, j, c, o] = Σ_b,h,w x_pad[b, s·h + i, s·w + j, c] ·
 * dy[b, h, w, o] is conv2d(x_padᵀ [C, Hp, Wp, B], dyᵀ [Ho, Wo, B, O], dilation s), cropped to
 * the kernel size. Returns undefined for layouts it does not handle.
 */
function conv2dBackpropFilterViaConv(x: tf.Tensor4D, dy: tf.Tensor4D, attrs: Conv2DGradAttrs): tf.Tensor4D | undefined {
  if ((attrs.dataFormat ?? 'NHWC') !== 'NHWC' || !attrs.filterShape) return undefined;
  const [kh, kw] = attrs.filterShape;
  const [sh, sw] = pair(attrs.strides);
  if (sh !== sw) return undefined;
  const [, H, W] = x.shape;
  const [, Ho, Wo] = dy.shape;
  const top = leadingPad(attrs.pad, H, Ho, kh, sh);
  const left = leadingPad(attrs.pad, W, Wo, kw, sw);
  if (top === undefined || left === undefined) return undefined;
  const needH = (Ho - 1) * sh + kh;
  const needW = (Wo - 1) * sw + kw;
  return tf.tidy(() => {
    // Pad (or crop) x to exactly the rows and columns the forward convolution read.
    const bottom = needH - H - top;
    const right = needW - W - left;
    let xp: tf.Tensor4D = x;
    if (top > 0 || left > 0 || bottom > 0 || right > 0) {
      xp = tf.pad(xp, [[0, 0], [Math.max(top, 0), Math.max(bottom, 0)], [Math.max(left, 0), Math.max(right, 0)], [0, 0]]);
    }
    if (bottom < 0 || right < 0) xp = tf.slice(xp, [0, 0, 0, 0], [-1, needH, needW, -1]);
    const xt = tf.transpose(xp, [3, 1, 2, 0]) as tf.Tensor4D; // [C, Hp, Wp, B]
    const f = tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D; // [Ho, Wo, B, O]
    const r = tf.conv2d(xt, f, 1, 'valid', 'NHWC', sh); // [C, kh, kw, O]
    return tf.transpose(r, [1, 2, 0, 3]) as tf.Tensor4D;
  });
}

/**
 * dx of a stride-1 2-D convolution with 'same' padding and an odd kernel (or 'valid' padding):
 * the forward convolution of dy with the filter rotated by 180° and its channel axes swapped.
 */
function conv2dBackpropInputViaConv(dy: tf.Tensor4D, filter: tf.Tensor4D, attrs: Conv2DGradAttrs): tf.Tensor4D | undefined {
  if ((attrs.dataFormat ?? 'NHWC') !== 'NHWC') return undefined;
  const [sh, sw] = pair(attrs.strides);
  if (sh !== 1 || sw !== 1) return undefined;
  const [kh, kw] = filter.shape;
  let pad: 'same' | [[number, number], [number, number], [number, number], [number, number]];
  if (attrs.pad === 'same' && kh % 2 === 1 && kw % 2 === 1) pad = 'same';
  else if (attrs.pad === 'valid') pad = [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]];
  else return undefined;
  return tf.tidy(() => {
    const rotated = tf.transpose(tf.reverse(filter, [0, 1]), [0, 1, 3, 2]) as tf.Tensor4D;
    return tf.conv2d(dy, rotated, 1, pad);
  });
}

/**
 * Makes convolutions trainable, and fast, on the tfjs `wasm` backend:
 * - registers `Conv2DBackpropFilter` for `wasm` (tfjs-backend-wasm 4.22 has none, so the
 *   gradient of a conv2d kernel throws there), computed as one forward convolution;
 * - replaces wasm's `Conv2DBackpropInput` for stride 1 and 'same' (odd kernel) or 'valid'
 *   padding by a forward convolution with the rotated filter (≈ 8× faster than wasm's own
 *   kernel here); other cases still run the original kernel.
 * Both run inside the kernel as tfjs ops on the same backend (no tape is recorded inside a
 * kernel). Idempotent. Call it once before training on `wasm`; it changes nothing for other
 * backends.
 */
export function registerWasmConvGradients(): void {
  if (wasmGradientsRegistered) return;
  wasmGradientsRegistered = true;
  if (tf.getKernel('Conv2DBackpropFilter', 'wasm') == null) {
    tf.registerKernel({
      kernelName: 'Conv2DBackpropFilter',
      backendName: 'wasm',
      kernelFunc: ({ inputs, attrs }) => {
        const { x, dy } = inputs as unknown as { x: tf.Tensor4D; dy: tf.Tensor4D };
        const a = attrs as unknown as Conv2DGradAttrs;
        const r = conv2dBackpropFilterViaConv(x, dy, a);
        if (r) return r;
        // Fall back to the 3-D kernel wasm has (slower, but general for 'same' / 'valid').
        if ((a.dataFormat ?? 'NHWC') !== 'NHWC' || (a.pad !== 'same' && a.pad !== 'valid') || !a.filterShape) {
          throw new Error(`Conv2DBackpropFilter on wasm (kmcl demo): unsupported configuration ${JSON.stringify({ strides: a.strides, pad: a.pad, dataFormat: a.dataFormat })}`);
        }
        const [sh, sw] = pair(a.strides);
        const [kh, kw, ci, co] = a.filterShape;
        return tf.tidy(() => {
          const x5 = tf.expandDims(x, 1);
          const dy5 = tf.expandDims(dy, 1);
          const g = tf.engine().runKernel('Conv3DBackpropFilterV2', { x: x5, dy: dy5 }, { strides: [1, sh, sw], pad: a.pad, filterShape: [1, kh, kw, ci, co] } as unknown as tf.NamedAttrMap) as tf.Tensor;
          return tf.reshape(g, [kh, kw, ci, co]);
        });
      },
    });
  }
  const existing = tf.getKernel('Conv2DBackpropInput', 'wasm');
  if (existing) {
    originalBackpropInput = existing.kernelFunc;
    tf.unregisterKernel('Conv2DBackpropInput', 'wasm');
    tf.registerKernel({
      kernelName: 'Conv2DBackpropInput',
      backendName: 'wasm',
      kernelFunc: (args) => {
        const { dy, filter } = args.inputs as unknown as { dy: tf.Tensor4D; filter: tf.Tensor4D };
        const r = conv2dBackpropInputViaConv(dy, filter, args.attrs as unknown as Conv2DGradAttrs);
        return r ?? (originalBackpropInput as tf.KernelFunc)(args);
      },
    });
  }
}
