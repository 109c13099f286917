/**
 * `kmclLoss`: the fused KMCL loss as a tfjs op. Validates, then runs the registered `KmclLoss`
 * kernel; gradients are computed in the same native pass only when the tape is recording.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, resolveOptions, type KmclLossOptions } from '../options.js';
import { tryNativeAddon } from '../native.js';
import { checkDevice, type Device } from '../raw.js';
import { KERNEL_BACKENDS, KMCL_LOSS, registerKmclKernels, type KmclLossAttrs } from './kernel.js';
import { checkKmclInputs, kmclLossReference, type KmclLossInputs, type KmclLossTerms } from './reference.js';

/**
 * The op's inputs: the spec's tensors (see {@link KmclLossInputs} for their shapes) typed as
 * `tf.Tensor` of any rank, so that model outputs (`tf.Tensor[]`) pass without casts. Ranks and
 * shapes are checked at run time, before any work, with errors that name the tensor.
 */
export type KmclOpInputs = { [Name in keyof KmclLossInputs]: tf.Tensor };

export interface KmclOpOptions extends KmclLossOptions {
  /** 'auto' (default): CUDA when usable, else the CPU. The data is read from the tfjs backend either way. */
  device?: Device;
  /**
   * What to do when the fused kernel cannot run (no native addon, or a tfjs backend without the
   * `KmclLoss` kernel): 'warn' (default) computes the same loss with the plain-tfjs composite
   * and warns once; 'error' throws the reason instead. The environment variable
   * `KMCL_FALLBACK=error` sets 'error' for every call that does not say otherwise.
   */
  fallback?: 'warn' | 'error';
}

/** What the composite costs next to the fused kernel (bench/RESULTS.md, CPU, fwd+bwd, K = 20, M = 1). */
export const FALLBACK_COST =
  'the composite builds B×B×K pair tensors: about 270-560× slower than the fused CPU kernel at B = 32-512 ' +
  '(bench/RESULTS.md) and O(B²·K·D) memory (≈ 10 GiB at B = 256, K = 20, D = 64)';

registerKmclKernels();

let warnedFallback = false;

/** Why the op would fall back to the composite right now, or undefined when the fused kernel runs. */
export function kmclFallbackReason(): string | undefined {
  const { addon, error } = tryNativeAddon();
  if (!addon) return `the native addon is not available:\n${error?.message ?? 'unknown error'}`;
  const backend = tf.getBackend();
  if (!(KERNEL_BACKENDS as readonly string[]).includes(backend)) {
    return `the active tfjs backend '${backend}' is not one of ${KERNEL_BACKENDS.join(', ')}`;
  }
  return undefined;
}

function checkFallback(value: unknown): 'warn' | 'error' {
  const v = value ?? (process.env.KMCL_FALLBACK === 'error' ? 'error' : 'warn');
  if (v !== 'warn' && v !== 'error') throw new TypeError(`kmclLoss: options.fallback must be 'warn' or 'error', got ${describe(v)}`);
  return v;
}

/**
 * A features tensor whose batch size disagrees with all four other inputs is the one to blame
 * (the shared checks take B from features and would blame logits).
 */
function checkFeaturesBatch(inputs: KmclLossInputs): void {
  const b = (t: unknown) => (t instanceof tf.Tensor && t.rank >= 1 ? t.shape[0] : undefined);
  const fb = b(inputs.features);
  const others = [b(inputs.logits), b(inputs.labels), b(inputs.mu), b(inputs.variance)];
  if (fb !== undefined && others.every((x) => x !== undefined && x === others[0]) && fb !== others[0]) {
    throw new Error(`kmclLoss: features must have shape [B, M] with B = ${others[0]} like logits, labels, mu and variance, got [${(inputs.features as tf.Tensor).shape.join(', ')}]`);
  }
}

/**
 * The KMCL loss of `inputs` (spec shapes: features [B,M], logits [B,K], mu [B,K,D], variance
 * [B,Kv,Dv], labels [B,K]) as float32 scalars `{ loss, asl, reconstruction, contrastive }`;
 * `loss` is the weighted total and the only differentiable output.
 *
 * The caller owns all four returned scalars: outside `tf.tidy`, dispose every one of them
 * (`tf.dispose(Object.values(result))`), not only `loss`, or three tensors leak per call.
 *
 * Runs the fused native kernel. When the addon cannot be loaded, or the active backend has no
 * `KmclLoss` kernel (e.g. webgl), it computes the same function with {@link kmclLossReference}
 * and warns once with the whole reason and what it costs ({@link FALLBACK_COST}); with
 * `options.fallback: 'error'` (or `KMCL_FALLBACK=error`) it throws instead. `options` may be
 * omitted, undefined or null (the defaults).
 */
export function kmclLoss(inputs: KmclOpInputs, options: KmclOpOptions | null = {}): KmclLossTerms {
  const opts: KmclOpOptions = options ?? {};
  if (inputs !== null && typeof inputs === 'object') checkFeaturesBatch(inputs as KmclLossInputs);
  checkKmclInputs(inputs, 'kmclLoss');
  const resolved = resolveOptions(opts, ['device', 'fallback']);
  const device = checkDevice(opts.device);
  const fallback = checkFallback(opts.fallback);
  const reason = kmclFallbackReason();
  if (reason !== undefined) {
    if (fallback === 'error') {
      throw new Error(`kmclLoss: the fused kernel cannot run (options.fallback is 'error'): ${reason}`);
    }
    if (!warnedFallback) {
      warnedFallback = true;
      console.warn(
        `kmcl: using the plain-tfjs composite instead of the fused kernel. Cost: ${FALLBACK_COST}. ` +
          `Set options.fallback = 'error' or KMCL_FALLBACK=error to make this an error. Reason: ${reason}`,
      );
    }
    const { device: _device, fallback: _fallback, ...lossOptions } = opts;
    return kmclLossReference(inputs as KmclLossInputs, lossOptions);
  }
  const computeGradients = tf.engine().isTapeOn();
  const attrs: KmclLossAttrs = { options: resolved, computeGradients, device };
  const labels = inputs.labels.dtype === 'float32' ? inputs.labels : tf.cast(inputs.labels, 'float32');
  let out: tf.Tensor[];
  try {
    out = tf.engine().runKernel(
      KMCL_LOSS,
      { features: inputs.features, logits: inputs.logits, mu: inputs.mu, variance: inputs.variance, labels } as unknown as tf.NamedTensorMap,
      attrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
  } finally {
    if (labels !== inputs.labels) labels.dispose();
  }
  // The gradient outputs live on in the tape's saved copies; these handles are not needed.
  for (const t of out.slice(4)) t.dispose();
  return { loss: out[0] as tf.Scalar, asl: out[1] as tf.Scalar, reconstruction: out[2] as tf.Scalar, contrastive: out[3] as tf.Scalar };
}
