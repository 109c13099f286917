import { beforeAll, describe, expect, it } from 'vitest';

import { loadMnistDigits, type DigitSource, type MultilabelSplit } from '../apps/demo/data.js';
import { GRID_CELLS, GRID_CELL_SIZE, GRID_DESIGN, GRID_FREQUENCY_ORDER, GRID_IMAGE_SIZE, makeGridDataset, type GridDataset } from '../apps/demo/hard-task.js';

const bytes = (a: ArrayBufferView): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const S = GRID_IMAGE_SIZE;
const cs = GRID_CELL_SIZE;

/** Σ of the pixels of cell c of image n. */
function cellSum(split: MultilabelSplit, n: number, c: number): number {
  const cy = Math.floor(c / 3) * cs;
  const cx = (c % 3) * cs;
  let s = 0;
  for (let y = 0; y < cs; y++) for (let x = 0; x < cs; x++) s += split.images[n * S * S + (cy + y) * S + cx + x];
  return s;
}

/** The central 20×20 box of source digit i, 2× average-pooled (what a clean digit cell holds, up to a ±1 shift). */
function pooledDigit(src: DigitSource, i: number): Float32Array {
  const out = new Float32Array(cs * cs);
  for (let y = 0; y < cs; y++) {
    for (let x = 0; x < cs; x++) {
      const r = i * 784 + (4 + 2 * y) * 28 + 4 + 2 * x;
      out[y * cs + x] = Math.min(1, 0.25 * (src.images[r] + src.images[r + 1] + src.images[r + 28] + src.images[r + 29]));
    }
  }
  return out;
}

describe('makeGridDataset (the grid task)', () => {
  let src: DigitSource;
  let ds: GridDataset;
  let clean: GridDataset;

  beforeAll(() => {
    src = loadMnistDigits();
    ds = makeGridDataset({ seed: 5, trainSize: 3000, valSize: 300, testSize: 600 });
    clean = makeGridDataset({ seed: 5, trainSize: 200, valSize: 10, testSize: 10, difficulty: 0 });
  });

  it('has 30×30 images in [0, 1], 9 cells, and labels that are the set of digits in the cells', () => {
    expect(ds.imageSize).toBe(30);
    expect(ds.cellsPerImage).toBe(9);
    for (const split of [ds.train, ds.val, ds.test]) {
      expect(split.images.length).toBe(split.count * S * S);
      expect(split.cellDigits.length).toBe(split.count * GRID_CELLS);
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of split.images) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      expect(lo).toBe(0);
      expect(hi).toBeLessThanOrEqual(1);
      for (let n = 0; n < split.count; n++) {
        const present = new Set<number>();
        for (let c = 0; c < GRID_CELLS; c++) {
          const d = split.cellDigits[n * GRID_CELLS + c];
          const idx = split.sourceIndices[n * GRID_CELLS + c];
          expect(d < 0).toBe(idx < 0);
          if (d >= 0) {
            present.add(d);
            expect(src.labels[idx]).toBe(d);
          }
        }
        expect(present.size).toBeGreaterThanOrEqual(1);
        expect(present.size).toBeLessThanOrEqual(6);
        for (let k = 0; k < 10; k++) expect(split.labels[n * 10 + k]).toBe(present.has(k) ? 1 : 0);
      }
    }
  });

  it('at difficulty 0 holds exactly the pooled source digits (±1 pixel shift) and nothing in empty cells', () => {
    const split = clean.train;
    for (let n = 0; n < 50; n++) {
      for (let c = 0; c < GRID_CELLS; c++) {
        const idx = split.sourceIndices[n * GRID_CELLS + c];
        if (idx < 0) {
          expect(cellSum(split, n, c)).toBe(0);
          continue;
        }
        const want = pooledDigit(src, idx);
        const cy = Math.floor(c / 3) * cs;
        const cx = (c % 3) * cs;
        // Some shift (dx, dy) ∈ {−1, 0, 1}² reproduces the cell exactly.
        let matched = false;
        for (let dy = -1; dy <= 1 && !matched; dy++) {
          for (let dx = -1; dx <= 1 && !matched; dx++) {
            let ok = true;
            for (let y = 0; y < cs && ok; y++) {
              for (let x = 0; x < cs && ok; x++) {
                const sy = y - dy;
                const sx = x - dx;
                const v = sy >= 0 && sy < cs && sx >= 0 && sx < cs ? want[sy * cs + sx] : 0;
                ok = split.images[n * S * S + (cy + y) * S + cx + x] === v;
              }
            }
            matched = ok;
          }
        }
        expect(matched).toBe(true);
      }
    }
  });

  it('adds distractors at difficulty 1: fragments in empty cells and noise', () => {
    let emptyCells = 0;
    let clutteredCells = 0;
    for (let n = 0; n < 500; n++) {
      for (let c = 0; c < GRID_CELLS; c++) {
        if (ds.train.cellDigits[n * GRID_CELLS + c] >= 0) continue;
        emptyCells++;
        // Noise alone (σ 0.05, clipped at 0) sums to about 100 · 0.02 = 2 per cell; a half digit adds more.
        if (cellSum(ds.train, n, c) > 10) clutteredCells++;
      }
    }
    const share = clutteredCells / emptyCells;
    expect(share).toBeGreaterThan(0.3 * GRID_DESIGN.fragmentProbability);
    expect(share).toBeLessThan(1.2 * GRID_DESIGN.fragmentProbability);
    // The same seed without distractors has the same labels and layout.
    const small = makeGridDataset({ seed: 5, trainSize: 200, valSize: 10, testSize: 10 });
    expect(bytes(small.train.labels).equals(bytes(clean.train.labels))).toBe(true);
    expect(bytes(small.train.cellDigits).equals(bytes(clean.train.cellDigits))).toBe(true);
    expect(bytes(small.train.images).equals(bytes(clean.train.images))).toBe(false);
  });

  it('is long-tailed along the designed order, with the designed co-occurrence', () => {
    const st = ds.stats.train;
    const f = st.classFrequency;
    expect(st.meanLabelsPerImage).toBeGreaterThan(2.6);
    expect(st.meanLabelsPerImage).toBeLessThan(2.95);
    expect(f[GRID_FREQUENCY_ORDER[0]]).toBe(Math.max(...f));
    expect(Math.max(...f) / Math.min(...f)).toBeGreaterThan(4);
    // Lift is bounded by 1 / P(a): pairs with the head class (in ¾ of the images) show it less.
    for (const [a, b] of GRID_DESIGN.strongPairs) expect(st.lift[a][b]).toBeGreaterThan(a === 1 || b === 1 ? 1.15 : 1.5);
    for (const [a, b] of GRID_DESIGN.strongPairs) {
      expect(Math.max(st.conditional[a][b], st.conditional[b][a])).toBeGreaterThan(0.4);
      // b is a's strongest partner by lift.
      const row = st.lift[a].map((v, j) => (j === a ? -1 : v));
      expect(row.indexOf(Math.max(...row))).toBe(b);
    }
    for (const [a, b] of GRID_DESIGN.repellingPairs) expect(st.lift[a][b]).toBeLessThan(0.9);
  });

  it('is deterministic, keeps splits disjoint, and a smaller training split is a prefix', () => {
    const again = makeGridDataset({ seed: 5, trainSize: 1000, valSize: 300, testSize: 600 });
    const n = 1000 * S * S;
    expect(bytes(again.train.images).equals(bytes(ds.train.images.subarray(0, n)))).toBe(true);
    expect(bytes(again.val.images).equals(bytes(ds.val.images))).toBe(true);
    expect(bytes(again.test.labels).equals(bytes(ds.test.labels))).toBe(true);
    const other = makeGridDataset({ seed: 6, trainSize: 10, valSize: 0, testSize: 0 });
    expect(bytes(other.train.images).equals(bytes(ds.train.images.subarray(0, 10 * S * S)))).toBe(false);
    const owner = new Int8Array(src.count).fill(-1);
    [ds.train, ds.val, ds.test].forEach((split, s) => {
      for (const idx of split.sourcePool) {
        expect(owner[idx]).toBe(-1);
        owner[idx] = s;
      }
    });
    [ds.train, ds.val, ds.test].forEach((split, s) => {
      for (const idx of split.sourceIndices) if (idx >= 0) expect(owner[idx]).toBe(s);
    });
  });

  it('rejects bad configs with messages naming the field', () => {
    expect(() => makeGridDataset({ seed: 1.5, trainSize: 1, valSize: 1, testSize: 1 })).toThrow(/seed must be a safe integer/);
    expect(() => makeGridDataset({ seed: 1, trainSize: -1, valSize: 1, testSize: 1 })).toThrow(/trainSize must be an integer/);
    expect(() => makeGridDataset({ seed: 1, trainSize: 1, valSize: 1, testSize: 1, difficulty: 3 })).toThrow(/difficulty must be a number in \[0, 2\]/);
    expect(() => makeGridDataset({ seed: 1, trainSize: 1, valSize: 1, testSize: 1, difficulty: Number.NaN })).toThrow(/difficulty/);
  });
});
