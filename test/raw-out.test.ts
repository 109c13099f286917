// Issue 10 item 6: `options.out` of the raw API. The gradients are written into caller-provided
// arrays (sync: by the core itself; async: when the promise settles), bitwise equal to the
// allocating call; bad outs are refused before any work, naming the argument; a failed call or a
// changed out leaves every out array as it was.
import { describe, expect, it } from 'vitest';
import { kmclLossRaw, kmclLossRawAsync, kmclLossRawFloat64 } from '../src/index.js';
import { nativeAddon } from '../src/native.js';
import { asyncJobStats, GRADIENT_NAMES, type KmclRawResult } from '../src/raw.js';
import { layouts, randomProblem, type RandomProblemSpec } from './helpers.js';
import { expectSameResult, outsFor } from './result-helpers.js';

type F = Float32Array | Float64Array;

function untouched(out: Record<string, F | undefined>, fill: number): boolean {
  return Object.values(out).every((a) => a === undefined || a.every((v) => Object.is(v, fill)));
}

const spec = (seed: number, layout: { D: number; Kv: number; Dv: number }): RandomProblemSpec => ({ seed, B: 24, K: 5, M: 6, ...layout, positives: 2 });

describe('out: the same numbers as the allocating call, in the caller\'s arrays', () => {
  for (const [li, layout] of layouts(5, 6).entries()) {
    it(`float32 sync, ${layout.name}`, () => {
      const p = randomProblem(spec(300 + li, layout));
      const want = kmclLossRaw(p, { device: 'cpu' });
      const out = outsFor(p, Float32Array);
      const got = kmclLossRaw(p, { device: 'cpu', out });
      expectSameResult(got, want);
      for (const g of GRADIENT_NAMES) expect(got.gradients![g]).toBe(out[g]);
    });
    it(`float32 async, ${layout.name}`, async () => {
      const p = randomProblem(spec(300 + li, layout));
      const want = kmclLossRaw(p, { device: 'cpu' });
      const out = outsFor(p, Float32Array);
      const got = await kmclLossRawAsync(p, { device: 'cpu', out });
      expectSameResult(got, want);
      for (const g of GRADIENT_NAMES) expect(got.gradients![g]).toBe(out[g]);
    });
    it(`float64 sync, ${layout.name}`, () => {
      const p = randomProblem(spec(300 + li, layout), Float64Array);
      const want = kmclLossRawFloat64(p as never);
      const out = outsFor(p, Float64Array);
      const got = kmclLossRawFloat64(p as never, { out });
      expectSameResult(got, want);
      for (const g of GRADIENT_NAMES) expect(got.gradients![g]).toBe(out[g]);
    });
  }

  it('any subset: the given ones are the caller\'s arrays, the others new ones, all equal to the allocating call', async () => {
    const p = randomProblem(spec(320, { D: 6, Kv: 5, Dv: 6 }));
    const want = kmclLossRaw(p, { device: 'cpu' });
    const subsets: (typeof GRADIENT_NAMES)[number][][] = [[], ['features'], ['mu', 'variance'], ['logits', 'mu', 'variance'], ['features', 'logits']];
    for (const names of subsets) {
      for (const mode of ['sync', 'async'] as const) {
        const out = outsFor(p, Float32Array, NaN, names);
        const got = mode === 'sync' ? kmclLossRaw(p, { device: 'cpu', out }) : await kmclLossRawAsync(p, { device: 'cpu', out });
        expectSameResult(got, want);
        for (const g of GRADIENT_NAMES) {
          if (names.includes(g)) expect(got.gradients![g], `${mode} ${g}`).toBe(out[g]);
          else expect(got.gradients![g] instanceof Float32Array && got.gradients![g].buffer !== p[g].buffer, `${mode} ${g}`).toBe(true);
        }
      }
    }
  });

  it('out arrays that are views into one buffer (adjacent, not overlapping) are accepted', () => {
    const p = randomProblem(spec(321, { D: 1, Kv: 5, Dv: 1 }));
    const want = kmclLossRaw(p, { device: 'cpu' });
    const n = GRADIENT_NAMES.map((g) => p[g].length);
    const buf = new ArrayBuffer(4 * (n[0] + n[1] + n[2] + n[3] + 1));
    let off = 4; // not at the start of the buffer
    const out: Record<string, Float32Array> = {};
    for (const [j, g] of GRADIENT_NAMES.entries()) {
      out[g] = new Float32Array(buf, off, n[j]);
      off += 4 * n[j];
    }
    expectSameResult(kmclLossRaw(p, { device: 'cpu', out }), want);
  });

  it('reusing the same out across many calls gives each call\'s own values (sync, async, float64)', async () => {
    const layout = { D: 6, Kv: 5, Dv: 6 };
    const out = outsFor(randomProblem(spec(1, layout)), Float32Array, 123);
    const out64 = outsFor(randomProblem(spec(1, layout)), Float64Array, 123);
    for (let j = 0; j < 12; j++) {
      const p = randomProblem(spec(400 + j, layout));
      const want = kmclLossRaw(p, { device: 'cpu' });
      const got: KmclRawResult = j % 2 === 0 ? kmclLossRaw(p, { device: 'cpu', out }) : await kmclLossRawAsync(p, { device: 'cpu', out });
      expectSameResult(got, want);
      expect(got.gradients!.mu).toBe(out.mu);
      const p64 = randomProblem(spec(400 + j, layout), Float64Array);
      expectSameResult(kmclLossRawFloat64(p64 as never, { out: out64 }), kmclLossRawFloat64(p64 as never));
    }
  });
});

describe('out: refused before any work, naming the argument', () => {
  const p = randomProblem(spec(500, { D: 6, Kv: 5, Dv: 6 })); // B 24, K 5, M 6: mu [24, 5, 6]
  const sizes = { features: 24 * 6, logits: 24 * 5, mu: 24 * 5 * 6, variance: 24 * 5 * 6 };
  // Every refusal: thrown by the sync call, the async call rejects (before submitting a job), and
  // every other out array given is untouched.
  async function refused(out: unknown, message: RegExp, options: Record<string, unknown> = {}) {
    const sentinel = new Float32Array(sizes.logits).fill(7);
    const withSentinel = out !== null && typeof out === 'object' && !ArrayBuffer.isView(out) && !('logits' in out) ? { ...out, logits: sentinel } : out;
    expect(() => kmclLossRaw(p, { device: 'cpu', ...options, out: withSentinel } as never)).toThrow(message);
    const before = asyncJobStats().submitted;
    await expect(kmclLossRawAsync(p, { device: 'cpu', ...options, out: withSentinel } as never)).rejects.toThrow(message);
    expect(asyncJobStats().submitted).toBe(before);
    expect(sentinel.every((v) => v === 7)).toBe(true);
  }

  it('a wrong array type for the path (float32 vs float64)', async () => {
    await refused({ mu: new Float64Array(sizes.mu) }, /^options\.out\.mu must be a Float32Array \(this is the float32 path\), got a Float64Array$/);
    await refused({ features: Array.from({ length: sizes.features }, () => 0) }, /^options\.out\.features must be a Float32Array .*got an array$/);
    await refused({ variance: new Int32Array(sizes.variance) }, /options\.out\.variance must be a Float32Array .*got a Int32Array/);
    const p64 = randomProblem(spec(500, { D: 6, Kv: 5, Dv: 6 }), Float64Array);
    expect(() => kmclLossRawFloat64(p64 as never, { out: { logits: new Float32Array(sizes.logits) } as never })).toThrow(
      /^options\.out\.logits must be a Float64Array \(this is the float64 path\), got a Float32Array$/,
    );
  });

  it('a wrong length, with the expected and the actual length', async () => {
    await refused({ mu: new Float32Array(sizes.mu - 1) }, /^options\.out\.mu must have length 720 \(shape \[24, 5, 6\]\), got 719$/);
    await refused({ features: new Float32Array(0) }, /^options\.out\.features must have length 144 \(shape \[24, 6\]\), got 0$/);
    const p64 = randomProblem(spec(500, { D: 6, Kv: 5, Dv: 6 }), Float64Array);
    expect(() => kmclLossRawFloat64(p64 as never, { out: { variance: new Float64Array(sizes.variance + 1) } })).toThrow(
      /^options\.out\.variance must have length 720 \(shape \[24, 5, 6\]\), got 721$/,
    );
  });

  it('a detached buffer', async () => {
    const a = new Float32Array(sizes.mu);
    structuredClone(a.buffer, { transfer: [a.buffer] });
    await refused({ mu: a }, /^options\.out\.mu is detached \(its ArrayBuffer was transferred\)$/);
  });

  it('memory shared with an input (any of the five, also through another view of its buffer)', async () => {
    await refused({ features: p.features }, /^options\.out\.features shares memory with problem\.features: an out array must not overlap an input or another out array$/);
    await refused({ mu: p.variance }, /^options\.out\.mu shares memory with problem\.variance/);
    // labels are an input too (never differentiated): an out on them is refused.
    await refused({ logits: p.labels }, /^options\.out\.logits shares memory with problem\.labels/);
    // An input that is a view into a larger buffer, and an out overlapping its last element.
    const big = new Float32Array(sizes.features + sizes.features);
    big.set(p.features, 0);
    const q = { ...p, features: big.subarray(0, sizes.features) };
    const out = { features: big.subarray(sizes.features - 1, 2 * sizes.features - 1) };
    expect(() => kmclLossRaw(q, { device: 'cpu', out })).toThrow(/^options\.out\.features shares memory with problem\.features/);
    // A Float64Array view over a Float32Array input's bytes overlaps it as well.
    const p64 = randomProblem(spec(500, { D: 6, Kv: 5, Dv: 6 }), Float64Array);
    const bytes = new Float64Array(sizes.mu + 8);
    bytes.set(p64.mu, 8);
    const q64 = { ...p64, mu: bytes.subarray(8) };
    expect(() => kmclLossRawFloat64(q64 as never, { out: { variance: bytes.subarray(0, sizes.variance) } })).toThrow(
      /^options\.out\.variance shares memory with problem\.mu/,
    );
  });

  it('memory shared with another out array', async () => {
    const buf = new Float32Array(sizes.features + sizes.logits);
    // features [0, 144), logits [143, 263): one element in common.
    const out = { features: buf.subarray(0, sizes.features), logits: buf.subarray(sizes.features - 1, sizes.features - 1 + sizes.logits) };
    expect(() => kmclLossRaw(p, { device: 'cpu', out })).toThrow(/^options\.out\.logits shares memory with options\.out\.features/);
    await expect(kmclLossRawAsync(p, { device: 'cpu', out })).rejects.toThrow(/^options\.out\.logits shares memory with options\.out\.features/);
    const same = new Float32Array(sizes.mu);
    await refused({ mu: same, variance: same }, /^options\.out\.variance shares memory with options\.out\.mu/);
    expect(buf.every((v) => v === 0)).toBe(true);
  });

  it('out with gradients off', async () => {
    await refused({ mu: new Float32Array(sizes.mu) }, /^options\.out is given but options\.gradients is false/, { gradients: false });
    await refused({}, /^options\.out is given but options\.gradients is false/, { gradients: false });
  });

  it('an out array on a SharedArrayBuffer (refused: see the README)', async () => {
    await refused({ mu: new Float32Array(new SharedArrayBuffer(4 * sizes.mu)) }, /^options\.out\.mu is on a SharedArrayBuffer, which kmcl does not write to/);
  });

  it('not an object, or an unknown field', async () => {
    await refused(new Float32Array(sizes.mu), /^options\.out must be an object \{ features\?, logits\?, mu\?, variance\? \} of Float32Arrays, got a Float32Array$/);
    await refused(null, /^options\.out must be an object .* got null$/);
    await refused({ grad: new Float32Array(3) }, /^options\.out\.grad is not a gradient; out takes features, logits, mu, variance$/);
  });

  it('the addon checks the same again when called directly (no out-of-bounds write is possible)', () => {
    const addon = nativeAddon();
    const np = { ...p, varianceShape: [5, 6] as [number, number] };
    const sentinel = new Float32Array(sizes.logits).fill(7);
    expect(() => addon.compute(np, {}, true, 'cpu', { logits: sentinel, mu: new Float32Array(10) })).toThrow(/^options\.out\.mu must have length 720/);
    expect(() => addon.compute(np, {}, true, 'cpu', { logits: sentinel, mu: new Float64Array(sizes.mu) as never })).toThrow(/^options\.out\.mu must be a Float32Array$/);
    expect(() => addon.compute(np, {}, true, 'cpu', { logits: sentinel, mu: new Float32Array(new SharedArrayBuffer(4 * sizes.mu)) })).toThrow(/SharedArrayBuffer/);
    expect(() => addon.compute(np, {}, false, 'cpu', { logits: sentinel })).toThrow(/^options\.out is given but gradients are off/);
    expect(() => addon.computeF64({ ...randomProblem(spec(500, { D: 6, Kv: 5, Dv: 6 }), Float64Array), varianceShape: [5, 6] } as never, {}, true, 'cpu', { mu: new Float32Array(sizes.mu) as never })).toThrow(
      /^options\.out\.mu must be a Float64Array$/,
    );
    expect(sentinel.every((v) => v === 7)).toBe(true);
  });

  it('an error from the core itself (after these checks) leaves the out arrays untouched, sync and async', async () => {
    // The addon called directly with an option the core refuses: the call fails inside the core.
    const addon = nativeAddon();
    const np = { ...p, varianceShape: [5, 6] as [number, number] };
    const out = outsFor(p, Float32Array, 7);
    expect(() => addon.compute(np, { temperature: -1 }, true, 'cpu', out)).toThrow(/^kmcl: options\.temperature must be > 0/);
    expect(untouched(out, 7)).toBe(true);
    await expect(addon.computeAsync(np, { temperature: -1 }, true, 'cpu', out)).rejects.toThrow(/^kmcl: options\.temperature must be > 0/);
    expect(untouched(out, 7)).toBe(true);
  });
});

describe('out with async calls: written at settle, on the calling thread, all or none', () => {
  const layout = { D: 16, Kv: 8, Dv: 16 };
  const big = (seed: number) => randomProblem({ seed, B: 160, K: 8, M: 16, ...layout, positives: 3 });

  it('the job never writes the out arrays: after it has finished they still hold their old values until the promise settles', async () => {
    const p = big(600);
    const want = kmclLossRaw(p, { device: 'cpu' });
    const out = outsFor(p, Float32Array, 7);
    const before = asyncJobStats().completed;
    const pending = kmclLossRawAsync(p, { device: 'cpu', out });
    // A sync call waits on the FIFO lock for the running job (or the job may even be done already).
    kmclLossRaw(p, { device: 'cpu', gradients: false });
    // The queue thread counts the job just after releasing the lock, so the sync call may return
    // a moment before the count moves: spin for it (the promise cannot settle meanwhile, this
    // thread is busy).
    const deadline = Date.now() + 10_000;
    while (asyncJobStats().completed < before + 1 && Date.now() < deadline) {
      // spin
    }
    expect(asyncJobStats().completed).toBe(before + 1);
    expect(untouched(out, 7)).toBe(true);
    expectSameResult(await pending, want);
  });

  it('writes into out while the call runs are overwritten when it settles', async () => {
    const p = big(601);
    const want = kmclLossRaw(p, { device: 'cpu' });
    const out = outsFor(p, Float32Array, 7);
    const pending = kmclLossRawAsync(p, { device: 'cpu', out });
    out.mu.fill(NaN);
    out.features[3] = -1;
    const got = await pending;
    expectSameResult(got, want);
    expect(got.gradients!.mu).toBe(out.mu);
  });

  it('an out array detached while the call runs: the promise rejects naming it, no out array is written', async () => {
    const p = big(602);
    const out = outsFor(p, Float32Array, 7);
    const pending = kmclLossRawAsync(p, { device: 'cpu', out });
    structuredClone(out.variance.buffer, { transfer: [out.variance.buffer] });
    await expect(pending).rejects.toThrow(
      /^kmcl: options\.out\.variance is detached \(its ArrayBuffer was transferred\) when the call settled \(it was changed while the call was running\); no out array was written$/,
    );
    expect(untouched({ features: out.features, logits: out.logits, mu: out.mu }, 7)).toBe(true);
    // The same arrays (but the detached one) work in the next call.
    const want = kmclLossRaw(p, { device: 'cpu' });
    const again = await kmclLossRawAsync(p, { device: 'cpu', out: { features: out.features, logits: out.logits, mu: out.mu } });
    expectSameResult(again, want);
  });

  it.runIf('resize' in ArrayBuffer.prototype)('an out array on a resizable ArrayBuffer shrunk while the call runs: rejected, nothing written', async () => {
    const p = big(603);
    const out = outsFor(p, Float32Array, 7, ['features', 'logits']);
    const buf = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void })(4 * p.mu.length, { maxByteLength: 8 * p.mu.length });
    const mu = new Float32Array(buf).fill(7); // length-tracking
    const pending = kmclLossRawAsync(p, { device: 'cpu', out: { ...out, mu } });
    buf.resize(4 * (p.mu.length - 2));
    await expect(pending).rejects.toThrow(/^kmcl: options\.out\.mu must have length 20480 \(shape \[160, 8, 16\]\), got 20478 when the call settled/);
    expect(untouched({ ...out, mu }, 7)).toBe(true);
  });

  it('settles in order when several pending calls share one out: each result is bitwise right when it settles', async () => {
    const out = outsFor(big(604), Float32Array, 7);
    const problems = [604, 605, 606].map(big);
    const wants = problems.map((p) => kmclLossRaw(p, { device: 'cpu' }));
    const pendings = problems.map((p) => kmclLossRawAsync(p, { device: 'cpu', out }));
    for (const [j, pending] of pendings.entries()) {
      const got = await pending;
      // The FIFO queue settles the calls in order; the last one to settle owns the values.
      expect(got.loss).toBe(wants[j].loss);
      if (j === pendings.length - 1) expectSameResult(got, wants[j]);
    }
  });
});
