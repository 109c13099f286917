/**
 * Pack and verify: the tarballs that `npm run pack:all` writes install into a fresh project with
 * `npm install --strict-allow-scripts` while no compiler (cmake, gcc/g++/c++/cc, nvcc) is on PATH,
 * and the README's examples run there through `import` and `require`.
 *
 * It reuses the build (dist/ and build/Release/kmcl.node from `npm run build`); it compiles
 * nothing. npm gets @tensorflow/tfjs (kmcl's peer dependency) from its cache (--prefer-offline).
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { platformPackageName } from '../src/native.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
const tscPath = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const run = promisify(execFile);
const isWindows = process.platform === 'win32';
/** This machine's platform package, e.g. @kmcl/linux-x64-gnu, and its tarball's name part. */
const platformName = platformPackageName();
const platformFile = platformName.replace('@', '').replace('/', '-');

/** The compilers and build tools a source build would need; none may be reachable. */
const TOOLS = /^(cmake|ctest|make|ninja|nvcc|(.*-)?(gcc|g\+\+|c\+\+|cc|clang|clang\+\+)(-\d+(\.\d+)*)?)$/;

let tmp = '';
let binDir = '';
let app = '';
let appNoOptional = '';
let env: NodeJS.ProcessEnv = {};
let tarballs: { main: string; platform: string };
const installs: Record<string, { stdout: string; stderr: string }> = {};

/**
 * A PATH of one folder that links every executable of this PATH except the build tools. On
 * Windows (no symlinks without privileges): this PATH without the folders that hold one.
 */
function pathWithoutCompilers(dir: string): string {
  if (isWindows) {
    const tool = /^(cmake|nvcc|cl|gcc|g\+\+|clang|clang-cl)\.exe$/i;
    return (process.env.PATH ?? '')
      .split(delimiter)
      .filter((d) => {
        try {
          return !readdirSync(d).some((n) => tool.test(n));
        } catch {
          return false;
        }
      })
      .join(delimiter);
  }
  mkdirSync(dir);
  for (const d of (process.env.PATH ?? '').split(delimiter)) {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      continue;
    }
    for (const name of names) {
      if (TOOLS.test(name) || existsSync(join(dir, name))) continue;
      try {
        if (statSync(join(d, name)).isFile()) symlinkSync(join(d, name), join(dir, name));
      } catch {
        // dangling links and unreadable entries are left out
      }
    }
  }
  return dir;
}

function project(dir: string, platformTarball: string): void {
  mkdirSync(dir);
  // What `npm init -y` writes (a CommonJS project), plus: the denial of core-js's postinstall
  // (core-js comes with @tensorflow/tfjs; --strict-allow-scripts refuses any undecided script),
  // and an override that takes kmcl's optional platform dependency from its tarball, as
  // `npm install kmcl` would take it from the registry.
  const manifest = {
    name: 'fresh-app',
    version: '1.0.0',
    private: true,
    type: 'commonjs',
    allowScripts: { 'core-js': false },
    overrides: { [platformName]: `file:${platformTarball}` },
  };
  writeFileSync(join(dir, 'package.json'), JSON.stringify(manifest, null, 2));
}

async function npmInstall(dir: string, extra: string[]): Promise<{ stdout: string; stderr: string }> {
  const args = ['install', '--strict-allow-scripts', '--prefer-offline', '--no-audit', '--no-fund', ...extra, tarballs.main];
  return run('npm', args, { cwd: dir, env, maxBuffer: 1 << 24, shell: isWindows });
}

function node(dir: string, args: string[]) {
  return spawnSync(process.execPath, args, { cwd: dir, env, encoding: 'utf8' });
}

/** The README example as ESM (as written) and as CommonJS (its body in an async function). */
function transpile(file: string): { esm: string; cjs: string; cjsSource: string } {
  const source = readFileSync(join(root, 'test', file), 'utf8');
  const lines = source.split('\n');
  const imports = lines.filter((l) => l.startsWith('import '));
  const body = lines.filter((l) => !l.startsWith('import '));
  const cjsSource = [...imports, '(async () => {', ...body, '})();', ''].join('\n');
  const options = (module: ts.ModuleKind) => ({ compilerOptions: { module, target: ts.ScriptTarget.ES2022, esModuleInterop: true } });
  return {
    esm: ts.transpileModule(source, options(ts.ModuleKind.ESNext)).outputText,
    cjs: ts.transpileModule(cjsSource, options(ts.ModuleKind.CommonJS)).outputText,
    cjsSource,
  };
}

beforeAll(async () => {
  const missing = [join(root, 'build', 'Release', 'kmcl.node'), join(root, 'dist', 'index.js'), join(root, 'dist', 'cjs', 'index.js')].filter((f) => !existsSync(f));
  if (missing.length) throw new Error(`test/pack.test.ts needs the build: ${missing.join(', ')} missing; run \`npm run build\``);
  tmp = mkdtempSync(join(tmpdir(), 'kmcl-pack-'));
  const packDir = join(tmp, 'pack');
  const packed = spawnSync(process.execPath, [join(root, 'scripts', 'pack-all.mjs'), '--no-build', '--out', packDir], { encoding: 'utf8' });
  if (packed.status !== 0) throw new Error(`pack:all failed:\n${packed.stdout}\n${packed.stderr}`);
  tarballs = { main: join(packDir, `kmcl-${pkg.version}.tgz`), platform: join(packDir, `${platformFile}-${pkg.version}.tgz`) };
  binDir = join(tmp, 'bin');
  env = { ...process.env, PATH: pathWithoutCompilers(binDir) };
  for (const k of Object.keys(env)) if (k.startsWith('npm_') || k === 'KMCL_ADDON_PATH' || k === 'NODE_OPTIONS') delete env[k];
  app = join(tmp, 'app');
  appNoOptional = join(tmp, 'app-no-optional');
  project(app, tarballs.platform);
  project(appNoOptional, tarballs.platform);
  const [a, b] = await Promise.all([npmInstall(app, []), npmInstall(appNoOptional, ['--omit=optional'])]);
  installs.app = a;
  installs.noOptional = b;
}, 400_000);

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe('packed tarballs in a fresh project without a compiler', () => {
  it('install with --strict-allow-scripts: no compiler on PATH, no install script, the platform package as an optional dependency', () => {
    if (!isWindows) {
      const found = spawnSync('sh', ['-c', 'command -v cmake gcc g++ c++ cc nvcc clang; true'], { env, encoding: 'utf8' });
      expect(found.stdout.trim()).toBe('');
      expect(existsSync(join(binDir, 'node')) && existsSync(join(binDir, 'npm'))).toBe(true);
    }
    const lock = JSON.parse(readFileSync(join(app, 'package-lock.json'), 'utf8'));
    const main = lock.packages['node_modules/kmcl'];
    const platform = lock.packages[`node_modules/${platformName}`];
    expect(main.version).toBe(pkg.version);
    expect(main.hasInstallScript).toBeUndefined();
    expect(platform.version).toBe(pkg.version);
    expect(platform.optional).toBe(true);
    expect(platform.hasInstallScript).toBeUndefined();
    expect(lock.packages['node_modules/@tensorflow/tfjs'].version).toMatch(/^4\./);
    for (const dir of ['kmcl', platformName]) {
      const scripts = JSON.parse(readFileSync(join(app, 'node_modules', dir, 'package.json'), 'utf8')).scripts ?? {};
      for (const s of ['preinstall', 'install', 'postinstall', 'prepare']) expect(scripts[s], `${dir} ${s}`).toBeUndefined();
    }
    expect(readdirSync(join(app, 'node_modules', platformName)).sort()).toEqual(['README.md', 'kmcl.node', 'package.json']);
  });

  it('the framework-free README example runs through import and require and prints what it prints in the repository', async () => {
    const { esm, cjs } = transpile('readme-raw-example.ts');
    writeFileSync(join(app, 'raw.mjs'), esm);
    writeFileSync(join(app, 'raw.cjs'), cjs);
    const viaImport = node(app, ['raw.mjs']);
    const viaRequire = node(app, ['raw.cjs']);
    expect(viaImport.status, viaImport.stderr).toBe(0);
    expect(viaRequire.status, viaRequire.stderr).toBe(0);
    // The same example in this process, on the sources and build/Release (test/readme.test.ts).
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    await import('./readme-raw-example.js');
    const here = log.mock.calls.map((c) => c.map(String).join(' ')).join('\n') + '\n';
    log.mockRestore();
    expect(viaImport.stdout).toBe(here);
    expect(viaRequire.stdout).toBe(here);
    expect(here.split('\n')[1]).toBe('24');
    const where = node(app, ['-e', "console.log(require('kmcl').backendInfo().native.path)"]);
    expect(where.stdout.trim()).toBe(join(app, 'node_modules', platformName, 'kmcl.node'));
  });

  it('the tfjs README example trains through import and require', () => {
    const { esm, cjs } = transpile('readme-example.ts');
    writeFileSync(join(app, 'train.mjs'), esm);
    writeFileSync(join(app, 'train.cjs'), cjs);
    for (const file of ['train.mjs', 'train.cjs']) {
      const r = node(app, [file]);
      expect(r.status, `${file}: ${r.stderr}`).toBe(0);
      expect(r.stderr, file).not.toMatch(/composite/); // the fused kernel ran, no fallback warning
      const [first, second] = r.stdout.trim().split('\n');
      expect(first, file).toMatch(/^initial loss \d+(\.\d+)? contrastive \d/);
      expect(Number(second.match(/^train mAP ([\d.]+)$/)![1]), file).toBeGreaterThan(0.6);
    }
  });

  it('the types resolve without casts under nodenext (import and require) and bundler', async () => {
    const raw = transpile('readme-raw-example.ts');
    const tfjs = transpile('readme-example.ts');
    const dir = join(app, 'types');
    mkdirSync(dir);
    writeFileSync(join(dir, 'raw.mts'), readFileSync(join(root, 'test', 'readme-raw-example.ts'), 'utf8'));
    writeFileSync(join(dir, 'train.mts'), readFileSync(join(root, 'test', 'readme-example.ts'), 'utf8'));
    writeFileSync(join(dir, 'raw-cjs.cts'), raw.cjsSource);
    writeFileSync(join(dir, 'train-cjs.cts'), tfjs.cjsSource);
    writeFileSync(join(dir, 'raw.ts'), readFileSync(join(root, 'test', 'readme-raw-example.ts'), 'utf8'));
    writeFileSync(join(dir, 'train.ts'), readFileSync(join(root, 'test', 'readme-example.ts'), 'utf8'));
    const common = { target: 'es2022', lib: ['es2022', 'dom'], strict: true, noEmit: true, skipLibCheck: true, types: [] };
    const configs = {
      'tsconfig.nodenext.json': { compilerOptions: { ...common, module: 'nodenext', moduleResolution: 'nodenext' }, files: ['raw.mts', 'train.mts', 'raw-cjs.cts', 'train-cjs.cts'] },
      'tsconfig.bundler.json': { compilerOptions: { ...common, module: 'esnext', moduleResolution: 'bundler' }, files: ['raw.ts', 'train.ts'] },
    };
    for (const [name, config] of Object.entries(configs)) writeFileSync(join(dir, name), JSON.stringify(config));
    // nodenext with --traceResolution, to see below which declarations each side resolved to.
    const runs = Object.keys(configs).map((name) =>
      run(process.execPath, [tscPath, '-p', name, ...(name.includes('nodenext') ? ['--traceResolution'] : [])], { cwd: dir, env, maxBuffer: 1 << 28 }),
    );
    const results = await Promise.allSettled(runs);
    results.forEach((r, i) => {
      const out = r.status === 'rejected' ? `${String((r.reason as { stdout?: string }).stdout ?? '').split('\n').filter((l) => /error TS/.test(l)).join('\n')} ${String(r.reason).slice(0, 500)}` : '';
      expect(r.status, `${Object.keys(configs)[i]}: ${out}`).toBe('fulfilled');
    });
    // The require side really resolves the CommonJS declarations, the import side the ESM ones.
    const trace = (results[0] as PromiseFulfilledResult<{ stdout: string }>).value;
    for (const [name, file] of [['kmcl', 'index'], ['kmcl/tfjs', 'tfjs/index']]) {
      for (const folder of ['dist', 'dist/cjs']) {
        const target = `node_modules/kmcl/${folder}/${file}.d.ts`.replaceAll('/', '\\/').replaceAll('.', '\\.');
        expect(trace.stdout, `${name} -> ${folder}`).toMatch(new RegExp(`'${name.replace('/', '\\/')}' was successfully resolved to '[^']*${target}'`));
      }
    }
  });

  it("the README's command-line example works in the installed package", () => {
    const fixture = JSON.parse(readFileSync(join(root, 'test', 'fixtures', 'isotropic-bc.json'), 'utf8'));
    const r = spawnSync(isWindows ? 'npx.cmd' : 'npx', ['kmcl', 'loss', '--input', 'node_modules/kmcl/test/fixtures/isotropic-bc.json', '--no-gradients'], { cwd: app, env, encoding: 'utf8', shell: isWindows });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(Math.abs(out.loss - fixture.expected.loss) / Math.abs(fixture.expected.loss)).toBeLessThan(1e-5);
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    expect(readme).toContain('npx kmcl loss --input node_modules/kmcl/test/fixtures/isotropic-bc.json');
    expect(existsSync(join(app, 'node_modules', 'kmcl', 'docs', 'kmcl-loss.md'))).toBe(true);
  });

  it('--omit=optional: no platform package, and an error that says how to get a binary', () => {
    expect(existsSync(join(appNoOptional, 'node_modules', 'kmcl'))).toBe(true);
    expect(existsSync(join(appNoOptional, 'node_modules', '@kmcl'))).toBe(false);
    const r = node(appNoOptional, [
      '-e',
      `const { kmclLossRaw, backendInfo } = require('kmcl');
       const f = new Float32Array([1]);
       try { kmclLossRaw({ batch: 1, classes: 1, dim: 1, muDim: 1, varianceShape: [1, 1], features: f, logits: f, labels: f, mu: f, variance: f }); }
       catch (e) { console.log(JSON.stringify({ message: e.message, loaded: backendInfo().native.loaded })); }`,
    ]);
    expect(r.status, r.stderr).toBe(0);
    const { message, loaded } = JSON.parse(r.stdout);
    expect(loaded).toBe(false);
    expect(message).toContain(`platform package ${platformName}: not installed`);
    expect(message).toContain(`source build ${join(appNoOptional, 'node_modules', 'kmcl', 'build', 'Release', 'kmcl.node')}: not found`);
    expect(message).toMatch(/reinstall without\s+--omit=optional/);
    expect(message).toMatch(/npx kmcl build/);
  });

  it("refuses a platform package whose version is not kmcl's", () => {
    // A platform package of another version, put where npm would put it (a copy of the real one).
    const dir = join(appNoOptional, 'node_modules', platformName);
    mkdirSync(dir, { recursive: true });
    const real = join(app, 'node_modules', platformName);
    writeFileSync(join(dir, 'kmcl.node'), readFileSync(join(real, 'kmcl.node')));
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ ...JSON.parse(readFileSync(join(real, 'package.json'), 'utf8')), version: '0.0.1' }));
    try {
      const r = node(appNoOptional, ['-e', "const i = require('kmcl').backendInfo(); console.log(JSON.stringify(i.native))"]);
      expect(r.status, r.stderr).toBe(0);
      const native = JSON.parse(r.stdout);
      expect(native.loaded).toBe(false);
      expect(native.error).toContain(`${platformName}@0.0.1 does not match kmcl@${pkg.version}; install ${platformName}@${pkg.version}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.runIf(process.platform === 'linux')('the addon needs only glibc and libstdc++ (highest versions as the README states) and links no libcuda/libcudart', () => {
    const addon = join(app, 'node_modules', platformName, 'kmcl.node');
    const dyn = spawnSync('objdump', ['-T', addon], { encoding: 'utf8' });
    expect(dyn.status, dyn.stderr).toBe(0);
    const highest = (prefix: string) =>
      [...dyn.stdout.matchAll(new RegExp(`\\b${prefix}_(\\d+(?:\\.\\d+)*)\\b`, 'g'))]
        .map((m) => m[1])
        .sort((a, b) => {
          const [x, y] = [a.split('.').map(Number), b.split('.').map(Number)];
          for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
          return 0;
        })
        .pop();
    const glibc = highest('GLIBC');
    const glibcxx = highest('GLIBCXX');
    expect(glibc).toBeDefined();
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    expect(readme).toContain(`\`GLIBC_${glibc}\``);
    expect(readme).toContain(`\`GLIBCXX_${glibcxx}\``);
    const ldd = spawnSync('ldd', [addon], { encoding: 'utf8' });
    expect(ldd.status, ldd.stderr).toBe(0);
    expect(ldd.stdout).not.toMatch(/libcuda|libcudart/);
    expect(ldd.stdout).toMatch(/libc\.so\.6/);
  });

  it('the CUDA fatbin, when the build has CUDA: compressed SASS for sm_75..sm_120 and compute_120 PTX', () => {
    const addon = readFileSync(join(app, 'node_modules', platformName, 'kmcl.node'));
    const info = node(app, ['-e', "process.stdout.write(JSON.stringify(require('kmcl').backendInfo().cuda))"]);
    const cuda = JSON.parse(info.stdout);
    const entries = fatbinEntries(addon);
    if (!cuda.compiled) {
      expect(entries).toEqual([]);
      return;
    }
    const sass = [...new Set(entries.filter((e) => e.kind === 'elf').map((e) => e.arch))].sort((a, b) => a - b);
    const ptx = [...new Set(entries.filter((e) => e.kind === 'ptx').map((e) => e.arch))];
    expect(sass).toEqual([75, 80, 86, 89, 90, 100, 120]);
    expect(ptx).toEqual([120]);
    expect(entries.every((e) => e.compressed)).toBe(true);
  });
});

/**
 * The entries of every fatbin in a binary (the .nv_fatbin section: magic 0xBA55ED50, then per
 * entry kind 1 = PTX / 2 = ELF, its arch and flags; flag 0x8000 marks compressed code).
 */
function fatbinEntries(bin: Buffer): { kind: 'ptx' | 'elf'; arch: number; compressed: boolean }[] {
  const out: { kind: 'ptx' | 'elf'; arch: number; compressed: boolean }[] = [];
  for (let i = bin.indexOf(Buffer.from([0x50, 0xed, 0x55, 0xba])); i >= 0; i = bin.indexOf(Buffer.from([0x50, 0xed, 0x55, 0xba]), i + 4)) {
    const headerSize = bin.readUInt16LE(i + 6);
    const size = Number(bin.readBigUInt64LE(i + 8));
    for (let j = i + headerSize; j < i + headerSize + size; ) {
      const kind = bin.readUInt16LE(j);
      const entryHeader = bin.readUInt32LE(j + 4);
      const padded = bin.readUInt32LE(j + 8);
      if (kind !== 1 && kind !== 2) break;
      out.push({ kind: kind === 1 ? 'ptx' : 'elf', arch: bin.readUInt32LE(j + 28), compressed: (Number(bin.readBigUInt64LE(j + 40)) & 0x8000) !== 0 });
      j += entryHeader + padded;
    }
  }
  return out;
}
