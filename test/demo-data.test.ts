import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  COOCCURRENCE_DESIGN,
  computeLabelStats,
  formatStats,
  loadIdxDataset,
  loadMnistDigits,
  makeMultilabelDataset,
  type DigitSource,
  type MultilabelDataset,
  type MultilabelSplit,
} from '../apps/demo/data.js';
import { createRng, mixSeed, mulberry32 } from '../dev/seeded-random.js';

const bytes = (a: ArrayBufferView): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

function sameSplit(a: MultilabelSplit, b: MultilabelSplit): boolean {
  return (
    a.count === b.count &&
    bytes(a.images).equals(bytes(b.images)) &&
    bytes(a.labels).equals(bytes(b.labels)) &&
    bytes(a.sourceIndices).equals(bytes(b.sourceIndices)) &&
    bytes(a.sourcePool).equals(bytes(b.sourcePool))
  );
}

describe('random', () => {
  it('is deterministic per seed and stream, and seeds are validated', () => {
    const a = createRng(7);
    const b = createRng(7);
    const xs = Array.from({ length: 100 }, () => a.next());
    expect(Array.from({ length: 100 }, () => b.next())).toEqual(xs);
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
    expect(createRng(8).next()).not.toBe(xs[0]);
    expect(mixSeed(7, 1)).not.toBe(mixSeed(7, 2));
    expect(mixSeed(2 ** 40 + 1)).not.toBe(mixSeed(1));
    expect(mixSeed(-1)).not.toBe(mixSeed(1));
    const m1 = mulberry32(3);
    const m2 = mulberry32(3);
    expect(m1()).toBe(m2());
    expect(() => createRng(1.5)).toThrow(/safe integer/);
    expect(() => createRng(Number.NaN)).toThrow(/safe integer/);
  });

  it('draws integers in range, permutations, weighted picks and normals', () => {
    const r = createRng(1);
    const counts = new Array<number>(5).fill(0);
    for (let i = 0; i < 5000; i++) counts[r.nextInt(5)]++;
    expect(counts.every((c) => c > 850 && c < 1150)).toBe(true);
    expect(() => r.nextInt(0)).toThrow(RangeError);
    const p = r.permutation(50);
    expect(Array.from(p).sort((x, y) => x - y)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    const w = [0, 3, 1];
    const picks = [0, 0, 0];
    for (let i = 0; i < 4000; i++) picks[r.pickWeighted(w)]++;
    expect(picks[0]).toBe(0);
    expect(picks[1] / picks[2]).toBeGreaterThan(2.4);
    expect(picks[1] / picks[2]).toBeLessThan(3.7);
    let s = 0;
    let s2 = 0;
    for (let i = 0; i < 4000; i++) {
      const z = r.nextNormal();
      s += z;
      s2 += z * z;
    }
    expect(Math.abs(s / 4000)).toBeLessThan(0.08);
    expect(Math.abs(s2 / 4000 - 1)).toBeLessThan(0.1);
    const f1 = createRng(3).fork(1).next();
    expect(createRng(3).fork(1).next()).toBe(f1);
    expect(createRng(3).fork(2).next()).not.toBe(f1);
  });
});

describe('loadMnistDigits', () => {
  it('loads the 10,000 digits of the mnist package in class order, cached', () => {
    const src = loadMnistDigits();
    expect(src.count).toBe(10000);
    expect(src.images.length).toBe(10000 * 784);
    expect(src.labels.length).toBe(10000);
    const perClass = new Array<number>(10).fill(0);
    for (const l of src.labels) perClass[l]++;
    expect(perClass).toEqual([1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
    for (let i = 1; i < src.count; i++) expect(src.labels[i] >= src.labels[i - 1]).toBe(true);
    let min = Infinity;
    let max = -Infinity;
    for (const v of src.images) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
    expect(min).toBe(0);
    expect(max).toBe(1);
    expect(loadMnistDigits()).toBe(src);
  });
});

describe('makeMultilabelDataset', () => {
  let ds: MultilabelDataset;
  let src: DigitSource;

  beforeAll(() => {
    src = loadMnistDigits();
    ds = makeMultilabelDataset({ seed: 1, trainSize: 4000, valSize: 500, testSize: 500 });
  });

  it('has the documented shapes and values in [0, 1]', () => {
    expect(ds.classes).toBe(10);
    expect(ds.imageSize).toBe(28);
    expect(ds.cellSize).toBe(14);
    expect(ds.coOccurrence).toBe(COOCCURRENCE_DESIGN);
    for (const [split, n] of [[ds.train, 4000], [ds.val, 500], [ds.test, 500]] as const) {
      expect(split.count).toBe(n);
      expect(split.imageSize).toBe(28);
      expect(split.images).toBeInstanceOf(Float32Array);
      expect(split.images.length).toBe(n * 28 * 28);
      expect(split.labels).toBeInstanceOf(Float32Array);
      expect(split.labels.length).toBe(n * 10);
      expect(split.sourceIndices.length).toBe(n * 4);
      let min = Infinity;
      let max = -Infinity;
      for (const v of split.images) {
        if (v < min) min = v;
        if (v > max) max = v;
      }
      expect(min).toBe(0);
      expect(max).toBeLessThanOrEqual(1);
      expect(max).toBeGreaterThan(0.9);
      expect(split.labels.every((v) => v === 0 || v === 1)).toBe(true);
    }
  });

  it('gives byte-identical datasets for the same seed and different ones for another seed', () => {
    const again = makeMultilabelDataset({ seed: 1, trainSize: 4000, valSize: 500, testSize: 500 });
    expect(sameSplit(again.train, ds.train)).toBe(true);
    expect(sameSplit(again.val, ds.val)).toBe(true);
    expect(sameSplit(again.test, ds.test)).toBe(true);
    const other = makeMultilabelDataset({ seed: 2, trainSize: 4000, valSize: 500, testSize: 500 });
    expect(bytes(other.train.images).equals(bytes(ds.train.images))).toBe(false);
    expect(bytes(other.train.labels).equals(bytes(ds.train.labels))).toBe(false);
    expect(bytes(other.test.images).equals(bytes(ds.test.images))).toBe(false);
    expect(bytes(other.train.sourcePool).equals(bytes(ds.train.sourcePool))).toBe(false);
  });

  it('keeps a split unchanged when another split changes size, and smaller splits are prefixes', () => {
    const small = makeMultilabelDataset({ seed: 1, trainSize: 100, valSize: 500, testSize: 200 });
    expect(sameSplit(small.val, ds.val)).toBe(true);
    expect(bytes(small.train.images).equals(bytes(ds.train.images.subarray(0, 100 * 784)))).toBe(true);
    expect(bytes(small.train.labels).equals(bytes(ds.train.labels.subarray(0, 100 * 10)))).toBe(true);
    expect(bytes(small.test.sourceIndices).equals(bytes(ds.test.sourceIndices.subarray(0, 200 * 4)))).toBe(true);
  });

  it('labels every image with the set of 1–4 digits drawn into its cells', () => {
    for (const split of [ds.train, ds.val, ds.test]) {
      for (let n = 0; n < split.count; n++) {
        const expected = new Array<number>(10).fill(0);
        let occupied = 0;
        for (let c = 0; c < 4; c++) {
          const idx = split.sourceIndices[n * 4 + c];
          const d = split.cellDigits[n * 4 + c];
          if (idx < 0) {
            expect(d).toBe(-1);
            continue;
          }
          occupied++;
          expect(src.labels[idx]).toBe(d);
          expected[d] = 1;
        }
        expect(occupied).toBeGreaterThanOrEqual(1);
        const got = Array.from(split.labels.subarray(n * 10, n * 10 + 10));
        expect(got).toEqual(expected);
        const k = got.reduce((s, v) => s + v, 0);
        expect(k).toBeGreaterThanOrEqual(1);
        expect(k).toBeLessThanOrEqual(4);
      }
    }
    // All label counts 1..4 occur, repeats occur (more occupied cells than labels), and empty cells occur.
    const hist = ds.stats.train.labelCountHistogram;
    expect(hist[0]).toBe(0);
    for (let k = 1; k <= 4; k++) expect(hist[k]).toBeGreaterThan(200);
    expect(hist.slice(5).every((v) => v === 0)).toBe(true);
    let repeats = 0;
    let empties = 0;
    for (let n = 0; n < ds.train.count; n++) {
      const cells = Array.from(ds.train.cellDigits.subarray(n * 4, n * 4 + 4)).filter((d) => d >= 0);
      if (new Set(cells).size < cells.length) repeats++;
      empties += 4 - cells.length;
    }
    expect(repeats).toBeGreaterThan(200);
    expect(empties).toBeGreaterThan(1000);
  });

  it('draws each cell from its source digit, 2× average-pooled, and leaves empty cells black', () => {
    const S = 28;
    const split = ds.train;
    for (let n = 0; n < 50; n++) {
      for (let c = 0; c < 4; c++) {
        const idx = split.sourceIndices[n * 4 + c];
        const oy = (c >> 1) * 14;
        const ox = (c & 1) * 14;
        for (const [y, x] of [[0, 0], [6, 7], [7, 6], [13, 13], [10, 3]]) {
          const got = split.images[n * S * S + (oy + y) * S + ox + x];
          if (idx < 0) {
            expect(got).toBe(0);
          } else {
            const s = (yy: number, xx: number): number => src.images[idx * 784 + yy * 28 + xx];
            const want = (s(2 * y, 2 * x) + s(2 * y, 2 * x + 1) + s(2 * y + 1, 2 * x) + s(2 * y + 1, 2 * x + 1)) / 4;
            expect(got).toBeCloseTo(want, 5);
          }
        }
      }
    }
  });

  it('supports cellSize 28 (56×56 images, cells are the source digits unchanged)', () => {
    const big = makeMultilabelDataset({ seed: 3, trainSize: 20, valSize: 0, testSize: 5, cellSize: 28 });
    expect(big.imageSize).toBe(56);
    expect(big.train.images.length).toBe(20 * 56 * 56);
    expect(big.val.count).toBe(0);
    expect(big.val.images.length).toBe(0);
    expect(big.stats.val.count).toBe(0);
    for (let n = 0; n < 20; n++) {
      for (let c = 0; c < 4; c++) {
        const idx = big.train.sourceIndices[n * 4 + c];
        for (let y = 0; y < 28; y++) {
          const row = big.train.images.subarray(n * 3136 + ((c >> 1) * 28 + y) * 56 + (c & 1) * 28, n * 3136 + ((c >> 1) * 28 + y) * 56 + (c & 1) * 28 + 28);
          if (idx < 0) expect(row.every((v) => v === 0)).toBe(true);
          else expect(Array.from(row)).toEqual(Array.from(src.images.subarray(idx * 784 + y * 28, idx * 784 + y * 28 + 28)));
        }
      }
    }
    const tiny = makeMultilabelDataset({ seed: 3, trainSize: 4, valSize: 1, testSize: 1, cellSize: 7 });
    expect(tiny.imageSize).toBe(14);
    expect(tiny.train.images.length).toBe(4 * 196);
  });

  it('uses disjoint source digits in train, validation and test (class-stratified 80/10/10)', () => {
    const pools = [ds.train.sourcePool, ds.val.sourcePool, ds.test.sourcePool];
    expect(pools.map((p) => p.length)).toEqual([8006, 997, 997]); // ⌊10 %⌋ of each class held out twice
    const owner = new Int8Array(10000).fill(-1);
    pools.forEach((pool, s) => {
      for (const idx of pool) {
        expect(owner[idx]).toBe(-1);
        owner[idx] = s;
      }
    });
    expect(owner.every((o) => o >= 0)).toBe(true);
    const used = [ds.train, ds.val, ds.test].map((split, s) => {
      const set = new Set<number>();
      for (const idx of split.sourceIndices) {
        if (idx < 0) continue;
        expect(owner[idx]).toBe(s);
        set.add(idx);
      }
      return set;
    });
    for (const idx of used[1]) expect(used[0].has(idx) || used[2].has(idx)).toBe(false);
    for (const idx of used[2]) expect(used[0].has(idx)).toBe(false);
    // Within a split, a class's digits are all used before any is reused.
    const perClassUsed = new Array<number>(10).fill(0);
    for (const idx of used[1]) perClassUsed[src.labels[idx]]++;
    const perClassPool = new Array<number>(10).fill(0);
    for (const idx of ds.val.sourcePool) perClassPool[src.labels[idx]]++;
    const perClassDrawn = new Array<number>(10).fill(0);
    for (const d of ds.val.cellDigits) if (d >= 0) perClassDrawn[d]++;
    for (let d = 0; d < 10; d++) expect(perClassUsed[d]).toBe(Math.min(perClassDrawn[d], perClassPool[d]));
  });

  it('follows the co-occurrence design: strongly paired classes co-occur far above P(a)P(b)', () => {
    const st = ds.stats.train;
    expect(st.count).toBe(4000);
    expect(st.meanLabelsPerImage).toBeGreaterThan(2);
    expect(st.meanLabelsPerImage).toBeLessThan(2.4);
    const freq = st.classFrequency;
    expect(Math.max(...freq) / Math.min(...freq)).toBeGreaterThan(2);
    for (const [a, b] of COOCCURRENCE_DESIGN.strongPairs) {
      const pab = st.coOccurrence[a][b] / st.count;
      expect(pab).toBeGreaterThan(1.8 * freq[a] * freq[b]);
      expect(st.lift[a][b]).toBeGreaterThan(1.8);
      expect(st.conditional[a][b]).toBeGreaterThan(0.3);
    }
    for (const [a, b] of COOCCURRENCE_DESIGN.repellingPairs) expect(st.lift[a][b]).toBeLessThan(0.6);
    // The strongest partner of each class (by lift) is its designed pair.
    for (const [a, b] of COOCCURRENCE_DESIGN.strongPairs) {
      const row = st.lift[a].map((v, j) => (j === a ? -1 : v));
      expect(row.indexOf(Math.max(...row))).toBe(b);
    }
    // The same structure holds in the held-out split.
    for (const [a, b] of COOCCURRENCE_DESIGN.strongPairs) expect(ds.stats.test.lift[a][b]).toBeGreaterThan(1.3);
  });

  it('rejects bad configs with messages that say what is allowed', () => {
    const base = { seed: 1, trainSize: 10, valSize: 10, testSize: 10 };
    expect(() => makeMultilabelDataset({ ...base, trainSize: -1 })).toThrow(/trainSize must be an integer ≥ 0 \(got -1\)/);
    expect(() => makeMultilabelDataset({ ...base, valSize: 2.5 })).toThrow(/valSize must be an integer ≥ 0/);
    expect(() => makeMultilabelDataset({ ...base, testSize: Number.NaN })).toThrow(/testSize must be an integer ≥ 0/);
    expect(() => makeMultilabelDataset({ ...base, seed: 0.5 })).toThrow(/seed must be a safe integer \(got 0.5\)/);
    expect(() => makeMultilabelDataset({ ...base, seed: Number.POSITIVE_INFINITY })).toThrow(/seed must be a safe integer/);
    expect(() => makeMultilabelDataset({ ...base, cellSize: 10 })).toThrow(/cellSize must be one of 7, 14, 28 \(got 10\)/);
    expect(() => makeMultilabelDataset({ ...base, trainSize: 10_000_000 })).toThrow(/at most 342392 images of 28×28/);
    expect(() => makeMultilabelDataset({ ...base, testSize: 100_000, cellSize: 28 })).toThrow(/at most 85598 images of 56×56/);
    expect(() => makeMultilabelDataset(null as never)).toThrow(TypeError);
  });

  it('accepts another digit source and says when a split lacks a class', () => {
    const n = 300;
    const images = new Float32Array(n * 784);
    const labels = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      labels[i] = i % 10;
      images.fill((i % 10) / 10, i * 784, (i + 1) * 784);
    }
    const custom = makeMultilabelDataset({ seed: 5, trainSize: 30, valSize: 5, testSize: 5, source: { images, labels, count: n } });
    expect(custom.train.sourcePool.length).toBe(240);
    // Label sets and cell layouts depend on the seed only, not on the source digits.
    const mn = makeMultilabelDataset({ seed: 5, trainSize: 30, valSize: 5, testSize: 5 });
    expect(Array.from(custom.train.labels)).toEqual(Array.from(mn.train.labels));
    expect(Array.from(custom.test.cellDigits)).toEqual(Array.from(mn.test.cellDigits));
    for (let i = 0; i < custom.train.count * 4; i++) {
      const idx = custom.train.sourceIndices[i];
      if (idx >= 0) expect(labels[idx]).toBe(custom.train.cellDigits[i]);
    }
    const few = { images: images.subarray(0, 12 * 784), labels: labels.subarray(0, 12), count: 12 };
    expect(() => makeMultilabelDataset({ seed: 5, trainSize: 3, valSize: 1, testSize: 0, source: few })).toThrow(
      /split's share of the source .* has no digit of class/,
    );
    expect(() =>
      makeMultilabelDataset({ seed: 5, trainSize: 3, valSize: 0, testSize: 0, source: { images, labels, count: 5 } }),
    ).toThrow(/count × 784/);
  });

  it('computes and formats label statistics as markdown', () => {
    const labels = new Float32Array([1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0]); // 4 images × 3 classes
    const st = computeLabelStats(labels, 4, 3);
    expect(st.classCounts).toEqual([3, 1, 1]);
    expect(st.labelCountHistogram).toEqual([1, 1, 2, 0]);
    expect(st.meanLabelsPerImage).toBe(1.25);
    expect(st.coOccurrence[0][1]).toBe(1);
    expect(st.conditional[0][1]).toBeCloseTo(1 / 3);
    expect(st.lift[0][1]).toBeCloseTo((1 / 4) / ((3 / 4) * (1 / 4)));
    expect(() => computeLabelStats(labels, 5, 3)).toThrow(/expected count × classes = 15/);

    const md = formatStats(ds.stats.train);
    expect(md).toContain('| class | images | frequency |');
    expect(md).toContain('labels per image');
    expect(md).toContain('| | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |');
    expect(md).toContain(`| 0 | ${ds.stats.train.classCounts[0]} |`);
    expect(md).toMatch(/Lift/);
    const cond = formatStats(ds.stats.train, { tables: ['conditional'], headingLevel: 3 });
    expect(cond.startsWith('### Conditional')).toBe(true);
    expect(cond.split('\n').filter((l) => l.startsWith('| **')).length).toBe(10);
  });
});

describe('loadIdxDataset', () => {
  let dir: string;

  function idx(type: number, dims: number[], data: number[]): Buffer {
    const header = Buffer.alloc(4 + 4 * dims.length);
    header[2] = type;
    header[3] = dims.length;
    dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
    return Buffer.concat([header, Buffer.from(data)]);
  }
  const pixels = (n: number, base: number): number[] =>
    Array.from({ length: n * 784 }, (_, i) => (base + i) % 256);

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kmcl-idx-'));
    writeFileSync(join(dir, 'train-images-idx3-ubyte'), idx(8, [3, 28, 28], pixels(3, 0)));
    writeFileSync(join(dir, 'train-labels-idx1-ubyte'), idx(8, [3], [7, 0, 9]));
    writeFileSync(join(dir, 't10k-images-idx3-ubyte.gz'), gzipSync(idx(8, [2, 28, 28], pixels(2, 100))));
    writeFileSync(join(dir, 't10k-labels-idx1-ubyte.gz'), gzipSync(idx(8, [2], [4, 4])));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads plain and gzipped IDX files, train then t10k, scaled to [0, 1]', () => {
    const all = loadIdxDataset(dir);
    expect(all.count).toBe(5);
    expect(Array.from(all.labels)).toEqual([7, 0, 9, 4, 4]);
    expect(all.images.length).toBe(5 * 784);
    expect(all.images[0]).toBe(0);
    expect(all.images[255]).toBeCloseTo(1, 6);
    expect(all.images[256]).toBe(0);
    expect(all.images[3 * 784]).toBeCloseTo(100 / 255, 6);
    const train = loadIdxDataset(dir, 'train');
    expect(train.count).toBe(3);
    expect(Array.from(train.images)).toEqual(Array.from(all.images.subarray(0, 3 * 784)));
    const test = loadIdxDataset(dir, 'test');
    expect(Array.from(test.labels)).toEqual([4, 4]);
  });

  it('names the missing or malformed file', () => {
    const empty = mkdtempSync(join(tmpdir(), 'kmcl-idx-empty-'));
    try {
      expect(() => loadIdxDataset(empty)).toThrow(/missing .*train-images-idx3-ubyte \(also looked for train-images-idx3-ubyte\.gz/);
      writeFileSync(join(empty, 'train-images.idx3-ubyte'), idx(8, [1, 28, 28], pixels(1, 0)));
      expect(() => loadIdxDataset(empty, 'train')).toThrow(/missing .*train-labels-idx1-ubyte/);
      writeFileSync(join(empty, 'train-labels.idx1-ubyte'), idx(8, [2], [1, 2]));
      expect(() => loadIdxDataset(empty, 'train')).toThrow(/has 1 images but .*train-labels\.idx1-ubyte has 2 labels/);
      writeFileSync(join(empty, 'train-labels.idx1-ubyte'), idx(8, [1], [12]));
      expect(() => loadIdxDataset(empty, 'train')).toThrow(/label 0 is 12; labels must be 0–9/);
      writeFileSync(join(empty, 'train-images.idx3-ubyte'), idx(8, [1, 14, 14], pixels(1, 0).slice(0, 196)));
      expect(() => loadIdxDataset(empty, 'train')).toThrow(/holds 14×14 images; only 28×28/);
      writeFileSync(join(empty, 'train-images.idx3-ubyte'), idx(8, [2, 28, 28], pixels(1, 0)));
      expect(() => loadIdxDataset(empty, 'train')).toThrow(/train-images\.idx3-ubyte has 784 data bytes; its header \(2×28×28\) says 1568/);
      writeFileSync(join(empty, 'train-images.idx3-ubyte'), Buffer.from('not an idx file'));
      expect(() => loadIdxDataset(empty, 'train')).toThrow(/not an IDX file/);
      expect(() => loadIdxDataset(empty, 'bogus' as never)).toThrow(/'train', 'test' or 'all'/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
