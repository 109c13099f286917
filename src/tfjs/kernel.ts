/**
 * The `KmclLoss` kernel: one body for the `cpu` backend and the `tensorflow` backend (the name
 * tfjs-node and tfjs-node-gpu register), and for `wasm`. It touches the backend only through
 * `readSync` (the input values; on `cpu` the backend's own arrays, read and never written) and
 * `write` (the outputs), so it runs wherever those two exist.
 *
 * Outputs: [loss, asl, reconstruction, contrastive] as float32 scalars and, when the op asked for
 * gradients (the tape is recording), the gradients of `loss` w.r.t. features, logits, mu and
 * variance, which the registered gradient scales by the upstream gradient.
 */
import * as tf from '@tensorflow/tfjs';
import type { ResolvedOptions } from '../options.js';
import { nativeAddon } from '../native.js';
import { resolveDevice, validateProblem, type Device } from '../raw.js';

export const KMCL_LOSS = 'KmclLoss';

/** Backends the kernel is registered for. */
export const KERNEL_BACKENDS = ['cpu', 'tensorflow', 'wasm'] as const;

export interface KmclLossAttrs {
  options: ResolvedOptions;
  computeGradients: boolean;
  device: Device;
}

/** Counters for tests: how often the kernel ran, and how often it computed gradients. */
export const kernelCounters = { forward: 0, withGradients: 0 };

interface MinimalBackend {
  readSync(dataId: object): unknown;
  write(values: Float32Array, shape: number[], dtype: 'float32'): object;
}

function read(backend: MinimalBackend, t: tf.TensorInfo, name: string): Float32Array {
  const values = backend.readSync(t.dataId);
  if (values instanceof Float32Array) return values;
  // Labels may arrive as int32/bool; any other float input is float32 by the op's checks.
  if (ArrayBuffer.isView(values)) return Float32Array.from(values as unknown as ArrayLike<number>);
  throw new TypeError(`kmclLoss: cannot read ${name} from the ${tf.getBackend()} backend`);
}

export function kmclLossKernel({ inputs, attrs, backend }: { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap; backend: unknown }): tf.TensorInfo[] {
  const { options, computeGradients, device } = attrs as unknown as KmclLossAttrs;
  const b = backend as MinimalBackend;
  const { features, logits, mu, variance, labels } = inputs as Record<'features' | 'logits' | 'mu' | 'variance' | 'labels', tf.TensorInfo>;
  const [B, M] = features.shape;
  const K = logits.shape[1];
  const problem = {
    batch: B,
    classes: K,
    dim: M,
    muDim: mu.shape[2],
    varianceShape: [variance.shape[1], variance.shape[2]] as [number, number],
    features: read(b, features, 'features'),
    logits: read(b, logits, 'logits'),
    labels: read(b, labels, 'labels'),
    mu: read(b, mu, 'mu'),
    variance: read(b, variance, 'variance'),
  };
  // Errors name the op's tensors (`kmclLoss: labels ...`), not the raw API's problem fields.
  validateProblem(problem, Float32Array, (field) => `kmclLoss: ${field}`);
  const addon = nativeAddon();
  const r = addon.compute(problem, options, computeGradients, resolveDevice(addon, device));
  kernelCounters.forward++;
  const scalar = (v: number): tf.TensorInfo => ({ dataId: b.write(new Float32Array([v]), [], 'float32'), shape: [], dtype: 'float32' });
  const out = [scalar(r.loss), scalar(r.asl), scalar(r.reconstruction), scalar(r.contrastive)];
  if (computeGradients && r.gradients) {
    kernelCounters.withGradients++;
    const g = r.gradients;
    const t = (values: Float32Array, like: tf.TensorInfo): tf.TensorInfo => ({ dataId: b.write(values, like.shape.slice(), 'float32'), shape: like.shape.slice(), dtype: 'float32' });
    out.push(t(g.features, features), t(g.logits, logits), t(g.mu, mu), t(g.variance, variance));
  }
  return out;
}

/**
 * The registered gradient: the forward pass saved the gradients of `loss`; backward multiplies
 * them by the upstream gradient of `loss`. The parts (asl, reconstruction, contrastive) are
 * reported values, not differentiable outputs: weight them with `options.weights` instead.
 */
export const kmclLossGradConfig: tf.GradConfig = {
  kernelName: KMCL_LOSS,
  inputsToSave: ['labels'],
  outputsToSave: [false, false, false, false, true, true, true, true],
  gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
    const dys = dy as (tf.Tensor | null)[];
    const [labels, gFeatures, gLogits, gMu, gVariance] = saved;
    // The engine hands zeros for outputs off the backprop path, so a nonzero upstream gradient of
    // a part is the only sign that someone differentiated it (three scalar reads).
    if (dys.slice(1, 4).some((d) => d != null && d.dataSync()[0] !== 0)) {
      throw new Error(
        'kmclLoss: only the `loss` output is differentiable; asl, reconstruction and contrastive are reported values. ' +
          'To train on a different mix of the terms, set options.weights.',
      );
    }
    if (gFeatures === undefined) {
      throw new Error('kmclLoss: the forward pass ran without the gradient tape, so no gradients were saved');
    }
    const up = dys[0] ?? tf.scalar(0);
    return {
      features: () => tf.mul(gFeatures, up),
      logits: () => tf.mul(gLogits, up),
      mu: () => tf.mul(gMu, up),
      variance: () => tf.mul(gVariance, up),
      labels: () => tf.zerosLike(labels),
    };
  },
};

let registered = false;

/**
 * Registers the kernel for every backend name in {@link KERNEL_BACKENDS} and the gradient.
 * Idempotent, also across two copies of kmcl in one process: an existing registration is kept.
 * Registration is by backend name, so it works whether the backend became active before or after.
 */
export function registerKmclKernels(): void {
  if (registered) return;
  for (const backendName of KERNEL_BACKENDS) {
    if (tf.getKernel(KMCL_LOSS, backendName) == null) {
      tf.registerKernel({ kernelName: KMCL_LOSS, backendName, kernelFunc: kmclLossKernel as unknown as tf.KernelFunc });
    }
  }
  if (tf.getGradient(KMCL_LOSS) == null) tf.registerGradient(kmclLossGradConfig);
  registered = true;
}
