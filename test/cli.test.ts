// Issue 9, item 13: the CLI reads stdin, refuses non-numbers, inconsistent shapes and values
// float32 cannot hold (naming the original value), streams large outputs, prints its version.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { kmclLossRaw } from '../src/index.js';
import { FIXTURES_DIR, randomProblem } from './helpers.js';

const tsx = createRequire(import.meta.url).resolve('tsx');
const cli = (args: string[], input?: string) =>
  spawnSync(process.execPath, ['--import', tsx, 'src/cli.ts', ...args], { encoding: 'utf8', input, maxBuffer: 1 << 30 });
const fixtureFile = join(FIXTURES_DIR, 'isotropic-bc.json');
const fixture = JSON.parse(readFileSync(fixtureFile, 'utf8'));
const dir = mkdtempSync(join(tmpdir(), 'kmcl-cli-'));

function withInput(name: string, j: number, value: unknown): string {
  const f = structuredClone(fixture);
  f.inputs[name][j] = value;
  return JSON.stringify(f);
}

describe('kmcl CLI', () => {
  it('--input - reads the problem from stdin, with the same output as the file', () => {
    const a = cli(['loss', '--input', fixtureFile, '--device', 'cpu']);
    const b = cli(['loss', '--input', '-', '--device', 'cpu'], readFileSync(fixtureFile, 'utf8'));
    expect(b.status, b.stderr).toBe(0);
    expect(b.stdout).toBe(a.stdout);
  });

  it('elements must be numbers: null, true, "0.5" and "abc" are refused by position', () => {
    for (const [value, shown] of [[null, 'null'], [true, 'true'], ['0.5', '"0.5"'], ['abc', '"abc"']] as const) {
      const r = cli(['loss', '--input', '-'], withInput('features', 2, value));
      expect(r.status).toBe(1);
      expect(r.stderr.trim()).toBe(`kmcl: --input - (stdin): inputs.features[2] must be a number, got ${shown}`);
    }
  });

  it('a value float32 turns into 0 or Infinity is refused naming the original value', () => {
    const small = cli(['loss', '--input', '-'], withInput('variance', 1, 1e-50));
    expect(small.stderr.trim()).toBe('kmcl: --input - (stdin): inputs.variance[1] = 1e-50 is too small for float32 (it would become 0)');
    const large = cli(['loss', '--input', '-'], withInput('mu', 0, -1e39));
    expect(large.stderr.trim()).toBe('kmcl: --input - (stdin): inputs.mu[0] = -1e+39 is too large for float32 (it would become -Infinity)');
  });

  it('shapes must agree with each other; messages keep the file name apart from the JSON path', () => {
    const f = structuredClone(fixture);
    f.shapes.mu = [f.shapes.B + 1, f.shapes.K, f.shapes.mu[2]];
    const file = join(dir, 'bad-shapes.json');
    writeFileSync(file, JSON.stringify(f));
    const r = cli(['loss', '--input', file]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^kmcl: --input ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: shapes\\.mu must be \\[B, K, 1 \\| M\\]`));
    const g = structuredClone(fixture);
    delete g.inputs;
    writeFileSync(file, JSON.stringify(g));
    expect(cli(['loss', '--input', file]).stderr.trim()).toBe(`kmcl: --input ${file}: inputs is missing`);
  });

  it('streams a large output in chunks, equal to the raw API', () => {
    const p = randomProblem({ seed: 51, B: 64, K: 8, M: 300, D: 300, Kv: 8, Dv: 300, positives: 2 });
    const file = join(dir, 'large.json');
    writeFileSync(
      file,
      JSON.stringify({
        shapes: { B: p.batch, K: p.classes, M: p.dim, mu: [p.batch, p.classes, p.muDim], variance: [p.batch, ...p.varianceShape] },
        options: {},
        inputs: Object.fromEntries((['features', 'logits', 'labels', 'mu', 'variance'] as const).map((k) => [k, Array.from(p[k])])),
      }),
    );
    const r = cli(['loss', '--input', file, '--device', 'cpu']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    const expected = kmclLossRaw(p, { device: 'cpu' });
    expect(out.loss).toBe(expected.loss);
    expect(out.gradients.mu.length).toBe(64 * 8 * 300); // more than two 65,536-element chunks
    expect(out.gradients.mu).toEqual(Array.from(expected.gradients!.mu));
    expect(out.gradients.variance).toEqual(Array.from(expected.gradients!.variance));
  });

  it('--version prints the package version', () => {
    const r = cli(['--version']);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(readFileSync('package.json', 'utf8')).version);
  });
});
