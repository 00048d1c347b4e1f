"""The AdaDim paper's dynamics ("AdaDim: Dimensionality Adaptation for SSL Representational Dynamics",
Figures 5a-c and 1b): moving the loss from VICReg (alpha 0) to InfoNCE (alpha 1) lowers both the
dimensionality H(R) of the representation and the mutual information I(R; Z) with the embedding; the
adaptive alpha rises over training; and over a SimCLR run H(R) and I(R; Z) move together, then apart.

    python reproduce/adadim_dynamics.py          # 7 runs of the shapes CPU recipe: about 5 minutes on 2 cores
    python reproduce/adadim_dynamics.py --seeds 0 1 2   # the H(R) trend is small at this scale: about 10 minutes

Runs: adadim.py's CPU recipe with --alpha-mode fixed --alpha A --gamma 0 for A in 0, 0.25, 0.5, 0.75, 1
(Figure 5a-b: H(R), I(R; Z) of 2,000 test images at the end), the recipe itself (Figure 5c: alpha per
epoch), and simclr.py's CPU recipe with --track-every 1 (Figure 1b: H(R) and I(R; Z) each epoch). H(R)
is the effective rank of the backbone features (uncentred, as the paper's get_rank), I(R; Z) the order-2
Renyi matrix mutual information (appendix A.6).
"""
import os

import harness
import metrics

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
QUICK = ["--width", "4", "--train-subset", "256", "--epochs", "3", "--eval-every", "3", "--warmup-epochs", "0",
         "--proj-hidden", "64", "--proj-dim", "64"]


def main(argv=None):
    a = harness.parser(__doc__, "adadim_dynamics").parse_args(argv)
    quick = QUICK if a.quick else []
    rows = []
    for alpha in ALPHAS:
        h, i, knn = [], [], []
        for seed in a.seeds:
            folder = harness.train("adadim", f"alpha{alpha}-s{seed}", [*quick, "--alpha-mode", "fixed", "--alpha",
                                   str(alpha), "--gamma", "0", "--seed", str(seed)], a)
            (r, z), _, _ = harness.features(folder)
            h.append(metrics.effective_rank(r))
            i.append(metrics.renyi_mutual_information(r, z))
            knn.append(harness.results(folder)["knn_acc"])
        row = {"alpha": alpha}
        for key, values in (("H(R)", h), ("I(R;Z)", i), ("knn_acc", knn)):
            harness.put_mean_spread(row, key, values)
        rows.append(row)
    adaptive = harness.log(harness.train("adadim", f"adaptive-s{a.seeds[0]}", [*quick, "--seed", str(a.seeds[0])], a))
    simclr = harness.log(harness.train("simclr", f"simclr-s{a.seeds[0]}", [*quick, "--seed", str(a.seeds[0]),
                                       "--track-every", "1"], a))
    harness.table(rows, os.path.join(a.out, "adadim_dynamics.json"),
                  f"fixed alpha, gamma 0, shapes, seeds {a.seeds} (mean; _sd: spread over seeds); adaptive alpha "
                  f"per epoch: {[round(r['alpha'], 3) for r in adaptive[1:]]}")
    plt = harness.pyplot()
    if plt is None:
        return rows
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, key, title in ((axes[0], "H(R)", "as Figure 5a"), (axes[1], "I(R;Z)", "as Figure 5b")):
        ax.errorbar([r["alpha"] for r in rows], [r[key] for r in rows], yerr=[r.get(key + "_sd", 0) for r in rows],
                    marker="o", capsize=3)
        ax.set(xlabel="alpha (fixed, gamma 0)", ylabel=key, title=title)
    axes[2].plot([r["epoch"] for r in adaptive[1:]], [r["alpha"] for r in adaptive[1:]], marker="o")
    axes[2].set(xlabel="epoch", ylabel="alpha", title="as Figure 5c: adaptive alpha", ylim=(0, 1))
    tracked = [r for r in simclr[1:] if r.get("effective_rank_R") is not None]
    axes[3].plot([r["epoch"] for r in tracked], [r["effective_rank_R"] for r in tracked], marker="o", label="H(R)")
    axes[3].set(xlabel="epoch", ylabel="H(R) (effective rank)", title="as Figure 1b: SimCLR")
    twin = axes[3].twinx()
    twin.plot([r["epoch"] for r in tracked], [r["renyi_mi_RZ"] for r in tracked], marker="s", color="tab:red",
              label="I(R;Z)")
    twin.set_ylabel("I(R;Z) (nats)")
    axes[3].legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    for ax in axes[2:]:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"AdaDim paper: H(R) and I(R;Z) against alpha, the adaptive alpha, a SimCLR run (shapes, seeds "
                 f"{a.seeds})", fontsize=9)
    harness.save_figure(fig, os.path.join(a.out, "adadim_dynamics.png"))
    return rows


if __name__ == "__main__":
    main()
