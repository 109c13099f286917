/**
 * kmcl for TensorFlow.js: the fused `kmclLoss` op (registered kernel `KmclLoss` with its
 * gradient), the plain-tfjs composite `kmclLossReference`, the KMM head, training helpers and
 * multilabel metrics. Import as `kmcl/tfjs`; it loads `@tensorflow/tfjs` (a peer dependency).
 */
export { kmclLoss, kmclFallbackReason, type KmclOpInputs, type KmclOpOptions } from './op.js';
export { KMCL_LOSS, KERNEL_BACKENDS, kernelCounters, registerKmclKernels } from './kernel.js';
export { kmclLossReference, type KmclLossInputs, type KmclLossTerms } from './reference.js';
export { KmmHead, kmmHead, type KmmCovariance, type KmmHeadConfig, type KmmMode } from './head.js';
export { buildKmclModel, decays, oneCycleLr, trainKmcl, WeightEma, type StepInfo, type TrainKmclConfig, type TrainKmclResult } from './train.js';
export { KmclPack, kmclFitLoss, kmclPackedLayout, packKmclOutputs, unpackKmclOutputs, type KmclLayoutConfig, type KmclPackedLayout } from './fit.js';
export * from '../metrics.js';
export * from '../index.js';
