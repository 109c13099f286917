/**
 * `kmcl build`: builds the native addon from source into kmcl's own folder
 * (`build/Release/kmcl.node`), incrementally, with scripts/build-native.mjs. For machines without
 * a prebuilt platform package, or to build with CUDA for a newer toolkit. Needs CMake >= 3.18, a
 * C++17 compiler, and cmake-js + node-addon-api (development dependencies of kmcl).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { kmclPackage } from './native.js';

export const BUILD_USAGE = `usage:
  kmcl build [--cpu-only] [--jobs N] [--cuda-architectures LIST] [--verbose]
      builds build/Release/kmcl.node in kmcl's folder from source (incremental; log in
      build/kmcl-build.log); the loader prefers it to the platform package.
      --cpu-only: no CUDA path even when nvcc is found (KMCL_CUDA=0)
      --cuda-architectures: e.g. 90 or "86-real;90-real" (default: every supported architecture)
      needs CMake >= 3.18, a C++17 compiler, nvcc for CUDA, and
      \`npm install --no-save cmake-js@8.0.0 node-addon-api@8\` in a project that uses kmcl`;

/** Runs `kmcl build ARGS`; returns the exit code. */
export function buildCommand(args: string[]): number {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const value = () => {
      const v = args[++i];
      if (v === undefined || v.startsWith('--')) throw new Error(`${a} needs a value`);
      return v;
    };
    try {
      if (a === '--help' || a === '-h') {
        process.stdout.write(BUILD_USAGE + '\n');
        return 0;
      } else if (a === '--cpu-only') env.KMCL_CUDA = '0';
      else if (a === '--verbose') env.KMCL_BUILD_VERBOSE = '1';
      else if (a === '--jobs') {
        const n = value();
        if (!/^[1-9]\d*$/.test(n)) throw new Error(`--jobs must be a positive integer, got "${n}"`);
        env.KMCL_BUILD_JOBS = n;
      } else if (a === '--cuda-architectures') env.KMCL_CUDA_ARCHITECTURES = value();
      else throw new Error(`unknown argument "${a}"`);
    } catch (e) {
      process.stderr.write(`kmcl build: ${(e as Error).message}\n${BUILD_USAGE}\n`);
      return 2;
    }
  }
  const { root } = kmclPackage();
  const script = join(root, 'scripts', 'build-native.mjs');
  if (!existsSync(script)) {
    process.stderr.write(`kmcl build: scripts/build-native.mjs is missing from kmcl's folder (${root})\n`);
    return 1;
  }
  const r = spawnSync(process.execPath, [script], { stdio: 'inherit', env });
  if (r.error) {
    process.stderr.write(`kmcl build: could not run ${script}: ${r.error.message}\n`);
    return 1;
  }
  return r.status ?? 1;
}
