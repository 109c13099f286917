#!/usr/bin/env node
// Builds the native addon from source into build/Release/kmcl.node (Release, -O3), incrementally:
// an existing build/ is reused (cmake-js `configure` only when the configuration changed, then
// `cmake-js build`; never `rebuild`, which wipes the folder). The compiler output goes to
// build/kmcl-build.log; the console gets one line at the start and one at the end naming the built
// file and what it contains. Run by `npm run build:native` and by `npx kmcl build`.
// It is not an install script: kmcl has none (prebuilt binaries come as platform packages).
//   KMCL_CUDA=0                  CPU-only build even when nvcc is found
//   KMCL_CUDA_ARCHITECTURES=L    CMAKE_CUDA_ARCHITECTURES (default: CMakeLists.txt's release list)
//   KMCL_BUILD_JOBS=N            parallel compile jobs (default: the number of cores)
//   KMCL_BUILD_VERBOSE=1         compiler output on the console as well as in the log
//   KMCL_SKIP_NATIVE=1           do nothing
import { spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const env = process.env;
const buildDir = join(root, 'build');
const addon = join(buildDir, 'Release', 'kmcl.node');
const logPath = join(buildDir, 'kmcl-build.log');

if (env.KMCL_SKIP_NATIVE === '1') {
  console.log('kmcl: KMCL_SKIP_NATIVE=1, not building the native addon');
  process.exit(0);
}

const cudaOff = ['0', 'off', 'false', 'no'].includes(String(env.KMCL_CUDA ?? '').toLowerCase());
const jobs = Number(env.KMCL_BUILD_JOBS) > 0 ? Number(env.KMCL_BUILD_JOBS) : availableParallelism();
const verbose = env.KMCL_BUILD_VERBOSE === '1';

let cmakeJs;
try {
  cmakeJs = createRequire(join(root, 'package.json')).resolve('cmake-js/bin/cmake-js');
  createRequire(join(root, 'package.json')).resolve('node-addon-api');
} catch {
  fail(
    'cmake-js or node-addon-api is not installed (they are development dependencies of kmcl)',
    'in the kmcl repository: `npm install`; in a project that uses kmcl: `npm install --no-save cmake-js@8.0.0 node-addon-api@8`',
  );
}

const defines = [];
if (cudaOff) defines.push('--CDKMCL_CUDA=OFF');
if (env.KMCL_CUDA_ARCHITECTURES) defines.push(`--CDCMAKE_CUDA_ARCHITECTURES=${env.KMCL_CUDA_ARCHITECTURES}`);
// The native test and benchmark are built in a development checkout (which has native/tests), not when
// kmcl is installed as a dependency.
if (!existsSync(join(root, 'native', 'tests'))) defines.push('--CDKMCL_NATIVE_TOOLS=OFF');

// A changed configuration drops only CMakeCache.txt: the object files stay, and the build tool
// recompiles what the new configuration changes.
mkdirSync(buildDir, { recursive: true });
const stamp = join(buildDir, 'kmcl-config.json');
const wanted = JSON.stringify({ defines });
const cache = join(buildDir, 'CMakeCache.txt');
if (existsSync(cache) && (!existsSync(stamp) || readFileSync(stamp, 'utf8') !== wanted)) rmSync(cache);
const configure = !existsSync(cache);

console.log(
  `kmcl: building ${relative(process.cwd(), addon) || addon} (${cudaOff ? 'CPU only, KMCL_CUDA=0' : 'CPU, and CUDA if nvcc is found'}, ` +
    `${jobs} job${jobs === 1 ? '' : 's'}, ${configure ? 'configure + ' : ''}incremental build; log: ${relative(process.cwd(), logPath) || logPath})`,
);
writeFileSync(logPath, '');
const common = ['--directory', root, '--out', buildDir, '--config', 'Release'];
if (configure) {
  run([cmakeJs, 'configure', ...common, ...defines]);
  writeFileSync(stamp, wanted);
}
run([cmakeJs, 'build', ...common, '--parallel', String(jobs)]);
if (!existsSync(addon)) fail(`the build finished but ${addon} is missing`, `see ${logPath}`);
console.log(`kmcl: built ${addon} (${(statSync(addon).size / 2 ** 20).toFixed(1)} MiB): ${describeAddon()}`);

function run(args) {
  const r = spawnSync(process.execPath, args, { cwd: root, env, encoding: 'utf8', maxBuffer: 1 << 28 });
  const out = (r.stdout ?? '') + (r.stderr ?? '');
  writeFileSync(logPath, out, { flag: 'a' });
  if (verbose) process.stdout.write(out);
  if (r.error) fail(`could not start cmake-js: ${r.error.message}`, 'check that Node and cmake-js are installed');
  if (r.status !== 0) {
    if (!verbose) {
      const errors = out.split('\n').filter((l) => /error|Error|ERROR|fatal/.test(l));
      console.error((errors.length ? errors.slice(0, 30) : out.split('\n').slice(-30)).join('\n'));
    }
    fail(
      `cmake-js ${args[1]} exited with code ${r.status} (the whole output is in ${logPath})`,
      [
        'kmcl needs CMake >= 3.18 and a C++17 compiler (g++ >= 9 or clang >= 10) on PATH.',
        'Debian/Ubuntu: apt-get install cmake g++ ; macOS: xcode-select --install && brew install cmake.',
        'If the failure is in a .cu file, retry with KMCL_CUDA=0 for a CPU-only build, or check that',
        'nvcc supports the listed architectures (sm_75 and newer) and your host compiler.',
      ].join('\n  '),
    );
  }
}

/** What the built addon contains, from the addon itself: info() and its fatbin headers. */
function describeAddon() {
  const probe = spawnSync(
    process.execPath,
    ['-e', `const i = require(${JSON.stringify(addon)}).info(); process.stdout.write(JSON.stringify(i))`],
    { encoding: 'utf8', env: { ...env, KMCL_NUM_THREADS: '1' } },
  );
  let info;
  try {
    info = JSON.parse(probe.stdout);
  } catch {
    return `but it does not load: ${(probe.stderr || '').split('\n').find((l) => l.trim()) ?? 'no output'}`;
  }
  // The CPU kernels compiled in, and the one this machine's CPU runs.
  const isas = info.cpu?.isaCompiled ?? [];
  const cpu = info.cpu?.isa ? `CPU ${isas.join(' ')} (this CPU: ${info.cpu.isa})` : 'CPU';
  if (!info.cuda?.compiled) return `${cpu}; no CUDA path`;
  return `${cpu}; CUDA ${cudaArchs()}`;
}

/** The device code in the addon's fatbins (magic 0xBA55ED50; entry kind 1 = PTX, 2 = SASS). */
function cudaArchs() {
  const bin = readFileSync(addon);
  const magic = Buffer.from([0x50, 0xed, 0x55, 0xba]);
  const sass = new Set();
  const ptx = new Set();
  let compressed = true;
  for (let i = bin.indexOf(magic); i >= 0; i = bin.indexOf(magic, i + 4)) {
    const headerSize = bin.readUInt16LE(i + 6);
    const size = Number(bin.readBigUInt64LE(i + 8));
    for (let j = i + headerSize; j < i + headerSize + size; ) {
      const kind = bin.readUInt16LE(j);
      if (kind !== 1 && kind !== 2) break;
      const arch = bin.readUInt32LE(j + 28);
      (kind === 1 ? ptx : sass).add(arch);
      if ((Number(bin.readBigUInt64LE(j + 40)) & 0x8000) === 0) compressed = false;
      j += bin.readUInt32LE(j + 4) + bin.readUInt32LE(j + 8);
    }
  }
  const list = (set, prefix) => [...set].sort((a, b) => a - b).map((a) => `${prefix}_${a}`).join(' ') || 'none';
  return `SASS ${list(sass, 'sm')}, PTX ${list(ptx, 'compute')}${sass.size + ptx.size ? (compressed ? ', compressed' : ', not compressed') : ''}`;
}

function fail(what, fix) {
  console.error(`\nkmcl: the native build failed: ${what}\n  ${fix}\n`);
  process.exit(1);
}
