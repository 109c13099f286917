import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { backendInfo, kmclLossRaw, kmclLossRawAsync } from '../src/index.js';
import type { KmclProblem, KmclRawOptions } from '../src/raw.js';
import { randomProblem } from './helpers.js';

const base = () => randomProblem({ seed: 3, B: 4, K: 3, M: 2, D: 2, Kv: 3, Dv: 2 });

type Case = [string, (p: KmclProblem) => unknown, KmclRawOptions | undefined, RegExp];

const cases: Case[] = [
  ['features not a Float32Array', (p) => ((p as { features: unknown }).features = Array.from(p.features)), undefined, /problem\.features must be a Float32Array of shape \[4, 2\], got an array/],
  ['features a Float64Array', (p) => ((p as { features: unknown }).features = Float64Array.from(p.features)), undefined, /problem\.features must be a Float32Array.*got a Float64Array/],
  ['logits of the wrong length', (p) => (p.logits = p.logits.subarray(1)), undefined, /problem\.logits must have length 12 \(shape \[4, 3\]\), got 11/],
  ['mu of the wrong length', (p) => (p.mu = new Float32Array(5)), undefined, /problem\.mu must have length 24/],
  ['variance of the wrong length', (p) => (p.variance = new Float32Array(5)), undefined, /problem\.variance must have length 24/],
  ['batch not an integer', (p) => (p.batch = 2.5), undefined, /problem\.batch must be a positive integer, got 2\.5/],
  ['classes zero', (p) => (p.classes = 0), undefined, /problem\.classes must be a positive integer, got 0/],
  ['dim negative', (p) => (p.dim = -1), undefined, /problem\.dim must be a positive integer, got -1/],
  ['muDim outside {1, dim}', (p) => (p.muDim = 3), undefined, /problem\.muDim must be 1 \(isotropic\) or dim = 2 \(anisotropic\), got 3/],
  ['varianceShape[0] outside {1, classes}', (p) => (p.varianceShape = [2, 2]), undefined, /problem\.varianceShape\[0\] must be 1 or classes = 3, got 2/],
  ['varianceShape[1] outside {1, muDim}', (p) => (p.varianceShape = [3, 3]), undefined, /problem\.varianceShape\[1\] must be 1 or muDim = 2, got 3/],
  ['varianceShape not a pair', (p) => ((p as { varianceShape: unknown }).varianceShape = [3]), undefined, /problem\.varianceShape must be \[Kv, Dv\]/],
  ['labels not 0 or 1', (p) => (p.labels[5] = 0.5), undefined, /problem\.labels must be exactly 0 or 1; element 5 is 0\.5/],
  ['NaN in features', (p) => (p.features[1] = NaN), undefined, /problem\.features must be finite; element 1 is NaN/],
  ['Inf in mu', (p) => (p.mu[3] = Infinity), undefined, /problem\.mu must be finite; element 3 is Infinity/],
  ['-Inf in logits', (p) => (p.logits[0] = -Infinity), undefined, /problem\.logits must be finite; element 0 is -Infinity/],
  ['NaN in labels', (p) => (p.labels[2] = NaN), undefined, /problem\.labels must be finite; element 2 is NaN/],
  ['variance zero', (p) => (p.variance[4] = 0), undefined, /problem\.variance must be > 0; element 4 is 0/],
  ['variance negative', (p) => (p.variance[0] = -1), undefined, /problem\.variance must be > 0; element 0 is -1/],
  ['temperature zero', () => 0, { temperature: 0 }, /options\.temperature must be > 0, got 0/],
  ['temperature NaN', () => 0, { temperature: NaN }, /options\.temperature must be a finite number, got NaN/],
  ['gammaNeg negative', () => 0, { gammaNeg: -1 }, /options\.gammaNeg must be >= 0, got -1/],
  ['gammaPos negative', () => 0, { gammaPos: -0.5 }, /options\.gammaPos must be >= 0, got -0\.5/],
  ['clip 1', () => 0, { clip: 1 }, /options\.clip must be in \[0, 1\), got 1/],
  ['clip negative', () => 0, { clip: -0.1 }, /options\.clip must be in \[0, 1\), got -0\.1/],
  ['eps zero', () => 0, { eps: 0 }, /options\.eps must be > 0, got 0/],
  ['logEps negative', () => 0, { logEps: -1e-7 }, /options\.logEps must be > 0, got -1e-7/],
  ['distanceScale zero', () => 0, { distanceScale: 0 }, /options\.distanceScale must be > 0, got 0/],
  ['negative weight', () => 0, { weights: { contrastive: -1 } }, /options\.weights\.contrastive must be >= 0, got -1/],
  ['unknown weight name', () => 0, { weights: { asl: 1, recon: 1 } as never }, /options\.weights\.recon is not a loss term/],
  ['unknown option (typo)', () => 0, { temprature: 0.1 } as never, /options\.temprature is not a kmcl option/],
  ['case typo suggests the option', () => 0, { gammaneg: 2 } as never, /options\.gammaneg is not a kmcl option \(did you mean "gammaNeg"\?\)/],
  ['detachFocalWeight not a boolean', () => 0, { detachFocalWeight: 1 } as never, /options\.detachFocalWeight must be a boolean, got 1/],
  ['gradients not a boolean', () => 0, { gradients: 'yes' } as never, /options\.gradients must be a boolean, got "yes"/],
  ['device unknown', () => 0, { device: 'gpu' } as never, /options\.device must be 'auto', 'cpu' or 'cuda', got "gpu"/],
];

describe('validation: a clear Error naming the argument, before any work', () => {
  for (const [name, mutate, options, message] of cases) {
    it(name, async () => {
      const p = base();
      mutate(p);
      expect(() => kmclLossRaw(p, options)).toThrow(message);
      await expect(kmclLossRawAsync(p, options)).rejects.toThrow(message);
    });
  }
  it('device cuda when CUDA is not usable says why', () => {
    const info = backendInfo();
    if (info.cuda.usable) {
      expect(kmclLossRaw(base(), { device: 'cuda' }).loss).toBeGreaterThan(0);
    } else {
      expect(() => kmclLossRaw(base(), { device: 'cuda' })).toThrow(new RegExp(`options\\.device is 'cuda' but CUDA is not usable: .+`));
    }
  });
  it('problem not an object', () => {
    expect(() => kmclLossRaw(null as never)).toThrow(/problem must be an object, got null/);
  });
  it('the inputs are never written', () => {
    const p = base();
    const copy = { features: p.features.slice(), logits: p.logits.slice(), mu: p.mu.slice(), variance: p.variance.slice(), labels: p.labels.slice() };
    kmclLossRaw(p);
    for (const k of Object.keys(copy) as (keyof typeof copy)[]) expect(p[k]).toEqual(copy[k]);
  });
});

describe('native boundary', () => {
  it('a C++ exception from the addon becomes a JS Error (raw addon call with a bad shape)', async () => {
    const { nativeAddon } = await import('../src/native.js');
    const addon = nativeAddon();
    const p = base();
    expect(() => addon.compute({ ...p, varianceShape: [2, 2] } as never, {}, true, 'cpu')).toThrow(/varianceShape\[0\] must be 1 or classes/);
    expect(() => addon.compute({ ...p, mu: new Float32Array(3) } as never, {}, true, 'cpu')).toThrow(/problem\.mu must have length 24, got 3/);
    expect(() => addon.compute({ ...p } as never, { temperature: -1 }, true, 'cpu')).toThrow(/temperature must be > 0/);
    expect(addon.compute(p as never, {}, true, 'cpu').loss).toBeGreaterThan(0);
  });
});

describe('CLI errors', () => {
  const tsx = createRequire(import.meta.url).resolve('tsx');
  const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', tsx, 'src/cli.ts', ...args], { encoding: 'utf8' });
  it('usage errors exit 2', () => {
    for (const args of [[], ['loss'], ['frobnicate'], ['loss', '--input', 'x', '--device', 'gpu'], ['loss', '--bogus']]) {
      const r = cli(...args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/usage:/);
      expect(r.stdout).toBe('');
    }
  });
  it('runtime errors exit 1 with the message on stderr', () => {
    const r = cli('loss', '--input', 'test/fixtures/does-not-exist.json');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/cannot read --input/);
    const bad = cli('loss', '--input', 'package.json');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/shapes is missing/);
  });
  it('info prints backendInfo as JSON', () => {
    const r = cli('info');
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.cpu.compiled).toBe(true);
    expect(typeof info.cuda.usable).toBe('boolean');
  });
  it('--no-gradients prints the terms only', () => {
    const r = cli('loss', '--input', 'test/fixtures/isotropic-bc.json', '--no-gradients');
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.gradients).toBeUndefined();
    expect(out.loss).toBeGreaterThan(0);
  });
});
