#!/usr/bin/env node
// `npm run pack:all`: writes into pack/ the main tarball (kmcl-VERSION.tgz) and the tarball of every
// platform package this machine can build (only its own platform: kmcl-linux-x64-gnu-VERSION.tgz
// here). Other platforms are built by .github/workflows/platform-packages.yml.
//   --no-build    use the existing dist/ and build/Release/kmcl.node (fail when missing) instead of
//                 running the incremental native build and the TypeScript builds first
//   --out DIR     write the tarballs to DIR instead of pack/
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const noBuild = args.includes('--no-build');
const outIndex = args.indexOf('--out');
const out = resolve(outIndex >= 0 ? args[outIndex + 1] : join(root, 'pack'));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

const main = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
// Every platform package has kmcl's exact version, and kmcl pins each one exactly.
const problems = [];
const platforms = readdirSync(join(root, 'packages')).filter((d) => existsSync(join(root, 'packages', d, 'package.json')));
for (const dir of platforms) {
  const pkg = JSON.parse(readFileSync(join(root, 'packages', dir, 'package.json'), 'utf8'));
  if (pkg.name !== `@kmcl/${dir}`) problems.push(`packages/${dir}: name is ${pkg.name}, expected @kmcl/${dir}`);
  if (pkg.version !== main.version) problems.push(`packages/${dir}: version ${pkg.version}, kmcl is ${main.version}`);
  if (main.optionalDependencies?.[pkg.name] !== main.version) {
    problems.push(`package.json optionalDependencies["${pkg.name}"] is ${main.optionalDependencies?.[pkg.name]}, expected exactly ${main.version}`);
  }
  if (pkg.scripts) problems.push(`packages/${dir} has scripts; platform packages must have none`);
}
if (problems.length) fail(problems.join('\n'));

const tag = hostTag();
if (!platforms.includes(tag)) fail(`this machine's platform ${tag} has no folder packages/${tag}`);
const run = (cmd, argv, cwd = root) => {
  const r = spawnSync(cmd, argv, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', shell: process.platform === 'win32' });
  if (r.status !== 0) fail(`${cmd} ${argv.join(' ')} exited with ${r.status ?? r.error?.message}`);
  return r.stdout;
};
if (!noBuild) {
  process.stdout.write(run(process.execPath, [join(root, 'scripts', 'build-native.mjs')]));
  run(npm, ['run', 'build:ts']);
}
const addon = join(root, 'build', 'Release', 'kmcl.node');
for (const need of [addon, join(root, 'dist', 'index.js'), join(root, 'dist', 'cjs', 'index.js'), join(root, 'dist', 'cjs', 'package.json')]) {
  if (!existsSync(need)) fail(`${need} is missing: run \`npm run build\` first`);
}
copyFileSync(addon, join(root, 'packages', tag, 'kmcl.node'));
mkdirSync(out, { recursive: true });
for (const dir of [root, join(root, 'packages', tag)]) {
  const [info] = JSON.parse(run(npm, ['pack', '--json', '--pack-destination', out], dir));
  console.log(`kmcl: packed ${join(out, info.filename)} (${info.entryCount} files, ${(info.size / 2 ** 20).toFixed(1)} MiB)`);
}

/** This machine's platform package folder name, as src/native.ts computes it at run time. */
function hostTag() {
  if (process.platform !== 'linux') return `${process.platform}-${process.arch}`;
  const header = process.report?.getReport().header;
  return `linux-${process.arch}-${header?.glibcVersionRuntime ? 'gnu' : 'musl'}`;
}

function fail(message) {
  console.error(`pack:all: ${message}`);
  process.exit(1);
}
