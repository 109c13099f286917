/**
 * The framework-free API: the KMCL loss and its gradients on flat Float32Arrays.
 * Every argument is validated before any native work; errors name the argument.
 */
import { describe, NUMERIC_DOMAIN, resolveOptions, type KmclLossOptions, type ResolvedOptions } from './options.js';
import { nativeAddon, type NativeAddon, type NativeProblem } from './native.js';

export type Device = 'auto' | 'cpu' | 'cuda';

/** One problem, flat and row-major (spec "Shapes"). */
export interface KmclProblem {
  /** B, the number of samples. */
  batch: number;
  /** K, the number of classes. */
  classes: number;
  /** M, the feature dimension. */
  dim: number;
  /** [B, M] */
  features: Float32Array;
  /** [B, K] */
  logits: Float32Array;
  /** [B, K], exactly 0 or 1. */
  labels: Float32Array;
  /** [B, K, muDim] */
  mu: Float32Array;
  /** 1 (isotropic) or `dim` (anisotropic). */
  muDim: number;
  /** [B, Kv, Dv] */
  variance: Float32Array;
  /** [Kv, Dv] with Kv ∈ {1, classes}, Dv ∈ {1, muDim}. */
  varianceShape: readonly [number, number];
}

export interface KmclRawOptions extends KmclLossOptions {
  /** Compute the gradients of the weighted total (default true). */
  gradients?: boolean;
  /** 'auto' (default) uses CUDA when a device is usable, else the CPU. */
  device?: Device;
}

export interface KmclGradients {
  features: Float32Array;
  logits: Float32Array;
  mu: Float32Array;
  variance: Float32Array;
}

export interface KmclRawResult {
  /** The weighted total Σ weight · term. */
  loss: number;
  asl: number;
  reconstruction: number;
  contrastive: number;
  /** Gradients of `loss` w.r.t. each input, present unless `gradients: false`. */
  gradients?: KmclGradients;
}

const RAW_EXTRA_OPTIONS = ['gradients', 'device'] as const;

function positiveInteger(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw new TypeError(`problem.${name} must be a positive integer, got ${describe(v)}`);
  }
  return v;
}

/** Checks a flat array's type, length and finiteness (one pass). */
export function checkArray(where: string, v: unknown, length: number, shape: string, ctor: typeof Float32Array | typeof Float64Array = Float32Array): void {
  if (!(v instanceof ctor)) {
    throw new TypeError(`${where} must be a ${ctor.name} of shape ${shape}, got ${describe(v)}`);
  }
  if (v.length !== length) {
    throw new RangeError(`${where} must have length ${length} (shape ${shape}), got ${v.length}`);
  }
  for (let j = 0; j < length; j++) {
    if (!Number.isFinite(v[j])) {
      throw new RangeError(`${where} must be finite; element ${j} is ${v[j]}`);
    }
  }
}

/**
 * Validates the whole problem; returns nothing, throws a TypeError/RangeError naming the field.
 * `name` turns a field name into the name the caller knows it by (default `problem.<field>`).
 */
export function validateProblem(
  p: unknown,
  ctor: typeof Float32Array | typeof Float64Array = Float32Array,
  name: (field: string) => string = (f) => `problem.${f}`,
): asserts p is KmclProblem {
  if (p === null || typeof p !== 'object') throw new TypeError(`problem must be an object, got ${describe(p)}`);
  const o = p as Record<string, unknown>;
  const B = positiveInteger('batch', o.batch);
  const K = positiveInteger('classes', o.classes);
  const M = positiveInteger('dim', o.dim);
  const D = positiveInteger('muDim', o.muDim);
  if (D !== 1 && D !== M) throw new RangeError(`problem.muDim must be 1 (isotropic) or dim = ${M} (anisotropic), got ${D}`);
  const vs = o.varianceShape;
  if (!Array.isArray(vs) || vs.length !== 2) {
    throw new TypeError(`problem.varianceShape must be [Kv, Dv] with Kv in {1, ${K}} and Dv in {1, ${D}}, got ${describe(vs)}`);
  }
  const [Kv, Dv] = vs as unknown[];
  if (Kv !== 1 && Kv !== K) throw new RangeError(`problem.varianceShape[0] must be 1 or classes = ${K}, got ${describe(Kv)}`);
  if (Dv !== 1 && Dv !== D) throw new RangeError(`problem.varianceShape[1] must be 1 or muDim = ${D}, got ${describe(Dv)}`);
  checkArray(name('features'), o.features, B * M, `[${B}, ${M}]`, ctor);
  checkArray(name('logits'), o.logits, B * K, `[${B}, ${K}]`, ctor);
  checkArray(name('mu'), o.mu, B * K * D, `[${B}, ${K}, ${D}]`, ctor);
  checkArray(name('variance'), o.variance, B * (Kv as number) * (Dv as number), `[${B}, ${Kv}, ${Dv}]`, ctor);
  checkArray(name('labels'), o.labels, B * K, `[${B}, ${K}]`, ctor);
  const labels = o.labels as Float32Array;
  for (let j = 0; j < labels.length; j++) {
    if (labels[j] !== 0 && labels[j] !== 1) {
      const soft = labels[j] > 0 && labels[j] < 1 ? ' (soft labels are not supported: threshold them first, e.g. labels >= 0.5)' : '';
      throw new RangeError(`${name('labels')} must be exactly 0 or 1; element ${j} is ${labels[j]}${soft}`);
    }
  }
  const X = Math.fround(NUMERIC_DOMAIN.maxAbsFeature);
  for (const f of ['features', 'mu'] as const) {
    const a = o[f] as Float32Array;
    for (let j = 0; j < a.length; j++) {
      if (!(Math.abs(a[j]) <= X)) throw new RangeError(`${name(f)} must be in [-${X}, ${X}] (docs/kmcl-loss.md, "Numeric domain"); element ${j} is ${a[j]}`);
    }
  }
  // The bounds as float32 (1e-6 is stored as 9.99999997e-7 in a Float32Array).
  const [vMin, vMax] = NUMERIC_DOMAIN.variance.map(Math.fround);
  const variance = o.variance as Float32Array;
  for (let j = 0; j < variance.length; j++) {
    if (!(variance[j] > 0)) throw new RangeError(`${name('variance')} must be > 0; element ${j} is ${variance[j]}`);
    if (!(variance[j] >= vMin && variance[j] <= vMax)) {
      throw new RangeError(`${name('variance')} must be in [${NUMERIC_DOMAIN.variance.join(', ')}] (docs/kmcl-loss.md, "Numeric domain"); element ${j} is ${variance[j]}`);
    }
  }
}

let resolvedAuto: 'cpu' | 'cuda' | undefined;

/** Resolves 'auto' | 'cpu' | 'cuda' to the device that will run, or throws why CUDA can't. */
/** Checks an `options.device` value. */
export function checkDevice(device: unknown = 'auto'): Device {
  if (device !== 'auto' && device !== 'cpu' && device !== 'cuda') {
    throw new TypeError(`options.device must be 'auto', 'cpu' or 'cuda', got ${describe(device)}`);
  }
  return device;
}

export function resolveDevice(addon: NativeAddon, requested: unknown = 'auto'): 'cpu' | 'cuda' {
  const device = checkDevice(requested);
  if (device === 'cpu') return 'cpu';
  if (device === 'auto') {
    resolvedAuto ??= addon.info().cuda.usable ? 'cuda' : 'cpu';
    return resolvedAuto;
  }
  const cuda = addon.info().cuda;
  if (!cuda.usable) throw new Error(`options.device is 'cuda' but CUDA is not usable: ${cuda.reason ?? 'unknown reason'}`);
  return 'cuda';
}

interface Prepared {
  addon: NativeAddon;
  problem: NativeProblem;
  options: ResolvedOptions;
  gradients: boolean;
  device: 'cpu' | 'cuda';
}

const INPUT_NAMES = ['features', 'logits', 'labels', 'mu', 'variance'] as const;

/**
 * Reads every field of `problem` once into a plain object: a getter cannot hand validation one
 * array and the native call another. Arrays on a SharedArrayBuffer (which another thread may write
 * at any time) are copied here, so what is validated is what is computed.
 */
export function snapshotProblem(problem: unknown): unknown {
  if (problem === null || typeof problem !== 'object') return problem;
  const o = problem as Record<string, unknown>;
  const vs = o.varianceShape;
  const snap: Record<string, unknown> = {
    batch: o.batch,
    classes: o.classes,
    dim: o.dim,
    muDim: o.muDim,
    varianceShape: Array.isArray(vs) ? [...vs] : vs,
  };
  for (const name of INPUT_NAMES) {
    const v = o[name];
    snap[name] = ArrayBuffer.isView(v) && !(v.buffer instanceof ArrayBuffer) && (v instanceof Float32Array || v instanceof Float64Array) ? v.slice() : v;
  }
  return snap;
}

function prepare(problem: KmclProblem, options: KmclRawOptions | undefined): Prepared {
  const resolved = resolveOptions(options, RAW_EXTRA_OPTIONS);
  const gradients = options?.gradients ?? true;
  if (typeof gradients !== 'boolean') throw new TypeError(`options.gradients must be a boolean, got ${describe(gradients)}`);
  const snap = snapshotProblem(problem);
  validateProblem(snap);
  const addon = nativeAddon();
  const device = resolveDevice(addon, options?.device ?? 'auto');
  const p: NativeProblem = {
    batch: snap.batch,
    classes: snap.classes,
    dim: snap.dim,
    muDim: snap.muDim,
    varianceShape: [snap.varianceShape[0], snap.varianceShape[1]],
    features: snap.features,
    logits: snap.logits,
    labels: snap.labels,
    mu: snap.mu,
    variance: snap.variance,
  };
  return { addon, problem: p, options: resolved, gradients, device };
}

/** Counters of kmcl's native job queue (process-wide), for tests and diagnostics. */
export interface AsyncJobStats {
  submitted: number;
  started: number;
  completed: number;
  /** Jobs dropped before they started because their environment was torn down. */
  cancelledQueued: number;
  /** Jobs stopped between work chunks because their environment was torn down. */
  cancelledRunning: number;
  /** Finished jobs whose environment was gone before the result could be delivered. */
  undelivered: number;
  /** Jobs waiting now. */
  queued: number;
}

export function asyncJobStats(): AsyncJobStats {
  return (nativeAddon() as NativeAddon & { jobStats(): AsyncJobStats }).jobStats();
}

/**
 * The KMCL loss and (by default) its gradients, computed synchronously by the fused native path.
 * Inputs are read, never written.
 */
export function kmclLossRaw(problem: KmclProblem, options?: KmclRawOptions): KmclRawResult {
  const p = prepare(problem, options);
  return p.addon.compute(p.problem, p.options, p.gradients, p.device) as KmclRawResult;
}

/**
 * Same as {@link kmclLossRaw}, computed off the main thread on kmcl's own native job queue (never
 * libuv's thread pool), so the event loop and Node's own I/O keep running. The inputs are
 * validated and copied when the call is made: the result is the loss of the inputs as they were at
 * the call, whatever happens to the arrays afterwards (writes, transfers). If the calling thread's
 * environment is torn down first (worker terminated, process.exit), the job is cancelled and the
 * promise never settles.
 */
export async function kmclLossRawAsync(problem: KmclProblem, options?: KmclRawOptions): Promise<KmclRawResult> {
  const p = prepare(problem, options);
  return (await p.addon.computeAsync(p.problem, p.options, p.gradients, p.device)) as KmclRawResult;
}

/**
 * The float64 instantiation of the CPU path, for tests and numerical checks (finite differences).
 * Same problem layout with Float64Arrays.
 */
export function kmclLossRawFloat64(
  problem: Omit<KmclProblem, 'features' | 'logits' | 'labels' | 'mu' | 'variance'> & {
    features: Float64Array;
    logits: Float64Array;
    labels: Float64Array;
    mu: Float64Array;
    variance: Float64Array;
  },
  options?: KmclLossOptions & { gradients?: boolean },
): { loss: number; asl: number; reconstruction: number; contrastive: number; gradients?: Record<'features' | 'logits' | 'mu' | 'variance', Float64Array> } {
  const resolved = resolveOptions(options, ['gradients']);
  const gradients = options?.gradients ?? true;
  if (typeof gradients !== 'boolean') throw new TypeError(`options.gradients must be a boolean, got ${describe(gradients)}`);
  const snap = snapshotProblem(problem) as typeof problem;
  validateProblem(snap as unknown, Float64Array);
  const p = { ...snap, varianceShape: [snap.varianceShape[0], snap.varianceShape[1]] as [number, number] };
  return nativeAddon().computeF64(p, resolved, gradients, 'cpu');
}
