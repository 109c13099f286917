/**
 * kmcl: the KMCL loss (Kernel-based Multilabel Contrastive Learning, arXiv 2307.03967) as fused
 * native ops. The framework-free API lives here; the TensorFlow.js op, head, training helpers and
 * metrics are exported alongside.
 */
export { DEFAULT_OPTIONS, resolveOptions, type KmclLossOptions, type KmclWeights, type ResolvedOptions } from './options.js';
export { backendInfo, releaseDeviceMemory, type BackendInfo, type CpuIsa } from './native.js';
export {
  kmclLossRaw,
  kmclLossRawAsync,
  kmclLossRawFloat64,
  type Device,
  type GradientName,
  type KmclGradients,
  type KmclOut,
  type KmclProblem,
  type KmclRawOptions,
  type KmclRawResult,
} from './raw.js';
export { problemFromFile, type ProblemFile } from './fixture.js';
