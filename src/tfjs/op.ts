/**
 * `kmclLoss`: the fused KMCL loss as a tfjs op. Validates, then runs the registered `KmclLoss`
 * kernel; gradients are computed in the same native pass only when the tape is recording.
 */
import * as tf from '@tensorflow/tfjs';
import { resolveOptions, type KmclLossOptions } from '../options.js';
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
}

registerKmclKernels();

let warnedFallback = false;

/** Why the op would fall back to the composite right now, or undefined when the fused kernel runs. */
export function kmclFallbackReason(): string | undefined {
  const { addon, error } = tryNativeAddon();
  if (!addon) return `the native addon is not available (${error?.message.split('\n')[0]})`;
  const backend = tf.getBackend();
  if (!(KERNEL_BACKENDS as readonly string[]).includes(backend)) {
    return `the active tfjs backend '${backend}' is not one of ${KERNEL_BACKENDS.join(', ')}`;
  }
  return undefined;
}

/**
 * The KMCL loss of `inputs` (spec shapes: features [B,M], logits [B,K], mu [B,K,D], variance
 * [B,Kv,Dv], labels [B,K]) as float32 scalars `{ loss, asl, reconstruction, contrastive }`;
 * `loss` is the weighted total and the only differentiable output.
 *
 * Runs the fused native kernel. When the addon cannot be loaded, or the active backend has no
 * `KmclLoss` kernel (e.g. webgl), it computes the same function with {@link kmclLossReference}
 * and warns once, naming the reason.
 */
export function kmclLoss(inputs: KmclOpInputs, options: KmclOpOptions = {}): KmclLossTerms {
  checkKmclInputs(inputs, 'kmclLoss');
  const resolved = resolveOptions(options, ['device']);
  const device = checkDevice(options.device);
  const reason = kmclFallbackReason();
  if (reason !== undefined) {
    if (!warnedFallback) {
      warnedFallback = true;
      console.warn(`kmcl: using the plain-tfjs composite instead of the fused kernel: ${reason}`);
    }
    const { device: _device, ...lossOptions } = options;
    return kmclLossReference(inputs as KmclLossInputs, lossOptions);
  }
  const computeGradients = tf.engine().isTapeOn();
  const attrs: KmclLossAttrs = { options: resolved, computeGradients, device };
  const labels = inputs.labels.dtype === 'float32' ? inputs.labels : tf.cast(inputs.labels, 'float32');
  const out = tf.engine().runKernel(
    KMCL_LOSS,
    { features: inputs.features, logits: inputs.logits, mu: inputs.mu, variance: inputs.variance, labels } as unknown as tf.NamedTensorMap,
    attrs as unknown as tf.NamedAttrMap,
  ) as tf.Tensor[];
  if (labels !== inputs.labels) labels.dispose();
  // The gradient outputs live on in the tape's saved copies; these handles are not needed.
  for (const t of out.slice(4)) t.dispose();
  return { loss: out[0] as tf.Scalar, asl: out[1] as tf.Scalar, reconstruction: out[2] as tf.Scalar, contrastive: out[3] as tf.Scalar };
}
