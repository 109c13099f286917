// The reliability soak (issue 9): for KMCL_SOAK_SECONDS, mixed valid and invalid calls - sync,
// async, the tfjs op, and in workers terminated at random points - with inputs mutated and
// detached right after async submission. Prints one JSON line of counts; the caller asserts
// zero crashes (its exit status), zero mismatches (every result bitwise equal to the sync result
// of the inputs at call time), and flat RSS and tf.memory().numTensors.
import * as tf from '@tensorflow/tfjs';
import { Worker } from 'node:worker_threads';
import { kmclLossRaw, kmclLossRawAsync, type KmclProblem, type KmclRawResult } from '../../src/index.js';
import { kmclLoss } from '../../src/tfjs/index.js';
import { mulberry32, randomProblem, type RandomProblemSpec } from '../helpers.js';

const seconds = Number(process.env.KMCL_SOAK_SECONDS ?? 8);
const rnd = mulberry32(Number(process.env.KMCL_SOAK_SEED ?? 9));
const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)];
const INPUTS = ['features', 'logits', 'labels', 'mu', 'variance'] as const;
const cpu = { device: 'cpu' as const };

await tf.setBackend('cpu');
const specs: RandomProblemSpec[] = [
  { seed: 1, B: 8, K: 3, M: 4, D: 1, Kv: 3, Dv: 1, positives: 2 },
  { seed: 2, B: 24, K: 6, M: 8, D: 8, Kv: 6, Dv: 8, positives: 2 },
  { seed: 3, B: 40, K: 5, M: 6, D: 6, Kv: 1, Dv: 6, positives: 3 },
  { seed: 4, B: 96, K: 10, M: 16, D: 16, Kv: 10, Dv: 1, positives: 3 },
];
const expected = specs.map((s) => kmclLossRaw(randomProblem(s), cpu));
const copyOf = (p: KmclProblem): KmclProblem => ({ ...p, ...Object.fromEntries(INPUTS.map((k) => [k, p[k].slice()])) }) as KmclProblem;

const counts = { sync: 0, async: 0, op: 0, invalid: 0, workers: 0, workerResults: 0, mutated: 0, detached: 0, mismatches: 0, wrongErrors: 0 };
const mismatch = (what: string) => {
  counts.mismatches++;
  if (counts.mismatches <= 5) console.error('mismatch:', what);
};

function sameBits(a: KmclRawResult, b: KmclRawResult): boolean {
  if (!Object.is(a.loss, b.loss) || !Object.is(a.asl, b.asl) || !Object.is(a.reconstruction, b.reconstruction) || !Object.is(a.contrastive, b.contrastive)) return false;
  for (const k of ['features', 'logits', 'mu', 'variance'] as const) {
    const x = a.gradients![k];
    const y = b.gradients![k];
    if (!Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength))) return false;
  }
  return true;
}

/** A copy of problem j broken in one random way, and the argument the error must name. */
function broken(j: number): { p: KmclProblem; opts: object; names: RegExp } {
  const p = copyOf(randomProblem(specs[j]));
  const kind = Math.floor(rnd() * 6);
  if (kind === 0) return ((p.features[0] = NaN), { p, opts: cpu, names: /problem\.features/ });
  if (kind === 1) return ((p.variance[p.variance.length - 1] = 0), { p, opts: cpu, names: /problem\.variance/ });
  if (kind === 2) return ((p.labels[1] = 0.5), { p, opts: cpu, names: /problem\.labels/ });
  if (kind === 3) return { p: { ...p, mu: p.mu.subarray(1) }, opts: cpu, names: /problem\.mu/ };
  if (kind === 4) return { p, opts: { ...cpu, temperature: -1 }, names: /options\.temperature/ };
  return ((p.variance[0] = 1e-40), { p, opts: cpu, names: /problem\.variance/ });
}

const root = new URL('../../', import.meta.url);
const entry = new URL('./test/workers/compute-worker.ts', root).href;
async function workerRound(): Promise<void> {
  const j = Math.floor(rnd() * 3);
  const w = new Worker(new URL('./test/workers/boot.mjs', root), { workerData: { entry, mode: pick(['sync', 'async', 'queue'] as const), spec: specs[j], queue: 4 }, execArgv: [] });
  counts.workers++;
  w.on('message', (m: { loss?: number }) => {
    if (m.loss === undefined) return;
    counts.workerResults++;
    if (!Object.is(m.loss, expected[j].loss)) mismatch(`worker loss ${m.loss} vs ${expected[j].loss}`);
  });
  w.on('error', (e) => mismatch(`worker error ${e.message}`));
  // Terminate at a random point once the worker is calling kmcl (its first message).
  await new Promise((r) => w.once('message', r));
  await new Promise((r) => setTimeout(r, rnd() * 30));
  await w.terminate();
}

async function asyncRound(): Promise<void> {
  const j = Math.floor(rnd() * specs.length);
  const p = copyOf(randomProblem(specs[j]));
  const pending = kmclLossRawAsync(p, cpu);
  const action = Math.floor(rnd() * 3);
  if (action === 1) {
    counts.mutated++;
    p.variance.fill(-1);
    p.features.fill(NaN);
    p.labels.fill(0.5);
  } else if (action === 2) {
    counts.detached++;
    for (const k of INPUTS) structuredClone(p[k].buffer, { transfer: [p[k].buffer as ArrayBuffer] });
  }
  counts.async++;
  if (!sameBits(await pending, expected[j])) mismatch(`async problem ${j} (action ${action})`);
}

function opRound(): void {
  const j = Math.floor(rnd() * specs.length);
  const p = randomProblem(specs[j]);
  const loss = tf.tidy(() => {
    const r = kmclLoss({
      features: tf.tensor2d(p.features, [p.batch, p.dim]),
      logits: tf.tensor2d(p.logits, [p.batch, p.classes]),
      mu: tf.tensor3d(p.mu, [p.batch, p.classes, p.muDim]),
      variance: tf.tensor3d(p.variance, [p.batch, p.varianceShape[0], p.varianceShape[1]]),
      labels: tf.tensor2d(p.labels, [p.batch, p.classes], rnd() < 0.5 ? 'float32' : 'int32'),
    }, cpu);
    return r.loss.dataSync()[0];
  });
  counts.op++;
  if (!Object.is(loss, Math.fround(expected[j].loss))) mismatch(`op loss ${loss} vs ${Math.fround(expected[j].loss)}`);
  // An invalid op call (soft labels) throws and leaks nothing.
  try {
    tf.tidy(() => kmclLoss({ features: tf.ones([2, 1]), logits: tf.ones([2, 1]), mu: tf.ones([2, 1, 1]), variance: tf.ones([2, 1, 1]), labels: tf.fill([2, 1], 0.5) }));
    mismatch('op accepted soft labels');
  } catch (e) {
    counts.invalid++;
    if (!/kmclLoss: labels/.test((e as Error).message)) counts.wrongErrors++;
  }
}

const rssMiB = () => (globalThis.gc?.(), process.memoryUsage().rss / 2 ** 20);
const t0 = performance.now();
const deadline = t0 + seconds * 1000;
let rssStart = 0;
let tensorsStart = -1;
let warm = false;
// Workers start and die on their own loop, next to the main thread's calls.
const workerLoop = (async () => {
  while (performance.now() < deadline) await workerRound();
})();
while (performance.now() < deadline) {
  if (!warm && performance.now() - t0 > seconds * 250) {
    warm = true;
    rssStart = rssMiB();
    tensorsStart = tf.memory().numTensors;
  }
  const jobs: Promise<void>[] = [];
  for (let n = 0; n < 6; n++) {
    const r = rnd();
    if (r < 0.35) jobs.push(asyncRound());
    else if (r < 0.55) {
      const j = Math.floor(rnd() * specs.length);
      counts.sync++;
      if (!sameBits(kmclLossRaw(randomProblem(specs[j]), cpu), expected[j])) mismatch(`sync problem ${j}`);
    } else if (r < 0.75) {
      const j = Math.floor(rnd() * specs.length);
      const b = broken(j);
      const viaAsync = rnd() < 0.5;
      try {
        if (viaAsync) await kmclLossRawAsync(b.p, b.opts);
        else kmclLossRaw(b.p, b.opts);
        mismatch('an invalid call was accepted');
      } catch (e) {
        counts.invalid++;
        if (!(e instanceof Error) || !b.names.test(e.message)) {
          counts.wrongErrors++;
          console.error('wrong error:', (e as Error).message, 'expected', b.names);
        }
      }
    } else opRound();
  }
  await Promise.all(jobs);
}
await workerLoop;
const rssEnd = rssMiB();
console.log(JSON.stringify({ seconds, ...counts, rssGrowthMiB: Math.round((rssEnd - rssStart) * 10) / 10, tensorsStart, tensorsEnd: tf.memory().numTensors }));
