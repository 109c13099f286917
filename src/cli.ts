#!/usr/bin/env node
/**
 * kmcl command line:
 *   kmcl loss --input FILE|- [--device cpu|cuda|auto] [--no-gradients]
 *   kmcl info
 *   kmcl --version
 * Errors go to stderr with exit code 1 (2 for usage errors).
 */
import { readFileSync } from 'node:fs';
import { problemFromFile } from './fixture.js';
import { describe } from './options.js';
import { buildCommand } from './build.js';
import { backendInfo } from './native.js';
import { kmclLossRaw, type Device } from './raw.js';

const USAGE = `usage:
  kmcl loss --input FILE|- [--device cpu|cuda|auto] [--no-gradients]
      FILE: one problem as JSON in the fixture format (shapes, options, inputs); - reads stdin;
      prints { loss, asl, reconstruction, contrastive, gradients } as JSON
  kmcl info
      prints which backends this build has and which device is usable
  kmcl build [--cpu-only] [--jobs N] [--cuda-architectures LIST] [--verbose]
      builds the native addon from source into build/Release/kmcl.node (incremental)
  kmcl --version
      prints the version of kmcl`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

const INPUT_NAMES = ['features', 'logits', 'labels', 'mu', 'variance'] as const;

/**
 * Checks what JSON.parse gave before any conversion: every element a number (no null, true or
 * "0.5"), each value representable in float32 (a nonzero value that float32 turns into 0, or a
 * finite one it turns into Infinity, is refused naming the original value), and the shapes
 * agreeing with each other. `where` names the input for messages.
 */
function checkProblemJson(json: unknown, where: string): void {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new Error(`${where}: must be a JSON object, got ${describe(json)}`);
  const f = json as { shapes?: Record<string, unknown>; inputs?: Record<string, unknown> };
  const s = f.shapes;
  if (!s || typeof s !== 'object') throw new Error(`${where}: shapes is missing`);
  const dims = (key: string, n: number): number[] => {
    const v = s[key];
    if (n === 1) {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new Error(`${where}: shapes.${key} must be a positive integer, got ${describe(v)}`);
      return [v];
    }
    if (!Array.isArray(v) || v.length !== n || !v.every((d) => typeof d === 'number' && Number.isInteger(d) && d >= 1)) {
      throw new Error(`${where}: shapes.${key} must be a shape of ${n} positive integers, got ${JSON.stringify(v)}`);
    }
    return v as number[];
  };
  const [B] = dims('B', 1);
  const [K] = dims('K', 1);
  const [M] = dims('M', 1);
  const mu = dims('mu', 3);
  const variance = dims('variance', 3);
  if (mu[0] !== B || mu[1] !== K || (mu[2] !== 1 && mu[2] !== M)) {
    throw new Error(`${where}: shapes.mu must be [B, K, 1 | M] = [${B}, ${K}, 1 | ${M}], got ${JSON.stringify(mu)}`);
  }
  if (variance[0] !== B || (variance[1] !== 1 && variance[1] !== K) || (variance[2] !== 1 && variance[2] !== mu[2])) {
    throw new Error(`${where}: shapes.variance must be [B, 1 | K, 1 | D] = [${B}, 1 | ${K}, 1 | ${mu[2]}], got ${JSON.stringify(variance)}`);
  }
  for (const key of ['features', 'logits', 'labels'] as const) {
    if (s[key] === undefined) continue;
    const want = key === 'features' ? [B, M] : [B, K];
    if (JSON.stringify(s[key]) !== JSON.stringify(want)) throw new Error(`${where}: shapes.${key} must be [${want.join(', ')}] (from B, K, M), got ${JSON.stringify(s[key])}`);
  }
  const inputs = f.inputs;
  if (!inputs || typeof inputs !== 'object') throw new Error(`${where}: inputs is missing`);
  const lengths = { features: B * M, logits: B * K, labels: B * K, mu: B * K * mu[2], variance: B * variance[1] * variance[2] };
  for (const name of INPUT_NAMES) {
    const a = inputs[name];
    if (!Array.isArray(a)) throw new Error(`${where}: inputs.${name} must be an array of numbers, got ${describe(a)}`);
    if (a.length !== lengths[name]) throw new Error(`${where}: inputs.${name} must have ${lengths[name]} elements (from shapes), got ${a.length}`);
    for (let j = 0; j < a.length; j++) {
      const x: unknown = a[j];
      if (typeof x !== 'number') throw new Error(`${where}: inputs.${name}[${j}] must be a number, got ${x === null ? 'null' : typeof x === 'string' ? JSON.stringify(x) : String(x)}`);
      const f32 = Math.fround(x);
      if (f32 === 0 && x !== 0) throw new Error(`${where}: inputs.${name}[${j}] = ${x} is too small for float32 (it would become 0)`);
      if (!Number.isFinite(f32)) throw new Error(`${where}: inputs.${name}[${j}] = ${x} is too large for float32 (it would become ${f32})`);
    }
  }
}

/** Reads all of stdin as UTF-8. */
async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Writes to stdout, waiting when the pipe is full. */
function write(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (process.stdout.write(text, (e) => (e ? reject(e) : undefined))) resolve();
    else process.stdout.once('drain', resolve);
  });
}

/**
 * Prints the result as one line of JSON, the gradient arrays in chunks: the output of a large
 * problem never has to fit in one string (V8 caps strings near 512 MiB).
 */
async function printResult(out: { loss: number; asl: number; reconstruction: number; contrastive: number }, gradients?: Record<string, Float32Array>): Promise<void> {
  const head = JSON.stringify(out);
  if (!gradients) return write(head + '\n');
  await write(head.slice(0, -1) + ',"gradients":{');
  const names = Object.keys(gradients);
  for (let n = 0; n < names.length; n++) {
    const a = gradients[names[n]];
    await write(`${n ? ',' : ''}${JSON.stringify(names[n])}:[`);
    const CHUNK = 1 << 16;
    for (let j = 0; j < a.length; j += CHUNK) {
      const part = Array.from(a.subarray(j, Math.min(a.length, j + CHUNK)), (x) => JSON.stringify(x)).join(',');
      await write((j ? ',' : '') + part);
    }
    await write(']');
  }
  await write('}}\n');
}

class UsageError extends Error {}

function parseLossArgs(args: string[]): { input: string; device: Device; gradients: boolean } {
  let input: string | undefined;
  let device: Device = 'auto';
  let gradients = true;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const value = (flag: string) => {
      const eq = a.indexOf('=');
      if (eq >= 0) return a.slice(eq + 1);
      const v = args[++i];
      if (v === undefined || (v.startsWith('-') && v !== '-')) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (a === '--input' || a.startsWith('--input=')) input = value('--input');
    else if (a === '--device' || a.startsWith('--device=')) {
      const d = value('--device');
      if (d !== 'cpu' && d !== 'cuda' && d !== 'auto') throw new UsageError(`--device must be cpu, cuda or auto, got "${d}"`);
      device = d;
    } else if (a === '--no-gradients') gradients = false;
    else throw new UsageError(`unknown argument "${a}"`);
  }
  if (!input) throw new UsageError('kmcl loss needs --input FILE');
  return { input, device, gradients };
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === '--version' || command === '-v' || command === 'version') {
      if (rest.length) throw new UsageError(`kmcl --version takes no arguments, got "${rest.join(' ')}"`);
      process.stdout.write(version() + '\n');
      return 0;
    }
    if (command === 'build') return buildCommand(rest);
    if (command === 'info') {
      if (rest.length) throw new UsageError(`kmcl info takes no arguments, got "${rest.join(' ')}"`);
      process.stdout.write(JSON.stringify(backendInfo(), null, 2) + '\n');
      return 0;
    }
    if (command === 'loss') {
      const args = parseLossArgs(rest);
      const where = args.input === '-' ? '--input - (stdin)' : `--input ${args.input}`;
      let text: string;
      try {
        text = args.input === '-' ? await readStdin() : readFileSync(args.input, 'utf8');
      } catch (e) {
        throw new Error(`cannot read ${where}: ${(e as Error).message}`);
      }
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch (e) {
        throw new Error(`${where} is not valid JSON: ${(e as Error).message}`);
      }
      text = '';
      checkProblemJson(json, where);
      let converted: ReturnType<typeof problemFromFile>;
      try {
        converted = problemFromFile(json, 'input');
      } catch (e) {
        throw new Error(`${where}: ${(e as Error).message}`);
      }
      json = undefined;
      const r = kmclLossRaw(converted.problem, { ...converted.options, gradients: args.gradients, device: args.device });
      await printResult(
        { loss: r.loss, asl: r.asl, reconstruction: r.reconstruction, contrastive: r.contrastive },
        r.gradients as unknown as Record<string, Float32Array> | undefined,
      );
      return 0;
    }
    if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
      (command === undefined ? process.stderr : process.stdout).write(USAGE + '\n');
      return command === undefined ? 2 : 0;
    }
    throw new UsageError(`unknown command "${command}"`);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`kmcl: ${e.message}\n${USAGE}\n`);
      return 2;
    }
    process.stderr.write(`kmcl: ${(e as Error).message}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
