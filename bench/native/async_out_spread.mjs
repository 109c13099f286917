// Per-call time and spread of async fwd+bwd calls with `out` (caller-provided gradient arrays) on
// the spread problem (B = 128, K = 80, M = 128, per-class per-dim variance), two addon builds
// alternating call by call in one process so that load from other work hits them alike:
//   KMCL_NUM_THREADS=2 node bench/native/async_out_spread.mjs BEFORE.node [AFTER.node] [--calls N]
// AFTER defaults to build/Release/kmcl.node. Issue 10 item 6: async calls take their input copies
// and gradient buffers from a pool (no fresh buffers per call in the steady state). The time is
// from the call to the promise's settlement, awaited one at a time; page faults are the whole
// process's minor faults during the call.
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { sameBits, spreadProblem } from './spread_problem.mjs';

const args = process.argv.slice(2);
const j = args.indexOf('--calls');
const calls = j >= 0 ? Number(args.splice(j, 2)[1]) : 60;
if (!args[0]) throw new Error('usage: node bench/native/async_out_spread.mjs BEFORE.node [AFTER.node] [--calls N]');
const require = createRequire(import.meta.url);
const builds = [
  { name: `before (${args[0]})`, addon: require(resolve(args[0])) },
  { name: `after (${args[1] ?? 'build/Release/kmcl.node'})`, addon: require(resolve(args[1] ?? 'build/Release/kmcl.node')) },
];
const { B, K, M, p } = spreadProblem();
const outFor = () => ({ features: new Float32Array(B * M), logits: new Float32Array(B * K), mu: new Float32Array(B * K * M), variance: new Float32Array(B * K * M) });
const outs = builds.map(outFor);
for (const [k, b] of builds.entries()) {
  // Each build's async call against its own sync call (two builds' kernels may round differently).
  const ref = b.addon.compute(p, {}, true, 'cpu');
  const x = await b.addon.computeAsync(p, {}, true, 'cpu', outs[k]); // warm-up, and the same numbers
  if (x.loss !== ref.loss || !['features', 'logits', 'mu', 'variance'].every((g) => sameBits(x.gradients[g], ref.gradients[g]))) {
    throw new Error(`${b.name}: result differs from the sync call`);
  }
}
console.log(`${new Date().toISOString()} node ${process.version}; ${cpus().length} × ${cpus()[0]?.model}; KMCL_NUM_THREADS=${process.env.KMCL_NUM_THREADS ?? '(cores)'}`);
console.log(`B ${B} K ${K} M ${M}, variance [B, ${K}, ${M}]; ${calls} async calls with out per build, alternating`);
console.log(`load average at start ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
const times = builds.map(() => []), faults = builds.map(() => []);
for (let c = 0; c < calls; c++) {
  for (let r = 0; r < builds.length; r++) {
    const k = (c + r) % builds.length; // rotate the order each round
    const f0 = process.resourceUsage().minorPageFault;
    const t0 = performance.now();
    await builds[k].addon.computeAsync(p, {}, true, 'cpu', outs[k]);
    times[k].push(performance.now() - t0);
    faults[k].push(process.resourceUsage().minorPageFault - f0);
  }
}
const q = (t, f) => t[Math.min(t.length - 1, Math.round(f * (t.length - 1)))];
console.log('| build | min (ms) | median | p90 | max | page faults / call (median, max) |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
for (const [k, b] of builds.entries()) {
  const t = times[k].sort((x, y) => x - y);
  const f = faults[k].sort((x, y) => x - y);
  console.log(`| ${b.name} | ${t[0].toFixed(1)} | ${q(t, 0.5).toFixed(1)} | ${q(t, 0.9).toFixed(1)} | ${t[t.length - 1].toFixed(1)} | ${q(f, 0.5)}, ${f[f.length - 1]} |`);
}
const s = builds[1].addon.jobStats?.();
if (s && 'buffersAllocated' in s) console.log(`after: buffersAllocated ${s.buffersAllocated}, buffersReused ${s.buffersReused}`);
console.log(`load average at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
