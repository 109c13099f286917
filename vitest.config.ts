import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: {
    // Tests import the package by its public names, resolved to the sources.
    alias: {
      'kmcl/tfjs': fileURLToPath(new URL('./src/tfjs/index.ts', import.meta.url)),
      kmcl: fileURLToPath(new URL('./src/index.ts', import.meta.url)),
    },
  },
  test: {
    include: ['test/**/*.test.ts'],
    reporters: ['default', './test/summary-reporter.ts'],
    // Native addons and tfjs keep process-wide state; separate processes keep tests honest.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
