#!/usr/bin/env node
// Node smoke test of the CUDA path on the GPU machine (scripts/device-check.sh runs it): loads the
// addon directly (build/Release/kmcl.node, else build-addon-dev/Release/kmcl.node, or the path in
// KMCL_ADDON_PATH), prints info(), runs compute() with device 'cuda' and 'cpu' on a fixture and
// prints the largest differences. Exit code 1 when CUDA is unusable or the two differ beyond the
// fixture tolerances (terms 1e-5 relative, gradients 1e-4 relative norm).
//   node scripts/gpu-smoke.mjs [fixture-name]
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const candidates = ['../build/Release/kmcl.node', '../build-addon-dev/Release/kmcl.node'].map(
  (p) => new URL(p, import.meta.url).pathname,
);
const addonPath = process.env.KMCL_ADDON_PATH || candidates.find((p) => existsSync(p));
if (!addonPath) {
  console.log(`no addon found (looked for ${candidates.join(', ')}); set KMCL_ADDON_PATH`);
  process.exit(1);
}
const addon = require(addonPath);
const info = addon.info();
console.log(`addon: ${addonPath}`);
console.log(JSON.stringify(info, null, 2));

const name = process.argv[2] ?? 'mks-dim-variance';
const fx = JSON.parse(readFileSync(new URL(`../test/fixtures/${name}.json`, import.meta.url), 'utf8'));
const s = fx.shapes;
const problem = {
  batch: s.B,
  classes: s.K,
  dim: s.M,
  muDim: s.mu[2],
  varianceShape: [s.variance[1], s.variance[2]],
  features: Float32Array.from(fx.inputs.features),
  logits: Float32Array.from(fx.inputs.logits),
  labels: Float32Array.from(fx.inputs.labels),
  mu: Float32Array.from(fx.inputs.mu),
  variance: Float32Array.from(fx.inputs.variance),
};

const cpu = addon.compute(problem, fx.options, true, 'cpu');
let cuda;
let cudaAsync;
try {
  cuda = addon.compute(problem, fx.options, true, 'cuda');
  cudaAsync = await addon.computeAsync(problem, fx.options, true, 'cuda');
} catch (e) {
  console.log(`compute on 'cuda' failed: ${e.message}`);
  process.exit(1);
}

let ok = info.cuda?.usable === true;
const terms = ['loss', 'asl', 'reconstruction', 'contrastive'];
console.log(`\nfixture ${name}: term, cpu, cuda, |difference|, fixture`);
for (const t of terms) {
  const d = Math.abs(cuda[t] - cpu[t]);
  if (!(d <= 1e-5 * Math.abs(cpu[t]) || d <= 1e-6)) ok = false;
  if (cudaAsync[t] !== cuda[t] && Math.abs(cudaAsync[t] - cuda[t]) > 1e-6 * Math.abs(cuda[t])) ok = false;
  console.log(`  ${t.padEnd(15)} ${cpu[t].toPrecision(10)} ${cuda[t].toPrecision(10)} ${d.toExponential(2)} ${fx.expected[t]}`);
}
console.log('gradient, max |cuda - cpu|, relative norm');
for (const g of ['features', 'logits', 'mu', 'variance']) {
  const a = cuda.gradients[g];
  const b = cpu.gradients[g];
  let maxAbs = 0;
  let num = 0;
  let den = 0;
  for (let j = 0; j < a.length; ++j) {
    const d = a[j] - b[j];
    maxAbs = Math.max(maxAbs, Math.abs(d));
    num += d * d;
    den += b[j] * b[j];
  }
  const rel = den > 0 ? Math.sqrt(num / den) : Math.sqrt(num);
  if (!(rel <= 1e-4)) ok = false;
  console.log(`  ${g.padEnd(9)} ${maxAbs.toExponential(2)} ${rel.toExponential(2)}`);
}
addon.releaseDeviceMemory();
console.log(ok ? '\nsmoke ok' : '\nsmoke FAIL');
process.exit(ok ? 0 : 1);
