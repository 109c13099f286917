#!/usr/bin/env python3
"""The KMCL loss in eager PyTorch, written from docs/kmcl-loss.md the way a typical user would:
vectorised, materialising the [B, B, K, D] pairwise terms, autograd for the gradients.

This is the GPU baseline of bench/baselines/compare_gpu.py. The loss is written once against a
small array namespace (`xp`): `TorchOps` runs it in PyTorch (with autograd), `NumpyOps` runs the
very same code in numpy, so the vectorised formula can be checked against the float64 fixtures
on a machine without PyTorch (the numpy check differentiates it by central differences).

    python3 bench/baselines/torch_eager.py --check            # numpy, and torch when importable
    python3 bench/baselines/torch_eager.py --check --numpy    # numpy only
    python3 bench/baselines/torch_eager.py --check --torch    # torch only (float64 autograd)

With torch, the same fixtures also run in float32 (what the GPU baseline computes), reported but
not counted: the eager float32 formula loses the tiny features gradient of underflow-stable.

Exit status 0 when every fixture matches: loss terms within 1e-7 relative (1e-9 absolute near
zero), gradients within 1e-4 in ||g - g_ref|| / ||g_ref||, the fixtures' suggested tolerance.
(The fixtures' finite differences are good to about 1e-8 relative except where gradients are tiny:
in underflow-stable, d/dfeatures is ~1e-5 and its reference is off by 5e-5 relative; kmcl's own
float64 path and this code agree with each other there to 1e-12.)
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, '..', '..', 'test', 'fixtures')

# The spec's options and defaults ("Options and defaults"), by the spec's names.
DEFAULTS = {
    'temperature': 0.17,
    'gammaNeg': 4.0,
    'gammaPos': 0.0,
    'clip': 0.05,
    'eps': 1e-7,
    'logEps': 1e-7,
    'detachFocalWeight': True,
    'distanceScale': 1.0,
    'stableReconstruction': True,
    'weights': {'asl': 1.0, 'reconstruction': 1.0, 'contrastive': 1.0},
}

FLT_MIN = 1.17549e-38


def resolve_options(options: dict | None) -> dict:
    o = dict(DEFAULTS)
    for k, v in (options or {}).items():
        if k not in DEFAULTS:
            raise ValueError(f'unknown option {k!r}')
        o[k] = v
    o['weights'] = {**DEFAULTS['weights'], **(options or {}).get('weights', {})}
    return o


class TorchOps:
    """The torch functions the loss uses, under the names it calls them by."""

    def __init__(self):
        import torch
        import torch.nn.functional as F
        self.torch, self.F = torch, F

    def sigmoid(self, x): return self.torch.sigmoid(x)
    def logsigmoid(self, x): return self.F.logsigmoid(x)
    def log(self, x): return self.torch.log(x)
    def exp(self, x): return self.torch.exp(x)
    def sqrt(self, x): return self.torch.sqrt(x)
    def clamp(self, x, min=None, max=None): return self.torch.clamp(x, min=min, max=max)
    def pow(self, x, e): return self.torch.pow(x, e)
    def sum(self, x, axis=None): return x.sum() if axis is None else x.sum(dim=axis)
    def mean(self, x): return x.mean()
    def logsumexp(self, x, axis): return self.torch.logsumexp(x, dim=axis)
    def where(self, cond, x, fill): return self.torch.where(cond, x, self.torch.full_like(x, fill))
    def eye_like(self, n, like): return self.torch.eye(n, dtype=like.dtype, device=like.device)
    def matmul_t(self, a, b): return a @ b.T
    def to_float(self, x): return x.to(self.torch.get_default_dtype()) if not x.is_floating_point() else x
    def detach(self, x): return x.detach()


class NumpyOps:
    """The same names in numpy (no autograd: `detach` is the identity, see `kmcl_loss`)."""

    def __init__(self):
        import numpy as np
        self.np = np

    def sigmoid(self, x): return 1.0 / (1.0 + self.np.exp(-x))
    def logsigmoid(self, x): return -self.np.logaddexp(0.0, -x)
    def log(self, x): return self.np.log(x)
    def exp(self, x): return self.np.exp(x)
    def sqrt(self, x): return self.np.sqrt(x)

    def clamp(self, x, min=None, max=None):
        if min is not None: x = self.np.maximum(x, min)
        if max is not None: x = self.np.minimum(x, max)
        return x

    def pow(self, x, e): return self.np.power(x, e)
    def sum(self, x, axis=None): return x.sum(axis=axis)
    def mean(self, x): return x.mean()

    def logsumexp(self, x, axis):
        m = x.max(axis=axis, keepdims=True)
        return (m + self.np.log(self.np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)

    def where(self, cond, x, fill): return self.np.where(cond, x, fill)
    def eye_like(self, n, like): return self.np.eye(n, dtype=like.dtype)
    def matmul_t(self, a, b): return a @ b.T
    def to_float(self, x): return x.astype(self.np.float64) if x.dtype.kind != 'f' else x
    def detach(self, x): return x


def kmcl_loss(features, logits, mu, variance, labels, options=None, xp=None, focal_logits=None):
    """The KMCL loss terms {loss, asl, reconstruction, contrastive} (spec sections 1-3).

    features [B, M], logits [B, K], mu [B, K, D] (D = 1 or M), variance [B, Kv, Dv]
    (Kv in {1, K}, Dv in {1, D}), labels [B, K] of 0/1. `focal_logits` (numpy finite differences
    only) stands in for the detached logits of the ASL focal weight.
    """
    xp = xp or TorchOps()
    o = resolve_options(options)
    y = xp.to_float(labels)
    B, M = features.shape
    D = mu.shape[2]

    # 1. Asymmetric loss, as in the ASL reference implementation.
    p = xp.sigmoid(logits)
    p_neg = 1 - p
    if o['clip'] > 0:
        p_neg = xp.clamp(p_neg + o['clip'], max=1)
    los = y * xp.log(xp.clamp(p, min=o['eps'])) + (1 - y) * xp.log(xp.clamp(p_neg, min=o['eps']))
    if o['gammaNeg'] > 0 or o['gammaPos'] > 0:
        if o['detachFocalWeight'] or focal_logits is not None:
            a = xp.detach(logits) if focal_logits is None else focal_logits
            pw = xp.sigmoid(a)
            pw_neg = xp.clamp(1 - pw + o['clip'], max=1) if o['clip'] > 0 else 1 - pw
        else:
            pw, pw_neg = p, p_neg
        pt = pw * y + pw_neg * (1 - y)
        gamma = o['gammaPos'] * y + o['gammaNeg'] * (1 - y)
        los = los * xp.pow(1 - pt, gamma)
    asl = -xp.sum(los)

    # 2. Kernel reconstruction: E_ik = -1/2 sum_m (z_im - mu_ik,m)^2 / v_ik,m.
    E = -0.5 * xp.sum((features[:, None, :] - mu) ** 2 / variance, axis=2)  # [B, K]
    neg_log_eps = -math.log(o['eps'])
    if o['stableReconstruction']:
        s = xp.logsigmoid(logits) + E
        # log r_i = LSE over positives - LSE over all; a row without positives gets a finite
        # stand-in for log 0, so r_i ~ 0 and the clamp below makes it the constant -log(eps).
        minus_log_r = xp.logsumexp(s, 1) - xp.logsumexp(xp.where(y > 0, s, -1e30), 1)
        reconstruction = xp.mean(xp.clamp(minus_log_r, max=neg_log_eps))
    else:
        e = xp.clamp(xp.exp(E), min=FLT_MIN)
        r = xp.sum(y * p * e, 1) / xp.sum(p * e, 1)
        reconstruction = xp.mean(-xp.log(xp.clamp(r, min=o['eps'])))

    # 3. Contrastive loss over Bhattacharyya coefficients: every (i, j, k, d) at once.
    mu_i, mu_j = mu[:, None], mu[None, :]                      # [B, 1, K, D], [1, B, K, D]
    v_i, v_j = variance[:, None], variance[None, :]            # [B, 1, Kv, Dv], [1, B, Kv, Dv]
    v_sum = v_i + v_j
    t = 0.25 * (mu_i - mu_j) ** 2 / v_sum + 0.5 * xp.log(v_sum / (2 * xp.sqrt(v_i * v_j)))  # [B, B, K, D]
    dist = o['distanceScale'] * (M / D) * xp.sum(t, 3)          # isotropic: all M dims equal
    bc = xp.exp(-dist)                                          # [B, B, K]
    e = xp.exp(bc / o['temperature'])
    off = 1 - xp.eye_like(B, bc)                                # j != i
    S = xp.sum(e * off[:, :, None], 1)                          # S_ik = sum_{l != i} e_ilk
    S = xp.where(S > 0, S, 1.0)                                 # B = 1: no pairs at all
    inter = xp.matmul_t(y, y)                                   # |y_i ^ y_j|
    count = xp.sum(y, 1)
    union = count[:, None] + count[None, :] - inter
    J = inter / xp.clamp(union, min=1) * off                    # Jaccard, 0 on the diagonal
    n_anchor = xp.sum(xp.to_float(J > 0), 1)                    # |A(i)|
    co_pos = y[:, None, :] * y[None, :, :] * off[:, :, None]    # y_ik y_jk, j != i
    x = J[:, :, None] * e / S[:, None, :]
    per_anchor = xp.sum(xp.sum(co_pos * xp.log(x + o['logEps']), 2), 1) / xp.clamp(n_anchor, min=1)
    contrastive = -xp.sum(per_anchor) / B

    w = o['weights']
    loss = w['asl'] * asl + w['reconstruction'] * reconstruction + w['contrastive'] * contrastive
    return {'loss': loss, 'asl': asl, 'reconstruction': reconstruction, 'contrastive': contrastive}


def fwd_bwd(features, logits, mu, variance, labels, options=None):
    """One training step's worth of loss work in torch: the loss and its four gradients."""
    import torch
    leaves = [t.requires_grad_(True) for t in (features, logits, mu, variance)]
    loss = kmcl_loss(*leaves, labels, options)['loss']
    grads = torch.autograd.grad(loss, leaves)
    return loss, grads


# ---- the fixture check ----

def load_fixtures():
    out = []
    for path in sorted(glob.glob(os.path.join(FIXTURES, '*.json'))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def _arrays(fx, make):
    sh, inp = fx['shapes'], fx['inputs']
    return {k: make(inp[k], sh[k]) for k in ('features', 'logits', 'mu', 'variance', 'labels')}


def _rel_norm(g, ref):
    num = math.sqrt(sum((a - b) ** 2 for a, b in zip(g, ref)))
    den = math.sqrt(sum(b * b for b in ref))
    return num if den == 0 else num / den


def _term_ok(actual, expected, rel=1e-7, floor=1e-9):
    return abs(actual - expected) <= max(rel * abs(expected), floor)


GRADS = ('features', 'logits', 'mu', 'variance')
TERMS = ('loss', 'asl', 'reconstruction', 'contrastive')


def check_numpy(fx, dtype='float64') -> tuple[list[str], float]:
    """Terms, and gradients by central differences with the focal weight frozen where detached."""
    import numpy as np
    xp = NumpyOps()
    a = _arrays(fx, lambda v, s: np.array(v, dtype=np.float64).reshape(s))
    o = fx['options']
    frozen = a['logits'].copy() if o.get('detachFocalWeight', True) else None
    errors, worst = [], 0.0
    terms = kmcl_loss(a['features'], a['logits'], a['mu'], a['variance'], a['labels'], o, xp, frozen)
    for t in TERMS:
        if not _term_ok(float(terms[t]), fx['expected'][t]):
            errors.append(f"{t}: {float(terms[t])!r} vs {fx['expected'][t]!r}")
    for g in GRADS:
        x = a[g]
        grad = np.zeros_like(x).ravel()
        flat = x.ravel()  # a view: writing it moves the input
        for j in range(flat.size):
            h = 1e-4 * max(1.0, abs(flat[j]))
            keep = flat[j]
            flat[j] = keep + h
            up = float(kmcl_loss(a['features'], a['logits'], a['mu'], a['variance'], a['labels'], o, xp, frozen)['loss'])
            flat[j] = keep - h
            down = float(kmcl_loss(a['features'], a['logits'], a['mu'], a['variance'], a['labels'], o, xp, frozen)['loss'])
            flat[j] = keep
            grad[j] = (up - down) / (2 * h)
        err = _rel_norm(grad.tolist(), fx['gradients'][g])
        worst = max(worst, err)
        if not err < 1e-4:
            errors.append(f'd/d{g}: relative error {err:.2e}')
    return errors, worst


def check_torch(fx, dtype='float64') -> tuple[list[str], float]:
    """Terms and autograd gradients, in float64 (tight) or float32 (the fixtures' float32 tolerances)."""
    import torch
    dt = getattr(torch, dtype)
    rel, floor = (1e-7, 1e-9) if dtype == 'float64' else (1e-5, 1e-6)
    a = _arrays(fx, lambda v, s: torch.tensor(v, dtype=dt).reshape(s))
    leaves = [a[g].clone().requires_grad_(True) for g in GRADS]
    terms = kmcl_loss(*leaves, a['labels'], fx['options'], TorchOps())
    grads = torch.autograd.grad(terms['loss'], leaves, allow_unused=True)
    errors, worst = [], 0.0
    for t in TERMS:
        if not _term_ok(float(terms[t]), fx['expected'][t], rel, floor):
            errors.append(f"{t}: {float(terms[t])!r} vs {fx['expected'][t]!r}")
    for g, leaf, grad in zip(GRADS, leaves, grads):
        gl = (torch.zeros_like(leaf) if grad is None else grad).reshape(-1).tolist()
        if not all(math.isfinite(v) for v in gl):
            errors.append(f'd/d{g}: not finite')
            continue
        err = _rel_norm(gl, fx['gradients'][g])
        worst = max(worst, err)
        if not err < 1e-4:
            errors.append(f'd/d{g}: relative error {err:.2e}')
    return errors, worst


def run_check(backends) -> int:
    fixtures = load_fixtures()
    if not fixtures:
        print(f'no fixtures in {FIXTURES}', file=sys.stderr)
        return 1
    failed = 0
    for backend, dtype in backends:
        check = check_numpy if backend == 'numpy' else check_torch
        for fx in fixtures:
            errors, worst = check(fx, dtype)
            if dtype == 'float32':
                # Informational: how the eager float32 baseline (what the GPU runs) fares.
                status = f'worst gradient error {worst:.1e}' + (' (outside the float32 tolerance: ' + '; '.join(errors) + ')' if errors else '')
                print(f'{backend} {dtype} {fx["name"]}: {status}')
                continue
            status = f'ok (worst gradient error {worst:.1e})' if not errors else 'FAIL: ' + '; '.join(errors)
            print(f'{backend} {dtype} {fx["name"]}: {status}')
            failed += bool(errors)
    checked = len(fixtures) * sum(1 for _, d in backends if d == 'float64')
    print(f'{checked - failed} passed, {failed} failed')
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help='check against test/fixtures/*.json')
    ap.add_argument('--numpy', action='store_true', help='numpy only')
    ap.add_argument('--torch', action='store_true', help='torch only')
    args = ap.parse_args(argv)
    if not args.check:
        ap.print_help()
        return 2
    backends = []
    if not args.torch:
        backends.append(('numpy', 'float64'))
    if not args.numpy:
        try:
            import torch  # noqa: F401
            backends += [('torch', 'float64'), ('torch', 'float32')]
        except ImportError:
            if args.torch:
                print('torch is not importable here', file=sys.stderr)
                return 2
            print('torch: not importable here, checked with numpy only')
    return run_check(backends)


if __name__ == '__main__':
    sys.exit(main())
