/**
 * The seeded pseudo-random number generator that the tests, the benchmarks and the apps (demo
 * and study: data generation, weight initialisation, batch shuffling) share. Development code:
 * not part of the published package. Same seed → same stream, on every platform:
 * everything is 32-bit integer arithmetic (`Math.imul`, `>>>`), no `Math.random`.
 *
 * The core generator is mulberry32 (Tommy Ettinger's 32-bit state generator; period 2^32,
 * passes gjrand/PractRand for the amounts a demo draws). Seeds are any safe integer and are
 * first hashed (lowbias32 finaliser over both 32-bit halves), so nearby seeds (1, 2, 3…) give
 * unrelated streams. {@link mixSeed} derives independent sub-streams ("stream ids") from one
 * seed, so e.g. the validation split does not change when the training split size changes.
 */

const TWO_32 = 4294967296;

/** lowbias32 integer finaliser (Chris Wellons' hash-prospector): a bijection on uint32. */
export function hash32(x: number): number {
  let h = x >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

function assertSeed(seed: number, what: string): void {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) {
    throw new RangeError(`${what} must be a safe integer (got ${String(seed)}).`);
  }
}

/**
 * Hashes a seed (any safe integer, negative allowed) and optional stream ids (safe
 * integers) into one well-mixed uint32 state. `mixSeed(s, a) !== mixSeed(s, b)` for a ≠ b in
 * practice, and the result does not look like `s`.
 *
 * @throws RangeError when the seed or a stream id is not a safe integer.
 */
export function mixSeed(seed: number, ...streams: number[]): number {
  assertSeed(seed, 'seed');
  const lo = seed >>> 0;
  const hi = Math.floor(seed / TWO_32) >>> 0;
  let h = hash32(hash32(lo ^ 0x9e3779b9) ^ hash32(hi + 0x632be5ab));
  for (const s of streams) {
    assertSeed(s, 'stream id');
    const slo = s >>> 0;
    const shi = Math.floor(s / TWO_32) >>> 0;
    h = hash32(h ^ hash32(slo + 0x85ebca6b) ^ hash32(shi ^ 0xc2b2ae35));
  }
  return h;
}

/**
 * The raw mulberry32 generator: returns a function giving floats uniform in [0, 1) with 32
 * random bits each. `state` is used as is (mod 2^32); prefer {@link createRng}, which hashes
 * the seed first.
 */
export function mulberry32(state: number): () => number {
  let a = state >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / TWO_32;
  };
}

/** Array-likes {@link Rng.shuffle} can permute in place. */
export type Shuffleable =
  | unknown[]
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array;

/**
 * A seeded generator (mulberry32 core) with the helpers the demo needs. Not cryptographic.
 * Create one with {@link createRng}.
 */
export class Rng {
  private state: number;
  private spareNormal: number | null = null;

  /** @param state a uint32 state, normally from {@link mixSeed}. */
  constructor(state: number) {
    this.state = state >>> 0;
  }

  /** The next 32 random bits as an unsigned integer in [0, 2^32). */
  nextUint32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** A float uniform in [0, 1) (32 random bits). */
  next(): number {
    return this.nextUint32() / TWO_32;
  }

  /**
   * An integer uniform in [0, n), 1 ≤ n ≤ 2^32, without modulo bias (rejection sampling).
   * @throws RangeError when n is not an integer in [1, 2^32].
   */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > TWO_32) {
      throw new RangeError(`nextInt(n) needs an integer n in [1, 2^32] (got ${String(n)}).`);
    }
    const limit = TWO_32 - (TWO_32 % n); // largest multiple of n that fits in 2^32
    let x = this.nextUint32();
    while (x >= limit) x = this.nextUint32();
    return x % n;
  }

  /** A float uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** A standard normal draw (Box–Muller, the second value of each pair is cached). */
  nextNormal(): number {
    if (this.spareNormal !== null) {
      const s = this.spareNormal;
      this.spareNormal = null;
      return s;
    }
    let u = this.next();
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spareNormal = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** True with probability p. */
  bernoulli(p: number): boolean {
    return this.next() < p;
  }

  /**
   * Draws an index i with probability weights[i] / Σ weights.
   * @throws RangeError when the weights are empty, negative, non-finite or all zero.
   */
  pickWeighted(weights: ArrayLike<number>): number {
    let total = 0;
    for (let i = 0; i < weights.length; i++) {
      const w = weights[i];
      if (!(w >= 0) || !Number.isFinite(w)) {
        throw new RangeError(`pickWeighted: weight ${i} is ${String(w)}; weights must be finite and ≥ 0.`);
      }
      total += w;
    }
    if (!(total > 0)) throw new RangeError('pickWeighted: the weights sum to 0.');
    let r = this.next() * total;
    let last = -1;
    for (let i = 0; i < weights.length; i++) {
      if (weights[i] > 0) {
        last = i;
        if (r < weights[i]) return i;
        r -= weights[i];
      }
    }
    return last; // floating-point round-off on the last bucket
  }

  /** Shuffles an array or typed array in place (Fisher–Yates) and returns it. */
  shuffle<T extends Shuffleable>(arr: T): T {
    const a = arr as unknown as { [i: number]: unknown; length: number };
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
    return arr;
  }

  /** A permutation of 0…n-1 as an Int32Array. */
  permutation(n: number): Int32Array {
    const p = new Int32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle(p);
  }

  /**
   * An independent generator derived from this one's next draw and a stream id; advances
   * this generator by one draw.
   */
  fork(stream = 0): Rng {
    return new Rng(mixSeed(this.nextUint32(), stream));
  }
}

/**
 * A seeded {@link Rng}. The seed (any safe integer) and optional stream ids are hashed with
 * {@link mixSeed}; equal arguments give identical streams.
 *
 * @throws RangeError when the seed or a stream id is not a safe integer.
 */
export function createRng(seed: number, ...streams: number[]): Rng {
  return new Rng(mixSeed(seed, ...streams));
}
