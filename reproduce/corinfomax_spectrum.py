"""CorInfoMax keeps every direction of its projections alive (thesis "Self-Supervised Learning with an
Information Maximization Criterion", Figure 5.3), and its training LDMI rises with the test accuracy
(Figures 5.1 and 5.2).

    python reproduce/corinfomax_spectrum.py      # 2 runs of the shapes CPU recipe: about 1 minute on 2 cores
    python reproduce/corinfomax_spectrum.py --seeds 0 1 2   # mean and spread: about 4 minutes

Two runs with the same projector (hidden 256, output 32) and the `moderate` augmentation: corinfomax.py's
CPU recipe and simclr.py's (--proj-hidden 256 --proj-dim 32). Dimensional collapse in contrastive learning
comes with strong augmentation (Jing et al. 2022): with the recipes' weak `small` policy SimCLR's spectrum
does not collapse at this scale, with `moderate` it does. --eval-every 1 gives a kNN accuracy per epoch.
The figure: (a) as Figure 5.3, the sorted eigenvalues of the covariance of the L2-normalised projections of
2,000 test images, log scale; (b, c) as Figures 5.1-5.2, CorInfoMax's training LDMI (the loss's own
running estimates, thesis eq. 3.6) and, on its own axis, its kNN test accuracy per epoch from epoch 0.
"""
import math
import os

import torch

import harness
import metrics

QUICK = ["--width", "4", "--train-subset", "256", "--epochs", "3", "--warmup-epochs", "0"]


def main(argv=None):
    a = harness.parser(__doc__, "corinfomax_spectrum").parse_args(argv)
    common = ["--policy", "moderate", "--eval-every", "1", *(QUICK if a.quick else [])]
    folders = {}
    for seed in a.seeds:
        folders["corinfomax", seed] = harness.train("corinfomax", f"corinfomax-s{seed}",
                                                    [*common, "--seed", str(seed)], a)
        folders["simclr", seed] = harness.train("simclr", f"simclr-s{seed}", [*common, "--seed", str(seed),
                                                "--proj-hidden", "256", "--proj-dim", "32"], a)
    spectra, rows = {}, []
    for method in ("corinfomax", "simclr"):
        ratios, ranks, knns = [], [], []
        for seed in a.seeds:
            (r, z), _, _ = harness.features(folders[method, seed])
            lam = metrics.covariance_eigenvalues(torch.nn.functional.normalize(z.double(), dim=1))
            spectra.setdefault(method, lam.tolist())
            ratios.append((lam[-1] / lam.mean()).item())
            ranks.append(metrics.effective_rank_centered(z))
            knns.append(harness.results(folders[method, seed])["knn_acc"])
        row = {"method": method}
        for key, values in (("smallest_over_mean_eigenvalue", ratios), ("effective_rank_centred_Z", ranks),
                            ("knn_acc", knns)):
            harness.put_mean_spread(row, key, values)
        rows.append(row)
    curves = {}  # seed -> (log, LDMI per epoch, kNN per epoch) of the CorInfoMax run
    for seed in a.seeds:
        log = harness.log(folders["corinfomax", seed])[1:]
        curves[seed] = log, [r["ldmi"] for r in log], [r["knn_acc"] for r in log]
    firsts, lasts = [c[1][0] for c in curves.values()], [c[1][-1] for c in curves.values()]
    first, last = harness.mean_spread(firsts)[0], harness.mean_spread(lasts)[0]
    rows[0]["ldmi_first_last"] = f"{first:.3g} -> {last:.3g}"
    correlations = [correlation(ldmi, knn) for _, ldmi, knn in curves.values()]
    rows[0]["ldmi_knn_correlation"] = ", ".join("-" if c is None else f"{c:.2f}" for c in correlations)
    log, ldmi, knn = curves[a.seeds[0]]  # the figure: the first seed
    harness.table(rows, os.path.join(a.out, "corinfomax_spectrum.json"),
                  f"projector 256-256-32, `moderate` policy, shapes, seeds {a.seeds} (mean; _sd: spread)")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, axes = harness.figure(plt, 1, 3, width=16, height=5)
    for j, (method, lam) in enumerate(spectra.items()):
        axes[0].semilogy(range(1, len(lam) + 1), [max(v, 1e-12) for v in lam], marker=harness.MARKERS[j],
                         color=harness.COLORS[j], label=method)
    ratio = [r["smallest_over_mean_eigenvalue"] for r in rows]
    axes[0].set(xlabel=f"eigenvalue index (sorted, of {len(spectra['corinfomax'])})",
                ylabel="eigenvalue of the covariance of the projections")
    harness.verdict(axes[0], "Figure 5.3: spectrum of the projections",
                    f"smallest / mean: {ratio[0]:.2g} vs {ratio[1]:.2g}: "
                    + ("held" if ratio[0] > 10 * ratio[1] else "not at this scale"))
    axes[0].legend()
    epochs = [r["epoch"] for r in log]
    axes[1].plot(epochs, ldmi, color=harness.COLORS[0], marker="o")
    axes[1].set(xlabel="epoch", ylabel="training LDMI (nats, thesis eq. 3.6)")
    rises = sum(c[1][-1] > c[1][0] for c in curves.values())
    harness.verdict(axes[1], "Figures 5.1-5.2: CorInfoMax's LDMI rises over training",
                    f"in {rises} of {len(curves)} run{'s' * (len(curves) > 1)}: " + together(rises, len(curves)))
    init = harness.log(folders["corinfomax", a.seeds[0]])[0]["knn_acc"]
    axes[2].plot([0, *epochs], [init, *knn], color=harness.COLORS[1], marker="s", label="kNN accuracy")
    harness.baseline(axes[2], harness.pixel_knn(folders["corinfomax", a.seeds[0]]), "raw pixels",
                     color=harness.COLORS[4])
    harness.baseline(axes[2], init, "random initialisation")
    axes[2].set(xlabel="epoch (0: random initialisation)", ylabel="kNN accuracy (test)")
    tracks = sum(c is not None and c > 0.5 for c in correlations)  # "rises with": a clear positive correlation
    harness.verdict(axes[2], "... together with the accuracy (over epochs)",
                    f"correlation, {harness.seed_list(a.seeds)}: {rows[0]['ldmi_knn_correlation']}: "
                    + together(tracks, len(correlations)))
    axes[2].legend(loc="lower right")
    for ax in axes[1:]:
        ax.xaxis.get_major_locator().set_params(integer=True)
    harness.save_figure(fig, os.path.join(a.out, "corinfomax_spectrum.png"),
                        "CorInfoMax thesis: CorInfoMax vs SimCLR, same projector "
                        f"(shapes, {harness.seeds_text(a.seeds, dots='numbers')})")
    return rows


def together(held, runs):
    """The verdict of a sub-claim that held in `held` of `runs` runs."""
    return "held" if held == runs else "held partly" if held else "not at this scale"


def correlation(x, y):
    """Pearson correlation of two sequences; None when one is constant."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx, sy = math.sqrt(sum((v - mx) ** 2 for v in x)), math.sqrt(sum((v - my) ** 2 for v in y))
    return sum((u - mx) * (v - my) for u, v in zip(x, y)) / (sx * sy) if sx and sy else None


if __name__ == "__main__":
    main()
