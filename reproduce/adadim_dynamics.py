"""The AdaDim paper's dynamics ("AdaDim: Dimensionality Adaptation for SSL Representational Dynamics",
Figures 5a-c and 1b): moving the loss from VICReg (alpha 0) to InfoNCE (alpha 1) lowers both the
dimensionality H(R) of the representation and the mutual information I(R; Z) with the embedding; the
adaptive alpha rises over training; and over a SimCLR run H(R) and I(R; Z) move together, then apart.

    python reproduce/adadim_dynamics.py          # 7 runs of the shapes CPU recipe: about 5 minutes on 2 cores
    python reproduce/adadim_dynamics.py --seeds 0 1 2   # the H(R) trend is small at this scale: 10 minutes

Runs: adadim.py's CPU recipe with --alpha-mode fixed --alpha A --gamma 0 for A in 0, 0.25, 0.5, 0.75, 1
(Figure 5a-b: H(R), I(R; Z) of 2,000 test images at the end), the recipe itself (Figure 5c: alpha per
epoch), and simclr.py's CPU recipe with --track-every 1 (Figure 1b: H(R) and I(R; Z) each epoch). H(R)
is the effective rank of the backbone features (uncentred, as the paper's get_rank), I(R; Z) the order-2
Renyi matrix mutual information (appendix A.6). The figure adds Figure 1a / Table 1's balance: H(R)
against I(R; Z) of every fixed-alpha run, coloured by its kNN accuracy.
"""
import os

import harness
import metrics

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
QUICK = ["--width", "4", "--train-subset", "256", "--epochs", "3", "--eval-every", "3",
         "--warmup-epochs", "0",
         "--proj-hidden", "64", "--proj-dim", "64"]


def main(argv=None):
    a = harness.parser(__doc__, "adadim_dynamics").parse_args(argv)
    quick = QUICK if a.quick else []
    rows = []
    for alpha in ALPHAS:
        h, i, knn = [], [], []
        for seed in a.seeds:
            folder = harness.train("adadim", f"alpha{alpha}-s{seed}",
                                   [*quick, "--alpha-mode", "fixed", "--alpha",
                                   str(alpha), "--gamma", "0", "--seed", str(seed)], a)
            (r, z), _, _ = harness.features(folder)
            h.append(metrics.effective_rank(r))
            i.append(metrics.renyi_mutual_information(r, z))
            knn.append(harness.results(folder)["knn_acc"])
        row = {"alpha": alpha}
        for key, values in (("H(R)", h), ("I(R;Z)", i), ("knn_acc", knn)):
            harness.put_mean_spread(row, key, values)
            row[key + "_per_seed"] = values
        rows.append(row)
    adaptive = harness.log(harness.train("adadim", f"adaptive-s{a.seeds[0]}",
                                         [*quick, "--seed", str(a.seeds[0])], a))
    simclr = harness.log(harness.train("simclr", f"simclr-s{a.seeds[0]}", [*quick, "--seed", str(a.seeds[0]),
                                       "--track-every", "1"], a))
    harness.table(rows, os.path.join(a.out, "adadim_dynamics.json"),
                  f"fixed alpha, gamma 0, shapes, seeds {a.seeds} (mean; _sd: spread over seeds); "
                  f"adaptive alpha per epoch: {[round(r['alpha'], 3) for r in adaptive[1:]]}")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, axes = harness.figure(plt, 2, 3, width=16, height=9.5)
    for ax, key, title, unit in ((axes[0], "H(R)", "Figure 5a: H(R) falls with alpha", "effective rank of R"),
                                 (axes[1], "I(R;Z)", "Figure 5b: I(R; Z) falls with alpha", "nats")):
        for r in rows:
            harness.seed_dots(ax, r["alpha"], r[key + "_per_seed"], harness.COLORS[0])
        ax.plot([r["alpha"] for r in rows], [r[key] for r in rows], color=harness.COLORS[0], lw=1)
        drop, spread = rows[0][key] - rows[-1][key], max(r.get(key + "_sd", 0) for r in rows)
        steady = all(x[key] >= y[key] for x, y in zip(rows, rows[1:]))
        ax.set(xlabel="alpha (fixed; 0: VICReg, 1: InfoNCE)", ylabel=f"{key}, {unit}")
        held = "not at this scale"
        if drop > spread:
            held = "held" if steady and drop > 2 * spread else "held partly"
        size = f"{drop / spread:.1f} spreads" if spread else f"{drop:.2g}, one seed: no spread to weigh it"
        harness.verdict(ax, title, held + f" (drop {size}{'' if steady else ', not steady'})")
    points = [p for r in rows for p in zip(r["H(R)_per_seed"], r["I(R;Z)_per_seed"], r["knn_acc_per_seed"])]
    dots = axes[2].scatter([p[1] for p in points], [p[0] for p in points], c=[p[2] for p in points],
                           cmap="viridis",
                           s=60, edgecolor="0.2", zorder=3)
    fig.colorbar(dots, ax=axes[2], label="kNN accuracy (test)")
    best = max(points, key=lambda p: p[2])
    axes[2].scatter([best[1]], [best[0]], s=220, facecolor="none", edgecolor=harness.COLORS[1], lw=2,
                    label=f"best run (kNN {best[2]:.3f})", zorder=4)
    axes[2].set(xlabel="I(R; Z), nats", ylabel="H(R), effective rank of R")
    middle = 0 < [p for p in points].index(best) // len(a.seeds) < len(rows) - 1
    harness.verdict(axes[2], "Figure 1a / Table 1: the best runs balance H and I",
                    "held: best at a middle alpha" if middle else "not here: best at an end")
    axes[2].legend(loc="lower right")
    axes[3].plot([r["epoch"] for r in adaptive[1:]], [r["alpha"] for r in adaptive[1:]], marker="o",
                 color=harness.COLORS[0])
    axes[3].set(xlabel="epoch", ylabel="alpha (adaptive)", ylim=(0, 1))
    rises = adaptive[-1]["alpha"] > adaptive[1]["alpha"]
    harness.verdict(axes[3], "Figure 5c: the adaptive alpha rises", "held" if rises else "not here")
    tracked = [r for r in simclr if r.get("effective_rank_R") is not None]
    epochs = [r["epoch"] for r in tracked]
    for ax, key, label, unit in ((axes[4], "effective_rank_R", "H(R)", "effective rank of R"),
                                 (axes[5], "renyi_mi_RZ", "I(R; Z)", "nats")):
        ax.plot(epochs, [r[key] for r in tracked], marker="o", color=harness.COLORS[2])
        ax.set(xlabel="epoch (0: random initialisation)", ylabel=f"{label}, {unit}")
        ax.xaxis.get_major_locator().set_params(integer=True)
    h, i = [r["effective_rank_R"] for r in tracked], [r["renyi_mi_RZ"] for r in tracked]
    harness.verdict(axes[4], "Figure 1b, SimCLR: H(R) over training", "rises" if h[-1] > h[0] else "falls")
    harness.verdict(axes[5], "Figure 1b, SimCLR: I(R; Z) over training",
                    ("rises with H(R): the first phase only" if i[-1] > i[0] else "falls") + " (of three)")
    axes[3].xaxis.get_major_locator().set_params(integer=True)
    harness.save_figure(fig, os.path.join(a.out, "adadim_dynamics.png"),
                        "AdaDim paper: dimensionality and information against alpha, and over training "
                        f"(shapes, {harness.seeds_text(a.seeds, curves='adaptive and SimCLR')})")
    return rows


if __name__ == "__main__":
    main()
