#!/usr/bin/env node
// Builds the native addon with cmake-js (Release, -O3). Runs as kmcl's npm `install` script.
//   KMCL_CUDA=0            force a CPU-only build even when nvcc is found
//   KMCL_BUILD_JOBS=N      parallel compile jobs (default: the number of cores)
//   KMCL_SKIP_NATIVE=1     skip the native build (the tfjs op then falls back to the composite)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const env = process.env;

if (env.KMCL_SKIP_NATIVE === '1') {
  console.log('kmcl: KMCL_SKIP_NATIVE=1, not building the native addon');
  process.exit(0);
}

const cudaOff = ['0', 'off', 'false', 'no'].includes(String(env.KMCL_CUDA ?? '').toLowerCase());
const jobs = Number(env.KMCL_BUILD_JOBS) > 0 ? Number(env.KMCL_BUILD_JOBS) : availableParallelism();

let cmakeJs;
try {
  cmakeJs = createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js');
} catch {
  fail('cmake-js is not installed', 'run `npm install` in the kmcl folder (cmake-js is a dependency of kmcl)');
}

const args = [cmakeJs, 'rebuild', '--directory', root, '--config', 'Release', '--parallel', String(jobs)];
if (cudaOff) args.push('--CDKMCL_CUDA=OFF');
// The native test and benchmark are built in a development checkout (which has test/), not when
// kmcl is installed as a dependency.
if (!existsSync(join(root, 'test', 'fixtures'))) args.push('--CDKMCL_NATIVE_TOOLS=OFF');
console.log(`kmcl: building the native addon (${cudaOff ? 'CPU only, KMCL_CUDA=0' : 'CPU, and CUDA if nvcc is found'}, ${jobs} jobs)`);
const result = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit', env });
if (result.error) fail(`could not start cmake-js: ${result.error.message}`, 'check that Node and cmake-js are installed');
if (result.status !== 0) {
  fail(
    `cmake-js exited with code ${result.status}`,
    [
      'kmcl needs CMake >= 3.18 and a C++17 compiler (g++ >= 9 or clang >= 10) on PATH.',
      'Debian/Ubuntu: apt-get install cmake g++ ; macOS: xcode-select --install && brew install cmake.',
      'If the failure is in a .cu file, retry with KMCL_CUDA=0 for a CPU-only build, or check that',
      'nvcc supports the listed architectures (sm_75 and newer) and your host compiler.',
      'The full compiler output is above.',
    ].join('\n  '),
  );
}

function fail(what, fix) {
  console.error(`\nkmcl: the native build failed: ${what}\n  ${fix}\n`);
  process.exit(1);
}
