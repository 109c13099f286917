import { describe, expect, it } from 'vitest';
import { kmclLossRaw, kmclLossRawAsync } from '../src/index.js';
import { randomProblem } from './helpers.js';

// RSS must stay flat: every native allocation of a call is freed, and the JS arrays it returns are
// collectable. The first batch of calls warms up allocators and JIT; growth is measured after it.
function rssMiB(): number {
  return process.memoryUsage().rss / 2 ** 20;
}

describe('no native leak', () => {
  const p = randomProblem({ seed: 5, B: 16, K: 6, M: 8, D: 8, Kv: 6, Dv: 8, positives: 2 });
  it('RSS stays flat over 20,000 sync calls', () => {
    for (let i = 0; i < 2000; i++) kmclLossRaw(p);
    const before = rssMiB();
    let sum = 0;
    for (let i = 0; i < 20000; i++) sum += kmclLossRaw(p).loss;
    const growth = rssMiB() - before;
    expect(Number.isFinite(sum)).toBe(true);
    expect(growth, `RSS grew ${growth.toFixed(1)} MiB`).toBeLessThan(40);
  });
  it('RSS stays flat over 2,000 async calls', async () => {
    for (let i = 0; i < 200; i++) await kmclLossRawAsync(p);
    const before = rssMiB();
    for (let round = 0; round < 20; round++) {
      await Promise.all(Array.from({ length: 100 }, () => kmclLossRawAsync(p)));
    }
    const growth = rssMiB() - before;
    expect(growth, `RSS grew ${growth.toFixed(1)} MiB`).toBeLessThan(40);
  });
  it('the event loop keeps running while async calls work', async () => {
    const big = randomProblem({ seed: 6, B: 600, K: 20, M: 32, D: 32, Kv: 20, Dv: 32, positives: 3 });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const pending = kmclLossRawAsync(big);
    await new Promise((r) => setTimeout(r, 20));
    const r = await pending;
    clearInterval(timer);
    expect(ticks).toBeGreaterThan(0);
    expect(r.contrastive).toBeGreaterThan(0);
  });
});
