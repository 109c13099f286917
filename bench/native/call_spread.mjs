// Per-call spread of fwd+bwd times for one large anisotropic problem (B = 128, K = 80, M = 128,
// per-class variance), 30 calls after a warm-up, for two builds of the addon:
//   node bench/native/call_spread.mjs BEFORE.node AFTER.node
// Issue 10 item 6: fresh gradient/accumulator buffers on every call made times bimodal.
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
const require = createRequire(import.meta.url);
const addons = { before: require(process.argv[2]), after: require(process.argv[3]) };
let s = 5;
const r = () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
const B = 128, K = 80, M = 128;
const f = (n, a, b) => Float32Array.from({ length: n }, () => a + (b - a) * r());
const labels = new Float32Array(B * K);
for (let i = 0; i < B; i++) for (let t = 0, n = 1 + Math.floor(r() * 5); t < n; ) { const k = Math.floor(r() * K); if (!labels[i * K + k]) { labels[i * K + k] = 1; t++; } }
const p = { batch: B, classes: K, dim: M, muDim: M, varianceShape: [K, M], features: f(B * M, -1, 1), logits: f(B * K, -3, 3), labels, mu: f(B * K * M, -0.5, 0.5), variance: f(B * K * M, 1, 3) };
console.log(`load ${loadavg()[0].toFixed(2)}`);
for (const [name, a] of Object.entries(addons)) {
  a.compute(p, {}, true, 'cpu');
  const t = [];
  for (let j = 0; j < 30; j++) { const t0 = process.hrtime.bigint(); a.compute(p, {}, true, 'cpu'); t.push(Number(process.hrtime.bigint() - t0) / 1e6); }
  t.sort((x, y) => x - y);
  console.log(`${name}: min ${t[0].toFixed(1)} p10 ${t[3].toFixed(1)} median ${t[15].toFixed(1)} p90 ${t[26].toFixed(1)} max ${t[29].toFixed(1)} ms; max/min ${(t[29] / t[0]).toFixed(2)}`);
}
