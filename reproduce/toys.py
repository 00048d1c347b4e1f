"""Three toy demonstrations, no training, a few seconds each: what the measures of metrics.py see on data
whose answer is known.

    python reproduce/toys.py        # about 20 seconds on one core

(a, b) The SSLPM paper ("Beyond Pairwise Correlations", section 3.2): Example 3.1, X_n = (X_1 + ... +
X_{n-1}) / sqrt(n - 1) with X_1..X_{n-1} independent: every variable is a linear function of the others
(LR = NLR = 1) while AAC = sqrt(n - 1) / C(n, 2) vanishes as n grows (eq. 8): pairwise correlation misses
redundancy shared by many variables. Corollary 3.5's counterexample, X, Y ~ N(0, 1), Z = (X^2 - Y^2) / 2:
AAC = LR = 0, and NLR > 0. The paper's proof says NLR = 1 (eq. 37); only Z is a function of the other two
(X and Y are known from the others up to their sign), so NLR = (0 + 0 + 1) / 3 = 1/3, which is what the
MLP finds (the corollary itself, LR = 0 does not imply NLR = 0, stands).
(c, d) The AdaDim paper's Figure 2 simulation (section 3.1, appendix B.3): R is 1,000 samples of 5
Gaussian clusters (centres uniform in [-10, 10]^m, as scikit-learn's make_blobs) and Z its first n = 2 or
10 principal components; I(R; Z) is the order-2 Renyi matrix mutual information (appendix A.6), averaged
over 5 draws (the paper: 100). More features m (decorrelation: H(R) rises) raise I(R; Z); a larger
cluster spread (uniformity: H(R) rises too) lowers it.
(e) Total and dimensional collapse in two dimensions ("Preventing Collapses in Non-Contrastive SSL",
Figure 8's two failure modes): the same 300 points spread out, collapsed onto a line, collapsed to a
point, with the eigenvalues of their covariance.
"""
import math
import os

import torch

import harness
import metrics

FEATURES = (12, 25, 50, 100)
SPREADS = (0.5, 1.0, 2.0, 4.0, 8.0)


def example_3_1(n, samples, g):
    x = torch.randn(samples, n - 1, generator=g, dtype=torch.float64)
    return torch.cat([x, x.sum(1, keepdim=True) / math.sqrt(n - 1)], 1)


def blobs(samples, m, spread, g, centres=5):
    """make_blobs: `centres` centres uniform in [-10, 10]^m, isotropic Gaussian clusters of std `spread`."""
    c = torch.rand(centres, m, generator=g, dtype=torch.float64) * 20 - 10
    return c[torch.randint(0, centres, (samples,),
                           generator=g)] + spread * torch.randn(samples, m, generator=g,
                                                                                         dtype=torch.float64)


def pca(x, k):
    """x centred, and its projection on its first k principal components."""
    x = x - x.mean(0)
    return x, x @ torch.linalg.svd(x, full_matrices=False)[2][:k].T


def simulate(m, spread, k, draws, g):
    """(I(R; Z), H(R)) averaged over draws: R = blobs(1000, m, spread), Z = its first k components."""
    out = []
    for _ in range(draws):
        r, z = pca(blobs(1000, m, spread, g), k)
        out.append((metrics.renyi_mutual_information(r, z), metrics.effective_rank(r)))
    return [sum(v) / draws for v in zip(*out)]


def main(argv=None):
    a = harness.parser(__doc__, "toys").parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if a.threads:
        torch.set_num_threads(a.threads)
    samples, steps, draws = (1000, 100, 1) if a.quick else (4000, 400, 5)
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (3, 5, 10, 20):
        x = example_3_1(n, samples, g)
        rows.append({"data": f"Example 3.1, n = {n}", "AAC": metrics.average_absolute_correlation(x),
                     "AAC_eq8": math.sqrt(n - 1) / math.comb(n, 2), "LR": metrics.linear_redundancy(x)[0],
                     "NLR": metrics.nonlinear_redundancy(x, fraction=1.0, steps=steps)[0]})
    x, y = torch.randn(2, samples, generator=g, dtype=torch.float64)
    f = torch.stack([x, y, (x ** 2 - y ** 2) / 2], 1)
    nlr, per_feature = metrics.nonlinear_redundancy(f, fraction=1.0, steps=steps)
    rows.append({"data": "Corollary 3.5: X, Y, (X^2 - Y^2)/2", "AAC": metrics.average_absolute_correlation(f),
                 "AAC_eq8": None, "LR": metrics.linear_redundancy(f)[0], "NLR": nlr,
                 "NLR_per_variable": [round(v, 3) for v in per_feature.tolist()]})
    sim = {}
    for k in (2, 10):
        for m in FEATURES:
            sim["features", k, m] = simulate(m, 1.0, k, draws, g)
        for s in SPREADS:
            sim["spread", k, s] = simulate(25, s, k, draws, g)
    for (kind, k, v), (i, h) in sim.items():
        varied = "m" if kind == "features" else "cluster std"
        rows.append({"data": f"AdaDim Figure 2: {varied} = {v}, n = {k}", "I(R;Z)": i, "H(R)": h})
    harness.table(rows, os.path.join(a.out, "toys.json"), "toy data with known answers (no training)")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, axes = harness.figure(plt, 2, 2, width=11, height=8.5)
    ns = [3, 5, 10, 20]
    for j, key in enumerate(("AAC", "LR", "NLR")):
        axes[0].plot(ns, [r[key] for r in rows[:4]], marker=harness.MARKERS[j],
                     color=harness.COLORS[j], label=key)
    axes[0].plot(ns, [r["AAC_eq8"] for r in rows[:4]], ls="--", color="0.4", label="AAC, eq. 8")
    axes[0].set(xlabel="number of variables n", ylabel="redundancy (0 to 1)", ylim=(-0.05, 1.08))
    harness.verdict(axes[0], "Example 3.1: one variable sums the others", "AAC misses it; LR and NLR see it")
    axes[0].legend(loc="center right")
    last = rows[4]
    bars = axes[1].bar(["AAC", "LR", "NLR"], [last["AAC"], last["LR"], last["NLR"]], color=harness.COLORS[:3])
    axes[1].bar_label(bars, labels=[f"{abs(v):.2f}" if abs(v) < 0.005 else f"{v:.2f}" for v in
                                    (last["AAC"], last["LR"], last["NLR"])], fontsize=11)
    harness.baseline(axes[1], 1 / 3, "1/3: only Z is predictable")
    axes[1].set(ylabel="redundancy (0 to 1)", ylim=(-0.05, 1.05))
    harness.verdict(axes[1], "Corollary 3.5: X, Y, Z = (X² - Y²) / 2",
                    "LR = 0, NLR > 0 (1/3, not the proof's 1)")
    axes[1].legend(loc="upper left")
    for ax, kind, values, label in ((axes[2], "features", FEATURES, "number of features m (cluster std 1)"),
                                    (axes[3], "spread", SPREADS, "cluster std (m = 25 features)")):
        for j, k in enumerate((10, 2)):
            ax.plot(values, [sim[kind, k, v][0] for v in values], marker=harness.MARKERS[j],
                    color=harness.COLORS[j],
                    label=f"Z: {k} principal components")
        ax.set(xlabel=label, ylabel="I(R; Z), Renyi order 2 (nats)")
        ax.legend()
    harness.verdict(axes[2], "AdaDim Figure 2a-b: more features, H(R) rises",
                    "I(R; Z) rises (2 components: up to m = 50)")
    harness.verdict(axes[3], "AdaDim Figure 2c-d: more spread, H(R) rises", "I(R; Z) falls")
    axes[3].set_xscale("log", base=2)
    harness.save_figure(fig, os.path.join(a.out, "toys.png"), "Toy data, no training: what the measures see")
    collapse_2d(plt, os.path.join(a.out, "collapse_2d.png"), g)
    return rows


def collapse_2d(plt, path, g):
    """Three clouds of the same 300 points: spread, on a line (dimensional collapse), at a point (total)."""
    x = torch.randn(300, 2, generator=g, dtype=torch.float64)
    clouds = {"healthy: spread in both directions": x,
              "dimensional collapse: one direction":
                  x[:, :1] * torch.tensor([[0.8, 0.6]], dtype=torch.float64) + 0.03 * x[:, 1:],
              "total collapse: one point": 0.02 * x + torch.tensor([0.5, -0.3], dtype=torch.float64)}
    fig, axes = harness.figure(plt, 1, 3, width=13, height=5.4)
    for j, (ax, (title, c)) in enumerate(zip(axes, clouds.items())):
        lam = torch.linalg.eigvalsh(torch.cov(c.T)).flip(0)
        ax.scatter(c[:, 0], c[:, 1], s=8, color=harness.COLORS[j], alpha=0.6)
        ax.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal", xlabel="embedding dimension 1",
               ylabel="embedding dimension 2")
        ax.set_title(f"{title}\ncovariance eigenvalues {lam[0]:.2g}, {lam[1]:.2g}", fontsize=12)
    harness.save_figure(fig, path, "Collapse in two dimensions: read the spectrum's scale and its shape")


if __name__ == "__main__":
    main()
