import '@tensorflow/tfjs';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { mulberry32 } from './helpers.js';
import { meanAveragePrecision, multilabelMetrics, type PrecisionRecallF1 } from '../src/metrics.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

// Five samples, four classes. Class 2 has a four-way tie at 0.5; class 3 has no positive.
const SCORES = [
  [0.9, 0.1, 0.5, 0.6],
  [0.8, 0.7, 0.5, 0.2],
  [0.3, 0.6, 0.5, 0.9],
  [0.2, 0.4, 0.2, 0.3],
  [0.1, 0.9, 0.5, 0.4],
];
const LABELS = [
  [1, 0, 0, 0],
  [0, 1, 1, 0],
  [1, 0, 1, 0],
  [0, 0, 0, 0],
  [1, 1, 0, 0],
];

function expectClose(got: PrecisionRecallF1, want: PrecisionRecallF1): void {
  for (const key of ['CP', 'CR', 'CF1', 'OP', 'OR', 'OF1'] as const) {
    expect(got[key], key).toBeCloseTo(want[key], 12);
  }
}

describe('meanAveragePrecision', () => {
  it('hand-computed example with ties and a class without positives', () => {
    // Class 0: ranking s0(+) .9, s1(−) .8, s2(+) .3, s3(−) .2, s4(+) .1
    //   precisions at the positives: 1/1, 2/3, 3/5 → AP = (1 + 2/3 + 3/5)/3 = (34/15)/3 = 34/45.
    // Class 1: ranking s4(+) .9, s1(+) .7, s2 .6, s3 .4, s0 .1 → 1/1, 2/2 → AP = 1.
    // Class 2: s0, s1(+), s2(+), s4 tie at .5, then s3 .2. The tie group spans ranks 1–4 with
    //   2 positives: each gets the precision at rank 4, 2/4 → AP = 1/2. (Pessimistic order would
    //   give (1/3 + 2/4)/2 = 5/12, index order (1/2 + 2/3)/2 = 7/12, optimistic 1.)
    // Class 3: no positive → null, left out.
    // mAP = (34/45 + 1 + 1/2) / 3 = (101.5/45)/3 = 101.5/135.
    const r = meanAveragePrecision(SCORES, LABELS);
    expect(r.perClass[0]).toBeCloseTo(34 / 45, 12);
    expect(r.perClass[1]).toBe(1);
    expect(r.perClass[2]).toBeCloseTo(0.5, 12);
    expect(r.perClass[3]).toBeNull();
    expect(r.classesWithoutPositives).toEqual([3]);
    expect(r.mAP).toBeCloseTo(101.5 / 135, 12);
  });

  it('ties do not depend on the sample order', () => {
    const perm = [4, 2, 0, 3, 1];
    const r1 = meanAveragePrecision(SCORES, LABELS);
    const r2 = meanAveragePrecision(
      perm.map((i) => SCORES[i]),
      perm.map((i) => LABELS[i]),
    );
    expect(r2).toEqual(r1);
  });

  it('all scores tied: AP = fraction of positives', () => {
    // One group of 4 with 1 positive: precision 1/4 at rank 4.
    const r = meanAveragePrecision([[0.3], [0.3], [0.3], [0.3]], [[0], [1], [0], [0]]);
    expect(r.perClass[0]).toBeCloseTo(0.25, 12);
  });

  it('perfect and worst rankings', () => {
    // Perfect: positives ranked 1, 2 → AP = 1. Worst with 4 samples: positives at ranks 3, 4 →
    // (1/3 + 2/4)/2 = 5/12.
    expect(meanAveragePrecision([[4], [3], [2], [1]], [[1], [1], [0], [0]]).mAP).toBe(1);
    expect(meanAveragePrecision([[4], [3], [2], [1]], [[0], [0], [1], [1]]).mAP).toBeCloseTo(5 / 12, 12);
  });

  it('no class with positives gives NaN and lists every class', () => {
    const r = meanAveragePrecision([[0.1, 0.2]], [[0, 0]]);
    expect(r.mAP).toBeNaN();
    expect(r.perClass).toEqual([null, null]);
    expect(r.classesWithoutPositives).toEqual([0, 1]);
  });

  it('accepts ±Infinity scores', () => {
    // Ranking: s1(+) +∞, s0(−) 0, s2(+) −∞ → (1/1 + 2/3)/2 = 5/6.
    expect(meanAveragePrecision([[0], [Infinity], [-Infinity]], [[0], [1], [1]]).mAP).toBeCloseTo(5 / 6, 12);
  });
});

describe('multilabelMetrics', () => {
  it('hand-computed example at threshold 0.5', () => {
    // Predicted (score ≥ 0.5):          labels:
    //   s0 [1,0,1,1]                    [1,0,0,0]
    //   s1 [1,1,1,0]                    [0,1,1,0]
    //   s2 [0,1,1,1]                    [1,0,1,0]
    //   s3 [0,0,0,0]                    [0,0,0,0]
    //   s4 [0,1,1,0]                    [1,1,0,0]
    // Per class (Nc, Np, Ng): k0 (1, 2, 3), k1 (2, 3, 2), k2 (2, 4, 2), k3 (0, 2, 0).
    // CP = (1/2 + 2/3 + 1/2 + 0)/4 = 5/12; CR = (1/3 + 1 + 1 + 0)/4 = 7/12 (k3: 0/0 → 0);
    // CF1 = 2·(5/12)(7/12)/(12/12) = 35/72.
    // OP = 5/11, OR = 5/7, OF1 = 2·(5/11)(5/7)/(5/11 + 5/7) = (50/77)/(90/77) = 5/9.
    // Top 3 (and ≥ 0.5): s0 {k0 .9, k3 .6, k2 .5}, s1 {k0, k1, k2}, s2 {k3, k1, k2},
    // s3 none ≥ .5, s4 {k1 .9, k2 .5} (k3 .4 is in the top 3 but below 0.5) → same as above.
    const r = multilabelMetrics(SCORES, LABELS);
    const atThreshold = { CP: 5 / 12, CR: 7 / 12, CF1: 35 / 72, OP: 5 / 11, OR: 5 / 7, OF1: 5 / 9 };
    expectClose(r, atThreshold);
    expectClose(r.top3, atThreshold);
  });

  it('hand-computed top-2', () => {
    // Top 2 per sample, kept only if ≥ 0.5:
    //   s0 {k0 .9, k3 .6}, s1 {k0 .8, k1 .7}, s2 {k3 .9, k1 .6}, s3 {k1 .4, k3 .3} → none,
    //   s4 {k1 .9, k2 .5}.
    // (Nc, Np, Ng): k0 (1, 2, 3), k1 (2, 3, 2), k2 (0, 1, 2), k3 (0, 2, 0).
    // CP = (1/2 + 2/3 + 0 + 0)/4 = 7/24 (k2: predicted once, wrongly → precision 0);
    // CR = (1/3 + 1 + 0 + 0)/4 = 1/3; CF1 = 2·(7/24)(1/3)/(7/24 + 8/24) = 14/45.
    // OP = 3/8, OR = 3/7, OF1 = 2·(3/8)(3/7)/(3/8 + 3/7) = (18/56)/(45/56) = 2/5.
    const r = multilabelMetrics(SCORES, LABELS, { topK: 2 });
    expectClose(r.top3, { CP: 7 / 24, CR: 1 / 3, CF1: 14 / 45, OP: 3 / 8, OR: 3 / 7, OF1: 2 / 5 });
  });

  it('a class never predicted has precision 0; nothing predicted gives all zeros', () => {
    // Threshold 0.95: nothing is predicted. Every Nc = 0, every Np = 0 → all metrics 0.
    const r = multilabelMetrics(SCORES, LABELS, { threshold: 0.95 });
    expectClose(r, { CP: 0, CR: 0, CF1: 0, OP: 0, OR: 0, OF1: 0 });
  });

  it('top-k ties go to the lower class index', () => {
    // All four tied at 0.7, top 2 → classes 0 and 1. Labels [0,1,1,0]:
    // (Nc, Np, Ng): k0 (0,1,0), k1 (1,1,1), k2 (0,0,1), k3 (0,0,0).
    // CP = (0 + 1 + 0 + 0)/4 = 1/4, CR = (0 + 1 + 0 + 0)/4 = 1/4, CF1 = 1/4; OP = 1/2, OR = 1/2, OF1 = 1/2.
    const r = multilabelMetrics([[0.7, 0.7, 0.7, 0.7]], [[0, 1, 1, 0]], { topK: 2 });
    expectClose(r.top3, { CP: 1 / 4, CR: 1 / 4, CF1: 1 / 4, OP: 1 / 2, OR: 1 / 2, OF1: 1 / 2 });
  });

  it('topK ≥ K equals the threshold metrics', () => {
    const r = multilabelMetrics(SCORES, LABELS, { topK: 10, threshold: 0.45 });
    expectClose(r.top3, r);
  });
});

describe('input forms', () => {
  it('nested arrays, flat typed arrays with shape and tensors agree; no tensor leaks', () => {
    const flatScores = { data: Float64Array.from(SCORES.flat()), shape: [5, 4] as const };
    const flatLabels = { data: Uint8Array.from(LABELS.flat()), shape: [5, 4] as const };
    const before = tf.memory().numTensors;
    const ts = tf.tensor2d(SCORES);
    const tl = tf.tensor2d(LABELS, undefined, 'int32');
    const base = [meanAveragePrecision(SCORES, LABELS), multilabelMetrics(SCORES, LABELS)];
    const flat = [meanAveragePrecision(flatScores, flatLabels), multilabelMetrics(flatScores, flatLabels)];
    const inTensors = before + 2;
    const tensors = [meanAveragePrecision(ts, tl), multilabelMetrics(ts, tl)];
    expect(tf.memory().numTensors).toBe(inTensors);
    expect(flat).toEqual(base);
    // float32 tensor storage rounds the scores, but the order and the 0.5 threshold are unchanged.
    expect(tensors).toEqual(base);
    // bool labels
    const tb = tf.tensor2d(LABELS.map((r) => r.map((v) => v === 1)), undefined, 'bool');
    expect(meanAveragePrecision(ts, tb)).toEqual(base[0]);
    tf.dispose([ts, tl, tb]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('rejects malformed input, naming the argument', () => {
    expect(() => meanAveragePrecision([[0.1, 0.2], [0.3]], [[0, 1], [1, 0]])).toThrow(/scores must be rectangular/);
    expect(() => meanAveragePrecision([[0.1]], [[2]])).toThrow(/labels must be exactly 0 or 1; labels\[0\]\[0\] is 2/);
    expect(() => meanAveragePrecision([[Number.NaN]], [[1]])).toThrow(/scores\[0\]\[0\] is NaN/);
    expect(() => meanAveragePrecision([[0.1, 0.2]], [[0, 1, 0]])).toThrow(/same shape/);
    expect(() => meanAveragePrecision({ data: [1, 2, 3], shape: [2, 2] }, [[0, 1], [1, 0]])).toThrow(/scores\.data has 3 values/);
    expect(() => meanAveragePrecision([], [])).toThrow(/scores must have at least one row/);
    expect(() => meanAveragePrecision('x' as never, [[1]])).toThrow(/scores must be number\[\]\[\]/);
    const t3 = tf.zeros([1, 1, 1]);
    expect(() => meanAveragePrecision(t3, [[1]])).toThrow(/scores must be a rank-2 tensor/);
    t3.dispose();
    expect(() => multilabelMetrics(SCORES, LABELS, { topK: 0 })).toThrow(/options\.topK/);
    expect(() => multilabelMetrics(SCORES, LABELS, { threshold: Number.NaN })).toThrow(/options\.threshold/);
    expect(() => multilabelMetrics(SCORES, LABELS, { topk: 2 } as never)).toThrow(/options\.topk is not an option/);
  });
});

/* ---------- agreement with a separate, straightforward implementation ---------- */


/**
 * AP from the definition, O(N²): for each positive n, "rank" = number of samples scored ≥ s_n
 * (ties count at or above, the documented rule), hits = positives scored ≥ s_n.
 */
function naiveAP(scores: number[], labels: number[]): number | null {
  const positives = labels.reduce((a, b) => a + b, 0);
  if (positives === 0) return null;
  let sum = 0;
  for (let n = 0; n < scores.length; n++) {
    if (labels[n] !== 1) continue;
    let rank = 0;
    let hits = 0;
    for (let m = 0; m < scores.length; m++) {
      if (scores[m] >= scores[n]) {
        rank++;
        hits += labels[m];
      }
    }
    sum += hits / rank;
  }
  return sum / positives;
}

function naiveCounts(predicted: number[][], labels: number[][]): PrecisionRecallF1 {
  const K = labels[0].length;
  const P: number[] = [];
  const R: number[] = [];
  let nc = 0;
  let np = 0;
  let ng = 0;
  for (let k = 0; k < K; k++) {
    const col = (m: number[][]): number[] => m.map((row) => row[k]);
    const c = col(predicted).filter((p, i) => p === 1 && labels[i][k] === 1).length;
    const p = col(predicted).filter((v) => v === 1).length;
    const g = col(labels).filter((v) => v === 1).length;
    P.push(p === 0 ? 0 : c / p);
    R.push(g === 0 ? 0 : c / g);
    nc += c;
    np += p;
    ng += g;
  }
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
  const F = (p: number, r: number): number => (p + r === 0 ? 0 : (2 * p * r) / (p + r));
  const CP = mean(P);
  const CR = mean(R);
  const OP = np === 0 ? 0 : nc / np;
  const OR = ng === 0 ? 0 : nc / ng;
  return { CP, CR, CF1: F(CP, CR), OP, OR, OF1: F(OP, OR) };
}

function naiveMetrics(scores: number[][], labels: number[][], threshold: number, topK: number): { at: PrecisionRecallF1; top: PrecisionRecallF1 } {
  const at = scores.map((row) => row.map((s) => (s >= threshold ? 1 : 0)));
  // Class k is in the top k of its row iff fewer than topK classes beat it (higher score, or
  // equal score and lower index).
  const top = scores.map((row) =>
    row.map((s, k) => {
      const better = row.filter((t, j) => t > s || (t === s && j < k)).length;
      return better < topK && s >= threshold ? 1 : 0;
    }),
  );
  return { at: naiveCounts(at, labels), top: naiveCounts(top, labels) };
}

describe('agreement with a straightforward reimplementation on seeded random data', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    it(`seed ${seed}`, () => {
      const rand = mulberry32(seed);
      const N = 20 + Math.floor(rand() * 60);
      const K = 2 + Math.floor(rand() * 12);
      const density = 0.1 + rand() * 0.4;
      // Scores on a 0.05 grid so that ties are frequent; one class without positives.
      const scores = Array.from({ length: N }, () => Array.from({ length: K }, () => Math.round(rand() * 20) / 20));
      const labels = Array.from({ length: N }, () => Array.from({ length: K }, (_, k) => (k !== K - 1 && rand() < density ? 1 : 0)));
      const threshold = [0.5, 0.3, 0.75][seed % 3];
      const topK = 1 + (seed % 4);

      const r = meanAveragePrecision(scores, labels);
      const naive = Array.from({ length: K }, (_, k) =>
        naiveAP(
          scores.map((row) => row[k]),
          labels.map((row) => row[k]),
        ),
      );
      expect(r.perClass.length).toBe(K);
      r.perClass.forEach((ap, k) => {
        if (naive[k] === null) expect(ap).toBeNull();
        else expect(ap).toBeCloseTo(naive[k] as number, 12);
      });
      const valid = naive.filter((x): x is number => x !== null);
      expect(r.mAP).toBeCloseTo(valid.reduce((a, b) => a + b, 0) / valid.length, 12);
      expect(r.classesWithoutPositives).toEqual(naive.flatMap((x, k) => (x === null ? [k] : [])));

      const m = multilabelMetrics(scores, labels, { threshold, topK });
      const want = naiveMetrics(scores, labels, threshold, topK);
      expectClose(m, want.at);
      expectClose(m.top3, want.top);
    });
  }
});
