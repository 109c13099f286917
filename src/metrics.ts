/**
 * Multilabel evaluation metrics (docs/kmcl-loss.md, last section): mean average precision over
 * classes, and CP / CR / CF1 / OP / OR / OF1 at a score threshold and for the top-k classes of
 * each sample, with the definitions of the ML-GCN / ASL evaluation code.
 *
 * Everything here runs on plain numbers in float64; tfjs is only a type import, so this module
 * works without a tfjs runtime. Tensors are read with `dataSync()` (no new tensor is created).
 */
import type { Tensor } from '@tensorflow/tfjs';
import { describe } from './options.js';

/** A flat row-major matrix with its shape `[N, K]`. */
export interface FlatMatrix {
  data: ArrayLike<number>;
  shape: readonly [number, number];
}

/**
 * An `[N, K]` matrix (N samples, K classes): nested arrays, a flat array/typed array with its
 * shape, or a rank-2 tf.Tensor (read with `dataSync()`, never disposed or leaked).
 */
export type MatrixInput = readonly (readonly number[])[] | FlatMatrix | Tensor;

/** Result of {@link meanAveragePrecision}. */
export interface MeanAveragePrecision {
  /** Mean of the per-class APs over the classes that have at least one positive (NaN when none has). In [0, 1]. */
  mAP: number;
  /** AP of each class; `null` for a class without positives (left out of the mean). */
  perClass: (number | null)[];
  /** Indices of the classes without positives. */
  classesWithoutPositives: number[];
}

/** Precision / recall / F1, per class averaged (C*) and overall (O*), each in [0, 1]. */
export interface PrecisionRecallF1 {
  CP: number;
  CR: number;
  CF1: number;
  OP: number;
  OR: number;
  OF1: number;
}

/** Result of {@link multilabelMetrics}: at the threshold, and for the top-k classes of each sample. */
export interface MultilabelMetrics extends PrecisionRecallF1 {
  /** The same metrics when each sample predicts only its `topK` (default 3) best classes that pass the threshold. */
  top3: PrecisionRecallF1;
}

/** Options of {@link multilabelMetrics}. */
export interface MultilabelMetricsOptions {
  /** A class is predicted when its score is ≥ threshold. Default 0.5 (scores are probabilities). */
  threshold?: number;
  /** How many top-scored classes per sample the `top3` metrics consider. Default 3. */
  topK?: number;
}

interface Matrix {
  data: ArrayLike<number>;
  N: number;
  K: number;
}

function isTensor(x: unknown): x is Tensor {
  return (
    x !== null &&
    typeof x === 'object' &&
    typeof (x as Tensor).dataSync === 'function' &&
    Array.isArray((x as Tensor).shape) &&
    typeof (x as Tensor).dtype === 'string'
  );
}

function toMatrix(fn: string, name: string, x: unknown): Matrix {
  if (isTensor(x)) {
    if (x.isDisposed) throw new Error(`${fn}: ${name} is a disposed tensor`);
    if (x.rank !== 2) throw new Error(`${fn}: ${name} must be a rank-2 tensor [N, K], got shape [${x.shape.join(', ')}]`);
    if (x.dtype === 'string' || x.dtype === 'complex64') throw new TypeError(`${fn}: ${name} must be a numeric tensor, got dtype ${x.dtype}`);
    const [N, K] = x.shape as number[];
    return { data: x.dataSync() as ArrayLike<number>, N, K };
  }
  if (Array.isArray(x)) {
    const N = x.length;
    if (N === 0) throw new Error(`${fn}: ${name} must have at least one row`);
    const first: unknown = x[0];
    if (!Array.isArray(first)) {
      throw new TypeError(`${fn}: ${name} must be number[][] (one row per sample), { data, shape: [N, K] } or a tf.Tensor2D; row 0 is ${describe(first)}`);
    }
    const K = first.length;
    const data = new Float64Array(N * K);
    for (let i = 0; i < N; i++) {
      const row: unknown = x[i];
      if (!Array.isArray(row) || row.length !== K) {
        throw new Error(`${fn}: ${name} must be rectangular: row ${i} has ${Array.isArray(row) ? `length ${row.length}` : describe(row)}, row 0 has length ${K}`);
      }
      for (let k = 0; k < K; k++) {
        const v: unknown = row[k];
        if (typeof v !== 'number') throw new TypeError(`${fn}: ${name}[${i}][${k}] must be a number, got ${describe(v)}`);
        data[i * K + k] = v;
      }
    }
    return { data, N, K };
  }
  if (x !== null && typeof x === 'object' && 'data' in x && 'shape' in x) {
    const { data, shape } = x as FlatMatrix;
    if (!Array.isArray(shape) || shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new Error(`${fn}: ${name}.shape must be [N, K] (two non-negative integers), got ${JSON.stringify(shape)}`);
    }
    if (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number') {
      throw new TypeError(`${fn}: ${name}.data must be an array or typed array, got ${describe(data)}`);
    }
    const [N, K] = shape;
    if (data.length !== N * K) {
      throw new Error(`${fn}: ${name}.data has ${data.length} values but shape [${N}, ${K}] needs ${N * K}`);
    }
    return { data, N, K };
  }
  throw new TypeError(`${fn}: ${name} must be number[][], { data, shape: [N, K] } or a tf.Tensor2D, got ${describe(x)}`);
}

/** Reads and validates scores (no NaN) and labels (exactly 0 or 1) of one shape. */
function readInputs(fn: string, scores: unknown, labels: unknown): { s: Matrix; y: Matrix } {
  const s = toMatrix(fn, 'scores', scores);
  const y = toMatrix(fn, 'labels', labels);
  if (s.N !== y.N || s.K !== y.K) {
    throw new Error(`${fn}: scores [${s.N}, ${s.K}] and labels [${y.N}, ${y.K}] must have the same shape`);
  }
  if (s.N < 1 || s.K < 1) throw new Error(`${fn}: scores must have at least one sample and one class, got [${s.N}, ${s.K}]`);
  for (let n = 0; n < s.N * s.K; n++) {
    if (Number.isNaN(s.data[n])) {
      throw new RangeError(`${fn}: scores[${Math.floor(n / s.K)}][${n % s.K}] is NaN`);
    }
    const l = y.data[n];
    if (l !== 0 && l !== 1) {
      throw new RangeError(`${fn}: labels must be exactly 0 or 1; labels[${Math.floor(n / s.K)}][${n % s.K}] is ${describe(l)}`);
    }
  }
  return { s, y };
}

/**
 * Average precision of one class (column `k`), or null without positives.
 * Ties: samples with equal scores form one group, and every positive of the group gets the
 * precision at the group's last rank.
 */
function classAP(s: Matrix, y: Matrix, k: number, order: Int32Array): number | null {
  const { N, K } = s;
  let positives = 0;
  for (let i = 0; i < N; i++) {
    order[i] = i;
    positives += y.data[i * K + k];
  }
  if (positives === 0) return null;
  const score = (i: number): number => s.data[i * K + k];
  // Descending score; the index only makes the (irrelevant) order inside a tie group deterministic.
  order.sort((a, b) => (score(b) > score(a) ? 1 : score(b) < score(a) ? -1 : a - b));
  let seen = 0;
  let truePositives = 0;
  let sum = 0;
  for (let start = 0; start < N; ) {
    let end = start;
    let groupPositives = 0;
    const value = score(order[start]);
    while (end < N && score(order[end]) === value) {
      groupPositives += y.data[order[end] * K + k];
      end++;
    }
    seen = end;
    truePositives += groupPositives;
    sum += groupPositives * (truePositives / seen);
    start = end;
  }
  return sum / positives;
}

/**
 * Mean average precision over classes.
 *
 * Per class, samples are ranked by descending score and AP = mean over the class's positives of
 * the precision at that positive's rank (the ML-GCN / VOC "precision at each positive" AP, no
 * interpolation). The mAP is the mean of the per-class APs of the classes that have at least one
 * positive; classes without positives are reported in `classesWithoutPositives`, their AP is
 * `null`, and the mAP is NaN when no class has a positive.
 *
 * Tie rule (deterministic, independent of the sample order): samples with equal scores form one
 * group, and each positive in a group gets the precision at the group's last rank, i.e. all tied
 * samples count as ranked at or above it. This equals
 * `sklearn.metrics.average_precision_score` and lies between the optimistic and the pessimistic
 * ordering of the ties; without ties it is the usual AP.
 *
 * @param scores `[N, K]` scores (any monotone scale: probabilities or logits); NaN is rejected.
 * @param labels `[N, K]` ground truth, exactly 0 or 1.
 * @returns `{ mAP, perClass, classesWithoutPositives }`, APs as fractions in [0, 1].
 * @throws TypeError / RangeError / Error naming `scores` or `labels` for malformed input.
 */
export function meanAveragePrecision(scores: MatrixInput, labels: MatrixInput): MeanAveragePrecision {
  const { s, y } = readInputs('meanAveragePrecision', scores, labels);
  const order = new Int32Array(s.N);
  const perClass: (number | null)[] = [];
  const classesWithoutPositives: number[] = [];
  let sum = 0;
  for (let k = 0; k < s.K; k++) {
    const ap = classAP(s, y, k, order);
    perClass.push(ap);
    if (ap === null) classesWithoutPositives.push(k);
    else sum += ap;
  }
  const counted = s.K - classesWithoutPositives.length;
  return { mAP: counted > 0 ? sum / counted : Number.NaN, perClass, classesWithoutPositives };
}

/** a / b with 0 / 0 (and x / 0) = 0. */
function ratio(a: number, b: number): number {
  return b > 0 ? a / b : 0;
}

function f1(p: number, r: number): number {
  return p + r > 0 ? (2 * p * r) / (p + r) : 0;
}

/** CP…OF1 from predictions (1/0 per entry) and labels. */
function scorePredictions(predicted: Uint8Array, y: Matrix): PrecisionRecallF1 {
  const { N, K } = y;
  let cp = 0;
  let cr = 0;
  let correctAll = 0;
  let predictedAll = 0;
  let groundTruthAll = 0;
  for (let k = 0; k < K; k++) {
    let correct = 0; // Nc: true positives
    let predictedPositive = 0; // Np
    let groundTruth = 0; // Ng
    for (let i = 0; i < N; i++) {
      const p = predicted[i * K + k];
      const t = y.data[i * K + k];
      predictedPositive += p;
      groundTruth += t;
      correct += p * t;
    }
    cp += ratio(correct, predictedPositive);
    cr += ratio(correct, groundTruth);
    correctAll += correct;
    predictedAll += predictedPositive;
    groundTruthAll += groundTruth;
  }
  const CP = cp / K;
  const CR = cr / K;
  const OP = ratio(correctAll, predictedAll);
  const OR = ratio(correctAll, groundTruthAll);
  return { CP, CR, CF1: f1(CP, CR), OP, OR, OF1: f1(OP, OR) };
}

/**
 * Threshold and top-k multilabel metrics, as in the ML-GCN / ASL evaluation code.
 *
 * With Nc_k (correct positive predictions), Np_k (positive predictions) and Ng_k (ground-truth
 * positives) of class k:
 *
 *     CP = (1/K) Σ_k Nc_k/Np_k    CR = (1/K) Σ_k Nc_k/Ng_k    CF1 = 2·CP·CR/(CP+CR)
 *     OP = Σ Nc / Σ Np            OR = Σ Nc / Σ Ng            OF1 = 2·OP·OR/(OP+OR)
 *
 * Any 0/0 counts as 0: a class with no predicted positive has precision 0 (as ML-GCN, which
 * sets Np = 1 there), a class with no ground-truth positive has recall 0 (ML-GCN would give NaN;
 * this is sklearn's `zero_division=0`), and an F1 with P + R = 0 is 0. The C* means are over all
 * K classes.
 *
 * Predictions: a class is predicted when its score ≥ `threshold`. For `top3`, each sample
 * predicts the classes among its `topK` highest scores whose score is also ≥ `threshold` (ML-GCN's
 * `overall_topk`); ties for the last top-k places go to the lower class index. `topK` larger
 * than K means all classes.
 *
 * @param scores `[N, K]` scores on the scale of `threshold` (probabilities for the default 0.5).
 * @param labels `[N, K]` ground truth, exactly 0 or 1.
 * @param options `{ threshold = 0.5, topK = 3 }`.
 * @returns `{ CP, CR, CF1, OP, OR, OF1, top3: { CP, CR, CF1, OP, OR, OF1 } }`, fractions in [0, 1].
 * @throws TypeError / RangeError / Error naming the argument for malformed input or options.
 */
export function multilabelMetrics(scores: MatrixInput, labels: MatrixInput, options: MultilabelMetricsOptions = {}): MultilabelMetrics {
  const fn = 'multilabelMetrics';
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`${fn}: options must be an object like { threshold, topK }, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (key !== 'threshold' && key !== 'topK') throw new TypeError(`${fn}: options.${key} is not an option; known options: threshold, topK`);
  }
  const threshold = options.threshold ?? 0.5;
  const topK = options.topK ?? 3;
  if (typeof threshold !== 'number' || Number.isNaN(threshold)) {
    throw new TypeError(`${fn}: options.threshold must be a number, got ${describe(threshold)}`);
  }
  if (typeof topK !== 'number' || !Number.isInteger(topK) || topK < 1) {
    throw new TypeError(`${fn}: options.topK must be a positive integer, got ${describe(topK)}`);
  }
  const { s, y } = readInputs(fn, scores, labels);
  const { N, K } = s;

  const atThreshold = new Uint8Array(N * K);
  for (let n = 0; n < N * K; n++) atThreshold[n] = s.data[n] >= threshold ? 1 : 0;

  const inTopK = new Uint8Array(N * K);
  const order = Array.from({ length: K }, (_, k) => k);
  const take = Math.min(topK, K);
  for (let i = 0; i < N; i++) {
    const row = i * K;
    order.sort((a, b) => {
      const sa = s.data[row + a];
      const sb = s.data[row + b];
      return sb > sa ? 1 : sb < sa ? -1 : a - b;
    });
    for (let r = 0; r < take; r++) inTopK[row + order[r]] = atThreshold[row + order[r]];
    for (let k = 0; k < K; k++) order[k] = k;
  }

  return { ...scorePredictions(atThreshold, y), top3: scorePredictions(inTopK, y) };
}
