#!/usr/bin/env python3
"""kmcl's fused CUDA path against the eager PyTorch baseline on the same GPU (issue 5, item 4).

Runs only on the GPU machine (PyTorch with CUDA is there, not on the development machines):

    python3 bench/baselines/compare_gpu.py --out "$OUT" [--quick] [--kmcl-bench build/kmcl_bench]

For node (kmcl_cuda_probe.mjs) run it under `sh .device/with-node.sh` (../shared/device/pack.sh
makes .device/), carrying `.device` and `build` (kmcl_bench and the CUDA addon built here with nvcc;
a kmcl_bench under build-*/ is found too). The tree travels without .git, so name the commit:

    KMCL_COMMIT=<hash> sh .device/with-node.sh python3 bench/baselines/compare_gpu.py --out "$OUT"
 What it does, in this order, writing as it goes:

1. checks the eager baseline against test/fixtures/*.json in float64 (torch_eager.py);
2. times the eager baseline's fwd+bwd (torch.autograd.grad of the loss w.r.t. features, logits,
   mu, variance) with CUDA events over the bench grid B in {32..512} x K in {20, 80} x
   M in {1 (isotropic), 64} and over kmcl_bench's grid B in {64, 256, 1024, 4096, 16384} x
   K in {20, 80} x M in {1, 128} (which holds the target point B = 256, K = 80, M = 128); every
   problem has D = M and per-class variance [B, K, D] (the "bc" layout), 3 positives per sample;
3. finds the eager baseline's largest batch before CUDA out-of-memory (doubling, then bisection)
   for K = 80, M = D = 128 and K = 80, M = D = 64;
4. runs kmcl's native benchmark `kmcl_bench --variance bc --json FILE` (native/bench) and reads
   its CUDA rows: kernelMs (CUDA-event time of the kernels, inputs already on the device, as the
   eager timing) and totalMs (the whole call from host arrays, copies included);
5. with node on PATH, times kmcl through the addon (kmcl_cuda_probe.mjs; host arrays, so
   including transfers) at the same points and searches kmcl's largest batch the same way;
6. writes compare_gpu.json and compare_gpu.md (tables: eager ms, kmcl ms, ratio; max batches and
   their ratio) to --out.

kmcl_bench's JSON is {"device", "results": [{B, K, M, layout, kernelMs, totalMs, peakMiB, ...}]}
(D = 1 for an "iso" layout, else M); a CPU-only run has "device": null and no kernel times.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, HERE)

import torch_eager  # noqa: E402

GRID_B = [32, 64, 128, 256, 512]
GRID_K = [20, 80]
GRID_M = [1, 64]
KMCL_BENCH_B = [64, 256, 1024, 4096, 16384]
KMCL_BENCH_M = [1, 128]
TARGET = {'B': 256, 'K': 80, 'M': 128, 'D': 128}
MAX_BATCH_CONFIGS = [{'K': 80, 'M': 128, 'D': 128}, {'K': 80, 'M': 64, 'D': 64}]
OOM_RE = re.compile(r'out of memory|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED|bad_alloc|allocation', re.I)


def log(msg):
    print(msg, flush=True)


# ---- the eager baseline on the GPU ----

def make_problem(B, K, M, D, seed=1, device='cuda'):
    """Same distribution as bench/grid.ts: variance [B, K, D] in (1, 3), 3 positives per sample."""
    import torch
    g = torch.Generator(device='cpu').manual_seed(seed)
    rate = min(1.0, 3.0 / K)
    t = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    p = {
        'features': t(B, M) * 2 - 1,
        'logits': (t(B, K) * 2 - 1) * 3,
        'mu': t(B, K, D) * 2 - 1,
        'variance': 1 + 2 * t(B, K, D),
        'labels': (t(B, K) < rate).float(),
    }
    return {k: v.to(device=device, dtype=torch.float32) for k, v in p.items()}


def eager_step(p):
    import torch
    leaves = [p[k].detach().requires_grad_(True) for k in ('features', 'logits', 'mu', 'variance')]
    loss = torch_eager.kmcl_loss(*leaves, p['labels'])['loss']
    grads = torch.autograd.grad(loss, leaves)
    return loss, grads


def is_oom(e):
    import torch
    return isinstance(e, getattr(torch.cuda, 'OutOfMemoryError', ())) or bool(OOM_RE.search(str(e)))


def free_cuda():
    import gc
    import torch
    gc.collect()
    torch.cuda.empty_cache()


def time_eager(B, K, M, D, min_reps=5, min_ms=300.0, max_reps=50):
    """Median fwd+bwd time in ms with CUDA events, peak memory; or the reason it did not run."""
    import torch
    free_cuda()
    torch.cuda.reset_peak_memory_stats()
    try:
        p = make_problem(B, K, M, D)
        for _ in range(2):
            eager_step(p)
        torch.cuda.synchronize()
        times = []
        while len(times) < min_reps or (sum(times) < min_ms and len(times) < max_reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss, grads = eager_step(p)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
            del loss, grads
        times.sort()
        n = len(times)
        med = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
        return {'status': 'ok', 'medianMs': med, 'calls': n, 'peakBytes': torch.cuda.max_memory_allocated()}
    except Exception as e:  # noqa: BLE001
        if is_oom(e):
            return {'status': 'oom', 'reason': str(e).split('\n')[0][:200]}
        return {'status': 'error', 'reason': f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'}
    finally:
        p = None  # noqa: F841
        free_cuda()


def eager_fits(B, K, M, D):
    import torch
    free_cuda()
    try:
        p = make_problem(B, K, M, D)
        eager_step(p)
        torch.cuda.synchronize()
        return True, ''
    except Exception as e:  # noqa: BLE001
        if is_oom(e):
            return False, 'out of memory'
        raise
    finally:
        p = None  # noqa: F841
        free_cuda()


def max_batch_eager(K, M, D, start=32, cap=1 << 16, deadline_s=120.0):
    """Largest B whose fwd+bwd fits: doubling from `start`, then bisection to within 8 or 1/32."""
    t0 = time.time()
    good, bad, probes = 0, 0, []
    B = start
    while B <= cap:
        ok, why = eager_fits(B, K, M, D)
        probes.append({'B': B, 'ok': ok})
        if not ok:
            bad = B
            break
        good = B
        if time.time() - t0 > deadline_s:
            break
        B *= 2
    while good and bad and bad - good > max(8, good // 32) and time.time() - t0 < deadline_s:
        mid = (good + bad) // 2 // 8 * 8
        ok, _ = eager_fits(mid, K, M, D)
        probes.append({'B': mid, 'ok': ok})
        if ok:
            good = mid
        else:
            bad = mid
    return {'K': K, 'M': M, 'D': D, 'maxBatch': good, 'firstFailure': bad or None, 'bounded': bool(bad), 'probes': probes}


# ---- kmcl ----

def find_kmcl_bench(explicit):
    if explicit:
        return explicit if os.path.exists(explicit) else None
    for pattern in ('build/kmcl_bench', 'build-*/kmcl_bench', 'build/*/kmcl_bench'):
        for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
            if os.access(path, os.X_OK):
                return path
    return None


def _first(row, *keys):
    for k in keys:
        for rk in row:
            if rk.lower() == k.lower():
                return row[rk]
    return None


def parse_kmcl_bench(doc):
    """The CUDA rows of kmcl_bench's JSON, as {B, K, M, D, layout, kernelMs, totalMs, peakMiB}."""
    rows = doc if isinstance(doc, list) else next((doc[k] for k in ('results', 'rows', 'cases') if isinstance(doc, dict) and isinstance(doc.get(k), list)), [])
    out = []
    for r in rows:
        if not isinstance(r, dict):
            continue
        B, K, M = _first(r, 'B', 'batch'), _first(r, 'K', 'classes'), _first(r, 'M', 'dim')
        layout = str(_first(r, 'layout') or '')
        D = _first(r, 'D', 'muDim', 'mu_dim') or (1 if layout.startswith('iso') else M)
        kernel = _first(r, 'kernelMs', 'kernel_ms')
        total = _first(r, 'totalMs', 'total_ms')
        if None in (B, K, M) or not isinstance(kernel, (int, float)):
            continue  # a CPU-only row (no CUDA device): nothing to compare
        out.append({'B': int(B), 'K': int(K), 'M': int(M), 'D': int(D), 'layout': layout, 'kernelMs': float(kernel),
                    'totalMs': float(total) if isinstance(total, (int, float)) else None, 'peakMiB': _first(r, 'peakMiB')})
    return out


def run_kmcl_bench(path, out_dir, quick, timeout):
    json_path = os.path.join(out_dir, 'kmcl_bench.json')
    cmd = [path, '--variance', 'bc', '--json', json_path] + (['--quick'] if quick else [])
    log(f'$ {" ".join(cmd)}')
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {'status': 'timeout', 'command': ' '.join(cmd), 'rows': []}
    if r.returncode != 0 or not os.path.exists(json_path):
        return {'status': 'error', 'command': ' '.join(cmd), 'reason': (r.stderr or r.stdout)[-1000:], 'rows': []}
    with open(json_path) as f:
        doc = json.load(f)
    return {'status': 'ok', 'command': ' '.join(cmd), 'rows': parse_kmcl_bench(doc)}


def probe(args, timeout):
    node = shutil.which('node')
    if not node:
        return {'error': 'node is not on PATH (run under sh .device/with-node.sh)'}
    cmd = [node, os.path.join(HERE, 'kmcl_cuda_probe.mjs')] + [str(a) for a in args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {'error': f'timed out after {timeout} s'}
    line = next((l for l in reversed(r.stdout.splitlines()) if l.startswith('{')), None)
    if not line:
        return {'error': (r.stderr or 'no output')[-500:]}
    return json.loads(line)


# ---- report ----

def fmt(x):
    if x is None:
        return '—'
    if x >= 1000:
        return str(round(x))
    return f'{x:.3g}'


def markdown(res):
    d = res['device']
    lines = [
        '### Eager PyTorch vs kmcl fused CUDA, fwd+bwd',
        '',
        f"GPU: {d['name']} ({d['memoryGiB']} GiB), torch {d['torch']}, CUDA {d['cuda']}; host {d['host']}. "
        f"Date {res['date']}, commit {res['commit']}, command `{res['command']}`.",
        f"Eager baseline vs fixtures (float64): {res['fixtureCheck']}.",
        '',
        'Eager: CUDA-event time of loss + torch.autograd.grad on device tensors. kmcl kernels: kmcl_bench\'s CUDA-event time '
        'of its kernels on device inputs (the like-for-like ratio); kmcl call: kmcl_bench\'s wall time of a whole call '
        'from host arrays, copies included; addon: kmclLossRaw from node, copies included.',
        '',
        '| B | K | M | D | eager PyTorch (ms) | eager peak (MiB) | kmcl kernels (ms) | eager / kmcl kernels | kmcl call (ms) | eager / kmcl call | kmcl via addon (ms) |',
        '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ]
    for r in res['timing']:
        e = r['eager']
        em = e.get('medianMs') if e['status'] == 'ok' else None
        kk, kt, ka = r.get('kmclKernelMs'), r.get('kmclTotalMs'), r.get('kmclAddonMs')
        eager_cell = fmt(em) if em is not None else e['status'].upper()
        peak = fmt(e['peakBytes'] / 2**20) if e.get('peakBytes') else '—'
        ratio = lambda k: f'{em / k:.3g}×' if em is not None and k else '—'  # noqa: E731
        lines.append(f"| {r['B']} | {r['K']} | {r['M']} | {r['D']} | {eager_cell} | {peak} | {fmt(kk)} | {ratio(kk)} | {fmt(kt)} | {ratio(kt)} | {fmt(ka)} |")
    lines += ['', '| K | M | D | eager max batch | kmcl max batch | kmcl / eager |', '| ---: | ---: | ---: | ---: | ---: | ---: |']
    for m in res['maxBatch']:
        e, k = m['eager'], m.get('kmcl') or {}
        kb = k.get('maxBatch')
        kcell = '—' if not kb else (f'{kb}' if k.get('bounded') else f'≥ {kb} ({k.get("stop", "search stopped")})')
        ecell = f"{e['maxBatch']}" if e.get('bounded') else f"≥ {e['maxBatch']}"
        at_least = '' if (k.get('bounded') and e.get('bounded')) else '≥ ' if k.get('bounded') is False else ''
        ratio = f"{at_least}{kb / e['maxBatch']:.3g}×" if kb and e.get('maxBatch') else '—'
        lines.append(f"| {m['K']} | {m['M']} | {m['D']} | {ecell} | {kcell} | {ratio} |")
    if res.get('notes'):
        lines += [''] + [f'- {n}' for n in res['notes']]
    return '\n'.join(lines) + '\n'


def self_test():
    """The driver's logic without a GPU or torch: the kmcl_bench parser, the search, the report."""
    rows = parse_kmcl_bench({'device': 'NVIDIA H200', 'results': [
        {'B': 256, 'K': 80, 'M': 128, 'layout': 'aniso var[B,K,D]', 'kernelMs': 0.25, 'totalMs': 1.5, 'peakMiB': 40, 'cpuMs': None},
        {'B': 64, 'K': 20, 'M': 1, 'layout': 'iso var[B,K,1]', 'kernelMs': 0.05, 'totalMs': 0.4, 'peakMiB': 1},
        {'B': 64, 'K': 20, 'M': 128, 'layout': 'aniso var[B,K,D]', 'kernelMs': None, 'totalMs': None, 'cpuMs': 3.0},
        {'B': 1, 'K': 1},
    ]})
    assert [(r['B'], r['K'], r['M'], r['D'], r['kernelMs'], r['totalMs']) for r in rows] == [(256, 80, 128, 128, 0.25, 1.5), (64, 20, 1, 1, 0.05, 0.4)], rows
    global eager_fits
    real, tried = eager_fits, []
    eager_fits = lambda B, K, M, D: (tried.append(B) or (B <= 700, ''))  # noqa: E731
    try:
        m = max_batch_eager(80, 128, 128)
    finally:
        eager_fits = real
    assert m['bounded'] and m['maxBatch'] <= 700 and m['firstFailure'] > 700 and m['firstFailure'] - m['maxBatch'] <= 700 // 32 + 8, m
    assert tried[:6] == [32, 64, 128, 256, 512, 1024], tried
    res = {'device': {'name': 'GPU', 'memoryGiB': 80, 'torch': 't', 'cuda': 'c', 'host': 'h'}, 'date': 'd', 'commit': 'c',
           'command': 'cmd', 'fixtureCheck': 'all fixtures match', 'notes': ['a note'],
           'timing': [{'B': 256, 'K': 80, 'M': 128, 'D': 128, 'eager': {'status': 'ok', 'medianMs': 40.0, 'peakBytes': 3 * 2**30},
                       'kmclKernelMs': 0.25, 'kmclTotalMs': 1.6, 'kmclAddonMs': 2.0},
                      {'B': 512, 'K': 80, 'M': 64, 'D': 64, 'eager': {'status': 'oom', 'reason': 'x'}}],
           'maxBatch': [{'K': 80, 'M': 128, 'D': 128, 'eager': {'maxBatch': 688, 'bounded': True},
                         'kmcl': {'maxBatch': 65536, 'bounded': False, 'stop': 'reached the search cap 65536'}}]}
    md = markdown(res)
    for want in ('| 256 | 80 | 128 | 128 | 40 | 3072 | 0.25 | 160× | 1.6 | 25× | 2 |', '| 512 | 80 | 64 | 64 | OOM | — | — | — | — | — | — |',
                 '| 80 | 128 | 128 | 688 | ≥ 65536 (reached the search cap 65536) | ≥ 95.3× |', '- a note'):
        assert want in md, (want, md)
    print('compare_gpu self-test: 1 passed, 0 failed')
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description='eager PyTorch vs kmcl CUDA on one GPU')
    ap.add_argument('--out', default=os.environ.get('OUT', 'bench/results'))
    ap.add_argument('--quick', action='store_true', help='B in {64, 256} only, one max-batch config')
    ap.add_argument('--kmcl-bench', default=None, help='path of kmcl_bench (default: build*/kmcl_bench)')
    ap.add_argument('--kmcl-cap', type=int, default=65536, help='largest B the kmcl max-batch search tries')
    ap.add_argument('--skip-kmcl-bench', action='store_true')
    ap.add_argument('--self-test', action='store_true', help='check the driver logic (no GPU, no torch needed)')
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    os.makedirs(args.out, exist_ok=True)

    import torch
    if not torch.cuda.is_available():
        log('compare_gpu: no CUDA device visible to torch; nothing to measure')
        return 2
    props = torch.cuda.get_device_properties(0)
    # The working tree travels to the GPU machine without .git: pass KMCL_COMMIT=<hash>.
    commit = os.environ.get('KMCL_COMMIT') or subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT).stdout.strip() or 'unknown'
    res = {
        'schema': 1,
        'kind': 'compare-gpu',
        'device': {'name': props.name, 'memoryGiB': round(props.total_memory / 2**30, 1), 'torch': torch.__version__,
                   'cuda': torch.version.cuda, 'host': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores'},
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'commit': commit,
        'command': 'python3 bench/baselines/compare_gpu.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
        'notes': [],
    }
    out_json, out_md = os.path.join(args.out, 'compare_gpu.json'), os.path.join(args.out, 'compare_gpu.md')

    def save():
        with open(out_json, 'w') as f:
            json.dump(res, f, indent=2)
        if 'timing' in res and 'maxBatch' in res:
            with open(out_md, 'w') as f:
                f.write(markdown(res))

    # 1. fixtures
    failures = [fx['name'] for fx in torch_eager.load_fixtures() if torch_eager.check_torch(fx, 'float64')[0]]
    res['fixtureCheck'] = 'all fixtures match' if not failures else f'MISMATCH in {", ".join(failures)}'
    log(f'fixtures: {res["fixtureCheck"]}')

    # 2. eager timing over the grid and the target point
    if args.quick:
        points = [{'B': B, 'K': 80, 'M': M, 'D': M} for M in KMCL_BENCH_M for B in (256, 1024)]
    else:
        points = [{'B': B, 'K': K, 'M': M, 'D': M} for K in GRID_K for M in GRID_M for B in GRID_B]
        points += [{'B': B, 'K': K, 'M': M, 'D': M} for K in GRID_K for M in KMCL_BENCH_M for B in KMCL_BENCH_B
                   if not (M == 1 and B in GRID_B)]
    if TARGET not in points:
        points.append(dict(TARGET))
    res['timing'] = []
    for pt in points:
        r = time_eager(pt['B'], pt['K'], pt['M'], pt['D'])
        res['timing'].append({**pt, 'eager': r})
        log(f"eager {pt}: {r.get('medianMs', r['status'])}")
    res['maxBatch'] = []
    save()

    # 3. eager max batch
    for cfg in MAX_BATCH_CONFIGS[:1] if args.quick else MAX_BATCH_CONFIGS:
        m = max_batch_eager(cfg['K'], cfg['M'], cfg['D'])
        res['maxBatch'].append({**cfg, 'eager': m})
        log(f"eager max batch {cfg}: {m['maxBatch']} (first failure {m['firstFailure']})")
        save()

    # 4. kmcl_bench
    path = None if args.skip_kmcl_bench else find_kmcl_bench(args.kmcl_bench)
    if path:
        kb = run_kmcl_bench(path, args.out, args.quick, timeout=240)
        res['kmclBench'] = {k: v for k, v in kb.items() if k != 'rows'}
        for r in res['timing']:
            hit = next((x for x in kb['rows'] if (x['B'], x['K'], x['M'], x['D']) == (r['B'], r['K'], r['M'], r['D'])), None)
            r['kmclKernelMs'] = hit['kernelMs'] if hit else None
            r['kmclTotalMs'] = hit['totalMs'] if hit else None
        res['kmclBenchRows'] = kb['rows']
        if kb['status'] != 'ok' or not kb['rows']:
            res['notes'].append(f"kmcl_bench: {kb['status']} ({kb.get('reason', 'no CUDA rows in its JSON')[:300]})")
    else:
        res['notes'].append('kmcl_bench not found (build it with npm install / cmake; KMCL_NATIVE_TOOLS=ON)')
    save()

    # 5. kmcl through the addon: timing at the same points, max batch
    info = probe(['info'], 60)
    if info.get('error') or not info.get('cuda', {}).get('usable'):
        res['notes'].append(f"kmcl addon probe: {info.get('error') or info.get('cuda', {}).get('reason')}")
    else:
        for r in res['timing']:
            if r['B'] > 4096:
                continue
            t = probe(['time', r['B'], r['K'], r['M'], r['D']], 120)
            r['kmclAddonMs'] = t.get('medianMs')
            if t.get('error'):
                r['kmclAddonError'] = t['error']
        save()
        for m in res['maxBatch']:
            k = probe(['max-batch', m['K'], m['M'], m['D'], args.kmcl_cap, 1024, 30], 300)
            if k.get('error'):
                res['notes'].append(f"kmcl max batch K={m['K']} D={m['D']}: {k['error']}")
                continue
            if k.get('bounded') and not OOM_RE.search(str(k.get('stop', ''))):
                res['notes'].append(f"kmcl max batch K={m['K']} D={m['D']}: stopped by an error, not out of memory: {k.get('stop')}")
            m['kmcl'] = k
            log(f"kmcl max batch {m['K']}/{m['D']}: {k.get('maxBatch')} ({k.get('stop')})")
            save()
    save()
    log(markdown(res))
    return 0


if __name__ == '__main__':
    sys.exit(main())
