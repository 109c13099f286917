import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native addons and tfjs keep process-wide state; separate processes keep tests honest.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
