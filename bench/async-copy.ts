// The cost of the async call's input copy next to the computation (issue 9). For a few sizes of
// the anisotropic per-class layout (the largest inputs per sample): the bytes copied, the time to
// copy them (the five inputs' slice(), the same memcpy the native submission does), the
// synchronous part of kmclLossRawAsync (validation + copy + queueing), and the computation
// (a sync kmclLossRaw, forward + gradients). Medians. Run: npx tsx bench/async-copy.ts
import { cpus } from 'node:os';
import { kmclLossRaw, kmclLossRawAsync } from '../src/index.js';
import { randomProblem } from '../test/helpers.js';

const median = (a: number[]) => a.slice().sort((x, y) => x - y)[Math.floor(a.length / 2)];
const time = (fn: () => void, reps: number) =>
  median(
    Array.from({ length: reps }, () => {
      const t = performance.now();
      fn();
      return performance.now() - t;
    }),
  );

console.log(`kmcl async input copy vs compute; ${cpus()[0]?.model ?? 'cpu'} (${cpus().length} cores), node ${process.version}, ${new Date().toISOString()}`);
console.log('| B | K | M = D | input MiB | copy (ms) | async submit (ms) | compute (ms) | copy / compute |');
console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const B of [64, 256, 512]) {
  const K = 20;
  const M = 64;
  const p = randomProblem({ seed: 7, B, K, M, D: M, Kv: K, Dv: M, positives: 3 });
  const arrays = [p.features, p.logits, p.labels, p.mu, p.variance];
  const bytes = arrays.reduce((s, a) => s + a.byteLength, 0);
  const copy = time(() => arrays.forEach((a) => a.slice()), 50);
  const compute = time(() => kmclLossRaw(p, { device: 'cpu' }), B >= 512 ? 3 : 7);
  const submits: number[] = [];
  for (let j = 0; j < 5; j++) {
    const t = performance.now();
    const pending = kmclLossRawAsync(p, { device: 'cpu' });
    submits.push(performance.now() - t);
    await pending;
  }
  console.log(
    `| ${B} | ${K} | ${M} | ${(bytes / 2 ** 20).toFixed(2)} | ${copy.toFixed(3)} | ${median(submits).toFixed(3)} | ${compute.toFixed(1)} | ${((100 * copy) / compute).toFixed(2)} % |`,
  );
}
