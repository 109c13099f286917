import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * Runs the native test executable (native/tests → kmcl_native_test): the CUDA path against the CPU
 * float64 path on every fixture and on random problems (skipped without a GPU), the CUDA sources
 * under the CPU emulation, the CPU float32 path against float64, and float64 against the fixtures.
 * `npm run build:native` (cmake-js) builds it into build/; a developer build in build-cuda-dev/ is
 * used when build/ has none.
 */
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const candidates = ['build/kmcl_native_test', 'build/Release/kmcl_native_test', 'build-cuda-dev/kmcl_native_test'].map((p) =>
  join(root, p),
);
const executable = candidates.find((p) => existsSync(p));
const fixtureCount = readdirSync(join(root, 'test', 'fixtures')).filter((f) => f.endsWith('.json')).length;

describe('kmcl_native_test (CUDA vs CPU float64, CPU float32 vs float64, fixtures)', () => {
  it('passes with 0 failed cases', () => {
    if (!executable) {
      throw new Error(
        `kmcl_native_test was not found (looked for ${candidates.join(', ')}). Build it with ` +
          '`npm run build:native` (cmake-js builds the native tools into build/), or directly: ' +
          '`cmake -S . -B build-cuda-dev -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build-cuda-dev --target kmcl_native_test`.',
      );
    }
    const run = spawnSync(executable, [], { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20, timeout: 900_000 });
    expect(run.error, `could not run ${executable}: ${run.error?.message}`).toBeUndefined();
    const lines = `${run.stdout ?? ''}`.trim().split('\n');
    const tail = [...lines.slice(-15), `${run.stderr ?? ''}`.trim()].join('\n');
    const summary = /^(\d+) passed, (\d+) failed, (\d+) skipped$/.exec(lines[lines.length - 1] ?? '');
    expect(summary, `no "N passed, N failed, N skipped" line; the output ends with:\n${tail}`).not.toBeNull();
    const failures = lines.filter((l) => l.startsWith('FAIL ')).join('\n');
    expect(Number(summary![2]), `failed cases:\n${failures}`).toBe(0);
    expect(run.status, `exit code ${run.status}; the output ends with:\n${tail}`).toBe(0);
    // The CPU cases run everywhere: float64 and float32 against every fixture at least.
    const cpuPassed = lines.filter((l) => /^ok {3}cpu(64|32)\//.test(l)).length;
    expect(cpuPassed, `CPU cases passed: ${cpuPassed}`).toBeGreaterThanOrEqual(2 * fixtureCount);
    // The CUDA emulator's own checks caught each planted fault (emu/selftest/*: races, guard zones,
    // shuffle divergence, schedules, device math) wherever the emulation is built.
    if (/^CUDA emulation .*: on/m.test(run.stdout)) {
      const checker = /memory checker \(races, guard zones\) on/.test(run.stdout);
      const selfTests = lines.filter((l) => /^ok {3}emu\/selftest\//.test(l)).length;
      expect(selfTests, `emulator self-tests passed: ${selfTests}`).toBe(checker ? 10 : 3);
    }
  }, 900_000);
});
