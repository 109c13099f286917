/**
 * Pack and verify: the tarballs that `npm run pack:all` writes install into a fresh project with
 * `npm install --strict-allow-scripts` while no compiler (cmake, gcc/g++/c++/cc, nvcc) is on PATH,
 * and the README's examples run there through `import` and `require`. It does so with the npm on
 * PATH (npm 11) and, on Linux, with npm 12.2.2 on Node 22.23.5, both fetched from the npm registry
 * once per machine (see fetchNode22Npm12); it also records what each npm does with the one
 * dependency install script the install brings (core-js's postinstall, via @tensorflow/tfjs).
 *
 * It reuses the build (dist/ and build/Release/kmcl.node from `npm run build`); it compiles
 * nothing. npm gets @tensorflow/tfjs (kmcl's peer dependency) from its cache (--prefer-offline).
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it, vi, type TestContext } from 'vitest';
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

/** Node 22 and npm 12 for the second toolchain (registry packages node-linux-<arch> and npm). */
const NODE22 = { name: `node-${process.platform}-${process.arch}`, version: '22.23.5' };
const NPM12 = '12.2.2';

/** An npm (the command and its leading arguments), the node that runs the project, their environment. */
interface Toolchain {
  npm: string[];
  node: string;
  env: NodeJS.ProcessEnv;
}
/** An npm run: its exit code (0 when it succeeded), stdout and stderr. */
interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

let tmp = '';
let binDir = '';
/** The README's command: --strict-allow-scripts, core-js's postinstall denied. */
let app = '';
/** A plain `npm install --omit=optional` (no platform package), core-js's postinstall undecided. */
let appNoOptional = '';
/** --strict-allow-scripts with core-js's postinstall undecided (the install fails). */
let appStrictUndecided = '';
let env: NodeJS.ProcessEnv = {};
/** The npm on PATH and this process's node, without compilers on PATH. */
let current: Toolchain;
let tarballs: { main: string; platform: string };
const installs: Record<string, Result> = {};
/** The npm 12 cases' toolchain and installs, started with npm 11's (Linux only); see setUpNpm12. */
let npm12Setup: Promise<Npm12Setup> | undefined;

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

function project(dir: string, { decideCoreJs = true } = {}): void {
  mkdirSync(dir);
  // What `npm init -y` writes (a CommonJS project), plus: the denial of core-js's postinstall
  // (core-js comes with @tensorflow/tfjs; --strict-allow-scripts refuses any undecided script;
  // left out with decideCoreJs: false), and an override that takes kmcl's optional platform
  // dependency from its tarball, as `npm install kmcl` would take it from the registry.
  const manifest = {
    name: 'fresh-app',
    version: '1.0.0',
    private: true,
    type: 'commonjs',
    ...(decideCoreJs ? { allowScripts: { 'core-js': false } } : {}),
    overrides: { [platformName]: `file:${tarballs.platform}` },
  };
  writeFileSync(join(dir, 'package.json'), JSON.stringify(manifest, null, 2));
}

/** `npm install FLAGS kmcl.tgz` in dir; a failed install is returned (code != 0), not thrown. */
async function npmInstall(dir: string, flags: string[], tools = current): Promise<Result> {
  const [command, ...lead] = tools.npm;
  const args = [...lead, 'install', '--prefer-offline', '--no-audit', '--no-fund', ...flags, tarballs.main];
  try {
    return { code: 0, ...(await run(command, args, { cwd: dir, env: tools.env, maxBuffer: 1 << 24, shell: isWindows && command === 'npm' })) };
  } catch (e) {
    const failed = e as { code?: unknown; stdout?: string; stderr?: string };
    return { code: typeof failed.code === 'number' ? failed.code : -1, stdout: failed.stdout ?? '', stderr: failed.stderr ?? String(e) };
  }
}

/** The install's result, or an error with npm's output when it failed. */
function succeeded(r: Result, what: string): Result {
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r;
}

function node(dir: string, args: string[], tools = current) {
  return spawnSync(tools.node, args, { cwd: dir, env: tools.env, encoding: 'utf8' });
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
  current = { npm: ['npm'], node: process.execPath, env };
  app = join(tmp, 'app');
  appNoOptional = join(tmp, 'app-no-optional');
  appStrictUndecided = join(tmp, 'app-strict-undecided');
  project(app);
  project(appNoOptional, { decideCoreJs: false });
  project(appStrictUndecided, { decideCoreJs: false });
  if (process.platform === 'linux') {
    npm12Setup = setUpNpm12();
    npm12Setup.catch(() => {}); // its error is thrown where the npm 12 cases await it
  }
  // --foreground-scripts changes no script's fate; it makes npm print each one it runs (see scriptsRun).
  const [a, b, c] = await Promise.all([
    npmInstall(app, ['--strict-allow-scripts', '--foreground-scripts']),
    npmInstall(appNoOptional, ['--omit=optional', '--foreground-scripts']),
    npmInstall(appStrictUndecided, ['--strict-allow-scripts']),
  ]);
  installs.app = succeeded(a, 'npm install --strict-allow-scripts');
  installs.noOptional = succeeded(b, 'npm install --omit=optional');
  installs.strictUndecided = c;
}, 400_000);

afterAll(async () => {
  await npm12Setup?.catch(() => {}); // no npm 12 install still writing into tmp when it is removed
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** The lock and node_modules of an install: kmcl and its platform package, neither with an install script. */
function expectInstalledWithoutScripts(dir: string): void {
  const lock = JSON.parse(readFileSync(join(dir, 'package-lock.json'), 'utf8'));
  const main = lock.packages['node_modules/kmcl'];
  const platform = lock.packages[`node_modules/${platformName}`];
  expect(main.version).toBe(pkg.version);
  expect(main.hasInstallScript).toBeUndefined();
  expect(platform.version).toBe(pkg.version);
  expect(platform.optional).toBe(true);
  expect(platform.hasInstallScript).toBeUndefined();
  expect(lock.packages['node_modules/@tensorflow/tfjs'].version).toMatch(/^4\./);
  for (const name of ['kmcl', platformName]) {
    const scripts = JSON.parse(readFileSync(join(dir, 'node_modules', name, 'package.json'), 'utf8')).scripts ?? {};
    for (const s of ['preinstall', 'install', 'postinstall', 'prepare']) expect(scripts[s], `${name} ${s}`).toBeUndefined();
  }
  expect(readdirSync(join(dir, 'node_modules', platformName)).sort()).toEqual(['README.md', 'kmcl.node', 'package.json']);
}

let rawHere: string | undefined;
/** What the framework-free README example prints in this process (sources and build/Release, as test/readme.test.ts runs it). */
async function rawExampleHere(): Promise<string> {
  if (rawHere === undefined) {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    try {
      await import('./readme-raw-example.js');
      rawHere = log.mock.calls.map((c) => c.map(String).join(' ')).join('\n') + '\n';
    } finally {
      log.mockRestore();
    }
  }
  return rawHere;
}

/** The framework-free README example, run in dir through import and require, prints what it prints here, from the platform package. */
async function expectRawExample(dir: string, tools = current): Promise<void> {
  const { esm, cjs } = transpile('readme-raw-example.ts');
  writeFileSync(join(dir, 'raw.mjs'), esm);
  writeFileSync(join(dir, 'raw.cjs'), cjs);
  const viaImport = node(dir, ['raw.mjs'], tools);
  const viaRequire = node(dir, ['raw.cjs'], tools);
  expect(viaImport.status, viaImport.stderr).toBe(0);
  expect(viaRequire.status, viaRequire.stderr).toBe(0);
  const here = await rawExampleHere();
  expect(viaImport.stdout).toBe(here);
  expect(viaRequire.stdout).toBe(here);
  expect(here.split('\n')[1]).toBe('24');
  const where = node(dir, ['-e', "console.log(require('kmcl').backendInfo().native.path)"], tools);
  expect(where.stdout.trim()).toBe(join(dir, 'node_modules', platformName, 'kmcl.node'));
}

/** The tfjs README example, run in dir through import and require, trains with the fused kernel. */
function expectTfjsExample(dir: string, tools = current): void {
  const { esm, cjs } = transpile('readme-example.ts');
  writeFileSync(join(dir, 'train.mjs'), esm);
  writeFileSync(join(dir, 'train.cjs'), cjs);
  for (const file of ['train.mjs', 'train.cjs']) {
    const r = node(dir, [file], tools);
    expect(r.status, `${file}: ${r.stderr}`).toBe(0);
    expect(r.stderr, file).not.toMatch(/composite/); // the fused kernel ran, no fallback warning
    const [first, second] = r.stdout.trim().split('\n');
    expect(first, file).toMatch(/^initial loss \d+(\.\d+)? contrastive \d/);
    expect(Number(second.match(/^train mAP ([\d.]+)$/)![1]), file).toBeGreaterThan(0.6);
  }
}

/** The install scripts an install ran, as `NAME@VERSION EVENT` (npm prints `> NAME@VERSION EVENT` for each under --foreground-scripts). */
function scriptsRun(r: Result): string[] {
  return [...r.stdout.matchAll(/^> (\S+) (preinstall|install|postinstall|prepare)$/gm)].map((m) => `${m[1]} ${m[2]}`);
}

/** An install (with --foreground-scripts) in a project that denies core-js's postinstall: no script ran, no warning about one. */
function expectNoScriptRun(r: Result): void {
  expect(scriptsRun(r)).toEqual([]);
  expect(r.stderr).not.toContain('install-scripts');
}

/**
 * What an npm did with dependency install scripts in a project that has not decided core-js's
 * postinstall (no allowScripts): `plain` is `npm install --foreground-scripts` there (npm prints
 * `> NAME@VERSION postinstall` for each script it runs), `strict` is `npm install
 * --strict-allow-scripts`. The lock shows that core-js is the only package with an install script.
 */
function expectScriptPolicy(dir: string, plain: Result, strict: Result, strictDir: string, coreJsRuns: boolean): void {
  expect(plain.code, plain.stderr).toBe(0);
  const lock = JSON.parse(readFileSync(join(dir, 'package-lock.json'), 'utf8'));
  const withScripts = Object.entries(lock.packages as Record<string, { hasInstallScript?: boolean }>).filter(([, p]) => p.hasInstallScript).map(([k]) => k);
  expect(withScripts).toEqual(['node_modules/core-js']);
  const coreJs = `core-js@${lock.packages['node_modules/core-js'].version}`;
  expect(scriptsRun(plain)).toEqual(coreJsRuns ? [`${coreJs} postinstall`] : []);
  // Either way npm ends with a warning that names the undecided script; the wording says which.
  expect(plain.stderr).toContain(coreJsRuns ? 'has install scripts not yet covered by allowScripts:' : 'had install scripts blocked because they are not covered by allowScripts:');
  expect(plain.stderr).toMatch(new RegExp(`npm warn install-scripts +${coreJs.replaceAll('.', '\\.')} \\(postinstall`));
  // --strict-allow-scripts refuses the undecided script: the install fails and installs nothing.
  expect(strict.code).not.toBe(0);
  expect(strict.stderr).toContain('npm error code ESTRICTALLOWSCRIPTS');
  expect(strict.stderr).toContain(`${coreJs} (postinstall`);
  expect(existsSync(join(strictDir, 'node_modules', 'kmcl'))).toBe(false);
}

describe('packed tarballs in a fresh project without a compiler', () => {
  it('install with --strict-allow-scripts (core-js denied): no compiler on PATH, no install script run, the platform package as an optional dependency', () => {
    if (!isWindows) {
      const found = spawnSync('sh', ['-c', 'command -v cmake gcc g++ c++ cc nvcc clang; true'], { env, encoding: 'utf8' });
      expect(found.stdout.trim()).toBe('');
      expect(existsSync(join(binDir, 'node')) && existsSync(join(binDir, 'npm'))).toBe(true);
    }
    expectInstalledWithoutScripts(app);
    expectNoScriptRun(installs.app);
  });

  it("npm 11: runs an undecided dependency install script (core-js's postinstall) with a warning; --strict-allow-scripts refuses it", () => {
    const version = spawnSync('npm', ['--version'], { env, encoding: 'utf8', shell: isWindows }).stdout.trim();
    expect(version).toMatch(/^11\./);
    expectScriptPolicy(appNoOptional, installs.noOptional, installs.strictUndecided, appStrictUndecided, true);
  });

  it('the framework-free README example runs through import and require and prints what it prints in the repository', async () => {
    await expectRawExample(app);
  });

  it('the tfjs README example trains through import and require', () => {
    expectTfjsExample(app);
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

  it('npm install --omit=optional: no platform package, and an error that says how to get a binary', () => {
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

describe.runIf(process.platform === 'linux')(`npm ${NPM12} on Node ${NODE22.version} (from the registry package ${NODE22.name}): the same tarballs`, () => {
  let setup: Npm12Setup;
  beforeAll(async () => {
    setup = await npm12Setup!;
    if (setup.skipped) console.warn(`test/pack.test.ts: npm ${NPM12} / Node ${NODE22.version} cases ${setup.skipped}`);
  }, 400_000);

  /** The npm 12 toolchain, or a skip that says why there is none. */
  function tools(ctx: TestContext): Toolchain {
    if (!setup.tools) ctx.skip(setup.skipped);
    return setup.tools!;
  }

  it(`the toolchain is Node ${NODE22.version} and npm ${NPM12}, and PATH has no compiler`, (ctx) => {
    const t = tools(ctx);
    expect(node(tmp, ['--version'], t).stdout.trim()).toBe(`v${NODE22.version}`);
    expect(spawnSync(t.node, [t.npm[1], '--version'], { env: t.env, encoding: 'utf8' }).stdout.trim()).toBe(NPM12);
    // The Node versions npm 12 accepts, as the README states them.
    expect(JSON.parse(readFileSync(join(dirname(t.npm[1]), '..', 'package.json'), 'utf8')).engines.node).toBe('^22.22.2 || ^24.15.0 || >=26.0.0');
    const found = spawnSync('sh', ['-c', 'command -v node; command -v cmake gcc g++ c++ cc nvcc clang; true'], { env: t.env, encoding: 'utf8' });
    expect(found.stdout.trim()).toBe(t.node);
    expect(readFileSync(join(root, 'README.md'), 'utf8').replace(/\s+/g, ' ')).toContain(`npm ${NPM12} on Node ${NODE22.version}`);
  });

  it('install with --strict-allow-scripts (core-js denied): no install script run, the platform package as an optional dependency', (ctx) => {
    tools(ctx);
    expectInstalledWithoutScripts(setup.dirs.strict);
    expectNoScriptRun(setup.results.strict!);
  });

  it("blocks an undecided dependency install script (core-js's postinstall) by default, with a warning; --strict-allow-scripts refuses it", (ctx) => {
    tools(ctx);
    expectScriptPolicy(setup.dirs.plain, setup.results.plain!, setup.results.strictUndecided!, setup.dirs.strictUndecided, false);
    expectInstalledWithoutScripts(setup.dirs.plain);
  });

  it('the framework-free README example runs under Node 22 through import and require (both installs), printing what it prints here', async (ctx) => {
    const t = tools(ctx);
    await expectRawExample(setup.dirs.strict, t);
    await expectRawExample(setup.dirs.plain, t);
  });

  it("the tfjs README example trains under Node 22 through import and require, without core-js's postinstall having run", (ctx) => {
    expectTfjsExample(setup.dirs.plain, tools(ctx));
  });
});

interface Npm12Setup {
  /** Absent when the registry cannot be reached; then `skipped` says so. */
  tools?: Toolchain;
  skipped?: string;
  /** The README's command (core-js denied), a plain install, --strict-allow-scripts with core-js undecided. */
  dirs: { strict: string; plain: string; strictUndecided: string };
  results: { strict?: Result; plain?: Result; strictUndecided?: Result };
}

/** Fetches (or finds) Node 22 and npm 12, then installs the tarballs with them into three fresh projects. */
async function setUpNpm12(): Promise<Npm12Setup> {
  const dirs = { strict: join(tmp, 'app-npm12-strict'), plain: join(tmp, 'app-npm12-plain'), strictUndecided: join(tmp, 'app-npm12-strict-undecided') };
  const fetched = await fetchNode22Npm12();
  if ('unreachable' in fetched) {
    return { dirs, results: {}, skipped: `skipped: the npm registry cannot be reached to fetch ${NODE22.name}@${NODE22.version} and npm@${NPM12} (${fetched.unreachable})` };
  }
  // Node 22 first on PATH (npm 12 and the scripts it runs use it), then the compiler-free folder.
  const tools: Toolchain = { npm: [fetched.node, fetched.npmCli], node: fetched.node, env: { ...env, PATH: `${dirname(fetched.node)}${delimiter}${binDir}` } };
  project(dirs.strict);
  project(dirs.plain, { decideCoreJs: false });
  project(dirs.strictUndecided, { decideCoreJs: false });
  const [strict, plain, strictUndecided] = await Promise.all([
    npmInstall(dirs.strict, ['--strict-allow-scripts', '--foreground-scripts'], tools),
    npmInstall(dirs.plain, ['--foreground-scripts'], tools),
    npmInstall(dirs.strictUndecided, ['--strict-allow-scripts'], tools),
  ]);
  return {
    tools,
    dirs,
    results: { strict: succeeded(strict, `npm ${NPM12} install --strict-allow-scripts`), plain: succeeded(plain, `npm ${NPM12} install`), strictUndecided },
  };
}

/**
 * Node 22.23.5 and npm 12.2.2 as the npm registry has them (the packages node-linux-<arch>, whose
 * bin/node is the Node binary, and npm), fetched with `npm pack` into
 * <os.tmpdir()>/kmcl-toolchains/ once per machine (a CI run is one): about 55 MiB to download,
 * 130 MiB unpacked. Returns the paths, or why the registry cannot be reached (when `npm pack`
 * fails and `npm ping` fails too); any other failure throws.
 */
async function fetchNode22Npm12(): Promise<{ node: string; npmCli: string } | { unreachable: string }> {
  const dir = join(tmpdir(), 'kmcl-toolchains', `${NODE22.name}-${NODE22.version}+npm-${NPM12}`);
  const nodeBin = join(dir, 'node', 'bin', 'node');
  const npmCli = join(dir, 'npm', 'bin', 'npm-cli.js');
  if (existsSync(nodeBin) && existsSync(npmCli)) return { node: nodeBin, npmCli };
  mkdirSync(dirname(dir), { recursive: true });
  const stage = mkdtempSync(`${dir}.partial-`);
  const failure = (e: unknown) => {
    const out = String((e as { stderr?: string }).stderr ?? e);
    return out.split('\n').filter((l) => /npm error/.test(l)).slice(0, 2).join(' / ') || out.trim().slice(-200);
  };
  try {
    const specs = [`${NODE22.name}@${NODE22.version}`, `npm@${NPM12}`];
    try {
      await run('npm', ['pack', ...specs, '--pack-destination', stage, '--prefer-offline'], { env });
    } catch (packError) {
      try {
        await run('npm', ['ping'], { env });
      } catch (pingError) {
        return { unreachable: `npm pack: ${failure(packError)}; npm ping: ${failure(pingError)}` };
      }
      throw new Error(`npm pack ${specs.join(' ')} failed although the registry answers npm ping:\n${failure(packError)}`);
    }
    const unpack = [
      [`${NODE22.name}-${NODE22.version}.tgz`, 'node', ['package/bin/node']],
      [`npm-${NPM12}.tgz`, 'npm', []],
    ] as const;
    for (const [tgz, to, members] of unpack) {
      mkdirSync(join(stage, to));
      await run('tar', ['-xzf', join(stage, tgz), '-C', join(stage, to), '--strip-components=1', ...members]);
      rmSync(join(stage, tgz));
    }
    try {
      renameSync(stage, dir);
    } catch (e) {
      // Another test run finished first; its copy is as good. A partial folder is not.
      if (!(existsSync(nodeBin) && existsSync(npmCli))) throw new Error(`${dir} is incomplete; delete it (${String(e)})`);
    }
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
  return { node: nodeBin, npmCli };
}

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
