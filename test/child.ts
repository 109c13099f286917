/** Runs a script in a fresh Node process (tsx loaded, cwd = the repository root), for tests whose failure mode is a crash. */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';

const tsx = createRequire(import.meta.url).resolve('tsx');

export interface ChildResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Milliseconds from spawn to exit. */
  ms: number;
  /** The last stdout line parsed as JSON (undefined when it is not JSON). */
  json?: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** Spawns `node --expose-gc --import tsx -e script` and resolves with its exit status and output. */
export function runChild(script: string, options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ChildResult> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--expose-gc', '--import', tsx, '--input-type=module', '-e', script], {
      env: { ...process.env, ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      const last = stdout.trim().split('\n').pop() ?? '';
      let json: unknown;
      try {
        json = JSON.parse(last);
      } catch {
        json = undefined;
      }
      resolve({ status, signal, stdout, stderr, ms: performance.now() - t0, json });
    });
  });
}

/** A readable summary of a child's end for assertion messages. */
export function describeExit(r: ChildResult): string {
  return `status ${r.status}, signal ${r.signal}\nstderr: ${r.stderr.slice(-2000)}\nstdout: ${r.stdout.slice(-1000)}`;
}
