// Issue 9, items 1-3: an async call owns what it reads (inputs copied at the call), and no
// detach, mutation or worker termination can crash the process or change a result. The crash
// cases run in child processes and assert the child's exit status.
import { describe, expect, it } from 'vitest';
import { kmclLossRaw, kmclLossRawAsync } from '../src/index.js';
import { describeExit, runChild } from './child.js';
import { randomProblem } from './helpers.js';

const INPUTS = ['features', 'logits', 'labels', 'mu', 'variance'] as const;

describe('async calls own their inputs', () => {
  it('detaching every input buffer while the call runs neither crashes nor changes the result (child process)', async () => {
    const r = await runChild(`
      import { kmclLossRaw, kmclLossRawAsync } from './src/index.ts';
      import { randomProblem } from './test/helpers.ts';
      const p = randomProblem({ seed: 11, B: 200, K: 12, M: 24, D: 24, Kv: 12, Dv: 24, positives: 3 });
      const expected = kmclLossRaw(p, { device: 'cpu' });
      const results = [];
      for (let round = 0; round < 3; round++) {
        const q = randomProblem({ seed: 11, B: 200, K: 12, M: 24, D: 24, Kv: 12, Dv: 24, positives: 3 });
        const pending = kmclLossRawAsync(q, { device: 'cpu' });
        for (const k of ${JSON.stringify(INPUTS)}) structuredClone(q[k].buffer, { transfer: [q[k].buffer] });
        globalThis.gc?.();
        // Reuse the freed memory with NaNs.
        const junk = Array.from({ length: 40 }, () => new Float32Array(1 << 16).fill(NaN));
        const r = await pending;
        results.push(r.loss === expected.loss && r.gradients.variance.every((v, j) => v === expected.gradients.variance[j]));
        junk.length = 0;
      }
      console.log(JSON.stringify({ results, detached: true }));
    `);
    expect(r.status, describeExit(r)).toBe(0);
    expect(r.json).toEqual({ results: [true, true, true], detached: true });
  });

  it('changing the inputs after the call starts changes neither the result nor its validation', async () => {
    const spec = { seed: 12, B: 120, K: 10, M: 16, D: 16, Kv: 10, Dv: 16, positives: 3 };
    const expected = kmclLossRaw(randomProblem(spec), { device: 'cpu' });
    const p = randomProblem(spec);
    const pending = kmclLossRawAsync(p, { device: 'cpu' });
    p.variance.fill(-1);
    p.features.fill(NaN);
    p.labels.fill(0.5);
    p.logits.fill(Infinity);
    const r = await pending;
    expect(r.loss).toBe(expected.loss);
    expect(r.asl).toBe(expected.asl);
    expect(r.reconstruction).toBe(expected.reconstruction);
    expect(r.contrastive).toBe(expected.contrastive);
    for (const k of ['features', 'logits', 'mu', 'variance'] as const) {
      expect(Array.from(r.gradients![k])).toEqual(Array.from(expected.gradients![k]));
    }
  });

  it('inputs on a SharedArrayBuffer are read once, at the call', async () => {
    const spec = { seed: 13, B: 60, K: 6, M: 8, D: 1, Kv: 6, Dv: 1, positives: 2 };
    const base = randomProblem(spec);
    const expected = kmclLossRaw(base, { device: 'cpu', gradients: false });
    const shared = { ...base } as typeof base;
    for (const k of INPUTS) {
      const a = new Float32Array(new SharedArrayBuffer(base[k].byteLength));
      a.set(base[k]);
      (shared as unknown as Record<string, unknown>)[k] = a;
    }
    const pending = kmclLossRawAsync(shared, { device: 'cpu', gradients: false });
    shared.variance.fill(0);
    expect((await pending).loss).toBe(expected.loss);
  });
});

describe('worker threads', () => {
  it('terminating workers in the middle of sync and async calls ends only those workers (child process)', async () => {
    const r = await runChild(`
      import { Worker } from 'node:worker_threads';
      import { kmclLossRaw, kmclLossRawAsync } from './src/index.ts';
      import { randomProblem, mulberry32 } from './test/helpers.ts';
      const spec = { seed: 21, B: 96, K: 8, M: 16, D: 16, Kv: 8, Dv: 16, positives: 3 };
      const p = randomProblem(spec);
      const expected = kmclLossRaw(p, { device: 'cpu' }).loss;
      const rnd = mulberry32(5);
      let terminated = 0, mismatches = 0, mainCalls = 0;
      const root = 'file://' + process.cwd() + '/';
      const entry = new URL('./test/workers/compute-worker.ts', root).href;
      for (let round = 0; round < 12; round++) {
        const mode = ['sync', 'async', 'queue'][round % 3];
        const w = new Worker(new URL('./test/workers/boot.mjs', root), { workerData: { entry, mode, spec, queue: 6 }, execArgv: [] });
        w.on('message', (m) => { if (m.loss !== undefined && m.loss !== expected) mismatches++; });
        w.on('error', (e) => { console.error('worker error', e); process.exitCode = 3; });
        await new Promise((res) => w.once('message', res));
        await new Promise((res) => setTimeout(res, 1 + Math.floor(rnd() * 40)));
        const [a, s] = [kmclLossRawAsync(p, { device: 'cpu' }), kmclLossRaw(p, { device: 'cpu' })];
        await w.terminate();
        terminated++;
        if ((await a).loss !== expected || s.loss !== expected) mismatches++;
        mainCalls += 2;
      }
      console.log(JSON.stringify({ terminated, mismatches, mainCalls }));
    `, { timeoutMs: 120_000 });
    expect(r.status, describeExit(r)).toBe(0);
    expect(r.json).toEqual({ terminated: 12, mismatches: 0, mainCalls: 24 });
  });
});
