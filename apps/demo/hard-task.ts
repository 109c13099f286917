/**
 * The "grid" task: a harder multilabel image task built from the same shipped digits as the
 * easy 2×2 task ({@link makeMultilabelDataset}), with a difficulty knob. No download.
 *
 * ## Images
 * A 3×3 grid of 10×10 cells (30×30 pixels, one channel, values in [0, 1]). A digit cell holds
 * one source digit: its central 20×20 box (where MNIST centres the strokes) average-pooled 2×,
 * shifted by up to ±1 pixel (zero fill). Cells are numbered row-major, 0 top-left … 8
 * bottom-right.
 *
 * ## Labels ({@link GRID_DESIGN})
 * The label of an image is the SET of digit classes present (10 classes, multi-hot). Per image:
 * 1. the number of distinct labels k ∈ {1 … 6} is drawn with probabilities
 *    0.14 / 0.24 / 0.24 / 0.18 / 0.12 / 0.08 (mean 3.1);
 * 2. the first label is drawn from a long-tailed (Zipf, exponent 1.3) class prior over the
 *    frequency order 1, 0, 7, 3, 6, 2, 9, 4, 8, 5 (class 1 is the most frequent, class 5 the rarest);
 * 3. each further label j is drawn with weight prior[j] · Σ_{i∈S} A[i][j] (as in the easy task)
 *    where A is 1 except for strong pairs (A = 14) that tie each rare class to a frequent one
 *    (1–5, 0–8, 7–4, 3–9, 6–2), weak pairs (A = 4: 1–9, 0–2, 7–8, 3–5) and repelling pairs
 *    (A = 0.15: 1–0, 7–3, 6–9): a model can exploit which labels come together;
 * 4. with probability 0.3 one label gets a second handwritten instance in another cell;
 * 5. the digit cells are a uniformly random subset of the 9 positions.
 *
 * ## Distractors, scaled by `difficulty` d ∈ [0, 2] (default 1)
 * - fragments: each empty cell holds, with probability 0.12·d (at most 1), one quadrant-pair
 *   (a random half: top, bottom, left or right) of a random digit of the split that is NOT
 *   labelled — stroke clutter that looks like part of a digit;
 * - occlusion: each digit cell loses, with probability 0.15·d (at most 1), a random rectangle of
 *   3–6 × 3–6 pixels (set to 0);
 * - noise: Gaussian pixel noise of standard deviation 0.04·d on the whole image, clipped to [0, 1].
 * d = 0 gives clean 3×3 composites; the digits stay on a 10×10 grid either way.
 *
 * ## Splits and determinism
 * As in the easy task: the source digits are partitioned by a seeded, class-stratified
 * shuffle into train / validation / test (≈ 80 / 10 / 10 %), so the splits never share a source
 * digit (fragments included); every random decision comes from {@link createRng} streams of
 * the seed (one per split for label sets and layout, one for digit instances, one for the
 * distractors), so the same config gives byte-identical arrays and a split does not change when
 * another split's size changes.
 */
import { createRng, type Rng } from '../../dev/seeded-random.js';
import {
  computeLabelStats,
  DIGIT_PIXELS,
  DIGIT_SIZE,
  loadMnistDigits,
  NUM_CLASSES,
  splitClassPools,
  type CoOccurrenceDesign,
  type DigitSource,
  type LabelStats,
  type MultilabelDataset,
  type MultilabelSplit,
} from './data.js';

/** Cells per side of the grid task's image. */
export const GRID_SIDE = 3;
/** Cells per image of the grid task (3 × 3). */
export const GRID_CELLS = GRID_SIDE * GRID_SIDE;
/** Side of a grid cell in pixels. */
export const GRID_CELL_SIZE = 10;
/** Side of a grid-task image in pixels (30). */
export const GRID_IMAGE_SIZE = GRID_SIDE * GRID_CELL_SIZE;
/** Largest accepted difficulty. */
export const MAX_DIFFICULTY = 2;

/** Class frequency order of the long-tailed prior (most frequent first). */
export const GRID_FREQUENCY_ORDER: readonly number[] = Object.freeze([1, 0, 7, 3, 6, 2, 9, 4, 8, 5]);

/** The grid task's label structure plus its distractor rates (at difficulty 1). */
export interface GridDesign extends CoOccurrenceDesign {
  /** Zipf exponent of the class prior over {@link GRID_FREQUENCY_ORDER}. */
  zipfExponent: number;
  /** Probability that an empty cell holds a fragment, at difficulty 1. */
  fragmentProbability: number;
  /** Probability that a digit cell is partly occluded, at difficulty 1. */
  occlusionProbability: number;
  /** Pixel noise standard deviation, at difficulty 1. */
  noiseStd: number;
}

function buildGridDesign(): GridDesign {
  const zipfExponent = 1.6;
  const prior = new Array<number>(NUM_CLASSES).fill(0);
  let z = 0;
  GRID_FREQUENCY_ORDER.forEach((c, rank) => {
    prior[c] = (rank + 1) ** -zipfExponent;
    z += prior[c];
  });
  for (let c = 0; c < NUM_CLASSES; c++) prior[c] /= z;
  const strongPairs = [[1, 5], [0, 8], [7, 4], [3, 9], [6, 2]] as const;
  const weakPairs = [[1, 9], [0, 2], [7, 8], [3, 5]] as const;
  const repellingPairs = [[1, 0], [7, 3], [6, 9]] as const;
  const strongAffinity = 14;
  const weakAffinity = 4;
  const repellingAffinity = 0.15;
  const affinity: number[][] = Array.from({ length: NUM_CLASSES }, () => new Array<number>(NUM_CLASSES).fill(1));
  const setPairs = (pairs: readonly (readonly [number, number])[], v: number) => {
    for (const [a, b] of pairs) {
      affinity[a][b] = v;
      affinity[b][a] = v;
    }
  };
  setPairs(strongPairs, strongAffinity);
  setPairs(weakPairs, weakAffinity);
  setPairs(repellingPairs, repellingAffinity);
  return {
    classPrior: Object.freeze(prior),
    affinity: Object.freeze(affinity.map((r) => Object.freeze(r))),
    strongPairs,
    weakPairs,
    repellingPairs,
    strongAffinity,
    weakAffinity,
    repellingAffinity,
    labelCountProbabilities: Object.freeze([0.2, 0.28, 0.24, 0.15, 0.08, 0.05]),
    duplicateProbability: 0.3,
    zipfExponent,
    fragmentProbability: 0.12,
    occlusionProbability: 0.15,
    noiseStd: 0.04,
  };
}

/** The fixed structure every grid-task dataset is drawn from (see the module docs). */
export const GRID_DESIGN: GridDesign = Object.freeze(buildGridDesign());

/** Configuration of {@link makeGridDataset}. */
export interface GridDatasetConfig {
  seed: number;
  trainSize: number;
  valSize: number;
  testSize: number;
  /** Distractor strength d ∈ [0, 2]; default 1. */
  difficulty?: number;
  /** Source digits; default {@link loadMnistDigits}(). */
  source?: DigitSource;
}

/** A grid-task dataset: a {@link MultilabelDataset} whose splits have 9 cells per image. */
export interface GridDataset extends MultilabelDataset {
  difficulty: number;
  /** Cells per image (9). */
  cellsPerImage: number;
  coOccurrence: GridDesign;
}

/** Central 20×20 box of every source digit, 2× average-pooled to 10×10 (cached per source). */
const pooledCache = new WeakMap<Float32Array, Float32Array>();
function pooledCentral(source: DigitSource): Float32Array {
  const hit = pooledCache.get(source.images);
  if (hit) return hit;
  const cs = GRID_CELL_SIZE;
  const out = new Float32Array(source.count * cs * cs);
  const src = source.images;
  for (let n = 0; n < source.count; n++) {
    const s0 = n * DIGIT_PIXELS;
    const o0 = n * cs * cs;
    for (let y = 0; y < cs; y++) {
      for (let x = 0; x < cs; x++) {
        const r = s0 + (4 + 2 * y) * DIGIT_SIZE + 4 + 2 * x;
        out[o0 + y * cs + x] = Math.min(1, 0.25 * (src[r] + src[r + 1] + src[r + DIGIT_SIZE] + src[r + DIGIT_SIZE + 1]));
      }
    }
  }
  pooledCache.set(source.images, out);
  return out;
}

function drawLabels(rng: Rng, design: GridDesign, weights: Float64Array): number[] {
  const k = rng.pickWeighted(design.labelCountProbabilities) + 1;
  const chosen: number[] = [rng.pickWeighted(design.classPrior)];
  while (chosen.length < k) {
    for (let j = 0; j < NUM_CLASSES; j++) {
      if (chosen.includes(j)) {
        weights[j] = 0;
        continue;
      }
      let a = 0;
      for (const i of chosen) a += design.affinity[i][j];
      weights[j] = design.classPrior[j] * a;
    }
    chosen.push(rng.pickWeighted(weights));
  }
  return chosen;
}

/** Copies a 10×10 pooled digit into the image at cell c, shifted by (dx, dy), masked by `keep`. */
function blit(
  images: Float32Array,
  imgOff: number,
  cell: number,
  pooled: Float32Array,
  src: number,
  dx: number,
  dy: number,
  keep: (x: number, y: number) => boolean,
): void {
  const cs = GRID_CELL_SIZE;
  const S = GRID_IMAGE_SIZE;
  const cy = Math.floor(cell / GRID_SIDE) * cs;
  const cx = (cell % GRID_SIDE) * cs;
  const s0 = src * cs * cs;
  for (let y = 0; y < cs; y++) {
    const sy = y - dy;
    if (sy < 0 || sy >= cs) continue;
    for (let x = 0; x < cs; x++) {
      const sx = x - dx;
      if (sx < 0 || sx >= cs || !keep(sx, sy)) continue;
      images[imgOff + (cy + y) * S + cx + x] = pooled[s0 + sy * cs + sx];
    }
  }
}

function makeGridSplit(
  name: string,
  count: number,
  pool: Int32Array,
  source: DigitSource,
  pooled: Float32Array,
  difficulty: number,
  layoutRng: Rng,
  instanceRng: Rng,
  distractorRng: Rng,
): MultilabelSplit {
  const S = GRID_IMAGE_SIZE;
  const cs = GRID_CELL_SIZE;
  const images = new Float32Array(count * S * S);
  const labels = new Float32Array(count * NUM_CLASSES);
  const sourceIndices = new Int32Array(count * GRID_CELLS).fill(-1);
  const cellDigits = new Int8Array(count * GRID_CELLS).fill(-1);
  const { sourcePool, classPools } = splitClassPools('makeGridDataset', name, count, pool, source, instanceRng);
  const d = GRID_DESIGN;
  const pFragment = Math.min(1, d.fragmentProbability * difficulty);
  const pOcclude = Math.min(1, d.occlusionProbability * difficulty);
  const noiseStd = d.noiseStd * difficulty;
  const weights = new Float64Array(NUM_CLASSES);
  const all = (_x: number, _y: number): boolean => true;
  for (let n = 0; n < count; n++) {
    const chosen = drawLabels(layoutRng, d, weights);
    const digits = chosen.slice();
    if (layoutRng.bernoulli(d.duplicateProbability)) digits.push(chosen[layoutRng.nextInt(chosen.length)]);
    const positions = layoutRng.permutation(GRID_CELLS);
    const imgOff = n * S * S;
    for (let i = 0; i < digits.length; i++) {
      const cell = positions[i];
      const cls = digits[i];
      const src = classPools[cls].next();
      sourceIndices[n * GRID_CELLS + cell] = src;
      cellDigits[n * GRID_CELLS + cell] = cls;
      labels[n * NUM_CLASSES + cls] = 1;
      const dx = layoutRng.nextInt(3) - 1;
      const dy = layoutRng.nextInt(3) - 1;
      let keep: (x: number, y: number) => boolean = all;
      if (pOcclude > 0 && distractorRng.bernoulli(pOcclude)) {
        const w = 3 + distractorRng.nextInt(4);
        const h = 3 + distractorRng.nextInt(4);
        const x0 = distractorRng.nextInt(cs - w + 1);
        const y0 = distractorRng.nextInt(cs - h + 1);
        keep = (x, y) => x < x0 || x >= x0 + w || y < y0 || y >= y0 + h;
      }
      blit(images, imgOff, cell, pooled, src, dx, dy, keep);
    }
    if (pFragment > 0) {
      for (let i = digits.length; i < GRID_CELLS; i++) {
        if (!distractorRng.bernoulli(pFragment)) continue;
        const src = pool[distractorRng.nextInt(pool.length)];
        const half = distractorRng.nextInt(4);
        const keep = [
          (_x: number, y: number) => y < cs / 2,
          (_x: number, y: number) => y >= cs / 2,
          (x: number) => x < cs / 2,
          (x: number) => x >= cs / 2,
        ][half];
        blit(images, imgOff, positions[i], pooled, src, 0, 0, keep);
      }
    }
    if (noiseStd > 0) {
      for (let p = imgOff; p < imgOff + S * S; p++) {
        const v = images[p] + noiseStd * distractorRng.nextNormal();
        images[p] = v < 0 ? 0 : v > 1 ? 1 : v;
      }
    }
  }
  return { images, labels, count, imageSize: S, sourceIndices, cellDigits, sourcePool };
}

const SPLITS = ['train', 'val', 'test'] as const;

/**
 * Generates the grid task described in the module documentation. Deterministic in the config.
 *
 * @throws RangeError for a non-safe-integer seed, a negative or non-integer size, a difficulty
 *   outside [0, 2], or a source whose split share lacks a class.
 */
export function makeGridDataset(config: GridDatasetConfig): GridDataset {
  if (config === null || typeof config !== 'object') {
    throw new TypeError('makeGridDataset: config must be an object { seed, trainSize, valSize, testSize }.');
  }
  const { seed } = config;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) {
    throw new RangeError(`makeGridDataset: seed must be a safe integer (got ${String(seed)}).`);
  }
  const difficulty = config.difficulty ?? 1;
  if (typeof difficulty !== 'number' || !(difficulty >= 0 && difficulty <= MAX_DIFFICULTY)) {
    throw new RangeError(`makeGridDataset: difficulty must be a number in [0, ${MAX_DIFFICULTY}] (got ${String(difficulty)}).`);
  }
  const sizes = {} as Record<(typeof SPLITS)[number], number>;
  for (const name of SPLITS) {
    const key = `${name}Size` as const;
    const v = config[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 1_000_000) {
      throw new RangeError(`makeGridDataset: ${key} must be an integer in [0, 1000000] (got ${String(v)}).`);
    }
    sizes[name] = v;
  }
  const source = config.source ?? loadMnistDigits();
  const pooled = pooledCentral(source);
  // Same class-stratified 80 / 10 / 10 partition scheme as the easy task (its own stream).
  const perm = createRng(seed, 0x67726964, 0).permutation(source.count); // 'grid'
  const byClass: number[][] = Array.from({ length: NUM_CLASSES }, () => []);
  for (const idx of perm) byClass[source.labels[idx]].push(idx);
  const parts: Record<(typeof SPLITS)[number], number[]> = { train: [], val: [], test: [] };
  for (const list of byClass) {
    const held = Math.floor(list.length * 0.1);
    parts.val.push(...list.slice(0, held));
    parts.test.push(...list.slice(held, 2 * held));
    parts.train.push(...list.slice(2 * held));
  }
  const splits = {} as Record<(typeof SPLITS)[number], MultilabelSplit>;
  SPLITS.forEach((name, i) => {
    splits[name] = makeGridSplit(
      name,
      sizes[name],
      Int32Array.from(parts[name]),
      source,
      pooled,
      difficulty,
      createRng(seed, 0x67726964, i + 1, 1),
      createRng(seed, 0x67726964, i + 1, 2),
      createRng(seed, 0x67726964, i + 1, 3),
    );
  });
  const stats = {} as Record<(typeof SPLITS)[number], LabelStats>;
  for (const name of SPLITS) stats[name] = computeLabelStats(splits[name].labels, splits[name].count);
  return {
    ...splits,
    classes: NUM_CLASSES,
    imageSize: GRID_IMAGE_SIZE,
    cellSize: GRID_CELL_SIZE,
    cellsPerImage: GRID_CELLS,
    difficulty,
    coOccurrence: GRID_DESIGN,
    stats,
  };
}
