#!/usr/bin/env node
// The CommonJS build of kmcl (dist/cjs), for `require('kmcl')` and `require('kmcl/tfjs')`:
// tsc with tsconfig.cjs.json, a package.json marking the folder as CommonJS, and the one
// `import.meta.url` of src/native.ts replaced by the file URL of `__filename`. The CLI (src/cli.ts,
// an ES module with top-level await) is left out: its bin is dist/cli.js.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'cjs');
const tsc = createRequire(join(root, 'package.json')).resolve('typescript/bin/tsc');
const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.cjs.json')], { stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
writeFileSync(join(out, 'package.json'), JSON.stringify({ type: 'commonjs' }, null, 2) + '\n');
const left = [];
for (const entry of readdirSync(out, { recursive: true })) {
  const file = join(out, String(entry));
  if (!file.endsWith('.js')) continue;
  const text = readFileSync(file, 'utf8');
  const replaced = text.replaceAll('import.meta.url', "require('node:url').pathToFileURL(__filename).href");
  if (replaced !== text) writeFileSync(file, replaced);
  if (replaced.includes('import.meta')) left.push(file);
}
if (left.length) {
  console.error(`build-cjs: import.meta is left in ${left.join(', ')}; CommonJS cannot run it`);
  process.exit(1);
}
