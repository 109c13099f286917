/**
 * Loads the native addon and reports which backends this build has and can use.
 * Every failed load attempt is collected into one error that says what to do.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Flat, row-major problem passed to the addon. */
export interface NativeProblem<A extends Float32Array | Float64Array = Float32Array> {
  batch: number;
  classes: number;
  dim: number;
  muDim: number;
  varianceShape: [number, number];
  features: A;
  logits: A;
  labels: A;
  mu: A;
  variance: A;
}

export interface NativeResult<A extends Float32Array | Float64Array = Float32Array> {
  loss: number;
  asl: number;
  reconstruction: number;
  contrastive: number;
  gradients?: { features: A; logits: A; mu: A; variance: A };
}

export interface NativeCudaInfo {
  compiled: boolean;
  usable: boolean;
  reason?: string;
  deviceName?: string;
  computeCapability?: string;
  totalMemory?: number;
  runtimeVersion?: number;
  driverVersion?: number;
}

export interface NativeAddon {
  compute(problem: NativeProblem, options: object, gradients: boolean, device: 'cpu' | 'cuda'): NativeResult;
  computeF64(problem: NativeProblem<Float64Array>, options: object, gradients: boolean, device: 'cpu'): NativeResult<Float64Array>;
  computeAsync(problem: NativeProblem, options: object, gradients: boolean, device: 'cpu' | 'cuda'): Promise<NativeResult>;
  info(): { cpu: { threads: number; threadsError?: string; isa: CpuIsa; isaAvailable: CpuIsa[]; isaError?: string }; cuda: NativeCudaInfo; napiVersion: number };
  releaseDeviceMemory(): void;
}

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

let cached: { addon?: NativeAddon; path?: string; error?: Error } | undefined;

/** Candidate addon paths, in the order they are tried. */
export function addonCandidates(): string[] {
  // An explicit path is the only one tried: a user who names a build gets that build or an error.
  if (process.env.KMCL_ADDON_PATH) return [resolve(process.env.KMCL_ADDON_PATH)];
  const list: string[] = [];
  list.push(join(packageRoot, 'build', 'Release', 'kmcl.node'));
  list.push(join(packageRoot, 'build', 'Debug', 'kmcl.node'));
  return list;
}

function load(): { addon?: NativeAddon; path?: string; error?: Error } {
  const require = createRequire(import.meta.url);
  const attempts: string[] = [];
  for (const path of addonCandidates()) {
    if (!existsSync(path)) {
      attempts.push(`  ${path}: not found`);
      continue;
    }
    try {
      return { addon: require(path) as NativeAddon, path };
    } catch (e) {
      attempts.push(`  ${path}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const error = new Error(
    [
      'kmcl: the native addon could not be loaded. Tried:',
      ...attempts,
      'To build it, run `npm rebuild kmcl` (or `npm run build:native` inside the kmcl folder).',
      'npm 11 does not run dependencies\' install scripts by default: allow kmcl\'s build with',
      '`npm install-scripts approve kmcl` and then `npm rebuild kmcl`;',
      'see the README, "Installing kmcl into your project".',
    ].join('\n'),
  );
  return { error };
}

/** The addon, or throws the collected load error. */
export function nativeAddon(): NativeAddon {
  cached ??= load();
  if (!cached.addon) throw cached.error!;
  return cached.addon;
}

/** The addon, or undefined with the reason (for fallbacks that must not throw). */
export function tryNativeAddon(): { addon?: NativeAddon; error?: Error } {
  cached ??= load();
  return cached;
}

/** Instruction set of the CPU path's float32 kernels (KMCL_CPU_ISA forces one). */
export type CpuIsa = 'baseline' | 'avx2' | 'avx512';

export interface BackendInfo {
  /** Whether the native addon loaded, and from where. */
  native: { loaded: boolean; path?: string; error?: string };
  /**
   * The CPU path: always compiled; the worker threads it uses (KMCL_NUM_THREADS or the cores).
   * With an invalid KMCL_NUM_THREADS, `threads` is 0 and `threadsError` says why (CPU calls then
   * throw the same error).
   */
  cpu: {
    compiled: boolean;
    threads: number;
    threadsError?: string;
    /** Instruction set of the float32 kernels: the best this CPU supports, or KMCL_CPU_ISA. */
    isa?: CpuIsa;
    /** The instruction sets compiled in and supported by this CPU. */
    isaAvailable?: CpuIsa[];
    /** Why KMCL_CPU_ISA cannot be used (native calls then fail with this message). */
    isaError?: string;
  };
  /** The CUDA path: whether this build has it, whether a device is usable, and if not, why. */
  cuda: NativeCudaInfo;
  /** What `device: 'auto'` picks right now. */
  defaultDevice: 'cpu' | 'cuda';
}

/** Which backends were compiled, which device is usable, and why CUDA is not, in one call. */
export function backendInfo(): BackendInfo {
  const { addon, error } = tryNativeAddon();
  if (!addon) {
    return {
      native: { loaded: false, error: error?.message },
      cpu: { compiled: false, threads: 0 },
      cuda: { compiled: false, usable: false, reason: 'the native addon is not loaded' },
      defaultDevice: 'cpu',
    };
  }
  const info = addon.info();
  return {
    native: { loaded: true, path: cached?.path },
    cpu: {
      compiled: true,
      threads: info.cpu.threadsError ? 0 : info.cpu.threads,
      ...(info.cpu.threadsError ? { threadsError: info.cpu.threadsError } : {}),
      isa: info.cpu.isa,
      isaAvailable: info.cpu.isaAvailable,
      ...(info.cpu.isaError ? { isaError: info.cpu.isaError } : {}),
    },
    cuda: info.cuda,
    defaultDevice: info.cuda.usable ? 'cuda' : 'cpu',
  };
}

/** Frees the CUDA workspace and pinned staging buffers (a no-op without CUDA). */
export function releaseDeviceMemory(): void {
  const { addon } = tryNativeAddon();
  addon?.releaseDeviceMemory();
}
