"""Predictability minimisation ("Beyond Pairwise Correlations: Higher-Order Redundancies in Self-Supervised
Representation Learning", Table 2, Figures 3-5, Theorem 3.2): without the prediction term (lambda 0) SSLPM
does not learn; the prediction loss rises with lambda while accuracy peaks before it; a ridge predictor
does better than MLP predictors, the 1-layer MLP leaving the least redundancy; lower LR comes with
higher accuracy (Figure 4); and every representation obeys AAC <= sqrt(LR) <= sqrt(NLR).

    python reproduce/predictability.py           # 8 runs of the shapes CPU recipe: 20 minutes on 2 cores
    python reproduce/predictability.py --seeds 0 1 2    # mean and spread: about an hour

Runs: sslpm.py's CPU recipe (SSLPM-RR) with --lambda 0, 0.25, 0.5, 1 (the recipe's), 2, 4; and SSLPM-SGD
with a 1-layer and a 3-layer MLP predictor (--predictor mlp --predictor-layers 1|3, their default lambdas,
at most 50 inner steps per encoder step for CPU time: with 10 the 1-layer MLP did not learn). For each:
the final kNN accuracy, the prediction loss L_pred of the last epoch, and AAC, LR and NLR (SSLPM paper
section 3.2, metrics.py) of the backbone features of 2,000 test images, with Theorem 3.2's chain checked.
The figure, each panel titled with its verdict: (a) as Figure 3, accuracy against lambda (dots: seeds);
(b) L_pred against lambda; (c) as Figure 5, accuracy of the three predictors; (d) as Figure 4, accuracy
against LR over every run.
"""
import math
import os

import harness
import metrics

LAMBDAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
PREDICTORS = {"ridge (SSLPM-RR)": [], "MLP 1 layer": ["--predictor", "mlp", "--predictor-layers", "1"],
              "MLP 3 layers": ["--predictor", "mlp", "--predictor-layers", "3"]}
STEPS = 50  # inner steps of the MLP predictors per encoder step (10 left the 1-layer MLP at random-init kNN)
QUICK = ["--width", "4", "--train-subset", "256", "--epochs", "2", "--eval-every", "2",
         "--warmup-epochs", "0"]


def measure(folder):
    (r, z), _, _ = harness.features(folder)
    aac = metrics.average_absolute_correlation(r)
    lr = metrics.linear_redundancy(r)[0]
    nlr = metrics.nonlinear_redundancy(r, steps=300)[0]
    chain = aac <= math.sqrt(max(lr, 0)) + 1e-9 and math.sqrt(max(lr, 0)) <= math.sqrt(max(nlr, 0)) + 0.02
    return {"knn_acc": harness.results(folder)["knn_acc"], "L_pred": harness.log(folder)[-1]["prediction"],
            "AAC": aac, "LR": lr, "NLR": nlr, "AAC<=sqrtLR<=sqrtNLR": chain}


def main(argv=None):
    a = harness.parser(__doc__, "predictability").parse_args(argv)
    quick = QUICK if a.quick else []
    steps = ["--predictor-steps", "3" if a.quick else str(STEPS)]
    runs = {}
    for seed in a.seeds:
        for lambd in LAMBDAS:
            runs[f"lambda {lambd}", seed] = harness.train(
                "sslpm", f"lambda{lambd}-s{seed}", [*quick, "--lambda", str(lambd), "--seed", str(seed)], a)
        for label, flags in list(PREDICTORS.items())[1:]:
            runs[label, seed] = harness.train("sslpm", f"{label.replace(' ', '-')}-{steps[1]}steps-s{seed}",
                                              [*quick, *flags, *steps, "--seed", str(seed)], a)
    measured = {key: measure(folder) for key, folder in runs.items()}
    rows = []
    for label in [f"lambda {l}" for l in LAMBDAS] + list(PREDICTORS)[1:]:
        row = {"run": label + (" (ridge, the recipe)" if label == "lambda 1.0" else "")}
        for key in ("knn_acc", "L_pred", "AAC", "LR", "NLR"):
            harness.put_mean_spread(row, key, [measured[label, s][key] for s in a.seeds])
        row["knn_acc_per_seed"] = [measured[label, s]["knn_acc"] for s in a.seeds]
        holds = sum(measured[label, s]["AAC<=sqrtLR<=sqrtNLR"] for s in a.seeds)
        row["chain_holds"] = f"{holds}/{len(a.seeds)}"
        rows.append(row)
    folder = runs["lambda 1.0", a.seeds[0]]
    init = sum(harness.results(runs["lambda 1.0", s])["init_knn_acc"] for s in a.seeds) / len(a.seeds)
    pixels = harness.pixel_knn(folder)
    harness.table(rows, os.path.join(a.out, "predictability.json"),
                  f"SSLPM on shapes, seeds {a.seeds} (mean; _sd: spread); chain_holds: Theorem 3.2 on R "
                  "(AAC <= sqrt(LR) <= sqrt(NLR) + 0.02 for the MLP's estimation noise); MLP predictors: "
                  f"{steps[1]} inner steps; kNN at random initialisation {init:.3g} (mean), on raw pixels "
                  f"{pixels:.3g}")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, axes = harness.figure(plt, 2, 2, width=12, height=9)
    sweep = rows[:len(LAMBDAS)]
    ticks = [f"{l:g}" for l in LAMBDAS]
    for i, r in enumerate(sweep):
        harness.seed_dots(axes[0], i, r["knn_acc_per_seed"], harness.COLORS[0],
                          label=None if i else "kNN (dots: seeds)")
        axes[1].errorbar(i, r["L_pred"], yerr=r.get("L_pred_sd", 0), marker="s",
                         color=harness.COLORS[1], capsize=3)
    for ax in axes[:2]:
        ax.set_xticks(range(len(LAMBDAS)), ticks)
        ax.set_xlabel("lambda (weight of D x L_pred, D = 32)")
    best = max(range(1, len(sweep)), key=lambda i: sweep[i]["knn_acc"])
    gap = sweep[best]["knn_acc"] - sweep[-1]["knn_acc"]
    spread = max(sweep[best].get("knn_acc_sd", 0), sweep[-1].get("knn_acc_sd", 0))
    harness.baseline(axes[0], init, "random initialisation")
    harness.baseline(axes[0], pixels, "raw pixels", color=harness.COLORS[4])
    axes[0].set(ylabel="kNN accuracy (test)")
    learns = sweep[0]["knn_acc"] < min(r["knn_acc"] for r in sweep[1:])
    harness.verdict(axes[0],
                    ("Table 2: lambda 0 does not learn: held; " if learns else "Table 2: lambda 0 learns; ")
                    + "Figure 3: a peak",
                    f"best lambda {ticks[best]}, no peak: not at this scale" if best == len(sweep) - 1
                    else f"best lambda {ticks[best]}, " + (f"{gap / spread:.1f} spreads above lambda 4: " + (
                        "held partly" if gap > 2 * spread else "not resolved") if spread else
                        f"{gap:.3f} above lambda 4, one seed: not resolved"))
    axes[0].legend(loc="lower right")
    axes[1].set(ylabel="L_pred, last epoch (1: unpredictable)")
    axes[1].set_ylim(bottom=0)
    harness.verdict(axes[1], "Table 2: the prediction loss rises with lambda",
                    "held (then flat near the top)" if sweep[0]["L_pred"] < sweep[1]["L_pred"]
                    else "not here")
    predictors = [rows[LAMBDAS.index(1.0)]] + rows[len(LAMBDAS):]
    for j, r in enumerate(predictors):
        harness.seed_dots(axes[2], j, r["knn_acc_per_seed"], harness.COLORS[j], harness.MARKERS[j])
    harness.baseline(axes[2], init, "random initialisation")
    harness.baseline(axes[2], pixels, "raw pixels", color=harness.COLORS[4])
    names = [n.replace(" (SSLPM-RR)", "").replace("MLP ", "MLP\n") for n in PREDICTORS]
    axes[2].set_xticks(range(len(names)), names)
    axes[2].set(ylabel="kNN accuracy (test)")
    order = sorted(range(len(predictors)), key=lambda j: -predictors[j]["knn_acc"])
    harness.verdict(axes[2], f"Figure 5: predictors ({steps[1]} inner MLP steps)",
                    ("ridge best: held" if len(a.seeds) > 1 else "ridge best, one seed: held partly")
                    if order[0] == 0 else f"best: {names[order[0]].replace(chr(10), ' ')}: not as the paper")
    axes[2].legend(loc="lower right")
    for j, (label, seed) in enumerate(measured):
        group = 0 if label.startswith("lambda") else 1 + list(PREDICTORS).index(label) - 1
        axes[3].scatter(measured[label, seed]["LR"], measured[label, seed]["knn_acc"],
                        color=harness.COLORS[group],
                        marker=harness.MARKERS[group], s=40, zorder=3)
    for group, name in enumerate(["ridge, lambda sweep", *list(PREDICTORS)[1:]]):
        axes[3].scatter([], [], color=harness.COLORS[group], marker=harness.MARKERS[group], label=name)
    points = list(measured.values())
    rho = harness.spearman([p["LR"] for p in points], [p["knn_acc"] for p in points])
    axes[3].set(xlabel="LR of the backbone features (0 to 1)", ylabel="kNN accuracy (test)")
    harness.verdict(axes[3], "Figure 4: lower LR, higher accuracy?",
                    f"rank correlation {rho:+.2f} over {len(points)} runs: "
                    + ("the paper's direction" if rho < -0.5 else "not the paper's direction" if rho > 0
                       else "weak"))
    axes[3].legend(loc="best")
    harness.save_figure(fig, os.path.join(a.out, "predictability.png"),
                        "SSLPM paper: predictability minimisation "
                        f"(shapes, {harness.seed_list(a.seeds)})")
    return rows


if __name__ == "__main__":
    main()
