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
onto a few directions with both signs, and the mean absolute correlation (AAC, solid), which does not.
"""
import os

import harness

RUNS = {"full loss": [], "no variance (--std-coeff 0)": ["--std-coeff", "0"],
        "no covariance (--cov-coeff 0)": ["--cov-coeff", "0"]}
QUICK = ["--width", "4", "--train-subset", "256", "--epochs", "3", "--eval-every", "3", "--warmup-epochs", "0"]


def main(argv=None):
    a = harness.parser(__doc__, "collapse").parse_args(argv)
    logs = {}
    for label, flags in RUNS.items():
        for seed in a.seeds:
            name = f"{label.split(' (')[0].replace(' ', '-')}-s{seed}"
            folder = harness.train("vicreg", name, [*(QUICK if a.quick else []), *flags, "--seed", str(seed),
                                                    "--track-every", "1"], a)
            logs[label, seed] = harness.log(folder)
    rows = []
    for label in RUNS:
        finals = [logs[label, s][-1] for s in a.seeds]
        row = {"run": label}
        for key in ("embedding_std", "covariance", "aac_Z", "avg_corr_Z", "effective_rank_Z", "knn_acc"):
            harness.put_mean_spread(row, key, [f.get(key) for f in finals])
        spectrum = finals[0]["spectrum_Z"]
        row["top_eigenvalue_share"] = spectrum[0] / sum(spectrum)
        rows.append(row)
    harness.table(rows, os.path.join(a.out, "collapse.json"),
                  f"VICReg on shapes, final epoch, seeds {a.seeds} (mean; _sd: spread over seeds)")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label in RUNS:
        final = logs[label, a.seeds[0]][-1]
        eigenvalues = [max(e, 1e-12) for e in final["spectrum_Z"]]
        left.semilogy(range(1, len(eigenvalues) + 1), eigenvalues, label=label)
        rows_ = [r for r in logs[label, a.seeds[0]][1:] if r.get("aac_Z") is not None]
        line, = right.plot([r["epoch"] for r in rows_], [r["aac_Z"] for r in rows_], marker="o", label=label)
        right.plot([r["epoch"] for r in rows_], [r["avg_corr_Z"] for r in rows_], ls="--", color=line.get_color())
    left.set(xlabel="index (sorted)", ylabel="eigenvalue of the covariance of Z (log)",
             title="as Figure 8: spectrum of the embeddings")
    right.set(xlabel="epoch", ylabel="mean |C_ij| (solid), mean C_ij (dashed)",
              title="as Figure 11: correlation over training")
    right.xaxis.get_major_locator().set_params(integer=True)
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle('"Preventing Collapses in Non-Contrastive SSL": VICReg without its variance or covariance term '
                 f"(shapes, seed {a.seeds[0]})", fontsize=9)
    harness.save_figure(fig, os.path.join(a.out, "collapse.png"))
    return rows


if __name__ == "__main__":
    main()
