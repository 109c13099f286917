import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';

import { backendInfo } from '../src/native.js';
import { registerWasmConvGradients } from '../apps/demo/model.js';
import { EpochProgress, formatDuration, type ProgressStream } from '../apps/demo/progress.js';
import type { DemoReport } from '../apps/demo/report.js';
import { DEFAULT_CONFIG, DemoArgsError, QUICK_OVERRIDES, demoConfig, parseDemoArgs, runDemo } from '../apps/demo/run.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'kmcl-demo-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function sink(isTTY = false): ProgressStream & { text: string } {
  const s = { text: '', isTTY, write: (c: string) => ((s.text += c), true) };
  return s;
}

function argsError(argv: string[]): DemoArgsError {
  try {
    parseDemoArgs(argv);
  } catch (e) {
    expect(e).toBeInstanceOf(DemoArgsError);
    return e as DemoArgsError;
  }
  throw new Error(`parseDemoArgs(${JSON.stringify(argv)}) did not throw`);
}

describe('parseDemoArgs', () => {
  it('gives the defaults, the quick preset, and reads every flag', () => {
    expect(parseDemoArgs([])).toEqual({ help: false, config: { ...DEFAULT_CONFIG } });
    expect(parseDemoArgs(['--quick']).config).toMatchObject({ ...QUICK_OVERRIDES, quick: true });
    expect(parseDemoArgs(['--help']).help).toBe(true);
    expect(parseDemoArgs(['-h']).help).toBe(true);
    const { config } = parseDemoArgs([
      '--', '--epochs', '3', '--batch-size=32', '--mode', 'isotropic', '--covariance', 'MKS', '--temperature', '0.5',
      '--train-size', '100', '--val-size', '20', '--test-size', '30', '--seed', '-7', '--device', 'cpu',
      '--backend', 'cpu', '--out', 'x/y', '--json', '--learning-rate', '1e-3', '--quick',
    ]);
    expect(config).toEqual({
      ...DEFAULT_CONFIG, epochs: 3, batchSize: 32, mode: 'isotropic', covariance: 'perDim', temperature: 0.5,
      trainSize: 100, valSize: 20, testSize: 30, seed: -7, device: 'cpu', backend: 'cpu', out: 'x/y', json: true,
      learningRate: 1e-3, quick: true,
    });
    // --data-size scales the preset's three sizes; explicit sizes win.
    const scaled = parseDemoArgs(['--data-size', '0.5', '--test-size', '7']).config;
    expect([scaled.trainSize, scaled.valSize, scaled.testSize]).toEqual([DEFAULT_CONFIG.trainSize / 2, DEFAULT_CONFIG.valSize / 2, 7]);
    expect(parseDemoArgs(['--data-dir', root]).config.dataDir).toBe(root);
    // The task: the grid task by default, the 2×2 one with --task easy; the grid's difficulty.
    expect(DEFAULT_CONFIG.task).toBe('grid');
    expect(parseDemoArgs(['--task', 'easy', '--difficulty', '0.5']).config).toMatchObject({ task: 'easy', difficulty: 0.5 });
    expect(argsError(['--task', 'hard']).message).toBe("--task: must be one of grid, easy, got 'hard'");
    expect(argsError(['--difficulty', '2.5']).message).toBe('--difficulty: must be a number in [0, 2], got 2.5');
  });

  it('rejects bad flags with an error naming the flag (exit code 2)', () => {
    const unknown = argsError(['--epoch', '3']);
    expect(unknown.flag).toBe('--epoch');
    expect(unknown.exitCode).toBe(2);
    expect(unknown.message).toMatch(/unknown flag --epoch \(did you mean --epochs\?\)/);
    expect(argsError(['--frobnicate']).message).toMatch(/unknown flag --frobnicate; known flags: --epochs/);
    expect(argsError(['--epochs', 'ten']).message).toBe("--epochs: must be a number, got 'ten'");
    expect(argsError(['--epochs', '1.5']).message).toBe("--epochs: must be an integer, got '1.5'");
    expect(argsError(['--epochs', '0']).message).toBe('--epochs: must be an integer ≥ 1, got 0');
    expect(argsError(['--epochs']).message).toBe('--epochs: needs a value (see --help)');
    expect(argsError(['--epochs', '--quick']).message).toBe('--epochs: needs a value (see --help)');
    expect(argsError(['--epochs=']).message).toBe('--epochs: needs a non-empty value');
    expect(argsError(['--batch-size', '1']).message).toBe('--batch-size: must be an integer ≥ 2, got 1');
    expect(argsError(['--mode', 'diagonal']).message).toBe("--mode: must be one of isotropic, anisotropic, got 'diagonal'");
    expect(argsError(['--covariance', 'full']).message).toMatch(/^--covariance: must be one of perClass, perDim, shared/);
    expect(argsError(['--temperature', '0']).message).toBe('--temperature: must be a number > 0, got 0');
    expect(argsError(['--temperature', '1e']).message).toBe("--temperature: must be a number, got '1e'");
    expect(argsError(['--device', 'tpu']).message).toBe("--device: must be one of auto, cpu, cuda, got 'tpu'");
    expect(argsError(['--backend', 'webgl']).message).toBe("--backend: must be one of wasm, cpu, got 'webgl'");
    expect(argsError(['--data-size', '-1']).message).toBe('--data-size: must be a number > 0, got -1');
    expect(argsError(['--json=yes']).message).toBe("--json: takes no value, got 'yes'");
    expect(argsError(['--seed', '1', '--seed', '2']).message).toBe('--seed: given more than once');
    expect(argsError(['quick']).message).toMatch(/unexpected argument 'quick'/);
    expect(argsError(['--data-dir', join(tmp, 'missing')]).message).toMatch(/^--data-dir: '.*missing' is not a folder$/);
  });

  it('the entry point exits 2 with the message on stderr, and 0 for --help', () => {
    const tsx = join(root, 'node_modules', '.bin', 'tsx');
    const bad = spawnSync(tsx, ['apps/demo/main.ts', '--mode', 'round'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("kmcl demo: --mode: must be one of isotropic, anisotropic, got 'round'");
    expect(bad.stdout).toBe('');
    const help = spawnSync(tsx, ['apps/demo/main.ts', '--help'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/--batch-size N/);
  });
});

describe('progress', () => {
  const step = (epoch: number, i: number) => ({ epoch, step: i, learningRate: 1e-3, loss: 3, asl: 2, reconstruction: 0.5, contrastive: 0.5, lossMs: 1, stepMs: 10 });

  it('draws a bar with the running loss parts and ETAs on a TTY', () => {
    const out = sink(true);
    const p = new EpochProgress({ label: 'KMCL', epochs: 2, stepsPerEpoch: 4, mode: 'bar', stream: out, redrawMs: 0 });
    p.step(step(0, 0));
    p.step(step(0, 1));
    expect(p.barLine(0)).toMatch(/^KMCL {5}epoch 1\/2 █{10}░{10} 2\/4 {2}loss 3\.000 \(asl 2\.000 rec 0\.500 con 0\.500\) {2}ETA 0:00 \(run 0:00\)$/);
    p.step(step(0, 2));
    p.step(step(0, 3));
    const s = p.endEpoch(0, 0.5);
    expect(s).toMatchObject({ epoch: 0, loss: 3, asl: 2, reconstruction: 0.5, contrastive: 0.5, valMAP: 0.5 });
    expect(out.text).toContain('\r');
    expect(out.text).toMatch(/val mAP 50\.00 {2}0:00\n$/);
  });

  it('prints one line per epoch without a TTY and nothing when off', () => {
    const out = sink(false);
    const p = new EpochProgress({ label: 'ASL-only', epochs: 1, stepsPerEpoch: 2, mode: 'lines', stream: out, showAuxiliary: false });
    p.step(step(0, 0));
    p.step(step(0, 1));
    p.endEpoch(0, null);
    expect(out.text).toMatch(/^ASL-only epoch 1\/1 {2}loss 3\.000 \(asl 2\.000\) {2}0\.0s\n$/);
    const off = sink(true);
    const q = new EpochProgress({ label: 'x', epochs: 1, stepsPerEpoch: 1, mode: 'off', stream: off });
    q.step(step(0, 0));
    q.endEpoch(0, 0.1);
    expect(off.text).toBe('');
    expect(formatDuration(61_000)).toBe('1:01');
    expect(formatDuration(3_725_000)).toBe('1:02:05');
    expect(formatDuration(Number.NaN)).toBe('--:--');
  });
});

describe('wasm convolution gradients', () => {
  it('match the cpu backend (filter and input gradients, same / valid / strided)', async () => {
    const cases: { stride: number; pad: 'same' | 'valid'; c: number }[] = [
      { stride: 1, pad: 'same', c: 3 },
      { stride: 1, pad: 'valid', c: 2 },
      { stride: 2, pad: 'same', c: 2 },
    ];
    const grads = async (backend: string) => {
      await tf.setBackend(backend);
      if (backend === 'wasm') registerWasmConvGradients();
      return cases.map(({ stride, pad, c }) =>
        tf.tidy(() => {
          const x = tf.tensor4d(Array.from({ length: 2 * 9 * 9 * c }, (_, i) => Math.sin(i * 0.37)), [2, 9, 9, c]);
          const w = tf.tensor4d(Array.from({ length: 3 * 3 * c * 4 }, (_, i) => Math.cos(i * 0.21)), [3, 3, c, 4]);
          const f = (xi: tf.Tensor4D, wi: tf.Tensor4D) => tf.sum(tf.square(tf.conv2d(xi, wi, stride, pad)));
          const [gx, gw] = tf.grads(f as (...a: tf.Tensor[]) => tf.Tensor)([x, w]);
          return [Array.from(gx.dataSync()), Array.from(gw.dataSync())];
        }),
      );
    };
    const cpu = await grads('cpu');
    const wasm = await grads('wasm');
    for (let i = 0; i < cases.length; i++) {
      for (let j = 0; j < 2; j++) {
        const scale = Math.max(...cpu[i][j].map(Math.abs));
        const err = Math.max(...cpu[i][j].map((v, k) => Math.abs(v - wasm[i][j][k])));
        expect(err / scale, `case ${i} ${j === 0 ? 'input' : 'filter'}`).toBeLessThan(1e-5);
      }
    }
  });
});

describe('runDemo', () => {
  it('a tiny end-to-end run writes a valid report.json, plot.svg and summary.md', async () => {
    const out = join(tmp, 'run');
    const stdout = sink();
    const stderr = sink();
    const config = demoConfig({ epochs: 2, batchSize: 16, trainSize: 40, valSize: 40, testSize: 60, out, json: true, backend: 'wasm' });
    const { report, paths } = await runDemo(config, { stdout, stderr, argv: ['--tiny'] });

    expect(stderr.text).toBe(''); // --json: no bars
    expect(JSON.parse(stdout.text)).toEqual(JSON.parse(readFileSync(paths.report, 'utf8')));
    const file = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')) as DemoReport;
    expect(file.tool).toBe('kmcl demo');
    expect(file.argv).toEqual(['--tiny']);
    expect(file.config).toMatchObject({ epochs: 2, batchSize: 16, trainSize: 40, stepsPerEpoch: 3, mode: 'anisotropic' });
    expect(file.environment.tfjsBackend).toBe('wasm');
    if (backendInfo().native.loaded) {
      expect(file.environment.kmclPath).toBe('fused');
      expect(file.environment.fallbackReason).toBeNull();
    }
    expect(file.data.sizes).toEqual({ train: 40, val: 40, test: 60 });
    expect(file.model.parameters).toBeGreaterThan(1000);

    for (const name of ['kmcl', 'asl'] as const) {
      const r = file.runs[name];
      expect(r.name).toBe(name);
      expect(r.steps).toBe(6);
      expect(r.epochs.map((e) => e.epoch)).toEqual([1, 2]);
      for (const e of r.epochs) {
        for (const v of [e.loss, e.asl, e.reconstruction, e.contrastive, e.learningRate, e.trainMs, e.valMAP as number]) expect(Number.isFinite(v)).toBe(true);
        expect(e.valMAP).toBeGreaterThanOrEqual(0);
        expect(e.valMAP).toBeLessThanOrEqual(1);
      }
      expect(r.curve.length).toBe(6);
      const t = r.test;
      for (const v of [t.mAP, t.CP, t.CR, t.CF1, t.OP, t.OR, t.OF1, t.top3.CF1, t.top3.OF1]) {
        expect(Number.isFinite(v)).toBe(true);
        expect(v).toBeGreaterThanOrEqual(0);
        expect(v).toBeLessThanOrEqual(1);
      }
      expect(t.perClassAP).toHaveLength(10);
      expect(r.times.trainMs).toBeGreaterThan(0);
      expect(r.times.lossMs).toBeGreaterThan(0);
      expect(r.times.backboneMs).toBeCloseTo(r.times.trainMs - r.times.lossMs, 6);
    }
    // ASL-only: the auxiliary terms have weight 0, so the total equals the ASL term.
    expect(file.runs.asl.lossWeights).toEqual({ asl: 1, reconstruction: 0, contrastive: 0 });
    for (const e of file.runs.asl.epochs) expect(e.loss).toBeCloseTo(e.asl, 3);
    for (const e of file.runs.kmcl.epochs) expect(e.loss).toBeCloseTo(e.asl + e.reconstruction + e.contrastive, 2);
    expect(Object.values(file.difference).every(Number.isFinite)).toBe(true);
    expect(report.difference.mAP).toBeCloseTo(100 * (report.runs.kmcl.test.mAP - report.runs.asl.test.mAP), 9);

    expect(existsSync(paths.plot)).toBe(true);
    const svg = readFileSync(paths.plot, 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    for (const title of ['Training loss', 'ASL term', 'Validation mAP', 'KMCL', 'ASL-only', 'Validation mAP difference KMCL − ASL-only', 'Test split (EMA weights)']) {
      expect(svg).toContain(title);
    }
    // The test-metrics panel labels each metric with both values and their difference.
    const k = report.runs.kmcl.test;
    const a = report.runs.asl.test;
    const d = 100 * (k.mAP - a.mAP);
    expect(svg).toContain(`${(100 * k.mAP).toFixed(2)} vs ${(100 * a.mAP).toFixed(2)} (${d >= 0 ? '+' : '−'}${Math.abs(d).toFixed(2)})`);
    expect(file.data.imageSize).toBe(30); // the grid task
    expect(file.data.task).toMatch(/3×3 grid/);
    const summary = readFileSync(paths.summary, 'utf8');
    expect(summary).toContain('| mAP |');
    expect(summary).toContain('npm run demo -- --tiny');
  });

  it('prints tables (not JSON) without --json, and the same seed gives the same numbers', async () => {
    const config = demoConfig({ epochs: 1, batchSize: 16, trainSize: 32, valSize: 20, testSize: 40, out: join(tmp, 'human'), backend: 'wasm' });
    const a = sink();
    const errA = sink();
    const first = await runDemo(config, { stdout: a, stderr: errA });
    expect(a.text).toMatch(/kmcl loss: /);
    expect(a.text).toMatch(/\| mAP \| \d+\.\d\d \| \d+\.\d\d \|/);
    expect(errA.text).toMatch(/^KMCL {5}epoch 1\/1 {2}loss/m); // not a TTY: one line per epoch
    expect(errA.text).toMatch(/^ASL-only epoch 1\/1 {2}loss/m);
    const second = await runDemo(config, { stdout: sink(), stderr: sink(), progress: 'off' });
    expect(second.report.runs.kmcl.test).toEqual(first.report.runs.kmcl.test);
    expect(second.report.runs.asl.epochs.map((e) => e.loss)).toEqual(first.report.runs.asl.epochs.map((e) => e.loss));
    await expect(runDemo({ ...config, epochs: 0 })).rejects.toThrow(/config\.epochs must be an integer ≥ 1/);
  });

  it('--task easy runs the 2×2 composites (28×28)', async () => {
    const config = demoConfig({ task: 'easy', epochs: 1, batchSize: 16, trainSize: 32, valSize: 20, testSize: 40, out: join(tmp, 'easy'), json: true });
    const { report } = await runDemo(config, { stdout: sink(), stderr: sink() });
    expect(report.data.imageSize).toBe(28);
    expect(report.data.task).toMatch(/2×2 composites/);
    expect(Number.isFinite(report.runs.asl.test.mAP)).toBe(true);
  });

  it('--data-dir: draws the cells from an IDX folder (here a synthetic Fashion-MNIST-named one)', async () => {
    const dir = join(tmp, 'fashion-mnist');
    mkdirSync(dir, { recursive: true });
    const idx = (dims: number[], data: Uint8Array) => {
      const header = Buffer.alloc(4 + 4 * dims.length);
      header.set([0, 0, 8, dims.length]);
      dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
      return Buffer.concat([header, Buffer.from(data)]);
    };
    for (const [prefix, n] of [['train', 300], ['t10k', 100]] as const) {
      const images = Uint8Array.from({ length: n * 784 }, (_, i) => (i * 37 + (i >> 5)) % 256);
      const labels = Uint8Array.from({ length: n }, (_, i) => i % 10);
      writeFileSync(join(dir, `${prefix}-images-idx3-ubyte`), idx([n, 28, 28], images));
      writeFileSync(join(dir, `${prefix}-labels-idx1-ubyte`), idx([n], labels));
    }
    const { config } = parseDemoArgs(['--data-dir', dir, '--epochs', '1', '--batch-size', '16', '--train-size', '32', '--val-size', '20', '--test-size', '40', '--out', join(tmp, 'idx'), '--json']);
    const { report } = await runDemo(config, { stdout: sink(), stderr: sink() });
    expect(report.data.source).toBe(`IDX folder ${dir}`);
    expect(report.data.classNames[0]).toBe('T-shirt/top');
    expect(Number.isFinite(report.runs.kmcl.test.mAP)).toBe(true);
  });
});
