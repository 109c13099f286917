#!/usr/bin/env node
// kmcl's side of bench/baselines/compare_gpu.py on the GPU machine, which has node (through
// .device/with-node.sh) but no node_modules: plain JavaScript that loads the built addon
// (KMCL_ADDON_PATH, build/Release/kmcl.node or build-addon-dev/Release/kmcl.node) directly and calls its fused fwd+bwd on CUDA.
//
//   node bench/baselines/kmcl_cuda_probe.mjs info
//   node bench/baselines/kmcl_cuda_probe.mjs time B K M D [device]      median ms of fwd+bwd
//   node bench/baselines/kmcl_cuda_probe.mjs max-batch K M D [cap] [start] [probe-time-limit-s]
//
// Each prints one JSON line. Times are of kmclLossRaw's path from host Float32Arrays: they include
// the host-to-device and device-to-host copies (kmcl_bench times the device-resident kernels).
// The max-batch search doubles B from `start` until a call fails (out of memory) or B reaches
// `cap`, then bisects to within 1/32; a call slower than the probe limit also stops the doubling.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(import.meta.url);

function loadAddon() {
  const candidates = [
    process.env.KMCL_ADDON_PATH,
    join(root, 'build', 'Release', 'kmcl.node'),
    join(root, 'build-addon-dev', 'Release', 'kmcl.node'),
  ].filter(Boolean);
  for (const p of candidates) if (existsSync(p)) return { addon: require(p), path: p };
  throw new Error(`kmcl addon not found (tried ${candidates.join(', ')})`);
}

// The spec's defaults, resolved as src/options.ts resolves them.
const OPTIONS = {
  temperature: 0.17, gammaNeg: 4, gammaPos: 0, clip: 0.05, eps: 1e-7, logEps: 1e-7,
  detachFocalWeight: true, distanceScale: 1, stableReconstruction: true,
  weights: { asl: 1, reconstruction: 1, contrastive: 1 },
};

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Large arrays are a random block of 2^20 values tiled (memcpy speed): the values do not change
// the work, and filling billions of randoms in JS would take longer than the GPU call.
function filled(n, rnd, f) {
  const a = new Float32Array(n);
  const block = Math.min(n, 1 << 20);
  for (let j = 0; j < block; j++) a[j] = f(rnd);
  for (let j = block; j < n; j += block) a.copyWithin(j, 0, Math.min(block, n - j));
  return a;
}

/** The bench grid's problem: per-class variance [B, K, D], 3 positives per sample on average. */
function makeProblem(B, K, M, D, seed = 1) {
  const rnd = mulberry32(seed);
  const rate = Math.min(1, 3 / K);
  const labels = new Float32Array(B * K);
  for (let j = 0; j < labels.length; j++) labels[j] = rnd() < rate ? 1 : 0;
  return {
    batch: B, classes: K, dim: M, muDim: D, varianceShape: [K, D],
    features: filled(B * M, rnd, (r) => r() * 2 - 1),
    logits: filled(B * K, rnd, (r) => (r() * 2 - 1) * 3),
    labels,
    mu: filled(B * K * D, rnd, (r) => r() * 2 - 1),
    variance: filled(B * K * D, rnd, (r) => 1 + 2 * r()),
  };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

function callOnce(addon, problem, device) {
  const t0 = performance.now();
  const r = addon.compute(problem, OPTIONS, true, device);
  const ms = performance.now() - t0;
  if (!Number.isFinite(r.loss)) throw new Error(`loss ${r.loss}`);
  return ms;
}

function time(addon, B, K, M, D, device = 'cuda') {
  const problem = makeProblem(B, K, M, D);
  callOnce(addon, problem, device);
  callOnce(addon, problem, device);
  const times = [];
  let total = 0;
  while (times.length < 5 || (total < 500 && times.length < 200)) {
    const ms = callOnce(addon, problem, device);
    times.push(ms);
    total += ms;
  }
  return { B, K, M, D, device, medianMs: median(times), calls: times.length };
}

function fits(addon, B, K, M, D, limitMs) {
  let problem;
  try {
    problem = makeProblem(B, K, M, D);
  } catch (e) {
    return { ok: false, reason: `host arrays: ${e.message}` };
  }
  try {
    const ms = callOnce(addon, problem, 'cuda');
    return { ok: true, ms, slow: ms > limitMs };
  } catch (e) {
    return { ok: false, reason: String(e.message).split('\n')[0] };
  } finally {
    problem = undefined;
    addon.releaseDeviceMemory?.();
  }
}

function maxBatch(addon, K, M, D, cap = 65536, start = 1024, limitS = 30) {
  const limitMs = limitS * 1000;
  const probes = [];
  let good = 0;
  let bad = 0;
  let stop = '';
  for (let B = start; ; B *= 2) {
    if (B > cap) { stop = `reached the search cap ${cap}`; break; }
    const r = fits(addon, B, K, M, D, limitMs);
    probes.push({ B, ...r });
    if (!r.ok) { bad = B; stop = r.reason; break; }
    good = B;
    if (r.slow) { stop = `a call took ${(r.ms / 1000).toFixed(1)} s at B = ${B}, over the probe limit`; break; }
  }
  if (good && bad) {
    while (bad - good > Math.max(8, good / 32)) {
      const mid = Math.round((good + bad) / 2 / 8) * 8;
      const r = fits(addon, mid, K, M, D, limitMs);
      probes.push({ B: mid, ...r });
      if (r.ok) good = mid; else bad = mid;
    }
  }
  return { K, M, D, maxBatch: good, firstFailure: bad || null, bounded: Boolean(bad), stop, probes };
}

const [cmd, ...rest] = process.argv.slice(2);
const nums = rest.map(Number);
try {
  const { addon, path } = loadAddon();
  let out;
  if (cmd === 'info') out = { path, ...addon.info() };
  else if (cmd === 'time') out = time(addon, nums[0], nums[1], nums[2], nums[3], rest[4] ?? 'cuda');
  else if (cmd === 'max-batch') out = maxBatch(addon, nums[0], nums[1], nums[2], nums[3] || undefined, nums[4] || undefined, nums[5] || undefined);
  else throw new Error('usage: kmcl_cuda_probe.mjs info | time B K M D [device] | max-batch K M D [cap] [start] [limit-s]');
  process.stdout.write(`${JSON.stringify(out)}\n`);
} catch (e) {
  process.stdout.write(`${JSON.stringify({ error: String(e.message ?? e) })}\n`);
  process.exit(1);
}
