// A worker for the worker-safety tests: runs kmcl calls in a loop ('sync', 'async' or 'queue'
// of many async calls) and reports each result to the parent.
import { parentPort, workerData } from 'node:worker_threads';
import { kmclLossRaw, kmclLossRawAsync } from '../../src/index.js';
import { randomProblem, type RandomProblemSpec } from '../helpers.js';

const { mode, spec, queue } = workerData as { mode: 'sync' | 'async' | 'queue'; spec: RandomProblemSpec; queue?: number };
const p = randomProblem(spec);
const opts = { device: 'cpu' as const };

if (mode === 'sync') {
  for (;;) {
    const r = kmclLossRaw(p, opts);
    parentPort!.postMessage({ loss: r.loss });
  }
} else if (mode === 'async') {
  for (;;) {
    const r = await kmclLossRawAsync(p, opts);
    parentPort!.postMessage({ loss: r.loss });
  }
} else {
  const all = Array.from({ length: queue ?? 20 }, () => kmclLossRawAsync(p, opts));
  parentPort!.postMessage({ queued: all.length });
  all.forEach((q) => q.then((r) => parentPort!.postMessage({ loss: r.loss })));
}
