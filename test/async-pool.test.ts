// Issue 10 item 6: async calls allocate no buffers in the steady state. Each job takes its input
// copies and gradient buffers from a bounded process-wide pool (at most 4 idle sets, 256 MiB of
// idle capacity) and gives them back when it is destroyed; jobStats() counts the sets that had to
// be allocated or grown and those reused. The tests of one file run in one process, one after the
// other, so the counters' deltas below are exact.
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { kmclLossRaw, kmclLossRawAsync } from '../src/index.js';
import { asyncJobStats, GRADIENT_NAMES, type KmclProblem } from '../src/raw.js';
import { randomProblem, type RandomProblemSpec } from './helpers.js';
import { expectSameResult, outsFor } from './result-helpers.js';

const CAP_BYTES = 256 * 2 ** 20;
const MAX_SETS = 4;

type Result = { loss: number; asl: number; reconstruction: number; contrastive: number; gradients?: Record<string, Float32Array> };

/** The pool's bounds hold after every call. */
function expectBounded() {
  const s = asyncJobStats();
  expect(s.pooledSets).toBeLessThanOrEqual(MAX_SETS);
  expect(s.pooledBytes).toBeLessThanOrEqual(CAP_BYTES);
  return s;
}

const spec = (seed: number, B: number, K: number, M: number, aniso = true): RandomProblemSpec =>
  aniso ? { seed, B, K, M, D: M, Kv: K, Dv: M, positives: 2 } : { seed, B, K, M, D: 1, Kv: 1, Dv: 1, positives: 2 };

describe('async calls reuse pooled buffers', () => {
  it('20 calls of one problem with out: one set at most is allocated, the other 19 calls reuse; results equal the sync call bitwise', async () => {
    const p = randomProblem(spec(601, 40, 7, 12));
    const want = kmclLossRaw(p, { device: 'cpu' });
    const out = outsFor(p, Float32Array);
    const s0 = asyncJobStats();
    let after1 = s0;
    for (let c = 1; c <= 20; c++) {
      out.features.fill(NaN);
      out.mu.fill(NaN);
      const got = await kmclLossRawAsync(p, { device: 'cpu', out });
      expectSameResult(got as Result, want as Result, `call ${c}`);
      for (const g of GRADIENT_NAMES) expect(got.gradients![g]).toBe(out[g]);
      const s = expectBounded();
      expect(s.buffersInUse, `call ${c}: sets still held after it settled`).toBe(0);
      if (c === 1) {
        after1 = s;
        expect(s.buffersAllocated + s.buffersReused - s0.buffersAllocated - s0.buffersReused).toBe(1);
      }
    }
    const s20 = asyncJobStats();
    expect(s20.buffersAllocated - after1.buffersAllocated).toBe(0);
    expect(s20.buffersReused - after1.buffersReused).toBe(19);
    expect(s20.pooledBytes).toBe(after1.pooledBytes);
    expect(s20.pooledSets).toBe(after1.pooledSets);
  });

  it('after a larger call, smaller calls (other shapes, with and without gradients, out or not) allocate nothing and give the sync results', async () => {
    const big = randomProblem(spec(610, 64, 9, 20));
    expectSameResult((await kmclLossRawAsync(big, { device: 'cpu' })) as Result, kmclLossRaw(big, { device: 'cpu' }) as Result, 'big');
    const s0 = expectBounded();
    expect(s0.pooledSets).toBeGreaterThanOrEqual(1);
    const smaller = [
      { p: randomProblem(spec(611, 50, 8, 16)), gradients: true, out: true },
      { p: randomProblem(spec(612, 64, 9, 20, false)), gradients: true, out: false },
      { p: randomProblem(spec(613, 12, 3, 5)), gradients: false, out: false },
      { p: randomProblem(spec(614, 30, 9, 20)), gradients: true, out: true },
      { p: randomProblem(spec(615, 64, 9, 20)), gradients: true, out: false },
    ];
    for (const [j, c] of smaller.entries()) {
      const want = kmclLossRaw(c.p, { device: 'cpu', gradients: c.gradients });
      const out = c.out ? outsFor(c.p, Float32Array) : undefined;
      const got = await kmclLossRawAsync(c.p, { device: 'cpu', gradients: c.gradients, ...(out ? { out } : {}) });
      expectSameResult(got as Result, want as Result, `smaller call ${j}`);
      if (c.gradients) for (const g of GRADIENT_NAMES) expect(got.gradients![g].length, `smaller call ${j}: ${g}`).toBe(c.p[g].length);
      expectBounded();
    }
    const s1 = asyncJobStats();
    expect(s1.buffersAllocated - s0.buffersAllocated).toBe(0);
    expect(s1.buffersReused - s0.buffersReused).toBe(smaller.length);
    expect(s1.pooledSets).toBe(s0.pooledSets);
    expect(s1.pooledBytes).toBe(s0.pooledBytes);
  });

  it('4 pending calls each get their own set: every result is its own problem\'s, whatever happens to the inputs after the call', async () => {
    const specs = [620, 621, 622, 623].map((seed) => spec(seed, 48, 8, 16));
    const wants = specs.map((s) => kmclLossRaw(randomProblem(s), { device: 'cpu' }));
    const s0 = asyncJobStats();
    const problems = specs.map((s) => randomProblem(s));
    const outs = problems.map((p) => outsFor(p, Float32Array));
    const pending = problems.map((p, j) => kmclLossRawAsync(p, { device: 'cpu', ...(j % 2 ? { out: outs[j] } : {}) }));
    // Four sets held at once, one per pending job (none settles before this synchronous code ends).
    expect(asyncJobStats().buffersInUse - s0.buffersInUse).toBe(4);
    for (const p of problems) {
      p.features.fill(NaN);
      p.mu.fill(7);
      p.variance.fill(-1);
      p.labels.fill(0.5);
    }
    const got = await Promise.all(pending);
    for (let j = 0; j < got.length; j++) expectSameResult(got[j] as Result, wants[j] as Result, `call ${j}`);
    const s1 = expectBounded();
    expect(s1.buffersInUse).toBe(0);
    expect(s1.buffersAllocated + s1.buffersReused - s0.buffersAllocated - s0.buffersReused).toBe(4);
    // All four sets are idle again (the pool keeps up to 4): a second round allocates nothing.
    expect(s1.pooledSets).toBe(MAX_SETS);
    const again = await Promise.all(specs.map((s) => kmclLossRawAsync(randomProblem(s), { device: 'cpu' })));
    for (let j = 0; j < again.length; j++) expectSameResult(again[j] as Result, wants[j] as Result, `again ${j}`);
    const s2 = expectBounded();
    expect(s2.buffersAllocated - s1.buffersAllocated).toBe(0);
    expect(s2.buffersReused - s1.buffersReused).toBe(4);
  });

  it('a call larger than the 256 MiB cap gets its buffers, and they are freed after it instead of pooled', async () => {
    // Inputs of 2 × 128 MiB (mu and variance), no gradients: cheap to compute (B = 2).
    const B = 2, K = 2048, M = 8192;
    const p: KmclProblem = {
      batch: B,
      classes: K,
      dim: M,
      muDim: M,
      varianceShape: [K, M],
      features: new Float32Array(B * M).fill(0.25),
      logits: new Float32Array(B * K).fill(0.5),
      labels: new Float32Array(B * K).map((_, j) => (j % 7 === 0 ? 1 : 0)),
      mu: new Float32Array(B * K * M).fill(0.125),
      variance: new Float32Array(B * K * M).fill(1),
    };
    const s0 = expectBounded();
    const got = await kmclLossRawAsync(p, { device: 'cpu', gradients: false });
    expect(Number.isFinite(got.loss)).toBe(true);
    const s1 = expectBounded();
    expect(s1.buffersAllocated - s0.buffersAllocated).toBe(1);
    // The set it used (grown from the largest idle set, or new) is not kept.
    expect(s1.pooledSets).toBeLessThanOrEqual(s0.pooledSets);
    expect(s1.pooledBytes).toBeLessThanOrEqual(s0.pooledBytes);
    expect(got.loss).toBe(kmclLossRaw(p, { device: 'cpu', gradients: false }).loss);
  });

  it('a terminated worker\'s jobs (dropped, stopped or finished) all give their sets back', async () => {
    const s0 = asyncJobStats();
    const spec: RandomProblemSpec = { seed: 630, B: 600, K: 16, M: 32, D: 32, Kv: 16, Dv: 32, positives: 3 };
    const entry = new URL('./workers/compute-worker.ts', import.meta.url).href;
    const w = new Worker(new URL('./workers/boot.mjs', import.meta.url), { workerData: { entry, mode: 'queue', spec, queue: 40 }, execArgv: [] });
    await new Promise<void>((resolve, reject) => {
      w.on('message', (m: { loss?: number }) => m.loss !== undefined && resolve());
      w.on('error', reject);
    });
    await w.terminate();
    // The running job leaves the queue thread at its next work chunk; wait (bounded) for it.
    const deadline = Date.now() + 60_000;
    let s = asyncJobStats();
    while ((s.queued > 0 || s.buffersInUse > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
      s = asyncJobStats();
    }
    expect(s.queued).toBe(0);
    expect(s.buffersInUse).toBe(0);
    expectBounded();
    expect(s.buffersAllocated + s.buffersReused - s0.buffersAllocated - s0.buffersReused).toBe(40);
    const cancelled = s.cancelledQueued + s.cancelledRunning - s0.cancelledQueued - s0.cancelledRunning;
    expect(cancelled + s.completed - s0.completed).toBe(40);
    expect(cancelled, 'some jobs were dropped at the teardown (the path under test)').toBeGreaterThan(0);
  });
});
