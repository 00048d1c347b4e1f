"""Time of every measure of metrics.py on 10,000 x 512 features with realistic correlations, and the
two batched redundancy measures against the per-target Python loops they replace. Not run by CI.

    OMP_NUM_THREADS=2 python benchmarks/metrics.py [--n 10000] [--d 512] [--loop-targets 8]

The per-target loops are timed on a sample of targets (--loop-targets) and extrapolated to all of
them; the script says so in its output. Features: ReLU of a 64-factor Gaussian model with a
decaying spectrum plus noise (non-negative and correlated like pooled ResNet features).
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import metrics as M  # noqa: E402

CPU_TIME = False


def features(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(n, 64, generator=g)
    # decaying spectrum
    mixing = torch.randn(64, d, generator=g) / torch.arange(1, 65).float().sqrt()[:, None]
    r = F.relu(factors @ mixing + 0.5 * torch.randn(n, d, generator=g))
    # a "projector"
    z = r @ torch.randn(d, d, generator=g) / math.sqrt(d) + 0.1 * torch.randn(n, d, generator=g)
    return r, z


def timed(fn):
    """Wall-clock seconds; with --cpu-time, the process's CPU seconds instead (on a busy machine and one
    thread that is close to the wall time the same run would take alone)."""
    clock = time.process_time if CPU_TIME else time.perf_counter
    t = clock()
    fn()
    return clock() - t


def lr_loop(x, targets, ridges, test_fraction=0.2, val_fraction=0.2, seed=0):
    """LR the usual way: for each target its own design matrix X_-j, Gram and solve per ridge value."""
    x = M.zscore(x)
    train, test, fit, val, _ = M._split(len(x), x.shape[1], 1.0, test_fraction, val_fraction, seed)
    out = []
    for j in targets:
        others = torch.cat([torch.arange(j), torch.arange(j + 1, x.shape[1])])

        def ridge(rows, lam):
            a, b = x[rows][:, others], x[rows][:, j]
            return torch.linalg.solve(a.T @ a / len(a) + lam * torch.eye(len(others), dtype=a.dtype),
                                      a.T @ b / len(a))
        val_mse = [(x[val][:, others] @ ridge(fit, lam) - x[val][:, j]).pow(2).mean() for lam in ridges]
        lam = ridges[int(torch.stack(val_mse).argmin())]
        error = (x[test][:, others] @ ridge(train, lam) - x[test][:, j]).pow(2).mean()
        out.append(1 - error / x[test][:, j].pow(2).mean())
    return out


def nlr_loop(x, targets, steps, batch_size=256, lr=1e-3, seed=0):
    """NLR the usual way: one nn.Sequential MLP and one Adam per target, trained one after the other."""
    g = torch.Generator().manual_seed(seed)
    x = M.zscore(x).float()
    train, test, _, _, _ = M._split(len(x), x.shape[1], 1.0, 0.2, 0.2, seed)
    out = []
    for j in targets:
        others = torch.cat([torch.arange(j), torch.arange(j + 1, x.shape[1])])
        inputs, target = x[train][:, others].contiguous(), x[train][:, j]
        net = nn.Sequential(nn.Linear(len(others), 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                            nn.Linear(64, 1))
        # as metrics.py: batching is all that differs
        optimizer = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            idx = torch.randint(len(inputs), (batch_size,), generator=g)
            loss = (net(inputs[idx])[:, 0] - target[idx]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            error = (net(x[test][:, others])[:, 0] - x[test][:, j]).pow(2).mean()
            out.append(1 - error / x[test][:, j].pow(2).mean())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--loop-targets", type=int, default=8, help="targets timed in the per-target loops")
    p.add_argument("--nlr-steps", type=int, default=1000)
    p.add_argument("--skip-measures", action="store_true", help="only the loop comparisons")
    p.add_argument("--cpu-time", action="store_true", help="report process CPU time, not wall time")
    args = p.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}, {'CPU' if CPU_TIME else 'wall-clock'} seconds")
    r, z = features(args.n, args.d)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # first optimizer imports torch._dynamo: not ours
    print(f"features R, Z: {tuple(r.shape)}, {tuple(z.shape)}")
    seconds = {}

    if not args.skip_measures:
        u = F.normalize(r.double(), dim=1)
        cov = torch.cov(u.T)
        m = min(2048, args.n)
        views = (r[:m], r[:m] + 0.1, z[:m], z[:m] + 0.1 * torch.randn(m, args.d))
        w = torch.randn(args.d, 128)
        rows = [("zscore", lambda: M.zscore(r)),
                ("average_absolute_correlation", lambda: M.average_absolute_correlation(r)),
                ("average_correlation", lambda: M.average_correlation(r)),
                ("linear_redundancy (all, 5 ridges)", lambda: M.linear_redundancy(r)),
                ("nonlinear_redundancy (20%, 128-64)",
                 lambda: M.nonlinear_redundancy(r, steps=args.nlr_steps)),
                ("singular_values", lambda: M.singular_values(r)),
                ("effective_rank", lambda: M.effective_rank(r)), ("rankme", lambda: M.rankme(r)),
                ("numerical_rank (512 x 128 weight)", lambda: M.numerical_rank(w)),
                ("eigenvalue_count", lambda: M.eigenvalue_count(r)),
                ("explained_variance_ratio", lambda: M.explained_variance_ratio(r)),
                ("von_neumann_entropy (d x d)", lambda: M.von_neumann_entropy(cov)),
                ("matrix_entropy (d x d)", lambda: M.matrix_entropy(cov)),
                ("renyi2_entropy", lambda: M.renyi2_entropy(u)),
                ("renyi_mutual_information", lambda: M.renyi_mutual_information(r, z)),
                ("logdet_entropy", lambda: M.logdet_entropy(r)),
                ("ld_mutual_information", lambda: M.ld_mutual_information(r, z)),
                ("gaussian_mutual_information", lambda: M.gaussian_mutual_information(r, z, both=True)),
                ("pairwise_distance_entropy", lambda: M.pairwise_distance_entropy(u)),
                ("alignment", lambda: M.alignment(r, z)), ("uniformity", lambda: M.uniformity(r)),
                ("infonce_terms (N = 2048)", lambda: M.infonce_terms(views[2], views[3])),
                ("nearest_negatives", lambda: M.nearest_negatives(r, z)),
                ("unexplained_variance", lambda: M.unexplained_variance(w, r)),
                ("report (R, Z, 2048 views)",
                 lambda: M.report(r, z, torch.randint(0, 10, (args.n,)), views, w.T))]
        print(f"\n{'measure':40s} {'seconds':>8s}")
        for name, fn in rows:
            seconds[name] = timed(fn)
            print(f"{name:40s} {seconds[name]:8.3f}", flush=True)

    g = torch.Generator().manual_seed(1)
    sample = torch.randperm(args.d, generator=g)[:args.loop_targets].tolist()
    ridges = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    ours = (seconds.get("linear_redundancy (all, 5 ridges)")
            or timed(lambda: M.linear_redundancy(r, ridges=ridges)))
    loop = timed(lambda: lr_loop(r, sample, ridges)) * args.d / len(sample)
    print(f"\nLR, all {args.d} targets, 5 ridges: block inverse {ours:.2f} s; per-target loop {loop:.1f} s "
          f"(timed on {len(sample)} targets, extrapolated to {args.d}): {loop / ours:.0f}x")
    k = round(0.2 * args.d)
    ours = (seconds.get("nonlinear_redundancy (20%, 128-64)")
            or timed(lambda: M.nonlinear_redundancy(r, steps=args.nlr_steps)))
    few = sample[:max(1, args.loop_targets // 4)]
    loop = timed(lambda: nlr_loop(r, few, args.nlr_steps)) * k / len(few)
    print(f"NLR, {k} targets, {args.nlr_steps} steps: batched {ours:.1f} s; per-target loop {loop:.1f} s "
          f"(timed on {len(few)} targets, extrapolated to {k}): {loop / ours:.1f}x")


if __name__ == "__main__":
    main()
