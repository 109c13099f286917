// Issue 9's soak: test/workers/soak.ts in a child process for KMCL_SOAK_SECONDS (8 s here; `npm
// run soak` runs 180 s). Zero crashes, every result bitwise equal to the sync result of the
// inputs at call time, RSS and tf.memory().numTensors flat.
import { describe, expect, it } from 'vitest';
import { describeExit, runChild } from './child.js';

const seconds = Number(process.env.KMCL_SOAK_SECONDS ?? 8);

describe('reliability soak', () => {
  it(`mixed sync, async, op, invalid and worker calls for ${seconds} s: no crash, no mismatch, no leak`, async () => {
    const r = await runChild(`await import('./test/workers/soak.ts');`, { timeoutMs: (seconds + 120) * 1000, env: { KMCL_SOAK_SECONDS: String(seconds) } });
    expect(r.status, describeExit(r)).toBe(0);
    const s = r.json;
    expect(s, r.stdout).toBeDefined();
    console.log(`soak: ${JSON.stringify(s)}`); // the counts, for the record
    expect(s.mismatches, r.stderr).toBe(0);
    expect(s.wrongErrors, r.stderr).toBe(0);
    for (const k of ['sync', 'async', 'op', 'invalid', 'workers', 'workerResults', 'mutated', 'detached']) expect(s[k], k).toBeGreaterThan(0);
    expect(s.tensorsEnd).toBe(s.tensorsStart);
    expect(s.rssGrowthMiB, 'RSS growth after warm-up (MiB)').toBeLessThan(64);
  }, (seconds + 180) * 1000);
});
