import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';

describe('README', () => {
  it('shows the training example exactly as test/readme-example.ts, which runs', async () => {
    const example = readFileSync(new URL('./readme-example.ts', import.meta.url), 'utf8').trim();
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    expect(readme).toContain('```ts\n' + example + '\n```');
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    await import('./readme-example.js');
    const lines = log.mock.calls.map((c) => c.join(' '));
    log.mockRestore();
    expect(lines[0]).toMatch(/^initial loss \d/);
    const mAP = Number(lines[1].match(/train mAP ([\d.]+)/)![1]);
    expect(mAP).toBeGreaterThan(0.6);
  });
  it('shows the framework-free example exactly as test/readme-raw-example.ts, which runs', async () => {
    const example = readFileSync(new URL('./readme-raw-example.ts', import.meta.url), 'utf8').trim();
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    expect(readme).toContain('```ts\n' + example + '\n```');
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    await import('./readme-raw-example.js');
    const lines = log.mock.calls.map((c) => c.map(String));
    log.mockRestore();
    expect(lines[0].map(Number).every(Number.isFinite)).toBe(true);
    expect(lines[1]).toEqual(['24']);
    expect(lines[2][0]).toBe('true');
    expect(lines[3]).toEqual(['true', 'true']);
  });
});
