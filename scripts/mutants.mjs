#!/usr/bin/env node
// Mutation test of the CUDA emulator (npm run test:mutants): plants each fault of a fixed list in a
// copy of the CUDA sources (native/core/src/cuda), rebuilds only the emulated translation unit
// (native/tests/cuda_emulated.cpp) against that copy, relinks kmcl_native_test and runs its
// emulated cases. A mutant is caught when the run fails (a wrong value, a race or guard-zone
// finding, a shuffle divergence, a deadlock abort). Prints one line per mutant and `caught N/M`;
// exit code 1 when any mutant survived (or the unmutated baseline fails).
//
//   node scripts/mutants.mjs [--build DIR] [--jobs N] [--only ID,ID] [--list] [--json FILE]
//
// DIR (default build-mutants) is configured CPU-only with Ninja and compile_commands.json if it is
// not yet. Each mutant compiles one file at -O1 (about a minute on one core) and runs the emulated
// fixture and random cases with schedule seeds 0 and 1, stopping at the first failure.
import { spawnSync, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const buildDir = resolve(root, opt('--build', 'build-mutants'));
const jobs = Math.max(1, Number(opt('--jobs', '1')) || 1);
const only = opt('--only', '')
  .split(',')
  .filter(Boolean);
const jsonOut = opt('--json', join(buildDir, 'mutants.json'));
const runTimeoutS = Number(opt('--timeout', '900'));

const S = 'native/core/src/cuda/sample_kernels.cuh';
const P = 'native/core/src/cuda/kernels.cuh';
const SYNC = '__syncthreads();';
// id, file, text, its occurrence (0-based), replacement, what the fault is.
export const MUTANTS = [
  ['sync-asl-U', S, SYNC, 0, '', 'aslReconstruction: barrier between the warps writing U[k] (global scratch) and warp 0 reading it removed'],
  ['sync-asl-GE', S, SYNC, 1, '', 'aslReconstruction: barrier between warp 0 writing GE[k] and all threads reading it removed'],
  ['sync-asl-gvar', S, SYNC, 2, '', 'aslReconstruction: barrier before thread 0 sums the per-warp variance gradients (static __shared__) removed'],
  ['sync-loss-fill', S, SYNC, 3, '', 'lossTerms: barrier after filling the shared partial sums removed'],
  ['sync-loss-tree', S, SYNC, 4, '', 'lossTerms: barrier inside the shared-memory tree reduction removed'],
  ['sync-pair-reuse', P, SYNC, 0, '', 'pairKernel: barrier before a partner tile is overwritten (previous tile still read) removed'],
  ['sync-pair-idx', P, SYNC, 1, '', 'pairKernel: barrier between writing the tile indices sIdx/sPos and reading them removed'],
  ['sync-pair-load', P, SYNC, 2, '', 'pairKernel: barrier between loading the partner tile and the warps reading it removed'],
  ['sync-pair-flush', P, SYNC, 3, '', 'pairKernel sweep 3: barrier between the shared partner-gradient atomics and their flush removed'],
  ['shfl-branch-asl', S, '    e = warpSumF(e);', 0, '    if (lane < 16) e = warpSumF(e);', 'aslReconstruction: warp shuffle reduction under a lane-dependent branch'],
  ['shfl-branch-pair', P, 'for (int a = 0; a < RA; ++a) dist[a] = groupSum<L>(dist[a]);', 0,
    'for (int a = 0; a < RA; ++a) if (lane < 16) dist[a] = groupSum<L>(dist[a]);', 'pairKernel: group shuffle reduction of Dist under a lane-dependent branch'],
  ['smem-index-read', P, 'pMu[jj] = sMu[pp * SD + j + L * jj];', 0, 'pMu[jj] = sMu[pp * SD + j + L * jj + 1];', 'pairKernel: shared-memory read index off by one (partner mu)'],
  ['smem-index-write', P, 'sMu[e] = ok ?', 0, 'sMu[e + 1] = ok ?', 'pairKernel: shared-memory write index off by one (partner tile load)'],
  ['global-index-write', S, 'p.gFeatures[static_cast<int64_t>(i) * M + m] =', 0, 'p.gFeatures[static_cast<int64_t>(i) * M + m + 1] =',
    'aslReconstruction: global write index off by one (d/dfeatures)'],
  ['global-index-read', S, 'const float d = z[m] - muAt(k, m);', 0, 'const float d = z[m + 1] - muAt(k, m);', 'aslReconstruction: global read index off by one (features)'],
  ['atomic-partner', P, 'if (gm != 0.0f) atomicAdd(&p.gMu[muOffset(p, l, k) + m], gm);', 0, 'if (gm != 0.0f) p.gMu[muOffset(p, l, k) + m] += gm;',
    'pairKernel sweep 3: partner-side global atomicAdd replaced by a plain add'],
  ['atomic-anchor', P, 'atomicAdd(&p.gMu[mo + m], accMu[a][jj]);', 0, 'p.gMu[mo + m] += accMu[a][jj];', 'pairKernel sweep 3: anchor-side global atomicAdd replaced by a plain add'],
  ['atomic-shared', P, 'atomicAdd(&sGMu[pp * SD + m], pgMu[jj]);', 0, 'sGMu[pp * SD + m] += pgMu[jj];', 'pairKernel sweep 3: shared-memory atomicAdd replaced by a plain add'],
  ['atomic-generic', P, 'atomicAdd(&p.gMu[lo + m], -dm);', 0, 'p.gMu[lo + m] += -dm;', 'pairKernelGeneric sweep 3: global atomicAdd replaced by a plain add'],
];

if (args.includes('--list')) {
  for (const [id, file, , , , what] of MUTANTS) console.log(`${id.padEnd(20)} ${file.split('/').pop().padEnd(20)} ${what}`);
  process.exit(0);
}

function sh(cmd, cmdArgs, options = {}) {
  const r = spawnSync(cmd, cmdArgs, { cwd: root, encoding: 'utf8', maxBuffer: 256 << 20, ...options });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  return r;
}

function must(r, what) {
  if (r.status !== 0) {
    console.error(`${what} failed (exit ${r.status}):\n${(r.stdout ?? '').slice(-3000)}\n${(r.stderr ?? '').slice(-3000)}`);
    process.exit(2);
  }
  return r;
}

// ---- the build the mutants start from ----
if (!existsSync(join(buildDir, 'build.ninja'))) {
  console.log(`configuring ${buildDir} (CPU only, Ninja)`);
  must(
    sh('cmake', ['-S', root, '-B', buildDir, '-G', 'Ninja', '-DCMAKE_BUILD_TYPE=Release', '-DKMCL_CUDA=OFF', '-DCMAKE_EXPORT_COMPILE_COMMANDS=ON']),
    'cmake configure',
  );
}
console.log(`building kmcl_native_test in ${buildDir}`);
must(sh('cmake', ['--build', buildDir, '--target', 'kmcl_native_test', '-j', String(jobs)]), 'build');

const commands = JSON.parse(readFileSync(join(buildDir, 'compile_commands.json'), 'utf8'));
const emuEntry = commands.find((c) => c.file.endsWith('native/tests/cuda_emulated.cpp'));
if (!emuEntry) throw new Error('compile_commands.json has no entry for native/tests/cuda_emulated.cpp');
const linkLine = must(sh('ninja', ['-C', buildDir, '-t', 'commands', 'kmcl_native_test']), 'ninja -t commands')
  .stdout.trim()
  .split('\n')
  .pop();
const emuObject = /-o (\S*cuda_emulated\.cpp\.o)/.exec(emuEntry.command)?.[1];
if (!emuObject || !linkLine.includes(emuObject)) throw new Error('cannot find the emulated object in the compile and link commands');

const testArgs = ['--no-cpu', '--filter', 'emu/', '--exclude', 'emu/api/', '--seeds', '0,1', '--fail-fast'];

function runTest(exe) {
  return new Promise((resolvePromise) => {
    const child = spawn('timeout', [String(runTimeoutS), exe, ...testArgs], { cwd: root });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code, signal) => resolvePromise({ code, signal, out, err }));
  });
}

function verdictOf(r) {
  const fail = r.out.split('\n').find((l) => l.startsWith('FAIL '));
  if (fail) return fail.slice(0, 400);
  if (r.code === 124) return `timed out after ${runTimeoutS} s`;
  const emu = r.err.split('\n').find((l) => l.startsWith('CUDA emulator:'));
  if (emu) return `aborted: ${emu}`;
  return `exit ${r.code ?? r.signal}: ${r.err.trim().split('\n').slice(-2).join(' | ').slice(0, 300)}`;
}

// ---- baseline: the unmutated sources pass ----
{
  const t0 = Date.now();
  const r = await runTest(join(buildDir, 'kmcl_native_test'));
  const last = r.out.trim().split('\n').pop();
  console.log(`baseline (unmutated): exit ${r.code}, ${last} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  if (r.code !== 0) {
    console.log(`the unmutated emulated test fails, so mutants prove nothing: ${verdictOf(r)}`);
    process.exit(1);
  }
}

// ---- mutants ----
async function runMutant([id, file, find, occurrence, replacement, what]) {
  const dir = join(buildDir, 'mutants', id);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const sub of ['native/core/include', 'native/core/src/cuda', 'native/tests']) cpSync(join(root, sub), join(dir, sub), { recursive: true });
  const path = join(dir, file);
  const text = readFileSync(path, 'utf8');
  let at = -1;
  for (let n = 0; n <= occurrence; ++n) {
    at = text.indexOf(find, at + 1);
    if (at < 0) throw new Error(`mutant ${id}: occurrence ${occurrence} of ${JSON.stringify(find)} not found in ${file} (list out of date)`);
  }
  writeFileSync(path, text.slice(0, at) + replacement + text.slice(at + find.length));
  const obj = join(dir, 'cuda_emulated.o');
  const exe = join(dir, 'kmcl_native_test');
  const compile = emuEntry.command
    .replace(/ -MD -MT \S+ -MF \S+/, '')
    .replace(/ -o \S+/, ` -o ${obj}`)
    .replace(/ -O[23s]\b/g, ' -O1')
    .replaceAll(`${root}/native/core/include`, `${dir}/native/core/include`)
    .replace(/ -c \S+$/, ` -c ${dir}/native/tests/cuda_emulated.cpp`);
  const t0 = Date.now();
  const c = await new Promise((res) => {
    const child = spawn('sh', ['-c', compile], { cwd: emuEntry.directory });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => res({ code, err }));
  });
  if (c.code !== 0) return { id, what, caught: false, verdict: `did not compile: ${c.err.slice(0, 300)}` };
  const link = linkLine.replace(emuObject, obj).replace(/ -o \S+/, ` -o ${exe}`);
  const l = sh('sh', ['-c', link], { cwd: buildDir });
  if (l.status !== 0) return { id, what, caught: false, verdict: `did not link: ${l.stderr.slice(0, 300)}` };
  const buildS = (Date.now() - t0) / 1000;
  const t1 = Date.now();
  const r = await runTest(exe);
  const caught = r.code !== 0;
  const result = { id, what, caught, verdict: caught ? verdictOf(r) : r.out.trim().split('\n').pop(), buildS, runS: (Date.now() - t1) / 1000 };
  if (!args.includes('--keep')) rmSync(dir, { recursive: true, force: true });
  return result;
}

const selected = MUTANTS.filter((m) => only.length === 0 || only.includes(m[0]));
const results = [];
let next = 0;
async function worker() {
  while (next < selected.length) {
    const m = selected[next++];
    const r = await runMutant(m);
    results.push(r);
    console.log(`${r.caught ? 'caught  ' : 'SURVIVED'} ${r.id.padEnd(20)} ${r.what}\n         -> ${r.verdict}${r.buildS ? ` (build ${r.buildS.toFixed(0)} s, run ${r.runS.toFixed(0)} s)` : ''}`);
  }
}
await Promise.all(Array.from({ length: Math.min(jobs, selected.length) }, worker));
const caught = results.filter((r) => r.caught).length;
writeFileSync(jsonOut, JSON.stringify({ date: new Date().toISOString(), caught, total: results.length, results }, null, 2));
console.log(`caught ${caught}/${results.length}`);
process.exit(caught === results.length ? 0 : 1);
