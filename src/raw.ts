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

/** The names of the four gradients, in the order of {@link KmclGradients}. */
export const GRADIENT_NAMES = ['features', 'logits', 'mu', 'variance'] as const;
export type GradientName = (typeof GRADIENT_NAMES)[number];

export interface KmclGradients<A extends Float32Array | Float64Array = Float32Array> {
  /** [B, M] */
  features: A;
  /** [B, K] */
  logits: A;
  /** [B, K, muDim] */
  mu: A;
  /** [B, Kv, Dv] */
  variance: A;
}

/**
 * Caller-provided arrays the gradients are written into (any subset; the others are allocated).
 * Each must be a Float32Array (Float64Array for {@link kmclLossRawFloat64}) of its input's
 * length, on an ordinary (not shared) ArrayBuffer that is not detached, sharing no memory with an
 * input or with another out array. The result's `gradients` then holds these same objects.
 */
export type KmclOut<A extends Float32Array | Float64Array = Float32Array> = Partial<KmclGradients<A>>;

export interface KmclRawOptions extends KmclLossOptions {
  /** Compute the gradients of the weighted total (default true). */
  gradients?: boolean;
  /** 'auto' (default) uses CUDA when a device is usable, else the CPU. */
  device?: Device;
  /**
   * Write the gradients into these arrays instead of new ones (README, "Reusing output arrays:
   * `out`"). Sync calls: the native code writes straight into them. Async calls: they are written
   * when the promise settles, on the calling thread, all or none. Needs `gradients` left on.
   */
  out?: KmclOut;
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

const RAW_EXTRA_OPTIONS = ['gradients', 'device', 'out'] as const;

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
  out?: KmclOut;
}

/**
 * Reads `options.out` once (a getter cannot hand this check one array and the native call
 * another) and checks what needs no shape: an object of known fields, gradients on, the right
 * array type, no SharedArrayBuffer. The native layer then checks, before any work, each array's
 * length, that it is not detached, and that it shares no memory with an input or another out.
 *
 * SharedArrayBuffer-backed outs are refused: kmcl cannot tell whether one shares memory with an
 * input or another out (every postMessage of a SharedArrayBuffer gives a new object for the same
 * memory, and shared inputs are copied before the native call sees them), and another thread
 * could read or write the arrays while they are written.
 */
export function readOut<A extends typeof Float32Array | typeof Float64Array>(
  out: unknown,
  gradients: boolean,
  ctor: A,
): KmclOut<InstanceType<A>> | undefined {
  if (out === undefined) return undefined;
  if (out === null || typeof out !== 'object' || Array.isArray(out) || ArrayBuffer.isView(out)) {
    throw new TypeError(`options.out must be an object { features?, logits?, mu?, variance? } of ${ctor.name}s, got ${describe(out)}`);
  }
  if (!gradients) {
    throw new TypeError('options.out is given but options.gradients is false: out receives the gradients, so drop one of the two');
  }
  for (const key of Object.keys(out)) {
    if (!(GRADIENT_NAMES as readonly string[]).includes(key)) {
      throw new TypeError(`options.out.${key} is not a gradient; out takes ${GRADIENT_NAMES.join(', ')}`);
    }
  }
  const snap: KmclOut<InstanceType<A>> = {};
  for (const name of GRADIENT_NAMES) {
    const v = (out as Record<string, unknown>)[name];
    if (v === undefined) continue;
    if (!(v instanceof ctor)) {
      const dtype = ctor === Float32Array ? 'float32' : 'float64';
      throw new TypeError(`options.out.${name} must be a ${ctor.name} (this is the ${dtype} path), got ${describe(v)}`);
    }
    if (!(v.buffer instanceof ArrayBuffer)) {
      throw new TypeError(
        `options.out.${name} is on a SharedArrayBuffer, which kmcl does not write to: it could not rule out that it shares memory with an input or another out array; pass an ordinary Float32Array and copy it into shared memory yourself`,
      );
    }
    snap[name] = v as InstanceType<A>;
  }
  return snap;
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
  const out = readOut(options?.out, gradients, Float32Array);
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
  return { addon, problem: p, options: resolved, gradients, device, out };
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
  /**
   * Async calls whose buffer set (input copies and gradient buffers) had to be allocated or grown:
   * the pool held no idle set with room enough. Every async call counts here or in `buffersReused`.
   */
  buffersAllocated: number;
  /** Async calls that took an idle buffer set from the pool with room enough (no allocation). */
  buffersReused: number;
  /** Idle buffer sets in the pool now (at most 4). */
  pooledSets: number;
  /** Bytes of capacity of the idle buffer sets now (at most 256 MiB; sets in use not counted). */
  pooledBytes: number;
  /** Buffer sets held by live jobs now (taken, not given back yet): 0 once every job is gone. */
  buffersInUse: number;
}

export function asyncJobStats(): AsyncJobStats {
  return (nativeAddon() as NativeAddon & { jobStats(): AsyncJobStats }).jobStats();
}

/**
 * The KMCL loss and (by default) its gradients, computed synchronously by the fused native path.
 * Inputs are read, never written. With `options.out`, the gradients given there are written
 * straight into those arrays (no other array is allocated for them) and the result's `gradients`
 * holds the same objects; an error leaves them untouched (README, "Reusing output arrays: `out`",
 * for the one CUDA exception).
 */
export function kmclLossRaw(problem: KmclProblem, options?: KmclRawOptions): KmclRawResult {
  const p = prepare(problem, options);
  return p.addon.compute(p.problem, p.options, p.gradients, p.device, p.out) as KmclRawResult;
}

/**
 * Same as {@link kmclLossRaw}, computed off the main thread on kmcl's own native job queue (never
 * libuv's thread pool), so the event loop and Node's own I/O keep running. The inputs are
 * validated and copied when the call is made: the result is the loss of the inputs as they were at
 * the call, whatever happens to the arrays afterwards (writes, transfers). If the calling thread's
 * environment is torn down first (worker terminated, process.exit), the job is cancelled and the
 * promise never settles.
 *
 * With `options.out`, the job computes into its own memory and never touches the out arrays; they
 * are written when the promise settles, on the calling thread, after a second check: if one was
 * detached (transferred) or resized meanwhile, the promise rejects naming it and none is written.
 * Until then they keep whatever they held; writes to them meanwhile are overwritten.
 */
export async function kmclLossRawAsync(problem: KmclProblem, options?: KmclRawOptions): Promise<KmclRawResult> {
  const p = prepare(problem, options);
  return (await p.addon.computeAsync(p.problem, p.options, p.gradients, p.device, p.out)) as KmclRawResult;
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
  options?: KmclLossOptions & { gradients?: boolean; out?: KmclOut<Float64Array> },
): { loss: number; asl: number; reconstruction: number; contrastive: number; gradients?: KmclGradients<Float64Array> } {
  const resolved = resolveOptions(options, ['gradients', 'out']);
  const gradients = options?.gradients ?? true;
  if (typeof gradients !== 'boolean') throw new TypeError(`options.gradients must be a boolean, got ${describe(gradients)}`);
  const out = readOut(options?.out, gradients, Float64Array);
  const snap = snapshotProblem(problem) as typeof problem;
  validateProblem(snap as unknown, Float64Array);
  const p = { ...snap, varianceShape: [snap.varianceShape[0], snap.varianceShape[1]] as [number, number] };
  return nativeAddon().computeF64(p, resolved, gradients, 'cpu', out);
}
