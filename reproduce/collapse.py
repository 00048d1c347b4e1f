"""Collapse in VICReg ("Preventing Collapses in Non-Contrastive Self-Supervised Learning", Figures 8 and 11):
without the variance term the embeddings collapse to a point (total collapse); without the covariance term
they keep their scale but span few directions (dimensional collapse).

    python reproduce/collapse.py                 # the shapes CPU recipe, 3 runs: about 2 minutes on 2 cores
    python reproduce/collapse.py --seeds 0 1 2   # mean and spread: about 6 minutes

Three runs of vicreg.py's CPU recipe: the full loss, --std-coeff 0 and --cov-coeff 0, with --track-every 1
(metrics.track each epoch on 1,000 fixed test images). The figure: (a) as the paper's Figure 8, the sorted
eigenvalues of the covariance of the embeddings Z, log scale, at the end of training (test images here;
the paper uses the training set); (b) as its Figure 11, the correlation of Z over training: the paper's
"off-diagonal mean of the correlation matrix" (dashed), whose signs cancel when the dimensions collapse
onto a few directions with both signs, and the mean absolute correlation (AAC, solid), which does not;
(c) the kNN accuracy (dots: seeds) with the random-initialisation and raw-pixel lines; (d) the scale of
the embeddings (the loss's std term) over training.
"""
import math
import os

import harness

# label -> flags; the run's folder is named by the label's first words (full-loss, no-variance, no-covariance)
RUNS = {"full loss": [], "no variance term": ["--std-coeff", "0"], "no covariance term": ["--cov-coeff", "0"]}
QUICK = ["--width", "4", "--train-subset", "256", "--epochs", "3", "--eval-every", "3",
         "--warmup-epochs", "0"]


def main(argv=None):
    a = harness.parser(__doc__, "collapse").parse_args(argv)
    logs = {}
    for label, flags in RUNS.items():
        for seed in a.seeds:
            name = f"{label.replace(' term', '').replace(' ', '-')}-s{seed}"
            folder = harness.train("vicreg", name, [*(QUICK if a.quick else []), *flags, "--seed", str(seed),
                                                    "--track-every", "1"], a)
            logs[label, seed] = harness.log(folder)
    rows = []
    for label in RUNS:
        finals = [logs[label, s][-1] for s in a.seeds]
        row = {"run": label}
        for key in ("embedding_std", "covariance", "aac_Z", "avg_corr_Z", "effective_rank_Z", "knn_acc"):
            harness.put_mean_spread(row, key, [f.get(key) for f in finals])
        row["knn_acc_per_seed"] = [f.get("knn_acc") for f in finals]
        spectrum = finals[0]["spectrum_Z"]
        row["top_eigenvalue_share"] = spectrum[0] / sum(spectrum)
        rows.append(row)
    full = logs["full loss", a.seeds[0]][-1]["spectrum_Z"]
    flat = logs["no variance term", a.seeds[0]][-1]["spectrum_Z"]
    decades = [math.log10(max(f, 1e-30) / max(v, 1e-30)) for f, v in zip(full, flat)]
    four = next((i for i, d in enumerate(decades) if d < 4), len(decades))  # the top `four` fall >= 4 decades
    rows[1]["eigenvalues_down_4_decades"] = f"top {four} of {len(decades)} (seed {a.seeds[0]})"
    rows[1]["decades_down_at_index_1_half_last"] = [round(decades[i], 1) for i in (0, len(decades) // 2, -1)]
    harness.table(rows, os.path.join(a.out, "collapse.json"),
                  f"VICReg on shapes, final epoch, seeds {a.seeds} (mean; _sd: spread over seeds)")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, axes = harness.figure(plt, 2, 2, width=12, height=9)
    init = logs["full loss", a.seeds[0]][0]["knn_acc"]
    for j, label in enumerate(RUNS):
        c, m = harness.COLORS[j], harness.MARKERS[j]
        log = logs[label, a.seeds[0]]
        eigenvalues = [max(e, 1e-12) for e in log[-1]["spectrum_Z"]]
        axes[0].semilogy(range(1, len(eigenvalues) + 1), eigenvalues, color=c, label=label)
        tracked = [r for r in log if r.get("aac_Z") is not None]
        epochs = [r["epoch"] for r in tracked]
        axes[1].plot(epochs, [r["aac_Z"] for r in tracked], marker=m, color=c, label=label)
        axes[1].plot(epochs, [r["avg_corr_Z"] for r in tracked], ls="--", color=c)
        harness.seed_dots(axes[2], j, [logs[label, s][-1]["knn_acc"] for s in a.seeds], c, m, label=label)
        # the loss's own std term, epochs 1 on
        scaled = [r for r in log if r.get("embedding_std") is not None]
        axes[3].semilogy([r["epoch"] for r in scaled],
                         [max(r["embedding_std"], 1e-12) for r in scaled], marker=m,
                         color=c, label=label)
    axes[0].set(xlabel=f"eigenvalue index (sorted, of {len(full)})",
                ylabel="eigenvalue of the covariance of Z")
    harness.verdict(axes[0], "Figure 8: spectrum of the embeddings at the end",
                    f"no variance: top {four} of {len(full)} fall 4+ decades; no covariance: one dominates")
    axes[0].legend(loc="lower left")
    axes[1].plot([], [], ls="--", color="0.3", label="signed mean (dashed)")
    axes[1].set(xlabel="epoch (0: random initialisation)", ylabel="correlation of Z, off the diagonal")
    harness.verdict(axes[1], "Figure 11: mean |C_ij| (solid) and mean C_ij",
                    "only |C_ij| shows the dimensional collapse")
    axes[1].legend(loc="center right")
    harness.baseline(axes[2], init, "random initialisation")
    harness.baseline(axes[2], harness.pixel_knn(folder), "raw pixels", color=harness.COLORS[4])
    axes[2].set_xticks(range(len(RUNS)), [label.replace(" term", "\nterm") for label in RUNS])
    axes[2].set(ylabel="kNN accuracy (test)")
    cost = all(r["knn_acc"] < rows[0]["knn_acc"] for r in rows[1:])
    harness.verdict(axes[2],
                    "Accuracy: " + ("both collapses cost it" if cost else "the full loss is not the best"),
                    "no variance ends below random initialisation" if rows[1]["knn_acc"] < init else
                    "no variance stays above random initialisation")
    axes[2].legend(loc="best")
    axes[3].set(xlabel="epoch", ylabel="std of Z per dimension (log)")
    spread = [logs[label, a.seeds[0]][-1]["embedding_std"] for label in RUNS]
    harness.verdict(axes[3], "Scale of the embeddings", "no variance: " + (
        f"{spread[0] / spread[1]:.0f}x smaller than the full loss (total collapse)"
        if spread[1] < spread[0] / 10 else "about the full loss's (no total collapse here)"))
    axes[3].legend(loc="lower left")
    for ax in (axes[1], axes[3]):
        ax.xaxis.get_major_locator().set_params(integer=True)
    harness.save_figure(fig, os.path.join(a.out, "collapse.png"),
                        "Collapses paper: VICReg without its variance or covariance term (shapes, "
                        f"{harness.seeds_text(a.seeds)})")
    return rows


if __name__ == "__main__":
    main()
