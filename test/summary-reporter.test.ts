// The plain closing line of test/summary-reporter.ts counts a file or describe block that failed
// without a failed test of its own (an import error, a failing beforeAll) as a failure: a child
// vitest run over two such files and one passing test must say so, and exit non-zero.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));

it('counts a failing beforeAll and a file that fails to import as failures', () => {
  // Inside the repository, so that the files resolve 'vitest'; named *.check.ts, which the main
  // run does not include.
  const dir = mkdtempSync(join(root, 'test', '.reporter-check-'));
  try {
    writeFileSync(
      join(dir, 'hook.check.ts'),
      `import { beforeAll, describe, expect, it } from 'vitest';
describe('a failing beforeAll', () => {
  beforeAll(() => { throw new Error('hook fails'); });
  it('a', () => expect(1).toBe(1));
  it('b', () => expect(1).toBe(1));
});
it('passes', () => expect(1).toBe(1));
`,
    );
    writeFileSync(join(dir, 'import.check.ts'), `throw new Error('import fails');\n`);
    writeFileSync(
      join(dir, 'vitest.config.mjs'),
      `export default { test: { include: ['*.check.ts'], reporters: [${JSON.stringify(join(root, 'test', 'summary-reporter.ts'))}] } };\n`,
    );
    const r = spawnSync(process.execPath, [join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', '--root', dir, '--config', join(dir, 'vitest.config.mjs')], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(out).toContain('1 passed, 2 failed, 2 skipped');
    expect(r.status).not.toBe(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
