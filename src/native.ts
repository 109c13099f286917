/**
 * Loads the native addon and reports which backends this build has and can use.
 * Every failed load attempt is collected into one error that says what to do.
 */
import { existsSync, readFileSync } from 'node:fs';
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

/** Caller-provided gradient arrays (any subset); the addon checks them again before any work. */
export type NativeOut<A extends Float32Array | Float64Array = Float32Array> = Partial<Record<'features' | 'logits' | 'mu' | 'variance', A>>;

export interface NativeAddon {
  compute(problem: NativeProblem, options: object, gradients: boolean, device: 'cpu' | 'cuda', out?: NativeOut): NativeResult;
  computeF64(problem: NativeProblem<Float64Array>, options: object, gradients: boolean, device: 'cpu', out?: NativeOut<Float64Array>): NativeResult<Float64Array>;
  computeAsync(problem: NativeProblem, options: object, gradients: boolean, device: 'cpu' | 'cuda', out?: NativeOut): Promise<NativeResult>;
  info(): { cpu: { threads: number; threadsError?: string; isa: CpuIsa; isaAvailable: CpuIsa[]; isaCompiled: CpuIsa[]; isaError?: string }; cuda: NativeCudaInfo; napiVersion: number };
  releaseDeviceMemory(): void;
}

// The one place that needs this module's location. The CommonJS build (scripts/build-cjs.mjs)
// replaces the expression below by the file URL of `__filename`; @ts-ignore because tsc rejects
// it when it compiles that build.
// @ts-ignore
const moduleUrl: string = import.meta.url;
const moduleDir = dirname(fileURLToPath(moduleUrl));

/** kmcl's package folder: the nearest folder above this module whose package.json is kmcl's. */
function findPackageRoot(): { root: string; version: string } {
  for (let dir = moduleDir; ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      try {
        const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
        if (pkg.name === 'kmcl') return { root: dir, version: String(pkg.version) };
      } catch {
        // not a readable package.json: keep looking upwards
      }
    }
    if (dirname(dir) === dir) return { root: resolve(moduleDir, '..'), version: 'unknown' };
  }
}

const pkg = findPackageRoot();

/** kmcl's installed folder and version (where a source build goes: `build/Release/kmcl.node`). */
export function kmclPackage(): { root: string; version: string } {
  return { ...pkg };
}

let cached: { addon?: NativeAddon; path?: string; error?: Error } | undefined;

/** The C library of this Linux process, detected at run time: 'gnu' (glibc) or 'musl'. */
export function linuxLibc(): 'gnu' | 'musl' {
  const report = process.report as (NodeJS.ProcessReport & { excludeNetwork?: boolean }) | undefined;
  if (!report) return existsSync('/etc/alpine-release') ? 'musl' : 'gnu';
  const excluded = report.excludeNetwork;
  report.excludeNetwork = true;
  try {
    const header = (report.getReport() as { header?: { glibcVersionRuntime?: string } }).header;
    return header?.glibcVersionRuntime ? 'gnu' : 'musl';
  } finally {
    report.excludeNetwork = excluded;
  }
}

/**
 * The name of the prebuilt-binary package for this platform, CPU and (on Linux) C library, e.g.
 * `@kmcl/linux-x64-gnu`, `@kmcl/darwin-arm64`, `@kmcl/win32-x64`.
 */
export function platformPackageName(platform: string = process.platform, arch: string = process.arch, libc?: 'gnu' | 'musl'): string {
  const suffix = platform === 'linux' ? `-${libc ?? linuxLibc()}` : '';
  return `@kmcl/${platform}-${arch}${suffix}`;
}

/** One place the loader looks for the addon. */
export interface AddonCandidate {
  /** `env`: KMCL_ADDON_PATH; `source`: a source build in kmcl's folder; `package`: the platform package. */
  kind: 'env' | 'source' | 'package';
  /** The .node file, or for a package that is not installed, its name. */
  path: string;
  /** Set when the candidate is known to be unusable before loading it (e.g. a version mismatch). */
  refused?: string;
}

/**
 * Candidate addons, in the order they are tried: `KMCL_ADDON_PATH` alone when it is set; else a
 * source build `build/Release/kmcl.node` in kmcl's folder, then the platform package.
 */
export function addonCandidates(): AddonCandidate[] {
  // An explicit path is the only one tried: a user who names a build gets that build or an error.
  if (process.env.KMCL_ADDON_PATH) return [{ kind: 'env', path: resolve(process.env.KMCL_ADDON_PATH) }];
  const list: AddonCandidate[] = [{ kind: 'source', path: join(pkg.root, 'build', 'Release', 'kmcl.node') }];
  const name = platformPackageName();
  let manifest: string | undefined;
  try {
    manifest = createRequire(join(pkg.root, 'package.json')).resolve(`${name}/package.json`);
  } catch {
    list.push({ kind: 'package', path: name, refused: 'not installed' });
    return list;
  }
  const dir = dirname(manifest);
  let version = 'unreadable';
  try {
    version = String((JSON.parse(readFileSync(manifest, 'utf8')) as { version?: string }).version);
  } catch {
    // reported below as a mismatch
  }
  const path = join(dir, 'kmcl.node');
  if (version !== pkg.version) {
    list.push({ kind: 'package', path, refused: `${name}@${version} does not match kmcl@${pkg.version}; install ${name}@${pkg.version}` });
  } else {
    list.push({ kind: 'package', path });
  }
  return list;
}

function load(): { addon?: NativeAddon; path?: string; error?: Error } {
  const require = createRequire(moduleUrl);
  const attempts: string[] = [];
  for (const c of addonCandidates()) {
    const label = c.kind === 'env' ? 'KMCL_ADDON_PATH' : c.kind === 'source' ? 'source build' : 'platform package';
    if (c.refused) {
      attempts.push(`  ${label} ${c.path}: ${c.refused}`);
      continue;
    }
    if (!existsSync(c.path)) {
      attempts.push(`  ${label} ${c.path}: not found`);
      continue;
    }
    try {
      return { addon: require(c.path) as NativeAddon, path: c.path };
    } catch (e) {
      attempts.push(`  ${label} ${c.path}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const name = platformPackageName();
  const error = new Error(
    [
      `kmcl: the native addon could not be loaded (kmcl@${pkg.version}, ${process.platform}-${process.arch}). Tried:`,
      ...attempts,
      'To get one, either:',
      `  - install the prebuilt binary: it is the optional dependency ${name}; reinstall without`,
      `    --omit=optional (or --no-optional), e.g. \`npm install kmcl\`, or add it: \`npm install ${name}@${pkg.version}\``,
      '  - or build from source (CMake >= 3.18, a C++17 compiler, nvcc for CUDA):',
      `    \`npm install --no-save cmake-js@8.0.0 node-addon-api@8 && npx kmcl build\``,
      '    which writes build/Release/kmcl.node inside kmcl\'s folder;',
      '  - or point KMCL_ADDON_PATH at a kmcl.node you built.',
      'See the README, "Installing kmcl into your project".',
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
    /** The instruction sets compiled into this build. */
    isaCompiled?: CpuIsa[];
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
      isaCompiled: info.cpu.isaCompiled,
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
