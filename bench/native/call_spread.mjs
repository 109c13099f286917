// Per-call spread of fwd+bwd times for one large anisotropic problem (B = 128, K = 80, M = 128,
// per-class variance), 30 calls after a warm-up, for two builds of the addon:
//   node bench/native/call_spread.mjs BEFORE.node AFTER.node
// Issue 10 item 6: fresh gradient/accumulator buffers on every call made times bimodal.
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { spreadProblem } from './spread_problem.mjs';
const require = createRequire(import.meta.url);
const addons = { before: require(resolve(process.argv[2])), after: require(resolve(process.argv[3])) };
const { B, K, M, p } = spreadProblem();
console.log(`load ${loadavg()[0].toFixed(2)}`);
for (const [name, a] of Object.entries(addons)) {
  a.compute(p, {}, true, 'cpu');
  const t = [];
  for (let j = 0; j < 30; j++) { const t0 = process.hrtime.bigint(); a.compute(p, {}, true, 'cpu'); t.push(Number(process.hrtime.bigint() - t0) / 1e6); }
  t.sort((x, y) => x - y);
  console.log(`${name}: min ${t[0].toFixed(1)} p10 ${t[3].toFixed(1)} median ${t[15].toFixed(1)} p90 ${t[26].toFixed(1)} max ${t[29].toFixed(1)} ms; max/min ${(t[29] / t[0]).toFixed(2)}`);
}
