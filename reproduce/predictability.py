"""Predictability minimisation ("Beyond Pairwise Correlations: Higher-Order Redundancies in Self-Supervised
Representation Learning", Table 2, Figures 3-5, Theorem 3.2): without the prediction term (lambda 0) SSLPM
does not learn; the prediction loss rises with lambda while accuracy peaks before it; a ridge predictor
does better than MLP predictors; and every representation obeys AAC <= sqrt(LR) <= sqrt(NLR).

    python reproduce/predictability.py           # 8 runs of the shapes CPU recipe: about 5 minutes on 2 cores
    python reproduce/predictability.py --seeds 0 1 2    # mean and spread: about 15 minutes

Runs: sslpm.py's CPU recipe (SSLPM-RR) with --lambda 0, 0.25, 0.5, 1 (the recipe's), 2, 4; and SSLPM-SGD
with a 1-layer and a 3-layer MLP predictor (--predictor mlp --predictor-layers 1|3, their default lambdas,
at most 10 inner steps per encoder step for CPU time). For each: the final kNN accuracy, the prediction
loss L_pred of the last epoch, and AAC, LR and NLR (SSLPM paper section 3.2, metrics.py) of the backbone
features of 2,000 test images, with Theorem 3.2's chain checked. The figure: (a) as Figure 3, accuracy and
L_pred against lambda; (b) as Figure 5, accuracy and redundancy of the three predictors.
"""
import math
import os

import harness
import metrics

LAMBDAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
PREDICTORS = {"ridge (SSLPM-RR)": [], "MLP 1 layer": ["--predictor", "mlp", "--predictor-layers", "1"],
              "MLP 3 layers": ["--predictor", "mlp", "--predictor-layers", "3"]}
QUICK = ["--width", "4", "--train-subset", "256", "--epochs", "2", "--eval-every", "2", "--warmup-epochs", "0"]


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
    steps = ["--predictor-steps", "3" if a.quick else "10"]
    runs = {}
    for seed in a.seeds:
        for lambd in LAMBDAS:
            runs[f"lambda {lambd}", seed] = harness.train(
                "sslpm", f"lambda{lambd}-s{seed}", [*quick, "--lambda", str(lambd), "--seed", str(seed)], a)
        for label, flags in list(PREDICTORS.items())[1:]:
            runs[label, seed] = harness.train("sslpm", f"{label.replace(' ', '-')}-s{seed}",
                                              [*quick, *flags, *steps, "--seed", str(seed)], a)
    measured = {key: measure(folder) for key, folder in runs.items()}
    rows = []
    for label in [f"lambda {l}" for l in LAMBDAS] + list(PREDICTORS)[1:]:
        row = {"run": label + (" (ridge, the recipe)" if label == "lambda 1.0" else "")}
        for key in ("knn_acc", "L_pred", "AAC", "LR", "NLR"):
            harness.put_mean_spread(row, key, [measured[label, s][key] for s in a.seeds])
        row["chain_holds"] = f"{sum(measured[label, s]['AAC<=sqrtLR<=sqrtNLR'] for s in a.seeds)}/{len(a.seeds)}"
        rows.append(row)
    harness.table(rows, os.path.join(a.out, "predictability.json"),
                  f"SSLPM on shapes, seeds {a.seeds} (mean; _sd: spread); chain_holds: Theorem 3.2 on R "
                  "(AAC <= sqrt(LR) <= sqrt(NLR) + 0.02 for the MLP's estimation noise)")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sweep = rows[:len(LAMBDAS)]
    left.errorbar(LAMBDAS, [r["knn_acc"] for r in sweep], yerr=[r.get("knn_acc_sd", 0) for r in sweep],
                  marker="o", capsize=3, label="kNN accuracy")
    left.set(xlabel="lambda (ridge predictor)", ylabel="kNN accuracy", title="as Figure 3: impact of lambda")
    twin = left.twinx()
    twin.plot(LAMBDAS, [r["L_pred"] for r in sweep], marker="s", color="tab:red", label="L_pred, last epoch")
    twin.set_ylabel("prediction loss L_pred")
    left.legend(loc="lower left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    predictors = [rows[LAMBDAS.index(1.0)]] + rows[len(LAMBDAS):]
    names = list(PREDICTORS)
    width = 0.2
    for k, key in enumerate(("knn_acc", "AAC", "LR", "NLR")):
        right.bar([i + (k - 1.5) * width for i in range(len(names))], [r[key] for r in predictors], width, label=key)
    right.set_xticks(range(len(names)), names)
    right.set(title="as Figure 5: predictors (accuracy and redundancy of R)")
    right.legend(fontsize=8)
    fig.suptitle(f"SSLPM paper: predictability minimisation on shapes (seeds {a.seeds})", fontsize=9)
    harness.save_figure(fig, os.path.join(a.out, "predictability.png"))
    return rows


if __name__ == "__main__":
    main()
