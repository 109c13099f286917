// Side-by-side timing of two builds of the addon (e.g. before and after a change) on the same
// problems, alternating calls so that load from other work hits both alike.
//   node bench/native/ab_addons.mjs OLD.node NEW.node [rounds]
// Prints, per problem, the median ms of fwd+bwd (all four gradients) through addon.compute on
// the CPU, and the ratio old / new. Problems: seeded, as kmcl_cpu_bench.
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';

const require = createRequire(import.meta.url);
const [oldPath, newPath, roundsArg] = process.argv.slice(2);
if (!oldPath || !newPath) {
  console.error('usage: node bench/native/ab_addons.mjs OLD.node NEW.node [rounds]');
  process.exit(2);
}
const rounds = Number(roundsArg ?? 15);
const addons = { old: require(oldPath), new: require(newPath) };

function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function problem(B, K, M, D, Kv, Dv, seed = 7) {
  const r = rng(seed);
  const f = (n, a, b) => Float32Array.from({ length: n }, () => a + (b - a) * r());
  const labels = new Float32Array(B * K);
  for (let i = 0; i < B; i++) {
    const n = Math.min(K, 1 + Math.floor(r() * 5));
    for (let t = 0; t < n; ) {
      const k = Math.floor(r() * K) % K;
      if (!labels[i * K + k]) { labels[i * K + k] = 1; t++; }
    }
  }
  return { batch: B, classes: K, dim: M, muDim: D, varianceShape: [Kv, Dv], features: f(B * M, -1, 1), logits: f(B * K, -3, 3), labels, mu: f(B * K * D, -0.5, 0.5), variance: f(B * Kv * Dv, 1, 3) };
}
const median = (v) => { const s = [...v].sort((a, b) => a - b); const n = s.length; return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2; };
const configs = [
  ['iso B=256 K=20 M=128 var[B,K,1]', [256, 20, 128, 1, 20, 1]],
  ['aniso B=128 K=20 M=64 var[B,K,D]', [128, 20, 64, 64, 20, 64]],
  ['iso B=1024 K=20 M=128 var[B,K,1]', [1024, 20, 128, 1, 20, 1]],
  ['aniso B=128 K=80 M=128 var[B,K,D]', [128, 80, 128, 128, 80, 128]],
  ['aniso B=512 K=80 M=64 var[B,1,D]', [512, 80, 64, 64, 1, 64]],
];
console.log(`load average at start ${loadavg().map((x) => x.toFixed(2)).join(' / ')}; ${rounds} alternating calls each`);
console.log('| problem | before (ms) | after (ms) | before / after | loss before | loss after |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
for (const [name, shape] of configs) {
  const p = problem(...shape);
  const t = { old: [], new: [] };
  const loss = {};
  for (const k of ['old', 'new']) loss[k] = addons[k].compute(p, {}, true, 'cpu').loss;  // warm-up
  for (let r = 0; r < rounds; r++) {
    for (const k of r % 2 ? ['new', 'old'] : ['old', 'new']) {
      const t0 = process.hrtime.bigint();
      addons[k].compute(p, {}, true, 'cpu');
      t[k].push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  }
  const mo = median(t.old), mn = median(t.new);
  console.log(`| ${name} | ${mo.toFixed(2)} | ${mn.toFixed(3)} | ${(mo / mn).toFixed(1)}× | ${loss.old.toPrecision(8)} | ${loss.new.toPrecision(8)} |`);
}
console.log(`load average at end ${loadavg().map((x) => x.toFixed(2)).join(' / ')}`);
