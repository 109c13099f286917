/**
 * Prints one plain closing line, `N passed, N failed, N skipped`, after vitest's own summary, so
 * that CI logs (and people) can read the outcome without colour codes. A file or describe block
 * that failed without a failed test of its own (an error while importing the file, a failing
 * beforeAll/afterAll, whose tests vitest then reports as skipped) counts as one failure.
 */
import type { Reporter, TestModule } from 'vitest/node';

export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const mod of testModules) {
      let failedHere = 0;
      for (const test of mod.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failedHere++;
        else skipped++;
      }
      for (const suite of mod.children.allSuites()) {
        if (suite.state() !== 'failed') continue;
        if (![...suite.children.allTests()].some((t) => t.result().state === 'failed')) failedHere++;
      }
      if (mod.state() === 'failed' && failedHere === 0) failedHere = 1;
      failed += failedHere;
    }
    process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
