"""Redundancy against accuracy across methods ("Beyond Pairwise Correlations: Higher-Order Redundancies in
Self-Supervised Representation Learning", Figures 7 and 14, the SSLPM paper's central measurement; also
the CPU analogue of the CorInfoMax thesis' Table 5.1 and of the AdaDim paper's Figure 4): the six methods
of this repository, each with its own CPU recipe and the same seeds, and for each run the kNN accuracy
and the redundancy of its backbone features: AAC (pairwise), LR (linear) and NLR (non-linear).

    python reproduce/redundancy.py               # 6 runs, seed 0: about 4 minutes on 2 cores
    python reproduce/redundancy.py --seeds 0 1 2 # the README's table and figure: about 12 minutes

Runs: `python <method>.py --seed S --eval-every 1` for simclr, vicreg, barlow, corinfomax, sslpm and adadim
(each method's shapes CPU recipe; --eval-every 1 only adds a kNN accuracy per epoch, for the training
curves of reproduce/pictures.py). Measured: AAC, LR and NLR (SSLPM paper section 3.2, metrics.py) of the
backbone features of 2,000 test images, and the final kNN accuracy. Descriptive: six methods are six
points per seed, too few for a test of the paper's trend (lower redundancy, higher accuracy); the
table gives the rank correlation over the runs as a summary, not as evidence.
"""
import json
import os

import harness
import metrics

METHODS = ("simclr", "vicreg", "barlow", "corinfomax", "sslpm", "adadim")
QUICK = ["--width", "4", "--train-subset", "256", "--epochs", "1", "--warmup-epochs", "0"]
MEASURES = ("AAC", "LR", "NLR")


def measure(folder, steps=300):
    """The run's accuracies and redundancies, kept in <run>/redundancy.json (NLR takes a while: a second
    call only redraws)."""
    path = os.path.join(folder, "redundancy.json")
    if os.path.exists(path) and json.load(open(path)).get("nlr_steps") == steps:
        return json.load(open(path))
    (r, _), _, _ = harness.features(folder)
    out = {"knn_acc": harness.results(folder)["knn_acc"],
           "init_knn_acc": harness.results(folder)["init_knn_acc"],
           "AAC": metrics.average_absolute_correlation(r), "LR": metrics.linear_redundancy(r)[0],
           "NLR": metrics.nonlinear_redundancy(r, steps=steps)[0], "nlr_steps": steps}
    with open(path, "w") as f:
        json.dump(out, f)
    return out


def main(argv=None):
    a = harness.parser(__doc__, "redundancy").parse_args(argv)
    measured, folder = {}, None
    for seed in a.seeds:
        for method in METHODS:
            folder = harness.train(method, f"{method}-s{seed}",
                                   [*(QUICK if a.quick else []), "--seed", str(seed),
                                                                 "--eval-every", "1"], a)
            measured[method, seed] = measure(folder, 50 if a.quick else 300)
    rows = []
    for method in METHODS:
        row = {"method": method}
        for key in ("knn_acc", *MEASURES):
            harness.put_mean_spread(row, key, [measured[method, s][key] for s in a.seeds])
        rows.append(row)
    points = list(measured.values())
    accuracy = [p["knn_acc"] for p in points]
    summary = ", ".join(f"{key} {harness.spearman([p[key] for p in points], accuracy):+.2f}"
                        for key in MEASURES)
    harness.table(rows, os.path.join(a.out, "redundancy.json"),
                  f"six methods, their shapes CPU recipes, seeds {a.seeds} (mean; _sd: spread); AAC, LR, NLR "
                  f"of the backbone features of 2,000 test images; rank correlation with kNN over the "
                  f"{len(points)} runs: {summary}")
    plt = harness.pyplot()
    if plt is None:
        return rows
    init = [p["init_knn_acc"] for p in points]
    fig, axes = harness.figure(plt, 2, 2, width=12, height=9.5)
    for ax, key in zip(axes, MEASURES):
        for k, method in enumerate(METHODS):
            xs = [measured[method, s][key] for s in a.seeds]
            ys = [measured[method, s]["knn_acc"] for s in a.seeds]
            ax.scatter(xs, ys, s=55, color=harness.COLORS[k], marker=harness.MARKERS[k],
                       label=method, zorder=3)
        ax.set(xlabel=f"{key} of the backbone features (0 to 1)", ylabel="kNN accuracy (test)")
        rho = summary.split(key + " ")[1].split(",")[0]
        ax.set_title(f"{key} against accuracy\nrank correlation {rho} over {len(points)} runs (descriptive)")
    axes[0].legend(loc="best")
    for k, method in enumerate(METHODS):
        harness.seed_dots(axes[3], k, [measured[method, s]["knn_acc"] for s in a.seeds], harness.COLORS[k],
                          harness.MARKERS[k])
    harness.baseline(axes[3], sum(init) / len(init), "random initialisation")
    harness.baseline(axes[3], harness.pixel_knn(folder), "raw pixels", color=harness.COLORS[4])
    axes[3].set_xticks(range(len(METHODS)), METHODS, rotation=20)
    axes[3].set(ylabel="kNN accuracy (test)")
    axes[3].set_title("kNN accuracy of each method\n(dots: seeds; large: mean)")
    axes[3].legend(loc="lower right")
    harness.save_figure(fig, os.path.join(a.out, "redundancy.png"),
                        f"Redundancy against accuracy, six methods (shapes, {harness.seed_list(a.seeds)}):\n"
                        "descriptive, too few points for a trend")
    return rows


if __name__ == "__main__":
    main()
