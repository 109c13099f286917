import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';

const tsx = createRequire(import.meta.url).resolve('tsx');

// Runs a script in a fresh process where the addon cannot load (KMCL_ADDON_PATH names no file).
function runWithoutAddon(script: string) {
  return spawnSync(process.execPath, ['--import', tsx, '--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { ...process.env, KMCL_ADDON_PATH: '/nonexistent/kmcl.node' },
  });
}

describe('without the native addon', () => {
  it('kmclLossRaw throws one error listing what was tried and what to do', () => {
    const r = runWithoutAddon(`
      import { kmclLossRaw, backendInfo } from './src/index.ts';
      const f = new Float32Array([1]);
      try { kmclLossRaw({ batch: 1, classes: 1, dim: 1, muDim: 1, varianceShape: [1, 1], features: f, logits: f, labels: f, mu: f, variance: f }); }
      catch (e) { console.log(JSON.stringify({ message: e.message, info: backendInfo() })); }
    `);
    expect(r.status, r.stderr).toBe(0);
    const { message, info } = JSON.parse(r.stdout);
    expect(message).toMatch(/native addon could not be loaded/);
    expect(message).toMatch(/\/nonexistent\/kmcl\.node: not found/);
    expect(message).toMatch(/npx kmcl build/);
    expect(message).toMatch(/optional dependency @kmcl\/[a-z0-9]+-[a-z0-9]+/);
    expect(info.native.loaded).toBe(false);
    expect(info.cuda.usable).toBe(false);
  });
  it('the tfjs op falls back to the composite, warns once with the reason, and gives the same numbers', () => {
    const r = runWithoutAddon(`
      import * as tf from '@tensorflow/tfjs';
      import { kmclLoss, kmclLossReference, kernelCounters } from './src/tfjs/index.ts';
      await tf.setBackend('cpu');
      const inputs = { features: tf.randomNormal([5, 3], 0, 1, 'float32', 1), logits: tf.randomNormal([5, 4], 0, 1, 'float32', 2),
        mu: tf.randomNormal([5, 4, 3], 0, 1, 'float32', 3), variance: tf.add(tf.randomUniform([5, 4, 3], 0, 1, 'float32', 4), 0.5),
        labels: tf.tensor2d([[1,0,1,0],[1,1,0,0],[0,1,1,0],[1,0,0,1],[0,0,1,1]]) };
      const a = kmclLoss(inputs).loss.dataSync()[0];
      const g = tf.grad((m) => kmclLoss({ ...inputs, mu: m }).loss)(inputs.mu).dataSync();
      const b = kmclLossReference(inputs).loss.dataSync()[0];
      console.log(JSON.stringify({ a, b, gFinite: Array.from(g).every(Number.isFinite), kernel: kernelCounters.forward }));
    `);
    expect(r.status, r.stderr).toBe(0);
    const warnings = r.stderr.split('\n').filter((l) => l.includes('kmcl: using the plain-tfjs composite'));
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toMatch(/native addon is not available/);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.a).toBe(out.b);
    expect(out.gFinite).toBe(true);
    expect(out.kernel).toBe(0);
  });
});

describe('registration order', () => {
  it('works when the tfjs backend became active before kmcl was imported', () => {
    const r = spawnSync(process.execPath, ['--import', tsx, '--input-type=module', '-e', `
      import * as tf from '@tensorflow/tfjs';
      await tf.setBackend('cpu');
      tf.square(tf.scalar(2)).dataSync();
      const { kmclLoss, kernelCounters } = await import('./src/tfjs/index.ts');
      const inputs = { features: tf.ones([2, 2]), logits: tf.zeros([2, 2]), mu: tf.ones([2, 2, 2]), variance: tf.ones([2, 2, 2]), labels: tf.tensor2d([[1, 0], [1, 1]]) };
      const loss = kmclLoss(inputs).loss.dataSync()[0];
      console.log(JSON.stringify({ loss, forward: kernelCounters.forward }));
    `], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\\n').pop()!);
    expect(out.forward).toBe(1);
    expect(Number.isFinite(out.loss)).toBe(true);
  });
});
