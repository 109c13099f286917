import { kmclLossRaw, kmclLossRawAsync, backendInfo } from 'kmcl';

const B = 2, K = 3, M = 4;
const problem = {
  batch: B, classes: K, dim: M,
  features: new Float32Array(B * M).fill(0.1),            // [B, M]
  logits: new Float32Array([2, -1, 0.5, -2, 1, 1]),       // [B, K]
  labels: new Float32Array([1, 0, 1, 0, 1, 1]),           // [B, K], exactly 0 or 1
  mu: new Float32Array(B * K * M).fill(0.2), muDim: M,    // [B, K, muDim], muDim ∈ {1, M}
  variance: new Float32Array(B * K).fill(1.5),            // [B, Kv, Dv]
  varianceShape: [K, 1] as const,                         // Kv ∈ {1, K}, Dv ∈ {1, muDim}
};
const options = { temperature: 0.17, weights: { contrastive: 1 } };  // the spec's options; all optional

const result = kmclLossRaw(problem, options);
console.log(result.loss, result.asl, result.reconstruction, result.contrastive);  // loss: the weighted total
console.log(result.gradients?.mu.length);                 // Float32Array of mu's size (also features, logits, variance)

const same = await kmclLossRawAsync(problem, options);    // off the main thread, same numbers
console.log(same.loss === result.loss, backendInfo().defaultDevice);

// Gradients written into arrays you keep across calls (any subset; see "Reusing output arrays").
const out = { mu: new Float32Array(B * K * M), variance: new Float32Array(B * K) };
const again = kmclLossRaw(problem, { ...options, out });
console.log(again.gradients?.mu === out.mu, out.mu.every((v, j) => v === result.gradients?.mu[j]));
