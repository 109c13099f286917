import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { backendInfo, kmclLossRaw, kmclLossRawFloat64 } from '../src/index.js';
import type { KmclRawResult } from '../src/raw.js';
import { GRADS, TERMS, layouts, randomProblem, relNorm } from './helpers.js';

/**
 * The float32 CPU path on every instruction set this machine supports (KMCL_CPU_ISA): against the
 * float64 path on the same float-rounded inputs (terms within 1e-6 relative, gradients within 1e-5
 * in relative norm), and bitwise equal for KMCL_NUM_THREADS = 1, 2, 3, 8. The native test
 * (kmcl_native_test, isa/ cases) runs the same checks on every fixture and its random problems.
 */
function withEnv<T>(vars: Record<string, string | undefined>, fn: () => T): T {
  const saved: Record<string, string | undefined> = {};
  for (const k of Object.keys(vars)) saved[k] = process.env[k];
  try {
    for (const [k, v] of Object.entries(vars)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    return fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

type Problem32 = Parameters<typeof kmclLossRaw>[0];
type Result64 = ReturnType<typeof kmclLossRawFloat64>;

/** The float32 copy of a float64 problem. */
function asFloat32(p64: ReturnType<typeof randomProblem>): Problem32 {
  return Object.fromEntries(Object.entries(p64).map(([k, v]) => [k, v instanceof Float64Array ? Float32Array.from(v) : v])) as unknown as Problem32;
}
/** A float32 problem's values as float64 (for the float64 path on the same float-rounded inputs). */
function asFloat64(p32: Problem32): Parameters<typeof kmclLossRawFloat64>[0] {
  return Object.fromEntries(Object.entries(p32).map(([k, v]) => [k, v instanceof Float32Array ? Float64Array.from(v) : v])) as never;
}

/** The float32 copy of a float64 problem, and the float64 path's result on its float-rounded values. */
function float32WithReference(p64: ReturnType<typeof randomProblem>, options: Record<string, unknown> = {}): { p32: Problem32; ref: Result64 } {
  const p32 = asFloat32(p64);
  return { p32, ref: kmclLossRawFloat64(asFloat64(p32), options) };
}

/** On one ISA: within 1e-6 (terms) / 1e-5 (gradients) of float64, bitwise equal for 1, 2, 3, 8 threads. */
function expectIsaMatchesFloat64(isa: string, p32: Problem32, ref: Result64, options: Record<string, unknown> = {}): void {
  const runs: KmclRawResult[] = [];
  for (const n of ['1', '2', '3', '8'])
    runs.push(withEnv({ KMCL_CPU_ISA: isa, KMCL_NUM_THREADS: n }, () => kmclLossRaw(p32, { ...options, device: 'cpu' })));
  expect(ref.contrastive).toBeGreaterThan(0);
  for (const t of TERMS) expect(Math.abs(runs[0][t] - ref[t]), t).toBeLessThanOrEqual(1e-6 * Math.abs(ref[t]) + 1e-9);
  for (const g of GRADS) expect(relNorm(runs[0].gradients![g], ref.gradients![g]), `d/d${g}`).toBeLessThan(1e-5);
  for (const r of runs.slice(1)) {
    for (const t of TERMS) expect(r[t]).toBe(runs[0][t]);
    for (const g of GRADS) expect(r.gradients![g]).toEqual(runs[0].gradients![g]);
  }
}

// The B = 1500 shared-variance problems and their float64 results, made once for all ISAs.
const chunked = new Map<string, { p32: Problem32; ref: Result64 }>();
function chunkedProblem(D: number, Dv: number) {
  const key = `${D},${Dv}`;
  let e = chunked.get(key);
  if (!e) {
    e = float32WithReference(randomProblem({ seed: 90 + D + Dv, B: 1500, K: 6, M: 6, D, Kv: 1, Dv, positives: 3 }, Float64Array));
    chunked.set(key, e);
  }
  return e;
}

const info = backendInfo();
const isas = info.cpu.isaAvailable ?? [];

describe('CPU instruction sets', () => {
  it('backendInfo reports the instruction set in use and the available ones', () => {
    expect(info.native.loaded).toBe(true);
    expect(isas).toContain('baseline');
    expect(isas).toContain(info.cpu.isa);
    // auto picks the widest available
    const order = ['baseline', 'avx2', 'avx512'];
    expect(order.indexOf(info.cpu.isa!)).toBe(Math.max(...isas.map((s) => order.indexOf(s))));
    const forced = withEnv({ KMCL_CPU_ISA: 'baseline' }, () => backendInfo().cpu.isa);
    expect(forced).toBe('baseline');
  });

  it('an unknown or unsupported KMCL_CPU_ISA is a clear error, not a crash', () => {
    const p = randomProblem({ seed: 3, B: 8, K: 3, M: 4, D: 4, Kv: 3, Dv: 4 });
    withEnv({ KMCL_CPU_ISA: 'sse9' }, () => {
      expect(() => kmclLossRaw(p, { device: 'cpu' })).toThrow(/KMCL_CPU_ISA must be one of auto, baseline, avx2, avx512, got "sse9"/);
      expect(backendInfo().cpu.isaError).toMatch(/KMCL_CPU_ISA/);
    });
    for (const isa of ['avx2', 'avx512'].filter((s) => !isas.includes(s as never))) {
      withEnv({ KMCL_CPU_ISA: isa }, () => {
        expect(() => kmclLossRaw(p, { device: 'cpu' })).toThrow(new RegExp(`KMCL_CPU_ISA=${isa}: .*available here: baseline`));
      });
    }
  });

  for (const isa of isas) {
    describe(isa, () => {
      for (const layout of layouts(9, 20)) {
        it(`${layout.name}: within 1e-6 (terms) / 1e-5 (gradients) of float64, bitwise equal for 1, 2, 3, 8 threads`, () => {
          const { p32, ref } = float32WithReference(
            randomProblem({ seed: 40 + layout.D, B: 97, K: 9, M: 20, D: layout.D, Kv: layout.Kv, Dv: layout.Dv, positives: 3 }, Float64Array),
          );
          expectIsaMatchesFloat64(isa, p32, ref);
        });
      }
      // 1/τ > 80: S_ik shifted by the row's max in a second pass (1/τ ≤ 80, every test above: the
      // shift 1 in the BC pass itself).
      for (const layout of layouts(9, 20)) {
        it(`${layout.name}, temperature 0.01 (S shifted by the row max): within tolerance of float64, bitwise equal for 1, 2, 3, 8 threads`, () => {
          const options = { temperature: 0.01 };
          const { p32, ref } = float32WithReference(
            randomProblem({ seed: 50 + layout.D, B: 97, K: 9, M: 20, D: layout.D, Kv: layout.Kv, Dv: layout.Dv, positives: 3 }, Float64Array),
            options,
          );
          expectIsaMatchesFloat64(isa, p32, ref, options);
        });
      }
      // ASL on vectors (aslRowSimd): each option branch against the float64 path's scalar math.
      it('ASL in vectors: clip, no clip, gammas 0, the focal weight gradient, a clamping eps, logits up to ±40: within tolerance of float64', () => {
        const p64 = randomProblem({ seed: 123, B: 61, K: 21, M: 8, D: 8, Kv: 21, Dv: 8, positives: 4, logitRange: 40 }, Float64Array);
        const p32 = asFloat32(p64);
        const p64r = asFloat64(p32);
        const weights = { asl: 1, reconstruction: 0, contrastive: 0 };
        const optionSets = [
          {},
          { clip: 0 },
          { clip: 0.2, gammaNeg: 0.5 },
          { gammaNeg: 0, gammaPos: 0 },
          { gammaNeg: 3, gammaPos: 2, detachFocalWeight: false },
          { clip: 0, gammaNeg: 2, gammaPos: 1, detachFocalWeight: false },
          { eps: 0.3 },
          { eps: 0.3, clip: 0 },
        ];
        for (const extra of optionSets) {
          const opts = { ...extra, weights };
          const ref = kmclLossRawFloat64(p64r, opts);
          const got = withEnv({ KMCL_CPU_ISA: isa }, () => kmclLossRaw(p32, { ...opts, device: 'cpu' }));
          const what = JSON.stringify(extra);
          expect(ref.asl, what).toBeGreaterThan(0);
          expect(Math.abs(got.asl - ref.asl), `asl ${what}`).toBeLessThanOrEqual(1e-6 * Math.abs(ref.asl) + 1e-9);
          expect(relNorm(got.gradients!.logits, ref.gradients!.logits), `d/dlogits ${what}`).toBeLessThan(1e-5);
        }
      });
      // A variance shared by all classes (Kv = 1): the class-independent pair terms are computed
      // once per sample pair, for chunks of anchor samples (at most 16 MiB of them: at B = 1500,
      // two chunks), so the chunk boundary is crossed here.
      for (const layout of [
        { name: 'isotropic [B,1,1]', D: 1, Dv: 1 },
        { name: 'anisotropic [B,1,M]', D: 6, Dv: 6 },
        { name: 'anisotropic [B,1,1]', D: 6, Dv: 1 },
      ]) {
        it(`${layout.name} at B = 1500 (shared pair terms in two chunks): within tolerance of float64, bitwise equal for 1, 2, 3, 8 threads`, () => {
          const { p32, ref } = chunkedProblem(layout.D, layout.Dv);
          expectIsaMatchesFloat64(isa, p32, ref);
        });
      }
      // Variance ratios of about 3e5 in some dimensions: 1 + x_m ≥ 2^15, where the product of the
      // factors over a group of dimensions could overflow and each partner concerned is summed
      // dimension by dimension (cpu_simd.inc). Other partners in the same vector stay on the
      // grouped path.
      for (const Kv of [9, 1]) {
        it(`anisotropic [B,${Kv === 1 ? 1 : 'K'},M] with variance ratios near 3e5 (the dim-by-dim logarithm): within tolerance of float64, bitwise equal for 1, 2, 3, 8 threads`, () => {
          const p64 = randomProblem({ seed: 71, B: 53, K: 9, M: 24, D: 24, Kv, Dv: 24, positives: 3 }, Float64Array);
          const v = p64.variance as unknown as Float64Array;
          for (let i = 0; i < 53; i += 5) for (let m = 0; m < Kv * 24; m += 7) v[i * Kv * 24 + m] = 3e-6;
          const { p32, ref } = float32WithReference(p64);
          expectIsaMatchesFloat64(isa, p32, ref);
        });
      }
    });
  }

  it('kmcl code in the addon uses AVX instructions only inside the avx2/avx512 kernels (so it runs on a baseline x86-64 CPU)', (ctx) => {
    const path = info.native.path;
    const probe = spawnSync('objdump', ['--version'], { encoding: 'utf8' });
    if (process.arch !== 'x64' || !path || probe.status !== 0) {
      ctx.skip();  // not x86-64, or no objdump (binutils) on this machine
      return;
    }
    const dis = spawnSync('objdump', ['-d', '--no-show-raw-insn', '-C', path], { encoding: 'utf8', maxBuffer: 1 << 30 });
    expect(dis.status, dis.stderr).toBe(0);
    let fn = '';
    const offenders = new Set<string>();
    let vexInKernels = 0;
    for (const line of dis.stdout.split('\n')) {
      const head = /^[0-9a-f]+ <(.*)>:$/.exec(line);
      if (head) {
        fn = head[1];
        continue;
      }
      // VEX/EVEX-encoded instructions (AVX and later) start with "v" (vmovaps, vfmadd…, vzeroupper).
      if (/^\s+[0-9a-f]+:\t(v[a-z0-9]+)\s/.test(line)) {
        if (/isa_avx2|isa_avx512/.test(fn)) vexInKernels++;
        else if (/kmcl|Napi/.test(fn)) offenders.add(fn);  // our code (the CUDA runtime, when linked, is NVIDIA's)
      }
    }
    expect([...offenders].slice(0, 5), 'functions outside the avx2/avx512 kernels with AVX instructions').toEqual([]);
    expect(vexInKernels).toBeGreaterThan(1000);
  }, 120_000);
});

