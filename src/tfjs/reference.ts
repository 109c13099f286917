/**
 * The KMCL loss of docs/kmcl-loss.md written in plain @tensorflow/tfjs ops.
 *
 * tfjs autodiff differentiates it, so it is at the same time
 * - the oracle for the parity tests of the native (C++ / CUDA) kernels,
 * - the fallback when the native addon is not available, and
 * - the baseline in the benchmarks.
 *
 * It is written for clarity and exactness, not for memory: the contrastive term materialises
 * several `[B, B, K, D]` tensors (and `[B, K, M]` for the reconstruction term), i.e.
 * O(B²·K·D) memory and work, also for classes that no sample in the batch carries.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, resolveOptions, type KmclLossOptions, type ResolvedOptions } from '../options.js';

/** The inputs of the KMCL loss (spec "Shapes"). */
export interface KmclLossInputs {
  /** Embeddings z, `[B, M]`, float32. Only the reconstruction term reads them. */
  features: tf.Tensor2D;
  /** Classification logits a, `[B, K]`, float32; p = sigmoid(a). */
  logits: tf.Tensor2D;
  /** Kernel means μ, `[B, K, D]` with `D = 1` (isotropic) or `D = M` (anisotropic), float32. */
  mu: tf.Tensor3D;
  /**
   * Kernel variances v > 0, `[B, Kv, Dv]` with `Kv ∈ {1, K}` and `Dv ∈ {1, D}`, float32.
   * A size-1 axis is shared (broadcast): `[B, K, D]` per class (BC), `[B, 1, M]` per dimension
   * (MKS), `[B, 1, 1]` one bandwidth per sample (RBF).
   */
  variance: tf.Tensor3D;
  /** Labels y, `[B, K]`, exactly 0 or 1 (any numeric or bool dtype). Never differentiated. */
  labels: tf.Tensor2D;
}

/** The KMCL loss terms, each a float32 scalar. */
export type KmclLossTerms = {
  /** The weighted total `weights.asl·asl + weights.reconstruction·reconstruction + weights.contrastive·contrastive`. */
  loss: tf.Scalar;
  /** Asymmetric classification loss (spec section 1), a sum over samples and classes. */
  asl: tf.Scalar;
  /** Kernel reconstruction loss (spec section 2), a mean over samples. */
  reconstruction: tf.Scalar;
  /** Contrastive loss over Bhattacharyya coefficients (spec section 3), normalised by B. */
  contrastive: tf.Scalar;
};

/** Smallest normal float32, 2^-126 (FLT_MIN): the clamp of the reference reconstruction form. */
const FLT_MIN = 2 ** -126;

/** Stand-in for log 0 in a masked log-sum-exp (finite, so no ∞ − ∞ = NaN in values or gradients). */
const EMPTY_LSE = -1e30;

/** Identity forward, zero gradient (tf.stop_gradient). */
const stopGradient = tf.customGrad((x) => {
  const t = x as tf.Tensor;
  return { value: tf.clone(t), gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy) };
});

/**
 * `x > 0` as a bool mask. Comparisons have no gradient function in tfjs, so a comparison of a
 * tensor on the differentiated path would make `tf.grads` throw; this one is a zero-gradient node.
 */
const positiveMask = tf.customGrad((x) => {
  const t = x as tf.Tensor;
  return { value: tf.greater(t, 0), gradFunc: () => tf.zerosLike(t) };
});

/**
 * `base^gamma` for `base ≥ 0` with `0^0 = 1` and a finite gradient everywhere: `pow`'s own
 * gradient is `gamma·base^(gamma−1)`, which is `0·∞ = NaN` at base 0 for gamma < 1.
 */
function focalPow(base: tf.Tensor, gamma: number): tf.Tensor {
  if (gamma === 0) return tf.onesLike(base);
  if (gamma === 1) return base;
  const positive = positiveMask(base);
  const safe = tf.where(positive, base, tf.onesLike(base));
  return tf.where(positive, tf.pow(safe, gamma), tf.zerosLike(base));
}

/** The sizes of a validated KMCL problem. */
export interface KmclDims {
  /** Batch size. */
  B: number;
  /** Number of classes. */
  K: number;
  /** Feature dimension. */
  M: number;
  /** Kernel-mean dimension, 1 or M. */
  D: number;
}

function isTensor(x: unknown): x is tf.Tensor {
  return (
    x !== null &&
    typeof x === 'object' &&
    Array.isArray((x as tf.Tensor).shape) &&
    typeof (x as tf.Tensor).dtype === 'string' &&
    typeof (x as tf.Tensor).dataSync === 'function'
  );
}

/**
 * Validates KMCL loss inputs (spec "Shapes") and returns their sizes: every input a live
 * tf.Tensor, features/logits/mu/variance float32, labels numeric or bool, features `[B, M]`,
 * logits and labels `[B, K]`, mu `[B, K, 1 | M]`, variance `[B, 1 | K, 1 | D]`, B, K, M ≥ 1.
 * Label values are not read (that would force a sync).
 *
 * @param inputs The candidate `{ features, logits, mu, variance, labels }`.
 * @param fn The public function name used as the prefix of error messages.
 * @throws TypeError / Error naming the offending tensor and the expected shape.
 */
export function checkKmclInputs(inputs: unknown, fn = 'kmclLossReference'): KmclDims {
  if (inputs === null || typeof inputs !== 'object' || Array.isArray(inputs)) {
    throw new TypeError(`${fn}: inputs must be an object { features, logits, mu, variance, labels }, got ${describe(inputs)}`);
  }
  const o = inputs as Record<string, unknown>;
  for (const name of ['features', 'logits', 'mu', 'variance', 'labels'] as const) {
    const t = o[name];
    if (!isTensor(t)) throw new TypeError(`${fn}: inputs.${name} must be a tf.Tensor, got ${describe(t)}`);
    if (t.isDisposed) throw new Error(`${fn}: inputs.${name} has been disposed`);
    if (name !== 'labels' && t.dtype !== 'float32') {
      throw new TypeError(`${fn}: ${name} must have dtype float32, got ${t.dtype}`);
    }
    if (name === 'labels' && (t.dtype === 'string' || t.dtype === 'complex64')) {
      throw new TypeError(`${fn}: labels must be numeric or bool, got dtype ${t.dtype}`);
    }
  }
  const { features, logits, mu, variance, labels } = o as unknown as KmclLossInputs;
  const shape = (t: tf.Tensor): string => `[${t.shape.join(', ')}]`;
  if (features.rank !== 2) throw new Error(`${fn}: features must have shape [B, M], got ${shape(features)}`);
  const [B, M] = features.shape;
  if (B < 1 || M < 1) throw new Error(`${fn}: features must have shape [B, M] with B ≥ 1 and M ≥ 1, got ${shape(features)}`);
  if (logits.rank !== 2 || logits.shape[0] !== B) {
    throw new Error(`${fn}: logits must have shape [B, K] = [${B}, K] (B from features), got ${shape(logits)}`);
  }
  const K = logits.shape[1];
  if (K < 1) throw new Error(`${fn}: logits must have shape [B, K] with K ≥ 1, got ${shape(logits)}`);
  if (labels.rank !== 2 || labels.shape[0] !== B || labels.shape[1] !== K) {
    throw new Error(`${fn}: labels must have shape [B, K] = [${B}, ${K}] like logits, got ${shape(labels)}`);
  }
  if (mu.rank !== 3 || mu.shape[0] !== B || mu.shape[1] !== K || (mu.shape[2] !== 1 && mu.shape[2] !== M)) {
    throw new Error(`${fn}: mu must have shape [B, K, 1] or [B, K, M] = [${B}, ${K}, 1 | ${M}], got ${shape(mu)}`);
  }
  const D = mu.shape[2];
  if (
    variance.rank !== 3 ||
    variance.shape[0] !== B ||
    (variance.shape[1] !== 1 && variance.shape[1] !== K) ||
    (variance.shape[2] !== 1 && variance.shape[2] !== D)
  ) {
    throw new Error(
      `${fn}: variance must have shape [B, Kv, Dv] with Kv ∈ {1, K} and Dv ∈ {1, D} = [${B}, 1 | ${K}, 1${D === 1 ? '' : ` | ${D}`}], got ${shape(variance)}`,
    );
  }
  return { B, K, M, D };
}

/** Section 1: L_asl = −Σ w·ℓ. */
function aslTerm(a: tf.Tensor2D, y: tf.Tensor2D, o: ResolvedOptions): tf.Scalar {
  const logEpsFloor = Math.log(o.eps);
  // log(max(p, eps)) with log p = log sigmoid(a) = −softplus(−a).
  const lPos = tf.maximum(tf.neg(tf.softplus(tf.neg(a))), logEpsFloor);
  // log(max(p⁻, eps)), p⁻ = min(1, 1 − p + clip); 1 − p = sigmoid(−a) is exact also for p → 1.
  const lNeg =
    o.clip > 0
      ? tf.log(tf.maximum(tf.minimum(tf.add(tf.sigmoid(tf.neg(a)), o.clip), 1), o.eps))
      : tf.maximum(tf.neg(tf.softplus(a)), logEpsFloor);
  // Focal weight w = (1 − pt)^γ: 1 − pt = 1 − p for positives, max(0, p − clip) for negatives.
  const aw = o.detachFocalWeight ? (stopGradient(a) as tf.Tensor2D) : a;
  const baseNeg = o.clip > 0 ? tf.relu(tf.sub(tf.sigmoid(aw), o.clip)) : tf.sigmoid(aw);
  const wPos = focalPow(tf.sigmoid(tf.neg(aw)), o.gammaPos);
  const wNeg = focalPow(baseNeg, o.gammaNeg);
  const notY = tf.sub(1, y);
  const loss = tf.add(tf.mul(tf.mul(y, wPos), lPos), tf.mul(tf.mul(notY, wNeg), lNeg));
  return tf.neg(tf.sum(loss)) as tf.Scalar;
}

/** Section 2: L_rec = (1/B) Σ_i −log(max(r_i, eps)). */
function reconstructionTerm(
  z: tf.Tensor2D,
  a: tf.Tensor2D,
  mu: tf.Tensor3D,
  v: tf.Tensor3D,
  y: tf.Tensor2D,
  o: ResolvedOptions,
): tf.Scalar {
  const logEpsFloor = Math.log(o.eps);
  // E_ik = −½ Σ_m (z_im − μ_ik,m)² / v_ik,m; μ and v broadcast over k and m.
  const diff = tf.sub(tf.expandDims(z, 1), mu); // [B, K, M]
  const E = tf.mul(tf.sum(tf.div(tf.square(diff), v), 2), -0.5) as tf.Tensor2D; // [B, K]
  if (o.stableReconstruction) {
    // −log r_i = log Σ_k p e^E − log Σ_{k: y=1} p e^E = softplus(LSE_neg − LSE_pos), with the
    // log-sum-exps over the negative and the positive classes of the row (in log p + E). This is
    // exact when every e^E underflows, and its gradient σ(LSE_neg − LSE_pos)·(…) = (1 − r)·(…)
    // does not suffer the cancellation of α − β when r → 1.
    const s = tf.add(tf.neg(tf.softplus(tf.neg(a))), E);
    const pos = tf.greater(y, 0);
    const lse = (mask: tf.Tensor): tf.Tensor1D => {
      // An empty set gives ≈ −1e30: LSE_pos → −∞ makes the row the constant −log(eps) below,
      // LSE_neg → −∞ makes it softplus(−∞) = 0 (r = 1); both with zero gradient and no NaN.
      const t = tf.where(mask, s, EMPTY_LSE);
      const m = stopGradient(tf.max(t, 1, true));
      return tf.add(tf.squeeze(m, [1]), tf.log(tf.sum(tf.exp(tf.sub(t, m)), 1)));
    };
    const minusLogR = tf.softplus(tf.sub(lse(tf.logicalNot(pos)), lse(pos)));
    // −log(max(r, eps)) = min(−log r, −log eps): r < eps (and r = 0) is a constant, zero gradient.
    return tf.mean(tf.minimum(minusLogR, -logEpsFloor));
  }
  // The reference's float32 clamp: e^E replaced by max(e^E, FLT_MIN).
  const e = tf.maximum(tf.exp(E), FLT_MIN);
  const pe = tf.mul(tf.sigmoid(a), e);
  const r = tf.div(tf.sum(tf.mul(pe, y), 1), tf.sum(pe, 1));
  // −log(max(r, eps)): any r < eps (including r = 0) is the constant −log(eps), zero gradient.
  return tf.mean(tf.neg(tf.log(tf.maximum(r, o.eps))));
}

/** Section 3: the contrastive loss over Bhattacharyya coefficients. */
function contrastiveTerm(mu: tf.Tensor3D, v: tf.Tensor3D, y: tf.Tensor2D, dims: KmclDims, o: ResolvedOptions): tf.Scalar {
  const { B, M, D } = dims;
  // Pairwise over (i, j): [B, B, K, D] (v: [B, B, Kv, Dv]).
  const muI = tf.expandDims(mu, 1);
  const muJ = tf.expandDims(mu, 0);
  const vI = tf.expandDims(v, 1);
  const vJ = tf.expandDims(v, 0);
  const vSum = tf.add(vI, vJ);
  const quad = tf.mul(tf.div(tf.square(tf.sub(muI, muJ)), vSum), 0.25);
  // ½·log((a+b)/(2√(ab))) = ¼·log1p((a−b)²/(4ab)): exact near a = b, no catastrophic cancellation.
  const logPart = tf.mul(tf.log1p(tf.div(tf.square(tf.sub(vI, vJ)), tf.mul(tf.mul(vI, vJ), 4))), 0.25);
  const t = tf.add(quad, logPart); // [B, B, K, D]
  // Σ over the M feature dims: with D = 1 every dim has the same term, hence the factor M / D.
  const dist = tf.mul(tf.sum(t, 3), (o.distanceScale * M) / D) as tf.Tensor3D; // [B, B, K]
  const bc = tf.exp(tf.neg(dist)); // BC ∈ (0, 1], diagonal = 1

  const eye2 = tf.eye(B); // [B, B]
  const offDiag2 = tf.sub(1, eye2);
  const eye = tf.expandDims(eye2, 2); // [B, B, 1]
  const offDiag = tf.expandDims(offDiag2, 2);
  // e_ilk / S_ik is invariant to scaling e over l, so use ẽ_ilk = exp((BC_ilk − max_{l≠i} BC_ilk)/τ)
  // ∈ (0, 1]; S̃_ik ≥ 1 for B ≥ 2 and nothing overflows for small τ. The min(·, 0) only touches
  // the (masked) diagonal, which can exceed the off-diagonal max.
  const rowMax = stopGradient(tf.max(tf.sub(bc, tf.mul(eye, 2)), 1, true)); // [B, 1, K]
  const eT = tf.mul(tf.exp(tf.div(tf.minimum(tf.sub(bc, rowMax), 0), o.temperature)), offDiag);
  const S = tf.sum(eT, 1, true); // [B, 1, K]; 0 only when B = 1
  const sSafe = tf.where(positiveMask(S), S, tf.onesLike(S));

  // Label statistics (constants).
  const inter = tf.matMul(y, y, false, true); // |y_i ∧ y_j|, [B, B]
  const count = tf.sum(y, 1);
  const union = tf.sub(tf.add(tf.expandDims(count, 1), tf.expandDims(count, 0)), inter);
  const jaccard = tf.mul(tf.div(inter, tf.maximum(union, 1)), offDiag2); // J_ij, 0 on the diagonal
  const nA = tf.sum(tf.cast(tf.greater(jaccard, 0), 'float32'), 1); // |A(i)|
  const coPositive = tf.mul(tf.mul(tf.expandDims(y, 1), tf.expandDims(y, 0)), offDiag); // y_ik·y_jk, j ≠ i

  const x = tf.div(tf.mul(tf.expandDims(jaccard, 2), eT), sSafe);
  const logTerm = tf.log(tf.add(x, o.logEps));
  // Anchors with A(i) = ∅ have no co-positive (j, k), so their sum is 0 whatever the divisor.
  const perAnchor = tf.div(tf.sum(tf.mul(coPositive, logTerm), [1, 2]), tf.maximum(nA, 1));
  // `+ 0` turns the −0 of a batch without anchors into +0.
  return tf.add(tf.div(tf.neg(tf.sum(perAnchor)), B), 0) as tf.Scalar;
}

/**
 * The KMCL loss (docs/kmcl-loss.md) in plain tfjs ops, differentiable by tfjs autodiff.
 *
 * Computes the asymmetric loss, the kernel reconstruction loss and the Bhattacharyya
 * contrastive loss with every option of the spec (see {@link KmclLossOptions}; resolved and
 * validated by `resolveOptions`). Numerically stable forms are used throughout: log-sigmoid via
 * softplus, a log-sum-exp reconstruction (unless `stableReconstruction: false`, which reproduces
 * the reference's FLT_MIN clamp), max-shifted exponentials in the contrastive softmax and
 * `log1p` for the log part of the Bhattacharyya distance.
 *
 * Memory: the contrastive term materialises `[B, B, K, D]` tensors (O(B²·K·D)); this function is
 * the parity oracle, the fallback without the native addon and the benchmark baseline, not a
 * memory-efficient kernel.
 *
 * All intermediates are released (`tf.tidy`); the caller owns (and must dispose) the four
 * returned scalars.
 *
 * @param inputs `{ features [B, M], logits [B, K], mu [B, K, D], variance [B, Kv, Dv], labels [B, K] }`
 *   with `D ∈ {1, M}`, `Kv ∈ {1, K}`, `Dv ∈ {1, D}`; all float32 except labels (0/1, any dtype).
 * @param options Loss options (defaults as in the spec).
 * @returns `{ loss, asl, reconstruction, contrastive }`, float32 scalars; `loss` is the weighted total.
 * @throws TypeError / Error naming the offending input when a shape, rank or dtype is wrong,
 *   and the errors of `resolveOptions` for bad options.
 */
export function kmclLossReference(inputs: KmclLossInputs, options?: KmclLossOptions): KmclLossTerms {
  const o = resolveOptions(options);
  const dims = checkKmclInputs(inputs);
  return tf.tidy(() => {
    const { features, logits, mu, variance } = inputs;
    const y = tf.cast(inputs.labels, 'float32');
    const asl = aslTerm(logits, y, o);
    const reconstruction = reconstructionTerm(features, logits, mu, variance, y, o);
    const contrastive = contrastiveTerm(mu, variance, y, dims, o);
    const loss = tf.addN([
      tf.mul(asl, o.weights.asl),
      tf.mul(reconstruction, o.weights.reconstruction),
      tf.mul(contrastive, o.weights.contrastive),
    ]) as tf.Scalar;
    return { loss, asl, reconstruction, contrastive };
  });
}
