import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

/**
 * The demo and the study are applications of the library, not part of it: they live in apps/
 * (the shared seeded PRNG in dev/), outside src/, outside dist/ and outside the npm tarball.
 */
const root = fileURLToPath(new URL('..', import.meta.url));

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

describe('layout: the apps are not part of the package', () => {
  it('no library source imports the apps, dev/ or the dev-only mnist package', () => {
    const sources = filesUnder(join(root, 'src')).filter((f) => f.endsWith('.ts'));
    expect(sources.length).toBeGreaterThan(5);
    for (const f of sources) {
      const text = readFileSync(f, 'utf8');
      const imports = [...text.matchAll(/from\s+'([^']+)'/g)].map((m) => m[1]);
      for (const spec of imports) {
        expect(spec, `${relative(root, f)} imports ${spec}`).not.toMatch(/(^|\/)(apps|dev|demo)\/|^mnist$|seeded-random/);
      }
    }
    const build = JSON.parse(readFileSync(join(root, 'tsconfig.build.json'), 'utf8')) as { include: string[] };
    expect(build.include).toEqual(['src']);
  });

  it('npm pack leaves out apps/, dev/ and any demo or study file', () => {
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    const [pack] = JSON.parse(r.stdout) as { files: { path: string }[] }[];
    const paths = pack.files.map((f) => f.path);
    expect(paths).toContain('package.json');
    for (const p of paths) expect(p).not.toMatch(/^(apps|dev|study-out|demo-out)\/|demo|study|seeded-random/);
  });
});
