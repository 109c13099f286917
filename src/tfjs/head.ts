/**
 * The KMM head of docs/kmcl-loss.md ("The KMM head that produces these inputs") as a
 * tfjs-layers layer: from encoder features it produces the per-class Gaussian kernels
 * (`mu`, `variance`) and the classification `logits` that the KMCL loss consumes.
 */
import * as tf from '@tensorflow/tfjs';
import { describe } from '../options.js';

/** Isotropic: one scalar mean per class (D = 1). Anisotropic: diagonal Gaussians (D = M). */
export type KmmMode = 'isotropic' | 'anisotropic';

/**
 * Covariance family of the variance output:
 * - `perClass` ("BC"): `[B, K, D]`, one variance per class (and dimension);
 * - `perDim` ("MKS"): `[B, 1, D]`, one variance per dimension shared by all classes;
 * - `shared` ("RBF"): `[B, 1, 1]`, one bandwidth per sample.
 */
export type KmmCovariance = 'perClass' | 'perDim' | 'shared';

/** The tfjs-layers base-layer arguments (`name`, `trainable`, `inputShape`, `batchInputShape`, `dtype`, ...). */
export type BaseLayerArgs = NonNullable<ConstructorParameters<typeof tf.layers.Layer>[0]>;

/** Configuration of {@link KmmHead}; also accepts the base-layer arguments of tfjs-layers. */
export interface KmmHeadConfig extends BaseLayerArgs {
  /** Number of classes K (a positive integer). */
  numClasses: number;
  /** `'anisotropic'` (default) or `'isotropic'`. */
  mode?: KmmMode;
  /** `'perClass'` (default), `'perDim'` or `'shared'`. */
  covariance?: KmmCovariance;
  /** Anisotropic mode only: the projected feature dimension M (default 128). */
  projectionDim?: number;
}

type Kwargs = Parameters<tf.layers.Layer['call']>[1];
type LayerVariable = tf.LayerVariable;

const MODES: readonly KmmMode[] = ['isotropic', 'anisotropic'];
const COVARIANCES: readonly KmmCovariance[] = ['perClass', 'perDim', 'shared'];

function positiveInteger(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new TypeError(`KmmHead: config.${name} must be a positive integer, got ${describe(value)}`);
  }
  return value;
}

/**
 * The KMM head as a tfjs-layers `Layer` (`className` `'KmmHead'`, registered for serialisation).
 *
 * Input: features f `[B, F]`. Let M = `projectionDim` (anisotropic) or F (isotropic), h = the
 * M-dimensional features below, D = M (anisotropic) or 1 (isotropic), K = `numClasses`:
 *
 *     h        = anisotropic ? Dense(M)(f) : f          linear projection, glorotUniform / zeros
 *     logits   = Dense(K)(h)                            [B, K], glorotUniform / zeros
 *     mu       = Dense(K·D)(h) → [B, K, D]              weights U(0, 0.1), bias 0
 *     variance = 2 + ELU(Dense(Kv·Dv)(h)) + 1e-7 → [B, Kv, Dv]   weights 1, bias 0
 *
 * with `[Kv, Dv]` = `[K, D]` (perClass), `[1, D]` (perDim), `[1, 1]` (shared); every variance
 * is > 1. In isotropic mode D = 1, so `perDim` has the same shape as `shared` (`[B, 1, 1]`):
 * the loss requires Dv ∈ {1, D}. The variance kernel starts at all ones, as in the spec and the
 * reference code, so the initial variance is the same for every class and grows like ELU(Σ h).
 *
 * Outputs (in this order): isotropic `[logits, mu, variance]`; anisotropic
 * `[logits, mu, variance, projected]`, where `projected` = h `[B, M]` is the `features` input of
 * the loss (in isotropic mode pass f itself). Works on concrete tensors (`head.apply(f)` returns
 * a `tf.Tensor[]`) and on symbolic ones inside `tf.model` (four/three `SymbolicTensor`s).
 *
 * @example
 * const input = tf.input({ shape: [512] });
 * const [logits, mu, variance, features] = kmmHead({ numClasses: 20 }).apply(input) as tf.SymbolicTensor[];
 * const model = tf.model({ inputs: input, outputs: [logits, mu, variance, features] });
 */
export class KmmHead extends tf.layers.Layer {
  /** @nocollapse */
  static className = 'KmmHead';

  readonly numClasses: number;
  readonly mode: KmmMode;
  readonly covariance: KmmCovariance;
  /** The projected dimension M in anisotropic mode; undefined in isotropic mode. */
  readonly projectionDim: number | undefined;

  private projectionKernel: LayerVariable | null = null;
  private projectionBias: LayerVariable | null = null;
  private logitsKernel: LayerVariable | null = null;
  private logitsBias: LayerVariable | null = null;
  private muKernel: LayerVariable | null = null;
  private muBias: LayerVariable | null = null;
  private varianceKernel: LayerVariable | null = null;
  private varianceBias: LayerVariable | null = null;
  /** M, known after build. */
  private featureDim = 0;

  /**
   * @param config `{ numClasses, mode = 'anisotropic', covariance = 'perClass', projectionDim = 128 }`
   *   plus the tfjs-layers `name` / `trainable`.
   * @throws TypeError naming the config field that is missing or invalid.
   */
  constructor(config: KmmHeadConfig) {
    if (config === null || typeof config !== 'object' || Array.isArray(config)) {
      throw new TypeError(`KmmHead: config must be an object like { numClasses }, got ${describe(config)}`);
    }
    const { numClasses, mode, covariance, projectionDim, ...layerArgs } = config;
    super(layerArgs);
    this.numClasses = positiveInteger('numClasses', numClasses);
    this.mode = mode ?? 'anisotropic';
    if (!MODES.includes(this.mode)) {
      throw new TypeError(`KmmHead: config.mode must be 'isotropic' or 'anisotropic', got ${describe(mode)}`);
    }
    this.covariance = covariance ?? 'perClass';
    if (!COVARIANCES.includes(this.covariance)) {
      throw new TypeError(`KmmHead: config.covariance must be 'perClass', 'perDim' or 'shared', got ${describe(covariance)}`);
    }
    if (this.mode === 'anisotropic') {
      this.projectionDim = positiveInteger('projectionDim', projectionDim ?? 128);
    } else {
      if (projectionDim !== undefined && projectionDim !== null) {
        throw new TypeError(`KmmHead: config.projectionDim applies to mode 'anisotropic' only (isotropic keeps M = F)`);
      }
      this.projectionDim = undefined;
    }
    this.inputSpec = [{ ndim: 2 }];
  }

  /** D: 1 (isotropic) or M (anisotropic). */
  private get kernelDim(): number {
    return this.mode === 'isotropic' ? 1 : this.featureDim;
  }

  /** `[Kv, Dv]` of the variance output. */
  private get varianceDims(): [number, number] {
    switch (this.covariance) {
      case 'perClass':
        return [this.numClasses, this.kernelDim];
      case 'perDim':
        return [1, this.kernelDim];
      case 'shared':
        return [1, 1];
    }
  }

  override build(inputShape: tf.Shape | tf.Shape[]): void {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const F = shape[shape.length - 1];
    if (shape.length !== 2 || typeof F !== 'number' || F < 1) {
      throw new Error(`KmmHead: the input features must have shape [B, F] with a known F, got [${shape.map(String).join(', ')}]`);
    }
    const K = this.numClasses;
    const M = this.mode === 'anisotropic' ? (this.projectionDim as number) : F;
    this.featureDim = M;
    const D = this.kernelDim;
    const [Kv, Dv] = this.varianceDims;
    const glorot = (): ReturnType<typeof tf.initializers.glorotUniform> => tf.initializers.glorotUniform({});
    const zeros = (): ReturnType<typeof tf.initializers.zeros> => tf.initializers.zeros();
    if (this.mode === 'anisotropic') {
      this.projectionKernel = this.addWeight('projection_kernel', [F, M], 'float32', glorot());
      this.projectionBias = this.addWeight('projection_bias', [M], 'float32', zeros());
    }
    this.logitsKernel = this.addWeight('logits_kernel', [M, K], 'float32', glorot());
    this.logitsBias = this.addWeight('logits_bias', [K], 'float32', zeros());
    // U(0, 0.1). Not tf.initializers.randomUniform({ minval: 0, ... }): tfjs-layers 4.x reads
    // `args.minval || -0.05`, so a lower bound of 0 silently becomes −0.05.
    this.muKernel = this.addWeight('mu_kernel', [M, K * D], 'float32', zeros());
    const muInit = tf.randomUniform([M, K * D], 0, 0.1, 'float32');
    this.muKernel.write(muInit);
    muInit.dispose();
    this.muBias = this.addWeight('mu_bias', [K * D], 'float32', zeros());
    this.varianceKernel = this.addWeight('variance_kernel', [M, Kv * Dv], 'float32', tf.initializers.ones());
    this.varianceBias = this.addWeight('variance_bias', [Kv * Dv], 'float32', zeros());
    this.inputSpec = [{ ndim: 2, axes: { [-1]: F } }];
    this.built = true;
  }

  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape[] {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const B = shape[0];
    const F = shape[shape.length - 1];
    const K = this.numClasses;
    const M = this.mode === 'anisotropic' ? (this.projectionDim as number) : F;
    const D = this.mode === 'isotropic' ? 1 : M;
    const Kv = this.covariance === 'perClass' ? K : 1;
    const Dv = this.covariance === 'shared' ? 1 : D;
    const out: tf.Shape[] = [
      [B, K],
      [B, K, D],
      [B, Kv, Dv],
    ];
    if (this.mode === 'anisotropic') out.push([B, M]);
    return out;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: Kwargs): tf.Tensor[] {
    void kwargs;
    return tf.tidy(() => {
      const f = Array.isArray(inputs) ? inputs[0] : inputs;
      if (f.rank !== 2) throw new Error(`KmmHead: the input features must have shape [B, F], got [${f.shape.join(', ')}]`);
      const dense = (x: tf.Tensor, kernel: LayerVariable | null, bias: LayerVariable | null): tf.Tensor2D =>
        tf.add(tf.matMul(x as tf.Tensor2D, (kernel as LayerVariable).read() as tf.Tensor2D), (bias as LayerVariable).read());
      const h = this.mode === 'anisotropic' ? dense(f, this.projectionKernel, this.projectionBias) : (f as tf.Tensor2D);
      const K = this.numClasses;
      const D = this.kernelDim;
      const [Kv, Dv] = this.varianceDims;
      const logits = dense(h, this.logitsKernel, this.logitsBias);
      const mu = tf.reshape(dense(h, this.muKernel, this.muBias), [-1, K, D]);
      const v = tf.add(tf.add(tf.elu(dense(h, this.varianceKernel, this.varianceBias)), 2), 1e-7);
      const variance = tf.reshape(v, [-1, Kv, Dv]);
      return this.mode === 'anisotropic' ? [logits, mu, variance, tf.clone(h)] : [logits, mu, variance];
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    const config: tf.serialization.ConfigDict = {
      numClasses: this.numClasses,
      mode: this.mode,
      covariance: this.covariance,
    };
    if (this.projectionDim !== undefined) config.projectionDim = this.projectionDim;
    return { ...super.getConfig(), ...config };
  }

  /**
   * Rebuilds a head from {@link KmmHead.getConfig}'s output (as stored in `model.toJSON()`);
   * the weights are restored separately by the model loader.
   */
  static override fromConfig<T extends tf.serialization.Serializable>(
    cls: tf.serialization.SerializableConstructor<T>,
    config: tf.serialization.ConfigDict,
  ): T {
    return new cls(config);
  }
}

tf.serialization.registerClass(KmmHead);

/**
 * Factory for {@link KmmHead}, in the style of `tf.layers.dense(...)`.
 *
 * @param config `{ numClasses, mode = 'anisotropic', covariance = 'perClass', projectionDim = 128 }`.
 * @returns A new, unbuilt layer; apply it to `[B, F]` features (concrete or symbolic).
 */
export function kmmHead(config: KmmHeadConfig): KmmHead {
  return new KmmHead(config);
}
