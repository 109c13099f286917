#!/usr/bin/env node
/**
 * kmcl command line:
 *   kmcl loss --input FILE [--device cpu|cuda|auto] [--no-gradients]
 *   kmcl info
 * Errors go to stderr with exit code 1 (2 for usage errors).
 */
import { readFileSync } from 'node:fs';
import { problemFromFile } from './fixture.js';
import { buildCommand } from './build.js';
import { backendInfo } from './native.js';
import { kmclLossRaw, type Device } from './raw.js';

const USAGE = `usage:
  kmcl loss --input FILE [--device cpu|cuda|auto] [--no-gradients]
      FILE: one problem as JSON in the fixture format (shapes, options, inputs);
      prints { loss, asl, reconstruction, contrastive, gradients } as JSON
  kmcl info
      prints which backends this build has and which device is usable`;

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
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${flag} needs a value`);
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

function main(argv: string[]): number {
  const [command, ...rest] = argv;
  try {
    if (command === 'build') return buildCommand(rest);
    if (command === 'info') {
      if (rest.length) throw new UsageError(`kmcl info takes no arguments, got "${rest.join(' ')}"`);
      process.stdout.write(JSON.stringify(backendInfo(), null, 2) + '\n');
      return 0;
    }
    if (command === 'loss') {
      const args = parseLossArgs(rest);
      let text: string;
      try {
        text = readFileSync(args.input, 'utf8');
      } catch (e) {
        throw new Error(`cannot read --input ${args.input}: ${(e as Error).message}`);
      }
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch (e) {
        throw new Error(`--input ${args.input} is not valid JSON: ${(e as Error).message}`);
      }
      const { problem, options } = problemFromFile(json, args.input);
      const r = kmclLossRaw(problem, { ...options, gradients: args.gradients, device: args.device });
      const out: Record<string, unknown> = { loss: r.loss, asl: r.asl, reconstruction: r.reconstruction, contrastive: r.contrastive };
      if (r.gradients) {
        out.gradients = Object.fromEntries(Object.entries(r.gradients).map(([k, v]) => [k, Array.from(v as Float32Array)]));
      }
      process.stdout.write(JSON.stringify(out) + '\n');
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

process.exitCode = main(process.argv.slice(2));
