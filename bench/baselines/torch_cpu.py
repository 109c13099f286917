#!/usr/bin/env python3
"""Eager PyTorch on the CPU against kmcl's float32 CPU path, side by side on the same inputs.

    python3 bench/baselines/torch_cpu.py [--bench build/kmcl_cpu_bench] [--rounds 3] [--out DIR]
                                         [--config B,K,M,D ...]

For each problem (default: the issue's two targets, isotropic B=256 K=20 M=128 and anisotropic
B=128 K=20 M=64, per-class variance), seeded as compare_gpu.make_problem (bench/grid.ts's
distribution): the inputs are written to DIR/<name>/ as raw float32, then, `--rounds` times in
turn, (1) eager PyTorch fwd+bwd (torch_eager.kmcl_loss + torch.autograd.grad, float32,
torch.set_num_threads(2), OMP_WAIT_POLICY=PASSIVE unless set) in a fresh python process without and (2) with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages for malloc: the peer at its best),
and (3) kmcl_cpu_bench --problem on the same files for every instruction set. Each reports its
median; the table gives the median of the rounds, PyTorch's better setting as the peer, and the
loss of each side (they must agree to 1e-5 relative: both are float32).

Without an importable torch it prints why and exits 0 (a skipped baseline, not a failure).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, HERE)

DEFAULT_CONFIGS = [(256, 20, 128, 1), (128, 20, 64, 64)]


def torch_child(problem_dir: str, min_reps: int, min_ms: float) -> dict:
    """Runs in a fresh process: times eager fwd+bwd on the problem, prints one JSON line."""
    import numpy as np
    import torch
    import torch_eager
    torch.set_num_threads(2)
    with open(os.path.join(problem_dir, 'meta.txt')) as f:
        B, K, M, D, Kv, Dv = (int(x) for x in f.read().split()[:6])
    shapes = {'features': (B, M), 'logits': (B, K), 'labels': (B, K), 'mu': (B, K, D), 'variance': (B, Kv, Dv)}
    p = {k: torch.from_numpy(np.fromfile(os.path.join(problem_dir, k + '.f32'), dtype=np.float32).reshape(s))
         for k, s in shapes.items()}

    def step():
        leaves = [p[k].detach().clone().requires_grad_(True) for k in ('features', 'logits', 'mu', 'variance')]
        loss = torch_eager.kmcl_loss(*leaves, p['labels'])['loss']
        torch.autograd.grad(loss, leaves)
        return float(loss)

    loss = step()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start) * 1e3 < min_ms:
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 200:
            break
    return {'ms': statistics.median(times), 'reps': len(times), 'loss': loss, 'threads': torch.get_num_threads(),
            'torch': torch.__version__}


def write_problem(out_dir: str, B: int, K: int, M: int, D: int) -> str:
    import compare_gpu
    p = compare_gpu.make_problem(B, K, M, D, seed=1, device='cpu')
    name = f'B{B}-K{K}-M{M}-D{D}'
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    for k, v in p.items():
        v.contiguous().numpy().astype('float32').tofile(os.path.join(d, k + '.f32'))
    with open(os.path.join(d, 'meta.txt'), 'w') as f:
        f.write(f'{B} {K} {M} {D} {K} {D} nan\n')
    return d


def run_torch(problem_dir: str, huge: bool, min_reps: int, min_ms: float) -> dict:
    env = dict(os.environ)
    env.pop('GLIBC_TUNABLES', None)
    # Worker threads sleep instead of spinning when idle: on a shared machine, spinning OpenMP
    # threads that get preempted make eager PyTorch many times slower than it is on a quiet one.
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    if huge:
        env['GLIBC_TUNABLES'] = 'glibc.malloc.hugetlb=1'
    r = subprocess.run([sys.executable, __file__, '--child', problem_dir, '--min-reps', str(min_reps), '--min-ms', str(min_ms)],
                       env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f'torch child failed: {r.stderr[-2000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_kmcl(bench: str, problem_dir: str, runs: int) -> list[dict]:
    out = os.path.join(problem_dir, 'kmcl.json')
    r = subprocess.run([bench, '--problem', problem_dir, '--isa', 'all', '--threads', '2', '--runs', str(runs), '--min-ms', '500',
                        '--json', out], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f'kmcl_cpu_bench failed: {r.stderr[-2000:]}')
    with open(out) as f:
        return json.load(f)['rows']


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--child', help=argparse.SUPPRESS)
    ap.add_argument('--min-reps', type=int, default=5)
    ap.add_argument('--min-ms', type=float, default=1000.0)
    ap.add_argument('--bench', default=os.path.join(ROOT, 'build', 'kmcl_cpu_bench'))
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'torch_cpu'))
    ap.add_argument('--config', action='append', help='B,K,M,D (D = 1 isotropic, D = M anisotropic)')
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(torch_child(args.child, args.min_reps, args.min_ms)))
        return 0
    try:
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001
        print(f'skipped: python3 cannot import torch ({e}); on Debian: apt-get install python3-torch')
        return 0
    if not os.path.exists(args.bench):
        print(f'kmcl_cpu_bench not found at {args.bench}: build it (npm run build:native builds build/kmcl_cpu_bench)')
        return 1
    configs = [tuple(int(x) for x in c.split(',')) for c in args.config] if args.config else DEFAULT_CONFIGS
    os.makedirs(args.out, exist_ok=True)
    load = os.getloadavg()
    print(f'load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; {args.rounds} rounds', flush=True)
    results = []
    for (B, K, M, D) in configs:
        d = write_problem(args.out, B, K, M, D)
        plain, huge, kmcl = [], [], {}
        for rnd in range(args.rounds):
            plain.append(run_torch(d, False, args.min_reps, args.min_ms))
            huge.append(run_torch(d, True, args.min_reps, args.min_ms))
            for row in run_kmcl(args.bench, d, 10):
                kmcl.setdefault(row['isa'], []).append(row)
            print(f'  {os.path.basename(d)} round {rnd + 1}: torch {plain[-1]["ms"]:.1f} ms, torch+hugetlb {huge[-1]["ms"]:.1f} ms, '
                  + ', '.join(f'kmcl {isa} {rows[-1]["fwdBwdMs"]:.3f} ms' for isa, rows in kmcl.items()), flush=True)
        tp = statistics.median(r['ms'] for r in plain)
        th = statistics.median(r['ms'] for r in huge)
        peer = min(tp, th)
        res = {'B': B, 'K': K, 'M': M, 'D': D, 'torchMs': tp, 'torchHugeMs': th, 'peerMs': peer, 'torchLoss': plain[0]['loss'],
               'torch': plain[0]['torch'], 'torchThreads': plain[0]['threads'], 'kmcl': {}}
        for isa, rows in kmcl.items():
            ms = statistics.median(r['fwdBwdMs'] for r in rows)
            res['kmcl'][isa] = {'ms': ms, 'loss': rows[0]['loss'], 'speedup': peer / ms,
                                'lossRelDiff': abs(rows[0]['loss'] - plain[0]['loss']) / abs(plain[0]['loss'])}
        results.append(res)
    load = os.getloadavg()
    print(f'load average at end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}')
    print('\n| problem | eager PyTorch (ms) | PyTorch + hugetlb (ms) | kmcl ISA | kmcl (ms) | peer / kmcl | loss rel. diff |')
    print('| --- | ---: | ---: | --- | ---: | ---: | ---: |')
    for r in results:
        kind = 'iso' if r['D'] == 1 else 'aniso'
        for isa, k in r['kmcl'].items():
            print(f'| {kind} B={r["B"]} K={r["K"]} M={r["M"]} | {r["torchMs"]:.1f} | {r["torchHugeMs"]:.1f} | {isa} | {k["ms"]:.3f} | '
                  f'{k["speedup"]:.0f}× | {k["lossRelDiff"]:.1e} |')
    with open(os.path.join(args.out, 'torch_cpu.json'), 'w') as f:
        json.dump({'results': results, 'torch': results[0]['torch'] if results else None}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
