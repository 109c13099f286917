// The problem of the per-call spread benchmarks (call_spread.mjs, out_spread.mjs,
// async_out_spread.mjs), and the bitwise check of their results: B = 128,
// K = 80, M = 128, per-class variance [B, K, M], 1 … 5 positive labels per sample, seeded, as the
// raw addon's problem object.
export function spreadProblem() {
  let s = 5;
  const r = () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const B = 128, K = 80, M = 128;
  const f = (n, a, b) => Float32Array.from({ length: n }, () => a + (b - a) * r());
  const labels = new Float32Array(B * K);
  for (let i = 0; i < B; i++) for (let t = 0, n = 1 + Math.floor(r() * 5); t < n; ) { const k = Math.floor(r() * K); if (!labels[i * K + k]) { labels[i * K + k] = 1; t++; } }
  const p = { batch: B, classes: K, dim: M, muDim: M, varianceShape: [K, M], features: f(B * M, -1, 1), logits: f(B * K, -3, 3), labels, mu: f(B * K * M, -0.5, 0.5), variance: f(B * K * M, 1, 3) };
  return { B, K, M, p };
}

// Bitwise equality of two float arrays.
export const sameBits = (a, b) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
