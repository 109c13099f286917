// Per-call time and spread of fwd+bwd with and without `out` (caller-provided gradient arrays) on
// one large anisotropic problem (B = 128, K = 80, M = 128, per-class per-dim variance), the calls
// of the variants alternating in one process so that load from other work hits them alike:
//   KMCL_NUM_THREADS=2 node bench/native/out_spread.mjs [ADDON.node] [--before OLD.node] [--calls N] [--block N]
// ADDON defaults to build/Release/kmcl.node. --before adds a build without `out` (e.g. the
// commit before it), timed allocating. --block N runs N calls of a variant in a row before the
// next one (as a training loop would: an allocating variant then meets its own garbage), default
// 1 (strictly alternating). Issue 10 item 6: no fresh buffers per call.
import { execSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { sameBits, spreadProblem } from './spread_problem.mjs';

const args = process.argv.slice(2);
const flag = (name) => {
  const j = args.indexOf(name);
  if (j < 0) return undefined;
  const v = args[j + 1];
  args.splice(j, 2);
  return v;
};
const beforePath = flag('--before');
const calls = Number(flag('--calls') ?? 40);
const block = Number(flag('--block') ?? 1);
const addonPath = resolve(args[0] ?? 'build/Release/kmcl.node');
const require = createRequire(import.meta.url);
const addon = require(addonPath);

const { B, K, M, p } = spreadProblem();
const out = { features: new Float32Array(B * M), logits: new Float32Array(B * K), mu: new Float32Array(B * K * M), variance: new Float32Array(B * K * M) };
const gradBytes = 4 * (B * M + B * K + 2 * B * K * M);

const variants = [
  { name: 'allocating (no out)', run: () => addon.compute(p, {}, true, 'cpu') },
  { name: 'out (all four gradients)', run: () => addon.compute(p, {}, true, 'cpu', out) },
];
if (beforePath) {
  const before = require(resolve(beforePath));
  variants.unshift({ name: 'before: allocating (std::vector + copy)', run: () => before.compute(p, {}, true, 'cpu') });
}

const ref = variants[0].run();
for (const v of variants) {
  const x = v.run(); // warm-up, and every variant gives bitwise the same numbers
  if (x.loss !== ref.loss || !['features', 'logits', 'mu', 'variance'].every((g) => sameBits(x.gradients[g], ref.gradients[g]))) {
    throw new Error(`${v.name}: result differs from ${variants[0].name}`);
  }
}

let commit = 'unknown';
try {
  commit = execSync('git rev-parse --short HEAD', { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
} catch {}
const load0 = loadavg();
console.log(`${new Date().toISOString()} commit ${commit} node ${process.version}; ${cpus().length} × ${cpus()[0]?.model}; KMCL_NUM_THREADS=${process.env.KMCL_NUM_THREADS ?? '(cores)'}`);
console.log(`B ${B} K ${K} M ${M}, variance [B, ${K}, ${M}]; gradients ${(gradBytes / 2 ** 20).toFixed(1)} MiB per call; ${calls} calls per variant, ${block === 1 ? 'alternating' : `in blocks of ${block}`}`);
console.log(`load average at start ${load0.map((x) => x.toFixed(2)).join(' ')}`);

// Garbage collections that start inside a call are counted against that call's variant.
const gcs = [];
const observer = new PerformanceObserver((list) => gcs.push(...list.getEntries()));
observer.observe({ entryTypes: ['gc'] });
const times = variants.map(() => []);
// Minor page faults of the whole process (V8's background threads included) during each call.
const faults = variants.map(() => []);
const spans = [];
for (let c0 = 0; c0 < calls; c0 += block) {
  // Rotate the order each round so that no variant always runs right after another.
  for (let k = 0; k < variants.length; k++) for (let c = c0; c < Math.min(calls, c0 + block); c++) {
    const j = (c0 / block + k) % variants.length;
    const f0 = process.resourceUsage().minorPageFault;
    const t0 = performance.now();
    variants[j].run();
    const t1 = performance.now();
    times[j].push(t1 - t0);
    faults[j].push(process.resourceUsage().minorPageFault - f0);
    spans.push([j, t0, t1]);
  }
}
await new Promise((done) => setTimeout(done, 50)); // let the observer deliver
observer.disconnect();
const gcCount = variants.map(() => 0), gcMs = variants.map(() => 0);
for (const g of gcs) {
  const span = spans.find(([, a, b]) => g.startTime >= a && g.startTime < b);
  if (span) {
    gcCount[span[0]]++;
    gcMs[span[0]] += g.duration;
  }
}
const q = (t, f) => t[Math.min(t.length - 1, Math.round(f * (t.length - 1)))];
console.log('| variant | min (ms) | p10 | median | p90 | max | max / min | GCs in calls (ms) | page faults / call (median, max) |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const [j, v] of variants.entries()) {
  const t = times[j].sort((a, b) => a - b);
  console.log(`| ${v.name} | ${t[0].toFixed(1)} | ${q(t, 0.1).toFixed(1)} | ${q(t, 0.5).toFixed(1)} | ${q(t, 0.9).toFixed(1)} | ${t[t.length - 1].toFixed(1)} | ${(t[t.length - 1] / t[0]).toFixed(2)} | ${gcCount[j]} (${gcMs[j].toFixed(1)}) | ${q(faults[j].sort((a, b) => a - b), 0.5)}, ${faults[j][faults[j].length - 1]} |`);
}
console.log(`load average at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
